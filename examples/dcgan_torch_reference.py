"""The unconditional DCGAN of ``tinygen train gan --arch dcgan --no-conditional`` trained in PyTorch, scored by
tinygen's evaluator: a check that tinygen's DCGAN scores come from the recipe, not from the library.

The networks are models/dcgan.py's (G ConvTranspose2d 7x7 to 2*ngf, to ngf x 14 x 14, to 1 x 28 x 28 with
BatchNorm2d + ReLU and tanh; D Conv2d to ndf x 14 x 14, to 2*ndf x 7 x 7 with BatchNorm2d, LeakyReLU 0.2, a 7x7
Conv2d to one logit, or with ``--d-fc H`` a Linear layer of H units and LeakyReLU before a Linear to the logit) with
the DCGAN initialisation of the convolutions (the Linear layers keep PyTorch's, as tinygen's do); the step is
tinygen's trainer's: a critic update on a real batch and fresh fakes, then a generator update on the same fakes,
the non-saturating loss, Adam (betas 0.5, 0.999 unless ``--betas``; tinygen's DCGAN recipe uses 0, 0.99), batch
64, no EMA. The raw generator's samples (eval
mode: running BatchNorm statistics) are scored like ``tinygen eval``.

    TINYGEN_DATA=/path/to/mnist python examples/dcgan_torch_reference.py --steps 400 800 --lr 2e-4 --threads 1
    TINYGEN_DATA=/path/to/mnist python examples/dcgan_torch_reference.py --steps 1000 1870 --ngf 32 --ndf 32 \\
        --lr 1e-3 --threads 1
    TINYGEN_DATA=/path/to/mnist python examples/dcgan_torch_reference.py --steps 1000 2000 --ngf 32 --ndf 32 \\
        --lr 1e-3 --betas 0 0.99 --threads 1

Needs PyTorch (pip install torch==2.13.0) and the MNIST classifier (shipped with tinygen).
"""
import argparse
import json
import os
import sys
import time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", required=True, help="generator steps at which to score")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of both networks (default 2e-4)")
    p.add_argument("--betas", type=float, nargs=2, default=(0.5, 0.999), metavar=("B1", "B2"),
                   help="Adam betas of both networks (default 0.5 0.999)")
    p.add_argument("--ngf", type=int, default=64, help="the generator's width (default 64)")
    p.add_argument("--ndf", type=int, default=64, help="the discriminator's width (default 64)")
    p.add_argument("--d-fc", type=int, default=0,
                   help="width of a fully connected layer between D's convolutions and its logit (default 0: none)")
    p.add_argument("--latent", type=int, default=64, help="size of the noise z (default 64)")
    p.add_argument("--seed", type=int, default=0, help="PyTorch's seed (default 0)")
    p.add_argument("--n", type=int, default=5000, help="samples scored at each step count (default 5000)")
    p.add_argument("--threads", type=int, default=None, help="BLAS / PyTorch threads (default: all)")
    p.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA, else the copy shipped)")
    p.add_argument("--json", default=None, help="write the scores to this JSON file")
    args = p.parse_args(argv)
    if any(s < 1 for s in args.steps):
        p.error(f"--steps must be positive, got {args.steps}")
    if args.d_fc < 0:
        p.error(f"--d-fc must be 0 or a positive integer, got {args.d_fc}")
    if not all(0.0 <= b < 1.0 for b in args.betas):
        p.error(f"--betas must be two numbers in [0, 1), got {args.betas}")
    return args


def torch_dcgan(torch, latent=64, ngf=64, ndf=64, d_fc=0):
    """``(G, D)``: models/dcgan.py's unconditional MNIST networks as PyTorch Sequentials, whose state_dict keys are
    tinygen's without the ``net.`` prefix. G takes z as (N, latent, 1, 1); D gives logits (N, 1, 1, 1), or (N, 1)
    with ``d_fc`` (a fully connected layer of that width before the logit)."""
    nn = torch.nn
    G = nn.Sequential(nn.ConvTranspose2d(latent, 2 * ngf, 7, 1, 0, bias=False), nn.BatchNorm2d(2 * ngf), nn.ReLU(),
                      nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),
                      nn.ConvTranspose2d(ngf, 1, 4, 2, 1), nn.Tanh())
    head = ([nn.Flatten(), nn.Linear(2 * ndf * 7 * 7, d_fc), nn.LeakyReLU(0.2), nn.Linear(d_fc, 1)] if d_fc
            else [nn.Conv2d(2 * ndf, 1, 7, 1, 0)])
    D = nn.Sequential(nn.Conv2d(1, ndf, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False),
                      nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2), *head)

    def dcgan_init(m):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    G.apply(dcgan_init)
    D.apply(dcgan_init)
    return G, D


def main(argv=None):
    args = parse(argv)
    if args.threads:  # before NumPy loads its BLAS
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        sys.exit("this script needs PyTorch: pip install torch==2.13.0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from tinygen.models import gan
    from tinygen.models.classifier import load_classifier

    cfg = gan.make_config(data=args.data, arch="dcgan", conditional=False)
    x, _, desc = gan.trainer.load_data(cfg)
    clf = load_classifier(quiet=True)
    torch.manual_seed(args.seed)
    images = torch.tensor(x).reshape(-1, 1, 28, 28)
    G, D = torch_dcgan(torch, args.latent, args.ngf, args.ndf, args.d_fc)
    opt_g = torch.optim.Adam(G.parameters(), args.lr, betas=tuple(args.betas))
    opt_d = torch.optim.Adam(D.parameters(), args.lr, betas=tuple(args.betas))
    ones, zeros = torch.ones(64), torch.zeros(64)
    print(f"PyTorch DCGAN ngf {args.ngf}, ndf {args.ndf}, D's fully connected layer {args.d_fc or 'none'}, "
          f"lr {args.lr}, seed {args.seed} on {desc}", flush=True)
    results, order, pos, t0 = [], torch.randperm(len(images)), 0, time.process_time()
    for step in range(1, max(args.steps) + 1):
        if pos + 64 > len(images):  # a new epoch: reshuffle, drop the last partial batch
            order, pos = torch.randperm(len(images)), 0
        real, pos = images[order[pos:pos + 64]], pos + 64
        fake = G(torch.randn(64, args.latent, 1, 1))
        d_loss = (F.binary_cross_entropy_with_logits(D(real).reshape(64), ones)
                  + F.binary_cross_entropy_with_logits(D(fake.detach()).reshape(64), zeros))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(D(fake).reshape(64), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        if step in args.steps:
            G.eval()
            with torch.no_grad():
                samples = torch.cat([G(torch.randn(min(1000, args.n - i), args.latent, 1, 1))
                                     for i in range(0, args.n, 1000)])
            G.train()
            m = gan.evaluate_samples(cfg, samples.reshape(args.n, 784).numpy(), clf, root=args.data)
            row = {"step": step, "cpu_seconds": time.process_time() - t0, **m}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "data": desc, "scores": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
