"""Convolution and pooling on arrays: the one reference definition, for any array module (NumPy, CuPy, the
stand-in). Only the module's own functions and array operators are used (no ``as_strided``): the windows of an
image are ``kh * kw`` strided slices of the padded image, one per kernel offset, and the products are the BLAS's
GEMM through ``@``.

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

Layout: the column matrix has one row per output position and one column per weight entry, (N * OH * OW,
C * kh * kw), so one GEMM covers the batch and every product keeps the long N * OH * OW axis as the rows of its
result or as its reduction, with both operands C-ordered: the orientation OpenBLAS threads well (the other one,
(C * kh * kw, N * OH * OW), ran the DCGAN's products 2-4x slower on two threads). Only the small (N * OH * OW,
Cout) results and gradients are transposed to and from (N, Cout, OH, OW), and the results not even that: they
are returned as channels-last views (``_nchw``).
"""
import numpy as np

from ..backend import array_module_of


def conv_out_size(size, kernel, stride, pad_total, dilation):
    """Output length of a convolution or pooling window sweep (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


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


def im2col(x, kernel_hw, stride, padding, dilation, out_hw):
    """The windows of x (N, C, H, W) as an array (N, OH, OW, C, kh, kw): one row per output position."""
    xp = array_module_of(x)
    n, c = x.shape[:2]
    kh, kw = kernel_hw
    xpad = _padded(xp, x, padding)
    cols = xp.empty((n,) + tuple(out_hw) + (c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, :, i, j] = _window(xpad, i, j, stride, dilation, out_hw).transpose(0, 2, 3, 1)
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """The adjoint of im2col: cols (N, OH, OW, C, kh, kw) summed back into an image of ``x_shape``, stored
    channels-last (see ``_nchw``)."""
    xp = array_module_of(cols)
    n, oh, ow, c, kh, kw = cols.shape
    (pt, pb), (pl, pr) = padding
    h, w = x_shape[2:]
    xpad = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=cols.dtype).transpose(0, 3, 1, 2)
    for i in range(kh):
        for j in range(kw):
            _window(xpad, i, j, stride, dilation, (oh, ow))[...] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return xpad[:, :, pt:pt + h, pl:pl + w]


def _out_hw(x_hw, kernel_hw, stride, padding, dilation):
    return tuple(conv_out_size(x_hw[a], kernel_hw[a], stride[a], sum(padding[a]), dilation[a]) for a in (0, 1))


def _whole_image(x_hw, kernel_hw, padding, dilation):
    """True when the one window is the whole unpadded image (a 7x7 kernel on a 7x7 map, DCGAN's first and last
    layers): the column matrix is then the image itself, (N, C * H * W), with nothing to copy."""
    return tuple(x_hw) == tuple(kernel_hw) and padding == ((0, 0), (0, 0)) and tuple(dilation) == (1, 1)


def _pixel_major(x, kernel_hw, padding, dilation, groups):
    """True when x's column matrix is x itself in (H, W, C) order, read where it lies: the one window is the whole
    image and x is stored channels-last (what a convolution returns), without groups. The weight is then
    permuted to (Cout, kh, kw, C) to match, a small copy, instead of the image to (C, H, W)."""
    return (groups == 1 and _whole_image(x.shape[2:], kernel_hw, padding, dilation) and not x.flags.c_contiguous
            and x.transpose(0, 2, 3, 1).flags.c_contiguous)


def _weight_hwc(w):
    """w (Cout, C, kh, kw) as C-ordered (Cout, kh * kw * C): the weight of a pixel-major column matrix."""
    return array_module_of(w).ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)


def _rows(t):
    """(N, C, OH, OW) -> C-ordered (N * OH * OW, C), the layout of the products."""
    xp = array_module_of(t)
    return xp.ascontiguousarray(t.transpose(0, 2, 3, 1)).reshape(-1, t.shape[1])


def _nchw(rows, n, out_hw):
    """(N * OH * OW, C) -> (N, C, OH, OW) without a copy: the image stored channels-last, as PyTorch's
    ``channels_last`` format. The next layers take it as it is: batch norm works on (N * OH * OW, C) rows, the
    elementwise kernels on any dense layout, and ``_rows`` of a channels-last gradient is free."""
    return rows.reshape((n,) + tuple(out_hw) + (-1,)).transpose(0, 3, 1, 2)


def _mm_groups(a, b, groups):
    """a (R, G * Ka) times b (G, Ka, Cb) group by group -> (R, G * Cb)."""
    if groups == 1:
        return a @ b[0]
    r = a.shape[0]
    return (a.reshape(r, groups, -1).transpose(1, 0, 2) @ b).transpose(1, 0, 2).reshape(r, -1)


def make_conv_kernels(im2col, col2im):
    """conv2d_fwd, conv2d_bwd_input and conv2d_bwd_weight around a given im2col/col2im pair (the GEMMs and the
    layout are the same for every version; cpu's Numba pair plugs in here)."""

    def columns(x, kernel_hw, stride, padding, dilation, out_hw, pixel_major):
        """x's column matrix (N * OH * OW, C * kh * kw), or (N, H * W * C) where ``pixel_major`` (the caller's
        ``_pixel_major``, which also decides the weight's order)."""
        n = x.shape[0]
        if pixel_major:
            return x.transpose(0, 2, 3, 1).reshape(n, -1)
        if _whole_image(x.shape[2:], kernel_hw, padding, dilation):
            return array_module_of(x).ascontiguousarray(x).reshape(n, -1)
        return im2col(x, kernel_hw, stride, padding, dilation, out_hw).reshape(n * out_hw[0] * out_hw[1], -1)

    def conv2d_fwd(x, w, stride, padding, dilation, groups, keep_cols=False):
        """Cross-correlation of x (N, C, H, W) with w (Cout, C / groups, kh, kw); no bias. With ``keep_cols``:
        (y, x's column matrix), which conv2d_bwd_weight takes instead of building it again."""
        xp = array_module_of(x)
        cout, cg, kh, kw = w.shape
        out_hw = _out_hw(x.shape[2:], (kh, kw), stride, padding, dilation)
        pixel_major = _pixel_major(x, (kh, kw), padding, dilation, groups)
        cols = columns(x, (kh, kw), stride, padding, dilation, out_hw, pixel_major)
        if pixel_major:
            wt = _weight_hwc(w).T[None]
        else:
            wt = xp.ascontiguousarray(w.reshape(groups, cout // groups, cg * kh * kw).transpose(0, 2, 1))
        y = _nchw(_mm_groups(cols, wt, groups), x.shape[0], out_hw)
        return (y, cols) if keep_cols else y

    def conv2d_bwd_input(g, w, x_hw, stride, padding, dilation, groups):
        """dL/dx of conv2d for the upstream gradient g (N, Cout, OH, OW), x of spatial size ``x_hw``: also the
        forward of conv_transpose2d (input g, weight w of shape (Cin_of_transpose, Cout_of_transpose / groups, kh,
        kw))."""
        n, cout, oh, ow = g.shape
        _, cg, kh, kw = w.shape
        x_shape = (n, groups * cg) + tuple(x_hw)
        if groups == 1 and _whole_image(x_hw, (kh, kw), padding, dilation):  # (N, H * W * C): channels-last
            return _nchw(_rows(g) @ _weight_hwc(w), n, x_hw)
        cols = _mm_groups(_rows(g), w.reshape(groups, cout // groups, cg * kh * kw), groups)  # (N*OH*OW, C*kh*kw)
        if _whole_image(x_hw, (kh, kw), padding, dilation):
            return cols.reshape(x_shape)
        cols = cols.reshape((n, oh, ow, groups * cg, kh, kw))
        return col2im(cols, x_shape, stride, padding, dilation)

    def conv2d_bwd_weight(x, g, kernel_hw, stride, padding, dilation, groups, cols=None):
        """dL/dw of conv2d: x (N, C, H, W), upstream g (N, Cout, OH, OW) -> (Cout, C / groups, kh, kw); ``cols``:
        x's column matrix from conv2d_fwd(..., keep_cols=True), else it is built here."""
        c = x.shape[1]
        cout = g.shape[1]
        kh, kw = kernel_hw
        cg = c // groups
        pixel_major = _pixel_major(x, (kh, kw), padding, dilation, groups)
        if cols is None:
            cols = columns(x, (kh, kw), stride, padding, dilation, g.shape[2:], pixel_major)
        rows = _rows(g)
        if pixel_major:  # (Cout, kh, kw, C) back to w's order
            gw = (cols.T @ rows).T.reshape(cout, kh, kw, c).transpose(0, 3, 1, 2)
            return array_module_of(x).ascontiguousarray(gw)
        if groups == 1:
            gw = (cols.T @ rows).T  # (K, N*P) @ (N*P, Cout): the orientation that threads well
        else:
            r = rows.shape[0]
            gw = (cols.reshape(r, groups, -1).transpose(1, 2, 0) @ rows.reshape(r, groups, -1).transpose(1, 0, 2))
            gw = gw.transpose(0, 2, 1)  # (G, Cout/G, Cg*kh*kw)
        return array_module_of(x).ascontiguousarray(gw).reshape(cout, cg, kh, kw)

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
    return (rows @ x) @ cols.T


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
