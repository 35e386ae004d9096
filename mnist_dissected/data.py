"""MNIST for the series: the shipped files, verified, and two ways to feed them to a model.

Why this module exists:
- The repository ships MNIST in ``data/`` so nothing breaks offline or when a download mirror is
  down. Before torchvision looks for the data, :func:`prepare_raw` checks each shipped ``.gz``
  (SHA-256 of the decompressed bytes) and decompresses it into ``<root>/MNIST/raw/``, where
  ``torchvision.datasets.MNIST`` finds it and never tries a download.
- Two data paths: the classic one (``Dataset`` -> PIL image -> ``ToTensor`` -> ``Normalize`` ->
  ``DataLoader``) that the notebooks dissect, and a fast one (:class:`TensorBatches`: the whole
  split as one normalized tensor on the device) that yields exactly the same batches.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from .files import atomic_write

#: Mean and standard deviation of the training pixels (scaled to [0, 1]), as in the example.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

ENV_VAR = "MNIST_DISSECTED_DATA"

#: The four IDX files: name (without .gz) -> SHA-256 of the decompressed bytes.
RESOURCES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are nowhere to be found and could not be downloaded."""


class CorruptDataError(ValueError):
    """A data file exists but its content is not the MNIST file it claims to be."""


# --------------------------------------------------------------------------- where the data lives


def checkout_data_dir() -> Path | None:
    """The repository's ``data/`` folder when the package runs from a checkout, else None."""
    candidate = Path(__file__).resolve().parent.parent / "data"
    if (candidate.parent / "pyproject.toml").is_file() and candidate.is_dir():
        return candidate
    return None


def user_cache_dir() -> Path:
    """Per-user cache for pip installs (e.g. Colab), following XDG / macOS / Windows habits."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "mnist_dissected"


def _pick_root(root: str | os.PathLike | None) -> tuple[Path, str]:
    """The data folder and where the choice came from (the one place that ranks them)."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    if (checkout := checkout_data_dir()) is not None:
        return checkout, "the checkout's data/ folder"
    return user_cache_dir(), f"the per-user cache (not a checkout, ${ENV_VAR} not set)"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Pick the data folder: the argument, else ``$MNIST_DISSECTED_DATA``, else the checkout's
    ``data/``, else the per-user cache."""
    return _pick_root(root)[0]


# --------------------------------------------------------------------------- verified files


def sha256_of(path: Path, *, gzipped: bool = False) -> str:
    """SHA-256 of a file's bytes, or of its decompressed bytes when ``gzipped``."""
    digest = hashlib.sha256()
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _corrupt(path: Path, expected: str, detail: str) -> CorruptDataError:
    return CorruptDataError(
        f"{path} is corrupt or truncated ({detail}); expected SHA-256 of the decompressed IDX "
        f"data {expected}. The file was left as it is. Replace it with a good copy (e.g. "
        f"`git checkout -- data/` in the repository, or delete it to let torchvision download it)."
    )


def _decompress_verified(gz_path: Path, raw_path: Path, expected: str) -> None:
    """Decompress ``gz_path`` to ``raw_path`` atomically, only if its content has the expected
    checksum: a half-written or wrong file never appears under the final name."""
    try:
        with atomic_write(raw_path) as out, gzip.open(gz_path, "rb") as src:
            digest = hashlib.sha256()
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != expected:
                raise _corrupt(gz_path, expected, f"its content has SHA-256 {digest.hexdigest()}")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise _corrupt(gz_path, expected, f"{type(e).__name__}: {e}") from e


def _candidates(root: Path, name: str) -> list[Path]:
    """Where a shipped or downloaded ``.gz`` of ``name`` may lie under ``root``."""
    return [root / f"{name}.gz", root / "MNIST" / "raw" / f"{name}.gz"]


def prepare_raw(root: Path) -> list[str]:
    """Make ``<root>/MNIST/raw/<name>`` hold each verified IDX file; return the names missing.

    A decompressed file already there is checked too (it may be a user's own copy): a bad one
    raises :class:`CorruptDataError` and is never deleted or silently replaced.
    """
    missing = []
    for name, expected in RESOURCES.items():
        raw = root / "MNIST" / "raw" / name
        if raw.is_file():
            actual = sha256_of(raw)
            if actual != expected:
                raise _corrupt(raw, expected, f"its SHA-256 is {actual}")
            continue
        gz = next((p for p in _candidates(root, name) if p.is_file()), None)
        if gz is None:
            missing.append(name)
        else:
            _decompress_verified(gz, raw, expected)
    return missing


def _root_origin(root: str | os.PathLike | None) -> str:
    """Why :func:`data_root` picked the folder it did (for error messages)."""
    return _pick_root(root)[1]


def _not_found(root: Path, origin: str, missing: Sequence[str],
               cause: Exception | None) -> MNISTNotFoundError:
    why = f"The download failed too: {type(cause).__name__}: {cause}\n" if cause else ""
    return MNISTNotFoundError(
        f"MNIST files not found: {', '.join(f'{n}.gz' for n in missing)}.\n"
        f"Data folder: {root} (from {origin}). Looked for each file as\n"
        f"  {root / '<name>.gz'}\n"
        f"  {root / 'MNIST' / 'raw' / '<name>'} (decompressed) and <name>.gz beside it\n"
        f"{why}"
        "Fix: put the four gzipped IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; "
        "the repository ships them in data/) into one folder and point "
        f"${ENV_VAR} at it (or pass root=...), or run with network access once to download them."
    )


def load_mnist(
    train: bool = True,
    root: str | os.PathLike | None = None,
    transform=None,
    download: bool = True,
) -> datasets.MNIST:
    """The MNIST training (or test) split as a ``torchvision.datasets.MNIST``.

    Shipped files are verified and used; only when they are missing does torchvision download
    (with a message first), and if that fails too the error says what was looked for and where.
    """
    origin, root = _root_origin(root), data_root(root)
    missing = prepare_raw(root)
    if missing:
        cause = None
        if download:
            print(f"MNIST not found under {root}; downloading it with torchvision ...",
                  file=sys.stderr)
            try:
                datasets.MNIST(root, train=train, download=True)
                missing = prepare_raw(root)
            except Exception as e:  # torchvision raises RuntimeError/URLError/OSError variously
                cause = e
        if missing:
            raise _not_found(root, origin, missing, cause)
    return datasets.MNIST(root, train=train, transform=transform, download=False)


# --------------------------------------------------------------------------- transforms


def mnist_transform(pad: int = 0) -> transforms.Compose:
    """``ToTensor`` then ``Normalize`` as in the example; ``pad=2`` first pads 28x28 to 32x32
    for :class:`~mnist_dissected.models.LeNet`."""
    steps = [transforms.Pad(pad)] if pad else []
    steps += [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    return transforms.Compose(steps)


def pad_to_32(images: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Pad a batch of 28x28 images by 2 pixels on each side, giving LeNet's 32x32.

    The border is black: 0 for raw pixels (what ``transforms.Pad(2)`` does to the PIL image);
    for images already normalized pass ``value=NORMALIZED_BLACK``.
    """
    return torch.nn.functional.pad(images, (2, 2, 2, 2), value=value)


#: What a black (0) pixel becomes after ``Normalize``.
NORMALIZED_BLACK = (0.0 - MNIST_MEAN) / MNIST_STD


def compute_mean_std(dataset: datasets.MNIST) -> tuple[float, float]:
    """Mean and standard deviation of all pixels of ``dataset`` scaled to [0, 1] (float64)."""
    pixels = dataset.data.double() / 255
    return pixels.mean().item(), pixels.std().item()


def normalize_images(data: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """uint8 N x 28 x 28 -> normalized float N x 1 x H x W, with the very operations (and so
    the very bits) of ``Pad`` + ``ToTensor`` + ``Normalize``."""
    x = data.unsqueeze(1)
    if pad:
        x = torch.nn.functional.pad(x, (pad,) * 4)
    return x.float().div(255).sub(MNIST_MEAN).div(MNIST_STD)


# --------------------------------------------------------------------------- two data paths


def make_loader(
    dataset: Dataset,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs,
) -> DataLoader:
    """A ``DataLoader``. ``num_workers=0`` by default: worker processes that are started fresh
    (macOS, Windows, and Linux from Python 3.14) cannot import what a notebook defines, and
    hang or fail in Jupyter. A ``seed`` makes the shuffle order reproducible."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last, **kwargs)


@dataclass
class TensorBatches:
    """A whole split held as one normalized float tensor (on the device), cut into batches.

    Same batches as ``make_loader(load_mnist(transform=mnist_transform()))`` for the same
    order, without a Python call per image: the fast path of the series. Iterating reshuffles
    every epoch from a generator seeded once, so a run is reproducible.
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
    def from_dataset(cls, dataset: datasets.MNIST, device: str | torch.device = "cpu",
                     pad: int = 0, channels_last: bool = False, **kwargs) -> TensorBatches:
        """Normalize all of ``dataset`` at once and move it to ``device``."""
        images = normalize_images(dataset.data, pad=pad).to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return cls(images, dataset.targets.to(device), **kwargs)

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
            idx = order[start:start + self.batch_size]
            yield self.images[idx], self.targets[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())
