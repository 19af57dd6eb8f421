"""Numba versions of the kernels in reference.py: one compiled loop per kernel, no temporaries.

Imported only on the first kernel use (``tinygen.kernels.lookup``), never by ``import tinygen``. Every public
function has the signature of its reference.py counterpart; the wrapper handles any layout (non-contiguous input
is copied to a contiguous one) and float32/float64, and returns arrays of the input's shape.

How the loops are written:
  * ``@njit(cache=True)`` compiles on first call and stores the machine code beside this file, so a fresh process
    loads it in milliseconds. ``fastmath`` stays off: no reassociation and no fused multiply-add, so pure
    arithmetic kernels (relu, leaky_relu, the optimizers...) give the reference's bits. ``error_model="numpy"``:
    a float division by zero gives inf/nan as in NumPy, instead of Python's ZeroDivisionError check, which also
    kept LLVM from vectorizing any loop that divides (Adam's step was 4.7x slower with it).
  * each kernel is a loop over whole arrays, called directly (serial) or by its ``*_par`` twin on one slice per
    thread (``prange``). Loops start at 0 so Numba can drop its negative-index checks and vectorize. Threads
    cost microseconds to start, so the parallel twin runs only from ``threads.PARALLEL_MIN`` elements
    (``python -m benchmarks.kernel_bench --threshold`` measures where threads start to pay).
    The optimizers' multi-tensor loops have twins too (``_PARALLEL``), one run of the call's parameters laid end
    to end per thread, used from ``threads.update_split_from()`` elements in a call (the setting
    TINYGEN_UPDATE_PARALLEL_MIN), which pays far earlier inside a step (threads.py says why). With MKL's products,
    Numba's threads are MKL's (its OpenMP layer on Intel's runtime: ``threads._arrange_layer``).
  * constants are made in the data's dtype (``x.dtype.type(1)``): a bare ``1`` would promote float32 math to
    float64 and round differently from the reference.
  * transcendental functions (exp, tanh, log1p) call the C math library, one element at a time; NumPy's are SIMD
    and several times faster, so kernels built on them are used only where fusing passes wins
    (benchmarks/kernel_bench.py).
"""
import collections
import math

import numpy as np
from numba import njit, prange

from . import reference as ref, threads

# Activation codes (compile-time constants inside the kernels).
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, ELU, SOFTPLUS, SOFTPLUS_FROM_Y = range(8)
_CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "tanh": TANH, "sigmoid": SIGMOID,
          "elu": ELU, "softplus": SOFTPLUS, "softplus_from_y": SOFTPLUS_FROM_Y}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _threads():
    return threads.numba_threads()


def _in_chunks(fn, n):
    threads.in_chunks(fn, n, _threads)


@njit(cache=True, nogil=True, error_model="numpy")
def _neg_abs(x, out):
    for i in range(x.size):
        out[i] = -abs(x[i])


def _exp_neg_abs_into(x, out):
    """out = exp(-|x|) for flat arrays: a loop for -|x|, then NumPy's (SIMD where it has it) exp in place."""
    _neg_abs(x, out)
    np.exp(out, out=out)


def _exp_neg_abs(x):
    """exp(-|x|) of a flat array, in chunks on the ufunc threads."""
    e = np.empty_like(x)
    _in_chunks(lambda lo, hi: _exp_neg_abs_into(x[lo:hi], e[lo:hi]), x.size)
    return e


def _chunks(n):
    """Number of chunks for the parallel twin, or 0 to run serially."""
    return threads.parallel_chunks(n, _threads)


# ---- activations -------------------------------------------------------------------------------------------------
# The Numba loops do arithmetic only: Numba's exp/tanh/log1p are scalar C calls, several times slower than
# NumPy's SIMD ones, and a loop that calls them is not vectorized.
# So the transcendental part of an activation (``pre``: exp(-|x|) for sigmoid, expm1 for elu, ...) is one NumPy
# call, and one fused loop does the rest, in place of the reference's chain of temporaries and ``where``. Each
# piece is the reference's own expression, so the results are the reference's bits.

def _pre_fwd(x, act, p1):
    """The one NumPy (SIMD) call an activation's forward needs, or None."""
    if act == SIGMOID:
        return _exp_neg_abs(x)
    if act == ELU:
        return np.expm1(np.minimum(x, 0))
    if act == SOFTPLUS:
        return ref.log1p_small(np, np.exp(-abs(x * p1)))
    return None


def _pre_bwd(s, act, p1):
    if act == SOFTPLUS:
        return np.exp(-abs(s * p1))
    if act == SOFTPLUS_FROM_Y:
        return np.expm1(s * -p1)
    return None


BLOCK = 4096  # elements the blocked loops take at a time: in the core's cache, and enough of them that a
# convolution's many short rows (a few channels) do not cost a call each


@njit(cache=True, error_model="numpy")
def _act_fwd(x, e, out, act, p1, p2):
    """out = act(x); ``out`` may be ``x`` itself. LLVM does not vectorize a loop whose output may overlap an input
    it reads (4x slower for relu), so in place, x goes a block at a time through a buffer in the core's cache."""
    if out.size == 0 or x.ctypes.data != out.ctypes.data:
        _act_fwd_loops(x, e, out, act, p1, p2)
        return
    buf = np.empty(min(x.size, BLOCK), x.dtype)
    for lo in range(0, x.size, BLOCK):
        hi = min(x.size, lo + BLOCK)
        block, xs = buf[:hi - lo], x[lo:hi]
        for i in range(hi - lo):  # (not a slice assignment: that checks for overlap and copies twice)
            block[i] = xs[i]
        _act_fwd_loops(block, e[lo:hi], out[lo:hi], act, p1, p2)


@njit(cache=True, error_model="numpy")
def _act_fwd_loops(x, e, out, act, p1, p2):
    """out = act(x), given e = _pre_fwd(x) for sigmoid, elu and softplus. One loop per activation: LLVM vectorizes
    a loop with a simple select in it, but not one that branches on ``act`` inside."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    n = x.size
    if act == RELU:
        for i in range(n):
            v = x[i]
            out[i] = zero if v <= zero else v  # NaN passes through, as maximum(x, 0)
    elif act == LEAKY_RELU:
        for i in range(n):
            v = x[i]
            out[i] = v if v > zero else v * p1
    elif act == SIGMOID:  # e = exp(-|x|); 1 / (1 + e) or e / (1 + e), one division so the loop vectorizes
        for i in range(n):
            ei = e[i]
            out[i] = (one if x[i] >= zero else ei) / (one + ei)
    elif act == ELU:  # e = expm1(min(x, 0))
        for i in range(n):
            v = x[i]
            out[i] = v if v > zero else e[i] * p1
    elif act == SOFTPLUS:  # e = log1p(exp(-|beta x|))
        for i in range(n):
            v = x[i]
            bx = v * p1
            soft = (max(bx, zero) + e[i]) / p1
            out[i] = v if bx > p2 else soft
    else:  # identity
        for i in range(n):
            out[i] = x[i]


@njit(cache=True, parallel=True, error_model="numpy")
def _act_fwd_par(x, e, out, act, p1, p2, nch):
    n = x.size
    step = (n + nch - 1) // nch
    for c in prange(nch):
        lo, hi = c * step, min(n, (c + 1) * step)
        _act_fwd(x[lo:hi], e[lo:hi], out[lo:hi], act, p1, p2)


@njit(cache=True, error_model="numpy")
def _act_bwd(s, e, g, out, act, p1, p2):
    """out = g * act'(...) where s is x (relu, leaky_relu, softplus) or y (tanh, sigmoid, elu, softplus_from_y)
    and e = _pre_bwd(s) for the softplus pair."""
    zero, one = g.dtype.type(0), g.dtype.type(1)
    n = g.size
    if act == RELU:
        for i in range(n):
            out[i] = g[i] * (one if s[i] > zero else zero)
    elif act == LEAKY_RELU:
        for i in range(n):
            out[i] = g[i] * (one if s[i] > zero else p1)
    elif act == TANH:
        for i in range(n):
            y = s[i]
            out[i] = g[i] * (one - y * y)
    elif act == SIGMOID:
        for i in range(n):
            y = s[i]
            out[i] = g[i] * y * (one - y)
    elif act == ELU:
        for i in range(n):
            y = s[i]
            out[i] = g[i] * (one if y > zero else y + p1)
    elif act == SOFTPLUS:  # sigmoid(beta x) with e = exp(-|beta x|); 1 above the threshold (forward is x there)
        for i in range(n):
            ei = e[i]
            bx = s[i] * p1
            sig = (one if bx >= zero else ei) / (one + ei)
            out[i] = g[i] * (one if bx > p2 else sig)
    elif act == SOFTPLUS_FROM_Y:  # e = expm1(-beta y)
        for i in range(n):
            out[i] = g[i] * (one if s[i] * p1 > p2 else -e[i])
    else:  # identity
        for i in range(n):
            out[i] = g[i]


@njit(cache=True, parallel=True, error_model="numpy")
def _act_bwd_par(s, e, g, out, act, p1, p2, nch):
    n = g.size
    step = (n + nch - 1) // nch
    for c in prange(nch):
        lo, hi = c * step, min(n, (c + 1) * step)
        _act_bwd(s[lo:hi], e[lo:hi], g[lo:hi], out[lo:hi], act, p1, p2)


def _flat(a, order=None):
    """A C-contiguous 1-D view of ``a`` (a copy only when ``a`` is not contiguous); with an axis ``order`` (from
    ``_memory_order``), of ``a.transpose(order)``: the elements in the memory order of an array laid out that way."""
    if order is not None:
        a = a.transpose(order)
    return a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)


def _memory_order(a):
    """The axis order in which ``a`` is C-contiguous when it is dense but not C-ordered (a channels-last
    convolution weight), else None: in-place updates then run over its memory as it lies, and the arrays updated
    with it are read in the same order."""
    if a.flags.c_contiguous or a.ndim < 2:
        return None
    order = tuple(sorted(range(a.ndim), key=lambda i: -a.strides[i]))
    return order if a.transpose(order).flags.c_contiguous else None


def _same_float(name, *arrays):
    dt = arrays[0].dtype
    if dt not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64 arrays, got dtype {dt}")
    for a in arrays[1:]:
        if a is not None and a.dtype != dt:
            raise TypeError(f"{name}: expected arrays of one dtype, got {dt} and {a.dtype}")


def _act_fwd_into(xf, out, code, p1, p2):
    """out = act(xf) for flat arrays (out may be xf itself)."""
    if code == TANH:
        _in_chunks(lambda lo, hi: np.tanh(xf[lo:hi], out=out[lo:hi]), xf.size)  # one pass: nothing to fuse
        return
    e = _pre_fwd(xf, code, p1)
    e = xf if e is None else e  # unused by the loop, passed to keep one compiled signature
    nch = _chunks(xf.size)
    if nch:
        _act_fwd_par(xf, e, out, code, p1, p2, nch)
    else:
        _act_fwd(xf, e, out, code, p1, p2)


def _dense_order(*arrays):
    """The axis order in which every one of ``arrays`` (of one shape and strides) is C-contiguous, when they are
    not C-contiguous as they stand (a channels-last image), else None: elementwise loops then run over the memory
    as it lies and return results with the same strides, instead of copying to C order and back."""
    a = arrays[0]
    if any(b.strides != a.strides for b in arrays[1:]):
        return None
    return _memory_order(a)


def _elementwise(fn, *arrays):
    """fn(*flat arrays) -> flat result, returned in the layout of ``arrays`` when they share a dense one (see
    _dense_order), else C-ordered."""
    order = _dense_order(*arrays)
    if order is None:
        return fn(*(_flat(a) for a in arrays)).reshape(arrays[0].shape)
    dense = [a.transpose(order) for a in arrays]
    out = fn(*(d.reshape(-1) for d in dense)).reshape(dense[0].shape)
    return out.transpose(np.argsort(order))


def act_fwd(x, act, p1=0.0, p2=0.0):
    _same_float(f"{act}_fwd", x)
    t = x.dtype.type

    def run(xf):
        out = np.empty_like(xf)
        _act_fwd_into(xf, out, _CODES[act], t(p1), t(p2))
        return out
    return _elementwise(run, x)


def _act_bwd_into(sf, gf, out, code, p1, p2):
    e = _pre_bwd(sf, code, p1)
    e = sf if e is None else e
    nch = _chunks(gf.size)
    if nch:
        _act_bwd_par(sf, e, gf, out, code, p1, p2, nch)
    else:
        _act_bwd(sf, e, gf, out, code, p1, p2)


def act_bwd(s, g, act, p1=0.0, p2=0.0, out=None):
    name = f"{act}_bwd"
    _same_float(name, g, s)
    ref._check_shapes(name, s, g)
    if act == "elu" and p1 < 0:
        raise ValueError(f"elu_bwd computes from the output, which needs alpha >= 0, got alpha={p1}")
    t = g.dtype.type
    if _into(out, g) and s.flags.c_contiguous:  # element i read, then written: out may be g
        _act_bwd_into(s.reshape(-1), g.reshape(-1), out.reshape(-1), _CODES[act], t(p1), t(p2))
        return out

    def run(sf, gf):
        res = np.empty_like(gf)
        _act_bwd_into(sf, gf, res, _CODES[act], t(p1), t(p2))
        return res
    return _elementwise(run, s, g)


def _into(out, g):
    """Whether a kernel writes its result into ``out`` (reference.act_bwd): given, like g, and both C-contiguous."""
    return (out is not None and g.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable
            and out.shape == g.shape and out.dtype == g.dtype)


globals().update(ref.activation_kernels(act_fwd, act_bwd))


# ---- bias + activation after a matmul ----------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def _bias_act_fwd(y, b, has_b, act, p1, p2):
    """y += b, then act(y), a block of rows at a time (the activation reads the block back from cache); act must
    not need a ``pre`` array (identity, relu, leaky_relu). y is C-contiguous."""
    n, m = y.shape
    rows = max(1, BLOCK // max(m, 1))
    for lo in range(0, n, rows):
        block = y[lo:min(n, lo + rows)]
        if has_b:
            for r in range(block.shape[0]):
                for j in range(m):
                    block[r, j] += b[j]
        if act != IDENTITY:
            flat = block.reshape(-1)
            _act_fwd(flat, flat, flat, act, p1, p2)


@njit(cache=True, parallel=True, error_model="numpy")
def _bias_act_fwd_par(y, b, has_b, act, p1, p2, nch):
    n = y.shape[0]
    step = (n + nch - 1) // nch
    for c in prange(nch):
        lo, hi = c * step, min(n, (c + 1) * step)
        _bias_act_fwd(y[lo:hi], b, has_b, act, p1, p2)


@njit(cache=True, error_model="numpy")
def _bias_act_bwd(y, e, g, out, colsum, want_sum, act, p1, p2):
    """out = g * act'(y), a block of rows at a time, and its column sums added to colsum row after row. All
    C-contiguous."""
    n, m = y.shape
    rows = max(1, BLOCK // max(m, 1))
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        _act_bwd(y[lo:hi].reshape(-1), e[lo:hi].reshape(-1), g[lo:hi].reshape(-1), out[lo:hi].reshape(-1), act,
                 p1, p2)
        if want_sum:
            for r in range(lo, hi):
                for j in range(m):
                    colsum[j] += out[r, j]


@njit(cache=True, parallel=True, error_model="numpy")
def _bias_act_bwd_par(y, e, g, out, partial, want_sum, act, p1, p2, nch):
    n = y.shape[0]
    step = (n + nch - 1) // nch
    for c in prange(nch):
        lo, hi = c * step, min(n, (c + 1) * step)
        _bias_act_bwd(y[lo:hi], e[lo:hi], g[lo:hi], out[lo:hi], partial[c], want_sum, act, p1, p2)


def _rows(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def bias_act_fwd(y, b, act="identity", p1=0.0, p2=0.0):
    ref.check_bias_act("bias_act_fwd", y, b, act, p1)
    _same_float("bias_act_fwd", y, b)
    if not y.flags.writeable:
        raise ValueError("bias_act_fwd: y must be writable (it is updated in place)")
    work = _rows(y)
    bb = _flat(b) if b is not None else np.empty(0, y.dtype)
    code, t = _CODES[act], y.dtype.type
    p1, p2 = t(p1), t(p2)
    fused = code <= LEAKY_RELU  # activations without a NumPy part run in the same loop as the bias
    loop_act = code if fused else IDENTITY
    nch = _chunks(y.size)
    if nch:
        _bias_act_fwd_par(work, bb, b is not None, loop_act, p1, p2, nch)
    else:
        _bias_act_fwd(work, bb, b is not None, loop_act, p1, p2)
    if not fused:
        flat = work.reshape(-1)
        _act_fwd_into(flat, flat, code, p1, p2)
    if work is not y:
        y[...] = work
    return y


def bias_act_bwd(y, g, act="identity", p1=0.0, p2=0.0, bias_grad=True, out=None):
    ref.check_bias_act("bias_act_bwd", y, None, act, p1)
    ref._check_shapes("bias_act_bwd", y, g)
    _same_float("bias_act_bwd", g, y)
    ys, gs = _rows(y), _rows(g)
    if not _into(out, g):  # (else each row of g is read, then written)
        out = np.empty(g.shape, g.dtype)
    code, t = _CODES[ref._FROM_Y[act]], g.dtype.type
    p1, p2 = t(p1), t(p2)
    e = _pre_bwd(ys, code, p1)
    e = ys if e is None else e
    nch = _chunks(g.size)
    if nch:
        partial = np.zeros((nch, g.shape[1]), g.dtype)
        _bias_act_bwd_par(ys, e, gs, out, partial, bias_grad, code, p1, p2, nch)
        colsum = partial.sum(axis=0)
    else:
        colsum = np.zeros(g.shape[1], g.dtype)
        _bias_act_bwd(ys, e, gs, out, colsum, bias_grad, code, p1, p2)
    return out, (colsum if bias_grad else None)


# ---- optimizers (in place, one pass) -------------------------------------------------------------------------------
class _InPlace:
    """1-D views of arrays updated in place, in the memory order of the first (``order``: see _memory_order); one
    not dense in that order is worked on as a copy and written back by ``done()``. Arrays read alongside them are
    flattened as ``_flat(a, io.order)``."""

    def __init__(self, name, *arrays):
        self.pairs = []
        self.flat = []
        self.order = _memory_order(arrays[0])
        for a in arrays:
            if a is None:
                self.flat.append(None)
                continue
            if not a.flags.writeable:
                raise ValueError(f"{name}: the parameter and state arrays must be writable (updated in place)")
            view = a if self.order is None else a.transpose(self.order)
            f = _flat(view)
            self.flat.append(f)
            if not view.flags.c_contiguous:
                self.pairs.append((view, f))

    def done(self):
        for view, f in self.pairs:
            view[...] = f.reshape(view.shape)


_DUMMIES = {}


def _dummy(dt):
    """An empty array of dtype ``dt``: what a kernel gets for a state it does not use (one per dtype, never written)."""
    d = _DUMMIES.get(dt)
    if d is None:
        d = _DUMMIES[dt] = np.empty(0, dt)
    return d


# The scalars of each step, cast to the parameter's dtype (as NumPy casts a Python float meeting a float32 array in
# the reference's operations), so the loops round as the reference does.
def _sgd_consts(dtype, lr, momentum, dampening, weight_decay):
    t = dtype.type
    return t(lr), t(momentum), t(1 - dampening), t(weight_decay), ref.subnormal_limit(dtype)


def _adam_consts(dtype, lr, beta1, beta2, eps, weight_decay, step):
    step_size, bc2_sqrt, decay = ref.adam_scalars(lr, beta1, beta2, weight_decay, step)
    t = dtype.type
    w = 1 - beta1  # the lerp weight of the first moment
    return (t(w), t(1 - w), t(beta2), t(1 - beta2), t(decay), t(weight_decay), t(eps), t(step_size), t(bc2_sqrt),
            ref.subnormal_limit(dtype))


def _rmsprop_consts(dtype, lr, alpha, eps, weight_decay, momentum):
    t = dtype.type
    w = 1 - alpha  # also the lerp weight of the centered average
    return t(lr), t(alpha), t(w), t(1 - w), t(eps), t(weight_decay), t(momentum), ref.subnormal_limit(dtype)


@njit(cache=True)
def _no_subnormal(x, tiny):
    """The reference's flush of a running average: x * 0 where |x| < tiny (the smallest normal number of x's
    dtype), so the sign stays and NaN stays NaN; else x."""
    return x if abs(x) >= tiny else x * (tiny - tiny)


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd(p, g, buf, lr, momentum, one_minus_dampening, wd, tiny, use_wd, use_momentum, nesterov, maximize,
         first_step):
    for i in range(p.size):
        d = -g[i] if maximize else g[i]
        if use_wd:
            d = d + wd * p[i]
        if use_momentum:
            b = _no_subnormal(d if first_step else buf[i] * momentum + one_minus_dampening * d, tiny)
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] = p[i] - lr * d


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
             maximize=False, first_step=False, scratch=None):  # noqa: ARG001 - no scratch needed
    ref.check_sgd(param, grad, momentum_buffer, momentum)
    _same_float("sgd_step", param)
    use_momentum = momentum != 0
    io = _InPlace("sgd_step", param, momentum_buffer if use_momentum else None)
    p, buf = io.flat
    buf = buf if buf is not None else _dummy(param.dtype)
    g = _flat(grad, io.order)
    _update_in_chunks(_sgd, (p, g, buf), (*_sgd_consts(param.dtype, lr, momentum, dampening, weight_decay),
                      weight_decay != 0, use_momentum, bool(nesterov), bool(maximize), bool(first_step)))
    io.done()


@njit(cache=True, error_model="numpy")
def _adam_moments(gi, mi, vi, w1, one_minus_w1, beta2, one_minus_beta2, tiny, small):
    """One element's new first and second moments (the first as a lerp, as PyTorch's), flushed below normal."""
    mi = _no_subnormal(mi + w1 * (gi - mi) if small else gi - (gi - mi) * one_minus_w1, tiny)
    vi = _no_subnormal(vi * beta2 + one_minus_beta2 * gi * gi, tiny)
    return mi, vi


@njit(cache=True, error_model="numpy")
def _adam_update(pi, mi, vi, eps, step_size, bc2_sqrt):
    return pi - mi / (math.sqrt(vi) / bc2_sqrt + eps) * step_size


@njit(cache=True, nogil=True, error_model="numpy")
def _adam(p, g, m, v, vmax, w1, one_minus_w1, beta2, one_minus_beta2, decay, wd, eps, step_size, bc2_sqrt, tiny,
          use_wd, decoupled, maximize, small, amsgrad):
    if not (use_wd or maximize or amsgrad):  # the common case as a loop without flags: LLVM vectorizes it (~20%)
        for i in range(p.size):
            mi, vi = _adam_moments(g[i], m[i], v[i], w1, one_minus_w1, beta2, one_minus_beta2, tiny, small)
            m[i] = mi
            v[i] = vi
            p[i] = _adam_update(p[i], mi, vi, eps, step_size, bc2_sqrt)
        return
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        pi = p[i]
        if use_wd:
            if decoupled:
                pi = pi * decay
            else:
                gi = gi + wd * pi
        mi, vi = _adam_moments(gi, m[i], v[i], w1, one_minus_w1, beta2, one_minus_beta2, tiny, small)
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vi = max(vmax[i], vi)
            vmax[i] = vi
        p[i] = _adam_update(pi, mi, vi, eps, step_size, bc2_sqrt)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled,
              step, maximize=False, scratch=None):  # noqa: ARG001 - no scratch needed
    ref._check_optimizer("adam_step", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    _same_float("adam_step", param)
    consts = _adam_consts(param.dtype, lr, beta1, beta2, eps, weight_decay, step)
    amsgrad = max_exp_avg_sq is not None
    io = _InPlace("adam_step", param, exp_avg, exp_avg_sq, max_exp_avg_sq)
    p, m, v, vmax = io.flat
    _update_in_chunks(_adam, (p, _flat(grad, io.order), m, v, vmax if amsgrad else _dummy(param.dtype)),
                      (*consts, weight_decay != 0, bool(decoupled), bool(maximize), ref.lerp_small(1 - beta1), amsgrad))
    io.done()


# A multi-tensor kernel takes its parameters in tuples of this many arrays (short tuples padded with empty ones), so
# one compiled signature serves every model; its loop over them calls the one-parameter kernel.
MULTI_TENSOR = 8


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_multi(ps, gs, ms, vs, vmaxs, w1, one_minus_w1, beta2, one_minus_beta2, decay, wd, eps, step_size,
                bc2_sqrt, tiny, use_wd, decoupled, maximize, small, amsgrad):
    for k in range(len(ps)):
        _adam(ps[k], gs[k], ms[k], vs[k], vmaxs[k], w1, one_minus_w1, beta2, one_minus_beta2, decay, wd, eps,
              step_size, bc2_sqrt, tiny, use_wd, decoupled, maximize, small, amsgrad)


@njit(cache=True, parallel=True, error_model="numpy")
def _adam_multi_par(ps, gs, ms, vs, vmaxs, w1, one_minus_w1, beta2, one_minus_beta2, decay, wd, eps, step_size,
                    bc2_sqrt, tiny, use_wd, decoupled, maximize, small, amsgrad, nch):
    step = _chunk_step(ps, nch)
    for c in prange(nch):
        start = 0
        for k in range(len(ps)):
            a, b = _run_of(c, step, start, ps[k].size)
            if a < b:
                _adam(ps[k][a:b], gs[k][a:b], ms[k][a:b], vs[k][a:b], _part(vmaxs[k], a, b), w1, one_minus_w1, beta2,
                      one_minus_beta2, decay, wd, eps, step_size, bc2_sqrt, tiny, use_wd, decoupled, maximize, small,
                      amsgrad)
            start += ps[k].size


def adam_steps(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
               decoupled, step, maximize=False, scratch=None):
    """The dense (C-ordered or channels-last), writable parameters go through ``_adam_multi``, MULTI_TENSOR per
    call, by dtype (split across threads as one run of elements: ``_multi_in_chunks``): the same loop as
    ``adam_step``'s, so the same bits; the others through ``adam_step``."""
    amsgrad = max_exp_avg_sqs is not None
    vmaxs = max_exp_avg_sqs if amsgrad else [None] * len(params)
    for p, g, m, v, vmax in zip(params, grads, exp_avgs, exp_avg_sqs, vmaxs):
        ref._check_optimizer("adam_steps", p, g, m, v, vmax)
    batches, single = _update_rows(scratch, "adam_steps", params, grads, [p.dtype for p in params],
                                   (exp_avgs, exp_avg_sqs, vmaxs))
    for i in single:
        adam_step(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], vmaxs[i], lr, beta1, beta2, eps, weight_decay,
                  decoupled, step, maximize)
    for dt, rows in batches.items():
        consts = (*_adam_consts(dt, lr, beta1, beta2, eps, weight_decay, step), weight_decay != 0, bool(decoupled),
                  bool(maximize), ref.lerp_small(1 - beta1), amsgrad)
        _multi_in_chunks(_adam_multi, rows, consts, _dummy(dt))


def _update_rows(scratch, name, params, grads, keys, states):
    """The parameters of one multi-tensor update sorted for its loops: ({key: rows}, single). A row is what
    ``_multi_in_chunks`` takes for a parameter updated in place as flat views: (p, g, *states) flat, the dtype's
    empty array for a state the update does not use (None). ``single``: the indices of the parameters the
    one-parameter step takes instead, which copies (not float, p not dense and writable, or a state not writable
    and laid out as p). A dense p is read in its memory order (a channels-last weight), its gradient in the same
    order. The flat views of the parameters and states are made once and kept in the optimizer's workspace
    (``scratch.rows``: optim.optimizer.Workspace) while the same arrays, still writable, come back with the same
    keys; only the gradients, new arrays each step, are flattened on every call."""
    arrays = (*params, *(a for column in states for a in column))
    memo = getattr(scratch, "rows", None)
    kept = memo.get((name, id(params[0]))) if memo is not None else None  # (its arrays keep the id taken)
    if kept is None or kept.keys != keys or len(kept.arrays) != len(arrays) or any(
            a is not b or (a is not None and not a.flags.writeable) for a, b in zip(kept.arrays, arrays)):
        layout, single = {}, []
        for i, (p, *row) in enumerate(zip(params, *states)):
            flat = _flat_row(p, row)
            if flat is None:
                single.append(i)
            else:
                layout.setdefault(keys[i], []).append((i, *flat))
        kept = _KeptRows(keys, arrays, layout, single)
        if memo is not None:
            if len(memo) >= _KEPT_UPDATES:  # the updates of parameters replaced since: forgotten
                memo.clear()
            memo[(name, id(params[0]))] = kept
    return {key: [(p, _flat(grads[i], order), *row) for i, order, p, *row in rows]
            for key, rows in kept.layout.items()}, kept.single


# What _update_rows keeps for one call: its keys and arrays (to know the call again), {key: [(index, memory order,
# flat p, flat states...)]}, and the indices of the parameters the one-parameter step takes
_KeptRows = collections.namedtuple("_KeptRows", "keys arrays layout single")
_KEPT_UPDATES = 64  # the multi-tensor calls an optimizer's workspace keeps rows for (one per group, device, count)


def _flat_row(p, states):
    """(memory order, flat p, flat states...) for a parameter ``_update_rows`` can batch, else None."""
    order = _memory_order(p)
    if p.dtype.char not in "fd" or not p.flags.writeable or not (p.flags.c_contiguous or order):
        return None
    row, empty = [order, _flat(p, order)], _dummy(p.dtype)
    for a in states:
        if a is None:
            row.append(empty)
            continue
        if a.strides != p.strides or not a.flags.writeable:
            return None
        row.append(_flat(a, order))
    return row


def _multi_in_chunks(kernel, rows, consts, empty):
    """``kernel(*columns, *consts)``, a multi-tensor loop, over ``rows`` (one tuple of flat arrays per parameter,
    ``empty`` for a state the update does not use), MULTI_TENSOR parameters per call. A call that
    threads.update_chunks splits runs the kernel's parallel twin instead (``_PARALLEL``): its parameters laid end
    to end, one run of elements per Numba thread, each element updated as in one call."""
    pad = (empty,) * len(rows[0])
    for first in range(0, len(rows), MULTI_TENSOR):
        chunk = rows[first:first + MULTI_TENSOR]
        columns = tuple(zip(*(chunk + [pad] * (MULTI_TENSOR - len(chunk)))))
        nch = threads.update_chunks(sum(row[0].size for row in chunk), _threads)
        if nch:
            _PARALLEL[kernel](*columns, *consts, nch)
        else:
            kernel(*columns, *consts)


def _update_in_chunks(kernel, arrays, consts):
    """``kernel(*arrays, *consts)``, a one-parameter update loop, as a one-parameter call of its multi-tensor loop
    (``_multi_in_chunks``: split over the threads from threads.update_split_from() elements). ``arrays`` are flat,
    the parameter's first; an empty one (a state the update does not use) is passed whole."""
    _multi_in_chunks(_MULTI[kernel], [tuple(arrays)], consts, _dummy(arrays[0].dtype))


# The parallel twins of the multi-tensor loops: chunk c of nch takes elements [c * step, (c + 1) * step) of the
# call's parameters laid end to end (``_run_of``), sliced out of each parameter it covers. Each optimizer's twin
# repeats that loop around its own one-parameter loop: one twin taking the loop as a compiled-function argument made
# the update of the VAE's 0.65M parameters 12% slower (700 against 625 us on one thread) and each call 10-20 us
# longer, and twins made by a factory closing over the loop are as fast but not cached (Numba compiled one again in
# every process: 2.2 s).
@njit(cache=True)
def _chunk_step(ps, nch):
    total = 0
    for k in range(len(ps)):
        total += ps[k].size
    return (total + nch - 1) // nch


@njit(cache=True)
def _run_of(c, step, start, n):
    """The part of a parameter of n elements, at ``start`` in the run of all, that chunk c covers: (a, b)."""
    return max(c * step - start, 0), min((c + 1) * step - start, n)


@njit(cache=True)
def _part(x, a, b):
    return x[a:b] if x.size else x  # an empty array stands for a state the update does not use


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd_multi(ps, gs, bufs, lr, momentum, one_minus_dampening, wd, tiny, use_wd, use_momentum, nesterov, maximize,
               first_step):
    for k in range(len(ps)):
        _sgd(ps[k], gs[k], bufs[k], lr, momentum, one_minus_dampening, wd, tiny, use_wd, use_momentum, nesterov,
             maximize, first_step)


@njit(cache=True, parallel=True, error_model="numpy")
def _sgd_multi_par(ps, gs, bufs, lr, momentum, one_minus_dampening, wd, tiny, use_wd, use_momentum, nesterov,
                   maximize, first_step, nch):
    step = _chunk_step(ps, nch)
    for c in prange(nch):
        start = 0
        for k in range(len(ps)):
            a, b = _run_of(c, step, start, ps[k].size)
            if a < b:
                _sgd(ps[k][a:b], gs[k][a:b], _part(bufs[k], a, b), lr, momentum, one_minus_dampening, wd, tiny,
                     use_wd, use_momentum, nesterov, maximize, first_step)
            start += ps[k].size


def sgd_steps(params, grads, momentum_buffers, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              maximize=False, first_steps=None, scratch=None):
    """As ``adam_steps``: the dense, writable parameters through ``_sgd_multi`` by dtype and first-step flag
    (split across threads as one run of elements), the others through ``sgd_step``; the same loop, so the same
    bits."""
    use_momentum = momentum != 0
    bufs = momentum_buffers if momentum_buffers is not None else [None] * len(params)
    firsts = first_steps if first_steps is not None else [False] * len(params)
    for p, g, buf in zip(params, grads, bufs):
        ref.check_sgd(p, g, buf, momentum)
    batches, single = _update_rows(scratch, "sgd_steps", params, grads,
                                   [(p.dtype, bool(first)) for p, first in zip(params, firsts)],
                                   (bufs if use_momentum else [None] * len(params),))
    for i in single:
        sgd_step(params[i], grads[i], bufs[i], lr, momentum, dampening, nesterov, weight_decay, maximize, firsts[i])
    for (dt, first), rows in batches.items():
        consts = (*_sgd_consts(dt, lr, momentum, dampening, weight_decay), weight_decay != 0, use_momentum,
                  bool(nesterov), bool(maximize), first)
        _multi_in_chunks(_sgd_multi, rows, consts, _dummy(dt))


@njit(cache=True, error_model="numpy")
def _ema(a, v, decay, one_minus_decay):
    for i in range(a.size):
        a[i] = a[i] * decay + one_minus_decay * v[i]


def ema_update(average, value, decay):
    """The reference's two in-place passes and temporary as one loop (each element rounded as there)."""
    if average.shape != value.shape or average.dtype != value.dtype:
        ref.ema_update(average, value, decay)  # its error
    _same_float("ema_update", average)
    io = _InPlace("ema_update", average)
    t = average.dtype.type
    _ema(io.flat[0], _flat(value, io.order), t(decay), t(1.0 - decay))
    io.done()


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop(p, g, v, ga, buf, lr, alpha, one_minus_alpha, one_minus_w, eps, wd, momentum, tiny, use_wd,
             centered, use_momentum, maximize, small):
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if use_wd:
            gi = gi + wd * p[i]
        vi = _no_subnormal(v[i] * alpha + one_minus_alpha * gi * gi, tiny)
        v[i] = vi
        if centered:
            gai = _no_subnormal(ga[i] + one_minus_alpha * (gi - ga[i]) if small else gi - (gi - ga[i]) * one_minus_w,
                                tiny)
            ga[i] = gai
            avg = math.sqrt(vi - gai * gai) + eps
        else:
            avg = math.sqrt(vi) + eps
        if use_momentum:
            b = _no_subnormal(buf[i] * momentum + gi / avg, tiny)
            buf[i] = b
            p[i] = p[i] - lr * b
        else:
            p[i] = p[i] - gi / avg * lr


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, maximize=False, scratch=None):  # noqa: ARG001 - no scratch needed
    ref.check_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, momentum, centered)
    _same_float("rmsprop_step", param)
    use_momentum = momentum > 0
    io = _InPlace("rmsprop_step", param, square_avg, grad_avg if centered else None,
                  momentum_buffer if use_momentum else None)
    p, v, ga, buf = io.flat
    dummy = _dummy(param.dtype)
    consts = _rmsprop_consts(param.dtype, lr, alpha, eps, weight_decay, momentum)
    g = _flat(grad, io.order)
    _update_in_chunks(_rmsprop, (p, g, v, ga if ga is not None else dummy, buf if buf is not None else dummy),
                      (*consts, weight_decay != 0, bool(centered), use_momentum, bool(maximize),
                       ref.lerp_small(1 - alpha)))
    io.done()


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop_multi(ps, gs, vs, gas, bufs, lr, alpha, one_minus_alpha, one_minus_w, eps, wd, momentum, tiny, use_wd,
                   centered, use_momentum, maximize, small):
    for k in range(len(ps)):
        _rmsprop(ps[k], gs[k], vs[k], gas[k], bufs[k], lr, alpha, one_minus_alpha, one_minus_w, eps, wd, momentum,
                 tiny, use_wd, centered, use_momentum, maximize, small)


@njit(cache=True, parallel=True, error_model="numpy")
def _rmsprop_multi_par(ps, gs, vs, gas, bufs, lr, alpha, one_minus_alpha, one_minus_w, eps, wd, momentum, tiny,
                       use_wd, centered, use_momentum, maximize, small, nch):
    step = _chunk_step(ps, nch)
    for c in prange(nch):
        start = 0
        for k in range(len(ps)):
            a, b = _run_of(c, step, start, ps[k].size)
            if a < b:
                _rmsprop(ps[k][a:b], gs[k][a:b], vs[k][a:b], _part(gas[k], a, b), _part(bufs[k], a, b), lr, alpha,
                         one_minus_alpha, one_minus_w, eps, wd, momentum, tiny, use_wd, centered, use_momentum,
                         maximize, small)
            start += ps[k].size


_MULTI = {_adam: _adam_multi, _sgd: _sgd_multi, _rmsprop: _rmsprop_multi}  # one-parameter loop -> multi-tensor
_PARALLEL = {_adam_multi: _adam_multi_par, _sgd_multi: _sgd_multi_par, _rmsprop_multi: _rmsprop_multi_par}


def rmsprop_steps(params, grads, square_avgs, grad_avgs, momentum_buffers, lr, alpha=0.99, eps=1e-8,
                  weight_decay=0.0, momentum=0.0, centered=False, maximize=False, scratch=None):
    """As ``adam_steps``: the dense, writable parameters through ``_rmsprop_multi`` by dtype (split across
    threads as one run of elements), the others through ``rmsprop_step``; the same loop, so the same bits."""
    use_momentum = momentum > 0
    gas = grad_avgs if centered else [None] * len(params)
    bufs = momentum_buffers if use_momentum else [None] * len(params)
    for p, g, v, ga, buf in zip(params, grads, square_avgs, gas, bufs):
        ref.check_rmsprop(p, g, v, ga, buf, momentum, centered)
    batches, single = _update_rows(scratch, "rmsprop_steps", params, grads, [p.dtype for p in params],
                                   (square_avgs, gas, bufs))
    for i in single:
        rmsprop_step(params[i], grads[i], square_avgs[i], gas[i], bufs[i], lr, alpha, eps, weight_decay, momentum,
                     centered, maximize)
    for dt, rows in batches.items():
        consts = (*_rmsprop_consts(dt, lr, alpha, eps, weight_decay, momentum), weight_decay != 0, bool(centered),
                  use_momentum, bool(maximize), ref.lerp_small(1 - alpha))
        _multi_in_chunks(_rmsprop_multi, rows, consts, _dummy(dt))


# ---- batch normalization (training mode), with the activation that follows it ------------------------------------
# Statistics in float64 for either dtype; the variance from sums shifted by the first row (stable when that row is
# a typical sample), so the forward reads x twice: once for the statistics, once to write x_hat and y. ReLU and
# LeakyReLU (act, slope p1) are applied as y is written, and their derivative (read from y) as g is read: the
# separate activation pass over the output and over its gradient is gone.

@njit(cache=True, error_model="numpy")
def _bn_fwd(x, w, b, has_w, has_b, eps, y, xhat, mean, var, inv_std, s1, s2, act, p1, lo, hi):
    """Columns lo..hi of the forward; s1, s2 are float64 scratch of one value per column."""
    n = x.shape[0]
    ulo, uhi = np.uint64(lo), np.uint64(hi)  # unsigned indices: no negative-index check, so the loops vectorize
    zero = x.dtype.type(0)
    for r in range(n):
        for j in range(ulo, uhi):
            d = np.float64(x[r, j]) - np.float64(x[0, j])
            s1[j] += d
            s2[j] += d * d
    for j in range(ulo, uhi):
        m1 = s1[j] / n
        vj = max(s2[j] / n - m1 * m1, 0.0)
        mean[j] = np.float64(x[0, j]) + m1
        var[j] = vj
        inv_std[j] = 1.0 / math.sqrt(vj + eps)
    for r in range(n):
        for j in range(ulo, uhi):
            h = (x[r, j] - mean[j]) * inv_std[j]
            xhat[r, j] = h
            if has_w:
                h = h * w[j]
            if has_b:
                h = h + b[j]
            if act == RELU:
                h = zero if h <= zero else h  # NaN passes through, as maximum(h, 0)
            elif act == LEAKY_RELU:
                h = h if h > zero else h * p1
            y[r, j] = h


@njit(cache=True, parallel=True, error_model="numpy")
def _bn_fwd_par(x, w, b, has_w, has_b, eps, y, xhat, mean, var, inv_std, s1, s2, act, p1, nch):
    c = x.shape[1]
    step = (c + nch - 1) // nch
    for k in prange(nch):
        _bn_fwd(x, w, b, has_w, has_b, eps, y, xhat, mean, var, inv_std, s1, s2, act, p1, k * step,
                min(c, (k + 1) * step))


@njit(cache=True, inline="always")
def _bn_act_grad(gj, yj, act, p1, zero, one):
    """gj times the activation's derivative, read from its output yj (both passes of _bn_bwd need it)."""
    if act == RELU:
        return gj * (one if yj > zero else zero)
    if act == LEAKY_RELU:
        return gj * (one if yj > zero else p1)
    return gj


@njit(cache=True, error_model="numpy")
def _bn_bwd(g, y, xhat, w, has_w, inv_std, gx, gw, gb, sb, sw, scale, act, p1, lo, hi):
    """Columns lo..hi of the backward; g is the gradient of the activated output y (y unused for identity)."""
    n = g.shape[0]
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    zero, one = g.dtype.type(0), g.dtype.type(1)
    for r in range(n):
        for j in range(ulo, uhi):
            g64 = np.float64(_bn_act_grad(g[r, j], y[r, j], act, p1, zero, one))
            sb[j] += g64
            sw[j] += g64 * xhat[r, j]
    nn = g.dtype.type(n)
    for j in range(ulo, uhi):
        gb[j] = sb[j]
        gw[j] = sw[j]
        scale[j] = (w[j] * inv_std[j] if has_w else inv_std[j]) / nn
    for r in range(n):
        for j in range(ulo, uhi):
            gj = _bn_act_grad(g[r, j], y[r, j], act, p1, zero, one)
            gx[r, j] = scale[j] * (nn * gj - gb[j] - xhat[r, j] * gw[j])


@njit(cache=True, parallel=True, error_model="numpy")
def _bn_bwd_par(g, y, xhat, w, has_w, inv_std, gx, gw, gb, sb, sw, scale, act, p1, nch):
    c = g.shape[1]
    step = (c + nch - 1) // nch
    for k in prange(nch):
        _bn_bwd(g, y, xhat, w, has_w, inv_std, gx, gw, gb, sb, sw, scale, act, p1, k * step,
                min(c, (k + 1) * step))


def _bn_2d(a):
    """(N, C) or (N, C, *) -> contiguous (rows, C): a view when ``a`` is stored channels-last (a convolution's
    output), else one transposing copy."""
    if a.ndim == 2:
        return _rows(a)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    return np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(-1, a.shape[1])


def _bn_back(a2, like):
    """The (rows, C) result as ``like``'s shape, stored channels-last."""
    if like.ndim == 2:
        return a2
    n, c = like.shape[:2]
    return a2.reshape((n,) + like.shape[2:] + (c,)).transpose((0, like.ndim - 1) + tuple(range(1, like.ndim - 1)))


def _bn_rank(name, x):
    if x.ndim < 2:
        raise ValueError(f"{name}: the Numba loops take (N, C, *) input, got shape {x.shape}")


def _bn_fwd_run(name, x, weight, bias, eps, act, p1):
    _bn_rank(name, x)
    _same_float(name, x, weight, bias)
    x2 = _bn_2d(x)
    rows, c = x2.shape
    if rows == 0:
        raise ValueError(f"{name}: needs at least one sample per channel, got input shape {x.shape}")
    dt = x.dtype
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    mean, var, inv_std = np.empty(c, dt), np.empty(c, dt), np.empty(c, dt)
    w = _flat(weight) if weight is not None else _dummy(dt)
    b = _flat(bias) if bias is not None else _dummy(dt)
    args = (x2, w, b, weight is not None, bias is not None, float(eps), y, xhat, mean, var, inv_std,
            np.zeros(c), np.zeros(c), _CODES[act], dt.type(p1))
    nch = min(_chunks(x2.size), c)
    if nch > 1:
        _bn_fwd_par(*args, nch)
    else:
        _bn_fwd(*args, 0, c)
    return _bn_back(y, x), _bn_back(xhat, x), mean, var, inv_std


def batchnorm_act_fwd(x, weight, bias, eps=1e-5, act="identity", p1=0.0):
    ref.check_bn_act("batchnorm_act_fwd", act, p1)
    return _bn_fwd_run("batchnorm_act_fwd", x, weight, bias, eps, act, p1)


def batchnorm_fwd(x, weight, bias, eps=1e-5):
    return _bn_fwd_run("batchnorm_fwd", x, weight, bias, eps, "identity", 0.0)


def _bn_bwd_run(name, g, y, x_hat, weight, inv_std, act, p1):
    _bn_rank(name, x_hat)
    ref._check_shapes(name, g, x_hat, y)
    _same_float(name, g, x_hat, y, weight, inv_std)
    g2, h2 = _bn_2d(g), _bn_2d(x_hat)
    y2 = _bn_2d(y) if y is not None else g2  # identity: y is not read
    c = g2.shape[1]
    dt = g.dtype
    gx, gw, gb = np.empty_like(g2), np.empty(c, dt), np.empty(c, dt)
    w = _flat(weight) if weight is not None else _dummy(dt)
    args = (g2, y2, h2, w, weight is not None, _flat(inv_std), gx, gw, gb, np.zeros(c), np.zeros(c),
            np.empty(c, dt), _CODES[act], dt.type(p1))
    nch = min(_chunks(g2.size), c)
    if nch > 1:
        _bn_bwd_par(*args, nch)
    else:
        _bn_bwd(*args, 0, c)
    return _bn_back(gx, g), gw, gb


def batchnorm_act_bwd(g, y, x_hat, weight, inv_std, act="identity", p1=0.0):
    ref.check_bn_act("batchnorm_act_bwd", act, p1)
    return _bn_bwd_run("batchnorm_act_bwd", g, y, x_hat, weight, inv_std, act, p1)


def batchnorm_bwd(g, x_hat, weight, inv_std):
    return _bn_bwd_run("batchnorm_bwd", g, None, x_hat, weight, inv_std, "identity", 0.0)


# ---- losses --------------------------------------------------------------------------------------------------------
# The loss kernels run in blocks of BCE_BLOCK elements on the ufunc threads: per block, the two transcendental
# passes in NumPy (exp(-|x|), then log(1 + e)) and everything else in loops, so the block's temporaries stay in the
# core's cache. The loops carry no running sum (a float accumulator keeps a loop from vectorizing); the reduction is
# NumPy's over the per-element losses, the reference's own sum.
BCE_BLOCK = 1 << 15


@njit(cache=True, error_model="numpy")
def _log1p_small(ei, log_w, zero, one):
    """reference.log1p_small of one element, given log(w) = log(1 + e) from NumPy: the same operations."""
    d = (ei + one) - one
    return ei if d == zero else log_w * (ei / d)


def _exp_and_log(xb):
    """e = exp(-|x|) and log(1 + e) of a block (1 + e rounded as log1p_small rounds it), one pass each."""
    e, lw = np.empty_like(xb), np.empty_like(xb)
    _exp_neg_abs_into(xb, e)
    np.add(e, e.dtype.type(1), out=lw)
    np.log(lw, out=lw)
    return e, lw


@njit(cache=True, nogil=True, error_model="numpy")
def _bce_plain(x, t, e, log_w, loss, grad, need_grad, gscale):
    """Per-element loss and gradient without weights (the common case: a loop with no branches, so it vectorizes).

    e = exp(-|x|) and log_w = log(1 + e) come from NumPy (_exp_and_log); log1p(e) is reference.log1p_small."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(x.size):
        xi, ti = x[i], t[i]
        l1p = _log1p_small(e[i], log_w[i], zero, one)
        loss[i] = (one - ti) * xi - (min(xi, zero) - l1p)  # log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|))
    if need_grad:
        for i in range(x.size):
            xi, ei = x[i], e[i]
            grad[i] = ((one if xi >= zero else ei) / (one + ei) - t[i]) * gscale


@njit(cache=True, nogil=True, error_model="numpy")
def _bce(x, t, e, log_w, w, pw, has_w, has_pw, loss, grad, need_grad, gscale, off):
    """Per-element loss and gradient with a weight and/or pos_weight.

    ``w`` and ``pw`` repeat with their own length (a trailing block of x's shape, e.g. one value per class on the
    last axis); ``off`` is where this part starts in x.
    """
    zero, one = x.dtype.type(0), x.dtype.type(1)
    nw, npw = max(w.size, 1), max(pw.size, 1)
    lw = pwi = one
    for i in range(x.size):
        xi, ti = x[i], t[i]
        ls = min(xi, zero) - _log1p_small(e[i], log_w[i], zero, one)  # log(sigmoid(x))
        if has_pw:
            pwi = pw[(off + i) % npw]
            lw = one + (pwi - one) * ti
            li = (one - ti) * xi - lw * ls
        else:
            li = (one - ti) * xi - ls
        if has_w:
            li = li * w[(off + i) % nw]
        loss[i] = li
        if need_grad:
            ei = e[i]
            s = (one if xi >= zero else ei) / (one + ei)
            gi = lw * s - pwi * ti if has_pw else s - ti
            if has_w:
                gi = gi * w[(off + i) % nw]
            grad[i] = gi * gscale


def _periodic(a, shape, dt):
    """``a`` as a flat array that repeats with its own length along x's flat layout, materialized if needed."""
    if a is None:
        return _dummy(dt)
    block = a.shape
    while block and block[0] == 1:  # leading ones do not change the layout
        block = block[1:]
    if not block or block == shape[len(shape) - len(block):]:
        return _flat(a)
    return np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1)


def bce_with_logits(x, t, weight=None, pos_weight=None, reduction="mean", need_grad=True):
    ref.check_bce("bce_with_logits", x, t, weight, pos_weight, reduction)
    _same_float("bce_with_logits", x, t, weight, pos_weight)
    dt = x.dtype
    xf, tf = _flat(x), _flat(t)
    n = xf.size
    loss = np.empty(n, dt)
    grad = np.empty(n, dt) if need_grad else _dummy(dt)
    gscale = dt.type(1 / n) if reduction == "mean" and n else dt.type(1)
    plain = weight is None and pos_weight is None
    w, pw = _periodic(weight, x.shape, dt), _periodic(pos_weight, x.shape, dt)

    def part(lo, hi):
        for b in range(lo, hi, BCE_BLOCK):
            c = min(hi, b + BCE_BLOCK)
            e, log_w = _exp_and_log(xf[b:c])
            gb = grad[b:c] if need_grad else grad
            if plain:
                _bce_plain(xf[b:c], tf[b:c], e, log_w, loss[b:c], gb, need_grad, gscale)
            else:
                _bce(xf[b:c], tf[b:c], e, log_w, w, pw, weight is not None, pos_weight is not None, loss[b:c], gb,
                     need_grad, gscale, b)
    _in_chunks(part, n)
    if reduction == "none":
        out = loss.reshape(x.shape)
    else:  # the reference's reduction over the same per-element losses
        out = np.asarray(loss.sum() if reduction == "sum" else loss.mean(), dt)
    return out, (grad.reshape(x.shape) if need_grad else None)


# Row kernels: Numba does the row maxima, sums and the writing; the exponentials are one NumPy (SIMD) call on the
# shifted rows. Each row's sum is accumulated in float64.

@njit(cache=True, error_model="numpy")
def _shift_rows(x, shifted):
    """shifted = x - (row maximum), leaving the shift out of rows whose maximum is not finite."""
    zero = x.dtype.type(0)
    for r in range(x.shape[0]):
        row = x[r]
        m = row[0]
        for j in range(1, row.size):
            m = max(m, row[j])
        if not math.isfinite(m):
            m = zero
        for j in range(row.size):
            shifted[r, j] = row[j] - m


@njit(cache=True, parallel=True, error_model="numpy")
def _shift_rows_par(x, shifted, nch):
    n = x.shape[0]
    step = (n + nch - 1) // nch
    for k in prange(nch):
        lo, hi = k * step, min(n, (k + 1) * step)
        _shift_rows(x[lo:hi], shifted[lo:hi])


@njit(cache=True, error_model="numpy")
def _log_softmax_finish(shifted, e, out):
    """out = shifted - log(sum(e)) per row (e = exp(shifted)); out may be shifted itself."""
    for r in range(shifted.shape[0]):
        s = 0.0
        for j in range(shifted.shape[1]):
            s += e[r, j]
        lse = shifted.dtype.type(math.log(s))
        for j in range(shifted.shape[1]):
            out[r, j] = shifted[r, j] - lse


@njit(cache=True, parallel=True, error_model="numpy")
def _log_softmax_finish_par(shifted, e, out, nch):
    n = shifted.shape[0]
    step = (n + nch - 1) // nch
    for k in prange(nch):
        lo, hi = k * step, min(n, (k + 1) * step)
        _log_softmax_finish(shifted[lo:hi], e[lo:hi], out[lo:hi])


@njit(cache=True, error_model="numpy")
def _log_softmax_bwd(e, g, out):
    """out = g - e * sum(g) per row, e = exp(y)."""
    for r in range(g.shape[0]):
        s = 0.0
        for j in range(g.shape[1]):
            s += g[r, j]
        sd = g.dtype.type(s)
        for j in range(g.shape[1]):
            out[r, j] = g[r, j] - e[r, j] * sd


@njit(cache=True, parallel=True, error_model="numpy")
def _log_softmax_bwd_par(e, g, out, nch):
    n = g.shape[0]
    step = (n + nch - 1) // nch
    for k in prange(nch):
        lo, hi = k * step, min(n, (k + 1) * step)
        _log_softmax_bwd(e[lo:hi], g[lo:hi], out[lo:hi])


def _last_axis_2d(a):
    if a.ndim == 0:
        raise ValueError("log_softmax: expected at least one dimension, got a 0-d array")
    return _rows(a).reshape(-1, a.shape[-1]) if a.shape[-1] else None


def _row_chunks(a2):
    nch = min(_chunks(a2.size), a2.shape[0])
    return nch if nch > 1 else 0


def _shifted_exp(x2):
    """(x - row max, its exp) for a contiguous 2-D array."""
    shifted = np.empty_like(x2)
    nch = _row_chunks(x2)
    if nch:
        _shift_rows_par(x2, shifted, nch)
    else:
        _shift_rows(x2, shifted)
    return shifted, np.exp(shifted)


def log_softmax_fwd(x):
    _same_float("log_softmax_fwd", x)
    x2 = _last_axis_2d(x)
    if x2 is None:
        return np.empty_like(x)
    shifted, e = _shifted_exp(x2)
    nch = _row_chunks(x2)
    if nch:
        _log_softmax_finish_par(shifted, e, shifted, nch)
    else:
        _log_softmax_finish(shifted, e, shifted)
    return shifted.reshape(x.shape)


def log_softmax_bwd(y, g):
    _same_float("log_softmax_bwd", y, g)
    ref._check_shapes("log_softmax_bwd", y, g)
    y2, g2 = _last_axis_2d(y), _last_axis_2d(g)
    if y2 is None:
        return np.empty_like(g)
    out = np.empty_like(g2)
    e = np.exp(y2)
    nch = _row_chunks(g2)
    if nch:
        _log_softmax_bwd_par(e, g2, out, nch)
    else:
        _log_softmax_bwd(e, g2, out)
    return out.reshape(g.shape)


@njit(cache=True, error_model="numpy")
def _ce(shifted, e, target, w, has_w, ignore_index, loss, grad, need_grad):
    """Row losses w[t] * (log(sum e) - shifted[t]) and gradients w[t] * (e / sum e - onehot(t)), unscaled."""
    c = shifted.shape[1]
    zero, one = shifted.dtype.type(0), shifted.dtype.type(1)
    for r in range(shifted.shape[0]):
        tr = target[r]
        if tr == ignore_index:
            loss[r] = zero
            if need_grad:
                for j in range(c):
                    grad[r, j] = zero
            continue
        wr = w[tr] if has_w else one
        s = 0.0
        for j in range(c):
            s += e[r, j]
        loss[r] = -(shifted[r, tr] - shifted.dtype.type(math.log(s))) * wr
        if need_grad:
            inv = shifted.dtype.type(1.0 / s)
            for j in range(c):
                grad[r, j] = e[r, j] * inv * wr
            grad[r, tr] -= wr


@njit(cache=True, parallel=True, error_model="numpy")
def _ce_par(shifted, e, target, w, has_w, ignore_index, loss, grad, need_grad, nch):
    n = shifted.shape[0]
    step = (n + nch - 1) // nch
    for k in prange(nch):
        lo, hi = k * step, min(n, (k + 1) * step)
        _ce(shifted[lo:hi], e[lo:hi], target[lo:hi], w, has_w, ignore_index, loss[lo:hi],
            grad[lo:hi] if need_grad else grad, need_grad)


@njit(cache=True, error_model="numpy")
def _ce_check(target, n_classes, ignore_index, w, has_w):
    """(first row with an out-of-range target or -1, summed weight of the counted rows)."""
    total = 0.0
    for r in range(target.size):
        tr = target[r]
        if tr == ignore_index:
            continue
        if tr < 0 or tr >= n_classes:
            return r, total
        total += w[tr] if has_w else 1.0
    return -1, total


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", need_grad=True):
    ref._check_reduction("cross_entropy", reduction)
    ref.check_targets("cross_entropy", logits, target, weight, ignore_index)
    _same_float("cross_entropy", logits, weight)
    x = _rows(logits)
    n, c = x.shape
    tg = _flat(target).astype(np.int64, copy=False)
    dt = x.dtype
    w = _flat(weight) if weight is not None else _dummy(dt)
    bad, total = _ce_check(tg, c, int(ignore_index), w, weight is not None)
    if bad >= 0:
        raise IndexError(f"cross_entropy: target {int(tg[bad])} at row {bad} is out of range for {c} classes")
    loss = np.empty(n, dt)
    grad = np.empty((n, c), dt) if need_grad else np.empty((0, 0), dt)
    shifted, e = _shifted_exp(x)
    args = (shifted, e, tg, w, weight is not None, int(ignore_index), loss, grad, bool(need_grad))
    nch = _row_chunks(x)
    if nch:
        _ce_par(*args, nch)
    else:
        _ce(*args)
    if reduction == "none":
        return loss, (grad if need_grad else None)
    s = loss.sum()
    if reduction == "sum":
        return s, (grad if need_grad else None)
    total = dt.type(total)
    with np.errstate(invalid="ignore", divide="ignore"):  # every row ignored: 0 / 0 = nan, as PyTorch
        if need_grad:
            grad /= total
        return s / total, (grad if need_grad else None)
from .conv_cpu import conv2d_fwd, conv2d_bwd_input, conv2d_bwd_weight  # noqa: E402,F401
