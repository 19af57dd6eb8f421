"""Elementwise math and activations. Each backward is written with tinygen ops, so it can be differentiated again.

Constants that only scale a gradient (masks, slopes) are made from the input's array and carry no graph: the
second derivative through them is zero, which is the true value away from the kinks.
"""
from .. import backend, kernels
from ..autograd.function import Function
from ..autograd.grad_mode import STATE
from ..tensor import Tensor, _make, register
from .arithmetic import operand


def _const(data, like):
    return _make(data, like._device)


def _fused_bwd(name, s, g, *params):
    """g * act'(...) from a fused kernel (tinygen.kernels) under a plain backward, or None: then the formula in
    tinygen ops runs, as it must when a graph of the gradient is being built (create_graph=True)."""
    if STATE.grad_enabled:
        return None
    k = kernels.lookup(name, g.data)
    if k is None or s.data.dtype != g.data.dtype:
        return None
    return _make(k(s.data, g.data, *params), g._device)


class Exp(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.exp(x.data)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.output


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.log(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x


class Sqrt(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.sqrt(x.data)

    @staticmethod
    def backward(ctx, g):
        return g / (ctx.output * 2)


class Abs(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * _const(ctx.xp.sign(x.data), x)


class Sin(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.sin(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos()


class Cos(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.cos(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -(g * x.sin())


class Tanh(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.tanh(x.data)

    @staticmethod
    def backward(ctx, g):
        y = ctx.output
        fused = _fused_bwd("tanh_bwd", y, g)
        if fused is not None:
            return fused
        return g * (1 - y * y)


class Sigmoid(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x):
        # exp(-|x|) never overflows, so this is finite and accurate at any x
        xp, d = ctx.xp, x.data
        k = kernels.lookup("sigmoid_fwd", d)
        if k is not None:
            return k(d)
        e = xp.exp(-abs(d))
        return xp.where(d >= 0, 1 / (1 + e), e / (1 + e))

    @staticmethod
    def backward(ctx, g):
        y = ctx.output
        fused = _fused_bwd("sigmoid_bwd", y, g)
        if fused is not None:
            return fused
        return g * y * (1 - y)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        k = kernels.lookup("relu_fwd", x.data)
        if k is not None:
            return k(x.data)
        return ctx.xp.maximum(x.data, 0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        fused = _fused_bwd("relu_bwd", x, g)
        if fused is not None:
            return fused
        return g * (x > 0)


class LeakyRelu(Function):
    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        d = x.data
        k = kernels.lookup("leaky_relu_fwd", d)
        if k is not None:
            return k(d, slope)
        return ctx.xp.where(d > 0, d, d * d.dtype.type(slope))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        fused = _fused_bwd("leaky_relu_bwd", x, g, ctx.slope)
        if fused is not None:
            return fused, None
        t = x.data.dtype.type
        return g * _const(ctx.xp.where(x.data > 0, t(1), t(ctx.slope)), x), None


class Elu(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        d = x.data
        k = kernels.lookup("elu_fwd", d)
        if k is not None:
            return k(d, alpha)
        return ctx.xp.where(d > 0, d, ctx.xp.expm1(ctx.xp.minimum(d, 0)) * d.dtype.type(alpha))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.alpha >= 0:  # the kernel reads the sign of x from the output, which needs alpha >= 0
            fused = _fused_bwd("elu_bwd", ctx.output, g, ctx.alpha)
            if fused is not None:
                return fused, None
        return g * where(x > 0, 1.0, ctx.output + ctx.alpha), None


class Softplus(Function):
    @staticmethod
    def forward(ctx, x, beta, threshold):
        ctx.save_for_backward(x)
        ctx.beta, ctx.threshold = beta, threshold
        xp, d = ctx.xp, x.data
        k = kernels.lookup("softplus_fwd", d)
        if k is not None:
            return k(d, beta, threshold)
        bx = d * d.dtype.type(beta)
        soft = (xp.maximum(bx, 0) + xp.log1p(xp.exp(-abs(bx)))) / d.dtype.type(beta)  # log(1 + e^bx), no overflow
        return xp.where(bx > threshold, d, soft)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        fused = _fused_bwd("softplus_bwd", x, g, ctx.beta, ctx.threshold)
        if fused is not None:
            return fused, None, None
        bx = x * ctx.beta
        # above the threshold the forward is x itself, so the slope there is exactly 1 (as PyTorch)
        return g * where(bx > ctx.threshold, 1.0, bx.sigmoid()), None, None


class Clamp(Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return ctx.xp.clip(x.data, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = x.data
        inside = (d >= ctx.lo) if ctx.lo is not None else d == d
        if ctx.hi is not None:
            inside = inside & (d <= ctx.hi)
        return g * _const(inside, x), None, None


class Maximum(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.xp.maximum(a.data, b.data)

    @staticmethod
    def backward(ctx, g):
        return _split_by_winner(ctx, g, ctx.saved_tensors, lambda a, b: a > b)


class Minimum(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.xp.minimum(a.data, b.data)

    @staticmethod
    def backward(ctx, g):
        return _split_by_winner(ctx, g, ctx.saved_tensors, lambda a, b: a < b)


def _split_by_winner(ctx, g, saved, wins):
    """Gradient of max/min of two tensors: all to the winner, half each on a tie (as PyTorch)."""
    a, b = saved
    dt = g.data.dtype.type
    w = wins(a.data, b.data) * dt(1) + (a.data == b.data) * dt(0.5)
    wa = _const(w, g)
    need = ctx.next_edges
    return (g * wa if need[0] is not None else None), (g * (1 - wa) if need[1] is not None else None)


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.cond = cond
        return ctx.xp.where(cond.data, a.data, b.data)

    @staticmethod
    def backward(ctx, g):
        zero = operand(0, g)
        need = ctx.next_edges
        return (None,
                Where.apply(ctx.cond, g, zero) if need[1] is not None else None,
                Where.apply(ctx.cond, zero, g) if need[2] is not None else None)


class To(Function):
    """Change dtype and/or device; the gradient goes back to the input's dtype and device."""
    @staticmethod
    def forward(ctx, x, dtype, device):
        ctx.src = (x.data.dtype, x._device)
        data = x.data
        if device is not x._device:
            data = backend.to_device(data, device)
            ctx.device = device
        return data.astype(dtype) if data.dtype != dtype else data

    @staticmethod
    def backward(ctx, g):
        return g.to(*ctx.src), None, None


class Clone(Function):
    @staticmethod
    def forward(ctx, x):
        return x.data.copy()

    @staticmethod
    def backward(ctx, g):
        return g


# ---- public functions ------------------------------------------------------------------------------------------------
@register()
def exp(x):
    return Exp.apply(x)


@register()
def log(x):
    return Log.apply(x)


@register()
def sqrt(x):
    return Sqrt.apply(x)


@register("abs", "__abs__")
def abs_(x):
    return Abs.apply(x)


@register()
def sin(x):
    return Sin.apply(x)


@register()
def cos(x):
    return Cos.apply(x)


@register()
def tanh(x):
    return Tanh.apply(x)


@register()
def sigmoid(x):
    return Sigmoid.apply(x)


@register()
def relu(x):
    return Relu.apply(x)


@register()
def leaky_relu(x, negative_slope=0.01):
    return LeakyRelu.apply(x, float(negative_slope))


@register()
def elu(x, alpha=1.0):
    return Elu.apply(x, float(alpha))


@register()
def softplus(x, beta=1.0, threshold=20.0):
    return Softplus.apply(x, float(beta), float(threshold))


@register()
def maximum(a, b):
    return Maximum.apply(a, operand(b, a))


@register()
def minimum(a, b):
    return Minimum.apply(a, operand(b, a))


def where(condition, a, b):
    """Elementwise ``a if condition else b``; ``a`` and ``b`` may be tensors or numbers."""
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else condition
    if not isinstance(condition, Tensor) or condition.dtype.kind != "b":
        raise TypeError("where: condition must be a boolean tensor")
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = operand(a, _make(condition.xp.zeros((), dtype="float32"), condition._device))
        like = a
    return Where.apply(condition, operand(a, like), operand(b, like))


@register()
def clone(x):
    return Clone.apply(x)


@register()
def to(x, *args, dtype=None, device=None):
    """``x.to("cuda")``, ``x.to(tinygen.float64)``, ``x.to("cpu", tinygen.float32)`` or with keywords."""
    from ..dtypes import as_dtype
    for a in args:
        if isinstance(a, Tensor):
            dtype, device = a.dtype, a.device
        elif isinstance(a, str) and a.split(":")[0] in backend.DEVICES:
            device = a
        else:
            dtype = a
    dtype = x.data.dtype if dtype is None else as_dtype(dtype)
    device = x._device if device is None else backend.normalize_device(device)
    if dtype == x.data.dtype and device is x._device:
        return x
    if device != "cpu":
        backend.array_module(device)  # a clear error now if the device is unavailable
    return To.apply(x, dtype, device)
