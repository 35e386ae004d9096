"""The benchmark is run by hand (`python -m mnist_dissected bench`), not timed in tests; this
only keeps its pieces from rotting and its JSON keys as documented."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_dissected.bench import report, time_epoch
from mnist_dissected.data import TensorBatches

ROOT = Path(__file__).resolve().parent.parent


def test_time_epoch_trains_one_epoch_and_returns_seconds():
    torch.manual_seed(0)
    batches = TensorBatches(
        torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)), batch_size=64
    )
    seconds = time_epoch(batches, torch.device("cpu"), channels_last=True)
    assert isinstance(seconds, float) and seconds > 0


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
        "fast",
        "skipped",
        "ratio_fast_to_99_over_classic_dataloader_epoch",
    }
    eager = figures["fast"]["eager"]
    assert eager["seeds"] == 1 and len(eager["runs"][0]["val_accuracy"]) == 3
    assert 0.9 < eager["runs"][0]["test_accuracy"] <= 1
    assert figures["skipped"]["graphed"]  # says why (no CUDA here, or --quick)
    assert "Fast recipe" in report(figures)
