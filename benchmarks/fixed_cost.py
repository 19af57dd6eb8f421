"""A training step's fixed cost: the benchmark models with every hidden layer and the input ``--width`` wide (8 by
default), so their arrays hold a few hundred values and a step's time is what running it costs at all (Python,
calls into compiled code, a jitted function's dispatch) rather than its arithmetic. tinygen's compiled and eager
(Numba) steps, and JAX's jitted step where JAX is installed, as ``python -m benchmarks`` names and builds them, are
timed in turn in one process, rounds of steps alternating, so a slow phase of the machine falls on each of them.

    python -m benchmarks.fixed_cost --case vae --batch 16 --threads 2

Output: per framework, microseconds a step (median of the rounds, and the fastest round). The layers keep their
structure (the VAE's 20-wide latent, the MLP's 10 classes, the GAN's 100-wide noise and its batch norms); only the
widths set by the input and the hidden layers shrink.
"""
import argparse
import contextlib
import importlib
import os
import statistics
import time

from . import specs
from .harness import xla_flags
from .specs import CASES, Skip

FRAMEWORKS = ("tinygen-compiled", "tinygen-numba", "jax")  # worker.FRAMEWORKS' names, built as the harness builds them


def narrow_layers(model, width):
    """{name of a specs list or dict: its narrowed contents} for ``model``: the input and every hidden width set to
    ``width``; the outputs that the data or the loss fix (10 classes, the VAE's latent, the GAN's noise, one logit)
    kept."""
    w = width
    if model == "mlp":
        return {"MLP_LAYERS": [("fc1", w, w), ("fc2", w, w), ("fc3", w, specs.MLP_LAYERS[-1][2])]}
    if model == "vae":
        z = specs.VAE_LATENT
        return {"VAE_LAYERS": [("fc1", w, w), ("fc21", w, z), ("fc22", w, z), ("fc3", z, w), ("fc4", w, w)]}
    if model == "gan":
        return {"GEN_LAYERS": [("g1", specs.LATENT, w)] + [(name, w, w) for name, _, _ in specs.GEN_LAYERS[1:]],
                "GEN_BN": {name: w for name in specs.GEN_BN},
                "DIS_LAYERS": [("d1", w, w), ("d2", w, w), ("d3", w, specs.DIS_LAYERS[-1][2])]}
    raise ValueError(f"fixed_cost: no narrow form of model {model!r}; choose a case of mlp, vae or gan")


@contextlib.contextmanager
def narrowed(model, width):
    """The specs' layer lists (and the GAN's batch-norm sizes) narrowed in place while inside, then restored: every
    framework's model builder reads these same objects."""
    saved = {}
    try:
        for name, value in narrow_layers(model, width).items():
            saved[name] = getattr(specs, name).copy()
            _refill(getattr(specs, name), value)
        yield
    finally:
        for name, value in saved.items():
            _refill(getattr(specs, name), value)


def _refill(target, value):
    """Replace the contents of a list or dict in place."""
    target.clear()
    (target.update if isinstance(target, dict) else target.extend)(value)


def build_steps(case, batch, width, frameworks=FRAMEWORKS):
    """{framework: its step function} for ``case`` at ``batch``, narrowed to ``width`` (JAX left out, with the
    reason, where it is not installed)."""
    from tinygen import config

    from .worker import FRAMEWORKS as BUILDS
    model = CASES[case]["model"]
    steps, skipped = {}, {}
    with narrowed(model, width):
        params = specs.init_params(model, 0)
        data = {k: (v[:, :width].copy() if k == "x" else v) for k, v in specs.make_data(model, batch).items()}
        for fw in frameworks:
            if fw not in FRAMEWORKS:
                raise ValueError(f"fixed_cost: unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}")
            if BUILDS[fw]["env"].get("TINYGEN_NUMBA") == "1" and not config.get("TINYGEN_NUMBA"):
                skipped[fw] = "needs Numba's kernels, which TINYGEN_NUMBA turns off in this process"
                continue
            try:
                module = importlib.import_module(f".{BUILDS[fw]['module']}", __package__)
                steps[fw] = getattr(module, BUILDS[fw]["build"])(case, batch, params, data).step
            except Skip as e:
                skipped[fw] = str(e)
    return steps, skipped


def time_steps(steps, rounds=15, steps_per_round=200, warmup=200):
    """{framework: (median us a step over the rounds, fastest round's us a step)}, the frameworks' rounds in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {fw: [] for fw in steps}
    for _ in range(rounds):
        for fw, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            times[fw].append((time.perf_counter() - t0) / steps_per_round * 1e6)
    return {fw: (statistics.median(t), min(t)) for fw, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fixed_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="vae", choices=[c for c in CASES if CASES[c]["model"] in ("mlp", "vae", "gan")])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=8, help="the input's and the hidden layers' width (default 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=200, help="steps per timed round")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    args = ap.parse_args(argv)
    if args.width < 1 or args.batch < 1 or args.rounds < 1 or args.steps < 1:
        ap.error("--width, --batch, --rounds and --steps must be positive")
    os.environ["XLA_FLAGS"] = xla_flags(args.threads, os.environ.get("XLA_FLAGS", ""))  # read when JAX starts
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import tinygen
    from tinygen import allocator
    allocator.apply_setting()  # as the tinygen command and the benchmarks' workers do
    tinygen.set_num_threads(args.threads)
    steps, skipped = build_steps(args.case, args.batch, args.width, args.frameworks.split(","))
    result = time_steps(steps, args.rounds, args.steps, warmup=args.steps)
    print(f"{args.case} with every hidden layer and the input {args.width} wide, batch {args.batch}, "
          f"{args.threads} thread(s), {args.rounds} rounds of {args.steps} steps in turn: us a step")
    for fw, (median, fastest) in result.items():
        print(f"  {fw:18s} median {median:9.1f}   fastest round {fastest:9.1f}")
    for fw, why in skipped.items():
        print(f"  {fw:18s} skipped: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
