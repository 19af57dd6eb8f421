"""What the sequence applications (text, music) share: their sub-commands, the training options of the sequence
VAE (``tinygen.models.seqvae``), training from those options and loading an application's checkpoint."""
import argparse
from pathlib import Path

from ..models import seqvae
from ..models import train_utils as tu


def add_actions(parser):
    """Sub-commands of an application (``tinygen app text train ...``)."""
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def action_parser(actions, name, help):
    """One sub-command. It takes ``--threads`` too (argparse reads options after the sub-command's name only in the
    sub-command); its default is left to the application's own ``--threads``."""
    p = actions.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=tu.thread_option, default=argparse.SUPPRESS,
                   help="CPU threads for matrix products and kernels: a number, or auto (default: the value "
                        "given before the action, else auto)")
    return p


def add_training_arguments(p, defaults):
    """The sequence VAE's settings, with the application's ``defaults`` (a dict over seqvae.DEFAULTS' keys)."""
    d = {**seqvae.DEFAULTS, **defaults}
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.npz, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam's learning rate")
    p.add_argument("--latent", type=int, default=d["latent"], help="size of the code z")
    p.add_argument("--hidden", type=int, nargs="+", default=d["hidden"], help="encoder widths (decoder mirrors)")
    p.add_argument("--embed", type=int, default=d["embed"], help="numbers per token in the encoder's embedding")
    p.add_argument("--beta", type=float, default=d["beta"], help="weight of the KL term in the training loss")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def train_from_args(args, train_tokens, test_tokens, vocab_size, meta, test_units, unit):
    """Train the sequence VAE with the options of ``add_training_arguments``; returns ``(model, history)``."""
    tu.check_positive_options(args, ("epochs", "batch_size"))
    settings = {k: getattr(args, k) for k in seqvae.DEFAULTS}
    return seqvae.train_seqvae(train_tokens, test_tokens, vocab_size, out=args.out, resume=args.resume,
                               quiet=args.quiet, meta=meta, test_units=test_units, unit=unit,
                               device=args.device, **settings)


def load_app_checkpoint(path, app, device="cpu"):
    """``(model, config)`` of a checkpoint written by ``tinygen app <app> train`` (ValueError for any other)."""
    from ..serialization import load
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}' (train one with: tinygen app {app} train --out DIR)")
    ckpt = load(path)
    saved_app = ckpt.get("config", {}).get("app") if isinstance(ckpt, dict) else None
    if not isinstance(ckpt, dict) or ckpt.get("model") != seqvae.NAME or saved_app != app:
        raise ValueError(f"'{path}' is not a checkpoint of `tinygen app {app} train`"
                         + (f" (it is one of `tinygen app {saved_app}`)" if saved_app else ""))
    return seqvae.model_from_checkpoint(ckpt, device), ckpt["config"]
