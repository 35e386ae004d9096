"""The command line: the example's flags, usage errors without tracebacks, clear data errors."""

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from mnist_dissected import cli, devices, dist_demo, recipes
from mnist_dissected.checkpoint import load_checkpoint
from mnist_dissected.data import VALIDATION_SIZE
from mnist_dissected.files import temporaries_of
from mnist_dissected.models import Net
from mnist_dissected.train import Trained

ROOT = Path(__file__).resolve().parent.parent


def shell(*args: str, env: dict | None = None, timeout: float = 300):
    """``python -m mnist_dissected ARGS`` in a fresh process, as a reader types it."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_dissected", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["train", "--batch-size", "0"], "must be at least 1"),
        (["train", "--epochs", "two"], "not an integer"),
        (["train", "--lr", "-0.1"], "must be a positive number"),
        (["train", "--lr", "nan"], "must be a positive number"),
        (["train", "--momentum", "1.5"], "must be in [0, 1)"),
        (["train", "--model", "resnet"], "invalid choice"),
        (["train", "--recipe", "slow"], "invalid choice"),
        (["fly"], "invalid choice"),
        (["train", "--seed", "-1"], "must be in 0 .. 4294967295"),
        (["train", "--seed", str(2**32)], "must be in 0 .. 4294967295"),
        (["train", "--gamma", "0"], "must be in (0, 1]"),
        (["train", "--device", "meta"], "cannot train a model; use one of cpu, cuda, cuda:N, mps"),
        (["train", "--device", "banana"], "is not a device"),
        (["train", "--device", "cuda", "--no-cuda"], "contradict"),
        (["train", "--recipe", "fast", "--gamma", "0.7"], "the fast recipe has its own (onecycle)"),
        (
            ["train", "--recipe", "fast", "--momentum", "0.9"],
            "momentum is SGD's; the fast recipe trains with adam",
        ),
        (["train", "--batch-size", "55001"], "more than the 55,000 training images"),
        (["bench", "--seeds", "0"], "must be at least 1"),
    ],
)
def test_bad_flag_values_are_usage_errors(args, complaint, capsys, no_training):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and complaint in err and "usage:" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_bad_flag_from_the_shell_prints_usage_not_a_traceback():
    result = shell("train", "--epochs", "0")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_reach_the_training(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_train_model(model, recipe, **kwargs):
        seen.update(kwargs, model=model, recipe=recipe)
        return Trained(torch.nn.Linear(1, 1), [], recipe, {})

    monkeypatch.setattr("mnist_dissected.train.train_model", fake_train_model)
    monkeypatch.setattr(
        "mnist_dissected.checkpoint.save_checkpoint", lambda path, *a, **k: Path(path)
    )
    status = cli.main(
        [
            "train",
            "--model",
            "lenet",
            "--recipe",
            "classic",
            "--batch-size",
            "32",
            "--test-batch-size",
            "500",
            "--epochs",
            "2",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--seed",
            "3",
            "--log-interval",
            "5",
            "--device",
            "cpu",
            "--save-model",
            str(tmp_path / "m.pt"),
        ]
    )
    assert status == 0
    recipe = seen["recipe"]
    assert seen["model"] == "lenet" and recipe.name == "classic"
    assert (recipe.batch_size, recipe.test_batch_size, recipe.epochs) == (32, 500, 2)
    assert (recipe.lr, recipe.momentum, seen["seed"], seen["log_interval"]) == (0.05, 0.9, 3, 5)
    assert "Saved" in capsys.readouterr().out


def test_fast_path_flags_and_the_bare_save_flag_reach_the_training(monkeypatch, tmp_path, capsys):
    seen, saved = {}, []

    def fake_train_model(model, recipe, **kwargs):
        seen.update(kwargs, recipe=recipe)
        return Trained(torch.nn.Linear(1, 1), [], recipe, {})

    monkeypatch.setattr("mnist_dissected.train.train_model", fake_train_model)
    monkeypatch.setattr(
        "mnist_dissected.checkpoint.save_checkpoint",
        lambda path, *a, **k: saved.append(Path(path)) or Path(path),
    )
    monkeypatch.chdir(tmp_path)
    args = ["train", "--compile", "--cuda-graph", "--progress", "--device", "cpu"]
    assert cli.main([*args, "--save-model"]) == 0
    assert (seen["recipe"].compile, seen["recipe"].cuda_graph, seen["progress"]) == (True,) * 3
    assert saved == [Path("mnist_cnn.pt")], "a bare --save-model writes the example's file name"
    assert cli.main(["train", "--device", "cpu"]) == 0
    assert (seen["recipe"].compile, seen["recipe"].cuda_graph, seen["progress"]) == (False,) * 3
    assert saved == [Path("mnist_cnn.pt")], "no --save-model, nothing saved"


@pytest.mark.slow
def test_missing_data_is_a_message_not_a_traceback(tmp_path):
    env = {
        **os.environ,
        "MNIST_DISSECTED_DATA": str(tmp_path),
        # any proxy that cannot be reached: the download fails quickly, as offline
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    result = shell("train", "--epochs", "1", "--device", "cpu", env=env, timeout=120)
    assert result.returncode == 1
    assert "MNIST files not found" in result.stderr and "MNIST_DISSECTED_DATA" in result.stderr
    result = shell("train", "--dry-run", "--data", str(tmp_path / "typo"), env=env, timeout=120)
    assert "(from --data)" in result.stderr and not (tmp_path / "typo").exists()
    assert "Traceback" not in result.stderr


def test_unusable_device_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--device", "cuda:7" if torch.cuda.is_available() else "cuda"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "CUDA" in err and "use --device cpu" in err
    assert err.strip().splitlines()[-1].startswith("python -m mnist_dissected train: error: ")
    assert "Traceback" not in err  # the usage, then one line of error


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_where_there_is_none_is_one_line_not_a_backend_listing(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--device", "mps"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "MPS is not available here" in last and len(last) < 200


@pytest.mark.parametrize(
    "flags, cuda, device",
    [
        ([], True, "cuda"),
        (["--no-cuda"], True, "cpu"),  # d8dd8ca^: the CPU, the only other device it knew
        (["--no-accel"], True, "cpu"),  # today's example
        (["--no-mps"], True, "cuda"),  # 2022-2025: not MPS; CUDA where present
        (["--no-mps"], False, "cpu"),  # ... else the CPU, even where MPS is present
        ([], False, "mps"),
    ],
)
def test_the_examples_device_flags_pick_what_they_picked_there(
    flags, cuda, device, monkeypatch, capsys
):
    monkeypatch.delenv("MNIST_DISSECTED_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    seen = {}
    monkeypatch.setattr(
        "mnist_dissected.train.train_model",
        lambda model, recipe, **kwargs: seen.update(kwargs) or Trained(Net(), [], recipe, {}),
    )
    assert cli.main(["train", *flags]) == 0
    assert seen["device"] == torch.device(device)


def test_no_mps_beside_device_mps_is_a_contradiction(monkeypatch, capsys, no_training):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    line = usage_error(["train", "--device", "mps", "--no-mps"], capsys)
    assert line.endswith("--device mps and --no-mps contradict each other")


def test_gamma_drives_a_step_schedule_as_in_todays_example():
    args = cli.build_parser().parse_args(["train", "--gamma", "0.7"])
    recipe = cli.recipe_from_args(args)
    assert (recipe.schedule, recipe.gamma) == ("step", 0.7)


def test_unknown_flag_shows_the_train_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--epocs", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --epocs 3" in err
    assert "usage: python -m mnist_dissected train" in err


@pytest.mark.parametrize(
    "make, complaint",
    [
        (lambda tmp: tmp, "is a folder"),
        (
            lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt" / "m.pt",
            "it is a file, not a folder",
        ),
    ],
)
def test_bad_save_path_is_refused_before_training(tmp_path, monkeypatch, capsys, make, complaint):
    monkeypatch.setattr(
        "mnist_dissected.train.train_model",
        lambda *a, **k: pytest.fail("trained despite a bad --save-model"),
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--device", "cpu", "--save-model", str(make(tmp_path))])
    assert exit_.value.code == 2 and complaint in capsys.readouterr().err


def test_missing_save_folder_is_announced_then_created(tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "m.pt"
    assert (
        cli.main(
            [
                "train",
                "--recipe",
                "fast",
                "--dry-run",
                "--device",
                "cpu",
                "--save-model",
                str(target),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"the folder {target.parent} will be created" in out and target.is_file()


@pytest.mark.slow
def test_dry_run_end_to_end_from_the_shell(tmp_path):
    """The real command, start to finish: one batch of training, one of testing, a checkpoint."""
    target = tmp_path / "m.pt"
    result = shell(
        "train", "--dry-run", "--device", "cpu", "--save-model", str(target), timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Training net with the classic recipe on cpu"
    assert lines[1].startswith("Train Epoch: 1 [0/55000 (0%)]\tLoss: ")
    assert lines[2].startswith("Test set: Average loss: ") and "/1000 (" in lines[2]
    assert lines[3] == f"Saved {target}"
    model, meta = load_checkpoint(target)
    assert isinstance(model, Net) and meta["epochs"] == 1
    scored = shell("score", str(target), "--device", "cpu", timeout=300)
    assert scored.returncode == 0, scored.stderr
    assert re.fullmatch(
        r"\nTest set: Average loss: \d+\.\d{4}, Accuracy: \d+/10000 \(\d+%\)\n\n", scored.stdout
    )
    exported = shell("export", str(target), str(tmp_path / "bare.pt"), timeout=300)
    assert exported.returncode == 0, exported.stderr
    bare = torch.load(tmp_path / "bare.pt", weights_only=True)
    assert all(torch.equal(bare[k], v) for k, v in model.state_dict().items())


def test_the_largest_batch_is_the_whole_training_split():
    args = cli.build_parser().parse_args(["train", "--batch-size", "55000"])
    assert cli.recipe_from_args(args).batch_size == 55_000 == recipes.TRAINING_IMAGES
    assert recipes.TRAINING_IMAGES == 60_000 - VALIDATION_SIZE


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to train or benchmark fails the test: the errors must come before."""
    for target in ("mnist_dissected.train.train_model", "mnist_dissected.bench.run_bench"):
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail("work started despite a bad flag"))


def usage_error(args, capsys) -> str:
    """The one error line of a usage error (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" in err and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["train", "bench"])
@pytest.mark.parametrize(
    "value, complaint",
    [("foo", "is not a device"), ("meta", "cannot train a model"), ("cuda", "CUDA is not")],
)
def test_the_device_variable_is_checked_like_the_flag(
    command, value, complaint, monkeypatch, capsys, no_training
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without
    monkeypatch.setenv("MNIST_DISSECTED_DEVICE", value)
    line = usage_error([command], capsys)
    assert f"$MNIST_DISSECTED_DEVICE={value}: " in line and complaint in line
    assert devices.pick_device("cpu") == torch.device("cpu"), "--device wins over the variable"


def test_the_device_help_names_the_variable():
    parser = cli.build_parser()
    for command in ("train", "bench"):
        sub = parser._subparsers._group_actions[0].choices[command]
        assert "$MNIST_DISSECTED_DEVICE" in " ".join(sub.format_help().split())


@pytest.mark.parametrize(
    "device, complaint",
    [("foo", "is not a device"), ("meta", "cannot train a model"), ("cuda", "CUDA is not")],
)
def test_bench_checks_its_device_flag(device, complaint, monkeypatch, capsys, no_training):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert complaint in usage_error(["bench", "--device", device], capsys)


def test_bench_quick_with_several_seeds_is_a_usage_error(capsys, no_training):
    assert "--quick times one seed" in usage_error(["bench", "--quick", "--seeds", "3"], capsys)


@pytest.mark.parametrize(
    "flags, seeds",
    [([], 5), (["--seeds", "3"], 3), (["--quick"], 1), (["--quick", "--seeds", "1"], 1)],
)
def test_bench_flags_reach_the_benchmark(flags, seeds, monkeypatch):
    seen = {}
    monkeypatch.delenv("MNIST_DISSECTED_DEVICE", raising=False)
    monkeypatch.setattr(
        "mnist_dissected.bench.run_bench", lambda **kwargs: seen.update(kwargs) or 0
    )
    assert cli.main(["bench", "--device", "cpu", *flags]) == 0
    assert seen == {"device": "cpu", "seeds": seeds, "quick": "--quick" in flags, "as_json": False}


@pytest.mark.parametrize("flag", ["--compile", "--cuda-graph"])
def test_fast_path_flags_are_refused_under_torchrun(flag, monkeypatch, capsys, no_training):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setattr(
        "mnist_dissected.distributed.run_train_cli",
        lambda *a, **k: pytest.fail("trained under torchrun with a flag it ignores"),
    )
    line = usage_error(["train", "--device", "cpu", flag], capsys)
    assert "under torchrun" in line and "leave them out" in line


def test_a_save_path_that_cannot_be_written_is_refused_before_training(
    tmp_path, monkeypatch, capsys, no_training
):
    monkeypatch.chdir(tmp_path)
    line = usage_error(["train", "--device", "cpu", "--save-model", f"sv/{'a' * 300}.pt"], capsys)
    assert "cannot save to sv/" in line and os.strerror(errno.ENAMETOOLONG) in line
    assert os.listdir(tmp_path) == [], "the probe left no folder behind"


def fake_training_then(monkeypatch, save_fails_for):
    """Training that returns a Net at once; saving fails for the paths in ``save_fails_for``."""
    from mnist_dissected import checkpoint

    real_save = checkpoint.save_checkpoint

    def save(path, *args, **kwargs):
        if Path(path) in save_fails_for or "*" in save_fails_for:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(
        "mnist_dissected.train.train_model",
        lambda model, recipe, **kwargs: Trained(Net(), [], recipe, {"accuracy": 0.5}),
    )
    monkeypatch.setattr("mnist_dissected.checkpoint.save_checkpoint", save)


def test_a_failed_save_after_training_keeps_the_model_elsewhere(tmp_path, monkeypatch, capsys):
    target = tmp_path / "out" / "m.pt"
    fake_training_then(monkeypatch, {target})
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert cli.main(["train", "--device", "cpu", "--save-model", str(target)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"could not save {target} (No space left on device)" in err
    [fallback] = (tmp_path / "tmp").iterdir()
    assert f"saved to {fallback} instead" in err
    model, meta = load_checkpoint(fallback)
    assert isinstance(model, Net) and meta["seed"] == 1 and meta["recipe"]["name"] == "classic"
    assert not (tmp_path / "out").exists(), "no empty folder left where the save failed"


def test_a_failed_save_with_no_way_out_is_one_line(tmp_path, monkeypatch, capsys):
    fake_training_then(monkeypatch, {"*"})
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert cli.main(["train", "--device", "cpu", "--save-model", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nor in" in err and "Traceback" not in err
    assert os.listdir(tmp_path / "tmp") == [] and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5", "soon"])
def test_dist_demo_timeout_must_be_a_positive_number(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        dist_demo.main(["env", "--timeout", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--timeout" in err and "Traceback" not in err


def test_dist_demo_in_a_half_described_world_is_one_line(monkeypatch, capsys):
    for name in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")  # what a hand-made launch might set, and nothing else
    assert dist_demo.main(["env"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not set" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- bad input, round two


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_character_device(path: Path) -> None:
    """A node with /dev/null's numbers: what `--save-model /dev/null` reaches as root."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")


@pytest.mark.parametrize("make", [make_fifo, make_character_device], ids=["fifo", "device"])
def test_a_save_path_that_is_no_regular_file_is_refused_before_training(
    tmp_path, capsys, no_training, make
):
    node = tmp_path / "m.pt"
    make(node)
    before = stat.S_IFMT(os.lstat(node).st_mode)
    line = usage_error(["train", "--device", "cpu", "--save-model", str(node)], capsys)
    assert f"{node} is a " in line and "not a regular file" in line
    assert stat.S_IFMT(os.lstat(node).st_mode) == before and os.listdir(tmp_path) == ["m.pt"]


def test_save_model_through_a_symlink_writes_its_target_and_keeps_the_link(
    tmp_path, monkeypatch, capsys
):
    fake_training_then(monkeypatch, set())
    target, link = tmp_path / "store" / "m.pt", tmp_path / "m.pt"
    target.parent.mkdir()
    target.write_bytes(b"the model of an earlier run")
    link.symlink_to(target)
    assert cli.main(["train", "--device", "cpu", "--save-model", str(link)]) == 0
    assert f"Saved {link}" in capsys.readouterr().out
    assert link.is_symlink() and os.readlink(link) == str(target), "the link stays a link"
    assert isinstance(load_checkpoint(target)[0], Net)


def test_an_empty_save_path_is_a_usage_error(capsys, no_training):
    """`--save-model "$OUT"` with OUT unset: not a run that trains and saves nothing."""
    line = usage_error(["train", "--device", "cpu", "--save-model", ""], capsys)
    assert "--save-model was given an empty path" in line


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="no SIGINT to send on Windows")
@pytest.mark.parametrize(
    "when", ["Training net", "Train Epoch: 1 [0/"], ids=["preparing-data", "mid-epoch"]
)
def test_ctrl_c_during_training_is_one_line_and_leaves_everything_as_it_was(tmp_path, when):
    data, target = tmp_path / "data", tmp_path / "m.pt"
    data.mkdir()
    for name in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            gz = f"{name}-{kind}-ubyte.gz"
            (data / gz).write_bytes((ROOT / "data" / gz).read_bytes())
    target.write_bytes(b"the model of an earlier run")
    command = ["train", "--epochs", "1", "--device", "cpu", "--data", str(data)]
    # Where Ctrl-C is ignored here (pytest run as a shell's background job), the child would
    # ignore it too; a signal that is caught is reset to its default in the child instead.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "mnist_dissected", *command, "--save-model", str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    watchdog = threading.Timer(180, child.kill)  # a hung child ends its output: no hung test
    watchdog.start()
    try:
        while not (line := child.stdout.readline()).startswith(when):
            assert line, f"the training ended before printing {when!r}"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert err == "interrupted: nothing was saved\n"
    assert target.read_bytes() == b"the model of an earlier run"
    assert temporaries_of(target) == [] and list(tmp_path.rglob("*.tmp")) == []


def test_every_command_line_in_the_readme_parses():
    """The README's Command line section: each `python -m mnist_dissected ...` it shows is
    accepted as written (train's builds its recipe)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    lines = [
        line.split("#")[0].split(" mnist_dissected ", 1)[1].split()
        for line in section.splitlines()
        if " mnist_dissected " in line and line.startswith(".venv/bin/")
    ]
    assert {argv[0] for argv in lines} == {"train", "bench", "score", "export"}
    for argv in lines:
        args = cli.build_parser().parse_args(argv)
        if args.command == "train":
            cli.recipe_from_args(args)
