"""Figures the notebooks share: digit grids, learning curves, confusion matrices, filters.

Why this module exists: several parts draw the same kinds of figure (digits in Part 1 and 5,
learning curves in Part 4 and 5, filters and feature maps in Part 5); one function each keeps
them looking alike. Every function draws and returns the matplotlib ``Figure``. In a notebook
end the call with ``plt.show()`` (or a ``;``): Jupyter's inline backend already shows every
new figure, and a returned figure as the cell's last value would be shown a second time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

DIGIT_STYLE = {"cmap": "gray", "interpolation": "nearest"}


def show_digits(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    predictions: Sequence[int] | torch.Tensor | None = None,
    confidences: Sequence[float] | torch.Tensor | None = None,
    ncols: int = 10,
    title: str | None = None,
    size: float = 1.1,
) -> Figure:
    """A grid of digits (N x 28 x 28 or N x 1 x H x W), each titled with its label and, when
    given, the prediction (red when wrong) and its confidence."""
    images = images.detach().cpu()
    if images.dim() == 4:
        images = images[:, 0]
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    title_lines = sum(x is not None for x in (labels, predictions, confidences))
    row_height = size + 0.16 * title_lines  # room for each line of the titles above a digit
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, row_height * nrows + 0.4),
                             squeeze=False)
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
                color = "red"
        if confidences is not None:
            parts.append(f"{float(confidences[i]):.2f}")
        if parts:
            ax.set_title(" ".join(parts) if len(parts) == 1 else "\n".join(parts),
                         fontsize=8, color=color)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(history: Sequence[dict[str, Any]], title: str = "Learning curves",
                         smooth: int = 20) -> Figure:
    """Training loss per step (and its running mean over ``smooth`` steps) beside test
    accuracy per epoch, from a :func:`~mnist_dissected.train.fit` history."""
    steps = [loss for record in history for loss in record["step_losses"]]
    per_epoch = len(history[0]["step_losses"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = [i / per_epoch for i in range(1, len(steps) + 1)]
    ax_loss.plot(x, steps, lw=0.6, alpha=0.5, label="per step")
    if len(steps) >= smooth:
        kernel = torch.ones(smooth) / smooth
        running = torch.conv1d(torch.tensor(steps)[None, None], kernel[None, None])[0, 0]
        ax_loss.plot(x[smooth - 1:], running.tolist(), lw=1.5, label=f"mean of {smooth} steps")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Training loss")
    ax_loss.legend()
    epochs = [r["epoch"] for r in history]
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], "o-")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy",
               xticks=epochs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: torch.Tensor, title: str = "Confusion matrix") -> Figure:
    """A 10 x 10 matrix of counts (rows: true digit, columns: prediction), counts written in
    each cell; the colour scale is logarithmic so the few mistakes show beside the diagonal."""
    from matplotlib.colors import LogNorm

    m = matrix.detach().cpu()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(m.clamp(min=0.5), cmap="Blues", norm=LogNorm(vmin=0.5, vmax=m.max()))
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 10 else "black")
    ax.set(xlabel="predicted digit", ylabel="true digit", title=title,
           xticks=range(m.shape[1]), yticks=range(m.shape[0]))
    fig.colorbar(im, ax=ax, label="count (log scale)")
    fig.tight_layout()
    return fig


def show_filters(weight: torch.Tensor, title: str, max_in: int | None = None) -> Figure:
    """Convolution kernels (out x in x k x k) as a grid: one row per output channel, one column
    per input channel, on one symmetric colour scale (blue negative, red positive)."""
    w = weight.detach().cpu()
    if max_in is not None:
        w = w[:, :max_in]
    n_out, n_in = w.shape[:2]
    if n_in == 1:  # one input channel: lay the kernels out in a single row
        w = w.transpose(0, 1)
        n_out, n_in = n_in, n_out
    limit = w.abs().max().item()
    fig, axes = plt.subplots(n_out, n_in, figsize=(0.75 * n_in + 1, 0.75 * n_out + 0.6),
                             squeeze=False)
    for (i, j), ax in zip([(i, j) for i in range(n_out) for j in range(n_in)], axes.flat,
                          strict=True):
        im = ax.imshow(w[i, j], cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.colorbar(im, ax=axes, label="weight", shrink=0.8)
    return fig


def show_feature_maps(maps: torch.Tensor, title: str, ncols: int = 10) -> Figure:
    """The channels of one image's activations (C x H x W), each on its own colour scale."""
    m = maps.detach().cpu()
    n = len(m)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.2 * nrows + 0.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(m[i], cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {i}", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
