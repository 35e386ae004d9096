"""Part 4's module: training and evaluation, the example's loop made reusable.

Why this module exists: Part 4 (``notebooks/4_mnist_train.ipynb``) dissects the training loop
line by line; the CLI, the benchmark, :mod:`mnist_dissected.pretrained` (the model Part 5
studies) and Part 6's distributed run (:func:`mnist_dissected.distributed.train_ddp`, which is
:func:`fit` with DDP's hooks) use the very same code from here. What a run is trained with
lives in :mod:`mnist_dissected.recipes`; where it runs and how it is seeded, in
:mod:`mnist_dissected.devices`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from .batches import num_samples, sample_batch
from .data import (
    NormalizedImages,
    TensorBatches,
    load_mnist,
    make_loader,
    mnist_transform,
    train_validation_indices,
)
from .devices import pick_device, seed_everything
from .example_compat import example_epoch_line
from .guards import LossWatch, check_progress, stop_if_diverged
from .guards import TrainingDivergedError as TrainingDivergedError  # noqa: PLC0414 (re-export)
from .models import MNISTModel, loss_function, model_class
from .recipes import Recipe, get_recipe, make_optimizer


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
    stop_early: bool = True,
) -> list[float]:
    """One pass over ``batches`` (or its first ``max_batches``); returns the training loss of
    every step.

    Dissected in Part 4, §4.1. ``log_interval`` prints the example's ``Train Epoch: ...``
    lines every that many batches (each one waits for the device to report its loss). A NaN
    loss raises :class:`TrainingDivergedError` as soon as reading it costs no wait (see
    :class:`~mnist_dissected.guards.LossWatch`); ``stop_early=False`` (DDP): :func:`fit` does.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_function(model)
    model.train()  # dropout on
    losses = []
    n_total, seen = num_samples(batches), 0
    # A bar told the total, not handed the batches: tqdm.auto's bar makes (and drops) an
    # iterator of its own, which draws a shuffle, starts workers and shifts every random draw.
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not progress, leave=False)
    watch = LossWatch(optimizer, epoch=epoch, active=stop_early, every_step=device.type == "cpu")
    for step, (data, target) in enumerate(islice(batches, max_batches)):
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
        logged = bool(log_interval) and step % log_interval == 0
        if logged:
            print(
                f"Train Epoch: {epoch} [{seen}/{n_total or '?'} "
                f"({100.0 * step / len(batches):.0f}%)]"
                f"\tLoss: {loss.item():.6f}"
            )
        watch.step(losses, synced=logged)  # a NaN stops here, where reading it costs no wait
        seen += len(data)
        bar.update()
    bar.close()
    return watch.end(torch.stack(losses).tolist() if losses else [])  # no steps: exhausted


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
    """The example's summary line (``Test set: Average loss: ...``), for any split, with the
    accuracy to two decimals (the example prints whole percents: ``example_compat``)."""
    correct = round(accuracy * n)
    return (
        f"{split} set: Average loss: {loss:.4f}, Accuracy: {correct}/{n} "
        f"({100.0 * correct / n:.2f}%)"
    )


def validation_line(loss: float, accuracy: float, n: int) -> str:
    """The line :func:`fit` prints after each epoch: the summary line of the validation split."""
    return summary_line(loss, accuracy, n, split="Validation")


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
    evaluator: Callable[..., tuple[float, float]] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    reduce_losses: Callable[[list[float]], list[float]] | None = None,
    say: Callable[[str], None] = print,
    line: Callable[[float, float, int], str] | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` and score the validation batches after each (never the test set:
    that is scored once, at the end). Returns one record per epoch: ``epoch``, ``train_loss``
    (mean), ``step_losses``, ``val_loss``, ``val_accuracy``, ``seconds`` (training and
    validation) and ``train_seconds`` (training alone). Dissected in Part 4, §4.4.
    A NaN loss stops it, before validation at the latest; one at chance level warns (guards).

    The hooks are what data-parallel training changes (Part 6, §6.7): ``evaluator`` scores the
    validation batches (:func:`evaluate`, the default, or one with its arguments and result),
    ``on_epoch_start(epoch)`` runs before each epoch (a ``DistributedSampler`` must be told the
    epoch), ``reduce_losses`` turns this process's step losses into the run's (the mean over
    ranks), and ``say`` prints the summary line (on rank 0 only). ``line(loss, accuracy, n)``
    writes that line (default: the validation line; the example's recipe: the example's test
    line, :func:`~mnist_dissected.example_compat.example_epoch_line`)."""
    # Long on purpose: the whole epoch loop on one screen, as Part 4 §4.4 shows it.
    evaluator = evaluator or evaluate
    history = []
    for epoch in range(1, epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
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
            stop_early=reduce_losses is None,  # ranks stop together, on the averaged losses
        )
        if reduce_losses is not None:
            steps = reduce_losses(steps)
        stop_if_diverged(steps, epoch=epoch, optimizer=optimizer)
        train_seconds = time.perf_counter() - start  # train_epoch waited for the device
        val_loss, accuracy = evaluator(model, val_batches, device=device, max_batches=max_batches)
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
            n = num_samples(val_batches)
            say((line or validation_line)(val_loss, accuracy, n))
        check_progress(history, optimizer=optimizer)  # NaN validation: stop; chance: warn
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
    size (LeNet: 32). The validation split is the same for every seed. The ``example`` data
    path is the example's: all 60,000 training images, and the test set in the place of the
    validation split (it is scored after every epoch)."""
    pad = (model_class(model_name).input_size - 28) // 2
    # a captured step takes one batch shape only; where it cannot run, the eager recipe's batches
    drop_last = recipe.cuda_graph and cuda_graph_reason(recipe, torch.device(device)) is None
    pin = torch.device(device).type == "cuda"
    where = {"root": root, "root_given_as": root_given_as}
    train_set = load_mnist(train=True, transform=mnist_transform(pad), **where)
    test_set = load_mnist(train=False, transform=mnist_transform(pad), **where)
    if recipe.data_path == "example":  # the example's loaders, as d8dd8ca^ builds them (§4.5)
        # Both shuffle from the global generator in the example's order; NormalizedImages: why
        train, test = (
            make_loader(NormalizedImages(s, pad=pad), n, shuffle=True, pin_memory=pin)
            for s, n in ((train_set, recipe.batch_size), (test_set, recipe.test_batch_size))
        )
        return Batches(train, test, test)  # no validation split: it scores the test set
    train_idx, val_idx = train_validation_indices(len(train_set))
    if recipe.data_path == "loader":
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
    raise AssertionError(f"unreachable: the recipe checked its data path {recipe.data_path!r}")


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
    data, target = sample_batch(train_batches, device)
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
    and the seconds spent compiling or capturing before the first step (0 when eager).
    With the ``example`` recipe, ``history``'s ``val_*`` figures are the test set's (the
    example scores it after every epoch) and ``test`` is the last epoch's."""

    model: MNISTModel
    history: list[dict[str, Any]]
    recipe: Recipe
    test: dict[str, float]
    setup_s: float = 0.0


def build_model(model_name: str, recipe: Recipe, device: torch.device | str) -> MNISTModel:
    """A fresh model as ``recipe`` asks (Net's dropout, the memory format) on ``device``;
    seed first for the same initial weights."""
    model = model_class(model_name).for_recipe(recipe).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def score_test(
    model: nn.Module,
    test_batches: Iterable,
    recipe: Recipe,
    *,
    device: torch.device | str,
    dry_run: bool = False,
    verbose: bool = True,
    evaluator: Callable[..., tuple[float, float]] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, float]:
    """The one score on the test set, at the end (a dry run: its first batch only), with the
    example's summary line: ``{"loss", "accuracy", "n"}``."""
    limit = 1 if dry_run else None
    loss, accuracy = (evaluator or evaluate)(model, test_batches, device=device, max_batches=limit)
    n = num_samples(test_batches)
    if dry_run:
        n = min(n, recipe.test_batch_size)
    if verbose:
        say(summary_line(loss, accuracy, n))
    return {"loss": loss, "accuracy": accuracy, "n": n}


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
    model = build_model(model_name, recipe, device)
    batches = make_batches(
        recipe, model_name, device=device, seed=seed, root=root, root_given_as=root_given_as
    )
    optimizer, scheduler = make_optimizer(model, recipe, steps_per_epoch=len(batches.train))
    start = time.perf_counter()
    trained, graphed_step = speed_up(model, recipe, batches.train, dry_run=dry_run)
    setup_s = time.perf_counter() - start
    if graphed_step is not None:
        optimizer, scheduler = graphed_step.optimizer, None
    example = recipe.data_path == "example" and not dry_run
    history = fit(
        trained,
        batches.train,
        batches.val,
        optimizer,
        line=example_epoch_line if example else None,
        scheduler=scheduler,
        epochs=1 if dry_run else recipe.epochs,
        device=device,
        progress=progress,
        log_interval=log_interval if log_interval is not None else recipe.log_interval,
        verbose=verbose,
        max_batches=1 if dry_run else None,
        graphed_step=graphed_step,
    )
    if example:  # the test set was scored after every epoch, as the example does: no more
        last = history[-1]
        test = {
            "loss": last["val_loss"],
            "accuracy": last["val_accuracy"],
            "n": num_samples(batches.test),
        }
    else:
        test = score_test(
            model, batches.test, recipe, device=device, dry_run=dry_run, verbose=verbose
        )
    return Trained(model.eval(), history, recipe, test, setup_s)
