"""Train the same VAE with tinygen and with PyTorch on the same data, and compare test losses and speed.

The model is PyTorch's example VAE (784-400-20, Bernoulli decoder on grey-level pixels, Adam lr 1e-3, batch 128,
loss = BCE summed over pixels + KL, summed over the batch). Both runs start from the same initial weights (tinygen's,
copied into the PyTorch model) and see the same batches in the same order; only the reparameterisation noise
differs (each framework draws its own). Reported: test loss (negative ELBO per test image, nats, one z sample
per image) after every epoch, and training seconds per epoch.

    TINYGEN_DATA=/path/to/mnist python examples/vae_parity.py --epochs 10 --threads 2 [--json results.json]

Needs PyTorch (pip install torch==2.13.0) and the full MNIST training set.
"""
import argparse
import json
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="BLAS / PyTorch threads for both (default: all)")
    p.add_argument("--data", default=None, help="MNIST folder (default: $TINYGEN_DATA)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-tinygen", action="store_true")
    p.add_argument("--timing-rounds", type=int, default=0,
                   help="also time training steps interleaved (R rounds of S steps each, alternating tinygen and "
                        "PyTorch), so both see the same machine load")
    p.add_argument("--timing-steps", type=int, default=50)
    return p.parse_args()


def main():
    args = parse()
    if args.threads:  # must be set before NumPy loads its BLAS
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np

    from tinygen.models import vae

    cfg = vae.make_config(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          data=args.data)
    train_x, train_y, test_x, test_y = vae.load_data(cfg)
    torch = None
    if not args.skip_torch or args.timing_rounds > 0:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
    results = parity(cfg, (train_x, train_y, test_x, test_y), torch=None if args.skip_torch else torch,
                     tinygen_run=not args.skip_tinygen)
    results["threads"] = args.threads

    if args.timing_rounds > 0:
        init, _ = initial_state(cfg, train_x, train_y)
        print(f"== interleaved timing: {args.timing_rounds} rounds of {args.timing_steps} steps ==", flush=True)
        results["interleaved"] = interleaved_timing(torch, init, cfg, train_x, args.timing_rounds, args.timing_steps)
        t = results["interleaved"]
        print(f"median seconds per epoch ({t['steps_per_epoch']} steps): tinygen {t['tinygen_epoch_s']:.2f}, "
              f"torch {t['torch_epoch_s']:.2f} (ratio {t['tinygen_epoch_s'] / t['torch_epoch_s']:.2f})")

    if "final_difference" in results:
        a, b = results["tinygen"]["test_loss"][-1], results["torch"]["test_loss"][-1]
        ta = float(np.mean(results["tinygen"]["seconds_per_epoch"]))
        tb = float(np.mean(results["torch"]["seconds_per_epoch"]))
        print(f"final test loss: tinygen {a:.3f}, torch {b:.3f} (difference {a - b:+.3f} nats); "
              f"seconds per epoch: tinygen {ta:.2f}, torch {tb:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _say(msg):
    print(msg, flush=True)


def initial_state(cfg, train_x, train_y):
    """The initial weights (a dict of arrays) and the batch order (a DataLoader whose ``order(epoch)`` is used)
    that ``train_vae`` uses for ``cfg``: the same seed and the same construction order."""
    import tinygen
    from tinygen.data import DataLoader
    from tinygen.models import vae
    tinygen.manual_seed(cfg["seed"])
    init = {k: v.numpy().copy() for k, v in vae.build_model(cfg).state_dict().items()}
    return init, DataLoader((train_x, train_y), batch_size=cfg["batch_size"], shuffle=True, seed=cfg["seed"])


def parity(cfg, data, torch=None, tinygen_run=True, log=None):
    """Train the VAE of ``cfg`` (``vae.make_config``) with tinygen's ``train_vae`` and, given the ``torch`` module,
    with PyTorch from the same initial weights on the same batches in the same order. data: ``vae.load_data``'s
    (train_x, train_y, test_x, test_y). Returns a dict: config, sizes, per framework ``test_loss`` (per epoch,
    nats per test image) and ``seconds_per_epoch``, and ``final_difference`` (tinygen - torch) when both ran."""
    from tinygen.models import vae
    log = log or _say
    train_x, train_y, test_x, test_y = data
    results = {"config": {k: cfg[k] for k in ("epochs", "batch_size", "lr", "seed", "latent", "hidden")},
               "num_train": int(len(train_x)), "num_test": int(len(test_x))}
    init, order_loader = initial_state(cfg, train_x, train_y)
    if tinygen_run:
        log("== tinygen ==")
        _, hist = vae.train_vae(quiet=True, pictures=False, train_set=(train_x, train_y),
                                test_set=(test_x, test_y), **{k: v for k, v in cfg.items() if k != "data"})
        for r in hist:
            log(f"epoch {r['epoch']}: test loss {r['test_loss']:.3f} (train {r['train_loss']:.3f}) "
                f"{r['seconds']:.2f}s")
        results["tinygen"] = {"test_loss": [r["test_loss"] for r in hist],
                              "seconds_per_epoch": [r["seconds"] for r in hist]}
    if torch is not None:
        log(f"== torch {torch.__version__} ({torch.get_num_threads()} threads) ==")
        results["torch"] = train_torch(torch, init, order_loader, train_x, test_x, cfg, log)
        results["torch_version"] = torch.__version__
    if "tinygen" in results and "torch" in results and cfg["epochs"] > 0:
        results["final_difference"] = results["tinygen"]["test_loss"][-1] - results["torch"]["test_loss"][-1]
    return results


def torch_model(torch, init):
    """PyTorch's example VAE with tinygen's initial weights ``init`` (a dict of arrays); returns (model, loss_terms)."""
    nn, F = torch.nn, torch.nn.functional

    class TorchVAE(nn.Module):  # the layers of PyTorch's example, named as tinygen's VAE names them
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(784, 400)
            self.fc_mu = nn.Linear(400, 20)
            self.fc_logvar = nn.Linear(400, 20)
            self.dec = nn.Linear(20, 400)
            self.fc_out = nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.enc(x))
            mu, logvar = self.fc_mu(h), self.fc_logvar(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            return self.fc_out(F.relu(self.dec(z))), mu, logvar

    def loss_terms(model, x):
        logits, mu, logvar = model(x)
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce, kld

    model = TorchVAE()
    names = {"enc": "encoder.0", "dec": "decoder.0", "fc_mu": "fc_mu", "fc_logvar": "fc_logvar", "fc_out": "fc_out"}
    with torch.no_grad():
        for key, p in model.state_dict().items():
            mod, what = key.rsplit(".", 1)
            p.copy_(torch.from_numpy(init[f"{names[mod]}.{what}"]))
    return model, loss_terms


def interleaved_timing(torch, init, cfg, train_x, rounds, steps):
    """Seconds per training step of each framework, measured in alternating chunks of ``steps`` steps (one
    warm-up chunk each first); the median chunk, scaled to one epoch, is reported."""
    import numpy as np

    import tinygen
    from tinygen.models import vae

    bs = cfg["batch_size"]
    rng = np.random.default_rng(0)
    tinygen.manual_seed(cfg["seed"])
    tg_model = vae.build_model(cfg)
    tg_model.load_state_dict(init)
    tg_opt = tinygen.optim.Adam(tg_model.parameters(), lr=cfg["lr"])
    th_model, th_loss = torch_model(torch, init)
    th_opt = torch.optim.Adam(th_model.parameters(), lr=cfg["lr"])
    xt = torch.from_numpy(train_x)

    def tg_chunk(idx):
        t0 = time.perf_counter()
        for b in idx:
            x = tinygen.from_numpy(train_x[b])
            recon, kl = vae.elbo_terms(tg_model, x)
            loss = recon + kl
            tg_opt.zero_grad()
            loss.backward()
            tg_opt.step()
            loss.item()
        return time.perf_counter() - t0

    def th_chunk(idx):
        t0 = time.perf_counter()
        for b in idx:
            x = xt[torch.from_numpy(b)]
            bce, kld = th_loss(th_model, x)
            loss = bce + kld
            th_opt.zero_grad()
            loss.backward()
            th_opt.step()
            loss.item()
        return time.perf_counter() - t0

    tg, th = [], []
    for r in range(rounds + 1):
        idx = [rng.choice(len(train_x), bs, replace=False) for _ in range(steps)]
        a, b = tg_chunk(idx), th_chunk(idx)
        if r:  # round 0 warms up
            tg.append(a / steps)
            th.append(b / steps)
    per_epoch = -(-len(train_x) // bs)
    return {"steps_per_epoch": per_epoch, "tinygen_step_s": tg, "torch_step_s": th,
            "tinygen_epoch_s": float(np.median(tg)) * per_epoch, "torch_epoch_s": float(np.median(th)) * per_epoch}


def train_torch(torch, init, order_loader, train_x, test_x, cfg, log=None):
    log = log or _say
    torch.manual_seed(cfg["seed"])
    model, loss_terms = torch_model(torch, init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    xt, xtest = torch.from_numpy(train_x), torch.from_numpy(test_x)
    bs = cfg["batch_size"]
    losses, seconds = [], []
    for epoch in range(cfg["epochs"]):
        order = torch.from_numpy(order_loader.order(epoch))
        model.train()
        t0 = time.perf_counter()
        total = 0.0
        for i in range(0, len(order), bs):
            x = xt[order[i:i + bs]]
            bce, kld = loss_terms(model, x)
            loss = bce + kld
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        seconds.append(time.perf_counter() - t0)
        model.eval()
        test = 0.0
        with torch.no_grad():
            for i in range(0, len(xtest), 1000):
                bce, kld = loss_terms(model, xtest[i:i + 1000])
                test += (bce + kld).item()
        losses.append(test / len(xtest))
        log(f"epoch {epoch + 1}: test loss {losses[-1]:.3f} (train {total / len(order):.3f}) {seconds[-1]:.2f}s")
    return {"test_loss": losses, "seconds_per_epoch": seconds}


if __name__ == "__main__":
    sys.exit(main())
