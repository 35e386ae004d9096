"""The trained ``Net`` that Part 5 studies: trained once, then read from a cache.

Why this module exists: Part 5 (and the "draw your digit" widget) need a trained model, and
retraining it every time a notebook runs wastes a minute. :func:`load_or_train` trains the
fast recipe once per seed and caches the checkpoint; two processes asking at once (nbval runs
notebooks side by side) train it once. The cache key is the recipe's training fields and the
seed, so an edited recipe is retrained, never silently reused (a run option such as
``log_interval`` retrains nothing); a file it did not write itself is never
replaced, only used if it holds the very model asked for, or if it is a bare ``state_dict`` of
one of the package's models (the example's own ``mnist_cnn.pt``), which is used as it is.
Saving and loading themselves are :mod:`mnist_dissected.checkpoint`'s job; training is
:mod:`mnist_dissected.train`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    BARE_FORMAT,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .devices import pick_device
from .files import file_lock
from .mnist_files import data_root
from .models import MNISTModel
from .recipes import Recipe, describe, get_recipe, training_fields
from .train import train_model

#: Which order of random draws the training code takes. Raised whenever the code (not a
#: recipe) changes the draws, so that models cached before are trained again, never mixed in:
#: 2 stopped the progress bar drawing a shuffle of its own each epoch (December 2026).
TRAINING_STREAM = 2


def recipe_key(recipe: Recipe, seed: int, *, model: str = "net") -> str:
    """A short fingerprint of the model, the recipe's training fields, the seed and
    :data:`TRAINING_STREAM`: the cache's key. Run options (``log_interval``, ``compile``,
    ``cuda_graph``, the name) are left out: they change how a run goes, not the model it trains,
    so they never retrain a cached model."""
    fields = {"recipe": recipe.training_fields(), "seed": seed, "stream": TRAINING_STREAM}
    if model != "net":  # Net's keys as they were: its name was implied
        fields["model"] = model
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_checkpoint_path(
    recipe: Recipe, *, seed: int = 1, root: str | os.PathLike | None = None, model: str = "net"
) -> Path:
    """Where :func:`load_or_train` caches a model: ``<data root>/checkpoints`` (the checkout's
    ``data/checkpoints/``, gitignored), one file per model, recipe and seed."""
    name = f"{model}_{recipe.name}_seed{seed}_{recipe_key(recipe, seed, model=model)}.pt"
    return data_root(root) / "checkpoints" / name


#: The mark :func:`load_or_train` leaves in the checkpoints it writes: the files it may replace.
WRITTEN_BY = "mnist_dissected.pretrained.load_or_train"


def _matches(meta: dict[str, Any], recipe: Recipe, seed: int, model: str) -> bool:
    return (
        str(meta.get("architecture")).lower() == model  # version 1 saved the class name
        # what load_or_train trained itself, with today's order of random draws
        and (meta.get("written_by") != WRITTEN_BY or meta.get("stream") == TRAINING_STREAM)
        and meta.get("seed") == seed
        and isinstance(meta.get("recipe"), dict)
        and training_fields(meta["recipe"]) == recipe.training_fields()
    )


def _not_ours(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {problem}, and load_or_train did not write it, so it was left as it is: pass "
        "another path (or none, for the cache), or move or delete that file to train there"
    )


def load_or_train(
    path: str | os.PathLike | None = None,
    *,
    recipe: str | Recipe = "fast",
    seed: int = 1,
    device: str | torch.device | None = None,
    progress: bool = True,
    root: str | os.PathLike | None = None,
    model: str = "net",
) -> tuple[MNISTModel, dict[str, Any]]:
    """The ``model`` (default ``Net``) trained with ``recipe`` and ``seed``: from the cache if it
    is there and was trained exactly so (every training field of the recipe, the seed, the
    :data:`TRAINING_STREAM`), else trained and cached.

    A bare ``state_dict`` at ``path`` (the example's ``mnist_cnn.pt``, or ``export``'s) whose
    keys and shapes are one of the package's models' is returned as that model, whatever
    ``recipe`` and ``seed`` say: it records neither (its metadata is ``None`` but for
    ``format`` and ``architecture``). Any other file at ``path`` that is not the model asked for
    is replaced only if load_or_train wrote it (or it is in the cache, ``path=None``): anything
    else, e.g. a checkpoint saved with another recipe, raises :class:`~mnist_dissected.
    checkpoint.CheckpointError` and is left as it is. Nobody's file is trained over.

    When it has to train, it says why on stderr first and shows a progress bar per epoch
    (``progress=False``: no bar), so that a first run that takes minutes is never silent.

    Returns the model in eval mode on ``device`` (default :func:`~mnist_dissected.devices.
    pick_device`'s choice), the same device whether it was trained now or read from the cache,
    and the checkpoint's metadata (recipe, seed, history, test score). Dissected in Part 5, §5.1.
    """
    recipe = get_recipe(recipe)
    device = pick_device(device)
    cache = path is None  # the cache's files are all load_or_train's
    if path is None:
        path = default_checkpoint_path(recipe, seed=seed, root=root, model=model)
    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            try:
                loaded, meta = load_checkpoint(path)
            except CheckpointError as e:
                if not cache:
                    raise _not_ours(path, f"cannot be used ({e})") from e
                print(f"cannot use the cached checkpoint ({e}); training again", file=sys.stderr)
            else:
                if _matches(meta, recipe, seed, model) or (
                    not cache and meta["format"] == BARE_FORMAT
                ):
                    return loaded.to(device), meta
                if not cache and meta.get("written_by") != WRITTEN_BY:
                    wanted = f"{model} trained with this recipe and seed {seed}"
                    raise _not_ours(path, f"holds another model than {wanted}")
                print(f"{path.name} was trained differently; training again", file=sys.stderr)
        else:
            epochs = f"{recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}"
            print(
                f"No cached {model} for {describe(recipe)} and seed {seed}: training it "
                f"now, once ({epochs}; later runs read {path.name})",
                file=sys.stderr,
            )
        run = train_model(
            model,
            recipe,
            seed=seed,
            device=device,
            progress=progress,
            verbose=False,
            log_interval=0,  # the bar says how far it got; no Train Epoch lines
            root=root,
        )
        save_checkpoint(
            path,
            run.model,
            recipe=recipe,
            history=run.history,
            seed=seed,
            test=run.test,
            extra={"written_by": WRITTEN_BY, "stream": TRAINING_STREAM},
        )
        meta = {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}
        return run.model.to(device).eval(), meta
