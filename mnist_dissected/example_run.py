"""The example's own ``main.py``, run on this machine, and what it printed, kept (Part 4, §4.B).

Why this module exists: the series claims that its ``example`` recipe prints the very lines of
pytorch/examples' ``mnist/main.py``. Both versions of that script ship verbatim in
``upstream/``, and :func:`run_example` runs one in a fresh Python where ``../data`` is the
series' data, so nothing is downloaded. A run takes about half a minute, so what it printed is
cached beside the cached models (:mod:`~mnist_dissected.results_cache`), under a key that holds
everything its numbers depend on (:func:`example_run_key`): the first run pays, later Run Alls
and tests read it (train once, reuse). Apart from :mod:`~mnist_dissected.example_compat`
(the example's conventions, which :mod:`~mnist_dissected.checkpoint` needs): the cache sits
above the checkpoints, so this module must too.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import MnistDissectedError, UsageError
from .mnist_files import data_root, prepare_raw
from .results_cache import cached_experiment, experiment_path

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
