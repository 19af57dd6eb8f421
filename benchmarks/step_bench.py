"""Time whole training steps with the fused kernels on and off (in one process, alternating).

    python -m benchmarks.step_bench                  # MLP GAN step at batch 64, Numba on vs off
    python -m benchmarks.step_bench --model mlp      # an MNIST-sized classifier step (BN, CE, SGD)
    python -m benchmarks.step_bench --profile        # cProfile of the step (kernels on), top functions
    python -m benchmarks.step_bench --case mlp --batch 16 --threads 2   # where the benchmark's step spends its time
    python -m benchmarks.step_bench --case mlp --batch 16 --threads 2 --compare pairs   # paired products off/on
    python -m benchmarks.step_bench --case gan --batch 16 --threads 2 --compare prune   # unread gradients kept/left out
    python -m benchmarks.step_bench --case dcgan --batch 64 --threads 2 --compare reuse  # D(fakes) twice/once
    python -m benchmarks.step_bench --case mlp --batch 256 --threads 2 --compare into-gradient  # new/in place
    python -m benchmarks.step_bench --case dcgan --batch 256 --threads 2 --compare parts  # conv batch whole/in parts
    python -m benchmarks.step_bench --case mlp --batch 16 --threads 2 --compare updates  # update on 1 thread/split
    python -m benchmarks.step_bench --case gan --batch 16 --threads 2 --compare short  # BLAS / gemm_short.py
    python -m benchmarks.step_bench --case dcgan --batch 64 --threads 2 --products  # each product in the step/alone
    python -m benchmarks.step_bench --case vae --batch 256 --threads 2 --program  # each step of the compiled program

``--case`` takes a model of ``python -m benchmarks`` (mlp, mlp-adam, vae, gan, dcgan), built as the benchmark builds
it (benchmarks/models_tinygen.py, compiled with tinygen.compile unless ``--eager``), and splits its wall time per
step into matrix products (kernels/gemm.py), the optimizer update (each optimizer's ``_step_group``), the
convolution kernels' own work (im2col, col2im, weight permutations), the other kernels (the fused Numba ones and
the reference's array code, through tinygen.kernels) and the rest: Python (the autograd engine, the replay, module
and op bodies with their inline NumPy calls). Each part is timed around its outermost call, except the matrix
products, which are timed wherever they run and taken out of the part that called them (a timer costs ~0.3 us a
call), over alternating rounds with the timers on (medians over rounds);
the plain step time comes from rounds with them off. Only calls on the thread that runs the step are timed: the
work a kernel hands to tinygen's pool (a large convolution's parts, kernels/conv.py) counts in that kernel's wall
time, products included. ``--clock cpu`` times with the calling thread's CPU time
instead of wall time: other processes on the machine do not inflate it, but the work of BLAS's helper threads
is left out, so use it with ``--threads 1``.

``--products`` times every matrix product of the step where it runs (per shape and operand layout, per step),
then the same product alone on arrays of that shape and layout: with its operands and result in the cache (the
same call repeated) and with the caches flushed before each call (64 MiB read and written in between). A product
much slower in the step than alone, and as slow as alone with the caches flushed, waits on memory: its operands
come from (and its result goes to) main memory in the step.

``--program`` times each step of the compiled step's program (tinygen.compile: an op's forward, a recorded call, a
fused run, a backward plan, the releases) and, inside the backward plans, each node's backward, summed by kind (an
op's class, a call's function) per training step: where a compiled step's time goes, op by op.

The models are built from tinygen.nn only: a DCGAN-style MLP GAN (G: 100-256-512-1024-784 with BatchNorm and
LeakyReLU, tanh output; D: 784-512-256-1 with LeakyReLU; BCE with logits; Adam lr 2e-4, betas (0.5, 0.999)), and
a classifier (784-512-256-10 with BatchNorm, ReLU, cross-entropy, SGD with momentum).
"""
import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np


def gan_step_fn(batch=64, seed=0):
    import tinygen
    from tinygen import nn
    tinygen.manual_seed(seed)
    g = nn.Sequential(nn.Linear(100, 256), nn.LeakyReLU(0.2),
                      nn.Linear(256, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.2),
                      nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2),
                      nn.Linear(1024, 784), nn.Tanh())
    d = nn.Sequential(nn.Linear(784, 512), nn.LeakyReLU(0.2),
                      nn.Linear(512, 256), nn.LeakyReLU(0.2),
                      nn.Linear(256, 1))
    opt_g = tinygen.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = tinygen.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    real = tinygen.tensor(rng.uniform(-1, 1, (batch, 784)).astype(np.float32))
    ones, zeros = tinygen.ones(batch, 1), tinygen.zeros(batch, 1)

    def step():
        z = tinygen.randn(batch, 100)
        fake = g(z)
        opt_d.zero_grad()
        loss_d = loss_fn(d(real), ones) + loss_fn(d(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_g = loss_fn(d(fake), ones)
        loss_g.backward()
        opt_g.step()
        return float(loss_d.item()) + float(loss_g.item())
    return step


def mlp_step_fn(batch=64, seed=0):
    import tinygen
    from tinygen import nn
    tinygen.manual_seed(seed)
    net = nn.Sequential(nn.Linear(784, 512), nn.BatchNorm1d(512), nn.ReLU(),
                        nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(),
                        nn.Linear(256, 10))
    opt = tinygen.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    x = tinygen.tensor(rng.random((batch, 784)).astype(np.float32))
    y = tinygen.tensor(rng.integers(0, 10, batch))

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return float(loss.item())
    return step


MODELS = {"gan": gan_step_fn, "mlp": mlp_step_fn}


def compare(model="gan", batch=64, steps=30, rounds=5):
    """Seconds per step in each round, kernels off and on, measured in alternating rounds (fair on a busy
    machine)."""
    from tinygen import kernels
    step = MODELS[model](batch)
    times = {False: [], True: []}
    for flag in (False, True):  # warm up both paths (and compile / load the kernels)
        with kernels.enabled_as(flag):
            for _ in range(3):
                step()
    for _ in range(rounds):
        for flag in (False, True):
            with kernels.enabled_as(flag):
                t0 = time.process_time()
                for _ in range(steps):
                    step()
                times[flag].append((time.process_time() - t0) / steps)
    return times[False], times[True]


def _category(filename, line, name):
    """Where a function's own time goes, for the summary of --profile."""
    f = filename.replace("\\", "/")
    if (f.endswith("ops/linalg.py") and name == "forward") or (f.endswith("nn/functional.py") and line < 80
                                                             and name == "forward"):
        return "BLAS (matmul; linear = matmul + bias add)"
    if f.endswith("/tinygen/kernels/cpu.py"):
        return "fused kernels (Numba, with their NumPy exp calls)"
    if "/tinygen/optim/" in f or f.endswith("/tinygen/kernels/reference.py") and name.endswith("_step"):
        return "optimizer array code"
    if "/tinygen/" in f and name in ("forward", "backward") or \
            "numpy" in f or name.startswith("<method") or name.startswith("<built-in method numpy"):
        return "array code of the ops (elementwise, reductions)"
    return "Python: autograd, modules, dispatch"


def profile(model="gan", batch=64, steps=50, top=25):
    """cProfile of ``steps`` steps: the top functions by own time, then own time summed by category."""
    import cProfile
    import pstats
    step = MODELS[model](batch)
    for _ in range(3):
        step()
    pr = cProfile.Profile(time.process_time)  # CPU time: other programs on the machine do not count
    pr.enable()
    for _ in range(steps):
        step()
    pr.disable()
    stats = pstats.Stats(pr)
    stats.sort_stats("tottime").print_stats(top)
    totals = {}
    for (filename, line, name), (_, _, tottime, _, _) in stats.stats.items():
        key = _category(filename, line, name)
        totals[key] = totals.get(key, 0.0) + tottime
    whole = sum(totals.values())
    print(f"own CPU time per step by category ({steps} steps, {whole / steps * 1e3:.1f} ms per step under "
          f"cProfile):")
    for key, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {key:48s} {t / steps * 1e3:7.2f} ms  {100 * t / whole:5.1f}%")


class _Timers:
    """Wall time spent inside wrapped functions, by category: the outermost wrapped call counts, except that a
    function wrapped with ``nested=True`` (the matrix product) is timed inside the others too, and its time moves
    from theirs to its own category (a convolution kernel's GEMMs count as matrix products). Calls on other threads
    than the one that made the timers run untimed: they run inside a timed call of that thread, and the call stack
    kept here is that thread's."""

    def __init__(self, clock=time.perf_counter):
        self.total, self.on, self.clock = {}, False, clock
        self.open = []  # [category, time of nested products so far] of each timed call in progress
        self.thread = threading.get_ident()

    def wrap(self, fn, category, nested=False):
        self.total.setdefault(category, 0.0)
        clock, total, open_ = self.clock, self.total, self.open

        def timed(*args, **kwargs):
            if (not self.on or threading.get_ident() != self.thread
                    or (open_ and not (nested and open_[-1][0] != category))):
                return fn(*args, **kwargs)
            frame = [category, 0.0]
            open_.append(frame)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = clock() - t0
                open_.pop()
                total[category] += spent - frame[1]
                if open_:
                    open_[-1][1] += spent
        timed.__wrapped__ = fn
        return timed


CONVOLUTIONS = "convolutions without their products (im2col, ...)"


def _install_timers(timers):
    """Wrap gemm.mm (where every name bound to it is), the optimizers' updates and every kernel of
    tinygen.kernels' tables; call before the model is built, so a compiled step records the wrapped ones."""
    import tinygen.optim as optim
    from tinygen import kernels
    from tinygen.kernels import gemm, reference
    mm = gemm.mm
    timed_mm = timers.wrap(mm, "matrix products (gemm.mm)", nested=True)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("tinygen") and getattr(mod, "mm", None) is mm:
            mod.mm = timed_mm
    for cls in (optim.SGD, optim.Adam, optim.RMSprop):
        cls._step_group = timers.wrap(cls._step_group, "optimizer update")
    modules = [reference]
    if kernels.enabled():
        from tinygen.kernels import cpu
        modules.append(cpu)
    for mod in modules:
        for name in kernels.KERNELS:
            fn = getattr(mod, name, None)
            if fn is not None and name != "mm":
                # the convolution kernels of tinygen.kernels.KERNELS: conv2d_fwd, conv2d_bwd_input, ...
                category = CONVOLUTIONS if name.startswith("conv2d_") else "other kernels (elementwise, losses, norms)"
                setattr(mod, name, timers.wrap(fn, category))
    kernels._cpu_table = None  # rebuilt from the wrapped functions


REST = "Python and the rest"  # what no timer covers: the step's time less its timed parts


def _case_step(case, batch, compiled=True, fuse=True):
    """The training step of ``python -m benchmarks``'s model ``case`` at ``batch``, built as the benchmark builds
    it: through tinygen.compile (``fuse``: its fusion) unless ``compiled`` is False."""
    from . import models_tinygen
    from .specs import CASES, init_params, make_data
    model = CASES[case]["model"]
    params, data = init_params(model, 0), make_data(model, batch)
    if compiled:
        return models_tinygen.build_compiled(case, batch, params, data, fuse=fuse).step
    return models_tinygen.build(case, batch, params, data).step


def breakdown(case, batch, compiled=True, steps=50, rounds=7, clock=time.perf_counter, fuse=True, round_s=None):
    """Per-step time of a benchmark model's step without timers, with them, and its parts (medians over rounds;
    see the module docstring). ``round_s``: size each round to about that many seconds instead of ``steps``."""
    timers = _Timers(clock)
    _install_timers(timers)
    step = _case_step(case, batch, compiled, fuse)
    for _ in range(20 if round_s is None else 3):
        step()
    if round_s is not None:
        t0 = clock()
        for _ in range(3):
            step()
        steps = max(2, round(round_s * 3 / max(clock() - t0, 1e-9)))
    plain, timed, parts = [], [], {k: [] for k in timers.total}
    for _ in range(rounds):
        for on in (False, True):
            timers.on = on
            before = dict(timers.total)
            t0 = clock()
            for _ in range(steps):
                step()
            (timed if on else plain).append((clock() - t0) / steps)
            if on:
                for k in parts:
                    parts[k].append((timers.total[k] - before[k]) / steps)
    timers.on = False
    return statistics.median(plain), statistics.median(timed), {k: statistics.median(v) for k, v in parts.items()}


def program_steps(case, batch, steps=30, rounds=5, fuse=True, clock=time.perf_counter):
    """(ms per training step without timers, with them, [(kind, ms per training step)]) for the steps of the
    compiled program of ``case`` (see the module docstring), the most time first; the kinds of a backward plan's
    nodes start with two spaces (their time is part of the plan's). Rounds of ``steps`` alternate without and
    with the timers: the step times are medians over rounds, the kinds' times means over the timed rounds."""
    from tinygen.compile import fusion, steps as compile_steps
    step = _case_step(case, batch, fuse=fuse)
    for _ in range(10):
        step()
    (program,) = step._programs.values()  # the one signature of the benchmark's step
    totals = {}

    def kind(run, operands):
        if run is compile_steps.replay_forward:
            return f"forward {operands[0].__name__}"
        if run is compile_steps.replay_call:
            return f"call {getattr(operands[0], '__qualname__', operands[0])}"
        if run is compile_steps.replay_backward:
            return "backward plan"
        return "fused run" if isinstance(run, fusion.FusedRun) else run.__name__.removeprefix("replay_")

    def timed(fn, name):
        def run(*args):
            t0 = clock()
            fn(*args)
            totals[name] = totals.get(name, 0.0) + clock() - t0
        return run

    untimed, plan_step = program.steps, compile_steps.plan_step
    with_timers = tuple((timed(run, kind(run, operands)), operands) for run, operands in untimed)

    def timed_plan_step(node_step, *args):
        timed(plan_step, f"  {type(node_step[0]).__name__}")(node_step, *args)
    plain, timed_rounds = [], []
    try:
        for _ in range(rounds):
            for on in (False, True):
                program.steps, compile_steps.plan_step = (with_timers, timed_plan_step) if on else (untimed, plan_step)
                t0 = clock()
                for _ in range(steps):
                    step()
                (timed_rounds if on else plain).append((clock() - t0) / steps)
    finally:
        program.steps, compile_steps.plan_step = untimed, plan_step
    calls = steps * rounds
    parts = sorted(((k, v / calls) for k, v in totals.items() if not k.startswith("  ")), key=lambda kv: -kv[1])
    nodes = sorted(((k, v / calls) for k, v in totals.items() if k.startswith("  ")), key=lambda kv: -kv[1])
    rows = []
    for k, v in parts:
        rows.append((k, v * 1e3))
        if k == "backward plan":
            rows += [(n, t * 1e3) for n, t in nodes]
    return statistics.median(plain) * 1e3, statistics.median(timed_rounds) * 1e3, rows


def products(case, batch, compiled=True, steps=10, repeats=15):
    """[(a's shape and layout, b's, calls per step, ms per call in the step, alone with the caches warm, and
    flushed (medians), GFLOP per call)] for each matrix product of the step (see the module docstring), the most
    time a step first."""
    from tinygen.kernels import gemm
    step = _case_step(case, batch, compiled)
    for _ in range(5):
        step()
    seen, product = {}, gemm._product

    def layout(a):
        return "C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else "strided"

    def timed(a, b):  # keeps no reference to the arrays: the step's memory stays as it is
        t0 = time.perf_counter()
        out = product(a, b)
        elapsed = time.perf_counter() - t0
        seen.setdefault((a.shape, layout(a), b.shape, layout(b), a.dtype.str), []).append(elapsed)
        return out
    gemm._product = timed
    try:
        for _ in range(steps):
            step()
    finally:
        gemm._product = product
    rng = np.random.default_rng(0)
    flush = np.ones(1 << 24, np.float32)  # 64 MiB
    rows = []
    for (ashape, alay, bshape, blay, dt), times in seen.items():
        def make(shape, lay):
            x = rng.standard_normal(shape).astype(dt)
            return np.asfortranarray(x) if lay == "F" else x
        a, b = make(ashape, alay), make(bshape, blay)
        warm, cold = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            product(a, b)
            warm.append(time.perf_counter() - t0)
            flush += 1.0
            t0 = time.perf_counter()
            product(a, b)
            cold.append(time.perf_counter() - t0)
        flop = 2 * np.prod(ashape) * bshape[-1] / 1e9
        rows.append((f"{ashape} {alay}", f"{bshape} {blay}", len(times) / steps, statistics.median(times) * 1e3,
                     statistics.median(warm) * 1e3, statistics.median(cold) * 1e3, flop))
    return sorted(rows, key=lambda r: -r[2] * r[3])


PAIRS_ON = 32  # --compare pairs: the rows up to which products are paired when TINYGEN_MM_PAIR_MAX_ROWS is 0
# What --compare switches, each way: (label off, label on); see _variants.
SWITCHES = {"pairs": ("one after the other", "paired"),
            "prune": ("all gradients", "unread ones left out"),
            "reuse": ("every forward", "a forward on the same arrays once"),
            "into-gradient": ("new arrays", "into received"),
            "inplace": ("out of place", "in place"),
            "parts": ("whole batch", "in parts"),
            "updates": ("update on one thread", "update split"),
            "mkl-call": ("MKL through ctypes", "MKL from compiled code"),
            "short": ("products on BLAS", "short ones on gemm_short")}


def _variants(switch, make_step):
    """``use(on)``, which puts one side of ``switch`` in place and returns the step to time, and ``restore()``.
    pairs: a layer's two gradient products one after the other (gemm.PAIR_MAX_ROWS = 0) or at once (up to
    the setting's rows, PAIRS_ON when it is 0); inplace: the engine's in-place addition of a leaf's second gradient off or on; prune: two compiled
    steps, one recorded without tinygen.compile's leaving out of unread gradients; reuse: the same, without its
    reuse of a forward on the same arrays (``passes.reused_forwards``); into-gradient: the same, without its
    gradients written into those received (``passes.with_gradients_in_place``); parts: a convolution's batch
    whole (conv.CHUNK_BYTES = 0) or in parts (its setting); updates: the optimizer's update on one thread
    (threads.UPDATE_PARALLEL_MIN = 0) or split across Numba's threads (from the setting when it is a count, else
    from 2^16 elements); mkl-call: MKL's gemm called through ctypes or from compiled code (kernels/mkl_call.py);
    short: every product on BLAS, or the short ones on kernels/gemm_short.py's loops (gemm.mm's route)."""
    if switch == "short":
        from tinygen.kernels import gemm
        if not gemm.short_route():
            raise SystemExit("--compare short: gemm_short.py's loops are not in use here (Numba off, or "
                             "TINYGEN_MM_SHORT_MAX_ROWS 0; auto needs AVX-512 and MKL): set "
                             "TINYGEN_MM_SHORT_MAX_ROWS=64 to compare them")
        return _module_switch(gemm, "_short_mm", False, make_step)
    if switch == "mkl-call":
        from tinygen.kernels import blas
        if blas.caller() != "compiled":
            raise SystemExit(f"--compare mkl-call: MKL's gemm is not called from compiled code here "
                             f"({blas.caller() or 'no MKL'}): it needs the mkl package and Numba's kernels on")
        return _module_switch(blas, "_state", blas._state[:2] + (None,), make_step)  # None: the ctypes call
    if switch == "parts":
        from tinygen.kernels import conv
        return _module_switch(conv, "CHUNK_BYTES", 0, make_step)
    if switch == "pairs":
        from tinygen.kernels import gemm
        setting = gemm.PAIR_MAX_ROWS
        gemm.PAIR_MAX_ROWS = setting or PAIRS_ON  # paired
        use, restore = _module_switch(gemm, "PAIR_MAX_ROWS", 0, make_step)
        return use, lambda: (restore(), setattr(gemm, "PAIR_MAX_ROWS", setting))
    if switch == "updates":
        from tinygen.kernels import threads
        setting = threads.UPDATE_PARALLEL_MIN
        threads.UPDATE_PARALLEL_MIN = setting if setting not in (0, "auto") else 1 << 16  # split
        use, restore = _module_switch(threads, "UPDATE_PARALLEL_MIN", 0, make_step)
        return use, lambda: (restore(), setattr(threads, "UPDATE_PARALLEL_MIN", setting))
    if switch == "inplace":
        from tinygen.autograd import engine
        return _module_switch(engine, "_sole_owner", lambda leaf: False, make_step)
    if switch == "reuse":
        return _stage_switch("reused_forwards", lambda program_steps, *rest: program_steps, make_step)
    if switch == "into-gradient":
        return _stage_switch("with_gradients_in_place", lambda program_steps: program_steps, make_step)
    return _stage_switch("without_dead_gradients", lambda program_steps: (program_steps, frozenset()), make_step)


def _stage_switch(name, off, make_step):
    """Two compiled steps, one recorded with tinygen.compile's stage ``name`` and one with ``off`` in its place."""
    from tinygen.compile import passes as compiled
    stage = getattr(compiled, name)
    steps = {True: make_step()}
    steps[True]()  # recorded with the stage
    setattr(compiled, name, off)
    try:
        steps[False] = make_step()
        steps[False]()  # recorded without it
    finally:
        setattr(compiled, name, stage)
    return steps.__getitem__, lambda: None


def _module_switch(module, name, off, make_step):
    """``use(on)``: ``module.name`` as it is (on) or ``off``, then the one step to time; and ``restore()``."""
    setting, step = getattr(module, name), make_step()

    def use(on):
        setattr(module, name, setting if on else off)
        return step
    return use, lambda: setattr(module, name, setting)


def switch_ab(case, batch, switch, compiled=True, steps=30, rounds=10, clock=time.perf_counter):
    """Per-step times of a benchmark model's step with ``switch`` (SWITCHES) off and on, in alternating rounds
    of one process: (off, on) lists."""
    use, restore = _variants(switch, lambda: _case_step(case, batch, compiled))
    times = {False: [], True: []}
    try:
        for i in range(rounds + 1):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                step = use(on)
                step()
                t0 = clock()
                for _ in range(steps):
                    step()
                if i:  # the first round warms up both
                    times[on].append((clock() - t0) / steps)
    finally:
        restore()
    return times[False], times[True]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.step_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gan", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile the step (kernels as the environment says)")
    ap.add_argument("--case", choices=("mlp", "mlp-adam", "vae", "gan", "dcgan"),
                    help="split a benchmark model's step (python -m benchmarks) into its parts")
    ap.add_argument("--eager", action="store_true", help="with --case: the eager step, not tinygen.compile's")
    ap.add_argument("--compare", choices=sorted(SWITCHES),
                    help="with --case: the step with one change off and on, in alternating rounds: pairs (a small "
                         "batch's two gradient products one after the other or at once, TINYGEN_MM_PAIR_MAX_ROWS 0 "
                         "and its setting, 32 when it is 0), prune (tinygen.compile leaving out gradients the step drops unread; "
                         "compiled only), inplace (a leaf's second gradient added in place), parts (a "
                         "convolution's batch whole or in parts, TINYGEN_CONV_CHUNK_BYTES 0 and its setting), "
                         "updates (the optimizer's update on one thread or split: TINYGEN_UPDATE_PARALLEL_MIN 0 and "
                         "the setting, 2^16 when it is 0 or auto), mkl-call (MKL's gemm through ctypes or from "
                         "compiled code), short (every product on BLAS, or the short ones on gemm_short's loops)")
    ap.add_argument("--pairs", action="store_const", const="pairs", dest="compare", help="--compare pairs")
    ap.add_argument("--products", action="store_true",
                    help="with --case: each matrix product of the step, timed in the step and alone (caches warm, "
                         "and flushed)")
    ap.add_argument("--program", action="store_true",
                    help="with --case: each step of the compiled step's program, and each node of its backward "
                         "plans, timed")
    ap.add_argument("--fuse", choices=("on", "off", "approx"), default="on",
                    help="with --case: tinygen.compile's fusion of elementwise runs (fuse=True, False, 'approx')")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="with --case: wall time, or the calling thread's CPU time (for --threads 1 on a busy "
                         "machine)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS and Numba threads (default 1: stable timings; extra threads only help large BLAS "
                         "calls on an idle machine)")
    args = ap.parse_args(argv)
    import tinygen
    from tinygen import kernels
    tinygen.set_num_threads(args.threads)
    tinygen.allocator.apply_setting()  # as the tinygen command does
    if args.profile:
        profile(args.model, args.batch)
        return 0
    if args.products and not args.case:
        ap.error("--products needs --case")
    if args.case and args.products:
        rows = products(args.case, args.batch, not args.eager)
        print(f"{args.case} {'eager' if args.eager else 'compiled'} step, batch {args.batch}, {args.threads} "
              f"thread(s): each matrix product in the step and alone (ms a call, median; GFLOP/s)")
        print(f"  {'a':>22s} {'b':>22s} {'per step':>8s} {'in step':>17s} {'alone':>17s} {'caches flushed':>17s}")
        for a, b, calls, per, warm, cold, flop in rows:
            print(f"  {a:>22s} {b:>22s} {calls:8.1f} {per:8.3f} {flop / per * 1e3:6.0f} GF/s "
                  f"{warm:8.3f} {flop / warm * 1e3:6.0f} GF/s {cold:8.3f} {flop / cold * 1e3:6.0f} GF/s")
        print(f"  all products, a step: {sum(r[2] * r[3] for r in rows):.1f} ms in the step; alone "
              f"{sum(r[2] * r[4] for r in rows):.1f} ms with the caches warm, {sum(r[2] * r[5] for r in rows):.1f} "
              f"ms flushed (medians a call times calls)")
        return 0
    if args.program and (not args.case or args.eager):
        ap.error("--program needs --case, compiled (no --eager)")
    if args.program:
        clock = time.perf_counter if args.clock == "wall" else time.thread_time
        plain, timed, rows = program_steps(args.case, args.batch, args.steps, args.rounds,
                                           {"on": True, "off": False, "approx": "approx"}[args.fuse], clock)
        print(f"{args.case} compiled (fuse {args.fuse}) step, batch {args.batch}, {args.threads} thread(s), "
              f"{args.clock} time per step, {args.rounds} alternating rounds of {args.steps} steps: its program's "
              f"steps by kind (a backward plan's nodes indented)")
        print(f"  {'step without timers':50s}{plain:9.3f} ms")
        print(f"  {'step with timers':50s}{timed:9.3f} ms")
        for name, ms in rows:
            print(f"  {name:50s}{ms:9.3f} ms  {100 * ms / timed:5.1f}%")
        return 0
    if args.case and args.compare:
        if args.compare in ("prune", "reuse", "into-gradient") and args.eager:
            print(f"--compare {args.compare}: only a compiled step has that stage (drop --eager)")
            return 1
        from tinygen.kernels import conv
        if args.compare == "parts" and not conv.CHUNK_BYTES:
            print("TINYGEN_CONV_CHUNK_BYTES is 0: a convolution's batch is never split, nothing to compare")
            return 1
        clock = time.perf_counter if args.clock == "wall" else time.thread_time
        off, on = switch_ab(args.case, args.batch, args.compare, not args.eager, args.steps, args.rounds, clock)
        labels = SWITCHES[args.compare]
        print(f"{args.case} {'eager' if args.eager else 'compiled'} step, batch {args.batch}, {args.threads} "
              f"thread(s), {args.clock} time per step, medians of {args.rounds} alternating rounds of {args.steps} "
              f"steps: {args.compare} off / on")
        for label, t in zip(labels, (off, on)):
            print(f"  {label:24s}{statistics.median(t) * 1e3:9.3f} ms")
        print(f"  {'speedup':24s}{statistics.median(off) / statistics.median(on):9.3f}x")
        return 0
    if args.case:
        clock = time.perf_counter if args.clock == "wall" else time.thread_time
        plain, timed, parts = breakdown(args.case, args.batch, not args.eager, args.steps, args.rounds, clock,
                                        fuse={"on": True, "off": False, "approx": "approx"}[args.fuse])
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        kind = "eager" if args.eager else f"compiled (fuse {args.fuse})"
        print(f"{args.case} {kind} step, batch {args.batch}, {args.threads} "
              f"thread(s), {args.clock} time per step, medians of {args.rounds} alternating rounds of "
              f"{args.steps} steps (load average {load:.2f})")
        print(f"  {'step without timers':50s}{plain * 1e3:9.3f} ms")
        print(f"  {'step with timers':50s}{timed * 1e3:9.3f} ms")
        for name, t in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {name:50s}{t * 1e3:9.3f} ms  {100 * t / timed:5.1f}%")
        rest = timed - sum(parts.values())
        print(f"  {REST:50s}{rest * 1e3:9.3f} ms  {100 * rest / timed:5.1f}%")
        return 0
    if not kernels.enabled():
        print("the Numba kernels are off (numba missing or TINYGEN_NUMBA=0): nothing to compare")
        return 1
    off, on = compare(args.model, args.batch, args.steps, args.rounds)
    print(f"{args.model} step, batch {args.batch}, {args.threads} thread(s), process CPU time per step over "
          f"{args.rounds} alternating rounds of {args.steps} steps")
    print(f"{'':14s}{'median ms':>10s}{'min ms':>10s}")
    for label, t in (("kernels off", off), ("kernels on", on)):
        print(f"  {label:12s}{statistics.median(t) * 1e3:10.2f}{min(t) * 1e3:10.2f}")
    print(f"  {'speedup':12s}{statistics.median(off) / statistics.median(on):9.2f}x{min(off) / min(on):9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
