"""The checks of Part 2's exercises (``notebooks/2_mnist_model.ipynb``, exercises 6 to 8).

Why this module exists: each exercise has you write one layer of the forward pass by hand; one
call here runs it on small fixed inputs and compares it with PyTorch's own layer (``F.conv2d``,
``F.max_pool2d``, ``F.log_softmax``), saying what differs (:mod:`mnist_dissected.exercises`) and,
for the typical mistakes (a forgotten bias, a flipped kernel, average instead of max, exp
overflowing), what the mistake is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .exercises import ExerciseFailed, check_like, check_tensor, exercise, index_of


def _conv_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, weight, bias): conv1's shapes on two small images, then a 3-channel input with a
    non-square kernel (so a hard-coded channel count or a square-only loop fails)."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return [
        (draw(2, 1, 8, 8), draw(4, 1, 5, 5), draw(4)),
        (draw(3, 3, 7, 6), draw(2, 3, 3, 2), draw(2)),
    ]


@exercise("conv2d_by_shifts")
def check_conv2d_by_shifts(conv2d_by_shifts: Callable[..., torch.Tensor]) -> str:
    """Exercise 6: ``conv2d_by_shifts(x, weight, bias)``, x N x C x H x W, weight O x C x K x L,
    bias O; out N x O x (H - K + 1) x (W - L + 1), what ``F.conv2d`` gives (stride 1, no
    padding), built with one loop over the K x L kernel offsets: each adds ``weight[:, :, u, v]``
    times the input shifted by (u, v). Checked on conv1's shapes and on 3 channels with a
    2-wide kernel."""
    for x, weight, bias in _conv_cases():
        expected = F.conv2d(x, weight, bias)
        hints = {
            "The bias is missing: add bias[o] to every output of channel o": F.conv2d(x, weight),
            "The kernel is flipped (a true convolution): PyTorch's conv2d does not flip it, "
            "it multiplies weight[o, c, i, j] with x[n, c, row + i, col + j]": F.conv2d(
                x, weight.flip(2, 3), bias
            ),
        }
        name = (
            f"conv2d_by_shifts(x, weight, bias) with x {tuple(x.shape)}, weight "
            f"{tuple(weight.shape)}"
        )
        got = conv2d_by_shifts(x.clone(), weight.clone(), bias.clone())
        if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape != expected.shape:
            h, w = x.shape[2:]
            kh, kw = weight.shape[2:]
            raise ExerciseFailed(
                f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}: "
                f"a {kh} x {kw} kernel fits ({h} - {kh} + 1) x ({w} - {kw} + 1) times in an "
                f"image of {h} x {w}"
            )
        check_tensor(got, expected, name=name, hints=hints, atol=1e-4)
    return "conv2d_by_shifts: F.conv2d's numbers for 1 and 3 input channels, square and not"


@exercise("max_pool")
def check_max_pool(max_pool: Callable[..., torch.Tensor]) -> str:
    """Exercise 7: ``max_pool(x, k, stride)``, the largest value of each k x k window, the
    windows ``stride`` apart, so they may overlap (stride < k): ``F.max_pool2d(x, k, stride)``,
    N x C x ((H - k) // stride + 1) x ((W - k) // stride + 1). Overlapping 3 x 3 windows first
    (a reshape cannot make those), then §2.6's 2 x 2 and windows one pixel apart."""
    generator = torch.Generator().manual_seed(0)
    for shape, k, stride in (((2, 3, 7, 7), 3, 2), ((1, 2, 8, 6), 2, 2), ((1, 1, 6, 9), 3, 1)):
        x = torch.randn(*shape, generator=generator)
        h, w = shape[2:]
        expected = F.max_pool2d(x, k, stride)
        name = f"max_pool(x, k={k}, stride={stride}) with x {shape}"
        got = max_pool(x.clone(), k, stride)
        if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape != expected.shape:
            raise ExerciseFailed(
                f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}: windows "
                f"of {k} pixels, {stride} apart, fit (H - k) // stride + 1 = ({h} - {k}) // "
                f"{stride} + 1 = {(h - k) // stride + 1} times down and "
                f"({w} - {k}) // {stride} + 1 = {(w - k) // stride + 1} times across"
            )
        hints = {
            "That is average pooling: take the max of each window, not its mean": (
                F.avg_pool2d(x, k, stride)
            ),
        }
        check_tensor(got, expected, name=name, hints=hints)
    return (
        "max_pool: F.max_pool2d's numbers for 3 x 3 windows 2 apart, 2 x 2 ones, 3 x 3 ones 1 apart"
    )


@exercise("log_softmax_by_hand")
def check_log_softmax_by_hand(log_softmax_by_hand: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Exercise 8: ``log_softmax_by_hand(z)``, N x 10 scores -> N x 10 log-probabilities,
    ``z - logsumexp(z)`` per row, computed stably (subtract each row's max before ``exp``).
    Small scores first (the plain formula passes), then scores in the hundreds and thousands,
    where ``exp`` overflows float32 (it does above about 88)."""
    generator = torch.Generator().manual_seed(0)
    small = torch.randn(4, 10, generator=generator)
    large = small * 400 + torch.tensor([[0.0], [1000.0], [-1000.0], [90.0]])
    for label, z in (("small", small), ("large", large)):
        expected = F.log_softmax(z, dim=1)
        name = f"log_softmax_by_hand(z) for {label} scores (up to {z.abs().max():.0f})"
        got = log_softmax_by_hand(z.clone())
        check_like(got, expected, name=name)
        bad = (~torch.isfinite(got)).flatten().nonzero()
        if len(bad):
            first = index_of(int(bad[0]), got.shape)
            raise ExerciseFailed(
                f"{name} holds {len(bad)} value(s) that are NaN or infinite, the first at index "
                f"{first} ({got[first].item()}) where {expected[first].item():.6g} was expected: "
                "exp overflows float32 above about 88 (inf, and inf / inf is NaN). Subtract "
                "each row's max first: z - m - log(sum(exp(z - m)))"
            )
        hints = {
            "Those are the probabilities (softmax), not their logarithm": expected.exp(),
            "Normalized over the wrong dimension: each row (dim=1) is one image's scores": (
                F.log_softmax(z, dim=0)
            ),
            "Only the max was subtracted: subtract log(sum(exp(z - m))) from z - m too": (
                z - z.amax(dim=1, keepdim=True)
            ),
        }
        check_tensor(got, expected, name=name, hints=hints, atol=1e-4)
    return "log_softmax_by_hand: F.log_softmax's numbers, for small scores and for huge ones"
