"""The command line's checkpoints: where they are written, ``score`` and ``export`` (Part 4, §4.G
for checkpoints, §4.F for the command line).

Why this module exists: a checkpoint crosses between the package and the PyTorch example both
ways, and the command line is where a reader does it. ``score`` prints a checkpoint's test
score in the example's own line (whole percents), for the package's checkpoints and the
example's ``mnist_cnn.pt`` alike; ``export`` writes the bare ``state_dict`` that the example's
code loads. A path is checked before any work (:func:`check_save_path` serves ``train
--save-model`` too), so every mistake is a usage error. The work itself is other modules':
loading and saving :mod:`~mnist_dissected.checkpoint`'s, scoring
:func:`~mnist_dissected.train.evaluate`'s, the example's conventions
:mod:`~mnist_dissected.example_compat`'s.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .argtypes import positive_int
from .devices import pick_device
from .errors import UsageError

#: The example's ``--test-batch-size`` default.
TEST_BATCH_SIZE = 1000


def add_score_flags(s: argparse.ArgumentParser, *, device_help: str) -> None:
    """``score``'s arguments: the checkpoint, then the example's flags that apply to testing."""
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint or a bare state_dict")
    s.add_argument("--device", help=device_help)
    s.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=TEST_BATCH_SIZE,
        metavar="N",
        help=f"input batch size for testing (default {TEST_BATCH_SIZE})",
    )
    s.add_argument(
        "--data",
        metavar="DIR",
        help="MNIST folder (default: $MNIST_DISSECTED_DATA, the checkout's data/)",
    )


def add_export_flags(e: argparse.ArgumentParser) -> None:
    """``export``'s arguments: what to read, where to write."""
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint or a bare state_dict")
    e.add_argument("out", metavar="OUT", help="the bare state_dict to write, e.g. mnist_cnn.pt")


def check_save_path(text: str, *, flag: str = "--save-model") -> tuple[Path, str | None]:
    """A path a checkpoint will be written to (``flag`` names it in the messages), checked
    before any work (a temporary file is made there and deleted, so that what would fail at
    saving fails now); returns it and a note to print, or raises :class:`~mnist_dissected.
    errors.UsageError` saying what is wrong with it: an empty path (an unset shell variable,
    which would work and save nothing), a folder, a device, FIFO or socket (never replaced), a
    place that cannot be written. A symbolic link is fine: the file it points to is written."""
    from .files import NotARegularFileError, check_writable, write_target

    if not text:
        flagged = flag.startswith("-")
        example = f"{flag} mnist_cnn.pt, or leave the flag out" if flagged else "mnist_cnn.pt"
        raise UsageError(
            f"{flag} was given an empty path (an unset shell variable?); give a file name, "
            f"e.g. {example}"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(f"{text} is a folder; give a file name, e.g. {path / 'mnist_cnn.pt'}")
    try:
        target = write_target(path)  # where path is a symbolic link, the file it points to
    except NotARegularFileError as e:
        raise UsageError(str(e)) from None
    parent = target.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"cannot save under {existing}: it is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {existing}: permission denied")
    try:
        check_writable(target)  # leaves nothing behind, not even the folders it made
    except OSError as e:
        raise UsageError(f"cannot save to {text}: {e.strerror or e}") from None
    note = None if parent.is_dir() else f"Note: the folder {parent} will be created"
    return path, note


def existing_checkpoint(text: str) -> Path:
    """The file ``CHECKPOINT`` names, or a :class:`~mnist_dissected.errors.UsageError` where
    there is none: a typo is a usage error, not a traceback."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(f"{text} is a folder; give a checkpoint file, e.g. mnist_cnn.pt")
    if not path.is_file():
        raise UsageError(
            f"there is no file {text}; give a checkpoint (train --save-model writes "
            "mnist_cnn.pt) or the example's bare state_dict"
        )
    return path


def run_score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``score``: the checkpoint's mean loss and accuracy on the 10,000 test images, printed as
    the example's ``test()`` prints them (blank lines and whole percents included). Returns 0."""
    from .checkpoint import load_checkpoint
    from .data import TensorBatches, load_mnist
    from .example_compat import example_test_line
    from .train import evaluate

    try:
        source = existing_checkpoint(args.checkpoint)
        device = pick_device(args.device)
    except UsageError as e:
        parser.error(str(e))
    model, _ = load_checkpoint(source)
    test_set = load_mnist(train=False, root=args.data, root_given_as="--data")
    pad = (model.input_size - 28) // 2  # LeNet: 32 x 32
    # the very numbers of the example's DataLoader (Part 1, §1.14), without a PIL image each
    batches = TensorBatches.from_dataset(test_set, device, pad=pad, batch_size=args.test_batch_size)
    loss, accuracy = evaluate(model.to(device), batches, device=device)
    n = len(test_set)
    print(example_test_line(loss, round(accuracy * n), n))
    return 0


def run_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``export``: the checkpoint's weights as a bare ``state_dict``, the file the example
    saves and loads, written atomically; never over the checkpoint it reads. Returns 0."""
    from .checkpoint import load_checkpoint, save_state_dict

    try:
        source = existing_checkpoint(args.checkpoint)
        out, note = check_save_path(args.out, flag="OUT")
        if out.exists() and os.path.samefile(source, out):
            raise UsageError(
                f"OUT and CHECKPOINT are the same file ({source}), and export never writes "
                "over what it reads; give OUT another name, e.g. "
                f"{source.with_name(source.stem + '_state_dict.pt')}"
            )
    except UsageError as e:
        parser.error(str(e))
    model, _ = load_checkpoint(source)
    if note:
        print(note)
    save_state_dict(out, model)
    print(
        f"Wrote {out}: the bare state_dict of a {type(model).__name__}; load it with "
        f"model.load_state_dict(torch.load({str(out)!r}, weights_only=True))"
    )
    return 0
