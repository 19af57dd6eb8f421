"""The training remedies on both trainers (tinygen/models/remedies.py): optimizer choice, weight decay, dropout,
augmentation, --init by layer name, gradient clipping; from the command line and the Python API, each changing
training, each resuming bitwise; the article preset as written (ReLU, minimax, its sizes); and clear errors."""
import contextlib
import io

import numpy as np
import pytest
from conftest import requires_torch

import tinygen
from tinygen import cli, nn
from tinygen.data import DataLoader, mnist
from tinygen.models import gan, remedies, vae
from tinygen.models.gan import trainer as T

TINY_GAN = dict(arch="mlp", latent=8, g_hidden=[32], d_hidden=[32], batch_size=32, eval_samples=64, log_every=2,
                ema=0.0, conditional=False)
ALL_REMEDIES = dict(optimizer="sgd", momentum=0.9, weight_decay=1e-3, augment="crop,flip,rotate",
                    clip_grad_norm=0.5)


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist("test")  # the bundled split: no download needed
    return images[:192], labels[:192]


@pytest.fixture(scope="module")
def vae_sets(digits):
    images, labels = digits
    return dict(train_set=(images[:128], labels[:128]), test_set=(images[128:], labels[128:]))


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _norm(module):
    return float(np.sqrt(sum(float((p.detach().numpy().astype(np.float64) ** 2).sum()) for p in module.parameters())))


def _train_vae(vae_sets, **kw):
    settings = dict(epochs=1, batch_size=32, latent=3, hidden=[16], quiet=True, pictures=False, **vae_sets)
    settings.update(kw)
    return vae.train_vae(**settings)


# ---- command line and Python API -----------------------------------------------------------------------------------
def test_gan_command_line_gives_every_remedy(tmp_path, digits):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "gan", "--arch", "mlp", "--optimizer", "sgd", "--momentum", "0.5",
                              "--weight-decay", "0.01", "--dropout", "0.2", "--augment", "crop,rotate",
                              "--clip-grad-norm", "2", "--init", "x.npz"])
    s = gan.settings_from_args(args)
    assert (s["optimizer"], s["momentum"], s["weight_decay"], s["dropout"], s["augment"],
            s["clip_grad_norm"]) == ("sgd", 0.5, 0.01, 0.2, "crop,rotate", 2.0)
    assert args.init == "x.npz"
    cfg = gan.make_config(**s)
    assert (cfg["augment"], cfg["g_dropout"], cfg["d_dropout"]) == (["crop", "rotate"], 0.2, 0.2)
    one = gan.settings_from_args(parser.parse_args(["train", "gan", "--arch", "mlp", "--dropout", "0.2",
                                                    "--d-dropout", "0.4"]))
    cfg = gan.make_config(**one)
    assert (cfg["g_dropout"], cfg["d_dropout"], "dropout" in cfg) == (0.2, 0.4, False)  # the network's own wins
    alone = parser.parse_args(["train", "gan", "--augment", "--steps", "3"])
    assert gan.make_config(**gan.settings_from_args(alone))["augment"] == list(remedies.DEFAULT_AUGMENT)
    assert "flip" not in remedies.DEFAULT_AUGMENT


def test_vae_command_line_gives_every_remedy():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "vae", "--optimizer", "rmsprop", "--weight-decay", "0.01", "--dropout",
                              "0.2", "--decoder-dropout", "0.1", "--augment", "flip", "--clip-grad-norm", "5",
                              "--init", "x.npz"])
    s = vae._settings_from_args(args)
    assert (s["optimizer"], s["weight_decay"], s["encoder_dropout"], s["decoder_dropout"], s["augment"],
            s["clip_grad_norm"]) == ("rmsprop", 0.01, 0.2, 0.1, "flip", 5.0)
    plain = vae._settings_from_args(parser.parse_args(["train", "vae"]))
    assert vae.make_config(**plain) == vae.make_config()  # nothing given: the defaults, no remedy


def test_help_says_which_weight_decay_each_optimizer_uses():
    for model in ("gan", "vae"):
        text = _help(["train", model, "--help"])
        for words in ("AdamW", "L2 penalty", "--augment", "mirrored digit", "--clip-grad-norm", "--init"):
            assert words in text, (model, words)


def _help(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(argv)
    return " ".join(out.getvalue().split())


def test_cli_runs_both_trainers_with_every_remedy(tmp_path, digits):
    # the real command line end to end: MNIST from --data, so a small folder of IDX files is not needed: use the
    # Python API's data path through the trainers (train_set) in the other tests; here the bundled MNIST, 2 steps
    rc, out, err = _run(["train", "gan", "--arch", "mlp", "--no-conditional", "--steps", "2", "--batch-size", "16",
                         "--n-train", "64", "--g-hidden", "16", "--d-hidden", "16", "--latent", "4",
                         "--eval-samples", "32",
                         "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.01", "--weight-decay", "0.001",
                         "--dropout", "0.1", "--augment", "--clip-grad-norm", "1", "--ema", "0", "--quiet",
                         "--threads", "1", "--out", str(tmp_path / "gan")])
    assert rc == 0, err
    ckpt = tinygen.load(tmp_path / "gan" / "checkpoint.npz")
    assert ckpt["optimizers"]["g"]["optimizer"] == ckpt["optimizers"]["d"]["optimizer"] == "SGD"
    assert ckpt["optimizers"]["g"]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["config"]["augment"] == ["crop", "rotate"] and ckpt["config"]["clip_grad_norm"] == 1.0


# ---- each remedy changes training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer,kind", [("adam", "AdamW"), ("rmsprop", "RMSprop"), ("sgd", "SGD")])
def test_weight_decay_shrinks_the_gan_weights(optimizer, kind, digits, tmp_path):
    lr = {"adam": 1e-2, "rmsprop": 1e-3, "sgd": 1e-1}[optimizer]
    settings = dict(TINY_GAN, train_set=digits, steps=6, optimizer=optimizer, lr_g=lr, lr_d=lr, seed=3)
    G0, D0, _ = gan.train_gan(out=None, quiet=True, **settings)
    G1, D1, _ = gan.train_gan(out=tmp_path / "wd", quiet=True, weight_decay=2.0, **settings)
    assert _norm(G1) < 0.99 * _norm(G0) and _norm(D1) < 0.99 * _norm(D0)
    saved = tinygen.load(tmp_path / "wd" / "checkpoint.npz")["optimizers"]["g"]
    assert saved["optimizer"] == kind and saved["param_groups"][0]["weight_decay"] == 2.0


def test_weight_decay_shrinks_the_vae_weights(vae_sets):
    m0, _ = _train_vae(vae_sets, lr=1e-2)
    m1, _ = _train_vae(vae_sets, lr=1e-2, weight_decay=1.0)
    assert _norm(m1) < 0.99 * _norm(m0)


def test_adam_weight_decay_is_decoupled_and_sgd_l2_like_torch():
    torch = pytest.importorskip("torch")
    w = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    g = np.array([[0.1, 0.2], [-0.3, 0.4]], dtype=np.float32)
    for name, cls in (("adam", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)):
        p = tinygen.tensor(w.copy(), requires_grad=True)
        opt = remedies.make_optimizer([p], name, 0.1, betas=(0.9, 0.999), weight_decay=0.5)
        q = torch.tensor(w.copy(), requires_grad=True)
        ref = cls([q], lr=0.1, weight_decay=0.5, **({"betas": (0.9, 0.999)} if name == "adam" else {}))
        for _ in range(3):
            p.grad, q.grad = tinygen.tensor(g), torch.tensor(g)
            opt.step()
            ref.step()
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_dropout_layers_are_present_and_active_in_train_mode_only():
    G = gan.build_generator(gan.make_config(**dict(TINY_GAN, g_dropout=0.5)))
    D = gan.build_discriminator(gan.make_config(**dict(TINY_GAN, d_dropout=0.3)))
    model = vae.build_model(vae.make_config(hidden=[16], latent=3, encoder_dropout=0.5, decoder_dropout=0.25))
    assert [m.p for m in G.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert [m.p for m in D.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert [m.p for m in model.encoder if isinstance(m, nn.Dropout)] == [0.5]
    assert [m.p for m in model.decoder if isinstance(m, nn.Dropout)] == [0.25]
    z, x = tinygen.randn(16, 8), tinygen.rand(16, 784)
    cases = ((G, z), (D, x), (lambda t: model.encode(t)[0], x), (lambda t: model.decode(t), tinygen.randn(16, 3)))
    for net, inp in cases:
        module = net if isinstance(net, nn.Module) else model
        module.train()
        with tinygen.no_grad():
            assert not np.array_equal(net(inp).numpy(), net(inp).numpy())
        module.eval()
        with tinygen.no_grad():
            assert np.array_equal(net(inp).numpy(), net(inp).numpy())


def test_augment_changes_the_batch_reproducibly_from_the_seed(digits):
    x = T.load_data(gan.make_config(), train_set=digits)[0][:64]  # [-1, 1] rows of 784
    aug = remedies.Augment("crop,rotate", (28, 28), background=-1.0)
    a = aug(x, generator=np.random.default_rng(7))
    assert a.shape == x.shape and a.dtype == x.dtype and not np.array_equal(a, x)
    assert np.array_equal(a, aug(x, generator=np.random.default_rng(7)))
    assert not np.array_equal(a, aug(x, generator=np.random.default_rng(8)))
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6  # the border brought in is background
    flip = remedies.Augment(["flip"], (28, 28))(x, generator=np.random.default_rng(0)).reshape(-1, 28, 28)
    flipped = (flip != x.reshape(-1, 28, 28)).any(axis=(1, 2))
    assert 0 < flipped.sum() < len(x)  # about half the images, each a mirror image
    assert np.array_equal(flip[flipped], x.reshape(-1, 28, 28)[flipped][:, :, ::-1])
    # in a run: the DataLoader's batches are the augmented ones, the same for the same seed, others for another
    def first_batch(seed, augment):
        loader = DataLoader(x, batch_size=16, shuffle=True, seed=seed, transform=remedies.make_augment(
            augment, None, -1.0))
        return next(iter(loader)).numpy()
    assert np.array_equal(first_batch(1, ["crop"]), first_batch(1, ["crop"]))
    assert not np.array_equal(first_batch(1, ["crop"]), first_batch(1, []))
    assert not np.array_equal(first_batch(1, ["crop"]), first_batch(2, ["crop"]))


def test_augment_changes_gan_and_vae_training(digits, vae_sets):
    settings = dict(TINY_GAN, train_set=digits, steps=3)
    G0, _, _ = gan.train_gan(out=None, quiet=True, **settings)
    G1, _, _ = gan.train_gan(out=None, quiet=True, augment="rotate", **settings)
    assert not np.array_equal(G0.net[0].weight.detach().numpy(), G1.net[0].weight.detach().numpy())
    m0, _ = _train_vae(vae_sets, binarize=True)
    m1, _ = _train_vae(vae_sets, binarize=True, augment=["crop"])
    assert not np.array_equal(m0.fc_out.weight.detach().numpy(), m1.fc_out.weight.detach().numpy())
    m2, _ = _train_vae(vae_sets, binarize=True, augment=[])  # none asked: exactly the run without augmentation
    assert np.array_equal(m0.fc_out.weight.detach().numpy(), m2.fc_out.weight.detach().numpy())


def test_gradient_clipping_bounds_each_step_and_changes_training(digits):
    p = tinygen.tensor(np.zeros(4, dtype=np.float32), requires_grad=True)
    opt = remedies.make_optimizer([p], "sgd", 1.0, clip_grad_norm=0.5)
    p.grad = tinygen.tensor(np.array([30.0, 40.0, 0.0, 0.0], dtype=np.float32))  # norm 50
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), [-0.3, -0.4, 0.0, 0.0], rtol=1e-5)  # rescaled to norm 0.5
    assert opt.state_dict()["optimizer"] == "SGD" and opt.param_groups[0]["lr"] == 1.0
    settings = dict(TINY_GAN, train_set=digits, steps=3)
    _, D0, _ = gan.train_gan(out=None, quiet=True, **settings)
    _, D1, _ = gan.train_gan(out=None, quiet=True, clip_grad_norm=1e-3, **settings)
    assert not np.array_equal(D0.net[0].weight.detach().numpy(), D1.net[0].weight.detach().numpy())


# ---- --init by layer name ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("saved_dropout,new_dropout", [(0.3, 0.0), (0.0, 0.3)])
def test_gan_init_by_name_across_dropout(saved_dropout, new_dropout, digits, tmp_path):
    base = dict(TINY_GAN, train_set=digits, g_hidden=[32, 16], d_hidden=[32, 16])
    gan.train_gan(out=tmp_path / "a", quiet=True, steps=2, g_dropout=saved_dropout, d_dropout=saved_dropout,
                  **base)
    saved = tinygen.load(tmp_path / "a" / "checkpoint.npz")["modules"]
    G, D = (gan.build_generator(gan.make_config(**dict(TINY_GAN, g_hidden=[32, 16], g_dropout=new_dropout))),
            gan.build_discriminator(gan.make_config(**dict(TINY_GAN, d_hidden=[32, 16], d_dropout=new_dropout))))
    reports = T._init_from(tmp_path / "a" / "checkpoint.npz", G, D)
    assert all(len(r["loaded"]) == 6 and not r["skipped"] for r in reports.values())
    for live, key in ((G, "generator"), (D, "discriminator")):
        mine = [m for m in live.net if isinstance(m, nn.Linear)]
        theirs = sorted({k.rsplit(".", 2)[1] for k in saved[key]}, key=int)  # the saved Linear indices, in order
        assert len(mine) == len(theirs) == 3
        for layer, index in zip(mine, theirs):
            assert np.array_equal(layer.weight.detach().numpy(), saved[key][f"net.{index}.weight"].numpy())
    # through train_gan: a tiny learning rate keeps the loaded weights, and the report is printed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        G2, _, _ = gan.train_gan(out=None, init=tmp_path / "a" / "checkpoint.npz", steps=1, lr_g=1e-12, lr_d=1e-12,
                                 g_dropout=new_dropout, d_dropout=new_dropout, seed=5, **base)
    assert "the generator: 6 of 6 tensors loaded" in out.getvalue()
    np.testing.assert_allclose(G2.net[0].weight.detach().numpy(), saved["generator"]["net.0.weight"].numpy(), atol=1e-9)


@pytest.mark.parametrize("saved_dropout,new_dropout", [(0.3, 0.0), (0.0, 0.3)])
def test_vae_init_by_name_across_dropout(saved_dropout, new_dropout, vae_sets, tmp_path):
    _train_vae(vae_sets, out=tmp_path / "a", hidden=[16, 8], encoder_dropout=saved_dropout,
               decoder_dropout=saved_dropout)
    saved = tinygen.load(tmp_path / "a" / "checkpoint.npz")["modules"]["model"]
    model, _ = _train_vae(vae_sets, init=tmp_path / "a" / "checkpoint.npz", hidden=[16, 8], lr=1e-12,
                          encoder_dropout=new_dropout, decoder_dropout=new_dropout, seed=9)
    np.testing.assert_allclose(model.fc_mu.weight.detach().numpy(), saved["fc_mu.weight"].numpy(), atol=1e-9)
    saved_second = [k for k in saved if k.startswith("encoder.") and k.endswith(".weight")][1]
    second = model.encoder[3 if new_dropout else 2]  # Linear, ReLU, [Dropout,] Linear
    np.testing.assert_allclose(second.weight.detach().numpy(), saved[saved_second].numpy(), atol=1e-9)


def test_partial_init_is_reported(digits, vae_sets, tmp_path):
    gan.train_gan(out=tmp_path / "g", quiet=True, steps=1, train_set=digits, **TINY_GAN)
    G = gan.build_generator(gan.make_config(**dict(TINY_GAN, g_hidden=[32, 8])))
    D = gan.build_discriminator(gan.make_config(**TINY_GAN))
    reports = T._init_from(tmp_path / "g" / "checkpoint.npz", G, D)
    g = reports["generator"]
    assert g["loaded"] == ["net.Linear0.weight", "net.Linear0.bias"]
    assert ("net.Linear1.weight", "shape (784, 32) in the checkpoint, (8, 32) here") in g["skipped"]
    assert ("net.Linear2.weight", "not in the checkpoint") in g["skipped"]
    assert not reports["discriminator"]["skipped"]
    lines = remedies.format_init_report("ckpt.npz", reports)
    assert lines[0].startswith("--init: the generator: 2 of 6 tensors loaded from ckpt.npz; skipped: ")
    assert "net.Linear2.weight (not in the checkpoint)" in lines[0]
    _train_vae(vae_sets, out=tmp_path / "v")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _train_vae(vae_sets, init=tmp_path / "v" / "checkpoint.npz", latent=5, quiet=False)
    assert "fc_mu.weight (shape (3, 16) in the checkpoint, (5, 16) here)" in out.getvalue()


def test_init_refuses_another_model_and_missing_files(digits, vae_sets, tmp_path):
    gan.train_gan(out=tmp_path / "g", quiet=True, steps=1, train_set=digits, **TINY_GAN)
    _train_vae(vae_sets, out=tmp_path / "v")
    with pytest.raises(ValueError, match="is a checkpoint of model 'gan', not a VAE"):
        _train_vae(vae_sets, init=tmp_path / "g" / "checkpoint.npz")
    with pytest.raises(ValueError, match="is a checkpoint of model 'vae', not a GAN"):
        gan.train_gan(out=None, quiet=True, steps=1, train_set=digits, init=tmp_path / "v" / "checkpoint.npz",
                      **TINY_GAN)
    with pytest.raises(FileNotFoundError, match="--init checkpoint"):
        _train_vae(vae_sets, init=tmp_path / "none.npz")
    ckpt = tinygen.load(tmp_path / "v" / "checkpoint.npz")
    ckpt["config"]["latent"] = 7  # settings that do not describe its weights
    tinygen.save(ckpt, tmp_path / "crafted.npz")
    with pytest.raises(ValueError, match="does not match the checkpoint's own settings"):
        _train_vae(vae_sets, init=tmp_path / "crafted.npz")
    rc, _, err = _run(["train", "vae", "--epochs", "1", "--init", str(tmp_path / "g" / "checkpoint.npz"),
                       "--out", str(tmp_path / "x"), "--threads", "1"])
    assert rc == 2 and "not a VAE" in err and len(err.strip().splitlines()) == 1


# ---- resume with the remedies on -----------------------------------------------------------------------------------
def test_gan_resumes_bitwise_with_every_remedy(digits, tmp_path):
    settings = dict(TINY_GAN, train_set=digits, g_dropout=0.2, d_dropout=0.2, seed=4, **ALL_REMEDIES)
    gan.train_gan(out=tmp_path / "full", quiet=True, steps=9, **settings)
    gan.train_gan(out=tmp_path / "part", quiet=True, steps=4, **settings)  # stops inside the first epoch
    gan.train_gan(out=tmp_path / "part", resume=True, quiet=True, steps=9, **settings)
    a, b = tinygen.load(tmp_path / "full" / "checkpoint.npz"), tinygen.load(tmp_path / "part" / "checkpoint.npz")
    for mod in ("generator", "discriminator"):
        for k, v in a["modules"][mod].items():
            assert np.array_equal(v.numpy(), b["modules"][mod][k].numpy()), (mod, k)
    with pytest.raises(ValueError, match="augment: saved"):
        gan.train_gan(out=tmp_path / "part", resume=True, quiet=True, steps=12, **dict(settings, augment="crop"))


def test_vae_resumes_bitwise_with_every_remedy(vae_sets, tmp_path):
    settings = dict(vae_sets, batch_size=48, latent=3, hidden=[16], binarize=True, encoder_dropout=0.2,
                    decoder_dropout=0.1, quiet=True, pictures=False, **dict(ALL_REMEDIES, momentum=0.5))
    full, _ = vae.train_vae(out=tmp_path / "full", epochs=3, **settings)
    vae.train_vae(out=tmp_path / "part", epochs=1, **settings)
    tinygen.randn(10)  # whatever runs in between must not matter
    resumed, _ = vae.train_vae(out=tmp_path / "part", epochs=3, resume=True, **settings)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
    assert list(tinygen.load(tmp_path / "part" / "checkpoint.npz")["optimizers"]) == ["sgd"]


def test_runs_saved_before_the_remedies_still_resume(vae_sets, digits, tmp_path):
    vae.train_vae(out=tmp_path / "v", epochs=1, batch_size=64, latent=2, hidden=[8], quiet=True, pictures=False,
                  **vae_sets)
    gan.train_gan(out=tmp_path / "g", quiet=True, steps=2, train_set=digits, **TINY_GAN)
    for path in (tmp_path / "v" / "checkpoint.npz", tmp_path / "g" / "checkpoint.npz"):
        ckpt = tinygen.load(path)
        for key in ("momentum", "weight_decay", "augment", "clip_grad_norm", "encoder_dropout", "decoder_dropout"):
            ckpt["config"].pop(key, None)  # as runs saved before these settings existed
        tinygen.save(ckpt, path)
    _, hist = vae.train_vae(out=tmp_path / "v", epochs=2, resume=True, batch_size=64, latent=2, hidden=[8],
                            quiet=True, pictures=False, **vae_sets)
    assert [r["epoch"] for r in hist] == [2]
    _, _, hist = gan.train_gan(out=tmp_path / "g", resume=True, quiet=True, steps=4, train_set=digits, **TINY_GAN)
    assert hist[-1]["step"] == 4


# ---- the article preset, as written --------------------------------------------------------------------------------
def test_article_preset_is_the_listing_and_formula_as_written():
    cfg = gan.make_config(preset="article")
    assert cfg["loss"] == "minimax" and (cfg["optimizer"], cfg["lr_g"], cfg["lr_d"]) == ("adam", 2e-4, 2e-4)
    assert (cfg["n_train"], cfg["binarize"], cfg["conditional"], cfg["ema"]) == (100, True, False, 0.0)
    G, D = gan.build_generator(cfg), gan.build_discriminator(cfg)
    assert [tuple(m.weight.shape) for m in G.net if isinstance(m, nn.Linear)] == [(128, 100), (64, 128), (784, 64)]
    assert [tuple(m.weight.shape) for m in D.net if isinstance(m, nn.Linear)] == [(128, 784), (64, 128), (1, 64)]
    for net in (G, D):
        kinds = {type(m) for m in net.net}
        assert nn.ReLU in kinds and nn.LeakyReLU not in kinds and nn.BatchNorm1d not in kinds
        assert nn.Dropout not in kinds
    assert gan.make_config(preset="article", loss="nonsaturating")["loss"] == "nonsaturating"  # the caller wins
    default = gan.make_config()  # the working recipe stays as it was
    assert (default["loss"], default["g_slope"], default["conditional"]) == ("nonsaturating", 0.2, True)


@requires_torch
def test_minimax_loss_matches_torch_values_and_gradients():
    import torch
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=16).astype(np.float64) * 3, rng.normal(size=16).astype(np.float64) * 3
    loss = gan.LOSSES["minimax"]
    r, f = tinygen.tensor(real, requires_grad=True), tinygen.tensor(fake, requires_grad=True)
    d, g = loss.discriminator_loss(r, f), loss.generator_loss(f)
    rt, ft = torch.tensor(real, requires_grad=True), torch.tensor(fake, requires_grad=True)
    # the formula: D maximises E[log D(x)] + E[log(1 - D(G(z)))], G minimises E[log(1 - D(G(z)))]
    dt = -(torch.log(torch.sigmoid(rt)).mean() + torch.log(1 - torch.sigmoid(ft)).mean())
    gt = torch.log(1 - torch.sigmoid(ft)).mean()
    np.testing.assert_allclose(d.item(), dt.item(), rtol=1e-10)
    np.testing.assert_allclose(g.item(), gt.item(), rtol=1e-10)
    gr, gf = tinygen.grad(d, [r, f])
    tr, tf = torch.autograd.grad(dt, [rt, ft])
    np.testing.assert_allclose(gr.numpy(), tr.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gf.numpy(), tf.numpy(), rtol=1e-9, atol=1e-12)
    (gg,) = tinygen.grad(g, [f])
    (tg,) = torch.autograd.grad(gt, [ft])
    np.testing.assert_allclose(gg.numpy(), tg.numpy(), rtol=1e-9, atol=1e-12)


# ---- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings,match", [
    (dict(weight_decay=-0.1), "weight_decay must be a non-negative finite number, got -0.1"),
    (dict(augment="crop,blur"), "unknown augmentation 'blur' in augment"),
    (dict(augment=["crop", "crop"]), "at most once"),
    (dict(g_dropout=1.0), r"g_dropout must be a number in \[0, 1\), got 1.0"),
    (dict(optimizer="lbfgs"), "unknown optimizer 'lbfgs'; expected one of adam, rmsprop, sgd"),
    (dict(momentum=0.9), "momentum is a setting of the sgd optimizer"),
    (dict(clip_grad_norm=0.0), "clip_grad_norm must be a positive finite number, got 0.0"),
    (dict(dataset="ring", augment="crop"), "the ring data are 2-D points"),
    (dict(arch="dcgan", g_dropout=0.2), "arch 'dcgan' has none"),
])
def test_bad_gan_remedy_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        gan.make_config(**settings)


@pytest.mark.parametrize("settings,match", [
    (dict(weight_decay=-1.0), "weight_decay must be a non-negative"),
    (dict(augment="zoom"), "unknown augmentation 'zoom'"),
    (dict(encoder_dropout=1.5), r"encoder_dropout must be a number in \[0, 1\)"),
    (dict(decoder_dropout=-0.1), r"decoder_dropout must be a number in \[0, 1\)"),
    (dict(optimizer="adagrad"), "unknown optimizer 'adagrad'"),
])
def test_bad_vae_remedy_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        vae.make_config(**settings)


@pytest.mark.parametrize("argv,words", [
    (["train", "gan", "--weight-decay", "-1"], "--weight-decay must be a non-negative"),
    (["train", "gan", "--augment", "crop,spin"], "unknown augmentation 'spin'"),
    (["train", "gan", "--dropout", "1"], "--dropout must be a number in [0, 1), got 1.0"),
    (["train", "vae", "--dropout", "1.2"], "--dropout must be a number in [0, 1), got 1.2"),
    (["train", "vae", "--decoder-dropout", "1"], "--decoder-dropout must be a number in [0, 1)"),
    (["train", "gan", "--arch", "dcgan", "--dropout", "0.1"], "dropout sets the MLP networks"),
])
def test_bad_remedy_options_give_one_line(argv, words, tmp_path):
    rc, _, err = _run(argv + ["--out", str(tmp_path / "x"), "--threads", "1"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and words in lines[0], err
