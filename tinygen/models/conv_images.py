"""The image layout shared by the convolutional models (``dcgan.py``, the VAE's arch 'conv') on any images.

A run's rows are images flattened in the data's (H, W, C) order (``tinygen.data``); the convolutions work on
(N, C, H, W). The networks halve H and W twice, so both must be divisible by 4. ``image_shape`` is (C, H, W).
"""
import numpy as np

MNIST_IMAGE_SHAPE = (1, 28, 28)
DOWNSCALE = 4  # two stride-2 stages


def check_image_shape(who, image_shape):
    """``image_shape`` as a tuple (C, H, W) of positive ints with H and W divisible by DOWNSCALE, else ValueError
    naming ``who``, the shape and the rule."""
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                                               for s in shape):
        raise ValueError(f"{who}: image_shape must be three positive integers (C, H, W), got {image_shape!r}")
    c, h, w = (int(s) for s in shape)
    if h % DOWNSCALE or w % DOWNSCALE:
        raise ValueError(f"{who}: image_shape (C, H, W) = ({c}, {h}, {w}): H and W must be divisible by "
                         f"{DOWNSCALE} (the network halves them twice)")
    return c, h, w


def data_image_shape(shape, kind, arch, source):
    """The (C, H, W) that convolutional ``arch`` sees a run's data as, from one example's ``shape`` in the data
    ((H, W) or (H, W, C)) and its ``kind``; vectors and images whose H or W is not divisible by DOWNSCALE are
    refused (ValueError naming the data, its shape and the rule)."""
    if kind != "images":
        raise ValueError(f"arch {arch!r} is a convolutional network for images; {source} holds vectors of shape "
                         f"{tuple(shape)}: use arch 'mlp'")
    h, w = shape[:2]
    if h % DOWNSCALE or w % DOWNSCALE:
        raise ValueError(f"arch {arch!r} needs images whose height and width are divisible by {DOWNSCALE} (it "
                         f"halves them twice); {source} holds images of shape {tuple(shape)} (H, W[, C]): crop or "
                         f"pad them, or use arch 'mlp'")
    return (shape[2] if len(shape) == 3 else 1), h, w


def rows_to_images(x, image_shape):
    """Rows (N, H*W*C) in the data's (H, W, C) order -> images (N, C, H, W) (a reshape alone for one channel)."""
    c, h, w = image_shape
    if c == 1:
        return x.reshape(x.shape[0], 1, h, w)
    return x.reshape(x.shape[0], h, w, c).permute(0, 3, 1, 2)


def images_to_rows(x):
    """Images (N, C, H, W) -> rows (N, H*W*C) in the data's (H, W, C) order."""
    if x.shape[1] != 1:
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1)
