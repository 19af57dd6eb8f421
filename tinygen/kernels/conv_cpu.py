"""Numba versions of the convolution kernels of conv.py: im2col and col2im as compiled loops over the column matrix
(N, OH, OW, G, kh, kw, C / G), with the padding handled by bounds checks instead of a padded copy. The GEMMs and
the layout are conv.py's own (``make_conv_kernels``), so only the memory-bound copies change.

Both work on channels-last images (N, H, W, C), what a convolution returns; another input is copied to that layout
first (a copy of the image, which is kh * kw / (stride^2) times smaller than its column matrix). im2col then copies
each window pixel's run of channels where it lies; col2im sums one sample at a time, kernel offsets outermost, each
pixel's run of channels at once, so the sample being summed stays in the core's cache. With one channel a group
(a grey image, the first and last layers of an image model) a run is one value, so both loop along the output
columns instead, over the range of columns whose window lies inside the image (2-4x faster there). Both split
the batch by samples on tinygen's pool (threads.in_chunks: threads that sleep between calls), so no two threads
write the same memory and each sample's sums keep their order (the same bits), from PARALLEL_MIN elements of the
column matrix (the setting TINYGEN_CONV_PARALLEL_MIN, 2^20). Numba's parallel loops did this before and lost inside
a step: their OpenMP threads spin after each loop and took the core from BLAS's threads (the DCGAN's batch-64 step
130 against 56 ms from 10^5 elements). With the pool's split, the DCGAN's batch-256 step ran at 0.80-0.84x PyTorch
against 0.66-0.73x without (four alternating runs of ``python -m benchmarks --models dcgan``), batch 64 level;
at batch 16 no matrix is that large.

The pooling kernels have no Numba version: they are a small share of a step, and the reference is already one
vectorized pass per kernel offset.
"""

import numpy as np
from numba import njit

from .. import config
from . import conv as _ref, threads

PARALLEL_MIN = config.get("TINYGEN_CONV_PARALLEL_MIN")


@njit(cache=True)
def _z_range(j, dw, pl, sw, w, ow):
    """(lo, hi): the output columns z in [lo, hi) whose input column z * sw - pl + j * dw lies in [0, w)."""
    off = pl - j * dw
    lo = min(ow, 0 if off <= 0 else (off + sw - 1) // sw)
    hi = (w - 1 + off) // sw + 1 if w - 1 + off >= 0 else 0
    return lo, max(lo, min(hi, ow))


@njit(cache=True)
def _im2col_sample(xh, b, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    """The rows of sample b of cols (N, OH, OW, G, kh, kw, C / G) from the channels-last image xh (N, H, W, C)."""
    _, h, w, _ = xh.shape
    _, oh, ow, groups, _, _, cg = cols.shape
    zero = xh.dtype.type(0)
    if cg == 1:  # one channel a group (a grey image): a loop over channels is all overhead, so run along z
        for y in range(oh):
            for gi in range(groups):
                for i in range(kh):
                    r = y * sh - pt + i * dh
                    for j in range(kw):
                        lo, hi = _z_range(j, dw, pl, sw, w, ow) if 0 <= r < h else (ow, ow)
                        for z in range(lo):
                            cols[b, y, z, gi, i, j, 0] = zero
                        for z in range(lo, hi):
                            cols[b, y, z, gi, i, j, 0] = xh[b, r, z * sw - pl + j * dw, gi]
                        for z in range(hi, ow):
                            cols[b, y, z, gi, i, j, 0] = zero
        return
    for y in range(oh):
        for z in range(ow):
            for gi in range(groups):
                base = gi * cg
                for i in range(kh):
                    r = y * sh - pt + i * dh
                    for j in range(kw):
                        q = z * sw - pl + j * dw
                        if 0 <= r < h and 0 <= q < w:
                            for ch in range(cg):
                                cols[b, y, z, gi, i, j, ch] = xh[b, r, q, base + ch]
                        else:
                            for ch in range(cg):
                                cols[b, y, z, gi, i, j, ch] = zero


@njit(cache=True, nogil=True)
def _im2col(xh, kh, kw, sh, sw, pt, pl, dh, dw, cols, lo, hi):
    """Samples lo..hi of cols (the GIL released: tinygen's pool runs parts of the batch at once)."""
    for b in range(lo, hi):
        _im2col_sample(xh, b, kh, kw, sh, sw, pt, pl, dh, dw, cols)


@njit(cache=True)
def _col2im_sample(cols, b, sh, sw, pt, pl, dh, dw, out):
    """out[b] (H, W, C), channels-last: the sum of sample b's column entries, each pixel's channels at once."""
    _, oh, ow, groups, kh, kw, cg = cols.shape
    h, w = out.shape[1], out.shape[2]
    if cg == 1:  # one channel a group: along z (see _im2col_sample), still kernel offsets outermost
        for i in range(kh):
            for j in range(kw):
                lo, hi = _z_range(j, dw, pl, sw, w, ow)
                for y in range(oh):
                    r = y * sh - pt + i * dh
                    if 0 <= r < h:
                        for gi in range(groups):
                            for z in range(lo, hi):
                                out[b, r, z * sw - pl + j * dw, gi] += cols[b, y, z, gi, i, j, 0]
        return
    for i in range(kh):  # kernel offsets outermost: each pixel adds its terms in the reference's order
        for j in range(kw):
            for y in range(oh):
                r = y * sh - pt + i * dh
                if 0 <= r < h:
                    for z in range(ow):
                        q = z * sw - pl + j * dw
                        if 0 <= q < w:
                            for gi in range(groups):
                                base = gi * cg
                                for ch in range(cg):
                                    out[b, r, q, base + ch] += cols[b, y, z, gi, i, j, ch]


@njit(cache=True, nogil=True)
def _col2im(cols, sh, sw, pt, pl, dh, dw, out, lo, hi):
    """Samples lo..hi of out (the GIL released, as _im2col)."""
    for b in range(lo, hi):
        _col2im_sample(cols, b, sh, sw, pt, pl, dh, dw, out)


def _by_samples(kernel, args, size, n):
    """``kernel(*args, lo, hi)`` over the samples [0, n): split by samples on tinygen's pool (threads.in_chunks)
    from PARALLEL_MIN elements of the column matrix, else one call."""
    if size >= PARALLEL_MIN and n > 1:
        threads.in_chunks(lambda lo, hi: kernel(*args, lo, hi), n, threads.numba_threads, min_size=0)
    else:
        kernel(*args, 0, n)


def im2col(x, kernel_hw, stride, padding, dilation, out_hw, groups=1):
    """conv.im2col as one compiled loop: (N, OH, OW, G, kh, kw, C / G). A channels-last x is read where it lies."""
    n, c = x.shape[:2]
    cols = np.empty((n,) + tuple(out_hw) + (groups,) + tuple(kernel_hw) + (c // groups,), dtype=x.dtype)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # free for a channels-last image
    args = (xh, kernel_hw[0], kernel_hw[1], stride[0], stride[1], padding[0][0], padding[1][0], dilation[0],
            dilation[1], cols)
    _by_samples(_im2col, args, cols.size, n)
    return cols


def col2im(cols, x_shape, stride, padding, dilation, out=None):
    """conv.col2im as one compiled loop; the image is channels-last, as the reference's (``out``: a zeroed
    channels-last array (N, H, W, C) to sum into)."""
    cols = np.ascontiguousarray(cols)
    n, c, h, w = x_shape
    out = np.zeros((n, h, w, c), dtype=cols.dtype) if out is None else out
    args = (cols, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1], out)
    _by_samples(_col2im, args, cols.size, n)
    return out.transpose(0, 3, 1, 2)


conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight = _ref.make_conv_kernels(im2col, col2im)
