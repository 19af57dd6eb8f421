"""The GAN's networks: MLP generator and discriminator builders, optionally label-conditioned.

    G = Generator(latent_dim=64, hidden=[256, 512], out_dim=784)          # z (N, 64) -> tanh images (N, 784)
    D = Discriminator(in_dim=784, hidden=[512, 256])                       # x (N, 784) -> logits (N,)
    G = Generator(..., num_classes=10); G(z, labels)                       # conditional GAN (labels via Embedding)

Each hidden layer is Linear -> [BatchNorm1d] -> LeakyReLU -> [Dropout]. ``PYTORCH_GAN`` reproduces the MLP of
the PyTorch-GAN collection (``implementations/gan/gan.py``): G 100-128-256-512-1024-784 with BatchNorm1d(eps=0.8)
after every hidden layer but the first, LeakyReLU 0.2, tanh; D 784-512-256-1 with LeakyReLU 0.2. The
discriminator returns logits (the sigmoid lives in the losses, where it is computed stably).

``scale`` (both networks): G multiplies its output by it and D divides its input by it, so that both work in units
where the data has about unit spread while everything outside them sees data units (the 2-D mixtures span +-2 and
+-4; WGAN-GP's toy experiments normalise them the same way).
"""
import numpy as np

from ... import Tensor, as_tensor, cat, nn
from .. import train_utils as tu
from ..conv_images import images_to_rows
from ..dcgan import IMAGE_SHAPE, DCGANDiscriminator, DCGANGenerator
from .losses import get_loss

OUTPUTS = ("tanh", "linear")
ARCHS = ("mlp", "dcgan")  # the networks' layout: the MLPs below, or the convolutional DCGAN of models/dcgan.py

# Architecture presets: the keys are those of ``build_generator`` / ``build_discriminator`` configs.
PYTORCH_GAN = {"latent": 100, "g_hidden": [128, 256, 512, 1024], "g_batchnorm": True, "bn_eps": 0.8,
               "d_hidden": [512, 256], "d_dropout": 0.0, "g_slope": 0.2, "d_slope": 0.2}


def mlp(in_dim, hidden, out_dim, batchnorm=False, bn_first=True, bn_eps=1e-5, dropout=0.0, slope=0.2):
    """Linear layers in_dim -> hidden... -> out_dim; after each hidden Linear: [BatchNorm1d] LeakyReLU [Dropout].

    batchnorm: add BatchNorm1d(eps=bn_eps) after the hidden layers (after the first one too only if bn_first).
    slope: the LeakyReLU's negative slope; 0 gives a plain ReLU.
    """
    layers, width = [], in_dim
    for i, h in enumerate(hidden):
        layers.append(nn.Linear(width, h))
        if batchnorm and (i > 0 or bn_first):
            layers.append(nn.BatchNorm1d(h, eps=bn_eps))
        layers.append(nn.LeakyReLU(slope) if slope else nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def _labels(labels, n, num_classes, device, who):
    if labels is None:
        raise ValueError(f"this {who} is conditional ({num_classes} classes): pass the labels")
    if not isinstance(labels, Tensor):
        labels = as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{who}: labels must be integers (class indices), got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{who}: labels must have shape ({n},), one per sample, got {tuple(labels.shape)}")
    return labels


class Generator(nn.Module):
    """z (N, latent_dim) [+ labels (N,)] -> samples (N, out_dim): an MLP with a tanh (images in [-1, 1]) or linear
    (2-D points) output.

    num_classes > 0 makes a conditional generator: ``Embedding(num_classes, embed_dim)`` of the label is
    concatenated to z (as PyTorch-GAN's cgan).
    """

    def __init__(self, latent_dim=64, hidden=(256, 512), out_dim=784, batchnorm=False, bn_first=False, bn_eps=1e-5,
                 dropout=0.0, slope=0.2, output="tanh", num_classes=0, embed_dim=None, scale=1.0):
        super().__init__()
        self.scale = tu.check_number("scale", scale, allow_low=False)
        self.latent_dim, self.out_dim = tu.check_int("latent_dim", latent_dim), tu.check_int("out_dim", out_dim)
        self.hidden = tu.check_widths("generator hidden", hidden, allow_empty=True)
        if output not in OUTPUTS:
            raise ValueError(f"unknown generator output {output!r}; expected one of {', '.join(OUTPUTS)}")
        self.output, self.num_classes = output, tu.check_int("num_classes", num_classes, low=0)
        c = 0
        if self.num_classes:
            c = tu.check_int("embed_dim", embed_dim if embed_dim is not None else self.num_classes)
            self.label_emb = nn.Embedding(self.num_classes, c)
        self.net = mlp(self.latent_dim + c, self.hidden, self.out_dim, batchnorm, bn_first, bn_eps,
                       tu.check_number("generator dropout", dropout, high=1.0), slope)

    def forward(self, z, labels=None):
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator: z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        if self.num_classes:
            y = _labels(labels, z.shape[0], self.num_classes, z.device, "Generator")
            z = cat([self.label_emb(y), z], 1)
        out = self.net(z)
        out = out.tanh() if self.output == "tanh" else out
        return out * self.scale if self.scale != 1.0 else out

    def extra_repr(self):
        return (f"latent_dim={self.latent_dim}, out_dim={self.out_dim}, output={self.output}"
                + (f", num_classes={self.num_classes}" if self.num_classes else "")
                + (f", scale={self.scale:g}" if self.scale != 1.0 else ""))


class Discriminator(nn.Module):
    """x (N, in_dim) [+ labels (N,)] -> logits (N,): an MLP with LeakyReLU (and optional dropout/BatchNorm).

    For the sigmoid losses sigmoid(logit) is the probability that x is real; for the Wasserstein and hinge
    losses the raw output is the critic's score. num_classes > 0: the label's embedding is concatenated to x.
    """

    def __init__(self, in_dim=784, hidden=(512, 256), batchnorm=False, bn_eps=1e-5, dropout=0.0, slope=0.2,
                 num_classes=0, embed_dim=None, scale=1.0):
        super().__init__()
        self.scale = tu.check_number("scale", scale, allow_low=False)
        self.in_dim = tu.check_int("in_dim", in_dim)
        self.hidden = tu.check_widths("discriminator hidden", hidden, allow_empty=True)
        self.num_classes = tu.check_int("num_classes", num_classes, low=0)
        c = 0
        if self.num_classes:
            c = tu.check_int("embed_dim", embed_dim if embed_dim is not None else self.num_classes)
            self.label_emb = nn.Embedding(self.num_classes, c)
        self.net = mlp(self.in_dim + c, self.hidden, 1, batchnorm, False, bn_eps,
                       tu.check_number("discriminator dropout", dropout, high=1.0), slope)

    def forward(self, x, labels=None):
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"Discriminator: x must have {self.in_dim} features per sample, got shape "
                             f"{tuple(x.shape)}")
        if self.scale != 1.0:
            x = x * (1.0 / self.scale)
        if self.num_classes:
            y = _labels(labels, x.shape[0], self.num_classes, x.device, "Discriminator")
            x = cat([x, self.label_emb(y)], 1)
        return self.net(x).reshape(x.shape[0])

    def extra_repr(self):
        return (f"in_dim={self.in_dim}" + (f", num_classes={self.num_classes}" if self.num_classes else "")
                + (f", scale={self.scale:g}" if self.scale != 1.0 else ""))


class FlatDCGANGenerator(DCGANGenerator):
    """``DCGANGenerator`` with the trainer's interface: samples flattened to rows (N, H*W*C) in the data's (H, W, C)
    order like the training data, and ``num_classes`` (0: unconditional) as the MLP Generator has it. The
    state_dict is DCGANGenerator's."""

    @property
    def num_classes(self):
        return self.n_classes or 0

    @property
    def out_dim(self):
        return int(np.prod(self.image_shape))

    def forward(self, z, labels=None):
        return images_to_rows(super().forward(z, labels))


def build_generator(cfg):
    """The generator a run's config describes (keys: arch; for mlp latent, g_hidden, data_dim, g_batchnorm, bn_eps,
    g_dropout, g_slope, output, conditional, num_classes, data_scale; for dcgan latent, ngf, conditional,
    num_classes, image_shape)."""
    num_classes = cfg["num_classes"] if cfg["conditional"] else 0
    if cfg.get("arch", "mlp") == "dcgan":
        return FlatDCGANGenerator(cfg["latent"], cfg["ngf"], num_classes or None,
                                  image_shape=cfg.get("image_shape", IMAGE_SHAPE))
    return Generator(cfg["latent"], cfg["g_hidden"], cfg["data_dim"], cfg["g_batchnorm"], False, cfg["bn_eps"],
                     cfg["g_dropout"], cfg["g_slope"], cfg["output"], num_classes, scale=cfg["data_scale"])


def build_discriminator(cfg):
    """The discriminator (critic) a run's config describes (keys: arch; for mlp data_dim, d_hidden, d_batchnorm,
    bn_eps, d_dropout, d_slope, conditional, num_classes, data_scale; for dcgan ndf, d_fc, d_slope, conditional,
    num_classes, loss, image_shape). The DCGAN critic drops its BatchNorm for a loss that penalises it per sample
    (wgan-gp)."""
    num_classes = cfg["num_classes"] if cfg["conditional"] else 0
    if cfg.get("arch", "mlp") == "dcgan":
        per_sample = get_loss(cfg["loss"]).per_sample_critic
        return DCGANDiscriminator(cfg["ndf"], num_classes or None, batchnorm=not per_sample, slope=cfg["d_slope"],
                                  image_shape=cfg.get("image_shape", IMAGE_SHAPE), hidden=cfg.get("d_fc", 0))
    return Discriminator(cfg["data_dim"], cfg["d_hidden"], cfg["d_batchnorm"], cfg["bn_eps"], cfg["d_dropout"],
                         cfg["d_slope"], num_classes, scale=cfg["data_scale"])
