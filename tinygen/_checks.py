"""Argument checks shared by the public functions, with PyTorch's wording, so every function reports a bad dim,
size, count or probability the same way. Imports nothing from tinygen (every layer may use it)."""
import math
import numbers

import numpy as np


def _type_name(value):
    return type(value).__name__


def is_int(value):
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value, fn, arg, low=None):
    """``value`` as an int; TypeError unless it is one, ValueError when below ``low``."""
    if not is_int(value):
        raise TypeError(f"{fn}(): argument '{arg}' must be int, not {_type_name(value)}")
    if low is not None and value < low:
        raise ValueError(f"{fn}: {arg} must be >= {low}, got {value}")
    return int(value)


def check_real(value, fn, arg, low=None, high=None, finite=True):
    """``value`` as a float; TypeError unless it is a real number, ValueError outside [low, high] or not finite
    (NaN fails every bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}(): argument '{arg}' must be a real number, not {_type_name(value)}")
    v = float(value)
    if finite and not math.isfinite(v):
        raise ValueError(f"{fn}: {arg} must be finite, got {value}")
    if (low is not None and not v >= low) or (high is not None and not v <= high):
        bound = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ValueError(f"{fn}: {arg} must be {bound}, got {value}")
    return v


def check_probability(p, fn, arg="p"):
    """``p`` as a float in [0, 1] (as PyTorch's dropout: "probability has to be between 0 and 1")."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{fn}(): argument '{arg}' must be a real number, not {_type_name(p)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{fn}: {arg} must be in [0, 1]: a probability has to be between 0 and 1, but got {p}")
    return float(p)


def check_dim(dim, ndim, fn, arg="dim"):
    """``dim`` as an axis in [0, ndim) (a 0-d tensor accepts 0 and -1, giving 0), or PyTorch's IndexError."""
    if type(dim) is int and -ndim <= dim < ndim:  # the common case, kept cheap: ops call this on every use
        return dim % ndim
    if not is_int(dim):
        raise TypeError(f"{fn}(): argument '{arg}' must be int, not {_type_name(dim)}")
    n = ndim if ndim > 0 else 1
    if not -n <= dim < n:
        raise IndexError(f"{fn}: Dimension out of range (expected to be in range of [{-n}, {n - 1}], "
                         f"but got {dim})")
    return int(dim) % n


def check_sizes(size, fn, arg="size", low=0):
    """A shape given as ints or one tuple/list of ints, as a tuple of ints >= ``low`` (-1 for reshape's
    inferred dimension, checked by the caller)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for s in size:  # the common case first, kept cheap
        if type(s) is not int or s < low:
            break
    else:
        return tuple(size)
    for i, s in enumerate(size):
        if not is_int(s):
            raise TypeError(f"{fn}(): argument '{arg}' must be tuple of ints, but found element of type "
                            f"{_type_name(s)} at pos {i}")
    bad = next((s for s in size if s < low), None)
    if bad is not None:
        if low < 0:
            raise ValueError(f"{fn}: invalid shape dimension {bad} in {tuple(size)}")
        raise ValueError(f"{fn}: Trying to create tensor with negative dimension {bad}: {list(size)} "
                         f"(sizes must be non-negative integers)")
    return tuple(int(s) for s in size)
