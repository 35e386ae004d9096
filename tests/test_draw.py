"""The widget's saliency (``mnist_dissected.draw``) is Part 5 §5.11's: the gradient of the
winning class's score (logit), not of its saturated log-probability; and its front end is the
package's ``widget/draw.js`` and ``widget/draw.css``. Small untrained models, no checkpoint and
no browser, so these run in a second."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_dissected import draw
from mnist_dissected.data import NORMALIZED_BLACK
from mnist_dissected.models import LeNet, Net


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def data_url(digit: int) -> str:
    buffer = io.BytesIO()
    draw.load_drawing(digit).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def score_saliency(net: Net, batch: torch.Tensor) -> torch.Tensor:
    """§5.11's measure, written out by hand: hook fc2, differentiate the top score."""
    caught = []
    handle = net.fc2.register_forward_hook(lambda module, inputs, output: caught.append(output))
    x = batch.clone().requires_grad_(True)
    net(x)
    handle.remove()
    caught[0][0].max().backward()
    return x.grad[0, 0].abs()


def log_prob_saliency(net: Net, batch: torch.Tensor) -> torch.Tensor:
    """What the widget used to show: the gradient of the top log-probability."""
    x = batch.clone().requires_grad_(True)
    net(x)[0].max().backward()
    return x.grad[0, 0].abs()


def net_features(net: Net, x: torch.Tensor) -> torch.Tensor:
    """Net.forward up to fc1's input (eval mode: no dropout)."""
    x = F.relu(F.max_pool2d(net.conv1(x), 2))
    x = F.relu(F.max_pool2d(net.conv2(x), 2))
    return torch.flatten(x, 1)


def test_class_scores_are_the_logits_behind_the_log_probabilities(net):
    x = torch.randn(3, 1, 28, 28)
    scores = draw.class_scores(net, x)
    torch.testing.assert_close(scores, net.fc2(F.relu(net.fc1(net_features(net, x)))))
    torch.testing.assert_close(scores.log_softmax(dim=1), net(x))
    assert scores.requires_grad  # the graph is kept: it is there to be differentiated
    assert not net.fc2._forward_hooks  # the hook is removed again


def test_class_scores_of_a_model_that_returns_scores_is_its_output():
    torch.manual_seed(0)
    lenet = LeNet().eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(draw.class_scores(lenet, x), lenet(x))


def test_class_scores_refuses_a_last_layer_that_is_not_the_scores():
    class Doubled(nn.Module):
        log_probs = True

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(2 * self.fc(x), dim=1)

    with pytest.raises(ValueError, match="not the scores"):
        draw.class_scores(Doubled(), torch.randn(2, 4))


def test_the_saliency_of_a_drawing_is_the_gradient_of_the_winning_score(net):
    result = draw.predict_drawing(net, draw.load_drawing(7))
    expected = score_saliency(net, result.batch)
    torch.testing.assert_close(result.saliency, expected)
    assert not torch.allclose(result.saliency, log_prob_saliency(net, result.batch))
    torch.testing.assert_close(result.probabilities, net(result.batch)[0].exp())
    assert not net.training


def test_the_widget_shows_the_same_saliency(net):
    pad = draw.draw_digit(net)
    pad.drawing = data_url(3)  # what the browser sends at the end of a stroke
    expected = score_saliency(net, pad.result.batch)
    torch.testing.assert_close(pad.result.saliency, expected)
    shown = torch.tensor(pad.saliency).reshape(28, 28)
    torch.testing.assert_close(shown, (expected / expected.max()).float(), rtol=0, atol=1e-4)


def test_a_32_pixel_model_gets_the_drawing_padded_and_its_saliency_cropped():
    torch.manual_seed(0)
    lenet = LeNet().eval()
    result = draw.predict_drawing(lenet, draw.load_drawing(2))
    x = F.pad(result.batch, (2, 2, 2, 2), value=NORMALIZED_BLACK).requires_grad_(True)
    lenet(x)[0].max().backward()
    torch.testing.assert_close(result.saliency, x.grad[0, 0, 2:-2, 2:-2].abs())
    assert result.saliency.shape == (28, 28)


def test_the_widget_sends_the_front_end_files_next_to_draw_py(net):
    """anywidget gets the text of ``widget/draw.js`` and ``widget/draw.css`` as they are on disk
    (UTF-8: the JavaScript's "…" arrives whole), and every class the CSS styles is one the
    JavaScript makes."""
    folder = Path(draw.__file__).parent / "widget"
    pad = draw.draw_digit(net)
    assert pad._esm == draw.ESM == (folder / "draw.js").read_text(encoding="utf-8")
    assert pad._css == draw.CSS == (folder / "draw.css").read_text(encoding="utf-8")
    assert "export default { render };" in pad._esm and "Upload a photo…" in pad._esm
    styled = set(re.findall(r"\.(digitpad[\w-]*)", pad._css))
    made = set(re.findall(r'"(digitpad[\w-]*)"', pad._esm))
    assert "digitpad-canvas" in styled and styled <= made


# --------------------------------------------------------------------------- bad input


def pad_picture(*shapes: tuple[str, tuple[int, int, int, int]], size: int = 280) -> str:
    """A pad's canvas as the browser sends it (transparent, black ink), with ``shapes``:
    ``("dot", box)`` a filled ellipse, ``("line", box)`` a 22-pixel stroke between two
    corners."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size))
    pen = ImageDraw.Draw(image)
    for kind, box in shapes:
        if kind == "dot":
            pen.ellipse(box, fill=(0, 0, 0, 255))
        else:
            pen.line(box, fill=(0, 0, 0, 255), width=22)
    return png_url(image)


def png_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


#: One click of the pad's 22-pixel pen in the middle of the 280-pixel pad.
DOT = ("dot", (129, 129, 151, 151))


def test_a_dot_gets_a_hint_to_draw_bigger_not_an_answer(net):
    """A dot, scaled like every drawing to a 20-pixel box, becomes a filled disc that the
    trained network reads as "0" (97.8%): the pad says to draw bigger instead."""
    pad = draw.draw_digit(net)
    pad.drawing = data_url(7)
    pad.drawing = pad_picture(DOT)
    assert pad.prediction == -1 and pad.result is None and pad.probabilities == []
    assert pad.message.startswith("draw bigger: ") and pad.message_kind == "hint"
    with pytest.raises(draw.DrawingError, match=r"^draw bigger: the ink spans 2[2-4] x 2[2-4] "):
        draw.predict_drawing(net, draw.decode_data_url(pad_picture(DOT)))
    pad.drawing = pad_picture(("line", (140, 100, 140, 140)))  # a "1" a seventh of the pad high
    assert pad.prediction == -1 and pad.message.startswith("draw bigger: ")
    small_pad = draw.draw_digit(net, size=140)  # the pen's dot is 16% of this pad
    small_pad.drawing = pad_picture(("dot", (59, 59, 81, 81)), size=140)
    assert small_pad.prediction == -1 and small_pad.message.startswith("draw bigger: ")


def test_drawings_big_enough_to_be_digits_still_get_answers(net):
    """The limit (:data:`draw.MIN_EXTENT`, and two pen widths on the pad) lies well below any
    digit: the bundled drawings span 70 to 80% of the pad, a "1" drawn a fifth of the pad high
    or a "7" at a third of the bundled size are answered, and so is a picture of another size
    or an MNIST-sized one."""
    from PIL import Image

    from mnist_dissected import preprocess

    pad = draw.draw_digit(net)
    for digit in draw.BUNDLED_DIGITS:
        pad.drawing = data_url(digit)
        assert pad.prediction >= 0 and pad.message == "", digit
    pad.drawing = pad_picture(("line", (140, 110, 140, 166)))  # 56 + 22 pixels high
    assert pad.prediction >= 0 and pad.message == ""
    small = Image.new("RGBA", (280, 280))
    small.paste(draw.load_drawing(7).resize((93, 93)), (90, 90))
    assert max(preprocess.crop(preprocess.to_ink(small)).shape) < 0.3 * 280
    pad.drawing = png_url(small)
    assert pad.prediction >= 0 and pad.message == ""
    mnist_like = torch.zeros(28, 28)
    mnist_like[4:24, 12:16] = 1  # a "1": 20 of 28 pixels high, as MNIST's are
    assert draw.predict_drawing(net, mnist_like).probabilities.shape == (10,)
    assert draw.predict_drawing(net, draw.load_drawing(3).resize((1000, 1000))).digit >= 0


def test_the_idle_hint_and_an_error_are_styled_apart(net):
    """The idle hint ("Draw a digit ...") is not in the error's red: each message says what it
    is (``message_kind``), the front end gives each kind its class, and the CSS its colour."""
    pad = draw.draw_digit(net)
    assert pad.message.startswith("Draw a digit") and pad.message_kind == "hint"
    pad.drawing = pad_picture()  # a blank canvas: an error
    assert "blank" in pad.message and pad.message_kind == "error"
    pad.drawing = ""  # Clear
    assert pad.message.startswith("Draw a digit") and pad.message_kind == "hint"
    rules = dict(re.findall(r"\.(digitpad-[\w-]+)\s*\{([^}]*)\}", draw.CSS))
    colour = {name: re.search(r"(?:^|;)\s*color:\s*([^;]+)", rules[name]) for name in rules}
    assert colour["digitpad-message"] is None  # the kind's class decides the colour
    assert colour["digitpad-hint"][1] != colour["digitpad-error"][1]
    assert '"digitpad-hint"' in draw.ESM and '"digitpad-error"' in draw.ESM


@pytest.mark.parametrize(
    ("name", "mime", "advice"),
    [
        ("notes.txt", "text/plain", "PNG, JPEG"),
        ("page.png", "image/png", "PNG, JPEG"),
        ("IMG_0042.HEIC", "image/heic", "as JPEG"),
    ],
)
def test_an_upload_the_browser_cannot_decode_is_reported_and_clears_the_answer(
    net, name, mime, advice
):
    """The front end tells Python when the browser cannot decode a chosen file (a text file, an
    HTML page named .png, an iPhone's HEIC photo): the old answer goes, the message says why."""
    pad = draw.draw_digit(net)
    pad.drawing = data_url(7)
    pad._handle_custom_msg({"event": "unreadable", "name": name, "type": mime}, [])
    assert pad.prediction == -1 and pad.result is None and pad.probabilities == []
    assert name in pad.message and advice in pad.message and pad.message_kind == "error"
    pad._handle_custom_msg({"event": "something else"}, [])  # ignored, not an error
    assert name in pad.message
    pad.drawing = data_url(7)  # the picture before, uploaded again: answered again
    assert pad.prediction >= 0 and pad.message == ""


def test_clear_resets_the_message_even_on_a_clear_pad(net):
    """Clear is an event from the front end: after a failed upload on a clear pad the picture
    (``drawing == ""``) does not change, but the message must."""
    pad = draw.draw_digit(net)
    pad._handle_custom_msg({"event": "unreadable", "name": "notes.txt", "type": ""}, [])
    assert pad.message_kind == "error" and pad.drawing == ""
    pad._handle_custom_msg({"event": "clear"}, [])
    assert (pad.message, pad.message_kind, pad.prediction) == (pad.IDLE, "hint", -1)
    pad.drawing = data_url(3)
    pad._handle_custom_msg({"event": "clear"}, [])
    assert pad.drawing == "" and pad.result is None and pad.message == pad.IDLE


def test_the_lab_extra_installs_jupyter_notebook_7():
    """The README and the widget promise Jupyter Notebook 7: `make lab` (``.[lab,test]``)
    installs it, at a floor that is a Notebook 7 (6 has no anywidget front end)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    lab = {
        r.name: r for r in map(Requirement, pyproject["project"]["optional-dependencies"]["lab"])
    }
    assert "notebook" in lab, sorted(lab)
    assert str(lab["notebook"].specifier) == ">=7.0"
    assert "Notebook 7" in draw.__doc__
