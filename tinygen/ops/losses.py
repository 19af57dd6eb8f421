"""Loss functions: each a Function (forward on arrays, differentiable backward) plus its public functional form."""
import math

import numpy as np

from ..autograd.function import Function
from ..tensor import Tensor, _make
from .elementwise import where
from .reduce import norm, softmax


# ---- losses added for PyTorch parity
def _legacy_reduction(size_average, reduce, reduction):
    """PyTorch's deprecated ``size_average`` / ``reduce`` flags, when given, decide the reduction."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def _check_loss_args(input, target, reduction, fn, reductions=("none", "mean", "sum")):
    if reduction not in reductions:
        raise ValueError(f"{fn}: reduction must be one of {', '.join(repr(r) for r in reductions)}; "
                         f"got {reduction!r}")
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype.kind != "f":
            raise TypeError(f"{fn}: {name} must be a floating tensor, got dtype {t.dtype}")
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{fn}: input has shape {tuple(input.shape)} but target has shape {tuple(target.shape)}; "
                         f"they must be equal")
    if input.dtype != target.dtype:
        raise TypeError(f"{fn}: input has dtype {input.dtype} but target has dtype {target.dtype}")


def _reduced(loss, reduction):
    """A per-element loss array reduced; "batchmean" divides the sum by the size of the first dimension."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    n = loss.size if reduction == "mean" else (loss.shape[0] if loss.ndim else 1)
    return total / n if n else total * math.nan


def _per_element(g, reduction, shape):
    """The gradient reaching each element's loss from the reduced loss's gradient ``g``."""
    if reduction == "none":
        return g
    n = 1
    if reduction == "mean":
        for s in shape:
            n *= s
    elif reduction == "batchmean" and shape:
        n = shape[0]
    return g * (1.0 / n if n else math.nan)


def _value_only(x, lower):
    """``x`` clamped below at ``lower`` in value, with the gradient of ``x`` itself (PyTorch clamps such
    values in place under no_grad)."""
    return x + _make(x.xp.maximum(x.data, x.data.dtype.type(lower)) - x.data, x._device)


class KLDivFunction(Function):
    """KL divergence ``target * (log(target) - input)`` per element (0 where target is 0), with the input a
    log-probability; with ``log_target`` the target is one too: ``exp(target) * (target - input)``."""

    @staticmethod
    def forward(ctx, x, t, reduction, log_target):
        ctx.save_for_backward(x, t)
        ctx.reduction, ctx.log_target = reduction, log_target
        xp, xd, td = ctx.xp, x.data, t.data
        if log_target:
            loss = xp.exp(td) * (td - xd)
        else:
            xlogx = td * xp.log(xp.where(td == 0, 1, td))  # 0 * log(0) = 0
            loss = xlogx - td * xd
        return _reduced(loss, reduction)

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        need = ctx.next_edges
        ge = _per_element(g, ctx.reduction, x.shape)
        p = t.exp() if ctx.log_target else t
        gx = -(ge * p) if need[0] is not None else None
        gt = None
        if need[1] is not None:
            gt = ge * (p * (t - x + 1)) if ctx.log_target else ge * (t.log() + 1 - x)
        return gx, gt, None, None


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    """KL divergence between the distribution ``target`` and the log-probabilities ``input``, as PyTorch:
    ``reduction`` "batchmean" (the sum over the batch divided by its size, the true KL) "sum", "mean" (over
    every element) or "none"."""
    fn = "kl_div"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_loss_args(input, target, reduction, fn, ("none", "batchmean", "sum", "mean"))
    return KLDivFunction.apply(input, target, reduction, bool(log_target))


class HuberFunction(Function):
    """Per element with d = input - target: ``0.5 * d**2 * inner`` where |d| < delta, else
    ``outer * (|d| - 0.5 * delta)``. Huber loss is (inner, outer) = (1, delta); smooth L1 is (1 / beta, 1).
    The gradient is ``d * inner`` inside and ``outer * sign(d)`` outside."""

    @staticmethod
    def forward(ctx, x, t, delta, inner, outer, reduction):
        ctx.save_for_backward(x, t)
        ctx.delta, ctx.inner, ctx.outer, ctx.reduction = delta, inner, outer, reduction
        xp = ctx.xp
        d = x.data - t.data
        a = abs(d)
        loss = xp.where(a < delta, (0.5 * inner) * d * d, outer * (a - 0.5 * delta))
        return _reduced(loss, reduction)

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        need = ctx.next_edges
        d = x - t
        inside = _make(abs(d.data) < ctx.delta, x._device)
        slope = _make(ctx.xp.sign(d.data) * d.data.dtype.type(ctx.outer), x._device)
        gx = _per_element(g, ctx.reduction, x.shape) * where(inside, d * ctx.inner, slope)
        return (gx if need[0] is not None else None), (-gx if need[1] is not None else None), None, None, None, None


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    """``0.5 * d**2 / beta`` where |d| < beta, else ``|d| - 0.5 * beta`` (d = input - target); beta = 0 is
    the L1 loss."""
    fn = "smooth_l1_loss"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_loss_args(input, target, reduction, fn)
    beta = float(beta)
    if beta < 0:
        raise ValueError(f"{fn}: beta must be >= 0 (smooth_l1_loss does not support negative values for beta), "
                         f"got {beta}")
    return HuberFunction.apply(input, target, beta, 1.0 / beta if beta else 0.0, 1.0, reduction)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """``0.5 * d**2`` where |d| < delta, else ``delta * (|d| - 0.5 * delta)`` (d = input - target)."""
    fn = "huber_loss"
    _check_loss_args(input, target, reduction, fn)
    delta = float(delta)
    if not delta > 0:
        raise ValueError(f"{fn}: delta must be positive (huber_loss does not support non-positive values for "
                         f"delta), got {delta}")
    if weight is None:
        return HuberFunction.apply(input, target, delta, 1.0, delta, reduction)
    if not isinstance(weight, Tensor) or tuple(weight.shape) != tuple(input.shape):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{fn}: weight must have the input's shape {tuple(input.shape)}, got {shape}")
    loss = HuberFunction.apply(input, target, delta, 1.0, delta, "none") * weight
    return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()


def softmin(input, dim=None, dtype=None):
    """``softmax(-input, dim)``."""
    if dim is None:
        raise TypeError("softmin: dim must be given")
    if dtype is not None:
        input = input.to(dtype)
    return softmax(-input, dim)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    """``input`` divided by its p-norm along ``dim``, the norm clamped below at ``eps``."""
    return input / norm(input, p, dim, keepdim=True).clamp(min=eps)


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """The cosine of the angle between ``x1`` and ``x2`` along ``dim`` (they broadcast), as PyTorch: each is
    divided by its norm first (the norms clamped below at ``eps`` in value only), then the products summed."""
    for name, t in (("x1", x1), ("x2", x2)):
        if not isinstance(t, Tensor) or t.dtype.kind != "f":
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"cosine_similarity: {name} must be a floating tensor, got {what}")
    if x1.shape != x2.shape:
        try:
            shape = np.broadcast_shapes(tuple(x1.shape), tuple(x2.shape))
        except ValueError:
            raise RuntimeError(f"cosine_similarity: x1 of shape {tuple(x1.shape)} and x2 of shape "
                               f"{tuple(x2.shape)} do not broadcast") from None
        x1, x2 = x1.expand(shape), x2.expand(shape)
    n1 = _value_only(norm(x1, 2, dim, keepdim=True), eps)
    n2 = _value_only(norm(x2, 2, dim, keepdim=True), eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)
