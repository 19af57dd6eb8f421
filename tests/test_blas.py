"""tinygen/kernels/blas.py: the choice of BLAS for host matrix products (NumPy's or MKL's) and MKL's product.

The MKL tests need the optional ``mkl`` package. Without it they are skipped with the reason, unless
TINYGEN_REQUIRE_MKL=1 (set by .ci/run, which installs it), where a missing MKL fails.
"""
import os

import numpy as np
import pytest

from tinygen import backend
from tinygen.kernels import blas, gemm
from tinygen.kernels import threads as kthreads


@pytest.fixture
def chosen(monkeypatch):
    """``choose(setting)``: blas.py's choice made again with TINYGEN_BLAS=setting; the choice before is put back."""
    monkeypatch.setattr(blas, "_state", None)

    def choose(setting):
        monkeypatch.setenv("TINYGEN_BLAS", setting)
        monkeypatch.setattr(blas, "_state", None)
        return blas.mkl()
    return choose


@pytest.fixture
def mkl(chosen):
    """MKL, chosen for tinygen's products (skipped without the mkl package, failed under TINYGEN_REQUIRE_MKL=1)."""
    lib = chosen("auto")
    if lib is None:
        if os.environ.get("TINYGEN_REQUIRE_MKL") == "1":
            pytest.fail("TINYGEN_REQUIRE_MKL=1 but MKL's runtime (libmkl_rt) was not found (pip install mkl)")
        pytest.skip("MKL is not installed (pip install mkl)")
    return lib


def _python(code, drop=(), **env):
    """Run ``code`` in a fresh Python with ``env`` added to the environment and the variables ``drop`` left out; its
    output (it must exit 0)."""
    import subprocess
    import sys
    full = {k: v for k, v in os.environ.items() if k not in drop}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(full, **env),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _reference(a, b):
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(a.dtype)


def _layouts(rng, m, k, n, dtype):
    """(name, a, b): each operand C-ordered, transposed (Fortran-ordered) and a strided view of a wider array."""
    def make(rows, cols, how):
        if how == "c":
            return rng.standard_normal((rows, cols)).astype(dtype)
        if how == "t":
            return rng.standard_normal((cols, rows)).astype(dtype).T
        return rng.standard_normal((rows, cols + 5)).astype(dtype)[:, 2:cols + 2]  # rows padded: lda > cols
    for how_a in ("c", "t", "view"):
        for how_b in ("c", "t", "view"):
            yield f"{how_a}@{how_b}", make(m, k, how_a), make(k, n, how_b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(16, 784, 512), (784, 16, 512), (300, 129, 77)])
def test_mkl_product_is_the_product_in_every_layout(mkl, m, k, n, dtype):
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for name, a, b in _layouts(np.random.default_rng(0), m, k, n, dtype):
        got = blas.matmul(a, b)
        assert got is not None, name
        assert got.shape == (m, n) and got.dtype == dtype and got.flags.c_contiguous, name
        expected = _reference(a, b)
        scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
        assert np.all(np.abs(got - expected) <= tol * scale + tol), name
        np.testing.assert_array_equal(blas.matmul(a, b), got)  # repeatable
        swapped = m <= gemm.SWAP_MAX_ROWS and b.size >= gemm.SWAP_MIN_SIZE and not b.flags.c_contiguous and \
            b.flags.f_contiguous
        # gemm.mm's product is MKL's, but for the swap route (MKL's product of the transposes) and the short
        # products that gemm_short.py's loops take (tests/test_gemm_short.py)
        if not swapped and gemm._short(a, b) is None:
            np.testing.assert_array_equal(gemm.mm(a, b), got)


def test_mkl_called_from_compiled_code_gives_the_ctypes_calls_bits(mkl, monkeypatch):
    """With Numba's kernels on, MKL's gemm is called from compiled code (mkl_call.py), else through ctypes: the same
    function with the same arguments, so the same bits, in every layout and both dtypes."""
    from tinygen import kernels
    expected = "compiled" if kernels.enabled() else "ctypes"
    assert blas.caller() == expected
    if expected == "ctypes":
        pytest.skip("Numba's kernels are off: only the ctypes call is in use (checked above)")
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        for name, a, b in _layouts(rng, 16, 784, 512, dtype):
            compiled = blas.matmul(a, b)
            with monkeypatch.context() as m:
                m.setattr(blas, "_state", blas._state[:2] + (None,))  # the ctypes call
                assert blas.caller() == "ctypes"
                through_ctypes = blas.matmul(a, b)
            np.testing.assert_array_equal(compiled, through_ctypes, err_msg=f"{name} {dtype.__name__}")
            assert not np.array_equal(compiled, np.zeros_like(compiled))


def test_read_only_operands_are_multiplied_as_writable_ones(mkl):
    """A read-only matrix (a frozen array, a loaded file's) is multiplied like a writable one, to the same bits."""
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        for name, a, b in _layouts(rng, 64, 256, 128, dtype):
            frozen_a, frozen_b = a.view(), b.view()  # the same layouts, read-only
            frozen_a.flags.writeable = frozen_b.flags.writeable = False
            got = blas.matmul(frozen_a, frozen_b)
            assert got is not None, name
            np.testing.assert_array_equal(got, blas.matmul(a, b), err_msg=name)


def test_mkl_without_numba_is_called_through_ctypes(mkl):
    """TINYGEN_NUMBA=0: MKL's products work through ctypes, and a product does not import Numba."""
    code = ("import sys, numpy as np\n"
            "from tinygen.kernels import blas\n"
            "a, b = np.arange(64 * 512, dtype=np.float32).reshape(64, 512) / 1e4, np.eye(512, dtype=np.float32)\n"
            "c = blas.matmul(a, b)\n"
            "print(blas.caller(), 'numba' in sys.modules, np.array_equal(c, a))\n")
    out = _python(code, TINYGEN_BLAS="mkl", TINYGEN_NUMBA="0")
    assert out.split() == ["ctypes", "False", "True"], out


def test_products_mkl_does_not_take_go_to_numpy(mkl):
    """Small products, integers, mixed dtypes, stacks and odd strides are NumPy's; gemm.mm is the product anyway."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((64, 256)).astype(np.float32), rng.standard_normal((256, 256)).astype(np.float32)
    assert blas.matmul(*big) is not None  # 4.2M multiply-adds: MKL's
    assert blas.matmul(big[0][:, :64], big[1][:64, :64 + 1]) is not None  # just over MIN
    cases = {
        "small": (big[0][:, :64], big[1][:64, :64]),  # MIN multiply-adds: OpenBLAS runs it on the calling thread
        "integers": (rng.integers(0, 5, (64, 256)), rng.integers(0, 5, (256, 256))),
        "mixed dtypes": (big[0], big[1].astype(np.float64)),
        "a stack": (rng.standard_normal((2, 64, 256)).astype(np.float32), np.stack([big[1]] * 2)),
        "every other element": (rng.standard_normal((64, 512)).astype(np.float32)[:, ::2], big[1]),
        "empty": (np.zeros((0, 256), np.float32), big[1]),
    }
    for name, (a, b) in cases.items():
        assert blas.matmul(a, b) is None, name
        got = gemm.mm(a, b)
        np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("setting", ["auto", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_product_under_small_is_numpys_own(chosen, setting, dtype):
    """gemm.mm hands a product of fewer than gemm.SMALL multiply-adds to NumPy's ``@`` before asking any route:
    each route gives that there (gemm_short.py's loops start at SMALL, MKL's products above blas.MIN), so the bits
    are those of every route, with MKL chosen or not."""
    chosen(setting)
    assert gemm.SMALL <= blas.MIN
    rng = np.random.default_rng(4)
    for m, k, n in [(16, 400, 20), (20, 16, 400), (400, 16, 20), (16, 20, 400), (1, 8191, 16), (64, 64, 31)]:
        assert m * k * n < gemm.SMALL
        for name, a, b in _layouts(rng, m, k, n, dtype):
            np.testing.assert_array_equal(gemm.mm(a, b), a @ b, err_msg=f"{m}x{k}x{n} {name}")


def test_the_cpu_standin_multiplies_through_mkl_with_the_cpus_bits(mkl):
    """The stand-in's products are MKL's too (products whose bits differ between MKL and OpenBLAS included: a
    batch of 16 through a 784 -> 512 layer, and (100, 1000) @ (1000, 100), where the two sum in other orders)."""
    rng = np.random.default_rng(2)
    a, w = rng.standard_normal((64, 512)).astype(np.float32), rng.standard_normal((300, 512)).astype(np.float32)
    x16, w1 = rng.standard_normal((16, 784)).astype(np.float32), rng.standard_normal((784, 512)).astype(np.float32)
    p, q = rng.standard_normal((100, 1000)).astype(np.float32), rng.standard_normal((1000, 100)).astype(np.float32)
    st = backend.standin.asarray
    for x, y in ((a, w.T), (a[:8], w.T), (a.T, a), (x16, w1), (p, q)):
        np.testing.assert_array_equal(gemm.mm(st(x), st(y)).get(), gemm.mm(x, y))


def test_mkl_threads_follow_tinygen_and_one_thread_routes(mkl):
    import tinygen as tg
    tg.set_num_threads(1)
    assert blas.get_num_threads() == 1
    tg.set_num_threads(2)
    assert blas.get_num_threads() == 2
    seen = kthreads.on_one_blas_thread(lambda count: (count, blas.get_num_threads()))
    assert seen == (2, 1)  # lowered inside, and the count it had is passed on
    assert blas.get_num_threads() == 2  # and set back


def test_numpy_setting_leaves_mkl_out(chosen):
    assert chosen("numpy") is None and blas.name() == "numpy"
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((64, 256)).astype(np.float32), rng.standard_normal((256, 256)).astype(np.float32)
    assert blas.matmul(a, b) is None
    np.testing.assert_array_equal(gemm.mm(a, b), a @ b)  # NumPy's bits


def test_an_mkl_without_the_products_is_passed_over(chosen, monkeypatch):
    """A libmkl_rt that loads but lacks cblas_sgemm (say, an old or a stub one) is not used."""
    import ctypes
    import ctypes.util
    libm = ctypes.util.find_library("m")  # libm: it loads and has no cblas_sgemm
    if libm is None:
        pytest.skip("no libm to stand in for an MKL without the products")
    assert not hasattr(ctypes.CDLL(libm), "cblas_sgemm")
    monkeypatch.setattr(blas.glob, "glob", lambda pattern: [libm])
    monkeypatch.setattr(blas.ctypes.util, "find_library", lambda name: None)
    assert blas._load() is None
    assert chosen("auto") is None and blas.name() == "numpy"
    with pytest.raises(RuntimeError, match="cblas_sgemm"):
        chosen("mkl")


def test_mkl_setting_without_mkl_names_what_is_missing(chosen, monkeypatch):
    monkeypatch.setattr(blas, "_load", lambda: None)
    with pytest.raises(RuntimeError, match=r"TINYGEN_BLAS=mkl.*libmkl_rt.*pip install mkl"):
        chosen("mkl")
    assert chosen("auto") is None and blas.name() == "numpy"  # auto falls back quietly


def test_a_bad_setting_names_the_variable(chosen):
    with pytest.raises(ValueError, match="TINYGEN_BLAS='openblas'.*auto, numpy, mkl"):
        chosen("openblas")


def test_mkl_is_loaded_with_a_short_spin(mkl, chosen, monkeypatch):
    """KMP_BLOCKTIME is set before MKL's OpenMP runtime loads unless the user set it."""
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    chosen("auto")
    assert os.environ["KMP_BLOCKTIME"] == blas.KMP_BLOCKTIME
    monkeypatch.setenv("KMP_BLOCKTIME", "50")
    chosen("auto")
    assert os.environ["KMP_BLOCKTIME"] == "50"


def test_with_mkl_a_layers_two_gradient_products_run_one_after_the_other(mkl, monkeypatch):
    """gemm.mm_pair's products at once are for OpenBLAS's threads; with MKL they run one after the other."""
    calls = []
    real = kthreads.run_pair
    monkeypatch.setattr(kthreads, "run_pair", lambda f, s: calls.append(1) or real(f, s))
    monkeypatch.setattr(kthreads, "get_num_threads", lambda: 2)
    monkeypatch.setattr(gemm, "PAIR_MAX_ROWS", 32)  # pairs on, as they would run with NumPy's BLAS
    rng = np.random.default_rng(4)
    g, w, x = (rng.standard_normal(s).astype(np.float32) for s in ((16, 784), (784, 640), (16, 640)))
    gx, gw = gemm.mm_pair(g, w, g.T, x)
    assert calls == []
    np.testing.assert_array_equal(gx, gemm.mm(g, w))
    np.testing.assert_array_equal(gw, gemm.mm(g.T, x))


# ---- Numba's loops on MKL's OpenMP threads (threads._arrange_layer) ------------------------------------------------
_ONE_POOL = r"""
import ctypes, os, platform, sys
import numpy as np
from numba import njit, prange
import tinygen
from tinygen.kernels import blas, cpu, threads
import numba

_syscall = ctypes.CDLL(None).syscall
_syscall.restype, _syscall.argtypes = ctypes.c_long, [ctypes.c_long]
GETTID = {"x86_64": 186, "aarch64": 178}[platform.machine()]


@njit(parallel=True)
def _tids(out):  # the OS thread that runs each iteration
    for i in prange(out.size):
        out[i] = _syscall(GETTID)


tinygen.set_num_threads(2)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((64, 256)).astype(np.float32), rng.standard_normal((256, 512)).astype(np.float32)
c = blas.matmul(a, b)  # MKL's threads start
c1 = threads.on_one_blas_thread(lambda count: blas.matmul(a, b))  # MKL's bits on one thread
print("mkl", blas.mkl() is not None and c is not None)
before = {int(t) for t in os.listdir("/proc/self/task")}  # MKL's threads, none of Numba's loops run yet
p, g = rng.standard_normal(1 << 17).astype(np.float32), rng.standard_normal(1 << 17).astype(np.float32)
q = p.copy()
expected = p.copy()
for k in range(p.size):  # SGD without momentum, element by element (float32 as the kernel rounds it)
    expected[k] = p[k] - np.float32(1e-2) * g[k]
print("split", threads.update_chunks(p.size, cpu._threads))
cpu.sgd_steps([p], [g], None, 1e-2)
assert np.array_equal(p, expected)
layer = numba.threading_layer()
tids = np.zeros(2, np.int64)
_tids(tids)
print("layer", layer)
print("threads", len(set(tids.tolist())), "new", len(set(tids.tolist()) - before))

pid = os.fork()  # a forked child: products on MKL, updates on the calling thread (Numba would end it otherwise)
if pid == 0:  # where GNU OpenMP may take MKL's calls, MKL runs on one thread there (exit 10), whatever is asked
    tinygen.set_num_threads(2)
    one = blas._forked_on_gnu
    ok = np.array_equal(blas.matmul(a, b), c1 if one else c) and threads._serial_only == (layer == "omp") and \
        blas.get_num_threads() == (1 if one else None if blas.mkl() is None else 2)
    cpu.sgd_steps([q], [g], None, 1e-2)
    os._exit((10 if one else 0) if ok and np.array_equal(q, expected) else 3)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def _layer_run(code, **env):
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the check reads Linux's thread ids")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: nothing runs on a second thread")
    pytest.importorskip("numba")
    out = _python(code, drop=("NUMBA_THREADING_LAYER", "TINYGEN_BLAS"), **{**env, "TINYGEN_NUMBA": "1",
                                                                            "NUMBA_NUM_THREADS": "2"})
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_numbas_loops_run_on_mkls_openmp_threads(mkl):
    """With MKL's products, Numba's parallel loops run on the threads MKL's products run on (no second pool): its
    two iterations on threads that existed before the loop; a forked child runs updates on one thread, the same
    bits, and MKL's products there work."""
    seen = _layer_run(_ONE_POOL)
    assert seen["mkl"] == "True" and seen["split"] == "2"
    assert seen["layer"] == "omp"
    assert seen["threads"] == "2 new 0", seen
    assert seen["child"] == "0"


_GOMP = "import ctypes, os; ctypes.CDLL('libgomp.so.1', os.RTLD_GLOBAL)\n"


@pytest.mark.parametrize("env, code", [({"NUMBA_THREADING_LAYER": "workqueue"}, ""),
                                       ({"TINYGEN_BLAS": "numpy"}, ""),
                                       ({}, _GOMP),
                                       ({}, "from tinygen.kernels import blas; blas.mkl()\n" + _GOMP)],
                         ids=["layer-asked-for", "numpy-blas", "gnu-openmp-loaded", "gnu-openmp-after-mkl"])
def test_numbas_layer_is_left_alone(mkl, env, code):
    """Numba chooses its layer as it would: when the user asks for one, without MKL's products, and when GNU OpenMP
    is loaded already (its calls would go there). A forked child's products work in each case: with GNU OpenMP
    loaded before MKL's first product, MKL's OpenMP calls may go there too, and a child runs MKL on one thread (on
    two it would wait forever)."""
    if code:
        import ctypes.util
        if ctypes.util.find_library("gomp") is None:
            pytest.skip("no GNU OpenMP here")
    seen = _layer_run(code + _ONE_POOL, **env)
    assert seen["layer"] != "omp"
    assert seen["child"] == ("10" if code else "0")


def test_a_missing_mkl_asked_for_is_reported_by_the_product_not_by_the_thread_count():
    """TINYGEN_BLAS=mkl without MKL: Numba's threads start as usual (the layer is left to Numba); the first product
    raises the error naming what is missing."""
    pytest.importorskip("numba")
    code = ("from tinygen.kernels import blas\n"
            "blas._load = lambda: None\n"
            "import numpy as np, tinygen\n"
            "from tinygen.kernels import gemm\n"
            "assert tinygen.get_num_threads() >= 1\n"
            "try:\n"
            "    gemm.mm(np.ones((64, 512)), np.ones((512, 512)))\n"
            "except RuntimeError as e:\n"
            "    print(e)\n")
    out = _python(code, TINYGEN_BLAS="mkl", TINYGEN_NUMBA="1")
    assert "TINYGEN_BLAS=mkl" in out and "pip install mkl" in out
