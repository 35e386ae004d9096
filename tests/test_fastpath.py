"""The fast path's options on a CPU: everything of the CUDA-graph path that is not CUDA (the
one-cycle table, the table-driven Adam, the fallbacks), torch.compile's fallback, and a check
that nothing in the fast recipe needs what Apple's MPS lacks (float64)."""

import pytest
import torch
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_dissected import fastpath
from mnist_dissected import train as T
from mnist_dissected.data import TensorBatches, load_mnist
from mnist_dissected.models import Net


@pytest.fixture(scope="module")
def batches():
    test = load_mnist(train=False)
    return TensorBatches.from_dataset(
        test,
        indices=torch.arange(1024),
        batch_size=128,
        shuffle=True,
        seed=0,
        channels_last=True,
    )


def test_onecycle_table_is_the_schedulers_own_sequence():
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=40)
    seen = []
    for _ in range(40):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step()
        sched.step()
    lrs, beta1s = fastpath.onecycle_table(0.01, 40)
    assert_close(lrs, [lr for lr, _ in seen])
    assert_close(beta1s, [b for _, b in seen])
    assert max(lrs) == pytest.approx(0.01) and min(beta1s) == pytest.approx(0.85)


@pytest.mark.slow
def test_table_driven_adam_trains_like_adam_with_onecycle(batches):
    """What the captured step computes, run eagerly: the eager recipe's weights, up to float32
    rounding (the table-driven Adam computes its bias corrections in float32 tensors, PyTorch's
    eager Adam in Python floats)."""
    recipe = T.get_recipe("fast", epochs=2)
    results = []
    for table_driven in (False, True):
        torch.manual_seed(0)
        net = Net(dropout=0.0).to(memory_format=torch.channels_last)
        batches.generator.manual_seed(0)
        opt, sched = T.make_optimizer(net, recipe, steps_per_epoch=len(batches))
        if table_driven:
            table = fastpath.onecycle_table(recipe.lr, recipe.epochs * len(batches))
            opt, sched = fastpath.TableAdam(net.parameters(), table), None
        for epoch in range(recipe.epochs):
            T.train_epoch(net, batches, opt, scheduler=sched, epoch=epoch, progress=False)
        results.append(net)
    for p, q in zip(results[0].parameters(), results[1].parameters(), strict=True):
        assert_close(p, q, rtol=0, atol=1e-3)


@pytest.mark.slow
def test_cuda_graph_falls_back_to_eager_with_a_message_off_cuda(capsys, monkeypatch, batches):
    assert "need an NVIDIA GPU" in fastpath.cuda_graph_unavailable(torch.device("cpu"))
    monkeypatch.setattr(
        T, "make_batches", lambda recipe, name, **kw: T.Batches(batches, batches, batches)
    )
    runs = []
    for graph in (False, True):
        batches.generator.manual_seed(0)
        runs.append(
            T.train_model(
                "net",
                T.get_recipe("fast", epochs=1, cuda_graph=graph),
                device="cpu",
                progress=False,
                verbose=False,
            )
        )
    assert (
        "cuda_graph: CUDA graphs need an NVIDIA GPU (training on cpu); training eagerly"
        in capsys.readouterr().err
    )
    assert torch.equal(runs[0].model.fc2.weight, runs[1].model.fc2.weight), "same numbers"


def test_compile_without_a_compiler_says_why_and_stays_eager(monkeypatch):
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: None)
    net = Net()
    model, reason = fastpath.compile_model(
        net, torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.nn.functional.nll_loss
    )
    assert model is net and "no C++ compiler" in reason
    assert fastpath.compile_unavailable(torch.device("mps")).startswith("torch.compile's MPS")


@pytest.mark.slow
def test_compiled_model_gives_the_eager_numbers():
    if reason := fastpath.compile_unavailable(torch.device("cpu")):
        pytest.skip(reason)
    torch.manual_seed(0)
    net = Net(dropout=0.0).eval()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    compiled, reason = fastpath.compile_model(net, x, y, torch.nn.functional.nll_loss)
    assert reason is None and compiled is not net
    assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in net.parameters()), "the trial left no gradients"


class DtypeRecorder(TorchDispatchMode):
    """Every aten operation that runs, and the dtypes of the tensors it makes."""

    def __init__(self):
        super().__init__()
        self.ops, self.dtypes = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


def test_the_fast_path_needs_nothing_mps_lacks(batches):
    """Apple's MPS has no float64. Run a fast-recipe step and an evaluation with every
    operation recorded (the device itself cannot be faked here): no float64 tensor appears."""
    net = Net(dropout=0.0).to(memory_format=torch.channels_last)
    opt, sched = T.make_optimizer(net, T.RECIPES["fast"], steps_per_epoch=len(batches))
    with DtypeRecorder() as seen:
        T.train_epoch(net, batches, opt, scheduler=sched, progress=False, max_batches=2)
        T.evaluate(net, batches, max_batches=2)
    assert torch.float64 not in seen.dtypes, seen.dtypes
    assert {"convolution", "max_pool2d_with_indices", "_log_softmax"} <= seen.ops


@pytest.mark.slow
def test_cuda_graph_off_cuda_trains_on_the_eager_recipes_batches():
    """Falling back to eager means the eager recipe's numbers: no batch dropped for a capture
    that does not happen."""
    eager = T.make_batches(T.get_recipe("fast"), device="cpu")
    asked = T.make_batches(T.get_recipe("fast", cuda_graph=True), device="cpu")
    assert len(asked.train) == len(eager.train) == 215  # 55,000 / 256, the last one short
    assert T.cuda_graph_reason(T.get_recipe("fast"), torch.device("cpu")) is not None
