"""Vanishing gradients: the original (minimax) generator loss against the non-saturating one, on the same MNIST
GAN from the same initial weights. Prints, every ``--log-every`` generator steps, the mean D(G(z)) and the norm of
the generator's gradient under each loss.

With the minimax loss log(1 - D(G(z))), the generator's gradient is proportional to D(G(z)): when the discriminator
confidently rejects the fakes (D(G(z)) near 0, as early in training) it all but vanishes. The non-saturating loss
-log D(G(z)) has the same fixed point but its gradient is largest exactly there.

    TINYGEN_DATA=/path/to/mnist python examples/gan_vanishing_gradients.py --steps 600 --lr-d 1e-3

``--lr-d`` larger than the generator's rate (2e-4) gives the discriminator the upper hand, which is when the
difference shows. Any other setting of ``tinygen train gan`` can be given as ``--set key=value``.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr-d", type=float, default=1e-3, help="discriminator learning rate")
    p.add_argument("--lr-g", type=float, default=2e-4, help="generator learning rate")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None, help="write both runs' step logs to this file")
    args = p.parse_args()

    from tinygen.models.gan import train_gan
    from tinygen.models.train_utils import read_metrics
    # the MLP GAN unless --set arch="dcgan" (MNIST's default architecture is the DCGAN)
    extra = {"arch": "mlp", **{k: json.loads(v) for k, v in (kv.partition("=")[::2] for kv in args.set)}}
    logs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loss in ("minimax", "nonsaturating"):
            out = Path(tmp) / loss
            train_gan(out=out, quiet=True, pictures=False, loss=loss, steps=args.steps, lr_g=args.lr_g,
                      lr_d=args.lr_d, log_every=args.log_every, seed=args.seed, ema=0.0, **extra)
            logs[loss] = read_metrics(out / "steps.jsonl")
    print(f"{'step':>6} | {'minimax D(G(z))':>15} {'|grad G|':>10} | {'non-sat. D(G(z))':>16} {'|grad G|':>10}")
    for a, b in zip(logs["minimax"], logs["nonsaturating"]):
        print(f"{a['step']:6d} | {a['d_fake']:15.4f} {a['g_grad']:10.4g} | {b['d_fake']:16.4f} {b['g_grad']:10.4g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(logs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
