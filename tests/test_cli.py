"""The command line: the example's flags, usage errors without tracebacks, clear data errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_dissected import cli
from mnist_dissected.train import RECIPES

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args, complaint", [
    (["train", "--batch-size", "0"], "must be at least 1"),
    (["train", "--epochs", "two"], "not an integer"),
    (["train", "--lr", "-0.1"], "must be a positive number"),
    (["train", "--lr", "nan"], "must be a positive number"),
    (["train", "--momentum", "1.5"], "must be in [0, 1)"),
    (["train", "--model", "resnet"], "invalid choice"),
    (["train", "--recipe", "slow"], "invalid choice"),
    (["fly"], "invalid choice"),
])
def test_bad_flag_values_are_usage_errors(args, complaint, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and complaint in err and "usage:" in err
    assert "Traceback" not in err


def test_bad_flag_from_the_shell_prints_usage_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "mnist_dissected", "train", "--epochs", "0"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_reach_the_training(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_train_model(model, recipe, **kwargs):
        seen.update(kwargs, model=model, recipe=recipe)
        return torch.nn.Linear(1, 1), [], RECIPES[recipe]

    monkeypatch.setattr("mnist_dissected.train.train_model", fake_train_model)
    monkeypatch.setattr("mnist_dissected.checkpoint.save_checkpoint",
                        lambda path, *a, **k: Path(path))
    status = cli.main(["train", "--model", "lenet", "--recipe", "classic", "--batch-size", "32",
                       "--test-batch-size", "500", "--epochs", "2", "--lr", "0.05",
                       "--momentum", "0.9", "--seed", "3", "--log-interval", "5",
                       "--device", "cpu", "--save-model", str(tmp_path / "m.pt")])
    assert status == 0
    assert seen["model"] == "lenet" and seen["recipe"] == "classic"
    assert (seen["batch_size"], seen["test_batch_size"], seen["epochs"]) == (32, 500, 2)
    assert (seen["lr"], seen["momentum"], seen["seed"], seen["log_interval"]) == \
        (0.05, 0.9, 3, 5)
    assert "Saved" in capsys.readouterr().out


def test_missing_data_is_a_message_not_a_traceback(tmp_path):
    env = {**os.environ, "MNIST_DISSECTED_DATA": str(tmp_path),
           # any proxy that cannot be reached: the download fails quickly, as offline
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "mnist_dissected", "train", "--epochs", "1",
                             "--device", "cpu"], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=120)
    assert result.returncode == 1
    assert "MNIST files not found" in result.stderr and "MNIST_DISSECTED_DATA" in result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_device_is_a_message(capsys):
    status = cli.main(["train", "--device", "cuda:7" if torch.cuda.is_available() else "cuda"])
    assert status == 2 and "not usable" in capsys.readouterr().err
