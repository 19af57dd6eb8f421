"""``save`` / ``load``: checkpoints of nested dicts, lists and tuples of tensors, arrays and plain values.

The file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays) read with ``allow_pickle=False``: loading a file
can never run code. One entry, ``__tinygen__``, holds a JSON description of the structure (containers, keys,
Python scalars, and which array entry holds each tensor or array); every other entry is one array.

Saving is atomic: the archive is written to a temporary file in the target's directory, flushed to disk, and
only then renamed over the target, so a crash midway never leaves a broken file where a good one was.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from . import backend
from .tensor import Tensor, _make

FORMAT = "tinygen.checkpoint"
VERSION = 1
_HEADER = "__tinygen__"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A file that is not a readable tinygen checkpoint (foreign, truncated or corrupted)."""


# ---- encoding --------------------------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self):
        self.arrays = {}
        self._seen = {}  # id(tensor or array) -> entry name, so shared objects are stored (and loaded) once
        self._keep = []  # keep encoded objects alive so their ids stay unique while encoding

    def _store(self, obj, host):
        name = self._seen.get(id(obj))
        if name is None:
            name = self._seen[id(obj)] = f"a{len(self.arrays)}"
            self.arrays[name] = host
            self._keep.append(obj)
        return name

    def encode(self, obj, where):
        # bool before int (bool is an int), NumPy scalars before float (np.float64 is a float)
        if obj is None:
            return {"t": "none"}
        if isinstance(obj, bool):
            return {"t": "bool", "v": obj}
        if isinstance(obj, Tensor):
            host = backend.to_device(obj.data, "cpu")
            return {"t": "tensor", "a": self._store(obj, np.asarray(host)), "dtype": host.dtype.str,
                    "shape": list(host.shape), "requires_grad": bool(obj.requires_grad)}
        if isinstance(obj, np.ndarray):
            self._check_dtype(obj.dtype, where)
            return {"t": "ndarray", "a": self._store(obj, obj), "dtype": obj.dtype.str, "shape": list(obj.shape)}
        if isinstance(obj, np.generic):
            self._check_dtype(obj.dtype, where)
            arr = np.asarray(obj)
            self._keep.append(arr)
            return {"t": "npscalar", "a": self._store(arr, arr), "dtype": obj.dtype.str}
        if isinstance(obj, int):
            return {"t": "int", "v": int(obj)}
        if isinstance(obj, float):
            return {"t": "float", "v": float(obj).hex()}  # exact, and NaN/inf safe (JSON has neither)
        if isinstance(obj, str):
            return {"t": "str", "v": obj}
        if isinstance(obj, dict):
            return {"t": "dict", "items": [[self.encode_key(k, where), self.encode(v, f"{where}[{k!r}]")]
                                           for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {"t": "tuple" if isinstance(obj, tuple) else "list",
                    "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        raise TypeError(f"tinygen.save: can't save {where}, an object of type {type(obj).__module__}."
                        f"{type(obj).__qualname__}; checkpoints hold dicts, lists, tuples, tensors, NumPy arrays, "
                        f"numbers, strings, bools and None")

    def encode_key(self, key, where):
        if key is None or isinstance(key, (bool, int, float, str)) and not isinstance(key, np.generic):
            return self.encode(key, where)
        if isinstance(key, tuple):
            return {"t": "tuple", "items": [self.encode_key(k, where) for k in key]}
        raise TypeError(f"tinygen.save: can't save the dict key {key!r} (type {type(key).__name__}) in {where}; "
                        f"keys must be str, int, float, bool, None or tuples of them")

    @staticmethod
    def _check_dtype(dtype, where):
        if dtype.hasobject or dtype.kind in "OV":
            raise TypeError(f"tinygen.save: can't save {where}: arrays of dtype {dtype} need pickle, which "
                            f"checkpoints never use")


# ---- decoding --------------------------------------------------------------------------------------------------------
class _Decoder:
    def __init__(self, archive, name, device):
        self.archive = archive
        self.name = name
        self.device = device
        self._loaded = {}

    def fail(self, why):
        raise CheckpointError(f"tinygen.load: '{self.name}' is corrupted: {why}")

    def array(self, node):
        entry = node.get("a")
        if entry in self._loaded:
            return self._loaded[entry]
        if not isinstance(entry, str) or entry == _HEADER or entry not in self.archive.files:
            self.fail(f"the structure refers to a missing array entry {entry!r}")
        arr = self.archive[entry]
        if arr.dtype.str != node.get("dtype") or ("shape" in node and list(arr.shape) != node["shape"]):
            self.fail(f"array entry {entry!r} has dtype {arr.dtype.str} and shape {list(arr.shape)}, the structure "
                      f"says {node.get('dtype')} and {node.get('shape')}")
        self._loaded[entry] = arr
        return arr

    def decode(self, node):
        if not isinstance(node, dict) or "t" not in node:
            self.fail(f"unexpected node {str(node)[:80]!r} in the structure")
        t = node["t"]
        if t == "none":
            return None
        if t in ("bool", "int", "str"):
            v = node.get("v")
            if type(v) is not {"bool": bool, "int": int, "str": str}[t]:
                self.fail(f"a {t} node holds {v!r}")
            return v
        if t == "float":
            try:
                return float.fromhex(node["v"])
            except (KeyError, TypeError, ValueError):
                self.fail(f"bad float node {node!r}")
        if t == "tensor":
            key = ("tensor", node.get("a"))
            if key in self._loaded:  # the same tensor saved twice loads as one tensor
                return self._loaded[key]
            arr = self.array(node)
            out = _make(backend.to_device(arr, self.device) if self.device != "cpu" else arr, self.device)
            if node.get("requires_grad") and arr.dtype.kind == "f":
                out.requires_grad = True
            self._loaded[key] = out
            return out
        if t == "ndarray":
            return self.array(node)
        if t == "npscalar":
            return self.array(node)[()]
        if t == "dict":
            out = {}
            for item in node.get("items", ()):
                if not isinstance(item, list) or len(item) != 2:
                    self.fail("a dict item is not a [key, value] pair")
                out[self.decode(item[0])] = self.decode(item[1])
            return out
        if t in ("list", "tuple"):
            items = [self.decode(v) for v in node.get("items", ())]
            return tuple(items) if t == "tuple" else items
        self.fail(f"unknown node type {t!r}")


# ---- the public functions --------------------------------------------------------------------------------------------
def save(obj, f):
    """Save ``obj`` (nested dicts/lists/tuples of tensors, NumPy arrays, numbers, strings, bools, None) to ``f``.

    ``f`` is a path (written atomically: a crash midway leaves any previous file intact) or a writable binary
    file object. Tensors are saved from any device and load as CPU tensors of the same dtype, shape, values
    (bitwise) and ``requires_grad``. A tensor that appears twice is stored once and loads as one tensor.
    """
    enc = _Encoder()
    root = enc.encode(obj, "obj")
    header = json.dumps({"format": FORMAT, "version": VERSION, "root": root}, ensure_ascii=True,
                        allow_nan=False).encode("ascii")
    entries = {_HEADER: np.frombuffer(header, dtype=np.uint8)}
    entries.update(enc.arrays)

    if hasattr(f, "write"):
        np.savez(f, allow_pickle=False, **entries)
        return
    path = os.fspath(f)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"tinygen.save: the directory of '{path}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, allow_pickle=False, **entries)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def load(f, map_location=None):
    """Load what ``save`` wrote. Tensors come back on the CPU, or on ``map_location`` ("cpu" or "cuda").

    Raises FileNotFoundError for a missing file and ``CheckpointError`` (a ValueError) naming the file for one
    that is not a complete tinygen checkpoint (foreign, truncated or corrupted). Never unpickles anything.
    """
    device = backend.normalize_device(map_location)
    if hasattr(f, "read"):
        return _load_from(f, getattr(f, "name", "<file object>"), device)
    name = os.fspath(f)
    try:
        fh = open(name, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"tinygen.load: no such file: '{name}'") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"tinygen.load: '{name}' is a directory, not a checkpoint file") from None
    with fh:
        return _load_from(fh, name, device)


def _load_from(fh, name, device):
    start = fh.tell()
    magic = fh.read(len(_ZIP_MAGIC))
    fh.seek(start)
    if magic != _ZIP_MAGIC:
        what = "it is empty" if not magic else "it does not start as a zip/.npz archive"
        raise CheckpointError(f"tinygen.load: '{name}' is not a tinygen checkpoint ({what})")
    try:
        archive = np.load(fh, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"tinygen.load: '{name}' is truncated or corrupted (not a readable .npz archive: "
                              f"{e})") from None
    with archive:
        if _HEADER not in archive.files:
            raise CheckpointError(f"tinygen.load: '{name}' is an .npz archive but was not written by tinygen.save "
                                  f"(it has no '{_HEADER}' entry; entries: {archive.files[:8]})")
        try:
            header = json.loads(bytes(archive[_HEADER]).decode("ascii"))
            if not isinstance(header, dict) or header.get("format") != FORMAT or "root" not in header:
                raise ValueError(f"its '{_HEADER}' entry is not a tinygen structure description")
            if header.get("version") != VERSION:
                raise CheckpointError(f"tinygen.load: '{name}' has checkpoint version {header.get('version')!r}; "
                                      f"this tinygen reads version {VERSION}")
            return _Decoder(archive, name, device).decode(header["root"])
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
            raise CheckpointError(f"tinygen.load: '{name}' is truncated or corrupted ({type(e).__name__}: "
                                  f"{e})") from None


def _file_mode(path):
    """The permission bits a plain ``open(path, 'wb')`` would give (mkstemp makes owner-only files)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
