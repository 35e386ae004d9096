"""Benchmark (not a test): how long an epoch of ``Net`` takes through each data path, and how
long the fast recipe takes to reach 99.0% test accuracy, on this machine.

Why this module exists: the series claims that holding the data set as one tensor is faster
than the per-image ``Dataset``/``DataLoader`` path, and that the fast recipe is fast. Timing
claims belong in a benchmark run on purpose, never in a timed test.
"""

from __future__ import annotations

import platform
import time

import torch

from .data import TensorBatches, load_mnist, make_loader, mnist_transform
from .models import Net
from .train import (
    get_recipe,
    make_optimizer,
    pick_device,
    seed_everything,
    train_epoch,
    train_model,
)


def time_epoch(batches, device: torch.device, *, channels_last: bool = False) -> float:
    """Seconds for one training epoch of ``Net`` with the classic recipe over ``batches``."""
    seed_everything(1)
    model = Net().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = make_optimizer(model, get_recipe("classic"), steps_per_epoch=len(batches))
    start = time.perf_counter()
    train_epoch(model, batches, optimizer, device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_bench(
    device: str | None = None, *, seeds: int = 5, quick: bool = False, as_json: bool = False
) -> int:
    """Print the benchmark table; returns 0 (an exit status)."""
    device = pick_device(device)
    print(
        f"mnist-dissected bench: torch {torch.__version__}, {device}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    train_set = load_mnist(train=True, transform=mnist_transform())
    rows = []

    def best(fn) -> float:
        return fn()

    loader = make_loader(train_set, batch_size=64, shuffle=True, seed=1)
    rows.append(
        (
            "DataLoader path (PIL -> ToTensor -> Normalize), batch 64",
            best(lambda: time_epoch(loader, device)),
        )
    )
    tensors = TensorBatches.from_dataset(train_set, device, batch_size=64, shuffle=True, seed=1)
    rows.append(
        ("tensor path (TensorBatches), batch 64", best(lambda: time_epoch(tensors, device)))
    )
    tensors_cl = TensorBatches.from_dataset(
        train_set, device, batch_size=64, shuffle=True, seed=1, channels_last=True
    )
    rows.append(
        (
            "tensor path, channels_last, batch 64",
            best(lambda: time_epoch(tensors_cl, device, channels_last=True)),
        )
    )
    print("\nSeconds per training epoch of Net (classic recipe: SGD lr 0.01 momentum 0.5):")
    for name, seconds in rows:
        print(f"  {name:<58} {seconds:7.2f} s")
    print(
        f"  speed-up of the tensor path over the DataLoader path: {rows[0][1] / rows[1][1]:.1f}x"
        f" ({rows[0][1] / rows[2][1]:.1f}x with channels_last)"
    )

    print("\nFast recipe (Adam + one-cycle, batch 256, no dropout, channels_last, tensors):")
    history = train_model(
        "net", "fast", seed=1, device=device, progress=False, verbose=False
    ).history
    elapsed = 0.0
    reached = None
    for record in history:
        elapsed += record["seconds"]
        print(
            f"  epoch {record['epoch']}: test accuracy {100 * record['val_accuracy']:.2f}%, "
            f"{record['seconds']:.2f} s (train + test), {elapsed:.2f} s in all"
        )
        if reached is None and record["val_accuracy"] >= 0.99:
            reached = elapsed
    print(
        f"  seconds to reach 99.0%: {reached:.2f}"
        if reached is not None
        else "  did not reach 99.0%"
    )
    return 0
