"""Layers: Linear, Embedding, Dropout, BatchNorm1d/2d, LayerNorm, Flatten/Unflatten, activations, Identity.

Constructor arguments, parameter names, default initialisation and repr follow PyTorch, so a model written for
PyTorch maps onto these one to one (and state_dicts line up key for key).
"""
import math

from .. import distributed as _distributed
from .. import dtypes
from ..capture import replayed
from .._checks import check_int, check_probability, check_real, is_int
from ..kernels.conv import conv_transpose_out_size
from ..ops.conv import _conv_padding
from ..ops.sync_batch_norm import sync_batch_norm as _sync_batch_norm
from ..tensor import get_default_dtype, zeros
from . import functional as F
from . import init
from .module import Module, Parameter


def _empty(shape, device, dtype):
    dt = dtypes.as_dtype(dtype) if dtype is not None else get_default_dtype()
    return zeros(*shape, dtype=dt, device=device if device is not None else "cpu")


class Identity(Module):
    """Returns its input (arguments are accepted and ignored, as in PyTorch)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features).

    Initialised as PyTorch: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) (the weight via
    ``kaiming_uniform_(a=sqrt(5))``).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = check_int(in_features, "Linear", "in_features", low=0)
        self.out_features = check_int(out_features, "Linear", "out_features", low=0)
        self.weight = Parameter(_empty((out_features, in_features), device, dtype))
        self.bias = Parameter(_empty((out_features,), device, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def forward_activated(self, input, activation):
        """``activation(self(input))`` as one fused node, or None when that is not possible (Sequential calls this
        for a Linear followed by an activation module: the bias add and the activation become one pass)."""
        spec = getattr(activation, "fused_spec", None)
        if spec is None or input.ndim != 2 or type(self).forward is not Linear.forward:
            return None
        act = spec()
        return None if act is None else F.linear_act(input, self.weight, self.bias, *act)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, looked up by integer index; initialised
    N(0, 1). The row ``padding_idx`` (if given) starts at zero and gets no gradient."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, device=None, dtype=None):
        super().__init__()
        self.num_embeddings = check_int(num_embeddings, "Embedding", "num_embeddings", low=0)
        self.embedding_dim = check_int(embedding_dim, "Embedding", "embedding_dim", low=0)
        if padding_idx is not None:
            check_int(padding_idx, "Embedding", "padding_idx")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} must be within num_embeddings "
                                 f"({num_embeddings})")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        self.weight = Parameter(_empty((num_embeddings, embedding_dim), device, dtype))
        self.reset_parameters()

    def reset_parameters(self):
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the others by
    1 / (1 - p), so the expected value is unchanged; in eval mode, the identity."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        check_probability(p, "Dropout", "p")
        self.p, self.inplace = p, inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class _BatchNorm(Module):
    _dims = ()  # the input ranks accepted
    _normalize = staticmethod(F.batch_norm)  # SyncBatchNorm swaps in its all-rank statistics

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, *, bias=True):
        super().__init__()
        name = type(self).__name__
        check_int(num_features, name, "num_features", low=0)
        check_real(eps, name, "eps", low=0.0)  # a negative eps can make the variance negative: NaNs
        if momentum is not None:  # None: a cumulative average
            check_real(momentum, name, "momentum", low=0.0, high=1.0)
        self.num_features, self.eps, self.momentum = int(num_features), eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(_empty((num_features,), device, dtype))
            if bias:
                self.bias = Parameter(_empty((num_features,), device, dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", _empty((num_features,), device, dtype))
            self.register_buffer("running_var", _empty((num_features,), device, dtype))
            self.register_buffer("num_batches_tracked", zeros((), dtype=dtypes.int64,
                                                                      device=device or "cpu"))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    @replayed  # array code: a compiled step's replay resets them again
    def reset_running_stats(self):
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input):
        return self._normalized(input)

    def forward_activated(self, input, activation):
        """``activation(self(input))`` as one node (``F.batch_norm_act``) for ReLU and LeakyReLU with a slope >= 0,
        or None where that is not possible (Sequential calls this for a BatchNorm followed by an activation)."""
        spec = getattr(activation, "fused_spec", None)
        if spec is None or self._normalize is not F.batch_norm or type(self).forward is not _BatchNorm.forward:
            return None  # SyncBatchNorm's statistics, or a subclass's own forward: not fused
        act = spec()
        if act is None or act[0] not in F.BN_FUSABLE_ACTIVATIONS:
            return None
        return self._normalized(input, act[:2])

    def _normalized(self, input, activation=None):
        """The normalised input, and activated when ``activation`` is (name, slope)."""
        if input.ndim not in self._dims:
            raise ValueError(f"{type(self).__name__}: expected {' or '.join(f'{d}D' for d in self._dims)} input, "
                             f"got {input.ndim}D input of shape {tuple(input.shape)}")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels (dim 1), got input of "
                             f"shape {tuple(input.shape)}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self._count_batch()
            if self.momentum is None:  # cumulative moving average: 1 / count, read where the count lives
                factor = self.num_batches_tracked
        # batch statistics in training, or in eval when no running statistics are kept
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        stats = (self.running_mean if track else None, self.running_var if track else None)
        if activation is not None:
            return F.batch_norm_act(input, *stats, self.weight, self.bias, use_batch, factor, self.eps, *activation)
        return self._normalize(input, *stats, self.weight, self.bias, use_batch, factor, self.eps)

    @replayed(graph_key=lambda self: (id(self.num_batches_tracked.data),),  # device work: a graph may count
              writes=lambda self: (self.num_batches_tracked,))
    def _count_batch(self):
        self.num_batches_tracked.data += 1

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs over N (and L), per channel C.

    Training: normalise with the batch mean and biased variance; update ``running_mean``/``running_var`` with
    ``momentum`` (running_var from the unbiased variance), as PyTorch. Eval: normalise with the running stats.
    """
    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs per channel (see ``BatchNorm1d``)."""
    _dims = (4,)


class LayerNorm(Module):
    """Normalise each sample over its trailing ``normalized_shape`` dimensions, then scale and shift
    elementwise (weight ones, bias zeros at start)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if is_int(normalized_shape) else tuple(normalized_shape)
        for s in shape:
            check_int(s, "LayerNorm", "normalized_shape", low=0)
        check_real(eps, "LayerNorm", "eps", low=0.0)
        self.normalized_shape, self.eps, self.elementwise_affine = tuple(int(s) for s in shape), eps, \
            elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(_empty(self.normalized_shape, device, dtype))
            self.bias = Parameter(_empty(self.normalized_shape, device, dtype)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """Flatten dimensions ``start_dim`` .. ``end_dim`` into one (by default all but the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = check_int(start_dim, "Flatten", "start_dim")
        self.end_dim = check_int(end_dim, "Flatten", "end_dim")

    def forward(self, input):
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dimension ``dim`` into ``unflattened_size`` (one entry may be -1)."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim = check_int(dim, "Unflatten", "dim")
        if not isinstance(unflattened_size, (tuple, list)):
            raise TypeError(f"Unflatten(): argument 'unflattened_size' must be a tuple or list of ints, not "
                            f"{type(unflattened_size).__name__}")
        for s in unflattened_size:
            check_int(s, "Unflatten", "unflattened_size", low=-1)
        if list(unflattened_size).count(-1) > 1:
            raise ValueError(f"Unflatten: only one size can be inferred (-1), got {tuple(unflattened_size)}")
        self.unflattened_size = tuple(int(s) for s in unflattened_size)

    def forward(self, input):
        shape = tuple(input.shape)
        if not -len(shape) <= self.dim < len(shape):
            raise IndexError(f"Unflatten: dim {self.dim} is out of range for input of shape {shape}")
        d = self.dim % len(shape)
        sizes = self.unflattened_size
        known = math.prod(s for s in sizes if s != -1)
        if (-1 in sizes and (known == 0 or shape[d] % known)) or (-1 not in sizes and known != shape[d]):
            raise ValueError(f"Unflatten: cannot split dim {self.dim} of size {shape[d]} (input shape {shape}) "
                             f"into {sizes}")
        return input.reshape(shape[:d] + sizes + shape[d + 1:])

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


# ---- activations -----------------------------------------------------------------------------------------------------
class ReLU(Module):
    """max(x, 0). ``inplace`` is accepted for compatibility; the result is always a new tensor."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def fused_spec(self):
        """How Sequential fuses this activation into a preceding Linear (nn.functional.linear_act)."""
        return ("relu", 0.0, 0.0)

    def forward(self, input):
        return F.relu(input)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        check_real(negative_slope, "LeakyReLU", "negative_slope")
        self.negative_slope, self.inplace = negative_slope, inplace

    def fused_spec(self):
        return ("leaky_relu", self.negative_slope, 0.0) if self.negative_slope >= 0 else None

    def forward(self, input):
        return F.leaky_relu(input, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class ELU(Module):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        check_real(alpha, "ELU", "alpha")
        self.alpha, self.inplace = alpha, inplace

    def fused_spec(self):
        return ("elu", self.alpha, 0.0) if self.alpha >= 0 else None

    def forward(self, input):
        return F.elu(input, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class Softplus(Module):
    """log(1 + exp(beta * x)) / beta, linear above ``threshold``."""

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        if check_real(beta, "Softplus", "beta") == 0:
            raise ValueError("Softplus: beta must be non-zero (the output is log(1 + exp(beta * x)) / beta)")
        check_real(threshold, "Softplus", "threshold", finite=False)
        self.beta, self.threshold = beta, threshold

    def fused_spec(self):
        # the fused backward reads the slope from the output; near a small threshold the output cannot tell the
        # linear branch from the curved one (at the default 20 they differ by e**-20)
        return ("softplus", self.beta, self.threshold) if self.beta > 0 and self.threshold >= 20 else None

    def forward(self, input):
        return F.softplus(input, self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class Tanh(Module):
    def fused_spec(self):
        return ("tanh", 0.0, 0.0)

    def forward(self, input):
        return F.tanh(input)


class Sigmoid(Module):
    def fused_spec(self):
        return ("sigmoid", 0.0, 0.0)

    def forward(self, input):
        return F.sigmoid(input)


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        if dim is not None:
            check_int(dim, "Softmax", "dim")
        self.dim = dim

    def forward(self, input):
        return F.softmax(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        if dim is not None:
            check_int(dim, "LogSoftmax", "dim")
        self.dim = dim

    def forward(self, input):
        return F.log_softmax(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmin(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.softmin(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class CosineSimilarity(Module):
    """The cosine similarity of two inputs along ``dim`` (``F.cosine_similarity``)."""

    def __init__(self, dim=1, eps=1e-8):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x1, x2):
        return F.cosine_similarity(x1, x2, self.dim, self.eps)

    def extra_repr(self):
        return f"dim={self.dim}, eps={self.eps}"


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation of (N, C, *) inputs whose training statistics are those of the whole global batch:
    the per-channel sums are all-reduced over the ranks of ``tinygen.distributed`` (see
    ``tinygen.ops.sync_batch_norm``), so N ranks normalise as one process would on their concatenated batches,
    and the running statistics agree on every rank. Evaluation uses the running statistics, as ``BatchNorm``.

    Plain ``BatchNorm1d``/``BatchNorm2d`` under data parallelism normalise with each rank's own batch (per-rank
    statistics, PyTorch's default too); ``SyncBatchNorm.convert_sync_batchnorm(model)`` switches a model over.
    In a world of one process it is ``BatchNorm``.
    """
    _dims = (2, 3, 4, 5)

    def _normalize(self, input, running_mean, running_var, weight, bias, use_batch, momentum, eps):
        if use_batch and self.training and _distributed.world_size() > 1:
            return _sync_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps)
        return F.batch_norm(input, running_mean, running_var, weight, bias, use_batch, momentum, eps)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """Return ``module`` with every BatchNorm layer in it replaced by a SyncBatchNorm sharing its parameters
        and buffers (a BatchNorm passed directly comes back converted; other modules are changed in place)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            for name, value in list(module._parameters.items()) + list(module._buffers.items()):
                setattr(sync, name, value)
            sync.train(module.training)
            return sync
        for name, child in list(module.named_children()):
            if child is not None:
                converted = cls.convert_sync_batchnorm(child)
                if converted is not child:
                    module.add_module(name, converted)
        return module


# ---- convolutions and pooling ----------------------------------------------------------------------------------------
def _pair_arg(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: PyTorch's arguments, parameter shapes, init and repr."""
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 padding_mode, output_padding=0, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if groups <= 0:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups}")
        if in_channels % groups:
            raise ValueError(f"{name}: in_channels must be divisible by groups (in_channels={in_channels}, "
                             f"groups={groups})")
        if out_channels % groups:
            raise ValueError(f"{name}: out_channels must be divisible by groups (out_channels={out_channels}, "
                             f"groups={groups})")
        known = ("zeros", "reflect", "replicate", "circular")
        if padding_mode not in known:
            raise ValueError(f"{name}: padding_mode must be one of {known}, got {padding_mode!r}")
        if padding_mode != "zeros" and self._transposed:
            raise ValueError(f"{name}: only padding_mode='zeros' is supported for a transposed convolution (as in "
                             f"PyTorch), got {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"{name}: Invalid padding string {padding!r}, should be one of ('valid', 'same')")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride = _pair_arg(kernel_size), _pair_arg(stride)
        self.padding = padding if isinstance(padding, str) else _pair_arg(padding)
        self.dilation, self.output_padding = _pair_arg(dilation), _pair_arg(output_padding)
        self.padding_mode = padding_mode
        if padding == "same" and self.stride != (1, 1):
            raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
        rows, cols = ((in_channels, out_channels // groups) if self._transposed else
                      (out_channels, in_channels // groups))
        # PyTorch's shape, (rows, cols, kh, kw), stored channels-last, (rows, kh, kw, cols) in memory: the order
        # of the convolution kernels' products (kernels/conv.py), so they take the weight and give its gradient
        # without copying; its optimizer and state follow the layout
        self.weight = Parameter(_empty((rows,) + self.kernel_size + (cols,), device, dtype).permute(0, 3, 1, 2))
        self.bias = Parameter(_empty((out_channels,), device, dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # PyTorch's: kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and so is the bias
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward_activated(self, input, activation):
        """``activation(self(input))`` as one node (``F.conv2d_act``, ``F.conv_transpose2d_act``), or None where
        that is not possible (Sequential calls this for a convolution followed by an activation module)."""
        spec = getattr(activation, "fused_spec", None)
        own = ConvTranspose2d.forward if self._transposed else Conv2d.forward
        act = spec() if spec is not None and self.padding_mode == "zeros" and type(self).forward is own else None
        if act is None:
            return None
        if self._transposed:
            return F.conv_transpose2d_act(input, self.weight, self.bias, *act, self.stride, self.padding,
                                          self.output_padding, self.groups, self.dilation)
        return F.conv2d_act(input, self.weight, self.bias, *act, self.stride, self.padding, self.dilation,
                            self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation) of (N, C_in, H, W) inputs, as ``torch.nn.Conv2d``: weight
    (out_channels, in_channels / groups, kh, kw), bias (out_channels,), both ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 0, device, dtype)

    def forward(self, input):
        if self.padding_mode != "zeros":  # PyTorch's way: pad with F.pad, then a convolution without padding
            return F.conv2d(F.pad(input, self._pad_widths(), mode=self.padding_mode), self.weight, self.bias,
                            self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _pad_widths(self):
        """F.pad's (left, right, top, bottom) for this layer's padding, split as F.conv2d splits it."""
        (top, bottom), (left, right) = _conv_padding(type(self).__name__, self.padding, self.kernel_size,
                                                     self.stride, self.dilation)
        return (left, right, top, bottom)


class ConvTranspose2d(_ConvNd):
    """2-D transposed convolution, as ``torch.nn.ConvTranspose2d``: weight (in_channels, out_channels / groups,
    kh, kw); output size (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1."""
    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d: padding must be an int or a pair, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, device, dtype)

    def forward(self, input, output_size=None):
        output_padding = self.output_padding if output_size is None else self._output_padding(input, output_size)
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)

    def _output_padding(self, input, output_size):
        """The output_padding that gives ``output_size`` ((H, W), or the whole shape), as PyTorch picks it: each
        size must lie between the smallest output and that plus stride - 1."""
        size = tuple(int(v) for v in output_size)
        if len(size) == input.ndim:  # the whole shape: its last two sizes
            size = size[-2:]
        if len(size) != 2:
            raise ValueError(f"ConvTranspose2d: output_size must have 2 or {input.ndim} elements (got {len(size)})")
        pads = []
        for a in (0, 1):
            smallest = conv_transpose_out_size(input.shape[input.ndim - 2 + a], self.kernel_size[a], self.stride[a],
                                               self.padding[a], self.dilation[a])
            if not smallest <= size[a] <= smallest + self.stride[a] - 1:
                raise ValueError(f"ConvTranspose2d: requested an output size of {list(size)}, but valid sizes range "
                                 f"from {smallest} to {smallest + self.stride[a] - 1} (for an input of "
                                 f"{list(input.shape[-2:])}) in dim {a}")
            pads.append(size[a] - smallest)
        return tuple(pads)


class MaxPool2d(Module):
    """The maximum over each window of (N, C, H, W) inputs, as ``torch.nn.MaxPool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not supported")
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode
        self.return_indices = return_indices

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """The mean over each window of (N, C, H, W) inputs, as ``torch.nn.AvgPool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        if divisor_override is not None:
            raise NotImplementedError("AvgPool2d: divisor_override is not supported")
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.ceil_mode, self.count_include_pad = padding, ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """The mean over PyTorch's adaptive bins, giving an output of ``output_size`` (int or pair)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Upsample(Module):
    """Nearest-neighbour resizing to ``size`` or by ``scale_factor``, as ``torch.nn.Upsample(mode='nearest')``."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        if mode != "nearest":
            raise NotImplementedError(f"Upsample: only mode='nearest' is supported, got mode={mode!r}")
        self.size, self.mode, self.align_corners = size, mode, align_corners
        self.recompute_scale_factor = recompute_scale_factor
        if isinstance(scale_factor, (tuple, list)):
            self.scale_factor = tuple(float(s) for s in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor is not None else None

    def forward(self, input):
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor)

    def extra_repr(self):
        if self.scale_factor is not None:
            return f"scale_factor={self.scale_factor!r}, mode={self.mode!r}"
        return f"size={self.size!r}, mode={self.mode!r}"


class _Pad2d(Module):
    """What the 2-D padding layers share (``F.pad`` of the last two axes, (N, C, H, W) or (C, H, W)): ``padding``
    an int or (left, right, top, bottom), as torch.nn's; ``mode`` and ``value`` are F.pad's."""
    mode, value = "constant", 0.0

    def __init__(self, padding):
        super().__init__()
        name = type(self).__name__
        widths = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
        if len(widths) != 4 or not all(isinstance(w, int) for w in widths):
            raise ValueError(f"{name}: padding must be an int or 4 ints (left, right, top, bottom), got {padding!r}")
        self.padding = widths

    def forward(self, input):
        return F.pad(input, self.padding, self.mode, self.value)

    def extra_repr(self):
        return f"{self.padding}"


class ConstantPad2d(_Pad2d):
    """Pads the last two axes with ``value``, as ``torch.nn.ConstantPad2d``."""

    def __init__(self, padding, value):
        super().__init__(padding)
        self.value = float(value)

    def extra_repr(self):
        return f"padding={self.padding}, value={self.value}"


class ZeroPad2d(ConstantPad2d):
    """Pads the last two axes with zeros, as ``torch.nn.ZeroPad2d``."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)

    def extra_repr(self):
        return f"{self.padding}"


class ReflectionPad2d(_Pad2d):
    """Pads the last two axes with their reflection (the edge not repeated), as ``torch.nn.ReflectionPad2d``."""
    mode = "reflect"


class ReplicationPad2d(_Pad2d):
    """Pads the last two axes with copies of the edge, as ``torch.nn.ReplicationPad2d``."""
    mode = "replicate"


class CircularPad2d(_Pad2d):
    """Pads the last two axes with the other side's values (wrapping around), as ``torch.nn.CircularPad2d``."""
    mode = "circular"


# ---- more activations (constructor arguments and reprs as torch.nn) -------------------------------------------------
def _inplace_repr(inplace):
    return "inplace=True" if inplace else ""


class GELU(Module):
    """x * Phi(x), Phi the standard normal CDF; approximate="tanh" uses the tanh formula."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """x * sigmoid(x)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.silu(input)

    def extra_repr(self):
        return _inplace_repr(self.inplace)


class Mish(Module):
    """x * tanh(softplus(x))."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.mish(input)

    def extra_repr(self):
        return _inplace_repr(self.inplace)


class LogSigmoid(Module):
    def forward(self, input):
        return F.logsigmoid(input)


class Softsign(Module):
    """x / (1 + |x|)."""

    def forward(self, input):
        return F.softsign(input)


class SELU(Module):
    """scale * elu(x, alpha) with the self-normalising constants."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.selu(input)

    def extra_repr(self):
        return _inplace_repr(self.inplace)


class CELU(Module):
    """x for x > 0, alpha * (exp(x / alpha) - 1) otherwise."""

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha, self.inplace = alpha, inplace

    def forward(self, input):
        return F.celu(input, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class Hardtanh(Module):
    """clamp(x, min_val, max_val)."""

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        if min_val > max_val:
            raise ValueError(f"Hardtanh: min_val ({min_val}) must not be greater than max_val ({max_val})")
        self.min_val, self.max_val, self.inplace = min_val, max_val, inplace

    def forward(self, input):
        return F.hardtanh(input, self.min_val, self.max_val)

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}" + (", inplace=True" if self.inplace else "")


class ReLU6(Hardtanh):
    """min(max(x, 0), 6)."""

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)

    def forward(self, input):
        return F.relu6(input)

    def extra_repr(self):
        return _inplace_repr(self.inplace)


class Hardsigmoid(Module):
    """relu6(x + 3) / 6."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.hardsigmoid(input)
