"""Bad input, round two: a run that diverges stops with one line, a run that learns nothing
says so, and a data-parallel run whose peer dies ends with one line instead of gloo's traceback.

The learnable problem here is tiny and synthetic (a bright block whose place is the digit, on
noise): the package's ``Net`` learns it in a few dozen steps with the example's SGD, so a
healthy run leaves chance level quickly and a broken one visibly does not.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mnist_dissected import cli, devices, errors, guards, process_group, recipes, train
from mnist_dissected.data import TensorBatches
from mnist_dissected.models import Net

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT_S = 90  # a loaded 2-core machine; a hang must fail, not block


def blocks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 28x28 images of noise with a bright 8x5 block whose place (one of ten) is the
    label: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 10
    images = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for k in range(10):
        row, col = divmod(k, 5)
        images[targets == k, :, 4 + 12 * row : 12 + 12 * row, 1 + 5 * col : 6 + 5 * col] += 2.0
    return images, targets


def tiny_fit(lr: float, *, n: int = 1600, seed: int = 1, **fit_kwargs):
    """The classic recipe (SGD, momentum 0.5) at ``lr``, dropout off, on ``n`` block images in
    batches of 16 (1,600: 100 steps, the number after which a run is judged)."""
    devices.seed_everything(seed)
    recipe = recipes.get_recipe("classic", lr=lr, dropout=0.0)
    batches = TensorBatches(*blocks(n, seed), batch_size=16, shuffle=True, seed=seed)
    val = TensorBatches(*blocks(200, seed + 100), batch_size=100)
    model = Net(dropout=0.0)
    optimizer, scheduler = recipes.make_optimizer(model, recipe, steps_per_epoch=len(batches))
    kwargs = {"progress": False, "verbose": False, **fit_kwargs}
    return train.fit(model, batches, val, optimizer, scheduler=scheduler, **kwargs)


def poisoned(steps: int, bad_step: int) -> tuple[list, list[int]]:
    """``steps`` batches of block images whose batch number ``bad_step`` (1-based) holds a NaN,
    and the list of batch indices drawn so far (filled as they are drawn)."""
    images, targets = blocks(16 * steps, 0)
    images[16 * (bad_step - 1)] = math.nan
    drawn: list[int] = []

    def gen():
        for i in range(steps):
            drawn.append(i)
            yield images[16 * i : 16 * (i + 1)], targets[16 * i : 16 * (i + 1)]

    return gen(), drawn


def sgd(lr: float = 0.01) -> tuple[Net, torch.optim.Optimizer]:
    model = Net(dropout=0.0)
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)


def never_evaluate(*args, **kwargs):
    raise AssertionError("validation ran on a model that had diverged")


# --------------------------------------------------------------------------- 1. divergence


def test_a_nan_loss_stops_training_at_its_step_on_the_cpu():
    torch.manual_seed(0)
    model, optimizer = sgd()
    batches, drawn = poisoned(20, bad_step=3)
    with pytest.raises(guards.TrainingDivergedError) as stopped:
        train.fit(model, batches, [], optimizer, evaluator=never_evaluate, progress=False)
    assert str(stopped.value) == (
        "the loss became nan at epoch 1, step 3 (learning rate 0.01): the training diverged "
        "and stopped; lower the learning rate (--lr)"
    )
    assert drawn == [0, 1, 2], "on the CPU it stops at the bad step, not after the epoch"
    assert isinstance(stopped.value, errors.MnistDissectedError), "the CLI's one line"
    assert train.TrainingDivergedError is guards.TrainingDivergedError


def test_under_ddps_hooks_every_rank_finishes_the_epoch_then_stops_before_validation():
    """Ranks must stop together: the check runs on the averaged losses, at the epoch's end."""
    torch.manual_seed(0)
    model, optimizer = sgd()
    batches, drawn = poisoned(6, bad_step=3)
    averaged = []

    def mean_over_ranks(losses):  # what process_group.mean_over_ranks returns in a world of 1
        averaged.append(list(losses))
        return list(losses)

    with pytest.raises(guards.TrainingDivergedError, match=r"at epoch 1, step 3 \("):
        train.fit(
            model,
            batches,
            [],
            optimizer,
            evaluator=never_evaluate,
            reduce_losses=mean_over_ranks,
            progress=False,
        )
    assert drawn == list(range(6)) and len(averaged) == 1


def test_on_an_accelerator_losses_are_read_only_where_the_loop_waits_anyway():
    """No read (a wait for the device) per step: at a log line, and at the epoch's end."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3.0)
    losses = [torch.tensor(v) for v in (2.0, 1.0, math.inf, 0.5, 0.4, 0.3)]
    watch = guards.LossWatch(optimizer, epoch=2, every_step=False)
    for n in range(1, 5):
        watch.step(losses[:n])  # the inf at step 3 is not looked at yet
    with pytest.raises(guards.TrainingDivergedError, match=r"became inf at epoch 2, step 3 "):
        watch.step(losses[:5], synced=True)  # a log line waited for the device
    quiet = guards.LossWatch(optimizer, epoch=2, every_step=False)
    for n in range(1, 7):
        quiet.step(losses[:n])
    with pytest.raises(guards.TrainingDivergedError, match=r"\(learning rate 3.0\)"):
        quiet.end([t.item() for t in losses])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_a_nan_stops_at_the_next_log_line_and_names_its_step():
    torch.manual_seed(0)
    model = Net(dropout=0.0).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches, drawn = poisoned(10, bad_step=3)
    on_gpu = ((x.cuda(), y.cuda()) for x, y in batches)
    with pytest.raises(guards.TrainingDivergedError, match=r"at epoch 1, step 3 \("):
        train.train_epoch(model, on_gpu, optimizer, progress=False, log_interval=4)
    assert drawn == [0, 1, 2, 3, 4], "read at the log line of step 5 (0-based 4), not each step"


def test_a_nan_validation_loss_stops_the_run_too():
    """The last step can break the weights after the last training loss was computed."""
    torch.manual_seed(0)
    model, optimizer = sgd(lr=0.5)
    images, targets = blocks(32, 0)
    with pytest.raises(guards.TrainingDivergedError) as stopped:
        train.fit(
            model,
            TensorBatches(images, targets, batch_size=16),
            [],
            optimizer,
            evaluator=lambda *args, **kwargs: (math.nan, 0.1),
            progress=False,
            verbose=False,
        )
    assert str(stopped.value).startswith(
        "the validation loss became nan after epoch 1 (learning rate 0.5): "
    )


def test_train_with_an_absurd_learning_rate_fails_in_one_line_and_saves_nothing(tmp_path, capsys):
    saved = tmp_path / "model.pt"
    argv = ["train", "--recipe", "fast", "--lr", "1e30", "--epochs", "1", "--batch-size", "1000"]
    status = cli.main([*argv, "--device", "cpu", "--save-model", str(saved)])
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.startswith("error: the loss became nan at epoch 1, step ") or err.startswith(
        "error: the loss became inf at epoch 1, step "
    ), err
    assert "(learning rate 1e+30): " in err and "lower the learning rate (--lr)" in err
    assert err.count("\n") == 1, "one line"
    assert not saved.exists() and list(tmp_path.iterdir()) == [], "nothing saved"


# --------------------------------------------------------------------------- 2. chance level


def chance_warnings(history_maker) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history_maker()
    return [w for w in caught if issubclass(w.category, guards.ChanceLevelWarning)]


def test_a_healthy_tiny_run_does_not_warn():
    history = []
    assert chance_warnings(lambda: history.extend(tiny_fit(0.01))) == []
    assert history[0]["val_accuracy"] > 0.5 and len(history[0]["step_losses"]) == 100


def test_a_run_that_never_leaves_chance_level_warns_and_names_the_likely_cause():
    (caught,) = chance_warnings(lambda: tiny_fit(1e-7))
    message = str(caught.message)
    assert message.startswith("after 100 steps (epoch 1) the model is still at chance level: ")
    assert "guessing: ln 10 = 2.30" in message and "validation accuracy " in message
    assert message.endswith(
        "It is not learning; the likely cause: the learning rate 1e-07 is far too small for "
        "SGD: raise it (--lr) to 0.01"
    ), message
    assert "\n" not in message


def test_the_examples_adadelta_rate_given_to_sgd_is_named():
    sgd_at_one = torch.optim.SGD(Net().parameters(), lr=1.0, momentum=0.5)
    assert guards.likely_cause(sgd_at_one) == (
        "the learning rate 1.0 is far too large for SGD (1.0 is the rate of today's example's "
        "Adadelta): lower it (--lr), e.g. to 0.01"
    )
    adam = torch.optim.Adam(Net().parameters(), lr=0.001)
    assert "is usual for Adam: check that the labels match the images" in guards.likely_cause(adam)
    schedule = torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=5.0, total_steps=10)
    assert schedule and guards.learning_rate(adam) == 5.0, "one-cycle's peak: what --lr gave"


def record(epoch: int, steps: int, loss: float, accuracy: float) -> dict:
    return {
        "epoch": epoch,
        "step_losses": [loss] * steps,
        "val_loss": loss,
        "val_accuracy": accuracy,
    }


@pytest.mark.parametrize(
    "epochs, warned_after",
    [
        ([(60, 2.3, 0.1)], None),  # 60 steps: too early to judge
        ([(60, 2.3, 0.1), (60, 2.3, 0.1), (60, 2.3, 0.1)], 2),  # judged once, at 120 steps
        ([(60, 1.0, 0.6), (60, 2.3, 0.1)], 2),
        ([(100, 2.3, 0.1), (100, 2.3, 0.1)], 1),
        ([(100, 2.3, 0.3)], None),  # the accuracy left chance
        ([(100, 1.5, 0.1)], None),  # the loss left chance
        ([(100, 1e4, 0.1)], 1),  # a huge (finite) loss is no better
        ([(100, 2.3, 0.1)], 1),
    ],
)
def test_the_criterion_is_judged_once_after_100_steps(epochs, warned_after):
    optimizer = torch.optim.SGD(Net().parameters(), lr=0.01)
    history: list[dict] = []
    warned = []
    for epoch, (steps, loss, accuracy) in enumerate(epochs, start=1):
        history.append(record(epoch, steps, loss, accuracy))
        if chance_warnings(lambda: guards.check_progress(history, optimizer=optimizer)):
            warned.append(epoch)
    assert warned == ([warned_after] if warned_after else [])


@pytest.mark.slow
def test_the_cli_shows_the_chance_warning_on_stderr(tmp_path):
    """Visible where a CLI user looks: stderr, beside the summary lines on stdout."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import sys\n"
        "from mnist_dissected import cli, train\n"
        "from mnist_dissected.data import TensorBatches\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_training_failures import blocks\n"
        "batches = lambda n, b: TensorBatches(*blocks(n, 1), batch_size=b)\n"
        "train.make_batches = lambda recipe, name, **kw: train.Batches(\n"
        "    batches(1600, 16), batches(200, 100), batches(200, 100))\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    args = ["--lr", "1e-7", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, str(script), "train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "ChanceLevelWarning: after 100 steps (epoch 1) the model is still at chance" in (
        done.stderr
    )
    assert "raise it (--lr) to 0.01" in done.stderr and "Test set: " in done.stdout


# --------------------------------------------------------------------------- 3. a peer dies

#: A worker of a 2-process world under torchrun's variables: tiny random data, the CLI's
#: ``train``; rank 1 SIGKILLs itself at its third training step (``die``), or both train at an
#: absurd rate (``nan``).
WORKER = """
import os, signal, sys
import torch
from mnist_dissected import cli, train
from mnist_dissected.data import TensorBatches

def random_batches(n, batch_size, shuffle=False):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 28, 28, generator=g)
    targets = torch.randint(0, 10, (n,), generator=g)
    return TensorBatches(images, targets, batch_size=batch_size, shuffle=shuffle, seed=1)

train.make_batches = lambda recipe, name, **kw: train.Batches(
    random_batches(512, 16, shuffle=True), random_batches(64, 32), random_batches(64, 32))
real_loss_function = train.loss_function

def dying_loss_function(model):
    loss, calls = real_loss_function(model), []
    def counted(*args, **kwargs):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(*args, **kwargs)
    return counted

if sys.argv[1] == "die":
    train.loss_function = dying_loss_function
lr = ["--lr", "1e30"] if sys.argv[1] == "nan" else []
args = ["train", "--recipe", "fast", "--epochs", "1", "--device", "cpu", *lr, *sys.argv[2:]]
sys.exit(cli.main(args))
"""


def start_world(tmp_path: Path, scenario: str, *args: str) -> list[subprocess.Popen]:
    """Two processes with the variables torchrun sets, on a free port of 127.0.0.1."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    world = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(process_group.free_port()),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "TORCHELASTIC_RUN_ID": "test",  # how the CLI knows it runs under torchrun
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "PYTHON_COLORS": "0",
    }
    return [
        subprocess.Popen(
            [sys.executable, str(script), scenario, *args],
            cwd=tmp_path,
            env={**os.environ, **world, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """Each process's status, stdout and stderr; a process still running after the timeout is
    killed and the test fails (nothing may be left running)."""
    results = []
    try:
        for p in processes:
            out, err = p.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail("a process of the world was still running: " + str([p.pid for p in processes]))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


@pytest.mark.slow
def test_when_a_peer_dies_mid_training_the_survivor_says_so_in_one_line(tmp_path):
    saved = tmp_path / "model.pt"
    (status, out, err), (dead, _, _) = finish(
        start_world(tmp_path, "die", "--save-model", str(saved))
    )
    assert dead == -9, "rank 1 killed itself"
    assert status == 1, err
    assert "Traceback" not in err and "[rank0]" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 of 2 went away during training (Connection "), err
    assert last.endswith(
        "by peer); the run stopped, nothing was saved: see rank 1's output for why it ended"
    ), last
    assert "Training net with the fast recipe on 2 processes" in out
    assert not saved.exists()


@pytest.mark.slow
def test_under_ddp_a_nan_loss_stops_every_rank_at_the_same_step(tmp_path):
    results = finish(start_world(tmp_path, "nan"))
    lines = []
    for status, out, err in results:
        assert status == 1, err
        assert "Traceback" not in err and "Saved" not in out, err
        (line,) = err.strip().splitlines()
        lines.append(line)
    assert lines[0] == lines[1], "both ranks saw the same averaged losses"
    assert lines[0].startswith("error: the loss became ") and "(learning rate 1e+30)" in lines[0]
