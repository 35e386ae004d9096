"""Draw a digit, and watch the trained network read it: a live widget and its static fallback.
Used in Part 5: §5.11 (:func:`class_scores`, for saliency) and §5.15 (the widget).

Why this module exists: a test accuracy of 99% says little until you write a digit yourself
and see what the network makes of it. :class:`DigitPad` is a canvas in the notebook: draw with
the mouse or a finger (or upload a photo of a handwritten digit) and, at the end of each
stroke, Python preprocesses the drawing exactly as MNIST's digits were
(:func:`mnist_dissected.preprocess.to_mnist`), runs the model and shows the 28 x 28 image the
model gets, its ten probabilities, its answer, and a saliency map: how much each input pixel
moves the winning class's score, :math:`|\\partial \\max_k z_k / \\partial x|`, where
:math:`z` are the raw scores (logits) before ``log_softmax`` (:func:`class_scores`; the
saliency of Part 5, §5.11, which shows why not the log-probability).

The widget is an `anywidget <https://anywidget.dev>`_: its JavaScript and CSS are the files
``widget/draw.js`` and ``widget/draw.css`` shipped with the package (read into :data:`ESM` and
:data:`CSS`), with no build step and nothing fetched from the network, and it runs in
JupyterLab 4, Notebook 7, VS Code and Colab. Where widgets are not shown (a static rendering of
the notebook, nbval), :func:`predict_drawing` and :func:`plot_prediction` give the same answers
for an image, e.g. the drawings bundled with the package (:func:`load_drawing`).

Bad input gets a message on the pad instead of an answer: a picture that cannot be
preprocessed (a blank canvas: :class:`~mnist_dissected.preprocess.DrawingError`), a file the
browser cannot decode (:func:`unreadable_upload_message`), and a drawing too small to be a
digit, a dot (:func:`check_size`), which would otherwise be read as a confident "0".
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import traitlets
from PIL import Image

from .data import MNIST_MEAN, MNIST_STD, NORMALIZED_BLACK
from .models import unwrap
from .preprocess import DrawingError, open_image, steps, to_mnist

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The digits drawn in the bundled drawings (``mnist_dissected/drawings/<digit>.png``): RGBA,
#: 280 x 280, black strokes on transparent paper, as a browser canvas gives them.
BUNDLED_DIGITS = (0, 2, 3, 7)

#: The smallest drawing read as a digit: the longer side of its ink's bounding box, as a share
#: of the picture's longer side (:func:`check_size`). 15% is 42 pixels of the pad's 280: the
#: bundled drawings span 70 to 80%, a digit in a photo 30% or more, a click of the pen 8%.
MIN_EXTENT = 0.15
#: On the pad, a drawing must also span at least this many pen widths: a dot is one pen width
#: across however large the pad, a digit's strokes go somewhere.
MIN_PEN_WIDTHS = 2


class DrawingTooSmall(DrawingError):
    """The drawing is too small to be a digit (a dot, a speck): the pad shows a hint to draw
    bigger, not an error, and no answer (see :func:`check_size`)."""


@dataclass(frozen=True)
class Prediction:
    """What the model makes of one drawing.

    ``digit``: its answer; ``probabilities``: the ten class probabilities (sum 1);
    ``image``: the 28 x 28 picture it got, ink 0..1 before ``Normalize`` (to draw);
    ``batch``: that picture as the model's 1 x 1 x 28 x 28 normalized input;
    ``saliency``: 28 x 28, :math:`|\\partial \\max_k z_k / \\partial x|` per pixel, :math:`z` the
    class scores of :func:`class_scores`.
    """

    digit: int
    probabilities: torch.Tensor
    image: torch.Tensor
    batch: torch.Tensor
    saliency: torch.Tensor


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def class_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The raw class scores (logits, N x 10) of ``model`` for the batch ``x``, with their graph.

    Why not the model's output: ``Net`` returns log-probabilities, and for a digit it is sure
    of, the softmax is saturated: no pixel moves the winning log-probability (about 0) by much,
    so its gradient is almost 0 everywhere, a blank saliency map (Part 5, §5.11). The score
    before ``log_softmax`` does not saturate. ``Net.forward`` does not return it, so a forward
    hook on the last ``nn.Linear`` layer (``fc2``) catches it, and a check makes sure it is what
    ``log_softmax`` turns into the model's output. A model that returns scores (``LeNet``,
    ``log_probs = False``) is simply run. The one function for Part 5's saliency and the widget.
    """
    net = unwrap(model)  # the model inside DDP or torch.compile
    if not getattr(net, "log_probs", False):
        return model(x)
    linears = [module for module in net.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer to catch its scores at")
    caught: list[torch.Tensor] = []
    handle = linears[-1].register_forward_hook(lambda module, inputs, output: caught.append(output))
    try:
        log_probs = model(x)
    finally:
        handle.remove()
    scores = caught[-1]
    try:
        torch.testing.assert_close(scores.detach().log_softmax(dim=1), log_probs.detach())
    except AssertionError as e:
        raise ValueError(
            f"the output of {type(net).__name__}'s last nn.Linear layer is not the scores that "
            f"its forward turns into log-probabilities: {e}"
        ) from e
    return scores


def predict_batch(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (10) and saliency (28 x 28) of ``model`` for one normalized 1 x 1 x 28 x 28
    ``batch``. The saliency is :math:`|\\partial z_k / \\partial x|` for the winning class
    :math:`k`, with :math:`z` from :func:`class_scores`: the score, not the log-probability,
    whose gradient vanishes for a digit the model is sure of (Part 5, §5.11). The model is run
    in eval mode (no dropout: the same drawing always gets the same answer) and left in the
    mode it was in. A 32 x 32 model (LeNet) gets the batch padded."""
    if tuple(batch.shape) != (1, 1, 28, 28):
        raise ValueError(f"expected one normalized 1 x 1 x 28 x 28 image, got {tuple(batch.shape)}")
    x = batch.detach().to(_model_device(model), torch.float32).requires_grad_(True)
    size = getattr(unwrap(model), "input_size", 28)
    inputs = F.pad(x, (2, 2, 2, 2), value=NORMALIZED_BLACK) if size == 32 else x
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            scores = class_scores(model, inputs)
            scores[0].max().backward()
    finally:
        model.train(was_training)
    probabilities = scores.detach()[0].softmax(dim=0).cpu()
    return probabilities, x.grad.detach()[0, 0].abs().cpu()


def check_size(image: Any, *, min_extent: float = MIN_EXTENT, **preprocess: Any) -> None:
    """Raise :class:`DrawingTooSmall` ("draw bigger: ...") if the ink of ``image`` spans less
    than ``min_extent`` of the picture: the longer side of the ink's bounding box (the pixels
    that :func:`~mnist_dissected.preprocess.to_mnist` keeps as ink: its ``cropped`` step, which
    gets the keyword arguments) against the picture's longer side. 0 turns the check off.

    Why before preprocessing: ``to_mnist`` scales every drawing so that its longer side is 20
    pixels, so afterwards size is gone. A dot becomes a filled 20 x 20 disc, which the trained
    network reads as "0" with over 97% confidence: an answer about nothing. Why the bounding
    box and not the amount of ink: a "1" has little ink but is tall; a dot is small both ways.
    """
    if min_extent <= 0:
        return
    stages = steps(image, **preprocess)
    side, (height, width) = max(stages["grey"].shape), stages["cropped"].shape
    needed = math.ceil(min_extent * side)
    if max(height, width) < needed:
        raise DrawingTooSmall(
            f"draw bigger: the ink spans {height} x {width} pixels, a digit at least {needed} "
            f"({min_extent:.0%} of {side}). Draw across most of the pad, or crop a photo "
            "closer around the digit."
        )


def predict_drawing(
    model: nn.Module, image: Any, *, min_extent: float = MIN_EXTENT, **preprocess: Any
) -> Prediction:
    """The model's reading of a picture of one digit (any size, grey/RGB/RGBA, dark on light
    or light on dark: see :func:`~mnist_dissected.preprocess.to_mnist`, which gets the keyword
    arguments). The widget's answer without the widget. A blank or unreadable picture raises
    :class:`~mnist_dissected.preprocess.DrawingError`, and one whose ink spans less than
    ``min_extent`` of it (a dot) :class:`DrawingTooSmall`, from :func:`check_size`."""
    check_size(image, min_extent=min_extent, **preprocess)
    batch = to_mnist(image, **preprocess)
    probabilities, saliency = predict_batch(model, batch)
    return Prediction(
        digit=int(probabilities.argmax()),
        probabilities=probabilities,
        image=(batch[0, 0] * MNIST_STD + MNIST_MEAN).clamp(0, 1),
        batch=batch,
        saliency=saliency,
    )


def load_drawing(digit: int) -> Image.Image:
    """One of the bundled drawings (:data:`BUNDLED_DIGITS`), an RGBA PIL image as a canvas
    gives it: try the network on them where the live widget is not shown."""
    if digit not in BUNDLED_DIGITS:
        raise ValueError(f"no bundled drawing of {digit!r}; there are {list(BUNDLED_DIGITS)}")
    data = resources.files("mnist_dissected").joinpath("drawings", f"{digit}.png").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA")


def plot_prediction(prediction: Prediction, *, drawing: Any = None, title: str = "") -> Figure:
    """The widget's panels as a static figure: the drawing (if given), the 28 x 28 image the
    model gets, the saliency map, and the ten probabilities."""
    import matplotlib.pyplot as plt

    panels = 3 + (drawing is not None)
    fig, axes = plt.subplots(
        1, panels, figsize=(2.4 * panels + 1, 2.6), width_ratios=[1] * (panels - 1) + [1.6]
    )
    *images, bars = axes
    pictures = [(prediction.image, "what the model gets", "gray")]
    pictures.append((prediction.saliency, "saliency |∂ score / ∂x|", "hot"))
    if drawing is not None:
        pictures.insert(0, (np.asarray(drawing), "the drawing", None))
    for ax, (picture, name, cmap) in zip(images, pictures, strict=True):
        ax.imshow(np.asarray(picture), cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = bars
    colours = ["tab:orange" if k == prediction.digit else "tab:blue" for k in range(10)]
    ax.bar(range(10), prediction.probabilities.numpy(), color=colours)
    ax.set_xticks(range(10))
    ax.set_ylim(0, 1)
    ax.set_xlabel("digit")
    ax.set_ylabel("probability")
    ax.set_title(f"prediction: {prediction.digit}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def decode_data_url(url: str) -> Image.Image:
    """A ``data:image/...;base64,...`` URL (what ``canvas.toDataURL()`` gives) as a PIL image."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:image/") or ";base64" not in header:
        raise DrawingError(f"expected a base64 image data URL, got {url[:40]!r}...")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise DrawingError(f"the drawing could not be decoded as an image: {e}") from e
    return open_image(data)  # a picture's own checks: not an image, too many pixels


def unreadable_upload_message(name: str, mime: str = "") -> str:
    """What the pad says when the browser cannot decode a file chosen with "Upload a photo…"
    (a text file, a web page saved as .png, an iPhone's HEIC photo): which file, and what to
    upload instead. Here, not in the JavaScript, so that all the pad's words are in Python."""
    what = (name or "the file") + (f" ({mime})" if mime else "")
    advice = "upload a PNG, JPEG, GIF or WebP picture of a digit"
    if any(kind in f"{name} {mime}".lower() for kind in ("heic", "heif")):
        advice += " (a HEIC photo from an iPhone: share or export it as JPEG first)"
    return f"{what} is not an image the browser can read: {advice}."


# --------------------------------------------------------------------------- the widget


def _front_end(name: str) -> str:
    """The text of ``mnist_dissected/widget/<name>``, one of the widget's front-end files
    shipped as package data. anywidget gets it as a string, not a path: the same on every
    anywidget version from the floor up, and for any install (a checkout, a wheel, a zip)."""
    folder = resources.files("mnist_dissected").joinpath("widget")
    return folder.joinpath(name).read_text(encoding="utf-8")


#: The widget's front end, ``widget/draw.js`` (an ES module; anywidget loads it, no build
#: step, no network).
ESM = _front_end("draw.js")

#: The widget's look, ``widget/draw.css``; the colours follow the notebook's theme where it
#: defines them.
CSS = _front_end("draw.css")


class DigitPad(anywidget.AnyWidget):
    """A canvas to draw a digit on, and the model's live reading of it (see the module
    docstring). ``DigitPad(model)`` as a cell's last line shows it; after a stroke,
    ``pad.result`` holds the latest :class:`Prediction` (``None`` before any, or after Clear
    or unreadable input, whose reason is in ``pad.message``, a ``"hint"`` or an ``"error"``
    by ``pad.message_kind``)."""

    #: What the pad says before any drawing and after Clear.
    IDLE = "Draw a digit with the mouse or a finger."

    _esm = ESM
    _css = CSS

    #: The canvas as a PNG data URL, sent by the browser at the end of each stroke ("" = clear).
    drawing = traitlets.Unicode("").tag(sync=True)
    #: Canvas side and pen width in pixels: a digit drawn across most of the canvas then has
    #: strokes about as thick, relative to its size, as MNIST's.
    size = traitlets.Int(280).tag(sync=True)
    line_width = traitlets.Int(22).tag(sync=True)
    #: The answer (-1: none yet), the 784 pixels the model gets and the saliency (both 0..1,
    #: row by row), the ten probabilities, and what went wrong, if anything.
    prediction = traitlets.Int(-1).tag(sync=True)
    image = traitlets.List(traitlets.Float()).tag(sync=True)
    saliency = traitlets.List(traitlets.Float()).tag(sync=True)
    probabilities = traitlets.List(traitlets.Float()).tag(sync=True)
    message = traitlets.Unicode(IDLE).tag(sync=True)
    #: How the message is shown: a "hint" (what to do next: draw, draw bigger) in a neutral
    #: style, or an "error" (input that cannot be read) in red.
    message_kind = traitlets.Enum(("hint", "error"), "hint").tag(sync=True)

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.result: Prediction | None = None
        self.observe(self._on_drawing, names="drawing")
        self.on_msg(self._on_front_end_message)

    def __repr__(self) -> str:
        # What a front end without widgets shows instead of the canvas (and what nbval compares).
        return (
            f"DigitPad({type(self.model).__name__}): draw a digit in JupyterLab, "
            "Notebook 7, VS Code or Colab"
        )

    def min_extent(self) -> float:
        """The pad's :func:`check_size` limit: the larger of :data:`MIN_EXTENT` and
        :data:`MIN_PEN_WIDTHS` pen widths (44 of the default 280 pixels, 16%). The pen decides on
        a small pad or with a wide pen, where a dot alone would pass :data:`MIN_EXTENT`."""
        return max(MIN_EXTENT, MIN_PEN_WIDTHS * self.line_width / self.size)

    def _on_drawing(self, change: dict[str, Any]) -> None:
        url = change["new"]
        if not url:
            self._show(None, self.IDLE)
            return
        try:
            result = predict_drawing(self.model, decode_data_url(url), min_extent=self.min_extent())
        except DrawingTooSmall as e:
            self._show(None, str(e))
            return
        except DrawingError as e:
            self._show(None, str(e), kind="error")
            return
        self._show(result, "")

    def _on_front_end_message(self, widget: Any, content: Any, buffers: Any) -> None:
        """The front end's events: ``{"event": "clear"}`` (the Clear button) and
        ``{"event": "unreadable", "name", "type"}`` (the browser could not decode an uploaded
        file; the answer to the picture before is no answer to it). Events, not a change of
        ``drawing``: Clear on a pad already clear, or a failed upload, changes no picture, yet
        must reset the message. Anything else is ignored."""
        event = content.get("event") if isinstance(content, dict) else None
        if event == "clear":
            self._forget(self.IDLE, "hint")
        elif event == "unreadable":
            name, mime = (str(content.get(key) or "")[:100] for key in ("name", "type"))
            self._forget(unreadable_upload_message(name, mime), "error")

    def _forget(self, message: str, kind: str) -> None:
        """No answer and no picture: the next picture sent counts as new even if it is the
        one before (the same photo uploaded again after a failed upload)."""
        with self.hold_sync():
            self.drawing = ""
            self._show(None, message, kind)

    def _show(self, result: Prediction | None, message: str, kind: str = "hint") -> None:
        """Send one state to the front end in one message: the answer and its pictures (or
        none), and the message with its kind (``"hint"`` or ``"error"``)."""
        self.result = result
        with self.hold_sync():
            if result is None:
                self.image, self.saliency, self.probabilities = [], [], []
            else:
                peak = float(result.saliency.max())
                saliency = result.saliency / peak if peak > 0 else result.saliency
                self.image = [round(v, 4) for v in result.image.flatten().tolist()]
                self.saliency = [round(v, 4) for v in saliency.flatten().tolist()]
                self.probabilities = [round(v, 6) for v in result.probabilities.tolist()]
            self.prediction = -1 if result is None else result.digit
            self.message = message
            self.message_kind = kind


def draw_digit(model: nn.Module, *, size: int = 280, line_width: int = 22) -> DigitPad:
    """A :class:`DigitPad` for ``model`` (make it a cell's last line to show it)."""
    return DigitPad(model, size=size, line_width=line_width)
