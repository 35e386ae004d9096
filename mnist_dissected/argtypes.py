"""Command-line value types that check what they parse: ``--lr nan`` is a usage error (the CLI
of Part 4, §4.F, and Part 6's demonstrations).

Why this module exists: the CLI (``python -m mnist_dissected``) and Part 6's demonstrations
(:mod:`mnist_dissected.dist_demo`) both parse numbers from a command line, and a bad one must be
a usage error that says why before any work starts, never a traceback minutes later.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

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
