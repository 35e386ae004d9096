"""Photos of digits written on paper (``tests/photos.py`` makes them up from MNIST test digits)
through :func:`mnist_dissected.preprocess.to_mnist`: paper grain, blue ruled lines, the desk
around the sheet, light falling off across the page, a shadow, a phone's EXIF orientation, the
widget's upload, a blank page; and the trained network's reading of a few dozen of them."""

import numpy as np
import pytest
import torch
from photos import measure, photograph, uploaded
from PIL import Image

from mnist_dissected import preprocess
from mnist_dissected.data import MNIST_MEAN, MNIST_STD, load_mnist

#: The first MNIST test digits that each photo test renders: all ten classes among them.
COUNT = 6


@pytest.fixture(scope="module")
def digits():
    return load_mnist(train=False).data[:COUNT].numpy()


def field(image):
    """``to_mnist``'s 28 x 28 field (ink 0..1) of ``image``."""
    return (preprocess.to_mnist(image)[0, 0].double() * MNIST_STD + MNIST_MEAN).clamp(0, 1)


def ink_overlap(photo, digit):
    """The IoU of the ink (above 0.3) of the photo's field and the clean digit's."""
    a, b = field(photo) > 0.3, field(digit) > 0.3
    return ((a & b).sum() / (a | b).sum()).item()


def assert_read_like_the_digit(photos, digits):
    """Each photo's field shares most of its ink with the clean digit's, and no ink box is
    (nearly) the whole photo."""
    for photo, digit in zip(photos, digits, strict=True):
        box = preprocess.steps(photo)["cropped"].shape
        assert not (box[0] >= 0.9 * photo.height and box[1] >= 0.9 * photo.width), box
        assert ink_overlap(photo, digit) >= 0.4


# --------------------------------------------------------------------------- the generator


def test_photographs_are_deterministic_phone_sized_jpegs(digits):
    first = photograph(digits[0], seed=3)
    again = photograph(digits[0], seed=3)
    other = photograph(digits[0], seed=4)
    assert first.format == "JPEG" and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert first.size != other.size or not np.array_equal(np.asarray(first), np.asarray(other))
    for seed in range(10):
        assert 300 <= min(photograph(digits[0], seed=seed).size) <= 600


def test_a_desk_frames_the_sheet_and_rules_are_blue(digits):
    photo = np.asarray(photograph(digits[0], seed=1, desk=True, ruled=True), dtype=float)
    rim = np.concatenate([photo[0], photo[-1], photo[:, 0], photo[:, -1]])
    middle = photo[photo.shape[0] // 3 : -photo.shape[0] // 3, photo.shape[1] // 3 :]
    assert rim.mean() < middle.mean() - 40  # a dark desk around a light sheet
    blue = middle[..., 2] - middle[..., 0]
    bluish = blue - np.median(blue) > 15  # bluer than the paper
    assert 0.02 < bluish.mean() < 0.3


def test_uploaded_is_the_widgets_canvas(digits):
    photo = photograph(digits[0], seed=2)
    canvas = np.asarray(uploaded(photo))
    assert canvas.shape == (280, 280, 3)
    assert len(np.unique(canvas[:, 0].reshape(-1, 3), axis=0)) == 1  # the fill beside a portrait


# --------------------------------------------------------------------------- the features


def photographed(digits, **features: bool) -> list:
    """``digits`` photographed on plain paper with only ``features`` (ruled, desk, shadow,
    fall_off) turned on, one seed per digit."""
    plain = {"ruled": False, "desk": False, "shadow": False, "fall_off": False}
    return [photograph(d, seed=i, **{**plain, **features}) for i, d in enumerate(digits)]


def test_paper_grain_alone_is_not_ink(digits):
    photos = photographed(digits)
    assert_read_like_the_digit(photos, digits)


def test_blue_ruled_lines_are_not_ink(digits):
    """The lines reached the ink threshold: the ink box was the whole page."""
    photos = photographed(digits, ruled=True)
    assert_read_like_the_digit(photos, digits)


def test_a_white_sheet_on_a_dark_desk(digits):
    """The border's median was the desk: the desk was taken for the paper and the sheet for
    the ink, or the desk for the darkest ink."""
    photos = photographed(digits, desk=True)
    assert_read_like_the_digit(photos, digits)
    ink = preprocess.to_ink(photos[0])
    rim = torch.cat([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    assert rim.max() == 0  # the desk is no ink


def test_light_falling_off_across_the_page(digits):
    """The far side of the page is darker than the border's median paper by more than the
    ink threshold: it was all ink."""
    photos = photographed(digits, fall_off=True)
    assert_read_like_the_digit(photos, digits)


def test_a_shadow_over_the_page(digits):
    photos = photographed(digits, shadow=True)
    assert_read_like_the_digit(photos, digits)


def test_everything_at_once_and_through_the_widgets_upload(digits):
    photos = [
        photograph(d, seed=i, ruled=True, desk=True, shadow=True) for i, d in enumerate(digits)
    ]
    assert_read_like_the_digit(photos, digits)
    assert_read_like_the_digit([uploaded(p) for p in photos], digits)


def test_a_portrait_photo_stored_sideways_is_read_upright(digits):
    """Phones store the pixels sideways with an EXIF Orientation tag: without it applied the
    digit lay on its side."""
    for i, digit in enumerate(digits[:3]):
        sideways = photograph(digit, seed=i, exif_rotated=True)
        assert sideways.width > sideways.height  # stored landscape, shown portrait
        upright = photograph(digit, seed=i)
        assert (field(sideways) - field(upright)).abs().mean() < 0.03
        assert ink_overlap(sideways, digit) >= 0.4


def test_a_blank_page_is_blank():
    """A photo of paper with nothing written on it is refused, ruled lines and desk and all,
    rather than read as whatever grain or line stands out most."""
    blank = np.zeros((28, 28), np.uint8)
    refused = 0
    for seed in range(10):
        try:
            preprocess.to_mnist(photograph(blank, seed=seed))
        except preprocess.DrawingError as e:
            assert "blank" in str(e)
            refused += 1
    assert refused >= 9


def test_a_photo_keeps_mnist_polarity_for_chalk_on_a_blackboard(digits):
    negatives = [
        Image.fromarray(255 - np.asarray(photograph(d, seed=i, desk=False).convert("L")))
        for i, d in enumerate(digits[:3])
    ]
    assert_read_like_the_digit(negatives, digits[:3])


# --------------------------------------------------------------------------- the network


@pytest.mark.slow
def test_the_network_reads_photos_about_as_well_as_the_digits():
    """``measure`` on 30 photographed test digits: the trained ``Net`` reads at least 80% as
    many right as of the clean digits, no ink box is the whole photo, none is refused."""
    for through_widget in (False, True):
        result = measure(30, seed=0, through_widget=through_widget)
        print(result)
        assert result["whole"] == 0 and result["refused"] == 0
        assert result["accuracy"] >= 0.8 * result["clean_accuracy"]
        assert result["diff"] < 0.1
