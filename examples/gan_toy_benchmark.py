"""Mode collapse on the 2-D benchmarks: train a GAN with each loss on the ring (8 Gaussians) and the grid (25) for a
fixed budget of generator steps, with several seeds, and tabulate modes captured, % high-quality samples and the
reverse KL (2,500 samples each, scored as in the Unrolled GAN / VEEGAN / PacGAN papers).

    python examples/gan_toy_benchmark.py --jobs 2 --md toy.md --json toy.json
    python examples/gan_toy_benchmark.py --jobs 2 --seeds 0 1 2 --md toy.md --json toy.json   # docs/results-gan.md

Each run is ``tinygen train gan --data DATA --loss LOSS --steps STEPS --seed SEED`` (the ring/grid recipe:
see ``DATASET_DEFAULTS`` in ``tinygen.models.gan.trainer`` and each loss's defaults in ``tinygen.models.gan.losses``);
``--set key=value`` changes a setting for all runs. The generator a run returns (its EMA copy where the recipe
keeps one) is scored on ``--samples`` fresh samples drawn with seed 10000 + SEED. ``--jobs`` runs that many trainings at once (one BLAS thread each).
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time


def parse(argv=None):
    from tinygen.models.gan import LOSSES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["ring", "grid"], choices=["ring", "grid"])
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000, help="generator steps per run")
    p.add_argument("--samples", type=int, default=2500, help="samples scored per run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra settings (JSON values)")
    p.add_argument("--out", default=None, help="keep each run's folder (checkpoint, logs, scatter plots) under here")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once, in separate processes")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads per process (default 1 with --jobs > 1)")
    p.add_argument("--json", default=None, help="write the settings, every run and the summary to this JSON file")
    p.add_argument("--md", default=None, help="write the Markdown table to this file")
    return p.parse_args(argv)


def _set_threads(n):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def run_one(job):
    """Train one GAN and score it: a row of the table (a plain dict, so it can come back from a worker process)."""
    import tinygen
    from tinygen.data import grid, ring
    from tinygen.models.gan import make_config, sample, train_gan

    data, loss, seed, steps, n_samples, extra, out = job
    mixture = {"ring": ring, "grid": grid}[data]
    t0 = time.perf_counter()
    G, _, history = train_gan(out=out, quiet=True, pictures=out is not None, dataset=data, loss=loss, steps=steps,
                              seed=seed, **extra)
    tinygen.manual_seed(10_000 + seed)
    m = mixture.metrics(sample(G, n_samples))
    cfg = make_config(dataset=data, loss=loss, steps=steps, seed=seed, **extra)
    return {"data": data, "loss": loss, "seed": seed, "steps": steps, "modes": m["modes"],
            "num_modes": mixture.num_modes, "high_quality": m["high_quality"], "reverse_kl": m["reverse_kl"],
            "counts": [int(c) for c in m["counts"]], "seconds": time.perf_counter() - t0,
            "per_epoch": [(r["step"], r["sample_modes"], round(r["sample_high_quality"], 4)) for r in history],
            "config": {k: cfg[k] for k in RECIPE_KEYS}}


RECIPE_KEYS = ("latent", "g_hidden", "d_hidden", "g_slope", "d_slope", "batch_size", "optimizer", "lr_g", "lr_d",
               "betas", "lr_decay", "n_critic", "clip", "gp", "ema", "toy_samples", "data_scale")


def summarize(rows, data_names, losses):
    """One summary per (data, loss): mean and per-seed modes and high-quality share, and whether modes were lost."""
    out = []
    for data in data_names:
        for loss in losses:
            rs = sorted((r for r in rows if r["data"] == data and r["loss"] == loss), key=lambda r: r["seed"])
            if not rs:
                continue
            k = rs[0]["num_modes"]
            kl = [r["reverse_kl"] for r in rs]
            out.append({"data": data, "loss": loss, "num_modes": k, "seeds": [r["seed"] for r in rs],
                        "modes": [r["modes"] for r in rs], "modes_mean": statistics.mean(r["modes"] for r in rs),
                        "high_quality": [r["high_quality"] for r in rs],
                        "high_quality_mean": statistics.mean(r["high_quality"] for r in rs),
                        "reverse_kl_mean": statistics.mean(kl),
                        "all_modes": sum(r["modes"] == k for r in rs)})
    return out


def _verdict(s):
    k, modes = s["num_modes"], s["modes"]
    if all(m == k for m in modes):
        return "no"
    if max(s["high_quality"]) < 0.05:
        return "nothing learnt (< 5% high quality)"
    if max(modes) <= k // 2:
        return "collapse (every seed)"
    if s["all_modes"] == 0:
        return "some, in every seed"
    return f"in {len(modes) - s['all_modes']}/{len(modes)} seeds"


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def markdown(summary):
    lines = ["| data | loss | modes, mean (per seed) | high quality %, mean (per seed) | reverse KL, mean | "
             "modes lost |", "|---|---|---|---|---|---|"]
    for s in summary:
        modes = ", ".join(str(m) for m in s["modes"])
        hq = ", ".join(f"{100 * h:.1f}" for h in s["high_quality"])
        lines.append(f"| {s['data']} | {s['loss']} | {s['modes_mean']:.1f} / {s['num_modes']} ({modes}) | "
                     f"{100 * s['high_quality_mean']:.1f} ({hq}) | {s['reverse_kl_mean']:.3f} | {_verdict(s)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--threads" in argv:  # before NumPy loads its BLAS
        _set_threads(argv[argv.index("--threads") + 1])
    elif any(a == "--jobs" or a.startswith("--jobs=") for a in argv):
        _set_threads(1)
    args = parse(argv)
    extra = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        extra[key] = json.loads(value)
    jobs = [(data, loss, seed, args.steps, args.samples, extra,
             os.path.join(args.out, f"{data}-{loss}-{seed}") if args.out else None)
            for data in args.data for loss in args.losses for seed in args.seeds]
    # the slowest runs (the critic-heavy Wasserstein losses) first, so parallel workers finish together
    order = sorted(jobs, key=lambda j: j[1] not in ("wgan-gp", "wgan"))

    def report(row):
        print(f"{row['data']:4s} {row['loss']:13s} seed {row['seed']}: {row['modes']:2d}/{row['num_modes']} modes, "
              f"{100 * row['high_quality']:5.1f}% high quality, reverse KL {row['reverse_kl']:.3f} "
              f"({row['seconds']:.0f}s)", flush=True)

    t0 = time.perf_counter()
    rows = []
    if args.jobs > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for row in pool.imap_unordered(run_one, order):
                report(row)
                rows.append(row)
    else:
        for job in order:
            row = run_one(job)
            report(row)
            rows.append(row)
    summary = summarize(rows, args.data, args.losses)
    table = markdown(summary)
    print("\n" + table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    if args.json:
        import tinygen
        meta = {"command": "python examples/gan_toy_benchmark.py " + " ".join(argv),
                "date": datetime.date.today().isoformat(), "wall_seconds": time.perf_counter() - t0,
                "tinygen": getattr(tinygen, "__version__", None), "python": platform.python_version(),
                "settings": extra}
        with open(args.json, "w") as f:  # no high-quality samples: reverse KL inf, written as null
            rows.sort(key=lambda r: (r["data"], r["loss"], r["seed"]))
            json.dump(_finite({**meta, "summary": summary, "rows": rows}), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
