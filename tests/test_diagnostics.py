"""Part 5 (diagnostics): the hooks record what a pass by hand computes and leave nothing behind;
the dead-ReLU share, the update ratio and the default initialisation are what they claim; the
cache is keyed by every setting and survives a corrupt file."""

import inspect
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_dissected import diagnostics as D
from mnist_dissected import results_cache as R
from mnist_dissected.data import TensorBatches
from mnist_dissected.models import Net


def tiny_batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(dropout=0.0)


def hooks_of(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_the_recorders_activations_are_a_forward_pass_by_hand():
    model, (x, _) = net(), tiny_batch()
    with D.Recorder(model) as rec:
        model(x)
    conv1 = model.conv1(x)
    conv2 = model.conv2(F.relu(F.max_pool2d(conv1, 2)))
    fc1 = model.fc1(torch.flatten(F.relu(F.max_pool2d(conv2, 2)), 1))
    fc2 = model.fc2(F.relu(fc1))
    for name, by_hand in {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2}.items():
        torch.testing.assert_close(rec.activations[name], by_hand.detach(), rtol=0, atol=0)


def test_the_recorders_gradients_are_autograds():
    model, (x, y) = net(), tiny_batch()
    with D.Recorder(model) as rec:
        loss = F.nll_loss(model(x), y)
        loss.backward()
    # the same pass again, without hooks, asking autograd for the gradient of each output
    outputs = {}
    handles = [
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, o)
        )
        for name in D.LAYERS
    ]
    loss2 = F.nll_loss(model(x), y)
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(loss2, [outputs[name] for name in D.LAYERS])
    for name, g in zip(D.LAYERS, grads, strict=True):
        torch.testing.assert_close(rec.gradients[name], g)
    assert not rec.gradients["conv1"].requires_grad


def test_the_hooks_are_removed_afterwards_even_after_an_exception():
    model = net()
    before = hooks_of(model)
    with D.Recorder(model):
        assert hooks_of(model) == before + len(D.LAYERS)
    assert hooks_of(model) == before
    with pytest.raises(ValueError), D.Recorder(model):
        model(torch.zeros(2, 28, 28))  # Net refuses a batch without its channel dimension
    assert hooks_of(model) == before
    rec = D.Recorder(model)
    rec.remove()
    rec.remove()  # twice: harmless
    assert hooks_of(model) == before


def test_no_graph_means_no_gradient_recorded():
    model, (x, _) = net(), tiny_batch()
    with D.Recorder(model) as rec, torch.no_grad():
        model(x)
    assert set(rec.activations) == set(D.LAYERS) and rec.gradients == {}


def test_the_dead_relu_share_on_a_hand_made_tensor():
    # 3 images x 4 units: unit 0 is negative for all, unit 1 is zero for all (dead too),
    # unit 2 is positive once, unit 3 always
    relu_in = torch.tensor([[-1.0, 0.0, -2.0, 1.0], [-3.0, 0.0, 0.5, 2.0], [-0.1, 0.0, -1.0, 3.0]])
    assert D.dead_relu_share(relu_in) == 0.5
    assert D.dead_relu_share(F.relu(relu_in)) == 0.5  # the ReLU's output says the same
    maps = torch.ones(2, 2, 3, 3)
    maps[:, 1, 0, :] = -1  # channel 1, top row: 3 of 18 units dead
    maps[0, 1, 0, 0] = 1  # ... but one of them fires for image 0
    assert D.dead_relu_share(maps) == pytest.approx(2 / 18)


def test_relu_input_pools_the_convolutions_as_net_does():
    a = torch.randn(2, 10, 24, 24)
    torch.testing.assert_close(D.relu_input("conv1", a), F.max_pool2d(a, 2))
    b = torch.randn(2, 50)
    assert D.relu_input("fc1", b) is b


def test_the_update_ratio_of_one_sgd_step_by_hand():
    model, (x, y) = net(), tiny_batch()
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    F.nll_loss(model(x), y).backward()
    before = D.weights_of(model)
    by_hand = {
        name: (lr * getattr(model, name).weight.grad.norm() / before[name].norm()).item()
        for name in D.LAYERS
    }
    opt.step()
    ratios = D.update_ratios(before, model)
    assert ratios == pytest.approx(by_hand, rel=1e-5)
    assert all(0 < r < 1 for r in ratios.values())


def test_the_default_init_is_kaiming_uniform_with_a_sqrt5():
    fresh = net(seed=3)
    by_hand = net(seed=99)
    torch.manual_seed(3)
    D.default_init_by_hand(by_hand)
    for (name, p), q in zip(fresh.named_parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # and that is a uniform draw within 1 / sqrt(fan_in)
    assert fresh.fc1.weight.abs().max() <= 1 / math.sqrt(320)
    assert fresh.conv2.weight.abs().max() <= 1 / math.sqrt(10 * 5 * 5)


def test_scaled_net_scales_every_parameter_of_the_seeds_default():
    default, small = D.scaled_net(1.0, seed=4), D.scaled_net(0.01, seed=4)
    for p, q in zip(default.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(q, p * 0.01)
    assert default.dropout == 0.0


def test_histogram_counts_every_value():
    h = D.histogram(torch.tensor([0.0, 1.0, 1.0, 3.0]), bins=3)
    assert h["edges"] == [0.0, 1.0, 2.0, 3.0]
    assert h["counts"] == [1.0, 2.0, 1.0]
    one = D.histogram(torch.full((5,), 2.0), bins=2)
    assert sum(one["counts"]) == 5


def fake_subset(size, *, batch_size, seed, root=None):
    """Random images instead of MNIST: the cache's tests need no data files."""
    g = torch.Generator().manual_seed(100)
    images = torch.randn(size, 1, 28, 28, generator=g)
    targets = torch.randint(0, 10, (size,), generator=g)
    return TensorBatches(images, targets, batch_size=batch_size, shuffle=True, seed=seed)


SMALL = dict(seeds=(1,), scales={"default": 1.0, "large": 10.0}, steps=3, subset=16, batch_size=8)


def test_a_run_records_every_step_and_its_histograms(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "training_subset", fake_subset)
    runs = D.diagnose_inits(root=tmp_path, **SMALL)
    assert sorted(runs) == ["default/seed1", "large/seed1"]
    run = runs["default/seed1"]
    assert len(run["loss"]) == 3
    assert all(len(run["ratio"][n]) == 3 for n in D.LAYERS)
    assert all(len(run["dead"][n]) == 3 for n in D.RELU_POOL)
    assert sorted(run["hist"]) == ["0", "2"]  # the first step and the last
    h = run["hist"]["0"]["conv1"]["activation"]
    assert sum(h["counts"]) == 8 * 10 * 24 * 24
    assert runs["large/seed1"]["loss"][0] > run["loss"][0]


def test_the_cache_is_read_back_and_keyed_by_every_setting(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "training_subset", fake_subset)
    first = D.diagnose_inits(root=tmp_path, **SMALL)
    files = list((tmp_path / "checkpoints").glob("experiment_diagnostics_*.json"))
    assert len(files) == 1

    def fail(*a, **k):
        raise AssertionError("recorded again instead of read from the cache")

    monkeypatch.setattr(D, "diagnose_run", fail)
    assert D.diagnose_inits(root=tmp_path, **SMALL) == first
    base = R.experiment_path("diagnostics", {"a": 1})
    monkeypatch.setattr(R.torch, "__version__", "0.0-other")
    assert R.experiment_path("diagnostics", {"a": 1}) != base, "the torch version is in the key"
    monkeypatch.undo()
    monkeypatch.setattr(R, "TRAINING_STREAM", R.TRAINING_STREAM + 1)
    assert R.experiment_path("diagnostics", {"a": 1}) != base, "the stream is in the key"
    monkeypatch.undo()
    # diagnose_inits keys its file by the value of every one of its settings (all but root)
    changed = dict(
        seeds=(2,),
        scales={"default": 0.5},
        steps=2,
        subset=24,
        batch_size=4,
        lr=0.02,
        momentum=0.5,
        bins=20,
        histogram_steps=(1,),
    )
    assert set(changed) == set(inspect.signature(D.diagnose_inits).parameters) - {"root"}
    monkeypatch.setattr(D, "training_subset", fake_subset)
    for field, value in changed.items():
        D.diagnose_inits(root=tmp_path, **{**SMALL, field: value})
    written = list((tmp_path / "checkpoints").glob("experiment_diagnostics_*.json"))
    assert len(written) == 1 + len(changed), "each setting changed: a file of its own"


def test_a_corrupt_cache_file_is_recorded_again(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(D, "training_subset", fake_subset)
    first = D.diagnose_inits(root=tmp_path, **SMALL)
    (path,) = (tmp_path / "checkpoints").glob("experiment_diagnostics_*.json")
    for bad in ("{not json", json.dumps({"settings": "other", "runs": {}}), ""):
        path.write_text(bad)
        assert D.diagnose_inits(root=tmp_path, **SMALL) == first  # deterministic on the CPU
        assert "computing it again" in capsys.readouterr().err
        assert json.loads(path.read_text())["result"] == first
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "no lock or temp left"
