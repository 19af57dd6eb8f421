"""Sample-quality metrics for generated MNIST digits, computed with a trained MNIST classifier.

The math works on plain NumPy arrays (float64), so it can be checked against closed forms:

    class_coverage(labels)        classes that get at least ``min_share`` of the samples (out of 10)
    class_kl(labels)              KL(histogram of predicted classes || uniform): 0 when balanced, log 10 for one class
    frechet_distance(f1, f2)      ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) of two feature sets (the FID
                                  formula, here on the classifier's penultimate features rather than Inception's)
    inception_score(probs)        exp(E_x KL(p(y|x) || p(y))): 1 (all one class, or no confident predictions) to 10

``evaluate_images(images)`` runs the classifier (``tinygen.models.classifier.load_classifier``) and returns all of
them, the Fréchet distance measured against the real MNIST test set.
"""
import math

import numpy as np

from .. import backend
from ..tensor import Tensor

NUM_CLASSES = 10


def _host(x, name):
    if isinstance(x, Tensor):
        x = backend.to_device(x.detach().data, "cpu")
    elif backend.is_device_array(x):
        x = x.get()
    return np.asarray(x)


def _labels(labels, num_classes):
    y = _host(labels, "labels")
    if y.ndim == 2:  # class probabilities: take the most likely class
        y = y.argmax(axis=1)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"expected class labels (N,) of integers or probabilities (N, K), got shape {y.shape} "
                         f"dtype {y.dtype}")
    if y.size == 0:
        raise ValueError("no samples to score")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got values {int(y.min())}..{int(y.max())}")
    return y


def class_histogram(labels, num_classes=NUM_CLASSES):
    """Samples per class (int array of length ``num_classes``) from labels (N,) or probabilities (N, K)."""
    return np.bincount(_labels(labels, num_classes), minlength=num_classes)


def class_coverage(labels, num_classes=NUM_CLASSES, min_share=0.01):
    """How many classes receive at least ``min_share`` of the samples (``num_classes`` for a generator that makes
    every digit, 1 for one that collapsed to a single digit)."""
    counts = class_histogram(labels, num_classes)
    return int((counts >= min_share * counts.sum()).sum())


def class_kl(labels, num_classes=NUM_CLASSES):
    """KL(p || uniform) in nats of the histogram p of predicted classes: 0 for a perfectly balanced generator,
    log(num_classes) when every sample is the same class."""
    counts = class_histogram(labels, num_classes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.sum(p * np.log(p * num_classes)))


def feature_statistics(features):
    """Mean (D,) and covariance (D, D) (unbiased, as NumPy's cov) of features (N, D), in float64."""
    f = _host(features, "features").astype(np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(matrix):
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition (round-off
    negative eigenvalues are treated as 0)."""
    m = np.asarray(matrix, dtype=np.float64)
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, cov1, mu2, cov2):
    """The Fréchet distance of two Gaussians: ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is computed as tr((S C2 S)^(1/2)) with S = C1^(1/2): S C2 S is symmetric PSD and has the same
    eigenvalues as C1 C2, so a symmetric eigendecomposition suffices (no general matrix square root needed).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: mismatched statistics: means {mu1.shape} and {mu2.shape}, "
                         f"covariances {cov1.shape} and {cov2.shape}")
    s1 = sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)
    return max(value, 0.0)  # round-off can leave a tiny negative number for identical sets


def frechet_distance(features1, features2):
    """Fréchet distance between two feature sets (N1, D) and (N2, D), each summarised by mean and covariance."""
    return frechet_distance_from_stats(*feature_statistics(features1), *feature_statistics(features2))


def inception_score(probs, eps=1e-12):
    """exp(mean_x KL(p(y|x) || p(y))) for class probabilities (N, K), p(y) their mean over the samples.

    Near K when each sample is confidently one class and the classes are balanced; 1 when all samples get the
    same distribution (one class only, or uniform uncertainty).
    """
    p = _host(probs, "probs").astype(np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"inception_score: probs must have shape (N, K) with N >= 1, got {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("inception_score: each row of probs must be a probability distribution (>= 0, sums to 1)")
    py = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(py + eps))).sum(axis=1)
    return float(math.exp(kl.mean()))


# ---- with the classifier ---------------------------------------------------------------------------------------------
def to_classifier_input(images, value_range=(0.0, 1.0)):
    """Images as float32 (N, 784) in [0, 1]: from (N, 28, 28), (N, 1, 28, 28) or (N, 784); uint8 as 0..255, floats
    mapped from ``value_range`` (e.g. (-1, 1) for a tanh generator) and clipped."""
    x = _host(images, "images")
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != 784:
        raise ValueError(f"expected MNIST-sized images (N, 28, 28), (N, 1, 28, 28) or (N, 784), got shape {x.shape}")
    x = x.reshape(len(x), 784)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    lo, hi = value_range
    x = (x.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)


def classify(images, classifier=None, batch_size=1000, value_range=(0.0, 1.0)):
    """(probs (N, 10), features (N, D)) of images under the classifier (default: ``load_classifier()``)."""
    from ..models.classifier import load_classifier
    clf = classifier if classifier is not None else load_classifier()
    x = to_classifier_input(images, value_range)
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        p, f = clf.probs_and_features(x[i:i + batch_size])
        probs.append(p)
        feats.append(f)
    return np.concatenate(probs), np.concatenate(feats)


_reference_cache = {}


def reference_statistics(classifier=None, split="test", root=None):
    """Mean and covariance of the classifier features of a real MNIST split (cached per classifier)."""
    from ..data import mnist
    from ..models.classifier import load_classifier
    clf = classifier if classifier is not None else load_classifier()
    key = (id(clf), split, str(root))
    if key not in _reference_cache:
        images = mnist(split, root=root).images
        _, feats = classify(images, clf)
        _reference_cache[key] = feature_statistics(feats)
    return _reference_cache[key]


def evaluate_images(images, classifier=None, value_range=(0.0, 1.0), reference="test", min_share=0.01, root=None):
    """All the metrics of a batch of generated images, as a dict of floats:

    coverage (classes with >= ``min_share`` of the samples), class_kl, inception_score, frechet_distance (against
    the real ``reference`` split's features; omitted when ``reference`` is None), num_samples.
    """
    from ..models.classifier import load_classifier
    clf = classifier if classifier is not None else load_classifier()
    probs, feats = classify(images, clf, value_range=value_range)
    labels = probs.argmax(axis=1)
    out = {"num_samples": int(len(probs)),
           "coverage": class_coverage(labels, min_share=min_share),
           "class_kl": class_kl(labels),
           "inception_score": inception_score(probs)}
    if reference is not None:
        mu, cov = reference_statistics(clf, reference, root)
        out["frechet_distance"] = frechet_distance_from_stats(*feature_statistics(feats), mu, cov)
    return out
