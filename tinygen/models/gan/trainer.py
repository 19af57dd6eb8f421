"""Training a GAN: configuration (defaults, presets, per-loss settings), the training loop with its diagnostics,
sampling, pictures and evaluation.

    G, D, history = train_gan(out="runs/gan")                         # MNIST with the default recipe
    G, D, history = train_gan(out="runs/ring", dataset="ring", loss="wgan-gp", steps=3000)
    G, D, history = train_gan(out="runs/mine", data="table.csv", label_column="kind", steps=2000)  # your data

One training step: ``n_critic`` discriminator (critic) updates, each on a fresh real batch and fresh noise, then
one generator update. "steps" count generator updates; an epoch is one pass over the real data. The generator
update reuses the fakes of the last critic update (as PyTorch's DCGAN example does), so each step runs the
generator forward once per critic update.

Diagnostics per epoch (printed, and in ``metrics.jsonl``): mean losses; mean D(x) and D(G(z)) (probabilities for
the sigmoid losses, raw critic scores otherwise): a D that separates them perfectly starves the generator of
gradient; the gradient norms of G and D (vanishing gradients show up as a tiny G norm); on MNIST the number of
digit classes among generated samples and the KL of their histogram from uniform (mode collapse shows up as fewer
classes), by the cached classifier; on ring/grid the modes captured, the share of high-quality samples and the
reverse KL.
"""
import contextlib
import itertools
import math
import time

import numpy as np

from ... import as_tensor, backend, kernels, nn, no_grad, optim
from ... import distributed as dist
from ... import random as _random
from ...capture import replayed
from ...data import DataLoader, ModelData, grid, ring, to_symmetric
from ...nn.utils import get_total_norm
from .. import remedies
from .. import train_utils as tu
from ..conv_images import MNIST_IMAGE_SHAPE, check_image_shape
from . import losses as L
from .models import ARCHS, PYTORCH_GAN, build_discriminator, build_generator

NAME = "gan"
DATASETS = ("mnist", "ring", "grid", "custom")  # custom: a file or folder (--data PATH) or arrays
TOY = {"ring": ring, "grid": grid}
PRESETS = ("pytorch-gan", "article")
OPTIMIZERS = remedies.OPTIMIZERS
LR_DECAYS = ("none", "linear")

# What every run starts from; DATASET_DEFAULTS, then ARCH_DEFAULTS, then a preset, then the loss's defaults
# (``losses.LOSSES``), then the caller's settings override it (``make_config``).
BASE = {"dataset": "mnist", "data": None, "preset": None, "loss": "nonsaturating", "arch": "mlp", "ngf": 64,
        "ndf": 64, "d_fc": 0, "conditional": False,
        "num_classes": 10, "latent": 64, "g_hidden": [256, 512], "d_hidden": [512, 256], "g_batchnorm": False,
        "d_batchnorm": False, "bn_eps": 1e-5, "g_dropout": 0.0, "d_dropout": 0.0, "g_slope": 0.2, "d_slope": 0.2,
        "output": "tanh", "data_dim": 784, "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999],
        "lr_decay": "none", "n_critic": 1, "clip": 0.01, "gp": 10.0, "label_smoothing": 0.0, "batch_size": 64,
        "epochs": 5, "steps": None, "ema": 0.999, "seed": 0, "n_train": None, "binarize": False,
        "toy_samples": 128000, "eval_samples": 1000, "log_every": 50, "device": "cpu", "data_scale": 1.0,
        "label_column": None, "momentum": 0.0, "weight_decay": 0.0, "augment": [], "clip_grad_norm": None,
        "image_shape": list(MNIST_IMAGE_SHAPE)}


def _spread(mixture):
    """The root-mean-square coordinate of a mixture's centres: about the data's spread per coordinate."""
    return round(float(np.sqrt((mixture.centres ** 2).mean())), 4)


# The 2-D mixtures' networks (every loss): G and D of 3 ReLU layers of 256; a 2-D latent as in WGAN-GP's toy
# experiments (with wgan-gp's small penalty a 16-D one gave 26% high-quality ring samples at 3000 steps, 2-D 63%);
# ``data_scale`` so both networks work in units of about unit spread; learning rates decaying linearly to 0, which
# tightens the modes at the end of the run.
_TOY = {"latent": 2, "g_hidden": [256, 256, 256], "d_hidden": [256, 256, 256], "g_slope": 0.0, "d_slope": 0.0,
        "output": "linear", "data_dim": 2, "batch_size": 256, "epochs": None, "steps": 3000, "ema": 0.0,
        "eval_samples": 2500, "lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.5, 0.9], "lr_decay": "linear"}

DATASET_DEFAULTS = {
    # label-conditioned, the DCGAN (its recipe: ARCH_DEFAULTS and ARCH_DATASET_DEFAULTS), 1,900 steps: FD 9-10,
    # IS 9.65 in about two minutes on 2 cores, where the MLP GAN's recipe (Adam 5e-4, 6,000 steps) reaches FD
    # 17-21, IS 9.5 in the same time; unconditional, both are worse (docs/results-gan.md has the sweeps)
    "mnist": {"arch": "dcgan", "conditional": True, "epochs": None},
    "ring": dict(_TOY, data_scale=_spread(ring)),
    "grid": dict(_TOY, data_scale=_spread(grid)),
    # your own data (data_dim, output and num_classes come from it: ``resolve_data``): unconditional unless asked
    "custom": {"conditional": False, "epochs": None, "steps": 3000},
}

# What the architecture changes in the dataset's defaults. The DCGAN: Adam 1e-3 with betas (0, 0.99), which took
# the unconditional GAN's Frechet distance from 111-122 to 93-101 (ngf = ndf = 32), and a fully connected layer of
# 256 in a narrow critic (ndf 4), which took it to 23-31 at the MLP GAN's wall-clock budget on 2 cores (4,300
# steps; the MLP GAN: 33-37). The convolutions' widths are the best found for that budget on a CPU, not the
# paper's 64 (docs/results-gan.md has the sweeps).
ARCH_DEFAULTS = {
    "mlp": {},
    "dcgan": {"lr_g": 1e-3, "lr_d": 1e-3, "betas": [0.0, 0.99], "ngf": 32, "ndf": 4, "d_fc": 256},
}
# ... and on one dataset. MNIST: the MLP recipe (Adam 5e-4, 6,000 steps), and the DCGAN's run length at its
# wall-clock time
ARCH_DATASET_DEFAULTS = {("mlp", "mnist"): {"lr_g": 5e-4, "lr_d": 5e-4, "steps": 6000},
                         ("dcgan", "mnist"): {"steps": 1900}}

# Shorthands for a setting of both networks: they fill each one not given, and are not saved themselves.
SHORTHANDS = {"slope": ("g_slope", "d_slope"), "dropout": ("g_dropout", "d_dropout")}
# Settings that shape only one architecture's networks: setting them with the other is refused. The DCGAN's
# generator has ReLUs, so of ``slope`` it takes only d_slope.
MLP_ONLY = ("g_hidden", "d_hidden", "g_batchnorm", "d_batchnorm", "bn_eps", "g_dropout", "d_dropout", "dropout",
            "g_slope", "data_scale")
DCGAN_ONLY = ("ngf", "ndf", "d_fc")

PRESET_DEFAULTS = {
    # PyTorch-GAN's MLP GAN (implementations/gan/gan.py): Adam 2e-4 (0.5, 0.999), batch 64, no EMA
    "pytorch-gan": dict(PYTORCH_GAN, arch="mlp", optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=[0.5, 0.999],
                        batch_size=64, ema=0.0, loss="nonsaturating", conditional=False),
    # the case study as its listing and formula write it: 100 binarised digits; G dense 100 -> 128 -> 64 -> 784 and
    # D dense 784 -> 128 -> 64 -> 1, ReLU between them; the minimax loss min_G max_D E[log D(x)] +
    # E[log(1 - D(G(z)))]; Adam 2e-4; nothing else (no EMA, BatchNorm or dropout). The binary pixels are {-1, 1}
    # with a tanh output, the same model as {0, 1} with a sigmoid.
    "article": {"arch": "mlp", "n_train": 100, "binarize": True, "latent": 100, "g_hidden": [128, 64],
                "d_hidden": [128, 64], "g_slope": 0.0, "d_slope": 0.0, "loss": "minimax", "g_batchnorm": False,
                "d_batchnorm": False, "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999],
                "batch_size": 10, "epochs": 100, "steps": None, "ema": 0.0, "eval_samples": 500,
                "conditional": False},
}

# Settings that a resumed run may change (the rest must match the saved run); the length only without a
# learning-rate decay, which is planned over the saved length.
RESUMABLE = ("epochs", "steps", "data", "device", "log_every")
LENGTH = ("epochs", "steps")

# Settings added after runs were saved, with the value that reproduces those runs.
ADDED_SETTINGS = {"data_scale": 1.0, "arch": "mlp", "ngf": 64, "ndf": 64, "d_fc": 0, "label_column": None,
                  "momentum": 0.0, "weight_decay": 0.0, "augment": [], "clip_grad_norm": None,
                  "image_shape": list(MNIST_IMAGE_SHAPE)}


def saved_config(ckpt):
    """A checkpoint's run settings, with ADDED_SETTINGS filled in where the run predates them."""
    return {**ADDED_SETTINGS, **ckpt.get("config", {})}


# ---- configuration ---------------------------------------------------------------------------------------------------
def make_config(**settings):
    """The full settings of a run: BASE, updated by the dataset's defaults, the architecture's, the preset, the
    loss's defaults (and its defaults on this dataset) and finally ``settings`` (None values are ignored). Raises
    ValueError naming any bad or unknown setting. ``slope`` and ``dropout`` set both networks' (SHORTHANDS)."""
    unknown = sorted(set(settings) - set(BASE) - set(SHORTHANDS))
    if unknown:
        raise ValueError(f"unknown GAN setting(s) {unknown}; known: {sorted(BASE)} and {sorted(SHORTHANDS)}")
    given = {k: v for k, v in settings.items() if v is not None and k not in SHORTHANDS}
    for short, keys in SHORTHANDS.items():
        if settings.get(short) is not None:
            given.update({k: settings[short] for k in keys if k not in given})
    dataset = given.get("dataset", BASE["dataset"])
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    preset = given.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if preset is not None and dataset != "mnist":
        raise ValueError(f"preset {preset!r} is an MNIST recipe; it cannot be combined with dataset {dataset!r}")
    cfg = dict(BASE)
    cfg.update(DATASET_DEFAULTS[dataset])
    arch = given.get("arch", PRESET_DEFAULTS.get(preset, {}).get("arch", cfg["arch"]))  # presets are MLP recipes
    cfg.update(ARCH_DEFAULTS.get(arch, {}))  # an unknown arch is refused below
    cfg.update(ARCH_DATASET_DEFAULTS.get((arch, dataset), {}))
    if preset is not None:
        cfg.update(PRESET_DEFAULTS[preset])
    loss = L.get_loss(given.get("loss", cfg["loss"]))
    cfg.update(loss.defaults)
    cfg.update(loss.dataset_defaults.get(dataset, {}))
    if "steps" in given:  # steps replace the epoch count, and the other way round
        cfg["epochs"] = None
    elif "epochs" in given:
        cfg["steps"] = None
    cfg.update(given)
    return _validate(cfg)


def other_arch_settings(arch):
    """The settings that shape the networks of the architecture that is not ``arch``."""
    return MLP_ONLY if arch == "dcgan" else DCGAN_ONLY


def other_arch_error(name, arch, where):
    """The error for a setting ``name`` (as the caller spelled it) of the other architecture than ``arch``."""
    return ValueError(f"{name} sets the {'MLP' if arch == 'dcgan' else 'DCGAN'} networks; it does nothing with "
                      f"{where}")


def check_arch_settings(settings, cfg):
    """Refuse settings the caller gave (``settings``, as named there: ``slope`` is not ``g_slope``) that shape the
    other architecture's networks than the run's (``cfg["arch"]``, which on MNIST is the DCGAN unless asked).
    The one check, for the command line too: the message spells each setting both ways."""
    arch = cfg["arch"]
    unused = [k for k in other_arch_settings(arch)
              if settings.get(k) is not None and settings[k] != BASE.get(k)]  # a full config passes, unchanged
    if unused:
        given = "" if "arch" in settings else f", the default on {cfg['dataset']}"
        name = f"{unused[0]} (--{unused[0].replace('_', '-')})"
        raise other_arch_error(name, arch, f"arch {arch!r}{given} (pass arch 'mlp' or 'dcgan')")


def _validate_arch(cfg):
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"unknown arch {cfg['arch']!r}; expected one of {', '.join(ARCHS)}")
    if cfg["arch"] == "dcgan":
        if cfg["g_dropout"] or cfg["d_dropout"]:
            raise ValueError("dropout sets the MLP networks' hidden layers; arch 'dcgan' has none (use arch 'mlp')")
        if cfg["dataset"] in TOY:
            raise ValueError(f"arch 'dcgan' is a convolutional network for images; the {cfg['dataset']} data are "
                             f"2-D points: use arch 'mlp'")
        if cfg["preset"] is not None:
            raise ValueError(f"preset {cfg['preset']!r} is an MLP recipe; it cannot be combined with arch 'dcgan'")
    cfg["d_fc"] = tu.check_int("d_fc", cfg["d_fc"], low=0)


def _validate(cfg):
    loss = L.get_loss(cfg["loss"])
    remedies.check_remedies(cfg, ("g_dropout", "d_dropout"))
    if cfg["augment"] and cfg["dataset"] in TOY:
        raise ValueError(f"augment crops, flips and rotates images; the {cfg['dataset']} data are 2-D points")
    _validate_arch(cfg)
    if cfg["lr_decay"] not in LR_DECAYS:
        raise ValueError(f"unknown lr_decay {cfg['lr_decay']!r}; expected one of {', '.join(LR_DECAYS)}")
    if cfg["epochs"] is None and cfg["steps"] is None:
        raise ValueError("give the length of the run: epochs or steps")
    for key in ("epochs", "steps", "n_train"):
        cfg[key] = tu.check_int(key, cfg[key], optional=True)
    for key in ("batch_size", "n_critic", "latent", "data_dim", "num_classes", "toy_samples", "eval_samples",
                "log_every", "ngf", "ndf"):
        cfg[key] = tu.check_int(key, cfg[key])
    cfg["image_shape"] = list(check_image_shape("make_config", cfg["image_shape"]))
    cfg["seed"] = tu.check_int("seed", cfg["seed"], low=0)
    for key in ("lr_g", "lr_d", "clip", "bn_eps", "data_scale"):
        cfg[key] = tu.check_number(key, cfg[key], allow_low=False)
    for key in ("gp", "g_slope", "d_slope"):
        cfg[key] = tu.check_number(key, cfg[key])
    for key in ("label_smoothing", "ema"):
        cfg[key] = tu.check_number(key, cfg[key], high=1.0)
    betas = cfg["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or \
            not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    cfg["betas"] = [float(b) for b in betas]
    loss.check_label_smoothing(cfg["label_smoothing"])
    if cfg["dataset"] in TOY:
        if cfg["conditional"]:
            raise ValueError(f"conditional GANs need class labels: the {cfg['dataset']} data has none")
        if cfg["data_dim"] != 2:
            raise ValueError(f"the {cfg['dataset']} data is 2-D; data_dim must be 2, got {cfg['data_dim']}")
    elif cfg["dataset"] == "custom":
        if cfg["arch"] == "dcgan" and cfg["data_dim"] != int(np.prod(cfg["image_shape"])):
            raise ValueError(f"arch 'dcgan' on images of shape (C, H, W) = {tuple(cfg['image_shape'])} needs data_dim "
                             f"{int(np.prod(cfg['image_shape']))}, got data_dim {cfg['data_dim']}")
    elif cfg["data_dim"] != 784:
        raise ValueError(f"MNIST images have 784 pixels; data_dim must be 784, got {cfg['data_dim']}")
    elif tuple(cfg["image_shape"]) != MNIST_IMAGE_SHAPE:
        raise ValueError(f"MNIST images have shape (C, H, W) = {MNIST_IMAGE_SHAPE}; image_shape must be "
                         f"{list(MNIST_IMAGE_SHAPE)}, got {cfg['image_shape']}")
    if loss.per_sample_critic and cfg["d_batchnorm"]:
        raise ValueError(f"{loss.name} penalises the critic's gradient per sample; BatchNorm in the critic mixes the "
                         f"samples of a batch, so use it without d_batchnorm")
    for key in ("conditional", "g_batchnorm", "d_batchnorm", "binarize"):
        cfg[key] = bool(cfg[key])
    for key in ("g_hidden", "d_hidden"):
        cfg[key] = tu.check_widths(key, cfg[key])
    return cfg


# ---- data ------------------------------------------------------------------------------------------------------------
def resolve_data(settings, train_set=None):
    """A run on its own data (``data`` a file or a folder that is not MNIST's, ``dataset="custom"``, or
    ``train_set`` arrays that are not 784-pixel images with labels): ``(settings, ModelData)`` with the settings
    the data fixes (dataset "custom", data_dim, num_classes, the image_shape (C, H, W) of arch 'dcgan'; output
    tanh for bounded data scaled to [-1, 1], linear for unbounded data, standardised). Otherwise ``(settings,
    train_set)`` unchanged."""
    dataset = settings.get("dataset")
    if dataset in TOY:
        return settings, train_set
    own = tu.custom_dataset(settings.get("data"), train_set, settings.get("label_column"), force=dataset == "custom")
    if own is None:
        if dataset == "custom":
            raise ValueError("dataset 'custom' needs data: a file or folder (data=PATH) or train_set arrays")
        return settings, train_set
    prepared, fixed = tu.prepare_own_data(own, (-1.0, 1.0), settings.get("conditional"),
                                          "dcgan" if settings.get("arch") == "dcgan" else None)
    fixed.update(dataset="custom", data_dim=own.features, output="tanh" if prepared.scaling.bounded else "linear")
    if own.num_classes:
        fixed["num_classes"] = own.num_classes
    return tu.settings_from_data(settings, fixed, own), prepared


def load_data(cfg, train_set=None):
    """(x (N, data_dim) float32, labels (N,) int64 or None, description) of the run's training data.

    MNIST: the training set from ``cfg["data"]``, else $TINYGEN_DATA, else the copy shipped with tinygen;
    scaled to [-1, 1] (binarised to {-1, 1} first with ``binarize``), the first ``n_train`` images if set.
    ring / grid: ``toy_samples`` points drawn from the mixture with the run's seed.
    custom: ``train_set`` is the ``ModelData`` of ``resolve_data``; ``n_train`` and ``binarize`` (bounded data:
    the sign in [-1, 1]) apply as on MNIST.
    """
    if isinstance(train_set, ModelData):
        x, labels = train_set.x, train_set.y
        if cfg["n_train"] is not None:
            if cfg["n_train"] > len(x):
                raise ValueError(f"n_train {cfg['n_train']} is more than the {len(x)} examples available")
            x, labels = x[:cfg["n_train"]], None if labels is None else labels[:cfg["n_train"]]
        if cfg["binarize"]:
            if not train_set.scaling.bounded:
                raise ValueError("binarize needs bounded data (a range); this data is unbounded (standardised)")
            x = np.where(x >= 0.0, np.float32(1.0), np.float32(-1.0))
        return x, labels, f"{len(x)} examples from {train_set.dataset.source}"
    if cfg["dataset"] in TOY:
        g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(cfg["seed"], spawn_key=(1,))))
        x = TOY[cfg["dataset"]].sample(cfg["toy_samples"], generator=g)
        return x, None, f"{cfg['toy_samples']} points of the {cfg['dataset']} mixture"
    if train_set is None:
        rec = tu.mnist_split("train", cfg.get("data"))
        images, labels, split = rec.images, rec.labels, rec.split + (" split, the copy shipped with tinygen" if
                                                                     rec.bundled else f" split from {rec.source}")
    else:
        images, labels = train_set
        split = "given arrays"
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    if images.ndim < 2 or int(np.prod(images.shape[1:])) != 784:
        raise ValueError(f"MNIST images must be (N, 28, 28) or (N, 784), got shape {images.shape}")
    if cfg["n_train"] is not None:
        if cfg["n_train"] > len(images):
            raise ValueError(f"n_train {cfg['n_train']} is more than the {len(images)} images available")
        images, labels = images[:cfg["n_train"]], labels[:cfg["n_train"]]
    if cfg["binarize"]:  # a fixed threshold: the same binary digits every epoch
        images = np.where(np.asarray(images, dtype=np.float32) >= (127.5 if images.dtype == np.uint8 else 0.5),
                          np.uint8(255), np.uint8(0))
    x = to_symmetric(images).reshape(len(images), 784)
    return x, labels, f"{len(x)} MNIST images ({split}{', binarised' if cfg['binarize'] else ''})"


# ---- pieces of the loop ----------------------------------------------------------------------------------------------
def make_optimizer(cfg, params, lr):
    """The run's optimizer for one network (``remedies.make_optimizer``: weight decay, momentum, clipping). On a
    GPU, Adam and RMSprop count on the device (capturable), and a decaying learning rate is a float64 0-d tensor
    there, set in place at each step: a compiled step's CUDA graph then takes the whole update."""
    capturable = cfg["device"] != "cpu"
    if capturable and cfg["lr_decay"] != "none":
        lr = as_tensor(float(lr), dtype="float64", device=cfg["device"])
    return remedies.make_optimizer(params, cfg["optimizer"], lr, cfg["betas"], cfg["weight_decay"], cfg["momentum"],
                                   cfg["clip_grad_norm"], capturable)


class EMA:
    """An exponential moving average of a module's parameters (copied buffers), kept in a second module.

    After each update: ema = d * ema + (1 - d) * param with d = min(decay, (1 + t) / (10 + t)) at update t, so the
    average forgets the random initialisation quickly in short runs (TensorFlow's ExponentialMovingAverage with
    num_updates).
    """

    def __init__(self, module, shadow, decay, capturable=None):
        self.module, self.shadow, self.decay = module, shadow, float(decay)
        # capturable: the count of updates kept on the parameters' device (a float64 0-d array), so an update is
        # device work that a CUDA graph can take; None: when the module is on a GPU
        first = next(iter(module.parameters()), None)
        if capturable is None:
            capturable = first is not None and first.device != "cpu"
        self._count = first.xp.zeros((), "float64") if capturable and first is not None else None
        self.updates = 0
        shadow.load_state_dict(module.state_dict())
        shadow.requires_grad_(False)

    @property
    def updates(self):
        """The number of updates made (read from the device when it counts there)."""
        return self._updates if self._count is None else int(self._count)

    @updates.setter
    def updates(self, n):
        if self._count is None:
            self._updates = int(n)
        else:
            self._count.fill(int(n))

    def _graph_key(self):
        """Device work only when the count is on the device: the decay and the arrays the kernels update."""
        if self._count is None:
            return None
        pairs = zip(itertools.chain(self.shadow.parameters(), self.shadow.buffers()),
                    itertools.chain(self.module.parameters(), self.module.buffers()))
        return (self.decay, id(self._count), *((id(e.data), id(p.data)) for e, p in pairs))

    def _decay_at(self, t, minimum):
        """The decay of update t: ``minimum`` is Python's ``min`` for a count on the host, the array module's for
        one on the device."""
        return minimum(self.decay, (1.0 + t) / (10.0 + t))

    @replayed(grads=lambda self: ("reads", ()), graph_key=lambda self: self._graph_key())
    def update(self):
        if self._count is None:
            self._updates += 1
            d = self._decay_at(self._updates, min)
        else:  # on the device (IEEE float64 either way): no host read
            self._count += 1.0
            xp = backend.array_module_of(self._count)
            d = xp.asarray(self._decay_at(self._count, xp.minimum))  # a 0-d array (NumPy's ops give a scalar)
        for e, p in zip(self.shadow.parameters(), self.module.parameters()):
            kernels.get("ema_update", e.data)(e.data, p.data, d)  # e = d * e + (1 - d) * p, in one pass
        for e, b in zip(self.shadow.buffers(), self.module.buffers()):
            e.data[...] = b.data

    def recalibrate(self, batches=10, batch_size=500):
        """Re-estimate the shadow's BatchNorm statistics from its own activations (the buffers copied from the live
        module describe the live weights, not the averaged ones), as for stochastic weight averaging. Draws
        noise from tinygen's generator; a no-op without BatchNorm."""
        recalibrate_batchnorm(self.shadow, batches, batch_size)

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])


def recalibrate_batchnorm(G, batches=10, batch_size=500):
    """Set the running statistics of G's BatchNorm layers to their averages over ``batches`` batches of noise
    (train-mode forward passes without a graph). Returns G; a no-op when G has no BatchNorm."""
    bns = [m for m in G.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if not bns:
        return G
    device = next(G.parameters()).device
    saved = [m.momentum for m in bns]
    was = G.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes
    G.train()
    try:
        with no_grad():
            for _ in range(batches):
                z = _random.randn(batch_size, G.latent_dim, device=device)
                y = _random.randint(0, G.num_classes, (batch_size,), device=device) if G.num_classes else None
                G(z, y) if G.num_classes else G(z)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        G.train(was)
    return G


class _Means:
    """Running sums of named values (the epoch's and the log interval's means), saved in checkpoints."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def state_dict(self):
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state):
        self.sums = {k: float(v) for k, v in state.get("sums", {}).items()}
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}


@replayed(grads=lambda module: ("reads", list(module.parameters())),
          graph_key=lambda module: tuple(map(id, module.parameters())))  # device work: a graph may take it
def _grad_norm(module):
    """The total norm of the module's gradients, a 0-d tensor (array code, so a compiled step calls it again)."""
    return get_total_norm([p.grad for p in module.parameters()])


class GANStep:
    """The updates of one run: ``critic(x, y)`` for each real batch; ``generator()`` after every n_critic of them.
    The loss (``losses.LOSSES[cfg["loss"]]``) supplies both objectives and the critic's penalty and clipping.
    Both return their numbers as 0-d tensors, to read after the update. ``update(x, y, with_generator)`` is the
    trainer's step: a critic update and the generator's, through ``tinygen.compile`` when ``compile``."""

    def __init__(self, cfg, G, D, opt_g, opt_d, ema=None, compile=False):
        self.cfg, self.G, self.D, self.opt_g, self.opt_d, self.ema = cfg, G, D, opt_g, opt_d, ema
        self.loss = L.get_loss(cfg["loss"])
        self._kept = None  # (fake, fake labels, real, real labels) of the last critic update, for the generator's
        # two programs: a critic update alone, and one followed by the generator update on its fakes
        self._critic_only = tu.compiled_step(self.critic, compile)
        self._critic_and_generator = tu.compiled_step(self._both, compile)

    def update(self, x, y=None, with_generator=True):
        """A critic update on the real batch and, ``with_generator``, the generator update on its fakes; returns
        the numbers of both as floats (read here, after the possibly compiled step)."""
        stats = self._critic_and_generator(x, y) if with_generator else self._critic_only(x, y)
        return {k: float(v) for k, v in stats.items()}

    def _both(self, x, y):
        stats = self.critic(x, y, keep_fake=True)
        stats.update(self.generator())
        return stats

    def _noise(self, n, device):
        """z (and fake labels) for n examples: under data parallelism, this rank's rows of the global batch's."""
        z = tu.global_batch_noise(lambda m: _random.randn(m, self.cfg["latent"], device=device), n)
        y = tu.global_batch_noise(lambda m: _random.randint(0, self.cfg["num_classes"], (m,), device=device), n) \
            if self.cfg["conditional"] else None
        return z, y

    def _apply(self, net, x, y):
        return net(x, y) if self.cfg["conditional"] else net(x)

    def critic(self, x, y=None, keep_fake=False):
        """One discriminator update on the real batch x (labels y for a conditional GAN); returns its numbers.
        keep_fake: keep the generator's graph of this batch's fakes for the generator update that follows."""
        cfg, D, loss_fn = self.cfg, self.D, self.loss
        z, yf = self._noise(x.shape[0], x.device)
        if keep_fake:
            fake = self._apply(self.G, z, yf)
            self._kept = (fake, yf, x, y)
        else:
            with no_grad():
                fake = self._apply(self.G, z, yf)
        fake_in = fake.detach()
        real_out, fake_out = self._apply(D, x, y), self._apply(D, fake_in, yf)
        loss = loss_fn.discriminator_loss(real_out, fake_out, cfg["label_smoothing"])
        stats = {}
        if loss_fn.penalty is not None:
            penalty = loss_fn.penalty(D, x, fake_in, y, cfg)
            stats["gp"] = penalty.detach()
            loss = loss + penalty
        self.opt_d.zero_grad()
        loss.backward()
        stats["d_grad"] = _grad_norm(D)
        self.opt_d.step()
        if loss_fn.after_critic_step is not None:
            loss_fn.after_critic_step(D, cfg)
        d_real, d_fake = loss_fn.output_mean_tensors(real_out, fake_out)
        stats.update(d_loss=loss.detach(), d_real=d_real, d_fake=d_fake)
        return stats

    def generator(self, n=None, device="cpu"):
        """One generator update (on the kept fakes of the last critic update, else on a fresh batch of n)."""
        kept, self._kept = self._kept, None
        if kept is None:
            if self.loss.g_needs_real:
                raise ValueError(f"GANStep.generator: the {self.loss.name} loss needs the real batch of a critic "
                                 f"update: call critic(x, y, keep_fake=True) first")
            z, yf = self._noise(n, device)
            kept = (self._apply(self.G, z, yf), yf, None, None)
        fake, yf, x, y = kept
        self.D.requires_grad_(False)  # the generator's loss needs no gradient for D's weights
        # data parallel: nothing of D's to average in this backward
        local_d = self.D.no_sync() if hasattr(self.D, "no_sync") else contextlib.nullcontext()
        try:
            real_out = self._apply(self.D, x, y) if self.loss.g_needs_real else None
            loss = self.loss.generator_loss(self._apply(self.D, fake, yf), real_out)
            self.opt_g.zero_grad()
            with local_d:
                loss.backward()
        finally:
            self.D.requires_grad_(True)
        g_grad = _grad_norm(self.G)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update()
        return {"g_loss": loss.detach(), "g_grad": g_grad}


# ---- sampling and evaluation -----------------------------------------------------------------------------------------
def sample(G, n, labels=None, device="cpu", batch_size=1000):
    """``n`` samples of generator G (eval mode, no graph) as a float32 NumPy array (n, data_dim), drawn with
    tinygen's generator. labels: class per sample for a conditional G (default: the classes in turn)."""
    tu.check_int("number of samples", n)
    if G.num_classes:
        if labels is None:
            labels = np.arange(n) % G.num_classes
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,))
        if labels.min() < 0 or labels.max() >= G.num_classes:
            raise ValueError(f"labels must be in 0..{G.num_classes - 1}, got {labels.min()}..{labels.max()}")
    was = G.training
    G.eval()
    out = []
    try:
        with no_grad():
            for i in range(0, n, batch_size):
                m = min(batch_size, n - i)
                z = _random.randn(m, G.latent_dim, device=device)
                y = as_tensor(np.ascontiguousarray(labels[i:i + m]), device=device) if G.num_classes else None
                x = G(z, y) if G.num_classes else G(z)
                out.append(np.asarray(backend.to_device(x.data, "cpu"), dtype=np.float32))
    finally:
        G.train(was)
    return np.concatenate(out)


def _classifier(quiet=True):
    """The cached MNIST classifier, or None (with a note) when it has not been trained yet."""
    from ..classifier import default_path, load_classifier
    try:
        return load_classifier(train_if_missing=False)
    except FileNotFoundError:
        if not quiet:
            print(f"note: no cached MNIST classifier at {default_path()}, so class coverage is not measured; "
                  f"`tinygen train classifier` builds it", flush=True)
        return None


def frechet_distance_of_data(samples, real, max_full=1024):
    """The Fréchet distance between Gaussians fitted to two sets of vectors (N, D) in the same units: means and
    covariances for D <= ``max_full``, beyond that means and per-feature variances only (a covariance of D^2
    entries and its square root get slow)."""
    from ...metrics import frechet_distance
    a, b = np.asarray(samples, np.float64), np.asarray(real, np.float64)
    if a.shape[1] <= max_full and min(len(a), len(b)) > 1:
        return float(frechet_distance(a, b))
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ((a.std(0) - b.std(0)) ** 2).sum())


def evaluate_samples(cfg, samples, classifier=None, frechet=True, root=None, real=None):
    """Quality metrics of generated samples: MNIST (needs the classifier): coverage, class_kl, inception_score and,
    with ``frechet``, frechet_distance against the real test images; ring/grid: modes, high_quality, reverse_kl;
    custom data: frechet_distance between Gaussians fitted to the samples and to ``real`` (model units)."""
    if cfg["dataset"] == "custom":
        return {"frechet_distance": frechet_distance_of_data(samples, real), "num_samples": len(samples)}
    if cfg["dataset"] in TOY:
        m = TOY[cfg["dataset"]].metrics(samples)
        return {"modes": m["modes"], "num_modes": TOY[cfg["dataset"]].num_modes, "high_quality": m["high_quality"],
                "reverse_kl": m["reverse_kl"], "num_samples": m["num_samples"]}
    from ...metrics import evaluate_images
    return evaluate_images(samples.reshape(len(samples), 28, 28), classifier, value_range=(-1.0, 1.0),
                           reference="test" if frechet else None, root=root)


def scatter_image(points, mixture, size=480, real=None):
    """An RGB picture (size, size, 3) uint8 of 2-D ``points`` (dark blue) over the mixture's centres (grey rings of
    radius 3 std, the high-quality zone) and optional ``real`` points (light grey). No plotting library needed."""
    centres = mixture.centres
    half = float(np.abs(centres).max()) * 1.5
    img = np.full((size, size, 3), 255, dtype=np.uint8)

    def pix(xy):
        xy = np.asarray(xy, dtype=np.float64)
        ok = np.isfinite(xy).all(axis=1)
        col = np.round((xy[ok, 0] + half) / (2 * half) * (size - 1)).astype(np.int64)
        row = np.round((half - xy[ok, 1]) / (2 * half) * (size - 1)).astype(np.int64)
        keep = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        return row[keep], col[keep]

    r, c = pix(np.array([[0.0, 0.0]]))
    if len(r):  # the axes through the origin
        img[r[0], :] = img[:, c[0]] = (225, 225, 225)
    if real is not None:
        r, c = pix(real)
        img[r, c] = (190, 190, 190)
    t = np.linspace(0, 2 * np.pi, 64)
    circle = np.stack([np.cos(t), np.sin(t)], 1) * 3 * mixture.std
    for ctr in centres:
        r, c = pix(ctr + circle)
        img[r, c] = (120, 120, 120)
    r, c = pix(points)
    for dr in (0, 1):  # 2x2 dots
        for dc in (0, 1):
            img[np.clip(r + dr, 0, size - 1), np.clip(c + dc, 0, size - 1)] = (20, 60, 200)
    return img


def save_samples_picture(cfg, path, samples, nrow=None, scaling=None):
    """A PNG of samples: an image grid (MNIST; custom images by their ``scaling``) or a scatter plot over the
    mixture (ring/grid). Returns the path, or None for custom vectors (not pictures)."""
    from ...utils.image import save_image_grid, write_png
    if cfg["dataset"] in TOY:
        return write_png(path, scatter_image(samples, TOY[cfg["dataset"]]))
    n = len(samples)
    nrow = nrow or (cfg["num_classes"] if cfg["conditional"] else int(math.ceil(math.sqrt(n))))
    if scaling is not None:
        return save_image_grid(path, scaling.to_data(samples), nrow=nrow, value_range=scaling.picture_range()) \
            if scaling.kind == "images" else None
    return save_image_grid(path, samples.reshape(n, 28, 28), nrow=nrow, value_range=(-1.0, 1.0))


def plot_curves(steps_log, path):
    """Loss curves, D outputs and gradient norms against the step as a PNG, when matplotlib is installed (returns
    the path, or None without matplotlib or data)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not steps_log:
        return None
    s = [r["step"] for r in steps_log]
    fig = Figure(figsize=(10, 3.2))
    FigureCanvasAgg(fig)
    panels = ((("g_loss", "G loss"), ("d_loss", "D loss")), (("d_real", "D(x)"), ("d_fake", "D(G(z))")),
              (("g_grad", "|grad G|"), ("d_grad", "|grad D|")))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for key, label in panel:
            ax.plot(s, [r.get(key, float("nan")) for r in steps_log], label=label)
        if i == 2:
            ax.set_yscale("log")
        ax.set_xlabel("generator step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def fixed_noise_labels(cfg, n):
    """The run's fixed conditioning for the per-epoch picture: labels 0..9 in turn (conditional) or None."""
    return np.arange(n) % cfg["num_classes"] if cfg["conditional"] else None


# ---- training --------------------------------------------------------------------------------------------------------
def _init_from(path, G, D):
    """--init: start from the generator and discriminator weights of another GAN checkpoint, matched by layer name
    (``remedies.load_by_name``); returns {"generator": report, "discriminator": report}."""
    ckpt = remedies.read_init_checkpoint(path, NAME, "a GAN")
    mods = ckpt["modules"]
    if "generator" not in mods and "discriminator" not in mods:
        raise ValueError(f"--init: '{path}' holds neither a generator nor a discriminator")
    saved = make_config(**{k: v for k, v in saved_config(ckpt).items() if k in BASE})
    sources = {key: remedies.rebuilt(path, key, lambda: build(saved), mods[key])
               for key, build in (("generator", build_generator), ("discriminator", build_discriminator))
               if key in mods}
    return remedies.init_from_modules(path, [("generator", G, sources.get("generator")),
                                             ("discriminator", D, sources.get("discriminator"))])


def train_gan(out=None, resume=False, quiet=False, init=None, train_set=None, pictures=True, sync_bn=False,
              compile=True, **settings):
    """Train a GAN; returns ``(G, D, history)``: the generator used for samples (the EMA copy when ``ema`` > 0),
    the discriminator, and one metrics dict per epoch run in this call.

    settings: see ``BASE`` (and ``make_config``). out: folder for ``checkpoint.npz`` (rewritten atomically after
    every epoch and at the end), ``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (every ``log_every``
    steps), ``samples_NNN.png`` / ``scatter_NNN.png`` each epoch from fixed noise, and ``curves.png`` (matplotlib).
    resume: continue the run saved in ``out`` (same settings; ``epochs``/``steps`` may grow); it ends with the same
    parameters as an uninterrupted run. init: a GAN checkpoint whose G and D weights start this run,
    matched by layer name (``remedies.load_by_name``: what was loaded and skipped is printed unless quiet).
    train_set: ``(images, labels)`` instead of reading MNIST (tests use small subsets), or arrays ``x`` /
    ``(x, labels)`` of any size (see ``resolve_data``); ``data``: a folder holding MNIST, or a .npy/.npz/.csv
    file or a folder of PNG images (``tinygen.data.load_dataset``; ``label_column`` for a CSV).
    Under ``mpiexec -n N`` each process trains on its share of every global batch (``batch_size``, a multiple of
    N); BatchNorm layers keep per-process statistics unless ``sync_bn`` (SyncBatchNorm over the global batch).
    compile: record the updates once with ``tinygen.compile`` and replay them (bitwise the same run as
    ``compile=False``, which runs them eagerly).
    """
    quiet = quiet or not dist.is_main_process()
    settings, train_set = resolve_data(settings, train_set)
    cfg = make_config(**settings)
    check_arch_settings(settings, cfg)
    run = GANRun(cfg, quiet, init, train_set, pictures, sync_bn, compile)
    run.open(out, resume)
    run.announce()
    history = []
    for epoch in run.epochs():
        record = run.train_epoch(epoch)
        run.evaluate(epoch, record)
        history.append(record)
        if not quiet:
            print(format_record(record), flush=True)
        run.save(epoch, record)
    return run.sampler, run.D, history


class GANRun:
    """One run of ``train_gan``: its networks, optimizers, data and counters, and the steps of its loop (train an
    epoch, evaluate, save)."""

    def __init__(self, cfg, quiet=False, init=None, train_set=None, pictures=True, sync_bn=False, compile=True):
        self.cfg, self.quiet, self.pictures, device = cfg, quiet, pictures, cfg["device"]
        x, y, self.desc = load_data(cfg, train_set)
        self.own_data = train_set if isinstance(train_set, ModelData) else None
        # custom data: the sample metric's reference, a fixed subset of the training data
        self.real = None if self.own_data is None else \
            x[np.random.default_rng(cfg["seed"]).permutation(len(x))[:10000]]
        # before seeding: building the classifier draws its (then overwritten) initial weights
        self.classifier = _classifier(quiet) if cfg["dataset"] == "mnist" else None
        _random.manual_seed(cfg["seed"])
        self.G, self.D = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
        self.init_report = None  # --init: what was loaded and skipped (remedies.load_by_name)
        if init is not None:
            self.init_report = _init_from(init, self.G, self.D)
            if not quiet:
                print("\n".join(remedies.format_init_report(init, self.init_report)), flush=True)
        # data parallel: G and D wrapped separately (themselves in a world of one process)
        self.G_net, self.D_net = tu.data_parallel(self.G, sync_bn), tu.data_parallel(self.D, sync_bn)
        self.G, self.D = tu.unwrap(self.G_net), tu.unwrap(self.D_net)
        self.opt_g = make_optimizer(cfg, self.G_net.parameters(), cfg["lr_g"])
        self.opt_d = make_optimizer(cfg, self.D_net.parameters(), cfg["lr_d"])
        self.ema = EMA(self.G, build_generator(cfg).to(device), cfg["ema"]) if cfg["ema"] > 0 else None
        self.sampler = self.ema.shadow if self.ema is not None else self.G
        self.num_train = len(x)
        tu.check_batch_fits(cfg["batch_size"], len(x))
        tu.check_global_batch(cfg["batch_size"], len(x), drop_last=True)
        self.loader = DataLoader((x, y) if cfg["conditional"] else x, batch_size=cfg["batch_size"], shuffle=True,
                                 drop_last=True, seed=cfg["seed"], device=device,
                                 transform=remedies.make_augment(
                                     cfg["augment"], None if self.own_data is None else self.own_data.scaling,
                                     background=-1.0))
        self.step_fn = GANStep(cfg, self.G_net, self.D_net, self.opt_g, self.opt_d, self.ema, compile)
        modules = {"generator": self.G, "discriminator": self.D}
        if self.ema is not None:
            modules["ema"] = self.ema.shadow
        self.parts = {"modules": modules, "optimizers": {"g": self.opt_g, "d": self.opt_d},
                      "loaders": {"train": self.loader}}
        self.state = {"step": 0, "critic_count": 0}
        self.epoch_means, self.interval_means, self.steps_log = _Means(), _Means(), []
        self.folder, self.start_epoch, self.last_plot, self.complete = None, 0, -math.inf, True
        self.max_epochs = cfg["epochs"] if cfg["steps"] is None else None
        self.decay_over = 0  # linear decay: the number of generator steps it spans
        if cfg["lr_decay"] == "linear":
            self.decay_over = cfg["steps"] or self.max_epochs * (len(self.loader) // cfg["n_critic"])

    def open(self, out, resume):
        """Set up the output folder; ``resume``: continue the run saved there."""
        self.folder = tu.RunFolder(out, resume, logs=("metrics", "steps"))
        if not resume:
            return
        ckpt, self.start_epoch = self.folder.restore(self.parts, NAME, check=self._check_resumable)
        extra = ckpt.get("extra", {})
        self.state.update(step=int(extra.get("step", 0)), critic_count=int(extra.get("critic_count", 0)))
        if self.ema is not None:
            self.ema.load_state_dict(extra.get("ema", {"updates": self.state["step"]}))
        self.epoch_means.load_state_dict(extra.get("epoch_means", {}))
        self.interval_means.load_state_dict(extra.get("interval_means", {}))
        if "steps" in self.folder.logs and self.folder.logs["steps"].path.exists():
            self.steps_log = tu.read_metrics(self.folder.logs["steps"].path)

    def _check_resumable(self, ckpt):
        cfg, saved = self.cfg, saved_config(ckpt)
        decays = cfg["lr_decay"] != "none"
        diffs = tu.config_mismatch(saved, cfg, ignore=[k for k in RESUMABLE if not (decays and k in LENGTH)])
        if diffs:
            hint = ""
            if any(k == "arch" for k, _, _ in diffs):
                hint = f"; pass its arch, {saved['arch']!r}" + (" (the default on MNIST is now 'dcgan')"
                                                                 if saved["arch"] == "mlp" else "")
            if decays and any(k in LENGTH for k, _, _ in diffs):
                hint = (f"; its {cfg['lr_decay']} learning-rate decay is planned over steps={saved['steps']}, "
                        f"epochs={saved['epochs']}: resume with those, or start a new run")
            raise ValueError(f"can't resume from '{self.folder.checkpoint}': the settings differ from the saved run ("
                             + "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in diffs) + hint + ")")

    def announce(self):
        cfg, n_critic = self.cfg, self.cfg["n_critic"]
        if not self.quiet and self.own_data is not None:
            print(self.own_data.describe() + f", generator output {cfg['output']}", flush=True)
        if not self.quiet:
            length = f"{cfg['steps']} steps" if cfg["steps"] is not None else f"{self.max_epochs} epochs"
            nets = "DCGAN" if cfg["arch"] == "dcgan" else "MLP GAN"  # the default depends on the data: say which
            print(f"{nets} ({cfg['loss']} loss{', conditional' if cfg['conditional'] else ''}) on {self.desc}: "
                  f"{length}, {len(self.loader)} batches of {self.loader.batch_size} per epoch"
                  + (f", {n_critic} critic steps per generator step" if n_critic > 1 else ""), flush=True)

    def _finished(self):
        return self.cfg["steps"] is not None and self.state["step"] >= self.cfg["steps"]

    def epochs(self):
        """The epochs still to run (counting from the saved run's), until the step count is reached."""
        epochs = itertools.count(self.start_epoch) if self.max_epochs is None else \
            range(self.start_epoch, self.max_epochs)
        for epoch in epochs:
            if self._finished():
                return
            yield epoch

    def train_epoch(self, epoch):
        """One pass over the data (or up to the last step); returns the epoch's record of means and speed."""
        self.G.train()
        self.D.train()
        bar = tu.Progress(len(self.loader), desc=f"gan epoch {epoch + 1}" + (f"/{self.max_epochs}" if
                                                                            self.max_epochs else ""),
                          unit="batch", quiet=self.quiet)
        t0, steps0, batches = time.perf_counter(), self.state["step"], 0
        parallel = dist.world_size() > 1
        for batch in self.loader:
            self.train_batch(epoch, dist.shard(batch) if parallel else batch)
            batches += 1
            m = self.epoch_means.means()
            bar.update(G=m.get("g_loss", float("nan")), D=m.get("d_loss", float("nan")))
            if self._finished():
                break
        bar.close()
        seconds = time.perf_counter() - t0
        self.complete = not self._finished() or self.loader.state_dict()["batch"] == 0
        return _epoch_record(self.cfg, epoch, self.epoch_means, self.state, seconds,
                             batches * self.loader.batch_size, self.state["step"] - steps0, self.complete)

    def train_batch(self, epoch, batch):
        """A critic update on the batch and, after every n_critic of them, a generator update."""
        cfg, state = self.cfg, self.state
        if self.decay_over:  # linear decay to 0 at the last step (a function of the step: nothing to save)
            factor = max(0.0, 1.0 - state["step"] / self.decay_over)
            for opt, lr in ((self.opt_g, cfg["lr_g"]), (self.opt_d, cfg["lr_d"])):
                for group in opt.param_groups:
                    optim.set_lr(group, lr * factor)  # in place when held on the device (a graph reads it)
        x, y = batch if cfg["conditional"] else (batch, None)
        last = state["critic_count"] + 1 == cfg["n_critic"]
        stats = self.step_fn.update(x, y, with_generator=last)
        state["critic_count"] += 1
        if last:
            state["step"] += 1
            state["critic_count"] = 0
        stats = tu.reduce_over_ranks(stats, op="mean")  # the global batch's numbers, alike on every rank
        self.epoch_means.add(**stats)
        self.interval_means.add(**stats)
        if last and state["step"] % cfg["log_every"] == 0:
            rec = dict(epoch=epoch + 1, step=state["step"], **self.interval_means.means())
            self.steps_log.append(rec)
            self.folder.write("steps", rec)
            self.interval_means = _Means()

    def evaluate(self, epoch, record):
        """Sample metrics into ``record`` and the epoch's pictures, from the same noise every epoch."""
        cfg, device, toy = self.cfg, self.cfg["device"], self.cfg["dataset"] in TOY
        with tu.fork_rng(cfg["seed"], (device,)):  # training's random stream is untouched
            if self.ema is not None:
                self.ema.recalibrate()
            samples = sample(self.sampler, cfg["eval_samples"], device=device)
            if toy or self.classifier is not None or self.real is not None:
                record.update(_prefixed(evaluate_samples(cfg, samples, self.classifier, frechet=False,
                                                         real=self.real)))
            scaling = None if self.own_data is None else self.own_data.scaling
            if self.folder.path is not None and self.folder.writes and self.pictures and \
                    (scaling is None or scaling.kind == "images"):
                n_pic = 100 if cfg["conditional"] else 64
                pic = samples if toy else sample(self.sampler, n_pic, fixed_noise_labels(cfg, n_pic), device)
                stem = "scatter" if toy else "samples"
                save_samples_picture(cfg, self.folder.path / f"{stem}_{epoch + 1:03d}.png", pic, scaling=scaling)
                save_samples_picture(cfg, self.folder.path / f"{stem}.png", pic, scaling=scaling)

    def save(self, epoch, record):
        """The epoch's log line, the checkpoint (mid-epoch when the run stopped inside one) and the curves."""
        if self.folder.path is not None:
            self.folder.write("metrics", record)
            extra = {"step": self.state["step"], "critic_count": self.state["critic_count"], "last": record,
                     "num_train": int(self.num_train), "data": self.desc,
                     "epoch_means": (_Means() if self.complete else self.epoch_means).state_dict(),
                     "interval_means": self.interval_means.state_dict()}
            if self.ema is not None:
                extra["ema"] = self.ema.state_dict()
            if self.own_data is not None:  # how samples go back to the data's units and shape
                extra["scaling"] = self.own_data.scaling.state()
            self.folder.save(NAME, self.cfg, epoch + 1 if self.complete else epoch, self.parts,
                             devices=(self.cfg["device"],), extra=extra)
            last_epoch = self._finished() or (self.max_epochs is not None and epoch + 1 == self.max_epochs)
            plot_due = last_epoch or time.perf_counter() - self.last_plot > 30.0  # matplotlib is slow
            if self.pictures and self.folder.writes and plot_due:
                plot_curves(self.steps_log, self.folder.path / "curves.png")
                self.last_plot = time.perf_counter()
        self.epoch_means = _Means()


def _prefixed(metrics):
    skip = ("num_samples", "num_modes")
    return {("sample_" + k): v for k, v in metrics.items() if k not in skip}


def _epoch_record(cfg, epoch, means, state, seconds, images, steps, complete):
    m = means.means()
    rec = {"epoch": epoch + 1, "step": state["step"]}
    for key in ("g_loss", "d_loss", "d_real", "d_fake", "g_grad", "d_grad", "gp"):
        if key in m:
            rec[key] = m[key]
    rec.update(seconds=seconds, steps_per_s=steps / seconds if seconds > 0 else float("nan"),
               images_per_s=images / seconds if seconds > 0 else float("nan"))
    if not complete:
        rec["partial_epoch"] = True
    return rec


def format_record(r):
    """One line of an epoch's numbers, as printed during training."""
    if r.get("partial_epoch"):  # the checkpoint counts complete epochs: say it the same way
        parts = [f"{r['epoch'] - 1} epochs and part of epoch {r['epoch']} (step {r['step']})"]
    else:
        parts = [f"epoch {r['epoch']} (step {r['step']})"]
    for key, label in (("g_loss", "G loss"), ("d_loss", "D loss"), ("d_real", "D(x)"), ("d_fake", "D(G(z))"),
                       ("g_grad", "|grad G|"), ("d_grad", "|grad D|")):
        if key in r:
            parts.append(f"{label} {r[key]:.4g}")
    if "sample_coverage" in r:
        parts.append(f"classes {r['sample_coverage']}/10 (KL {r['sample_class_kl']:.3f}, IS "
                     f"{r['sample_inception_score']:.2f})")
    if "sample_frechet_distance" in r:
        parts.append(f"FD {r['sample_frechet_distance']:.4g}")
    if "sample_modes" in r:
        parts.append(f"modes {r['sample_modes']} ({100 * r['sample_high_quality']:.1f}% high quality, reverse KL "
                     f"{r['sample_reverse_kl']:.3f})")
    parts.append(f"{r['seconds']:.1f}s, {r['steps_per_s']:.1f} steps/s")
    return " | ".join(parts)


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def generator_from_checkpoint(ckpt, device="cpu", use_ema=True):
    """The generator of a GAN checkpoint (the dict ``tinygen.load`` returns), in eval mode: its EMA copy when the
    run kept one and ``use_ema``. Also returns the run's config: ``(G, cfg)``."""
    if not isinstance(ckpt, dict) or ckpt.get("model") != NAME:
        kind = ckpt.get("model") if isinstance(ckpt, dict) else None
        raise ValueError(f"not a GAN checkpoint (it holds model {kind!r})")
    cfg = make_config(**{k: v for k, v in saved_config(ckpt).items() if k in BASE})
    G = build_generator(cfg)
    mods = ckpt.get("modules", {})
    key = "ema" if use_ema and "ema" in mods else "generator"
    if key not in mods:
        raise ValueError(f"the GAN checkpoint holds no generator weights (modules: {sorted(mods)})")
    G.load_state_dict(mods[key])
    return G.to(device).eval(), cfg
