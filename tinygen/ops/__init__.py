"""Every differentiable op: a ``Function`` subclass (forward and backward together) plus its public function.

Importing this package attaches the ops to ``Tensor`` as methods.
"""
from .arithmetic import (add, sub, mul, div, pow, neg, lt, le, gt, ge, eq, ne, logical_and, logical_or,
                         logical_not, operand)
from .elementwise import (exp, log, sqrt, abs_, sin, cos, tanh, sigmoid, relu, leaky_relu, elu, softplus,
                          maximum, minimum, where, clone, to)
from .reduce import (sum, mean, var, std, max, min, amax, amin, argmax, argmin, logsumexp, softmax, log_softmax)
from .shape import (reshape, flatten, permute, transpose, expand, sum_to, squeeze, unsqueeze, contiguous, cat,
                    concatenate, stack, split, chunk)
from .index import getitem
from .linalg import matmul

abs = abs_
view = reshape
from .math import (square, rsqrt, reciprocal, log1p, expm1, log2, exp2, erf, sign, sinh, cosh, atan, atan2, hypot,
                   logaddexp, xlogy, clamp, clip, clamp_min, clamp_max, pow, rsub, gelu, silu, mish, logsigmoid,
                   softsign, selu, celu, hardtanh, relu6, hardsigmoid)
from .shape import (flip, roll, tril, triu, repeat, tile, unbind, narrow, movedim, swapaxes, swapdims, t,  # noqa: E402
                    expand_as, broadcast_to)
from .reduce import cumsum, prod, norm, std_mean, nansum  # noqa: E402
from .index import masked_fill, index_select, gather, take_along_dim  # noqa: E402
from .linalg import mm_ as mm, bmm, mv, dot, outer, einsum  # noqa: E402
from . import losses  # noqa: E402

moveaxis = movedim
