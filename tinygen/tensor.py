"""The Tensor: an array (NumPy or CuPy), its device, and its place in the autograd graph.

A tensor made by an op keeps a reference to the op's node (``grad_fn``); the node keeps edges to the nodes of
its inputs. Nothing else: all ops are attached as methods by ``tinygen.ops`` (see ``register``).
"""
import numpy as np

from . import backend, dtypes

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
    __slots__ = ("data", "_device", "_requires_grad", "grad", "grad_fn", "_out_idx", "__weakref__")
    __array_ufunc__ = None  # numpy_array + tensor calls Tensor.__radd__ instead of building an object array

    def __init__(self, data, dtype=None, device="cpu", requires_grad=False):
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        self.data, self._device, self._requires_grad = t.data, t._device, t._requires_grad
        self.grad = self.grad_fn = None
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
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        flag = bool(flag)
        if flag and self.data.dtype.kind != "f":
            raise RuntimeError(f"only floating point tensors can require gradients, got dtype {self.data.dtype}")
        if not flag and self.grad_fn is not None:
            raise RuntimeError("requires_grad can only be changed on leaf tensors; use .detach() for a non-leaf")
        self._requires_grad = flag

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

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
        if self._requires_grad:
            raise RuntimeError("can't call numpy() on a tensor that requires grad; use tensor.detach().numpy()")
        if self._device != "cpu":
            raise TypeError(f"can't convert a {self._device} tensor to numpy; use tensor.cpu() first")
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"only one-element tensors can be converted to Python scalars, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return backend.to_device(self.data, "cpu").tolist()

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.data.dtype.kind not in "iub" or self.data.size != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.data.item())

    def detach(self):
        """The same data, cut from the graph (shares memory)."""
        return _make(self.data, self._device)

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

    # ---- autograd ------------------------------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (see ``tinygen.autograd.backward``)."""
        from .autograd.engine import backward
        backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs)

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
    t.grad = None
    t.grad_fn = grad_fn
    t._out_idx = out_idx
    return t


def register(*names):
    """Attach a function as Tensor method(s): ``@register("exp")`` makes ``x.exp()`` call ``exp(x)``."""
    def deco(fn):
        for name in names or (fn.__name__,):
            setattr(Tensor, name, fn)
        return fn
    return deco


# ---- creation --------------------------------------------------------------------------------------------------------
def _host_array(data, dtype):
    if isinstance(data, Tensor):
        data = backend.to_device(data.data, "cpu")
    elif backend.is_device_array(data):
        data = data.get()
    arr = np.asarray(data)
    if dtype is not None:
        return arr.astype(dtypes.as_dtype(dtype), copy=False)
    kind = arr.dtype.kind
    if kind == "f":
        if isinstance(data, (np.ndarray, np.generic)):
            return arr if arr.dtype in dtypes.SUPPORTED else arr.astype(dtypes.float64)
        return arr.astype(_default_float, copy=False)
    if kind in "iu":
        return arr if arr.dtype in dtypes.SUPPORTED else arr.astype(dtypes.int64)
    if kind == "b":
        return arr
    raise TypeError(f"can't make a tensor from data of dtype {arr.dtype} ({type(data).__name__}); "
                    f"tinygen supports {', '.join(d.name for d in dtypes.SUPPORTED)}")


def tensor(data, dtype=None, device="cpu", requires_grad=False):
    """A new tensor holding a copy of ``data`` (nested lists, numbers, NumPy arrays or tensors).

    Python floats become ``float32`` (the default dtype), ints ``int64``, bools ``bool``; NumPy arrays keep their dtype.
    """
    device = backend.normalize_device(device)
    arr = np.array(_host_array(data, dtype), copy=True)
    out = _make(backend.to_device(arr, device) if device != "cpu" else arr, device)
    if requires_grad:
        out.requires_grad = True
    return out


def as_tensor(data, dtype=None, device="cpu"):
    """Like ``tensor`` but shares memory with a NumPy array of the right dtype and device when it can."""
    if isinstance(data, Tensor) and dtype is None and backend.normalize_device(device) == data._device:
        return data
    device = backend.normalize_device(device)
    arr = _host_array(data, dtype)
    return _make(backend.to_device(arr, device) if device != "cpu" else arr, device)


def from_numpy(array):
    """A CPU tensor sharing memory with a NumPy array."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(array).__name__}")
    return _make(_host_array(array, None), "cpu")


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for s in size:
        if not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"sizes must be non-negative integers, got {size}")
    return tuple(int(s) for s in size)


def _filled(size, fill, dtype, device, requires_grad):
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else _default_float
    xp = backend.array_module(device)
    out = _make(xp.full(_size(size), fill, dtype=dt), device)
    if requires_grad:
        out.requires_grad = True
    return out


def zeros(*size, dtype=None, device="cpu", requires_grad=False):
    return _filled(size, 0, dtype, device, requires_grad)


def ones(*size, dtype=None, device="cpu", requires_grad=False):
    return _filled(size, 1, dtype, device, requires_grad)


def empty(*size, dtype=None, device="cpu", requires_grad=False):
    return _filled(size, 0, dtype, device, requires_grad)


def full(size, fill_value, dtype=None, device="cpu", requires_grad=False):
    if dtype is None and isinstance(fill_value, bool):
        dtype = dtypes.bool_
    elif dtype is None and isinstance(fill_value, (int, np.integer)):
        dtype = dtypes.int64
    return _filled(tuple(size) if isinstance(size, (tuple, list)) else (size,), fill_value, dtype, device,
                   requires_grad)


def _like(t, dtype, device):
    return (t.dtype if dtype is None else dtype), (t.device if device is None else device)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    dt, dev = _like(t, dtype, device)
    return _filled(t.shape, 0, dt, dev, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    dt, dev = _like(t, dtype, device)
    return _filled(t.shape, 1, dt, dev, requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    dt, dev = _like(t, dtype, device)
    return _filled(t.shape, fill_value, dt, dev, requires_grad)


def arange(start, end=None, step=1, dtype=None, device="cpu", requires_grad=False):
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = dtypes.int64 if ints else _default_float
    device = backend.normalize_device(device)
    out = _make(backend.array_module(device).arange(start, end, step, dtype=dtypes.as_dtype(dtype)), device)
    if requires_grad:
        out.requires_grad = True
    return out


def linspace(start, end, steps, dtype=None, device="cpu", requires_grad=False):
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else _default_float
    out = _make(backend.array_module(device).linspace(start, end, steps, dtype=dt), device)
    if requires_grad:
        out.requires_grad = True
    return out


def eye(n, m=None, dtype=None, device="cpu", requires_grad=False):
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else _default_float
    out = _make(backend.array_module(device).eye(n, m, dtype=dt), device)
    if requires_grad:
        out.requires_grad = True
    return out
