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


def act_bwd(s, g, act, p1=0.0, p2=0.0):
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


# The reference's CuPy code: reductions (single kernels already), and the optimizers, whose in-place steps with two
# scratch arrays make no temporaries (a launch per operation, a dozen per step).
sgd_step = ref.sgd_step
sgd_steps = ref.sgd_steps
adam_step = ref.adam_step
adam_steps = ref.adam_steps
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
