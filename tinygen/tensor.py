"""The Tensor: an array (NumPy or CuPy), its device, and its place in the autograd graph.

A tensor made by an op keeps a reference to the op's node (``grad_fn``); the node keeps edges to the nodes of
its inputs. Nothing else: all ops are attached as methods by ``tinygen.ops`` (see ``register``).
"""
import functools

import numpy as np

from . import backend, dtypes
from .capture import (CAPTURE, note_alias, note_grad_read, note_grad_set, note_host_mask, note_requires_grad,
                      refuse_host_read, replayed)
from ._checks import check_dim, check_int, check_sizes

_default_float = dtypes.float32


def set_default_dtype(dtype):
    """The dtype of floating tensors made from Python numbers (float32 unless changed)."""
    global _default_float
    dt = dtypes.as_dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"default dtype must be a floating dtype, got {dt.name}")
    _default_float = dt


def get_default_dtype():
    return _default_float


class Tensor:
    __slots__ = ("data", "_device", "_requires_grad", "_grad", "grad_fn", "_out_idx", "_hooks", "_grad_hooks",
                 "__weakref__")
    __array_ufunc__ = None  # numpy_array + tensor calls Tensor.__radd__ instead of building an object array

    def __init__(self, data, dtype=None, device="cpu", requires_grad=False):
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        self.data, self._device, self._requires_grad = t.data, t._device, t._requires_grad
        self._grad = self.grad_fn = None
        self._out_idx = 0

    # ---- metadata ------------------------------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return self._device

    @property
    def xp(self):
        """The array module holding this tensor's data (numpy or cupy)."""
        return backend.array_module(self._device)

    @property
    def is_leaf(self):
        return self.grad_fn is None

    @property
    def grad(self):
        """The gradient a backward accumulated into this leaf (None until one did)."""
        g = self._grad
        if g is not None and CAPTURE.recorder is not None:  # inside a compiled step's recording
            note_grad_read(self, g)
        return g

    @grad.setter
    def grad(self, value):
        note_grad_set(self, value)  # ``p.grad = None`` inside a compiled step: a replay does it at the same point
        self._grad = value

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        flag = bool(flag)
        if flag and self.data.dtype.kind != "f":
            raise RuntimeError(f"only floating point tensors can require gradients, got dtype {self.data.dtype}")
        if not flag and self.grad_fn is not None:
            raise RuntimeError("requires_grad can only be changed on leaf tensors; use .detach() for a non-leaf")
        note_requires_grad(self, flag)
        self._requires_grad = flag

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    def size(self, dim=None):
        if dim is None:
            return self.data.shape
        if self.data.ndim == 0:
            raise IndexError(f"size: Dimension specified as {dim} but tensor has no dimensions")
        return self.data.shape[check_dim(dim, self.data.ndim, "size")]

    def dim(self):
        return self.data.ndim

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    __hash__ = object.__hash__  # == is elementwise, so hash by identity (as PyTorch does)

    # ---- conversion ----------------------------------------------------------------------------------------------
    def numpy(self):
        """The data as a NumPy array (shares memory for CPU tensors). Needs .detach() if the tensor requires grad."""
        refuse_host_read(self, ".numpy()")
        if self._requires_grad:
            raise RuntimeError("can't call numpy() on a tensor that requires grad; use tensor.detach().numpy()")
        if self._device != "cpu":
            raise TypeError(f"can't convert a {self._device} tensor to numpy; use tensor.cpu() first")
        return self.data

    def item(self):
        refuse_host_read(self, ".item()")
        if self.data.size != 1:
            raise ValueError(f"only one-element tensors can be converted to Python scalars, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        refuse_host_read(self, ".tolist()")
        return backend.to_device(self.data, "cpu").tolist()

    def __bool__(self):
        refuse_host_read(self, "bool(tensor) (Python branching on a value)")
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        refuse_host_read(self, "use as a Python index")
        if self.data.dtype.kind not in "iub" or self.data.size != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.data.item())

    def detach(self):
        """The same data, cut from the graph (shares memory)."""
        out = _make(self.data, self._device)
        note_alias(self, out)
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtypes.float32)

    def double(self):
        return self.to(dtypes.float64)

    def long(self):
        return self.to(dtypes.int64)

    def bool(self):
        return self.to(dtypes.bool_)

    # Tensor.backward is attached by tinygen.autograd.engine (which imports this module, not the other way).

    def __setstate__(self, state):
        # unpickling: restore the slots with the canonical device string (the engine compares devices with `is`)
        attrs, slots = state if isinstance(state, tuple) else (state, None)
        if attrs:  # a subclass with a __dict__
            self.__dict__.update(attrs)
        for name, value in (slots or {}).items():
            object.__setattr__(self, name, value)
        self._device = backend.normalize_device(self._device)

    def __repr__(self):
        host = backend.to_device(self.data, "cpu")
        body = np.array2string(np.asarray(host), separator=", ", prefix="tensor(", threshold=200, edgeitems=3)
        extra = [f"shape={tuple(host.shape)}", f"dtype={host.dtype.name}"]
        if self._device != "cpu":
            extra.append(f"device='{self._device}'")
        if self.grad_fn is not None:
            extra.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self._requires_grad:
            extra.append("requires_grad=True")
        return f"tensor({body}, {', '.join(extra)})"


_new = object.__new__


def _make(data, device, requires_grad=False, grad_fn=None, out_idx=0):
    """Wrap an array without copying or checking (the engine's fast path)."""
    t = _new(Tensor)
    t.data = data
    t._device = device
    t._requires_grad = requires_grad
    t._grad = None
    t.grad_fn = grad_fn
    t._out_idx = out_idx
    return t


def _array_identity(value):
    """A tensor by its array's identity, anything else as it is: what a graph key (``capture.replayed``) holds of a
    value, since a captured kernel reads the tensor's array, whatever it holds by then."""
    return id(value.data) if isinstance(value, Tensor) else value


def register(*names, number_first=False):
    """Attach a function as Tensor method(s): ``@register("exp")`` makes ``x.exp()`` call ``exp(x)``.

    The method is the function itself; the module-level function (``tinygen.exp``) also checks that its first
    argument is a tensor, so ``tinygen.exp(2.0)`` gets tinygen's TypeError instead of an AttributeError. With
    ``number_first=True`` a number may come first when the second argument is a tensor (``tinygen.xlogy(2.0, t)``)."""
    def deco(fn):
        for name in names or (fn.__name__,):
            setattr(Tensor, name, fn)
        label = (names or (fn.__name__,))[0]

        @functools.wraps(fn)
        def checked(x, *args, **kwargs):
            if not isinstance(x, Tensor) and not (number_first and args and isinstance(args[0], Tensor)):
                raise TypeError(f"{label}(): argument 'input' must be Tensor, not {type(x).__name__}")
            return fn(x, *args, **kwargs)
        return checked
    return deco


# ---- creation --------------------------------------------------------------------------------------------------------
def require_tensor(value, fn, arg="input"):
    """TypeError naming ``fn`` and ``arg`` unless ``value`` is a Tensor (instead of an AttributeError later)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}(): argument '{arg}' must be Tensor, not {type(value).__name__}")
    return value


def _ragged_where(data, depth=0):
    """For nested lists of unequal lengths: PyTorch's "expected sequence of length L at dim D (got M)"."""
    if not isinstance(data, (list, tuple)) or not data:
        return None
    lengths = [len(d) if isinstance(d, (list, tuple)) else None for d in data]
    first = lengths[0]
    for length in lengths[1:]:
        if length != first:
            return (f"expected sequence of length {first} at dim {depth + 1} (got {length})" if
                    None not in (first, length) else f"mixes sequences and numbers at dim {depth + 1}")
    for d in data:
        found = _ragged_where(d, depth + 1)
        if found:
            return found
    return None


def _fits(arr, dt):
    """Whether every value of numeric array ``arr`` can be represented in dtype ``dt`` without overflow."""
    if arr.size == 0 or dt.kind == "b" or arr.dtype.kind == "b":
        return True
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return False
        return bool(arr.min() >= info.min and arr.max() <= info.max)
    if dt == dtypes.float16 and arr.dtype.kind in "iu":
        return bool(np.abs(arr.astype(np.float64)).max() <= np.finfo(np.float16).max)
    return True


def _host_array(data, dtype, fn="tensor"):
    if isinstance(data, Tensor):
        data = backend.to_device(data.data, "cpu")
    elif backend.is_device_array(data):
        data = data.get()  # a device array (CuPy or the stand-in)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        where = _ragged_where(data)
        raise (ValueError(f"{fn}(): data {where}") if where else
               TypeError(f"{fn}(): can't make a tensor from {type(data).__name__} ({e})")) from None
    kind = arr.dtype.kind
    if kind not in "biuf":
        what = ("str" if kind in "US" else type(data).__name__ if kind != "O" else
                "objects that are not numbers, or integers too large for int64")
        raise TypeError(f"{fn}(): can't make a tensor from data of dtype {arr.dtype} ({what}); tinygen supports "
                        f"{', '.join(d.name for d in dtypes.SUPPORTED)}")
    if kind == "u" and arr.dtype.itemsize == 8 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise OverflowError(f"{fn}(): value {arr.max()} cannot be converted to type int64 without overflow")
    if dtype is not None:
        dt = dtypes.as_dtype(dtype)
        if arr.dtype != dt and not _fits(arr, dt):
            raise RuntimeError(f"{fn}(): value cannot be converted to type {dt.name} without overflow (data "
                               f"ranges over [{arr.min()}, {arr.max()}])")
        return arr.astype(dt, copy=False)
    if kind == "f":
        if isinstance(data, (np.ndarray, np.generic)):
            return arr if arr.dtype in dtypes.SUPPORTED else arr.astype(dtypes.float64)
        return arr.astype(_default_float, copy=False)
    if kind in "iu":
        return arr if arr.dtype in dtypes.SUPPORTED else arr.astype(dtypes.int64)
    return arr


def tensor(data, dtype=None, device="cpu", requires_grad=False):
    """A new tensor holding a copy of ``data`` (nested lists, numbers, NumPy arrays or tensors).

    Python floats become ``float32`` (the default dtype), ints ``int64``, bools ``bool``; NumPy arrays keep their dtype.
    """
    return _host_tensor(data, dtype, device, requires_grad, True)


def as_tensor(data, dtype=None, device="cpu"):
    """Like ``tensor`` but shares memory with a NumPy array of the right dtype and device when it can."""
    if isinstance(data, Tensor) and dtype is None and backend.normalize_device(device) == data._device:
        return data
    return _host_tensor(data, dtype, device, False, False)


def _host_tensor(data, dtype, device, requires_grad, copy):
    """``_from_host``, as a recorded call for host data a caller may refill in place between two calls of a
    compiled step (an array or a list); a boolean mask is noted too (where it decides a shape, its values are a
    guard of the program)."""
    if not isinstance(data, (list, tuple, np.ndarray)):
        return _from_host.__wrapped__(data, dtype, device, requires_grad, copy)
    out = _from_host(data, dtype, device, requires_grad, copy)
    if out.data.dtype.kind == "b":
        note_host_mask(out, data)
    return out


# inside a compiled step, a tensor made from a host array or list is made again on every replay, from what the
# array holds then (a buffer the caller refills in place); a copy made once would replay the first call's values
@replayed(grads=lambda *args: ("reads", ()), writes=lambda *args: ())
def _from_host(data, dtype, device, requires_grad, copy):
    device = backend.normalize_device(device)
    arr = _host_array(data, dtype, "tensor" if copy else "as_tensor")
    if copy:
        arr = np.array(arr, copy=True)
    out = _make(backend.to_device(arr, device) if device != "cpu" else arr, device)
    if requires_grad:
        out.requires_grad = True
    return out


def from_numpy(array):
    """A CPU tensor sharing memory with a NumPy array."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(array).__name__}")
    return _make(_host_array(array, None, "from_numpy"), "cpu")


def _size(size, fn="tensor"):
    return check_sizes(size, fn)


def _filled(size, fill, dtype, device, requires_grad, fn):
    shape = _size(size, fn)
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else _default_float
    if isinstance(fill, Tensor):
        fill = fill.item()
    if not isinstance(fill, (int, float, np.integer, np.floating, np.bool_)):
        raise TypeError(f"{fn}(): argument 'fill_value' must be a number, not {type(fill).__name__}")
    if not (type(fill) in (int, float, bool) and 0 <= fill <= 1):  # 0 and 1 fit every dtype
        if not _fits(np.asarray(fill), dt):
            raise RuntimeError(f"{fn}(): value {fill} cannot be converted to type {dt.name} without overflow")
    xp = backend.array_module(device)
    out = _make(xp.full(shape, fill, dtype=dt), device)
    if requires_grad:
        out.requires_grad = True
    return out


def zeros(*size, dtype=None, device="cpu", requires_grad=False):
    return _filled(size, 0, dtype, device, requires_grad, "zeros")


def ones(*size, dtype=None, device="cpu", requires_grad=False):
    return _filled(size, 1, dtype, device, requires_grad, "ones")


def empty(*size, dtype=None, device="cpu", requires_grad=False):
    return _filled(size, 0, dtype, device, requires_grad, "empty")


def full(size, fill_value, dtype=None, device="cpu", requires_grad=False):
    if dtype is None and isinstance(fill_value, bool):
        dtype = dtypes.bool_
    elif dtype is None and isinstance(fill_value, (int, np.integer)):
        dtype = dtypes.int64
    return _filled(tuple(size) if isinstance(size, (tuple, list)) else (size,), fill_value, dtype, device,
                   requires_grad, "full")


def _like(t, dtype, device, fn):
    require_tensor(t, fn)
    return (t.dtype if dtype is None else dtype), (t.device if device is None else device)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    dt, dev = _like(t, dtype, device, "zeros_like")
    return _filled(t.shape, 0, dt, dev, requires_grad, "zeros_like")


def ones_like(t, dtype=None, device=None, requires_grad=False):
    dt, dev = _like(t, dtype, device, "ones_like")
    return _filled(t.shape, 1, dt, dev, requires_grad, "ones_like")


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    dt, dev = _like(t, dtype, device, "full_like")
    return _filled(t.shape, fill_value, dt, dev, requires_grad, "full_like")


def _check_number(value, fn, arg):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}(): argument '{arg}' must be a number, not {type(value).__name__}")
    if not np.isfinite(value):
        raise ValueError(f"{fn}: unsupported range: {arg} is {value}")


def _check_range(start, end, step):
    """arange's checks, as PyTorch: finite bounds, a non-zero step whose sign leads from start to end."""
    for name, v in (("start", start), ("end", end), ("step", step)):
        _check_number(v, "arange", name)
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"arange: upper bound and larger bound inconsistent with step sign (start={start}, "
                         f"end={end}, step={step})")


def arange(start, end=None, step=1, dtype=None, device="cpu", requires_grad=False):
    if end is None:
        start, end = 0, start
    _check_range(start, end, step)
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = dtypes.int64 if ints else _default_float
    device = backend.normalize_device(device)
    out = _make(backend.array_module(device).arange(start, end, step, dtype=dtypes.as_dtype(dtype)), device)
    if requires_grad:
        out.requires_grad = True
    return out


def linspace(start, end, steps, dtype=None, device="cpu", requires_grad=False):
    for name, v in (("start", start), ("end", end)):
        _check_number(v, "linspace", name)
    check_int(steps, "linspace", "steps", low=0)
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else _default_float
    out = _make(backend.array_module(device).linspace(start, end, steps, dtype=dt), device)
    if requires_grad:
        out.requires_grad = True
    return out


def eye(n, m=None, dtype=None, device="cpu", requires_grad=False):
    check_int(n, "eye", "n", low=0)
    if m is not None:
        check_int(m, "eye", "m", low=0)
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else _default_float
    out = _make(backend.array_module(device).eye(n, m, dtype=dt), device)
    if requires_grad:
        out.requires_grad = True
    return out
