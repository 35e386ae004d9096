"""The "draw your digit" widget (``mnist_dissected.draw``): its Python side, the bundled drawings
and the static fallback; then the real thing: JupyterLab in headless Chromium, a digit drawn on
the canvas with pointer actions, and the network's answer read back from the page."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_dissected import draw
from mnist_dissected.preprocess import DrawingError
from mnist_dissected.pretrained import load_or_train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    trained, _ = load_or_train()
    return trained


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --------------------------------------------------------------------------- Python side


def test_bundled_drawings_are_canvas_like_rgba():
    for digit in draw.BUNDLED_DIGITS:
        image = draw.load_drawing(digit)
        assert image.mode == "RGBA" and image.size == (280, 280)
        alpha = np.asarray(image)[..., 3]
        assert alpha[0, 0] == 0 and alpha.max() == 255  # transparent paper, opaque ink
    with pytest.raises(ValueError, match="no bundled drawing"):
        draw.load_drawing(5)


def test_decode_data_url_refuses_what_is_not_an_image():
    image = draw.decode_data_url(data_url(Image.new("RGBA", (4, 3))))
    assert image.size == (4, 3)
    for bad in ("", "hello", "data:text/plain;base64,aGk=", "data:image/png;base64,@@@"):
        with pytest.raises(DrawingError):
            draw.decode_data_url(bad)
    with pytest.raises(DrawingError, match="decoded"):
        draw.decode_data_url("data:image/png;base64," + base64.b64encode(b"not a png").decode())


@pytest.mark.slow
def test_predict_drawing_reads_the_bundled_drawings(model):
    for digit in draw.BUNDLED_DIGITS:
        result = draw.predict_drawing(model, draw.load_drawing(digit))
        assert result.digit == digit
        assert result.probabilities.shape == (10,)
        assert abs(float(result.probabilities.sum()) - 1) < 1e-5
        assert result.image.shape == result.saliency.shape == (28, 28)
        assert result.batch.shape == (1, 1, 28, 28)
        assert float(result.saliency.min()) >= 0 and float(result.saliency.max()) > 0
    assert not model.training  # left in the mode it was in
    fig = draw.plot_prediction(result, drawing=draw.load_drawing(digit))
    assert len(fig.axes) == 4
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.slow
def test_predict_drawing_leaves_a_training_model_training(model):
    model.train()
    try:
        first = draw.predict_drawing(model, draw.load_drawing(3))
        second = draw.predict_drawing(model, draw.load_drawing(3))
        assert model.training
        assert (first.probabilities == second.probabilities).all()  # no dropout noise
    finally:
        model.eval()


@pytest.mark.slow
def test_the_widget_answers_each_drawing_sent_by_the_browser(model):
    pad = draw.draw_digit(model)
    assert pad.prediction == -1 and pad.result is None
    pad.drawing = data_url(draw.load_drawing(7))  # what the front end sends after a stroke
    assert pad.prediction == 7 and pad.result.digit == 7 and pad.message == ""
    assert len(pad.image) == len(pad.saliency) == 784 and len(pad.probabilities) == 10
    assert max(pad.saliency) == 1.0 and 0 <= min(pad.image) <= max(pad.image) <= 1
    pad.drawing = data_url(Image.new("RGBA", (280, 280)))  # a blank canvas
    assert pad.prediction == -1 and "blank" in pad.message and pad.probabilities == []
    pad.drawing = data_url(draw.load_drawing(2))
    assert pad.prediction == 2
    pad.drawing = ""  # Clear
    assert pad.prediction == -1 and pad.result is None and pad.image == []


# --------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

NOTEBOOK_CELL = """\
try:
    from mnist_dissected.pretrained import load_or_train
except ImportError:
    from mnist_dissected.checkpoint import load_or_train
from mnist_dissected.draw import draw_digit

model, _ = load_or_train()
pad = draw_digit(model)
pad"""

#: Strokes in CSS pixels from the canvas's centre (280 x 280): a "7", then after Clear a "1".
SEVEN = [(-75, -90), (-25, -91), (25, -92), (75, -92), (55, -40), (30, 10), (10, 55), (-5, 100)]
ONE = [(5, -100), (3, -50), (1, 0), (-1, 50), (-3, 100)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def jupyter_lab(tmp_path, model):
    """JupyterLab from this environment on a free loopback port, serving ``tmp_path``, with
    its settings, workspaces and runtime files kept in ``tmp_path`` too; stopped (it and the
    kernels it started) at the end."""
    port, token = free_port(), "mnist-dissected-" + os.urandom(8).hex()
    home = tmp_path / "jupyter"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "PYTHONUNBUFFERED": "1",
    }
    log = open(tmp_path / "jupyter.log", "w")  # noqa: SIM115 (closed at the end)
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.port_retries=0", "--expose-app-in-browser", "--allow-root",
         f"--LabApp.user_settings_dir={home / 'settings'}",
         f"--LabApp.workspaces_dir={home / 'workspaces'}"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if lab.poll() is not None:
            raise RuntimeError(f"JupyterLab exited: {(tmp_path / 'jupyter.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    news = (
        home
        / "settings"
        / "@jupyterlab"
        / "apputils-extension"
        / "notification.jupyterlab-settings"
    )
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    try:
        wait_for(up, 120, "JupyterLab to answer")
        yield base, token
    finally:
        try:  # stops the kernels too
            request = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(request, timeout=10).close()
            lab.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if lab.poll() is None:
            os.kill(lab.pid, signal.SIGKILL)
            lab.wait(timeout=10)
        log.close()


def write_notebook(path: Path) -> None:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "draw",
                "metadata": {},
                "outputs": [],
                "source": NOTEBOOK_CELL,
            }
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }  # fmt: skip
    path.write_text(json.dumps(notebook, indent=1))


@pytest.mark.slow
def test_a_digit_drawn_in_chromium_is_read_by_the_network(tmp_path, jupyter_lab):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "needs Chromium and its driver (Debian: apt-get install chromium chromium-driver); "
            f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip)")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    base, token = jupyter_lab
    write_notebook(tmp_path / "draw.ipynb")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(
        executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(30)
    try:
        driver.get(f"{base}/lab/tree/draw.ipynb?token={token}")
        kernel_ready = """
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            const ctx = panel && panel.sessionContext;
            return !!(ctx && ctx.session && ctx.session.kernel && panel.content
                      && ctx.session.kernel.connectionStatus === "connected");
        """
        wait_for(lambda: driver.execute_script(kernel_ready), 180, "the notebook's kernel")
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        canvas = wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, ".digitpad-canvas"),
            240,
            "the widget (kernel start, torch import, model load)",
            interval=1,
        )[0]
        prediction = driver.find_element(By.CSS_SELECTOR, ".digitpad-prediction")
        widget = driver.find_element(By.CSS_SELECTOR, ".digitpad")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", widget)
        assert prediction.text == "–"
        before = tmp_path / "before.png"
        driver.save_screenshot(str(before))

        def stroke(points):
            actions = ActionChains(driver, duration=20)
            actions.move_to_element_with_offset(canvas, *points[0]).click_and_hold()
            for (x0, y0), (x1, y1) in itertools.pairwise(points):
                for t in (0.25, 0.5, 0.75, 1.0):  # many small moves, as a hand makes them
                    actions.move_to_element_with_offset(
                        canvas, round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
                    )
            actions.release().perform()

        def answer() -> str:
            return wait_for(
                lambda: prediction.text if prediction.text.isdigit() else "", 60, "an answer"
            )

        stroke(SEVEN)
        assert answer() == "7"
        after = tmp_path / "after.png"
        driver.save_screenshot(str(after))
        # The README's picture: refreshed only when asked (it is a committed file).
        docs = REPO / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
        widget.screenshot(str(docs / "draw_digit.png"))
        bars = driver.find_elements(By.CSS_SELECTOR, ".digitpad-bar-value")
        probabilities = [float(bar.text) for bar in bars]
        assert len(probabilities) == 10 and probabilities[7] == max(probabilities)

        driver.find_element(By.CSS_SELECTOR, ".digitpad-clear").click()
        wait_for(lambda: prediction.text == "–", 30, "Clear to reset the answer")
        stroke(ONE)
        assert answer() == "1"

        # A photo: dark pencil on grey paper, opaque, not square, sent through the file input.
        photo = Image.new("RGB", (420, 300), (200, 196, 190))
        three = draw.load_drawing(3)
        pencil = Image.new("RGB", three.size, (70, 70, 80))
        photo.paste(pencil, (150, 10), mask=three.getchannel("A"))
        photo.save(tmp_path / "photo.png")
        driver.find_element(By.CSS_SELECTOR, ".digitpad-file").send_keys(
            str(tmp_path / "photo.png")
        )
        wait_for(lambda: prediction.text != "1", 60, "the photo's answer")
        assert answer() == "3"
        print(
            f"\nscreenshots: {before}, {after}, {docs / 'draw_digit.png'}; "
            f"browser part took {time.monotonic() - started:.1f} s"
        )
    finally:
        driver.quit()
