"""Atomic file writes, for the decompressed data, the stamps and the checkpoints.

Why this module exists: a crash, a full disk or a second process (nbval may run two notebooks
at once) must never leave half a file under its real name. Writing to a temporary file in the
same folder and renaming it into place gives readers the old file or the new one, nothing else.
A process killed mid-write leaves its temporary file behind: the next write of the same file
removes such leftovers, but never the temporary file of a write still running elsewhere (each
writer holds a lock on its own temporary file while it writes).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are recognised by their age instead
    fcntl = None

#: On systems without ``flock``, a temporary file untouched for this long is a dead write's.
STALE_AFTER_S = 3600.0


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files that :func:`atomic_write` makes (or left) for ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _is_abandoned(tmp: Path) -> bool:
    """True if no live process is writing ``tmp`` (its writer finished, crashed or was killed)."""
    if fcntl is None:
        import time

        return time.time() - tmp.stat().st_mtime > STALE_AFTER_S
    with open(tmp, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer holds it: leave it alone
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of dead writes of ``path``; return what was removed."""
    removed = []
    for tmp in temporaries_of(path):
        with contextlib.suppress(FileNotFoundError):
            if _is_abandoned(tmp):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``,
    on an exception it is deleted and ``path`` is left as it was.

    Folders are created only now, when there is something to write. Dissected in Part 4, §4.B.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)  # tells remove_stale_temporaries: in progress
            yield f
            f.flush()
            os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal mode
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
