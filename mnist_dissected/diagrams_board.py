"""The drawing board of the diagrams (every part's drawn figures), and how a notebook shows a
figure with its alt text (:func:`show_figure`).

Why this module exists: the diagrams of Parts 2, 3 and 6 (:mod:`~mnist_dissected.diagrams`,
:mod:`~mnist_dissected.diagrams_graphs`) are all grids of numbers, operators and arrows laid
out on one axes; a :class:`Board` does that layout once, in one look
(:data:`~mnist_dissected.plots.STYLE`), and sizes the figure to what was drawn.

A drawn grid is an image whose ``gid`` names it (its array is the tensor shown) and its numbers
are texts with the same ``gid``; outlines (a window, a maximum) are rectangles with a ``gid``
too: what a test reads to check what a figure shows.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from .plots import STYLE

#: A term of a drawn equation: a grid ``(gid, title, values)`` or an operator such as ``"="``.
Term = tuple[str, str, Any] | str


# --------------------------------------------------------------------------- showing a figure


class FigureWithAlt:
    """A drawn figure as Jupyter shows it: a PNG in an ``<img>`` with its alt text (HTML), the
    PNG itself for renderers that take only images, and the alt text alone where only text is
    shown (a terminal, a text-only renderer)."""

    def __init__(self, png: bytes, alt: str) -> None:
        self.png, self.alt = png, alt

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}">'

    def _repr_png_(self) -> bytes:
        """The image itself too: Jupyter shows the HTML (it ranks above PNG), while a reader
        that takes only images (a static renderer, a figure counter) still finds a figure."""
        return self.png

    def __repr__(self) -> str:
        return self.alt


def show_figure(fig: Figure, *, alt: str | None = None) -> FigureWithAlt:
    """``fig`` as an image with its alt text, for a notebook cell's last line (every part):
    the ``alt_text`` every diagram carries, or ``alt`` for any other figure (the plots').

    Why: Jupyter's own display of a figure has no alt text, so a screen reader says "image".
    This renders the figure to PNG as the inline backend does (tight, :data:`STYLE`'s dpi),
    closes it (or the inline backend would show it a second time, without alt text) and returns
    what Jupyter shows as ``<img alt="...">``. A figure without words is refused: an image
    without alt text is what this is here to prevent."""
    words = alt or alt_text(fig)
    if not words:
        raise ValueError("this figure has no alt text: pass alt='what it shows'")
    buffer = io.BytesIO()
    fig.savefig(
        buffer,
        format="png",
        dpi=STYLE["size"]["dpi"],
        bbox_inches="tight",
        metadata={"Software": None},  # no version stamp in the image
    )
    plt.close(fig)
    return FigureWithAlt(buffer.getvalue(), words)


def alt_text(fig: Figure) -> str:
    """What ``fig`` shows, in words (set by every drawing of the package; empty otherwise)."""
    return getattr(fig, "alt_text", "")


# --------------------------------------------------------------------------- the board


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with ``torch.manual_seed(seed)`` and give the caller's random state back after:
    a diagram draws the same numbers each time and moves no one else's random numbers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def as_grid(values: Any) -> torch.Tensor:
    """``values`` (a tensor, nested lists) as a 2-D float tensor; a vector becomes one row."""
    grid = torch.as_tensor(values, dtype=torch.get_default_dtype()).detach().cpu()
    if grid.dim() == 1:
        grid = grid.unsqueeze(0)
    if grid.dim() != 2:
        raise ValueError(f"a drawn grid is 2-D (rows x columns), got shape {tuple(grid.shape)}")
    return grid


def number(value: float) -> str:
    """A cell's number: an integer as one (``3``), anything else with two decimals."""
    value = float(value.detach() if isinstance(value, torch.Tensor) else value)
    if value.is_integer():
        return str(int(value))
    return f"{value:.2f}".replace("-0.00", "0.00")


def size_text(rows: int, cols: int) -> str:
    """``3×4``: a grid's shape, as every title of the diagrams writes it."""
    return f"{rows}×{cols}"


def shaped(gid: str, values: Any, label: str | None = None) -> tuple[str, str, Any]:
    """An equation's grid titled with its name and shape: ``("image", "image 6×6", x)``."""
    return gid, f"{label or gid} {size_text(*as_grid(values).shape)}", values


@dataclass(frozen=True)
class Block:
    """Where a drawn grid sits on the board, in cells: top-left corner, rows, columns."""

    x: float
    y: float
    rows: int
    cols: int

    @property
    def right(self) -> float:
        return self.x + self.cols

    @property
    def bottom(self) -> float:
        return self.y + self.rows

    def cell(self, row: float, col: float) -> tuple[float, float]:
        """The centre of cell (row, col)."""
        return self.x + col + 0.5, self.y + row + 0.5


class Board:
    """One axes counted in cells, rows downward, with the figure sized to what was drawn:
    ``cell`` inches per cell (:data:`STYLE`'s unless given)."""

    def __init__(self, *, cell: float | None = None) -> None:
        self.cell = cell or STYLE["size"]["cell"]
        self.fig = plt.figure()
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_axis_off()
        self.left = self.top = self.right = self.bottom = 0.0

    def reach(self, x: float, y: float) -> None:
        """Make room for something drawn at (x, y)."""
        self.left, self.right = min(self.left, x), max(self.right, x)
        self.top, self.bottom = min(self.top, y), max(self.bottom, y)

    def text_size(self, words: str, size: str) -> tuple[float, float]:
        """About how many cells ``words`` take in width and height, at font size ``size``."""
        points = STYLE["font"][size]
        lines = words.split("\n")
        inches = points / 72
        return (
            max(len(line) for line in lines) * 0.6 * inches / self.cell,
            len(lines) * 1.3 * inches / self.cell,
        )

    def grid(
        self,
        values: Any,
        x: float,
        y: float,
        *,
        gid: str,
        title: str = "",
        numbers: bool = True,
        cmap: str | None = None,
    ) -> Block:
        """Draw ``values`` as a grid of coloured cells, top-left at (x, y), each cell with its
        number (``numbers``), on a colour scale symmetric around 0 unless ``cmap`` is given."""
        v = as_grid(values)
        block = Block(x, y, *v.shape)
        limit = float(v.abs().max()) or 1.0
        image = self.ax.imshow(
            v.numpy(),
            cmap=cmap or STYLE["cmap"]["signed"],
            vmin=None if cmap else -limit,
            vmax=None if cmap else limit,
            alpha=None if cmap else STYLE["size"]["cell_alpha"],
            extent=(x, block.right, block.bottom, y),
        )
        image.set_gid(gid)
        self.ax.add_patch(Rectangle((x, y), block.cols, block.rows, fill=False, lw=0.8))
        if numbers:
            for (r, c), value in np.ndenumerate(v.numpy()):
                self.text(*block.cell(r, c), number(value), gid=gid, size="small")
        self.ax.vlines(np.arange(x + 1, block.right), y, block.bottom, lw=0.3, color="0.6")
        self.ax.hlines(np.arange(y + 1, block.bottom), x, block.right, lw=0.3, color="0.6")
        if title:
            self.text(x + block.cols / 2, y - 0.3, title, gid=f"{gid}-title", va="bottom")
        self.reach(block.right, block.bottom)
        return block

    def outline(
        self,
        block: Block,
        row: int,
        col: int,
        *,
        rows: int = 1,
        cols: int = 1,
        gid: str,
        color: str | None = None,
        fill: bool = False,
    ) -> Rectangle:
        """Outline (or ``fill``) ``rows`` x ``cols`` cells of ``block`` from (row, col): a
        window, a maximum, a field; in the highlight colour unless ``color`` is given."""
        color = color or STYLE["color"]["highlight"]
        box = Rectangle(
            (block.x + col, block.y + row),
            cols,
            rows,
            fill=fill,
            lw=0 if fill else 2.2,
            ec=color,
            fc=color,
            alpha=0.5 if fill else 1.0,
            gid=gid,
        )
        self.ax.add_patch(box)
        return box

    def text(
        self, x: float, y: float, words: str, *, gid: str = "", size: str = "label", **kw: Any
    ) -> Text:
        """Words at (x, y), centred unless ``ha``/``va`` say otherwise, in one of :data:`STYLE`'s
        font sizes (``"label"``, ``"small"``, ``"title"``)."""
        kw = {"ha": "center", "va": "center", **kw}
        width, height = self.text_size(words, size)
        left = x - width * {"left": 0, "center": 0.5, "right": 1}[kw["ha"]]
        top = y - height * {"top": 0, "center": 0.5, "bottom": 1}[kw["va"]]  # rows go down
        self.reach(left, top)
        self.reach(left + width, top + height)
        return self.ax.text(x, y, words, fontsize=STYLE["font"][size], gid=gid or None, **kw)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], **props: Any) -> None:
        """An arrow from ``start`` to ``end`` (say what it carries with a text beside it)."""
        props = {"arrowstyle": "->", "color": STYLE["color"]["arrow"], "lw": 1.2, **props}
        self.ax.annotate("", xy=end, xytext=start, arrowprops=props)

    def equation(self, x: float, mid: float, terms: Sequence[Term]) -> dict[str, Block]:
        """Draw ``terms`` left to right, each grid centred on the row at height ``mid``, each
        operator between them: ``X · W = Y`` as a picture. Returns each grid's block by gid."""
        blocks: dict[str, Block] = {}
        for term in terms:
            if isinstance(term, str):
                width = 0.9 + self.text_size(term, "title")[0]
                self.text(x + width / 2, mid, term, size="title")
                x += width
                continue
            gid, title, values = term
            rows = as_grid(values).shape[0]
            blocks[gid] = self.grid(values, x, mid - rows / 2, gid=gid, title=title)
            x = blocks[gid].right
        return blocks

    def finish(self, title: str, alt: str) -> Figure:
        """Title the diagram, size the figure to what was drawn, and give it its alt text."""
        self.text(self.left, self.top - 0.5, title, size="title", ha="left", va="bottom")
        self.ax.set_xlim(self.left - 0.4, self.right + 0.4)
        self.ax.set_ylim(self.bottom + 0.4, self.top - 0.4)
        width, height = self.right - self.left + 0.8, self.bottom - self.top + 0.8
        self.fig.set_size_inches(width * self.cell, height * self.cell)
        self.fig.alt_text = alt
        return self.fig
