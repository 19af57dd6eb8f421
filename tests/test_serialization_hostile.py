"""tinygen.load against hostile files: it raises only its documented errors (CheckpointError here), refuses
impossible sizes before allocating, and a mutated checkpoint either loads what was saved or is refused.
Also: temporary files left by a killed save are removed by the next save, never a live writer's."""
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygen
from tinygen import serialization
from tinygen.serialization import CheckpointError, load, save

ROOT = Path(__file__).resolve().parents[1]


def _saved_object():
    tinygen.manual_seed(3)
    w = tinygen.randn(4, 3)
    return {"w": w, "again": w, "b": tinygen.zeros(3, dtype=tinygen.float64), "step": 7, "lr": 0.25,
            "names": ["a", ("b", None)], "mask": np.arange(5, dtype=np.uint8), "flag": True}


def _to_bytes(obj):
    buf = io.BytesIO()
    save(obj, buf)
    return buf.getvalue()


SAVED = _saved_object()
BASE = _to_bytes(SAVED)


def _equal(a, b):
    if isinstance(a, tinygen.Tensor):
        return isinstance(b, tinygen.Tensor) and a.dtype == b.dtype and a.shape == b.shape and \
            a.detach().numpy().tobytes() == b.detach().numpy().tobytes()
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _load_or_refuse(blob):
    """What load gives for ``blob``: the value, or None when it raised CheckpointError (anything else fails)."""
    try:
        return load(io.BytesIO(bytes(blob)))
    except CheckpointError:
        return None


def _members(blob):
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _zip(members, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


def _npy(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _header_json(blob):
    return json.loads(bytes(np.load(io.BytesIO(_members(blob)["__tinygen__.npy"]))).decode("ascii"))


def _with_header(blob, header):
    members = _members(blob)
    members["__tinygen__.npy"] = _npy(np.frombuffer(json.dumps(header).encode("ascii"), dtype=np.uint8))
    return _zip(members)


def _refused(blob, match=""):
    with pytest.raises(CheckpointError, match=match):
        load(io.BytesIO(blob))


def test_the_base_checkpoint_loads():
    assert _equal(SAVED, load(io.BytesIO(BASE)))


# ---- sizes: refused before allocating ------------------------------------------------------------------------------
def _forged_npy(shape, dtype="<f8", payload=b"\0" * 16):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


@pytest.mark.parametrize("shape", [(10 ** 12,), (2 ** 40, 2 ** 40), (3,), (-2,), (1, -5)],
                         ids=["terabytes", "overflowing", "too-few-bytes", "negative", "negative-2d"])
def test_array_header_claiming_another_size_is_refused(shape):
    members = _members(BASE)
    members["a0.npy"] = _forged_npy(shape)
    _refused(_zip(members), r"truncated or corrupted .*claims shape")


def test_object_dtype_entry_is_refused():
    members = _members(BASE)
    members["a0.npy"] = _forged_npy((2,), dtype="|O")
    _refused(_zip(members), "truncated or corrupted")


def test_zip_entry_claiming_more_bytes_than_the_file_holds():
    blob = bytearray(BASE)
    central = blob.find(b"PK\x01\x02")
    blob[central + 20:central + 28] = struct.pack("<II", 2 ** 31, 2 ** 31)  # compressed and uncompressed size
    _refused(bytes(blob), "more than the file holds")


def test_compressed_entries_are_refused():
    _refused(_zip(_members(BASE), zipfile.ZIP_DEFLATED), "compressed with zip method 8")


def test_unknown_compression_method_is_refused():
    blob = bytearray(BASE)
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (at := blob.find(sig, start)) >= 0:
            blob[at + off:at + off + 2] = struct.pack("<H", 99)
            start = at + 4
    _refused(bytes(blob), "compressed with zip method 99")


def test_encrypted_entries_are_refused():
    blob = bytearray(BASE)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (at := blob.find(sig, start)) >= 0:
            blob[at + off] |= 0x1
            start = at + 4
    _refused(bytes(blob), "encrypted")


# ---- the structure: deep, ill-typed ----------------------------------------------------------------------------------
def _nested(depth):
    node = {"t": "none"}
    for _ in range(depth):
        node = {"t": "list", "items": [node]}
    return node


def test_structure_nested_beyond_the_limit_is_refused():
    header = {"format": serialization.FORMAT, "version": serialization.VERSION, "root": _nested(150)}
    _refused(_with_header(BASE, header), "nests deeper than")


def test_json_nested_beyond_the_parsers_recursion_is_refused():
    text = '{"format": "tinygen.checkpoint", "version": 1, "root": ' + "[" * 200_000 + "]" * 200_000 + "}"
    members = _members(BASE)
    members["__tinygen__.npy"] = _npy(np.frombuffer(text.encode("ascii"), dtype=np.uint8))
    _refused(_zip(members), "nests too deeply|corrupted")


def test_a_nesting_within_the_limit_loads():
    header = {"format": serialization.FORMAT, "version": serialization.VERSION, "root": _nested(50)}
    out = load(io.BytesIO(_with_header(BASE, header)))
    for _ in range(50):
        out = out[0]
    assert out is None


ILL_TYPED = {
    "header-a-list": [1, 2],
    "root-a-number": {"format": serialization.FORMAT, "version": 1, "root": 5},
    "type-a-list": {"format": serialization.FORMAT, "version": 1, "root": {"t": ["dict"]}},
    "items-a-number": {"format": serialization.FORMAT, "version": 1, "root": {"t": "list", "items": 3}},
    "items-a-dict": {"format": serialization.FORMAT, "version": 1, "root": {"t": "dict", "items": {"a": 1}}},
    "dict-item-not-pair": {"format": serialization.FORMAT, "version": 1, "root": {"t": "dict", "items": [[1]]}},
    "unhashable-key": {"format": serialization.FORMAT, "version": 1,
                       "root": {"t": "dict", "items": [[{"t": "list", "items": []}, {"t": "none"}]]}},
    "unhashable-tuple-key": {"format": serialization.FORMAT, "version": 1,
                             "root": {"t": "dict", "items": [[{"t": "tuple", "items": [
                                 {"t": "list", "items": []}]}, {"t": "none"}]]}},
    "array-name-a-list": {"format": serialization.FORMAT, "version": 1,
                          "root": {"t": "tensor", "a": ["a0"], "dtype": "<f4", "shape": [4, 3]}},
    "array-name-a-dict": {"format": serialization.FORMAT, "version": 1, "root": {"t": "ndarray", "a": {}}},
    "float-a-list": {"format": serialization.FORMAT, "version": 1, "root": {"t": "float", "v": [1]}},
    "int-a-string": {"format": serialization.FORMAT, "version": 1, "root": {"t": "int", "v": "1"}},
    "version-a-dict": {"format": serialization.FORMAT, "version": {"v": 1}, "root": {"t": "none"}},
    "unknown-type": {"format": serialization.FORMAT, "version": 1, "root": {"t": "pickle"}},
    "header-entry-not-a-name": {"format": serialization.FORMAT, "version": 1,
                                "root": {"t": "ndarray", "a": "__tinygen__", "dtype": "|u1"}},
}


@pytest.mark.parametrize("header", list(ILL_TYPED.values()), ids=list(ILL_TYPED))
def test_ill_typed_structure_is_refused(header):
    _refused(_with_header(BASE, header), "corrupted|checkpoint version")


def test_header_entry_of_another_dtype_is_refused():
    members = _members(BASE)
    members["__tinygen__.npy"] = _npy(np.zeros(3, dtype=np.float32))
    _refused(_zip(members), "not a byte string")


# ---- every zip header field set to extreme values --------------------------------------------------------------------
_FIELDS = {b"PK\x03\x04": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
           b"PK\x01\x02": [(4, 2), (6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2),
                           (34, 2), (38, 4), (42, 4)],
           b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]}


def _field_positions(blob):
    out = []
    for sig, fields in _FIELDS.items():
        start = 0
        while (at := blob.find(sig, start)) >= 0:
            out += [(at + off, width) for off, width in fields if at + off + width <= len(blob)]
            start = at + 4
    return out


FIELD_POSITIONS = _field_positions(BASE)


def test_every_zip_header_field_at_its_extremes():
    assert len(FIELD_POSITIONS) > 50
    for pos, width in FIELD_POSITIONS:
        for value in (0, 1, 2 ** (8 * width) - 1, 2 ** (8 * width - 1)):
            blob = bytearray(BASE)
            blob[pos:pos + width] = value.to_bytes(width, "little")
            out = _load_or_refuse(blob)
            assert out is None or _equal(SAVED, out), (pos, width, value)


# ---- property: a mutated checkpoint loads what was saved, or is refused ---------------------------------------------
@given(st.data())
def test_mutated_checkpoint_loads_the_saved_data_or_is_refused(data):
    blob = bytearray(BASE)
    kind = data.draw(st.sampled_from(["flip", "bytes", "truncate", "field"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(blob) - 1))
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "bytes":
        pos = data.draw(st.integers(0, len(blob) - 1))
        new = data.draw(st.binary(min_size=1, max_size=16))
        blob[pos:pos + len(new)] = new
    elif kind == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    else:
        pos, width = data.draw(st.sampled_from(FIELD_POSITIONS))
        value = data.draw(st.integers(0, 2 ** (8 * width) - 1))
        blob[pos:pos + width] = value.to_bytes(width, "little")
    out = _load_or_refuse(blob)
    assert out is None or _equal(SAVED, out)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) |
    st.sampled_from(["none", "bool", "int", "float", "str", "tensor", "ndarray", "npscalar", "dict", "list",
                     "tuple", "a0", "a1", "__tinygen__", "<f4", "|u1"]) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["t", "a", "v", "items", "dtype", "shape", "requires_grad"]) | st.text(max_size=2),
        inner, max_size=4),
    max_leaves=12)


def _slots(node, out):
    """Every (container, key) in a JSON tree, so one of them can be replaced."""
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            _slots(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            _slots(v, out)
    return out


@given(st.data())
def test_mutated_structure_loads_or_is_refused_with_checkpoint_error(data):
    # the zip is rebuilt with a valid CRC, so a mutation may well describe other valid data: what must hold is
    # that load raises nothing but CheckpointError
    header = _header_json(BASE)
    slots = _slots(header, [])
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = data.draw(st.sampled_from(slots))
        if isinstance(container, list) and data.draw(st.booleans()):
            container.append(data.draw(_json_values))
        else:
            container[key] = data.draw(_json_values)
    _load_or_refuse(_with_header(BASE, header))


# ---- temporary files of interrupted saves -----------------------------------------------------------------------------
_KILLED_SAVE = """
import os, sys, time
import tinygen
from tinygen import serialization

def stall(fd):  # the archive is written; stop before it is renamed into place
    print("written", flush=True)
    time.sleep(60)

serialization.os.fsync = stall
tinygen.save({"w": tinygen.zeros(100000)}, sys.argv[1])
"""


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.skipif(os.name != "posix", reason="kill -9 and process-id liveness are POSIX")
def test_next_save_removes_the_temp_file_of_a_save_killed_with_sigkill(tmp_path):
    target = tmp_path / "model.tg"
    save({"v": 1}, target)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"written"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    left = _temp_files(tmp_path)
    assert len(left) == 1 and f"-{child.pid}-" in left[0]  # the killed writer's temp file, named with its pid
    assert load(target) == {"v": 1}  # the previous checkpoint is intact
    save({"v": 2}, tmp_path / "other.tg")  # any save into the folder cleans up
    assert _temp_files(tmp_path) == [] and load(target) == {"v": 1} and load(tmp_path / "other.tg") == {"v": 2}


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.skipif(os.name != "posix", reason="process-id liveness is POSIX")
def test_cleanup_removes_only_temp_files_whose_writer_is_gone(tmp_path):
    here = serialization._host_tag()
    other_host = "%08x" % ((int(here, 16) + 1) % 2 ** 32)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".a.tg.tgsave-{here}-{_dead_pid()}-abcd1234.tmp",
            "live": f".a.tg.tgsave-{here}-{sleeper.pid}-abcd1234.tmp",
            "mine": f".b.tg.tgsave-{here}-{os.getpid()}-x1y2z3w4.tmp",
            "other-host-recent": f".a.tg.tgsave-{other_host}-{_dead_pid()}-abcd1234.tmp",
            "other-host-old": f".a.tg.tgsave-{other_host}-1-abcd1234.tmp",
            "legacy-recent": ".a.tg.k3j4h5g6.tmp",
            "legacy-old": ".a.tg.q1w2e3r4.tmp",
            "legacy-old-other-target": ".b.tg.q1w2e3r4.tmp",
            "foreign-old": ".notes.txt.tmp",
            "foreign-dir-old": f".c.tg.tgsave-{here}-{_dead_pid()}-abcd1234.tmp/",
        }
        for key, name in names.items():
            path = tmp_path / name.rstrip("/")
            if name.endswith("/"):
                path.mkdir()
            else:
                path.write_bytes(b"partial")
            if key.endswith("old"):
                old = time.time() - 2 * serialization._STALE_AGE_S
                os.utime(path, (old, old))
        removed = serialization.remove_stale_temp_files(tmp_path, "a.tg")
        assert sorted(Path(p).name for p in removed) == sorted(
            names[k] for k in ("dead", "other-host-old", "legacy-old"))
        left = {p.name for p in tmp_path.iterdir()}
        for key in ("live", "mine", "other-host-recent", "legacy-recent", "legacy-old-other-target",
                    "foreign-old", "foreign-dir-old"):
            assert names[key].rstrip("/") in left, key
    finally:
        sleeper.kill()
        sleeper.wait()


def test_save_names_its_temp_file_with_host_and_pid(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)
    monkeypatch.setattr(serialization.os, "replace", spy)
    save({"v": 1}, tmp_path / "m.tg")
    (name,) = seen
    match = serialization._TMP_NAME.match(name)
    assert match and match.group(1) == serialization._host_tag() and int(match.group(2)) == os.getpid()
    assert name.startswith(".m.tg.")
