"""The exercises' checks (``mnist_dissected.exercises*``) and the solutions of Parts 1 to 5.

Why this file exists: a check that passes a wrong answer, or fails the right one, teaches the
wrong thing. So each check must pass the notebook's own solution (read from its collapsed
``<details>`` block in ``solutions/``, not copied here), report the notebook's stub as
not solved, and fail typical wrong answers with the message a learner should read.

The notebooks no longer run their solutions on Run All (issue 20): what their "Appendix: the
solutions, checked" ran moved here, each assert kept (:data:`AFTER`), and every solution block of
Parts 1 to 5 is run by :func:`test_every_solution_runs_and_holds_what_its_answer_says`.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from mnist_dissected import (
    errors,
    exercises,
    exercises_part1,
    exercises_part2,
    exercises_part3,
    exercises_part4,
    exercises_part5,
)
from mnist_dissected.data import MNIST_MEAN, MNIST_STD, NORMALIZED_BLACK
from mnist_dissected.exercises import (
    ExerciseFailed,
    check_gradient,
    check_like,
    check_number,
    check_tensor,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import student_edition as edition  # noqa: E402 (tools/, put on the path just above)

NOTEBOOKS = {
    1: "1_mnist_load",
    2: "2_mnist_model",
    3: "3_mnist_backprop",
    4: "4_mnist_train",
    5: "5_mnist_visualize",
}
#: Cells besides the imports that an exercise's solution needs (Part 5's reuses §5.12's fgsm).
SETUP = {1: (), 2: (), 3: (), 4: (), 5: ("def fgsm(",)}
CHECKS = {
    1: {
        name: getattr(exercises_part1, f"check_{name}")
        for name in ("normalize", "shift_sample", "nearest_mean")
    },
    2: {
        name: getattr(exercises_part2, f"check_{name}")
        for name in ("conv2d_by_shifts", "max_pool", "log_softmax_by_hand")
    },
    3: {
        name: getattr(exercises_part3, f"check_{name}")
        for name in ("softmax_backward", "max_pool_backward", "Multiply")
    },
    4: {
        name: getattr(exercises_part4, f"check_{name}")
        for name in ("train_one_epoch", "evaluate_by_hand", "adam_step")
    },
    5: {
        name: getattr(exercises_part5, f"check_{name}")
        for name in ("top_k_accuracy", "precision_per_class", "iterative_fgsm")
    },
}
CASES = [(part, name) for part, names in CHECKS.items() for name in names]


def notebook(part: int) -> dict:
    return json.loads((ROOT / "notebooks" / f"{NOTEBOOKS[part]}.ipynb").read_text())


def with_companion(part: int) -> dict:
    """The core notebook with its companion's code appended (its imports cell right after the
    core's): an answer may reuse a deep dive that lives in ``notebooks/further/``."""
    core = notebook(part)
    path = ROOT / "notebooks" / "further" / f"{NOTEBOOKS[part]}_further.ipynb"
    if not path.exists():
        return core
    code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    cells = list(core["cells"])
    imports = [i for i, c in enumerate(cells) if c["cell_type"] == "code"][1]
    both = edition.source(cells[imports]) + "\n" + edition.source(code[1])
    cells[imports] = {**cells[imports], "source": both}
    return {**core, "cells": cells + code[2:]}


def solutions_notebook(part: int) -> dict:
    path = edition.solutions_path(ROOT / "notebooks" / f"{NOTEBOOKS[part]}.ipynb")
    return json.loads(path.read_text())


def the_exercise(part: int, name: str) -> edition.Exercise:
    found = edition.exercises(notebook(part), solutions_notebook(part))
    return next(e for e in found if e.name == name)


def solutions(part: int) -> dict[int, list[str]]:
    return edition.numbered_solutions(solutions_notebook(part))


# --------------------------------------------------------------------------- the library


@pytest.mark.parametrize(
    "got, expected, message",
    [
        (None, torch.zeros(3), r"f\(x\) should be a tensor, not None \(did you forget `return`"),
        ([0.0, 0.0], torch.zeros(2), "should be a tensor, not a list"),
        (
            torch.zeros(2, 28, 28),
            torch.zeros(2, 1, 28, 28),
            r"has shape \(2, 28, 28\), expected \(2, 1, 28, 28\): a dimension of size 1 is missing",
        ),
        (torch.zeros(2, 784), torch.zeros(2, 1, 28, 28), "the same number of elements, arranged"),
        (
            torch.zeros(3, dtype=torch.float64),
            torch.zeros(3),
            "has dtype torch.float64, expected torch.float32",
        ),
        (
            torch.tensor([0.0, float("nan"), 2.0]),
            torch.zeros(3),
            r"holds 1 NaN\(s\) where numbers were expected, the first at index \(1,\)",
        ),
        (
            torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
            torch.tensor([[1.0, 2.0], [3.5, 4.5]]),
            r"differs from the expected value at 2 of 4 elements; the first is at index \(1, 0\): "
            r"got 3, expected 3.5 \(off by -0.5\)$",
        ),
        (torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]), r"got 3, expected 5 \(off by -2\)$"),
    ],
)
def test_check_tensor_says_what_differs(got, expected, message):
    with pytest.raises(ExerciseFailed, match=message) as failed:
        check_tensor(got, expected, name="f(x)")
    assert str(failed.value).startswith("f(x) ") and "\n" not in str(failed.value)


def test_a_failed_exercise_is_an_assertion_and_a_package_error():
    assert issubclass(ExerciseFailed, AssertionError)
    assert issubclass(ExerciseFailed, errors.MnistDissectedError)


def test_check_tensor_passes_within_float_rounding_and_names_known_mistakes():
    check_tensor(torch.tensor([1.0, 2.0]) + 1e-7, torch.tensor([1.0, 2.0]), name="x")
    check_tensor(torch.tensor([1, 2]), torch.tensor([1, 2]), name="x")
    with pytest.raises(ExerciseFailed, match=r"off by \+1\)\. You added one$"):
        check_tensor(
            torch.tensor([2.0]),
            torch.tensor([1.0]),
            name="x",
            hints={"You divided": torch.tensor([0.5]), "You added one": torch.tensor([2.0])},
        )
    check_like(torch.zeros(2, dtype=torch.float64), torch.zeros(2), name="x", exact_dtype=False)
    with pytest.raises(ExerciseFailed, match=r"has dtype torch\.int64, expected a floating-point"):
        check_like(torch.zeros(2, dtype=torch.long), torch.zeros(2), name="x", exact_dtype=False)


def test_check_number():
    assert check_number(torch.tensor(0.5), 0.5, name="acc") == 0.5
    with pytest.raises(
        ExerciseFailed, match=r"^acc is 50, expected 0.5 \(off by \+49.5\)\. A count"
    ):
        check_number(50, 0.5, name="acc", hints={"A count": 50.0})
    with pytest.raises(ExerciseFailed, match="acc should be a number, not a str"):
        check_number("0.5", 0.5, name="acc")
    with pytest.raises(ExerciseFailed, match="acc should be a number, not a bool"):
        check_number(True, 1.0, name="acc")


class WrongForW(torch.autograd.Function):
    """x² w, with a backward whose gradient for w is wrong (x where x² belongs)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * 2 * x * w, grad * x


def test_check_gradient_names_the_input_whose_backward_is_wrong():
    x, w = (
        torch.tensor([1.5, -2.0, 3.0], dtype=torch.float64, requires_grad=True) for _ in range(2)
    )

    def product(x, w):
        return WrongForW.apply(x, w)

    with pytest.raises(ExerciseFailed) as failed:
        check_gradient(product, (x, w), name="x² w")
    assert str(failed.value) == (
        "the gradient of x² w with respect to `w` (input 1) fails its gradcheck: the Jacobian "
        "from backward differs from finite differences at 3 of 9 elements; the first is at index "
        "(0, 0): backward gives 1.5, finite differences 2.25 (off by -0.75)"
    )
    check_gradient(lambda x, w: x * x * w, (x, w), name="x² w")  # autograd's own: right
    check_gradient(product, (x, w.detach()), name="x² w")  # w held fixed: x's gradient is right
    with pytest.raises(ValueError, match="float64"):
        check_gradient(product, (x.float(),), name="x² w")


def test_an_exercise_reports_the_stub_passes_right_answers_and_leaves_random_numbers(capsys):
    @exercises.exercise("double")
    def check_double(double):
        check_tensor(double(torch.tensor([1.0, 2.0])), torch.tensor([2.0, 4.0]), name="double(x)")
        torch.rand(3)  # the check's own random numbers
        return "double: right"

    def stub(x):
        raise NotImplementedError  # your code here

    torch.manual_seed(0)
    assert check_double(stub) is None
    assert check_double(lambda x: 2 * x) is None
    assert (
        capsys.readouterr().out
        == exercises.NOT_SOLVED.format(name="double") + "\n✓ double: right\n"
    )
    drawn = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), drawn), "the checks drew from the notebook's generator"
    with pytest.raises(ExerciseFailed, match=r"double\(x\) differs"):
        check_double(lambda x: x + 1)

    def unsupported(x):
        raise NotImplementedError("an operation this device lacks")

    with pytest.raises(NotImplementedError, match="device lacks"):
        check_double(unsupported)


# --------------------------------------------------------------------------- each exercise


@pytest.mark.parametrize("part, name", CASES)
def test_the_notebook_solution_passes_its_check(part, name, capsys):
    namespace = edition.notebook_namespace(notebook(part), SETUP[part])
    edition.run_code(the_exercise(part, name).solution, namespace)
    CHECKS[part][name](namespace[name])
    assert capsys.readouterr().out.startswith(f"✓ {name}: ")


@pytest.mark.parametrize("part, name", CASES)
def test_the_notebook_stub_is_reported_not_solved(part, name, capsys):
    exercise = the_exercise(part, name)
    assert "raise NotImplementedError  # your code here" in exercise.stub
    assert exercise.check == f"check_{name}({name})", "one call per exercise"
    namespace: dict = {"torch": torch}  # Part 3's stub subclasses torch.autograd.Function
    edition.run_code(exercise.stub, namespace)
    CHECKS[part][name](namespace[name])
    assert capsys.readouterr().out == exercises.NOT_SOLVED.format(name=name) + "\n"


def shift_with(draw, fill=0):
    """A shift_sample whose (dy, dx) come from ``draw(generator)``, filling with ``fill``."""

    def shift_sample(image, label, *, generator):
        dy, dx = draw(generator)
        padded = F.pad(image, (8, 8, 8, 8), value=fill)
        return padded[8 - dy : 36 - dy, 8 - dx : 36 - dx], label

    return shift_sample


def two(low, high, generator=None):
    return torch.randint(low, high, (2,), generator=generator).tolist()


def nearest_by(distance, pick=torch.argmin):
    def nearest_mean(train_images, train_labels, images):
        means = torch.stack(
            [train_images[train_labels == d].float().mean(dim=0) for d in range(10)]
        )
        return pick(distance(images.float().flatten(1), means.flatten(1)), dim=1)

    return nearest_mean


def measured_once(model, images, targets, *, epsilon, steps):
    x = images.clone().requires_grad_(True)
    F.nll_loss(model(x), targets, reduction="sum").backward()
    direction, x = x.grad.sign(), x.detach()
    for _ in range(steps):
        x = (x + epsilon / steps * direction).clamp(NORMALIZED_BLACK, exercises_part5.WHITE)
    return x


def attack(step, *, clamp=True, loss=F.nll_loss):
    """An iterated attack whose step is ``step(epsilon, steps)``, clamped or not."""

    def iterative_fgsm(model, images, targets, *, epsilon, steps):
        x = images.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            loss(model(x), targets).backward()
            x = x.detach() + step(epsilon, steps) * x.grad.sign()
            if clamp:
                x = x.clamp(NORMALIZED_BLACK, exercises_part5.WHITE)
        return x

    return iterative_fgsm


def loop_with(*, zero_grad=True, train=True, step=True, item_first=False, keep_graph=False):
    """A train_one_epoch with one of the typical mistakes (each flag)."""

    def train_one_epoch(model, batches, optimizer):
        if train:
            model.train()
        losses = []
        for data, target in batches:
            if zero_grad:
                optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            (loss.item() if item_first else loss).backward()
            if step:
                optimizer.step()
            losses.append(loss if keep_graph else loss.item())
        return losses

    return train_one_epoch


def scoring_with(*, eval_mode=True, no_grad=True, by_batch=False, summed=False, count=False):
    """An evaluate_by_hand with one of the typical mistakes (each flag)."""

    def evaluate_by_hand(model, batches):
        model.train(not eval_mode)
        with torch.set_grad_enabled(not no_grad):
            scores = [
                (
                    F.nll_loss(out := model(x), y, reduction="sum").item(),
                    (out.argmax(dim=1) == y).sum().item(),
                    len(y),
                )
                for x, y in batches
            ]
        loss, right, n = (sum(column) for column in zip(*scores, strict=True))
        if by_batch:
            return tuple(sum(s[k] / s[2] for s in scores) / len(scores) for k in (0, 1))
        return (loss if summed else loss / n), (right if count else right / n)

    return evaluate_by_hand


def adam_with(*, correct=True, eps_inside=False, defaults=False, keep_corrected=False):
    """An adam_step with one of the typical mistakes (each flag)."""

    def adam_step(theta, grad, m, v, t, *, lr=0.001, betas=(0.9, 0.999), eps=1e-8):
        if defaults:
            lr, betas, eps = 0.001, (0.9, 0.999), 1e-8
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad**2
        m_hat, v_hat = (m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)) if correct else (m, v)
        root = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
        theta = theta - lr * m_hat / root
        return (theta, m_hat, v_hat) if keep_corrected else (theta, m, v)

    return adam_step


def pool_backward(*, assign=False):
    """A max_pool_backward that assigns each window's gradient where it should add it."""

    def max_pool_backward(x, grad_out, k, stride):
        grad_x = torch.zeros_like(x)
        for i in range(grad_out.shape[2]):
            for j in range(grad_out.shape[3]):
                rows, cols = slice(i * stride, i * stride + k), slice(j * stride, j * stride + k)
                window = x[:, :, rows, cols]
                routed = (window == window.amax(dim=(2, 3), keepdim=True)) * grad_out[
                    :, :, i : i + 1, j : j + 1
                ]
                if assign:
                    grad_x[:, :, rows, cols] = routed
                else:
                    grad_x[:, :, rows, cols] += routed
        return grad_x

    return max_pool_backward


def spread_backward(scale=1):
    """A max_pool_backward that spreads each window's gradient over it (times ``scale``)."""

    def max_pool_backward(x, grad_out, k, stride):
        leaf = x.clone().requires_grad_()
        F.avg_pool2d(leaf, k, stride).backward(grad_out)
        return leaf.grad * scale

    return max_pool_backward


def multiply_with(forward, backward):
    """A Multiply whose forward is ``forward(x, y)``, backward ``backward(grad, x, y)``."""

    class Multiply(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return forward(x, y)

        @staticmethod
        def backward(ctx, grad_output):
            return backward(grad_output, *ctx.saved_tensors)

    return Multiply


WRONG = [
    # Part 1, exercise 6: normalize
    (
        "normalize",
        lambda images: (images.float() / 255 - MNIST_MEAN) / MNIST_STD,
        r"^normalize\(images\) of 1 image\(s\) has shape \(1, 28, 28\), expected \(1, 1, 28, 28\): "
        "a dimension of size 1 is missing or extra",
    ),
    (
        "normalize",
        lambda images: (images.unsqueeze(1).float() - MNIST_MEAN) / MNIST_STD,
        r"differs from the expected value at \d+ of 784 elements; the first is at index "
        r"\(0, 0, 0, 1\): got 827.229, expected 2.82149 \(off by \+824.4\)\. Scale the bytes to "
        r"\[0, 1\] first \(divide by 255\), as ToTensor does$",
    ),
    (
        "normalize",
        lambda images: (images.unsqueeze(1).float() / 255 - MNIST_STD) / MNIST_MEAN,
        "The mean and the standard deviation are swapped$",
    ),
    (
        "normalize",
        lambda images: (images.unsqueeze(1).double() / 255 - MNIST_MEAN) / MNIST_STD,
        "has dtype torch.float64, expected torch.float32$",
    ),
    ("normalize", lambda images: None, r"should be a tensor, not None \(did you forget `return`"),
    # Part 1, exercise 7: shift_sample
    (
        "shift_sample",
        lambda image, label, *, generator: image,
        r"^shift_sample\(image, 5, generator=...\) \(draw 0\) should return a pair "
        r"\(image, label\), not a Tensor$",
    ),
    (
        "shift_sample",
        lambda image, label, *, generator: (image, label),
        r"^40 draws gave only the shift\(s\) \[\(0, 0\)\] as \(down, right\)",
    ),
    (
        "shift_sample",
        shift_with(lambda g: two(-2, 3)),
        r"^two generators seeded alike gave different shifts \(draw \d of training digit 0\): draw "
        "the shift from `generator`",
    ),
    (
        "shift_sample",
        shift_with(lambda g: two(-2, 3, g), fill=255),
        r"holds 55,065 of ink, the digit 27,525 \(\+100%\): a shift moves the ink",
    ),
    (
        "shift_sample",
        shift_with(lambda g: two(-5, 6, g)),
        r"is the digit moved by \(5, 2\) \(down, right\): further than 2 pixels each way$",
    ),
    (
        "shift_sample",
        lambda image, label, *, generator: (image, (label + 1) % 10),
        r"returned the label 6: a shifted 5 is still a 5",
    ),
    # Part 1, exercise 8: nearest_mean
    (
        "nearest_mean",
        nearest_by(torch.cdist, pick=torch.argmax),
        r"differs from the nearest mean for 1000 of 1000 validation images; the first is image 0: "
        r"got 1 \(distance 2421.3\), the nearest mean is 0's \(distance 1342.7\)\. These are the "
        r"farthest means \(argmax\)",
    ),
    (
        "nearest_mean",
        nearest_by(lambda a, b: (a[:, None] - b[None]).abs().sum(dim=2)),
        r"differs from the nearest mean for 258 of 1000 validation images; the first is image 2: "
        r"got 1 \(distance 2006.0\), the nearest mean is 5's \(distance 1735.8\)$",
    ),
    (
        "nearest_mean",
        nearest_by(torch.cdist, pick=lambda d, dim: torch.zeros(len(d), dtype=int)),
        "Every image got the same digit: one mean per digit, of its images only$",
    ),
    (
        "nearest_mean",
        nearest_by(torch.cdist, pick=lambda d, dim: d.argmin(dim).float()),
        "has dtype torch.float32, expected an integer dtype$",
    ),
    # Part 4, exercise 6: train_one_epoch
    (
        "train_one_epoch",
        loop_with(zero_grad=False),
        r"^the list of step losses from train_one_epoch\(model, batches, optimizer\) differs "
        r"from the expected value at 1 of 3 elements; the first is at index \(2,\).*The "
        "gradients accumulated: without optimizer.zero_grad",
    ),
    (
        "train_one_epoch",
        loop_with(train=False),
        r"at 3 of 3 elements.*Dropout was off: the model came in eval mode \(as evaluate leaves "
        r"it\), so call model.train\(\) first$",
    ),
    (
        "train_one_epoch",
        loop_with(step=False),
        r"The weights never moved: call optimizer.step\(\) after loss.backward\(\)",
    ),
    (
        "train_one_epoch",
        loop_with(item_first=True),
        r"called backward\(\) on a Python number: loss.item\(\) has no graph behind it",
    ),
    (
        "train_one_epoch",
        loop_with(keep_graph=True),
        r"keeps step 0's loss as a tensor that requires grad: it holds that step's whole graph",
    ),
    (
        "train_one_epoch",
        lambda model, batches, optimizer: None,
        r"should return a list of the 3 step losses, not None \(did you forget `return`",
    ),
    # Part 4, exercise 7: evaluate_by_hand
    (
        "evaluate_by_hand",
        scoring_with(eval_mode=False),
        r"^two calls of evaluate_by_hand\(model, batches\) on the same model and digits gave "
        r"the mean losses [\d.]+ and [\d.]+: dropout is still on .* call model.eval\(\) first$",
    ),
    (
        "evaluate_by_hand",
        scoring_with(no_grad=False),
        r"gives the right numbers, but autograd kept \d+ tensors for a backward pass that never "
        r"comes: score under torch.no_grad\(\)",
    ),
    (
        "evaluate_by_hand",
        scoring_with(by_batch=True),
        r"^the mean loss of evaluate_by_hand\(model, batches\) is [\d.]+, expected [\d.]+ .*"
        "That is the mean of the batches' mean losses, but the last batch holds 5 digits",
    ),
    (
        "evaluate_by_hand",
        scoring_with(summed=True),
        "That is the summed loss of all 37 digits: divide by their number$",
    ),
    (
        "evaluate_by_hand",
        scoring_with(count=True),
        r"^the accuracy of .* A count, not a share: divide by the number of digits \(37\)$",
    ),
    # Part 4, exercise 8: adam_step
    (
        "adam_step",
        adam_with(correct=False),
        r"^the theta of adam_step\(theta, grad, m, v, t=1, lr=0.001, betas=\(0.9, 0.999\), "
        r"eps=1e-08\) differs .* That leaves out the bias correction",
    ),
    ("adam_step", adam_with(eps_inside=True), "That puts ε inside the square root"),
    (
        "adam_step",
        adam_with(defaults=True),
        r"^the theta of adam_step\(.*lr=0.05.*\) differs .*That is Adam with PyTorch's default "
        "lr, betas and eps: use the ones passed in$",
    ),
    (
        "adam_step",
        adam_with(keep_corrected=True),
        r"^the m of adam_step\(theta, grad, m, v, t=1, .* That keeps the corrected m̂ and v̂",
    ),
    (
        "adam_step",
        lambda theta, grad, m, v, t, **hyper: theta,
        r"should return the triple \(theta, m, v\), not a Tensor$",
    ),
    # Part 5, exercise 1: top_k_accuracy
    (
        "top_k_accuracy",
        lambda lp, t, k: (lp.topk(k, dim=1).indices == t[:, None]).any(dim=1).sum(),
        r"^top_k_accuracy\(log_probs, targets, k=1\) is 108, expected 0.54 \(off by \+107\)\. "
        "A count",
    ),
    (
        "top_k_accuracy",
        lambda lp, t, k: (lp.argmax(dim=1) == t).float().mean(),
        r"k=2\) is 0.54, expected 0.75 \(off by -0.21\)\. That is the top-1 accuracy",
    ),
    (
        "top_k_accuracy",
        lambda lp, t, k: (lp.topk(k, dim=1).indices == t[:, None]).float().mean(),
        r"k=2\) is 0.375, expected 0.75 .*a digit counts once if any of its k guesses is right",
    ),
    # Part 5, exercise 2: precision_per_class
    (
        "precision_per_class",
        lambda cm: cm.diag() / cm.sum(dim=1),
        r"^precision_per_class\(cm\) of a 10 x 10 matrix differs .* got 0.982439, expected 0.97767 "
        r"\(off by \+0.004769\)\. That divides by the row sums",
    ),
    (
        "precision_per_class",
        lambda cm: cm.diag() // cm.sum(dim=0),
        "of a 3 x 3 matrix has dtype torch.int64, expected a floating-point dtype$",
    ),
    # Part 5, exercise 5: iterative_fgsm
    (
        "iterative_fgsm",
        measured_once,
        r"steps=5\) differs from the expected value at 3550 of 6272 elements.*That is one FGSM "
        "step of epsilon: measure the gradient again before every step",
    ),
    (
        "iterative_fgsm",
        attack(lambda epsilon, steps: epsilon),
        r"steps=5\) moves the pixel at \(0, 0, 0, 7\) by 1.000, more than epsilon = 0.5: each of "
        "the 5 steps may move it by epsilon / 5$",
    ),
    (
        "iterative_fgsm",
        attack(lambda epsilon, steps: epsilon / steps, clamp=False),
        r"steps=1\) holds 2869 pixels outside black..white \(-0.4242..2.8215\), the first -0.9242: "
        "clamp after every step",
    ),
    (
        "iterative_fgsm",
        attack(lambda epsilon, steps: -epsilon / steps),
        "That steps down the loss, which helps the model",
    ),
    # Part 2, exercise 6: conv2d_by_shifts
    (
        "conv2d_by_shifts",
        lambda x, weight, bias: F.conv2d(x, weight),
        r"^conv2d_by_shifts\(x, weight, bias\) with x \(2, 1, 8, 8\), weight \(4, 1, 5, 5\) "
        r"differs from the expected value at 128 of 128 elements; .* The bias is missing: add "
        r"bias\[o\] to every output of channel o$",
    ),
    (
        "conv2d_by_shifts",
        lambda x, weight, bias: F.conv2d(x, weight.flip(2, 3), bias),
        r"\. The kernel is flipped \(a true convolution\): PyTorch's conv2d does not flip it",
    ),
    (
        "conv2d_by_shifts",
        lambda x, weight, bias: F.conv2d(x, weight, bias, padding=1),
        r"has shape \(2, 4, 6, 6\), expected \(2, 4, 4, 4\): a 5 x 5 kernel fits "
        r"\(8 - 5 \+ 1\) x \(8 - 5 \+ 1\) times in an image of 8 x 8$",
    ),
    (
        "conv2d_by_shifts",
        lambda x, weight, bias: None,
        r"should be a tensor, not None \(did you forget `return`",
    ),
    # Part 2, exercise 7: max_pool
    (
        "max_pool",
        F.avg_pool2d,
        r"^max_pool\(x, k=3, stride=2\) with x \(2, 3, 7, 7\) differs .* That is average "
        "pooling: take the max of each window, not its mean$",
    ),
    (
        "max_pool",
        lambda x, k, stride: F.max_pool2d(x, k),
        r"has shape \(2, 3, 2, 2\), expected \(2, 3, 3, 3\): windows of 3 pixels, 2 apart, fit "
        r"\(H - k\) // stride \+ 1 = \(7 - 3\) // 2 \+ 1 = 3 times down",
    ),
    # Part 2, exercise 8: log_softmax_by_hand
    (
        "log_softmax_by_hand",
        lambda z: (z.exp() / z.exp().sum(dim=1, keepdim=True)).log(),
        r"^log_softmax_by_hand\(z\) for large scores \(up to 1622\) holds \d+ value\(s\) that "
        r"are NaN or infinite, the first at index \(0, 0\) .* exp overflows float32 above about "
        r"88 .* Subtract each row's max first",
    ),
    (
        "log_softmax_by_hand",
        lambda z: z.softmax(dim=1),
        r"for small scores .* Those are the probabilities \(softmax\), not their logarithm$",
    ),
    (
        "log_softmax_by_hand",
        lambda z: z.log_softmax(dim=0),
        r"Normalized over the wrong dimension: each row \(dim=1\) is one image's scores$",
    ),
    # Part 3, exercise 6: softmax_backward
    (
        "softmax_backward",
        lambda s, grad_out: s * (1 - s) * grad_out,
        r"^softmax_backward\(s, grad_out\) for 4 row\(s\) of 5 differs from the expected value "
        r"at 20 of 20 elements; .* That is only the diagonal of J",
    ),
    (
        "softmax_backward",
        lambda s, grad_out: s * grad_out,
        r"That is grad_out \* s alone: J = diag\(s\) - s sᵀ",
    ),
    (
        "softmax_backward",
        lambda s, grad_out: s * (grad_out - (grad_out * s).sum(dim=0, keepdim=True)),
        r"That sums over the batch \(dim=0\): each row is one softmax, sum over dim=1$",
    ),
    # Part 3, exercise 7: max_pool_backward
    (
        "max_pool_backward",
        pool_backward(assign=True),
        r"^max_pool_backward\(x, grad_out, k=3, stride=2\) with x \(1, 1, 5, 5\) differs from "
        r"the expected value at 1 of 25 elements; the first is at index \(0, 0, 2, 2\): got 4, "
        r"expected 10 \(off by -6\)\. Where windows overlap, .* \(add with \+=, do not assign\)$",
    ),
    (
        "max_pool_backward",
        spread_backward(),
        r"That spreads each window's gradient evenly over its pixels \(average pooling's "
        r"backward\)",
    ),
    (
        "max_pool_backward",
        spread_backward(scale=9),
        r"That gives every pixel of the window the whole gradient: only the maximum gets it",
    ),
    # Part 3, exercise 8: Multiply
    (
        "Multiply",
        multiply_with(lambda x, y: x * y, lambda grad, x, y: (y, x)),
        r"^x\.grad after Multiply\.apply\(x, y\)\.backward\(grad_output\) differs .* That leaves "
        r"out the chain rule's factor grad_output: multiply the local derivative by it "
        r"\(grad_output \* y\)$",
    ),
    (
        "Multiply",
        multiply_with(lambda x, y: x * y, lambda grad, x, y: (grad * x, grad * y)),
        r"That is the gradient of the other input: d\(x \* y\)/dx is the \*other\* factor",
    ),
    (
        "Multiply",
        multiply_with(lambda x, y: x + y, lambda grad, x, y: (grad, grad)),
        r"^Multiply\.apply\(x, y\) differs from the expected value",
    ),
]


@pytest.mark.parametrize("name, wrong, message", WRONG, ids=[w[0] for w in WRONG])
def test_a_typical_wrong_answer_fails_with_what_is_wrong(name, wrong, message):
    check = next(checks[name] for checks in CHECKS.values() if name in checks)
    with pytest.raises(ExerciseFailed, match=message) as failed:
        check(wrong)
    assert "\n" not in str(failed.value)


def test_a_mean_step_or_cross_entropy_is_the_same_attack(capsys):
    """Only the gradient's sign counts: scaling the loss (a mean) changes nothing, and
    cross-entropy of log-probabilities is their NLL (log_softmax leaves them as they are)."""
    exercises_part5.check_iterative_fgsm(
        attack(lambda epsilon, steps: epsilon / steps, loss=F.cross_entropy)
    )
    assert capsys.readouterr().out.startswith("✓ iterative_fgsm")


# --------------------------------------------------------------------------- the solutions


def part1_cells() -> tuple[str, ...]:
    """What Part 1's answers use: both splits, the split indices, the mean images, the SGD
    experiment of §1.10 and the raw files' folder (the companion's §1.A)."""
    return (
        "train_raw = load_mnist(",
        "data.train_validation_indices()",
        "mean_images = torch.stack(",
        "def loss_after_sgd(",
        "raw_dir = mnist_files.raw_folder",
    )


def part2_cells() -> tuple[str, ...]:
    """What Part 2's answers use: the seeded Net of §2.1, the batch, the untrained Net's score
    spread (§2.14) and LeNet-5's C3 connections (§2.H)."""
    return (
        "seed_everything(0)\nnet = Net()",
        "images, labels = next(iter(make_loader(train_set, batch_size=64)))",
        "spread = (log_p.max",
        "C3_INPUTS = [",
    )


def part3_cells() -> tuple[str, ...]:
    """Part 3's answers need only the imports (which seed the random numbers)."""
    return ()


def part4_cells() -> tuple[str, ...]:
    """What Part 4's answers use: §4.1's batch, the device, the training tensors and split,
    the fast recipe's batches, §4.5's tensor run (one epoch: slow), §4.7's short runs, the
    five seeds of §4.9 (cached by load_or_train) and Adadelta by hand (the companion's §4.I)."""
    return (
        "data, target = next(iter(loader))",
        "device = pick_device()",
        "train_tensors = TensorBatches.from_dataset(",
        "train_idx, val_idx = train_validation_indices(",
        "fast_batches = make_batches(",
        "tensor_history = fit(",
        "def short_run(",
        "seed_runs = {seed: load_or_train",
        "median = test_accuracies[",
        "def adadelta_by_hand(",
    )


def part5_cells() -> tuple[str, ...]:
    """What Part 5's answers use: the trained model, the test set and its predictions, the
    confusion matrix, class_scores, and §5.12's attack."""
    return (
        "load_or_train(seed=1",
        "test_set = load_mnist(",
        "log_probs = model(images)",
        "accuracy = correct.float().mean()",
        "cm = torch.bincount(targets * 10 + pred",
        "from mnist_dissected.draw import class_scores",
        'F.nll_loss(model(x), y, reduction="sum")',
        "def fgsm(",
        "flips_fgsm, flips_noise =",
    )


#: What each solution must hold after it runs: the asserts of the old appendix (Parts 1 to 5,
#: exercises 1-5), and the numbers each answer quotes. ``printed`` is what the blocks printed.
AFTER = {
    1: {
        1: """
assert printed.startswith("[0.173, 0.076, ")  # "0 uses the most ink (0.173), 1 the least (0.076)"
assert max(range(10), key=ink.__getitem__) == 0 and min(range(10), key=ink.__getitem__) == 1
torch.testing.assert_close(torch.tensor(ink, dtype=torch.float64), mean_images.mean(dim=(1, 2)))
""",
        2: """
idx_train = IDXDataset(raw_dir / "train-images-idx3-ubyte", raw_dir / "train-labels-idx1-ubyte")
assert len(idx_train) == 60_000
assert torch.equal(idx_train.images, train_raw.data)
assert torch.equal(idx_train.labels, train_raw.targets)
assert tuple(idx_train[0][0].shape) == (28, 28) and idx_train[0][1].item() == 5
""",
        3: """
assert printed == "2.8215\\n-0.4242\\n"  # the answer's numbers
torch.testing.assert_close(normalize_images(photo)[0, 0, 0, 0].item(), (1 - MNIST_MEAN) / MNIST_STD)
torch.testing.assert_close(normalize_images(fixed)[0, 0, 0, 0].item(), NORMALIZED_BLACK)
assert torch.equal(fixed, train_raw.data[:1])
""",
        4: """
assert printed == "0.1325 0.3105\\n"
assert (round(test_mean, 4), round(test_std, 4)) == (0.1325, 0.3105)
""",
        5: """
assert printed == "centred only 1.18, scaled only 0.49\\n"
assert (round(centred_loss, 2), round(scaled_loss, 2)) == (1.18, 0.49)
gap = unit_loss - normalized_loss
assert scaled_loss - normalized_loss < 0.1 * gap and unit_loss - centred_loss < 0.1 * gap
assert scaled_loss > normalized_loss
""",
        6: """
some = train_raw.data[:100]
assert torch.equal(normalize(some), normalize_images(some))  # "the very bits"
""",
        7: """
image = train_raw.data[0]
moved, label = shift_sample(image, 5, generator=torch.Generator().manual_seed(0))
assert label == 5 and moved.shape == image.shape and moved.sum() == image.sum()
""",
        8: """
from contextlib import redirect_stdout
from io import StringIO

with redirect_stdout(StringIO()) as said:
    check_nearest_mean(nearest_mean)
assert "83.1% of them read right" in said.getvalue()  # the answer's number
assert (torch.tensor([0], dtype=torch.uint8) - 1).item() == 255  # "0 - 1 is 255"
""",
    },
    2: {
        1: """
assert printed == "-0.607\\n"
torch.testing.assert_close(value, net.conv2(h)[0, 3, 2, 5])
""",
        2: """
assert printed == "weights and biases in use: 1516\\n"
assert used == 1516
torch.testing.assert_close(before[0, 0], after[0, 0])  # C3 map 0 reads S2 maps 0, 1, 2
assert not torch.allclose(before[0, 1], after[0, 1])  # C3 map 1 reads S2 maps 1, 2, 3
""",
        3: """
assert size == 14 and out.shape == (1, 8, 14, 14) and same.shape == (1, 8, 28, 28)
""",
        4: """
assert printed == "0.0 0.75\\n"
assert relu_of_avg == 0.0 and avg_of_relu == 0.75
""",
        5: """
assert printed == (
    "score spread 15.3 (55 times the untrained Net's), loss 7.85, largest probability 1.00\\n"
)
assert big_spread > 10 * spread and big_loss > math.log(10) + 0.5
""",
        6: """
assert printed == "25 steps for (64, 10, 24, 24)\\n"  # "25 steps"
with torch.no_grad():
    torch.testing.assert_close(by_shifts, net.conv1(images), rtol=1e-5, atol=1e-5)
""",
        7: """
assert printed == "(64, 10, 11, 11) (64, 10, 12, 12)\\n"  # "11 windows ... one fewer than 12"
assert torch.equal(max_pool(maps, 3, 2), F.max_pool2d(maps, 3, 2))
""",
        8: """
assert printed == "tensor([[-2.4076, -1.4076, -0.4076]])\\n"
big = torch.tensor([[100.0, 101.0, 102.0]])  # §2.10's second row
torch.testing.assert_close(log_softmax_by_hand(big), F.log_softmax(big, dim=1))
""",
    },
    3: {
        1: """
assert torch.equal(x.grad, by_hand)
""",
        2: """
assert_close(torch.stack(rows), J_softmax)
assert_close(J_softmax, torch.diag(s) - torch.outer(s, s))  # the textbook formula
""",
        3: """
# (the solution asserts first that the unscaled w is no leaf: w is the fixed one by now)
assert w.is_leaf and torch.equal(w.grad, 2 * w.detach())
""",
        4: """
assert gradcheck(Tanh.apply, (torch.randn(5, dtype=torch.float64, requires_grad=True),))
""",
        5: """
assert_close(grad_sum, 8 * scores8.grad)
""",
        6: """
assert printed == ""
assert_close(softmax_backward(s4[None], v4[None])[0], v4 @ (torch.diag(s4) - torch.outer(s4, s4)))
""",
        7: """
assert printed == "10.0\\n"  # the centre wins all four windows: 1 + 2 + 3 + 4
""",
        8: """
assert printed == "gradcheck(Multiply): True\\n"
""",
    },
    4: {
        1: """
assert unchanged and misplaced.fc2.weight.grad is None
""",
        2: """
assert wrong < right
""",
        3: """
assert len(lrs) == 645 and 185 <= peak <= 200
assert abs(max(lrs) - 0.01) < 1e-6 and lrs[0] < 0.001 and lrs[-1] < 1e-6
assert [round(beta1s[i], 2) for i in (0, peak, -1)] == [0.95, 0.85, 0.95]
""",
        4: """
assert quoted <= luckiest and luckiest >= median
""",
        5: """
assert 4400 < seen_in_training < 4800
""",
        6: """
assert printed == "True True\\n"  # short_run's losses and weights, bit for bit
assert len(my_losses) == 50 and all(isinstance(loss, float) for loss in my_losses)
""",
        7: """
assert printed == "True\\n"  # evaluate's numbers, to the last bit
assert 0.92 < by_hand[1] < 1 and by_hand == evaluate(tensor_model, tensor_batches.val)
""",
        8: """
torch.testing.assert_close((start - first).abs(), torch.full((3,), 0.001))  # lr, each
assert printed == "tensor([ 0.0010, -0.0010,  0.0010])\\n"
""",
    },
    5: {
        1: """
top2_accuracy = top_k_accuracy(log_probs, targets, 2)
assert top2_accuracy >= accuracy
assert top2_accuracy > 0.995
assert printed == f"{round(top2_accuracy, 4)}\\n"
""",
        2: """
torch.testing.assert_close(((precision * cm.sum(dim=0)).sum() / 10_000).item(), accuracy)
assert precision[lowest] == precision.min() and (precision > 0.97).all()
torch.testing.assert_close(1 - precision[lowest], mistaken.sum() / cm[:, lowest].sum())
""",
        3: """
drop = {shift: accuracy - a for shift, a in shifted_accuracy.items()}
assert drop[1] < 0.01 < drop[3] < drop[4]  # 1 pixel: under a point; 3: over; 4: more still
assert shifted_accuracy[4] > 0.5  # yet most digits survive
assert drop[1] / 1 < drop[3] / 3 < drop[4] / 4  # the cost grows faster than the shift
for shift in shifted_accuracy:
    edge_empty = (images[..., -shift:] <= NORMALIZED_BLACK + 1e-6).flatten(1).all(dim=1)
    assert edge_empty.float().mean() > 0.8  # "for most digits those columns are empty"
""",
        4: """
assert flips_noise < flips_saliency < flips_fgsm
""",
        5: """
assert (x_it - images[:1000]).abs().max() <= epsilon + 1e-5
assert flips_iterated > flips_fgsm
""",
    },
}


@pytest.fixture(scope="module")
def namespaces():
    """Each part's set-up cells, run once (Part 5's loads or trains the model: slow tests)."""
    built = {}

    def namespace(part: int) -> dict:
        if part not in built:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")
                warnings.filterwarnings("ignore", "__array__ implementation doesn't accept")
                cells = {
                    1: part1_cells,
                    2: part2_cells,
                    3: part3_cells,
                    4: part4_cells,
                    5: part5_cells,
                }[part]()
                built[part] = edition.notebook_namespace(with_companion(part), cells)
            plt.close("all")
        return built[part]

    yield namespace
    torch.set_printoptions(profile="default")  # the notebooks' imports cells set their own


@pytest.mark.slow  # set-up: Part 1's SGD runs; Part 4's epoch; Part 5's model, loaded or trained
@pytest.mark.parametrize("part", [1, 2, 3, 4, 5])
def test_every_solution_runs_and_holds_what_its_answer_says(part, namespaces):
    found = solutions(part)
    assert sorted(found) == sorted(AFTER[part]) == list(range(1, len(found) + 1))
    namespace = namespaces(part)
    for number, blocks in found.items():
        assert blocks, f"exercise {number}: its solution has no code"
        printed = "".join(edition.run_code(block, namespace) for block in blocks)
        namespace["printed"] = printed
        edition.run_code(AFTER[part][number], namespace)
