"""The exercises' checks (``mnist_dissected.exercises*``) and the solutions of Parts 1 and 5.

Why this file exists: a check that passes a wrong answer, or fails the right one, teaches the
wrong thing. So each check must pass the notebook's own solution (read from its collapsed
``<details>`` block, not copied here), report the notebook's stub as not solved, and fail typical
wrong answers with the message a learner should read.

The notebooks no longer run their solutions on Run All (issue 20): what their "Appendix: the
solutions, checked" ran moved here, each assert kept (:data:`AFTER`), and every solution block of
Parts 1 and 5 is run by :func:`test_every_solution_runs_and_holds_what_its_answer_says`.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from mnist_dissected import errors, exercises, exercises_part1, exercises_part5
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

NOTEBOOKS = {1: "1_mnist_load", 5: "5_mnist_visualize"}
#: Cells besides the imports that an exercise's solution needs (Part 5's reuses §5.13's fgsm).
SETUP = {1: (), 5: ("def fgsm(",)}
CHECKS = {
    1: {
        name: getattr(exercises_part1, f"check_{name}")
        for name in ("normalize", "shift_sample", "nearest_mean")
    },
    5: {
        name: getattr(exercises_part5, f"check_{name}")
        for name in ("top_k_accuracy", "precision_per_class", "iterative_fgsm")
    },
}
CASES = [(part, name) for part, names in CHECKS.items() for name in names]


def notebook(part: int) -> dict:
    return json.loads((ROOT / "notebooks" / f"{NOTEBOOKS[part]}.ipynb").read_text())


def the_exercise(part: int, name: str) -> edition.Exercise:
    return next(e for e in edition.exercises(notebook(part)) if e.name == name)


def solutions(part: int) -> dict[int, list[str]]:
    """Exercise number -> the code blocks of its solution cell (the number is the one in bold
    at the start of the task cell before it)."""
    cells, found = notebook(part)["cells"], {}
    for i, cell in enumerate(cells):
        if edition.SOLUTION in edition.tags(cell):
            task = next(
                edition.source(c)
                for c in reversed(cells[:i])
                if c["cell_type"] == "markdown" and edition.SOLUTION not in edition.tags(c)
            )
            number = int(re.match(r"\*\*(\d)\. ", task)[1])
            found[number] = edition.solution_blocks(edition.source(cell))
    return found


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
    namespace: dict = {}
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
    experiment of §1.9 and the raw files' folder (§1.A)."""
    return (
        "train_raw = load_mnist(",
        "data.train_validation_indices()",
        "mean_images = torch.stack(",
        "def loss_after_sgd(",
        "raw_dir = mnist_files.raw_folder",
    )


def part5_cells() -> tuple[str, ...]:
    """What Part 5's answers use: the trained model, the test set and its predictions, the
    confusion matrix, class_scores, and §5.13's attack."""
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


#: What each solution must hold after it runs: the asserts of the old appendix (Parts 1 and 5,
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
                cells = part1_cells() if part == 1 else part5_cells()
                built[part] = edition.notebook_namespace(notebook(part), cells)
            plt.close("all")
        return built[part]

    yield namespace
    torch.set_printoptions(profile="default")  # the notebooks' imports cells set their own


@pytest.mark.slow  # seconds of set-up: Part 1's SGD runs; Part 5's model, loaded or trained
@pytest.mark.parametrize("part", [1, 5])
def test_every_solution_runs_and_holds_what_its_answer_says(part, namespaces):
    found = solutions(part)
    assert sorted(found) == sorted(AFTER[part]) == list(range(1, len(found) + 1))
    namespace = namespaces(part)
    for number, blocks in found.items():
        assert blocks, f"exercise {number}: its solution has no code"
        printed = "".join(edition.run_code(block, namespace) for block in blocks)
        namespace["printed"] = printed
        edition.run_code(AFTER[part][number], namespace)
