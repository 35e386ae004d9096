"""The checks of Part 3's exercises (``notebooks/3_mnist_backprop.ipynb``, exercises 6 to 8).

Why this module exists: each exercise has you write a backward by hand; one call here runs it on
small fixed inputs and compares it with what autograd gives for the same forward (and, for the
custom ``Function``, with finite differences: ``check_gradient``), saying what differs
(:mod:`mnist_dissected.exercises`) and, for the typical mistakes (only the Jacobian's diagonal,
the gradient spread over the pooling window or overlapping windows' gradients not added up, the
chain rule's ``grad_output`` forgotten), what the mistake is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .exercises import check_gradient, check_tensor, exercise


@exercise("softmax_backward")
def check_softmax_backward(softmax_backward: Callable[..., torch.Tensor]) -> str:
    """Exercise 6: ``softmax_backward(s, grad_out)``, given s = softmax(z) over each row (N x K)
    and the upstream gradient (N x K), the gradient with respect to z: each row's
    ``grad_out @ J`` with J = diag(s) - s sᵀ (exercise 2), without forming J. Against autograd,
    for 4 rows of 5 classes and for one row of 10."""
    generator = torch.Generator().manual_seed(0)
    for n, k in ((4, 5), (1, 10)):
        z, grad_out = torch.randn(n, k, generator=generator), torch.randn(n, k, generator=generator)
        leaf = z.clone().requires_grad_()
        leaf.softmax(dim=1).backward(grad_out)
        s = z.softmax(dim=1)
        hints = {
            "That is only the diagonal of J, s * (1 - s) * grad_out: each score moves every "
            "probability of its row, subtract (grad_out · s) s": s * (1 - s) * grad_out,
            "That is grad_out * s alone: J = diag(s) - s sᵀ, so subtract "
            "(grad_out * s).sum(dim=1, keepdim=True) * s": s * grad_out,
            "That sums over the batch (dim=0): each row is one softmax, sum over dim=1": s
            * (grad_out - (grad_out * s).sum(dim=0, keepdim=True)),
        }
        name = f"softmax_backward(s, grad_out) for {n} row(s) of {k}"
        got = softmax_backward(s.clone(), grad_out.clone())
        check_tensor(got, leaf.grad, name=name, hints=hints)
    return "softmax_backward: autograd's gradient for 4 rows of 5 and 1 row of 10"


def _assigned(x: torch.Tensor, grad_out: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """The typical wrong max_pool_backward: each window's gradient written over the last
    window's where they overlap, not added to it."""
    grad_x = torch.zeros_like(x)
    for i in range(grad_out.shape[2]):
        for j in range(grad_out.shape[3]):
            rows, cols = slice(i * stride, i * stride + k), slice(j * stride, j * stride + k)
            window = x[:, :, rows, cols]
            is_max = window == window.amax(dim=(2, 3), keepdim=True)
            grad_x[:, :, rows, cols] = is_max * grad_out[:, :, i : i + 1, j : j + 1]
    return grad_x


@exercise("max_pool_backward")
def check_max_pool_backward(max_pool_backward: Callable[..., torch.Tensor]) -> str:
    """Exercise 7: ``max_pool_backward(x, grad_out, k, stride)``, the gradient with respect to
    x of ``F.max_pool2d(x, k, stride)``: each window's upstream gradient at its maximum, 0
    elsewhere, and where windows overlap (stride < k) a pixel that is the maximum of several
    gets the sum. A 5 x 5 image whose centre is the maximum of all four 3 x 3 windows first,
    then random batches (no ties), against autograd."""
    generator = torch.Generator().manual_seed(0)
    centre = torch.rand(1, 1, 5, 5, generator=generator)
    centre[0, 0, 2, 2] = 2.0
    cases = [
        (centre, torch.tensor([[[[1.0, 2], [3, 4]]]]), 3, 2),
        (torch.randn(2, 3, 6, 4, generator=generator), None, 2, 2),
        (torch.randn(1, 2, 7, 7, generator=generator), None, 3, 2),
    ]
    for x, grad_out, k, stride in cases:
        leaf = x.clone().requires_grad_()
        out = F.max_pool2d(leaf, k, stride)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=generator)
        out.backward(grad_out)
        spread = x.clone().requires_grad_()
        F.avg_pool2d(spread, k, stride).backward(grad_out)
        hints = {
            "That spreads each window's gradient evenly over its pixels (average pooling's "
            "backward): only the maximum changed the output, so only it gets the gradient": (
                spread.grad
            ),
            "That gives every pixel of the window the whole gradient: only the maximum gets it, "
            "the others get 0": spread.grad * k * k,
            "Where windows overlap, a later window's gradient replaced an earlier one's: a "
            "pixel that is the maximum of several windows gets the sum of their gradients "
            "(add with +=, do not assign)": _assigned(x, grad_out, k, stride),
        }
        name = f"max_pool_backward(x, grad_out, k={k}, stride={stride}) with x {tuple(x.shape)}"
        got = max_pool_backward(x.clone(), grad_out.clone(), k, stride)
        check_tensor(got, leaf.grad, name=name, hints=hints)
    return (
        "max_pool_backward: autograd's gradient for overlapping 3 x 3 windows (a pixel that "
        "wins four of them) and for 2 x 2 ones"
    )


@exercise("Multiply")
def check_Multiply(Multiply: type[torch.autograd.Function]) -> str:
    """Exercise 8: ``Multiply``, a ``torch.autograd.Function`` for x * y (same shapes). Its
    forward must give x * y; its backward, run with an upstream gradient that is not all ones,
    ``grad_output * y`` for x and ``grad_output * x`` for y (the chain rule); then
    ``check_gradient`` (gradcheck in float64) on each input."""
    generator = torch.Generator().manual_seed(0)
    x, y, g = (torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(3))

    def multiply(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return Multiply.apply(x, y)

    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = multiply(xs, ys)
    check_tensor(out, x * y, name="Multiply.apply(x, y)")
    out.backward(g)
    for label, grad, other, mine in (("x", xs.grad, y, x), ("y", ys.grad, x, y)):
        hints = {
            "That leaves out the chain rule's factor grad_output: multiply the local "
            f"derivative by it (grad_output * {'y' if label == 'x' else 'x'})": other,
            f"That is the gradient of the other input: d(x * y)/d{label} is the *other* "
            f"factor, so {label} gets grad_output * {'y' if label == 'x' else 'x'}": g * mine,
        }
        check_tensor(
            grad,
            g * other,
            name=f"{label}.grad after Multiply.apply(x, y).backward(grad_output)",
            hints=hints,
        )
    check_gradient(multiply, (x.requires_grad_(), y.requires_grad_()), name="Multiply.apply")
    return "Multiply: forward x * y, backward grad_output * y and grad_output * x, gradcheck passed"
