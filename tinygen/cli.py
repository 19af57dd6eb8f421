"""The ``tinygen`` command (also ``python -m tinygen``).

    tinygen train gan|vae|classifier [options]    train a model (see ``tinygen train gan --help``)
    tinygen sample CHECKPOINT [--n 64] [--out grid.png]  samples as a PNG grid (or raw, .npy) beside the checkpoint
    tinygen eval CHECKPOINT [--json]              quality metrics of a checkpoint
    tinygen data mnist --download DIR             fetch MNIST from the public mirrors, SHA-256 verified
    tinygen app inpaint|superres|text|music ...   the applications (``tinygen.apps``; docs/applications.md)
    tinygen bench [options]                       the benchmark suite (from a source checkout)

Each model module (``tinygen.models.gan``, ``.vae``, ``.classifier``) provides ``add_arguments(parser)`` and
``train_from_args(args)``, and ``sample_checkpoint(ckpt, args)`` / ``evaluate_checkpoint(ckpt, args)``; a checkpoint
records which model made it, so ``sample`` and ``eval`` find their way without being told. Every command that
computes takes ``--threads`` (``train_utils.add_threads_argument``); the installed ``tinygen`` command starts in
``tinygen_launcher``, which sets the BLAS thread environment before NumPy loads.
"""
import argparse
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import warnings
from contextlib import contextmanager

MODELS = ("gan", "vae", "classifier")


def _model(name):
    return importlib.import_module(f"tinygen.models.{name}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as written, each option followed by its default (unless the text already gives it, or the option is a
    flag or has no default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, argparse.SUPPRESS)
                or isinstance(action.default, bool)):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def build_parser():
    from . import apps
    from .models import train_utils as tu
    defaults = HelpFormatter
    parser = argparse.ArgumentParser(prog="tinygen", description="tinygen: train and evaluate small generative "
                                     "models on a readable autograd engine")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="model", required=True)
    for name in MODELS:
        p = train_sub.add_parser(name, help=f"train the {name}", formatter_class=defaults)
        _model(name).add_arguments(p)
        tu.add_threads_argument(p)

    sample = sub.add_parser("sample", help="draw samples from a checkpoint", formatter_class=defaults)
    sample.add_argument("checkpoint", help="a checkpoint.npz of tinygen train gan or vae")
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--out", default=None, help="a .png picture, or a .npy (or .csv) file for the raw samples "
                        "(written in chunks, for any --n; in the data's units and shape for a run on your own "
                        "data); default: samples_seed<SEED>.png beside the checkpoint (.npy for vectors)")
    sample.add_argument("--seed", type=int, default=0, help="random seed of the noise")
    sample.add_argument("--label", type=int, default=None,
                        help="class to draw, for a conditional model (default: the classes in turn)")
    sample.add_argument("--device", default="cpu", help="cpu or cuda")
    tu.add_threads_argument(sample)

    ev = sub.add_parser("eval", help="evaluate a checkpoint", formatter_class=defaults)
    ev.add_argument("checkpoint", help="a checkpoint.npz of tinygen train gan, vae or classifier")
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    ev.add_argument("--n", type=int, default=10000, help="generated samples to score (GAN)")
    ev.add_argument("--iwae-k", type=int, default=5000, help="importance samples per image (VAE)")
    ev.add_argument("--iwae-images", type=int, default=1000,
                    help="test images for the IWAE bound (VAE); 0 skips the bound")
    ev.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA, else the copy shipped "
                    "with tinygen); for a run on your own data, its file or folder (default: the one it read)")
    ev.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    ev.add_argument("--device", default="cpu", help="cpu or cuda")
    tu.add_threads_argument(ev)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="dataset", required=True)
    mn = data_sub.add_parser("mnist", help="MNIST")
    mn.add_argument("--download", metavar="DIR", required=True, help="folder to download the four IDX files into")

    app = sub.add_parser("app", help="applications: inpainting, super-resolution, text, music")
    app_sub = app.add_subparsers(dest="app", required=True)
    for name in apps.APPS:
        module = apps.get(name)
        p = app_sub.add_parser(name, help=module.SUMMARY, description=module.SUMMARY, formatter_class=defaults)
        module.add_arguments(p)
        tu.add_threads_argument(p)

    sub.add_parser("bench", help="run the benchmark suite (from a source checkout)", add_help=False)
    return parser


@contextmanager
def _one_line_warnings():
    """Warnings as one line ``tinygen: warning: ...`` (not Python's file:line and source line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"tinygen: warning: {message}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # a separate program: the library does not import the benchmark suite
        if importlib.util.find_spec("benchmarks") is None:
            print("tinygen bench: the benchmark suite lives in the source checkout; run it from the repository "
                  "root (python -m benchmarks)", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "benchmarks", *argv[1:]])
    from .allocator import apply_setting
    apply_setting()  # keep freed memory for reuse (TINYGEN_KEEP_FREED_MEMORY=0: glibc's default behaviour)
    args = build_parser().parse_args(argv)
    code = _run_reporting_errors(args, argv)
    if code:
        from . import distributed as dist
        if dist.is_initialized() and dist.world_size() > 1:  # under mpiexec: end the other ranks too
            dist.abort(code)
    return code


def _run_reporting_errors(args, argv=()):
    """Run the command; an error is one line on stderr and the exit status. A setting's error is named by the
    option the user typed (``argv``) where that is how it was given."""
    try:
        with _one_line_warnings():
            return _run(args)
    except KeyboardInterrupt:
        print(f"tinygen: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except MemoryError:
        print("tinygen: error: out of memory (try a smaller --batch-size or --n)", file=sys.stderr)
        return 1
    except OSError as e:  # a wrong path (exit 2, as other usage errors), a full disk, no permission (exit 1)
        print(f"tinygen: error: {_os_error(e)}", file=sys.stderr)
        usage = not e.errno or isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError))
        return 2 if usage else 1  # a path the user named (or tinygen's own message about one) is a usage error
    except (ValueError, RuntimeError, TypeError, KeyError, IndexError) as e:
        print(f"tinygen: error: {_as_option(str(e), argv)}", file=sys.stderr)
        return 2
    except ImportError as e:  # an application's optional library is missing; the message names its extra
        print(f"tinygen: error: {e}", file=sys.stderr)
        return 1
    return 0


def _as_option(message, argv):
    """A message about a setting (``n_critic must be a positive integer, got 0``: the models check their settings
    by name, as the Python API takes them) with the setting named as the option the command line gave it
    (``--n-critic must be ...``)."""
    m = re.match(r"([a-z][a-z0-9_]*) must be ", message)
    if m is None:
        return message
    flag = "--" + m.group(1).replace("_", "-")
    if not any(a == flag or a.startswith(flag + "=") for a in argv):
        return message
    return flag + message[len(m.group(1)):]


def _run(args):
    """Run the command with its --threads, and give the process its thread count back afterwards (main() may be
    called from Python, e.g. by tests, which should not inherit a count chosen for one command)."""
    if getattr(args, "threads", None) is None:
        return _command(args)
    from .models.train_utils import use_threads
    from .kernels.threads import get_num_threads, set_num_threads
    previous = get_num_threads()
    use_threads(args.threads)
    try:
        return _command(args)
    finally:
        set_num_threads(previous)


def _command(args):
    if args.command == "train":
        return _model(args.model).train_from_args(args) or 0
    if args.command in ("sample", "eval"):
        from .models.train_utils import check_int
        from .serialization import load
        check_int("--seed", args.seed, low=0)  # (before the file: its errors are named with the file's path)
        ckpt = load(args.checkpoint)
        kind = ckpt.get("model") if isinstance(ckpt, dict) else None
        if kind not in MODELS:
            app = _app_of(ckpt)
            if app is not None:
                raise ValueError(f"{args.checkpoint}: a checkpoint of the {app} application; use "
                                 f"`tinygen app {app} --help` for its sample and eval commands")
            raise ValueError(f"{args.checkpoint}: not a tinygen model checkpoint (no known 'model' entry)")
        try:
            if args.command == "sample":
                return _model(kind).sample_checkpoint(ckpt, args) or 0
            metrics = _model(kind).evaluate_checkpoint(ckpt, args)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            # a file that loads but whose entries are not what the model's code writes (crafted or foreign)
            raise ValueError(f"{args.checkpoint}: not a usable {kind} checkpoint ({type(e).__name__}: {e}); use "
                             f"one written by `tinygen train {kind}`") from None
        except ValueError as e:  # name the file, unless the message is about an option or names it already
            text = str(e)
            if text.startswith("--") or str(args.checkpoint) in text:
                raise
            raise ValueError(f"{args.checkpoint}: {text}") from None
        if args.json:
            print(json.dumps(metrics, sort_keys=True))
        else:
            for k, v in metrics.items():
                print(f"{k:>24}: {v:.6g}" if isinstance(v, float) else f"{k:>24}: {v}")
        return 0
    if args.command == "app":
        from . import apps
        return apps.get(args.app).run(args) or 0
    if args.command == "data":
        from .data.download import download_mnist
        download_mnist(args.download)
        print(f"MNIST is in {args.download}; train on it with --data {args.download} or set "
              f"TINYGEN_DATA={args.download} (tinygen ships a copy too, used when neither is given)")
        return 0
    return 0


def _app_of(ckpt):
    """The application that wrote a checkpoint (``tinygen app NAME``), or None."""
    from . import apps
    if not isinstance(ckpt, dict):
        return None
    config = ckpt.get("config")
    name = config.get("app") if isinstance(config, dict) else None
    name = name if name in apps.APPS else ckpt.get("model")
    return name if name in apps.APPS else None


def _os_error(e):
    what = e.strerror or str(e)
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n]
    return f"{' -> '.join(map(str, names))}: {what}" if names else what


def _resume_hint(args):
    """Where the last checkpoint of an interrupted training run is, and the command that continues it."""
    out = getattr(args, "out", None) if getattr(args, "command", None) == "train" else None
    if not out:
        return ""
    from pathlib import Path
    ckpt = Path(out) / "checkpoint.npz"
    if not ckpt.exists():
        return f"; no checkpoint was written yet in {out}"
    return (f"; the last checkpoint is {ckpt}. Continue with: tinygen train {args.model} --out {out} --resume "
            f"(and the same options)")


if __name__ == "__main__":
    sys.exit(main())
