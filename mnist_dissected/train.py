"""Training and evaluation: the example's loop, made reusable, plus two recipes.

Why this module exists: Part 4 dissects the training loop line by line; the CLI, the benchmark
and Part 5 (which needs a trained model) run the very same code from here.

- ``classic``: the example's recipe (SGD, lr 0.01, momentum 0.5, batch 64, dropout on), fed
  through the torchvision ``DataLoader``.
- ``fast``: reaches >= 99.0% test accuracy with ``Net`` in 3 epochs on a laptop CPU: Adam with
  a one-cycle learning-rate schedule, batch 256, no dropout (three epochs are too few for
  dropout to pay off), channels_last memory format (about 1.5-1.9x faster convolutions on CPU),
  and the whole data set as one tensor on the device.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import TensorBatches, load_mnist, make_loader, mnist_transform
from .models import INPUT_SIZE, build_model, loss_function

DEVICE_ENV_VAR = "MNIST_DISSECTED_DEVICE"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices), and ask cuDNN for deterministic kernels,
    so the same seed on the same machine gives bitwise the same run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` (or ``$MNIST_DISSECTED_DEVICE``) if given, else CUDA, then Apple's MPS,
    then the CPU: the same notebook runs wherever the reader is."""
    preferred = preferred or os.environ.get(DEVICE_ENV_VAR) or None
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained, in one place."""

    name: str
    batch_size: int
    lr: float
    epochs: int
    momentum: float = 0.0
    optimizer: str = "sgd"  # "sgd" or "adam"
    schedule: str | None = None  # None or "onecycle"
    dropout: float = 0.5  # Net's dropout probability
    channels_last: bool = False
    data_path: str = "loader"  # "loader" (DataLoader) or "tensors" (TensorBatches)
    test_batch_size: int = 1000


RECIPES: dict[str, Recipe] = {
    "classic": Recipe("classic", batch_size=64, lr=0.01, momentum=0.5, epochs=10),
    "fast": Recipe("fast", batch_size=256, lr=0.01, epochs=3, optimizer="adam",
                   schedule="onecycle", dropout=0.0, channels_last=True, data_path="tensors"),
}


def get_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    """A recipe by name (or as given), with some fields replaced (``None`` values ignored)."""
    if isinstance(recipe, str):
        try:
            recipe = RECIPES[recipe]
        except KeyError:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}") from None
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def make_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int):
    """The recipe's optimizer and (per-step) learning-rate scheduler, or ``None``."""
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    elif recipe.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    scheduler = None
    if recipe.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    elif recipe.schedule is not None:
        raise ValueError(f"unknown schedule {recipe.schedule!r}")
    return opt, scheduler


def num_samples(batches: Iterable) -> int | None:
    """How many samples a ``DataLoader`` or :class:`TensorBatches` holds (for the example's
    progress lines); ``None`` for other iterables."""
    for holder in ("dataset", "targets"):
        if hasattr(batches, holder):
            return len(getattr(batches, holder))
    return None


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str | None = None,
    epoch: int = 1,
    progress: bool = True,
    log_interval: int | None = None,
) -> list[float]:
    """One pass over ``batches``; returns the training loss of every step.

    ``log_interval`` prints the example's ``Train Epoch: ...`` lines every that many batches.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_function(model)
    model.train()  # dropout on
    losses = []
    n_total, seen = num_samples(batches), 0
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for step, (data, target) in enumerate(bar):
        data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)  # gradients add up otherwise
        loss = loss_fn(model(data), target)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())  # no .item() here: it would wait for the GPU every step
        if log_interval and step % log_interval == 0:
            print(f"Train Epoch: {epoch} [{seen}/{n_total or '?'} "
                  f"({100.0 * step / len(batches):.0f}%)]"
                  f"\tLoss: {loss.item():.6f}")
        seen += len(data)
    return torch.stack(losses).tolist()


@torch.no_grad()  # no graph: less memory, faster
def evaluate(model: nn.Module, batches: Iterable,
             device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches``, in eval mode (dropout off)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_function(model)
    model.eval()
    # Sums as Python numbers: float64 on every device (MPS has no float64 tensors), and one
    # sync with the device per test batch costs little.
    total_loss, correct, n = 0.0, 0, 0
    for data, target in batches:
        data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(data)
        total_loss += loss_fn(output, target, reduction="sum").item()
        correct += (output.argmax(dim=1) == target).sum().item()
        n += len(target)
    return total_loss / n, correct / n


def test_line(loss: float, accuracy: float, n: int) -> str:
    """The example's summary line for the test set."""
    correct = round(accuracy * n)
    return (f"Test set: Average loss: {loss:.4f}, Accuracy: {correct}/{n} "
            f"({100.0 * correct / n:.2f}%)")


def fit(
    model: nn.Module,
    train_batches: Iterable,
    test_batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    epochs: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    log_interval: int | None = None,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` and test after each; returns one record per epoch: ``epoch``,
    ``train_loss`` (mean), ``step_losses``, ``test_loss``, ``test_accuracy``, ``seconds``
    (training and testing)."""
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        steps = train_epoch(model, train_batches, optimizer, scheduler, device, epoch,
                            progress, log_interval)
        test_loss, accuracy = evaluate(model, test_batches, device)
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch, "train_loss": sum(steps) / len(steps),
                        "step_losses": steps, "test_loss": test_loss,
                        "test_accuracy": accuracy, "seconds": seconds})
        if verbose and num_samples(test_batches):
            print(test_line(test_loss, accuracy, num_samples(test_batches)))
    return history


def make_batches(recipe: Recipe, model_name: str = "net", device: torch.device | str = "cpu",
                 seed: int = 1, root=None):
    """Training and test batches as the recipe wants them: through the ``DataLoader`` or as
    in-memory tensors on ``device``; LeNet's images padded to 32x32."""
    pad = (INPUT_SIZE[build_model(model_name).__class__.__name__] - 28) // 2
    train_set = load_mnist(train=True, root=root, transform=mnist_transform(pad))
    test_set = load_mnist(train=False, root=root, transform=mnist_transform(pad))
    if recipe.data_path == "loader":
        pin = torch.device(device).type == "cuda"
        return (make_loader(train_set, recipe.batch_size, shuffle=True, seed=seed, pin_memory=pin),
                make_loader(test_set, recipe.test_batch_size, pin_memory=pin))
    if recipe.data_path == "tensors":
        kw = dict(device=device, pad=pad, channels_last=recipe.channels_last)
        return (TensorBatches.from_dataset(train_set, batch_size=recipe.batch_size,
                                           shuffle=True, seed=seed, **kw),
                TensorBatches.from_dataset(test_set, batch_size=recipe.test_batch_size, **kw))
    raise ValueError(f"unknown data path {recipe.data_path!r}")


def train_model(
    model_name: str = "net",
    recipe: str | Recipe = "fast",
    seed: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    log_interval: int | None = None,
    verbose: bool = True,
    root=None,
    **overrides: Any,
) -> tuple[nn.Module, list[dict[str, Any]], Recipe]:
    """Seed, build the model, the data and the optimizer, and train: the whole story in one
    call (the CLI, ``load_or_train`` and the benchmark use it). ``overrides`` replace recipe
    fields (``epochs=``, ``lr=``, ...). Returns the model, its history and the recipe used."""
    recipe = get_recipe(recipe, **overrides)
    device = pick_device(device)
    seed_everything(seed)
    kwargs = {"dropout": recipe.dropout} if model_name.lower() == "net" else {}
    model = build_model(model_name, **kwargs).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_batches, test_batches = make_batches(recipe, model_name, device, seed, root)
    optimizer, scheduler = make_optimizer(model, recipe, len(train_batches))
    history = fit(model, train_batches, test_batches, optimizer, scheduler, recipe.epochs,
                  device, progress, log_interval, verbose)
    return model, history, recipe


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (for checkpoints, which ``weights_only`` loading can read)."""
    return asdict(recipe)
