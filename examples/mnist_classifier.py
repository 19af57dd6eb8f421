"""Train (or load) the MNIST classifier behind tinygen's sample metrics, and print what real digits score.

    TINYGEN_DATA=/path/to/mnist python examples/mnist_classifier.py            # cached after the first run
    TINYGEN_DATA=/path/to/mnist python examples/mnist_classifier.py --retrain  # train again and re-cache

Prints the test accuracy and the real-data baselines of the metrics: what a perfect generator would score
(the Fréchet distance between the training and test images' features, the inception score of the test images,
their class coverage and class KL). Generated samples are judged against these numbers.
"""
import argparse
import time

import numpy as np

from tinygen import metrics
from tinygen.data import mnist
from tinygen.models import classifier


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--retrain", action="store_true", help="train even if a cached classifier exists")
    p.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA)")
    p.add_argument("--epochs", type=int, default=classifier.DEFAULTS["epochs"])
    args = p.parse_args()

    path = classifier.default_path()
    if args.retrain or not path.exists():
        t0 = time.perf_counter()
        _, acc = classifier.train_classifier(epochs=args.epochs, data=args.data, save=path)
        print(f"trained in {time.perf_counter() - t0:.0f} s; test accuracy {acc:.4f}; cached at {path}")
    clf = classifier.load_classifier(path, train_if_missing=False)
    test = mnist("test", root=args.data)
    train = mnist("train", root=args.data)
    print(f"test accuracy: {classifier.accuracy(clf, test.images, test.labels):.4f}")

    t0 = time.perf_counter()
    test_probs, test_feats = metrics.classify(test.images, clf)
    _, train_feats = metrics.classify(train.images, clf)
    test_labels = test_probs.argmax(1)
    rng = np.random.default_rng(0)
    sub = rng.choice(len(train_feats), len(test_feats), replace=False)
    halves = np.array_split(rng.permutation(len(test_feats)), 2)  # random: the test file's two halves differ
    print("real-data baselines of the metrics:")
    print(f"  Fréchet distance, train (60,000) vs test (10,000) features:  "
          f"{metrics.frechet_distance(train_feats, test_feats):.4f}")
    print(f"  Fréchet distance, 10,000 random train vs test:                 "
          f"{metrics.frechet_distance(train_feats[sub], test_feats):.4f}")
    print(f"  Fréchet distance, test random half vs other half (5,000 each):  "
          f"{metrics.frechet_distance(test_feats[halves[0]], test_feats[halves[1]]):.4f}")
    print(f"  inception score of the test images:                             "
          f"{metrics.inception_score(test_probs):.4f}")
    print(f"  class coverage / class KL of the test images:                   "
          f"{metrics.class_coverage(test_labels)} / {metrics.class_kl(test_labels):.5f}")
    print(f"({time.perf_counter() - t0:.1f} s for the features)")


if __name__ == "__main__":
    main()
