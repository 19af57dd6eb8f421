"""Arithmetic: + - * / ** and unary minus, and the non-differentiable comparisons and logical ops.

Broadcasting needs no code here: the engine sums each gradient back to its input's shape (engine._fit).

``elementwise`` on an op is its forward for one element, written on its arguments ``{0}``, ``{1}``:
``tinygen.compile`` fuses runs of such ops into one generated loop (tinygen/compile/fusion.py). An op that declares
it computes just that in its forward and saves nothing but its arguments (and its output, ``save_output``).
``elementwise_backward`` is its ``array_backward`` for one element: one expression per input, written on the
incoming gradient ``{g}``, what the node saved (``{s0}``, ``{s1}``) and its output ``{y}``, with the operations of
the array code in its order (a loop of them gives its bits; the fused backward is checked against it).
"""
import operator

import numpy as np

from ..autograd.function import Function
from ..tensor import Tensor, _make, as_tensor, get_default_dtype, register, require_tensor


def operand(value, like):
    """Turn a Python number (or array) into a tensor that can meet ``like`` in an op; tensors pass through.

    A number becomes a NumPy scalar of ``like``'s float dtype, which NumPy and CuPy arrays both accept, so a
    constant costs no allocation and no device transfer.
    """
    if isinstance(value, Tensor):
        return value
    if type(value) is float and like.data.dtype.kind == "f":
        return _make(like.data.dtype.type(value), like._device)
    if isinstance(value, (int, float, bool, np.generic)):
        dt = like.data.dtype
        if dt.kind == "f":
            return _make(dt.type(value), like._device)
        if isinstance(value, float):
            return _make(get_default_dtype().type(value), like._device)
        return _make(np.asarray(value)[()], like._device)
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"unsupported operand: a tensor meets {type(value).__name__} {value!r}; expected a tensor "
                        f"or a number")
    return as_tensor(value, device=like._device)


class Add(Function):
    elementwise = "{0} + {1}"  # its value per element, for tinygen.compile's fusion
    elementwise_backward = ("{g}", "{g}")  # array_backward per element, one expression per input
    @staticmethod
    def forward(ctx, a, b):
        return a.data + b.data

    @staticmethod
    def backward(ctx, g):
        return g, g

    array_backward = backward  # the same on arrays


class Sub(Function):
    elementwise = "{0} - {1}"  # its value per element, for tinygen.compile's fusion
    elementwise_backward = ("{g}", "-{g}")
    @staticmethod
    def forward(ctx, a, b):
        return a.data - b.data

    @staticmethod
    def backward(ctx, g):
        return g, (-g if ctx.next_edges[1] is not None else None)

    array_backward = backward  # the same on arrays


class Mul(Function):
    elementwise = "{0} * {1}"  # its value per element, for tinygen.compile's fusion
    elementwise_backward = ("{g} * {s1}", "{g} * {s0}")
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a.data * b.data

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        need = ctx.next_edges
        return (g * b if need[0] is not None else None), (g * a if need[1] is not None else None)

    @staticmethod
    def array_backward(ctx, g):
        a, b = ctx.saved_tensors
        need = ctx.next_edges
        return (g * b.data if need[0] is not None else None), (g * a.data if need[1] is not None else None)


class Div(Function):
    elementwise = "{0} / {1}"  # its value per element, for tinygen.compile's fusion
    elementwise_backward = ("{g} / {s0}", "-({g} / {s0}) * {y}")
    save_output = True

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(b)
        return a.data / b.data

    @staticmethod
    def backward(ctx, g):
        (b,) = ctx.saved_tensors
        ga = g / b
        return ga, (-ga * ctx.output if ctx.next_edges[1] is not None else None)

    @staticmethod
    def array_backward(ctx, g):
        (b,) = ctx.saved_tensors
        ga = g / b.data
        return ga, (-ga * ctx.output_array if ctx.next_edges[1] is not None else None)


class Pow(Function):
    save_output = True

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a.data ** b.data

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ad, bd = a.data, b.data
        ga = gb = None
        if ctx.next_edges[0] is not None:
            # d/da a**b = b * a**(b-1): exactly 0 where b == 0 (as PyTorch). Where a == 0 too, the exponent is
            # shifted to 0, so a**(b-1) never makes 0 * inf = NaN (also in the second derivative); nowhere else, so
            # its derivative in b there stays a**(b-1) (PyTorch's masked formula makes it 0)
            shift = _make(((bd == 0) & (ad == 0)).astype(bd.dtype), b._device)
            ga = g * b * a ** (b - 1 + shift)
        if ctx.next_edges[1] is not None:
            # d/db a**b = a**b * log(a), and 0 where a == 0 and b >= 0 (the limit, as PyTorch) instead of 0 * -inf
            zero = _make(((ad == 0) & (bd >= 0)).astype(ad.dtype), a._device)
            gb = g * ctx.output * (a + zero).log()
        return ga, gb


class Neg(Function):
    elementwise = "-{0}"  # its value per element, for tinygen.compile's fusion
    elementwise_backward = ("-{g}",)
    @staticmethod
    def forward(ctx, a):
        return -a.data

    @staticmethod
    def backward(ctx, g):
        return -g

    array_backward = backward  # the same on arrays


@register("add", "__add__")
def add(a, b):
    return Add.apply(a, operand(b, a))


@register("__radd__")
def _radd(a, b):
    return Add.apply(operand(b, a), a)


@register("sub", "__sub__")
def sub(a, b):
    return Sub.apply(a, operand(b, a))


@register("__rsub__")
def _rsub(a, b):
    return Sub.apply(operand(b, a), a)


@register("mul", "__mul__")
def mul(a, b):
    return Mul.apply(a, operand(b, a))


@register("__rmul__")
def _rmul(a, b):
    return Mul.apply(operand(b, a), a)


@register("div", "__truediv__")
def div(a, b):
    return Div.apply(a, operand(b, a))


@register("__rtruediv__")
def _rdiv(a, b):
    return Div.apply(operand(b, a), a)


@register("pow", "__pow__")
def pow(a, b):
    return Pow.apply(a, operand(b, a))


@register("__rpow__")
def _rpow(a, b):
    return Pow.apply(operand(b, a), a)


@register("neg", "__neg__")
def neg(a):
    return Neg.apply(a)


@register("__pos__")
def _pos(a):
    return a


# ---- comparisons and logic: boolean results, never differentiable -----------------------------------------------
class Compare(Function):
    """A comparison or logical op (``fn`` on the arrays, set by each subclass). Its result is boolean, so
    ``Function.apply`` makes no node for it; it is still an op, so tinygen.compile records it and computes it
    again on every replay (a mask computed once would be replayed as a constant)."""
    fn = None

    @staticmethod
    def forward(ctx, *args):
        return ctx.fn(*[a.data for a in args])


def _truth(x):
    return x if x.dtype.kind == "b" else x != 0


def _compare(name, fn):
    cls = type(name.title().replace("_", ""), (Compare,), {"fn": staticmethod(fn), "__doc__": f"``{name}``."})

    def op(a, b):
        return cls.apply(a, operand(b, a))
    op.__name__ = name
    return op


lt = register("lt", "__lt__")(_compare("lt", operator.lt))
le = register("le", "__le__")(_compare("le", operator.le))
gt = register("gt", "__gt__")(_compare("gt", operator.gt))
ge = register("ge", "__ge__")(_compare("ge", operator.ge))
eq = register("eq", "__eq__")(_compare("eq", operator.eq))
ne = register("ne", "__ne__")(_compare("ne", operator.ne))
_and = _compare("logical_and", lambda x, y: _truth(x) & _truth(y))
_or = _compare("logical_or", lambda x, y: _truth(x) | _truth(y))
LogicalNot = type("LogicalNot", (Compare,), {"fn": staticmethod(lambda x: ~_truth(x)), "__doc__": "``logical_not``."})


def logical_and(a, b):
    require_tensor(a, "logical_and")
    return _and(a, b)


def logical_or(a, b):
    require_tensor(a, "logical_or")
    return _or(a, b)


register("logical_and", "__and__", "__rand__")(logical_and)
register("logical_or", "__or__", "__ror__")(logical_or)


@register("logical_not", "__invert__")
def logical_not(a):
    return LogicalNot.apply(a)
