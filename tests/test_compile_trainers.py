"""The trainers' compiled steps: a run with compile (the default) writes bitwise the same checkpoint and metrics as
the same run with compile=False, and its steps are replays, not new recordings."""
import argparse
import json

import numpy as np
import pytest

import tinygen
from tinygen.compile import Compiled
from tinygen.data import mnist
from tinygen.models import classifier as C
from tinygen.models import gan, vae
from tinygen.models import train_utils as tu

TIMES = ("seconds", "steps_per_s", "images_per_s")
TINY_TOY = dict(latent=4, g_hidden=[32, 32], d_hidden=[32, 32], batch_size=64, toy_samples=640, eval_samples=200,
                log_every=3)
TINY_MNIST = dict(arch="mlp", latent=8, g_hidden=[32], d_hidden=[32], batch_size=32, eval_samples=64, log_every=2)


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist("test")  # the bundled split; small subsets keep the tests fast
    return (images[:650], labels[:650]), (images[650:800], labels[650:800])


@pytest.fixture
def compiled(monkeypatch):
    """The compiled functions the trainers make (to count their recordings and replays)."""
    made, original = [], tu.compiled_step

    def spy(step, compile=True):
        fn = original(step, compile)
        made.append(fn)
        return fn
    monkeypatch.setattr(tu, "compiled_step", spy)
    return made


def _plain(value):
    """A checkpoint (or metrics line) as nested lists of NumPy arrays and numbers, without wall-clock times."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, tinygen.Tensor):
        return value.numpy()
    return value


def _assert_same(a, b, where="checkpoint"):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), where
    else:
        assert a == b or (a != a and b != b), where


def _same_runs(eager, compiled, logs=("metrics",)):
    _assert_same(_plain(tinygen.load(eager / "checkpoint.npz")), _plain(tinygen.load(compiled / "checkpoint.npz")))
    for log in logs:
        lines = [[_plain(json.loads(line)) for line in open(folder / f"{log}.jsonl")] for folder in (eager, compiled)]
        _assert_same(*lines, where=log)


def _programs(made):
    return [f for f in made if isinstance(f, Compiled)]


# ---- GAN -----------------------------------------------------------------------------------------------------------
GAN_CASES = {
    # the default recipe's pieces: conditional, EMA, dropout in D, BatchNorm in G, label smoothing
    "mnist-ema-bn-dropout": dict(TINY_MNIST, steps=12, ema=0.9, d_dropout=0.3, g_batchnorm=True,
                                 label_smoothing=0.1),
    "wgan-gp": dict(TINY_TOY, dataset="ring", loss="wgan-gp", n_critic=3, steps=5),  # create_graph penalty
    "wgan-clip-rmsprop": dict(TINY_TOY, dataset="ring", loss="wgan", n_critic=2, steps=5),
    "ragan-linear-decay": dict(TINY_TOY, dataset="ring", loss="ragan", n_critic=2, steps=6, d_batchnorm=True),
    "dcgan": dict({k: v for k, v in TINY_MNIST.items() if k not in gan.MLP_ONLY}, arch="dcgan", ngf=4, ndf=4,
                  steps=4, conditional=False),
    # the remedies: sgd with momentum and L2, gradient-norm clipping (a wrapped optimizer), dropout in G and D,
    # augmented real batches; and AdamW's decoupled decay
    "remedies-sgd": dict(TINY_MNIST, steps=6, optimizer="sgd", momentum=0.9, weight_decay=1e-3, clip_grad_norm=1.0,
                         g_dropout=0.2, d_dropout=0.2, augment=["crop", "rotate"]),
    "remedies-adamw": dict(TINY_MNIST, steps=6, weight_decay=1e-2, clip_grad_norm=0.5, conditional=False),
}


@pytest.mark.parametrize("case", list(GAN_CASES))
def test_gan_compiled_run_is_bitwise_the_eager_run(case, tmp_path, digits, compiled):
    settings = dict(GAN_CASES[case], quiet=True, pictures=False)
    if settings.get("dataset", "mnist") == "mnist":
        settings["train_set"] = (digits[0][0][:320], digits[0][1][:320])
    gan.train_gan(out=tmp_path / "eager", compile=False, **settings)
    assert _programs(compiled) == []
    gan.train_gan(out=tmp_path / "compiled", **settings)  # compile is the default
    fns = _programs(compiled)  # the critic update alone, and the critic and the generator update
    assert [f.records for f in fns] == [int(settings.get("n_critic", 1) > 1), 1]  # one program each, then replays
    assert sum(f.replays for f in fns) == settings["steps"] * settings.get("n_critic", 1) - sum(f.records for f in fns)
    _same_runs(tmp_path / "eager", tmp_path / "compiled", ("metrics", "steps"))


def test_gan_resumed_mid_epoch_with_compile_equals_the_eager_run(tmp_path):
    # stops inside an epoch and between critic steps; the part before the stop runs eagerly, the rest compiled
    settings = dict(TINY_TOY, dataset="ring", loss="wgan-gp", n_critic=3, d_dropout=0.1, seed=2, lr_decay="none",
                    quiet=True, pictures=False)
    gan.train_gan(out=tmp_path / "eager", compile=False, steps=8, **settings)
    gan.train_gan(out=tmp_path / "part", compile=False, steps=4, **settings)
    gan.train_gan(out=tmp_path / "part", resume=True, steps=8, **settings)
    _same_runs(tmp_path / "eager", tmp_path / "part")


# ---- VAE -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings", [dict(beta_warmup=1, binarize=True),
                                      dict(conditional=True, decoder="gaussian", label_embedding="embedding"),
                                      dict(optimizer="rmsprop", weight_decay=1e-3, clip_grad_norm=5.0,
                                           encoder_dropout=0.2, decoder_dropout=0.1, augment=["crop"],
                                           binarize=True)],
                         ids=["warmup-binarized", "cvae-gaussian", "remedies"])
def test_vae_compiled_run_is_bitwise_the_eager_run(settings, tmp_path, digits, compiled):
    # 650 images in batches of 100: a short last batch of 50 every epoch (a second program)
    kw = dict(settings, epochs=2, batch_size=100, latent=4, hidden=[24], train_set=digits[0], test_set=digits[1],
              quiet=True, pictures=False)
    vae.train_vae(out=tmp_path / "eager", compile=False, **kw)
    vae.train_vae(out=tmp_path / "compiled", **kw)
    step_fns = _programs(compiled)
    assert [f.records for f in step_fns] == [2, 2]  # per epoch: a full and the short batch, whatever the KL weight
    assert [f.replays for f in step_fns] == [5, 5]
    _same_runs(tmp_path / "eager", tmp_path / "compiled")


def test_vae_resumed_with_compile_equals_the_eager_run(tmp_path, digits):
    kw = dict(batch_size=100, latent=4, hidden=[24], binarize=True, beta_warmup=2, train_set=digits[0],
              test_set=digits[1], quiet=True, pictures=False)
    vae.train_vae(out=tmp_path / "eager", epochs=3, compile=False, **kw)
    vae.train_vae(out=tmp_path / "part", epochs=1, **kw)
    vae.train_vae(out=tmp_path / "part", epochs=3, resume=True, **kw)
    _same_runs(tmp_path / "eager", tmp_path / "part")


# ---- classifier ----------------------------------------------------------------------------------------------------
def test_classifier_compiled_run_is_bitwise_the_eager_run(tmp_path, digits, compiled):
    # dropout in train mode, a short last batch (650 = 3 x 200 + 50), a cosine schedule, resumed after epoch 1
    kw = dict(hidden=[32], batch_size=200, dropout=0.3, train_set=digits[0], test_set=digits[1], quiet=True)
    C.train_classifier(epochs=3, out=tmp_path / "eager", compile=False, **kw)
    C.train_classifier(epochs=3, out=tmp_path / "part", stop_after=1, **kw)
    C.train_classifier(epochs=3, out=tmp_path / "part", resume=True, **kw)
    step_fns = _programs(compiled)
    assert [(f.records, f.replays) for f in step_fns] == [(2, 2)] * 3
    _same_runs(tmp_path / "eager", tmp_path / "part")


# ---- options -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [gan, vae, C], ids=["gan", "vae", "classifier"])
def test_no_compile_option(module):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    assert p.parse_args([]).compile is True
    assert p.parse_args(["--no-compile"]).compile is False
    assert "tinygen.compile" in p.format_help()


def test_steps_are_compiled_under_data_parallelism_too(monkeypatch):
    """(tests/test_distributed.py runs the compiled trainers on 2 ranks against eager, bitwise.)"""
    def step(x):
        return x * 2
    assert isinstance(tu.compiled_step(step), Compiled)
    assert tu.compiled_step(step, compile=False) is step
    monkeypatch.setattr(tu.dist, "world_size", lambda: 2)
    assert isinstance(tu.compiled_step(step), Compiled)
    assert tu.compiled_step(step, compile=False) is step


def test_own_data_compiled_runs_are_bitwise_the_eager_runs(tmp_path, compiled):
    # 16 unbounded features: the GAN's linear output, the VAE's Gaussian decoder with a linear mean
    x = np.random.default_rng(3).normal(size=(96, 16)).astype(np.float32) * 3 + 1
    for name, train in (("gan", lambda **kw: gan.train_gan(train_set=x, steps=5, batch_size=16, latent=4,
                                                            g_hidden=[16], d_hidden=[16], **kw)),
                        ("vae", lambda **kw: vae.train_vae(train_set=x, epochs=2, batch_size=20, latent=3,
                                                            hidden=[16], **kw))):
        train(out=tmp_path / f"{name}-eager", compile=False, quiet=True, pictures=False)
        train(out=tmp_path / f"{name}-compiled", quiet=True, pictures=False)
        _same_runs(tmp_path / f"{name}-eager", tmp_path / f"{name}-compiled")
    assert sum(f.replays for f in _programs(compiled)) > 0
