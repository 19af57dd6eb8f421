"""PyTorch parity: every op in ``op_specs.SPECS`` gives PyTorch's values and gradients on the same inputs.

The inputs and the random upstream gradient are shared; the comparison runs in float64 (tight tolerance) and
in float32. Also: finite, matching results at inputs of +-1000 in float32, and the same subgradient as PyTorch
exactly at kinks and ties. Skipped when PyTorch is not installed.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygen as tg
from conftest import requires_torch
from op_specs import SPECS, as_tuple, draw_example, float_outputs, host

pytestmark = requires_torch

TORCH_SPECS = [s for s in SPECS if s.torch_fn is not None]


def test_every_op_has_a_torch_counterpart():
    assert [s.name for s in SPECS if s.torch_fn is None] == []


def run_tinygen(ex, dtype):
    xs = ex.tensors(dtype=dtype)
    inputs = [xs[i] for i in ex.grad_indices]
    outs = as_tuple(ex.call(*xs))
    fouts = float_outputs(outs)
    ups = ex.upstream(fouts, layouts=False)
    grads = tg.grad(fouts, inputs, ups)
    return [host(o) for o in outs], [host(g) for g in grads], [host(u) for u in ups]


def run_torch(ex, dtype, ups):
    import torch
    xs = []
    for i, a in enumerate(ex.arrays):
        diff = ex.spec.domain_of(i).differentiable
        t = torch.from_numpy(a.astype(dtype) if diff else a.copy())
        xs.append(t.requires_grad_(diff))
    inputs = [xs[i] for i in ex.grad_indices]
    outs = as_tuple(ex.spec.torch_fn(*xs, **ex.kwargs))
    fouts = [o for o in outs if o.is_floating_point()]
    grads = torch.autograd.grad(fouts, inputs, [torch.from_numpy(u) for u in ups], allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
    return [o.detach().numpy() for o in outs], [g.numpy() for g in grads]


def compare(what, ours, theirs, rtol, atol):
    assert len(ours) == len(theirs), f"{what}: {len(ours)} from tinygen, {len(theirs)} from PyTorch"
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"{what} {k}: shape {a.shape}, PyTorch {b.shape}"
        assert a.dtype == b.dtype, f"{what} {k}: dtype {a.dtype}, PyTorch {b.dtype}"
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what} {k}")
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"{what} {k}")


@pytest.mark.parametrize("spec", TORCH_SPECS, ids=lambda s: s.name)
@given(data=st.data())
def test_matches_torch(spec, data):
    ex = draw_example(data, spec)
    for dtype, rtol, atol in ((np.float64, 1e-10, 1e-12), (np.float32, spec.float32_tol, 1e-5)):
        outs, grads, ups = run_tinygen(ex, dtype)
        t_outs, t_grads = run_torch(ex, dtype, ups)
        compare(f"{np.dtype(dtype).name} value", outs, t_outs, rtol, atol)
        compare(f"{np.dtype(dtype).name} gradient", grads, t_grads, rtol, atol)


# ---- stability at large inputs ------------------------------------------------------------------------------
BIG = np.array([[-1000.0, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1000.0],
                [1000.0, 999.0, 0.0, -5.0, -1000.0, 3.0, 998.5, -999.0, 2.0],
                [1000.0] * 9, [-1000.0] * 9], dtype=np.float32)
STABLE = {
    "sigmoid": (lambda x: x.sigmoid(), lambda t, x: x.sigmoid()),
    "softplus": (lambda x: x.softplus(), lambda t, x: t.nn.functional.softplus(x)),
    "softplus_beta": (lambda x: x.softplus(beta=2.0, threshold=5.0),
                      lambda t, x: t.nn.functional.softplus(x, 2.0, 5.0)),
    "logsumexp": (lambda x: x.logsumexp(1), lambda t, x: x.logsumexp(1)),
    "logsumexp_all": (lambda x: x.logsumexp((0, 1), keepdim=True), lambda t, x: x.logsumexp((0, 1), keepdim=True)),
    "log_softmax": (lambda x: x.log_softmax(1), lambda t, x: x.log_softmax(1)),
    "log_softmax_dim0": (lambda x: x.log_softmax(0), lambda t, x: x.log_softmax(0)),
    "softmax": (lambda x: x.softmax(1), lambda t, x: x.softmax(1)),
}


@pytest.mark.parametrize("name", list(STABLE))
def test_stable_at_large_inputs_like_torch(name):
    import torch
    ours, theirs = STABLE[name]
    x = tg.tensor(BIG, requires_grad=True)
    tx = torch.from_numpy(BIG.copy()).requires_grad_(True)
    out, t_out = ours(x), theirs(torch, tx)
    u = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    out.backward(tg.tensor(u))
    t_out.backward(torch.from_numpy(u))
    assert out.dtype == tg.float32 and x.grad.dtype == tg.float32
    assert np.isfinite(out.detach().numpy()).all() and np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-6, atol=1e-6)
    # float32 outputs near 1000 carry an absolute error of ~6e-5, which exp(x - out) turns into a relative one
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)


# ---- at the kinks: the same subgradient convention as PyTorch ---------------------------------------------------
KINK_X = np.array([-1.0, -0.5, 0.0, 0.0, 0.5, 0.7, 1.0, 2.0])
KINKS = {
    "abs": (lambda x: x.abs(), lambda t, x: x.abs()),
    "relu": (lambda x: x.relu(), lambda t, x: x.relu()),
    "leaky_relu": (lambda x: x.leaky_relu(0.1), lambda t, x: t.nn.functional.leaky_relu(x, 0.1)),
    "elu": (lambda x: x.elu(0.5), lambda t, x: t.nn.functional.elu(x, 0.5)),
    "clamp": (lambda x: x.clamp(-0.5, 0.7), lambda t, x: x.clamp(-0.5, 0.7)),
    "softplus_at_threshold": (lambda x: x.softplus(2.0, 1.0),
                              lambda t, x: t.nn.functional.softplus(x, 2.0, 1.0)),
    "maximum_ties": (lambda x: tg.maximum(x, x * 1.0), lambda t, x: t.maximum(x, x * 1.0)),
    "minimum_scalar_tie": (lambda x: tg.minimum(x, 0.5),
                           lambda t, x: t.minimum(x, t.tensor(0.5, dtype=x.dtype))),
    "amax_ties": (lambda x: x.reshape(2, 4).amax(1), lambda t, x: x.reshape(2, 4).amax(1)),
    "max_all_ties": (lambda x: x.abs().max(), lambda t, x: x.abs().max()),
    "max_dim_ties": (lambda x: x.abs().reshape(4, 2).max(0).values, lambda t, x: x.abs().reshape(4, 2).max(0).values),
    "min_dim_ties": (lambda x: x.abs().reshape(2, 4).min(1).values, lambda t, x: x.abs().reshape(2, 4).min(1).values),
}


@pytest.mark.parametrize("name", list(KINKS))
def test_subgradients_at_kinks_match_torch(name):
    import torch
    ours, theirs = KINKS[name]
    x = tg.tensor(KINK_X, requires_grad=True)
    tx = torch.from_numpy(KINK_X.copy()).requires_grad_(True)
    out, t_out = ours(x), theirs(torch, tx)
    np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-12)
    u = np.linspace(0.5, 2.0, out.data.size).reshape(out.shape)
    out.backward(tg.tensor(u))
    t_out.backward(torch.from_numpy(u))
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=0)
