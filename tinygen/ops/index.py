"""Indexing: ``x[index]`` with ints, slices, None, Ellipsis, and integer or boolean arrays/tensors."""
from .. import backend
from ..autograd.function import Function
from ..tensor import Tensor, register


def _index_data(index, xp):
    """The index with tensors replaced by their arrays and lists by device arrays."""
    if isinstance(index, tuple):
        return tuple(_index_data(i, xp) for i in index)
    if isinstance(index, Tensor):
        if index.data.dtype.kind not in "iub":
            raise IndexError(f"tensors used as indices must be integer or boolean, got dtype {index.dtype}")
        return index.data
    if isinstance(index, list):
        return xp.asarray(index)
    return index


def _has_int_array(index):
    items = index if isinstance(index, tuple) else (index,)
    return any(getattr(i, "ndim", None) is not None and i.dtype.kind in "iu" for i in items)


class GetItem(Function):
    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.index = x.data.shape, index
        return x.data[index]

    @staticmethod
    def backward(ctx, g):
        return IndexAdd.apply(g, ctx.index, ctx.shape), None


class IndexAdd(Function):
    """zeros(shape) with ``g`` added at ``index`` (repeated integer indices add up): the backward of GetItem."""
    @staticmethod
    def forward(ctx, g, index, shape):
        ctx.index = index
        xp = ctx.xp
        out = xp.zeros(shape, dtype=g.data.dtype)
        if _has_int_array(index):
            backend.scatter_add(xp, out, index, g.data)
        else:
            out[index] = g.data
        return out

    @staticmethod
    def backward(ctx, gg):
        return GetItem.apply(gg, ctx.index), None, None


@register("__getitem__")
def getitem(x, index):
    index = _index_data(index, x.xp)
    try:
        return GetItem.apply(x, index)
    except IndexError as e:
        raise IndexError(f"index {index!r} is invalid for a tensor of shape {x.shape}: {e}") from None


@register("__setitem__")
def setitem(x, index, value):
    """In-place assignment, allowed on tensors that are not part of a graph (masks, buffers, data)."""
    if x._requires_grad:
        raise RuntimeError("in-place assignment to a tensor that requires grad is not supported; build a new "
                           "tensor with where() or cat() instead")
    x.data[_index_data(index, x.xp)] = value.data if isinstance(value, Tensor) else value
