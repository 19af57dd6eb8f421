"""Training on your own data: the readers of tinygen.data.dataset (.npy, .npz, .csv, PNG folders), their checks,
the scaling rules, and short GAN and VAE runs on each format followed by ``tinygen sample`` and ``tinygen eval``."""
import json
import sys

import numpy as np
import pytest

from tinygen.cli import main
from tinygen.data import BUNDLED_DIR, Scaling, from_arrays, is_mnist_folder, load_dataset
from tinygen.models import train_utils as tu
from tinygen.utils.image import write_png


# ---- files the tests write -------------------------------------------------------------------------------------
def _write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _png_folder(root, classes=3, per_class=6, size=(8, 8), rgb=True, seed=0):
    """Class sub-folders of PNG images whose brightness depends on the class; returns (root, the images)."""
    rng = np.random.default_rng(seed)
    images = {}
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            shape = size + ((3,) if rgb else ())
            a = (rng.integers(0, 80, shape) + 80 * c).astype(np.uint8)
            write_png(folder / f"{i:02d}.png", a)
            images[(c, i)] = a
    return root, images


@pytest.fixture
def vectors16(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((96, 16)) * 3 + 5).astype(np.float32)
    path = tmp_path / "v16.npy"
    np.save(path, x)
    return path, x


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["height,weight,kind"] + [f"{rng.normal() + i % 3:.5f},{rng.normal() * 10 + 50:.5f},{'abc'[i % 3]}"
                                     for i in range(60)]
    return _write_csv(tmp_path / "t.csv", rows)


pil = pytest.importorskip  # PNG folders are read with pillow (the images extra); writing needs nothing


# ---- round trips -----------------------------------------------------------------------------------------------
def test_npy_vectors_round_trip(vectors16):
    path, x = vectors16
    ds = load_dataset(path)
    assert ds.kind == "vectors" and ds.shape == (16,) and ds.features == 16 and ds.y is None
    np.testing.assert_array_equal(ds.x, x)
    text = ds.describe()
    assert text.startswith("96 x 16 float32") and str(path) in text and "no labels" in text


@pytest.mark.parametrize("shape, expect", [((5, 6, 7), (6, 7)), ((5, 6, 7, 1), (6, 7)), ((5, 6, 7, 3), (6, 7, 3))])
def test_npy_images_round_trip(tmp_path, shape, expect):
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    np.save(tmp_path / "im.npy", x)
    ds = load_dataset(tmp_path / "im.npy")
    assert ds.kind == "images" and ds.shape == expect
    np.testing.assert_array_equal(ds.x.reshape(x.shape), x)


def test_npz_labels_become_class_indices(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 4)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([7, 3, 7, 9, 3, 3]))
    ds = load_dataset(tmp_path / "a.npz")
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 2, 0, 0])
    assert ds.classes == ["3", "7", "9"] and ds.num_classes == 3
    np.savez(tmp_path / "b.npz", points=x, y=np.array(["b", "a", "b", "a", "a", "c"]))  # the only non-y array
    ds = load_dataset(tmp_path / "b.npz")
    assert ds.classes == ["a", "b", "c"] and list(ds.y) == [1, 0, 1, 0, 0, 2]
    np.savez(tmp_path / "c.npz", x)  # a single unnamed array, no labels
    assert load_dataset(tmp_path / "c.npz").y is None


def test_csv_header_and_label_column_by_name_or_index(table):
    by_name = load_dataset(table, label_column="kind")
    assert by_name.shape == (2,) and by_name.columns == ["height", "weight"]
    assert by_name.classes == ["a", "b", "c"] and list(by_name.y[:4]) == [0, 1, 2, 0]
    lines = table.read_text().splitlines()
    assert by_name.x[0, 1] == pytest.approx(float(lines[1].split(",")[1]), rel=1e-6)
    for index in (2, "2", -1):
        np.testing.assert_array_equal(load_dataset(table, label_column=index).y, by_name.y)
    features_only = load_dataset(table, label_column="kind")
    assert features_only.x.dtype == np.float32


def test_csv_without_header_semicolons_and_blank_lines(tmp_path):
    path = _write_csv(tmp_path / "n.csv", ["1;2;0", "", "3;4.5;1", "-1;0;1"])
    ds = load_dataset(path, label_column=2)
    np.testing.assert_array_equal(ds.x, [[1, 2], [3, 4.5], [-1, 0]])
    assert list(ds.y) == [0, 1, 1] and ds.columns is None
    assert load_dataset(path).shape == (3,)  # no label column: every column is a feature


def test_png_folder_classes_and_flat_folder(tmp_path):
    pil("PIL.Image")
    root, images = _png_folder(tmp_path / "pics")
    ds = load_dataset(root)
    assert ds.kind == "images" and ds.shape == (8, 8, 3) and ds.x.dtype == np.uint8
    assert ds.classes == ["class0", "class1", "class2"] and np.bincount(ds.y).tolist() == [6, 6, 6]
    np.testing.assert_array_equal(ds.x[ds.y == 1][2], images[(1, 2)])
    flat, grey = _png_folder(tmp_path / "grey", classes=1, rgb=False)
    ds = load_dataset(flat / "class0")
    assert ds.shape == (8, 8) and ds.y is None
    np.testing.assert_array_equal(ds.x[3], grey[(0, 3)])


def test_scaling_rules_and_their_inverse():
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 256, (10, 4, 4)).astype(np.uint8), (0.0, 255.0)),
             (rng.random((10, 5)), (0.0, 1.0)),
             (rng.random((10, 5)) * 2 - 1, (-1.0, 1.0)),
             (rng.random((10, 4, 4)) * 7 - 2, None)]  # images outside those ranges: their own min and max
    for x, bounds in cases:
        ds = from_arrays(x)
        scaling = ds.scaling((-1.0, 1.0))
        assert scaling.rule == "range"
        assert scaling.bounds == (bounds if bounds is not None else (float(x.min()), float(x.max())))
        xm = scaling.to_model(ds.x)
        assert xm.shape == (10, ds.features) and xm.min() >= -1 - 1e-6 and xm.max() <= 1 + 1e-6
        np.testing.assert_allclose(scaling.to_data(xm), x, atol=1e-4 * max(1.0, np.abs(x).max()))
    x = rng.standard_normal((50, 3)) * [1, 10, 100] + [0, 5, -7]
    scaling = from_arrays(x).scaling((0.0, 1.0))
    assert scaling.rule == "standard" and not scaling.bounded
    xm = scaling.to_model(x)
    np.testing.assert_allclose(xm.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xm.std(0), 1, atol=1e-5)
    again = Scaling.from_state(json.loads(json.dumps(scaling.state())))  # plain values, as in a checkpoint
    np.testing.assert_allclose(again.to_data(xm), x, rtol=1e-5, atol=1e-4)


def test_mnist_folder_is_still_mnist(tmp_path, vectors16):
    assert is_mnist_folder(BUNDLED_DIR)
    assert tu.custom_dataset(BUNDLED_DIR) is None
    assert not is_mnist_folder(tmp_path)
    images = np.zeros((4, 28, 28), np.uint8)
    assert tu.custom_dataset(train_set=(images, np.arange(4))) is None  # MNIST-sized arrays with labels
    assert tu.custom_dataset(train_set=np.zeros((4, 16))).features == 16


# ---- bad input -------------------------------------------------------------------------------------------------
def _csv_case(tmp_path, lines, **kw):
    return lambda: load_dataset(_write_csv(tmp_path / "bad.csv", lines), **kw)


@pytest.mark.parametrize("lines, kw, message", [
    (["1,2,3", "4,5"], {}, "line 2 has 2 cells, line 1 has 3"),
    (["a,b", "1,2", "3,x"], {}, "line 3, column 1 ('b'): 'x' is not a number"),
    (["1,2", "3,"], {}, "line 2, column 1: '' is not a number"),
    (["1,2", "nan,4"], {}, "NaN or infinite"),
    (["1,2", "inf,4"], {}, "NaN or infinite"),
    ([""], {}, "the file is empty"),
    (["a,b"], {}, "a header row but no rows of data"),
    (["a,b", "1,2"], {"label_column": 5}, "label_column 5 is out of range for 2 columns"),
    (["a,b", "1,2"], {"label_column": "c"}, "label_column 'c' is neither a column name nor an index"),
    (["1", "2"], {"label_column": 0}, "there are no features"),
])
def test_bad_csv(tmp_path, lines, kw, message):
    with pytest.raises(ValueError, match="bad.csv") as info:
        _csv_case(tmp_path, lines, **kw)()
    assert message in str(info.value)


@pytest.mark.parametrize("array, message", [
    (np.arange(5.0), "a 1-D array of shape (5,)"),
    (np.zeros((2, 2, 2, 2, 2)), "a 5-D array"),
    (np.zeros((3, 4, 4, 7)), "have 7 channels"),
    (np.zeros((0, 16)), "no data"),
    (np.array([[1.0, np.inf]]), "NaN or infinite"),
    (np.array([[1.0, np.nan]]), "NaN or infinite"),
    (np.array([["a", "b"]]), "must be numbers"),
])
def test_bad_arrays(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match="bad.npy") as info:
        load_dataset(tmp_path / "bad.npy")
    assert message in str(info.value)


def test_bad_npz_and_paths(tmp_path):
    np.savez(tmp_path / "short.npz", x=np.zeros((5, 3)), y=np.arange(4))
    with pytest.raises(ValueError, match=r"short.npz: labels of shape \(4,\) do not fit 5 examples"):
        load_dataset(tmp_path / "short.npz")
    np.savez(tmp_path / "frac.npz", x=np.zeros((2, 3)), y=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="frac.npz: labels must be whole numbers or words"):
        load_dataset(tmp_path / "frac.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"two.npz: holds arrays \['a', 'b'\]; name the examples 'x'"):
        load_dataset(tmp_path / "two.npz")
    with pytest.raises(FileNotFoundError, match="nothing.npy: no such file"):
        load_dataset(tmp_path / "nothing.npy")
    (tmp_path / "data.txt").write_text("1 2\n")
    with pytest.raises(ValueError, match="data.txt: unknown format"):
        load_dataset(tmp_path / "data.txt")
    np.save(tmp_path / "v.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="label_column is for CSV files"):
        load_dataset(tmp_path / "v.npy", label_column=0)
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) do not fit 3 examples"):
        tu.custom_dataset(train_set=(np.zeros((3, 16)), np.arange(2)))


def test_bad_png_folders(tmp_path):
    pil("PIL.Image")
    root, _ = _png_folder(tmp_path / "mixed")
    write_png(root / "class1" / "big.png", np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"mixed: images of different sizes: .* is 8x8, class1/big.png is 9x8"):
        load_dataset(root)
    root, _ = _png_folder(tmp_path / "empty", classes=2)
    (root / "class9").mkdir()
    with pytest.raises(ValueError, match="empty: the class folder class9/ holds no PNG images"):
        load_dataset(root)
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="none: holds no PNG images and no MNIST training split"):
        load_dataset(tmp_path / "none")
    root, _ = _png_folder(tmp_path / "both", classes=1)
    write_png(root / "stray.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="both: holds both PNG files and sub-folders"):
        load_dataset(root)


def test_png_folder_without_pillow_names_the_extra(tmp_path, monkeypatch):
    root, _ = _png_folder(tmp_path / "pics", classes=1)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(ImportError, match=r'needs pillow, which is not installed; install it with: pip install -e "\.\[images\]"'):
        load_dataset(root)


def test_models_refuse_what_they_cannot_take(vectors16, tmp_path):
    from tinygen.models.gan import train_gan
    from tinygen.models.vae import train_vae
    path, _ = vectors16
    with pytest.raises(ValueError, match=r"conditional model needs class labels; .*v16.npy has none"):
        train_gan(data=str(path), conditional=True, steps=1)
    with pytest.raises(ValueError, match=r"conditional model needs class labels"):
        train_vae(data=str(path), conditional=True, epochs=1)
    with pytest.raises(ValueError, match=r"arch 'dcgan' is a convolutional network for images; .* vectors of "
                                         r"shape \(16,\)"):
        train_gan(data=str(path), arch="dcgan", steps=1)
    with pytest.raises(ValueError, match=r"arch 'conv' is a convolutional network for images; .* vectors of "
                                         r"shape \(16,\)"):
        train_vae(data=str(path), arch="conv", epochs=1)
    with pytest.raises(ValueError, match=r"data_dim=784 does not fit the data .* it needs data_dim=16"):
        train_gan(train_set=np.zeros((8, 16)), data_dim=784, steps=1)
    with pytest.raises(ValueError, match="binarize needs bounded data"):
        train_vae(data=str(path), binarize=True, epochs=1)


# ---- short runs, then tinygen sample / eval --------------------------------------------------------------------
def _cli(*argv):
    assert main([str(a) for a in argv]) == 0


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size, im.mode


def _gan(data, out, *extra):
    _cli("train", "gan", "--data", data, "--steps", 4, "--batch-size", 16, "--eval-samples", 50, "--quiet",
         "--threads", 1, "--out", out, *extra)


def _vae(data, out, *extra):
    _cli("train", "vae", "--data", data, "--epochs", 1, "--batch-size", 16, "--quiet", "--threads", 1,
         "--out", out, *extra)


@pytest.mark.parametrize("model", ["gan", "vae"])
def test_run_on_npy_vectors_then_sample_and_eval(model, vectors16, tmp_path, capsys):
    path, x = vectors16
    out = tmp_path / model
    (_gan if model == "gan" else _vae)(path, out)
    ckpt = out / "checkpoint.npz"
    _cli("sample", ckpt, "--n", 7, "--out", tmp_path / "s.npy")
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (7, 16) and np.isfinite(s).all()
    # in the data's units: around the data's mean of 5, not the model's standardised 0
    assert abs(float(s.mean()) - float(x.mean())) < abs(float(x.mean())) / 2
    _cli("sample", ckpt, "--n", 3, "--out", tmp_path / "s.csv")
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (3, 16)
    capsys.readouterr()
    assert main(["sample", str(ckpt), "--n", "3", "--out", str(tmp_path / "s.png")]) != 0
    assert "the samples are vectors of 16 features, not images" in capsys.readouterr().err
    args = ["eval", ckpt, "--json"] + (["--n", 60] if model == "gan" else ["--iwae-k", 4])
    _cli(*args)
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not {"coverage", "class_kl", "inception_score", "classifier"} & set(metrics)  # nothing of MNIST
    if model == "gan":
        assert metrics["dataset"] == "custom" and np.isfinite(metrics["frechet_distance"])
    else:  # scored on the held-out tenth of the 96 examples
        assert metrics["iwae_images"] == 9 and np.isfinite(metrics["test_loss"])


@pytest.mark.parametrize("model", ["gan", "vae"])
def test_run_on_csv_with_labels(model, table, tmp_path):
    out = tmp_path / model
    (_gan if model == "gan" else _vae)(table, out, "--label-column", "kind", "--conditional")
    _cli("sample", out / "checkpoint.npz", "--n", 5, "--label", 1, "--out", tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "height,weight" and len(lines) == 6
    assert np.loadtxt(lines[1:], delimiter=",").shape == (5, 2)


@pytest.mark.parametrize("model", ["gan", "vae"])
def test_run_on_png_folder(model, tmp_path, capsys):
    pil("PIL.Image")
    root, _ = _png_folder(tmp_path / "pics", per_class=12)
    out = tmp_path / model
    (_gan if model == "gan" else _vae)(root, out, "--conditional")
    _cli("sample", out / "checkpoint.npz", "--n", 9, "--out", tmp_path / "s.npy")
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (9, 8, 8, 3) and s.min() >= 0 and s.max() <= 255 and s.max() > 1  # pixel units
    _cli("sample", out / "checkpoint.npz", "--n", 9, "--out", tmp_path / "s.png")
    (width, height), mode = _png_size(tmp_path / "s.png")
    assert mode == "RGB" and (width, height) == (3 * 10 + 2, 3 * 10 + 2)  # 3 classes a row, 8 + 2 pixels each
    assert (out / "samples.png").exists()


def test_data_line_is_printed(vectors16, tmp_path, capsys):
    from tinygen.models.vae import train_vae
    path, _ = vectors16
    train_vae(data=str(path), epochs=1, batch_size=16, pictures=False)
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"training data: 96 x 16 float32 vectors from {path}, range [")
    assert "standardised per feature" in line and "decoder gaussian with a linear mean" in line


def test_python_arrays_of_any_size(tmp_path):
    from tinygen.models.gan import train_gan
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 16)).astype(np.float32), np.arange(64) % 4
    G, _, history = train_gan(train_set=(x, y), data_dim=16, conditional=True, steps=3, batch_size=16,
                              eval_samples=40, quiet=True)
    assert G.num_classes == 4 and "sample_frechet_distance" in history[-1]


def test_frechet_distance_of_data_measures_a_shift():
    from tinygen.models.gan.trainer import frechet_distance_of_data
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 5))
    assert frechet_distance_of_data(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + [3.0, 0, 0, 0, 0]
    assert frechet_distance_of_data(a, shifted) == pytest.approx(9.0, rel=1e-6)
    # beyond max_full: means and variances only, the same answer for a pure shift
    assert frechet_distance_of_data(a, shifted, max_full=2) == pytest.approx(9.0, rel=1e-6)


def test_vae_test_set_labels_follow_the_training_classes():
    from tinygen.models import vae
    from tinygen.models.vae import train_vae
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)), np.array(["b", "c", "d", "e"] * 10)
    test = (rng.standard_normal((5, 6)), np.array(["e", "e", "c", "e", "e"]))  # classes 3 and 1 of training
    model, history = train_vae(train_set=(x, y), test_set=test, conditional=True, epochs=1, batch_size=10,
                               quiet=True, pictures=False)
    assert model.num_classes == 4 and np.isfinite(history[-1]["test_loss"])
    settings, prepared = vae.resolve_data({"conditional": True}, (x, y))
    test_y = vae.load_data(vae.make_config(**settings), prepared, test)[3]
    assert test_y.tolist() == [3, 3, 1, 3, 3]  # e and c as the training data numbers them
    with pytest.raises(ValueError, match=r"test_set has labels \['z'\] that the training data does not have"):
        train_vae(train_set=(x, y), test_set=(test[0], np.array(["z"] * 5)), conditional=True, epochs=1,
                  batch_size=10, quiet=True)


def test_unreadable_array_files(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npy: the file is empty"):
        load_dataset(tmp_path / "empty.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None]), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy: not a plain numeric array"):
        load_dataset(tmp_path / "objects.npy")
    np.savez(tmp_path / "objects.npz", x=np.array([[1], "a"], dtype=object))
    with pytest.raises(ValueError, match="objects.npz: not a plain numeric array"):
        load_dataset(tmp_path / "objects.npz")
    (tmp_path / "junk.npy").write_bytes(b"x,y\n1,2\n")  # no NumPy header: NumPy would call it pickled data
    with pytest.raises(ValueError, match=r"junk.npy: not a NumPy file: it starts with neither the .npy header"):
        load_dataset(tmp_path / "junk.npy")
    (tmp_path / "bom.csv").write_bytes("\ufeffa,b\n1,2\n".encode("utf-8"))
    assert load_dataset(tmp_path / "bom.csv").columns == ["a", "b"]


def test_augment_views_own_greyscale_images_in_their_shape_and_refuses_other_data(tmp_path):
    from tinygen.models.gan import train_gan
    from tinygen.models.vae import train_vae
    g = np.random.default_rng(0)
    images = (g.random((40, 12, 10)) * 255).astype(np.uint8)  # not 28x28: the run's own shape is used
    G, _, history = train_gan(train_set=images, augment=["crop", "rotate"], steps=2, batch_size=8, quiet=True,
                              pictures=False)
    assert np.isfinite(history[-1]["d_loss"])
    model, history = train_vae(train_set=images, augment=["crop"], epochs=1, batch_size=8, quiet=True,
                               pictures=False)
    assert np.isfinite(history[-1]["train_loss"])
    with pytest.raises(ValueError, match=r"--augment .* vectors of 16 values"):
        train_gan(train_set=g.random((40, 16)).astype(np.float32), augment=["crop"], steps=1, batch_size=8,
                  quiet=True, pictures=False)
    with pytest.raises(ValueError, match=r"--augment .* images of shape 8 x 8 x 3"):
        train_vae(train_set=(g.random((40, 8, 8, 3)) * 255).astype(np.uint8), augment=["flip"], epochs=1,
                  batch_size=8, quiet=True, pictures=False)
