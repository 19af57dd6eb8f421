"""Stateless layer functions (``import tinygen.nn.functional as F``), as ``torch.nn.functional``.

The heavy ones (linear, batch_norm, layer_norm, embedding, dropout, and the losses in ``losses.py``) are each ONE
``Function``: the forward is array code in one place (where a fused kernel can later be dropped in) and the
backward is the closed-form gradient written with tinygen ops, so it can be differentiated again.

Backwards that need a normalised input (x_hat) take it from the forward's arrays under a plain ``backward()``,
and recompute it from ``x`` with tinygen ops when a graph of the gradient is being built (``create_graph=True``),
so that second derivatives see how x_hat depends on x.
"""
from .. import kernels
from ..kernels import reference as _kref
from .. import ops as _ops
from .. import random as _random
from ..autograd.function import Function
from ..autograd.grad_mode import STATE
from ..ops.index import IndexAdd
from ..ops.linalg import mm
from ..tensor import Tensor, _make


def _const(array, like):
    """A tensor holding ``array`` with no graph (a constant in the backward formula)."""
    return _make(array, like._device)


# ---- activations ---------------------------------------------------------------------------------------------------
def relu(input, inplace=False):
    return _ops.relu(input)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return _ops.leaky_relu(input, negative_slope)


def elu(input, alpha=1.0, inplace=False):
    return _ops.elu(input, alpha)


def tanh(input):
    return _ops.tanh(input)


def sigmoid(input):
    return _ops.sigmoid(input)


def softplus(input, beta=1.0, threshold=20.0):
    return _ops.softplus(input, beta, threshold)


def softmax(input, dim, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    return _ops.softmax(input, dim)


def log_softmax(input, dim, dtype=None):
    if dtype is not None:
        input = input.to(dtype)
    return _ops.log_softmax(input, dim)


# ---- linear ----------------------------------------------------------------------------------------------------------
class LinearFunction(Function):
    """y = x @ W.T + b for x of shape (..., in), W (out, in), b (out,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        d, w = x.data, weight.data
        if d.ndim <= 2:
            out = mm(d, w.T)
        else:  # one 2-D product over all leading dimensions
            out = mm(d.reshape(-1, d.shape[-1]), w.T).reshape(d.shape[:-1] + (w.shape[0],))
        if bias is not None:
            out += bias.data
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.next_edges
        if not STATE.grad_enabled:  # a plain backward: the products on arrays, without recording ops
            g2 = g.data.reshape(-1, g.data.shape[-1])
            return (*_linear_grads_on_arrays(g2, x, w, need), _const(g2.sum(0), x) if need[2] is not None else None)
        if g.ndim == 1:  # a single sample
            g2, x2 = g.unsqueeze(0), x.unsqueeze(0)
        else:
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = (g2 @ w).reshape(x.shape) if need[0] is not None else None
        gw = g2.mT @ x2 if need[1] is not None else None
        gb = g2.sum(0) if need[2] is not None else None
        return gx, gw, gb


def _linear_grads_on_arrays(g2, x, w, need):
    """A plain backward's input and weight gradients of ``x @ W.T``, from the upstream gradient as a 2-D array:
    two products through mm, no ops recorded (the create_graph path builds the same from tinygen ops)."""
    xd = x.data
    gx = gw = None
    if need[0] is not None:
        gx = mm(g2, w.data)
        gx = _const(gx if gx.shape == xd.shape else gx.reshape(xd.shape), x)
    if need[1] is not None:
        gw = _const(mm(g2.T, xd if xd.ndim == 2 else xd.reshape(-1, xd.shape[-1])), x)
    return gx, gw


def _check_linear(input, weight, bias):
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {tuple(input.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)} (the input's last dimension must be in_features={weight.shape[1]})")
    if input.dtype != weight.dtype:
        raise TypeError(f"linear: input has dtype {input.dtype} but weight has dtype {weight.dtype}; "
                        f"convert one (e.g. input.to(weight.dtype))")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias of shape {tuple(bias.shape)} does not match out_features="
                         f"{weight.shape[0]}")


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` for input (..., in_features), weight (out_features, in_features)."""
    _check_linear(input, weight, bias)
    return LinearFunction.apply(input, weight, bias)


# ---- linear + activation ---------------------------------------------------------------------------------------------
FUSABLE_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus")


class LinearActFunction(Function):
    """y = act(x @ W.T + b) as one node, for 2-D x: the bias add and the activation are one pass over the matmul's
    output (a fused kernel, tinygen.kernels ``bias_act_fwd``), and so is the backward's activation derivative with
    the bias gradient. Every supported activation's derivative is a function of its output ``y``, so nothing but
    ``y`` is kept besides the inputs.
    """
    save_output = True

    @staticmethod
    def forward(ctx, x, weight, bias, act, p1, p2):
        ctx.save_for_backward(x, weight)
        ctx.act, ctx.p1, ctx.p2 = act, p1, p2
        out = mm(x.data, weight.data.T)
        fused = kernels.lookup("bias_act_fwd", out) or _kref.bias_act_fwd
        return fused(out, None if bias is None else bias.data, act, p1, p2)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.next_edges
        y = ctx.output
        if not STATE.grad_enabled:  # a plain backward: activation derivative and bias sum in one fused pass,
            fused = kernels.lookup("bias_act_bwd", y.data) or _kref.bias_act_bwd  # then the products on arrays
            gpre, gb = fused(y.data, g.data, ctx.act, ctx.p1, ctx.p2, need[2] is not None)
            return (*_linear_grads_on_arrays(gpre, x, w, need), None if gb is None else _const(gb, x), None, None,
                    None)
        # create_graph: the same derivative in tinygen ops, differentiable through the output y
        gpre = _activation_grad_from_output(g, y, ctx.act, ctx.p1, ctx.p2)
        gb = gpre.sum(0) if need[2] is not None else None
        gx = gpre @ w if need[0] is not None else None
        gw = gpre.mT @ x if need[1] is not None else None
        return gx, gw, gb, None, None, None


def _activation_grad_from_output(g, y, act, p1, p2):
    """g * act'(x), written with the output y = act(x) (differentiable in y)."""
    if act == "relu":
        return _ops.where(y > 0, g, 0.0)
    if act == "leaky_relu":
        return _ops.where(y > 0, g, g * p1)
    if act == "tanh":
        return g * (1 - y * y)
    if act == "sigmoid":
        return g * y * (1 - y)
    if act == "elu":
        return _ops.where(y > 0, g, g * (y + p1))
    if act == "softplus":  # sigmoid(beta x) = 1 - exp(-beta y); the forward is x itself above the threshold
        return _ops.where(y * p1 > p2, g, g * (1 - (y * -p1).exp()))
    raise ValueError(f"linear_act: unknown activation {act!r}; expected one of {FUSABLE_ACTIVATIONS}")


def linear_act(input, weight, bias, activation, p1=0.0, p2=0.0):
    """``activation(input @ weight.T + bias)`` as one fused node; ``input`` must be 2-D.

    ``activation`` is one of FUSABLE_ACTIVATIONS; ``p1``/``p2`` are its parameters: the negative slope of
    leaky_relu (>= 0), the alpha of elu (>= 0), the beta and threshold of softplus. ``nn.Sequential`` uses this for
    every Linear followed by such an activation module.
    """
    _check_linear(input, weight, bias)
    if input.ndim != 2:
        raise ValueError(f"linear_act: expected a 2-D (batch, features) input, got shape {tuple(input.shape)}")
    if activation not in FUSABLE_ACTIVATIONS:
        raise ValueError(f"linear_act: unknown activation {activation!r}; expected one of {FUSABLE_ACTIVATIONS}")
    if activation in ("leaky_relu", "elu") and p1 < 0:
        raise ValueError(f"linear_act: {activation} needs a parameter >= 0 to be differentiated from its output, "
                         f"got {p1}")
    return LinearActFunction.apply(input, weight, bias, activation, float(p1), float(p2))


# ---- dropout ---------------------------------------------------------------------------------------------------------
class DropoutFunction(Function):
    """Inverted dropout: zero each element with probability p and scale the rest by 1 / (1 - p)."""

    @staticmethod
    def forward(ctx, x, p):
        d = x.data
        if p >= 1:
            mask = ctx.xp.zeros_like(d)
        else:
            keep = _random.rand(d.shape, dtype=d.dtype, device=x.device).data >= p
            mask = keep.astype(d.dtype)
            mask *= 1.0 / (1.0 - p)
        ctx.save_for_backward(_make(mask, x.device))
        return d * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask, None


def dropout(input, p=0.5, training=True, inplace=False):
    """Inverted dropout in training; the input itself when ``training`` is False or ``p`` is 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if input.dtype.kind != "f":
        raise TypeError(f"dropout: needs a floating tensor, got dtype {input.dtype}")
    return DropoutFunction.apply(input, float(p))


# ---- normalisation ---------------------------------------------------------------------------------------------------
def _normalized(x, axes, eps):
    """x_hat and 1/std of x over ``axes``, as differentiable tinygen ops (used when building a gradient graph)."""
    xc = x - x.mean(axes, keepdim=True)
    std = ((xc * xc).mean(axes, keepdim=True) + eps).sqrt()
    return xc / std, 1 / std


class BatchNormFunction(Function):
    """Batch normalisation over every axis but the channel axis 1 of x (N, C, *).

    Training: normalise with the batch mean and biased variance, and update the running statistics in place
    (running_var with the unbiased variance, as PyTorch). Evaluation: normalise with the running statistics.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp, d = ctx.xp, x.data
        c = d.shape[1]
        axes = (0,) + tuple(range(2, d.ndim))
        shape = (1, c) + (1,) * (d.ndim - 2)  # per-channel values, broadcastable against x
        ctx.axes, ctx.shape, ctx.training, ctx.eps = axes, shape, training, eps
        w = weight.data.reshape(shape) if weight is not None else None
        b = bias.data.reshape(shape) if bias is not None else None
        if training:
            fused = _bn_kernel("batchnorm_fwd", d, weight, bias)
            if fused is not None:  # statistics and output in two passes over x (tinygen.kernels)
                out, x_hat, mean, var, inv_std = fused(d, None if weight is None else weight.data,
                                                       None if bias is None else bias.data, eps)
                mean, var, inv_std = mean.reshape(shape), var.reshape(shape), inv_std.reshape(shape)
            else:
                mean = d.mean(axis=axes, keepdims=True)
                x_hat = d - mean
                var = (x_hat * x_hat).mean(axis=axes, keepdims=True)
                inv_std = 1.0 / xp.sqrt(var + eps)
                x_hat *= inv_std
            n = d.size // c
            if running_mean is not None:
                running_mean.data *= 1.0 - momentum
                running_mean.data += momentum * mean.reshape(c)
            if running_var is not None:
                running_var.data *= 1.0 - momentum
                running_var.data += (momentum * n / (n - 1)) * var.reshape(c)
            if fused is None:
                out = x_hat * w if w is not None else x_hat.copy()
                if b is not None:
                    out += b
            ctx.save_for_backward(x, weight, _make(x_hat, x.device), _make(inv_std, x.device))
            return out
        # evaluation: an affine map, y = x * scale + shift
        mean = running_mean.data.reshape(shape).copy()  # copied: later training steps update the buffer in place
        inv_std = 1.0 / xp.sqrt(running_var.data.reshape(shape) + eps)
        scale = inv_std * w if w is not None else inv_std
        shift = -mean * scale
        if b is not None:
            shift = shift + b
        ctx.save_for_backward(x, weight, _make(mean, x.device), _make(inv_std, x.device))
        return d * scale + shift

    @staticmethod
    def backward(ctx, g):
        x, weight, saved_a, inv_std = ctx.saved_tensors
        need = ctx.next_edges
        axes, shape = ctx.axes, ctx.shape
        w = weight.reshape(shape) if weight is not None else None
        fused = None if STATE.grad_enabled or not ctx.training else _bn_kernel("batchnorm_bwd", g.data, weight,
                                                                                saved_a)
        if fused is not None:  # a plain backward: gx, gw, gb in two passes (tinygen.kernels)
            gx, gw, gb = fused(g.data, saved_a.data, None if weight is None else weight.data,
                               inv_std.data.reshape(x.shape[1]))
            return (_make(gx, x.device) if need[0] is not None else None,
                    _make(gw, x.device) if need[1] is not None else None,
                    _make(gb, x.device) if need[2] is not None else None, None, None, None, None, None)
        if ctx.training:
            if STATE.grad_enabled:  # building a graph of the gradient: x_hat and inv_std depend on x
                x_hat, inv_std = _normalized(x, axes, ctx.eps)
            else:
                x_hat = saved_a
            n = x.data.size // x.shape[1]
            sg = g.sum(axes, keepdim=True)
            sgx = (g * x_hat).sum(axes, keepdim=True)
            gx = None
            if need[0] is not None:
                # d/dx of the normalisation: (w / std) * (g - mean(g) - x_hat * mean(g * x_hat))
                k = inv_std * w if w is not None else inv_std
                gx = k * (g - (sg + x_hat * sgx) * (1.0 / n))
        else:
            gx = g * (inv_std * w if w is not None else inv_std) if need[0] is not None else None
            sg = g.sum(axes, keepdim=True) if need[2] is not None else None
            sgx = ((g * ((x - saved_a) * inv_std)).sum(axes, keepdim=True) if need[1] is not None else None)
        c = x.shape[1]
        gw = sgx.reshape(c) if need[1] is not None else None
        gb = sg.reshape(c) if need[2] is not None else None
        return gx, gw, gb, None, None, None, None, None


def _bn_kernel(name, d, *tensors):
    """The fused batch-norm kernel for (N, C) / (N, C, L) data whose parameters share its dtype, or None."""
    if d.ndim > 3 or any(t is not None and t.data.dtype != d.dtype for t in tensors):
        return None
    return kernels.lookup(name, d)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation of input (N, C, *) over all axes but C (see ``BatchNorm1d``).

    With ``training=True`` the batch statistics are used and ``running_mean``/``running_var`` (if given) are
    updated in place: ``r = (1 - momentum) * r + momentum * batch_stat``. With ``training=False`` the running
    statistics are used.
    """
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of shape (N, C, *), got shape {tuple(input.shape)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"batch_norm: {name} has shape {tuple(t.shape)}, but the input of shape "
                             f"{tuple(input.shape)} has {c} channels")
    if training:
        if input.numel() // max(c, 1) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{tuple(input.shape)}")
    elif running_mean is None or running_var is None:
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, bool(training), float(momentum),
                           float(eps))


class LayerNormFunction(Function):
    """Normalise over the last ``k`` axes, then scale and shift elementwise."""

    @staticmethod
    def forward(ctx, x, weight, bias, k, eps):
        xp, d = ctx.xp, x.data
        axes = tuple(range(d.ndim - k, d.ndim))
        ctx.axes, ctx.eps = axes, eps
        x_hat = d - d.mean(axis=axes, keepdims=True)
        inv_std = 1.0 / xp.sqrt((x_hat * x_hat).mean(axis=axes, keepdims=True) + eps)
        x_hat *= inv_std
        out = x_hat * weight.data if weight is not None else x_hat.copy()
        if bias is not None:
            out += bias.data
        ctx.save_for_backward(x, weight, _make(x_hat, x.device), _make(inv_std, x.device))
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, x_hat, inv_std = ctx.saved_tensors
        need = ctx.next_edges
        axes = ctx.axes
        if STATE.grad_enabled:
            x_hat, inv_std = _normalized(x, axes, ctx.eps)
        gx = None
        if need[0] is not None:
            gxh = g * weight if weight is not None else g
            gx = inv_std * (gxh - gxh.mean(axes, keepdim=True) - x_hat * (gxh * x_hat).mean(axes, keepdim=True))
        lead = tuple(range(x.ndim - len(axes)))  # the parameters are shared across the leading axes
        gw = (g * x_hat).sum(lead) if need[1] is not None else None
        gb = g.sum(lead) if need[2] is not None else None
        return gx, gw, gb, None, None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing dimensions ``normalized_shape`` (mean 0, biased variance 1), then
    ``* weight + bias``."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or tuple(input.shape[input.ndim - k:]) != shape or input.ndim < k:
        raise ValueError(f"layer_norm: normalized_shape {shape} does not match the trailing dimensions of the "
                         f"input of shape {tuple(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected normalized_shape {shape}")
    return LayerNormFunction.apply(input, weight, bias, k, float(eps))


# ---- embedding -------------------------------------------------------------------------------------------------------
class EmbeddingFunction(Function):
    """Rows of ``weight`` picked by integer indices; the gradient adds up into the picked rows."""

    @staticmethod
    def forward(ctx, indices, weight, padding_idx):
        ctx.index, ctx.shape, ctx.padding_idx = indices.data, weight.data.shape, padding_idx
        return weight.data[indices.data]

    @staticmethod
    def backward(ctx, g):
        if ctx.padding_idx is not None:  # the padding row gets no gradient
            keep = (ctx.index != ctx.padding_idx)[..., None].astype(g.dtype)
            g = g * _const(keep, g)
        return None, IndexAdd.apply(g, ctx.index, ctx.shape), None


def embedding(input, weight, padding_idx=None):
    """``weight[input]`` for an integer tensor ``input`` of indices into the rows of ``weight`` (num, dim)."""
    if not isinstance(input, Tensor) or input.dtype.kind not in "iu":
        dt = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise TypeError(f"embedding: indices must be an integer tensor (int64), got {dt}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got shape "
                         f"{tuple(weight.shape)}")
    n = weight.shape[0]
    if input.numel():
        lo, hi = int(input.data.min()), int(input.data.max())
        if lo < 0 or hi >= n:
            raise IndexError(f"embedding: index {lo if lo < 0 else hi} is out of range for {n} embeddings "
                             f"(valid: 0..{n - 1})")
    if padding_idx is not None:
        if not -n <= padding_idx < n:
            raise ValueError(f"embedding: padding_idx {padding_idx} is out of range for {n} embeddings")
        padding_idx %= n
    return EmbeddingFunction.apply(input, weight, padding_idx)


# ---- losses (defined in losses.py, exported here as in torch.nn.functional) -----------------------------------------
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, mse_loss, l1_loss,  # noqa: E402
                     cross_entropy, nll_loss, gaussian_nll_loss, kl_normal)


# ---- more activations (the ops are in ops/math.py; ``inplace`` is accepted for compatibility, the result is new) --
def gelu(input, approximate="none"):
    return _ops.gelu(input, approximate)


def silu(input, inplace=False):
    return _ops.silu(input)


def mish(input, inplace=False):
    return _ops.mish(input)


def logsigmoid(input):
    return _ops.logsigmoid(input)


def softsign(input):
    return _ops.softsign(input)


def selu(input, inplace=False):
    return _ops.selu(input)


def celu(input, alpha=1.0, inplace=False):
    return _ops.celu(input, alpha)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    return _ops.hardtanh(input, min_val, max_val)


def relu6(input, inplace=False):
    return _ops.relu6(input)


def hardsigmoid(input, inplace=False):
    return _ops.hardsigmoid(input)
