"""Atomic file writes, for the decompressed data, the stamps and the checkpoints (Part 1's
data files, Part 4's checkpoints, §4.8).

Why this module exists: a crash, a full disk or a second process (nbval may run two notebooks
at once) must never leave half a file under its real name. Writing to a temporary file in the
same folder and renaming it into place gives readers the old file or the new one, nothing else.
A process killed mid-write leaves its temporary file behind: the next write of the same file
removes such leftovers, but never the temporary file of a write still running elsewhere (each
writer holds a lock on its own temporary file while it writes). A write that fails also takes
away the folders it made for the file: nothing is left behind but what was there before.
A write never puts its file in place of something that is not a regular file (a device, a FIFO,
a socket), and writes through a symbolic link to the file it points to (:func:`write_target`).
:func:`file_lock` makes processes take turns at work whose result one file holds.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import MnistDissectedError

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are recognised by their age instead
    fcntl = None

#: On systems without ``flock``, a temporary file untouched for this long is a dead write's.
STALE_AFTER_S = 3600.0
#: The longest file name (in bytes) that common filesystems allow (ext4, APFS, NTFS, ...).
NAME_MAX = 255
#: What a temporary file's name adds to its prefix: ``mkstemp``'s 8 random characters, ".tmp".
_TEMPORARY_TAIL = 8 + len(".tmp")
#: What a path that is not a regular file is, by its type (``stat.S_IFMT``), for the messages.
_FILE_TYPES = {
    stat.S_IFDIR: "folder",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
    stat.S_IFLNK: "symbolic link that loops (it never reaches a file)",
}


class NotARegularFileError(MnistDissectedError, OSError):
    """A write was asked to replace something that is not a regular file: a device, a FIFO, a
    socket, a folder, a symbolic link that loops. Writing there is refused, not done."""


def write_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: ``path`` itself or, where ``path`` is a
    symbolic link, the file the link points to (followed to its end, whether that file exists
    yet or not: a dangling link gets its target written, as a shell's ``>`` does).

    Why: a write puts a new file in place of the old one (``os.replace``), and that replaces
    whatever is at that name: a link would become a regular file, cut off from the file it
    shared, and, run as root, a device node such as ``/dev/null`` would become a regular file.
    So links are followed, and :class:`NotARegularFileError` is raised where the target exists
    and is not a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        file_type = stat.S_IFMT(os.lstat(target).st_mode)
    except OSError:  # not there yet (or a folder on the way is missing): nothing to replace
        return target
    if file_type == stat.S_IFREG:
        return target
    shown = str(path) if target == path else f"{path} (a link to {target})"
    what = _FILE_TYPES.get(file_type, "special file")
    raise NotARegularFileError(
        f"{shown} is a {what}, not a regular file; refusing to replace it: name a regular file"
    )


def _temporary_prefix(path: Path) -> str:
    """``.NAME.``, the start of the temporary files' names for ``path``: NAME is cut so that a
    temporary's name is never longer than :data:`NAME_MAX` (a name that is legal for the file
    itself must not fail at its temporary file)."""
    name = path.name
    while len(os.fsencode(f".{name}.")) + _TEMPORARY_TAIL > NAME_MAX:
        name = name[:-1]
    return f".{name}."


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files that :func:`atomic_write` makes (or left) for ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # escaped: a name such as "m[1].pt" holds glob syntax; "?" * 8: mkstemp's random part
    pattern = glob.escape(_temporary_prefix(path)) + "?" * 8 + ".tmp"
    return sorted(path.parent.glob(pattern))


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents; return the folders created here, outermost
    first: what :func:`remove_empty_folders` takes away again if the write they were for fails
    (a folder another process made meanwhile is not in the list)."""
    folder = Path(folder)
    missing = []
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    created: list[Path] = []
    try:
        for parent in reversed(missing):
            try:
                parent.mkdir()
            except FileExistsError:
                try:
                    in_the_way = not stat.S_ISDIR(os.stat(parent).st_mode)  # e.g. a file
                except FileNotFoundError:
                    in_the_way = False  # made by another process and removed again
                if in_the_way:
                    raise
                continue  # made by another process meanwhile: not ours to remove
            created.append(parent)
    except BaseException:
        remove_empty_folders(created)
        raise
    return created


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (from :func:`make_folders`), innermost first, where they are still
    empty: one that another process has put a file in meanwhile stays."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        return NAME_MAX


def _new_temporary(path: Path, *, clean: bool = True) -> tuple[int, str, list[Path]]:
    """A new temporary file beside ``path`` (its descriptor and name), after removing dead
    writes' leftovers (``clean``), and the folders made for it (see :func:`make_folders`). If
    another process removes a folder it made just after it was found there (its write failed,
    or it was probing), the folder is made again."""
    created: list[Path] = []
    tries = 100  # each try fails only if another process removed a folder meanwhile
    try:
        while True:
            try:
                created += make_folders(path.parent)
                if clean:
                    remove_stale_temporaries(path)
                prefix = _temporary_prefix(path)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
                return fd, tmp, created
            except FileNotFoundError:  # a folder went away before the file was made
                tries -= 1
                if tries == 0:
                    raise
    except BaseException:
        remove_empty_folders(created)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Raise the ``OSError`` that :func:`atomic_write` would meet writing ``path`` (a folder
    that cannot be made or written to, a name too long, something that is not a regular file:
    :class:`NotARegularFileError`), before a long computation whose result goes there. Nothing
    is written under ``path`` and nothing is left behind: a temporary file is made and deleted,
    and the folders made for it are removed again."""
    path = write_target(path)
    # no clean-up of leftovers: other processes' probes are not locked like writes
    fd, tmp, created = _new_temporary(path, clean=False)
    try:
        os.close(fd)
        if len(os.fsencode(path.name)) > _name_max(path.parent):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
    finally:
        Path(tmp).unlink(missing_ok=True)  # (a write's clean-up may have taken it: unlocked)
        remove_empty_folders(created)


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

    Folders are created only now, when there is something to write, and removed again if the
    write fails. A symbolic link is written through: its target gets the new file, the link
    stays; a device, FIFO or socket is never replaced (see :func:`write_target`). Dissected in
    Part 4, §4.G.
    """
    path = write_target(path)
    fd, tmp, created = _new_temporary(path)
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_empty_folders(created)  # a failed write leaves no empty folder either
        raise


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock between processes, for work whose result one file will hold: two
    processes asking for a trained model at once train it once (POSIX ``flock``; elsewhere no
    lock, and the atomic write alone keeps the file whole).

    The lock file is deleted on release, and the folders made for it if they stay empty:
    nothing is left behind. Deleting it is safe because the holder deletes it while still
    holding it, and a process that was waiting checks, once it holds the lock, that the file
    it locked is still the one at ``lock_path``; if it is not (deleted, or made anew by a
    third process), it locks the one there now.
    """
    if fcntl is None:  # Windows
        yield
        return
    lock_path = Path(lock_path)
    created: list[Path] = []
    try:
        while True:
            try:
                created += make_folders(lock_path.parent)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the process that made a folder just removed it
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                    break
            except FileNotFoundError:
                pass
            except BaseException:  # interrupted while waiting: hold nothing
                os.close(fd)
                raise
            os.close(fd)  # the file we waited on was deleted by its holder: start again
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # still holding it: see the docstring
            os.close(fd)  # releases the lock
    finally:
        remove_empty_folders(created)
