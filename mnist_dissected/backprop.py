"""Part 3's module: every operation of the MNIST ``Net`` by hand, backward next to forward.

Autograd hides how gradients are computed. This module writes them out so that the Part 3
notebook (``notebooks/3_mnist_backprop.ipynb``) can show each backward right beside its
forward, and check it against autograd (:func:`check_pair`). Part 2 uses the forwards to show
how a convolution and a pooling layer compute.
The style follows micrograd's ``engine.py``: short, plain functions, with no tricks.

Each operation is a pair of functions:

* ``*_forward(...)`` returns ``(out, cache)``. The cache holds what the backward needs.
* ``*_backward(grad_out, cache)`` returns the gradient of the loss with respect to each input.
  ``grad_out`` is the gradient of the loss with respect to ``out``.

``net_forward`` and ``net_backward`` chain the pairs in the same order as the classic Net:

    conv1 -> max_pool2d(2) -> relu -> conv2 -> dropout2d -> max_pool2d(2) -> relu -> flatten
    -> fc1 -> relu -> dropout -> fc2 -> log_softmax -> nll_loss (mean)

These functions are for teaching and checking. They are not for training (use autograd for that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import gradcheck
from torch.testing import assert_close

from .models import Net

Cache = Any  # whatever a forward saves for its backward

_NET = Net()  # the architecture the hand-written pass follows: names, shapes, dropout
PARAM_NAMES = tuple(name for name, _ in _NET.named_parameters())
DROPOUT_P = _NET.dropout  # both dropouts of the classic Net use this p


# --- linear: out = x @ W.T + b ------------------------------------------------------------


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Cache]:
    """Fully connected layer, as in ``nn.Linear``. x: (N, in), weight: (out, in), bias: (out,).
    Dissected in Part 3, §3.6."""
    out = x @ weight.T + bias
    return out, (x, weight)


def linear_backward(grad_out: Tensor, cache: Cache) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(grad_x, grad_weight, grad_bias)``.

    Every sample uses the same bias and the same weights, so their gradients are sums
    over the batch. The matrix product does that sum.
    """
    x, weight = cache
    grad_x = grad_out @ weight  # (N, out) @ (out, in) -> (N, in)
    grad_weight = grad_out.T @ x  # (out, N) @ (N, in) -> (out, in)
    grad_bias = grad_out.sum(dim=0)
    return grad_x, grad_weight, grad_bias


# --- relu: out = max(x, 0) ----------------------------------------------------------------


def relu_forward(x: Tensor) -> tuple[Tensor, Cache]:
    """ReLU. It keeps only which elements were positive, because that is all the backward needs."""
    positive = x > 0
    return x.clamp(min=0), positive


def relu_backward(grad_out: Tensor, cache: Cache) -> Tensor:
    """The gradient passes where the input was positive, and is 0 elsewhere (also at exactly 0,
    as in PyTorch)."""
    positive = cache
    return grad_out * positive


class ReLUFunction(torch.autograd.Function):
    """ReLU as a custom autograd Function: autograd calls our ``backward`` in place of its own.

    This is how to add a new operation to PyTorch. Write its forward and its backward, and
    save in ``ctx`` what the backward needs. Dissected in Part 3, §3.7.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad_out * (x > 0)


relu = ReLUFunction.apply
"""Use it like ``F.relu``: ``y = relu(x)``. It goes through ``ReLUFunction``."""


# --- max pooling, k x k windows, stride k ---------------------------------------------------


def maxpool2d_forward(x: Tensor, k: int = 2) -> tuple[Tensor, Cache]:
    """Max pooling as in ``F.max_pool2d(x, k)``. x: (N, C, H, W). Dissected in Part 2, §2.6
    (forward) and Part 3, §3.8 (backward).

    ``F.unfold`` (the same im2col as in the convolution) makes each k x k window into one
    column. Then it is a max over that column.
    """
    n, c, h, w = x.shape
    ho, wo = h // k, w // k
    cols = F.unfold(x.reshape(n * c, 1, h, w), kernel_size=k, stride=k)  # (N*C, k*k, Ho*Wo)
    # When several elements tie for the max, argmax picks the *first* in row-major window
    # order. PyTorch's max_pool2d picks the same one. Ties are common (a flat background, or a
    # channel that dropout2d zeroed), and the input gradient depends on which element is chosen.
    idx = cols.argmax(dim=1, keepdim=True)
    out = cols.gather(1, idx).reshape(n, c, ho, wo)
    return out, (idx, x.shape, k)


def maxpool2d_backward(grad_out: Tensor, cache: Cache) -> Tensor:
    """Send each window's gradient to its one max element. The other elements get 0."""
    idx, shape, k = cache
    n, c, h, w = shape
    grad_cols = grad_out.new_zeros(n * c, k * k, idx.shape[-1])
    grad_cols.scatter_(1, idx, grad_out.reshape(n * c, 1, -1))
    # fold is the reverse of unfold: it puts each column back in its window.
    grad_x = F.fold(grad_cols, output_size=(h, w), kernel_size=k, stride=k)
    return grad_x.reshape(shape)


# --- 2D convolution, stride 1, no padding (im2col) ------------------------------------------


def conv2d_forward(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Cache]:
    """Convolution as in ``F.conv2d(x, weight, bias)``. x: (N, C, H, W), weight: (O, C, kh, kw).
    Dissected in Part 2, §2.4 (forward) and Part 3, §3.8 (backward).

    im2col: ``F.unfold`` copies each (C, kh, kw) patch into one column. Then the convolution
    is one matrix product, the same as a linear layer applied to every patch.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    cols = F.unfold(x, kernel_size=(kh, kw))  # (N, C*kh*kw, L), L = Ho*Wo patches
    w_mat = weight.reshape(o, -1)  # (O, C*kh*kw)
    out = w_mat @ cols + bias.reshape(1, o, 1)  # (N, O, L)
    out = out.reshape(n, o, h - kh + 1, w - kw + 1)
    return out, (cols, weight, x.shape)


def conv2d_backward(grad_out: Tensor, cache: Cache) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(grad_x, grad_weight, grad_bias)``: the linear backward, applied to each patch.

    The patches overlap, so an input pixel gets gradient from every patch it is in.
    ``F.fold`` (col2im) adds those contributions up. Another way gives the same grad_x: a
    transposed convolution of grad_out with the same weights,
    ``F.conv_transpose2d(grad_out, weight)``, which is a "full" convolution with the kernel
    flipped.
    """
    cols, weight, x_shape = cache
    n, o = grad_out.shape[:2]
    g = grad_out.reshape(n, o, -1)  # (N, O, L)
    w_mat = weight.reshape(o, -1)
    grad_bias = g.sum(dim=(0, 2))
    grad_weight = (g @ cols.transpose(1, 2)).sum(dim=0).reshape(weight.shape)
    grad_cols = w_mat.T @ g  # (N, C*kh*kw, L)
    grad_x = F.fold(grad_cols, output_size=x_shape[2:], kernel_size=weight.shape[2:])
    return grad_x, grad_weight, grad_bias


# --- dropout with a given mask ---------------------------------------------------------------


def make_dropout_mask(
    shape: tuple[int, ...], p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Return a 0/1 mask that keeps each entry with probability ``1 - p``.

    The shape decides which kind of dropout you get. Use ``(N, features)`` for ``F.dropout``
    (one entry per element), and ``(N, C, 1, 1)`` for ``nn.Dropout2d``: each entry then covers a
    whole channel map by broadcasting, so a channel is dropped whole. With a fixed mask,
    the manual pass and autograd see the same randomness and can be compared.
    """
    return (torch.rand(shape, generator=generator) >= p).float()


def dropout_forward(x: Tensor, mask: Tensor, p: float) -> tuple[Tensor, Cache]:
    """Dropout with a given 0/1 mask. It scales by ``1/(1-p)`` so that the mean is unchanged
    (``p = 1`` drops everything: zeros, as in PyTorch, not 0/0)."""
    scale = mask / (1 - p) if p < 1 else torch.zeros_like(mask)
    return x * scale, scale


def dropout_backward(grad_out: Tensor, cache: Cache) -> Tensor:
    """Dropout multiplies by a constant, so the gradient is multiplied by that constant too."""
    scale = cache
    return grad_out * scale


# --- flatten ----------------------------------------------------------------------------------


def flatten_forward(x: Tensor) -> tuple[Tensor, Cache]:
    """Flatten (N, C, H, W) to (N, C*H*W), as ``x.view(-1, 320)`` does in the Net."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(grad_out: Tensor, cache: Cache) -> Tensor:
    """Flatten only moves numbers around, so the backward moves the gradient back to its place."""
    return grad_out.reshape(cache)


# --- log_softmax + nll_loss (mean) ------------------------------------------------------------


def log_softmax_nll_forward(logits: Tensor, target: Tensor) -> tuple[Tensor, Cache]:
    """Mean ``F.nll_loss(F.log_softmax(logits, 1), target)``. Also returns the log-probabilities.

    The two are done together because their joint gradient is short (see the backward).
    Subtracting the logsumexp (not dividing by a sum of exps) keeps the numbers from
    overflowing.
    """
    log_probs = logits - logits.logsumexp(dim=1, keepdim=True)
    n = logits.shape[0]
    loss = -log_probs[torch.arange(n), target].mean()
    return loss, (log_probs, target)


def log_softmax_nll_backward(grad_out: Tensor | float, cache: Cache) -> Tensor:
    """Gradient w.r.t. the logits: ``(softmax - onehot(target)) / N``, times ``grad_out``.

    Push up the logit of the right class, push down the others in proportion to their
    probability, and divide by N because the loss is a mean.
    """
    log_probs, target = cache
    n = log_probs.shape[0]
    onehot = F.one_hot(target, num_classes=log_probs.shape[1]).to(log_probs.dtype)
    return (log_probs.exp() - onehot) / n * grad_out


# --- the whole Net ----------------------------------------------------------------------------


def make_net_masks(
    batch_size: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Fixed dropout masks for one Net pass: ``(conv2_drop (N,20,1,1), fc1 dropout (N,50))``,
    their sizes read from ``Net``'s layers."""
    return (
        make_dropout_mask((batch_size, _NET.conv2.out_channels, 1, 1), DROPOUT_P, generator),
        make_dropout_mask((batch_size, _NET.fc1.out_features), DROPOUT_P, generator),
    )


def net_with_masks(
    net: Net, x: Tensor, masks: tuple[Tensor, Tensor], *, p: float = DROPOUT_P
) -> Tensor:
    """``Net.forward`` in training mode through autograd, with the dropout masks given instead
    of drawn: the reference :func:`net_backward` is checked against. Dissected in Part 3, §3.I.
    """
    x = F.relu(F.max_pool2d(net.conv1(x), 2))
    x = F.relu(F.max_pool2d(net.conv2(x) * masks[0] / (1 - p), 2))  # conv2_drop (Dropout2d)
    x = F.relu(net.fc1(torch.flatten(x, 1)))
    x = net.fc2(x * masks[1] / (1 - p))  # F.dropout
    return F.log_softmax(x, dim=1)


def net_forward(
    params: Mapping[str, Tensor],
    x: Tensor,
    target: Tensor,
    *,
    masks: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, dict[str, Cache]]:
    """Run the Net by hand. Returns ``(log_probs, loss, caches)``. Dissected in Part 2, §2.11
    (the forward) and Part 3, §3.10.

    ``params`` holds the Net's parameters, with the names from ``net.named_parameters()``.
    ``masks`` is ``(conv2_drop_mask, fc1_drop_mask)`` in training mode, or ``None`` for
    eval mode (no dropout).
    """
    p, c = params, {}
    h, c["conv1"] = conv2d_forward(x, p["conv1.weight"], p["conv1.bias"])  # (N,10,24,24)
    h, c["pool1"] = maxpool2d_forward(h, 2)  # (N,10,12,12)
    h, c["relu1"] = relu_forward(h)
    h, c["conv2"] = conv2d_forward(h, p["conv2.weight"], p["conv2.bias"])  # (N,20,8,8)
    if masks is not None:
        h, c["drop2d"] = dropout_forward(h, masks[0], DROPOUT_P)
    h, c["pool2"] = maxpool2d_forward(h, 2)  # (N,20,4,4)
    h, c["relu2"] = relu_forward(h)
    h, c["flatten"] = flatten_forward(h)  # (N,320)
    h, c["fc1"] = linear_forward(h, p["fc1.weight"], p["fc1.bias"])  # (N,50)
    h, c["relu3"] = relu_forward(h)
    if masks is not None:
        h, c["drop"] = dropout_forward(h, masks[1], DROPOUT_P)
    h, c["fc2"] = linear_forward(h, p["fc2.weight"], p["fc2.bias"])  # (N,10)
    loss, c["loss"] = log_softmax_nll_forward(h, target)
    log_probs = c["loss"][0]
    return log_probs, loss, c


def net_backward(caches: Mapping[str, Cache]) -> dict[str, Tensor]:
    """Go back through the Net in reverse order and return the gradient of every parameter.

    This is the chain rule, one step per layer: each backward turns the gradient of its
    output into the gradient of its input.
    """
    c, grads = caches, {}
    g = log_softmax_nll_backward(1.0, c["loss"])  # d loss / d loss = 1
    g, grads["fc2.weight"], grads["fc2.bias"] = linear_backward(g, c["fc2"])
    if "drop" in c:
        g = dropout_backward(g, c["drop"])
    g = relu_backward(g, c["relu3"])
    g, grads["fc1.weight"], grads["fc1.bias"] = linear_backward(g, c["fc1"])
    g = flatten_backward(g, c["flatten"])
    g = relu_backward(g, c["relu2"])
    g = maxpool2d_backward(g, c["pool2"])
    if "drop2d" in c:
        g = dropout_backward(g, c["drop2d"])
    g, grads["conv2.weight"], grads["conv2.bias"] = conv2d_backward(g, c["conv2"])
    g = relu_backward(g, c["relu1"])
    g = maxpool2d_backward(g, c["pool1"])
    _, grads["conv1.weight"], grads["conv1.bias"] = conv2d_backward(g, c["conv1"])
    return {name: grads[name] for name in PARAM_NAMES}


@torch.no_grad()
def net_manual_gradients(
    net: nn.Module | Mapping[str, Tensor],
    x: Tensor,
    target: Tensor,
    *,
    masks: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Compute the loss and all eight parameter gradients without autograd.

    Give a Net (its parameters are read) or a dict of parameters. The result can be compared
    with ``loss.backward()`` and ``param.grad``.
    """
    params = dict(net.named_parameters()) if isinstance(net, nn.Module) else dict(net)
    params = {name: t.detach() for name, t in params.items()}
    _, loss, caches = net_forward(params, x, target, masks=masks)
    return loss, net_backward(caches)


# --- a hand-written pair inside autograd (for checking with gradcheck) -----------------------


class PairFunction(torch.autograd.Function):
    """Run a forward/backward pair of this module inside autograd.

    ``PairFunction.apply(forward, backward, *inputs)`` calls ``forward(*inputs)``; on the way
    back, autograd calls our ``backward`` in place of its own. ``torch.autograd.gradcheck`` can
    then test the hand-written backward against finite differences. The inputs after the
    ones ``backward`` returns gradients for (a target, a mask, a kernel size) get ``None``.
    """

    @staticmethod
    def forward(ctx: Any, forward: Callable, backward: Callable, *inputs: Any) -> Tensor:
        out, ctx.cache = forward(*inputs)
        ctx.backward_fn, ctx.n_inputs = backward, len(inputs)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads = ctx.backward_fn(grad_out, ctx.cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        no_grads = (None,) * (ctx.n_inputs - len(grads))
        return (None, None, *grads, *no_grads)  # None for forward and backward themselves


def as_autograd(forward: Callable, backward: Callable) -> Callable[..., Tensor]:
    """One function that autograd differentiates with ``backward``: ``f(*inputs) -> out``.
    Dissected in Part 3, §3.F."""
    return lambda *inputs: PairFunction.apply(forward, backward, *inputs)


def check_pair(
    forward: Callable, backward: Callable, reference: Callable, *inputs: Any, **tolerance: Any
) -> str:
    """Check a hand-written pair three ways: its output against PyTorch's ``reference``, its
    gradients against autograd's, and (in float64) against finite differences with
    ``gradcheck``. Dissected in Part 3, §3.F.

    The first inputs get gradients, as many as ``backward`` returns; the rest (a target, a
    mask, a kernel size) are passed along unchanged.
    """
    out, cache = forward(*inputs)
    assert_close(out, reference(*inputs), **tolerance)
    grad_out = torch.randn_like(out)
    grads = backward(grad_out, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    n = len(grads)
    leaves = [t.detach().clone().requires_grad_() for t in inputs[:n]]
    reference(*leaves, *inputs[n:]).backward(grad_out)
    for mine, leaf in zip(grads, leaves, strict=True):
        assert_close(mine, leaf.grad, **tolerance)
    pair = as_autograd(forward, backward)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs[:n]]
    rest = [t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs[n:]]
    assert gradcheck(lambda *diff: pair(*diff, *rest), inputs64)
    return "output ok, gradients ok, gradcheck ok"


# --- finite differences (for checking only) ---------------------------------------------------


@torch.no_grad()
def numerical_gradient(
    f: Callable[[], Tensor], tensor: Tensor, index: tuple[int, ...], eps: float = 1e-3
) -> float:
    """Estimate d f / d tensor[index] with a central difference: (f(t+eps) - f(t-eps)) / 2eps.

    Dissected in Part 3, §3.11. ``f`` takes no arguments and returns a scalar that depends on
    ``tensor``. This changes
    ``tensor`` in place for a moment and then puts the old value back. It needs two
    forward passes per element, which is far too slow for training, but it is a check that
    does not depend on any backward code. Use float64, because in float32 the rounding error
    is too large.
    """
    old = tensor[index].item()
    tensor[index] = old + eps
    f_plus = float(f())
    tensor[index] = old - eps
    f_minus = float(f())
    tensor[index] = old
    return (f_plus - f_minus) / (2 * eps)
