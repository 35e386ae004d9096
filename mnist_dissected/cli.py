"""Command line: ``python -m mnist_dissected train`` (the example's flags) and ``bench``.

Why this module exists: the notebooks end with "the CLI line that reproduces this", so a reader
can train without Jupyter, the way pytorch/examples' ``mnist/main.py`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .models import MODELS
from .train import RECIPES


def checked_number(convert, ok, requirement: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``; a bad value is a
    usage error that says why, not a traceback."""
    def parse(text: str):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mnist_dissected",
                                     description="Train and benchmark the MNIST example.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (the PyTorch MNIST example's flags)",
                       description="Train Net or LeNet on MNIST, as pytorch/examples' "
                       "mnist/main.py does. Recipe defaults apply where a flag is not given.")
    t.add_argument("--model", choices=sorted(MODELS), default="net", help="architecture")
    t.add_argument("--recipe", choices=sorted(RECIPES), default="classic",
                   help="classic: the example's SGD; fast: Adam + one-cycle, >= 99%% in 3 epochs")
    t.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="input batch size for training (classic 64, fast 256)")
    t.add_argument("--test-batch-size", type=positive_int, metavar="N",
                   help="input batch size for testing (default 1000)")
    t.add_argument("--epochs", type=positive_int, metavar="N",
                   help="number of epochs to train (classic 10, fast 3)")
    t.add_argument("--lr", type=positive_float, metavar="LR", help="learning rate (0.01)")
    t.add_argument("--momentum", type=momentum_value, metavar="M",
                   help="SGD momentum (classic 0.5)")
    t.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    t.add_argument("--log-interval", type=positive_int, default=10, metavar="N",
                   help="how many batches to wait before logging training status (10)")
    t.add_argument("--save-model", nargs="?", const="mnist_cnn.pt", default=None,
                   metavar="PATH", help="save the trained model (default path mnist_cnn.pt)")
    t.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps (default: CUDA, then MPS, then CPU)")
    t.add_argument("--data", default=None, metavar="DIR",
                   help="MNIST folder (default: $MNIST_DISSECTED_DATA, the checkout's data/)")
    t.add_argument("--progress", action="store_true", help="show progress bars")

    b = sub.add_parser("bench", help="time the two data paths and the fast recipe (CPU)",
                       description="For Net on this machine: seconds per epoch through the "
                       "DataLoader path vs the tensor path, and seconds to reach 99.0%%.")
    b.add_argument("--device", default=None, help="device to benchmark (default: auto)")
    b.add_argument("--repeats", type=positive_int, default=1, metavar="N",
                   help="repeat each timing N times and report the best")
    return parser


def run_train(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import save_checkpoint
    from .train import pick_device, train_model

    try:
        device = pick_device(args.device)
        torch.empty(0, device=device)  # fail now, with a clear message, on a missing device
    except (RuntimeError, AssertionError) as e:
        print(f"error: device {args.device!r} is not usable here: {e}", file=sys.stderr)
        return 2
    print(f"Training {args.model} with the {args.recipe} recipe on {device}")
    model, history, recipe = train_model(
        args.model, args.recipe, seed=args.seed, device=device, progress=args.progress,
        log_interval=args.log_interval, verbose=True, root=args.data, epochs=args.epochs,
        batch_size=args.batch_size, test_batch_size=args.test_batch_size, lr=args.lr,
        momentum=args.momentum)
    if args.save_model:
        path = save_checkpoint(args.save_model, model, recipe, history, args.seed)
        print(f"Saved {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import CorruptDataError, MNISTNotFoundError

    try:
        if args.command == "train":
            return run_train(args)
        from .bench import run_bench

        return run_bench(device=args.device, repeats=args.repeats)
    except (MNISTNotFoundError, CorruptDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
