"""Sequential runs Linear + activation as one fused node (nn.functional.linear_act): same values and gradients as
the two separate ops, correct second derivatives, kernels on and off."""
import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen import kernels

ACTIVATIONS = [lambda: nn.ReLU(), lambda: nn.LeakyReLU(0.2), lambda: nn.Tanh(), lambda: nn.Sigmoid(),
               lambda: nn.ELU(0.7), lambda: nn.Softplus(beta=2.0)]
IDS = ["relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus"]


@pytest.mark.parametrize("make_act", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("numba", [True, False], ids=["kernels", "plain"])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64], ids=["f32", "f64"])
def test_fused_sequential_matches_separate_ops(make_act, numba, dtype):
    if numba and not kernels.enabled():
        pytest.skip("Numba kernels are not available (numba missing or TINYGEN_NUMBA=0)")
    tg.manual_seed(3)
    act, lin = make_act(), nn.Linear(7, 5).to(dtype)
    x = tg.randn(6, 7, dtype=dtype, requires_grad=True)
    g = tg.randn(6, 5, dtype=dtype)
    with kernels.enabled_as(numba):
        fused = nn.Sequential(lin, act)(x)
        assert fused.grad_fn.name().startswith("Linear+") and fused.grad_fn.name().endswith("Backward")
        separate = act(lin(x))
        a = tg.grad(fused, [x, lin.weight, lin.bias], g)
        b = tg.grad(separate, [x, lin.weight, lin.bias], g)
    tol = 2e-6 if dtype == tg.float32 else 1e-12
    np.testing.assert_allclose(fused.detach().numpy(), separate.detach().numpy(), rtol=tol, atol=tol)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("make_act", ACTIVATIONS, ids=IDS)
def test_linear_act_first_and_second_derivatives(make_act):
    tg.manual_seed(4)
    spec = make_act().fused_spec()
    lin = nn.Linear(4, 3).to(tg.float64)
    x = tg.randn(5, 4, dtype=tg.float64, requires_grad=True)

    def f(x, w, b):
        return F.linear_act(x, w, b, *spec)
    assert tg.gradcheck(f, [x, lin.weight, lin.bias])
    assert tg.gradgradcheck(f, [x, lin.weight, lin.bias])


def test_not_fused_where_the_output_cannot_give_the_slope():
    assert nn.LeakyReLU(-0.5).fused_spec() is None
    assert nn.Softplus(beta=1.0, threshold=1.0).fused_spec() is None
    x = tg.randn(2, 3)
    y = nn.Sequential(nn.Linear(3, 2), nn.LeakyReLU(-0.5))(x)
    assert y.grad_fn is None or not y.grad_fn.name().startswith("Linear+")
    assert nn.Sequential(nn.Linear(3, 2), nn.ReLU())(tg.randn(4, 2, 3)).shape == (4, 2, 2)  # 3-D: not fused


def test_linear_act_errors():
    w, b = tg.randn(2, 3), tg.randn(2)
    with pytest.raises(ValueError, match="unknown activation"):
        F.linear_act(tg.randn(4, 3), w, b, "swish")
    with pytest.raises(ValueError, match="2-D"):
        F.linear_act(tg.randn(4, 1, 3), w, b, "relu")
    with pytest.raises(ValueError, match="does not match"):
        F.linear_act(tg.randn(4, 5), w, b, "relu")


@pytest.mark.parametrize("rows", [1, 16, 48, 49, 200])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mm_matches_numpy_on_every_route(rows, dtype, monkeypatch):
    """mm computes a short product with a transposed weight as (W @ x.T).T; the value and the C order must be
    NumPy's, on either side of the row limit and for both layouts of the right operand."""
    import tinygen.ops.linalg as linalg
    from tinygen.kernels import gemm  # where the operand choice lives
    monkeypatch.setattr(gemm, "SWAP_MAX_ROWS", 48)  # the default, whatever the environment says
    mm, SWAP_MIN_SIZE = linalg.mm, gemm.SWAP_MIN_SIZE
    rng = np.random.default_rng(rows)
    cols = -(-SWAP_MIN_SIZE // 300)  # a weight just at the size from which the swap is considered
    x, w = rng.standard_normal((rows, 300)).astype(dtype), rng.standard_normal((cols, 300)).astype(dtype)
    for b in (w.T, np.ascontiguousarray(w.T)):
        got, want = mm(x, b), x @ b
        assert got.flags.c_contiguous and got.dtype == want.dtype and got.shape == want.shape
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_mm_outer_product_is_exact():
    from tinygen.ops.linalg import mm
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((300, 1)).astype(np.float32), rng.standard_normal((1, 70)).astype(np.float32)
    got = mm(a, b)
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, a @ b)


def test_linear_forward_runs_through_mm(monkeypatch):
    """Linear, linear_act and the matmul op all multiply through ops.linalg.mm (one place for the layout rule)."""
    import tinygen.ops.linalg as linalg
    calls = []
    real = linalg.mm

    def spy(a, b):
        calls.append((a.shape, b.shape))
        return real(a, b)
    monkeypatch.setattr(linalg, "mm", spy)
    import tinygen.ops.nn as nn_ops
    monkeypatch.setattr(nn_ops, "mm", spy)
    lin, x = nn.Linear(5, 3), tg.randn(4, 5)
    lin(x)
    nn.Sequential(lin, nn.ReLU())(x)
    x @ lin.weight.T
    assert calls == [((4, 5), (5, 3))] * 3


@pytest.mark.parametrize("shape, act", [((7,), None), ((6, 7), None), ((2, 3, 7), None), ((6, 7), "relu"),
                                        ((6, 7), "tanh")])  # linear_act takes 2-D input only
def test_plain_backward_on_arrays_matches_the_recorded_one(shape, act):
    # a plain backward multiplies arrays directly; create_graph=True builds the same products from tinygen ops
    tg.manual_seed(5)
    lin = nn.Linear(7, 5).to(tg.float64)
    x = tg.randn(*shape, dtype=tg.float64, requires_grad=True)
    params = [x, lin.weight, lin.bias]

    def f():
        y = F.linear(x, lin.weight, lin.bias) if act is None else F.linear_act(x, lin.weight, lin.bias, act)
        return (y * y).sum()
    plain = tg.grad(f(), params)
    recorded = tg.grad(f(), params, create_graph=True)
    assert all(g.grad_fn is not None for g in recorded[1:])
    for p, u, v in zip(params, plain, recorded):
        assert u.shape == p.shape
        np.testing.assert_allclose(u.numpy(), v.detach().numpy(), rtol=1e-12, atol=1e-12)
