"""The CPU cost of one GAN training step of DCGANs of several widths against the unconditional MLP GAN's, measured
side by side in one process: how many DCGAN steps the MLP GAN's wall-clock budget buys (docs/results-gan.md).

A step is the trainer's ``GANStep.update`` (a critic update, then the generator update on the same fakes, and the
EMA update), compiled as ``tinygen train gan`` runs it, on real MNIST batches; its cost is the process CPU time,
the median over ``--steps`` steps (the MLP: 3x as many, being quicker), in each of ``--rounds`` rounds.

    TINYGEN_DATA=/path/to/mnist python examples/gan_step_cost.py --dcgan 64:64 32:32 16:16 32:32:32 --threads 1

Each DCGAN is NGF:NDF[:BATCH[:D_FC]] (batch 64 and no fully connected layer in D unless given); the MLP GAN is
the unconditional recipe of the page's sweep (G 256-512, D 512-256, lr 1e-3, batch 64).
"""
import argparse
import json
import os
import statistics
import sys
import time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dcgan", nargs="+", default=["64:64", "32:32", "16:16"], metavar="NGF:NDF[:BATCH[:D_FC]]",
                   help="DCGAN widths (and batch, and the width of D's fully connected layer) to time (default "
                        "64:64 32:32 16:16)")
    p.add_argument("--steps", type=int, default=20, help="timed DCGAN steps per round (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each timing every network in turn (default 2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA, else the copy shipped)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    for name, value in (("--steps", args.steps), ("--rounds", args.rounds), ("--threads", args.threads)):
        if value < 1:
            p.error(f"{name} must be a positive integer, got {value}")
    try:
        args.variants = [_variant(text) for text in args.dcgan]
    except ValueError:
        p.error(f"--dcgan takes NGF:NDF, NGF:NDF:BATCH or NGF:NDF:BATCH:D_FC of positive integers (D_FC may be 0), "
                f"got {args.dcgan}")
    return args


def _variant(text):
    parts = [int(v) for v in text.split(":")]
    if len(parts) not in (2, 3, 4) or min(parts[:3]) < 1 or min(parts) < 0:
        raise ValueError(text)
    parts += [64, 0][len(parts) - 2:]
    return {"ngf": parts[0], "ndf": parts[1], "batch_size": parts[2], "d_fc": parts[3]}


def build_step(settings, data):
    """``(update, batches)``: the compiled trainer step of the run ``settings`` and 8 real batches of its size."""
    import numpy as np

    import tinygen
    from tinygen.models.gan import build_discriminator, build_generator, make_config
    from tinygen.models.gan.trainer import EMA, GANStep, load_data, make_optimizer
    tinygen.manual_seed(0)
    cfg = make_config(conditional=False, lr_g=1e-3, lr_d=1e-3, data=data, **settings)
    G, D = build_generator(cfg), build_discriminator(cfg)
    step = GANStep(cfg, G, D, make_optimizer(cfg, G.parameters(), cfg["lr_g"]),
                   make_optimizer(cfg, D.parameters(), cfg["lr_d"]), EMA(G, build_generator(cfg), cfg["ema"]), True)
    x, _, _ = load_data(cfg)
    rng = np.random.default_rng(0)
    batches = [tinygen.as_tensor(x[rng.choice(len(x), cfg["batch_size"], replace=False)]) for _ in range(8)]
    return step.update, batches


def main(argv=None):
    args = parse(argv)
    if "numpy" not in sys.modules:  # run as a script: set before NumPy loads its BLAS, as the tinygen command does
        # (called from a program, the counts are set below: a changed NUMBA_NUM_THREADS would stop Numba's next
        # compilation, which reads it again)
        from tinygen_launcher import THREAD_VARIABLES
        os.environ.update({var: str(args.threads) for var in THREAD_VARIABLES})
    import tinygen
    tinygen.set_num_threads(args.threads)
    runs = {"mlp": ({"arch": "mlp"}, 3 * args.steps)}
    for v in args.variants:
        name = f"dcgan {v['ngf']}:{v['ndf']}:{v['batch_size']}" + (f":{v['d_fc']}" if v["d_fc"] else "")
        runs[name] = (dict(arch="dcgan", **v), args.steps)
    steps = {name: build_step(settings, args.data) for name, (settings, _) in runs.items()}
    for update, batches in steps.values():  # warm up: kernels compiled, the step recorded
        for b in batches[:3]:
            update(b)
    medians = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (update, batches) in steps.items():
            times = []
            for i in range(runs[name][1]):
                t0 = time.process_time()
                update(batches[i % len(batches)])
                times.append(time.process_time() - t0)
            medians[name].append(statistics.median(times))
    mlp = statistics.mean(medians["mlp"])
    results = []
    for name, ms in medians.items():
        ratio = statistics.mean(ms) / mlp
        results.append({"networks": name, "cpu_ms_per_step": [1000 * t for t in ms], "ratio_to_mlp": ratio,
                        "steps_in_mlp_budget": 9000 / ratio})
        print(f"{name:18s} {' '.join(f'{1000 * t:6.1f} ms' for t in ms)}   x{ratio:5.2f}   "
              f"{9000 / ratio:6.0f} steps in the MLP's 9,000-step budget", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "steps": args.steps, "rounds": args.rounds, "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
