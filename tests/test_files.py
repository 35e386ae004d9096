"""Atomic writes: the old file or the new one, never half of one, and no leftovers."""

import errno
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mnist_dissected.errors import MnistDissectedError
from mnist_dissected.files import (
    atomic_write,
    check_writable,
    file_lock,
    make_folders,
    remove_empty_folders,
    remove_stale_temporaries,
    temporaries_of,
)


def test_clean_exit_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    with atomic_write(path) as f:
        f.write(b"new")
        assert not path.exists(), "nothing under the real name while writing"
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_exception_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "big.bin"
    script = textwrap.dedent(f"""
        import os
        from mnist_dissected.files import atomic_write
        with atomic_write({str(path)!r}) as f:
            f.write(b"x" * 1000)
            f.flush()
            os._exit(9)  # killed mid-write: no clean-up runs
    """)
    subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert len(temporaries_of(path)) == 1 and not path.exists()
    with atomic_write(path) as f:
        f.write(b"whole")
    assert path.read_bytes() == b"whole" and temporaries_of(path) == []


def test_a_write_in_progress_elsewhere_is_left_alone(tmp_path):
    path = tmp_path / "f.bin"
    script = textwrap.dedent(f"""
        import sys, time
        from mnist_dissected.files import atomic_write
        with atomic_write({str(path)!r}) as f:
            f.write(b"slow")
            f.flush()
            print("writing", flush=True)
            sys.stdin.readline()  # hold the write open until told
    """)
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        assert remove_stale_temporaries(path) == [] and len(temporaries_of(path)) == 1
    finally:
        writer.communicate("go\n", timeout=60)
    assert path.read_bytes() == b"slow" and temporaries_of(path) == []


def test_failure_mid_write_leaves_no_stray_file_of_any_name(tmp_path):
    before = set(os.listdir(tmp_path))
    with pytest.raises(OSError), atomic_write(tmp_path / "f.bin") as f:
        f.write(b"partial")
        raise OSError("no space left on device")
    assert set(os.listdir(tmp_path)) == before


def test_temporaries_of_a_name_with_glob_characters(tmp_path):
    path = tmp_path / "m[1].pt"
    mine = tmp_path / ".m[1].pt.abcd1234.tmp"
    others = [tmp_path / ".m1.pt.abcd1234.tmp", tmp_path / ".m[1].pt.x.abcd1234.tmp"]
    for p in (mine, *others):
        p.write_bytes(b"left over")
    assert temporaries_of(path) == [mine], "its own leftovers, and only those"
    assert remove_stale_temporaries(path) == [mine] and all(p.exists() for p in others)


def test_a_long_name_that_is_legal_is_written(tmp_path):
    path = tmp_path / ("a" * 250 + ".pt")  # 253 bytes: the temporary's name must be cut
    with atomic_write(path) as f:
        assert len(temporaries_of(path)) == 1
        assert all(len(t.name) <= 255 for t in temporaries_of(path))
        f.write(b"whole")
    assert path.read_bytes() == b"whole" and temporaries_of(path) == []


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    path = tmp_path / "kept" / "new" / "deeper" / "f.bin"
    with pytest.raises(OSError), atomic_write(path) as f:
        f.write(b"half")
        raise OSError("truncated input")
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []


def test_make_folders_lists_only_what_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    made = make_folders(tmp_path / "a" / "b" / "c")
    assert made == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    (tmp_path / "a" / "b" / "keep.txt").write_text("another process's file")
    remove_empty_folders(made)
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["keep.txt"], "a folder in use stays"


@pytest.mark.parametrize(
    "name, error",
    [("a" * 300 + ".pt", errno.ENAMETOOLONG), ("m.pt", None)],
)
def test_check_writable_probes_and_leaves_nothing_behind(tmp_path, name, error):
    path = tmp_path / "new" / name
    if error is None:
        check_writable(path)
    else:
        with pytest.raises(OSError) as raised:
            check_writable(path)
        assert raised.value.errno == error
    assert os.listdir(tmp_path) == [], "no file written, no folder left"


def test_check_writable_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OSError):
        check_writable(tmp_path / "file.txt" / "sub" / "m.pt")
    assert os.listdir(tmp_path) == ["file.txt"]


def test_the_lock_excludes_other_processes_though_its_file_is_deleted(tmp_path):
    """Each holder deletes the lock file on release: a process that waited on the deleted
    file must lock the new one, or two would hold the lock at once (counts would be lost)."""
    counter, lock = tmp_path / "counter", tmp_path / "counter.lock"
    counter.write_text("0")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from mnist_dissected.files import file_lock
        counter = Path({str(counter)!r})
        for _ in range(200):
            with file_lock(Path({str(lock)!r})):
                value = int(counter.read_text())
                counter.write_text(str(value + 1))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert counter.read_text() == "600", "no two processes held the lock at once"
    assert os.listdir(tmp_path) == ["counter"], "no lock file left"


def test_file_lock_leaves_no_file_or_folder_behind(tmp_path):
    lock = tmp_path / "new" / "m.pt.lock"
    with file_lock(lock):
        assert lock.exists()
    assert os.listdir(tmp_path) == [], "the lock file and the folder made for it are gone"


def test_processes_probing_one_new_folder_at_once_all_succeed(tmp_path):
    """Under torchrun every rank checks --save-model's path at the same moment: one removing
    the folder it made must not fail another that found the folder there."""
    script = textwrap.dedent(f"""
        from mnist_dissected.files import check_writable
        for _ in range(300):
            check_writable({str(tmp_path / "new" / "deeper" / "m.pt")!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    # An empty folder may stay: one process cannot know that another made the folder it found
    assert [files for _, _, files in os.walk(tmp_path)] == [[]] * len(list(os.walk(tmp_path)))


# --------------------------------------------------------------------------- what a write replaces

SPECIAL_KINDS = ["fifo", "socket", "character device"]


def make_special(path: Path, kind: str) -> Path:
    """A FIFO, a socket or a character device node (with /dev/null's numbers) at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        cwd = os.getcwd()
        os.chdir(path.parent)  # bound by its short name: a socket's path may not pass 108 bytes
        try:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(path.name)  # the node stays when the socket closes
        finally:
            os.chdir(cwd)
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    return path


def file_type(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_a_device_fifo_or_socket_is_never_replaced(tmp_path, kind):
    """os.replace puts a regular file in place of whatever is there: as root, a device node."""
    node = make_special(tmp_path / "node", kind)
    before = file_type(node)
    with pytest.raises(OSError, match="not a regular file") as err, atomic_write(node) as f:
        f.write(b"must not land anywhere")
    assert isinstance(err.value, MnistDissectedError), "a message for a person, one line"
    assert str(node) in str(err.value) and "name a regular file" in str(err.value)
    assert file_type(node) == before, "the node is still what it was"
    assert os.listdir(tmp_path) == ["node"], "no temporary file left"


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_check_writable_refuses_what_a_write_would_refuse(tmp_path, kind):
    node = make_special(tmp_path / "node", kind)
    with pytest.raises(OSError, match="not a regular file"):
        check_writable(node)
    assert os.listdir(tmp_path) == ["node"]


def test_a_write_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "m.pt"
    target.write_bytes(b"old")
    link = tmp_path / "m.pt"
    link.symlink_to(Path("store") / "m.pt")  # relative, as `ln -s store/m.pt m.pt` makes it
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink() and os.readlink(link) == str(Path("store") / "m.pt")
    assert target.read_bytes() == b"new"
    assert temporaries_of(target) == [] and temporaries_of(link) == []


def test_a_dangling_symlink_gets_its_target_written(tmp_path):
    link = tmp_path / "m.pt"
    link.symlink_to(tmp_path / "new" / "m.pt")  # neither the file nor its folder exist yet
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink() and (tmp_path / "new" / "m.pt").read_bytes() == b"new"


def test_a_symlink_loop_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(OSError, match="loop"), atomic_write(a) as f:
        f.write(b"x")
    assert a.is_symlink() and b.is_symlink() and sorted(os.listdir(tmp_path)) == ["a", "b"]
