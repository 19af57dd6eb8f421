"""Convolution and pooling on arrays: the one reference definition, for any array module (NumPy, CuPy, the
stand-in). Only the module's own functions and array operators are used (no ``as_strided``): the windows of an
image are ``kh * kw`` strided slices of the padded image, one per kernel offset, and the products are the BLAS's
GEMM through ``gemm.mm`` (which runs a product over a single column, a layer with one output, as a multiply).

Geometry arguments are already checked by the ops (tinygen/ops/conv.py): ``stride`` and ``dilation`` are pairs,
``padding`` is ((top, bottom), (left, right)) so PyTorch's 'same' with an odd total padding fits.

  conv2d_fwd(x, w, stride, padding, dilation, groups, keep_cols=False)   y (N, Cout, OH, OW); with keep_cols
                                                                     (y, cols): the column matrix, for
                                                                     conv2d_bwd_weight of the same x
  conv2d_bwd_input(g, w, x_hw, stride, padding, dilation, groups)    dL/dx of conv2d, and conv_transpose2d's forward
  conv2d_bwd_weight(x, g, kernel_hw, stride, padding, dilation, groups, cols=None)  dL/dw of conv2d (cols: x's
                                                                     column matrix when the caller has it)
  max_pool2d_fwd(x, kernel, stride, padding, dilation, out_hw)       (y, index): index of each max in its H*W plane
  max_pool2d_bwd(g, index, x_hw)                                     the gradient routed to the maxima
  separable_map2d(x, rows, cols)                                     rows @ x @ cols.T on the last two axes: the
                                                                     average pools and nearest upsampling, whose
                                                                     adjoint is the same call with rows.T, cols.T

Layout: the column matrix has one row per output position and one column per weight entry, (N * OH * OW, G * kh *
kw * C / G): within a window the pixels in (kh, kw) order and each pixel's channels (of a group) together, as a
channels-last image stores them, so building it from such an image copies runs of C values. The weight's entries
must be in the same order: nn's convolutions store their weights channels-last, (Cout, kh, kw, C / G) in memory, so
neither the weight nor its gradient is copied (a weight in another layout is). One GEMM covers the batch (or a part
of it, below) and every product keeps the long N * OH * OW axis as the rows of its result or as its reduction, with
the column matrix C-ordered: the orientation OpenBLAS threads well (the other one, (C * kh * kw, N * OH * OW), ran
the DCGAN's products 2-4x slower on two threads). Only the small (N * OH * OW, Cout) results and gradients are
transposed to and from (N, Cout, OH, OW), and the results not even that: they are returned as channels-last views
(``_nchw``). On the CPU a large batch runs in parts (``_batch_parts``): each part's column matrix is made and
multiplied (or summed back) before the next, and the weight gradient adds the parts' products in batch order; from
THREADS_MIN_BYTES the parts are small and run on the thread pool, each in one core's cache.
"""
import math

import numpy as np

from .. import config
from ..backend import array_module_of
from . import threads
from .gemm import _HOST, mm

CHUNK_BYTES = config.get("TINYGEN_CONV_CHUNK_BYTES")
THREADS_MIN_BYTES = config.get("TINYGEN_CONV_THREADS_MIN_BYTES")
THREAD_PART_BYTES = 1 << 21  # a part's column matrix on a pool thread: about one core's L2 cache


def conv_out_size(size, kernel, stride, pad_total, dilation):
    """Output length of a convolution or pooling window sweep (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_out_size(size, kernel, stride, pad, dilation, output_padding=0):
    """Output length of a transposed convolution: (size - 1) * stride - 2 * pad + dilation * (kernel - 1) +
    output_padding + 1."""
    return (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_padding + 1


def pool_out_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's pooling output length: with ceil_mode, a last window must start inside the input or the left
    padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _padded(xp, x, padding, fill=0.0, extra=(0, 0)):
    """x with ``padding`` ((top, bottom), (left, right)) of ``fill`` around its last two axes, and ``extra`` more
    rows/columns at the bottom/right (ceil-mode pooling)."""
    (pt, pb), (pl, pr) = padding
    pb, pr = pb + extra[0], pr + extra[1]
    if not (pt or pb or pl or pr):
        return x
    n, c, h, w = x.shape
    out = xp.full((n, c, h + pt + pb, w + pl + pr), fill, dtype=x.dtype)
    out[:, :, pt:pt + h, pl:pl + w] = x
    return out


def _window(xpad, i, j, stride, dilation, out_hw):
    """The values under kernel offset (i, j) for every output position: (N, C, OH, OW), a strided view."""
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out_hw
    return xpad[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]


def im2col(x, kernel_hw, stride, padding, dilation, out_hw, groups=1):
    """The windows of x (N, C, H, W) as an array (N, OH, OW, G, kh, kw, C / G): one row per output position, each
    window's pixels in (kh, kw) order with the channels of a group together, as a channels-last image holds them."""
    xp = array_module_of(x)
    n, c = x.shape[:2]
    kh, kw = kernel_hw
    oh, ow = out_hw
    xpad = _padded(xp, x, padding)
    cols = xp.empty((n, oh, ow, groups, kh, kw, c // groups), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = _window(xpad, i, j, stride, dilation, out_hw).reshape(n, groups, c // groups, oh, ow)
            cols[:, :, :, :, i, j, :] = window.transpose(0, 3, 4, 1, 2)
    return cols


def col2im(cols, x_shape, stride, padding, dilation, out=None):
    """The adjoint of im2col: cols (N, OH, OW, G, kh, kw, C / G) summed back into an image of ``x_shape``, stored
    channels-last (see ``_nchw``); each pixel adds its terms in (kh, kw) order. ``out``: a zeroed channels-last
    array (N, H, W, C) to write the image into (a part of a batch's)."""
    xp = array_module_of(cols)
    n, oh, ow, groups, kh, kw, cg = cols.shape
    (pt, pb), (pl, pr) = padding
    h, w = x_shape[2:]
    xpad = xp.zeros((n, h + pt + pb, w + pl + pr, groups * cg), dtype=cols.dtype).transpose(0, 3, 1, 2)
    for i in range(kh):
        for j in range(kw):
            window = _window(xpad, i, j, stride, dilation, (oh, ow)).reshape(n, groups, cg, oh, ow)
            window += cols[:, :, :, :, i, j, :].transpose(0, 3, 4, 1, 2)
    image = xpad[:, :, pt:pt + h, pl:pl + w]
    if out is None:
        return image
    out[...] = image.transpose(0, 2, 3, 1)
    return out.transpose(0, 3, 1, 2)


def _out_hw(x_hw, kernel_hw, stride, padding, dilation):
    return tuple(conv_out_size(x_hw[a], kernel_hw[a], stride[a], sum(padding[a]), dilation[a]) for a in (0, 1))


def _whole_image(x_hw, kernel_hw, padding, dilation):
    """True when the one window is the whole unpadded image (a 7x7 kernel on a 7x7 map, DCGAN's first and last
    layers): without groups the column matrix is then the image itself in (H, W, C) order, (N, H * W * C), read
    where it lies when the image is channels-last (what a convolution returns)."""
    return tuple(x_hw) == tuple(kernel_hw) and padding == ((0, 0), (0, 0)) and tuple(dilation) == (1, 1)


def _weight_rows(w, groups):
    """w (Cout, C / G, kh, kw) as (G, Cout / G, kh * kw * C / G), C-ordered: each output channel's weights in the
    column matrix's order. Free for a channels-last weight (how nn.Conv2d and nn.ConvTranspose2d store theirs),
    a copy for any other."""
    cout, cg, kh, kw = w.shape
    w = w.reshape(groups, cout // groups, cg, kh, kw).transpose(0, 1, 3, 4, 2)
    return array_module_of(w).ascontiguousarray(w).reshape(groups, cout // groups, kh * kw * cg)


def _weight_from_rows(gw, shape):
    """The adjoint of _weight_rows: (G, Cout / G, kh * kw * C / G) as a w of ``shape``, stored channels-last
    (a view: the layout of the weights of nn's convolutions, whose optimizers then update it as it lies)."""
    cout, cg, kh, kw = shape
    return gw.reshape(cout, kh, kw, cg).transpose(0, 3, 1, 2)


def _rows(t):
    """(N, C, OH, OW) -> C-ordered (N * OH * OW, C), the layout of the products."""
    xp = array_module_of(t)
    return xp.ascontiguousarray(t.transpose(0, 2, 3, 1)).reshape(-1, t.shape[1])


def _nchw(rows, n, out_hw, channels):
    """(N * OH * OW, C) -> (N, C, OH, OW) without a copy: the image stored channels-last, as PyTorch's
    ``channels_last`` format. The next layers take it as it is: batch norm works on (N * OH * OW, C) rows, the
    elementwise kernels on any dense layout, and ``_rows`` of a channels-last gradient is free."""
    return rows.reshape((n,) + tuple(out_hw) + (channels,)).transpose(0, 3, 1, 2)


def _mm_groups(a, b, groups):
    """a (R, G * Ka) times b (G, Ka, Cb) group by group -> (R, G * Cb)."""
    if groups == 1:
        return mm(a, b[0])
    r = a.shape[0]
    return mm(a.reshape(r, groups, a.shape[1] // groups).transpose(1, 0, 2), b).transpose(1, 0, 2).reshape(
        r, groups * b.shape[2])


def _batch_parts(x, n, sample_bytes):
    """(parts, threaded): the batch as slices of equal size and whether they run on tinygen's threads.

    On a host array (NumPy or the stand-in) whose column matrix would hold more than CHUNK_BYTES, the batch runs in
    parts of at most CHUNK_BYTES, one after the other (a part's matrix comes from freed heap memory where a whole
    one from 32 MiB is mapped afresh each time, and is still partly in the cache when its product reads it:
    DCGAN's batch-256 step in parts of at most 16 MiB took 294-306 ms against 303-339 ms whole, 2 cores, medians of
    alternating rounds, three runs: ``step_bench --case dcgan --batch 256 --threads 2 --compare parts``; smaller
    parts gained no more on their own, and at batch 64, a 12.8 MB matrix, two parts lost 2%).

    From THREADS_MIN_BYTES, in parts of THREAD_PART_BYTES that run on the thread pool (``_over_parts``): each part's
    matrix is made, multiplied and summed back by one core with BLAS on one thread, in that core's cache. DCGAN's
    batch-256 step (51 MB matrices) took 240-251 against 259-276 ms this way (three to six runs each, alternating
    processes); at batch 16 and 64 (3.2 and 12.8 MB matrices) it lost 10-35%, MKL's worker spinning after each
    product on the core the pool's thread needs, hence the threshold. The whole batch on a GPU."""
    if type(x) not in _HOST:
        return [slice(0, n)], False
    threaded = bool(THREADS_MIN_BYTES) and n * sample_bytes >= THREADS_MIN_BYTES and n > 1
    limit = THREAD_PART_BYTES if threaded else CHUNK_BYTES
    if not limit or n * sample_bytes <= limit:
        return [slice(0, n)], False
    count = -(-n * sample_bytes // limit)
    size = -(-n // count)
    return [slice(lo, min(n, lo + size)) for lo in range(0, n, size)], threaded


def _over_parts(run, count, threaded, x):
    """``run(lo, hi)`` over the parts [0, count) of a batch. Threaded: with BLAS on one thread, each thread taking a
    run of parts (threads.in_chunks) on a NumPy batch, and on the stand-in the same runs one after the other (the
    same products and sums, so the same bits); else one run, BLAS as it is. Where BLAS's threads cannot be set (no
    threadpoolctl), threaded parts run as one run too."""
    if threaded:
        threads.on_one_blas_thread(_on_threads, run, count, type(x) is not np.ndarray)
    else:
        run(0, count)


def _on_threads(blas_threads, run, count, in_order):
    if blas_threads is None:  # BLAS's threads as they are: one run
        run(0, count)
    else:
        threads.in_chunks(run, count, threads.get_num_threads, min_size=2, in_order=in_order)


def make_conv_kernels(im2col, col2im):
    """conv2d_fwd, conv2d_bwd_input and conv2d_bwd_weight around a given im2col/col2im pair (the GEMMs, the layout
    and the parts of the batch are the same for every version; cpu's Numba pair plugs in here)."""

    def columns(x, kernel_hw, stride, padding, dilation, out_hw, groups):
        """x's column matrix, (N * OH * OW, G * kh * kw * C / G)."""
        n = x.shape[0]
        if groups == 1 and _whole_image(x.shape[2:], kernel_hw, padding, dilation):
            return array_module_of(x).ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(n, math.prod(x.shape[1:]))
        cols = im2col(x, kernel_hw, stride, padding, dilation, out_hw, groups)  # explicit sizes: n may be 0
        return cols.reshape(n * out_hw[0] * out_hw[1], kernel_hw[0] * kernel_hw[1] * x.shape[1])

    def parts(x, kernel_hw, out_hw):
        """(parts, threaded) of x's batch (_batch_parts) for its column matrix."""
        return _batch_parts(x, x.shape[0], math.prod(out_hw) * math.prod(kernel_hw) * x.shape[1] * x.dtype.itemsize)

    def conv2d_fwd(x, w, stride, padding, dilation, groups, keep_cols=False):
        """Cross-correlation of x (N, C, H, W) with w (Cout, C / groups, kh, kw); no bias. With ``keep_cols``:
        (y, x's column matrix as a list of the batch's parts), which conv2d_bwd_weight takes instead of building
        it again; None for threaded parts, which it builds again (in a core's cache, where kept ones would have
        gone out to memory and back)."""
        out_hw = _out_hw(x.shape[2:], w.shape[2:], stride, padding, dilation)
        # the weight's rows as the product's columns: a transposed view, which BLAS reads as fast as a copy
        w_cols = _weight_rows(w, groups).transpose(0, 2, 1)
        batch, threaded = parts(x, w.shape[2:], out_hw)
        if len(batch) == 1:
            cols = columns(x, w.shape[2:], stride, padding, dilation, out_hw, groups)
            y = _nchw(_mm_groups(cols, w_cols, groups), x.shape[0], out_hw, w.shape[0])
            return (y, [cols]) if keep_cols else y
        per_sample = out_hw[0] * out_hw[1]
        rows = array_module_of(x).empty((x.shape[0] * per_sample, w.shape[0]), dtype=x.dtype)
        cols = None if threaded else [None] * len(batch)  # the parts' matrices, kept when asked

        def run(lo, hi):  # each part's matrix made just before its product, which writes the part's rows of y
            for i in range(lo, hi):
                s = batch[i]
                part = columns(x[s], w.shape[2:], stride, padding, dilation, out_hw, groups)
                rows[s.start * per_sample:s.stop * per_sample] = _mm_groups(part, w_cols, groups)
                if keep_cols and cols is not None:
                    cols[i] = part
        _over_parts(run, len(batch), threaded, x)
        y = _nchw(rows, x.shape[0], out_hw, w.shape[0])
        return (y, cols) if keep_cols else y

    def conv2d_bwd_input(g, w, x_hw, stride, padding, dilation, groups):
        """dL/dx of conv2d for the upstream gradient g (N, Cout, OH, OW), x of spatial size ``x_hw``: also the
        forward of conv_transpose2d (input g, weight w of shape (Cin_of_transpose, Cout_of_transpose / groups, kh,
        kw))."""
        n, _, oh, ow = g.shape
        _, cg, kh, kw = w.shape
        rows, w_rows = _rows(g), _weight_rows(w, groups)
        if groups == 1 and _whole_image(x_hw, (kh, kw), padding, dilation):  # (N, H * W * C): channels-last
            return _nchw(_mm_groups(rows, w_rows, groups), n, x_hw, groups * cg)
        batch, threaded = _batch_parts(g, n, oh * ow * kh * kw * groups * cg * g.dtype.itemsize)
        if len(batch) == 1:
            cols = _mm_groups(rows, w_rows, groups).reshape((n, oh, ow, groups, kh, kw, cg))
            return col2im(cols, (n, groups * cg) + tuple(x_hw), stride, padding, dilation)
        # each part's sum goes into its samples of one channels-last image
        image = array_module_of(g).zeros((n,) + tuple(x_hw) + (groups * cg,), dtype=g.dtype)

        def run(lo, hi):
            for s in batch[lo:hi]:
                cols = _mm_groups(rows[s.start * oh * ow:s.stop * oh * ow], w_rows, groups)  # the part's columns
                cols = cols.reshape((s.stop - s.start, oh, ow, groups, kh, kw, cg))
                col2im(cols, (s.stop - s.start, groups * cg) + tuple(x_hw), stride, padding, dilation, out=image[s])
        _over_parts(run, len(batch), threaded, g)
        return image.transpose(0, 3, 1, 2)

    def conv2d_bwd_weight(x, g, kernel_hw, stride, padding, dilation, groups, cols=None):
        """dL/dw of conv2d: x (N, C, H, W), upstream g (N, Cout, OH, OW) -> (Cout, C / groups, kh, kw); ``cols``:
        x's column matrix from conv2d_fwd(..., keep_cols=True), else it is built here, part by part. The parts'
        products are added in batch order."""
        cout, per_sample = g.shape[1], g.shape[2] * g.shape[3]
        rows = _rows(g)
        batch, threaded = parts(x, kernel_hw, g.shape[2:])
        sums = {}  # first part of a run of parts -> the sum of the run's products, in batch order

        def run(lo, hi):
            total = None
            for i in range(lo, hi):
                s = batch[i]
                part = cols[i] if cols is not None else columns(x[s], kernel_hw, stride, padding, dilation,
                                                                g.shape[2:], groups)
                g_part = rows[s.start * per_sample:s.stop * per_sample]
                # (Cout, N*P) @ (N*P, K), both read transposed: the result is C-ordered in the weight's row order,
                # so putting it back in w's layout is a permutation within each row (the other orientation, (K,
                # Cout) transposed, made that copy stride across the whole result: 1.8 against 0.75 ms for DCGAN's
                # 7x7 layer)
                if groups == 1:
                    term = mm(g_part.T, part)
                else:
                    r = g_part.shape[0]
                    term = mm(g_part.reshape(r, groups, cout // groups).transpose(1, 2, 0),
                              part.reshape(r, groups, part.shape[1] // groups).transpose(1, 0, 2))
                total = term if total is None else total + term
            sums[lo] = total
        _over_parts(run, len(batch), threaded, x)
        gw = None
        for lo in sorted(sums):  # one run, or one per thread: their sums added in batch order
            gw = sums[lo] if gw is None else gw + sums[lo]
        return _weight_from_rows(gw, (cout, x.shape[1] // groups) + tuple(kernel_hw))

    return conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight


conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight = make_conv_kernels(im2col, col2im)


def max_pool2d_fwd(x, kernel, stride, padding, dilation, out_hw):
    """Max over each window (padding never wins) and the flat index (in its H*W plane) of the first maximum in
    window order, as PyTorch; a NaN wins over numbers."""
    xp = array_module_of(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out_hw
    # ceil mode: the last window may reach past the padded input
    extra = (max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph)),
             max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw)))
    xpad = _padded(xp, x, ((ph, ph), (pw, pw)), -np.inf, extra)
    best = _window(xpad, 0, 0, stride, dilation, out_hw).copy()
    best_at = xp.zeros(best.shape, dtype=np.int64)  # kernel offset of the maximum so far
    for k in range(1, kh * kw):
        v = _window(xpad, k // kw, k % kw, stride, dilation, out_hw)
        better = (v > best) | (xp.isnan(v) & ~xp.isnan(best))
        best = xp.where(better, v, best)
        best_at = xp.where(better, k, best_at)
    rows = xp.arange(oh).reshape(oh, 1) * sh - ph + (best_at // kw) * dh
    cols = xp.arange(ow).reshape(1, ow) * sw - pw + (best_at % kw) * dw
    # a dilated window can miss the input altogether: its maximum is -inf (as PyTorch) and its index -1 (no gradient)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return best, xp.where(inside, rows * w + cols, -1)


def max_pool2d_bwd(g, index, x_hw):
    """Each upstream gradient added at its window's maximum (windows may overlap, so gradients add up)."""
    xp = array_module_of(g)
    n, c = g.shape[:2]
    plane = x_hw[0] * x_hw[1]
    flat, g = _flat_index(xp, index, n * c, plane), g.reshape(-1)
    if index.size and int(index.min()) < 0:  # windows that missed the input pass no gradient
        g = xp.where(index.reshape(-1) >= 0, g, 0)
    gx = xp.bincount(flat, weights=g, minlength=n * c * plane)  # sums in float64
    return gx.astype(g.dtype).reshape((n, c) + tuple(x_hw))


def _flat_index(xp, index, planes, plane):
    """Indices into the flattened input from indices within each of its ``planes`` planes (-1 becomes a valid
    index: callers zero those gradients)."""
    flat = index.reshape(planes, -1) + xp.arange(planes).reshape(-1, 1) * plane
    return xp.maximum(flat.reshape(-1), 0)


def separable_map2d(x, rows, cols):
    """rows @ x @ cols.T over the last two axes of x (N, C, H, W): rows (OH, H), cols (OW, W)."""
    return mm(mm(rows, x), cols.T)


# ---- the matrices of the separable maps (host NumPy, float64; the op moves them to the device and dtype) -------------
def avg_pool_matrix(size, kernel, stride, pad, out, count_include_pad):
    """(out, size): row i averages the window of output i, with PyTorch's divisor: the window clipped to the padded
    input (count_include_pad) or to the input itself."""
    m = np.zeros((out, size))
    div = np.empty(out)
    for i in range(out):
        start = i * stride - pad
        end = min(start + kernel, size + pad)
        div[i] = end - start
        start, end = max(start, 0), min(end, size)
        m[i, start:end] = 1.0
        if not count_include_pad:
            div[i] = end - start
    return m, div


def adaptive_pool_matrix(size, out):
    """(out, size): row i covers [floor(i * size / out), ceil((i + 1) * size / out)), as PyTorch."""
    m = np.zeros((out, size))
    div = np.empty(out)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:end] = 1.0
        div[i] = end - start
    return m, div


def nearest_matrix(size, out, scale_factor=None):
    """(out, size): output i copies input min(floor(i * scale), size - 1), PyTorch's 'nearest' rule, with its
    float32 scale: 1 / scale_factor when one is given, else size / out."""
    m = np.zeros((out, size))
    scale = np.float32(1.0 / scale_factor) if scale_factor is not None else np.float32(size) / np.float32(out)
    src = np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), size - 1)
    m[np.arange(out), src] = 1.0
    return m
