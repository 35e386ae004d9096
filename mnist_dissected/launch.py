"""Part 6's launcher: starting ``torchrun`` from a parent process (a notebook, a test).

Why this module exists: a notebook kernel is one process and a process group needs several,
so Part 6 runs its demonstrations and a DDP training in real ``torchrun`` processes and shows
what rank 0 printed. Launching is easy; cleaning up is not: on a timeout, ``torchrun`` *and its
workers* must end, or a worker stuck in a collective spins on. Dissected in Part 6, §6.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .process_group import free_port


def torchrun_command(
    args: Sequence[str],
    *,
    nproc_per_node: int = 2,
    master_port: int | None = None,
    log_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The command that runs ``args`` (``["-m", "module", ...]`` or ``["script.py", ...]``)
    in ``nproc_per_node`` processes on this machine: ``torchrun`` as ``python -m
    torch.distributed.run``, so it is this Python's (a notebook's kernel, a venv), with the
    rendezvous on 127.0.0.1 only, at ``master_port`` (a free one if not given), and its logs in
    ``log_dir`` if given (else torchrun makes a ``torchelastic_*`` folder of its own)."""
    port = master_port if master_port is not None else free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *([f"--log-dir={log_dir}"] if log_dir is not None else []),
        f"--nproc-per-node={nproc_per_node}",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        *args,
    ]


def run_torchrun(
    args: Sequence[str],
    *,
    nproc_per_node: int = 2,
    timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """Run :func:`torchrun_command` and capture its output (text), within ``timeout_s``:
    how Part 6 launches real processes from a notebook and shows what rank 0 printed.
    ``OMP_NUM_THREADS=1`` is set unless ``env`` says otherwise (what ``torchrun`` would set,
    with a warning, so N processes do not each start one thread per core).

    On a timeout, ``torchrun`` *and its workers* are ended before ``TimeoutExpired`` is raised:
    they run in a session of their own, so none is left behind spinning (killing ``torchrun``
    alone would orphan a worker stuck in a collective).

    ``torchrun`` keeps its logs in a temporary folder of this call's (``--log-dir``), deleted
    when the call returns: left to itself, it makes a ``torchelastic_*`` folder in the temporary
    directory at every launch and never deletes it."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with (
        tempfile.TemporaryDirectory(prefix="mnist_dissected_torchrun_") as log_dir,
        subprocess.Popen(
            torchrun_command(args, nproc_per_node=nproc_per_node, log_dir=log_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        ) as launcher,
    ):
        try:
            stdout, stderr = launcher.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_session(launcher)
            stdout, stderr = launcher.communicate()
            raise subprocess.TimeoutExpired(
                launcher.args, timeout_s, output=stdout, stderr=stderr
            ) from None
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)


def _end_session(launcher: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to every process of ``launcher``'s session (torchrun passes it on to its
    workers), then SIGKILL to whatever is still there after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _session_alive(launcher.pid):
            launcher.poll()  # reap torchrun itself: a zombie still counts as in the session
            time.sleep(0.1)
        if not _session_alive(launcher.pid):
            return


def _session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
