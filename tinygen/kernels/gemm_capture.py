"""The matrix product on CuPy arrays while a CUDA graph is being captured (``tinygen.compile`` on the GPU).

CuPy refuses every cuBLAS call while a stream is capturing (its ``setStream`` raises NotImplementedError),
although cuBLAS itself can be captured when it is given a workspace of its own: then it allocates nothing during
capture. So while ``backend.GRAPH_CAPTURE.workspace`` is set, gemm.mm comes here, and the product is one
``cublasSgemm``/``cublasDgemm`` called through ctypes, on CuPy's cuBLAS handle, with the capturing stream and that
workspace (the graph keeps it). The product is CuPy's ``a @ b`` (a C-ordered result); other dtypes or more than
two dimensions raise ``NotCapturable``, and the step runs without a graph.
"""
import ctypes

from ..backend import GRAPH_CAPTURE

_OP_N, _OP_T = 0, 1
WORKSPACE_BYTES = 32 << 20  # cuBLAS's own default on Hopper is 32 MiB
_lib = None


class NotCapturable(RuntimeError):
    """A product that this module cannot record into a CUDA graph."""


def _cublas():
    """libcublas, as loaded by CuPy (found in the process's mappings, so it is the very library CuPy uses)."""
    global _lib
    if _lib is None:
        import cupy
        cupy.cuda.device.get_cublas_handle()  # CuPy loads cuBLAS when it first makes a handle
        path = None
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(None, 1)[-1]
                if "/libcublas.so" in name:
                    path = name
                    break
        if path is None:
            raise NotCapturable("libcublas is not loaded in this process")
        lib = ctypes.CDLL(path)
        p, i = ctypes.c_void_p, ctypes.c_int
        for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
            getattr(lib, name).argtypes = [p, i, i, i, i, i, p, p, i, p, i, p, p, i]
        lib.cublasSetStream_v2.argtypes = [p, p]
        lib.cublasSetWorkspace_v2.argtypes = [p, p, ctypes.c_size_t]
        lib.cublasSetPointerMode_v2.argtypes = [p, i]
        _lib = lib
    return _lib


def _check(status, what):
    if status != 0:
        raise NotCapturable(f"{what} returned cuBLAS status {status}")


def _operand(x):
    """(array, transposed?, leading dimension) of a 2-D operand as cuBLAS reads it in column-major order."""
    if x.flags.c_contiguous:
        return x, False, max(x.shape[1], 1)
    if x.flags.f_contiguous:
        return x, True, max(x.shape[0], 1)
    import cupy
    return cupy.ascontiguousarray(x), False, max(x.shape[1], 1)


def mm(a, b):
    """``a @ b`` for 2-D float32/float64 CuPy arrays, recorded on the current (capturing) stream."""
    import cupy
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.char not in "fd":
        raise NotCapturable(f"a product of {a.dtype}{a.shape} and {b.dtype}{b.shape} (2-D float32/float64 only)")
    (m, k), n = a.shape, b.shape[1]
    if k == 0:
        return cupy.zeros((m, n), a.dtype)
    c = cupy.empty((m, n), a.dtype)
    if m == 0 or n == 0:
        return c
    lib = _cublas()
    handle = cupy.cuda.device.get_cublas_handle()
    _check(lib.cublasSetStream_v2(handle, cupy.cuda.get_current_stream().ptr), "cublasSetStream")
    ws = GRAPH_CAPTURE.workspace
    _check(lib.cublasSetWorkspace_v2(handle, ws.data.ptr, ws.nbytes), "cublasSetWorkspace")
    _check(lib.cublasSetPointerMode_v2(handle, 0), "cublasSetPointerMode")  # alpha and beta: host scalars
    # row-major c = a @ b is column-major c.T = b.T @ a.T: cuBLAS's first operand is b
    a, ta, lda = _operand(a)
    b, tb, ldb = _operand(b)
    scalar = ctypes.c_float if a.dtype.char == "f" else ctypes.c_double
    alpha, beta = scalar(1.0), scalar(0.0)
    gemm = lib.cublasSgemm_v2 if a.dtype.char == "f" else lib.cublasDgemm_v2
    _check(gemm(handle, _OP_T if tb else _OP_N, _OP_T if ta else _OP_N, n, m, k, ctypes.addressof(alpha),
                b.data.ptr, ldb, a.data.ptr, lda, ctypes.addressof(beta), c.data.ptr, n), "cublas gemm")
    return c
