"""Sequential runs BatchNorm + ReLU / LeakyReLU as one node (nn.functional.batch_norm_act): the values, gradients,
running statistics and second derivatives of the two separate modules, in training and in evaluation, kernels on
and off; and where it must not fuse."""
import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen import kernels

ACTIVATIONS = [lambda: nn.ReLU(), lambda: nn.LeakyReLU(0.2), lambda: nn.LeakyReLU(0.0)]
IDS = ["relu", "leaky_relu", "leaky_relu_0"]
SHAPES = [(6, 5), (4, 3, 7), (5, 4, 3, 2), (2, 3, 1, 1)]


def _pair(make_bn, make_act, dtype):
    """A fused Sequential and a copy of its modules run one by one (same parameters and running statistics)."""
    tg.manual_seed(1)
    bn, act = make_bn().to(dtype), make_act()
    twin = make_bn().to(dtype)
    twin.load_state_dict(bn.state_dict())
    with tg.no_grad():
        bn.weight.data[...] = tg.randn(*bn.weight.shape, dtype=dtype).numpy()
        bn.bias.data[...] = tg.randn(*bn.bias.shape, dtype=dtype).numpy()
        twin.weight.data[...] = bn.weight.data
        twin.bias.data[...] = bn.bias.data
    return nn.Sequential(bn, act), (twin, act)


@pytest.mark.parametrize("make_act", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("numba", [True, False], ids=["kernels", "plain"])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_batch_norm_matches_separate_modules(make_act, numba, dtype, shape, training):
    if numba and not kernels.enabled():
        pytest.skip("Numba kernels are not available (numba missing or TINYGEN_NUMBA=0)")
    make_bn = {2: lambda: nn.BatchNorm1d(shape[1]), 3: lambda: nn.BatchNorm1d(shape[1]),
               4: lambda: nn.BatchNorm2d(shape[1])}[len(shape)]
    fused_seq, (bn, act) = _pair(make_bn, make_act, dtype)
    if not training:  # running statistics that are not the batch's
        for m in (fused_seq[0], bn):
            m.running_mean.data[...] = np.linspace(-1, 1, shape[1])
            m.running_var.data[...] = np.linspace(0.5, 2, shape[1])
        fused_seq.eval()
        bn.eval()
    x0 = tg.randn(*shape, dtype=dtype) * 2 + 0.5
    g = tg.randn(*shape, dtype=dtype)
    with kernels.enabled_as(numba):
        x = x0.clone().requires_grad_(True)
        fused = fused_seq(x)
        assert fused.grad_fn.name() == f"BatchNorm+{'ReLU' if make_act().fused_spec()[0] == 'relu' else 'LeakyReLU'}" \
                                       f"Backward"
        a = tg.grad(fused, [x, fused_seq[0].weight, fused_seq[0].bias], g)
        xs = x0.clone().requires_grad_(True)
        separate = act(bn(xs))
        b = tg.grad(separate, [xs, bn.weight, bn.bias], g)
    tol = 1e-5 if dtype == tg.float32 else 1e-11
    np.testing.assert_allclose(fused.detach().numpy(), separate.detach().numpy(), rtol=tol, atol=tol)
    for name, u, v in zip(("x", "weight", "bias"), a, b):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=tol, atol=tol * 10, err_msg=name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(fused_seq[0], name).numpy(), getattr(bn, name).numpy(), rtol=tol,
                                   err_msg=name)


@pytest.mark.parametrize("act,slope", [("relu", 0.0), ("leaky_relu", 0.3)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_act_first_and_second_derivatives(act, slope, training):
    tg.manual_seed(2)
    x = (tg.randn(5, 3, 2, 2, dtype=tg.float64) + 0.3).requires_grad_(True)
    w = tg.randn(3, dtype=tg.float64).requires_grad_(True)
    b = tg.randn(3, dtype=tg.float64).requires_grad_(True)
    rm, rv = tg.zeros(3, dtype=tg.float64), tg.ones(3, dtype=tg.float64)

    def f(x, w, b):
        return F.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, act, slope)
    assert tg.gradcheck(f, [x, w, b])
    assert tg.gradgradcheck(f, [x, w, b])


def test_plain_backward_matches_the_recorded_one():
    # the plain backward runs the fused kernel; create_graph=True the differentiable formula
    tg.manual_seed(3)
    x = tg.randn(6, 4, 3, 3, dtype=tg.float64, requires_grad=True)
    w, b = tg.randn(4, dtype=tg.float64, requires_grad=True), tg.randn(4, dtype=tg.float64, requires_grad=True)

    def loss():
        y = F.batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, "leaky_relu", 0.2)
        return (y * y).sum()
    plain = tg.grad(loss(), [x, w, b])
    recorded = tg.grad(loss(), [x, w, b], create_graph=True)
    for u, v in zip(plain, recorded):
        np.testing.assert_allclose(u.numpy(), v.detach().numpy(), rtol=1e-11, atol=1e-11)


def test_not_fused_where_it_cannot_be():
    x = tg.randn(4, 3, 2, 2)
    for act in (nn.LeakyReLU(-0.5), nn.Tanh(), nn.Sigmoid()):
        y = nn.Sequential(nn.BatchNorm2d(3), act)(x)
        assert not y.grad_fn.name().startswith("BatchNorm+")
    seq = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    seq.fuse_linear_activation = False
    assert not seq(x).grad_fn.name().startswith("BatchNorm+")

    class OwnForward(nn.BatchNorm2d):
        def forward(self, input):
            return super().forward(input) * 2
    assert not nn.Sequential(OwnForward(3), nn.ReLU())(x).grad_fn.name().startswith("BatchNorm+")


def test_batch_norm_act_errors():
    x, rm, rv = tg.randn(4, 3), tg.zeros(3), tg.ones(3)
    with pytest.raises(ValueError, match="batch_norm_act: activation must be one of"):
        F.batch_norm_act(x, rm, rv, activation="tanh")
    with pytest.raises(ValueError, match="batch_norm_act: leaky_relu needs a negative_slope >= 0"):
        F.batch_norm_act(x, rm, rv, activation="leaky_relu", negative_slope=-1.0)
    with pytest.raises(ValueError, match="batch_norm_act: weight has shape"):
        F.batch_norm_act(x, rm, rv, tg.ones(4), activation="relu")
    with pytest.raises(ValueError, match="batch_norm_act: running_mean and running_var are required"):
        F.batch_norm_act(x, None, None, training=False)
