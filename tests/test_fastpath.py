"""The fast path's options on a CPU: everything of the CUDA-graph path that is not CUDA (the
one-cycle table, the table-driven Adam, the fallbacks), torch.compile's fallback, and a check
that nothing in the fast recipe needs what Apple's MPS lacks (float64)."""

import copy

import pytest
import torch
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_dissected import fastpath, recipes, train
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


def test_table_driven_adam_steps_like_adam_with_onecycle():
    """What the captured step computes, run eagerly: each ``TableAdam.step()`` moves the
    parameters as ``Adam.step(); OneCycleLR.step()`` does from the same gradients, up to
    float32 rounding, over a whole (short) schedule.

    The gradients are drawn in advance, not computed from the parameters: a rounding
    difference cannot steer the two runs apart (in training it would, and then two kernels'
    runs drift apart by more than rounding after a few hundred steps, differently on every
    CPU). What may differ is rounding: the table holds lr, beta1 and beta2 as float32 tensors
    (each off by at most eps/2 of itself) where PyTorch's eager Adam uses Python floats, and
    Adam uses them through 1 - beta and 1 - beta**t, which magnify that error by up to
    beta / (1 - beta) < 1000 (beta2 = 0.999). So each step's update may differ by 1000 eps of
    the largest update of that tensor, and each parameter by one rounding (eps of its value)
    per step. A rate or beta of another step, or another beta2, is off by far more."""
    total = 12  # warm-up, peak, annealing: the rate and beta1 change a lot from step to step
    torch.manual_seed(0)
    eager = Net(dropout=0.0)
    tabled = copy.deepcopy(eager)
    opt = torch.optim.Adam(eager.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=total)
    table = fastpath.TableAdam(tabled.parameters(), fastpath.onecycle_table(0.01, total))
    eps = torch.finfo(torch.float32).eps
    allowed = {name: torch.zeros_like(p) for name, p in eager.named_parameters()}
    gradients = torch.Generator().manual_seed(1)
    for step in range(1, total + 1):
        before = {name: p.detach().clone() for name, p in eager.named_parameters()}
        for p, q in zip(eager.parameters(), tabled.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=gradients)
            q.grad = p.grad.clone()
        opt.step()
        sched.step()
        table.step()
        for (name, p), q in zip(eager.named_parameters(), tabled.parameters(), strict=True):
            p, q = p.detach(), q.detach()
            allowed[name] += 1000 * eps * (p - before[name]).abs().max() + eps * p.abs()
            ratio = ((q - p).abs() / allowed[name]).flatten()
            worst = ratio.argmax()
            assert ratio[worst].item() <= 1, (
                f"step {step}, {name}: differs by {(q - p).abs().flatten()[worst]:.3g} "
                f"where float32 rounding allows {allowed[name].flatten()[worst]:.3g}"
            )
        if step < total:  # the next step's rate and beta1: the scheduler's, in float32
            group = opt.param_groups[0]
            assert table.lr.item() == torch.tensor(group["lr"]).item(), f"lr after step {step}"
            beta1 = torch.tensor(group["betas"][0]).item()
            assert table.beta1.item() == beta1, f"beta1 after step {step}"
    assert table.lr.item() == table.lrs[-1].item(), "past the end: the last rate"


@pytest.mark.slow
def test_cuda_graph_falls_back_to_eager_with_a_message_off_cuda(capsys, monkeypatch, batches):
    assert "need an NVIDIA GPU" in fastpath.cuda_graph_unavailable(torch.device("cpu"))
    monkeypatch.setattr(
        train, "make_batches", lambda recipe, name, **kw: train.Batches(batches, batches, batches)
    )
    runs = []
    for graph in (False, True):
        batches.generator.manual_seed(0)
        runs.append(
            train.train_model(
                "net",
                recipes.get_recipe("fast", epochs=1, cuda_graph=graph),
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
    opt, sched = recipes.make_optimizer(net, recipes.RECIPES["fast"], steps_per_epoch=len(batches))
    with DtypeRecorder() as seen:
        train.train_epoch(net, batches, opt, scheduler=sched, progress=False, max_batches=2)
        train.evaluate(net, batches, max_batches=2)
    assert torch.float64 not in seen.dtypes, seen.dtypes
    assert {"convolution", "max_pool2d_with_indices", "_log_softmax"} <= seen.ops


@pytest.mark.slow
def test_cuda_graph_off_cuda_trains_on_the_eager_recipes_batches():
    """Falling back to eager means the eager recipe's numbers: no batch dropped for a capture
    that does not happen."""
    reason = train.cuda_graph_reason(recipes.get_recipe("fast"), torch.device("cpu"))
    assert reason == "CUDA graphs need an NVIDIA GPU (training on cpu)"
    eager = train.make_batches(recipes.get_recipe("fast"), device="cpu")
    asked = train.make_batches(recipes.get_recipe("fast", cuda_graph=True), device="cpu")
    assert len(asked.train) == len(eager.train) == 215  # 55,000 / 256, the last one short
