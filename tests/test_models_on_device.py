"""Whole models on device "cuda": the GAN (every loss, on the ring and on MNIST-shaped data), the VAE (Bernoulli and
Gaussian decoders, CVAE), the classifier, every optimizer and scheduler, checkpoints from device models, sampling
and the command line.

"cuda" is a real GPU when CuPy finds one, else the CPU stand-in for CuPy (tinygen.backend.cuda_standin), which
refuses implicit conversion to NumPy and NumPy functions on device arrays: a stray ``numpy.*`` call on device data
anywhere in the library fails these tests.

Same seed, same numbers? Each device has its own generator, so a "cuda" run does not draw what a CPU run draws:
the initial weights come from the CPU stream in both, but the training noise comes from the device's own stream
(and on a GPU that is CuPy's generator, another algorithm). The comparisons with the CPU therefore route the
device's draws through the CPU generator (the ``host_draws`` fixture), which makes the draws identical and leaves
only the arithmetic to compare: bit for bit on the stand-in (the same NumPy operations; the CPU side runs with the
Numba kernels off, as the stand-in does), within float round-off on a GPU. Other tests keep the device's own
generator and check shapes, finite values and exact resume (expected to fail on a GPU, marked xfail there: CuPy's
generator has no state that a checkpoint could save).
"""
import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

import tinygen
from tinygen import backend, kernels, nn, optim
from tinygen import random as _random
from tinygen.backend import StandinArray
from tinygen.cli import main as cli_main
from tinygen.kernels import gpu as gpu_kernels
from tinygen.models import classifier as C
from tinygen.models import gan, vae
from tinygen.nn import functional as F

TIMING = ("seconds", "steps_per_s", "images_per_s")
TOY = dict(dataset="ring", latent=4, g_hidden=[16, 16], d_hidden=[16, 16], batch_size=32, toy_samples=320,
           eval_samples=200, log_every=2)


# ---- fixtures and helpers --------------------------------------------------------------------------------------------
@pytest.fixture
def cuda():
    """Device "cuda": a real GPU when CuPy has one, else the CPU stand-in for CuPy."""
    if backend.is_available("cuda"):
        yield "cuda"
    else:
        with backend.cuda_standin():
            yield "cuda"


def on_standin():
    return backend.array_module("cuda") is backend.standin


class _HostDraws:
    """A device generator that draws from the CPU generator and copies the numbers over: a device run then draws
    exactly what the same CPU run draws (its state is the CPU generator's, so checkpoints and fork_rng agree)."""

    def __init__(self, cpu_generator, device):
        self._cpu, self._device = cpu_generator, device

    @property
    def bit_generator(self):
        return self._cpu("cpu").bit_generator

    def __getattr__(self, name):
        draw = getattr(self._cpu("cpu"), name)
        return lambda *args, **kwargs: backend.to_device(np.asarray(draw(*args, **kwargs)), self._device)


@pytest.fixture
def host_draws(monkeypatch):
    cpu_generator = _random.generator
    monkeypatch.setattr(_random, "generator",
                        lambda device="cpu": cpu_generator(device) if device == "cpu" else
                        _HostDraws(cpu_generator, device))


@pytest.fixture
def no_cached_classifier(tmp_path, monkeypatch):
    """MNIST GAN runs score samples with the cached classifier when there is one; keep these runs hermetic."""
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path / "no-cache"))


def cpu_reference():
    """The CPU run to compare with: the plain array code, as on the stand-in (no Numba kernels there)."""
    return kernels.enabled_as(False)


def host(t):
    data = t.data if isinstance(t, tinygen.Tensor) else t
    return np.asarray(backend.to_device(data, "cpu"))


def assert_device_array(t, what):
    assert t.device == "cuda", f"{what} is on {t.device}"
    assert not isinstance(t.data, np.ndarray) and backend.device_of(t.data) == "cuda", \
        f"{what} holds a {type(t.data).__name__}, not a device array"
    if on_standin():
        assert isinstance(t.data, StandinArray), f"{what} holds a {type(t.data).__name__}"


def assert_module_on_device(module, name):
    for key, t in module.state_dict().items():
        assert_device_array(t, f"{name}.{key}")
    for i, p in enumerate(module.parameters()):
        if p.grad is not None:
            assert_device_array(p.grad, f"the gradient of {name} parameter {i}")


def assert_optimizer_on_device(opt, name):
    assert opt.state, f"{name} holds no state after training"
    for i, state in enumerate(opt.state.values()):
        for key, v in state.items():
            if isinstance(v, tinygen.Tensor):
                assert_device_array(v, f"{name} state[{i}][{key!r}]")


def assert_same(dev, ref, what, rtol=1e-2, atol=1e-3):
    """Equal bit for bit on the stand-in; on a GPU within float round-off (cuBLAS against the CPU BLAS), as a few
    Adam steps amplify it: a gradient that is zero but for round-off (the critic's last bias under the Wasserstein
    losses) moves its parameter by up to lr per step either way."""
    dev, ref = np.asarray(dev), np.asarray(ref)
    assert dev.shape == ref.shape and dev.dtype == ref.dtype, f"{what}: {dev.shape} {dev.dtype} vs {ref.shape} " \
                                                              f"{ref.dtype}"
    if on_standin():
        np.testing.assert_array_equal(dev, ref, err_msg=what)
    else:
        np.testing.assert_allclose(dev, ref, rtol=rtol, atol=atol, err_msg=what)


def assert_same_modules(dev, ref, what, **tol):
    d, r = dev.state_dict(), ref.state_dict()
    assert list(d) == list(r)
    for key in d:
        assert_same(host(d[key]), r[key].numpy(), f"{what}.{key}", **tol)


def assert_same_history(dev, ref, **tol):
    assert len(dev) == len(ref) and dev
    for a, b in zip(dev, ref):
        assert sorted(a) == sorted(b)
        for key in a:
            if key in TIMING:
                continue
            if isinstance(a[key], float):
                assert math.isfinite(a[key]) or not math.isfinite(b[key]), f"{key}: {a[key]} vs {b[key]}"
                assert_same(np.float64(a[key]), np.float64(b[key]), key, **tol)
            else:
                assert a[key] == b[key], f"{key}: {a[key]!r} vs {b[key]!r}"


def mnist_shaped(n, seed=0):
    """Random uint8 images (n, 28, 28) and labels 0..9: MNIST's shapes and dtypes without reading MNIST."""
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), g.integers(0, 10, size=n).astype(np.int64)


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    assert rc == 0, f"tinygen {' '.join(argv)} failed: {err.getvalue()}"
    return out.getvalue()


# ---- GAN -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", gan.LOSSES)
def test_gan_every_loss_on_the_ring_matches_cpu(cuda, host_draws, loss):
    # wgan-gp's penalty is a double backward on the device; wgan clips the critic in place; EMA updates in place
    settings = dict(TOY, loss=loss, steps=3, n_critic=2, ema=0.9)
    G, D, hist = gan.train_gan(out=None, quiet=True, device=cuda, **settings)
    assert_module_on_device(G, "EMA generator")
    assert_module_on_device(D, "discriminator")
    with cpu_reference():
        G_cpu, D_cpu, hist_cpu = gan.train_gan(out=None, quiet=True, device="cpu", **settings)
    assert_same_history(hist, hist_cpu)
    assert_same_modules(G, G_cpu, "G")
    assert_same_modules(D, D_cpu, "D")
    if loss == "wgan":
        assert max(float(np.abs(host(p)).max()) for p in D.parameters()) <= settings.get("clip", 0.01) + 1e-7


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_gan_on_mnist_shaped_data_matches_cpu(cuda, host_draws, no_cached_classifier, tmp_path, loss):
    # conditional (Embedding + cat), BatchNorm in G (running statistics), dropout in D (device draws), smoothing
    data = mnist_shaped(96)
    settings = dict(loss=loss, arch="mlp", latent=8, g_hidden=[32, 32], d_hidden=[32], g_batchnorm=True, bn_eps=0.8,
                    d_dropout=0.25, conditional=True, batch_size=32, epochs=1, ema=0.99, eval_samples=20,
                    log_every=1, n_critic=1)
    if loss == "nonsaturating":
        settings["label_smoothing"] = 0.1
    G, D, hist = gan.train_gan(out=tmp_path / "cuda", quiet=True, train_set=data, device=cuda, **settings)
    assert_module_on_device(G, "EMA generator")
    assert_module_on_device(D, "discriminator")
    assert (tmp_path / "cuda" / "samples_001.png").exists()
    with cpu_reference():
        G_cpu, D_cpu, hist_cpu = gan.train_gan(out=tmp_path / "cpu", quiet=True, pictures=False, train_set=data,
                                               device="cpu", **settings)
    assert_same_history(hist, hist_cpu)
    assert_same_modules(G, G_cpu, "G")
    assert_same_modules(D, D_cpu, "D")

    # the checkpoint a device run wrote: host arrays inside, loadable onto either device, same samples
    ckpt = tinygen.load(tmp_path / "cuda" / "checkpoint.npz")
    assert all(isinstance(v.data, np.ndarray) for v in ckpt["modules"]["generator"].values())
    G_dev, cfg = gan.generator_from_checkpoint(ckpt, device=cuda)
    assert cfg["conditional"] and not G_dev.training
    assert_module_on_device(G_dev, "loaded generator")
    G_host, _ = gan.generator_from_checkpoint(ckpt, device="cpu")
    labels = np.arange(12) % 10
    tinygen.manual_seed(5)
    x = gan.sample(G_dev, 12, labels=labels, device=cuda)
    tinygen.manual_seed(5)
    with cpu_reference():
        x_cpu = gan.sample(G_host, 12, labels=labels, device="cpu")
    assert isinstance(x, np.ndarray) and x.shape == (12, 784) and x.dtype == np.float32
    assert np.abs(x).max() <= 1.0
    assert_same(x, x_cpu, "samples of the loaded generator")


def test_gan_resume_on_the_device_is_exact(cuda, tmp_path):
    # the device's own generator this time: its state must travel in the checkpoint for an exact resume
    # (a constant learning rate: a linear decay is planned over the run's length, which this test changes)
    settings = dict(TOY, loss="wgan-gp", n_critic=2, ema=0.9, device=cuda, lr_decay="none")
    G_full, D_full, _ = gan.train_gan(out=tmp_path / "full", quiet=True, pictures=False, steps=4, **settings)
    gan.train_gan(out=tmp_path / "part", quiet=True, pictures=False, steps=2, **settings)
    ckpt = tinygen.load(tmp_path / "part" / "checkpoint.npz")
    if "cuda" not in ckpt["rng"]:
        pytest.xfail("this device's generator exposes no state (CuPy's), so a resumed run draws fresh noise")
    G, D, hist = gan.train_gan(out=tmp_path / "part", quiet=True, pictures=False, steps=4, resume=True, **settings)
    assert hist[-1]["step"] == 4
    for dev, ref, name in ((G, G_full, "G"), (D, D_full, "D")):
        d, r = dev.state_dict(), ref.state_dict()
        for key in d:
            assert_device_array(d[key], f"resumed {name}.{key}")
            np.testing.assert_array_equal(host(d[key]), host(r[key]), err_msg=f"{name}.{key}")


def test_gan_command_line_on_the_device(cuda, tmp_path):
    # train, sample and eval through the CLI with --device cuda (the stand-in serves "cuda" in this process)
    out = tmp_path / "ring"
    run_cli(["train", "gan", "--data", "ring", "--loss", "hinge", "--steps", "2", "--batch-size", "32",
             "--latent", "4", "--g-hidden", "16", "--d-hidden", "16", "--eval-samples", "100", "--device", "cuda",
             "--out", str(out), "--quiet"])
    ckpt = out / "checkpoint.npz"
    assert ckpt.exists()
    run_cli(["sample", str(ckpt), "--n", "30", "--out", str(tmp_path / "s.npy"), "--device", "cuda"])
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (30, 2) and np.isfinite(s).all()
    metrics = json.loads(run_cli(["eval", str(ckpt), "--json", "--n", "200", "--device", "cuda"]))
    assert metrics["steps_trained"] == 2 and 0 <= metrics["modes"] <= 8


# ---- VAE -------------------------------------------------------------------------------------------------------------
VAE_CASES = {
    "bernoulli-binarized": dict(decoder="bernoulli", binarize=True),
    "gaussian-learned": dict(decoder="gaussian", decoder_var="learned", beta=0.5, beta_warmup=1.0),
    "gaussian-fixed": dict(decoder="gaussian", decoder_var=0.1),
    "cvae-onehot": dict(conditional=True, label_embedding="onehot"),
    "cvae-embedding": dict(conditional=True, label_embedding="embedding", label_dim=4, binarize=True),
}


@pytest.mark.parametrize("case", sorted(VAE_CASES))
def test_vae_matches_cpu(cuda, host_draws, case):
    train, test = mnist_shaped(120, seed=1), mnist_shaped(40, seed=2)
    settings = dict(VAE_CASES[case], epochs=2, batch_size=40, latent=3, hidden=[24, 16], seed=3)
    model, hist = vae.train_vae(quiet=True, train_set=train, test_set=test, device=cuda, **settings)
    assert_module_on_device(model, "VAE")
    with cpu_reference():
        model_cpu, hist_cpu = vae.train_vae(quiet=True, train_set=train, test_set=test, device="cpu", **settings)
    assert_same_history(hist, hist_cpu)
    assert_same_modules(model, model_cpu, "VAE")
    assert all(math.isfinite(r["test_loss"]) and math.isfinite(r["train_loss"]) for r in hist)


def test_vae_checkpoint_pictures_and_bounds_on_the_device(cuda, host_draws, tmp_path):
    train, test = mnist_shaped(80, seed=4), mnist_shaped(30, seed=5)
    settings = dict(epochs=1, batch_size=40, latent=2, hidden=[16], conditional=True, binarize=True)
    model, hist = vae.train_vae(out=tmp_path / "run", quiet=True, train_set=train, test_set=test, device=cuda,
                                **settings)
    for name in ("reconstructions.png", "checkpoint.npz", "metrics.jsonl"):
        assert (tmp_path / "run" / name).exists(), name
    ckpt = tinygen.load(tmp_path / "run" / "checkpoint.npz")
    dev, ref = vae.model_from_checkpoint(ckpt, cuda), vae.model_from_checkpoint(ckpt, "cpu")
    assert_module_on_device(dev, "loaded VAE")
    x = test[0][:4].reshape(4, 784) / 255.0
    with cpu_reference():
        for fn, args in ((vae.iwae_bound, (x, test[1][:4])), (vae.sample_images, (6,))):
            tinygen.manual_seed(7)
            a = fn(dev, *args, device=cuda) if fn is vae.sample_images else fn(dev, *args, k=8, device=cuda)
            tinygen.manual_seed(7)
            b = fn(ref, *args, device="cpu") if fn is vae.sample_images else fn(ref, *args, k=8, device="cpu")
            assert isinstance(a, np.ndarray) and np.isfinite(a).all()
            assert_same(a, b, fn.__name__)
        tinygen.manual_seed(7)
        e_dev = vae.evaluate_elbo(dev, x, test[1][:4], device=cuda)
        tinygen.manual_seed(7)
        e_ref = vae.evaluate_elbo(ref, x, test[1][:4], device="cpu")
    assert e_dev.keys() == e_ref.keys()
    assert_same(np.float64(e_dev["loss"]), np.float64(e_ref["loss"]), "ELBO")
    # and the command line's sample and eval on the device (eval scores the bundled MNIST test split)
    run_cli(["sample", str(tmp_path / "run" / "checkpoint.npz"), "--n", "5", "--label", "3",
             "--out", str(tmp_path / "v.npy"), "--device", "cuda"])
    v = np.load(tmp_path / "v.npy")
    assert v.shape == (5, 28, 28) and v.min() >= 0 and v.max() <= 1
    metrics = json.loads(run_cli(["eval", str(tmp_path / "run" / "checkpoint.npz"), "--json", "--iwae-k", "4",
                                  "--iwae-images", "3", "--device", "cuda"]))
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)) and len(metrics) > 2


def test_vae_resume_on_the_device_is_exact(cuda, tmp_path):
    train, test = mnist_shaped(80, seed=6), mnist_shaped(20, seed=7)
    kw = dict(batch_size=40, latent=2, hidden=[16], binarize=True, device=cuda, train_set=train, test_set=test,
              quiet=True, pictures=False)
    full, _ = vae.train_vae(out=tmp_path / "full", epochs=2, **kw)
    vae.train_vae(out=tmp_path / "part", epochs=1, **kw)
    if "cuda" not in tinygen.load(tmp_path / "part" / "checkpoint.npz")["rng"]:
        pytest.xfail("this device's generator exposes no state (CuPy's), so a resumed run draws fresh noise")
    resumed, _ = vae.train_vae(out=tmp_path / "part", epochs=2, resume=True, **kw)
    for key, t in resumed.state_dict().items():
        np.testing.assert_array_equal(host(t), host(full.state_dict()[key]), err_msg=key)


# ---- classifier ------------------------------------------------------------------------------------------------------
def test_classifier_matches_cpu_and_reloads(cuda, host_draws, tmp_path):
    train, test = mnist_shaped(150, seed=8), mnist_shaped(50, seed=9)
    kw = dict(epochs=2, batch_size=50, hidden=[32, 16], dropout=0.2, seed=1, train_set=train, test_set=test,
              quiet=True)
    model, acc = C.train_classifier(device=cuda, out=tmp_path / "cuda", save=tmp_path / "clf.npz", **kw)
    assert_module_on_device(model, "classifier")
    with cpu_reference():
        model_cpu, acc_cpu = C.train_classifier(device="cpu", out=tmp_path / "cpu", **kw)
    assert_same(np.float64(acc), np.float64(acc_cpu), "test accuracy", rtol=0, atol=0.021)  # a GPU may flip a tie
    assert_same_modules(model, model_cpu, "classifier")
    logged = [json.loads(line) for line in (tmp_path / "cuda" / "metrics.jsonl").read_text().splitlines()]
    logged_cpu = [json.loads(line) for line in (tmp_path / "cpu" / "metrics.jsonl").read_text().splitlines()]
    assert_same_history(logged, logged_cpu)

    loaded = C.load_classifier(tmp_path / "clf.npz", train_if_missing=False, device=cuda)
    assert_module_on_device(loaded, "loaded classifier")
    p, f = loaded.probs_and_features(test[0][:10])
    p_cpu, f_cpu = model_cpu.probs_and_features(test[0][:10])
    assert isinstance(p, np.ndarray) and p.shape == (10, 10) and f.shape == (10, 16)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    assert_same(p, p_cpu, "probabilities")
    assert C.accuracy(loaded, test[0], test[1]) == acc
    metrics = json.loads(run_cli(["eval", str(tmp_path / "clf.npz"), "--json", "--device", "cuda"]))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["recorded_test_accuracy"] == acc


# ---- optimizers and schedulers ---------------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd-momentum": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                     lambda o: optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    "sgd-nesterov": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True, maximize=False),
                     lambda o: optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e))),
    "adam-amsgrad": (lambda ps: optim.Adam(ps, lr=1e-2, amsgrad=True, weight_decay=1e-3),
                     lambda o: optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    "adamw": (lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.05),
              lambda o: optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=1e-4)),
    "rmsprop-centered": (lambda ps: optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5, weight_decay=1e-3),
                         lambda o: optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7)),
    "rmsprop": (lambda ps: optim.RMSprop(ps, lr=1e-3),
                lambda o: optim.lr_scheduler.CosineAnnealingLR(o, T_max=3)),
}


def _mlp_run(device, make_opt, make_sched, x, y, steps=4, resume_from=None):
    tinygen.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 3)).to(device)
    opt = make_opt(net.parameters())
    sched = make_sched(opt)
    start = 0
    if resume_from is not None:
        net.load_state_dict(resume_from["model"])
        opt.load_state_dict(resume_from["opt"])
        sched.load_state_dict(resume_from["sched"])
        start = resume_from["step"]
    xt, yt = tinygen.tensor(x, device=device), tinygen.tensor(y, device=device)
    losses = []
    for step in range(start, steps):
        loss = F.cross_entropy(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return net, opt, sched, losses


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_and_schedulers_match_cpu_and_checkpoint(cuda, name, tmp_path):
    make_opt, make_sched = OPTIMIZERS[name]
    g = np.random.default_rng(0)
    x, y = g.standard_normal((20, 6)).astype(np.float32), g.integers(0, 3, 20)
    net, opt, sched, losses = _mlp_run(cuda, make_opt, make_sched, x, y)
    assert_module_on_device(net, "MLP")
    assert_optimizer_on_device(opt, name)
    with cpu_reference():
        net_cpu, opt_cpu, sched_cpu, losses_cpu = _mlp_run("cpu", make_opt, make_sched, x, y)
    assert sched.get_last_lr() == sched_cpu.get_last_lr()
    assert_same(np.array(losses), np.array(losses_cpu), "losses")
    assert_same_modules(net, net_cpu, "MLP")

    # a checkpoint of the device run, resumed on the device after 2 of the 4 steps, gives the same parameters
    mid_net, mid_opt, mid_sched, _ = _mlp_run(cuda, make_opt, make_sched, x, y, steps=2)
    tinygen.save({"model": mid_net.state_dict(), "opt": mid_opt.state_dict(), "sched": mid_sched.state_dict(),
                  "step": 2}, tmp_path / "mid.npz")
    state = tinygen.load(tmp_path / "mid.npz")
    resumed, resumed_opt, _, _ = _mlp_run(cuda, make_opt, make_sched, x, y, resume_from=state)
    assert_optimizer_on_device(resumed_opt, f"resumed {name}")
    for key, t in resumed.state_dict().items():
        assert_device_array(t, f"resumed {key}")
        np.testing.assert_array_equal(host(t), host(net.state_dict()[key]), err_msg=key)
    # and the device checkpoint loads straight onto the device
    on_dev = tinygen.load(tmp_path / "mid.npz", map_location=cuda)
    assert_device_array(on_dev["model"]["0.weight"], "map_location='cuda' weight")


# ---- the GPU kernels (gpu.py) inside whole models, on the stand-in -----------------------------------------------
@pytest.fixture
def gpu_kernels_on_standin(cuda, monkeypatch):
    """Hand the stand-in's arrays the CuPy kernels of gpu.py, as lookup() does for real CuPy arrays (the stand-in
    runs their bodies unfused); counts the calls so the test knows they ran."""
    if not on_standin():
        pytest.skip("on a real GPU the CuPy kernels are already in use (this case is for the stand-in)")
    calls = {}
    real = kernels.lookup

    def counted(name):
        fn = getattr(gpu_kernels, name)

        def call(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return call
    table = {name: counted(name) for name in kernels.GPU_USED}
    monkeypatch.setattr(kernels, "lookup", lambda name, a: table.get(name) if isinstance(a, StandinArray)
                        else real(name, a))
    return calls


def test_gpu_kernels_in_whole_models_match_cpu(cuda, host_draws, gpu_kernels_on_standin):
    calls = gpu_kernels_on_standin
    settings = dict(TOY, loss="nonsaturating", steps=3, n_critic=1, ema=0.0)
    G, D, hist = gan.train_gan(out=None, quiet=True, device=cuda, **dict(settings, optimizer="rmsprop"))
    train, test = mnist_shaped(80, seed=10), mnist_shaped(20, seed=11)
    vkw = dict(epochs=1, batch_size=40, latent=2, hidden=[16], decoder="gaussian", train_set=train, test_set=test,
               quiet=True)
    model, vhist = vae.train_vae(device=cuda, **vkw)
    g = np.random.default_rng(1)
    x, y = g.standard_normal((20, 6)).astype(np.float32), g.integers(0, 3, 20)
    net, _, _, losses = _mlp_run(cuda, *OPTIMIZERS["sgd-nesterov"], x, y)
    # Linear + activation pairs run as one fused node (bias_act_*); the activation ops on their own:
    h = tinygen.tensor(g.standard_normal((4, 5)).astype(np.float32), device=cuda, requires_grad=True)
    for act in (lambda t: t.leaky_relu(0.2), lambda t: t.tanh(), lambda t: t.relu(), lambda t: t.elu()):
        act(h).sum().backward()
    for name in ("adam_steps", "rmsprop_steps", "sgd_steps", "bce_with_logits", "bias_act_fwd", "bias_act_bwd",
                 "leaky_relu_fwd", "leaky_relu_bwd", "tanh_bwd", "sigmoid_fwd", "sigmoid_bwd", "relu_fwd", "relu_bwd",
                 "elu_fwd", "elu_bwd"):
        assert calls.get(name), f"gpu.{name} was never called (calls: {sorted(calls)})"
    with cpu_reference():
        G_cpu, D_cpu, hist_cpu = gan.train_gan(out=None, quiet=True, device="cpu",
                                               **dict(settings, optimizer="rmsprop"))
        model_cpu, vhist_cpu = vae.train_vae(device="cpu", **vkw)
        net_cpu, _, _, losses_cpu = _mlp_run("cpu", *OPTIMIZERS["sgd-nesterov"], x, y)
    # the kernels are the reference's formulas, fused; the plain ops may round a few of them differently
    tol = dict(rtol=1e-4, atol=1e-6)
    for a, b in ((hist, hist_cpu), (vhist, vhist_cpu)):
        for key in ("g_loss", "d_loss", "train_loss", "test_loss"):
            if key in a[-1]:
                np.testing.assert_allclose(a[-1][key], b[-1][key], **tol, err_msg=key)
    np.testing.assert_allclose(losses, losses_cpu, **tol)
    for dev, ref in ((G, G_cpu), (D, D_cpu), (model, model_cpu), (net, net_cpu)):
        for key, t in dev.state_dict().items():
            np.testing.assert_allclose(host(t), ref.state_dict()[key].numpy(), **tol, err_msg=key)


# ---- the device's own generator --------------------------------------------------------------------------------------
def test_device_generator_draws_on_the_device(cuda):
    tinygen.manual_seed(3)
    for t in (tinygen.randn(4, 5, device=cuda), tinygen.rand(3, device=cuda),
              tinygen.randint(0, 10, (6,), device=cuda), tinygen.bernoulli(tinygen.full((5,), 0.5, device=cuda))):
        assert_device_array(t, "a random tensor")
    z = host(tinygen.randn(2000, device=cuda))
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1  # a standard normal, whatever the generator
    tinygen.manual_seed(3)
    a = host(tinygen.randn(8, device=cuda))
    tinygen.manual_seed(3)
    np.testing.assert_array_equal(a, host(tinygen.randn(8, device=cuda)))  # reproducible from the seed


# ---- the GPU check's scripts (benchmarks/gpu_throughput.py, benchmarks/gpu_check.sh) -------------------------------
def test_gpu_throughput_script_runs(cuda, tmp_path, capsys):
    # without a GPU "cuda" is the stand-in here, so this checks the script's flow: the benchmark's models built by
    # benchmarks/models_tinygen.py on the device, eager and compiled, checked against tinygen on the CPU
    from benchmarks import gpu_throughput
    rc = gpu_throughput.main(["--dry-run", "--models", "vae,dcgan", "--batch-sizes", "4",
                              "--frameworks", "tinygen,tinygen-compiled", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_throughput.json").read_text())
    for model in ("vae", "dcgan"):
        for name in ("tinygen", "tinygen-compiled"):
            check = result["checks"][model][name]
            assert check["ok"] and check["against"] == "tinygen-cpu", (model, name, check)
            assert len(check["losses"]) == gpu_throughput.CHECK_STEPS * (1 if model == "vae" else 2)
    assert [(r["model"], r["batch"]) for r in result["rows"]] == [("vae", 4), ("dcgan", 4)]
    for row in result["rows"]:
        assert all(row["results"][name]["samples_per_s"] > 0 for name in ("tinygen", "tinygen-compiled"))
    # the VAE's KL term, 1 + logvar - mu * mu before its exp: one fused kernel (the DCGAN has no such run)
    assert [row["results"]["tinygen-compiled"]["fused_runs"] for row in result["rows"]] == [[3], []]
    # its backward: the KL term's five nodes and the sampling's four, one kernel each
    assert [row["results"]["tinygen-compiled"]["fused_backward_runs"] for row in result["rows"]] == [[5, 4], []]
    text = (tmp_path / "gpu_throughput.md").read_text()
    assert "| dcgan | 4 |" in text and "torch-compile: skipped (not asked for" in text
    assert " / torch" not in text  # no ratio without its two columns
    with pytest.raises(SystemExit):
        gpu_throughput.main(["--models", "resnet"])
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_throughput.main(["--frameworks", "jax"])
    assert "unknown framework" in capsys.readouterr().err


def test_gpu_throughput_checks_against_pytorch_and_fails_on_a_difference(cuda, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from benchmarks import gpu_throughput, models_tinygen
    rc = gpu_throughput.main(["--dry-run", "--models", "mlp", "--batch-sizes", "4",
                              "--frameworks", "tinygen-compiled,torch", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_throughput.json").read_text())
    check = result["checks"]["mlp"]["tinygen-compiled"]
    assert check["ok"] and check["against"] in ("torch (CPU)", "torch-cuda") and check["max_rel_diff"] < 1e-5
    assert "| tinygen-compiled / torch |" in (tmp_path / "gpu_throughput.md").read_text()
    # a step that computes something else (the learning rate doubled) fails the check and the exit code
    original = models_tinygen.build_compiled

    def wrong(*args, **kwargs):
        runner = original(*args, **kwargs)
        for group in runner.optimizers[0].param_groups:
            group["lr"] *= 2
        return runner
    monkeypatch.setattr(models_tinygen, "build_compiled", wrong)
    rc = gpu_throughput.main(["--dry-run", "--models", "mlp", "--batch-sizes", "4",
                              "--frameworks", "tinygen-compiled,torch", "--out", str(tmp_path)])
    assert rc == 1
    check = json.loads((tmp_path / "gpu_throughput.json").read_text())["checks"]["mlp"]["tinygen-compiled"]
    assert not check["ok"] and check["max_rel_diff"] > gpu_throughput.CHECK_RTOL
    assert "mlp, tinygen-compiled" in (tmp_path / "gpu_throughput.md").read_text()


def _gpu_check_script():
    """benchmarks/gpu_check.sh, or a skip where there is no bash to run it."""
    import shutil
    from pathlib import Path
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    return Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_parses():
    import subprocess
    script = _gpu_check_script()
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script), "--help"], check=True, capture_output=True, text=True).stdout
    assert "--standin" in usage and "throughput" in usage
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
    bad = subprocess.run(["bash", str(script), "--only", "tests,bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown step 'bogus' in --only" in bad.stderr


def test_gpu_check_runs_only_the_steps_asked_for(tmp_path):
    import subprocess
    script = _gpu_check_script()
    out = subprocess.run(["bash", str(script), "--standin", "--only", "env"], capture_output=True, text=True,
                         env={**os.environ, "OUT": str(tmp_path)}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "env         ok" in summary and "RESULT: all steps passed" in summary
    assert not any(name in summary for name in ("tests ", "gan-mnist", "throughput", "compiled"))
