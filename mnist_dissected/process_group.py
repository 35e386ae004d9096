"""Part 6's world: who this process is among its peers, forming the process group, and
speaking once for all of them.

Why this module exists: every data-parallel script needs the same few things around PyTorch's
own engine and gets them wrong easily; Part 6 (``notebooks/6_mnist_distributed.ipynb``, §6.1,
§6.2, §6.5) dissects them, and the sharding (:mod:`~mnist_dissected.sharding`), the DDP
training (:mod:`~mnist_dissected.distributed`) and the demonstrations build on them:

- reading the world (rank, world size, local rank) from the environment ``torchrun`` sets
  (:class:`World`, :func:`launched_by_torchrun`);
- forming the process group with a timeout, and turning "the world never formed" into one
  clear error that names the address, the port and the seconds waited, instead of a hang or a
  page of C++ log (:func:`init_distributed`), and "a peer died mid-run" into one line that
  names it, instead of gloo's traceback (:func:`peers_watched`);
- this rank's device and backend (:func:`default_device`, :func:`ddp_device`,
  :func:`pick_backend`);
- printing once, in rank order, and averaging across ranks (:func:`print_once`,
  :func:`print_in_rank_order`, :func:`mean_over_ranks`).

Without ``torchrun`` the same code forms a world of one process, so it also runs with plain
``python``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .devices import DEVICE_ENV_VAR, pick_device
from .errors import MnistDissectedError

#: The variables ``torchrun`` (and any launcher using PyTorch's ``env://`` rendezvous) sets
#: for every process it starts.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: How long forming the world (and, with gloo, any one collective) may take before it fails.
DEFAULT_TIMEOUT_S = 60.0


class WorldError(MnistDissectedError, RuntimeError):
    """The process group could not form: a peer never came, died, or waits elsewhere."""


@dataclass(frozen=True)
class World:
    """Who this process is among its peers. Dissected in Part 6, §6.1.

    ``rank``: 0 .. world_size - 1 across all machines (rank 0 prints and saves);
    ``world_size``: how many processes train together; ``local_rank``: the index among the
    processes of this machine, which picks its GPU.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(
                f"not a valid place in a world: rank {self.rank}, world_size "
                f"{self.world_size}, local_rank {self.local_rank}"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> World:
        """The world ``torchrun`` describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
        (a world of one when they are not set)."""
        env = os.environ if environ is None else environ
        try:
            return cls(
                rank=int(env.get("RANK", 0)),
                world_size=int(env.get("WORLD_SIZE", 1)),
                local_rank=int(env.get("LOCAL_RANK", 0)),
            )
        except ValueError as e:
            shown = {k: env.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            raise WorldError(f"the environment does not describe a world: {shown} ({e})") from e


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started by ``torchrun`` (or a launcher that sets the same
    ``env://`` variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Dissected in
    Part 6, §6.1."""
    env = os.environ if environ is None else environ
    return all(env.get(name) for name in ENV_VARS)


def current_world() -> World:
    """The world of the process group if one is formed, else the one the environment
    describes."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return World(dist.get_rank(), dist.get_world_size(), local)
    return World.from_env()


def is_main_process() -> bool:
    """Rank 0 (also true without any process group): the process that prints and saves."""
    return current_world().is_main


def print_once(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only: N processes printing the same line N times, interleaved in
    whatever order the operating system picks, helps nobody. Dissected in Part 6, §6.5."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def _local_world_size() -> int:
    """How many processes of this world run on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def default_device(world: World | None = None) -> torch.device:
    """This process's device: GPU number ``local_rank`` when this machine has a GPU for each
    of its processes, else the CPU (NCCL refuses two ranks on one GPU, and Apple's MPS has no
    distributed backend)."""
    world = world or current_world()
    if torch.cuda.is_available() and torch.cuda.device_count() >= _local_world_size():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def pick_backend(device: torch.device | str | None = None) -> str:
    """``nccl`` for CUDA devices (GPU-to-GPU transfers, no copy through the host), ``gloo``
    for the CPU (the one that works everywhere). Dissected in Part 6, §6.2."""
    device = torch.device(device) if device is not None else default_device()
    return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now on ``host`` (the operating system picks it), for
    ``MASTER_PORT``. Another program may take it before you do: good enough for tests and
    notebooks on one machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def init_distributed(
    *, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[World]:
    """Form the process group for this process, yield its :class:`World`, and always destroy
    the group on the way out. Dissected in Part 6, §6.2.

    - Backend: ``gloo`` on the CPU, ``nccl`` on CUDA (then this process's GPU is set from
      ``LOCAL_RANK`` first, so that rank 0 and rank 1 of a machine do not both use GPU 0).
    - Rendezvous: ``env://``, the variables ``torchrun`` sets. Without them (plain
      ``python``) a world of one forms on a free port of 127.0.0.1, so the same code runs.
    - ``timeout_s``: how long to wait for the peers. If the world cannot form in that time (a
      process never started, died, or uses another MASTER_PORT), a :class:`WorldError` says
      so, with the address and port, instead of a hang. With gloo the same timeout bounds
      every collective later on, so a peer that dies mid-training also ends in an error.
      (Under ``torchrun`` with several machines, ``torchrun``'s own rendezvous waits first:
      its limit is ``--rdzv-conf join_timeout=SECONDS``.)
    """
    # Long on purpose: each failure of forming a world gets its own one-line explanation here.
    if dist.is_initialized():
        raise WorldError(
            "a process group is already formed in this process; use it "
            "(current_world()) or destroy it before forming another"
        )
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if 0 < len(missing) < len(ENV_VARS):
        raise WorldError(
            f"{', '.join(missing)} not set: a launcher sets all of "
            f"{', '.join(ENV_VARS)} (torchrun does), or none for a world of one"
        )
    if not missing:
        world = World.from_env()
        address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        init_method = "env://"
    else:
        world = World()
        address = f"127.0.0.1:{free_port()}"
        init_method = f"tcp://{address}"
    device = default_device(world) if backend in (None, "nccl") else torch.device("cpu")
    backend = backend or pick_backend(device)
    if backend == "nccl":
        if device.type != "cuda":
            raise WorldError(
                f"backend nccl needs one GPU per process; this machine has "
                f"{torch.cuda.device_count()} for {_local_world_size()} processes: use gloo"
            )
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=world.rank,
            world_size=world.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        # gloo connects every pair while forming the group; nccl only at its first
        # collective: a barrier makes both fail here, where the message below fits.
        dist.barrier(device_ids=[device.index] if backend == "nccl" else None)
    except RuntimeError as e:  # DistStoreError, DistNetworkError, gloo's and nccl's errors
        if dist.is_initialized():
            dist.destroy_process_group()
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WorldError(
            f"the process group did not form within {timeout_s:g} s: rank {world.rank} of "
            f"{world.world_size} waited for its peers at {address} (MASTER_ADDR:MASTER_PORT) "
            f"with backend {backend} and gave up ({type(e).__name__}: {cause}). Start all "
            f"{world.world_size} processes with the same MASTER_ADDR and MASTER_PORT "
            f"(torchrun --nproc-per-node {world.world_size} does), make sure that port is "
            "reachable and not used by another run, or wait longer with a larger timeout_s."
        ) from e
    try:
        yield world
        # Every rank done before the group goes: a rank that leaves while a peer's last
        # collective (a gather's send) is still in flight hangs in destroy_process_group
        # (seen with torch 2.2's gloo).
        with peers_watched(when="at the end of the run", outcome="all work had finished"):
            barrier()
    except MnistDissectedError as raised:
        # An error every rank raised alike (a diverged loss): leave together too, or a rank
        # still destroying its group when rank 0, the rendezvous's host, has gone hangs
        # (torch 2.2's gloo). Not after a peer went away: there is nobody to wait for.
        if not isinstance(raised, WorldError):
            with contextlib.suppress(RuntimeError):
                barrier()
        raise
    finally:
        if dist.is_initialized():
            close_group(world)


#: How long the group's worker threads get to let go of their last collective before it closes.
SETTLE_S = 0.2
#: How long a rank of a world of several may take to close its group once the run is over.
CLOSE_TIMEOUT_S = 30.0


def close_group(world: World) -> None:
    """``destroy_process_group``, made safe, and bounded.

    Why: gloo runs each collective on a worker thread of its own, which afterwards lets go of
    the collective's tensors, and letting go of a tensor that Python has dropped needs the GIL.
    Destroying the group joins those threads *while holding the GIL* (it happens as Python frees
    the group object). A worker still waiting for the GIL then waits for ever, and so does the
    destroy: a deadlock, seen now and then with torch 2.2 on a busy 2-core machine (py-spy:
    ``~ProcessGroupGloo`` in ``std::thread::join``, the worker in ``gil_scoped_acquire`` under
    ``~AsyncAllgatherWork``; once the last ``all_gather_object`` before the end). So the group
    is destroyed after a short sleep, :data:`SETTLE_S`, which hands the GIL to those threads.
    Should it hang all the same, in a world of several (a process a launcher started) a
    watchdog that needs no GIL (``faulthandler``'s) ends the process after
    :data:`CLOSE_TIMEOUT_S` with status 1 and the stacks of its threads on stderr, instead of a
    hang."""
    time.sleep(SETTLE_S)
    if world.world_size == 1:  # a notebook's kernel: never killed by a timer
        dist.destroy_process_group()
        return
    faulthandler.dump_traceback_later(CLOSE_TIMEOUT_S, exit=True)
    try:
        dist.destroy_process_group()
    finally:
        faulthandler.cancel_dump_traceback_later()


#: How gloo and NCCL say that the other end is gone, or silent (their messages differ across
#: PyTorch versions; the phrase is kept as the cause).
_PEER_GONE = re.compile(
    r"Connection (?:reset|closed) by peer|Broken pipe|Connection refused|Socket closed",
    re.IGNORECASE,
)
_PEER_SILENT = re.compile(r"Timed out[^.\n]*|timeout[^.\n]*", re.IGNORECASE)


def lost_peer(error: BaseException, *, when: str, outcome: str) -> WorldError | None:
    """The one-line :class:`WorldError` for a collective that failed because a peer died (or
    stopped answering) ``when`` ("during training"), or ``None`` if ``error`` is anything else
    (a bug keeps its traceback). Which peer: with two ranks, the other one; with more, the
    collective's error does not say."""
    text = str(error)
    from_backend = isinstance(error, getattr(dist, "DistError", ())) or re.search(
        r"gloo|nccl", text, re.IGNORECASE
    )
    if isinstance(error, MnistDissectedError) or not from_backend:
        return None
    found, verb = _PEER_GONE.search(text), "went away"
    if found is None:
        found, verb = _PEER_SILENT.search(text), "stopped answering"
    if found is None:
        return None
    world = current_world()
    who = f"rank {1 - world.rank} of 2" if world.world_size == 2 else "another rank"
    whose = f"rank {1 - world.rank}'s" if world.world_size == 2 else "the other ranks'"
    return WorldError(
        f"{who} {verb} {when} ({found.group(0).strip()}); {outcome}: see {whose} output for "
        "why it ended"
    )


@contextmanager
def peers_watched(
    *, when: str, outcome: str = "the run stopped, nothing was saved"
) -> Iterator[None]:
    """Turn a collective's failure because a peer died ``when`` ("during training") into one
    :class:`WorldError` (see :func:`lost_peer`) instead of gloo's page of traceback; any other
    error passes through unchanged. Also a decorator."""
    try:
        yield
    except RuntimeError as e:
        lost = lost_peer(e, when=when, outcome=outcome)
        if lost is None:
            raise
        raise lost from e


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: rank 0 decompresses (or
    downloads) the data once, and the others find it ready instead of writing it too."""
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (any picklable value), in rank order, on rank 0; ``None`` on the
    others. Without a process group: ``[obj]``."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def print_in_rank_order(lines: str | Sequence[str], *, prefix: str = "rank {rank}: ") -> None:
    """Each rank's lines, printed by rank 0 in rank order, each line prefixed with its rank:
    the same output every run (N processes printing for themselves interleave at random).
    A collective: every rank must call it."""
    lines = [lines] if isinstance(lines, str) else list(lines)
    gathered = gather_to_main(lines)
    if gathered is not None:
        for rank, rank_lines in enumerate(gathered):
            for line in rank_lines:
                print(prefix.format(rank=rank) + line)
        sys.stdout.flush()


def _comm_device() -> torch.device:
    """Where tensors must be for the group's collectives (nccl: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: Sequence[float]) -> list[float]:
    """The element-wise mean of ``values`` across ranks (every rank passes as many): for the
    per-step losses, the loss of each global batch (all ranks' batches are equally large)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)  # SUM, then divide: gloo has ReduceOp.AVG only in newer PyTorch
    return (t / dist.get_world_size()).tolist()


def ddp_device(device: torch.device | str | None, world: World | None = None) -> torch.device:
    """The device this rank trains on when ``device`` was asked for the whole run: a CUDA
    request becomes GPU ``local_rank`` (one GPU per process: NCCL refuses two ranks on one
    GPU); MPS, which has no distributed backend, becomes the CPU; ``None`` (and no
    ``$MNIST_DISSECTED_DEVICE``) is :func:`default_device`. What is asked for is checked by
    :func:`~mnist_dissected.devices.pick_device`, the one rule for every part: a device that
    cannot train here is the same one-line error as anywhere else."""
    world = world or current_world()
    if device is None and not os.environ.get(DEVICE_ENV_VAR):
        return default_device(world)
    device = pick_device(device)
    if device.type == "cuda":
        gpus, processes = torch.cuda.device_count(), _local_world_size()
        if gpus < processes:
            raise WorldError(
                f"{processes} processes on this machine but {gpus} GPU(s): data-parallel "
                "training on CUDA needs one GPU per process; start at most "
                f"--nproc-per-node {gpus}, or train on the CPU (--device cpu)"
            )
        return torch.device("cuda", world.local_rank)
    if device.type == "mps":
        return torch.device("cpu")
    return device
