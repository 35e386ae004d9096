"""Part 6's module: data-parallel training with PyTorch's own engine (``torch.distributed``,
``DistributedDataParallel``, launched by ``torchrun``).

Why this module exists: Part 6 (``notebooks/6_mnist_distributed.ipynb``) takes data-parallel
training apart, and the CLI trains with it under ``torchrun``. Nothing here re-implements the
engine: process groups, all-reduce and gradient bucketing are PyTorch's. What this module adds
is what every real script needs around them and gets wrong easily:

- reading the world (rank, world size, local rank) from the environment ``torchrun`` sets
  (:class:`World`, :func:`launched_by_torchrun`);
- forming the process group with a timeout, and turning "the world never formed" into one
  clear error that names the address, the port and the seconds waited, instead of a hang or a
  page of C++ log (:func:`init_distributed`);
- giving each rank its share of every epoch, for both data paths of the series: the
  ``DataLoader`` with ``DistributedSampler`` (:func:`distributed_loader`) and the whole split
  as one tensor (:class:`ShardedBatches`), so that a per-rank batch of B samples makes a
  global batch of N x B;
- scoring a split so that the accuracy rank 0 prints is exactly the one a single process
  computes for the same weights (:func:`evaluate_distributed`);
- printing once and saving once, from rank 0, with a checkpoint that loads into a plain
  ``Net`` (:func:`print_once`, :func:`save_on_main`, :func:`unwrap`);
- :func:`train_ddp`: :func:`~mnist_dissected.train.train_model`'s story, data-parallel.

Run a script that uses it with ``torchrun --nproc-per-node 2 script.py`` (or ``python -m
torch.distributed.run ...``, the same program); :mod:`mnist_dissected.dist_demo` is one.
Without ``torchrun`` the same code forms a world of one process, so it also runs with plain
``python``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from .models import unwrap  # what DDP wraps: saved and evaluated (Part 6, §6.6)

if TYPE_CHECKING:  # imported when used: mnist_dissected.data imports torchvision (seconds)
    from .data import TensorBatches

#: The variables ``torchrun`` (and any launcher using PyTorch's ``env://`` rendezvous) sets
#: for every process it starts.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: How long forming the world (and, with gloo, any one collective) may take before it fails.
DEFAULT_TIMEOUT_S = 60.0


class WorldError(RuntimeError):
    """The process group could not form: a peer never came, died, or waits elsewhere."""


# --------------------------------------------------------------------------- the world


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
        barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


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


# --------------------------------------------------------------------------- sharding


def _is_tensor_batches(obj: object) -> bool:
    """Whether ``obj`` is a :class:`~mnist_dissected.data.TensorBatches` (if that module was
    never imported, it cannot be one: no need to import torchvision to find out)."""
    data = sys.modules.get(f"{__package__}.data")
    return data is not None and isinstance(obj, data.TensorBatches)


def shard_size(n: int, world_size: int, *, drop_last: bool = False) -> int:
    """How many of ``n`` samples each rank gets per epoch, as ``DistributedSampler`` counts:
    ``ceil(n / world_size)`` (some samples twice), or with ``drop_last`` ``floor``."""
    if drop_last and n % world_size:
        return max(0, math.ceil((n - world_size) / world_size))
    return math.ceil(n / world_size)


def shard_indices(
    order: torch.Tensor, *, rank: int, world_size: int, drop_last: bool = False
) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's ``order`` of sample indices, exactly as
    ``DistributedSampler`` cuts it. Dissected in Part 6, §6.3.

    The order is padded by wrapping around to a multiple of ``world_size`` (or cut with
    ``drop_last``), and rank r takes positions r, r + N, r + 2N, ...: every rank gets the same
    number of samples, so every rank runs the same number of steps. (A rank with one step
    more would wait forever in an all-reduce that its peers never join.)
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    n = len(order)
    total = shard_size(n, world_size, drop_last=drop_last) * world_size
    if total > n:  # pad by wrapping around, repeating the order if it is very short
        order = order.repeat(math.ceil(total / n))
    return order[:total][rank:total:world_size]


class ShardedBatches:
    """Rank ``rank``'s share of every epoch of a :class:`~mnist_dissected.data.TensorBatches`,
    cut the way ``DistributedSampler`` cuts a dataset. Dissected in Part 6, §6.3.

    Every rank holds the whole split and draws the same permutation each epoch (the
    ``TensorBatches`` generator is seeded identically on every rank and advances once per
    epoch), then keeps positions r, r + N, ... of it (:func:`shard_indices`). Batches of
    ``batch_size`` per rank make global batches of ``world_size * batch_size``. Nothing is
    sent between processes: agreeing on the seed is enough.
    """

    def __init__(
        self,
        batches: TensorBatches,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        world = current_world()
        self.whole = batches
        self.rank = world.rank if rank is None else rank
        self.world_size = world.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {self.rank}")
        self.drop_last = drop_last

    @property
    def batch_size(self) -> int:
        """Samples per batch on this rank (the global batch is ``world_size`` times this)."""
        return self.whole.batch_size

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (the same on every rank)."""
        return shard_size(len(self.whole.targets), self.world_size, drop_last=self.drop_last)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.whole.drop_last else -(-n // b)

    def order(self) -> torch.Tensor:
        """This rank's indices for the next epoch (draws the epoch's permutation)."""
        return shard_indices(
            self.whole.order(), rank=self.rank, world_size=self.world_size, drop_last=self.drop_last
        )

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``(images, targets)`` for this rank's ``order``."""
        order = order.to(self.whole.targets.device)
        b = self.batch_size
        for start in range(0, len(self) * b, b):
            idx = order[start : start + b]
            yield self.whole.images[idx], self.whole.targets[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())


def distributed_loader(
    dataset: Dataset,
    batch_size: int = 64,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    world: World | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over this rank's share of ``dataset``, through a
    ``DistributedSampler``. Dissected in Part 6, §6.3.

    The sampler draws one permutation from ``seed + epoch`` (the same on every rank), pads it
    by wrapping (or drops the tail with ``drop_last``) and keeps every N-th index from this
    rank's. Call ``loader.sampler.set_epoch(epoch)`` (or :func:`set_epoch`) before each
    epoch: without it every epoch repeats epoch 0's order. ``batch_size`` is per rank;
    other keywords go to :func:`~mnist_dissected.data.make_loader`.
    """
    from .data import make_loader

    world = world or current_world()
    sampler = DistributedSampler(
        dataset,
        num_replicas=world.world_size,
        rank=world.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    return make_loader(dataset, batch_size, sampler=sampler, **kwargs)


def shard_batches(batches: Iterable, *, world: World | None = None) -> Iterable:
    """This rank's share of training batches built for one process: a ``DataLoader`` becomes
    :func:`distributed_loader` over the same dataset (same batch size, shuffling, seed and
    workers), a :class:`~mnist_dissected.data.TensorBatches` becomes :class:`ShardedBatches`.
    """
    world = world or current_world()
    if _is_tensor_batches(batches):
        return ShardedBatches(batches, rank=world.rank, world_size=world.world_size)
    if isinstance(batches, DataLoader):
        generator = batches.generator
        return distributed_loader(
            batches.dataset,
            batches.batch_size,
            world=world,
            shuffle=isinstance(batches.sampler, RandomSampler),
            seed=generator.initial_seed() if generator is not None else 0,
            num_workers=batches.num_workers,
            pin_memory=batches.pin_memory,
            collate_fn=batches.collate_fn,
        )
    raise TypeError(f"cannot shard {type(batches).__name__}: give a DataLoader or TensorBatches")


def set_epoch(batches: Iterable, epoch: int) -> None:
    """Tell a ``DistributedSampler`` which epoch starts (its shuffle is seeded with
    ``seed + epoch``); :class:`ShardedBatches` needs nothing (its generator advances)."""
    sampler = getattr(batches, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


# --------------------------------------------------------------------------- the model


def wrap_ddp(
    model: nn.Module, *, device: torch.device | str | None = None, **ddp_kwargs: Any
) -> DistributedDataParallel:
    """``model`` (already on its device) inside ``DistributedDataParallel``. Dissected in
    Part 6, §6.4.

    DDP copies rank 0's parameters to every rank here, and during ``backward`` it divides the
    gradients by the world size and all-reduces (sums) them in buckets while the rest of the
    backward pass still runs: every rank ends the step with the same averaged gradient, so the
    same optimizer step keeps the copies identical.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def save_on_main(path: str | os.PathLike, model: nn.Module, **metadata: Any) -> Path | None:
    """Save ``model`` (unwrapped) from rank 0 only, atomically, with
    :func:`mnist_dissected.checkpoint.save_checkpoint` (``metadata``: its keywords ``recipe``,
    ``history``, ``seed``, ...); the other ranks wait until the file is there. Returns the
    path on rank 0, ``None`` elsewhere. Dissected in Part 6, §6.6.

    Why rank 0 only: after every step the copies are identical, so N files would hold the
    same weights, and N processes writing one path race. If rank 0 fails to save, every rank
    raises (instead of the others waiting for a file that never comes).
    """
    from .checkpoint import save_checkpoint

    saved, error = None, None
    if is_main_process():
        try:
            saved = save_checkpoint(path, unwrap(model), **metadata)
        except Exception as e:  # reported to the other ranks below, then re-raised
            error = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        message = [f"{type(error).__name__}: {error}" if error is not None else None]
        dist.broadcast_object_list(message, src=0)  # also the barrier the others wait at
        if message[0] is not None and error is None:
            raise RuntimeError(f"rank 0 could not save {path}: {message[0]}")
    if error is not None:
        raise error
    return saved


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


# --------------------------------------------------------------------------- evaluation


def _my_batches(
    batches: Iterable, world: World, max_batches: int | None
) -> Iterator[tuple[int, Any]]:
    """``(index, batch)`` for the batches of ``batches`` that this rank scores: numbers r,
    r + N, ...; each batch is whole, so its samples are the ones a single process batches."""
    n, r = world.world_size, world.rank
    if isinstance(batches, DataLoader) and batches.batch_sampler is not None:
        chosen = list(islice(batches.batch_sampler, max_batches))[r::n]
        mine = DataLoader(
            batches.dataset,
            batch_sampler=chosen,
            num_workers=batches.num_workers,
            collate_fn=batches.collate_fn,
            pin_memory=batches.pin_memory,
        )
        yield from zip(range(r, r + len(chosen) * n, n), mine, strict=True)
    elif _is_tensor_batches(batches):
        order, b = batches.order(), batches.batch_size
        count = len(batches) if max_batches is None else min(len(batches), max_batches)
        for i in range(r, count, n):
            idx = order[i * b : (i + 1) * b].to(batches.targets.device)
            yield i, (batches.images[idx], batches.targets[idx])
    else:
        for i, batch in enumerate(islice(batches, max_batches)):
            if i % n == r:
                yield i, batch


@torch.no_grad()
def evaluate_distributed(
    model: nn.Module,
    batches: Iterable,
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``batches`` (the whole split, not sharded), the work split
    across ranks, the same result on every rank. Dissected in Part 6, §6.5.

    Exact by construction: rank r scores whole batches r, r + N, ... (no padding, so no
    sample counted twice), the per-batch sums are gathered, and every rank adds them up in
    batch order as :func:`mnist_dissected.train.evaluate` does. The correct count is
    therefore the single-process count, and the loss the same float.
    """
    from .models import loss_function

    world = current_world()
    module = unwrap(model)  # plain forward: DDP's bookkeeping is for training
    device = torch.device(device) if device is not None else next(module.parameters()).device
    loss_fn = loss_function(module)
    module.eval()
    rows = []
    for i, (data, target) in _my_batches(batches, world, max_batches):
        data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = module(data)
        rows.append(
            (
                i,
                loss_fn(output, target, reduction="sum").item(),
                (output.argmax(dim=1) == target).sum().item(),
                len(target),
            )
        )
    if dist.is_initialized() and world.world_size > 1:
        gathered: list[Any] = [None] * world.world_size
        dist.all_gather_object(gathered, rows)
        rows = [row for rank_rows in gathered for row in rank_rows]
    total_loss, correct, n = 0.0, 0, 0
    for _, loss, right, count in sorted(rows):
        total_loss += loss
        correct += right
        n += count
    return total_loss / n, correct / n


# --------------------------------------------------------------------------- training


class _FirstBatches:
    """The first ``limit`` batches of ``batches``, with a length (for a dry run)."""

    def __init__(self, batches: Iterable, limit: int) -> None:
        self.batches, self.limit = batches, limit

    def __len__(self) -> int:
        return min(len(self.batches), self.limit)

    def __iter__(self) -> Iterator:
        return islice(iter(self.batches), self.limit)

    def __getattr__(self, name: str) -> Any:  # dataset, sampler, ...: the wrapped batches'
        if name.startswith("_") or name in ("batches", "limit"):
            raise AttributeError(name)
        return getattr(self.batches, name)


def train_ddp(
    model_name: str = "net",
    recipe: Any = "fast",
    *,
    seed: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
    log_interval: int | None = None,
    verbose: bool = True,
    root: str | os.PathLike | None = None,
    root_given_as: str = "the root argument",
    dry_run: bool = False,
    **overrides: Any,
):
    """:func:`~mnist_dissected.train.train_model`, data-parallel: call it inside
    :func:`init_distributed` on every rank. Dissected in Part 6, §6.7.

    Every rank seeds the same, builds the same model (DDP copies rank 0's weights anyway) and
    the same batches, trains on its shard (the recipe's ``batch_size`` is per rank: the global
    batch is ``world_size`` times it), and scores validation and test with
    :func:`evaluate_distributed`. Rank 0 prints the example's lines. The history's
    ``step_losses`` are the losses of the global batches (mean over ranks). Returns a
    :class:`~mnist_dissected.train.Trained` with the unwrapped model, on every rank; save it
    with :func:`save_on_main`.
    """
    from .models import model_class
    from .train import (
        Trained,
        get_recipe,
        make_batches,
        make_optimizer,
        num_samples,
        seed_everything,
        summary_line,
        train_epoch,
    )

    world = current_world()
    recipe = get_recipe(recipe, **overrides)
    device = torch.device(device) if device is not None else default_device(world)
    seed_everything(seed)
    model = model_class(model_name).for_recipe(recipe).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with main_first():  # rank 0 prepares the data files, the others then read them
        batches = make_batches(
            recipe, model_name, device=device, seed=seed, root=root, root_given_as=root_given_as
        )
    train_batches = shard_batches(batches.train, world=world)
    limit = 1 if dry_run else None
    if limit is not None:
        train_batches = _FirstBatches(train_batches, limit)
    ddp_model = wrap_ddp(model, device=device)
    # Different dropout masks on each rank, as different samples of one big batch would get.
    torch.manual_seed(seed + world.rank)
    optimizer, scheduler = make_optimizer(ddp_model, recipe, steps_per_epoch=len(train_batches))
    if log_interval is None:
        log_interval = recipe.log_interval
    history = []
    for epoch in range(1, (1 if dry_run else recipe.epochs) + 1):
        start = time.perf_counter()
        set_epoch(train_batches if limit is None else train_batches.batches, epoch)
        steps = train_epoch(
            ddp_model,
            train_batches,
            optimizer,
            scheduler=scheduler,
            device=device,
            epoch=epoch,
            progress=progress and world.is_main,
            log_interval=log_interval if world.is_main else None,
        )
        steps = mean_over_ranks(steps)
        val_loss, val_accuracy = evaluate_distributed(
            model, batches.val, device=device, max_batches=limit
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": sum(steps) / len(steps),
                "step_losses": steps,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "seconds": time.perf_counter() - start,
            }
        )
        if verbose and not dry_run:
            print_once(
                summary_line(val_loss, val_accuracy, num_samples(batches.val), split="Validation")
            )
    test_loss, test_accuracy = evaluate_distributed(
        model, batches.test, device=device, max_batches=limit
    )
    n_test = num_samples(batches.test)
    if dry_run:
        n_test = min(n_test, recipe.test_batch_size)
    if verbose:
        print_once(summary_line(test_loss, test_accuracy, n_test))
    return Trained(
        model, history, recipe, {"loss": test_loss, "accuracy": test_accuracy, "n": n_test}
    )


def ddp_device(device: torch.device | str | None, world: World | None = None) -> torch.device:
    """The device this rank trains on when ``device`` was asked for the whole run: a CUDA
    request becomes GPU ``local_rank`` (one GPU per process: NCCL refuses two ranks on one
    GPU); MPS, which has no distributed backend, becomes the CPU; ``None`` is
    :func:`default_device`."""
    world = world or current_world()
    if device is None:
        return default_device(world)
    device = torch.device(device)
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


def run_train_cli(
    model_name: str,
    recipe: Any,
    *,
    device: torch.device | str | None = None,
    save_path: str | os.PathLike | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **options: Any,
) -> int:
    """``python -m mnist_dissected train ...`` under ``torchrun``: every process runs this
    with the same model, recipe and ``options`` (those of :func:`train_ddp`: seed, progress,
    log_interval, root, dry_run, ...); rank 0 prints and saves. Dissected in Part 6, §6.7."""
    world = World.from_env()
    device = ddp_device(device, world)
    with init_distributed(backend=pick_backend(device), timeout_s=timeout_s) as world:
        print_once(
            f"Training {model_name} with the {recipe.name} recipe on {world.world_size} "
            f"processes ({dist.get_backend()}, {device.type}): batch {recipe.batch_size} "
            f"per process, {world.world_size * recipe.batch_size} per step"
        )
        run = train_ddp(model_name, recipe, device=device, **options)
        if save_path is not None:
            seed = options.get("seed")
            path = save_on_main(
                save_path, run.model, recipe=recipe, history=run.history, seed=seed, test=run.test
            )
            print_once(f"Saved {path}")
    return 0


# --------------------------------------------------------------------------- launching


def torchrun_command(
    args: Sequence[str],
    *,
    nproc_per_node: int = 2,
    master_port: int | None = None,
) -> list[str]:
    """The command that runs ``args`` (``["-m", "module", ...]`` or ``["script.py", ...]``)
    in ``nproc_per_node`` processes on this machine: ``torchrun`` as ``python -m
    torch.distributed.run``, so it is this Python's (a notebook's kernel, a venv), with the
    rendezvous on 127.0.0.1 only, at ``master_port`` (a free one if not given)."""
    port = master_port if master_port is not None else free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
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
    alone would orphan a worker stuck in a collective)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with subprocess.Popen(
        torchrun_command(args, nproc_per_node=nproc_per_node),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    ) as launcher:
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
