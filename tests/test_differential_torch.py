"""Differential test against PyTorch: random op graphs, the same graph run in tinygen and in PyTorch.

A graph is a short program (``Graph.program``): leaves (inputs that require grad), constants (targets, indices,
conditions), ops applied to earlier nodes, and ``squash`` nodes, a smooth map c + r * tanh((v - c) / w) that
brings a node's values into the next op's domain. Ops come from the OpSpec table (tests/op_specs.py: every op
with its tinygen and PyTorch callables, arity and domains) and from ``FUNCTIONAL`` below (nn.functional layers
and losses). The generator builds the graph in float64 tinygen and keeps an op only if its inputs are inside the
op's domain and at least half the domain's margin away from its kinks (ties for max/min, the threshold of
softplus, zero for relu/abs, ...), so a mismatch is never a subgradient convention.

For each graph, in float64 (relative ~1e-9) and float32 (looser; or no worse than PyTorch's own float32 error
against its float64 result), compare with PyTorch:
  - every node's value;
  - first-order gradients of the last node (random upstream gradient) with a plain backward (where the fused
    kernels run) and with create_graph=True;
  - second-order gradients: the gradient of sum(w_i * grad_i) with respect to the leaves and the upstream gradient.

A second test draws small convolutional networks (``NETWORK_ENTRIES``): convolutions, transposed convolutions and
pooling, chained with batch norm, activations, broadcasting and reshapes, so that channels-last images flow from op
to op; tests/test_compile_graphs.py replays the same graphs under ``tinygen.compile``.

A failure is shrunk to the shortest prefix of the program that still fails and printed as a runnable snippet.
The CI run is bounded (TINYGEN_DIFF_GRAPHS, default 300 graphs); a soak (with counts of the graphs run):
    TINYGEN_DIFF_GRAPHS=20000 python -m pytest -q -p no:cacheprovider tests/test_differential_torch.py \
        -k random_graphs --hypothesis-show-statistics
or ``PYTHONPATH=. python tests/test_differential_torch.py 20000``, which goes on past failures and reports them
grouped.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings, strategies as st

import tinygen as tg
import tinygen.nn.functional as TF
from conftest import requires_torch
from op_specs import SPECS, Domain, as_tuple

pytestmark = requires_torch

GRAPHS = int(os.environ.get("TINYGEN_DIFF_GRAPHS", "300"))

# Wrong gradients known and not yet fixed: while a name is listed, the generator keeps out of that case and
# test_bug_reproducers expects its reproducer to fail (strict xfail). Every reproducer below once found a real bug
# (layer_norm on an unbatched input, pow at 0 with exponent 0/1, linear_act softplus below threshold 20); all three
# are fixed, so they now run as regression cases.
KNOWN_BUGS = {}


def known_bug(name):
    assert name in KNOWN_BUG_REPRODUCERS, name
    return name in KNOWN_BUGS


BASE_SHAPES = [(), (1,), (4,), (3,), (2, 3), (1, 3), (3, 1), (2, 1, 3), (2, 2, 2), (1, 1)]
EXCLUDED_SPECS = {"to_float32"}  # changes the dtype mid-graph: covered by the op table alone
MAX_ABS = 1e4  # larger values are rejected: float32 would compare round-off, not ops
F64_RTOL, F32_RTOL = 1e-9, 1e-3


# ---- the two frameworks ----------------------------------------------------------------------------------------------
def _torch():
    import torch
    return torch


class TinygenLib:
    name = "tinygen"

    @staticmethod
    def leaf(a, dtype):
        return tg.tensor(a.astype(dtype), requires_grad=True)

    @staticmethod
    def const(a, dtype):
        return tg.tensor(a.astype(dtype) if a.dtype.kind == "f" else a)

    @staticmethod
    def grad(outs, inputs, grad_outputs=None, create_graph=False):
        return tg.grad(outs, inputs, grad_outputs, create_graph=create_graph, allow_unused=True)

    @staticmethod
    def host(t):
        return None if t is None else np.array(t.detach().numpy())


class TorchLib:
    name = "torch"

    @staticmethod
    def leaf(a, dtype):
        return _torch().tensor(a.astype(dtype), requires_grad=True)

    @staticmethod
    def const(a, dtype):
        return _torch().from_numpy(np.array(a.astype(dtype) if a.dtype.kind == "f" else a))

    @staticmethod
    def grad(outs, inputs, grad_outputs=None, create_graph=False):
        return _torch().autograd.grad(outs, inputs, grad_outputs, create_graph=create_graph, allow_unused=True)

    @staticmethod
    def host(t):
        return None if t is None else t.detach().numpy(force=True).copy()  # force: PyTorch's ZeroTensor


# ---- functional ops and losses (beyond the op table) -----------------------------------------------------------------
def _F():
    import torch.nn.functional as F
    return F


def _t_activated(z, activation, p1, p2):
    return {"relu": lambda: _F().relu(z), "leaky_relu": lambda: _F().leaky_relu(z, p1), "tanh": lambda: z.tanh(),
            "sigmoid": lambda: z.sigmoid(), "elu": lambda: _F().elu(z, p1),
            "softplus": lambda: _F().softplus(z, p1, p2)}[activation]()


def _t_linear_act(x, w, b, activation, p1, p2):
    return _t_activated(_F().linear(x, w, b), activation, p1, p2)


def _t_conv2d_act(x, w, b, activation, p1, p2, **kwargs):
    return _t_activated(_F().conv2d(x, w, b, **kwargs), activation, p1, p2)


def _t_conv_transpose2d_act(x, w, b, activation, p1, p2, **kwargs):
    return _t_activated(_F().conv_transpose2d(x, w, b, **kwargs), activation, p1, p2)


FUNCTIONAL_CALLS = {
    "F.linear": (TF.linear, lambda *a: _F().linear(*a)),
    "F.linear_act": (TF.linear_act, _t_linear_act),
    "F.conv2d_act": (TF.conv2d_act, _t_conv2d_act),
    "F.conv_transpose2d_act": (TF.conv_transpose2d_act, _t_conv_transpose2d_act),
    # the nodes positionally, the rest by keyword (the two libraries order some optional arguments differently)
    "F.layer_norm": (lambda x, w, b, normalized_shape: TF.layer_norm(x, normalized_shape, w, b),
                     lambda x, w, b, normalized_shape: _F().layer_norm(x, normalized_shape, w, b)),
    # PyTorch's reference on a contiguous copy: torch 2.13's batch_norm in eval mode gives a wrong input gradient
    # for some non-contiguous 4-D inputs (x.permute(0, 3, 2, 1) of a (1, 1, 4, 6) x: finite differences disagree
    # with its autograd, and agree with tinygen's), and such inputs have crashed the process in PyTorch's backward
    "F.batch_norm": (TF.batch_norm, lambda x, *a, **k: _F().batch_norm(x.contiguous(), *a, **k)),
    "F.mse_loss": (TF.mse_loss, lambda *a, **k: _F().mse_loss(*a, **k)),
    "F.l1_loss": (TF.l1_loss, lambda *a, **k: _F().l1_loss(*a, **k)),
    "F.binary_cross_entropy": (TF.binary_cross_entropy, lambda *a, **k: _F().binary_cross_entropy(*a, **k)),
    "F.binary_cross_entropy_with_logits": (
        lambda x, t, w, pos, reduction: TF.binary_cross_entropy_with_logits(x, t, w, reduction=reduction,
                                                                           pos_weight=pos),
        lambda x, t, w, pos, reduction: _F().binary_cross_entropy_with_logits(x, t, w, reduction=reduction,
                                                                             pos_weight=pos)),
    "F.cross_entropy": (TF.cross_entropy, lambda *a, **k: _F().cross_entropy(*a, **k)),
    "F.nll_loss": (TF.nll_loss, lambda *a, **k: _F().nll_loss(*a, **k)),
    "F.gaussian_nll_loss": (TF.gaussian_nll_loss, lambda *a, **k: _F().gaussian_nll_loss(*a, **k)),
    "F.embedding": (TF.embedding, lambda *a, **k: _F().embedding(*a, **k)),
    "F.pad": (TF.pad, lambda *a, **k: _F().pad(*a, **k)),
    "pow_small_int": (lambda x, p: x ** p, lambda x, p: x ** p),
    # PyTorch's reference as exp(b log a) (the graphs give pow a base in (0.5, 2.5)): torch 2.13's a ** b masks its
    # base gradient to 0 where b == 0, so that gradient's derivative in b is 0 there instead of a**(b-1) (finite
    # differences agree with tinygen's: test_pow_second_derivative_in_a_zero_exponent_is_the_finite_difference_one)
    "pow": (lambda a, b: a ** b, lambda a, b: (b * a.log()).exp()),
    # selections that depend on values: a mask from a comparison, an index from max / argmax (a compiled step
    # must compute them again on every replay, test_compile_graphs.py)
    "where_gt": (lambda x, y: tg.where(x > y, x, y), lambda x, y: _torch().where(x > y, x, y)),
    "select_max_dim": (lambda x, dim, largest: (x.max(dim) if largest else x.min(dim)).values,
                lambda x, dim, largest: (x.max(dim) if largest else x.min(dim)).values),
    "gather_argmax": (lambda x, y, dim: x.gather(dim, y.argmax(dim, keepdim=True)),
                      lambda x, y, dim: x.gather(dim, y.argmax(dim, keepdim=True))),
}
SPEC_CALLS = {s.name: (s.fn, s.torch_fn) for s in SPECS if s.name not in EXCLUDED_SPECS}
SPECS_BY_NAME = {s.name: s for s in SPECS}
CALLS = {**SPEC_CALLS, **FUNCTIONAL_CALLS}


# ---- graphs and their evaluation -------------------------------------------------------------------------------------
@dataclass
class Graph:
    """``program``: ("leaf", array) | ("const", array) | ("squash", node, c, r, width) (c + r tanh((v - c) / width))
    | ("op", name, [nodes], kwargs, k) (output k of the op). The output is the last node; ``upstream`` its gradient; ``weights`` one per leaf."""
    program: list
    upstream: np.ndarray = None
    weights: list = None

    def leaves(self):
        return [i for i, ins in enumerate(self.program) if ins[0] == "leaf"]


def evaluate(program, lib, dtype):
    """Every node's tensor, and the leaves."""
    nodes, leaves = [], []
    for ins in program:
        kind = ins[0]
        if kind == "leaf":
            t = lib.leaf(ins[1], dtype)
            leaves.append(t)
        elif kind == "const":
            t = lib.const(ins[1], dtype)
        elif kind == "squash":
            _, src, c, r, width = ins
            t = ((nodes[src] - c) * (1.0 / width)).tanh() * r + c
        else:
            _, name, args, kwargs, k = ins
            fn = CALLS[name][0 if lib.name == "tinygen" else 1]
            t = as_tuple(fn(*[None if a is None else nodes[a] for a in args], **kwargs))[k]
        nodes.append(t)
    return nodes, leaves


def run_graph(graph, lib, dtype):
    """Values of all nodes, plain-backward gradients, create_graph gradients, second-order gradients."""
    nodes, leaves = evaluate(graph.program, lib, dtype)
    values = [lib.host(n) for n in nodes]
    u = lib.const(graph.upstream, dtype)
    plain = [lib.host(g) for g in lib.grad([nodes[-1]], leaves, [u])]

    nodes, leaves = evaluate(graph.program, lib, dtype)
    u = lib.leaf(graph.upstream, dtype)
    grads = lib.grad([nodes[-1]], leaves, [u], create_graph=True)
    first = [lib.host(g) for g in grads]
    terms = [(g * lib.const(w, dtype)).sum() for g, w in zip(grads, graph.weights) if g is not None]
    second = [None] * (len(leaves) + 1)
    if terms and any(t.requires_grad for t in terms):
        s = terms[0]
        for t in terms[1:]:
            s = s + t
        second = [lib.host(g) for g in lib.grad([s], leaves + [u])]
    return {"value": values, "gradient (plain backward)": plain, "gradient (create_graph)": first,
            "second-order gradient": second}


def _zeros_for_none(a, b):
    if a is None and b is None:
        return None, None
    return (np.zeros_like(b) if a is None else a), (np.zeros_like(a) if b is None else b)


def mismatch64(ours, theirs, scale):
    """'' if the float64 arrays agree to ~1e-9 relative (elementwise, or of ``scale``, the magnitude of the
    quantities compared: gradients that cancel to ~0 are only as exact as the terms that cancel), else why not."""
    ours, theirs = _zeros_for_none(ours, theirs)
    if ours is None:
        return ""
    if ours.shape != theirs.shape or ours.dtype.kind != theirs.dtype.kind:
        return f"shape/dtype {ours.shape} {ours.dtype} vs PyTorch {theirs.shape} {theirs.dtype}"
    if ours.dtype.kind != "f":
        return "" if np.array_equal(ours, theirs) else "integer values differ"
    scale = max(scale, float(np.abs(theirs).max(initial=0.0)))
    # the absolute floor: a second derivative that is exactly 0 (cosine similarity over a size-1 axis is constant)
    # comes out as the round-off of terms of magnitude ~10-100, a few 1e-14, in both libraries (soak, 3,000 graphs)
    bad = ~np.isclose(ours, theirs, rtol=F64_RTOL, atol=F64_RTOL * scale + 1e-12, equal_nan=True)
    return _describe(bad, ours, theirs)


def mismatch32(ours, theirs, theirs64, scale):
    """'' if float32 agrees with PyTorch's float32 to ~1e-3 (of each element or of ``scale``), or is no more than
    4x PyTorch's own float32 error away from PyTorch's float64 result, element by element."""
    ours, theirs = _zeros_for_none(ours, theirs)
    if ours is None:
        return ""
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return f"shape/dtype {ours.shape} {ours.dtype} vs PyTorch {theirs.shape} {theirs.dtype}"
    if ours.dtype.kind != "f":
        return "" if np.array_equal(ours, theirs) else "integer values differ"
    scale = max(scale, float(np.abs(theirs).max(initial=0.0)))
    # the absolute floor: a gradient that is exactly 0 by cancellation (normalize over a size-1 axis is constant) is
    # float32 round-off of terms of magnitude ~1-10 here, up to ~1e-5 (soak, 6,000 graphs); float64 checks exactness
    close = np.isclose(ours, theirs, rtol=F32_RTOL, atol=F32_RTOL * scale + 2e-5, equal_nan=True)
    if theirs64 is not None and theirs64.shape == ours.shape:
        ref = theirs64.astype(np.float64)
        torch_err = np.abs(theirs.astype(np.float64) - ref)
        close |= np.abs(ours.astype(np.float64) - ref) <= 4 * torch_err + 1e-5 * scale
    return _describe(~close, ours, theirs)


def _scales(reference):
    """The magnitude of each kind of result (PyTorch float64): 0 for values (each array is its own scale); the
    largest gradient for gradients; the largest first- or second-order gradient for second-order gradients."""
    def top(arrays):
        return max((float(np.abs(a).max(initial=0.0)) for a in arrays if a is not None and a.dtype.kind == "f"),
                   default=0.0)
    first = top(reference["gradient (plain backward)"] + reference["gradient (create_graph)"])
    return {"value": 0.0, "gradient (plain backward)": first, "gradient (create_graph)": first,
            "second-order gradient": max(first, top(reference["second-order gradient"]))}


def _describe(bad, ours, theirs):
    if not bad.any():
        return ""
    i = np.unravel_index(np.argmax(bad), bad.shape) if bad.ndim else ()
    return f"at index {tuple(int(j) for j in i)}: tinygen {ours[i]!r}, PyTorch {theirs[i]!r} ({int(bad.sum())} of " \
           f"{bad.size} elements differ)"


def compare_graph(graph):
    """The first discrepancy as a message, or ''."""
    results = {}
    for dtype in (np.float64, np.float32):
        for lib in (TinygenLib, TorchLib):
            results[lib.name, dtype] = run_graph(graph, lib, dtype)
    scales = _scales(results["torch", np.float64])
    for what in results["tinygen", np.float64]:
        for k, (a, b) in enumerate(zip(results["tinygen", np.float64][what], results["torch", np.float64][what])):
            msg = mismatch64(a, b, scales[what])
            if msg:
                return f"float64 {what}, {_label(graph, what, k)}: {msg}"
        for k, (a, b, c) in enumerate(zip(results["tinygen", np.float32][what], results["torch", np.float32][what],
                                          results["torch", np.float64][what])):
            msg = mismatch32(a, b, c, scales[what])
            if msg:
                return f"float32 {what}, {_label(graph, what, k)}: {msg}"
    return ""


def _label(graph, what, k):
    if what == "value":
        return f"node n{k}"
    leaves = graph.leaves()
    return f"leaf n{leaves[k]}" if k < len(leaves) else "the upstream gradient"


# ---- shrinking and the reproducer ------------------------------------------------------------------------------------
def prefix(graph, k, rng):
    """The graph cut after node k (which becomes the output), with a fresh upstream gradient."""
    program = graph.program[:k + 1]
    shape = evaluate(program, TinygenLib, np.float64)[0][k].shape
    g = Graph(program, rng.standard_normal(shape))
    g.weights = [rng.standard_normal(np.shape(program[i][1])) for i in g.leaves()]
    return g


def shrink(graph):
    """The shortest prefix of the program (ending at a float node) that still fails, with its message."""
    rng = np.random.default_rng(0)
    msg = compare_graph(graph)
    for k in range(len(graph.program)):
        if graph.program[k][0] != "op":
            continue
        try:
            small = prefix(graph, k, rng)
        except Exception:  # noqa: BLE001 - an integer output cannot end a graph
            continue
        m = _safe_compare(small)
        if m:
            return small, m
    return graph, msg


def _safe_compare(graph):
    try:
        return compare_graph(graph)
    except Exception as e:  # noqa: BLE001 - a crash in one library is a discrepancy too
        return f"{type(e).__name__}: {e}"


def _array_src(a):
    a = np.asarray(a)
    return f"np.array({a.tolist()!r}, dtype={a.dtype.name!r})"


def describe(graph):
    """The graph as readable lines, one per node."""
    lines = []
    for i, ins in enumerate(graph.program):
        if ins[0] in ("leaf", "const"):
            lines.append(f"n{i} = {ins[0]} {np.shape(ins[1])}")
        elif ins[0] == "squash":
            lines.append(f"n{i} = {ins[2]} + {ins[3]} * tanh((n{ins[1]} - {ins[2]}) / {ins[4]})")
        else:
            _, name, args, kwargs, k = ins
            call = ", ".join([("None" if a is None else f"n{a}") for a in args] +
                             [f"{key}={v!r}" for key, v in kwargs.items()])
            lines.append(f"n{i} = {name}({call})" + (f"[{k}]" if k else ""))
    return "\n".join(lines)


def reproducer(graph, message):
    """A snippet that rebuilds the graph with its input arrays and reruns the comparison (from tests/)."""
    prog = []
    for ins in graph.program:
        if ins[0] in ("leaf", "const"):
            prog.append(f"    ({ins[0]!r}, {_array_src(ins[1])}),")
        else:
            prog.append(f"    {ins!r},")
    weights = ", ".join(_array_src(w) for w in graph.weights)
    return "\n".join([
        f"# tinygen differs from PyTorch: {message}",
        *("# " + line for line in describe(graph).splitlines()),
        "import numpy as np",
        "from numpy import array  # noqa: F401 - index arrays in kwargs",
        "from test_differential_torch import Graph, compare_graph",
        "graph = Graph([",
        *prog,
        f"], upstream={_array_src(graph.upstream)}, weights=[{weights}])",
        "print(compare_graph(graph) or 'no difference')",
    ])


# ---- the generator ---------------------------------------------------------------------------------------------------
class Reject(Exception):
    """This op does not fit here (shapes, domain, kinks): try another."""


class Builder:
    """Grows a program, evaluating each node in float64 tinygen to keep ops inside their domains."""

    def __init__(self, draw, rng):
        self.draw, self.rng = draw, rng
        self.program, self.values, self.live = [], [], []  # live: depends on a leaf
        self.n_ops = 0

    # -- tentative additions, rolled back when an op does not fit
    def mark(self):
        return len(self.program)

    def rollback(self, mark):
        del self.program[mark:]
        del self.values[mark:]
        del self.live[mark:]

    def add(self, ins, value, live):
        if value.dtype.kind == "f":
            d = value.data
            if not np.isfinite(d).all() or (d.size and np.abs(d).max() > MAX_ABS):
                raise Reject("non-finite or huge values")
        self.program.append(ins)
        self.values.append(value)
        self.live.append(live)
        return len(self.program) - 1

    def leaf(self, shape, domain=None):
        domain = domain or Domain()
        a = np.asarray(domain.sample(self.rng, shape), dtype=np.float64)
        return self.add(("leaf", a), tg.tensor(a), True)

    def const(self, a):
        a = np.asarray(a)
        return self.add(("const", a), tg.tensor(a), False)

    def op(self, name, args, kwargs=None, k=None):
        kwargs = kwargs or {}
        fn = CALLS[name][0]
        try:
            outs = as_tuple(fn(*[None if a is None else self.values[a] for a in args], **kwargs))
        except (ValueError, IndexError, TypeError, RuntimeError) as e:
            raise Reject(f"{name}: {e}") from None
        floats = [i for i, o in enumerate(outs) if o.dtype.kind == "f"]
        if not floats:
            raise Reject("no float output")
        k = floats[0] if k is None else k
        return self.add(("op", name, list(args), kwargs, k), outs[k], any(self.live[a] for a in args if a is not None))

    # -- picking operands
    def floats(self, pred=lambda shape: True):
        return [i for i, v in enumerate(self.values)
                if self.live[i] and v.dtype.kind == "f" and v.data.size and pred(tuple(v.shape))]

    def pick(self, pred=lambda shape: True):
        """A float node, most often the latest one (so graphs grow deep), else any earlier one."""
        ids = self.floats(pred)
        if not ids:
            raise Reject("no operand of a fitting shape")
        if ids[-1] == len(self.values) - 1 and self.draw(st.integers(0, 9)) < 6:
            return ids[-1]
        return ids[self.draw(st.integers(0, len(ids) - 1))]

    def shape(self, i):
        return tuple(self.values[i].shape)

    def partner_shape(self, shape):
        """A shape that broadcasts with ``shape``: the same, leading axes dropped, some axes 1, or one axis more."""
        choice = self.draw(st.sampled_from(["same", "drop", "ones", "lead"]))
        if choice == "drop" and shape:
            return shape[self.draw(st.integers(1, len(shape))):]
        if choice == "ones":
            return tuple(1 if self.draw(st.booleans()) else s for s in shape)
        if choice == "lead" and len(shape) < 3:
            return (self.draw(st.integers(1, 2)),) + shape
        return shape

    def operand_like(self, shape, domain, exact=False):
        """An existing node whose shape broadcasts with ``shape`` (or equals it), or a new leaf."""
        def fits(s):
            if exact:
                return s == shape
            try:
                return np.broadcast_shapes(s, shape) is not None and len(s) <= 3
            except ValueError:
                return False
        if self.draw(st.booleans()) and self.floats(fits):
            return self.into(self.pick(fits), domain)
        return self.leaf(shape if exact else self.partner_shape(shape), domain)

    # -- domains
    def into(self, i, domain):
        """Node i, squashed into the domain's [lo, hi] if it strays outside; rejects values near a kink."""
        if domain.kind == "float":
            d = self.values[i].data
            if d.size and (d.min() < domain.lo or d.max() > domain.hi):
                c, r = (domain.lo + domain.hi) / 2, (domain.hi - domain.lo) / 2 * 0.98
                # tanh's argument stays within 2: a saturated tanh would make the gradient round-off (1 - t^2
                # from t near 1), in PyTorch as here
                width = max(r, float(np.abs(d - c).max()) / 2)
                v = ((self.values[i] - c) * (1.0 / width)).tanh() * r + c
                i = self.add(("squash", i, c, r, width), v, self.live[i])
            check_kinks(self.values[i].data, domain)
        elif domain.kind == "distinct":
            check_distinct(self.values[i].data, domain.margin / 2)
        return i


def check_kinks(d, domain, margin=None):
    margin = domain.margin / 2 if margin is None else margin
    for k in domain.kinks:
        if d.size and np.abs(d - k).min() < margin:
            raise Reject(f"value within {margin} of the kink at {k}")


def check_distinct(d, gap):
    v = np.sort(d.ravel())
    if v.size > 1 and np.diff(v).min() < gap:
        raise Reject("near-tie")


def check_apart(a, b, gap=0.05):
    if np.abs(np.asarray(a) - np.asarray(b)).min(initial=np.inf) < gap:
        raise Reject("near-tie between operands")


# ---- op entries: how each op finds its operands ----------------------------------------------------------------------
def _nonempty(shape):
    return all(shape)


SHAPE_RULES = {  # specs with their own shape strategy whose rule is known; others get the generic treatment
    "mean": _nonempty, "max": _nonempty, "min": _nonempty, "max_dim": _nonempty, "min_dim": _nonempty,
    "amax": _nonempty, "amin": _nonempty, "logsumexp": _nonempty, "softmax": _nonempty, "log_softmax": _nonempty,
    "var": lambda s: len(s) >= 1 and min(s) >= 2, "std": lambda s: len(s) >= 1 and min(s) >= 2,
    "transpose": lambda s: len(s) >= 1, "split": lambda s: len(s) >= 1, "chunk": lambda s: len(s) >= 1,
    "mT": lambda s: len(s) >= 2, "expand": lambda s: True, "squeeze": lambda s: True,
    "getitem_basic": lambda s: len(s) >= 1, "getitem_int_array": lambda s: len(s) >= 1,
    "getitem_two_int_arrays": lambda s: len(s) >= 2, "getitem_bool_mask": lambda s: len(s) >= 1,
}


def add_spec(b, spec):
    draw = b.draw
    if spec.name == "matmul":
        return add_matmul(b, spec)
    if spec.shapes is not None and spec.name not in SHAPE_RULES:
        return add_generic(b, spec)
    doms = [spec.domain_of(i) for i in range(3 if spec.arity == "n" else spec.arity)]
    if spec.arity == 1:
        try:
            x = b.pick(SHAPE_RULES.get(spec.name, lambda s: True))
        except Reject:  # no node of a shape it takes: a new leaf of one
            return add_generic(b, spec)
        args = [b.into(x, doms[0])]
    elif spec.arity == "n":  # cat / stack: an existing node and new leaves that fit it
        shapes = draw(spec.shape_strategy())
        if any(0 in s for s in shapes):
            raise Reject("empty")
        ids = b.floats(lambda s: s == shapes[0])
        args = [b.into(ids[-1], doms[0]) if ids else b.leaf(shapes[0])] + [b.leaf(s) for s in shapes[1:]]
    else:
        first = b.pick()
        args, first_used = [], False
        for dom in doms:
            if dom.kind == "bool":  # a condition: a constant that broadcasts with the first operand
                args.append(b.const(b.rng.random(b.partner_shape(b.shape(first))) < 0.5))
            elif not first_used:
                args.append(b.into(first, dom))
                first_used = True
            else:  # broadcasting with all the operands so far
                so_far = np.broadcast_shapes(*(b.shape(a) for a in args))
                args.append(b.operand_like(so_far, dom, exact=not spec.broadcast))
        lattice = [a for a, d in zip(args, doms) if d.kind == "lattice"]
        for i in range(len(lattice)):
            for j in range(i):
                check_apart(*np.broadcast_arrays(b.values[lattice[i]].data, b.values[lattice[j]].data))
    kwargs = draw(spec.kwargs(tuple(b.shape(a) for a in args)))
    return b.op(spec.name, args, kwargs)


def add_generic(b, spec):
    """A spec whose shape rule is unknown here: shapes from its own strategy, existing nodes where they fit."""
    shapes = b.draw(spec.shape_strategy())
    if any(0 in s for s in shapes):
        raise Reject("empty")
    args = []
    for i, s in enumerate(shapes):
        dom = spec.domain_of(i)
        if dom.kind == "bool":
            args.append(b.const(b.rng.random(s) < 0.5))
            continue
        ids = b.floats(lambda t: t == tuple(s))
        args.append(b.into(ids[b.draw(st.integers(0, len(ids) - 1))], dom) if ids and b.draw(st.booleans())
                    else b.leaf(tuple(s), dom))
    return b.op(spec.name, args, b.draw(spec.kwargs(tuple(tuple(s) for s in shapes))))


def add_matmul(b, spec):
    x = b.into(b.pick(lambda s: 1 <= len(s) <= 3), spec.domain_of(0))
    s = b.shape(x)
    k, m = s[-1], b.draw(st.integers(1, 3))
    other = b.draw(st.sampled_from([(k,), (k, m)] + ([(2, k, m)] if len(s) <= 2 else [])))
    w = b.leaf(other, spec.domain_of(1))
    args = [x, w]
    if b.draw(st.booleans()) and len(s) >= 2:  # x on the right: w.T-like leaf on the left
        w = b.leaf((m, s[-2]) if len(s) >= 2 else (s[0],), spec.domain_of(0))
        args = [w, x]
    return b.op("matmul", args)


def add_linear(b):
    x = b.pick(lambda s: 1 <= len(s) <= 3)
    out = b.draw(st.integers(1, 3))
    w = b.leaf((out, b.shape(x)[-1]), Domain(-1.0, 1.0))
    bias = b.leaf((out,)) if b.draw(st.booleans()) else None
    return b.op("F.linear", [x, w, bias])


def add_linear_act(b):
    x = b.pick(lambda s: len(s) == 2)
    out = b.draw(st.integers(1, 3))
    w = b.leaf((out, b.shape(x)[1]), Domain(-1.0, 1.0))
    bias = b.leaf((out,)) if b.draw(st.booleans()) else None
    pre = TF.linear(b.values[x], b.values[w], None if bias is None else b.values[bias]).data
    return b.op("F.linear_act", [x, w, bias], fused_activation(b, pre))


def fused_activation(b, pre, margin=0.05):
    """An activation to fuse into a layer whose output before it is ``pre``: linear_act's and conv2d_act's
    arguments (rejected where ``pre`` lies within ``margin`` of a kink)."""
    act = b.draw(st.sampled_from(["relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus"]))
    p1, p2 = {"relu": (0.0, 0.0), "tanh": (0.0, 0.0), "sigmoid": (0.0, 0.0)}.get(act, (None, None))
    if act == "leaky_relu":
        p1, p2 = b.draw(st.sampled_from([0.01, 0.2])), 0.0
    elif act == "elu":
        p1, p2 = b.draw(st.sampled_from([1.0, 0.5])), 0.0
    elif act == "softplus":
        thresholds = [20.0] if known_bug("linear_act_softplus_low_threshold") else [20.0, 1.0, 0.5]
        p1, p2 = b.draw(st.sampled_from([1.0, 2.0])), b.draw(st.sampled_from(thresholds))
    if act in ("relu", "leaky_relu", "elu"):
        check_kinks(pre, Domain(kinks=(0.0,)), margin)
    elif act == "softplus":
        check_kinks(pre * p1, Domain(kinks=(p2,)), margin)
    return {"activation": act, "p1": p1, "p2": p2}


def add_layer_norm(b):
    x = b.pick(lambda s: len(s) >= 1 and math.prod(s) >= 3)
    s = b.shape(x)
    k = b.draw(st.integers(1, len(s)))
    norm = s[len(s) - k:]
    if math.prod(norm) < 3:
        # two values normalise to about +-1 whatever they are: the gradient is O(eps / var) left over from
        # cancelling terms, float32 round-off in any library (a 15000-graph soak met one such case)
        raise Reject("fewer than three values to normalise")
    d = b.values[x].data
    if d.reshape(d.shape[:len(s) - k] + (-1,)).var(axis=-1).min() < 0.05:
        raise Reject("near-constant rows")  # the normalisation would divide by ~sqrt(eps)
    affine = b.draw(st.sampled_from(["none", "weight", "both"]))
    if affine != "none" and k == len(s) and known_bug("layer_norm_all_dims_affine"):
        affine = "none"
    w = b.leaf(norm) if affine != "none" else None
    bias = b.leaf(norm) if affine == "both" else None
    return b.op("F.layer_norm", [x, w, bias], {"normalized_shape": norm})


def add_batch_norm(b):
    x = b.pick(lambda s: 2 <= len(s) <= 4 and math.prod(s) // s[1] >= 3)  # >= 3 values a channel: see layer_norm
    s = b.shape(x)
    c = s[1]
    training = b.draw(st.booleans())
    d = np.moveaxis(b.values[x].data, 1, 0).reshape(c, -1)
    if training and d.var(axis=1).min() < 0.05:
        raise Reject("near-constant channel")
    stats = [None, None]
    if not training:
        stats = [b.const(b.rng.uniform(-1, 1, c)), b.const(b.rng.uniform(0.5, 2, c))]
    affine = b.draw(st.sampled_from(["none", "weight", "both"]))
    # not bias without weight: PyTorch 2.x's batch_norm double backward fails there ("Expected a proper Tensor
    # but got None ... argument #1 'other'")
    w = b.leaf((c,)) if affine != "none" else None
    bias = b.leaf((c,)) if affine == "both" else None
    return b.op("F.batch_norm", [x] + stats + [w, bias], {"training": training})


REDUCTIONS = st.sampled_from(["mean", "sum", "none"])


def add_regression_loss(name):
    def add(b):
        x = b.pick()
        t = b.operand_like(b.shape(x), Domain(), exact=True)
        if name == "F.l1_loss":
            check_apart(b.values[x].data, b.values[t].data)
        return b.op(name, [x, t], {"reduction": b.draw(REDUCTIONS)})
    return add


def add_gaussian_nll(b):
    x = b.pick()
    s = b.shape(x)
    t = b.leaf(s)
    var = b.operand_like(s, Domain(0.2, 2.0), exact=True)
    return b.op("F.gaussian_nll_loss", [x, t, var], {"full": b.draw(st.booleans()), "reduction": b.draw(REDUCTIONS)})


def add_bce(b):
    x = b.into(b.pick(), Domain(0.02, 0.98))
    s = b.shape(x)
    t = b.const(b.rng.uniform(0, 1, s))
    w = b.const(b.rng.uniform(0.5, 2, b.partner_shape(s))) if b.draw(st.booleans()) else None
    return b.op("F.binary_cross_entropy", [x, t, w], {"reduction": b.draw(REDUCTIONS)})


def add_bce_logits(b):
    x = b.pick()
    s = b.shape(x)
    t = b.const(b.rng.uniform(0, 1, s))
    w = b.const(b.rng.uniform(0.5, 2, b.partner_shape(s))) if b.draw(st.booleans()) else None
    pos = b.const(b.rng.uniform(0.5, 2, s[-1:])) if b.draw(st.booleans()) else None
    return b.op("F.binary_cross_entropy_with_logits", [x, t, w, pos], {"reduction": b.draw(REDUCTIONS)})


def add_class_loss(name):
    def add(b):
        x = b.pick(lambda s: 1 <= len(s) <= 3 and s[0 if len(s) == 1 else 1] >= 2)
        s = b.shape(x)
        ax = 0 if len(s) == 1 else 1
        c = s[ax]
        tshape = s[:ax] + s[ax + 1:]
        kwargs = {"reduction": b.draw(REDUCTIONS)}
        weight = b.const(b.rng.uniform(0.5, 2, c)) if b.draw(st.booleans()) else None
        soft = name == "F.cross_entropy" and b.draw(st.booleans())
        if soft:
            p = b.rng.uniform(0.1, 1, s)
            t = b.const(p / p.sum(axis=ax, keepdims=True))
        else:
            idx = b.rng.integers(0, c, tshape)
            if b.draw(st.booleans()) and idx.size > 1:  # ignore_index, but never every target
                idx.reshape(-1)[0] = -100
            t = b.const(idx.astype(np.int64))
        if name == "F.cross_entropy":
            kwargs["label_smoothing"] = b.draw(st.sampled_from([0.0, 0.2]))
        return b.op(name, [x, t, weight], kwargs)
    return add


def add_embedding(b):
    w = b.pick(lambda s: len(s) == 2)
    n = b.shape(w)[0]
    idx = b.const(b.rng.integers(0, n, b.draw(st.sampled_from([(), (3,), (2, 2)]))).astype(np.int64))
    kwargs = {"padding_idx": b.draw(st.integers(0, n - 1))} if b.draw(st.booleans()) else {}
    return b.op("F.embedding", [idx, w], kwargs)


def add_pad(b):
    """F.pad in each mode: constant (a value, negative widths crop) on any axes, reflect / replicate / circular
    on the last 1-3 axes of an input with one or two more, within PyTorch's limits on the widths."""
    x = b.pick(lambda s: len(s) >= 1 and min(s) >= 1)
    s = b.shape(x)
    mode = b.draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
    if mode == "constant":
        axes = b.draw(st.integers(1, min(len(s), 3)))
    else:
        fits = [k for k in (1, 2, 3) if len(s) in (k + 1, k + 2)]
        if not fits:
            raise Reject(f"{mode} padding takes 2-5 axes")
        axes = b.draw(st.sampled_from(fits))
    widths = []
    for a in range(axes):
        size = s[len(s) - 1 - a]
        most = {"reflect": size - 1, "circular": size}.get(mode, 3)
        pair = [b.draw(st.integers(-1 if size > 2 else 0, min(most, 3))) for _ in range(2)]
        if size + sum(pair) <= 0:
            raise Reject("nothing left of the axis")
        widths += pair
    kwargs = {"pad": tuple(widths), "mode": mode}
    if mode == "constant":
        kwargs["value"] = b.draw(st.sampled_from([0.0, -1.5, 2.0]))
    return b.op("F.pad", [x], kwargs)


def add_pow_small_int(b):
    with_zeros = b.floats(lambda s: True)
    with_zeros = [i for i in with_zeros if (b.values[i].data == 0).any()]  # exact zeros, e.g. from relu
    x = with_zeros[-1] if with_zeros and b.draw(st.booleans()) else b.pick()
    exponents = [0, 1, 2, 3]
    if known_bug("pow_exponent_0_or_1_at_zero") and (b.values[x].data == 0).any():
        exponents = [2, 3]
    return b.op("pow_small_int", [x], {"p": b.draw(st.sampled_from(exponents))})


SELECT_GAP = 1e-2  # compared values at least this far apart: float32 round-off never flips a comparison


def _separated(a, dim=None):
    """No two values of ``a`` (along ``dim``; with ``dim`` None, ``a`` holds differences) closer than SELECT_GAP."""
    if dim is None:
        return bool((np.abs(a) >= SELECT_GAP).all())
    a = np.sort(a, axis=dim)
    return a.shape[dim] < 2 or bool((np.diff(a, axis=dim) >= SELECT_GAP).all())


def add_select(b):
    """A selection by value: where(x > y, x, y), the max / min along a dim, or x's entries at y's argmax along a
    dim; x and y nodes of the graph, their compared values apart (no near-ties, which round-off could break
    differently in the two libraries)."""
    x = b.pick(lambda s: len(s) >= 1)
    s = b.shape(x)
    kind = b.draw(st.sampled_from(["where_gt", "select_max_dim", "gather_argmax"]))
    y = b.operand_like(s, Domain(), exact=True) if kind != "select_max_dim" else x
    dim = b.draw(st.integers(-len(s), len(s) - 1))
    vx, vy = b.values[x].data, b.values[y].data
    if kind == "where_gt":
        if y == x or not _separated(vx - vy):
            raise Reject("compared values too close")
        return b.op("where_gt", [x, y])
    if not _separated(vy, dim):
        raise Reject("near-ties along dim")
    if kind == "select_max_dim":
        return b.op("select_max_dim", [x], {"dim": dim, "largest": b.draw(st.booleans())})
    return b.op("gather_argmax", [x, y], {"dim": dim})


IMAGE_OPS = ("conv", "F.conv", "max_pool2d", "avg_pool2d", "interpolate")


def _image(s):  # (N, C, H, W), or 3-D: an unbatched (C, H, W) image to a convolution, (N, C, L) to a resize
    return len(s) in (3, 4) and s[-3] <= 4 and max(s[-2:]) <= 8


def add_image_layer(b):
    """A convolution (plain or transposed, grouped or not, with or without bias), a pooling layer or a nearest
    resize on an image already in the graph: most often the output of an earlier one, so layers chain as in a
    network (a convolution's output is stored channels-last, and the next layer reads it as it lies). A 3-D
    input is an unbatched (C, H, W) image to a convolution or pooling, and (N, C, L) to a resize (PyTorch's rules)."""
    images = b.floats(_image)
    if images and b.draw(st.integers(0, 3)):
        x = images[-1] if b.draw(st.booleans()) else images[b.draw(st.integers(0, len(images) - 1))]
    else:
        batch = (b.draw(st.integers(1, 2)),) if b.draw(st.integers(0, 2)) else ()  # a third of them unbatched
        x = b.leaf(batch + (b.draw(st.integers(1, 4)),) + b.draw(st.tuples(st.integers(1, 6), st.integers(1, 6))))
    s = b.shape(x)
    kind = b.draw(st.sampled_from(["conv2d", "conv2d_act", "conv_transpose2d", "conv_transpose2d_act", "max_pool2d",
                                   "avg_pool2d", "interpolate"]))  # *_act: Sequential's Conv2d + ReLU, ... as one node
    if kind == "interpolate":
        if len(s) == 4:
            return b.op("interpolate_nearest", [x], b.draw(SPECS_BY_NAME["interpolate_nearest"].kwargs((s,))))
        by_size = b.draw(st.booleans())  # (N, C, L): a 1-D resize
        return b.op("interpolate_nearest", [x], {"size": b.draw(st.integers(1, 8))} if by_size else
                    {"scale_factor": b.draw(st.sampled_from([2.0, 3.0, 1.5, 0.6, (1.7,)]))})
    spec = SPECS_BY_NAME[kind.removesuffix("_act")]
    image = s if len(s) == 4 else (1,) + s  # the strategies' (N, C, H, W)
    if kind.endswith("pool2d"):
        x = b.into(x, spec.domain_of(0))
        return b.op(kind, [x], b.draw(spec.kwargs((image,))))
    c = image[1]
    groups = b.draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
    cout = groups * b.draw(st.integers(1, 2))
    kernel = b.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    w_shape = ((c, cout // groups) if kind.startswith("conv_transpose2d") else (cout, c // groups)) + kernel
    w = b.leaf(w_shape, Domain(-1.0, 1.0))
    bias = b.leaf((cout,)) if b.draw(st.booleans()) else None
    shapes = (image, w_shape) + (((cout,),) if bias is not None else ())
    kwargs = b.draw(spec.kwargs(shapes))  # a transposed weight without bias fits any groups dividing its rows
    if kind.endswith("_act"):
        layer = TF.conv2d if kind == "conv2d_act" else TF.conv_transpose2d
        try:
            pre = layer(b.values[x], b.values[w], None if bias is None else b.values[bias], **kwargs).data
        except (ValueError, TypeError) as e:
            raise Reject(f"{kind}: {e}") from None
        # a smaller margin than linear_act's: a convolution has many outputs, and some lie near 0 (float32's
        # round-off of them is far below it)
        return b.op("F." + kind, [x, w, bias], {**kwargs, **fused_activation(b, pre, 0.005)})
    name = kind if bias is not None else kind + "_nobias"
    return b.op(name, [x, w] + ([bias] if bias is not None else []), kwargs)


FUNCTIONAL = {
    "F.linear": add_linear, "F.linear_act": add_linear_act, "F.layer_norm": add_layer_norm,
    "F.batch_norm": add_batch_norm, "F.mse_loss": add_regression_loss("F.mse_loss"),
    "F.l1_loss": add_regression_loss("F.l1_loss"), "F.gaussian_nll_loss": add_gaussian_nll,
    "F.binary_cross_entropy": add_bce, "F.binary_cross_entropy_with_logits": add_bce_logits,
    "F.cross_entropy": add_class_loss("F.cross_entropy"), "F.nll_loss": add_class_loss("F.nll_loss"),
    "F.embedding": add_embedding, "pow_small_int": add_pow_small_int, "image layer": add_image_layer,
    "F.pad": add_pad, "select": add_select,
}
FUNCTIONAL_WEIGHT = 4  # drawn this many times as often as a table op: there are far fewer of them
ENTRIES = [(s.name, (lambda b, s=s: add_spec(b, s))) for s in SPECS if s.name not in EXCLUDED_SPECS] + \
    list(FUNCTIONAL.items()) * FUNCTIONAL_WEIGHT


# Small convolutional networks: image layers, batch norm, activations, broadcasting and reshapes, drawn so that
# layers follow each other (random graphs from all of ENTRIES rarely chain two image layers)
NETWORK_SPECS = ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "add", "mul", "sub", "sum", "mean", "flatten",
                 "reshape", "permute", "transpose", "getitem_basic", "cat", "interpolate_nearest",
                 "adaptive_avg_pool2d", "softmax")
NETWORK_ENTRIES = [("image layer", add_image_layer)] * 8 + [("F.batch_norm", add_batch_norm)] * 3 + \
    [("F.linear", add_linear), ("F.pad", add_pad)] + [(name, add) for name, add in ENTRIES if name in NETWORK_SPECS]


def build_graph(draw, entries=None):
    """A random graph of 2-6 ops (more attempts when an op does not fit), with its upstream gradient and weights;
    ``entries``: the ops to draw from (default ENTRIES, all of them)."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    b = Builder(draw, rng)
    base = draw(st.sampled_from(BASE_SHAPES))
    for _ in range(draw(st.integers(1, 2))):
        b.leaf(b.partner_shape(base))
    target = int(rng.integers(2, 7))  # uniform (a draw would favour the smallest); shrinking cuts prefixes
    for _ in range(12 * target):
        if b.n_ops >= target:
            break
        name, add = draw(st.sampled_from(entries or ENTRIES))
        mark = b.mark()
        try:
            add(b)
            b.n_ops += 1
        except Reject:
            b.rollback(mark)
    if b.n_ops < 2 or b.values[-1].dtype.kind != "f" or b.program[-1][0] != "op" or not b.live[-1]:
        return None
    graph = Graph(b.program)
    graph.upstream = rng.standard_normal(b.values[-1].shape)
    graph.weights = [rng.standard_normal(np.shape(graph.program[i][1])) for i in graph.leaves()]
    return graph


# ---- the tests -------------------------------------------------------------------------------------------------------
@settings(max_examples=GRAPHS, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_graphs_match_torch(data):
    _check_random_graph(build_graph(data.draw))


@settings(max_examples=max(1, GRAPHS // 3), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_conv_networks_match_torch(data):
    """Convolutions, transposed convolutions and pooling chained with batch norm, activations, broadcasting and
    reshapes: the compositions a convolutional network makes (channels-last images flowing between ops)."""
    _check_random_graph(build_graph(data.draw, NETWORK_ENTRIES))


def _check_random_graph(graph):
    if graph is None:
        event("no graph: too few ops fitted")
        return
    ops = [ins[1] for ins in graph.program if ins[0] == "op"]
    event(f"{len(ops)} ops")  # --hypothesis-show-statistics tells how many graphs of each size ran
    chained = sum(name.startswith(IMAGE_OPS) for name in ops)
    if chained:
        event("an image layer" if chained == 1 else "image layers chained")
    if "F.conv2d_act" in ops or "F.conv_transpose2d_act" in ops:
        event("a convolution with its activation fused")
    message = _safe_compare(graph)
    if message:
        small, small_message = shrink(graph)
        text = reproducer(small, small_message or message)
        note(text)
        pytest.fail(f"tinygen differs from PyTorch: {message}\n\n{text}", pytrace=False)


def test_every_op_is_in_the_generator():
    """Every op of the table (but the dtype change) and every functional entry can be drawn, and is drawn."""
    names = {name for name, _ in ENTRIES}
    assert {s.name for s in SPECS} - names == EXCLUDED_SPECS
    assert set(FUNCTIONAL) <= names


def test_every_op_fits_into_some_graph():
    """Each op can be placed after a few random starts: a rule that rejected an op everywhere would leave it out of
    the random graphs without a word."""
    placed = set()

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def place(data):
        b = Builder(data.draw, np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1))))
        base = data.draw(st.sampled_from(BASE_SHAPES))
        b.leaf(base)
        b.leaf(b.partner_shape(base))
        for name, add in dict(ENTRIES).items():
            mark = b.mark()
            try:
                add(b)
                placed.add(name)
            except Reject:
                pass
            b.rollback(mark)

    place()
    missing = {name for name, _ in ENTRIES} - placed
    assert not missing, f"never placed: {sorted(missing)}"


def test_graphs_have_every_shape_kind():
    """0-d, 1-d, size-1 and broadcasting shapes all occur among the graphs' leaves."""
    kinds = set()

    @settings(max_examples=100, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def collect(data):
        graph = build_graph(data.draw)
        if graph is None:
            return
        shapes = [np.shape(graph.program[i][1]) for i in graph.leaves()]
        kinds.update("0-d" if s == () else "1-d" if len(s) == 1 else "n-d" for s in shapes)
        kinds.update("size-1" for s in shapes if 1 in s)
        if len(set(shapes)) > 1:
            kinds.add("broadcast")

    collect()
    assert kinds >= {"0-d", "1-d", "size-1", "broadcast"}


def test_comparison_catches_a_wrong_gradient(monkeypatch):
    """The harness is not vacuous: a backward that is off by 1e-6 relative is caught and reported with a
    reproducer that, run as printed, finds it again."""
    from tinygen.ops import elementwise

    def slightly_wrong(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos() * (1 + 1e-6)

    def slightly_wrong_array(ctx, g):  # the form a plain backward runs
        (x,) = ctx.saved_tensors
        return g * np.cos(x.data) * (1 + 1e-6)

    graph = Graph([("leaf", np.array([0.3, -1.2, 2.0])), ("op", "exp", [0], {}, 0), ("op", "sin", [1], {}, 0),
                   ("op", "sum", [2], {"dim": None, "keepdim": False}, 0)],
                  upstream=np.array(1.5), weights=[np.array([1.0, 2.0, -1.0])])
    assert compare_graph(graph) == ""
    monkeypatch.setattr(elementwise.Sin, "backward", staticmethod(slightly_wrong))
    monkeypatch.setattr(elementwise.Sin, "array_backward", staticmethod(slightly_wrong_array))
    message = compare_graph(graph)
    assert message.startswith("float64 gradient (plain backward), leaf n0")
    small, small_message = shrink(graph)
    assert [ins[1] for ins in small.program if ins[0] == "op"] == ["exp", "sin"]
    namespace = {}
    exec(reproducer(small, small_message).replace("print(", "result = ("), namespace)  # noqa: S102
    assert namespace["result"].startswith("float64 gradient")


KNOWN_BUG_REPRODUCERS = {
    "layer_norm_all_dims_affine": Graph(
        [("leaf", np.array([0.3, -1.2, 0.8, 2.0])), ("leaf", np.array([0.5, 1.5, -1.0, 2.0])),
         ("leaf", np.array([0.1, 0.2, 0.3, 0.4])), ("op", "F.layer_norm", [0, 1, 2], {"normalized_shape": (4,)}, 0)],
        upstream=np.array([1.0, -2.0, 0.5, 3.0]), weights=[np.ones(4), np.ones(4), np.ones(4)]),
    "pow_exponent_0_or_1_at_zero": Graph(
        [("leaf", np.array([-0.5, 0.7])), ("op", "relu", [0], {}, 0), ("op", "pow_small_int", [1], {"p": 0}, 0)],
        upstream=np.array([1.0, 1.0]), weights=[np.ones(2)]),
    "pow_zero_exponent_second_order": Graph(
        [("leaf", np.array([0.0])), ("leaf", np.array([1.5054187208768033])),
         ("const", np.array([[[True], [False], [True]]])), ("op", "masked_fill", [1, 2], {"value": -1.5}, 0),
         ("squash", 3, 1.5, 0.98, 1.5), ("op", "pow", [4, 0], {}, 0)],
        upstream=np.array([[[0.4116305363741328], [1.0425133694426776], [-0.12853466294403426]]]),
        weights=[np.array([0.9034701816518086]), np.array([0.09401229776087457])]),
    "linear_act_softplus_low_threshold": Graph(
        [("leaf", np.array([[1.0]])), ("leaf", np.array([[0.8]])),
         ("op", "F.linear_act", [0, 1, None], {"activation": "softplus", "p1": 1.0, "p2": 1.0}, 0)],
        upstream=np.array([[1.0]]), weights=[np.ones((1, 1)), np.ones((1, 1))]),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.xfail(reason=KNOWN_BUGS[n], strict=True)]
                                               if n in KNOWN_BUGS else []) for n in KNOWN_BUG_REPRODUCERS])
def test_bug_reproducers(name):
    """Each bug the generator once found, through this test's own comparison: a fixed one must agree with PyTorch;
    a listed open one must still fail (strict: once fixed it XPASSes, a reminder to delete it from KNOWN_BUGS)."""
    message = _safe_compare(KNOWN_BUG_REPRODUCERS[name])
    assert message == "", message


def test_batch_norm_eval_on_a_permuted_image_has_the_finite_difference_gradient():
    """Why F.batch_norm's PyTorch reference gets a contiguous copy (FUNCTIONAL_CALLS): on x.permute(0, 3, 2, 1)
    of a (1, 1, 4, 6) x, torch 2.13's eval-mode batch_norm returns an input gradient that finite differences
    refute (a random network found it). Ours is the finite-difference one, and PyTorch's on a contiguous copy."""
    torch = _torch()
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((1, 1, 4, 6)), rng.standard_normal((1, 6, 4, 1))
    mean, var = rng.standard_normal(6), rng.uniform(0.5, 2, 6)

    def loss(t):
        return (TF.batch_norm(t.permute(0, 3, 2, 1), tg.tensor(mean), tg.tensor(var), training=False)
                * tg.tensor(g)).sum()
    xo = tg.tensor(x, requires_grad=True)
    loss(xo).backward()
    eps, fd = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        fd[i] = (loss(tg.tensor(x + step)).item() - loss(tg.tensor(x - step)).item()) / (2 * eps)
    np.testing.assert_allclose(xo.grad.numpy(), fd, rtol=1e-6, atol=1e-8)
    xt = torch.tensor(x, requires_grad=True)
    (_F().batch_norm(xt.permute(0, 3, 2, 1).contiguous(), torch.tensor(mean), torch.tensor(var), training=False)
     * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def test_pow_second_derivative_in_a_zero_exponent_is_the_finite_difference_one():
    """Why the graphs' PyTorch reference for pow is exp(b log a) (FUNCTIONAL_CALLS): a random graph found that at
    an exponent of exactly 0, the derivative in b of the base gradient b * a**(b-1) (a gradient penalty's second
    order) is a**(b-1), as finite differences say; tinygen gave a**b (1) before it stopped shifting the exponent
    where a != 0, and torch 2.13's a ** b gives 0 (its base gradient is masked where b == 0)."""
    torch = _torch()
    a0, u = np.array([0.555, 1.5035, 0.555]), np.array([0.41, 1.04, -0.13])

    def penalty_grad(lib, pow_fn):
        a = lib.tensor(a0, requires_grad=True)
        b = lib.tensor(np.array([0.0]), requires_grad=True)
        grad = tg.grad if lib is tg else torch.autograd.grad
        ga, gb = grad([pow_fn(a, b)], [a, b], [lib.tensor(u)], create_graph=True)
        ((ga * 0.3).sum() + (gb * 0.9).sum()).backward()
        return np.asarray(b.grad.data if lib is tg else b.grad.numpy())

    def penalty(b):  # the same penalty, written out: 0.3 sum(u b a**(b-1)) + 0.9 sum(u a**b log a)
        return 0.3 * (u * b * a0 ** (b - 1)).sum() + 0.9 * (u * a0 ** b * np.log(a0)).sum()
    fd = (penalty(1e-6) - penalty(-1e-6)) / 2e-6
    np.testing.assert_allclose(penalty_grad(tg, lambda a, b: a ** b), [fd], rtol=1e-8)
    np.testing.assert_allclose(penalty_grad(torch, lambda a, b: (b * a.log()).exp()), [fd], rtol=1e-8)
    assert abs(penalty_grad(torch, lambda a, b: a ** b)[0] - fd) > 0.1  # torch's own a ** b: its masked formula


def test_open_bugs_have_reproducers():
    assert set(KNOWN_BUGS) <= set(KNOWN_BUG_REPRODUCERS)


def soak(graphs):
    """Run ``graphs`` random graphs without stopping at the first failure; return (graphs run, failures), each
    failure shrunk, grouped by the last op of the shrunk graph and what differed."""
    ran, failures = [0], {}

    @settings(max_examples=graphs, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data):
        graph = build_graph(data.draw)
        if graph is None:
            return
        ran[0] += 1
        if _safe_compare(graph):
            small, message = shrink(graph)
            last = [ins[1] for ins in small.program if ins[0] == "op"][-1]
            key = (last, message.split(":")[0])
            failures.setdefault(key, []).append(reproducer(small, message))

    one()
    return ran[0], failures


if __name__ == "__main__":  # python tests/test_differential_torch.py 20000: a soak that reports every failure
    import sys
    n, found = soak(int(sys.argv[1]) if len(sys.argv) > 1 else GRAPHS)
    print(f"{n} graphs, {sum(len(v) for v in found.values())} failing, in {len(found)} groups")
    for (op, what), repros in sorted(found.items(), key=lambda kv: -len(kv[1])):
        print(f"\n==== {len(repros)} x {what} (last op {op}); the first reproducer:\n{repros[0]}")
