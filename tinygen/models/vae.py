"""A variational autoencoder on MNIST (Kingma & Welling), the PyTorch example's model by default.

Model (default 784-400-20): encoder x -> fc 400 ReLU -> (mu, logvar) of q(z|x) = N(mu, diag exp(logvar)) with
z in R^20; decoder z -> fc 400 ReLU -> fc 784 -> the parameters of p(x|z). ``hidden`` lists the encoder widths
(the decoder mirrors them); ``latent`` is the size of z. ``arch="conv"`` puts convolutions around that MLP: the
encoder starts with Conv2d(1->32, k4 s2 p1) ReLU Conv2d(32->64, k4 s2 p1) ReLU (28x28 -> 7x7), flattened into the
hidden layers; the decoder's last Linear gives 64x7x7 features, then ReLU ConvTranspose2d(64->32, k4 s2 p1) ReLU
ConvTranspose2d(32->1, k4 s2 p1): the 784 outputs. On other images ``image_shape`` (C, H, W), H and W divisible by
4: Conv2d from C channels, 64 x H/4 x W/4 features, the last ConvTranspose2d to C channels; rows are in the data's
(H, W, C) order (``conv_images``).

Decoders:
  bernoulli (default)  p(x|z) = prod Bernoulli(sigmoid(logits)); -log p(x|z) is the binary cross-entropy with
                       logits summed over the 784 pixels. Used on grey-level pixels in [0, 1] (as PyTorch's example;
                       strictly a "continuous Bernoulli" without its normaliser) or on dynamically binarised ones.
  gaussian             p(x|z) = N(sigmoid(out), sigma^2 I). ``decoder_var="learned"``: one scalar log sigma^2
                       learned with the model (shared by all pixels, so it cannot collapse on the always-black
                       border pixels; it tends to the mean squared reconstruction error); a number fixes sigma^2.
                       Its values are densities of continuous pixels: not comparable with Bernoulli nats.

Loss: the negative ELBO, -E_q[log p(x|z)] + beta * KL(q(z|x) || N(0, I)), with one reparameterised sample
z = mu + exp(logvar / 2) * eps and the KL in closed form; summed over the batch as PyTorch's example does.
``beta_warmup`` E > 0 raises the KL weight linearly from 0 to ``beta`` over the first E epochs (per step).
``conditional`` makes a CVAE: the label (one-hot, or an ``nn.Embedding``) is concatenated to the encoder input
and to z.

Reported numbers are per sample in nats: ``recon`` = -log p(x|z), ``kl``, and ``loss`` = recon + kl (the negative
ELBO with beta = 1, whatever beta training used). ``iwae_bound`` gives the importance-weighted bound
log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), which tightens as k grows.

    tinygen train vae --epochs 10 --out runs/vae          # checkpoint.npz, metrics.jsonl, PNGs in runs/vae
    tinygen train vae --arch conv --out runs/vae-conv     # the convolutional encoder and decoder
    tinygen eval runs/vae/checkpoint.npz --iwae-k 5000 --json
    tinygen sample runs/vae/checkpoint.npz --n 64 --out samples.png
    tinygen train vae --data table.csv --label-column kind  # your data: .npy/.npz/.csv or a folder of PNGs

Your own data (``--data PATH``, read by ``tinygen.data.load_dataset``): bounded data (bytes, or values within
[0, 1] or [-1, 1], or images) is mapped to [0, 1] for the Bernoulli (or sigmoid-mean Gaussian) decoder;
unbounded vectors are standardised per feature and always get the Gaussian decoder with a linear mean
(``decoder_mean="linear"``). One example in ten (at least one; seeded) is held out for the test ELBO.
"""
import math
import statistics
import time
from pathlib import Path

import numpy as np

from .. import Tensor, as_tensor, cat, eye, nn, no_grad, zeros
from .. import distributed as dist
from .. import random as _random
from ..backend import array_module, device_of
from ..data import DataLoader, ModelData, Scaling, binarize, to_unit
from ..kernels.reference import log1p_small
from ..nn import functional as F
from . import remedies
from . import train_utils as tu
from .conv_images import MNIST_IMAGE_SHAPE, check_image_shape, images_to_rows, rows_to_images

NAME = "vae"
LOG_2PI = math.log(2 * math.pi)
TEST_BINARIZE_SEED = 0  # the binarised test set is drawn once with this seed, so all runs score the same images
DECODERS = ("bernoulli", "gaussian")
LABEL_EMBEDDINGS = ("onehot", "embedding")
ARCHS = ("mlp", "conv")
DECODER_MEANS = ("sigmoid", "linear")  # the Gaussian decoder's mean: in [0, 1], or unbounded (standardised data)
CONV_CHANNELS = (32, 64)  # the conv arch's channels at H/2 x W/2 and H/4 x W/4 (14x14 and 7x7 on MNIST)

DEFAULTS = {"epochs": 10, "batch_size": 128, "lr": 1e-3, "latent": 20, "hidden": [400], "seed": 1,
            "binarize": False, "beta": 1.0, "beta_warmup": 0.0, "decoder": "bernoulli", "decoder_var": "learned",
            "conditional": False, "label_embedding": "onehot", "label_dim": 10, "arch": "mlp",
            "data_dim": 784, "num_classes": 10, "decoder_mean": "sigmoid", "label_column": None,
            "optimizer": "adam", "momentum": 0.0, "weight_decay": 0.0, "encoder_dropout": 0.0,
            "decoder_dropout": 0.0, "augment": [], "clip_grad_norm": None, "image_shape": list(MNIST_IMAGE_SHAPE)}
REMEDIES = ("optimizer", "momentum", "weight_decay", "encoder_dropout", "decoder_dropout", "augment",
            "clip_grad_norm")
# Settings added after runs were saved, with the value that reproduces those runs.
ADDED_SETTINGS = {"arch": "mlp", "data_dim": 784, "num_classes": 10, "decoder_mean": "sigmoid", "label_column": None,
                  "image_shape": list(MNIST_IMAGE_SHAPE), **{k: DEFAULTS[k] for k in REMEDIES}}


# ---- the model -------------------------------------------------------------------------------------------------------
def relu_mlp(widths, dropout=0.0):
    """Linear layers between consecutive widths, ReLU after each (and Dropout(dropout) when it is > 0)."""
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)


def _conv_layers(image_shape):
    """The conv arch's (encoder convolutions, decoder transposed convolutions, features between them and the MLP)
    for images of ``image_shape`` (C, H, W)."""
    (channels, h, w), (c1, c2) = image_shape, CONV_CHANNELS
    encoder = nn.Sequential(nn.Conv2d(channels, c1, 4, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU())
    decoder = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(),
                            nn.ConvTranspose2d(c1, channels, 4, 2, 1))
    return encoder, decoder, c2 * (h // 4) * (w // 4)


def _check_model_args(latent, hidden, decoder, decoder_var, label_embedding, label_dim, arch="mlp"):
    if arch not in ARCHS:
        raise ValueError(f"unknown VAE arch {arch!r}; expected one of {', '.join(ARCHS)}")
    tu.check_int("latent", latent)
    hidden = tu.check_widths("hidden", hidden)
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "gaussian" and decoder_var != "learned":
        try:
            var = float(decoder_var)
        except (TypeError, ValueError):
            raise ValueError(f"decoder_var must be 'learned' or a positive number (a fixed variance), got "
                             f"{decoder_var!r}") from None
        tu.check_number("decoder_var (a fixed variance)", var, allow_low=False)
    if label_embedding not in LABEL_EMBEDDINGS:
        raise ValueError(f"unknown label_embedding {label_embedding!r}; expected one of {', '.join(LABEL_EMBEDDINGS)}")
    tu.check_int("label_dim", label_dim)
    return hidden


class VAE(nn.Module):
    """MLP VAE for vectors of ``data_dim`` values (784-pixel images by default); see the module docstring for the
    decoders, the conditional variant and arch 'conv' (on images of ``image_shape`` (C, H, W), whose rows have
    ``data_dim`` = C*H*W values). ``encoder_dropout`` / ``decoder_dropout``: Dropout after each hidden layer of
    the encoder / decoder MLP."""

    def __init__(self, latent=20, hidden=(400,), decoder="bernoulli", decoder_var="learned", conditional=False,
                 label_embedding="onehot", label_dim=10, num_classes=10, data_dim=784, arch="mlp",
                 decoder_mean="sigmoid", encoder_dropout=0.0, decoder_dropout=0.0, image_shape=MNIST_IMAGE_SHAPE):
        super().__init__()
        encoder_dropout = tu.check_number("encoder_dropout", encoder_dropout, high=1.0)
        decoder_dropout = tu.check_number("decoder_dropout", decoder_dropout, high=1.0)
        hidden = _check_model_args(latent, hidden, decoder, decoder_var, label_embedding, label_dim, arch)
        if decoder_mean not in DECODER_MEANS or (decoder_mean == "linear" and decoder != "gaussian"):
            raise ValueError(f"VAE: decoder_mean must be 'sigmoid', or 'linear' with the gaussian decoder; got "
                             f"{decoder_mean!r} with decoder {decoder!r}")
        self.decoder_mean = decoder_mean
        self.image_shape = check_image_shape("VAE", image_shape)
        if arch == "conv" and data_dim != int(np.prod(self.image_shape)):
            raise ValueError(f"VAE: arch 'conv' on images of shape (C, H, W) = {self.image_shape} needs data_dim "
                             f"{int(np.prod(self.image_shape))}, got data_dim {data_dim}")
        self.arch = arch
        self.latent, self.hidden, self.decoder_kind = int(latent), hidden, decoder
        self.conditional, self.num_classes, self.data_dim = bool(conditional), num_classes, data_dim
        self.label_kind = label_embedding
        c = 0
        if self.conditional:
            if label_embedding == "embedding":
                self.label_embed = nn.Embedding(num_classes, label_dim)
                c = label_dim
            else:
                c = num_classes
        self.cond_dim = c
        features, out_dim = data_dim, data_dim
        if arch == "conv":
            self.encoder_conv, self.decoder_conv, features = _conv_layers(self.image_shape)
            out_dim = features
        self.encoder = relu_mlp([features + c] + hidden, encoder_dropout)
        self.fc_mu = nn.Linear(hidden[-1], latent)
        self.fc_logvar = nn.Linear(hidden[-1], latent)
        self.decoder = relu_mlp([latent + c] + hidden[::-1], decoder_dropout)
        self.fc_out = nn.Linear(hidden[0], out_dim)
        self.fixed_logvar = None
        if decoder == "gaussian":
            if decoder_var == "learned":
                self.out_logvar = nn.Parameter(zeros(()))  # log sigma^2, a scalar; starts at sigma = 1
            else:
                self.fixed_logvar = math.log(float(decoder_var))

    # -- pieces
    def _label(self, y, like):
        if not self.conditional:
            return None
        if y is None:
            raise ValueError("this VAE is conditional (CVAE): pass the labels y")
        if not isinstance(y, Tensor):
            y = as_tensor(np.asarray(y, dtype=np.int64), device=like.device)
        if y.ndim != 1 or y.shape[0] != like.shape[0]:
            raise ValueError(f"labels must have shape ({like.shape[0]},), got {tuple(y.shape)}")
        if self.label_kind == "embedding":
            return self.label_embed(y)
        return F.embedding(y, eye(self.num_classes, dtype=like.dtype, device=like.device))  # one-hot rows

    def encode(self, x, y=None):
        """(mu, logvar) of q(z|x[, y]) for x of shape (N, data_dim) (or (N, 28, 28); own images: their rows)."""
        x = x.reshape(x.shape[0], self.data_dim)
        c = self._label(y, x)
        if self.arch == "conv":
            x = self.encoder_conv(rows_to_images(x, self.image_shape)).reshape(x.shape[0], -1)
        h = self.encoder(cat([x, c], 1) if c is not None else x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z, y=None):
        """The decoder's output (N, data_dim): Bernoulli logits, or the Gaussian mean before its sigmoid."""
        c = self._label(y, z)
        out = self.fc_out(self.decoder(cat([z, c], 1) if c is not None else z))
        if self.arch == "conv":
            _, h, w = self.image_shape
            out = images_to_rows(self.decoder_conv(out.reshape(z.shape[0], CONV_CHANNELS[1], h // 4, w // 4)))
        return out

    def mean(self, z, y=None):
        """E[x|z]: the sigmoid of the decoder output, in [0, 1] (the output itself with decoder_mean 'linear')."""
        return self._mean(self.decode(z, y))

    def _mean(self, out):
        return out if self.decoder_mean == "linear" else out.sigmoid()

    @staticmethod
    def reparameterize(mu, logvar, eps=None):
        """z = mu + sigma * eps with eps ~ N(0, I) (drawn here unless given): a sample of q(z|x) differentiable in
        mu and logvar."""
        if eps is None:
            eps = _random.randn(*mu.shape, dtype=mu.dtype, device=mu.device)
        return mu + (logvar * 0.5).exp() * eps

    def forward(self, x, y=None, eps=None):
        """(decoder output, mu, logvar) for one sample z of q(z|x) (with the standard normal noise ``eps``, else
        fresh noise)."""
        mu, logvar = self.encode(x, y)
        return self.decode(self.reparameterize(mu, logvar, eps), y), mu, logvar

    def decoder_logvar(self):
        """log sigma^2 of the Gaussian decoder (a tensor when learned, a float when fixed)."""
        return self.out_logvar if self.fixed_logvar is None else self.fixed_logvar

    def recon_nll(self, out, x, reduction="sum"):
        """-log p(x|z) from the decoder output: summed over pixels, then summed over the batch ("sum") or per
        sample ("none", shape (N,))."""
        x = x.reshape(x.shape[0], self.data_dim)
        if self.decoder_kind == "bernoulli":
            if reduction == "sum":
                return F.binary_cross_entropy_with_logits(out, x, reduction="sum")
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
        logvar = self.decoder_logvar()
        d = x - self._mean(out)
        sq = (d * d).sum() if reduction == "sum" else (d * d).sum(1)
        count = self.data_dim * (x.shape[0] if reduction == "sum" else 1)
        # 0.5 * (sum (x - mean)^2 / sigma^2 + count * (log sigma^2 + log 2 pi))
        if isinstance(logvar, Tensor):
            return sq * (-logvar).exp() * 0.5 + (logvar + LOG_2PI) * (0.5 * count)
        return sq * (0.5 * math.exp(-logvar)) + 0.5 * count * (logvar + LOG_2PI)

    def extra_repr(self):
        return (f"arch={self.arch}, latent={self.latent}, hidden={self.hidden}, decoder={self.decoder_kind}, "
                f"conditional={self.conditional}" + (f", image_shape={self.image_shape}" if self.arch == "conv" and
                                                     self.image_shape != MNIST_IMAGE_SHAPE else ""))


def elbo_terms(model, x, y=None, eps=None):
    """One-sample estimate of the ELBO pieces of a batch, summed over it: ``(recon, kl)`` as scalar tensors with
    recon = sum_n -log p(x_n|z_n), z_n ~ q(z|x_n), and kl = sum_n KL(q(z|x_n) || N(0, I)) (closed form).
    ``model`` may be wrapped in DistributedDataParallel; ``eps``: the noise of z (fresh when not given)."""
    out, mu, logvar = model(x, y) if eps is None else model(x, y, eps=eps)
    return tu.unwrap(model).recon_nll(out, x, reduction="sum"), F.kl_normal(mu, logvar, reduction="sum")


def beta_at(step, steps_per_epoch, beta, warmup_epochs):
    """The KL weight at optimisation step ``step`` (0-based): rises linearly from 0 to ``beta`` over
    ``warmup_epochs`` epochs (reaching ``beta`` at step warmup_epochs * steps_per_epoch), then stays."""
    if warmup_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))


def _batches(n, batch_size):
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def _to(array, device, dtype=np.float32):
    return as_tensor(np.ascontiguousarray(array, dtype=dtype), device=device)


def evaluate_elbo(model, images, labels=None, batch_size=1000, device="cpu"):
    """Per-sample test ELBO terms in nats over all ``images`` (N, 784) floats, one z sample each (under
    no_grad, eval mode): ``{"recon", "kl", "loss"}`` with loss = recon + kl = the negative ELBO."""
    def terms(sl):
        y = _to(labels[sl], device, np.int64) if model.conditional else None
        return elbo_terms(model, _to(images[sl], device), y)
    return mean_elbo_terms(model, len(images), batch_size, terms)


def mean_elbo_terms(model, n, batch_size, terms):
    """``{"recon", "kl", "loss"}`` per example over n examples in batches: ``terms(slice)`` gives the (recon, kl)
    sums of those examples. Runs under no_grad in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    recon = kl = 0.0
    try:
        with no_grad():
            for sl in _batches(n, batch_size):
                r, k = terms(sl)
                recon += float(r.item())
                kl += float(k.item())
    finally:
        model.train(was)
    n = max(n, 1)
    return {"recon": recon / n, "kl": kl / n, "loss": (recon + kl) / n}


def _bernoulli_log_lik(logits, x):
    """sum_d log Bernoulli(x_d; sigmoid(l_d)) for logits (N, m, D) and images x (N, D), as arrays (no graph):
    sum_d x_d l_d - softplus(l_d), with softplus(l) = max(l, 0) + log1p(exp(-|l|)). The IWAE bound evaluates this
    k times per image, so it avoids logaddexp (several times slower) and the copies of x."""
    xp = array_module(device_of(logits))
    sp = xp.abs(logits)
    xp.negative(sp, out=sp)
    xp.exp(sp, out=sp)
    sp = log1p_small(xp, sp)
    sp += xp.maximum(logits, 0)
    return xp.matmul(logits, x[:, :, None])[..., 0] - sp.sum(axis=2)


def iwae_log_weights(model, x, y=None, k=5000, chunk_rows=4096):
    """log w_i = log p(x, z_i) - log q(z_i|x) for k samples z_i ~ q(z|x) per image: a float64 NumPy array (N, k).

    The N * k decoder passes run in chunks of about ``chunk_rows`` rows, so memory stays bounded whatever k is;
    the result does not depend on the chunk size. Call under ``no_grad``.
    """
    n = x.shape[0]
    x = x.reshape(n, model.data_dim)
    mu, logvar = model.encode(x, y)
    std = (logvar * 0.5).exp()
    # log q(z|x) at z = mu + std * eps is -0.5 * sum(eps^2 + log 2 pi + logvar): the logvar part is per image
    logq_const = (logvar.sum(1) + model.latent * LOG_2PI) * -0.5                      # (N,)
    per = max(1, chunk_rows // n)  # samples per image in one chunk
    out = np.empty((n, k), dtype=np.float64)
    for start in range(0, k, per):
        m = min(per, k - start)
        # drawn sample-major, so the numbers each (image, sample) gets do not depend on the chunk size
        eps = _random.randn(m, n, model.latent, dtype=mu.dtype, device=mu.device).transpose(0, 1)
        z = mu.unsqueeze(1) + std.unsqueeze(1) * eps                                     # (N, m, latent)
        zf = z.reshape(n * m, model.latent)
        xr = x.unsqueeze(1).expand(n, m, model.data_dim).reshape(n * m, model.data_dim) \
            if model.decoder_kind != "bernoulli" else None
        yr = None
        if y is not None:
            yr = y.unsqueeze(1).expand(n, m).reshape(n * m)  # each label m times
        out_ = model.decode(zf, yr)
        if model.decoder_kind == "bernoulli":
            log_px = as_tensor(_bernoulli_log_lik(out_.data.reshape(n, m, model.data_dim), x.data), device=x.device)
        else:
            log_px = -model.recon_nll(out_, xr, reduction="none").reshape(n, m)
        log_pz = (zf * zf).sum(1).reshape(n, m) * -0.5 - 0.5 * model.latent * LOG_2PI
        log_q = (eps * eps).sum(2) * -0.5 + logq_const.unsqueeze(1)
        w = log_px + log_pz - log_q
        out[:, start:start + m] = np.asarray(w.cpu().data, dtype=np.float64)
    return out


def iwae_bound(model, images, labels=None, k=5000, batch_size=None, device="cpu", chunk_rows=4096,
               quiet=True):
    """The importance-weighted lower bound of the mean log-likelihood of ``images`` (N, 784), in nats per image:
    mean_n [logsumexp_i log w_ni - log k]. With k = 1 it is a one-sample ELBO estimate; it rises towards
    log p(x) as k grows (Burda et al.). Returns the per-image bounds as a float64 array (N,)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"iwae k (importance samples per image) must be a positive integer, got {k!r}")
    batch_size = batch_size or max(1, min(len(images), 100))
    was = model.training
    model.eval()
    bounds = []
    bar = tu.Progress(len(images), desc=f"IWAE k={k}", unit="img", quiet=quiet)
    try:
        with no_grad():
            for sl in _batches(len(images), batch_size):
                x = _to(images[sl], device)
                y = _to(labels[sl], device, np.int64) if model.conditional else None
                lw = iwae_log_weights(model, x, y, k, chunk_rows)
                top = lw.max(axis=1, keepdims=True)
                bounds.append(top[:, 0] + np.log(np.exp(lw - top).mean(axis=1)))
                bar.update(sl.stop - sl.start)
    finally:
        bar.close()
        model.train(was)
    return np.concatenate(bounds)


# ---- data ------------------------------------------------------------------------------------------------------------
def _flat_unit(images):
    return to_unit(np.asarray(images)).reshape(len(images), 784)


def resolve_data(settings, train_set=None):
    """A run on its own data (``data`` a file or a folder that is not MNIST's, or ``train_set`` arrays that are
    not 784-pixel images with labels): ``(settings, ModelData)`` with the settings the data fixes (data_dim,
    num_classes, the image_shape (C, H, W) of arch 'conv'; for unbounded data the gaussian decoder with a linear
    mean). Otherwise ``(settings, train_set)`` unchanged."""
    own = tu.custom_dataset(settings.get("data"), train_set, settings.get("label_column"))
    if own is None:
        return settings, train_set
    prepared, fixed = tu.prepare_own_data(own, (0.0, 1.0), settings.get("conditional"),
                                          "conv" if settings.get("arch") == "conv" else None)
    fixed["data_dim"] = own.features
    if own.num_classes:
        fixed["num_classes"] = own.num_classes
    settings = tu.settings_from_data(settings, fixed, own)
    if not prepared.scaling.bounded:  # Bernoulli pixels make no sense for unbounded values
        if settings.get("binarize"):
            raise ValueError(f"binarize needs bounded data; {own.source} is unbounded (standardised)")
        settings.update(decoder="gaussian", decoder_mean="linear")
    return settings, prepared


def held_out_split(n, seed):
    """(train indices, test indices) of a run's own data: one example in ten, at least one, picked by ``seed``."""
    if n < 2:
        raise ValueError(f"the data has {n} example; a VAE needs at least 2 (one is held out for the test ELBO)")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, n // 10)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _own_data(cfg, train_set, test_set=None):
    """load_data for a ``ModelData``: its held-out split (or ``test_set`` arrays, scaled the same way)."""
    x, y = train_set.x, train_set.y
    if test_set is not None:
        test = tu.custom_dataset(train_set=test_set, force=True)
        if test.shape != train_set.scaling.shape:
            raise ValueError(f"test_set examples have shape {test.shape}, the training data {train_set.scaling.shape}")
        train_x, train_y, test_x, test_y = x, y, train_set.scaling.to_model(test.x), test.y
        if test_y is not None and train_set.scaling.classes is not None:  # the training data's class indices
            known = {name: i for i, name in enumerate(train_set.scaling.classes)}
            unknown = sorted(set(test.classes) - set(known))
            if unknown:
                raise ValueError(f"test_set has labels {unknown} that the training data does not have")
            test_y = np.array([known[name] for name in test.classes], dtype=np.int64)[test_y]
    else:
        tr, te = held_out_split(len(x), cfg["seed"])
        train_x, test_x = x[tr], x[te]
        train_y, test_y = (None, None) if y is None else (y[tr], y[te])
    if cfg["binarize"]:
        test_x = binarize(test_x, generator=np.random.default_rng(TEST_BINARIZE_SEED))
    # unlabelled data: zeros, which an unconditional model never reads
    train_y = np.zeros(len(train_x), np.int64) if train_y is None else train_y
    test_y = np.zeros(len(test_x), np.int64) if test_y is None else test_y
    return train_x, train_y, test_x, test_y


def load_data(cfg, train_set=None, test_set=None):
    """(train_images (N, 784) float32 in [0, 1], train_labels, test_images, test_labels). The test images are
    binarised once (seed ``TEST_BINARIZE_SEED``) when ``cfg["binarize"]``; the training images are binarised
    afresh in every batch by the DataLoader. Own data (``train_set`` a ``ModelData`` from ``resolve_data``):
    (N, data_dim) in the model's units, with one example in ten held out as the test set (``held_out_split``)
    unless ``test_set`` is given."""
    if isinstance(train_set, ModelData):
        return _own_data(cfg, train_set, test_set)
    if train_set is None:
        train_set = tu.mnist_split("train", cfg.get("data"))
    if test_set is None:
        test_set = tu.mnist_split("test", cfg.get("data"))
    train_x, train_y = train_set
    test_x, test_y = test_set
    train_x, test_x = _flat_unit(train_x), _flat_unit(test_x)
    if cfg["binarize"]:
        test_x = binarize(test_x, generator=np.random.default_rng(TEST_BINARIZE_SEED))
    return train_x, np.asarray(train_y, dtype=np.int64), test_x, np.asarray(test_y, dtype=np.int64)


# ---- configuration ---------------------------------------------------------------------------------------------------
def make_config(**overrides):
    """The defaults updated with ``overrides``, validated (ValueError names the bad setting)."""
    unknown = sorted(set(overrides) - set(DEFAULTS) - {"data", "device"})
    if unknown:
        raise ValueError(f"unknown VAE setting(s) {unknown}; known: {sorted(DEFAULTS)} and data, device")
    cfg = dict(DEFAULTS, data=None, device="cpu")
    cfg.update(overrides)
    for key, low in (("epochs", 0), ("batch_size", 1), ("seed", 0)):
        cfg[key] = tu.check_int(key, cfg[key], low=low)
    cfg["lr"] = tu.check_number("lr", cfg["lr"], allow_low=False)
    remedies.check_remedies(cfg, ("encoder_dropout", "decoder_dropout"))
    for key in ("beta", "beta_warmup"):
        cfg[key] = tu.check_number(key, cfg[key])
    cfg["hidden"] = _check_model_args(cfg["latent"], cfg["hidden"], cfg["decoder"], cfg["decoder_var"],
                                      cfg["label_embedding"], cfg["label_dim"], cfg["arch"])
    if cfg["decoder_var"] != "learned":
        cfg["decoder_var"] = float(cfg["decoder_var"])
    cfg["latent"], cfg["label_dim"] = int(cfg["latent"]), int(cfg["label_dim"])
    cfg["data_dim"], cfg["num_classes"] = tu.check_int("data_dim", cfg["data_dim"]), \
        tu.check_int("num_classes", cfg["num_classes"])
    if cfg["decoder_mean"] not in DECODER_MEANS or (cfg["decoder_mean"] == "linear" and cfg["decoder"] != "gaussian"):
        raise ValueError(f"decoder_mean must be 'sigmoid', or 'linear' with the gaussian decoder; got "
                         f"{cfg['decoder_mean']!r} with decoder {cfg['decoder']!r}")
    cfg["binarize"], cfg["conditional"] = bool(cfg["binarize"]), bool(cfg["conditional"])
    cfg["image_shape"] = list(check_image_shape("make_config", cfg["image_shape"]))
    return cfg


def build_model(cfg):
    return VAE(cfg["latent"], cfg["hidden"], cfg["decoder"], cfg["decoder_var"], cfg["conditional"],
               cfg["label_embedding"], cfg["label_dim"], cfg["num_classes"], cfg["data_dim"], cfg["arch"],
               cfg["decoder_mean"], encoder_dropout=cfg["encoder_dropout"], decoder_dropout=cfg["decoder_dropout"],
               image_shape=cfg["image_shape"])


def saved_config(ckpt):
    """A checkpoint's run settings, with ADDED_SETTINGS filled in where the run predates them."""
    return {**ADDED_SETTINGS, **ckpt["config"]}


def model_from_checkpoint(ckpt, device="cpu"):
    """The trained VAE of a checkpoint (the dict ``tinygen.load`` returns), in eval mode."""
    if not isinstance(ckpt, dict) or ckpt.get("model") != NAME:
        raise ValueError(f"not a VAE checkpoint (model {ckpt.get('model') if isinstance(ckpt, dict) else None!r})")
    model = build_model(make_config(**{k: v for k, v in saved_config(ckpt).items() if k in DEFAULTS}))
    model.load_state_dict(ckpt["modules"]["model"])
    return model.to(device).eval()


# ---- training --------------------------------------------------------------------------------------------------------
def train_vae(out=None, resume=False, quiet=False, pictures=True, train_set=None, test_set=None, init=None,
              compile=True, **settings):
    """Train a VAE; returns ``(model, history)`` with one metrics dict per epoch run in this call.

    settings: see ``DEFAULTS`` (plus ``data``, ``device``). out: folder for ``checkpoint.npz`` (rewritten
    atomically after every epoch), ``metrics.jsonl`` and the PNGs; ``resume=True`` continues the run saved there
    (same settings; ``epochs`` may grow) and ends with the same parameters as an uninterrupted run.
    train_set / test_set: ``(images, labels)`` instead of reading MNIST (tests use small subsets), or arrays
    ``x`` / ``(x, labels)`` of any size (see ``resolve_data``); ``data``: a folder holding MNIST, or a
    .npy/.npz/.csv file or a folder of PNG images (``tinygen.data.load_dataset``; ``label_column`` for a CSV).
    init: a VAE checkpoint whose weights start this run, matched by layer name (``remedies.load_by_name``; what
    was loaded and skipped is printed unless quiet).
    compile: record the training step once per batch shape with ``tinygen.compile`` and replay it (bitwise the
    same run as ``compile=False``, which runs it eagerly).
    """
    settings, train_set = resolve_data(settings, train_set)
    cfg = make_config(**settings)
    device = cfg["device"]
    own = train_set if isinstance(train_set, ModelData) else None
    train_x, train_y, test_x, test_y = load_data(cfg, train_set, test_set)
    if own is not None and not quiet and dist.is_main_process():
        print(f"{own.describe()}; decoder {cfg['decoder']}"
              + (" with a linear mean" if cfg["decoder_mean"] == "linear" else "")
              + f"; {len(train_x)} for training, {len(test_x)} held out", flush=True)
    tu.check_batch_fits(cfg["batch_size"], len(train_x))
    tu.check_global_batch(cfg["batch_size"], len(train_x))
    quiet = quiet or not dist.is_main_process()
    model, net, opt, loader = _training_parts(cfg, train_x, train_y, own, init, quiet)
    parts = {"modules": {"model": model}, "optimizers": {cfg["optimizer"]: opt}, "loaders": {"train": loader}}
    folder = tu.RunFolder(out, resume)
    start = folder.restore(parts, NAME, cfg, added=ADDED_SETTINGS)[1] if resume else 0
    history = []
    for epoch in range(start, cfg["epochs"]):
        t0 = time.perf_counter()
        record = {"epoch": epoch + 1, **train_epoch(net, opt, loader, cfg, epoch, quiet, compile)}
        with tu.fork_rng(cfg["seed"], (device,)):  # the same noise every epoch; training's stream is untouched
            record.update({f"test_{k}": v for k, v in evaluate_elbo(model, test_x, test_y, device=device).items()})
        record["seconds"] = time.perf_counter() - t0
        if cfg["decoder"] == "gaussian" and cfg["decoder_var"] == "learned":
            record["decoder_sigma"] = math.exp(0.5 * model.out_logvar.item())
        history.append(record)
        if not quiet:
            print(format_record(record), flush=True)
        folder.write("metrics", record)
        extra = {"last": record, "num_train": int(len(train_x))}
        if own is not None:  # how samples go back to the data's units and shape
            extra["scaling"] = own.scaling.state()
        folder.save(NAME, cfg, epoch + 1, parts, devices=(device,), extra=extra)
    if folder.path is not None and folder.writes and pictures:
        with tu.fork_rng(cfg["seed"], (device,)):
            if own is None:
                save_pictures(model, folder.path, test_x, test_y, device=device)
            else:
                save_own_pictures(model, folder.path, own.scaling, test_x, test_y, device=device)
    return model, history


def _training_parts(cfg, train_x, train_y, own, init, quiet):
    """The seeded model (started from ``init`` if given), its data-parallel wrapper (the model itself in a world of
    one process), the optimizer with the run's remedies, and the training batches (augmented, binarised)."""
    _random.manual_seed(cfg["seed"])
    model = build_model(cfg).to(cfg["device"])
    if init is not None:
        report = _init_from(init, model)
        if not quiet:
            print("\n".join(remedies.format_init_report(init, report)), flush=True)
    net = tu.data_parallel(model)
    opt = remedies.make_optimizer(net.parameters(), cfg["optimizer"], cfg["lr"], weight_decay=cfg["weight_decay"],
                                  momentum=cfg["momentum"], clip_grad_norm=cfg["clip_grad_norm"],
                                  capturable=cfg["device"] != "cpu")  # on a GPU: Adam in the step's CUDA graph
    augment = remedies.make_augment(cfg["augment"], None if own is None else own.scaling, 0.0,
                                    then=binarize if cfg["binarize"] else None)
    loader = DataLoader((train_x, train_y), batch_size=cfg["batch_size"], shuffle=True, seed=cfg["seed"],
                        transform=augment, device=cfg["device"])
    return model, net, opt, loader


def _init_from(path, model):
    """--init: start from the weights of another VAE checkpoint, matched by layer name; returns {"model": report}."""
    ckpt = remedies.read_init_checkpoint(path, NAME, "a VAE")
    if "model" not in ckpt["modules"]:
        raise ValueError(f"--init: the VAE checkpoint '{path}' holds no model weights")
    saved = make_config(**{k: v for k, v in saved_config(ckpt).items() if k in DEFAULTS})
    source = remedies.rebuilt(path, "model", lambda: build_model(saved), ckpt["modules"]["model"])
    return remedies.init_from_modules(path, [("model", model, source)])


def train_epoch(model, opt, loader, cfg, epoch, quiet=True, compile=False):
    """One pass over the training data minimising the negative ELBO (the KL weighted by ``beta_at``); returns
    the KL weight reached and the per-sample means: train_recon, train_kl, train_loss (their sum).
    ``compile``: the step through ``tinygen.compile`` (the KL weight enters it as a tensor, so a warm-up does not
    record a new program every step)."""
    steps = len(loader)
    ranks = dist.world_size()
    param = next(tu.unwrap(model).parameters())

    def kl_weight(b):  # a tensor input of the step (None: weight 1)
        beta = beta_at(epoch * steps + b, steps, cfg["beta"], cfg["beta_warmup"])
        return (None if beta == 1.0 else as_tensor(np.asarray(beta, dtype=param.dtype), device=param.device),)

    def batch_loss(batch, beta):
        x, y = batch  # this rank's share of the global batch
        eps = None
        if ranks > 1:  # this rank's rows of the global batch's noise (one process draws it in reparameterize)
            latent = tu.unwrap(model).latent
            eps = tu.global_batch_noise(lambda n: _random.randn(n, latent, dtype=x.dtype, device=x.device),
                                        x.shape[0])
        recon, kl = elbo_terms(model, x, y if cfg["conditional"] else None, eps)
        loss = recon + kl * beta if beta is not None else recon + kl
        if ranks > 1:  # a sum over the batch: DDP averages the ranks' gradients, one process would add them
            loss = loss * float(ranks)
        return loss, x.shape[0], {"recon": recon.detach(), "kl": kl.detach()}  # read after the step

    sums, seen = tu.optimize_epoch(model, opt, loader, batch_loss, f"vae epoch {epoch + 1}/{cfg['epochs']}", quiet,
                                   compile, kl_weight)
    recon, kl, n = sums.get("recon", 0.0), sums.get("kl", 0.0), max(seen, 1)
    beta = beta_at(epoch * steps + steps - 1, steps, cfg["beta"], cfg["beta_warmup"]) if steps else cfg["beta"]
    return {"beta": beta, "train_recon": recon / n, "train_kl": kl / n, "train_loss": (recon + kl) / n}


def format_record(r):
    """One line of an epoch's numbers, as printed during training."""
    return (f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} (recon {r['train_recon']:.4f}, kl "
            f"{r['train_kl']:.4f}) | test loss {r['test_loss']:.4f} (recon {r['test_recon']:.4f}, kl "
            f"{r['test_kl']:.4f}) | {r['seconds']:.1f}s")


# ---- pictures --------------------------------------------------------------------------------------------------------
def _labels_for(model, n, label=None, device="cpu", start=0):
    if not model.conditional:
        if label is not None:
            raise ValueError("label needs a conditional VAE (CVAE); this one was trained without conditional")
        return None
    if label is not None:
        if not 0 <= int(label) < model.num_classes:
            raise ValueError(f"label must be in 0..{model.num_classes - 1}, got {label}")
        ys = np.full(n, int(label), dtype=np.int64)
    else:
        ys = np.arange(start, start + n, dtype=np.int64) % model.num_classes
    return _to(ys, device, np.int64)


def sample_means(model, n, label=None, device="cpu", start=0):
    """``n`` decoder means (n, data_dim) at z ~ N(0, I) (label: the class, for a CVAE; default the classes in
    turn, from class ``start % num_classes``)."""
    with no_grad():
        z = _random.randn(n, model.latent, device=device)
        return tu.host(model.mean(z, _labels_for(model, n, label, device, start)))


def sample_images(model, n, label=None, device="cpu", start=0):
    """``n`` MNIST images (n, 28, 28) in [0, 1]: ``sample_means`` as pictures."""
    return sample_means(model, n, label, device, start).reshape(n, 28, 28)


def reconstructions(model, images, labels=None, device="cpu"):
    """Decoder means at z = mu(x) for images (N, 784)."""
    with no_grad():
        x = _to(images, device)
        y = _to(labels, device, np.int64) if model.conditional else None
        mu, _ = model.encode(x, y)
        return tu.host(model.mean(mu, y)).reshape(len(images), 28, 28)


def interpolations(model, a, b, steps=10, labels_a=None, labels_b=None, device="cpu"):
    """Rows of decoded points on the line between the codes mu(a_i) and mu(b_i): (pairs * steps, 28, 28).
    A CVAE encodes each image with its own label and decodes the whole row with a's label."""
    with no_grad():
        ya = _to(labels_a, device, np.int64) if model.conditional else None
        yb = _to(labels_b, device, np.int64) if model.conditional else None
        za, _ = model.encode(_to(a, device), ya)
        zb, _ = model.encode(_to(b, device), yb)
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
        za, zb = tu.host(za), tu.host(zb)
        z = za[:, None, :] * (1 - t)[None, :, None] + zb[:, None, :] * t[None, :, None]
        yr = None if ya is None else _to(np.repeat(labels_a, steps), device, np.int64)
        return tu.host(model.mean(_to(z.reshape(-1, model.latent), device), yr)).reshape(-1, 28, 28)


def manifold(model, n=20, label=None, device="cpu"):
    """For a 2-D latent: decoder means on an n x n grid of z at the Gaussian quantiles 0.05..0.95."""
    if model.latent != 2:
        raise ValueError(f"the manifold grid needs a 2-D latent, this VAE has {model.latent}")
    q = np.array([statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)], dtype=np.float32)
    zz = np.stack(np.meshgrid(q, q[::-1], indexing="xy"), axis=-1).reshape(-1, 2)
    with no_grad():
        return tu.host(model.mean(_to(zz, device), _labels_for(model, n * n, label, device))).reshape(-1, 28, 28)


def save_pictures(model, out, test_x, test_y, device="cpu"):
    """reconstructions.png (rows of inputs over their reconstructions), samples.png, interpolations.png and, for
    a 2-D latent, manifold.png, in the folder ``out``; returns their paths."""
    from ..utils.image import save_image_grid
    out = Path(out)
    paths = []
    n = min(32, len(test_x))
    rec = reconstructions(model, test_x[:n], test_y[:n], device)
    pairs = np.empty((2 * n, 28, 28), dtype=np.float32)
    for r in range(0, n, 8):  # a row of 8 inputs, then the row of their reconstructions
        m = min(8, n - r)
        pairs[2 * r:2 * r + m] = test_x[r:r + m].reshape(-1, 28, 28)
        pairs[2 * r + m:2 * r + 2 * m] = rec[r:r + m]
    paths.append(save_image_grid(out / "reconstructions.png", pairs[:2 * n], nrow=8))
    paths.append(save_image_grid(out / "samples.png", sample_images(model, 100 if model.conditional else 64,
                                                                      device=device),
                                 nrow=10 if model.conditional else 8))
    k = min(8, len(test_x) // 2)
    if k:
        a, b = test_x[:k], test_x[k:2 * k]
        paths.append(save_image_grid(out / "interpolations.png",
                                     interpolations(model, a, b, 10, test_y[:k], test_y[k:2 * k], device), nrow=10))
    if model.latent == 2:
        paths.append(save_image_grid(out / "manifold.png", manifold(model, 20, device=device), nrow=20,
                                     padding=0))
    return paths


def save_own_pictures(model, out, scaling, test_x, test_y, device="cpu"):
    """For a run on its own images: samples.png and reconstructions.png (rows of held-out inputs over their
    reconstructions) in the data's shape and units (``scaling``); nothing for vectors. Returns the paths."""
    from ..utils.image import save_image_grid
    if scaling.kind != "images":
        return []
    out, rng = Path(out), scaling.picture_range()
    nrow = model.num_classes if model.conditional else 8
    paths = [save_image_grid(out / "samples.png", scaling.to_data(sample_means(model, 8 * nrow, device=device)),
                             nrow=nrow, value_range=rng)]
    n = min(8, len(test_x))
    with no_grad():
        y = _to(test_y[:n], device, np.int64) if model.conditional else None
        rec = tu.host(model.mean(model.encode(_to(test_x[:n], device), y)[0], y))
    pairs = scaling.to_data(np.concatenate([test_x[:n], rec]))
    paths.append(save_image_grid(out / "reconstructions.png", pairs, nrow=n, value_range=rng))
    return paths


# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                   help="images per gradient step (under mpiexec -n N: the global batch, a multiple of N)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="learning rate (of Adam, or of --optimizer)")
    p.add_argument("--arch", default=DEFAULTS["arch"], choices=ARCHS,
                   help="mlp: the MLP of PyTorch's example; conv: Conv2d layers before and ConvTranspose2d layers "
                        "after the MLP (MNIST, or your images with height and width divisible by 4)")
    p.add_argument("--latent", type=int, default=DEFAULTS["latent"], help="size of z")
    p.add_argument("--hidden", type=int, nargs="+", default=DEFAULTS["hidden"],
                   help="encoder hidden widths (the decoder mirrors them)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (initial weights, data order)")
    p.add_argument("--out", default="runs/vae", help="folder for checkpoint.npz, metrics.jsonl and the PNGs")
    p.add_argument("--binarize", action="store_true",
                   help="dynamically binarised MNIST (a fresh Bernoulli draw of each training image every epoch)")
    p.add_argument("--beta", type=float, default=DEFAULTS["beta"], help="KL weight")
    p.add_argument("--beta-warmup", type=float, default=DEFAULTS["beta_warmup"], metavar="EPOCHS",
                   help="raise the KL weight linearly from 0 to beta over this many epochs")
    p.add_argument("--decoder", default=DEFAULTS["decoder"], choices=DECODERS,
                   help="likelihood p(x|z): Bernoulli (BCE with logits) or Gaussian")
    p.add_argument("--decoder-var", default=DEFAULTS["decoder_var"],
                   help="Gaussian decoder variance: 'learned' (one shared scalar) or a fixed number")
    p.add_argument("--conditional", action="store_true", help="label-conditioned VAE (CVAE)")
    p.add_argument("--label-embedding", default=DEFAULTS["label_embedding"], choices=LABEL_EMBEDDINGS,
                   help="how a CVAE feeds the label: one-hot vector or a learned nn.Embedding")
    p.add_argument("--label-dim", type=int, default=DEFAULTS["label_dim"], help="size of the label embedding")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="MNIST folder (default: $TINYGEN_DATA, else the copy shipped with tinygen), or your data: a "
                        ".npy/.npz array, a .csv of numbers or a folder of PNG images (class sub-folders give "
                        "labels); bounded data is scaled to [0, 1], unbounded vectors are standardised and get the "
                        "gaussian decoder with a linear mean; one example in ten is held out for the test ELBO")
    p.add_argument("--label-column", default=None, metavar="NAME|INDEX",
                   help="--data CSV: the column holding class labels (a header name or a 0-based index); default "
                        "none")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    remedies.add_remedy_arguments(p, "dropout after the hidden layers of the encoder and the decoder "
                                     "(--encoder-dropout, --decoder-dropout: one of them)")
    p.add_argument("--encoder-dropout", type=float, default=None, help="dropout in the encoder only (default 0)")
    p.add_argument("--decoder-dropout", type=float, default=None, help="dropout in the decoder only (default 0)")
    tu.add_compile_argument(p)


def _settings_from_args(args):
    keys = list(DEFAULTS) + ["data", "device"]
    settings = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    dropout = getattr(args, "dropout", None)
    if dropout is not None:
        dropout = tu.check_number("--dropout", dropout, high=1.0)
    for key in ("encoder_dropout", "decoder_dropout"):
        if settings.get(key) is None and dropout is not None:
            settings[key] = dropout
    return {k: v for k, v in settings.items() if not (k in REMEDIES and v is None)}  # unset: the defaults


def train_from_args(args):
    tu.check_positive_options(args, ("epochs", "batch_size"))
    _, history = train_vae(out=args.out, resume=args.resume, quiet=args.quiet, init=getattr(args, "init", None),
                           compile=getattr(args, "compile", True),
                           **_settings_from_args(args))
    if history and dist.is_main_process():
        print(f"test loss {history[-1]['test_loss']:.4f} nats per image after epoch {history[-1]['epoch']}; "
              f"outputs in {args.out}")
    return 0


def sample_checkpoint(ckpt, args):
    """Samples from the prior as a PNG grid, or the raw (n, 28, 28) float32 means for an ``.npy`` output (written
    in chunks). Without ``--out``, ``samples_seed<seed>.png`` beside the checkpoint. A run on its own data:
    samples in the data's units and shape (``tu.write_data_samples``; also ``.csv``)."""
    from ..utils.image import save_image_grid
    model = model_from_checkpoint(ckpt, args.device)
    label = tu.check_label_option(getattr(args, "label", None), model.conditional, model.num_classes)
    if "scaling" in ckpt.get("extra", {}):
        _random.manual_seed(args.seed)
        tu.write_data_samples(args, lambda start, count: sample_means(model, count, label, args.device, start),
                              Scaling.from_state(ckpt["extra"]["scaling"]),
                              nrow=model.num_classes if model.conditional and label is None else 8)
        return 0
    out = args.out or tu.default_sample_path(args.checkpoint, args.seed)
    tu.check_sample_request(args.n, out, (28, 28))
    _random.manual_seed(args.seed)
    tu.write_samples(out, args.n, lambda start, count: sample_images(model, count, label, args.device, start),
                     (28, 28), lambda path, x: save_image_grid(path, x, nrow=10 if model.conditional and label is None
                                                               else 8))
    print(f"wrote {args.n} samples to {out}")
    return 0


def evaluate_checkpoint(ckpt, args):
    """Test ELBO terms over the 10,000 test images and the IWAE-k bound on the first ``--iwae-images``.

    ``test_loss`` is the negative ELBO per test image (one z sample each), ``iwae_nll`` the negative IWAE bound
    (an upper bound on the test negative log-likelihood, tighter than test_loss), all in nats. ``iwae_nll_stderr``
    is the standard error of that mean over the images (how much it would move with other test images).
    A run on its own data is scored on its held-out split (``held_out_split``) of the file it read (or of
    ``--data``), never on MNIST.
    """
    k, m = int(args.iwae_k), int(args.iwae_images)
    if k < 1:
        raise ValueError(f"--iwae-k must be a positive integer (importance samples per image), got {k}")
    if m < 0:
        raise ValueError(f"--iwae-images must be >= 0 (0 skips the IWAE bound), got {m}")
    model = model_from_checkpoint(ckpt, args.device)
    cfg = make_config(**{k: v for k, v in saved_config(ckpt).items() if k in DEFAULTS | {"data": None}})
    data = getattr(args, "data", None)
    if "scaling" in ckpt.get("extra", {}):  # own data: its held-out split, as in training (not MNIST's test set)
        own_x, own_y = tu.reload_own_data(cfg["data"], cfg["label_column"], ckpt["extra"]["scaling"], data)
        x, y = _own_data(cfg, ModelData(own_x, own_y, None, None))[2:]
        m = min(m, len(x))
    else:
        test = tu.mnist_split("test", data)
        x = _flat_unit(test.images)
        if cfg["binarize"]:
            x = binarize(x, generator=np.random.default_rng(TEST_BINARIZE_SEED))
        y = np.asarray(test.labels, dtype=np.int64)
    _random.manual_seed(args.seed)
    elbo = evaluate_elbo(model, x, y, device=args.device)
    out = {"epochs_trained": int(ckpt.get("epoch", 0)), "arch": cfg["arch"], "binarized": cfg["binarize"],
           "decoder": cfg["decoder"],
           "test_loss": elbo["loss"], "test_recon": elbo["recon"], "test_kl": elbo["kl"]}
    if m > 0:
        if m > len(x):
            raise ValueError(f"--iwae-images {m} is more than the {len(x)} test images")
        t0 = time.perf_counter()
        bounds = iwae_bound(model, x[:m], y[:m], k=k, device=args.device, quiet=bool(getattr(args, "json", False)))
        _random.manual_seed(args.seed)
        sub = evaluate_elbo(model, x[:m], y[:m], device=args.device)
        out.update({"iwae_k": k, "iwae_images": m, "iwae_nll": float(-bounds.mean()),
                    "iwae_nll_stderr": float(bounds.std(ddof=1) / math.sqrt(m)) if m > 1 else 0.0,
                    "elbo_loss_on_iwae_images": sub["loss"], "iwae_seconds": time.perf_counter() - t0})
    return out
