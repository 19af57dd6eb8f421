"""Which BLAS multiplies host matrices: NumPy's (the OpenBLAS of its wheels), or Intel MKL's ``cblas_sgemm`` /
``cblas_dgemm`` through ctypes when the optional ``mkl`` package is installed (``pip install "tinygen[mkl]"``).

Why a second BLAS: OpenBLAS runs the short products of a small batch at a third to a half of MKL's speed (alone, 2
threads, batch 16: (16, 784) @ (784, 512) 126 against 62 us; the weight gradient (784, 16) @ (16, 512) 91 against
58 us), and on an Intel Xeon MKL is 5-8% faster on large ones. The benchmark models' compiled training steps on 2
cores of that Xeon were 1.18-1.38x faster with MKL at batch 16 (the DCGAN's 1.04x) and 1.04-1.16x at 64-1024
(benchmarks/README.md). On an AMD Zen 4 (AVX-512) the large products go the other way: NumPy's OpenBLAS ran the
steps at batch 256 and 1024 1.04-1.16x faster, MKL those at 16 and 64 1.1-1.45x faster. The choice is one for the
process: with the large products sent to OpenBLAS and the short ones to MKL, the two libraries' thread pools spun
against each other, and batch-256 steps ran 0.62-0.73x as fast as with MKL alone (the MLPs, the VAE; the GAN level).
The setting TINYGEN_BLAS chooses: ``auto`` (the default: MKL when it can be loaded, else NumPy's), ``numpy``, or
``mkl`` (an error naming what is missing when it cannot be loaded). It is read once, at the first product (or
when Numba's threads start: with MKL, Numba's loops run on MKL's OpenMP threads, threads.py).

MKL takes float32 and float64 matrices (2-D, each with rows or columns contiguous) of more than MIN multiply-adds.
Everything else (stacks of matrices, integers, odd strides, and small products, which NumPy's OpenBLAS runs on the
calling thread in a few microseconds) is NumPy's ``@``. With Numba's kernels on, MKL is called from compiled code
(mkl_call.py: about 0.6 us a call, against 5 us through ctypes, the route without Numba; the same bits). MKL's
results agree with OpenBLAS's to float rounding, not bitwise; with a given thread count each is repeatable.

MKL's OpenMP threads spin after a product for KMP_BLOCKTIME milliseconds (200 by default). Before loading MKL,
tinygen sets KMP_BLOCKTIME to 5 unless it is set, for the reason the ``tinygen`` command sets
OPENBLAS_THREAD_TIMEOUT (tinygen_launcher.py): awake through a step, asleep soon after it, so a process that
pauses does not keep a core busy. Its thread count follows ``tinygen.set_num_threads`` (else MKL_NUM_THREADS).
Numba's parallel loops run on the same OpenMP threads where they can (threads.py). In a forked child MKL works on
its own Intel runtime; where its OpenMP calls may go to GNU OpenMP instead (loaded before MKL's first product, as by
``import torch`` first, or MKL_THREADING_LAYER=GNU), which is not fork-safe, a child runs MKL on one thread
(``_after_fork``).
"""
import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

from .. import config

# Multiply-adds up to which NumPy's OpenBLAS runs a product on the calling thread (its own threshold, 65536 x 4):
# it makes the few-microsecond product a ctypes call would double, and wakes no OpenBLAS thread. Sending the products
# above it to MKL too matters: with OpenBLAS's threads and MKL's both awake, each spins on a core the other needs
# (the GAN's batch-16 step took 19 ms with MKL from 2^20 multiply-adds, 6.7 ms from 2^18).
MIN = 1 << 18
KMP_BLOCKTIME = "5"  # milliseconds; see above

_ROW, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enums
# Once chosen: (MKL's ctypes handle, {dtype: (gemm function, its address)}, mkl_call.gemm or None for the ctypes
# call); (None, {}, None) for NumPy's
_state = None
_threads = None  # the count asked for before MKL was loaded
_openmp_global = False  # MKL's OpenMP runtime loaded globally before GNU OpenMP (share_openmp)
_forked_on_gnu = False  # a forked child where MKL's OpenMP calls may go to GNU OpenMP: MKL on one thread (_after_fork)


def mkl():
    """The loaded MKL (its ctypes handle) when tinygen's products use it, else None. Chosen on the first call."""
    return (_state or _choose())[0]


def name():
    """``"mkl"`` or ``"numpy"``: the BLAS of tinygen's matrix products (for reports)."""
    return "mkl" if mkl() is not None else "numpy"


def matmul(a, b):
    """``a @ b`` for two NumPy matrices through MKL, as a new C-ordered array; None when MKL is not in use or the
    product is not one it takes (see above): the caller multiplies with NumPy then."""
    _, gemms, compiled = _state or _choose()
    gemm = gemms.get(a.dtype)
    if gemm is None or b.dtype != a.dtype or a.ndim != 2 or b.ndim != 2:
        return None
    m, k = a.shape
    n = b.shape[1]
    if m * k * n <= MIN:
        return None
    trans_a, lda = _layout(a)
    trans_b, ldb = _layout(b)
    if trans_a is None or trans_b is None:
        return None
    c = np.empty((m, n), a.dtype)
    if compiled is not None:
        compiled(gemm[1], trans_a, trans_b, a, lda, b, ldb, c)
    else:
        gemm[0](_ROW, trans_a, trans_b, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, c.ctypes.data, n)
    return c


def caller():
    """How tinygen calls MKL's gemm: ``"compiled"`` (mkl_call.py), ``"ctypes"``, or None when MKL is not in use
    (chosen with the BLAS)."""
    lib, _, compiled = _state or _choose()
    return None if lib is None else "ctypes" if compiled is None else "compiled"


def _compiled_caller():
    """mkl_call.gemm (compiled, or loaded from Numba's cache, when it is imported) when Numba's kernels are on (the
    setting TINYGEN_NUMBA) and Numba imports, else None: MKL is called through ctypes."""
    if not config.get("TINYGEN_NUMBA"):
        return None
    try:
        from .mkl_call import gemm
    except ImportError:  # Numba (or llvmlite) not installed
        return None
    return gemm


def share_openmp():
    """Load the OpenMP runtime MKL's threads run on (Intel's libiomp5, beside libmkl_rt) globally, so that GNU
    OpenMP calls made from now on (Numba's OpenMP layer: threads.py) go to it and run on MKL's threads. Returns
    whether it did: tinygen's products use MKL on its default (Intel) threading layer, libiomp5 is beside it, the
    system is Linux and GNU OpenMP is not loaded yet (its calls would go there)."""
    global _openmp_global
    lib = mkl()
    if lib is None or os.environ.get("MKL_THREADING_LAYER", "INTEL").upper() != "INTEL" or \
            not sys.platform.startswith("linux") or gnu_openmp_loaded():
        return False
    found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.realpath(lib._name)), "libiomp5.so*")))
    try:
        ctypes.CDLL(found[0], mode=os.RTLD_GLOBAL)
    except (IndexError, OSError):
        return False
    _openmp_global = True
    return True


def set_num_threads(n):
    """MKL's thread count (kept for when it loads), for every thread: a count threadpoolctl set for the calling
    thread alone (MKL's thread-local setting, which wins over the process's) is cleared."""
    global _threads
    _threads = n
    lib = _state[0] if _state else None
    if lib is not None:
        lib.MKL_Set_Num_Threads(1 if _forked_on_gnu else n)
        lib.MKL_Set_Num_Threads_Local(0)


def get_num_threads():
    """MKL's thread count, or None when MKL is not in use."""
    lib = mkl()
    return None if lib is None else lib.MKL_Get_Max_Threads()


def _layout(x):
    """(CBLAS transpose flag, leading dimension) of a matrix whose rows or columns are contiguous, else (None, 0)."""
    s0, s1 = x.strides
    size = x.itemsize
    rows, cols = x.shape
    if s1 == size and s0 % size == 0 and s0 >= size * max(cols, 1):
        return _NO_TRANS, max(s0 // size, cols, 1)
    if s0 == size and s1 % size == 0 and s1 >= size * max(rows, 1):
        return _TRANS, max(s1 // size, rows, 1)
    return None, 0


def gnu_openmp_loaded():
    """Whether GNU OpenMP (libgomp) is loaded in this process (PyTorch's wheels load it); True where that cannot be
    read (not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return "/libgomp" in f.read()
    except OSError:
        return True


def _after_fork():
    """In a forked child: GNU OpenMP is not fork-safe, and where MKL's OpenMP calls may go to it (GNU OpenMP loaded
    before MKL's first product, as by ``import torch`` first, or MKL_THREADING_LAYER=GNU) an MKL product in the child
    waits forever for threads the child does not have. There MKL runs on one thread (no parallel region): products
    in the child work, with one thread's bits. Not where MKL's runtime was loaded globally before GNU OpenMP
    (share_openmp): every OpenMP call goes to it, and it is fork-safe."""
    global _forked_on_gnu
    if _state is not None and _state[0] is not None and not _openmp_global and gnu_openmp_loaded():
        _forked_on_gnu = True
        _state[0].MKL_Set_Num_Threads(1)
        _state[0].MKL_Set_Num_Threads_Local(0)


def _choose():
    global _state
    choice = config.get("TINYGEN_BLAS")
    lib = None if choice == "numpy" else _load()
    if lib is None and choice == "mkl":
        raise RuntimeError("TINYGEN_BLAS=mkl, but MKL's runtime (libmkl_rt, with "
                           f"{', '.join(_SYMBOLS)}) was not found next to this Python ({sys.prefix}) or on the "
                           "loader's search path: pip install mkl, or set TINYGEN_BLAS=auto")
    gemms = {}
    if lib is not None:
        for dtype, fn, scalar in ((np.dtype(np.float32), lib.cblas_sgemm, ctypes.c_float),
                                  (np.dtype(np.float64), lib.cblas_dgemm, ctypes.c_double)):
            fn.restype = None
            fn.argtypes = [ctypes.c_int] * 6 + [scalar, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                                scalar, ctypes.c_void_p, ctypes.c_int]
            gemms[dtype] = fn, ctypes.cast(fn, ctypes.c_void_p).value
        lib.MKL_Set_Num_Threads.argtypes = lib.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
        lib.MKL_Get_Max_Threads.restype = ctypes.c_int
    _state = (lib, gemms, _compiled_caller() if lib is not None else None)
    if lib is not None and _threads is not None:
        set_num_threads(_threads)
    return _state


_SYMBOLS = ("cblas_sgemm", "cblas_dgemm", "MKL_Set_Num_Threads", "MKL_Set_Num_Threads_Local", "MKL_Get_Max_Threads")


def _load():
    """MKL's single runtime, libmkl_rt, from the mkl wheel (in this Python's lib/) or the loader's search path, else
    None (a file that does not load or lacks one of _SYMBOLS is passed over)."""
    names = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        names += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    found = ctypes.util.find_library("mkl_rt")
    names += [found] if found else []
    if names:
        os.environ.setdefault("KMP_BLOCKTIME", KMP_BLOCKTIME)  # read when MKL's OpenMP runtime loads
    for path in names:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, symbol) for symbol in _SYMBOLS):
            return lib
    return None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork)
