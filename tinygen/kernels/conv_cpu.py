"""Numba versions of the convolution kernels of conv.py: im2col and col2im as compiled loops that write (im2col)
or read (col2im) the column matrix in memory order, with the padding handled by bounds checks instead of a padded
copy. The GEMMs and the layout are conv.py's own (``make_conv_kernels``), so only the memory-bound copies change.

Measured against the reference (float32, 4x4 kernels, stride 2, the DCGAN maps 1x28x28, 64x14x14, 128x7x7, batch
16/64/256, on a 2-core machine shared with other jobs): the serial loops are 1.3-4x faster for col2im and 0.9-2x
for im2col. The thread-parallel twins (one block of channels per thread) were erratic there (0.5-2x), so they
start only from PARALLEL_MIN elements, above these sizes; a machine with idle cores can lower it.

The pooling kernels have no Numba version: they are a small share of a step, and the reference is already one
vectorized pass per kernel offset.
"""

import numba
import numpy as np
from numba import njit, prange

from .. import config
from . import conv as _ref

# Column-matrix elements from which the copies run one block of rows/channels per thread (override:
# TINYGEN_CONV_PARALLEL_MIN).
PARALLEL_MIN = config.get("TINYGEN_CONV_PARALLEL_MIN")


@njit(cache=True)
def _im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, cols, r0, r1):
    """Rows r0 <= r < r1 of cols viewed as (C * kh * kw, N, OH, OW): each row is written in memory order."""
    n, _, h, w = x.shape
    oh, ow = cols.shape[4], cols.shape[5]
    zero = x.dtype.type(0)
    for row in range(r0, r1):
        ch, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        for b in range(n):
            for y in range(oh):
                r = y * sh - pt + i * dh
                if r < 0 or r >= h:
                    for z in range(ow):
                        cols[ch, i, j, b, y, z] = zero
                else:
                    for z in range(ow):
                        q = z * sw - pl + j * dw
                        cols[ch, i, j, b, y, z] = x[b, ch, r, q] if 0 <= q < w else zero


@njit(cache=True, parallel=True)
def _im2col_par(x, kh, kw, sh, sw, pt, pl, dh, dw, cols, nch):
    rows = cols.shape[0] * kh * kw
    step = (rows + nch - 1) // nch
    for k in prange(nch):
        _im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, cols, k * step, min(rows, (k + 1) * step))


@njit(cache=True)
def _col2im(cols, sh, sw, pt, pl, dh, dw, out, c0, c1):
    """out[:, ch] += the windows of cols[ch] for the channels c0 <= ch < c1 (cols read in memory order)."""
    _, kh, kw, n, oh, ow = cols.shape
    h, w = out.shape[2], out.shape[3]
    for ch in range(c0, c1):
        for i in range(kh):
            for j in range(kw):
                for b in range(n):
                    for y in range(oh):
                        r = y * sh - pt + i * dh
                        if 0 <= r < h:
                            for z in range(ow):
                                q = z * sw - pl + j * dw
                                if 0 <= q < w:
                                    out[b, ch, r, q] += cols[ch, i, j, b, y, z]


@njit(cache=True, parallel=True)
def _col2im_par(cols, sh, sw, pt, pl, dh, dw, out, nch):
    c = cols.shape[0]
    step = (c + nch - 1) // nch
    for k in prange(nch):
        _col2im(cols, sh, sw, pt, pl, dh, dw, out, k * step, min(c, (k + 1) * step))


def _chunks(size, n):
    """Threads for a copy of ``size`` elements split in ``n`` parts: 0 (serial) below PARALLEL_MIN."""
    t = min(numba.get_num_threads(), n)
    return t if size >= PARALLEL_MIN and t > 1 else 0


def im2col(x, kernel_hw, stride, padding, dilation, out_hw):
    """conv.im2col as one parallel loop: (C, kh, kw, N, OH, OW)."""
    x = np.ascontiguousarray(x)
    n, c = x.shape[:2]
    cols = np.empty((c,) + tuple(kernel_hw) + (n,) + tuple(out_hw), dtype=x.dtype)
    args = (x, kernel_hw[0], kernel_hw[1], stride[0], stride[1], padding[0][0], padding[1][0], dilation[0],
            dilation[1], cols)
    rows = c * kernel_hw[0] * kernel_hw[1]
    nch = _chunks(cols.size, rows)
    if nch:
        _im2col_par(*args, nch)
    else:
        _im2col(*args, 0, rows)
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """conv.col2im as one parallel loop."""
    cols = np.ascontiguousarray(cols)
    out = np.zeros(tuple(x_shape), dtype=cols.dtype)
    args = (cols, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1], out)
    nch = _chunks(cols.size, out.shape[1])
    if nch:
        _col2im_par(*args, nch)
    else:
        _col2im(*args, 0, out.shape[1])
    return out


conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight = _ref.make_conv_kernels(im2col, col2im)
