"""Part 6's sharding: each rank's share of every epoch, for both data paths of the series.

Why this module exists: data-parallel training needs every rank to see a different, equally
large part of each epoch, so that a per-rank batch of B samples makes a global batch of N x B
and every rank runs the same number of steps. For the ``DataLoader`` that is PyTorch's
``DistributedSampler`` (:func:`distributed_loader`); for the whole split held as one tensor
(:class:`~mnist_dissected.data.TensorBatches`) it is :class:`ShardedBatches`, cut exactly as the
sampler cuts. Dissected in Part 6, §6.3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from .process_group import World, current_world

if TYPE_CHECKING:  # imported when used: mnist_dissected.data imports torchvision (seconds)
    from .data import TensorBatches


def shard_size(n: int, world_size: int, *, drop_last: bool = False) -> int:
    """How many of ``n`` samples each rank gets per epoch, as ``DistributedSampler`` counts:
    ``ceil(n / world_size)`` (some samples twice), or with ``drop_last`` ``floor``."""
    if drop_last and n % world_size:
        return max(0, math.ceil((n - world_size) / world_size))
    return math.ceil(n / world_size)


def shard_indices(
    order: torch.Tensor, *, rank: int, world_size: int, drop_last: bool = False
) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's ``order`` of sample indices, exactly as
    ``DistributedSampler`` cuts it. Dissected in Part 6, §6.3.

    The order is padded by wrapping around to a multiple of ``world_size`` (or cut with
    ``drop_last``), and rank r takes positions r, r + N, r + 2N, ...: every rank gets the same
    number of samples, so every rank runs the same number of steps. (A rank with one step
    more would wait forever in an all-reduce that its peers never join.)
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    n = len(order)
    total = shard_size(n, world_size, drop_last=drop_last) * world_size
    if total > n:  # pad by wrapping around, repeating the order if it is very short
        order = order.repeat(math.ceil(total / n))
    return order[:total][rank:total:world_size]


class ShardedBatches:
    """Rank ``rank``'s share of every epoch of a :class:`~mnist_dissected.data.TensorBatches`,
    cut the way ``DistributedSampler`` cuts a dataset. Dissected in Part 6, §6.3.

    Every rank holds the whole split and draws the same permutation each epoch (the
    ``TensorBatches`` generator is seeded identically on every rank and advances once per
    epoch), then keeps positions r, r + N, ... of it (:func:`shard_indices`). Batches of
    ``batch_size`` per rank make global batches of ``world_size * batch_size``. Nothing is
    sent between processes: agreeing on the seed is enough.
    """

    def __init__(
        self,
        batches: TensorBatches,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        world = current_world()
        self.whole = batches
        self.rank = world.rank if rank is None else rank
        self.world_size = world.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {self.rank}")
        self.drop_last = drop_last

    @property
    def batch_size(self) -> int:
        """Samples per batch on this rank (the global batch is ``world_size`` times this)."""
        return self.whole.batch_size

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (the same on every rank)."""
        return shard_size(len(self.whole.targets), self.world_size, drop_last=self.drop_last)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.whole.drop_last else -(-n // b)

    def order(self) -> torch.Tensor:
        """This rank's indices for the next epoch (draws the epoch's permutation)."""
        return shard_indices(
            self.whole.order(), rank=self.rank, world_size=self.world_size, drop_last=self.drop_last
        )

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``(images, targets)`` for this rank's ``order``."""
        order = order.to(self.whole.targets.device)
        b = self.batch_size
        for start in range(0, len(self) * b, b):
            idx = order[start : start + b]
            yield self.whole.images[idx], self.whole.targets[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())

    # What every source of batches answers (mnist_dissected.batches.BatchSource).

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split's first ``batch_size`` samples, without drawing a shuffle."""
        return self.whole.sample_batch()

    def numbered_batches(
        self, *, start: int, step: int, limit: int | None = None
    ) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
        """``(i, batch)`` for this rank's batches i = start, start + step, ... of one epoch."""
        for i, batch in enumerate(self):
            if limit is not None and i >= limit:
                return
            if i % step == start:
                yield i, batch


def distributed_loader(
    dataset: Dataset,
    batch_size: int = 64,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    world: World | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over this rank's share of ``dataset``, through a
    ``DistributedSampler``. Dissected in Part 6, §6.3.

    The sampler draws one permutation from ``seed + epoch`` (the same on every rank), pads it
    by wrapping (or drops the tail with ``drop_last``) and keeps every N-th index from this
    rank's. Call ``loader.sampler.set_epoch(epoch)`` (or :func:`set_epoch`) before each
    epoch: without it every epoch repeats epoch 0's order. ``batch_size`` is per rank;
    other keywords go to :func:`~mnist_dissected.data.make_loader`.
    """
    from .data import make_loader

    world = world or current_world()
    sampler = DistributedSampler(
        dataset,
        num_replicas=world.world_size,
        rank=world.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    return make_loader(dataset, batch_size, sampler=sampler, **kwargs)


def shard_batches(batches: Iterable, *, world: World | None = None) -> Iterable:
    """This rank's share of training batches built for one process: a ``DataLoader`` becomes
    :func:`distributed_loader` over the same dataset (same batch size, shuffling, seed and
    workers), a :class:`~mnist_dissected.data.TensorBatches` becomes :class:`ShardedBatches`.
    """
    from .data import TensorBatches  # here: torchvision takes seconds to import

    world = world or current_world()
    if isinstance(batches, TensorBatches):
        return ShardedBatches(batches, rank=world.rank, world_size=world.world_size)
    if isinstance(batches, DataLoader):
        generator = batches.generator
        return distributed_loader(
            batches.dataset,
            batches.batch_size,
            world=world,
            shuffle=isinstance(batches.sampler, RandomSampler),
            seed=generator.initial_seed() if generator is not None else 0,
            num_workers=batches.num_workers,
            pin_memory=batches.pin_memory,
            collate_fn=batches.collate_fn,
        )
    raise TypeError(f"cannot shard {type(batches).__name__}: give a DataLoader or TensorBatches")


def set_epoch(batches: Iterable, epoch: int) -> None:
    """Tell a ``DistributedSampler`` which epoch starts (its shuffle is seeded with
    ``seed + epoch``); :class:`ShardedBatches` needs nothing (its generator advances)."""
    sampler = getattr(batches, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
