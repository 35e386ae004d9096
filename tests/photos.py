"""Phone photos of MNIST digits written on paper, made up deterministically from a seed: what
users try with the widget's "Upload a photo", to test ``mnist_dissected.preprocess.to_mnist``.

Why this file exists: a clean drawing (black on white, or a canvas's strokes) is the easy case;
a photo of a digit on paper has everything a clean drawing lacks: paper grain, blue ruled lines,
the desk around the sheet, light falling off across the page or a shadow over it, the lens'
blur, a tilted camera (perspective) and JPEG's blocks. :func:`photograph` renders an MNIST test
digit that way, and :func:`measure` tells how close ``to_mnist`` brings such photos to the clean
digit, and how often the trained network still reads them right.

Run ``python -m tests.photos [n] [seed]`` (or ``python tests/photos.py``) for the numbers.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

#: EXIF's Orientation tag; value 6 says "rotate the stored pixels 90° clockwise to show them":
#: what a phone held upright writes.
ORIENTATION, ROTATED_CW = 0x0112, 6


def photograph(
    digit: np.ndarray,
    *,
    seed: int,
    ruled: bool | None = None,
    desk: bool | None = None,
    shadow: bool | None = None,
    fall_off: bool = True,
    exif_rotated: bool = False,
) -> Image.Image:
    """The 28 x 28 MNIST ``digit`` (uint8, ink high) written in dark ink on a sheet of paper and
    photographed: an RGB JPEG of 300 to 600 pixels a side, decoded. Everything is drawn from
    ``seed`` (the same seed, the same photo); ``ruled``, ``desk`` and ``shadow`` force those
    features on or off (``None``: by chance); without ``fall_off`` the light is even. With
    ``exif_rotated`` the pixels are stored turned a quarter turn, with the EXIF tag that tells
    a viewer to turn them back, as phones do."""
    rng = np.random.default_rng(seed)
    long_side = int(rng.integers(400, 601))
    size = (round(long_side * 0.75), long_side)  # (width, height): portrait, as phones take it
    chance = rng.random(3) < 0.5  # drawn even when forced: the rest of the photo stays the same
    ruled = bool(chance[0]) if ruled is None else ruled
    desk = bool(chance[1]) if desk is None else desk
    shadow = bool(chance[2]) if shadow is None else shadow
    sheet_size = (round(size[0] * 1.1), round(size[1] * 1.1))
    sheet = _paper(sheet_size, rng)
    if ruled:
        sheet = _rule_lines(sheet, rng)
    sheet = _write(sheet, digit, rng)
    photo = _frame(sheet, size, desk=desk, rng=rng)
    photo = photo * _light(size, shadow=shadow, fall_off=fall_off, rng=rng)[..., None]
    return _camera(photo, rng, exif_rotated=exif_rotated)


def _paper(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Off-white paper (float RGB 0..255, H x W x 3) with fibres: a few grey levels of noise at
    two scales, the grain that must not count as ink."""
    width, height = size
    colour = np.array([rng.uniform(228, 250), rng.uniform(226, 246), rng.uniform(212, 240)])
    coarse = _smooth_noise((height, width), cell=int(rng.integers(6, 16)), rng=rng)
    grain = rng.normal(0, rng.uniform(1.5, 3.5), (height, width))
    return colour + (coarse * rng.uniform(2, 5) + grain)[..., None]


def _smooth_noise(shape: tuple[int, int], *, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Noise of unit spread that varies over about ``cell`` pixels (coarse noise, upsampled)."""
    height, width = shape
    coarse = rng.normal(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float64)


def _rule_lines(sheet: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light blue lines across the sheet every 22 to 34 pixels, and often a red margin."""
    height, width = sheet.shape[:2]
    rows = np.arange(height)[:, None]
    spacing, offset = rng.uniform(22, 34), rng.uniform(0, 20)
    half = rng.uniform(0.7, 1.3)  # half the line's thickness, in pixels
    centre = np.round((rows - offset) / spacing) * spacing + offset
    lines = np.clip(1.5 - np.abs(rows - centre) / half, 0, 1) * np.ones((1, width))
    blue = np.array([rng.uniform(140, 175), rng.uniform(175, 205), rng.uniform(220, 245)])
    sheet = sheet * (1 - lines[..., None]) + blue * lines[..., None]
    if rng.random() < 0.5:
        x = rng.uniform(0.08, 0.15) * width
        cols = np.arange(width)[None, :]
        margin = np.clip(1.5 - np.abs(cols - x) / half, 0, 1) * np.ones((height, 1))
        red = np.array([rng.uniform(220, 240), rng.uniform(120, 160), rng.uniform(130, 170)])
        sheet = sheet * (1 - margin[..., None]) + red * margin[..., None]
    return sheet


def _write(sheet: np.ndarray, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit in pen (black, or blue ballpoint) or pencil near the sheet's middle, 30 to 55%
    of its width tall. MNIST's grey levels become the ink's coverage, sharpened a little so that
    the strokes have a solid core as a pen's do."""
    height, width = sheet.shape[:2]
    side = int(rng.uniform(0.3, 0.55) * width)
    big = Image.fromarray(digit.astype(np.float32)).resize((side, side), Image.Resampling.BICUBIC)
    cover = np.clip((np.asarray(big, dtype=np.float64) / 255 - 0.15) / 0.55, 0, 1)
    ink = [
        np.array([25.0, 25.0, 35.0]) + rng.uniform(0, 20),  # black pen
        np.array([rng.uniform(20, 45), rng.uniform(30, 55), rng.uniform(95, 130)]),  # ballpoint
        np.full(3, rng.uniform(60, 90)),  # pencil
    ][int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
    top = int((height - side) / 2 + rng.uniform(-0.12, 0.12) * height)
    left = int((width - side) / 2 + rng.uniform(-0.12, 0.12) * width)
    area = sheet[top : top + side, left : left + side]
    area[...] = area * (1 - cover[..., None]) + ink * cover[..., None]
    return sheet


def _frame(
    sheet: np.ndarray, size: tuple[int, int], *, desk: bool, rng: np.random.Generator
) -> np.ndarray:
    """The sheet as a tilted camera sees it: its corners land on a jittered quadrilateral (a
    mild perspective). Without a desk the sheet overfills the frame; with one, the sheet's
    edges come inside the frame on two to four sides and a dark desk shows around it."""
    width, height = size
    sheet_h, sheet_w = sheet.shape[:2]
    jitter = 0.04 * min(size)
    if desk:
        inset = np.zeros(4)  # left, top, right, bottom
        sides = rng.choice(4, size=int(rng.integers(2, 5)), replace=False)
        inset[sides] = rng.uniform(0.05, 0.15, len(sides)) * np.array([width, height] * 2)[sides]
        left, top, right, bottom = inset[0], inset[1], width - inset[2], height - inset[3]
    else:
        left, top, right, bottom = -0.06 * width, -0.06 * height, 1.06 * width, 1.06 * height
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom]])
    corners = corners + rng.uniform(-jitter, jitter, (4, 2))
    source = np.array([[0, 0], [sheet_w, 0], [sheet_w, sheet_h], [0, sheet_h]], np.float64)
    coefficients = _perspective(corners, source)
    pixels = Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8))
    seen = pixels.transform(
        size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC
    )
    inside = Image.new("L", (sheet_w, sheet_h), 255).transform(
        size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    mask = np.asarray(inside, dtype=np.float64)[..., None] / 255
    return np.asarray(seen, dtype=np.float64) * mask + _desk(size, rng) * (1 - mask)


def _perspective(photo: np.ndarray, sheet: np.ndarray) -> tuple[float, ...]:
    """PIL's eight PERSPECTIVE coefficients, which map each photo pixel to the sheet pixel it
    shows, from four corner pairs (photo -> sheet)."""
    rows = []
    for (x, y), (u, v) in zip(photo, sheet, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.array(rows), sheet.ravel()).tolist())


def _desk(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A dark desk (wood or grey laminate) with a streaky grain, full frame, float RGB."""
    width, height = size
    colour = np.array([rng.uniform(55, 110), rng.uniform(45, 90), rng.uniform(35, 75)])
    streaks = _smooth_noise((height, 4), cell=2, rng=rng)[:, :1] * rng.uniform(4, 10)
    return colour + (streaks + rng.normal(0, 3, (height, width)))[..., None]


def _light(
    size: tuple[int, int], *, shadow: bool, fall_off: bool, rng: np.random.Generator
) -> np.ndarray:
    """How much light reaches each pixel (0..1, H x W): (``fall_off``) falling off across the
    page in some direction and darker towards the corners, and (``shadow``) the soft shadow of
    the phone or the hand holding it over one side."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    angle = rng.uniform(0, 2 * np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    along = (along - along.min()) / np.ptp(along)
    light = 1 - rng.uniform(0.1, 0.35) * along * fall_off
    light *= 1 - 0.15 * ((x - x.mean()) ** 2 + (y - y.mean()) ** 2) / 0.3 * fall_off
    if shadow:
        angle = rng.uniform(0, 2 * np.pi)
        edge = rng.uniform(0.15, 0.35)  # how far in from the frame's middle the shadow ends
        across = (x - x.mean()) * np.cos(angle) + (y - y.mean()) * np.sin(angle) - edge
        softness = rng.uniform(0.02, 0.06)
        light *= 1 - rng.uniform(0.2, 0.4) / (1 + np.exp(-across / softness))
    return light


def _camera(photo: np.ndarray, rng: np.random.Generator, *, exif_rotated: bool) -> Image.Image:
    """The lens' blur, the sensor's noise and a JPEG file, read back as a phone's photo is."""
    image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(1.5, 3), photo.shape)
    image = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if exif_rotated:
        image = image.transpose(Image.Transpose.ROTATE_90)  # stored a quarter turn back
        exif[ORIENTATION] = ROTATED_CW
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(70, 93)), exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


def uploaded(photo: Image.Image, *, size: int = 280) -> Image.Image:
    """The photo as the widget's "Upload a photo" sends it (``widget/draw.js``): fitted into the
    ``size`` x ``size`` canvas, centred, on the mean colour of its border (read from a 32 x 32
    copy), and sent as a PNG of the canvas."""
    probe = np.asarray(photo.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    rim = np.concatenate([probe[0], probe[-1], probe[:, 0], probe[:, -1]]).mean(axis=0)
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rim))
    scale = min(size / photo.width, size / photo.height)
    width, height = round(photo.width * scale), round(photo.height * scale)
    fitted = photo.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    canvas.paste(fitted, ((size - width) // 2, (size - height) // 2))
    return canvas


# --------------------------------------------------------------------------- measuring


def measure(
    n: int = 300, seed: int = 0, *, through_widget: bool = False, preprocess: Any = None
) -> dict[str, float]:
    """``to_mnist`` on ``n`` test digits photographed (the digits and the photos drawn from
    ``seed``; ``through_widget``: as the widget's upload sends them, :func:`uploaded`), against
    the same digits as they are: the mean absolute difference of the 28 x 28 fields (0..1), the
    IoU of their ink (pixels above 0.3), the distance between their centres of mass, the share
    of photos whose ink box was the whole photo and of those refused as blank, and the trained
    network's accuracy on the photos and on the clean digits. ``preprocess``: the module to
    measure (default: ``mnist_dissected.preprocess``; an older copy, to compare)."""
    import torch

    from mnist_dissected import preprocess as current
    from mnist_dissected.data import MNIST_MEAN, MNIST_STD, load_mnist
    from mnist_dissected.pretrained import load_or_train

    module = preprocess or current
    mnist = load_mnist(train=False)
    chosen = np.random.default_rng(seed).permutation(len(mnist.targets))[:n]
    images, targets = mnist.data[chosen].numpy(), mnist.targets[chosen]
    totals = dict.fromkeys(("diff", "iou", "com", "whole", "refused"), 0.0)
    photo_batches, clean_batches = [], []
    for image, number in zip(images, chosen.tolist(), strict=True):
        clean = module.to_mnist(image)
        photo = photograph(image, seed=seed * 100_000 + number)
        photo = uploaded(photo) if through_widget else photo
        try:
            out = module.steps(photo)
        except module.DrawingError:
            totals["refused"] += 1
            out = {"normalized": torch.full((28, 28), -MNIST_MEAN / MNIST_STD)}
            out["cropped"] = torch.zeros(1, 1)
        got = out["normalized"][None, None].float()
        fields = [(x[0, 0].double() * MNIST_STD + MNIST_MEAN).clamp(0, 1) for x in (got, clean)]
        totals["diff"] += (fields[0] - fields[1]).abs().mean().item()
        inks = [f > 0.3 for f in fields]
        totals["iou"] += ((inks[0] & inks[1]).sum() / (inks[0] | inks[1]).sum()).item()
        if fields[0].sum() > 0:
            centres = np.array([module.centre_of_mass(f) for f in fields])
            totals["com"] += float(np.hypot(*(centres[0] - centres[1])))
        box, picture = out["cropped"].shape, (photo.height, photo.width)
        totals["whole"] += all(b >= 0.9 * p for b, p in zip(box, picture, strict=True))
        photo_batches.append(got)
        clean_batches.append(clean)
    model, _ = load_or_train()
    model = model.cpu().eval()
    with torch.no_grad():
        right = [
            (model(torch.cat(batches)).argmax(1) == targets).float().mean().item()
            for batches in (photo_batches, clean_batches)
        ]
    result = {key: value / n for key, value in totals.items()}
    result.update(accuracy=right[0], clean_accuracy=right[1], n=n, seed=seed)
    return result


def main(argv: list[str]) -> None:
    """Print :func:`measure`'s numbers, for the photos as they are and as the widget's upload
    sends them: ``python -m tests.photos [n] [seed]``."""
    n = int(argv[0]) if argv else 300
    seed = int(argv[1]) if len(argv) > 1 else 0
    for through_widget in (False, True):
        start = time.perf_counter()
        result = measure(n, seed, through_widget=through_widget)
        how = "through the widget's upload" if through_widget else "as files"
        print(
            f"{n} test digits photographed (seed {seed}), {how}, "
            f"{time.perf_counter() - start:.0f} s:"
        )
        for key, value in result.items():
            print(f"  {key:15} {value:.4f}" if isinstance(value, float) else f"  {key:15} {value}")


if __name__ == "__main__":
    main(sys.argv[1:])
