"""Super-resolution of MNIST digits, 14x14 -> 28x28, with a network conditioned on the low-resolution digit.

    tinygen app superres train --out runs/superres --epochs 3     # checkpoint.npz and metrics.jsonl in --out
    tinygen app superres eval runs/superres/checkpoint.npz        # PSNR on the test split against bicubic

The low-resolution digit is the 28x28 one averaged over 2x2 blocks (``downsample``), so every method sees exactly
the information a 14x14 sensor with square pixels would record. The model (``SuperResolver``) is a regression of
the 28x28 digit on the 14x14 one: two 3x3 convolutions at 14x14, a stride-2 transposed convolution to 28x28 and a
3x3 convolution to one channel, added to the bicubic upsampling of the input. That last convolution starts at zero,
so the untrained model is bicubic and training learns the correction to it. Trained with the mean squared error,
it estimates E[x_28 | x_14], the choice that maximises PSNR; where the 14x14 digit leaves a stroke ambiguous it
draws the average of the candidates.

``resize`` implements nearest, bilinear and bicubic (Keys' kernel, a = -0.5) resampling as Pillow does: pixel
centres at (i + 0.5), the kernel window clipped at the border and its weights renormalised. ``psnr`` is per image,
10 log10(1 / MSE) for pixels in [0, 1], averaged over images; every estimate is clipped to [0, 1] first.
"""
import json
import time
from pathlib import Path

import numpy as np

from .. import as_tensor, nn, no_grad, optim
from .. import random as _random
from ..data import DataLoader
from ..models import train_utils as tu
from . import _imaging as im

SUMMARY = "14x14 -> 28x28 digits with a network conditioned on the low-resolution digit, scored against bicubic"
NAME = "superres"
LOW = im.SIDE // 2
METHODS = ("nearest", "bilinear", "bicubic")
DEFAULTS = {"epochs": 3, "batch_size": 64, "lr": 1e-3, "channels": 16, "seed": 0, "n_train": None}
EVAL_PROGRESS_DIGITS = 1000  # test digits scored after each epoch (all of them by ``eval``)


# ---- resampling ------------------------------------------------------------------------------------------------------
def _cubic(x, a=-0.5):
    """Keys' cubic convolution kernel, a = -0.5 as Pillow and MATLAB's imresize (OpenCV's INTER_CUBIC uses a = -0.75
    and repeats the edge pixels, so it differs slightly); support [-2, 2]."""
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _triangle(x):
    return np.maximum(1.0 - np.abs(x), 0.0)


_KERNELS = {"bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


def resize_weights(in_size, out_size, method):
    """The (out_size, in_size) matrix W with resized = W @ signal along one axis, computed as Pillow's resampler
    does: output pixel i samples the input at centre (i + 0.5) * in/out; the kernel is widened by the scale when
    shrinking (antialiasing); its window is clipped to the signal and the weights renormalised to sum to 1."""
    if method not in METHODS:
        raise ValueError(f"resize: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size))
    if method == "nearest":
        weights[np.arange(out_size), np.minimum(((np.arange(out_size) + 0.5) * scale).astype(int), in_size - 1)] = 1
        return weights
    kernel, support = _KERNELS[method]
    widen = max(scale, 1.0)
    support *= widen
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)  # int() truncates towards zero, as Pillow's C cast
        hi = min(int(centre + support + 0.5), in_size)
        w = kernel((np.arange(lo, hi) - centre + 0.5) / widen)
        weights[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    return weights


def resize(images, size, method="bicubic"):
    """Resize images (..., H, W) to ``size`` = (H', W') (or one int for both) with nearest, bilinear or bicubic
    resampling (see ``resize_weights``); float64 arithmetic, returned in the input's float dtype (float32 for
    integer input). Values are not clipped: bicubic overshoots near edges."""
    x = np.asarray(images)
    if x.ndim < 2:
        raise ValueError(f"resize: images must have shape (..., H, W), got {x.shape}")
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if min(out_h, out_w) < 1:
        raise ValueError(f"resize: size must be positive, got {size!r}")
    wh = resize_weights(x.shape[-2], out_h, method)
    ww = resize_weights(x.shape[-1], out_w, method)
    out = wh @ x.astype(np.float64) @ ww.T
    return out.astype(x.dtype if x.dtype.kind == "f" else np.float32)


def downsample(images):
    """28x28 -> 14x14 by 2x2 average pooling: each low-resolution pixel is the mean of its four pixels."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim < 2 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"downsample: images must be (..., H, W) with even H and W, got {x.shape}")
    h, w = x.shape[-2:]
    return x.reshape(*x.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))


def psnr(estimate, truth, peak=1.0):
    """Peak signal-to-noise ratio per image in dB: 10 log10(peak^2 / MSE), the MSE over each image's pixels
    (the last two axes); inf for an exact image."""
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"psnr: estimate and truth differ in shape: {estimate.shape} vs {truth.shape}")
    mse = ((estimate - truth) ** 2).mean(axis=(-2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak ** 2 / mse)


# ---- the model -------------------------------------------------------------------------------------------------------
class SuperResolver(nn.Module):
    """(N, 14, 14) low-resolution digits -> (N, 28, 28): the bicubic upsampling plus a learned correction (see the
    module docstring)."""

    def __init__(self, channels=32):
        super().__init__()
        c = tu.check_int("channels", channels, low=2)
        self.channels = c
        self.features = nn.Sequential(nn.Conv2d(1, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(),
                                      nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.ReLU(),
                                      nn.Conv2d(c // 2, 1, 3, 1, 1))
        # the correction starts at zero, so an untrained model is bicubic and training only improves on it
        nn.init.zeros_(self.features[-1].weight)
        nn.init.zeros_(self.features[-1].bias)
        # bicubic 14 -> 28 along each axis: a constant linear map, so the upsampling is part of the graph
        # (a buffer outside the state_dict, so it moves with .to() instead of being copied to the device per call)
        self.register_buffer("up", as_tensor(resize_weights(LOW, im.SIDE, "bicubic").astype(np.float32)),
                             persistent=False)

    def forward(self, low):
        if low.ndim != 3 or tuple(low.shape[1:]) != (LOW, LOW):
            raise ValueError(f"SuperResolver: expected low-resolution digits of shape (N, {LOW}, {LOW}), got "
                             f"{tuple(low.shape)}")
        bicubic = self.up @ low @ self.up.T
        return bicubic + self.features(low.reshape(low.shape[0], 1, LOW, LOW)).reshape(low.shape[0], im.SIDE,
                                                                                       im.SIDE)

    def extra_repr(self):
        return f"channels={self.channels}"


def upscale(model, low, batch_size=500, device="cpu"):
    """The model's 28x28 estimates of low-resolution digits (N, 14, 14) as a NumPy array clipped to [0, 1]."""
    was = model.training
    model.eval()
    out = []
    try:
        with no_grad():
            for i in range(0, len(low), batch_size):
                x = as_tensor(np.ascontiguousarray(low[i:i + batch_size], dtype=np.float32), device=device)
                out.append(tu.host(model(x), np.float32))
    finally:
        model.train(was)
    return np.clip(np.concatenate(out), 0.0, 1.0)


def evaluate(model, images, device="cpu"):
    """Mean PSNR (dB) over ``images`` (N, 28, 28) in [0, 1] of each upsampling of their 2x2-average-pooled
    versions: ``{"nearest", "bilinear", "bicubic", "model"}`` (model only when given)."""
    low = downsample(images)
    scores = {m: float(psnr(np.clip(resize(low, im.SIDE, m), 0, 1), images).mean()) for m in METHODS}
    if model is not None:
        scores["model"] = model_psnr(model, low, images, device)
    return scores


def model_psnr(model, low, images, device="cpu"):
    """Mean PSNR (dB) of the model's upsampling of ``low`` against ``images``."""
    return float(psnr(upscale(model, low, device=device), images).mean())


# ---- training --------------------------------------------------------------------------------------------------------
def make_config(**settings):
    unknown = sorted(set(settings) - set(DEFAULTS) - {"data", "device"})
    if unknown:
        raise ValueError(f"superres: unknown setting(s) {unknown}; known: {sorted(DEFAULTS)} and data, device")
    cfg = dict(DEFAULTS, data=None, device="cpu")
    cfg.update({k: v for k, v in settings.items() if v is not None})
    for key, low in (("epochs", 1), ("batch_size", 1), ("channels", 2), ("seed", 0)):
        cfg[key] = tu.check_int(key, cfg[key], low=low)
    cfg["n_train"] = tu.check_int("n_train", cfg["n_train"], optional=True)
    cfg["lr"] = tu.check_number("lr", cfg["lr"], allow_low=False)
    return cfg


def model_from_checkpoint(ckpt, device="cpu"):
    """The trained SuperResolver of a checkpoint dict (``tinygen.load``), in eval mode."""
    if not isinstance(ckpt, dict) or ckpt.get("model") != NAME:
        raise ValueError(f"not a superres checkpoint (model {ckpt.get('model') if isinstance(ckpt, dict) else None!r})")
    model = SuperResolver(make_config(**{k: v for k, v in ckpt["config"].items() if k in DEFAULTS})["channels"])
    model.load_state_dict(ckpt["modules"]["model"])
    return model.to(device).eval()


def train_superres(out=None, quiet=False, train_set=None, test_set=None, **settings):
    """Train a SuperResolver with Adam on the mean squared error; returns ``(model, history)``, one record per
    epoch with the training loss and the mean PSNR of model and bicubic on the first test digits.

    out: folder for ``checkpoint.npz`` (rewritten after every epoch) and ``metrics.jsonl``; it must not hold a run.
    train_set / test_set: (N, 28, 28) digits (uint8 or floats in [0, 1]) instead of MNIST's splits.
    """
    cfg = make_config(**settings)
    if train_set is None:
        train_x = im.digits("train", cfg["n_train"], cfg["data"])[0]
    else:
        train_x = np.asarray(im.to_unit(np.asarray(train_set)))[:cfg["n_train"]]
    test_x = im.digits("test", EVAL_PROGRESS_DIGITS, cfg["data"])[0] if test_set is None else \
        np.asarray(im.to_unit(np.asarray(test_set)))
    if train_x.ndim != 3 or train_x.shape[1:] != (im.SIDE, im.SIDE):
        raise ValueError(f"superres: training digits must have shape (N, 28, 28), got {train_x.shape}")
    tu.check_batch_fits(cfg["batch_size"], len(train_x))
    folder = None
    if out is not None:
        folder = tu.prepare_out_dir(out)
        (folder / "metrics.jsonl").write_text("")
    _random.manual_seed(cfg["seed"])
    model = SuperResolver(cfg["channels"]).to(cfg["device"])
    opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    loader = DataLoader((downsample(train_x), train_x), batch_size=cfg["batch_size"], shuffle=True,
                        seed=cfg["seed"], device=cfg["device"])
    def batch_loss(batch):
        low, high = batch
        loss = ((model(low) - high) ** 2).mean()
        return loss, low.shape[0], {"mse": loss * low.shape[0]}

    test_low = downsample(test_x)
    bicubic = evaluate(None, test_x)["bicubic"]  # the baseline does not change during training
    history = []
    for epoch in range(cfg["epochs"]):
        t0 = time.perf_counter()
        sums, seen = tu.optimize_epoch(model, opt, loader, batch_loss, f"epoch {epoch + 1}/{cfg['epochs']}",
                                       quiet=True)
        record = {"epoch": epoch + 1, "train_mse": sums["mse"] / seen,
                  "test_psnr": model_psnr(model, test_low, test_x, cfg["device"]),
                  "test_psnr_bicubic": bicubic, "seconds": time.perf_counter() - t0}
        history.append(record)
        if not quiet:
            print(f"epoch {epoch + 1}/{cfg['epochs']}  train mse {record['train_mse']:.5f}  test PSNR "
                  f"{record['test_psnr']:.2f} dB (bicubic {record['test_psnr_bicubic']:.2f}) on "
                  f"{len(test_x)} digits  {record['seconds']:.0f} s", flush=True)
        if folder is not None:
            with open(folder / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            tu.save_checkpoint(folder / "checkpoint.npz", NAME, cfg, epoch + 1, {"model": model}, {"adam": opt},
                               devices=(cfg["device"],), extra={"last": record, "num_train": int(len(train_x))})
    return model, history


# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p):
    sub = p.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="train the conditional model", description="Train the super-resolution "
                        "network on MNIST's training split (2x2-average-pooled inputs, mean squared error).",
                        formatter_class=p.formatter_class)
    tr.add_argument("--out", default="runs/superres", help="folder for checkpoint.npz and metrics.jsonl")
    tr.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the training digits")
    tr.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="digits per Adam step")
    tr.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate")
    tr.add_argument("--channels", type=int, default=DEFAULTS["channels"], help="width of the convolutions")
    tr.add_argument("--n-train", type=int, default=None, help="train on the first N training digits (default: all)")
    tr.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="initial weights and data order")
    ev = sub.add_parser("eval", help="PSNR on the test split against nearest, bilinear and bicubic",
                        description="Score a trained model on MNIST's test split against nearest, bilinear and "
                                    "bicubic upsampling, and write a picture.",
                        formatter_class=p.formatter_class)
    ev.add_argument("checkpoint", help="checkpoint.npz written by 'tinygen app superres train'")
    ev.add_argument("--n", type=int, default=None, help="score the first N test digits (default: all 10,000)")
    ev.add_argument("--out", default=None,
                    help="picture (.png) with rows low-res, bicubic, model, truth (default: superres.png beside the "
                         "checkpoint)")
    ev.add_argument("--show", type=int, default=12, help="digits in the picture")
    ev.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    for sp in (tr, ev):
        sp.add_argument("--data", default=None, metavar="DIR", help="folder holding MNIST (default: $TINYGEN_DATA, "
                                                                    "else the copy shipped with tinygen)")
        sp.add_argument("--device", default="cpu", help="cpu or cuda")
        # --threads after the action too (a default here would override one given before it, so its own dest)
        sp.add_argument("--threads", dest="action_threads", metavar="THREADS", type=tu.thread_option,
                        default=None, help="CPU threads for matrix products and kernels: a number, or auto (the "
                        "CPUs other processes leave idle) (default: auto)")


def run(args):
    if args.action_threads is not None:
        tu.use_threads(args.action_threads)
    if args.action == "train":
        for option in ("epochs", "batch_size", "channels"):
            im.check_count("--" + option.replace("_", "-"), getattr(args, option))
        if args.n_train is not None:
            im.check_count("--n-train", args.n_train)
        train_superres(out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       channels=args.channels, n_train=args.n_train, seed=args.seed, data=args.data,
                       device=args.device)
        print(f"checkpoint: {Path(args.out) / 'checkpoint.npz'}")
        return 0
    n = None if args.n is None else im.check_count("--n", args.n)
    show = im.check_count("--show", args.show)
    out = im.check_picture_path("--out", args.out or Path(args.checkpoint).parent / "superres.png")
    model = model_from_checkpoint(im.load_checkpoint(args.checkpoint, "superres", (NAME,)), args.device)
    truth = im.digits("test", n, args.data)[0]
    scores = evaluate(model, truth, args.device)
    shown = truth[:show]
    low = downsample(shown)
    im.write_rows(out, [resize(low, im.SIDE, "nearest"), np.clip(resize(low, im.SIDE, "bicubic"), 0, 1),
                        upscale(model, low, device=args.device), shown])
    result = {"digits": len(truth), **{f"psnr_{k}": v for k, v in scores.items()},
              "gain_over_bicubic": scores["model"] - scores["bicubic"], "picture": str(out)}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"mean PSNR over {len(truth)} MNIST test digits, 14x14 (2x2 average) -> 28x28:")
        for k in (*METHODS, "model"):
            print(f"  {k:>8}: {scores[k]:6.2f} dB")
        print(f"  model - bicubic: {result['gain_over_bicubic']:+.2f} dB")
        print(f"picture (rows: low-res, bicubic, model, truth): {out}")
    return 0
