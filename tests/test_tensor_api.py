"""The Tensor's public surface: creation functions, dtype rules, seeding, and the tensor's properties."""
import numpy as np
import pytest

import tinygen as tg


# ---- creation and dtypes ---------------------------------------------------------------------------------------------
def test_tensor_copies_data_and_takes_dtype_device_requires_grad(device):
    src = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float64)
    t = tg.tensor(src, dtype=tg.float32, device=device, requires_grad=True)
    assert t.dtype == tg.float32 and t.device == device and t.requires_grad and t.is_leaf
    assert t.shape == (2, 2)
    src[0, 0] = 100.0  # tensor() copies: the tensor must not see later changes to the source
    np.testing.assert_array_equal(t.detach().cpu().numpy(), [[1, 2], [3, 4]])


@pytest.mark.parametrize("data, expected", [
    (1.5, tg.float32), ([1.0, 2.0], tg.float32), ([1, 2.5], tg.float32),
    (3, tg.int64), ([[1, 2]], tg.int64),
    (True, tg.bool), ([True, False], tg.bool),
])
def test_default_dtypes_from_python_values(data, expected):
    assert tg.tensor(data).dtype == expected


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.float32, np.int32, np.int64, np.uint8, np.bool_])
def test_numpy_arrays_keep_their_dtype(dtype):
    arr = np.arange(4).astype(dtype)
    assert tg.tensor(arr).dtype == np.dtype(dtype)
    assert tg.as_tensor(arr).dtype == np.dtype(dtype)


def test_from_numpy_and_as_tensor_share_memory_tensor_does_not():
    arr = np.zeros(3, dtype=np.float32)
    shared, asis, copied = tg.from_numpy(arr), tg.as_tensor(arr), tg.tensor(arr)
    arr[1] = 7.0
    assert shared.numpy()[1] == 7.0 and asis.numpy()[1] == 7.0 and copied.numpy()[1] == 0.0


@pytest.mark.parametrize("spec", ["float64", np.float64, np.dtype("float64"), "double", tg.float64])
def test_dtype_names_and_types_are_accepted(spec):
    assert tg.zeros(2, dtype=spec).dtype == tg.float64
    assert tg.tensor([1, 2], dtype=spec).dtype == tg.float64


@pytest.mark.parametrize("spec", ["complex64", np.complex128, "not_a_dtype", np.str_])
def test_unsupported_dtype_is_a_clear_type_error(spec):
    with pytest.raises(TypeError, match="unsupported dtype .*supports float32"):
        tg.zeros(2, dtype=spec)


def test_unsupported_data_is_a_clear_type_error():
    with pytest.raises(TypeError, match="<U1"):
        tg.tensor(["a", "b"])


@pytest.mark.parametrize("make", [
    lambda: tg.tensor([1, 2], requires_grad=True),
    lambda: tg.tensor([True], requires_grad=True),
    lambda: tg.zeros(2, dtype=tg.int64, requires_grad=True),
    lambda: tg.arange(3).requires_grad_(),
])
def test_integer_and_bool_tensors_cannot_require_grad(make):
    with pytest.raises(RuntimeError, match="only floating point tensors can require gradients.*(int64|bool)"):
        make()


def test_filled_constructors(device):
    z, o = tg.zeros(2, 3, device=device), tg.ones((2, 3), dtype=tg.float64, device=device)
    assert z.shape == (2, 3) and z.dtype == tg.float32 and z.device == device
    assert o.shape == (2, 3) and o.dtype == tg.float64
    assert z.cpu().numpy().sum() == 0 and o.cpu().numpy().sum() == 6
    f = tg.full((2, 2), 2.5, device=device)
    assert f.dtype == tg.float32 and np.all(f.cpu().numpy() == 2.5)
    assert tg.full((2,), 3).dtype == tg.int64 and tg.full((2,), True).dtype == tg.bool
    like = tg.zeros_like(o)
    assert like.shape == o.shape and like.dtype == o.dtype and like.device == device
    ones = tg.ones_like(z, dtype=tg.float64)
    assert ones.dtype == tg.float64 and np.all(ones.cpu().numpy() == 1)
    assert tg.zeros(2, requires_grad=True).requires_grad
    with pytest.raises(ValueError, match="non-negative integers"):
        tg.zeros(2, -1)


def test_arange_eye_linspace(device):
    a = tg.arange(5, device=device)
    assert a.dtype == tg.int64 and a.cpu().tolist() == [0, 1, 2, 3, 4]
    f = tg.arange(0, 1, 0.25)
    assert f.dtype == tg.float32 and f.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert tg.arange(1, 7, 2).tolist() == [1, 3, 5]
    e = tg.eye(2, 3, device=device)
    np.testing.assert_array_equal(e.cpu().numpy(), np.eye(2, 3))
    assert e.dtype == tg.float32
    np.testing.assert_allclose(tg.linspace(0, 1, 5).numpy(), [0, 0.25, 0.5, 0.75, 1])


def test_random_shapes_dtypes_and_ranges(device):
    tg.manual_seed(1)
    n = tg.randn(200, 3, device=device)
    u = tg.rand(500, dtype=tg.float64, device=device)
    assert n.shape == (200, 3) and n.dtype == tg.float32 and n.device == device
    hu = u.cpu().numpy()
    assert u.dtype == tg.float64 and hu.min() >= 0 and hu.max() < 1
    hn = n.cpu().numpy()
    assert abs(hn.mean()) < 0.2 and 0.8 < hn.std() < 1.2
    r = tg.randint(0, 4, (100,))
    assert r.dtype == tg.int64 and set(r.tolist()) <= {0, 1, 2, 3}
    assert sorted(tg.randperm(6).tolist()) == list(range(6))
    with pytest.raises(TypeError, match="floating dtype"):
        tg.randn(2, dtype=tg.int64)


def test_manual_seed_reproducibility():
    tg.manual_seed(123)
    a1, b1 = tg.randn(8), tg.rand(8)
    tg.manual_seed(123)
    a2, b2 = tg.randn(8), tg.rand(8)
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    tg.manual_seed(124)
    assert not np.array_equal(tg.randn(8).numpy(), a1.numpy())
    with pytest.raises(ValueError, match="non-negative integer"):
        tg.manual_seed(-1)


# ---- properties and conversions --------------------------------------------------------------------------------------
def test_metadata_properties():
    x = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == tg.float32 and x.device == "cpu"
    assert x.requires_grad and x.grad is None and x.is_leaf and x.grad_fn is None
    assert len(x) == 2 and x.numel() == 6 and x.size() == (2, 3) and x.size(1) == 3
    y = x * 2
    assert not y.is_leaf and y.grad_fn is not None and y.requires_grad
    with pytest.raises(TypeError, match="0-d"):
        len(tg.tensor(1.0))


def test_numpy_item_detach_requires_grad_():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        x.numpy()
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    d.numpy()[0] = 9.0  # detach shares memory, as in PyTorch
    assert x.detach().numpy()[0] == 9.0
    assert tg.tensor([[2.5]]).item() == 2.5 and isinstance(tg.tensor(3).item(), int)
    with pytest.raises(ValueError, match=r"one-element.*\(2,\)"):
        x.item()
    z = tg.zeros(2)
    assert z.requires_grad_() is z and z.requires_grad
    z.requires_grad_(False)
    assert not z.requires_grad
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2).requires_grad_(False)


def test_to_dtype_and_device_and_transpose():
    x = tg.tensor([[1.5, 2.0], [3.0, 4.0]])
    assert x.to(tg.float64).dtype == tg.float64 and x.to("float64").dtype == tg.float64
    assert x.double().dtype == tg.float64 and x.long().tolist() == [[1, 2], [3, 4]]
    assert x.to("cpu") is x and x.to(tg.float32) is x  # nothing to do: the same tensor, as in PyTorch
    assert x.to(device="cpu", dtype=tg.float64).dtype == tg.float64
    np.testing.assert_array_equal(x.T.numpy(), x.numpy().T)
    assert tg.randn(2, 3, 4).T.shape == (4, 3, 2)


def test_repr_shows_values_shape_dtype_and_grad_fn():
    x = tg.tensor([1.25, -2.5], requires_grad=True)
    r = repr(x)
    assert "1.25" in r and "-2.5" in r and "shape=(2,)" in r and "dtype=float32" in r and "requires_grad=True" in r
    y = x * 3
    ry = repr(y)
    assert "3.75" in ry and "grad_fn=<MulBackward>" in ry
    assert "dtype=int64" in repr(tg.tensor([1, 2]))
    big = repr(tg.zeros(1000))
    assert "..." in big and "shape=(1000,)" in big  # long tensors are summarised


def test_iteration_and_indexing_scalars():
    x = tg.arange(6).reshape(2, 3)
    rows = list(x)
    assert len(rows) == 2 and rows[1].tolist() == [3, 4, 5]
    assert int(tg.tensor(4)) == 4 and float(tg.tensor(0.5)) == 0.5
    assert [10, 20, 30][tg.tensor(2)] == 30
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(tg.ones(2))


def test_assigning_into_a_parameter_is_refused_with_grad_on_and_allowed_under_no_grad(device):
    """``p[...] = v`` on a leaf that requires grad is refused with grad on (as PyTorch refuses it), and on a tensor
    an op made (the graph may have saved it); under no_grad a parameter's values change in place, as an EMA or a
    hand-written init needs, and the next backward uses them."""
    w = tg.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"in-place assignment to a tensor of shape \(3,\) that requires grad "
                                           r".* with grad on.*under tinygen.no_grad"):
        w[0] = 5.0
    with tg.no_grad():
        w[...] = w * 0.5 + tg.tensor([1.0, 1.0, 1.0], device=device) * 0.5
        w[2] = 10.0
    y = tg.tensor([1.0, 1.0], device=device, requires_grad=True) * 2
    with tg.no_grad(), pytest.raises(RuntimeError, match="on a tensor an op made"):
        y[0] = 0.0
    assert w.is_leaf and w.requires_grad
    np.testing.assert_array_equal(w.detach().cpu().numpy(), [1.0, 1.5, 10.0])
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad.cpu().numpy(), [2.0, 3.0, 20.0])
