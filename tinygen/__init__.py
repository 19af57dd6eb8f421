"""tinygen: a small, readable numerical engine — Tensor, reverse-mode autodiff over NumPy/CuPy, and models on top.

The core needs only NumPy; Numba, CuPy, matplotlib and PyTorch are optional and never imported here. Importing
tinygen changes nothing process-wide: ``tinygen.keep_freed_memory()`` (glibc's allocator) is a call a program makes.
"""
from . import allocator, config
from .allocator import keep_freed_memory
from .dtypes import float16, float32, float64, int32, int64, uint8, bool_
from .dtypes import bool_ as bool  # noqa: A001 - tinygen.bool, as torch.bool
from .tensor import (Tensor, tensor, as_tensor, from_numpy, zeros, ones, empty, full, zeros_like, ones_like,
                     full_like, arange, linspace, eye, set_default_dtype, get_default_dtype)
from . import autograd
from .autograd import (no_grad, enable_grad, set_grad_enabled, is_grad_enabled, grad, gradcheck, gradgradcheck,
                       detect_anomaly)
from . import ops
from .ops import (add, sub, mul, div, pow, neg, lt, le, gt, ge, eq, ne, logical_and, logical_or, logical_not,
                  exp, log, sqrt, abs, sin, cos, tanh, sigmoid, relu, leaky_relu, elu, softplus, clamp, clip,
                  maximum, minimum, where, clone, sum, mean, var, std, max, min, amax, amin, argmax, argmin,
                  logsumexp, softmax, log_softmax, reshape, view, flatten, permute, transpose, expand, squeeze,
                  unsqueeze, cat, concatenate, stack, split, chunk, matmul)
from .ops import (square, rsqrt, reciprocal, log1p, expm1, log2, exp2, erf, sign, sinh, cosh, atan, atan2, hypot,
                  logaddexp, xlogy, clamp_min, clamp_max, rsub, selu, celu)
from .random import manual_seed, randn, rand, randint, randperm, randn_like, rand_like, normal, bernoulli
from .backend import is_available, synchronize
from .kernels.threads import set_num_threads, get_num_threads
from . import viz
from .serialization import save, load
from . import nn, optim, data  # noqa: E402 - they build on everything above
from .compile import compile, CompileError  # noqa: E402, A001 - tinygen.compile, as torch.compile

__version__ = "0.1.0"
from .ops import (flip, roll, tril, triu, tile, unbind, narrow, movedim, moveaxis, swapaxes, swapdims, t,  # noqa: E402
                  broadcast_to, cumsum, prod, norm, std_mean, nansum, masked_fill, index_select, gather,
                  take_along_dim, mm, bmm, mv, dot, outer, einsum)
