"""The checks behind the exercises of every part: one call runs your code and says what is wrong.

Why this module exists: an exercise checked by a bare ``assert`` says only "False". A check here
says what differs: the wrong type (a forgotten ``return``), both shapes, the dtype, the first
element that is off (its index, what you got, what was expected, by how much), a NaN, the input
whose gradient fails ``torch.autograd.gradcheck``; and, where a typical mistake is known, what
it looks like. Each part's exercises are in a module of their own, ``exercises_part<N>.py``
(Part 1's in :mod:`~mnist_dissected.exercises_part1`, Part 5's in
:mod:`~mnist_dissected.exercises_part5`), built from these pieces:

- :func:`exercise` turns a function that checks one exercise into the call a notebook makes. A
  stub that still raises a bare ``NotImplementedError`` is reported in one line as not solved
  yet, without an error (so Run All on an unsolved notebook stays green); a wrong answer raises
  :class:`ExerciseFailed`; a right one prints one line, ``✓ <what was checked>``.
- :func:`check_tensor`, :func:`check_like`, :func:`check_number` compare a result with the
  expected one; :func:`check_gradient` runs ``gradcheck`` one input at a time.

The conventions a notebook follows (cell tags ``exercise``, ``check``, ``solution``) are in
``tools/student_edition.py``, which writes the edition without the solutions.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec

import torch

from .errors import MnistDissectedError

P = ParamSpec("P")

#: ``torch.testing.assert_close``'s default tolerances (rtol, atol) per floating dtype.
TOLERANCES = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}

#: The one line a check prints for a stub that still raises ``NotImplementedError``.
NOT_SOLVED = (
    "○ {name}: not solved yet (it still raises NotImplementedError). Write your code in the "
    "cell above, run that cell, then this one."
)


class ExerciseFailed(MnistDissectedError, AssertionError):
    """Your answer to an exercise is wrong; the message says where. An ``AssertionError``, so a
    test runner reports it as a failed check, not as a crash."""


def exercise(name: str) -> Callable[[Callable[P, str]], Callable[P, None]]:
    """Make ``check`` (which returns what it verified, or raises :class:`ExerciseFailed`) the
    one call of an exercise: ``✓ <what it verified>`` when right, one "not solved yet" line when
    the reader's function is still the stub (a bare ``raise NotImplementedError``).

    Why the stub is not an error: a learner's notebook must run top to bottom before any
    exercise is solved. A ``NotImplementedError`` with a message is not the stub (PyTorch raises
    those for operations a device lacks) and propagates. The check runs with its own random
    numbers (``fork_rng``), so calling it leaves the notebook's random draws as they were. A
    wrong answer's traceback ends at the notebook's call: the message says what is wrong, the
    check's own lines would not help."""

    def decorate(check: Callable[P, str]) -> Callable[P, None]:
        @functools.wraps(check)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            __tracebackhide__ = True  # pytest and IPython leave this frame out where they can
            try:
                with torch.random.fork_rng(devices=[]):
                    verified = check(*args, **kwargs)
            except NotImplementedError as error:
                if error.args:
                    raise
                print(NOT_SOLVED.format(name=name))
                return
            except ExerciseFailed as failed:  # the message says it all: no trail into the check
                raise failed.with_traceback(None) from None
            print(f"✓ {verified}")

        return run

    return decorate


def check_like(got: Any, like: torch.Tensor, *, name: str, exact_dtype: bool = True) -> None:
    """``got`` is a tensor of ``like``'s shape and dtype (with ``exact_dtype=False``, of its
    kind: floating point, integer or bool). Raises :class:`ExerciseFailed` saying which not."""
    __tracebackhide__ = True
    if not isinstance(got, torch.Tensor):
        raise ExerciseFailed(f"{name} should be a tensor, not {describe(got)}")
    if got.shape != like.shape:
        raise ExerciseFailed(
            f"{name} has shape {tuple(got.shape)}, expected {tuple(like.shape)}"
            + _shape_hint(tuple(got.shape), tuple(like.shape))
        )
    if exact_dtype and got.dtype != like.dtype:
        raise ExerciseFailed(f"{name} has dtype {got.dtype}, expected {like.dtype}")
    if _kind(got.dtype) != _kind(like.dtype):
        raise ExerciseFailed(f"{name} has dtype {got.dtype}, expected {_kind(like.dtype)}")


def check_tensor(
    got: Any,
    expected: torch.Tensor,
    *,
    name: str,
    rtol: float | None = None,
    atol: float | None = None,
    exact_dtype: bool = True,
    hints: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """``got`` equals ``expected`` within ``torch.testing.assert_close``'s tolerances (or
    ``rtol``/``atol``), exactly for integers and bools. Otherwise raises
    :class:`ExerciseFailed`: the wrong type, both shapes, the dtype, the first NaN, or the first
    element off. ``hints`` maps a sentence to the result a known mistake gives; if ``got`` is
    that result, the sentence is added."""
    __tracebackhide__ = True
    check_like(got, expected, name=name, exact_dtype=exact_dtype)
    problem = _difference(got, expected, rtol=rtol, atol=atol)
    if problem:
        raise ExerciseFailed(f"{name} {problem}{_hint(got, hints)}")


def check_number(
    got: Any,
    expected: float,
    *,
    name: str,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    hints: Mapping[str, float] | None = None,
) -> float:
    """``got`` (a Python number or a one-element tensor) is ``expected`` within the tolerances;
    returns it as a float. Otherwise raises :class:`ExerciseFailed` with both numbers."""
    __tracebackhide__ = True
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise ExerciseFailed(f"{name} should be a number, not {describe(got)}")
    value = float(got)
    if math.isclose(value, expected, rel_tol=rel_tol, abs_tol=abs_tol):
        return value
    hint = next(
        (
            f". {text}"
            for text, wrong in (hints or {}).items()
            if math.isclose(value, wrong, rel_tol=max(rel_tol, 1e-6), abs_tol=abs_tol)
        ),
        "",
    )
    raise ExerciseFailed(
        f"{name} is {value:.6g}, expected {expected:.6g} (off by {value - expected:+.3g}){hint}"
    )


def check_gradient(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    *,
    name: str,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> None:
    """The backward of ``fn`` (one tensor out) agrees with finite differences for each input
    that requires grad: ``torch.autograd.gradcheck`` on one input at a time (the others held
    fixed), so a failure names the input. Then both Jacobians are compared element by element
    to say where they differ. Inputs must be float64 and small: finite differences cost two
    calls of ``fn`` per input element."""
    __tracebackhide__ = True
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        params = []
    for i, value in enumerate(inputs):
        if not value.requires_grad:
            continue
        if value.dtype != torch.float64:
            raise ValueError(f"gradcheck needs float64 inputs; input {i} is {value.dtype}")
        label = f"`{params[i]}` (input {i})" if i < len(params) else f"input {i}"

        def only(x: torch.Tensor, i: int = i) -> torch.Tensor:
            return fn(*[x if j == i else v.detach() for j, v in enumerate(inputs)])

        if torch.autograd.gradcheck(
            only, (value,), eps=eps, atol=atol, rtol=rtol, raise_exception=False
        ):
            continue
        analytical = torch.autograd.functional.jacobian(only, value)
        numerical = numerical_jacobian(only, value, eps=eps)
        where = _difference(
            analytical,
            numerical,
            rtol=rtol,
            atol=atol,
            words=("finite differences", "backward gives", "finite differences"),
        )
        raise ExerciseFailed(
            f"the gradient of {name} with respect to {label} fails its gradcheck: "
            + (f"the Jacobian from backward {where}" if where else "see torch.autograd.gradcheck")
        )


def numerical_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """d fn(x) / d x by central differences, shaped ``fn(x).shape + x.shape`` (as
    ``torch.autograd.functional.jacobian``): what ``gradcheck`` compares the backward with."""
    flat = x.detach().reshape(-1).clone()
    columns = []
    with torch.no_grad():
        for j in range(flat.numel()):
            step = torch.zeros_like(flat)
            step[j] = eps
            up, down = fn((flat + step).view_as(x)), fn((flat - step).view_as(x))
            columns.append((up - down) / (2 * eps))
    return torch.stack(columns, dim=-1).reshape(*columns[0].shape, *x.shape)


def describe(value: Any) -> str:
    """What a value is, for a message: ``None`` comes with the usual reason."""
    if value is None:
        return "None (did you forget `return`?)"
    return f"a {type(value).__name__}"


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "a bool dtype"
    if dtype.is_complex:
        return "a complex dtype"
    return "a floating-point dtype" if dtype.is_floating_point else "an integer dtype"


def _shape_hint(got: tuple[int, ...], expected: tuple[int, ...]) -> str:
    if [n for n in got if n != 1] == [n for n in expected if n != 1]:
        return ": a dimension of size 1 is missing or extra (unsqueeze, squeeze)"
    if math.prod(got) == math.prod(expected):
        return ": the same number of elements, arranged differently"
    return ""


def index_of(flat: int, shape: torch.Size) -> tuple[int, ...]:
    """The index in a tensor of ``shape`` of its element ``flat`` of the flattened tensor."""
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape))


def _show(value: float | int | bool) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _difference(
    got: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float | None,
    atol: float | None,
    words: tuple[str, str, str] = ("the expected value", "got", "expected"),
) -> str:
    """How ``got`` differs from ``expected`` (same shape and kind) in one phrase, or ''.
    ``words``: what ``expected`` is, then how to call each side's number."""
    got, expected = got.detach().cpu(), expected.detach().cpu()
    if expected.dtype.is_floating_point:
        default_rtol, default_atol = TOLERANCES.get(expected.dtype, TOLERANCES[torch.float32])
        got, wanted = got.double(), expected.double()
        nans = (got.isnan() & ~wanted.isnan()).flatten().nonzero()
        if len(nans):
            first = index_of(int(nans[0]), got.shape)
            return (
                f"holds {len(nans)} NaN(s) where numbers were expected, the first at index {first}"
            )
        same = torch.isclose(
            got,
            wanted,
            rtol=default_rtol if rtol is None else rtol,
            atol=default_atol if atol is None else atol,
            equal_nan=True,
        )
    else:
        got, wanted = got.long(), expected.long()
        same = got == wanted
    off = (~same).flatten().nonzero()
    if not len(off):
        return ""
    flat = int(off[0])
    g, e = got.flatten()[flat].item(), wanted.flatten()[flat].item()
    by = f"{g - e:+d}" if isinstance(g, int) else f"{g - e:+.4g}"
    against, got_word, expected_word = words
    return (
        f"differs from {against} at {len(off)} of {same.numel()} elements; the first is at "
        f"index {index_of(flat, got.shape)}: {got_word} {_show(g)}, {expected_word} {_show(e)} "
        f"(off by {by})"
    )


def _hint(got: torch.Tensor, hints: Mapping[str, torch.Tensor] | None) -> str:
    for text, wrong in (hints or {}).items():
        if wrong.shape == got.shape and not _difference(got, wrong, rtol=None, atol=None):
            return f". {text}"
    return ""
