"""Batch augmentations on NumPy arrays, vectorised over the batch and seeded by a NumPy ``Generator``.

Each transform is a callable ``t(x, generator=None)`` on an array of shape (N, H, W) or (N, C, H, W) that returns
a new array of the same shape and dtype; the random parameters are drawn per image (shared by its channels).
Without a ``generator`` it draws from tinygen's CPU generator (seeded by ``tinygen.manual_seed``). ``DataLoader``
passes its own per-batch generator, so augmented epochs are reproducible and resumable.
"""
import numpy as np

from .._checks import check_probability, check_real, is_int


def as_generator(generator=None):
    """A NumPy ``Generator``: the one given, a new one seeded by an int, or tinygen's CPU generator for None."""
    if generator is None:
        from .. import random
        return random.generator("cpu")
    if isinstance(generator, np.random.Generator):
        return generator
    if is_int(generator):
        if generator < 0:
            raise ValueError(f"generator: an int seed must be non-negative, got {generator}")
        return np.random.default_rng(int(generator))
    raise TypeError(f"expected a numpy.random.Generator, an int seed or None, got {type(generator).__name__}")


def _as_batch(x, name):
    """View x as (N, M, H, W) (M = channels, 1 for (N, H, W)) and return it with the original shape."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array of shape (N, H, W) or (N, C, H, W), got "
                        f"{type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expected shape (N, H, W) or (N, C, H, W), got {x.shape}")
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1]), x.shape


def takes_generator(fn):
    """Whether ``fn`` accepts a ``generator`` keyword (then it is passed one; otherwise it is called as fn(x))."""
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == "generator" or p.kind is p.VAR_KEYWORD for p in params)


class Compose:
    """Apply transforms in order, all drawing from the same generator. A step without a ``generator``
    parameter (e.g. ``to_unit``) is called with the array alone."""

    def __init__(self, transforms):
        if not isinstance(transforms, (list, tuple)):
            raise TypeError(f"Compose(): argument 'transforms' must be a list of transforms, not "
                            f"{type(transforms).__name__}")
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")
        self._pass_generator = [takes_generator(t) for t in self.transforms]

    def __call__(self, x, generator=None):
        g = as_generator(generator) if any(self._pass_generator) else None
        for t, pass_g in zip(self.transforms, self._pass_generator):
            x = t(x, generator=g) if pass_g else t(x)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomCrop:
    """Pad each image by ``padding`` pixels of ``fill``, then crop ``size`` (default: the input's size) at a
    random offset per image. ``padding=0`` with the input's size is the identity."""

    def __init__(self, size=None, padding=0, fill=0.0):
        if size is not None:
            size = (size, size) if is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else None
            if size is None or len(size) != 2 or not all(is_int(s) and s >= 1 for s in size):
                raise ValueError(f"RandomCrop: size must be a positive int or (height, width), got {size}")
            size = tuple(int(s) for s in size)
        if not is_int(padding) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be a non-negative int, got {padding!r}")
        check_real(fill, "RandomCrop", "fill")
        self.size, self.padding, self.fill = size, int(padding), fill

    def __call__(self, x, generator=None):
        b, shape = _as_batch(x, "RandomCrop")
        n, m, h, w = b.shape
        ch, cw = self.size or (h, w)
        p = self.padding
        if ch > h + 2 * p or cw > w + 2 * p:
            raise ValueError(f"RandomCrop: crop {ch}x{cw} is larger than the padded image {h + 2 * p}x{w + 2 * p}")
        g = as_generator(generator)
        oy = g.integers(0, h + 2 * p - ch + 1, size=n)
        ox = g.integers(0, w + 2 * p - cw + 1, size=n)
        padded = np.pad(b, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill) if p else b
        # Every crop of every image as a strided view (no copy); pick one per image.
        windows = np.lib.stride_tricks.sliding_window_view(padded, (ch, cw), axis=(2, 3))
        out = windows[np.arange(n), :, oy, ox]  # (N, M, ch, cw): advanced indices first, then the sliced M
        return out.reshape(shape[:-2] + (ch, cw))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p=0.5):
        self.p = check_probability(p, "RandomHorizontalFlip", "p")

    def __call__(self, x, generator=None):
        b, shape = _as_batch(x, "RandomHorizontalFlip")
        flip = as_generator(generator).random(b.shape[0]) < self.p
        out = np.where(flip[:, None, None, None], b[..., ::-1], b)
        return out.reshape(shape)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomRotation:
    """Rotate each image about its centre by an angle drawn uniformly from ``degrees`` (a number d for [-d, d],
    or a (min, max) pair). Positive angles turn counter-clockwise as displayed (row 0 at the top), as
    ``numpy.rot90`` does. ``interpolation``: "bilinear" or "nearest"; pixels from outside the image get ``fill``.
    """

    def __init__(self, degrees=10.0, interpolation="bilinear", fill=0.0):
        if not isinstance(degrees, (tuple, list)):
            degrees = check_real(degrees, "RandomRotation", "degrees")
            if degrees < 0:
                raise ValueError(f"RandomRotation: degrees must be non-negative, got {degrees}")
            degrees = (-degrees, degrees)
        degrees = tuple(check_real(d, "RandomRotation", "degrees") for d in degrees)
        if len(degrees) != 2 or degrees[0] > degrees[1]:
            raise ValueError(f"RandomRotation: degrees must be a number or a (min, max) pair, got {degrees}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"RandomRotation: interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        check_real(fill, "RandomRotation", "fill")
        self.degrees, self.interpolation, self.fill = degrees, interpolation, fill

    def __call__(self, x, generator=None):
        _as_batch(x, "RandomRotation")
        angles = as_generator(generator).uniform(self.degrees[0], self.degrees[1], size=x.shape[0])
        return rotate(x, angles, self.interpolation, self.fill)

    def __repr__(self):
        return f"RandomRotation(degrees={self.degrees}, interpolation={self.interpolation!r})"


def rotate(x, angles, interpolation="bilinear", fill=0.0):
    """Rotate each image of ``x`` ((N, H, W) or (N, C, H, W)) by its angle in degrees (counter-clockwise)."""
    b, shape = _as_batch(x, "rotate")
    n, m, h, w = b.shape
    try:
        theta = np.deg2rad(np.asarray(angles, dtype=np.float64)).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"rotate: angles must be a number or a sequence of numbers (degrees), got "
                        f"{type(angles).__name__}") from None
    if not np.isfinite(theta).all():
        raise ValueError("rotate: angles must be finite")
    check_real(fill, "rotate", "fill")
    if theta.shape[0] not in (1, n):
        raise ValueError(f"rotate: got {theta.shape[0]} angles for {n} images")
    work = np.float64 if x.dtype == np.float64 else np.float32
    theta = np.broadcast_to(theta, (n,))
    cos = np.cos(theta).astype(work)[:, None, None]
    sin = np.sin(theta).astype(work)[:, None, None]
    dy = (np.arange(h, dtype=work) - work((h - 1) / 2))[:, None]
    dx = (np.arange(w, dtype=work) - work((w - 1) / 2))[None, :]
    # Inverse map: the output pixel at offset (dx, dy) from the centre reads the input turned back by -theta.
    # With y pointing down, a counter-clockwise turn on screen is clockwise in (x, y) coordinates.
    sx = cos * dx - sin * dy + work((w - 1) / 2)  # (N, H, W) source coordinates
    sy = sin * dx + cos * dy + work((h - 1) / 2)
    # The source gets a border of `fill` (1 pixel before, 2 after) and coordinates are clamped into it, so
    # every neighbour index is valid and anything read from outside the image is `fill`: no masks needed.
    hp, wp = h + 3, w + 3
    src = np.full((m, n, hp, wp), fill, dtype=work)
    src[:, :, 1:h + 1, 1:w + 1] = np.moveaxis(b, 1, 0)
    src = src.reshape(m, n * hp * wp)
    base = (np.arange(n, dtype=np.intp) * (hp * wp))[:, None, None]
    if interpolation == "nearest":
        iy = np.clip(np.floor(sy + work(0.5)), -1, h).astype(np.intp)
        ix = np.clip(np.floor(sx + work(0.5)), -1, w).astype(np.intp)
        out = np.take(src, base + (iy + 1) * wp + (ix + 1), axis=1)
    else:
        sy, sx = np.clip(sy, -1, h), np.clip(sx, -1, w)
        y0, x0 = np.floor(sy), np.floor(sx)
        fy, fx = sy - y0, sx - x0
        f = base + (y0.astype(np.intp) + 1) * wp + (x0.astype(np.intp) + 1)
        v00, v01, v10, v11 = (np.take(src, f + k, axis=1) for k in (0, 1, wp, wp + 1))
        top = v00 + fx * (v01 - v00)  # exact when fx == 0, so a zero angle gives back the input
        bottom = v10 + fx * (v11 - v10)
        out = top + fy * (bottom - top)
    out = np.moveaxis(out, 0, 1)  # (M, N, H, W) -> (N, M, H, W)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(x.dtype, copy=False).reshape(shape)
