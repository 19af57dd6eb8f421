"""Convolutions and pooling over images (N, C, H, W), as ``torch.nn.functional``: conv2d, conv_transpose2d,
max_pool2d, avg_pool2d, adaptive_avg_pool2d, interpolate (nearest). A 3-D input (C, H, W) is one unbatched image.

Each op is one ``Function``: forward on arrays through ``tinygen.kernels`` (reference in kernels/conv.py), a
``backward`` written with these same ops, so it can be differentiated again (WGAN-GP and R1 penalties on a
convolutional critic), and an ``array_backward`` with the kernels for a plain ``backward()``.

The three convolution Functions close under differentiation: conv2d's input gradient is a conv_transpose2d and
its weight gradient a ``Conv2dWeightFunction`` (bilinear in the input and the output gradient), whose gradients
are again a conv2d and a conv_transpose2d. The average pools and nearest upsampling are separable linear maps
``rows @ x @ cols.T``; their gradient is the same map with the transposed matrices.
"""
import functools
from collections import namedtuple

import numpy as np

from .. import kernels
from ..autograd.function import Function
from ..kernels import conv as _conv
from ..tensor import Tensor, _make
from .elementwise import grad_from_output, softplus
from .index import IndexAdd
from .nn import ACT_TITLES, fusable_activation

# stride, dilation: (h, w); padding: ((top, bottom), (left, right)); groups: int
Geometry = namedtuple("Geometry", "stride padding dilation groups")


def _crop(t, hw):
    """The first hw rows/columns of t's last two axes (a conv of a larger input than needed gives more)."""
    return t if tuple(t.shape[2:]) == tuple(hw) else t[:, :, :hw[0], :hw[1]]


def _crop_array(a, hw):
    return a if a.shape[2:] == tuple(hw) else a[:, :, :hw[0], :hw[1]]


def _bias_grad(g, need):
    return g.sum((0, 2, 3)) if need is not None else None


def _conv_fwd(x, w, geom, keep_cols=False):
    return kernels.get("conv2d_fwd", x)(x, w, geom.stride, geom.padding, geom.dilation, geom.groups, keep_cols)


def _conv_bwd_input(g, w, x_hw, geom):
    return kernels.get("conv2d_bwd_input", g)(g, w, x_hw, geom.stride, geom.padding, geom.dilation, geom.groups)


def _conv_bwd_weight(x, g, kernel_hw, geom, cols=None):
    return kernels.get("conv2d_bwd_weight", x)(x, g, kernel_hw, geom.stride, geom.padding, geom.dilation,
                                                geom.groups, cols)


class Conv2dFunction(Function):
    """y = conv2d(x, w) + b: cross-correlation of x (N, C, H, W) with w (Cout, C / groups, kh, kw)."""
    reusable_forward = True  # (forward reads the weight's requires_grad: whether to keep x's column matrix)

    @staticmethod
    def forward(ctx, x, weight, bias, geom):
        ctx.save_for_backward(x, weight)
        ctx.geom = geom
        ctx.cols = None  # x's column matrix, kept for the weight gradient of a plain backward()
        if weight.requires_grad:
            y, ctx.cols = _conv_fwd(x.data, weight.data, geom, keep_cols=True)
        else:
            y = _conv_fwd(x.data, weight.data, geom)
        if bias is not None:
            y += bias.data.reshape(1, -1, 1, 1)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need, geom = ctx.next_edges, ctx.geom
        ctx.cols = None  # a differentiable backward builds its own
        gx = ConvTranspose2dFunction.apply(g, w, None, geom, tuple(x.shape[2:])) if need[0] is not None else None
        gw = Conv2dWeightFunction.apply(x, g, geom, tuple(w.shape[2:])) if need[1] is not None else None
        return gx, gw, _bias_grad(g, need[2]), None

    @staticmethod
    def array_backward(ctx, g):
        return (*_conv2d_array_grads(ctx, g), (g.sum((0, 2, 3)) if ctx.next_edges[2] is not None else None), None)


def _conv2d_array_grads(ctx, g):
    """The input and weight gradients of a conv2d node (Conv2dFunction, Conv2dActFunction) on arrays."""
    x, w = ctx.saved_tensors
    need, geom = ctx.next_edges, ctx.geom
    cols, ctx.cols = ctx.cols, None  # used once: a second backward (retain_graph) builds it again
    gx = _conv_bwd_input(g, w.data, x.shape[2:], geom) if need[0] is not None else None
    gw = _conv_bwd_weight(x.data, g, w.shape[2:], geom, cols) if need[1] is not None else None
    return gx, gw


class _WithActivation:
    """What a convolution's Function with its activation adds to the convolution's (``conv``): y = act(conv(x, w) +
    b) as one node, as ``LinearActFunction`` is for a linear layer. The bias add and the activation are one pass over
    the convolution's output seen as its (N * OH * OW, C) rows (free for the channels-last image a convolution
    returns; kernel ``bias_act_fwd``), and so are the plain backward's activation derivative and bias gradient
    (``bias_act_bwd``); the differentiable backward is the convolution's on ``grad_from_output``. Named for both
    ops (e.g. ``Conv2d+LeakyReLUBackward``)."""
    save_output = True
    conv = array_grads = None  # the convolution's Function, and its input and weight gradients on arrays

    def name(self):
        return f"{self.conv.__name__.removesuffix('Function')}+{ACT_TITLES[self.act]}Backward"

    @staticmethod
    def backward(ctx, g):
        gpre = grad_from_output(g, ctx.output, ctx.act, ctx.p1, ctx.p2)  # differentiable in y
        return ctx.conv.backward(ctx, gpre) + (None, None, None)

    @staticmethod
    def array_backward(ctx, g):
        gpre, gb = _bias_act_grads(ctx, g)
        return (*ctx.array_grads(ctx, gpre), gb) + (None,) * (len(ctx.next_edges) - 3)


class Conv2dActFunction(_WithActivation, Conv2dFunction):
    """y = act(conv2d(x, w) + b) as one node (``_WithActivation``)."""
    conv, array_grads = Conv2dFunction, staticmethod(_conv2d_array_grads)

    @staticmethod
    def forward(ctx, x, weight, bias, geom, act, p1, p2):
        ctx.act, ctx.p1, ctx.p2 = act, p1, p2
        return _bias_act(Conv2dFunction.forward(ctx, x, weight, None, geom), bias, act, p1, p2)


def _bias_act(y, bias, act, p1, p2):
    """act(y + bias) for a convolution's output y, one pass over its (N * OH * OW, C) rows (a view of a
    channels-last y, else a copy): a channels-last image."""
    rows = _conv._rows(y)
    rows = kernels.get("bias_act_fwd", rows)(rows, None if bias is None else bias.data, act, p1, p2)
    return _conv._nchw(rows, y.shape[0], y.shape[2:], y.shape[1])


def _bias_act_grads(ctx, g):
    """(the gradient before the activation, a channels-last image; the bias gradient, or None) of a convolution
    node with its activation, from its output and the upstream gradient g: one pass."""
    y = ctx.output_array
    gpre, gb = kernels.get("bias_act_bwd", y)(_conv._rows(y), _conv._rows(g), ctx.act, ctx.p1, ctx.p2,
                                              ctx.next_edges[2] is not None)
    return _conv._nchw(gpre, y.shape[0], y.shape[2:], y.shape[1]), gb


class ConvTranspose2dFunction(Function):
    """y = conv_transpose2d(x, w) + b: the adjoint of conv2d(., w) applied to x (N, Cin, H, W), w (Cin,
    Cout / groups, kh, kw); ``out_hw`` is the output's spatial size (it depends on output_padding)."""
    reusable_forward = True

    @staticmethod
    def forward(ctx, x, weight, bias, geom, out_hw):
        ctx.save_for_backward(x, weight)
        ctx.geom = geom
        y = _conv_bwd_input(x.data, weight.data, out_hw, geom)
        if bias is not None:
            y += bias.data.reshape(1, -1, 1, 1)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need, geom = ctx.next_edges, ctx.geom
        gx = _crop(Conv2dFunction.apply(g, w, None, geom), x.shape[2:]) if need[0] is not None else None
        gw = Conv2dWeightFunction.apply(g, x, geom, tuple(w.shape[2:])) if need[1] is not None else None
        return gx, gw, _bias_grad(g, need[2]), None, None

    @staticmethod
    def array_backward(ctx, g):
        return (*_conv_transpose2d_array_grads(ctx, g), (g.sum((0, 2, 3)) if ctx.next_edges[2] is not None else None),
                None, None)


def _conv_transpose2d_array_grads(ctx, g):
    """The input and weight gradients of a conv_transpose2d node (with or without its activation) on arrays."""
    x, w = ctx.saved_tensors
    need, geom = ctx.next_edges, ctx.geom
    gx = cols = None
    if need[0] is not None and need[1] is not None:  # g's column matrix serves both gradients
        gx, cols = _conv_fwd(g, w.data, geom, keep_cols=True)
    elif need[0] is not None:
        gx = _conv_fwd(g, w.data, geom)
    if gx is not None and gx.shape[2:] != x.shape[2:]:  # output_padding: g has windows x never met
        gx, cols = _crop_array(gx, x.shape[2:]), None
    gw = _conv_bwd_weight(g, x.data, w.shape[2:], geom, cols) if need[1] is not None else None
    return gx, gw


class ConvTranspose2dActFunction(_WithActivation, ConvTranspose2dFunction):
    """y = act(conv_transpose2d(x, w) + b) as one node (``_WithActivation``)."""
    conv, array_grads = ConvTranspose2dFunction, staticmethod(_conv_transpose2d_array_grads)

    @staticmethod
    def forward(ctx, x, weight, bias, geom, out_hw, act, p1, p2):
        ctx.act, ctx.p1, ctx.p2 = act, p1, p2
        return _bias_act(ConvTranspose2dFunction.forward(ctx, x, weight, None, geom, out_hw), bias, act, p1, p2)


class Conv2dWeightFunction(Function):
    """The weight gradient of conv2d, dL/dw = conv2d_weight(x, g), as a differentiable op: x (N, C, H, W), g the
    output gradient (N, Cout, OH, OW). Bilinear: its gradients are a conv_transpose2d (for x) and a conv2d (for g)."""

    @staticmethod
    def forward(ctx, x, g, geom, kernel_hw):
        ctx.save_for_backward(x, g)
        ctx.geom = geom
        return _conv_bwd_weight(x.data, g.data, kernel_hw, geom)

    @staticmethod
    def backward(ctx, gw):
        x, g = ctx.saved_tensors
        need, geom = ctx.next_edges, ctx.geom
        gx = ConvTranspose2dFunction.apply(g, gw, None, geom, tuple(x.shape[2:])) if need[0] is not None else None
        gg = _crop(Conv2dFunction.apply(x, gw, None, geom), g.shape[2:]) if need[1] is not None else None
        return gx, gg, None, None

    @staticmethod
    def array_backward(ctx, gw):
        x, g = ctx.saved_tensors
        need, geom = ctx.next_edges, ctx.geom
        gx = _conv_bwd_input(g.data, gw, x.shape[2:], geom) if need[0] is not None else None
        gg = _crop_array(_conv_fwd(x.data, gw, geom), g.shape[2:]) if need[1] is not None else None
        return gx, gg, None, None


class MaxPool2dFunction(Function):
    """The maximum of each window; the gradient goes to the (first) maximum of each window, as PyTorch."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, out_hw):
        d = x.data
        y, index = kernels.get("max_pool2d_fwd", d)(d, kernel, stride, padding, dilation, out_hw)
        ctx.index, ctx.x_shape = index, d.shape
        return y

    @staticmethod
    def backward(ctx, g):
        # the same scatter as tinygen ops: an IndexAdd into the flat input, whose own gradient is a gather
        xp, index = ctx.xp, ctx.index
        n, c, h, w = ctx.x_shape
        g = g.reshape(-1)
        if index.size and int(index.min()) < 0:  # windows that missed the input pass no gradient
            g = g * _make((index.reshape(-1) >= 0).astype(g.dtype), g.device)
        flat = _conv._flat_index(xp, index, n * c, h * w)
        gx = IndexAdd.apply(g, flat, (n * c * h * w,)).reshape(ctx.x_shape)
        return gx, None, None, None, None, None

    @staticmethod
    def array_backward(ctx, g):
        gx = kernels.get("max_pool2d_bwd", g)(g, ctx.index, ctx.x_shape[2:])
        return gx, None, None, None, None, None


class _SeparableMapFunction(Function):
    """y = rows @ x @ cols.T over the last two axes: a linear map whose gradient is the map with rows.T, cols.T."""

    @staticmethod
    def forward(ctx, x, rows, cols):
        ctx.rows, ctx.cols = rows, cols
        return kernels.get("separable_map2d", x.data)(x.data, rows, cols)

    @staticmethod
    def backward(ctx, g):
        return type(ctx).apply(g, ctx.rows.T, ctx.cols.T), None, None

    @staticmethod
    def array_backward(ctx, g):
        return kernels.get("separable_map2d", g)(g, ctx.rows.T, ctx.cols.T), None, None


class AvgPool2dFunction(_SeparableMapFunction):
    """The mean of each window (with PyTorch's divisor)."""


class AdaptiveAvgPool2dFunction(_SeparableMapFunction):
    """The mean over PyTorch's adaptive bins [floor(i * H / OH), ceil((i + 1) * H / OH))."""


class UpsampleNearest2dFunction(_SeparableMapFunction):
    """Nearest-neighbour upsampling (each output copies one input pixel)."""


# ---- argument checks ---------------------------------------------------------------------------------------------
def _pair(fn, name, value, allow_zero=False):
    """An int or a pair of ints as a pair, checked positive (or >= 0 with ``allow_zero``)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                  for v in value):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise ValueError(f"{fn}: expected {name} to be a single integer value or a list of 2 values to match "
                             f"the convolution dimensions, but got {name}={list(value)}")
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if allow_zero and min(pair) < 0:
        raise ValueError(f"{fn}: negative {name} is not supported (got {name}={pair})")
    if not allow_zero and min(pair) <= 0:
        raise ValueError(f"{fn}: non-positive {name} is not supported (got {name}={pair})")
    return pair


def _image(fn, input, what="3D (unbatched) or 4D (batched)"):
    """(the input as 4-D, whether it was unbatched)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: input must be a Tensor, got {type(input).__name__}")
    if input.ndim not in (3, 4):
        raise ValueError(f"{fn}: Expected {what} input, but got input of size: {list(input.shape)}")
    if input.dtype.kind != "f":
        raise TypeError(f"{fn}: expected a floating input, got dtype {input.dtype}")
    if input.ndim == 3:
        return input.unsqueeze(0), True
    return input, False


def _check_weight(fn, input, weight, bias, transposed, groups):
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        shape = list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{fn}: expected a 4-D weight, got {shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype} but the input has dtype {input.dtype}")
    if groups <= 0:
        raise ValueError(f"{fn}: non-positive groups is not supported (got groups={groups})")
    if weight.shape[0] % groups:
        raise ValueError(f"{fn}: Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                         f"but got weight of size {list(weight.shape)} instead")
    in_channels = weight.shape[0] if transposed else weight.shape[1] * groups
    if input.shape[1] != in_channels:
        raise ValueError(f"{fn}: Given {'transposed=1' if transposed else f'groups={groups}'}, weight of size "
                         f"{list(weight.shape)}, expected input{list(input.shape)} to have {in_channels} channels, "
                         f"but got {input.shape[1]} channels instead")
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"{fn}: Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
                         f"{out_channels} elements, but got bias of size {list(bias.shape)} instead")


def _conv_padding(fn, padding, kernel_hw, stride, dilation):
    """((top, bottom), (left, right)) from an int, a pair, 'valid' or 'same' (extra padding at the end, as
    PyTorch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{fn}: padding='same' is not supported for strided convolutions")
            totals = [dilation[a] * (kernel_hw[a] - 1) for a in (0, 1)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"{fn}: Invalid padding string: {padding!r} (expected 'same', 'valid' or ints)")
    ph, pw = _pair(fn, "padding", padding, allow_zero=True)
    return ((ph, ph), (pw, pw))


def _batched_result(out, unbatched):
    return out.squeeze(0) if unbatched else out


# ---- public functions ---------------------------------------------------------------------------------------------
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``: input (N, C, H, W) or (C, H, W), weight
    (Cout, C / groups, kh, kw), bias (Cout,) or None; padding an int, a pair, 'valid' or 'same'."""
    x, unbatched, geom = _conv2d_geometry("conv2d", input, weight, bias, stride, padding, dilation, groups)
    return _batched_result(Conv2dFunction.apply(x, weight, bias, geom), unbatched)


def conv2d_act(input, weight, bias, activation, p1=0.0, p2=0.0, stride=1, padding=0, dilation=1, groups=1):
    """``activation(conv2d(input, weight, bias, stride, padding, dilation, groups))`` as one fused node
    (``Conv2dActFunction``); ``activation``, ``p1`` and ``p2`` as for ``linear_act``. ``nn.Sequential`` uses this
    for a Conv2d followed by such an activation module."""
    fuse = fusable_activation("conv2d_act", activation, p1, p2)
    x, unbatched, geom = _conv2d_geometry("conv2d_act", input, weight, bias, stride, padding, dilation, groups)
    if not fuse:
        return softplus(_batched_result(Conv2dFunction.apply(x, weight, bias, geom), unbatched), p1, p2)
    out = Conv2dActFunction.apply(x, weight, bias, geom, activation, float(p1), float(p2))
    return _batched_result(out, unbatched)


def _conv2d_geometry(fn, input, weight, bias, stride, padding, dilation, groups):
    """conv2d's checks: (the input as a batch, whether it was one unbatched image, the Geometry)."""
    x, unbatched = _image(fn, input)
    stride, dilation = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    groups = int(groups)
    _check_weight(fn, x, weight, bias, False, groups)
    kernel_hw = tuple(weight.shape[2:])
    pads = _conv_padding(fn, padding, kernel_hw, stride, dilation)
    h, w = x.shape[2:]
    padded = (h + sum(pads[0]), w + sum(pads[1]))
    eff = tuple(dilation[a] * (kernel_hw[a] - 1) + 1 for a in (0, 1))
    if padded[0] < eff[0] or padded[1] < eff[1]:
        raise ValueError(f"{fn}: Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
                         f"({eff[0]} x {eff[1]}). Kernel size can't be greater than actual input size")
    return x, unbatched, Geometry(stride, pads, dilation, groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d`` (argument order included): input
    (N, Cin, H, W) or (Cin, H, W), weight (Cin, Cout / groups, kh, kw); output size
    (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1."""
    x, unbatched, geom, out_hw = _conv_transpose2d_geometry("conv_transpose2d", input, weight, bias, stride, padding,
                                                            output_padding, groups, dilation)
    return _batched_result(ConvTranspose2dFunction.apply(x, weight, bias, geom, out_hw), unbatched)


def conv_transpose2d_act(input, weight, bias, activation, p1=0.0, p2=0.0, stride=1, padding=0, output_padding=0,
                         groups=1, dilation=1):
    """``activation(conv_transpose2d(input, weight, bias, ...))`` as one fused node (``ConvTranspose2dActFunction``),
    as ``conv2d_act``; ``nn.Sequential`` uses this for a ConvTranspose2d followed by an activation module."""
    fuse = fusable_activation("conv_transpose2d_act", activation, p1, p2)
    x, unbatched, geom, out_hw = _conv_transpose2d_geometry("conv_transpose2d_act", input, weight, bias, stride,
                                                            padding, output_padding, groups, dilation)
    if not fuse:
        out = ConvTranspose2dFunction.apply(x, weight, bias, geom, out_hw)
        return softplus(_batched_result(out, unbatched), p1, p2)
    out = ConvTranspose2dActFunction.apply(x, weight, bias, geom, out_hw, activation, float(p1), float(p2))
    return _batched_result(out, unbatched)


def _conv_transpose2d_geometry(fn, input, weight, bias, stride, padding, output_padding, groups, dilation):
    """conv_transpose2d's checks: (the input as a batch, whether it was unbatched, the Geometry, the output size)."""
    x, unbatched = _image(fn, input)
    stride, dilation = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    ph, pw = _pair(fn, "padding", padding, allow_zero=True)
    oph, opw = _pair(fn, "output_padding", output_padding, allow_zero=True)
    groups = int(groups)
    _check_weight(fn, x, weight, bias, True, groups)
    if not (oph < stride[0] or oph < dilation[0]) or not (opw < stride[1] or opw < dilation[1]):
        raise ValueError(f"{fn}: output padding must be smaller than either stride or dilation, but got "
                         f"output_padding=({oph}, {opw}), stride={stride}, dilation={dilation}")
    kh, kw = weight.shape[2:]
    h, w = x.shape[2:]
    out_hw = (_conv.conv_transpose_out_size(h, kh, stride[0], ph, dilation[0], oph),
              _conv.conv_transpose_out_size(w, kw, stride[1], pw, dilation[1], opw))
    if min(out_hw) <= 0:
        raise ValueError(f"{fn}: Given input size per channel: ({h} x {w}). Calculated output size per channel: "
                         f"({out_hw[0]} x {out_hw[1]}). Output size is too small")
    return x, unbatched, Geometry(stride, ((ph, ph), (pw, pw)), dilation, groups), out_hw


def _pool_args(fn, input, kernel_size, stride, padding, dilation, ceil_mode):
    x, unbatched = _image(fn, input, "3D or 4D (batch mode)")
    kernel = _pair(fn, "kernel_size", kernel_size)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _pair(fn, "stride", stride)
    padding = _pair(fn, "padding", padding, allow_zero=True)
    dilation = _pair(fn, "dilation", dilation)
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:  # PyTorch's limit (the kernel without dilation)
        raise ValueError(f"{fn}: pad should be smaller than or equal to half of kernel size, but got "
                         f"padW = {padding[1]}, padH = {padding[0]}, kW = {kernel[1]}, kH = {kernel[0]}")
    h, w = x.shape[2:]
    out_hw = tuple(_conv.pool_out_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                   for a in (0, 1))
    if min(out_hw) <= 0:
        raise ValueError(f"{fn}: Given input size: ({x.shape[1]}x{h}x{w}). Calculated output size: "
                         f"({x.shape[1]}x{out_hw[0]}x{out_hw[1]}). Output size is too small")
    return x, unbatched, kernel, stride, padding, dilation, out_hw


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """The maximum over each window, as ``torch.nn.functional.max_pool2d`` (stride defaults to kernel_size;
    padding counts as -inf)."""
    fn = "max_pool2d"
    if return_indices:
        raise NotImplementedError(f"{fn}: return_indices=True is not supported")
    x, unbatched, kernel, stride, padding, dilation, out_hw = _pool_args(fn, input, kernel_size, stride, padding,
                                                                         dilation, ceil_mode)
    out = MaxPool2dFunction.apply(x, kernel, stride, padding, dilation, out_hw)
    return _batched_result(out, unbatched)


@functools.lru_cache(maxsize=256)
def _matrices(xp, gpu, dtype, kind, *args):
    """The (rows, cols) matrices of a separable map as ``xp`` arrays of ``dtype``, divisors folded in (made in
    float64 on the host once per shape, dtype, array module and GPU ``gpu``, not per call)."""
    if kind == "nearest":
        (h, oh, sh), (w, ow, sw) = args
        pair = _conv.nearest_matrix(h, oh, sh), _conv.nearest_matrix(w, ow, sw)
    else:
        pair = []
        for a in args:
            m, div = _conv.avg_pool_matrix(*a) if kind == "avg" else _conv.adaptive_pool_matrix(*a)
            pair.append(m / div[:, None])
    return tuple(xp.asarray(m.astype(dtype)) for m in pair)


def _current_gpu(xp):
    """CuPy's current GPU (arrays made by ``xp.asarray`` live there), or None for NumPy and the stand-in."""
    return xp.cuda.runtime.getDevice() if xp.__name__ == "cupy" else None


def _separable(cls, x, unbatched, kind, *args):
    rows, cols = _matrices(x.xp, _current_gpu(x.xp), x.data.dtype, kind, *args)
    return _batched_result(cls.apply(x, rows, cols), unbatched)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """The mean over each window, as ``torch.nn.functional.avg_pool2d`` (stride defaults to kernel_size)."""
    fn = "avg_pool2d"
    if divisor_override is not None:
        raise NotImplementedError(f"{fn}: divisor_override is not supported")
    x, unbatched, kernel, stride, padding, _, out_hw = _pool_args(fn, input, kernel_size, stride, padding, 1,
                                                                  ceil_mode)
    args = [(x.shape[2 + a], kernel[a], stride[a], padding[a], out_hw[a], bool(count_include_pad)) for a in (0, 1)]
    return _separable(AvgPool2dFunction, x, unbatched, "avg", *args)


def adaptive_avg_pool2d(input, output_size):
    """The mean over PyTorch's adaptive bins, giving ``output_size`` (an int, a pair; None keeps that axis)."""
    fn = "adaptive_avg_pool2d"
    x, unbatched = _image(fn, input, "3D or 4D")
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2:
        raise ValueError(f"{fn}: output_size must be an int or a pair, got {output_size!r}")
    out_hw = tuple(x.shape[2 + a] if s is None else int(s) for a, s in enumerate(sizes))
    if min(out_hw) < 0:
        raise ValueError(f"{fn}: output_size must be non-negative, got {output_size!r}")
    if min(x.shape[2:]) == 0 and min(out_hw) > 0:
        raise ValueError(f"{fn}: an input with an empty spatial axis {list(x.shape)} has nothing to average")
    return _separable(AdaptiveAvgPool2dFunction, x, unbatched, "adaptive", *((x.shape[2 + a], out_hw[a])
                                                                             for a in (0, 1)))


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None):
    """Resize the last axis of (N, C, L) or the last two of (N, C, H, W), as ``torch.nn.functional.interpolate``
    (which reads a 3-D input as (N, C, L), not as an unbatched image); only mode='nearest' (PyTorch's index rule
    min(floor(i * scale), H - 1))."""
    fn = "interpolate"
    if mode != "nearest":
        raise NotImplementedError(f"{fn}: only mode='nearest' is supported, got mode={mode!r}")
    if align_corners is not None:
        raise ValueError(f"{fn}: align_corners option can only be set with the interpolating modes: linear | "
                         f"bilinear | bicubic | trilinear")
    if isinstance(input, Tensor) and input.ndim == 3:  # (N, C, L): a 1-D resize, as one row of an image
        size, scale_factor = (None if v is None else (1, _one_axis(fn, name, v))
                              for name, v in (("size", size), ("scale_factor", scale_factor)))
        return interpolate(input.unsqueeze(2), size, scale_factor, mode, align_corners,
                           recompute_scale_factor).squeeze(2)
    x, unbatched = _image(fn, input, "3D (N, C, L) or 4D (N, C, H, W)")  # 4-D here: unbatched is False
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{fn}: " + ("only one of size or scale_factor should be defined" if size is not None
                                      else "either size or scale_factor should be defined"))
    h, w = x.shape[2:]
    if size is not None:
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if len(sizes) != 2:
            raise ValueError(f"{fn}: size must be an int or a pair for a 2-D resize, got {size!r}")
        out_hw, scales = (int(sizes[0]), int(sizes[1])), (None, None)
    else:
        scales = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        if len(scales) != 2:
            raise ValueError(f"{fn}: scale_factor must be a number or a pair, got {scale_factor!r}")
        scales = tuple(float(s) for s in scales)
        out_hw = (int(np.floor(h * scales[0])), int(np.floor(w * scales[1])))
        if recompute_scale_factor:
            scales = (None, None)
    if min(out_hw) <= 0 or min(h, w) <= 0:
        raise ValueError(f"{fn}: Input and output sizes should be greater than 0, but got input (H: {h}, W: {w}) "
                         f"output (H: {out_hw[0]}, W: {out_hw[1]})")
    return _separable(UpsampleNearest2dFunction, x, unbatched, "nearest", (h, out_hw[0], scales[0]),
                      (w, out_hw[1], scales[1]))


def _one_axis(fn, name, value):
    """The ``size`` or ``scale_factor`` of a 1-D resize: a number, or a sequence of one."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{fn}: {name} must be a number or a sequence of one for a 3D (N, C, L) input, got "
                             f"{value!r}")
        value = value[0]
    return value


def upsample_nearest(input, size=None, scale_factor=None):
    """``interpolate(input, size, scale_factor, mode='nearest')``."""
    return interpolate(input, size, scale_factor)
