"""Part 4's module: training and evaluation, the example's loop made reusable, two recipes.

Why this module exists: Part 4 (``notebooks/4_mnist_train.ipynb``) dissects the training loop
line by line; the CLI, the benchmark, :mod:`mnist_dissected.pretrained` (the model Part 5
studies) and Part 6's distributed run use the very same code from here.

- ``classic``: the example's recipe (SGD, lr 0.01, momentum 0.5, batch 64, dropout on), fed
  through the torchvision ``DataLoader``.
- ``fast``: about 99% test accuracy with ``Net`` in 3 epochs (median >= 99.0% over seeds 1-5,
  every seed >= 98.8%: Part 4, §4.9): Adam with a one-cycle learning-rate schedule, batch 256,
  no dropout (three epochs are too few for dropout to pay off, §4.11), channels_last memory
  format (a layout only: faster where the kernels prefer it, §4.11), and the whole data set as
  one tensor on the device.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from .data import (
    TensorBatches,
    load_mnist,
    make_loader,
    mnist_transform,
    train_validation_indices,
)
from .models import MNISTModel, loss_function, model_class

DEVICE_ENV_VAR = "MNIST_DISSECTED_DEVICE"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (every device's generator), and ask cuDNN for
    deterministic kernels. On the CPU the same seed on the same machine (and number of threads)
    then gives bitwise the same run; on a GPU some other kernels still add in a varying order
    unless ``torch.use_deterministic_algorithms(True)`` is set too. Dissected in Part 4, §4.7.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` (or ``$MNIST_DISSECTED_DEVICE``) if given, else CUDA, then Apple's MPS,
    then the CPU: the same notebook runs wherever the reader is. Dissected in Part 4, §4.3."""
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
    log_interval: int | None = None  # the example's "Train Epoch" lines every N batches
    gamma: float | None = None  # StepLR's factor per epoch (today's example: 0.7)
    compile: bool = False  # torch.compile the model (see mnist_dissected.fastpath)
    cuda_graph: bool = False  # capture the training step as one CUDA graph (NVIDIA GPUs)


RECIPES: dict[str, Recipe] = {
    "classic": Recipe("classic", batch_size=64, lr=0.01, momentum=0.5, epochs=10, log_interval=10),
    "fast": Recipe(
        "fast",
        batch_size=256,
        lr=0.01,
        epochs=3,
        optimizer="adam",
        schedule="onecycle",
        dropout=0.0,
        channels_last=True,
        data_path="tensors",
    ),
}


def get_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    """A recipe by name (or as given), with some fields replaced (``None`` values ignored)."""
    if isinstance(recipe, str):
        try:
            recipe = RECIPES[recipe]
        except KeyError:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}") from None
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def make_optimizer(model: nn.Module, recipe: Recipe, *, steps_per_epoch: int):
    """The recipe's optimizer and learning-rate scheduler (or ``None``), stepped after every
    batch: one-cycle by design, StepLR's per-epoch ``gamma`` spread over the epoch's steps
    so that it is ``gamma`` per epoch, as in today's example. Dissected in Part 4, §4.6."""
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    elif recipe.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    scheduler = None
    if recipe.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch
        )
    elif recipe.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(
            opt, step_size=steps_per_epoch, gamma=recipe.gamma if recipe.gamma else 0.7
        )
    elif recipe.schedule is not None:
        raise ValueError(f"unknown schedule {recipe.schedule!r}")
    return opt, scheduler


def num_samples(batches: Iterable) -> int | None:
    """How many samples a ``DataLoader`` or :class:`TensorBatches` yields per epoch (for the
    example's progress lines): under DDP a rank's share (Part 6); ``None`` for other iterables.
    """
    if hasattr(batches, "num_samples"):  # distributed.ShardedBatches
        return batches.num_samples
    sampler = getattr(batches, "sampler", None)
    if type(sampler).__name__ == "DistributedSampler":
        return len(sampler)
    for holder in ("dataset", "targets"):
        if hasattr(batches, holder):
            return len(getattr(batches, holder))
    return None


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str | None = None,
    epoch: int = 1,
    progress: bool = True,
    log_interval: int | None = None,
    max_batches: int | None = None,
    graphed_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """One pass over ``batches`` (or its first ``max_batches``); returns the training loss of
    every step.

    Dissected in Part 4, §4.1. ``log_interval`` prints the example's ``Train Epoch: ...``
    lines every that many batches (each one waits for the device to report its loss).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_function(model)
    model.train()  # dropout on
    losses = []
    n_total, seen = num_samples(batches), 0
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for step, (data, target) in enumerate(islice(bar, max_batches)):
        data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if graphed_step is not None:  # the lines below, captured once as a CUDA graph
            loss = graphed_step(data, target)
        else:
            optimizer.zero_grad(set_to_none=True)  # gradients add up otherwise
            loss = loss_fn(model(data), target)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        losses.append(loss.detach())  # no .item() here: it would wait for the GPU every step
        if log_interval and step % log_interval == 0:
            print(
                f"Train Epoch: {epoch} [{seen}/{n_total or '?'} "
                f"({100.0 * step / len(batches):.0f}%)]"
                f"\tLoss: {loss.item():.6f}"
            )
        seen += len(data)
    return torch.stack(losses).tolist() if losses else []  # an exhausted iterator: no steps


@torch.no_grad()  # no graph: less memory, faster
def evaluate(
    model: nn.Module,
    batches: Iterable,
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches`` (or their first ``max_batches``),
    in eval mode (dropout off). Dissected in Part 4, §4.2."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_function(model)
    model.eval()
    # Sums as Python numbers: float64 on every device (MPS has no float64 tensors), and one
    # sync with the device per test batch costs little.
    total_loss, correct, n = 0.0, 0, 0
    for data, target in islice(batches, max_batches):
        data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(data)
        total_loss += loss_fn(output, target, reduction="sum").item()
        correct += (output.argmax(dim=1) == target).sum().item()
        n += len(target)
    if n == 0:
        raise ValueError("nothing to evaluate: no batches (or max_batches=0)")
    return total_loss / n, correct / n


def summary_line(loss: float, accuracy: float, n: int, *, split: str = "Test") -> str:
    """The example's summary line (``Test set: Average loss: ...``), for any split."""
    correct = round(accuracy * n)
    return (
        f"{split} set: Average loss: {loss:.4f}, Accuracy: {correct}/{n} "
        f"({100.0 * correct / n:.2f}%)"
    )


def fit(
    model: nn.Module,
    train_batches: Iterable,
    val_batches: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler=None,
    epochs: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    log_interval: int | None = None,
    verbose: bool = True,
    max_batches: int | None = None,
    graphed_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` and score the validation batches after each (never the test set:
    that is scored once, at the end). Returns one record per epoch: ``epoch``, ``train_loss``
    (mean), ``step_losses``, ``val_loss``, ``val_accuracy``, ``seconds`` (training and
    validation) and ``train_seconds`` (training alone). Dissected in Part 4, §4.4."""
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        steps = train_epoch(
            model,
            train_batches,
            optimizer,
            scheduler=scheduler,
            device=device,
            epoch=epoch,
            progress=progress,
            log_interval=log_interval,
            max_batches=max_batches,
            graphed_step=graphed_step,
        )
        train_seconds = time.perf_counter() - start  # train_epoch waited for the device
        val_loss, accuracy = evaluate(model, val_batches, device=device, max_batches=max_batches)
        seconds = time.perf_counter() - start
        history.append(
            {
                "epoch": epoch,
                "train_loss": sum(steps) / len(steps),
                "step_losses": steps,
                "val_loss": val_loss,
                "val_accuracy": accuracy,
                "seconds": seconds,
                "train_seconds": train_seconds,
            }
        )
        if verbose and max_batches is None and num_samples(val_batches):
            print(summary_line(val_loss, accuracy, num_samples(val_batches), split="Validation"))
    return history


class Batches(NamedTuple):
    """The three splits a training run uses: 55,000 training images, 5,000 held out from
    them for validation, and the 10,000 test images scored once at the end."""

    train: Iterable
    val: Iterable
    test: Iterable


def cuda_graph_reason(recipe: Recipe, device: torch.device) -> str | None:
    """Why the recipe's training step cannot be captured as a CUDA graph on ``device``, or
    ``None`` when it can."""
    from . import fastpath

    reason = fastpath.cuda_graph_unavailable(device)
    if reason is None and (recipe.optimizer, recipe.schedule) != ("adam", "onecycle"):
        reason = "the captured step implements Adam with one-cycle (the fast recipe) only"
    return reason


def make_batches(
    recipe: Recipe,
    model_name: str = "net",
    *,
    device: torch.device | str = "cpu",
    seed: int = 1,
    root=None,
    root_given_as: str = "the root argument",
) -> Batches:
    """Training, validation and test batches as the recipe wants them: through the
    ``DataLoader`` or as in-memory tensors on ``device``; images padded to the model's input
    size (LeNet: 32). The validation split is the same for every seed."""
    pad = (model_class(model_name).input_size - 28) // 2
    # a captured step takes one batch shape only; where it cannot run, the eager recipe's batches
    drop_last = recipe.cuda_graph and cuda_graph_reason(recipe, torch.device(device)) is None
    where = {"root": root, "root_given_as": root_given_as}
    train_set = load_mnist(train=True, transform=mnist_transform(pad), **where)
    test_set = load_mnist(train=False, transform=mnist_transform(pad), **where)
    train_idx, val_idx = train_validation_indices(len(train_set))
    if recipe.data_path == "loader":
        pin = torch.device(device).type == "cuda"
        return Batches(
            make_loader(
                Subset(train_set, train_idx),
                recipe.batch_size,
                shuffle=True,
                seed=seed,
                drop_last=drop_last,
                pin_memory=pin,
            ),
            make_loader(Subset(train_set, val_idx), recipe.test_batch_size, pin_memory=pin),
            make_loader(test_set, recipe.test_batch_size, pin_memory=pin),
        )
    if recipe.data_path == "tensors":
        kw = dict(device=device, pad=pad, channels_last=recipe.channels_last)
        return Batches(
            TensorBatches.from_dataset(
                train_set,
                indices=train_idx,
                batch_size=recipe.batch_size,
                shuffle=True,
                seed=seed,
                drop_last=drop_last,
                **kw,
            ),
            TensorBatches.from_dataset(
                train_set, indices=val_idx, batch_size=recipe.test_batch_size, **kw
            ),
            TensorBatches.from_dataset(test_set, batch_size=recipe.test_batch_size, **kw),
        )
    raise ValueError(f"unknown data path {recipe.data_path!r}")


def speed_up(
    model: MNISTModel, recipe: Recipe, train_batches: Any, *, dry_run: bool = False
) -> tuple[nn.Module, Any]:
    """The recipe's ``compile`` and ``cuda_graph`` options, each falling back to eager training
    with a message where it cannot run. Returns the model to train (compiled or not) and the
    captured step (or ``None``); see :mod:`mnist_dissected.fastpath`."""
    from . import fastpath

    if not (recipe.compile or recipe.cuda_graph) or dry_run:
        return model, None
    device = next(model.parameters()).device
    data, target = fastpath.sample_batch(train_batches, device)
    if recipe.channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    loss_fn = loss_function(model)
    trained = model
    if recipe.compile:
        trained, reason = fastpath.compile_model(model, data, target, loss_fn)
        if reason:
            fastpath.say(f"compile: {reason}; training without it")
    if not recipe.cuda_graph:
        return trained, None
    reason = cuda_graph_reason(recipe, data.device)
    if reason is not None:
        fastpath.say(f"cuda_graph: {reason}; training eagerly")
        return trained, None
    total = recipe.epochs * len(train_batches)
    table = fastpath.TableAdam(
        model.parameters(), fastpath.onecycle_table(recipe.lr, total), capturable=True
    )
    step = fastpath.GraphedTrainStep(trained, loss_fn, table, data, target)
    return trained, step


class Trained(NamedTuple):
    """What :func:`train_model` returns: the model (on its device, in eval mode), its
    per-epoch history, the recipe used, the one test score (``{"loss", "accuracy", "n"}``),
    and the seconds spent compiling or capturing before the first step (0 when eager)."""

    model: MNISTModel
    history: list[dict[str, Any]]
    recipe: Recipe
    test: dict[str, float]
    setup_s: float = 0.0


def train_model(
    model_name: str = "net",
    recipe: str | Recipe = "fast",
    *,
    seed: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    log_interval: int | None = None,
    verbose: bool = True,
    root=None,
    root_given_as: str = "the root argument",
    dry_run: bool = False,
    **overrides: Any,
) -> Trained:
    """Seed, build the model, the data and the optimizer, train (choices seen on the
    validation split), then score the test set once: the whole story in one call (the CLI,
    :mod:`~mnist_dissected.pretrained` and the benchmark use it). ``overrides`` replace recipe
    fields (``epochs=``, ``lr=``, ...). ``log_interval`` defaults to the recipe's (the classic
    recipe logs every 10 batches). ``dry_run``: one batch of training and one of testing, then
    stop (a quick check that everything runs, as in pytorch/examples). Dissected in Part 4,
    §4.6."""
    recipe = get_recipe(recipe, **overrides)
    device = pick_device(device)
    seed_everything(seed)
    model = model_class(model_name).for_recipe(recipe).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = make_batches(
        recipe, model_name, device=device, seed=seed, root=root, root_given_as=root_given_as
    )
    optimizer, scheduler = make_optimizer(model, recipe, steps_per_epoch=len(batches.train))
    start = time.perf_counter()
    trained, graphed_step = speed_up(model, recipe, batches.train, dry_run=dry_run)
    setup_s = time.perf_counter() - start
    if graphed_step is not None:
        optimizer, scheduler = graphed_step.optimizer, None
    limit = 1 if dry_run else None
    history = fit(
        trained,
        batches.train,
        batches.val,
        optimizer,
        scheduler=scheduler,
        epochs=1 if dry_run else recipe.epochs,
        device=device,
        progress=progress,
        log_interval=log_interval if log_interval is not None else recipe.log_interval,
        verbose=verbose,
        max_batches=limit,
        graphed_step=graphed_step,
    )
    test_loss, test_accuracy = evaluate(model, batches.test, device=device, max_batches=limit)
    n_test = num_samples(batches.test)
    if dry_run:
        n_test = min(n_test, recipe.test_batch_size)
    if verbose:
        print(summary_line(test_loss, test_accuracy, n_test))
    test = {"loss": test_loss, "accuracy": test_accuracy, "n": n_test}
    return Trained(model.eval(), history, recipe, test, setup_s)
