"""Ops that move data around without arithmetic: reshape, permute, expand, sum_to, cat, and friends."""
import numpy as np

from ..autograd.engine import sum_to_array
from .._checks import check_dim, check_int, check_sizes, is_int
from ..autograd.function import Function
from ..tensor import Tensor, _make, register


def _shape_arg(shape, fn="reshape", arg="shape"):
    """A shape given as ints or one tuple/list: ints >= -1 (the -1s are checked by the caller)."""
    return check_sizes(shape, fn, arg, low=-1)


def _tensor_list(tensors, fn):
    """The tensors of a cat/stack argument as a list, or a TypeError naming the item that is not one."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{fn}(): argument 'tensors' must be a tuple or list of Tensors, not "
                        f"{type(tensors).__name__}")
    for t in tensors:
        if not isinstance(t, Tensor):
            i = next(i for i, t in enumerate(tensors) if not isinstance(t, Tensor))
            raise TypeError(f"{fn}(): expected Tensor as element {i} in argument 'tensors', but got "
                            f"{type(tensors[i]).__name__}")
    if not tensors:
        raise ValueError(f"{fn}: expected a non-empty list of Tensors")
    return list(tensors)


class Gate(Function):
    """The identity on its tensors, whose backward first calls ``on_backward()``: a point in a graph where a
    backward can be checked before it goes on (``tinygen.compile`` hands a replayed forward's result on through
    one: compile/recording.py's ``HandedGraph``)."""

    @staticmethod
    def forward(ctx, on_backward, *tensors):
        ctx.on_backward = on_backward
        return tuple(t.data for t in tensors) if len(tensors) > 1 else tensors[0].data

    @staticmethod
    def backward(ctx, *grads):
        ctx.on_backward()
        return (None,) + grads


class Reshape(Function):
    reusable_forward = True  # so that what follows a reshape (a convolution of an unbatched image) can be reused

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

    @staticmethod
    def array_backward(ctx, g):
        return g.reshape(ctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return x.data.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return g.permute(tuple(np.argsort(ctx.dims).tolist())), None

    @staticmethod
    def array_backward(ctx, g):
        return g.transpose(tuple(np.argsort(ctx.dims).tolist())), None


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

    @staticmethod
    def array_backward(ctx, g):
        return sum_to_array(g, ctx.shape), None


class SumTo(Function):
    """Sum a broadcast result back to ``shape``: the inverse of broadcasting, used by the engine for every op."""
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.data.shape
        return sum_to_array(x.data, shape)

    @staticmethod
    def backward(ctx, g):
        return g.expand(ctx.shape), None

    @staticmethod
    def array_backward(ctx, g):
        return ctx.xp.broadcast_to(g, ctx.shape), None


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
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: only one dimension can be inferred, got shape {shape}")
    if shape == x.data.shape:
        return x
    return Reshape.apply(x, shape)


@register()
def flatten(x, start_dim=0, end_dim=-1):
    nd = x.data.ndim
    s, e = check_dim(start_dim, nd, "flatten", "start_dim"), check_dim(end_dim, nd, "flatten", "end_dim")
    if nd == 0:
        return x.reshape(1)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shape = x.data.shape
    return x.reshape(shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:])


@register()
def permute(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    nd = x.data.ndim
    if nd == 0 and not dims:
        return x
    if len(dims) != nd:
        raise ValueError(f"permute: number of dims don't match: the tensor of shape {x.shape} has {nd}, the "
                         f"desired ordering {dims} has {len(dims)}")
    dims = tuple(check_dim(d, nd, "permute", "dims") for d in dims)
    if len(set(dims)) != nd:
        raise ValueError(f"permute: repeated dim in {dims}; dims must be a permutation of the {nd} axes")
    if dims == tuple(range(nd)):
        return x
    return Permute.apply(x, dims)


@register()
def transpose(x, dim0, dim1):
    nd = x.data.ndim
    dim0, dim1 = check_dim(dim0, nd, "transpose", "dim0"), check_dim(dim1, nd, "transpose", "dim1")
    if nd == 0:
        return x
    dims = list(range(nd))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return x.permute(dims)


Tensor.T = property(lambda self: self.permute(tuple(range(self.data.ndim - 1, -1, -1))))
Tensor.mT = property(lambda self: self.transpose(-2, -1))


@register()
def expand(x, *shape):
    shape = _shape_arg(shape, "expand", "size")
    lead = len(shape) - x.data.ndim
    if lead < 0:
        raise ValueError(f"expand: the target shape {shape} has fewer dimensions than the tensor's {x.shape}")
    if -1 in shape[:lead]:
        raise ValueError(f"expand: the expanded size of the tensor (-1) isn't allowed in a leading, "
                         f"non-existing dimension (target shape {shape})")
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
    dims = {check_dim(d, len(shape), "squeeze") for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    if not shape:
        return x
    return x.reshape(tuple(s for i, s in enumerate(shape) if not (i in dims and s == 1)))


@register()
def unsqueeze(x, dim):
    dim = check_dim(dim, x.data.ndim + 1, "unsqueeze")  # the new axis may go after the last one
    shape = x.data.shape
    return x.reshape(shape[:dim] + (1,) + shape[dim:])


@register()
def contiguous(x):
    return x if x.data.flags.c_contiguous else x.clone()


def cat(tensors, dim=0):
    tensors = _tensor_list(tensors, "cat")
    ref = tensors[0]
    nd = ref.data.ndim
    if nd == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated")
    dim = check_dim(dim, nd, "cat")
    for i, t in enumerate(tensors):
        if t.data.ndim != nd or any(a != b for j, (a, b) in enumerate(zip(t.shape, ref.shape)) if j != dim):
            raise ValueError(f"cat: tensor {i} has shape {t.shape}, which does not match {ref.shape} "
                             f"outside dim {dim}")
    return Cat.apply(dim, *tensors)


concatenate = cat


def stack(tensors, dim=0):
    tensors = _tensor_list(tensors, "stack")
    dim = check_dim(dim, tensors[0].data.ndim + 1, "stack")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, but tensor 0 has {tensors[0].shape}")
    return cat([t.unsqueeze(dim) for t in tensors], dim)


@register()
def split(x, split_size_or_sections, dim=0):
    """Split into pieces of ``split_size`` along ``dim`` (the last may be smaller), or into the given sizes."""
    if x.data.ndim == 0:
        raise RuntimeError("split: expected a tensor with at least one dimension, got a 0-d tensor")
    dim = check_dim(dim, x.data.ndim, "split")
    n = x.data.shape[dim]
    if is_int(split_size_or_sections):
        step = int(split_size_or_sections)
        if step < 0 or (step == 0 and n):
            raise ValueError(f"split: split_size can only be 0 if dimension size is 0, and must be "
                             f"non-negative, but got split_size={step} for dim {dim} of size {n}")
        sizes = [min(step, n - i) for i in range(0, n, step)] if n else [0]
    else:
        if not isinstance(split_size_or_sections, (tuple, list)):
            raise TypeError(f"split(): argument 'split_size_or_sections' must be int or a list of ints, not "
                            f"{type(split_size_or_sections).__name__}")
        sizes = [check_int(s, "split", "split_size_or_sections", low=0) for s in split_size_or_sections]
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
    if check_int(chunks, "chunk", "chunks") <= 0:
        raise ValueError(f"chunk: chunk expects `chunks` to be greater than 0, got: {chunks}")
    if x.data.ndim == 0:
        raise RuntimeError("chunk: expected a tensor with at least one dimension, got a 0-d tensor")
    dim = check_dim(dim, x.data.ndim, "chunk")
    n = x.data.shape[dim]
    if n == 0:
        return (x,)
    return split(x, -(-n // chunks), dim)


# ---- ops added for PyTorch parity ------------------------------------------------------------------------------------
wrap_dim = check_dim  # one dim check for every op (tinygen/_checks.py)


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


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _pad_positions(size, before, after, mode):
    """For each position of an axis padded by (before, after): the input position it copies (NumPy int64)."""
    i = np.arange(-before, size + after)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    if mode == "circular":
        return i % size
    i = np.abs(i)  # reflect: the edge is not repeated (... 2 1 | 0 1 2 | 1 0 ...); widths < size, one fold
    return np.where(i > size - 1, 2 * (size - 1) - i, i)


def pad(input, pad, mode="constant", value=None):
    """``torch.nn.functional.pad``: ``pad`` = (left, right) widths of the last axis, then of the one before, ...
    mode 'constant' fills with ``value`` (0 by default) and takes negative widths (a crop); 'reflect',
    'replicate' and 'circular' pad the last 1-3 axes of an input with one or two axes more, as PyTorch's (reflect
    widths below the axis size, circular ones at most the size; a negative width crops). Built from narrow, cat
    and index_select, so its gradient (and the gradient's own) is theirs."""
    fn = "pad"
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: input must be a Tensor, got {type(input).__name__}")
    widths = tuple(check_int(w, fn, "pad") for w in pad) if isinstance(pad, (tuple, list)) else None
    nd = input.data.ndim
    if widths is None or len(widths) % 2 or len(widths) // 2 > nd:
        raise ValueError(f"{fn}: pad must be a sequence of (before, after) pairs, one per padded axis from the "
                         f"last, at most {nd} for a {nd}-D input; got {pad!r}")
    if mode not in PAD_MODES:
        raise NotImplementedError(f"{fn}: mode must be one of {PAD_MODES}, got {mode!r}")
    axes = len(widths) // 2
    if mode != "constant":
        if value is not None and value != 0:
            raise ValueError(f"{fn}: padding mode {mode!r} doesn't take in value argument")
        if not 1 <= axes <= 3 or nd not in (axes + 1, axes + 2):
            raise NotImplementedError(f"{fn}: mode {mode!r} pads the last 1, 2 or 3 axes of an input with one or two "
                                      f"axes more; got {axes} padded axes of a {nd}-D input")
    x = input
    for a in range(axes):
        d, before, after = nd - 1 - a, widths[2 * a], widths[2 * a + 1]
        size = x.data.shape[d]
        if mode == "constant":
            x = _constant_pad(x, d, before, after, 0.0 if value is None else value)
            continue
        if mode == "circular":  # PyTorch crops first, then wraps what is left
            x, before, after = _crop(x, d, before, after)
            size = x.data.shape[d]
        most = {"reflect": size - 1, "circular": size}.get(mode)  # replicate: any width
        if (most is not None and max(before, after) > most) or before + size + after <= 0:
            limit = f" at most {most} for an axis of size {size}" if most is not None else ""
            raise ValueError(f"{fn}: {mode} padding widths must be{limit} and leave a positive size (dim {d}), "
                             f"got ({before}, {after})")
        if before or after:
            index = x.xp.asarray(_pad_positions(size, before, after, mode))
            x = x.index_select(d, _make(index, x._device))
    return x


def _crop(x, d, before, after):
    """x cut by the negative widths along ``d`` (nothing when neither is), and the widths left to pad."""
    if min(before, after) >= 0:
        return x, before, after
    size = x.data.shape[d]
    lo, hi = max(-before, 0), size - max(-after, 0)
    return narrow(x, d, min(lo, size), max(hi - lo, 0)), max(before, 0), max(after, 0)


def _constant_pad(x, d, before, after, value):
    size = x.data.shape[d]
    if before + size + after < 0:
        raise ValueError(f"pad: the widths ({before}, {after}) leave a negative size for dim {d} of size {size}")
    x, before, after = _crop(x, d, before, after)
    if not (before or after):
        return x
    blocks = []
    for width in (before, after):
        shape = x.data.shape[:d] + (width,) + x.data.shape[d + 1:]
        blocks.append(_make(x.xp.full(shape, value, dtype=x.data.dtype), x._device))
    return cat([blocks[0], x, blocks[1]], d)
