"""Plain array implementations of every kernel: the definition of what each kernel computes.

Each function works with any array module (NumPy, CuPy, the CuPy stand-in): it picks the module from its
arguments and uses only that module's functions and array operators. The Numba versions (cpu.py) and the CuPy
versions (gpu.py) have the same signatures and must agree with these, which tests/test_kernels.py checks.

The activation and BCE formulas are written as ``_body(xp, ...)`` functions returning new arrays, so that gpu.py
can fuse the very same expression into one CUDA kernel; the optimizer steps are in-place operations on two scratch
arrays (no temporaries). Scalars are cast to the array's dtype first, so float32 data is computed in float32 (as
NumPy, CuPy and PyTorch do). tinygen.optim calls these steps (through ``kernels.get``); it has no copy of them.

Conventions:
  activations   ``<act>_fwd(x, ...) -> y`` and ``<act>_bwd(s, g, ...) -> gx`` where ``s`` is the input ``x`` for
                relu, leaky_relu and softplus, and the output ``y`` for tanh, sigmoid and elu (``alpha >= 0``);
  optimizers    ``*_step(param, grad, <state arrays>, <hyper-parameters>)`` update param and state in place,
                with PyTorch's formulas (torch.optim single-tensor code paths); the Numba loops round the same
                way, so a step gives the same bits with and without them. (PyTorch's own CPU loops use fused
                multiply-adds in places: agreement with it is within a few roundings.)
  mm            ``mm(a, b) = a @ b``; gemm.py picks operand layouts for BLAS around the same product.
"""
import contextlib
import functools
import operator

import numpy as np

from ..backend import array_module_of as _xp, check_flag

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus")


def _check_float(name, *arrays):
    for a in arrays:
        if a is not None and a.dtype.kind != "f":
            raise TypeError(f"{name}: expected floating arrays, got dtype {a.dtype}")


def log1p_small(xp, e):
    """log1p(e) for e in [0, 1] (e = exp(-|x|): softplus, log-sigmoid and BCE on logits), as
    log(w) * (e / (w - 1)) with w = 1 + e: the quotient undoes the rounding of 1 + e (e itself where w rounds to
    1). Within 5 ulps of log1p, and built on log, which NumPy vectorizes while its float32 log1p is a scalar loop:
    2x faster on the 32k-value blocks the Numba BCE kernel passes (143 against 297 us, AMD EPYC). On one large
    array its temporaries make it memory-bound: 0.8M values 4.4 against 7.2 ms when freed memory is kept
    (tinygen.keep_freed_memory, as the CLI does), 8.7 against 7.2 ms when it is not."""
    w = e + 1
    d = w - 1
    exact = d == 0
    return xp.where(exact, e, xp.log(w) * (e / xp.where(exact, 1, d)))


# ---- activations -------------------------------------------------------------------------------------------------
# ``p1`` / ``p2`` are the activation's parameters: slope (leaky_relu), alpha (elu), beta and threshold (softplus).

def _act_fwd_body(xp, act, x, p1, p2):
    if act == "identity":
        return x
    if act == "relu":
        return xp.maximum(x, 0)
    if act == "leaky_relu":
        return xp.where(x > 0, x, x * p1)
    if act == "tanh":
        return xp.tanh(x)
    if act == "sigmoid":
        e = xp.exp(-xp.abs(x))  # exp(-|x|) never overflows
        return xp.where(x >= 0, 1, e) / (1 + e)
    if act == "elu":
        return xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0)) * p1)
    if act == "softplus":
        bx = x * p1
        soft = (xp.maximum(bx, 0) + log1p_small(xp, xp.exp(-xp.abs(bx)))) / p1  # log(1 + e^bx) / beta, no overflow
        return xp.where(bx > p2, x, soft)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def _act_bwd_body(xp, act, s, g, p1, p2):
    """g * act'(...): ``s`` is x for relu/leaky_relu/softplus, y for tanh/sigmoid/elu."""
    if act == "identity":
        return g
    if act == "relu":
        return g * (s > 0)
    if act == "leaky_relu":
        return xp.where(s > 0, g, g * p1)
    if act == "tanh":
        return g * (1 - s * s)
    if act == "sigmoid":
        return g * s * (1 - s)
    if act == "elu":
        return g * xp.where(s > 0, 1, s + p1)
    if act == "softplus":  # sigmoid(beta x), and 1 above the threshold where the forward is x itself
        bx = s * p1
        return g * xp.where(bx > p2, 1, _act_fwd_body(xp, "sigmoid", bx, 0, 0))
    if act == "softplus_from_y":  # sigmoid(beta x) = 1 - exp(-beta y), accurate through expm1 for small y
        return g * xp.where(s * p1 > p2, 1, -xp.expm1(s * -p1))
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def _scalars(dtype, *values):
    return tuple(dtype.type(v) for v in values)


def act_fwd(x, act, p1=0.0, p2=0.0):
    """y = act(x) for an activation name in ACTIVATIONS (parameters as in _act_fwd_body)."""
    _check_float(f"{act}_fwd", x)
    return _act_fwd_body(_xp(x), act, x, *_scalars(x.dtype, p1, p2))


def act_bwd(s, g, act, p1=0.0, p2=0.0, out=None):
    """Gradient of act at ``s`` (x or y, see the module docstring) times the incoming gradient ``g``. ``out``: an
    array of g's shape and dtype the result may be written into (g itself, when the caller no longer needs g); a
    kernel may leave it unused, so use what it returns. This definition does."""
    _check_float(f"{act}_bwd", s, g)
    _check_shapes(f"{act}_bwd", s, g)
    if act == "elu" and p1 < 0:
        raise ValueError(f"elu_bwd computes from the output, which needs alpha >= 0, got alpha={p1}")
    return _act_bwd_body(_xp(s), act, s, g, *_scalars(g.dtype, p1, p2))


def _check_shapes(name, *arrays):
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"{name}: arrays must have the same shape, got {[a.shape for a in arrays if a is not None]}")


# The public per-activation kernels (relu_fwd(x), leaky_relu_bwd(x, g, negative_slope), ...), made from this one
# list for every backend by activation_kernels(): name -> the parameters passed on as p1, p2, with their defaults.
ACTIVATION_PARAMS = {"relu": (), "leaky_relu": (("negative_slope", 0.01),), "tanh": (), "sigmoid": (),
                     "elu": (("alpha", 1.0),), "softplus": (("beta", 1.0), ("threshold", 20.0))}


def activation_kernels(act_fwd, act_bwd):
    """{"<act>_fwd": fn, "<act>_bwd": fn} for every activation in ACTIVATION_PARAMS, calling a backend's generic
    ``act_fwd(x, act, p1, p2)`` / ``act_bwd(s, g, act, p1, p2)``. The functions are written out from the list (as
    dataclasses write ``__init__``), so a call costs what a hand-written wrapper does."""
    table = {}
    for act, params in ACTIVATION_PARAMS.items():
        signature = "".join(f", {name}={default!r}" for name, default in params)
        passed = "".join(f", {name}" for name, _ in params)
        s = "x" if act in _FROM_X else "y"
        source = (f"def {act}_fwd(x{signature}):\n"
                  f"    return act_fwd(x, {act!r}{passed})\n"
                  f"def {act}_bwd({s}, g{signature}, out=None):\n"
                  f"    return act_bwd({s}, g, {act!r}{passed}, out=out)\n")
        namespace = {"act_fwd": act_fwd, "act_bwd": act_bwd, "__name__": act_fwd.__module__}
        exec(source, namespace)  # noqa: S102 - source built above from ACTIVATION_PARAMS only
        fwd, bwd = namespace[f"{act}_fwd"], namespace[f"{act}_bwd"]
        fwd.__doc__ = f"{act}(x) (see act_fwd)"
        bwd.__doc__ = f"g * {act}'(x), from {s} (see act_bwd)"
        table[fwd.__name__], table[bwd.__name__] = fwd, bwd
    return table


_FROM_X = ("relu", "leaky_relu", "softplus")
globals().update(activation_kernels(act_fwd, act_bwd))


# ---- bias + activation after a matmul ----------------------------------------------------------------------------
_FROM_Y = {"identity": "identity", "relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh",
           "sigmoid": "sigmoid", "elu": "elu", "softplus": "softplus_from_y"}


def check_bias_act(name, y, b, act, p1):
    """The arguments of bias_act_*: 2-D y, 1-D b of y's width, and an activation invertible from its output."""
    if act not in _FROM_Y:
        raise ValueError(f"{name}: unknown activation {act!r}; expected one of {ACTIVATIONS}")
    if act in ("leaky_relu", "elu") and p1 < 0:
        raise ValueError(f"{name}: {act} with a negative parameter ({p1}) cannot be differentiated from its "
                         f"output; use the separate activation op")
    if y.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (batch, features) array, got shape {y.shape}")
    if b is not None and b.shape != (y.shape[1],):
        raise ValueError(f"{name}: bias of shape {b.shape} does not match {y.shape[1]} features (y {y.shape})")
    _check_float(name, y, b)


def bias_act_fwd(y, b, act="identity", p1=0.0, p2=0.0):
    """In place: y = act(y + b) for y = x @ W.T (2-D, writable) and bias b (or None). Returns y.

    The backward needs only this output (every supported activation's derivative is a function of it).
    """
    check_bias_act("bias_act_fwd", y, b, act, p1)
    xp = _xp(y)
    if b is not None:
        y += b
    y[...] = _act_fwd_body(xp, act, y, *_scalars(y.dtype, p1, p2))
    return y


def bias_act_bwd(y, g, act="identity", p1=0.0, p2=0.0, bias_grad=True, out=None):
    """(g_pre, gb): the gradient before the activation from its output ``y``, and its column sum (or None).
    ``out``: as act_bwd's (unused here)."""
    check_bias_act("bias_act_bwd", y, None, act, p1)
    _check_shapes("bias_act_bwd", y, g)
    xp = _xp(y)
    gpre = _act_bwd_body(xp, _FROM_Y[act], y, g, *_scalars(g.dtype, p1, p2))
    if gpre is g:
        gpre = g.copy()
    return gpre, (gpre.sum(axis=0) if bias_grad else None)


# ---- optimizers (in place) ---------------------------------------------------------------------------------------
# PyTorch's update rules (torch.optim, single-tensor code paths), written as in-place array operations with two
# scratch arrays, so a step makes no temporaries. ``scratch``: a function (param) -> two arrays shaped like param,
# e.g. an optimizer's reusable buffers (allocating them each step costs more than a small step itself); without
# it they are allocated. The Numba kernels need no scratch; an optimizer's workspace (optim.optimizer.Workspace)
# also keeps their flat views of the parameters and states between steps. Scalars are Python floats;
# NumPy and CuPy apply them in the array's dtype. cpu.py's loops do the same operations in the same order, so they
# give these bits.
# Running averages (momentum buffers, Adam's moments, RMSprop's averages) are flushed to zero where they become
# subnormal: a unit whose gradient stays exactly zero (a dead ReLU) has its averages decay geometrically into
# subnormals, and arithmetic on subnormals is many times slower on x86 (XLA flushes them too). The largest value
# flushed is below 1.2e-38 (float32), far under any step that could move a parameter.

def _scratch(xp, param, scratch):
    return scratch(param) if scratch is not None else (xp.empty_like(param), xp.empty_like(param))


def _effective_grad(xp, param, grad, weight_decay, maximize, out):
    """The gradient the update follows: ±grad + weight_decay * param, written into ``out`` when it differs from
    ``grad`` (which is never modified)."""
    if weight_decay:
        xp.multiply(param, weight_decay, out=out)
        if maximize:
            out -= grad
        else:
            out += grad
        return out
    if maximize:
        return xp.negative(grad, out=out)
    return grad


def scalar_as(value, dtype):
    """A learning rate as the update meets its arrays, in their ``dtype``: a number cast as NumPy casts a Python
    float meeting a float array, or a 0-d array (a rate held on the device) cast there, without reading it back."""
    return value.astype(dtype) if hasattr(value, "astype") else dtype.type(value)


def lerp_small(weight):
    """PyTorch's lerp(a, b, w) rounds as a + w * (b - a) when |w| < 0.5, and as b - (b - a) * (1 - w) otherwise."""
    return abs(weight) < 0.5


def _flush_subnormal_(xp, avg, tmp):
    """avg = 0 where |avg| is below the dtype's smallest normal number (a subnormal), in place, as ``avg * 0`` (so
    the sign stays, and NaN stays NaN)."""
    xp.absolute(avg, out=tmp)
    xp.greater_equal(tmp, subnormal_limit(avg.dtype), out=tmp)  # 1 where avg is kept, else 0
    avg *= tmp


@functools.lru_cache(maxsize=None)  # finfo costs a microsecond a call; optimizer steps ask every step
def subnormal_limit(dtype):
    """The smallest positive normal number of a float dtype (as a scalar of that dtype): below it, in magnitude, a
    value is subnormal."""
    return np.finfo(dtype).tiny


def _lerp_(xp, avg, target, weight, tmp):
    """avg = lerp(avg, target, weight) in place (a running average), rounded as torch.lerp."""
    xp.subtract(target, avg, out=tmp)
    if lerp_small(weight):
        tmp *= weight
        avg += tmp
    else:
        tmp *= 1 - weight
        xp.subtract(target, tmp, out=avg)


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
             maximize=False, first_step=False, scratch=None):
    """One in-place SGD step::

        g = ±grad + weight_decay * param
        buf = g on the first step (``first_step=True``), else momentum * buf + (1 - dampening) * g
        buf = 0 where it is subnormal
        g = g + momentum * buf (Nesterov) or buf;  param -= lr * g

    ``momentum_buffer`` is an array like param when momentum != 0 (else None); ``lr`` a number, or a 0-d array
    holding it (a learning rate kept on the device).
    """
    check_sgd(param, grad, momentum_buffer, momentum)
    xp = _xp(param)
    w0, w1 = _scratch(xp, param, scratch)
    g = _effective_grad(xp, param, grad, weight_decay, maximize, w0)
    if momentum:
        buf = momentum_buffer
        if first_step:
            buf[...] = g
        else:
            buf *= momentum
            if dampening:
                xp.multiply(g, 1 - dampening, out=w1)
                buf += w1
            else:
                buf += g
        _flush_subnormal_(xp, buf, w1)
        if nesterov:
            xp.multiply(buf, momentum, out=w1)
            w1 += g
            g = w1
        else:
            g = buf
    xp.multiply(g, scalar_as(lr, param.dtype), out=w1)
    param -= w1


def sgd_steps(params, grads, momentum_buffers, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              maximize=False, first_steps=None, scratch=None):
    """``sgd_step`` on each of several parameters (sequences of arrays; ``momentum_buffers`` None or a list with None
    where momentum is 0; ``first_steps`` one flag per parameter, default all False): the multi-tensor form, one
    call per optimizer step, which a fast version may run as one kernel call over all of them."""
    bufs = momentum_buffers if momentum_buffers is not None else [None] * len(params)
    firsts = first_steps if first_steps is not None else [False] * len(params)
    for p, g, buf, first in zip(params, grads, bufs, firsts):
        sgd_step(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, maximize, first, scratch)


def check_sgd(param, grad, momentum_buffer, momentum):
    _check_optimizer("sgd_step", param, grad, momentum_buffer if momentum != 0 else None)
    if momentum != 0 and momentum_buffer is None:
        raise ValueError("sgd_step: momentum != 0 needs a momentum_buffer array")


def adam_scalars(lr, beta1, beta2, weight_decay, step):
    """(step_size, bias_correction2_sqrt, decay) of one Adam step, with PyTorch's bias corrections. ``step``: the
    count, or a 0-d array holding it (a capturable Adam's); ``lr``: a number, or a 0-d array; both read here."""
    step, lr = int(step), float(lr)
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1 (the number of this update), got {step}")
    return (*adam_bias_corrections(operator.pow, step, lr, beta1, beta2), adam_decay(lr, weight_decay))


def adam_decay(lr, weight_decay):
    """AdamW's decoupled decay factor of the parameters, ``1 - lr * weight_decay``."""
    return 1 - lr * weight_decay


def adam_bias_corrections(power, step, lr, beta1, beta2):
    """(step_size, bias_correction2_sqrt) of step ``step``: ``power`` is Python's ``**`` for a count on the host,
    the array module's ``power`` for one on the device (gpu.py), both C's pow: the same values."""
    return lr / (1 - power(beta1, step)), power(1 - power(beta2, step), 0.5)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled,
              step, maximize=False, scratch=None):
    """One in-place Adam (``decoupled=False``: L2 weight decay) or AdamW (``decoupled=True``) step::

        param *= 1 - lr * weight_decay                      (AdamW: decoupled decay)
        g = ±grad (+ weight_decay * param)                  (Adam: L2 penalty in the gradient)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g;  m, v = 0 where subnormal
        v_max = max(v_max, v)                               (AMSGrad; used instead of v below)
        param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    ``step`` is the number of this update (1 on the first), or a 0-d array holding it; ``lr`` a number, or a 0-d
    array holding it; ``max_exp_avg_sq`` is an array for amsgrad, else None.
    """
    _check_optimizer("adam_step", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    step_size, bias_correction2_sqrt, decay = adam_scalars(lr, beta1, beta2, weight_decay, step)
    xp = _xp(param)
    w0, w1 = _scratch(xp, param, scratch)
    if weight_decay and decoupled:
        param *= decay
        weight_decay = 0
    g = _effective_grad(xp, param, grad, weight_decay, maximize, w0)
    _lerp_(xp, exp_avg, g, 1 - beta1, w1)
    _flush_subnormal_(xp, exp_avg, w1)
    exp_avg_sq *= beta2
    xp.multiply(g, 1 - beta2, out=w1)
    w1 *= g
    exp_avg_sq += w1
    _flush_subnormal_(xp, exp_avg_sq, w1)
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        second = xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    xp.sqrt(second, out=w1)
    w1 /= bias_correction2_sqrt
    w1 += eps
    xp.divide(exp_avg, w1, out=w1)
    w1 *= step_size
    param -= w1


def adam_steps(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
               decoupled, step, maximize=False, scratch=None):
    """``adam_step`` on each of several parameters with one step count (sequences of arrays; ``max_exp_avg_sqs`` is
    None without amsgrad): the multi-tensor form, one call per optimizer step, which a fast version may run as
    one kernel call over all of them."""
    vmaxs = max_exp_avg_sqs if max_exp_avg_sqs is not None else [None] * len(params)
    for p, g, m, v, vmax in zip(params, grads, exp_avgs, exp_avg_sqs, vmaxs):
        adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, step, maximize, scratch)


def ema_update(average, value, decay):
    """``average = decay * average + (1 - decay) * value``, in place: a step of an exponential moving average of
    parameters (the scalars meet the arrays in the arrays' dtype, as NumPy casts a Python float)."""
    if average.shape != value.shape or average.dtype != value.dtype:
        raise ValueError(f"ema_update: the average ({average.shape}, {average.dtype}) and the value "
                         f"({value.shape}, {value.dtype}) must have one shape and dtype")
    if hasattr(decay, "astype"):  # a 0-d array (a count kept on the device): rounded as a Python float would be
        decay, keep = decay.astype(average.dtype), (1.0 - decay).astype(average.dtype)
    else:
        keep = 1.0 - decay
    average *= decay
    average += keep * value


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, maximize=False, scratch=None):
    """One in-place RMSprop step::

        g = ±grad + weight_decay * param;  s = alpha * s + (1 - alpha) * g * g
        a = lerp(a, g, 1 - alpha)                           (centered)
        d = sqrt(s - a * a) (centered) or sqrt(s), then + eps
        buf = momentum * buf + g / d; param -= lr * buf     (momentum > 0)
        param -= g / d * lr                                 (otherwise)

    s, a and buf are set to 0 where they become subnormal (as each is updated).

    ``grad_avg`` is needed when centered, ``momentum_buffer`` when momentum > 0 (both start as zeros, as in
    PyTorch); pass None otherwise. ``lr``: a number, or a 0-d array holding it.
    """
    check_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, momentum, centered)
    xp = _xp(param)
    lr = scalar_as(lr, param.dtype)
    w0, w1 = _scratch(xp, param, scratch)
    g = _effective_grad(xp, param, grad, weight_decay, maximize, w0)
    square_avg *= alpha
    xp.multiply(g, 1 - alpha, out=w1)
    w1 *= g
    square_avg += w1
    _flush_subnormal_(xp, square_avg, w1)
    if centered:
        _lerp_(xp, grad_avg, g, 1 - alpha, w1)
        _flush_subnormal_(xp, grad_avg, w1)
        xp.multiply(grad_avg, grad_avg, out=w1)
        xp.subtract(square_avg, w1, out=w1)
        xp.sqrt(w1, out=w1)
    else:
        xp.sqrt(square_avg, out=w1)
    w1 += eps
    xp.divide(g, w1, out=w1)
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += w1
        _flush_subnormal_(xp, momentum_buffer, w1)
        xp.multiply(momentum_buffer, lr, out=w1)
    else:
        w1 *= lr
    param -= w1


def rmsprop_steps(params, grads, square_avgs, grad_avgs, momentum_buffers, lr, alpha=0.99, eps=1e-8,
                  weight_decay=0.0, momentum=0.0, centered=False, maximize=False, scratch=None):
    """``rmsprop_step`` on each of several parameters (sequences of arrays; ``grad_avgs`` None unless centered,
    ``momentum_buffers`` None unless momentum > 0): the multi-tensor form, one call per optimizer step."""
    gas = grad_avgs if grad_avgs is not None else [None] * len(params)
    bufs = momentum_buffers if momentum_buffers is not None else [None] * len(params)
    for p, g, v, ga, buf in zip(params, grads, square_avgs, gas, bufs):
        rmsprop_step(p, g, v, ga, buf, lr, alpha, eps, weight_decay, momentum, centered, maximize, scratch)


def check_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, momentum, centered):
    _check_optimizer("rmsprop_step", param, grad, square_avg, grad_avg if centered else None,
                     momentum_buffer if momentum > 0 else None)
    if centered and grad_avg is None:
        raise ValueError("rmsprop_step: centered=True needs a grad_avg array")
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("rmsprop_step: momentum > 0 needs a momentum_buffer array")


def _check_optimizer(name, param, *others):
    dtype, shape = param.dtype, param.shape
    if dtype.kind != "f":
        raise TypeError(f"{name}: expected floating arrays, got dtype {dtype}")
    for o in others:
        if o is not None and (o.dtype != dtype or o.shape != shape):
            raise ValueError(f"{name}: state and gradient arrays must match the parameter "
                             f"({param.shape}, {param.dtype}), got ({o.shape}, {o.dtype})")


# ---- batch normalization (training mode) -------------------------------------------------------------------------
def _bn_axes(name, x):
    if x.ndim < 2:
        raise ValueError(f"{name}: expected (N, C, *) input, got shape {x.shape}")
    return (0,) + tuple(range(2, x.ndim))


def _bn_shape(x, v):
    """A per-channel (C,) array shaped to broadcast against x (N, C, *)."""
    return v.reshape((-1,) + (1,) * (x.ndim - 2))


def batchnorm_fwd(x, weight, bias, eps=1e-5):
    """Batch norm in training mode: statistics over every axis but the channel axis 1 of (N, C, *) input.

    Returns (y, x_hat, mean, var, inv_std): var is the biased variance (PyTorch normalizes with it; the running
    variance uses the unbiased one, var * n / (n - 1)), inv_std = 1 / sqrt(var + eps), x_hat = (x - mean) * inv_std.
    """
    axes = _bn_axes("batchnorm_fwd", x)
    _check_float("batchnorm_fwd", x, weight, bias)
    xp = _xp(x)
    mean = x.mean(axis=axes)
    xc = x - _bn_shape(x, mean)
    var = (xc * xc).mean(axis=axes)
    inv_std = 1 / xp.sqrt(var + x.dtype.type(eps))
    x_hat = xc * _bn_shape(x, inv_std)
    y = x_hat
    if weight is not None:
        y = y * _bn_shape(x, weight)
    if bias is not None:
        y = y + _bn_shape(x, bias)
    if y is x_hat:
        y = x_hat.copy()
    return y, x_hat, mean, var, inv_std


def batchnorm_bwd(g, x_hat, weight, inv_std):
    """(gx, gw, gb) of batchnorm_fwd's y given its gradient ``g`` (gw, gb are returned even when weight is None)."""
    axes = _bn_axes("batchnorm_bwd", x_hat)
    _check_shapes("batchnorm_bwd", g, x_hat)
    n = x_hat.size // x_hat.shape[1]
    gb = g.sum(axis=axes)
    gw = (g * x_hat).sum(axis=axes)
    scale = inv_std / n if weight is None else weight * inv_std / n
    gx = _bn_shape(x_hat, scale) * (n * g - _bn_shape(x_hat, gb) - x_hat * _bn_shape(x_hat, gw))
    return gx, gw, gb


# ---- batch norm + activation (nn.Sequential runs BatchNorm followed by ReLU or LeakyReLU as one node) -------------
BN_ACTIVATIONS = ("identity", "relu", "leaky_relu")


def check_bn_act(name, act, p1):
    """An activation the fused batch norm takes: one whose derivative its output gives (leaky_relu's slope >= 0)."""
    if act not in BN_ACTIVATIONS:
        raise ValueError(f"{name}: activation must be one of {BN_ACTIVATIONS}, got {act!r}")
    if act == "leaky_relu" and p1 < 0:
        raise ValueError(f"{name}: leaky_relu with a negative slope ({p1}) cannot be differentiated from its "
                         f"output; use the separate activation op")


def batchnorm_act_fwd(x, weight, bias, eps=1e-5, act="identity", p1=0.0):
    """act(batch norm of x) in training mode, ``act`` in BN_ACTIVATIONS (``p1``: leaky_relu's slope).

    Returns batchnorm_fwd's (y, x_hat, mean, var, inv_std) with y activated: the backward needs y and x_hat.
    """
    check_bn_act("batchnorm_act_fwd", act, p1)
    y, x_hat, mean, var, inv_std = batchnorm_fwd(x, weight, bias, eps)
    if act != "identity":
        y = _act_fwd_body(_xp(y), act, y, *_scalars(y.dtype, p1, 0.0))
    return y, x_hat, mean, var, inv_std


def batchnorm_act_bwd(g, y, x_hat, weight, inv_std, act="identity", p1=0.0):
    """(gx, gw, gb) of batchnorm_act_fwd given the gradient ``g`` of its output ``y``."""
    check_bn_act("batchnorm_act_bwd", act, p1)
    _check_float("batchnorm_act_bwd", g, y)
    _check_shapes("batchnorm_act_bwd", g, y)
    g = _act_bwd_body(_xp(y), act, y, g, *_scalars(g.dtype, p1, 0.0))
    return batchnorm_bwd(g, x_hat, weight, inv_std)


# ---- losses --------------------------------------------------------------------------------------------------------
_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(name, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def bce_with_logits(x, t, weight=None, pos_weight=None, reduction="mean", need_grad=True):
    """Binary cross-entropy on logits, as torch.nn.functional.binary_cross_entropy_with_logits.

    loss = -w * (pw * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))), computed stably as
    (1 - t) * x - (1 + (pw - 1) t) * log_sigmoid(x). ``weight`` broadcasts to x; ``pos_weight`` to x's last axis.
    Returns (loss, grad): loss of x's shape for "none", else a 0-d array; grad = d(loss summed / averaged)/dx
    (for "none": d(loss.sum())/dx, i.e. per element), or None without ``need_grad``.
    """
    check_bce("bce_with_logits", x, t, weight, pos_weight, reduction)
    xp = _xp(x)
    loss, grad = _bce_body(xp, x, t, weight, pos_weight, need_grad)
    if grad is not None and reduction == "mean" and x.size:
        grad = grad * x.dtype.type(1 / x.size)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.mean()
    return loss, grad


def _bce_body(xp, x, t, w, pw, need_grad):
    """Per-element loss and d loss / dx of bce_with_logits (weights applied, no reduction)."""
    e = xp.exp(-xp.abs(x))  # never overflows
    log_sig = xp.minimum(x, 0) - log1p_small(xp, e)  # log(sigmoid(x))
    if pw is not None:
        lw = 1 + (pw - 1) * t
        loss = (1 - t) * x - lw * log_sig
    else:
        loss = (1 - t) * x - log_sig
    if w is not None:
        loss = loss * w
    grad = None
    if need_grad:
        s = xp.where(x >= 0, 1, e) / (1 + e)  # sigmoid(x)
        grad = s - t if pw is None else lw * s - pw * t
        if w is not None:
            grad = grad * w
    return loss, grad


def check_bce(name, x, t, weight, pos_weight, reduction):
    _check_reduction(name, reduction)
    _check_float(name, x, t, weight, pos_weight)
    if t.shape != x.shape:
        raise ValueError(f"{name}: target shape {t.shape} must equal input shape {x.shape}")
    for label, w in (("weight", weight), ("pos_weight", pos_weight)):
        if w is not None and not _broadcasts_to(w.shape, x.shape):
            raise ValueError(f"{name}: {label} of shape {w.shape} does not broadcast to the input shape {x.shape}")


def _broadcasts_to(shape, target):
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def log_softmax_fwd(x):
    """log_softmax over the last axis (shift by the row maximum, then subtract the log-sum-exp)."""
    _check_float("log_softmax_fwd", x)
    xp = _xp(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_bwd(y, g):
    """Gradient of log_softmax over the last axis from its output y: g - exp(y) * sum(g)."""
    _check_float("log_softmax_bwd", y, g)
    _check_shapes("log_softmax_bwd", y, g)
    xp = _xp(y)
    return g - xp.exp(y) * g.sum(axis=-1, keepdims=True)


def check_targets(name, logits, target, weight, ignore_index):
    """Validate cross_entropy's arguments; raise IndexError naming the first out-of-range class index."""
    if logits.ndim != 2:
        raise ValueError(f"{name}: expected (N, C) logits, got shape {logits.shape}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"{name}: target shape {target.shape} must be ({logits.shape[0]},) for logits "
                         f"{logits.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {target.dtype}")
    if weight is not None and weight.shape != (logits.shape[1],):
        raise ValueError(f"{name}: weight shape {weight.shape} must be ({logits.shape[1]},)")
    _check_float(name, logits, weight)


def _bad_target(xp, target, n_classes, ignore_index):
    bad = ((target < 0) | (target >= n_classes)) & (target != ignore_index)

    def fail():
        i = int(xp.argmax(bad))
        raise IndexError(f"cross_entropy: target {int(target[i])} at row {i} is out of range for "
                         f"{n_classes} classes")
    check_flag(bad.any(), fail)


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", need_grad=True):
    """Cross-entropy of (N, C) logits with integer targets, as torch.nn.functional.cross_entropy.

    Row loss = w[t] * (logsumexp(x) - x[t]); rows whose target is ``ignore_index`` count zero. "mean" divides by
    the summed weight of the counted rows (their number without ``weight``), as PyTorch. Returns (loss, grad) with
    grad = d loss / d logits = w[t] * (softmax(x) - onehot(t)) scaled like the loss (None without ``need_grad``).
    """
    _check_reduction("cross_entropy", reduction)
    check_targets("cross_entropy", logits, target, weight, ignore_index)
    xp = _xp(logits)
    n, c = logits.shape
    _bad_target(xp, target, c, ignore_index)
    dt = logits.dtype
    keep = target != ignore_index
    safe = xp.where(keep, target, 0)
    y = log_softmax_fwd(logits)
    rows = xp.arange(n)
    w = (weight[safe] if weight is not None else xp.ones(n, dtype=dt)) * keep.astype(dt)
    loss = -y[rows, safe] * w
    grad = None
    if need_grad:
        grad = xp.exp(y)
        grad[rows, safe] -= 1
        grad *= w[:, None]
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return loss.sum(), grad
    total = w.sum()
    errstate = getattr(xp, "errstate", None)  # NumPy: every row ignored gives 0 / 0 = nan, as PyTorch, quietly
    with errstate(invalid="ignore", divide="ignore") if errstate else contextlib.nullcontext():
        if grad is not None:
            grad /= total
        return loss.sum() / total, grad



# ---- matrix product ------------------------------------------------------------------------------------------------
def mm(a, b):
    """a @ b (gemm.py chooses the operands' layout for speed; the result is this one's)."""
    return a @ b


from .conv import (conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight, max_pool2d_fwd, max_pool2d_bwd,  # noqa: E402,F401
                   separable_map2d)
