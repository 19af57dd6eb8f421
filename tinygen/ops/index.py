"""Indexing: ``x[index]`` with ints, slices, None, Ellipsis, and integer or boolean arrays/tensors."""
from .. import backend
from ..autograd.function import Function
from ..tensor import Tensor, _host_array, register


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
    try:
        index = _index_data(index, x.xp)
        return GetItem.apply(x, index)
    except (IndexError, ValueError, TypeError) as e:
        raise IndexError(f"index {index!r} is invalid for a tensor of shape {x.shape}: {e}") from None


@register("__setitem__")
def setitem(x, index, value):
    """In-place assignment, allowed on tensors that are not part of a graph (masks, buffers, data)."""
    if x._requires_grad:
        raise RuntimeError("in-place assignment to a tensor that requires grad is not supported; build a new "
                           "tensor with where() or cat() instead")
    if isinstance(value, Tensor):
        value = value.data
    elif isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"setitem: can't assign a {type(value).__name__} to a tensor of dtype {x.dtype}")
    else:  # a number or nested list: refused when it does not fit the dtype, as tensor() refuses it
        value = _host_array(value, x.dtype, "setitem")
        if x._device != "cpu":
            value = backend.to_device(value, x._device)
    try:
        x.data[_index_data(index, x.xp)] = value
    except (IndexError, ValueError, TypeError) as e:
        raise type(e)(f"setitem: can't assign to index {index!r} of a tensor of shape {x.shape}: {e}") from None
