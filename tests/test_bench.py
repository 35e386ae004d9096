"""The benchmark is run by hand (`python -m mnist_dissected bench`), not timed in tests; this
only keeps its pieces from rotting and its JSON keys as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_time_epoch_trains_one_epoch_and_returns_seconds():
    torch.manual_seed(0)
    batches = TensorBatches(
        torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)), batch_size=64
    )
    seconds = time_epoch(batches, torch.device("cpu"), channels_last=True)
    assert isinstance(seconds, float) and seconds > 0


def test_profile_step_counts_the_steps_arithmetic_and_shares_out_all_its_time():
    step = profile_step(torch.device("cpu"), batch_size=8, steps=2)
    # Per image: forward 480,500 multiply-adds; backward 817,000 (conv1 needs no input gradient).
    assert step["flops_per_step"] == 2 * 8 * (480_500 + 817_000)
    assert set(step["share"]) == {part for part, _ in STEP_PARTS} | {"everything else"}
    assert sum(step["share"].values()) == pytest.approx(1.0)
    assert step["share"]["convolution backward"] > 0 and step["share"]["convolution forward"] > 0
    assert 50 < step["operators_per_step"] < 1000
    assert step["step_ms"] > 0 and step["gflops"] > 0 and step["matmul_gflops"] > 0
    assert len(step["top"]) == 8 and all(ms >= 0 for _, ms in step["top"])


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
