"""The widget's saliency (``mnist_dissected.draw``) is Part 5 §5.12's: the gradient of the
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
    """§5.12's measure, written out by hand: hook fc2, differentiate the top score."""
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
