"""Keep freed host memory for reuse, so a training step does not page-fault its arrays in again every time.

NumPy takes every array from the C library's ``malloc``. glibc gives blocks from 128 KiB up back to the operating
system when they are freed (``mmap``/``munmap``, and trimming the top of the heap), so the next step's array of
the same size arrives as fresh pages: a 1024x784 float32 activation costs about 800 page faults each time it is
made. A training step frees and remakes the same sizes over and over; on the 2-core machine of
``benchmarks/README.md`` this was 2,700 faults per VAE step at batch 1024 and 5,700 per GAN step, 10-25% of the
step. ``keep_freed_memory()`` asks glibc to serve blocks up to 32 MiB from its heap and to keep up to 512 MiB of
freed heap, which is then reused, as PyTorch's caching allocator does for GPU memory. The cost: the process keeps
its peak host memory instead of returning it. (128 MiB kept too little for DCGAN's batch-256 step, which frees
more than that at the top of the heap each time: 7,800 page faults a step, 395 against 360 ms with 256 MiB or more.)

The setting is process-wide and glibc-only (elsewhere this does nothing), so importing tinygen never applies it: a
program opts in with one call,

    tinygen.keep_freed_memory()          # or keep_freed_memory(False) to return to glibc's behaviour

The ``tinygen`` command and the benchmarks call ``apply_setting()``, which keeps freed memory unless the setting
``TINYGEN_KEEP_FREED_MEMORY`` (tinygen.config) is off.
"""
import ctypes
import ctypes.util
import platform

from . import config

# glibc's mallopt parameters (malloc.h) and the values used
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 512 << 20, M_TOP_PAD: 16 << 20}
GLIBC_DEFAULTS = {M_MMAP_THRESHOLD: 128 << 10, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}

_state = {"kept": False}


def _mallopt():
    """glibc's mallopt, or None on other C libraries."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def keep_freed_memory(enabled=True):
    """Keep freed memory in the heap for reuse (``True``) or hand it back as glibc does by default (``False``).

    Returns whether memory is now kept: always ``False`` where the C library is not glibc. (glibc's own default
    raises its thresholds as a program runs; after ``keep_freed_memory(False)`` they stay at its starting values.)
    """
    fn = _mallopt()
    if fn is None:
        _state["kept"] = False
        return False
    ok = all(fn(param, value) == 1 for param, value in (KEEP if enabled else GLIBC_DEFAULTS).items())
    _state["kept"] = bool(enabled and ok)
    return _state["kept"]


def freed_memory_kept():
    """True when tinygen has set the C library to keep freed memory for reuse."""
    return _state["kept"]


def apply_setting():
    """Keep freed memory for reuse unless TINYGEN_KEEP_FREED_MEMORY is off (for programs: the CLI, benchmarks).

    Returns whether memory is now kept."""
    if config.get("TINYGEN_KEEP_FREED_MEMORY"):
        return keep_freed_memory(True)
    return freed_memory_kept()
