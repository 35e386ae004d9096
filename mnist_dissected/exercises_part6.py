"""The checks of Part 6's exercises (``notebooks/6_mnist_distributed.ipynb``, exercises 5 to 7).

Why this module exists: data-parallel training is easy to get almost right, and almost right
trains quietly on the wrong samples or with the wrong gradient. Each exercise has you rebuild one
piece in one process, no ``torchrun``: a rank's share of an epoch as ``DistributedSampler`` cuts
it (Part 6, §6.3), one DDP step by hand, broadcast and averaged gradients included (§6.4), and
the linear learning-rate scaling rule with its warm-up (§6.8). One call here runs your function
on fixed inputs and compares it with the reference, saying what differs: the length that is
wrong, the first index or step that is off, and where a typical mistake is known, its name
(:mod:`mnist_dissected.exercises`). The references are PyTorch's own (``DistributedSampler``, a
single-process step on the whole batch); the checks take well under a second.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data.distributed import DistributedSampler

from .exercises import ExerciseFailed, check_tensor, describe, exercise
from .models import Net
from .sharding import shard_size

# --------------------------------------------------------------------------- exercise 5

#: (n, rank, world_size, epoch, seed, drop_last): the shares ``shard_by_hand`` is checked on.
SHARD_CASES = (
    (10, 0, 2, 0, 0, False),
    (10, 1, 2, 3, 0, False),
    (5, 1, 2, 1, 7, False),
    (23, 3, 4, 2, 0, False),
    (23, 2, 4, 1, 0, True),
    (7, 2, 3, 4, 11, False),
)


def _sampler(n: int, rank: int, world_size: int, epoch: int, seed: int, drop_last: bool):
    sampler = DistributedSampler(
        range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def _cut(order: torch.Tensor, rank: int, world_size: int, drop_last: bool, *, chunks=False):
    """``order`` padded by wrapping around (or cut), rank's positions r, r + N, ... (with
    ``chunks``: rank's contiguous block instead, a typical mistake)."""
    per_rank = shard_size(len(order), world_size, drop_last=drop_last)
    total = per_rank * world_size
    order = order.repeat(-(-total // len(order)))[:total]
    if chunks:
        return order[rank * per_rank : (rank + 1) * per_rank]
    return order[rank:total:world_size]


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@exercise("shard_by_hand")
def check_shard_by_hand(shard_by_hand: Callable[..., Any]) -> str:
    """Exercise 5: ``shard_by_hand(n, rank, world_size, *, epoch, seed=0, drop_last=False)``,
    the indices of ``range(n)`` that rank ``rank`` of ``world_size`` takes in epoch ``epoch``,
    in order: the list ``DistributedSampler(range(n), num_replicas=world_size, rank=rank,
    seed=seed, drop_last=drop_last)`` gives after ``set_epoch(epoch)``. Checked on six shares
    (padded, cut with ``drop_last``, several seeds and epochs)."""
    for n, rank, world_size, epoch, seed, drop_last in SHARD_CASES:
        call = (
            f"shard_by_hand({n}, rank={rank}, world_size={world_size}, epoch={epoch}, "
            f"seed={seed}, drop_last={drop_last})"
        )
        got = shard_by_hand(n, rank, world_size, epoch=epoch, seed=seed, drop_last=drop_last)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in got
        ):
            raise ExerciseFailed(f"{call} should return a list of indices, not {describe(got)}")
        expected = _sampler(n, rank, world_size, epoch, seed, drop_last)
        if len(got) != len(expected):
            if drop_last:
                why = (
                    f"with drop_last the order is cut to {len(expected) * world_size}, a "
                    f"multiple of {world_size}, and the last {n - len(expected) * world_size} "
                    "samples wait for another epoch"
                )
            else:
                why = (
                    f"pad the order by wrapping around (its first indices again) to "
                    f"{len(expected) * world_size}, a multiple of {world_size}, so that every "
                    "rank takes the same number of steps"
                )
            raise ExerciseFailed(
                f"{call} returned {len(got)} indices, expected {len(expected)}: {why}"
            )
        hints = {
            "Each rank takes a contiguous block; DistributedSampler deals the padded order "
            "out like cards: rank r takes positions r, r + N, r + 2N, ...": _cut(
                _perm(n, seed + epoch), rank, world_size, drop_last, chunks=True
            ),
            "Those are the right positions of an unshuffled order: shuffle first, with a "
            "generator seeded with seed + epoch": _cut(
                torch.arange(n), rank, world_size, drop_last
            ),
            "The same order in every epoch: seed the generator with seed + epoch, as "
            "set_epoch(epoch) makes the sampler do": _cut(
                _perm(n, seed), rank, world_size, drop_last
            ),
            "Each rank drew its own permutation (seed + rank?): every rank must draw the same "
            "one, from seed + epoch, and keep only its own positions": _cut(
                _perm(n, seed + epoch + rank), rank, world_size, drop_last
            ),
        }
        if rank:
            hints["The same permutation, but not this rank's positions"] = _cut(
                _perm(n, seed + epoch), 0, world_size, drop_last
            )
        check_tensor(torch.tensor(got), expected, name=f"the list from {call}", hints=hints)
    return (
        f"shard_by_hand: DistributedSampler's indices for {len(SHARD_CASES)} shares (padded, "
        "cut with drop_last, several seeds and epochs)"
    )


# --------------------------------------------------------------------------- exercise 6


def _replicas(world_size: int) -> list[Net]:
    """``world_size`` copies of ``Net`` (dropout off), each started from other weights, as
    processes that each built their own model would be."""
    replicas = []
    for rank in range(world_size):
        torch.manual_seed(rank)
        replicas.append(Net(dropout=0.0))
    return replicas


def _shards(world_size: int, per_rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(10 + world_size)
    images = torch.randn(world_size * per_rank, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (world_size * per_rank,), generator=generator)
    return list(zip(images.split(per_rank), targets.split(per_rank), strict=True))


def _gradient(model: Net, shards: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list:
    """The gradient of the mean loss over the images of ``shards``, per parameter."""
    model.zero_grad()
    images = torch.cat([x for x, _ in shards])
    targets = torch.cat([y for _, y in shards])
    F.nll_loss(model(images), targets).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


@exercise("ddp_step")
def check_ddp_step(ddp_step: Callable[..., Any]) -> str:
    """Exercise 6: ``ddp_step(replicas, shards, lr)``, one step of DDP simulated in one process:
    ``replicas[r]`` is rank r's model and ``shards[r]`` its ``(images, targets)``. Copy rank 0's
    weights into every replica (DDP's broadcast), let each compute the mean NLL loss of its shard
    and its gradient, replace every replica's ``.grad`` with the average over ranks (DDP's
    all-reduce), then step each replica with plain SGD (``p -= lr * p.grad``). Checked with 2
    ranks of 4 images and 3 ranks of 2, replicas of ``Net`` that start from different weights:
    every replica must end with the gradient of one process on the whole batch, in ``.grad``,
    and that process's step."""
    lr = 0.1
    for world_size, per_rank in ((2, 4), (3, 2)):
        replicas, shards = _replicas(world_size), _shards(world_size, per_rank)
        starts = [copy.deepcopy(r) for r in replicas]
        call = f"ddp_step(replicas, shards, lr={lr}) with {world_size} ranks of {per_rank} images"
        ddp_step(replicas, shards, lr)  # first: a stub stops here, before any reference is built
        whole = _gradient(copy.deepcopy(starts[0]), shards)
        local = [
            [_gradient(copy.deepcopy(starts[0]), [shard]) for shard in shards],  # broadcast
            [_gradient(copy.deepcopy(s), [shard]) for s, shard in zip(starts, shards, strict=True)],
        ]
        own = [_gradient(copy.deepcopy(s), shards) for s in starts]  # no broadcast, same batch
        names = [name for name, _ in starts[0].named_parameters()]
        for rank, replica in enumerate(replicas):
            theirs = dict(replica.named_parameters())
            for k, name in enumerate(names):
                start = dict(starts[0].named_parameters())[name].detach()
                grad = theirs[name].grad
                if grad is None:
                    raise ExerciseFailed(
                        f"after {call}, replica {rank}'s {name}.grad is None: every replica "
                        "must keep the averaged gradient in .grad, as DDP leaves it"
                    )
                grad_hints = {
                    "That is the sum of the ranks' gradients: divide by the world size "
                    "(DDP divides, then all-reduces with SUM)": sum(g[k] for g in local[0]),
                    "That is this rank's own gradient: average it over the ranks (DDP's "
                    "all-reduce)": local[0][rank][k],
                    "That is this rank's own gradient, from its own weights: copy rank 0's "
                    "weights into every replica first, then average the gradients": local[1][rank][
                        k
                    ],
                    "That is the average over ranks of gradients taken at each replica's own "
                    "weights: copy rank 0's weights into every replica first (DDP's "
                    "broadcast)": sum(g[k] for g in local[1]) / world_size,
                }
                check_tensor(
                    grad,
                    whole[k],
                    name=f"replica {rank}'s {name}.grad after {call}",
                    hints=grad_hints,
                )
                step_hints = {
                    "The weights did not move: step each replica, p -= lr * p.grad": start,
                    "That climbs the loss: p -= lr * p.grad, not +=": start + lr * whole[k],
                    "That steps from this replica's own starting weights: copy rank 0's "
                    "weights into every replica before the forward pass": dict(
                        starts[rank].named_parameters()
                    )[name].detach()
                    - lr * own[rank][k],
                }
                check_tensor(
                    theirs[name].detach(),
                    start - lr * whole[k],
                    name=f"replica {rank}'s {name} after {call}",
                    hints=step_hints,
                )
    return (
        "ddp_step: every replica holds the whole batch's gradient and takes its step, with 2 "
        "ranks and with 3, from different starting weights"
    )


# --------------------------------------------------------------------------- exercise 7

#: (base_lr, base_batch, batch, warmup_steps, steps): the schedules checked.
LR_CASES = (
    (0.01, 256, 512, 4, 8),
    (0.1, 256, 8192, 10, 14),
    (0.05, 128, 128, 3, 5),
    (0.02, 64, 256, 0, 3),
)


def _schedule(base_lr, base_batch, batch, warmup, steps, *, start=None, ahead=0, rule=None):
    """The rates of steps 0..steps-1; the keywords are typical mistakes, for the hints."""
    target = (rule or (lambda k: k))(batch / base_batch) * base_lr
    first = base_lr if start is None else start
    rates = [
        first + (target - first) * min(step + ahead, warmup) / warmup if warmup else target
        for step in range(steps)
    ]
    return torch.tensor(rates, dtype=torch.float64)


@exercise("warmup_scaled_lr")
def check_warmup_scaled_lr(warmup_scaled_lr: Callable[..., Any]) -> str:
    """Exercise 7: ``warmup_scaled_lr(step, *, base_lr, base_batch, batch, warmup_steps)``, the
    learning rate of step ``step`` (from 0) under the linear scaling rule with a linear warm-up
    (Goyal et al. 2017): the target is ``base_lr * batch / base_batch``; step 0 trains with
    ``base_lr``, the rate grows by the same amount each step and reaches the target at step
    ``warmup_steps``, then stays there (no warm-up when ``warmup_steps`` is 0). Checked on four
    schedules, step by step."""
    for base_lr, base_batch, batch, warmup, steps in LR_CASES:
        call = (
            f"warmup_scaled_lr(step, base_lr={base_lr}, base_batch={base_batch}, batch={batch}, "
            f"warmup_steps={warmup})"
        )
        rates = []
        for step in range(steps):
            got = warmup_scaled_lr(
                step, base_lr=base_lr, base_batch=base_batch, batch=batch, warmup_steps=warmup
            )
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                raise ExerciseFailed(
                    f"{call.replace('(step,', f'({step},')} should be a number, not {describe(got)}"
                )
            rates.append(float(got))
        case = (base_lr, base_batch, batch, warmup, steps)
        hints = {
            "No warm-up: the scaled rate from step 0 on; start at base_lr and grow to it": (
                _schedule(*case[:3], 0, steps)
            ),
            "The warm-up starts at 0: step 0 trains with base_lr, the rate a batch of "
            "base_batch was tuned for": _schedule(*case, start=0.0),
            "The warm-up is one step ahead: step 0 trains with base_lr, and the target is "
            "reached at step warmup_steps": _schedule(*case, ahead=1),
            "That is the square-root rule (for Adam): the linear rule scales the rate by "
            "batch / base_batch": _schedule(*case, rule=lambda k: k**0.5),
            "The rate shrinks as the batch grows: the linear rule multiplies by batch / "
            "base_batch": _schedule(*case, rule=lambda k: 1 / k),
        }
        check_tensor(
            torch.tensor(rates, dtype=torch.float64),
            _schedule(*case),
            name=f"the rates of steps 0..{steps - 1} from {call} (indexed by step)",
            hints=hints,
        )
    return (
        "warmup_scaled_lr: the linear rule with its warm-up, step by step, on four schedules "
        "(from 1x to 32x the batch)"
    )
