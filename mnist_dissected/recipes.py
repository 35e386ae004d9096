"""Training recipes: every choice that decides how a model is trained, checked in one place.

Why this module exists: the notebooks, the CLI, the benchmark, ``load_or_train`` and the
``torchrun`` workers all train from a :class:`Recipe`. A recipe checks its own fields when it is
built, so a contradiction (momentum for Adam, a StepLR ``gamma`` beside one-cycle) is an error
wherever it comes from, never silently ignored; the CLI shows the same messages as usage errors.
:func:`make_optimizer` turns a recipe into PyTorch's optimizer and scheduler with no default of
its own. Dissected in Part 4, §4.5 (the example's recipe) and §4.6 (the fast recipe and its
optimizer); §4.9 measures the fast recipe over five seeds.

- ``classic``: the example's recipe (SGD, lr 0.01, momentum 0.5, batch 64, dropout on), fed
  through the torchvision ``DataLoader``, trained on 55,000 images and validated on 5,000.
- ``example``: the example of d8dd8ca^ *exactly* (Part 4, §4.B): all 60,000 training images,
  shuffled by the global generator, the test set scored (shuffled, as it does) after every
  epoch with its whole-percent line. Run with the example's seed on the same machine, it prints
  the example's lines, loss for loss.
- ``today``: today's example's recipe (Part 4, §4.I): Adadelta at lr 1.0, StepLR with gamma
  0.7, 14 epochs, batch 64, for :class:`~mnist_dissected.models.TodayNet`; honest like
  ``classic`` (validation split, the test set once at the end).
- ``fast``: about 99% test accuracy with ``Net`` in 3 epochs (Part 4, §4.9): Adam with a
  one-cycle learning-rate schedule, batch 256, no dropout (§4.11), channels_last memory format
  (a layout only, §4.D), and the whole data set as one tensor on the device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from .errors import RecipeError

#: MNIST's 60,000 training images less the 5,000 held out for validation
#: (:data:`mnist_dissected.data.VALIDATION_SIZE`): the largest batch a recipe can ask for.
TRAINING_IMAGES = 55_000
#: All of MNIST's training images: what the ``example`` recipe trains on, as the example does.
MNIST_TRAINING_IMAGES = 60_000

OPTIMIZERS = ("sgd", "adam", "adadelta")
SCHEDULES = (None, "onecycle", "step")
#: "loader": DataLoaders over the validation split; "tensors": the same split as whole tensors;
#: "example": the example's own DataLoaders (60,000 images, the test set every epoch).
DATA_PATHS = ("loader", "tensors", "example")
#: Fields that change how a run goes, not the model it trains: not part of the cache key.
RUN_OPTIONS = ("name", "log_interval", "compile", "cuda_graph")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained, in one place, checked when built."""

    name: str
    batch_size: int
    lr: float
    epochs: int
    momentum: float = 0.0  # SGD's only
    optimizer: str = "sgd"  # "sgd", "adam" or "adadelta"
    schedule: str | None = None  # None, "onecycle" or "step" (StepLR, with gamma)
    dropout: float = 0.5  # Net's dropout probability
    channels_last: bool = False
    data_path: str = "loader"  # "loader", "tensors" (TensorBatches) or "example" (see above)
    test_batch_size: int = 1000
    log_interval: int | None = None  # the example's "Train Epoch" lines every N batches
    gamma: float | None = None  # StepLR's factor per epoch (today's example: 0.7)
    compile: bool = False  # torch.compile the model (see mnist_dissected.fastpath)
    cuda_graph: bool = False  # capture the training step as one CUDA graph (NVIDIA GPUs)

    def __post_init__(self) -> None:
        problems = recipe_problems(self)
        if problems:
            raise RecipeError("; ".join(problems))

    def training_fields(self) -> dict[str, Any]:
        """The fields that decide the trained weights and their recorded scores (all but
        :data:`RUN_OPTIONS`): what a cached model must match."""
        return training_fields(dataclasses.asdict(self))


def training_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (a recipe as a dict, e.g. read from a checkpoint) less :data:`RUN_OPTIONS`."""
    return {k: v for k, v in fields.items() if k not in RUN_OPTIONS}


def _in_range(value: Any, low: float, high: float, *, closed_high: bool = False) -> bool:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (
        ok_type
        and math.isfinite(value)
        and low <= value
        and (value <= high if closed_high else value < high)
    )


def recipe_problems(r: Recipe) -> list[str]:
    """What is wrong with ``r``, one sentence each (empty: nothing). Ranges first, then the
    fields that must agree with each other."""
    problems = []
    for field, low in (("batch_size", 1), ("test_batch_size", 1), ("epochs", 1)):
        value = getattr(r, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{field} must be an integer of at least {low}, got {value!r}")
    most = MNIST_TRAINING_IMAGES if r.data_path == "example" else TRAINING_IMAGES
    if isinstance(r.batch_size, int) and r.batch_size > most:
        problems.append(
            f"batch_size {r.batch_size} is more than the {most:,} training images; "
            f"at most {most} (one batch per epoch)"
        )
    if not _in_range(r.lr, 0, math.inf) or r.lr == 0:
        problems.append(f"lr must be a positive number, got {r.lr!r}")
    if not _in_range(r.momentum, 0, 1):
        problems.append(f"momentum must be in [0, 1), got {r.momentum!r}")
    if not _in_range(r.dropout, 0, 1):
        problems.append(f"dropout must be in [0, 1), got {r.dropout!r}")
    if r.log_interval is not None and not (isinstance(r.log_interval, int) and r.log_interval >= 1):
        problems.append(f"log_interval must be None or at least 1, got {r.log_interval!r}")
    for field, choices in (
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("data_path", DATA_PATHS),
    ):
        if getattr(r, field) not in choices:
            problems.append(f"unknown {field} {getattr(r, field)!r}; choose from {choices}")
    if r.momentum and r.optimizer != "sgd":
        problems.append(f"momentum is SGD's; the {r.name} recipe trains with {r.optimizer}")
    if r.gamma is not None and (not _in_range(r.gamma, 0, 1, closed_high=True) or r.gamma == 0):
        problems.append(f"gamma must be in (0, 1], got {r.gamma!r}")
    if r.gamma is not None and r.schedule not in ("step", None):
        problems.append(
            f"gamma drives a StepLR schedule; the {r.name} recipe has its own ({r.schedule})"
        )
    elif r.gamma is not None and r.schedule is None:
        problems.append("gamma is StepLR's factor per epoch: give schedule='step' with it")
    if r.schedule == "step" and r.gamma is None:
        problems.append("schedule 'step' needs gamma, the factor per epoch (today's example: 0.7)")
    if r.data_path == "example" and (r.channels_last or r.optimizer != "sgd" or r.schedule):
        problems.append(
            "data_path 'example' reproduces the example of d8dd8ca^ (SGD, no schedule, "
            "contiguous memory); for other choices use data_path 'loader'"
        )
    return problems


RECIPES: dict[str, Recipe] = {
    "classic": Recipe("classic", batch_size=64, lr=0.01, momentum=0.5, epochs=10, log_interval=10),
    "example": Recipe(
        "example",
        batch_size=64,
        lr=0.01,
        momentum=0.5,
        epochs=10,
        log_interval=10,
        data_path="example",
    ),
    "today": Recipe(
        "today",
        batch_size=64,
        lr=1.0,
        epochs=14,
        optimizer="adadelta",
        schedule="step",
        gamma=0.7,
        log_interval=10,
    ),
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


def describe(recipe: Recipe) -> str:
    """A recipe as a message names it: ``"the fast recipe"``, or, where its training fields
    differ from the named recipe's, ``"the fast recipe with dropout=0.5"``, so that a message
    about a variant never reads as if it were about the recipe itself."""
    named = RECIPES.get(recipe.name)
    if named is None:
        return f"the {recipe.name} recipe"
    base = named.training_fields()
    changed = [f"{k}={v!r}" for k, v in recipe.training_fields().items() if base.get(k) != v]
    return f"the {recipe.name} recipe" + (f" with {', '.join(changed)}" if changed else "")


def get_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    """A recipe by name (or as given), with some fields replaced (``None`` values ignored: an
    unset flag). The result is checked like any recipe: ``get_recipe("fast", momentum=0.9)``
    raises :class:`~mnist_dissected.errors.RecipeError`, since Adam has no such momentum."""
    if isinstance(recipe, str):
        try:
            recipe = RECIPES[recipe]
        except KeyError:
            raise RecipeError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}") from None
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise RecipeError(
            f"a recipe has no field {', '.join(unknown)}; its fields: {sorted(names)}"
        )
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def make_optimizer(model: nn.Module, recipe: Recipe, *, steps_per_epoch: int):
    """The recipe's optimizer and learning-rate scheduler (or ``None``), stepped after every
    batch: one-cycle by design, StepLR's per-epoch ``gamma`` spread over the epoch's steps
    so that it is ``gamma`` per epoch, as in today's example. Every number comes from the
    recipe. Dissected in Part 4, §4.6."""
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    elif recipe.optimizer == "adadelta":  # today's example's; its rho and eps as PyTorch's
        opt = torch.optim.Adadelta(model.parameters(), lr=recipe.lr)
    else:  # "adam": the recipe checked its optimizer when it was built
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    scheduler = None
    if recipe.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch
        )
    elif recipe.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(
            opt, step_size=steps_per_epoch, gamma=recipe.gamma
        )
    return opt, scheduler
