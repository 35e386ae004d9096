"""Part 4's experiments, run for real at a tiny size: the nearest-mean baseline against a
brute-force computation, the sweeps' records and choices (made on the validation split, never
the test set), and the cache (keyed by every parameter, a bad file recomputed and replaced)."""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from mnist_dissected import experiments as E
from mnist_dissected import pretrained
from mnist_dissected import results_cache as R
from mnist_dissected.mnist_files import data_root
from mnist_dissected.recipes import get_recipe


@pytest.fixture
def root(tmp_path):
    """A data root whose MNIST is the checkout's (linked, never copied) and whose cache is empty."""
    (tmp_path / "MNIST").symlink_to(data_root() / "MNIST", target_is_directory=True)
    return tmp_path


@pytest.fixture
def no_test_set(monkeypatch):
    """The experiments' data loading, with the test split forbidden."""
    real = E.load_mnist

    def load_mnist(train=True, **kwargs):
        assert train, "an experiment asked for the test set"
        return real(train=train, **kwargs)

    monkeypatch.setattr(E, "load_mnist", load_mnist)


# --------------------------------------------------------------------------- the baselines


def test_nearest_mean_equals_a_brute_force_computation():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(60) % 10
    queries = torch.randint(0, 256, (25, 28, 28), dtype=torch.uint8, generator=generator)
    means = E.class_means(images, labels)
    for digit in range(10):
        mine = [images[i].double() / 255 for i in range(60) if labels[i] == digit]
        torch.testing.assert_close(means[digit], sum(mine) / len(mine))
    predicted = E.nearest_mean_predict(means, queries)
    for i in range(25):
        distances = [
            math.sqrt(sum(((queries[i].double() / 255 - means[d]) ** 2).flatten().tolist()))
            for d in range(10)
        ]
        assert predicted[i].item() == distances.index(min(distances))
    assert predicted.dtype == torch.int64


def test_a_mean_image_is_read_as_its_own_digit():
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    for d in range(10):
        images[d, d, :] = 255  # digit d: row d inked
    labels = torch.arange(10)
    means = E.class_means(images, labels)
    assert torch.equal(E.nearest_mean_predict(means, images), labels)


def test_the_linear_model_is_one_linear_layer_on_the_pixels():
    model = E.linear_model()
    assert sum(p.numel() for p in model.parameters()) == 784 * 10 + 10
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.slow
def test_baselines_score_validation_and_test_once_and_are_cached(root, monkeypatch):
    fast_one_epoch = get_recipe("fast", epochs=1)
    scores = E.baseline_scores(recipe=fast_one_epoch, device="cpu", root=root)
    assert 0.75 < scores["nearest_mean"]["val_accuracy"] < 0.90
    assert 0.75 < scores["nearest_mean"]["test_accuracy"] < 0.90
    assert 0.88 < scores["linear"]["val_accuracy"] < 0.95
    assert scores["linear"]["parameters"] == 7850
    assert scores["nearest_mean"]["parameters"] == 7840
    monkeypatch.setattr(E, "fit", None)  # the second call must not train
    assert E.baseline_scores(recipe=fast_one_epoch, device="cpu", root=root) == scores


# --------------------------------------------------------------------------- divergence


def test_is_diverged_flags_nan_and_a_blow_up_that_ends_at_chance_not_a_crawl_or_a_spike():
    assert E.is_diverged([2.3, 1.0, float("nan")])
    assert E.is_diverged([2.3, 122.0, 2.31, 2.30])  # blew up, then stuck guessing
    assert E.is_diverged([])
    assert not E.is_diverged([2.3, 1.5, 0.4, 0.2])
    assert not E.is_diverged([2.33, 2.34, 2.30, 2.29])  # crawling is slow, not diverged
    assert not E.is_diverged([2.3, 3.1, 1.0, 0.7])  # a spike it recovered from


def test_a_nan_step_ends_the_record_instead_of_raising():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(5)]
    batches[2][0][0, 0, 0, 0] = float("nan")  # step 3's loss is NaN
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    record = E.train_and_validate(model, batches, batches[:1], optimizer, epochs=2)
    assert record["diverged"]
    assert len(record["step_losses"]) == 2 and all(math.isfinite(v) for v in record["step_losses"])
    assert record["val_loss"] == [], "no validation after a NaN"


# --------------------------------------------------------------------------- the sweeps


@pytest.mark.slow
def test_the_sweep_returns_one_curve_per_rate_and_seed_and_flags_the_diverged(root, no_test_set):
    rates = [0.003, 1000.0]
    runs = E.lr_sweep(rates, seeds=(1, 2), train_size=1280, device="cpu", root=root)
    assert [(r["lr"], r["seed"]) for r in runs] == [(lr, s) for s in (1, 2) for lr in rates]
    for r in runs:
        assert len(r["val_loss"]) <= 1 and len(r["step_losses"]) <= 5
    assert [r["diverged"] for r in runs] == [False, True, False, True]
    assert E.best_rate(runs) == 0.003
    assert E.best_rate(runs, seed=2) == 0.003


def test_best_rate_reads_validation_loss_and_skips_a_rate_that_diverged_on_any_seed():
    def run(lr, seed, val_loss, diverged=False, train=1.0):
        return {
            "lr": lr,
            "seed": seed,
            "val_loss": [9.0, val_loss],
            "diverged": diverged,
            "step_losses": [train],
        }

    runs = [
        run(0.1, 1, 0.10, train=0.01),
        run(0.1, 2, 0.50, train=0.01),  # mean 0.30
        run(0.01, 1, 0.20),
        run(0.01, 2, 0.22),  # mean 0.21: the best
        run(0.03, 1, 0.05),
        run(0.03, 2, 0.05, diverged=True),  # best loss, but diverged on seed 2
    ]
    assert E.best_rate(runs) == 0.01
    assert E.best_rate(runs, seed=1) == 0.03  # seed 1 alone: 0.03 did not diverge there
    assert E.best_rate(runs, seed=2) == 0.01
    with pytest.raises(ValueError, match="every rate diverged"):
        E.best_rate([run(0.1, 1, 0.1, diverged=True)])


def test_best_runs_pick_each_optimizers_rate_by_validation_loss_not_training_loss():
    def run(name, lr, val_loss, train_loss, diverged=False):
        return {
            "optimizer": name,
            "lr": lr,
            "val_loss": [val_loss],
            "diverged": diverged,
            "step_losses": [train_loss],
        }

    runs = [
        run("SGD", 0.1, 0.30, 0.01),  # lowest training loss, worse on validation
        run("SGD", 0.03, 0.20, 0.20),
        run("Adam", 0.01, 0.01, 0.01, diverged=True),
        run("Adam", 0.001, 0.15, 0.30),
    ]
    best = E.best_runs(runs)
    assert {name: r["lr"] for name, r in best.items()} == {"SGD": 0.03, "Adam": 0.001}


@pytest.mark.slow
def test_the_optimizer_sweep_runs_every_rate_and_never_loads_the_test_set(root, no_test_set):
    grid = {
        "SGD": {"optimizer": "sgd", "momentum": 0.0, "rates": [0.01, 0.1]},
        "Adam": {"optimizer": "adam", "momentum": 0.0, "rates": [0.001]},
    }
    runs = E.optimizer_sweep(grid, steps=3, device="cpu", root=root)
    assert [(r["optimizer"], r["lr"]) for r in runs] == [
        ("SGD", 0.01),
        ("SGD", 0.1),
        ("Adam", 0.001),
    ]
    assert all(len(r["step_losses"]) == 3 and len(r["val_loss"]) == 1 for r in runs)
    best = E.best_runs(runs)
    sgd = min((r for r in runs if r["optimizer"] == "SGD"), key=lambda r: r["val_loss"][-1])
    assert best["SGD"] is sgd and best["Adam"]["lr"] == 0.001


def test_the_optimizer_sweep_reproduces_part_4s_untuned_run(monkeypatch):
    """Same seed, Net with dropout 0.5, batches of 64 from the training split: the momentum
    run at 0.01 is Part 4's short_run(classic_sgd), step for step."""
    from mnist_dissected.data import TensorBatches
    from mnist_dissected.devices import seed_everything
    from mnist_dissected.models import Net
    from mnist_dissected.train import train_epoch

    monkeypatch.setattr(
        E, "cached_experiment", lambda name, params, compute, *, root=None: E._plain(compute())
    )
    grid = {"m": {"optimizer": "sgd", "momentum": 0.5, "rates": [0.01]}}
    (mine,) = E.optimizer_sweep(grid, steps=5, device="cpu")
    train_set, train_idx, _ = E.training_split()
    seed_everything(1)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    batches = TensorBatches.from_dataset(
        train_set, indices=train_idx, batch_size=64, shuffle=True, seed=1
    )
    theirs = train_epoch(model, batches, optimizer, progress=False, max_batches=5)
    assert mine["step_losses"] == theirs


def test_overfitting_runs_score_the_training_images_and_the_validation_split(root, no_test_set):
    settings = [(200, 0.0, 2), (200, 0.5, 2), (400, 0.0, 1)]
    runs = E.overfitting_runs(settings, val_size=300, device="cpu", root=root)
    assert [(r["train_size"], r["dropout"], r["epochs"]) for r in runs] == settings
    for r, (size, _, epochs) in zip(runs, settings, strict=True):
        assert len(r["step_losses"]) == epochs * size // 50
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert len(r[key]) == epochs
    assert runs[0]["step_losses"] != runs[1]["step_losses"], "dropout changed nothing"


def test_a_run_on_the_whole_training_split_is_the_recipes_own_run():
    """recipe_run on all 55,000 images takes the very steps train_model takes (same seed:
    same weights, same batches), so a full-size sweep point is the fast recipe's run."""
    from mnist_dissected.train import train_model

    fast = get_recipe("fast", epochs=1)
    mine = E.recipe_run(
        fast,
        seed=1,
        train_size=55_000,
        device=torch.device("cpu"),
        split=E.training_split(),
        max_batches=1,
    )
    theirs = train_model(
        "net", fast, seed=1, device="cpu", progress=False, verbose=False, dry_run=True
    )
    assert mine["step_losses"] == theirs.history[0]["step_losses"]


# --------------------------------------------------------------------------- the cache


def test_the_cache_round_trips_and_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"curve": (1.0, 0.5), "best": 0.01}

    first = R.cached_experiment("demo", {"a": 1}, compute, root=tmp_path)
    second = R.cached_experiment("demo", {"a": 1}, compute, root=tmp_path)
    assert first == second == {"curve": [1.0, 0.5], "best": 0.01}  # as JSON reads it back
    assert calls == [1]
    path = R.experiment_path("demo", {"a": 1}, root=tmp_path)
    assert path.parent == tmp_path / "checkpoints" and path.name.startswith("experiment_demo_")
    assert not list(path.parent.glob("*.lock")) and not list(path.parent.glob(".*.tmp"))


def test_the_cache_is_keyed_by_every_parameter_the_torch_version_and_the_stream(
    tmp_path, monkeypatch
):
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    R.cached_experiment("demo", {"a": 1, "b": [1, 2]}, compute, root=tmp_path)
    R.cached_experiment("demo", {"a": 2, "b": [1, 2]}, compute, root=tmp_path)
    R.cached_experiment("demo", {"a": 1, "b": [1, 3]}, compute, root=tmp_path)
    R.cached_experiment("other", {"a": 1, "b": [1, 2]}, compute, root=tmp_path)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    R.cached_experiment("demo", {"a": 1, "b": [1, 2]}, compute, root=tmp_path)
    monkeypatch.setattr(R, "TRAINING_STREAM", pretrained.TRAINING_STREAM + 1)
    R.cached_experiment("demo", {"a": 1, "b": [1, 2]}, compute, root=tmp_path)
    assert len(calls) == 6
    assert len(list((tmp_path / "checkpoints").glob("experiment_*.json"))) == 6


@pytest.mark.parametrize(
    ("function", "args", "other_args"),
    [
        (E.lr_sweep, ([0.01],), ([0.03],)),
        (E.optimizer_sweep, (), ({"Adam": {"optimizer": "adam", "momentum": 0.0, "rates": [1]}},)),
        (E.overfitting_runs, ([(1000, 0.0, 2)],), ([(1000, 0.5, 2)],)),
        (E.baseline_scores, (), None),
    ],
)
def test_every_argument_of_an_experiment_is_in_its_cache_key(
    function, args, other_args, monkeypatch
):
    """Each argument (but root, where the data is read) changed alone changes the key."""
    seen = []
    monkeypatch.setattr(
        E,
        "cached_experiment",
        lambda name, params, compute, *, root=None: seen.append(E._plain(params)) or {"runs": []},
    )
    other = {
        "seeds": (3,),
        "seed": 3,
        "train_size": 500,
        "epochs": 2,
        "recipe": get_recipe("classic", batch_size=128),
        "device": "meta",
        "grid": {"SGD": {"optimizer": "sgd", "momentum": 0.0, "rates": [1.0]}},
        "steps": 10,
        "lr": 0.01,
        "batch_size": 32,
        "val_size": 10,
    }
    monkeypatch.setattr(E, "pick_device", lambda device=None: torch.device(device or "cpu"))
    keywords = [
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name != "root"
    ]
    function(*args)
    for name in keywords:
        function(*args, **{name: other[name]})
    if other_args is not None:
        function(*other_args)
    assert len(seen) == len(keywords) + 1 + (other_args is not None)
    assert all(seen[0] != changed for changed in seen[1:]), "a keyword left out of the key"


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b'{"format": "mnist-dissected-experiment/1"}',
        b"[1, 2, 3]",
        "wrong key",
    ],
)
def test_a_damaged_or_foreign_cache_file_is_recomputed_and_replaced(tmp_path, damage, capsys):
    path = R.experiment_path("demo", {"a": 1}, root=tmp_path)
    path.parent.mkdir(parents=True)
    if damage == "wrong key":  # a whole file, of another experiment, under this name
        key = R.experiment_key("demo", {"a": 2})
        damage = json.dumps(
            {"format": R.CACHE_FORMAT, "key": key, "result": {"x": "stale"}}
        ).encode()
    path.write_bytes(damage)
    result = R.cached_experiment("demo", {"a": 1}, lambda: {"x": "fresh"}, root=tmp_path)
    assert result == {"x": "fresh"}
    stored = json.loads(Path(path).read_text())
    assert stored["result"] == {"x": "fresh"} and stored["key"] == R.experiment_key(
        "demo", {"a": 1}
    )
    assert "computing it again" in capsys.readouterr().err


def test_a_failed_computation_leaves_no_cache_file(tmp_path):
    def compute():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        R.cached_experiment("demo", {"a": 1}, compute, root=tmp_path)
    assert not R.experiment_path("demo", {"a": 1}, root=tmp_path).exists()
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        R.cached_experiment("demo", {"a": 1}, lambda: {"x": float("nan")}, root=tmp_path)
    assert not R.experiment_path("demo", {"a": 1}, root=tmp_path).exists()
