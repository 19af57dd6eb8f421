"""PNG writer and image grids, checked with a small independent PNG reader."""
import struct
import zlib

import numpy as np
import pytest

import tinygen
from tinygen.utils import image_grid, save_image_grid, write_png, encode_png

CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def read_png(blob):
    """Decode an 8-bit non-interlaced PNG: check signature and CRCs, inflate, undo all five filters."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, idat, header, kinds = 8, b"", None, []
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        kind, body = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind}"
        kinds.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    w, h, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0
    bpp = CHANNELS[colour]
    raw = zlib.decompress(idat)
    stride = w * bpp
    assert len(raw) == h * (stride + 1)
    out = bytearray()
    prev = bytearray(stride)
    for r in range(h):
        ftype, line = raw[r * (stride + 1)], bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]
            line[i] = (line[i] + pred) & 0xFF
        out += line
        prev = line
    arr = np.frombuffer(bytes(out), np.uint8).reshape(h, w, bpp)
    return arr[:, :, 0] if bpp == 1 else arr


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (28, 28), (3, 4, 3), (6, 2, 4)])
def test_round_trip_is_exact(tmp_path, shape):
    a = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = write_png(tmp_path / "x.png", a)
    np.testing.assert_array_equal(read_png(path.read_bytes()), a)
    assert not (tmp_path / "x.png.tmp").exists()


def test_header_fields(tmp_path):
    blob = encode_png(np.zeros((3, 5), np.uint8))
    w, h, depth, colour = struct.unpack(">IIBB", blob[16:26])
    assert (w, h, depth, colour) == (5, 3, 8, 0)
    assert struct.unpack(">IIBB", encode_png(np.zeros((3, 5, 3), np.uint8))[16:26])[3] == 2


def test_float_and_bool_conversion(tmp_path):
    f = np.array([[0.0, 0.5, 1.0, -0.3, 1.7]])
    np.testing.assert_array_equal(read_png(encode_png(f)), [[0, 128, 255, 0, 255]])
    np.testing.assert_array_equal(read_png(encode_png(np.array([[True, False]]))), [[255, 0]])
    np.testing.assert_array_equal(read_png(encode_png(np.array([[3, 250]], dtype=np.int64))), [[3, 250]])


def test_bad_images_are_named():
    with pytest.raises(ValueError, match=r"\(H, W\).*got \(2, 2, 2\)"):
        encode_png(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        encode_png(np.array([[300]]))
    with pytest.raises(ValueError, match="NaN"):
        encode_png(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="at least 1x1"):
        encode_png(np.zeros((0, 4), np.uint8))


def test_pil_reads_our_files_and_we_read_pils(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    a = np.random.default_rng(1).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    write_png(tmp_path / "ours.png", a)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "ours.png")), a)
    # PIL picks its own (adaptive) filters: a check of the reader above on all filter types.
    yy, xx = np.mgrid[0:64, 0:64]
    grey = ((yy * 3 + xx * 5 + np.random.default_rng(0).integers(0, 20, (64, 64))) % 256).astype(np.uint8)
    for img in (grey, np.stack([grey, grey.T, (grey // 2 + yy).astype(np.uint8)], axis=-1)):
        Image.fromarray(img).save(tmp_path / "pil.png")
        np.testing.assert_array_equal(read_png((tmp_path / "pil.png").read_bytes()), img)


# ---- grids --------------------------------------------------------------------------------------------------------
def test_grid_layout_and_padding():
    imgs = np.stack([np.full((2, 3), v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)])  # 5 images of 2x3
    g = image_grid(imgs, nrow=2, padding=1, pad_value=1.0)
    assert g.shape == (3 * (2 + 1) + 1, 2 * (3 + 1) + 1) and g.dtype == np.float32
    for k, v in enumerate((0.1, 0.2, 0.3, 0.4, 0.5)):
        r, c = divmod(k, 2)
        block = g[1 + r * 3:1 + r * 3 + 2, 1 + c * 4:1 + c * 4 + 3]
        np.testing.assert_allclose(block, v)
    assert np.all(g[0] == 1.0) and np.all(g[:, 0] == 1.0) and np.all(g[-1] == 1.0)
    np.testing.assert_allclose(g[7:9, 5:8], 1.0)  # the empty sixth cell is padding
    mask = np.ones_like(g, bool)
    for k in range(5):
        r, c = divmod(k, 2)
        mask[1 + r * 3:1 + r * 3 + 2, 1 + c * 4:1 + c * 4 + 3] = False
    assert np.all(g[mask] == 1.0)


def test_grid_value_range_and_inputs():
    x = np.array([[[-1.0, 0.0], [1.0, 3.0]]])
    g = image_grid(x, padding=0, value_range=(-1, 1))
    np.testing.assert_allclose(g, [[0.0, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(image_grid(x, padding=0, value_range="auto"), [[0.0, 0.25], [0.5, 1.0]])
    flat = np.random.default_rng(0).random((4, 784))
    np.testing.assert_array_equal(image_grid(flat, nrow=2), image_grid(flat.reshape(4, 28, 28), nrow=2))
    nchw = flat.reshape(4, 1, 28, 28)
    np.testing.assert_array_equal(image_grid(nchw, nrow=2), image_grid(flat.reshape(4, 28, 28), nrow=2))
    u8 = (flat * 255).astype(np.uint8).reshape(4, 28, 28)
    np.testing.assert_allclose(image_grid(u8), image_grid(u8 / 255.0), atol=1e-6)
    t = tinygen.tensor(flat.reshape(4, 28, 28), requires_grad=True)
    np.testing.assert_allclose(image_grid(t), image_grid(flat.reshape(4, 28, 28)))
    rgb = np.random.default_rng(1).random((3, 4, 5, 3))
    assert image_grid(rgb, nrow=3, padding=1).shape == (6, 19, 3)


def test_grid_errors():
    with pytest.raises(ValueError, match="not square"):
        image_grid(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="no images"):
        image_grid(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="nrow"):
        image_grid(np.zeros((2, 4, 4)), nrow=0)


def test_save_image_grid_of_mnist_round_trips(tmp_path):
    from tinygen import data
    imgs = data.mnist("test").images[:16]
    path = save_image_grid(tmp_path / "sub" / "grid.png", data.to_symmetric(imgs), nrow=4, value_range=(-1, 1))
    back = read_png(path.read_bytes())
    assert back.shape == (4 * 30 + 2, 4 * 30 + 2)
    np.testing.assert_array_equal(back[2:30, 2:30], imgs[0])  # pixel-exact after the [-1, 1] round trip
    np.testing.assert_array_equal(back[32:60, 62:90], imgs[6])


def test_write_png_refuses_a_folder_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "grid.png"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match="grid.png"):
        write_png(target, np.zeros((2, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_write_png_refuses_a_name_that_is_not_png(tmp_path):
    with pytest.raises(ValueError, match=r"does not end in \.png"):
        write_png(tmp_path / "grid.jpg", np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_write_png_removes_its_temporary_file_when_writing_fails(tmp_path, monkeypatch):
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("os.replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_png(tmp_path / "x.png", np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []
