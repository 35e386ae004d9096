"""The checks of Part 5's exercises (``notebooks/5_mnist_visualize.ipynb``, exercises 1, 2, 5).

Why this module exists: each exercise has you write one function; one call here runs it on fixed
inputs and compares it with the reference, saying what differs (:mod:`mnist_dissected.exercises`).
The checks do not need the trained model: top-k accuracy and precision are checked on fixed
numbers, the iterated attack on a small seeded (untrained) ``Net`` and eight test digits, where
the gradient's signs are as well defined as for the trained one and nothing is trained first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .data import MNIST_MEAN, MNIST_STD, NORMALIZED_BLACK, load_mnist, normalize_images
from .exercises import (
    ExerciseFailed,
    check_like,
    check_number,
    check_tensor,
    exercise,
    index_of,
)
from .models import Net

#: A white pixel, normalized: the top of the range an attacked image is clamped to (§5.12).
WHITE = (1 - MNIST_MEAN) / MNIST_STD


def top_k_accuracy_reference(log_probs: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """The share of rows whose target is among the ``k`` largest entries."""
    top = log_probs.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).double().mean().item()


@exercise("top_k_accuracy")
def check_top_k_accuracy(top_k_accuracy: Callable[..., float]) -> str:
    """Exercise 1: ``top_k_accuracy(log_probs, targets, k)``, the share of digits whose label is
    among the ``k`` most likely classes. Log-probabilities of 200 digits, random but leaning
    towards the label (so top-1, top-2 and top-5 differ clearly), for k = 1, 2 and 5: a
    function that ignores ``k`` fails."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (200,), generator=generator)
    scores = torch.randn(200, 10, generator=generator) + 1.5 * F.one_hot(targets, 10)
    log_probs = scores.log_softmax(dim=1)
    for k in (1, 2, 5):
        expected = top_k_accuracy_reference(log_probs, targets, k)
        hints = {"A count, not a share: divide by the number of digits": expected * 200}
        if k > 1:
            hints["That is the top-1 accuracy: use the k largest"] = top_k_accuracy_reference(
                log_probs, targets, 1
            )
            hints[
                "That is the mean over all k guesses: a digit counts once if any of its k "
                "guesses is right (.any(dim=1))"
            ] = expected / k
        got = top_k_accuracy(log_probs.clone(), targets.clone(), k)
        check_number(got, expected, name=f"top_k_accuracy(log_probs, targets, k={k})", hints=hints)
    return "top_k_accuracy: k = 1, 2 and 5 on 200 digits, each the share the reference gives"


@exercise("precision_per_class")
def check_precision_per_class(precision_per_class: Callable[..., torch.Tensor]) -> str:
    """Exercise 2: ``precision_per_class(cm)``, of the digits called ``p``, the share that are
    ``p``: the diagonal over the column sums. §5.5's 3 x 3 example first (so a hard-coded 10
    fails), then a 10 x 10 matrix of counts whose rows and columns sum differently."""
    generator = torch.Generator().manual_seed(0)
    tiny = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 1]])
    counts = torch.randint(0, 6, (10, 10), generator=generator)
    counts += torch.diag(torch.randint(900, 1100, (10,), generator=generator))
    for cm in (tiny, counts):
        expected = cm.diag() / cm.sum(dim=0)
        hints = {
            "That divides by the row sums: per-class accuracy (§5.6); precision divides the "
            "diagonal by the column sums": cm.diag() / cm.sum(dim=1),
        }
        got = precision_per_class(cm.clone())
        name = f"precision_per_class(cm) of a {len(cm)} x {len(cm)} matrix"
        check_tensor(got, expected, name=name, exact_dtype=False, hints=hints)
    return "precision_per_class: §5.5's 3 x 3 example and a 10 x 10 matrix"


@functools.cache
def _attack_case() -> tuple[Net, torch.Tensor, torch.Tensor]:
    """A seeded untrained ``Net`` without dropout, in eval mode, and the first eight test
    digits (normalized) with their labels."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Net(dropout=0.0).eval().requires_grad_(False)  # gradients for the input only
    test = load_mnist(train=False)
    return model, normalize_images(test.data[:8]), test.targets[:8]


def iterative_fgsm_reference(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epsilon: float,
    steps: int,
    measure_once: bool = False,
    descend: bool = False,
) -> torch.Tensor:
    """``steps`` FGSM steps of ``epsilon / steps``, the gradient of the summed loss measured
    again before each, each step clamped to black..white (§5.12). Two typical mistakes, for
    the hints: ``measure_once`` (the gradient only before the first step) and ``descend``
    (steps down the loss, which helps the model)."""
    x, direction = images.clone(), None
    for _ in range(steps):
        if direction is None or not measure_once:
            x.requires_grad_(True)
            F.nll_loss(model(x), targets, reduction="sum").backward()
            direction = x.grad.sign()
        step = -epsilon / steps if descend else epsilon / steps
        x = (x.detach() + step * direction).clamp(NORMALIZED_BLACK, WHITE)
    return x


@exercise("iterative_fgsm")
def check_iterative_fgsm(iterative_fgsm: Callable[..., torch.Tensor]) -> str:
    """Exercise 5: ``iterative_fgsm(model, images, targets, *, epsilon, steps)``. With one step
    it is §5.12's FGSM; with five, each step re-measures the gradient. Checked on a seeded
    untrained ``Net`` and eight test digits: no pixel moved by more than ``epsilon``, every
    pixel between black and white, then element by element against the reference."""
    model, images, targets = _attack_case()
    epsilon = 0.5
    for steps in (1, 5):
        name = f"iterative_fgsm(model, images, targets, epsilon={epsilon}, steps={steps})"
        got = iterative_fgsm(model, images.clone(), targets.clone(), epsilon=epsilon, steps=steps)
        check_like(got, images, name=name)
        moved = (got.detach() - images).abs().flatten()
        if moved.max() > epsilon + 1e-5:
            first = int((moved > epsilon + 1e-5).nonzero()[0])
            raise ExerciseFailed(
                f"{name} moves the pixel at {index_of(first, got.shape)} by {moved[first]:.3f}, "
                f"more than epsilon = {epsilon}: each of the {steps} steps may move it by "
                f"epsilon / {steps}"
            )
        outside = ((got < NORMALIZED_BLACK - 1e-5) | (got > WHITE + 1e-5)).flatten().nonzero()
        if len(outside):
            value = float(got.flatten()[int(outside[0])])
            raise ExerciseFailed(
                f"{name} holds {len(outside)} pixels outside black..white "
                f"({NORMALIZED_BLACK:.4f}..{WHITE:.4f}), the first {value:.4f}: clamp after "
                "every step, as fgsm does"
            )
        case = (model, images, targets)
        expected = iterative_fgsm_reference(*case, epsilon=epsilon, steps=steps)
        hints = {
            "That steps down the loss, which helps the model: an attack adds "
            "epsilon * sign(gradient of the loss)": iterative_fgsm_reference(
                *case, epsilon=epsilon, steps=steps, descend=True
            ),
        }
        if steps > 1:
            hints[
                "That is one FGSM step of epsilon: measure the gradient again before every "
                "step, at the images as they are then"
            ] = iterative_fgsm_reference(*case, epsilon=epsilon, steps=steps, measure_once=True)
        check_tensor(got, expected, name=name, hints=hints)
    return (
        f"iterative_fgsm: 1 step (FGSM) and 5 steps of epsilon / 5 on 8 digits, within "
        f"epsilon = {epsilon}, black..white, the reference's pixels"
    )
