"""Part 4's experiments: the baselines to beat, the learning-rate sweep, overfitting on purpose,
and a fair comparison of optimizers. Used in Part 4 (the experiments).

Why this module exists: a recipe's numbers (Adam, one-cycle, a peak rate of 0.01, no dropout)
are only as good as the experiments that chose them, and an experiment is only honest if its
seeds are named, its choices are made on the validation split and the test set is scored once,
for the final table. These functions run those experiments small (subsets of the training
split, a few hundred steps, whole-tensor batches) with the package's own training code
(:mod:`~mnist_dissected.recipes`, :mod:`~mnist_dissected.train`), and cache what they measure
as JSON beside :func:`~mnist_dissected.pretrained.load_or_train`'s checkpoints, so that a
notebook's second run only plots. The cache key holds every parameter of the experiment, the
torch version and :data:`~mnist_dissected.pretrained.TRAINING_STREAM`: an edited experiment
is computed again, never read from a stale file; a file that cannot be read, or holds another
experiment, is computed again and replaced.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data import TensorBatches, load_mnist, train_validation_indices
from .devices import pick_device, seed_everything
from .guards import CHANCE_LOSS
from .recipes import Recipe, get_recipe, make_optimizer
from .results_cache import (  # noqa: F401 (the cache's names, as the tests reach them)
    CACHE_FORMAT,
    _plain,
    cached_experiment,
    experiment_key,
    experiment_path,
)
from .train import build_model, evaluate, fit, make_batches, score_test, train_epoch

# --------------------------------------------------------------------------- the splits


def training_split(*, root: str | Path | None = None) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The training images (torchvision's dataset, raw) with the indices of the 55,000
    training and 5,000 validation images (the split every part uses)."""
    train_set = load_mnist(train=True, root=root)
    train_idx, val_idx = train_validation_indices(len(train_set))
    return train_set, train_idx, val_idx


# --------------------------------------------------------------------------- baselines


def class_means(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean image of each digit (10 x 28 x 28, float64, pixels in [0, 1]), from uint8
    images: Part 1's mean images, here learned from the training split only."""
    return torch.stack([images[labels == d].double().mean(dim=0) / 255 for d in range(10)])


def nearest_mean_predict(means: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """For each uint8 image, the digit whose mean image is nearest (Euclidean distance over
    the pixels): a classifier with no training but averaging, the first baseline to beat."""
    pixels = images.double().flatten(1) / 255
    return torch.cdist(pixels, means.flatten(1)).argmin(dim=1)


def linear_model() -> nn.Module:
    """A linear classifier: one ``nn.Linear(784, 10)`` on the normalized pixels, raw scores
    out (7,850 parameters; the loss that fits it is cross-entropy)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).double().mean().item()


def baseline_scores(
    *,
    recipe: str | Recipe = "fast",
    seed: int = 1,
    device: str | torch.device | None = None,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Validation and test accuracy of the nearest-mean classifier and of :func:`linear_model`
    trained with ``recipe`` (its batches, optimizer, schedule and epochs) from ``seed``; cached.
    The test set is scored here once, for the final table; nothing is chosen on it."""
    recipe = get_recipe(recipe)
    device = pick_device(device)
    params = {"recipe": recipe.training_fields(), "seed": seed, "device": device.type}

    def compute() -> dict[str, Any]:
        train_set, train_idx, val_idx = training_split(root=root)
        test_set = load_mnist(train=False, root=root)
        images, labels = train_set.data, train_set.targets
        means = class_means(images[train_idx], labels[train_idx])
        nearest = {
            "parameters": means.numel(),
            "val_accuracy": _accuracy(
                nearest_mean_predict(means, images[val_idx]), labels[val_idx]
            ),
            "test_accuracy": _accuracy(
                nearest_mean_predict(means, test_set.data), test_set.targets
            ),
        }
        seed_everything(seed)
        model = linear_model().to(device)
        batches = make_batches(recipe, "net", device=device, seed=seed, root=root)
        optimizer, scheduler = make_optimizer(model, recipe, steps_per_epoch=len(batches.train))
        history = fit(
            model,
            batches.train,
            batches.val,
            optimizer,
            scheduler=scheduler,
            epochs=recipe.epochs,
            device=device,
            progress=False,
            verbose=False,
        )
        test = score_test(model, batches.test, recipe, device=device, verbose=False)
        linear = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "val_accuracy": history[-1]["val_accuracy"],
            "test_accuracy": test["accuracy"],
        }
        return {"nearest_mean": nearest, "linear": linear}

    return cached_experiment("baselines", params, compute, root=root)


# --------------------------------------------------------------------------- training runs


def is_diverged(losses: Sequence[float], *, tail: int = 10) -> bool:
    """True if a run's step losses went non-finite, or climbed more than 10% above the loss of
    guessing (ln 10, :data:`~mnist_dissected.guards.CHANCE_LOSS`) and ended (the mean of the
    last ``tail``) no better than 90% of it: the steps overshot and threw away what the model
    had. A run that merely crawls never climbs above guessing; one that spikes and recovers
    ends well below it."""
    if not losses or not all(math.isfinite(v) for v in losses):
        return True
    end = losses[-min(tail, len(losses)) :]
    return max(losses) > 1.1 * CHANCE_LOSS and sum(end) / len(end) > 0.9 * CHANCE_LOSS


def train_and_validate(
    model: nn.Module,
    train_batches: Iterable,
    val_batches: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    epochs: int = 1,
    max_batches: int | None = None,
    scored_train: Iterable | None = None,
) -> dict[str, Any]:
    """Train for ``epochs`` (:func:`~mnist_dissected.train.train_epoch`, no progress bar) and
    score the validation batches after each, and ``scored_train`` too if given (the training
    images, scored in eval mode: the curve that parts from validation when a model overfits).

    Unlike :func:`~mnist_dissected.train.fit`, a run that diverges is recorded, not stopped
    with an error: a sweep wants to see it. Its step losses end at the first non-finite one,
    and ``diverged`` says so (see :func:`is_diverged`)."""
    record: dict[str, Any] = {"step_losses": [], "val_loss": [], "val_accuracy": []}
    if scored_train is not None:
        record |= {"train_loss": [], "train_accuracy": []}
    for epoch in range(1, epochs + 1):
        losses = train_epoch(
            model,
            train_batches,
            optimizer,
            scheduler=scheduler,
            epoch=epoch,
            progress=False,
            max_batches=max_batches,
            stop_early=False,  # a sweep records divergence instead of raising
        )
        finite = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
        record["step_losses"] += losses[:finite]
        if finite < len(losses):
            break
        for split, batches in (("val", val_batches), ("train", scored_train)):
            if batches is not None:
                loss, accuracy = evaluate(model, batches)
                record[f"{split}_loss"].append(loss)
                record[f"{split}_accuracy"].append(accuracy)
    record["diverged"] = len(record["val_loss"]) < epochs or is_diverged(record["step_losses"])
    return record


def _batches(
    train_set: Any,
    indices: torch.Tensor,
    recipe: Recipe,
    *,
    device: torch.device,
    seed: int = 0,
    shuffle: bool = False,
    batch_size: int | None = None,
) -> TensorBatches:
    return TensorBatches.from_dataset(
        train_set,
        device,
        indices=indices,
        batch_size=batch_size or recipe.batch_size,
        shuffle=shuffle,
        seed=seed,
        channels_last=recipe.channels_last,
    )


def recipe_run(
    recipe: Recipe,
    *,
    seed: int,
    train_size: int,
    device: torch.device,
    split: tuple[Any, torch.Tensor, torch.Tensor],
    max_batches: int | None = None,
    score_train: bool = False,
    val_size: int | None = None,
    model: str = "net",
) -> dict[str, Any]:
    """``model`` (default ``Net``) trained with ``recipe`` from ``seed`` on the first
    ``train_size`` images of the training split, scored after each epoch on the validation
    split (its first ``val_size`` images; ``None``: all 5,000), see :func:`train_and_validate`.
    The same seed gives the same initial weights and the same order of batches, whatever the
    recipe."""
    train_set, train_idx, val_idx = split
    subset, val_idx = train_idx[:train_size], val_idx[:val_size]
    train = _batches(train_set, subset, recipe, device=device, seed=seed, shuffle=True)
    val = _batches(train_set, val_idx, recipe, device=device, batch_size=recipe.test_batch_size)
    scored = None
    if score_train:
        scored = _batches(
            train_set, subset, recipe, device=device, batch_size=recipe.test_batch_size
        )
    seed_everything(seed)
    network = build_model(model, recipe, device)
    optimizer, scheduler = make_optimizer(network, recipe, steps_per_epoch=len(train))
    return train_and_validate(
        network,
        train,
        val,
        optimizer,
        scheduler=scheduler,
        epochs=recipe.epochs,
        max_batches=max_batches,
        scored_train=scored,
    )


# --------------------------------------------------------------------------- the sweeps


def lr_sweep(
    rates: Sequence[float],
    *,
    seeds: Sequence[int] = (1, 2),
    train_size: int = 10_000,
    epochs: int = 1,
    recipe: str | Recipe = "fast",
    device: str | torch.device | None = None,
    root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """``recipe`` (by default the fast one) at each peak learning rate in ``rates``, for each
    seed, shrunk to ``epochs`` over ``train_size`` training images: one record per run
    (``lr``, ``seed``, the step losses, validation loss and accuracy after each epoch,
    ``diverged``); cached."""
    recipe = get_recipe(recipe, epochs=epochs)
    device = pick_device(device)
    params = {
        "rates": list(rates),
        "seeds": list(seeds),
        "train_size": train_size,
        "recipe": recipe.training_fields(),
        "device": device.type,
    }

    def compute() -> dict[str, Any]:
        split = training_split(root=root)
        runs = [
            {"lr": lr, "seed": seed}
            | recipe_run(
                get_recipe(recipe, lr=lr),
                seed=seed,
                train_size=train_size,
                device=device,
                split=split,
            )
            for seed in seeds
            for lr in rates
        ]
        return {"runs": runs}

    return cached_experiment("lr_sweep", params, compute, root=root)["runs"]


def best_rate(runs: Sequence[Mapping[str, Any]], *, seed: int | None = None) -> float:
    """The rate whose runs (of ``seed``, or the mean over all seeds) end with the lowest
    validation loss, leaving out any rate that diverged on any seed. The choice looks at the
    validation split only: a sweep never sees the test set."""
    chosen = [r for r in runs if seed is None or r["seed"] == seed]
    failed = {r["lr"] for r in chosen if r["diverged"]}
    losses: dict[float, list[float]] = {}
    for r in chosen:
        if r["lr"] not in failed:
            losses.setdefault(r["lr"], []).append(r["val_loss"][-1])
    if not losses:
        raise ValueError("every rate diverged: nothing to choose")
    return min(losses, key=lambda lr: sum(losses[lr]) / len(losses[lr]))


#: The optimizers Part 4 compares untuned ("Three optimizers, one budget"), as recipe fields,
#: each with the rates its small sweep tries (its untuned rate among them).
OPTIMIZER_GRID: dict[str, dict[str, Any]] = {
    # plain SGD up to 1.0: its best is 0.1 or 0.3 (a near tie that the thread count and torch
    # version decide), so that either is inside the grid, a worse rate on each side
    "SGD": {"optimizer": "sgd", "momentum": 0.0, "rates": [0.01, 0.1, 0.3, 1.0]},
    "SGD + momentum 0.5": {"optimizer": "sgd", "momentum": 0.5, "rates": [0.01, 0.1, 0.3]},
    "Adam": {"optimizer": "adam", "momentum": 0.0, "rates": [0.001, 0.003, 0.01]},
}


def optimizer_sweep(
    grid: Mapping[str, Mapping[str, Any]] = OPTIMIZER_GRID,
    *,
    steps: int = 200,
    seed: int = 1,
    recipe: str | Recipe = "classic",
    device: str | torch.device | None = None,
    root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Each optimizer of ``grid`` at each of its rates, on Part 4's budget for the untuned
    comparison: ``steps`` batches of ``recipe`` (the classic one: batch 64, dropout 0.5), no
    schedule, the same seed (so the same initial weights and batches) for all; each run scored
    on the validation split after its last step. One record per run (``optimizer``, ``lr``,
    ``seed``, step losses, ``val_loss``, ``val_accuracy``, ``diverged``); cached."""
    base = dataclasses.replace(get_recipe(recipe), epochs=1, schedule=None, data_path="tensors")
    device = pick_device(device)
    params = {
        "grid": {name: dict(settings) for name, settings in grid.items()},
        "steps": steps,
        "seed": seed,
        "recipe": base.training_fields(),
        "device": device.type,
    }

    def compute() -> dict[str, Any]:
        split = training_split(root=root)
        runs = []
        for name, settings in grid.items():
            for lr in settings["rates"]:
                run = get_recipe(
                    base, optimizer=settings["optimizer"], momentum=settings["momentum"], lr=lr
                )
                record = recipe_run(
                    run,
                    seed=seed,
                    train_size=len(split[1]),
                    device=device,
                    split=split,
                    max_batches=steps,
                )
                runs.append({"optimizer": name, "lr": lr, "seed": seed} | record)
        return {"runs": runs}

    return cached_experiment("optimizer_sweep", params, compute, root=root)["runs"]


def best_runs(runs: Sequence[Mapping[str, Any]], *, by: str = "optimizer") -> dict[Any, Any]:
    """For each value of ``by`` (each optimizer), its run with the lowest final validation
    loss among those that did not diverge: each optimizer at its own best rate, chosen on
    the validation split."""
    best: dict[Any, Any] = {}
    for r in runs:
        if r["diverged"]:
            continue
        if r[by] not in best or r["val_loss"][-1] < best[r[by]]["val_loss"][-1]:
            best[r[by]] = r
    return best


# --------------------------------------------------------------------------- overfitting


def overfitting_runs(
    settings: Sequence[tuple[int, float, int]],
    *,
    seed: int = 1,
    lr: float = 0.001,
    batch_size: int = 50,
    val_size: int | None = 1000,
    device: str | torch.device | None = None,
    root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """``Net`` trained on the first ``train_size`` training images with ``dropout`` for
    ``epochs``, for each ``(train_size, dropout, epochs)`` of ``settings``: Adam at a constant
    ``lr`` (no schedule, so that only the data decides when learning stops), scored after each
    epoch on those training images and on the first ``val_size`` validation images, both in
    eval mode. One record per setting (``train_size``, ``dropout``, ``epochs``, the step losses,
    ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy`` per epoch); cached."""
    # replace, not get_recipe: get_recipe reads schedule=None as "not given"
    base = dataclasses.replace(get_recipe("fast"), lr=lr, batch_size=batch_size, schedule=None)
    device = pick_device(device)
    params = {
        "settings": [list(s) for s in settings],
        "seed": seed,
        "val_size": val_size,
        "recipe": base.training_fields(),
        "device": device.type,
    }

    def compute() -> dict[str, Any]:
        split = training_split(root=root)
        runs = [
            {"train_size": size, "dropout": dropout, "epochs": epochs}
            | recipe_run(
                get_recipe(base, dropout=dropout, epochs=epochs),
                seed=seed,
                train_size=size,
                device=device,
                split=split,
                score_train=True,
                val_size=val_size,
            )
            for size, dropout, epochs in settings
        ]
        return {"runs": runs}

    return cached_experiment("overfitting", params, compute, root=root)["runs"]
