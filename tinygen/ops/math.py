"""More elementwise math and activations, as PyTorch has them. Each op is one ``Function`` (forward on arrays,
backward written with tinygen ops, so it can be differentiated again) or, where that is exact and no slower, a
composition of existing ops.

Forwards that have a cancellation-free form use it (log1p, expm1, logsigmoid, logaddexp, softplus inside mish),
so values stay accurate where the naive formula loses digits.
"""
import math

import numpy as np

from .. import kernels
from ..autograd.function import Function
from .._checks import check_real
from ..tensor import Tensor, _make, register, require_tensor
from .arithmetic import Sub, _rpow, operand, pow as _tensor_pow
from .elementwise import Clamp, Elu, Where, where

_LN2 = math.log(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _const(data, like):
    """An array as a tensor with no graph (a mask or slope that only scales a gradient)."""
    return _make(data, like._device)


def _typed(d, value):
    return d.dtype.type(value)


# ---- erf on arrays -----------------------------------------------------------------------------------------------
# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969) 631-637: the
# coefficients of netlib's specfun CALERF, relative error below 1e-15 in float64. NumPy has no erf, and
# math.erf element by element is ~100x slower.
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
          1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_ERFC_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
           8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
           2.15311535474403846e-8)
_ERFC_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
           3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_ERFC_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
           6.58749161529837803e-4, 1.63153871373020978e-2)
_ERFC_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
           2.33520497626869185e-3)
_ERF_SMALL = 0.46875   # below: erf from a rational function of x^2
_ERFC_MID = 4.0        # up to here: erfc * exp(x^2) from a rational function of |x|; above: of 1/x^2
_ERFC_ZERO = 26.543    # erfc underflows beyond this


def _rational(t, num, den):
    """(num[-1] t^n + num[0] t^(n-1) + ... + num[n-1]) / (t^n + den[0] t^(n-1) + ... + den[n-1]), Cody's form."""
    xnum, xden = num[-1] * t, t
    for a, b in zip(num[:-2], den[:-1]):
        xnum = (xnum + a) * t
        xden = (xden + b) * t
    return (xnum + num[-2]) / (xden + den[-1])


def _exp_neg_square(xp, y):
    """exp(-y^2) with y^2 split as s^2 + (y - s)(y + s), s = y rounded down to 1/16, so no digits are lost."""
    s = xp.trunc(y * 16.0) / 16.0
    return xp.exp(-s * s) * xp.exp(-(y - s) * (y + s))


def erf_array(xp, d):
    """erf of a float array (float32 is computed in float64 and rounded once)."""
    x = d.astype(np.float64) if d.dtype != np.float64 else d
    y = xp.abs(x)
    small_y = xp.minimum(y, _ERF_SMALL)
    small = x * _rational(small_y * small_y, _ERF_A, _ERF_B)
    mid_y = xp.clip(y, _ERF_SMALL, _ERFC_MID)
    erfc_mid = _exp_neg_square(xp, mid_y) * _rational(mid_y, _ERFC_C, _ERFC_D)
    far_y = xp.clip(y, _ERFC_MID, _ERFC_ZERO)  # clipped: no 1/0 or inf - inf on the other branches' elements
    inv_sq = 1.0 / (far_y * far_y)
    erfc_far = _exp_neg_square(xp, far_y) * (1.0 / math.sqrt(math.pi) - inv_sq * _rational(inv_sq, _ERFC_P, _ERFC_Q)) \
        / far_y
    erfc_far = xp.where(y >= _ERFC_ZERO, 0.0, erfc_far)
    large = xp.sign(x) * (1.0 - xp.where(y <= _ERFC_MID, erfc_mid, erfc_far))
    out = xp.where(y <= _ERF_SMALL, small, large)
    return out.astype(d.dtype) if out.dtype != d.dtype else out


# ---- math --------------------------------------------------------------------------------------------------------
class Square(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data * x.data

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x * 2.0)


class Rsqrt(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return 1 / ctx.xp.sqrt(x.data)

    @staticmethod
    def backward(ctx, g):
        y = ctx.output
        return g * (y * y * y) * -0.5


class Reciprocal(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return 1 / x.data

    @staticmethod
    def backward(ctx, g):
        y = ctx.output
        return -(g * y * y)


class Log1p(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.log1p(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / (x + 1.0)


class Expm1(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.expm1(x.data)

    @staticmethod
    def backward(ctx, g):
        return g * (ctx.output + 1.0)


class Log2(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.log2(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / (x * _LN2)


class Exp2(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.exp2(x.data)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.output * _LN2


class Erf(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return erf_array(ctx.xp, x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((-(x * x)).exp() * _TWO_OVER_SQRT_PI)


class Sign(Function):
    @staticmethod
    def forward(ctx, x):
        return ctx.xp.sign(x.data)

    @staticmethod
    def backward(ctx, g):
        # zero everywhere; kept connected to g (not a bare constant) so a double backward through it sees 0
        return Where.apply(_const(ctx.xp.zeros(g.shape, dtype=bool), g), g, operand(0.0, g))


class Sinh(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.sinh(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cosh()


class Cosh(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.cosh(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.sinh()


class Atan(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.arctan(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / (x * x + 1.0)


class Atan2(Function):
    @staticmethod
    def forward(ctx, y, x):
        ctx.save_for_backward(y, x)
        return ctx.xp.arctan2(y.data, x.data)

    @staticmethod
    def backward(ctx, g):
        y, x = ctx.saved_tensors
        need = ctx.next_edges
        q = g / (x * x + y * y)
        return (q * x if need[0] is not None else None), (-(q * y) if need[1] is not None else None)


class Hypot(Function):
    save_output = True

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.xp.hypot(a.data, b.data)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        need = ctx.next_edges
        q = g / ctx.output
        return (q * a if need[0] is not None else None), (q * b if need[1] is not None else None)


class Logaddexp(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.xp.logaddexp(a.data, b.data)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        need = ctx.next_edges
        # the weights sigmoid(a - b) and sigmoid(b - a) sum to one and never overflow
        return ((g * (a - b).sigmoid()) if need[0] is not None else None,
                (g * (b - a).sigmoid()) if need[1] is not None else None)


class Xlogy(Function):
    """x * log(y), and 0 where x == 0 (even where log(y) is -inf), NaN where y is NaN: PyTorch's xlogy."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        xp, xd, yd = ctx.xp, x.data, y.data
        # log of 1 where x == 0: that element is 0 whatever y is, and needs no log(0) warning
        out = xp.where(xd == 0, _typed(yd, 0), xd * xp.log(xp.where(xd == 0, _typed(yd, 1), yd)))
        return xp.where(xp.isnan(yd), yd, out)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        need = ctx.next_edges
        gx = gy = None
        if need[0] is not None:  # log(y), and 0 where x == 0 and y <= 0 (as PyTorch): xlogy of a 0/1 mask
            live = _const(~((x.data == 0) & (y.data <= 0)), y)
            gx = g * Xlogy.apply(live.to(y.dtype), y)
        if need[1] is not None:
            gy = g * x / y
        return gx, gy


class ClampTensor(Function):
    """clamp with tensor bounds (either may be None): min(max(x, lo), hi), gradients as PyTorch's: x where
    lo <= x <= hi; lo where x < lo (and lo < hi); hi where x > hi (or hi < lo, where the result is hi)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x, lo, hi)
        out = x.data
        if lo is not None:
            out = ctx.xp.maximum(out, lo.data)
        if hi is not None:
            out = ctx.xp.minimum(out, hi.data)
        return out

    @staticmethod
    def backward(ctx, g):
        x, lo, hi = ctx.saved_tensors
        need = ctx.next_edges
        d = x.data
        above_lo = d >= lo.data if lo is not None else True
        below_hi = d <= hi.data if hi is not None else True
        zero = operand(0.0, g)

        def route(mask):
            # where() broadcasts g to the mask's shape; the engine sums it back to the input's shape
            return Where.apply(_const(ctx.xp.broadcast_to(mask, ctx.out_meta[0][0]), g), g, zero)

        gx = route(above_lo & below_hi) if need[0] is not None else None
        glo = ghi = None
        if lo is not None and need[1] is not None:
            glo = route((d < lo.data) & ((lo.data < hi.data) if hi is not None else True))
        if hi is not None and need[2] is not None:
            ghi = route((d > hi.data) | ((hi.data < lo.data) if lo is not None else False))
        return gx, glo, ghi


# ---- activations -------------------------------------------------------------------------------------------------
class Gelu(Function):
    """x * Phi(x) (Phi the standard normal CDF, through erf), or with approximate="tanh"
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as PyTorch."""

    @staticmethod
    def forward(ctx, x, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        xp, d = ctx.xp, x.data
        half = _typed(d, 0.5)
        if approximate == "tanh":
            inner = _typed(d, _GELU_TANH_SCALE) * (d + _typed(d, _GELU_TANH_CUBIC) * d * d * d)
            return half * d * (1 + xp.tanh(inner))
        return half * d * (1 + erf_array(xp, d * _typed(d, _SQRT_HALF)))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.approximate == "tanh":
            x2 = x * x
            t = ((x + x2 * x * _GELU_TANH_CUBIC) * _GELU_TANH_SCALE).tanh()
            slope = (t + 1.0) * 0.5 + x * (1.0 - t * t) * ((x2 * (3 * _GELU_TANH_CUBIC) + 1.0) * (
                0.5 * _GELU_TANH_SCALE))
            return g * slope, None
        cdf = (Erf.apply(x * _SQRT_HALF) + 1.0) * 0.5
        pdf = (x * x * -0.5).exp() * _INV_SQRT_2PI
        return g * (cdf + x * pdf), None


class Silu(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        d = x.data
        return d * kernels.get("sigmoid_fwd", d)(d)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = x.sigmoid()
        return g * (s * (x * (1.0 - s) + 1.0))


class Mish(Function):
    """x * tanh(softplus(x))."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        d = x.data
        return d * ctx.xp.tanh(kernels.get("softplus_fwd", d)(d, 1.0, 20.0))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = x.softplus().tanh()
        return g * (t + x * x.sigmoid() * (1.0 - t * t))


class Logsigmoid(Function):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): no overflow, no log(0) (log1p as the kernels compute it)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        xp, d = ctx.xp, x.data
        return xp.minimum(d, 0) - kernels.reference.log1p_small(xp, xp.exp(-abs(d)))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (-x).sigmoid()


class Softsign(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        d = x.data
        return d / (1 + abs(d))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        a = x.abs() + 1.0
        return g / (a * a)


class Celu(Function):
    """x for x > 0, alpha * (exp(x / alpha) - 1) otherwise."""
    save_output = True

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        xp, d = ctx.xp, x.data
        a = _typed(d, alpha)
        return xp.where(d > 0, d, xp.expm1(xp.minimum(d, 0) / a) * a)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        # exp(x / alpha) = output / alpha + 1 below 0, read from the output so the graph goes through it
        return g * where(x > 0, 1.0, ctx.output / ctx.alpha + 1.0), None


class Hardtanh(Function):
    """clamp(x, min_val, max_val); the gradient is 0 at the bounds themselves, as PyTorch's."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return ctx.xp.clip(x.data, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = x.data
        return g * _const(((d > ctx.lo) & (d < ctx.hi)).astype(d.dtype), x), None, None


class Hardsigmoid(Function):
    """relu6(x + 3) / 6; the gradient is 0 at -3 and 3, as PyTorch's."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        d = x.data
        return ctx.xp.clip(d / _typed(d, 6) + _typed(d, 0.5), 0, 1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = x.data
        return g * _const(((d > -3) & (d < 3)).astype(d.dtype) / _typed(d, 6), x)


# ---- public functions: math --------------------------------------------------------------------------------------
@register()
def square(x):
    return Square.apply(x)


@register()
def rsqrt(x):
    return Rsqrt.apply(x)


@register()
def reciprocal(x):
    return Reciprocal.apply(x)


@register()
def log1p(x):
    return Log1p.apply(x)


@register()
def expm1(x):
    return Expm1.apply(x)


@register()
def log2(x):
    return Log2.apply(x)


@register()
def exp2(x):
    return Exp2.apply(x)


@register()
def erf(x):
    return Erf.apply(x)


@register()
def sign(x):
    return Sign.apply(x)


@register()
def sinh(x):
    return Sinh.apply(x)


@register()
def cosh(x):
    return Cosh.apply(x)


@register("atan", "arctan")
def atan(x):
    return Atan.apply(x)


def _binary(name, fn, a, b):
    """A binary op where either side may be a Python number (the other one sets the dtype and device; register's
    function has refused a call with no tensor at all)."""
    if not isinstance(a, Tensor):
        return fn.apply(operand(a, b), b)
    return fn.apply(a, operand(b, a))


@register("atan2", "arctan2", number_first=True)
def atan2(input, other):
    return _binary("atan2", Atan2, input, other)


@register(number_first=True)
def hypot(input, other):
    return _binary("hypot", Hypot, input, other)


@register(number_first=True)
def logaddexp(input, other):
    return _binary("logaddexp", Logaddexp, input, other)


@register(number_first=True)
def xlogy(input, other):
    return _binary("xlogy", Xlogy, input, other)


@register("clamp", "clip")
def clamp(x, min=None, max=None):
    """Elementwise min(max(x, min), max). The bounds are numbers or tensors (broadcast against x)."""
    for arg, v in (("min", min), ("max", max)):
        if v is not None and not isinstance(v, Tensor):
            check_real(v, "clamp", arg, finite=False)
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        lo = None if min is None else operand(min, x)
        hi = None if max is None else operand(max, x)
        return ClampTensor.apply(x, lo, hi)
    return Clamp.apply(x, min, max)


clip = clamp


@register()
def clamp_min(x, min):
    return clamp(x, min=min)


@register()
def clamp_max(x, max):
    return clamp(x, max=max)


def pow(input, exponent):
    """input ** exponent, where either may be a number: ``tinygen.pow(2.0, x)`` as ``2.0 ** x``."""
    if not isinstance(input, Tensor):
        if not isinstance(exponent, Tensor):
            raise TypeError(f"pow: expected at least one tensor argument, got {type(input).__name__} and "
                            f"{type(exponent).__name__}")
        return _rpow(exponent, input)
    return _tensor_pow(input, exponent)


def rsub(input, other, alpha=1):
    """other - alpha * input (PyTorch's reversed subtraction); either may be a number."""
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        raise TypeError(f"rsub(): expected at least one tensor argument, got {type(input).__name__} and "
                        f"{type(other).__name__}")
    if alpha != 1:
        input = input * alpha
    return _binary("rsub", Sub, other, input)


# ---- public functions: activations -------------------------------------------------------------------------------
_GELU_APPROXIMATIONS = ("none", "tanh")


def gelu(x, approximate="none"):
    require_tensor(x, "gelu")
    if approximate not in _GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {_GELU_APPROXIMATIONS}, got {approximate!r}")
    return Gelu.apply(x, approximate)


def silu(x):
    require_tensor(x, "silu")
    return Silu.apply(x)


def mish(x):
    require_tensor(x, "mish")
    return Mish.apply(x)


def logsigmoid(x):
    require_tensor(x, "logsigmoid")
    return Logsigmoid.apply(x)


def softsign(x):
    require_tensor(x, "softsign")
    return Softsign.apply(x)


def selu(x):
    """scale * elu(x, alpha) with the self-normalising constants."""
    require_tensor(x, "selu")
    return Elu.apply(x, SELU_ALPHA) * SELU_SCALE


def celu(x, alpha=1.0):
    require_tensor(x, "celu")
    if alpha == 0:
        raise ValueError("celu: alpha must be non-zero (it divides x), got 0")
    return Celu.apply(x, float(alpha))


def hardtanh(x, min_val=-1.0, max_val=1.0):
    require_tensor(x, "hardtanh")
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) must not be greater than max_val ({max_val})")
    return Hardtanh.apply(x, float(min_val), float(max_val))


def relu6(x):
    require_tensor(x, "relu6")
    return Hardtanh.apply(x, 0.0, 6.0)


def hardsigmoid(x):
    require_tensor(x, "hardsigmoid")
    return Hardsigmoid.apply(x)
