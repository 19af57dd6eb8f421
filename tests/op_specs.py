"""The table of ops under test, and the harness that turns one table entry into concrete test inputs.

Each ``OpSpec`` says once how to call an op (tinygen, NumPy reference, PyTorch), how many inputs it takes and
whether they broadcast, which values are safe for it (away from kinks and domain edges), and which extra
arguments to draw (dim, keepdim, an index, ...). The checks themselves live in ``test_ops_properties.py``
(values, gradients, double gradients, aliasing, graph release, the "cuda" device) and ``test_ops_torch.py``
(PyTorch parity). Adding an op means adding one entry to ``SPECS``.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import tinygen as tg
from tinygen.tensor import _make


# ---- values ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Domain:
    """Where an input's values are drawn from.

    kind "float":    uniform in [lo, hi], pushed at least ``margin`` away from each point in ``kinks``;
    kind "distinct": all values at least ``margin`` apart, centred on 0 (max/min reductions: no near-ties);
    kind "lattice":  integer + ``offset`` + noise below ``margin``; two lattices with offsets 0 and 0.5 never
                     come closer than 0.5 - 2 * margin (maximum/minimum of two tensors);
    kind "bool":     random booleans (a condition; never differentiated).
    """
    lo: float = -2.0
    hi: float = 2.0
    kinks: tuple = ()
    margin: float = 0.1
    kind: str = "float"
    offset: float = 0.0

    @property
    def differentiable(self):
        return self.kind != "bool"

    def sample(self, rng, shape):
        if self.kind == "bool":
            return np.asarray(rng.random(shape) < 0.5)
        if self.kind == "distinct":
            n = math.prod(shape)
            spacing = 3 * self.margin
            v = (rng.permutation(n) - (n - 1) / 2) * spacing + rng.uniform(-self.margin, self.margin, n)
            return v.reshape(shape)
        if self.kind == "lattice":
            return np.asarray(rng.integers(-2, 3, shape) + self.offset + rng.uniform(-self.margin, self.margin, shape))
        v = rng.uniform(self.lo, self.hi, shape)
        for k in self.kinks:
            d = v - k
            near = np.abs(d) < self.margin
            v = np.where(near, k + np.where(d >= 0, self.margin, -self.margin) + d, v)
        return np.asarray(v, dtype=np.float64)


ANY = Domain()
POSITIVE = Domain(0.2, 3.0)
AWAY_FROM_0 = Domain(-2.0, 2.0, kinks=(0.0,), margin=0.15)
DISTINCT = Domain(kind="distinct")
BOOL = Domain(kind="bool")


# ---- shapes and extra arguments --------------------------------------------------------------------------------------
ND1 = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)  # at least one axis, size-1 axes included
EMPTY = array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=2).map(lambda s: (0,) + s[1:])


def weighted(*options):
    """One of the strategies, picked with the given weights: [(weight, strategy), ...].

    Left to itself, hypothesis' ``one_of`` spends most of a small example budget on its simplest branch (0-d and
    empty shapes); an explicit choice keeps them in the mix without crowding out the rest.
    """
    return st.sampled_from([s for w, s in options for _ in range(w)]).flatmap(lambda s: s)


NONEMPTY = weighted((5, ND1), (1, st.just(())))
SHAPE = weighted((6, ND1), (1, st.just(())), (1, EMPTY))


def broadcast_shapes(n):
    """``n`` mutually broadcastable shapes (0-d and size-1 axes included)."""
    def strategy(min_dims):
        return mutually_broadcastable_shapes(num_shapes=n, min_dims=min_dims, max_dims=3, min_side=1, max_side=3)
    return weighted((3, strategy(1)), (1, strategy(0))).map(lambda r: tuple(r.input_shapes))


def no_kwargs(shapes):
    return st.just({})


def fixed(**choices):
    """kwargs drawn from a fixed list per name: ``fixed(alpha=[1.0, 0.5])``."""
    names = list(choices)
    return lambda shapes: st.tuples(*(st.sampled_from(choices[n]) for n in names)).map(
        lambda vals: dict(zip(names, vals)))


def one_dim(ndim):
    """An axis of a tensor with ``ndim`` axes, positive or negative (a 0-d tensor accepts 0 and -1)."""
    n = max(ndim, 1)
    return st.integers(-n, n - 1)


def dims(ndim, allow_none=True, allow_tuple=True):
    """``dim`` for a reduction: None, an int, or a tuple of distinct axes (mixed signs, any order)."""
    options = [one_dim(ndim)]
    if allow_tuple and ndim >= 1:
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
            lambda axes: st.tuples(*(st.sampled_from([a, a - ndim]) for a in axes))))
    if allow_none:
        options.append(st.none())
    return weighted(*((1, o) for o in options))


def reduce_kwargs(allow_none=True, allow_tuple=True):
    """kwargs {"dim": ..., "keepdim": ...} of a reduction."""
    return lambda shapes: st.fixed_dictionaries({"dim": dims(len(shapes[0]), allow_none, allow_tuple),
                                                 "keepdim": st.booleans()})


def axis(dim, ndim):
    """A tinygen/PyTorch ``dim`` as a NumPy ``axis`` (0-d tensors accept dim 0, NumPy wants None)."""
    return None if ndim == 0 else dim


# ---- the spec --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    shapes: tuple
    kwargs: dict


@dataclass(frozen=True, repr=False)
class OpSpec:
    """One op under test.

    fn / ref / torch_fn are called as ``f(*inputs, **kwargs)`` with tinygen tensors, NumPy float64 arrays and
    torch tensors respectively. ``arity`` is the number of inputs ("n" for a list, e.g. cat); ``broadcast`` says
    whether their shapes broadcast against each other or are equal; ``shapes`` (a strategy of shape tuples)
    overrides both. ``domain`` is one Domain for all inputs or one per input. ``kwargs(shapes)`` returns a
    strategy for the extra arguments. ``gradcheck`` overrides eps/atol/rtol of the numeric checks.
    """
    name: str
    fn: Callable
    ref: Callable
    torch_fn: Optional[Callable] = None
    arity: Any = 1
    broadcast: bool = True
    domain: Any = ANY
    kwargs: Callable = no_kwargs
    shapes: Any = None
    gradcheck: dict = field(default_factory=dict)
    float32_tol: float = 2e-5  # relative tolerance of the float32 PyTorch comparison

    def domain_of(self, i):
        return self.domain[min(i, len(self.domain) - 1)] if isinstance(self.domain, tuple) else self.domain

    def shape_strategy(self):
        if self.shapes is not None:
            return self.shapes
        if self.arity == 1:
            return SHAPE.map(lambda s: (s,))
        if self.broadcast:
            return broadcast_shapes(self.arity)
        return NONEMPTY.map(lambda s: (s,) * self.arity)

    def cases(self):
        return self.shape_strategy().flatmap(
            lambda shapes: self.kwargs(shapes).map(lambda kw: Case(tuple(shapes), kw)))

    def __repr__(self):  # hypothesis prints the spec in falsifying examples
        return f"OpSpec({self.name})"

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))


# ---- building inputs -------------------------------------------------------------------------------------------------
LAYOUTS = ("contiguous", "transposed", "strided", "reversed")


@dataclass
class Example:
    spec: OpSpec
    arrays: list          # contiguous float64 (or bool) NumPy arrays: the values
    kwargs: dict
    layouts: list         # memory layout of each input (values do not depend on it)
    up_layouts: list      # memory layout of each upstream gradient
    seed: int

    @property
    def grad_indices(self):
        return [i for i in range(len(self.arrays)) if self.spec.domain_of(i).differentiable]

    def call(self, *tensors):
        return self.spec.fn(*tensors, **self.kwargs)

    def reference(self):
        return as_tuple(self.spec.ref(*[a.copy() for a in self.arrays], **self.kwargs))

    def tensors(self, device="cpu", dtype=tg.float64, layouts=None, requires_grad=True):
        """The inputs as tinygen tensors on ``device``; with ``layouts`` as non-contiguous views."""
        out = []
        for i, a in enumerate(self.arrays):
            diff = self.spec.domain_of(i).differentiable
            arr = a.astype(dtype) if diff else a
            data = lay_out(arr, layouts[i] if layouts else "contiguous", device)
            t = _make(data, device)
            if diff and requires_grad:
                t.requires_grad = True
            out.append(t)
        return out

    def upstream(self, outs, device="cpu", layouts=True):
        """A random upstream gradient for each float output (same dtype and device as the output)."""
        rng = np.random.default_rng(self.seed + 1)
        ups = []
        for k, o in enumerate(outs):
            u = rng.standard_normal(o.shape).astype(o.dtype)
            lay = self.up_layouts[k % len(self.up_layouts)] if layouts else "contiguous"
            ups.append(_make(lay_out(u, lay, device), device))
        return ups


def lay_out(arr, layout, device="cpu"):
    """``arr``'s values in a fresh array on ``device`` with the given memory layout."""
    xp = tg.backend.array_module(device)
    shape = arr.shape
    src = xp.asarray(np.array(arr, order="C"))
    if layout == "contiguous" or arr.ndim == 0:
        return src.copy()
    if layout == "transposed":
        buf = xp.empty(shape[::-1], dtype=arr.dtype).T
    elif layout == "strided":
        buf = xp.empty(tuple(2 * s for s in shape), dtype=arr.dtype)[tuple(slice(None, None, 2) for _ in shape)]
    elif layout == "reversed":
        buf = xp.empty(shape, dtype=arr.dtype)[tuple(slice(None, None, -1) for _ in shape)]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    buf[...] = src
    return buf


def draw_example(data, spec):
    """Draw one example of ``spec`` with hypothesis' ``data`` (shapes, kwargs, values seed, layouts)."""
    case = data.draw(spec.cases(), label="case")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    n = len(case.shapes)
    layouts = data.draw(st.lists(st.sampled_from(LAYOUTS), min_size=n, max_size=n), label="layouts")
    up_layouts = data.draw(st.lists(st.sampled_from(LAYOUTS), min_size=1, max_size=2), label="upstream layouts")
    rng = np.random.default_rng(seed)
    arrays = [spec.domain_of(i).sample(rng, s) for i, s in enumerate(case.shapes)]
    return Example(spec, arrays, case.kwargs, layouts, up_layouts, seed)


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def float_outputs(outs):
    return [o for o in outs if o.dtype.kind == "f"]


def host(t):
    """A tensor's data as a NumPy array (copied off the device if needed)."""
    return tg.backend.to_device(t.data, "cpu")


# ---- indices ---------------------------------------------------------------------------------------------------------
def tg_index(index, device):
    """An index with NumPy arrays turned into tinygen tensors on ``device`` (lists stay lists)."""
    if isinstance(index, tuple):
        return tuple(tg_index(i, device) for i in index)
    if isinstance(index, np.ndarray):
        return tg.tensor(index, device=device)
    return index


def torch_index(index):
    import torch
    if isinstance(index, tuple):
        return tuple(torch_index(i) for i in index)
    if isinstance(index, np.ndarray):
        return torch.from_numpy(index.copy())
    return index


@st.composite
def basic_index(draw, shape):
    """ints, slices (positive steps, as PyTorch), None and Ellipsis."""
    items = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "all"] if n else ["slice", "all"]))
        if kind == "int":
            items.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-n - 1, n + 1)
            items.append(slice(draw(bound), draw(bound), draw(st.none() | st.integers(1, 3))))
        else:
            items.append(slice(None))
    j = draw(st.integers(0, len(items)))
    if draw(st.booleans()):  # an Ellipsis stands for the axes items[j:k]
        items = items[:j] + [Ellipsis] + items[draw(st.integers(j, len(items))):]
    else:  # trailing axes left out
        items = items[:j]
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), None)
    return items[0] if len(items) == 1 and draw(st.booleans()) else tuple(items)


@st.composite
def int_array_index(draw, shape):
    """An integer array (repeats and negative entries likely) along one axis, as an array or a list."""
    ax = draw(st.integers(0, len(shape) - 1))
    n = shape[ax]
    ishape = draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    idx = rng.integers(-n, n, ishape).astype(np.int64)
    if draw(st.booleans()):
        idx.reshape(-1)[-1] = idx.reshape(-1)[0]  # at least one repeated index when there are two entries
    item = idx.tolist() if idx.ndim == 1 and draw(st.booleans()) else idx
    return (slice(None),) * ax + (item,)


@st.composite
def two_int_arrays_index(draw, shape):
    """Two integer arrays on adjacent axes, broadcast against each other."""
    ax = draw(st.integers(0, len(shape) - 2))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    s0, s1 = draw(st.sampled_from([((3,), (3,)), ((2, 1), (1, 3)), ((1,), (2,))]))
    i0 = rng.integers(-shape[ax], shape[ax], s0).astype(np.int64)
    i1 = rng.integers(-shape[ax + 1], shape[ax + 1], s1).astype(np.int64)
    return (slice(None),) * ax + (i0, i1)


@st.composite
def bool_mask_index(draw, shape):
    """A boolean mask over the leading ``k`` axes (all of them, or fewer)."""
    k = draw(st.integers(1, len(shape)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    return rng.random(shape[:k]) < 0.5


def index_kwargs(make):
    """kwargs {"index": ...} from an index strategy ``make(shape)``."""
    return lambda shapes: make(shapes[0]).map(lambda index: {"index": index})


def _index_shapes(min_dims):  # non-empty axes, so integer and boolean indices have something to pick
    return array_shapes(min_dims=min_dims, max_dims=3, min_side=1, max_side=4).map(lambda s: (s,))


# ---- shape-op arguments ----------------------------------------------------------------------------------------------
def reshape_kwargs(shapes):
    (shape,) = shapes
    n = math.prod(shape)
    options = [st.just(shape[::-1]), st.just((n,)), st.just(shape + (1,)), st.just((1,) + shape[::-1])]
    if n:
        options.append(st.integers(0, max(len(shape) - 1, 0)).map(
            lambda i: tuple(-1 if j == i else s for j, s in enumerate(shape[::-1])) or (-1,)))
        options.append(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]).map(lambda d: (d, n // d)))
    return weighted(*((1, o) for o in options)).map(lambda s: {"shape": s})


def flatten_kwargs(shapes):
    nd = len(shapes[0])
    if nd == 0:
        return st.just({})
    return st.tuples(st.integers(0, nd - 1), st.integers(0, nd - 1)).map(sorted).flatmap(
        lambda se: st.fixed_dictionaries({"start_dim": st.sampled_from([se[0], se[0] - nd]),
                                          "end_dim": st.sampled_from([se[1], se[1] - nd])}))


def permute_kwargs(shapes):
    nd = len(shapes[0])
    return st.permutations(range(nd)).flatmap(
        lambda p: st.tuples(*(st.sampled_from([d, d - nd]) for d in p))).map(lambda p: {"dims": tuple(p)})


def transpose_kwargs(shapes):
    nd = len(shapes[0])
    return st.fixed_dictionaries({"dim0": st.integers(-nd, nd - 1), "dim1": st.integers(-nd, nd - 1)})


@st.composite
def expand_kwargs(draw, shapes):
    (shape,) = shapes
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    body = tuple(draw(st.integers(1, 3)) if s == 1 else draw(st.sampled_from([s, -1])) for s in shape)
    return {"shape": lead + body}


def squeeze_kwargs(shapes):
    nd = len(shapes[0])
    return st.one_of(st.just({}), st.fixed_dictionaries({"dim": dims(nd, allow_none=False)}))


def unsqueeze_kwargs(shapes):
    nd = len(shapes[0])
    return st.fixed_dictionaries({"dim": st.integers(-nd - 1, nd)})


SMALL_SIDES = array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=2)  # squeeze: many size-1 axes


@st.composite
def cat_shapes(draw):
    """1 to 3 shapes that agree except along one axis (where sizes may be 0)."""
    base = draw(ND1)
    ax = draw(st.integers(0, len(base) - 1))
    sizes = draw(st.lists(weighted((4, st.integers(1, 3)), (1, st.just(0))), min_size=1, max_size=3))
    return tuple(base[:ax] + (s,) + base[ax + 1:] for s in sizes)


def cat_kwargs(shapes):
    nd = len(shapes[0])
    ok = [a for a in range(nd) if len({s[:a] + s[a + 1:] for s in shapes}) == 1]
    return st.sampled_from(ok).flatmap(lambda a: st.sampled_from([a, a - nd])).map(lambda d: {"dim": d})


def stack_shapes():
    return st.tuples(NONEMPTY, st.integers(1, 3)).map(lambda sk: (sk[0],) * sk[1])


def split_kwargs(shapes):
    (shape,) = shapes
    nd = len(shape)
    return st.integers(-nd, nd - 1).flatmap(lambda d: st.one_of(
        st.integers(1, max(shape[d], 1) + 1).map(lambda s: {"split_size_or_sections": s, "dim": d}),
        st.lists(st.integers(0, shape[d]), min_size=1, max_size=3).map(
            lambda cuts: {"split_size_or_sections": _sections(sorted(cuts), shape[d]), "dim": d})))


def _sections(cuts, n):
    edges = [0] + cuts + [n]
    return [b - a for a, b in zip(edges, edges[1:])]


@st.composite
def matmul_shapes(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["mm", "batched", "vec-vec", "vec-mat", "mat-vec"]))
    batch_a, batch_b = draw(broadcast_shapes(2).filter(lambda s: len(s[0]) + len(s[1]) <= 3))
    if kind == "mm":
        return ((n, k), (k, m))
    if kind == "batched":
        return (batch_a + (n, k), batch_b + (k, m))
    if kind == "vec-vec":
        return ((k,), (k,))
    if kind == "vec-mat":
        return ((k,), batch_b + (k, m))
    return (batch_a + (n, k), (k,))


def var_shapes():  # at least two elements in every reduction, so the (n - 1) correction is defined
    return array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4).map(lambda s: (s,))


def var_kwargs(shapes):
    return reduce_kwargs()(shapes).flatmap(
        lambda kw: st.sampled_from([0, 1]).map(lambda c: {**kw, "correction": c}))


# ---- reference helpers -----------------------------------------------------------------------------------------------
def _np_reduce(f):
    def ref(x, dim=None, keepdim=False, **kw):
        return f(x, axis=axis(dim, x.ndim), keepdims=keepdim, **kw)
    return ref


def _np_softmax(x, dim):
    ax = axis(dim, x.ndim)
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return e / e.sum(axis=ax, keepdims=True)


def _np_log_softmax(x, dim):
    ax = axis(dim, x.ndim)
    s = x - x.max(axis=ax, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=ax, keepdims=True))


def _np_logsumexp(x, dim, keepdim=False):
    ax = axis(dim, x.ndim)
    m = x.max(axis=ax, keepdims=True)
    out = np.log(np.exp(x - m).sum(axis=ax, keepdims=True)) + m
    return out if keepdim or ax is None else np.squeeze(out, ax)


def _np_max_dim(largest):
    def ref(x, dim, keepdim=False):
        ax = axis(dim, x.ndim)
        if ax is None:
            return x.copy(), np.zeros((), np.int64)
        idx = (np.argmax if largest else np.argmin)(x, axis=ax, keepdims=True)
        vals = np.take_along_axis(x, idx, axis=ax)
        return (vals, idx) if keepdim else (vals.squeeze(ax), idx.squeeze(ax))
    return ref


def _np_softplus(x, beta=1.0, threshold=20.0):
    return np.where(x * beta > threshold, x, np.log1p(np.exp(beta * x)) / beta)


def _np_squeeze(x, dim=None):
    if dim is None or x.ndim == 0:
        return np.squeeze(x)
    axes = tuple(d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim) if x.shape[d] == 1)
    return np.squeeze(x, axes)


def _np_split(x, split_size_or_sections, dim=0):
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        cuts = list(range(split_size_or_sections, n, split_size_or_sections))
    else:
        cuts = list(np.cumsum(split_size_or_sections)[:-1])
    return tuple(np.split(x, cuts, axis=dim))


def _np_var(x, dim=None, keepdim=False, correction=1):
    return np.var(x, axis=axis(dim, x.ndim), keepdims=keepdim, ddof=correction)


def _np_std(x, dim=None, keepdim=False, correction=1):
    return np.std(x, axis=axis(dim, x.ndim), keepdims=keepdim, ddof=correction)


def _np_flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def _np_expand(x, shape):
    lead = len(shape) - x.ndim
    return np.broadcast_to(x, tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))).copy()


def _np_transpose(x, dim0, dim1):
    return np.swapaxes(x, dim0, dim1)


# ---- PyTorch helpers (torch is imported only when these run) ---------------------------------------------------------
def _torch():
    import torch
    return torch


def _t_reduce(name):
    def f(x, dim=None, keepdim=False, **kw):
        fn = getattr(_torch(), name)
        return fn(x, **kw) if dim is None and not keepdim else fn(x, dim=dim, keepdim=keepdim, **kw)
    return f


def _t_max_all(largest):
    def f(x, dim=None, keepdim=False):
        torch = _torch()
        if dim is None and not keepdim:
            return torch.max(x) if largest else torch.min(x)
        return (torch.amax if largest else torch.amin)(x, dim=tuple(range(x.ndim)) if dim is None else dim,
                                                       keepdim=keepdim)
    return f


def _t_max_dim(largest):
    def f(x, dim, keepdim=False):
        v, i = (_torch().max if largest else _torch().min)(x, dim, keepdim)
        return v, i
    return f


def _t_amax(largest):
    def f(x, dim=None, keepdim=False):
        torch = _torch()
        fn = torch.amax if largest else torch.amin
        return fn(x, dim=tuple(range(x.ndim)) if dim is None else dim, keepdim=keepdim)
    return f


def _t_tensor_like(x, value):
    return _torch().tensor(value, dtype=x.dtype)


def _t_split(x, split_size_or_sections, dim=0):
    return tuple(_torch().split(x, split_size_or_sections, dim))


def _t_T(x):
    return x.permute(tuple(reversed(range(x.ndim))))


def _tg_getitem(x, index):
    return x[tg_index(index, x.device)]


def _np_getitem(x, index):
    return x[index]


def _t_getitem(x, index):
    return x[torch_index(index)]


def _F():
    import torch.nn.functional as F
    return F


# ---- the table -------------------------------------------------------------------------------------------------------
D2 = Domain(-2.0, 2.0)
DIVISOR = Domain(-3.0, 3.0, kinks=(0.0,), margin=0.5)
PAIR = (Domain(kind="lattice", offset=0.0), Domain(kind="lattice", offset=0.5))
CLAMP = Domain(-2.0, 2.0, kinks=(-0.5, 0.7), margin=0.1)

SPECS = [
    # arithmetic, tensor with tensor (broadcasting) and with Python numbers
    OpSpec("add", tg.add, np.add, lambda a, b: a + b, arity=2),
    OpSpec("sub", lambda a, b: a - b, np.subtract, lambda a, b: a - b, arity=2),
    OpSpec("mul", lambda a, b: a * b, np.multiply, lambda a, b: a * b, arity=2),
    OpSpec("div", lambda a, b: a / b, np.divide, lambda a, b: a / b, arity=2, domain=(D2, DIVISOR)),
    OpSpec("pow", lambda a, b: a ** b, np.power, lambda a, b: a ** b, arity=2,
           domain=(Domain(0.5, 2.5), Domain(-2.0, 2.0))),
    OpSpec("pow_scalar", lambda x, p: x ** p, lambda x, p: x ** p, lambda x, p: x ** p, domain=POSITIVE,
           kwargs=fixed(p=[2.0, 3, 0.5, -1.0, 1.5, -0.5])),
    OpSpec("pow_int_scalar_negative_base", lambda x, p: x ** p, lambda x, p: x ** float(p), lambda x, p: x ** p,
           domain=Domain(-2.0, 2.0, kinks=(0.0,), margin=0.3), kwargs=fixed(p=[2, 3, -1, -2])),
    OpSpec("rpow", lambda x, c: c ** x, lambda x, c: np.power(c, x), lambda x, c: c ** x,
           kwargs=fixed(c=[2.0, 0.5, math.e])),
    OpSpec("add_scalar", lambda x, c: x + c, lambda x, c: x + c, lambda x, c: x + c, kwargs=fixed(c=[1.5, -2, 0.0])),
    OpSpec("rsub_scalar", lambda x, c: c - x, lambda x, c: c - x, lambda x, c: c - x, kwargs=fixed(c=[1.5, 3])),
    OpSpec("mul_scalar", lambda x, c: c * x, lambda x, c: c * x, lambda x, c: c * x, kwargs=fixed(c=[2.5, -1, 0.0])),
    OpSpec("div_scalar", lambda x, c: x / c, lambda x, c: x / c, lambda x, c: x / c, kwargs=fixed(c=[2.0, -0.25])),
    OpSpec("rdiv_scalar", lambda x, c: c / x, lambda x, c: c / x, lambda x, c: c / x, domain=DIVISOR,
           kwargs=fixed(c=[1.0, -3.0])),
    OpSpec("neg", lambda x: -x, np.negative, lambda x: -x),
    OpSpec("matmul", lambda a, b: a @ b, np.matmul, lambda a, b: a @ b, arity=2, shapes=matmul_shapes(),
           domain=Domain(-1.0, 1.0)),
    # elementwise math and activations
    OpSpec("abs", tg.abs, np.abs, lambda x: x.abs(), domain=AWAY_FROM_0),
    OpSpec("exp", tg.exp, np.exp, lambda x: x.exp()),
    OpSpec("log", tg.log, np.log, lambda x: x.log(), domain=POSITIVE),
    OpSpec("sqrt", tg.sqrt, np.sqrt, lambda x: x.sqrt(), domain=POSITIVE),
    OpSpec("sin", tg.sin, np.sin, lambda x: x.sin(), domain=Domain(-4.0, 4.0)),
    OpSpec("cos", tg.cos, np.cos, lambda x: x.cos(), domain=Domain(-4.0, 4.0)),
    OpSpec("tanh", tg.tanh, np.tanh, lambda x: x.tanh(), domain=Domain(-3.0, 3.0)),
    OpSpec("sigmoid", tg.sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda x: x.sigmoid(), domain=Domain(-6.0, 6.0)),
    OpSpec("relu", tg.relu, lambda x: np.maximum(x, 0), lambda x: x.relu(), domain=AWAY_FROM_0),
    OpSpec("leaky_relu", tg.leaky_relu, lambda x, negative_slope: np.where(x > 0, x, negative_slope * x),
           lambda x, negative_slope: _F().leaky_relu(x, negative_slope), domain=AWAY_FROM_0,
           kwargs=fixed(negative_slope=[0.01, 0.2, 1.5])),
    OpSpec("elu", tg.elu, lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
           lambda x, alpha: _F().elu(x, alpha), domain=AWAY_FROM_0, kwargs=fixed(alpha=[1.0, 0.5, 2.0])),
    OpSpec("softplus", tg.softplus, _np_softplus, lambda x, beta, threshold: _F().softplus(x, beta, threshold),
           domain=Domain(-4.0, 4.0), kwargs=fixed(beta=[1.0, 0.5, 2.0], threshold=[20.0])),
    # a threshold inside the range: linear above threshold / beta = 1, soft below
    OpSpec("softplus_threshold", tg.softplus, _np_softplus,
           lambda x, beta, threshold: _F().softplus(x, beta, threshold), domain=Domain(-1.0, 3.0, kinks=(1.0,)),
           kwargs=lambda shapes: st.sampled_from([{"beta": 1.0, "threshold": 1.0}, {"beta": 2.0, "threshold": 2.0},
                                                  {"beta": 0.5, "threshold": 0.5}])),
    OpSpec("clamp", tg.clamp, lambda x, min, max: np.clip(x, min, max),
           lambda x, min, max: x.clamp(min, max), domain=CLAMP,
           kwargs=lambda shapes: st.sampled_from([{"min": -0.5, "max": 0.7}, {"min": -0.5, "max": None},
                                                  {"min": None, "max": 0.7}])),
    OpSpec("maximum", tg.maximum, np.maximum, lambda a, b: a.maximum(b), arity=2, domain=PAIR),
    OpSpec("minimum", tg.minimum, np.minimum, lambda a, b: a.minimum(b), arity=2, domain=PAIR),
    OpSpec("max_of_two", tg.max, np.maximum, lambda a, b: _torch().max(a, b), arity=2, domain=PAIR),
    OpSpec("maximum_scalar", lambda x: tg.maximum(x, 0.25), lambda x: np.maximum(x, 0.25),
           lambda x: _torch().maximum(x, _t_tensor_like(x, 0.25)), domain=Domain(kinks=(0.25,))),
    OpSpec("where", tg.where, np.where, lambda c, a, b: _torch().where(c, a, b), arity=3, domain=(BOOL, D2)),
    OpSpec("where_scalar", lambda c, x: tg.where(c, x, 0.5), lambda c, x: np.where(c, x, 0.5),
           lambda c, x: _torch().where(c, x, 0.5), arity=2, domain=(BOOL, D2)),
    OpSpec("clone", tg.clone, np.copy, lambda x: x.clone()),
    OpSpec("to_float32", lambda x: x.to(tg.float32), lambda x: x.astype(np.float32),
           lambda x: x.to(_torch().float32), gradcheck=dict(eps=1e-3, atol=1e-4, rtol=1e-3)),
    # reductions
    OpSpec("sum", tg.sum, _np_reduce(np.sum), _t_reduce("sum"), kwargs=reduce_kwargs()),
    OpSpec("mean", tg.mean, _np_reduce(np.mean), _t_reduce("mean"), shapes=NONEMPTY.map(lambda s: (s,)),
           kwargs=reduce_kwargs()),
    # distinct values: a near-zero spread would make the float32 comparison ill-conditioned (and std a kink)
    OpSpec("var", tg.var, _np_var, _t_reduce("var"), shapes=var_shapes(), kwargs=var_kwargs, domain=DISTINCT),
    OpSpec("std", tg.std, _np_std, _t_reduce("std"), shapes=var_shapes(), kwargs=var_kwargs, domain=DISTINCT),
    OpSpec("max", tg.max, _np_reduce(np.max), _t_max_all(True), shapes=NONEMPTY.map(lambda s: (s,)),
           domain=DISTINCT, kwargs=lambda s: st.fixed_dictionaries({"dim": st.none(), "keepdim": st.booleans()})),
    OpSpec("min", tg.min, _np_reduce(np.min), _t_max_all(False), shapes=NONEMPTY.map(lambda s: (s,)),
           domain=DISTINCT, kwargs=lambda s: st.fixed_dictionaries({"dim": st.none(), "keepdim": st.booleans()})),
    OpSpec("max_dim", lambda x, dim, keepdim: tuple(tg.max(x, dim, keepdim)), _np_max_dim(True), _t_max_dim(True),
           shapes=NONEMPTY.map(lambda s: (s,)), domain=DISTINCT, kwargs=reduce_kwargs(False, False)),
    OpSpec("min_dim", lambda x, dim, keepdim: tuple(x.min(dim, keepdim=keepdim)), _np_max_dim(False),
           _t_max_dim(False), shapes=NONEMPTY.map(lambda s: (s,)), domain=DISTINCT,
           kwargs=reduce_kwargs(False, False)),
    OpSpec("amax", tg.amax, _np_reduce(np.max), _t_amax(True), shapes=NONEMPTY.map(lambda s: (s,)),
           domain=DISTINCT, kwargs=reduce_kwargs()),
    OpSpec("amin", tg.amin, _np_reduce(np.min), _t_amax(False), shapes=NONEMPTY.map(lambda s: (s,)),
           domain=DISTINCT, kwargs=reduce_kwargs()),
    OpSpec("logsumexp", tg.logsumexp, _np_logsumexp,
           lambda x, dim, keepdim: _torch().logsumexp(x, dim, keepdim), shapes=NONEMPTY.map(lambda s: (s,)),
           domain=Domain(-4.0, 4.0), kwargs=reduce_kwargs(allow_none=False)),
    OpSpec("softmax", tg.softmax, _np_softmax, lambda x, dim: x.softmax(dim), shapes=NONEMPTY.map(lambda s: (s,)),
           domain=Domain(-4.0, 4.0), kwargs=lambda s: st.fixed_dictionaries({"dim": one_dim(len(s[0]))})),
    OpSpec("log_softmax", tg.log_softmax, _np_log_softmax, lambda x, dim: x.log_softmax(dim),
           shapes=NONEMPTY.map(lambda s: (s,)), domain=Domain(-4.0, 4.0),
           kwargs=lambda s: st.fixed_dictionaries({"dim": one_dim(len(s[0]))})),
    # shape ops
    OpSpec("reshape", lambda x, shape: x.reshape(shape), lambda x, shape: x.reshape(shape),
           lambda x, shape: x.reshape(shape), kwargs=reshape_kwargs),
    OpSpec("view", lambda x, shape: x.view(*shape), lambda x, shape: x.reshape(shape),
           lambda x, shape: x.contiguous().view(shape), kwargs=reshape_kwargs),
    OpSpec("flatten", tg.flatten, _np_flatten, lambda x, **kw: x.flatten(**kw), kwargs=flatten_kwargs),
    OpSpec("permute", lambda x, dims: x.permute(dims), lambda x, dims: np.transpose(x, dims),
           lambda x, dims: x.permute(dims), kwargs=permute_kwargs),
    OpSpec("transpose", tg.transpose, _np_transpose, lambda x, dim0, dim1: x.transpose(dim0, dim1),
           shapes=ND1.map(lambda s: (s,)), kwargs=transpose_kwargs),
    OpSpec("T", lambda x: x.T, lambda x: x.T, _t_T),
    OpSpec("mT", lambda x: x.mT, lambda x: np.swapaxes(x, -1, -2), lambda x: x.mT,
           shapes=array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3).map(lambda s: (s,))),
    OpSpec("expand", lambda x, shape: x.expand(*shape), _np_expand, lambda x, shape: x.expand(shape),
           shapes=SMALL_SIDES.map(lambda s: (s,)), kwargs=expand_kwargs),
    OpSpec("squeeze", tg.squeeze, _np_squeeze, lambda x, **kw: x.squeeze(**kw), shapes=SMALL_SIDES.map(lambda s: (s,)),
           kwargs=squeeze_kwargs),
    OpSpec("unsqueeze", tg.unsqueeze, lambda x, dim: np.expand_dims(x, dim), lambda x, dim: x.unsqueeze(dim),
           kwargs=unsqueeze_kwargs),
    OpSpec("getitem_basic", _tg_getitem, _np_getitem, _t_getitem, shapes=NONEMPTY.map(lambda s: (s,)),
           kwargs=index_kwargs(basic_index)),
    OpSpec("getitem_int_array", _tg_getitem, _np_getitem, _t_getitem, shapes=_index_shapes(1),
           kwargs=index_kwargs(int_array_index)),
    OpSpec("getitem_two_int_arrays", _tg_getitem, _np_getitem, _t_getitem, shapes=_index_shapes(2),
           kwargs=index_kwargs(two_int_arrays_index)),
    OpSpec("getitem_bool_mask", _tg_getitem, _np_getitem, _t_getitem, shapes=_index_shapes(1),
           kwargs=index_kwargs(bool_mask_index)),
    OpSpec("cat", lambda *xs, dim: tg.cat(xs, dim), lambda *xs, dim: np.concatenate(xs, dim),
           lambda *xs, dim: _torch().cat(xs, dim), arity="n", shapes=cat_shapes(),
           kwargs=cat_kwargs),
    OpSpec("stack", lambda *xs, dim: tg.stack(xs, dim), lambda *xs, dim: np.stack(xs, dim),
           lambda *xs, dim: _torch().stack(xs, dim), arity="n", shapes=stack_shapes(),
           kwargs=lambda shapes: st.fixed_dictionaries({"dim": st.integers(-len(shapes[0]) - 1, len(shapes[0]))})),
    OpSpec("split", tg.split, _np_split, _t_split, shapes=ND1.map(lambda s: (s,)), kwargs=split_kwargs),
    OpSpec("chunk", tg.chunk, lambda x, chunks, dim: _np_split(x, -(-x.shape[dim] // chunks), dim),
           lambda x, chunks, dim: tuple(_torch().chunk(x, chunks, dim)), shapes=ND1.map(lambda s: (s,)),
           kwargs=lambda shapes: st.fixed_dictionaries({"chunks": st.integers(1, 4),
                                                        "dim": st.integers(-len(shapes[0]), len(shapes[0]) - 1)})),
]


# ---- shape, reduction, indexing, linear-algebra and loss ops added for PyTorch parity --------------------------------
@dataclass(frozen=True)
class SignedDistinct(Domain):
    """Magnitudes at least ``margin`` apart and at least ``2 * margin`` from 0, with random signs: |x| has no
    near-ties (inf-norms) and no value is near 0 (the kink of |x|)."""

    def sample(self, rng, shape):
        n = math.prod(shape)
        mags = (rng.permutation(n) + 1) * 3 * self.margin + rng.uniform(-self.margin, self.margin, n)
        return (mags * rng.choice([-1.0, 1.0], n)).reshape(shape)


MAGNITUDES = SignedDistinct(kinks=(0.0,))  # the kink also keeps existing nodes with values near 0 out (graphs)
INTEGERS = Domain(kind="lattice", margin=0.0)  # exact integers in [-2, 2]: many zeros (prod's gradient)
SMALL = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)


def _axes_subset(ndim):
    """A non-empty tuple of distinct axes (mixed signs); a 0-d tensor takes (0,) or (-1,)."""
    if ndim == 0:
        return st.sampled_from([(0,), (-1,)])
    return st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
        lambda axes: st.tuples(*(st.sampled_from([a, a - ndim]) for a in axes)))


def flip_kwargs(shapes):
    return _axes_subset(len(shapes[0])).map(lambda d: {"dims": d})


def _np_flip(x, dims):
    return x.copy() if x.ndim == 0 else np.flip(x, dims).copy()


def roll_kwargs(shapes):
    nd = len(shapes[0])
    flat = st.integers(-5, 5).map(lambda s: {"shifts": s})
    if nd == 0:
        return flat
    one = st.tuples(st.integers(-5, 5), one_dim(nd)).map(lambda sd: {"shifts": sd[0], "dims": sd[1]})
    many = _axes_subset(nd).flatmap(lambda d: st.lists(st.integers(-5, 5), min_size=len(d), max_size=len(d)).map(
        lambda s: {"shifts": tuple(s), "dims": d}))
    return weighted((1, flat), (1, one), (1, many))


def _np_cumsum(x, dim):
    return x.copy() if x.ndim == 0 else np.cumsum(x, axis=dim)


def prod_kwargs(shapes):
    nd = len(shapes[0])
    return st.fixed_dictionaries({"dim": st.none() | one_dim(nd), "keepdim": st.booleans()}).map(
        lambda kw: {"dim": None} if kw["dim"] is None else kw)


def _np_prod(x, dim=None, keepdim=False):
    return np.prod(x, axis=axis(dim, x.ndim), keepdims=keepdim)


def _t_prod(x, dim=None, keepdim=False):
    return _torch().prod(x) if dim is None else _torch().prod(x, dim, keepdim)


NORM_PS = [2, "fro", 1, math.inf, -math.inf, 3, 1.5, 0.5, 0]


def norm_kwargs(shapes):
    nd = len(shapes[0])

    def with_p(kw):
        long_tuple = isinstance(kw["dim"], tuple) and len(kw["dim"]) > 2
        return st.sampled_from([p for p in NORM_PS if not (p == "fro" and long_tuple)]).map(
            lambda p: {**kw, "p": p})
    return st.fixed_dictionaries({"dim": dims(nd), "keepdim": st.booleans()}).flatmap(with_p)


def _np_norm(x, p, dim=None, keepdim=False):
    ax = axis(dim, x.ndim)
    a = np.abs(x)
    if p in (2, "fro"):
        return np.sqrt((x * x).sum(axis=ax, keepdims=keepdim))
    if p == math.inf:
        return a.max(axis=ax, keepdims=keepdim)
    if p == -math.inf:
        return a.min(axis=ax, keepdims=keepdim)
    if p == 0:
        return (a != 0).sum(axis=ax, keepdims=keepdim).astype(x.dtype)
    return (a ** p).sum(axis=ax, keepdims=keepdim) ** (1.0 / p)


def _t_norm(x, p, dim=None, keepdim=False):
    return _torch().linalg.vector_norm(x, 2 if p == "fro" else p, dim, keepdim)


def diagonal_kwargs(shapes):
    return st.fixed_dictionaries({"diagonal": st.integers(-3, 3)})


MATRICES = array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4).map(lambda s: (s,))


def repeat_kwargs(shapes):
    nd = len(shapes[0])
    side = weighted((4, st.integers(1, 3)), (1, st.just(0)))
    return st.integers(nd, nd + 2).flatmap(lambda n: st.lists(side, min_size=n, max_size=n)).map(
        lambda r: {"sizes": tuple(r)})


def tile_kwargs(shapes):
    nd = len(shapes[0])
    return st.integers(0, nd + 1).flatmap(lambda n: st.lists(st.integers(1, 3), min_size=n, max_size=n)).map(
        lambda r: {"dims": tuple(r)})


def _np_unbind(x, dim):
    return tuple(np.take(x, i, axis=dim) for i in range(x.shape[dim]))


@st.composite
def narrow_kwargs(draw, shapes):
    (shape,) = shapes
    nd = len(shape)
    d = draw(st.integers(-nd, nd - 1))
    n = shape[d]
    start = draw(st.integers(-n, n))
    first = start + n if start < 0 else start
    return {"dim": d, "start": start, "length": draw(st.integers(0, n - first))}


def _np_narrow(x, dim, start, length):
    first = start + x.shape[dim] if start < 0 else start
    return np.take(x, np.arange(first, first + length), axis=dim)


@st.composite
def movedim_kwargs(draw, shapes):
    nd = len(shapes[0])
    if draw(st.booleans()):
        return {"source": draw(one_dim(nd)), "destination": draw(one_dim(nd))}
    k = draw(st.integers(1, max(nd, 1)))
    src = draw(st.lists(st.integers(0, max(nd, 1) - 1), min_size=k, max_size=k, unique=True))
    dst = draw(st.lists(st.integers(0, max(nd, 1) - 1), min_size=k, max_size=k, unique=True))
    return {"source": tuple(src), "destination": tuple(d - nd if draw(st.booleans()) else d for d in dst)}


def _np_movedim(x, source, destination):
    return x.copy() if x.ndim == 0 else np.moveaxis(x, source, destination)


@st.composite
def expand_as_shapes(draw):
    shape = draw(SMALL_SIDES)
    target = draw(expand_kwargs((shape,)))["shape"]
    lead = len(target) - len(shape)
    return (shape, tuple(shape[i - lead] if s == -1 else s for i, s in enumerate(target)))


@st.composite
def masked_fill_shapes(draw, with_value):
    shapes = draw(broadcast_shapes(2))
    return shapes + ((),) if with_value else shapes


def _tg_masked_fill_value(x, mask, value):
    return tg.masked_fill(x, mask, value)


@st.composite
def index_select_kwargs(draw, shapes):
    (shape,) = shapes
    nd = len(shape)
    d = draw(st.integers(-nd, nd - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    ishape = draw(st.sampled_from([(), (1,), (2,), (4,)]))
    return {"dim": d, "index": rng.integers(0, shape[d], ishape).astype(np.int64)}


def _np_index_select(x, dim, index):
    return np.take(x, index.reshape(-1), axis=dim)


@st.composite
def gather_kwargs(draw, shapes):
    (shape,) = shapes
    nd = len(shape)
    d = draw(st.integers(-nd, nd - 1))
    ax = d % nd
    ishape = tuple(draw(st.integers(1, 4)) if k == ax else draw(st.integers(1, shape[k])) for k in range(nd))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    return {"dim": d, "index": rng.integers(0, shape[ax], ishape).astype(np.int64)}


def _np_gather(x, dim, index):
    ax = dim % x.ndim
    part = x[tuple(slice(None) if k == ax else slice(0, index.shape[k]) for k in range(x.ndim))]
    return np.take_along_axis(part, index, axis=ax)


@st.composite
def take_along_dim_kwargs(draw, shapes):
    (shape,) = shapes
    nd = len(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if draw(st.booleans()):
        ishape = draw(st.sampled_from([(3,), (2, 2), (1,)]))
        return {"dim": None, "index": rng.integers(0, math.prod(shape), ishape).astype(np.int64)}
    d = draw(st.integers(-nd, nd - 1))
    ax = d % nd
    ishape = tuple(draw(st.integers(1, 3)) if k == ax else draw(st.sampled_from([1, shape[k]])) for k in range(nd))
    return {"dim": d, "index": rng.integers(0, shape[ax], ishape).astype(np.int64)}


def _np_take_along_dim(x, index, dim):
    if dim is None:
        return x.reshape(-1)[index.reshape(-1)]
    return np.take_along_axis(x, index, axis=dim % x.ndim)


def _tg_indexed(f):
    """A tinygen call whose ``index`` keyword arrives as a NumPy array (made a tensor on x's device)."""
    def call(x, index, **kw):
        return f(x, index=tg_index(index, x.device), **kw)
    return call


def _t_indexed(name):
    def call(x, index, **kw):
        return getattr(_torch(), name)(x, index=torch_index(index), **kw)
    return call


def _np_std_mean(x, dim=None, keepdim=False, correction=1):
    return _np_std(x, dim, keepdim, correction), _np_reduce(np.mean)(x, dim, keepdim)


def _tg_nansum(x, nan_at, dim=None, keepdim=False):
    return tg.nansum(x.masked_fill(nan_at, math.nan), dim, keepdim)


def _np_nansum(x, nan_at, dim=None, keepdim=False):
    return np.nansum(np.where(nan_at, np.nan, x), axis=axis(dim, x.ndim), keepdims=keepdim)


def _t_nansum(x, nan_at, dim=None, keepdim=False):
    y = x.masked_fill(nan_at, math.nan)
    return _torch().nansum(y) if dim is None and not keepdim else _torch().nansum(y, dim, keepdim)


@st.composite
def _pair_shapes(draw, kind):
    n, k, m, b = (draw(st.integers(1, 3)) for _ in range(4))
    return {"mm": ((n, k), (k, m)), "bmm": ((b, n, k), (b, k, m)), "mv": ((n, k), (k,)), "dot": ((k,), (k,)),
            "outer": ((n,), (m,))}[kind]


# one spec per equation: label -> size is drawn, every operand's shape follows from it
EINSUM_EQUATIONS = ["ij,jk->ik", "bij,bjk->bik", "bij,bkj->bik", "ij,j->i", "i,i->", "i,j->ij", "ij,ij->i",
                    "bi,bj->bij", "ijk,ikl->jl", "ij->ji", "ii->", "ii->i", "ij->", "ijk->kj", "iij,jk->ik",
                    "bij,bjk", "ij,jk,kl->il", "...ij,...jk->...ik", "a...,a->..."]


def einsum_shapes(equation):
    lhs = equation.split("->")[0].split(",")
    letters = sorted(set(equation) - set(",->."))

    @st.composite
    def strategy(draw):
        size = {c: draw(st.integers(1, 3)) for c in letters}
        ell = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
        return tuple(_einsum_shape(term, size, ell) for term in lhs)
    return strategy()


def _einsum_shape(term, size, ell):
    head, dots, tail = term.partition("...")
    return tuple(size[c] for c in head) + (ell if dots else ()) + tuple(size[c] for c in tail)


def _einsum_spec(equation):
    name = "einsum_" + equation.replace("...", "E").replace(",", "_").replace("->", "_to_")
    return OpSpec(name, lambda *xs: tg.einsum(equation, *xs), lambda *xs: np.einsum(equation, *xs),
                  lambda *xs: _torch().einsum(equation, *xs), arity="n", shapes=einsum_shapes(equation),
                  domain=Domain(-1.0, 1.0))


def cosine_kwargs(shapes):
    nd = max(len(shapes[0]), len(shapes[1]))
    return st.fixed_dictionaries({"dim": st.integers(-nd, nd - 1)})


def _np_cosine_similarity(x1, x2, dim=1, eps=1e-8):
    x1, x2 = np.broadcast_arrays(x1, x2)
    n1 = np.maximum(np.sqrt((x1 * x1).sum(axis=dim, keepdims=True)), eps)
    n2 = np.maximum(np.sqrt((x2 * x2).sum(axis=dim, keepdims=True)), eps)
    return ((x1 / n1) * (x2 / n2)).sum(axis=dim)


def _np_normalize(x, p=2.0, dim=1):
    return x / np.maximum(_np_norm(x, p, dim, keepdim=True), 1e-12)


def _np_kl_div(x, t, reduction="mean", log_target=False):
    loss = np.exp(t) * (t - x) if log_target else t * (np.log(t) - x)
    if reduction == "none":
        return loss
    if reduction == "batchmean":
        return loss.sum() / (x.shape[0] if x.ndim else 1)
    return loss.sum() if reduction == "sum" else loss.mean()


def _np_reduce_loss(loss, reduction):
    return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()


def _np_huber(x, t, reduction="mean", delta=1.0):
    d = np.abs(x - t)
    return _np_reduce_loss(np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)), reduction)


def _np_smooth_l1(x, t, reduction="mean", beta=1.0):
    d = np.abs(x - t)
    return _np_reduce_loss(d if beta == 0 else np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), reduction)


def _F_losses():
    import tinygen.nn.functional as F
    return F


REDUCTIONS = ["none", "mean", "sum"]
SAME_SHAPES = NONEMPTY.map(lambda s: (s, s))

SHAPE_LINALG_SPECS = [
    # shape ops
    OpSpec("flip", tg.flip, _np_flip, lambda x, dims: _torch().flip(x, dims), kwargs=flip_kwargs),
    OpSpec("flip_method_varargs", lambda x, dims: x.flip(*dims), _np_flip, lambda x, dims: x.flip(dims),
           shapes=ND1.map(lambda s: (s,)), kwargs=flip_kwargs),
    OpSpec("roll", tg.roll, lambda x, shifts, dims=None: np.roll(x, shifts, axis=dims),
           lambda x, **kw: _torch().roll(x, **kw), kwargs=roll_kwargs),
    OpSpec("tril", tg.tril, lambda x, diagonal: np.tril(x, diagonal), lambda x, diagonal: x.tril(diagonal),
           shapes=MATRICES, kwargs=diagonal_kwargs),
    OpSpec("triu", tg.triu, lambda x, diagonal: np.triu(x, diagonal), lambda x, diagonal: x.triu(diagonal),
           shapes=MATRICES, kwargs=diagonal_kwargs),
    OpSpec("repeat", lambda x, sizes: x.repeat(*sizes), lambda x, sizes: np.tile(x, sizes),
           lambda x, sizes: x.repeat(sizes), kwargs=repeat_kwargs),
    OpSpec("tile", tg.tile, lambda x, dims: np.tile(x, dims), lambda x, dims: _torch().tile(x, dims),
           kwargs=tile_kwargs),
    OpSpec("unbind", tg.unbind, _np_unbind, lambda x, dim: _torch().unbind(x, dim), shapes=ND1.map(lambda s: (s,)),
           kwargs=lambda shapes: st.fixed_dictionaries({"dim": st.integers(-len(shapes[0]), len(shapes[0]) - 1)})),
    OpSpec("narrow", tg.narrow, _np_narrow, lambda x, **kw: x.narrow(**kw), shapes=ND1.map(lambda s: (s,)),
           kwargs=narrow_kwargs),
    OpSpec("movedim", tg.movedim, _np_movedim, lambda x, **kw: _torch().movedim(x, **kw), kwargs=movedim_kwargs),
    OpSpec("swapaxes", tg.swapaxes, lambda x, axis0, axis1: np.swapaxes(x, axis0, axis1),
           lambda x, axis0, axis1: _torch().swapaxes(x, axis0, axis1), shapes=ND1.map(lambda s: (s,)),
           kwargs=lambda shapes: transpose_kwargs(shapes).map(lambda kw: {"axis0": kw["dim0"],
                                                                          "axis1": kw["dim1"]})),
    OpSpec("swapdims", lambda x, dim0, dim1: x.swapdims(dim0, dim1), _np_transpose,
           lambda x, dim0, dim1: x.swapdims(dim0, dim1), shapes=ND1.map(lambda s: (s,)), kwargs=transpose_kwargs),
    OpSpec("t", tg.t, lambda x: x.T.copy(), lambda x: x.t(),
           shapes=array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4).map(lambda s: (s,))),
    OpSpec("expand_as", lambda x, other: x.expand_as(other), lambda x, other: np.broadcast_to(x, other.shape).copy(),
           lambda x, other: x.expand_as(other), arity=2, shapes=expand_as_shapes(), domain=(D2, BOOL)),
    OpSpec("broadcast_to", tg.broadcast_to, _np_expand, lambda x, shape: _torch().broadcast_to(x, shape),
           shapes=SMALL_SIDES.map(lambda s: (s,)), kwargs=expand_kwargs),
    # reductions and scans
    OpSpec("cumsum", tg.cumsum, _np_cumsum, lambda x, dim: _torch().cumsum(x, dim),
           kwargs=lambda shapes: st.fixed_dictionaries({"dim": one_dim(len(shapes[0]))})),
    OpSpec("prod", tg.prod, _np_prod, _t_prod, shapes=weighted((6, SMALL), (1, st.just(()))).map(lambda s: (s,)),
           domain=Domain(-1.5, 1.5, kinks=(0.0,), margin=0.3), kwargs=prod_kwargs),
    # exact zeros, one or several per reduced slice: the gradient is the product of the others
    OpSpec("prod_with_zeros", tg.prod, _np_prod, _t_prod, shapes=SMALL.map(lambda s: (s,)), domain=INTEGERS,
           kwargs=prod_kwargs),
    OpSpec("norm", tg.norm, _np_norm, _t_norm, shapes=NONEMPTY.map(lambda s: (s,)), domain=MAGNITUDES,
           kwargs=norm_kwargs),
    OpSpec("norm_method_default", lambda x: x.norm(), lambda x: np.sqrt((x * x).sum()), lambda x: x.norm(),
           domain=MAGNITUDES),
    OpSpec("std_mean", tg.std_mean, _np_std_mean, lambda x, **kw: _torch().std_mean(x, **kw), shapes=var_shapes(),
           kwargs=var_kwargs, domain=DISTINCT),
    OpSpec("nansum", _tg_nansum, _np_nansum, _t_nansum, arity=2, shapes=SAME_SHAPES, domain=(D2, BOOL),
           kwargs=reduce_kwargs()),
    # indexing
    OpSpec("masked_fill", tg.masked_fill, lambda x, mask, value: np.where(mask, value, x),
           lambda x, mask, value: _torch().masked_fill(x, mask, value), arity=2, shapes=masked_fill_shapes(False),
           domain=(D2, BOOL), kwargs=fixed(value=[0.0, -1.5, 3])),
    OpSpec("masked_fill_tensor_value", _tg_masked_fill_value, lambda x, mask, value: np.where(mask, value, x),
           lambda x, mask, value: _torch().masked_fill(x, mask, value), arity=3, shapes=masked_fill_shapes(True),
           domain=(D2, BOOL, D2)),
    OpSpec("index_select", _tg_indexed(tg.index_select), _np_index_select, _t_indexed("index_select"),
           shapes=_index_shapes(1), kwargs=index_select_kwargs),
    OpSpec("gather", _tg_indexed(tg.gather), _np_gather, _t_indexed("gather"), shapes=_index_shapes(1),
           kwargs=gather_kwargs),
    OpSpec("take_along_dim", lambda x, index, dim: tg.take_along_dim(x, tg_index(index, x.device), dim),
           _np_take_along_dim, lambda x, index, dim: _torch().take_along_dim(x, torch_index(index), dim),
           shapes=_index_shapes(1), kwargs=take_along_dim_kwargs),
    # products
    OpSpec("mm", tg.mm, np.matmul, lambda a, b: _torch().mm(a, b), arity=2, shapes=_pair_shapes("mm"),
           domain=Domain(-1.0, 1.0)),
    OpSpec("mm_method", lambda a, b: a.mm(b), np.matmul, lambda a, b: a.mm(b), arity=2, shapes=_pair_shapes("mm"),
           domain=Domain(-1.0, 1.0)),
    OpSpec("bmm", tg.bmm, np.matmul, lambda a, b: _torch().bmm(a, b), arity=2, shapes=_pair_shapes("bmm"),
           domain=Domain(-1.0, 1.0)),
    OpSpec("mv", tg.mv, np.matmul, lambda a, b: _torch().mv(a, b), arity=2, shapes=_pair_shapes("mv"),
           domain=Domain(-1.0, 1.0)),
    OpSpec("dot", tg.dot, np.dot, lambda a, b: _torch().dot(a, b), arity=2, shapes=_pair_shapes("dot"),
           domain=Domain(-1.0, 1.0)),
    OpSpec("outer", tg.outer, np.outer, lambda a, b: _torch().outer(a, b), arity=2, shapes=_pair_shapes("outer")),
    *[_einsum_spec(eq) for eq in EINSUM_EQUATIONS],
    # nn.functional
    OpSpec("softmin", lambda x, dim: _F_losses().softmin(x, dim), lambda x, dim: _np_softmax(-x, dim),
           lambda x, dim: _F().softmin(x, dim), shapes=NONEMPTY.map(lambda s: (s,)), domain=Domain(-4.0, 4.0),
           kwargs=lambda s: st.fixed_dictionaries({"dim": one_dim(len(s[0]))})),
    OpSpec("normalize", lambda x, p, dim: _F_losses().normalize(x, p, dim), _np_normalize,
           lambda x, p, dim: _F().normalize(x, p, dim), shapes=ND1.map(lambda s: (s,)), domain=MAGNITUDES,
           kwargs=lambda s: st.fixed_dictionaries({"p": st.sampled_from([2.0, 1.0, 3.0]),
                                                   "dim": st.integers(-len(s[0]), len(s[0]) - 1)})),
    OpSpec("cosine_similarity", lambda a, b, dim: _F_losses().cosine_similarity(a, b, dim), _np_cosine_similarity,
           lambda a, b, dim: _F().cosine_similarity(a, b, dim), arity=2,
           shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3, min_side=1, max_side=3).map(
               lambda r: tuple(r.input_shapes)), domain=AWAY_FROM_0, kwargs=cosine_kwargs),
    OpSpec("kl_div", lambda x, t, **kw: _F_losses().kl_div(x, t, **kw), _np_kl_div,
           lambda x, t, **kw: _F().kl_div(x, t, **kw), arity=2, shapes=SAME_SHAPES, domain=(D2, POSITIVE),
           kwargs=fixed(reduction=["none", "mean", "sum", "batchmean"], log_target=[False])),
    OpSpec("kl_div_log_target", lambda x, t, **kw: _F_losses().kl_div(x, t, **kw), _np_kl_div,
           lambda x, t, **kw: _F().kl_div(x, t, **kw), arity=2, shapes=SAME_SHAPES, domain=D2,
           kwargs=fixed(reduction=["none", "mean", "sum", "batchmean"], log_target=[True])),
    # PAIR: input - target stays >= 0.3 away from the integers and 0 (every beta / delta below is a kink-free point)
    OpSpec("smooth_l1_loss", lambda x, t, **kw: _F_losses().smooth_l1_loss(x, t, **kw), _np_smooth_l1,
           lambda x, t, **kw: _F().smooth_l1_loss(x, t, **kw), arity=2, shapes=SAME_SHAPES, domain=PAIR,
           kwargs=fixed(reduction=REDUCTIONS, beta=[1.0, 2.0, 0.0])),
    OpSpec("huber_loss", lambda x, t, **kw: _F_losses().huber_loss(x, t, **kw), _np_huber,
           lambda x, t, **kw: _F().huber_loss(x, t, **kw), arity=2, shapes=SAME_SHAPES, domain=PAIR,
           kwargs=fixed(reduction=REDUCTIONS, delta=[1.0, 2.0, 3.0])),
]
SPECS += SHAPE_LINALG_SPECS


# ---- convolutions and pooling (references and strategies in conv_reference.py) ---------------------------------------
import conv_reference as _cr  # noqa: E402
from tinygen.ops import conv as _tg_conv  # noqa: E402

CONV_SPECS = [
    OpSpec("conv2d", _tg_conv.conv2d, _cr.np_conv2d, lambda x, w, b, **kw: _F().conv2d(x, w, b, **kw), arity=3,
           shapes=_cr.conv_shapes(), kwargs=_cr.conv_kwargs, float32_tol=1e-4),
    OpSpec("conv2d_nobias", _tg_conv.conv2d, _cr.np_conv2d, lambda x, w, **kw: _F().conv2d(x, w, **kw), arity=2,
           shapes=_cr.conv_shapes(bias=False), kwargs=_cr.conv_kwargs, float32_tol=1e-4),
    OpSpec("conv_transpose2d", _tg_conv.conv_transpose2d, _cr.np_conv_transpose2d,
           lambda x, w, b, **kw: _F().conv_transpose2d(x, w, b, **kw), arity=3,
           shapes=_cr.conv_shapes(transposed=True), kwargs=_cr.conv_transpose_kwargs, float32_tol=1e-4),
    OpSpec("conv_transpose2d_nobias", _tg_conv.conv_transpose2d, _cr.np_conv_transpose2d,
           lambda x, w, **kw: _F().conv_transpose2d(x, w, **kw), arity=2,
           shapes=_cr.conv_shapes(transposed=True, bias=False), kwargs=_cr.conv_transpose_kwargs, float32_tol=1e-4),
    OpSpec("max_pool2d", _tg_conv.max_pool2d, _cr.np_max_pool2d, lambda x, **kw: _F().max_pool2d(x, **kw),
           shapes=_cr.image_shapes(), kwargs=_cr.max_pool_kwargs, domain=DISTINCT),
    OpSpec("avg_pool2d", _tg_conv.avg_pool2d, _cr.np_avg_pool2d, lambda x, **kw: _F().avg_pool2d(x, **kw),
           shapes=_cr.image_shapes(), kwargs=_cr.avg_pool_kwargs),
    OpSpec("adaptive_avg_pool2d", _tg_conv.adaptive_avg_pool2d, _cr.np_adaptive_avg_pool2d,
           lambda x, **kw: _F().adaptive_avg_pool2d(x, **kw), shapes=_cr.image_shapes(7), kwargs=_cr.adaptive_kwargs),
    OpSpec("interpolate_nearest", _tg_conv.interpolate, _cr.np_interpolate,
           lambda x, **kw: _F().interpolate(x, mode="nearest", **kw), shapes=_cr.image_shapes(4),
           kwargs=_cr.upsample_kwargs),
]
SPECS += CONV_SPECS


# ---- more elementwise math and activations (tinygen/ops/math.py) -----------------------------------------------------
_np_erf = np.vectorize(math.erf, otypes=[np.float64])


def _np_xlogy(x, y):
    return np.where(x == 0, 0.0, x * np.log(np.where(x == 0, 1.0, y)))


def _np_gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _np_erf(x / math.sqrt(2)))


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)
LATTICE3 = (Domain(kind="lattice", offset=0.0), Domain(kind="lattice", offset=0.5),
            Domain(kind="lattice", offset=0.25, margin=0.05))


def _t_clamp_tensor(x, lo, hi):
    # PyTorch 2.x's clamp backward fails ("output with shape [1] doesn't match the broadcast shape [1, 1]") when
    # the bounds broadcast x beyond their own shapes; bounds of one shape avoid that and give the same gradients
    lo, hi = _torch().broadcast_tensors(lo, hi)
    return x.clamp(lo, hi)


def _t_hardsigmoid(x):
    # relu6(x + 3) / 6 is hardsigmoid by definition; F.hardsigmoid's own backward multiplies by a float32 1/6,
    # 3e-8 off in float64
    return _F().relu6(x + 3) / 6


MATH_SPECS = [
    OpSpec("square", tg.square, np.square, lambda x: x.square()),
    OpSpec("rsqrt", tg.rsqrt, lambda x: 1 / np.sqrt(x), lambda x: x.rsqrt(), domain=POSITIVE),
    OpSpec("reciprocal", tg.reciprocal, np.reciprocal, lambda x: x.reciprocal(), domain=DIVISOR),
    OpSpec("log1p", tg.log1p, np.log1p, lambda x: x.log1p(), domain=Domain(-0.7, 3.0)),
    OpSpec("expm1", tg.expm1, np.expm1, lambda x: x.expm1()),
    OpSpec("log2", tg.log2, np.log2, lambda x: x.log2(), domain=POSITIVE),
    OpSpec("exp2", tg.exp2, np.exp2, lambda x: x.exp2()),
    OpSpec("erf", tg.erf, _np_erf, lambda x: x.erf(), domain=Domain(-3.0, 3.0)),
    OpSpec("sign", tg.sign, np.sign, lambda x: x.sign(), domain=AWAY_FROM_0),
    OpSpec("sinh", tg.sinh, np.sinh, lambda x: x.sinh(), domain=Domain(-3.0, 3.0)),
    OpSpec("cosh", tg.cosh, np.cosh, lambda x: x.cosh(), domain=Domain(-3.0, 3.0)),
    OpSpec("atan", tg.atan, np.arctan, lambda x: x.atan(), domain=Domain(-3.0, 3.0)),
    # y away from 0: atan2 jumps by 2 pi across the negative x axis
    OpSpec("atan2", tg.atan2, np.arctan2, lambda y, x: y.atan2(x), arity=2, domain=(AWAY_FROM_0, D2)),
    OpSpec("hypot", tg.hypot, np.hypot, lambda a, b: a.hypot(b), arity=2, domain=(AWAY_FROM_0, D2)),
    OpSpec("logaddexp", tg.logaddexp, np.logaddexp, lambda a, b: a.logaddexp(b), arity=2,
           domain=Domain(-4.0, 4.0)),
    OpSpec("xlogy", tg.xlogy, _np_xlogy, lambda x, y: x.xlogy(y), arity=2, domain=(D2, POSITIVE)),
    OpSpec("xlogy_scalar", lambda y, c: tg.xlogy(c, y), lambda y, c: _np_xlogy(np.float64(c), y),
           lambda y, c: _torch().xlogy(c, y), domain=POSITIVE, kwargs=fixed(c=[2.5, -1.0])),
    OpSpec("gelu", tg.nn.functional.gelu, _np_gelu, lambda x, approximate: _F().gelu(x, approximate=approximate),
           domain=Domain(-4.0, 4.0), kwargs=fixed(approximate=["none", "tanh"])),
    OpSpec("silu", tg.nn.functional.silu, lambda x: x * _np_sigmoid(x), lambda x: _F().silu(x),
           domain=Domain(-6.0, 6.0)),
    OpSpec("mish", tg.nn.functional.mish, lambda x: x * np.tanh(np.log1p(np.exp(x))), lambda x: _F().mish(x),
           domain=Domain(-5.0, 5.0)),
    OpSpec("logsigmoid", tg.nn.functional.logsigmoid, lambda x: -np.log1p(np.exp(-x)),
           lambda x: _F().logsigmoid(x), domain=Domain(-6.0, 6.0)),
    # the second derivative of softsign jumps at 0
    OpSpec("softsign", tg.nn.functional.softsign, lambda x: x / (1 + np.abs(x)), lambda x: _F().softsign(x),
           domain=AWAY_FROM_0),
    OpSpec("selu", tg.nn.functional.selu, lambda x: SELU[1] * np.where(x > 0, x, SELU[0] * np.expm1(x)),
           lambda x: _F().selu(x), domain=AWAY_FROM_0),
    OpSpec("celu", tg.nn.functional.celu, lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x / alpha)),
           lambda x, alpha: _F().celu(x, alpha), domain=AWAY_FROM_0, kwargs=fixed(alpha=[1.0, 0.5, 2.0])),
    OpSpec("hardtanh", tg.nn.functional.hardtanh, lambda x, min_val, max_val: np.clip(x, min_val, max_val),
           lambda x, min_val, max_val: _F().hardtanh(x, min_val, max_val), domain=CLAMP,
           kwargs=fixed(min_val=[-0.5], max_val=[0.7])),
    OpSpec("relu6", tg.nn.functional.relu6, lambda x: np.clip(x, 0, 6), lambda x: _F().relu6(x),
           domain=Domain(-2.0, 8.0, kinks=(0.0, 6.0), margin=0.2)),
    OpSpec("hardsigmoid", tg.nn.functional.hardsigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1),
           _t_hardsigmoid, domain=Domain(-5.0, 5.0, kinks=(-3.0, 3.0), margin=0.2)),
    # tensor bounds, lo > hi included (the result is hi there); one-sided tensor bounds are clamp_min / clamp_max
    OpSpec("clamp_tensor", tg.clamp, lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
           _t_clamp_tensor, arity=3, domain=LATTICE3),
    OpSpec("clamp_min", tg.clamp_min, np.maximum, lambda x, m: x.clamp_min(m), arity=2, domain=PAIR),
    OpSpec("clamp_max", lambda x, m: x.clamp_max(m), np.minimum, lambda x, m: _torch().clamp_max(x, m), arity=2,
           domain=PAIR),
    OpSpec("clamp_min_scalar", lambda x: tg.clamp_min(x, 0.25), lambda x: np.maximum(x, 0.25),
           lambda x: x.clamp_min(0.25), domain=Domain(kinks=(0.25,))),
    OpSpec("pow_number_base", lambda x, c: tg.pow(c, x), lambda x, c: np.power(c, x),
           lambda x, c: _torch().pow(c, x), kwargs=fixed(c=[2.0, 0.5, 3])),
    OpSpec("rsub", tg.rsub, lambda a, b, alpha: b - alpha * a, lambda a, b, alpha: _torch().rsub(a, b, alpha=alpha),
           arity=2, kwargs=fixed(alpha=[1, 2.5])),
]

SPECS += MATH_SPECS

BY_NAME = {s.name: s for s in SPECS}
assert len(BY_NAME) == len(SPECS), "op spec names must be unique"
