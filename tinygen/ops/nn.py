"""The ops behind the nn layers: linear (and linear + activation as one node), dropout, batch and layer
normalisation, embedding. Each is ONE ``Function``: the forward is array code (through ``tinygen.kernels`` where a
fused kernel exists), the ``backward`` is the closed-form gradient written with tinygen ops (so it can be
differentiated again), and ``array_backward`` computes the same gradient on arrays for a plain ``backward()``.
``tinygen.nn.functional`` re-exports the public functions.
"""
import numpy as np

from .. import kernels
from .. import random as _random
from ..autograd.function import Function
from ..tensor import Tensor, _make, require_tensor
from . import elementwise as _elementwise
from .index import IndexAdd
from .linalg import mm, mm_pair


def _const(array, like):
    """A tensor holding ``array`` with no graph (a constant in the backward formula)."""
    return _make(array, like._device)


# ---- linear ----------------------------------------------------------------------------------------------------------
class LinearFunction(Function):
    """y = x @ W.T + b for x of shape (..., in), W (out, in), b (out,) or None."""
    reusable_forward = True
    fresh_gradients = True

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
        if g.ndim == 1:  # a single sample
            g2, x2 = g.unsqueeze(0), x.unsqueeze(0)
        else:
            g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = (g2 @ w).reshape(x.shape) if need[0] is not None else None
        gw = g2.mT @ x2 if need[1] is not None else None
        gb = g2.sum(0) if need[2] is not None else None
        return gx, gw, gb

    @staticmethod
    def array_backward(ctx, g):
        x, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gb = g2.sum(0) if ctx.next_edges[2] is not None else None
        return (*_linear_grads_on_arrays(g2, x.data, w.data, ctx.next_edges), gb)

    @staticmethod
    def with_activation(args, act, p1):
        """For tinygen.compile, which runs this op and an activation op after it (one that declares
        ``activation``) as one node where that gives the same bits: the fused class and its arguments, else None.
        Bitwise for relu and leaky_relu on a 2-D NumPy input with two or more output features (with one, NumPy
        sums the bias gradient's single column pairwise, the fused kernel row by row)."""
        x, w, b = args
        if act not in ("relu", "leaky_relu") or p1 < 0 or type(x.data) is not np.ndarray or x.data.ndim != 2 \
                or w.data.shape[0] < 2:
            return None
        return LinearActFunction, (x, w, b, act, p1, 0.0)


def _linear_grads_on_arrays(g2, x, w, need):
    """The input and weight gradients of ``x @ W.T`` on arrays, from the upstream gradient as a 2-D array (both
    through ``mm_pair`` when both are needed, which may run them at once)."""
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    if need[0] is not None and need[1] is not None:
        gx, gw = mm_pair(g2, w, g2.T, x2)
    else:
        gx = mm(g2, w) if need[0] is not None else None
        gw = mm(g2.T, x2) if need[1] is not None else None
    if gx is not None and gx.shape != x.shape:
        gx = gx.reshape(x.shape)
    return gx, gw


def _check_linear(input, weight, bias):
    require_tensor(input, "linear")
    require_tensor(weight, "linear", "weight")
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
ACT_TITLES = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "ELU",
               "softplus": "Softplus"}
FUSABLE_ACTIVATIONS = tuple(ACT_TITLES)


class LinearActFunction(Function):
    """y = act(x @ W.T + b) as one node, for 2-D x: the bias add and the activation are one pass over the matmul's
    output (kernel ``bias_act_fwd``), and so is the plain backward's activation derivative with the bias gradient
    (``bias_act_bwd``). Every supported activation's derivative is a function of its output ``y``, so nothing but
    ``y`` is kept besides the inputs. The node is named for both ops (e.g. ``Linear+ReLUBackward``), so a drawn
    graph shows the fusion that runs.
    """
    reusable_forward = True
    save_output = True
    fresh_gradients = backward_into_gradient = True

    def name(self):
        return f"Linear+{ACT_TITLES[self.act]}Backward"

    @staticmethod
    def forward(ctx, x, weight, bias, act, p1, p2):
        ctx.save_for_backward(x, weight)
        ctx.act, ctx.p1, ctx.p2 = act, p1, p2
        out = mm(x.data, weight.data.T)
        return kernels.get("bias_act_fwd", out)(out, None if bias is None else bias.data, act, p1, p2)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.next_edges
        gpre = _elementwise.grad_from_output(g, ctx.output, ctx.act, ctx.p1, ctx.p2)  # differentiable in y
        gb = gpre.sum(0) if need[2] is not None else None
        gx = gpre @ w if need[0] is not None else None
        gw = gpre.mT @ x if need[1] is not None else None
        return gx, gw, gb, None, None, None

    @staticmethod
    def array_backward(ctx, g, out=None):
        x, w = ctx.saved_tensors
        need = ctx.next_edges
        y = ctx.output_array
        gpre, gb = kernels.get("bias_act_bwd", y)(y, g, ctx.act, ctx.p1, ctx.p2, need[2] is not None, out=out)
        return (*_linear_grads_on_arrays(gpre, x.data, w.data, need), gb, None, None, None)


def linear_act(input, weight, bias, activation, p1=0.0, p2=0.0):
    """``activation(input @ weight.T + bias)`` as one fused node; ``input`` must be 2-D.

    ``activation`` is one of FUSABLE_ACTIVATIONS; ``p1``/``p2`` are its parameters: the negative slope of
    leaky_relu (>= 0), the alpha of elu (>= 0), the beta and threshold of softplus. ``nn.Sequential`` uses this for
    a Linear followed by such an activation module. Softplus with a threshold below 20 (or beta <= 0) runs as
    ``softplus(linear(...))``, two nodes: near a small threshold the output alone cannot tell the linear branch
    from the curved one, so the fused backward could not pick the right slope.
    """
    _check_linear(input, weight, bias)
    if input.ndim != 2:
        raise ValueError(f"linear_act: expected a 2-D (batch, features) input, got shape {tuple(input.shape)}")
    if not fusable_activation("linear_act", activation, p1, p2):
        return _elementwise.softplus(LinearFunction.apply(input, weight, bias), p1, p2)
    return LinearActFunction.apply(input, weight, bias, activation, float(p1), float(p2))


def fusable_activation(fn, activation, p1, p2):
    """Whether an activation can be fused into the layer before it (``linear_act``, ``conv2d_act``): False for
    softplus with a threshold below 20 or beta <= 0 (see linear_act); an unknown activation, or a negative slope
    or alpha (its derivative cannot be read from the output), raises."""
    if activation not in FUSABLE_ACTIVATIONS:
        raise ValueError(f"{fn}: unknown activation {activation!r}; expected one of {FUSABLE_ACTIVATIONS}")
    if activation in ("leaky_relu", "elu") and p1 < 0:
        raise ValueError(f"{fn}: {activation} needs a parameter >= 0 to be differentiated from its output, got {p1}")
    return activation != "softplus" or (p1 > 0 and p2 >= 20)


# ---- dropout ---------------------------------------------------------------------------------------------------------
class DropoutFunction(Function):
    """Inverted dropout: zero each element with probability p and scale the rest by 1 / (1 - p)."""
    fresh_gradients = backward_into_gradient = True

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

    @staticmethod
    def array_backward(ctx, g, out=None):
        return ctx.xp.multiply(g, ctx.saved_tensors[0].data, out=out), None


def dropout(input, p=0.5, training=True, inplace=False):
    """Inverted dropout in training; the input itself when ``training`` is False or ``p`` is 0."""
    require_tensor(input, "dropout")
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
    act, p1 = "identity", 0.0  # the activation applied to the output (BatchNormActFunction sets them per node)
    forward_writes = (3, 4)  # running_mean, running_var (in training)

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp, d = ctx.xp, x.data
        c = d.shape[1]
        axes = (0,) + tuple(range(2, d.ndim))
        shape = (1, c) + (1,) * (d.ndim - 2)  # per-channel values, broadcastable against x
        ctx.axes, ctx.shape, ctx.training, ctx.eps = axes, shape, training, eps
        w = None if weight is None else weight.data
        if training:
            b = None if bias is None else bias.data
            if ctx.act == "identity":
                out, x_hat, mean, var, inv_std = kernels.get("batchnorm_fwd", d)(d, w, b, eps)
            else:
                out, x_hat, mean, var, inv_std = kernels.get("batchnorm_act_fwd", d)(d, w, b, eps, ctx.act, ctx.p1)
            update_running_stats(running_mean, running_var, mean, var, d.size // c, momentum)
            ctx.save_for_backward(x, weight, _make(x_hat, x.device), _make(inv_std, x.device))
            return out
        # evaluation: an affine map, y = x * scale + shift
        mean = running_mean.data.reshape(shape).copy()  # copied: later training steps update the buffer in place
        inv_std = 1.0 / xp.sqrt(running_var.data.reshape(shape) + eps)
        scale = inv_std * w.reshape(shape) if w is not None else inv_std
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias.data.reshape(shape)
        ctx.save_for_backward(x, weight, _make(mean, x.device), _make(inv_std, x.device))
        out = d * scale + shift
        if ctx.act == "identity":
            return out
        return kernels.get(f"{ctx.act}_fwd", out)(out, *((ctx.p1,) if ctx.act == "leaky_relu" else ()))

    @staticmethod
    def backward(ctx, g):
        x, weight, saved_a, inv_std = ctx.saved_tensors
        need = ctx.next_edges
        if ctx.act != "identity":  # through the activation first, its derivative read from the output
            g = _elementwise.grad_from_output(g, ctx.output, ctx.act, ctx.p1)
        axes, shape = ctx.axes, ctx.shape
        w = weight.reshape(shape) if weight is not None else None
        if ctx.training:  # x_hat and inv_std recomputed with tinygen ops: both depend on x
            x_hat, inv_std = _normalized(x, axes, ctx.eps)
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
        return (gx, gw, gb) + (None,) * (len(need) - 3)

    @staticmethod
    def array_backward(ctx, g):
        if not ctx.training:  # an affine map: the tensor formula on arrays costs no more
            return BatchNormFunction.backward(ctx, _make(g, ctx.device))
        _, weight, x_hat, inv_std = ctx.saved_tensors
        need = ctx.next_edges
        w = None if weight is None else weight.data
        if ctx.act == "identity":
            gx, gw, gb = kernels.get("batchnorm_bwd", g)(g, x_hat.data, w, inv_std.data)
        else:
            gx, gw, gb = kernels.get("batchnorm_act_bwd", g)(g, ctx.output_array, x_hat.data, w, inv_std.data,
                                                             ctx.act, ctx.p1)
        return (gx if need[0] is not None else None, gw if need[1] is not None else None,
                gb if need[2] is not None else None) + (None,) * (len(need) - 3)


class BatchNormActFunction(BatchNormFunction):
    """act(batch_norm(x)) as one node, for an activation whose derivative its output gives (ReLU, LeakyReLU with
    a slope >= 0): in training the activation is applied as the normalised output is written (kernel
    ``batchnorm_act_fwd``) and its derivative folded into batch norm's backward (``batchnorm_act_bwd``), one pass
    each instead of two. Named for both ops in the graph (``BatchNorm+ReLUBackward``)."""
    save_output = True

    def name(self):
        return f"BatchNorm+{ACT_TITLES[self.act]}Backward"

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, act, p1):
        ctx.act, ctx.p1 = act, p1
        return BatchNormFunction.forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps)


def update_running_stats(running_mean, running_var, mean, var, n, momentum):
    """In place: r = (1 - momentum) * r + momentum * batch statistic, with the unbiased variance (as PyTorch).
    ``momentum`` is a number, or the count of batches seen (an integer 0-d tensor, BatchNorm's momentum=None): a
    cumulative average, momentum = 1 / count, read where the count lives (a compiled step's replay reads the count
    it has then, with no host read). Either way the factors are rounded to the statistics' dtype alike."""
    if isinstance(momentum, Tensor):
        m = 1.0 / momentum.data  # float64, as Python's 1.0 / count
        dtype = (running_mean if running_mean is not None else running_var).dtype
        keep, new, new_var = (1.0 - m).astype(dtype), m.astype(dtype), (m * n / (n - 1)).astype(dtype)
    else:
        keep, new, new_var = 1.0 - momentum, momentum, momentum * n / (n - 1)
    if running_mean is not None:
        running_mean.data *= keep
        running_mean.data += new * mean
    if running_var is not None:
        running_var.data *= keep
        running_var.data += new_var * var


def batch_norm_momentum(momentum, fn):
    """``momentum`` as the ops take it: a float, or a count of batches (see ``update_running_stats``)."""
    if isinstance(momentum, Tensor):
        if momentum.ndim != 0 or momentum.dtype.kind not in "iu":
            raise TypeError(f"{fn}: momentum must be a number, or the count of batches seen as an integer 0-d "
                            f"tensor (a cumulative average), got a tensor of shape {tuple(momentum.shape)} and "
                            f"dtype {momentum.dtype}")
        return momentum
    return float(momentum)


def _check_batch_norm(fn, input, running_mean, running_var, weight, bias, training):
    require_tensor(input, fn)
    if input.ndim < 2:
        raise ValueError(f"{fn}: expected an input of shape (N, C, *), got shape {tuple(input.shape)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}, but the input of shape "
                             f"{tuple(input.shape)} has {c} channels")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype} but the input has dtype {input.dtype}")
    if training:
        if input.numel() // max(c, 1) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{tuple(input.shape)}")
    elif running_mean is None or running_var is None:
        raise ValueError(f"{fn}: running_mean and running_var are required when training=False")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation of input (N, C, *) over all axes but C (see ``BatchNorm1d``).

    With ``training=True`` the batch statistics are used and ``running_mean``/``running_var`` (if given) are
    updated in place: ``r = (1 - momentum) * r + momentum * batch_stat`` (``momentum`` a number, or the count of
    batches seen as an integer 0-d tensor: a cumulative average). With ``training=False`` the running statistics
    are used.
    """
    _check_batch_norm("batch_norm", input, running_mean, running_var, weight, bias, training)
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, bool(training),
                                   batch_norm_momentum(momentum, "batch_norm"), float(eps))


BN_FUSABLE_ACTIVATIONS = ("relu", "leaky_relu")


def batch_norm_act(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                   eps=1e-5, activation="relu", negative_slope=0.0):
    """``activation(batch_norm(...))`` as one node (arguments as ``batch_norm``): ``activation`` is "relu" or
    "leaky_relu" with ``negative_slope`` >= 0. ``nn.Sequential`` uses this for a BatchNorm followed by ReLU or
    LeakyReLU; the values and gradients are those of the two ops."""
    if activation not in BN_FUSABLE_ACTIVATIONS:
        raise ValueError(f"batch_norm_act: activation must be one of {BN_FUSABLE_ACTIVATIONS}, got {activation!r}")
    if activation == "leaky_relu" and not negative_slope >= 0:
        raise ValueError(f"batch_norm_act: leaky_relu needs a negative_slope >= 0 to be differentiated from its "
                         f"output, got {negative_slope}")
    _check_batch_norm("batch_norm_act", input, running_mean, running_var, weight, bias, training)
    return BatchNormActFunction.apply(input, weight, bias, running_mean, running_var, bool(training),
                                      batch_norm_momentum(momentum, "batch_norm_act"), float(eps), activation,
                                      float(negative_slope) if activation == "leaky_relu" else 0.0)


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
        x, weight = ctx.saved_tensors[:2]
        x_hat, inv_std = _normalized(x, ctx.axes, ctx.eps)  # with tinygen ops: both depend on x
        return _layer_norm_grads(ctx, g, x_hat, inv_std, weight)

    @staticmethod
    def array_backward(ctx, g):
        _, weight, x_hat, inv_std = ctx.saved_tensors
        device = ctx.device
        return _layer_norm_grads(ctx, _make(g, device), x_hat, inv_std, weight)


def _layer_norm_grads(ctx, g, x_hat, inv_std, weight):
    need, axes = ctx.next_edges, ctx.axes
    gx = None
    if need[0] is not None:
        gxh = g * weight if weight is not None else g
        gx = inv_std * (gxh - gxh.mean(axes, keepdim=True) - x_hat * (gxh * x_hat).mean(axes, keepdim=True))
    lead = tuple(range(g.ndim - len(axes)))  # the parameters are shared across the leading axes (if any)
    gw = gb = None
    if need[1] is not None:
        gw = (g * x_hat).sum(lead) if lead else g * x_hat
    if need[2] is not None:
        gb = g.sum(lead) if lead else g
    return gx, gw, gb, None, None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing dimensions ``normalized_shape`` (mean 0, biased variance 1), then
    ``* weight + bias``."""
    require_tensor(input, "layer_norm")
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
