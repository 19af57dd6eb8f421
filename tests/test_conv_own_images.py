"""The convolutional models (GAN --arch dcgan, VAE --arch conv) on a run's own images of any (C, H, W) with H and W
divisible by 4: their layers sized from the data, the (H, W, C) rows <-> (N, C, H, W) layout, short runs on arrays
and PNG folders followed by ``tinygen sample`` / ``tinygen eval``, and what is refused."""
import json

import numpy as np
import pytest

import tinygen
from test_compile_trainers import _programs, _same_runs, compiled  # noqa: F401 (a fixture)
from test_data_files import _cli, _png_folder, _png_size
from tinygen.data import from_arrays
from tinygen.models import gan, vae
from tinygen.models.conv_images import images_to_rows, rows_to_images
from tinygen.models.dcgan import DCGANDiscriminator, DCGANGenerator

TINY_GAN = ("--steps", 2, "--batch-size", 8, "--eval-samples", 24, "--ngf", 4, "--ndf", 4, "--latent", 8)
TINY_VAE = ("--epochs", 1, "--batch-size", 8, "--hidden", 16, "--latent", 4)


def _images(shape, n=36, classes=3, seed=0):
    """uint8 images (n, *shape) whose brightness depends on the class, and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 80, (n, *shape)) + 80 * y.reshape((n,) + (1,) * len(shape))
    return x.astype(np.uint8), y


# ---- the layout ------------------------------------------------------------------------------------------------
def test_rows_and_images_are_the_data_layout_and_differentiable():
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 3)).astype(np.float32)  # (N, H, W, C) as the data
    rows = tinygen.tensor(x.reshape(2, -1), requires_grad=True)
    images = rows_to_images(rows, (3, 4, 8))
    np.testing.assert_array_equal(images.detach().numpy(), x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(images_to_rows(images).detach().numpy(), x.reshape(2, -1))
    weights = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)  # the gradient is the channel index
    (images * tinygen.tensor(weights)).sum().backward()
    np.testing.assert_array_equal(rows.grad.detach().numpy().reshape(2, 4, 8, 3),
                                  np.broadcast_to([0.0, 1.0, 2.0], x.shape))
    grey = np.random.default_rng(1).standard_normal((2, 12, 8)).astype(np.float32)
    np.testing.assert_array_equal(rows_to_images(tinygen.tensor(grey.reshape(2, -1)), (1, 12, 8)).detach().numpy(),
                                  grey[:, None])


def _one_constant_channel(conv, channel, value):
    """Zero ``conv``'s weights into output ``channel`` and set its bias: that channel of its output is ``value``."""
    w = conv.weight.data.copy()
    w[:, channel] = 0.0  # ConvTranspose2d weights are (in, out, kh, kw)
    b = conv.bias.data.copy()
    b[channel] = value
    conv.weight.data[...] = w
    conv.bias.data[...] = b


def test_generated_rows_map_to_the_data_with_the_models_channels():
    x, _ = _images((8, 12, 3))
    scaling = from_arrays(x).scaling((-1.0, 1.0))
    G = gan.FlatDCGANGenerator(8, 4, image_shape=(3, 8, 12)).eval()
    _one_constant_channel(G.net[6], 1, 0.5)  # the last ConvTranspose2d, before tanh
    tinygen.manual_seed(0)
    z = tinygen.randn(5, 8)
    images = DCGANGenerator.forward(G, z).detach().numpy()  # (N, C, H, W)
    data = scaling.to_data(G(z).detach().numpy())  # (N, H, W, C) in pixel units
    assert data.shape == (5, 8, 12, 3)
    np.testing.assert_allclose(data, (images.transpose(0, 2, 3, 1) + 1.0) * 127.5, rtol=1e-5, atol=1e-3)
    assert np.ptp(data[..., 1]) < 1e-3 and np.ptp(data[..., 0]) > 0.05 and np.ptp(data[..., 2]) > 0.05
    np.testing.assert_allclose(data[..., 1], (np.tanh(0.5) + 1.0) * 127.5, rtol=1e-5)


def test_vae_decoder_and_encoder_channels_follow_the_data():
    x, _ = _images((8, 8, 3))
    scaling = from_arrays(x).scaling((0.0, 1.0))
    model = vae.VAE(latent=4, hidden=[16], arch="conv", data_dim=192, image_shape=(3, 8, 8)).eval()
    _one_constant_channel(model.decoder_conv[3], 2, 0.0)  # mean sigmoid(0) = 0.5 in channel 2
    data = scaling.to_data(model.mean(tinygen.randn(6, 4)).detach().numpy())
    assert data.shape == (6, 8, 8, 3)
    np.testing.assert_allclose(data[..., 2], 127.5, rtol=1e-5)
    assert np.ptp(data[..., 0]) > 0.01 and np.ptp(data[..., 1]) > 0.01
    # the encoder reads channel c of the data as its input channel c: with channel 0's weights zeroed, changing
    # channel 0 of the rows leaves mu as it was, changing channel 1 does not
    w = model.encoder_conv[0].weight.data.copy()
    w[:, 0] = 0.0  # Conv2d weights are (out, in, kh, kw)
    model.encoder_conv[0].weight.data[...] = w
    rows = scaling.to_model(x[:4])
    moved = [scaling.to_model(np.where(np.arange(3) == c, 255 - x[:4], x[:4])) for c in (0, 1)]
    mu = [model.encode(tinygen.tensor(r))[0].detach().numpy() for r in (rows, *moved)]
    np.testing.assert_array_equal(mu[0], mu[1])
    assert np.abs(mu[0] - mu[2]).max() > 1e-4


def test_discriminator_reads_rows_in_the_datas_channel_order():
    D = DCGANDiscriminator(4, image_shape=(3, 8, 4)).eval()
    w = D.net[0].weight.data.copy()
    w[:, 1:] = 0.0  # only the first channel is read
    D.net[0].weight.data[...] = w
    x = np.random.default_rng(2).standard_normal((3, 8, 4, 3)).astype(np.float32)
    other = x.copy()
    other[..., 1:] = 0.0
    logits = [D(tinygen.tensor(a.reshape(3, -1))).detach().numpy() for a in (x, other)]
    np.testing.assert_array_equal(logits[0], logits[1])
    np.testing.assert_array_equal(logits[0], D(tinygen.tensor(x.transpose(0, 3, 1, 2).copy())).detach().numpy())


# ---- MNIST's models as before ------------------------------------------------------------------------------------
MNIST_STATE_SHAPES = {  # DCGANGenerator(100, 64, 10), DCGANDiscriminator(64, 10), VAE(arch="conv", conditional)
    "G": {"label_emb.weight": (10, 10), "net.0.weight": (110, 128, 7, 7), "net.1.weight": (128,),
          "net.1.bias": (128,), "net.1.running_mean": (128,), "net.1.running_var": (128,),
          "net.1.num_batches_tracked": (), "net.3.weight": (128, 64, 4, 4), "net.4.weight": (64,),
          "net.4.bias": (64,), "net.4.running_mean": (64,), "net.4.running_var": (64,),
          "net.4.num_batches_tracked": (), "net.6.weight": (64, 1, 4, 4), "net.6.bias": (1,)},
    "D": {"label_emb.weight": (10, 784), "net.0.weight": (64, 2, 4, 4), "net.0.bias": (64,),
          "net.2.weight": (128, 64, 4, 4), "net.3.weight": (128,), "net.3.bias": (128,),
          "net.3.running_mean": (128,), "net.3.running_var": (128,), "net.3.num_batches_tracked": (),
          "net.5.weight": (1, 128, 7, 7), "net.5.bias": (1,)},
    "VAE": {"encoder_conv.0.weight": (32, 1, 4, 4), "encoder_conv.0.bias": (32,),
            "encoder_conv.2.weight": (64, 32, 4, 4), "encoder_conv.2.bias": (64,),
            "decoder_conv.1.weight": (64, 32, 4, 4), "decoder_conv.1.bias": (32,),
            "decoder_conv.3.weight": (32, 1, 4, 4), "decoder_conv.3.bias": (1,), "encoder.0.weight": (400, 3146),
            "encoder.0.bias": (400,), "fc_mu.weight": (20, 400), "fc_mu.bias": (20,), "fc_logvar.weight": (20, 400),
            "fc_logvar.bias": (20,), "decoder.0.weight": (400, 30), "decoder.0.bias": (400,),
            "fc_out.weight": (3136, 400), "fc_out.bias": (3136,)},
}


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_the_mnist_default_has_the_state_dict_it_had():
    models = {"G": DCGANGenerator(100, 64, 10), "D": DCGANDiscriminator(64, 10),
              "VAE": vae.VAE(arch="conv", conditional=True)}
    for name, model in models.items():
        assert _shapes(model) == MNIST_STATE_SHAPES[name], name
        assert list(model.state_dict()) == list(MNIST_STATE_SHAPES[name]), name  # and in the same order
    assert _shapes(DCGANGenerator(100, 64, 10, image_shape=[1, 28, 28])) == MNIST_STATE_SHAPES["G"]


def test_checkpoints_saved_before_image_shape_rebuild_the_28x28_models():
    cfg = gan.make_config(arch="dcgan", ngf=4, conditional=False)
    G = gan.build_generator(cfg)
    old = {k: v for k, v in cfg.items() if k != "image_shape"}
    G2, cfg2 = gan.generator_from_checkpoint({"model": "gan", "config": old, "modules": {"generator": G.state_dict()}})
    assert cfg2["image_shape"] == [1, 28, 28] and G2.image_shape == (1, 28, 28)
    vcfg = vae.make_config(arch="conv", hidden=[16])
    model = vae.build_model(vcfg)
    old = {k: v for k, v in vcfg.items() if k != "image_shape"}
    rebuilt = vae.model_from_checkpoint({"model": "vae", "config": old, "modules": {"model": model.state_dict()}})
    assert rebuilt.image_shape == (1, 28, 28) and _shapes(rebuilt) == _shapes(model)


# ---- runs on own images, then sample and eval ------------------------------------------------------------------
CASES = {  # (image shape in the data, given as, conditional)
    "grey-12x8-arrays-conditional": ((12, 8), "arrays", True),
    "grey-12x8-png": ((12, 8), "png", False),
    "rgb-8x8-arrays": ((8, 8, 3), "arrays", False),
    "rgb-8x8-png-conditional": ((8, 8, 3), "png", True),
}


def _train(model, shape, form, conditional, tmp_path):
    """A short run of the convolutional ``model`` on images of ``shape``; returns its folder."""
    out = tmp_path / model
    flags = ["--conditional"] if conditional else (["--no-conditional"] if model == "gan" else [])
    if form == "png":
        data, _ = _png_folder(tmp_path / "pics", classes=3, per_class=12, size=shape[:2], rgb=len(shape) == 3)
    else:
        x, y = _images(shape)
        data = tmp_path / "images.npz"
        np.savez(data, x=x, y=y)
    if model == "gan":
        _cli("train", "gan", "--data", data, "--arch", "dcgan", *TINY_GAN, *flags, "--quiet", "--threads", 1,
             "--out", out)
    else:
        _cli("train", "vae", "--data", data, "--arch", "conv", *TINY_VAE, *flags, "--quiet", "--threads", 1,
             "--out", out)
    return out


@pytest.mark.parametrize("model", ["gan", "vae"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv_run_on_own_images_then_sample_and_eval(model, case, tmp_path, capsys):
    pytest.importorskip("PIL.Image")  # PNG folders are read with pillow (the images extra)
    shape, form, conditional = CASES[case]
    out = _train(model, shape, form, conditional, tmp_path)
    ckpt = tinygen.load(out / "checkpoint.npz")
    channels = shape[2] if len(shape) == 3 else 1
    assert ckpt["config"]["image_shape"] == [channels, *shape[:2]]
    _cli("sample", out / "checkpoint.npz", "--n", 6, "--out", tmp_path / "s.npy")
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (6, *shape) and s.min() >= 0 and s.max() <= 255 and s.max() > 1  # pixel units
    _cli("sample", out / "checkpoint.npz", "--n", 6, "--out", tmp_path / "s.png")
    (width, height), mode = _png_size(tmp_path / "s.png")
    columns = 3 if conditional else 6  # a conditional model's grid has one class a column
    assert mode == ("RGB" if channels == 3 else "L")
    assert (width, height) == (columns * (shape[1] + 2) + 2, (6 // columns) * (shape[0] + 2) + 2)
    capsys.readouterr()
    _cli("eval", out / "checkpoint.npz", "--json", *(["--n", 20] if model == "gan" else ["--iwae-k", 2]))
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(metrics["frechet_distance" if model == "gan" else "test_loss"])


def test_colour_runs_compiled_are_bitwise_the_eager_runs(tmp_path, compiled):
    x, y = _images((8, 4, 3), n=24)
    runs = {"gan": lambda **kw: gan.train_gan(train_set=(x, y), arch="dcgan", conditional=True, steps=3, batch_size=8,
                                              latent=4, ngf=4, ndf=4, eval_samples=16, **kw),
            "vae": lambda **kw: vae.train_vae(train_set=(x, y), arch="conv", conditional=True, epochs=1, batch_size=8,
                                              latent=3, hidden=[16], **kw)}
    for name, train in runs.items():
        train(out=tmp_path / f"{name}-eager", compile=False, quiet=True, pictures=False)
        train(out=tmp_path / f"{name}-compiled", quiet=True, pictures=False)
        _same_runs(tmp_path / f"{name}-eager", tmp_path / f"{name}-compiled")
        assert sum(f.replays for f in _programs(compiled)) > 0, name  # the compiled steps were replayed
        compiled.clear()


# ---- refused -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(10, 8), (8, 6, 3)])
def test_images_whose_sides_are_not_divisible_by_4_are_refused(shape):
    x, _ = _images(shape, n=8)
    rule = r"needs images whose height and width are divisible by 4 .*images of shape " + \
        r"\(" + r", ".join(map(str, shape)) + r"\) \(H, W\[, C\]\)"
    with pytest.raises(ValueError, match="arch 'dcgan' " + rule):
        gan.train_gan(train_set=x, arch="dcgan", steps=1)
    with pytest.raises(ValueError, match="arch 'conv' " + rule):
        vae.train_vae(train_set=x, arch="conv", epochs=1)


def test_vectors_and_bad_image_shapes_are_refused():
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(ValueError, match=r"arch 'dcgan' is a convolutional network for images; arrays given in "
                                         r"Python holds vectors of shape \(16,\): use arch 'mlp'"):
        gan.train_gan(train_set=x, arch="dcgan", steps=1)
    with pytest.raises(ValueError, match=r"arch 'conv' is a convolutional network for images; .*vectors"):
        vae.train_vae(train_set=x, arch="conv", epochs=1)
    with pytest.raises(ValueError, match=r"DCGANGenerator: image_shape \(C, H, W\) = \(1, 6, 8\): H and W must be "
                                         r"divisible by 4"):
        DCGANGenerator(image_shape=(1, 6, 8))
    with pytest.raises(ValueError, match=r"DCGANDiscriminator: image_shape must be three positive integers"):
        DCGANDiscriminator(image_shape=(28, 28))
    with pytest.raises(ValueError, match=r"VAE: image_shape \(C, H, W\) = \(3, 8, 10\)"):
        vae.VAE(arch="conv", data_dim=240, image_shape=(3, 8, 10))
    with pytest.raises(ValueError, match=r"MNIST images have shape \(C, H, W\) = \(1, 28, 28\); image_shape must"):
        gan.make_config(arch="dcgan", image_shape=[3, 8, 8])
    with pytest.raises(ValueError, match=r"image_shape=\[3, 8, 8\] does not fit the data .* needs "
                                         r"image_shape=\[1, 12, 8\]"):
        gan.train_gan(train_set=_images((12, 8), n=8)[0], arch="dcgan", image_shape=[3, 8, 8], steps=1)
    with pytest.raises(ValueError, match=r"DCGANDiscriminator: x must have shape \(N, 3, 8, 4\) or \(N, 96\)"):
        DCGANDiscriminator(4, image_shape=(3, 8, 4))(tinygen.zeros(2, 1, 8, 4))
