"""The example itself: its Net's weights, its test line, its files and its command lines, in
both versions (pytorch/examples ``mnist/main.py`` at d8dd8ca^, the one the series dissects, and
today's, 77f55b9), against the package."""

import functools
import hashlib
import json
import os
import runpy
import shlex
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from mnist_dissected import cli, example_compat, example_run, models
from mnist_dissected.checkpoint import load_checkpoint, save_checkpoint
from mnist_dissected.data import load_mnist, make_loader, mnist_transform
from mnist_dissected.errors import UsageError
from mnist_dissected.recipes import RECIPES, get_recipe, make_optimizer
from mnist_dissected.results_cache import CACHE_FORMAT, experiment_key, experiment_path
from mnist_dissected.train import Trained, evaluate, train_model
from tests.test_models import NET_PARAMETERS

# --------------------------------------------------------------------------- the example's code


@functools.cache
def upstream(version: str) -> dict:
    """The example's ``main.py`` of ``version`` (shipped verbatim in ``mnist_dissected/upstream``),
    run as a module, not as ``__main__``: its ``Net``, ``train``, ``test`` and ``main``,
    untouched."""
    return runpy.run_path(str(example_run.EXAMPLE_SCRIPTS[version]), run_name="upstream")


def ExampleNet() -> nn.Module:
    """A fresh ``Net`` of the example at d8dd8ca^, from its own script."""
    return upstream("d8dd8ca^")["Net"]()


def example_test(*args) -> None:
    """The example's ``test(args, model, device, test_loader)`` at d8dd8ca^, from its script."""
    upstream("d8dd8ca^")["test"](*args)


def shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def test_the_examples_net_has_exactly_the_keys_and_shapes_of_models_net():
    assert shapes(ExampleNet()) == NET_PARAMETERS == shapes(models.Net())


def test_the_examples_weights_load_into_models_net_and_give_its_outputs(tmp_path):
    torch.manual_seed(0)
    theirs = ExampleNet().eval()
    path = tmp_path / "mnist_cnn.pt"
    torch.save(theirs.state_dict(), path)  # what the example's --save-model does (d8dd8ca on)
    ours, meta = load_checkpoint(path)
    assert type(ours) is models.Net and meta["format"] == "bare state_dict"
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize(
    "loss, correct, n", [(0.0254, 9914, 10000), (2.3054, 767, 10000), (0.05, 9850, 10000)]
)
def test_the_examples_test_line_has_whole_percents(loss, correct, n):
    upstream = "\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n"  # d8dd8ca^ and today
    line = example_compat.example_test_line(loss, correct, n)
    assert line == upstream.format(loss, correct, n, 100.0 * correct / n)


def test_the_readmes_line_in_the_examples_format():
    assert example_compat.example_test_line(0.0254, 9914, 10000) == (
        "\nTest set: Average loss: 0.0254, Accuracy: 9914/10000 (99%)\n"
    )


# --------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def untrained_net_files(tmp_path_factory):
    """A fixed-seed untrained Net, as the package's checkpoint and as a bare state_dict."""
    folder = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    net = models.Net()
    torch.save(net.state_dict(), folder / "mnist_cnn.pt")
    return net, save_checkpoint(folder / "net.pt", net), folder / "mnist_cnn.pt"


@pytest.mark.parametrize("which", [1, 2], ids=["checkpoint", "bare"])
def test_score_prints_what_the_examples_test_prints(untrained_net_files, which, capsys):
    """The format and the count: byte for byte the example's ``test()`` on the same weights,
    and train.evaluate's numbers."""
    net = untrained_net_files[0]
    test_loader = make_loader(load_mnist(train=False, transform=mnist_transform()), 1000)
    theirs = ExampleNet()
    theirs.load_state_dict(net.state_dict())
    example_test(None, theirs, "cpu", test_loader)
    expected = capsys.readouterr().out
    assert cli.main(["score", str(untrained_net_files[which]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out == expected, "byte for byte, blank lines included"
    loss, accuracy = evaluate(net, test_loader, device="cpu")
    correct = round(accuracy * 10_000)
    assert out == (
        f"\nTest set: Average loss: {loss:.4f}, Accuracy: {correct}/10000 "
        f"({round(100 * correct / 10_000)}%)\n\n"
    )


def test_score_pads_for_lenet_and_takes_the_test_batch_size(tmp_path, capsys):
    torch.manual_seed(0)
    lenet = models.LeNet()
    path = tmp_path / "lenet.pt"
    torch.save(lenet.state_dict(), path)
    assert cli.main(["score", str(path), "--device", "cpu", "--test-batch-size", "4096"]) == 0
    test_set = load_mnist(train=False, transform=mnist_transform(pad=2))
    loss, accuracy = evaluate(lenet, make_loader(test_set, 1000), device="cpu")
    assert (
        capsys.readouterr().out
        == example_compat.example_test_line(loss, round(accuracy * 10_000), 10_000) + "\n"
    )


# --------------------------------------------------------------------------- export


def test_export_writes_the_bare_state_dict_the_examples_code_loads(untrained_net_files, capsys):
    net, checkpoint_path, _ = untrained_net_files
    out = checkpoint_path.with_name("exported.pt")
    assert cli.main(["export", str(checkpoint_path), str(out)]) == 0
    assert f"Wrote {out}: the bare state_dict of a Net" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)  # the example's code, as it loads it
    ours, theirs = models.Net(), ExampleNet()
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    for name, tensor in net.state_dict().items():
        assert torch.equal(state[name], tensor) and torch.equal(ours.state_dict()[name], tensor)
    assert cli.main(["export", str(out), str(out.with_name("again.pt"))]) == 0, "bare to bare"


@pytest.mark.parametrize("how", ["same-name", "symlink", "hard-link"])
def test_export_never_writes_over_the_checkpoint_it_reads(tmp_path, capsys, how):
    source = save_checkpoint(tmp_path / "net.pt", models.Net())
    before = source.read_bytes()
    out = {"same-name": source, "symlink": tmp_path / "out.pt", "hard-link": tmp_path / "h.pt"}
    if how == "symlink":
        out[how].symlink_to(source)
    elif how == "hard-link":
        os.link(source, out[how])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", str(source), str(out[how])])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            f"OUT and CHECKPOINT are the same file ({source}), and export never writes over what "
            f"it reads; give OUT another name, e.g. {tmp_path / 'net_state_dict.pt'}"
        )
    )
    assert source.read_bytes() == before


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["score", "missing.pt"], "there is no file missing.pt; give a checkpoint"),
        (["score", "."], ". is a folder; give a checkpoint file"),
        (["export", "missing.pt", "out.pt"], "there is no file missing.pt"),
        (["export", "net.pt", ""], "OUT was given an empty path"),
        (["export", "net.pt", "."], ". is a folder; give a file name"),
        (["score", "net.pt", "--test-batch-size", "0"], "must be at least 1"),
        (["score", "net.pt", "--device", "banana"], "is not a device"),
    ],
)
def test_score_and_export_mistakes_are_usage_errors(tmp_path, monkeypatch, capsys, argv, complaint):
    monkeypatch.chdir(tmp_path)
    save_checkpoint("net.pt", models.Net())
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and complaint in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["net.pt"], "nothing written"


def test_a_file_of_another_network_is_one_line_and_exit_status_1(tmp_path, capsys):
    path = tmp_path / "mnist_cnn.pt"
    torch.save({**models.Net().state_dict(), "fc2.weight": torch.zeros(11, 50)}, path)
    assert cli.main(["score", str(path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {path} is a bare state_dict, but not of a Net, LeNet or TodayNet: "
    )
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- command lines

#: Each version's flags (argparse at d8dd8ca^ and at 77f55b9), with the default written out;
#: ``None``: a flag without a value.
FLAGS = {
    "d8dd8ca^": {
        "--batch-size": "64",
        "--test-batch-size": "1000",
        "--epochs": "10",
        "--lr": "0.01",
        "--momentum": "0.5",
        "--no-cuda": None,
        "--seed": "1",
        "--log-interval": "10",
    },
    "77f55b9": {
        "--batch-size": "64",
        "--test-batch-size": "1000",
        "--epochs": "14",
        "--lr": "1.0",
        "--gamma": "0.7",
        "--no-accel": None,
        "--dry-run": None,
        "--seed": "1",
        "--log-interval": "10",
        "--save-model": None,
    },
}
#: What the error says to type for today's --lr 1.0 (example_compat.check_sgd_rate).
ADADELTA = (
    "--lr 1.0 is a rate for today's example's Adadelta; the classic recipe trains with SGD "
    "(momentum 0.5), which learns little or nothing at 0.5 and above: for today's example, "
    "network and Adadelta, use --model today --recipe today; else --lr 0.01 (and --gamma "
    "0.7 for today's StepLR), or add --momentum 0.5 to train SGD at --lr 1.0 anyway"
)
#: Today's example's recipe and network, as the error above says to type them.
TODAY = {"recipe": "today", "model": "today"}
STEP = {"schedule": "step", "gamma": 0.7}
#: (where it comes from, the command line after ``train``, what it trains: the classic
#: recipe's fields it changes and the run's options, or the usage error it gets). On a machine
#: with CUDA, so that the device flags show.
COMMAND_LINES = [
    ("README, both versions", "", {}),
    ("CI from 79d71b8 (2019)", "--epochs 1", {"epochs": 1}),
    ("CI at 77f55b9", "--epochs 1 --dry-run", {"epochs": 1, "dry_run": True}),
    ("d8dd8ca^", "--batch-size 64", {}),
    ("d8dd8ca^", "--test-batch-size 1000", {}),
    ("d8dd8ca^", "--epochs 10", {}),
    ("d8dd8ca^", "--lr 0.01", {}),
    ("d8dd8ca^", "--momentum 0.5", {}),
    ("d8dd8ca^", "--no-cuda", {"device": "cpu"}),
    ("d8dd8ca^", "--seed 1", {}),
    ("d8dd8ca^", "--log-interval 10", {}),
    (
        "d8dd8ca^, every default",
        "--batch-size 64 --test-batch-size 1000 --epochs 10 --lr 0.01 --momentum 0.5 --seed 1 "
        "--log-interval 10",
        {},
    ),
    ("d8dd8ca^, a rate of its SGD", "--lr 0.05 --momentum 0.9", {"lr": 0.05, "momentum": 0.9}),
    ("d8dd8ca (Dec 2018)", "--save-model", {"saved": "mnist_cnn.pt"}),
    ("77f55b9", "--batch-size 64", {}),
    ("77f55b9", "--test-batch-size 1000", {}),
    ("77f55b9", "--epochs 14", {"epochs": 14}),
    ("77f55b9", "--lr 1.0", ADADELTA),
    ("77f55b9", "--gamma 0.7", STEP),
    ("77f55b9", "--no-accel", {"device": "cpu"}),
    ("77f55b9", "--dry-run", {"dry_run": True}),
    ("77f55b9", "--seed 1", {}),
    ("77f55b9", "--log-interval 10", {}),
    ("77f55b9", "--save-model", {"saved": "mnist_cnn.pt"}),
    ("77f55b9", "--save-model --epochs 1", {"saved": "mnist_cnn.pt", "epochs": 1}),
    (
        "77f55b9, every default",
        "--batch-size 64 --test-batch-size 1000 --epochs 14 --lr 1.0 --gamma 0.7 --seed 1 "
        "--log-interval 10",
        ADADELTA,
    ),
    (
        "77f55b9, every default, --lr as the error says",
        "--batch-size 64 --test-batch-size 1000 --epochs 14 --lr 0.01 --gamma 0.7 --seed 1 "
        "--log-interval 10",
        {"epochs": 14, **STEP},
    ),
    ("77f55b9, a smaller Adadelta rate", "--lr 0.5 --gamma 0.7", ADADELTA.replace("1.0", "0.5")),
    ("77f55b9, as the error says", "--model today --recipe today", TODAY),
    (
        "77f55b9, every default, as the error says",
        "--model today --recipe today --batch-size 64 --test-batch-size 1000 --epochs 14 "
        "--lr 1.0 --gamma 0.7 --seed 1 --log-interval 10",
        TODAY,
    ),
    (
        "CI at 77f55b9, as the error says",
        "--model today --recipe today --epochs 1 --dry-run",
        {**TODAY, "epochs": 1, "dry_run": True},
    ),
    ("d8dd8ca^, exactly", "--recipe example", {"recipe": "example"}),
    (
        "d8dd8ca^, exactly, its CI",
        "--recipe example --epochs 1",
        {"recipe": "example", "epochs": 1},
    ),
    ("f82f562..65722fe (2022-2025)", "--no-mps", {}),
    ("f82f562..65722fe (2022-2025)", "--no-cuda --no-mps", {"device": "cpu"}),
    ("the rule's edge: a sensible SGD rate", "--lr 0.1 --gamma 0.7", {"lr": 0.1, **STEP}),
    ("the rule's edge", "--lr 0.49", {"lr": 0.49}),
    ("the rule's edge", "--lr 0.5", ADADELTA.replace("1.0", "0.5")),
    ("the rule's edge: SGD asked for", "--lr 1.0 --momentum 0.5", {"lr": 1.0}),
    ("the rule's edge: SGD asked for", "--lr 1.0 --momentum 0", {"lr": 1.0, "momentum": 0.0}),
]
RUN_OPTIONS = {"device": "cuda", "dry_run": False, "saved": None}  # the rest: recipe fields


def what_it_trains(argv: list[str], monkeypatch) -> dict:
    """``train ARGV`` through ``cli.main`` with training and saving replaced by records: the
    recipe it would train and the run's options."""
    seen = {"saved": None}

    def train_model(model, recipe, **kwargs):
        seen.update(kwargs, model=model, recipe=recipe)
        return Trained(models.Net(), [], recipe, {})

    monkeypatch.setattr("mnist_dissected.train.train_model", train_model)
    monkeypatch.setattr(
        "mnist_dissected.checkpoint.save_checkpoint",
        lambda path, *a, **k: seen.update(saved=str(path)) or Path(path),
    )
    assert cli.main(["train", *argv]) == 0
    return seen


@pytest.mark.parametrize(
    "source, command_line, outcome", COMMAND_LINES, ids=[f"{s}: {c}" for s, c, _ in COMMAND_LINES]
)
def test_a_command_line_of_either_version_does_what_it_did_there_or_says_what_to_type(
    source, command_line, outcome, monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNIST_DISSECTED_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    argv = shlex.split(command_line)
    if isinstance(outcome, str):
        monkeypatch.setattr("mnist_dissected.train.train_model", lambda *a, **k: pytest.fail())
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == f"python -m mnist_dissected train: error: {outcome}"
        return
    seen = what_it_trains(argv, monkeypatch)
    options = {**RUN_OPTIONS, **{k: v for k, v in outcome.items() if k in RUN_OPTIONS}}
    fields = {k: v for k, v in outcome.items() if k not in RUN_OPTIONS}
    recipe, model = fields.pop("recipe", "classic"), fields.pop("model", "net")
    assert seen["recipe"] == get_recipe(recipe, **fields) and seen["model"] == model
    assert seen["device"] == torch.device(options["device"])
    assert (seen["dry_run"], seen["saved"], seen["seed"]) == (
        options["dry_run"],
        options["saved"],
        1,
    )
    assert (seen["log_interval"] or seen["recipe"].log_interval) == 10


def test_the_table_covers_every_flag_of_both_versions_with_its_default():
    lines = {c for _, c, _ in COMMAND_LINES}
    for version, flags in FLAGS.items():
        for flag, default in flags.items():
            assert " ".join(filter(None, (flag, default))) in lines, (version, flag)
    assert RECIPES["classic"] == get_recipe(
        "classic", batch_size=64, test_batch_size=1000, epochs=10, lr=0.01, momentum=0.5
    ), "the classic recipe is d8dd8ca^'s defaults"


# --------------------------------------------------------------------------- the example's recipe


def small(dataset, n: int):
    """``dataset`` (torchvision's ``MNIST``) cut to its first ``n`` images: the same files and
    transform, fewer images, still an ``MNIST`` (the example's recipe reads its ``data``)."""
    dataset.data, dataset.targets = dataset.data[:n], dataset.targets[:n]
    return dataset


def test_the_example_recipe_prints_the_examples_lines_over_epochs(monkeypatch, capsys):
    """The example's own ``main()`` and the ``example`` recipe, both on the first 6,400 training
    and 2,000 test images, three epochs: every line alike, so the random draws come in the same
    order across epochs (the shuffle of each epoch, dropout's, the test set's shuffle)."""
    example = upstream("d8dd8ca^")

    def mnist(root, train=True, download=False, transform=None):
        full = load_mnist(train=train, transform=transform)
        return small(full, 6400 if train else 2000)

    # its own name for torchvision.datasets, replaced in its globals only
    monkeypatch.setitem(example["main"].__globals__, "datasets", SimpleNamespace(MNIST=mnist))
    monkeypatch.setattr("sys.argv", ["main.py", "--epochs", "3", "--no-cuda"])
    example["main"]()
    theirs = capsys.readouterr().out

    def load_small(*, train, transform, **where):
        return small(load_mnist(train=train, transform=transform, **where), 6400 if train else 2000)

    monkeypatch.setattr("mnist_dissected.train.load_mnist", load_small)
    run = train_model("net", "example", epochs=3, device="cpu", progress=False)
    ours = capsys.readouterr().out
    assert ours.count("Train Epoch: 3 [") == 10 and ours.count("Test set:") == 3
    assert ours == theirs, "line for line, loss for loss"
    assert run.test["n"] == 2000 and len(run.history) == 3


@pytest.mark.slow
@pytest.mark.newest_only  # two epochs of training; the 3-epoch test above runs at the floors
def test_the_example_recipe_reproduces_the_examples_own_run(capsys):
    """The example's script itself, untouched, as a reader runs it (``--epochs 1 --no-cuda``,
    all of MNIST), against ``train --recipe example``, trained here and now: the same 95 lines.
    The script's transcript is cached (as in Part 4's companion): on a fresh machine this call
    runs it; after, it reads what the script printed on this machine, with this very key."""
    # The command first: the script's run may be under way in the companion beside this test
    # (one run, under a lock), and the command trains meanwhile instead of waiting.
    assert cli.main(["train", "--recipe", "example", "--epochs", "1", "--device", "cpu"]) == 0
    ours = capsys.readouterr().out
    theirs = example_run.run_example("--epochs", "1", "--no-cuda")
    assert ours.splitlines()[0] == "Training net with the example recipe on cpu"
    ours = ours.split("\n", 1)[1]
    assert theirs.count("Train Epoch: 1 [") == 94 and "Test set: Average loss" in theirs
    assert ours == theirs


def test_run_example_refuses_an_unknown_version_and_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="unknown version 'main'"):
        example_run.run_example(version="main")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(example_run.ExampleRunError, match="exited with 2") as err:
        example_run.run_example("--no-such-flag")
    assert "unrecognized arguments: --no-such-flag" in str(err.value)
    assert list(tmp_path.iterdir()) == [], "its temporary folder is gone"


# --------------------------------------------------------------------------- its cached runs

#: The command line Part 4's companion and the test above run.
ARGS = ("--epochs", "1", "--no-cuda")


@pytest.fixture
def runs(monkeypatch):
    """``run_example``'s runner replaced by a record of its calls, so that no test below runs
    the script: each "run" prints its number, script and arguments, so that a transcript read
    back says which run printed it."""
    calls = []

    def run_script(script, args, *, root, timeout):
        calls.append(tuple(args))
        return f"run {len(calls)}: {script.name} {' '.join(args)}\n"

    monkeypatch.setattr(example_run, "_run_script", run_script)
    return calls


def cache_files(root: Path) -> list[str]:
    """Everything in ``root``'s cache folder: the transcripts, and any temporary file or lock
    left behind."""
    folder = root / "checkpoints"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def transcript_path(root: Path, args=ARGS) -> Path:
    params = example_run.example_run_key(args)
    return experiment_path(example_run.EXAMPLE_RUN, params, root=root)


def test_run_example_runs_once_per_key_then_reads_its_transcript(runs, tmp_path):
    first = example_run.run_example(*ARGS, root=tmp_path)
    assert first == "run 1: main_d8dd8ca_parent.py --epochs 1 --no-cuda\n"
    assert example_run.run_example(*ARGS, root=tmp_path) == first
    assert runs == [ARGS], "the second call read the transcript"
    assert cache_files(tmp_path) == [transcript_path(tmp_path).name], "no temporaries, no lock"
    assert example_run.run_example(*ARGS, root=tmp_path, cache=False).startswith("run 2:")
    assert example_run.run_example(*ARGS, root=tmp_path) == first, "cache=False kept nothing"


def edited_script(monkeypatch, tmp_path) -> None:
    """The script replaced by a copy with one byte more, under its own name."""
    script = example_run.EXAMPLE_SCRIPTS["d8dd8ca^"]
    copy = tmp_path / "edited" / script.name
    copy.parent.mkdir()
    copy.write_bytes(script.read_bytes() + b"\n")
    monkeypatch.setitem(example_run.EXAMPLE_SCRIPTS, "d8dd8ca^", copy)


#: What the printed numbers depend on, each changed on its own: (what, how to change it).
# Each change is to a value no machine running this has (a real one, say torch 2.2.2 at the
# floors or an AVX2 CPU, could be this machine's own, and then nothing would have changed).
CHANGES = {
    "the arguments": lambda mp, tmp: None,  # the test passes --epochs 2
    "the script's bytes": edited_script,
    "the torch version": lambda mp, tmp: mp.setattr(torch, "__version__", "0.0.1"),
    "the torchvision version": lambda mp, tmp: mp.setattr("torchvision.__version__", "0.0.1"),
    "the Python version": lambda mp, tmp: mp.setattr("platform.python_version", lambda: "2.7.0"),
    "the CPU's instruction set": lambda mp, tmp: mp.setattr(
        torch.backends.cpu, "get_cpu_capability", lambda: "NO SIMD"
    ),
    "the threads": lambda mp, tmp: mp.setenv("OMP_NUM_THREADS", "97"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_run_example_runs_again_where_anything_its_numbers_depend_on_changed(
    change, runs, tmp_path, monkeypatch
):
    example_run.run_example(*ARGS, root=tmp_path)
    CHANGES[change](monkeypatch, tmp_path)
    args = ("--epochs", "2", "--no-cuda") if change == "the arguments" else ARGS
    assert example_run.run_example(*args, root=tmp_path).startswith("run 2:")
    assert example_run.run_example(*args, root=tmp_path).startswith("run 2:"), "cached too"
    assert len(cache_files(tmp_path)) == 2, "a file for each key; neither replaced the other"


def test_the_key_holds_the_device_the_script_takes(runs, tmp_path, monkeypatch):
    """``--no-cuda`` (or argparse's shortening of it) runs on the CPU on any machine, so it
    shares the CPU's transcript; without it, a machine with CUDA runs on its GPU, whose name is
    in the key."""
    example_run.run_example(*ARGS, root=tmp_path)
    example_run.run_example("--epochs", "1", root=tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    assert example_run.run_example(*ARGS, root=tmp_path).startswith("run 1:")
    assert example_run.run_example("--epochs", "1", root=tmp_path).startswith("run 3:")
    device = example_run.example_device
    assert device("d8dd8ca^", ["--epochs", "1"]).startswith("cuda: NVIDIA H100 (CUDA ")
    assert device("d8dd8ca^", ["--no-c"]) == device("77f55b9", ["--no-accel"]) == "cpu"
    assert device("d8dd8ca^", ["--", "--no-cuda"]) != "cpu", "after --, not a flag"


def test_the_two_versions_never_read_each_others_transcript(runs, tmp_path):
    example_run.run_example("--epochs", "1", root=tmp_path)
    today = example_run.run_example("--epochs", "1", version="77f55b9", root=tmp_path)
    assert today == "run 2: main_77f55b9.py --epochs 1\n"


def stored(key: dict, result: dict) -> str:
    return json.dumps({"format": CACHE_FORMAT, "key": key, "result": result})


def our_key() -> dict:
    return experiment_key(example_run.EXAMPLE_RUN, example_run.example_run_key(ARGS))


#: Files at the transcript's path that are not a transcript of this key.
NOT_A_TRANSCRIPT = {
    "half a file": lambda: stored(our_key(), {"stdout": "run 0"})[:40],
    "an empty file": lambda: "",
    "another key's": lambda: stored({**our_key(), "torch": "2.2.2"}, {"stdout": "run 0"}),
    "this key, no transcript": lambda: stored(our_key(), {"stdout": 0}),
    "not ours": lambda: stored(our_key(), {"stdout": "run 0"}).replace("experiment/1", "x/1"),
}


@pytest.mark.parametrize("content", list(NOT_A_TRANSCRIPT))
def test_a_corrupt_or_foreign_transcript_is_run_again_and_replaced(content, runs, tmp_path):
    path = transcript_path(tmp_path)
    path.parent.mkdir()
    path.write_text(NOT_A_TRANSCRIPT[content]())
    assert example_run.run_example(*ARGS, root=tmp_path).startswith("run 1:")
    assert json.loads(path.read_text())["result"]["stdout"].startswith("run 1:"), "replaced"
    assert example_run.run_example(*ARGS, root=tmp_path).startswith("run 1:")
    assert cache_files(tmp_path) == [path.name]


def test_a_failed_run_is_never_cached(tmp_path, monkeypatch):
    def fails(script, args, *, root, timeout):
        raise example_run.ExampleRunError("the example's main.py exited with 1")

    monkeypatch.setattr(example_run, "_run_script", fails)
    for _ in range(2):  # the second call runs it again: nothing was kept
        with pytest.raises(example_run.ExampleRunError, match="exited with 1"):
            example_run.run_example(*ARGS, root=tmp_path)
    assert cache_files(tmp_path) == [], "no transcript, no temporary file, no lock"


def test_the_upstream_scripts_are_upstreams_byte_for_byte():
    """SHA-256 of pytorch/examples' mnist/main.py at d8dd8ca^ and at 77f55b9."""
    digests = {
        "d8dd8ca^": "de19a14e10e8b479cf1e9d400429e1d0e730e3eb71776a35c7dc3e06c6700c09",
        "77f55b9": "30a3359d1911d2d859dd090ce20be7ed132a33f508dc389f40366010b3e9ecc8",
    }
    for version, path in example_run.EXAMPLE_SCRIPTS.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[version], version


# --------------------------------------------------------------------------- today's example


def test_todaynet_is_todays_examples_net_weight_for_weight_and_output_for_output():
    theirs_class = upstream("77f55b9")["Net"]
    torch.manual_seed(1)
    theirs = theirs_class()
    torch.manual_seed(1)
    ours = models.TodayNet()
    assert shapes(theirs) == shapes(ours)
    for (name, a), b in zip(theirs.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert models.count_parameters(ours) == 1_199_882
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(theirs.eval()(x), ours.eval()(x))
    theirs.train(), ours.train()
    torch.manual_seed(2)
    expected = theirs(x)
    torch.manual_seed(2)
    assert torch.equal(ours(x), expected), "dropout draws in the same order"


def test_the_today_recipe_is_todays_defaults_with_their_learning_rates_epoch_by_epoch():
    recipe = RECIPES["today"]
    assert (recipe.batch_size, recipe.test_batch_size, recipe.epochs) == (64, 1000, 14)
    assert (recipe.optimizer, recipe.lr, recipe.schedule, recipe.gamma) == (
        "adadelta",
        1.0,
        "step",
        0.7,
    )
    model = models.TodayNet()
    optimizer, scheduler = make_optimizer(model, recipe, steps_per_epoch=3)
    assert isinstance(optimizer, torch.optim.Adadelta)
    theirs = torch.optim.Adadelta(models.TodayNet().parameters(), lr=1.0)
    assert optimizer.defaults == theirs.defaults
    upstream_scheduler = torch.optim.lr_scheduler.StepLR(theirs, step_size=1, gamma=0.7)
    for _epoch in range(4):  # the example steps its StepLR once per epoch, the package per batch
        for _step in range(3):
            assert optimizer.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
            optimizer.step(), scheduler.step()
        theirs.step()  # no gradients: nothing moves, but the scheduler sees a step taken
        upstream_scheduler.step()
    assert theirs.param_groups[0]["lr"] == pytest.approx(0.7**4)


def test_todays_example_trains_here_one_batch(capsys):
    run = train_model("today", "today", dry_run=True, device="cpu", progress=False)
    assert type(run.model) is models.TodayNet and len(run.history[0]["step_losses"]) == 1
    assert "Train Epoch: 1 [0/55000 (0%)]" in capsys.readouterr().out


def test_todays_mnist_cnn_pt_works_where_a_checkpoint_does_the_widget_included(tmp_path):
    """Today's example's file (``torch.save(model.state_dict(), "mnist_cnn.pt")``) in Part 5's
    and the widget's path: loaded as a TodayNet, it reads a drawing (probabilities summing to 1,
    a 28 x 28 saliency map)."""
    from mnist_dissected import draw
    from mnist_dissected.pretrained import load_or_train

    torch.manual_seed(0)
    path = tmp_path / "mnist_cnn.pt"
    torch.save(upstream("77f55b9")["Net"]().state_dict(), path)
    model, meta = load_or_train(path, device="cpu")
    assert type(model) is models.TodayNet and meta["format"] == "bare state_dict"
    prediction = draw.predict_drawing(model, draw.load_drawing(7))
    assert 0 <= prediction.digit <= 9 and tuple(prediction.saliency.shape) == (28, 28)
    torch.testing.assert_close(prediction.probabilities.sum(), torch.tensor(1.0))
