"""tinygen/kernels/gemm_short.py: short float32 products in Numba's vector registers, and gemm.mm's route to them."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("numba")

from tinygen import backend, config, kernels  # noqa: E402
from tinygen.kernels import gemm, gemm_short, threads  # noqa: E402

pytestmark = pytest.mark.skipif(not config.get("TINYGEN_NUMBA"), reason="TINYGEN_NUMBA=0 in this run: Numba and "
                                "these loops are switched off (gemm.mm's route to BLAS then: test_blas.py)")


def _close_to_the_product(got, a, b):
    """Within float32 rounding of the exact product: |error| <= 1e-5 * (|a| @ |b|) in each entry."""
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert got.shape == exact.shape and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.all(np.abs(got - exact) <= 1e-5 * scale + 1e-30)


def _operands(rng, m, k, n, form):
    """a (m, k) and b (k, n) in the layout a form reads: "nn" rows of b contiguous (a C- or Fortran-ordered), "nt"
    b the transpose of a C-ordered (n, k) array (W.T of a Linear layer)."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    if form == "nn":
        return a, rng.standard_normal((k, n)).astype(np.float32)
    if form == "nn-fortran-a":
        return np.asfortranarray(a), rng.standard_normal((k, n)).astype(np.float32)
    return a, rng.standard_normal((n, k)).astype(np.float32).T


@pytest.fixture(params=["serial", "parallel"])
def split(request, monkeypatch):
    """The tiles on the calling thread, or split over Numba's threads from the first multiply-add."""
    if request.param == "serial":
        monkeypatch.setattr(gemm_short, "PARALLEL_MIN", float("inf"))
    else:
        monkeypatch.setattr(gemm_short, "PARALLEL_MIN", 0)
        if not threads.split_from(1, 0, threads.numba_threads):
            pytest.skip("Numba has one thread here, or its workqueue layer: the tiles are not split")
    return request.param


@pytest.fixture
def every_row_count(monkeypatch):
    monkeypatch.setattr(gemm_short, "MAX_ROWS", 1 << 30)


FORMS = ["nn", "nn-fortran-a", "nt"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m, k, n", [(16, 784, 512), (1, 512, 256), (3, 272, 176), (13, 400, 784), (64, 512, 10 * 16),
                                     (7, 1024, 96)])
def test_each_form_is_the_product(every_row_count, split, form, m, k, n):
    """Whole tiles, the rows after the last group of 4 and the columns after the last whole tile (64 columns of
    the outer-product form, 4 of the dot-product form) are each the product to float32 rounding."""
    a, b = _operands(np.random.default_rng(m * k + n), m, k, n, form)
    got = gemm_short.mm(a, b)
    assert got is not None
    _close_to_the_product(got, a, b)


@pytest.mark.parametrize("m, k, n", [(512, 16, 784), (784, 64, 512), (130, 8, 128), (1024, 1, 784), (1030, 3, 64)])
def test_a_weight_gradient_with_a_short_k_is_the_product(split, m, k, n):
    """g.T @ x of a layer (the batch is k): the outer-product form, a's columns contiguous."""
    rng = np.random.default_rng(m + k)
    g, x = rng.standard_normal((k, m)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    got = gemm_short.mm(g.T, x)
    assert got is not None
    _close_to_the_product(got, g.T, x)


def _taken(m, k, n, form):
    """The products mm's docstring says it takes (MAX_ROWS as set)."""
    rows = gemm_short.MAX_ROWS
    if n < 64 or n % 16 or m * k * n < gemm_short.MIN:
        return False
    if form == "nt":
        return m <= rows and k >= 256 and k % 16 == 0
    return min(m, k) <= rows


@given(m=st.integers(1, 70), k=st.integers(1, 1100), n16=st.integers(1, 40), form=st.sampled_from(FORMS),
       seed=st.integers(0, 2**16))
def test_random_shapes_are_the_product_or_left_to_blas(m, k, n16, form, seed):
    a, b = _operands(np.random.default_rng(seed), m, k, 16 * n16, form)
    got = gemm_short.mm(a, b)
    if _taken(m, k, 16 * n16, form):
        _close_to_the_product(got, a, b)
    else:
        assert got is None


@given(m=st.integers(65, 700), k=st.integers(1, 80), n16=st.integers(4, 60), seed=st.integers(0, 2**16))
def test_random_weight_gradients_are_the_product_or_left_to_blas(m, k, n16, seed):
    rng = np.random.default_rng(seed)
    g, x = rng.standard_normal((k, m)).astype(np.float32), rng.standard_normal((k, 16 * n16)).astype(np.float32)
    got = gemm_short.mm(g.T, x)
    if _taken(m, k, 16 * n16, "nn"):
        _close_to_the_product(got, g.T, x)
    else:
        assert got is None


@pytest.mark.parametrize("form, m, k, n", [(form, 16, 784, 512) for form in FORMS] + [("nn-fortran-a", 1030, 16, 64)])
def test_the_bits_do_not_depend_on_the_thread_split(form, m, k, n, monkeypatch):
    """Each entry is summed by one thread in one order: serial and split (by columns, or by rows where there are
    few columns) give the same bits."""
    a, b = _operands(np.random.default_rng(3), m, k, n, form)
    monkeypatch.setattr(gemm_short, "PARALLEL_MIN", float("inf"))
    serial = gemm_short.mm(a, b)
    monkeypatch.setattr(gemm_short, "PARALLEL_MIN", 0)
    if not threads.split_from(1, 0, threads.numba_threads):
        pytest.skip("Numba has one thread here, or its workqueue layer: the tiles are not split")
    np.testing.assert_array_equal(gemm_short.mm(a, b), serial)


def test_the_loops_start_where_gemm_stops_handing_products_to_numpy():
    """gemm.mm gives a product under gemm.SMALL multiply-adds to NumPy's ``@`` before asking this module: a MIN
    under SMALL would leave products between them to NumPy, not to the loops."""
    assert gemm_short.MIN >= gemm.SMALL


@pytest.mark.parametrize("what, a, b", [
    ("float64", np.ones((16, 512)), np.ones((512, 512))),
    ("x @ W.T with k under 256", np.ones((16, 240), np.float32), np.ones((512, 240), np.float32).T),
    ("n under 64", np.ones((16, 512), np.float32), np.ones((512, 48), np.float32)),
    ("x @ W.T with k not a multiple of 16", np.ones((16, 520), np.float32), np.ones((512, 520), np.float32).T),
    ("n not a multiple of 16", np.ones((16, 512), np.float32), np.ones((512, 520), np.float32)),
    ("neither m nor k short", np.ones((80, 80), np.float32), np.ones((80, 512), np.float32)),
    ("under MIN multiply-adds", np.ones((4, 128), np.float32), np.ones((128, 64), np.float32)),
    ("b strided both ways", np.ones((16, 512), np.float32), np.ones((1024, 512), np.float32)[::2, ::2]),
    ("nt with a's rows strided", np.ones((16, 1024), np.float32)[:, ::2], np.ones((256, 512), np.float32).T),
    ("a stack", np.ones((2, 16, 512), np.float32), np.ones((2, 512, 512), np.float32)),
])
def test_products_it_does_not_take_are_left_to_blas(what, a, b):
    assert gemm_short.mm(a, b) is None, what


def test_rows_above_the_setting_are_left_to_blas(monkeypatch):
    a, b = _operands(np.random.default_rng(0), 32, 256, 64, "nn")
    monkeypatch.setattr(gemm_short, "MAX_ROWS", 31)
    assert gemm_short.mm(a, b) is None
    monkeypatch.setattr(gemm_short, "MAX_ROWS", 32)
    assert gemm_short.mm(a, b) is not None


@pytest.mark.parametrize("text, features, with_mkl, rows", [
    ("auto", {"avx512f": True}, True, 64), ("auto", {"avx2": True}, True, 0), ("auto", {"avx512f": True}, False, 0),
    ("0", {"avx512f": True}, True, 0), ("128", {}, False, 128)])
def test_the_setting_and_its_auto_choice(monkeypatch, text, features, with_mkl, rows):
    """auto: on where the CPU has AVX-512 and the other products are MKL's (one pool of threads with Numba's)."""
    from llvmlite import binding
    from tinygen.kernels import blas
    monkeypatch.setenv("TINYGEN_MM_SHORT_MAX_ROWS", text)
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: features)
    monkeypatch.setattr(blas, "mkl", lambda: object() if with_mkl else None)
    assert gemm_short._max_rows() == rows


def test_auto_is_off_when_numba_compiles_for_another_cpu(monkeypatch):
    """NUMBA_CPU_NAME (e.g. generic, for a cache shared between machines): the vectors may not be AVX-512's."""
    import numba
    from llvmlite import binding
    from tinygen.kernels import blas
    monkeypatch.setenv("TINYGEN_MM_SHORT_MAX_ROWS", "auto")
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: {"avx512f": True})
    monkeypatch.setattr(blas, "mkl", lambda: object())
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    assert gemm_short._max_rows() == 0
    monkeypatch.setattr(numba.config, "CPU_NAME", None)
    assert gemm_short._max_rows() == 64


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("TINYGEN_MM_SHORT_MAX_ROWS", "some")
    with pytest.raises(ValueError, match="TINYGEN_MM_SHORT_MAX_ROWS='some'"):
        gemm_short._max_rows()


@pytest.fixture
def short_on(monkeypatch):
    monkeypatch.setattr(gemm_short, "MAX_ROWS", 64)


def _route(monkeypatch, numba_setting):
    """gemm.py's route for short products chosen again, as a process started with TINYGEN_NUMBA=numba_setting."""
    monkeypatch.setenv("TINYGEN_NUMBA", numba_setting)
    monkeypatch.setattr(gemm, "_short_mm", None)


def test_gemm_takes_short_products_through_the_loops(short_on, monkeypatch):
    """gemm.mm (every op's product) runs a Linear layer's batch-16 products on these loops where Numba is on, and
    on BLAS where TINYGEN_NUMBA=0: the same product, other bits."""
    rng = np.random.default_rng(1)
    x, w, g = (rng.standard_normal(s).astype(np.float32) for s in ((16, 784), (512, 784), (16, 512)))
    _route(monkeypatch, "1")
    forward, input_grad = gemm.mm(x, w.T), gemm.mm(g, w)
    np.testing.assert_array_equal(forward, gemm_short.mm(x, w.T))
    np.testing.assert_array_equal(input_grad, gemm_short.mm(g, w))
    _route(monkeypatch, "0")
    blas_forward = gemm.mm(x, w.T)
    assert not np.array_equal(blas_forward, forward)  # BLAS's own sums: the setting is honoured
    _close_to_the_product(blas_forward, x, w.T)


def test_the_route_is_the_processs_not_the_kernel_switch(short_on, monkeypatch):
    """Like the choice of BLAS, the route stays when the Numba kernels are switched off at run time
    (kernels.enabled_as(False), the plain array code for comparisons): product bits depend on the route alone."""
    rng = np.random.default_rng(6)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((16, 784), (512, 784)))
    _route(monkeypatch, "1")
    on = gemm.mm(x, w.T)
    with kernels.enabled_as(False):
        np.testing.assert_array_equal(gemm.mm(x, w.T), on)


def test_the_cuda_standin_gets_the_cpus_bits(short_on, monkeypatch):
    """The stand-in takes the CPU's route: device code gives the CPU's bits."""
    rng = np.random.default_rng(2)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((16, 784), (512, 784)))
    _route(monkeypatch, "1")
    device = gemm.mm(backend.StandinArray(x), backend.StandinArray(w).T)
    assert type(device) is backend.StandinArray
    np.testing.assert_array_equal(device.host_array, gemm_short.mm(x, w.T))


def test_a_linear_layers_gradients_through_the_loops_match_torch(short_on, monkeypatch):
    """A Linear layer at batch 16 (forward x @ W.T, input gradient g @ W on these loops) against PyTorch."""
    torch = pytest.importorskip("torch")
    import tinygen as tg
    rng = np.random.default_rng(5)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((16, 784), (512, 784), (512,)))
    calls = []
    monkeypatch.setattr(gemm, "_short_mm", lambda a, b: calls.append(a.shape) or gemm_short.mm(a, b))
    tx, tw, tb = (tg.tensor(v, requires_grad=True) for v in (x, w, b))
    out = tg.nn.functional.linear(tx, tw, tb)
    (out * out).sum().backward()
    assert (16, 784) in calls and (16, 512) in calls  # the forward and the input gradient went through the loops
    px, pw, pb = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    pout = torch.nn.functional.linear(px, pw, pb)
    (pout * pout).sum().backward()
    for ours, theirs in ((out, pout), (tx.grad, px.grad), (tw.grad, pw.grad), (tb.grad, pb.grad)):
        ref = theirs.detach().numpy()
        np.testing.assert_allclose(ours.detach().numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
