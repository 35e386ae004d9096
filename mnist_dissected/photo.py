"""Finding the ink in a photo of a digit on paper: what :func:`mnist_dissected.preprocess.to_ink`
does when the picture is a photo (:func:`is_photo`), not a drawing made on a computer. Used by
Part 5's "draw your digit" widget when a photo is uploaded, and by ``to_mnist`` on any photo.

Why this module exists: a drawing made on a computer has paper of one exact colour, so the
paper is its border's colour and everything else is ink. A phone's photo of a digit written on
paper has no such thing: the paper has grain, ruled lines, light falling off across the page or
a shadow over it, and often the desk showing around the sheet. Read the old way, the grain or a
ruled line reaches the ink threshold somewhere and the ink box stretches to the whole picture;
a dark desk is taken for the paper and the sheet for the ink. Here each of those is undone in
turn (:func:`ink`): coloured lines are lifted to the paper, the desk is found and left out, the
paper's own level is estimated pixel by pixel, and only the digit's strokes are kept.

The paper and the desk are found on a copy of the picture shrunk to :data:`WORK` pixels a side
(the digit ends up 20 x 20 anyway), with NumPy and Pillow only. A clean drawing never comes
here, so its reading is exactly what it was before photos were read this way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

#: The longer side of the shrunk copy the paper and the desk are found on.
WORK = 160
#: A picture is a photo when fewer than this share of its border pixels have exactly the
#: border's median colour (a computer's drawing: nearly all of them).
EXACT_BORDER = 0.9


def is_photo(grey: np.ndarray, border: np.ndarray) -> bool:
    """Whether the picture's paper is not one exact colour: a photo (or a scan), not a drawing
    made on a computer. Clean drawings keep the simple reading, exactly as before."""
    if min(grey.shape) < 32:
        return False  # MNIST's own 28 x 28 digits, and other drawings too small to be photos
    paper = np.median(border)
    return float(np.mean(np.abs(border - paper) <= 0.5 / 255)) < EXACT_BORDER


def ink(x: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Ink (high, paper about 0, not yet stretched) of the photo ``x`` (H x W x C, 0..1) whose
    grey levels are ``grey``: coloured lines lifted to the paper (:func:`lightness`), the desk
    around the sheet left out (:func:`desk`), the paper's level estimated where each pixel is
    (:func:`paper`), and specks and stray marks away from the digit dropped (:func:`digit`).
    Bars of one flat colour along the sides are no part of the photo (:func:`inside_bars`)."""
    inside = inside_bars(grey)
    marks = np.zeros(grey.shape)
    marks[inside] = _photo_ink(x[inside], grey[inside])
    return marks


def inside_bars(grey: np.ndarray) -> tuple[slice, slice]:
    """The picture less the rows and columns of one flat colour along its sides: the widget's
    upload fits a photo into its square canvas on the mean colour of the photo's border, and
    where a desk shows, those bars are neither desk nor paper."""
    rows = np.flatnonzero(np.ptp(grey, axis=1) > 0.5 / 255)
    cols = np.flatnonzero(np.ptp(grey, axis=0) > 0.5 / 255)
    if rows.size < 32 or cols.size < 32:
        return slice(None), slice(None)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _photo_ink(x: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """:func:`ink` of the photo itself, its bars cut off."""
    grey = _box(lightness(x, grey), 3)  # the grain's single pixels averaged away
    small = shrink(grey, WORK)
    outside = desk(small)
    if outside is None:  # the paper is most of the picture: is the ink the dark or light end?
        low, paper_level, high = np.percentile(small, [0.1, 50, 99.9])
        dark_on_light = paper_level - low >= high - paper_level
    else:
        dark_on_light = True  # a sheet on a desk: the sheet is the bright part
    if not dark_on_light:  # chalk on a blackboard: the same work, on the negative
        grey, small = 1 - grey, 1 - small
    background = grow(paper(small, outside), grey.shape)
    marks = np.clip(background - grey, 0, None)
    if outside is None:
        outside = np.zeros(small.shape, bool)
    else:
        marks[grow(outside.astype(np.float64), grey.shape) > 0.01] = 0
    return digit(marks, _interior(~outside))


def lightness(x: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Grey levels in which light coloured marks (blue ruled lines, a red margin) are as light
    as the paper: the colours are first balanced so that the paper is white in every channel
    (its level in each: the bright end of that channel), then each pixel's brightest channel is
    taken, not the luma. A blue line is then as bright as the paper in blue and so vanishes;
    dark ink (black, pencil, a blue ballpoint) is dark in every channel. Kept only if the ink
    stays about as dark as in ``grey``: a digit drawn in bright red would vanish too, and then
    the luma it is."""
    if x.shape[-1] < 3 or (x.shape[-1] == 4 and (x[..., 3] < 1).any()):
        return grey
    sample = x[::4, ::4, :3]  # enough to tell the colours, at a sixteenth of the work
    if np.mean(sample.max(axis=-1) - sample.min(axis=-1) > 0.1) < 0.002:
        return grey  # no colour to speak of
    white = np.maximum(np.percentile(sample.reshape(-1, 3), 90, axis=0), 1e-3)
    r, g, b = (x[..., c] / white[c] for c in range(3))
    value = np.maximum(np.maximum(r, g), b) * float(np.dot(white, (0.299, 0.587, 0.114)))
    spread = [np.subtract(*np.percentile(shrink(v, WORK), [50, 0.5])) for v in (value, grey)]
    return value if spread[0] >= 0.5 * spread[1] else grey


def desk(small: np.ndarray) -> np.ndarray | None:
    """Where the desk shows around the sheet (a mask of ``small``), or ``None`` if the sheet
    fills the picture. The sheet's edge is a sharp step in brightness, unlike the edge of a
    shadow or the fall-off of the light: cut along the sharp steps, the picture falls into
    regions; the desk is those that reach the picture's edge and are dark. There must be a
    sheet left, mostly bright paper (unlike a light digit on dark paper, the other case of a
    dark region at the edge)."""
    low, high = np.percentile(small, [5, 95])
    step = _max_filter(small, 3) - _min_filter(small, 3)
    edges = _max_filter((step > 0.25 * (high - low)).astype(np.float64), 3) > 0
    regions = _label(~edges)
    dark = _otsu(small)
    count = np.bincount(regions[~edges])
    mean = np.bincount(regions[~edges], weights=small[~edges]) / np.maximum(count, 1)
    rim = np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])
    rim = np.unique(rim[rim >= 0])
    outside = np.isin(regions, rim[mean[rim] < dark]) | _strips(edges & (small < dark))
    outside = _max_filter(outside.astype(np.float64), 7) > 0  # and the band of the sheet's edge
    sheet = ~outside
    if not outside.any() or sheet.mean() < 0.3 or (small[sheet] < dark).mean() > 0.3:
        return None
    return outside


def _strips(mask: np.ndarray) -> np.ndarray:
    """The groups of ``mask`` that run along the picture's edge for a tenth of its length or
    more: where the sheet comes so close to the edge that the desk is a strip narrower than the
    sheet's blurred edge (a stroke running off the picture touches the edge over its width)."""
    labels = _label(mask)
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    touching = np.bincount(rim[rim >= 0], minlength=labels.size)
    return np.isin(labels, np.flatnonzero(touching >= 0.1 * max(mask.shape)))


def paper(small: np.ndarray, outside: np.ndarray | None) -> np.ndarray:
    """The paper's level at every pixel of ``small`` (ink dark on light): a morphological
    closing (the brightest level nearby, then the darkest of those) with a window wider than any
    stroke, so the strokes are filled with the paper around them, while the light's fall-off
    and a shadow's edge, which rise one way across the window, are kept as they are. The desk
    (``outside``) takes no part: a window reaching over it takes the paper's part only."""
    size = max(3, round(max(small.shape) / 6) | 1)
    values = small if outside is None else np.where(outside, -np.inf, small)
    closed = _min_filter(_max_filter(values, size), size)
    known = np.isfinite(closed)
    return np.where(known, closed, np.median(closed[known]) if known.any() else 1.0)


def _interior(sheet: np.ndarray) -> np.ndarray:
    """The ``sheet`` (a mask of the shrunk picture) less a band along its edges and the
    picture's, where what is left of the desk or of the sheet's edge shows."""
    band = max(1, round(0.03 * max(sheet.shape)))
    inner = _min_filter(sheet.astype(np.float64), 2 * band + 1) > 0
    inner[:band], inner[-band:], inner[:, :band], inner[:, -band:] = False, False, False, False
    return inner


def digit(marks: np.ndarray, interior: np.ndarray) -> np.ndarray:
    """``marks`` with only the digit's strokes kept, standing out from the paper's own marks.
    The connected groups of clear marks are weighed; those that run off the picture (what is
    left of the desk or the sheet's edge) are left out unless nothing else is there (a photo
    cropped tight around the digit), and of the others those lighter than a tenth of the
    heaviest (grain that reached the ink threshold, a speck of dust) are cleared, so that they
    cannot stretch the ink box. A digit is one group, or a few heavy ones.
    Then the level the rest of the sheet's ``interior`` (a mask of the shrunk picture) reaches
    (ruled lines, the paper's texture: its 99.5th percentile) is taken off: that is the photo's
    blank, and a blank page stays blank."""
    small = shrink(marks, WORK)
    strong = small > 0.25 * small.max()
    if not strong.any():
        return marks
    labels = _label(strong, diagonal=True)
    mass = np.bincount(labels[strong], weights=small[strong], minlength=labels.size)
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    inner = mass.copy()
    inner[rim[rim >= 0]] = 0
    if inner.max() > 0:
        mass = inner
    keep = np.isin(labels, np.flatnonzero(mass >= 0.1 * mass.max()))
    keep = grow(_max_filter(keep.astype(np.float64), 5), marks.shape) > 0.01
    rest = marks[(grow(interior.astype(np.float64), marks.shape) > 0.99) & ~keep]
    floor = float(np.percentile(rest, 99.5)) if rest.size else 0.0
    return np.where(keep, np.clip(marks - floor, 0, None), 0.0)


# --------------------------------------------------------------------------- tools


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` averaged down so that its longer side is at most ``side`` pixels."""
    h, w = image.shape
    factor = side / max(h, w)
    if factor >= 1:
        return image.astype(np.float64)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = Image.fromarray(image.astype(np.float32)).resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64)


def grow(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` interpolated (bilinear) up to ``shape`` (H x W)."""
    if image.shape == shape:
        return image
    big = Image.fromarray(image.astype(np.float32)).resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(big, dtype=np.float64)


def _windows(image: np.ndarray, size: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    """``reduce`` (np.max, np.min, np.mean) over each ``size`` x ``size`` window, edges repeated:
    one axis at a time, so a window costs ``2 * size`` steps, not ``size**2``."""
    half = size // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = np.pad(image, pad, mode="edge")
        image = reduce(np.lib.stride_tricks.sliding_window_view(padded, size, axis=axis), -1)
    return image


def _max_filter(image: np.ndarray, size: int) -> np.ndarray:
    return _windows(image, size, np.max)


def _min_filter(image: np.ndarray, size: int) -> np.ndarray:
    return _windows(image, size, np.min)


def _box(image: np.ndarray, size: int) -> np.ndarray:
    """The mean over each ``size`` x ``size`` window (edges repeated)."""
    return _windows(image, size, np.mean)


def _otsu(image: np.ndarray) -> float:
    """Otsu's threshold: the grey level that splits the pixels into two classes of the least
    spread (here: the desk and the sheet)."""
    counts, edges = np.histogram(image, bins=64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres) / np.maximum(w0, 1)
    m1 = ((counts * centres).sum() - np.cumsum(counts * centres)) / np.maximum(w1, 1)
    return float(edges[1:][np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _label(mask: np.ndarray, *, diagonal: bool = False) -> np.ndarray:
    """Connected groups of a boolean mask: each pixel of a group gets the group's label (the
    flat index of one of its pixels), the others -1. Neighbours are the 4 nearest pixels, 8 with
    ``diagonal``. Labels spread from neighbour to neighbour and jump along the chain of labels,
    so a group is labelled in a few dozen NumPy passes."""
    h, w = mask.shape
    none = h * w
    labels = np.where(mask, np.arange(none).reshape(h, w), none)
    shifts = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if diagonal:
        shifts += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        lowest = labels.copy()
        for dy, dx in shifts:
            np.minimum(lowest, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], out=lowest)
        lowest = np.where(mask, lowest, none)
        flat = np.append(lowest.ravel(), none)
        jumped = flat[flat[lowest]]
        if np.array_equal(jumped, labels):
            return np.where(mask, labels, -1)
        labels = jumped
