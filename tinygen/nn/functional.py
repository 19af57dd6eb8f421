"""Stateless layer functions (``import tinygen.nn.functional as F``), as ``torch.nn.functional``.

Thin wrappers: every op is defined in ``tinygen.ops`` (the layers' ops in ``ops/nn.py``, the losses in
``ops/losses.py``), forward and backward together; this module gives them PyTorch's functional names.
"""
from .. import ops as _ops
from ..ops.nn import (linear, linear_act, FUSABLE_ACTIVATIONS, dropout, batch_norm, batch_norm_act,  # noqa: F401
                      BN_FUSABLE_ACTIVATIONS, layer_norm, embedding)


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


# ---- losses ----------------------------------------------------------------------------------------------------------
from ..ops.losses import (binary_cross_entropy, binary_cross_entropy_with_logits, mse_loss, l1_loss,  # noqa: E402
                          cross_entropy, nll_loss, gaussian_nll_loss, kl_normal)
from ..ops.losses import (kl_div, smooth_l1_loss, huber_loss, softmin, normalize,  # noqa: E402
                          cosine_similarity)


# ---- convolutions and pooling ----------------------------------------------------------------------------------------
from ..ops.conv import (conv2d, conv2d_act, conv_transpose2d, conv_transpose2d_act, max_pool2d,  # noqa: E402,F401
                        avg_pool2d, adaptive_avg_pool2d, interpolate, upsample_nearest)
from ..ops.shape import pad  # noqa: E402,F401


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
