"""Matrix products."""
import os

import numpy as np

from ..autograd.function import Function
from ..tensor import register, require_tensor

# OpenBLAS runs a short, wide product with a transposed right operand (a small batch through a Linear layer:
# x @ W.T) at about half speed; the same product written as (W @ x.T).T runs at full speed. Below this many rows
# (and for weights of at least SWAP_MIN_SIZE elements) mm() takes that route and copies the few rows back.
SWAP_MAX_ROWS = int(os.environ.get("TINYGEN_MM_SWAP_MAX_ROWS", "48"))
SWAP_MIN_SIZE = 1 << 17


def mm(a, b):
    """``a @ b`` on arrays (the one place tinygen multiplies matrices), C-ordered like NumPy's result."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1:  # an outer product (the input gradient of a layer with one
        return a * b                                      # output): BLAS runs it 4x slower than the multiply
    if (type(a) is np.ndarray and a.ndim == 2 and b.ndim == 2 and a.shape[0] <= SWAP_MAX_ROWS
            and b.size >= SWAP_MIN_SIZE and b.flags.f_contiguous and not b.flags.c_contiguous):
        return np.ascontiguousarray((b.T @ a.T).T)
    return a @ b


class Matmul(Function):
    """a @ b for a, b with at least 2 dimensions; leading (batch) dimensions broadcast."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return mm(a.data, b.data)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        need = ctx.next_edges
        ga = g @ b.mT if need[0] is not None else None
        gb = a.mT @ g if need[1] is not None else None
        return ga, gb


@register("matmul", "__matmul__")
def matmul(a, b):
    """Matrix product with NumPy's rules: 1-D operands are treated as a row / column vector, then squeezed."""
    require_tensor(a, "matmul")
    require_tensor(b, "matmul", "other")
    if a.data.ndim == 0 or b.data.ndim == 0:
        raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes {a.shape} and {b.shape}")
    if a.data.shape[-1] != b.data.shape[-2 if b.data.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match "
                         f"({a.shape[-1]} != {b.shape[-2 if b.ndim > 1 else 0]})")
    if a.data.ndim >= 2 and b.data.ndim >= 2:
        return Matmul.apply(a, b)
    a2 = a.unsqueeze(0) if a.data.ndim == 1 else a
    b2 = b.unsqueeze(-1) if b.data.ndim == 1 else b
    out = Matmul.apply(a2, b2)
    if a.data.ndim == 1:  # the row axis first: while it is there, out has at least 2 dims
        out = out.squeeze(-2)
    if b.data.ndim == 1:
        out = out.squeeze(-1)
    return out


@register("__rmatmul__")
def _rmatmul(a, b):
    from .arithmetic import operand
    return matmul(operand(b, a), a)
