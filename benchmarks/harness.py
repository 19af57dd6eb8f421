"""The benchmark harness: runs every framework side by side and writes results.md, results.json, throughput.png.

Methodology (see README.md):
  * each framework runs in its own worker process (benchmarks/worker.py), started with the thread-count
    environment set before any numerical library is imported, pinned to the same cores;
  * for each (case, batch size) every framework builds the model from the same initial weights and data, warms
    up (the first step, which includes any compilation, is timed separately), and then the frameworks take turns
    running timed chunks of steps, in a rotating order, so noise on the machine is shared out evenly;
  * throughput is samples/s per chunk: median, min and max over the chunks;
  * with --quality, the VAE and the GAN are also trained in tinygen and PyTorch for the same number of steps and
    their test loss / sample metrics compared (benchmarks/quality.py, in a process of its own).
"""
import argparse
import datetime
import json
import os
import platform
import selectors
import subprocess
import sys
import threading
import time

from tinygen_launcher import OPENBLAS_THREAD_TIMEOUT  # the tinygen command's spin (the launcher loads no NumPy)

from . import dispatch as dispatch_mod
from .quality import DEFAULTS as QUALITY_DEFAULTS
from .specs import CASES, batch_sizes_of, flops_per_step
from .worker import FRAMEWORKS, REQUIRES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FRAMEWORKS = ["tinygen", "tinygen-numba", "tinygen-compiled", "torch", "torch-compile", "jax", "numpy"]
DEFAULT_MODELS = ["dispatch", "mlp", "mlp-adam", "vae", "gan", "dcgan"]
MODEL_NAMES = DEFAULT_MODELS
REFERENCE = "torch"  # ratios are tinygen / this


class Settings:
    """Repeat counts and chunk sizes: full runs aim at ~15 minutes on 2 cores, quick ones at seconds."""

    def __init__(self, quick):
        self.quick = quick
        self.warmup_s = 0.02 if quick else 0.5
        self.chunk_s = 0.02 if quick else 0.25
        self.repeats = 3 if quick else 7
        self.gemm_sizes = [128, 256] if quick else [256, 512, 1024, 2048]
        self.memory_batch = 64 if quick else 256
        self.profile_steps = 3 if quick else 20
        self.breakdown_rounds = 2 if quick else 5
        self.breakdown_round_s = 0.02 if quick else 0.25
        self.check_steps = 3


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="tinygen vs PyTorch (eager, torch.compile), JAX jit and hand-written "
                                            "NumPy: per-op dispatch overhead and training-step throughput.")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated, from {', '.join(MODEL_NAMES)} (default: all)")
    p.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS),
                   help=f"comma-separated, from {', '.join(FRAMEWORKS)} (default: all)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 16,64,256,1024; quick: 16,64)")
    p.add_argument("--threads", type=int, default=2, help="threads for every framework and BLAS (default 2)")
    p.add_argument("--quick", action="store_true", help="tiny repeats, for a smoke test (numbers are rough)")
    p.add_argument("--out", default="benchmark-results", help="output folder (default ./benchmark-results)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the tinygen step of each model (also done automatically in a full run when "
                        "tinygen is slower than PyTorch eager)")
    p.add_argument("--profile-batch", type=int, default=64, help="batch size for --profile (default 64)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check that every framework computes the same losses")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--no-breakdown", action="store_true",
                   help="do not split the compiled columns' cells that fall short of a speed goal into their parts")
    p.add_argument("--memory-frameworks", default="tinygen,tinygen-numba,tinygen-compiled,torch,jax,numpy",
                   help="frameworks whose peak memory is measured, if selected (default: all but torch-compile)")
    p.add_argument("--no-chart", action="store_true", help="do not draw throughput.png")
    p.add_argument("--openblas-env", choices=("keep", "unset"), default="keep",
                   help="keep (default) or unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in every framework's "
                        "process; when set they can pin NumPy's OpenBLAS to an older, slower kernel")
    q = p.add_argument_group("quality at equal steps (trains real models on MNIST: minutes, so off by default)")
    q.add_argument("--quality", action="store_true",
                   help="also train the VAE and the GAN (of --models) in tinygen and PyTorch with the same "
                        "hyper-parameters and data order, and compare test loss / classifier Fréchet distance")
    q.add_argument("--quality-only", action="store_true",
                   help="only the quality comparison (no dispatch, throughput, memory or check runs)")
    q.add_argument("--quality-vae-epochs", type=int, default=QUALITY_DEFAULTS["vae_epochs"],
                   help=f"VAE training epochs (default {QUALITY_DEFAULTS['vae_epochs']})")
    q.add_argument("--quality-gan-steps", type=int, default=QUALITY_DEFAULTS["gan_steps"],
                   help=f"GAN generator steps (default {QUALITY_DEFAULTS['gan_steps']})")
    q.add_argument("--quality-seeds", type=int, default=QUALITY_DEFAULTS["seeds"],
                   help=f"GAN runs per framework, seeds 0..K-1 (default {QUALITY_DEFAULTS['seeds']})")
    q.add_argument("--quality-samples", type=int, default=QUALITY_DEFAULTS["samples"],
                   help=f"GAN samples scored per run (default {QUALITY_DEFAULTS['samples']})")
    args = p.parse_args(argv)

    def split(text, allowed, what):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad:
            p.error(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
        return items
    args.models = split(args.models, MODEL_NAMES, "model(s)")
    args.frameworks = split(args.frameworks, list(FRAMEWORKS), "framework(s)")
    args.memory_frameworks = [f for f in split(args.memory_frameworks, list(FRAMEWORKS), "framework(s)")
                              if f in args.frameworks and f != "torch-compile"]
    if args.batch_sizes is None:
        args.batch_sizes = "16,64" if args.quick else "16,64,256,1024"
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 2:
        p.error(f"--batch-sizes must be integers >= 2 (BatchNorm needs two samples), got {args.batch_sizes}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    args.quality = args.quality or args.quality_only
    for name in ("quality_vae_epochs", "quality_gan_steps", "quality_seeds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.quality_samples < 2:
        p.error(f"--quality-samples must be >= 2 (a covariance needs two), got {args.quality_samples}")
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- worker processes ------------------------------------------------------------------------------------------------
def openblas_thread_timeout():
    """The OPENBLAS_THREAD_TIMEOUT every worker gets: yours if set, else the ``tinygen`` command's, 24 (see
    worker_env)."""
    return os.environ.get("OPENBLAS_THREAD_TIMEOUT") or OPENBLAS_THREAD_TIMEOUT


OPENBLAS_KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def xla_flags(threads, flags=""):
    """``flags`` (the XLA_FLAGS a process would start with) and JAX's CPU thread count: what JAX reads when it
    starts."""
    xla = f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'} intra_op_parallelism_threads={threads}"
    return (flags + " " + xla).strip()


def worker_env(framework, threads, openblas_env="keep"):
    """The environment a framework's process starts with: thread counts fixed before any import;
    ``openblas_env="unset"`` removes the variables that pin OpenBLAS's kernel (OPENBLAS_KERNEL_VARS)."""
    env = dict(os.environ)
    if openblas_env == "unset":
        for var in OPENBLAS_KERNEL_VARS:
            env.pop(var, None)
    n = str(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = n
    env["XLA_FLAGS"] = xla_flags(threads, env.get("XLA_FLAGS", ""))
    # OpenBLAS's idle threads busy-wait for about 2^28 cycles (a tenth of a second) after each call; on a 2-core
    # machine that would take a core from the next framework's chunk. 2^24 cycles (about 6 ms) keeps them awake
    # through a step, from one GEMM to the next, as MKL's and XLA's spinning pools are, and ends before the next
    # chunk starts (SETTLE_S). 2^18 (0.1 ms), used before, let them fall asleep between a step's products on this
    # virtual machine, where waking one took 80-250 us: tinygen's steps were 10-40% slower than at 2^22-2^28
    # (set it yourself to measure another value).
    env["OPENBLAS_THREAD_TIMEOUT"] = openblas_thread_timeout()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(FRAMEWORKS[framework]["env"])
    return env


class WorkerProcess:
    """A framework's worker: send a command, wait (with a timeout) for its one-line JSON reply."""

    def __init__(self, framework, threads, log_dir, openblas_env="keep", log_name=None):
        self.framework = framework
        self.log_path = os.path.join(log_dir, f"worker-{log_name or framework}.log")
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", framework, str(threads)],
                                     cwd=REPO, env=worker_env(framework, threads, openblas_env),
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.hello = self._read(300)

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                self.kill()
                return {"error": f"no answer within {timeout:.0f} s (worker killed; see {self.log_path})"}
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                return {"error": f"worker exited with code {code} (see {self.log_path}):\n{self.log_tail()}"}
            if line.strip():
                return json.loads(line)

    def request(self, cmd, timeout=600, **kwargs):
        if self.proc.poll() is not None:
            return {"error": f"worker is not running (exit code {self.proc.returncode}; see {self.log_path})"}
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def log_tail(self, n=15):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._log.close()


class Pool:
    """One live worker per framework, started on first use (and again if one had to be killed)."""

    def __init__(self, threads, log_dir, openblas_env="keep"):
        self.threads, self.log_dir, self.workers = threads, log_dir, {}
        self.openblas_env = openblas_env

    def get(self, framework):
        w = self.workers.get(framework)
        if w is None or w.proc.poll() is not None:
            t0 = time.perf_counter()
            w = self.workers[framework] = WorkerProcess(framework, self.threads, self.log_dir, self.openblas_env)
            if "error" not in w.hello:
                w.hello["start_s"] = time.perf_counter() - t0
        return w

    def fresh(self, framework):
        """A new process (for peak-memory runs, where nothing measured before may count)."""
        return WorkerProcess(framework, self.threads, self.log_dir, self.openblas_env)

    def close(self):
        for w in self.workers.values():
            w.close()


def _status(reply):
    """'ok', 'skipped: why' or 'failed: why' of a worker reply (hello or command)."""
    if reply.get("error"):
        return "failed: " + reply["error"]
    if reply.get("skipped"):
        return "skipped: " + reply["skipped"]
    return "ok"


# ---- measurements ----------------------------------------------------------------------------------------------------
def gemm_without_kernel_vars(threads, log_dir, sizes):
    """NumPy's sgemm peak in a process without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (OpenBLAS then picks the
    kernel for this CPU), and that kernel's name: what the variables cost, for the report."""
    w = WorkerProcess("numpy", threads, log_dir, openblas_env="unset", log_name="numpy-openblas-unset")
    try:
        if _status(w.hello) != "ok":
            return {"status": _status(w.hello)}
        reply = w.request("gemm", timeout=300, sizes=sizes)
        if "ok" not in reply:
            return {"status": _status(reply)}
        info = w.request("env", timeout=60).get("ok", {})
        pools = info.get("threadpools")
        kernels = sorted({p.get("architecture") or "?" for p in pools if p.get("internal_api") == "openblas"}
                         ) if isinstance(pools, list) else []
        return {"status": "ok", "architecture": ", ".join(kernels) or "unknown", **reply["ok"]}
    finally:
        w.close()


def summarize(chunks, batch, key="seconds"):
    rates = sorted(c["steps"] * batch / max(c[key], 1e-9) for c in chunks)
    n = len(rates)
    median = rates[n // 2] if n % 2 else (rates[n // 2 - 1] + rates[n // 2]) / 2
    return {"median": median, "min": rates[0], "max": rates[-1]}


SETTLE_S = 0.01  # idle between two timed chunks: a framework's spinning threads (OpenBLAS's, above) stop first


def run_throughput(pool, case, batch, frameworks, st, progress):
    """Set every framework up for (case, batch), then interleave their timed chunks."""
    results, active = {}, []
    load = _loadavg()
    for fw in frameworks:
        w = pool.get(fw)
        if _status(w.hello) != "ok":
            results[fw] = {"status": _status(w.hello)}
            progress(case, batch, fw, results[fw])
            continue
        reply = w.request("setup", timeout=900, case=case, batch=batch, warmup_s=st.warmup_s, chunk_s=st.chunk_s)
        if _status(reply) != "ok":
            results[fw] = {"status": _status(reply)}
            if "trace" in reply:
                results[fw]["trace"] = reply["trace"]
            progress(case, batch, fw, results[fw])
            continue
        results[fw] = {"status": "ok", "setup": reply["ok"], "chunks": [], "loadavg_before": load}
        active.append(fw)
    for r in range(st.repeats):
        order = active[r % len(active):] + active[:r % len(active)] if active else []
        for fw in order:
            if results[fw]["status"] != "ok":
                continue
            time.sleep(SETTLE_S)
            reply = pool.get(fw).request("chunk", timeout=300)
            if _status(reply) != "ok":
                results[fw]["status"] = _status(reply)
                continue
            results[fw]["chunks"].append(reply["ok"])
    flops = flops_per_step(CASES[case]["model"], batch)
    for fw in active:
        res = results[fw]
        if res["status"] == "ok" and res["chunks"]:
            res["samples_per_s"] = summarize(res["chunks"], batch)
            res["samples_per_cpu_s"] = summarize(res["chunks"], batch, "cpu_seconds")
            res["gflops_per_s"] = flops * res["samples_per_s"]["median"] / batch / 1e9
        progress(case, batch, fw, res)
    return results


def run_dispatch(pool, frameworks, st):
    out = {}
    for fw in frameworks:
        if FRAMEWORKS[fw]["dispatch"] is None:
            continue
        w = pool.get(fw)
        reply = w.request("dispatch", timeout=600, quick=st.quick) if _status(w.hello) == "ok" else w.hello
        status = _status(reply)
        if status != "ok":
            names = ["jax", "jax-jit"] if fw == "jax" else [fw]
            for name in names:
                out[name] = {"status": status}
            log(f"dispatch  {fw:<14} {status}")
            continue
        for name, res in reply["ok"].items():
            out[name] = {"status": "ok", "benches": res}
            log(f"dispatch  {name:<14} " + "  ".join(
                f"{b} {r['us_per_op']:.2f}us" for b, r in res.items() if "us_per_op" in r))
    return out


def run_checks(pool, cases, frameworks, batch, st):
    """Losses of the first steps with fixed noise from every framework (torch.compile excluded: compiling again
    costs more than the check is worth), against the hand-written NumPy step, or PyTorch eager's for a model
    without one (dcgan)."""
    out = {}
    for case in cases:
        out[case] = {}
        for fw in frameworks:
            if fw == "torch-compile":
                continue
            w = pool.get(fw)
            reply = w.request("check", timeout=300, case=case, batch=batch, steps=st.check_steps) \
                if _status(w.hello) == "ok" else w.hello
            out[case][fw] = {"status": _status(reply)}
            if "ok" in reply:
                out[case][fw]["losses"] = reply["ok"]["losses"]
        ref_fw = next((fw for fw in ("numpy", "torch") if "losses" in out[case].get(fw, {})), None)
        ref = out[case][ref_fw]["losses"] if ref_fw else None
        for fw, res in out[case].items():
            if ref is not None and "losses" in res:
                err = max(abs(a - b) / max(abs(b), 1e-6) for sa, sb in zip(res["losses"], ref) for a, b in zip(sa, sb))
                res[f"max_rel_diff_vs_{ref_fw}"] = err
                res["agrees"] = err < 1e-3
        bad = [fw for fw, r in out[case].items() if r.get("agrees") is False]
        log(f"check     {case:<9} " + ("no reference (numpy or torch) to compare with" if ref_fw is None else
                                       f"all frameworks agree with {ref_fw}" if not bad else
                                       f"DISAGREE with {ref_fw}: {', '.join(bad)}"))
    return out


def traced(framework):
    """Whether tracemalloc sees a framework's arrays (NumPy's; not PyTorch's or JAX's own allocators)."""
    return REQUIRES[framework] in ("tinygen", "numpy")


def run_memory(pool, cases, frameworks, batch, st):
    """Peak RSS of a fresh process that imports the framework, builds the model and trains for a few chunks; for
    the frameworks whose arrays tracemalloc sees (``traced``), in a second fresh process (tracing takes memory
    itself), the traced memory (Python's objects and the arrays) when the timed chunks begin and at its peak in
    them: what the steps hold, without the code a process loads (modules, Numba's compiled loops)."""
    out = []
    for case in cases:
        for fw in frameworks:
            w = pool.fresh(fw)
            try:
                row = {"case": case, "framework": fw, "batch": batch}
                if _status(w.hello) != "ok":
                    row["status"] = _status(w.hello)
                    out.append(row)
                    continue
                base = w.request("rss", timeout=60)
                reply = _memory_setup(w, case, batch, st)
                if _status(reply) == "ok":
                    _memory_chunks(w)
                    peak = w.request("rss", timeout=60)
                    row.update(status="ok", baseline_rss_mb=base["ok"]["peak_rss_mb"],
                               peak_rss_mb=peak["ok"]["peak_rss_mb"],
                               training_mb=peak["ok"]["peak_rss_mb"] - base["ok"]["peak_rss_mb"])
                    log(f"memory    {case:<9} b={batch:<5} {fw:<14} peak {row['peak_rss_mb']:7.1f} MB "
                        f"(after import {row['baseline_rss_mb']:.1f} MB)")
                else:
                    row["status"] = _status(reply)
                out.append(row)
            finally:
                w.close()
            if row.get("status") == "ok" and traced(fw):
                row.update(_traced_memory(pool.fresh(fw), case, batch, st))
    return out


def _memory_setup(w, case, batch, st):
    """The memory runs' model and warm-up in the fresh worker ``w`` (its reply)."""
    return w.request("setup", timeout=600, case=case, batch=batch, warmup_s=st.warmup_s, chunk_s=st.chunk_s)


def _memory_chunks(w, n=3):
    """The memory runs' training: ``n`` timed chunks."""
    for _ in range(n):
        w.request("chunk", timeout=300)


def _traced_memory(w, case, batch, st):
    """{traced_before_mb, traced_peak_mb} of a training run in the fresh worker ``w`` (see run_memory), or
    {traced_status} saying why not."""
    try:
        replies = []
        for reply in _traced_run(w, case, batch, st):  # (stops at the first that fails)
            if _status(reply) != "ok":
                return {"traced_status": _status(reply)}
            replies.append(reply["ok"])
        _, _, before, peak = replies
        log(f"memory    {case:<9} b={batch:<5} {w.framework:<14} traced peak {peak['traced_peak_mb']:7.2f} MB "
            f"(at the timed steps' start {before['traced_mb']:.2f} MB)")
        return {"traced_before_mb": before["traced_mb"], "traced_peak_mb": peak["traced_peak_mb"]}
    finally:
        w.close()


def _traced_run(w, case, batch, st):
    """The traced memory run's replies, in order: tracing started, the model set up, the traced memory when the
    timed chunks begin (its peak reset), and after them."""
    yield w.request("traced", timeout=60, start=True)
    yield _memory_setup(w, case, batch, st)
    yield w.request("traced", timeout=60, reset=True)
    _memory_chunks(w)
    yield w.request("traced", timeout=60)


PROFILED = ("tinygen-numba", "tinygen")  # the first of these that ran a case is the one profiled


def profiled_variant(frameworks, per_batch):
    """The tinygen variant to profile for a case: the fastest one the run has (Numba on, when it ran), since the
    headline ratios are that variant's."""
    return next((fw for fw in PROFILED if fw in frameworks and _median(per_batch.get(fw)) is not None), None)


# The speed goals of tinygen.compile's step: (against, models, batch sizes (None: all), ratio of median
# samples/s). A full run splits each cell of a compiled column (MKL's products or NumPy's BLAS) that falls short of
# one into its parts (run_breakdowns), so the report says what holds it.
GOALS = (("jax", ("mlp", "mlp-adam", "vae", "gan"), None, 0.8),
         (REFERENCE, ("mlp", "mlp-adam", "vae", "gan"), (16,), 1.5),
         (REFERENCE, ("dcgan",), None, 1.0))
COMPILED = "tinygen-compiled"
COMPILED_COLUMNS = (COMPILED, "tinygen-compiled-numpy-blas")


def short_cells(throughput):
    """[(framework, case, batch, [(against, ratio, goal), ...])] for the cells of the compiled columns
    (COMPILED_COLUMNS) below a goal of GOALS, with every goal each one misses (cells where either side did not run
    are not judged)."""
    cells = [(framework, case, int(b), _missed_goals(framework, case, int(b), per_fw))
             for framework in COMPILED_COLUMNS for case, per_batch in throughput.items()
             for b, per_fw in per_batch.items()]
    return [cell for cell in cells if cell[3]]


def _missed_goals(framework, case, batch, per_fw):
    """[(against, ratio, goal)] of the goals ``framework``'s cell misses, given every framework's results there."""
    mine, missed = _median(per_fw.get(framework)), []
    for against, cases, batches, goal in GOALS:
        theirs = _median(per_fw.get(against))
        if case in cases and (batches is None or batch in batches) and mine and theirs and mine / theirs < goal:
            missed.append((against, mine / theirs, goal))
    return missed


def run_breakdowns(pool, cells, st):
    """step_bench's split of the compiled step for each short cell, each in a fresh worker of its column (the
    split installs timers that would stay in a process's later measurements)."""
    out = []
    for framework, case, batch, missed in cells:
        w = pool.fresh(framework)
        try:
            reply = w.request("breakdown", timeout=600, case=case, batch=batch, rounds=st.breakdown_rounds,
                              round_s=st.breakdown_round_s) if _status(w.hello) == "ok" else w.hello
        finally:
            w.close()
        row = {"framework": framework, "case": case, "batch": batch, "status": _status(reply),
               "missed": [{"against": a, "ratio": r, "goal": g} for a, r, g in missed], **reply.get("ok", {})}
        out.append(row)
        log(f"breakdown {case:<9} b={batch:<5} {framework:<14} {row['status']}")
    return out


def breakdown_markdown(rows, throughput):
    """The report's section on the short cells: each one's compiled step split into its parts, the largest first."""
    if not rows:
        return []
    lines = ["## Where the time goes in the cells short of a goal (tinygen's compiled columns)", "",
             "Goals: " + "; ".join(f"{goal:g}x {against} ({', '.join(cases)}"
                                   + (f"; batch {', '.join(map(str, batches))})" if batches else ")")
                                   for against, cases, batches, goal in GOALS) + ". Each short cell's compiled step "
             "is timed again in a fresh process with timers around its parts (what `python -m benchmarks.step_bench "
             "--case CASE --batch B --threads T` prints); the largest part is in bold. Beside it, every "
             "framework's step time in the throughput runs above (batch / median samples/s).", "",
             "| column | case | batch | short of | step in the throughput runs (ms) | split step (ms) "
             "| parts (ms, share) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        short = ", ".join(f"{m['against']} {m['ratio']:.2f}x < {m['goal']:g}x" for m in r["missed"])
        per_fw = throughput.get(r["case"], {}).get(str(r["batch"]), {})
        steps = ", ".join(f"{fw} {1e3 * r['batch'] / _median(res):.2f}" for fw, res in per_fw.items() if _median(res))
        cell = f"| {r['framework']} | {r['case']} | {r['batch']} | {short} | {steps}"
        if r["status"] != "ok":
            lines.append(f"{cell} | {r['status']} | |")
            continue
        timed = r["timed_step_ms"]
        parts = "; ".join(("**{}**" if i == 0 else "{}").format(f"{k}: {v:.2f} ({100 * v / timed:.0f}%)")
                          for i, (k, v) in enumerate(r["parts_ms"].items()))
        lines.append(f"{cell} | {r['step_ms']:.2f} | {parts} |")
    return lines + [""]


def run_profile(pool, framework, case, batch, st):
    w = pool.get(framework)
    reply = w.request("profile", timeout=600, case=case, batch=batch, steps=st.profile_steps) \
        if _status(w.hello) == "ok" else w.hello
    if _status(reply) != "ok":
        return {"status": _status(reply), "framework": framework}
    return {"status": "ok", "framework": framework, "case": case, "batch": batch, **reply["ok"]}


QUALITY_PARTS = ("vae", "gan")


def quality_settings(args, cases):
    return {"parts": [c for c in QUALITY_PARTS if c in cases], "vae_epochs": args.quality_vae_epochs,
            "gan_steps": args.quality_gan_steps, "seeds": args.quality_seeds, "samples": args.quality_samples,
            "threads": args.threads,
            "framework": next((f for f in args.frameworks if f.startswith("tinygen")), None)}


def quality_timeout(settings):
    """Generous: ~4x what the default budget takes on a busy 2-core machine."""
    gan = "gan" in settings["parts"]
    return 600 + 240 * settings["vae_epochs"] * ("vae" in settings["parts"]) \
        + settings["seeds"] * (0.4 * settings["gan_steps"] + 0.01 * settings["samples"]) * gan


def measure_quality(cases, args, log_dir):
    """Quality at equal steps (benchmarks/quality.py): the VAE's test loss and the GAN's classifier metrics, tinygen
    against PyTorch, trained in one process started with the workers' thread settings. Returns its results, or a
    status saying why it did not run."""
    if not args.quality:
        return {"status": "not measured (pass --quality; it trains the VAE and the GAN in both frameworks: minutes)"}
    settings = quality_settings(args, cases)
    if not settings["parts"]:
        return {"status": "skipped: neither vae nor gan is among --models", "settings": settings}
    if settings["framework"] is None:
        return {"status": "skipped: no tinygen framework among --frameworks", "settings": settings}
    if "torch" not in args.frameworks:
        return {"status": "skipped: torch is not among --frameworks (the comparison is against PyTorch eager)",
                "settings": settings}
    out_json = os.path.join(log_dir, "quality.json")
    if os.path.exists(out_json):
        os.remove(out_json)
    timeout = quality_timeout(settings)
    log(f"quality   {', '.join(settings['parts'])} with {settings['framework']} and torch (log: "
        f"{os.path.join(log_dir, 'quality.log')})")
    with open(os.path.join(log_dir, "quality.log"), "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.quality", out_json], cwd=REPO,
                                env=worker_env(settings["framework"], args.threads), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        proc.stdin.write(json.dumps(settings))
        proc.stdin.close()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if line.startswith("quality"):
                    log(line.rstrip())
            code = proc.wait()
        except BaseException:  # e.g. Ctrl-C: do not leave the training behind
            proc.kill()
            raise
        finally:
            killer.cancel()
    if code != 0 or not os.path.exists(out_json):
        why = f"killed after {timeout:.0f} s" if code in (-9, 137) else f"exit code {code}"
        return {"status": f"failed: the quality process ended ({why}; see {os.path.join(log_dir, 'quality.log')})",
                "settings": settings}
    with open(out_json) as f:
        return json.load(f)


# ---- environment -----------------------------------------------------------------------------------------------------
def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def busy_warning(loads):
    """A warning when other processes competed for the CPUs: multi-threaded BLAS (OpenMP/pthreads workers that
    spin at barriers) slows down many times over when its threads are descheduled, unevenly across frameworks."""
    loads = [x for x in loads if x is not None]
    cpus = os.cpu_count() or 1
    if not loads or max(loads) <= cpus + 0.5:  # our own busy threads count too
        return None
    return (f"the machine was busy (1-minute load average up to {max(loads):.1f} on {cpus} CPUs) — other processes "
            f"competed for the cores, and multi-threaded BLAS degrades badly under contention, so these numbers "
            f"are not representative. Rerun on an idle machine (or with --threads 1 to keep the ratios fairer).")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(args, pool):
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(args.argv),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tinygen_commit": git_commit(),
        "threads": args.threads,
        "loadavg_1min_start": args.load_start,
        "loadavg_1min_end": _loadavg(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "OPENBLAS_THREAD_TIMEOUT": openblas_thread_timeout(),
        "openblas_env": args.openblas_env,
        "frameworks": {},
    }
    try:
        import psutil
        env["physical_cores"] = psutil.cpu_count(logical=False)
        env["memory_gb"] = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:
        pass
    try:
        env["affinity"] = sorted(os.sched_getaffinity(0))
    except AttributeError:
        pass
    for fw, w in pool.workers.items():
        if _status(w.hello) != "ok":
            env["frameworks"][fw] = {"status": _status(w.hello)}
            continue
        reply = w.request("env", timeout=60)
        env["frameworks"][fw] = reply.get("ok", {"status": _status(reply)})
        env["frameworks"][fw]["start_s"] = w.hello.get("start_s")
    return env


# ---- report ----------------------------------------------------------------------------------------------------------
def _k(x):
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def _cell(res):
    if res is None:
        return "—"
    if res.get("status") != "ok" or "samples_per_s" not in res:
        status = res.get("status", "?")
        return "n/a" if "n/a" in status else ("skipped" if status.startswith("skipped") else "FAILED")
    s = res["samples_per_s"]
    return f"{_k(s['median'])} ({_k(s['min'])}–{_k(s['max'])})"


def _median(res):
    if res and res.get("status") == "ok" and "samples_per_s" in res:
        return res["samples_per_s"]["median"]
    return None


def _ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "—"


# Measured on this machine class with 2 threads before tinygen existed (samples/s at batch 16/64/256/1024; per-op
# microseconds): how fast this machine is today relative to then.
REFERENCE_NUMBERS = {
    "torch": {"vae": [3.6e3, 10.3e3, 26.4e3, 37.1e3], "gan": [1.3e3, 3.9e3, 7.6e3, 8.8e3],
              "mlp": [14.4e3, 34.2e3, 47.4e3, 50.6e3]},
    "jax": {"vae": [20.5e3, 34.2e3, 47.3e3, 50.5e3], "gan": [2.9e3, 7.2e3, 10.4e3, 10.0e3],
            "mlp": [28.3e3, 43.7e3, 53.7e3, 56.0e3]},
}
REFERENCE_BATCHES = [16, 64, 256, 1024]
REFERENCE_DISPATCH = {"numpy": {"add": 0.35}, "torch": {"add": 1.3, "add_rec": 2.0}}


def headline(results):
    """The ratios first: tinygen against PyTorch eager (and JAX jit), per model and batch size, and per op."""
    args = results["options"]
    fws, batches = args["frameworks"], args["batch_sizes"]
    tp, d = results.get("throughput") or {}, results.get("dispatch") or {}
    lines = []
    pairs = [(num, den) for num in ("tinygen", "tinygen-numba", "tinygen-compiled", "tinygen-compiled-numpy-blas")
             for den in (REFERENCE, "jax")
             if num in fws and den in fws]
    if tp and pairs:
        lines += ["## Headline: throughput ratios (median samples/s, > 1 means tinygen is faster)", "",
                  "| case | ratio | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---" * (len(batches) + 2) + "|"]
        for case, per_batch in tp.items():
            for num, den in pairs:
                lines.append(f"| {case} | {num} / {den} | " + " | ".join(
                    _ratio(_median(per_batch.get(str(b), {}).get(num)), _median(per_batch.get(str(b), {}).get(den)))
                    for b in batches) + " |")
        lines.append("")
    if d.get("tinygen", {}).get("status") == "ok" and d.get("torch", {}).get("status") == "ok":
        mine, ref = d["tinygen"]["benches"], d["torch"]["benches"]
        parts = [f"{b} {mine[b]['us_per_op'] / ref[b]['us_per_op']:.2f}x" for b in dispatch_mod.BENCHES
                 if "us_per_op" in mine.get(b, {}) and "us_per_op" in ref.get(b, {})]
        lines += ["Per-op time, tinygen / PyTorch (< 1 means tinygen is cheaper): " + ", ".join(parts), ""]
    # how this machine compares with the reference measurements of its class (only meaningful at 2 threads)
    if args["threads"] == 2 and tp:
        parts = []
        for fw, per_case in REFERENCE_NUMBERS.items():
            for case, refs in per_case.items():
                for b, ref in zip(REFERENCE_BATCHES, refs):
                    got = _median(tp.get(case, {}).get(str(b), {}).get(fw))
                    if got is not None:
                        parts.append(got / ref)
        if parts:
            parts.sort()
            lines += [f"This machine against the reference measurements of its class (PyTorch eager and JAX jit, "
                      f"{len(parts)} cells): median {parts[len(parts) // 2]:.2f}x "
                      f"(range {parts[0]:.2f}x–{parts[-1]:.2f}x).", ""]
    return lines


def markdown(results):
    env, args = results["environment"], results["options"]
    lines = ["# tinygen benchmarks", "",
             f"`{env['command']}` — {env['date']}", "",
             f"CPU: {env['cpu_model']}, {env.get('logical_cpus')} logical CPUs"
             + (f" ({env['physical_cores']} physical)" if env.get("physical_cores") else "")
             + (f", {env['memory_gb']} GB" if env.get("memory_gb") else "")
             + f"; threads per framework: {args['threads']}; Python {env['python']}; tinygen {env['tinygen_commit']}",
             "",
             f"1-minute load average at start / end: {env['loadavg_1min_start']} / {env['loadavg_1min_end']}", ""]
    if results.get("busy_warning"):
        lines += [f"**Warning:** {results['busy_warning']}", ""]
    blas = []
    for fw, info in env["frameworks"].items():
        pools = info.get("threadpools")
        if isinstance(pools, list):
            desc = ", ".join(f"{p.get('internal_api')} {p.get('version') or ''} {p.get('architecture') or ''} "
                             f"x{p.get('num_threads')}".replace("  ", " ") for p in pools)
            vers = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
            blas.append(f"- {fw}: {vers}; thread pools: {desc or 'none'}"
                        + (f"; torch threads {info['torch_threads']}, its BLAS {info.get('torch_blas')}, "
                           f"CPU capability {info.get('torch_cpu_capability')}" if "torch_threads" in info else "")
                        + (f"; its matrix products: {info['tinygen_blas']} (tinygen.kernels.blas)"
                           if "tinygen_blas" in info else "")
                        + (f"; Numba's threading layer: {info['numba_threading_layer']}"
                           if "numba_threading_layer" in info else "")
                        + ({True: "; keeps freed memory for reuse (tinygen.allocator)",
                            False: "; returns freed memory (tinygen.allocator off)"}.get(
                               info.get("tinygen_keeps_freed_memory"), "")))
        elif isinstance(pools, str):
            vers = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
            blas.append(f"- {fw}: {vers}; thread pools: unknown ({pools})")
        elif info.get("status"):
            blas.append(f"- {fw}: {info['status']}")
    lines += blas
    removed = (" — removed in every framework's process (`--openblas-env unset`)"
               if env.get("openblas_env") == "unset" and (env["OPENBLAS_CORETYPE"] or env["OPENBLAS_L2_SIZE"])
               else " (when set they can pin NumPy's OpenBLAS to a slower kernel)")
    lines += ["", "OPENBLAS_CORETYPE: " + (env["OPENBLAS_CORETYPE"] or "not set")
              + "; OPENBLAS_L2_SIZE: " + (env["OPENBLAS_L2_SIZE"] or "not set")
              + removed + "; OPENBLAS_THREAD_TIMEOUT in every "
              + "framework's process: " + str(env.get("OPENBLAS_THREAD_TIMEOUT") or "not set")
              + " (how long OpenBLAS's idle threads spin, as a power of 2 cycles; OpenBLAS's default is 28)", ""]
    if results.get("gemm"):
        g = results["gemm"]
        if g.get("status") == "ok":
            sizes = ", ".join(f"{r['n']}: {r['gflops']:.0f}" for r in g["sizes"])
            lines += [f"Measured sgemm peak (NumPy float32, {args['threads']} threads): "
                      f"**{g['peak_gflops']:.0f} GFLOP/s** (by size n: {sizes})", ""]
        gn = results.get("gemm_native") or {}
        if gn.get("status") == "ok":
            lines += [f"The same GEMMs in a process without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where OpenBLAS "
                      f"picks its kernel for this CPU ({gn['architecture']}): {gn['peak_gflops']:.0f} GFLOP/s, "
                      f"{gn['peak_gflops'] / g['peak_gflops']:.2f}x the peak above. Every number below is measured "
                      f"with the variables as set; `--openblas-env unset` measures every framework without them.",
                      ""]
        elif gn.get("status"):
            lines += [f"sgemm without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: {gn['status']}", ""]
        gt = results.get("gemm_torch") or {}
        if gt.get("status") == "ok":
            blas = env["frameworks"].get("torch", {}).get("torch_blas", "?")
            sizes = ", ".join(f"{r['n']}: {r['gflops']:.0f}" for r in gt["sizes"])
            lines += [f"PyTorch's own BLAS ({blas}) on the same GEMMs: {gt['peak_gflops']:.0f} GFLOP/s "
                      f"(by size n: {sizes}). tinygen's matmuls use NumPy's BLAS; JAX uses XLA's own CPU kernels.", ""]

    lines += headline(results)

    d = results.get("dispatch")
    if d:
        cols = [c for c in ("tinygen", "tinygen-numba", "numpy", "torch", "jax", "jax-jit") if c in d]
        lines += ["## Per-op dispatch overhead (8x8 float32, microseconds of CPU time per op, best of repeats)", "",
                  "| benchmark | " + " | ".join(cols) + " | tinygen / torch |",
                  "|---" * (len(cols) + 2) + "|"]
        for b in dispatch_mod.BENCHES:
            row, vals = [], {}
            for c in cols:
                r = d[c]
                if r.get("status") != "ok":
                    row.append("skipped" if r.get("status", "").startswith("skipped") else "FAILED")
                    continue
                br = r["benches"].get(b, {})
                if "us_per_op" in br:
                    vals[c] = br["us_per_op"]
                    row.append(f"{br['us_per_op']:.2f}")
                else:
                    row.append("n/a")
            lines.append(f"| {b} | " + " | ".join(row) + f" | {_ratio(vals.get('tinygen'), vals.get('torch'))} |")
        lines += ["", "add: a + b; add_rec: a + b recording a graph (a requires grad); add_fwd_bwd: then backward; "
                      "chain_*: 20 elementwise ops (tanh(x * b + a) - b, five times); chain_replay(_bwd): the chain "
                      "(and its backward) as a tinygen.compile'd function, replayed (unfused; _fused: with "
                      "compile's elementwise fusion, _approx: fuse='approx'). JAX eager fwd_bwd is "
                      "jax.vjp; jax-jit is one compiled call divided by the op count.", ""]

    tp = results.get("throughput")
    if tp:
        fws = args["frameworks"]
        batches = args["batch_sizes"]
        lines += ["## Training throughput (samples/s: median (min–max) over timed chunks)", ""]
        for case, per_batch in tp.items():
            lines += [f"### {case}: {CASES[case]['title']}", "",
                      "| framework | " + " | ".join(f"batch {b}" for b in batches) + " |",
                      "|---" * (len(batches) + 1) + "|"]
            for fw in fws:
                lines.append(f"| {fw} | " + " | ".join(_cell(per_batch.get(str(b), {}).get(fw)) for b in batches)
                             + " |")
            for num, den in (("tinygen", REFERENCE), ("tinygen", "jax"), ("numpy", REFERENCE)):
                if num in fws and den in fws:
                    lines.append(f"| *{num} / {den}* | " + " | ".join(
                        _ratio(_median(per_batch.get(str(b), {}).get(num)), _median(per_batch.get(str(b), {}).get(den)))
                        for b in batches) + " |")
            if results.get("busy_warning"):
                cpu = {b: {fw: (per_batch.get(str(b), {}).get(fw) or {}).get("samples_per_cpu_s") for fw in fws}
                       for b in batches}
                lines.append(f"| *by CPU time: tinygen / {REFERENCE}* | " + " | ".join(
                    _ratio((cpu[b]["tinygen"] or {}).get("median"), (cpu[b][REFERENCE] or {}).get("median"))
                    if "tinygen" in fws and REFERENCE in fws else "—" for b in batches) + " |")
            compile_notes = []
            for b in batches:
                for fw in fws:
                    r = per_batch.get(str(b), {}).get(fw)
                    if r and r.get("status") == "ok" and fw in ("torch-compile", "jax"):
                        compile_notes.append(f"{fw} b={b}: {r['setup']['first_step_s']:.1f} s")
            if compile_notes:
                lines += ["", "First step (includes compilation): " + "; ".join(compile_notes)]
            lines.append("")
        skipped = sorted({f"{fw}: {r['status']}" for pb in tp.values() for bres in pb.values()
                          for fw, r in bres.items() if r.get("status", "ok") != "ok"})
        if skipped:
            lines += ["Not measured:", ""] + [f"- {s}" for s in skipped] + [""]

        peak = results.get("gemm", {}).get("peak_gflops")
        if peak:
            lines += ["## FLOP utilisation (matmul GFLOP/s achieved, % of the measured sgemm peak)", "",
                      "Model FLOPs per step count only GEMMs: 2·m·in·out per Linear forward, the same again for its "
                      "weight gradient and for its input gradient (not for the first layer, whose input needs none); a "
                      "convolution counts as the GEMM of its im2col form; the GANs count G forward once, D forward+input-grads for the G step, and D forward+backward on "
                      "real and fake batches (see benchmarks/specs.py).", "",
                      "| case | batch | GFLOP/step | " + " | ".join(fws) + " |",
                      "|---" * (len(fws) + 3) + "|"]
            for case, per_batch in tp.items():
                for b in batches:
                    cells = []
                    for fw in fws:
                        r = per_batch.get(str(b), {}).get(fw)
                        cells.append(f"{r['gflops_per_s']:.0f} ({100 * r['gflops_per_s'] / peak:.0f}%)"
                                     if r and "gflops_per_s" in r else "—")
                    gf = flops_per_step(CASES[case]["model"], b) / 1e9
                    lines.append(f"| {case} | {b} | {gf:.3f} | " + " | ".join(cells) + " |")
            lines.append("")

    mem = results.get("memory")
    if mem:
        lines += [f"## Peak memory of a training run (resident set size, fresh process, batch {mem[0]['batch']})", "",
                  "Traced: what tracemalloc counts (Python's objects and NumPy's arrays, in a second fresh process) "
                  "when the timed steps begin and at its peak during them: what the steps hold, without the code "
                  "the process has loaded. Not for PyTorch and JAX, whose tensors it does not see.", "",
                  "| case | framework | after import (MB) | peak (MB) | training adds (MB) | traced at start (MB) | "
                  "traced peak (MB) |", "|---|---|---|---|---|---|---|"]
        for r in mem:
            if r.get("status") == "ok":
                trace = (f"{r['traced_before_mb']:.2f} | {r['traced_peak_mb']:.2f}" if "traced_peak_mb" in r else
                         f"{r.get('traced_status', '—')} | —")
                lines.append(f"| {r['case']} | {r['framework']} | {r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f}"
                             f" | {r['training_mb']:.0f} | {trace} |")
            else:
                lines.append(f"| {r['case']} | {r['framework']} | {r['status']} | | | | |")
        lines.append("")

    chk = results.get("check")
    if chk:
        lines += ["## Same computation check (loss after each of the first steps, fixed noise; max relative "
                  "difference to NumPy, or to PyTorch eager where NumPy has no such model)", ""]
        for case, per_fw in chk.items():
            parts = []
            for fw, r in per_fw.items():
                diff = next((k for k in r if k.startswith("max_rel_diff_vs_")), None)
                if diff is not None:
                    parts.append(f"{fw} {r[diff]:.1e} (vs {diff[len('max_rel_diff_vs_'):]})"
                                 + ("" if r["agrees"] else " **DIFFERS**"))
                elif r.get("status") != "ok":
                    parts.append(f"{fw} {r['status'].split(':')[0]}")
            lines.append(f"- {case}: " + ", ".join(parts))
        lines.append("")

    lines += quality_markdown(results.get("quality") or {"status": "not measured"})

    lines += breakdown_markdown(results.get("breakdown") or [], results.get("throughput") or {})

    prof = results.get("profile")
    if prof:
        lines += ["## Where tinygen's step spends its time (cProfile)", ""]
        for case, p in prof.items():
            if p.get("status") != "ok":
                lines += [f"- {case}: {p.get('status')}"]
                continue
            table = p["tottime"].splitlines()
            lines += [f"### {p.get('framework', 'tinygen')} {case}, batch {p['batch']}: {p['steps']} steps, "
                      f"{1000 * p['wall_s'] / p['steps']:.1f} ms/step under the profiler, "
                      f"{p['function_calls_per_step']:.0f} Python function calls per step", "",
                      "Top functions by own time (full tables in profile_<case>.txt):", "", "```"]
            lines += table[:16] + ["```", ""]
    return "\n".join(lines)


def quality_markdown(q):
    lines = ["## Quality at equal steps", ""]
    if q.get("status") != "ok":
        return lines + [q.get("status", "?"), ""]
    st = q["settings"]
    v = q.get("versions", {})
    lines += [f"tinygen (TINYGEN_NUMBA={v.get('tinygen_numba')}) against PyTorch {v.get('torch', '?')} eager, "
              f"{st['threads']} thread{'s' if st['threads'] != 1 else ''}, one process; {q['seconds']:.0f} s "
              f"in all.", ""]
    vae = q["parts"].get("vae")
    if vae is not None and vae.get("status") != "ok":
        lines += [f"VAE: {vae['status']}", ""]
    elif vae is not None:
        c = vae["config"]
        a, b = vae["tinygen"], vae["torch"]
        lines += ["### VAE: test loss (negative ELBO, nats per test image) after each epoch",
                  "",
                  f"784-{'-'.join(str(h) for h in c['hidden'])}-{c['latent']}, Adam {c['lr']:g}, batch "
                  f"{c['batch_size']}, seed {c['seed']}, {c['epochs']} epoch(s) on {vae['num_train']} training images; "
                  f"both frameworks start from the same weights and see the same batches in the same order (the "
                  f"reparameterisation noise is each framework's own); scored on {vae['num_test']} test images with "
                  f"one z sample each.", "",
                  "| epoch | tinygen | torch | tinygen − torch |", "|---|---|---|---|"]
        for i, (x, y) in enumerate(zip(a["test_loss"], b["test_loss"])):
            lines.append(f"| {i + 1} | {x:.3f} | {y:.3f} | {x - y:+.3f} |")
        lines += ["", f"Training seconds per epoch (not a benchmark: no interleaving): tinygen "
                      f"{sum(a['seconds_per_epoch']) / len(a['seconds_per_epoch']):.1f}, torch "
                      f"{sum(b['seconds_per_epoch']) / len(b['seconds_per_epoch']):.1f}.", ""]
    gan = q["parts"].get("gan")
    if gan is not None and gan.get("status") != "ok":
        lines += [f"GAN: {gan['status']}", ""]
    elif gan is not None:
        acc = gan["classifier"].get("test_accuracy")
        hp = gan["settings"]
        lines += [f"### GAN: classifier metrics of {gan['samples']} samples after {gan['steps']} generator steps",
                  "",
                  f"PyTorch-GAN's MLP GAN (tinygen's {hp['preset']} preset; Adam {hp['lr_g']:g} "
                  f"({hp['betas'][0]:g}, {hp['betas'][1]:g}), batch {hp['batch_size']}, {hp['loss']} loss, no EMA) "
                  f"on {gan['data']}. Per seed both frameworks start from the same weights and take the same "
                  f"batches in the same order, with tinygen's update order (D step, then G step on the same fakes); "
                  f"the noise is each framework's own, so seeds differ. Scored by the same cached classifier"
                  + (f" (test accuracy {100 * acc:.2f}%)" if acc else "") + ": Fréchet distance of its features "
                  f"against the {gan['reference_images']} test images (lower is better), inception score (≤ 10), "
                  f"classes with ≥ 1% of the samples, KL of the class histogram from uniform; samples drawn with "
                  f"BatchNorm's running statistics and with the statistics of batches of 64.", "",
                  "| framework | seed | BatchNorm statistics | Fréchet distance | IS | classes | class KL | "
                  "train s |", "|---|---|---|---|---|---|---|---|"]
        for fw in ("tinygen", "torch"):
            for row in gan[fw]:
                for mode, name in (("running_stats", "running"), ("batch_stats", "batch")):
                    m = row[mode]
                    lines.append(f"| {fw} | {row['seed']} | {name} | {m['frechet_distance']:.2f} | "
                                 f"{m['inception_score']:.2f} | {m['coverage']} | {m['class_kl']:.3f} | "
                                 f"{row['train_seconds']:.0f} |")
        means = []
        for mode, name in (("running_stats", "running"), ("batch_stats", "batch")):
            parts = []
            for fw in ("tinygen", "torch"):
                fds = [r[mode]["frechet_distance"] for r in gan[fw]]
                parts.append(f"{fw} {sum(fds) / len(fds):.2f}")
            means.append(f"{name} statistics: " + ", ".join(parts))
        lines += ["", f"Mean Fréchet distance over {len(gan['tinygen'])} seed(s), " + "; ".join(means) + ".", ""]
    return lines


def draw_chart(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib not installed"
    tp = results.get("throughput")
    if not tp:
        return "no throughput results"
    cases = list(tp)
    ncols = min(len(cases), 2)
    nrows = (len(cases) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.set_visible(False)
    for ax, case in zip(axes.flat, cases):
        for fw in results["options"]["frameworks"]:
            pts = [(int(b), r[fw]["samples_per_s"]) for b, r in tp[case].items()
                   if fw in r and "samples_per_s" in r[fw]]
            if not pts:
                continue
            pts.sort()
            xs = [p[0] for p in pts]
            med = [p[1]["median"] for p in pts]
            lo = [p[1]["median"] - p[1]["min"] for p in pts]
            hi = [p[1]["max"] - p[1]["median"] for p in pts]
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=fw,
                        linewidth=2.5 if fw.startswith("tinygen") else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(int(b) for b in tp[case]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log")
        ax.set_title(case)
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    threads, cpu = results["options"]["threads"], results["environment"]["cpu_model"]
    fig.suptitle(f"Training throughput, {threads} thread{'' if threads == 1 else 's'} — {cpu}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---- main ------------------------------------------------------------------------------------------------------------
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    args.load_start = _loadavg()
    st = Settings(args.quick)
    os.makedirs(args.out, exist_ok=True)
    log_dir = os.path.join(args.out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    cases = [m for m in args.models if m != "dispatch"]
    timed = [] if args.quality_only else cases  # the models whose throughput, memory, ... are measured
    t_start = time.perf_counter()
    results = {"options": {"models": args.models, "frameworks": args.frameworks, "batch_sizes": args.batch_sizes,
                           "threads": args.threads, "quick": args.quick, "quality": args.quality,
                           "openblas_env": args.openblas_env,
                           "quality_only": args.quality_only,
                           "settings": {k: v for k, v in vars(st).items()}}}
    pool = Pool(args.threads, log_dir, args.openblas_env)
    failures = []
    n_total = sum(len(batch_sizes_of(c, args.batch_sizes)) for c in timed) * len(args.frameworks)
    done = [0]

    def progress(case, batch, fw, res):
        done[0] += 1
        text = res.get("status", "?") if res.get("status") != "ok" or "samples_per_s" not in res else (
            f"{res['samples_per_s']['median']:>10,.0f} samples/s (min {res['samples_per_s']['min']:,.0f}, "
            f"max {res['samples_per_s']['max']:,.0f}; {len(res['chunks'])} chunks of "
            f"{res['setup']['steps_per_chunk']} steps; first step {res['setup']['first_step_s']:.2f} s)")
        if res.get("status", "").startswith("failed"):
            failures.append(f"{case} b={batch} {fw}: {res['status']}")
        log(f"[{done[0]:>3}/{n_total}] {case:<9} b={batch:<5} {fw:<14} {text.splitlines()[0]}")

    try:
        if not args.quality_only and ("numpy" in args.frameworks or cases):
            w = pool.get("numpy")
            reply = w.request("gemm", timeout=300, sizes=st.gemm_sizes)
            results["gemm"] = {"status": _status(reply), **reply.get("ok", {})}
            if "ok" in reply:
                log(f"sgemm     peak {reply['ok']['peak_gflops']:.0f} GFLOP/s ({args.threads} threads)")
            if "torch" in args.frameworks and timed:  # PyTorch's own BLAS, for comparison
                w = pool.get("torch")
                reply = w.request("gemm", timeout=300, sizes=st.gemm_sizes) if _status(w.hello) == "ok" else w.hello
                results["gemm_torch"] = {"status": _status(reply), **reply.get("ok", {})}
                if "ok" in reply:
                    log(f"sgemm     torch peak {reply['ok']['peak_gflops']:.0f} GFLOP/s ({args.threads} threads)")
            if args.openblas_env == "keep" and any(os.environ.get(v) for v in OPENBLAS_KERNEL_VARS):
                results["gemm_native"] = gemm_without_kernel_vars(args.threads, log_dir, st.gemm_sizes)
                if results["gemm_native"]["status"] == "ok":
                    log(f"sgemm     peak {results['gemm_native']['peak_gflops']:.0f} GFLOP/s with "
                        f"{'/'.join(OPENBLAS_KERNEL_VARS)} unset ({results['gemm_native']['architecture']} kernel)")
        if "dispatch" in args.models and not args.quality_only:
            results["dispatch"] = run_dispatch(pool, args.frameworks, st)
            failures += [f"dispatch {k}: {v['status']}" for k, v in results["dispatch"].items()
                         if v["status"].startswith("failed")]
        if timed and not args.no_check:
            results["check"] = run_checks(pool, timed, args.frameworks, min(args.batch_sizes), st)
            failures += [f"check {c} {fw}: differs from numpy" for c, r in results["check"].items()
                         for fw, x in r.items() if x.get("agrees") is False]
        if timed:
            results["throughput"] = {}
            for case in timed:
                results["throughput"][case] = {}
                for b in batch_sizes_of(case, args.batch_sizes):
                    results["throughput"][case][str(b)] = run_throughput(pool, case, b, args.frameworks, st,
                                                                         progress)
        if timed:
            want = args.profile
            prof_cases = []
            for case in timed:
                b = str(args.profile_batch)
                per = results["throughput"][case].get(b) or next(iter(results["throughput"][case].values()))
                fw = profiled_variant(args.frameworks, per)
                mine, ref = _median(per.get(fw)), _median(per.get(REFERENCE))
                if fw is not None and (want or (not args.quick and ref is not None and mine < ref)):
                    prof_cases.append((case, fw))
            if prof_cases:
                results["profile"] = {}
                for case, fw in prof_cases:
                    p = run_profile(pool, fw, case, args.profile_batch, st)
                    results["profile"][case] = p
                    if p["status"] == "ok":
                        with open(os.path.join(args.out, f"profile_{case}.txt"), "w") as f:
                            f.write(f"{fw} {case}, batch {p['batch']}, {p['steps']} steps, {p['wall_s']:.3f} s\n\n"
                                    f"## by own time\n{p['tottime']}\n\n## by cumulative time\n{p['cumulative']}\n")
                        if args.profile:
                            print(f"\n# cProfile: {fw} {case}, batch {p['batch']}\n{p['tottime']}\n")
                    log(f"profile   {case:<9} b={args.profile_batch:<5} {fw:<14} {p['status']}")
        if timed and not args.no_breakdown:
            cells = short_cells(results["throughput"])
            if cells:
                results["breakdown"] = run_breakdowns(pool, cells, st)
        if timed and not args.no_memory:
            results["memory"] = run_memory(pool, timed, args.memory_frameworks, st.memory_batch, st)
        results["quality"] = measure_quality(cases, args, log_dir)
        if results["quality"].get("status", "").startswith("failed"):
            failures.append("quality: " + results["quality"]["status"])
        failures += [f"quality {part}: {r['status']}" for part, r in results["quality"].get("parts", {}).items()
                     if r.get("status", "").startswith("failed")]
        results["environment"] = environment(args, pool)
    finally:
        pool.close()
    results["elapsed_s"] = time.perf_counter() - t_start
    # about timings; the quality numbers do not depend on the load
    results["busy_warning"] = busy_warning([args.load_start, results["environment"]["loadavg_1min_end"]]) \
        if timed else None
    if results["busy_warning"]:
        log("WARNING: " + results["busy_warning"])
    results["failures"] = failures

    md = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    chart = None
    if timed and not args.no_chart:
        why = draw_chart(results, os.path.join(args.out, "throughput.png"))
        if why:
            log(f"chart     not drawn: {why}")
        else:
            chart = "throughput.png"
    print(md)
    log(f"done in {results['elapsed_s']:.0f} s; results in {args.out}/results.md, results.json"
        + (f", {chart}" if chart else ""))
    if failures:
        log("FAILED measurements:\n  " + "\n  ".join(failures))
        return 1
    return 0
