"""Check the hand-written layers in mnist_dissected.backprop against PyTorch and autograd."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck
from torch.testing import assert_close

from mnist_dissected import backprop
from mnist_dissected.models import Net


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def autograd_grads(fn: Any, *inputs: Tensor, grad_out: Tensor | None = None) -> list[Tensor]:
    """Gradients of ``(fn(*inputs) * grad_out).sum()`` w.r.t. inputs, computed by autograd."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    out.backward(torch.ones_like(out) if grad_out is None else grad_out)
    return [t.grad for t in leaves if t.requires_grad]


def f64(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_as_autograd_uses_our_backward() -> None:
    # The pair's backward is what autograd runs: a wrong one gives wrong gradients, and
    # gradcheck notices. So the gradchecks below test backprop.py, not PyTorch.
    def wrong_backward(grad_out: Tensor, cache: Any) -> Tensor:
        return grad_out  # forgets the mask

    x = f64(3, 4)
    relu_ok = backprop.as_autograd(backprop.relu_forward, backprop.relu_backward)
    relu_bad = backprop.as_autograd(backprop.relu_forward, wrong_backward)
    assert_close(relu_ok(x), F.relu(x))
    relu_bad(x).sum().backward()
    assert_close(x.grad, torch.ones_like(x))
    assert gradcheck(relu_ok, (x,))
    assert not gradcheck(relu_bad, (x,), raise_exception=False)


# --- linear -----------------------------------------------------------------------------


def test_linear_matches_torch() -> None:
    x, w, b = torch.randn(4, 6), torch.randn(3, 6), torch.randn(3)
    out, cache = backprop.linear_forward(x, w, b)
    assert_close(out, F.linear(x, w, b))
    g = torch.randn_like(out)
    refs = autograd_grads(F.linear, x, w, b, grad_out=g)
    for mine, ref in zip(backprop.linear_backward(g, cache), refs, strict=True):
        assert_close(mine, ref)


def test_linear_gradcheck() -> None:
    linear = backprop.as_autograd(backprop.linear_forward, backprop.linear_backward)
    assert gradcheck(linear, (f64(3, 4), f64(2, 4), f64(2)))


# --- relu -------------------------------------------------------------------------------


def test_relu_matches_torch() -> None:
    x = torch.randn(5, 7)
    x[0, :3] = 0.0  # at exactly 0 PyTorch's gradient is 0
    out, cache = backprop.relu_forward(x)
    assert_close(out, F.relu(x))
    g = torch.randn_like(x)
    ref = autograd_grads(F.relu, x, grad_out=g)[0]
    assert_close(backprop.relu_backward(g, cache), ref)
    assert_close(backprop.relu(x), F.relu(x))
    assert_close(autograd_grads(backprop.relu, x, grad_out=g)[0], ref)


def test_relu_gradcheck() -> None:
    x = f64(4, 5)
    assert gradcheck(backprop.ReLUFunction.apply, (x,))
    assert gradcheck(backprop.as_autograd(backprop.relu_forward, backprop.relu_backward), (x,))


# --- max pooling ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 2, 7, 9)])  # odd sizes: floor, like PyTorch
def test_maxpool_matches_torch(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    out, cache = backprop.maxpool2d_forward(x, 2)
    assert_close(out, F.max_pool2d(x, 2))
    g = torch.randn_like(out)
    ref = autograd_grads(lambda t: F.max_pool2d(t, 2), x, grad_out=g)[0]
    assert_close(backprop.maxpool2d_backward(g, cache), ref)


def test_maxpool_ties_like_pytorch() -> None:
    # Small integers give many ties, and an all-zero channel (as dropout2d makes) is all ties.
    # PyTorch gives the whole gradient to the first max of each window.
    x = torch.randint(0, 3, (2, 3, 8, 8)).float()
    x[0, 1] = 0.0
    out, cache = backprop.maxpool2d_forward(x, 2)
    g = torch.randn_like(out)
    ref = autograd_grads(lambda t: F.max_pool2d(t, 2), x, grad_out=g)[0]
    mine = backprop.maxpool2d_backward(g, cache)
    assert_close(mine, ref)
    assert (mine[0, 1].reshape(4, 2, 4, 2)[:, 1, :, :] == 0).all()  # bottom row of windows
    assert_close(mine[0, 1, ::2, ::2], g[0, 1])  # all to the top-left element


def test_maxpool_gradcheck() -> None:
    x = f64(2, 2, 6, 6)  # random values: no ties, so the gradient is well defined
    pool = backprop.as_autograd(backprop.maxpool2d_forward, backprop.maxpool2d_backward)
    assert gradcheck(lambda t: pool(t, 2), (x,))


# --- convolution ------------------------------------------------------------------------


def test_conv2d_matches_torch() -> None:
    x, w, b = torch.randn(3, 4, 10, 9), torch.randn(5, 4, 5, 5), torch.randn(5)
    out, cache = backprop.conv2d_forward(x, w, b)
    assert_close(out, F.conv2d(x, w, b), rtol=1e-4, atol=1e-4)
    g = torch.randn_like(out)
    refs = autograd_grads(F.conv2d, x, w, b, grad_out=g)
    for mine, ref in zip(backprop.conv2d_backward(g, cache), refs, strict=True):
        assert_close(mine, ref, rtol=1e-4, atol=1e-4)
    # the other way to get grad_x, described in the docstring
    assert_close(F.conv_transpose2d(g, w), refs[0], rtol=1e-4, atol=1e-4)


def test_conv2d_gradcheck() -> None:
    conv = backprop.as_autograd(backprop.conv2d_forward, backprop.conv2d_backward)
    assert gradcheck(conv, (f64(2, 2, 6, 5), f64(3, 2, 3, 3), f64(3)))


# --- dropout, flatten ---------------------------------------------------------------------


@pytest.mark.parametrize("mask_shape", [(4, 6, 1, 1), (4, 6, 3, 3)])  # Dropout2d vs element
def test_dropout_matches_masked_multiply(mask_shape: tuple[int, ...]) -> None:
    p = 0.5
    x, mask = torch.randn(4, 6, 3, 3), backprop.make_dropout_mask(mask_shape, p)
    assert 0 < mask.sum() < mask.numel() and set(mask.unique().tolist()) <= {0.0, 1.0}
    out, cache = backprop.dropout_forward(x, mask, p)
    assert_close(out, x * mask * 2)
    if mask_shape[-1] == 1:  # a Dropout2d mask drops whole channels
        dropped = mask.reshape(4, 6) == 0
        assert (out[dropped] == 0).all() and (out[~dropped] != 0).all()
    g = torch.randn_like(out)
    ref = autograd_grads(lambda t: t * mask / (1 - p), x, grad_out=g)[0]
    assert_close(backprop.dropout_backward(g, cache), ref)
    dropout = backprop.as_autograd(backprop.dropout_forward, backprop.dropout_backward)
    assert gradcheck(lambda t: dropout(t, mask.double(), p), (f64(4, 6, 3, 3),))


def test_flatten_round_trip() -> None:
    x = torch.randn(2, 20, 4, 4)
    out, cache = backprop.flatten_forward(x)
    assert_close(out, x.view(-1, 320))
    assert_close(backprop.flatten_backward(out, cache), x)


# --- log_softmax + nll_loss ---------------------------------------------------------------


def test_log_softmax_nll_matches_torch() -> None:
    logits, target = torch.randn(6, 10) * 3, torch.randint(0, 10, (6,))
    loss, cache = backprop.log_softmax_nll_forward(logits, target)
    assert_close(cache[0], F.log_softmax(logits, dim=1))
    assert_close(loss, F.nll_loss(F.log_softmax(logits, dim=1), target))
    ref = autograd_grads(lambda z: F.nll_loss(F.log_softmax(z, dim=1), target), logits)[0]
    assert_close(backprop.log_softmax_nll_backward(1.0, cache), ref)
    assert_close(backprop.log_softmax_nll_backward(torch.tensor(2.5), cache), 2.5 * ref)


def test_log_softmax_nll_gradcheck() -> None:
    target = torch.randint(0, 5, (4,))
    fwd, bwd = backprop.log_softmax_nll_forward, backprop.log_softmax_nll_backward
    assert gradcheck(lambda z: backprop.as_autograd(fwd, bwd)(z, target), (f64(4, 5),))


# --- the whole Net ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "fixed_masks", "digit_like"])
def test_net_gradients_match_autograd(mode: str) -> None:
    net = Net()
    x, target = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def forward(images: Tensor) -> Tensor:
        return net(images) if masks is None else backprop.net_with_masks(net, images, masks)

    if mode == "digit_like":  # flat background, as in normalized MNIST: max-pool ties in conv1
        x[:, :, :8], x[:, :, -8:], x[..., :8], x[..., -8:] = -0.4242, -0.4242, -0.4242, -0.4242
    masks = None if mode == "eval" else backprop.make_net_masks(8)
    if masks is None:
        net.eval()

    loss_ref = F.nll_loss(forward(x), target)
    loss_ref.backward()
    loss, grads = backprop.net_manual_gradients(net, x, target, masks=masks)

    assert_close(loss, loss_ref.detach())
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for name, param in net.named_parameters():
        assert grads[name].shape == param.shape
        assert grads[name].abs().sum() > 0, name
        assert_close(
            grads[name], param.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )

    params = {k: v.detach() for k, v in net.named_parameters()}
    log_probs, _, _ = backprop.net_forward(params, x, target, masks=masks)
    assert_close(log_probs, forward(x).detach(), rtol=1e-4, atol=1e-5)


# --- finite differences ---------------------------------------------------------------------


def test_numerical_gradient_matches_autograd() -> None:
    net = Net().double().eval()
    x, target = torch.randn(4, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (4,))
    F.nll_loss(net(x), target).backward()
    weight = net.fc1.weight
    index = (3, 17)
    before = weight.detach().clone()
    num = backprop.numerical_gradient(lambda: F.nll_loss(net(x), target), weight, index, eps=1e-6)
    assert_close(torch.tensor(num, dtype=torch.float64), weight.grad[index], rtol=1e-5, atol=1e-8)
    assert torch.equal(weight.detach(), before)  # the weight is put back
    assert weight.grad[index].abs() > 1e-6  # a zero gradient would make this test weak


def test_dropout_with_p_1_gives_zeros_like_pytorch():
    x = torch.randn(3, 4)
    out, cache = backprop.dropout_forward(x, torch.zeros_like(x), p=1.0)
    assert torch.equal(out, F.dropout(x, p=1.0, training=True))
    assert torch.equal(backprop.dropout_backward(torch.ones_like(x), cache), torch.zeros_like(x))


def test_net_with_masks_all_kept_is_eval_forward():
    net = Net().eval()
    x = torch.randn(4, 1, 28, 28)
    ones = (torch.ones(4, 20, 1, 1), torch.ones(4, 50))
    assert_close(backprop.net_with_masks(net, x, ones, p=0.0), net(x))


def test_param_names_and_mask_shapes_follow_net():
    """Written out from pytorch/examples' mnist Net (conv1 1->10, conv2 10->20 then Dropout2d,
    fc1 320->50 then dropout, fc2 50->10), not read off ``Net()``: a Net or a backprop.py that
    drifted from the example fails here."""
    assert list(backprop.PARAM_NAMES) == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    conv2_mask, fc1_mask = backprop.make_net_masks(3)
    assert conv2_mask.shape == (3, 20, 1, 1)  # Dropout2d: one value per image and channel
    assert fc1_mask.shape == (3, 50)
    assert backprop.DROPOUT_P == 0.5


def test_check_pair_catches_a_wrong_backward():
    def wrong_backward(grad_out: Tensor, cache: Any) -> Tensor:
        return grad_out

    x = torch.randn(3, 4)
    checked = backprop.check_pair(backprop.relu_forward, backprop.relu_backward, F.relu, x)
    assert checked.endswith("gradcheck ok")
    with pytest.raises(AssertionError):
        backprop.check_pair(backprop.relu_forward, wrong_backward, F.relu, x)
