"""Sample-quality metrics. ``tinygen.metrics.mnist``: classifier-based metrics for generated MNIST digits."""
from .mnist import (class_histogram, class_coverage, class_kl, feature_statistics, sqrtm_psd, frechet_distance,
                    frechet_distance_from_stats, inception_score, classify, reference_statistics, evaluate_images)

__all__ = ["class_histogram", "class_coverage", "class_kl", "feature_statistics", "sqrtm_psd", "frechet_distance",
           "frechet_distance_from_stats", "inception_score", "classify", "reference_statistics", "evaluate_images"]
