"""DCGAN (Radford et al., 2016) scaled to 1x28x28 images (MNIST), unconditional or label-conditioned.

    G = DCGANGenerator(latent_dim=100, ngf=64)          # z (N, 100) -> tanh images (N, 1, 28, 28)
    D = DCGANDiscriminator(ndf=64)                      # x (N, 1, 28, 28) or (N, 784) -> logits (N,)
    G = DCGANGenerator(100, 64, n_classes=10); G(z, labels)
    G = DCGANGenerator(100, 64, image_shape=(3, 8, 12)) # other images (C, H, W): H and W divisible by 4

The layout of pytorch/examples' ``dcgan`` with one stride-2 stage less (28 = 7 * 2 * 2):
  G: z -> ConvTranspose2d(k7, 1 -> 7) + BN + ReLU -> ConvTranspose2d(k4 s2 p1, 7 -> 14) + BN + ReLU
       -> ConvTranspose2d(k4 s2 p1, 14 -> 28) -> tanh;
  D: Conv2d(k4 s2 p1, 28 -> 14) + LeakyReLU(0.2) -> Conv2d(k4 s2 p1, 14 -> 7) [+ BN] + LeakyReLU(0.2)
       -> Conv2d(k7, 7 -> 1): one logit,
     or with ``hidden=H`` -> Flatten -> Linear(2*ndf*7*7, H) + LeakyReLU(0.2) -> Linear(H, 1), the fully
     connected layer of InfoGAN's MNIST discriminator (without its BatchNorm), which the unconditional GAN on
     MNIST needs (docs/results-gan.md). Linear layers keep PyTorch's default initialisation.
Other images (C, H, W) use the same layers with an (H/4, W/4) kernel in place of k7 and C channels; D also takes
rows (N, H*W*C) in the data's (H, W, C) order (``conv_images``).
Conditional, as in common conditional DCGANs: G concatenates a label embedding to z; D gets the label's embedding
as one more H x W input channel. Weights start as the DCGAN paper's: N(0, 0.02) for the convolutions, BN weights
N(1, 0.02) and biases 0. ``batchnorm=False`` drops D's batch norm, which a gradient penalty (WGAN-GP) needs: the
penalty is per sample, and batch statistics mix the samples.
"""
import numpy as np

from .. import nn
from ..nn import init
from ..ops import cat
from ..tensor import Tensor, as_tensor
from .conv_images import MNIST_IMAGE_SHAPE, check_image_shape, rows_to_images

IMAGE_SHAPE = MNIST_IMAGE_SHAPE  # the default


def dcgan_init_(module):
    """The DCGAN paper's initialisation of one module (use with ``model.apply``)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.weight is not None:
        init.normal_(module.weight, 1.0, 0.02)
        init.zeros_(module.bias)


def _positive_int(who, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _labels(who, labels, n, n_classes, device):
    if labels is None:
        raise ValueError(f"{who}: this model is conditional ({n_classes} classes): pass the labels")
    if not isinstance(labels, Tensor):
        labels = as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    if labels.dtype.kind not in "iu" or tuple(labels.shape) != (n,):
        raise ValueError(f"{who}: labels must be {n} integer class indices, got dtype {labels.dtype} and shape "
                         f"{tuple(labels.shape)}")
    return labels


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) [+ labels (N,)] -> images (N, *image_shape) in [-1, 1]."""

    def __init__(self, latent_dim=100, ngf=64, n_classes=None, embed_dim=None, image_shape=IMAGE_SHAPE):
        super().__init__()
        who = "DCGANGenerator"
        self.image_shape = check_image_shape(who, image_shape)
        channels, h, w = self.image_shape
        self.latent_dim, self.ngf = _positive_int(who, "latent_dim", latent_dim), _positive_int(who, "ngf", ngf)
        self.n_classes = None if n_classes is None else _positive_int(who, "n_classes", n_classes)
        c = 0
        if self.n_classes:
            c = _positive_int(who, "embed_dim", embed_dim if embed_dim is not None else self.n_classes)
            self.label_emb = nn.Embedding(self.n_classes, c)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.latent_dim + c, ngf * 2, (h // 4, w // 4), 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1), nn.Tanh())
        self.net.apply(dcgan_init_)

    def forward(self, z, labels=None):
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"DCGANGenerator: z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        if self.n_classes:
            y = _labels("DCGANGenerator", labels, z.shape[0], self.n_classes, z.device)
            z = cat([z, self.label_emb(y)], 1)
        return self.net(z.reshape(z.shape[0], z.shape[1], 1, 1))

    def extra_repr(self):
        return (f"latent_dim={self.latent_dim}, ngf={self.ngf}" + (f", n_classes={self.n_classes}"
                                                                   if self.n_classes else "")
                + ("" if self.image_shape == IMAGE_SHAPE else f", image_shape={self.image_shape}"))


class DCGANDiscriminator(nn.Module):
    """x (N, *image_shape) or rows (N, H*W*C) in (H, W, C) order [+ labels (N,)] -> logits (N,)."""

    def __init__(self, ndf=64, n_classes=None, batchnorm=True, slope=0.2, image_shape=IMAGE_SHAPE, hidden=0):
        super().__init__()
        who = "DCGANDiscriminator"
        self.image_shape = check_image_shape(who, image_shape)
        channels, h, w = self.image_shape
        self.ndf = _positive_int(who, "ndf", ndf)
        self.hidden = 0 if hidden == 0 else _positive_int(who, "hidden", hidden)
        self.n_classes = None if n_classes is None else _positive_int(who, "n_classes", n_classes)
        self.batchnorm = bool(batchnorm)
        c = 0
        if self.n_classes:
            c = 1  # the label as one more image channel
            self.label_emb = nn.Embedding(self.n_classes, h * w)
        middle = [nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=not batchnorm)]
        if batchnorm:
            middle.append(nn.BatchNorm2d(ndf * 2))
        if self.hidden:  # a fully connected layer between the convolutions and the logit
            head = [nn.Flatten(), nn.Linear(ndf * 2 * (h // 4) * (w // 4), self.hidden), nn.LeakyReLU(slope),
                    nn.Linear(self.hidden, 1)]
        else:
            head = [nn.Conv2d(ndf * 2, 1, (h // 4, w // 4), 1, 0)]
        self.net = nn.Sequential(
            nn.Conv2d(channels + c, ndf, 4, 2, 1), nn.LeakyReLU(slope),
            *middle, nn.LeakyReLU(slope), *head)
        self.net.apply(dcgan_init_)

    def forward(self, x, labels=None):
        n = x.shape[0]
        if x.ndim == 2 and x.shape[1] == int(np.prod(self.image_shape)):
            x = rows_to_images(x, self.image_shape)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"DCGANDiscriminator: x must have shape (N, {', '.join(map(str, self.image_shape))}) "
                             f"or (N, {int(np.prod(self.image_shape))}), got {tuple(x.shape)}")
        if self.n_classes:
            y = _labels("DCGANDiscriminator", labels, n, self.n_classes, x.device)
            x = cat([x, self.label_emb(y).reshape((n, 1) + self.image_shape[1:])], 1)
        return self.net(x).reshape(n)

    def extra_repr(self):
        return (f"ndf={self.ndf}" + (f", n_classes={self.n_classes}" if self.n_classes else "")
                + ("" if self.batchnorm else ", batchnorm=False") + (f", hidden={self.hidden}" if self.hidden else "")
                + ("" if self.image_shape == IMAGE_SHAPE else f", image_shape={self.image_shape}"))
