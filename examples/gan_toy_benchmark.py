"""Mode collapse on the 2-D benchmarks: train a GAN with each loss on the ring (8 Gaussians) and the grid (25) for a
fixed budget of generator steps, with several seeds, and tabulate modes captured, % high-quality samples and the
reverse KL (2,500 samples each, scored as in the Unrolled GAN / VEEGAN / PacGAN papers).

    python examples/gan_toy_benchmark.py --data ring grid --seeds 0 1 2 --steps 3000 --json toy.json

Each run is ``tinygen train gan --data DATA --loss LOSS --steps STEPS --seed SEED`` (the ring/grid recipe:
see ``tinygen.models.gan.trainer.DATASET_DEFAULTS``); ``--set key=value`` changes a setting for all runs.
"""
import argparse
import json
import os
import statistics
import sys
import time


def parse():
    from tinygen.models.gan import LOSSES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["ring", "grid"], choices=["ring", "grid"])
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000, help="generator steps per run")
    p.add_argument("--samples", type=int, default=2500, help="samples scored per run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra settings (JSON values)")
    p.add_argument("--out", default=None, help="keep each run's folder (checkpoint, logs, scatter plots) under here")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    return p.parse_args()


def main():
    if "--threads" in sys.argv:  # before NumPy loads its BLAS
        n = sys.argv[sys.argv.index("--threads") + 1]
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = n
    args = parse()
    import tinygen
    from tinygen.data import grid, ring
    from tinygen.models.gan import sample, train_gan

    extra = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        extra[key] = json.loads(value)
    mixtures = {"ring": ring, "grid": grid}
    rows = []
    for data in args.data:
        for loss in args.losses:
            for seed in args.seeds:
                t0 = time.perf_counter()
                out = os.path.join(args.out, f"{data}-{loss}-{seed}") if args.out else None
                G, _, history = train_gan(out=out, quiet=True, dataset=data, loss=loss, steps=args.steps, seed=seed,
                                          **extra)
                tinygen.manual_seed(10_000 + seed)
                m = mixtures[data].metrics(sample(G, args.samples))
                row = {"data": data, "loss": loss, "seed": seed, "steps": args.steps, "modes": m["modes"],
                       "num_modes": mixtures[data].num_modes, "high_quality": m["high_quality"],
                       "reverse_kl": m["reverse_kl"], "seconds": time.perf_counter() - t0,
                       "modes_per_epoch": [(r["step"], r["sample_modes"]) for r in history]}
                rows.append(row)
                print(f"{data:4s} {loss:13s} seed {seed}: {m['modes']:2d}/{row['num_modes']} modes, "
                      f"{100 * m['high_quality']:5.1f}% high quality, reverse KL {m['reverse_kl']:.3f} "
                      f"({row['seconds']:.0f}s)", flush=True)
    print("\n| data | loss | modes (per seed) | high quality % (per seed) | reverse KL (mean) |")
    print("|---|---|---|---|---|")
    for data in args.data:
        for loss in args.losses:
            rs = [r for r in rows if r["data"] == data and r["loss"] == loss]
            modes = ", ".join(str(r["modes"]) for r in rs)
            hq = ", ".join(f"{100 * r['high_quality']:.1f}" for r in rs)
            rkl = statistics.mean(r["reverse_kl"] for r in rs)
            print(f"| {data} | {loss} | {modes} / {rs[0]['num_modes']} | {hq} | {rkl:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": extra, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
