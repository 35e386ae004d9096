"""Every error of the package, under one base class (all parts; the CLI catches it).

Why this module exists: the CLI, a notebook or a script that uses the package can catch
:class:`MnistDissectedError` and know the message is meant for a person (one line, what to do),
while anything else is a bug that deserves its traceback. Each error also derives from the
built-in type it refines (``ValueError``, ``OSError``, ...), so ``except ValueError`` still
works. It sits at the bottom of the package: every module may import it, it imports none.
"""

from __future__ import annotations


class MnistDissectedError(Exception):
    """An expected failure, explained in one line: the base of every error of the package."""


class UsageError(MnistDissectedError, ValueError):
    """A value given to the package cannot be used: a flag, an argument, an environment
    variable. The CLI shows it as a usage error (exit status 2) before any work starts."""


class DeviceError(UsageError):
    """A device that cannot train a model here (``banana``, ``meta``, ``mps`` without Apple
    silicon, ``cuda:3`` on a machine with one GPU)."""


class RecipeError(UsageError):
    """A recipe whose fields contradict each other or are out of range."""
