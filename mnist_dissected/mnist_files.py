"""The MNIST files themselves: where they live, checking them, decompressing them once
(Part 1, and every part that loads data).

Why this module exists: the repository ships MNIST in ``data/`` so nothing breaks offline or
when a download mirror is down. Before torchvision looks for the data, :func:`prepare_raw`
checks each shipped ``.gz`` (SHA-256 of the decompressed bytes: the shipped files were
recompressed, so their MD5 differs from torchvision's list) and decompresses it into
``<root>/MNIST/raw/``, where ``torchvision.datasets.MNIST`` finds it and never downloads.
Each file is hashed once: a stamp beside the decompressed copy records what was verified, and
a ``.gz`` or copy that changed since (size or modification time) is verified again. A ``.gz``
is never decompressed past the size its file has (:data:`SIZES`): a gzip bomb under an MNIST
name costs 10 KB to 47 MB of reading, not its whole stream; and one MNIST file under another's
name is said to be that file, not called corrupt.

This is plumbing: Part 1's companion shows it (§1.A); the dataset, the transforms and the
batches it teaches live in :mod:`mnist_dissected.data`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import MnistDissectedError
from .files import atomic_write

ENV_VAR = "MNIST_DISSECTED_DATA"

#: The four IDX files: name (without .gz) -> SHA-256 of the decompressed bytes.
RESOURCES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Each IDX file's size once decompressed, as its header says: a 4-byte magic number, 4 bytes
#: per dimension, then one byte per value (a label; or a pixel of the 28×28 images).
SIZES: dict[str, int] = {
    "train-images-idx3-ubyte": 4 + 3 * 4 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 4 + 1 * 4 + 60_000,
    "t10k-images-idx3-ubyte": 4 + 3 * 4 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 4 + 1 * 4 + 10_000,
}
#: The file each checksum belongs to.
_NAME_OF_DIGEST = {digest: name for name, digest in RESOURCES.items()}
#: How much decompressed data is read at a time.
_CHUNK = 1 << 20

STAMP_SUFFIX = ".verified"


class MNISTNotFoundError(MnistDissectedError, FileNotFoundError):
    """The MNIST files are nowhere to be found and could not be downloaded."""


class CorruptDataError(MnistDissectedError, ValueError):
    """A data file exists but its content is not the MNIST file it claims to be."""


class DataWriteError(MnistDissectedError, OSError):
    """The input is fine, but its decompressed copy could not be written."""


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


def pick_root(
    root: str | os.PathLike | None = None, *, given_as: str = "the root argument"
) -> tuple[Path, str]:
    """The data folder and where the choice came from (the one place that ranks them):
    ``root`` if given (``given_as`` names how, e.g. ``"--data"``), else ``$MNIST_DISSECTED_DATA``,
    else the checkout's ``data/``, else the per-user cache."""
    if root is not None:
        return Path(root).expanduser(), given_as
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    if (checkout := checkout_data_dir()) is not None:
        return checkout, "the checkout's data/ folder"
    return user_cache_dir(), f"the per-user cache (not a checkout, ${ENV_VAR} not set)"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder :func:`pick_root` chooses."""
    return pick_root(root)[0]


def raw_folder(root: str | os.PathLike) -> Path:
    """Where torchvision's ``MNIST`` looks for (and downloads) the files under ``root``."""
    return Path(root) / "MNIST" / "raw"


# --------------------------------------------------------------------------- verified files


def sha256_of(path: Path, *, gzipped: bool = False) -> str:
    """SHA-256 of a file's bytes, or of its decompressed bytes when ``gzipped``."""
    digest = hashlib.sha256()
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fix(*, downloaded: bool) -> str:
    """What became of a bad data file, and what to do about it."""
    if downloaded:
        return (
            "It was just downloaded and has been removed: the mirror served a bad copy; try "
            "again later or another mirror."
        )
    return (
        "The file was left as it is. Replace it with a good copy (e.g. `git checkout -- data/` "
        "in the repository, or delete it to let torchvision download it)."
    )


def _corrupt(
    path: Path, expected: str, detail: str, *, downloaded: bool = False
) -> CorruptDataError:
    """The error for a data file whose content is not the expected one (``detail``: how it
    differs). Where ``detail`` gives the SHA-256 of another MNIST file, the content is whole
    but is that file (train and test swapped, labels where the images belong): the message
    then says which file it is, rather than "corrupt"."""
    other = next((n for d, n in _NAME_OF_DIGEST.items() if d != expected and d in detail), None)
    if other is not None:
        suffix = ".gz" if path.suffix == ".gz" else ""
        return CorruptDataError(
            f"{path} holds the wrong MNIST file: this is {other}{suffix}, not "
            f"{_NAME_OF_DIGEST[expected]}{suffix} (its decompressed data has {other}'s SHA-256); "
            "the files were swapped or misnamed: put each under its own name. "
            f"{_fix(downloaded=downloaded)}"
        )
    return CorruptDataError(
        f"{path} is corrupt or truncated ({detail}); expected SHA-256 of the decompressed IDX "
        f"data {expected}. {_fix(downloaded=downloaded)}"
    )


def _write_failed(gz: Path, raw: Path, error: OSError) -> DataWriteError:
    return DataWriteError(
        f"could not write the decompressed copy {raw} ({type(error).__name__}: "
        f"{error.strerror or error}). The input {gz} is fine and was not changed. Make room on "
        f"the disk or make {raw.parent} writable, or point --data / ${ENV_VAR} at a folder you "
        "can write to."
    )


def _bounded_chunks(
    src: BinaryIO, gz: Path, expected: str, limit: int, *, downloaded: bool
) -> Iterator[bytes]:
    """The decompressed content of ``gz`` (open as ``src``), chunk by chunk, ``limit`` bytes
    and one more at most (the one more tells that there is more), whatever the compressed
    stream would unpack to; raises :class:`CorruptDataError` where it cannot be read."""
    left = limit + 1
    while left > 0:
        try:
            chunk = src.read(min(_CHUNK, left))
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise _corrupt(gz, expected, f"{type(e).__name__}: {e}", downloaded=downloaded) from e
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _idx_size(head: bytes) -> int | None:
    """The size of the IDX file whose first bytes are ``head``, as its header says (two zero
    bytes, 0x08 for unsigned bytes, the number of dimensions, then each dimension as a
    big-endian 32-bit number); None if ``head`` is no such header."""
    if len(head) < 4 or head[:3] != b"\x00\x00\x08":
        return None
    end = 4 + 4 * head[3]
    if len(head) < end:
        return None
    return end + math.prod(struct.unpack(f">{head[3]}I", head[4:end]))


def _verified_chunks(
    src: BinaryIO, gz: Path, expected: str, *, downloaded: bool
) -> Iterator[bytes]:
    """The decompressed content of ``gz`` (open as ``src``), chunk by chunk; raises
    :class:`CorruptDataError` where it cannot be read, or if its SHA-256 is not ``expected``.

    Content longer than the file it should be (:data:`SIZES`) yields no chunk past that size:
    if its header is a longer MNIST file's (the training labels where the test labels belong),
    the rest is hashed, not yielded, up to that file's size, so that the error can say which
    file it is; anything else (a gzip bomb) is read no further."""
    name = _NAME_OF_DIGEST[expected]
    digest, head, read = hashlib.sha256(), b"", 0
    for chunk in _bounded_chunks(src, gz, expected, SIZES[name], downloaded=downloaded):
        digest.update(chunk)
        head += chunk[: 16 - len(head)]  # the IDX header: 16 bytes at most for MNIST
        read += len(chunk)
        if read <= SIZES[name]:
            yield chunk
            continue
        claimed = _idx_size(head)
        if claimed not in SIZES.values() or claimed <= read:
            detail = f"it decompresses to more than the {SIZES[name]:,} bytes that {name} has"
            raise _corrupt(gz, expected, detail, downloaded=downloaded)
        for rest in _bounded_chunks(src, gz, expected, claimed - read, downloaded=downloaded):
            digest.update(rest)
        # the outer loop has now read its limit and ends: the checksum below names the file
    if digest.hexdigest() != expected:
        detail = f"its content has SHA-256 {digest.hexdigest()}"
        raise _corrupt(gz, expected, detail, downloaded=downloaded)


def _decompress_verified(gz: Path, raw: Path, expected: str, *, downloaded: bool = False) -> None:
    """Decompress ``gz`` to ``raw`` atomically, only if its content has the expected checksum:
    a half-written or wrong file never appears under the final name. Reading the input and
    writing the copy fail differently: :class:`CorruptDataError` blames the input,
    :class:`DataWriteError` the place written to."""
    with open(gz, "rb") as compressed:  # an unreadable input raises its own OSError here
        try:
            with atomic_write(raw) as out, gzip.open(compressed, "rb") as src:
                for chunk in _verified_chunks(src, gz, expected, downloaded=downloaded):
                    out.write(chunk)
        except OSError as e:  # from creating, writing or renaming the copy
            raise _write_failed(gz, raw, e) from e


def _check_gz(gz: Path, expected: str, *, downloaded: bool = False) -> None:
    """Raise :class:`CorruptDataError` unless ``gz`` decompresses to the expected content
    (nothing written)."""
    with open(gz, "rb") as compressed, gzip.open(compressed, "rb") as src:
        for _ in _verified_chunks(src, gz, expected, downloaded=downloaded):
            pass


def _candidates(root: Path, name: str) -> list[Path]:
    """Where a shipped or downloaded ``.gz`` of ``name`` may lie under ``root``."""
    return [root / f"{name}.gz", raw_folder(root) / f"{name}.gz"]


def _identity(path: Path | None) -> dict | None:
    """What tells a file apart from a changed or replaced one, without reading it."""
    if path is None:
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamp_of(raw: Path) -> Path:
    return raw.with_name(raw.name + STAMP_SUFFIX)


def _read_stamp(raw: Path) -> dict | None:
    """What the stamp beside ``raw`` records, or None where there is no stamp to go by (none,
    unreadable, not JSON, or JSON that is not an object, such as ``[]``): the file is then
    verified again, as one never stamped."""
    try:
        stamp = json.loads(_stamp_of(raw).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _write_stamp(raw: Path, expected: str, gz: Path | None) -> None:
    """Record that ``raw`` (made from ``gz``) was verified; a read-only folder just means the
    next run hashes again."""
    stamp = {"sha256": expected, "raw": _identity(raw), "gz": _identity(gz)}
    with contextlib.suppress(OSError), atomic_write(_stamp_of(raw)) as f:
        f.write(json.dumps(stamp).encode())


def prepare_raw(root: Path, *, downloaded: bool = False) -> list[str]:
    """Make ``<root>/MNIST/raw/<name>`` hold each verified IDX file; return the names missing.

    A decompressed file already there is checked too (it may be a user's own copy): a bad one
    raises :class:`CorruptDataError` and is never deleted or silently replaced (``downloaded``:
    the files were just downloaded, and the caller removes a bad one). Files whose stamp still
    matches are not hashed again.
    """
    missing = []
    for name, expected in RESOURCES.items():
        raw = raw_folder(root) / name
        gz = next((p for p in _candidates(root, name) if p.is_file()), None)
        if raw.is_file():
            stamp = _read_stamp(raw)
            if stamp == {"sha256": expected, "raw": _identity(raw), "gz": _identity(gz)}:
                continue  # verified before, and neither file changed since
            if gz is not None and (stamp is None or stamp.get("gz") != _identity(gz)):
                # a new or changed .gz: check it, and rewrite the copy only if the copy differs
                # (so a read-only folder that already holds good files still loads)
                _check_gz(gz, expected, downloaded=downloaded)
                if sha256_of(raw) != expected:
                    _decompress_verified(gz, raw, expected, downloaded=downloaded)
            elif (actual := sha256_of(raw)) != expected:
                detail = f"its SHA-256 is {actual}"
                raise _corrupt(raw, expected, detail, downloaded=downloaded)
        elif gz is None:
            missing.append(name)
            continue
        else:
            _decompress_verified(gz, raw, expected, downloaded=downloaded)
        _write_stamp(raw, expected, gz)
    return missing


def not_found_error(
    root: Path, origin: str, missing: Sequence[str], cause: Exception | None
) -> MNISTNotFoundError:
    """The "data not found" story: what was looked for, where, why there, and how to fix it."""
    why = f"The download failed too: {type(cause).__name__}: {cause}\n" if cause else ""
    return MNISTNotFoundError(
        f"MNIST files not found: {', '.join(f'{n}.gz' for n in missing)}.\n"
        f"Data folder: {root} (from {origin}). Looked for each file as\n"
        f"  {root / '<name>.gz'}\n"
        f"  {raw_folder(root) / '<name>'} (decompressed) and <name>.gz beside it\n"
        f"{why}"
        "Fix: put the four gzipped IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; "
        "the repository ships them in data/) into one folder and point "
        f"${ENV_VAR} at it (or pass --data / root=...), or run with network access once to "
        "download them."
    )


@contextlib.contextmanager
def undo_on_failure(root: Path):
    """On an exception, remove the files and (empty) folders created under ``root`` meanwhile:
    a failed download leaves nothing half-written, and a mistyped folder gets no empty tree."""
    before = set(root.rglob("*")) if root.exists() else set()
    root_existed = root.exists()
    try:
        yield
    except BaseException:
        created = set(root.rglob("*")) - before if root.exists() else set()
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        if not root_existed:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
