"""The one place that picks the array module (``xp``) for a device.

Every op gets its array functions from ``array_module(device)``: NumPy for ``"cpu"``, CuPy for ``"cuda"``
(as Chainer's ``get_array_module`` does). CuPy is optional and imported only when a CUDA tensor is first made.

Because CI has no GPU, ``"cuda"`` can be served by a CPU stand-in for CuPy (``TINYGEN_CUDA_STANDIN=1`` or the
``cuda_standin()`` context manager). It keeps data in NumPy arrays hidden inside a wrapper that, like a CuPy
array, refuses implicit conversion to NumPy and refuses to mix with host ``numpy.ndarray`` operands — so a stray
``numpy.*`` call on device data fails in the test suite instead of on a user's GPU.
"""
import contextlib
import re

import numpy as np

from . import config
from ._extras import missing

DEVICES = ("cpu", "cuda")
_modules = {"cpu": np}


def normalize_device(device):
    """Accept "cpu", "cuda", "cuda:0" (only one GPU is addressed) and return "cpu" or "cuda"."""
    if device is None:
        return "cpu"
    name = str(device)
    if name == "cpu":
        return "cpu"  # the literal constants, so devices can be compared with `is`
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return "cuda"
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


def _load_cuda():
    if config.get("TINYGEN_CUDA_STANDIN"):
        return standin
    try:
        import cupy
    except ImportError:
        raise RuntimeError(missing("device='cuda'", "CuPy", "cuda")) from None
    try:
        ok = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception as e:  # no driver, no device
        raise RuntimeError(f"device='cuda' needs an NVIDIA GPU, but CuPy found none: {e}") from None
    if not ok:
        raise RuntimeError("device='cuda' needs an NVIDIA GPU, but CuPy found none")
    return cupy


def array_module(device):
    """The array module (numpy or cupy) that holds a device's data."""
    xp = _modules.get(device)
    if xp is None:
        xp = _modules[normalize_device(device)] = _load_cuda()
    return xp


def is_available(device="cuda"):
    """True when tensors can be made on ``device``."""
    try:
        array_module(normalize_device(device))
        return True
    except RuntimeError:
        return False


def synchronize(device="cuda"):
    """Wait until the work queued on ``device`` has finished (as ``torch.cuda.synchronize``): CuPy's kernels run
    asynchronously, so a timer stopped without this measures only the launches. Nothing to wait for on the CPU,
    on the stand-in, or before a CUDA tensor has been made."""
    xp = _modules.get(normalize_device(device))
    if xp is not None and xp is not np and xp is not standin:
        xp.cuda.Device().synchronize()


def device_of(array):
    """Which device an array lives on."""
    return "cpu" if isinstance(array, (np.ndarray, np.generic)) else "cuda"


def array_module_of(*arrays):
    """numpy, cupy or the stand-in, from the first array argument (None and Python numbers are skipped)."""
    for a in arrays:
        if a is None or isinstance(a, (int, float)):
            continue
        if isinstance(a, (np.ndarray, np.generic)):
            return np
        if isinstance(a, StandinArray):
            return standin
        import cupy
        return cupy.get_array_module(a)
    raise TypeError("array_module_of: expected at least one array argument")


def is_cupy_array(array):
    """True for a real CuPy array (not the stand-in), without importing CuPy."""
    return type(array).__module__.startswith("cupy")


def is_device_array(array):
    """True for an array held on the GPU: a CuPy array or the stand-in's."""
    return isinstance(array, StandinArray) or is_cupy_array(array)


def to_device(array, device):
    """Copy an array to ``device`` (returns it unchanged if it is already there)."""
    if device_of(array) == device:
        return array
    if device == "cpu":
        return array.get()
    return array_module(device).asarray(array)


class _GraphCapture:
    """A CUDA graph capture in progress (``tinygen.compile`` on CuPy, compile/cuda_graph.py), as the code below compile
    sees it: products record through cuBLAS directly (kernels/gemm_capture.py, into ``workspace``), and value checks
    that would read the GPU's memory from the host, which a capture cannot, are read after each launch."""
    workspace = None  # a CuPy array while a capture is in progress, else None
    checks = None  # [(flag, fail)] of the capture in progress


GRAPH_CAPTURE = _GraphCapture()


def check_flag(flag, fail):
    """Call ``fail()`` (which raises) when the 0-d boolean array ``flag`` is true. During a CUDA graph capture the
    flag is one of the graph's outputs, read after each launch of the graph."""
    if GRAPH_CAPTURE.checks is not None:
        GRAPH_CAPTURE.checks.append((flag, fail))
    elif bool(flag):
        fail()


def scatter_add(xp, target, index, values):
    """target[index] += values, with repeated indices adding up (np.add.at / cupyx.scatter_add)."""
    at = getattr(xp.add, "at", None)
    if at is not None:  # NumPy, and CuPy >= 13 (whose cupyx.scatter_add is deprecated)
        at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)


@contextlib.contextmanager
def cuda_standin():
    """Serve device="cuda" from the CPU stand-in for CuPy inside this block (for tests)."""
    old = _modules.get("cuda")
    _modules["cuda"] = standin
    try:
        yield standin
    finally:
        if old is None:
            _modules.pop("cuda", None)
        else:
            _modules["cuda"] = old


# ---------------------------------------------------------------------------------------------------------------------
# The CPU stand-in for CuPy.

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
             "explicitly.")


def _unwrap(x, strict=True):
    if isinstance(x, StandinArray):
        return x._a
    if strict and isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)} (a host numpy.ndarray mixed with device arrays)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, strict) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, strict) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return StandinArray(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_)):
        return StandinArray(np.asarray(x))  # CuPy reductions return 0-d device arrays, never host scalars
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list) and x and isinstance(x[0], np.ndarray):
        return [_wrap(v) for v in x]
    if isinstance(x, (np.ufunc, np.random.Generator)):
        return _Proxy(x)
    return x


def _rewrap(result, args):
    """A call's result as a device array: where NumPy gave back an argument's own array (``asarray`` of a device
    array, ``astype`` to its dtype without a copy), that argument itself, as CuPy returns it, so that identity
    tells a shared array (autograd/engine.py's ``_unshared``) as on a GPU; else a new wrapper."""
    for a in args:
        if isinstance(a, StandinArray) and result is a._a:
            return a
    return _wrap(result)


class _Proxy:
    """Wraps a NumPy namespace object (module, ufunc, generator) so that calls take and return device arrays."""

    def __init__(self, obj, lenient=()):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_lenient", lenient)

    def __getattr__(self, name):
        if name == "__name__":
            return "standin"
        attr = getattr(self._obj, name)
        if isinstance(attr, np.ufunc):
            return _Proxy(attr)  # keeps ufunc methods such as xp.add.at (scatter_add) reachable
        if isinstance(attr, type) or not callable(attr):
            if type(attr).__name__ == "module":
                return _Proxy(attr)
            return attr
        strict = name not in self._lenient

        def call(*args, **kwargs):
            return _rewrap(attr(*_unwrap(args, strict), **_unwrap(kwargs, strict)), args)
        call.__name__ = name
        return call

    def __call__(self, *args, **kwargs):
        return _wrap(self._obj(*_unwrap(args), **_unwrap(kwargs)))

    def __repr__(self):
        return f"<stand-in for cupy: {self._obj!r}>"


def _binop(name):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_unwrap(other)))
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        getattr(self._a, name)(_unwrap(other))
        return self
    op.__name__ = name
    return op


class StandinArray:
    """A device array of the stand-in: a NumPy array that cannot silently become a host array."""
    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, a):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # A NumPy scalar on the left of an operator (np.float32(1) - x) lands here; CuPy accepts it, and so do we.
        if method == "__call__" and not kwargs and any(isinstance(i, np.generic) for i in inputs) and \
                all(isinstance(i, (StandinArray, np.generic)) for i in inputs):
            return _wrap(ufunc(*_unwrap(inputs)))
        raise TypeError("numpy ufunc called on a device array: use the tensor's array module (xp), not numpy")

    def __array_function__(self, *args, **kwargs):
        raise TypeError("numpy function called on a device array: use the tensor's array module (xp), not numpy")

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    # the NumPy array underneath, not a copy: for the host BLAS that runs the CPU's product (kernels/blas.py),
    # so the stand-in's bits stay the CPU's
    host_array = property(lambda self: self._a)
    base = property(lambda self: None if self._a.base is None else StandinArray(self._a.base))
    T = property(lambda self: StandinArray(self._a.T))

    def get(self):
        return self._a.copy()

    def __getattr__(self, name):  # methods: .sum(), .reshape(), .astype(), ...
        if name.startswith("__"):  # never forward __array_interface__ & co: NumPy would read the data through them
            raise AttributeError(f"'StandinArray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return _rewrap(attr(*_unwrap(args), **_unwrap(kwargs)), (self,))
        return call

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, strict=False)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, strict=False)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (StandinArray(np.asarray(v)) for v in self._a)

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __neg__(self):  # (_wrap: NumPy gives a scalar for a 0-d array, CuPy a 0-d array)
        return _wrap(-self._a)

    def __abs__(self):
        return _wrap(abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)

    def __repr__(self):
        return f"standin_array({self._a!r})"

    __hash__ = None


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lt", "le", "gt", "ge", "eq", "ne"):
    for _dunder in (f"__{_name}__", f"__r{_name}__"):
        if hasattr(np.ndarray, _dunder):
            setattr(StandinArray, _dunder, _binop(_dunder))
    if hasattr(np.ndarray, f"__i{_name}__"):
        setattr(StandinArray, f"__i{_name}__", _inplace(f"__i{_name}__"))


class StandinElementwiseKernel:
    """``cupy.ElementwiseKernel`` for the stand-in, for the C that tinygen generates (``tinygen.compile``'s fusion):
    statements ``T name = expr;`` and ``output = expr;`` over the parameters (all of type ``T``), whose
    expressions use + - * /, unary minus, parentheses and the functions of ``FUNCTIONS``. Each statement is
    evaluated with NumPy over whole arrays, in order: per element the same operations, each rounded once in the
    arrays' dtype, as the C does without contraction (``--fmad=false``). Anything else is refused."""
    FUNCTIONS = {"fabs": np.absolute, "sqrt": np.sqrt, "exp": np.exp, "log": np.log, "tanh": np.tanh,
                 "sin": np.sin, "cos": np.cos}
    _STATEMENT = re.compile(r"(T\s+)?([A-Za-z_]\w*)\s*=\s*([\w\s+\-*/().]+)")

    def __init__(self, in_params, out_params, operation, name="kernel", options=()):
        self.name, self.options = name, tuple(options)
        self.ins, self.outs = self._names(in_params), self._names(out_params)
        known, self.statements = set(self.ins), []
        for text in filter(None, (part.strip() for part in operation.split(";"))):
            m = self._STATEMENT.fullmatch(text)
            if m is None:
                raise ValueError(f"stand-in ElementwiseKernel {name}: cannot run the statement {text!r}")
            declared, target, expr = m.groups()
            if not declared and target not in self.outs:
                raise ValueError(f"stand-in ElementwiseKernel {name}: {target!r} is neither declared nor an output")
            if re.search(r"\*\*|//|(?<!\w)[\d.]", expr):  # no literals (C's are double), no Python-only operators
                raise ValueError(f"stand-in ElementwiseKernel {name}: cannot run the statement {text!r}")
            for word in re.findall(r"[A-Za-z_]\w*", expr):
                if word not in known and word not in self.FUNCTIONS:
                    raise ValueError(f"stand-in ElementwiseKernel {name}: unknown name {word!r} in {text!r}")
            known.add(target)
            self.statements.append((target, compile(expr, name, "eval"), bool(declared)))

    @staticmethod
    def _names(params):
        names = []
        for param in filter(None, (p.strip() for p in params.split(","))):
            typ, _, pname = param.rpartition(" ")
            if typ.strip() != "T":
                raise ValueError(f"stand-in ElementwiseKernel: only parameters of type T, got {param!r}")
            names.append(pname)
        return names

    def __call__(self, *args):
        if len(args) != len(self.ins) + len(self.outs):
            raise TypeError(f"stand-in ElementwiseKernel {self.name}: {len(self.ins)} inputs and {len(self.outs)} "
                            f"outputs expected (the outputs are given), got {len(args)} arguments")
        arrays = [_unwrap(a, strict=False) for a in args]
        dtype = arrays[-1].dtype
        if any(a.dtype != dtype for a in arrays):
            raise TypeError(f"stand-in ElementwiseKernel {self.name}: type T differs between the arguments")
        env = dict(zip(self.ins, arrays[:len(self.ins)]))
        outs = dict(zip(self.outs, arrays[len(self.ins):]))
        for target, code, declared in self.statements:
            value = np.asarray(eval(code, {"__builtins__": {}, **self.FUNCTIONS}, env))  # noqa: S307 - our own C
            if value.dtype != dtype:
                raise TypeError(f"stand-in ElementwiseKernel {self.name}: {target} came out {value.dtype}, "
                                f"not {dtype}")
            if declared:
                env[target] = value
            else:
                outs[target][...] = value
                env[target] = outs[target]
        return args[len(self.ins):] if len(self.outs) > 1 else args[-1]


class StandinReductionKernel:
    """``cupy.ReductionKernel`` for the stand-in, for the sums tinygen generates (a fused run that ends in a sum):
    ``map_expr`` calls, with the input parameters in order, the one function of ``preamble``, ``template <typename
    T> __device__ T name(T a, ...) { statements; return v; }``, whose statements run as
    ``StandinElementwiseKernel``'s; ``reduce_expr`` ``a + b`` from ``identity`` 0, ``post_map_expr`` ``y = a`` into
    the one output, over every axis: NumPy's sum of the values (a GPU adds them in another order). Anything else
    is refused."""
    _FUNCTION = re.compile(r"\s*template\s*<\s*typename\s+T\s*>\s*__device__\s+T\s+(\w+)\s*\(([^)]*)\)\s*\{(.*)"
                           r"\breturn\s+(\w+)\s*;\s*\}\s*", re.S)

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name="reduce_kernel",
                 reduce_type=None, reduce_dims=True, preamble="", options=()):
        self.name, self.options = name, tuple(options)
        self.ins = StandinElementwiseKernel._names(in_params)
        outs = StandinElementwiseKernel._names(out_params)
        m = self._FUNCTION.fullmatch(preamble)
        if m is None or len(outs) != 1 or reduce_type not in (None, "T"):
            raise ValueError(f"stand-in ReductionKernel {name}: only one output and a preamble of one template "
                             f"function of T are supported")
        fname, fparams, body, returned = m.groups()
        if (map_expr.replace(" ", ""), reduce_expr.replace(" ", ""), post_map_expr.replace(" ", ""),
                str(identity).strip()) != (f"{fname}({','.join(self.ins)})", "a+b", f"{outs[0]}=a", "0"):
            raise ValueError(f"stand-in ReductionKernel {name}: only a sum of {fname}(<the inputs>) is supported, got "
                             f"map {map_expr!r}, reduce {reduce_expr!r}, post-map {post_map_expr!r}, identity "
                             f"{identity!r}")
        self.map = StandinElementwiseKernel(fparams, "T _value", f"{body} _value = {returned};", name)

    def __call__(self, *args, axis=None, keepdims=False):
        if len(args) != len(self.ins) or axis is not None:
            raise TypeError(f"stand-in ReductionKernel {self.name}: {len(self.ins)} inputs and a sum over every "
                            f"axis expected, got {len(args)} arguments and axis={axis!r}")
        arrays = [_unwrap(a, strict=False) for a in args]
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        value = np.empty(shape, np.result_type(*arrays))
        self.map(*arrays, value)
        return StandinArray(np.asarray(value.sum(keepdims=keepdims)))


class _StandinModule(_Proxy):
    ElementwiseKernel = StandinElementwiseKernel
    ReductionKernel = StandinReductionKernel

    def asnumpy(self, a):
        return a.get() if isinstance(a, StandinArray) else np.asarray(a)

    def get_array_module(self, *args):
        return self


standin = _StandinModule(np, lenient=("array", "asarray", "asanyarray"))
