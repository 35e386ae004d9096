"""The "draw your digit" widget (``mnist_dissected.draw``): its Python side, the bundled drawings
and the static fallback; then the real thing: JupyterLab (and Notebook 7) in headless Chromium,
a digit drawn on the canvas with pointer actions, the network's answer read back from the page,
and bad input (a dot, files that are no image) answered with a message instead."""

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
from PIL import Image, ImageDraw

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
    with pytest.raises(DrawingError, match="as an image"):
        draw.decode_data_url("data:image/png;base64," + base64.b64encode(b"not a png").decode())


def test_a_decompression_bomb_sent_by_the_pad_is_a_drawing_error():
    from tests.test_preprocess import png_of_zeros

    url = "data:image/png;base64," + base64.b64encode(png_of_zeros(30000, 30000)).decode()
    with pytest.raises(DrawingError, match="30000 x 30000 pixels; give one under 8000 x 8000"):
        draw.decode_data_url(url)


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


@pytest.mark.slow
def test_a_dot_is_not_read_as_a_confident_zero(model):
    """One click of the pen: scaled into MNIST's 20-pixel box it is a filled disc, which the
    trained network reads as "0" at 97.8%. The pad asks for a bigger drawing instead."""
    dot = Image.new("RGBA", (280, 280))
    ImageDraw.Draw(dot).ellipse((129, 129, 151, 151), fill=(0, 0, 0, 255))
    pad = draw.draw_digit(model)
    pad.drawing = data_url(dot)
    assert (pad.prediction, pad.probabilities) == (-1, [])
    assert pad.message.startswith("draw bigger: ") and pad.message_kind == "hint"


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

#: Files a browser cannot decode as images, as people pick them: a text file, an HTML page
#: saved under a .png name, and an iPhone photo (HEIC: its file-type box; Chromium has no HEIC
#: decoder, so a whole photo fails the same way).
NOT_IMAGES = {
    "notes.txt": b"my digits: 3, 7, 1\n",
    "page.png": b"<!DOCTYPE html><html><head><title>404</title></head><body>Gone</body></html>",
    "IMG_0042.HEIC": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8,
}

#: Counts the object URLs the page makes of uploaded files and frees, in ``window.__uploads``.
COUNT_OBJECT_URLS = """
    if (!window.__uploads) {
        const uploads = { made: [], freed: [] };
        const create = URL.createObjectURL, revoke = URL.revokeObjectURL;
        URL.createObjectURL = (object) => {
            const url = create.call(URL, object);
            if (object instanceof File) uploads.made.push(url);
            return url;
        };
        URL.revokeObjectURL = (url) => {
            uploads.freed.push(url);
            return revoke.call(URL, url);
        };
        window.__uploads = uploads;
    }
"""


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


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory, model):
    """JupyterLab from this environment on a free loopback port, serving a folder of its own
    (the third value), with its settings, workspaces and runtime files kept there too; stopped
    (it and the kernels it started) after the module's browser tests, which share it."""
    tmp_path = tmp_path_factory.mktemp("lab")
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
         "--JupyterNotebookApp.expose_app_in_browser=True",  # Notebook 7's pages, same server
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
        yield base, token, tmp_path
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


class Pad:
    """The widget as Chromium shows it, and what a person does with it: strokes and clicks on
    the canvas, Clear, a file chosen with "Upload a photo…"; and what the page then shows."""

    def __init__(self, driver, folder: Path) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.folder = driver, folder
        self.canvas = wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, ".digitpad-canvas"),
            240,
            "the widget (kernel start, torch import, model load)",
            interval=1,
        )[0]
        find = driver.find_element
        self.widget = find(By.CSS_SELECTOR, ".digitpad")
        self.prediction = find(By.CSS_SELECTOR, ".digitpad-prediction")
        self.message = find(By.CSS_SELECTOR, ".digitpad-message")
        self.file = find(By.CSS_SELECTOR, ".digitpad-file")
        self.clear_button = find(By.CSS_SELECTOR, ".digitpad-clear")
        self.bars = find(By.CSS_SELECTOR, ".digitpad-bars")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", self.widget)

    def stroke(self, points) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        actions = ActionChains(self.driver, duration=20)
        actions.move_to_element_with_offset(self.canvas, *points[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            for t in (0.25, 0.5, 0.75, 1.0):  # many small moves, as a hand makes them
                actions.move_to_element_with_offset(
                    self.canvas, round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
                )
        actions.release().perform()

    def dot(self) -> None:
        """One click in the middle of the canvas: a single dot of the pen."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).move_to_element_with_offset(self.canvas, 0, 0).click().perform()

    def answer(self) -> str:
        """The digit the page shows, once it shows one."""

        def digit() -> str:
            text = self.prediction.text
            return text if text.isdigit() else ""

        return wait_for(digit, 60, "an answer")

    def clear(self) -> None:
        self.clear_button.click()
        wait_for(
            lambda: self.prediction.text == "–" and self.message.text.startswith("Draw a digit"),
            30,
            "Clear to reset the answer and show the idle hint",
        )

    def upload(self, name: str, data: bytes | None = None) -> None:
        """Choose the file ``name`` (written first if ``data`` is given) as a person does with
        "Upload a photo…"; the page counts the object URLs made of it (``window.__uploads``)."""
        path = self.folder / name
        if data is not None:
            path.write_bytes(data)
        self.driver.execute_script(COUNT_OBJECT_URLS)
        self.file.send_keys(str(path))

    def wait_message(self, part: str, what: str) -> str:
        return wait_for(lambda: part in (text := self.message.text) and text, 30, what)

    def look(self, element) -> dict:
        """The classes and the computed colour of ``element``."""
        return self.driver.execute_script(
            "return {classes: [...arguments[0].classList].sort(),"
            " colour: getComputedStyle(arguments[0]).color};",
            element,
        )

    def bar_values(self) -> list[str]:
        return [v.text for v in self.bars.find_elements("css selector", ".digitpad-bar-value")]

    def objects_not_freed(self) -> list[str]:
        uploads = self.driver.execute_script("return window.__uploads")
        return [url for url in uploads["made"] if url not in uploads["freed"]]


def chromium(folder: Path):
    """Headless Chromium driven by Selenium, its profile and driver's log in ``folder``; skips
    the test where Chromium, its driver or selenium is missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "needs Chromium and its driver (Debian: apt-get install chromium chromium-driver); "
            f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,1000",
        f"--user-data-dir={folder / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(
        executable_path=CHROMEDRIVER, log_output=str(folder / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(30)
    return driver


def open_pad(driver, url: str, folder: Path) -> Pad:
    """Open the notebook at ``url`` (JupyterLab's or Notebook 7's page of it), wait for its
    kernel, run its cell and return the widget it shows."""
    driver.get(url)
    kernel_ready = """
        const app = window.jupyterapp;
        const panel = app && app.shell.currentWidget;
        const ctx = panel && panel.sessionContext;
        return !!(ctx && ctx.session && ctx.session.kernel && panel.content
                  && ctx.session.kernel.connectionStatus === "connected");
    """
    wait_for(lambda: driver.execute_script(kernel_ready), 180, "the notebook's kernel")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return Pad(driver, folder)


@pytest.fixture(scope="module")
def pad(jupyter_lab):
    """The widget in JupyterLab in headless Chromium, the notebook of :data:`NOTEBOOK_CELL`
    run in the module's JupyterLab: a :class:`Pad` shared by the browser tests (each starts
    with Clear). Starting it all takes most of a browser test's time."""
    base, token, folder = jupyter_lab
    write_notebook(folder / "draw.ipynb")
    driver = chromium(folder)
    try:
        yield open_pad(driver, f"{base}/lab/tree/draw.ipynb?token={token}", folder)
    finally:
        driver.quit()


def photo_of_a_three(path: Path) -> Path:
    """A photo: dark pencil on grey paper, opaque, not square (sent through the file input)."""
    photo = Image.new("RGB", (420, 300), (200, 196, 190))
    three = draw.load_drawing(3)
    pencil = Image.new("RGB", three.size, (70, 70, 80))
    photo.paste(pencil, (150, 10), mask=three.getchannel("A"))
    photo.save(path)
    return path


@pytest.mark.slow
def test_a_digit_drawn_in_chromium_is_read_by_the_network(pad):
    started = time.monotonic()
    driver, folder = pad.driver, pad.folder
    pad.clear()
    before = folder / "before.png"
    driver.save_screenshot(str(before))

    pad.stroke(SEVEN)
    assert pad.answer() == "7"
    after = folder / "after.png"
    driver.save_screenshot(str(after))
    # The README's picture: refreshed only when asked (it is a committed file).
    docs = REPO / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else folder
    pad.widget.screenshot(str(docs / "draw_digit.png"))
    probabilities = [float(value) for value in pad.bar_values()]
    assert len(probabilities) == 10 and probabilities[7] == max(probabilities)

    pad.clear()
    pad.stroke(ONE)
    assert pad.answer() == "1"

    pad.upload(photo_of_a_three(folder / "photo.png").name)
    wait_for(lambda: pad.prediction.text != "1", 60, "the photo's answer")
    assert pad.answer() == "3"
    assert pad.objects_not_freed() == []
    print(
        f"\nscreenshots: {before}, {after}, {docs / 'draw_digit.png'}; "
        f"browser part took {time.monotonic() - started:.1f} s"
    )


@pytest.mark.slow
def test_a_file_that_is_not_an_image_is_reported_on_the_pad(pad):
    """A text file, an HTML page named .png, a HEIC photo: each is said to be unreadable on the
    pad, and the answer to the picture before it goes (it is not this file's answer). The
    object URL made to decode the file is freed and the file input emptied."""
    photo = photo_of_a_three(pad.folder / "photo.png").name
    pad.clear()
    for name, data in NOT_IMAGES.items():
        pad.upload(photo)
        assert pad.answer() == "3"
        pad.upload(name, data)
        pad.wait_message(name, f"the pad to say that {name} is no image")
        assert "not an image the browser can read" in pad.message.text
        assert pad.prediction.text == "–" and set(pad.bar_values()) == {""}
        assert "digitpad-error" in pad.look(pad.message)["classes"]
        assert pad.objects_not_freed() == [] and pad.file.get_attribute("value") == ""


@pytest.mark.slow
def test_the_same_file_chosen_twice_is_read_twice(pad):
    """A file input only reports a change of file: unless it is emptied after each choice,
    picking the same file again (after a fix to the drawing, say) does nothing."""
    name, data = "notes.txt", NOT_IMAGES["notes.txt"]
    pad.clear()
    pad.upload(name, data)
    pad.wait_message(name, "the first choice of notes.txt to be reported")
    pad.stroke(SEVEN)
    assert pad.answer() == "7" and pad.message.text == ""
    pad.upload(name)
    pad.wait_message(name, "the second choice of the same notes.txt to be reported")
    assert pad.prediction.text == "–"
    photo = photo_of_a_three(pad.folder / "photo.png").name
    for _ in range(2):
        pad.clear()
        pad.upload(photo)
        assert pad.answer() == "3"


@pytest.mark.slow
def test_the_idle_hint_and_an_error_look_different(pad):
    """The idle hint is not dressed as an error: another class, another colour."""
    pad.clear()
    idle = pad.look(pad.message)
    pad.upload("notes.txt", NOT_IMAGES["notes.txt"])
    pad.wait_message("notes.txt", "the error about notes.txt")
    error = pad.look(pad.message)
    pad.widget.screenshot(str(pad.folder / "unreadable_upload.png"))
    assert "digitpad-hint" in idle["classes"] and "digitpad-error" in error["classes"]
    assert idle["colour"] != error["colour"], (idle, error)


@pytest.mark.slow
def test_a_dot_gets_a_hint_to_draw_bigger(pad):
    """One click on the canvas is not read as a digit (it was: "0" at 97.8%)."""
    pad.clear()
    pad.stroke(SEVEN)
    assert pad.answer() == "7"
    pad.clear()
    pad.dot()
    pad.wait_message("draw bigger", "the hint to draw bigger")
    assert pad.prediction.text == "–" and "digitpad-hint" in pad.look(pad.message)["classes"]
    pad.widget.screenshot(str(pad.folder / "draw_bigger.png"))
    pad.clear()
    pad.stroke(ONE)  # a stroke is long enough again
    assert pad.answer() == "1"


@pytest.mark.slow
def test_the_widget_works_in_jupyter_notebook_7(jupyter_lab):
    """The README's promise: in Jupyter Notebook 7 (installed by the ``lab`` extra, and served
    by the same server as JupyterLab) the pad shows, and a drawn digit is read."""
    pytest.importorskip("notebook", minversion="7", reason="needs Jupyter Notebook 7 (lab extra)")
    base, token, lab_folder = jupyter_lab
    folder = lab_folder / "notebook7"
    folder.mkdir()
    write_notebook(folder / "draw.ipynb")
    driver = chromium(folder)
    try:
        pad = open_pad(driver, f"{base}/notebooks/notebook7/draw.ipynb?token={token}", folder)
        assert pad.prediction.text == "–" and pad.message.text.startswith("Draw a digit")
        assert "/notebooks/" in driver.current_url  # Notebook 7's page, not JupyterLab's
        pad.stroke(SEVEN)
        assert pad.answer() == "7"
        driver.save_screenshot(str(folder / "notebook7.png"))
    finally:
        driver.quit()
