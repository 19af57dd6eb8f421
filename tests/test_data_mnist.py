"""MNIST reading: the known facts of the real files, the bundled test split, and every way a file can be wrong."""
import gzip
import hashlib
import importlib
import shutil
import struct
import warnings

import numpy as np
import pytest

from tinygen import data

# The package's `mnist` attribute is the loader function; the module itself is reached by name.
mnist_module = importlib.import_module("tinygen.data.mnist")


def write_idx(path, array, magic=None, compress=None, header_dims=None):
    """Write an IDX file of unsigned bytes (gzip when the name ends in .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 + array.ndim
    dims = header_dims if header_dims is not None else array.shape
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes()
    compress = str(path).endswith(".gz") if compress is None else compress
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)
    return path


def make_split(folder, split="test", n=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    img_base, lab_base = mnist_module.SPLITS[split]
    ext = ".gz" if gz else ""
    write_idx(folder / (img_base + ext), images)
    write_idx(folder / (lab_base + ext), labels)
    return images, labels


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("TINYGEN_DATA", raising=False)


# ---- the real data ------------------------------------------------------------------------------------------------
def test_full_training_set_known_facts(mnist_dir):
    train = data.mnist("train", root=mnist_dir)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert train.labels.shape == (60000,) and train.labels.dtype == np.int64
    assert train.split == "train" and not train.bundled
    # Mean and std of the pixels in [0, 1] from exact integer sums (47M values; chunks keep memory small).
    x = train.images.reshape(len(train.images), -1)
    s1 = int(x.sum(dtype=np.int64))
    s2 = sum(int(np.square(c, dtype=np.int32).sum(dtype=np.int64)) for c in np.array_split(x, 12))
    mean = s1 / x.size / 255.0
    std = np.sqrt(s2 / x.size / 255.0 ** 2 - mean ** 2)
    assert round(float(mean), 4) == 0.1307
    assert round(float(std), 4) == 0.3081
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test = data.mnist("test", root=mnist_dir)
    assert test.images.shape == (10000, 28, 28)


def test_full_set_verifies_against_sha256sums_and_known_hashes(mnist_dir, tmp_path):
    if (mnist_dir / "SHA256SUMS").exists():
        assert data.mnist("test", root=mnist_dir, verify=True).images.shape == (10000, 28, 28)
    # Without a SHA256SUMS file the built-in hashes apply.
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path / name)
    assert len(data.mnist("test", root=tmp_path, verify=True).labels) == 10000


def test_bundled_test_split_is_the_real_one(no_env):
    test = data.mnist("test")
    assert test.bundled and test.split == "test"
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert round(float((test.images / 255.0).mean()), 4) == 0.1325
    images, labels = test  # unpacks as a pair
    assert images is test.images and labels is test.labels
    images[0, 0, 0] = 7  # ordinary writable arrays
    # The bundled files carry the original content (hashes built into the module).
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        data.verify_file(data.BUNDLED_DIR / name)
    assert (data.BUNDLED_DIR / "LICENSE-MNIST.txt").read_text().count("CC BY-SA 3.0") >= 1


def test_shipped_training_split_is_the_real_one(no_env):
    train = data.mnist("train")  # nothing set: the copy inside the package
    assert train.bundled and train.split == "train"
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        data.verify_file(data.BUNDLED_DIR / name)
    assert "train-images-idx3-ubyte.gz" in (data.BUNDLED_DIR / "LICENSE-MNIST.txt").read_text()


def test_bundled_files_match_the_shared_copy(mnist_dir):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                 "train-labels-idx1-ubyte.gz"):
        src = mnist_dir / name
        if src.exists():
            assert (data.BUNDLED_DIR / name).read_bytes() == src.read_bytes()


# ---- resolution -----------------------------------------------------------------------------------------------------
def test_root_argument_raw_and_gz_and_mnist_subfolder(tmp_path, no_env):
    images, labels = make_split(tmp_path, "train", n=7, gz=False)
    got = data.mnist("train", root=tmp_path)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels.astype(np.int64))
    sub = tmp_path / "outer" / "mnist"
    sub.mkdir(parents=True)
    images2, _ = make_split(sub, "train", n=3, gz=True, seed=1)
    got2 = data.mnist("train", root=tmp_path / "outer")
    np.testing.assert_array_equal(got2.images, images2)
    assert got2.source == str(sub)


def test_env_variable_is_used(tmp_path, monkeypatch):
    images, _ = make_split(tmp_path, "train", n=4)
    monkeypatch.setenv("TINYGEN_DATA", str(tmp_path))
    np.testing.assert_array_equal(data.mnist("train").images, images)
    # The env folder has no test split: the shipped copy serves it, with a warning naming the folder.
    with pytest.warns(UserWarning, match="test split not found"):
        assert data.mnist("test").bundled


def test_explicit_root_without_the_split_raises(tmp_path, no_env):
    with pytest.raises(FileNotFoundError, match="test split not found"):
        data.mnist("test", root=tmp_path)


def test_env_folder_without_the_split_falls_back_with_one_warning_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGEN_DATA", str(tmp_path))
    with pytest.warns(UserWarning, match="train split not found in .TINYGEN_DATA") as caught:
        got = data.mnist("train")
    assert got.bundled and got.split == "train" and len(got.labels) == 60000
    assert len(caught) == 1 and str(tmp_path) in str(caught[0].message)
    assert "root=" not in str(caught[0].message) and "nowhere" not in str(caught[0].message)


def test_nothing_set_uses_the_shipped_copy_without_a_warning(no_env):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.mnist("train").bundled


def test_mnist_or_bundled_falls_back_for_an_explicit_root_too(no_env, tmp_path):
    with pytest.warns(UserWarning, match="using the copy shipped with tinygen"):
        got = data.mnist_or_bundled("train", root=tmp_path)
    assert got.split == "train" and got.bundled and len(got.labels) == 60000
    with pytest.raises(FileNotFoundError, match="train split not found"):
        data.mnist("train", root=tmp_path)  # mnist itself: an explicit folder must hold the split
    # With the training set present there is no warning.
    make_split(tmp_path, "train", n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = data.mnist_or_bundled("train", root=tmp_path)
    assert got.split == "train" and len(got.labels) == 3


def test_unknown_split(no_env):
    with pytest.raises(ValueError, match="'validation'"):
        data.mnist("validation")


# ---- malformed files ------------------------------------------------------------------------------------------------
def test_missing_labels_file_is_named(tmp_path):
    make_split(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        data.load_split(tmp_path, "train")


def test_wrong_magic_is_named(tmp_path):
    make_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28)), magic=2049)
    with pytest.raises(data.MNISTFormatError, match=r"t10k-images-idx3-ubyte.gz: magic number 2049.*expected 2051"):
        data.load_split(tmp_path, "test")


def test_labels_with_image_magic(tmp_path):
    make_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5), magic=2051)
    with pytest.raises(data.MNISTFormatError, match="t10k-labels-idx1-ubyte.gz: magic number 2051"):
        data.load_split(tmp_path, "test")


def test_truncated_payload_is_named(tmp_path):
    make_split(tmp_path, "test", n=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28)), header_dims=(5, 28, 28))
    with pytest.raises(data.MNISTFormatError, match=r"t10k-images-idx3-ubyte.gz: truncated.*\(5, 28, 28\)"):
        data.load_split(tmp_path, "test")


def test_trailing_bytes_are_rejected(tmp_path):
    make_split(tmp_path, "test", n=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6), header_dims=(5,))
    with pytest.raises(data.MNISTFormatError, match="longer than its header says"):
        data.load_split(tmp_path, "test")


def test_truncated_gzip_stream_is_named(tmp_path):
    make_split(tmp_path, "test", n=20)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(data.MNISTFormatError, match="t10k-images-idx3-ubyte.gz: cannot be read as gzip"):
        data.load_split(tmp_path, "test")


def test_not_gzip_at_all(tmp_path):
    make_split(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(data.MNISTFormatError, match="t10k-images-idx3-ubyte.gz"):
        data.load_split(tmp_path, "test")


def test_header_shorter_than_header(tmp_path):
    make_split(tmp_path, "test", gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(data.MNISTFormatError, match="too short for an IDX header"):
        data.load_split(tmp_path, "test")


def test_count_mismatch_between_images_and_labels(tmp_path):
    make_split(tmp_path, "test", n=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4))
    with pytest.raises(data.MNISTFormatError, match="5 images but .*4 labels"):
        data.load_split(tmp_path, "test")


def test_wrong_image_size(tmp_path):
    make_split(tmp_path, "test", n=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 32, 32)))
    with pytest.raises(data.MNISTFormatError, match="32x32, expected 28x28"):
        data.load_split(tmp_path, "test")


def test_label_out_of_range(tmp_path):
    make_split(tmp_path, "test", n=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 12, 3, 4]))
    with pytest.raises(data.MNISTFormatError, match="label 12 out of range"):
        data.load_split(tmp_path, "test")


def test_gz_preferred_over_raw_when_both_exist(tmp_path):
    images_gz, _ = make_split(tmp_path, "test", n=3, gz=True, seed=1)
    make_split(tmp_path, "test", n=3, gz=False, seed=2)
    np.testing.assert_array_equal(data.load_split(tmp_path, "test").images, images_gz)


# ---- verification ---------------------------------------------------------------------------------------------------
def test_verify_uses_sha256sums_in_the_folder(tmp_path):
    make_split(tmp_path, "test")
    lines = []
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        lines.append(f"{hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}  {name}")
    (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert len(data.load_split(tmp_path, "test", verify=True).labels) == 5
    # Change one byte of content: the listed hash no longer matches.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(5, 9))
    with pytest.raises(data.ChecksumError, match="t10k-labels-idx1-ubyte.gz: SHA-256 is"):
        data.load_split(tmp_path, "test", verify=True)


def test_verify_without_sha256sums_uses_known_hashes(tmp_path):
    make_split(tmp_path, "test")
    assert len(data.load_split(tmp_path, "test").labels) == 5  # unverified read works
    with pytest.raises(data.ChecksumError, match="t10k-images-idx3-ubyte.gz: SHA-256 .* is not a known one"):
        data.load_split(tmp_path, "test", verify=True)


def test_verify_accepts_a_recompressed_copy_of_the_real_content(tmp_path):
    # Mirrors may serve the same content in another gzip container: the content hash decides.
    raw = gzip.decompress((data.BUNDLED_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    assert hashlib.sha256(path.read_bytes()).hexdigest() not in mnist_module.GZ_SHA256[path.name]
    data.verify_file(path)
    raw_path = tmp_path / "t10k-labels-idx1-ubyte"
    raw_path.write_bytes(raw)
    data.verify_file(raw_path)
    raw_path.write_bytes(raw[:-1] + bytes([(raw[-1] + 1) % 10]))
    with pytest.raises(data.ChecksumError, match="t10k-labels-idx1-ubyte: SHA-256 is"):
        data.verify_file(raw_path)


def test_verify_rejects_unknown_names(tmp_path):
    p = tmp_path / "something.gz"
    p.write_bytes(gzip.compress(b"x"))
    with pytest.raises(data.ChecksumError, match="no known hash for a file named 'something.gz'"):
        data.verify_file(p)


def test_bad_sha256sums_line(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("nonsense\n")
    with pytest.raises(ValueError, match="SHA256SUMS:1"):
        mnist_module.read_sha256sums(tmp_path / "SHA256SUMS")
