"""The GAN: networks, losses (against closed forms and PyTorch), the trainer (every loss learns on the ring,
exact resume, --init), sampling, evaluation and the errors of bad input."""
import contextlib
import io
import json
import math
import struct

import numpy as np
import pytest
from conftest import requires_torch

import tinygen
from tinygen import nn
from tinygen.cli import main as cli_main
from tinygen.data import mnist, ring
from tinygen.models import gan
from tinygen.models.gan import losses as L
from tinygen.models.gan import trainer as T

TINY_TOY = dict(latent=4, g_hidden=[32, 32], d_hidden=[32, 32], batch_size=64, toy_samples=640, eval_samples=500,
                log_every=5)
TINY_MNIST = dict(arch="mlp", latent=8, g_hidden=[32], d_hidden=[32], batch_size=32, eval_samples=64, log_every=2)


@pytest.fixture(scope="module")
def small_mnist():
    images, labels = mnist("test")  # the bundled split: no download needed
    return images[:192], labels[:192]


def _params(module):
    return {k: v.numpy().copy() for k, v in module.state_dict().items()}


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return rc, out.getvalue(), err.getvalue()


def _png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---- networks ------------------------------------------------------------------------------------------------------
def test_generator_and_discriminator_shapes():
    tinygen.manual_seed(0)
    G = gan.Generator(latent_dim=8, hidden=[16, 32], out_dim=784)
    D = gan.Discriminator(in_dim=784, hidden=[32, 16], dropout=0.3)
    x = G(tinygen.randn(5, 8))
    assert x.shape == (5, 784)
    assert float(x.detach().abs().max().item()) <= 1.0  # tanh output
    assert D(x).shape == (5,)
    assert D(x.reshape(5, 28, 28)).shape == (5,)  # images are flattened
    toy = gan.Generator(latent_dim=2, hidden=[8], out_dim=2, output="linear")
    assert toy(tinygen.randn(3, 2)).shape == (3, 2)
    with pytest.raises(ValueError, match=r"z must have shape \(N, 8\)"):
        G(tinygen.randn(5, 7))
    with pytest.raises(ValueError, match="784 features"):
        D(tinygen.randn(5, 10))
    with pytest.raises(ValueError, match="unknown generator output"):
        gan.Generator(output="sigmoid2")
    with pytest.raises(ValueError, match="positive layer widths"):
        gan.Generator(hidden=[16, 0])


def test_scale_multiplies_the_generator_output_and_divides_the_critic_input():
    tinygen.manual_seed(0)
    G1 = gan.Generator(latent_dim=2, hidden=[8], out_dim=2, output="linear")
    G3 = gan.Generator(latent_dim=2, hidden=[8], out_dim=2, output="linear", scale=3.0)
    D1, D3 = gan.Discriminator(in_dim=2, hidden=[8]), gan.Discriminator(in_dim=2, hidden=[8], scale=3.0)
    G3.load_state_dict(G1.state_dict())
    D3.load_state_dict(D1.state_dict())
    z, x = tinygen.randn(5, 2), tinygen.randn(5, 2)
    with tinygen.no_grad():
        np.testing.assert_allclose(G3(z).numpy(), 3.0 * G1(z).numpy(), rtol=1e-6)
        np.testing.assert_allclose(D3(x * 3.0).numpy(), D1(x).numpy(), rtol=1e-5, atol=1e-6)
    assert "scale=3" in repr(G3) and "scale" not in repr(G1)
    for bad in (0.0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            gan.Generator(scale=bad)


def test_conditional_variant_shapes_and_label_errors():
    tinygen.manual_seed(0)
    G = gan.Generator(latent_dim=8, hidden=[16], out_dim=784, num_classes=10, embed_dim=6)
    D = gan.Discriminator(in_dim=784, hidden=[16], num_classes=10)
    y = tinygen.tensor([0, 3, 9, 3])
    x = G(tinygen.randn(4, 8), y)
    assert x.shape == (4, 784)
    assert D(x, y).shape == (4,)
    assert G.label_emb.weight.shape == (10, 6) and G.net[0].weight.shape == (16, 8 + 6)
    assert D.label_emb.weight.shape == (10, 10) and D.net[0].weight.shape == (16, 784 + 10)
    # the label changes the sample for the same z
    z = tinygen.randn(1, 8)
    a, b = G(z, tinygen.tensor([1])), G(z, tinygen.tensor([2]))
    assert not np.allclose(a.detach().numpy(), b.detach().numpy())
    # gradients reach the embeddings
    D(G(tinygen.randn(4, 8), y), y).sum().backward()
    assert G.label_emb.weight.grad is not None and D.label_emb.weight.grad is not None
    with pytest.raises(ValueError, match="conditional"):
        G(tinygen.randn(4, 8))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        D(x, tinygen.tensor([1, 2]))
    with pytest.raises(TypeError, match="integers"):
        D(x, tinygen.tensor([1.0, 2.0, 3.0, 4.0]))


def test_pytorch_gan_preset_architecture():
    cfg = gan.make_config(preset="pytorch-gan")
    G, D = gan.build_generator(cfg), gan.build_discriminator(cfg)
    lin = [m for m in G.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(100, 128), (128, 256), (256, 512), (512, 1024),
                                                                (1024, 784)]
    bns = [m for m in G.net if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in bns] == [256, 512, 1024] and all(m.eps == 0.8 for m in bns)
    assert isinstance(G.net[1], nn.LeakyReLU) and G.net[1].negative_slope == 0.2  # no BN after the first layer
    dlin = [m for m in D.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dlin] == [(784, 512), (512, 256), (256, 1)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in D.net)
    assert (cfg["optimizer"], cfg["lr_g"], cfg["lr_d"], cfg["betas"], cfg["batch_size"]) == \
        ("adam", 2e-4, 2e-4, [0.5, 0.999], 64)
    # the same number of parameters as PyTorch-GAN's model
    n = sum(p.numel() for p in G.parameters())
    assert n == 100 * 128 + 128 + 128 * 256 + 256 + 256 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784 + \
        2 * (256 + 512 + 1024)


# ---- losses --------------------------------------------------------------------------------------------------------
def _np_softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("name", L.LOSSES)
def test_loss_values_match_their_formulas(name):
    rng = np.random.default_rng(0)
    r, f = rng.normal(size=7), rng.normal(size=7)
    real, fake = tinygen.tensor(r, dtype=tinygen.float64), tinygen.tensor(f, dtype=tinygen.float64)
    s = 0.1 if L.LOSSES[name].smoothable else 0.0
    d = L.discriminator_loss(name, real, fake, label_smoothing=s).item()
    g = L.generator_loss(name, fake, real).item()
    if name in ("minimax", "nonsaturating"):
        want_d = np.mean((1 - s) * _np_softplus(-r) + s * _np_softplus(r)) + np.mean(_np_softplus(f))
        want_g = -np.mean(_np_softplus(f)) if name == "minimax" else np.mean(_np_softplus(-f))
    elif name in ("wgan", "wgan-gp"):
        want_d, want_g = f.mean() - r.mean(), -f.mean()
    elif name == "hinge":
        want_d, want_g = np.maximum(1 - r, 0).mean() + np.maximum(1 + f, 0).mean(), -f.mean()
    elif name == "lsgan":
        want_d = 0.5 * (((r - (1 - s)) ** 2).mean() + (f ** 2).mean())
        want_g = 0.5 * ((f - 1) ** 2).mean()
    else:  # ragan: BCE(t, 1) = softplus(-t), BCE(t, 0) = softplus(t)
        want_d = np.mean(_np_softplus(-(r - f.mean()))) + np.mean(_np_softplus(f - r.mean()))
        want_g = np.mean(_np_softplus(-(f - r.mean()))) + np.mean(_np_softplus(r - f.mean()))
    assert d == pytest.approx(want_d, rel=1e-10)
    assert g == pytest.approx(want_g, rel=1e-10)


def test_minimax_generator_gradient_vanishes_where_nonsaturating_does_not():
    # a discriminator that confidently rejects the fakes: logits -8, D(G(z)) ~ 3e-4
    fake = tinygen.full((4,), -8.0, dtype=tinygen.float64, requires_grad=True)
    (g_mm,) = tinygen.grad(L.generator_loss("minimax", fake), fake)
    (g_ns,) = tinygen.grad(L.generator_loss("nonsaturating", fake), fake)
    sig = 1 / (1 + math.exp(8.0))
    np.testing.assert_allclose(g_mm.numpy(), -sig / 4, rtol=1e-12)          # d/dl -softplus(l) / N
    np.testing.assert_allclose(g_ns.numpy(), -(1 - sig) / 4, rtol=1e-12)    # d/dl softplus(-l) / N
    assert abs(g_ns.numpy()[0]) > 1000 * abs(g_mm.numpy()[0])


def test_label_smoothing_and_unknown_loss_errors():
    x = tinygen.zeros(3)
    with pytest.raises(ValueError, match="unknown GAN loss 'foo'"):
        L.discriminator_loss("foo", x, x)
    with pytest.raises(ValueError, match="label smoothing applies"):
        L.discriminator_loss("wgan", x, x, label_smoothing=0.1)


@requires_torch
def test_ragan_losses_and_gradients_match_pytorch():
    import torch
    rng = np.random.default_rng(5)
    r, f = rng.normal(size=9), rng.normal(size=9) - 0.5
    ones, zeros = torch.ones(9, dtype=torch.float64), torch.zeros(9, dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    real, fake = (tinygen.tensor(v, dtype=tinygen.float64, requires_grad=True) for v in (r, f))
    tr, tf = (torch.tensor(v, requires_grad=True) for v in (r, f))
    d = L.discriminator_loss("ragan", real, fake)
    td = bce(tr - tf.mean(), ones) + bce(tf - tr.mean(), zeros)
    assert d.item() == pytest.approx(td.item(), rel=1e-12)
    grads, tgrads = tinygen.grad(d, [real, fake]), torch.autograd.grad(td, [tr, tf])
    for g, tg in zip(grads, tgrads):
        np.testing.assert_allclose(g.numpy(), tg.numpy(), rtol=1e-10, atol=1e-15)
    g_loss = L.generator_loss("ragan", fake, real.detach())  # the generator's gradient flows through the fakes only
    tg_loss = bce(tf - tr.detach().mean(), ones) + bce(tr.detach() - tf.mean(), zeros)
    assert g_loss.item() == pytest.approx(tg_loss.item(), rel=1e-12)
    (g_fake,), (tg_fake,) = tinygen.grad(g_loss, fake), torch.autograd.grad(tg_loss, tf)
    np.testing.assert_allclose(g_fake.numpy(), tg_fake.numpy(), rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError, match="ragan generator loss compares fakes with real data"):
        L.generator_loss("ragan", fake)
    with pytest.raises(ValueError, match="label smoothing applies"):
        L.discriminator_loss("ragan", real, fake, label_smoothing=0.1)


@pytest.fixture
def extra_loss():
    """A loss registered for one test (the least-squares one under another name, with settings of its own)."""
    loss = L.register_loss(L.GANLoss("lsgan-test", "lsgan with RMSprop", L.LOSSES["lsgan"].d_loss,
                                     L.LOSSES["lsgan"].g_loss, defaults={"optimizer": "rmsprop", "n_critic": 2},
                                     dataset_defaults={"ring": {"lr_d": 3e-4}}))
    yield loss
    del L.LOSSES[loss.name]


def test_a_registered_loss_reaches_the_config_trainer_and_command_line(extra_loss):
    from tinygen.cli import build_parser
    cfg = gan.make_config(loss="lsgan-test", arch="mlp")
    assert (cfg["optimizer"], cfg["n_critic"], cfg["lr_d"]) == ("rmsprop", 2, 5e-4)  # the MNIST MLP's lr stays
    assert gan.make_config(dataset="ring", loss="lsgan-test")["lr_d"] == 3e-4
    assert gan.make_config(loss="lsgan-test", n_critic=3)["n_critic"] == 3  # the caller wins
    args = build_parser().parse_args(["train", "gan", "--loss", "lsgan-test"])
    assert gan.settings_from_args(args)["loss"] == "lsgan-test"
    assert "lsgan-test: lsgan with RMSprop; sets --optimizer rmsprop --n-critic 2" in gan.loss_help()
    _, _, history = gan.train_gan(out=None, quiet=True, **dict(TINY_TOY, dataset="ring", loss="lsgan-test",
                                                               steps=4))
    assert history[-1]["step"] == 4 and np.isfinite(history[-1]["d_loss"])
    with pytest.raises(ValueError, match="'lsgan-test' is already registered"):
        L.register_loss(extra_loss)
    with pytest.raises(TypeError, match="expected a GANLoss, got dict"):
        L.register_loss({"name": "x"})


def test_every_registered_loss_sets_only_known_settings():
    for name, loss in L.LOSSES.items():
        for settings in (loss.defaults, *loss.dataset_defaults.values()):
            assert set(settings) <= set(T.BASE), name
        assert set(loss.dataset_defaults) <= set(T.DATASETS), name
        assert gan.make_config(loss=name)["loss"] == name


def test_ragan_resumes_bitwise(tmp_path):
    # its generator update also runs D on the critic's last real batch: that batch must survive a resume
    settings = dict(TINY_TOY, dataset="ring", loss="ragan", n_critic=2, lr_decay="none", ema=0.0)
    full, _, _ = gan.train_gan(out=tmp_path / "full", quiet=True, epochs=3, **settings)
    gan.train_gan(out=tmp_path / "part", quiet=True, epochs=1, **settings)
    resumed, _, hist = gan.train_gan(out=tmp_path / "part", resume=True, quiet=True, epochs=3, **settings)
    assert [r["epoch"] for r in hist] == [2, 3]
    assert all(np.array_equal(a, b) for a, b in zip(_params(full).values(), _params(resumed).values()))
    cfg = T.make_config(**settings)
    G, D = gan.build_generator(cfg), gan.build_discriminator(cfg)
    opt_g, opt_d = T.make_optimizer(cfg, G.parameters(), 1e-3), T.make_optimizer(cfg, D.parameters(), 1e-3)
    step = T.GANStep(cfg, G, D, opt_g, opt_d)
    with pytest.raises(ValueError, match="the ragan loss needs the real batch of a critic update"):
        step.generator(8)


class _Linear1(nn.Module):
    """D(x) = x @ w + b: its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(tinygen.tensor(w, dtype=tinygen.float64))
        self.b = nn.Parameter(tinygen.tensor(0.3, dtype=tinygen.float64))

    def forward(self, x):
        return x @ self.w + self.b


class _Quadratic(nn.Module):
    """D(x) = a * ||x||^2 / 2: its input gradient is a * x."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(tinygen.tensor(a, dtype=tinygen.float64))

    def forward(self, x):
        return (x * x).sum(1) * self.a * 0.5


def test_gradient_penalty_closed_form_linear_critic():
    w = np.array([0.6, -1.2, 2.0])
    D = _Linear1(w)
    rng = np.random.default_rng(1)
    real = tinygen.tensor(rng.normal(size=(5, 3)), dtype=tinygen.float64)
    fake = tinygen.tensor(rng.normal(size=(5, 3)), dtype=tinygen.float64)
    gp = L.gradient_penalty(D, real, fake, weight=10.0)
    nw = np.linalg.norm(w)
    assert gp.item() == pytest.approx(10 * (nw - 1) ** 2, rel=1e-9)
    gp.backward()
    np.testing.assert_allclose(D.w.grad.numpy(), 10 * 2 * (nw - 1) * w / nw, rtol=1e-9)
    assert D.b.grad is None or float(np.abs(D.b.grad.numpy()).max()) == 0.0  # the bias does not move the gradient


def test_gradient_penalty_closed_form_quadratic_critic():
    D = _Quadratic(1.7)
    rng = np.random.default_rng(2)
    x_hat = rng.normal(size=(6, 4))
    t = tinygen.tensor(x_hat, dtype=tinygen.float64)
    gp = L.gradient_penalty(D, t, t, weight=3.0, x_hat=t)
    r = np.linalg.norm(x_hat, axis=1)
    assert gp.item() == pytest.approx(3.0 * np.mean((1.7 * r - 1) ** 2), rel=1e-9)
    gp.backward()
    assert D.a.grad.item() == pytest.approx(3.0 * np.mean(2 * (1.7 * r - 1) * r), rel=1e-9)


def test_interpolate_lies_between_real_and_fake():
    tinygen.manual_seed(3)
    real, fake = tinygen.ones(50, 2), tinygen.zeros(50, 2)
    x = L.interpolate(real, fake).numpy()
    assert (x >= 0).all() and (x <= 1).all() and np.allclose(x[:, 0], x[:, 1])  # one e per sample
    assert x[:, 0].std() > 0.1


@requires_torch
def test_gradient_penalty_matches_pytorch_through_an_mlp_critic():
    import torch
    tinygen.manual_seed(0)
    D = gan.Discriminator(in_dim=6, hidden=[16, 8], slope=0.2).double()
    tD = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LeakyReLU(0.2), torch.nn.Linear(16, 8),
                             torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1)).double()
    tD.load_state_dict({k[len("net."):]: torch.from_numpy(v.numpy().copy()) for k, v in D.state_dict().items()})
    rng = np.random.default_rng(4)
    x_hat = rng.normal(size=(9, 6))
    gp = L.gradient_penalty(D, None, None, weight=10.0, x_hat=tinygen.tensor(x_hat, dtype=tinygen.float64))
    gp.backward()
    tx = torch.tensor(x_hat, requires_grad=True)
    (g,) = torch.autograd.grad(tD(tx).sum(), tx, create_graph=True)
    tgp = 10.0 * ((g.pow(2).sum(1) + L.GP_EPS).sqrt() - 1).pow(2).mean()
    tgp.backward()
    assert gp.item() == pytest.approx(tgp.item(), rel=1e-10)
    checked = 0
    for (name, p), tp in zip(D.named_parameters(), tD.parameters()):
        if p.grad is None:  # a piecewise-linear critic's input gradient does not depend on its biases
            assert name.endswith("bias") and (tp.grad is None or not tp.grad.abs().max())
            continue
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)
        checked += 1
    assert checked == 3  # the three weight matrices


# ---- training ------------------------------------------------------------------------------------------------------
def _on_ring_share(G):
    """Share of generated points in the annulus 1 < |x| < 3 around the ring of radius 2."""
    tinygen.manual_seed(123)
    r = np.sqrt((T.sample(G, 1000).astype(np.float64) ** 2).sum(1))
    return float(((r > 1) & (r < 3)).mean())


@pytest.mark.parametrize("name", L.LOSSES)
def test_every_loss_learns_on_the_ring(name):
    # A fresh generator puts its points near the origin; after a short run they must have moved onto the ring.
    # (a constant learning rate: these short runs test the losses; test_linear_lr_decay tests the schedule)
    settings = dict(TINY_TOY, dataset="ring", loss=name, steps=150, lr_g=1e-3, lr_d=1e-3, ema=0.0, seed=0,
                    lr_decay="none")
    if name == "wgan":
        settings.update(n_critic=2, steps=100, clip=0.1)
    if name == "wgan-gp":
        settings.update(n_critic=3, steps=100, lr_g=5e-4, lr_d=5e-4)
    cfg = T.make_config(**settings)
    tinygen.manual_seed(cfg["seed"])
    before = _on_ring_share(gan.build_generator(cfg))  # train_gan builds the same initial G from the seed
    G, D, history = gan.train_gan(out=None, quiet=True, **settings)
    after = _on_ring_share(G)
    assert before < 0.05 and after > 0.3, (name, before, after)
    assert history[-1]["step"] == settings["steps"]
    assert all(np.isfinite(history[-1][k]) for k in ("g_loss", "d_loss", "g_grad", "d_grad"))
    if L.LOSSES[name].probabilities:
        assert 0.0 < history[-1]["d_real"] < 1.0 and 0.0 < history[-1]["d_fake"] < 1.0  # probabilities
    if name == "wgan-gp":
        assert history[-1]["gp"] > 0


def test_wgan_clips_the_critic_weights():
    settings = dict(TINY_TOY, dataset="ring", loss="wgan", steps=3, clip=0.02)
    _, D, _ = gan.train_gan(out=None, quiet=True, **settings)
    assert max(float(np.abs(p.detach().numpy()).max()) for p in D.parameters()) <= 0.02 + 1e-7


def test_training_on_the_cuda_standin_matches_cpu(device):
    settings = dict(TINY_TOY, dataset="ring", loss="wgan-gp", steps=4, n_critic=2, ema=0.9, device=device)
    G, _, hist = gan.train_gan(out=None, quiet=True, **settings)
    assert G.net[0].weight.device == device
    assert T.sample(G, 10, device=device).shape == (10, 2)  # samples come back as host arrays
    _, _, hist_cpu = gan.train_gan(out=None, quiet=True, **dict(settings, device="cpu"))
    # the same draws; only float rounding differs (Adam's first steps can amplify it a little)
    np.testing.assert_allclose(hist[-1]["g_loss"], hist_cpu[-1]["g_loss"], rtol=0.05)


def test_linear_lr_decay(monkeypatch, device):
    """The rates at each generator step; on a GPU they are tensors on the device, written in place."""
    seen, held = [], []
    original = T.GANStep.generator

    def spy(self, *args, **kwargs):
        groups = self.opt_g.param_groups[0], self.opt_d.param_groups[0]
        seen.append(tuple(tinygen.optim.get_lr(g) for g in groups))
        held.append(tuple(g["lr"] for g in groups))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(T.GANStep, "generator", spy)
    # eager: a compiled step would run the spy (Python) only when it records (test_compile_trainers covers the
    # compiled run with a linear decay)
    gan.train_gan(out=None, quiet=True, compile=False, **dict(TINY_TOY, dataset="ring", steps=4, lr_g=1e-3,
                                                              lr_d=2e-3, lr_decay="linear", device=device))
    np.testing.assert_allclose(seen, [(1e-3 * f, 2e-3 * f) for f in (1, 0.75, 0.5, 0.25)], rtol=1e-12)
    if device == "cpu":
        assert all(isinstance(lr, float) for pair in held for lr in pair)
    else:  # the same two tensors throughout
        assert all(isinstance(lr, tinygen.Tensor) for lr in held[0]) and all(
            a is b for pair in held for a, b in zip(pair, held[0]))
    with pytest.raises(ValueError, match="unknown lr_decay"):
        gan.make_config(lr_decay="cosine2")


def test_ema_update_formula():
    tinygen.manual_seed(0)
    G, shadow = gan.Generator(latent_dim=2, hidden=[3], out_dim=2), gan.Generator(latent_dim=2, hidden=[3], out_dim=2)
    ema = T.EMA(G, shadow, decay=0.999)
    start = _params(shadow)
    assert all(np.array_equal(start[k], v) for k, v in _params(G).items())  # starts as a copy
    for p in G.parameters():
        p.data += 1.0
    ema.update()  # first update: d = min(0.999, 2 / 11)
    d = 2 / 11
    for k, v in _params(shadow).items():
        np.testing.assert_allclose(v, d * start[k] + (1 - d) * (start[k] + 1.0), rtol=1e-6)


def _ema_run(device, capturable, updates=25, start=0):
    tinygen.manual_seed(0)
    G = gan.Generator(latent_dim=2, hidden=[5], out_dim=3, batchnorm=True).to(device)
    shadow = gan.Generator(latent_dim=2, hidden=[5], out_dim=3, batchnorm=True).to(device)
    ema = T.EMA(G, shadow, decay=0.95, capturable=capturable)
    ema.updates = start
    rng = np.random.default_rng(0)
    for _ in range(updates):
        for p in G.parameters():
            p.data += tinygen.tensor(rng.standard_normal(p.shape).astype(np.float32), device=device).data
        ema.update()
    return ema, [tinygen.backend.to_device(p.data, "cpu").copy() for p in shadow.parameters()]


def test_ema_counting_on_the_device_equals_counting_on_the_host(device):
    """A capturable EMA (its count and decay as float64 0-d arrays on the parameters' device: device work a CUDA
    graph can take) gives the host-counting EMA's weights bit for bit, through the decay's warm-up
    (min(0.95, (1 + t) / (10 + t)) reaches 0.95 at t = 161) and after a count set from a checkpoint."""
    for start in (0, 170):
        host, host_weights = _ema_run(device, False, start=start)
        dev, dev_weights = _ema_run(device, True, start=start)
        assert host._count is None and dev._count is not None
        assert dev.updates == host.updates == start + 25 and dev.state_dict() == host.state_dict()
        for a, b in zip(dev_weights, host_weights):
            np.testing.assert_array_equal(a, b)
    default = T.EMA(*(gan.Generator(latent_dim=2, hidden=[3], out_dim=2).to(device) for _ in range(2)), decay=0.9)
    assert (default._count is None) == (device == "cpu")  # capturable by default off the CPU


@pytest.mark.parametrize("lr_decay", ["none", "linear"])
def test_gan_trainers_adam_counts_on_the_device_and_holds_a_decaying_learning_rate_there(device, lr_decay):
    """On a GPU the trainer's Adams are capturable (a compiled step's CUDA graph takes their updates), and a
    decaying learning rate is a float64 0-d tensor on the device, which the trainer's decay writes in place (a
    new number at every step would end the graph's launches at every step)."""
    cfg = gan.make_config(device=device, lr_decay=lr_decay, clip_grad_norm=1.0)
    G = gan.Generator(latent_dim=2, hidden=[3], out_dim=2).to(device)
    opt = T.make_optimizer(cfg, G.parameters(), 1e-3)
    assert isinstance(opt, T.remedies.GradNormClipped)
    group = opt.param_groups[0]
    assert group["capturable"] == (device != "cpu")
    held = device != "cpu" and lr_decay == "linear"
    assert isinstance(group["lr"], tinygen.Tensor) == held and tinygen.optim.get_lr(group) == 1e-3
    if held:
        assert group["lr"].device == device and group["lr"].dtype == np.float64


def test_batchnorm_recalibration_of_the_average():
    tinygen.manual_seed(0)
    G = gan.Generator(latent_dim=3, hidden=[8, 6], out_dim=2, batchnorm=True, output="linear")
    for p in G.parameters():  # weights unlike those the running statistics were gathered with
        p.data *= 3.0
    tinygen.manual_seed(7)
    T.recalibrate_batchnorm(G, batches=1, batch_size=400)
    tinygen.manual_seed(7)
    z = tinygen.randn(400, 3)
    with tinygen.no_grad():
        h = G.net[2](G.net[1](G.net[0](z))).numpy().astype(np.float64)  # Linear, LeakyReLU, Linear
    bn = G.net[3]
    assert isinstance(bn, nn.BatchNorm1d) and bn.momentum == 0.1  # restored
    np.testing.assert_allclose(bn.running_mean.numpy(), h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), h.var(0, ddof=1), rtol=1e-4)
    assert G.training
    plain = gan.Generator(latent_dim=3, hidden=[8], out_dim=2)
    assert T.recalibrate_batchnorm(plain) is plain  # nothing to do without BatchNorm


def test_epoch_outputs_and_logs(tmp_path, small_mnist):
    out = tmp_path / "run"
    G, D, history = gan.train_gan(out=out, quiet=True, train_set=small_mnist, epochs=2, **TINY_MNIST)
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint.npz", "metrics.jsonl", "steps.jsonl", "samples.png", "samples_001.png",
            "samples_002.png"} <= names
    # the default MNIST GAN is conditional: 100 digits of 28 pixels (padding 2), a column per class
    assert _png_size(out / "samples.png") == (10 * 30 + 2, 10 * 30 + 2)
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in recs] == [1, 2] and recs[-1]["step"] == 2 * (192 // 32)
    for key in ("g_loss", "d_loss", "d_real", "d_fake", "g_grad", "d_grad", "steps_per_s", "images_per_s"):
        assert key in recs[-1]
    steps = [json.loads(line) for line in open(out / "steps.jsonl")]
    assert [r["step"] for r in steps] == list(range(2, 13, 2))
    ckpt = tinygen.load(out / "checkpoint.npz")
    assert ckpt["model"] == "gan" and ckpt["epoch"] == 2 and set(ckpt["modules"]) == {"generator", "discriminator",
                                                                                       "ema"}
    try:
        import matplotlib  # noqa: F401
        assert (out / "curves.png").exists()
    except ImportError:
        assert not (out / "curves.png").exists()


def test_toy_run_writes_scatter_and_mode_metrics(tmp_path):
    out = tmp_path / "ring"
    _, _, history = gan.train_gan(out=out, quiet=True, dataset="ring", steps=12, **TINY_TOY)
    r = history[-1]
    assert {"sample_modes", "sample_high_quality", "sample_reverse_kl"} <= set(r)
    assert 0 <= r["sample_modes"] <= 8
    assert _png_size(out / "scatter.png") == (480, 480)


def test_scatter_image_puts_points_where_they_belong():
    img = T.scatter_image(ring.centres[:1], ring, size=101)  # one point at (2, 0); the picture spans +-3
    blue = np.argwhere((img == (20, 60, 200)).all(-1))
    assert len(blue) and np.allclose(blue.mean(0), [50.5, 83.8], atol=1.0)


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def _without_time(path):
    keep = []
    for line in open(path):
        r = json.loads(line)
        for k in ("seconds", "steps_per_s", "images_per_s"):
            r.pop(k, None)
        keep.append(r)
    return keep


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, small_mnist):
    settings = dict(TINY_MNIST, train_set=small_mnist, d_dropout=0.2, ema=0.9, label_smoothing=0.1, seed=5,
                    g_hidden=[32, 16], g_batchnorm=True)
    full, _, _ = gan.train_gan(out=tmp_path / "full", quiet=True, epochs=3, **settings)
    gan.train_gan(out=tmp_path / "part", quiet=True, epochs=1, **settings)
    resumed, _, hist = gan.train_gan(out=tmp_path / "part", resume=True, quiet=True, epochs=3, **settings)
    assert [r["epoch"] for r in hist] == [2, 3]
    a, b = tinygen.load(tmp_path / "full" / "checkpoint.npz"), tinygen.load(tmp_path / "part" / "checkpoint.npz")
    for mod in ("generator", "discriminator", "ema"):
        for k, v in a["modules"][mod].items():
            assert np.array_equal(v.numpy(), b["modules"][mod][k].numpy()), (mod, k)
    assert _without_time(tmp_path / "full" / "metrics.jsonl") == _without_time(tmp_path / "part" / "metrics.jsonl")
    assert _without_time(tmp_path / "full" / "steps.jsonl") == _without_time(tmp_path / "part" / "steps.jsonl")


def test_resume_mid_epoch_with_several_critic_steps(tmp_path):
    # 10 batches per epoch and 3 critic steps per generator step: runs stop inside epochs and between critic steps
    # (a constant learning rate: a linear decay is planned over the run's length, which this test changes)
    settings = dict(TINY_TOY, dataset="ring", loss="wgan-gp", n_critic=3, d_dropout=0.1, seed=2, lr_decay="none")
    gan.train_gan(out=tmp_path / "full", quiet=True, steps=8, **settings)
    gan.train_gan(out=tmp_path / "part", quiet=True, steps=4, **settings)
    _, _, hist = gan.train_gan(out=tmp_path / "part", resume=True, quiet=True, steps=8, **settings)
    assert hist[-1]["step"] == 8
    a, b = tinygen.load(tmp_path / "full" / "checkpoint.npz"), tinygen.load(tmp_path / "part" / "checkpoint.npz")
    for mod in ("generator", "discriminator"):
        for k, v in a["modules"][mod].items():
            assert np.array_equal(v.numpy(), b["modules"][mod][k].numpy()), (mod, k)
    assert a["extra"]["critic_count"] == b["extra"]["critic_count"]
    assert _without_time(tmp_path / "full" / "metrics.jsonl") == _without_time(tmp_path / "part" / "metrics.jsonl")


def test_resume_refuses_changed_settings_and_missing_runs(tmp_path):
    settings = dict(TINY_TOY, dataset="ring", steps=2)
    gan.train_gan(out=tmp_path / "run", quiet=True, **settings)
    with pytest.raises(ValueError, match="lr_g: saved"):
        gan.train_gan(out=tmp_path / "run", resume=True, quiet=True, **dict(settings, lr_g=1e-3))
    with pytest.raises(ValueError, match="already holds a run"):
        gan.train_gan(out=tmp_path / "run", quiet=True, **settings)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        gan.train_gan(out=tmp_path / "none", resume=True, quiet=True, **settings)
    assert gan.make_config(**settings)["lr_decay"] == "linear"  # the ring default
    with pytest.raises(ValueError, match="decay is planned over steps=2"):
        gan.train_gan(out=tmp_path / "run", resume=True, quiet=True, **dict(settings, steps=4))
    _, _, hist = gan.train_gan(out=tmp_path / "run", resume=True, quiet=True, **settings)  # same length: fine
    assert hist == []  # nothing left to do


def test_init_starts_from_saved_weights(tmp_path):
    settings = dict(TINY_TOY, dataset="ring", steps=5, seed=1)
    gan.train_gan(out=tmp_path / "a", quiet=True, **settings)
    saved = tinygen.load(tmp_path / "a" / "checkpoint.npz")["modules"]
    # a tiny learning rate: the weights stay where --init put them (Adam moves each by about lr per step)
    G, D, _ = gan.train_gan(out=None, quiet=True, init=tmp_path / "a" / "checkpoint.npz",
                            **dict(settings, steps=1, seed=9, lr_g=1e-12, lr_d=1e-12))
    for mod, live in (("generator", G), ("discriminator", D)):
        for k, v in live.state_dict().items():
            np.testing.assert_allclose(v.numpy(), saved[mod][k].numpy(), atol=1e-9, err_msg=k)
    fresh, _, _ = gan.train_gan(out=None, quiet=True, **dict(settings, steps=1, seed=9, lr_g=1e-12, lr_d=1e-12))
    assert not np.allclose(fresh.net[0].weight.detach().numpy(), saved["generator"]["net.0.weight"].numpy())


def test_init_errors(tmp_path):
    settings = dict(TINY_TOY, dataset="ring", steps=1)
    with pytest.raises(FileNotFoundError, match="--init checkpoint"):
        gan.train_gan(out=None, quiet=True, init=tmp_path / "missing.npz", **settings)
    tinygen.save({"model": "vae", "modules": {}, "config": {}}, tmp_path / "vae.npz")
    with pytest.raises(ValueError, match="model 'vae', not a GAN"):
        gan.train_gan(out=None, quiet=True, init=tmp_path / "vae.npz", **settings)
    gan.train_gan(out=tmp_path / "a", quiet=True, **settings)
    # another generator: only what fits is loaded, and the rest is reported (tests/test_remedies.py has more)
    reports = T._init_from(tmp_path / "a" / "checkpoint.npz", gan.build_generator(gan.make_config(
        **dict(settings, dataset="ring", g_hidden=[16, 16]))), gan.build_discriminator(gan.make_config(
            **dict(settings, dataset="ring"))))
    assert reports["generator"]["loaded"] == ["net.Linear2.bias"] and len(reports["discriminator"]["skipped"]) == 0
    assert ("net.Linear0.weight", "shape (32, 4) in the checkpoint, (16, 4) here") in reports["generator"]["skipped"]


# ---- sample / eval through the command line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    gan.train_gan(out=out, quiet=True, dataset="grid", steps=10, **TINY_TOY)
    return out / "checkpoint.npz"


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory, small_mnist):
    out = tmp_path_factory.mktemp("mnist") / "run"
    gan.train_gan(out=out, quiet=True, train_set=small_mnist, epochs=1, conditional=True, **TINY_MNIST)
    return out / "checkpoint.npz"


def test_sample_to_png_and_npy(tmp_path, toy_checkpoint, mnist_checkpoint):
    rc, out, _ = _run(["sample", str(mnist_checkpoint), "--n", "20", "--out", str(tmp_path / "g.png")])
    assert rc == 0 and "wrote 20 samples" in out
    assert _png_size(tmp_path / "g.png") == (10 * 30 + 2, 2 * 30 + 2)  # conditional: a row per class cycle
    rc, _, _ = _run(["sample", str(mnist_checkpoint), "--n", "6", "--label", "3", "--out", str(tmp_path / "g.npy")])
    x = np.load(tmp_path / "g.npy")
    assert rc == 0 and x.shape == (6, 28, 28) and x.dtype == np.float32 and np.abs(x).max() <= 1.0
    rc, _, _ = _run(["sample", str(toy_checkpoint), "--n", "300", "--out", str(tmp_path / "t.npy")])
    assert rc == 0 and np.load(tmp_path / "t.npy").shape == (300, 2)
    rc, _, _ = _run(["sample", str(toy_checkpoint), "--n", "300", "--out", str(tmp_path / "t.png")])
    assert rc == 0 and _png_size(tmp_path / "t.png") == (480, 480)
    # the same seed gives the same samples
    _run(["sample", str(toy_checkpoint), "--n", "300", "--out", str(tmp_path / "t2.npy")])
    assert np.array_equal(np.load(tmp_path / "t.npy"), np.load(tmp_path / "t2.npy"))


def test_eval_json_toy(toy_checkpoint):
    rc, out, _ = _run(["eval", str(toy_checkpoint), "--json", "--n", "1000"])
    assert rc == 0
    m = json.loads(out)
    assert {"modes", "num_modes", "high_quality", "reverse_kl", "num_samples", "steps_trained"} <= set(m)
    assert m["num_modes"] == 25 and m["num_samples"] == 1000 and m["steps_trained"] == 10


def test_eval_json_mnist(tmp_path, monkeypatch, mnist_checkpoint, small_mnist):
    from tinygen.models import classifier
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(classifier, "_loaded", {})
    images, labels = mnist("test")
    classifier.train_classifier(epochs=1, hidden=[32], train_set=(images[:2000], labels[:2000]),
                                test_set=(images[:200], labels[:200]), save=classifier.default_path(), quiet=True)
    rc, out, _ = _run(["eval", str(mnist_checkpoint), "--json", "--n", "300"])
    assert rc == 0
    m = json.loads(out)
    assert {"coverage", "class_kl", "frechet_distance", "inception_score", "num_samples"} <= set(m)
    assert m["coverage"] >= 1 and m["coverage"] <= 10 and m["frechet_distance"] > 0 and 1.0 <= m["inception_score"] <= 10.0


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_config_errors():
    with pytest.raises(ValueError, match="unknown GAN loss 'nope'"):
        gan.make_config(loss="nope")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        gan.make_config(steps=-5)
    with pytest.raises(ValueError, match="unknown dataset 'spiral'"):
        gan.make_config(dataset="spiral")
    with pytest.raises(ValueError, match="cannot be combined with dataset 'ring'"):
        gan.make_config(preset="article", dataset="ring")
    with pytest.raises(ValueError, match="label smoothing applies"):
        gan.make_config(loss="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="conditional GANs need class labels"):
        gan.make_config(dataset="ring", conditional=True)
    with pytest.raises(ValueError, match="BatchNorm in the critic"):
        gan.make_config(loss="wgan-gp", d_batchnorm=True)
    with pytest.raises(ValueError, match="unknown GAN setting"):
        gan.make_config(learning_rate=1.0)
    with pytest.raises(ValueError, match="betas"):
        gan.make_config(betas=[0.5])


def test_loss_defaults_and_presets():
    w = gan.make_config(loss="wgan")
    assert (w["optimizer"], w["lr_d"], w["n_critic"], w["clip"]) == ("rmsprop", 5e-5, 5, 0.01)
    gp = gan.make_config(loss="wgan-gp", lr_d=3e-4)
    assert (gp["optimizer"], gp["lr_g"], gp["lr_d"], gp["betas"], gp["n_critic"], gp["gp"]) == \
        ("adam", 1e-4, 3e-4, [0.5, 0.9], 5, 10.0)
    a = gan.make_config(preset="article")
    assert a["n_train"] == 100 and a["binarize"] and a["g_hidden"] == [128, 64] and a["d_hidden"] == [128, 64]
    assert a["loss"] == "minimax" and a["g_slope"] == a["d_slope"] == 0.0  # as the article writes it: ReLU
    assert a["lr_g"] == a["lr_d"] == 2e-4 and a["optimizer"] == "adam"
    s = gan.make_config(steps=10)
    assert s["epochs"] is None and s["steps"] == 10
    d = gan.make_config()  # the MNIST default: the conditional DCGAN, Adam 1e-3 (0, 0.99), 1900 steps, EMA of G
    assert d["conditional"] and (d["arch"], d["lr_g"], d["lr_d"], d["betas"], d["steps"], d["epochs"], d["ema"]) \
        == ("dcgan", 1e-3, 1e-3, [0.0, 0.99], 1900, None, 0.999)
    m = gan.make_config(arch="mlp")  # the MLP GAN's MNIST recipe: Adam 5e-4 (0.5, 0.999), 6000 steps
    assert m["conditional"] and (m["lr_g"], m["lr_d"], m["betas"], m["steps"]) == (5e-4, 5e-4, [0.5, 0.999], 6000)
    assert gan.make_config(dataset="ring")["arch"] == gan.make_config(dataset="custom")["arch"] == "mlp"
    assert not gan.make_config(conditional=False)["conditional"]
    assert gan.make_config(epochs=3)["steps"] is None
    for preset in ("pytorch-gan", "article"):  # the reproductions stay unconditional MLP GANs
        assert not gan.make_config(preset=preset)["conditional"] and gan.make_config(preset=preset)["arch"] == "mlp"
    assert not a["conditional"] and a["epochs"] == 100 and a["steps"] is None
    e = gan.make_config(dataset="ring", epochs=2)  # ring/grid count steps by default; epochs replace them
    assert e["epochs"] == 2 and e["steps"] is None


def test_toy_defaults_scale_the_networks_and_tune_wgan_gp():
    for name, spread in (("ring", 2 ** 0.5), ("grid", 8 ** 0.5)):  # RMS coordinate of the centres
        c = gan.make_config(dataset=name, loss="wgan-gp")
        assert c["data_scale"] == pytest.approx(spread, abs=1e-4)
        assert (c["gp"], c["lr_g"], c["lr_d"], c["lr_decay"], c["latent"], c["n_critic"]) == \
            (0.1, 1e-3, 1e-3, "linear", 2, 5)
        assert gan.build_generator(c).scale == gan.build_discriminator(c).scale == c["data_scale"]
        assert gan.make_config(dataset=name, loss="wgan-gp", gp=5.0)["gp"] == 5.0  # the caller wins
        ns = gan.make_config(dataset=name, loss="nonsaturating")  # the per-dataset wgan-gp settings stay there
        assert (ns["lr_g"], ns["data_scale"]) == (1e-4, c["data_scale"])
    m = gan.make_config(loss="wgan-gp")  # MNIST keeps the paper's penalty and unscaled networks
    assert (m["gp"], m["lr_g"], m["data_scale"]) == (10.0, 1e-4, 1.0)
    with pytest.raises(ValueError, match="data_scale must be a positive finite number"):
        gan.make_config(dataset="ring", data_scale=0)


def test_checkpoint_saved_before_data_scale_loads_unscaled(tmp_path):
    out = tmp_path / "run"
    G, _, _ = gan.train_gan(out=out, quiet=True, dataset="ring", steps=2, **TINY_TOY)
    ckpt = tinygen.load(out / "checkpoint.npz")
    G2, cfg = gan.generator_from_checkpoint(ckpt)
    assert G2.scale == cfg["data_scale"] == pytest.approx(2 ** 0.5, abs=1e-4)
    del ckpt["config"]["data_scale"]  # as an older run saved it
    G_old, cfg_old = gan.generator_from_checkpoint(ckpt)
    assert G_old.scale == cfg_old["data_scale"] == 1.0
    z = tinygen.randn(4, cfg["latent"])
    with tinygen.no_grad():
        np.testing.assert_allclose(G2(z).numpy(), G2.scale * G_old(z).numpy(), rtol=1e-5)



def test_run_saved_before_data_scale_resumes_as_unscaled(tmp_path):
    settings = dict(TINY_TOY, dataset="ring", steps=2, data_scale=1.0, lr_decay="none")
    gan.train_gan(out=tmp_path / "run", quiet=True, **settings)
    path = tmp_path / "run" / "checkpoint.npz"
    ckpt = tinygen.load(path)
    del ckpt["config"]["data_scale"]  # as an older run saved it
    tinygen.save(ckpt, path)
    _, _, hist = gan.train_gan(out=tmp_path / "run", resume=True, quiet=True, **dict(settings, steps=4))
    assert hist[-1]["step"] == 4
    with pytest.raises(ValueError, match="data_scale: saved 1.0, now 1.4142"):  # the ring's default differs
        gan.train_gan(out=tmp_path / "run", resume=True, quiet=True, **dict(settings, steps=6, data_scale=None))


def test_article_data_is_100_binarised_images(small_mnist):
    cfg = gan.make_config(preset="article")
    x, y, desc = T.load_data(cfg, train_set=small_mnist)
    assert x.shape == (100, 784) and set(np.unique(x)) == {-1.0, 1.0} and "binarised" in desc
    G, D = gan.build_generator(cfg), gan.build_discriminator(cfg)
    assert sum(isinstance(m, nn.Linear) for m in G.net) == 3 and sum(isinstance(m, nn.Linear) for m in D.net) == 3


def test_command_line_errors(tmp_path, toy_checkpoint):
    rc, _, err = _run(["train", "gan", "--data", "ring", "--steps", "-3", "--out", str(tmp_path / "x")])
    assert rc == 2 and "--steps must be a positive integer" in err
    rc, _, err = _run(["train", "gan", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "neither a dataset" in err
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            cli_main(["train", "gan", "--loss", "wgan-xx"])
    rc, _, err = _run(["eval", str(tmp_path / "missing.npz")])
    assert rc == 2 and "missing.npz" in err
    rc, _, err = _run(["sample", str(toy_checkpoint), "--n", "0", "--out", str(tmp_path / "a.png")])
    assert rc == 2 and "--n must be a positive integer" in err
    rc, _, err = _run(["sample", str(toy_checkpoint), "--label", "2", "--out", str(tmp_path / "a.png")])
    assert rc == 2 and "conditional" in err


def test_checkpoint_of_another_model_kind(tmp_path):
    ckpt = {"model": "vae", "config": {}, "modules": {"model": {}}}
    with pytest.raises(ValueError, match="not a GAN checkpoint"):
        gan.generator_from_checkpoint(ckpt)
    tinygen.save({"model": "vae", "format": 1, "config": {}, "epoch": 1, "modules": {}}, tmp_path / "checkpoint.npz")
    with pytest.raises(ValueError, match="checkpoint of model 'vae', not 'gan'"):
        gan.train_gan(out=tmp_path, resume=True, quiet=True, dataset="ring", steps=1, **TINY_TOY)


def test_command_line_conditional_switch():
    from tinygen.cli import build_parser
    from tinygen.models.gan import settings_from_args
    parse = build_parser().parse_args
    assert "conditional" not in settings_from_args(parse(["train", "gan"]))  # the recipe decides: on for MNIST
    assert settings_from_args(parse(["train", "gan", "--no-conditional"]))["conditional"] is False
    cfg = gan.make_config(**settings_from_args(parse(["train", "gan", "--no-conditional", "--epochs", "2"])))
    assert not cfg["conditional"] and cfg["epochs"] == 2 and cfg["steps"] is None


def test_command_line_data_scale_and_toy_recipe():
    from tinygen.cli import build_parser
    from tinygen.models.gan import settings_from_args
    parse = build_parser().parse_args
    cfg = gan.make_config(**settings_from_args(parse(["train", "gan", "--data", "grid", "--loss", "wgan-gp"])))
    assert (cfg["data_scale"], cfg["gp"], cfg["lr_g"]) == (pytest.approx(8 ** 0.5, abs=1e-4), 0.1, 1e-3)
    cfg = gan.make_config(**settings_from_args(parse(["train", "gan", "--data", "grid", "--data-scale", "2"])))
    assert cfg["data_scale"] == 2.0
