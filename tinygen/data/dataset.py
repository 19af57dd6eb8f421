"""Training data from a file or folder, checked and described: one reader for every trainer.

    ds = load_dataset("points.npy")                 # (N, F) vectors, (N, H, W) or (N, H, W, C) images
    ds = load_dataset("table.csv", label_column="species")
    ds = load_dataset("pictures/")                  # PNG images; one sub-folder per class gives labels
    print(ds.describe())                            # "1000 x 16 float32 from points.npy, range [-3.1, 2.9]"
    x, scaling = ds.scaled((-1.0, 1.0))             # (N, features) float32 in the model's units

Formats:
  .npy      one array: N x features (vectors), N x H x W or N x H x W x C (C = 1, 3 or 4) (images).
  .npz      the array ``x`` (or the only array that is not ``y``) and optional labels ``y`` (N,).
  .csv      numbers, one example a row, comma- (or semicolon-, tab-) separated; a header row is detected (a first
            row with a word where the next row has a number); ``label_column`` (a header name or a 0-based index,
            negative from the end) names the column of class labels, which may be words.
  folder    PNG images (pillow, the ``images`` extra), all of one size, greyscale or RGB: directly in the folder
            (no labels) or one sub-folder per class (the sub-folder names, sorted, are the classes).
Labels of any kind (numbers or words) become class indices 0..K-1 in the sorted order of their values.

Scaling (``Dataset.scaling``) maps the data to the model's units and back, by these rules, in order:
  1. uint8 data (PNG, byte arrays): the range [0, 255];
  2. data within [0, 1]: that range; 3. data within [-1, 1]: that range;
  4. other images: their own [min, max];
  5. other vectors: unbounded; standardised per feature (mean 0, standard deviation 1).
A range maps linearly onto the model's interval (a GAN's tanh output [-1, 1], a Bernoulli VAE's [0, 1]);
unbounded data needs a model with an unbounded output (a linear GAN generator, a Gaussian VAE decoder).
"""
import csv
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._extras import require

IMAGE_CHANNELS = (1, 3, 4)
CSV_DELIMITERS = (",", ";", "\t")


@dataclass
class Dataset:
    """Examples ``x`` (N, *shape) as read, labels ``y`` (N,) int64 class indices or None, and what they are.

    kind: "vectors" (shape (F,)) or "images" (shape (H, W) or (H, W, C)); source: the file or folder;
    classes: the label values (as strings) of indices 0..K-1, or None; columns: a CSV header's feature names."""
    x: np.ndarray
    y: object = None
    kind: str = "vectors"
    source: str = "arrays"
    classes: object = None
    columns: object = None
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self):
        self.low, self.high = float(self.x.min()), float(self.x.max())

    @property
    def shape(self):
        return tuple(self.x.shape[1:])

    @property
    def features(self):
        return int(np.prod(self.shape))

    @property
    def num_classes(self):
        return 0 if self.classes is None else len(self.classes)

    def describe(self):
        """One line: size, dtype, source, range and classes."""
        text = (f"{' x '.join(map(str, self.x.shape))} {self.x.dtype} {self.kind} from {self.source}, "
                f"range [{self.low:.4g}, {self.high:.4g}]")
        return text + (f", {self.num_classes} classes" if self.classes is not None else ", no labels")

    def scaling(self, interval):
        """The ``Scaling`` of this data onto the model's ``interval`` (low, high) by the module's rules."""
        if self.x.dtype == np.uint8:
            bounds = (0.0, 255.0)
        elif self.low >= 0.0 and self.high <= 1.0:
            bounds = (0.0, 1.0)
        elif self.low >= -1.0 and self.high <= 1.0:
            bounds = (-1.0, 1.0)
        elif self.kind == "images":
            bounds = (self.low, self.high if self.high > self.low else self.low + 1.0)
        else:
            flat = self.x.reshape(len(self.x), -1).astype(np.float64)
            std = flat.std(axis=0)
            return Scaling("standard", self.shape, self.kind, mean=flat.mean(axis=0), std=np.where(std > 0, std, 1.0),
                           classes=self.classes, columns=self.columns, source=self.source, dtype=str(self.x.dtype))
        return Scaling("range", self.shape, self.kind, bounds=bounds, interval=interval, classes=self.classes,
                       columns=self.columns, source=self.source, dtype=str(self.x.dtype))

    def scaled(self, interval):
        """``(x, scaling)``: the examples flattened to (N, features) float32 in the model's units, and the map."""
        scaling = self.scaling(interval)
        return scaling.to_model(self.x), scaling

    def for_model(self, interval):
        """The examples in a model's units: a ``ModelData``."""
        x, scaling = self.scaled(interval)
        return ModelData(x, self.y, scaling, self)


@dataclass
class ModelData:
    """Training examples in a model's units: ``x`` (N, features) float32, labels ``y`` (N,) or None, the
    ``scaling`` back to the data and the ``dataset`` they came from."""
    x: np.ndarray
    y: object
    scaling: object
    dataset: Dataset

    def describe(self):
        """The line a trainer prints at the start: the data and how the model sees it."""
        return f"training data: {self.dataset.describe()}; {self.scaling.describe()}"


class Scaling:
    """The map between the data's units and shape and a model's flat vectors, saved in checkpoints (``state``).

    rule "range": ``bounds`` (the data's low, high) map linearly onto ``interval``; rule "standard": per-feature
    (x - mean) / std. ``shape``: one example's shape in the data; ``kind``: "vectors" or "images"."""

    def __init__(self, rule, shape, kind, bounds=None, interval=None, mean=None, std=None, classes=None,
                 columns=None, source="arrays", dtype="float32"):
        if rule not in ("range", "standard"):
            raise ValueError(f"Scaling: unknown rule {rule!r}; expected 'range' or 'standard'")
        self.rule, self.shape, self.kind = rule, tuple(int(s) for s in shape), kind
        self.bounds = None if bounds is None else tuple(float(b) for b in bounds)
        self.interval = None if interval is None else tuple(float(b) for b in interval)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        self.classes = None if classes is None else [str(c) for c in classes]
        self.columns = None if columns is None else [str(c) for c in columns]
        self.source, self.dtype = str(source), str(dtype)

    @property
    def bounded(self):
        return self.rule == "range"

    @property
    def features(self):
        return int(np.prod(self.shape))

    def to_model(self, x):
        """Data (N, *shape) -> model units (N, features) float32."""
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if self.rule == "standard":
            out = (flat - self.mean) / self.std
        else:
            (lo, hi), (a, b) = self.bounds, self.interval
            out = a + (flat - lo) * ((b - a) / (hi - lo))
        return out.astype(np.float32)

    def to_data(self, x):
        """Model units (N, features) -> data units (N, *shape) float32 (ranges clipped to the data's bounds)."""
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), self.features)
        if self.rule == "standard":
            out = flat * self.std + self.mean
        else:
            (lo, hi), (a, b) = self.bounds, self.interval
            out = np.clip(lo + (flat - a) * ((hi - lo) / (b - a)), lo, hi)
        return out.astype(np.float32).reshape(len(x), *self.shape)

    def describe(self):
        if self.rule == "standard":
            return "standardised per feature (unbounded)"
        (lo, hi), (a, b) = self.bounds, self.interval
        return f"[{lo:.4g}, {hi:.4g}] mapped to [{a:g}, {b:g}]"

    def picture_range(self):
        """The (low, high) of data units shown as black and white in a picture of images."""
        return self.bounds if self.bounds is not None else "auto"

    def state(self):
        """Plain values for a checkpoint (``Scaling.from_state`` rebuilds it)."""
        out = {"rule": self.rule, "shape": list(self.shape), "kind": self.kind, "source": self.source,
               "dtype": self.dtype}
        if self.rule == "range":
            out.update(bounds=list(self.bounds), interval=list(self.interval))
        else:
            out.update(mean=self.mean.tolist(), std=self.std.tolist())
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_state(cls, state):
        return cls(state["rule"], state["shape"], state["kind"], bounds=state.get("bounds"),
                   interval=state.get("interval"), mean=state.get("mean"), std=state.get("std"),
                   classes=state.get("classes"), columns=state.get("columns"), source=state.get("source", "arrays"),
                   dtype=state.get("dtype", "float32"))


# ---- checks ------------------------------------------------------------------------------------------------------
def _fail(source, what):
    raise ValueError(f"load_dataset: {source}: {what}")


def _check_examples(x, source):
    """A numeric array of N >= 1 examples of vectors or images, all finite; returns (x, kind)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        _fail(source, f"the data must be numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        _fail(source, f"a {x.ndim}-D array of shape {x.shape}; give N x features (for one feature per example, "
                      f"reshape to (N, 1)), N x H x W or N x H x W x C")
    if x.ndim > 4:
        _fail(source, f"a {x.ndim}-D array of shape {x.shape}; expected N x features, N x H x W or N x H x W x C")
    if x.ndim == 4 and x.shape[3] not in IMAGE_CHANNELS:
        _fail(source, f"images of shape {x.shape} have {x.shape[3]} channels; expected N x H x W x C with C = 1, "
                      f"3 or 4")
    if x.shape[0] == 0 or x.size == 0:
        _fail(source, f"no data (shape {x.shape})")
    if x.dtype.kind == "b":
        x = x.astype(np.uint8)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        _fail(source, f"example {bad[0]} holds {x[tuple(bad)]} (NaN or infinite values are not data)")
    return x, "vectors" if x.ndim == 2 else "images"


def _class_indices(values, n, source):
    """Labels of any kind -> (int64 indices 0..K-1, class names in sorted order of the values)."""
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != n:
        _fail(source, f"labels of shape {values.shape} do not fit {n} examples; give one label per example, "
                      f"shape ({n},)")
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            _fail(source, "labels must be whole numbers or words; found fractional, NaN or infinite values")
        values = values.astype(np.int64)
    elif values.dtype.kind not in "biuUS":
        _fail(source, f"labels must be whole numbers or words, got dtype {values.dtype}")
    names, indices = np.unique(values, return_inverse=True)
    return indices.astype(np.int64).reshape(n), [str(v) for v in names.tolist()]


# ---- readers -----------------------------------------------------------------------------------------------------
def _read_array_file(path):
    source = str(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return data, None
        with data:
            keys = list(data.files)
            others = [k for k in keys if k != "y"]
            if "x" in keys:
                key = "x"
            elif len(others) == 1:
                key = others[0]
            else:
                _fail(source, f"holds arrays {keys}; name the examples 'x' (and the labels 'y')")
            return data[key], (data["y"] if "y" in keys else None)
    except EOFError:
        _fail(source, "the file is empty")
    except (OSError, zipfile.BadZipFile) as e:
        _fail(source, f"not a readable NumPy file ({e})")
    except ValueError as e:  # object arrays need pickle, which a data file has no business using
        if str(e).startswith("load_dataset:"):
            raise
        if not _numpy_header(path):  # NumPy reads any other bytes as a pickle, and says so
            _fail(source, "not a NumPy file: it starts with neither the .npy header nor the .npz (zip) one")
        _fail(source, f"not a plain numeric array ({e})")


def _numpy_header(path):
    """Whether a file starts as a .npy or a .npz (zip) file does."""
    with open(path, "rb") as f:
        head = f.read(6)
    return head == b"\x93NUMPY" or head.startswith(b"PK")


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_csv(path, label_column):
    source = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not a cell
            text = f.read()
    except UnicodeDecodeError:
        _fail(source, "not a text file")
    first = text.split("\n", 1)[0]
    delimiter = next((d for d in CSV_DELIMITERS if d in first), ",")
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(reader)
            if any(c.strip() for c in row)]  # blank lines are not examples
    if not rows:
        _fail(source, "the file is empty")
    width = len(rows[0][1])
    for line, row in rows:
        if len(row) != width:
            _fail(source, f"line {line} has {len(row)} cells, line {rows[0][0]} has {width}: every row needs the "
                          f"same number of columns")
    first, second = rows[0][1], rows[1][1] if len(rows) > 1 else None
    words = [not _is_number(c) for c in first]
    header = all(words) or (second is not None and any(w and _is_number(c) for w, c in zip(words, second)))
    names = first if header else None
    if header:
        rows = rows[1:]
    if not rows:
        _fail(source, "a header row but no rows of data")
    label_index = _label_index(label_column, names, width, source)
    feature_idx = [j for j in range(width) if j != label_index]
    if not feature_idx:
        _fail(source, "the only column is the label column; there are no features")
    cells = [[row[j] for j in feature_idx] for _, row in rows]
    try:
        x = np.array(cells, dtype=np.float64)  # NumPy parses the whole table at once
    except ValueError:
        x = None
    if x is None or not np.isfinite(x).all():  # find the first bad cell, to name it
        for (line, row), values in zip(rows, cells):
            for j, text in zip(feature_idx, values):
                if not _is_number(text):
                    name = f" ({names[j]!r})" if names else ""
                    _fail(source, f"line {line}, column {j}{name}: {text!r} is not a number")
                if not math.isfinite(float(text)):
                    _fail(source, f"line {line}, column {j}: {text!r} (NaN or infinite values are not data)")
    labels = None
    if label_index is not None:
        cells = [row[label_index] for _, row in rows]
        if not all(cells):
            _fail(source, f"line {rows[cells.index('')][0]}: the label cell is empty")
        labels = np.array(cells)
        if all(_is_number(c) for c in cells):
            labels = np.array([float(c) for c in cells])
    columns = [names[j] for j in feature_idx] if names else None
    return x.astype(np.float32), labels, columns


def _label_index(label_column, names, width, source):
    """The CSV column of the labels: a header name, or an index (an int or a string of digits)."""
    if label_column is None:
        return None
    if names is not None and str(label_column) in names:
        return names.index(str(label_column))
    try:
        index = int(label_column)
    except (TypeError, ValueError):
        known = f"the header has {names}" if names else "the file has no header row"
        _fail(source, f"label_column {label_column!r} is neither a column name nor an index ({known})")
    if not -width <= index < width:
        _fail(source, f"label_column {index} is out of range for {width} columns")
    return index % width


def _pillow():
    require("PIL", "images", "load_dataset: reading a folder of PNG images", library="pillow")
    from PIL import Image
    return Image


def _read_png(Image, path):
    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA" if im.mode != "LA" else "LA")
            a = np.asarray(im)
            if (a[..., -1] != 255).any():
                _fail(str(path), "the image has transparent pixels; give greyscale or RGB images")
            a = a[..., :-1]
            return a[..., 0] if a.shape[-1] == 1 else a
        if im.mode in ("1", "L"):
            return np.asarray(im.convert("L"))
        if im.mode in ("RGB", "P", "CMYK", "YCbCr"):
            return np.asarray(im.convert("RGB"))
        _fail(str(path), f"PNG mode {im.mode!r} (e.g. 16-bit) is not supported; give 8-bit greyscale or RGB images")


def _read_png_folder(folder):
    source = str(folder)
    Image = _pillow()
    top = sorted(folder.glob("*.png")) + sorted(folder.glob("*.PNG"))
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if top and subdirs:
        _fail(source, f"holds both PNG files and sub-folders ({subdirs[0].name}/): put every image in a class "
                      f"sub-folder, or none")
    if top:
        groups = [(None, top)]
    else:
        groups = [(d.name, sorted(d.glob("*.png")) + sorted(d.glob("*.PNG"))) for d in subdirs]
        for name, files in groups:
            if not files:
                _fail(source, f"the class folder {name}/ holds no PNG images")
    if not groups:  # nothing to read: as a missing MNIST split is reported
        raise FileNotFoundError(f"load_dataset: {source}: holds no PNG images and no MNIST training split "
                                f"(train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])")
    images, labels, first = [], [], None
    for c, (_, files) in enumerate(groups):
        for path in files:
            a = _read_png(Image, path)
            if first is None:
                first = (path, a.shape)
            elif a.shape[:2] != first[1][:2]:
                _fail(source, f"images of different sizes: {first[0].name} is {first[1][0]}x{first[1][1]}, "
                              f"{path.relative_to(folder)} is {a.shape[0]}x{a.shape[1]}")
            images.append(a)
            labels.append(c)
    if any(a.ndim == 3 for a in images):  # greyscale among colour images: as RGB, so all have one shape
        images = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images]
    x = np.stack(images)
    classes = [name for name, _ in groups] if groups[0][0] is not None else None
    return x, (np.asarray(labels, dtype=np.int64) if classes else None), classes


def is_mnist_folder(path):
    """Whether ``path`` is a folder holding MNIST's training IDX files (itself or its mnist/ sub-folder)."""
    from .mnist import find_split
    path = Path(path).expanduser()
    return path.is_dir() and find_split("train", path) is not None


def load_dataset(path, label_column=None):
    """Read, check and describe the training data at ``path`` (see the module docstring for the formats).

    label_column: for a CSV, the column of class labels (a header name or a 0-based index). Raises
    FileNotFoundError for a missing path, ValueError naming the file and what is wrong with it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"load_dataset: {path}: no such file or folder")
    suffix = path.suffix.lower()
    if label_column is not None and suffix != ".csv":
        _fail(str(path), f"label_column is for CSV files; a {suffix or 'folder'} gives its labels itself")
    classes = columns = None
    if path.is_dir():
        x, labels, classes = _read_png_folder(path)
    elif suffix in (".npy", ".npz"):
        x, labels = _read_array_file(path)
    elif suffix == ".csv":
        x, labels, columns = _read_csv(path, label_column)
    else:
        _fail(str(path), "unknown format; give a .npy, .npz or .csv file or a folder of PNG images")
    return from_arrays(x, labels, source=str(path), classes=classes, columns=columns)


def from_arrays(x, labels=None, source="arrays", classes=None, columns=None):
    """A ``Dataset`` of in-memory arrays, checked as a file's would be (labels of any kind become indices)."""
    x, kind = _check_examples(x, source)
    if x.ndim == 4 and x.shape[3] == 1:  # one channel: greyscale images
        x = x[..., 0]
    y = None
    if labels is not None:
        y, names = _class_indices(labels, len(x), source)
        classes = classes if classes is not None else names
    return Dataset(x, y, kind, source, classes=classes, columns=columns)
