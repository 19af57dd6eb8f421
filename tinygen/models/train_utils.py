"""What every training script needs besides the model: a progress bar, a metrics log, and checkpoints that resume.

    bar = Progress(len(loader), desc="epoch 1/10")            # on stderr; one summary line when not a terminal
    for x, y in loader: ...; bar.update(loss=3.2)
    bar.close()
    log = MetricsLog(out / "metrics.jsonl"); log.write(epoch=1, train_loss=3.2)
    save_checkpoint(out / "checkpoint.npz", "vae", config, epoch=1, modules={"model": m},
                    optimizers={"adam": opt}, loaders={"train": loader})
    ckpt = load_checkpoint(out / "checkpoint.npz", config)     # checks the config matches
    restore_checkpoint(ckpt, modules=..., optimizers=..., loaders=...)  # also the random generators

Exact resume: a checkpoint holds the model, optimizer and scheduler states, the DataLoader position (its order
and augmentations derive from its seed), the state of tinygen's random generators and the run's config. A run
that builds its model with the same seed, restores all of it and continues draws exactly the numbers the
uninterrupted run would have drawn, so it ends with the same parameters.
"""
import json
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import Tensor, backend
from .. import distributed as dist
from .. import random as _random
from ..compile import compile as _compile
from ..serialization import load, save
from .conv_images import data_image_shape

CHECKPOINT_FORMAT = 1


# ---- progress bar ----------------------------------------------------------------------------------------------------
def _clock(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """A progress bar on stderr with the rate and the time left.

    On a terminal it redraws one line (at most every ``min_interval`` seconds). When stderr is not a terminal (a
    log file, CI) it writes a plain line every ``log_interval`` seconds and one at the end, so logs stay
    readable. ``quiet=True`` writes nothing. Use as a context manager or call ``close()``.
    """

    def __init__(self, total, desc="", unit="it", quiet=False, stream=None, min_interval=0.1, log_interval=30.0):
        if total is not None and (not isinstance(total, (int, np.integer)) or total < 0):
            raise ValueError(f"Progress: total must be a non-negative int or None, got {total!r}")
        self.total = None if total is None else int(total)
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if self.tty else log_interval
        self.n = 0
        self.postfix = {}
        self.start = self._last = time.perf_counter()
        self._width = 0
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def elapsed(self):
        return time.perf_counter() - self.start

    def update(self, n=1, **postfix):
        """Count ``n`` more steps; keyword values (e.g. ``loss=1.5``) are shown after the bar."""
        self.n += n
        self.postfix.update(postfix)
        if self.quiet:
            return
        now = time.perf_counter()
        if now - self._last >= self.min_interval:
            self._last = now
            self._draw(final=False)

    def set_postfix(self, **postfix):
        self.postfix.update(postfix)

    def line(self):
        """The current state as text: ``desc  42/100 [00:03<00:04, 13.1 it/s] loss=1.5``."""
        elapsed = self.elapsed
        rate = self.n / elapsed if elapsed > 0 else float("nan")
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.n / self.total, 1.0)
            if self.tty:
                filled = int(round(20 * frac))
                parts.append("|" + "#" * filled + "." * (20 - filled) + "|")
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            parts.append(f"{self.n}/{self.total} [{_clock(elapsed)}<{_clock(max(left, 0.0))}, "
                         f"{rate:.3g} {self.unit}/s]")
        else:
            parts.append(f"{self.n} [{_clock(elapsed)}, {rate:.3g} {self.unit}/s]")
        parts.extend(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        return " ".join(parts)

    def _draw(self, final):
        text = self.line()
        if self.tty:
            pad = max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        """Draw the final state (once)."""
        if self.closed:
            return
        self.closed = True
        if not self.quiet:
            self._draw(final=True)


# ---- metrics log -----------------------------------------------------------------------------------------------------
def _plain(value):
    """A JSON-safe copy: NumPy scalars and 0-d arrays/tensors become numbers; NaN and inf become strings."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, (np.ndarray, np.generic)) and value.size == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class MetricsLog:
    """Append one JSON object per line to ``path`` (``metrics.jsonl``), flushed at once, so a crash loses nothing
    and the file can be read while training runs (``read_metrics``)."""

    def __init__(self, path):
        self.path = Path(path)

    def write(self, record=None, **fields):
        """Append ``record`` (a dict) and/or keyword fields as one line; returns the record written."""
        rec = dict(record or {})
        rec.update(fields)
        rec = _plain(rec)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    def truncate_after(self, epoch):
        """Drop records whose ``epoch`` is greater than ``epoch`` (written after the checkpoint a run resumes
        from), so a resumed run does not list them twice."""
        if not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if not (isinstance(r.get("epoch"), int) and r["epoch"] > epoch)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)


def read_metrics(path):
    """The records of a JSON-lines file as a list of dicts (a half-written last line is ignored)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return out


# ---- random generators -----------------------------------------------------------------------------------------------
def host(t, dtype=None):
    """A tensor's values as a NumPy array on the host (copied from a device), optionally as ``dtype``: for
    pictures, metrics and files, outside any compiled step."""
    return np.asarray(backend.to_device(t.data, "cpu"), dtype=dtype)


def rng_state(devices=("cpu",)):
    """The state of tinygen's generator of each device (``tinygen.random.get_rng_state``), for a checkpoint."""
    out = {"cpu": _random.get_rng_state()}
    for dev in devices:
        if dev != "cpu":
            out[dev] = _random.get_rng_state(dev)
    return out


def rank_stream_states(devices=("cpu",)):
    """Every rank's rank stream (``tinygen.random.rank_stream``: its dropout masks under data parallelism), one
    dict device -> state per rank in rank order; every rank must call it (None in a world of one process)."""
    if dist.world_size() == 1:
        return None
    return dist.all_gather_object({dev: _random.get_rng_state(dev, rank_stream=True) for dev in devices})


def set_rng_state(state):
    """Restore what ``rng_state`` returned (with the checkpoint's ``ranks`` entry, from ``rank_stream_states``:
    this rank's rank stream, in a world of as many processes as wrote it)."""
    if not isinstance(state, dict) or "cpu" not in state:
        raise ValueError(f"set_rng_state: expected a dict with a 'cpu' entry, got "
                         f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    ranks, n = state.get("ranks"), dist.world_size()
    if ranks is not None and n > 1:  # (one process draws nothing from a rank stream)
        if len(ranks) == n:
            for dev, s in ranks[dist.rank()].items():
                _random.set_rng_state(s, dev, rank_stream=True)
        else:
            warnings.warn(f"the checkpoint holds the random streams of {len(ranks)} processes and this run has {n}: "
                          f"the ranks' dropout masks start afresh from the seed (resume with {len(ranks)} processes "
                          f"to continue them)", RuntimeWarning, stacklevel=2)
    for dev, s in state.items():
        if dev != "ranks":
            _random.set_rng_state(s, dev)


@contextmanager
def fork_rng(seed, devices=("cpu",)):
    """Draw from generators seeded with ``seed`` inside the block, and give the previous streams back after it.

    Evaluation inside a training run uses this, so it is reproducible by itself and does not shift the numbers
    that training draws next (a run with evaluation switched off trains identically).
    """
    saved = rng_state(devices)
    _random.set_rng_state(np.random.PCG64(seed).state)
    others = {}
    for dev in devices:
        if dev != "cpu":
            others[dev] = _random._generators.pop(dev, None)
    try:
        if others:  # a fresh generator for each other device, seeded from ``seed``
            for i, dev in enumerate(others):
                _random._generators[dev] = backend.array_module(dev).random.default_rng(seed + 1 + i)
        yield
    finally:
        for dev, g in others.items():
            if g is None:
                _random._generators.pop(dev, None)
            else:
                _random._generators[dev] = g
        set_rng_state({k: v for k, v in saved.items() if k == "cpu"})


# ---- config ----------------------------------------------------------------------------------------------------------
def config_from_args(args, drop=("command", "model", "resume", "quiet", "func")):
    """The run's settings from an argparse Namespace as a dict of plain values (for checkpoints and logs)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in drop:
            continue
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, (list, tuple)):
            v = list(v)
        if v is None or isinstance(v, (bool, int, float, str, list)):
            out[k] = v
    return out


def config_mismatch(saved, current, ignore=("epochs", "out", "device", "data", "quiet")):
    """Keys whose values differ between a saved config and the current one (ignoring those a resumed run may
    change), as ``[(key, saved_value, current_value)]``."""
    diffs = []
    for k in sorted(set(saved) | set(current)):
        if k in ignore:
            continue
        a, b = saved.get(k, "<unset>"), current.get(k, "<unset>")
        if a != b:
            diffs.append((k, a, b))
    return diffs


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def save_checkpoint(path, model_name, config, epoch, modules, optimizers=None, schedulers=None, loaders=None,
                    extra=None, devices=("cpu",), rank_streams=None):
    """Write everything a run needs to continue to ``path`` (atomically: a crash keeps the previous file).

    model_name: the model's name ("vae", "gan", "classifier"; what ``tinygen sample/eval`` dispatch on).
    config: the run's settings (``config_from_args``), enough to rebuild the model.
    epoch: the number of epochs completed.
    modules / optimizers / schedulers / loaders: dicts name -> object with ``state_dict()``.
    extra: any further plain values (e.g. the last metrics).
    rank_streams: the ranks' own random streams under data parallelism (``rank_stream_states``).
    """
    rng = rng_state(devices)
    if rank_streams is not None:
        rng["ranks"] = rank_streams
    ckpt = {
        "model": model_name,
        "format": CHECKPOINT_FORMAT,
        "config": dict(config),
        "epoch": int(epoch),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "loaders": {k: dl.state_dict() for k, dl in (loaders or {}).items()},
        "rng": rng,
        "extra": _plain(dict(extra or {})),
    }
    save(ckpt, path)
    return ckpt


def load_checkpoint(path, config=None, model_name=None, added=None):
    """Load a checkpoint written by ``save_checkpoint``, checking it is one (and for ``model_name`` if given).

    With ``config``, raise ValueError naming every setting that differs from the saved run (a resumed run must
    use the same model and data settings; the number of epochs, output folder and device may change). ``added``:
    settings introduced after runs were saved, with the value that reproduces those runs (filled in where the
    saved config lacks them).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: '{path}' does not exist (train without --resume "
                                f"first, or point --out at the folder of an earlier run)")
    ckpt = load(path)
    if not isinstance(ckpt, dict) or "modules" not in ckpt or "config" not in ckpt:
        raise ValueError(f"'{path}' is a tinygen file but not a training checkpoint (no 'modules'/'config')")
    if model_name is not None and ckpt.get("model") != model_name:
        raise ValueError(f"'{path}' is a checkpoint of model {ckpt.get('model')!r}, not {model_name!r}")
    if config is not None:
        diffs = config_mismatch({**(added or {}), **ckpt["config"]}, config)
        if diffs:
            desc = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in diffs)
            raise ValueError(f"can't resume from '{path}': the settings differ from the saved run ({desc})")
    return ckpt


def restore_checkpoint(ckpt, modules, optimizers=None, schedulers=None, loaders=None, restore_rng=True):
    """Load a checkpoint's states into live objects (dicts name -> object, as given to ``save_checkpoint``);
    returns the number of epochs completed. Raises KeyError naming a missing entry."""
    groups = (("modules", modules), ("optimizers", optimizers), ("schedulers", schedulers), ("loaders", loaders))
    for group, objects in groups:
        saved = ckpt.get(group, {})
        for name, obj in (objects or {}).items():
            if name not in saved:
                raise KeyError(f"the checkpoint has no {group[:-1]} '{name}' (it has: {sorted(saved)})")
            obj.load_state_dict(saved[name])
    if restore_rng and "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    return int(ckpt.get("epoch", 0))


def optimize_epoch(model, optimizer, loader, batch_loss, desc="", quiet=False, compile=False, step_inputs=None):
    """One pass of gradient steps over ``loader`` with a progress bar. ``batch_loss(batch, *step_inputs(index))``
    returns the loss to minimise, the batch's size and a dict of per-batch sums to report (tensors or numbers,
    read after the step; they add up to the reported loss). ``compile``: the whole step (``batch_loss``,
    ``zero_grad``, ``backward``, the optimizer's step) through ``tinygen.compile`` (see ``compiled_step``).
    Returns ``(sums over the epoch, samples seen)``."""
    def step(batch, *inputs):
        loss, n, values = batch_loss(batch, *inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return n, values

    model.train()
    step = compiled_step(step, compile)
    bar = Progress(len(loader), desc=desc, quiet=quiet or not dist.is_main_process())
    sums, seen = {}, 0
    parallel = dist.world_size() > 1
    for i, batch in enumerate(loader):
        n, values = step(dist.shard(batch) if parallel else batch, *(step_inputs(i) if step_inputs else ()))
        for key, value in values.items():  # host reads here, outside the (compiled) step
            sums[key] = sums.get(key, 0.0) + float(value)
        seen += n
        bar.update(loss=sum(sums.values()) / seen)
    bar.close()
    if parallel:  # the epoch's totals over the global batches
        sums, seen = reduce_over_ranks(sums), int(reduce_over_ranks({"seen": seen})["seen"])
    return sums, seen


# ---- compiled training steps (tinygen.compile) -----------------------------------------------------------------------
def compiled_step(step, compile=True):
    """``step`` through ``tinygen.compile`` when ``compile``: its first call with a batch shape records it, later
    calls replay the recording, with bitwise the same results as eager. ``step`` must not read tensor values
    into Python (return the tensors; the caller reads them after the call). Under data parallelism too: a replayed
    backward runs the gradient hooks where the engine runs them, so ``DistributedDataParallel`` averages the
    gradients as in eager."""
    if not compile:
        return step
    return _compile(step)


def add_compile_argument(parser):
    """The ``--no-compile`` option of the trainers (``args.compile``, True by default)."""
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run the training step eagerly; by default it is recorded once per batch shape with "
                             "tinygen.compile and replayed (bitwise the same numbers, fewer Python calls)")


# ---- data parallelism (mpiexec -n N tinygen train ...; see tinygen.distributed) -------------------------------------
def data_parallel(module, sync_bn=False):
    """``module`` wrapped in DistributedDataParallel when the world has more than one process (with its
    BatchNorm layers made SyncBatchNorm when ``sync_bn``); ``module`` itself, untouched, in a world of one."""
    if dist.world_size() == 1:
        return module
    from ..nn import SyncBatchNorm
    from ..nn.parallel import DistributedDataParallel
    if sync_bn:
        module = SyncBatchNorm.convert_sync_batchnorm(module)
    return DistributedDataParallel(module)


def unwrap(module):
    """The model inside a DistributedDataParallel wrapper (``module`` itself when not wrapped)."""
    from ..nn.parallel import DistributedDataParallel
    return module.module if isinstance(module, DistributedDataParallel) else module


def global_batch_noise(draw, rows):
    """Random rows for this rank's ``rows`` examples of the global batch: ``draw(n)`` makes n rows from tinygen's
    generator, which every rank keeps in the same state. In a world of N processes it draws the global batch's
    N * rows and keeps this rank's share (``dist.shard``), so the ranks use the noise one process would draw."""
    n = dist.world_size()
    return draw(rows) if n == 1 else dist.shard(draw(rows * n))


def check_global_batch(batch_size, num_examples, drop_last=False):
    """Refuse (ValueError) a global batch, or a last partial batch, that the ranks cannot share equally: each
    rank's mean loss must be over as many samples as every other's for their average to be the global mean."""
    n = dist.world_size()
    if n == 1:
        return batch_size
    if batch_size % n:
        raise ValueError(f"--batch-size {batch_size} is the global batch, split over {n} processes: it must be a "
                         f"multiple of {n}")
    tail = 0 if drop_last else num_examples % batch_size
    if tail % n:
        raise ValueError(f"the last batch of an epoch holds {tail} of the {num_examples} training examples, which "
                         f"{n} processes cannot share equally; choose a --batch-size that leaves a multiple of {n}")
    return batch_size


def reduce_over_ranks(values, op="sum"):
    """A dict of numbers summed (or averaged: ``op="mean"``) over the ranks; the dict itself in a world of one.
    Every rank must pass the same keys."""
    if dist.world_size() == 1:
        return values
    keys = sorted(values)
    total = Tensor(np.array([float(values[k]) for k in keys], dtype=np.float64))
    dist.all_reduce(total, op=op)
    return dict(zip(keys, total.data.tolist()))


class RunFolder:
    """A run's output folder: ``checkpoint.npz`` and JSON-lines logs (``metrics.jsonl``, ...), or nothing at all
    for ``out=None``. A fresh run refuses a folder holding a checkpoint and starts its logs empty; ``restore``
    continues the saved run.

    Under data parallelism every rank opens the folder (and reads the checkpoint on resume), but only the main
    process (``writes``) creates, truncates or writes anything in it."""

    def __init__(self, out, resume=False, logs=("metrics",)):
        self.logs = {}
        self.path = self.checkpoint = None
        self.writes = dist.is_main_process()
        if out is None:
            if resume:
                raise ValueError("resume needs out (the folder of the run to continue)")
            return
        self.path = prepare_out_dir(out, resume, create=self.writes)
        self.checkpoint = self.path / "checkpoint.npz"
        self.logs = {name: MetricsLog(self.path / f"{name}.jsonl") for name in logs} if self.writes else {}
        if not resume:
            for log in self.logs.values():
                if log.path.exists():
                    log.path.unlink()

    def restore(self, parts, model_name, config=None, check=None, added=None):
        """Load the checkpoint (its settings compared with ``config``, ``added`` filling in newer settings as in
        ``load_checkpoint``, or by ``check(ckpt)``), put its states into ``parts`` (``restore_checkpoint``'s dicts)
        and drop the log lines written after it. Returns ``(ckpt, epochs completed)``."""
        ckpt = load_checkpoint(self.checkpoint, config, model_name, added)
        if check is not None:
            check(ckpt)
        start = restore_checkpoint(ckpt, **parts)
        for log in self.logs.values():
            log.truncate_after(start)
        return ckpt, start

    def write(self, log, record):
        if log in self.logs:
            self.logs[log].write(record)

    def save(self, model_name, config, epoch, parts, devices=("cpu",), **kwargs):
        """``save_checkpoint`` into the folder (nothing without one). Every rank calls it: the main process
        writes, with every rank's own random stream."""
        if self.checkpoint is None:
            return
        streams = rank_stream_states(devices)
        if self.writes:
            save_checkpoint(self.checkpoint, model_name, config, epoch, **parts, devices=devices,
                            rank_streams=streams, **kwargs)


# ---- small helpers the models share -------------------------------------------------------------------------------
def prepare_out_dir(out, resume=False, create=True):
    """Create the output folder (unless not ``create``); refuse to overwrite an earlier run's checkpoint unless
    resuming (ValueError)."""
    out = Path(out)
    ckpt = out / "checkpoint.npz"
    if not resume and ckpt.exists():
        raise ValueError(f"'{out}' already holds a run ({ckpt.name}); pass --resume to continue it, or choose "
                         f"another --out (or delete the folder) to start afresh")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


# ---- checks of settings (ValueError naming the setting) ------------------------------------------------------------
def check_int(name, value, low=1, optional=False):
    """``value`` as an int >= ``low`` (None passes when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        need = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return int(value)


def check_number(name, value, low=0.0, high=None, allow_low=True):
    """``value`` as a finite float in [low, high) (``allow_low=False``: (low, high); no ``high``: unbounded)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value >= low if allow_low else value > low) and (high is None or value < high)
    if not ok:
        if high is None and low == 0:
            need = "a non-negative finite number" if allow_low else "a positive finite number"
        else:
            need = f"a number in {'[' if allow_low else '('}{low:g}, {high:g})" if high is not None else \
                f"a number {'>=' if allow_low else '>'} {low:g}"
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return float(value)


def check_widths(name, widths, allow_empty=False):
    """Layer widths as a non-empty list of positive ints (one int is a list of one)."""
    v = [widths] if isinstance(widths, (int, np.integer)) else widths
    if not isinstance(v, (list, tuple, np.ndarray)) or (len(v) == 0 and not allow_empty) or \
            any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in v):
        need = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{name} must be {need} of positive layer widths, got {widths!r}")
    return [int(w) for w in v]


def check_batch_fits(batch_size, n, what="training examples"):
    """Refuse a batch larger than the data (a loader would train at a smaller batch than the run records)."""
    if batch_size > n:
        raise ValueError(f"--batch-size {batch_size} is more than the {n} {what}; choose at most {n}")
    return batch_size


def check_positive_options(args, names):
    """Command-line options that must be >= 1 when given (``--epochs 0`` would save an untrained model)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def check_label_option(label, conditional, num_classes=10):
    """``--label`` of ``tinygen sample``: only for a conditional model, and one of its classes."""
    if label is None:
        return None
    if not conditional:
        raise ValueError("--label needs a conditional model (this checkpoint was trained without --conditional)")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
        raise ValueError(f"--label must be a class in 0..{num_classes - 1}, got {label!r}")
    return int(label)


# ---- command-line pieces every trainer shares ----------------------------------------------------------------------
def thread_option(text):
    """argparse type of ``--threads``: "auto" or a positive integer."""
    import argparse

    from ..threads import parse_thread_count
    try:
        return parse_thread_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_threads_argument(parser):
    """``--threads``: CPU threads for BLAS and the Numba kernels (see ``tinygen.threads``)."""
    parser.add_argument("--threads", type=thread_option, default="auto",
                        help="CPU threads for matrix products and kernels: a number, or auto (the CPUs other "
                             "processes leave idle, from the load average)")


def use_threads(option):
    """Apply ``--threads``; returns the count used."""
    from ..kernels.threads import set_num_threads
    from ..threads import thread_count
    n = thread_count(option)
    set_num_threads(n)
    return n


def mnist_split(split, data=None):
    """An MNIST split for a trainer: from ``--data DIR`` (which must hold it), else $TINYGEN_DATA, else the copy
    shipped with tinygen; the same rules and messages for every model."""
    from ..data import mnist
    if data is not None and not Path(data).expanduser().is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder (it should hold the MNIST IDX files)")
    return mnist(split, root=data)


def custom_dataset(data=None, train_set=None, label_column=None, force=False):
    """The run's own training data as a checked ``tinygen.data.Dataset``, or None where the run is on MNIST.

    data: a path; MNIST when it is a folder holding the MNIST IDX files, else read by ``load_dataset``.
    train_set: arrays ``x`` or ``(x, labels)`` given in Python; taken as MNIST when they are 28x28 / 784-pixel
    images with labels, unless ``force``."""
    from ..data import from_arrays, is_mnist_folder, load_dataset
    if train_set is not None:
        x, labels = (train_set if isinstance(train_set, (tuple, list)) and len(train_set) == 2 else (train_set, None))
        x = np.asarray(x)
        if not force and labels is not None and x.ndim >= 2 and int(np.prod(x.shape[1:])) == 784:
            return None
        return from_arrays(x, labels, source="arrays given in Python")
    if data is None or (is_mnist_folder(data) and not force):
        if label_column is not None:
            raise ValueError("--label-column names the label column of a CSV file given by --data; MNIST has "
                             "its labels")
        return None
    return load_dataset(data, label_column=label_column)


def prepare_own_data(dataset, interval, conditional=False, conv_arch=None):
    """A run's own data (a ``tinygen.data.Dataset``) in the model's units (``ModelData``), and the settings the
    data fix for the model's layers beyond its size: ``{"image_shape": [C, H, W]}`` for ``conv_arch`` (the name of
    a convolutional arch), else {}. Refuses what the model cannot take: a conditional model on data without
    labels; a convolutional arch on vectors or on images it cannot halve twice (``conv_images``)."""
    if conditional and dataset.y is None:
        raise ValueError(f"a conditional model needs class labels; {dataset.source} has none (give an .npz with "
                         f"'y', a CSV with --label-column, or a folder of class sub-folders), or train without "
                         f"conditional")
    fixed = {}
    if conv_arch is not None:
        fixed["image_shape"] = list(data_image_shape(dataset.shape, dataset.kind, conv_arch, dataset.source))
    return dataset.for_model(interval), fixed


def settings_from_data(settings, fixed, dataset):
    """``settings`` updated with what the data ``fixed`` (data_dim, num_classes, ...); a setting given otherwise
    is refused (ValueError naming it and the data)."""
    for key, value in fixed.items():
        if settings.get(key) is not None and settings[key] != value:
            raise ValueError(f"{key}={settings[key]!r} does not fit the data ({dataset.describe()}): it needs "
                             f"{key}={value!r}")
    return {**settings, **fixed}


def reload_own_data(saved_path, label_column, scaling_state, path=None):
    """The data a run was trained on, again (for ``tinygen eval``), in the model's units by the saved scaling:
    ``(x (N, features) float32, labels or None)``. path: another copy of it (``--data``)."""
    from ..data import Scaling
    path = path or saved_path
    if path is None:
        raise ValueError("the run was trained on arrays given in Python, not a file: pass --data FILE to evaluate "
                         "on data of the same kind")
    scaling = Scaling.from_state(scaling_state)
    dataset = custom_dataset(path, label_column=label_column, force=True)
    if dataset.shape != scaling.shape:
        raise ValueError(f"--data {path}: examples of shape {dataset.shape}, but the model was trained on "
                         f"{scaling.shape}")
    return scaling.to_model(dataset.x), dataset.y


def available_memory():
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(nbytes, what):
    """Refuse up front (ValueError) a request that needs more memory than is available, rather than running until
    the machine swaps or the process is killed."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory, more than the "
                         f"{available / 2**30:.1f} GiB available; ask for fewer")


# ---- samples to a file -----------------------------------------------------------------------------------------------
SAMPLE_SUFFIXES = (".png", ".npy", ".csv")
MAX_PICTURE_SAMPLES = 10_000  # a 100 x 100 grid of digits, 3,000 pixels a side; beyond that a picture says nothing
SAMPLE_CHUNK = 1000


def default_sample_path(checkpoint, seed=0, suffix=".png"):
    """Where ``tinygen sample CKPT`` writes without ``--out``: ``samples_seed<seed>.png`` beside the checkpoint
    (not ``samples.png``, which training writes there); ``suffix`` ".npy" for data that are not pictures."""
    return Path(checkpoint).expanduser().parent / f"samples_seed{seed}{suffix}"


def write_data_samples(args, draw, scaling, nrow=8):
    """``tinygen sample`` for a run on its own data: ``draw(start, count)`` gives model-unit samples (count,
    features), written in the data's units and shape (``scaling``, a ``tinygen.data.Scaling``): a .png grid of
    images, a .npy array (n, *shape) or a .csv of one flattened sample a row. Vectors have no picture: without
    ``--out`` they go to a .npy file."""
    from ..utils.image import save_image_grid
    images = scaling.kind == "images"
    out = Path(args.out) if args.out else default_sample_path(args.checkpoint, args.seed, ".png" if images else ".npy")
    if not images and out.suffix.lower() == ".png":
        raise ValueError(f"--out {out}: the samples are vectors of {scaling.features} features, not images; write "
                         f"them to a .npy or .csv file")
    write_samples(out, args.n, lambda start, count: scaling.to_data(draw(start, count)), scaling.shape,
                  lambda path, x: save_image_grid(path, x, nrow=nrow, value_range=scaling.picture_range()),
                  columns=scaling.columns)
    print(f"wrote {args.n} samples of shape {scaling.shape} in the data's units to {out}")
    return out


def check_sample_request(n, out, item_shape):
    """Refuse, before drawing anything, a request that cannot be honoured: ``--n`` not positive, an output that is
    neither .png nor .npy, a picture of more than MAX_PICTURE_SAMPLES, or a .npy larger than the free disk."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"--n must be a positive integer, got {n!r}")
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SAMPLE_SUFFIXES:
        raise ValueError(f"--out {out}: name a .png file (a picture), or a .npy or .csv file (the raw samples); "
                         f"'{out.suffix or out.name}' is none of them")
    if suffix == ".png" and n > MAX_PICTURE_SAMPLES:
        raise ValueError(f"--n {n} is too many for one picture (at most {MAX_PICTURE_SAMPLES}); write them to "
                         f"a .npy file instead (--out {out.with_suffix('.npy')}), which is filled in chunks")
    if suffix in (".npy", ".csv"):
        import shutil
        need = int(n) * int(np.prod(item_shape)) * 4 + 4096
        folder = out.parent if str(out.parent) else Path(".")
        if folder.is_dir():
            free = shutil.disk_usage(folder).free
            if need > free:
                raise ValueError(f"--n {n} needs {need / 2**30:.2f} GiB in {folder}, which has {free / 2**30:.2f} "
                                 f"GiB free; ask for fewer samples or write elsewhere")
    return int(n)


def write_samples(out, n, draw, item_shape, picture, columns=None):
    """Draw ``n`` samples in chunks of SAMPLE_CHUNK with ``draw(start, count)`` (float32 arrays of ``item_shape``)
    into ``out``: a .npy file filled chunk by chunk (so memory stays flat for any n) and renamed into place when
    complete, a .csv of one flattened sample a row (a header of ``columns`` when given), or a picture made by
    ``picture(path, samples)`` for a .png."""
    out = Path(out)
    n = check_sample_request(n, out, item_shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        picture(out, np.concatenate([draw(i, min(SAMPLE_CHUNK, n - i)) for i in range(0, n, SAMPLE_CHUNK)]))
        return out
    if out.suffix.lower() == ".csv":
        tmp = out.with_name(out.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                if columns is not None:
                    f.write(",".join(columns) + "\n")
                for i in range(0, n, SAMPLE_CHUNK):
                    m = min(SAMPLE_CHUNK, n - i)
                    np.savetxt(f, np.asarray(draw(i, m), dtype=np.float32).reshape(m, -1), delimiter=",", fmt="%.7g")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out
    if out.is_dir():
        raise IsADirectoryError(21, "is a folder; give a file name ending in .npy", str(out))
    tmp = out.with_name(out.name + ".tmp")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *item_shape))
        for i in range(0, n, SAMPLE_CHUNK):
            m = min(SAMPLE_CHUNK, n - i)
            array[i:i + m] = np.asarray(draw(i, m), dtype=np.float32).reshape(m, *item_shape)
        array.flush()
        del array
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
