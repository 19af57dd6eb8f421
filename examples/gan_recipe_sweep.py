"""Compare MNIST GAN recipes: train each for the same number of generator steps and score it every few thousand.

How the default recipe in docs/results-gan.md was chosen. Each recipe runs in its own process with one thread (run as
many side by side as you have cores); after every ``--every`` steps the run is saved, 10,000 samples of its generator
(the EMA copy when there is one) are scored by the cached MNIST classifier, and one JSON line is printed and appended
to ``--json``.

    TINYGEN_DATA=/path/to/mnist python examples/gan_recipe_sweep.py --recipes default unconditional-lr1e-3 \\
        --steps 9000 --every 3000 --jobs 2 --json sweep.jsonl
    python examples/gan_recipe_sweep.py --recipe-json '{"conditional": false, "lr_g": 1e-3, "lr_d": 1e-3}'

A run is continued in chunks with ``resume`` (which reproduces an uninterrupted run), except that a linear
learning-rate decay spans each chunk's total, so recipes with ``lr_decay`` are scored only at their end.
Needs the cached classifier (``tinygen train classifier``).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RECIPES = {
    "default": {},
    "unconditional": {"conditional": False, "lr_g": 2e-4, "lr_d": 2e-4},
    "unconditional-lr1e-3": {"conditional": False, "lr_g": 1e-3, "lr_d": 1e-3},
    "unconditional-lr1e-3-gbn": {"conditional": False, "lr_g": 1e-3, "lr_d": 1e-3, "g_batchnorm": True},
    "unconditional-hinge": {"conditional": False, "lr_g": 2e-4, "lr_d": 2e-4, "loss": "hinge"},
    "unconditional-lsgan": {"conditional": False, "lr_g": 2e-4, "lr_d": 2e-4, "loss": "lsgan"},
    "conditional-lr2e-4": {"lr_g": 2e-4, "lr_d": 2e-4},
    "conditional-lr1e-3": {"lr_g": 1e-3, "lr_d": 1e-3},
    "default-no-ema": {"ema": 0.0},
    "pytorch-gan": {"preset": "pytorch-gan"},
}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["default", "unconditional-lr1e-3"],
                   help=f"named recipes: {', '.join(RECIPES)}")
    p.add_argument("--recipe-json", default=None, help="one more recipe: GAN settings as a JSON object")
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--every", type=int, default=3000, help="score after every this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--jobs", type=int, default=1, help="recipes trained side by side, one thread each")
    p.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA, else the bundled test split)")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder)")
    p.add_argument("--json", default=None, help="append the JSON lines to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one recipe (JSON) in this process
    return p.parse_args()


def run_one(name, settings, args):
    import tinygen
    from tinygen.models import gan
    from tinygen.models.gan import trainer
    clf = trainer._classifier()
    if clf is None:
        sys.exit("no cached MNIST classifier: run `tinygen train classifier` first")
    settings = dict({"arch": "mlp"}, **settings, seed=args.seed, data=args.data)  # the recipes are the MLP GAN's
    out = os.path.join(args.out, name)
    done, train_s, resume = 0, 0.0, False
    every = args.steps if settings.get("lr_decay", "none") != "none" else args.every
    while done < args.steps:
        done = min(args.steps, done + every)
        t0 = time.perf_counter()
        G, _, _ = gan.train_gan(out=out, resume=resume, quiet=True, steps=done, pictures=False, eval_samples=500,
                                **settings)
        train_s += time.perf_counter() - t0
        resume = True
        cfg = trainer.make_config(**dict(settings, steps=done))
        tinygen.manual_seed(10_000 + args.seed)
        m = trainer.evaluate_samples(cfg, trainer.sample(G, args.samples), clf, frechet=True)
        rec = dict(recipe=name, settings=settings, steps=done, train_seconds=round(train_s, 1), **m)
        print(json.dumps(rec), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(rec) + "\n")


def main():
    args = parse()
    if args.one is not None:
        name, settings = json.loads(args.one)
        return run_one(name, settings, args)
    recipes = []
    for name in args.recipes:
        if name not in RECIPES:
            sys.exit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
        recipes.append((name, RECIPES[name]))
    if args.recipe_json:
        try:
            extra = json.loads(args.recipe_json)
        except json.JSONDecodeError as e:
            sys.exit(f"--recipe-json is not valid JSON: {e}")
        if not isinstance(extra, dict):
            sys.exit("--recipe-json must be a JSON object of GAN settings")
        recipes.append(("custom", extra))
    if args.jobs < 1 or args.steps < 1 or args.every < 1:
        sys.exit("--jobs, --steps and --every must be positive")
    args.out = args.out or tempfile.mkdtemp(prefix="gan-sweep-")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    base = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps), "--every", str(args.every),
            "--seed", str(args.seed), "--samples", str(args.samples), "--out", args.out]
    base += ["--data", args.data] if args.data else []
    base += ["--json", args.json] if args.json else []
    pending, running, failed = list(recipes), [], []
    print(f"{len(recipes)} recipe(s), {args.steps} steps each, {args.jobs} at a time; runs in {args.out}", flush=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            name, settings = pending.pop(0)
            running.append((name, subprocess.Popen(base + ["--one", json.dumps([name, settings])], env=env)))
        time.sleep(1.0)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode != 0:
                    failed.append(item[0])
    if failed:
        sys.exit(f"recipe(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
