"""The architecture choice of the trainers: ``--arch dcgan`` for the GAN and ``--arch conv`` for the VAE train,
resume exactly, are recorded in the checkpoint so sample/eval rebuild them, and older checkpoints load as MLPs."""
import argparse
import contextlib
import io
import json

import numpy as np
import pytest

import tinygen
from tinygen import nn
from tinygen.cli import main as cli_main
from tinygen.data import mnist
from tinygen.models import gan, vae
from tinygen.models.dcgan import DCGANDiscriminator

TINY_DCGAN = dict(arch="dcgan", ngf=4, ndf=4, latent=8, batch_size=16, eval_samples=32, log_every=1, ema=0.9)
TINY_MLP_GAN = dict(arch="mlp", latent=8, g_hidden=[16], d_hidden=[16], batch_size=16, eval_samples=32, log_every=1)
TINY_CONV_VAE = dict(arch="conv", latent=4, hidden=[16], batch_size=32)


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist("test")  # the bundled split: no download needed
    return images[:64], labels[:64]


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return rc, out.getvalue(), err.getvalue()


def _same_modules(a, b, names):
    for name in names:
        assert set(a["modules"][name]) == set(b["modules"][name])
        for k, v in a["modules"][name].items():
            assert np.array_equal(v.numpy(), b["modules"][name][k].numpy()), (name, k)


# ---- GAN -------------------------------------------------------------------------------------------------------------
def test_conditional_dcgan_resumes_exactly_and_its_checkpoint_rebuilds_the_dcgan(tmp_path, digits):
    settings = dict(TINY_DCGAN, train_set=digits, pictures=False, quiet=True)  # MNIST default: conditional
    gan.train_gan(out=tmp_path / "full", epochs=2, **settings)
    gan.train_gan(out=tmp_path / "part", epochs=1, **settings)
    _, _, hist = gan.train_gan(out=tmp_path / "part", resume=True, epochs=2, **settings)
    assert [r["epoch"] for r in hist] == [2] and hist[-1]["step"] == 2 * (64 // 16)
    full, part = tinygen.load(tmp_path / "full" / "checkpoint.npz"), tinygen.load(tmp_path / "part" / "checkpoint.npz")
    _same_modules(full, part, ("generator", "discriminator", "ema"))
    assert part["config"]["arch"] == "dcgan" and part["config"]["ngf"] == 4
    assert any(k.startswith("net.") and part["modules"]["generator"][k].ndim == 4 for k in part["modules"]["generator"])

    G, cfg = gan.generator_from_checkpoint(part)
    assert isinstance(G, gan.FlatDCGANGenerator) and G.num_classes == 10 and cfg["conditional"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == 2  # the EMA copy's layout is the DCGAN's
    x = gan.sample(G, 20, labels=np.arange(20) % 10)
    assert x.shape == (20, 784) and np.isfinite(x).all() and np.abs(x).max() <= 1.0
    # trained G and its saved EMA copy differ; the rebuilt one is the saved EMA copy
    G_live, _ = gan.generator_from_checkpoint(part, use_ema=False)
    assert not np.array_equal(G_live.state_dict()["net.0.weight"].numpy(), G.state_dict()["net.0.weight"].numpy())

    rc, out, err = _run(["sample", str(tmp_path / "part" / "checkpoint.npz"), "--n", "12", "--out",
                         str(tmp_path / "s.npy")])
    assert rc == 0, err
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (12, 28, 28) and np.isfinite(s).all()


def test_dcgan_critic_drops_batchnorm_for_the_gradient_penalty(digits):
    cfg = gan.make_config(arch="dcgan", ngf=4, ndf=4, loss="wgan-gp", conditional=False)
    D = gan.build_discriminator(cfg)
    assert isinstance(D, DCGANDiscriminator) and not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in gan.build_discriminator(dict(cfg, loss="hinge")).modules())
    # a few unconditional wgan-gp steps: the penalty differentiates through the convolutions twice
    G, D, hist = gan.train_gan(out=None, quiet=True, train_set=digits, steps=2, **dict(
        TINY_DCGAN, loss="wgan-gp", conditional=False, n_critic=2, ema=0.0))
    assert hist[-1]["step"] == 2 and np.isfinite(hist[-1]["gp"]) and hist[-1]["gp"] > 0
    assert G.num_classes == 0 and gan.sample(G, 3).shape == (3, 784)


def test_checkpoint_without_arch_loads_and_resumes_as_the_mlp(tmp_path, digits):
    settings = dict(TINY_MLP_GAN, train_set=digits, pictures=False, quiet=True, ema=0.0)
    gan.train_gan(out=tmp_path / "run", steps=2, **settings)
    path = tmp_path / "run" / "checkpoint.npz"
    ckpt = tinygen.load(path)
    for key in ("arch", "ngf", "ndf"):  # as a run saved before the architectures were selectable
        del ckpt["config"][key]
    tinygen.save(ckpt, path)
    G, cfg = gan.generator_from_checkpoint(tinygen.load(path))
    assert cfg["arch"] == "mlp" and isinstance(G, gan.Generator)
    _, _, hist = gan.train_gan(out=tmp_path / "run", resume=True, steps=4, **settings)
    assert hist[-1]["step"] == 4
    shared = {k: v for k, v in settings.items() if k not in (*gan.MLP_ONLY, "arch")}  # the MLP's own settings out
    with pytest.raises(ValueError, match="arch: saved 'mlp', now 'dcgan'.*pass its arch, 'mlp'"):
        gan.train_gan(out=tmp_path / "run", resume=True, steps=6, **dict(shared, arch="dcgan"))
    with pytest.raises(ValueError, match="arch: saved 'mlp', now 'dcgan'"):  # MNIST's default is the DCGAN now
        gan.train_gan(out=tmp_path / "run", resume=True, steps=6, **shared)


def test_dcgan_critic_with_a_fully_connected_layer_and_checkpoints_saved_before_it(tmp_path, digits):
    D = gan.build_discriminator(gan.make_config(**dict(TINY_DCGAN, d_fc=6)))
    linears = [m for m in D.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2 * 4 * 7 * 7, 6), (6, 1)]
    assert not any(isinstance(m, nn.Linear) for m in gan.build_discriminator(gan.make_config(
        **dict(TINY_DCGAN, d_fc=0))).modules())
    with pytest.raises(ValueError, match="d_fc must be a non-negative integer, got -1"):
        gan.make_config(arch="dcgan", d_fc=-1)
    settings = dict(TINY_DCGAN, d_fc=0, train_set=digits, pictures=False, quiet=True, conditional=False)
    gan.train_gan(out=tmp_path / "run", steps=2, **settings)
    path = tmp_path / "run" / "checkpoint.npz"
    ckpt = tinygen.load(path)
    del ckpt["config"]["d_fc"]  # as a DCGAN run saved before the option: its critic ends in the 7x7 convolution
    tinygen.save(ckpt, path)
    assert gan.trainer.saved_config(tinygen.load(path))["d_fc"] == 0
    _, D, hist = gan.train_gan(out=tmp_path / "run", resume=True, steps=4, **settings)
    assert hist[-1]["step"] == 4 and not any(isinstance(m, nn.Linear) for m in D.modules())
    with pytest.raises(ValueError, match="d_fc: saved 0, now 6"):
        gan.train_gan(out=tmp_path / "run", resume=True, steps=6, **dict(settings, d_fc=6))
    with pytest.raises(ValueError, match=r"arch: saved 'dcgan', now 'mlp'.*pass its arch, 'dcgan'\)$"):
        gan.train_gan(out=tmp_path / "run", resume=True, steps=6, **dict(settings, arch="mlp", d_fc=None, ngf=None,
                                                                          ndf=None))


def test_dcgan_recipe_defaults_and_what_overrides_them(capsys):
    cfg = gan.make_config(arch="dcgan")
    assert cfg["betas"] == [0.0, 0.99] and cfg["lr_g"] == cfg["lr_d"] == 1e-3
    assert (cfg["ngf"], cfg["ndf"], cfg["d_fc"]) == (32, 4, 256)
    assert gan.make_config(arch="dcgan", ndf=64, d_fc=0)["ndf"] == 64
    mlp = gan.make_config(arch="mlp")  # the MLP keeps its MNIST recipe
    assert mlp["betas"] == [0.5, 0.999] and mlp["lr_g"] == mlp["lr_d"] == 5e-4
    cfg = gan.make_config(arch="dcgan", betas=[0.5, 0.999], lr_g=2e-4)  # the caller wins, setting by setting
    assert cfg["betas"] == [0.5, 0.999] and cfg["lr_g"] == 2e-4 and cfg["lr_d"] == 1e-3
    cfg = gan.make_config(arch="dcgan", loss="wgan-gp")  # and a loss's own optimizer settings
    assert cfg["betas"] == [0.5, 0.9] and cfg["lr_g"] == cfg["lr_d"] == 1e-4
    assert gan.make_config(arch="dcgan", dataset="custom")["betas"] == [0.0, 0.99]
    with pytest.raises(SystemExit):
        cli_main(["train", "gan", "--help"])
    assert "Adam betas (default 0 0.99 with the DCGAN, 0.5 0.999 with the MLP)" in " ".join(
        capsys.readouterr().out.split())


def test_dcgan_is_refused_for_the_2d_mixtures_and_mlp_options_with_it(tmp_path):
    with pytest.raises(ValueError, match="arch 'dcgan' is a convolutional network for images; the ring data are 2-D"):
        gan.make_config(dataset="ring", arch="dcgan")
    with pytest.raises(ValueError, match="unknown arch 'resnet'; expected one of mlp, dcgan"):
        gan.make_config(arch="resnet")
    with pytest.raises(ValueError, match="preset 'pytorch-gan' is an MLP recipe"):
        gan.make_config(arch="dcgan", preset="pytorch-gan")
    rc, _, err = _run(["train", "gan", "--data", "grid", "--arch", "dcgan", "--out", str(tmp_path / "x")])
    assert rc == 2 and "arch 'dcgan' is a convolutional network" in err and "grid" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = _run(["train", "gan", "--arch", "dcgan", "--g-hidden", "32", "--out", str(tmp_path / "y")])
    assert rc == 2 and "g_hidden (--g-hidden) sets the MLP networks; it does nothing with arch 'dcgan' (" in err
    rc, _, err = _run(["train", "gan", "--arch", "mlp", "--ngf", "8", "--out", str(tmp_path / "z")])
    assert rc == 2 and "ngf (--ngf) sets the DCGAN networks; it does nothing with arch 'mlp' (" in err
    # without --arch the architecture is the data's default: the DCGAN on MNIST, the MLP on 2-D points
    rc, _, err = _run(["train", "gan", "--g-hidden", "32", "--out", str(tmp_path / "w")])
    assert rc == 2 and "g_hidden (--g-hidden) sets the MLP networks; it does nothing with arch 'dcgan', the " \
                       "default on mnist" in err
    rc, _, err = _run(["train", "gan", "--data", "ring", "--ndf", "8", "--out", str(tmp_path / "v")])
    assert rc == 2 and "ndf (--ndf) sets the DCGAN networks; it does nothing with arch 'mlp', the default on " \
                       "ring" in err
    # the generator's slope is the MLP's (the DCGAN's generator has ReLUs), with --arch or by default alike;
    # --slope sets both networks' where they have one, and a dropout of 0 is refused as any other value
    for argv in (["--g-slope", "0.1"], ["--arch", "dcgan", "--g-slope", "0.1"], ["--dropout", "0"]):
        rc, _, err = _run(["train", "gan", *argv, "--out", str(tmp_path / "u")])
        name = "g_slope (--g-slope)" if "--g-slope" in argv else "dropout (--dropout)"
        assert rc == 2 and f"{name} sets the MLP networks; it does nothing with arch 'dcgan'" in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    cfg = gan.make_config(arch="dcgan", slope=0.1)
    assert (cfg["d_slope"], "slope" in cfg) == (0.1, False)
    cfg = gan.make_config(arch="mlp", slope=0.1, g_slope=0.3, dropout=0.25, d_dropout=0.5)
    assert (cfg["g_slope"], cfg["d_slope"], cfg["g_dropout"], cfg["d_dropout"]) == (0.3, 0.1, 0.25, 0.5)
    with pytest.raises(ValueError, match=r"d_fc \(--d-fc\) sets the DCGAN networks; it does nothing with arch 'mlp' "):
        gan.train_gan(out=None, arch="mlp", d_fc=8, steps=1)
    assert not (tmp_path / "x" / "checkpoint.npz").exists()


def test_command_line_trains_an_unconditional_dcgan_and_samples_it(tmp_path):
    out = tmp_path / "run"
    # no --arch: the DCGAN is MNIST's default, and the run says which networks it trains
    rc, stdout, err = _run(["train", "gan", "--ngf", "4", "--ndf", "4", "--d-fc", "8", "--latent", "8",
                            "--no-conditional", "--n-train", "32", "--batch-size", "16", "--steps", "2",
                            "--eval-samples", "32", "--ema", "0", "--threads", "1", "--out", str(out)])
    assert rc == 0, err
    assert stdout.startswith("DCGAN (nonsaturating loss) on 32 MNIST images"), stdout
    rc, mlp_out, err = _run(["train", "gan", "--arch", "mlp", "--g-hidden", "8", "--d-hidden", "8", "--n-train", "32",
                             "--batch-size", "16", "--steps", "1", "--eval-samples", "32", "--threads", "1", "--out",
                             str(tmp_path / "mlp")])
    assert rc == 0 and mlp_out.startswith("MLP GAN (nonsaturating loss, conditional) on 32 MNIST images"), err
    ckpt = tinygen.load(out / "checkpoint.npz")
    assert ckpt["config"]["arch"] == "dcgan" and not ckpt["config"]["conditional"]
    assert ckpt["extra"]["step"] == 2
    rc, _, err = _run(["sample", str(out / "checkpoint.npz"), "--n", "5", "--out", str(tmp_path / "s.npy")])
    assert rc == 0, err
    assert np.load(tmp_path / "s.npy").shape == (5, 28, 28)


# ---- VAE -------------------------------------------------------------------------------------------------------------
def test_conv_vae_resumes_exactly_and_its_checkpoint_rebuilds_the_conv_vae(tmp_path, digits):
    settings = dict(TINY_CONV_VAE, train_set=digits, test_set=(digits[0][:32], digits[1][:32]), quiet=True,
                    pictures=False)
    vae.train_vae(out=tmp_path / "full", epochs=2, **settings)
    vae.train_vae(out=tmp_path / "part", epochs=1, **settings)
    _, hist = vae.train_vae(out=tmp_path / "part", resume=True, epochs=2, **settings)
    assert [r["epoch"] for r in hist] == [2] and np.isfinite(hist[-1]["test_loss"])
    full, part = tinygen.load(tmp_path / "full" / "checkpoint.npz"), tinygen.load(tmp_path / "part" / "checkpoint.npz")
    _same_modules(full, part, ("model",))
    assert part["config"]["arch"] == "conv"

    model = vae.model_from_checkpoint(part)
    assert model.arch == "conv" and isinstance(model.encoder_conv[0], nn.Conv2d)
    assert isinstance(model.decoder_conv[-1], nn.ConvTranspose2d)
    x = digits[0][:5].reshape(5, 784).astype(np.float32) / 255.0
    with tinygen.no_grad():
        out, mu, logvar = model(tinygen.tensor(x))
    assert out.shape == (5, 784) and mu.shape == logvar.shape == (5, 4)
    assert vae.sample_images(model, 3).shape == (3, 28, 28)

    args = argparse.Namespace(iwae_k=4, iwae_images=4, data=None, seed=0, device="cpu", json=True)
    metrics = vae.evaluate_checkpoint(part, args)
    assert metrics["arch"] == "conv" and np.isfinite(metrics["test_loss"]) and metrics["iwae_k"] == 4


def test_conditional_conv_vae_decodes_per_label(digits):
    model, hist = vae.train_vae(out=None, epochs=1, conditional=True, train_set=digits,
                                test_set=(digits[0][:32], digits[1][:32]), quiet=True, pictures=False,
                                **TINY_CONV_VAE)
    assert np.isfinite(hist[-1]["test_loss"])
    z = tinygen.randn(2, 4)
    with tinygen.no_grad():
        a, b = model.decode(z, np.array([0, 0])).numpy(), model.decode(z, np.array([7, 7])).numpy()
    assert a.shape == (2, 784) and not np.allclose(a, b)


def test_vae_checkpoint_without_arch_loads_and_resumes_as_the_mlp(tmp_path, digits):
    settings = dict(latent=4, hidden=[16], batch_size=32, train_set=digits, test_set=(digits[0][:32],
                    digits[1][:32]), quiet=True, pictures=False)
    vae.train_vae(out=tmp_path / "run", epochs=1, **settings)
    path = tmp_path / "run" / "checkpoint.npz"
    ckpt = tinygen.load(path)
    del ckpt["config"]["arch"]  # as a run saved before the architectures were selectable
    tinygen.save(ckpt, path)
    model = vae.model_from_checkpoint(tinygen.load(path))
    assert model.arch == "mlp" and not hasattr(model, "encoder_conv")
    _, hist = vae.train_vae(out=tmp_path / "run", resume=True, epochs=2, **settings)
    assert [r["epoch"] for r in hist] == [2]
    with pytest.raises(ValueError, match="arch: saved 'mlp', now 'conv'"):
        vae.train_vae(out=tmp_path / "run", resume=True, epochs=3, **dict(settings, arch="conv"))


def test_vae_arch_option_and_errors():
    from tinygen.cli import build_parser
    args = build_parser().parse_args(["train", "vae", "--arch", "conv"])
    assert vae.make_config(**vae._settings_from_args(args))["arch"] == "conv"
    assert build_parser().parse_args(["train", "vae"]).arch == "mlp"
    with pytest.raises(ValueError, match="unknown VAE arch 'resnet'; expected one of mlp, conv"):
        vae.make_config(arch="resnet")
    with pytest.raises(ValueError, match=r"VAE: arch 'conv' on images of shape \(C, H, W\) = \(1, 28, 28\) needs "
                                         r"data_dim 784, got data_dim 100"):
        vae.VAE(arch="conv", data_dim=100)
    assert json.loads(json.dumps(vae.make_config()))["arch"] == "mlp"


# ---- the benchmark's DCGAN -------------------------------------------------------------------------------------------
def test_benchmark_dcgan_computes_the_same_losses_in_every_framework():
    from benchmarks import models_tinygen, specs
    from benchmarks.specs import Skip
    batch = 4
    args = ("dcgan", batch, specs.init_params("dcgan"), specs.make_data("dcgan", batch))
    noise = specs.make_noise("dcgan", batch)
    runners = {"tinygen": models_tinygen.build(*args, noise=noise)}
    for name in ("models_torch", "models_jax"):
        try:
            module = __import__(f"benchmarks.{name}", fromlist=["build"])
            runners[name] = module.build(*args, noise=noise)
        except Skip:  # that framework is not installed here
            continue
    assert len(runners) > 1, "neither PyTorch nor JAX is installed: nothing to compare with"
    losses = {k: [r.loss_value(r.step()) for _ in range(3)] for k, r in runners.items()}
    for k, got in losses.items():
        np.testing.assert_allclose(got, losses["tinygen"], rtol=1e-4, err_msg=k)
    assert losses["tinygen"][0] != losses["tinygen"][2]  # the steps trained something
    with pytest.raises(Skip, match="no hand-written NumPy step for dcgan"):
        from benchmarks import models_numpy
        models_numpy.build(*args)
    assert specs.batch_sizes_of("dcgan", [16, 64, 256, 1024]) == [16, 64, 256]
    assert specs.batch_sizes_of("gan", [16, 1024]) == [16, 1024]
