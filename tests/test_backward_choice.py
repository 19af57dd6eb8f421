"""The engine picks the form of each backward: ``array_backward`` for a plain backward(), the differentiable
``backward`` under create_graph=True; ops never ask which. Plus regression tests for gradients that were wrong."""
import ast
import pathlib

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen.autograd import Function, once_differentiable

PACKAGE = pathlib.Path(tg.__file__).parent


class _Square(Function):
    calls = []

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data * x.data

    @staticmethod
    def backward(ctx, g):
        _Square.calls.append("backward")
        (x,) = ctx.saved_tensors
        return g * x * 2

    @staticmethod
    def array_backward(ctx, g):
        _Square.calls.append("array_backward")
        return g * ctx.saved_tensors[0].data * 2


class _OnlyDifferentiable(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x * x * 3


def test_plain_backward_calls_array_backward_and_create_graph_the_differentiable_one():
    x = tg.tensor([1.0, -2.0, 3.0], dtype=tg.float64, requires_grad=True)
    _Square.calls.clear()
    _Square.apply(x).sum().backward()
    assert _Square.calls == ["array_backward"]
    np.testing.assert_allclose(x.grad.detach().numpy(), [2.0, -4.0, 6.0])
    _Square.calls.clear()
    (g,) = tg.grad(_Square.apply(x).sum(), x, create_graph=True)
    assert _Square.calls == ["backward"]
    (h,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(h.detach().numpy(), [2.0, 2.0, 2.0])


def test_function_with_only_a_differentiable_backward_works_both_ways():
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    _OnlyDifferentiable.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad.detach().numpy(), [3.0, 12.0])
    (g,) = tg.grad(_OnlyDifferentiable.apply(x).sum(), x, create_graph=True)
    (h,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(h.detach().numpy(), [6.0, 12.0])


def test_once_differentiable_becomes_the_array_backward():
    class Cube(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.data ** 3

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            return g * 3 * ctx.saved_tensors[0].data ** 2

    assert Cube.array_backward is not None
    x = tg.tensor([2.0], dtype=tg.float64, requires_grad=True)
    Cube.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad.detach().numpy(), [12.0])
    with pytest.raises(RuntimeError, match="once-differentiable"):
        tg.grad(Cube.apply(x).sum(), x, create_graph=True)


def _grad_mode_reads(path):
    """Names of grad-mode state read in a module: STATE.grad_enabled, is_grad_enabled()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "grad_enabled":
            found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == \
                "is_grad_enabled":
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_grad_mode_reads_outside_autograd():
    """The compiler (tinygen/compile/) is exempt: replaying a step, it sets the grad mode each recorded call ran
    under (a fused run of forwards leaves it as the forwards would)."""
    reads = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if "autograd" not in parts and parts[0] != "compile":
            reads += _grad_mode_reads(path)
    assert reads == [], f"ops, layers and losses must not ask whether a graph is being built: {reads}"


def test_every_function_lives_in_ops():
    """Every Function subclass of the package is defined under tinygen/ops (or is the base in autograd)."""
    outside = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] in ("ops", "autograd"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", "")) == "Function"
                                                      for b in node.bases):
                outside.append(f"{'/'.join(parts)}:{node.name}")
    assert outside == []


# ---- regressions: gradients that random op graphs against PyTorch found wrong --------------------------------------
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
@pytest.mark.parametrize("create_graph", [False, True])
def test_layer_norm_parameter_gradients_on_an_unbatched_input(dtype, create_graph):
    x = tg.tensor([0.3, -1.2, 0.8, 2.0], dtype=dtype, requires_grad=True)
    w = tg.tensor([0.5, 1.5, -1.0, 2.0], dtype=dtype, requires_grad=True)
    b = tg.tensor([0.1, 0.2, 0.3, 0.4], dtype=dtype, requires_grad=True)
    g = tg.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    gx, gw, gb = tg.grad(F.layer_norm(x, (4,), w, b), (x, w, b), grad_outputs=g, create_graph=create_graph)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == tg.float32 else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gb.detach().numpy(), [1.0, -2.0, 0.5, 3.0], **tol)
    np.testing.assert_allclose(gw.detach().numpy(), [-0.1525, 2.9192, 0.1416, 3.9867], atol=1e-4)


def test_layer_norm_module_bias_gradient_on_an_unbatched_input():
    ln = nn.LayerNorm(4)
    ln(tg.randn(4)).sum().backward()
    np.testing.assert_allclose(ln.bias.grad.detach().numpy(), [1.0, 1.0, 1.0, 1.0])


def test_layer_norm_second_derivative_matches_torch():
    torch = pytest.importorskip("torch")
    xs = np.array([0.3, -1.2, 0.8, 2.0])
    ws = np.array([0.5, 1.5, -1.0, 2.0])
    x = tg.tensor(xs, requires_grad=True)
    w = tg.tensor(ws, requires_grad=True)
    (gw,) = tg.grad((F.layer_norm(x, (4,), w) ** 2).sum(), w, create_graph=True)
    (hx,) = tg.grad(gw.sum(), x)
    tx = torch.tensor(xs, requires_grad=True)
    tw = torch.tensor(ws, requires_grad=True)
    (tgw,) = torch.autograd.grad((torch.nn.functional.layer_norm(tx, (4,), tw) ** 2).sum(), tw, create_graph=True)
    (thx,) = torch.autograd.grad(tgw.sum(), tx)
    np.testing.assert_allclose(hx.detach().numpy(), thx.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("create_graph", [False, True])
def test_pow_at_zero_with_exponent_zero_and_one_has_finite_gradients(create_graph):
    a = tg.tensor([0.0, 0.0, 2.0], dtype=tg.float64, requires_grad=True)
    (g0,) = tg.grad((a ** 0).sum(), a, create_graph=create_graph)
    np.testing.assert_array_equal(g0.detach().numpy(), [0.0, 0.0, 0.0])
    (g1,) = tg.grad((a ** 1).sum(), a, create_graph=True)
    np.testing.assert_array_equal(g1.detach().numpy(), [1.0, 1.0, 1.0])
    (h1,) = tg.grad(g1.sum(), a, allow_unused=True)
    assert h1 is None or np.array_equal(h1.detach().numpy(), [0.0, 0.0, 0.0])
    b = tg.tensor([0.0, 2.0], dtype=tg.float64, requires_grad=True)
    (gb,) = tg.grad((tg.zeros(2, dtype=tg.float64) ** b).sum(), b)  # d/db 0**b = 0 for b >= 0, as PyTorch
    np.testing.assert_array_equal(gb.detach().numpy(), [0.0, 0.0])


@pytest.mark.parametrize("create_graph", [False, True])
def test_linear_act_softplus_with_a_small_threshold(create_graph):
    x = tg.tensor([[1.0]], dtype=tg.float64, requires_grad=True)
    w = tg.tensor([[0.8]], dtype=tg.float64, requires_grad=True)
    y = F.linear_act(x, w, None, "softplus", 1.0, 1.0)
    (gx,) = tg.grad(y.sum(), x, create_graph=create_graph)
    np.testing.assert_allclose(gx.detach().numpy(), [[0.8 / (1 + np.exp(-0.8))]], rtol=1e-12)  # 0.55198
    assert abs(gx.item() - 0.55198) < 1e-5


def test_fused_linear_activation_is_named_for_both_in_the_graph():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    y = model(tg.randn(2, 3))
    assert y.grad_fn.name() == "Linear+TanhBackward"
    assert "Linear+TanhBackward" in tg.viz.to_mermaid(y)
    model.fuse_linear_activation = False
    assert model(tg.randn(2, 3)).grad_fn.name() == "TanhBackward"


@pytest.mark.parametrize("expr", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b, lambda a, b: -a,
    lambda a, b: a * 3.0 - 2.0 / b, lambda a, b: (a - b) * (a + b) / (b * b + 1.0),
    lambda a, b: a.exp() * b.log(), lambda a, b: a.abs().sqrt() + b.sqrt(), lambda a, b: a.sin() - b.cos() * a,
    lambda a, b: -0.5 * (1 + b.log() - a * a - a.exp()),  # the VAE's KL term
])
def test_arithmetic_array_backward_gives_the_differentiable_backwards_bits(expr):
    # the array forms of + - * /, unary minus, exp, log, sqrt, abs, sin and cos are the differentiable ones on
    # arrays: same gradient bits, with broadcasting (b is a row, positive) and Python constants
    rng = np.random.default_rng(0)
    a = tg.tensor(rng.normal(size=(4, 3)).astype(np.float32), requires_grad=True)
    b = tg.tensor((rng.random(3) + 0.5).astype(np.float32), requires_grad=True)
    g = tg.tensor(rng.normal(size=(4, 3)).astype(np.float32))
    expr(a, b).backward(g)
    plain = [a.grad.numpy().copy(), None if b.grad is None else b.grad.numpy().copy()]
    graph = tg.grad(expr(a, b), [a, b], g, create_graph=True, allow_unused=True)
    for p, q in zip(plain, graph):
        assert (p is None) == (q is None)
        if p is not None:
            assert np.array_equal(p, q.detach().numpy())


@pytest.mark.parametrize("expr", [
    lambda a, b: a.sum() * b.sum(), lambda a, b: a.sum(1) * b, lambda a, b: a.sum((0, 2), keepdim=True) * 2.0,
    lambda a, b: a.reshape(6, 4) * 1.5, lambda a, b: a.permute(2, 0, 1) * b.reshape(4, 1, 1),
    lambda a, b: a.sum(1, keepdim=True).expand(2, 3, 4) * a, lambda a, b: a * b,  # b broadcast: SumTo on arrays
])
def test_shape_and_sum_array_backward_give_the_differentiable_backwards_bits(expr):
    # sum, reshape, permute and expand (and SumTo, in the graph a create_graph backward builds) move gradients
    # without arithmetic: the array forms give the differentiable forms' bits, first and second order
    rng = np.random.default_rng(1)
    a = tg.tensor(rng.normal(size=(2, 3, 4)), requires_grad=True)
    b = tg.tensor(rng.normal(size=4), requires_grad=True)

    def first(create_graph):
        out = expr(a, b)
        g = tg.tensor(rng.normal(size=out.shape) if out.ndim else np.array(1.3))
        return tg.grad(out, [a, b], g, create_graph=create_graph, allow_unused=True)

    rng = np.random.default_rng(2)
    plain = first(False)
    rng = np.random.default_rng(2)
    graph = first(True)
    for p, q in zip(plain, graph):
        assert (p is None) == (q is None)
        if p is not None:
            assert np.array_equal(p.numpy(), q.detach().numpy())
    # second order: a plain backward through the graph of the first (SumTo, Expand, Reshape nodes among it)
    total = sum(((q * q).sum() for q in graph if q is not None and q.requires_grad), tg.tensor(0.0))
    if total.requires_grad:
        second_plain = tg.grad(total, [a, b], allow_unused=True)
        rng = np.random.default_rng(2)
        graph2 = first(True)
        total2 = sum(((q * q).sum() for q in graph2 if q is not None and q.requires_grad), tg.tensor(0.0))
        second_graph = tg.grad(total2, [a, b], create_graph=True, allow_unused=True)
        for p, q in zip(second_plain, second_graph):
            assert (p is None) == (q is None)
            if p is not None:
                assert np.array_equal(p.numpy(), q.detach().numpy())
