"""Checkpoints: metadata, atomic writes, safe loading, and the shared cache of the trained Net."""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mnist_dissected import checkpoint as C
from mnist_dissected.models import LeNet, Net
from mnist_dissected.train import RECIPES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = Net()
    history = [{"epoch": 1, "train_loss": 0.5, "step_losses": [0.7, 0.3], "test_loss": 0.1,
                "test_accuracy": 0.97, "seconds": 1.5}]
    path = C.save_checkpoint(tmp_path / "net.pt", net, RECIPES["fast"], history, seed=7)
    return net, path


def test_round_trip_with_metadata(saved):
    net, path = saved
    loaded, meta = C.load_checkpoint(path, Net())
    for p, q in zip(net.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not loaded.training
    assert meta["architecture"] == "Net" and meta["recipe"]["name"] == "fast"
    assert meta["epochs"] == 1 and meta["seed"] == 7 and meta["history"][0]["seconds"] == 1.5
    assert meta["torch_version"] == str(torch.__version__)
    rebuilt, _ = C.load_checkpoint(path)  # architecture from the file
    assert isinstance(rebuilt, Net) and rebuilt.dropout == net.dropout


def test_write_is_atomic_and_leaves_no_temporary_file(saved, monkeypatch):
    _, path = saved
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(path, LeNet())
    assert path.read_bytes() == before, "the old checkpoint is untouched"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_another_architecture_is_a_clear_error(saved):
    _, path = saved
    with pytest.raises(C.CheckpointError, match="weights of a Net, not of a LeNet"):
        C.load_checkpoint(path, LeNet())


def test_truncated_checkpoint_is_a_clear_error(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(C.CheckpointError, match="truncated or not a PyTorch checkpoint"):
        C.load_checkpoint(path, Net())


def test_file_that_is_no_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(C.CheckpointError, match="truncated or not a PyTorch checkpoint"):
        C.load_checkpoint(text)
    bare = tmp_path / "bare.pt"
    torch.save(Net().state_dict(), bare)
    with pytest.raises(C.CheckpointError, match="not an mnist-dissected checkpoint"):
        C.load_checkpoint(bare)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        C.load_checkpoint(tmp_path / "missing.pt")


class Exploit:
    """Unpickling this runs code (here: creates a file). weights_only must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("wrap", ["torch.save", "plain pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, wrap):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": C.FORMAT, "architecture": "Net", "state_dict": Exploit(marker)}
    if wrap == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(C.CheckpointError, match="refused to load") as err:
        C.load_checkpoint(evil)
    assert "weights_only=True" in str(err.value) and str(evil) in str(err.value)
    assert not marker.exists(), "the code in the pickle must not have run"
    if wrap == "plain pickle":
        pickle.loads(evil.read_bytes())
        assert marker.exists(), "sanity: the exploit does run when unpickled unsafely"


def test_default_cache_is_in_the_checkout_data_folder(monkeypatch):
    monkeypatch.delenv("MNIST_DISSECTED_DATA", raising=False)
    assert C.default_checkpoint_path(1) == ROOT / "data" / "checkpoints" / "net_fast_seed1.pt"


def fake_training(monkeypatch, calls):
    def train_model(name, recipe, seed, **kwargs):
        calls.append(seed)
        torch.manual_seed(seed)
        return Net(dropout=0.0), [{"epoch": 1, "test_accuracy": 0.99}], RECIPES["fast"]

    monkeypatch.setattr(C, "train_model", train_model)


def test_load_or_train_trains_once_then_loads(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    path = tmp_path / "cache" / "net.pt"
    first, meta = C.load_or_train(path, seed=3)
    second, meta2 = C.load_or_train(path, seed=3)
    assert calls == [3]
    assert torch.equal(first.fc1.weight, second.fc1.weight) and meta == meta2
    C.load_or_train(path, seed=4)
    assert calls == [3, 4], "a cache made with another seed is not used"


def test_load_or_train_replaces_an_unreadable_cache(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    path = tmp_path / "net.pt"
    path.write_bytes(b"garbage")
    model, meta = C.load_or_train(path, seed=1)
    assert calls == [1] and C.read_checkpoint(path)["seed"] == 1


def test_two_processes_at_once_share_one_training(tmp_path):
    """nbval may run Parts 4 and 5 together: the file must end up whole, trained once."""
    script = textwrap.dedent(f"""
        import sys, time, torch
        from mnist_dissected import checkpoint as C
        from mnist_dissected.models import Net
        from mnist_dissected.train import RECIPES

        def slow_training(name, recipe, seed, **kwargs):
            with open({str(tmp_path / "trainings")!r}, "a") as f:
                f.write("x")
            time.sleep(1.5)
            torch.manual_seed(seed)
            return Net(dropout=0.0), [], RECIPES["fast"]

        C.train_model = slow_training
        model, meta = C.load_or_train({str(tmp_path / "net.pt")!r}, seed=5)
        print(float(model.fc2.weight.sum()))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert (tmp_path / "trainings").read_text() == "x", "trained once, loaded once"
    assert C.read_checkpoint(tmp_path / "net.pt")["seed"] == 5
