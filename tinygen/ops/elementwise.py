"""Elementwise math and activations. Each backward is written with tinygen ops, so it can be differentiated again.

Constants that only scale a gradient (masks, slopes) are made from the input's array and carry no graph: the
second derivative through them is zero, which is the true value away from the kinks.

``elementwise``: the forward for one element, which ``tinygen.compile`` may fuse (see ops/arithmetic.py).
"""
from .. import backend, kernels
from ..autograd.function import Function
from .._checks import check_real
from ..tensor import Tensor, _make, register
from .arithmetic import operand


def _const(data, like):
    return _make(data, like._device)


class Exp(Function):
    elementwise = "exp({0})"
    elementwise_backward = ("{g} * {y}",)
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.exp(x.data)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.output

    @staticmethod
    def array_backward(ctx, g):  # the same arithmetic on arrays (a plain backward; no graph)
        return g * ctx.output_array


class Log(Function):
    elementwise = "log({0})"
    elementwise_backward = ("{g} / {s0}",)
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.log(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x

    @staticmethod
    def array_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x.data


class Sqrt(Function):
    elementwise = "sqrt({0})"
    elementwise_backward = ("{g} / ({y} + {y})",)  # y * 2, exactly
    save_output = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.sqrt(x.data)

    @staticmethod
    def backward(ctx, g):
        return g / (ctx.output * 2)

    @staticmethod
    def array_backward(ctx, g):
        return g / (ctx.output_array * 2)


class Abs(Function):
    elementwise = "abs({0})"
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * _const(ctx.xp.sign(x.data), x)

    @staticmethod
    def array_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.xp.sign(x.data)


class Sin(Function):
    elementwise = "sin({0})"
    elementwise_backward = ("{g} * cos({s0})",)
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.sin(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos()

    @staticmethod
    def array_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.xp.cos(x.data)


class Cos(Function):
    elementwise = "cos({0})"
    elementwise_backward = ("-({g} * sin({s0}))",)
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.cos(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -(g * x.sin())

    @staticmethod
    def array_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -(g * ctx.xp.sin(x.data))


class Tanh(Function):
    elementwise = "tanh({0})"
    save_output = True
    fresh_gradients = backward_into_gradient = True

    @staticmethod
    def forward(ctx, x):
        return ctx.xp.tanh(x.data)

    @staticmethod
    def backward(ctx, g):
        return grad_from_output(g, ctx.output, "tanh")

    @staticmethod
    def array_backward(ctx, g, out=None):
        y = ctx.output_array
        return kernels.get("tanh_bwd", y)(y, g, out=out)


class Sigmoid(Function):
    save_output = True
    fresh_gradients = backward_into_gradient = True

    @staticmethod
    def forward(ctx, x):
        return kernels.get("sigmoid_fwd", x.data)(x.data)  # exp(-|x|) inside: finite and accurate at any x

    @staticmethod
    def backward(ctx, g):
        return grad_from_output(g, ctx.output, "sigmoid")

    @staticmethod
    def array_backward(ctx, g, out=None):
        y = ctx.output_array
        return kernels.get("sigmoid_bwd", y)(y, g, out=out)


class Relu(Function):
    activation = "relu"  # tinygen.compile runs a layer that declares with_activation, then this, as one node
    fresh_gradients = backward_into_gradient = True

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return kernels.get("relu_fwd", x.data)(x.data)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)

    @staticmethod
    def array_backward(ctx, g, out=None):
        x = ctx.saved_tensors[0].data
        return kernels.get("relu_bwd", x)(x, g, out=out)


class LeakyRelu(Function):
    activation = "leaky_relu"  # (its slope: the second argument)
    fresh_gradients = backward_into_gradient = True

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return kernels.get("leaky_relu_fwd", x.data)(x.data, slope)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = x.data.dtype.type
        return g * _const(ctx.xp.where(x.data > 0, t(1), t(ctx.slope)), x), None

    @staticmethod
    def array_backward(ctx, g, out=None):
        x = ctx.saved_tensors[0].data
        return kernels.get("leaky_relu_bwd", x)(x, g, ctx.slope, out=out), None


class Elu(Function):
    save_output = True

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return kernels.get("elu_fwd", x.data)(x.data, alpha)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * where(x > 0, 1.0, ctx.output + ctx.alpha), None

    @staticmethod
    def array_backward(ctx, g):
        if ctx.alpha < 0:  # the kernel reads the sign of x from the output, which needs alpha >= 0
            return Elu.backward(ctx, _make(g, ctx.device))
        y = ctx.output_array
        return kernels.get("elu_bwd", y)(y, g, ctx.alpha), None


class Softplus(Function):
    @staticmethod
    def forward(ctx, x, beta, threshold):
        ctx.save_for_backward(x)
        ctx.beta, ctx.threshold = beta, threshold
        return kernels.get("softplus_fwd", x.data)(x.data, beta, threshold)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        bx = x * ctx.beta
        # above the threshold the forward is x itself, so the slope there is exactly 1 (as PyTorch)
        return g * where(bx > ctx.threshold, 1.0, bx.sigmoid()), None, None

    @staticmethod
    def array_backward(ctx, g):
        x = ctx.saved_tensors[0].data
        return kernels.get("softplus_bwd", x)(x, g, ctx.beta, ctx.threshold), None, None


def grad_from_output(g, y, act, p1=0.0, p2=0.0):
    """g * act'(x) written with the output y = act(x), differentiable in y (p1/p2: slope, alpha, beta/threshold)."""
    if act == "relu":
        return where(y > 0, g, 0.0)
    if act == "leaky_relu":
        return where(y > 0, g, g * p1)
    if act == "tanh":
        return g * (1 - y * y)
    if act == "sigmoid":
        return g * y * (1 - y)
    if act == "elu":
        return where(y > 0, g, g * (y + p1))
    if act == "softplus":  # sigmoid(beta x) = 1 - exp(-beta y); the forward is x itself above the threshold
        return where(y * p1 > p2, g, g * (1 - (y * -p1).exp()))
    raise ValueError(f"grad_from_output: unknown activation {act!r}")


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
    return LeakyRelu.apply(x, check_real(negative_slope, "leaky_relu", "negative_slope"))


@register()
def elu(x, alpha=1.0):
    return Elu.apply(x, check_real(alpha, "elu", "alpha"))


@register()
def softplus(x, beta=1.0, threshold=20.0):
    return Softplus.apply(x, check_real(beta, "softplus", "beta"), check_real(threshold, "softplus", "threshold"))


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
