"""The matrix product on arrays, ``a @ b`` (reference.mm), with the operand layouts that keep BLAS at full speed.

Two cases are rewritten; the result is the same product, C-ordered like NumPy's:
  * an outer product (a has one column: the input gradient of a layer with one output) is an elementwise
    multiply, which BLAS runs 4x slower as a product;
  * OpenBLAS runs a short, wide product with a transposed right operand (a small batch through a Linear layer:
    x @ W.T) at about half speed; written as (W @ x.T).T it runs at full speed. Below SWAP_MAX_ROWS rows (the
    setting TINYGEN_MM_SWAP_MAX_ROWS) and for weights of at least SWAP_MIN_SIZE elements, mm() takes that route and
    copies the few rows back.
Products smaller than threads.BLAS_PARALLEL_MIN multiply-adds run on one BLAS thread (threads.py says why).
"""
import numpy as np

from .. import config
from . import threads

SWAP_MAX_ROWS = config.get("TINYGEN_MM_SWAP_MAX_ROWS")
SWAP_MIN_SIZE = 1 << 17


def mm(a, b):
    """``a @ b`` on arrays (the one place tinygen multiplies matrices), C-ordered like NumPy's result."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1:
        return a * b
    if (type(a) is np.ndarray and a.ndim >= 2 and b.ndim >= 2
            and a.shape[-2] * a.shape[-1] * b.shape[-1] < threads.BLAS_PARALLEL_MIN):
        return threads.on_one_blas_thread(_product, a, b)
    return _product(a, b)


def _product(a, b):
    if (type(a) is np.ndarray and a.ndim == 2 and b.ndim == 2 and a.shape[0] <= SWAP_MAX_ROWS
            and b.size >= SWAP_MIN_SIZE and b.flags.f_contiguous and not b.flags.c_contiguous):
        return np.ascontiguousarray((b.T @ a.T).T)
    return a @ b
