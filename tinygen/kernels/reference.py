"""Plain array implementations of every kernel: the definition of what each kernel computes.

Each function works with any array module (NumPy, CuPy, the CuPy stand-in): it picks the module from its
arguments and uses only that module's functions and array operators. The Numba versions (cpu.py) and the CuPy
versions (gpu.py) have the same signatures and must agree with these, which tests/test_kernels.py checks.

The activation and optimizer formulas are written as ``_body(xp, ...)`` functions returning new arrays, so that
gpu.py can fuse the very same expression into one CUDA kernel. Scalars are cast to the array's dtype first, so
float32 data is computed in float32 (as NumPy, CuPy and PyTorch do).

Conventions:
  activations   ``<act>_fwd(x, ...) -> y`` and ``<act>_bwd(s, g, ...) -> gx`` where ``s`` is the input ``x`` for
                relu, leaky_relu and softplus, and the output ``y`` for tanh, sigmoid and elu (``alpha >= 0``);
  optimizers    ``*_step(param, grad, <state arrays>, <hyper-parameters>)`` update param and state in place,
                with PyTorch's formulas (torch.optim single-tensor code paths), rounded as tinygen.optim's array
                code rounds them, so a step gives the same bits with and without the kernels. (PyTorch's own
                CPU loops use fused multiply-adds in places: agreement with it is within a few roundings.)
"""
import contextlib

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus")


def array_module_of(*arrays):
    """numpy, cupy or the stand-in, from the first array argument (None arguments are skipped)."""
    for a in arrays:
        if a is None or isinstance(a, (int, float)):
            continue
        if isinstance(a, (np.ndarray, np.generic)):
            return np
        from ..backend import StandinArray, standin
        if isinstance(a, StandinArray):
            return standin
        import cupy
        return cupy.get_array_module(a)
    raise TypeError("expected at least one array argument")


def _check_float(name, *arrays):
    for a in arrays:
        if a is not None and a.dtype.kind != "f":
            raise TypeError(f"{name}: expected floating arrays, got dtype {a.dtype}")


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
        soft = (xp.maximum(bx, 0) + xp.log1p(xp.exp(-xp.abs(bx)))) / p1  # log(1 + e^bx) / beta without overflow
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
    return _act_fwd_body(array_module_of(x), act, x, *_scalars(x.dtype, p1, p2))


def act_bwd(s, g, act, p1=0.0, p2=0.0):
    """Gradient of act at ``s`` (x or y, see the module docstring) times the incoming gradient ``g``."""
    _check_float(f"{act}_bwd", s, g)
    _check_shapes(f"{act}_bwd", s, g)
    if act == "elu" and p1 < 0:
        raise ValueError(f"elu_bwd computes from the output, which needs alpha >= 0, got alpha={p1}")
    return _act_bwd_body(array_module_of(s), act, s, g, *_scalars(g.dtype, p1, p2))


def _check_shapes(name, *arrays):
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"{name}: arrays must have the same shape, got {[a.shape for a in arrays if a is not None]}")


def relu_fwd(x):
    return act_fwd(x, "relu")


def relu_bwd(x, g):
    return act_bwd(x, g, "relu")


def leaky_relu_fwd(x, negative_slope=0.01):
    return act_fwd(x, "leaky_relu", negative_slope)


def leaky_relu_bwd(x, g, negative_slope=0.01):
    return act_bwd(x, g, "leaky_relu", negative_slope)


def tanh_fwd(x):
    return act_fwd(x, "tanh")


def tanh_bwd(y, g):
    return act_bwd(y, g, "tanh")


def sigmoid_fwd(x):
    return act_fwd(x, "sigmoid")


def sigmoid_bwd(y, g):
    return act_bwd(y, g, "sigmoid")


def elu_fwd(x, alpha=1.0):
    return act_fwd(x, "elu", alpha)


def elu_bwd(y, g, alpha=1.0):
    return act_bwd(y, g, "elu", alpha)


def softplus_fwd(x, beta=1.0, threshold=20.0):
    return act_fwd(x, "softplus", beta, threshold)


def softplus_bwd(x, g, beta=1.0, threshold=20.0):
    return act_bwd(x, g, "softplus", beta, threshold)


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
    xp = array_module_of(y)
    if b is not None:
        y += b
    y[...] = _act_fwd_body(xp, act, y, *_scalars(y.dtype, p1, p2))
    return y


def bias_act_bwd(y, g, act="identity", p1=0.0, p2=0.0, bias_grad=True):
    """(g_pre, gb): the gradient before the activation from its output ``y``, and its column sum (or None)."""
    check_bias_act("bias_act_bwd", y, None, act, p1)
    _check_shapes("bias_act_bwd", y, g)
    xp = array_module_of(y)
    gpre = _act_bwd_body(xp, _FROM_Y[act], y, g, *_scalars(g.dtype, p1, p2))
    if gpre is g:
        gpre = g.copy()
    return gpre, (gpre.sum(axis=0) if bias_grad else None)


# ---- optimizers (in place) ---------------------------------------------------------------------------------------
# Each step is split in three parts shared by all versions: ``*_consts`` forms the scalars in Python and casts them
# to the parameter's dtype (as PyTorch does with a Python scalar meeting a float32 tensor), ``_*_body`` is the update
# as array expressions returning new arrays (gpu.py fuses it), and the public function writes the results back.

def sgd_consts(dtype, lr, momentum, dampening, weight_decay):
    t = dtype.type
    return t(lr), t(momentum), t(1 - dampening), t(weight_decay)


def _sgd_body(xp, p, g, buf, lr, momentum, one_minus_dampening, wd, *, use_wd, use_momentum, nesterov,
              maximize, first_step):
    """New (param, buf) for one SGD step (torch.optim.SGD, single-tensor path)."""
    d = -g if maximize else g
    if use_wd:
        d = d + wd * p
    if use_momentum:
        buf = d if first_step else buf * momentum + one_minus_dampening * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
             maximize=False, first_step=False):
    """One in-place SGD step. With momentum, ``momentum_buffer`` (an array like param) is overwritten by the
    gradient on the first step (``first_step=True``, as PyTorch's buffer = grad.clone()) and updated after."""
    check_sgd(param, grad, momentum_buffer, momentum)
    p, buf = _sgd_body(array_module_of(param), param, grad, momentum_buffer,
                       *sgd_consts(param.dtype, lr, momentum, dampening, weight_decay),
                       use_wd=weight_decay != 0, use_momentum=momentum != 0, nesterov=nesterov, maximize=maximize,
                       first_step=first_step)
    param[...] = p
    if momentum != 0:
        momentum_buffer[...] = buf


def check_sgd(param, grad, momentum_buffer, momentum):
    _check_optimizer("sgd_step", param, grad, momentum_buffer if momentum != 0 else None)
    if momentum != 0 and momentum_buffer is None:
        raise ValueError("sgd_step: momentum != 0 needs a momentum_buffer array")


def lerp_small(weight):
    """PyTorch's lerp(a, b, w) rounds as a + w * (b - a) when |w| < 0.5, and as b - (b - a) * (1 - w) otherwise
    (``weight`` is the Python float, as tinygen.optim tests it)."""
    return abs(weight) < 0.5


def _lerp(a, b, w, one_minus_w, small):
    return a + w * (b - a) if small else b - (b - a) * one_minus_w


def adam_consts(dtype, lr, beta1, beta2, eps, weight_decay, step):
    """Scalars of one Adam step, with PyTorch's bias corrections formed in Python floats."""
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1 (the number of this update), got {step}")
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    t = dtype.type
    w = 1 - beta1  # the lerp weight of the first moment
    return (t(w), t(1 - w), t(beta2), t(1 - beta2), t(1 - lr * weight_decay), t(weight_decay), t(eps), t(step_size),
            t(bias_correction2_sqrt))


def _adam_body(xp, p, g, m, v, vmax, w1, one_minus_w1, beta2, one_minus_beta2, decay, wd, eps, step_size,
               bc2_sqrt, *, use_wd, decoupled, maximize, small):
    """New (param, exp_avg, exp_avg_sq, max_exp_avg_sq) for one Adam/AdamW step (torch.optim.Adam)."""
    if maximize:
        g = -g
    if use_wd:
        if decoupled:
            p = p * decay
        else:
            g = g + wd * p
    m = _lerp(m, g, w1, one_minus_w1, small)  # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + one_minus_beta2 * g * g
    if vmax is not None:
        vmax = xp.maximum(vmax, v)
        denom = xp.sqrt(vmax) / bc2_sqrt + eps
    else:
        denom = xp.sqrt(v) / bc2_sqrt + eps
    return p - m / denom * step_size, m, v, vmax


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled,
              step, maximize=False):
    """One in-place Adam (``decoupled=False``: L2 weight decay) or AdamW (``decoupled=True``) step.

    ``step`` is the number of this update (1 on the first); ``max_exp_avg_sq`` is an array for amsgrad, else None.
    """
    _check_optimizer("adam_step", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    consts = adam_consts(param.dtype, lr, beta1, beta2, eps, weight_decay, step)
    p, m, v, vmax = _adam_body(array_module_of(param), param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *consts,
                               use_wd=weight_decay != 0, decoupled=decoupled, maximize=maximize,
                               small=lerp_small(1 - beta1))
    param[...] = p
    exp_avg[...] = m
    exp_avg_sq[...] = v
    if max_exp_avg_sq is not None:
        max_exp_avg_sq[...] = vmax


def rmsprop_consts(dtype, lr, alpha, eps, weight_decay, momentum):
    t = dtype.type
    w = 1 - alpha  # also the lerp weight of the centered average
    return t(lr), t(alpha), t(w), t(1 - w), t(eps), t(weight_decay), t(momentum)


def _rmsprop_body(xp, p, g, v, ga, buf, lr, alpha, one_minus_alpha, one_minus_w, eps, wd, momentum, *, use_wd,
                  centered, use_momentum, maximize, small):
    """New (param, square_avg, grad_avg, buf) for one RMSprop step (torch.optim.RMSprop)."""
    if maximize:
        g = -g
    if use_wd:
        g = g + wd * p
    v = v * alpha + one_minus_alpha * g * g
    if centered:
        ga = _lerp(ga, g, one_minus_alpha, one_minus_w, small)  # grad_avg.lerp_(grad, 1 - alpha)
        avg = xp.sqrt(v - ga * ga) + eps
    else:
        avg = xp.sqrt(v) + eps
    if use_momentum:
        buf = buf * momentum + g / avg
        return p - lr * buf, v, ga, buf
    return p - g / avg * lr, v, ga, buf


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, maximize=False):
    """One in-place RMSprop step (torch.optim.RMSprop). ``grad_avg`` is needed when centered, ``momentum_buffer``
    when momentum > 0 (both start as zeros, as in PyTorch); pass None otherwise."""
    check_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, momentum, centered)
    consts = rmsprop_consts(param.dtype, lr, alpha, eps, weight_decay, momentum)
    p, v, ga, buf = _rmsprop_body(array_module_of(param), param, grad, square_avg, grad_avg, momentum_buffer,
                                  *consts, use_wd=weight_decay != 0, centered=centered, use_momentum=momentum > 0,
                                  maximize=maximize, small=lerp_small(1 - alpha))
    param[...] = p
    square_avg[...] = v
    if centered:
        grad_avg[...] = ga
    if momentum > 0:
        momentum_buffer[...] = buf


def check_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, momentum, centered):
    _check_optimizer("rmsprop_step", param, grad, square_avg, grad_avg if centered else None,
                     momentum_buffer if momentum > 0 else None)
    if centered and grad_avg is None:
        raise ValueError("rmsprop_step: centered=True needs a grad_avg array")
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("rmsprop_step: momentum > 0 needs a momentum_buffer array")


def _check_optimizer(name, param, *others):
    _check_float(name, param, *others)
    for o in others:
        if o is not None and (o.shape != param.shape or o.dtype != param.dtype):
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
    xp = array_module_of(x)
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
    xp = array_module_of(x)
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
    log_sig = xp.minimum(x, 0) - xp.log1p(e)  # log(sigmoid(x))
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
    xp = array_module_of(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_bwd(y, g):
    """Gradient of log_softmax over the last axis from its output y: g - exp(y) * sum(g)."""
    _check_float("log_softmax_bwd", y, g)
    _check_shapes("log_softmax_bwd", y, g)
    xp = array_module_of(y)
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
    if bool(bad.any()):
        i = int(xp.argmax(bad))
        raise IndexError(f"cross_entropy: target {int(target[i])} at row {i} is out of range for "
                         f"{n_classes} classes")


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", need_grad=True):
    """Cross-entropy of (N, C) logits with integer targets, as torch.nn.functional.cross_entropy.

    Row loss = w[t] * (logsumexp(x) - x[t]); rows whose target is ``ignore_index`` count zero. "mean" divides by
    the summed weight of the counted rows (their number without ``weight``), as PyTorch. Returns (loss, grad) with
    grad = d loss / d logits = w[t] * (softmax(x) - onehot(t)) scaled like the loss (None without ``need_grad``).
    """
    _check_reduction("cross_entropy", reduction)
    check_targets("cross_entropy", logits, target, weight, ignore_index)
    xp = array_module_of(logits)
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

from .conv import (conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight, max_pool2d_fwd, max_pool2d_bwd,  # noqa: E402,F401
                   separable_map2d)
