"""The cache of trained models: keyed on the whole recipe and seed, one training for two
processes, the same device whether trained or loaded."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mnist_dissected import pretrained as P
from mnist_dissected.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mnist_dissected.models import LeNet, Net, model_class
from mnist_dissected.recipes import RECIPES, RUN_OPTIONS, get_recipe
from mnist_dissected.train import Trained

ROOT = Path(__file__).resolve().parent.parent


def test_default_cache_is_in_the_checkout_data_folder(monkeypatch):
    monkeypatch.delenv("MNIST_DISSECTED_DATA", raising=False)
    path = P.default_checkpoint_path(RECIPES["fast"], seed=1)
    assert path.parent == ROOT / "data" / "checkpoints"
    assert path.name.startswith("net_fast_seed1_")


#: A valid other value for each training field of a recipe, and the recipe to change it in.
OTHER_VALUE = {
    "batch_size": ("fast", 128),
    "lr": ("fast", 0.02),
    "epochs": ("fast", 4),
    "optimizer": ("classic", "adam"),
    "schedule": ("fast", None),
    "dropout": ("fast", 0.25),
    "channels_last": ("fast", False),
    "data_path": ("fast", "loader"),
    "test_batch_size": ("fast", 500),
    "momentum": ("classic", 0.9),
    "gamma": ("classic", 0.5),
}
RUN_OPTION_VALUE = {"name": "renamed", "log_interval": 7, "compile": True, "cuda_graph": True}


def test_the_key_covers_every_training_field_and_the_seed_and_no_run_option():
    every = {field.name for field in dataclasses.fields(RECIPES["fast"])}
    assert set(OTHER_VALUE) | set(RUN_OPTION_VALUE) == every, "a new field: classify it here"
    assert set(RUN_OPTION_VALUE) == set(RUN_OPTIONS)
    for name, (base_name, value) in OTHER_VALUE.items():
        base = RECIPES[base_name]
        if name in ("gamma", "optimizer"):  # StepLR first, so that only gamma differs
            base = get_recipe(base, schedule="step", gamma=0.7, momentum=0.0)
        changed = dataclasses.replace(base, **{name: value})
        assert P.recipe_key(changed, 1) != P.recipe_key(base, 1), name
    fast = RECIPES["fast"]
    assert P.recipe_key(fast, 1) != P.recipe_key(fast, 2), "the seed"
    for name, value in RUN_OPTION_VALUE.items():
        same = dataclasses.replace(fast, **{name: value})
        assert P.recipe_key(same, 1) == P.recipe_key(fast, 1), f"{name} must not retrain"


def fake_training(monkeypatch, calls):
    """``train_model`` replaced by one that records its seed and returns an untrained ``Net``
    on the CPU, whatever device it was asked for: moving the model is load_or_train's job."""

    def train_model(name, recipe, *, seed, device=None, **kwargs):
        calls.append(seed)
        torch.manual_seed(seed)
        model = Net(dropout=0.0) if name == "net" else model_class(name)()
        return Trained(
            model,
            [{"epoch": 1, "val_accuracy": 0.99}],
            recipe,
            {"loss": 0.03, "accuracy": 0.99, "n": 10000},
        )

    monkeypatch.setattr(P, "train_model", train_model)


def test_todays_network_is_cached_under_its_own_name_and_never_taken_for_net(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    today = get_recipe("today", epochs=1)
    model, meta = P.load_or_train(recipe=today, model="today", root=tmp_path)
    path = P.default_checkpoint_path(today, model="today", root=tmp_path)
    assert path.is_file() and path.name.startswith("today_today_seed1_")
    assert type(model).__name__ == "TodayNet" and meta["architecture"] == "today"
    assert P.default_checkpoint_path(today, root=tmp_path) != path, "Net's key differs"
    P.load_or_train(recipe=today, model="today", root=tmp_path)
    assert calls == [1], "the second call reads the cache"
    P.load_or_train(recipe=today, root=tmp_path)  # Net with the same recipe: its own file
    assert calls == [1, 1]


def test_a_model_cached_by_an_older_training_stream_is_trained_again(tmp_path, monkeypatch):
    """The cache key and the file both carry the stream: a model whose random draws came in
    another order (before the progress bar stopped drawing a shuffle) is never reused."""
    calls = []
    fake_training(monkeypatch, calls)
    path = P.default_checkpoint_path(RECIPES["fast"], root=tmp_path)
    path.parent.mkdir(parents=True)
    save_checkpoint(
        path,
        Net(dropout=0.0),
        recipe=RECIPES["fast"],
        seed=1,
        extra={"written_by": P.WRITTEN_BY, "stream": P.TRAINING_STREAM - 1},
    )
    P.load_or_train(root=tmp_path)
    assert calls == [1] and read_checkpoint(path)["stream"] == P.TRAINING_STREAM


def test_load_or_train_trains_once_then_loads(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    path = tmp_path / "cache" / "net.pt"
    first, meta = P.load_or_train(path, seed=3)
    second, meta2 = P.load_or_train(path, seed=3)
    assert calls == [3]
    assert torch.equal(first.fc1.weight, second.fc1.weight) and meta == meta2
    assert meta["test"]["accuracy"] == 0.99
    P.load_or_train(path, seed=4)
    assert calls == [3, 4], "a cache made with another seed is not used"


def test_an_edited_recipe_is_retrained_not_reused(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    path = tmp_path / "net.pt"
    P.load_or_train(path, seed=1)
    P.load_or_train(path, recipe=get_recipe("fast", lr=0.02), seed=1)
    assert calls == [1, 1], "same name, another learning rate: trained again"
    assert read_checkpoint(path)["recipe"]["lr"] == 0.02


def test_same_device_whether_trained_or_loaded(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)  # its model stays on the CPU
    # a device other than the CPU shows who moved the model: here `meta`, faked as picked
    monkeypatch.setattr(P, "pick_device", lambda device=None: torch.device("meta"))
    path = tmp_path / "net.pt"
    trained, _ = P.load_or_train(path, device=None)
    assert next(trained.parameters()).device.type == "meta", "trained: moved to the device"
    cached, _ = P.load_or_train(path, device=None)
    assert calls == [1], "the second call reads the cache"
    assert next(cached.parameters()).device.type == "meta", "cached: moved to the device"
    assert not trained.training and not cached.training


def test_load_or_train_replaces_an_unreadable_cache(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    path = P.default_checkpoint_path(RECIPES["fast"], seed=1, root=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    P.load_or_train(seed=1, root=tmp_path)
    assert calls == [1] and read_checkpoint(path)["seed"] == 1


def save_bare_state_dict_of_another_network(path):
    """A state_dict with Net's keys and other shapes (d8dd8ca's network, Dec 2018)."""
    shapes = {"conv1": (20, 1, 5, 5), "conv2": (50, 20, 5, 5), "fc1": (500, 800), "fc2": (10, 500)}
    state = {}
    for layer, shape in shapes.items():
        state[f"{layer}.weight"], state[f"{layer}.bias"] = torch.zeros(shape), torch.zeros(shape[0])
    torch.save(state, path)


def save_with_another_recipe(path):
    save_checkpoint(path, Net(), recipe=RECIPES["classic"], seed=1)


def save_lenet_as_fast(path):
    save_checkpoint(path, LeNet(), recipe=RECIPES["fast"], seed=1)


def save_garbage(path):
    path.write_bytes(b"my notes")


@pytest.mark.parametrize(
    "make",
    [
        save_bare_state_dict_of_another_network,
        save_with_another_recipe,
        save_lenet_as_fast,
        save_garbage,
    ],
)
def test_a_file_load_or_train_did_not_write_is_never_trained_over(tmp_path, monkeypatch, make):
    calls = []
    fake_training(monkeypatch, calls)
    path = tmp_path / "mine.pt"
    make(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="left as it is") as err:
        P.load_or_train(path, seed=1)
    assert str(path) in str(err.value) and "pass another path" in str(err.value)
    assert calls == [] and path.read_bytes() == before
    assert os.listdir(tmp_path) == ["mine.pt"], "no lock file left either"


def test_a_users_checkpoint_of_the_very_model_asked_for_is_used(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    path = tmp_path / "mine.pt"
    save_checkpoint(path, Net(dropout=0.0), recipe=RECIPES["fast"], seed=1)
    before = path.read_bytes()
    model, meta = P.load_or_train(path, seed=1)
    assert calls == [] and path.read_bytes() == before and meta["seed"] == 1


@pytest.mark.parametrize("cls", [Net, LeNet])
def test_the_examples_bare_state_dict_is_used_as_that_model_never_trained_over(
    tmp_path, monkeypatch, cls
):
    """A reader's own ``mnist_cnn.pt`` (or ``export``'s) works with Part 5 and the widget."""
    calls = []
    fake_training(monkeypatch, calls)
    monkeypatch.setattr(P, "pick_device", lambda device=None: torch.device("meta"))
    torch.manual_seed(5)
    saved = cls()
    path = tmp_path / "mnist_cnn.pt"
    torch.save(saved.state_dict(), path)
    before = path.read_bytes()
    for recipe, seed in (("fast", 1), ("classic", 7)):  # it records neither: used as it is
        model, meta = P.load_or_train(path, recipe=recipe, seed=seed)
        assert type(model) is cls and not model.training
        assert next(model.parameters()).device.type == "meta", "moved to the device"
        assert meta["format"] == "bare state_dict" and meta["recipe"] is meta["seed"] is None
    assert calls == [] and path.read_bytes() == before
    assert os.listdir(tmp_path) == ["mnist_cnn.pt"], "no lock file left either"
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.conv1.weight, saved.conv1.weight)


def test_a_bare_state_dict_in_the_cache_is_replaced_like_any_stale_entry(tmp_path, monkeypatch):
    """The cache's files are all load_or_train's: one it cannot match is trained again."""
    calls = []
    fake_training(monkeypatch, calls)
    path = P.default_checkpoint_path(RECIPES["fast"], seed=1, root=tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(Net().state_dict(), path)
    P.load_or_train(seed=1, root=tmp_path)
    assert calls == [1] and read_checkpoint(path)["seed"] == 1


def test_no_lock_file_or_folder_is_left_behind(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls)
    P.load_or_train(tmp_path / "cache" / "net.pt", seed=1)
    assert os.listdir(tmp_path / "cache") == ["net.pt"]

    def failing_training(*args, **kwargs):
        raise RuntimeError("no data")

    monkeypatch.setattr(P, "train_model", failing_training)
    with pytest.raises(RuntimeError):
        P.load_or_train(tmp_path / "new" / "deeper" / "net.pt", seed=1)
    assert sorted(os.listdir(tmp_path)) == ["cache"], "the folders made for it are gone"


@pytest.mark.slow
def test_two_processes_at_once_share_one_training(tmp_path):
    """nbval may run Parts 4 and 5 together: the file must end up whole, trained once."""
    script = textwrap.dedent(f"""
        import time, torch
        from mnist_dissected import pretrained as P
        from mnist_dissected.models import Net
        from mnist_dissected.train import Trained

        def slow_training(name, recipe, *, seed, device=None, **kwargs):
            with open({str(tmp_path / "trainings")!r}, "a") as f:
                f.write("x")
            time.sleep(1.5)
            torch.manual_seed(seed)
            return Trained(Net(dropout=0.0), [], recipe, {{"accuracy": 0.5}})

        P.train_model = slow_training
        model, meta = P.load_or_train({str(tmp_path / "net.pt")!r}, seed=5, device="cpu")
        print(float(model.fc2.weight.sum()))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert (tmp_path / "trainings").read_text() == "x", "trained once, loaded once"
    assert read_checkpoint(tmp_path / "net.pt")["seed"] == 5
    assert sorted(os.listdir(tmp_path)) == ["net.pt", "trainings"], "no lock file left"


def test_training_says_why_first_without_a_machine_path(tmp_path, monkeypatch, capsys):
    calls = []
    fake_training(monkeypatch, calls)
    P.load_or_train(root=tmp_path)
    name = P.default_checkpoint_path(RECIPES["fast"], root=tmp_path).name
    err = capsys.readouterr().err
    assert err == (
        "No cached net for the fast recipe and seed 1: training it now, once (3 epochs; later "
        f"runs read {name})\n"
    )
    P.load_or_train(root=tmp_path)
    assert capsys.readouterr().err == "" and calls == [1], "read from the cache: nothing said"
    P.load_or_train(recipe=get_recipe("fast", dropout=0.5, epochs=1), root=tmp_path)
    assert capsys.readouterr().err.startswith(
        "No cached net for the fast recipe with epochs=1, dropout=0.5 and seed 1: training it now, "
        "once (1 epoch;"
    ), "a variant is named as one"
