"""The image applications: inpainting by latent search (VAE and GAN) and super-resolution (resampling against
Pillow, PSNR, the conditional model end to end), through Python and the command line, and their errors."""
import contextlib
import io
import json
import math
import struct

import numpy as np
import pytest

import tinygen
from tinygen.apps import inpaint as ip
from tinygen.apps import superres as sr
from tinygen.cli import main as cli_main
from tinygen.data import mnist
from tinygen.models import gan, vae
from tinygen.utils.image import PNG_SIGNATURE


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv)
        except SystemExit as e:  # argparse's usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist("test")  # the bundled split; small subsets keep the tests fast
    return images[:512], labels[:512]


@pytest.fixture(scope="module")
def vae_checkpoint(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    vae.train_vae(out=out, epochs=2, batch_size=64, latent=4, hidden=[64], train_set=digits,
                  test_set=(digits[0][:64], digits[1][:64]), quiet=True, pictures=False)
    return out / "checkpoint.npz"


@pytest.fixture(scope="module", params=["mlp", "dcgan"])
def cgan_checkpoint(digits, tmp_path_factory, request):
    out = tmp_path_factory.mktemp("cgan") / "run"
    nets = dict(g_hidden=[32], d_hidden=[32]) if request.param == "mlp" else dict(ngf=4, ndf=4, d_fc=8)
    gan.train_gan(out=out, quiet=True, train_set=digits, epochs=1, conditional=True, arch=request.param, latent=8,
                  batch_size=64, eval_samples=64, log_every=4, pictures=False, **nets)
    return out / "checkpoint.npz"


def _unit(images):
    return (np.asarray(images, dtype=np.float32) / 255).reshape(len(images), 784)


# ---- masks and scores ------------------------------------------------------------------------------------------------
def test_masks_hide_the_named_region():
    assert ip.make_masks("center", 3).sum(1).tolist() == [196] * 3
    centre = ip.make_masks("center", 1)[0].reshape(28, 28)
    assert centre[7:21, 7:21].all() and centre.sum() == 196
    for name, rows, cols in (("left", slice(None), slice(0, 14)), ("right", slice(None), slice(14, None)),
                             ("top", slice(0, 14), slice(None)), ("bottom", slice(14, None), slice(None))):
        m = ip.make_masks(name, 2).reshape(2, 28, 28)
        assert m[:, rows, cols].all() and m.sum() == 2 * 392, name
    r = ip.make_masks("random", 50, seed=3)
    assert abs(r.mean() - ip.RANDOM_HIDDEN) < 0.02 and not np.array_equal(r[0], r[1])
    assert np.array_equal(r, ip.make_masks("random", 50, seed=3))


def test_bad_mask_name_and_count():
    with pytest.raises(ValueError, match=r"make_masks: unknown mask 'middle'; expected one of center, left"):
        ip.make_masks("middle", 2)
    with pytest.raises(ValueError, match="make_masks: n must be an integer >= 1, got 0"):
        ip.make_masks("center", 0)


def test_masked_errors_and_mean_fill_by_hand():
    truth = np.zeros((2, 784), np.float32)
    est = truth.copy()
    hidden = np.zeros((2, 784), bool)
    hidden[0, :2] = hidden[1, 5] = True
    est[0, :2] = [0.5, -0.25]
    est[1, 5] = 1.0
    est[1, 6] = 9.0  # a visible pixel: not scored
    e = ip.masked_errors(est, truth, hidden)
    assert math.isclose(e["mse"], (0.25 + 0.0625 + 1.0) / 3) and math.isclose(e["mae"], (0.5 + 0.25 + 1.0) / 3)
    mean = np.full(784, 0.3, np.float32)
    filled = ip.mean_fill(est, hidden, mean)
    assert np.array_equal(filled[~hidden], est[~hidden]) and np.allclose(filled[hidden], 0.3)
    with pytest.raises(ValueError, match="hides no pixel"):
        ip.masked_errors(est, truth, np.zeros_like(hidden))


# ---- inpainting ------------------------------------------------------------------------------------------------------
def test_vae_search_lowers_its_objective_and_keeps_visible_pixels(vae_checkpoint, digits):
    prior = ip.prior_for(tinygen.load(vae_checkpoint))
    x = _unit(digits[0][:16])
    hidden = ip.make_masks("bottom", 16)
    mean = _unit(digits[0]).mean(0)
    out = ip.inpaint(prior, x, hidden, mean, restarts=2, steps=40, lr=0.05)
    assert out["filled"].shape == (16, 784) and out["labels"] is None
    assert np.array_equal(out["filled"][~hidden], x[~hidden])  # visible pixels exactly as given
    assert (out["filled"] >= 0).all() and (out["filled"] <= 1).all()
    assert out["history"][-1] < 0.9 * out["history"][0]
    assert len(out["history"]) == 41
    # the same seed, the same fill
    again = ip.inpaint(prior, x, hidden, mean, restarts=2, steps=40, lr=0.05)
    assert np.array_equal(out["filled"], again["filled"])


def test_search_latents_minimises_each_row(vae_checkpoint, digits):
    prior = ip.prior_for(tinygen.load(vae_checkpoint))
    x = _unit(digits[0][:6])
    visible = (~ip.make_masks("center", 6)).astype(np.float32)
    z0 = np.random.default_rng(0).standard_normal((6, prior.latent)).astype(np.float32)
    xt, vt = tinygen.as_tensor(x), tinygen.as_tensor(visible)
    with tinygen.no_grad():
        start = (prior.data_term(tinygen.as_tensor(z0), None, xt, vt) + (tinygen.as_tensor(z0) ** 2).sum(1) * 0.5)
    z, energy, _ = ip.search_latents(prior, xt, vt, None, z0, steps=60, lr=0.05)
    assert z.shape == z0.shape and (energy < start.numpy()).all()


def test_conditional_gan_label_search_and_true_labels(cgan_checkpoint, digits):
    prior = ip.prior_for(tinygen.load(cgan_checkpoint))
    assert prior.num_classes == 10
    x, y = _unit(digits[0][:5]), digits[1][:5]
    hidden = ip.make_masks("random", 5, seed=1)
    mean = _unit(digits[0]).mean(0)
    searched = ip.inpaint(prior, x, hidden, mean, y, "search", restarts=2, steps=10)
    assert searched["labels"].shape == (5,) and ((searched["labels"] >= 0) & (searched["labels"] < 10)).all()
    assert np.array_equal(searched["filled"][~hidden], x[~hidden])
    given = ip.inpaint(prior, x, hidden, mean, y, "true", restarts=2, steps=10)
    assert np.array_equal(given["labels"], y)
    assert given["history"][-1] < given["history"][0]
    with pytest.raises(ValueError, match=r"inpaint: expected digits and masks of shape \(n, 784\)"):
        ip.inpaint(prior, x[:, :100], hidden, mean)
    with pytest.raises(ValueError, match="label_mode 'true' needs the digits' labels"):
        ip.inpaint(prior, x, hidden, mean, None, "true")


def test_conditional_vae_and_unconditional_gan(digits, tmp_path):
    x, y = _unit(digits[0][:4]), digits[1][:4]
    hidden = ip.make_masks("top", 4)
    mean = _unit(digits[0]).mean(0)
    vae.train_vae(out=tmp_path / "cvae", epochs=1, batch_size=64, latent=4, hidden=[32], conditional=True,
                  train_set=digits, test_set=(digits[0][:64], digits[1][:64]), quiet=True, pictures=False)
    gan.train_gan(out=tmp_path / "gan", quiet=True, train_set=digits, epochs=1, conditional=False, latent=8,
                  arch="mlp", g_hidden=[32], d_hidden=[32], batch_size=64, eval_samples=64, log_every=4, pictures=False)
    cvae = ip.prior_for(tinygen.load(tmp_path / "cvae" / "checkpoint.npz"))
    plain = ip.prior_for(tinygen.load(tmp_path / "gan" / "checkpoint.npz"))
    assert cvae.num_classes == 10 and plain.num_classes == 0
    for prior, mode in ((cvae, "search"), (cvae, "true"), (plain, "search")):
        out = ip.inpaint(prior, x, hidden, mean, y, mode, restarts=2, steps=15)
        assert np.array_equal(out["filled"][~hidden], x[~hidden])
        assert out["history"][-1] < out["history"][0]
        assert (out["labels"] is None) == (prior is plain)
        if mode == "true":
            assert np.array_equal(out["labels"], y)


def test_inpaint_command_writes_the_picture_and_the_numbers(vae_checkpoint, tmp_path):
    pic = tmp_path / "grid.png"
    rc, out, err = _run(["app", "inpaint", str(vae_checkpoint), "--mask", "center", "--n", "20", "--steps", "30",
                         "--restarts", "2", "--show", "6", "--out", str(pic), "--threads", "1", "--json"])
    assert rc == 0, err
    r = json.loads(out)
    assert r["digits"] == 20 and r["hidden_pixels_per_digit"] == 196 and r["labels"] is None
    assert set(r["mse"]) == {"mean_fill", "vae"} and all(0 < v < 1 for v in r["mse"].values())
    assert r["objective_last"] < r["objective_first_step"]
    assert _png_size(pic) == (6 * 30 + 2, 4 * 30 + 2)  # 6 digits, rows original / masked / mean fill / model
    rc, out, _ = _run(["app", "inpaint", str(vae_checkpoint), "--mask", "left", "--n", "4", "--steps", "5",
                       "--restarts", "1", "--out", str(tmp_path / "b.png")])
    assert rc == 0 and "mean fill" in out and "vae" in out and "392 of 784 pixels hidden" in out


def test_inpaint_command_errors(vae_checkpoint, tmp_path):
    rc, _, err = _run(["app", "inpaint", str(vae_checkpoint), "--mask", "middle"])
    assert rc == 2 and "invalid choice: 'middle'" in err
    rc, _, err = _run(["app", "inpaint", str(tmp_path / "none.npz"), "--mask", "center"])
    assert rc == 2 and "inpaint: no checkpoint file" in err
    rc, _, err = _run(["app", "inpaint", str(vae_checkpoint), "--mask", "center", "--out", str(tmp_path / "g.jpg")])
    assert rc == 2 and "--out" in err and "name it *.png" in err
    rc, _, err = _run(["app", "inpaint", str(vae_checkpoint), "--mask", "center", "--n", "0"])
    assert rc == 2 and "--n must be an integer >= 1, got 0" in err
    other = tmp_path / "sr" / "checkpoint.npz"
    sr.train_superres(out=other.parent, epochs=1, n_train=32, batch_size=32, channels=2, quiet=True,
                      train_set=mnist("test").images[:32], test_set=mnist("test").images[:8])
    rc, _, err = _run(["app", "inpaint", str(other), "--mask", "center"])
    assert rc == 2 and "holds a 'superres' model; expected a checkpoint of vae or gan" in err


def test_inpaint_refuses_a_gan_trained_on_points(tmp_path):
    out = tmp_path / "ring"
    gan.train_gan(out=out, quiet=True, dataset="ring", steps=2, latent=2, g_hidden=[8], d_hidden=[8], batch_size=32,
                  toy_samples=256, eval_samples=100, log_every=1, pictures=False)
    rc, _, err = _run(["app", "inpaint", str(out / "checkpoint.npz"), "--mask", "center"])
    assert rc == 2 and "trained on ring data (2 values per sample); inpainting works on 28x28" in err


# ---- resampling and PSNR ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sr.METHODS)
@pytest.mark.parametrize("shape,size", [((14, 14), (28, 28)), ((28, 28), (14, 14)), ((14, 9), (20, 31))])
def test_resize_matches_pillow(method, shape, size):
    Image = pytest.importorskip("PIL.Image")
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[method]
    ref = np.asarray(Image.fromarray(x, mode="F").resize(size[::-1], resample), dtype=np.float32)
    got = sr.resize(x, size, method)
    assert got.shape == ref.shape == size
    np.testing.assert_allclose(got, ref, atol=2e-6)


@pytest.mark.parametrize("method", sr.METHODS)
def test_resize_keeps_constants_and_bicubic_bilinear_keep_ramps(method):
    const = np.full((3, 14, 14), 0.37)
    np.testing.assert_allclose(sr.resize(const, 28, method), 0.37, atol=1e-12)
    if method == "nearest":
        assert np.array_equal(sr.resize(np.arange(4.0).reshape(2, 2), 4, method),
                              np.repeat(np.repeat(np.arange(4.0).reshape(2, 2), 2, 0), 2, 1))
        return
    # a linear ramp sampled at pixel centres is reproduced exactly away from the border (where the kernel's
    # window is clipped): Keys' cubic and the triangle both reproduce linear functions
    i, j = np.meshgrid(np.arange(14) + 0.5, np.arange(14) + 0.5, indexing="ij")
    low = 0.2 * i - 0.1 * j
    I, J = np.meshgrid((np.arange(28) + 0.5) / 2, (np.arange(28) + 0.5) / 2, indexing="ij")
    high = sr.resize(low, 28, method)
    np.testing.assert_allclose(high[4:-4, 4:-4], (0.2 * I - 0.1 * J)[4:-4, 4:-4], atol=1e-12)


def test_downsample_is_2x2_average():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.array_equal(sr.downsample(x), [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="downsample: images must be"):
        sr.downsample(np.zeros((3, 5)))


def test_psnr_by_hand():
    truth = np.zeros((2, 2, 2))
    est = truth.copy()
    est[0] = [[0.1, 0.0], [0.0, 0.3]]  # MSE (0.01 + 0.09) / 4 = 0.025
    p = sr.psnr(est, truth)
    assert math.isclose(p[0], 10 * math.log10(1 / 0.025)) and p[1] == math.inf
    assert math.isclose(sr.psnr(est * 255, truth, peak=255.0)[0], p[0])
    with pytest.raises(ValueError, match="psnr: estimate and truth differ in shape"):
        sr.psnr(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="resize: unknown method 'lanczos'"):
        sr.resize(truth, 4, "lanczos")


# ---- the super-resolution model --------------------------------------------------------------------------------------
def test_untrained_model_is_bicubic(digits):
    tinygen.manual_seed(0)
    model = sr.SuperResolver(4)
    x = _unit(digits[0][:20]).reshape(20, 28, 28)
    low = sr.downsample(x)
    np.testing.assert_allclose(sr.upscale(model, low), np.clip(sr.resize(low, 28, "bicubic"), 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"SuperResolver: expected low-resolution digits of shape \(N, 14, 14\)"):
        model(tinygen.as_tensor(x))


def test_training_improves_on_bicubic(digits):
    model, history = sr.train_superres(epochs=3, n_train=256, batch_size=32, channels=4, lr=2e-3, quiet=True,
                                       train_set=digits[0], test_set=digits[0][:128])
    assert history[-1]["train_mse"] < history[0]["train_mse"]
    assert history[-1]["test_psnr"] > history[-1]["test_psnr_bicubic"]


def test_superres_train_and_eval_commands(tmp_path):
    run = tmp_path / "sr"
    rc, out, err = _run(["app", "superres", "--threads", "1", "train", "--out", str(run), "--epochs", "1",
                         "--n-train", "64", "--batch-size", "32", "--channels", "4"])
    assert rc == 0, err
    assert "epoch 1/1" in out and (run / "checkpoint.npz").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    pic = tmp_path / "sr.png"
    rc, out, err = _run(["app", "superres", "eval", str(run / "checkpoint.npz"), "--n", "50", "--show", "5",
                         "--out", str(pic), "--json", "--threads", "1"])
    assert rc == 0, err
    r = json.loads(out)
    assert r["digits"] == 50 and set(r) >= {"psnr_nearest", "psnr_bilinear", "psnr_bicubic", "psnr_model"}
    assert math.isclose(r["gain_over_bicubic"], r["psnr_model"] - r["psnr_bicubic"])
    assert r["psnr_nearest"] < r["psnr_bicubic"]
    assert _png_size(pic) == (5 * 30 + 2, 4 * 30 + 2)
    # the folder holds a run now: refused rather than overwritten
    rc, _, err = _run(["app", "superres", "train", "--out", str(run), "--epochs", "1"])
    assert rc == 2 and "already holds a run" in err


def test_superres_errors(vae_checkpoint, tmp_path):
    rc, _, err = _run(["app", "superres", "eval", str(vae_checkpoint)])
    assert rc == 2 and "holds a 'vae' model; expected a checkpoint of superres" in err
    rc, _, err = _run(["app", "superres", "train", "--out", str(tmp_path / "x"), "--epochs", "0"])
    assert rc == 2 and "--epochs must be an integer >= 1, got 0" in err
    rc, _, err = _run(["app", "superres"])
    assert rc == 2 and "required: action" in err
    with pytest.raises(ValueError, match=r"superres: unknown setting\(s\) \['width'\]"):
        sr.make_config(width=3)


def test_apps_run_on_the_device(device, vae_checkpoint, digits):
    """The same fill and upscaling on "cuda" (a GPU, or the CPU stand-in for CuPy) as on the CPU."""
    x = _unit(digits[0][:6])
    hidden = ip.make_masks("top", 6)
    mean = _unit(digits[0]).mean(0)
    fills = [ip.inpaint(ip.prior_for(tinygen.load(vae_checkpoint), device=d), x, hidden, mean, restarts=2,
                        steps=10)["filled"] for d in ("cpu", device)]
    np.testing.assert_allclose(fills[1], fills[0], atol=1e-4)
    tinygen.manual_seed(0)
    model = sr.SuperResolver(4)
    tinygen.nn.init.normal_(model.features[-1].weight, std=0.1)  # a nonzero correction: compare the network too
    low = sr.downsample(x.reshape(6, 28, 28))
    on_cpu = sr.upscale(model, low)
    np.testing.assert_allclose(sr.upscale(model.to(device), low, device=device), on_cpu, atol=1e-5)
