"""Gradient penalties (double backward through a small MLP critic) against PyTorch and against central differences.

The critic is written with raw ops (matmul + bias, leaky_relu), the same way in tinygen and in PyTorch:
  WGAN-GP: lambda * mean((|grad_x D(x_hat)| - 1)^2) at x_hat = eps * real + (1 - eps) * fake;
  R1:      gamma / 2 * mean(|grad_x D(real)|^2).
Both need the gradient w.r.t. x as a differentiable function of the parameters (create_graph=True).
"""
import numpy as np
import pytest

import tinygen as tg
from conftest import requires_torch

SIZES = (2, 16, 16, 1)
BATCH = 8
SLOPE = 0.2


def make_params(sizes, seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        params.append(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))
        params.append(rng.standard_normal(n_out) * 0.1)
    return params


def make_batch(seed=1):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((BATCH, SIZES[0])) + 1.0
    fake = rng.standard_normal((BATCH, SIZES[0])) * 0.5
    eps = rng.random((BATCH, 1))
    return real, fake, eps


def critic(x, params, leaky_relu):
    h = x
    layers = list(zip(params[0::2], params[1::2]))
    for k, (w, b) in enumerate(layers):
        h = h @ w + b
        if k < len(layers) - 1:
            h = leaky_relu(h)
    return h


def tinygen_losses(params, real, fake, eps, lam=10.0, gamma=5.0):
    """(critic loss with WGAN-GP, the GP term alone, the R1 term alone) with tinygen."""
    leaky = lambda h: h.leaky_relu(SLOPE)
    real, fake, eps = (tg.tensor(a, dtype=tg.float64) for a in (real, fake, eps))
    with tg.enable_grad():  # the penalties need a graph even where the caller (gradcheck) has none
        x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_()
        (g,) = tg.grad(critic(x_hat, params, leaky).sum(), [x_hat], create_graph=True)
        gp = lam * ((g * g).sum(1).sqrt() - 1).pow(2).mean()
        loss = critic(fake, params, leaky).mean() - critic(real, params, leaky).mean() + gp
        real_r = real.detach().requires_grad_()
        (gr,) = tg.grad(critic(real_r, params, leaky).sum(), [real_r], create_graph=True)
        r1 = gamma / 2 * (gr * gr).sum(1).mean()
    return loss, gp, r1


def torch_losses(params, real, fake, eps, lam=10.0, gamma=5.0):
    import torch
    import torch.nn.functional as F
    leaky = lambda h: F.leaky_relu(h, SLOPE)
    real, fake, eps = (torch.from_numpy(a) for a in (real, fake, eps))
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_()
    (g,) = torch.autograd.grad(critic(x_hat, params, leaky).sum(), [x_hat], create_graph=True)
    gp = lam * ((g * g).sum(1).sqrt() - 1).pow(2).mean()
    loss = critic(fake, params, leaky).mean() - critic(real, params, leaky).mean() + gp
    real_r = real.detach().requires_grad_()
    (gr,) = torch.autograd.grad(critic(real_r, params, leaky).sum(), [real_r], create_graph=True)
    r1 = gamma / 2 * (gr * gr).sum(1).mean()
    return loss, gp, r1


@requires_torch
@pytest.mark.parametrize("term", ["loss", "gp", "r1"])
def test_penalties_match_torch(term):
    import torch
    arrays = make_params(SIZES)
    real, fake, eps = make_batch()
    params = [tg.tensor(a, dtype=tg.float64, requires_grad=True) for a in arrays]
    t_params = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
    k = ["loss", "gp", "r1"].index(term)
    ours = tinygen_losses(params, real, fake, eps)[k]
    theirs = torch_losses(t_params, real, fake, eps)[k]
    assert ours.dtype == tg.float64 and ours.shape == ()
    assert abs(ours.item()) > 1e-3  # the term is not trivially zero, so matching gradients means something
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-12, atol=1e-12)
    # the penalties do not depend on the biases (the leaky_relu slopes are piecewise constant): no gradient there
    grads = tg.grad(ours, params, allow_unused=True)
    t_grads = torch.autograd.grad(theirs, t_params, allow_unused=True)
    for j, (p, g, t_g) in enumerate(zip(params, grads, t_grads)):
        g = np.zeros(p.shape) if g is None else g.numpy()
        t_g = np.zeros(p.shape) if t_g is None else t_g.numpy()
        if j % 2 == 0:
            assert np.abs(t_g).max() > 0, f"weight {j // 2} gets no gradient from the {term}"
        np.testing.assert_allclose(g, t_g, rtol=1e-10, atol=1e-12,
                                   err_msg=f"gradient of the {term} w.r.t. parameter {j}")


@requires_torch
def test_gp_backward_accumulates_into_grad_like_torch():
    """loss.backward() (not grad()) on the GP objective: .grad of every parameter as in PyTorch."""
    import torch
    arrays = make_params(SIZES, seed=3)
    real, fake, eps = make_batch(seed=4)
    params = [tg.tensor(a, dtype=tg.float64, requires_grad=True) for a in arrays]
    t_params = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
    tinygen_losses(params, real, fake, eps)[0].backward()
    torch_losses(t_params, real, fake, eps)[0].backward()
    for j, (p, tp) in enumerate(zip(params, t_params)):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=f"parameter {j}")


@pytest.mark.parametrize("term", ["gp", "r1"])
def test_penalty_gradients_match_central_differences(term):
    """Independent of PyTorch: the penalty's parameter gradients against finite differences, float64."""
    sizes = (2, 5, 4, 1)
    arrays = make_params(sizes, seed=5)
    real, fake, eps = make_batch(seed=6)
    weights = [tg.tensor(a, dtype=tg.float64, requires_grad=True) for a in arrays[0::2]]
    biases = [tg.tensor(a, dtype=tg.float64) for a in arrays[1::2]]
    k = {"gp": 1, "r1": 2}[term]

    def penalty(*ws):
        return tinygen_losses([p for wb in zip(ws, biases) for p in wb], real, fake, eps)[k]
    tg.gradcheck(penalty, weights, atol=1e-6, rtol=1e-5)
