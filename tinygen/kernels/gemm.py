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
multiply-adds, they run at once on two of tinygen's threads, each on one BLAS thread, where OpenBLAS would run them
one after the other on two threads it may keep busy poorly. What that gains depends on how well OpenBLAS's two
threads do at that moment: on the 2-core virtual machine of benchmarks/README.md, whose two-thread products varied
over one day (a batch-16 784 -> 512 layer's pair of products: 285-448 us one after the other, 252-312 us at once),
whole compiled steps at batch 16 (alternating rounds in one process, ten runs that day) were 0.99-1.15x faster
for the MLP, 1.02-1.14x with Adam, within 2% either way for the VAE and the GAN
(``python -m benchmarks.step_bench --case mlp --batch 16 --threads 2 --pairs``). At batch 64 the pair gained only
for the widest layers and lost up to 4% in whole GAN steps (the handoff and BLAS's thread switches cost ~50 us a
pair), so larger batches run one after the other. With MKL (blas.py), whose two threads run these products about
twice as fast as OpenBLAS's, running them at once made the same batch-16 steps 0.77-0.96x as fast (``--compare
pairs``), so mm_pair runs them one after the other there.
Threads: by default a product runs on BLAS's own threads. With the setting TINYGEN_BLAS_PARALLEL_MIN = N > 0 (for
a machine shared with other processes: threads.py says why), products from N multiply-adds are split by rows of the
result (or of its transpose, when it has fewer rows than columns) into one BLAS call per thread of tinygen's pool,
BLAS itself on one thread, and smaller ones are one call on one BLAS thread. OpenBLAS's result can depend on its
thread count in the last bits, so the CPU stand-in for CuPy (NumPy underneath) takes the same route: on it, device
code gives the CPU's bits.
Which BLAS runs a host product, NumPy's or MKL's, is blas.py's choice (the setting TINYGEN_BLAS); the rewrites and
routes above apply to either.
"""
import numpy as np

from .. import config
from ..backend import GRAPH_CAPTURE, StandinArray, array_module_of
from . import blas, gemm_capture, threads

SWAP_MAX_ROWS = config.get("TINYGEN_MM_SWAP_MAX_ROWS")
PAIR_MAX_ROWS = config.get("TINYGEN_MM_PAIR_MAX_ROWS")
PAIR_MIN = 1 << 22  # multiply-adds; below, handing a product to a pool thread (~50 us) costs more than it saves
SWAP_MIN_SIZE = 1 << 17
_HOST = (np.ndarray, StandinArray)  # arrays whose BLAS is NumPy's


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
    if GRAPH_CAPTURE.workspace is not None and type(a) not in _HOST:  # inside a CUDA graph's capture
        return gemm_capture.mm(a, b)
    if (type(a) in _HOST and a.ndim == 2 and b.ndim == 2 and a.shape[0] <= SWAP_MAX_ROWS
            and b.size >= SWAP_MIN_SIZE and b.flags.f_contiguous and not b.flags.c_contiguous):
        return array_module_of(a).ascontiguousarray(_blas_product(b.T, a.T).T)  # MKL gains from it too
    return _blas_product(a, b)


def _blas_product(a, b):
    """a @ b through the BLAS blas.py chose for host arrays (the stand-in's too: its bits are the CPU's)."""
    if type(a) is np.ndarray and type(b) is np.ndarray:
        c = blas.matmul(a, b)
    elif type(a) is StandinArray and type(b) is StandinArray:
        c = blas.matmul(a.host_array, b.host_array)
        c = None if c is None else StandinArray(c)
    else:
        c = None
    return a @ b if c is None else c
