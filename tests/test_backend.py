"""The device switch (backend.array_module) and the CPU stand-in that plays CuPy in tests without a GPU."""
import sys

import numpy as np
import pytest

import tinygen as tg
from tinygen import backend


def test_cpu_array_module_is_numpy():
    assert backend.array_module("cpu") is np
    assert tg.zeros(2).xp is np
    assert backend.normalize_device("cuda:0") == "cuda" and backend.normalize_device(None) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tg.zeros(2, device="tpu")


def test_cuda_without_cupy_is_a_clear_runtime_error(monkeypatch):
    monkeypatch.delenv("TINYGEN_CUDA_STANDIN", raising=False)
    monkeypatch.delitem(backend._modules, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail, as when it is not installed
    with pytest.raises(RuntimeError, match="device='cuda' needs CuPy, which is not installed"):
        tg.zeros(2, device="cuda")
    with pytest.raises(RuntimeError, match="needs CuPy"):
        tg.tensor([1.0]).cuda()
    assert not tg.is_available("cuda")
    assert "cuda" not in backend._modules  # a failed load is not cached


def test_standin_env_switch(monkeypatch):
    monkeypatch.delitem(backend._modules, "cuda", raising=False)
    monkeypatch.setenv("TINYGEN_CUDA_STANDIN", "1")
    try:
        t = tg.ones(2, device="cuda")
        assert isinstance(t.data, backend.StandinArray) and t.xp is backend.standin
    finally:
        backend._modules.pop("cuda", None)


def test_synchronize_waits_on_cupy_only(monkeypatch):
    # nothing to wait for on the CPU, the stand-in, or before CUDA was used (and no CuPy import then)
    monkeypatch.delitem(backend._modules, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    tg.synchronize()
    tg.synchronize("cpu")
    with backend.cuda_standin():
        tg.synchronize("cuda:0")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tg.synchronize("tpu")
    waited = []

    class FakeDevice:  # what synchronize calls on a real CuPy
        def synchronize(self):
            waited.append(True)

    class FakeCupy:
        class cuda:  # noqa: N801 - CuPy's name
            pass
    FakeCupy.cuda.Device = FakeDevice
    monkeypatch.setitem(backend._modules, "cuda", FakeCupy)
    tg.synchronize("cpu")
    assert not waited
    tg.synchronize("cuda")
    assert waited == [True]


@pytest.fixture
def standin():
    with backend.cuda_standin() as xp:
        yield xp


def test_standin_refuses_implicit_conversion_to_numpy(standin):
    a = tg.ones(3, device="cuda").data
    for convert in (np.asarray, np.array, lambda v: np.asarray(v, dtype=np.float64), lambda v: np.array([v])):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
            convert(a)
    np.testing.assert_array_equal(a.get(), [1, 1, 1])  # the explicit way
    np.testing.assert_array_equal(standin.asnumpy(a), [1, 1, 1])


def test_standin_refuses_numpy_functions(standin):
    a = tg.ones(3, device="cuda").data
    with pytest.raises(TypeError, match="numpy ufunc called on a device array"):
        np.exp(a)
    with pytest.raises(TypeError, match="numpy function called on a device array"):
        np.concatenate([a, a])
    with pytest.raises(TypeError, match="numpy ufunc called on a device array"):
        np.add(a, 1.0, out=a)


def test_standin_refuses_mixing_host_and_device_arrays(standin):
    a = tg.ones(3, device="cuda").data
    host = np.ones(3)
    with pytest.raises(TypeError, match="host numpy.ndarray mixed with device arrays"):
        a + host
    with pytest.raises(TypeError):
        host + a
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        standin.maximum(a, host)


def test_standin_accepts_scalars_like_cupy(standin):
    a = tg.tensor([1.0, 2.0], device="cuda").data
    for out in (np.float32(1) - a, a * 2.0, 3 ** a, np.float64(2) / a):
        assert isinstance(out, backend.StandinArray)
    np.testing.assert_allclose((np.float32(1) - a).get(), [0.0, -1.0])
    target = standin.zeros(3)
    standin.add.at(target, standin.asarray([0, 0, 2]), standin.asarray([1.0, 2.0, 3.0]))  # scatter-add
    np.testing.assert_array_equal(target.get(), [3, 0, 3])


def test_standin_unary_ops_of_a_0d_array_give_a_0d_device_array(standin):
    """As CuPy's: NumPy gives a scalar for ``-a`` of a 0-d array, which the stand-in wrapped as it was, so that a
    gradient summed into it in place (a 0-d leaf's ``.grad += g``, found by a random graph) raised."""
    a = standin.asarray(np.array(1.5))
    for out in (-a, abs(a), ~standin.asarray(np.array(True))):
        assert isinstance(out, backend.StandinArray) and out.shape == ()
    b = -a
    b += a
    assert b.get() == 0.0
    x = tg.tensor(0.5, dtype=tg.float64, device="cuda", requires_grad=True)
    (-x).backward()
    (-x).backward()
    assert x.grad.item() == -2.0


def test_reversed_scalar_ops_and_scatter_on_cuda(device):
    # regression: `1 - t` and repeated-index gradients broke on the stand-in (NumPy scalar on the left of a device
    # array; add.at not reachable), and two constants met as a host array on a device tensor
    x = tg.tensor([0.5, -1.0, 2.0], dtype=tg.float64, device=device, requires_grad=True)
    y = (1 - x * x) + 2 / (x + 3) + 2 ** x + x.tanh() + x ** 3
    picked = x[tg.tensor([0, 0, 2], device=device)]
    (y.sum() + picked.sum()).backward()
    xv = np.array([0.5, -1.0, 2.0])
    expected = -2 * xv - 2 / (xv + 3) ** 2 + np.log(2) * 2 ** xv + 1 - np.tanh(xv) ** 2 + 3 * xv ** 2
    expected += [2, 0, 1]  # x[0] was picked twice
    np.testing.assert_allclose(x.grad.cpu().numpy(), expected, rtol=1e-12)
    assert x.grad.device == device
    assert tg.gradgradcheck(lambda t: (t ** 3).sum(), (x.detach().requires_grad_(),))


def test_to_cuda_and_back_round_trip_with_gradients(standin):
    x = tg.tensor([[1.0, -2.0], [3.0, 4.0]], requires_grad=True)
    xc = x.to("cuda")
    assert xc.device == "cuda" and isinstance(xc.data, backend.StandinArray) and xc.grad_fn is not None
    assert xc.dtype == x.dtype
    y = (xc * xc).to("cpu")
    assert y.device == "cpu" and isinstance(y.data, np.ndarray)
    np.testing.assert_array_equal(y.detach().numpy(), x.detach().numpy() ** 2)
    y.sum().backward()
    assert x.grad.device == "cpu" and isinstance(x.grad.data, np.ndarray)
    np.testing.assert_array_equal(x.grad.numpy(), 2 * x.detach().numpy())


def test_device_and_dtype_change_together(standin):
    x = tg.tensor([1.5, 2.5], requires_grad=True)
    y = x.to("cuda", tg.float64)
    assert y.device == "cuda" and y.dtype == tg.float64
    (y * 2).sum().backward()
    assert x.grad.dtype == tg.float32 and x.grad.device == "cpu"  # back to the input's dtype and device
    np.testing.assert_array_equal(x.grad.numpy(), [2, 2])


def test_cuda_method_and_cpu_conversions(standin):
    t = tg.tensor([1.0, 2.0]).cuda()
    assert t.device == "cuda" and "device='cuda'" in repr(t) and "2." in repr(t)
    assert t.tolist() == [1.0, 2.0] and t.sum().item() == 3.0
    with pytest.raises(TypeError, match="cpu"):
        t.numpy()
    np.testing.assert_array_equal(t.cpu().numpy(), [1, 2])
    back = tg.tensor(t)  # from a device tensor: an explicit copy through the host
    assert back.device == "cpu" and back.tolist() == [1.0, 2.0]
    tg.manual_seed(5)
    r = tg.randn(3, device="cuda")
    assert r.device == "cuda" and r.shape == (3,)


# ---- which array module / device is this: answered only here -----------------------------------------------------
def test_array_module_of_and_device_predicates(standin):
    host = np.zeros(3, np.float32)
    dev = standin.asarray(host)
    assert backend.array_module_of(None, 2.0, host) is np
    assert backend.array_module_of(np.float32(1)) is np
    assert backend.array_module_of(None, dev) is backend.standin
    with pytest.raises(TypeError, match="array_module_of: expected at least one array"):
        backend.array_module_of(None, 1)
    assert backend.is_device_array(dev) and not backend.is_device_array(host)
    assert not backend.is_device_array([1.0]) and not backend.is_device_array(3)
    assert not backend.is_cupy_array(dev) and not backend.is_cupy_array(host)  # the stand-in is not CuPy
    assert backend.device_of(host) == "cpu" and backend.device_of(dev) == "cuda"


def test_tensor_from_a_device_array_goes_through_the_host(standin):
    dev = standin.asarray(np.arange(4, dtype=np.float32))
    t = tg.tensor(dev)
    assert t.device == "cpu" and t.numpy().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_standin_elementwise_kernel_runs_the_c_tinygen_generates_and_refuses_the_rest():
    """The stand-in's ElementwiseKernel (what tinygen.compile's fused runs call on "cuda" without a GPU):
    statements in order, each operation rounded in the arrays' dtype, outputs written in place and returned."""
    from tinygen.backend import StandinElementwiseKernel as Kernel
    sa = backend.standin
    x = sa.asarray(np.array([1.5, -2.0, 4.0], np.float32))
    s = np.float32(3)
    o0, o1 = sa.empty(3, np.float32), sa.empty(3, np.float32)
    kernel = Kernel("T x0, T s0", "T o0, T o1", "T v0 = x0 / s0;\nT v1 = fabs(-v0) + sqrt(x0 * x0);\no0 = v0;\n"
                    "o1 = v1 - s0;", "k", options=("--fmad=false",))
    r0, r1 = kernel(x, s, o0, o1)
    assert r0 is o0 and r1 is o1 and kernel.options == ("--fmad=false",)
    xs = np.array([1.5, -2.0, 4.0], np.float32)
    v0 = xs / np.float32(3)
    np.testing.assert_array_equal(o0.get(), v0)
    np.testing.assert_array_equal(o1.get(), (np.abs(-v0) + np.sqrt(xs * xs)) - np.float32(3))
    assert o1.get().dtype == np.float32
    for bad, message in [("T v0 = x0 * 2.0;", "cannot run"), ("T v0 = x0 ** s0;", "cannot run"),
                         ("o9 = x0;", "neither declared nor an output"), ("T v0 = pow(x0);", "unknown name 'pow'"),
                         ("if (x0) o0 = x0", "cannot run"), ("T v0 = x0.real;", "unknown name 'real'")]:
        with pytest.raises(ValueError, match=message):
            Kernel("T x0, T s0", "T o0", bad)
    with pytest.raises(ValueError, match="only parameters of type T"):
        Kernel("float32 x0", "T o0", "o0 = x0;")
    copy = Kernel("T x0", "T o0", "o0 = x0;")
    with pytest.raises(TypeError, match="1 inputs and 1 outputs expected"):
        copy(x)
    with pytest.raises(TypeError, match="type T differs"):
        copy(x, sa.empty(3, np.float64))


def test_standin_returns_a_device_array_itself_where_cupy_does():
    """cupy.asarray(a) and a.astype(a.dtype, copy=False) give back ``a`` itself; the stand-in too, so that code
    telling a shared array by identity behaves as on a GPU. A real conversion is a new array."""
    x = backend.standin.ones(3)
    assert backend.standin.asarray(x) is x and x.astype(x.dtype, copy=False) is x
    y = backend.standin.asarray(x, dtype=np.float32)
    assert y is not x and y.dtype == np.float32 and x.reshape(3, 1) is not x
