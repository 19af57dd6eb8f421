"""An MLP digit classifier for MNIST (784-512-512-10, ReLU, dropout), the judge behind the sample metrics.

    clf = load_classifier()          # yours (tinygen train classifier), else the one shipped with tinygen
    clf.probs(x)                     # (N, 10) class probabilities of images x in [0, 1]
    clf.features(x)                  # (N, 512) penultimate activations (for the Fréchet distance)

``tinygen train classifier`` writes ``$TINYGEN_CACHE/mnist_classifier.npz`` (default ``~/.cache/tinygen/``), a
checkpoint that records its test accuracy, and ``tinygen eval`` on it re-measures the accuracy. Training (8 epochs)
takes two to three minutes on an idle 2-core CPU. Without that file, the metrics use the copy shipped in the
package (``tinygen/models/files``: the same recipe, seed 0, weights stored as float16), so a fresh offline machine
can score samples.
"""
import json
import time
from pathlib import Path

import numpy as np

from .. import Tensor, as_tensor, config, nn, no_grad, optim
from .. import distributed as dist
from .. import random as _random
from ..data import DataLoader, to_unit
from ..nn import functional as F
from . import train_utils as tu

NAME = "classifier"
CACHE_FILE = "mnist_classifier.npz"
# Pixel mean and std of the MNIST training images: the input is standardised inside the model, so callers pass
# plain [0, 1] pixels.
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081
DEFAULTS = {"epochs": 8, "batch_size": 128, "lr": 1e-3, "hidden": [512, 512], "dropout": 0.2, "seed": 0}


def cache_dir():
    """Where cached models live: ``$TINYGEN_CACHE``, else ``~/.cache/tinygen``."""
    return config.get("TINYGEN_CACHE")


def default_path():
    """Where ``tinygen train classifier`` writes the classifier (and where it is looked for first)."""
    return cache_dir() / CACHE_FILE


SHIPPED_PATH = Path(__file__).resolve().parent / "files" / CACHE_FILE


def classifier_path():
    """The classifier the metrics use: yours at ``default_path()`` when it exists, else the shipped one (None when
    neither exists)."""
    for path in (default_path(), SHIPPED_PATH):
        if path.exists():
            return path
    return None


class MNISTClassifier(nn.Module):
    """MLP 784 -> hidden... -> 10 with ReLU and dropout after each hidden layer. Takes images in [0, 1] of shape
    (N, 784), (N, 28, 28) or (N, 1, 28, 28); ``forward`` returns logits."""

    def __init__(self, hidden=(512, 512), dropout=0.2):
        super().__init__()
        self.hidden = tu.check_widths("MNISTClassifier: hidden", hidden)
        self.dropout_p = tu.check_number("MNISTClassifier: dropout", dropout, high=1.0)
        layers, width = [], 784
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def _input(self, x):
        if not isinstance(x, Tensor):
            arr = np.asarray(x)
            if arr.dtype == np.uint8:
                arr = to_unit(arr)
            x = as_tensor(arr, dtype=self.head.weight.dtype, device=self.head.weight.device)
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != 784:
            raise ValueError(f"MNISTClassifier: expected images (N, 784), (N, 28, 28) or (N, 1, 28, 28), got shape "
                             f"{tuple(x.shape)}")
        return (x.reshape(x.shape[0], 784) - PIXEL_MEAN) * (1.0 / PIXEL_STD)

    def features(self, x):
        """The penultimate activations (N, hidden[-1]): the last hidden layer after its ReLU (and dropout, in
        training mode; call ``eval()`` first for features of the trained network)."""
        return self.body(self._input(x))

    def forward(self, x):
        return self.head(self.features(x))

    def probs(self, x):
        """Class probabilities (N, 10), the softmax of the logits."""
        return F.softmax(self(x), dim=1)

    def probs_and_features(self, x):
        """(probs, features) as float64 NumPy arrays, in eval mode and without a graph (for the metrics)."""
        was = self.training
        self.eval()
        try:
            with no_grad():
                f = self.features(x)
                p = F.softmax(self.head(f), dim=1)
        finally:
            self.train(was)
        host = lambda t: np.asarray(t.cpu().data, dtype=np.float64)  # noqa: E731
        return host(p), host(f)

    def extra_repr(self):
        return f"hidden={self.hidden}, dropout={self.dropout_p}"


def accuracy(model, images, labels, batch_size=1000):
    """Fraction of ``images`` (uint8 or [0, 1] floats) whose most likely class is the label."""
    labels = np.asarray(labels)
    correct = 0
    for i in range(0, len(labels), batch_size):
        p, _ = model.probs_and_features(images[i:i + batch_size])
        correct += int((p.argmax(axis=1) == labels[i:i + batch_size]).sum())
    return correct / max(len(labels), 1)


def train_classifier(epochs=DEFAULTS["epochs"], batch_size=DEFAULTS["batch_size"], lr=DEFAULTS["lr"],
                     hidden=DEFAULTS["hidden"], dropout=DEFAULTS["dropout"], seed=DEFAULTS["seed"], data=None,
                     device="cpu", out=None, resume=False, save=None, quiet=False, train_set=None, test_set=None,
                     stop_after=None, compile=True):
    """Train the classifier (Adam, cosine-annealed learning rate) and return ``(model, test_accuracy)``.

    data: MNIST folder (default ``$TINYGEN_DATA``); the full training set is required (``train_set``/``test_set``
        may instead give ``(images, labels)`` arrays, e.g. a small subset in tests).
    out: folder for per-epoch checkpoints and ``metrics.jsonl`` (``resume=True`` continues from it).
    save: where to write the final model (a checkpoint with its test accuracy); None writes nothing.
    stop_after: end this call after that many epochs of the schedule (as if interrupted; resume later).
    compile: record the training step once per batch shape with ``tinygen.compile`` and replay it (bitwise the
        same run as ``compile=False``, which runs it eagerly).
    """
    cfg = {"epochs": tu.check_int("epochs", epochs, low=0), "batch_size": tu.check_int("batch_size", batch_size),
           "lr": tu.check_number("lr", lr, allow_low=False), "hidden": tu.check_widths("hidden", hidden),
           "dropout": float(dropout), "seed": tu.check_int("seed", seed, low=0)}
    train_images, train_labels = train_set if train_set is not None else tu.mnist_split("train", data)
    test_images, test_labels = test_set if test_set is not None else tu.mnist_split("test", data)
    tu.check_batch_fits(batch_size, len(train_labels))
    tu.check_global_batch(batch_size, len(train_labels))
    train_x = to_unit(np.asarray(train_images)).reshape(len(train_labels), 784)
    main = dist.is_main_process()
    quiet = quiet or not main

    _random.manual_seed(seed)
    model = MNISTClassifier(cfg["hidden"], cfg["dropout"]).to(device)
    net = tu.data_parallel(model)  # model itself in a world of one process
    opt = optim.Adam(net.parameters(), lr=cfg["lr"], capturable=device != "cpu")  # on a GPU: in the CUDA graph
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loader = DataLoader((train_x, np.asarray(train_labels)), batch_size=batch_size, shuffle=True, seed=seed,
                        device=device)
    parts = {"modules": {"model": model}, "optimizers": {"adam": opt}, "schedulers": {"lr": sched},
             "loaders": {"train": loader}}
    folder = tu.RunFolder(out, resume)
    start = folder.restore(parts, NAME, cfg)[1] if resume else 0
    acc = None
    for epoch in range(start, epochs if stop_after is None else min(epochs, start + stop_after)):
        t0 = time.perf_counter()
        train_loss = train_epoch(net, opt, loader, f"classifier epoch {epoch + 1}/{epochs}", quiet, compile)
        sched.step()
        acc = accuracy(model, test_images, test_labels)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "test_accuracy": acc,
                  "seconds": time.perf_counter() - t0}
        if not quiet:
            print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, test accuracy {acc:.4f}", flush=True)
        folder.write("metrics", record)
        folder.save(NAME, cfg, epoch + 1, parts, extra={"test_accuracy": acc})
    if acc is None:
        acc = accuracy(model, test_images, test_labels)
    if save is not None and main:
        save_classifier(model, save, cfg, acc)
    return model, acc


def train_epoch(model, opt, loader, desc="", quiet=True, compile=False):
    """One pass of cross-entropy steps over the loader (``compile``: the step through ``tinygen.compile``);
    returns the mean training loss per image."""
    def batch_loss(batch):
        x, y = batch
        loss = F.cross_entropy(model(x), y)
        return loss, len(y), {"loss": loss.detach() * len(y)}  # read after the step

    sums, seen = tu.optimize_epoch(model, opt, loader, batch_loss, desc, quiet, compile)
    return sums.get("loss", 0.0) / max(seen, 1)


def save_classifier(model, path, config, test_accuracy):
    """Write the trained model as a checkpoint (``model: "classifier"``) and a JSON note of its test accuracy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tu.save_checkpoint(path, NAME, config, config.get("epochs", 0), {"model": model},
                       extra={"test_accuracy": float(test_accuracy)})
    note = {"test_accuracy": float(test_accuracy), "config": config,
            "note": "MNIST test-set accuracy of this classifier (10,000 images)"}
    path.with_suffix(".json").write_text(json.dumps(note, indent=1) + "\n")


def classifier_from_checkpoint(ckpt, device="cpu"):
    """Rebuild the model held by a classifier checkpoint (the dict ``tinygen.load`` returns)."""
    if ckpt.get("model") != NAME:
        raise ValueError(f"not a classifier checkpoint (model {ckpt.get('model')!r})")
    cfg = ckpt["config"]
    model = MNISTClassifier(cfg.get("hidden", DEFAULTS["hidden"]), cfg.get("dropout", DEFAULTS["dropout"]))
    model.load_state_dict(ckpt["modules"]["model"])
    return model.to(device).eval()


_loaded = {}


def load_classifier(path=None, train_if_missing=True, data=None, device="cpu", quiet=False):
    """The cached classifier (eval mode), loaded once per process.

    path: default ``classifier_path()`` (yours, else the shipped one). When no file is found and
    ``train_if_missing``, train one on the MNIST training set (``data``, else $TINYGEN_DATA, else the shipped copy;
    a few minutes) and cache it at ``default_path()``. The model's ``source`` is the file it came from.
    """
    from ..serialization import load
    path = Path(path) if path is not None else (classifier_path() or default_path())
    key = (str(path.resolve()), device)
    if key in _loaded:
        return _loaded[key]
    if not path.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"no trained MNIST classifier at '{path}'; build one with `tinygen train "
                                    f"classifier`")
        if not quiet:
            print(f"training the MNIST classifier for the metrics (cached at {path}) ...", flush=True)
        train_classifier(data=data, device=device, save=path, quiet=quiet)
    ckpt = load(path)
    model = classifier_from_checkpoint(ckpt, device)
    model.test_accuracy = ckpt.get("extra", {}).get("test_accuracy")  # as recorded when it was trained
    model.source = str(path)
    _loaded[key] = model
    return model


# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                   help="images per gradient step (under mpiexec -n N: the global batch, a multiple of N)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate (cosine-annealed)")
    p.add_argument("--hidden", type=int, nargs="+", default=DEFAULTS["hidden"], help="hidden layer widths")
    p.add_argument("--dropout", type=float, default=DEFAULTS["dropout"], help="dropout after each hidden layer")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (initial weights, data order)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="MNIST folder (default: $TINYGEN_DATA, else the copy shipped with tinygen)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="folder for per-epoch checkpoints and metrics.jsonl (optional)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--save", default=None,
                   help=f"final model file; $TINYGEN_CACHE/{CACHE_FILE} (or ~/.cache/tinygen/) when not given")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    tu.add_compile_argument(p)


def train_from_args(args):
    tu.check_positive_options(args, ("epochs", "batch_size"))
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out (the folder of the run to continue)")
    save = Path(args.save) if args.save else default_path()
    _, acc = train_classifier(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, hidden=args.hidden,
                              dropout=args.dropout, seed=args.seed, data=args.data, device=args.device,
                              out=args.out, resume=args.resume, save=save, quiet=args.quiet,
                              compile=getattr(args, "compile", True))
    if dist.is_main_process():
        print(f"test accuracy {acc:.4f}; saved {save}")
    return 0


def sample_checkpoint(ckpt, args):
    raise ValueError("a classifier checkpoint holds no generative model to sample from")


def evaluate_checkpoint(ckpt, args):
    """Re-measure the test accuracy (on the test split of ``--data``, $TINYGEN_DATA or the shipped copy)."""
    model = classifier_from_checkpoint(ckpt, args.device)
    test = tu.mnist_split("test", args.data)
    return {"test_accuracy": accuracy(model, test.images, test.labels),
            "recorded_test_accuracy": ckpt.get("extra", {}).get("test_accuracy")}
