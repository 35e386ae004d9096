"""The benchmark is run by hand (`python -m mnist_dissected bench`), not timed in tests; this
only keeps its pieces from rotting and its JSON keys as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mnist_dissected import bench
from mnist_dissected.bench import (
    STEP_PARTS,
    processor_name,
    profile_step,
    profiler_chatter_filtered,
    report,
    step_part,
    time_epoch,
)
from mnist_dissected.data import TensorBatches

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Stands in for the ``time`` module in bench: ``perf_counter()`` reads ``now``, which moves
    only when a test moves it, so a timing is an exact, known number."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class TickingBatches:
    """Batches that move the fake clock by ``tick`` seconds as each one is handed out."""

    def __init__(self, batches, clock: FakeClock, tick: float) -> None:
        self.batches, self.clock, self.tick = batches, clock, tick

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.clock.now += self.tick
            yield batch


@pytest.fixture
def optimizer_steps(monkeypatch):
    """(optimizer, the time on bench's clock) for every SGD step taken. A wrapper on SGD.step,
    not a global optimizer hook: at torch 2.2 those stop firing in a process once
    torch.compile has run in it, and the verdict would depend on which tests ran before."""
    steps = []
    real_step = torch.optim.SGD.step

    def step(optimizer, *args, **kwargs):
        steps.append((optimizer, bench.time.perf_counter()))
        return real_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return steps


def test_time_epoch_times_one_whole_epoch_of_classic_training(monkeypatch, optimizer_steps):
    """4 batches, a quarter of a second each on the fake clock: one epoch is 1 s, and the
    classic recipe's SGD steps once per batch inside the timed span."""
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    torch.manual_seed(0)
    images, targets = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    batches = TickingBatches(TensorBatches(images, targets, batch_size=64), clock, 0.25)
    seconds = time_epoch(batches, torch.device("cpu"), channels_last=True)
    assert seconds == 1.0
    assert [t for _, t in optimizer_steps] == [100.25, 100.5, 100.75, 101.0]
    (sgd,) = {opt for opt, _ in optimizer_steps}
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.01, 0.5)


def profiled_on_a_fake_clock(monkeypatch, steps: int, ms_per_step: float) -> tuple[dict, list]:
    """profile_step on bench's fake clock, where each training step takes ``ms_per_step``;
    also returns how many steps each of its training passes took."""
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "matmul_gflops", lambda device: 123.0)
    passes = []
    real_train_epoch = bench.train_epoch

    def ticking_train_epoch(model, batches, optimizer, **kwargs):
        passes.append(len(batches))
        clock.now += ms_per_step / 1000 * len(batches)
        return real_train_epoch(model, batches, optimizer, **kwargs)

    monkeypatch.setattr(bench, "train_epoch", ticking_train_epoch)
    return profile_step(torch.device("cpu"), batch_size=8, steps=steps), passes


def test_profile_step_times_its_steps_and_derives_the_rates(monkeypatch):
    step, passes = profiled_on_a_fake_clock(monkeypatch, steps=2, ms_per_step=4.0)
    assert passes == [3, 2, 2]  # warm-up, timed, profiled
    assert step["step_ms"] == pytest.approx(4.0)  # the timed pass alone, per step
    # Per image: forward 480,500 multiply-adds; backward 817,000 (conv1 needs no input gradient).
    assert step["flops_per_step"] == 2 * 8 * (480_500 + 817_000)
    assert step["gflops"] == pytest.approx(step["flops_per_step"] / 0.004 / 1e9)
    assert step["matmul_gflops"] == 123.0
    assert step["batch_size"] == 8
    longer, _ = profiled_on_a_fake_clock(monkeypatch, steps=4, ms_per_step=4.0)
    assert longer["step_ms"] == pytest.approx(4.0), "per step, whatever the number of steps"
    # per step too: within 25% (some operators run once per pass, not once per step: at torch
    # 2.2, 237 per step over 2 steps and 228 over 4 in a fresh process, 216 and 238 once
    # torch.compile has run in it); not divided by the steps, it would double
    assert longer["operators_per_step"] == pytest.approx(step["operators_per_step"], rel=0.25)
    assert longer["flops_per_step"] == step["flops_per_step"]


def test_profile_step_shares_out_all_its_time():
    step = profile_step(torch.device("cpu"), batch_size=8, steps=2)
    assert set(step["share"]) == {part for part, _ in STEP_PARTS} | {"everything else"}
    assert sum(step["share"].values()) == pytest.approx(1.0)
    assert step["share"]["convolution backward"] > 0 and step["share"]["convolution forward"] > 0
    assert 50 < step["operators_per_step"] < 1000
    top = [ms for _, ms in step["top"]]
    assert len(top) == 8 and top == sorted(top, reverse=True) and top[-1] >= 0
    assert len({name for name, _ in step["top"]}) == 8


def test_the_processor_is_named_in_words_a_reader_can_look_up():
    name = processor_name(torch.device("cpu"))
    assert name and name.strip() == name
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "model name" in cpuinfo.read_text():
        assert name in cpuinfo.read_text()  # the model, not just "x86_64"


def test_step_parts_name_the_operators_of_a_training_step():
    assert step_part("aten::convolution_backward") == "convolution backward"
    assert step_part("aten::mkldnn_convolution") == "convolution forward"
    assert step_part("aten::max_pool2d_with_indices_backward") == "max pooling"
    assert step_part("aten::addmm") == "fully connected (matrix products)"
    assert step_part("Optimizer.step#Adam.step") == "optimizer (Adam)"
    assert step_part("aten::clamp_min") == "ReLU"
    assert step_part("aten::nll_loss_forward") == "everything else"


def test_the_profilers_chatter_is_dropped_and_every_other_line_kept(capfd):
    with profiler_chatter_filtered():
        os.write(2, b"USDT:2026 SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"a warning that matters\n")
        os.write(2, b"ERROR:2026 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n")
    os.write(2, b"after the block\n")
    err = capfd.readouterr().err
    assert "a warning that matters\n" in err and "after the block" in err
    assert "profiler_start" not in err and "gpuGetDeviceCount" not in err


def test_the_profilers_chatter_filter_gives_file_descriptor_2_back_after_an_error(capfd):
    with pytest.raises(ZeroDivisionError), profiler_chatter_filtered():
        os.write(2, b"written before the error\n")
        1 / 0  # noqa: B018
    os.write(2, b"written after\n")
    err = capfd.readouterr().err
    assert "written before the error" in err and "written after" in err


@pytest.mark.slow
@pytest.mark.newest_only
def test_quick_json_has_the_documented_keys():
    result = subprocess.run(
        [sys.executable, "-m", "mnist_dissected", "bench", "--quick", "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {
        "machine",
        "one_time_s",
        "classic_epoch_s",
        "step",
        "fast",
        "skipped",
        "ratio_fast_to_99_over_classic_dataloader_epoch",
    }
    eager = figures["fast"]["eager"]
    assert eager["seeds"] == 1 and len(eager["runs"][0]["val_accuracy"]) == 3
    assert 0.9 < eager["runs"][0]["test_accuracy"] <= 1
    assert figures["skipped"]["graphed"]  # says why (no CUDA here, or --quick)
    assert figures["step"]["flops_per_step"] == 2 * 256 * (480_500 + 817_000)
    assert figures["machine"]["vector_isa"] in {"AVX512", "AVX2", "DEFAULT", "NEON", "SVE256"}
    if eager["reached_99"]:
        assert eager["flops_to_99"] == 2 * (480_500 + 817_000) * 55_000 * 3
    assert "Fast recipe" in report(figures)
    assert result.stderr.startswith("bench on cpu: timing 1 seed of the fast recipe (eager)")
    assert "  fast recipe eager, seed 1 of 1: training " in result.stderr


class FlushedLines:
    """Stands in for stdout or stderr: text counts as shown only once flushed (as through a
    pipe), and each line shown goes on the shared ``timeline`` as (stream name, line)."""

    def __init__(self, name: str, timeline: list) -> None:
        self.name, self.timeline, self.pending = name, timeline, ""

    def write(self, text: str) -> int:
        self.pending += text
        return len(text)

    def flush(self) -> None:
        *shown, self.pending = self.pending.split("\n")
        self.timeline.extend((self.name, line) for line in shown)


def shown_on(timeline: list, monkeypatch) -> None:
    """stdout and stderr as :class:`FlushedLines` on ``timeline``: called in the test itself,
    since pytest puts its own capturing streams back between a fixture and the test."""
    monkeypatch.setattr(sys, "stdout", FlushedLines("stdout", timeline))
    monkeypatch.setattr(sys, "stderr", FlushedLines("stderr", timeline))


@pytest.fixture
def timeline(monkeypatch) -> list:
    """bench with every measurement faked (instant, known figures, no data read), each noted
    as ("measure", what) as it starts, in the list that :func:`shown_on` adds lines to."""
    events: list = []
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "load_mnist", lambda **kwargs: "the training set")
    monkeypatch.setattr(bench, "make_loader", lambda *args, **kwargs: "DataLoader")

    def from_dataset(*args, **kwargs):
        events.append(("measure", "data as tensors"))
        clock.now += 0.25
        return "whole tensors"

    def time_epoch(batches, device):
        events.append(("measure", f"{batches} epoch"))
        return {"DataLoader": 36.0, "whole tensors": 18.0}[batches]

    def profile_step(device, *, steps):
        events.append(("measure", "step"))
        share = {part: 0.0 for part, _ in STEP_PARTS} | {"everything else": 1.0}
        figures = dict(batch_size=256, step_ms=36.0, share=share, top=[], operators_per_step=192)
        return figures | dict(flops_per_step=664e6, gflops=18.4, matmul_gflops=67.0)

    def train_model(model, recipe, *, seed=1, dry_run=False, compile=False, **kwargs):
        variant = "compiled" if compile else "eager"
        events.append(("measure", "warm-up" if dry_run else f"{variant} seed {seed}"))
        epoch = {"eager": 3.0, "compiled": 4.0}[variant]
        history = [{"train_seconds": epoch, "val_accuracy": 0.98}] * 3
        accuracy = {1: 0.9914, 2: 0.9897}[seed]  # seed 2 misses 99%
        setup = 9.0 / seed if compile else 0.0  # compiling once, then from the cache
        return SimpleNamespace(history=history, test={"accuracy": accuracy}, setup_s=setup)

    monkeypatch.setattr(bench, "TensorBatches", SimpleNamespace(from_dataset=from_dataset))
    for fake in (time_epoch, profile_step, train_model):
        monkeypatch.setattr(bench, fake.__name__, fake)
    monkeypatch.setattr(bench.fastpath, "compile_unavailable", lambda device: None)
    return events


def assert_in_order(events: list, expected: list) -> None:
    """``events`` are ``expected``, one for one: the same stream or measurement, in the same
    order, each line containing the text expected of it."""
    assert [kind for kind, _ in events] == [kind for kind, _ in expected], events
    for (kind, got), (_, text) in zip(events, expected, strict=True):
        assert text in got, (kind, got, text)


# What a run with the fakes of ``timeline`` measures ("measure", what) and says about it ("said",
# the text a line must contain), in the order it must happen, in pieces that runs share.
DATA = [
    ("measure", "data as tensors"),
    ("said", "  data as tensors (one-time): 0.25 s on cpu"),
    ("measure", "warm-up"),
]
DATALOADER = [
    ("measure", "DataLoader epoch"),
    ("said", "  example's recipe, one DataLoader epoch: 36.00 s on cpu"),
]
TENSORS_AND_STEP = [
    ("measure", "whole tensors epoch"),
    ("said", "  example's recipe, one whole-tensors epoch: 18.00 s on cpu"),
    ("measure", "step"),
    ("said", "  one fast-recipe step (batch 256): 36.0 ms, 18.4 GFLOP/s (a large matrix "),
]


def on(stream: str, expected: list) -> list:
    """``expected`` with its lines said on ``stream``."""
    return [(stream if kind == "said" else kind, text) for kind, text in expected]


def test_with_json_each_figure_goes_to_stderr_as_measured_and_stdout_is_one_object(
    timeline, monkeypatch
):
    """The plan first, then a line per figure, each flushed to stderr after its measurement
    and before the next one starts; stdout is only the JSON object, printed at the end."""
    shown_on(timeline, monkeypatch)
    assert bench.run_bench("cpu", seeds=1, quick=True, as_json=True) == 0
    progress = [event for event in timeline if event[0] != "stdout"]
    plan = [
        ("said", "bench on cpu: timing 1 seed of the fast recipe (eager), one whole-tensors "),
        ("said", "  compiled not run: --quick"),
        ("said", "  graphed not run: CUDA graphs need an NVIDIA GPU"),
    ]
    eager = [
        ("measure", "eager seed 1"),
        ("said", "  fast recipe eager, seed 1 of 1: training 9.00 s, test accuracy 99.14% on cpu"),
        ("said", "  fast recipe eager: 99% reached by 1/1 seeds in 9.00 s median on cpu"),
        ("said", "  fast recipe's training FLOPs to 99% (every seed that reaches it): 4.28e+11"),
    ]
    assert_in_order(progress, on("stderr", plan + DATA + TENSORS_AND_STEP + eager))
    assert "about " in progress[0][1]  # how long, roughly: the number is not checked
    output = [line for stream, line in timeline if stream == "stdout"]
    assert timeline[-len(output) :] == [("stdout", line) for line in output], "all at the end"
    figures = json.loads("\n".join(output))  # one object: a second one would be "Extra data"
    assert figures["one_time_s"]["data_tensors"] == 0.25
    assert figures["fast"]["eager"]["runs"][0]["train_s"] == 9.0
    assert set(figures["skipped"]) == {"compiled", "graphed"}
    # 664 MFLOP a step of 256 images; 55,000 images an epoch, 3 epochs
    assert figures["fast"]["eager"]["flops_to_99"] == pytest.approx(664e6 / 256 * 55_000 * 3)
    assert figures["machine"]["vector_isa"] == torch.backends.cpu.get_cpu_capability()


def test_without_json_each_figure_is_printed_as_measured_then_the_table(timeline, monkeypatch):
    """Every figure of a full run (DataLoader epoch, two variants, the ratio) has its line on
    stdout before the next measurement starts; the table the README quotes follows them."""
    shown_on(timeline, monkeypatch)
    assert bench.run_bench("cpu", seeds=2, quick=False) == 0
    plan = [
        ("said", "bench on cpu: timing 2 seeds of the fast recipe (eager, compiled), one "),
        ("said", "  graphed not run: CUDA graphs need an NVIDIA GPU"),
    ]
    fast = [
        ("measure", "eager seed 1"),
        ("said", "  fast recipe eager, seed 1 of 2: training 9.00 s, test accuracy 99.14% on cpu"),
        ("measure", "eager seed 2"),
        ("said", "  fast recipe eager, seed 2 of 2: training 9.00 s, test accuracy 98.97% on cpu"),
        ("said", "  fast recipe eager: 99% reached by 1/2 seeds in 9.00 s median on cpu"),
        ("measure", "compiled seed 1"),
        ("said", "compiled, seed 1 of 2: compiling 9.00 s, training 12.00 s, test accuracy 99.14%"),
        ("measure", "compiled seed 2"),
        ("said", "compiled, seed 2 of 2: compiling 4.50 s, training 12.00 s, test accuracy 98.97%"),
        ("said", "  fast recipe compiled: 99% reached by 1/2 seeds in 12.00 s median on cpu"),
        ("said", "  fast recipe's training FLOPs to 99% (every seed that reaches it): 4.28e+11"),
        ("said", "  fast recipe's median seconds to 99% / one DataLoader epoch: 0.25 on cpu"),
    ]
    expected = on("stdout", plan + DATA + DATALOADER + TENSORS_AND_STEP + fast)
    assert_in_order(timeline[: len(expected)], expected)
    assert "one DataLoader and one whole-tensors epoch" in timeline[0][1]
    table = timeline[len(expected) :]
    assert {stream for stream, _ in table} == {"stdout"}, "the table after the last figure"
    table = [line for _, line in table]
    assert table[0] == "" and table[1].startswith("mnist-dissected bench: torch ")
    assert "  torch.compile (first run)    9.00" in table
    assert table.count("            training FLOPs to 99%: 0.43 TFLOP") == 2


def test_measure_says_nothing_unless_given_somewhere_to_say_it(timeline, monkeypatch):
    """A notebook calling ``measure`` gets the figures back, not lines in its output."""
    shown_on(timeline, monkeypatch)
    figures = bench.measure(torch.device("cpu"), seeds=1, quick=True)
    assert [kind for kind, _ in timeline] == ["measure"] * 5
    assert figures["classic_epoch_s"] == {"dataloader": None, "tensors": 18.0}
