"""Generative adversarial networks on MNIST and on the 2-D mode-collapse benchmarks (ring and grid of Gaussians).

    tinygen train gan                                  # MNIST: a label-conditioned DCGAN (about 2 min on 2 cores)
    tinygen train gan --preset pytorch-gan             # PyTorch-GAN's MLP GAN
    tinygen train gan --preset article                 # 100 binarised digits, tiny G and D (a case study)
    tinygen train gan --data ring --loss wgan-gp       # 8 Gaussians on a circle; mode metrics every epoch
    tinygen train gan --arch mlp --no-conditional      # the MLP networks, unconditional (shows mode collapse)
    tinygen train gan --data table.csv --label-column kind --conditional   # your data: .npy/.npz/.csv/PNG folder
    tinygen sample runs/gan/checkpoint.npz --n 64 --out grid.png     # or --out samples.npy for raw samples
    tinygen eval runs/gan/checkpoint.npz --json                       # coverage, class KL, Fréchet distance, IS

Pieces: ``models`` (Generator, Discriminator, the PyTorch-GAN architecture), ``losses`` (the registry ``LOSSES``
of objectives, ``register_loss`` for a new one; the gradient penalty), ``trainer`` (configuration, the loop and its
diagnostics, sampling, evaluation). The default MNIST recipe and the ring/grid numbers are in docs/results-gan.md.
"""
import argparse
from pathlib import Path

import numpy as np

from ... import distributed as dist
from ... import random as _random
from ...data import Scaling
from .. import remedies
from .. import train_utils as tu
from .losses import (LOSSES, GANLoss, discriminator_loss, generator_loss, get_loss, gradient_penalty,  # noqa: F401
                     interpolate, output_means, register_loss, clip_weights_)
from .models import (ARCHS, Discriminator, FlatDCGANGenerator, Generator, PYTORCH_GAN,  # noqa: F401
                     build_discriminator, build_generator)
from .trainer import (BASE, DATASETS, NAME, PRESETS, TOY, OPTIMIZERS, LR_DECAYS, EMA, evaluate_samples,  # noqa: F401
                      DCGAN_ONLY, MLP_ONLY, generator_from_checkpoint, make_config, resolve_data, sample,
                      save_samples_picture, train_gan)


# ---- command line ----------------------------------------------------------------------------------------------------
def _setting_text(settings):
    return " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in settings.items())


def loss_help():
    """The objectives and the settings each changes, for ``--help`` (from the registry, so a new loss is listed)."""
    lines = []
    for name, loss in LOSSES.items():
        line = f"  {name}{' (default)' if name == BASE['loss'] else ''}: {loss.summary}"
        if loss.defaults:
            line += f"; sets {_setting_text(loss.defaults)}"
        for dataset, settings in loss.dataset_defaults.items():
            line += f"; on {dataset}: {_setting_text(settings)}"
        lines.append(line)
    return "\n".join(lines)


def add_arguments(p):
    """The options of ``tinygen train gan``. Unset options take the recipe's value: the defaults, changed by
    --data (ring/grid), --preset and --loss, in that order."""
    p.description = ("Train a GAN. Unset options come from the recipe: the MNIST defaults, or the ring/grid "
                     "defaults, changed by --preset and by --loss. The losses:\n" + loss_help())
    a = p.add_argument
    a("--data", default=None, metavar="mnist|ring|grid|PATH",
      help="training data: MNIST (default: from $TINYGEN_DATA, else the copy shipped with tinygen), a folder "
           "holding MNIST, the 2-D mixtures ring / grid, or your data: a .npy/.npz array, a .csv of numbers or a "
           "folder of PNG images (class sub-folders give labels); it is checked, reported and scaled to [-1, 1] "
           "(tanh output) when bounded, else standardised (linear output)")
    a("--label-column", default=None, metavar="NAME|INDEX",
      help="--data CSV: the column holding class labels (a header name or a 0-based index); default none")
    a("--preset", choices=PRESETS, default=None,
      help="pytorch-gan: PyTorch-GAN's MLP GAN; article: the case study as written: 100 binarised digits, G "
           "100-128-64-784 and D 784-128-64-1 with ReLU, the minimax loss, Adam 2e-4")
    a("--loss", choices=list(LOSSES), default=None, help=f"GAN objective (default {BASE['loss']}; see above)")
    a("--epochs", type=int, default=None, help="passes over the training data, instead of --steps (default: none on "
                                               "MNIST, where --steps sets the length; 100 with --preset article)")
    a("--steps", type=int, default=None, help="train for this many generator steps instead of --epochs "
                                              "(default on MNIST 1900 with the DCGAN, 6000 with --arch mlp; 3000 "
                                              "on ring/grid)")
    a("--batch-size", type=int, default=None,
      help="images per gradient step, default 64 (MNIST), 256 (ring/grid); under mpiexec -n N: the global batch, "
           "a multiple of N")
    a("--lr", type=float, default=None, help="learning rate of both networks (default: those of --lr-g, --lr-d)")
    a("--lr-g", type=float, default=None,
      help="generator learning rate (default 1e-3 with the DCGAN, 5e-4 with the MLP on MNIST)")
    a("--lr-d", type=float, default=None,
      help="discriminator learning rate (default 1e-3 with the DCGAN, 5e-4 with the MLP on MNIST)")
    a("--betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
      help="Adam betas (default 0 0.99 with the DCGAN, 0.5 0.999 with the MLP)")
    a("--lr-decay", choices=LR_DECAYS, default=None, help="linear: both learning rates fall linearly to 0 at the "
                                                          "end of the run (default on ring/grid)")
    a("--n-critic", type=int, default=None, help="discriminator steps per generator step (default 1)")
    a("--clip", type=float, default=None, help="wgan weight clipping bound")
    a("--gp", type=float, default=None, help="wgan-gp gradient penalty weight lambda")
    a("--label-smoothing", type=float, default=None, help="one-sided: real target 1 - s (e.g. 0.1 -> 0.9)")
    _add_model_arguments(a)
    remedies.add_remedy_arguments(p, "dropout after the hidden layers of G and D (--g-dropout, --d-dropout: one "
                                     "network)", optimizer_default="adam; wgan: rmsprop")
    a("--seed", type=int, default=None, help="default 0")
    a("--n-train", type=int, default=None, help="use only the first N training images (default: all)")
    a("--binarize", action=argparse.BooleanOptionalAction, default=None, help="threshold the images at 0.5")
    a("--eval-samples", type=int, default=None,
      help="samples scored after each epoch (default 1000 on MNIST, 2500 on ring/grid)")
    a("--log-every", type=int, default=None, help="steps between lines of steps.jsonl (default 50)")
    a("--out", default="runs/gan", help="folder for checkpoint.npz, metrics.jsonl, steps.jsonl and the PNGs")
    a("--resume", action="store_true", help="continue the run saved in --out")
    a("--device", default=None, help="cpu or cuda")
    a("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    a("--sync-bn", action="store_true",
      help="under mpiexec -n N: BatchNorm statistics over the global batch (SyncBatchNorm); by default each "
           "process normalises with the statistics of its own share of the batch")
    tu.add_compile_argument(p)
    _show_recipe_defaults(p)


def _show_recipe_defaults(p):
    """Options left unset take the recipe's value: say in each option's help what it is on MNIST."""
    recipe = make_config()
    for action in p._actions:
        value = recipe.get(action.dest)
        if not action.option_strings or action.default is not None or value is None or "default" in (action.help or ""):
            continue
        if isinstance(value, list):
            value = " ".join(map(str, value))
        elif isinstance(value, bool):
            value = "on" if value else "off"
        action.help = f"{action.help} (default on MNIST: {value})"


def _add_model_arguments(a):
    """The options of the two networks."""
    a("--arch", choices=ARCHS, default=None,
      help="dcgan: DCGAN's convolutional G and D, sized from the images (MNIST, or your images with height and "
           "width divisible by 4; its critic drops BatchNorm with wgan-gp), the default on MNIST; mlp: the MLP "
           "networks, the default on your data and ring/grid (and of --preset)")
    a("--ngf", type=int, default=None, help="dcgan: the generator's channel width (default 32; the paper's: 64)")
    a("--ndf", type=int, default=None,
      help="dcgan: the discriminator's channel width (default 4, the best at a 2-core CPU's budget; the paper's: "
           "64)")
    a("--d-fc", type=int, default=None,
      help="dcgan: width of a fully connected layer between the discriminator's convolutions and its logit "
           "(default 256; 0: none, the DCGAN paper's layout)")
    a("--latent", type=int, default=None, help="size of the noise z (default 64; 2 on ring/grid)")
    a("--data-scale", type=float, default=None,
      help="G multiplies its output and D divides its input by this, so both work in units of about unit "
           "spread (default 1; ring 1.414, grid 2.828: the spread of the mixture's centres)")
    a("--g-hidden", type=int, nargs="+", default=None, help="mlp: generator hidden widths (default 256 512)")
    a("--d-hidden", type=int, nargs="+", default=None, help="mlp: discriminator hidden widths (default 512 256)")
    a("--g-batchnorm", action=argparse.BooleanOptionalAction, default=None,
      help="mlp: BatchNorm1d after the generator's hidden layers but the first")
    a("--d-batchnorm", action=argparse.BooleanOptionalAction, default=None,
      help="mlp: BatchNorm1d after the discriminator's hidden layers but the first")
    a("--bn-eps", type=float, default=None, help="BatchNorm epsilon (PyTorch-GAN: 0.8)")
    a("--g-dropout", type=float, default=None, help="mlp: dropout after the generator's hidden layers")
    a("--d-dropout", type=float, default=None, help="mlp: dropout after the discriminator's hidden layers")
    a("--slope", type=float, default=None, help="LeakyReLU negative slope of both networks (the DCGAN's "
                                                "generator has ReLUs: its critic's), 0: ReLU (default: those of "
                                                "--g-slope, --d-slope)")
    a("--g-slope", type=float, default=None, help="mlp: the generator's LeakyReLU slope (default 0.2; ring/grid 0)")
    a("--d-slope", type=float, default=None, help="the discriminator's LeakyReLU slope (default 0.2; ring/grid 0)")
    a("--conditional", action=argparse.BooleanOptionalAction, default=None,
      help="condition G and D on the digit label (an Embedding concatenated to their inputs); on by default on "
           "MNIST, --no-conditional for the unconditional GAN (the one that shows mode collapse)")
    a("--ema", type=float, default=None,
      help="decay of the moving average of the generator's weights used for samples and eval (default 0.999 on "
           "MNIST; 0 = off); it warms up as min(EMA, (1 + t) / (10 + t)) at update t, so 0.999 is reached only "
           "after 9,000 updates and a larger value changes nothing in a shorter run")


def settings_from_args(args):
    """The run's settings from the parsed command line (only what was given): the options named as settings,
    --slope and --lr for both networks, and --data as a dataset name or a folder."""
    s = {key: getattr(args, key) for key in BASE if key not in ("data", "dataset") and getattr(args, key, None)
         is not None}
    # shorthands for both networks, checked under their own names (make_config would name the settings they fill)
    if getattr(args, "slope", None) is not None:  # make_config fills g_ and d_ (SHORTHANDS)
        s["slope"] = tu.check_number("--slope", args.slope)
    if getattr(args, "dropout", None) is not None:
        s["dropout"] = tu.check_number("--dropout", args.dropout, high=1.0)
    lr = getattr(args, "lr", None)
    if lr is not None:
        lr = tu.check_number("--lr", lr, allow_low=False)
        s.setdefault("lr_g", lr)
        s.setdefault("lr_d", lr)
    data = getattr(args, "data", None)
    if data is not None:
        if data in ("mnist", *TOY):
            s["dataset"] = data
        else:  # a folder holding MNIST, or a file or folder of your data (resolve_data tells them apart)
            if not Path(data).expanduser().exists():
                raise FileNotFoundError(f"--data {data!r} is neither a dataset (mnist, {', '.join(TOY)}) nor an "
                                        f"existing file or folder")
            s["data"] = data
    tu.check_positive_options(args, ("epochs", "steps", "batch_size"))
    return s


def train_from_args(args):
    settings = settings_from_args(args)
    _, _, history = train_gan(out=args.out, resume=args.resume, quiet=args.quiet, init=args.init,
                              sync_bn=getattr(args, "sync_bn", False), compile=getattr(args, "compile", True),
                              **settings)
    if history and dist.is_main_process():
        print(f"done: {history[-1]['step']} generator steps; outputs in {args.out} (tinygen eval "
              f"{Path(args.out) / 'checkpoint.npz'})")
    return 0


def sample_checkpoint(ckpt, args):
    """``--n`` samples as a PNG (an image grid for MNIST, a scatter plot for ring/grid), or the raw samples for an
    output ending in ``.npy`` (written in chunks, so any ``--n`` the disk holds): (n, 28, 28) float32 in [-1, 1]
    for MNIST, (n, 2) points for ring/grid. Without ``--out``, ``samples_seed<seed>.png`` beside the checkpoint.
    A run on its own data: samples in the data's units and shape (``tu.write_data_samples``; also ``.csv``)."""
    G, cfg = generator_from_checkpoint(ckpt, args.device)
    label = tu.check_label_option(getattr(args, "label", None), cfg["conditional"], G.num_classes)
    shape = (28, 28) if cfg["dataset"] == "mnist" else (cfg["data_dim"],)

    def draw(start, count):
        labels = None
        if G.num_classes:  # the classes in turn, continuing across chunks, or the one asked for
            labels = np.full(count, label) if label is not None else np.arange(start, start + count) % G.num_classes
        return sample(G, count, labels=labels, device=args.device).reshape(count, *shape)

    if cfg["dataset"] == "custom":
        _random.manual_seed(args.seed)
        tu.write_data_samples(args, draw, Scaling.from_state(ckpt["extra"]["scaling"]),
                              nrow=G.num_classes if G.num_classes and label is None else 8)
        return 0
    out = args.out or tu.default_sample_path(args.checkpoint, args.seed)
    tu.check_sample_request(args.n, out, shape)
    _random.manual_seed(args.seed)

    def picture(path, x):
        save_samples_picture(cfg, path, x.reshape(len(x), -1), nrow=10 if cfg["conditional"] and label is None
                             else None)

    tu.write_samples(out, args.n, draw, shape, picture)
    print(f"wrote {args.n} samples to {out}")
    return 0


def evaluate_checkpoint(ckpt, args):
    """Quality metrics of ``--n`` samples (the EMA generator when the run kept one).

    MNIST: coverage (digit classes with >= 1% of the samples), class_kl (KL of the class histogram from uniform),
    frechet_distance (classifier features of the samples against the real test images) and inception_score (with
    the classifier), by the MNIST classifier (``tinygen.models.classifier.classifier_path()``: yours from
    ``tinygen train classifier``, else the one shipped with tinygen; the output names it). ring/grid: modes
    captured, high_quality (share of samples within 3 std of a centre) and reverse_kl. Custom data:
    frechet_distance between Gaussians fitted to the samples and to the training data (``--data``, else the file
    the run read), in the model's units ([-1, 1] or standardised), where MNIST's classifier means nothing.
    """
    from .trainer import TOY
    G, cfg = generator_from_checkpoint(ckpt, args.device)
    n = int(args.n)
    if n < 2:
        raise ValueError(f"--n must be at least 2 to score samples, got {n}")
    # all samples are scored at once: the samples, and for MNIST the classifier's float64 features and classes
    tu.check_fits_in_memory(n * (cfg["data_dim"] * 4 + (0 if cfg["dataset"] in TOY else 522 * 8)), f"--n {n}")
    _random.manual_seed(args.seed)
    x = sample(G, n, device=args.device)
    clf = real = None
    if cfg["dataset"] == "mnist":
        from ..classifier import load_classifier
        clf = load_classifier(quiet=bool(getattr(args, "json", False)))  # trains one only if none is found
    elif cfg["dataset"] == "custom":
        real, _ = tu.reload_own_data(cfg["data"], cfg["label_column"], ckpt["extra"]["scaling"],
                                     getattr(args, "data", None))
    metrics = evaluate_samples(cfg, x, clf, frechet=True, root=getattr(args, "data", None), real=real)
    if clf is not None:
        metrics.update({"classifier": clf.source, "classifier_test_accuracy": clf.test_accuracy})
    extra = ckpt.get("extra", {})
    metrics.update({"dataset": cfg["dataset"], "loss": cfg["loss"], "arch": cfg["arch"],
                    "epochs_trained": int(ckpt.get("epoch", 0)), "steps_trained": int(extra.get("step", 0)),
                    "ema": "ema" in ckpt.get("modules", {})})
    return metrics
