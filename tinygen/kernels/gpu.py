"""CuPy versions of the elementwise kernels: the reference's own expressions, fused into one CUDA kernel each.

On a GPU every array operation is a kernel launch plus a round trip through memory, so the reference's chain of
small operations (an Adam step is about fifteen) costs launches and bandwidth. ``cupy.fuse`` traces a function
of array expressions once per dtype and compiles it into a single kernel. The functions traced here are the
bodies in reference.py, so there is one formula per kernel: the stand-in for CuPy (CI has no GPU) runs the same
body unfused, which is how the tests check this module's logic. Options that change the formula (momentum,
nesterov, amsgrad...) are fixed per traced kernel, so each combination gets its own fused kernel.

Reductions (batch norm, log-softmax, cross-entropy) are not fused here: they keep the reference's CuPy code, whose
reductions are already single kernels. If CuPy cannot fuse a body, a warning is issued once and the body runs
unfused (same results, more launches).
"""
import warnings

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
        xp = ref.array_module_of(*args)
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


def act_bwd(s, g, act, p1=0.0, p2=0.0):
    ref._check_float(f"{act}_bwd", s, g)
    ref._check_shapes(f"{act}_bwd", s, g)
    if act == "elu" and p1 < 0:
        raise ValueError(f"elu_bwd computes from the output, which needs alpha >= 0, got alpha={p1}")
    t = g.dtype.type
    return _kernel("act_bwd", (act,), lambda xp, s, g, a, b: ref._act_bwd_body(xp, act, s, g, a, b))(
        s, g, t(p1), t(p2))


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


def bias_act_bwd(y, g, act="identity", p1=0.0, p2=0.0, bias_grad=True):
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


# ---- optimizers --------------------------------------------------------------------------------------------------
def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
             maximize=False, first_step=False):
    ref.check_sgd(param, grad, momentum_buffer, momentum)
    consts = ref.sgd_consts(param.dtype, lr, momentum, dampening, weight_decay)
    flags = dict(use_wd=weight_decay != 0, use_momentum=momentum != 0, nesterov=bool(nesterov),
                 maximize=bool(maximize), first_step=bool(first_step))
    static = tuple(flags.values())
    if flags["use_momentum"]:
        p, buf = _kernel("sgd_step", static, lambda xp, p, g, buf, *c: ref._sgd_body(xp, p, g, buf, *c, **flags))(
            param, grad, momentum_buffer, *consts)
        momentum_buffer[...] = buf
    else:
        p = _kernel("sgd_step", static, lambda xp, p, g, *c: ref._sgd_body(xp, p, g, None, *c, **flags)[0])(
            param, grad, *consts)
    param[...] = p


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled,
              step, maximize=False):
    ref._check_optimizer("adam_step", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    consts = ref.adam_consts(param.dtype, lr, beta1, beta2, eps, weight_decay, step)
    flags = dict(use_wd=weight_decay != 0, decoupled=bool(decoupled), maximize=bool(maximize),
                 small=ref.lerp_small(1 - beta1))
    static = tuple(flags.values()) + (max_exp_avg_sq is not None,)
    if max_exp_avg_sq is not None:
        p, m, v, vmax = _kernel("adam_step", static, lambda xp, p, g, m, v, vm, *c: ref._adam_body(
            xp, p, g, m, v, vm, *c, **flags))(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *consts)
        max_exp_avg_sq[...] = vmax
    else:
        p, m, v = _kernel("adam_step", static, lambda xp, p, g, m, v, *c: ref._adam_body(
            xp, p, g, m, v, None, *c, **flags)[:3])(param, grad, exp_avg, exp_avg_sq, *consts)
    param[...] = p
    exp_avg[...] = m
    exp_avg_sq[...] = v


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, maximize=False):
    ref.check_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, momentum, centered)
    consts = ref.rmsprop_consts(param.dtype, lr, alpha, eps, weight_decay, momentum)
    flags = dict(use_wd=weight_decay != 0, centered=bool(centered), use_momentum=momentum > 0,
                 maximize=bool(maximize), small=ref.lerp_small(1 - alpha))
    static = tuple(flags.values())
    # Fused kernels take arrays only, so an unused buffer is passed as the square average (never read then).
    ga = grad_avg if flags["centered"] else square_avg
    buf = momentum_buffer if flags["use_momentum"] else square_avg
    p, v, ga_new, buf_new = _kernel("rmsprop_step", static, lambda xp, p, g, v, ga, buf, *c: ref._rmsprop_body(
        xp, p, g, v, ga, buf, *c, **flags))(param, grad, square_avg, ga, buf, *consts)
    param[...] = p
    square_avg[...] = v
    if flags["centered"]:
        grad_avg[...] = ga_new
    if flags["use_momentum"]:
        momentum_buffer[...] = buf_new


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


# Reductions: the reference's CuPy code (its reductions are single kernels already).
batchnorm_fwd = ref.batchnorm_fwd
batchnorm_bwd = ref.batchnorm_bwd
log_softmax_fwd = ref.log_softmax_fwd
log_softmax_bwd = ref.log_softmax_bwd
cross_entropy = ref.cross_entropy
from .conv_gpu import conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight  # noqa: E402,F401
