"""The companion's §4.I experiment, run for real at a tiny size: each network trained by its own
recipe for the first steps (step for step what a hand-written loop takes), scored on the
validation split only, cached under every argument."""

import pytest
import torch

from mnist_dissected import early_training as T
from mnist_dissected import experiments as E
from mnist_dissected.data import TensorBatches
from mnist_dissected.devices import seed_everything
from mnist_dissected.mnist_files import data_root
from mnist_dissected.models import Net, TodayNet
from mnist_dissected.train import train_epoch


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A data root whose MNIST is the checkout's (linked) and whose cache is empty; the test
    split is forbidden: the comparison is made on the validation split."""
    (tmp_path / "MNIST").symlink_to(data_root() / "MNIST", target_is_directory=True)
    real = E.load_mnist

    def load_mnist(train=True, **kwargs):
        assert train, "the comparison asked for the test set"
        return real(train=train, **kwargs)

    monkeypatch.setattr(E, "load_mnist", load_mnist)
    return tmp_path


@pytest.fixture
def uncached(monkeypatch):
    monkeypatch.setattr(
        T, "cached_experiment", lambda name, params, compute, *, root=None: E._plain(compute())
    )


def test_each_network_is_trained_by_its_own_recipe_and_the_result_is_cached(root):
    records = T.first_steps(steps=3, val_size=100, device="cpu", root=root)
    assert list(records) == ["Net", "TodayNet"]
    assert (records["TodayNet"]["model"], records["TodayNet"]["recipe"]) == ("today", "today")
    for record in records.values():
        assert len(record["step_losses"]) == 3 and len(record["val_accuracy"]) == 1
        assert 0 <= record["val_accuracy"][0] <= 1 and "diverged" in record
    assert records["Net"]["step_losses"] != records["TodayNet"]["step_losses"]
    assert T.first_steps(steps=3, val_size=100, device="cpu", root=root) == records, (
        "read from the cache"
    )
    assert len(list((root / "checkpoints").glob("experiment_first_steps_*.json"))) == 1


@pytest.mark.parametrize(
    ("name", "model", "optimizer"),
    [
        ("TodayNet", TodayNet, lambda p: torch.optim.Adadelta(p, lr=1.0)),
        ("Net", Net, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5)),
    ],
)
def test_the_steps_are_the_ones_a_hand_written_loop_takes(name, model, optimizer, uncached):
    """The seed's weights, the recipe's optimizer, the seed's batches of 64: step for step."""
    mine = T.first_steps(steps=2, val_size=10, device="cpu")[name]
    train_set, train_idx, _ = E.training_split()
    seed_everything(1)
    network = model()
    batches = TensorBatches.from_dataset(
        train_set, indices=train_idx, batch_size=64, shuffle=True, seed=1
    )
    theirs = train_epoch(
        network, batches, optimizer(network.parameters()), progress=False, max_batches=2
    )
    assert mine["step_losses"] == theirs


def test_every_argument_is_in_the_cache_key(monkeypatch):
    seen = []
    monkeypatch.setattr(
        T, "cached_experiment", lambda name, params, compute, *, root=None: seen.append(params)
    )
    monkeypatch.setattr(T, "pick_device", lambda device=None: torch.device(device or "cpu"))
    T.first_steps()
    T.first_steps({"Net": ("net", "fast")})
    T.first_steps(steps=10)
    T.first_steps(seed=3)
    T.first_steps(val_size=10)
    T.first_steps(device="meta")
    assert all(seen[0] != changed for changed in seen[1:]), "an argument left out of the key"
