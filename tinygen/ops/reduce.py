"""Reductions over ``dim`` (an int, a tuple, or None for all), and the softmax family."""
from collections import namedtuple

from .. import kernels
from .._checks import check_dim, is_int
from ..autograd.function import Function
from ..tensor import _make, register, require_tensor

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def normalize_dims(dim, ndim, op):
    """``dim`` as a sorted tuple of non-negative axes (all axes for None), or a clear error."""
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if dim is None or not dims:  # None and () both mean every axis, as in PyTorch
        return tuple(range(ndim))
    out = [check_dim(d, ndim, op) for d in dims]
    if not ndim:  # a 0-d tensor accepts dim 0 / -1 and has nothing to reduce
        return ()
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: dim {dim} repeats an axis")
    return tuple(sorted(out))


def _kept_shape(shape, dims):
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def _unreduce(g, in_shape, dims, keepdim):
    """Bring a reduced gradient back to the input's shape (reshape the kept axes, then broadcast; on arrays:
    ``Sum.array_backward``)."""
    if not keepdim and g.data.ndim != len(in_shape):
        g = g.reshape(_kept_shape(in_shape, dims))
    return g.expand(in_shape)


class Sum(Function):
    reduction = "sum"  # for tinygen.compile's fusion: a run of elementwise ops may end in a sum over every axis

    @staticmethod
    def forward(ctx, x, dims, keepdim):
        ctx.shape, ctx.dims, ctx.keepdim = x.data.shape, dims, keepdim
        return x.data.sum(axis=dims if x.data.ndim else None, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        return _unreduce(g, ctx.shape, ctx.dims, ctx.keepdim), None, None

    @staticmethod
    def array_backward(ctx, g):
        if not ctx.keepdim and g.ndim != len(ctx.shape):
            g = g.reshape(_kept_shape(ctx.shape, ctx.dims))
        return ctx.xp.broadcast_to(g, ctx.shape), None, None


class Amax(Function):
    """max over dims; the gradient is shared evenly between tied maxima (as torch.amax)."""
    save_output = True

    @staticmethod
    def forward(ctx, x, dims, keepdim, largest):
        ctx.save_for_backward(x)
        ctx.dims, ctx.keepdim = dims, keepdim
        d = x.data
        return d.max(axis=dims, keepdims=keepdim) if largest else d.min(axis=dims, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = ctx.output.data
        if not ctx.keepdim:
            out = out.reshape(_kept_shape(x.shape, ctx.dims))
        hit = x.data == out
        w = hit / hit.sum(axis=ctx.dims, keepdims=True).astype(x.data.dtype)
        return _unreduce(g, x.shape, ctx.dims, ctx.keepdim) * _make(w.astype(x.data.dtype), x._device), None, None, None


class ExtremeAlong(Function):
    """(values, indices) of the max (``largest``) or min along ``dim``: the index is found in the forward, so
    tinygen.compile's replay finds it again on new values; the gradient goes to those positions only."""
    @staticmethod
    def forward(ctx, x, dim, keepdim, largest):
        xp = ctx.xp
        index = xp.expand_dims((xp.argmax if largest else xp.argmin)(x.data, axis=dim), dim)
        ctx.shape, ctx.index, ctx.dim, ctx.keepdim = x.data.shape, index, dim, keepdim
        values = xp.take_along_axis(x.data, index, axis=dim)
        return (values, index) if keepdim else (values.squeeze(dim), index.squeeze(dim))

    @staticmethod
    def backward(ctx, g, g_index):
        xp = ctx.xp
        hot = xp.zeros(ctx.shape, dtype=g.data.dtype)
        xp.put_along_axis(hot, ctx.index, 1, axis=ctx.dim)
        return _unreduce(g, ctx.shape, (ctx.dim,), ctx.keepdim) * _make(hot, ctx.device), None, None, None


class ArgExtreme(Function):
    """argmax (``largest``) or argmin along ``axis`` (None: of the flattened tensor). An index: Function.apply
    makes no node for it, and tinygen.compile computes it again on every replay."""
    @staticmethod
    def forward(ctx, x, axis, keepdim, largest):
        xp, d = ctx.xp, x.data
        if d.ndim == 0:
            return xp.zeros((), dtype="int64")
        out = (xp.argmax if largest else xp.argmin)(d, axis=axis)
        return xp.expand_dims(out, axis) if keepdim and axis is not None else xp.asarray(out)


class Logsumexp(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x, dims, keepdim):
        ctx.save_for_backward(x)
        ctx.dims, ctx.keepdim = dims, keepdim
        xp, d = ctx.xp, x.data
        m = d.max(axis=dims, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or inf) along a row: leave the shift out
        out = xp.log(xp.exp(d - m).sum(axis=dims, keepdims=True)) + m
        return out if keepdim else out.squeeze(dims)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = ctx.output
        if not ctx.keepdim:
            out = out.reshape(_kept_shape(x.shape, ctx.dims))
            g = g.reshape(_kept_shape(x.shape, ctx.dims))
        return g * (x - out).exp(), None, None


class Softmax(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x, dim):
        ctx.dim = dim
        xp, d = ctx.xp, x.data
        e = xp.exp(d - d.max(axis=dim, keepdims=True))
        return e / e.sum(axis=dim, keepdims=True)

    @staticmethod
    def backward(ctx, g):
        y = ctx.output
        gy = g * y
        return gy - y * gy.sum(ctx.dim, keepdim=True), None


class LogSoftmax(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x, dim):
        ctx.dim = dim
        return _on_last_axis(ctx.xp, "log_softmax_fwd", dim, x.data)

    @staticmethod
    def backward(ctx, g):
        return g - ctx.output.exp() * g.sum(ctx.dim, keepdim=True), None

    @staticmethod
    def array_backward(ctx, g):
        return _on_last_axis(ctx.xp, "log_softmax_bwd", ctx.dim, ctx.output_array, g), None


def _on_last_axis(xp, name, dim, *arrays):
    """Run a row kernel (defined over the last axis) over axis ``dim``, moving that axis last and back."""
    last = arrays[0].ndim - 1
    if dim == last:
        return kernels.get(name, arrays[0])(*arrays)
    moved = [xp.moveaxis(a, dim, -1) for a in arrays]
    return xp.ascontiguousarray(xp.moveaxis(kernels.get(name, moved[0])(*moved), -1, dim))


# ---- public functions ------------------------------------------------------------------------------------------------
@register()
def sum(x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = x.to(dtype)
    return Sum.apply(x, normalize_dims(dim, x.data.ndim, "sum"), keepdim)


@register()
def mean(x, dim=None, keepdim=False):
    dims = normalize_dims(dim, x.data.ndim, "mean")
    if x.data.dtype.kind != "f":
        raise TypeError(f"mean: needs a floating tensor, got dtype {x.dtype}")
    n = 1
    for d in dims:
        n *= x.data.shape[d]
    return Sum.apply(x, dims, keepdim) * (1.0 / n if n else float("nan"))


@register()
def var(x, dim=None, keepdim=False, *, correction=None, unbiased=None):
    """Variance over ``dim``; unbiased (divides by n - 1) unless ``correction=0`` or ``unbiased=False``."""
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    dims = normalize_dims(dim, x.data.ndim, "var")
    n = 1
    for d in dims:
        n *= x.data.shape[d]
    centred = x - mean(x, dims, keepdim=True)
    return sum(centred * centred, dims, keepdim) * (1.0 / (n - correction) if n > correction else float("nan"))


@register()
def std(x, dim=None, keepdim=False, *, correction=None, unbiased=None):
    return var(x, dim, keepdim, correction=correction, unbiased=unbiased).sqrt()


def _max_min(x, dim, keepdim, largest, name):
    from ..tensor import Tensor
    if isinstance(dim, Tensor):  # tinygen.max(a, b) is the elementwise maximum, as in PyTorch
        from .elementwise import maximum, minimum
        return maximum(x, dim) if largest else minimum(x, dim)
    if x.data.size == 0:
        raise RuntimeError(f"{name}: cannot reduce an empty tensor of shape {x.shape}")
    if dim is None or not is_int(dim):
        return Amax.apply(x, normalize_dims(dim, x.data.ndim, name), keepdim, largest)
    if x.data.ndim == 0:  # dim 0 / -1 of a 0-d tensor: the value itself at index 0 (as PyTorch)
        normalize_dims(dim, 0, name)
        values, indices = _max_min(x.reshape(1), 0, False, largest, name)
        return ValuesIndices(values.reshape(()), indices.reshape(()))
    (axis,) = normalize_dims(dim, x.data.ndim, name)
    return ValuesIndices(*ExtremeAlong.apply(x, axis, keepdim, largest))


@register()
def max(x, dim=None, keepdim=False):
    """``x.max()`` is the largest value; ``x.max(dim)`` gives (values, indices); ``max(a, b)`` is elementwise."""
    return _max_min(x, dim, keepdim, True, "max")


@register()
def min(x, dim=None, keepdim=False):
    return _max_min(x, dim, keepdim, False, "min")


@register()
def amax(x, dim=None, keepdim=False):
    return Amax.apply(x, normalize_dims(dim, x.data.ndim, "amax"), keepdim, True)


@register()
def amin(x, dim=None, keepdim=False):
    return Amax.apply(x, normalize_dims(dim, x.data.ndim, "amin"), keepdim, False)


@register()
def argmax(x, dim=None, keepdim=False):
    return _arg_extreme(x, dim, keepdim, True, "argmax")


@register()
def argmin(x, dim=None, keepdim=False):
    return _arg_extreme(x, dim, keepdim, False, "argmin")


def _arg_extreme(x, dim, keepdim, largest, name):
    if dim is None or x.data.ndim == 0:
        if dim is not None:
            normalize_dims(dim, 0, name)
        return ArgExtreme.apply(x, None, False, largest)
    (axis,) = normalize_dims(dim, x.data.ndim, name)
    return ArgExtreme.apply(x, axis, keepdim, largest)


@register()
def logsumexp(x, dim, keepdim=False):
    return Logsumexp.apply(x, normalize_dims(dim, x.data.ndim, "logsumexp"), keepdim)


def _one_dim(dim, x, op):
    if dim is None:
        raise TypeError(f"{op}: dim must be given (as in PyTorch)")
    dims = normalize_dims(dim, x.data.ndim, op)
    return dims[0] if dims else 0  # a 0-d tensor accepts dim 0 / -1


@register()
def softmax(x, dim):
    d = _one_dim(dim, x, "softmax")
    if x.data.ndim == 0:  # a single class (as PyTorch)
        return Softmax.apply(x.reshape(1), 0).reshape(())
    return Softmax.apply(x, d)


@register()
def log_softmax(x, dim):
    d = _one_dim(dim, x, "log_softmax")
    if x.data.ndim == 0:
        return LogSoftmax.apply(x.reshape(1), 0).reshape(())
    return LogSoftmax.apply(x, d)


# ---- ops added for PyTorch parity ------------------------------------------------------------------------------------
import math  # noqa: E402

from .elementwise import where  # noqa: E402
from .shape import wrap_dim, wrap_dims  # noqa: E402


def _reduce_dims(dim, ndim, op):
    """A reduction's ``dim`` (None or () for every axis, an int or a sequence) as a sorted tuple of axes, with
    PyTorch's errors; a 0-d tensor accepts 0 and -1 and has no axis to reduce."""
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        return tuple(range(ndim))
    axes = wrap_dims(dim, ndim, op)
    return tuple(sorted(axes)) if ndim else ()


class Cumsum(Function):
    """Running sums along ``axis`` (from the far end when ``reverse``): the gradient is the running sum of the
    upstream gradient taken the other way."""
    @staticmethod
    def forward(ctx, x, axis, reverse):
        ctx.axis, ctx.reverse = axis, reverse
        xp, d = ctx.xp, x.data
        if reverse:
            return xp.flip(xp.cumsum(xp.flip(d, axis), axis=axis), axis).copy()
        return xp.cumsum(d, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return Cumsum.apply(g, ctx.axis, not ctx.reverse), None, None


class Prod(Function):
    """The product along one axis. Without zeros the gradient is out / x; with zeros it is the product of the
    other elements, computed exactly (so one zero, several zeros and second derivatives all come out right)."""
    save_output = True

    @staticmethod
    def forward(ctx, x, axis, keepdim):
        ctx.save_for_backward(x)
        ctx.axis, ctx.keepdim = axis, keepdim
        return x.data.prod(axis=axis, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        axis = ctx.axis
        if not ctx.keepdim:
            g = g.unsqueeze(axis)
        if not bool((x.data == 0).any()):
            out = ctx.output
            return g * (out if ctx.keepdim else out.unsqueeze(axis)) / x, None, None
        return g * _prod_of_others(x, axis), None, None


def _prod_of_others(x, axis):
    """For each element, the product of the other elements along ``axis`` (the n x n products of each row with
    one element replaced by 1): exact at zeros, and differentiable again through Prod."""
    n = x.shape[axis]
    rows = x.movedim(axis, -1)
    rows = rows.unsqueeze(-2).expand(rows.shape[:-1] + (n, n))
    eye = _make(x.xp.eye(n, dtype=bool), x._device)
    others = Prod.apply(where(eye, 1.0, rows), rows.ndim - 1, False)
    return others.movedim(-1, axis)


class Norm(Function):
    """The p-norm over ``dims`` for a finite p > 0 other than 1. Where the norm is 0 the gradient is 0 (PyTorch's
    subgradient); |x| ** (p - 1) is taken at 1 where x is 0 (and multiplied by sign(x) = 0), so no inf or nan
    reaches the gradient or its derivative."""
    save_output = True

    @staticmethod
    def forward(ctx, x, p, dims, keepdim):
        ctx.save_for_backward(x)
        ctx.p, ctx.dims, ctx.keepdim = p, dims, keepdim
        xp, d = ctx.xp, x.data
        if p == 2:
            return xp.sqrt((d * d).sum(axis=dims, keepdims=keepdim))
        return (abs(d) ** p).sum(axis=dims, keepdims=keepdim) ** (1.0 / p)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        p, dev = ctx.p, x._device
        out = ctx.output
        if not ctx.keepdim:
            kept = _kept_shape(x.shape, ctx.dims)
            out, g = out.reshape(kept), g.reshape(kept)
        if p == 2:
            x_part = x
        else:
            safe_abs = where(_make(x.data == 0, dev), 1.0, x.abs())
            x_part = _make(ctx.xp.sign(x.data), dev) * safe_abs ** (p - 1)
        zero = _make(out.data == 0, dev)
        safe_out = where(zero, 1.0, out)
        if p < 1:
            scale = g * safe_out ** (1 - p)
        else:
            scale = g / (safe_out if p == 2 else safe_out ** (p - 1))
        return x_part * where(zero, 0.0, scale), None, None, None


@register()
def cumsum(x, dim, *, dtype=None):
    """Running sums along ``dim``."""
    if dtype is not None:
        x = x.to(dtype)
    axis = wrap_dim(dim, x.data.ndim, "cumsum")
    if x.data.ndim == 0:
        return Cumsum.apply(x.reshape(1), 0, False).reshape(())
    return Cumsum.apply(x, axis, False)


@register()
def prod(x, dim=None, keepdim=False, *, dtype=None):
    """The product of all elements, or along one ``dim``; the gradient is exact where elements are 0."""
    if dtype is not None:
        x = x.to(dtype)
    if dim is None:
        return Prod.apply(x.reshape(-1), 0, False)
    if isinstance(dim, (tuple, list)):
        raise TypeError(f"prod: dim must be one int (PyTorch's prod reduces one axis), got {dim!r}")
    axis = wrap_dim(dim, x.data.ndim, "prod")
    if x.data.ndim == 0:
        return Prod.apply(x.reshape(1), 0, False)
    return Prod.apply(x, axis, keepdim)


@register()
def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    """The vector p-norm over ``dim`` (every element when None): p = 2 ('fro', the default), 1, inf, -inf, 0
    (the number of non-zeros) or any p > 0. The gradient at a zero norm is 0, as PyTorch's."""
    if dtype is not None:
        x = x.to(dtype)
    if x.data.dtype.kind != "f":
        raise TypeError(f"norm: expected a floating tensor, got dtype {x.dtype}")
    dims = _reduce_dims(dim, x.data.ndim, "norm")
    if isinstance(p, str):
        if p != "fro":
            raise ValueError(f"norm: p={p!r} is not supported; use 'fro', a number, inf or -inf")
        if dim is not None and not isinstance(dim, int) and len(dims) > 2:
            raise RuntimeError(f"norm: p='fro' takes at most 2 dims, got {tuple(dim)}")
        p = 2.0
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"norm: p must be a number or 'fro', got {type(p).__name__}")
    p = float(p)
    if p == math.inf:
        return amax(x.abs(), dims, keepdim)
    if p == -math.inf:
        return amin(x.abs(), dims, keepdim)
    if p == 0:  # the number of non-zeros, with a zero gradient (as PyTorch): 1 where x != 0, else x * 0 (x = 0)
        nonzero = x != 0
        return sum(where(nonzero, 1.0, where(nonzero, 0.0, x) * 0.0), dims, keepdim)
    if p == 1:
        return sum(x.abs(), dims, keepdim)
    if not p > 0:
        raise ValueError(f"norm: p must be positive, inf, -inf, 0 or 'fro'; got {p}")
    return Norm.apply(x, p, dims, keepdim)


def std_mean(x, dim=None, keepdim=False, *, correction=None, unbiased=None):
    """(std, mean) over ``dim``, as ``torch.std_mean``."""
    require_tensor(x, "std_mean")
    dims = _reduce_dims(dim, x.data.ndim, "std_mean")
    return std(x, dims, keepdim, correction=correction, unbiased=unbiased), mean(x, dims, keepdim)


@register()
def nansum(x, dim=None, keepdim=False, *, dtype=None):
    """The sum with NaNs counted as zero (their gradient is 0)."""
    if dtype is not None:
        x = x.to(dtype)
    dims = _reduce_dims(dim, x.data.ndim, "nansum")
    if x.data.dtype.kind == "f":
        x = where(x != x, 0.0, x)  # NaN is the one value not equal to itself
    return sum(x, dims, keepdim)
