"""How many threads to use: ``thread_count("auto")`` is the number of CPUs no other process is using (the usable
CPUs less the 1-minute load average, at least 1). On a busy machine, threads beyond that wait at every parallel
barrier for a core another process holds, and spin while they wait. Under an MPI launcher that did not bind its
processes to cores, the processes it started on this machine share those CPUs.

This module imports nothing but ``os``, so the ``tinygen`` command's launcher (``tinygen_launcher.py``) can load it
before NumPy and its BLAS are loaded. Applying a count (Numba and BLAS threads) is ``tinygen.set_num_threads``, in
``tinygen/kernels/threads.py``.
"""
import os


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


def local_processes():
    """The number of processes an MPI launcher started on this machine (Open MPI, MPICH's Hydra); 1 outside one."""
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        text = os.environ.get(name, "")
        if text.isdigit() and int(text) > 0:
            return int(text)
    return 1


def thread_count(value="auto"):
    """The number of threads ``value`` asks for: for "auto", ``idle_cpus()``, shared among the processes an MPI
    launcher started on this machine when each may run on every CPU (the launcher did not bind them); else the
    positive integer itself."""
    value = parse_thread_count(value)
    if value != "auto":
        return value
    n, sharing = idle_cpus(), local_processes()
    if sharing > 1 and usable_cpus() >= (os.cpu_count() or 1):
        n = max(1, n // sharing)
    return n
