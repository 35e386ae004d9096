"""Command line: ``python -m mnist_dissected train`` (the example's flags) and ``bench``.

Why this module exists: the notebooks end with "the CLI line that reproduces this", so a reader
can train without Jupyter, the way pytorch/examples' ``mnist/main.py`` does. The flags of the
example the series dissects (d8dd8ca^: ``--no-cuda``) and of today's example (``--no-accel``,
``--dry-run``, ``--gamma``, ``--save-model``) are accepted, so a command line from either works.
Every bad value is a usage error before any work starts: a run of minutes is never lost to a
typo. Under ``torchrun`` the same command trains with DistributedDataParallel (Part 6).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .data import VALIDATION_SIZE
from .models import MODELS
from .train import DEVICE_ENV_VAR, RECIPES, Recipe, Trained, get_recipe

if TYPE_CHECKING:
    import torch

#: Device types that can train a model here.
TRAINING_DEVICES = ("cpu", "cuda", "mps")
#: MNIST's 60,000 training images less those held out for validation: the largest batch.
TRAINING_IMAGES = 60_000 - VALIDATION_SIZE

T = TypeVar("T", int, float)


def checked_number(
    convert: Callable[[str], T], ok: Callable[[T], bool], requirement: str
) -> Callable[[str], T]:
    """An argparse type: ``convert`` the text, then require ``ok(value)``; a bad value is a
    usage error that says why, not a traceback."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value

    return parse


positive_int = checked_number(int, lambda v: v >= 1, "must be at least 1")
positive_float = checked_number(float, lambda v: 0 < v < float("inf"), "must be a positive number")
momentum_value = checked_number(float, lambda v: 0 <= v < 1, "must be in [0, 1)")
gamma_value = checked_number(float, lambda v: 0 < v <= 1, "must be in (0, 1]")
#: NumPy's seeds are 32-bit; Python's and PyTorch's take these too.
seed_value = checked_number(int, lambda v: 0 <= v < 2**32, "must be in 0 .. 4294967295")


def build_parser() -> argparse.ArgumentParser:
    """The ``train`` and ``bench`` command lines: every value is checked as it is parsed, so
    that a typo is a usage error before any work starts."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_dissected", description="Train and benchmark the MNIST example."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a model (the PyTorch MNIST example's flags)",
        description="Train Net or LeNet on MNIST, as pytorch/examples' mnist/main.py does. "
        "Recipe defaults apply where a flag is not given. 5,000 training images are held out "
        "for validation (scored each epoch); the test set is scored once, at the end. Under "
        "torchrun it trains with DistributedDataParallel.",
    )
    t.add_argument("--model", choices=sorted(MODELS), default="net", help="architecture")
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="classic",
        help="classic: the example's SGD; fast: Adam + one-cycle, about 99%% in 3 epochs",
    )
    t.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="input batch size for training (classic 64, fast 256)",
    )
    t.add_argument(
        "--test-batch-size",
        type=positive_int,
        metavar="N",
        help="input batch size for validation and testing (default 1000)",
    )
    t.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="number of epochs to train (classic 10, fast 3)",
    )
    t.add_argument("--lr", type=positive_float, metavar="LR", help="learning rate (0.01)")
    t.add_argument(
        "--momentum", type=momentum_value, metavar="M", help="SGD momentum (classic 0.5)"
    )
    t.add_argument(
        "--gamma",
        type=gamma_value,
        metavar="M",
        help="learning-rate step gamma: multiply the rate by M after each epoch "
        "(StepLR, as today's example; not with the fast recipe's one-cycle)",
    )
    t.add_argument(
        "--seed",
        type=seed_value,
        default=1,
        metavar="S",
        help="random seed, 0 .. 2**32-1 (default 1)",
    )
    t.add_argument(
        "--log-interval",
        type=positive_int,
        default=None,
        metavar="N",
        help="how many batches to wait before logging training status "
        "(classic 10; fast: off, as each line waits for the device)",
    )
    t.add_argument(
        "--save-model",
        nargs="?",
        const="mnist_cnn.pt",
        default=None,
        metavar="PATH",
        help="save the trained model (default path mnist_cnn.pt)",
    )
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="quickly check a single pass: one batch of training, one of testing",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (needs a C++ compiler on CPU; else eager)",
    )
    t.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the fast recipe's training step as one CUDA graph (NVIDIA GPUs; "
        "elsewhere eager, with a message)",
    )
    t.add_argument(
        "--device",
        default=None,
        help=f"cpu, cuda, cuda:1, mps (default: ${DEVICE_ENV_VAR} if set, else CUDA, then MPS, "
        "then CPU)",
    )
    t.add_argument(
        "--no-accel",
        "--no-cuda",
        "--no-mps",
        dest="no_accel",
        action="store_true",
        help="train on the CPU even where CUDA or MPS is present (the example's "
        "--no-cuda of old and --no-accel of today)",
    )
    t.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="MNIST folder (default: $MNIST_DISSECTED_DATA, the checkout's data/)",
    )
    t.add_argument("--progress", action="store_true", help="show progress bars")

    b = sub.add_parser(
        "bench",
        help="time the data paths and the fast recipe on this machine",
        description="For Net on this machine: seconds per epoch of the example's recipe "
        "through the DataLoader and through whole tensors, the fast recipe eager and (where "
        "available) compiled or graphed, and seconds to reach 99%% for several seeds.",
    )
    b.add_argument(
        "--device",
        default=None,
        help=f"device to benchmark: cpu, cuda, cuda:1, mps (default: ${DEVICE_ENV_VAR} if set, "
        "else CUDA, then MPS, then CPU)",
    )
    b.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        metavar="N",
        help="how many seeds to time the fast recipe with (default 5; --quick: 1)",
    )
    b.add_argument(
        "--quick",
        action="store_true",
        help="one seed and no DataLoader epoch: a smoke run, not a measurement",
    )
    b.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser


def parse_device(text: str | None, *, no_accel: bool = False) -> torch.device:
    """The device to train on: ``text`` (``--device``), else ``$MNIST_DISSECTED_DEVICE``, else
    the best one present; a ``ValueError`` with one line saying why it cannot be used. The
    variable is checked as the flag is: a typo in it must not become a traceback."""
    from .train import pick_device

    if text is not None:
        return usable_device(text, no_accel=no_accel)
    if no_accel:
        return pick_device("cpu")
    if os.environ.get(DEVICE_ENV_VAR):
        value = os.environ[DEVICE_ENV_VAR]
        try:
            return usable_device(value)
        except ValueError as e:
            raise ValueError(f"${DEVICE_ENV_VAR}={value}: {e}") from None
    return pick_device(None)


def usable_device(text: str, *, no_accel: bool = False) -> torch.device:
    """``text`` as a device that can train a model here, or a ``ValueError`` saying why not."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{text!r} is not a device; use one of cpu, cuda, cuda:N, mps") from None
    if device.type not in TRAINING_DEVICES:
        raise ValueError(f"{text!r} cannot train a model; use one of cpu, cuda, cuda:N, mps")
    if no_accel and device.type != "cpu":
        raise ValueError(f"--device {text} and --no-accel contradict each other")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "CUDA is not available here (no NVIDIA GPU, or a CPU-only build "
                "of PyTorch); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"there is no {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            "MPS is not available here (it needs Apple silicon and macOS 12.3 or "
            "later); use --device cpu"
        )
    return device


def check_save_path(text: str) -> tuple[Path, str | None]:
    """``--save-model``'s path checked before training (a temporary file is made there and
    deleted, so that what would fail at saving fails now); returns it and a note to print, or
    raises ``ValueError`` saying what is wrong with it."""
    from .files import check_writable

    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"{text} is a folder; give a file name, e.g. {path / 'mnist_cnn.pt'}")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(f"cannot save under {existing}: it is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into {existing}: permission denied")
    try:
        check_writable(path)  # leaves nothing behind, not even the folders it made
    except OSError as e:
        raise ValueError(f"cannot save to {text}: {e.strerror or e}") from None
    note = None if parent.is_dir() else f"Note: the folder {parent} will be created"
    return path, note


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe a ``train`` command line asks for: the named recipe with the flags given
    replacing its fields (Part 4, §4.13 shows that it is the notebook's recipe)."""
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "test_batch_size": args.test_batch_size,
        "compile": args.compile or None,
        "cuda_graph": args.cuda_graph or None,
    }
    if args.batch_size is not None and args.batch_size > TRAINING_IMAGES:
        raise ValueError(
            f"--batch-size {args.batch_size} is more than the {TRAINING_IMAGES:,} training "
            f"images; at most {TRAINING_IMAGES} (one batch per epoch)"
        )
    if args.momentum is not None and RECIPES[args.recipe].optimizer != "sgd":
        raise ValueError(
            f"--momentum is SGD's; the {args.recipe} recipe trains with another optimizer "
            f"({RECIPES[args.recipe].optimizer})"
        )
    if args.gamma is not None:
        if RECIPES[args.recipe].schedule not in (None, "step"):
            raise ValueError(
                f"--gamma drives a StepLR schedule; the {args.recipe} recipe has "
                f"its own ({RECIPES[args.recipe].schedule})"
            )
        overrides.update(schedule="step", gamma=args.gamma)
    return get_recipe(args.recipe, **overrides)


def save_elsewhere(run: Trained, save_path: Path, error: OSError, **metadata: Any) -> int:
    """The trained model could not be saved where asked (a full disk, a folder removed
    meanwhile): save it under a new name in the system's temporary folder rather than lose the
    training, and say so in one line. Returns the exit status (1: not done as asked)."""
    import tempfile

    from .checkpoint import save_checkpoint

    failed = f"error: could not save {save_path} ({error.strerror or error})"
    try:
        fd, fallback = tempfile.mkstemp(prefix="mnist_cnn-", suffix=".pt")
        os.close(fd)
        try:
            save_checkpoint(fallback, run.model, **metadata)
        except BaseException:
            os.unlink(fallback)
            raise
    except OSError as e:
        print(f"{failed}; nor in {tempfile.gettempdir()} ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"{failed}; the trained model was saved to {fallback} instead", file=sys.stderr)
    return 1


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``train``: check every flag (a usage error through ``parser`` before any work), train,
    save; under ``torchrun``, the distributed training of Part 6. Returns the exit status."""
    from .checkpoint import save_checkpoint
    from .train import train_model

    distributed = "TORCHELASTIC_RUN_ID" in os.environ  # started by torchrun: one of several
    try:
        device = parse_device(args.device, no_accel=args.no_accel)
        recipe = recipe_from_args(args)
        if distributed and (args.compile or args.cuda_graph):
            raise ValueError(
                "under torchrun the model trains eagerly inside DistributedDataParallel: "
                "--compile and --cuda-graph are not used there; leave them out"
            )
        save_path, note = check_save_path(args.save_model) if args.save_model else (None, None)
    except ValueError as e:
        parser.error(str(e))
    options = {
        "seed": args.seed,
        "progress": args.progress,
        "log_interval": args.log_interval,
        "verbose": True,
        "root": args.data,
        "root_given_as": "--data",
        "dry_run": args.dry_run,
    }
    if distributed:
        from .distributed import run_train_cli

        return run_train_cli(args.model, recipe, device=device, save_path=save_path, **options)
    if note:
        print(note)
    print(f"Training {args.model} with the {args.recipe} recipe on {device}")
    run = train_model(args.model, recipe, device=device, **options)
    if save_path is not None:
        metadata = {"recipe": recipe, "history": run.history, "seed": args.seed, "test": run.test}
        try:
            path = save_checkpoint(save_path, run.model, **metadata)
        except OSError as e:
            return save_elsewhere(run, save_path, e, **metadata)
        print(f"Saved {path}")
    return 0


def run_bench_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bench``: check the flags (a usage error through ``parser``), then measure."""
    from .bench import run_bench

    if args.quick and args.seeds not in (None, 1):
        parser.error(f"--quick times one seed; leave out --seeds {args.seeds} or --quick")
    try:
        device = parse_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    seeds = 1 if args.quick else args.seeds or 5
    return run_bench(device=str(device), seeds=seeds, quick=args.quick, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mnist_dissected``: returns the exit status (0 done, 1 an error explained in
    one line, 2 a usage error); expected failures never end in a traceback."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    if unknown:  # the subcommand's usage, not the top level's
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from .checkpoint import CheckpointError
    from .mnist_files import CorruptDataError, DataWriteError, MNISTNotFoundError

    try:
        if args.command == "train":
            return run_train(args, subparser)
        return run_bench_command(args, subparser)
    except (MNISTNotFoundError, CorruptDataError, DataWriteError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # distributed.WorldError: the processes could not form a world
        if type(e).__name__ != "WorldError":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
