"""Two networks over the same first steps: the series' ``Net`` with the classic recipe and
today's example's ``TodayNet`` with its own (Part 4's companion, §4.I).

Why this module exists: a whole epoch of ``TodayNet`` takes minutes on a CPU, and the question
the companion asks (which network gets further on the same images?) is answered after a ninth
of one. The runs use :func:`~mnist_dissected.experiments.recipe_run`, the training code of
every other experiment, and are cached like them
(:func:`~mnist_dissected.results_cache.cached_experiment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .devices import pick_device
from .experiments import recipe_run, training_split
from .recipes import get_recipe
from .results_cache import cached_experiment

#: The companion's §4.I: the series' ``Net`` with the classic recipe (d8dd8ca^'s example) and
#: today's example's ``TodayNet`` with its own recipe (Adadelta at 1.0, StepLR 0.7 per epoch).
NETWORKS: dict[str, tuple[str, str]] = {"Net": ("net", "classic"), "TodayNet": ("today", "today")}


def first_steps(
    networks: Mapping[str, tuple[str, str]] = NETWORKS,
    *,
    steps: int = 100,
    seed: int = 1,
    val_size: int | None = None,
    device: str | torch.device | None = None,
    root: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Each network of ``networks`` (name -> (model, recipe)) trained by its own recipe for the
    first ``steps`` batches of an epoch, from the same seed on the same training split, then
    scored on the validation split (its first ``val_size`` images; ``None``: all 5,000): how
    far each gets on the same images. A ninth of an epoch (the default, 100 steps)
    stands in for a whole one (``TodayNet``'s epoch takes minutes on a CPU, and the gap after it
    is the same way round: the companion shows both). One record per network (``model``,
    ``recipe``, the step losses, ``val_loss``, ``val_accuracy``, ``diverged``); cached."""
    device = pick_device(device)
    recipes = {name: get_recipe(recipe, epochs=1) for name, (_, recipe) in networks.items()}
    params = {
        "networks": {name: list(pair) for name, pair in networks.items()},
        "recipes": {name: recipe.training_fields() for name, recipe in recipes.items()},
        "steps": steps,
        "seed": seed,
        "val_size": val_size,
        "device": device.type,
    }

    def compute() -> dict[str, Any]:
        split = training_split(root=root)
        return {
            name: {"model": model, "recipe": recipe}
            | recipe_run(
                recipes[name],
                seed=seed,
                train_size=len(split[1]),
                device=device,
                split=split,
                max_batches=steps,
                val_size=val_size,
                model=model,
            )
            for name, (model, recipe) in networks.items()
        }

    return cached_experiment("first_steps", params, compute, root=root)
