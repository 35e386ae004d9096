"""Part 6's DDP: data-parallel training with PyTorch's own engine (``torch.distributed``,
``DistributedDataParallel``, launched by ``torchrun``).

Why this module exists: Part 6 (``notebooks/6_mnist_distributed.ipynb``) takes data-parallel
training apart, and the CLI trains with it under ``torchrun``. Nothing here re-implements the
engine: process groups, all-reduce and gradient bucketing are PyTorch's. What this module adds
is DDP's real differences from the one-process story of Part 4:

- wrapping the model (:func:`wrap_ddp`) and saving once, from rank 0, a checkpoint that loads
  into a plain ``Net`` (:func:`save_on_main`);
- scoring a split so that the accuracy rank 0 prints is exactly the one a single process
  computes for the same weights (:func:`evaluate_distributed`);
- :func:`train_ddp`: :func:`~mnist_dissected.train.fit` with DDP's hooks (the sampler's epoch,
  the losses averaged over ranks, the distributed evaluation, printing once).

The world it runs in is :mod:`~mnist_dissected.process_group`'s; each rank's share of the data,
:mod:`~mnist_dissected.sharding`'s; launching ``torchrun`` from a notebook,
:mod:`~mnist_dissected.launch`'s. Run a script that uses it with ``torchrun --nproc-per-node 2
script.py``; without ``torchrun`` the same code forms a world of one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .batches import numbered_batches
from .devices import seed_everything
from .models import unwrap  # what DDP wraps: saved and evaluated (Part 6, §6.6)
from .process_group import (
    DEFAULT_TIMEOUT_S,
    World,
    current_world,
    ddp_device,
    init_distributed,
    is_main_process,
    main_first,
    mean_over_ranks,
    peers_watched,
    pick_backend,
    print_once,
)
from .recipes import get_recipe, make_optimizer
from .sharding import set_epoch, shard_batches


def wrap_ddp(
    model: nn.Module, *, device: torch.device | str | None = None, **ddp_kwargs: Any
) -> DistributedDataParallel:
    """``model`` (already on its device) inside ``DistributedDataParallel``. Dissected in
    Part 6, §6.4.

    DDP copies rank 0's parameters to every rank here, and during ``backward`` it divides the
    gradients by the world size and all-reduces (sums) them in buckets while the rest of the
    backward pass still runs: every rank ends the step with the same averaged gradient, so the
    same optimizer step keeps the copies identical.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def save_on_main(path: str | os.PathLike, model: nn.Module, **metadata: Any) -> Path | None:
    """Save ``model`` (unwrapped) from rank 0 only, atomically, with
    :func:`mnist_dissected.checkpoint.save_checkpoint` (``metadata``: its keywords ``recipe``,
    ``history``, ``seed``, ...); the other ranks wait until the file is there. Returns the
    path on rank 0, ``None`` elsewhere. Dissected in Part 6, §6.6.

    Why rank 0 only: after every step the copies are identical, so N files would hold the
    same weights, and N processes writing one path race. If rank 0 fails to save, every rank
    raises (instead of the others waiting for a file that never comes).
    """
    from .checkpoint import save_checkpoint

    saved, error = None, None
    if is_main_process():
        try:
            saved = save_checkpoint(path, unwrap(model), **metadata)
        except Exception as e:  # reported to the other ranks below, then re-raised
            error = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        message = [f"{type(error).__name__}: {error}" if error is not None else None]
        dist.broadcast_object_list(message, src=0)  # also the barrier the others wait at
        if message[0] is not None and error is None:
            raise RuntimeError(f"rank 0 could not save {path}: {message[0]}")
    if error is not None:
        raise error
    return saved


@torch.no_grad()
def evaluate_distributed(
    model: nn.Module,
    batches: Iterable,
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``batches`` (the whole split, not sharded), the work split
    across ranks, the same result on every rank. Dissected in Part 6, §6.5.

    Exact by construction: rank r scores whole batches r, r + N, ... (no padding, so no
    sample counted twice), the per-batch sums are gathered, and every rank adds them up in
    batch order as :func:`mnist_dissected.train.evaluate` does. The correct count is
    therefore the single-process count, and the loss the same float.
    """
    from .models import loss_function

    world = current_world()
    module = unwrap(model)  # plain forward: DDP's bookkeeping is for training
    device = torch.device(device) if device is not None else next(module.parameters()).device
    loss_fn = loss_function(module)
    module.eval()
    rows = []
    mine = numbered_batches(batches, start=world.rank, step=world.world_size, limit=max_batches)
    for i, (data, target) in mine:
        data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = module(data)
        rows.append(
            (
                i,
                loss_fn(output, target, reduction="sum").item(),
                (output.argmax(dim=1) == target).sum().item(),
                len(target),
            )
        )
    if dist.is_initialized() and world.world_size > 1:
        gathered: list[Any] = [None] * world.world_size
        dist.all_gather_object(gathered, rows)
        rows = [row for rank_rows in gathered for row in rank_rows]
    total_loss, correct, n = 0.0, 0, 0
    for _, loss, right, count in sorted(rows):
        total_loss += loss
        correct += right
        n += count
    return total_loss / n, correct / n


@peers_watched(when="during training")  # a peer that dies: one line, not gloo's traceback
def train_ddp(
    model_name: str = "net",
    recipe: Any = "fast",
    *,
    seed: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
    log_interval: int | None = None,
    verbose: bool = True,
    root: str | os.PathLike | None = None,
    root_given_as: str = "the root argument",
    dry_run: bool = False,
    **overrides: Any,
):
    """:func:`~mnist_dissected.train.train_model`, data-parallel: call it inside
    :func:`~mnist_dissected.process_group.init_distributed` on every rank. Dissected in Part 6,
    §6.7.

    The same story as one process, told by the same :func:`~mnist_dissected.train.fit`, with
    DDP's real differences as its hooks: every rank seeds the same and builds the same model
    (DDP copies rank 0's weights anyway) and the same batches, trains on its shard (the
    recipe's ``batch_size`` is per rank: the global batch is ``world_size`` times it), tells
    the sampler each epoch, averages the step losses over ranks (the losses of the global
    batches), and scores validation and test with :func:`evaluate_distributed`. Rank 0 prints
    the example's lines. Returns a :class:`~mnist_dissected.train.Trained` with the unwrapped
    model and a history with the fields of one process's, on every rank; save it with
    :func:`save_on_main`.

    A NaN loss stops every rank at the end of the same epoch (the averaged losses are the same
    everywhere); a peer that dies stops the others with a one-line
    :class:`~mnist_dissected.process_group.WorldError` that names it (``peers_watched``).
    """
    # Long on purpose: the whole data-parallel story on one screen, as Part 6 §6.7 shows it.
    from .train import Trained, build_model, fit, make_batches, score_test

    world = current_world()
    recipe = get_recipe(recipe, **overrides)
    device = ddp_device(device, world)
    seed_everything(seed)
    model = build_model(model_name, recipe, device)
    with main_first():  # rank 0 prepares the data files, the others then read them
        batches = make_batches(
            recipe, model_name, device=device, seed=seed, root=root, root_given_as=root_given_as
        )
    train_batches = shard_batches(batches.train, world=world)
    ddp_model = wrap_ddp(model, device=device)
    # Different dropout masks on each rank, as different samples of one big batch would get.
    torch.manual_seed(seed + world.rank)
    optimizer, scheduler = make_optimizer(ddp_model, recipe, steps_per_epoch=len(train_batches))
    if log_interval is None:
        log_interval = recipe.log_interval
    history = fit(
        ddp_model,
        train_batches,
        batches.val,
        optimizer,
        scheduler=scheduler,
        epochs=1 if dry_run else recipe.epochs,
        device=device,
        progress=progress and world.is_main,
        log_interval=log_interval if world.is_main else None,
        verbose=verbose,
        max_batches=1 if dry_run else None,
        evaluator=evaluate_distributed,
        on_epoch_start=lambda epoch: set_epoch(train_batches, epoch),
        reduce_losses=mean_over_ranks,
        say=print_once,
    )
    test = score_test(
        model,
        batches.test,
        recipe,
        device=device,
        dry_run=dry_run,
        verbose=verbose,
        evaluator=evaluate_distributed,
        say=print_once,
    )
    return Trained(model.eval(), history, recipe, test)


def run_train_cli(
    model_name: str,
    recipe: Any,
    *,
    device: torch.device | str | None = None,
    save_path: str | os.PathLike | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **options: Any,
) -> int:
    """``python -m mnist_dissected train ...`` under ``torchrun``: every process runs this
    with the same model, recipe and ``options`` (those of :func:`train_ddp`: seed, progress,
    log_interval, root, dry_run, ...); rank 0 prints and saves. Dissected in Part 6, §6.7."""
    world = World.from_env()
    device = ddp_device(device, world)
    with init_distributed(backend=pick_backend(device), timeout_s=timeout_s) as world:
        print_once(
            f"Training {model_name} with the {recipe.name} recipe on {world.world_size} "
            f"processes ({dist.get_backend()}, {device.type}): batch {recipe.batch_size} "
            f"per process, {world.world_size * recipe.batch_size} per step"
        )
        run = train_ddp(model_name, recipe, device=device, **options)
        if save_path is not None:
            seed = options.get("seed")
            saving = f"check whether {save_path} is there: it is written whole or not at all"
            with peers_watched(when="while rank 0 saved the model", outcome=saving):
                path = save_on_main(
                    save_path,
                    run.model,
                    recipe=recipe,
                    history=run.history,
                    seed=seed,
                    test=run.test,
                )
            print_once(f"Saved {path}")
    return 0
