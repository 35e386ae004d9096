"""Turn any picture of a digit into what the network was trained on: MNIST's own preprocessing.
Dissected in Part 5, §5.K and §5.L.

Why this module exists: the network only ever saw MNIST digits, and MNIST digits are not raw
scans. LeCun, Cortes and Burges describe on the MNIST page (http://yann.lecun.com/exdb/mnist/)
what they did to NIST's black-and-white digits:

1. each digit was size-normalized to fit in a 20 x 20 pixel box *preserving its aspect ratio*;
2. the normalization was anti-aliased, which is where MNIST's grey levels come from;
3. the 20 x 20 digit was centred in a 28 x 28 field by its *centre of mass* (not by its box):
   the image was translated so that the mass centre sits at the middle of the field.

On top of that the series' ``Normalize`` step (``MNIST_MEAN``, ``MNIST_STD``) was applied to
every training image. A digit drawn in a browser (280 x 280, RGBA, transparent paper, black
ink) or photographed (dark ink on grey paper) looks nothing like that: fed in as it is, scaled
down bluntly, the network is guessing. Each function below is one of those steps, public so
that a notebook can show them one by one (:func:`steps` returns them all); :func:`to_mnist`
chains them. Bad input (no ink, a non-image array, NaNs, a file that is no picture or far too
big) raises :class:`DrawingError`, a ``ValueError`` that says what was wrong, instead of giving
a confident answer about nothing. A phone's photo of a digit on paper needs more to find its
ink (grain, ruled lines, the desk, uneven light): :mod:`mnist_dissected.photo` does that part.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from . import photo
from .data import MNIST_MEAN, MNIST_STD
from .data import centre_of_mass as _centres_of_mass
from .errors import MnistDissectedError

#: The side of the box MNIST's digits were size-normalized into, and of the whole field.
BOX, FIELD = 20, 28
#: Where MNIST puts the centre of mass, in pixels from the top-left pixel's centre: on the
#: training set the mean is (14.00, 14.01) with a spread of 0.29 pixel, that of a uniform
#: distribution one pixel wide: MNIST shifted by whole pixels to bring it to (14, 14).
CENTRE = (FIELD / 2, FIELD / 2)
#: ITU-R 601-2 luma weights, those of PIL's ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)


class DrawingError(MnistDissectedError, ValueError):
    """The input is not a picture of a digit that can be preprocessed (the message says why)."""


# --------------------------------------------------------------------------- input


#: PIL's modes of grey images with more than 8 bits per pixel (PNG's 16-bit grey opens as
#: "I;16", or as "I" in older Pillow versions; "F" holds floats).
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
#: The most pixels a picture may have: a phone's photo has 12 to 50 million; beyond that it is
#: a mistake or a "decompression bomb" (a small file that decodes to gigabytes).
MAX_PIXELS = 8000 * 8000
#: EXIF's Orientation tag: how a phone says which way up it was held (1: as stored).
ORIENTATION = 0x0112


def open_image(source: str | os.PathLike | bytes | BinaryIO) -> Image.Image:
    """A picture file (a path, its bytes or a binary file object) as a loaded PIL image, turned
    upright as its EXIF says, or a :class:`DrawingError` that says why not: an upload must be
    answered with a message, not a traceback. Refused too: more than :data:`MAX_PIXELS` pixels.
    A PNG of 30000 x 30000 zeros is a 100 kB file that decodes to 900 MB (a "decompression
    bomb"), for which PIL raises ``DecompressionBombError``, or from 89 million pixels warns."""
    name = "the bytes" if isinstance(source, bytes) else repr(getattr(source, "name", source))
    name = name if len(name) < 80 else name[:70] + "...'"  # a data URL is no file name
    data = b""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as file:
                data = file.read()
        else:
            data = source if isinstance(source, bytes) else source.read()
        with warnings.catch_warnings():  # the warning's case is refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        _check_size(image.size[::-1])
        image.load()
    except DrawingError:
        raise
    except Image.DecompressionBombError as e:
        raise DrawingError(_too_big(_png_size(data) or str(e))) from e
    except (OSError, ValueError, TypeError) as e:  # not a picture, truncated, not a file
        raise DrawingError(f"could not read {name} as an image: {e}") from e
    return _upright(image)


def _png_size(data: bytes) -> tuple[int, int] | None:
    """The (height, width) a PNG file declares in its header: PIL refuses to open a file that
    declares too many pixels, and then does not say how many."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _check_size(shape: tuple[int, ...]) -> None:
    """Refuse a picture of more than :data:`MAX_PIXELS` pixels before it is decoded or copied."""
    if shape[0] * shape[1] > MAX_PIXELS:
        raise DrawingError(_too_big(shape))


def _too_big(shape: tuple[int, ...] | str) -> str:
    size = f"is {shape[1]} x {shape[0]} pixels" if isinstance(shape, tuple) else f"({shape})"
    side = round(MAX_PIXELS**0.5)
    return f"the picture {size}; give one under {side} x {side}"


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation says: a phone stores a portrait photo's pixels
    sideways and records which way to turn them; read as stored, the digit lies on its side."""
    if image.getexif().get(ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _to_array(image: Any) -> np.ndarray:
    """A NumPy view of a PIL image (turned upright if its EXIF says so), a picture file (path,
    bytes or binary file), a tensor, a nested list or an array (no copy if possible)."""
    if isinstance(image, (str, bytes, os.PathLike)) or hasattr(image, "read"):
        image = open_image(image)
    if hasattr(image, "mode") and hasattr(image, "getbands"):  # a PIL image
        _check_size(image.size[::-1])
        image = _upright(image)
        if image.mode in WIDE_GREY_MODES:
            return _wide_grey(image)
        # A palette or colour image can mark one entry or colour transparent ("transparency",
        # PNG's tRNS): through RGBA its pixels stay transparent paper, not a black fill.
        transparent = "A" in image.getbands() or "transparency" in image.info
        if image.mode not in ("L", "RGB", "RGBA") or (transparent and image.mode != "RGBA"):
            image = image.convert("RGBA" if transparent else "RGB")
        return np.asarray(image)
    if torch.is_tensor(image):
        return image.detach().cpu().numpy()
    try:
        return np.asarray(image)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise DrawingError(f"cannot read {type(image).__name__} as an image array: {e}") from e


def _wide_grey(image: Any) -> np.ndarray:
    """A grey PIL image of more than 8 bits a pixel as float pixels in [0, 1], divided by what
    its values' range says the scale is: 65535 (16 bits), 255 (8-bit values in a wider mode)
    or, for floats ("F"), 1 (already in [0, 1]). A ``convert`` to 8 bits would clip every value
    above 255 to white, and round floats in [0, 1] to 0 or 1: a blank picture."""
    array = np.asarray(image, dtype=np.float64)
    if not np.isfinite(array).all():
        raise DrawingError("the image holds NaN or infinite pixels")
    low, high = float(array.min()), float(array.max())
    scales = (1, 255, 65535) if image.mode == "F" else (255, 65535)
    scale = next((s for s in scales if high <= s), None)
    if low < 0 or scale is None:
        raise DrawingError(
            f"a {image.mode} image's pixels must lie in 0..65535 (16-bit grey), got values "
            f"from {low:g} to {high:g}"
        )
    return array / scale


def pixels(image: Any) -> torch.Tensor:
    """The image as float64 pixels in [0, 1], shape H x W x C with C = 1 (grey), 3 (RGB) or
    4 (RGBA): checked, so that everything after it can trust its input.

    Accepts a PIL image (turned upright as its EXIF says), a picture file (:func:`open_image`),
    a NumPy array or a tensor, H x W or H x W x C (channels last, as PIL, NumPy and a browser
    canvas store them). Integer pixels must lie in 0..255 (8-bit, the format of PNG files,
    canvases and MNIST itself) and are divided by 255; float pixels must already lie in [0, 1].
    A 16-bit grey or float PIL image is scaled by its range (:func:`_wide_grey`), and a palette
    image's transparent entry stays transparent (alpha channel). Anything else raises
    :class:`DrawingError` rather than being guessed at: a wrong guess would give a confident
    answer about a different picture.
    """
    return torch.from_numpy(_pixels(image))


def _pixels(image: Any) -> np.ndarray:
    array = _to_array(image)
    shape = tuple(array.shape)
    if array.dtype.kind not in "biuf":
        raise DrawingError(f"expected numeric pixels, got an array of dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        hint = (
            "; it looks channels-first (C x H x W): move the channels last, e.g. "
            "x.permute(1, 2, 0) or np.moveaxis(x, 0, -1)"
            if array.shape[0] in (1, 3, 4)
            else ""
        )
        raise DrawingError(
            f"expected H x W (grey) or H x W x C with C = 1, 3 (RGB) or 4 (RGBA) channels "
            f"last, got shape {shape}{hint}"
        )
    if array.ndim not in (2, 3):
        raise DrawingError(
            f"expected one image, H x W or H x W x C, got a {array.ndim}-D array of shape "
            f"{shape}" + ("; pass the images one at a time" if array.ndim == 4 else "")
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DrawingError(f"the image is empty: shape {shape}")
    _check_size(shape)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype.kind == "b":
        return array.astype(np.float64)
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DrawingError(
                f"integer pixels must lie in 0..255 (8-bit), got values from {low} to {high}"
            )
        return array.astype(np.float64) / 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise DrawingError("the image holds NaN or infinite pixels")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise DrawingError(
            f"float pixels must lie in [0, 1], got values from {low:g} to {high:g}"
            + ("; for 0..255 values divide by 255 first" if low >= 0 and high <= 255 else "")
        )
    return values


# --------------------------------------------------------------------------- the steps
# Each step takes and returns 2-D images; the work is done in NumPy (one image, no threads to
# start: a busy machine does not slow it down), the results are tensors.


def to_grey(image: Any) -> torch.Tensor:
    """The picture as one grey level per pixel (H x W, 0 black .. 1 white), as the eye sees it.

    Colour is mixed with PIL's luma weights (:data:`LUMA`). A transparent pixel (alpha 0) is
    paper: a browser canvas starts transparent and the strokes are the only opaque pixels. So
    the picture is laid onto paper of the colour that contrasts with its ink: white under dark
    strokes, black under light ones (the ink's colour is read from the opaque pixels).
    """
    return torch.from_numpy(_grey(_pixels(image)))


def _grey(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] >= 3:  # a weighted sum, not a matrix product: no BLAS threads
        grey = LUMA[0] * x[..., 0] + LUMA[1] * x[..., 1] + LUMA[2] * x[..., 2]
    else:
        grey = x[..., 0]
    if x.shape[-1] == 4 and (x[..., 3] < 1).any():
        alpha = x[..., 3]
        if alpha.sum() == 0:
            raise DrawingError("the drawing is blank: every pixel is transparent")
        paper = 1.0 if (grey * alpha).sum() / alpha.sum() < 0.5 else 0.0
        grey = alpha * grey + (1 - alpha) * paper
    return np.clip(grey, 0, 1)


def border(image: Any) -> torch.Tensor:
    """The pixels of the outermost rows and columns of a 2-D image: mostly paper in any
    picture of one digit, so they tell the paper's colour."""
    return torch.from_numpy(_border(_plane(image, "border")))


def _border(x: np.ndarray) -> np.ndarray:
    if x.shape[0] <= 2 or x.shape[1] <= 2:
        return x.ravel()
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def to_ink(image: Any, *, min_contrast: float = 0.1) -> torch.Tensor:
    """Ink as high values on a zero background (H x W, 0..1): MNIST's convention, whatever the
    picture's.

    Which is ink and which is paper is read from the border (:func:`border`): its median
    grey is the paper, so dark-on-light pictures (paper, a photo) are inverted and
    light-on-dark ones (a blackboard, MNIST itself) are kept. Then the paper's level is
    subtracted and the contrast stretched so the strongest ink is 1: grey paper in a photo
    becomes MNIST's 0, and the strokes reach MNIST's 255 (here 1). A picture whose ink stands
    out from the paper by less than ``min_contrast`` is blank: :class:`DrawingError`. A photo,
    whose paper is not one exact colour, is read by :func:`mnist_dissected.photo.ink` instead:
    the paper's level is found pixel by pixel, and ruled lines, the desk and grain left out.
    """
    return torch.from_numpy(_ink(_pixels(image), min_contrast))


def _ink(x: np.ndarray, min_contrast: float) -> np.ndarray:
    grey = _grey(x)
    edge = _border(grey)
    if photo.is_photo(grey, edge):
        ink, background = photo.ink(x, grey), 0.0
    else:
        paper = float(np.median(edge))
        ink, background = (1 - grey, 1 - paper) if paper > 0.5 else (grey, paper)
    contrast = float(ink.max()) - background
    if contrast < min_contrast:
        raise DrawingError(
            "the drawing is blank: no pixel stands out from the paper "
            f"(contrast {max(contrast, 0):.3f} < {min_contrast})"
        )
    return np.clip((ink - background) / contrast, 0, 1)


def crop(ink: Any, *, threshold: float = 0.1) -> torch.Tensor:
    """The ink's bounding box: MNIST size-normalizes the digit, not the paper around it.

    Only pixels above ``threshold`` count as ink, and fainter ones are set to 0 (MNIST's
    background is exactly 0): a speck of dust or the paper's grain in a photo must not
    stretch the box or survive as a grey haze.
    """
    return torch.from_numpy(_crop(_plane(ink, "crop"), threshold))


def _crop(ink: np.ndarray, threshold: float) -> np.ndarray:
    mask = ink > threshold
    if not mask.any():
        raise DrawingError(f"the drawing is blank: no pixel above the ink threshold {threshold}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.where(mask[box], ink[box], 0.0)


def scale(ink: Any, *, box: int = BOX) -> torch.Tensor:
    """Resize so the longer side is ``box`` (20) pixels, keeping the aspect ratio, anti-aliased.

    Keeping the aspect ratio is why MNIST's "1"s are thin strokes, not 20 x 20 blobs. The
    anti-aliasing (PIL's resize with a bilinear filter stretched over the scale factor)
    averages each output pixel over all the input pixels it covers, which is where MNIST's
    grey edges come from; plain interpolation would sample a few pixels and lose thin strokes.
    """
    return torch.from_numpy(_scale(_plane(ink, "scale"), box))


def _scale(ink: np.ndarray, box: int) -> np.ndarray:
    h, w = ink.shape
    factor = box / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))  # PIL: (width, height)
    resized = Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0, 1)


def centre_of_mass(image: Any) -> tuple[float, float]:
    """The ink-weighted mean (row, column) of a 2-D image (tensor or array), in pixels from the
    top-left pixel's centre. MNIST centres every digit by this point, not by its box: for a
    "7" the heavy top bar pulls it up, and centring by it is what the network is used to.

    One computation for the whole package: this is :func:`mnist_dissected.data.centre_of_mass`
    on a stack of one image.
    """
    plane = _plane(image, "centre_of_mass")
    if not np.isfinite(plane).all():
        raise DrawingError("the image holds NaN or infinite pixels")
    if (plane < 0).any():
        raise DrawingError("a centre of mass needs non-negative ink; got negative pixels")
    try:
        rows, cols = _centres_of_mass(torch.from_numpy(plane)[None])
    except ValueError as e:
        raise DrawingError(f"the drawing is blank: {e}") from e
    return float(rows[0]), float(cols[0])


def paste_centred(ink: Any, *, size: int = FIELD) -> torch.Tensor:
    """Paste the scaled digit into a ``size`` x ``size`` field (28) so that its centre of mass
    lands on the field's centre (``size / 2``, :data:`CENTRE` for 28) by a whole-pixel shift,
    as MNIST did (no resampling blur). If the mass is so lopsided that the digit would leave
    the field, it is moved only as far as keeps all of it inside.
    """
    ink = _plane(ink, "paste_centred")
    h, w = ink.shape
    if h > size or w > size:
        raise DrawingError(f"a {h} x {w} digit does not fit a {size} x {size} field; scale it")
    row, col = centre_of_mass(ink)
    top = min(max(round(size / 2 - row), 0), size - h)
    left = min(max(round(size / 2 - col), 0), size - w)
    field = np.zeros((size, size))
    field[top : top + h, left : left + w] = ink
    return torch.from_numpy(field)


def normalize(field: Any) -> torch.Tensor:
    """The 28 x 28 ink field (0..1) as the batch the network takes: 1 x 1 x 28 x 28 float32,
    shifted and scaled by the training set's mean and standard deviation, as every training
    image was (``transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))``)."""
    field = _plane(field, "normalize")
    return torch.from_numpy(((field - MNIST_MEAN) / MNIST_STD).astype(np.float32))[None, None]


def steps(
    image: Any, *, threshold: float = 0.1, min_contrast: float = 0.1
) -> dict[str, torch.Tensor]:
    """Every intermediate picture of :func:`to_mnist`, in order, as 2-D tensors to draw side
    by side: ``grey`` (as seen, on paper), ``ink`` (high on 0), ``cropped`` (bounding box),
    ``scaled`` (longer side 20), ``centred`` (28 x 28, 0..1) and ``normalized`` (28 x 28,
    what the network gets, without the batch dimensions)."""
    x = _pixels(image)
    out = {"grey": torch.from_numpy(_grey(x)), "ink": torch.from_numpy(_ink(x, min_contrast))}
    out["cropped"] = crop(out["ink"], threshold=threshold)
    out["scaled"] = scale(out["cropped"])
    out["centred"] = paste_centred(out["scaled"])
    out["normalized"] = normalize(out["centred"])[0, 0]
    return out


def to_mnist(image: Any, *, threshold: float = 0.1, min_contrast: float = 0.1) -> torch.Tensor:
    """A picture of one digit (PIL image, array or tensor; grey, RGB or RGBA; any size; dark
    ink on light paper or light on dark) as a 1 x 1 x 28 x 28 float32 batch preprocessed like
    MNIST's training images: ink on a 0 background, cropped, size-normalized into 20 x 20
    keeping the aspect ratio, centred by centre of mass in 28 x 28, normalized. :func:`steps`
    gives the pictures in between; the module docstring says why each step is there."""
    ink = _crop(_ink(_pixels(image), min_contrast), threshold)
    return normalize(paste_centred(_scale(ink, BOX)))


def _plane(x: Any, where: str) -> np.ndarray:
    """``x`` (tensor or array) checked to be a non-empty 2-D image of real numbers: one step's
    input, as float64."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise DrawingError(f"{where} expects numeric pixels, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DrawingError(f"{where} expects a 2-D image (H x W), got shape {array.shape}")
    if array.size == 0:
        raise DrawingError(f"{where} got an empty image of shape {array.shape}")
    return array.astype(np.float64, copy=False)
