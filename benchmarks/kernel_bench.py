"""Time each Numba kernel against its plain array reference at the sizes of our models.

    python -m benchmarks.kernel_bench                 # the table (median times, speedup)
    python -m benchmarks.kernel_bench --compile       # first-call time: cold (empty cache) and warm (from cache)
    python -m benchmarks.kernel_bench --threshold     # serial vs thread-parallel, to place threads.PARALLEL_MIN
    python -m benchmarks.kernel_bench --quick         # fewer repeats (a smoke run)
    python -m benchmarks.kernel_bench --wall          # wall-clock instead of process CPU time

``cases()`` and ``time_case()`` can be imported by other benchmarks.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from tinygen.kernels import reference

ACT_SHAPES = ((16, 512), (64, 1024), (1024, 1024))
PARAM_SHAPES = ((784, 512), (1024, 784))


def _rng():
    return np.random.default_rng(0)


def cases(dtype=np.float32, quick=False):
    """(kernel name, size label, function taking a kernel module and returning a no-argument callable)."""
    dt = np.dtype(dtype)
    rng = _rng()
    out = []

    def arr(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dt)

    act_shapes = ACT_SHAPES[:2] if quick else ACT_SHAPES
    acts = (("relu", (), "x"), ("leaky_relu", (0.2,), "x"), ("tanh", (), "y"), ("sigmoid", (), "y"),
            ("elu", (1.0,), "y"), ("softplus", (1.0, 20.0), "x"))
    for shape in act_shapes:
        label = "x".join(map(str, shape))
        x, g = arr(*shape, scale=2.0), arr(*shape)
        for name, params, saved in acts:
            s = x if saved == "x" else reference.act_fwd(x, name, *params)
            out.append((f"{name}_fwd", label, lambda k, n=name, p=params, x=x: (lambda: getattr(k, n + "_fwd")(x, *p))))
            out.append((f"{name}_bwd", label,
                        lambda k, n=name, p=params, s=s, g=g: (lambda: getattr(k, n + "_bwd")(s, g, *p))))
        b = arr(shape[1])
        for name, params in (("leaky_relu", (0.2,)), ("relu", ()), ("tanh", ())):
            y0 = x.copy()
            out.append((f"bias_act_fwd[{name}]", label,
                        lambda k, n=name, p=params, y0=y0, b=b: (lambda: k.bias_act_fwd(y0.copy(), b, n, *p))))
            y = reference.bias_act_fwd(x.copy(), b, name, *params)
            out.append((f"bias_act_bwd[{name}]", label,
                        lambda k, n=name, p=params, y=y, g=g: (lambda: k.bias_act_bwd(y, g, n, *p))))
        w = np.abs(arr(shape[1])) + 0.5
        out.append(("batchnorm_fwd", label, lambda k, x=x, w=w, b=b: (lambda: k.batchnorm_fwd(x, w, b, 1e-5))))
        _, xh, _, _, inv = reference.batchnorm_fwd(x, w, b)
        out.append(("batchnorm_bwd", label,
                    lambda k, g=g, xh=xh, w=w, inv=inv: (lambda: k.batchnorm_bwd(g, xh, w, inv))))
    param_shapes = PARAM_SHAPES[:1] if quick else PARAM_SHAPES
    for shape in param_shapes:
        label = "x".join(map(str, shape))
        p, g = arr(*shape), arr(*shape)
        out.append(("sgd_step[momentum]", label, lambda k, p=p, g=g: _sgd(k, p, g)))
        out.append(("adam_step", label, lambda k, p=p, g=g: _adam(k, p, g, False)))
        out.append(("adam_step[adamw]", label, lambda k, p=p, g=g: _adam(k, p, g, True)))
        out.append(("rmsprop_step", label, lambda k, p=p, g=g: _rmsprop(k, p, g)))
    for shape in ((64, 1), (64, 784)):
        label = "x".join(map(str, shape))
        x, t = arr(*shape, scale=3.0), (rng.random(shape) > 0.5).astype(dt)
        out.append(("bce_with_logits[mean]", label,
                    lambda k, x=x, t=t: (lambda: k.bce_with_logits(x, t, None, None, "mean", True))))
    for shape in ((64, 10), (1024, 1000)):
        label = "x".join(map(str, shape))
        x, g = arr(*shape, scale=3.0), arr(*shape)
        tg = rng.integers(0, shape[1], shape[0])
        y = reference.log_softmax_fwd(x)
        out.append(("log_softmax_fwd", label, lambda k, x=x: (lambda: k.log_softmax_fwd(x))))
        out.append(("log_softmax_bwd", label, lambda k, y=y, g=g: (lambda: k.log_softmax_bwd(y, g))))
        out.append(("cross_entropy[mean]", label,
                    lambda k, x=x, tg=tg: (lambda: k.cross_entropy(x, tg, None, -100, "mean", True))))
    return out


def _sgd(k, p, g):
    p, buf = p.copy(), g.copy()
    return lambda: k.sgd_step(p, g, buf, 1e-3, momentum=0.9)


def _adam(k, p, g, decoupled):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    return lambda: k.adam_step(p, g, m, v, None, 1e-3, 0.9, 0.999, 1e-8, 0.01, decoupled, 10)


def _rmsprop(k, p, g):
    p, v = p.copy(), np.zeros_like(p)
    return lambda: k.rmsprop_step(p, g, v, None, None, 1e-3)


# The clock: CPU time of this process by default, which other programs on a shared machine do not inflate (it
# adds up all threads, so the serial/parallel comparison uses wall time instead).
CLOCK = time.process_time


def median_time(fn, min_sample=2e-3, samples=7, clock=None):
    """Median seconds per call, each sample long enough (min_sample) for the clock to resolve."""
    clock = clock or CLOCK
    fn()
    number = 1
    while True:
        t0 = clock()
        for _ in range(number):
            fn()
        if clock() - t0 >= min_sample or number >= 1 << 16:
            break
        number *= 2
    times = []
    for _ in range(samples):
        t0 = clock()
        for _ in range(number):
            fn()
        times.append((clock() - t0) / number)
    return statistics.median(times)


def time_case(make, kernel_module, **kw):
    return median_time(make(kernel_module), **kw)


def table(dtype=np.float32, quick=False):
    from tinygen.kernels import cpu
    rows = []
    for name, label, make in cases(dtype, quick):
        kw = {"samples": 3, "min_sample": 5e-4} if quick else {}
        t_ref = time_case(make, reference, **kw)
        t_k = time_case(make, cpu, **kw)
        rows.append((name, label, np.dtype(dtype).name, t_ref, t_k, t_ref / t_k))
    return rows


def print_table(rows):
    print(f"{'kernel':26s} {'size':>10s} {'dtype':>8s} {'reference us':>13s} {'numba us':>10s} {'speedup':>8s}")
    for name, label, dt, t_ref, t_k, sp in rows:
        flag = "" if sp >= 1.2 else "   (not a clear win)"
        print(f"{name:26s} {label:>10s} {dt:>8s} {t_ref * 1e6:13.1f} {t_k * 1e6:10.1f} {sp:7.2f}x{flag}")


# ---- first-call (compile) time --------------------------------------------------------------------------------------
def _first_calls():
    """In this process: the first call of every kernel (compile or cache load), as JSON on stdout."""
    t0 = time.perf_counter()
    from tinygen.kernels import cpu
    result = {"import numba + cpu.py": time.perf_counter() - t0}
    for dt in (np.float32, np.float64):
        for name, label, make in cases(dt, quick=True):
            key = f"{name.split('[')[0]}/{np.dtype(dt).name}"
            if key in result:
                continue
            fn = make(cpu)
            t0 = time.perf_counter()
            fn()
            result[key] = time.perf_counter() - t0
    print(json.dumps(result))


def compile_times():
    """First-call seconds per kernel and dtype: cold (empty cache dir) and warm (cache filled by the cold run)."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-m", "benchmarks.kernel_bench", "--first-calls"], env=env,
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs[0], runs[1]


def print_compile_times(cold, warm):
    print(f"{'first call of':34s} {'cold s':>8s} {'warm s':>8s}")
    for key in cold:
        print(f"{key:34s} {cold[key]:8.3f} {warm[key]:8.3f}")
    print(f"{'total':34s} {sum(cold.values()):8.3f} {sum(warm.values()):8.3f}")


# ---- where threads start to pay -----------------------------------------------------------------------------------
def threshold_table(dtype=np.float32):
    """Serial vs parallel twin of three kernel kinds (memory-bound, transcendental, optimizer) by size."""
    from tinygen.kernels import cpu, threads
    dt = np.dtype(dtype)
    rng = _rng()
    old = threads.PARALLEL_MIN
    rows = []
    try:
        for n in (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22):
            x = rng.standard_normal(n).astype(dt)
            g = rng.standard_normal(n).astype(dt)
            m, v = np.zeros_like(x), np.zeros_like(x)
            kinds = {"leaky_relu_fwd": lambda: cpu.leaky_relu_fwd(x, 0.2),
                     "sigmoid_fwd": lambda: cpu.sigmoid_fwd(x),
                     "adam_step": lambda: cpu.adam_step(x, g, m, v, None, 1e-6, 0.9, 0.999, 1e-8, 0.0, False, 5)}
            for name, fn in kinds.items():
                threads.PARALLEL_MIN = 1 << 62
                t_ser = median_time(fn, samples=5, clock=time.perf_counter)
                threads.PARALLEL_MIN = 0
                t_par = median_time(fn, samples=5, clock=time.perf_counter)
                rows.append((name, n, t_ser, t_par))
    finally:
        threads.PARALLEL_MIN = old
    print(f"threads: {cpu._threads()}")
    print(f"{'kernel':16s} {'elements':>10s} {'serial us':>10s} {'parallel us':>12s} {'parallel speedup':>17s}")
    for name, n, ts, tp in rows:
        print(f"{name:16s} {n:10d} {ts * 1e6:10.1f} {tp * 1e6:12.1f} {ts / tp:16.2f}x")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernel_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="first-call times, cold and from the disk cache")
    ap.add_argument("--threshold", action="store_true", help="serial vs parallel by size")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--wall", action="store_true", help="time with the wall clock (default: process CPU time)")
    ap.add_argument("--first-calls", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    if args.first_calls:  # before anything imports numba, so that its import time is measured too
        _first_calls()
        return 0
    from tinygen.kernels import enabled
    if not enabled():
        print("the Numba kernels are off (numba missing or TINYGEN_NUMBA=0): nothing to compare")
        return 1
    if args.compile:
        print_compile_times(*compile_times())
        return 0
    if args.threshold:
        threshold_table(np.dtype(args.dtype))
        return 0
    from tinygen.kernels.threads import get_num_threads
    print(f"numpy {np.__version__}, threads {get_num_threads()}, dtype {args.dtype}, "
          f"clock {'wall' if args.wall else 'process CPU'}")
    print_table(table(np.dtype(args.dtype), quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
