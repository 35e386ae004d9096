"""The trained ``Net`` that Part 5 studies: trained once, then read from a cache.

Why this module exists: Part 5 (and the "draw your digit" widget) need a trained model, and
retraining it every time a notebook runs wastes a minute. :func:`load_or_train` trains the
fast recipe once per seed and caches the checkpoint; two processes asking at once (nbval runs
notebooks side by side) train it once. The cache key is the whole recipe and the seed, so an
edited recipe is retrained, never silently reused. Saving and loading themselves are
:mod:`mnist_dissected.checkpoint`'s job; training is :mod:`mnist_dissected.train`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .mnist_files import data_root
from .models import MNISTModel
from .train import Recipe, get_recipe, pick_device, train_model


def recipe_key(recipe: Recipe, seed: int) -> str:
    """A short fingerprint of every field of ``recipe`` and the seed: the cache's key."""
    text = json.dumps({"recipe": dataclasses.asdict(recipe), "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_checkpoint_path(
    recipe: Recipe, *, seed: int = 1, root: str | os.PathLike | None = None
) -> Path:
    """Where :func:`load_or_train` caches a model: ``<data root>/checkpoints`` (the checkout's
    ``data/checkpoints/``, gitignored), one file per recipe and seed."""
    name = f"net_{recipe.name}_seed{seed}_{recipe_key(recipe, seed)}.pt"
    return data_root(root) / "checkpoints" / name


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
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


def _matches(meta: dict[str, Any], recipe: Recipe, seed: int) -> bool:
    return meta.get("seed") == seed and meta.get("recipe") == dataclasses.asdict(recipe)


def load_or_train(
    path: str | os.PathLike | None = None,
    *,
    recipe: str | Recipe = "fast",
    seed: int = 1,
    device: str | torch.device | None = None,
    progress: bool = False,
    root: str | os.PathLike | None = None,
) -> tuple[MNISTModel, dict[str, Any]]:
    """The ``Net`` trained with ``recipe`` and ``seed``: from the cache if it is there and was
    trained exactly so (every recipe field and the seed), else trained and cached.

    Returns the model in eval mode on ``device`` (default :func:`~mnist_dissected.train.
    pick_device`'s choice), the same device whether it was trained now or read from the cache,
    and the checkpoint's metadata (recipe, seed, history, test score). Dissected in Part 5, §5.1.
    """
    recipe = get_recipe(recipe)
    device = pick_device(device)
    path = Path(path) if path is not None else default_checkpoint_path(recipe, seed=seed, root=root)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            try:
                model, meta = load_checkpoint(path)
                if _matches(meta, recipe, seed):
                    return model.to(device), meta
                print(f"{path} was trained differently; training again", file=sys.stderr)
            except CheckpointError as e:
                print(f"cannot use the cached checkpoint ({e}); training again", file=sys.stderr)
        run = train_model(
            "net", recipe, seed=seed, device=device, progress=progress, verbose=False, root=root
        )
        save_checkpoint(
            path, run.model, recipe=recipe, history=run.history, seed=seed, test=run.test
        )
        meta = {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}
        return run.model.to(device).eval(), meta
