"""Data for tinygen's models: MNIST (both splits ship with the package), a DataLoader, augmentations and 2-D toy
mixtures.

    from tinygen import data
    images, labels = data.mnist("test")                      # (10000, 28, 28) uint8, (10000,) int64
    train = data.mnist("train")                              # $TINYGEN_DATA's copy if set, else the shipped one
    loader = data.DataLoader((data.to_symmetric(train.images), train.labels), batch_size=64, shuffle=True, seed=0)
    x = data.ring(2500, generator=0); data.ring.metrics(x)   # 8-Gaussian ring and its mode-collapse metrics
    ds = data.load_dataset("table.csv", label_column="kind")  # .npy/.npz/.csv or a PNG folder, checked
"""
from .mnist import (MNIST, MNISTFormatError, ChecksumError, mnist, mnist_or_bundled, load_split, read_idx,
                    verify_file, BUNDLED_DIR)
from .loader import DataLoader, to_unit, to_symmetric, binarize
from .transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomRotation, rotate
from .dataset import Dataset, ModelData, Scaling, load_dataset, from_arrays, is_mnist_folder
from .toy import GaussianMixture2D, ring, grid, mode_metrics, EVAL_SAMPLES


def download_mnist(dest, mirrors=None, timeout=30.0, splits=("train", "test"), progress=True):
    """Download the MNIST .gz files into ``dest``, verified by SHA-256 (see ``tinygen.data.download``)."""
    from .download import download_mnist as _download  # urllib is imported only when downloading
    return _download(dest, mirrors=mirrors, timeout=timeout, splits=splits, progress=progress)
from .distributed import DistributedSampler
