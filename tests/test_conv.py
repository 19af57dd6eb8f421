"""Convolutions and pooling beyond the op table (whose CONV_SPECS entries already get values, gradcheck,
gradgradcheck, layouts, the "cuda" device and first-order PyTorch parity): PyTorch parity of gradients built with
create_graph and of second derivatives, the Numba kernels against the reference, the modules against torch.nn
(weights both ways, init, reprs), and the argument checks."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen import kernels
from tinygen.kernels import conv as ref_conv
from conftest import requires_torch
from op_specs import CONV_SPECS, as_tuple, draw_example, host

EXAMPLES = max(4, settings.default.max_examples // 3)


# ---- second order against PyTorch ------------------------------------------------------------------------------
def _random_directions(ex, dtype, outs, inputs):
    """Upstream gradients for the outputs and directions v for the inputs, the same for both frameworks."""
    rng = np.random.default_rng(ex.seed + 7)
    ups = [rng.standard_normal(tuple(o.shape)).astype(dtype) for o in outs]
    vs = [rng.standard_normal(tuple(x.shape)).astype(dtype) for x in inputs]
    return ups, vs


def run_second_order(ex, dtype, framework):
    """Values, gradients built with create_graph, and the gradients of sum(g * v) with respect to the inputs and
    the upstream gradients, in tinygen or in PyTorch."""
    if framework == "torch":
        import torch
        tensor, grad, call = torch.tensor, torch.autograd.grad, ex.spec.torch_fn
        npy = (lambda t: t.detach().numpy())
    else:
        tensor, grad, call, npy = tg.tensor, tg.grad, ex.spec.fn, host
    xs = [tensor(a.astype(dtype), requires_grad=True) for a in ex.arrays]
    outs = list(as_tuple(call(*xs, **ex.kwargs)))  # every conv/pool op has one floating output
    inputs = [xs[i] for i in ex.grad_indices]
    ups, vs = _random_directions(ex, dtype, outs, inputs)
    up_t = [tensor(u, requires_grad=True) for u in ups]
    grads = grad(outs, inputs, up_t, create_graph=True)
    s = sum((g * tensor(v)).sum() for g, v in zip(grads, vs))
    if not s.requires_grad:  # a linear op of one input: its gradient does not depend on the input
        second = [None] * (len(inputs) + len(up_t))
    else:
        second = grad(s, inputs + up_t, allow_unused=True)
    return [npy(o) for o in outs], [npy(g) for g in grads], [None if g is None else npy(g) for g in second]


def _close(what, a, b, rtol, atol):
    if a is None or b is None:  # one side kept no graph: the other's derivative must be zero
        other = b if a is None else a
        assert other is None or not np.any(other), f"{what}: one framework gives None, the other non-zero"
        return
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.dtype}{a.shape} vs PyTorch {b.dtype}{b.shape}"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


@requires_torch
@pytest.mark.parametrize("spec", CONV_SPECS, ids=lambda s: s.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_create_graph_and_second_order_match_torch(spec, data):
    _matches_torch(draw_example(data, spec), run_second_order)


def _matches_torch(ex, run):
    """``run(ex, dtype, framework)``'s lists (values, gradients, second derivatives) in tinygen and in PyTorch
    agree, in float64 and float32."""
    for dtype, rtol, atol in ((np.float64, 1e-10, 1e-12), (np.float32, 1e-4, 1e-5)):
        ours, theirs = run(ex, dtype, "tinygen"), run(ex, dtype, "torch")
        for what, a_list, b_list in zip(("value", "gradient", "second derivative"), ours, theirs):
            assert len(a_list) == len(b_list)
            for k, (a, b) in enumerate(zip(a_list, b_list)):
                _close(f"{np.dtype(dtype).name} {what} {k}", a, b, rtol, atol)


def run_first_order(ex, dtype, framework):
    """Values and the gradients of a plain backward (no create_graph: the convolutions keep or rebuild their
    column matrices for the weight gradient), in tinygen or in PyTorch."""
    if framework == "torch":
        import torch
        tensor, npy, call = torch.tensor, (lambda t: t.detach().numpy()), ex.spec.torch_fn
    else:
        tensor, npy, call = tg.tensor, host, ex.spec.fn
    xs = [tensor(a.astype(dtype), requires_grad=True) for a in ex.arrays]
    outs = list(as_tuple(call(*xs, **ex.kwargs)))
    inputs = [xs[i] for i in ex.grad_indices]
    ups, _ = _random_directions(ex, dtype, outs, inputs)
    sum((o * tensor(u)).sum() for o, u in zip(outs, ups)).backward()
    return [npy(o) for o in outs], [None if x.grad is None else npy(x.grad) for x in inputs]


@contextlib.contextmanager
def _threaded_parts(part_bytes=1):
    """Every batch of two samples or more in threaded parts of at most ``part_bytes`` (one sample by default;
    kernels/conv.py's thresholds lowered); yields the ``threaded`` flag of each batch split into parts."""
    old = ref_conv.THREADS_MIN_BYTES, ref_conv.THREAD_PART_BYTES, ref_conv._over_parts
    seen = []

    def over_parts(run, count, threaded, x):
        seen.append(threaded)
        return old[2](run, count, threaded, x)
    ref_conv.THREADS_MIN_BYTES, ref_conv.THREAD_PART_BYTES, ref_conv._over_parts = 1, part_bytes, over_parts
    try:
        yield seen
    finally:
        ref_conv.THREADS_MIN_BYTES, ref_conv.THREAD_PART_BYTES, ref_conv._over_parts = old


@requires_torch
@pytest.mark.parametrize("spec", [s for s in CONV_SPECS if s.name.startswith("conv")], ids=lambda s: s.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_convolutions_in_threaded_parts_match_torch(spec, data):
    """The convolution ops with their batch in parts on the thread pool (the large-batch path of kernels/conv.py,
    forced on small batches): values, plain-backward gradients, create_graph gradients and second derivatives
    against PyTorch; a batch of two samples or more does go through threaded parts."""
    ex = draw_example(data, spec)
    with _threaded_parts() as seen:
        _matches_torch(ex, run_first_order)
        _matches_torch(ex, run_second_order)
    x = ex.arrays[0]
    if x.ndim == 4 and x.shape[0] > 1:
        assert seen and all(seen)


# ---- the kernels against each other ----------------------------------------------------------------------------
@st.composite
def kernel_case(draw):
    groups = draw(st.sampled_from([1, 2]))
    n, cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.tuples(st.integers(0, 2), st.integers(0, 2))))
    hw = tuple(max(1, dilation[a] * (kernel[a] - 1) + 1 - sum(padding[a])) + draw(st.integers(0, 5)) for a in (0, 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return groups, (n, cg * groups) + hw, (og * groups, cg) + kernel, stride, padding, dilation, dtype


@pytest.mark.skipif(not kernels.enabled(), reason="the Numba kernels are off (TINYGEN_NUMBA=0 or no numba)")
@settings(max_examples=EXAMPLES * 2)
@given(case=kernel_case(), seed=st.integers(0, 2 ** 31 - 1), parallel=st.booleans())
def test_numba_conv_kernels_match_reference(case, seed, parallel):
    from tinygen.kernels import conv_cpu
    groups, x_shape, w_shape, stride, padding, dilation, dtype = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    old = conv_cpu.PARALLEL_MIN
    conv_cpu.PARALLEL_MIN = 1 if parallel else 1 << 40  # the batch split by samples on the pool, or one call
    try:
        y = conv_cpu.conv2d_fwd(x, w, stride, padding, dilation, groups)
        np.testing.assert_array_equal(y, ref_conv.conv2d_fwd(x, w, stride, padding, dilation, groups))
        g = rng.standard_normal(y.shape).astype(dtype)
        args = (stride, padding, dilation, groups)
        np.testing.assert_array_equal(conv_cpu.conv2d_bwd_input(g, w, x_shape[2:], *args),
                                      ref_conv.conv2d_bwd_input(g, w, x_shape[2:], *args))
        np.testing.assert_array_equal(conv_cpu.conv2d_bwd_weight(x, g, w_shape[2:], *args),
                                      ref_conv.conv2d_bwd_weight(x, g, w_shape[2:], *args))
        # non-contiguous input: the wrapper copies, the values do not change
        xt = np.asfortranarray(x)
        np.testing.assert_array_equal(conv_cpu.conv2d_fwd(xt, w, *args), y)
        # a channels-last input (what a convolution and batch norm return) is read where it lies
        xc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(conv_cpu.conv2d_fwd(xc, w, *args), y)
        np.testing.assert_array_equal(conv_cpu.conv2d_bwd_weight(xc, g, w_shape[2:], *args),
                                      ref_conv.conv2d_bwd_weight(x, g, w_shape[2:], *args))
    finally:
        conv_cpu.PARALLEL_MIN = old


@settings(max_examples=EXAMPLES)
@given(case=kernel_case(), seed=st.integers(0, 2 ** 31 - 1), parts=st.integers(2, 5))
def test_a_batch_in_parts_gives_the_whole_batchs_results(case, seed, parts):
    """With CHUNK_BYTES below a batch's column matrix, the batch runs in parts: the outputs and input gradients
    equal the whole batch's (the same rows of the same products), the weight gradient is the parts' products
    added (within rounding of the one product); the kept column matrix has one entry per part and gives the
    same weight gradient as building it again; Numba, the reference and the stand-in agree bit for bit."""
    x, w, args, mods, rng = _batch_case(case, seed)
    old = ref_conv.CHUNK_BYTES
    try:
        ref_conv.CHUNK_BYTES = 0
        whole, got, on_standin = _whole_and_parts(mods, x, w, args, parts, rng)
    finally:
        ref_conv.CHUNK_BYTES = old
    _agree(got, on_standin, whole, x.dtype)


@settings(max_examples=EXAMPLES)
@given(case=kernel_case(), seed=st.integers(0, 2 ** 31 - 1), parts=st.integers(2, 5))
def test_a_large_batch_runs_in_parts_on_the_threads(case, seed, parts):
    """From THREADS_MIN_BYTES the batch runs in parts of THREAD_PART_BYTES on the thread pool (a NumPy batch) with
    BLAS on one thread: the results are the whole batch's within rounding, no column matrix is kept (the weight
    gradient builds its parts again), and Numba, the reference and the stand-in (the same runs of parts one after
    the other) agree bit for bit."""
    from tinygen.kernels import blas, threads
    x, w, args, mods, rng = _batch_case(case, seed)
    n, w_shape, (_, padding, dilation, groups), dtype = x.shape[0], w.shape, args, x.dtype
    whole, g, sample_cols = _whole_batch(x, w, args, rng)
    splits, blas_counts, inside = [], [], []
    in_chunks, product = threads.in_chunks, ref_conv.mm

    def counted_in_chunks(fn, count, *a, in_order=False, **k):
        splits.append((count, in_order))
        inside.append(True)
        try:
            return in_chunks(fn, count, *a, in_order=in_order, **k)
        finally:
            inside.pop()

    def counted_mm(a, b):
        if inside:  # the products of a split's parts
            blas_counts.append(blas.get_num_threads())
        return product(a, b)
    old = threads.in_chunks, ref_conv.mm
    try:
        threads.in_chunks, ref_conv.mm = counted_in_chunks, counted_mm
        with _threaded_parts(-(-n * sample_cols // parts)):
            got = []
            for mod in mods:
                y_parts, cols = mod.conv2d_fwd(x, w, *args, keep_cols=True)
                assert cols is None
                got.append((y_parts, mod.conv2d_bwd_input(g, w, x.shape[2:], *args),
                            mod.conv2d_bwd_weight(x, g, w_shape[2:], *args, cols)))
            on_standin = _on_standin(x, w, g, args)
    finally:
        threads.in_chunks, ref_conv.mm = old
    if threads.get_num_threads() > 1 and blas.mkl() is not None:
        assert set(blas_counts) == {1}  # each part's products on one MKL thread
    # each kernel of each NumPy version split over the pool, then the stand-in's in order, in >= 2 parts each (the
    # input gradient of a window covering the whole image is one product, not in parts)
    split = 2 if groups == 1 and ref_conv._whole_image(x.shape[2:], w_shape[2:], padding, dilation) else 3
    assert [s[1] for s in splits] == [False] * split * len(mods) + [True] * split
    assert all(count >= 2 for count, _ in splits)
    _agree(got, on_standin, whole, dtype)


def _batch_case(case, seed):
    """x (a batch of 3n + 1 samples: one that does not split evenly), w, the kernels' geometry arguments, the
    kernel modules to compare (the reference, and Numba's when on) and the generator that drew them."""
    groups, x_shape, w_shape, stride, padding, dilation, dtype = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((x_shape[0] * 3 + 1,) + x_shape[1:]).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    mods = [ref_conv]
    if kernels.enabled():
        from tinygen.kernels import conv_cpu
        mods.append(conv_cpu)
    return x, w, (stride, padding, dilation, groups), mods, rng


def _agree(got, on_standin, whole, dtype):
    """Every version's results (and the stand-in's) bit for bit the first's, and those the whole batch's within
    rounding."""
    for version in got[1:] + [on_standin]:
        for a, b in zip(version, got[0]):
            np.testing.assert_array_equal(a, b)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(got[0], whole):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)


def _whole_and_parts(mods, x, w, args, parts, rng):
    """The three kernels' results on the whole batch (reference), then in about ``parts`` parts for each of
    ``mods`` and the reference on the stand-in."""
    n, w_shape = x.shape[0], w.shape
    whole, g, sample_cols = _whole_batch(x, w, args, rng)
    out_positions = whole[0].shape[2] * whole[0].shape[3]
    ref_conv.CHUNK_BYTES = -(-n * sample_cols // parts)
    got = []
    for mod in mods:
        y_parts, cols = mod.conv2d_fwd(x, w, *args, keep_cols=True)
        assert len(cols) > 1 and sum(c.shape[0] for c in cols) == n * out_positions
        gw = mod.conv2d_bwd_weight(x, g, w_shape[2:], *args)
        np.testing.assert_array_equal(mod.conv2d_bwd_weight(x, g, w_shape[2:], *args, cols), gw)
        got.append((y_parts, mod.conv2d_bwd_input(g, w, x.shape[2:], *args), gw))
    return whole, got, _on_standin(x, w, g, args)


def _whole_batch(x, w, args, rng):
    """The reference's three kernels on the whole batch (y, input gradient, weight gradient) for an upstream
    gradient g drawn from ``rng``; returns them, g, and the bytes of one sample's column matrix."""
    y = ref_conv.conv2d_fwd(x, w, *args)
    g = rng.standard_normal(y.shape).astype(x.dtype)
    whole = (y, ref_conv.conv2d_bwd_input(g, w, x.shape[2:], *args), ref_conv.conv2d_bwd_weight(x, g, w.shape[2:],
                                                                                                  *args))
    return whole, g, y.shape[2] * y.shape[3] * w.shape[1] * args[3] * w.shape[2] * w.shape[3] * x.itemsize


def _on_standin(x, w, g, args):
    """The reference's three kernels on the CPU stand-in for CuPy, brought back to NumPy."""
    from tinygen.backend import standin
    xs, ws, gs = standin.asarray(x), standin.asarray(w), standin.asarray(g)
    return (ref_conv.conv2d_fwd(xs, ws, *args).get(), ref_conv.conv2d_bwd_input(gs, ws, x.shape[2:], *args).get(),
            ref_conv.conv2d_bwd_weight(xs, gs, w.shape[2:], *args).get())


@pytest.mark.skipif(not kernels.enabled(), reason="the Numba kernels are off (TINYGEN_NUMBA=0 or no numba)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_kernels_keep_a_channels_last_image_channels_last(dtype):
    """A convolution returns its image channels-last; batch norm and the activations take it as it lies, give the
    reference's values and return it channels-last (no copy to C order and back)."""
    from tinygen.kernels import cpu, reference as ref
    rng = np.random.default_rng(3)

    def channels_last(a):
        return np.ascontiguousarray(a.astype(dtype).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    x, g = channels_last(rng.standard_normal((4, 5, 3, 6))), channels_last(rng.standard_normal((4, 5, 3, 6)))
    w, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    got, want = cpu.batchnorm_fwd(x, w, b), ref.batchnorm_fwd(np.ascontiguousarray(x), w, b)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, **tol)
    assert got[0].strides == x.strides
    for a, e in zip(cpu.batchnorm_bwd(g, got[1], w, got[4]), ref.batchnorm_bwd(g, want[1], w, want[4])):
        np.testing.assert_allclose(a, e, **tol)
    y = cpu.leaky_relu_fwd(x, 0.2)
    np.testing.assert_array_equal(y, ref.leaky_relu_fwd(np.ascontiguousarray(x), 0.2))
    assert y.strides == x.strides
    gy = cpu.leaky_relu_bwd(y, g, 0.2)
    np.testing.assert_array_equal(gy, ref.leaky_relu_bwd(np.ascontiguousarray(y), np.ascontiguousarray(g), 0.2))
    assert gy.strides == x.strides


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("module", ["reference", "numba"])
@pytest.mark.parametrize("n, c, cout, hw", [(4, 5, 3, (7, 7)), (1, 2, 1, (3, 5)), (3, 1, 4, (1, 1)), (2, 6, 2, (4, 1))])
def test_whole_image_window_reads_a_channels_last_image_where_it_lies(module, dtype, n, c, cout, hw):
    """A kernel the size of the image (DCGAN's 7x7 layers) on a channels-last image takes the image as its column
    matrix in (H, W, C) order; the weight gradient, the input gradient (and conv_transpose2d's output) of such a
    layer come back channels-last. Values as the C-ordered computation."""
    if module == "numba" and not kernels.enabled():
        pytest.skip("the Numba kernels are off (TINYGEN_NUMBA=0 or no numba)")
    from tinygen.kernels import conv_cpu
    mod = conv_cpu if module == "numba" else ref_conv
    rng = np.random.default_rng(sum(hw) + c)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    w = rng.standard_normal((cout, c) + hw).astype(dtype)
    xc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    args = ((1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    y, cols = mod.conv2d_fwd(xc, w, *args, keep_cols=True)
    assert len(cols) == 1 and np.shares_memory(cols[0], xc)  # the image itself, not a copy
    np.testing.assert_allclose(y, ref_conv.conv2d_fwd(x, w, *args), **tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    want_gw = ref_conv.conv2d_bwd_weight(x, g, hw, *args)
    for kept in (cols, None):
        gw = mod.conv2d_bwd_weight(xc, g, hw, *args, kept)
        assert gw.shape == w.shape and gw.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last, as nn's weights
        np.testing.assert_allclose(gw, want_gw, **tol)
    gx = mod.conv2d_bwd_input(g, w, hw, *args)
    assert gx.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last
    np.testing.assert_allclose(gx, np.einsum("no,ochw->nchw", g[:, :, 0, 0], w), **tol)


def test_kernels_are_registered_for_numpy_data():
    x = np.zeros((1, 1, 4, 4), np.float32)
    for name in ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"):
        fn = kernels.get(name, x)
        if kernels.enabled():
            from tinygen.kernels import conv_cpu
            assert fn is getattr(conv_cpu, name)
        else:
            assert fn is getattr(ref_conv, name)


def test_gpu_conv_kernels_run_the_reference_without_cudnn():
    """On the stand-in (and on CuPy without cuDNN) the gpu functions are the reference on device arrays."""
    from tinygen.backend import standin
    from tinygen.kernels import conv_gpu
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((4, 1, 3, 2))
    args = ((2, 1), ((1, 2), (0, 1)), (1, 2), 2)
    y = conv_gpu.conv2d_fwd(standin.asarray(x), standin.asarray(w), *args)
    np.testing.assert_allclose(y.get(), ref_conv.conv2d_fwd(x, w, *args), rtol=1e-12)
    g = rng.standard_normal(y.shape)
    gx = conv_gpu.conv2d_bwd_input(standin.asarray(g), standin.asarray(w), (5, 6), *args)
    np.testing.assert_allclose(gx.get(), ref_conv.conv2d_bwd_input(g, w, (5, 6), *args), rtol=1e-12)
    gw = conv_gpu.conv2d_bwd_weight(standin.asarray(x), standin.asarray(g), (3, 2), *args)
    np.testing.assert_allclose(gw.get(), ref_conv.conv2d_bwd_weight(x, g, (3, 2), *args), rtol=1e-12)


def test_conv_modules_on_device(device):
    """A small conv net's forward, backward and gradient penalty on "cuda" (the stand-in without a GPU) match
    the CPU."""
    results = []
    for dev in ("cpu", device):
        tg.manual_seed(3)
        net = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.MaxPool2d(2, ceil_mode=True),
                            nn.ConvTranspose2d(4, 2, 3, 2, 1, output_padding=1), nn.AvgPool2d(2),
                            nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                            nn.Upsample(scale_factor=2), nn.AdaptiveAvgPool2d(1)).to(tg.float64).to(dev)
        x = tg.tensor(np.random.default_rng(0).standard_normal((2, 1, 9, 9)), device=dev, requires_grad=True)
        (gx,) = tg.grad(net(x).sum(), [x], create_graph=True)
        (net(x).sum() + (gx * gx).sum()).backward()
        results.append([host(gx)] + [host(p.grad) for p in net.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- modules against torch.nn ------------------------------------------------------------------------------------
MODULES = [
    ("Conv2d(3, 6, 3, stride=2, padding=1)", (2, 3, 7, 8)),
    ("Conv2d(4, 6, (3, 2), padding='same', dilation=2, groups=2, bias=False)", (2, 4, 6, 5)),
    ("Conv2d(2, 4, 4, 2, 1)", (2, 8, 8)),  # an unbatched (C, H, W) input
    ("ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2)", (2, 4, 3, 3)),
    ("ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, dilation=1)", (2, 3, 4, 5)),
    ("MaxPool2d(3, 2, 1, ceil_mode=True)", (2, 2, 7, 6)),
    ("AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)", (2, 2, 7, 6)),
    ("AdaptiveAvgPool2d((3, 2))", (2, 2, 7, 5)),
    ("Upsample(scale_factor=2)", (2, 2, 3, 4)),
    ("Upsample(size=(5, 7))", (2, 2, 3, 4)),
    ("Conv2d(3, 4, 3, padding=1, padding_mode='reflect')", (2, 3, 5, 6)),
    ("Conv2d(3, 4, (4, 3), padding='same', dilation=(1, 2), padding_mode='replicate', bias=False)", (2, 3, 5, 6)),
    ("Conv2d(2, 4, 3, stride=2, padding=(2, 1), padding_mode='circular', groups=2)", (2, 2, 5, 6)),
    ("Conv2d(2, 3, 3, padding=1, padding_mode='reflect')", (2, 5, 6)),
    ("ZeroPad2d((1, 2, 3, 0))", (2, 3, 4, 5)),
    ("ConstantPad2d(2, 3.5)", (2, 3, 4)),
    ("ReflectionPad2d(1)", (2, 3, 4, 5)),
    ("ReplicationPad2d((1, 0, 2, 1))", (3, 4, 5)),
    ("CircularPad2d((2, 1, 0, 3))", (2, 3, 4, 5)),
    # a 3-D input: unbatched (C, H, W) for convolutions and pooling, (N, C, L) for a resize (a 1-D one)
    ("ConvTranspose2d(2, 3, 3, stride=2)", (2, 4, 3)),
    ("MaxPool2d(2)", (3, 5, 4)),
    ("AvgPool2d(3, 1, 1)", (3, 5, 4)),
    ("AdaptiveAvgPool2d(2)", (3, 5, 4)),
    ("Upsample(scale_factor=2)", (2, 3, 5)),
    ("Upsample(size=7)", (2, 3, 5)),
    ("Upsample(scale_factor=0.6)", (2, 3, 5)),
]


@requires_torch
@pytest.mark.parametrize("expr,shape", MODULES, ids=[m[0] for m in MODULES])
def test_module_matches_torch_both_ways(expr, shape):
    """Same repr and state_dict keys; torch's weights loaded into ours give torch's outputs and gradients, and
    ours loaded into a fresh torch module give ours."""
    import torch
    torch.manual_seed(0)
    theirs = eval("torch.nn." + expr).double()
    ours = eval("nn." + expr).to(tg.float64)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(1).standard_normal(shape)
    xo, xt = tg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yo, yt = ours(xo), theirs(xt)
    np.testing.assert_allclose(host(yo), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = np.random.default_rng(2).standard_normal(yo.shape)
    yo.backward(tg.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(host(xo.grad), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(host(p.grad), q.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    # and back: a fresh torch module with our (re-initialised) weights computes our output
    ours.reset_parameters() if hasattr(ours, "reset_parameters") else None
    back = eval("torch.nn." + expr).double()
    back.load_state_dict({k: torch.tensor(host(v)) for k, v in ours.state_dict().items()})
    np.testing.assert_allclose(host(ours(tg.tensor(x))), back(torch.tensor(x)).detach().numpy(), rtol=1e-10,
                               atol=1e-12)


@requires_torch
@pytest.mark.parametrize("args,shape,output_size", [
    ((3, 2, 3, 2), (2, 3, 5, 4), [12, 10]), ((3, 2, 3, 2), (2, 3, 5, 4), (11, 9)),
    ((3, 2, 4, 3, 1), (2, 3, 5, 4), (2, 2, 16, 13)), ((3, 2, 3, 2, 0, 0, 1, True, 2), (3, 5, 4), [14, 12]),
], ids=["larger", "smallest", "whole-shape", "dilated-unbatched"])
def test_conv_transpose_output_size_picks_pytorchs_output_padding(args, shape, output_size):
    import torch
    theirs = torch.nn.ConvTranspose2d(*args).double()
    ours = nn.ConvTranspose2d(*args).to(tg.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(1).standard_normal(shape)
    xo, xt = tg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yo, yt = ours(xo, output_size=output_size), theirs(xt, output_size=output_size)
    assert yo.shape == tuple(yt.shape) and yo.shape[-2:] == tuple(output_size)[-2:]
    np.testing.assert_allclose(host(yo), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    yo.sum().backward()
    yt.sum().backward()
    np.testing.assert_allclose(host(xo.grad), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def _is_channels_last(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous and not a.flags.c_contiguous


@pytest.mark.parametrize("cls", [nn.Conv2d, nn.ConvTranspose2d])
@pytest.mark.parametrize("make_opt", [lambda ps: tg.optim.Adam(ps, lr=1e-2), lambda ps: tg.optim.SGD(ps, lr=0.1,
                                                                                                      momentum=0.9),
                                      lambda ps: tg.optim.RMSprop(ps, lr=1e-2, centered=True)],
                         ids=["adam", "sgd", "rmsprop"])
def test_weights_are_stored_channels_last_and_train_as_c_ordered_ones(cls, make_opt):
    """nn's convolution weights are channels-last in memory (the kernels' order: no copy of the weight or of its
    gradient); the gradient keeps that layout, the optimizer updates the same array in place with state of the
    same layout, and every bit equals training a copy of the layer whose weight is C-ordered."""
    tg.manual_seed(0)
    layers = [cls(4, 6, 3, stride=2, padding=1, groups=2), cls(4, 6, 3, stride=2, padding=1, groups=2)]
    layers[1].load_state_dict(layers[0].state_dict())
    layers[1].weight.data = np.ascontiguousarray(layers[1].weight.data)
    weight = layers[0].weight.data
    assert _is_channels_last(weight) and layers[1].weight.data.flags.c_contiguous
    x = tg.tensor(np.random.default_rng(1).standard_normal((3, 4, 7, 7)).astype(np.float32))
    opts = [make_opt(m.parameters()) for m in layers]
    for _ in range(3):
        for m, opt in zip(layers, opts):
            opt.zero_grad()
            (m(x) * m(x)).mean().backward()  # two uses: the gradient is accumulated
            opt.step()
        assert _is_channels_last(layers[0].weight.grad.data)
        np.testing.assert_array_equal(layers[0].weight.grad.data, layers[1].weight.grad.data)
        np.testing.assert_array_equal(layers[0].weight.data, layers[1].weight.data)
    assert layers[0].weight.data is weight  # updated in place
    resumed = make_opt(layers[0].parameters())
    resumed.load_state_dict(opts[0].state_dict())  # a checkpoint's C-ordered arrays take the weight's layout
    for opt in (opts[0], resumed):
        states = [v for v in opt.state[layers[0].weight].values() if isinstance(v, tg.Tensor) and v.ndim == 4]
        assert states and all(_is_channels_last(v.data) for v in states)


@pytest.mark.parametrize("cls", [nn.Conv2d, nn.ConvTranspose2d])
def test_conv_init_is_pytorch_kaiming_uniform(cls):
    """weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = weight.shape[1] * kh * kw (as PyTorch)."""
    tg.manual_seed(0)
    m = cls(16, 32, (3, 4), groups=2)
    fan_in = m.weight.shape[1] * 12
    bound = 1 / np.sqrt(fan_in)
    w, b = host(m.weight), host(m.bias)
    shape = (16, 16, 3, 4) if cls is nn.ConvTranspose2d else (32, 8, 3, 4)
    assert w.shape == shape and b.shape == (32,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound  # the uniform's standard deviation


@requires_torch
def test_max_pool_window_that_misses_the_input_is_minus_inf_like_torch_and_passes_no_gradient():
    import torch
    x = np.random.default_rng(0).standard_normal((1, 1, 1, 3))
    kw = dict(kernel_size=(2, 1), padding=(1, 0), dilation=(2, 1))
    xo, xt = tg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yo, yt = F.max_pool2d(xo, **kw), torch.nn.functional.max_pool2d(xt, **kw)
    np.testing.assert_array_equal(host(yo), yt.detach().numpy())
    assert np.all(np.isneginf(host(yo)))
    yo.sum().backward()  # (PyTorch's own backward aborts the process here: its index for such a window is junk)
    np.testing.assert_array_equal(host(xo.grad), np.zeros_like(x))


# ---- argument checks ---------------------------------------------------------------------------------------------
X = np.zeros((1, 4, 5, 5))
W = np.zeros((4, 2, 3, 3))
BAD_CALLS = [
    (lambda: F.conv2d(tg.zeros(4, 5, dtype=tg.float64), tg.tensor(W)), ValueError, "conv2d: Expected 3D"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(np.zeros((4, 3, 3, 3)))), ValueError, "to have 3 channels"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(np.zeros((3, 2, 3, 3))), groups=2), ValueError,
     "divisible by 2 at dimension 0"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=0), ValueError, "non-positive groups"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=2, stride=0), ValueError, "non-positive stride"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=2, padding=-1), ValueError, "negative padding"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=2, dilation=(1, 0)), ValueError, "non-positive dilation"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=2, stride=(1, 1, 1)), ValueError, "list of 2 values"),
    (lambda: F.conv2d(tg.tensor(np.zeros((1, 4, 2, 2))), tg.tensor(W), groups=2), ValueError,
     "Kernel size can't be greater than actual input size"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=2, padding="same", stride=2), ValueError,
     "'same' is not supported for strided"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), groups=2, padding="full"), ValueError, "Invalid padding string"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W), tg.tensor(np.zeros(3)), groups=2), ValueError,
     "expected bias to be 1-dimensional with 4 elements"),
    (lambda: F.conv2d(tg.tensor(X), tg.tensor(W.astype(np.float32)), groups=2), TypeError, "weight has dtype"),
    (lambda: F.conv_transpose2d(tg.tensor(X), tg.tensor(np.zeros((3, 2, 3, 3)))), ValueError,
     "Given transposed=1"),
    (lambda: F.conv_transpose2d(tg.tensor(X), tg.tensor(W), stride=2, output_padding=2), ValueError,
     "output padding must be smaller than either stride or dilation"),
    (lambda: F.conv_transpose2d(tg.tensor(np.zeros((1, 4, 1, 1))), tg.tensor(W), padding=3), ValueError,
     "Output size is too small"),
    (lambda: F.max_pool2d(tg.tensor(X), 2, padding=2), ValueError, "pad should be smaller than or equal to half"),
    (lambda: F.max_pool2d(tg.tensor(X), 2, stride=0), ValueError, "non-positive stride"),
    (lambda: F.max_pool2d(tg.tensor(np.zeros((1, 1, 1, 1))), 2, stride=1), ValueError, "Output size is too small"),
    (lambda: F.max_pool2d(tg.tensor(np.zeros((5, 5))), 2), ValueError, "max_pool2d: Expected 3D or 4D"),
    (lambda: F.avg_pool2d(tg.tensor(np.zeros((1, 1, 1, 1))), 3), ValueError, "Output size is too small"),
    (lambda: F.adaptive_avg_pool2d(tg.tensor(np.zeros((4, 5))), 2), ValueError, "adaptive_avg_pool2d: Expected"),
    (lambda: F.interpolate(tg.tensor(X), size=3, scale_factor=2), ValueError, "only one of size or scale_factor"),
    (lambda: F.interpolate(tg.tensor(X)), ValueError, "either size or scale_factor"),
    (lambda: F.interpolate(tg.tensor(X), scale_factor=2, mode="bilinear"), NotImplementedError, "mode='nearest'"),
    (lambda: F.interpolate(tg.tensor(X), size=0), ValueError, "sizes should be greater than 0"),
    (lambda: F.interpolate(tg.zeros(2, 3, 5), size=(3, 4)), ValueError,
     "size must be a number or a sequence of one for a 3D (N, C, L) input, got (3, 4)"),
    (lambda: F.interpolate(tg.zeros(2, 3, 5), scale_factor=(2, 2)), ValueError, "scale_factor must be a number or"),
    (lambda: F.interpolate(tg.zeros(5, 5), scale_factor=2), ValueError, "Expected 3D (N, C, L) or 4D (N, C, H, W)"),
    (lambda: nn.Conv2d(2, 2, 3, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect"), ValueError, "only padding_mode='zeros'"),
    (lambda: nn.ReflectionPad2d((1, 2)), ValueError, "ReflectionPad2d: padding must be an int or 4 ints"),
    (lambda: nn.ReflectionPad2d(4)(tg.zeros(1, 1, 4, 4)), ValueError, "reflect padding widths must be at most 3"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, 2)(tg.zeros(1, 2, 5, 4), output_size=[13, 9]), ValueError,
     r"requested an output size of \[13, 9\], but valid sizes range from 11 to 12 (for an input of \[5, 4\])"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, 2)(tg.zeros(1, 2, 5, 4), output_size=[12]), ValueError,
     "output_size must have 2 or 4 elements"),
    (lambda: nn.Conv2d(2, 2, 3, padding_mode="mirror"), ValueError, "must be one of"),
    (lambda: nn.Conv2d(3, 2, 3, groups=2), ValueError, "in_channels must be divisible by groups"),
    (lambda: nn.Conv2d(2, 3, 3, groups=2), ValueError, "out_channels must be divisible by groups"),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding="same"), ValueError, "'same' is not supported for strided"),
]


@pytest.mark.parametrize("call,error,message", BAD_CALLS, ids=[b[2] for b in BAD_CALLS])
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_pooling_matrices_are_kept_per_gpu():
    # CuPy puts a new array on its current GPU: the cached matrices of one GPU must not be handed to another
    import types
    from tinygen.ops import conv as conv_ops
    current = {"id": 0}
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: current["id"]))
    fake.asarray = lambda a: ("gpu", current["id"], a)
    args = ((4, 2, 2, 0, 2, True), (4, 2, 2, 0, 2, True))
    on_0 = conv_ops._matrices(fake, conv_ops._current_gpu(fake), np.dtype(np.float32), "avg", *args)
    current["id"] = 1
    on_1 = conv_ops._matrices(fake, conv_ops._current_gpu(fake), np.dtype(np.float32), "avg", *args)
    assert [m[1] for m in on_0] == [0, 0] and [m[1] for m in on_1] == [1, 1]
    assert conv_ops._current_gpu(np) is None


@requires_torch
@pytest.mark.parametrize("groups,k,stride,pad", [(1, 3, 1, 0), (2, 3, 2, 1), (1, 8, 1, 0), (2, 8, 1, 0)],
                         ids=["plain", "grouped-strided", "whole-image", "whole-image-grouped"])
def test_an_empty_batch_gives_pytorchs_empty_results_and_zero_weight_gradients(groups, k, stride, pad, device):
    """A batch of 0 images (the last, empty, chunk of a split): the shapes PyTorch gives, in both directions."""
    import torch
    rng = np.random.default_rng(0)
    x, w, wt = np.zeros((0, 6, 8, 8)), rng.standard_normal((6, 6 // groups, k, k)), rng.standard_normal((6, 2, k, k))
    xo, wo = tg.tensor(x, device=device, requires_grad=True), tg.tensor(w, device=device, requires_grad=True)
    xt, wtt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yo = F.conv2d(xo, wo, stride=stride, padding=pad, groups=groups)
    yt = torch.nn.functional.conv2d(xt, wtt, stride=stride, padding=pad, groups=groups)
    yo.sum().backward()
    yt.sum().backward()
    assert yo.shape == tuple(yt.shape) and xo.grad.shape == x.shape
    np.testing.assert_array_equal(host(wo.grad), wtt.grad.numpy())  # zeros
    zo = F.conv_transpose2d(tg.tensor(x, device=device), tg.tensor(wt, device=device), stride=stride,
                            groups=groups)
    assert zo.shape == tuple(torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(wt), stride=stride,
                                                                  groups=groups).shape)
