"""Sequential runs Conv2d (or ConvTranspose2d) + activation as one fused node (nn.functional.conv2d_act,
conv_transpose2d_act): the values and gradients of the two separate ops (first and second order, plain backward and
create_graph), kernels on and off, channels-last and C-ordered inputs, on the "cuda" device; where it cannot fuse,
two nodes."""
import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen import kernels
from op_specs import host

ACTIVATIONS = [lambda: nn.ReLU(), lambda: nn.LeakyReLU(0.2), lambda: nn.Tanh(), lambda: nn.Sigmoid(),
               lambda: nn.ELU(0.7), lambda: nn.Softplus(beta=2.0)]
IDS = ["relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus"]
# (module, its arguments), input (N, C, H, W)
LAYERS = [((nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1)), (2, 3, 7, 8)),
          ((nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding="same", dilation=2, groups=2,
                            bias=False)), (2, 4, 6, 5)),
          ((nn.Conv2d, dict(in_channels=1, out_channels=5, kernel_size=4, stride=2, padding=1)), (3, 1, 8, 8)),
          ((nn.ConvTranspose2d, dict(in_channels=4, out_channels=3, kernel_size=4, stride=2, padding=1)), (2, 4, 4, 5)),
          ((nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                                     output_padding=1, groups=2, bias=False)), (2, 4, 3, 3))]
LAYER_IDS = ["strided", "grouped-same-nobias", "one-channel", "transposed", "transposed-grouped-outpad-nobias"]


def _conv(args, dtype):
    cls, kwargs = args
    return cls(**kwargs).to(dtype)


@pytest.mark.parametrize("make_act", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("numba", [True, False], ids=["kernels", "plain"])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64], ids=["f32", "f64"])
def test_fused_sequential_matches_separate_ops(make_act, layer, numba, dtype):
    if numba and not kernels.enabled():
        pytest.skip("Numba kernels are not available (numba missing or TINYGEN_NUMBA=0)")
    tg.manual_seed(3)
    args, shape = layer
    act, conv = make_act(), _conv(args, dtype)
    # a C-ordered image, and a channels-last one (what a convolution before this one returns)
    for x in (tg.randn(*shape, dtype=dtype), tg.randn(shape[0], *shape[2:], shape[1], dtype=dtype).permute(0, 3, 1, 2)):
        x.requires_grad_(True)
        params = [x] + list(conv.parameters())
        with kernels.enabled_as(numba):
            fused = nn.Sequential(conv, act)(x)
            assert fused.grad_fn.name() == f"{type(conv).__name__}+{type(act).__name__}Backward"
            separate = act(conv(x))
            g = tg.randn(*fused.shape, dtype=dtype)
            plain = tg.grad(fused, params, g)
            recorded = tg.grad(nn.Sequential(conv, act)(x), params, g, create_graph=True)
            expected = tg.grad(separate, params, g)
        tol = 2e-5 if dtype == tg.float32 else 1e-12
        np.testing.assert_allclose(fused.detach().numpy(), separate.detach().numpy(), rtol=tol, atol=tol)
        for p, u, v, w in zip(params, plain, recorded, expected):
            assert u.shape == p.shape
            np.testing.assert_allclose(u.numpy(), w.numpy(), rtol=tol, atol=tol)
            np.testing.assert_allclose(v.detach().numpy(), w.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("make_act", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d_act", "conv_transpose2d_act"])
def test_first_and_second_derivatives(make_act, transposed):
    tg.manual_seed(4)
    spec = make_act().fused_spec()
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(2, 3, 3, stride=2, padding=1).to(tg.float64)
    x = tg.randn(2, 2, 5, 4, dtype=tg.float64, requires_grad=True)

    def f(x, w, b):
        if transposed:
            return F.conv_transpose2d_act(x, w, b, *spec, stride=2, padding=1, output_padding=1)
        return F.conv2d_act(x, w, b, *spec, stride=2, padding=1)
    assert tg.gradcheck(f, [x, conv.weight, conv.bias])
    assert tg.gradgradcheck(f, [x, conv.weight, conv.bias])


def test_conv2d_act_on_device(device):
    """On "cuda" (the stand-in without a GPU) the fused node gives the CPU's values and first and second
    derivatives."""
    results = []
    for dev in ("cpu", device):
        tg.manual_seed(6)
        net = nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1), nn.ELU(0.5), nn.ConvTranspose2d(4, 4, 3, 2, 1), nn.ReLU(),
                            nn.Conv2d(4, 3, 3), nn.Tanh()).to(tg.float64)
        net = net.to(dev)
        x = tg.tensor(np.random.default_rng(1).standard_normal((2, 2, 9, 8)), device=dev, requires_grad=True)
        y = net(x)
        assert y.grad_fn.name() == "Conv2d+TanhBackward"
        (gx,) = tg.grad(y.sum(), [x], create_graph=True)
        (net(x).sum() + (gx * gx).sum()).backward()
        results.append([host(y), host(gx)] + [host(p.grad) for p in net.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_unbatched_image():
    tg.manual_seed(7)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = tg.randn(2, 5, 5)
    y = nn.Sequential(conv, nn.ReLU())(x)
    assert y.shape == (3, 5, 5) and y.grad_fn.next_edges[0][0].name() == "Conv2d+ReLUBackward"  # then a squeeze
    np.testing.assert_allclose(y.detach().numpy(), F.relu(conv(x)).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_not_fused_where_it_cannot_be():
    x = tg.randn(2, 2, 6, 6)
    for net in (nn.Sequential(nn.Conv2d(2, 3, 3), nn.LeakyReLU(-0.5)),  # the slope cannot come from the output
                nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU())):
        assert not net(x).grad_fn.name().startswith("Conv2d+")

    class Shifted(nn.Conv2d):  # a subclass's own forward runs as written
        def forward(self, input):
            return super().forward(input) + 1.0
    conv = Shifted(2, 3, 3)
    y = nn.Sequential(conv, nn.ReLU())(x)
    np.testing.assert_allclose(y.detach().numpy(), F.relu(conv(x)).detach().numpy())
    # softplus below threshold 20 runs as two nodes (the output cannot tell which branch it came from)
    w = tg.randn(3, 2, 3, 3, requires_grad=True)
    assert F.conv2d_act(x, w, None, "softplus", 1.0, 1.0).grad_fn.name() == "SoftplusBackward"
    off = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    off.fuse_linear_activation = False
    assert off(x).grad_fn.name() == "ReluBackward"


def test_conv2d_act_errors():
    x, w = tg.randn(2, 2, 5, 5), tg.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="conv2d_act: unknown activation 'swish'"):
        F.conv2d_act(x, w, None, "swish")
    with pytest.raises(ValueError, match="conv2d_act: leaky_relu needs a parameter >= 0"):
        F.conv2d_act(x, w, None, "leaky_relu", -0.1)
    with pytest.raises(ValueError, match="conv2d_act: Given groups=1, weight of size"):
        F.conv2d_act(tg.randn(2, 4, 5, 5), w, None, "relu")
    with pytest.raises(ValueError, match="conv_transpose2d_act: unknown activation 'swish'"):
        F.conv_transpose2d_act(tg.randn(2, 3, 5, 5), w, None, "swish")
    with pytest.raises(ValueError, match="conv_transpose2d_act: output padding must be smaller"):
        F.conv_transpose2d_act(tg.randn(2, 3, 5, 5), w, None, "relu", stride=1, output_padding=1)


def test_sequential_fuses_a_transposed_convolution_with_its_output_padding():
    """Sequential calls a ConvTranspose2d without output_size (as PyTorch's does): the fused node takes the
    module's output_padding."""
    tg.manual_seed(8)
    conv = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
    x = tg.randn(2, 2, 4, 4, requires_grad=True)
    y = nn.Sequential(conv, nn.Sigmoid())(x)
    assert y.shape == (2, 3, 8, 8) and y.grad_fn.name() == "ConvTranspose2d+SigmoidBackward"
    np.testing.assert_allclose(y.detach().numpy(), F.sigmoid(conv(x)).detach().numpy(), rtol=1e-6, atol=1e-7)
