"""``save`` / ``load``: checkpoints of nested dicts, lists and tuples of tensors, arrays and plain values.

The file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays) read with ``allow_pickle=False``: loading a file
can never run code. One entry, ``__tinygen__``, holds a JSON description of the structure (containers, keys,
Python scalars, and which array entry holds each tensor or array); every other entry is one array.

Saving is atomic: the archive is written to a temporary file in the target's directory, flushed to disk, and
only then renamed over the target, so a crash midway never leaves a broken file where a good one was. A writer
killed outright (``kill -9``, power loss) leaves its temporary file behind; its name carries the writer's host and
process id, and the next save into that directory removes such files whose writer is no longer running.
"""
import json
import math
import os
import re
import socket
import struct
import tempfile
import time
import zipfile
import zlib

import numpy as np

from . import backend
from .tensor import Tensor, _make

FORMAT = "tinygen.checkpoint"
VERSION = 1
_HEADER = "__tinygen__"
_ZIP_MAGIC = b"PK\x03\x04"
_STALE_AGE_S = 3600  # a temporary file untouched this long has no live writer (writes take seconds)
_TMP_MARK = "tgsave"
_TMP_NAME = re.compile(r"^\..+\." + _TMP_MARK + r"-([0-9a-f]{8})-(\d+)-[a-z0-9_]+\.tmp$")
_MAX_DEPTH = 100  # containers nested deeper than this are refused (real checkpoints nest a few levels)


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
        if not isinstance(entry, str) or entry == _HEADER or _member(self.archive, entry) is None:
            self.fail(f"the structure refers to a missing array entry {str(entry)[:80]!r}")
        if entry in self._loaded:
            return self._loaded[entry]
        arr = _read_array(self.archive, entry, self.name)
        if arr.dtype.str != node.get("dtype") or ("shape" in node and list(arr.shape) != node["shape"]):
            self.fail(f"array entry {entry!r} has dtype {arr.dtype.str} and shape {list(arr.shape)}, the structure "
                      f"says {node.get('dtype')} and {node.get('shape')}")
        self._loaded[entry] = arr
        return arr

    def decode(self, node, depth=0):
        if not isinstance(node, dict) or not isinstance(node.get("t"), str):
            self.fail(f"unexpected node {str(node)[:80]!r} in the structure")
        if depth > _MAX_DEPTH:
            self.fail(f"the structure nests deeper than {_MAX_DEPTH} levels")
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
            if isinstance(key[1], str) and key in self._loaded:  # the same tensor saved twice loads as one tensor
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
            for item in self.items(node):
                if not isinstance(item, list) or len(item) != 2:
                    self.fail("a dict item is not a [key, value] pair")
                key = self.decode(item[0], depth + 1)
                try:
                    hash(key)
                except TypeError:
                    self.fail(f"a dict key is a {type(key).__name__}, which cannot be a key")
                out[key] = self.decode(item[1], depth + 1)
            return out
        if t in ("list", "tuple"):
            items = [self.decode(v, depth + 1) for v in self.items(node)]
            return tuple(items) if t == "tuple" else items
        self.fail(f"unknown node type {t[:40]!r}")

    def items(self, node):
        items = node.get("items", [])
        if not isinstance(items, list):
            self.fail(f"a {node['t']} node's items are a {type(items).__name__}, not a list")
        return items


# ---- reading the archive: checked before anything is allocated -----------------------------------------------------
def _member(archive, entry):
    """The zip member holding array ``entry`` (as ``numpy.load`` names them: ``entry.npy``), or None."""
    member = entry + ".npy"
    return member if member in archive.NameToInfo else None


def _check_members(archive, name, file_size):
    """Refuse what tinygen.save never writes and zipfile would fail on with other errors: encryption, compression,
    and members claiming more bytes than the file holds."""
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise CheckpointError(f"tinygen.load: '{name}' has an encrypted entry {info.filename[:80]!r}; tinygen "
                                  f"checkpoints are never encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"tinygen.load: '{name}' has entry {info.filename[:80]!r} compressed with zip "
                                  f"method {info.compress_type}; tinygen checkpoints are stored uncompressed")
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > file_size:
            raise CheckpointError(f"tinygen.load: '{name}' is truncated or corrupted (entry {info.filename[:80]!r} "
                                  f"claims {info.file_size} bytes, more than the file holds)")


def _read_array(archive, entry, name):
    """One .npy member as a fresh, writable array. Its header's dtype and shape must account for exactly the
    member's size (so a forged header cannot make us allocate more than the file holds), no pickled objects."""
    info = archive.NameToInfo[_member(archive, entry)]
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"array entry {entry[:80]!r} has .npy format version {version}")
        if dtype.hasobject or dtype.kind in "OV" or dtype.itemsize == 0:
            raise ValueError(f"array entry {entry[:80]!r} has dtype {dtype}, which tinygen never saves")
        count = math.prod(shape)  # Python ints: no overflow
        if any(d < 0 for d in shape) or f.tell() + count * dtype.itemsize != info.file_size:
            raise ValueError(f"array entry {entry[:80]!r} claims shape {shape[:8]} of {dtype} "
                             f"({count * dtype.itemsize} bytes) but holds {info.file_size - f.tell()} bytes")
        arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
        if count:
            buf, done = arr.reshape(-1).view(np.uint8), 0
            while done < buf.size:
                n = f.readinto(buf[done:])
                if not n:
                    raise EOFError(f"array entry {entry[:80]!r} ends early")
                done += n
        if f.read(1):  # also makes zipfile check the entry's CRC
            raise ValueError(f"array entry {entry[:80]!r} is longer than its header says")
    return arr.T if fortran else arr


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
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{_TMP_MARK}-{_host_tag()}-{os.getpid()}-",
                               suffix=".tmp", dir=directory)
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
    remove_stale_temp_files(directory, os.path.basename(path))


def load(f, map_location=None):
    """Load what ``save`` wrote. Tensors come back on the CPU, or on ``map_location`` ("cpu" or "cuda").

    Raises FileNotFoundError for a missing file and ``CheckpointError`` (a ValueError) naming the file for one
    that is not a complete tinygen checkpoint (foreign, truncated or corrupted, compressed or encrypted zip
    entries, structure nested over 100 levels); nothing else, whatever the file holds. Never unpickles
    anything, and never allocates more than the file's own size for its arrays.
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
    if magic != _ZIP_MAGIC:
        what = "it is empty" if not magic else "it does not start as a zip/.npz archive"
        raise CheckpointError(f"tinygen.load: '{name}' is not a tinygen checkpoint ({what})")
    file_size = fh.seek(0, os.SEEK_END)
    fh.seek(start)
    # what a damaged zip or .npy entry can raise inside zipfile and numpy; all mean the same thing here
    broken = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError, struct.error,
              zlib.error, NotImplementedError, RuntimeError, OverflowError)
    try:
        archive = zipfile.ZipFile(fh)
    except broken as e:
        raise CheckpointError(f"tinygen.load: '{name}' is truncated or corrupted (not a readable .npz archive: "
                              f"{e})") from None
    with archive:
        if _member(archive, _HEADER) is None:
            entries = [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
            raise CheckpointError(f"tinygen.load: '{name}' is an .npz archive but was not written by tinygen.save "
                                  f"(it has no '{_HEADER}' entry; entries: {entries[:8]})")
        _check_members(archive, name, file_size)
        try:
            raw = _read_array(archive, _HEADER, name)
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError(f"its '{_HEADER}' entry is not a byte string")
            header = json.loads(raw.tobytes().decode("ascii"))
            if not isinstance(header, dict) or header.get("format") != FORMAT or "root" not in header:
                raise ValueError(f"its '{_HEADER}' entry is not a tinygen structure description")
            if header.get("version") != VERSION:
                raise CheckpointError(f"tinygen.load: '{name}' has checkpoint version "
                                      f"{str(header.get('version'))[:40]}; this tinygen reads version {VERSION}")
            return _Decoder(archive, name, device).decode(header["root"])
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(f"tinygen.load: '{name}' is corrupted: its structure nests too deeply") from None
        except broken as e:
            raise CheckpointError(f"tinygen.load: '{name}' is truncated or corrupted ({type(e).__name__}: "
                                  f"{str(e)[:200]})") from None


def _host_tag():
    """8 hex digits naming this machine, so a process id is only judged on the host it belongs to."""
    return f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')) & 0xFFFFFFFF:08x}"


def _pid_alive(pid):
    if os.name != "posix":  # no harmless liveness probe elsewhere (os.kill terminates on Windows)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by another user
        return True
    return True


def remove_stale_temp_files(directory, basename=None):
    """Remove the temporary files that interrupted saves left in ``directory``; return their paths.

    A temporary file is stale when its writer is gone: the process id in its name is not running on this host,
    or it has not been touched for an hour (a writer on another host, or a recycled process id). The
    unnamed temporary files of older tinygen versions (``.<basename>.XXXXXXXX.tmp``) are removed only after an
    hour, and only for ``basename``. Files of any other naming are never touched. Errors are ignored: cleaning
    up must never make a save fail.
    """
    legacy = re.compile(r"^\." + re.escape(basename) + r"\.[a-z0-9_]{8}\.tmp$") if basename else None
    here, removed, now = _host_tag(), [], time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if m is None and not (legacy and legacy.match(entry.name)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > _STALE_AGE_S
            dead = m is not None and m.group(1) == here and not _pid_alive(int(m.group(2)))
            if old or dead:
                os.unlink(entry.path)
                removed.append(entry.path)
        except (OSError, ValueError, OverflowError):
            continue
    return removed


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
