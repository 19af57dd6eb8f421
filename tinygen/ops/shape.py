"""Ops that move data around without arithmetic: reshape, permute, expand, sum_to, cat, and friends."""
import numpy as np

from ..autograd.engine import sum_to_array
from ..autograd.function import Function
from ..tensor import Tensor, register


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.data.shape
        try:
            return x.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {x.data.shape} ({x.data.size} elements) "
                             f"as shape {shape}") from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return x.data.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return g.permute(tuple(np.argsort(ctx.dims).tolist())), None


class Expand(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.data.shape
        try:
            return ctx.xp.broadcast_to(x.data, shape)
        except ValueError:
            raise ValueError(f"expand: cannot expand shape {x.data.shape} to {shape}") from None

    @staticmethod
    def backward(ctx, g):
        return sum_to(g, ctx.shape), None


class SumTo(Function):
    """Sum a broadcast result back to ``shape``: the inverse of broadcasting, used by the engine for every op."""
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.data.shape
        return sum_to_array(x.data, shape)

    @staticmethod
    def backward(ctx, g):
        return g.expand(ctx.shape), None


class Cat(Function):
    @staticmethod
    def forward(ctx, dim, *xs):
        ctx.dim = dim
        ctx.sizes = [x.data.shape[dim] for x in xs]
        return ctx.xp.concatenate([x.data for x in xs], axis=dim)

    @staticmethod
    def backward(ctx, g):
        grads, start = [None], 0
        index = [slice(None)] * g.ndim
        for need, size in zip(ctx.next_edges[1:], ctx.sizes):
            if need is not None:
                index[ctx.dim] = slice(start, start + size)
                grads.append(g[tuple(index)])
            else:
                grads.append(None)
            start += size
        return tuple(grads)


# ---- public functions ------------------------------------------------------------------------------------------------
@register("reshape", "view")
def reshape(x, *shape):
    shape = _shape_arg(shape)
    if shape == x.data.shape:
        return x
    return Reshape.apply(x, shape)


@register()
def flatten(x, start_dim=0, end_dim=-1):
    nd = x.data.ndim
    if nd == 0:
        return x.reshape(1)
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shape = x.data.shape
    return x.reshape(shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:])


@register()
def permute(x, *dims):
    dims = _shape_arg(dims)
    nd = x.data.ndim
    if nd == 0 and not dims:
        return x
    if len(dims) != nd or sorted(d % nd for d in dims) != list(range(nd)):
        raise ValueError(f"permute: dims {dims} are not a permutation of the {nd} axes of shape {x.shape}")
    dims = tuple(d % nd for d in dims)
    if dims == tuple(range(nd)):
        return x
    return Permute.apply(x, dims)


@register()
def transpose(x, dim0, dim1):
    nd = x.data.ndim
    for d in (dim0, dim1):
        if not -nd <= d < nd:
            raise IndexError(f"transpose: dim {d} is out of range for shape {x.shape}")
    dims = list(range(nd))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return x.permute(dims)


Tensor.T = property(lambda self: self.permute(tuple(range(self.data.ndim - 1, -1, -1))))
Tensor.mT = property(lambda self: self.transpose(-2, -1))


@register()
def expand(x, *shape):
    shape = _shape_arg(shape)
    lead = len(shape) - x.data.ndim
    if lead < 0:
        raise ValueError(f"expand: the target shape {shape} has fewer dimensions than the tensor's {x.shape}")
    shape = tuple(x.data.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
    if shape == x.data.shape:
        return x
    return Expand.apply(x, shape)


@register("sum_to_size")
def sum_to(x, shape):
    """Sum ``x`` over the axes that broadcasting would have added or stretched to reach its shape from ``shape``."""
    shape = tuple(shape)
    if x.data.shape == shape:
        return x
    return SumTo.apply(x, shape)


@register()
def squeeze(x, dim=None):
    shape = x.data.shape
    if dim is None:
        return x.reshape(tuple(s for s in shape if s != 1))
    dims = {d % len(shape) for d in ((dim,) if isinstance(dim, int) else dim)} if shape else set()
    return x.reshape(tuple(s for i, s in enumerate(shape) if not (i in dims and s == 1)))


@register()
def unsqueeze(x, dim):
    nd = x.data.ndim
    if not -nd - 1 <= dim <= nd:
        raise IndexError(f"unsqueeze: dim {dim} is out of range for shape {x.shape}")
    dim = dim % (nd + 1)
    shape = x.data.shape
    return x.reshape(shape[:dim] + (1,) + shape[dim:])


@register()
def contiguous(x):
    return x if x.data.flags.c_contiguous else x.clone()


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    ref = tensors[0]
    nd = ref.data.ndim
    if nd == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated")
    if not -nd <= dim < nd:
        raise IndexError(f"cat: dim {dim} is out of range for shape {ref.shape}")
    dim %= nd
    for i, t in enumerate(tensors):
        if t.data.ndim != nd or any(a != b for j, (a, b) in enumerate(zip(t.shape, ref.shape)) if j != dim):
            raise ValueError(f"cat: tensor {i} has shape {t.shape}, which does not match {ref.shape} "
                             f"outside dim {dim}")
    return Cat.apply(dim, *tensors)


concatenate = cat


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, but tensor 0 has {tensors[0].shape}")
    return cat([t.unsqueeze(dim) for t in tensors], dim)


@register()
def split(x, split_size_or_sections, dim=0):
    """Split into pieces of ``split_size`` along ``dim`` (the last may be smaller), or into the given sizes."""
    n = x.data.shape[dim]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0:
            raise ValueError(f"split: split_size must be positive, got {step}")
        sizes = [min(step, n - i) for i in range(0, n, step)]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, but dim {dim} has size {n}")
    out, start = [], 0
    index = [slice(None)] * x.data.ndim
    for size in sizes:
        index[dim] = slice(start, start + size)
        out.append(x[tuple(index)])
        start += size
    return tuple(out)


@register()
def chunk(x, chunks, dim=0):
    n = x.data.shape[dim]
    return split(x, -(-n // chunks), dim)
