"""Numba versions of the convolution kernels of conv.py: im2col and col2im as compiled loops over the column matrix
(N * OH * OW, C * kh * kw), with the padding handled by bounds checks instead of a padded copy. The GEMMs and the
layout are conv.py's own (``make_conv_kernels``), so only the memory-bound copies change.

im2col writes the column matrix in memory order; col2im gathers, for one (sample, channel) plane at a time, every
column entry that lands in it, so the plane being summed stays in the core's cache. Both split the work over the
threads by sample (im2col) or (sample, channel) plane (col2im), so no two threads write the same memory; they start
threads only from PARALLEL_MIN elements of the column matrix (override: TINYGEN_CONV_PARALLEL_MIN), below which
starting them costs more than it saves.

The pooling kernels have no Numba version: they are a small share of a step, and the reference is already one
vectorized pass per kernel offset.
"""

import numba
import numpy as np
from numba import njit, prange

from .. import config
from . import conv as _ref

PARALLEL_MIN = config.get("TINYGEN_CONV_PARALLEL_MIN")


@njit(cache=True)
def _im2col_sample(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    """The rows of sample b of cols viewed as (N, OH, OW, C, kh, kw), written in memory order."""
    _, c, h, w = x.shape
    oh, ow = cols.shape[1], cols.shape[2]
    zero = x.dtype.type(0)
    for y in range(oh):
        for z in range(ow):
            for ch in range(c):
                for i in range(kh):
                    r = y * sh - pt + i * dh
                    if r < 0 or r >= h:
                        for j in range(kw):
                            cols[b, y, z, ch, i, j] = zero
                    else:
                        for j in range(kw):
                            q = z * sw - pl + j * dw
                            cols[b, y, z, ch, i, j] = x[b, ch, r, q] if 0 <= q < w else zero


@njit(cache=True)
def _im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    for b in range(x.shape[0]):
        _im2col_sample(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)


@njit(cache=True, parallel=True)
def _im2col_par(x, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    for b in prange(x.shape[0]):
        _im2col_sample(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)


@njit(cache=True)
def _col2im_plane(cols, p, sh, sw, pt, pl, dh, dw, out):
    """out[b, ch] = the sum of the column entries that fall in plane p = b * C + ch."""
    _, oh, ow, c, kh, kw = cols.shape
    h, w = out.shape[2], out.shape[3]
    b, ch = p // c, p % c
    for i in range(kh):  # kernel offsets outermost: each pixel adds its terms in the reference's order
        for j in range(kw):
            for y in range(oh):
                r = y * sh - pt + i * dh
                if 0 <= r < h:
                    for z in range(ow):
                        q = z * sw - pl + j * dw
                        if 0 <= q < w:
                            out[b, ch, r, q] += cols[b, y, z, ch, i, j]


@njit(cache=True)
def _col2im(cols, sh, sw, pt, pl, dh, dw, out):
    for p in range(out.shape[0] * out.shape[1]):
        _col2im_plane(cols, p, sh, sw, pt, pl, dh, dw, out)


@njit(cache=True, parallel=True)
def _col2im_par(cols, sh, sw, pt, pl, dh, dw, out):
    for p in prange(out.shape[0] * out.shape[1]):
        _col2im_plane(cols, p, sh, sw, pt, pl, dh, dw, out)


def _parallel(size, parts):
    """Whether a copy of ``size`` elements in ``parts`` independent parts runs on the threads."""
    return size >= PARALLEL_MIN and parts > 1 and numba.get_num_threads() > 1


def im2col(x, kernel_hw, stride, padding, dilation, out_hw):
    """conv.im2col as one compiled loop: (N, OH, OW, C, kh, kw)."""
    x = np.ascontiguousarray(x)
    n, c = x.shape[:2]
    cols = np.empty((n,) + tuple(out_hw) + (c,) + tuple(kernel_hw), dtype=x.dtype)
    args = (x, kernel_hw[0], kernel_hw[1], stride[0], stride[1], padding[0][0], padding[1][0], dilation[0],
            dilation[1], cols)
    (_im2col_par if _parallel(cols.size, n) else _im2col)(*args)
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """conv.col2im as one compiled loop."""
    cols = np.ascontiguousarray(cols)
    out = np.zeros(tuple(x_shape), dtype=cols.dtype)
    args = (cols, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1], out)
    (_col2im_par if _parallel(cols.size, x_shape[0] * x_shape[1]) else _col2im)(*args)
    return out


conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight = _ref.make_conv_kernels(im2col, col2im)
