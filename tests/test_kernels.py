"""Kernels: the Numba versions (cpu.py) and the CuPy versions (gpu.py, run on the CPU stand-in for CuPy) against
the plain array reference (reference.py), plus the switch, the thread setting and PyTorch's formulas.

Tolerances, and why some comparisons are bitwise:
  * elementwise kernels (activations, bias + activation, the optimizers, BCE's per-element loss and gradient) do
    the reference's operations in the same order and dtype. Numba compiles without fastmath, so no reassociation
    and no fused multiply-add, and the exponentials come from the same NumPy calls: results are bit-identical.
    gpu.py runs the reference's own bodies, so it is bit-identical too.
  * kernels that sum (batch-norm statistics, bias-gradient column sums, log-softmax, cross-entropy, BCE's reduced
    loss) accumulate in a different order (Numba: sequentially in float64; NumPy: pairwise in the dtype), so they
    agree within rounding: rtol 1e-5 in float32 (~80 ulp: the error of a float32 sum of ~1000 terms), 1e-10 in
    float64, relative to the largest magnitude of the result.
"""
import importlib.util
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from conftest import requires_torch
import tinygen
from tinygen import kernels
from tinygen.backend import StandinArray, standin
from tinygen.kernels import gemm, gpu
from tinygen.kernels import threads as kthreads
from tinygen.kernels import reference as ref
from tinygen.optim.optimizer import Workspace

NUMBA_ON = kernels.enabled()
NUMBA_REASON = ("the Numba kernels are off (numba is not installed, or TINYGEN_NUMBA=0); the reference and the "
                "CuPy versions (on the stand-in) are still tested")
requires_numba = pytest.mark.skipif(not NUMBA_ON, reason=NUMBA_REASON)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ACTS = (("relu", ()), ("leaky_relu", (0.2,)), ("tanh", ()), ("sigmoid", ()), ("elu", (1.3,)),
        ("softplus", (1.5, 3.0)), ("softplus", (1.0, 20.0)))
SAVES_INPUT = ("relu", "leaky_relu", "softplus")


# ---- shared test code ---------------------------------------------------------------------------------------------
class Impl:
    """One implementation under test: its module and how arrays go in and out of it."""

    def __init__(self, name):
        self.name = name

    @property
    def mod(self):
        if self.name == "numba":
            from tinygen.kernels import cpu
            return cpu
        return gpu

    def put(self, a):
        if a is None or self.name == "numba" or isinstance(a, (int, float)):
            return a
        return standin.asarray(a)

    @staticmethod
    def get(a):
        if isinstance(a, tuple):
            return tuple(Impl.get(v) for v in a)
        return a.get() if isinstance(a, StandinArray) else a


@pytest.fixture(scope="module", params=["numba", "gpu"])
def impl(request):
    if request.param == "numba" and not NUMBA_ON:
        pytest.skip(NUMBA_REASON)
    return Impl(request.param)


@pytest.fixture(params=["serial", "parallel"])
def threads(request, monkeypatch):
    """Run Numba kernels serially, or force their thread-parallel twins even on small arrays."""
    if request.param == "parallel":
        if not NUMBA_ON:
            pytest.skip(NUMBA_REASON)
        from tinygen.kernels import cpu
        if cpu._threads() < 2:
            pytest.skip("Numba runs with one thread here: the parallel twins are never used")
        monkeypatch.setattr(kthreads, "PARALLEL_MIN", 0)
        monkeypatch.setattr(kthreads, "UFUNC_PARALLEL_MIN", 0)
        monkeypatch.setattr(kthreads, "UPDATE_PARALLEL_MIN", 1)  # the optimizers' parallel twins
    return request.param


def layout(a, kind):
    """The same values in another memory layout: C order, transposed (Fortran order) or strided."""
    if kind == "c" or a.ndim == 0:
        return a
    if kind == "t":
        return np.asfortranarray(a)
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def close(actual, expected, dtype, what="", scale=None):
    """Equal within the summation tolerance of the module docstring, relative to the result's magnitude (or to
    ``scale``, the magnitude of the terms it was computed from, when it comes out of a cancellation)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-10
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30), err_msg=what)


def same(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


dtypes = st.sampled_from([np.float32, np.float64])
layouts = st.sampled_from(["c", "t", "s"])
scales = st.sampled_from([0.1, 3.0, 40.0])  # 40: exp overflows without the stable formulas
dims = st.sampled_from([1, 2, 3, 7, 16, 33, 64, 130])


@st.composite
def arrays(draw, ndim=2, min_rows=1):
    shape = tuple(draw(dims) for _ in range(ndim))
    assume(shape[0] >= min_rows)
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return shape, np.random.default_rng(seed), draw(dtypes), draw(scales)


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ---- activations ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act,params", ACTS)
@given(spec=arrays(), kind=layouts)
def test_activation_matches_reference(impl, act, params, spec, kind):
    shape, rng, dt, scale = spec
    x = randn(rng, shape, dt, scale)
    x[0, 0] = 0.0  # the kink
    g = randn(rng, shape, dt)
    y = ref.act_fwd(x, act, *params)
    same(impl.get(getattr(impl.mod, act + "_fwd")(impl.put(layout(x, kind)), *params)), y, f"{act}_fwd")
    s = x if act in SAVES_INPUT else y
    gx = ref.act_bwd(s, g, act, *params)
    got = getattr(impl.mod, act + "_bwd")(impl.put(layout(s, kind)), impl.put(layout(g, kind)), *params)
    same(impl.get(got), gx, f"{act}_bwd")


@pytest.mark.parametrize("act,params", ACTS)
def test_activation_any_rank_and_sizes(impl, threads, act, params):
    rng = np.random.default_rng(1)
    for shape in [(1,), (7,), (2, 3, 5), (4097,)]:
        x = randn(rng, shape, np.float32, 3.0)
        y = getattr(impl.mod, act + "_fwd")(impl.put(x), *params)
        same(impl.get(y), ref.act_fwd(x, act, *params), f"{act}_fwd {shape}")


def test_reference_activations_against_formulas():
    x = np.array([-50.0, -3.0, -0.5, 0.0, 0.5, 3.0, 50.0])
    with np.errstate(over="ignore"):
        sig = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(ref.sigmoid_fwd(x), sig, rtol=1e-15)
    np.testing.assert_allclose(ref.softplus_fwd(x, 1.0, 20.0), np.where(x > 20, x, np.log1p(np.exp(x))), rtol=1e-15)
    np.testing.assert_allclose(ref.elu_fwd(x, 2.0), np.where(x > 0, x, 2.0 * (np.exp(x) - 1)), rtol=1e-12)
    np.testing.assert_array_equal(ref.leaky_relu_fwd(x, 0.1), np.where(x > 0, x, 0.1 * x))
    g = np.ones_like(x)
    np.testing.assert_allclose(ref.softplus_bwd(x, g, 2.0), 1 / (1 + np.exp(-2 * x)), rtol=1e-15)
    # from the output, y + alpha: absolute accuracy (at x = -50 the true 4e-22 rounds to 0), as in PyTorch
    np.testing.assert_allclose(ref.elu_bwd(ref.elu_fwd(x, 2.0), g, 2.0), np.where(x > 0, 1.0, 2.0 * np.exp(x)),
                               rtol=1e-12, atol=1e-15)
    assert np.isfinite(ref.sigmoid_fwd(np.array([-1000.0, 1000.0], np.float32))).all()


def test_activation_errors(impl):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        impl.mod.relu_bwd(impl.put(x), impl.put(np.zeros((3, 2), np.float32)))
    with pytest.raises(ValueError, match="alpha >= 0"):
        impl.mod.elu_bwd(impl.put(x), impl.put(x), -1.0)
    with pytest.raises(TypeError, match="float"):
        impl.mod.relu_fwd(impl.put(np.zeros(3, np.int64)))


# ---- bias + activation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act,params", [("identity", ())] + list(ACTS))
@given(spec=arrays(), kind=layouts, with_bias=st.booleans())
def test_bias_act_matches_reference(impl, act, params, spec, kind, with_bias):
    shape, rng, dt, scale = spec
    x, g, b = randn(rng, shape, dt, scale), randn(rng, shape, dt), randn(rng, shape[1], dt)
    b = b if with_bias else None
    expected = ref.bias_act_fwd(x.copy(), b, act, *params)
    y = impl.put(layout(x.copy(), kind))
    out = impl.mod.bias_act_fwd(y, impl.put(b), act, *params)
    assert out is y  # in place
    same(impl.get(out), expected, f"bias_act_fwd {act}")
    gpre, gb = impl.mod.bias_act_bwd(impl.put(layout(expected, kind)), impl.put(layout(g, kind)), act, *params)
    egpre, egb = ref.bias_act_bwd(expected, g, act, *params)
    same(impl.get(gpre), egpre, f"bias_act_bwd {act}")
    # a column sum of terms of both signs: NumPy's float32 error is relative to the terms, not to the sum
    close(impl.get(gb), egb, dt, f"bias grad {act}", scale=float(np.abs(egpre).sum(axis=0).max()))


@pytest.mark.parametrize("shape", [(5000, 1), (300, 64), (9, 1000), (4097, 3)])
@pytest.mark.parametrize("act,params", [("leaky_relu", (0.2,)), ("tanh", ()), ("sigmoid", ())])
def test_bias_act_over_many_blocks_of_rows_matches_reference(impl, shape, act, params):
    """The loops take blocks of rows (cpu.BLOCK elements): narrow rows (a convolution's few channels seen as rows)
    and rows that do not fill a block evenly give the reference's bits; the bias gradient is its column sums."""
    rng = np.random.default_rng(3)
    x, g, b = randn(rng, shape, np.float32), randn(rng, shape, np.float32), randn(rng, shape[1], np.float32)
    expected = ref.bias_act_fwd(x.copy(), b, act, *params)
    same(impl.get(impl.mod.bias_act_fwd(impl.put(x.copy()), impl.put(b), act, *params)), expected)
    gpre, gb = impl.mod.bias_act_bwd(impl.put(expected), impl.put(g), act, *params)
    egpre, egb = ref.bias_act_bwd(expected, g, act, *params)
    same(impl.get(gpre), egpre)
    close(impl.get(gb), egb, np.float32, scale=float(np.abs(egpre).sum(axis=0).max()))


def test_bias_act_parallel_and_reference_meaning(impl, threads):
    rng = np.random.default_rng(2)
    x, w, b, g = (randn(rng, (33, 17), np.float64), randn(rng, (5, 17), np.float64), randn(rng, 5, np.float64),
                  randn(rng, (33, 5), np.float64))
    pre = x @ w.T + b
    y = impl.mod.bias_act_fwd(impl.put(x @ w.T), impl.put(b), "leaky_relu", 0.2)
    same(impl.get(y), np.where(pre > 0, pre, 0.2 * pre))
    gpre, gb = impl.mod.bias_act_bwd(y, impl.put(g), "leaky_relu", 0.2)
    same(impl.get(gpre), g * np.where(pre > 0, 1.0, 0.2))
    close(impl.get(gb), (g * np.where(pre > 0, 1.0, 0.2)).sum(0), np.float64)
    _, none = impl.mod.bias_act_bwd(y, impl.put(g), "leaky_relu", 0.2, bias_grad=False)
    assert none is None


def test_bias_act_errors(impl):
    y = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="does not match 3 features"):
        impl.mod.bias_act_fwd(impl.put(y), impl.put(np.zeros(4, np.float32)), "relu")
    with pytest.raises(ValueError, match="2-D"):
        impl.mod.bias_act_fwd(impl.put(np.zeros(3, np.float32)), None, "relu")
    with pytest.raises(ValueError, match="negative parameter"):
        impl.mod.bias_act_bwd(impl.put(y), impl.put(y), "leaky_relu", -0.5)
    with pytest.raises(ValueError, match="unknown activation"):
        impl.mod.bias_act_fwd(impl.put(y), None, "gelu")


# ---- optimizers ----------------------------------------------------------------------------------------------------
# lr_array: the learning rate as a float64 0-d array on the arrays' device (a rate an optimizer holds in a tensor),
# against the reference given the Python float
SGD_OPTIONS = [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01),
               dict(momentum=0.5, dampening=0.3, maximize=True), dict(weight_decay=0.1, maximize=True),
               dict(momentum=0.9, weight_decay=0.01, lr_array=True)]
ADAM_OPTIONS = [dict(weight_decay=0.0, decoupled=False, amsgrad=False),
                dict(weight_decay=0.01, decoupled=False, amsgrad=True),
                dict(weight_decay=0.01, decoupled=True, amsgrad=False, beta1=0.5),  # GAN betas: the other lerp
                dict(weight_decay=0.1, decoupled=True, amsgrad=True, maximize=True),
                # a capturable Adam's count: a float64 0-d array on the arrays' device (the GPU's scalars there)
                dict(weight_decay=0.01, decoupled=False, amsgrad=True, count_array=True),
                dict(weight_decay=0.1, decoupled=True, amsgrad=False, beta1=0.5, maximize=True, count_array=True),
                dict(weight_decay=0.1, decoupled=True, amsgrad=True, count_array=True, lr_array=True),
                dict(weight_decay=0.01, decoupled=False, amsgrad=False, lr_array=True)]
RMSPROP_OPTIONS = [dict(), dict(centered=True), dict(momentum=0.9, weight_decay=0.01),
                   dict(centered=True, momentum=0.5, maximize=True, alpha=0.9), dict(centered=True, alpha=0.3),
                   dict(centered=True, momentum=0.5, lr_array=True)]


def _lr(put, opts, value):
    """The learning rate ``value`` as a run gives it: a Python float, or (``lr_array``) a float64 0-d array."""
    return put(np.array(value)) if opts.pop("lr_array", False) else value


def _run_sgd(mod, put, get, p, grads, opts, kind):
    opts = dict(opts)
    lr = _lr(put, opts, 0.1)
    p = layout(p.copy(), kind)
    buf = layout(np.zeros_like(p), kind)
    pp, bb = put(p), put(buf)
    for i, g in enumerate(grads):
        mod.sgd_step(pp, put(layout(g, kind)), bb, lr, first_step=i == 0, **opts)
    return get(pp), get(bb)


def _run_adam(mod, put, get, p, grads, opts, kind):
    opts = dict(opts)
    amsgrad, count_array, lr = opts.pop("amsgrad"), opts.pop("count_array", False), _lr(put, opts, 1e-2)
    state = [layout(a, kind) for a in (p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p))]
    pp, m, v, vmax = (put(a) for a in state)
    for step, g in enumerate(grads, 1):
        count = put(np.array(float(step))) if count_array else step
        mod.adam_step(pp, put(layout(g, kind)), m, v, vmax if amsgrad else None, lr, opts.get("beta1", 0.9),
                      0.999, 1e-8, opts["weight_decay"], opts["decoupled"], count, opts.get("maximize", False))
    return get(pp), get(m), get(v), get(vmax)


def _run_rmsprop(mod, put, get, p, grads, opts, kind):
    opts = dict(opts)
    lr = _lr(put, opts, 1e-2)
    state = [layout(a, kind) for a in (p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p))]
    pp, v, ga, buf = (put(a) for a in state)
    for g in grads:
        mod.rmsprop_step(pp, put(layout(g, kind)), v, ga, buf, lr, **opts)
    return get(pp), get(v), get(ga), get(buf)


OPTIMIZERS = ([(_run_sgd, o) for o in SGD_OPTIONS] + [(_run_adam, o) for o in ADAM_OPTIONS]
              + [(_run_rmsprop, o) for o in RMSPROP_OPTIONS])


@pytest.mark.parametrize("run,opts", OPTIMIZERS, ids=[f"{r.__name__[5:]}-{i}" for i, (r, _) in enumerate(OPTIMIZERS)])
@given(spec=arrays(), kind=layouts)
def test_optimizer_matches_reference_bitwise(impl, run, opts, spec, kind):
    shape, rng, dt, scale = spec
    p = randn(rng, shape, dt, scale)
    grads = [randn(rng, shape, dt, s) for s in (1.0, 0.1, 3.0)]
    expected = run(ref, lambda a: a, lambda a: a, p, grads, {k: v for k, v in opts.items() if k != "lr_array"}, "c")
    got = run(impl.mod, impl.put, impl.get, p, grads, opts, kind)
    for i, (a, e) in enumerate(zip(got, expected)):
        same(a, e, f"state {i}")


def test_sgd_first_step_reads_nothing_of_the_old_buffer(impl):
    """On the first step the momentum buffer becomes the gradient: whatever it held (NaN here) is never read."""
    rng = np.random.default_rng(4)
    p, g = randn(rng, (6, 5), np.float32), randn(rng, (6, 5), np.float32)
    expected_p, expected_buf = p.copy(), np.full_like(p, np.nan)
    ref.sgd_step(expected_p, g, expected_buf, 0.1, momentum=0.9, nesterov=True, first_step=True)
    pp, buf = impl.put(p.copy()), impl.put(np.full_like(p, np.nan))
    impl.mod.sgd_step(pp, impl.put(g), buf, 0.1, momentum=0.9, nesterov=True, first_step=True)
    same(impl.get(pp), expected_p, "param")
    same(impl.get(buf), expected_buf, "buffer")
    assert np.isfinite(impl.get(pp)).all()


def test_optimizer_split_across_threads(impl, threads):
    rng = np.random.default_rng(3)
    p = randn(rng, (37, 29), np.float32)
    grads = [randn(rng, (37, 29), np.float32) for _ in range(3)]
    for run, opts in OPTIMIZERS:
        expected = run(ref, lambda a: a, lambda a: a, p, grads, opts, "c")
        got = run(impl.mod, impl.put, impl.get, p, grads, opts, "c")
        for a, e in zip(got, expected):
            same(a, e, f"{run.__name__} {opts}")


def _bits(a):
    a = np.asarray(a)
    return a.view(f"u{a.itemsize}")


# Running averages each optimizer keeps, one step with a zero gradient on the first four elements: each average
# decays by its factor (<= 0.9) from a seed just above the smallest normal number, so it would become subnormal.
FLUSH_CASES = [
    ("sgd", lambda mod, p, g, st: mod.sgd_step(p, g, st[0], 0.1, momentum=0.9)),
    ("sgd-nesterov-dampening", lambda mod, p, g, st: mod.sgd_step(p, g, st[0], 0.1, 0.9, 0.1, True, 0.0)),
    ("adam", lambda mod, p, g, st: mod.adam_step(p, g, st[0], st[1], None, 1e-3, 0.9, 0.9, 1e-8, 0.0, False, 3)),
    ("adamw-amsgrad-beta1<0.5", lambda mod, p, g, st: mod.adam_step(p, g, st[0], st[1], st[2], 1e-3, 0.3, 0.9, 1e-8,
                                                                    0.01, True, 3)),
    ("rmsprop-centered-momentum", lambda mod, p, g, st: mod.rmsprop_step(p, g, st[0], st[1], st[2], 1e-2, 0.9,
                                                                         momentum=0.5, centered=True)),
    ("rmsprop", lambda mod, p, g, st: mod.rmsprop_step(p, g, st[0], None, None, 1e-2, 0.9)),
]
FLUSHED_STATE = {"sgd": 1, "sgd-nesterov-dampening": 1, "adam": 2, "adamw-amsgrad-beta1<0.5": 2,
                 "rmsprop-centered-momentum": 3, "rmsprop": 1}  # state arrays that are running averages


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,step", FLUSH_CASES, ids=[c[0] for c in FLUSH_CASES])
def test_optimizer_flushes_subnormal_averages_to_zero(impl, name, step, dtype):
    """An average that an update would leave subnormal (slow arithmetic on x86) is zero instead, with its sign
    (x * 0, as the reference writes it), in the reference and in each kernel, bit for bit; a NaN stays NaN,
    and normal values are untouched."""
    tiny = np.finfo(dtype).tiny
    seed = np.array([1.05 * tiny, -1.05 * tiny, 1.05 * tiny, -1.05 * tiny, 0.5, 0.25, np.nan, 1.0], dtype)
    assert 0 < abs(seed[0] * dtype(0.9)) < tiny  # without the flush, the first four would be subnormal
    grad = np.array([0, 0, 0, 0, 0.25, -1.0, 0.5, 0.0], dtype)
    results = {}
    for mod, put, get in ((ref, lambda a: a, lambda a: a), (impl.mod, impl.put, impl.get)):
        p = put(np.ones_like(seed))
        state = [put(seed.copy()) for _ in range(3)]
        step(mod, p, put(grad), state)
        results[mod.__name__] = [get(a) for a in [p] + state]
    expected, got = results[ref.__name__], results[impl.mod.__name__]
    for i, (a, e) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(_bits(a), _bits(e), err_msg=f"{name}: array {i} differs from the reference")
    for i in range(1, 1 + FLUSHED_STATE[name]):
        avg = expected[i]
        assert (avg[:4] == 0).all(), f"{name}: state {i} kept subnormals {avg[:4]}"
        assert list(np.signbit(avg[:4])) == [False, True, False, True], f"{name}: state {i} lost the sign"
        assert (np.abs(avg[4:6]) >= tiny).all() and np.isnan(avg[6]), f"{name}: state {i} = {avg}"
        assert avg[7] != 0, f"{name}: state {i}: a normal average was flushed"


def test_optimizer_errors(impl):
    p = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="momentum_buffer"):
        impl.mod.sgd_step(impl.put(p), impl.put(p), None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="must match the parameter"):
        impl.mod.adam_step(impl.put(p), impl.put(np.zeros((3, 2), np.float32)), impl.put(p), impl.put(p), None,
                           1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
    with pytest.raises(ValueError, match="step counts from 1"):
        impl.mod.adam_step(impl.put(p), impl.put(p), impl.put(p), impl.put(p), None, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                           False, 0)
    with pytest.raises(ValueError, match="grad_avg"):
        impl.mod.rmsprop_step(impl.put(p), impl.put(p), impl.put(p), None, None, 1e-3, centered=True)


@requires_numba
def test_optimizer_rejects_read_only_state():
    from tinygen.kernels import cpu
    p = np.zeros(4, np.float32)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        cpu.sgd_step(p, np.ones(4, np.float32), None, 0.1)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_follow_pytorch(dtype):
    """Five steps of torch.optim against our update (Numba when on, else the reference). PyTorch's CPU loops may
    use fused multiply-adds, so agreement is within a few float roundings, not bitwise."""
    import torch
    mod = kernels.module("cpu")
    rng = np.random.default_rng(4)
    p0 = randn(rng, (13, 11), dtype)
    grads = [randn(rng, (13, 11), dtype) for _ in range(5)]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    cases = [
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False),
         lambda st, p, g, i: mod.sgd_step(p, g, st.setdefault("buf", np.zeros_like(p)), 0.1, 0.9, 0.1, False, 0.01,
                                          False, i == 0)),
        (torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True),
         lambda st, p, g, i: mod.sgd_step(p, g, st.setdefault("buf", np.zeros_like(p)), 0.05, 0.8, 0.0, True, 0.0,
                                          True, i == 0)),
        (torch.optim.Adam, dict(lr=1e-2, weight_decay=0.01, amsgrad=True),
         lambda st, p, g, i: mod.adam_step(p, g, st.setdefault("m", np.zeros_like(p)),
                                           st.setdefault("v", np.zeros_like(p)),
                                           st.setdefault("vmax", np.zeros_like(p)), 1e-2, 0.9, 0.999, 1e-8, 0.01,
                                           False, i + 1)),
        (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6),
         lambda st, p, g, i: mod.adam_step(p, g, st.setdefault("m", np.zeros_like(p)),
                                           st.setdefault("v", np.zeros_like(p)), None, 1e-2, 0.8, 0.99, 1e-6, 0.1,
                                           True, i + 1)),
        (torch.optim.Adam, dict(lr=2e-4, betas=(0.3, 0.999)),  # beta1 < 0.5: PyTorch's other lerp formula
         lambda st, p, g, i: mod.adam_step(p, g, st.setdefault("m", np.zeros_like(p)),
                                           st.setdefault("v", np.zeros_like(p)), None, 2e-4, 0.3, 0.999, 1e-8, 0.0,
                                           False, i + 1)),
        (torch.optim.RMSprop, dict(lr=1e-2, alpha=0.3, centered=True),
         lambda st, p, g, i: mod.rmsprop_step(p, g, st.setdefault("v", np.zeros_like(p)),
                                              st.setdefault("ga", np.zeros_like(p)), None, 1e-2, 0.3, 1e-8, 0.0, 0.0,
                                              True)),
        (torch.optim.RMSprop, dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01),
         lambda st, p, g, i: mod.rmsprop_step(p, g, st.setdefault("v", np.zeros_like(p)),
                                              st.setdefault("ga", np.zeros_like(p)),
                                              st.setdefault("buf", np.zeros_like(p)), 1e-2, 0.9, 1e-8, 0.01, 0.5,
                                              True)),
    ]
    for cls, options, ours in cases:
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = cls([tp], foreach=False, **options)
        p, state = p0.copy(), {}
        for i, g in enumerate(grads):
            tp.grad = torch.from_numpy(g.copy())
            opt.step()
            ours(state, p, g, i)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=rtol, atol=rtol * np.abs(p0).max(),
                                   err_msg=f"{cls.__name__} {options}")


# ---- batch normalization -------------------------------------------------------------------------------------------
@given(spec=arrays(min_rows=2), kind=layouts, affine=st.booleans(), three_d=st.booleans())
def test_batchnorm_matches_reference(impl, spec, kind, affine, three_d):
    shape, rng, dt, scale = spec
    if three_d:
        shape = (shape[0], shape[1], 3)
    x = randn(rng, shape, dt, scale) + dt(scale)  # an offset: the variance must not lose digits to the mean
    g = randn(rng, shape, dt)
    w, b = (randn(rng, shape[1], dt), randn(rng, shape[1], dt)) if affine else (None, None)
    expected = ref.batchnorm_fwd(x, w, b, 1e-5)
    got = impl.get(impl.mod.batchnorm_fwd(impl.put(layout(x, kind)), impl.put(w), impl.put(b), 1e-5))
    for name, a, e in zip(("y", "x_hat", "mean", "var", "inv_std"), got, expected):
        close(a, e, dt, name)
    _, x_hat, _, _, inv_std = expected
    expected = ref.batchnorm_bwd(g, x_hat, w, inv_std)
    got = impl.get(impl.mod.batchnorm_bwd(impl.put(layout(g, kind)), impl.put(layout(x_hat, kind)), impl.put(w),
                                          impl.put(inv_std)))
    # gx = w / std * (g - mean(g) - x_hat * mean(g x_hat)) cancels (to exactly 0 for two samples): its error is
    # relative to the terms, not to the result
    # each gradient relative to the terms it sums (a sum of +-1-sized terms may cancel to almost nothing); gw and
    # gb each sum n = x.size / C terms, and a sum in the dtype in sequence (the stand-in's order) errs by about n * eps
    # of their magnitude: past rtol's ~1000 terms (module docstring) at (130, 2, 7, 3) the stand-in's gb differed by
    # 5.5e-5 of it, NumPy's by 1.4e-5
    sums = max(1.0, x.size / shape[1] * float(np.finfo(dt).eps) / (1e-5 if dt == np.float32 else 1e-10))
    terms = {"gx": float(np.max(np.abs(inv_std * (1 if w is None else w)))) * 3 * float(np.abs(g).max()),
             "gw": float(np.abs(g).max()) * float(np.abs(x_hat).max()) * sums, "gb": float(np.abs(g).max()) * sums}
    for name, a, e in zip(("gx", "gw", "gb"), got, expected):
        close(a, e, dt, name, scale=terms[name])


def test_batchnorm_parallel_twin(impl, threads):
    rng = np.random.default_rng(5)
    x, g, w, b = randn(rng, (9, 13), np.float64), randn(rng, (9, 13), np.float64), randn(rng, 13, np.float64), None
    for a, e in zip(impl.get(impl.mod.batchnorm_fwd(impl.put(x), impl.put(w), b)), ref.batchnorm_fwd(x, w, b)):
        close(a, e, np.float64)
    _, xh, _, _, inv = ref.batchnorm_fwd(x, w, b)
    for a, e in zip(impl.get(impl.mod.batchnorm_bwd(impl.put(g), impl.put(xh), impl.put(w), impl.put(inv))),
                    ref.batchnorm_bwd(g, xh, w, inv)):
        close(a, e, np.float64)


def test_batchnorm_reference_is_the_gradient():
    """The reference backward is the gradient of its forward (central differences on sum(y * r))."""
    rng = np.random.default_rng(6)
    x, w, b, r = randn(rng, (6, 4), np.float64), randn(rng, 4, np.float64), randn(rng, 4, np.float64), \
        randn(rng, (6, 4), np.float64)
    _, xh, _, _, inv = ref.batchnorm_fwd(x, w, b)
    gx, gw, gb = ref.batchnorm_bwd(r, xh, w, inv)
    h = 1e-6
    for idx in [(0, 0), (3, 2), (5, 3)]:
        d = np.zeros_like(x)
        d[idx] = h
        num = ((ref.batchnorm_fwd(x + d, w, b)[0] - ref.batchnorm_fwd(x - d, w, b)[0]) * r).sum() / (2 * h)
        assert abs(num - gx[idx]) < 1e-6
    np.testing.assert_allclose(gb, r.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gw, (r * xh).sum(0), rtol=1e-12)


@requires_torch
def test_batchnorm_follows_pytorch():
    import torch
    rng = np.random.default_rng(7)
    x, w, b = randn(rng, (16, 5), np.float64), randn(rng, 5, np.float64), randn(rng, 5, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-5)
    r = randn(rng, (16, 5), np.float64)
    ty.backward(torch.from_numpy(r))
    mod = kernels.module("cpu")
    y, xh, mean, var, inv = mod.batchnorm_fwd(x, w, b, 1e-5)
    gx, gw, gb = mod.batchnorm_bwd(r, xh, w, inv)
    for ours, theirs in ((y, ty), (gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, x.var(0), rtol=1e-12)


def test_batchnorm_errors(impl):
    with pytest.raises(ValueError, match=r"\(N, C"):
        impl.mod.batchnorm_fwd(impl.put(np.zeros(3, np.float32)), None, None)


# ---- batch normalization + activation ------------------------------------------------------------------------------
BN_ACTS = st.sampled_from([("identity", 0.0), ("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", 0.0)])


def channels_last(a):
    """The same (N, C, *) values stored with the channels last (how a convolution returns its image)."""
    order = (0,) + tuple(range(2, a.ndim)) + (1,)
    return np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))


@given(spec=arrays(min_rows=2), kind=st.sampled_from(["c", "t", "s", "channels_last"]), affine=st.booleans(),
       act=BN_ACTS, spatial=st.sampled_from([(), (3,), (1, 1), (2, 5), (7, 3)]))
def test_batchnorm_act_matches_reference(impl, spec, kind, affine, act, spatial):
    shape, rng, dt, scale = spec
    shape = shape + spatial
    x = randn(rng, shape, dt, scale) + dt(scale)
    g = randn(rng, shape, dt)
    w, b = (randn(rng, shape[1], dt), randn(rng, shape[1], dt)) if affine else (None, None)

    def put(a):
        if kind == "channels_last":
            return impl.put(channels_last(a)) if a.ndim > 2 else impl.put(a)
        return impl.put(layout(a, kind))
    expected = ref.batchnorm_act_fwd(x, w, b, 1e-5, *act)
    got = impl.get(impl.mod.batchnorm_act_fwd(put(x), impl.put(w), impl.put(b), 1e-5, *act))
    for name, a, e in zip(("y", "x_hat", "mean", "var", "inv_std"), got, expected):
        close(a, e, dt, name)
    y, x_hat, _, _, inv_std = expected
    expected = ref.batchnorm_act_bwd(g, y, x_hat, w, inv_std, *act)
    got = impl.get(impl.mod.batchnorm_act_bwd(put(g), put(y), put(x_hat), impl.put(w), impl.put(inv_std), *act))
    # each gradient relative to the terms it sums (a sum of +-1-sized terms may cancel to almost nothing); gw and
    # gb each sum n = x.size / C terms, and a sum in the dtype in sequence (the stand-in's order) errs by about n * eps
    # of their magnitude: past rtol's ~1000 terms (module docstring) at (130, 2, 7, 3) the stand-in's gb differed by
    # 5.5e-5 of it, NumPy's by 1.4e-5
    sums = max(1.0, x.size / shape[1] * float(np.finfo(dt).eps) / (1e-5 if dt == np.float32 else 1e-10))
    terms = {"gx": float(np.max(np.abs(inv_std * (1 if w is None else w)))) * 3 * float(np.abs(g).max()),
             "gw": float(np.abs(g).max()) * float(np.abs(x_hat).max()) * sums, "gb": float(np.abs(g).max()) * sums}
    for name, a, e in zip(("gx", "gw", "gb"), got, expected):
        close(a, e, dt, name, scale=terms[name])


def test_batchnorm_act_parallel_twin_and_layout(impl, threads):
    rng = np.random.default_rng(8)
    x, g = randn(rng, (5, 9, 3, 4), np.float64), randn(rng, (5, 9, 3, 4), np.float64)
    w, b = randn(rng, 9, np.float64), randn(rng, 9, np.float64)
    for act in (("relu", 0.0), ("leaky_relu", 0.3)):
        expected = ref.batchnorm_act_fwd(x, w, b, 1e-5, *act)
        got = impl.get(impl.mod.batchnorm_act_fwd(impl.put(channels_last(x)), impl.put(w), impl.put(b), 1e-5, *act))
        for a, e in zip(got, expected):
            close(a, e, np.float64)
        y, xh, _, _, inv = expected
        got = impl.get(impl.mod.batchnorm_act_bwd(impl.put(g), impl.put(y), impl.put(xh), impl.put(w),
                                                  impl.put(inv), *act))
        for a, e in zip(got, ref.batchnorm_act_bwd(g, y, xh, w, inv, *act)):
            close(a, e, np.float64)


def test_batchnorm_act_reference_is_the_activated_batchnorm():
    """The reference is batch norm followed by the activation, forward, and their chained gradients, backward."""
    rng = np.random.default_rng(9)
    x, g, w, b = (randn(rng, (6, 4, 3), np.float64), randn(rng, (6, 4, 3), np.float64), randn(rng, 4, np.float64),
                  randn(rng, 4, np.float64))
    y0, xh, _, _, inv = ref.batchnorm_fwd(x, w, b)
    for act, p1, fwd, bwd in (("relu", 0.0, ref.relu_fwd(y0), ref.relu_bwd(y0, g)),
                              ("leaky_relu", 0.1, ref.leaky_relu_fwd(y0, 0.1), ref.leaky_relu_bwd(y0, g, 0.1))):
        y = ref.batchnorm_act_fwd(x, w, b, 1e-5, act, p1)[0]
        same(y, fwd)
        for a, e in zip(ref.batchnorm_act_bwd(g, y, xh, w, inv, act, p1), ref.batchnorm_bwd(bwd, xh, w, inv)):
            same(a, e)


@requires_torch
@pytest.mark.parametrize("act,p1", [("relu", 0.0), ("leaky_relu", 0.2)])
def test_batchnorm_act_follows_pytorch(act, p1):
    import torch
    rng = np.random.default_rng(10)
    x, w, b = randn(rng, (8, 5, 3, 2), np.float64), randn(rng, 5, np.float64), randn(rng, 5, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tn = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-5)
    ty = torch.relu(tn) if act == "relu" else torch.nn.functional.leaky_relu(tn, p1)
    r = randn(rng, x.shape, np.float64)
    ty.backward(torch.from_numpy(r))
    mod = kernels.module("cpu")
    y, xh, _, _, inv = mod.batchnorm_act_fwd(x, w, b, 1e-5, act, p1)
    gx, gw, gb = mod.batchnorm_act_bwd(r, y, xh, w, inv, act, p1)
    for ours, theirs in ((y, ty), (gx, tx.grad), (gw, tw.grad), (gb, tb.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_batchnorm_act_errors(impl):
    x = impl.put(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="batchnorm_act_fwd: activation must be one of"):
        impl.mod.batchnorm_act_fwd(x, None, None, 1e-5, "tanh")
    with pytest.raises(ValueError, match="batchnorm_act_fwd: leaky_relu with a negative slope"):
        impl.mod.batchnorm_act_fwd(x, None, None, 1e-5, "leaky_relu", -0.1)
    with pytest.raises(ValueError, match="batchnorm_act_bwd: activation must be one of"):
        impl.mod.batchnorm_act_bwd(x, x, x, None, impl.put(np.ones(2, np.float32)), "sigmoid")


# ---- losses --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@given(spec=arrays(), kind=layouts, weighted=st.sampled_from(["none", "row", "full"]),
       pos=st.sampled_from(["none", "classes", "scalar"]), need_grad=st.booleans())
def test_bce_with_logits_matches_reference(impl, reduction, spec, kind, weighted, pos, need_grad):
    shape, rng, dt, scale = spec
    x = randn(rng, shape, dt, scale)
    t = rng.random(shape).astype(dt)  # soft targets too
    w = {"none": None, "row": rng.random((shape[0], 1)).astype(dt), "full": rng.random(shape).astype(dt)}[weighted]
    pw = {"none": None, "classes": rng.random(shape[1]).astype(dt) * 3, "scalar": np.array([2.5], dt)}[pos]
    loss, grad = ref.bce_with_logits(x, t, w, pw, reduction, need_grad)
    got_loss, got_grad = impl.get(impl.mod.bce_with_logits(impl.put(layout(x, kind)), impl.put(layout(t, kind)),
                                                           impl.put(w), impl.put(pw), reduction, need_grad))
    if reduction == "none":
        same(got_loss, loss, "loss")
    else:
        close(got_loss, loss, dt, "loss")
    if need_grad:
        same(got_grad, grad, "grad")
    else:
        assert got_grad is None


def test_bce_parallel_twin(impl, threads):
    rng = np.random.default_rng(8)
    x, t, pw = randn(rng, (33, 7), np.float32, 5.0), rng.random((33, 7)).astype(np.float32), \
        rng.random(7).astype(np.float32)
    for reduction in ("none", "sum"):
        loss, grad = impl.get(impl.mod.bce_with_logits(impl.put(x), impl.put(t), None, impl.put(pw), reduction))
        eloss, egrad = ref.bce_with_logits(x, t, None, pw, reduction)
        close(loss, eloss, np.float32)
        same(grad, egrad)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_bce_blocks_keep_the_reference_bits(impl, threads, monkeypatch, weighted):
    """The CPU kernel works in blocks (on each thread): block edges that cut through rows and through the repeat
    of pos_weight must not change a bit of the per-element loss or the gradient. The CPU kernel reduces the same
    per-element losses with the reference's own sum, so its reduced loss keeps the bits too."""
    if impl.name == "numba":
        monkeypatch.setattr(impl.mod, "BCE_BLOCK", 5)
    rng = np.random.default_rng(15)
    x, t = randn(rng, (41, 7), np.float32, 6.0), rng.random((41, 7)).astype(np.float32)
    w, pw = None, None
    if weighted:
        w, pw = rng.random((41, 1)).astype(np.float32), rng.random(7).astype(np.float32) * 3
    for reduction in ("none", "sum", "mean"):
        loss, grad = impl.get(impl.mod.bce_with_logits(impl.put(x), impl.put(t), impl.put(w), impl.put(pw),
                                                       reduction))
        eloss, egrad = ref.bce_with_logits(x, t, w, pw, reduction)
        same(grad, egrad, "grad")
        if reduction == "none" or impl.name == "numba":
            same(loss, eloss, f"loss ({reduction})")
        else:
            close(loss, eloss, np.float32, f"loss ({reduction})")


@requires_torch
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_follows_pytorch(reduction):
    import torch
    rng = np.random.default_rng(9)
    x, t = randn(rng, (8, 3), np.float64, 10.0), rng.random((8, 3))
    w, pw = rng.random((8, 1)), rng.random(3) * 2
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.from_numpy(t), weight=torch.from_numpy(w),
                                                              pos_weight=torch.from_numpy(pw), reduction=reduction)
    tl.sum().backward()
    loss, grad = kernels.module("cpu").bce_with_logits(x, t, w, pw, reduction)
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_bce_errors(impl):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="target shape"):
        impl.mod.bce_with_logits(impl.put(x), impl.put(np.zeros((4, 2), np.float32)))
    with pytest.raises(ValueError, match="pos_weight of shape"):
        impl.mod.bce_with_logits(impl.put(x), impl.put(x), None, impl.put(np.ones(4, np.float32)))
    with pytest.raises(ValueError, match="reduction"):
        impl.mod.bce_with_logits(impl.put(x), impl.put(x), reduction="avg")


@given(spec=arrays(), kind=layouts)
def test_log_softmax_matches_reference(impl, spec, kind):
    shape, rng, dt, scale = spec
    x, g = randn(rng, shape, dt, scale), randn(rng, shape, dt)
    y = ref.log_softmax_fwd(x)
    close(impl.get(impl.mod.log_softmax_fwd(impl.put(layout(x, kind)))), y, dt, "log_softmax")
    close(impl.get(impl.mod.log_softmax_bwd(impl.put(layout(y, kind)), impl.put(layout(g, kind)))),
          ref.log_softmax_bwd(y, g), dt, "log_softmax_bwd")


def test_log_softmax_rows_and_parallel_twin(impl, threads):
    rng = np.random.default_rng(10)
    for shape in [(5,), (3, 4, 6), (65, 9)]:
        x = randn(rng, shape, np.float64, 5.0)
        y = impl.get(impl.mod.log_softmax_fwd(impl.put(x)))
        close(y, ref.log_softmax_fwd(x), np.float64)
        np.testing.assert_allclose(np.exp(y).sum(-1), 1.0, rtol=1e-12)
    x = np.array([[0.0, -np.inf, 1.0], [1000.0, 0.0, -1000.0]])
    y = impl.get(impl.mod.log_softmax_fwd(impl.put(x)))
    assert y[0, 1] == -np.inf and np.isfinite(y[0, [0, 2]]).all() and np.isfinite(y[1]).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@given(spec=arrays(), weighted=st.booleans(), need_grad=st.booleans(), kind=layouts)
def test_cross_entropy_matches_reference(impl, reduction, spec, weighted, need_grad, kind):
    shape, rng, dt, scale = spec
    x = randn(rng, shape, dt, scale)
    target = rng.integers(0, shape[1], shape[0])
    target[rng.random(shape[0]) < 0.2] = -100  # ignored rows
    w = rng.random(shape[1]).astype(dt) + 0.1 if weighted else None
    with np.errstate(invalid="ignore", divide="ignore"):  # every row ignored: mean is 0/0 = nan, as PyTorch
        loss, grad = ref.cross_entropy(x, target, w, -100, reduction, need_grad)
        got_loss, got_grad = impl.get(impl.mod.cross_entropy(impl.put(layout(x, kind)), impl.put(target),
                                                             impl.put(w), -100, reduction, need_grad))
    if reduction == "mean" and not np.isfinite(loss):
        assert not np.isfinite(got_loss)
        return
    # a row's loss is logsumexp(x) - x[t]: a difference of terms as large as the logits, so its rounding error is
    # relative to them (a confident row's loss of 1e-7 carries an error of an ulp of the logits)
    wmax = 1.0 if w is None else float(w.max())
    terms = (np.abs(x).max() + 1) * (shape[0] if reduction == "sum" else 1) * wmax
    close(got_loss, loss, dt, "loss", scale=max(float(np.max(np.abs(loss))), terms))
    if need_grad:  # softmax - onehot: at a confident target, 1 - 1e-12 minus 1; again relative to the terms
        kept = target != -100
        denom = float((np.ones(shape[0]) if w is None else w[np.where(kept, target, 0)])[kept].sum())
        close(got_grad, grad, dt, "grad", scale=wmax / (denom if reduction == "mean" else 1.0))
    else:
        assert got_grad is None


def test_cross_entropy_parallel_twin(impl, threads):
    rng = np.random.default_rng(11)
    x, target = randn(rng, (40, 6), np.float32, 4.0), rng.integers(0, 6, 40)
    for a, e in zip(impl.get(impl.mod.cross_entropy(impl.put(x), impl.put(target), None, -100, "mean")),
                    ref.cross_entropy(x, target, None, -100, "mean")):
        close(a, e, np.float32)


@requires_torch
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_follows_pytorch(reduction):
    import torch
    rng = np.random.default_rng(12)
    x, target, w = randn(rng, (10, 4), np.float64, 3.0), rng.integers(0, 4, 10), rng.random(4) + 0.5
    target[2] = -100
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tx, torch.from_numpy(target), weight=torch.from_numpy(w),
                                           reduction=reduction)
    tl.sum().backward()
    loss, grad = kernels.module("cpu").cross_entropy(x, target, w, -100, reduction)
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_cross_entropy_errors(impl):
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(IndexError, match="target 4 at row 1 is out of range for 4 classes"):
        impl.mod.cross_entropy(impl.put(x), impl.put(np.array([0, 4, 1])))
    with pytest.raises(ValueError, match="target shape"):
        impl.mod.cross_entropy(impl.put(x), impl.put(np.array([0, 1])))
    with pytest.raises(TypeError, match="integer class indices"):
        impl.mod.cross_entropy(impl.put(x), impl.put(np.zeros(3, np.float32)))


# ---- above the real parallel threshold -------------------------------------------------------------------------
@requires_numba
def test_sizes_above_the_default_parallel_threshold():
    from tinygen.kernels import cpu
    n = kthreads.PARALLEL_MIN + 7  # odd: chunks of unequal length
    rng = np.random.default_rng(13)
    x, g = randn(rng, n, np.float32), randn(rng, n, np.float32)
    same(cpu.leaky_relu_fwd(x, 0.2), ref.leaky_relu_fwd(x, 0.2))
    same(cpu.sigmoid_bwd(x, g), ref.sigmoid_bwd(x, g))
    p1, p2 = x.copy(), x.copy()
    state1 = [np.zeros_like(x) for _ in range(2)]
    state2 = [np.zeros_like(x) for _ in range(2)]
    cpu.adam_step(p1, g, *state1, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
    ref.adam_step(p2, g, *state2, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
    same(p1, p2)


@requires_numba
@pytest.mark.parametrize("split_from", [0, 1 << 17])
def test_optimizer_updates_above_the_update_threshold_keep_the_reference_bits(split_from, monkeypatch):
    # 0: on one thread; else split into runs of elements on Numba's threads (cpu._update_in_chunks, the
    # multi-tensor loop's parallel twin) from split_from elements: each element as in one loop
    from tinygen.kernels import cpu
    monkeypatch.setattr(kthreads, "UPDATE_PARALLEL_MIN", split_from)
    n = (1 << 17) * 2 + 7
    rng = np.random.default_rng(15)
    x, g = randn(rng, n, np.float32), randn(rng, n, np.float32)
    results = []
    for mod in (cpu, ref):
        p, buf = x.copy(), np.zeros_like(x)
        for first in (True, False):
            mod.sgd_step(p, g, buf, 1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4, first_step=first)
        results.append(p)
    same(*results)
    p1, p2 = x.copy(), x.copy()
    states = [[np.zeros_like(x) for _ in range(3)] for _ in range(2)]
    for mod, p, (v, ga, buf) in zip((cpu, ref), (p1, p2), states):
        for _ in range(2):
            mod.rmsprop_step(p, g, v, ga, buf, 1e-2, momentum=0.9, centered=True)
    same(p1, p2)


@requires_numba
@pytest.mark.parametrize("layer, forked, split", [("tbb", False, True), ("omp", False, True),
                                                  ("workqueue", False, False), ("omp", True, False)])
def test_updates_split_on_numbas_tbb_and_openmp_layers(layer, forked, split, monkeypatch):
    # workqueue must not be entered from two threads, and Numba ends a forked child that runs a parallel loop on its
    # OpenMP layer: there an update runs on the calling thread (the same bits either way)
    import numba
    from tinygen.kernels import cpu
    if cpu._threads() < 2:
        pytest.skip("Numba runs with one thread here: nothing is split")
    monkeypatch.setattr(kthreads, "UPDATE_PARALLEL_MIN", 1)
    monkeypatch.setattr(numba, "threading_layer", lambda: layer)
    monkeypatch.setattr(kthreads, "_serial_only", forked)
    calls = []
    parallel = dict(cpu._PARALLEL)
    counted = {k: (lambda *a, _f=f: (calls.append(1), _f(*a))) for k, f in parallel.items()}
    monkeypatch.setattr(cpu, "_PARALLEL", counted)
    rng = np.random.default_rng(3)
    p, g = randn(rng, 1000, np.float32), randn(rng, 1000, np.float32)
    expected = p.copy()
    ref.sgd_step(expected, g, None, 1e-2)
    cpu.sgd_steps([p], [g], None, 1e-2)
    same(p, expected)
    assert bool(calls) is split
    assert bool(kthreads.parallel_chunks(1 << 30, lambda: 2)) is not forked  # the other kernels' twins too


@requires_numba
@pytest.mark.parametrize("n", [0, 1, 2, 5, 1001])
def test_ufunc_chunks_cover_every_element_once(monkeypatch, n):
    from tinygen.kernels import cpu
    monkeypatch.setattr(kthreads, "UFUNC_PARALLEL_MIN", 0)
    seen = np.zeros(n, np.int64)

    def part(lo, hi):
        assert 0 <= lo <= hi <= n
        seen[lo:hi] += 1
    cpu._in_chunks(part, n)
    assert (seen == 1).all()


@requires_numba
def test_threaded_transcendentals_keep_the_reference_bits(monkeypatch):
    from tinygen.kernels import cpu
    monkeypatch.setattr(kthreads, "UFUNC_PARALLEL_MIN", 1 << 14)  # split from a size the test keeps small
    n = kthreads.UFUNC_PARALLEL_MIN * 3 + 7  # several chunks of unequal length wherever the threads allow
    rng = np.random.default_rng(14)
    x, t = randn(rng, (n,), np.float32, 6.0), rng.random(n).astype(np.float32)
    same(cpu.tanh_fwd(x), ref.tanh_fwd(x))
    same(cpu.sigmoid_fwd(x), ref.sigmoid_fwd(x))
    loss, grad = cpu.bce_with_logits(x, t, reduction="none")
    eloss, egrad = ref.bce_with_logits(x, t, reduction="none")
    same(loss, eloss)
    same(grad, egrad)


# ---- the switch, lookup and threads ---------------------------------------------------------------------------------
def test_lookup_policy():
    x32 = np.zeros((4, 3), np.float32)
    with kernels.enabled_as(False):
        assert not kernels.enabled()
        assert kernels.lookup("leaky_relu_fwd", x32) is None
        assert kernels.module("cpu") is ref
    assert kernels.lookup("leaky_relu_fwd", standin.asarray(x32)) is None  # the stand-in takes the plain path
    assert kernels.lookup("leaky_relu_fwd", np.float32(1.0)) is None
    assert kernels.get("leaky_relu_fwd", standin.asarray(x32)) is ref.leaky_relu_fwd  # get: else the reference
    assert kernels.get("mm", x32) is gemm.mm and kernels.get("mm", standin.asarray(x32)) is ref.mm
    with kernels.enabled_as(False):
        assert kernels.get("mm", x32) is gemm.mm  # operand choices for BLAS need no Numba
    if not NUMBA_ON:
        assert kernels.lookup("leaky_relu_fwd", x32) is None
        return
    from tinygen.kernels import cpu
    assert kernels.lookup("leaky_relu_fwd", x32) is cpu.leaky_relu_fwd
    assert kernels.lookup("leaky_relu_fwd", x32.astype(np.float16)) is None
    assert kernels.lookup("leaky_relu_fwd", x32.astype(np.int64)) is None
    assert kernels.lookup("tanh_fwd", x32) is None  # no faster than NumPy: not handed out
    assert kernels.lookup("no_such_kernel", x32) is None
    big = np.zeros((1024, 1000), np.float32)
    assert kernels.lookup("cross_entropy", big) is None  # above its size cap the reference is faster
    assert set(kernels.CPU_USED) <= set(kernels.KERNELS) and set(kernels.GPU_USED) <= set(kernels.KERNELS)
    for mod, names in ((ref, kernels.KERNELS), (gpu, kernels.GPU_USED), (cpu, kernels.CPU_USED)):
        for name in names:
            assert callable(getattr(mod, name)), f"{mod.__name__}.{name} is missing"


def test_set_num_threads():
    before = tinygen.get_num_threads()
    try:
        tinygen.set_num_threads(1)
        assert tinygen.get_num_threads() == 1
        if NUMBA_ON:
            import numba
            assert numba.get_num_threads() == 1
        if importlib.util.find_spec("threadpoolctl"):
            import threadpoolctl
            blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
            assert all(i["num_threads"] == 1 for i in blas)
    finally:
        tinygen.set_num_threads(before)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            tinygen.set_num_threads(bad)


def _python(code, **env):
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_import_does_not_load_numba():
    out = _python("import sys, tinygen, tinygen.kernels, tinygen.kernels.threads, tinygen.kernels.gemm\n"
                  "assert 'numba' not in sys.modules, 'numba imported by import tinygen'\n"
                  "print('ok')")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_works_without_numba():
    """numba not importable: the switch is off, lookup gives None, the reference and thread setting still work."""
    code = (
        "import sys\n"
        "sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "import tinygen\n"
        "from tinygen import kernels\n"
        "from tinygen.kernels import reference as ref\n"
        "assert kernels.enabled() is False\n"
        "assert kernels.lookup('leaky_relu_fwd', np.zeros(3, np.float32)) is None\n"
        "assert kernels.module('cpu') is ref\n"
        "tinygen.set_num_threads(1); assert tinygen.get_num_threads() == 1\n"
        "try:\n"
        "    kernels.set_enabled(True)\n"
        "except ImportError as e:\n"
        "    assert 'numba' in str(e)\n"
        "else:\n"
        "    raise AssertionError('set_enabled(True) without numba did not raise')\n"
        "p = np.ones(3); ref.sgd_step(p, np.ones(3), None, 0.5); assert (p == 0.5).all()\n"
        "print('ok')\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_environment_switch():
    out = _python("from tinygen import kernels\nprint(kernels.enabled())", TINYGEN_NUMBA="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    if importlib.util.find_spec("numba"):
        out = _python("from tinygen import kernels\nprint(kernels.enabled())", TINYGEN_NUMBA="1")
        assert out.stdout.strip() == "True", out.stderr


# ---- gpu.py's fusion machinery (no GPU needed) -------------------------------------------------------------------
def test_gpu_fused_path_caches_per_option_and_falls_back(monkeypatch):
    """Treat the stand-in as CuPy with an identity 'fuse': each option combination is traced once, results are the
    reference's, and a fusion failure warns once and runs the body unfused."""
    traced = []

    def fake_fuse(fn, name):
        traced.append(name)
        return fn

    monkeypatch.setattr(gpu, "_is_cupy", lambda xp: True)
    monkeypatch.setattr(gpu, "_fuse", fake_fuse)
    monkeypatch.setattr(gpu, "_cache", {})
    rng = np.random.default_rng(14)
    x, g = randn(rng, (5, 4), np.float32), randn(rng, (5, 4), np.float32)
    for _ in range(2):
        same(gpu.leaky_relu_fwd(standin.asarray(x), 0.2).get(), ref.leaky_relu_fwd(x, 0.2))
        same(gpu.elu_fwd(standin.asarray(x), 0.5).get(), ref.elu_fwd(x, 0.5))
    assert len(traced) == 2  # one kernel per activation, reused on the second call
    t = (x > 0).astype(np.float32)
    for weight in (None, np.float32(2.0) + 0 * x, np.float32(2.0) + 0 * x):
        loss, grad = gpu.bce_with_logits(standin.asarray(x), standin.asarray(t),
                                         None if weight is None else standin.asarray(weight))
        eloss, egrad = ref.bce_with_logits(x, t, weight)
        same(loss.get(), eloss)
        same(grad.get(), egrad)
    assert len(traced) == 4  # unweighted and weighted BCE: two kernels

    def broken_fuse(fn, name):
        raise NotImplementedError("this construct cannot be fused")

    monkeypatch.setattr(gpu, "_fuse", broken_fuse)
    monkeypatch.setattr(gpu, "_cache", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            same(gpu.sigmoid_fwd(standin.asarray(x)).get(), ref.sigmoid_fwd(x))
    assert len([w for w in caught if "could not fuse" in str(w.message)]) == 1


# ---- inside the ops: the same results with the kernels on and off, and exact second derivatives --------------------
def _activation_ops():
    import tinygen
    return [("relu", lambda x: x.relu()), ("leaky_relu", lambda x: tinygen.leaky_relu(x, 0.2)),
            ("tanh", lambda x: x.tanh()), ("sigmoid", lambda x: x.sigmoid()),
            ("elu", lambda x: tinygen.elu(x, 0.7)), ("softplus", lambda x: tinygen.softplus(x, 2.0, 3.0))]


@pytest.fixture
def spy(monkeypatch):
    """Record the kernel names the ops ask for and get (proof that the fused path really ran)."""
    got = []
    real = kernels.lookup

    def lookup(name, array):
        fn = real(name, array)
        if fn is not None:
            got.append(name)
        return fn
    monkeypatch.setattr(kernels, "lookup", lookup)
    return got


@requires_numba
@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_ops_same_with_and_without_kernels(index, dtype, spy):
    import tinygen
    name, fn = _activation_ops()[index]
    rng = np.random.default_rng(20)
    x, g = randn(rng, (9, 7), dtype, 3.0), randn(rng, (9, 7), dtype)
    x[0, 0] = 0.0
    out = {}
    for flag in (False, True):
        with kernels.enabled_as(flag):
            t = tinygen.tensor(x, requires_grad=True)
            y = fn(t)
            y.backward(tinygen.tensor(g))
            out[flag] = (y.detach().numpy(), t.grad.numpy())
    assert f"{name}_bwd" in spy  # the plain backward took the fused kernel
    if name == "softplus":  # the kernel's log(1 + e^bx) is max + log1p(exp(-|bx|)), NumPy's logaddexp rounds apart
        close(out[True][0], out[False][0], dtype)
    else:
        same(out[True][0], out[False][0], "forward")
    same(out[True][1], out[False][1], "gradient")


@requires_numba
@pytest.mark.parametrize("index", range(6))
def test_activation_ops_double_backward_with_kernels(index, spy):
    """create_graph=True must take the differentiable backward: gradgradcheck passes with the kernels on, and the
    fused backward is not asked for while the gradient's graph is recorded."""
    import tinygen
    name, fn = _activation_ops()[index]
    rng = np.random.default_rng(21)
    x = randn(rng, (4, 3), np.float64, 2.0)
    x[np.abs(x) < 0.1] = 0.5  # keep away from the kinks, where finite differences are meaningless
    t = tinygen.tensor(x, requires_grad=True)
    assert tinygen.gradgradcheck(fn, (t,))
    del spy[:]
    (gx,) = tinygen.grad(fn(t).sum(), t, create_graph=True)
    assert f"{name}_bwd" not in spy
    if name not in ("relu", "leaky_relu"):  # piecewise linear: the gradient is constant, nothing to record
        assert gx.requires_grad


@requires_numba
def test_gradient_penalty_same_with_and_without_kernels(spy):
    """A WGAN-GP style step (gradient of the critic in its input, its norm penalized, differentiated again) gives
    the same parameter gradients with the kernels on and off."""
    import tinygen
    from tinygen import nn
    rng = np.random.default_rng(22)
    x = randn(rng, (8, 5), np.float64)
    grads = {}
    for flag in (False, True):
        with kernels.enabled_as(flag):
            tinygen.manual_seed(0)
            critic = nn.Sequential(nn.Linear(5, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.Tanh(),
                                   nn.Linear(16, 1)).to(tinygen.float64)
            xt = tinygen.tensor(x, requires_grad=True)
            out = critic(xt)
            (gx,) = tinygen.grad(out.sum(), xt, create_graph=True)
            penalty = ((gx * gx).sum(1).sqrt() - 1) ** 2
            (out.mean() + 10 * penalty.mean()).backward()
            grads[flag] = [p.grad.numpy().copy() for p in critic.parameters()]
    assert "bias_act_bwd" in spy  # the last backward is plain: it used the kernels where it could (Linear + act fused)
    for a, b in zip(grads[True], grads[False]):
        close(a, b, np.float64)


OPTIM_CASES = [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
               ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
               ("Adam", dict(lr=1e-2, betas=(0.5, 0.999))), ("Adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
               ("AdamW", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
               ("RMSprop", dict(lr=1e-2)), ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.9, weight_decay=0.1))]


@requires_numba
@pytest.mark.parametrize("name,options", OPTIM_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_same_bits_with_and_without_kernels(name, options, dtype, spy):
    """tinygen.optim takes the one-pass kernel when it can; it rounds as the array code does, step for step."""
    import tinygen
    rng = np.random.default_rng(23)
    p0 = [randn(rng, (7, 5), dtype), randn(rng, 5, dtype)]
    grads = [[randn(rng, a.shape, dtype) for a in p0] for _ in range(4)]
    final = {}
    for flag in (False, True):
        with kernels.enabled_as(flag):
            params = [tinygen.tensor(a.copy(), requires_grad=True) for a in p0]
            opt = getattr(tinygen.optim, name)(params, **options)
            for gs in grads:
                for p, g in zip(params, gs):
                    p.grad = tinygen.tensor(g)
                opt.step()
            final[flag] = [p.detach().numpy().copy() for p in params]
    assert ("adam_steps" if name.startswith("Adam") else f"{name.lower()}_steps") in spy  # the multi-tensor form
    for a, b in zip(final[True], final[False]):
        same(a, b)


@requires_numba
@pytest.mark.parametrize("shape", [(16, 5), (6, 4, 3)])
def test_batch_norm_same_with_and_without_kernels(shape, spy):
    import tinygen
    from tinygen.nn import functional as F
    rng = np.random.default_rng(24)
    x, g = randn(rng, shape, np.float64, 2.0) + 1.0, randn(rng, shape, np.float64)
    w, b = randn(rng, shape[1], np.float64), randn(rng, shape[1], np.float64)
    out = {}
    for flag in (False, True):
        with kernels.enabled_as(flag):
            xt, wt, bt = (tinygen.tensor(a, requires_grad=True) for a in (x, w, b))
            rm, rv = tinygen.zeros(shape[1], dtype=tinygen.float64), tinygen.ones(shape[1], dtype=tinygen.float64)
            y = F.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.3)
            y.backward(tinygen.tensor(g))
            out[flag] = [y.detach().numpy(), rm.numpy(), rv.numpy(), xt.grad.numpy(), wt.grad.numpy(),
                         bt.grad.numpy()]
    assert "batchnorm_fwd" in spy and "batchnorm_bwd" in spy
    for name, a, e in zip(("y", "running_mean", "running_var", "gx", "gw", "gb"), out[True], out[False]):
        close(a, e, np.float64, name)


@requires_numba
def test_batch_norm_double_backward_with_kernels(spy):
    import tinygen
    from tinygen.nn import functional as F
    rng = np.random.default_rng(25)
    x, w, b = (tinygen.tensor(randn(rng, s, np.float64), requires_grad=True) for s in ((6, 3), 3, 3))
    assert tinygen.gradgradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (x, w, b))
    assert "batchnorm_fwd" in spy


def _loss_cases():
    import tinygen
    from tinygen.nn import functional as F
    rng = np.random.default_rng(26)
    logits, t01 = randn(rng, (12, 5), np.float64, 3.0), rng.random((12, 5))
    labels = rng.integers(0, 5, 12)
    labels[3] = -100
    w, pw = rng.random(5) + 0.5, rng.random(5) * 2
    tt, tl, tw, tpw = (tinygen.tensor(a) for a in (t01, labels, w, pw))
    cases = []
    for red in ("none", "mean", "sum"):
        cases.append((f"bce-{red}", "bce_with_logits", logits,
                      lambda z, red=red: F.binary_cross_entropy_with_logits(z, tt, tw, red, tpw)))
        cases.append((f"ce-{red}", "cross_entropy", logits, lambda z, red=red: F.cross_entropy(z, tl, tw, -100, red)))
    cases.append(("log_softmax", "log_softmax_bwd", logits, lambda z: z.log_softmax(-1)))
    return cases


@requires_numba
@pytest.mark.parametrize("index", range(7))
def test_losses_same_with_and_without_kernels(index, spy):
    import tinygen
    label, kernel, x, fn = _loss_cases()[index]
    rng = np.random.default_rng(27)
    out = {}
    for flag in (False, True):
        with kernels.enabled_as(flag):
            z = tinygen.tensor(x, requires_grad=True)
            y = fn(z)
            g = randn(rng, y.shape, np.float64) if y.ndim else None
            y.backward(None if g is None else tinygen.tensor(g))
            out[flag] = (y.detach().numpy(), z.grad.numpy())
            rng = np.random.default_rng(27)
    assert kernel in spy, label
    close(out[True][0], out[False][0], np.float64, f"{label} value")
    close(out[True][1], out[False][1], np.float64, f"{label} gradient")


@requires_numba
@pytest.mark.parametrize("index", range(7))
def test_losses_double_backward_with_kernels(index):
    import tinygen
    label, _, x, fn = _loss_cases()[index]
    assert tinygen.gradgradcheck(fn, (tinygen.tensor(x, requires_grad=True),)), label


def test_this_module_passes_without_numba():
    """The whole module again in a fresh interpreter where numba cannot be imported: the reference and CuPy tests
    pass, the Numba ones skip with their reason."""
    code = ("import sys\n"
            "sys.modules['numba'] = None\n"
            "import pytest\n"
            f"sys.exit(pytest.main([{os.path.abspath(__file__)!r}, '-q', '-x', '-p', 'no:cacheprovider', "
            "'-k', 'not without_numba and not environment_switch']))\n")
    out = _python(code, CI="1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "skipped" in out.stdout


# ---- the per-activation kernels are made from one list ---------------------------------------------------------------
def test_activation_kernels_come_from_one_list():
    import inspect
    names = {f"{act}_{d}" for act in ref.ACTIVATION_PARAMS for d in ("fwd", "bwd")}
    assert names <= set(kernels.KERNELS)
    mods = [ref, gpu] + ([__import__("tinygen.kernels.cpu", fromlist=["cpu"])] if NUMBA_ON else [])
    for mod in mods:
        for act, params in ref.ACTIVATION_PARAMS.items():
            fwd = getattr(mod, f"{act}_fwd")
            assert fwd.__module__ == mod.__name__
            assert list(inspect.signature(fwd).parameters) == ["x"] + [n for n, _ in params]
    x = randn(np.random.default_rng(20), (6, 5), np.float32)
    g = randn(np.random.default_rng(21), (6, 5), np.float32)
    same(ref.leaky_relu_fwd(x, negative_slope=0.3), ref.act_fwd(x, "leaky_relu", 0.3))
    same(ref.softplus_bwd(x, g, threshold=1.5), ref.act_bwd(x, g, "softplus", 1.0, 1.5))
    same(ref.elu_fwd(x), ref.act_fwd(x, "elu", 1.0))  # the default parameter
    with pytest.raises(TypeError):
        ref.relu_fwd(x, 0.1)


# ---- the matrix product: gemm.py's operand choices against the reference's a @ b -----------------------------------
@pytest.mark.parametrize("case", ["outer", "small batch, transposed weight", "plain"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_computes_the_reference_product(case, dtype):
    rng = np.random.default_rng(22)
    if case == "outer":
        a, b = randn(rng, (7, 1), dtype), randn(rng, (1, 9), dtype)
    elif case == "plain":
        a, b = randn(rng, (33, 20), dtype), randn(rng, (20, 11), dtype)
    else:  # x @ W.T with W of (out, in) = (300, 512): b is Fortran-ordered and large, a has few rows
        a, b = randn(rng, (8, 512), dtype), randn(rng, (300, 512), dtype).T
        assert b.size >= gemm.SWAP_MIN_SIZE and a.shape[0] <= gemm.SWAP_MAX_ROWS
    got, expected = gemm.mm(a, b), ref.mm(a, b)
    assert got.shape == expected.shape and got.dtype == expected.dtype and got.flags.c_contiguous
    if case == "outer":
        same(got, expected)  # one product per element: exact
    else:
        close(got, expected, dtype)
    st = standin.asarray
    np.testing.assert_array_equal(gemm.mm(st(a), st(b)).get(), got)  # the stand-in takes the CPU's route


@pytest.mark.parametrize("shapes, route", [(((16, 784), (784, 512)), "_serial"), (((4, 16, 64), (4, 64, 32)), "_serial"),
                                           (((64, 512), (512, 512)), "_split"), (((7, 1), (1, 9)), None)])
def test_gemm_routes_products_by_size(monkeypatch, shapes, route):
    """By default every product runs on BLAS's own threads. With BLAS_PARALLEL_MIN set (a busy machine), products
    below it (per matrix of a stack) run on one BLAS thread, larger 2-D ones are split across tinygen's threads;
    outer products make no BLAS call. The product is the same either way."""
    routed = []
    real = kthreads.on_one_blas_thread
    monkeypatch.setattr(kthreads, "on_one_blas_thread", lambda fn, *args: routed.append(fn.__name__) or real(fn, *args))
    rng = np.random.default_rng(24)
    a, b = (randn(rng, s, np.float32) for s in shapes)
    monkeypatch.setattr(kthreads, "BLAS_PARALLEL_MIN", 0)  # the default
    close(gemm.mm(a, b), a @ b if a.shape[-1] > 1 else a * b, np.float32)
    assert routed == []
    monkeypatch.setattr(kthreads, "BLAS_PARALLEL_MIN", 1 << 23)
    got = gemm.mm(a, b)
    assert routed == ([route] if route else [])
    close(got, a @ b if a.shape[-1] > 1 else a * b, np.float32)
    monkeypatch.setattr(kthreads, "BLAS_PARALLEL_MIN", 1 << 40)  # the setting: everything on one thread
    routed.clear()
    gemm.mm(a, b)
    assert routed == (["_serial"] if route else [])


@pytest.mark.parametrize("m, k, n, transposed_b", [(64, 300, 40, False), (40, 300, 64, True), (37, 50, 91, False),
                                                  (91, 50, 37, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_split_by_rows_or_columns_is_the_product(m, k, n, transposed_b, dtype):
    """The split product (rows of the result, or of its transpose when it is wider than tall), with chunk bounds
    aligned to 8 rows: C-ordered, and the product within rounding."""
    rng = np.random.default_rng(25)
    a = randn(rng, (m, k), dtype)
    b = randn(rng, (n, k), dtype).T if transposed_b else randn(rng, (k, n), dtype)
    for count in (2, 3):
        got = gemm._split(count, a, b)
        assert got.shape == (m, n) and got.dtype == dtype and got.flags.c_contiguous
        close(got, a @ b, dtype)
        same(gemm._split(count, standin.asarray(a), standin.asarray(b)).get(), got)  # the CPU stand-in: same bits
    same(gemm._split(1, a, b), gemm._product(a, b))  # one thread: one call


def test_in_chunks_runs_a_chunk_its_thread_has_not_started():
    """When the pool thread is busy (here: blocked; on a loaded machine: without a core), the calling thread runs
    the chunk itself instead of waiting for that thread."""
    import threading
    n_threads = 2
    kthreads.in_chunks(lambda lo, hi: None, 10, lambda: n_threads, min_size=0)  # the pool exists
    pool = kthreads._pools[n_threads - 1]
    release = threading.Event()
    blocker = pool.submit(release.wait, 30)
    try:
        ran = []
        kthreads.in_chunks(lambda lo, hi: ran.append((lo, hi, threading.get_ident())), 100, lambda: n_threads,
                           min_size=0)
        assert sorted(r[:2] for r in ran) == [(0, 50), (50, 100)]
        assert {r[2] for r in ran} == {threading.get_ident()}
    finally:
        release.set()
        blocker.result()
    ran = []  # a free pool thread takes its chunk (or the caller does, if it gets there first): every chunk once
    kthreads.in_chunks(lambda lo, hi: ran.append((lo, hi)), 100, lambda: n_threads, min_size=0)
    assert sorted(ran) == [(0, 50), (50, 100)]


@pytest.fixture
def pairs(monkeypatch):
    """The calls of threads.run_pair (one per product pair run at once), with tinygen on two threads, NumPy's
    BLAS (with MKL's products run one after the other: tests/test_blas.py) and pairs up to 32 rows (off by
    default: test_mm_pair_runs_one_after_the_other_by_default)."""
    from tinygen.kernels import blas
    monkeypatch.setattr(blas, "_state", (None, {}, None))
    monkeypatch.setattr(gemm, "PAIR_MAX_ROWS", 32)
    calls = []
    real = kthreads.run_pair
    monkeypatch.setattr(kthreads, "run_pair", lambda f, s: calls.append(1) or real(f, s))
    monkeypatch.setattr(kthreads, "get_num_threads", lambda: 2)
    return calls


@pytest.mark.parametrize("batch, width, paired", [(16, 784, True), (32, 512, True), (33, 784, False),
                                                  (16, 100, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mm_pair_runs_a_small_batchs_two_gradient_products_at_once(monkeypatch, pairs, batch, width, paired, dtype):
    """A layer's input and weight gradients (g @ W, g.T @ x) run at once, each on one BLAS thread, when the batch
    has at most PAIR_MAX_ROWS rows and each product PAIR_MIN multiply-adds (784 wide: 9.8M at batch 16; 100 wide:
    160k); never on one tinygen thread or with the setting at 0. Either way each result is the product, and the
    CPU stand-in takes the same route (the same bits)."""
    rng = np.random.default_rng(26)
    g, w, x = randn(rng, (batch, width), dtype), randn(rng, (width, 640), dtype), randn(rng, (batch, 640), dtype)
    gx, gw = gemm.mm_pair(g, w, g.T, x)
    can_set_blas = bool(kthreads._find_numpy_blas())
    assert len(pairs) == (1 if paired and can_set_blas else 0)
    assert gx.flags.c_contiguous and gw.flags.c_contiguous and gx.dtype == gw.dtype == dtype
    close(gx, g @ w, dtype)
    close(gw, g.T @ x, dtype)
    st = standin.asarray
    sgx, sgw = gemm.mm_pair(st(g), st(w), st(g).T, st(x))
    same(sgx.get(), gx)
    same(sgw.get(), gw)
    pairs.clear()
    for setting, threads in ((0, 2), (gemm.PAIR_MAX_ROWS, 1)):  # switched off; one thread
        monkeypatch.setattr(gemm, "PAIR_MAX_ROWS", setting)
        monkeypatch.setattr(kthreads, "get_num_threads", lambda n=threads: n)
        one_by_one = gemm.mm_pair(g, w, g.T, x)
        same(one_by_one[0], gemm.mm(g, w))
        same(one_by_one[1], gemm.mm(g.T, x))
    assert pairs == []


def test_mm_pair_runs_one_after_the_other_by_default(monkeypatch):
    """TINYGEN_MM_PAIR_MAX_ROWS is 0 unless set (pairs cost more than they saved where OpenBLAS's workers spin
    through a step: kernels/gemm.py): a batch-16 layer's two products go to no pool thread."""
    from tinygen import config
    assert config.SETTINGS["TINYGEN_MM_PAIR_MAX_ROWS"][0] == 0
    if "TINYGEN_MM_PAIR_MAX_ROWS" not in os.environ:
        assert gemm.PAIR_MAX_ROWS == 0
    monkeypatch.setattr(gemm, "PAIR_MAX_ROWS", 0)
    monkeypatch.setattr(kthreads, "get_num_threads", lambda: 2)
    calls = []
    monkeypatch.setattr(kthreads, "run_pair", lambda f, s: calls.append(1))
    rng = np.random.default_rng(29)
    g, w, x = randn(rng, (16, 784), np.float32), randn(rng, (784, 640), np.float32), randn(rng, (16, 640), np.float32)
    gx, gw = gemm.mm_pair(g, w, g.T, x)
    assert calls == []
    same(gx, gemm.mm(g, w))
    same(gw, gemm.mm(g.T, x))


def test_linear_backward_pairs_its_products_and_matches_torch(pairs):
    """nn.Linear's plain backward at a small batch takes mm_pair's route (the 784 -> 512 layer of the benchmark's
    MLP at batch 16); its gradients are PyTorch's, and a compiled step gives eager's bits."""
    torch = pytest.importorskip("torch")
    import tinygen as tg
    rng = np.random.default_rng(27)
    x, b = randn(rng, (16, 784), np.float32), randn(rng, (512,), np.float32)
    w = (randn(rng, (512, 784), np.float64) / 28).astype(np.float32)  # PyTorch's init scale: tanh not saturated
    layer = tg.nn.Linear(784, 512)
    layer.load_state_dict({"weight": tg.tensor(w), "bias": tg.tensor(b)})
    xt = tg.tensor(x, requires_grad=True)
    (layer(xt).tanh() * 0.5).sum().backward()
    assert len(pairs) == (1 if kthreads._find_numpy_blas() else 0)
    ref_layer = torch.nn.Linear(784, 512)
    with torch.no_grad():
        ref_layer.weight.copy_(torch.from_numpy(w))
        ref_layer.bias.copy_(torch.from_numpy(b))
    xr = torch.from_numpy(x).requires_grad_()
    (ref_layer(xr).tanh() * 0.5).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad.numpy(), ref_layer.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    eager = (xt.grad.numpy().copy(), layer.weight.grad.numpy().copy())

    def step(inp):
        (layer(xt).tanh() * 0.5).sum().backward()
        return inp

    compiled = tg.compile(step)
    for _ in range(3):  # records, then replays
        xt.grad = layer.weight.grad = layer.bias.grad = None
        compiled(tg.tensor(x))
        same(xt.grad.numpy(), eager[0])
        same(layer.weight.grad.numpy(), eager[1])
    assert compiled.replays == 2


def test_paired_gradient_products_in_a_training_step_compiled_and_eager(pairs):
    """The benchmark's MLP (784-512-512-10, SGD with momentum) at batch 16, where both hidden layers' gradients are
    paired: five compiled steps give the eager steps' bits, and the pairs ran."""
    import tinygen as tg
    rng = np.random.default_rng(28)
    x, y = tg.tensor(randn(rng, (16, 784), np.float32)), tg.tensor(rng.integers(0, 10, 16))

    def trained(compiled):
        tg.manual_seed(5)
        net = tg.nn.Sequential(tg.nn.Linear(784, 512), tg.nn.ReLU(), tg.nn.Linear(512, 512), tg.nn.ReLU(),
                               tg.nn.Linear(512, 10))
        opt = tg.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = tg.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return loss
        run = tg.compile(step) if compiled else step
        losses = [run(x, y).item() for _ in range(5)]
        return losses, [p.detach().numpy().copy() for p in net.parameters()]
    eager_losses, eager_params = trained(False)
    assert len(pairs) == (5 if kthreads._find_numpy_blas() else 0)  # one pair a step: the 512 -> 512 layer
    compiled_losses, compiled_params = trained(True)
    assert compiled_losses == eager_losses
    for a, b in zip(compiled_params, eager_params):
        same(a, b)


def test_run_pair_runs_the_second_call_itself_when_its_thread_is_busy():
    """As in_chunks: a pool thread that has not started its call by the time the first one is done (blocked here;
    on a loaded machine, without a core) does not hold the caller; an error in either call reaches the caller."""
    import threading
    kthreads.run_pair(lambda: None, lambda: None)  # the pool exists
    pool = kthreads._pools[1]
    release = threading.Event()
    blocker = pool.submit(release.wait, 30)
    try:
        where = kthreads.run_pair(threading.get_ident, threading.get_ident)
        assert where == (threading.get_ident(), threading.get_ident())
    finally:
        release.set()
        blocker.result()
    assert kthreads.run_pair(lambda: 1, lambda: 2) == (1, 2)

    def fails():
        raise ValueError("in the pool")
    with pytest.raises(ValueError, match="in the pool"):
        kthreads.run_pair(lambda: None, fails)


@pytest.mark.skipif(importlib.util.find_spec("threadpoolctl") is None, reason="needs threadpoolctl")
def test_on_one_blas_thread_limits_numpys_blas_and_restores_it():
    from threadpoolctl import threadpool_info, threadpool_limits

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    libs = kthreads._find_numpy_blas()
    assert libs, "NumPy's BLAS was not found among the loaded libraries"
    with threadpool_limits(limits=2, user_api="blas"):
        outside = [lib.get_num_threads() for lib in libs]
        count, inside = kthreads.on_one_blas_thread(lambda c: (c, [lib.get_num_threads() for lib in libs]))
        assert inside == [1] * len(libs) and count == max(outside) == 2
        assert [lib.get_num_threads() for lib in libs] == outside
        before = counts()
        with pytest.raises(ZeroDivisionError):  # restored when the product fails too
            kthreads.on_one_blas_thread(lambda c: 1 / 0)
        assert counts() == before
        assert kthreads.on_one_blas_thread(lambda c, x, y: x + y, 2, 3) == 5  # arguments pass through


# ---- the multi-tensor Adam and SGD steps ---------------------------------------------------------------------------
def _many_parameters(monkeypatch, split_from, seed):
    """12 parameters and gradients for the multi-tensor steps: two calls of MULTI_TENSOR, float32 and float64, one
    transposed, one channels-last (both updated where they lie), one above 2^17 elements; ``split_from``: the
    update threshold (0: no split; 1: every call of the multi-tensor loop is split across threads)."""
    monkeypatch.setattr(kthreads, "UPDATE_PARALLEL_MIN", split_from)
    rng = np.random.default_rng(seed)
    shapes = [(5, 3), (7,), (1,), (4, 4), (2, 3, 2), (9,), (3, 1), (6,), (2, 2), ((1 << 17) + 3,), (3, 4)]
    dts = [np.float32] * 8 + [np.float64] * 3
    params = [randn(rng, s, dt) for s, dt in zip(shapes, dts)]
    params[3] = np.asfortranarray(params[3]).T  # not C-contiguous
    cl = randn(rng, (3, 4, 2, 2), np.float32)  # a channels-last convolution weight, with a C-ordered gradient
    params.append(np.ascontiguousarray(cl.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    return params, [randn(rng, p.shape, p.dtype) for p in params]


@requires_numba
@pytest.mark.parametrize("opts", ADAM_OPTIONS)
@pytest.mark.parametrize("split_from", [0, 1 << 17, 1])
@pytest.mark.parametrize("kept", [False, True])
def test_adam_steps_updates_many_parameters_as_adam_step_does_one(opts, split_from, kept, monkeypatch):
    # 12 parameters (two calls of MULTI_TENSOR), float32 and float64, one transposed, one channels-last and one
    # above the update threshold (its dtype's parameters split across threads, the split inside it; from 0: every
    # group split): the same bits as adam_step on each, and as the reference's loop; ``kept``: with an optimizer's
    # workspace, whose flat views of the parameters and states serve the later steps
    from tinygen.kernels import cpu
    opts = dict(opts)
    amsgrad, beta1 = opts.pop("amsgrad"), opts.pop("beta1", 0.9)
    opts.pop("count_array", None)  # the multi-tensor form takes one count for all
    lr = np.array(1e-2) if opts.pop("lr_array", False) else 1e-2
    params, grads = _many_parameters(monkeypatch, split_from, seed=31)

    def run(update):
        ps = [p.copy(order="K") for p in params]
        states = [[np.zeros_like(p) for p in ps] for _ in range(3)]
        for step in (1, 2, 3):
            update(ps, states, step)
        return ps + [a for s in states for a in s]

    def one_by_one(ps, states, step):
        for p, g, m, v, vmax in zip(ps, grads, *states):
            cpu.adam_step(p, g, m, v, vmax if amsgrad else None, lr, beta1, 0.999, 1e-8, step=step, **opts)

    def together(mod):
        ws = Workspace() if kept else None
        return lambda ps, states, step: mod.adam_steps(ps, grads, states[0], states[1], states[2] if amsgrad
                                                       else None, lr, beta1, 0.999, 1e-8, step=step, scratch=ws,
                                                       **opts)
    expected = run(one_by_one)
    for a, b in zip(run(together(cpu)), expected):
        same(a, b)
    for a, b in zip(run(together(ref)), expected):
        close(a, b, a.dtype)
    with pytest.raises(ValueError, match="adam_steps: state and gradient arrays must match"):
        cpu.adam_steps([params[0].copy()], [grads[1]], [np.zeros_like(params[0])], [np.zeros_like(params[0])], None,
                       1e-2, 0.9, 0.999, 1e-8, 0.0, False, 1)


@requires_numba
@pytest.mark.parametrize("opts", [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True,
                                                                             weight_decay=1e-2),
                                  dict(momentum=0.5, dampening=0.3, maximize=True)])
@pytest.mark.parametrize("split_from", [0, 1 << 17, 1])
@pytest.mark.parametrize("kept", [False, True])
def test_sgd_steps_updates_many_parameters_as_sgd_step_does_one(opts, split_from, kept, monkeypatch):
    # 12 parameters, float32 and float64, one transposed, one channels-last, one above the update threshold, and
    # first-step flags that differ between parameters (with a workspace, ``kept``: its rows made anew when they
    # change): the same bits as sgd_step on each, and as the reference's
    from tinygen.kernels import cpu
    params, grads = _many_parameters(monkeypatch, split_from, seed=33)
    momentum = opts["momentum"]

    def run(update):
        ps = [p.copy(order="K") for p in params]
        bufs = [np.zeros_like(p) if momentum else None for p in ps]
        for step in range(3):
            firsts = [step == 0 or (step == 1 and i % 3 == 0) for i in range(len(ps))]  # some start late
            update(ps, bufs, firsts)
        return ps + [b for b in bufs if b is not None]

    def one_by_one(ps, bufs, firsts):
        for p, g, b, first in zip(ps, grads, bufs, firsts):
            cpu.sgd_step(p, g, b, 1e-2, first_step=first, **opts)

    def together(mod):
        ws = Workspace() if kept else None
        return lambda ps, bufs, firsts: mod.sgd_steps(ps, grads, bufs if momentum else None, 1e-2,
                                                      first_steps=firsts, scratch=ws, **opts)
    expected = run(one_by_one)
    for a, b in zip(run(together(cpu)), expected):
        same(a, b)
    for a, b in zip(run(together(ref)), expected):
        close(a, b, a.dtype)


@requires_numba
@pytest.mark.parametrize("opts", [dict(), dict(momentum=0.9), dict(centered=True, weight_decay=1e-2),
                                  dict(centered=True, momentum=0.5, maximize=True, alpha=0.3)])
@pytest.mark.parametrize("split_from", [0, 1 << 17, 1])
@pytest.mark.parametrize("kept", [False, True])
def test_rmsprop_steps_updates_many_parameters_as_rmsprop_step_does_one(opts, split_from, kept, monkeypatch):
    from tinygen.kernels import cpu
    params, grads = _many_parameters(monkeypatch, split_from, seed=34)
    centered, momentum = opts.get("centered", False), opts.get("momentum", 0.0)

    def run(update):
        ps = [p.copy(order="K") for p in params]
        states = [[np.zeros_like(p) for p in ps] for _ in range(3)]
        for _ in range(3):
            update(ps, *states)
        return ps + [a for s in states for a in s]

    def one_by_one(ps, vs, gas, bufs):
        for p, g, v, ga, buf in zip(ps, grads, vs, gas, bufs):
            cpu.rmsprop_step(p, g, v, ga, buf, 1e-2, **opts)

    def together(mod):
        ws = Workspace() if kept else None
        return lambda ps, vs, gas, bufs: mod.rmsprop_steps(ps, grads, vs, gas if centered else None,
                                                           bufs if momentum else None, 1e-2, scratch=ws, **opts)
    expected = run(one_by_one)
    for a, b in zip(run(together(cpu)), expected):
        same(a, b)
    for a, b in zip(run(together(ref)), expected):
        close(a, b, a.dtype)


@requires_numba
def test_multi_tensor_rows_kept_in_a_workspace_follow_replaced_arrays(monkeypatch):
    # a workspace's rows serve only the arrays they were made from: a parameter or a state replaced by a new
    # array (p.data = ..., load_state_dict), a parameter that can no longer be updated in place, or another list of
    # parameters gets rows made anew, so each step updates the arrays it is given (as adam_step does, one by
    # one); parameters replaced again and again leave no more than _KEPT_UPDATES calls' rows behind
    from tinygen.kernels import cpu
    params, grads = _many_parameters(monkeypatch, 0, seed=35)
    rng = np.random.default_rng(36)
    ws = Workspace()

    def both(ps, states, step, gs=grads):
        mine = [[a.copy(order="K") for a in group] for group in (ps, *states)]
        for p, g, m, v in zip(mine[0], gs, *mine[1:]):
            cpu.adam_step(p, g, m, v, None, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, step)
        cpu.adam_steps(ps, gs, states[0], states[1], None, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, step, scratch=ws)
        for a, b in zip([a for group in (ps, *states) for a in group], [a for group in mine for a in group]):
            same(a, b)

    ps = [p.copy(order="K") for p in params]
    states = [[np.zeros_like(p) for p in ps] for _ in range(2)]
    both(ps, states, 1)
    assert len(ws.rows) == 1
    ps[5] = randn(rng, ps[5].shape, ps[5].dtype)  # a parameter's array replaced
    both(ps, states, 2)
    states[1][4] = np.full_like(states[1][4], 0.25)  # a state's array replaced
    both(ps, states, 3)
    ps[2].flags.writeable = False  # the same array, now read-only: refused, as by the one-parameter step
    with pytest.raises(ValueError, match="adam_step: the parameter and state arrays must be writable"):
        both(ps, states, 4)
    ps[2] = ps[2].copy()
    both(ps[1:], [s[1:] for s in states], 5, grads[1:])  # another list: rows of its own
    both(ps, states, 6)
    assert len(ws.rows) == 2
    for step in range(7, 7 + 2 * cpu._KEPT_UPDATES):
        ps = [p.copy(order="K") for p in ps]
        both(ps, states, step)
        assert len(ws.rows) <= cpu._KEPT_UPDATES


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ema_update_is_the_reference_bit_for_bit(dtype):
    rng = np.random.default_rng(32)
    for shape, kind in (((7, 5), "c"), ((6, 4), "t"), ((9,), "c")):
        avg, val = layout(randn(rng, shape, dtype), kind), randn(rng, shape, dtype)
        expected = avg.copy()
        expected *= 0.37
        expected += (1.0 - 0.37) * val  # the definition, as the EMA wrote it before it was a kernel
        for mod in ([ref, gpu] + ([__import__("tinygen.kernels.cpu", fromlist=["cpu"])] if NUMBA_ON else [])):
            a = avg.copy(order="K")
            mod.ema_update(a, val, 0.37)
            same(a, expected, mod.__name__)
    with pytest.raises(ValueError, match="ema_update: the average"):
        kernels.get("ema_update", avg)(np.zeros(3, dtype), np.zeros(4, dtype), 0.5)
