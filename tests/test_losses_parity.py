"""The losses and nn.functional ops added for PyTorch parity (kl_div, smooth_l1_loss, huber_loss, softmin,
normalize, cosine_similarity) and their modules, against PyTorch: values, gradients of both inputs and second
derivatives, float64 (tight) and float32, every reduction; and their argument checks."""
import numpy as np
import pytest

import tinygen as tg
import tinygen.nn.functional as F
from conftest import requires_torch

pytestmark = requires_torch

RNG = np.random.default_rng(7)
# input - target keeps >= 0.3 away from 0 and from every beta / delta used below (no kinks)
X = np.array([[0.4, -1.3, 2.2, 0.1], [1.7, -0.2, -2.4, 0.9], [-0.6, 0.8, 1.3, -1.9]])
T = X + np.array([[0.5, -1.5, 2.5, -0.5], [3.5, 0.5, -0.5, 1.5], [-2.5, 0.5, -1.5, 4.5]])
LOGP = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]]))
Q = np.array([[0.3, 0.3, 0.2, 0.2], [0.1, 0.6, 0.1, 0.2], [0.4, 0.4, 0.1, 0.1]])


def _torch_F():
    import torch.nn.functional as TF
    return TF


CASES = {
    **{f"kl_div_{r}": (lambda F_, a, b, r=r: F_.kl_div(a, b, reduction=r), LOGP, Q)
       for r in ("none", "mean", "sum", "batchmean")},
    **{f"kl_div_log_target_{r}": (lambda F_, a, b, r=r: F_.kl_div(a, b, reduction=r, log_target=True), LOGP,
                                  np.log(Q)) for r in ("none", "batchmean")},
    **{f"smooth_l1_{r}_beta{b}": (lambda F_, a, t, r=r, b=b: F_.smooth_l1_loss(a, t, reduction=r, beta=b), X, T)
       for r in ("none", "mean", "sum") for b in (1.0, 2.0, 0.0)},
    **{f"huber_{r}_delta{d}": (lambda F_, a, t, r=r, d=d: F_.huber_loss(a, t, reduction=r, delta=d), X, T)
       for r in ("none", "mean", "sum") for d in (1.0, 2.0, 0.25)},
    "softmin_dim0": (lambda F_, a, b: F_.softmin(a, 0) * b, X, T),
    "softmin_dim1": (lambda F_, a, b: F_.softmin(a, dim=1) * b, X, T),
    **{f"normalize_p{p}_dim{d}": (lambda F_, a, b, p=p, d=d: F_.normalize(a, p, d) * b, X, T)
       for p in (2.0, 1.0, 3.0) for d in (0, 1, -1)},
    **{f"cosine_similarity_dim{d}": (lambda F_, a, b, d=d: F_.cosine_similarity(a, b, d), X, T) for d in (0, 1)},
    "cosine_similarity_broadcast": (lambda F_, a, b: F_.cosine_similarity(a, b[:1], 1), X, T),
}


def _run(fn, a, b, lib):
    """Values, first derivatives (both inputs) and second derivatives along a fixed direction."""
    if lib == "tinygen":
        ta, tb = tg.tensor(a, requires_grad=True), tg.tensor(b, requires_grad=True)
        out = fn(F, ta, tb)
        u = tg.tensor(np.linspace(0.5, 1.5, out.numel()).reshape(out.shape).astype(a.dtype))
        ga, gb = tg.grad((out * u).sum(), [ta, tb], create_graph=True)
        w = [tg.tensor(np.cos(np.arange(a.size) + k).reshape(a.shape).astype(a.dtype)) for k in (0, 1)]
        second = tg.grad((ga * w[0] + gb * w[1]).sum(), [ta, tb], allow_unused=True)
        conv = (lambda t: None if t is None else t.detach().numpy())
        return [conv(out), conv(ga), conv(gb)] + [conv(s) for s in second]
    import torch
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    out = fn(_torch_F(), ta, tb)
    u = torch.tensor(np.linspace(0.5, 1.5, out.numel()).reshape(tuple(out.shape)).astype(a.dtype))
    ga, gb = torch.autograd.grad((out * u).sum(), [ta, tb], create_graph=True)
    w = [torch.tensor(np.cos(np.arange(a.size) + k).reshape(a.shape).astype(a.dtype)) for k in (0, 1)]
    second = torch.autograd.grad((ga * w[0] + gb * w[1]).sum(), [ta, tb], allow_unused=True)
    conv = (lambda t: None if t is None else t.detach().numpy(force=True))
    return [conv(out), conv(ga), conv(gb)] + [conv(s) for s in second]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-11, 1e-13), (np.float32, 2e-5, 2e-6)],
                         ids=["float64", "float32"])
def test_matches_torch_values_gradients_and_second_derivatives(name, dtype, rtol, atol):
    fn, a, b = CASES[name]
    ours = _run(fn, a.astype(dtype), b.astype(dtype), "tinygen")
    theirs = _run(fn, a.astype(dtype), b.astype(dtype), "torch")
    for what, o, t in zip(["value", "grad input", "grad target", "second input", "second target"], ours, theirs):
        if o is None or t is None:  # a derivative one side leaves unused must be zero on the other
            assert np.all((t if o is None else o) == 0), f"{what}: {o} vs {t}"
            continue
        assert o.shape == t.shape and o.dtype == t.dtype, f"{what}: {o.shape}{o.dtype} vs {t.shape}{t.dtype}"
        np.testing.assert_allclose(o, t, rtol=rtol, atol=atol, err_msg=what)


def test_zero_vectors_like_torch():
    """normalize and cosine_similarity of an all-zero row: finite, and PyTorch's gradients (eps clamps)."""
    import torch
    a = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    b = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    for fn in (lambda F_, x, y: F_.normalize(x, dim=1) * y, lambda F_, x, y: F_.cosine_similarity(x, y)):
        ta, tb = tg.tensor(a, requires_grad=True), tg.tensor(b, requires_grad=True)
        xa, xb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        out, t_out = fn(F, ta, tb), fn(_torch_F(), xa, xb)
        out.sum().backward()
        t_out.sum().backward()
        np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(ta.grad.numpy(), xa.grad.numpy(), rtol=1e-12)
        np.testing.assert_allclose(tb.grad.numpy(), xb.grad.numpy(), rtol=1e-12)


def test_kl_div_with_zero_target_entries_like_torch():
    import torch
    q = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    logp = np.log(np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    x = tg.tensor(logp, requires_grad=True)
    tx = torch.tensor(logp, requires_grad=True)
    out = F.kl_div(x, tg.tensor(q), reduction="batchmean")
    t_out = _torch_F().kl_div(tx, torch.tensor(q), reduction="batchmean")
    out.backward()
    t_out.backward()
    np.testing.assert_allclose(out.item(), t_out.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


def test_huber_loss_weight_like_torch():
    import torch
    w = RNG.uniform(0.5, 2.0, X.shape)
    x = tg.tensor(X, requires_grad=True)
    tx = torch.tensor(X, requires_grad=True)
    for r in ("none", "mean", "sum"):
        out = F.huber_loss(x, tg.tensor(T), reduction=r, delta=1.0, weight=tg.tensor(w))
        t_out = _torch_F().huber_loss(tx, torch.tensor(T), reduction=r, delta=1.0, weight=torch.tensor(w))
        np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-12)
        (g,) = tg.grad(out.sum(), [x])
        (tgr,) = torch.autograd.grad(t_out.sum(), [tx])
        np.testing.assert_allclose(g.numpy(), tgr.numpy(), rtol=1e-12)


# ---- modules ---------------------------------------------------------------------------------------------------------
def test_modules_match_their_functional_forms_and_torch():
    import torch
    pairs = [
        (tg.nn.KLDivLoss(reduction="batchmean"), torch.nn.KLDivLoss(reduction="batchmean"), LOGP, Q),
        (tg.nn.KLDivLoss(reduction="sum", log_target=True), torch.nn.KLDivLoss(reduction="sum", log_target=True),
         LOGP, np.log(Q)),
        (tg.nn.SmoothL1Loss(beta=2.0), torch.nn.SmoothL1Loss(beta=2.0), X, T),
        (tg.nn.SmoothL1Loss(reduction="none"), torch.nn.SmoothL1Loss(reduction="none"), X, T),
        (tg.nn.HuberLoss(delta=0.25), torch.nn.HuberLoss(delta=0.25), X, T),
        (tg.nn.CosineSimilarity(dim=0), torch.nn.CosineSimilarity(dim=0), X, T),
    ]
    for ours, theirs, x, y in pairs:
        np.testing.assert_allclose(ours(tg.tensor(x), tg.tensor(y)).numpy(),
                                   theirs(torch.tensor(x), torch.tensor(y)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(tg.nn.Softmin(1)(tg.tensor(X)).numpy(), torch.nn.Softmin(1)(torch.tensor(X)).numpy(),
                               rtol=1e-12)
    assert "dim=1" in repr(tg.nn.Softmin(1)) and "eps=1e-08" in repr(tg.nn.CosineSimilarity())


def test_legacy_size_average_and_reduce_flags_like_torch():
    import torch
    for size_average, reduce in ((False, None), (None, False), (True, True), (False, True)):
        ours = F.smooth_l1_loss(tg.tensor(X), tg.tensor(T), size_average=size_average, reduce=reduce)
        theirs = _torch_F().smooth_l1_loss(torch.tensor(X), torch.tensor(T), size_average=size_average,
                                           reduce=reduce)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)
        m = tg.nn.KLDivLoss(size_average=size_average, reduce=reduce)
        assert m.reduction == torch.nn.KLDivLoss(size_average=size_average, reduce=reduce).reduction


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.smooth_l1_loss(tg.tensor(X), tg.tensor(T), beta=-1.0), ValueError, "beta must be >= 0"),
    (lambda: F.huber_loss(tg.tensor(X), tg.tensor(T), delta=0.0), ValueError, "delta must be positive"),
    (lambda: F.huber_loss(tg.tensor(X), tg.tensor(T), reduction="batchmean"), ValueError, "reduction must be"),
    (lambda: F.kl_div(tg.tensor(X), tg.tensor(T), reduction="avg"), ValueError, "reduction must be"),
    (lambda: F.kl_div(tg.tensor(X), tg.tensor(T[:1])), ValueError, "must be equal"),
    (lambda: F.smooth_l1_loss(tg.tensor(X), tg.tensor(T, dtype=tg.int64)), TypeError, "floating"),
    (lambda: F.huber_loss(tg.tensor(X), tg.tensor(T), weight=tg.ones(4)), ValueError, "weight must have"),
    (lambda: F.softmin(tg.tensor(X)), TypeError, "dim must be given"),
    (lambda: F.cosine_similarity(tg.tensor(X), tg.ones(2, 4, dtype=tg.float64)), RuntimeError, "do not broadcast"),
    (lambda: F.normalize(tg.tensor(X), dim=2), IndexError, "Dimension out of range"),
    (lambda: tg.nn.KLDivLoss(reduction="avg"), ValueError, "reduction must be"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
