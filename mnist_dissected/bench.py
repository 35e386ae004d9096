"""Benchmark (not a test): how fast ``Net`` trains on this machine, each way the series knows.

Why this module exists: the series claims that holding the data set as one tensor is faster
than the per-image ``Dataset``/``DataLoader`` path, and that the fast recipe is fast. Timing
claims belong in a benchmark run on purpose on the reader's machine, never in a timed test.

What it measures, in one run (a warm-up before anything is timed):

- seconds per training epoch of the example's (classic) recipe through the ``DataLoader``,
  and through whole tensors (:class:`~mnist_dissected.data.TensorBatches`);
- the fast recipe eager, compiled (``torch.compile``, where it can run) and graphed (one CUDA
  graph per step, on NVIDIA GPUs): training seconds for its epochs and the test accuracy scored
  once at the end, for several seeds: "seconds to 99%" is the training time of a run whose test
  accuracy reaches 99.0% (median, min, max, and how many seeds reached it);
- one-time costs on their own lines: preparing the data tensors, compiling, capturing;
- the ratio of the fast recipe's median seconds to 99% to one ``DataLoader`` epoch of the
  example's recipe, on the same machine in the same run: comparable across machines.

``--json`` prints the same figures as one JSON object with these keys: ``machine`` (torch,
python, device, threads, processor), ``one_time_s`` (``data_tensors``, ``compile``,
``cuda_graph_capture``: seconds or null), ``classic_epoch_s`` (``dataloader``, ``tensors``),
``fast`` (one entry per variant ``eager``/``compiled``/``graphed`` that ran: ``epoch_s``
(median of all epochs), ``runs`` (per seed: ``seed``, ``train_s``, ``val_accuracy`` per epoch,
``test_accuracy``), ``reached_99``, ``seeds``, ``median_s``, ``min_s``, ``max_s`` (seconds to
99% among the seeds that reached it)), ``skipped`` (variant -> why), ``ratio_fast_to_99_over_
classic_dataloader_epoch``.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from typing import Any

import torch

from . import fastpath
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

TARGET = 0.99


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_epoch(batches, device: torch.device, *, channels_last: bool = False) -> float:
    """Seconds for one training epoch of ``Net`` with the classic recipe over ``batches``."""
    seed_everything(1)
    model = Net().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = make_optimizer(model, get_recipe("classic"), steps_per_epoch=len(batches))
    synchronize(device)
    start = time.perf_counter()
    train_epoch(model, batches, optimizer, device=device, progress=False)
    synchronize(device)
    return time.perf_counter() - start


def fast_runs(device: torch.device, seeds: int, **options: Any) -> dict[str, Any]:
    """The fast recipe for seeds 1..``seeds``: training seconds, validation per epoch, and the
    test accuracy scored once at the end, with the summary figures."""
    runs, setups = [], []
    for seed in range(1, seeds + 1):
        run = train_model(
            "net", "fast", seed=seed, device=device, progress=False, verbose=False, **options
        )
        setups.append(run.setup_s)
        runs.append(
            {
                "seed": seed,
                "train_s": sum(r["train_seconds"] for r in run.history),
                "epoch_s": [r["train_seconds"] for r in run.history],
                "val_accuracy": [r["val_accuracy"] for r in run.history],
                "test_accuracy": run.test["accuracy"],
            }
        )
    reached = [r["train_s"] for r in runs if r["test_accuracy"] >= TARGET]
    return {
        "epoch_s": statistics.median(s for r in runs for s in r["epoch_s"]),
        "runs": runs,
        "seeds": len(runs),
        "reached_99": len(reached),
        "median_s": statistics.median(reached) if reached else None,
        "min_s": min(reached, default=None),
        "max_s": max(reached, default=None),
        "setup_s": setups,
    }


def measure(device: torch.device, *, seeds: int = 5, quick: bool = False) -> dict[str, Any]:
    """Every figure of the benchmark, as plain data (what ``--json`` prints)."""
    figures: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "one_time_s": {"data_tensors": None, "compile": None, "cuda_graph_capture": None},
        "classic_epoch_s": {"dataloader": None, "tensors": None},
        "fast": {},
        "skipped": {},
    }
    train_set = load_mnist(train=True, transform=mnist_transform())
    start = time.perf_counter()
    tensors = TensorBatches.from_dataset(train_set, device, batch_size=64, shuffle=True, seed=1)
    synchronize(device)
    figures["one_time_s"]["data_tensors"] = time.perf_counter() - start

    # Warm-up: the first steps pay for allocations and kernel selection.
    train_model("net", "fast", device=device, progress=False, verbose=False, dry_run=True)
    if not quick:
        loader = make_loader(train_set, batch_size=64, shuffle=True, seed=1)
        figures["classic_epoch_s"]["dataloader"] = time_epoch(loader, device)
    figures["classic_epoch_s"]["tensors"] = time_epoch(tensors, device)

    figures["fast"]["eager"] = fast_runs(device, seeds)
    variants = {"compiled": {"compile": True}, "graphed": {"cuda_graph": True}}
    reasons = {
        "compiled": fastpath.compile_unavailable(device),
        "graphed": fastpath.cuda_graph_unavailable(device),
    }
    for name, options in variants.items():
        if quick or reasons[name]:
            figures["skipped"][name] = reasons[name] or "--quick"
            continue
        result = fast_runs(device, seeds, **options)
        figures["fast"][name] = result
        key = "compile" if name == "compiled" else "cuda_graph_capture"
        figures["one_time_s"][key] = result["setup_s"][0]  # the first: nothing cached yet

    best = min((v["median_s"] for v in figures["fast"].values() if v["median_s"]), default=None)
    epoch = figures["classic_epoch_s"]["dataloader"]
    figures["ratio_fast_to_99_over_classic_dataloader_epoch"] = (
        best / epoch if best and epoch else None
    )
    return figures


def _s(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.2f}"


def report(figures: dict[str, Any]) -> str:
    """The figures as the table the README quotes."""
    m, classic = figures["machine"], figures["classic_epoch_s"]
    lines = [
        f"mnist-dissected bench: torch {m['torch']}, Python {m['python']}, {m['device']}, "
        f"{m['threads']} threads, {m['processor']}",
        "",
        "One-time costs (s):",
        f"  data as tensors            {_s(figures['one_time_s']['data_tensors'])}",
        f"  torch.compile (first run)  {_s(figures['one_time_s']['compile'])}",
        f"  CUDA graph capture         {_s(figures['one_time_s']['cuda_graph_capture'])}",
        "",
        "Example's recipe (SGD lr 0.01, momentum 0.5, batch 64), seconds per epoch:",
        f"  DataLoader (PIL -> ToTensor -> Normalize)  {_s(classic['dataloader'])}",
        f"  whole tensors (TensorBatches)              {_s(classic['tensors'])}",
        "",
        "Fast recipe (Adam + one-cycle, batch 256, 3 epochs), test set scored once at the end:",
    ]
    for name, v in figures["fast"].items():
        tests = ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in v["runs"])
        lines.append(
            f"  {name:<9} {_s(v['epoch_s'])} s/epoch; 99% reached by "
            f"{v['reached_99']}/{v['seeds']} "
            f"seeds in {_s(v['median_s'])} s median (min {_s(v['min_s'])}, max {_s(v['max_s'])}); "
            f"test % {tests}"
        )
    for name, why in figures["skipped"].items():
        lines.append(f"  {name:<9} not run: {why}")
    ratio = figures["ratio_fast_to_99_over_classic_dataloader_epoch"]
    if ratio is not None:
        lines += [
            "",
            f"Fast recipe's seconds to 99% / one DataLoader epoch of the example: {ratio:.2f}",
        ]
    return "\n".join(lines)


def run_bench(
    device: str | None = None, *, seeds: int = 5, quick: bool = False, as_json: bool = False
) -> int:
    """Measure and print (a table, or JSON); returns 0 (an exit status)."""
    figures = measure(pick_device(device), seeds=seeds, quick=quick)
    print(json.dumps(figures, indent=2) if as_json else report(figures))
    sys.stdout.flush()
    return 0
