"""Part 2's module: the networks the series dissects (``notebooks/2_mnist_model.ipynb``).

- :class:`Net`: the PyTorch MNIST example (pytorch/examples, ``mnist/main.py`` at commit
  d8dd8ca^), layer for layer, ``F.log_softmax(x, dim=1)`` included (the example has had
  ``dim=1`` since 8256aee, January 2018). One change that does not change its numbers:
  ``torch.flatten(x, 1)`` instead of ``x.view(-1, 320)`` (works in channels_last memory too).
- :class:`LeNet`: the network of the "Deep Learning with PyTorch: a 60 minute blitz" tutorial,
  which expects 32x32 images: MNIST's 28x28 digits must be padded by 2 on each side.
- :class:`TodayNet`: the example's network today (pytorch/examples since 0634306, Nov 2019;
  plain ``Dropout`` since 0f0c913, Oct 2020): two 3x3 convolutions, 1,199,882 parameters.
  Dissected beside ``Net`` in Part 4, §4.I.

Both check their input first, because a wrong shape otherwise fails deep inside with a message
about matrix sizes that does not say what to do.

What the rest of the package needs to know about a model lives on its class, and nowhere else:
``name`` (its key in :data:`MODELS`), ``input_size`` (28 or 32), ``log_probs`` (which loss
fits), and :meth:`config` (the constructor arguments that rebuild it, for checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_input(x: torch.Tensor, model: str, size: int, *, hint: str = "") -> None:
    """Raise a ``ValueError`` that says what to do if ``x`` is not a batch N x 1 x size x size.
    Dissected in Part 2, §2.13."""
    expected = f"{model} expects a batch of shape N x 1 x {size} x {size}, got {tuple(x.shape)}"
    if x.dim() == 2:
        raise ValueError(
            f"{expected}: one image without batch and channel dimensions; "
            "use x.unsqueeze(0).unsqueeze(0)"
        )
    if x.dim() == 3:
        raise ValueError(
            f"{expected}: "
            + (
                "one image without a batch dimension; add one with x.unsqueeze(0)"
                if x.shape[0] == 1
                else "a batch without a channel dimension; add one with x.unsqueeze(1)"
            )
        )
    if x.dim() != 4:
        raise ValueError(
            f"{model} expects a 4-D batch N x 1 x {size} x {size}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != 1:
        raise ValueError(
            f"{model} expects 1 channel (grayscale), got {x.shape[1]} in shape "
            f"{tuple(x.shape)}; convert to grayscale or select one channel"
        )
    if tuple(x.shape[2:]) != (size, size):
        raise ValueError(
            f"{model} expects {size} x {size} images, got {x.shape[2]} x {x.shape[3]}{hint}"
        )


class MNISTModel(nn.Module):
    """What every model of the series tells about itself (see the module docstring)."""

    name: ClassVar[str]
    input_size: ClassVar[int]
    log_probs: ClassVar[bool]

    def config(self) -> dict[str, Any]:
        """The keyword arguments that build a model like this one (saved in checkpoints)."""
        return {}

    @classmethod
    def for_recipe(cls, recipe: Any) -> MNISTModel:
        """A fresh model set up as a training recipe asks (Net reads its dropout from it)."""
        return cls()


class Net(MNISTModel):
    """The PyTorch MNIST example's network: 21,840 parameters, log-probabilities out.

    Dissected in Part 2, §2.1 and §2.11. ``dropout`` is the probability of both dropout layers
    (0.5 as in the example); the fast recipe turns them off with ``dropout=0``.
    """

    name = "net"
    input_size = 28
    log_probs = True  # forward returns log-probabilities: pair with F.nll_loss

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(p=dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def config(self) -> dict[str, Any]:
        return {"dropout": self.dropout}

    @classmethod
    def for_recipe(cls, recipe: Any) -> Net:
        return cls(dropout=recipe.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "Net", self.input_size)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class LeNet(MNISTModel):
    """The 60-minute-blitz LeNet: 61,706 parameters, for 32x32 input, raw scores out.
    Dissected in Part 2, §2.1, §2.12 and §2.H (LeNet-5, its 1998 ancestor)."""

    name = "lenet"
    input_size = 32
    log_probs = False  # forward returns raw scores (logits): pair with F.cross_entropy

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(
            x,
            "LeNet",
            self.input_size,
            hint=(
                "; LeNet was designed for 32 x 32: pad MNIST's 28 x 28 digits by 2 pixels on each "
                "side (mnist_transform(pad=2), TensorBatches.from_dataset(..., pad=2) or "
                "mnist_dissected.data.pad_to_32)"
            ),
        )
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class TodayNet(MNISTModel):
    """The example's network today (``mnist/main.py`` at 77f55b9), layer for layer: 32 and 64
    3x3 convolutions without padding (28 -> 26 -> 24), one 2x2 max-pool (24 -> 12), dropout
    0.25, 64 * 12 * 12 = 9,216 -> 128 -> 10, log-probabilities out: 1,199,882 parameters,
    98% of them in ``fc1``. Dissected beside ``Net`` in Part 4, §4.I."""

    name = "today"
    input_size = 28
    log_probs = True

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "TodayNet", self.input_size)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        x = self.fc2(self.dropout2(x))
        return F.log_softmax(x, dim=1)


#: The one registry: a model's name (its class's ``name``) -> its class.
MODELS: dict[str, type[MNISTModel]] = {cls.name: cls for cls in (Net, LeNet, TodayNet)}


def model_class(name: str) -> type[MNISTModel]:
    """The class registered as ``name`` (case does not matter: checkpoints of version 1 saved
    the class name, ``"Net"``)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable numbers in ``model``. Dissected in Part 2, §2.2."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its wrappers: ``DistributedDataParallel``'s or ``DataParallel``'s
    ``.module`` and ``torch.compile``'s ``_orig_mod``, in any order and nesting.

    Why: a wrapper's ``state_dict`` names every weight with its prefix (``module.``,
    ``_orig_mod.``), which a plain ``Net`` does not load, and it does not carry the model's
    class attributes. So save, evaluate and ask questions of what this returns (the one
    place that knows the wrappers; Part 6, §6.6 dissects DDP's).
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # OptimizedModule
            model = model._orig_mod
        else:
            return model


def loss_function(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The loss that matches the model's output: NLL for log-probabilities, cross-entropy
    (log_softmax + NLL in one) for raw scores. Dissected in Part 3, §3.H."""
    return F.nll_loss if getattr(unwrap(model), "log_probs", False) else F.cross_entropy
