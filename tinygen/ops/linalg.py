"""Matrix products."""
from ..autograd.function import Function
from ..kernels.gemm import mm  # noqa: F401 - the array-level product (operand choices for BLAS live there)
from ..tensor import register


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
    if b.data.ndim == 1:
        out = out.squeeze(-1)
    if a.data.ndim == 1:
        out = out.squeeze(-2)
    return out


@register("__rmatmul__")
def _rmatmul(a, b):
    from .arithmetic import operand
    return matmul(operand(b, a), a)
