"""The two networks the series dissects.

- :class:`Net`: the PyTorch MNIST example (pytorch/examples, ``mnist/main.py`` at commit
  d8dd8ca^), layer for layer. Two modern touches that do not change its numbers:
  ``torch.flatten(x, 1)`` instead of ``x.view(-1, 320)`` (works in channels_last memory too)
  and an explicit ``dim=1`` for ``log_softmax`` (the implicit dim is deprecated).
- :class:`LeNet`: the network of the "Deep Learning with PyTorch: a 60 minute blitz" tutorial,
  which expects 32x32 images: MNIST's 28x28 digits must be padded by 2 on each side.

Both check their input first, because a wrong shape otherwise fails deep inside with a message
about matrix sizes that does not say what to do.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_input(x: torch.Tensor, model: str, size: int, hint: str = "") -> None:
    """Raise a ``ValueError`` that says what to do if ``x`` is not a batch N x 1 x size x size."""
    expected = f"{model} expects a batch of shape N x 1 x {size} x {size}, got {tuple(x.shape)}"
    if x.dim() == 2:
        raise ValueError(f"{expected}: one image without batch and channel dimensions; "
                         "use x.unsqueeze(0).unsqueeze(0)")
    if x.dim() == 3:
        raise ValueError(f"{expected}: " + (
            "one image without a batch dimension; add one with x.unsqueeze(0)" if x.shape[0] == 1
            else "a batch without a channel dimension; add one with x.unsqueeze(1)"))
    if x.dim() != 4:
        raise ValueError(f"{model} expects a 4-D batch N x 1 x {size} x {size}, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] != 1:
        raise ValueError(f"{model} expects 1 channel (grayscale), got {x.shape[1]} in shape "
                         f"{tuple(x.shape)}; convert to grayscale or select one channel")
    if tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"{model} expects {size} x {size} images, got "
                         f"{x.shape[2]} x {x.shape[3]}{hint}")


class Net(nn.Module):
    """The PyTorch MNIST example's network: 21,840 parameters, log-probabilities out.

    ``dropout`` is the probability of both dropout layers (0.5 as in the example); the fast
    recipe turns them off with ``dropout=0``.
    """

    log_probs = True  # forward returns log-probabilities: pair with F.nll_loss

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(p=dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "Net", 28)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class LeNet(nn.Module):
    """The 60-minute-blitz LeNet: 61,706 parameters, for 32x32 input, raw scores out."""

    log_probs = False  # forward returns raw scores (logits): pair with F.cross_entropy

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "LeNet", 32, hint=(
            "; LeNet was designed for 32 x 32: pad MNIST's 28 x 28 digits by 2 pixels on each "
            "side (mnist_transform(pad=2), TensorBatches.from_dataset(..., pad=2) or "
            "mnist_dissected.data.pad_to_32)"))
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


MODELS: dict[str, type[nn.Module]] = {"net": Net, "lenet": LeNet}

#: Input side length each architecture expects.
INPUT_SIZE = {"Net": 28, "LeNet": 32}


def build_model(name: str, **kwargs) -> nn.Module:
    """``"net"`` or ``"lenet"`` -> a fresh model."""
    try:
        return MODELS[name.lower()](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable numbers in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def loss_function(model: nn.Module):
    """The loss that matches the model's output: NLL for log-probabilities, cross-entropy
    (log_softmax + NLL in one) for raw scores."""
    return F.nll_loss if getattr(model, "log_probs", False) else F.cross_entropy
