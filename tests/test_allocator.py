"""tinygen.allocator: freed host memory is kept for reuse (glibc), so remaking an array of the same size does not
page-fault it in again. Importing tinygen leaves malloc alone; a program opts in with one call, and the tinygen
command does so unless TINYGEN_KEEP_FREED_MEMORY is off."""
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import pytest

import tinygen
from tinygen import allocator

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the setting exists only with glibc's malloc")


def _faults_remaking(nbytes, times=20):
    """Minor page faults while an array of ``nbytes`` is made, written and freed ``times`` times."""
    np.ones(nbytes // 4, np.float32)  # the first one may fault in any case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        a = np.ones(nbytes // 4, np.float32)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture
def restore():
    was = allocator.freed_memory_kept()
    yield
    allocator.keep_freed_memory(was)


@glibc
def test_kept_memory_is_reused_without_page_faults(restore):
    # 2 MiB: below the 4 MiB from which NumPy asks for transparent huge pages (then one fault maps 2 MiB, and the
    # count no longer shows the difference), above glibc's default 128 KiB mmap threshold
    size = 2 << 20
    pages = size // 4096
    assert tinygen.keep_freed_memory(False) is False and not allocator.freed_memory_kept()
    returned = _faults_remaking(size)
    assert tinygen.keep_freed_memory(True) is True and allocator.freed_memory_kept()
    kept = _faults_remaking(size)
    assert returned > 10 * pages, f"with glibc's defaults each 2 MiB array should fault in again ({returned})"
    assert kept < pages, f"kept memory should be reused without faulting it in again ({kept} faults)"


def _faults_remaking_many(count, nbytes, times=4):
    """Minor page faults while ``count`` arrays of ``nbytes`` are made, written and all freed, ``times`` times:
    a step that frees more than one block at once, at the top of the heap."""
    for _ in range(2):  # the first rounds may fault in any case
        arrays = [np.ones(nbytes // 4, np.float32) for _ in range(count)]
        del arrays
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        arrays = [np.ones(nbytes // 4, np.float32) for _ in range(count)]
        del arrays
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_a_step_freeing_more_than_128_mib_at_once_reuses_it(restore, monkeypatch):
    # six 30 MiB arrays (heap blocks: below the 32 MiB mmap threshold), 180 MiB freed together each round: DCGAN's
    # batch-256 step frees that much, and with 128 MiB kept the heap's top went back to the system every step
    count, size = 6, 30 << 20
    huge_pages = count * size // (2 << 20)  # the fewest faults that remaking them from the system can cost
    assert tinygen.keep_freed_memory(True)
    kept = _faults_remaking_many(count, size)
    monkeypatch.setitem(allocator.KEEP, allocator.M_TRIM_THRESHOLD, 128 << 20)
    assert tinygen.keep_freed_memory(True)
    trimmed = _faults_remaking_many(count, size)
    assert trimmed >= 4 * huge_pages, f"with 128 MiB kept the freed 180 MiB should go back each round ({trimmed})"
    assert kept < huge_pages // 4, f"the freed 180 MiB should be reused without faulting it in again ({kept})"


# In a fresh interpreter, with ctypes watched: glibc's settings cannot be read back, so the tests see the calls.
_PROBE = """
import ctypes
calls = []
class Watched(ctypes.CDLL):
    def __getattr__(self, name):
        if name == "mallopt":
            calls.append(name)
        return super().__getattr__(name)
ctypes.CDLL = Watched
{setup}
from tinygen import allocator
print(allocator.freed_memory_kept(), len(calls))
"""


def _probe(setup, env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "TINYGEN_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["TINYGEN_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_importing_tinygen_leaves_malloc_alone():
    assert _probe("import tinygen, tinygen.nn, tinygen.optim, tinygen.models") == (False, 0)


@glibc
def test_one_call_keeps_freed_memory():
    kept, calls = _probe("import tinygen\ntinygen.keep_freed_memory()")
    assert kept and calls == 1


@pytest.mark.parametrize("value, kept", [("0", False), ("off", False), ("1", True), (None, True)])
def test_the_command_applies_the_setting(value, kept):
    """tinygen's command line keeps freed memory unless TINYGEN_KEEP_FREED_MEMORY is off (a bad value is refused)."""
    setup = ("from tinygen import cli\n"
             "cli.build_parser = lambda: (_ for _ in ()).throw(SystemExit(0))  # stop after the setting is applied\n"
             "try:\n    cli.main(['eval', 'nothing'])\nexcept SystemExit:\n    pass")
    got, _ = _probe(setup, value)
    assert got == (kept and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv("TINYGEN_KEEP_FREED_MEMORY", "maybe")
    with pytest.raises(ValueError, match="TINYGEN_KEEP_FREED_MEMORY='maybe'"):
        allocator.apply_setting()
