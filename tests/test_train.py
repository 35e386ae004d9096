"""The training loop, its recipes, devices and reproducibility (on a small slice of MNIST)."""

import pytest
import torch

from mnist_dissected import devices, recipes, train
from mnist_dissected.data import TensorBatches, load_mnist, make_loader, mnist_transform
from mnist_dissected.models import LeNet, Net


@pytest.fixture(scope="module")
def small():
    """2,048 training and 1,000 test images as tensors, with the same in a DataLoader."""
    train = load_mnist(train=True, transform=mnist_transform())
    test = load_mnist(train=False, transform=mnist_transform())
    for ds, n in [(train, 2048), (test, 1000)]:
        ds.data, ds.targets = ds.data[:n], ds.targets[:n]
    return train, test


def run(small, recipe, seed=1, channels_last=False):
    devices.seed_everything(seed)
    recipe = recipes.get_recipe(recipe, epochs=1)
    model = Net(dropout=recipe.dropout)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = TensorBatches.from_dataset(
        small[0], batch_size=recipe.batch_size, shuffle=True, seed=seed, channels_last=channels_last
    )
    tests = TensorBatches.from_dataset(small[1], batch_size=500)
    opt, sched = recipes.make_optimizer(model, recipe, steps_per_epoch=len(batches))
    history = train.fit(
        model, batches, tests, opt, scheduler=sched, epochs=1, progress=False, verbose=False
    )
    return model, history


@pytest.mark.parametrize("recipe, channels_last", [("classic", False), ("fast", True)])
def test_same_seed_gives_bitwise_identical_weights(small, recipe, channels_last):
    a, ha = run(small, recipe, channels_last=channels_last)
    b, hb = run(small, recipe, channels_last=channels_last)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert ha[0]["step_losses"] == hb[0]["step_losses"]
    c, _ = run(small, recipe, seed=2, channels_last=channels_last)
    assert not torch.equal(a.fc2.weight, c.fc2.weight), "another seed, another run"


def test_history_records_what_happened(small):
    model, history = run(small, "classic")
    (record,) = history
    assert record["epoch"] == 1 and len(record["step_losses"]) == 2048 // 64
    assert record["train_loss"] == pytest.approx(sum(record["step_losses"]) / 32)
    assert record["seconds"] > 0
    loss, acc = train.evaluate(model, TensorBatches.from_dataset(small[1], batch_size=500))
    assert (loss, acc) == (record["val_loss"], record["val_accuracy"])
    assert record["step_losses"][-1] < record["step_losses"][0], "it learns"


def test_evaluate_counts_right_answers_and_averages_the_loss():
    class Fixed(torch.nn.Module):
        log_probs = True

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.log_softmax(x, dim=1)

    x = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    loss, acc = train.evaluate(Fixed(), [(x[:2], y[:2]), (x[2:], y[2:])])
    expected = torch.nn.functional.nll_loss(torch.log_softmax(x, 1), y).item()
    assert acc == 0.75  # the tie in the last row goes to class 0, as argmax does
    assert loss == pytest.approx(expected)


def test_evaluate_uses_eval_mode_and_no_graph(small):
    model = Net().train()
    seen = []
    model.register_forward_hook(
        lambda module, inputs, output: seen.append(
            (module.training, torch.is_grad_enabled(), output.grad_fn)
        )
    )
    train.evaluate(model, TensorBatches.from_dataset(small[1], batch_size=500))
    assert not model.training
    assert seen == [(False, False, None)] * 2, "eval mode, autograd off, no graph recorded"


@pytest.mark.slow
def test_train_epoch_logs_like_the_example(small, capsys):
    devices.seed_everything(0)
    model = Net()
    loader = make_loader(small[0], batch_size=64, shuffle=True, seed=0)
    opt, _ = recipes.make_optimizer(model, recipes.RECIPES["classic"], steps_per_epoch=len(loader))
    losses = train.train_epoch(model, loader, opt, log_interval=10, progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(losses) == 32 and len(lines) == 4
    assert lines[1].startswith("Train Epoch: 1 [640/2048 (31%)]\tLoss: ")
    tensors = TensorBatches.from_dataset(small[0], batch_size=100)
    train.train_epoch(model, tensors, opt, log_interval=20, progress=False)
    assert capsys.readouterr().out.splitlines()[1].startswith("Train Epoch: 1 [2000/2048 (95%)]")


def test_summary_line_is_the_examples():
    assert (
        train.summary_line(0.02281, 0.9926, 10_000)
        == "Test set: Average loss: 0.0228, Accuracy: 9926/10000 (99.26%)"
    )
    assert train.summary_line(0.1, 0.5, 10, split="Validation").startswith("Validation set: ")


def test_recipes():
    classic, fast = recipes.RECIPES["classic"], recipes.RECIPES["fast"]
    assert (classic.optimizer, classic.lr, classic.momentum, classic.batch_size) == (
        "sgd",
        0.01,
        0.5,
        64,
    )
    assert classic.dropout == 0.5 and classic.data_path == "loader"
    assert fast.epochs <= 3 and fast.data_path == "tensors"
    assert recipes.get_recipe("classic", lr=0.1, epochs=None).lr == 0.1
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_recipe("slow")
    opt, sched = recipes.make_optimizer(Net(), fast, steps_per_epoch=10)
    assert isinstance(opt, torch.optim.Adam) and sched.total_steps == 30


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv(devices.DEVICE_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert devices.pick_device() == torch.device(expected)
    assert devices.pick_device("cpu") == torch.device("cpu")


def test_pick_device_reads_the_environment(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the variable wins over CUDA
    monkeypatch.setenv(devices.DEVICE_ENV_VAR, "cpu")
    assert devices.pick_device() == torch.device("cpu")
    monkeypatch.delenv(devices.DEVICE_ENV_VAR)
    assert devices.pick_device() == torch.device("cuda")


def test_lenet_batches_are_padded(small):
    recipe = recipes.get_recipe("fast")
    train_batches, _, _ = train.make_batches(recipe, "lenet")
    x, _ = next(iter(train_batches))
    assert x.shape[1:] == (1, 32, 32)
    assert LeNet()(x[:2]).shape == (2, 10)


def test_dry_run_trains_one_batch_and_tests_one(capsys):
    run = train.train_model("net", "fast", dry_run=True, progress=False, device="cpu")
    (record,) = run.history
    assert len(record["step_losses"]) == 1
    assert run.test["n"] == recipes.RECIPES["fast"].test_batch_size
    assert capsys.readouterr().out.strip().startswith("Test set: ")


def test_train_model_scores_validation_per_epoch_and_test_once(monkeypatch, small):
    def tiny(n, *, batch_size, shuffle=False):
        return TensorBatches.from_dataset(
            small[1], indices=torch.arange(n), batch_size=batch_size, shuffle=shuffle
        )

    monkeypatch.setattr(
        train,
        "make_batches",
        lambda recipe, name, **kw: train.Batches(
            tiny(512, batch_size=256, shuffle=True),
            tiny(300, batch_size=100),
            tiny(700, batch_size=100),
        ),
    )
    scored = []
    real_evaluate = train.evaluate

    def spy(model, batches, **kwargs):
        scored.append(len(batches.targets))
        return real_evaluate(model, batches, **kwargs)

    monkeypatch.setattr(train, "evaluate", spy)
    run = train.train_model(
        "net", recipes.get_recipe("fast", epochs=2), progress=False, verbose=False, device="cpu"
    )
    assert scored == [300, 300, 700], "validation each epoch, the test set once at the end"
    assert run.test["n"] == 700
    assert set(run.history[0]) >= {"val_loss", "val_accuracy"}
    assert not any(k.startswith("test") for k in run.history[0])


def test_step_schedule_multiplies_by_gamma_each_epoch():
    recipe = recipes.get_recipe("classic", schedule="step", gamma=0.5)
    opt, sched = recipes.make_optimizer(Net(), recipe, steps_per_epoch=3)
    rates = []
    for _ in range(6):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.01] * 3 + [0.005] * 3)


def test_evaluate_on_nothing_says_so():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        train.evaluate(Net(), [], device="cpu")
    batch = [(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ValueError, match="nothing to evaluate"):
        train.evaluate(Net(), batch, device="cpu", max_batches=0)
