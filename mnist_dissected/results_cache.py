"""Results of experiments, cached as JSON beside the cached models (Parts 4 and 5: the
experiments and the diagnostics; every part that runs one).

Why this module exists: an experiment worth showing in a notebook takes tens of seconds, and a
learner's second Run All should only plot. Its result is stored under a key that holds
everything it depends on: the experiment, every parameter, the torch version (kernels and
random draws change between versions) and :data:`~mnist_dissected.pretrained.TRAINING_STREAM`
(the order of random draws). An edited experiment is computed again, never read from a stale
file; a file that cannot be read, or holds another experiment, is computed again and replaced;
a result is written atomically, under a lock, so that two processes compute it once.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write, file_lock
from .mnist_files import data_root
from .pretrained import TRAINING_STREAM

#: What a cache file's format is called; a file without it is not one of ours to trust.
CACHE_FORMAT = "mnist-dissected-experiment/1"


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists): what is hashed, stored and
    compared, so a cold run and a warm one see the very same numbers."""
    return json.loads(json.dumps(value, allow_nan=False))


def experiment_key(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a cached result depends on: the experiment, its parameters, the torch version
    (kernels and random draws change between versions) and the package's
    :data:`~mnist_dissected.pretrained.TRAINING_STREAM` (the order of random draws)."""
    return {
        "experiment": name,
        "params": _plain(dict(params)),
        "torch": torch.__version__,
        "stream": TRAINING_STREAM,
    }


def experiment_path(
    name: str, params: Mapping[str, Any], *, root: str | Path | None = None
) -> Path:
    """Where :func:`cached_experiment` keeps a result: ``<data root>/checkpoints``, beside the
    cached models, one file per experiment and set of parameters."""
    text = json.dumps(experiment_key(name, params), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return data_root(root) / "checkpoints" / f"experiment_{name}_{digest}.json"


def _read_cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The result stored at ``path`` if it is whole and was computed for ``key``, else ``None``
    (with a line on stderr saying why it is computed again)."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["format"] != CACHE_FORMAT or stored["key"] != key:
            raise ValueError("it holds another experiment")
        if not isinstance(stored["result"], dict):
            raise ValueError("its result is not a record")
        return stored["result"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        print(f"cannot use {path.name} ({e}); computing it again", file=sys.stderr)
        return None


def cached_experiment(
    name: str,
    params: Mapping[str, Any],
    compute: Callable[[], dict[str, Any]],
    *,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """``compute()``'s result (a JSON-able dict), read from the cache when it was computed with
    these very ``params``, torch version and training stream; else computed, written atomically
    and returned as read back. Two processes asking at once compute it once."""
    key = experiment_key(name, params)
    path = experiment_path(name, params, root=root)
    with file_lock(path.with_name(path.name + ".lock")):
        result = _read_cached(path, key)
        if result is not None:
            return result
        result = _plain(compute())
        text = json.dumps({"format": CACHE_FORMAT, "key": key, "result": result}, indent=1)
        with atomic_write(path) as f:
            f.write(text.encode())
        return result
