"""Property tests of every op in ``op_specs.SPECS``, driven by one harness.

For each op and each drawn example (random shapes incl. 0-d, size-1 and broadcast pairs; non-contiguous inputs;
values away from kinks and domain edges; a random upstream gradient) ``test_op`` checks:
  - forward values against the NumPy reference;
  - gradients against central differences (``tinygen.gradcheck``; per element for small inputs, along a random
    direction for larger ones) and second derivatives (``tinygen.gradgradcheck``), in float64;
  - that the same gradients come out of contiguous copies of the inputs (layout never matters);
  - that inputs and the upstream gradient are not mutated, that no gradient shares memory with an input, the
    upstream gradient or another gradient, and that backward frees what the graph saved (a second backward fails).
``test_op_on_device`` runs forward, backward and double backward on the ``device`` fixture ("cuda" is the CPU
stand-in for CuPy when there is no GPU), so a stray NumPy call on device data fails here.
"""
import operator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tinygen as tg
from tinygen.autograd.function import _RELEASED, Function
from op_specs import SPECS, Domain, as_tuple, broadcast_shapes, draw_example, float_outputs, host

FULL_GRADCHECK_MAX = 16      # inputs with at most this many elements in all get a per-element gradcheck
FULL_GRADGRADCHECK_MAX = 10  # same for gradgradcheck (inputs and upstream gradients together)
DEVICE_EXAMPLES = max(3, settings.default.max_examples // 5)
FIXTURE_OK = list(settings.default.suppress_health_check) + [HealthCheck.function_scoped_fixture]


def graph_nodes(outs):
    """Every node reachable from the outputs."""
    seen, stack = [], [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if any(node is s for s in seen):
            continue
        seen.append(node)
        stack.extend(e[0] for e in node.next_edges if e is not None and isinstance(e[0], Function))
    return seen


def holds_saved(node):
    """True while a node still keeps arrays saved for its backward (reads the engine's private slots)."""
    saved = node._saved
    out = node._out_data
    return (saved is not _RELEASED and len(saved) > 0) or (out is not None and out is not _RELEASED)


def check_values(outs, refs):
    assert len(outs) == len(refs), f"{len(outs)} outputs, reference has {len(refs)}"
    for k, (o, r) in enumerate(zip(outs, refs)):
        r = np.asarray(r)
        got = host(o)
        assert got.shape == r.shape, f"output {k}: shape {got.shape}, expected {r.shape}"
        if r.dtype.kind == "f":
            assert got.dtype == r.dtype, f"output {k}: dtype {got.dtype}, expected {r.dtype}"
            np.testing.assert_allclose(got, r, rtol=1e-10, atol=1e-12, err_msg=f"output {k}")
        else:
            assert got.dtype.kind == r.dtype.kind, f"output {k}: dtype {got.dtype}, expected {r.dtype}"
            np.testing.assert_array_equal(got, r, err_msg=f"output {k}")


def numel(arrays):
    return sum(int(a.size) for a in arrays)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@given(data=st.data())
def test_op(spec, data):
    ex = draw_example(data, spec)
    xs = ex.tensors(layouts=ex.layouts)
    gi = ex.grad_indices
    inputs = [xs[i] for i in gi]
    xs_before = [x.data.copy() for x in xs]

    outs = as_tuple(ex.call(*xs))
    check_values(outs, ex.reference())
    fouts = float_outputs(outs)
    assert fouts, "every op under test has a floating output"
    for o in outs:
        assert o.requires_grad == (o.dtype.kind == "f"), f"output of dtype {o.dtype}: requires_grad {o.requires_grad}"

    ups = ex.upstream(fouts)
    ups_before = [u.data.copy() for u in ups]
    nodes = graph_nodes(fouts)
    holding = [n for n in nodes if holds_saved(n)]
    grads = tg.grad(fouts, inputs, ups)

    # gradients: one per input, its shape and dtype, no graph of their own
    for x, g in zip(inputs, grads):
        assert g is not None and g.shape == x.shape and g.dtype == x.dtype, \
            f"gradient {None if g is None else (g.shape, g.dtype)} for input {(x.shape, x.dtype)}"
        assert not g.requires_grad
    # nothing mutated
    for k, (x, before) in enumerate(zip(xs, xs_before)):
        np.testing.assert_array_equal(x.data, before, err_msg=f"input {k} was mutated")
    for k, (u, before) in enumerate(zip(ups, ups_before)):
        np.testing.assert_array_equal(u.data, before, err_msg=f"upstream gradient {k} was mutated")
    # no aliasing: a gradient owns its memory
    for k, g in enumerate(grads):
        for x in xs:
            assert not np.shares_memory(g.data, x.data), f"gradient {k} shares memory with an input"
        for u in ups:
            assert not np.shares_memory(g.data, u.data), f"gradient {k} shares memory with the upstream gradient"
        for j in range(k):
            assert not np.shares_memory(g.data, grads[j].data), f"gradients {j} and {k} share memory"
    # the graph let go of its saved arrays, and a second pass through it says so
    assert not any(holds_saved(n) for n in nodes), \
        f"nodes still hold saved tensors after backward: {[n.name() for n in nodes if holds_saved(n)]}"
    if holding:
        with pytest.raises(RuntimeError, match="second time"):
            tg.grad(fouts, inputs, ups)

    # layout independence, and backward() into .grad: contiguous copies get the same gradients
    cs = ex.tensors()
    couts = float_outputs(as_tuple(ex.call(*cs)))
    cups = ex.upstream(couts, layouts=False)
    tg.autograd.backward(couts, cups)
    cgrads = [cs[i].grad for i in gi]
    for k, (g, c) in enumerate(zip(grads, cgrads)):
        np.testing.assert_allclose(g.data, c.data, rtol=1e-12, atol=1e-12,
                                   err_msg=f"gradient {k} depends on the inputs' memory layout")
        others = [x.data for x in cs] + [u.data for u in cups] + [c2.data for c2 in cgrads[:k]]
        assert not any(np.shares_memory(c.data, o) for o in others), f".grad {k} shares memory"

    # numeric checks, float64
    fn = ex.call
    n_in = numel([x.data for x in inputs])
    tg.gradcheck(fn, ex.tensors(), fast_mode=n_in > FULL_GRADCHECK_MAX, seed=ex.seed, **spec.gradcheck)
    n_all = n_in + numel([o.data for o in fouts])
    tg.gradgradcheck(fn, ex.tensors(), fast_mode=n_all > FULL_GRADGRADCHECK_MAX, seed=ex.seed, **spec.gradcheck)


def run_on(ex, device, layouts):
    """Values, gradients and second derivatives (along a random direction) of an example on ``device``."""
    xs = ex.tensors(device, layouts=layouts)
    inputs = [xs[i] for i in ex.grad_indices]
    outs = as_tuple(ex.call(*xs))
    fouts = float_outputs(outs)
    ups = ex.upstream(fouts, device, layouts=layouts is not None)
    for u in ups:
        u.requires_grad = True
    grads = tg.grad(fouts, inputs, ups, create_graph=True)
    rng = np.random.default_rng(ex.seed + 2)
    ws = [tg.tensor(rng.standard_normal(g.shape), device=device) for g in grads]
    s = sum((g * w).sum() for g, w in zip(grads, ws))
    second = tg.grad(s, inputs + ups, allow_unused=True)
    for o in outs:
        assert o.device == device
    for g in grads:
        assert g.device == device
    as_host = (lambda ts: [None if t is None else host(t) for t in ts])
    return as_host(outs), as_host(grads), as_host(second)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@settings(max_examples=DEVICE_EXAMPLES, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_op_on_device(spec, device, data):
    ex = draw_example(data, spec)
    got = run_on(ex, device, ex.layouts)
    want = run_on(ex, "cpu", None)
    for what, g, w in zip(("value", "gradient", "second derivative"), got, want):
        for k, (a, b) in enumerate(zip(g, w)):
            assert (a is None) == (b is None), f"{what} {k}: {a} on {device}, {b} on the CPU"
            if a is not None:
                assert a.dtype == b.dtype and a.shape == b.shape, \
                    f"{what} {k}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
                # a real GPU may sum in another order: float64 round-off only
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{what} {k} on {device}")


# ---- non-differentiable ops ------------------------------------------------------------------------------------------
COMPARISONS = [("lt", operator.lt, np.less), ("le", operator.le, np.less_equal), ("gt", operator.gt, np.greater),
               ("ge", operator.ge, np.greater_equal), ("eq", operator.eq, np.equal), ("ne", operator.ne, np.not_equal),
               ("and", operator.and_, np.logical_and), ("or", operator.or_, np.logical_or)]
TIES = st.sampled_from([-1.0, 0.0, 0.5, 1.0])  # few distinct values, so equal elements are common


@pytest.mark.parametrize("name,op,ref", COMPARISONS, ids=[c[0] for c in COMPARISONS])
@settings(max_examples=DEVICE_EXAMPLES * 2, suppress_health_check=FIXTURE_OK)
@given(shapes=broadcast_shapes(2), seed=st.integers(0, 2 ** 16), scalar=st.none() | TIES)
def test_comparison_gives_bool_without_grad(name, op, ref, device, shapes, seed, scalar):
    rng = np.random.default_rng(seed)
    a = rng.choice([-1.0, 0.0, 0.5, 1.0], shapes[0])
    b = rng.choice([-1.0, 0.0, 0.5, 1.0], shapes[1]) if scalar is None else scalar
    ta = tg.tensor(a, device=device, requires_grad=True)
    tb = b if scalar is not None else tg.tensor(b, device=device, requires_grad=True)
    out = op(ta, tb)
    assert out.dtype == tg.bool and out.device == device
    assert not out.requires_grad and out.grad_fn is None
    np.testing.assert_array_equal(host(out), ref(a, b))
    np.testing.assert_array_equal(host(tg.logical_not(out)), ~ref(a, b))
    np.testing.assert_array_equal(host(~out), ~ref(a, b))


def test_to_integer_dtype_is_not_differentiable(device):
    x = tg.tensor([1.7, -2.2, 0.0], device=device, requires_grad=True)
    y = x.to(tg.int64)
    assert y.dtype == tg.int64 and not y.requires_grad and y.grad_fn is None
    np.testing.assert_array_equal(host(y), [1, -2, 0])
    z = (x * 2).to(tg.bool)
    assert z.dtype == tg.bool and not z.requires_grad


def test_to_device_and_back_carries_the_gradient(device):
    x = tg.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=tg.float64, requires_grad=True)
    y = (x.to(device) * 3).exp().to("cpu").sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * np.exp(3 * x.detach().numpy()), rtol=1e-12)
    assert x.grad.device == "cpu"


# ---- stability at large inputs, against closed forms -----------------------------------------------------------------
BIG = np.array([-1000.0, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1000.0])


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "logsumexp", "log_softmax"])
def test_stable_at_large_inputs_float32(name):
    rows = np.stack([BIG, BIG[::-1], np.full_like(BIG, 1000.0), np.full_like(BIG, -1000.0)])
    u = np.random.default_rng(0).standard_normal(rows.shape)
    x = tg.tensor(rows.astype(np.float32), requires_grad=True)
    if name == "sigmoid":
        out, want_out = x.sigmoid(), _sigmoid64(rows)
        want_grad = u * want_out * (1 - want_out)
    elif name == "softplus":
        out, want_out = x.softplus(), np.maximum(rows, 0) + np.log1p(np.exp(-np.abs(rows)))
        want_grad = u * _sigmoid64(rows)
    elif name == "logsumexp":
        m = rows.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True))
        out, want_out = x.logsumexp(1), lse[:, 0]
        u = u[:, 0]
        want_grad = u[:, None] * np.exp(rows - lse)
    else:
        m = rows.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True))
        out, want_out = x.log_softmax(1), rows - lse
        want_grad = u - np.exp(rows - lse) * u.sum(axis=1, keepdims=True)
    assert out.dtype == tg.float32
    assert np.isfinite(out.detach().numpy()).all()
    np.testing.assert_allclose(out.detach().numpy(), want_out, rtol=1e-6, atol=1e-6)
    out.backward(tg.tensor(u.astype(np.float32)))
    assert x.grad.dtype == tg.float32 and np.isfinite(x.grad.numpy()).all()
    # rtol: logsumexp's gradient is exp(x - out), and a float32 ``out`` near 1000 is only good to 6e-5
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-4, atol=1e-6)


def test_harness_domains_keep_away_from_kinks():
    rng = np.random.default_rng(0)
    v = Domain(-2.0, 2.0, kinks=(0.0, 1.0), margin=0.2).sample(rng, (2000,))
    assert np.abs(v).min() >= 0.2 and np.abs(v - 1).min() >= 0.2
    d = np.sort(Domain(kind="distinct").sample(rng, (50,)))
    assert np.diff(d).min() >= 0.1
    a = Domain(kind="lattice").sample(rng, (500,))
    b = Domain(kind="lattice", offset=0.5).sample(rng, (500,))
    assert np.abs(a[:, None] - b[None, :]).min() >= 0.25


def test_dim_arguments_on_zero_dim_tensors():
    """A 0-d tensor accepts dim 0 / -1 (as PyTorch): max/min/argmax/argmin over it, softmax and log_softmax."""
    x = tg.tensor(1.5, dtype=tg.float64, requires_grad=True)
    values, indices = x.max(0)
    assert values.shape == () and indices.shape == () and indices.item() == 0 and values.item() == 1.5
    values.backward()
    assert x.grad.item() == 1.0
    v, i = x.min(-1, keepdim=True)
    assert v.shape == () and i.item() == 0
    assert x.argmax(0).item() == 0 and x.argmin(-1, keepdim=True).shape == ()
    assert x.softmax(0).item() == 1.0 and x.log_softmax(-1).item() == 0.0
    (g,) = tg.grad(x.log_softmax(0), [x])
    assert g.item() == 0.0
    for f in (lambda: x.max(1), lambda: x.argmax(1), lambda: x.softmax(1), lambda: x.log_softmax(-2)):
        with pytest.raises(IndexError, match="out of range"):
            f()
