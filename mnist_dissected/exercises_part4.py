"""The checks of Part 4's exercises (``notebooks/4_mnist_train.ipynb``, exercises 6 to 8).

Why this module exists: each exercise has you write one function; one call here runs it on fixed
inputs and compares it with the reference, saying what differs (:mod:`mnist_dissected.exercises`).
The references are the package's own: ``train_epoch`` for the training loop (§4.1) and
``evaluate`` for the scoring one (§4.2), both on a small seeded ``Net`` and a few validation
digits, and ``torch.optim.Adam`` for Adam's step by hand. Nothing is trained beyond 20 steps on
64 digits: the checks take seconds at most.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .data import load_mnist, normalize_images, train_validation_indices
from .exercises import ExerciseFailed, check_like, check_number, check_tensor, describe, exercise
from .models import Net
from .train import evaluate, train_epoch

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@functools.cache
def _validation_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` validation digits (§4.4), normalized, and their labels."""
    split = load_mnist(train=True)
    indices = train_validation_indices(len(split.targets))[1][:n]
    return normalize_images(split.data[indices]), split.targets[indices]


def _cut(images: torch.Tensor, labels: torch.Tensor, sizes: tuple[int, ...]) -> Batches:
    """``images`` and ``labels`` cut into batches of ``sizes``, in order."""
    return list(zip(images.split(sizes), labels.split(sizes), strict=True))


@functools.cache
def _seeded_net(steps: int = 0) -> dict[str, torch.Tensor]:
    """The weights of a ``Net`` (dropout 0.5) seeded with 0 and trained for ``steps`` Adam
    steps on 64 validation digits (0: untrained), so that its scores are neither all 10% nor
    all alike."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Net()
        if steps:
            images, labels = _validation_digits(64)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
            train_epoch(model, [(images, labels)] * steps, optimizer, progress=False)
    return copy.deepcopy(model.state_dict())


def _net(steps: int = 0, *, training: bool) -> Net:
    model = Net()
    model.load_state_dict(_seeded_net(steps))
    return model.train(training)


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _number(value: Any, name: str) -> float:
    """``value`` (a Python number or a one-element tensor) as a float, or a failure."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExerciseFailed(f"{name} should be a number, not {describe(value)}")
    return float(value)


def _loop(
    batches: Batches,
    *,
    zero_grad: bool = True,
    train_mode: bool = True,
    step: bool = True,
) -> tuple[list[float], torch.Tensor]:
    """§4.1's loop from the model handed to the reader (eval mode) and a fresh optimizer, with
    the global generator seeded with 0 (dropout). With every flag left on it is ``train_epoch``;
    each flag off is a typical mistake, for the hints. Returns the step losses and the weights."""
    model = _net(training=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    torch.manual_seed(0)
    if zero_grad and train_mode and step:
        return train_epoch(model, batches, optimizer, progress=False), _weights(model)
    model.train(train_mode)
    losses = []
    for data, target in batches:
        if zero_grad:
            optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        if step:
            optimizer.step()
        losses.append(loss.item())
    return losses, _weights(model)


@exercise("train_one_epoch")
def check_train_one_epoch(train_one_epoch: Callable[..., Any]) -> str:
    """Exercise 6: ``train_one_epoch(model, batches, optimizer)``, §4.1's six lines in a loop,
    returning every step's loss as a Python number. Run on a seeded ``Net`` (dropout on) that
    arrives in eval mode, as ``evaluate`` leaves it, with the example's SGD, on three batches of
    16 validation digits; the step losses and the weights after the last step must be
    ``train_epoch``'s (the same dropout draws: the generator is seeded alike for both)."""
    images, labels = _validation_digits(48)
    batches = _cut(images, labels, (16, 16, 16))
    model = _net(training=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    name = "train_one_epoch(model, batches, optimizer)"
    torch.manual_seed(0)
    try:
        got = train_one_epoch(model, list(batches), optimizer)
    except AttributeError as error:
        if "backward" not in str(error):
            raise
        raise ExerciseFailed(
            f"{name} called backward() on a Python number: loss.item() has no graph behind it. "
            "Call loss.backward() on the tensor, and .item() only to record the loss"
        ) from None
    if not isinstance(got, (list, tuple)):
        raise ExerciseFailed(
            f"{name} should return a list of the {len(batches)} step losses, not {describe(got)}"
        )
    if len(got) != len(batches):
        raise ExerciseFailed(
            f"{name} returned {len(got)} losses for {len(batches)} batches: one per step"
        )
    for k, loss in enumerate(got):
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            raise ExerciseFailed(
                f"{name} keeps step {k}'s loss as a tensor that requires grad: it holds that "
                "step's whole graph alive. Record loss.item(), a Python number"
            )
    losses = torch.tensor([_number(loss, f"step {k}'s loss") for k, loss in enumerate(got)])
    expected, weights = _loop(batches)
    hints = {
        "The gradients accumulated: without optimizer.zero_grad() each step adds its "
        "gradient to all the earlier ones (§4.1)": _loop(batches, zero_grad=False),
        "Dropout was off: the model came in eval mode (as evaluate leaves it), so call "
        "model.train() first": _loop(batches, train_mode=False),
        "The weights never moved: call optimizer.step() after loss.backward(), and "
        "zero_grad() before the backward pass, never between it and step (exercise 1)": _loop(
            batches, step=False
        ),
    }
    check_tensor(
        losses,
        torch.tensor(expected),
        name=f"the list of step losses from {name}",
        hints={text: torch.tensor(wrong[0]) for text, wrong in hints.items()},
    )
    check_tensor(
        _weights(model),
        weights,
        name=f"the vector of all weights after {name}",
        hints={text: wrong[1] for text, wrong in hints.items()},
    )
    return (
        "train_one_epoch: train_epoch's 3 step losses and weights, from a Net handed over in "
        "eval mode"
    )


def _scores_by_batch(model: torch.nn.Module, batches: Batches) -> tuple[float, float]:
    """The mean over batches of each batch's mean loss and of its accuracy, in eval mode: the
    typical mistake when the batches differ in size."""
    with torch.no_grad():
        model.eval()
        outputs = [(model(x), y) for x, y in batches]
    losses = [F.nll_loss(out, y).item() for out, y in outputs]
    accuracies = [(out.argmax(dim=1) == y).double().mean().item() for out, y in outputs]
    return sum(losses) / len(losses), sum(accuracies) / len(accuracies)


WHAT = ("mean loss", "accuracy")


@exercise("evaluate_by_hand")
def check_evaluate_by_hand(evaluate_by_hand: Callable[..., Any]) -> str:
    """Exercise 7: ``evaluate_by_hand(model, batches)``, the mean loss per image and the
    accuracy over every image of ``batches``, with dropout off and no graph (§4.2). Run on a
    ``Net`` trained for a few steps and handed over in training mode (as ``train_epoch`` leaves
    it), on batches of 16, 16 and 5 validation digits (a short last batch, as usual), twice
    with different random seeds: the two scores must agree and be ``evaluate``'s, and autograd
    must have kept no tensor for a backward pass."""
    images, labels = _validation_digits(64 + 37)
    batches = _cut(images[64:], labels[64:], (16, 16, 5))
    n = sum(len(y) for _, y in batches)
    name = "evaluate_by_hand(model, batches)"
    scores, kept = [], []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor)
        return tensor

    for seed in (0, 1):
        model = _net(20, training=True)
        torch.manual_seed(seed)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            got = evaluate_by_hand(model, list(batches))
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseFailed(
                f"{name} should return a pair (mean loss, accuracy), not {describe(got)}"
            )
        scores.append(
            [_number(v, f"the {what} of {name}") for v, what in zip(got, WHAT, strict=True)]
        )
    if scores[0] != scores[1]:
        raise ExerciseFailed(
            f"two calls of {name} on the same model and digits gave the mean losses "
            f"{scores[0][0]:.4f} and {scores[1][0]:.4f}: dropout is still on (the model came "
            "in training mode, as train_epoch leaves it); call model.eval() first"
        )
    loss, accuracy = scores[0]
    expected_loss, expected_accuracy = evaluate(_net(20, training=True), batches)
    by_batch_loss, by_batch_accuracy = _scores_by_batch(_net(20, training=True), batches)
    short = f"the last batch holds {len(batches[-1][1])} digits, the others {len(batches[0][1])}"
    wrong_loss = {
        f"That is the mean of the batches' mean losses, but {short}: add up each batch's "
        'summed loss (reduction="sum") and divide once by the number of digits': by_batch_loss,
        f"That is the summed loss of all {n} digits: divide by their number": expected_loss * n,
    }
    wrong_accuracy = {
        f"That is the mean of the batches' accuracies, but {short}: count the right answers "
        "of every batch and divide once by the number of digits": by_batch_accuracy,
        f"A count, not a share: divide by the number of digits ({n})": expected_accuracy * n,
    }
    for what, got, expected, hints in (
        ("mean loss", loss, expected_loss, wrong_loss),
        ("accuracy", accuracy, expected_accuracy, wrong_accuracy),
    ):
        check_number(got, expected, name=f"the {what} of {name}", rel_tol=1e-5, hints=hints)
    if kept:
        raise ExerciseFailed(
            f"{name} gives the right numbers, but autograd kept {len(kept)} tensors for a "
            "backward pass that never comes: score under torch.no_grad() (§4.2)"
        )
    return (
        f"evaluate_by_hand: evaluate's mean loss and accuracy over batches of 16, 16 and 5 "
        f"digits, dropout off, no graph ({accuracy:.0%} right after 20 steps of training)"
    )


def _adam_run(
    theta: torch.Tensor,
    grads: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    bias_correction: bool = True,
    eps_inside: bool = False,
    weights_swapped: bool = False,
    climb: bool = False,
    corrected_state: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Adam by hand, step by step over ``grads``: ``(theta, m, v)`` after each step. Every
    flag is a typical mistake, for the hints: no bias correction, ε inside the root, the
    averages' weights swapped, a step up the gradient, the corrected m̂ and v̂ kept as the state."""
    (beta1, beta2), m, v, out = betas, torch.zeros_like(theta), torch.zeros_like(theta), []
    for t, g in enumerate(grads, start=1):
        if weights_swapped:
            m, v = (1 - beta1) * m + beta1 * g, (1 - beta2) * v + beta2 * g**2
        else:
            m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g**2
        m_hat, v_hat = (m / (1 - beta1**t), v / (1 - beta2**t)) if bias_correction else (m, v)
        root = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
        theta = theta + (1 if climb else -1) * lr * m_hat / root
        if corrected_state:
            m, v = m_hat, v_hat
        out.append((theta, m, v))
    return out


def _torch_adam(
    theta: torch.Tensor, grads: torch.Tensor, **hyper: Any
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``torch.optim.Adam`` given the gradients ``grads``: ``(theta, m, v)`` after each step."""
    w = theta.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], **hyper)
    out = []
    for g in grads:
        w.grad = g.clone()
        optimizer.step()
        state = optimizer.state[w]
        out.append(tuple(x.detach().clone() for x in (w, state["exp_avg"], state["exp_avg_sq"])))
    return out


#: The hyperparameters exercise 8 is checked with: PyTorch's defaults, then others.
ADAM_SETTINGS = (
    {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8},
    {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
)


@exercise("adam_step")
def check_adam_step(adam_step: Callable[..., Any]) -> str:
    """Exercise 8: ``adam_step(theta, grad, m, v, t, *, lr, betas, eps)``, one step of Adam
    returning the new ``(theta, m, v)``. Five steps from fixed float64 gradients of sizes 1 to
    10⁻⁶ (where ε shows), with PyTorch's default hyperparameters and then with others (a
    function that ignores them fails), each step against ``torch.optim.Adam``."""
    theta0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 0.1, 1e-3, 1e-6], dtype=torch.float64)
    grads = torch.randn(5, 4, generator=generator, dtype=torch.float64) * scale
    for hyper in ADAM_SETTINGS:
        expected = _torch_adam(theta0, grads, **hyper)
        hints: dict[str, list] = {
            "That leaves out the bias correction: m and v start at 0, so divide them by "
            "1 - β₁ᵗ and 1 - β₂ᵗ before the step": _adam_run(
                theta0, grads, **hyper, bias_correction=False
            ),
            "That puts ε inside the square root: Adam adds it to √v̂": _adam_run(
                theta0, grads, **hyper, eps_inside=True
            ),
            "The running averages' weights are swapped: m ← β₁ m + (1 - β₁) g keeps most of "
            "the old m": _adam_run(theta0, grads, **hyper, weights_swapped=True),
            "That climbs the loss: theta moves against the gradient, θ - lr m̂ / (√v̂ + ε)": (
                _adam_run(theta0, grads, **hyper, climb=True)
            ),
            "That keeps the corrected m̂ and v̂ as the running averages: return m and v, and "
            "correct them afresh at each step": _adam_run(
                theta0, grads, **hyper, corrected_state=True
            ),
        }
        if hyper != ADAM_SETTINGS[0]:
            hints[
                "That is Adam with PyTorch's default lr, betas and eps: use the ones passed in"
            ] = _torch_adam(theta0, grads, **ADAM_SETTINGS[0])
        call = ", ".join(f"{key}={value}" for key, value in hyper.items())
        theta, m, v = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
        for t, g in enumerate(grads, start=1):
            got = adam_step(theta.clone(), g.clone(), m.clone(), v.clone(), t, **hyper)
            name = f"adam_step(theta, grad, m, v, t={t}, {call})"
            if not isinstance(got, (tuple, list)) or len(got) != 3:
                raise ExerciseFailed(
                    f"{name} should return the triple (theta, m, v), not {describe(got)}"
                )
            for label, value in zip(("theta", "m", "v"), got, strict=True):
                check_like(value, theta0, name=f"the {label} of {name}")
            for k, label in enumerate(("theta", "m", "v")):
                check_tensor(
                    got[k],
                    expected[t - 1][k],
                    name=f"the {label} of {name}",
                    rtol=1e-6,
                    atol=0.0,
                    hints={text: run[t - 1][k] for text, run in hints.items()},
                )
            theta, m, v = (x.detach() for x in got)
    return (
        "adam_step: torch.optim.Adam's theta, m and v over 5 steps, with the default "
        "hyperparameters and with others"
    )
