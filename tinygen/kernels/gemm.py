"""The matrix product on arrays, ``a @ b`` (reference.mm), with the operand layouts that keep BLAS at full speed.

Two cases are rewritten; the result is the same product, C-ordered like NumPy's:
  * an outer product (a has one column: the input gradient of a layer with one output) is an elementwise
    multiply, which BLAS runs 4x slower as a product;
  * OpenBLAS runs a short, wide product with a transposed right operand (a small batch through a Linear layer:
    x @ W.T) at about half speed; written as (W @ x.T).T it runs at full speed. Below SWAP_MAX_ROWS rows (the
    setting TINYGEN_MM_SWAP_MAX_ROWS) and for weights of at least SWAP_MIN_SIZE elements, mm() takes that route and
    copies the few rows back.
Two independent products go through ``mm_pair``: a layer's input and weight gradients, ``g @ W`` and ``g.T @ x``
for the upstream gradient g of a batch. When the first has at most PAIR_MAX_ROWS rows (the setting
TINYGEN_MM_PAIR_MAX_ROWS: a small batch, which is K of the weight gradient) and each has at least PAIR_MIN
multiply-adds, they run at once on two of tinygen's threads, each on one BLAS thread; else one after the other, on
BLAS's own threads. The setting is 0 (never at once) by default. Running them at once pays a handoff to a pool
thread and BLAS's thread switches; it gains only where a sleeping thread wakes fast and OpenBLAS's own two threads
do poorly. On one 2-core virtual machine with OpenBLAS's idle workers spinning 2^18 cycles, whole compiled
batch-16 steps were 0.99-1.15x faster with 32 (MLP; within 2% for the VAE and the GAN). On another, with the
workers spinning through a step as the ``tinygen`` command and the benchmarks have them (2^24), they were 0.86-0.96x
as fast (MLP, MLP+Adam, VAE, GAN; 0.86-0.98x at 2^18 too): benchmarks/README.md, 2026-12-06 (late afternoon). Measure a
machine with ``python -m benchmarks.step_bench --case mlp --batch 16 --threads 2 --compare pairs``. On the
first machine, pairs at batch 64 lost up to 4% in whole GAN steps. With
MKL (blas.py) they always run one after the other: at once, the same batch-16 steps were 0.77-0.96x as fast.
Threads: by default a product runs on BLAS's own threads. With the setting TINYGEN_BLAS_PARALLEL_MIN = N > 0 (for
a machine shared with other processes: threads.py says why), products from N multiply-adds are split by rows of the
result (or of its transpose, when it has fewer rows than columns) into one BLAS call per thread of tinygen's pool,
BLAS itself on one thread, and smaller ones are one call on one BLAS thread. OpenBLAS's result can depend on its
thread count in the last bits, so the CPU stand-in for CuPy (NumPy underneath) takes the same route: on it, device
code gives the CPU's bits.
Which BLAS runs a host product, NumPy's or MKL's, is blas.py's choice (the setting TINYGEN_BLAS); the rewrites and
routes above apply to either. Before them, where Numba is installed and on (TINYGEN_NUMBA), a short float32 product
(at most TINYGEN_MM_SHORT_MAX_ROWS rows, or that short a k, in a layout it reads: gemm_short.mm) runs on
gemm_short.py's loops instead of any BLAS: on an AMD Zen 4 machine a Linear layer's batch-16 products ran 1.2-3.3x
faster than MKL's (gemm_short.py says why).
"""
import numpy as np

from .. import config
from ..backend import GRAPH_CAPTURE, StandinArray, array_module_of
from . import blas, gemm_capture, threads

SWAP_MAX_ROWS = config.get("TINYGEN_MM_SWAP_MAX_ROWS")
PAIR_MAX_ROWS = config.get("TINYGEN_MM_PAIR_MAX_ROWS")
PAIR_MIN = 1 << 22  # multiply-adds; below, handing a product to a pool thread (~50 us) costs more than it saves
SWAP_MIN_SIZE = 1 << 17
# Multiply-adds below which every route gives NumPy's ``a @ b`` on the calling thread: gemm_short.py's loops start
# at their MIN and MKL's products at blas.MIN, both at SMALL or above (tests hold them there), so a small product
# skips the routes' checks (~1 us)
SMALL = 1 << 17
_HOST = (np.ndarray, StandinArray)  # arrays whose BLAS is NumPy's
_short_mm = None  # gemm_short.mm, or False where it is not in use: chosen on the first float32 product


def mm(a, b):
    """``a @ b`` on arrays (the one place tinygen multiplies matrices), C-ordered like NumPy's result."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1:
        return a * b
    if not threads.BLAS_PARALLEL_MIN or type(a) not in _HOST or type(b) is not type(a) or a.ndim < 2 or b.ndim < 2:
        return _product(a, b)
    if a.shape[-2] * a.shape[-1] * b.shape[-1] < threads.BLAS_PARALLEL_MIN:
        return threads.on_one_blas_thread(_serial, a, b)
    if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.char in "fd":
        return threads.on_one_blas_thread(_split, a, b)
    return _product(a, b)  # a stack of large products: BLAS's own threads


def mm_pair(a1, b1, a2, b2):
    """``(a1 @ b1, a2 @ b2)``, two independent products, each as ``mm`` gives it: at once when a1 has at most
    PAIR_MAX_ROWS rows, both are host float matrices of PAIR_MIN multiply-adds or more, and tinygen has two threads
    or more; else one after the other."""
    if (PAIR_MAX_ROWS and _pairable(a1, b1) and _pairable(a2, b2) and a1.shape[0] <= PAIR_MAX_ROWS
            and threads.get_num_threads() > 1 and blas.mkl() is None):
        return threads.on_one_blas_thread(_pair, a1, b1, a2, b2)
    return mm(a1, b1), mm(a2, b2)


def _pairable(a, b):
    return (type(a) in _HOST and type(b) is type(a) and a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype
            and a.dtype.char in "fd" and a.shape[0] * a.shape[1] * b.shape[1] >= PAIR_MIN)


def _pair(blas_threads, a1, b1, a2, b2):
    if blas_threads is None:  # BLAS's threads cannot be set (no threadpoolctl): two calls would oversubscribe
        return mm(a1, b1), mm(a2, b2)
    return threads.run_pair(lambda: mm(a1, b1), lambda: mm(a2, b2))


def _serial(blas_threads, a, b):  # noqa: ARG001 - BLAS is on one thread (or as it is, without threadpoolctl)
    return _product(a, b)


def _split(blas_threads, a, b):
    """a @ b in blocks of rows of the result (of its transpose when that has more rows), one per thread."""
    if not blas_threads or blas_threads < 2:
        return _product(a, b)  # one thread anyway, or BLAS's threads when they cannot be set
    if a.shape[0] >= b.shape[1]:
        return _split_rows(blas_threads, a, b)
    # (a @ b).T = b.T @ a.T, by rows
    return array_module_of(a).ascontiguousarray(_split_rows(blas_threads, b.T, a.T).T)


def _split_rows(blas_threads, a, b):
    xp = array_module_of(a)
    out = xp.empty((a.shape[0], b.shape[1]), a.dtype)
    threads.in_chunks(lambda lo, hi: xp.matmul(a[lo:hi], b, out=out[lo:hi]), a.shape[0], lambda: blas_threads,
                      min_size=0, align=8)
    return out


def _product(a, b):
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and a.shape[0] * a.shape[1] * b.shape[1] < SMALL):
        return a @ b
    if GRAPH_CAPTURE.workspace is not None and type(a) not in _HOST:  # inside a CUDA graph's capture
        return gemm_capture.mm(a, b)
    if a.dtype == np.float32:
        c = _short(a, b)
        if c is not None:
            return c
    if (type(a) in _HOST and a.ndim == 2 and b.ndim == 2 and a.shape[0] <= SWAP_MAX_ROWS
            and b.size >= SWAP_MIN_SIZE and b.flags.f_contiguous and not b.flags.c_contiguous):
        return array_module_of(a).ascontiguousarray(_blas_product(b.T, a.T).T)  # MKL gains from it too
    return _blas_product(a, b)


def _short(a, b):
    """a @ b by gemm_short.py's loops (a short float32 product they take), else None. Like the choice of BLAS, this
    route is fixed for the process (Numba installed, the setting TINYGEN_NUMBA on when first asked), not switched by
    ``kernels.enabled_as``: a product's bits depend on the products' route alone, and the CuPy stand-in takes the
    CPU's route, so device code gives the CPU's bits."""
    route = short_route()
    return _on_host(route, a, b) if route else None


def short_route():
    """gemm_short.mm where short float32 products take its loops in this process, else False; chosen on the first
    call (``_load_short``)."""
    global _short_mm
    if _short_mm is None:
        _short_mm = _load_short()
    return _short_mm


def _load_short():
    """gemm_short.mm, or False: Numba missing or switched off (TINYGEN_NUMBA), or TINYGEN_MM_SHORT_MAX_ROWS 0."""
    if not config.get("TINYGEN_NUMBA"):
        return False
    try:
        from . import gemm_short
    except ImportError:  # Numba (or llvmlite) not installed
        return False
    return gemm_short.mm if gemm_short.MAX_ROWS else False


def _blas_product(a, b):
    """a @ b through the BLAS blas.py chose for host arrays (the stand-in's too: its bits are the CPU's)."""
    c = _on_host(blas.matmul, a, b)
    return a @ b if c is None else c


def _on_host(product, a, b):
    """``product(a, b)`` (a host routine that returns None for what it does not take) on two NumPy arrays, or on
    the stand-in's host arrays with the result wrapped again; None for other arrays (CuPy's)."""
    if type(a) is np.ndarray and type(b) is np.ndarray:
        return product(a, b)
    if type(a) is StandinArray and type(b) is StandinArray:
        c = product(a.host_array, b.host_array)
        return None if c is None else StandinArray(c)
    return None
