"""The benchmark is run by hand (`python -m mnist_dissected bench`), not timed in tests; this
only keeps its pieces from rotting and its JSON keys as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

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
def optimizer_steps():
    """(optimizer, the time on bench's clock) for every optimizer step taken."""
    steps = []

    def record(optimizer, args, kwargs):
        steps.append((optimizer, bench.time.perf_counter()))

    handle = register_optimizer_step_pre_hook(record)
    yield steps
    handle.remove()


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
    # per step too: within 10% (some operators run once per pass, not once per step: at torch
    # 2.2, 237 per step over 2 steps and 228 over 4); not divided by the steps, it doubles
    assert longer["operators_per_step"] == pytest.approx(step["operators_per_step"], rel=0.1)
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
    assert "Fast recipe" in report(figures)
