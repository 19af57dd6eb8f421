"""Batch augmentations: shapes, determinism, exact identities, and the statistics of their randomness."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygen
from tinygen.data import transforms as T


def batch(n=16, h=28, w=28, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, h, w)).astype(dtype)


def blob(n=8, size=28, radius=5):
    """Centred discs: all their mass well away from the border."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) <= radius ** 2).astype(np.float64)
    return np.repeat(disc[None], n, axis=0)


ALL = [T.RandomCrop(padding=3), T.RandomHorizontalFlip(), T.RandomRotation(15),
       T.RandomRotation(15, interpolation="nearest")]


@pytest.mark.parametrize("t", ALL, ids=repr)
@pytest.mark.parametrize("shape", [(5, 28, 28), (4, 1, 28, 28), (3, 2, 9, 11)])
def test_shape_and_dtype_preserved(t, shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    out = t(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not np.shares_memory(out, x)


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_same_seed_same_output_different_seed_differs(t):
    x = batch()
    a = t(x, np.random.default_rng(7))
    b = t(x, np.random.default_rng(7))
    c = t(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_default_generator_follows_manual_seed():
    x = batch()
    tinygen.manual_seed(3)
    a = T.RandomRotation(20)(x)
    tinygen.manual_seed(3)
    b = T.RandomRotation(20)(x)
    np.testing.assert_array_equal(a, b)


def test_channels_share_the_random_parameters():
    x = batch(6)
    x2 = np.stack([x, x], axis=1)  # (N, 2, H, W) with identical channels
    for t in ALL:
        out = t(x2, np.random.default_rng(4))
        np.testing.assert_array_equal(out[:, 0], out[:, 1])
        np.testing.assert_array_equal(out[:, 0], t(x, np.random.default_rng(4)))


# ---- crop -------------------------------------------------------------------------------------------------------
def test_crop_with_zero_padding_is_identity():
    x = batch()
    np.testing.assert_array_equal(T.RandomCrop(padding=0)(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(T.RandomCrop(28)(x, np.random.default_rng(0)), x)


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = batch(50, seed=2)
    p = 2
    out = T.RandomCrop(padding=p, fill=-1.0)(x, np.random.default_rng(5))
    padded = np.pad(x, ((0, 0), (p, p), (p, p)), constant_values=-1.0)
    shifts = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if np.array_equal(out[i], padded[i, dy:dy + 28, dx:dx + 28])]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10  # offsets vary per image (25 possible)


def test_crop_to_smaller_size():
    x = batch(4)
    out = T.RandomCrop(24)(x, np.random.default_rng(0))
    assert out.shape == (4, 24, 24)
    with pytest.raises(ValueError, match="larger than the padded image"):
        T.RandomCrop(30, padding=0)(x)


# ---- flip -------------------------------------------------------------------------------------------------------
def test_flip_twice_with_same_draws_is_identity_and_flipped_ones_are_mirrored():
    x = batch(40)
    once = T.RandomHorizontalFlip()(x, np.random.default_rng(9))
    flipped = np.array([np.array_equal(o, xi[:, ::-1]) for o, xi in zip(once, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(once, x)])
    assert np.all(flipped ^ kept)  # each image is exactly one of the two
    assert 0 < flipped.sum() < len(x)
    twice = T.RandomHorizontalFlip()(once, np.random.default_rng(9))
    np.testing.assert_array_equal(twice, x)


def test_flip_probability_statistics():
    x = np.arange(4, dtype=np.float64)[None, None, :].repeat(20000, axis=0)  # (N, 1, 4): rows 0 1 2 3
    for p in (0.5, 0.2, 0.0, 1.0):
        out = T.RandomHorizontalFlip(p)(x, np.random.default_rng(11))
        rate = (out[:, 0, 0] == 3).mean()
        # Binomial(20000, p): 5 standard deviations is < 0.018.
        assert abs(rate - p) < 0.018, (p, rate)


# ---- rotation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_rotation_by_zero_is_identity(interpolation):
    x = batch(8)
    np.testing.assert_array_equal(T.RandomRotation(0, interpolation)(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(T.rotate(x, np.zeros(8), interpolation), x)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(28, 28), (7, 7), (6, 6)])
def test_quarter_turns_match_rot90(interpolation, size):
    x = batch(3, *size, dtype=np.float64)
    np.testing.assert_allclose(T.rotate(x, 90.0, interpolation), np.rot90(x, 1, axes=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(T.rotate(x, -90.0, interpolation), np.rot90(x, -1, axes=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(T.rotate(x, 180.0, interpolation), x[:, ::-1, ::-1], atol=1e-12)


def test_rotation_preserves_mass_of_centred_content():
    x = blob(8)
    angles = np.linspace(-30, 30, 8)
    out = T.rotate(x, angles)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), x.sum(axis=(1, 2)), rtol=0.03)
    # ...and a rotated disc is still a disc: most of the pixels agree.
    assert np.abs(out - x).mean() < 0.02


def test_rotation_moves_mass_the_documented_way():
    x = np.zeros((1, 9, 9))
    x[0, 4, 8] = 1.0  # a dot to the right of the centre
    out = T.rotate(x, 90.0, "nearest")
    assert out[0, 0, 4] == 1.0  # counter-clockwise as displayed: right -> top


def test_rotation_fill_and_integer_input():
    x = np.full((2, 10, 10), 200, dtype=np.uint8)
    out = T.rotate(x, 45.0, fill=0)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, 5, 5] == 200
    with pytest.raises(ValueError, match="2 angles for 3 images|got 2 angles"):
        T.rotate(np.zeros((3, 5, 5)), [1.0, 2.0])


def test_random_rotation_angles_are_per_image_and_bounded():
    x = blob(64)
    out = T.RandomRotation(degrees=(20, 20))(x, np.random.default_rng(0))  # a fixed angle for all
    np.testing.assert_allclose(out, T.rotate(x, 20.0))
    outs = T.RandomRotation(45)(np.repeat(batch(1, seed=3), 16, axis=0), np.random.default_rng(0))
    assert len({o.tobytes() for o in outs}) == 16  # each image its own angle


@given(st.floats(-180, 180))
def test_rotation_back_and_forth_is_close_on_centred_content(angle):
    x = blob(1, size=28, radius=4)
    there = T.rotate(x, angle, "bilinear")
    back = T.rotate(there, -angle, "bilinear")
    # Two bilinear resamplings blur the edge of the disc but leave its bulk and mass in place.
    assert abs(back.sum() - x.sum()) < 0.05 * x.sum()
    assert np.abs(back - x).mean() < 0.03


# ---- compose and errors -----------------------------------------------------------------------------------------
def test_compose_runs_in_order_with_one_generator():
    x = batch(8)
    steps = [T.RandomCrop(padding=2), T.RandomHorizontalFlip()]
    composed = T.Compose(steps)(x, np.random.default_rng(3))
    g = np.random.default_rng(3)
    by_hand = steps[1](steps[0](x, g), g)
    np.testing.assert_array_equal(composed, by_hand)


def test_compose_calls_plain_functions_without_a_generator():
    seen = []

    def scale(x):
        seen.append(x.shape)
        return x * 2

    out = T.Compose([scale, T.RandomCrop(padding=0)])(batch(2), np.random.default_rng(0))
    np.testing.assert_array_equal(out, batch(2) * 2)
    assert seen == [(2, 28, 28)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="shape \\(N, H, W\\)"):
        T.RandomHorizontalFlip()(np.zeros((28, 28)))
    with pytest.raises(TypeError, match="numpy array"):
        T.RandomCrop(padding=1)([[1.0]])
    with pytest.raises(ValueError, match="padding"):
        T.RandomCrop(padding=-1)
    with pytest.raises(ValueError, match="interpolation"):
        T.RandomRotation(10, interpolation="cubic")
    with pytest.raises(ValueError, match="p must be in"):
        T.RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match="Generator"):
        T.RandomHorizontalFlip()(batch(2), generator="seed")
