"""The remedies for unstable training that both trainers (``gan``, ``vae``) offer, each written once here:

    --optimizer adam|rmsprop|sgd   (--momentum for sgd)       make_optimizer
    --weight-decay W                                           make_optimizer (see WEIGHT_DECAY_RULE)
    --dropout P                                                the models' hidden layers (each trainer's own)
    --augment crop,flip,rotate                                 Augment: on the fly, on each real batch
    --init CHECKPOINT                                          load_by_name: pre-trained weights by layer name
    --clip-grad-norm MAX                                       make_optimizer: gradients clipped before each step

Weight decay: for Adam it is decoupled (AdamW: ``param *= 1 - lr * W`` each step), because an L2 term in the
gradient is divided by Adam's per-weight scale, so the weights with the largest gradients would hardly shrink;
for SGD and RMSprop it is the L2 penalty ``W/2 * ||param||^2`` added to the loss (``W * param`` in the gradient),
which for plain SGD is the same decay.

Augmentation runs in the DataLoader (its ``transform``), which hands it a generator derived from the run's seed,
the epoch and the batch: augmented batches are reproducible from the seed and a resumed run sees the same ones.
"""
from pathlib import Path

import numpy as np

from .. import optim
from ..data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomRotation
from ..nn.utils import clip_grad_norm_
from . import train_utils as tu

OPTIMIZERS = ("adam", "rmsprop", "sgd")
AUGMENTATIONS = ("crop", "flip", "rotate")
# digits are not mirror-symmetric: a flipped 2 looks like a 5 and a flipped 6 like a 9, and a mirrored 3, 4 or 7
# is no digit at all, so the default set leaves flip out (it stays available for data where mirroring is harmless)
DEFAULT_AUGMENT = ("crop", "rotate")
CROP_PADDING = 2          # crop: shift each image by up to 2 pixels in each direction (pad 2, crop back to size)
ROTATION_DEGREES = 10.0   # rotate: turn each image by an angle drawn from [-10, 10] degrees
WEIGHT_DECAY_RULE = {"adam": "decoupled (AdamW)", "rmsprop": "L2 in the gradient", "sgd": "L2 in the gradient"}


# ---- command line --------------------------------------------------------------------------------------------------
def add_remedy_arguments(parser, dropout_help, optimizer_default="adam"):
    """The remedy options shared by ``tinygen train gan`` and ``tinygen train vae`` (all default to None: the run's
    settings decide). ``dropout_help``: what --dropout applies to in this model."""
    a = parser.add_argument
    a("--optimizer", choices=OPTIMIZERS, default=None, help=f"default {optimizer_default}")
    a("--momentum", type=float, default=None, help="sgd momentum (default 0; only with --optimizer sgd)")
    a("--weight-decay", type=float, default=None, metavar="W",
      help="weight decay (default 0): with adam decoupled, AdamW's param *= 1 - lr*W per step; with sgd and "
           "rmsprop the L2 penalty W/2 ||param||^2 in the loss (W*param added to the gradient)")
    a("--dropout", type=float, default=None, metavar="P", help=f"{dropout_help} (default 0: none)")
    a("--augment", nargs="?", const=",".join(DEFAULT_AUGMENT), default=None, metavar="LIST",
      help=f"augment every real training batch on the fly with a comma-separated list of {', '.join(AUGMENTATIONS)} "
           f"(crop: shifts of up to {CROP_PADDING} pixels; rotate: up to {ROTATION_DEGREES:g} degrees; flip: "
           f"mirror half the images); --augment alone: {','.join(DEFAULT_AUGMENT)}. Flip is left out by default "
           f"because a mirrored digit is not a digit (2 and 5, 6 and 9 trade places). Default: none")
    a("--clip-grad-norm", type=float, default=None, metavar="MAX",
      help="rescale each network's gradients to a total norm of at most MAX before every step (default: off)")
    a("--init", default=None, metavar="CHECKPOINT",
      help="pre-training: start from the weights of a checkpoint of the same model, matched by layer name (dropout "
           "layers do not shift the names); tensors that are missing or of another shape are skipped and reported")


# ---- settings ------------------------------------------------------------------------------------------------------
def parse_augment(value):
    """The augmentations as a list of names from ``value``: a comma-separated string, a list of names, or
    None / "" / "none" for none. Raises ValueError naming an unknown one."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none") else value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"augment must be a comma-separated string or a list of names from "
                         f"{', '.join(AUGMENTATIONS)}, got {value!r}")
    names = [v.strip().lower() for v in value]
    unknown = [v for v in names if v not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r} in augment; expected names from "
                         f"{', '.join(AUGMENTATIONS)} (comma-separated) or 'none'")
    if len(set(names)) != len(names):
        raise ValueError(f"augment names each augmentation at most once, got {value!r}")
    return [v for v in AUGMENTATIONS if v in names]  # one fixed order: crop, flip, rotate


def check_remedies(cfg, dropout_keys):
    """Validate (and normalise in place) a run's remedy settings: optimizer, momentum, weight_decay,
    clip_grad_norm, augment and the dropout probabilities named by ``dropout_keys``. Returns cfg."""
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg['optimizer']!r}; expected one of {', '.join(OPTIMIZERS)}")
    cfg["weight_decay"] = tu.check_number("weight_decay", cfg["weight_decay"])
    cfg["momentum"] = tu.check_number("momentum", cfg["momentum"], high=1.0)
    if cfg["momentum"] and cfg["optimizer"] != "sgd":
        raise ValueError(f"momentum is a setting of the sgd optimizer; optimizer {cfg['optimizer']!r} does not use "
                         f"it (set optimizer='sgd' or leave momentum at 0)")
    if cfg["clip_grad_norm"] is not None:
        cfg["clip_grad_norm"] = tu.check_number("clip_grad_norm", cfg["clip_grad_norm"], allow_low=False)
    for key in dropout_keys:
        cfg[key] = tu.check_number(key, cfg[key], high=1.0)
    cfg["augment"] = parse_augment(cfg["augment"])
    return cfg


# ---- optimizer -----------------------------------------------------------------------------------------------------
def make_optimizer(params, name, lr, betas=(0.9, 0.999), weight_decay=0.0, momentum=0.0, clip_grad_norm=None,
                   capturable=False):
    """The optimizer of a run: Adam (AdamW when ``weight_decay`` > 0), RMSprop or SGD (with ``momentum``), wrapped
    in ``GradNormClipped`` when ``clip_grad_norm`` is set. ``capturable``: Adam and RMSprop count their steps on
    the parameters' device, so a compiled step's CUDA graph takes their updates (for a run on a GPU)."""
    params = list(params)
    if name == "adam":
        opt = optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, capturable=capturable) \
            if weight_decay else optim.Adam(params, lr=lr, betas=tuple(betas), capturable=capturable)
    elif name == "rmsprop":
        opt = optim.RMSprop(params, lr=lr, weight_decay=weight_decay, capturable=capturable)
    elif name == "sgd":
        opt = optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"make_optimizer: unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return GradNormClipped(opt, clip_grad_norm) if clip_grad_norm is not None else opt


class GradNormClipped:
    """An optimizer whose ``step()`` first rescales its parameters' gradients to a total norm of at most
    ``max_norm`` (``tinygen.nn.utils.clip_grad_norm_``). Everything else (param_groups, state_dict, zero_grad)
    is the wrapped optimizer's, so checkpoints hold the same state as without clipping."""

    def __init__(self, optimizer, max_norm):
        self.optimizer = optimizer
        self.max_norm = tu.check_number("max_norm", max_norm, allow_low=False)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]

    def step(self, closure=None):
        if closure is not None:  # a closure recomputes the gradients inside step: they could not be clipped first
            raise ValueError("GradNormClipped.step: a closure is not supported (the gradients are clipped before "
                             "the step)")
        clip_grad_norm_(self._params, self.max_norm)
        return self.optimizer.step()

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __repr__(self):
        return f"GradNormClipped(max_norm={self.max_norm:g}, {self.optimizer!r})"


# ---- augmentation --------------------------------------------------------------------------------------------------
class Augment:
    """The augmentation of a batch of flattened images: rows (N, prod(image_shape)) are viewed as images, cropped /
    flipped / rotated with the random numbers of ``generator`` (what the DataLoader passes: a per-batch generator
    derived from the run's seed), and flattened back. ``background``: the value of the pixels that padding and
    rotation bring in (0 for [0, 1] images, -1 for [-1, 1] ones)."""

    def __init__(self, names, image_shape=(28, 28), background=0.0):
        self.names = parse_augment(names)
        if not self.names:
            raise ValueError("Augment: name at least one augmentation")
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 2:
            raise ValueError(f"Augment: augmentations work on (height, width) images, got image_shape "
                             f"{image_shape!r}")
        steps = {"crop": RandomCrop(self.image_shape, padding=CROP_PADDING, fill=background),
                 "flip": RandomHorizontalFlip(0.5),
                 "rotate": RandomRotation(ROTATION_DEGREES, fill=background)}
        self.transform = Compose([steps[n] for n in self.names])

    def __call__(self, x, generator=None):
        x = np.asarray(x)
        images = x.reshape((x.shape[0],) + self.image_shape)
        return self.transform(images, generator=generator).reshape(x.shape)

    def __repr__(self):
        return f"Augment({','.join(self.names)}, image_shape={self.image_shape})"


def augment_image_shape(names, scaling=None):
    """The (height, width) that ``--augment`` views a run's rows as: MNIST's 28x28, or the shape of the run's own
    greyscale images (``scaling``: ``tinygen.data.Scaling``); other data are refused, naming their shape."""
    if not names or scaling is None:
        return (28, 28)
    shape = tuple(scaling.shape)
    if scaling.kind == "images" and (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)):
        return shape[:2]
    what = "vectors of " + " x ".join(map(str, shape)) + " values" if scaling.kind != "images" else \
        "images of shape " + " x ".join(map(str, shape))
    raise ValueError(f"--augment crops, flips and rotates greyscale images; the training data are {what}")


def make_augment(names, scaling=None, background=0.0, then=None):
    """The DataLoader transform of a run: ``Augment`` of ``names`` on the run's images (MNIST, or the run's own
    data described by ``scaling``: see ``augment_image_shape``) followed by ``then`` (e.g. binarize), or ``then``
    alone when no augmentation is asked for (so runs without one draw exactly as before)."""
    if not names:
        return then
    augment = Augment(names, augment_image_shape(names, scaling), background)
    return Compose([augment, then]) if then is not None else augment


# ---- --init: pre-trained weights by layer name ---------------------------------------------------------------------
def structural_keys(module):
    """{state_dict key: structural name} for a module: inside a Sequential / ModuleList (children named by index)
    a layer is named by its class and its rank among the layers of that class, so ``net.3.weight`` (Linear after
    Linear, LeakyReLU, Dropout) becomes ``net.Linear1.weight`` whether or not dropout layers sit in between."""
    prefixes = {"": ""}

    def walk(mod, path, spath):
        counts = {}
        for name, child in mod.named_children():
            sname = name
            if name.isdigit():
                kind = type(child).__name__
                counts[kind] = counts.get(kind, 0) + 1
                sname = f"{kind}{counts[kind] - 1}"
            prefixes[path + name + "."] = spath + sname + "."
            walk(child, path + name + ".", spath + sname + ".")

    walk(module, "", "")
    out = {}
    for key in module.state_dict():
        head, _, leaf = key.rpartition(".")
        out[key] = prefixes[head + "." if head else ""] + leaf
    return out


def load_by_name(target, source):
    """Copy into ``target`` every tensor of the module ``source`` with the same structural name
    (``structural_keys``) and shape. Returns the report ``{"loaded": [names], "skipped": [(name, reason)]}``:
    tensors of ``target`` missing from ``source``, of another shape, or in ``source`` only."""
    target_keys, source_keys = structural_keys(target), structural_keys(source)
    target_state, source_state = target.state_dict(), source.state_dict()
    by_name = {name: source_state[key] for key, name in source_keys.items()}
    values, loaded, skipped = {}, [], []
    for key, name in target_keys.items():
        if name not in by_name:
            skipped.append((name, "not in the checkpoint"))
        elif tuple(by_name[name].shape) != tuple(target_state[key].shape):
            skipped.append((name, f"shape {tuple(by_name[name].shape)} in the checkpoint, "
                                  f"{tuple(target_state[key].shape)} here"))
        else:
            values[key] = by_name[name]
            loaded.append(name)
    names = set(target_keys.values())
    skipped += [(name, "not in this model") for name in source_keys.values() if name not in names]
    target.load_state_dict(values, strict=False)
    return {"loaded": loaded, "skipped": skipped}


def read_init_checkpoint(path, model_name, label):
    """The checkpoint ``--init`` names, checked to be a training checkpoint of ``model_name`` (``label``: how
    errors name the model, e.g. "a GAN")."""
    from ..serialization import load
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init checkpoint '{path}' does not exist")
    ckpt = load(path)
    if not isinstance(ckpt, dict) or "modules" not in ckpt or not isinstance(ckpt.get("config"), dict):
        raise ValueError(f"--init: '{path}' is not a training checkpoint")
    if ckpt.get("model") != model_name:
        raise ValueError(f"--init: '{path}' is a checkpoint of model {ckpt.get('model')!r}, not {label}")
    return ckpt


def rebuilt(path, what, build, state):
    """The network ``what`` of an --init checkpoint, built by ``build()`` as it was trained and loaded with its saved
    ``state`` (so its layers get their structural names); ValueError when the two do not match."""
    module = build()
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--init: the {what} in '{path}' does not match the checkpoint's own settings: "
                         f"{str(e).splitlines()[-1].strip()}") from None
    return module


def init_from_modules(path, pairs):
    """Load ``pairs`` [(what, target module, source module or None)] by name (``load_by_name``); returns
    {what: report} and raises ValueError when nothing at all fits."""
    reports = {what: load_by_name(target, source) for what, target, source in pairs if source is not None}
    if not any(r["loaded"] for r in reports.values()):
        details = "; ".join(f"{what}: {describe_skipped(r)}" for what, r in reports.items()) or "no networks"
        raise ValueError(f"--init: nothing in '{path}' fits this run's networks ({details})")
    return reports


def describe_skipped(report, limit=6):
    skipped = report["skipped"]
    text = ", ".join(f"{name} ({why})" for name, why in skipped[:limit])
    return text + (f" and {len(skipped) - limit} more" if len(skipped) > limit else "")


def format_init_report(path, reports):
    """The lines that tell what ``--init`` loaded and what it skipped, and why."""
    lines = []
    for what, r in reports.items():
        total = len(r["loaded"]) + sum(1 for _, why in r["skipped"] if why != "not in this model")
        line = f"--init: the {what}: {len(r['loaded'])} of {total} tensors loaded from {path}"
        if r["skipped"]:
            line += f"; skipped: {describe_skipped(r)}"
        lines.append(line)
    return lines
