"""What is benchmarked, defined once for every framework: architectures, initial weights, data, hyperparameters
and the FLOP count of one training step.

Every framework loads the same initial weights (made here with NumPy) and trains on the same batch, so the only
thing that differs between the columns of the results is the framework.
"""
import numpy as np


class Skip(Exception):
    """A measurement that cannot run here (framework not installed, feature missing); reported, never a failure."""


# ---- architectures ---------------------------------------------------------------------------------------------------
# Linear layers as (name, in_features, out_features), in forward order.
MLP_LAYERS = [("fc1", 784, 512), ("fc2", 512, 512), ("fc3", 512, 10)]
# PyTorch's examples/vae: fc1 784->400, fc21/fc22 400->20 (mu, logvar), fc3 20->400, fc4 400->784.
VAE_LAYERS = [("fc1", 784, 400), ("fc21", 400, 20), ("fc22", 400, 20), ("fc3", 20, 400), ("fc4", 400, 784)]
# PyTorch-GAN's gan.py with latent 100 and 28x28 images. BatchNorm1d(eps=0.8) follows every generator layer
# except the first and the last.
LATENT = 100
GEN_LAYERS = [("g1", 100, 128), ("g2", 128, 256), ("g3", 256, 512), ("g4", 512, 1024), ("g5", 1024, 784)]
GEN_BN = {"g2": 256, "g3": 512, "g4": 1024}
DIS_LAYERS = [("d1", 784, 512), ("d2", 512, 256), ("d3", 256, 1)]
BN_EPS = 0.8
BN_MOMENTUM = 0.1
LEAKY = 0.2
VAE_LATENT = 20
# DCGAN scaled to 28x28 (tinygen.models.dcgan's layout, unconditional, ngf = ndf = 64), as
# (name, transposed, in_channels, out_channels, kernel, stride, padding, bias, input side). G: ConvTranspose2d +
# BatchNorm2d + ReLU twice, then ConvTranspose2d + tanh; D: Conv2d + LeakyReLU, Conv2d + BatchNorm2d + LeakyReLU,
# Conv2d to one logit. Weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), biases 0 (the DCGAN paper's init).
DCGAN_G = [("g1", True, LATENT, 128, 7, 1, 0, False, 1), ("g2", True, 128, 64, 4, 2, 1, False, 7),
           ("g3", True, 64, 1, 4, 2, 1, True, 14)]
DCGAN_D = [("d1", False, 1, 64, 4, 2, 1, True, 28), ("d2", False, 64, 128, 4, 2, 1, False, 14),
           ("d3", False, 128, 1, 7, 1, 0, True, 7)]
DCGAN_BN = {"g1": 128, "g2": 64, "d2": 128}
DCGAN_BN_EPS = 1e-5

# A case is one training step to time: model + optimizer.
CASES = {
    "mlp": dict(model="mlp", optimizer="sgd", lr=0.01, momentum=0.9,
                title="MLP 784-512-512-10, ReLU, cross-entropy, SGD momentum 0.9"),
    "mlp-adam": dict(model="mlp", optimizer="adam", lr=1e-3, betas=(0.9, 0.999),
                     title="MLP 784-512-512-10, ReLU, cross-entropy, Adam 1e-3"),
    "vae": dict(model="vae", optimizer="adam", lr=1e-3, betas=(0.9, 0.999),
                title="VAE 784-400-20 (BCE-with-logits sum + analytic KL), Adam 1e-3"),
    "gan": dict(model="gan", optimizer="adam", lr=2e-4, betas=(0.5, 0.999),
                title="GAN G 100-128-256-512-1024-784 (BN eps 0.8), D 784-512-256-1, one G + one D step, "
                      "Adam 2e-4 (0.5, 0.999)"),
    "dcgan": dict(model="dcgan", optimizer="adam", lr=2e-4, betas=(0.5, 0.999), batch_sizes=(16, 64, 256),
                  title="DCGAN 28x28 (G ConvTranspose2d 100-128-64-1 + BN, D Conv2d 1-64-128-1 + BN), one G + one "
                        "D step, Adam 2e-4 (0.5, 0.999)"),
}
ADAM_EPS = 1e-8


def layers_of(model):
    return {"mlp": MLP_LAYERS, "vae": VAE_LAYERS, "gan": GEN_LAYERS + DIS_LAYERS}[model]


def batch_sizes_of(case, batch_sizes):
    """The requested batch sizes this case is measured at (a case may list the ones it supports)."""
    allowed = CASES[case].get("batch_sizes")
    return [b for b in batch_sizes if allowed is None or b in allowed]


def conv_weight_shape(transposed, c_in, c_out, k):
    """PyTorch's layout: Conv2d (out, in, k, k), ConvTranspose2d (in, out, k, k)."""
    return (c_in, c_out, k, k) if transposed else (c_out, c_in, k, k)


def _dcgan_params(rng):
    params = {}
    for name, transposed, c_in, c_out, k, _, _, bias, _ in DCGAN_G + DCGAN_D:
        params[name] = {"weight": rng.normal(0.0, 0.02, conv_weight_shape(transposed, c_in, c_out, k))
                        .astype(np.float32)}
        if bias:
            params[name]["bias"] = np.zeros(c_out, np.float32)
    for name, n in DCGAN_BN.items():
        params[name + "_bn"] = {"weight": rng.normal(1.0, 0.02, n).astype(np.float32),
                                "bias": np.zeros(n, np.float32)}
    return params


# ---- initial weights and data ----------------------------------------------------------------------------------------
def init_params(model, seed=0):
    """PyTorch's default Linear init: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)); weight stored (out, in).

    BatchNorm: weight 1, bias 0. Returns {name: {"weight": array, "bias": array}} in float32.
    """
    rng = np.random.default_rng(seed)
    if model == "dcgan":
        return _dcgan_params(rng)
    params = {}
    for name, fan_in, fan_out in layers_of(model):
        bound = 1.0 / np.sqrt(fan_in)
        params[name] = {
            "weight": rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
            "bias": rng.uniform(-bound, bound, (fan_out,)).astype(np.float32),
        }
    if model == "gan":
        for name, n in GEN_BN.items():
            params[name + "_bn"] = {"weight": np.ones(n, np.float32), "bias": np.zeros(n, np.float32)}
    return params


def make_data(model, batch, seed=1):
    """One batch, reused every step. Images lie in [0, 1] (VAE, MLP) or [-1, 1] (GAN, as after Normalize(0.5))."""
    rng = np.random.default_rng(seed + 1000 * batch)
    x = rng.random((batch, 784), dtype=np.float32)
    if model == "mlp":
        return {"x": x, "y": rng.integers(0, 10, batch).astype(np.int64)}
    if model == "vae":
        return {"x": x}
    if model == "dcgan":
        return {"x": (x * 2 - 1).reshape(batch, 1, 28, 28)}
    return {"x": x * 2 - 1}


# ---- FLOPs -----------------------------------------------------------------------------------------------------------
def _gemm(m, layers):
    """Forward GEMM FLOPs of a stack of Linear layers on a batch of m: 2*m*in*out each."""
    return [2 * m * i * o for _, i, o in layers]


def _train(m, layers, input_grad_first):
    """Forward + backward FLOPs: each layer costs its forward GEMM, one more for the weight gradient and one more
    for the input gradient, except that the first layer needs no input gradient unless its input requires one."""
    fwd = _gemm(m, layers)
    total = 3 * sum(fwd)
    return total if input_grad_first else total - fwd[0]


def _conv_flops(m, layers):
    """Forward FLOPs of each convolution on a batch of m: 2 * m * (input or output pixels) * c_in * c_out * k^2
    (a transposed convolution spreads each input pixel, a convolution gathers each output pixel)."""
    out = []
    for _, transposed, c_in, c_out, k, stride, pad, _, side in layers:
        pixels = side * side if transposed else ((side + 2 * pad - k) // stride + 1) ** 2
        out.append(2 * m * pixels * c_in * c_out * k * k)
    return out


def _gan_step_flops(g_fwd_layers, d_fwd_layers):
    g_fwd, d_fwd = sum(g_fwd_layers), sum(d_fwd_layers)
    g_step = g_fwd + 2 * d_fwd + (2 * g_fwd - g_fwd_layers[0])
    d_step = 2 * (3 * d_fwd - d_fwd_layers[0])
    return g_step + d_step


def flops_per_step(model, batch):
    """Matmul FLOPs of one training step (elementwise work and optimizer updates are not counted).

    mlp, vae: 3 x forward, less the input gradient of the first layer.
    gan: G forward (once; its output serves both steps) + G step: D forward on the fakes and D's input gradients
    back to the fakes, then G's backward (weights + inputs but the first) + D step: D forward and backward (weights,
    inputs but the first) on the real and on the fake batch (2 x batch). D's weight gradients during the G step
    are not counted: the G step does not need them (eager frameworks compute them anyway).
    dcgan: as gan, with the convolutions' FLOPs.
    """
    m = batch
    if model == "mlp":
        return _train(m, MLP_LAYERS, False)
    if model == "vae":
        # fc21 and fc22 both read fc1's output; fc3 reads z (needs an input gradient), so only fc1 skips one.
        return _train(m, VAE_LAYERS, False)
    if model == "dcgan":
        return _gan_step_flops(_conv_flops(m, DCGAN_G), _conv_flops(m, DCGAN_D))
    return _gan_step_flops(_gemm(m, GEN_LAYERS), _gemm(m, DIS_LAYERS))


def make_noise(model, batch, seed=2):
    """Fixed noise for correctness checks (the VAE's eps, the GAN's z); timed runs draw fresh noise every step."""
    rng = np.random.default_rng(seed)
    if model == "vae":
        return rng.standard_normal((batch, VAE_LATENT), dtype=np.float32)
    if model in ("gan", "dcgan"):
        return rng.standard_normal((batch, LATENT), dtype=np.float32)
    return None
