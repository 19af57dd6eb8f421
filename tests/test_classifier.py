"""The MNIST classifier behind the metrics: shapes, training on a small subset, caching and resume."""
import argparse
import json

import numpy as np
import pytest

import tinygen
from tinygen.data import mnist
from tinygen.models import classifier as C


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist("test")  # the bundled split: small subsets keep these tests fast
    return (images[:2000], labels[:2000]), (images[2000:3000], labels[2000:3000])


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / C.CACHE_FILE
    model, acc = C.train_classifier(epochs=2, hidden=[128], dropout=0.1, batch_size=50, train_set=digits[0],
                                    test_set=digits[1], save=path, quiet=True)
    return model, acc, path


def test_shapes_and_probabilities():
    tinygen.manual_seed(0)
    model = C.MNISTClassifier().eval()
    x = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 512)
    p = model.probs(x.reshape(5, 784).astype(np.float32) / 255)
    assert np.allclose(p.detach().numpy().sum(1), 1.0, atol=1e-5)
    # uint8 images are scaled to [0, 1]: the same digits as floats give the same output
    assert np.allclose(model(x).detach().numpy(), model(x.astype(np.float32) / 255).detach().numpy(), atol=1e-5)
    probs, feats = model.probs_and_features(x)
    assert probs.dtype == np.float64 and feats.shape == (5, 512) and (feats >= 0).all()  # after a ReLU


def test_bad_inputs_and_settings_raise_clear_errors():
    model = C.MNISTClassifier(hidden=[8])
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        model(np.zeros((2, 10, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="hidden"):
        C.MNISTClassifier(hidden=[])
    with pytest.raises(ValueError, match="dropout"):
        C.MNISTClassifier(dropout=1.0)
    with pytest.raises(ValueError, match="epochs"):
        C.train_classifier(epochs=-1, train_set=([], []), test_set=([], []))


def test_training_learns_and_the_saved_model_loads_back(trained, digits):
    model, acc, path = trained
    assert acc > 0.85  # 2 epochs on 2,000 digits; the real judge reaches about 98% (see load_classifier)
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["test_accuracy"] == pytest.approx(acc)
    loaded = C.load_classifier(path, train_if_missing=False)
    assert loaded.test_accuracy == pytest.approx(acc)
    assert not loaded.training
    x = digits[1][0][:50]
    assert np.allclose(loaded.probs_and_features(x)[0], model.probs_and_features(x)[0], atol=1e-6)
    assert C.load_classifier(path, train_if_missing=False) is loaded  # loaded once per process
    assert C.accuracy(loaded, *digits[1]) == pytest.approx(acc)


def test_the_shipped_classifier_is_used_without_a_cache_and_is_accurate(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path / "nothing"))
    monkeypatch.setattr(C, "_loaded", {})
    assert C.classifier_path() == C.SHIPPED_PATH and C.SHIPPED_PATH.stat().st_size < 2_000_000
    model = C.load_classifier(train_if_missing=False)
    assert model.source == str(C.SHIPPED_PATH) and model.head.weight.dtype == tinygen.float32
    test = mnist("test")
    acc = C.accuracy(model, test.images, test.labels)
    assert acc == pytest.approx(model.test_accuracy) and acc >= 0.98
    # yours, once trained, comes first
    mine = C.default_path()
    mine.parent.mkdir(parents=True)
    mine.write_bytes(C.SHIPPED_PATH.read_bytes())
    assert C.classifier_path() == mine


def test_missing_cache_without_training_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path / "nothing"))
    monkeypatch.setattr(C, "SHIPPED_PATH", tmp_path / "not-shipped.npz")
    assert C.default_path() == tmp_path / "nothing" / C.CACHE_FILE
    with pytest.raises(FileNotFoundError, match="tinygen train classifier"):
        C.load_classifier(train_if_missing=False)


def test_evaluate_checkpoint_remeasures_accuracy(trained):
    _, acc, path = trained
    ckpt = tinygen.serialization.load(path)
    assert ckpt["model"] == "classifier"
    out = C.evaluate_checkpoint(ckpt, argparse.Namespace(device="cpu", data=None))
    assert out["recorded_test_accuracy"] == pytest.approx(acc)
    assert 0.8 < out["test_accuracy"] <= 1.0  # on all 10,000 test digits


def test_resumed_training_equals_an_uninterrupted_run(digits, tmp_path):
    kw = dict(hidden=[32], batch_size=200, train_set=(digits[0][0][:600], digits[0][1][:600]),
              test_set=(digits[1][0][:200], digits[1][1][:200]), quiet=True)
    full, _ = C.train_classifier(epochs=3, out=tmp_path / "a", **kw)
    with pytest.raises(ValueError, match="--resume"):
        C.train_classifier(epochs=3, out=tmp_path / "a", **kw)  # never overwrite a run silently
    # run 1 epoch of the 3-epoch schedule, then resume: scheduler and loader continue where they stopped
    ckpt_dir = tmp_path / "b"
    part, _ = C.train_classifier(epochs=3, out=ckpt_dir, stop_after=1, **kw)
    resumed, _ = C.train_classifier(epochs=3, out=ckpt_dir, resume=True, **kw)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
    from tinygen.models.train_utils import read_metrics
    assert [r["epoch"] for r in read_metrics(ckpt_dir / "metrics.jsonl")] == [1, 2, 3]


def test_command_line_arguments():
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    args = p.parse_args(["--epochs", "1", "--hidden", "64", "32", "--resume"])
    assert args.hidden == [64, 32] and args.epochs == 1
    with pytest.raises(ValueError, match="--out"):
        C.train_from_args(args)
    with pytest.raises(ValueError, match="no generative model"):
        C.sample_checkpoint({}, args)
