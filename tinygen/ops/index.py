"""Indexing: ``x[index]`` with ints, slices, None, Ellipsis, and integer or boolean arrays/tensors."""
from .. import backend
from ..autograd.function import Function
from ..autograd.grad_mode import check_in_place
from ..capture import refuse_shape_from_values, replayed
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
    """``x[index]``. Tensors in the index are read in the forward, so tinygen.compile's replay reads their new
    values (an index read once would be replayed as a constant)."""
    @staticmethod
    def forward(ctx, x, index):
        index = _index_data(index, ctx.xp)
        ctx.shape, ctx.index = x.data.shape, index
        return x.data[index]

    @staticmethod
    def backward(ctx, g):
        return IndexAdd.apply(g, ctx.index, ctx.shape), None


class TakeIndices(GetItem):
    """``x[index]`` where the item at position ``dim`` of ``index`` is an index tensor along that axis, checked in
    the forward (every call, replays too) to lie in [0, size): gather's and index_select's PyTorch rules."""
    @staticmethod
    def forward(ctx, x, index, op, dim):
        _check_bounds(_index_data(index[dim], ctx.xp), x.data.shape[dim], op, dim)
        return GetItem.forward(ctx, x, index)

    @staticmethod
    def backward(ctx, g):
        return GetItem.backward(ctx, g) + (None, None)


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
    for item in index if isinstance(index, tuple) else (index,):
        if isinstance(item, Tensor) and item.data.dtype.kind == "b":
            refuse_shape_from_values(item, "indexing with a boolean mask: the result's shape depends on its "
                                           "values; use where() or masked_fill()")
    try:
        return GetItem.apply(x, index)
    except (IndexError, ValueError, TypeError) as e:
        raise IndexError(f"index {index!r} is invalid for a tensor of shape {x.shape}: {e}") from None


@register("__setitem__")
@replayed  # it writes the array in place, outside any op: a compiled step's replay must write it again
def setitem(x, index, value):
    """In-place assignment, allowed on tensors that are not part of a graph (masks, buffers, data), and on a leaf
    that requires grad (a parameter) under no_grad: an EMA's update, a hand-written init."""
    check_in_place(x, "in-place assignment")
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


# ---- ops added for PyTorch parity ------------------------------------------------------------------------------------
import numpy as _np  # noqa: E402

from .arithmetic import operand  # noqa: E402
from .elementwise import where  # noqa: E402
from .shape import wrap_dim  # noqa: E402


def _int_index(index, op, name="index"):
    if not isinstance(index, Tensor) or index.data.dtype.kind not in "iu":
        dt = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"{op}(): Expected dtype int64 for {name}, got {dt}")
    return index.data


def _check_bounds(idx, size, op, dim):
    """Every entry of ``idx`` in [0, size), or PyTorch's error naming the first one outside."""
    if idx.size:
        bad = (idx < 0) | (idx >= size)
        if bool(bad.any()):
            value = int(idx[bad].reshape(-1)[0])
            raise IndexError(f"{op}(): index {value} is out of bounds for dimension {dim} with size {size}")


@register()
def masked_fill(x, mask, value):
    """``x`` with ``value`` (a number or a 0-d tensor, which then gets the gradient) where the boolean ``mask``
    (broadcast against ``x``) is True."""
    if not isinstance(mask, Tensor) or mask.data.dtype.kind != "b":
        dt = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"masked_fill only supports boolean masks, but got mask with dtype {dt}")
    if isinstance(value, Tensor):
        if value.data.ndim:
            raise RuntimeError(f"masked_fill only supports a 0-dimensional value tensor, but got tensor with "
                               f"{value.data.ndim} dimension(s)")
        if value.data.dtype != x.data.dtype:
            value = value.to(x.data.dtype)
    elif x.data.dtype.kind != "f":
        value = x.data.dtype.type(value)  # the tensor's dtype wins, as in PyTorch
    return where(mask, operand(value, x), x)


@register()
def index_select(x, dim, index):
    """The entries of ``x`` at the positions ``index`` (1-D, or 0-d) along ``dim``; repeats allowed."""
    idx = _int_index(index, "index_select")
    if idx.ndim > 1:
        raise IndexError(f"index_select(): Index is supposed to be a vector, got shape {tuple(index.shape)}")
    d = wrap_dim(dim, x.data.ndim, "index_select")
    if x.data.ndim == 0:
        if idx.size != 1:
            raise IndexError(f"index_select(): Index to scalar can have only 1 value, got {idx.size} value(s)")
        _check_bounds(idx, 1, "index_select", 0)
        return x.clone()
    return TakeIndices.apply(x, (slice(None),) * d + (index.reshape(-1),), "index_select", d)


@register()
def gather(x, dim, index, *, sparse_grad=False):
    """``out[i][j][k] = x[index[i][j][k]][j][k]`` (for dim 0): the entries picked by ``index`` along ``dim``.
    ``index`` has as many axes as ``x`` and no axis larger than x's, except ``dim``. The gradient adds up into
    the picked positions (``sparse_grad`` is accepted for compatibility; the gradient is always dense)."""
    idx = _int_index(index, "gather")
    nd = x.data.ndim
    d = wrap_dim(dim, nd, "gather")
    if idx.ndim != nd:
        raise RuntimeError(f"gather(): Index tensor must have the same number of dimensions as input tensor "
                           f"({idx.ndim} vs {nd})")
    if nd == 0:
        _check_bounds(idx, 1, "gather", 0)
        return x.clone()
    for k in range(nd):
        if k != d and idx.shape[k] > x.data.shape[k]:
            raise RuntimeError(f"gather(): Size does not match at dimension {k} expected index {list(idx.shape)} "
                               f"to be smaller than self {list(x.shape)} apart from dimension {d}")
    xp = x.xp
    grid = tuple(index if k == d else xp.arange(idx.shape[k]).reshape((-1,) + (1,) * (nd - 1 - k))
                 for k in range(nd))
    return TakeIndices.apply(x, grid, "gather", d)


@register()
def take_along_dim(x, indices, dim=None):
    """``gather`` after broadcasting ``x`` and ``indices`` against each other outside ``dim``; with
    ``dim=None``, along the flattened tensor."""
    idx = _int_index(indices, "take_along_dim", "indices")
    if dim is None:
        return gather(x.reshape(-1), 0, indices.reshape(-1))
    nd = x.data.ndim
    d = wrap_dim(dim, nd, "take_along_dim")
    if idx.ndim != nd:
        raise RuntimeError(f"take_along_dim(): input and indices should have the same number of "
                           f"dimensions, but got {nd} dimensions for input, and {idx.ndim} dimensions for indices")
    if nd == 0:
        raise IndexError("take_along_dim(): Dimension specified as 0 but tensor has no dimensions")
    try:
        shape = _np.broadcast_shapes(x.data.shape[:d] + (idx.shape[d],) + x.data.shape[d + 1:], idx.shape)
    except ValueError:
        raise RuntimeError(f"take_along_dim(): input of shape {tuple(x.shape)} and indices of shape "
                           f"{tuple(idx.shape)} do not broadcast outside dim {d}") from None
    x = x.expand(shape[:d] + (x.data.shape[d],) + shape[d + 1:])
    return gather(x, d, indices.expand(shape))
