"""Pieces the image applications (inpaint, superres) share: MNIST digits in [0, 1], checkpoints, grid pictures."""
from pathlib import Path

import numpy as np

from ..data import to_unit
from ..models import train_utils as tu
from ..serialization import load
from ..utils.image import image_grid, write_png

SIDE = 28  # MNIST digits are 28 x 28


def digits(split, n=None, data=None):
    """The first ``n`` (default: all) digits of an MNIST split as ``(images (n, 28, 28) float32 in [0, 1], labels
    (n,) int64)``; ``data``: a folder holding MNIST (default: $TINYGEN_DATA, else the copy shipped with tinygen)."""
    images, labels = tu.mnist_split(split, data)
    if n is not None:
        if n > len(images):
            raise ValueError(f"--n {n} is more than the {len(images)} digits of the MNIST {split} split")
        images, labels = images[:n], labels[:n]
    return to_unit(images), np.asarray(labels, dtype=np.int64)


def check_count(option, value, low=1):
    """A whole number >= low for a command-line option (ValueError naming the option otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{option} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_picture_path(option, path):
    """A path for a PNG picture: refused up front when it does not end in .png (before minutes of work)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{option} {path}: the picture is a PNG file; name it *.png")
    return path


def load_checkpoint(path, app, kinds):
    """The dict of a tinygen checkpoint whose model is one of ``kinds``; ValueError naming the file and what it
    holds otherwise (FileNotFoundError when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{app}: no checkpoint file '{path}'")
    ckpt = load(path)
    kind = ckpt.get("model") if isinstance(ckpt, dict) else None
    if kind not in kinds:
        held = f"a {kind!r} model" if kind else "no model checkpoint"
        raise ValueError(f"{app}: '{path}' holds {held}; expected a checkpoint of {' or '.join(kinds)} "
                         f"(written by {' / '.join(_trainer(k) for k in kinds)})")
    return ckpt


def _trainer(kind):
    return f"tinygen app {kind} train" if kind == "superres" else f"tinygen train {kind}"


def write_rows(path, rows):
    """One PNG of digit rows: ``rows`` is a list of (k, 28, 28) arrays in [0, 1], one grid row each."""
    k = len(rows[0])
    grid = image_grid(np.concatenate([np.asarray(r, dtype=np.float32).reshape(k, SIDE, SIDE) for r in rows]),
                      nrow=k, padding=2, pad_value=0.5)
    return write_png(path, grid)
