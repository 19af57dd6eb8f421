"""Weight initialisation, as ``torch.nn.init``: each function fills a tensor in place and returns it.

Values are drawn from the tensor's device generator (``tinygen.random.generator``), so ``tinygen.manual_seed``
makes them reproducible. The data is written directly (outside the graph), as under ``no_grad``.
"""
import math

from .. import random as _random
from ..autograd.grad_mode import no_grad
from ..capture import replayed


def _fill(tensor, values):
    with no_grad():
        tensor.data[...] = values
    return tensor


def _check_float(tensor, fn):
    if tensor.dtype.kind != "f":
        raise TypeError(f"{fn}: needs a floating tensor, got dtype {tensor.dtype}")


def calculate_gain(nonlinearity, param=None):
    """The gain that keeps activations' variance stable through a nonlinearity (as ``torch.nn.init``):
    linear, conv*, sigmoid: 1; tanh: 5/3; relu: sqrt(2); leaky_relu: sqrt(2 / (1 + slope^2)) (slope = param,
    default 0.01); selu: 3/4."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight: for (out, in, *kernel) it is (in * k, out * k) with k the kernel size."""
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out can not be computed for a tensor with fewer than 2 dimensions "
                         f"(got shape {tuple(tensor.shape)})")
    receptive = 1
    for s in tensor.shape[2:]:
        receptive *= s
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


_calculate_fan_in_and_fan_out = calculate_fan_in_and_fan_out  # PyTorch's (private) name


def _fan(tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} is not supported; use 'fan_in' or 'fan_out'")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


@replayed  # fills in place: inside a compiled step a replay fills again (the composites below call these)
def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b)."""
    _check_float(tensor, "uniform_")
    if not a <= b:
        raise ValueError(f"uniform_: expected a <= b, got a={a}, b={b}")
    u = _random.rand(tensor.shape, dtype=tensor.dtype, device=tensor.device).data
    return _fill(tensor, u * (b - a) + a)


@replayed
def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std^2)."""
    _check_float(tensor, "normal_")
    if std < 0:
        raise ValueError(f"normal_: std must be non-negative, got {std}")
    z = _random.randn(tensor.shape, dtype=tensor.dtype, device=tensor.device).data
    return _fill(tensor, z * std + mean)


@replayed
def constant_(tensor, val):
    """Fill with ``val``."""
    return _fill(tensor, val)


@replayed
def zeros_(tensor):
    return _fill(tensor, 0)


@replayed
def ones_(tensor):
    return _fill(tensor, 1)


def xavier_uniform_(tensor, gain=1.0):
    """Glorot uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain=1.0):
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    ``Linear``'s default (a = sqrt(5)) gives b = 1 / sqrt(fan_in)."""
    if 0 in tensor.shape:
        return tensor
    fan = _fan(tensor, mode)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He normal: N(0, std^2) with std = gain / sqrt(fan)."""
    if 0 in tensor.shape:
        return tensor
    fan = _fan(tensor, mode)
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan))
