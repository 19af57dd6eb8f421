"""Losses: each a ``Function`` (forward on arrays, differentiable backward) plus its public functional form,
exported by ``tinygen.nn.functional``; the matching modules are in ``tinygen.nn.losses``.

Each loss with a closed-form gradient is ONE ``Function`` whose forward computes the per-element loss and its
reduction on arrays, and whose backward is the closed form written with tinygen ops (differentiable again).
``reduction`` is "mean" (average over elements; for class losses over the weights of the targets, as PyTorch),
"sum", or "none" (one loss per element / per sample).
"""
import contextlib
import math

import numpy as np

from .. import backend, kernels
from ..autograd.function import Function
from ..tensor import Tensor, _make, full_like, require_tensor
from .elementwise import where
from .reduce import norm, softmax


_REDUCTIONS = ("none", "mean", "sum")


# ---- shared checks and helpers ---------------------------------------------------------------------------------------
def check_reduction(reduction, fn, allowed=_REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(f"{fn}: reduction must be one of {', '.join(repr(r) for r in allowed)}; got {reduction!r}")


def _check_pair(input, target, fn):
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a tensor, got {type(t).__name__}")
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{fn}: input has shape {tuple(input.shape)} but target has shape {tuple(target.shape)}; "
                         f"they must be equal")
    if input.dtype.kind != "f":
        raise TypeError(f"{fn}: input must be a floating tensor, got dtype {input.dtype}")
    if target.dtype.kind != "f":
        raise TypeError(f"{fn}: target must be a floating tensor, got dtype {target.dtype} (convert it with "
                        f".to(input.dtype))")


def _check_weight(weight, shape, fn, name="weight"):
    """An elementwise weight must broadcast to the input's shape."""
    if weight is None:
        return
    if not isinstance(weight, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(weight).__name__}")
    w, s = tuple(weight.shape), tuple(shape)
    if len(w) > len(s) or any(a not in (1, b) for a, b in zip(w[::-1], s[::-1])):
        raise ValueError(f"{fn}: {name} of shape {w} does not broadcast to the input's shape {s}")


def _quiet(xp):
    """Silence NumPy's divide/invalid warnings where -inf/NaN are expected and handled (log(0), 0/0)."""
    errstate = getattr(xp, "errstate", None)
    return errstate(divide="ignore", invalid="ignore") if errstate is not None else contextlib.nullcontext()


def _reduce(loss, reduction):
    """Reduce an array of per-element losses; "batchmean" divides the sum by the size of the first dimension."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "batchmean":
        n = loss.shape[0] if loss.ndim else 1
        return loss.sum() / n if n else loss.sum() * math.nan
    return loss


def _upstream(g, reduction, n):
    """The gradient reaching each element's loss: g / n for "mean", g otherwise (g is 0-d or per element)."""
    if reduction == "mean":
        return g * (1.0 / n if n else math.nan)
    return g


# ---- regression losses -----------------------------------------------------------------------------------------------
class MSELossFunction(Function):
    @staticmethod
    def forward(ctx, x, t, reduction):
        ctx.save_for_backward(x, t)
        ctx.reduction = reduction
        diff = x.data - t.data
        return _reduce(diff * diff, reduction)

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        need = ctx.next_edges
        gx = _upstream(g, ctx.reduction, x.numel()) * 2.0 * (x - t)
        return (gx if need[0] is not None else None), (-gx if need[1] is not None else None), None


def mse_loss(input, target, reduction="mean"):
    """Squared error ``(input - target) ** 2``, reduced."""
    _check_pair(input, target, "mse_loss")
    check_reduction(reduction, "mse_loss")
    return MSELossFunction.apply(input, target, reduction)


class L1LossFunction(Function):
    @staticmethod
    def forward(ctx, x, t, reduction):
        ctx.save_for_backward(x, t)
        ctx.reduction = reduction
        return _reduce(abs(x.data - t.data), reduction)

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        need = ctx.next_edges
        sign = _make(ctx.xp.sign(x.data - t.data), x.device)  # piecewise constant: no second derivative
        gx = _upstream(g, ctx.reduction, x.numel()) * sign
        return (gx if need[0] is not None else None), (-gx if need[1] is not None else None), None


def l1_loss(input, target, reduction="mean"):
    """Absolute error ``|input - target|``, reduced."""
    _check_pair(input, target, "l1_loss")
    check_reduction(reduction, "l1_loss")
    return L1LossFunction.apply(input, target, reduction)


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    """Negative log-likelihood of ``target`` under N(input, var): ``0.5 * (log(var) + (input - target)^2 / var)``
    (plus ``0.5 * log(2 pi)`` if ``full``), as PyTorch.

    ``var`` has the input's shape, or its shape without the last dimension, or a 1 in place of one dimension
    (homoscedastic), or is a float. It is clamped to at least ``eps`` for stability; as in PyTorch the clamp
    does not stop the gradient.
    """
    fn = "gaussian_nll_loss"
    _check_pair(input, target, fn)
    check_reduction(reduction, fn)
    if isinstance(var, (int, float)):
        if var < 0:
            raise ValueError(f"{fn}: var has a negative value {var}")
        var = full_like(input, float(var))
    if not isinstance(var, Tensor):
        raise TypeError(f"{fn}: var must be a tensor or a float, got {type(var).__name__}")
    ishape, vshape = tuple(input.shape), tuple(var.shape)
    if vshape != ishape:
        if ishape[:-1] == vshape:
            var = var.unsqueeze(-1)
        elif not (len(vshape) == len(ishape) and
                  sum(v for i, v in zip(ishape, vshape) if i != v) == 1):
            raise ValueError(f"{fn}: var of shape {vshape} does not fit the input's shape {ishape} (expected the "
                             f"same shape, the shape without the last dimension, or a 1 in one dimension)")
    if bool((var.data < 0).any()):
        raise ValueError(f"{fn}: var has negative entries")
    var = ClampValue.apply(var, eps)  # clamped in value only (PyTorch clamps in place under no_grad)
    diff = input - target
    loss = (var.log() + diff * diff / var) * 0.5
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


# ---- binary classification -------------------------------------------------------------------------------------------
class BCELossFunction(Function):
    @staticmethod
    def forward(ctx, x, t, weight, reduction):
        xp, p, y = ctx.xp, x.data, t.data
        ctx.save_for_backward(x, t, weight)
        ctx.reduction = reduction
        with _quiet(xp):  # log(0) = -inf is clamped to -100, as PyTorch
            log_p = xp.maximum(xp.log(p), -100.0)
            log_1mp = xp.maximum(xp.log1p(-p), -100.0)
        loss = (y - 1) * log_1mp - y * log_p
        if weight is not None:
            loss = loss * weight.data
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, g):
        x, t, weight = ctx.saved_tensors
        need = ctx.next_edges
        ge = _upstream(g, ctx.reduction, x.numel())
        if weight is not None:
            ge = ge * weight
        gx = gt = gw = None
        if need[0] is not None:  # (x - t) / (x (1 - x)), the denominator kept >= 1e-12 as PyTorch
            gx = ge * (x - t) / (x * (1 - x)).clamp(min=1e-12)
        if need[1] is not None or need[2] is not None:
            with _quiet(ctx.xp):
                log_p, log_1mp = x.log().clamp(min=-100.0), (1 - x).log().clamp(min=-100.0)
            if need[1] is not None:
                gt = ge * (log_1mp - log_p)
            if need[2] is not None:
                gw = _upstream(g, ctx.reduction, x.numel()) * ((t - 1) * log_1mp - t * log_p)
        return gx, gt, gw, None


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """``-w * (t * log(x) + (1 - t) * log(1 - x))`` for probabilities ``x`` in [0, 1] (logs clamped at -100)."""
    fn = "binary_cross_entropy"
    _check_pair(input, target, fn)
    check_reduction(reduction, fn)
    _check_weight(weight, input.shape, fn)
    for name, t in (("input", input), ("target", target)):
        if t.numel() and bool(((t.data < 0) | (t.data > 1)).any()):
            raise ValueError(f"{fn}: all elements of {name} should be between 0 and 1 (got values in "
                             f"[{float(t.data.min())}, {float(t.data.max())}]); for logits use "
                             f"binary_cross_entropy_with_logits")
    return BCELossFunction.apply(input, target, weight, reduction)


class BCEWithLogitsFunction(Function):
    @staticmethod
    def forward(ctx, x, t, weight, pos_weight, reduction):
        z, y = x.data, t.data
        ctx.save_for_backward(x, t, weight, pos_weight)
        ctx.reduction = reduction
        # loss and d loss / dx in one pass (kernel bce_with_logits); a plain backward then only scales the gradient
        same = [None if a is None else a.data.astype(z.dtype, copy=False) for a in (weight, pos_weight)]
        loss, ctx.fused_grad = kernels.get("bce_with_logits", z)(z, y.astype(z.dtype, copy=False), *same,
                                                                 reduction, x.requires_grad)
        return loss

    @staticmethod
    def backward(ctx, g):
        x, t, weight, pos_weight = ctx.saved_tensors
        need = ctx.next_edges
        g0 = _upstream(g, ctx.reduction, x.numel())
        ge = g0 * weight if weight is not None else g0
        gx = gt = gw = gpw = None
        if need[0] is not None:
            if pos_weight is None:
                gx = ge * (x.sigmoid() - t)
            else:
                lw = 1 + (pos_weight - 1) * t
                gx = ge * ((1 - t) - lw * (1 - x.sigmoid()))
        if need[1] is not None or need[2] is not None or need[3] is not None:
            sp_neg = (-x).softplus()
            if need[1] is not None:
                gt = ge * (-x if pos_weight is None else (pos_weight - 1) * sp_neg - x)
            if need[2] is not None:
                lw = 1 if pos_weight is None else 1 + (pos_weight - 1) * t
                gw = g0 * ((1 - t) * x + lw * sp_neg)
            if need[3] is not None:
                gpw = ge * t * sp_neg
        return gx, gt, gw, gpw, None


    @staticmethod
    def array_backward(ctx, g):
        if ctx.fused_grad is not None and ctx.next_edges[1:4] == (None, None, None):
            return g * ctx.fused_grad, None, None, None, None
        return BCEWithLogitsFunction.backward(ctx, _make(g, ctx.device))


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Binary cross entropy of ``sigmoid(input)`` computed from the logits, stable at any logit:
    ``w * ((1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x))``. ``pos_weight`` (broadcast along the last
    dimension, one per class) weighs the positive term."""
    fn = "binary_cross_entropy_with_logits"
    _check_pair(input, target, fn)
    check_reduction(reduction, fn)
    _check_weight(weight, input.shape, fn)
    _check_weight(pos_weight, input.shape, fn, "pos_weight")
    return BCEWithLogitsFunction.apply(input, target, weight, pos_weight, reduction)


# ---- multi-class classification --------------------------------------------------------------------------------------
def _class_axis(ndim):
    return 1 if ndim >= 2 else 0


def _check_class_input(input, target, weight, fn, soft_ok):
    """Validate (input, target, weight) of a class loss; True when target holds probabilities (soft labels)."""
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{fn}: input and target must be tensors, got {type(input).__name__} and "
                        f"{type(target).__name__}")
    if input.ndim == 0:
        raise ValueError(f"{fn}: input must have a class dimension: (C,), (N, C) or (N, C, d1, ...); got a 0-d "
                         f"tensor")
    if input.dtype.kind != "f":
        raise TypeError(f"{fn}: input must be a floating tensor, got dtype {input.dtype}")
    ax = _class_axis(input.ndim)
    c = input.shape[ax]
    if weight is not None:
        if not isinstance(weight, Tensor) or tuple(weight.shape) != (c,):
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"{fn}: weight must be a tensor of shape ({c},), one per class; got {shape}")
    if soft_ok and target.dtype.kind == "f" and tuple(target.shape) == tuple(input.shape):
        return True
    expected = tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.ndim >= 2 else ()
    if target.dtype.kind not in "iu":
        soft = f"; probability targets must have the input's shape {tuple(input.shape)}" if soft_ok else ""
        raise TypeError(f"{fn}: class targets must be an integer tensor (int64), got dtype {target.dtype} with "
                        f"shape {tuple(target.shape)}{soft}")
    if tuple(target.shape) != expected:
        raise ValueError(f"{fn}: input of shape {tuple(input.shape)} ({c} classes along dim {ax}) needs a target "
                         f"of shape {expected}, got {tuple(target.shape)}")
    return False


def _check_class_range(target, c, ignore_index, fn):
    t = target.data
    if not t.size:
        return
    bad = (t != ignore_index) & ((t < 0) | (t >= c))

    def fail():
        value = int(t[bad].reshape(-1)[0])
        raise IndexError(f"{fn}: target {value} is out of bounds for {c} classes (valid: 0..{c - 1}, or "
                         f"ignore_index={ignore_index})")
    backend.check_flag(bad.any(), fail)


def _picked(xp, target, weight, ignore_index, dtype, ax):
    """For class targets: the index of each target along the class axis (ignored ones -> 0, with the class
    axis kept), the weight of each sample (w[target], 0 where ignored), and the valid mask."""
    t = target.data
    valid = t != ignore_index
    idx = xp.where(valid, t, 0)
    w_t = valid.astype(dtype) if weight is None else (weight.data[idx] * valid).astype(dtype, copy=False)
    return xp.expand_dims(idx, ax), w_t, valid


def _one_hot(xp, idx, c, ax, ndim, dtype):
    """1 where the class axis position equals idx (idx has the class axis kept as size 1)."""
    shape = [1] * ndim
    shape[ax] = c
    return (xp.arange(c).reshape(shape) == idx).astype(dtype)


def _class_weights(weight, d, ax):
    """The class weights (or None) in d's dtype, shaped to broadcast along d's class axis."""
    if weight is None:
        return None
    return weight.data.astype(d.dtype, copy=False).reshape(_class_shape(d.ndim, ax, d.shape[ax]))


def _class_shape(ndim, ax, c):
    shape = [1] * ndim
    shape[ax] = c
    return tuple(shape)


class CrossEntropyFunction(Function):
    """cross_entropy = nll_loss(log_softmax(z)) (with label smoothing and class weights), fused.

    Per sample, loss = -sum_c q_c log p_c with p = softmax(z) and q the (smoothed, weighted) target; its
    gradient in z is p * Q - q with Q = sum_c q_c.
    """

    @staticmethod
    def forward(ctx, z, target, weight, ignore_index, smoothing, reduction, soft):
        xp, d = ctx.xp, z.data
        ax = _class_axis(d.ndim)
        c = d.shape[ax]
        ctx.ax, ctx.reduction, ctx.soft, ctx.smoothing = ax, reduction, soft, smoothing
        ctx.fused_grad = None
        fused = None if soft or smoothing or d.ndim != 2 else kernels.get("cross_entropy", d)
        if fused is not None:  # loss and d loss / dz in one pass (kernel cross_entropy), for a plain backward
            w = None if weight is None else weight.data.astype(d.dtype, copy=False)
            try:
                loss, ctx.fused_grad = fused(d, target.data, w, ignore_index, reduction, z.requires_grad)
            except IndexError:  # the kernel checks the targets; this names the valid range too
                _check_class_range(target, c, ignore_index, "cross_entropy")
                raise
            # a create_graph backward recomputes p from z and needs the picked targets: built then, not here
            ctx.targets = ctx.denom = None
            ctx.pick = (target, weight, ignore_index)
            ctx.save_for_backward(z, None, None, None)
            return loss
        shifted = d - d.max(axis=ax, keepdims=True)
        p = xp.exp(shifted)
        s = p.sum(axis=ax, keepdims=True)
        log_p = shifted
        log_p -= xp.log(s)
        p /= s
        w_c = _class_weights(weight, d, ax)
        if soft:  # probability targets, mixed with the uniform distribution by label smoothing
            q = target.data * (1.0 - smoothing) + smoothing / c if smoothing else target.data
            if w_c is not None:
                q = q * w_c
            loss = -(log_p * q).sum(axis=ax)
            denom = xp.asarray(loss.size, dtype=d.dtype)
            ctx.targets = w_c  # q depends on the target (which may require grad): rebuilt in backward
        else:
            _check_class_range(target, c, ignore_index, "cross_entropy")
            idx, w_t, valid = _picked(xp, target, weight, ignore_index, d.dtype, ax)
            loss = -(1.0 - smoothing) * w_t * xp.take_along_axis(log_p, idx, axis=ax).squeeze(ax)
            if smoothing:  # every class also gets smoothing / c of the target (times its weight)
                smooth = log_p.sum(axis=ax) if w_c is None else (log_p * w_c).sum(axis=ax)
                loss = loss - smooth * (smoothing / c) * valid.astype(d.dtype)
            denom = w_t.sum()  # "mean" divides by the total weight of the counted targets, as PyTorch
            ctx.targets = (idx, w_t, valid, w_c)  # q is built in backward, only when a gradient is needed
        ctx.denom = denom
        ctx.save_for_backward(z, _make(p, z.device), _make(log_p, z.device) if soft else None,
                              target if soft else None)
        if reduction == "mean":
            with _quiet(xp):  # every target ignored: 0 / 0 = nan, as PyTorch
                return loss.sum() / denom
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def backward(ctx, g):
        z = ctx.saved_tensors[0]
        p = z.softmax(ctx.ax)  # recomputed with tinygen ops: the gradient's graph must see p depend on z
        return _cross_entropy_grads(ctx, g, p, z.log_softmax(ctx.ax) if ctx.soft else None)

    @staticmethod
    def array_backward(ctx, g):
        if ctx.fused_grad is not None:
            gz = ctx.fused_grad * (g[:, None] if ctx.reduction == "none" else g)
            return gz if ctx.next_edges[0] is not None else None, None, None, None, None, None, None
        _, p, log_p, _ = ctx.saved_tensors
        return _cross_entropy_grads(ctx, _make(g, ctx.device), p, log_p)


def _cross_entropy_grads(ctx, g, p, log_p):
    """d loss / d logits (and / d probability targets) from the softmax p (and log p for probability targets)."""
    z, _, _, target = ctx.saved_tensors
    need = ctx.next_edges
    if ctx.targets is None and not ctx.soft:  # after the fused forward
        _pick_targets(ctx, z)
    q, big_q = _soft_target_q(ctx, z, target) if ctx.soft else _hard_target_q(ctx, z)
    g = _class_upstream(ctx, g)
    gz = (p * big_q - q) * g if need[0] is not None else None
    gt = None
    if ctx.soft and need[1] is not None:  # probability targets: d loss / d target = -(1 - eps) w log p
        gt = -(log_p * g) * (1.0 - ctx.smoothing)
        w_c = ctx.targets
        if w_c is not None:
            gt = gt * _make(w_c, z.device)
    return gz, gt, None, None, None, None, None


def _pick_targets(ctx, z):
    """ctx.targets and ctx.denom of class-index targets, as the plain forward sets them."""
    target, weight, ignore_index = ctx.pick
    d = z.data
    idx, w_t, valid = _picked(ctx.xp, target, weight, ignore_index, d.dtype, ctx.ax)
    w_c = _class_weights(weight, d, ctx.ax)
    ctx.targets, ctx.denom = (idx, w_t, valid, w_c), w_t.sum()


def _soft_target_q(ctx, z, target):
    """q and Q = sum_c q_c for probability targets, as tinygen ops on the target (it may require grad)."""
    w_c = ctx.targets
    eps = ctx.smoothing
    q = target * (1.0 - eps) + eps / z.shape[ctx.ax] if eps else target
    if w_c is not None:
        q = q * _make(w_c, z.device)
    return q, q.sum(ctx.ax, keepdim=True)


def _hard_target_q(ctx, z):
    """q (the smoothed, weighted one-hot target) and Q = sum_c q_c for class-index targets, as constants."""
    xp, ax, eps = ctx.xp, ctx.ax, ctx.smoothing
    idx, w_t, valid, w_c = ctx.targets
    c, dt = z.shape[ax], z.dtype
    hit = xp.expand_dims((1.0 - eps) * w_t, ax)
    q = _one_hot(xp, idx, c, ax, z.ndim, dt) * hit
    big_q = hit
    if eps:
        valid_b = xp.expand_dims(valid, ax).astype(dt)
        u = eps / c
        q = q + (u if w_c is None else w_c * u) * valid_b
        big_q = big_q + (eps if w_c is None else w_c.sum() * u) * valid_b
    return _make(q, z.device), _make(big_q, z.device)


def _class_upstream(ctx, g):
    """The upstream gradient shaped to broadcast against the class axis: / denom for "mean"."""
    if ctx.reduction == "mean":
        with _quiet(ctx.xp):
            inv = 1.0 / ctx.denom
        return g * _make(ctx.xp.asarray(inv, dtype=g.dtype), g.device)
    if ctx.reduction == "none":
        return g.unsqueeze(ctx.ax)
    return g


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross entropy of logits ``input`` ((C,), (N, C) or (N, C, d1, ...)) against class indices ``target``
    (integer, shape (N,) or (N, d1, ...)) or class probabilities (a float tensor of the input's shape).

    ``weight`` (C,) weighs classes; targets equal to ``ignore_index`` contribute nothing; "mean" divides by the
    total weight of the counted targets (by the number of samples for probability targets), as PyTorch.
    ``label_smoothing`` mixes each target with the uniform distribution over the classes.
    """
    fn = "cross_entropy"
    check_reduction(reduction, fn)
    soft = _check_class_input(input, target, weight, fn, soft_ok=True)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be between 0 and 1, got {label_smoothing}")
    return CrossEntropyFunction.apply(input, target, weight, int(ignore_index), float(label_smoothing), reduction,
                                      soft)


class NLLLossFunction(Function):
    """Negative log-likelihood of class targets given log-probabilities: ``-w[t] * input[t]`` per sample."""

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction):
        xp, d = ctx.xp, x.data
        ax = _class_axis(d.ndim)
        idx, w_t, _ = _picked(xp, target, weight, ignore_index, d.dtype, ax)
        loss = -w_t * xp.take_along_axis(d, idx, axis=ax).squeeze(ax)
        ctx.ax, ctx.reduction, ctx.denom = ax, reduction, w_t.sum()
        ctx.targets, ctx.in_shape = (idx, w_t), d.shape
        if reduction == "mean":
            with _quiet(xp):
                return loss.sum() / ctx.denom
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def backward(ctx, g):
        xp, ax = ctx.xp, ctx.ax
        idx, w_t = ctx.targets
        # nll is linear in its input: the gradient is -w[t] at the target class, 0 elsewhere
        g = _class_upstream(ctx, g)
        coef = _one_hot(xp, idx, ctx.in_shape[ax], ax, len(ctx.in_shape), g.dtype) * xp.expand_dims(-w_t, ax)
        return g * _make(coef, g.device), None, None, None, None


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood for log-probabilities ``input`` (e.g. from log_softmax) and integer class
    ``target``; weights, ignore_index and "mean" as in ``cross_entropy``."""
    fn = "nll_loss"
    check_reduction(reduction, fn)
    _check_class_input(input, target, weight, fn, soft_ok=False)
    _check_class_range(target, input.shape[_class_axis(input.ndim)], ignore_index, fn)
    return NLLLossFunction.apply(input, target, weight, int(ignore_index), reduction)


# ---- VAE ---------------------------------------------------------------------------------------------------------
def kl_normal(mu, logvar, reduction="sum"):
    """KL( N(mu, exp(logvar)) || N(0, I) ) for a diagonal Gaussian, the VAE regulariser:
    ``-0.5 * (1 + logvar - mu^2 - exp(logvar))`` per element.

    ``reduction``: "none" gives the per-element terms; "sum" sums all of them (the total KL of the batch);
    "mean" gives the per-sample KL (summed over all dimensions but the first, the batch) averaged over the
    batch, i.e. the "sum" divided by ``mu.shape[0]`` (a 1-D input counts as one sample).
    """
    fn = "kl_normal"
    _check_pair(mu, logvar, fn)
    check_reduction(reduction, fn)
    terms = (1 + logvar - mu * mu - logvar.exp()) * -0.5
    if reduction == "none":
        return terms
    total = terms.sum()
    if reduction == "sum":
        return total
    batch = mu.shape[0] if mu.ndim >= 2 else 1
    return total * (1.0 / batch if batch else math.nan)


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


def _check_loss_args(input, target, reduction, fn, reductions=_REDUCTIONS):
    check_reduction(reduction, fn, reductions)
    _check_pair(input, target, fn)
    if input.dtype != target.dtype:
        raise TypeError(f"{fn}: input has dtype {input.dtype} but target has dtype {target.dtype}")


def _per_element(g, reduction, shape):
    """The gradient reaching each element's loss from the reduced loss's gradient ``g``."""
    if reduction == "batchmean":
        return _upstream(g, "mean", shape[0] if shape else 1)
    return _upstream(g, reduction, math.prod(shape))


class ClampValue(Function):
    """``x`` clamped below at ``lower`` in value, with the gradient of ``x`` itself (PyTorch clamps such values in
    place under no_grad). An op, so tinygen.compile clamps the new values on every replay."""
    @staticmethod
    def forward(ctx, x, lower):
        return ctx.xp.maximum(x.data, x.data.dtype.type(lower))

    @staticmethod
    def backward(ctx, g):
        return g, None


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
        return _reduce(loss, reduction)

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
        return _reduce(loss, reduction)

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
    require_tensor(input, "normalize")
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
    n1 = ClampValue.apply(norm(x1, 2, dim, keepdim=True), eps)
    n2 = ClampValue.apply(norm(x2, 2, dim, keepdim=True), eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)
