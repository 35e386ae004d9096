"""The checks of Part 1's exercises (``notebooks/1_mnist_load.ipynb``, exercises 6 to 8).

Why this module exists: each exercise has you write one function; one call here runs it on fixed
inputs and compares it with a reference that the library (or a few plain lines) gives, saying
what differs (:mod:`mnist_dissected.exercises`). The references are the lessons' own tools:
``ToTensor`` and ``Normalize`` for a batch normalized by hand, the training split's mean images
(§1.7) for the nearest-class-mean classifier.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torchvision import transforms

from .data import MNIST_MEAN, MNIST_STD, load_mnist, train_validation_indices
from .exercises import ExerciseFailed, check_like, check_tensor, describe, exercise

#: The largest shift of exercise 7, in pixels, each way.
MAX_SHIFT = 2


@functools.cache
def _training_split() -> tuple[torch.Tensor, torch.Tensor]:
    """The 60,000 training images (uint8) and labels, read once per session."""
    split = load_mnist(train=True)
    return split.data, split.targets


@exercise("normalize")
def check_normalize(normalize: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Exercise 6: ``normalize(images)``, uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28, must
    give what ``ToTensor`` then ``Normalize`` give each image (§1.8-§1.11): that pipeline is the
    definition, a batch version has to reproduce it. Three batches of random bytes (with 0 and
    255 in each), of 1, 3 and 8 images, so a hard-coded batch size fails too."""
    pipeline = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )
    generator = torch.Generator().manual_seed(0)
    for n in (1, 3, 8):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
        images[0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
        expected = torch.stack([pipeline(image.numpy()) for image in images])
        unit = images.unsqueeze(1).float()
        hints = {
            "Scale the bytes to [0, 1] first (divide by 255), as ToTensor does": (
                (unit - MNIST_MEAN) / MNIST_STD
            ),
            "The mean and the standard deviation are swapped": (unit / 255 - MNIST_STD)
            / MNIST_MEAN,
            "Centred but not scaled: divide by MNIST_STD too": unit / 255 - MNIST_MEAN,
            "Scaled but not centred: subtract MNIST_MEAN first": unit / 255 / MNIST_STD,
        }
        got = normalize(images.clone())
        check_tensor(got, expected, name=f"normalize(images) of {n} image(s)", hints=hints)
    return "normalize: the numbers of ToTensor + Normalize, for batches of 1, 3 and 8 images"


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (H x W) moved down by ``dy`` and right by ``dx`` pixels (up or left when
    negative); what leaves the field is lost, paper (0) comes in."""
    out = torch.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _shift_of(
    got: torch.Tensor, image: torch.Tensor, reach: int = MAX_SHIFT
) -> tuple[int, int] | None:
    """The (dy, dx), each within ``reach``, that turns ``image`` into ``got`` (filling with
    paper, or wrapping around as ``torch.roll`` does), if any."""
    steps = range(-reach, reach + 1)
    return next(
        (
            (dy, dx)
            for dy in steps
            for dx in steps
            if torch.equal(shifted(image, dy, dx), got)
            or torch.equal(torch.roll(image, (dy, dx), dims=(0, 1)), got)
        ),
        None,
    )


def _draws(
    shift_sample: Callable[..., Any], image: torch.Tensor, label: int, seed: int
) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Ten samples from ``shift_sample`` with one generator seeded ``seed``, each checked: a
    pair, the label kept, an image of the input's shape and dtype that is the digit shifted
    (else: its ink changed, or it is no such shift). Returns the images and their shifts."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for draw in range(10):
        name = f"shift_sample(image, {label}, generator=...) (draw {draw})"
        sample = shift_sample(image.clone(), label, generator=generator)
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise ExerciseFailed(
                f"{name} should return a pair (image, label), not {describe(sample)}"
            )
        moved, kept = sample
        if isinstance(kept, torch.Tensor) and kept.numel() == 1:
            kept = kept.item()
        if kept != label:
            raise ExerciseFailed(
                f"{name} returned the label {kept!r}: a shifted {label} is still a {label}, "
                "so the label must come back unchanged"
            )
        check_like(moved, image, name=f"the image of {name}")
        shift = _shift_of(moved, image)
        if shift is None and (far := _shift_of(moved, image, reach=8)):
            raise ExerciseFailed(
                f"the image of {name} is the digit moved by {far} (down, right): further than "
                f"{MAX_SHIFT} pixels each way"
            )
        ink, was = int(moved.long().sum()), int(image.long().sum())
        if shift is None and abs(ink - was) > 0.01 * was:
            raise ExerciseFailed(
                f"the image of {name} holds {ink:,} of ink, the digit {was:,} "
                f"({(ink - was) / was:+.0%}): a shift moves the ink, it neither adds nor "
                "removes any (fill what comes in with 0, paper)"
            )
        if shift is None:
            raise ExerciseFailed(
                f"the image of {name} is not the digit moved by whole pixels (at most "
                f"{MAX_SHIFT} each way): {int((moved != image).sum())} of its 784 pixels "
                "changed, and no such shift gives them"
            )
        results.append((moved, shift))
    return results


@exercise("shift_sample")
def check_shift_sample(shift_sample: Callable[..., Any]) -> str:
    """Exercise 7: ``shift_sample(image, label, *, generator)`` moves a uint8 28 x 28 digit by
    whole pixels, up to MAX_SHIFT each way, drawn from ``generator``, and returns it with its
    label. Checked on four training digits, ten draws each: a pair with the label unchanged,
    the shape and dtype kept, the ink kept, each result a shift of the digit, the same draws
    from a generator seeded the same (so an augmented epoch can be repeated), and several
    different shifts (an augmentation that always returns the digit unmoved does nothing)."""
    images, labels = _training_split()
    seen = set()
    for k in range(4):
        image, label = images[k], int(labels[k])
        first = _draws(shift_sample, image, label, seed=k)
        again = _draws(shift_sample, image, label, seed=k)
        for draw, ((moved, shift), (repeat, _)) in enumerate(zip(first, again, strict=True)):
            if not torch.equal(moved, repeat):
                raise ExerciseFailed(
                    f"two generators seeded alike gave different shifts (draw {draw} of "
                    f"training digit {k}): draw the shift from `generator` (e.g. torch.randint("
                    "..., generator=generator)), not from torch's global random numbers"
                )
            seen.add(shift)
    if len(seen) < 5:
        raise ExerciseFailed(
            f"40 draws gave only the shift(s) {sorted(seen)} as (down, right): draw dy and dx "
            f"anew on each call, each from -{MAX_SHIFT} to {MAX_SHIFT}"
        )
    return (
        f"shift_sample: 40 draws, each the digit moved by at most {MAX_SHIFT} pixels with its "
        f"label, ink kept, {len(seen)} different shifts, repeatable with a seeded generator"
    )


def class_mean_distances(
    train_images: torch.Tensor, train_labels: torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """Euclidean distance (float64) of each of ``images`` to each digit's mean training image:
    N x 10. The reference of exercise 8, the mean images of §1.7."""
    means = torch.stack([train_images[train_labels == d].double().mean(dim=0) for d in range(10)])
    return torch.cdist(images.double().flatten(1), means.flatten(1))


@functools.cache
def _validation_distances() -> torch.Tensor:
    """:func:`class_mean_distances` of the first 1,000 validation images, computed once."""
    images, labels = _training_split()
    train_idx, val_idx = train_validation_indices()
    return class_mean_distances(images[train_idx], labels[train_idx], images[val_idx[:1000]])


@exercise("nearest_mean")
def check_nearest_mean(nearest_mean: Callable[..., torch.Tensor]) -> str:
    """Exercise 8: ``nearest_mean(train_images, train_labels, images)`` predicts, for each
    image, the digit whose mean training image is nearest. Learned from the 55,000 training
    images, scored on the first 1,000 validation images (§1.1: the test split is kept for the
    end). A prediction counts as the reference's when its mean lies as near as the nearest
    (float rounding may break a tie either way)."""
    images, labels = _training_split()
    train_idx, val_idx = train_validation_indices()
    val_idx = val_idx[:1000]
    distances = _validation_distances()
    expected = distances.argmin(dim=1)
    got = nearest_mean(images[train_idx].clone(), labels[train_idx].clone(), images[val_idx])
    name = "nearest_mean(train_images, train_labels, images)"
    check_like(got, expected, name=name, exact_dtype=False)
    got = got.long()
    outside = ((got < 0) | (got > 9)).nonzero()
    if len(outside):
        bad = int(outside[0])
        raise ExerciseFailed(f"{name} predicts {int(got[bad])} for image {bad}: digits are 0..9")
    nearest = distances.min(dim=1).values
    wrong = (distances.gather(1, got[:, None])[:, 0] > nearest * (1 + 1e-6)).nonzero()
    if len(wrong):
        i, g, e = int(wrong[0]), int(got[wrong[0]]), int(expected[wrong[0]])
        hint = ""
        if torch.equal(got, distances.argmax(dim=1)):
            hint = ". These are the farthest means (argmax): the nearest is the argmin"
        elif len(got.unique()) == 1:
            hint = ". Every image got the same digit: one mean per digit, of its images only"
        raise ExerciseFailed(
            f"{name} differs from the nearest mean for {len(wrong)} of 1000 validation images; "
            f"the first is image {i}: got {g} (distance {distances[i, g]:.1f}), the nearest "
            f"mean is {e}'s (distance {distances[i, e]:.1f}){hint}"
        )
    accuracy = (got == labels[val_idx]).double().mean().item()
    return (
        f"nearest_mean: the nearest mean image for 1,000 validation images; "
        f"{accuracy:.1%} of them read right (guessing: 10%)"
    )
