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
- Its script itself: both versions of ``main.py`` ship verbatim in ``upstream/``, and
  :func:`run_example` runs one on this machine, so that Part 4, §4.B compares its printed
  lines with the ``example`` recipe's, line for line. A run takes about half a minute, so what
  it printed is cached beside the cached models, under a key that holds all its numbers depend
  on (:func:`example_run_key`), and read back the next time (train once, reuse).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from .errors import DeviceError, MnistDissectedError, UsageError
from .mnist_files import data_root, prepare_raw
from .models import MODELS, MNISTModel
from .recipes import Recipe

#: The example's ``main.py`` in each version, verbatim (``upstream/README.md`` says whence).
EXAMPLE_SCRIPTS = {
    "d8dd8ca^": Path(__file__).with_name("upstream") / "main_d8dd8ca_parent.py",
    "77f55b9": Path(__file__).with_name("upstream") / "main_77f55b9.py",
}


#: The flag of each version that keeps its run on the CPU (else it takes CUDA, or today's
#: version any accelerator, where there is one).
CPU_FLAGS = {"d8dd8ca^": "--no-cuda", "77f55b9": "--no-accel"}

#: The name :func:`run_example`'s transcripts are cached under
#: (:func:`~mnist_dissected.results_cache.cached_experiment`).
EXAMPLE_RUN = "example_run"


class ExampleRunError(MnistDissectedError):
    """The example's own script did not run to its end."""


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


def example_script(version: str) -> Path:
    """The example's ``main.py`` of ``version``; a :class:`~mnist_dissected.errors.UsageError`
    naming the versions there are for any other."""
    script = EXAMPLE_SCRIPTS.get(version)
    if script is None:
        raise UsageError(f"unknown version {version!r}; choose from {sorted(EXAMPLE_SCRIPTS)}")
    return script


def flag_given(args: Sequence[str], flag: str) -> bool:
    """Whether argparse reads ``flag`` in ``args``: written out, or shortened to a prefix
    (argparse takes ``--no-c`` for ``--no-cuda``), before any ``--``."""
    for arg in args:
        if arg == "--":
            return False
        if arg == flag or (len(arg) > 2 and arg.startswith("--") and flag.startswith(arg)):
            return True
    return False


def _accelerator() -> str:
    """The accelerator today's example takes where it may (``torch.accelerator``, torch 2.6
    on; before, its script fails, so nothing it printed is ever cached): its type, or "cpu"."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not accelerator.is_available():
        return "cpu"
    return accelerator.current_accelerator().type


def example_device(version: str, args: Sequence[str]) -> str:
    """The device the example's run takes on this machine with ``args``, as its script picks
    it: the CPU under its CPU flag (:data:`CPU_FLAGS`) whatever the machine has, else CUDA
    (today's version: any accelerator) where there is one; a GPU with its name, since another
    GPU computes other last digits."""
    if flag_given(args, CPU_FLAGS[version]):
        return "cpu"
    if version == "d8dd8ca^":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = _accelerator()
    if kind == "cuda":
        return f"cuda: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return kind


def _threads() -> dict[str, Any]:
    """What sets the number of threads the script's process computes with (its CPUs and the
    variables that override them): sums split over another number of threads may round
    differently in the last digits."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, **{v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def example_run_key(args: Sequence[str], *, version: str = "d8dd8ca^") -> dict[str, Any]:
    """Everything the numbers that the example's run prints depend on, beyond what every cached
    experiment's key holds (the torch version,
    :func:`~mnist_dissected.results_cache.experiment_key`): the script's bytes (SHA-256), its
    arguments, torchvision's and Python's versions, the CPU's instruction set (AVX2 and AVX-512
    round the last digits differently), the threads and the device. Why all of them: a cached
    transcript is shown as this machine's run, so it must be the run this machine would print."""
    import torchvision  # here, not at the top: only a cached run needs it

    return {
        "version": version,
        "script_sha256": hashlib.sha256(example_script(version).read_bytes()).hexdigest(),
        "args": list(args),
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": _threads(),
        "device": example_device(version, args),
    }


def run_example(
    *args: str,
    version: str = "d8dd8ca^",
    root: str | os.PathLike | None = None,
    timeout: float | None = None,
    cache: bool = True,
) -> str:
    """What the example's own ``main.py`` (``version``, untouched) prints when run with
    ``args`` in a fresh Python on this machine.

    Why a cache (``cache=True``): a run takes about half a minute, and what it prints depends
    only on :func:`example_run_key` and the torch version. So the first run's transcript is kept
    as JSON in ``<data root>/checkpoints/`` (beside the cached models) and read back after, by
    the next Run All or test; a run that fails is never kept, and a file that cannot be read or
    holds another key is run again and replaced. ``cache=False`` runs the script afresh, and
    reads and writes nothing."""
    # here, not at the top: the cache's modules import checkpoint, which imports this one
    from .results_cache import cached_experiment, experiment_path

    script = example_script(version)
    root = data_root(root).resolve()
    if not cache:
        return _run_script(script, args, root=root, timeout=timeout)
    params = example_run_key(args, version=version)

    def run() -> dict[str, str]:
        return {"stdout": _run_script(script, args, root=root, timeout=timeout)}

    stdout = cached_experiment(EXAMPLE_RUN, params, run, root=root).get("stdout")
    if not isinstance(stdout, str):  # a file with this key but no transcript: replace it
        experiment_path(EXAMPLE_RUN, params, root=root).unlink(missing_ok=True)
        stdout = cached_experiment(EXAMPLE_RUN, params, run, root=root)["stdout"]
    return stdout


def _run_script(script: Path, args: Sequence[str], *, root: Path, timeout: float | None) -> str:
    """Run ``script`` with ``args`` in a fresh Python, and return what it printed. Why a fresh
    process from a temporary folder: the script is the example's, not the package's, and it
    reads MNIST from ``../data`` with ``download=True``; there ``../data`` is the series' data
    folder (its files checked first), so it finds them and downloads nothing. Nothing is left
    behind."""
    missing = prepare_raw(root)
    if missing:
        raise ExampleRunError(f"MNIST is not in {root}: {', '.join(missing)} missing")
    with tempfile.TemporaryDirectory(prefix="mnist-example-") as folder:
        (Path(folder) / "data").symlink_to(root, target_is_directory=True)
        (Path(folder) / "run").mkdir()
        done = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=Path(folder) / "run",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ExampleRunError(f"the example's {script.name} exited with {done.returncode}:\n{tail}")
    return done.stdout


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
