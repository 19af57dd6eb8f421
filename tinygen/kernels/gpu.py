"""CuPy versions of the elementwise kernels: the reference's own expressions, fused into one CUDA kernel each.

On a GPU every array operation is a kernel launch plus a round trip through memory, so the reference's chain of
small operations (a sigmoid is about six) costs launches and bandwidth. ``cupy.fuse`` traces a function
of array expressions once per dtype and compiles it into a single kernel. The functions traced here are the
bodies in reference.py, so there is one formula per kernel: the stand-in for CuPy (CI has no GPU) runs the same
body unfused, which is how the tests check this module's logic. Options that change the formula (the
activation, weights of a loss) are fixed per traced kernel, so each combination gets its own fused kernel.

Reductions (batch norm, log-softmax, cross-entropy) are not fused here: they keep the reference's CuPy code, whose
reductions are already single kernels. If CuPy cannot fuse a body, a warning is issued once and the body runs
unfused (same results, more launches).
"""
import numbers
import warnings

from ..backend import array_module_of
from . import reference as ref

_cache = {}


def _fuse(fn, name):
    """cupy.fuse, the one place this module touches CuPy's fusion (tests replace it)."""
    import cupy
    return cupy.fuse(kernel_name=name)(fn)


def _is_cupy(xp):
    return xp.__name__ == "cupy"


class _Fused:
    """A body fused on first use; falls back to the unfused body (with a warning) if fusion fails."""

    def __init__(self, plain, name):
        self.plain, self.name, self.fused, self.broken = plain, name, None, False

    def __call__(self, *args):
        if not self.broken:
            try:
                if self.fused is None:
                    self.fused = _fuse(self.plain, self.name)
                return self.fused(*args)
            except Exception as e:  # noqa: BLE001 - any fusion failure: the plain body gives the same result
                self.broken = True
                warnings.warn(f"tinygen.kernels.gpu: could not fuse {self.name} ({type(e).__name__}: {e}); "
                              f"running it unfused", RuntimeWarning, stacklevel=3)
        return self.plain(*args)


def _kernel(name, static, body):
    """A callable running ``body(xp, *args)``: fused for CuPy arrays (one kernel per name and static options),
    plain for any other array module (the stand-in)."""
    def call(*args):
        xp = array_module_of(*args)
        if not _is_cupy(xp):
            return body(xp, *args)
        key = (name, static)
        fn = _cache.get(key)
        if fn is None:
            fn = _cache[key] = _Fused(lambda *a: body(xp, *a), f"tinygen_{name}_{len(_cache)}")
        return fn(*args)
    return call


# ---- activations ---------------------------------------------------------------------------------------------------
def act_fwd(x, act, p1=0.0, p2=0.0):
    ref._check_float(f"{act}_fwd", x)
    t = x.dtype.type
    return _kernel("act_fwd", (act,), lambda xp, x, a, b: ref._act_fwd_body(xp, act, x, a, b))(x, t(p1), t(p2))


def act_bwd(s, g, act, p1=0.0, p2=0.0, out=None):  # (out: see reference.act_bwd; unused)
    ref._check_float(f"{act}_bwd", s, g)
    ref._check_shapes(f"{act}_bwd", s, g)
    if act == "elu" and p1 < 0:
        raise ValueError(f"elu_bwd computes from the output, which needs alpha >= 0, got alpha={p1}")
    t = g.dtype.type
    return _kernel("act_bwd", (act,), lambda xp, s, g, a, b: ref._act_bwd_body(xp, act, s, g, a, b))(
        s, g, t(p1), t(p2))


globals().update(ref.activation_kernels(act_fwd, act_bwd))


# ---- bias + activation -------------------------------------------------------------------------------------------
def bias_act_fwd(y, b, act="identity", p1=0.0, p2=0.0):
    ref.check_bias_act("bias_act_fwd", y, b, act, p1)
    t = y.dtype.type
    if b is None:
        out = _kernel("act_fwd", (act,), lambda xp, x, a, c: ref._act_fwd_body(xp, act, x, a, c))(y, t(p1), t(p2))
    else:
        out = _kernel("bias_act_fwd", (act,), lambda xp, y, b, a, c: ref._act_fwd_body(xp, act, y + b, a, c))(
            y, b, t(p1), t(p2))
    y[...] = out
    return y


def bias_act_bwd(y, g, act="identity", p1=0.0, p2=0.0, bias_grad=True, out=None):  # (out unused)
    ref.check_bias_act("bias_act_bwd", y, None, act, p1)
    ref._check_shapes("bias_act_bwd", y, g)
    t = g.dtype.type
    act_y = ref._FROM_Y[act]
    if act_y == "identity":
        gpre = g.copy()
    else:
        gpre = _kernel("act_bwd", (act_y,), lambda xp, s, g, a, c: ref._act_bwd_body(xp, act_y, s, g, a, c))(
            y, g, t(p1), t(p2))
    return gpre, (gpre.sum(axis=0) if bias_grad else None)


# ---- losses --------------------------------------------------------------------------------------------------------
def bce_with_logits(x, t, weight=None, pos_weight=None, reduction="mean", need_grad=True):
    """The elementwise loss and gradient in one fused kernel, then CuPy's sum."""
    ref.check_bce("bce_with_logits", x, t, weight, pos_weight, reduction)
    static = (weight is not None, pos_weight is not None, bool(need_grad))
    extra = tuple(a for a in (weight, pos_weight) if a is not None)

    def body(xp, x, t, *wts):
        loss, grad = ref._bce_body(xp, x, t, wts[0] if weight is not None else None,
                                   wts[-1] if pos_weight is not None else None, need_grad)
        return (loss, grad) if need_grad else loss

    out = _kernel("bce_with_logits", static, body)(x, t, *extra)
    loss, grad = out if need_grad else (out, None)
    if grad is not None and reduction == "mean" and x.size:
        grad = grad * x.dtype.type(1 / x.size)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.mean()
    return loss, grad


# ---- Adam ------------------------------------------------------------------------------------------------------
def _flushed(xp, avg, tiny):
    """avg with its subnormal values made 0, as reference._flush_subnormal_ (``avg * 0``: sign and NaN kept)."""
    return avg * (xp.absolute(avg) >= tiny)


def _adam_body(xp, p, g, m, v, *rest, decoupled_decay, l2, maximize, amsgrad, small):
    """reference.adam_step's operations in its order, as expressions: the new (param, exp_avg, exp_avg_sq[,
    max_exp_avg_sq]). ``rest``: max_exp_avg_sq (amsgrad), then the scalars in the arrays' dtype."""
    if amsgrad:
        vmax, rest = rest[0], rest[1:]
    step_size, bc2, eps, decay, wd, w, w_other, b2, one_minus_b2, tiny = rest
    if decoupled_decay:
        p = p * decay
    if l2:
        g = p * wd - g if maximize else p * wd + g
    elif maximize:
        g = -g
    m = m + (g - m) * w if small else g - (g - m) * w_other  # lerp(m, g, w), rounded as torch.lerp
    m = _flushed(xp, m, tiny)
    v = _flushed(xp, v * b2 + g * one_minus_b2 * g, tiny)
    second = v
    if amsgrad:
        vmax = xp.maximum(vmax, v)
        second = vmax
    p = p - m / (xp.sqrt(second) / bc2 + eps) * step_size
    return (p, m, v, vmax) if amsgrad else (p, m, v)


def _count_scalars(dtype, lr_on_device):
    """reference.adam_bias_corrections from a float64 0-d count array, in float64, then in the parameters' dtype;
    with a learning rate held on the device (a float64 0-d array), reference.adam_decay from it too."""
    def body(xp, step, lr, beta1, beta2, *weight_decay):
        scalars = ref.adam_bias_corrections(xp.power, step, lr, beta1, beta2)
        if lr_on_device:
            scalars += (ref.adam_decay(lr, weight_decay[0]),)
        return tuple(s.astype(dtype) for s in scalars)
    return body


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled,
              step, maximize=False, scratch=None):  # noqa: ARG001 - scratch: the reference's; no temporaries here
    """reference.adam_step as one fused kernel, whose new values are copied back into the arrays: 4-5 launches a
    parameter instead of the reference's dozen and more."""
    ref._check_optimizer("adam_step", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    t = param.dtype.type
    if isinstance(step, numbers.Integral):
        step_size, bc2, decay = (t(s) for s in ref.adam_scalars(lr, beta1, beta2, weight_decay, step))
    else:  # a capturable Adam's count (and maybe its rate), on the device: the host's formula there, nothing read
        on_device = hasattr(lr, "astype")
        args = (step, lr.astype("float64", copy=False), float(beta1), float(beta2), float(weight_decay)) \
            if on_device else (step, float(lr), float(beta1), float(beta2))
        scalars = _kernel("adam_scalars", (param.dtype.char, on_device), _count_scalars(param.dtype, on_device))(
            *args)
        step_size, bc2 = scalars[:2]
        decay = scalars[2] if on_device else t(ref.adam_decay(lr, weight_decay))
    amsgrad = max_exp_avg_sq is not None
    flags = dict(decoupled_decay=bool(weight_decay) and decoupled, l2=bool(weight_decay) and not decoupled,
                 maximize=bool(maximize), amsgrad=amsgrad, small=ref.lerp_small(1 - beta1))
    w = 1 - beta1
    scalars = (step_size, bc2, t(eps), decay, t(weight_decay), t(w), t(1 - w), t(beta2), t(1 - beta2),
               ref.subnormal_limit(param.dtype))
    state = (param, exp_avg, exp_avg_sq) + ((max_exp_avg_sq,) if amsgrad else ())
    new = _kernel("adam", tuple(flags.values()), lambda xp, *a: _adam_body(xp, *a, **flags))(
        *state[:1], grad, *state[1:], *scalars)
    for array, value in zip(state, new):
        array[...] = value


def adam_steps(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
               decoupled, step, maximize=False, scratch=None):
    """``adam_step`` on each parameter (reference.adam_steps's contract)."""
    vmaxs = max_exp_avg_sqs if max_exp_avg_sqs is not None else [None] * len(params)
    for p, g, m, v, vmax in zip(params, grads, exp_avgs, exp_avg_sqs, vmaxs):
        adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, step, maximize, scratch)


# ---- SGD -------------------------------------------------------------------------------------------------------
def _sgd_body(xp, p, g, *rest, l2, maximize, momentum, first, dampening, nesterov):
    """reference.sgd_step's operations in its order, as expressions: the new param (and momentum buffer). ``rest``:
    the buffer (with momentum, after the first step: the first takes g), then the scalars in the arrays' dtype."""
    if momentum and not first:
        buf, rest = rest[0], rest[1:]
    lr, wd, mom, one_minus_damp, tiny = rest
    if l2:
        g = p * wd - g if maximize else p * wd + g
    elif maximize:
        g = -g
    if not momentum:
        return p - g * lr
    if first:
        buf = g
    else:
        buf = buf * mom + (g * one_minus_damp if dampening else g)
    buf = _flushed(xp, buf, tiny)
    step = buf * mom + g if nesterov else buf
    return p - step * lr, buf


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
             maximize=False, first_step=False, scratch=None):  # noqa: ARG001 - scratch: the reference's
    """reference.sgd_step as one fused kernel, whose new values are copied back into the arrays."""
    ref.check_sgd(param, grad, momentum_buffer, momentum)
    flags = dict(l2=bool(weight_decay), maximize=bool(maximize), momentum=bool(momentum), first=bool(first_step),
                 dampening=bool(dampening), nesterov=bool(nesterov))
    t = param.dtype.type
    scalars = (ref.scalar_as(lr, param.dtype), t(weight_decay), t(momentum), t(1 - dampening),
               ref.subnormal_limit(param.dtype))
    state = (param, momentum_buffer) if momentum else (param,)
    read = state[1:] if momentum and not first_step else ()  # the first step's buffer is g: its old values unread
    new = _kernel("sgd", tuple(flags.values()), lambda xp, *a: _sgd_body(xp, *a, **flags))(
        param, grad, *read, *scalars)
    for array, value in zip(state, new if momentum else (new,)):
        array[...] = value


def sgd_steps(params, grads, momentum_buffers, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              maximize=False, first_steps=None, scratch=None):
    """``sgd_step`` on each parameter (reference.sgd_steps's contract)."""
    bufs = momentum_buffers if momentum_buffers is not None else [None] * len(params)
    firsts = first_steps if first_steps is not None else [False] * len(params)
    for p, g, buf, first in zip(params, grads, bufs, firsts):
        sgd_step(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, maximize, first, scratch)


# The reference's CuPy code: reductions (single kernels already), and RMSprop, whose in-place steps with two
# scratch arrays make no temporaries (a launch per operation, a dozen per step).
ema_update = ref.ema_update
rmsprop_step = ref.rmsprop_step
rmsprop_steps = ref.rmsprop_steps
batchnorm_fwd = ref.batchnorm_fwd
batchnorm_bwd = ref.batchnorm_bwd
batchnorm_act_fwd = ref.batchnorm_act_fwd
batchnorm_act_bwd = ref.batchnorm_act_bwd
log_softmax_fwd = ref.log_softmax_fwd
log_softmax_bwd = ref.log_softmax_bwd
cross_entropy = ref.cross_entropy
from .conv_gpu import conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight  # noqa: E402,F401
