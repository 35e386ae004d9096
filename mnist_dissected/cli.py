"""Command line: ``python -m mnist_dissected train`` (the example's flags), ``bench``, and
``score`` and ``export`` for checkpoints: the line each part ends with (Part 4, §4.F; under
``torchrun``, Part 6).

Why this module exists: the notebooks end with "the CLI line that reproduces this", so a reader
can train without Jupyter, the way pytorch/examples' ``mnist/main.py`` does. The flags of the
example the series dissects (d8dd8ca^: ``--momentum``, ``--no-cuda``) and of later ones
(``--save-model``, ``--gamma``, ``--dry-run``, ``--no-mps``, ``--no-accel``) are accepted: a
command line copied from either version does what it did there, or is refused with what to type
instead (today's ``--lr 1.0`` is Adadelta's; see :mod:`~mnist_dissected.example_compat`).
Every bad value is a usage error before any work starts: a run of minutes is never lost to a
typo. Under ``torchrun`` the same command trains with DistributedDataParallel (Part 6).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .argtypes import gamma_value, momentum_value, positive_float, positive_int, seed_value
from .cli_checkpoints import (
    add_export_flags,
    add_score_flags,
    check_save_path,
    run_export,
    run_score,
)
from .devices import DEVICE_ENV_VAR, pick_device
from .errors import MnistDissectedError, UsageError
from .example_compat import check_sgd_rate, without_mps
from .models import MODELS
from .recipes import RECIPES, Recipe, get_recipe

if TYPE_CHECKING:
    from .train import Trained

DEVICE_HELP = (
    f"cpu, cuda, cuda:1, mps (default: ${DEVICE_ENV_VAR} if set, else CUDA, then MPS, then CPU)"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``train``, ``bench``, ``score`` and ``export`` command lines: every value is checked
    as it is parsed, so that a typo is a usage error before any work starts."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_dissected",
        description="Train, benchmark, score and export the MNIST example's models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_flags(
        sub.add_parser(
            "train",
            help="train a model (the PyTorch MNIST example's flags)",
            description="Train Net, LeNet or TodayNet on MNIST, as pytorch/examples' "
            "mnist/main.py does. Recipe defaults apply where a flag is not given. 5,000 "
            "training images are held out for validation (scored each epoch); the test set is "
            "scored once, at the end (but with --recipe example, the example's run itself: all "
            "60,000 images, the test set after every epoch). Under torchrun it trains with "
            "DistributedDataParallel.",
        )
    )
    add_bench_flags(
        sub.add_parser(
            "bench",
            help="time the data paths and the fast recipe on this machine",
            description="For Net on this machine: seconds per epoch of the example's recipe "
            "through the DataLoader and through whole tensors, the fast recipe eager and (where "
            "available) compiled or graphed, and seconds to reach 99%% for several seeds.",
        )
    )
    add_score_flags(
        sub.add_parser(
            "score",
            help="score a checkpoint on the test set, in the example's test line",
            description="Score a checkpoint (the package's, or the example's bare state_dict "
            "mnist_cnn.pt) on the 10,000 test images; print the example's test line.",
        ),
        device_help=DEVICE_HELP,
    )
    add_export_flags(
        sub.add_parser(
            "export",
            help="write a checkpoint's weights as the bare state_dict the example loads",
            description="Write CHECKPOINT's weights to OUT as a bare state_dict, the file the "
            "example saves and loads: model.load_state_dict(torch.load(OUT, weights_only=True)).",
        )
    )
    return parser


def add_train_flags(t: argparse.ArgumentParser) -> None:
    """``train``'s flags: the example's (both versions), then the series' own. One flag per
    line on purpose: this is the command line's reference, read top to bottom."""
    # Long on purpose: one flag per statement, the command line read top to bottom.
    number = {"metavar": "N", "type": positive_int}
    t.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="net",
        help="architecture: net (the example of d8dd8ca^), lenet, today (today's example)",
    )
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="classic",
        help="classic: the example's SGD with a validation split; example: the example's "
        "run exactly; today: today's example's Adadelta + StepLR (with --model today); fast: "
        "Adam + one-cycle, about 99%% in 3 epochs",
    )
    t.add_argument(
        "--batch-size", **number, help="input batch size for training (classic 64, fast 256)"
    )
    t.add_argument(
        "--test-batch-size",
        **number,
        help="input batch size for validation and testing (default 1000)",
    )
    t.add_argument("--epochs", **number, help="number of epochs to train (classic 10, fast 3)")
    t.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help="learning rate (classic 0.01, fast 0.01 at the peak); the classic SGD takes 0.5 "
        "or more (today's example's Adadelta rates) only beside --momentum",
    )
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
        **number,
        help="how many batches to wait before logging training status "
        "(classic 10; fast: off, as each line waits for the device)",
    )
    t.add_argument(
        "--save-model",
        nargs="?",
        const="mnist_cnn.pt",
        metavar="PATH",
        help="save the trained model (default path mnist_cnn.pt): a checkpoint, its weights "
        "under ['state_dict'] (export writes the example's bare state_dict)",
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
    t.add_argument("--device", help=DEVICE_HELP)
    t.add_argument(
        "--no-accel",
        "--no-cuda",
        dest="no_accel",
        action="store_true",
        help="train on the CPU even where CUDA or MPS is present (today's example's "
        "--no-accel; --no-cuda of d8dd8ca^, which knew no other accelerator)",
    )
    t.add_argument(
        "--no-mps",
        action="store_true",
        help="never MPS: CUDA where present, else the CPU (the example's flag of 2022-2025)",
    )
    t.add_argument(
        "--data",
        metavar="DIR",
        help="MNIST folder (default: $MNIST_DISSECTED_DATA, the checkout's data/)",
    )
    t.add_argument("--progress", action="store_true", help="show progress bars")


def add_bench_flags(b: argparse.ArgumentParser) -> None:
    """``bench``'s flags."""
    b.add_argument("--device", help=f"device to benchmark: {DEVICE_HELP}")
    b.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="how many seeds to time the fast recipe with (default 5; --quick: 1)",
    )
    b.add_argument(
        "--quick",
        action="store_true",
        help="one seed and no DataLoader epoch: a smoke run, not a measurement",
    )
    b.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe a ``train`` command line asks for: the named recipe with the flags given
    replacing its fields (Part 4, §4.F shows that it is the notebook's recipe). The recipe
    checks itself (:class:`~mnist_dissected.recipes.Recipe`): a contradiction, such as
    ``--momentum`` with the fast recipe's Adam, raises a
    :class:`~mnist_dissected.errors.RecipeError`, which :func:`run_train` shows as a usage
    error; so is today's example's ``--lr 1.0``, Adadelta's rate, on its way to SGD
    (:func:`~mnist_dissected.example_compat.check_sgd_rate`)."""
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "test_batch_size": args.test_batch_size,
        "compile": args.compile or None,
        "cuda_graph": args.cuda_graph or None,
        "gamma": args.gamma,
    }
    if args.gamma is not None and RECIPES[args.recipe].schedule is None:
        overrides["schedule"] = "step"  # --gamma asks for today's example's StepLR
    recipe = get_recipe(args.recipe, **overrides)
    check_sgd_rate(recipe, momentum_given=args.momentum is not None)
    return recipe


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
        device = pick_device(args.device, no_accel=args.no_accel)
        if args.no_mps:
            device = without_mps(device, given=bool(args.device))
        recipe = recipe_from_args(args)
        if distributed and (args.compile or args.cuda_graph):
            raise UsageError(
                "under torchrun the model trains eagerly inside DistributedDataParallel: "
                "--compile and --cuda-graph are not used there; leave them out"
            )
        save_path, note = None, None
        if args.save_model is not None:  # "" too: an unset shell variable, not "don't save"
            save_path, note = check_save_path(args.save_model)
    except UsageError as e:
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
        device = pick_device(args.device)
    except UsageError as e:
        parser.error(str(e))
    seeds = 1 if args.quick else args.seeds or 5
    return run_bench(device=str(device), seeds=seeds, quick=args.quick, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mnist_dissected``: returns the exit status (0 done, 1 an error explained in
    one line, 2 a usage error, 130 interrupted by Ctrl-C); expected failures never end in a
    traceback. Ctrl-C (``KeyboardInterrupt``, which is no ``Exception``) is one line too: every
    write is atomic and undoes itself when interrupted, so nothing was saved, nothing is left
    half-written, and a checkpoint already at ``--save-model`` is as it was."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    if unknown:  # the subcommand's usage, not the top level's
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    run = {"train": run_train, "bench": run_bench_command, "score": run_score, "export": run_export}
    try:
        return run[args.command](args, subparser)
    except MnistDissectedError as e:  # expected: one line; anything else is a bug
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was saved", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it


if __name__ == "__main__":
    sys.exit(main())
