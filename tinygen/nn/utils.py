"""Gradient clipping, in place on ``.grad`` (as ``torch.nn.utils``).

The norms are computed on the gradients' device with their array module and stay there: clipping never forces a
device-to-host copy unless ``error_if_nonfinite`` asks for a check.
"""
import math

from ..capture import replayed
from ..kernels.gemm import mm
from ..tensor import Tensor, _array_identity, _make, tensor


def _as_list(parameters, name):
    if isinstance(parameters, Tensor):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{name}: parameters must be a tensor or an iterable of tensors, got "
                        f"{type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: item {i} of parameters is a {type(p).__name__}, not a Tensor")
    return params


def _norm_type(norm_type, name):
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        return math.inf
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: norm_type must be a number or 'inf', got {norm_type!r}") from None
    if math.isnan(p) or p < 0:
        raise ValueError(f"{name}: norm_type must be >= 0 or inf, got {norm_type!r}")
    return p


def _vector_norm(xp, a, p):
    """The p-norm of all entries of array ``a`` (a 0-d array on a's device); p = 0 counts non-zeros."""
    if a.size == 0:
        return xp.zeros((), dtype=a.dtype)
    if p == math.inf:
        return xp.abs(a).max()
    if p == 0:
        return (a != 0).sum().astype(a.dtype)
    if p == 1:
        return xp.abs(a).sum()
    if p == 2:  # a 1 x 1 product through gemm.mm, the one route to cuBLAS inside a CUDA graph's capture (NumPy's
        row = a.reshape(1, -1)  # bits are its dot's)
        return xp.sqrt(mm(row, row.T)[0, 0])
    return (xp.abs(a) ** p).sum() ** (1.0 / p)


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False):
    """The ``norm_type``-norm of the vector of the tensors' own norms, as a 0-d tensor (as PyTorch).

    For p > 0 and inf that is the norm of all entries together, as if concatenated into one vector; for
    p = 0 it counts the tensors that have a non-zero entry.
    """
    name = "get_total_norm"
    p = _norm_type(norm_type, name)
    tensors = [t for t in _as_list(tensors, name) if t is not None]
    if not tensors:
        return tensor(0.0)
    device = tensors[0]._device
    for t in tensors:
        if t._device != device:
            raise RuntimeError(f"{name}: all tensors must be on one device, got {device} and {t._device}")
    xp = tensors[0].xp
    norms = [_vector_norm(xp, t.data, p) for t in tensors]
    dtype = xp.result_type(*[n.dtype for n in norms])
    total = _vector_norm(xp, xp.stack([n.astype(dtype) for n in norms]), p)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {float(total)}, so they "
                           f"cannot be clipped; pass error_if_nonfinite=False to scale them by it anyway")
    return _make(xp.asarray(total), device)


def _max_norm(max_norm, name):
    """``max_norm`` as a float >= 0: a negative bound would flip the gradients' sign, NaN would wipe them."""
    try:
        value = float(max_norm)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: max_norm must be a number, got {max_norm!r}") from None
    if not value >= 0:
        raise ValueError(f"{name}: max_norm must be >= 0, got {max_norm!r}")
    return value


def _reads_grads(name):
    """A clipping call's ``grads`` (``capture.replayed``): it reads (and scales) the gradients of its parameters."""
    return lambda parameters, *args, **kwargs: ("reads", _as_list(parameters, name))


def _writes_grads(name):
    """A clipping call's ``writes`` (``capture.replayed``): the gradients of its parameters, scaled in place."""
    return lambda parameters, *args, **kwargs: tuple(p.grad for p in _as_list(parameters, name) if p.grad is not None)


def _key(*values):
    """A graph key (``capture.replayed``) of numbers and tensors: a tensor by its array's identity."""
    return tuple(map(_array_identity, values))


# device work only: a CUDA graph may take these calls (their keys name what the kernels take from Python)
@replayed(grads=_reads_grads("clip_grads_with_norm_"), writes=_writes_grads("clip_grads_with_norm_"),
          graph_key=lambda parameters, max_norm, total_norm: _key(max_norm, total_norm,
                                                                  *_as_list(parameters, "clip_grads_with_norm_")))
def clip_grads_with_norm_(parameters, max_norm, total_norm):
    """Scale the gradients by ``min(1, max_norm / (total_norm + 1e-6))``, in place."""
    max_norm = _max_norm(max_norm, "clip_grads_with_norm_")
    grads = [p.grad for p in _as_list(parameters, "clip_grads_with_norm_") if p.grad is not None]
    if not grads:
        return
    total = total_norm.data if isinstance(total_norm, Tensor) else total_norm
    xp = grads[0].xp
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)  # stays on the device: no sync
    for g in grads:
        g.data *= coef.astype(g.data.dtype)


@replayed(grads=_reads_grads("clip_grad_norm_"), writes=_writes_grads("clip_grad_norm_"),
          graph_key=lambda parameters, max_norm, norm_type=2.0, error_if_nonfinite=False: None if error_if_nonfinite
          else _key(max_norm, norm_type, *_as_list(parameters, "clip_grad_norm_")))
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Rescale the gradients of ``parameters`` in place so that their total norm is at most ``max_norm``.

    The total norm is that of all gradients together; each is multiplied by ``max_norm / (total + 1e-6)`` when
    that is below 1. Returns the total norm before clipping (a 0-d tensor). Parameters without ``.grad`` are
    skipped. With ``error_if_nonfinite=True`` a NaN or infinite total norm raises instead of spreading NaNs.
    """
    params = _as_list(parameters, "clip_grad_norm_")
    max_norm = _max_norm(max_norm, "clip_grad_norm_")
    grads = [p.grad for p in params if p.grad is not None]
    total = get_total_norm(grads, norm_type, error_if_nonfinite)
    if grads:
        clip_grads_with_norm_(params, max_norm, total)
    return total


@replayed(grads=_reads_grads("clip_grad_value_"), writes=_writes_grads("clip_grad_value_"))
def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient of ``parameters`` to ``[-clip_value, clip_value]``, in place."""
    try:
        clip_value = float(clip_value)
    except (TypeError, ValueError):
        raise TypeError(f"clip_grad_value_: clip_value must be a number, got {clip_value!r}") from None
    if not clip_value >= 0:
        raise ValueError(f"clip_grad_value_: clip_value must be >= 0, got {clip_value!r}")
    for p in _as_list(parameters, "clip_grad_value_"):
        g = p.grad
        if g is not None:
            g.xp.clip(g.data, -clip_value, clip_value, out=g.data)
