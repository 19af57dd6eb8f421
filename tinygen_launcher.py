"""The ``tinygen`` command's entry point: set the thread environment, then import tinygen and run ``tinygen.cli``.

OpenBLAS reads its thread count and OPENBLAS_THREAD_TIMEOUT once, when it loads, and it loads with NumPy on
``import tinygen``; so they can only be set by code that runs before the package is imported, which is why this
module lives outside it. It sets (unless already set in the environment):

* OPENBLAS_THREAD_TIMEOUT=24: OpenBLAS's idle workers spin about 2^24 cycles (~6 ms) after a call instead of its
  default 2^28 (~0.1 s): awake from one GEMM of a step to the next (waking a sleeping one cost 80-250 us on a
  virtual machine: ``tinygen train gan --steps 300 --threads 2`` ran 28.8-29.4 steps/s against 23.5-24.2 at 2^18),
  yet asleep soon after the work stops. On a busy machine ``--threads auto`` picks one thread, and no worker spins.
* OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS / NUMBA_NUM_THREADS: the count ``--threads`` asks for
  (default "auto": the CPUs other processes leave idle), so BLAS is limited even without threadpoolctl.

``python -m tinygen`` and ``tinygen.cli.main()`` skip this step (NumPy is already loaded by then): there ``--threads``
still sets Numba's threads, and BLAS's through threadpoolctl when it is installed.
"""
import importlib.util
import os
import sys

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
OPENBLAS_THREAD_TIMEOUT = "24"  # see above; the benchmarks' workers get it too (benchmarks/harness.py)


def _threads_module():
    """tinygen/threads.py loaded on its own (it imports only ``os``), without running the package's __init__."""
    package = importlib.util.find_spec("tinygen")
    path = os.path.join(list(package.submodule_search_locations)[0], "threads.py")
    spec = importlib.util.spec_from_file_location("_tinygen_threads_before_numpy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _threads_option(argv):
    """The value given to --threads (the last one), or None when it is absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
    return value


def prepare_environment(argv, environ=os.environ):
    """Set the variables above in ``environ`` for the command line ``argv``; returns the thread count chosen (None
    when --threads has a bad value: the command's own parser reports it)."""
    environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    threads = _threads_module()
    given = _threads_option(argv)
    try:
        n = threads.thread_count("auto" if given is None else given)
    except ValueError:
        return None
    for name in THREAD_VARIABLES:
        if given is None:  # the default yields to counts set in the environment; an explicit --threads wins
            environ.setdefault(name, str(n))
        else:
            environ[name] = str(n)
    return n


def main():
    # ``tinygen bench`` sets every worker's threads itself; a count inherited from here would cap them
    if "numpy" not in sys.modules and sys.argv[1:2] != ["bench"]:
        prepare_environment(sys.argv[1:])
    from tinygen.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
