"""One protocol for every source of batches the series trains and scores on (Part 1's two
data paths, Part 4's loop, Part 6's shards).

Why this module exists: the training loop (Part 4), the compiler's warm-up (``fastpath``) and
the distributed evaluation (Part 6) need to ask a source of batches three things: how many
samples an epoch holds, one batch taken without drawing a shuffle, and the batches numbered
r, r + N, ... of an epoch. :class:`~mnist_dissected.data.TensorBatches` and
:class:`~mnist_dissected.sharding.ShardedBatches` answer them themselves; PyTorch's
``DataLoader`` is adapted once, here (:class:`LoaderBatches`). Nobody sniffs class names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, default_collate

Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """What the series asks of a source of ``(images, targets)`` batches."""

    batch_size: int

    @property
    def num_samples(self) -> int:
        """Samples per epoch (under DDP: this rank's share)."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def __iter__(self) -> Iterator[Batch]:
        """One epoch of batches (drawing the epoch's shuffle, if any)."""

    def sample_batch(self) -> Batch:
        """The first ``batch_size`` samples, without drawing a shuffle: warming up a compiler
        or capturing a graph must not change the order the training then sees."""

    def numbered_batches(
        self, *, start: int, step: int, limit: int | None = None
    ) -> Iterator[tuple[int, Batch]]:
        """``(i, batch)`` for batches i = start, start + step, ... of one epoch (the first
        ``limit``), each batch whole: how ranks share the scoring of a split (Part 6, §6.5)."""


class LoaderBatches:
    """A ``DataLoader`` seen through :class:`BatchSource` (it iterates as the loader does)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.batch_size = loader.batch_size or 1

    @property
    def num_samples(self) -> int:
        # the sampler's length: a DistributedSampler's is this rank's share
        return len(self.loader.sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)

    def sample_batch(self) -> Batch:
        dataset = self.loader.dataset
        samples = [dataset[i] for i in range(min(self.batch_size, len(dataset)))]
        return default_collate(samples)

    def numbered_batches(
        self, *, start: int, step: int, limit: int | None = None
    ) -> Iterator[tuple[int, Batch]]:
        loader = self.loader
        if loader.batch_sampler is None:  # batch_size=None: the dataset yields batches itself
            for i, batch in enumerate(islice(loader, limit)):
                if i % step == start:
                    yield i, batch
            return
        chosen = list(islice(loader.batch_sampler, limit))[start::step]
        mine = DataLoader(
            loader.dataset,
            batch_sampler=chosen,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
        yield from zip(range(start, start + len(chosen) * step, step), mine, strict=True)


def as_batch_source(batches: Any) -> BatchSource | None:
    """``batches`` as a :class:`BatchSource`: itself if it is one, a ``DataLoader`` adapted,
    ``None`` for any other iterable (a list of batches, a generator)."""
    if isinstance(batches, BatchSource):
        return batches
    if isinstance(batches, DataLoader):
        return LoaderBatches(batches)
    return None


def num_samples(batches: Iterable) -> int | None:
    """How many samples ``batches`` yields per epoch (for the example's progress lines; under
    DDP a rank's share, Part 6), or ``None`` where it cannot say."""
    source = as_batch_source(batches)
    return source.num_samples if source is not None else None


def numbered_batches(
    batches: Iterable, *, start: int, step: int, limit: int | None = None
) -> Iterator[tuple[int, Batch]]:
    """:meth:`BatchSource.numbered_batches` of ``batches``; any other iterable is walked
    whole and every ``step``-th batch kept."""
    source = as_batch_source(batches)
    if source is not None:
        yield from source.numbered_batches(start=start, step=step, limit=limit)
        return
    for i, batch in enumerate(islice(batches, limit)):
        if i % step == start:
            yield i, batch


def sample_batch(batches: Any, device: torch.device | str) -> Batch:
    """:meth:`BatchSource.sample_batch` of ``batches``, on ``device``."""
    source = as_batch_source(batches)
    if source is None:
        raise TypeError(f"cannot take a sample batch of {type(batches).__name__} without a shuffle")
    data, target = source.sample_batch()
    return data.to(device), target.to(device)
