"""MNIST from the four standard IDX files, with strict validation and a copy of both splits shipped in the package.

``mnist(split)`` returns an ``MNIST`` record: ``images`` (N, 28, 28) uint8, ``labels`` (N,) int64, the ``split``
and the ``source`` folder. It unpacks like a pair: ``images, labels = mnist("test")``.

Where the files are looked for, in order: the ``root`` argument, else ``$TINYGEN_DATA`` (each either holding the
files or holding a ``mnist/`` folder with them), else the copy shipped inside the package (``tinygen/data/files``:
both splits, so a fresh offline machine has the data). An explicit ``root`` must hold the split; a
``$TINYGEN_DATA`` that does not hold it falls back to the shipped copy with a warning naming the folder.

IDX format: a big-endian header (magic number, then one uint32 per dimension) followed by the raw bytes. Images
have magic 2051 (0x0803: unsigned bytes, 3 dimensions), labels 2049 (0x0801: unsigned bytes, 1 dimension).
"""
import gzip
import hashlib
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import config

BUNDLED_DIR = Path(__file__).resolve().parent / "files"

SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# SHA-256 of the decompressed IDX files: the content itself, whatever gzip container carries it.
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# SHA-256 of known .gz files: the ones the public mirrors serve, and a re-compressed copy with identical
# content (the one bundled here). A .gz with another hash is still accepted when its content matches RAW_SHA256.
GZ_SHA256 = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                   "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971"),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                   "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203"),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                  "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be"),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                  "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b"),
}


class MNISTFormatError(ValueError):
    """An MNIST file is truncated, not IDX, or disagrees with its partner file."""


class ChecksumError(ValueError):
    """A file's SHA-256 does not match the known one."""


@dataclass(frozen=True, eq=False)
class MNIST:
    """One MNIST split: ``images`` (N, 28, 28) uint8 in 0..255, ``labels`` (N,) int64 in 0..9.

    ``split`` is the split actually loaded ("train" or "test"); ``source`` the folder it came from (for the
    bundled copy, the package's ``files`` folder, with ``bundled`` True). Unpacks as ``images, labels``.
    """
    images: np.ndarray
    labels: np.ndarray
    split: str
    source: str
    bundled: bool = False

    def __iter__(self):
        return iter((self.images, self.labels))

    def __repr__(self):
        where = "bundled copy" if self.bundled else self.source
        return f"MNIST(split={self.split!r}, n={len(self.labels)}, source={where!r})"


# ---- hashing ------------------------------------------------------------------------------------------------------
def sha256_file(path, chunk=1 << 20):
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def read_sha256sums(path):
    """Parse a ``sha256sum``-style file into {file name: hex digest}."""
    sums = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{path}:{lineno}: not a '<sha256>  <file name>' line: {line!r}")
        sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def verify_file(path, expected=None, name=None):
    """Check an MNIST file against known hashes; raise ``ChecksumError`` naming the file on a mismatch.

    ``expected``: a hex digest the file itself must have (e.g. from a SHA256SUMS file). Without it, a ``.gz``
    passes when its hash is a known one or its decompressed content has the known content hash, and a raw IDX
    file passes when its content hash is the known one. ``name``: the standard file name to check against, when
    the file is stored under another one (a download in progress).
    """
    path = Path(path)
    digest = sha256_file(path)
    if expected is not None:
        if digest != expected.lower():
            raise ChecksumError(f"{path}: SHA-256 is {digest}, expected {expected.lower()}")
        return
    name = name or path.name
    if name.endswith(".gz"):
        base = name[:-3]
        if base not in RAW_SHA256:
            raise ChecksumError(f"{path}: no known hash for a file named {name!r}")
        if digest in GZ_SHA256[name]:
            return
        try:
            content = hashlib.sha256(_read_bytes(path, gz=True)).hexdigest()
        except MNISTFormatError as e:
            raise ChecksumError(f"{path}: SHA-256 {digest} is not a known one and the file does not decompress "
                                f"({e})") from None
        if content != RAW_SHA256[base]:
            raise ChecksumError(f"{path}: SHA-256 {digest} is not a known one for {name}, and its decompressed "
                                f"content hashes to {content}, expected {RAW_SHA256[base]}")
        return
    if name not in RAW_SHA256:
        raise ChecksumError(f"{path}: no known hash for a file named {name!r}")
    if digest != RAW_SHA256[name]:
        raise ChecksumError(f"{path}: SHA-256 is {digest}, expected {RAW_SHA256[name]}")


# ---- IDX parsing ----------------------------------------------------------------------------------------------------
def _read_bytes(path, gz=None):
    path = Path(path)
    if gz is None:
        gz = path.name.endswith(".gz")
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise MNISTFormatError(f"{path}: cannot be read as {'gzip' if gz else 'a file'}: "
                               f"{e}") from None


def read_idx(path, magic, ndim):
    """Read one IDX file of unsigned bytes with ``ndim`` dimensions; check its magic number and length."""
    buf = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise MNISTFormatError(f"{path}: {len(buf)} bytes is too short for an IDX header ({header} bytes)")
    got = int.from_bytes(buf[:4], "big")
    if got != magic:
        raise MNISTFormatError(f"{path}: magic number {got} (0x{got:08x}), expected {magic} (0x{magic:08x}); "
                               f"not an MNIST {'image' if magic == IMAGES_MAGIC else 'label'} file")
    dims = tuple(int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(buf) != expected:
        kind = "truncated" if len(buf) < expected else "longer than its header says"
        raise MNISTFormatError(f"{path}: {kind}: header says dimensions {dims} ({expected} bytes in all), "
                               f"file has {len(buf)} bytes")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(folder, base):
    """The .gz or raw file for ``base`` in ``folder`` (the .gz preferred), or None."""
    for name in (base + ".gz", base):
        p = folder / name
        if p.is_file():
            return p
    return None


def load_split(folder, split, verify=False):
    """Read one split from ``folder``; raise naming the missing or broken file. No fallback."""
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    folder = Path(folder)
    paths = []
    for base in SPLITS[split]:
        p = _find_file(folder, base)
        if p is None:
            raise FileNotFoundError(f"MNIST {split} split: neither {base}.gz nor {base} found in {folder}")
        paths.append(p)
    if verify:
        sums_file = folder / "SHA256SUMS"
        sums = read_sha256sums(sums_file) if sums_file.is_file() else {}
        for p in paths:
            verify_file(p, sums.get(p.name))
    images = read_idx(paths[0], IMAGES_MAGIC, 3)
    labels = read_idx(paths[1], LABELS_MAGIC, 1)
    if images.shape[1:] != (28, 28):
        raise MNISTFormatError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise MNISTFormatError(f"MNIST {split} split in {folder}: {paths[0].name} has {len(images)} images but "
                               f"{paths[1].name} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise MNISTFormatError(f"{paths[1]}: label {int(labels.max())} out of range 0..9")
    # frombuffer arrays are read-only views of a bytes object; hand out ordinary arrays.
    return MNIST(images.copy(), labels.astype(np.int64), split, str(folder), folder == BUNDLED_DIR)


def _candidates(root):
    """Folders named by root (or $TINYGEN_DATA): the folder itself and its mnist/ subfolder."""
    if root is None:
        root = config.get("TINYGEN_DATA")
    if root is None:
        return None
    root = Path(root).expanduser()
    return [root, root / "mnist"]


def find_split(split, root=None):
    """The folder holding ``split`` under ``root`` / $TINYGEN_DATA, or None (the bundled copy is not searched)."""
    for folder in _candidates(root) or ():
        if all(_find_file(folder, base) for base in SPLITS[split]):
            return folder
    return None


def mnist(split="train", root=None, verify=False):
    """Load an MNIST split as an ``MNIST`` record (``images`` (N, 28, 28) uint8, ``labels`` (N,) int64).

    root: folder with the IDX files (``.gz`` or raw), or with a ``mnist/`` subfolder holding them; default
        ``$TINYGEN_DATA``. Given explicitly, it must hold the split (``FileNotFoundError`` naming it otherwise).
    verify: check SHA-256 hashes first: against ``SHA256SUMS`` in the folder when it lists the file, else against
        the known hashes built into this module.

    Without ``root`` and ``$TINYGEN_DATA`` the copy shipped with the package is used (``bundled`` is then True);
    a ``$TINYGEN_DATA`` that lacks the split falls back to it with a ``UserWarning`` naming the folder.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    folder = find_split(split, root)
    if folder is not None:
        return load_split(folder, split, verify)
    if root is not None:
        missing = " or ".join(str(c) for c in _candidates(root))
        raise FileNotFoundError(f"MNIST {split} split not found in {missing}: expected "
                                f"{' and '.join(b + '[.gz]' for b in SPLITS[split])}")
    return _shipped(split, verify)


def _shipped(split, verify, looked=None):
    """The shipped copy of ``split``, with one warning when a folder that was named lacks it."""
    env = config.raw("TINYGEN_DATA")
    where = looked or (f"$TINYGEN_DATA ({env})" if env else None)
    if where:
        warnings.warn(f"MNIST {split} split not found in {where}; using the copy shipped with tinygen",
                      UserWarning, stacklevel=3)
    return load_split(BUNDLED_DIR, split, verify)


def mnist_or_bundled(split="train", root=None, verify=False):
    """Like ``mnist``, but an explicit ``root`` that lacks the split also falls back to the shipped copy (with the
    warning naming it) instead of raising. Kept for code written when only the test split shipped."""
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    folder = find_split(split, root)
    if folder is not None:
        return load_split(folder, split, verify)
    looked = " or ".join(str(c) for c in _candidates(root)) if root is not None else None
    return _shipped(split, verify, looked)
