"""Optimizers and LR schedulers against PyTorch: a small MLP trained on the same batches from the same weights.

Parameters must agree within 1e-6 (float64) or 1e-4 (float32) relative to each tensor's largest entry after 100
steps, the learning rates of the schedules must be the very same floats, and the optimizer state must match too.
"""
import math

import numpy as np
import pytest
from conftest import HAS_TORCH, requires_torch

import tinygen
import tinygen.optim as optim
from tinygen.optim import lr_scheduler

if HAS_TORCH:
    import torch

pytestmark = requires_torch

SHAPES = [(16, 8), (16,), (16, 16), (16,), (4, 16), (4,)]  # an 8-16-16-4 MLP
TOL = {np.float64: 1e-6, np.float32: 1e-4}
STEPS = 100


def init(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) / math.sqrt(s[-1])).astype(dtype) for s in SHAPES]


def batches(n, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((32, 8)).astype(dtype), rng.standard_normal((32, 4)).astype(dtype))
            for _ in range(n)]


def mlp_loss(params, x, y, tanh):
    W1, b1, W2, b2, W3, b3 = params
    h = tanh(x @ W1.T + b1)
    h = tanh(h @ W2.T + b2)
    return ((h @ W3.T + b3 - y) ** 2).mean()


def grouped(params, lrs):
    """Two parameter groups (first layer, the rest) with their own lr; None: the optimizer's default lr."""
    if lrs is None:
        return params
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    for g, lr in zip(groups, lrs):
        if lr is not None:
            g["lr"] = lr
    return groups


class Pair:
    """The same model and optimizer in tinygen and in PyTorch."""

    def __init__(self, name, kw, dtype, group_lrs=None):
        arrays = init(dtype)
        self.tg = [tinygen.tensor(a, requires_grad=True) for a in arrays]
        self.pt = [torch.tensor(a, requires_grad=True) for a in arrays]
        self.tg_opt = getattr(optim, name)(grouped(self.tg, group_lrs), **kw)
        self.pt_opt = getattr(torch.optim, name)(grouped(self.pt, group_lrs), **kw)
        # maximize is tested on the negated loss, so that both runs follow the same (stable) trajectory
        self.sign = -1.0 if kw.get("maximize") else 1.0

    def step(self, x, y):
        self.tg_opt.zero_grad()
        (mlp_loss(self.tg, tinygen.tensor(x), tinygen.tensor(y), tinygen.tanh) * self.sign).backward()
        self.tg_opt.step()
        self.pt_opt.zero_grad()
        (mlp_loss(self.pt, torch.tensor(x), torch.tensor(y), torch.tanh) * self.sign).backward()
        self.pt_opt.step()

    def assert_close(self, tol):
        for i, (a, b) in enumerate(zip(self.tg, self.pt)):
            b = b.detach().numpy()
            np.testing.assert_allclose(a.detach().numpy(), b, rtol=tol, atol=tol * np.abs(b).max(),
                                       err_msg=f"parameter {i} (shape {b.shape})")


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.5, weight_decay=0.01, maximize=True)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, betas=(0.3, 0.4), maximize=True)),  # betas below 0.5: the other lerp form
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.5, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, maximize=True)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9)),
    ("RMSprop", dict(lr=1e-2, centered=True)),
    ("RMSprop", dict(lr=1e-2, weight_decay=0.1, alpha=0.9)),
    ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.5, weight_decay=0.1, alpha=0.9)),
    ("RMSprop", dict(lr=1e-3, maximize=True)),
]


def _id(cfg):
    """A test id that is the same in every process (a function by its name, not its address)."""
    name, kw = cfg
    return name + "-" + "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in kw.items())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_optimizer_matches_torch(name, kw, dtype):
    pair = Pair(name, kw, dtype)
    for x, y in batches(STEPS, dtype):
        pair.step(x, y)
    pair.assert_close(TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=1e-3)),
                                     ("AdamW", dict(lr=1e-3)), ("RMSprop", dict(lr=1e-3, centered=True))],
                         ids=["SGD", "Adam", "AdamW", "RMSprop"])
def test_parameter_groups_with_their_own_lr_match_torch(name, kw, dtype):
    pair = Pair(name, kw, dtype, group_lrs=(kw["lr"] * 4, None))  # the second group takes the default lr
    assert pair.tg_opt.param_groups[1]["lr"] == kw["lr"]
    for x, y in batches(STEPS, dtype):
        pair.step(x, y)
    pair.assert_close(TOL[dtype])


def test_state_dict_matches_torch():
    pair = Pair("Adam", dict(lr=1e-2, amsgrad=True), np.float64, group_lrs=(1e-2, 2e-2))
    for x, y in batches(10, np.float64):
        pair.step(x, y)
    ours, theirs = pair.tg_opt.state_dict(), pair.pt_opt.state_dict()
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    for g, h in zip(ours["param_groups"], theirs["param_groups"]):
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert g[key] == h[key], key
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for i, s in ours["state"].items():
        t = theirs["state"][i]
        assert set(s) == set(t)
        assert s["step"] == int(t["step"])
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_allclose(s[key].numpy(), t[key].numpy(), rtol=1e-9, atol=1e-15)


def _lambda(epoch):
    return 1.0 / (1.0 + 0.05 * epoch)


SCHEDULERS = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.97)),
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=1e-3)),
    ("LambdaLR", dict(lr_lambda=_lambda)),
]


@pytest.mark.parametrize("opt_name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=1e-2))],
                         ids=["SGD", "Adam"])
@pytest.mark.parametrize("sched_name,skw", SCHEDULERS, ids=[_id(s) for s in SCHEDULERS])
def test_scheduler_matches_torch(sched_name, skw, opt_name, kw):
    dtype = np.float64
    pair = Pair(opt_name, kw, dtype, group_lrs=(kw["lr"], kw["lr"] / 3))
    ours = getattr(lr_scheduler, sched_name)(pair.tg_opt, **skw)
    theirs = getattr(torch.optim.lr_scheduler, sched_name)(pair.pt_opt, **skw)
    assert ours.get_last_lr() == theirs.get_last_lr()
    for x, y in batches(40, dtype):  # over several periods of the cosine schedule
        pair.step(x, y)
        ours.step()
        theirs.step()
        assert ours.get_last_lr() == theirs.get_last_lr()  # the very same floats
        assert ours.last_epoch == theirs.last_epoch
    assert [g["lr"] for g in pair.tg_opt.param_groups] == [g["lr"] for g in pair.pt_opt.param_groups]
    pair.assert_close(TOL[dtype])
