"""The 2-D mode-collapse benchmarks of the GAN literature (Unrolled GAN, VEEGAN, PacGAN) and their metrics.

``ring``: 8 Gaussians with std 0.02 at angles 2*pi*k/8 on a circle of radius 2. ``grid``: 25 Gaussians with std 0.05
at {-4, -2, 0, 2, 4}^2. Both have equal weights. Each is a ``GaussianMixture2D``: call it to sample
(``ring(2500, generator)``), read ``.centres`` and ``.std``, and score samples with ``.metrics(samples)``.

``mode_metrics`` scores samples the standard way: a sample is high quality when it lies within 3 std of its
nearest centre; a mode is captured when at least 1% of the samples are high-quality samples nearest to it;
the reverse KL compares the histogram of high-quality samples over modes with the uniform one (PacGAN).
"""
import math

import numpy as np

from .. import backend
from .._checks import check_probability, check_real
from ..tensor import Tensor
from .transforms import as_generator

EVAL_SAMPLES = 2500  # the sample count these metrics are usually reported with


class GaussianMixture2D:
    """An equal-weight mixture of isotropic 2-D Gaussians with a shared ``std``."""

    def __init__(self, centres, std, name="mixture"):
        self.centres = np.asarray(centres, dtype=np.float64)
        if self.centres.ndim != 2 or self.centres.shape[1] != 2 or len(self.centres) == 0:
            raise ValueError(f"{name}: centres must have shape (K, 2), got {self.centres.shape}")
        if not check_real(std, name, "std") > 0:
            raise ValueError(f"{name}: std must be positive, got {std}")
        self.std = float(std)
        self.name = name

    @property
    def num_modes(self):
        return len(self.centres)

    def sample(self, n, generator=None, dtype=np.float32, return_modes=False):
        """``n`` samples as an (n, 2) NumPy array (and each one's mode index with ``return_modes``).

        generator: a NumPy Generator or int seed; default tinygen's CPU generator (follows ``manual_seed``).
        """
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{self.name}: n must be a non-negative int, got {n!r}")
        g = as_generator(generator)
        modes = g.integers(0, self.num_modes, size=int(n))
        x = (self.centres[modes] + self.std * g.standard_normal((int(n), 2))).astype(dtype)
        return (x, modes) if return_modes else x

    __call__ = sample

    def metrics(self, samples, **kwargs):
        """``mode_metrics`` of ``samples`` against this mixture."""
        return mode_metrics(samples, self.centres, self.std, **kwargs)

    def __repr__(self):
        return f"GaussianMixture2D({self.name!r}, modes={self.num_modes}, std={self.std})"


def _ring_centres(k=8, radius=2.0):
    angles = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _grid_centres(values=(-4.0, -2.0, 0.0, 2.0, 4.0)):
    xs, ys = np.meshgrid(values, values, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


ring = GaussianMixture2D(_ring_centres(), std=0.02, name="ring")
grid = GaussianMixture2D(_grid_centres(), std=0.05, name="grid")


def mode_metrics(samples, centres, std, threshold=3.0, min_fraction=0.01):
    """Mode-collapse metrics of 2-D ``samples`` (N, 2) (NumPy array or tensor) against a mixture.

    Returns a dict:
      high_quality: fraction of samples within ``threshold`` * ``std`` of their nearest centre;
      modes: number of modes with at least ``min_fraction`` * N high-quality samples nearest to them;
      reverse_kl: KL(p || uniform) of p = the high-quality samples' histogram over modes (0 when they spread
          evenly, log K when all sit in one mode; infinite when there are none);
      counts: high-quality samples per mode (int array of length K); num_samples: N.
    """
    if isinstance(samples, Tensor):
        samples = backend.to_device(samples.detach().data, "cpu")
    if not check_real(std, "mode_metrics", "std") > 0 or not check_real(threshold, "mode_metrics", "threshold") > 0:
        raise ValueError(f"mode_metrics: std and threshold must be positive, got {std} and {threshold}")
    check_probability(min_fraction, "mode_metrics", "min_fraction")
    try:
        x = np.asarray(samples, dtype=np.float64)
        c = np.asarray(centres, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"mode_metrics: samples and centres must be numeric arrays of shape (N, 2) and (K, 2), "
                        f"got {type(samples).__name__} and {type(centres).__name__}") from None
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"mode_metrics: samples must have shape (N, 2), got {x.shape}")
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"mode_metrics: centres must have shape (K, 2), got {c.shape}")
    n, k = len(x), len(c)
    if n == 0:
        raise ValueError("mode_metrics: no samples")
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)  # (N, K)
    nearest = d2.argmin(axis=1)
    good = d2[np.arange(n), nearest] <= (threshold * std) ** 2
    # Non-finite samples (a diverged generator) count as low quality rather than poisoning the metrics.
    good &= np.isfinite(x).all(axis=1)
    counts = np.bincount(nearest[good], minlength=k).astype(np.int64)
    total = counts.sum()
    if total:
        p = counts[counts > 0] / total
        reverse_kl = float(np.sum(p * np.log(p * k)))
    else:
        reverse_kl = math.inf
    return {"high_quality": float(good.mean()),
            "modes": int((counts >= min_fraction * n).sum()),
            "reverse_kl": reverse_kl,
            "counts": counts,
            "num_samples": n}
