"""How many CPU threads tinygen uses: Numba's parallel kernels and the BLAS behind matmul, set in one place.

    tinygen.set_num_threads(1)     # e.g. for reproducible timings, or several processes on one machine

Reductions split across threads add their parts in a different order, so a result may change in the last bits
(within float rounding) when the thread count changes; with a fixed count, results are repeatable.
BLAS threads are set through threadpoolctl when it is installed; without it, only the environment variables
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS, read before NumPy is imported, control them.
"""
import os

_requested = None


def set_num_threads(n):
    """Use ``n`` threads for Numba kernels (up to the number Numba started with) and for BLAS."""
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
        return
    threadpoolctl.threadpool_limits(limits=n, user_api="blas")  # a plain call sets the limit process-wide


def get_num_threads():
    """The thread count set by set_num_threads, else Numba's (if installed), else the number of CPUs."""
    if _requested is not None:
        return _requested
    numba = _numba()
    if numba is not None:
        return numba.get_num_threads()
    return os.cpu_count() or 1


def _numba():
    from . import kernels
    if not kernels.enabled():
        return None
    import numba
    return numba
