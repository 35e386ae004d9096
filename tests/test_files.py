"""Atomic writes: the old file or the new one, never half of one, and no leftovers."""

import os
import subprocess
import sys
import textwrap

import pytest

from mnist_dissected.files import atomic_write, remove_stale_temporaries, temporaries_of


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
