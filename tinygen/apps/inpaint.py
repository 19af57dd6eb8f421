"""Inpainting: fill a hidden region of MNIST test digits with a trained VAE or GAN, by latent search.

    tinygen app inpaint runs/vae/checkpoint.npz --mask center          # 100 test digits, centre 14x14 hidden
    tinygen app inpaint runs/gan/checkpoint.npz --mask right --n 1000 --out right.png

Both models are searched the same way: find z minimising

    E(z) = -log p(x_visible | z) + |z|^2 / 2        (the negative log posterior of z given the visible pixels)

by Adam on z (tinygen's autograd gives dE/dz), from several starts per digit (``restarts``), all digits and starts
in one batch; the start with the lowest E wins and the model's mean image at that z fills the hidden pixels (the
visible ones are kept exactly). For the VAE, -log p(x_visible | z) is its decoder's likelihood on the visible
pixels (Bernoulli cross-entropy, or the Gaussian squared error over its variance); the first start is the
encoder's mean for the digit with its hidden pixels mean-filled, the others are drawn from N(0, I). A GAN has no
likelihood: its samples G(z) are taken as the means of a Gaussian of standard deviation ``sigma`` (pixels in
[0, 1]), so the data term is |G(z) - x|^2 / (2 sigma^2) over the visible pixels; every start is drawn from N(0, I).

A conditional model needs a label: ``labels="search"`` (the default) runs the starts for every class and keeps
the best (the label is not assumed known, and the share of digits whose true class was found is reported);
``labels="true"`` gives it the test label.

The error is measured on the hidden pixels only, in [0, 1] units (MSE and MAE), against the mean fill: each hidden
pixel set to the mean of that pixel over MNIST's training split.
"""
import json
from pathlib import Path

import numpy as np

from .. import as_tensor, nn, no_grad, optim
from ..models import gan as gan_models
from ..models import train_utils as tu
from ..models import vae as vae_models
from ..nn import functional as F
from . import _imaging as im

SUMMARY = "fill a hidden region of MNIST test digits with a trained VAE or GAN (latent search)"
MASKS = ("center", "left", "right", "top", "bottom", "random")
LABEL_MODES = ("search", "true")
RANDOM_HIDDEN = 0.5  # share of pixels the random mask hides
PIXELS = im.SIDE * im.SIDE
DEFAULTS = {"restarts": 4, "steps": 300, "lr": 0.05, "sigma": 0.5}
ROWS_PER_BATCH = 2000  # latent vectors optimised together (digits x labels x starts)


# ---- masks and scores ------------------------------------------------------------------------------------------------
def make_masks(name, n, seed=0):
    """Boolean masks (n, 784), True where a pixel is hidden: ``center`` the middle 14x14 square, ``left`` /
    ``right`` / ``top`` / ``bottom`` that half of the digit, ``random`` each pixel independently with probability
    RANDOM_HIDDEN (a different pattern per digit, drawn from ``seed``)."""
    if name not in MASKS:
        raise ValueError(f"make_masks: unknown mask {name!r}; expected one of {', '.join(MASKS)}")
    n = im.check_count("make_masks: n", n)
    half, quarter = im.SIDE // 2, im.SIDE // 4
    if name == "random":
        return np.random.default_rng(seed).random((n, PIXELS)) < RANDOM_HIDDEN
    hidden = np.zeros((im.SIDE, im.SIDE), dtype=bool)
    region = {"center": (slice(quarter, quarter + half), slice(quarter, quarter + half)),
              "left": (slice(None), slice(0, half)), "right": (slice(None), slice(half, None)),
              "top": (slice(0, half), slice(None)), "bottom": (slice(half, None), slice(None))}[name]
    hidden[region] = True
    return np.broadcast_to(hidden.reshape(1, PIXELS), (n, PIXELS)).copy()


def mean_fill(images, hidden, mean):
    """The digits (n, 784) with each hidden pixel replaced by the per-pixel ``mean`` (784,)."""
    return np.where(hidden, np.asarray(mean, dtype=np.float32).reshape(1, PIXELS), images)


def masked_errors(estimate, truth, hidden):
    """``{"mse", "mae"}`` over the hidden pixels of all digits (pixels in [0, 1])."""
    if not hidden.any():
        raise ValueError("masked_errors: the mask hides no pixel")
    d = (np.asarray(estimate, dtype=np.float64) - np.asarray(truth, dtype=np.float64))[hidden]
    return {"mse": float(np.mean(d * d)), "mae": float(np.mean(np.abs(d)))}


# ---- the models as p(x | z) ------------------------------------------------------------------------------------------
class _VAEPrior:
    """A trained VAE seen by the latent search: the data term and the mean image at z, the encoder's start."""

    def __init__(self, model):
        if getattr(model, "data_dim", PIXELS) != PIXELS:
            raise ValueError(f"inpaint: the VAE was trained on {model.data_dim}-dimensional data; inpainting "
                             f"works on 28x28 MNIST digits (784 pixels)")
        self.model, self.latent = model, model.latent
        self.num_classes = model.num_classes if model.conditional else 0
        logvar = model.decoder_logvar() if model.decoder_kind == "gaussian" else None
        self.inv_var = None if logvar is None else float(np.exp(-float(logvar.item() if hasattr(logvar, "item")
                                                                        else logvar)))

    def data_term(self, z, y, x, visible):
        """-log p(x_visible | z) per row (up to a constant)."""
        out = self.model.decode(z, y)
        if self.inv_var is None:
            return (F.binary_cross_entropy_with_logits(out, x, reduction="none") * visible).sum(1)
        d = (out.sigmoid() - x) * visible
        return (d * d).sum(1) * (0.5 * self.inv_var)

    def mean(self, z, y):
        return self.model.mean(z, y)

    def starts(self, filled, y, count, rng):
        """The encoder's mean for the mean-filled digits, then count - 1 draws from N(0, I)."""
        with no_grad():
            mu = tu.host(self.model.encode(as_tensor(filled, device=_device(self.model)), y)[0], np.float32)
        return [mu] + [_normal(rng, mu.shape) for _ in range(count - 1)]


class _GANPrior:
    """A trained GAN generator seen by the latent search: G(z) in [0, 1] as the mean of a Gaussian of std sigma."""

    def __init__(self, G, cfg, sigma):
        if G.out_dim != PIXELS or cfg.get("dataset", "mnist") != "mnist" or getattr(G, "output", "tanh") != "tanh":
            raise ValueError(f"inpaint: the GAN was trained on {cfg.get('dataset')} data ({G.out_dim} values per "
                             f"sample); inpainting works on 28x28 MNIST digits (784 pixels)")
        self.model, self.latent, self.num_classes = G, G.latent_dim, G.num_classes
        self.inv_var = 1.0 / tu.check_number("sigma", sigma, allow_low=False) ** 2

    def mean(self, z, y):
        out = self.model(z, y) if self.num_classes else self.model(z)
        return (out + 1.0) * 0.5  # tanh output in [-1, 1] -> pixels in [0, 1]

    def data_term(self, z, y, x, visible):
        d = (self.mean(z, y) - x) * visible
        return (d * d).sum(1) * (0.5 * self.inv_var)

    def starts(self, filled, y, count, rng):
        return [_normal(rng, (len(filled), self.latent)) for _ in range(count)]


def _device(module):
    return next(iter(module.parameters())).device


def _normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def prior_for(ckpt, sigma=DEFAULTS["sigma"], device="cpu", use_ema=True):
    """The latent-search view of a VAE or GAN checkpoint dict (ValueError for anything else)."""
    kind = ckpt.get("model") if isinstance(ckpt, dict) else None
    if kind == vae_models.NAME:
        return _VAEPrior(vae_models.model_from_checkpoint(ckpt, device))
    if kind == gan_models.NAME:
        return _GANPrior(*gan_models.generator_from_checkpoint(ckpt, device, use_ema=use_ema), sigma)
    raise ValueError(f"inpaint: a checkpoint of model {kind!r}; inpainting needs a VAE or GAN checkpoint")


# ---- the latent search -----------------------------------------------------------------------------------------------
def search_latents(prior, x, visible, y, z0, steps=DEFAULTS["steps"], lr=DEFAULTS["lr"]):
    """Minimise E(z) = data term + |z|^2 / 2 for each row independently with Adam, from ``z0`` (rows, latent).
    x, visible: (rows, 784) tensors; y: labels tensor or None. Returns (z (rows, latent) NumPy, E per row at z,
    the mean E over rows before each step and after the last)."""
    z = nn.Parameter(as_tensor(z0, device=x.device))
    opt = optim.Adam([z], lr=lr)
    history = []
    for _ in range(steps):
        energy = prior.data_term(z, y, x, visible) + (z * z).sum(1) * 0.5
        total = energy.sum()
        history.append(float(total.item()) / len(z0))
        opt.zero_grad()
        total.backward()
        opt.step()
    with no_grad():
        final = tu.host(prior.data_term(z, y, x, visible) + (z * z).sum(1) * 0.5, np.float32)
    history.append(float(final.mean()))
    return tu.host(z, np.float32), final, history


def inpaint(prior, images, hidden, mean, labels=None, label_mode="search", restarts=DEFAULTS["restarts"],
            steps=DEFAULTS["steps"], lr=DEFAULTS["lr"], seed=0):
    """Fill the hidden pixels of ``images`` (n, 784) in [0, 1] (``hidden`` (n, 784) bool) by latent search with
    ``prior`` (``prior_for``). ``mean``: the per-pixel training mean (784,), used for the VAE encoder's start.

    Returns a dict: ``filled`` (n, 784), the digits with hidden pixels from the model and visible ones unchanged;
    ``labels`` (n,) the class used per digit (conditional models, else None); ``history`` the mean E per step of
    the first batch of digits."""
    images, hidden = np.asarray(images, dtype=np.float32), np.asarray(hidden, dtype=bool)
    if images.ndim < 2 or images[0].size != PIXELS or hidden.shape[0] != images.shape[0] or hidden[0].size != PIXELS:
        raise ValueError(f"inpaint: expected digits and masks of shape (n, 784) or (n, 28, 28), got images "
                         f"{images.shape} and hidden {hidden.shape}")
    images, hidden = images.reshape(len(images), PIXELS), hidden.reshape(len(images), PIXELS)
    restarts = im.check_count("inpaint: restarts", restarts)
    if label_mode not in LABEL_MODES:
        raise ValueError(f"inpaint: label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    classes = prior.num_classes
    if classes and label_mode == "true" and labels is None:
        raise ValueError("inpaint: label_mode 'true' needs the digits' labels")
    per_digit = classes if classes and label_mode == "search" else 1  # labels tried per digit
    rng = np.random.default_rng(seed)
    device = _device(prior.model)
    filled, chosen, history = images.copy(), np.full(len(images), -1, dtype=np.int64), None
    chunk = max(1, ROWS_PER_BATCH // (per_digit * restarts))
    for lo in range(0, len(images), chunk):
        x, h = images[lo:lo + chunk], hidden[lo:lo + chunk]
        k = len(x)
        # rows ordered (start, label, digit)
        if not classes:
            y_rows = None
        elif per_digit == 1:
            y_rows = np.asarray(labels[lo:lo + chunk], dtype=np.int64)
        else:
            y_rows = np.repeat(np.arange(classes, dtype=np.int64), k)
        y_t = None if y_rows is None else as_tensor(y_rows, device=device)
        x_rows, h_rows = np.tile(x, (per_digit, 1)), np.tile(h, (per_digit, 1))
        starts = prior.starts(mean_fill(x_rows, h_rows, mean), y_t, restarts, rng)
        y_all = None if y_rows is None else as_tensor(np.tile(y_rows, restarts), device=device)
        z, energy, trace = search_latents(
            prior, as_tensor(np.tile(x_rows, (restarts, 1)), device=device),
            as_tensor(np.tile(~h_rows, (restarts, 1)).astype(np.float32), device=device), y_all,
            np.concatenate(starts), steps, lr)
        history = history or trace
        best = energy.reshape(restarts * per_digit, k).argmin(0) * k + np.arange(k)
        with no_grad():
            y_best = None if y_all is None else as_tensor(tu.host(y_all, np.int64)[best], device=device)
            fill = tu.host(prior.mean(as_tensor(z[best], device=device), y_best), np.float32)
        filled[lo:lo + k] = np.where(h, fill, x)
        if y_best is not None:
            chosen[lo:lo + k] = tu.host(y_best, np.int64)
    return {"filled": filled, "labels": chosen if classes else None, "history": history}




# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p):
    p.description = __doc__.split("\n\n", 2)[2]
    p.add_argument("checkpoint", help="checkpoint.npz of a VAE or GAN (tinygen train vae|gan)")
    p.add_argument("--mask", required=True, choices=MASKS,
                   help="the hidden region: the centre 14x14 square, a half, or half the pixels at random")
    p.add_argument("--n", type=int, default=100, help="inpaint the first N MNIST test digits")
    p.add_argument("--out", default=None, help="picture (.png) with rows original, masked, mean fill, model "
                                               "(default: inpaint_<mask>.png beside the checkpoint)")
    p.add_argument("--show", type=int, default=12, help="digits in the picture")
    p.add_argument("--labels", choices=LABEL_MODES, default="search",
                   help="conditional models: search over all classes, or use the test label")
    p.add_argument("--restarts", type=int, default=DEFAULTS["restarts"], help="starts of the search per digit")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="Adam steps on z")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate on z")
    p.add_argument("--sigma", type=float, default=DEFAULTS["sigma"],
                   help="GAN only: the pixel noise (in [0, 1] units) that weighs the visible pixels against the prior")
    p.add_argument("--no-ema", action="store_true", help="GAN only: the trained generator, not its EMA copy")
    p.add_argument("--seed", type=int, default=0, help="draws the random starts and the random mask")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder holding MNIST (default: $TINYGEN_DATA, else the copy shipped with tinygen)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")


def run(args):
    n = im.check_count("--n", args.n)
    show = min(im.check_count("--show", args.show), n)
    im.check_count("--restarts", args.restarts)
    im.check_count("--steps", args.steps, low=0)
    tu.check_number("--lr", args.lr, allow_low=False)
    tu.check_int("--seed", args.seed, low=0)
    out = im.check_picture_path("--out", args.out or Path(args.checkpoint).parent / f"inpaint_{args.mask}.png")
    ckpt = im.load_checkpoint(args.checkpoint, "inpaint", (vae_models.NAME, gan_models.NAME))
    prior = prior_for(ckpt, args.sigma, args.device, use_ema=not args.no_ema)
    images, labels = im.digits("test", n, args.data)
    images = images.reshape(n, PIXELS)
    mean = im.digits("train", None, args.data)[0].reshape(-1, PIXELS).mean(0)
    hidden = make_masks(args.mask, n, args.seed)
    result = inpaint(prior, images, hidden, mean, labels, args.labels, args.restarts, args.steps, args.lr, args.seed)
    baseline = mean_fill(images, hidden, mean)
    kind = ckpt["model"]
    scores = {"mean_fill": masked_errors(baseline, images, hidden), kind: masked_errors(result["filled"], images,
                                                                                          hidden)}
    masked_view = np.where(hidden, 0.5, images)  # hidden pixels shown grey
    im.write_rows(out, [a[:show] for a in (images, masked_view, baseline, result["filled"])])
    report = {"model": kind, "mask": args.mask, "digits": n, "hidden_pixels_per_digit": float(hidden.sum(1).mean()),
              "restarts": args.restarts, "steps": args.steps, "labels": args.labels if prior.num_classes else None,
              "mse": {k: v["mse"] for k, v in scores.items()}, "mae": {k: v["mae"] for k, v in scores.items()},
              "objective_first_step": result["history"][0], "objective_last": result["history"][-1],
              "picture": str(out)}
    if result["labels"] is not None and args.labels == "search":
        report["label_accuracy"] = float(np.mean(result["labels"] == labels))
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    cond = ""
    if prior.num_classes:
        cond = ("; conditional: label searched over all classes" if args.labels == "search"
                else "; conditional: given the true label")
    print(f"inpainting {n} MNIST test digits, mask {args.mask} ({report['hidden_pixels_per_digit']:.0f} of {PIXELS} "
          f"pixels hidden), {kind}: latent search, {args.restarts} starts x {args.steps} Adam steps{cond}")
    print(f"  {'hidden-pixel error':<20}{'MSE':>9}{'MAE':>9}")
    for name, s in scores.items():
        print(f"  {name.replace('_', ' '):<20}{s['mse']:9.4f}{s['mae']:9.4f}")
    print(f"  search objective (mean per digit): {report['objective_first_step']:.1f} -> "
          f"{report['objective_last']:.1f}")
    if "label_accuracy" in report:
        print(f"  true class found for {report['label_accuracy']:.0%} of the digits")
    print(f"picture (rows: original, masked, mean fill, {kind}): {out}")
    return 0
