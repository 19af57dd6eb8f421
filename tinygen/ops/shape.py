"""Ops that move data around without arithmetic: reshape, permute, expand, sum_to, cat, and friends."""
import numpy as np

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
        d = x.data
        lead = d.ndim - len(shape)
        if lead < 0:
            raise ValueError(f"sum_to: cannot sum shape {d.shape} to the larger shape {shape}")
        # two reductions rather than one plus a reshape: the result is then a fresh array, never a view, so the
        # engine need not copy it before handing it to a leaf as .grad
        out = d.sum(axis=tuple(range(lead))) if lead else d
        stretched = tuple(i for i, s in enumerate(shape) if s == 1 and out.shape[i] != 1)
        return out.sum(axis=stretched, keepdims=True) if stretched else out

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


# ---- ops added for PyTorch parity ------------------------------------------------------------------------------------
def wrap_dim(dim, ndim, op):
    """``dim`` as a non-negative axis of a tensor with ``ndim`` axes, or PyTorch's IndexError. A 0-d tensor
    accepts 0 and -1 (returned as 0), as in PyTorch."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return int(dim) % n


def wrap_dims(dims, ndim, op):
    """A tuple of distinct non-negative axes from an int or a sequence of ints (PyTorch's errors)."""
    dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    out = tuple(wrap_dim(d, ndim, op) for d in dims)
    for d in out:
        if out.count(d) > 1:
            raise RuntimeError(f"{op}: dim {d} appears multiple times in the list of dims {dims}")
    return out


def _dims_arg(args, dims, op):
    """dims given as varargs (x.flip(0, 1)), as one sequence (x.flip((0, 1))) or as the keyword ``dims``."""
    if args and dims is not None:
        raise TypeError(f"{op}: dims given both positionally and as a keyword")
    if dims is None:
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    return dims


class Flip(Function):
    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return ctx.xp.flip(x.data, axis=dims).copy()  # a copy, as PyTorch: writing to it leaves x alone

    @staticmethod
    def backward(ctx, g):
        return Flip.apply(g, ctx.dims), None


class Roll(Function):
    """Shift elements along ``dims`` (or along the flattened tensor when ``dims`` is None), wrapping around."""
    @staticmethod
    def forward(ctx, x, shifts, dims):
        ctx.shifts, ctx.dims = shifts, dims
        return ctx.xp.roll(x.data, shifts, axis=dims)

    @staticmethod
    def backward(ctx, g):
        back = tuple(-s for s in ctx.shifts) if isinstance(ctx.shifts, tuple) else -ctx.shifts
        return Roll.apply(g, back, ctx.dims), None, None


class Triangle(Function):
    """The lower (tril) or upper (triu) triangle of the last two axes, the rest zeroed."""
    @staticmethod
    def forward(ctx, x, diagonal, upper):
        ctx.diagonal, ctx.upper = diagonal, upper
        return (ctx.xp.triu if upper else ctx.xp.tril)(x.data, diagonal)

    @staticmethod
    def backward(ctx, g):
        return Triangle.apply(g, ctx.diagonal, ctx.upper), None, None


class Unbind(Function):
    """The slices along ``dim`` as separate outputs; the gradient stacks them back (missing ones are zeros)."""
    @staticmethod
    def forward(ctx, x, dim):
        ctx.dim = dim
        lead = (slice(None),) * dim
        return tuple(x.data[lead + (i,)] for i in range(x.data.shape[dim]))

    @staticmethod
    def backward(ctx, *grads):
        return stack(grads, ctx.dim), None


@register()
def flip(x, *args, dims=None):
    """Reverse the order of elements along ``dims``."""
    axes = wrap_dims(_dims_arg(args, dims, "flip"), x.data.ndim, "flip")
    if x.data.ndim == 0 or not axes:
        return x.clone()
    return Flip.apply(x, axes)


@register()
def roll(x, shifts, dims=None):
    """Shift elements by ``shifts`` along ``dims``, wrapping around; without ``dims`` the tensor is rolled as if
    flattened, then keeps its shape."""
    if dims is None:
        if not isinstance(shifts, (int, np.integer)) and len(shifts) != 1:
            raise RuntimeError(f"roll: with dims=None, shifts must be one number, got {shifts}")
        shift = int(shifts) if isinstance(shifts, (int, np.integer)) else int(shifts[0])
        return Roll.apply(x, shift, None)
    one = isinstance(dims, (int, np.integer))
    shifts = (shifts,) if isinstance(shifts, (int, np.integer)) else tuple(shifts)
    dims = (dims,) if one else tuple(dims)
    if len(shifts) != len(dims):
        raise RuntimeError(f"roll: shifts and dims must have the same length, got {len(shifts)} shifts and "
                           f"{len(dims)} dims")
    if x.data.ndim == 0:
        raise IndexError("roll: Dimension specified as 0 but tensor has no dimensions")
    axes = tuple(wrap_dim(d, x.data.ndim, "roll") for d in dims)
    return Roll.apply(x, tuple(int(s) for s in shifts), axes)


def _triangle(x, diagonal, upper, op):
    if x.data.ndim < 2:
        raise RuntimeError(f"{op}: input tensor must have at least 2 dimensions, got shape {tuple(x.shape)}")
    if isinstance(diagonal, bool) or not isinstance(diagonal, (int, np.integer)):
        raise TypeError(f"{op}: diagonal must be an int, got {type(diagonal).__name__}")
    return Triangle.apply(x, int(diagonal), upper)


@register()
def tril(x, diagonal=0):
    """The lower triangle of the last two axes (on and below the ``diagonal``-th diagonal); the rest zeros."""
    return _triangle(x, diagonal, False, "tril")


@register()
def triu(x, diagonal=0):
    """The upper triangle of the last two axes (on and above the ``diagonal``-th diagonal); the rest zeros."""
    return _triangle(x, diagonal, True, "triu")


@register()
def repeat(x, *sizes):
    """Tile the tensor ``sizes[i]`` times along each axis (leading new axes where ``sizes`` is longer), as
    ``torch.Tensor.repeat``: a reshape, a broadcast and a reshape, so the gradient is the broadcast's sum."""
    sizes = _shape_arg(sizes)
    nd = x.data.ndim
    if len(sizes) < nd:
        raise RuntimeError(f"repeat: number of dimensions of repeat dims ({len(sizes)}) can not be smaller than "
                           f"number of dimensions of tensor ({nd})")
    if any(r < 0 for r in sizes):
        raise RuntimeError(f"repeat: trying to create a tensor with negative dimension: repeats {sizes}")
    shape = (1,) * (len(sizes) - nd) + x.data.shape
    pairs = x.reshape(tuple(v for s in shape for v in (1, s)))
    pairs = pairs.expand(tuple(v for r, s in zip(sizes, shape) for v in (r, s)))
    out = pairs.reshape(tuple(r * s for r, s in zip(sizes, shape)))
    return out.clone() if out is x else out  # always a new tensor, as PyTorch


@register()
def tile(x, *args, dims=None):
    """``repeat`` with ``dims`` padded by leading ones when it is shorter than the tensor's shape."""
    dims = _shape_arg(_dims_arg(args, dims, "tile"))
    return repeat(x, (1,) * (x.data.ndim - len(dims)) + dims)


@register()
def unbind(x, dim=0):
    """The slices of ``x`` along ``dim``, as a tuple of tensors with that axis removed."""
    if x.data.ndim == 0:
        raise IndexError("unbind: Dimension specified as 0 but tensor has no dimensions")
    return Unbind.apply(x, wrap_dim(dim, x.data.ndim, "unbind"))


@register()
def narrow(x, dim, start, length):
    """``length`` elements of ``x`` along ``dim`` from ``start`` (negative counts from the end)."""
    if x.data.ndim == 0:
        raise RuntimeError("narrow() cannot be applied to a 0-dim tensor.")
    d = wrap_dim(dim, x.data.ndim, "narrow")
    size = x.data.shape[d]
    start, length = int(start), int(length)
    if not -size <= start <= size:
        raise IndexError(f"narrow: start ({start}) is out of range for dimension {dim} of size {size} "
                         f"(expected to be in range of [{-size}, {size}])")
    if start < 0:
        start += size
    if length < 0 or start + length > size:
        raise RuntimeError(f"narrow: start ({start}) + length ({length}) exceeds dimension size ({size}).")
    return x[(slice(None),) * d + (slice(start, start + length),)]


@register("movedim", "moveaxis")
def movedim(x, source, destination):
    """Move the axes ``source`` to the positions ``destination``; the other axes keep their order."""
    nd = x.data.ndim
    src = (source,) if isinstance(source, (int, np.integer)) else tuple(source)
    dst = (destination,) if isinstance(destination, (int, np.integer)) else tuple(destination)
    if len(src) != len(dst):
        raise RuntimeError(f"movedim: Invalid source or destination dims: source ({list(src)} dims) should "
                           f"contain the same number of dims as destination ({list(dst)} dims)")
    src_axes = tuple(wrap_dim(d, nd, "movedim") for d in src)
    dst_axes = tuple(wrap_dim(d, nd, "movedim") for d in dst)
    for name, given, axes in (("source", src, src_axes), ("destination", dst, dst_axes)):
        if len(set(axes)) != len(axes):
            raise RuntimeError(f"movedim: repeated dim in `{name}` ({list(given)})")
    if nd == 0:
        return x
    order = [a for a in range(nd) if a not in src_axes]
    for d, s in sorted(zip(dst_axes, src_axes)):
        order.insert(d, s)
    return x.permute(tuple(order))


@register("swapaxes", "swapdims")
def swapaxes(x, axis0, axis1):
    """Exchange two axes (``transpose``), with PyTorch's checks."""
    nd = x.data.ndim
    a, b = wrap_dim(axis0, nd, "swapaxes"), wrap_dim(axis1, nd, "swapaxes")
    if nd == 0:
        return x
    return transpose(x, a, b)


swapdims = swapaxes


@register()
def t(x):
    """The transpose of a matrix; a 0-d or 1-D tensor is returned as it is."""
    nd = x.data.ndim
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    return x.permute(1, 0) if nd == 2 else x


@register()
def expand_as(x, other):
    """``x.expand(other.shape)``."""
    return expand(x, tuple(other.shape))


@register()
def broadcast_to(x, shape):
    """``x`` broadcast to ``shape`` (-1 keeps a size), as ``expand``."""
    return expand(x, tuple(shape) if isinstance(shape, (tuple, list)) else (shape,))
