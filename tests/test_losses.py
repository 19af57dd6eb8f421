"""Losses against PyTorch (values and gradients, every reduction, float64 and float32), against closed forms,
second derivatives (gradgradcheck), error messages, loss modules and the device path."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from conftest import requires_torch

REDUCTIONS = ["mean", "sum", "none"]
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=1e-6)}


def npy(t):
    return t.detach().cpu().numpy()


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def against_torch(ours_fn, theirs_fn, arrays, dtype, grad_of=None, tol=None):
    """Evaluate both losses on the same arrays; compare the value and the gradients of the arrays listed in
    ``grad_of`` (indices; all floating arrays by default), under a random upstream gradient."""
    import torch
    tol = tol or TOL[dtype]
    if grad_of is None:
        grad_of = [i for i, a in enumerate(arrays) if a is not None and a.dtype.kind == "f"]
    ours_in, theirs_in = [], []
    for i, a in enumerate(arrays):
        if a is None:
            ours_in.append(None)
            theirs_in.append(None)
            continue
        ours_in.append(tg.tensor(a, requires_grad=i in grad_of))
        theirs_in.append(torch.tensor(a, requires_grad=i in grad_of))
    lo, lt = ours_fn(*ours_in), theirs_fn(*theirs_in)
    assert lo.shape == tuple(lt.shape) and lo.dtype == dtype
    np.testing.assert_allclose(npy(lo), lt.detach().numpy(), **tol)
    if not grad_of:
        return lo
    g = np.random.default_rng(9).standard_normal(lo.shape).astype(dtype)
    lo.backward(tg.tensor(g))
    lt.backward(torch.tensor(g))
    for i in grad_of:
        assert ours_in[i].grad is not None, f"no gradient for argument {i}"
        np.testing.assert_allclose(npy(ours_in[i].grad), theirs_in[i].grad.numpy(), err_msg=f"argument {i}", **tol)
    return lo


def torch_f():
    import torch.nn.functional as TF
    return TF


# ---- regression losses --------------------------------------------------------------------------------------------
@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_regression_losses(dtype, reduction, name):
    x, t = rand(4, 3, dtype=dtype), rand(4, 3, seed=1, dtype=dtype)
    t[0, 0] = x[0, 0]  # a zero difference: l1's gradient there is 0, as PyTorch
    against_torch(lambda a, b: getattr(F, name)(a, b, reduction=reduction),
                  lambda a, b: getattr(torch_f(), name)(a, b, reduction=reduction), [x, t], dtype)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("var_shape", [(4, 3), (4,), (4, 1), (1, 3)])
def test_gaussian_nll_loss(dtype, reduction, full, var_shape):
    x, t = rand(4, 3, dtype=dtype), rand(4, 3, seed=1, dtype=dtype)
    var = np.abs(rand(*var_shape, seed=2, dtype=dtype)) + 0.1
    var.reshape(-1)[0] = 1e-8  # below eps: clamped in value, the gradient still flows (as PyTorch)
    against_torch(lambda a, b, v: F.gaussian_nll_loss(a, b, v, full=full, eps=1e-6, reduction=reduction),
                  lambda a, b, v: torch_f().gaussian_nll_loss(a, b, v, full=full, eps=1e-6, reduction=reduction),
                  [x, t, var], dtype, tol=dict(rtol=1e-9 if dtype == np.float64 else 1e-4, atol=1e-7))


@requires_torch
def test_gaussian_nll_loss_float_var():
    x, t = rand(5, 2), rand(5, 2, seed=1)
    against_torch(lambda a, b: F.gaussian_nll_loss(a, b, 0.5), lambda a, b: torch_f().gaussian_nll_loss(a, b, 0.5),
                  [x, t], np.float64)


def test_gaussian_nll_loss_errors():
    x = tg.zeros(4, 3)
    with pytest.raises(ValueError, match="negative"):
        F.gaussian_nll_loss(x, x, -tg.ones(4, 3))
    with pytest.raises(ValueError, match=r"var of shape \(2, 3\)"):
        F.gaussian_nll_loss(x, x, tg.ones(2, 3))


# ---- binary cross entropy -----------------------------------------------------------------------------------------
@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy(dtype, reduction, weighted):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, (5, 3)).astype(dtype)
    t = rng.uniform(0, 1, (5, 3)).astype(dtype)
    w = rng.uniform(0.5, 2, (3,)).astype(dtype) if weighted else None
    against_torch(lambda a, b, c: F.binary_cross_entropy(a, b, c, reduction=reduction),
                  lambda a, b, c: torch_f().binary_cross_entropy(a, b, c, reduction=reduction), [p, t, w], dtype,
                  grad_of=[0, 1], tol=dict(rtol=1e-9 if dtype == np.float64 else 1e-4, atol=1e-7))


@requires_torch
def test_binary_cross_entropy_clamps_log_at_minus_100():
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-50])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    lo = against_torch(lambda a, b: F.binary_cross_entropy(a, b, reduction="none"),
                       lambda a, b: torch_f().binary_cross_entropy(a, b, reduction="none"), [p, t], np.float64,
                       grad_of=[0], tol=dict(rtol=1e-8, atol=0))
    np.testing.assert_array_equal(npy(lo), [100, 100, 0, 0, 100])


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weighted", [False, True])
def test_bce_with_logits(dtype, reduction, weighted, pos_weighted):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((5, 3)) * 4).astype(dtype)
    t = rng.uniform(0, 1, (5, 3)).astype(dtype)
    w = rng.uniform(0.5, 2, (5, 1)).astype(dtype) if weighted else None
    pw = rng.uniform(0.5, 3, (3,)).astype(dtype) if pos_weighted else None
    against_torch(lambda a, b, c, d: F.binary_cross_entropy_with_logits(a, b, c, reduction=reduction, pos_weight=d),
                  lambda a, b, c, d: torch_f().binary_cross_entropy_with_logits(a, b, c, reduction=reduction,
                                                                                pos_weight=d),
                  [z, t, w, pw], dtype, grad_of=[0, 1])


@requires_torch
@pytest.mark.parametrize("pos_weighted", [False, True])
def test_bce_with_logits_is_stable_at_extreme_logits(pos_weighted):
    z = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4])
    t = np.array([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0])
    pw = np.full(7, 2.5) if pos_weighted else None
    lo = against_torch(lambda a, b, d: F.binary_cross_entropy_with_logits(a, b, reduction="none", pos_weight=d),
                       lambda a, b, d: torch_f().binary_cross_entropy_with_logits(a, b, reduction="none",
                                                                                  pos_weight=d),
                       [z, t, pw], np.float64, grad_of=[0])
    assert np.isfinite(npy(lo)).all()


@given(st.lists(st.floats(-15, 15), min_size=1, max_size=20), st.floats(0, 1))
def test_bce_with_logits_equals_bce_of_sigmoid(logits, target):
    """Away from saturation the fused, stable form equals BCE of the sigmoid (a property, no PyTorch needed)."""
    z = np.array(logits)  # |z| <= 15: the naive reference below is still accurate there
    t = np.full_like(z, target)
    zt = tg.tensor(z, requires_grad=True)
    fused = F.binary_cross_entropy_with_logits(zt, tg.tensor(t), reduction="sum")
    p = 1 / (1 + np.exp(-z))
    ref = -(t * np.log(p) + (1 - t) * np.log1p(-p)).sum()
    assert fused.item() == pytest.approx(ref, rel=1e-9, abs=1e-9)
    fused.backward()
    np.testing.assert_allclose(zt.grad.numpy(), p - t, rtol=1e-9, atol=1e-12)


def test_bce_gradients_for_weight_and_pos_weight_by_gradcheck():
    rng = np.random.default_rng(3)
    z = tg.tensor(rng.standard_normal((4, 3)) * 2, requires_grad=True)
    t = tg.tensor(rng.uniform(0, 1, (4, 3)), requires_grad=True)
    w = tg.tensor(rng.uniform(0.5, 2, (4, 3)), requires_grad=True)
    pw = tg.tensor(rng.uniform(0.5, 2, (3,)), requires_grad=True)
    for reduction in REDUCTIONS:
        assert tg.gradcheck(lambda *a: F.binary_cross_entropy_with_logits(*a[:3], reduction, pos_weight=a[3]),
                            (z, t, w, pw))
    p = tg.tensor(rng.uniform(0.1, 0.9, (4, 3)), requires_grad=True)
    assert tg.gradcheck(lambda p, t, w: F.binary_cross_entropy(p, t, w, reduction="sum"), (p, t, w))


# ---- cross entropy and nll ----------------------------------------------------------------------------------------
CE_SHAPES = [((6, 4), (6,)), ((3, 4, 2), (3, 2)), ((4,), ())]


def _targets(shape, c, seed=0, ignore=False):
    t = np.random.default_rng(seed).integers(0, c, size=shape).astype(np.int64)
    if ignore and t.size > 1:
        t.reshape(-1)[1] = -100
    return t


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", CE_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy(dtype, reduction, shapes, weighted, ignore, smoothing):
    zshape, tshape = shapes
    c = zshape[1] if len(zshape) > 1 else zshape[0]
    z = rand(*zshape, dtype=dtype) * 3
    t = _targets(tshape, c, ignore=ignore)
    w = np.random.default_rng(2).uniform(0.5, 2, c).astype(dtype) if weighted else None
    against_torch(lambda a, b, ww: F.cross_entropy(a, b, ww, reduction=reduction, label_smoothing=smoothing),
                  lambda a, b, ww: torch_f().cross_entropy(a, b, ww, reduction=reduction, label_smoothing=smoothing),
                  [z, t, w], dtype, grad_of=[0])


@requires_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets(reduction, weighted, smoothing):
    z = rand(5, 4) * 2
    p = np.random.default_rng(1).dirichlet(np.ones(4), size=5)
    w = np.random.default_rng(2).uniform(0.5, 2, 4) if weighted else None
    against_torch(lambda a, b, ww: F.cross_entropy(a, b, ww, reduction=reduction, label_smoothing=smoothing),
                  lambda a, b, ww: torch_f().cross_entropy(a, b, ww, reduction=reduction, label_smoothing=smoothing),
                  [z, p, w], np.float64, grad_of=[0, 1])


@requires_torch
def test_cross_entropy_with_every_target_ignored_is_nan_as_pytorch():
    z, t = rand(3, 4), np.full(3, -100, dtype=np.int64)
    lo = F.cross_entropy(tg.tensor(z), tg.tensor(t))
    assert math.isnan(lo.item()) and math.isnan(torch_f().cross_entropy(*map(__import__("torch").tensor,
                                                                              (z, t))).item())
    assert F.cross_entropy(tg.tensor(z), tg.tensor(t), reduction="sum").item() == 0


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", CE_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_nll_loss(dtype, reduction, shapes, weighted, ignore):
    zshape, tshape = shapes
    c = zshape[1] if len(zshape) > 1 else zshape[0]
    x = rand(*zshape, dtype=dtype)
    t = _targets(tshape, c, seed=4, ignore=ignore)
    w = np.random.default_rng(2).uniform(0.5, 2, c).astype(dtype) if weighted else None
    against_torch(lambda a, b, ww: F.nll_loss(a, b, ww, ignore_index=-100, reduction=reduction),
                  lambda a, b, ww: torch_f().nll_loss(a, b, ww, ignore_index=-100, reduction=reduction),
                  [x, t, w], dtype, grad_of=[0])


def test_cross_entropy_equals_nll_of_log_softmax():
    z = tg.tensor(rand(5, 7) * 2, requires_grad=True)
    t = tg.tensor(_targets((5,), 7, seed=3))
    a = F.cross_entropy(z, t, ignore_index=2)
    (ga,) = tg.grad(a, z)
    b = F.nll_loss(F.log_softmax(z, 1), t, ignore_index=2)
    (gb,) = tg.grad(b, z)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-10, atol=1e-14)


def test_class_loss_errors():
    z = tg.zeros(4, 3)
    with pytest.raises(TypeError, match="integer tensor.*float32"):
        F.cross_entropy(z, tg.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(4, 3\).*target of shape \(4,\), got \(5,\)"):
        F.cross_entropy(z, tg.tensor([0, 1, 2, 1, 0]))
    with pytest.raises(IndexError, match="target 3 is out of bounds for 3 classes"):
        F.cross_entropy(z, tg.tensor([0, 3, 1, 1]))
    with pytest.raises(IndexError, match="target -2 is out of bounds"):
        F.nll_loss(z, tg.tensor([0, -2, 1, 1]))
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum'; got 'avg'"):
        F.cross_entropy(z, tg.tensor([0, 1, 2, 1]), reduction="avg")
    with pytest.raises(ValueError, match=r"weight must be a tensor of shape \(3,\)"):
        F.nll_loss(z, tg.tensor([0, 1, 2, 1]), weight=tg.ones(4))
    with pytest.raises(TypeError, match="integer"):
        F.nll_loss(z, tg.tensor([True, False, True, True]))
    assert F.cross_entropy(z, tg.tensor([0, -100, 2, 1])).item() == pytest.approx(math.log(3))


def test_pointwise_loss_errors():
    a, b = tg.zeros(4, 3), tg.zeros(3, 4)
    for fn in (F.mse_loss, F.l1_loss, F.binary_cross_entropy, F.binary_cross_entropy_with_logits, F.kl_normal):
        with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
            fn(a, b)
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(a, a, reduction="mena")
    with pytest.raises(TypeError, match="int64"):
        F.mse_loss(a, tg.zeros(4, 3, dtype=tg.int64))
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.binary_cross_entropy(a + 2, a)
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\)"):
        F.binary_cross_entropy_with_logits(a, a, pos_weight=tg.ones(4))


# ---- second derivatives -------------------------------------------------------------------------------------------
def _leaf(array):
    return tg.tensor(array, requires_grad=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradgradcheck_bce_with_logits(reduction):
    rng = np.random.default_rng(5)
    z, t = _leaf(rng.standard_normal((3, 2)) * 2), _leaf(rng.uniform(0, 1, (3, 2)))
    w, pw = tg.tensor(rng.uniform(0.5, 2, (3, 2))), _leaf(rng.uniform(0.5, 2, (2,)))
    assert tg.gradgradcheck(lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction=reduction), (z, t))
    assert tg.gradgradcheck(lambda z, t, pw: F.binary_cross_entropy_with_logits(z, t, w, reduction, pos_weight=pw),
                            (z, t, pw))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", CE_SHAPES)
def test_gradgradcheck_cross_entropy(reduction, shapes):
    zshape, tshape = shapes
    c = zshape[1] if len(zshape) > 1 else zshape[0]
    z = _leaf(rand(*zshape, seed=6) * 2)
    t = tg.tensor(_targets(tshape, c, seed=7, ignore=True))
    w = tg.tensor(np.random.default_rng(2).uniform(0.5, 2, c))
    assert tg.gradgradcheck(lambda z: F.cross_entropy(z, t, reduction=reduction), (z,))
    assert tg.gradgradcheck(lambda z: F.cross_entropy(z, t, w, reduction=reduction), (z,))
    assert tg.gradgradcheck(lambda z: F.cross_entropy(z, t, w, reduction=reduction, label_smoothing=0.1), (z,))
    assert tg.gradgradcheck(lambda z: F.nll_loss(z.log_softmax(_axis(z)), t, w, reduction=reduction), (z,))


def _axis(z):
    return 1 if z.ndim >= 2 else 0


def test_gradgradcheck_soft_targets_and_other_losses():
    z, p = _leaf(rand(3, 4) * 2), _leaf(np.random.default_rng(1).dirichlet(np.ones(4), size=3))
    assert tg.gradgradcheck(lambda z, p: F.cross_entropy(z, p, label_smoothing=0.2), (z, p))
    x, t = _leaf(rand(3, 2)), _leaf(rand(3, 2, seed=1))
    probs = _leaf(np.random.default_rng(2).uniform(0.1, 0.9, (3, 2)))
    var = _leaf(np.abs(rand(3, 2, seed=3)) + 0.2)
    assert tg.gradgradcheck(lambda x, t: F.mse_loss(x, t), (x, t))
    assert tg.gradgradcheck(lambda p, t: F.binary_cross_entropy(p, t), (probs, t * 0 + 0.3))
    assert tg.gradgradcheck(lambda x, t, v: F.gaussian_nll_loss(x, t, v), (x, t, var))
    assert tg.gradgradcheck(lambda m, lv: F.kl_normal(m, lv), (x, t))


# ---- kl_normal ----------------------------------------------------------------------------------------------------
def test_kl_normal_closed_form_and_reductions():
    mu, logvar = rand(4, 3), rand(4, 3, seed=1)
    per = -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar))
    # the same thing from the definition: log(sigma_q / sigma_p) + (sigma^2 + mu^2) / 2 - 1/2 with sigma_p = 1
    sigma = np.exp(0.5 * logvar)
    np.testing.assert_allclose(per, -np.log(sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5, rtol=1e-12)
    m, lv = tg.tensor(mu, requires_grad=True), tg.tensor(logvar)
    np.testing.assert_allclose(npy(F.kl_normal(m, lv, reduction="none")), per, rtol=1e-12)
    assert F.kl_normal(m, lv).item() == pytest.approx(per.sum(), rel=1e-12)  # "sum" is the default
    assert F.kl_normal(m, lv, reduction="mean").item() == pytest.approx(per.sum() / 4, rel=1e-12)  # per sample
    assert F.kl_normal(tg.tensor(mu[0]), tg.tensor(logvar[0]), "mean").item() == pytest.approx(per[0].sum())
    F.kl_normal(m, lv).backward()
    np.testing.assert_allclose(m.grad.numpy(), mu, rtol=1e-12)  # d/dmu = mu
    assert F.kl_normal(tg.zeros(2, 3), tg.zeros(2, 3)).item() == 0  # KL(N(0, 1) || N(0, 1)) = 0


@requires_torch
def test_kl_normal_matches_torch_distributions():
    import torch
    from torch.distributions import Normal, kl_divergence
    mu, logvar = rand(5, 2), rand(5, 2, seed=1)
    ref = kl_divergence(Normal(torch.tensor(mu), torch.tensor(np.exp(0.5 * logvar))), Normal(0.0, 1.0))
    np.testing.assert_allclose(npy(F.kl_normal(tg.tensor(mu), tg.tensor(logvar), "none")), ref.numpy(),
                               rtol=1e-10)


# ---- modules ------------------------------------------------------------------------------------------------------
def test_loss_modules_match_functional_and_keep_weights_as_buffers():
    z, t = tg.tensor(rand(6, 4)), tg.tensor(_targets((6,), 4, ignore=True))
    w = tg.tensor(np.linspace(0.5, 2, 4))
    ce = nn.CrossEntropyLoss(w, label_smoothing=0.1, reduction="sum")
    assert ce(z, t).item() == F.cross_entropy(z, t, w, reduction="sum", label_smoothing=0.1).item()
    assert list(ce.state_dict()) == ["weight"] and ce.weight is w
    t1 = tg.tensor(_targets((6,), 4, seed=1))
    assert nn.NLLLoss(ignore_index=1)(z, t1).item() == F.nll_loss(z, t1, ignore_index=1).item()
    x, y = tg.tensor(rand(3, 4)), tg.tensor(rand(3, 4, seed=1))
    assert nn.MSELoss()(x, y).item() == F.mse_loss(x, y).item()
    assert nn.L1Loss(reduction="sum")(x, y).item() == F.l1_loss(x, y, reduction="sum").item()
    p = tg.tensor(np.full((3, 4), 0.3))
    assert nn.BCELoss()(p, p).item() == F.binary_cross_entropy(p, p).item()
    pw = tg.tensor(np.full(4, 3.0))
    bce = nn.BCEWithLogitsLoss(pos_weight=pw)
    assert bce(x, p).item() == F.binary_cross_entropy_with_logits(x, p, pos_weight=pw).item()
    assert list(bce.state_dict()) == ["pos_weight"]
    bce.to(tg.float32)
    assert bce.pos_weight.dtype == tg.float32
    var = tg.tensor(np.full((3, 4), 0.5))
    assert nn.GaussianNLLLoss(full=True)(x, y, var).item() == F.gaussian_nll_loss(x, y, var, full=True).item()
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="average")
    assert repr(nn.BCEWithLogitsLoss()) == "BCEWithLogitsLoss()"


@requires_torch
def test_loss_module_state_dict_keys_match_pytorch():
    import torch
    w = np.ones(3)
    pairs = [(nn.CrossEntropyLoss(tg.tensor(w)), torch.nn.CrossEntropyLoss(torch.tensor(w))),
             (nn.BCEWithLogitsLoss(tg.tensor(w), pos_weight=tg.tensor(w)),
              torch.nn.BCEWithLogitsLoss(torch.tensor(w), pos_weight=torch.tensor(w))),
             (nn.MSELoss(), torch.nn.MSELoss())]
    for ours, theirs in pairs:
        assert list(ours.state_dict()) == list(theirs.state_dict())


# ---- device path --------------------------------------------------------------------------------------------------
def test_losses_on_device(device):
    rng = np.random.default_rng(0)
    z = tg.tensor(rng.standard_normal((5, 3)), device=device, requires_grad=True)
    t = tg.tensor(rng.integers(0, 3, 5), device=device)
    pr = tg.tensor(rng.uniform(0.1, 0.9, (5, 3)), device=device)
    w = tg.tensor(np.ones(3), device=device)
    losses = [F.cross_entropy(z, t, w, label_smoothing=0.1), F.cross_entropy(z, pr), F.nll_loss(z, t, w),
              F.binary_cross_entropy_with_logits(z, pr, pos_weight=w), F.binary_cross_entropy(z.sigmoid(), pr),
              F.mse_loss(z, pr), F.l1_loss(z, pr), F.gaussian_nll_loss(z, pr, pr), F.kl_normal(z, z)]
    total = losses[0]
    for loss in losses[1:]:
        assert loss.device == device
        total = total + loss
    total.backward()
    assert z.grad.device == device and np.isfinite(npy(z.grad)).all()
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(z, tg.tensor([0, 1, 2, 3, 0], device=device))


def test_class_weights_follow_the_input_dtype():
    z = tg.tensor(rand(4, 3, dtype=np.float32), requires_grad=True)
    t = tg.tensor([0, 1, 2, 1])
    w = tg.tensor(np.array([0.5, 1.0, 2.0]))  # float64 weights, float32 logits
    for loss in (F.cross_entropy(z, t, w, label_smoothing=0.1), F.nll_loss(z, t, w)):
        assert loss.dtype == np.float32
        (g,) = tg.grad(loss, z)
        assert g.dtype == np.float32
