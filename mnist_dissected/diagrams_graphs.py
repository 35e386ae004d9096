"""Drawn graphs for Parts 2, 3 and 6: what flows where. Part 2: ``Net``'s and ``LeNet``'s
architecture with every tensor's shape (§2.1, §2.11, §2.12). Part 3: the autograd graph of
``z = x * y`` (§3.1) and of ``Net``'s loss (§3.4), a matrix product's backward (§3.2), a
vector-Jacobian product (§3.3), one linear layer's backward (§3.6).
Part 6: DDP's all-reduce across two processes, and its buckets (§6.4).

Why this module exists: the shapes, node names and gradients in these pictures are read from
the real thing (a forward pass of the real model, ``grad_fn.next_functions``, autograd's own
backward), so the pictures cannot drift from the code they explain. Like
:mod:`~mnist_dissected.diagrams`' (whose :func:`~mnist_dissected.diagrams.show_figure` shows
them with their alt text), every function returns a ``Figure`` with an ``alt_text``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn
from torch.autograd.functional import jacobian
from torch.overrides import TorchFunctionMode

from .diagrams_board import Board, Term, number, seeded, size_text
from .models import Net, count_parameters, model_class
from .plots import STYLE, graph_layout, plot_autograd_graph, styled

# --------------------------------------------------------------------------- Part 2: shapes


class Step(NamedTuple):
    """One tensor of a forward pass: the module that made it ("" for a function ``forward``
    calls itself), the torch function that made it, its shape."""

    module: str
    op: str
    shape: tuple[int, ...]


class _Recorder(TorchFunctionMode):
    """Writes down every torch function a forward pass calls that returns a tensor."""

    def __init__(self, where: list[str]) -> None:
        super().__init__()
        self.where, self.steps = where, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            module = self.where[-1] if self.where else ""
            self.steps.append(Step(module, func.__name__, tuple(out.shape)))
        return out


def layer_shapes(model_name: str) -> list[Step]:
    """Every tensor of one forward pass of a fresh ``model_name`` ("net", "lenet") on one blank
    image, in order, input first. Part 2, §2.10-2.12.

    Why a recording and not a table: forward hooks on the modules say which module runs (and
    see ``conv1``, not ``F.max_pool2d``); a torch-function mode sees every function ``forward``
    calls, ``F.relu`` and ``torch.flatten`` included. Together they give each shape the model
    really produces."""
    with seeded(0):
        model = model_class(model_name)().eval()
    x = torch.zeros(1, 1, model.input_size, model.input_size)
    where: list[str] = []

    def enter(name: str) -> Any:
        return lambda module, args: where.append(name)

    def leave(module: nn.Module, args: Any, out: Any) -> None:
        where.pop()

    handles = []
    for name, module in model.named_modules():
        if name:  # the model itself is not a layer
            handles += [module.register_forward_pre_hook(enter(name))]
            handles += [module.register_forward_hook(leave)]
    recorder = _Recorder(where)
    try:
        with torch.no_grad(), recorder:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [Step("", "input", tuple(x.shape)), *recorder.steps]


def describe(module: nn.Module) -> str:
    """``Conv2d 1→10, 5×5``: a layer in a few characters."""
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return (
            f"{kind} {module.in_channels}→{module.out_channels}, {size_text(*module.kernel_size)}"
        )
    if isinstance(module, nn.Linear):
        return f"{kind} {module.in_features}→{module.out_features}"
    if hasattr(module, "p"):
        return f"{kind} p={module.p:g}"
    return kind


@styled
def draw_architecture(model_name: str = "net") -> Figure:
    """One box per step of the forward pass of ``Net`` ("net") or ``LeNet`` ("lenet"), layers
    with weights in green, and the shape of the tensor after each. Part 2, §2.1, §2.11 and
    §2.12. The shapes come from running the real model (:func:`layer_shapes`)."""
    steps = layer_shapes(model_name)
    with seeded(0):
        model = model_class(model_name)()
    modules = dict(model.named_modules())
    board = Board()
    for i, step in enumerate(steps):
        y = 1 + 1.4 * i
        module = modules.get(step.module) if step.module else None
        weights = sum(p.numel() for p in module.parameters()) if module is not None else 0
        label = f"{step.module}: {describe(module)}" if module is not None else step.op
        color = STYLE["color"]["parameter" if weights else "operation"]
        bbox = {"boxstyle": "round", "fc": color}
        board.text(0, y, label, ha="left", gid="layer", bbox=bbox)
        board.text(11, y, str(list(step.shape)), ha="left", gid="shape")
        if weights:
            board.text(18, y, f"{weights:,} parameters", ha="left", gid="params", size="small")
        if i:
            board.arrow((1, y - 1.0), (1, y - 0.4))
    name, total = type(model).__name__, count_parameters(model)
    path = "; ".join(f"{s.module or s.op} {list(s.shape)}" for s in steps)
    alt = f"{name}'s architecture, {total:,} parameters, each step with its output shape: {path}."
    return board.finish(f"{name}: {total:,} parameters, every tensor's shape", alt)


# --------------------------------------------------------------------------- Part 3: backward


def _mul_graph(x: float, y: float) -> tuple[torch.Tensor, dict[int, str]]:
    """``z = x * y`` on two leaves, and the leaves' names by ``id``."""
    xs = torch.tensor(float(x), requires_grad=True)
    ys = torch.tensor(float(y), requires_grad=True)
    return xs * ys, {id(xs): "x", id(ys): "y"}


def _net_loss(seed: int) -> tuple[torch.Tensor, dict[int, str]]:
    """``Net``'s NLL loss on two random images (training mode), and its parameters' names."""
    with seeded(seed):
        net = Net()
        loss = F.nll_loss(net(torch.randn(2, 1, 28, 28)), torch.randint(0, 10, (2,)))
    return loss, {id(p): name for name, p in net.named_parameters()}


@styled
def draw_autograd_graph(example: str = "mul", *, x: float = 2.0, y: float = 3.0) -> Figure:
    """The autograd graph of ``z = x * y`` ("mul") or of ``Net``'s loss ("net"): one box per
    node, named by its real ``grad_fn`` class, arrows the way the gradient flows. Part 3, §3.1
    and §3.4. For "mul" the dashed arrows are the forward pass and each backward arrow carries
    the number ``MulBackward0`` itself returns (∂z/∂x = y, ∂z/∂y = x)."""
    if example not in ("mul", "net"):
        raise ValueError(f"example is 'mul' or 'net', not {example!r}")
    out, names = _mul_graph(x, y) if example == "mul" else _net_loss(0)
    root = out.grad_fn

    def label(node: Any) -> str:
        if hasattr(node, "variable"):
            v = node.variable
            what = f"{names[id(v)]} = {number(v)}" if example == "mul" else names[id(v)]
            return f"{type(node).__name__}  {what} {tuple(v.shape) if v.dim() else ''}".rstrip()
        is_z = example == "mul" and node is root
        return type(node).__name__ + (f"  z = x · y = {number(out)}" if is_z else "")

    where = graph_layout(root)
    rows = max(r for r, _ in where.values())
    size = (7.5, 2.8) if example == "mul" else (9, 0.7 * rows + 1.5)
    title = "z = x · y" if example == "mul" else "Net's NLL loss (training mode)"
    fig = plot_autograd_graph(root, label, title=f"Autograd graph of {title}", figsize=size)
    ax = fig.axes[0]
    sent = _mul_gradients(ax, root, where, out, names) if example == "mul" else []
    for left, words, color in (
        (0.0, "forward: from the leaves (green) up to the output", STYLE["color"]["arrow"]),
        (0.5, "backward (arrows): the gradient, down to every leaf", STYLE["color"]["gradient"]),
    ):
        ax.text(
            left, -0.06, words, transform=ax.transAxes, fontsize=STYLE["font"]["small"], color=color
        )
    kinds = sorted({type(n).__name__ for n in where})
    fig.alt_text = (
        f"The autograd graph of {title}: {len(where)} nodes ({', '.join(kinds)}), from "
        f"{type(root).__name__} at the top down to the leaves' AccumulateGrad nodes; the "
        "arrows carry the gradient backward."
        + "".join(f" {root.name()} sends ∂z/∂{leaf} = {grad} to {leaf}." for leaf, grad in sent)
    )
    return fig


def _mul_gradients(
    ax: Any, root: Any, where: dict, out: torch.Tensor, names: dict
) -> list[tuple[str, str]]:
    """Write under each leaf of ``z = x * y`` what ``MulBackward0`` sends it, draw the forward
    pass as dashed arrows from the leaves up to ``z``, and return (leaf, gradient) pairs."""
    column = STYLE["size"]["graph_column"]

    def at(node: Any) -> tuple[float, float]:
        row, col = where[node]
        return col * column, -row

    with torch.no_grad():
        sent = root(torch.ones_like(out))  # the node's own backward: (∂z/∂x, ∂z/∂y)
    told = []
    for (leaf, _), grad in zip(root.next_functions, sent, strict=True):
        (x0, y0), (x1, y1) = at(root), at(leaf)
        told.append((names[id(leaf.variable)], number(grad)))
        ax.text(
            x1,
            y1 - 0.45,
            f"receives ∂z/∂{told[-1][0]} = {told[-1][1]}",
            ha="center",
            fontsize=STYLE["font"]["label"],
            color=STYLE["color"]["gradient"],
            gid="gradient",
        )
        props = {"arrowstyle": "->", "ls": "--", "color": "0.6"}
        ax.annotate("", xy=(x0, y0 - 0.25), xytext=(x1, y1 + 0.22), arrowprops=props)
    return told


@styled
def draw_linear_backward(
    layer: nn.Linear | None = None,
    x: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    *,
    seed: int = 0,
) -> Figure:
    """One linear layer's forward, Y = X Wᵀ + b, and its backward: which matrix meets which,
    with every shape. Part 3, §3.2 and §3.6: ∂L/∂X = ∂L/∂Y · W, ∂L/∂W = (∂L/∂Y)ᵀ · X, ∂L/∂b =
    the sum of ∂L/∂Y over the batch. Without arguments: a 4→3 layer, a batch of 2 and an upstream
    gradient, random (``seed``) and rounded to one decimal so the numbers read easily."""
    with seeded(seed):
        layer = layer or _rounded(nn.Linear(4, 3))
        x = x if x is not None else _rounded(torch.randn(2, layer.in_features))
        grad_out = (
            grad_out if grad_out is not None else _rounded(torch.randn(2, layer.out_features))
        )
    w, b, x, g = layer.weight.detach(), layer.bias.detach(), x.detach(), grad_out.detach()
    n, (o, i) = len(x), w.shape
    forward: list[Term] = [("Y", f"Y ({n}×{o})", x @ w.T + b), "=", ("X", f"X ({n}×{i})", x)]
    forward += ["·", ("WT", f"Wᵀ ({i}×{o})", w.T), "+", ("b", f"b ({o})", b)]
    d_x: list[Term] = [("dX", f"∂L/∂X ({n}×{i})", g @ w), "=", ("dY", f"∂L/∂Y ({n}×{o})", g)]
    d_w: list[Term] = [("dW", f"∂L/∂W ({o}×{i})", g.T @ x), "="]
    d_w += [("dYT", f"(∂L/∂Y)ᵀ ({o}×{n})", g.T), "·", ("X2", f"X ({n}×{i})", x)]
    d_b: list[Term] = [("db", f"∂L/∂b ({o})", g.sum(0)), "= Σ over the batch (rows) of"]
    rows = [forward, [*d_x, "·", ("W", f"W ({o}×{i})", w)], d_w, [*d_b, ("dY2", "∂L/∂Y", g)]]
    board = _stacked(rows)
    alt = (
        f"A linear layer {i}→{o} on a batch of {n}: forward Y ({n}×{o}) = X ({n}×{i}) · Wᵀ + b; "
        f"backward ∂L/∂X ({n}×{i}) = ∂L/∂Y ({n}×{o}) · W ({o}×{i}), ∂L/∂W ({o}×{i}) = "
        f"(∂L/∂Y)ᵀ ({o}×{n}) · X ({n}×{i}), ∂L/∂b ({o}) = the sum of ∂L/∂Y over the batch."
    )
    return board.finish("A linear layer's backward: which matrix meets which", alt)


def _stacked(rows: Sequence[Sequence[Term]]) -> Board:
    """A board with one drawn equation per row, each row below the last."""
    board, top = Board(), 1.0
    for terms in rows:
        height = max(t[2].shape[0] if t[2].dim() == 2 else 1 for t in terms if isinstance(t, tuple))
        board.equation(0, top + height / 2, terms)
        top += height + 2.2
    return board


@styled
def draw_matmul_backward(a: Any, b: Any, grad: Any) -> Figure:
    """A matrix product d = a · b and, for the upstream gradient g = ∂L/∂d, what autograd gives
    its two factors: ∂L/∂a = g · bᵀ and ∂L/∂b = aᵀ · g, each the shape of its factor. Part 3,
    §3.2. The gradients drawn are ``d.backward(g)``'s."""
    a, b, g = (torch.as_tensor(t, dtype=torch.get_default_dtype()).detach() for t in (a, b, grad))
    leaves = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    (leaves[0] @ leaves[1]).backward(g)
    (m, k), n = a.shape, b.shape[1]
    rows: list[list[Term]] = [
        [("d", f"d ({m}×{n})", a @ b), "=", ("a", f"a ({m}×{k})", a), "·"],
        [("da", f"∂L/∂a ({m}×{k})", leaves[0].grad), "=", ("g", f"g = ∂L/∂d ({m}×{n})", g), "·"],
        [("db", f"∂L/∂b ({k}×{n})", leaves[1].grad), "=", ("aT", f"aᵀ ({k}×{m})", a.T), "·"],
    ]
    rows[0].append(("b", f"b ({k}×{n})", b))
    rows[1].append(("bT", f"bᵀ ({n}×{k})", b.T))
    rows[2].append(("g2", f"g ({m}×{n})", g))
    alt = (
        f"A matrix product d = a · b, a {m}×{k} and b {k}×{n}, and its backward for the "
        f"upstream gradient g ({m}×{n}): ∂L/∂a = g · bᵀ ({m}×{k}, a's shape) and ∂L/∂b = aᵀ · g "
        f"({k}×{n}, b's shape); ∂L/∂a is {_flat(leaves[0].grad)}, ∂L/∂b {_flat(leaves[1].grad)}."
    )
    return _stacked(rows).finish("A matrix product's backward: each factor meets g", alt)


@styled
def draw_vjp(f: Callable[[torch.Tensor], torch.Tensor], x: Any, v: Any) -> Figure:
    """``f(x).backward(v)`` as a picture: the row v times the Jacobian J of ``f`` at ``x`` is
    what lands in ``x.grad``. Part 3, §3.3. J is ``torch.autograd.functional.jacobian``'s and
    x.grad is ``backward``'s: two computations, drawn side by side (x and f(x) are vectors)."""
    x, v = (torch.as_tensor(t, dtype=torch.get_default_dtype()).detach() for t in (x, v))
    jac = jacobian(f, x)
    if jac.dim() != 2:
        raise ValueError(f"x and f(x) must be vectors: the Jacobian is {tuple(jac.shape)}")
    leaf = x.clone().requires_grad_()
    f(leaf).backward(v)
    (m, n), board = jac.shape, Board()
    terms: list[Term] = [("v", f"v ({m})", v), "·", ("J", f"J ({m}×{n})", jac), "="]
    terms += [("vJ", "v · J", v @ jac), "=", ("grad", "x.grad from backward(v)", leaf.grad)]
    board.equation(0, 1 + m / 2, terms)
    alt = (
        f"A vector-Jacobian product: v ({m} numbers) times the {m}×{n} Jacobian of f at x gives "
        f"{n} numbers, {_flat(v @ jac)}, and f(x).backward(v) puts the same, "
        f"{_flat(leaf.grad)}, in x.grad."
    )
    return board.finish("backward(v) is v · J, without forming J", alt)


def _flat(t: torch.Tensor) -> str:
    """``[20, 110, 600]``: a tensor's numbers as a diagram writes them."""
    return "[" + ", ".join(number(v) for v in t.flatten()) + "]"


def _rounded(t: Any) -> Any:
    """``t`` (a tensor, or a layer's weights in place) rounded to one decimal."""
    if isinstance(t, nn.Module):
        with torch.no_grad():
            for p in t.parameters():
                p.copy_(_rounded(p))
        return t
    return (t * 10).round() / 10


# --------------------------------------------------------------------------- Part 6: DDP


def ddp_buckets(
    model: nn.Module, *, bucket_cap_mb: float = 25.0, first_bucket_mb: float = 1.0
) -> list[list[tuple[str, int]]]:
    """``model``'s parameters grouped as DDP groups them for its all-reduce: (name, bytes) per
    parameter, a list per bucket. Part 6, §6.4.

    DDP fills buckets in the reverse order of ``model.parameters()`` (about the order backward
    produces the gradients) and closes one once it holds its cap: ``first_bucket_mb`` (1 MiB,
    so the first gradients travel early) for the first, ``bucket_cap_mb`` (25 MiB) after."""
    caps = [first_bucket_mb * 2**20, bucket_cap_mb * 2**20]
    buckets: list[list[tuple[str, int]]] = [[]]
    held = 0
    for name, p in reversed(list(model.named_parameters())):
        buckets[-1].append((name, p.numel() * p.element_size()))
        held += buckets[-1][-1][1]
        if held >= caps[min(len(buckets) - 1, 1)]:
            buckets.append([])
            held = 0
    return [bucket for bucket in buckets if bucket]


def rank_gradients(parameter: str = "fc2.bias", *, world_size: int = 2) -> list[torch.Tensor]:
    """The gradient of one of ``Net``'s parameters on each of ``world_size`` ranks: one model
    (the same start everywhere, as DDP makes it), each rank a different batch of 4 images."""
    with seeded(0):
        net = Net()
        batches = [
            (torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(world_size)
        ]
    grads = []
    for images, targets in batches:
        net.zero_grad()
        with seeded(1):  # dropout's draws
            F.nll_loss(net(images), targets).backward()
        grads.append(net.get_parameter(parameter).grad.detach().clone())
    return grads


@styled
def draw_allreduce(
    grads: Sequence[torch.Tensor] | None = None,
    *,
    parameter: str = "fc2.bias",
    bucket_cap_mb: float = 25.0,
    first_bucket_mb: float = 1.0,
) -> Figure:
    """DDP's all-reduce across two processes: each rank's gradient of ``parameter``, their sum,
    and the average every rank ends with; above, ``Net``'s parameters in DDP's buckets. Part 6,
    §6.4. (DDP divides each bucket by the world size, then sums: the same average.)"""
    grads = list(grads) if grads is not None else rank_gradients(parameter)
    total = torch.stack([g.detach().flatten() for g in grads]).sum(0)
    caps = {"bucket_cap_mb": bucket_cap_mb, "first_bucket_mb": first_bucket_mb}
    net, board, y = Net(), Board(), 1.0
    buckets = ddp_buckets(net, **caps)
    for k, bucket in enumerate(buckets):
        height = 1.8 * ((len(bucket) + 3) // 4)
        frame = Rectangle((0, y - 0.6), 20, height, fill=False, ec="0.3", gid="bucket")
        board.ax.add_patch(frame)
        board.reach(20, y)
        board.text(0, y - 0.8, f"bucket {k}: {sum(b for _, b in bucket):,} B", ha="left")
        for j, (name, size) in enumerate(bucket):
            where = (2.5 + 5 * (j % 4), y + 0.3 + 1.8 * (j // 4))
            bbox = {"boxstyle": "round", "fc": STYLE["color"]["parameter"]}
            board.text(*where, f"{name}\n{size:,} B", gid="param", size="small", bbox=bbox)
        y += height + 1.2
    size = sum(b for bucket in buckets for _, b in bucket)
    fits = "all of Net fits one bucket" if len(buckets) == 1 else f"Net needs {len(buckets)}"
    caps_text = f"caps: {first_bucket_mb:g} MiB first, {bucket_cap_mb:g} MiB after"
    board.text(0, y - 0.6, f"{size:,} B of gradients, {caps_text}: {fits}", ha="left", gid="fits")
    y += 0.8
    world = len(grads)
    lines = [*[(f"rank {r}: ∂L/∂{parameter}", f"rank{r}", g) for r, g in enumerate(grads)]]
    lines += [("all-reduce: the sum", "sum", total)]
    lines += [(f"÷ {world}: every rank's gradient", "average", total / world)]
    for words, gid, values in lines:
        board.text(0, y + 0.5, words, ha="left")
        board.grid(values, 10, y, gid=gid)
        y += 1.6
    alt = (
        f"DDP's all-reduce across {world} processes: each rank's gradient of {parameter} "
        f"({total.numel()} numbers) is summed and divided by {world}, so every rank steps with "
        f"the same average. Above, Net's {len(list(net.parameters()))} parameter tensors, "
        f"{size:,} bytes, in DDP's buckets ({caps_text}): {fits}."
    )
    return board.finish(f"DDP's all-reduce across {world} processes, and its buckets", alt)
