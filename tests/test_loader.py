"""DataLoader: batching, seeded shuffling, resuming from a state dict, devices; and the pixel scaling helpers."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygen
from tinygen import data
from tinygen.data import transforms as T


def dataset(n=10, d=3):
    x = np.arange(n * d, dtype=np.float64).reshape(n, d)
    y = np.arange(n, dtype=np.int64)
    return x, y


def labels_of(loader):
    return [b[1].numpy().tolist() for b in loader]


@given(st.integers(1, 40), st.integers(1, 12), st.booleans(), st.booleans())
def test_every_example_once_per_epoch(n, batch_size, shuffle, drop_last):
    x, y = dataset(n)
    loader = data.DataLoader((x, y), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=0)
    batches = labels_of(loader)
    assert len(batches) == len(loader)
    assert len(loader) == (n // batch_size if drop_last else -(-n // batch_size))
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
        assert len(seen) == n - n % batch_size
    else:
        assert sorted(seen) == list(range(n))
    if not shuffle:
        assert seen == sorted(seen)


def test_batches_are_tensors_with_matching_rows_and_dtypes():
    x, y = dataset(10)
    for xb, yb in data.DataLoader((x, y), batch_size=4, shuffle=True, seed=1):
        assert isinstance(xb, tinygen.Tensor) and isinstance(yb, tinygen.Tensor)
        assert xb.dtype == tinygen.float32 and yb.dtype == tinygen.int64  # floats cast, labels kept
        np.testing.assert_array_equal(xb.numpy(), x[yb.numpy()].astype(np.float32))
    xb = next(iter(data.DataLoader(x, batch_size=3, dtype=tinygen.float64)))
    assert isinstance(xb, tinygen.Tensor) and xb.dtype == tinygen.float64 and xb.shape == (3, 3)


def test_batches_do_not_alias_the_dataset():
    x, y = dataset(6)
    xb, _ = next(iter(data.DataLoader((x.astype(np.float32), y), batch_size=3)))
    xb.data[...] = -1
    assert x.min() >= 0
    yb = next(iter(data.DataLoader(y, batch_size=3, transform=lambda v: v)))
    yb.data[...] = 99
    assert y.max() == 5


def test_shuffle_is_seeded_and_changes_between_epochs():
    x, y = dataset(50)
    a = data.DataLoader((x, y), batch_size=8, shuffle=True, seed=5)
    b = data.DataLoader((x, y), batch_size=8, shuffle=True, seed=5)
    c = data.DataLoader((x, y), batch_size=8, shuffle=True, seed=6)
    epoch_a0, epoch_a1 = labels_of(a), labels_of(a)
    assert epoch_a0 == labels_of(b) and epoch_a1 == labels_of(b)
    assert epoch_a0 != epoch_a1
    assert epoch_a0 != labels_of(c)
    assert a.epoch == 2


def test_default_seed_follows_manual_seed():
    x, y = dataset(30)
    tinygen.manual_seed(0)
    a = labels_of(data.DataLoader((x, y), batch_size=7, shuffle=True))
    tinygen.manual_seed(0)
    b = labels_of(data.DataLoader((x, y), batch_size=7, shuffle=True))
    assert a == b


def test_resume_mid_epoch_continues_with_the_same_batches():
    x = np.random.default_rng(0).random((37, 4, 4))
    y = np.arange(37)
    aug = T.Compose([T.RandomHorizontalFlip()])
    full = data.DataLoader((x, y), batch_size=5, shuffle=True, seed=11, transform=aug)
    reference = [(xb.numpy().copy(), yb.numpy().copy()) for _ in range(3) for xb, yb in full]

    first = data.DataLoader((x, y), batch_size=5, shuffle=True, seed=11, transform=aug)
    got = []
    for _ in range(1):
        got += [(xb.numpy().copy(), yb.numpy().copy()) for xb, yb in first]
    it = iter(first)
    for _ in range(3):  # part-way through the second epoch
        xb, yb = next(it)
        got.append((xb.numpy().copy(), yb.numpy().copy()))
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 3

    resumed = data.DataLoader((x, y), batch_size=5, shuffle=True, seed=999, transform=aug)
    resumed.load_state_dict(state)
    for _ in range(2):
        got += [(xb.numpy().copy(), yb.numpy().copy()) for xb, yb in resumed]
    assert len(got) == len(reference)
    for (xa, ya), (xr, yr) in zip(got, reference):
        np.testing.assert_array_equal(ya, yr)
        np.testing.assert_array_equal(xa, xr)  # same augmentation draws too


def test_state_at_epoch_end_and_abandoned_iterators():
    x, y = dataset(10)
    loader = data.DataLoader((x, y), batch_size=4, shuffle=True, seed=0)
    list(loader)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batch"] == 0
    next(iter(loader))  # abandon epoch 1 after one batch
    assert loader.state_dict()["batch"] == 1
    second = labels_of(loader)  # a fresh iter() starts epoch 2
    assert loader.epoch == 3
    ref = data.DataLoader((x, y), batch_size=4, shuffle=True, seed=0)
    ref.load_state_dict({"seed": 0, "epoch": 2, "batch": 0})
    assert labels_of(ref) == second


def test_state_dict_mismatch_is_named():
    x, y = dataset(10)
    state = data.DataLoader((x, y), batch_size=4).state_dict()
    with pytest.raises(ValueError, match="batch_size=4.*batch_size=5"):
        data.DataLoader((x, y), batch_size=5).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        data.DataLoader((x[:9], y[:9]), batch_size=4).load_state_dict(state)
    with pytest.raises(KeyError, match="seed"):
        data.DataLoader((x, y), batch_size=4).load_state_dict({"epoch": 0, "batch": 0})


def test_transform_gets_a_generator_only_when_it_takes_one():
    x, y = dataset(8)
    calls = []

    def plain(batch):
        calls.append("plain")
        return batch + 1

    def seeded(batch, generator=None):
        calls.append(type(generator).__name__)
        return batch + generator.random()

    xb, yb = next(iter(data.DataLoader((x, y), batch_size=4, transform=plain)))
    np.testing.assert_array_equal(xb.numpy(), (x[:4] + 1).astype(np.float32))
    next(iter(data.DataLoader((x, y), batch_size=4, transform=seeded, seed=0)))
    assert calls == ["plain", "Generator"]


def test_mnist_record_and_augmentation_pipeline():
    m = data.mnist("test")
    pipeline = T.Compose([data.to_unit, T.RandomCrop(padding=2), T.RandomRotation(10)])
    loader = data.DataLoader(m, batch_size=32, shuffle=True, seed=0, transform=pipeline)
    xb, yb = next(iter(loader))
    assert xb.shape == (32, 28, 28) and xb.dtype == tinygen.float32
    assert 0.0 <= float(xb.numpy().min()) and float(xb.numpy().max()) <= 1.0
    assert len(loader) == 313


def test_cuda_batches_match_cpu_batches(device):
    x, y = dataset(23)
    cpu = data.DataLoader((x, y), batch_size=6, shuffle=True, seed=3)
    dev = data.DataLoader((x, y), batch_size=6, shuffle=True, seed=3, device=device)
    dev_t = data.DataLoader((x, y), batch_size=6, shuffle=True, seed=3, device=device, transform=lambda v: v * 2)
    for (xc, yc), (xd, yd), (xt, yt) in zip(cpu, dev, dev_t):
        assert xd.device == device and yd.device == device and xt.device == device
        np.testing.assert_array_equal(xd.cpu().numpy(), xc.numpy())
        np.testing.assert_array_equal(yd.cpu().numpy(), yc.numpy())
        np.testing.assert_array_equal(xt.cpu().numpy(), 2 * xc.numpy())
    # Writing into a batch must not reach the copy of the dataset kept on the device.
    ordered = data.DataLoader((x, y), batch_size=6, device=device)
    first = next(iter(ordered))[0]
    first.data[...] = -1
    np.testing.assert_array_equal(next(iter(ordered))[0].cpu().numpy(), x[:6])


def test_bad_inputs_are_named():
    x, y = dataset(10)
    with pytest.raises(ValueError, match=r"different numbers of examples: shapes \(10, 3\), \(9,\)"):
        data.DataLoader((x, y[:9]))
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader(x, batch_size=0)
    with pytest.raises(TypeError, match="transform must be callable"):
        data.DataLoader(x, transform=3)
    with pytest.raises(ValueError, match="seed"):
        data.DataLoader(x, seed=-1)
    with pytest.raises(ValueError, match="scalar"):
        data.DataLoader(np.float32(1.0))


# ---- scaling helpers ----------------------------------------------------------------------------------------------
def test_to_unit_and_to_symmetric():
    px = np.array([[0, 51, 255]], dtype=np.uint8)
    u = data.to_unit(px)
    assert u.dtype == np.float32
    np.testing.assert_allclose(u, [[0.0, 0.2, 1.0]], atol=1e-7)
    s = data.to_symmetric(px)
    np.testing.assert_allclose(s, [[-1.0, -0.6, 1.0]], atol=1e-6)
    np.testing.assert_allclose(data.to_symmetric(u), s, atol=1e-6)  # floats are taken to be in [0, 1]
    assert data.to_unit(px, dtype=np.float64).dtype == np.float64
    t = data.to_unit(tinygen.tensor(px))
    assert isinstance(t, tinygen.Tensor) and t.dtype == tinygen.float32
    np.testing.assert_allclose(t.numpy(), u)
    with pytest.raises(TypeError, match="dtype"):
        data.to_unit(np.array(["a"]))


def test_real_images_scale_into_range():
    images = data.mnist("test").images[:100]
    u, s = data.to_unit(images), data.to_symmetric(images)
    assert u.min() == 0.0 and u.max() == 1.0 and s.min() == -1.0 and s.max() == 1.0
    np.testing.assert_allclose(s, 2 * u - 1, atol=1e-6)


def test_binarize_is_bernoulli_of_intensity():
    p = np.linspace(0, 1, 11, dtype=np.float32)
    x = np.repeat(p[None], 20000, axis=0)
    b = data.binarize(x, np.random.default_rng(0))
    assert b.dtype == np.float32 and set(np.unique(b)) <= {0.0, 1.0}
    # Bernoulli means within 5 standard deviations; p = 0 and 1 exactly.
    np.testing.assert_allclose(b.mean(axis=0), p, atol=5 * 0.5 / np.sqrt(20000))
    assert b[:, 0].max() == 0.0 and b[:, -1].min() == 1.0
    np.testing.assert_array_equal(data.binarize(x, np.random.default_rng(0)), b)  # seeded
    assert not np.array_equal(data.binarize(x, np.random.default_rng(1)), b)


def test_binarize_uint8_and_tensors(device):
    px = np.array([[0, 255, 255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(data.binarize(px, 0), [[0.0, 1.0, 1.0, 0.0]])
    t = tinygen.tensor(np.array([[0.0, 1.0, 0.0]], dtype=np.float32), device=device)
    for gen in (None, np.random.default_rng(0)):
        out = data.binarize(t, gen)
        assert isinstance(out, tinygen.Tensor) and out.device == device and out.dtype == tinygen.float32
        np.testing.assert_array_equal(out.cpu().numpy(), [[0.0, 1.0, 0.0]])
