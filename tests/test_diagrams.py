"""The drawn diagrams (``mnist_dissected.diagrams`` and ``diagrams_graphs``) are tested for what
they draw, read back from the figure's artists: the numbers in a grid's texts and its image
array, the outlined windows and cells, the box labels, the alt text. Each is compared with what
PyTorch computes on its own (``F.conv2d``, ``F.max_pool2d``, ``F.dropout``, autograd, DDP's
bucket assignment), never with the drawing code's own numbers. Small tensors: a few seconds."""

from __future__ import annotations

import base64
import collections
import html

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from mnist_dissected import diagrams, diagrams_graphs, plots
from mnist_dissected.diagrams import alt_text, show_figure
from mnist_dissected.models import LeNet, Net, count_parameters


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- reading a figure


def image(fig: Figure, gid: str) -> np.ndarray:
    """The array of the one image named ``gid``."""
    found = [im for ax in fig.axes for im in ax.images if im.get_gid() == gid]
    assert len(found) == 1, f"{len(found)} images named {gid!r}"
    return np.asarray(found[0].get_array())


def texts(fig: Figure, gid: str) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == gid]


def value(words: str) -> float:
    """The number a text annotates: ``"Σ = 12"`` -> 12.0."""
    return float(words.rsplit("=", maxsplit=1)[-1].strip())


def cells(fig: Figure, gid: str, grid: str) -> list[tuple[int, int, int, int]]:
    """(row, col, rows, cols) of each rectangle named ``gid``, in the cells of image ``grid``."""
    [im] = [im for im in fig.axes[0].images if im.get_gid() == grid]
    left, _, _, top = im.get_extent()
    return sorted(
        (
            round(p.get_y() - top),
            round(p.get_x() - left),
            round(p.get_height()),
            round(p.get_width()),
        )
        for p in fig.axes[0].patches
        if p.get_gid() == gid
    )


def shown_numbers(fig: Figure, gid: str) -> np.ndarray:
    """The numbers written in the cells of grid ``gid``, placed by where they are written."""
    [im] = [im for im in fig.axes[0].images if im.get_gid() == gid]
    left, _, _, top = im.get_extent()
    out = np.full(np.asarray(im.get_array()).shape, np.nan)
    for t in fig.axes[0].texts:
        if t.get_gid() == gid:
            x, y = t.get_position()
            out[int(y - top), int(x - left)] = float(t.get_text())
    return out


# --------------------------------------------------------------------------- Part 2's layers


@pytest.mark.parametrize("at", [(0, 0), (1, 2), (3, 3)])
def test_the_convolutions_annotated_sum_is_conv2ds_value_at_the_window(at):
    gen = torch.Generator().manual_seed(sum(at))
    img = torch.randint(-3, 4, (6, 6), generator=gen).float()
    kernel = torch.randint(-2, 3, (3, 3), generator=gen).float()
    fig = diagrams.draw_convolution(img, kernel, at=at, bias=1.0)
    truth = F.conv2d(img[None, None], kernel[None, None], torch.tensor([1.0]))[0, 0]
    [total] = texts(fig, "sum")
    assert value(total) == truth[at].item()
    assert cells(fig, "window", "image") == [(*at, 3, 3)]
    assert cells(fig, "output-cell", "output") == [(*at, 1, 1)]
    np.testing.assert_array_equal(image(fig, "output"), truth.numpy())
    r, c = at
    np.testing.assert_array_equal(image(fig, "products"), (img[r : r + 3, c : c + 3] * kernel))
    np.testing.assert_array_equal(shown_numbers(fig, "image"), img.numpy())


def test_the_convolution_of_real_numbers_agrees_to_the_two_decimals_shown():
    gen = torch.Generator().manual_seed(0)
    img, kernel = torch.randn(7, 7, generator=gen), torch.randn(5, 5, generator=gen)
    fig = diagrams.draw_convolution(img, kernel, at=(2, 1))
    truth = F.conv2d(img[None, None], kernel[None, None])[0, 0, 2, 1].item()
    assert value(texts(fig, "sum")[0]) == pytest.approx(truth, abs=0.005)


def test_a_position_outside_the_output_map_is_refused():
    with pytest.raises(ValueError, match="outside the 4×4 output map"):
        diagrams.draw_convolution(torch.zeros(6, 6), torch.zeros(3, 3), at=(4, 0))


def test_the_channel_maps_and_the_bias_sum_to_one_conv2d_over_all_channels():
    gen = torch.Generator().manual_seed(1)
    inputs, kernels = torch.randn(3, 5, 5, generator=gen), torch.randn(3, 3, 3, generator=gen)
    fig = diagrams.draw_channel_sum(inputs, kernels, bias=0.5)
    truth = F.conv2d(inputs[None], kernels[None], torch.tensor([0.5]))[0, 0]
    np.testing.assert_allclose(image(fig, "output"), truth.numpy(), atol=1e-5)
    maps = [image(fig, f"channel-map{c}") for c in range(3)]
    np.testing.assert_allclose(sum(maps) + 0.5, truth.numpy(), atol=1e-5)
    for c in range(3):
        alone = F.conv2d(inputs[c][None, None], kernels[c][None, None])[0, 0]
        np.testing.assert_allclose(maps[c], alone.numpy(), atol=1e-6)


def test_max_pooling_marks_the_maxima_that_max_pool2d_keeps():
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    fig = diagrams.draw_max_pool(x)
    pooled = F.max_pool2d(x[None, None], 2)[0, 0]
    np.testing.assert_array_equal(image(fig, "pooled"), pooled.numpy())
    marked = cells(fig, "max", "input")
    assert len(marked) == pooled.numel()
    for r, c, _, _ in marked:  # each maximum is its own window's, and is what pooling keeps
        assert x[r, c] == x[r // 2 * 2 : r // 2 * 2 + 2, c // 2 * 2 : c // 2 * 2 + 2].max()
        assert x[r, c] == pooled[r // 2, c // 2]


def test_max_pooling_windows_start_at_0_and_leave_the_odd_last_row_out():
    """A window shifted by one (a classic off-by-one) would take 20-24 of the last row."""
    x = torch.arange(25.0).view(5, 5)  # each window's maximum: its bottom-right corner
    fig = diagrams.draw_max_pool(x, size=2)
    assert cells(fig, "window", "input") == [(r, c, 2, 2) for r in (0, 2) for c in (0, 2)]
    assert [(r, c) for r, c, _, _ in cells(fig, "max", "input")] == [(1, 1), (1, 3), (3, 1), (3, 3)]
    np.testing.assert_array_equal(image(fig, "pooled"), [[6, 8], [16, 18]])
    assert "4 of 25 values" in alt_text(fig)


def test_dropouts_mask_and_output_are_f_dropouts_under_the_seed_and_leave_the_rng_alone():
    x = torch.arange(1.0, 25.0).view(4, 6)  # no zeros: the mask is where the output is not 0
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    fig = diagrams.draw_dropout_mask(x, p=0.25, seed=7)
    assert torch.equal(torch.rand(3), before), "the caller's random numbers did not move"
    torch.manual_seed(7)
    truth = F.dropout(x, p=0.25, training=True)
    np.testing.assert_allclose(image(fig, "output"), truth.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(image(fig, "mask"), (truth != 0).float().numpy())
    assert 0 < image(fig, "mask").sum() < 24
    assert f"keeps {int((truth != 0).sum())} of 24" in alt_text(fig)
    assert any(t.get_text() == "× 1.33 =" for t in fig.axes[0].texts)


def test_relu_and_pooling_in_both_orders_are_what_pytorch_computes_and_agree():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    fig = diagrams.draw_relu_and_pool(x)
    pool_relu = F.relu(F.max_pool2d(x[None, None], 2))[0, 0]
    relu_pool = F.max_pool2d(F.relu(x)[None, None], 2)[0, 0]
    np.testing.assert_array_equal(image(fig, "pool-relu"), pool_relu.numpy())
    np.testing.assert_array_equal(image(fig, "relu-pool"), relu_pool.numpy())
    np.testing.assert_array_equal(image(fig, "relued"), F.relu(x).numpy())
    np.testing.assert_array_equal(image(fig, "pooled"), F.max_pool2d(x[None, None], 2)[0, 0])
    assert image(fig, "pool-relu").shape == (2, 3) and "give the same 2×3 map" in alt_text(fig)


def test_flatten_draws_the_row_torch_flatten_makes_channel_by_channel():
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(5))
    fig = diagrams.draw_flatten(x)
    np.testing.assert_array_equal(image(fig, "flat")[0], torch.flatten(x).numpy())
    for ch in range(3):
        np.testing.assert_array_equal(image(fig, f"map{ch}"), x[ch].numpy())
    [row] = [im for im in fig.axes[0].images if im.get_gid() == "flat"]
    left = row.get_extent()[0]
    centres = [t.get_position()[0] - left for t in fig.axes[0].texts if t.get_gid() == "segment"]
    assert centres == [4.0, 12.0, 20.0], "each channel's label under its own 8 numbers"
    assert "one row of 24 numbers" in alt_text(fig)
    with pytest.raises(ValueError, match="C x H x W"):
        diagrams.draw_flatten(torch.zeros(2, 2))


def test_log_softmax_rows_and_the_nll_gradient_are_pytorchs():
    z = torch.tensor([[1.0, 2.0, 3.0], [100.0, 101.0, 102.0]])
    fig = diagrams.draw_log_softmax(z)
    np.testing.assert_allclose(image(fig, "log-probs"), F.log_softmax(z, dim=1), atol=1e-6)
    np.testing.assert_allclose(image(fig, "lse")[:, 0], torch.logsumexp(z, 1), atol=1e-5)
    np.testing.assert_allclose(image(fig, "sums")[:, 0], [1.0, 1.0], atol=1e-6)
    assert "(3.41, 102.41)" in alt_text(fig)
    target = torch.tensor([2, 0])
    with_grad = diagrams.draw_log_softmax(z[:1].repeat(2, 1), target)
    leaf = z[:1].repeat(2, 1).requires_grad_()
    F.cross_entropy(leaf, target).backward()
    np.testing.assert_allclose(image(with_grad, "grad"), leaf.grad.numpy(), atol=1e-6)
    np.testing.assert_array_equal(image(with_grad, "onehot"), [[0, 0, 1], [1, 0, 0]])
    assert "targets [2, 0]" in alt_text(with_grad)


# --------------------------------------------------------------------------- receptive field


def gradient_support(row: int, col: int) -> torch.Tensor:
    """Where one conv2 output's gradient reaches the input: a part of its field only."""
    net = Net().eval()
    caught = []
    net.conv2.register_forward_hook(lambda m, a, out: caught.append(out))
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    net(x)
    caught[0][0, 0, row, col].backward()
    return x.grad[0, 0] != 0


@pytest.mark.parametrize("row, col", [(0, 0), (3, 5), (7, 7)])
def test_one_conv2_output_sees_a_14_by_14_patch_where_the_strides_put_it(row, col):
    fig = diagrams.draw_receptive_field(row=row, col=col)
    field = diagrams.receptive_field(row, col)
    # conv1 5x5, pool 2, conv2 5x5: 5 + (2 - 1) + (5 - 1) * 2 = 14 pixels, from 2 * row
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[2 * row : 2 * row + 14, 2 * col : 2 * col + 14] = True
    assert torch.equal(field, expected)
    assert cells(fig, "field", "input") == [(2 * row, 2 * col, 14, 14)]
    assert cells(fig, "output-cell", "conv2") == [(row, col, 1, 1)]
    assert image(fig, "conv2").shape == (8, 8)
    np.testing.assert_array_equal(np.isfinite(image(fig, "field-mask")), expected.numpy())
    assert "14 × 14 patch of the 28 × 28 input" in alt_text(fig)
    support = gradient_support(row, col)
    assert support.any() and not (support & ~field).any(), "a gradient stays inside the field"


def test_the_field_of_an_output_conv2_does_not_have_is_refused():
    with pytest.raises(ValueError, match="no \\(0, 8, 0\\)"):
        diagrams.receptive_field(8, 0)


# --------------------------------------------------------------------------- graphs


NET_SHAPES = [
    [1, 1, 28, 28],
    [1, 10, 24, 24],  # conv1
    [1, 10, 12, 12],  # max_pool2d
    [1, 10, 12, 12],  # relu
    [1, 20, 8, 8],  # conv2
    [1, 20, 8, 8],  # conv2_drop
    [1, 20, 4, 4],  # max_pool2d
    [1, 20, 4, 4],  # relu
    [1, 320],  # flatten
    [1, 50],  # fc1
    [1, 50],  # relu
    [1, 50],  # dropout
    [1, 10],  # fc2
    [1, 10],  # log_softmax
]
LENET_SHAPES = [
    [1, 1, 32, 32],
    [1, 6, 28, 28],
    [1, 6, 28, 28],
    [1, 6, 14, 14],
    [1, 16, 10, 10],
    [1, 16, 10, 10],
    [1, 16, 5, 5],
    [1, 400],
    [1, 120],
    [1, 120],
    [1, 84],
    [1, 84],
    [1, 10],
]


@pytest.mark.parametrize(
    "name, cls, shapes", [("net", Net, NET_SHAPES), ("lenet", LeNet, LENET_SHAPES)]
)
def test_the_architecture_lists_every_shape_the_real_model_produces(name, cls, shapes):
    fig = diagrams_graphs.draw_architecture(name)
    assert texts(fig, "shape") == [str(s) for s in shapes]
    layers = texts(fig, "layer")
    assert layers[0] == "input" and layers[1] == f"conv1: Conv2d 1→{shapes[1][1]}, 5×5"
    model, made = cls().eval(), []  # the modules' outputs, by forward hooks of the test's own
    for mod_name, module in model.named_children():
        module.register_forward_hook(lambda m, a, out, n=mod_name: made.append((n, out.shape)))
    model(torch.zeros(1, 1, cls.input_size, cls.input_size))
    assert len(made) == len(list(model.children()))
    for mod_name, shape in made:
        [where] = [i for i, label in enumerate(layers) if label.startswith(f"{mod_name}:")]
        assert texts(fig, "shape")[where] == str(list(shape))
    assert sum(int(t.split()[0].replace(",", "")) for t in texts(fig, "params")) == (
        count_parameters(model)
    )
    assert str(shapes[1]) in alt_text(fig)


def box_names(fig: Figure) -> collections.Counter:
    """The grad_fn class names written in the graph's boxes (their first line)."""
    boxes = [t for t in fig.axes[0].texts if t.get_bbox_patch() is not None]
    return collections.Counter(t.get_text().split("\n")[0] for t in boxes)


def real_names(root) -> collections.Counter:
    seen, names = set(), collections.Counter()

    def walk(node):
        if node is None or node in seen:
            return
        seen.add(node)
        names[type(node).__name__] += 1
        for child, _ in node.next_functions:
            walk(child)

    walk(root)
    return names


def test_the_graph_of_z_is_x_times_y_has_the_real_nodes_and_backwards_numbers():
    fig = diagrams_graphs.draw_autograd_graph("mul", x=2.0, y=5.0)
    x, y = torch.tensor(2.0, requires_grad=True), torch.tensor(5.0, requires_grad=True)
    z = x * y
    assert box_names(fig) == real_names(z.grad_fn) == {"MulBackward0": 1, "AccumulateGrad": 2}
    z.backward()
    assert sorted(texts(fig, "gradient")) == [
        f"receives ∂z/∂x = {x.grad.item():g}",
        f"receives ∂z/∂y = {y.grad.item():g}",
    ]
    assert "MulBackward0 sends ∂z/∂x = 5 to x" in alt_text(fig)


def test_the_graph_of_nets_loss_names_every_real_node():
    fig = diagrams_graphs.draw_autograd_graph("net")
    net = Net()  # another seed, the same graph
    loss = F.nll_loss(net(torch.randn(3, 1, 28, 28)), torch.tensor([1, 2, 3]))
    assert box_names(fig) == real_names(loss.grad_fn)
    assert box_names(fig)["AccumulateGrad"] == len(list(net.parameters()))
    assert {"NllLossBackward0", "ConvolutionBackward0"} <= set(box_names(fig))
    with pytest.raises(ValueError, match="'mul' or 'net'"):
        diagrams_graphs.draw_autograd_graph("lenet")


def test_the_linear_backward_shows_autograds_gradients_with_their_shapes():
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(5, 2)
    x, grad_out = torch.randn(3, 5, generator=gen, requires_grad=True), torch.randn(3, 2)
    fig = diagrams_graphs.draw_linear_backward(layer, x, grad_out)
    layer(x).backward(grad_out)
    np.testing.assert_allclose(image(fig, "dX"), x.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(image(fig, "dW"), layer.weight.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(image(fig, "db")[0], layer.bias.grad.numpy(), atol=1e-6)
    for gid, shape in [("dX", "3×5"), ("dY", "3×2"), ("W", "2×5"), ("dW", "2×5"), ("dYT", "2×3")]:
        assert shape in texts(fig, f"{gid}-title")[0]
        assert "×".join(map(str, image(fig, gid).shape)) == shape


def test_a_matrix_products_backward_shows_autograds_gradients_with_their_shapes():
    gen = torch.Generator().manual_seed(6)
    a, b, g = torch.randn(2, 3, generator=gen), torch.randn(3, 4, generator=gen), torch.randn(2, 4)
    fig = diagrams_graphs.draw_matmul_backward(a, b, g)
    leaf_a, leaf_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    (leaf_a @ leaf_b).backward(g)
    np.testing.assert_allclose(image(fig, "da"), leaf_a.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(image(fig, "db"), leaf_b.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(image(fig, "d"), (a @ b).numpy(), atol=1e-6)
    np.testing.assert_array_equal(image(fig, "bT"), b.T.numpy())
    for gid, shape in [("da", "2×3"), ("db", "3×4"), ("aT", "3×2"), ("bT", "4×3"), ("g", "2×4")]:
        assert shape in texts(fig, f"{gid}-title")[0]


def test_the_vector_jacobian_product_is_the_jacobians_and_backwards():
    def f(x):
        return torch.stack([x[0] * x[1], x[1] + x[2] ** 2])

    fig = diagrams_graphs.draw_vjp(f, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 100.0]))
    np.testing.assert_array_equal(image(fig, "J"), [[2, 1, 0], [0, 1, 6]])
    np.testing.assert_array_equal(image(fig, "grad")[0], [20, 110, 600])
    np.testing.assert_array_equal(image(fig, "vJ")[0], [20, 110, 600])
    assert "[20, 110, 600]" in alt_text(fig)
    with pytest.raises(ValueError, match="must be vectors"):
        diagrams_graphs.draw_vjp(lambda x: x.sum(), torch.ones(3), torch.tensor(1.0))


def test_relus_backward_passes_autograds_gradient_where_x_is_positive():
    x = torch.tensor([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]])
    grad_out = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    fig = diagrams.draw_relu_backward(x, grad_out)
    leaf = x.clone().requires_grad_()
    F.relu(leaf).backward(grad_out)
    np.testing.assert_array_equal(image(fig, "grad-in"), leaf.grad.numpy())
    np.testing.assert_array_equal(image(fig, "grad-in"), [[0, 0, 3], [4, 0, 6]])  # 0 at x = 0
    np.testing.assert_array_equal(image(fig, "passes"), (x > 0).float().numpy())
    assert "at the 3 positions where x > 0 and is 0 at the other 3" in alt_text(fig)


def test_ddp_buckets_are_the_grouping_pytorch_computes():
    params = list(reversed(list(Net().parameters())))
    for first, cap in [(1.0, 25.0), (0.005, 0.02), (0.0001, 0.0001)]:
        mine = diagrams_graphs.ddp_buckets(Net(), bucket_cap_mb=cap, first_bucket_mb=first)
        sizes = [sum(b for _, b in bucket) for bucket in mine]
        assert sum(sizes) == 4 * count_parameters(Net())
        if hasattr(dist, "_compute_bucket_assignment_by_size"):
            limits = [int(first * 2**20), int(cap * 2**20)]
            theirs = dist._compute_bucket_assignment_by_size(params, limits)[0]
            assert [len(bucket) for bucket in mine] == [len(b) for b in theirs], (first, cap)


def test_the_all_reduce_sums_and_averages_and_all_of_net_fits_one_bucket():
    grads = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, 0.25])]
    fig = diagrams_graphs.draw_allreduce(grads, parameter="p")
    np.testing.assert_allclose(image(fig, "sum")[0], [4.0, -2.0, 0.75])
    np.testing.assert_allclose(image(fig, "average")[0], [2.0, -1.0, 0.375])
    assert len([p for p in fig.axes[0].patches if p.get_gid() == "bucket"]) == 1
    assert "all of Net fits one bucket" in texts(fig, "fits")[0]
    assert len(texts(fig, "param")) == len(list(Net().parameters()))
    small = diagrams_graphs.draw_allreduce(grads, bucket_cap_mb=0.02, first_bucket_mb=0.005)
    assert len([p for p in small.axes[0].patches if p.get_gid() == "bucket"]) == 2


def test_the_default_all_reduce_averages_two_real_different_gradients():
    fig = diagrams_graphs.draw_allreduce()
    g0, g1 = image(fig, "rank0")[0], image(fig, "rank1")[0]
    assert g0.shape == (10,) and not np.allclose(g0, g1)
    np.testing.assert_allclose(image(fig, "average")[0], (g0 + g1) / 2, atol=1e-6)


# --------------------------------------------------------------------------- alt text, style

EVERY_FIGURE = {
    "convolution": (lambda: diagrams.draw_convolution(torch.ones(4, 4), torch.ones(2, 2)), "sum"),
    "channels": (lambda: diagrams.draw_channel_sum(torch.ones(2, 3, 3), torch.ones(2, 2, 2)), ""),
    "pooling": (lambda: diagrams.draw_max_pool(torch.ones(4, 4)), "max pooling"),
    "dropout": (lambda: diagrams.draw_dropout_mask(torch.ones(2, 3)), "Dropout"),
    "field": (diagrams.draw_receptive_field, "receptive field"),
    "architecture": (lambda: diagrams_graphs.draw_architecture("lenet"), "LeNet"),
    "autograd": (diagrams_graphs.draw_autograd_graph, "autograd graph"),
    "linear": (diagrams_graphs.draw_linear_backward, "linear layer"),
    "all-reduce": (diagrams_graphs.draw_allreduce, "all-reduce"),
    "relu-pool": (lambda: diagrams.draw_relu_and_pool(torch.ones(4, 4)), "both orders"),
    "flatten": (lambda: diagrams.draw_flatten(torch.ones(2, 2, 2)), "flattened"),
    "log-softmax": (lambda: diagrams.draw_log_softmax(torch.ones(2, 3), [0, 1]), "logsumexp"),
    "relu-backward": (lambda: diagrams.draw_relu_backward(*torch.ones(2, 2, 2)), "x > 0"),
    "matmul": (lambda: diagrams_graphs.draw_matmul_backward(*torch.ones(3, 2, 2)), "product"),
    "vjp": (lambda: diagrams_graphs.draw_vjp(torch.sin, torch.ones(3), torch.ones(3)), "Jacobian"),
}


@pytest.mark.parametrize("what", EVERY_FIGURE)
def test_every_figure_has_alt_text_that_says_what_it_shows(what):
    draw, words = EVERY_FIGURE[what]
    fig = draw()
    assert isinstance(fig, Figure)
    assert len(alt_text(fig)) > 60 and (words or "channels") in alt_text(fig)
    shown = show_figure(fig)
    assert not plt.fignum_exists(fig.number), "closed: the inline backend shows it once"
    assert repr(shown) == alt_text(fig)
    page = shown._repr_html_()
    assert page.startswith('<img src="data:image/png;base64,')
    assert f'alt="{html.escape(alt_text(fig))}"' in page
    # The PNG on its own as well, the same bytes the <img> holds (Jupyter ranks HTML first).
    assert base64.b64encode(shown._repr_png_()).decode("ascii") in page


def test_the_style_is_read_from_one_place(monkeypatch):
    monkeypatch.setitem(plots.STYLE["cmap"], "signed", "PuOr")
    monkeypatch.setitem(plots.STYLE["font"], "small", 5)
    fig = diagrams.draw_max_pool(torch.ones(2, 2))
    [im] = [im for im in fig.axes[0].images if im.get_gid() == "input"]
    assert im.get_cmap().name == "PuOr"
    assert {t.get_fontsize() for t in fig.axes[0].texts if t.get_gid() == "input"} == {5}
    filters = plots.show_filters(torch.ones(2, 1, 3, 3), "filters")
    assert filters.axes[0].images[0].get_cmap().name == "PuOr"
    monkeypatch.setitem(plots.STYLE["rc"], "font.size", 13)
    title = plots.show_feature_maps(torch.ones(2, 3, 3), "maps").texts[0]
    assert title.get_fontsize() == pytest.approx(13 * 1.2), "a suptitle is 'large': 1.2 x 13"


def test_any_other_figure_is_shown_with_the_alt_text_given_and_none_without():
    fig = plots.show_feature_maps(torch.ones(2, 3, 3), "maps")
    with pytest.raises(ValueError, match="no alt text"):
        show_figure(fig)
    shown = show_figure(fig, alt='Two "maps" & nothing else')
    assert 'alt="Two &quot;maps&quot; &amp; nothing else"' in shown._repr_html_()
