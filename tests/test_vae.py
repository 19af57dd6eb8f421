"""The VAE: ELBO pieces against closed forms, the IWAE bound, training, exact resume, pictures, CLI and errors."""
import argparse
import math

import numpy as np
import pytest

import tinygen
from tinygen.data import mnist
from tinygen.models import vae
from tinygen.models.train_utils import read_metrics
from tinygen.utils.image import PNG_SIGNATURE


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist("test")  # the bundled split; small subsets keep the tests fast
    return (images[:600], labels[:600]), (images[600:800], labels[600:800])


def small(**kw):
    tinygen.manual_seed(0)
    return vae.VAE(latent=kw.pop("latent", 3), hidden=kw.pop("hidden", [16]), **kw)


def set_constant_decoder(model, logits):
    """Make the decoder ignore z: output = fc_out.bias = ``logits`` for every sample."""
    model.fc_out.weight.data[...] = 0
    model.fc_out.bias.data[...] = np.asarray(logits, dtype=np.float32)


def set_constant_encoder(model, mu, logvar):
    for layer, value in ((model.fc_mu, mu), (model.fc_logvar, logvar)):
        layer.weight.data[...] = 0
        layer.bias.data[...] = np.asarray(value, dtype=np.float32)


# ---- ELBO pieces -----------------------------------------------------------------------------------------------------
def test_kl_term_matches_the_closed_form_for_known_mu_and_logvar():
    model = small()
    mu, logvar = np.array([1.0, -2.0, 0.5]), np.array([0.0, math.log(4.0), -1.0])
    set_constant_encoder(model, mu, logvar)
    x = tinygen.rand(5, 784)
    _, kl = vae.elbo_terms(model, x)
    per_sample = 0.5 * np.sum(np.exp(logvar) + mu ** 2 - 1 - logvar)
    assert kl.item() == pytest.approx(5 * per_sample, rel=1e-5)


def test_kl_term_matches_the_encoder_outputs_in_general():
    model = small()
    x = tinygen.rand(4, 784)
    mu, logvar = (t.detach().numpy().astype(np.float64) for t in model.encode(x))
    _, kl = vae.elbo_terms(model, x)
    assert kl.item() == pytest.approx(0.5 * np.sum(np.exp(logvar) + mu ** 2 - 1 - logvar), rel=1e-5)


def test_bernoulli_reconstruction_is_bce_with_logits_summed_over_pixels():
    model = small()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=784) * 3
    set_constant_decoder(model, logits)
    x = rng.random((3, 784)).astype(np.float32)  # grey levels, as PyTorch's example
    recon, _ = vae.elbo_terms(model, tinygen.tensor(x))
    p = 1 / (1 + np.exp(-logits))
    expected = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
    assert recon.item() == pytest.approx(expected, rel=1e-5)
    per = model.recon_nll(model.decode(tinygen.randn(3, 3)), tinygen.tensor(x), reduction="none")
    assert per.shape == (3,) and per.detach().numpy().sum() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("var", [0.05, "learned"])
def test_gaussian_reconstruction_is_the_gaussian_nll(var):
    model = small(decoder="gaussian", decoder_var=var)
    rng = np.random.default_rng(1)
    out = rng.normal(size=784)
    set_constant_decoder(model, out)
    if var == "learned":
        model.out_logvar.data[...] = math.log(0.2)
    v = 0.05 if var != "learned" else 0.2
    x = rng.random((2, 784)).astype(np.float32)
    recon, _ = vae.elbo_terms(model, tinygen.tensor(x))
    m = 1 / (1 + np.exp(-out))
    expected = 0.5 * np.sum((x - m) ** 2 / v + math.log(v) + math.log(2 * math.pi))
    assert recon.item() == pytest.approx(expected, rel=1e-5)


def test_learned_decoder_variance_gets_a_gradient():
    model = small(decoder="gaussian")
    recon, kl = vae.elbo_terms(model, tinygen.rand(4, 784))
    (recon + kl).backward()
    assert model.out_logvar.grad is not None and model.out_logvar.grad.shape == ()


def test_beta_warmup_rises_linearly_then_stays():
    assert vae.beta_at(0, 10, 2.0, 0) == 2.0
    assert vae.beta_at(4, 10, 1.0, 1) == pytest.approx(0.5)
    assert vae.beta_at(9, 10, 1.0, 2) == pytest.approx(0.5)
    assert vae.beta_at(19, 10, 1.0, 2) == pytest.approx(1.0)
    assert vae.beta_at(500, 10, 0.5, 2) == pytest.approx(0.5)


def test_conditional_vae_uses_the_label(digits):
    for kind in ("onehot", "embedding"):
        model = small(conditional=True, label_embedding=kind, label_dim=4)
        x = tinygen.tensor(digits[0][0][:6].reshape(6, 784) / 255.0, dtype=tinygen.float32)
        mu0, _ = model.encode(x, tinygen.tensor([0] * 6))
        mu1, _ = model.encode(x, tinygen.tensor([1] * 6))
        assert not np.allclose(mu0.detach().numpy(), mu1.detach().numpy())
        with pytest.raises(ValueError, match="labels"):
            model.encode(x)


# ---- the IWAE bound --------------------------------------------------------------------------------------------------
def test_iwae_recovers_log_px_exactly_when_the_decoder_ignores_z():
    # p(x|z) = p(x) then, and the importance weights average to the integral of p(z) = 1 as k grows
    model = small()
    rng = np.random.default_rng(2)
    logits = rng.normal(size=784)
    set_constant_decoder(model, logits)
    set_constant_encoder(model, [0.3, -0.2, 0.1], [-0.2, 0.1, 0.0])
    x = (rng.random((4, 784)) < 0.3).astype(np.float32)
    log_px = np.sum(x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits), axis=1)
    tinygen.manual_seed(0)
    bounds = vae.iwae_bound(model, x, k=4000, chunk_rows=1000)
    assert np.allclose(bounds, log_px, atol=0.02)
    kl = 0.5 * np.sum(np.exp([-0.2, 0.1, 0.0]) + np.array([0.3, -0.2, 0.1]) ** 2 - 1 - np.array([-0.2, 0.1, 0.0]))
    tinygen.manual_seed(0)
    single = vae.iwae_bound(model, x, k=1)  # one sample: an ELBO estimate, log p(x) - KL on average
    assert single.mean() < log_px.mean() and single.mean() == pytest.approx(log_px.mean() - kl, abs=0.5)


def test_fast_bernoulli_log_likelihood_matches_the_bce_loss():
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(3, 4, 784)) * 8).astype(np.float32)  # large logits: the stable form matters
    x = (rng.random((3, 784)) < 0.4).astype(np.float32)
    fast = vae._bernoulli_log_lik(logits, x)
    xr = np.repeat(x[:, None, :], 4, axis=1).reshape(12, 784)
    bce = tinygen.nn.functional.binary_cross_entropy_with_logits(
        tinygen.tensor(logits.reshape(12, 784)), tinygen.tensor(xr), reduction="none").sum(1)
    assert fast.shape == (3, 4)
    assert np.allclose(fast.reshape(12), -bce.numpy(), rtol=1e-5, atol=1e-2)


@pytest.fixture(scope="module")
def trained_small(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    model, hist = vae.train_vae(out=out, epochs=2, batch_size=50, latent=2, hidden=[32], binarize=True,
                                train_set=digits[0], test_set=digits[1], quiet=True)
    return model, hist, out


def test_iwae_is_above_the_elbo_and_tightens_with_k(trained_small, digits):
    model = trained_small[0]
    x = vae.load_data(vae.make_config(binarize=True), digits[0], digits[1])[2][:40]
    means = {}
    for k in (1, 10, 200):
        tinygen.manual_seed(1)
        means[k] = vae.iwae_bound(model, x, k=k).mean()
    tinygen.manual_seed(1)
    elbo = -vae.evaluate_elbo(model, x)["loss"]
    assert means[1] == pytest.approx(elbo, abs=3.0)  # both one-sample estimates of the same ELBO
    assert means[200] > means[10] > means[1]
    assert means[200] > elbo + 1.0


def test_iwae_chunking_keeps_the_value(trained_small, digits):
    model = trained_small[0]
    x = digits[1][0][:5].reshape(5, 784).astype(np.float32) / 255
    tinygen.manual_seed(3)
    a = vae.iwae_bound(model, x, k=300, chunk_rows=7).mean()  # one sample per image per chunk
    tinygen.manual_seed(3)
    b = vae.iwae_bound(model, x, k=300, chunk_rows=100000).mean()
    assert a == pytest.approx(b, abs=1e-4)  # the same draws, whatever the chunking
    with pytest.raises(ValueError, match="k"):
        vae.iwae_bound(model, x, k=0)


# ---- training --------------------------------------------------------------------------------------------------------
def test_loss_falls_over_a_few_steps(digits):
    model = small(hidden=[64], latent=8)
    opt = tinygen.optim.Adam(model.parameters(), lr=3e-3)
    x = tinygen.tensor(digits[0][0][:64].reshape(64, 784) / 255.0, dtype=tinygen.float32)
    losses = []
    for _ in range(15):
        recon, kl = vae.elbo_terms(model, x)
        loss = recon + kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() / 64)
    assert losses[-1] < 0.7 * losses[0]


def test_training_writes_metrics_checkpoint_and_pictures(trained_small):
    model, hist, out = trained_small
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2]
    for key in ("train_recon", "train_kl", "train_loss", "test_recon", "test_kl", "test_loss"):
        assert math.isfinite(recs[-1][key])
    assert recs[-1]["test_loss"] == pytest.approx(recs[-1]["test_recon"] + recs[-1]["test_kl"])
    assert recs[-1]["test_loss"] < recs[0]["test_loss"]
    ckpt = tinygen.serialization.load(out / "checkpoint.npz")
    assert ckpt["model"] == "vae" and ckpt["epoch"] == 2 and ckpt["config"]["latent"] == 2
    for name in ("reconstructions", "samples", "interpolations", "manifold"):  # manifold: the latent is 2-D
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(digits, tmp_path):
    kw = dict(batch_size=100, latent=4, hidden=[24], binarize=True, beta_warmup=2, train_set=digits[0],
              test_set=digits[1], quiet=True, pictures=False)
    full, hist_full = vae.train_vae(out=tmp_path / "a", epochs=3, **kw)
    vae.train_vae(out=tmp_path / "b", epochs=1, **kw)
    tinygen.randn(100)  # whatever happened in between must not matter
    resumed, hist = vae.train_vae(out=tmp_path / "b", epochs=3, resume=True, **kw)
    assert [r["epoch"] for r in hist] == [2, 3]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
    assert hist[-1]["test_loss"] == hist_full[-1]["test_loss"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3]
    with pytest.raises(ValueError, match="latent: saved 4, now 5"):
        vae.train_vae(out=tmp_path / "b", epochs=4, resume=True, **dict(kw, latent=5))


def test_training_on_the_device(device, digits):
    model, hist = vae.train_vae(epochs=1, batch_size=100, latent=2, hidden=[16], binarize=True, conditional=True,
                                device=device, train_set=(digits[0][0][:200], digits[0][1][:200]),
                                test_set=(digits[1][0][:100], digits[1][1][:100]), quiet=True)
    assert math.isfinite(hist[0]["test_loss"])
    tinygen.manual_seed(0)
    bounds = vae.iwae_bound(model, digits[1][0][:3].reshape(3, 784) / 255.0, digits[1][1][:3], k=5,
                            device=device)
    assert bounds.shape == (3,) and np.isfinite(bounds).all()


# ---- command line ----------------------------------------------------------------------------------------------------
def test_eval_and_sample_from_a_checkpoint(trained_small, tmp_path):
    _, hist, out = trained_small
    ckpt = tinygen.serialization.load(out / "checkpoint.npz")
    args = argparse.Namespace(iwae_k=20, iwae_images=10, data=None, seed=0, device="cpu", json=True)
    metrics = vae.evaluate_checkpoint(ckpt, args)
    assert metrics["epochs_trained"] == 2 and metrics["binarized"] is True
    assert metrics["test_loss"] == pytest.approx(metrics["test_recon"] + metrics["test_kl"])
    assert metrics["iwae_k"] == 20 and metrics["iwae_images"] == 10
    assert metrics["iwae_nll"] < metrics["elbo_loss_on_iwae_images"]
    s = argparse.Namespace(n=12, out=str(tmp_path / "x.npy"), seed=0, label=None, device="cpu")
    vae.sample_checkpoint(ckpt, s)
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (12, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    s.out = str(tmp_path / "grid.png")
    vae.sample_checkpoint(ckpt, s)
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_SIGNATURE


def test_command_line_arguments_map_to_settings(tmp_path):
    p = argparse.ArgumentParser()
    vae.add_arguments(p)
    args = p.parse_args(["--epochs", "3", "--latent", "2", "--hidden", "64", "32", "--binarize", "--beta", "0.5",
                         "--beta-warmup", "2", "--decoder", "gaussian", "--decoder-var", "0.1", "--conditional",
                         "--out", str(tmp_path)])
    cfg = vae.make_config(**vae._settings_from_args(args))
    assert cfg["hidden"] == [64, 32] and cfg["decoder_var"] == 0.1 and cfg["binarize"] and cfg["conditional"]
    assert cfg["beta"] == 0.5 and cfg["beta_warmup"] == 2.0 and cfg["latent"] == 2


# ---- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, message", [
    ({"epochs": -1}, "epochs must be a non-negative integer"),
    ({"decoder": "poisson"}, "unknown decoder 'poisson'"),
    ({"latent": 0}, "latent must be a positive integer"),
    ({"latent": 2.5}, "latent must be"),
    ({"hidden": [400, 0]}, "hidden"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": -1e-3}, "lr"),
    ({"beta": -1.0}, "beta"),
    ({"decoder": "gaussian", "decoder_var": "big"}, "decoder_var"),
    ({"decoder": "gaussian", "decoder_var": -0.1}, "decoder_var"),
    ({"label_embedding": "bag"}, "label_embedding"),
    ({"wings": 2}, "unknown VAE setting"),
])
def test_bad_settings_raise_clear_errors(setting, message):
    with pytest.raises(ValueError, match=message):
        vae.make_config(**setting)


def test_missing_data_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-mnist"
    with pytest.raises(FileNotFoundError, match="no-such-mnist"):
        vae.train_vae(data=str(missing), epochs=1, quiet=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train"):
        vae.train_vae(data=str(empty), epochs=1, quiet=True)


def test_the_tinygen_command_trains_evaluates_and_samples(tmp_path, capsys):
    import json
    import shutil

    from tinygen import cli
    from tinygen.data import BUNDLED_DIR
    data = tmp_path / "mnist"  # the bundled test split standing in for the training split too
    data.mkdir()
    for name in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        shutil.copy(BUNDLED_DIR / f"t10k-{name}", data / f"t10k-{name}")
        shutil.copy(BUNDLED_DIR / f"t10k-{name}", data / f"train-{name}")
    out = tmp_path / "run"
    common = ["--hidden", "16", "--latent", "2", "--batch-size", "500", "--data", str(data), "--out", str(out),
              "--quiet"]
    assert cli.main(["train", "vae", "--epochs", "1"] + common) == 0
    assert cli.main(["train", "vae", "--epochs", "2", "--resume"] + common) == 0
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    capsys.readouterr()
    assert cli.main(["eval", str(out / "checkpoint.npz"), "--iwae-k", "10", "--iwae-images", "5", "--json",
                     "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["epochs_trained"] == 2 and math.isfinite(metrics["test_loss"]) and metrics["iwae_k"] == 10
    assert cli.main(["sample", str(out / "checkpoint.npz"), "--n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_SIGNATURE
    # errors reach the user as one line naming the problem, exit status 2
    assert cli.main(["train", "vae", "--epochs", "1", "--data", str(tmp_path / "nowhere"), "--out",
                     str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli.main(["train", "vae", "--epochs", "1"] + common) == 2  # the run exists: --resume or a new --out
    assert "--resume" in capsys.readouterr().err
