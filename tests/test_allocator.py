"""tinygen.allocator: freed host memory is kept for reuse (glibc), so remaking an array of the same size does not
page-fault it in again; it can be turned off, at import by the environment or by a call."""
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


@pytest.mark.parametrize("value, kept", [("0", False), ("off", False), ("1", True), (None, True)])
def test_environment_switch_at_import(value, kept):
    env = {k: v for k, v in os.environ.items() if k != "TINYGEN_KEEP_FREED_MEMORY"}
    if value is not None:
        env["TINYGEN_KEEP_FREED_MEMORY"] = value
    out = subprocess.run([sys.executable, "-c", "import tinygen; print(tinygen.allocator.freed_memory_kept())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    expect_kept = kept and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == str(expect_kept)
