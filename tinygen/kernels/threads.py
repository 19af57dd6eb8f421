"""How many CPU threads tinygen uses, and from what size work is split across them: one place for both.

    tinygen.set_num_threads(1)     # e.g. for reproducible timings, or several processes on one machine

Two kinds of threads: Numba's, for the kernels in cpu.py (their ``*_par`` twins run from PARALLEL_MIN elements; the
optimizers' multi-tensor loops from UPDATE_PARALLEL_MIN elements in a call), and
a small pool that runs calls that release the GIL in chunks (``in_chunks``): the transcendental ufuncs (exp, log1p,
tanh) from UFUNC_PARALLEL_MIN elements, the convolutions' im2col/col2im by samples (conv_cpu.py,
from its own threshold), and, when the setting BLAS_PARALLEL_MIN is on (a busy
machine; off by default, when matrix products run on BLAS's own threads), matrix products from that many
multiply-adds (gemm.mm: one BLAS call per block of rows, BLAS itself on one thread). The chunks run at once, with
the bits of one call. A chunk that its pool thread has not started by the time the calling thread has done its own
is run by the calling thread, so a busy machine (another process on the other core) costs at most the time of one
thread, where a static split (OpenBLAS's, Numba's) waits until the descheduled thread gets a core back.
BLAS threads are set here too (``set_num_threads``).

Reductions split across threads add their parts in a different order, so a result may change in the last bits
(within float rounding) when the thread count changes; with a fixed count, results are repeatable.
BLAS threads are set through threadpoolctl when it is installed; without it, only the environment variables
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS, read before NumPy is imported, control them.
"""
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from .. import config
from . import blas

# Elements from which a Numba kernel's thread-parallel twin runs. On the 2-core machine of benchmarks/README.md,
# two threads did not pay below 4M elements (``python -m benchmarks.kernel_bench --threshold``): the kernels are
# memory-bound, and a thread start costs microseconds. Machines with many cores can lower it.
PARALLEL_MIN = config.get("TINYGEN_NUMBA_PARALLEL_MIN")

# NumPy's transcendental ufuncs run in chunks on tinygen's pool from UFUNC_PARALLEL_MIN elements. On a 2-core AVX2
# machine, where NumPy's exp and log1p are not vectorised (4-15 ns per float32 element), a second thread paid from
# 2^16 elements. On the 2-core AVX-512 virtual machine of benchmarks/README.md they are (exp 0.5 ns an element), and
# a pool thread starts 60-130 us after it is asked: BCE on the VAE's 256 x 784 logits took 0.83 ms in two chunks
# against 0.40 ms in one (alone). In whole compiled steps (alternating rounds in one process, with the CLI's setting
# then, OPENBLAS_THREAD_TIMEOUT=18) not splitting below 2^18 made batch-256 steps 0.6-6% faster (VAE, GAN; DCGAN level);
# not splitting below 2^20 made the VAE's batch-1024 step 4% slower. So the default is 2^18.
UFUNC_PARALLEL_MIN = config.get("TINYGEN_UFUNC_PARALLEL_MIN")

# An optimizer update reads and writes every parameter and its state once (memory-bound, ~1 ns per element on one
# core). N > 0: a multi-tensor call (up to cpu.MULTI_TENSOR parameters) of N elements or more runs its parallel twin,
# one run of elements per Numba thread; 0: always on the calling thread; "auto" (the default): 2^16 when tinygen's
# products go through MKL, else 2^22 (``update_split_from``). Numba's threads, not tinygen's pool: a pool thread
# starts 60-130 us after it is asked and must take the GIL, and split on the pool the update was no faster inside a
# step. On Numba's OpenMP layer (with MKL's products: one pool with MKL's threads, ``_arrange_layer``) or its TBB layer
# (the tbb package, which the numba and mkl extras install: a run whose thread has no core is taken by the calling
# thread when its own is done, as on the pool); not on workqueue, which must not be called from two threads at once,
# nor in a forked child on the OpenMP layer (Numba ends such a child).
# Measured on the 2-core machine of benchmarks/README.md (2026-12-06, whole compiled steps, a fresh process for each
# setting): with MKL's products, from 2^16 against 2^22, batch-16 steps 8-19% faster (MLP with SGD
# 1.13-1.17 against 1.31-1.42 ms; MLP with Adam, GAN), the VAE's level to 8% faster; batch 64 1-8% faster; batch
# 256 and 1024 level (within 3%; the VAE's batch 1024 8% faster); from 2^18 the MLP's batch-16 step was 1.22-1.26
# ms. With OpenBLAS's products (its worker kept spinning through a step, OPENBLAS_THREAD_TIMEOUT=24: blas.py) the
# split lost: the GAN's batch-16 step 9.1-9.3 ms against 8.0-8.7, the others level to 8% either way.
UPDATE_PARALLEL_MIN = config.get("TINYGEN_UPDATE_PARALLEL_MIN")


def update_split_from():
    """Elements of a multi-tensor update call from which it splits over Numba's threads (inf: never)."""
    n = UPDATE_PARALLEL_MIN
    if n == "auto":
        n = 1 << 16 if blas.mkl() is not None else 1 << 22
    return n or math.inf


# For a machine shared with other processes. 0 (the default): every product on BLAS's own threads, the fastest on an
# idle machine. N > 0: products below N multiply-adds (m * k * n) on one BLAS thread, larger ones split by gemm.mm
# across tinygen's threads. OpenBLAS splits statically from 262,144 multiply-adds and waits until its other thread
# is woken and scheduled: when another process held the second core of the 2-core machine of benchmarks/README.md,
# for milliseconds per product (batch-16 steps 5-10x slower, batch-64 ones 10-20x); with N = 8388608 they were not.
# Idle, the same setting cost up to 35% (whole steps, batch 64-256), so it is not the default.
BLAS_PARALLEL_MIN = config.get("TINYGEN_BLAS_PARALLEL_MIN")

_requested = None
_pools = {}  # worker count -> ThreadPoolExecutor, made on first use
_numpy_blas_libs = None  # threadpoolctl controllers of NumPy's BLAS, found on first use (() without threadpoolctl)
_numba_in_use = None  # numba, once _numba() has arranged its threading layer
_serial_only = False  # a forked child of a process whose Numba threads run on OpenMP (_forked_child)


def set_num_threads(n):
    """Use ``n`` threads for Numba kernels (up to the number Numba started with), the ufunc pool and BLAS."""
    global _requested
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive integer, got {n!r}")
    _requested = n
    numba = _numba()
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import threadpoolctl
    except ImportError:
        pass
    else:
        threadpoolctl.threadpool_limits(limits=n, user_api="blas")  # a plain call sets the limit process-wide
    blas.set_num_threads(n)  # after: threadpoolctl sets MKL's count for this thread only


def get_num_threads():
    """The thread count set by set_num_threads, else Numba's (if in use), else the number of CPUs."""
    if _requested is not None:
        return _requested
    numba = _numba()
    if numba is not None:
        return numba.get_num_threads()
    return os.cpu_count() or 1


def on_one_blas_thread(fn, *args):
    """``fn(count, *args)`` with NumPy's BLAS (and MKL, when tinygen's products use it) limited to one thread, then set
    back to its thread count; ``count`` is that count (1 when it was 1), or None when BLAS threads cannot be set (no
    threadpoolctl: ``fn`` runs with BLAS as it is). Costs about 2 microseconds. The limit is process-wide while
    ``fn`` runs."""
    libs = _numpy_blas_libs if _numpy_blas_libs is not None else _find_numpy_blas()
    if blas.mkl() is not None:
        libs += (blas,)  # MKL (blas.py), which threadpoolctl may not know as NumPy's
    if not libs:
        return fn(None, *args)
    lowered, count = [], 1
    for lib in libs:
        n = lib.get_num_threads()
        if n is not None and n > 1:
            lib.set_num_threads(1)
            lowered.append((lib, n))
            count = max(count, n)
    try:
        return fn(count, *args)
    finally:
        for lib, n in lowered:
            lib.set_num_threads(n)


def _find_numpy_blas():
    """The BLAS libraries NumPy calls (those inside its installation, as in its wheels; else every BLAS loaded: a
    process may hold other copies, e.g. SciPy's, which NumPy's matmul never runs)."""
    global _numpy_blas_libs
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        _numpy_blas_libs = ()
        return _numpy_blas_libs
    import numpy
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    home = os.path.dirname(os.path.realpath(numpy.__file__))  # .../numpy; a wheel's BLAS is in .../numpy.libs
    own = [lib for lib in libs if os.path.realpath(lib.filepath).startswith(home)]
    _numpy_blas_libs = tuple(own or libs)
    return _numpy_blas_libs


def _numba():
    """numba when it is installed and not switched off (TINYGEN_NUMBA), else None; its threading layer arranged
    before its threads start (``_arrange_layer``). (This module does not ask the kernel switch: the kernels import
    it, not the other way round.)"""
    if not config.get("TINYGEN_NUMBA"):
        return None
    try:
        import numba
    except ImportError:
        return None
    if _numba_in_use is None:
        _arrange_layer(numba)
    return numba


def numba_threads():
    """Numba's thread count for the calling thread (what its kernels' parallel twins split into)."""
    return (_numba_in_use or _numba()).get_num_threads()


def numba_layer():
    """Numba's threading layer ("omp", "tbb" or "workqueue"; its threads started for it), or None when Numba's
    kernels are off."""
    numba = _numba()
    if numba is None:
        return None
    numba.get_num_threads()  # starts Numba's threads, so its layer is known
    return numba.threading_layer()


def _arrange_layer(numba):
    """Before Numba starts its threads: when tinygen's products use MKL on Intel's OpenMP runtime (blas.py), Numba's
    loops run on that runtime too (its OpenMP layer, whose GNU OpenMP calls libiomp5 answers when it is loaded first
    and globally), so one pool of threads serves both. With two pools, MKL's worker spins after each product
    (KMP_BLOCKTIME) on the core that Numba's thread needs for the optimizer update that follows. Measured on the
    2-core machine of benchmarks/README.md (2026-12-06, whole compiled steps, batch 16, fresh processes): MLP
    1.28 ms against 1.46-1.51 on Numba's TBB layer, VAE 1.75-1.76 against 1.87-2.14, GAN 5.3-5.8 against 6.0-6.2;
    batch 256 level to 4% faster. Left as Numba would choose when a threading layer is asked for
    (NUMBA_THREADING_LAYER), when Numba's threads have started, when GNU OpenMP is already loaded (its calls would
    go there: two pools again) and off Linux. Numba ends a forked child that runs a parallel loop on its OpenMP
    layer, so a child runs them serially (``_forked_child``)."""
    global _numba_in_use
    _numba_in_use = numba
    from numba.np.ufunc import parallel
    if getattr(parallel, "_is_initialized", True) or str(numba.config.THREADING_LAYER).lower() != "default":
        return
    try:
        if not blas.share_openmp():
            return
    except RuntimeError:  # TINYGEN_BLAS=mkl without MKL: the first product says so
        return
    try:
        from numba.np.ufunc import omppool  # noqa: F401 - loads, or its GNU OpenMP is missing
    except ImportError:
        return
    numba.config.THREADING_LAYER = "omp"


def _forked_child():
    """In a forked child: Numba's parallel loops run serially there if its threads run on its OpenMP layer."""
    global _serial_only
    numba = sys.modules.get("numba")
    try:
        _serial_only = numba is not None and numba.threading_layer() == "omp"
    except ValueError:  # Numba's threads had not started: the child chooses its own layer
        _serial_only = False


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forked_child)


def parallel_chunks(n, thread_count):
    """Number of chunks for a Numba kernel's parallel twin over ``n`` elements, or 0 to run serially.
    ``thread_count()`` (asked only from PARALLEL_MIN elements: it costs a microsecond) gives the threads."""
    if n < PARALLEL_MIN or _serial_only:
        return 0
    t = thread_count()
    return t if t > 1 else 0


def update_chunks(n, thread_count):
    """Number of chunks for an optimizer update call of ``n`` elements (its multi-tensor loop's parallel twin), or 0
    to run it serially: from update_split_from() elements, as ``split_from`` says."""
    return split_from(n, update_split_from(), thread_count)


def split_from(n, minimum, thread_count):
    """Numba's threads for a parallel twin over ``n`` (elements, multiply-adds), or 0 to run it serially: from
    ``minimum``, on Numba's OpenMP or TBB layer (workqueue must not be entered from two threads at once), not in a
    forked child on the OpenMP layer."""
    if n < minimum or _serial_only:
        return 0
    t = thread_count()  # starts Numba's threads, so its layer is known
    return t if t > 1 and (_numba_in_use or _numba()).threading_layer() != "workqueue" else 0


def _pool(t):
    """The pool of t - 1 threads that, with the calling thread, runs work on t threads."""
    pool = _pools.get(t - 1)
    if pool is None:
        pool = _pools[t - 1] = ThreadPoolExecutor(t - 1, thread_name_prefix="tinygen-chunks")
    return pool


def run_pair(first, second):
    """``(first(), second())``, two calls that release the GIL, at once: ``second`` on a pool thread, ``first`` on
    the calling thread, which then runs ``second`` itself if its pool thread has not started it (a busy machine)."""
    pending = _pool(2).submit(second)
    a = first()
    return a, (second() if pending.cancel() else pending.result())


def in_chunks(fn, n, thread_count, min_size=None, align=1, in_order=False):
    """Run ``fn(lo, hi)`` over [0, n): one chunk per thread (``thread_count()`` of them, chunk bounds multiples of
    ``align``) from ``min_size`` (default UFUNC_PARALLEL_MIN) elements, else one call on the calling thread. The
    calling thread runs the first chunk, then every chunk whose pool thread has not started it yet. ``in_order``:
    the same chunks one after the other on the calling thread (what must give the split run's bits elsewhere)."""
    if n < max(UFUNC_PARALLEL_MIN if min_size is None else min_size, 2):
        fn(0, n)
        return
    t = thread_count()
    if t < 2:
        fn(0, n)
        return
    per_thread = -(-n // t)
    step = -(-per_thread // align) * align  # rounded up to a multiple of align
    if in_order:
        for lo in range(0, n, step):
            fn(lo, min(n, lo + step))
        return
    pool = _pool(t)
    parts = [(pool.submit(fn, lo, min(n, lo + step)), lo) for lo in range(step, n, step)]
    fn(0, min(n, step))
    for f, lo in parts:
        if f.cancel():  # not started: its thread has no core now (a busy machine), so do not wait for it
            fn(lo, min(n, lo + step))
        else:
            f.result()
