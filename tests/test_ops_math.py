"""The elementwise math and activations of ops/math.py beyond the table in op_specs.py: erf's accuracy over its
whole range, PyTorch's conventions at kinks and special values (xlogy at x == 0, the gradient at hardtanh's
bounds, clamp with crossed tensor bounds), stability at large inputs, argument errors, and the nn modules."""
import math

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn.functional as F
from conftest import requires_torch
from tinygen.ops.math import erf_array


def test_erf_matches_math_erf_to_round_off():
    x = np.concatenate([np.linspace(-8, 8, 40001), np.logspace(-300, 1.5, 3000), -np.logspace(-12, 1.5, 3000),
                        [0.46875, 4.0, 26.5, 27.0, 1e10, -1e300]])
    want = np.array([math.erf(v) for v in x])
    got = erf_array(np, x)
    np.testing.assert_allclose(got, want, rtol=2e-15, atol=0)
    x32 = x[np.abs(x) < 1e30].astype(np.float32)
    got32 = erf_array(np, x32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, [math.erf(v) for v in x32.astype(np.float64)], rtol=1e-7, atol=1e-37)


def test_erf_special_values():
    got = tg.erf(tg.tensor([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=tg.float64)).numpy()
    assert got[0] == 0 and got[1] == 0 and got[2] == 1 and got[3] == -1 and np.isnan(got[4])


def test_xlogy_is_zero_where_x_is_zero_as_torch():
    x = tg.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 1.5], dtype=tg.float64, requires_grad=True)
    y = tg.tensor([0.0, -1.0, 3.0, np.nan, 0.5, 2.0], dtype=tg.float64, requires_grad=True)
    out = tg.xlogy(x, y)
    want = [0.0, 0.0, 0.0, np.nan, 2 * math.log(0.5), 1.5 * math.log(2.0)]
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-15)
    gx, gy = tg.grad(out.sum(), [x, y])
    # d/dx is log(y) even at x == 0 (the one-sided slope), except where y <= 0; d/dy is x / y (0/0 is NaN)
    np.testing.assert_allclose(gx.numpy(), [0.0, 0.0, math.log(3.0), np.nan, math.log(0.5), math.log(2.0)],
                               rtol=1e-15)
    np.testing.assert_allclose(gy.numpy(), [np.nan, 0.0, 0.0, np.nan, 4.0, 0.75], rtol=1e-15)


@requires_torch
def test_xlogy_special_values_match_torch():
    import torch
    xs = np.array([0.0, 0.0, 0.0, 0.0, 2.0, -1.5, 0.0])
    ys = np.array([0.0, -1.0, 3.0, np.nan, 0.5, 2.0, np.inf])
    x, y = tg.tensor(xs, requires_grad=True), tg.tensor(ys, requires_grad=True)
    tx, ty = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (xs, ys))
    out, t_out = tg.xlogy(x, y), torch.xlogy(tx, ty)
    np.testing.assert_array_equal(out.detach().numpy(), t_out.detach().numpy())
    for ours, theirs in zip(tg.grad(out.sum(), [x, y]), torch.autograd.grad(t_out.sum(), [tx, ty])):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_sign_has_zero_gradient_and_second_derivative():
    x = tg.tensor([-1.5, 0.0, 2.0], dtype=tg.float64, requires_grad=True)
    (g,) = tg.grad((x.sign() * x).sum(), [x], create_graph=True)
    np.testing.assert_array_equal(g.numpy() if not g.requires_grad else g.detach().numpy(), [-1.0, 0.0, 1.0])


def test_clamp_with_tensor_bounds_crossed_and_broadcast():
    x = tg.tensor([[-2.0, 0.3, 5.0]], dtype=tg.float64, requires_grad=True)
    lo = tg.tensor([[-1.0], [1.0]], dtype=tg.float64, requires_grad=True)  # second row: lo > hi
    hi = tg.tensor(0.5, dtype=tg.float64, requires_grad=True)
    out = tg.clamp(x, lo, hi)
    np.testing.assert_array_equal(out.detach().numpy(), [[-1.0, 0.3, 0.5], [0.5, 0.5, 0.5]])
    gx, glo, ghi = tg.grad(out.sum(), [x, lo, hi])
    np.testing.assert_array_equal(gx.numpy(), [[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(glo.numpy(), [[1.0], [0.0]])
    assert ghi.item() == 4.0  # x > hi once in the first row, and all three where hi < lo
    assert tg.clamp_min(x, 0.0).detach().numpy().tolist() == [[0.0, 0.3, 5.0]]
    assert x.clamp_max(tg.tensor(1.0, dtype=tg.float64)).detach().numpy().tolist() == [[-2.0, 0.3, 1.0]]


def test_pow_with_a_number_base_and_rsub():
    x = tg.tensor([0.5, -1.0], dtype=tg.float64, requires_grad=True)
    y = tg.pow(2.0, x)
    np.testing.assert_allclose(y.detach().numpy(), [2 ** 0.5, 0.5], rtol=1e-15)
    (g,) = tg.grad(y.sum(), [x])
    np.testing.assert_allclose(g.numpy(), np.log(2) * np.array([2 ** 0.5, 0.5]), rtol=1e-15)
    np.testing.assert_allclose(tg.rsub(x, 3.0, alpha=2).detach().numpy(), [2.0, 5.0])
    with pytest.raises(TypeError, match="pow: expected at least one tensor"):
        tg.pow(2.0, 3.0)


@pytest.mark.parametrize("fn", [F.logsigmoid, F.silu, F.mish, F.softsign, F.gelu, F.selu, F.celu, F.hardsigmoid,
                                lambda x: F.gelu(x, approximate="tanh"), tg.log1p, tg.atan])
def test_finite_at_large_inputs_float32(fn):
    x = tg.tensor([-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0], requires_grad=True)
    out = fn(x) if fn not in (tg.log1p,) else fn(x.abs())
    out.sum().backward()
    assert np.isfinite(out.detach().numpy()).all() and np.isfinite(x.grad.numpy()).all()


def test_argument_errors_name_the_function():
    x = tg.tensor([1.0])
    with pytest.raises(ValueError, match="gelu: approximate must be one of"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="celu: alpha must be non-zero"):
        F.celu(x, 0.0)
    with pytest.raises(ValueError, match="hardtanh: min_val"):
        F.hardtanh(x, 1.0, -1.0)
    with pytest.raises(ValueError, match="clamp: at least one of min and max"):
        tg.clamp(x)
    with pytest.raises(TypeError, match=r"atan2\(\): argument 'input' must be Tensor, not float"):
        tg.atan2(1.0, 2.0)


# ---- against PyTorch: kinks, modules --------------------------------------------------------------------------------
KINK_X = np.array([-3.0, -1.0, -0.5, 0.0, 0.7, 1.0, 3.0, 6.0, 7.0])
KINKS = {
    "hardtanh": (lambda x: F.hardtanh(x), lambda F_, x: F_.hardtanh(x)),
    "hardtanh_bounds": (lambda x: F.hardtanh(x, -0.5, 0.7), lambda F_, x: F_.hardtanh(x, -0.5, 0.7)),
    "relu6": (F.relu6, lambda F_, x: F_.relu6(x)),
    "hardsigmoid": (F.hardsigmoid, lambda F_, x: F_.relu6(x + 3) / 6),
    "sign": (tg.sign, lambda F_, x: x.sign()),
    "selu": (F.selu, lambda F_, x: F_.selu(x)),
    "celu": (lambda x: F.celu(x, 0.5), lambda F_, x: F_.celu(x, 0.5)),
    "softsign": (F.softsign, lambda F_, x: F_.softsign(x)),
    "clamp_min_tensor_tie": (lambda x: x.clamp_min(x * 1.0), lambda F_, x: x.clamp_min(x * 1.0)),
}


@requires_torch
@pytest.mark.parametrize("name", list(KINKS))
def test_subgradients_at_kinks_match_torch(name):
    import torch
    ours, theirs = KINKS[name]
    x = tg.tensor(KINK_X, requires_grad=True)
    tx = torch.from_numpy(KINK_X.copy()).requires_grad_(True)
    out, t_out = ours(x), theirs(torch.nn.functional, tx)
    np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-15, atol=1e-16)
    u = np.linspace(0.5, 2.0, KINK_X.size)
    out.backward(tg.tensor(u))
    t_out.backward(torch.from_numpy(u))
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-13, atol=0)


MODULES = [("GELU", ()), ("GELU", ("tanh",)), ("SiLU", ()), ("SiLU", (True,)), ("Mish", ()), ("LogSigmoid", ()),
           ("Softsign", ()), ("SELU", ()), ("SELU", (True,)), ("CELU", ()), ("CELU", (0.5, True)), ("Hardtanh", ()),
           ("Hardtanh", (-2.0, 3.0, True)), ("ReLU6", ()), ("ReLU6", (True,)), ("Hardsigmoid", ())]


@requires_torch
@pytest.mark.parametrize("name,args", MODULES, ids=[f"{n}{a}" for n, a in MODULES])
def test_activation_modules_match_torch(name, args):
    import torch
    ours, theirs = getattr(tg.nn, name)(*args), getattr(torch.nn, name)(*args)
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(0).uniform(-4, 4, (3, 5))
    np.testing.assert_allclose(ours(tg.tensor(x)).numpy(), theirs(torch.from_numpy(x)).numpy(), rtol=1e-12,
                               atol=1e-15)
