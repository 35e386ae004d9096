"""MNIST's preprocessing for any picture of a digit (``mnist_dissected.preprocess``): each step,
each kind of bad input (files too, and decompression bombs), and the round trip: real MNIST test
digits blown up, inverted, moved off-centre on a large canvas, and brought back, read by the
trained network about as well as the originals. Photos of digits on paper: tests/test_photos.py."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_dissected import preprocess
from mnist_dissected.data import MNIST_MEAN, MNIST_STD, NORMALIZED_BLACK, load_mnist
from mnist_dissected.pretrained import load_or_train


def canvas_digit(*, size=200, top=40, left=60, height=120, width=30, ink=255, paper=0):
    """A grey uint8 picture: a filled bar (a "1") of ink on paper."""
    image = np.full((size, size), paper, np.uint8)
    image[top : top + height, left : left + width] = ink
    return image


@pytest.fixture(scope="module")
def test_digits():
    mnist = load_mnist(train=False)
    return mnist.data[:500].numpy(), mnist.targets[:500]


# --------------------------------------------------------------------------- input checks


def test_pixels_reads_grey_rgb_rgba_pil_and_tensors():
    grey = np.array([[0, 255], [51, 102]], np.uint8)
    assert preprocess.pixels(grey).shape == (2, 2, 1)
    torch.testing.assert_close(preprocess.pixels(grey)[..., 0], torch.from_numpy(grey / 255))
    assert preprocess.pixels(np.zeros((3, 4, 3), np.uint8)).shape == (3, 4, 3)
    assert preprocess.pixels(np.zeros((3, 4, 4), np.float32)).shape == (3, 4, 4)
    assert preprocess.pixels(torch.ones(5, 6)).shape == (5, 6, 1)
    assert preprocess.pixels(np.ones((2, 2), bool)).max() == 1
    for mode, channels in (("L", 1), ("RGB", 3), ("RGBA", 4), ("LA", 4), ("P", 3), ("1", 3)):
        assert preprocess.pixels(Image.new(mode, (7, 5))).shape == (5, 7, channels), mode


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros(10), "1-D"),
        (np.zeros((2, 8, 8, 1)), "one at a time"),
        (np.zeros((8, 8, 2)), "C = 1, 3"),
        (np.zeros((3, 28, 28)), "channels-first"),
        (np.zeros((0, 28)), "empty"),
        (np.zeros((28, 0, 3)), "empty"),
        (np.zeros((5, 5, 0)), "C = 1, 3"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
        (np.array([[None, 1], [2, 3]], dtype=object), "numeric"),
        ("digit.png", "could not read 'digit.png' as an image"),
        (b"\x89PNG", "could not read the bytes as an image"),
        (io.BytesIO(b"GIF89a"), "could not read"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.full((8, 8), np.inf), "NaN"),
        (np.full((8, 8), 300), "0..255"),
        (np.full((8, 8), -1), "0..255"),
        (np.full((8, 8), 200.0), "divide by 255"),
        (np.full((8, 8), -0.5), r"\[0, 1\]"),
        (np.zeros((8, 8), complex), "numeric"),
        ([[1, 2], [3]], "cannot read"),
    ],
)
def test_bad_input_is_a_clear_value_error(image, match):
    with pytest.raises(preprocess.DrawingError, match=match):
        preprocess.to_mnist(image)
    assert issubclass(preprocess.DrawingError, ValueError)


@pytest.mark.parametrize(
    "image",
    [
        np.full((50, 50), 255, np.uint8),  # white paper
        np.zeros((50, 50), np.uint8),  # black paper
        np.full((50, 50, 3), 128, np.uint8),  # uniform grey
        np.zeros((50, 50, 4), np.uint8),  # a cleared canvas: all transparent
        np.full((50, 50), 200, np.uint8) + np.eye(50, dtype=np.uint8) * 10,  # faint smudge
        np.zeros((1, 1)),
    ],
)
def test_a_blank_drawing_is_refused(image):
    with pytest.raises(preprocess.DrawingError, match="blank"):
        preprocess.to_mnist(image)


def test_a_palette_png_keeps_its_transparent_paper(tmp_path):
    """A palette PNG whose paper entry is transparent (black, as a canvas's): through RGB the
    paper would turn black like the ink, and the drawing would look blank."""
    indices = canvas_digit(ink=1, paper=0)  # entry 0: transparent paper, entry 1: black ink
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 0, 0, 0])
    palette.save(tmp_path / "digit.png", transparency=0)
    reopened = Image.open(tmp_path / "digit.png")
    assert reopened.mode == "P" and "transparency" in reopened.info
    assert preprocess.pixels(reopened).shape[-1] == 4
    expected = preprocess.to_mnist(canvas_digit(ink=0, paper=255))  # the same digit, black on white
    torch.testing.assert_close(preprocess.to_mnist(reopened), expected)


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    digit = np.where(canvas_digit() > 0, 20000, 65535).astype(np.uint16)  # pencil on paper
    Image.fromarray(digit).save(tmp_path / "digit16.png")
    reopened = Image.open(tmp_path / "digit16.png")
    assert reopened.mode.startswith("I")
    x = preprocess.pixels(reopened)
    assert x.shape == (200, 200, 1)
    assert x.max() == 1 and x.min().item() == pytest.approx(20000 / 65535)
    torch.testing.assert_close(preprocess.to_mnist(reopened), preprocess.to_mnist(digit / 65535))
    mode_i = Image.fromarray(digit.astype(np.int32))  # mode "I": older Pillow's 16-bit PNG
    assert mode_i.mode == "I"
    torch.testing.assert_close(preprocess.pixels(mode_i), x)
    with pytest.raises(preprocess.DrawingError, match=r"0\.\.65535"):
        preprocess.pixels(Image.fromarray(np.full((4, 4), 70000, np.int32)))


def test_a_float_image_is_read_on_its_own_scale():
    """PIL's float images ("F") hold 0..1 (from an array) or 0..255 (``convert("F")``); an "I"
    image can hold 8-bit values. Through ``convert("RGB")`` a 0..1 float picture came out
    blank, and 8-bit values read as 16-bit ones were too faint to tell from the paper."""
    digit = canvas_digit(ink=30, paper=220)
    expected = preprocess.to_mnist(digit)
    unit = (digit / 255).astype(np.float32)
    torch.testing.assert_close(
        preprocess.to_mnist(Image.fromarray(unit)), preprocess.to_mnist(unit)
    )
    torch.testing.assert_close(preprocess.to_mnist(Image.fromarray(digit).convert("F")), expected)
    torch.testing.assert_close(
        preprocess.to_mnist(Image.fromarray(digit.astype(np.int32))), expected
    )
    for bad, match in ((-unit, "0..65535"), (unit * 1e6, "0..65535"), (unit * np.nan, "NaN")):
        with pytest.raises(preprocess.DrawingError, match=match):
            preprocess.to_mnist(Image.fromarray(bad))


def portrait_digit():
    """A "7" (MNIST's first test digit) in black on white, 120 x 90: tall, and not the same
    turned a quarter turn."""
    seven = load_mnist(train=False).data[0].numpy()
    big = Image.fromarray(255 - seven).resize((84, 84), Image.Resampling.BILINEAR)
    page = Image.new("L", (90, 120), 255)
    page.paste(big, (3, 18))
    return page


def test_a_phones_exif_orientation_is_applied(tmp_path):
    """A phone stores a portrait photo's pixels sideways and says so in EXIF (Orientation 6:
    turn them 90° clockwise to show them); read as stored, the digit lies on its side."""
    upright = portrait_digit()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "sideways.png", exif=exif.tobytes())
    expected = preprocess.to_mnist(upright)
    stored = Image.open(tmp_path / "sideways.png")
    assert stored.size == (120, 90)
    for source in (stored, tmp_path / "sideways.png", (tmp_path / "sideways.png").read_bytes()):
        torch.testing.assert_close(preprocess.to_mnist(source), expected)
    assert preprocess.open_image(tmp_path / "sideways.png").size == (90, 120)


def test_files_are_read_by_path_bytes_or_file_object(tmp_path):
    upright = portrait_digit()
    upright.save(tmp_path / "seven.png")
    expected = preprocess.to_mnist(upright)
    with open(tmp_path / "seven.png", "rb") as file:
        sources = [tmp_path / "seven.png", str(tmp_path / "seven.png"), file]
        for source in [*sources, (tmp_path / "seven.png").read_bytes()]:
            torch.testing.assert_close(preprocess.to_mnist(source), expected)


def png_of_zeros(width, height):
    """A valid 1-bit grey PNG of ``width`` x ``height`` black pixels, built row block by row
    block without holding the picture: 30000 x 30000 (900 MB decoded) is a 110 kB file."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * (1 + (width + 7) // 8)  # the filter byte, then the packed bits
    packer = zlib.compressobj(6)
    rows = [packer.compress(row * 256) for _ in range(height // 256)]
    rows += [packer.compress(row * (height % 256)), packer.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(rows)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_a_drawing_error(tmp_path):
    """A tiny PNG that declares 30000 x 30000 pixels: PIL's DecompressionBombError (or, from
    89 million pixels, its warning) must not escape from an upload; the message says what to
    give instead. Every way a file comes in: path, bytes, open file."""
    bomb = png_of_zeros(30000, 30000)
    assert len(bomb) < 200_000
    (tmp_path / "bomb.png").write_bytes(bomb)
    message = "the picture is 30000 x 30000 pixels; give one under 8000 x 8000"
    with open(tmp_path / "bomb.png", "rb") as file:
        for source in (tmp_path / "bomb.png", str(tmp_path / "bomb.png"), bomb, file):
            with pytest.raises(preprocess.DrawingError, match=message):
                preprocess.to_mnist(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning too
        with pytest.raises(preprocess.DrawingError, match="10000 x 10000 pixels"):
            preprocess.open_image(png_of_zeros(10000, 10000))


def test_a_huge_pil_image_or_array_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """Under PIL's own limits (9000 x 9000, not even a warning) but still gigabytes as float
    pixels: refused from its size, without decoding the pixels."""
    (tmp_path / "big.png").write_bytes(png_of_zeros(9000, 9000))
    with Image.open(tmp_path / "big.png") as image:
        monkeypatch.setattr(image, "load", lambda: pytest.fail("the pixels were decoded"))
        with pytest.raises(preprocess.DrawingError, match="9000 x 9000 pixels"):
            preprocess.to_mnist(image)
    with pytest.raises(preprocess.DrawingError, match="8001 x 8001 pixels"):
        preprocess.to_mnist(np.zeros((8001, 8001), np.uint8))


def test_paper_grain_does_not_stretch_the_ink_box():
    """Pencil (grey 150) on paper (200) with grain of a few grey levels: the strongest ink
    stands out by 50 levels, so the ink threshold (a tenth) is 5 levels, which the grain
    passes here and there; the ink box was then the whole picture, not the digit's."""
    clean = canvas_digit(ink=150, paper=200)  # a 120 x 30 bar
    grain = np.random.default_rng(0).normal(0, 2.5, clean.shape)
    grainy = np.clip(np.round(clean + grain), 0, 255).astype(np.uint8)
    steps, expected = preprocess.steps(grainy), preprocess.steps(clean)
    height, width = steps["cropped"].shape
    assert abs(height - 120) <= 4 and abs(width - 30) <= 4, (height, width)
    assert (steps["centred"] - expected["centred"]).abs().mean() < 0.05


# --------------------------------------------------------------------------- the steps


def test_to_grey_lays_a_transparent_canvas_on_paper_that_contrasts_with_the_ink():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[4:6, 4:6] = (0, 0, 0, 255)  # black strokes on a transparent canvas
    grey = preprocess.to_grey(rgba)
    assert grey[0, 0] == 1 and grey[5, 5] == 0
    rgba[4:6, 4:6] = (255, 255, 255, 255)  # white chalk on a transparent canvas
    grey = preprocess.to_grey(rgba)
    assert grey[0, 0] == 0 and grey[5, 5].item() == pytest.approx(1)
    rgba[4:6, 4:6] = (0, 0, 0, 128)  # half-transparent (anti-aliased) black
    assert preprocess.to_grey(rgba)[5, 5] == pytest.approx(1 - 128 / 255)


def test_to_grey_mixes_colour_like_pil():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(rgb).convert("L")) / 255
    torch.testing.assert_close(preprocess.to_grey(rgb), torch.from_numpy(pil), atol=1 / 255, rtol=0)


def test_to_ink_finds_polarity_from_the_paper_and_stretches_the_contrast():
    light_on_dark = canvas_digit(ink=255, paper=0)
    dark_on_light = canvas_digit(ink=0, paper=255)
    photo = canvas_digit(ink=60, paper=190)  # grey paper, grey pencil
    expected = torch.from_numpy(light_on_dark / 255.0)
    for image in (light_on_dark, dark_on_light, photo, np.stack([photo] * 3, axis=-1)):
        torch.testing.assert_close(preprocess.to_ink(image), expected)


def test_to_ink_polarity_holds_when_ink_covers_most_of_the_picture():
    bold = canvas_digit(size=60, top=2, left=2, height=56, width=56, ink=0, paper=255)
    ink = preprocess.to_ink(bold)
    assert ink[30, 30] == 1 and ink[0, 0] == 0 and ink.mean() > 0.8


def test_crop_is_the_inks_bounding_box_and_ignores_faint_noise():
    ink = torch.zeros(50, 60, dtype=torch.float64)
    ink[10:30, 20:25] = 1.0
    ink[0, 0] = ink[49, 59] = 0.05  # dust below the threshold
    ink[12, 21] = 0.5
    box = preprocess.crop(ink)
    assert box.shape == (20, 5)
    assert box[2, 1] == 0.5
    assert preprocess.crop(ink, threshold=0.01).shape == (50, 60)
    with pytest.raises(preprocess.DrawingError, match="blank"):
        preprocess.crop(torch.full((5, 5), 0.05))
    ink[15, 22] = 0.08  # a faint speck inside the box is zeroed: MNIST's background is 0
    assert preprocess.crop(ink)[5, 2] == 0


def test_scale_keeps_the_aspect_ratio_and_the_longer_side_is_20():
    assert preprocess.scale(torch.ones(200, 50)).shape == (20, 5)
    assert preprocess.scale(torch.ones(30, 90)).shape == (7, 20)
    assert preprocess.scale(torch.ones(5, 2)).shape == (20, 8)  # small drawings grow
    assert preprocess.scale(torch.ones(400, 3)).shape == (20, 1)  # a very thin "1" stays 1 wide


def test_scale_is_anti_aliased():
    """A fine checkerboard averages to grey; sampling a few pixels would give 0s and 1s."""
    checker = (np.indices((200, 200)).sum(axis=0) % 2).astype(np.float64)
    scaled = preprocess.scale(checker)
    assert scaled.shape == (20, 20)
    torch.testing.assert_close(
        scaled, torch.full((20, 20), 0.5, dtype=torch.float64), atol=0.02, rtol=0
    )


def test_centre_of_mass_of_tensors_and_arrays():
    image = np.zeros((10, 12))
    image[3, 5] = 1.0
    assert preprocess.centre_of_mass(image) == (3.0, 5.0)
    image[7, 9] = 1.0
    assert preprocess.centre_of_mass(torch.from_numpy(image)) == (5.0, 7.0)
    assert preprocess.centre_of_mass(torch.ones(28, 28)) == (13.5, 13.5)
    assert preprocess.centre_of_mass(np.eye(4, dtype=np.uint8)) == (1.5, 1.5)
    with pytest.raises(preprocess.DrawingError, match="blank"):
        preprocess.centre_of_mass(np.zeros((5, 5)))
    with pytest.raises(preprocess.DrawingError, match="2-D"):
        preprocess.centre_of_mass(np.ones((1, 5, 5)))
    with pytest.raises(preprocess.DrawingError, match="negative"):
        preprocess.centre_of_mass(-np.ones((5, 5)))
    with pytest.raises(preprocess.DrawingError, match="NaN"):
        preprocess.centre_of_mass(np.full((5, 5), np.nan))


def test_mnist_digits_already_have_their_centre_of_mass_at_the_centre(test_digits):
    images, _ = test_digits
    centres = np.array([preprocess.centre_of_mass(image) for image in images[:100]])
    assert np.abs(centres - np.array(preprocess.CENTRE)).max() <= 0.51


def test_paste_centred_puts_the_centre_of_mass_at_the_fields_centre():
    ink = torch.zeros(20, 8, dtype=torch.float64)
    ink[:5] = 1.0  # a "7"-like heavy top
    ink[:, 6:] = 1.0
    field = preprocess.paste_centred(ink)
    assert field.shape == (28, 28)
    assert field.sum() == ink.sum()  # nothing cut off, nothing resampled
    row, col = preprocess.centre_of_mass(field)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_paste_centred_keeps_a_lopsided_digit_inside_the_field():
    ink = torch.zeros(20, 20, dtype=torch.float64)
    ink[0, 0] = 1.0
    ink[19, 19] = 0.001
    field = preprocess.paste_centred(ink)
    assert field.sum() == ink.sum()
    with pytest.raises(preprocess.DrawingError, match="does not fit"):
        preprocess.paste_centred(torch.ones(29, 3))


def test_normalize_is_the_training_sets_normalize():
    batch = preprocess.normalize(torch.zeros(28, 28))
    assert batch.shape == (1, 1, 28, 28) and batch.dtype == torch.float32
    assert batch[0, 0, 0, 0].item() == pytest.approx(NORMALIZED_BLACK)
    assert preprocess.normalize(torch.ones(28, 28))[0, 0, 0, 0].item() == pytest.approx(
        (1 - MNIST_MEAN) / MNIST_STD
    )


def test_steps_are_in_order_and_end_in_to_mnist():
    image = canvas_digit(ink=0, paper=255)
    out = preprocess.steps(image)
    assert list(out) == ["grey", "ink", "cropped", "scaled", "centred", "normalized"]
    assert out["grey"].shape == out["ink"].shape == (200, 200)
    assert out["cropped"].shape == (120, 30)
    assert out["scaled"].shape == (20, 5)
    assert out["centred"].shape == out["normalized"].shape == (28, 28)
    assert all(t.dim() == 2 for t in out.values())
    torch.testing.assert_close(preprocess.to_mnist(image)[0, 0], out["normalized"])


def test_an_mnist_digit_comes_back_as_itself(test_digits):
    """Already preprocessed digits are a fixed point, but for their faintest pixels (below the
    ink threshold, zeroed) and a one-pixel shift where the centre of mass sits half-way between
    two pixels."""
    images, _ = test_digits
    fields = torch.stack([preprocess.steps(image)["centred"] for image in images[:200]])
    error = (fields - torch.from_numpy(images[:200]) / 255).abs().amax(dim=(1, 2))
    assert (error <= 0.1 + 1e-9).float().mean() >= 0.95


def test_position_size_and_polarity_do_not_matter():
    small = canvas_digit(size=100, top=10, left=10, height=60, width=15)
    large = canvas_digit(size=400, top=200, left=250, height=180, width=45, ink=0, paper=255)
    torch.testing.assert_close(preprocess.to_mnist(small), preprocess.to_mnist(large))


# --------------------------------------------------------------------------- the round trip


def as_drawings(images: np.ndarray, *, seed: int = 0):
    """Each 28 x 28 digit blown up to 196 x 196 (bilinear, like a thick pen) and placed at a
    random spot of a 256 x 256 canvas, twice: dark ink on white paper (grey uint8), and black
    strokes on a transparent canvas (RGBA, alpha = ink), as a browser canvas gives them."""
    rng = np.random.default_rng(seed)
    for image in images:
        big = np.asarray(Image.fromarray(image).resize((196, 196), Image.Resampling.BILINEAR))
        top, left = rng.integers(0, 256 - 196 + 1, size=2)
        ink = np.zeros((256, 256), np.uint8)
        ink[top : top + 196, left : left + 196] = big
        rgba = np.zeros((256, 256, 4), np.uint8)
        rgba[..., 3] = ink
        yield 255 - ink, rgba


@pytest.mark.slow
def test_round_trip_accuracy_is_nearly_the_originals(test_digits):
    images, targets = test_digits
    model, _ = load_or_train()
    model = model.cpu().eval()
    original = (torch.from_numpy(images).float()[:, None] / 255 - MNIST_MEAN) / MNIST_STD
    paper, canvas = [], []
    for dark_on_light, rgba in as_drawings(images):
        paper.append(preprocess.to_mnist(dark_on_light))
        canvas.append(preprocess.to_mnist(rgba))
    with torch.no_grad():
        accuracy = {
            name: (model(batch).argmax(dim=1) == targets).float().mean().item()
            for name, batch in (
                ("original", original),
                ("dark on light", torch.cat(paper)),
                ("RGBA canvas", torch.cat(canvas)),
            )
        }
    print("accuracy on the first 500 test digits:", accuracy)
    assert accuracy["dark on light"] >= accuracy["original"] - 0.02
    assert accuracy["RGBA canvas"] >= accuracy["original"] - 0.02
