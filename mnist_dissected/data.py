"""Part 1's module: the MNIST dataset, its transforms, and two ways to feed it to a model.

Why this module exists (dissected in Part 1, ``notebooks/1_mnist_load.ipynb``):

- :func:`load_mnist` gives the training or test split as torchvision's ``MNIST`` dataset, from
  the verified shipped files (:mod:`mnist_dissected.mnist_files` does that plumbing).
- Two data paths: the classic one (``Dataset`` -> PIL image -> ``ToTensor`` -> ``Normalize`` ->
  ``DataLoader``), and a fast one (:class:`TensorBatches`: the whole split as one normalized
  tensor on the device) that yields exactly the same batches.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from .mnist_files import not_found_error, pick_root, prepare_raw, undo_on_failure

#: Mean and standard deviation of the training pixels (scaled to [0, 1]), as in the example.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_mnist(
    train: bool = True,
    *,
    root: str | os.PathLike | None = None,
    transform=None,
    download: bool = True,
    root_given_as: str = "the root argument",
) -> datasets.MNIST:
    """The MNIST training (or test) split as a ``torchvision.datasets.MNIST``.

    Dissected in Part 1, §1.1 and §1.A. Shipped files are verified and used; only when they are
    missing does torchvision download (with a message first). If that fails too, nothing it
    wrote is left behind and the error says what was looked for, where, and why there
    (``root_given_as`` names how ``root`` was given, e.g. ``"--data"``).
    """
    root, origin = pick_root(root, given_as=root_given_as)
    missing = prepare_raw(root)
    if missing:
        cause = None
        if download:
            print(
                f"MNIST not found under {root}; downloading it with torchvision ...",
                file=sys.stderr,
            )
            log = io.StringIO()
            try:
                with undo_on_failure(root), contextlib.redirect_stdout(log):
                    datasets.MNIST(root, train=train, download=True)
                    missing = prepare_raw(root, downloaded=True)
            except Exception as e:  # torchvision raises RuntimeError/URLError/OSError variously
                cause = download_failure(e, log.getvalue().strip())
        if missing:
            raise not_found_error(root, origin, missing, cause)
    return datasets.MNIST(root, train=train, transform=transform, download=False)


def download_failure(error: Exception, printed: str) -> Exception:
    """torchvision's error, with the file it was fetching named and what it printed kept.

    Why: torchvision's wording differs by version (0.17 prints "Downloading <url>" lines and
    says only "File not found or corrupted." for a bad checksum; later versions print nothing
    and say "Error downloading <file>"), so the file is the last one either of them names."""
    fetched = re.findall(r"[\w-]+-ubyte\.gz", f"{printed}\n{error}")
    if not (fetched or printed):
        return error
    where = f"while downloading {fetched[-1]}: " if fetched else ""
    details = f"\n{printed}" if printed and printed not in str(error) else ""
    return RuntimeError(f"{where}{type(error).__name__}: {error}{details}")


# --------------------------------------------------------------------------- transforms


def mnist_transform(pad: int = 0) -> transforms.Compose:
    """``ToTensor`` then ``Normalize`` as in the example; ``pad=2`` first pads 28x28 to 32x32
    for :class:`~mnist_dissected.models.LeNet`. Dissected in Part 1, §1.11."""
    steps = [transforms.Pad(pad)] if pad else []
    steps += [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    return transforms.Compose(steps)


def pad_to_32(images: torch.Tensor, *, value: float = 0.0) -> torch.Tensor:
    """Pad a batch of 28x28 images by 2 pixels on each side, giving LeNet's 32x32.

    The border is black: 0 for raw pixels (what ``transforms.Pad(2)`` does to the PIL image);
    for images already normalized pass ``value=NORMALIZED_BLACK``. Why pad rather than resize:
    Part 2, §2.I.
    """
    return torch.nn.functional.pad(images, (2, 2, 2, 2), value=value)


#: What a black (0) pixel becomes after ``Normalize``.
NORMALIZED_BLACK = (0.0 - MNIST_MEAN) / MNIST_STD


def compute_mean_std(dataset: datasets.MNIST) -> tuple[float, float]:
    """Mean and standard deviation of all pixels of ``dataset`` scaled to [0, 1] (float64).
    Dissected in Part 1, §1.9."""
    pixels = dataset.data.double() / 255
    return pixels.mean().item(), pixels.std().item()


def normalize_images(data: torch.Tensor, *, pad: int = 0) -> torch.Tensor:
    """uint8 N x 28 x 28 -> normalized float N x 1 x H x W, with the very operations (and so
    the very bits) of ``Pad`` + ``ToTensor`` + ``Normalize``. Dissected in Part 1, §1.9."""
    x = data.unsqueeze(1)
    if pad:
        x = torch.nn.functional.pad(x, (pad,) * 4)
    return x.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)


def centre_of_mass(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ink-weighted mean (row, column) of each image of a stack (..., H, W), in pixels
    from the top-left pixel's centre, so the middle of a 28 x 28 field is (13.5, 13.5).
    MNIST's makers put it at (14, 14), half a pixel below and right of that middle (within
    half a pixel: they shifted by whole pixels). Dissected in Part 1, §1.B (used again in
    Part 5, §5.J); the preprocessing of drawings (:mod:`mnist_dissected.preprocess`) centres
    them by it.
    """
    mass = images.double()
    total = mass.sum(dim=(-2, -1))
    if (total <= 0).any():
        raise ValueError("an image without ink has no centre of mass")
    rows = torch.arange(images.shape[-2], dtype=torch.float64)
    cols = torch.arange(images.shape[-1], dtype=torch.float64)
    return (
        (mass.sum(dim=-1) * rows).sum(dim=-1) / total,
        (mass.sum(dim=-2) * cols).sum(dim=-1) / total,
    )


#: Training images held out to choose recipes and epochs on (the test set is scored once).
VALIDATION_SIZE = 5000


def train_validation_indices(
    n: int = 60000, *, validation_size: int = VALIDATION_SIZE, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into training and validation indices, the same way for every
    training seed (its own generator, seeded with ``seed``). Dissected in Part 4, §4.4."""
    if not 0 < validation_size < n:
        raise ValueError(f"validation_size must be in 1..{n - 1}, got {validation_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[validation_size:].sort().values, order[:validation_size].sort().values


# --------------------------------------------------------------------------- two data paths


def make_loader(
    dataset: Dataset,
    batch_size: int = 64,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs,
) -> DataLoader:
    """A ``DataLoader``. ``num_workers=0`` by default: worker processes that are started fresh
    (macOS, Windows, and Linux from Python 3.14) cannot import what a notebook defines, and
    hang or fail in Jupyter. A ``seed`` makes the shuffle order reproducible. Dissected in
    Part 1, §1.12 and §1.13."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        **kwargs,
    )


class NormalizedImages(Dataset):
    """A split normalized once, as one tensor, and served by index as ``mnist_transform(pad)``
    serves it, with the very bits (:func:`normalize_images`). Why: the example's recipe draws
    its batches as ``main.py`` does (a ``DataLoader`` whose sampler shuffles from the global
    generator, Part 4's companion, §4.B), and a Python transform per image made each of its
    epochs on a CPU seconds longer; ``__getitems__`` gives the ``DataLoader`` a batch's samples
    from one indexing."""

    def __init__(self, dataset: datasets.MNIST, *, pad: int = 0) -> None:
        self.images = normalize_images(dataset.data, pad=pad)
        self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        chosen = torch.as_tensor(indices)
        return list(zip(self.images[chosen].unbind(), self.targets[chosen].tolist(), strict=True))


@dataclass
class TensorBatches:
    """A whole split held as one normalized float tensor (on the device), cut into batches.

    Same batches as ``make_loader(load_mnist(transform=mnist_transform()))`` for the same
    order, without a Python call per image: the fast path of the series. Iterating reshuffles
    every epoch from a generator seeded once, so a run is reproducible. Dissected in Part 1,
    §1.14.
    """

    images: torch.Tensor
    targets: torch.Tensor
    batch_size: int = 64
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.MNIST,
        device: str | torch.device = "cpu",
        *,
        indices: torch.Tensor | None = None,
        pad: int = 0,
        channels_last: bool = False,
        **kwargs,
    ) -> TensorBatches:
        """Normalize all of ``dataset`` (or the samples at ``indices``) at once and move it to
        ``device``."""
        data, targets = dataset.data, dataset.targets
        if indices is not None:
            data, targets = data[indices], targets[indices]
        images = normalize_images(data, pad=pad).to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return cls(images, targets.to(device), **kwargs)

    def __len__(self) -> int:
        n = len(self.targets)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        """This epoch's order of sample indices (a fresh permutation when shuffling)."""
        n = len(self.targets)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``(images, targets)`` in the given order of indices."""
        order = order.to(self.targets.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.images[idx], self.targets[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())

    # What every source of batches answers (mnist_dissected.batches.BatchSource).

    @property
    def num_samples(self) -> int:
        """Samples per epoch (all of them: ``drop_last`` drops whole batches, counted here)."""
        return len(self.targets)

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``batch_size`` samples, without drawing a shuffle."""
        return self.images[: self.batch_size], self.targets[: self.batch_size]

    def numbered_batches(
        self, *, start: int, step: int, limit: int | None = None
    ) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
        """``(i, batch)`` for batches i = start, start + step, ... of one epoch's order."""
        order, b = self.order().to(self.targets.device), self.batch_size
        count = len(self) if limit is None else min(len(self), limit)
        for i in range(start, count, step):
            idx = order[i * b : (i + 1) * b]
            yield i, (self.images[idx], self.targets[idx])
