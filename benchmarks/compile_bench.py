"""The trainers' own training steps with and without tinygen.compile: speed and peak memory.

    python -m benchmarks.compile_bench                       # gan, vae, classifier: 30 steps x 3 rounds
    python -m benchmarks.compile_bench --models gan --steps 20 --rounds 5
    python -m benchmarks.compile_bench --no-memory
    python -m benchmarks.compile_bench --forward-only       # the GAN's networks compiled apart, the step eager

Each model runs the step its trainer runs, built by the trainer's code: ``GANStep.update`` (the MNIST recipe:
conditional MLP GAN, batch 64, EMA) and the step ``train_utils.optimize_epoch`` makes inside ``vae.train_epoch``
(784-400-20, batch 128) and ``classifier.train_epoch`` (784-512-512-10 with dropout, batch 128), on MNIST batches.

Speed: steps per second of process CPU time, eager and compiled (recorded before the timing, so every timed
compiled call is a replay) in alternating rounds in one process, so a busy machine slows both alike.

Adam: the multi-tensor update (``kernels.cpu.adam_steps``: all parameters in MULTI_TENSOR-sized calls of one
Numba kernel) against one ``adam_step`` call per parameter, over the GAN's generator and discriminator.

Fusion: a compiled function of four elementwise ops, ``(a * b + c) * 0.5 - a``, the same ending in a sum,
and a chain with its backward (``FUSION_CHAINS``), replayed unfused (``fuse=False``) and fused (one generated loop
each) at a few sizes: microseconds of CPU time per call, best of
alternating rounds. ``--device cuda --fusion-only`` times the same on the GPU (one CuPy kernel against four; wall
time with the device synchronised around each round, the replays launching CUDA graphs as they do by default):
what ``benchmarks/gpu_check.sh`` runs in its ``compiled`` step.

Compiled networks (``--forward-only``, or after the rest with ``--forward``): the GAN of ``python -m benchmarks``
(``models_tinygen.Runner``: one generator and one discriminator update a step) three ways: eager; with the
generator and the discriminator each compiled (``tinygen.compile``) and the step eager, so each backward runs
after the calls, through the graphs the replays hand on; and the whole step compiled (with CUDA graphs on a
GPU). Milliseconds of wall time per
step (the device synchronised around each round), median of alternating rounds, at a few batch sizes; on
``--device cuda`` on the GPU.

Memory: in a fresh process per model and mode, with tracemalloc started before the model is built: the peak of
the memory NumPy holds (parameters, optimizer state, the arrays a compiled program keeps between calls and
everything a step allocates) during one step after three warm-up steps. Arrays Numba's kernels allocate inside
compiled code are not traced (the same kernels run in both modes).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = ("gan", "vae", "classifier")


def _batches(n, batch, labels=True):
    import numpy as np

    import tinygen
    from tinygen.data import mnist, to_unit
    images, targets = mnist("test")
    x = to_unit(np.asarray(images[:n * batch])).reshape(-1, 784)
    out = []
    for i in range(n):
        xb = tinygen.tensor(np.ascontiguousarray(x[i * batch:(i + 1) * batch]))
        yb = tinygen.tensor(np.asarray(targets[i * batch:(i + 1) * batch], dtype=np.int64))
        out.append((xb, yb) if labels else xb)
    return out


def _captured_step(run_epoch):
    """The step function ``train_utils.optimize_epoch`` builds when ``run_epoch()`` runs (a two-batch epoch)."""
    from tinygen.models import train_utils as tu
    made, original = [], tu.compiled_step

    def keep(step, compile=True):
        made.append(original(step, compile))
        return made[-1]
    tu.compiled_step = keep
    try:
        run_epoch()
    finally:
        tu.compiled_step = original
    return made[-1]


def build(model, compile, batches=4):
    """``(step, batches)``: one call of ``step(batch)`` is one training step of the model's trainer."""
    import tinygen
    tinygen.manual_seed(0)
    if model == "gan":
        from tinygen.models.gan import build_discriminator, build_generator, make_config
        from tinygen.models.gan.trainer import EMA, GANStep, make_optimizer
        cfg = make_config(arch="mlp")  # the MLP GAN's step, as measured before MNIST's default became the DCGAN
        G, D = build_generator(cfg), build_discriminator(cfg)
        ema = EMA(G, build_generator(cfg), cfg["ema"])
        gan_step = GANStep(cfg, G, D, make_optimizer(cfg, G.parameters(), cfg["lr_g"]),
                           make_optimizer(cfg, D.parameters(), cfg["lr_d"]), ema, compile)
        return (lambda b: gan_step.update(*b)), _batches(batches, cfg["batch_size"])
    data = _batches(batches, 128)
    if model == "vae":
        from tinygen.models import vae
        cfg = vae.make_config()
        net = vae.build_model(cfg)
        opt = tinygen.optim.Adam(net.parameters(), lr=cfg["lr"])
        step = _captured_step(lambda: vae.train_epoch(net, opt, data[:2], cfg, 0, True, compile))
        return (lambda b: step(b, None)), data  # None: the KL weight is 1
    from tinygen.models import classifier
    net = classifier.MNISTClassifier()
    opt = tinygen.optim.Adam(net.parameters(), lr=1e-3)
    step = _captured_step(lambda: classifier.train_epoch(net, opt, data[:2], quiet=True, compile=compile))
    return step, data


def speed(model, steps, rounds):
    """CPU seconds per step in each round: ``{False: [...], True: [...]}`` (eager, compiled)."""
    runs = {c: build(model, c) for c in (False, True)}
    for step, data in runs.values():  # warm up: kernels compiled or loaded, the programs recorded
        for b in data:
            step(b)
    times = {False: [], True: []}
    for _ in range(rounds):
        for c, (step, data) in runs.items():
            t0 = time.process_time()
            for i in range(steps):
                step(data[i % len(data)])
            times[c].append((time.process_time() - t0) / steps)
    return times


def peak_memory(model, compile):
    """Peak traced bytes during one step (after three), with tracemalloc on from before the model was built."""
    import tracemalloc
    tracemalloc.start()
    step, data = build(model, compile)
    for b in data[:3]:
        step(b)
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    step(data[3])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"held_before_step_mb": before / 2 ** 20, "peak_mb": peak / 2 ** 20}


def _memory_in_fresh_process(model, compile, threads):
    cmd = [sys.executable, "-m", "benchmarks.compile_bench", "--memory-of", model, "--threads", str(threads)]
    if compile:
        cmd.append("--compiled")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def adam_speed(repeats=200):
    """Microseconds per Adam update of the GAN's G and D parameters: one call per parameter, then multi-tensor."""
    import numpy as np

    from tinygen.kernels import cpu
    from tinygen.models.gan import build_discriminator, build_generator, make_config
    cfg = make_config(arch="mlp")
    params = [p.data for m in (build_generator(cfg), build_discriminator(cfg)) for p in m.parameters()]
    grads = [np.ones_like(p) for p in params]
    state = [[np.zeros_like(p) for p in params] for _ in range(2)]
    args = (1e-4, 0.5, 0.999, 1e-8, 0.0, False)

    def one_by_one(step):
        for p, g, m, v in zip(params, grads, *state):
            cpu.adam_step(p, g, m, v, None, *args, step)

    def multi_tensor(step):
        cpu.adam_steps(params, grads, state[0], state[1], None, *args, step)
    out = {}
    for name, update in (("one call per parameter", one_by_one), ("multi-tensor", multi_tensor)):
        update(1)
        t0 = time.process_time()
        for step in range(2, repeats + 2):
            update(step)
        out[name] = (time.process_time() - t0) / repeats * 1e6
    return len(params), out


FUSION_SHAPES = ((16, 20), (128, 20), (128, 784), (1024, 784))
FUSION_ELEMENTS = 2e6  # elements a timed round of one function goes through (at least 10 calls)


FUSION_CHAINS = {  # what fusion_speed times: a forward chain, and a chain on a parameter with its backward
    "forward": "(a * b + c) * 0.5 - a",
    "sum": "((a * b + c) * 0.5 - a).sum()",
    "backward": "(((w * a) * b + c) * 0.5 - c).sum().backward()",
}


def fusion_speed(rounds=7, device="cpu", chain="forward"):
    """{shape: (unfused us, fused us)} per call of a compiled elementwise function (FUSION_CHAINS); on "cuda" in
    wall time, synchronised. "backward": five forwards fused into one loop, and their backward's four nodes
    (the fifth delivers to the parameter's .grad) into another."""
    import numpy as np

    import tinygen

    clock = time.process_time if device == "cpu" else time.perf_counter
    out = {}
    for shape in FUSION_SHAPES:
        args = [tinygen.randn(*shape, device=device) for _ in range(3)]
        w = tinygen.randn(*shape, device=device, requires_grad=True)

        def fn(a, b, c):
            if chain == "forward":
                return (a * b + c) * 0.5 - a
            if chain == "sum":  # on NumPy, the sum joins the loop up to fusion.SUM_MAX_SIZE values
                return ((a * b + c) * 0.5 - a).sum()
            w.grad = None
            loss = (((w * a) * b + c) * 0.5 - c).sum()
            loss.backward()
            return loss
        fns = [tinygen.compile(fn, fuse=fuse) for fuse in (False, True)]
        for f in fns:
            for _ in range(3):
                f(*args)  # records; the fused loop compiles; on CuPy the graph is captured
        calls = max(10, int(FUSION_ELEMENTS / np.prod(shape)))
        best = [float("inf")] * 2
        for _ in range(rounds):
            for i, f in enumerate(fns):
                tinygen.synchronize(device)
                t0 = clock()
                for _ in range(calls):
                    f(*args)
                tinygen.synchronize(device)
                best[i] = min(best[i], (clock() - t0) / calls * 1e6)
        out[shape] = tuple(best)
    return out


FORWARD_BATCHES = (16, 64, 256)
FORWARD_KINDS = ("eager", "networks", "step")
FORWARD_ROUNDS, FORWARD_SECONDS = 7, 0.1  # alternating rounds, and about how long each kind runs in one


def _gan(kind, batch, device):
    """The gan case of ``python -m benchmarks`` (``models_tinygen.Runner``) at ``batch`` on ``device``, its step
    run as ``kind`` says (FORWARD_KINDS): a function of no arguments."""
    from . import models_tinygen
    from .specs import init_params, make_data
    build = {"eager": models_tinygen.build, "networks": models_tinygen.build_networks_compiled,
             "step": models_tinygen.build_compiled}[kind]
    return build("gan", batch, init_params("gan"), make_data("gan", batch), device=device).step


def forward_speed(device="cpu"):
    """{batch: {kind: ms per step}} of the GAN step (``_gan``) at each of FORWARD_BATCHES, median of
    FORWARD_ROUNDS alternating rounds of about FORWARD_SECONDS each."""
    import tinygen
    batches, rounds, seconds = FORWARD_BATCHES, FORWARD_ROUNDS, FORWARD_SECONDS
    out = {}
    for batch in batches:
        steps = {kind: _gan(kind, batch, device) for kind in FORWARD_KINDS}
        for step in steps.values():  # recorded, and every spare program too; kernels compiled
            for _ in range(5):
                step()
        tinygen.synchronize(device)
        t0 = time.perf_counter()
        steps["eager"]()
        tinygen.synchronize(device)
        n = max(3, int(seconds / max(time.perf_counter() - t0, 1e-6)))
        times = {kind: [] for kind in FORWARD_KINDS}
        for _ in range(rounds):
            for kind, step in steps.items():
                tinygen.synchronize(device)
                t0 = time.perf_counter()
                for _ in range(n):
                    step()
                tinygen.synchronize(device)
                times[kind].append((time.perf_counter() - t0) / n * 1e3)
        out[batch] = {kind: statistics.median(t) for kind, t in times.items()}
    return out


def _print_forward(device):
    import tinygen
    if device == "cuda" and not tinygen.backend.is_available("cuda"):
        print("compiled-networks timing skipped: no GPU (and TINYGEN_CUDA_STANDIN is not set)")
        return 0
    print(f"GAN step on {device} with the networks compiled apart (the step eager) and with the whole step "
          f"compiled: wall-clock ms per step, median of alternating rounds (x: eager's time / this one's)")
    print(f"{'batch':>7s}{'eager':>10s}{'networks':>18s}{'step':>18s}")
    for batch, t in forward_speed(device=device).items():
        e = t["eager"]
        print(f"{batch:7d}{e:10.2f}" + "".join(f"{t[k]:10.2f} ({e / t[k]:.2f}x)" for k in FORWARD_KINDS[1:]),
              flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compile_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--steps", type=int, default=30, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (eager, compiled)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads (default 1)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--no-adam", action="store_true", help="skip the Adam update timing")
    ap.add_argument("--no-fusion", action="store_true", help="skip the elementwise fusion timing")
    ap.add_argument("--fusion-only", action="store_true", help="only the elementwise fusion timing")
    ap.add_argument("--forward", action="store_true", help="also time the GAN with its networks compiled apart")
    ap.add_argument("--forward-only", action="store_true", help="only the GAN with its networks compiled apart")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the fusion and compiled-networks timings run (the trainers' models run on the CPU)")
    ap.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)  # one memory run (a child process)
    ap.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import tinygen
    tinygen.set_num_threads(args.threads)
    tinygen.allocator.apply_setting()  # as the tinygen command does
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.compiled)))
        return 0
    if args.fusion_only:
        return _print_fusion(args.device)
    if args.forward_only:
        return _print_forward(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; expected some of {', '.join(MODELS)}")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{args.threads} thread(s), load average {' '.join(load)} at the start; CPU time per step over "
          f"{args.rounds} alternating rounds of {args.steps} steps")
    print(f"{'model':12s}{'eager steps/s':>15s}{'compiled steps/s':>18s}{'speedup':>9s}"
          + ("" if args.no_memory else f"{'eager peak MB':>15s}{'compiled peak MB':>18s}"))
    for model in models:
        t = speed(model, args.steps, args.rounds)
        eager, comp = statistics.median(t[False]), statistics.median(t[True])
        line = f"{model:12s}{1 / eager:15.1f}{1 / comp:18.1f}{eager / comp:8.2f}x"
        if not args.no_memory:
            mem = [_memory_in_fresh_process(model, c, args.threads) for c in (False, True)]
            line += f"{mem[0]['peak_mb']:15.1f}{mem[1]['peak_mb']:18.1f}"
        print(line, flush=True)
    if not args.no_adam and tinygen.kernels.enabled():
        n, t = adam_speed()
        print(f"Adam update of the GAN's {n} parameters (CPU microseconds): "
              + ", ".join(f"{k} {v:.0f}" for k, v in t.items()))
    if not args.no_fusion:
        _print_fusion(args.device)
    if args.forward:
        _print_forward(args.device)
    return 0


def _print_fusion(device):
    import tinygen
    if device == "cpu" and not tinygen.kernels.enabled():
        print("fusion timing skipped: on the CPU runs are fused into Numba loops, and Numba is off")
        return 0
    if device == "cuda" and not tinygen.backend.is_available("cuda"):
        print("fusion timing skipped: no GPU (and TINYGEN_CUDA_STANDIN is not set)")
        return 0
    clock = "CPU" if device == "cpu" else "wall-clock"
    for chain, text in FUSION_CHAINS.items():
        print(f"{text} compiled on {device}, {clock} microseconds per call (unfused / fused):")
        for shape, (unfused, fused) in fusion_speed(device=device, chain=chain).items():
            print(f"  {str(shape):12s}{unfused:10.1f}{fused:10.1f}{unfused / fused:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
