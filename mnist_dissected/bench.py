"""Benchmark (not a test): how fast ``Net`` trains on this machine, each way the series knows
(Part 4, §4.H reads its figures; ``python -m mnist_dissected bench`` runs it).

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
  example's recipe, on the same machine in the same run: comparable across machines;
- where a fast-recipe step spends its time (:func:`profile_step`: ``torch.profiler``, grouped),
  its arithmetic (``FlopCounterMode``) and the rate it reaches, beside the rate of one large
  matrix multiplication on the same device: the gap between the two is what is left to win.

``--json`` prints the same figures as one JSON object with these keys: ``machine`` (torch,
python, device, threads, processor, vector_isa), ``one_time_s`` (``data_tensors``, ``compile``,
``cuda_graph_capture``: seconds or null), ``classic_epoch_s`` (``dataloader``, ``tensors``),
``step`` (:func:`profile_step`'s keys), ``fast`` (one entry per variant
``eager``/``compiled``/``graphed`` that ran: ``epoch_s`` (median of all epochs), ``runs`` (per
seed: ``seed``, ``train_s``, ``val_accuracy`` per epoch, ``test_accuracy``), ``reached_99``,
``seeds``, ``median_s``, ``min_s``, ``max_s`` (seconds to 99% among the seeds that reached
it), ``flops_to_99`` (training FLOPs of a run that reaches it: every seed's run trains on as
many images; null if none did)), ``skipped`` (variant -> why),
``ratio_fast_to_99_over_classic_dataloader_epoch``.

A run takes minutes, so it first says what it will measure and about how long that takes
(:func:`plan`), then prints each figure as soon as it is measured, flushed, one line each, then
the table; with ``--json`` those lines go to stderr, and stdout is the one object, at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import fastpath
from .bench_report import report
from .data import TensorBatches, load_mnist, make_loader, mnist_transform
from .devices import pick_device, seed_everything, synchronize
from .models import Net, loss_function
from .recipes import TRAINING_IMAGES, get_recipe, make_optimizer
from .train import train_epoch, train_model

TARGET = 0.99
# Seconds each part took on the README's idle 2-core CPU (AMD EPYC, 2026-11-23), for the estimate
# said before a run (:func:`plan`) and nothing else: "start" is loading, tensors and warm-up; a
# variant's figure is per seed (training and scoring); graphed is a guess (no GPU there).
REFERENCE_S = {"start": 5, "dataloader": 36, "tensors": 17, "step": 2, "compile": 9}
REFERENCE_S |= {"eager": 26, "compiled": 33, "graphed": 26}
# Each variant's one-time cost: what it is called in a line, and its key in ``one_time_s``.
SET_UP = {"compiled": ("compiling", "compile"), "graphed": ("capturing", "cuda_graph_capture")}

Say = Callable[[str], None]


def _silent(line: str) -> None:
    """Where progress goes unless asked for: a notebook calling :func:`measure` shows its own."""


def processor_name(device: torch.device) -> str:
    """What runs the benchmark, in words a reader can look up: the GPU's name, or the CPU's
    model name (``platform.processor()`` is often empty or just ``x86_64`` on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def vector_isa() -> str:
    """The widest vector instructions PyTorch's CPU kernels use here (``AVX512``, ``AVX2``,
    ...): machines of one model name can differ, and a CPU's speed here differs about 2.5x
    between the two."""
    return torch.backends.cpu.get_cpu_capability()


def training_flops(step: dict[str, Any], *, epochs: int) -> float:
    """Training FLOPs of one fast-recipe run: one step's count per image (forward and backward
    are linear in the batch size) times the images it trains on. Every seed's run trains on
    as many images, so this is the FLOPs to 99% of each seed that gets there."""
    return step["flops_per_step"] / step["batch_size"] * TRAINING_IMAGES * epochs


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


# The profiler's native library logs its stages, start and stop (and, without a GPU, a failed device
# count) straight to file descriptor 2: lines that say nothing about the step being profiled.
PROFILER_CHATTER = (
    "profiler_start",
    "profiler_stop",
    "gpuGetDeviceCount failed",
    "ActivityProfilerController",
)


@contextlib.contextmanager
def profiler_chatter_filtered() -> Iterator[None]:
    """Run the block with file descriptor 2 caught in a temporary file, then pass on every
    line except the profiler's own chatter (:data:`PROFILER_CHATTER`): nothing else is lost,
    and a notebook's output is not littered with lines about a GPU that is not there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [
                line
                for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                if not any(chatter in line for chatter in PROFILER_CHATTER)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


# Operator names (self time, as torch.profiler reports it) -> the part of the step they are.
STEP_PARTS = (
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution",)),
    ("max pooling", ("max_pool",)),
    ("ReLU", ("relu", "clamp_min", "threshold_backward")),
    ("fully connected (matrix products)", ("mm",)),
    ("optimizer (Adam)", ("Optimizer.", "_foreach", "adam", "sqrt", "lerp", "addcdiv")),
)


def step_part(name: str) -> str:
    """Which part of a training step an operator belongs to (:data:`STEP_PARTS`)."""
    for part, keys in STEP_PARTS:
        if any(key in name for key in keys):
            return part
    return "everything else"


def matmul_gflops(device: torch.device, *, size: int = 2048, repeats: int = 3) -> float:
    """Billions of float32 operations per second of one large ``size`` x ``size`` matrix
    product on ``device`` (best of ``repeats``): about what its arithmetic units can do."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def profile_step(
    device: torch.device, *, batch_size: int = 256, steps: int = 10, seed: int = 1
) -> dict[str, Any]:
    """Where a training step of the fast recipe (its model, layout, optimizer and schedule, as
    ``RECIPES["fast"]`` says) spends its time, on random images of ``batch_size``: what the
    series measured before changing anything (Part 4, §4.H).

    Returns ``step_ms`` (mean over ``steps`` steps after 3 warm-up steps, timed without the
    profiler, which slows what it watches), ``share`` (over ``steps`` more steps under the
    profiler: part of the step -> fraction of the operators' self time, on the CPU: on a GPU
    that is the time spent launching kernels), ``top`` (the 8 operators with the most self
    time: ``[name, ms per step]``), ``operators_per_step`` (ATen operators that call no other
    ATen operator: the kernels a GPU would launch, whatever the batch size), ``flops_per_step``
    (``FlopCounterMode``: forward, backward), ``gflops`` (the rate the step reaches) and
    ``matmul_gflops`` (:func:`matmul_gflops`, the same device's rate on one large product).
    """
    # Long on purpose: timing and profiling must share one set-up so their steps are alike.
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    recipe = get_recipe("fast", batch_size=batch_size)
    seed_everything(seed)
    model = Net.for_recipe(recipe).to(device)
    images = torch.randn(batch_size, 1, 28, 28, device=device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch_size,), device=device)
    optimizer, scheduler = make_optimizer(model, recipe, steps_per_epoch=3 + 2 * steps)
    loss_fn = loss_function(model)
    batches = [(images, targets)]
    run = dict(scheduler=scheduler, device=device, progress=False)
    train_epoch(model, batches * 3, optimizer, **run)  # warm-up
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(images), targets).backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    synchronize(device)
    start = time.perf_counter()
    train_epoch(model, batches * steps, optimizer, **run)
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    with profiler_chatter_filtered(), profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(model, batches * steps, optimizer, **run)
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    leaves = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    self_us: dict[str, float] = {}
    for row in prof.key_averages():
        self_us[row.key] = self_us.get(row.key, 0.0) + row.self_cpu_time_total
    total = sum(self_us.values())
    share: dict[str, float] = {part: 0.0 for part, _ in STEP_PARTS}
    share["everything else"] = 0.0
    for name, us in self_us.items():
        share[step_part(name)] += us / total
    top = sorted(self_us.items(), key=lambda item: -item[1])[:8]
    return {
        "batch_size": batch_size,
        "step_ms": 1000 * seconds,
        "share": share,
        "top": [[name, us / steps / 1000] for name, us in top],
        "operators_per_step": len(leaves) // steps,
        "flops_per_step": flops,
        "gflops": flops / seconds / 1e9,
        "matmul_gflops": matmul_gflops(device),
    }


def fast_runs(
    device: torch.device, seeds: int, *, name: str = "eager", say: Say = _silent, **options: Any
) -> dict[str, Any]:
    """The fast recipe for seeds 1..``seeds``: training seconds, validation per epoch, and the
    test accuracy scored once at the end, with the summary figures. Each seed's figures are
    ``say``-ed as soon as it ends (a seed takes tens of seconds on a CPU), as ``name`` (the
    variant ``options`` make) with its one-time cost (:data:`SET_UP`)."""
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
        set_up = f"{SET_UP[name][0]} {run.setup_s:.2f} s, " if name in SET_UP else ""
        say(
            f"fast recipe {name}, seed {seed} of {seeds}: {set_up}training "
            f"{runs[-1]['train_s']:.2f} s, test accuracy {100 * run.test['accuracy']:.2f}%"
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


def plan(device: torch.device, *, seeds: int, quick: bool, skipped: dict[str, str]) -> list[str]:
    """What a run will measure and about how long it takes, said before it starts: a reader
    watching a terminal that stays silent for minutes cannot tell a slow machine from a hang.
    The time is :data:`REFERENCE_S`'s, for an idle 2-core CPU: a rough guide, not a promise."""
    variants = [v for v in ("eager", "compiled", "graphed") if v not in skipped]
    parts = ["start", "tensors", "step", *([] if quick else ["dataloader"]), *(variants * seeds)]
    parts += ["compile"] if "compiled" in variants else []
    seconds = sum(REFERENCE_S[p] for p in parts)
    about = f"{round(seconds, -1)} seconds" if seconds < 90 else f"{round(seconds / 60)} minutes"
    epochs = "one whole-tensors epoch" if quick else "one DataLoader and one whole-tensors epoch"
    return [
        f"bench on {device}: timing {seeds} seed{'s' if seeds > 1 else ''} of the fast recipe "
        f"({', '.join(variants)}), {epochs} of the example's recipe and one fast-recipe step: "
        f"about {about} on an idle 2-core CPU (faster on a GPU, slower on a busy machine)",
        *(f"  {name} not run: {why}" for name, why in skipped.items()),
    ]


def measure(
    device: torch.device, *, seeds: int = 5, quick: bool = False, say: Say = _silent
) -> dict[str, Any]:
    """Every figure of the benchmark, as plain data (what ``--json`` prints). ``say`` gets the
    :func:`plan` first, then a line for each figure as it is measured: what, how much, where."""

    def figure(text: str) -> None:
        say(f"  {text} on {device}")

    reasons = {
        "compiled": fastpath.compile_unavailable(device),
        "graphed": fastpath.cuda_graph_unavailable(device),
    }
    skipped = {name: why or "--quick" for name, why in reasons.items() if quick or why}
    say("\n".join(plan(device, seeds=seeds, quick=quick, skipped=skipped)))
    figures: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "processor": processor_name(device),
            "vector_isa": vector_isa(),
        },
        "one_time_s": {"data_tensors": None, "compile": None, "cuda_graph_capture": None},
        "classic_epoch_s": (classic := {"dataloader": None, "tensors": None}),
        "step": None,
        "fast": {},
        "skipped": skipped,
    }
    train_set = load_mnist(train=True, transform=mnist_transform())
    start = time.perf_counter()
    tensors = TensorBatches.from_dataset(train_set, device, batch_size=64, shuffle=True, seed=1)
    synchronize(device)
    figures["one_time_s"]["data_tensors"] = time.perf_counter() - start
    figure(f"data as tensors (one-time): {figures['one_time_s']['data_tensors']:.2f} s")

    # Warm-up: the first steps pay for allocations and kernel selection.
    train_model("net", "fast", device=device, progress=False, verbose=False, dry_run=True)
    if not quick:
        loader = make_loader(train_set, batch_size=64, shuffle=True, seed=1)
        classic["dataloader"] = time_epoch(loader, device)
        figure(f"example's recipe, one DataLoader epoch: {classic['dataloader']:.2f} s")
    classic["tensors"] = time_epoch(tensors, device)
    figure(f"example's recipe, one whole-tensors epoch: {classic['tensors']:.2f} s")
    step = figures["step"] = profile_step(device, steps=3 if quick else 10)
    figure(
        f"one fast-recipe step (batch {step['batch_size']}): {step['step_ms']:.1f} ms, "
        f"{step['gflops']:.1f} GFLOP/s (a large matrix product: "
        f"{step['matmul_gflops']:.1f} GFLOP/s)"
    )

    variants = {"eager": {}, "compiled": {"compile": True}, "graphed": {"cuda_graph": True}}
    for name, options in ((n, o) for n, o in variants.items() if n not in skipped):
        result = figures["fast"][name] = fast_runs(device, seeds, name=name, say=figure, **options)
        median = "" if result["median_s"] is None else f" in {result['median_s']:.2f} s median"
        figure(f"fast recipe {name}: 99% reached by {result['reached_99']}/{seeds} seeds{median}")
        if name in SET_UP:  # the first seed's: nothing cached yet
            figures["one_time_s"][SET_UP[name][1]] = result["setup_s"][0]

    run_flops = training_flops(step, epochs=get_recipe("fast").epochs)
    for result in figures["fast"].values():
        result["flops_to_99"] = run_flops if result["reached_99"] else None
    if figures["fast"]:
        figure(f"fast recipe's training FLOPs to 99% (every seed that reaches it): {run_flops:.3g}")

    best = min((v["median_s"] for v in figures["fast"].values() if v["median_s"]), default=None)
    ratio = best / classic["dataloader"] if best and classic["dataloader"] else None
    figures["ratio_fast_to_99_over_classic_dataloader_epoch"] = ratio
    if ratio is not None:
        figure(f"fast recipe's median seconds to 99% / one DataLoader epoch: {ratio:.2f}")
    return figures


def run_bench(
    device: str | None = None, *, seeds: int = 5, quick: bool = False, as_json: bool = False
) -> int:
    """Measure and print (a table, or JSON); returns 0 (an exit status). Progress (the plan,
    then each figure as it is measured) is flushed line by line, to stderr with ``as_json`` so
    that stdout is the one JSON object, printed at the end."""
    stream = sys.stderr if as_json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    figures = measure(pick_device(device), seeds=seeds, quick=quick, say=say)
    print(json.dumps(figures, indent=2) if as_json else "\n" + report(figures))
    sys.stdout.flush()
    return 0
