"""Gradient clipping (tinygen.nn.utils): by total norm and by value, in place, against NumPy and PyTorch."""
import math

import numpy as np
import pytest
from conftest import HAS_TORCH, requires_torch

import tinygen
from tinygen.nn.utils import clip_grad_norm_, clip_grad_value_, get_total_norm

if HAS_TORCH:
    import torch


def params_with_grads(scale=1.0, dtype=np.float64, seed=0, device="cpu", shapes=((4, 3), (5,), (2, 2, 2))):
    rng = np.random.default_rng(seed)
    params = []
    for s in shapes:
        p = tinygen.tensor(rng.standard_normal(s).astype(dtype), device=device, requires_grad=True)
        p.grad = tinygen.tensor((scale * rng.standard_normal(s)).astype(dtype), device=device)
        params.append(p)
    return params


def flat_grads(params):
    return np.concatenate([p.grad.cpu().numpy().ravel() for p in params if p.grad is not None])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, math.inf, "inf"])
def test_clip_grad_norm_scales_to_max_norm(norm_type, device):
    params = params_with_grads(scale=10.0, device=device)
    before = flat_grads(params)
    p = float(norm_type)
    expect = np.linalg.norm(before, ord=p) if p != 0.5 else (np.abs(before) ** 0.5).sum() ** 2
    grads = [q.grad for q in params]
    total = clip_grad_norm_(params, max_norm=1.5, norm_type=norm_type)
    assert isinstance(total, tinygen.Tensor) and total.shape == () and total.device == device
    np.testing.assert_allclose(total.item(), expect, rtol=1e-12)
    assert all(q.grad is g for q, g in zip(params, grads))  # in place
    after = flat_grads(params)
    np.testing.assert_allclose(after, before * (1.5 / (expect + 1e-6)), rtol=1e-12)
    clipped = np.linalg.norm(after, ord=p) if p != 0.5 else (np.abs(after) ** 0.5).sum() ** 2
    assert clipped <= 1.5


def test_small_gradients_are_left_as_they_are():
    params = params_with_grads(scale=1e-3)
    before = flat_grads(params)
    total = clip_grad_norm_(params, max_norm=1.0)
    np.testing.assert_array_equal(flat_grads(params), before)  # coefficient clamped to exactly 1
    assert total.item() == pytest.approx(np.linalg.norm(before), rel=1e-12)


def test_parameters_without_gradients_and_single_tensors():
    params = params_with_grads(scale=10.0)
    params[1].grad = None
    before = flat_grads(params)
    total = clip_grad_norm_(iter(params), max_norm=2.0)  # any iterable, read once
    np.testing.assert_allclose(total.item(), np.linalg.norm(before), rtol=1e-12)
    assert params[1].grad is None
    single = params_with_grads(scale=10.0)[0]
    clip_grad_norm_(single, max_norm=1.0)
    assert np.linalg.norm(single.grad.numpy()) == pytest.approx(1.0, rel=1e-5)
    none = tinygen.zeros(3, requires_grad=True)
    assert clip_grad_norm_([none], max_norm=1.0).item() == 0.0


def test_zero_norm_counts_tensors_with_nonzero_entries():
    # the norm of the per-tensor norms (PyTorch's definition): for p = 0, tensors with a non-zero entry
    g = tinygen.tensor([0.0, 2.0, 0.0, -1.0, 3.0, 0.0])
    assert get_total_norm([g], norm_type=0).item() == 1.0
    assert get_total_norm([g, tinygen.zeros(4), g * 2], norm_type=0).item() == 2.0


def test_nonfinite_total_norm():
    params = params_with_grads()
    params[0].grad.data[1, 1] = np.nan
    with pytest.raises(RuntimeError, match="total norm of order 2.0 .* is nan.*error_if_nonfinite=False"):
        clip_grad_norm_(params, max_norm=1.0, error_if_nonfinite=True)
    assert np.isnan(clip_grad_norm_(params, max_norm=1.0).item())  # as PyTorch: scaled by NaN


def test_float32_gradients_stay_float32():
    params = params_with_grads(scale=10.0, dtype=np.float32)
    total = clip_grad_norm_(params, max_norm=1.0)
    assert total.dtype == np.float32 and all(p.grad.dtype == np.float32 for p in params)
    assert np.linalg.norm(flat_grads(params).astype(np.float64)) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_value(device):
    params = params_with_grads(scale=3.0, device=device)
    before = flat_grads(params)
    grads = [p.grad for p in params]
    assert clip_grad_value_(params, 0.5) is None
    assert all(p.grad is g for p, g in zip(params, grads))
    np.testing.assert_array_equal(flat_grads(params), np.clip(before, -0.5, 0.5))


def test_bad_arguments():
    params = params_with_grads()
    with pytest.raises(ValueError, match="norm_type must be a number or 'inf'"):
        clip_grad_norm_(params, 1.0, norm_type="fro")
    with pytest.raises(ValueError, match="norm_type must be >= 0"):
        clip_grad_norm_(params, 1.0, norm_type=-1)
    with pytest.raises(TypeError, match="max_norm must be a number"):
        clip_grad_norm_(params, "big")
    with pytest.raises(TypeError, match="item 1 of parameters is a ndarray"):
        clip_grad_norm_([params[0], np.zeros(2)], 1.0)
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        clip_grad_value_(params, -1.0)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    ours = params_with_grads(scale=2.0, dtype=dtype)
    theirs = []
    for p in ours:
        t = torch.tensor(p.detach().numpy(), requires_grad=True)
        t.grad = torch.tensor(p.grad.numpy())
        theirs.append(t)
    a = clip_grad_norm_(ours, max_norm, norm_type)
    b = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(a.item(), b.item(), rtol=rtol)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=1e-7 * rtol)


@requires_torch
def test_clip_grad_value_matches_torch():
    ours = params_with_grads(scale=2.0)
    theirs = []
    for p in ours:
        t = torch.tensor(p.detach().numpy(), requires_grad=True)
        t.grad = torch.tensor(p.grad.numpy())
        theirs.append(t)
    clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())
