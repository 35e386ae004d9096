"""Drawn diagrams for Parts 2 and 3: what one layer computes, with the numbers it computes.
Part 2: a convolution's weighted sum (§2.3), channels summed into one map (§2.4), max pooling
(§2.6, and its backward in Part 3, §3.8), ReLU and pooling in both orders (§2.7), dropout's mask
(§2.8), flattening (§2.9), log-softmax (§2.10, and its gradient in Part 3, §3.9), the receptive
field of one ``conv2`` output (§2.I); Part 3: ReLU's backward (§3.7). The graphs
(architectures, autograd, a linear layer's backward, DDP's all-reduce) are
:mod:`~mnist_dissected.diagrams_graphs`'s.

Why this module exists: a picture of a convolution in a textbook shows made-up numbers; these
show the numbers PyTorch computes (each figure runs the real ``F.conv2d``, ``F.max_pool2d``,
``F.dropout`` or ``Net``), so a notebook can draw the very tensors it just printed. Every
function returns a matplotlib ``Figure`` with an ``alt_text`` attribute that says what it shows;
:func:`show_figure` (from :mod:`~mnist_dissected.diagrams_board`, the layout they share)
displays it in a notebook as an image with that alt text::

    from mnist_dissected.diagrams import draw_max_pool, show_figure
    show_figure(draw_max_pool(x))
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .diagrams_board import (
    Board,
    Term,
    alt_text,
    as_grid,
    number,
    seeded,
    shaped,
    show_figure,
    size_text,
)
from .models import Net
from .plots import STYLE, styled

__all__ = [  # show_figure and alt_text too: a notebook imports all it needs from here
    "alt_text",
    "conv2_reach",
    "draw_channel_sum",
    "draw_convolution",
    "draw_dropout_mask",
    "draw_flatten",
    "draw_log_softmax",
    "draw_max_pool",
    "draw_receptive_field",
    "draw_relu_and_pool",
    "draw_relu_backward",
    "receptive_field",
    "show_figure",
]


# --------------------------------------------------------------------------- Part 2's layers


def conv(image: torch.Tensor, kernel: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """PyTorch's own 2-D convolution of one H x W grid by one kernel: the numbers to draw."""
    return F.conv2d(image[None, None], kernel[None, None], torch.tensor([float(bias)]))[0, 0]


@styled
def draw_convolution(
    image: Any, kernel: Any, *, at: tuple[int, int] = (0, 0), bias: float = 0.0
) -> Figure:
    """A kernel over an image at one position, the products of the window and the kernel, their
    sum (+ bias) and where it lands in the output map. Part 2, §2.3: a convolution is a weighted
    sum, the same one at every position. The sum drawn is the window's own, and equals
    ``F.conv2d`` at ``at``, which fills the output map drawn beside it."""
    x, k = as_grid(image), as_grid(kernel)
    out = conv(x, k, bias)
    (r, c), (kh, kw) = at, k.shape
    if not (0 <= r < out.shape[0] and 0 <= c < out.shape[1]):
        raise ValueError(f"at={at} is outside the {size_text(*out.shape)} output map")
    products = x[r : r + kh, c : c + kw] * k
    total = float(products.sum()) + bias
    board, mid = Board(), 1 + max(x.shape[0], out.shape[0]) / 2
    terms = [shaped("image", x), "⊙", shaped("kernel", k), "="]
    terms += [("products", "window ⊙ kernel", products), "→", shaped("output", out)]
    grids = board.equation(0, mid, terms)
    board.outline(grids["image"], r, c, rows=kh, cols=kw, gid="window")
    board.outline(grids["output"], r, c, gid="output-cell")
    plus = " + b" if bias else ""
    prod = grids["products"]
    board.text(prod.x + prod.cols / 2, prod.bottom + 0.9, f"Σ{plus} = {number(total)}", gid="sum")
    alt = (
        f"Convolution as a weighted sum: a {size_text(kh, kw)} kernel over a "
        f"{size_text(*x.shape)} image; at row {r}, column {c} the window's {kh * kw} products "
        f"sum{plus.replace(' b', ' the bias')} to {number(total)}, the value at ({r}, {c}) of "
        f"the {size_text(*out.shape)} output map."
    )
    return board.finish(f"A convolution at ({r}, {c}): multiply, then sum", alt)


@styled
def draw_channel_sum(inputs: Any, kernels: Any, *, bias: float = 0.0) -> Figure:
    """Several input channels, each convolved with its own kernel, summed with the bias into
    one output map. Part 2, §2.4: an output channel of ``conv2`` sees all of ``conv1``'s
    channels, and one of its kernels is C x k x k. The map drawn is the sum of the per-channel
    maps, which equals ``F.conv2d`` over all the channels at once."""
    xs = torch.as_tensor(inputs, dtype=torch.get_default_dtype())
    ks = torch.as_tensor(kernels, dtype=torch.get_default_dtype())
    if xs.dim() != 3 or ks.dim() != 3 or len(xs) != len(ks):
        raise ValueError(
            f"need C x H x W inputs and C x k x k kernels, got {tuple(xs.shape)} and "
            f"{tuple(ks.shape)}"
        )
    partial = [conv(as_grid(x), as_grid(k)) for x, k in zip(xs, ks, strict=True)]
    output = torch.stack(partial).sum(0) + bias
    board, row_height = Board(), max(xs.shape[1], ks.shape[1]) + 2
    ends = []
    for ch, (x, k, p) in enumerate(zip(xs, ks, partial, strict=True)):
        mid = 1 + row_height * ch + xs.shape[1] / 2
        terms: list[Term] = [(f"input{ch}", f"channel {ch}", x), "∗", (f"kernel{ch}", "", k)]
        grids = board.equation(0, mid, [*terms, "=", (f"channel-map{ch}", "", p)])
        ends.append((grids[f"channel-map{ch}"].right, mid))
    left, mid = ends[0][0] + 3.5, (ends[0][1] + ends[-1][1]) / 2
    out = board.grid(output, left, mid - output.shape[0] / 2, gid="output", title="output")
    for end in ends:
        board.arrow((end[0] + 0.2, end[1]), (left - 0.2, mid))
    board.text(left + out.cols / 2, out.bottom + 0.9, f"Σ over {len(xs)} channels + {number(bias)}")
    alt = (
        f"{len(xs)} input channels, each convolved with its own {size_text(*ks.shape[1:])} "
        f"kernel; the {len(xs)} maps and the bias {number(bias)} sum into one "
        f"{size_text(*output.shape)} output map."
    )
    return board.finish("Channels are summed into one output map", alt)


@styled
def draw_max_pool(x: Any, *, size: int = 2) -> Figure:
    """The grid cut into ``size`` x ``size`` windows, the maximum of each outlined, and the
    pooled map. Part 2, §2.6 (what max pooling keeps) and Part 3, §3.8 (its backward sends the
    gradient to those maxima only). The maxima are the ones ``F.max_pool2d`` picks (its indices);
    rows and columns past the last whole window are in no window: pooling drops them."""
    grid = as_grid(x)
    pooled, where = F.max_pool2d(grid[None, None], size, return_indices=True)
    pooled, where = pooled[0, 0], where[0, 0]
    board = Board()
    grids = board.equation(
        0, 1 + grid.shape[0] / 2, [shaped("input", grid), "→", shaped("pooled", pooled)]
    )
    for i, j in np.ndindex(*pooled.shape):
        r, c = divmod(int(where[i, j]), grid.shape[1])
        board.outline(grids["input"], r, c, gid="max", fill=True)
        board.outline(
            grids["input"], i * size, j * size, rows=size, cols=size, gid="window", color="black"
        )
    dropped = (grid.shape[0] % size, grid.shape[1] % size)
    note = " (the last rows/columns fit no window: dropped)" if any(dropped) else ""
    board.text(0, grids["input"].bottom + 0.9, f"kept: the maximum of each window{note}", ha="left")
    alt = (
        f"{size}×{size} max pooling of a {size_text(*grid.shape)} grid: of each window only "
        f"the maximum is kept, {pooled.numel()} of {grid.numel()} values, giving a "
        f"{size_text(*pooled.shape)} map: {', '.join(number(v) for v in pooled.flatten())}."
    )
    return board.finish(f"{size}×{size} max pooling keeps the largest of each window", alt)


@styled
def draw_dropout_mask(x: Any, *, p: float = 0.5, seed: int = 0) -> Figure:
    """The input, dropout's random 0/1 mask, and the output: the kept values scaled by
    1/(1 - p) so that the mean is unchanged. Part 2, §2.8 (and its backward, Part 3, §3.F).
    The numbers are ``F.dropout(x, p)``'s after ``torch.manual_seed(seed)`` (the caller's
    random state is left as it was)."""
    grid = as_grid(x)
    with seeded(seed):
        out = F.dropout(grid, p=p, training=True)
    with seeded(seed):  # the same draws on ones: the mask, whatever zeros x holds
        mask = (F.dropout(torch.ones_like(grid), p=p, training=True) != 0).to(grid.dtype)
    scale = 1 / (1 - p) if p < 1 else 0.0
    board = Board()
    terms = [shaped("input", grid), "⊙", ("mask", "mask (1: kept)", mask), f"× {number(scale)} ="]
    board.equation(0, 1 + grid.shape[0] / 2, [*terms, ("output", "output", out)])
    kept = int(mask.sum())
    alt = (
        f"Dropout with p = {p:g}, seed {seed}: the mask keeps {kept} of {grid.numel()} values "
        f"of the {size_text(*grid.shape)} input and zeroes the rest; the kept ones are "
        f"multiplied by 1/(1 − p) = {number(scale)}."
    )
    return board.finish(f"Dropout, p = {p:g}: a random mask, the rest scaled by 1/(1 − p)", alt)


@styled
def draw_relu_and_pool(x: Any, *, size: int = 2) -> Figure:
    """ReLU and max pooling in both orders on one grid: ``Net``'s pool-then-ReLU above,
    ``LeNet``'s ReLU-then-pool below, and the map each ends with. Part 2, §2.7: ReLU never
    decreases, so the largest of a window stays the largest after it. The maps are
    ``F.relu(F.max_pool2d(x))`` and ``F.max_pool2d(F.relu(x))``."""
    grid = as_grid(x)
    pooled = F.max_pool2d(grid[None, None], size)[0, 0]
    relued = F.relu(grid)
    pool_relu, relu_pool = F.relu(pooled), F.max_pool2d(relued[None, None], size)[0, 0]
    pool, relu = f"→ pool {size}×{size} →", "→ ReLU →"
    rows: list[list[Term]] = [
        [shaped("input", grid), pool, ("pooled", "", pooled), relu],
        [shaped("input2", grid, "input"), relu, ("relued", "", relued), pool],
    ]
    rows[0].append(("pool-relu", "pool, then ReLU (Net)", pool_relu))
    rows[1].append(("relu-pool", "ReLU, then pool (LeNet)", relu_pool))
    board, height = Board(), grid.shape[0] + 2.5
    for k, terms in enumerate(rows):
        board.equation(0, 1 + grid.shape[0] / 2 + k * height, terms)
    same = "the same" if torch.equal(pool_relu, relu_pool) else "different"
    alt = (
        f"ReLU and {size}×{size} max pooling in both orders on a {size_text(*grid.shape)} grid: "
        f"pooling then ReLU (Net) and ReLU then pooling (LeNet) give {same} "
        f"{size_text(*pooled.shape)} map, {', '.join(number(v) for v in pool_relu.flatten())}."
    )
    return board.finish(f"Pool then ReLU, or ReLU then pool: {same} map", alt)


@styled
def draw_flatten(x: Any) -> Figure:
    """C maps of H x W and the one row ``torch.flatten`` makes of them: channel 0's rows first,
    then channel 1's, and so on. Part 2, §2.9: each image's feature maps become the inputs of
    the first linear layer in this order. The row drawn is ``torch.flatten(x)``."""
    maps = torch.as_tensor(x, dtype=torch.get_default_dtype()).detach().cpu()
    if maps.dim() != 3:
        raise ValueError(f"need C x H x W maps, got shape {tuple(maps.shape)}")
    (c, h, w), flat = maps.shape, torch.flatten(maps)
    board = Board()
    for ch in range(c):
        board.grid(maps[ch], ch * (w + 1.5), 1, gid=f"map{ch}", title=f"channel {ch}")
    row = board.grid(flat, 0, h + 3.5, gid="flat", title=f"torch.flatten: {c * h * w} numbers")
    for ch in range(c):  # which stretch of the row each channel became
        board.ax.vlines(ch * h * w, row.y - 0.2, row.bottom + 0.2, lw=2.2, color="black")
        board.text(ch * h * w + h * w / 2, row.bottom + 0.6, f"channel {ch}", gid="segment")
    board.arrow((c * (w + 1.5) / 2, h + 1.2), (c * (w + 1.5) / 2, row.y - 0.6))
    alt = (
        f"{c} maps of {size_text(h, w)} flattened into one row of {c * h * w} numbers: channel "
        f"0's {h * w} values row by row, then channel 1's, and so on to channel {c - 1}."
    )
    return board.finish(f"Flatten: {c} maps of {size_text(h, w)} → {c * h * w} numbers", alt)


@styled
def draw_log_softmax(logits: Any, target: Any = None) -> Figure:
    """Log-softmax row by row: each row of scores minus its logsumexp is the row's
    log-probabilities, whose exponentials sum to 1. Part 2, §2.10. With ``target`` (one class
    per row), below: the gradient of the mean NLL loss with respect to the scores, autograd's,
    beside (softmax − onehot) / N. Part 3, §3.9."""
    z = as_grid(logits)
    n, classes = z.shape
    log_p = F.log_softmax(z, dim=1)
    board = Board()
    terms: list[Term] = [shaped("logits", z, "scores z"), "−"]
    terms += [("lse", "logsumexp", z.logsumexp(1, keepdim=True)), "="]
    terms += [("log-probs", "log_softmax(z)", log_p), "Σ exp →"]
    board.equation(0, 1 + n / 2, [*terms, ("sums", "", log_p.exp().sum(1, keepdim=True))])
    alt = (
        f"Log-softmax of {n} rows of {classes} scores: each row minus its logsumexp "
        f"({', '.join(number(v) for v in z.logsumexp(1))}) gives its log-probabilities, "
        "whose exponentials sum to 1."
    )
    if target is not None:
        t = torch.as_tensor(target).long()
        leaf = z.clone().requires_grad_()
        F.nll_loss(F.log_softmax(leaf, dim=1), t).backward()
        onehot = F.one_hot(t, classes).to(z.dtype)
        grad: list[Term] = [("grad", "∂L/∂z (autograd)", leaf.grad), "= ("]
        grad += [("softmax", "softmax(z)", log_p.exp()), "−"]
        grad += [("onehot", "onehot(target)", onehot), f") / {n}"]
        board.equation(0, 1 + n / 2 + n + 2.5, grad)
        alt += (
            f" Below, for the targets {t.tolist()}: the mean NLL loss's gradient with respect "
            f"to the scores, (softmax − onehot) / {n}, negative only at each row's target."
        )
    return board.finish("Log-softmax: each row minus its logsumexp", alt)


@functools.cache
def conv2_reach() -> torch.Tensor:
    """784 x 20 x 8 x 8 booleans: whether input pixel i (row-major) reaches each output of
    ``Net``'s ``conv2``. Part 2, §2.I.

    Why NaN and not a gradient: a gradient through max pooling reaches only the maximum of
    each window, so it shows part of what an output can see. A NaN put in one pixel reaches
    every output it can reach (convolution, max pooling and ReLU all pass NaN on): one forward
    pass of 784 probes, each with one NaN pixel, marks every field exactly."""
    with seeded(0):
        net = Net().eval()  # random weights: the field does not depend on them
    n = net.input_size
    probes = torch.zeros(n * n, n * n)
    probes.fill_diagonal_(float("nan"))
    caught: list[torch.Tensor] = []
    handle = net.conv2.register_forward_hook(lambda module, args, out: caught.append(out))
    with torch.no_grad():
        net(probes.view(n * n, 1, n, n))
    handle.remove()
    return caught[0].isnan()


def receptive_field(row: int, col: int, *, channel: int = 0) -> torch.Tensor:
    """The 28 x 28 boolean mask of the input pixels that ``Net``'s ``conv2`` output at
    (channel, row, col) depends on (:func:`conv2_reach`). Part 2, §2.I."""
    reach = conv2_reach()
    _, channels, height, width = reach.shape
    if not (0 <= channel < channels and 0 <= row < height and 0 <= col < width):
        raise ValueError(
            f"conv2's output is {channels}x{height}x{width}: no ({channel}, {row}, {col})"
        )
    side = int(len(reach) ** 0.5)
    return reach[:, channel, row, col].view(side, side)


@styled
def draw_receptive_field(
    image: Any = None, *, row: int = 0, col: int = 0, channel: int = 0
) -> Figure:
    """The input patch one ``conv2`` output of ``Net`` sees, outlined on the 28 x 28 input
    (``image`` under it if given), beside ``conv2``'s 8 x 8 map with that output marked.
    Part 2, §2.I: two 5 x 5 convolutions and a 2 x 2 pooling make a 14 x 14 field (the size
    is computed by :func:`receptive_field`, not written in)."""
    field = receptive_field(row, col, channel=channel)
    n = field.shape[0]
    rows, cols = field.any(1).nonzero().flatten(), field.any(0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    height, width = len(rows), len(cols)
    net, side = Net(), conv2_reach().shape[-1]
    k1, k2 = net.conv1.kernel_size[0], net.conv2.kernel_size[0]
    board = Board(cell=0.2)
    shown = torch.zeros(n, n) if image is None else as_grid(image)
    cmap = None if image is None else STYLE["cmap"]["digit"]  # blank: white cells
    inp = board.grid(shown, 0, 1, gid="input", numbers=False, cmap=cmap)
    board.ax.imshow(
        np.where(field.numpy(), 1.0, np.nan),  # NaN: transparent
        cmap=ListedColormap([STYLE["color"]["highlight"]]),
        alpha=0.35,
        extent=(inp.x, inp.right, inp.bottom, inp.y),
        gid="field-mask",
    )
    board.outline(inp, top, left, rows=height, cols=width, gid="field")
    out = board.grid(torch.zeros(side, side), n + 6, 1 + (n - side) / 2, gid="conv2", numbers=False)
    board.outline(out, row, col, gid="output-cell")
    board.arrow(
        (out.x - 0.3, out.y + row + 0.5), (inp.x + left + width + 0.3, top + 1 + height / 2)
    )
    board.text(n / 2, inp.bottom + 1.3, f"{height} × {width} input pixels", size="title")
    board.text(out.x + side / 2, out.bottom + 1.3, f"conv2 output ({row}, {col})")
    alt = (
        f"Net's receptive field: the conv2 output at row {row}, column {col} (channel "
        f"{channel}) depends on a {height} × {width} patch of the {n} × {n} input, rows {top}"
        f"–{top + height - 1}, columns {left}–{left + width - 1}."
    )
    chain = f"conv1 {k1}×{k1} → max pool 2×2 → conv2 {k2}×{k2}"
    return board.finish(f"One conv2 output sees {height} × {width} pixels ({chain})", alt)


# --------------------------------------------------------------------------- Part 3's layers


@styled
def draw_relu_backward(x: Any, grad_out: Any) -> Figure:
    """ReLU's backward on one grid: the upstream gradient passes where the input was positive
    and is 0 elsewhere (at exactly 0 too). Part 3, §3.7. The gradient drawn is autograd's for
    ``F.relu``, not this function's own arithmetic."""
    grid, upstream = as_grid(x), as_grid(grad_out)
    leaf = grid.clone().requires_grad_()
    F.relu(leaf).backward(upstream)
    passes = (grid > 0).to(grid.dtype)
    passing: Term = ("passes", "x > 0 (1: passes)", passes)
    board, height = Board(), grid.shape[0] + 2.5
    board.equation(0, 1 + grid.shape[0] / 2, [shaped("input", grid, "input x"), "→", passing])
    terms: list[Term] = [("grad-out", "upstream ∂L/∂y", upstream), "⊙"]
    terms += [("passes2", "x > 0", passes), "=", ("grad-in", "∂L/∂x (autograd)", leaf.grad)]
    board.equation(0, 1 + grid.shape[0] / 2 + height, terms)
    kept = int(passes.sum())
    alt = (
        f"ReLU's backward on a {size_text(*grid.shape)} input: the upstream gradient passes at "
        f"the {kept} positions where x > 0 and is 0 at the other {grid.numel() - kept}."
    )
    return board.finish("ReLU's backward: the gradient passes where x > 0", alt)
