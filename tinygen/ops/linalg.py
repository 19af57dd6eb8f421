"""Matrix products."""
from ..autograd.function import Function
from ..kernels.gemm import mm, mm_pair  # noqa: F401 - the array-level products (BLAS's operand choices live there)
from ..tensor import register, require_tensor


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
    require_tensor(b, "matmul", "other")
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
    if a.data.ndim == 1:  # the row axis first: while it is there, out has at least 2 dims
        out = out.squeeze(-2)
    if b.data.ndim == 1:
        out = out.squeeze(-1)
    return out


@register("__rmatmul__")
def _rmatmul(a, b):
    from .arithmetic import operand
    return matmul(operand(b, a), a)


# ---- ops added for PyTorch parity ------------------------------------------------------------------------------------
# The Tensor-level matrix product is mm_ (registered as Tensor.mm, exported as tinygen.mm): the name mm above is
# the array helper every product goes through.
from ..tensor import Tensor  # noqa: E402
from .index import GetItem  # noqa: E402


def _same_dtype(op, a, b):
    for name, t in (("first", a), ("second", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected tensors, got {type(t).__name__} as the {name} argument")
    if a.data.dtype != b.data.dtype:
        raise RuntimeError(f"{op}: expected both tensors to have the same dtype, but got {a.dtype} != {b.dtype}")


@register("mm")
def mm_(a, b):
    """The product of two matrices (n, k) @ (k, m)."""
    _same_dtype("mm", a, b)
    if a.data.ndim != 2 or b.data.ndim != 2:
        raise RuntimeError(f"mm: both arguments must be matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.data.shape[1] != b.data.shape[0]:
        raise RuntimeError(f"mm: mat1 and mat2 shapes cannot be multiplied ({a.shape[0]}x{a.shape[1]} and "
                           f"{b.shape[0]}x{b.shape[1]})")
    return Matmul.apply(a, b)


@register()
def bmm(a, b):
    """Batched matrix product (B, n, k) @ (B, k, m), without broadcasting."""
    _same_dtype("bmm", a, b)
    if a.data.ndim != 3 or b.data.ndim != 3:
        raise RuntimeError(f"bmm: both arguments must be 3-D tensors, got shapes {tuple(a.shape)} and "
                           f"{tuple(b.shape)}")
    if b.data.shape[:2] != (a.data.shape[0], a.data.shape[2]):
        raise RuntimeError(f"bmm: Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{a.shape[0]}, {a.shape[2]}] but got: [{b.shape[0]}, {b.shape[1]}].")
    return Matmul.apply(a, b)


@register()
def mv(a, v):
    """Matrix (n, k) times vector (k,)."""
    _same_dtype("mv", a, v)
    if a.data.ndim != 2 or v.data.ndim != 1:
        raise RuntimeError(f"mv: expected a matrix and a vector, got shapes {tuple(a.shape)} and {tuple(v.shape)}")
    if a.data.shape[1] != v.data.shape[0]:
        raise RuntimeError(f"mv: size mismatch, got matrix {a.shape[0]}x{a.shape[1]} and vector {v.shape[0]}")
    return matmul(a, v)


@register()
def dot(a, b):
    """The inner product of two 1-D tensors of the same size."""
    _same_dtype("dot", a, b)
    if a.data.ndim != 1 or b.data.ndim != 1:
        raise RuntimeError(f"dot: 1D tensors expected, but got {a.data.ndim}D and {b.data.ndim}D tensors")
    if a.data.shape != b.data.shape:
        raise RuntimeError(f"dot: inconsistent tensor size, expected tensor [{a.shape[0]}] and src [{b.shape[0]}] "
                           f"to have the same number of elements, but got {a.shape[0]} and {b.shape[0]} elements "
                           f"respectively")
    return matmul(a, b)


@register("outer", "ger")
def outer(a, b):
    """The outer product a[:, None] * b[None, :] of two 1-D tensors."""
    _same_dtype("outer", a, b)
    if a.data.ndim != 1 or b.data.ndim != 1:
        raise RuntimeError(f"outer: expected 1-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return a.unsqueeze(1) * b


# ---- einsum ----------------------------------------------------------------------------------------------------------
_ELLIPSIS_LABELS = "".join(chr(0x3B1 + i) for i in range(24))  # stand-ins for the axes '...' covers


def einsum(equation, *operands):
    """Einstein summation, as ``torch.einsum``: ``einsum("bij,bjk->bik", a, b)``.

    Repeated labels within an operand take the diagonal, labels left out of the output are summed, ``...``
    covers unnamed (broadcast) axes, and without ``->`` the output is the labels that appear once, sorted.
    Operands are combined pairwise, left to right; each pair's contraction is one matrix product (a permute
    and reshape to (batch, rows, k) @ (batch, k, cols)), so it runs through BLAS.
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(equation, str):
        raise TypeError("einsum(): the equation must be a string (the sublist format is not supported)")
    if not operands:
        raise ValueError("einsum(): must provide at least one operand")
    for i, t in enumerate(operands):
        if not isinstance(t, Tensor):
            raise TypeError(f"einsum(): operand {i} must be a tensor, got {type(t).__name__}")
        if t.data.dtype != operands[0].data.dtype:
            raise RuntimeError(f"einsum(): operands must have the same dtype, got {operands[0].dtype} and "
                               f"{t.dtype}")
    terms, output = _parse_einsum(equation.replace(" ", ""), operands)
    items = [_einsum_reduce_single(t, labels, [ls for j, ls in enumerate(terms) if j != i] + [output])
             for i, (t, labels) in enumerate(zip(operands, terms))]
    t, labels = items[0]
    for k in range(1, len(items)):
        keep = set(output).union(*(ls for _, ls in items[k + 1:]))
        t, labels = _einsum_pair(t, labels, *items[k], keep)
    t, labels = _sum_labels(t, labels, [lb for lb in labels if lb not in output])
    return t.permute(tuple(labels.index(lb) for lb in output)) if labels else t


def _parse_einsum(eq, operands):
    """Each operand's labels (with '...' spelled out as stand-in labels) and the output's labels."""
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum(): the equation {eq!r} has {len(terms)} operand terms, but {len(operands)} "
                         f"operands were given")
    n_ell = 0
    for term, t in zip(terms, operands):
        named = len(term.replace("...", ""))
        if "..." in term:
            n_ell = max(n_ell, t.data.ndim - named)
    ell = _ELLIPSIS_LABELS[len(_ELLIPSIS_LABELS) - n_ell:] if n_ell else ""
    out_terms = []
    for i, (term, t) in enumerate(zip(terms, operands)):
        body = term.replace("...", "")
        if not all(c.isascii() and c.isalpha() for c in body) or term.count("...") > 1:
            raise ValueError(f"einsum(): invalid subscript {term!r} for operand {i}: use letters a-z, A-Z and at "
                             f"most one '...'")
        if "..." in term:
            k = t.data.ndim - len(body)
            if k < 0:
                raise ValueError(f"einsum(): operand {i} has {t.data.ndim} dimensions, fewer than the "
                                 f"{len(body)} subscripts in {term!r}")
            term = term.replace("...", ell[len(ell) - k:])
        elif len(term) != t.data.ndim:
            raise ValueError(f"einsum(): the subscript {term!r} of operand {i} has {len(term)} labels, but the "
                             f"operand has {t.data.ndim} dimensions (shape {tuple(t.shape)})")
        out_terms.append(list(term))
    if arrow:
        body = rhs.replace("...", "")
        if not all(c.isascii() and c.isalpha() for c in body) or rhs.count("...") > 1:
            raise ValueError(f"einsum(): invalid output subscript {rhs!r}")
        output = list(rhs.replace("...", ell))
        seen = set().union(*out_terms)
        for lb in output:
            if output.count(lb) > 1:
                raise ValueError(f"einsum(): output subscript {lb!r} appears more than once in {rhs!r}")
            if lb not in seen:
                raise ValueError(f"einsum(): output subscript {lb!r} does not appear in any operand")
    else:  # implicit: the broadcast axes, then the labels that appear exactly once, in alphabetical order
        counts = {}
        for labels in out_terms:
            for lb in labels:
                counts[lb] = counts.get(lb, 0) + 1
        output = list(ell) + sorted(lb for lb, c in counts.items() if c == 1 and lb not in ell)
    return out_terms, output


def _einsum_reduce_single(t, labels, others):
    """Take the diagonal of repeated labels, then sum the labels no other term (nor the output) uses."""
    labels = list(labels)
    while len(set(labels)) < len(labels):
        lb = next(lb for lb in labels if labels.count(lb) > 1)
        i = labels.index(lb)
        j = labels.index(lb, i + 1)
        if t.shape[i] != t.shape[j]:
            raise RuntimeError(f"einsum(): subscript {lb!r} is repeated in an operand with different sizes "
                               f"{t.shape[i]} and {t.shape[j]}")
        rest = [k for k in range(len(labels)) if k not in (i, j)]
        t = t.permute(tuple(rest + [i, j]))
        ar = t.xp.arange(t.shape[-1])
        t = GetItem.apply(t, (Ellipsis, ar, ar))
        labels = [labels[k] for k in rest] + [lb]
    used = set().union(*others)
    return _sum_labels(t, labels, [lb for lb in labels if lb not in used])


def _sum_labels(t, labels, gone):
    if not gone:
        return t, labels
    t = t.sum(tuple(labels.index(lb) for lb in gone))
    return t, [lb for lb in labels if lb not in gone]


def _einsum_pair(a, la, b, lb_, keep):
    """Contract two operands into one whose labels are the ones in ``keep``: batch (shared, kept), rows (a's
    own), cols (b's own) and the summed shared labels k, as one (batch, rows, k) @ (batch, k, cols) product."""
    a, la = _sum_labels(a, la, [x for x in la if x not in keep and x not in lb_])
    b, lb_ = _sum_labels(b, lb_, [x for x in lb_ if x not in keep and x not in la])
    shared = [x for x in la if x in lb_]
    batch = [x for x in shared if x in keep]
    summed = [x for x in shared if x not in keep]
    rows = [x for x in la if x not in shared]
    cols = [x for x in lb_ if x not in shared]
    size = {}
    for x in shared:  # a size-1 axis broadcasts against the other operand's size
        sa, sb = a.shape[la.index(x)], b.shape[lb_.index(x)]
        if sa != sb and 1 not in (sa, sb):
            raise RuntimeError(f"einsum(): operands do not broadcast: subscript {x!r} has size {sa} in one and "
                               f"{sb} in the other")
        size[x] = max(sa, sb)
    a = a.expand(tuple(size.get(x, s) for x, s in zip(la, a.shape)))
    b = b.expand(tuple(size.get(x, s) for x, s in zip(lb_, b.shape)))
    sizes = dict(zip(la, a.shape))
    sizes.update(zip(lb_, b.shape))

    def count(labels):
        n = 1
        for x in labels:
            n *= sizes[x]
        return n
    lead = (count(batch),) if batch else ()  # without batch labels a 2-D product (mm's fast paths apply)
    a3 = a.permute(tuple(la.index(x) for x in batch + rows + summed)).reshape(lead + (count(rows), count(summed)))
    b3 = b.permute(tuple(lb_.index(x) for x in batch + summed + cols)).reshape(lead + (count(summed), count(cols)))
    out = Matmul.apply(a3, b3).reshape(tuple(sizes[x] for x in batch + rows + cols))
    return out, batch + rows + cols
