"""The PyTorch reference for the GAN's numbers: PyTorch-GAN's MLP GAN trained in PyTorch for the same number of
generator steps on the same MNIST data as a tinygen run, and both scored by the same classifier in one script.

The reference follows PyTorch-GAN's ``implementations/gan/gan.py``: G 100-128-256-512-1024-784 with
BatchNorm1d(eps=0.8) after all hidden layers but the first, LeakyReLU 0.2, tanh; D 784-512-256-1 with LeakyReLU
0.2 and a sigmoid; BCELoss; Adam 2e-4 (0.5, 0.999); batch 64 of images scaled to [-1, 1]; each iteration one
generator step on a fresh batch of z, then one discriminator step on (real, those fakes detached) with the loss
halved. Its samples are scored in both BatchNorm modes (running statistics and, as PyTorch-GAN saves its
pictures, batch statistics over batches of 64) and the better Fréchet distance is the one compared.

    TINYGEN_DATA=/path/to/mnist tinygen train gan --out runs/gan      # or --arch mlp for the MLP recipe
    TINYGEN_DATA=/path/to/mnist python examples/gan_torch_reference.py --checkpoint runs/gan/checkpoint.npz \\
        --threads 2 --json gan_reference.json

``--steps N`` trains the reference without a tinygen checkpoint; ``--bench K`` also times K steps of the tinygen
MLP recipe, tinygen's pytorch-gan preset and the PyTorch reference side by side in this process.
Needs PyTorch (pip install torch==2.13.0) and the cached MNIST classifier (``tinygen train classifier``).
"""
import argparse
import json
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a tinygen GAN checkpoint: score it, and train the reference "
                                                      "for as many generator steps as it was trained")
    p.add_argument("--steps", type=int, default=None, help="generator steps of the reference (default: the "
                                                           "checkpoint's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the reference runs")
    p.add_argument("--n", type=int, default=10000, help="samples scored per model")
    p.add_argument("--threads", type=int, default=None, help="BLAS / PyTorch threads (default: all)")
    p.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA, else the bundled test split)")
    p.add_argument("--bench", type=int, default=0, metavar="K", help="also time K training steps of each model")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p.parse_args()


def pytorch_gan_models(torch):
    nn = torch.nn

    def block(i, o, normalize=True):
        layers = [nn.Linear(i, o)]
        if normalize:
            layers.append(nn.BatchNorm1d(o, 0.8))  # eps=0.8, as written in PyTorch-GAN
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        return layers

    G = nn.Sequential(*block(100, 128, normalize=False), *block(128, 256), *block(256, 512), *block(512, 1024),
                      nn.Linear(1024, 784), nn.Tanh())
    D = nn.Sequential(nn.Linear(784, 512), nn.LeakyReLU(0.2, inplace=True), nn.Linear(512, 256),
                      nn.LeakyReLU(0.2, inplace=True), nn.Linear(256, 1), nn.Sigmoid())
    return G, D


def load_tinygen_weights(torch, G, D, g_state, d_state):
    """Copy the state dicts (name -> array) of a tinygen pytorch-gan Generator and Discriminator into the PyTorch
    G and D: the layers sit at the same positions of their Sequentials (tinygen's under ``net.``)."""
    for module, state in ((G, g_state), (D, d_state)):
        mine = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        theirs = module.state_dict()
        if set(mine) != set(theirs):
            raise ValueError(f"the tinygen and PyTorch layers differ: {sorted(set(mine) ^ set(theirs))}")
        with torch.no_grad():
            for key, p in theirs.items():
                p.copy_(torch.as_tensor(mine[key]).reshape(p.shape))


def train_reference(torch, x, steps, seed, batch_size=64, init=None, order=None, tinygen_step=False):
    """PyTorch-GAN's loop for ``steps`` iterations over shuffled batches of x (N, 784) in [-1, 1]; returns
    (G, training seconds).

    init: (generator state, discriminator state) of a tinygen pytorch-gan model to start from, instead of PyTorch's
    own initialisation. order: ``epoch -> permutation of x`` (a tinygen DataLoader's ``order``) to take the full
    batches from, as tinygen's drop_last loader does, instead of PyTorch's randperm with a last partial batch.
    tinygen_step: update as tinygen's GANStep does: the D step first, on the real batch and fresh fakes, then the
    G step on the same fakes through the updated D; D gives logits and both losses are BCE-with-logits (the D loss
    not halved). Otherwise PyTorch-GAN's order: G step, then D step on the detached fakes, sigmoid + BCELoss.
    """
    torch.manual_seed(seed)
    G, D = pytorch_gan_models(torch)
    if init is not None:
        load_tinygen_weights(torch, G, D, *init)
    if tinygen_step:
        D = D[:-1]  # logits
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.BCEWithLogitsLoss() if tinygen_step else torch.nn.BCELoss()
    data = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(seed)
    step, epoch, t0 = 0, 0, time.perf_counter()
    while step < steps:
        if order is None:  # the last batch may be smaller, as with a plain DataLoader
            perm = torch.randperm(len(data), generator=gen)
            starts = range(0, len(data), batch_size)
        else:
            perm = torch.from_numpy(order(epoch))
            starts = range(0, len(data) - batch_size + 1, batch_size)
        epoch += 1
        for i in starts:
            real = data[perm[i:i + batch_size]]
            valid = torch.ones(len(real), 1)
            fake = torch.zeros(len(real), 1)
            z = torch.randn(len(real), 100)
            gen_imgs = G(z)
            if tinygen_step:
                d_loss = bce(D(real), valid) + bce(D(gen_imgs.detach()), fake)
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                D.requires_grad_(False)
                g_loss = bce(D(gen_imgs), valid)
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
                D.requires_grad_(True)
            else:
                g_loss = bce(D(gen_imgs), valid)
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
                d_loss = (bce(D(real), valid) + bce(D(gen_imgs.detach()), fake)) / 2
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
            step += 1
            if step >= steps:
                break
    return G, time.perf_counter() - t0


def sample_reference(torch, G, n, seed, train_mode):
    """n samples (n, 784) of the PyTorch G: with BatchNorm's running statistics, or (train_mode) with the
    statistics of each batch of 64, as PyTorch-GAN draws its pictures."""
    torch.manual_seed(seed + 1000)
    G.train(train_mode)
    out = []
    with torch.no_grad():
        for i in range(0, n, 64 if train_mode else 1000):
            m = min(64 if train_mode else 1000, n - i)
            out.append(G(torch.randn(m, 100)).numpy())
    G.eval()
    import numpy as np
    return np.concatenate(out)


def sample_tinygen(G, n, seed, train_mode):
    """The same for a tinygen generator (noise from tinygen's generator, seeded alike)."""
    import numpy as np

    import tinygen
    from tinygen.models import gan
    tinygen.manual_seed(seed + 1000)
    if not train_mode:
        return gan.sample(G, n)
    was = G.training
    G.train()
    out = []
    try:
        with tinygen.no_grad():
            for i in range(0, n, 64):
                out.append(G(tinygen.randn(min(64, n - i), G.latent_dim)).numpy())
    finally:
        G.train(was)
    return np.concatenate(out).astype(np.float32, copy=False)


def score_both_modes(sample_fn, n, classifier, root=None):
    """Classifier metrics (``evaluate_images``: coverage, class_kl, inception_score, frechet_distance against the
    test split) of ``sample_fn(n, train_mode)`` with BatchNorm's running statistics and with batch statistics,
    and the better of the two Fréchet distances."""
    from tinygen.metrics import evaluate_images
    out = {}
    for mode, train_mode in (("running_stats", False), ("batch_stats", True)):
        s = sample_fn(n, train_mode)
        out[mode] = evaluate_images(s.reshape(-1, 28, 28), classifier, value_range=(-1, 1), root=root)
    out["best_frechet_distance"] = min(out["running_stats"]["frechet_distance"],
                                       out["batch_stats"]["frechet_distance"])
    return out


def main():
    args = parse()
    if args.threads:  # before NumPy loads its BLAS
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    try:
        import torch
    except ImportError:
        sys.exit("this script needs PyTorch: pip install torch==2.13.0")
    if args.threads:
        torch.set_num_threads(args.threads)
    import numpy as np

    import tinygen
    from tinygen.metrics import evaluate_images
    from tinygen.models import gan
    from tinygen.models.classifier import load_classifier

    clf = load_classifier(train_if_missing=False)
    results = {"threads": args.threads, "n": args.n}
    cfg = gan.make_config(data=args.data)
    steps = args.steps
    if args.checkpoint:
        ckpt = tinygen.load(args.checkpoint)
        G, cfg = gan.generator_from_checkpoint(ckpt)
        cfg["data"] = args.data if args.data is not None else cfg.get("data")
        steps = steps or int(ckpt["extra"]["step"])
        tinygen.manual_seed(0)
        x = gan.sample(G, args.n)
        m = evaluate_images(x.reshape(-1, 28, 28), clf, value_range=(-1, 1), root=args.data)
        results["tinygen"] = {"checkpoint": args.checkpoint, "steps": int(ckpt["extra"]["step"]),
                              "ema": "ema" in ckpt["modules"], "metrics": m,
                              "train_seconds": sum(r.get("seconds", 0.0) for r in _epochs(args.checkpoint)),
                              "config": {k: cfg[k] for k in ("loss", "latent", "g_hidden", "d_hidden", "batch_size",
                                                             "lr_g", "lr_d", "betas", "ema", "seed")}}
        print(f"tinygen {args.checkpoint}: {json.dumps(m)}", flush=True)
    if not steps:
        sys.exit("give --steps or --checkpoint")
    x, labels, desc = gan.trainer.load_data(cfg)
    results["data"], results["steps"] = desc, steps
    print(f"reference: PyTorch-GAN MLP, {steps} steps on {desc}", flush=True)
    results["reference"] = []
    for seed in args.seeds:
        G_ref, seconds = train_reference(torch, x, steps, seed)
        row = {"seed": seed, "train_seconds": seconds, "steps_per_s": steps / seconds}
        row.update(score_both_modes(lambda n, mode: sample_reference(torch, G_ref, n, seed, mode), args.n, clf,
                                    args.data))
        results["reference"].append(row)
        print(f"reference seed {seed}: {json.dumps(row)}", flush=True)
    if args.bench:
        results["bench"] = bench(torch, x, labels, args.bench)
        print(f"throughput (steps/s): {json.dumps(results['bench'])}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _epochs(checkpoint):
    from pathlib import Path

    from tinygen.models.train_utils import read_metrics
    path = Path(checkpoint).with_name("metrics.jsonl")
    return read_metrics(path) if path.exists() else []


def bench(torch, x, labels, k):
    """Training steps per second of: tinygen's MLP recipe (``--arch mlp``), tinygen's pytorch-gan preset, the PyTorch
    reference (each timed over k steps after a few warm-up steps, in this process)."""
    import tinygen
    from tinygen.data import DataLoader
    from tinygen.models.gan import build_discriminator, build_generator, make_config
    from tinygen.models.gan.trainer import EMA, GANStep, make_optimizer
    out = {}
    for name, settings in (("tinygen_mlp_recipe", {"arch": "mlp"}),
                           ("tinygen_pytorch_gan", {"preset": "pytorch-gan"})):
        cfg = make_config(**settings)
        tinygen.manual_seed(0)
        G, D = build_generator(cfg), build_discriminator(cfg)
        ema = EMA(G, build_generator(cfg), cfg["ema"]) if cfg["ema"] else None
        step = GANStep(cfg, G, D, make_optimizer(cfg, G.parameters(), cfg["lr_g"]),
                       make_optimizer(cfg, D.parameters(), cfg["lr_d"]), ema)
        loader = DataLoader((x, labels) if cfg["conditional"] else x, batch_size=cfg["batch_size"], shuffle=True,
                            drop_last=True, seed=0)
        it = iter(loader)
        for i in range(k + 5):
            if i == 5:
                t0 = time.perf_counter()
            batch = next(it)
            step.critic(*(batch if cfg["conditional"] else (batch,)), keep_fake=True)
            step.generator()
        out[name] = k / (time.perf_counter() - t0)
    _, t_warm = train_reference(torch, x, 5, 0)
    _, seconds = train_reference(torch, x, k + 5, 0)
    out["torch_pytorch_gan"] = k / max(seconds - t_warm, 1e-9)
    return out


if __name__ == "__main__":
    sys.exit(main())
