"""Classifier-based sample metrics against closed forms and known cases."""
import math

import numpy as np
import pytest

import tinygen
from tinygen import metrics
from tinygen.metrics import mnist as mm


def one_hot(labels, k=10, confidence=1.0):
    p = np.full((len(labels), k), (1 - confidence) / (k - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


# ---- class histogram, coverage, KL -----------------------------------------------------------------------------------
def test_coverage_and_kl_of_a_balanced_set():
    labels = np.repeat(np.arange(10), 30)
    assert metrics.class_coverage(labels) == 10
    assert metrics.class_kl(labels) == pytest.approx(0.0, abs=1e-12)


def test_coverage_and_kl_of_a_single_class():
    labels = np.full(50, 7)
    assert metrics.class_coverage(labels) == 1
    assert metrics.class_kl(labels) == pytest.approx(math.log(10))
    assert metrics.class_histogram(labels).tolist() == [0] * 7 + [50] + [0] * 2


def test_coverage_threshold_and_kl_closed_form():
    # 5 classes share the samples evenly, a sixth gets 1 sample out of 1001: below a 1% share
    labels = np.concatenate([np.repeat(np.arange(5), 200), [9]])
    assert metrics.class_coverage(labels, min_share=0.01) == 5
    assert metrics.class_coverage(labels, min_share=0.0005) == 6
    p = np.array([200] * 5 + [1]) / 1001
    assert metrics.class_kl(labels) == pytest.approx(float(np.sum(p * np.log(p * 10))))


def test_probabilities_are_turned_into_predicted_classes():
    p = one_hot(np.array([1, 1, 2]), confidence=0.6)
    assert metrics.class_histogram(p).tolist() == [0, 2, 1] + [0] * 7


def test_label_errors_name_the_problem():
    with pytest.raises(ValueError, match="0..9"):
        metrics.class_coverage(np.array([0, 10]))
    with pytest.raises(ValueError, match="no samples"):
        metrics.class_kl(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        metrics.class_kl(np.zeros((2, 3, 4)))


# ---- Fréchet distance -----------------------------------------------------------------------------------------------
def test_frechet_of_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16))
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_a_shifted_set_is_the_squared_shift():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))  # correlated features
    shift = rng.normal(size=8)
    assert metrics.frechet_distance(f, f + shift) == pytest.approx(float(shift @ shift), rel=1e-7)


def test_frechet_of_independent_gaussian_samples_approaches_the_mean_term():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) + np.array([1.0, 0.0, 0.0, 2.0])
    assert metrics.frechet_distance(a, b) == pytest.approx(5.0, abs=0.1)


def test_frechet_from_stats_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = metrics.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_trace_term_matches_the_eigenvalues_of_the_product():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)  # non-commuting covariances
    # tr sqrt(C1 C2) from the (real, positive) eigenvalues of the non-symmetric product, computed independently
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
    expected = np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    mu = np.zeros(6)
    assert metrics.frechet_distance_from_stats(mu, c1, mu, c2) == pytest.approx(expected, rel=1e-8)


def test_sqrtm_psd_squares_back_and_clips_round_off():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 3))
    c = a @ a.T  # rank 3: two zero eigenvalues, which round-off can make slightly negative
    s = metrics.sqrtm_psd(c)
    assert np.allclose(s @ s, c, atol=1e-10) and np.allclose(s, s.T)
    assert np.all(np.isfinite(s))


def test_frechet_errors_name_the_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        metrics.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_frechet_accepts_tensors():
    f = np.random.default_rng(5).normal(size=(50, 3)).astype(np.float32)
    assert metrics.frechet_distance(tinygen.tensor(f), f + 1) == pytest.approx(3.0, rel=1e-5)


# ---- inception score -------------------------------------------------------------------------------------------------
def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    assert metrics.inception_score(one_hot(np.repeat(np.arange(10), 5))) == pytest.approx(10.0, rel=1e-9)


def test_inception_score_of_one_class_or_uniform_uncertainty_is_one():
    assert metrics.inception_score(one_hot(np.full(20, 3))) == pytest.approx(1.0)
    assert metrics.inception_score(np.full((20, 10), 0.1)) == pytest.approx(1.0)


def test_inception_score_closed_form_for_partial_confidence():
    # balanced classes, each sample puts c on its class: E KL(p(y|x) || uniform) = log 10 - H(p(y|x))
    c = 0.82
    p = one_hot(np.repeat(np.arange(10), 3), confidence=c)
    row = p[0]
    expected = math.exp(math.log(10) + float(np.sum(row * np.log(row))))
    assert metrics.inception_score(p) == pytest.approx(expected, rel=1e-9)


def test_inception_score_rejects_non_distributions():
    with pytest.raises(ValueError, match="probability"):
        metrics.inception_score(np.ones((3, 10)))


def test_classifier_input_conversion():
    u8 = np.full((2, 28, 28), 255, dtype=np.uint8)
    assert np.allclose(mm.to_classifier_input(u8), 1.0) and mm.to_classifier_input(u8).shape == (2, 784)
    sym = -np.ones((3, 1, 28, 28), dtype=np.float32)
    assert np.allclose(mm.to_classifier_input(sym, value_range=(-1, 1)), 0.0)
    with pytest.raises(ValueError, match="MNIST-sized"):
        mm.to_classifier_input(np.zeros((2, 27, 27)))


# ---- with a classifier ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_classifier():
    """A quickly trained classifier on part of the bundled test split (not the real judge: enough to check the
    plumbing and that real digits score as expected)."""
    from tinygen.data import mnist
    from tinygen.models import classifier
    images, labels = mnist("test")
    model, acc = classifier.train_classifier(epochs=3, hidden=[128], dropout=0.0,
                                             train_set=(images[:3000], labels[:3000]),
                                             test_set=(images[3000:4000], labels[3000:4000]), quiet=True)
    assert acc > 0.85
    return model.eval(), images, labels


def test_evaluate_images_on_real_digits(small_classifier):
    clf, images, labels = small_classifier
    real = images[5000:7000]
    out = metrics.evaluate_images(real, classifier=clf)
    assert out["num_samples"] == 2000 and out["coverage"] == 10
    assert out["class_kl"] < 0.05
    assert 5.0 < out["inception_score"] <= 10.0
    assert out["frechet_distance"] < 5.0  # against the same test split's statistics


def test_evaluate_images_detects_a_collapsed_generator(small_classifier):
    clf, images, labels = small_classifier
    ones = images[labels == 1][:300]
    out = metrics.evaluate_images(ones, classifier=clf, min_share=0.05)
    real = metrics.evaluate_images(images[5000:5300], classifier=clf)
    assert out["coverage"] == 1 and out["class_kl"] > 1.5
    assert out["inception_score"] < 2.0
    assert out["frechet_distance"] > 5 * real["frechet_distance"]


def test_evaluate_images_value_range_for_tanh_outputs(small_classifier):
    clf, images, _ = small_classifier
    x = images[:500].astype(np.float32) / 255.0
    a = metrics.evaluate_images(x, classifier=clf, reference=None)
    b = metrics.evaluate_images(x * 2 - 1, classifier=clf, value_range=(-1, 1), reference=None)
    assert "frechet_distance" not in a
    assert a["inception_score"] == pytest.approx(b["inception_score"], rel=1e-5)
