"""PNG writing with zlib and struct alone, and image grids for looking at samples.

A PNG is an 8-byte signature followed by chunks (length, type, data, CRC-32 of type+data): IHDR (size, bit
depth, colour type), IDAT (the zlib-compressed scanlines, each prefixed by a filter byte) and IEND.
"""
import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .. import backend

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (greyscale, RGB, RGBA)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _to_uint8(array):
    """uint8 as is; bool to 0/255; floats taken to be in [0, 1], clipped and rounded; integers must be 0..255."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError("write_png: the image has NaN or infinite values")
        return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"write_png: integer pixels must be in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    raise TypeError(f"write_png: unsupported pixel dtype {a.dtype}")


def encode_png(array, compression=6):
    """The bytes of an 8-bit PNG of ``array``: (H, W) greyscale, (H, W, 3) RGB or (H, W, 4) RGBA."""
    a = _to_uint8(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    channels = 1 if a.ndim == 2 else (a.shape[2] if a.ndim == 3 else 0)
    if channels not in _COLOUR_TYPE:
        raise ValueError(f"write_png: expected shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"write_png: image must be at least 1x1, got {h}x{w}")
    rows = np.ascontiguousarray(a).reshape(h, w * channels)
    # Filter type 0 (none) on every scanline: a zero byte before each row.
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, compression))
            + _chunk(b"IEND", b""))


def write_png(path, array, compression=6):
    """Write ``array`` ((H, W) greyscale, (H, W, 3) RGB, (H, W, 4) RGBA) as an 8-bit PNG; returns the path.

    uint8 pixels are written as they are, floats are taken to be in [0, 1] (clipped, rounded to 0..255), bools
    become 0/255. The file is written to a temporary name and renamed, so it is never seen half-written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":  # PNG bytes under another name would open as a broken file
        raise ValueError(f"write_png: '{path}' does not end in .png; the picture is a PNG file, name it *.png")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name ending in .png", str(path))
    data = encode_png(array, compression)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: leave nothing half-written behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def _as_images(images):
    """Host array of shape (N, H, W) or (N, H, W, C) from tensors / (N, 1, H, W) / (N, C, H, W) / flat (N, D)."""
    from ..tensor import Tensor  # here, so the PNG writer stays usable on its own
    if isinstance(images, Tensor):
        images = backend.to_device(images.detach().data, "cpu")
    elif backend.is_device_array(images):
        images = images.get()
    x = np.asarray(images)
    if x.ndim == 2:  # flat vectors of a square image, e.g. (N, 784) from an MLP
        side = int(round(x.shape[1] ** 0.5))
        if side * side != x.shape[1]:
            raise ValueError(f"image_grid: flat images of length {x.shape[1]} are not square; reshape to (N, H, W)")
        x = x.reshape(len(x), side, side)
    elif x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
        x = np.moveaxis(x, 1, 3)  # (N, C, H, W) -> (N, H, W, C)
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (3, 4)):
        raise ValueError(f"image_grid: expected images of shape (N, H, W), (N, 1, H, W), (N, C, H, W), "
                         f"(N, H, W, C) or (N, H*W), got {np.shape(images)}")
    return x


def image_grid(images, nrow=8, padding=2, value_range=(0.0, 1.0), pad_value=0.0):
    """Tile images into one picture: ``nrow`` images per row, ``padding`` pixels of ``pad_value`` around each.

    images: (N, H, W) greyscale (or (N, 1, H, W), (N, H*W) square, (N, H, W, 3) colour), NumPy or tensor.
    value_range: the (low, high) that maps to black and white, e.g. (-1, 1) for tanh outputs; values outside are
        clipped. "auto" uses the images' own min and max. uint8 images are taken as 0..255.
    Returns a float32 array in [0, 1] of shape (H', W') (or (H', W', C)); ``pad_value`` is in the output scale.
    """
    x = _as_images(images)
    if len(x) == 0:
        raise ValueError("image_grid: no images")
    if not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"image_grid: nrow must be a positive int, got {nrow!r}")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"image_grid: padding must be a non-negative int, got {padding!r}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    else:
        x = x.astype(np.float32)
        if isinstance(value_range, str):
            if value_range != "auto":
                raise ValueError(f"image_grid: value_range must be (low, high) or 'auto', got {value_range!r}")
            finite = x[np.isfinite(x)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        else:
            lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            hi = lo + 1.0  # a constant image: show it as black rather than divide by zero
        x = np.clip((np.nan_to_num(x, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    n, h, w = x.shape[:3]
    extra = x.shape[3:]
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    p = padding
    # Each cell is the image plus `p` pixels of padding below and to the right; one more strip of padding
    # closes the top and left edges.
    cells = np.full((nrows * ncol, h + p, w + p) + extra, pad_value, dtype=np.float32)
    cells[:n, :h, :w] = x
    body = cells.reshape((nrows, ncol, h + p, w + p) + extra).swapaxes(1, 2)
    body = body.reshape((nrows * (h + p), ncol * (w + p)) + extra)
    out = np.full((nrows * (h + p) + p, ncol * (w + p) + p) + extra, pad_value, dtype=np.float32)
    out[p:, p:] = body
    return out


def save_image_grid(path, images, nrow=8, padding=2, value_range=(0.0, 1.0), pad_value=0.0):
    """``image_grid`` written as an 8-bit PNG at ``path``; returns the path."""
    return write_png(path, image_grid(images, nrow, padding, value_range, pad_value))
