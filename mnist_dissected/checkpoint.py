"""Saving and loading trained models, safely.

Why this module exists:
- A checkpoint is the ``state_dict`` plus what you need to trust it later: architecture,
  recipe, epochs, history, torch version. It is written atomically (temporary file, then
  rename), so a crash or a second process never leaves half a file under the real name.
- Loading uses ``torch.load(..., weights_only=True)``: a checkpoint is a pickle, and a plain
  pickle can run any code when loaded. ``weights_only`` only rebuilds tensors and plain data,
  so a malicious file is refused instead of executed.
- :func:`load_or_train` gives Part 5 (and anyone) the trained ``Net`` without re-training each
  time, even when two notebooks ask at once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data import data_root
from .files import atomic_write
from .models import MODELS
from .train import Recipe, recipe_dict, train_model

FORMAT = "mnist-dissected/1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for what was asked."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that readers see whole or not at all (see :mod:`mnist_dissected.files`)."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    recipe: Recipe | None = None,
    history: list[dict[str, Any]] | None = None,
    seed: int | None = None,
) -> Path:
    """Save ``model``'s weights with the metadata that makes them reproducible."""
    payload = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "model_kwargs": {"dropout": model.dropout} if hasattr(model, "dropout") else {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "recipe": recipe_dict(recipe) if recipe is not None else None,
        "epochs": len(history) if history is not None else None,
        "history": history,
        "seed": seed,
        "torch_version": str(torch.__version__),
    }
    return atomic_save(payload, path)


def _unpickler_reason(error: Exception) -> str:
    """The one line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines()]
    return next((line for line in lines if "WeightsUnpickler error" in line), lines[0][:200])


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file with ``weights_only=True`` and check it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain "
            "data, which could run code when unpickled (torch.load(..., weights_only=True) "
            "blocked it). Only load such a file with weights_only=False if you made it "
            f"yourself or fully trust its source. ({_unpickler_reason(e)})") from e
    except Exception as e:  # zip, pickle and storage readers fail in many ways on bad bytes
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}); save it again") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an mnist-dissected checkpoint (no {FORMAT!r} format tag); for a "
            "bare state_dict use model.load_state_dict(torch.load(path, weights_only=True))")
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Weights from ``path`` into ``model`` (or into a fresh model of the saved architecture).

    Returns the model (in eval mode) and the checkpoint's metadata (everything but the
    weights). A checkpoint of another architecture raises :class:`CheckpointError`.
    """
    payload = read_checkpoint(path, map_location)
    arch = payload["architecture"]
    if model is None:
        if arch not in {cls.__name__ for cls in MODELS.values()}:
            raise CheckpointError(f"{path} holds an unknown architecture {arch!r}")
        model = next(c for c in MODELS.values() if c.__name__ == arch)(**payload["model_kwargs"])
    elif type(model).__name__ != arch:
        raise CheckpointError(f"{path} holds the weights of a {arch}, not of a "
                              f"{type(model).__name__}; load it into a {arch}()")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {arch}: {e}") from e
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}


def default_checkpoint_path(seed: int = 1, root: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_or_train` caches the fast-recipe ``Net``: ``<data root>/checkpoints``
    (the checkout's ``data/checkpoints/``, gitignored)."""
    return data_root(root) / "checkpoints" / f"net_fast_seed{seed}.pt"


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    """An exclusive lock between processes (POSIX ``flock``; elsewhere no lock, and the atomic
    write alone keeps the file whole)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_train(
    path: str | os.PathLike | None = None,
    seed: int = 1,
    device: str | torch.device | None = None,
    progress: bool = False,
    root: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained ``Net`` of the fast recipe: from the cache if there, else trained (the same
    seed gives the same weights) and cached. Two processes asking at once train it once.

    Returns the model on ``device`` in eval mode and the checkpoint's metadata (with history).
    """
    path = Path(path) if path is not None else default_checkpoint_path(seed, root)
    with _file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            try:
                model, meta = load_checkpoint(path)
                if meta.get("seed") == seed and (meta.get("recipe") or {}).get("name") == "fast":
                    return model.to(device or "cpu"), meta
                print(f"{path} was trained differently; training again", file=sys.stderr)
            except CheckpointError as e:
                print(f"cannot use the cached checkpoint ({e}); training again", file=sys.stderr)
        model, history, recipe = train_model("net", "fast", seed=seed, device=device,
                                             progress=progress, verbose=False, root=root)
        save_checkpoint(path, model, recipe, history, seed)
        model.eval()
        meta = {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}
        return model, meta
