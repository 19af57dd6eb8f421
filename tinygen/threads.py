"""How many CPU threads tinygen uses: Numba's parallel kernels and the BLAS behind matmul, set in one place.

    tinygen.set_num_threads(1)     # e.g. for reproducible timings, or several processes on one machine

Reductions split across threads add their parts in a different order, so a result may change in the last bits
(within float rounding) when the thread count changes; with a fixed count, results are repeatable.
BLAS threads are set through threadpoolctl when it is installed; without it, only the environment variables
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS, read before NumPy is imported, control them.

``thread_count("auto")`` is the number of CPUs no other process is using (the usable CPUs less the 1-minute load
average, at least 1): on a busy machine, threads beyond that wait at every parallel barrier for a core another
process holds. This module imports nothing but ``os`` at load time, so the ``tinygen`` command can use it before
NumPy (and its BLAS) is loaded.
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


def usable_cpus():
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cpus():
    """Usable CPUs minus the 1-minute load average (rounded), clamped to 1..usable_cpus()."""
    n = usable_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume an idle machine
        return n
    return max(1, min(n, int(n - load + 0.5)))


def parse_thread_count(value):
    """``"auto"`` or a positive integer (an int or its text); ValueError naming what was wrong otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        value = int(text) if text.isdigit() else text
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"thread count must be 'auto' or a positive integer, got {value!r}")
    return value


def thread_count(value="auto"):
    """The number of threads ``value`` asks for: ``idle_cpus()`` for "auto", else the positive integer itself."""
    value = parse_thread_count(value)
    return idle_cpus() if value == "auto" else value


def _numba():
    from . import kernels
    if not kernels.enabled():
        return None
    import numba
    return numba
