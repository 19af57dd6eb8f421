"""tinygen.save / tinygen.load: exact round trips, atomic writes, and clear errors for bad files."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

import tinygen
from tinygen import serialization
from tinygen.serialization import CheckpointError, load, save


def same_array(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def sample(seed=0):
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f32[0, 0], f32[0, 1], f32[0, 2] = np.nan, np.inf, -0.0
    return {
        "f32": tinygen.tensor(f32),
        "f64": tinygen.tensor(rng.standard_normal((2, 3, 2))),
        "i64": tinygen.tensor(rng.integers(-2 ** 62, 2 ** 62, size=7)),
        "bool": tinygen.tensor(rng.random(5) > 0.5),
        "scalar": tinygen.tensor(3.25, dtype="float64"),
        "empty": tinygen.zeros(0, 3),
        "leaf": tinygen.randn(2, requires_grad=True),
        "array": rng.standard_normal(4).astype(np.float16),
        "u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "np_scalar": np.float32(1.5),
        "numbers": [0, -7, 2 ** 80, 0.1, -0.0, float("inf"), float("nan"), 1e-310, True, False, None],
        "text": ["", "naïve ✓", "line\nbreak"],
        "tuple": (1, (2.0, "three"), []),
        7: {"nested": {None: 1, 2.5: "x", True: [], ("a", 1): {}}},
    }


def check_equal(a, b, where="obj"):
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, tinygen.Tensor):
        assert b.device == "cpu" and same_array(a.detach().cpu().numpy(), b.detach().numpy()), where
        assert a.requires_grad == b.requires_grad, where
    elif isinstance(a, np.ndarray):
        assert same_array(a, b), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            check_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            check_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a.hex() == b.hex(), where  # bitwise, NaN and -0.0 included
    else:
        assert a == b, where


def test_round_trip_is_exact(tmp_path):
    obj = sample()
    save(obj, tmp_path / "a.tg")
    back = load(tmp_path / "a.tg")
    check_equal(obj, back)
    back["f64"].data += 1  # loaded tensors own writable memory
    assert back["leaf"].requires_grad and back["leaf"].is_leaf


def test_str_path_and_file_objects(tmp_path):
    obj = {"w": tinygen.arange(5), "n": 3}
    save(obj, str(tmp_path / "b.ckpt"))
    assert os.listdir(tmp_path) == ["b.ckpt"]  # saved under exactly that name (no .npz appended)
    check_equal(obj, load(str(tmp_path / "b.ckpt")))
    buf = io.BytesIO()
    save(obj, buf)
    buf.seek(0)
    check_equal(obj, load(buf))


def test_shared_tensors_stay_shared(tmp_path):
    t = tinygen.randn(3)
    save({"a": t, "b": [t, t]}, tmp_path / "s.tg")
    back = load(tmp_path / "s.tg")
    assert back["a"] is back["b"][0] is back["b"][1]
    with zipfile.ZipFile(tmp_path / "s.tg") as z:
        assert len(z.namelist()) == 2  # the structure and one array


def test_device_tensors_load_on_cpu_or_on_map_location(tmp_path, device):
    t = tinygen.randn(2, 3, device=device)
    save({"t": t}, tmp_path / "d.tg")
    back = load(tmp_path / "d.tg")["t"]
    assert back.device == "cpu" and same_array(back.numpy(), t.cpu().numpy())
    moved = load(tmp_path / "d.tg", map_location=device)["t"]
    assert moved.device == device and same_array(moved.cpu().numpy(), t.cpu().numpy())


def test_unsupported_objects_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"obj\['x'\]\[1\], an object of type builtins.set"):
        save({"x": [1, {2}]}, tmp_path / "u.tg")
    with pytest.raises(TypeError, match="dtype object"):
        save({"x": np.array([None, 1])}, tmp_path / "u.tg")
    with pytest.raises(TypeError, match="dict key"):
        save({object(): 1}, tmp_path / "u.tg")
    assert os.listdir(tmp_path) == []


def test_no_pickle_anywhere(tmp_path):
    save(sample(), tmp_path / "p.tg")
    with zipfile.ZipFile(tmp_path / "p.tg") as z:
        header = json.loads(np.load(z.open("__tinygen__.npy")).tobytes())
        assert header["format"] == "tinygen.checkpoint"
        for name in z.namelist():
            arr = np.lib.format.read_array(z.open(name), allow_pickle=False)  # would raise on pickled data
            assert not arr.dtype.hasobject


# ---- atomic writes ---------------------------------------------------------------------------------------------------
def _fail_on_call(monkeypatch, target, name, n, exc):
    calls = []
    real = getattr(target, name)

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)
    monkeypatch.setattr(target, name, flaky)
    return calls


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_failed_save_midway_keeps_the_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.tg"
    good = {"w": tinygen.randn(50), "b": tinygen.randn(3), "step": 1}
    save(good, path)
    old_bytes = path.read_bytes()
    # fail while writing the second array into the archive: the temporary file is half written
    calls = _fail_on_call(monkeypatch, np.lib.format, "write_array", 3, exc)
    with pytest.raises(type(exc)):
        save({"w": tinygen.randn(50), "b": tinygen.randn(3), "step": 2}, path)
    assert len(calls) == 3
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.tg"]  # no temporary file left behind
    assert path.read_bytes() == old_bytes
    check_equal(good, load(path))


def test_failed_flush_to_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.tg"
    save({"v": 1}, path)
    calls = _fail_on_call(monkeypatch, os, "fsync", 1, OSError("I/O error"))
    with pytest.raises(OSError, match="I/O error"):
        save({"v": 2}, path)
    assert calls
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.tg"] and load(path) == {"v": 1}


def test_save_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "m.tg"
    save({"v": 1}, path)
    os.chmod(path, 0o640)
    save({"v": 2}, path)
    assert os.stat(path).st_mode & 0o777 == 0o640 and load(path) == {"v": 2}


def test_save_into_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory of .*nowhere"):
        save({"v": 1}, tmp_path / "nowhere" / "m.tg")


# ---- bad files -------------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*absent.tg"):
        load(tmp_path / "absent.tg")


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / "t.tg"
    save({"w": tinygen.randn(100), "n": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=r"t\.tg' is truncated or corrupted"):
        load(path)


def test_corrupted_array_bytes(tmp_path):
    path = tmp_path / "c.tg"
    save({"w": tinygen.zeros(1000)}, path)
    data = bytearray(path.read_bytes())
    mid = data.find(b"\x00" * 64, len(data) // 3)
    data[mid:mid + 8] = b"\xff" * 8  # inside the zeros of the array: the zip CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.tg' is truncated or corrupted"):
        load(path)


@pytest.mark.parametrize("content,match", [
    (b"", "is not a tinygen checkpoint \\(it is empty\\)"),
    (os.urandom(256), "is not a tinygen checkpoint"),
    (b"\x93NUMPY\x01\x00" + b"x" * 50, "is not a tinygen checkpoint"),
], ids=["empty", "random", "npy"])
def test_foreign_bytes(tmp_path, content, match):
    path = tmp_path / "f.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"f\.bin' " + match):
        load(path)


def test_foreign_npz_and_zip(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(CheckpointError, match=r"other\.npz' is an \.npz archive but was not written by tinygen"):
        load(tmp_path / "other.npz")
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=r"docs\.zip' is an \.npz archive but was not written by tinygen"):
        load(tmp_path / "docs.zip")
    np.savez(tmp_path / "fake.npz", __tinygen__=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    with pytest.raises(CheckpointError, match=r"fake\.npz' is truncated or corrupted"):
        load(tmp_path / "fake.npz")


def test_structure_pointing_at_a_missing_array(tmp_path):
    header = {"format": serialization.FORMAT, "version": serialization.VERSION,
              "root": {"t": "tensor", "a": "a0", "dtype": "<f4", "shape": [2]}}
    np.savez(tmp_path / "m.npz", __tinygen__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match=r"m\.npz' is corrupted: .*missing array entry 'a0'"):
        load(tmp_path / "m.npz")
    header["version"] = 99
    np.savez(tmp_path / "v.npz", __tinygen__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match="version 99"):
        load(tmp_path / "v.npz")


# ---- optimizer and scheduler state ----------------------------------------------------------------------------------
def test_optimizer_and_scheduler_state_dicts_round_trip(tmp_path):
    import tinygen.optim as optim
    from tinygen.optim import lr_scheduler
    params = [tinygen.randn(4, 3, requires_grad=True), tinygen.randn(3, requires_grad=True)]
    opt = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.1, amsgrad=True)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for _ in range(3):
        for p in params:
            p.grad = tinygen.randn(*p.shape)
        opt.step()
        sched.step()
    sd, ssd = opt.state_dict(), sched.state_dict()
    save({"optim": sd, "sched": ssd}, tmp_path / "o.tg")
    back = load(tmp_path / "o.tg")
    check_equal(sd, back["optim"])
    check_equal(ssd, back["sched"])
    assert sorted(back["optim"]["state"]) == [0, 1]  # integer keys stay integers
    assert back["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
