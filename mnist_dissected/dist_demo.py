"""Part 6's demonstrations, each run in real processes: ``torchrun --nproc-per-node 2 -m
mnist_dissected.dist_demo WHAT`` (WHAT: env, collectives, sampler, ddp-step, or all).

Why this module exists: a notebook kernel is one process, and a process group needs several.
Part 6 launches this script with :func:`mnist_dissected.launch.run_torchrun` and shows
what it printed. Every rank computes its part; rank 0 gathers the lines and prints them in
rank order, so the output is the same on every run (and nbval can compare it). Each claim
printed is also asserted here, on every rank: a wrong claim stops the run with an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .argtypes import positive_float
from .distributed import wrap_ddp
from .models import Net, unwrap
from .process_group import World, WorldError, init_distributed, print_in_rank_order, print_once
from .sharding import ShardedBatches

#: What ``torchrun`` sets for each process, in the order shown.
SHOWN_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)
#: Values that change from launch to launch: shown as ``<varies>`` unless ``--raw``.
VARYING_ENV = ("MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def demo_env(world: World, *, raw: bool = False) -> None:
    """What torchrun told each process (Part 6, §6.1)."""
    print_once("== env: what torchrun sets in each process ==")
    shown = []
    for name in SHOWN_ENV:
        value = os.environ.get(name, "<not set>")
        if name in VARYING_ENV and not raw and name in os.environ:
            value = "<varies>"
        shown.append(f"{name}={value}")
    print_in_rank_order(" ".join(shown))
    assert dist.get_rank() == world.rank == int(os.environ.get("RANK", "0"))
    assert dist.get_world_size() == world.world_size == int(os.environ.get("WORLD_SIZE", "1"))
    print_once(
        f"backend {dist.get_backend()}; dist.get_rank() == RANK and "
        "dist.get_world_size() == WORLD_SIZE on every rank"
    )


def demo_collectives(world: World) -> None:
    """all_reduce, broadcast and all_gather on tiny tensors (Part 6, §6.2)."""
    r, n = world.rank, world.world_size
    print_once("== collectives: every rank calls the same operation, in the same order ==")

    x = torch.tensor([r + 1.0, 10.0 * (r + 1)])
    before = x.tolist()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)  # in place, on every rank
    expected = [n * (n + 1) / 2, 10.0 * n * (n + 1) / 2]
    assert x.tolist() == expected
    print_in_rank_order(f"all_reduce(SUM): {before} -> {x.tolist()}")

    y = torch.tensor([42.0, 7.0]) if r == 0 else torch.zeros(2)
    before = y.tolist()
    dist.broadcast(y, src=0)  # rank 0's values everywhere: how DDP copies the start weights
    assert y.tolist() == [42.0, 7.0]
    print_in_rank_order(f"broadcast(src=0): {before} -> {y.tolist()}")

    mine = torch.full((2,), float(r))
    parts = [torch.empty(2) for _ in range(n)]
    dist.all_gather(parts, mine)  # every rank's tensor, on every rank, in rank order
    assert [p.tolist() for p in parts] == [[float(k)] * 2 for k in range(n)]
    print_in_rank_order(f"all_gather: {mine.tolist()} -> {[p.tolist() for p in parts]}")

    # How DDP averages gradients: each rank divides by the world size, then all_reduce(SUM).
    # Why divide first? In float16 (largest value 65504) a sum of 40000s overflows.
    grad = torch.tensor([40000.0], dtype=torch.float16)  # every rank's gradient
    sum_first = grad.clone()
    dist.all_reduce(sum_first)
    sum_first /= n
    divide_first = grad / n
    dist.all_reduce(divide_first)
    one_weight = wrap_ddp(_OneWeight())  # DDP itself, on a weight whose gradient is the input
    one_weight(grad).sum().backward()
    ddp_grad = unwrap(one_weight).weight.grad
    assert ddp_grad.dtype == torch.float16 and ddp_grad.item() == divide_first.item() == 40000.0
    assert n == 1 or sum_first.isinf().item()
    print_once(
        f"float16 gradients of 40000 on {n} rank{'s' * (n > 1)}: "
        f"sum then divide {sum_first.item():g}, divide then sum {divide_first.item():g}, "
        f"DDP {ddp_grad.item():g}"
    )


class _OneWeight(torch.nn.Module):
    """One float16 weight w, ``forward(x) = w * x``: the gradient of ``w`` is ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x


def demo_sampler(world: World) -> None:
    """DistributedSampler and ShardedBatches: each rank's share of an epoch (Part 6, §6.3)."""
    from torch.utils.data.distributed import DistributedSampler

    from .data import TensorBatches

    r, n = world.rank, world.world_size
    size = 2 * n + 1  # does not divide: the sampler pads by wrapping around
    print_once(f"== sampler: {size} samples over {n} ranks ==")
    data = list(range(size))

    plain = DistributedSampler(data, num_replicas=n, rank=r, shuffle=False)
    mine = list(plain)
    print_in_rank_order(f"shuffle=False: {mine}")
    everyone = [i for part in _gather(mine) for i in part]
    per_rank = -(-size // n)
    assert all(len(part) == per_rank for part in _gather(mine))
    assert sorted(set(everyone)) == data and len(everyone) == per_rank * n
    print_once(
        f"every index at least once; {per_rank} per rank; {len(everyone) - size} "
        f"repeated to pad {size} to {per_rank * n}"
    )

    shuffled = DistributedSampler(data, num_replicas=n, rank=r, shuffle=True, seed=0)
    epochs = []
    for epoch in range(2):
        shuffled.set_epoch(epoch)  # the shuffle is seeded with seed + epoch
        epochs.append(list(shuffled))
    print_in_rank_order(f"shuffle=True: epoch 0 {epochs[0]}, epoch 1 {epochs[1]}")
    for epoch in range(2):
        assert sorted(set(i for part in _gather(epochs[epoch]) for i in part)) == data
    assert epochs[0] != epochs[1]
    shuffled.set_epoch(0)
    assert list(shuffled) == epochs[0]
    print_once(
        "set_epoch(e) gives a new order each epoch, the same one on every rank; "
        "without it every epoch repeats epoch 0's order"
    )

    whole = TensorBatches(
        torch.arange(size, dtype=torch.float32).view(size, 1, 1, 1),
        torch.arange(size),
        batch_size=2,
        shuffle=True,
        seed=0,
    )
    sharded = ShardedBatches(whole, rank=r, world_size=n)
    batches = [target.tolist() for _, target in sharded]
    print_in_rank_order(f"ShardedBatches (batch 2 per rank): {batches}")
    everyone = [i for part in _gather(batches) for batch in part for i in batch]
    assert sorted(set(everyone)) == data
    assert len({len(part) for part in _gather(batches)}) == 1
    print_once(
        f"TensorBatches sharded the same way: {len(sharded)} batches on every rank, "
        f"global batch {n} x 2 = {2 * n}"
    )


def demo_ddp_step(world: World, *, show_difference: bool = False) -> None:
    """One DDP step equals one single-process step on the whole batch (Part 6, §6.4)."""
    r, n = world.rank, world.world_size
    per_rank = 8
    print_once(
        f"== ddp-step: Net(dropout=0), one batch of {n * per_rank} images, {per_rank} per rank =="
    )
    generator = torch.Generator().manual_seed(0)  # the same batch on every rank
    images = torch.randn(n * per_rank, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (n * per_rank,), generator=generator)

    torch.manual_seed(r)  # different start weights on each rank ...
    net = Net(dropout=0)
    before = net.fc2.bias[0].item()
    model = wrap_ddp(net)  # ... until DDP copies rank 0's into every rank
    print_in_rank_order(f"fc2.bias[0] before DDP {before:+.4f}, after {net.fc2.bias[0]:+.4f}")
    single = Net(dropout=0)  # the reference: one process, the whole batch, same weights
    single.load_state_dict(unwrap(model).state_dict())

    F.nll_loss(single(images), targets).backward()
    mine = slice(r * per_rank, (r + 1) * per_rank)
    loss = F.nll_loss(model(images[mine]), targets[mine])
    loss.backward()  # DDP divides the gradients by the world size and all-reduces them here
    print_in_rank_order(f"samples {mine.start}..{mine.stop - 1}, local loss {loss.item():.4f}")

    diff = max(
        (p.grad - q.grad).abs().max().item()
        for p, q in zip(unwrap(model).parameters(), single.parameters(), strict=True)
    )
    for p, q in zip(unwrap(model).parameters(), single.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    worst = max(_gather(diff))
    text = f"{worst:.1e}" if show_difference else "< 1e-6"
    assert worst < 1e-6
    print_once(
        f"gradient on every rank == single-process gradient of all {n * per_rank} "
        f"images (assert_close; max abs difference {text})"
    )

    for m in (model, single):
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    flat = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])
    assert all(torch.equal(flat, other) for other in _gather(flat))
    torch.testing.assert_close(flat, torch.cat([p.detach().flatten() for p in single.parameters()]))
    print_once(
        f"after one SGD step: the {flat.numel():,} parameters are bitwise identical on "
        "all ranks, and equal (assert_close) to the single-process step"
    )


DEMOS = ("env", "collectives", "sampler", "ddp-step")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demonstrations asked for; returns the exit status (a bad flag is a usage error,
    processes that cannot form a world an error in one line, as in ``python -m
    mnist_dissected``)."""
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node 2 -m mnist_dissected.dist_demo",
        description="Part 6's demonstrations of torch.distributed, run in real processes.",
    )
    parser.add_argument("what", nargs="+", choices=(*DEMOS, "all"))
    parser.add_argument(
        "--raw",
        action="store_true",
        help="show MASTER_PORT and TORCHELASTIC_RUN_ID (they vary per launch)",
    )
    parser.add_argument(
        "--show-difference",
        action="store_true",
        help="print ddp-step's exact max gradient difference (varies by machine)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the other processes (default 60)",
    )
    args = parser.parse_args(argv)
    chosen = DEMOS if "all" in args.what else tuple(dict.fromkeys(args.what))
    try:
        with init_distributed(backend="gloo", timeout_s=args.timeout) as world:
            if world.world_size < 2:
                print_once("note: a world of one process; launch with torchrun --nproc-per-node 2")
            for what in chosen:
                if what == "env":
                    demo_env(world, raw=args.raw)
                elif what == "collectives":
                    demo_collectives(world)
                elif what == "sampler":
                    demo_sampler(world)
                else:
                    demo_ddp_step(world, show_difference=args.show_difference)
    except WorldError as e:  # the processes could not form a world: say why, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
