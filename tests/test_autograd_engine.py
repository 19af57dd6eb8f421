"""The backward engine: graph walking, accumulation, errors, higher order, grad modes, memory, custom Functions."""
import gc
import threading
import tracemalloc
import weakref

import numpy as np
import pytest

import tinygen as tg
from tinygen.autograd import Function, once_differentiable


def _np(t):
    return t.detach().cpu().numpy()


# ---- graph walking ---------------------------------------------------------------------------------------------------
def test_long_chain_has_no_recursion_limit():
    x = tg.tensor(1.0, dtype=tg.float64, requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad.item(), 1.0001 ** 20_000, rtol=1e-9)
    del y  # freeing a 20,000-node graph must not overflow the stack either
    gc.collect()


def test_diamond_graph_with_reused_non_leaf():
    x = tg.tensor([0.5, -1.0, 2.0], dtype=tg.float64, requires_grad=True)
    y = x * 3
    z = (y * y + y).sum()  # y feeds three uses: its node must run once, after all of them
    z.backward()
    np.testing.assert_allclose(_np(x.grad), (2 * _np(y) + 1) * 3)


def test_gradients_accumulate_across_backward_calls(device):
    x = tg.tensor([1.0, 2.0], device=device, requires_grad=True)
    (x * x).sum().backward()
    first = x.grad
    (x * 3).sum().backward()
    np.testing.assert_allclose(_np(x.grad), [2 + 3, 4 + 3])
    assert x.grad.device == device
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(_np(x.grad), [3, 3])
    assert first is not x.grad


def test_broadcast_gradients_are_summed_to_input_shape():
    a = tg.randn(4, 3, requires_grad=True)
    b = tg.randn(3, requires_grad=True)
    c = tg.randn(4, 1, requires_grad=True)
    (a * b + c).sum().backward()
    assert a.grad.shape == (4, 3) and b.grad.shape == (3,) and c.grad.shape == (4, 1)
    np.testing.assert_allclose(_np(b.grad), _np(a).sum(0), rtol=1e-5)
    np.testing.assert_allclose(_np(c.grad), np.full((4, 1), 3.0))


def test_intermediate_grads_are_not_kept_and_leaves_get_them():
    x = tg.randn(3, requires_grad=True)
    h = x * 2
    (h * h).sum().backward()
    assert h.grad is None and x.grad is not None  # as PyTorch: only leaves get .grad


# ---- errors ----------------------------------------------------------------------------------------------------------
def test_backward_on_non_scalar_needs_gradient():
    x = tg.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"non-scalar output of shape \(3,\) needs a gradient"):
        (x * 2).backward()


def test_gradient_of_wrong_shape_names_both_shapes():
    x = tg.randn(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"gradient has shape \(3,\) but the output has shape \(2, 3\)"):
        (x * 2).backward(tg.ones(3))


def test_backward_of_tensor_without_graph_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.ones(2).sum().backward()


def test_second_backward_without_retain_graph_raises():
    x = tg.randn(3, requires_grad=True)
    y = tg.randn(3, requires_grad=True)
    loss = (x * y).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time.*MulBackward.*retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_second_backward():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).exp().sum()
    loss.backward(retain_graph=True)
    g1 = _np(x.grad).copy()
    loss.backward()
    np.testing.assert_allclose(_np(x.grad), 2 * g1, rtol=1e-6)


def test_shape_mismatch_names_op_and_both_shapes():
    a, b = tg.randn(2, 3), tg.randn(4, 3)
    with pytest.raises(ValueError, match=r"Add: .*\(2, 3\), \(4, 3\)"):
        a + b
    with pytest.raises(ValueError, match=r"Mul: .*\(2, 3\), \(4, 3\)"):
        a * b
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 3\)"):
        a @ b
    with pytest.raises(ValueError, match=r"Matmul: .*\(2, 3, 4\), \(5, 4, 2\)"):
        tg.randn(2, 3, 4) @ tg.randn(5, 4, 2)  # batch dimensions that do not broadcast
    with pytest.raises(ValueError, match=r"^reshape: cannot view a tensor of shape \(2, 3\)"):
        a.reshape(5)  # a message that already names its op is passed on unchanged


def test_ops_across_devices_raise_clear_error():
    from tinygen import backend
    with backend.cuda_standin():
        a = tg.ones(2, device="cuda")
        b = tg.ones(2)
        with pytest.raises(RuntimeError, match="Add: expected all tensors on the same device.*cuda.*cpu"):
            a + b
        with pytest.raises(RuntimeError, match="Matmul: expected all tensors on the same device"):
            tg.ones(2, 2) @ tg.ones(2, 2, device="cuda")


# ---- tinygen.grad ----------------------------------------------------------------------------------------------------
def test_grad_does_not_touch_dot_grad_and_checks_unused():
    x = tg.randn(3, requires_grad=True)
    y = tg.randn(3, requires_grad=True)
    (gx,) = tg.grad((x * 2).sum(), [x])
    np.testing.assert_allclose(_np(gx), [2, 2, 2])
    assert x.grad is None
    with pytest.raises(RuntimeError, match="input 1 .*not used.*allow_unused=True"):
        tg.grad((x * 2).sum(), [x, y])
    gx, gy = tg.grad((x * 2).sum(), [x, y], allow_unused=True)
    assert gy is None and gx is not None


def test_grad_with_respect_to_non_leaf_intermediate():
    x = tg.tensor([1.0, -2.0, 3.0], requires_grad=True)
    h = x * 2
    out = (h * h).sum()
    (gh,) = tg.grad(out, [h], retain_graph=True)
    np.testing.assert_allclose(_np(gh), 2 * _np(h))
    (gx,) = tg.grad(out, x)
    np.testing.assert_allclose(_np(gx), 8 * _np(x))


def test_grad_with_grad_outputs_for_non_scalar():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (g,) = tg.grad(x * x, x, grad_outputs=tg.tensor([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(_np(g), [2.0, 0.0, -6.0])


# ---- higher order ----------------------------------------------------------------------------------------------------
def test_second_derivative_of_cube():
    x = tg.tensor([-1.5, 0.5, 2.0], dtype=tg.float64, requires_grad=True)
    (g,) = tg.grad((x ** 3).sum(), x, create_graph=True)
    assert g.requires_grad
    np.testing.assert_allclose(_np(g), 3 * _np(x) ** 2)
    (gg,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(_np(gg), 6 * _np(x))


def test_hessian_vector_product():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 4))
    v = rng.standard_normal(4)
    At = tg.tensor(A, dtype=tg.float64)
    x = tg.tensor(rng.standard_normal(4), dtype=tg.float64, requires_grad=True)
    f = (x @ At @ x) + (x ** 4).sum()  # Hessian: A + A^T + diag(12 x^2)
    (g,) = tg.grad(f, x, create_graph=True)
    (hv,) = tg.grad((g * tg.tensor(v)).sum(), x)
    H = A + A.T + np.diag(12 * _np(x) ** 2)
    np.testing.assert_allclose(_np(hv), H @ v, rtol=1e-10)


def test_backward_create_graph_gives_differentiable_grad():
    x = tg.tensor(2.0, dtype=tg.float64, requires_grad=True)
    (x.sin() * x).backward(create_graph=True)
    g = x.grad  # sin x + x cos x
    assert g.requires_grad
    (gg,) = tg.grad(g, x)
    xv = 2.0
    np.testing.assert_allclose(gg.item(), 2 * np.cos(xv) - xv * np.sin(xv))


# ---- grad modes ------------------------------------------------------------------------------------------------------
def test_no_grad_and_enable_grad_nest_as_context_managers():
    x = tg.randn(2, requires_grad=True)
    assert tg.is_grad_enabled()
    with tg.no_grad():
        assert not (x * 2).requires_grad and not tg.is_grad_enabled()
        with tg.enable_grad():
            y = x * 2
            assert y.requires_grad and y.grad_fn is not None
            with tg.no_grad():
                assert not (x * 2).requires_grad
            assert tg.is_grad_enabled()
        assert not (x * 2).requires_grad
    assert tg.is_grad_enabled() and (x * 2).requires_grad
    with tg.set_grad_enabled(False):
        assert not (x * 2).requires_grad


def test_grad_modes_as_decorators_and_restored_after_exceptions():
    x = tg.randn(2, requires_grad=True)

    @tg.no_grad()
    def infer(t):
        return t * 2, inner(t)

    @tg.enable_grad()
    def inner(t):
        return t * 3

    a, b = infer(x)
    assert not a.requires_grad and b.requires_grad
    assert tg.is_grad_enabled()

    @tg.no_grad()
    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    assert tg.is_grad_enabled()


def test_grad_mode_is_per_thread_and_anomaly_detection_is_one_switch():
    """As PyTorch: an inference thread inside ``no_grad`` leaves a training thread recording its graph, and a new
    thread starts with recording on; ``detect_anomaly`` holds for every thread."""
    w = tg.randn(3, requires_grad=True)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def infer():
        with tg.no_grad():
            seen["inference"] = (w * 2).requires_grad
            inside.set()
            release.wait()
    thread = threading.Thread(target=infer)
    thread.start()
    inside.wait()
    seen["training"] = (w * 2).requires_grad  # while the other thread is inside no_grad
    release.set()
    thread.join()
    assert seen == {"inference": False, "training": True}

    def fresh_thread():
        seen["new"] = tg.is_grad_enabled(), tg.autograd.is_anomaly_enabled()
    with tg.no_grad(), tg.autograd.detect_anomaly():
        thread = threading.Thread(target=fresh_thread)
        thread.start()
        thread.join()
    assert seen["new"] == (True, True)


def test_requires_grad_propagation():
    a = tg.randn(2, requires_grad=True)
    b = tg.randn(2)
    assert (a + b).requires_grad and (b * a).requires_grad
    assert not (b + b).requires_grad and (b + b).grad_fn is None
    assert not (a > 0).requires_grad and (a > 0).dtype == tg.bool  # comparisons are not differentiable
    assert not a.argmax().requires_grad
    assert not a.detach().requires_grad and not (a.detach() * 2).requires_grad
    assert tg.randn(2).requires_grad_().requires_grad


# ---- aliasing --------------------------------------------------------------------------------------------------------
def _shares(a, b):
    return np.shares_memory(a.data, b.data)


def test_grads_never_alias_each_other_or_upstream():
    x = tg.randn(3, requires_grad=True)
    y = tg.randn(3, requires_grad=True)
    g = tg.tensor([1.0, 2.0, 3.0])
    (x + y).backward(g)
    assert not _shares(x.grad, y.grad) and not _shares(x.grad, g) and not _shares(y.grad, g)
    np.testing.assert_array_equal(_np(x.grad), [1, 2, 3])
    x.grad.data += 1  # an optimizer's in-place update must not leak into the other gradient or into g
    np.testing.assert_array_equal(_np(y.grad), [1, 2, 3])
    np.testing.assert_array_equal(_np(g), [1, 2, 3])


def test_repeated_backwards_never_write_into_the_upstream_gradient(device):
    """On every device (on "cuda" too: the CPU stand-in once handed the same array to both .grads in a new wrapper,
    so the second backward added into the caller's gradient through them)."""
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True, device=device)
    y = tg.tensor([4.0, 5.0, 6.0], requires_grad=True, device=device)
    g = tg.tensor([1.0, 2.0, 3.0], device=device)
    for _ in range(2):
        (x + y).backward(g)  # the second adds into the first's .grads
    np.testing.assert_array_equal(g.cpu().numpy(), [1, 2, 3])
    np.testing.assert_array_equal(x.grad.cpu().numpy(), [2, 4, 6])
    x.grad.data += 1
    np.testing.assert_array_equal(y.grad.cpu().numpy(), [2, 4, 6])


def test_grad_is_not_a_view_of_the_upstream_gradient():
    x = tg.randn(2, 3, requires_grad=True)
    g = tg.randn(6)
    x.reshape(6).backward(g)  # Reshape's backward returns a view of g
    assert not _shares(x.grad, g) and x.grad.data.base is None
    (gx,) = tg.grad(x.reshape(6), x, grad_outputs=g)
    assert not _shares(gx, g)


def test_accumulated_grad_does_not_alias_later_gradients():
    x = tg.randn(3, requires_grad=True)
    g1, g2 = tg.ones(3), tg.ones(3) * 2
    (x * 1).backward(g1)
    x.backward(g2)  # a leaf's own backward: the gradient goes straight to .grad
    np.testing.assert_array_equal(_np(x.grad), [3, 3, 3])
    np.testing.assert_array_equal(_np(g1), [1, 1, 1])
    np.testing.assert_array_equal(_np(g2), [2, 2, 2])



def test_leaf_reached_twice_after_a_pass_through_gradient():
    # regression: x first received Add's gradient as-is (a read-only broadcast view from Sum, or the caller's own
    # array, shared with y); the second contribution was added into that array in place
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = tg.tensor([3.0, 4.0], requires_grad=True)
    ((x + y) + x).sum().backward()
    np.testing.assert_array_equal(_np(x.grad), [2, 2])
    np.testing.assert_array_equal(_np(y.grad), [1, 1])
    x.grad = y.grad = None
    g = tg.tensor([1.0, 10.0])
    ((x + y) + x).backward(g)
    np.testing.assert_array_equal(_np(x.grad), [2, 20])
    np.testing.assert_array_equal(_np(y.grad), [1, 10])
    np.testing.assert_array_equal(_np(g), [1, 10])
    assert not _shares(x.grad, y.grad) and not _shares(y.grad, g)

def test_a_second_gradient_adds_in_place_into_a_first_that_nobody_else_holds():
    firsts = []

    class Double(Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2

        @staticmethod
        def backward(ctx, g):
            out = g * 2  # a new array, held by nothing but the gradient
            firsts.append(weakref.ref(out.data))
            return out
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    (Double.apply(x).sum() + Double.apply(x).sum()).backward()
    np.testing.assert_array_equal(_np(x.grad), [4, 4])
    assert x.grad.data is firsts[0]()  # the second was added into the first: no third array
    kept = tg.tensor([1.0, 1.0])
    x.grad = None
    (x * kept + x * 3).sum().backward()  # Mul's gradient of x is g * kept: new; both ways give 4
    np.testing.assert_array_equal(_np(x.grad), [4, 4])
    np.testing.assert_array_equal(_np(kept), [1, 1])


# ---- memory ----------------------------------------------------------------------------------------------------------
def test_saved_tensors_are_released_after_backward():
    x = tg.randn(4, requires_grad=True)
    h = x * 2
    ref = weakref.ref(h.data)
    p = h * h  # Mul saves h for its backward
    node = p.grad_fn
    e = p.exp()  # Exp saves its output
    loss = e.sum()
    out_ref = weakref.ref(e.data)
    del h, p, e
    gc.collect()
    assert ref() is not None and out_ref() is not None  # the graph holds them until backward
    loss.backward()
    assert ref() is None and out_ref() is None  # freed although the graph (loss.grad_fn) is still alive
    with pytest.raises(RuntimeError, match="second time"):
        node.saved_tensors


def test_retain_graph_keeps_saved_tensors():
    x = tg.randn(4, requires_grad=True)
    h = x * 2
    ref = weakref.ref(h.data)
    loss = (h * h).sum()
    del h
    loss.backward(retain_graph=True)
    assert ref() is not None
    del loss
    gc.collect()
    assert ref() is None  # and dropping the graph frees them


def test_training_loop_memory_does_not_grow():
    tg.manual_seed(0)
    x = tg.randn(32, 8)
    target = (x[:, :1] * 2).tanh()
    w1 = (tg.randn(8, 16) * 0.3).requires_grad_()
    b1 = tg.zeros(16, requires_grad=True)
    w2 = (tg.randn(16, 1) * 0.3).requires_grad_()
    b2 = tg.zeros(1, requires_grad=True)
    params = [w1, b1, w2, b2]
    marks = {}
    losses = []
    tracemalloc.start()
    try:
        for step in range(1, 1001):
            h = (x @ w1 + b1).relu()
            loss = ((h @ w2 + b2 - target) ** 2).mean()
            loss.backward()
            with tg.no_grad():
                for p in params:
                    p.data -= (p.grad * 0.05).data
                    p.grad = None
            if step in (1, 1000):
                losses.append(loss.item())
            if step in (100, 1000):
                gc.collect()
                marks[step] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # one leaked 32x16 float32 activation per step would be ~1.8 MB over 900 steps
    assert marks[1000] - marks[100] < 32 * 1024, marks
    assert losses[1] < 0.2 * losses[0]  # and it did learn


# ---- custom Functions ------------------------------------------------------------------------------------------------
class Cube(Function):
    """y = x^3 — the worked example: raw-array forward, tinygen-op backward (so it is twice differentiable)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x * x


class ScaledSub(Function):
    """(a - b) * scale with a non-tensor argument and save_output, to exercise None gradients and ctx.output."""
    save_output = True

    @staticmethod
    def forward(ctx, a, b, scale):
        ctx.scale = scale
        return (a.data - b.data) * scale

    @staticmethod
    def backward(ctx, grad):
        assert ctx.output.shape == grad.shape
        return grad * ctx.scale, (-grad * ctx.scale if ctx.needs_input_grad[1] else None), None


def test_custom_function_first_and_second_order():
    x = tg.tensor([-1.0, 0.5, 2.0], dtype=tg.float64, requires_grad=True)
    y = Cube.apply(x)
    assert y.grad_fn.name() == "CubeBackward" and isinstance(y.grad_fn, Cube)
    (g,) = tg.grad(y.sum(), x, create_graph=True)
    np.testing.assert_allclose(_np(g), 3 * _np(x) ** 2)
    (gg,) = tg.grad(g.sum(), x)
    np.testing.assert_allclose(_np(gg), 6 * _np(x))
    assert tg.gradcheck(Cube.apply, (x,)) and tg.gradgradcheck(Cube.apply, (x,))


def test_custom_function_with_non_tensor_args_and_output():
    a = tg.randn(3, dtype=tg.float64, requires_grad=True)
    b = tg.randn(3, dtype=tg.float64)
    out = ScaledSub.apply(a, b, 2.5)
    assert out.grad_fn.needs_input_grad == (True, False, False)
    out.sum().backward()
    np.testing.assert_allclose(_np(a.grad), [2.5] * 3)
    b.requires_grad_()
    assert tg.gradcheck(lambda a, b: ScaledSub.apply(a, b, 2.5), (a, b))


def test_custom_function_returning_wrong_number_of_grads():
    class Bad(Function):
        @staticmethod
        def forward(ctx, a, b):
            return a.data + b.data

        @staticmethod
        def backward(ctx, grad):
            return grad

    a, b = tg.randn(2, requires_grad=True), tg.randn(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="BadBackward returned 1 gradients.*took 2"):
        Bad.apply(a, b).sum().backward()


class RawSquare(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data * x.data

    @once_differentiable
    def backward(ctx, grad):  # receives and returns raw arrays
        (x,) = ctx.saved_tensors
        return 2 * x.data * grad


def test_once_differentiable_works_once_and_refuses_create_graph():
    x = tg.tensor([1.0, -3.0], requires_grad=True)
    RawSquare.apply(x).sum().backward()
    np.testing.assert_allclose(_np(x.grad), [2.0, -6.0])
    with pytest.raises(RuntimeError, match="RawSquare: its backward is once-differentiable"):
        tg.grad(RawSquare.apply(x).sum(), x, create_graph=True)


# ---- numerical stability at extreme inputs ---------------------------------------------------------------------------
_EXTREME = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])


def _sigmoid64(v):
    return np.exp(-np.logaddexp(0.0, -v))


@pytest.mark.parametrize("name, fn, value, deriv", [
    ("sigmoid", lambda t: t.sigmoid(), _sigmoid64, lambda v: _sigmoid64(v) * _sigmoid64(-v)),
    ("softplus", lambda t: t.softplus(), lambda v: np.logaddexp(0.0, v), _sigmoid64),
])
def test_elementwise_stable_at_extremes(name, fn, value, deriv):
    x = tg.tensor(_EXTREME, dtype=tg.float32, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    assert np.isfinite(_np(y)).all() and np.isfinite(_np(x.grad)).all(), name
    np.testing.assert_allclose(_np(y), value(_EXTREME), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(x.grad), deriv(_EXTREME), rtol=1e-5, atol=1e-6)


def test_logsumexp_and_log_softmax_stable_at_extremes():
    rows = np.array([[1000.0, -1000.0, 999.0], [-1000.0, -1000.0, -999.0]])
    shift = rows.max(1, keepdims=True)
    lse = np.log(np.exp(rows - shift).sum(1, keepdims=True)) + shift
    soft = np.exp(rows - lse)
    w = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])

    x = tg.tensor(rows, dtype=tg.float32, requires_grad=True)
    out = tg.logsumexp(x, 1)
    out.sum().backward()
    np.testing.assert_allclose(_np(out), lse[:, 0], rtol=1e-6)
    # float32 holds ~1000.3 only to 6e-5, so exp(x - logsumexp) is good to about that, relatively
    np.testing.assert_allclose(_np(x.grad), soft, rtol=1e-4, atol=1e-6)

    x = tg.tensor(rows, dtype=tg.float32, requires_grad=True)
    ls = x.log_softmax(1)
    (ls * tg.tensor(w, dtype=tg.float32)).sum().backward()
    assert np.isfinite(_np(ls)).all()
    np.testing.assert_allclose(_np(ls), rows - lse, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(_np(x.grad), w - soft * w.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_empty_dim_tuple_reduces_every_axis_as_pytorch():
    x = tg.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    assert x.sum(dim=()).item() == 11.0
    assert x.amax(dim=()).item() == 5.0
    x.sum(dim=()).backward()
    assert x.grad.numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_size_one_operand_broadcast_against_an_empty_one_gets_a_zero_gradient():
    """A (1,) tensor meeting a (0,) one: its gradient arrives with shape (0,) and is summed to zeros, not expanded."""
    a = tg.zeros(0, requires_grad=True)
    b = tg.ones(2, 1, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == (0,) and b.grad.shape == (2, 1)
    assert b.grad.numpy().tolist() == [[0.0], [0.0]]
