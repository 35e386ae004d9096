"""Where the package meets the PyTorch example itself: its files, its test line, its command
lines (Part 4, §4.G for checkpoints, §4.F for the command line).

Why this module exists: a reader comes with what pytorch/examples' ``mnist/main.py`` gave them,
from the version the series dissects (d8dd8ca^) or from today's, and each of its conventions is
met here, once:

- Its file: a bare ``state_dict`` (``torch.save(model.state_dict(), "mnist_cnn.pt")``, since
  d8dd8ca). :func:`match_state_dict` says which of the package's models it is, by its keys and
  shapes, or what does not match; :mod:`~mnist_dissected.checkpoint` loads it with that answer.
- Its test line: whole percents (:func:`example_test_line`), which ``score`` prints.
- Its command lines: today's ``--lr`` is Adadelta's (default 1.0), a rate at which the
  classic recipe's SGD learns nothing, so it is refused with what to type
  (:func:`check_sgd_rate`); ``--no-mps`` (2022 to 2025) means "not MPS" (:func:`without_mps`).
- Its script itself: :mod:`~mnist_dissected.example_run` runs it (both versions ship
  verbatim in ``upstream/``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import torch

from .errors import DeviceError, UsageError
from .models import MODELS, MNISTModel
from .recipes import Recipe

#: The example's line at the end of each epoch, with its blank lines: ``test()`` at d8dd8ca^
#: and today, ``print('\nTest set: ...\n'.format(...))``.
TEST_LINE = "\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n"

#: Networks of later versions of the example that have :class:`~mnist_dissected.models.Net`'s
#: keys (conv1, conv2, fc1, fc2) but other shapes, told apart by ``conv1.weight``'s shape.
#: (Today's, since 0634306, is :class:`~mnist_dissected.models.TodayNet` and loads as one.)
LATER_EXAMPLE_NETS = {
    (20, 1, 5, 5): "the example's network of d8dd8ca (Dec 2018) to 0634306 (Nov 2019)",
}

#: The smallest ``--lr`` that, reaching the classic recipe's SGD without ``--momentum``, is
#: taken for today's example's Adadelta rate (today's example has no ``--momentum`` flag and
#: its ``--lr`` defaults to 1.0). Measured, one epoch of the classic recipe (SGD, momentum 0.5,
#: batch 64), validation accuracy: lr 0.01 93%, 0.1 96%, 0.3 92-93%, 0.4 74-75%, 0.5 10-62%,
#: 0.7 and 1.0 10% (chance): no rate that trains well is refused.
ADADELTA_RATE_FLOOR = 0.5


def example_test_line(loss: float, correct: int, n: int) -> str:
    """The example's test line for a mean ``loss`` and ``correct`` answers out of ``n``, blank
    lines included: whole percents, ``(99%)``, where the package's own line has two decimals."""
    return TEST_LINE.format(loss, correct, n, 100.0 * correct / n)


def example_epoch_line(loss: float, accuracy: float, n: int) -> str:
    """The example's test line for the figures :func:`~mnist_dissected.train.evaluate` returns
    (mean loss, accuracy): what the ``example`` recipe prints after every epoch (Part 4, §4.B)."""
    return example_test_line(loss, round(accuracy * n), n)


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Each entry's name and shape: what a ``state_dict`` must agree on to load."""
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


@cache
def model_shapes(model: type[MNISTModel]) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``model``'s ``state_dict`` (built once per class)."""
    return shapes(model().state_dict())


def _listed(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def mismatch(given: dict[str, tuple[int, ...]], model: type[MNISTModel]) -> str | None:
    """What keeps a ``state_dict`` of these shapes from loading into ``model``: its missing and
    unexpected keys, else its first wrong shape; ``None`` if nothing does."""
    wanted = model_shapes(model)
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    if missing or unexpected:
        parts = [f"lacks {_listed(missing)}" if missing else ""]
        parts.append(f"has unexpected {_listed(unexpected)}" if unexpected else "")
        return f"compared with a {model.__name__}, it " + ", and ".join(p for p in parts if p)
    wrong = next((k for k in wanted if given[k] != wanted[k]), None)
    if wrong is None:
        return None
    problem = f"its {wrong} has shape {list(given[wrong])} where a {model.__name__}'s has "
    problem += str(list(wanted[wrong]))
    later = LATER_EXAMPLE_NETS.get(given.get("conv1.weight", ())) if model.name == "net" else None
    return f"{problem}, so it is {later}, which this package does not build" if later else problem


def match_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[type[MNISTModel] | None, str]:
    """The package's model whose ``state_dict`` has exactly the keys and shapes of ``state``,
    or ``None`` and what did not match, said against the nearest model (the most entries
    alike in name and shape). Why keys and shapes, exactly: they are all a bare file says of its
    network, and anything less would load some weights and leave others at random."""
    given = shapes(state)
    problems = {cls: mismatch(given, cls) for cls in MODELS.values()}
    for cls, problem in problems.items():
        if problem is None:
            return cls, ""
    nearest = max(problems, key=lambda cls: len(given.items() & model_shapes(cls).items()))
    return None, problems[nearest]


def check_sgd_rate(recipe: Recipe, *, momentum_given: bool) -> None:
    """Raise :class:`~mnist_dissected.errors.UsageError` where ``--lr`` is today's example's
    Adadelta rate on its way to SGD: a rate of :data:`ADADELTA_RATE_FLOOR` or more, for an SGD
    recipe, without ``--momentum``. Why: SGD with momentum stays at chance at such rates (10%
    accuracy, silently); with ``--momentum`` the command line cannot be today's example's, so
    the rate is taken as asked."""
    if recipe.optimizer != "sgd" or momentum_given or recipe.lr < ADADELTA_RATE_FLOOR:
        return
    raise UsageError(
        f"--lr {recipe.lr} is a rate for today's example's Adadelta; the {recipe.name} recipe "
        f"trains with SGD (momentum {recipe.momentum}), which learns little or nothing at "
        f"{ADADELTA_RATE_FLOOR} and above: for today's example, network and Adadelta, use "
        f"--model today --recipe today; else --lr 0.01 (and --gamma 0.7 for today's StepLR), "
        f"or add --momentum {recipe.momentum} to train SGD at --lr {recipe.lr} anyway"
    )


def without_mps(device: torch.device, *, given: bool) -> torch.device:
    """``device`` under ``--no-mps``, as the example of 2022 to 2025 meant it: anything but MPS,
    so CUDA where present, else the CPU. ``given``: the device came from ``--device`` (then MPS
    is a contradiction, not a choice to override)."""
    if device.type != "mps":
        return device
    if given:
        raise DeviceError("--device mps and --no-mps contradict each other")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
