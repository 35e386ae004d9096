"""Part 5's module: the figures the notebooks share (``notebooks/5_mnist_visualize.ipynb``):
digit grids, learning curves, confusion matrices, filters, feature maps, autograd graphs; and
the one look of every figure the package draws (:data:`STYLE`, :func:`styled`), these plots and
the drawn diagrams of Parts 2, 3 and 6 (:mod:`~mnist_dissected.diagrams`) alike.

Why this module exists: several parts draw the same kinds of figure (digits in Part 1 and 5,
learning curves in Part 4 and 5, filters and feature maps in Part 5); one function each keeps
them looking alike. Every function draws and returns the matplotlib ``Figure``. In a notebook
end the call with ``plt.show()`` (or a ``;``): Jupyter's inline backend already shows every
new figure, and a returned figure as the cell's last value would be shown a second time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

#: The one place for the figures' look: sizes, colour maps, fonts and colours. Every drawing
#: function of the package reads it (and runs inside its ``rc`` settings, :func:`styled`), so a
#: change here changes every figure of every part, and no two figures drift apart.
STYLE: dict[str, Any] = {
    "rc": {"font.family": "DejaVu Sans", "font.size": 10, "image.interpolation": "nearest"},
    "font": {"label": 8, "small": 7, "title": 11},  # points: box and cell labels, titles
    "cmap": {
        "digit": "gray",  # MNIST's images
        "signed": "bwr",  # weights, gradients, any numbers around 0: blue -, white 0, red +
        "activation": "viridis",  # feature maps, each on its own scale
        "count": "Blues",  # the confusion matrix
    },
    "color": {
        "operation": "#dde6f5",  # a box that computes (an autograd node, a layer without weights)
        "parameter": "#d8f0d8",  # a box that holds learned numbers
        "arrow": "0.4",
        "wrong": "red",  # a wrong prediction
        "highlight": "#ff7f0e",  # what a diagram points at: a window, a maximum, a field
        "gradient": "#d62728",  # what flows backward
    },
    "size": {
        "digit": 1.1,  # inches per digit of a grid of digits
        "filter": 0.75,  # inches per kernel of a grid of filters
        "cell": 0.4,  # inches per cell of a drawn diagram (one number per cell)
        "cell_alpha": 0.55,  # how strongly a diagram's cells are coloured behind their numbers
        "graph_column": 3.3,  # data units between two columns of an autograd graph
        "dpi": 100,  # pixels per inch of a figure shown with its alt text
    },
}

DIGIT_STYLE = {"cmap": STYLE["cmap"]["digit"], "interpolation": "nearest"}

P = ParamSpec("P")


def styled(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """``draw`` run inside :data:`STYLE`'s matplotlib settings (fonts, interpolation), whatever
    the notebook's own settings are: the decorator every drawing function of the package wears.
    """

    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with plt.rc_context(STYLE["rc"]):
            return draw(*args, **kwargs)

    return drawn


@styled
def show_digits(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    predictions: Sequence[int] | torch.Tensor | None = None,
    confidences: Sequence[float] | torch.Tensor | None = None,
    ncols: int = 10,
    title: str | None = None,
    size: float = STYLE["size"]["digit"],
) -> Figure:
    """A grid of digits (N x 28 x 28 or N x 1 x H x W), each titled with its label and, when
    given, the prediction (red when wrong) and its confidence. Used from Part 1, §1.2 on."""
    images = images.detach().cpu()
    if images.dim() == 4:
        images = images[:, 0]
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    title_lines = sum(x is not None for x in (labels, predictions, confidences))
    row_height = size + 0.16 * title_lines  # room for each line of the titles above a digit
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, row_height * nrows + 0.4), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], **DIGIT_STYLE)
        parts, color = [], "black"
        if labels is not None:
            parts.append(f"{int(labels[i])}")
        if predictions is not None:
            parts.append(f"pred {int(predictions[i])}")
            if labels is not None and int(predictions[i]) != int(labels[i]):
                color = STYLE["color"]["wrong"]
        if confidences is not None:
            parts.append(f"{float(confidences[i]):.2f}")
        if parts:
            ax.set_title(
                " ".join(parts) if len(parts) == 1 else "\n".join(parts),
                fontsize=STYLE["font"]["label"],
                color=color,
            )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def running_mean(values: Sequence[float] | torch.Tensor, n: int = 20) -> torch.Tensor:
    """The mean of each run of ``n`` consecutive values (``len(values) - n + 1`` of them):
    a noisy per-step loss made readable. Used in Part 4, §4.10 and Part 5, §5.B."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if not 1 <= n <= len(values):
        raise ValueError(f"need 1 <= n <= {len(values)} values, got n={n}")
    return values.unfold(0, n, 1).mean(dim=1)


@styled
def plot_learning_curves(
    history: Sequence[dict[str, Any]], *, title: str = "Learning curves", smooth: int = 20
) -> Figure:
    """Training loss per step (and its running mean over ``smooth`` steps) beside validation
    accuracy per epoch, from a :func:`~mnist_dissected.train.fit` history. Dissected in
    Part 5, §5.B."""
    steps = [loss for record in history for loss in record["step_losses"]]
    per_epoch = len(history[0]["step_losses"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = [i / per_epoch for i in range(1, len(steps) + 1)]
    ax_loss.plot(x, steps, lw=0.6, alpha=0.5, label="per step")
    if len(steps) >= smooth:
        ax_loss.plot(
            x[smooth - 1 :],
            running_mean(steps, smooth).tolist(),
            lw=1.5,
            label=f"mean of {smooth} steps",
        )
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Training loss")
    ax_loss.legend()
    epochs = [r["epoch"] for r in history]
    ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in history], "o-")
    ax_acc.set(
        xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy", xticks=epochs
    )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@styled
def plot_confusion_matrix(matrix: torch.Tensor, *, title: str = "Confusion matrix") -> Figure:
    """A 10 x 10 matrix of counts (rows: true digit, columns: prediction), counts written in
    each cell; the colour scale is logarithmic so the few mistakes show beside the diagonal."""
    from matplotlib.colors import LogNorm

    m = matrix.detach().cpu()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(
        m.clamp(min=0.5), cmap=STYLE["cmap"]["count"], norm=LogNorm(vmin=0.5, vmax=m.max())
    )
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=STYLE["font"]["small"],
                    color="white" if m[i, j] > m.max() / 10 else "black",
                )
    ax.set(
        xlabel="predicted digit",
        ylabel="true digit",
        title=title,
        xticks=range(m.shape[1]),
        yticks=range(m.shape[0]),
    )
    fig.colorbar(im, ax=ax, label="count (log scale)")
    fig.tight_layout()
    return fig


@styled
def show_filters(weight: torch.Tensor, title: str, *, max_in: int | None = None) -> Figure:
    """Convolution kernels (out x in x k x k) as a grid: one row per output channel, one column
    per input channel, on one symmetric colour scale (blue negative, red positive). Used in
    Part 5, §5.8."""
    w = weight.detach().cpu()
    if max_in is not None:
        w = w[:, :max_in]
    n_out, n_in = w.shape[:2]
    if n_in == 1:  # one input channel: lay the kernels out in a single row
        w = w.transpose(0, 1)
        n_out, n_in = n_in, n_out
    limit = w.abs().max().item()
    inch = STYLE["size"]["filter"]
    fig, axes = plt.subplots(
        n_out, n_in, figsize=(inch * n_in + 1, inch * n_out + 0.6), squeeze=False
    )
    for (i, j), ax in zip(
        [(i, j) for i in range(n_out) for j in range(n_in)], axes.flat, strict=True
    ):
        im = ax.imshow(w[i, j], cmap=STYLE["cmap"]["signed"], vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.colorbar(im, ax=axes, label="weight", shrink=0.8)
    return fig


@styled
def show_feature_maps(maps: torch.Tensor, title: str, *, ncols: int = 10) -> Figure:
    """The channels of one image's activations (C x H x W), each on its own colour scale.
    Used in Part 5, §5.9."""
    m = maps.detach().cpu()
    n = len(m)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.2 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(m[i], cmap=STYLE["cmap"]["activation"])
            ax.set_title(f"ch {i}", fontsize=STYLE["font"]["small"])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def graph_layout(root: Any) -> dict[Any, tuple[int, int]]:
    """(row, column) of every node of an autograd graph below ``root`` (a ``grad_fn``): row =
    depth. The long branch (or an only child) stays in its parent's column; the short ones
    (parameters) go to the right."""
    size: dict[Any, int] = {}

    def children(node: Any) -> list[Any]:
        return [c for c, _ in node.next_functions if c is not None]

    def count(node: Any) -> int:
        size[node] = 1 + sum(count(c) for c in children(node))
        return size[node]

    def place(node: Any, row: int, col: int) -> None:
        while (row, col) in taken:
            col += 1
        taken.add((row, col))
        where[node] = (row, col)
        kids = children(node)
        main = max(kids, key=size.get, default=None)
        below = main is not None and (size[main] > 2 or len(kids) == 1)
        if below:
            place(main, row + 1, col)
        for i, kid in enumerate(k for k in kids if not (below and k is main)):
            place(kid, row + 1, col + 1 + i)

    count(root)
    where: dict[Any, tuple[int, int]] = {}
    taken: set[tuple[int, int]] = set()
    place(root, 0, 0)
    return where


@styled
def plot_autograd_graph(
    root: Any, label: Callable[[Any], str], *, title: str, figsize: tuple[float, float] = (10, 9)
) -> Figure:
    """Draw the autograd graph below ``root`` (``loss.grad_fn``): one box per node, named by
    ``label(node)``, arrows the way the gradient flows in ``backward``. Parameters
    (``AccumulateGrad`` nodes) are green, operations blue. Used in Part 3, §3.4."""
    where, column = graph_layout(root), STYLE["size"]["graph_column"]
    fig, ax = plt.subplots(figsize=figsize)
    boxes = {}
    for node, (row, col) in where.items():
        color = STYLE["color"]["parameter" if hasattr(node, "variable") else "operation"]
        boxes[node] = ax.text(
            col * column,
            -row,
            label(node).replace("  ", "\n"),
            ha="center",
            va="center",
            fontsize=STYLE["font"]["label"],
            bbox={"boxstyle": "round", "fc": color},
        )
    for node, (_, col) in where.items():
        for kid, _ in node.next_functions:
            if kid is not None:
                below = where[kid][1] == col
                start, end = ((0.5, 0), (0.5, 1)) if below else ((1, 0.5), (0, 0.5))
                ax.annotate(
                    "",
                    xy=end,
                    xycoords=boxes[kid],
                    xytext=start,
                    textcoords=boxes[node],
                    arrowprops={"arrowstyle": "->", "color": STYLE["color"]["arrow"]},
                )
    rows = max(r for r, _ in where.values())
    cols = max(c for _, c in where.values())
    ax.set(xlim=(-1.8, cols * column + 1.4), ylim=(-rows - 0.6, 0.5))
    ax.set_title(title)
    ax.axis("off")
    return fig
