"""Numba versions of the convolution kernels of conv.py: im2col and col2im as compiled loops over the column matrix
(N * OH * OW, C * kh * kw), with the padding handled by bounds checks instead of a padded copy. The GEMMs and the
layout are conv.py's own (``make_conv_kernels``), so only the memory-bound copies change.

im2col writes the column matrix in memory order; col2im sums one sample at a time into a channels-last image, so
the sample being summed stays in the core's cache. Both split the work over the threads by sample, so no two
threads write the same memory; they start
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
def _im2col_sample_cl(xh, b, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    """_im2col_sample for a channels-last image, given as xh (N, H, W, C): each pixel's channels read at once."""
    _, h, w, c = xh.shape
    oh, ow = cols.shape[1], cols.shape[2]
    zero = xh.dtype.type(0)
    for y in range(oh):
        for z in range(ow):
            for i in range(kh):
                r = y * sh - pt + i * dh
                for j in range(kw):
                    q = z * sw - pl + j * dw
                    if 0 <= r < h and 0 <= q < w:
                        for ch in range(c):
                            cols[b, y, z, ch, i, j] = xh[b, r, q, ch]
                    else:
                        for ch in range(c):
                            cols[b, y, z, ch, i, j] = zero


@njit(cache=True)
def _im2col(x, channels_last, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    for b in range(x.shape[0]):
        if channels_last:
            _im2col_sample_cl(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)
        else:
            _im2col_sample(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)


@njit(cache=True, parallel=True)
def _im2col_par(x, channels_last, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    for b in prange(x.shape[0]):
        if channels_last:
            _im2col_sample_cl(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)
        else:
            _im2col_sample(x, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)


@njit(cache=True)
def _col2im_sample(cols, b, sh, sw, pt, pl, dh, dw, out):
    """out[b] (H, W, C), channels-last: the sum of sample b's column entries, each pixel's channels at once."""
    _, oh, ow, c, kh, kw = cols.shape
    h, w = out.shape[1], out.shape[2]
    for i in range(kh):  # kernel offsets outermost: each pixel adds its terms in the reference's order
        for j in range(kw):
            for y in range(oh):
                r = y * sh - pt + i * dh
                if 0 <= r < h:
                    for z in range(ow):
                        q = z * sw - pl + j * dw
                        if 0 <= q < w:
                            for ch in range(c):
                                out[b, r, q, ch] += cols[b, y, z, ch, i, j]


@njit(cache=True)
def _col2im(cols, sh, sw, pt, pl, dh, dw, out):
    for b in range(out.shape[0]):
        _col2im_sample(cols, b, sh, sw, pt, pl, dh, dw, out)


@njit(cache=True, parallel=True)
def _col2im_par(cols, sh, sw, pt, pl, dh, dw, out):
    for b in prange(out.shape[0]):
        _col2im_sample(cols, b, sh, sw, pt, pl, dh, dw, out)


def _parallel(size, parts):
    """Whether a copy of ``size`` elements in ``parts`` independent parts runs on the threads."""
    return size >= PARALLEL_MIN and parts > 1 and numba.get_num_threads() > 1


def im2col(x, kernel_hw, stride, padding, dilation, out_hw):
    """conv.im2col as one compiled loop: (N, OH, OW, C, kh, kw). A channels-last x is read where it lies."""
    n, c = x.shape[:2]
    cols = np.empty((n,) + tuple(out_hw) + (c,) + tuple(kernel_hw), dtype=x.dtype)
    xh = x.transpose(0, 2, 3, 1)
    channels_last = bool(xh.flags.c_contiguous) and not x.flags.c_contiguous
    x = xh if channels_last else np.ascontiguousarray(x)
    args = (x, channels_last, kernel_hw[0], kernel_hw[1], stride[0], stride[1], padding[0][0], padding[1][0],
            dilation[0], dilation[1], cols)
    (_im2col_par if _parallel(cols.size, n) else _im2col)(*args)
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """conv.col2im as one compiled loop; the image is channels-last, as the reference's."""
    cols = np.ascontiguousarray(cols)
    n, c, h, w = x_shape
    out = np.zeros((n, h, w, c), dtype=cols.dtype)
    args = (cols, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1], out)
    (_col2im_par if _parallel(cols.size, n) else _col2im)(*args)
    return out.transpose(0, 3, 1, 2)


conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight = _ref.make_conv_kernels(im2col, col2im)
