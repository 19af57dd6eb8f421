"""Data-parallel training with tinygen.distributed: an MNIST classifier and a small VAE, on 1 or N processes.

    python examples/distributed_training.py                      # one process
    mpiexec -n 2 python examples/distributed_training.py         # two processes, same global batch
    (as root, Open MPI also needs --allow-run-as-root; more ranks than cores, --oversubscribe)

The pattern the trainers follow:
  1. ``dist.init()``; every rank builds the model the same way and wraps it in ``DistributedDataParallel``
     (which copies rank 0's parameters to every rank);
  2. every rank iterates the same DataLoader (same seed, the global batch size, drop_last=True) and keeps its
     share with ``dist.shard(batch)``: N ranks see exactly the batches one process would;
  3. random noise of a rank (VAE sampling, GAN latents) comes from its own stream, seeded ``dist.rank_seed(seed)``;
  4. ``loss.backward()`` returns with gradients averaged over the ranks; every rank steps its optimizer;
  5. only ``dist.is_main_process()`` prints and writes files.
With one process every call is a no-op and this is ordinary single-process training.
"""
import argparse
import time

import numpy as np

import tinygen as tg
from tinygen import data, distributed as dist, nn, optim
from tinygen.nn import functional as F
from tinygen.nn.parallel import DistributedDataParallel


def classifier():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


class VAE(nn.Module):
    def __init__(self, latent=16):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 784))

    def forward(self, x, noise):
        h = self.encoder(x)
        mu, logvar = h[:, :self.latent], h[:, self.latent:]
        return self.decoder(mu + (logvar * 0.5).exp() * noise), mu, logvar


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["classifier", "vae"], default="classifier")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the trained state_dict here (rank 0 only)")
    args = parser.parse_args()

    dist.init()
    tg.manual_seed(args.seed)  # the same model on every rank (DDP broadcasts rank 0's anyway)
    model = DistributedDataParallel(classifier() if args.model == "classifier" else VAE())
    opt = optim.Adam(model.parameters(), lr=1e-3)
    split = data.mnist("test")  # the bundled split: no download needed
    loader = data.DataLoader((data.to_unit(split.images), split.labels), batch_size=args.global_batch,
                             shuffle=True, drop_last=True, seed=args.seed)
    noise_rng = np.random.default_rng(dist.rank_seed(args.seed))  # this rank's own noise stream
    local = dist.split_batch(args.global_batch)

    step, start = 0, time.perf_counter()
    while step < args.steps:
        for batch in loader:
            images, labels = dist.shard(batch)
            opt.zero_grad()
            if args.model == "classifier":
                loss = F.cross_entropy(model(images), labels)
            else:
                x = images.reshape(local, 784)
                noise = tg.tensor(noise_rng.standard_normal((local, model.module.latent)).astype(np.float32))
                logits, mu, logvar = model(x, noise)
                loss = (F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + F.kl_normal(mu, logvar)) \
                    * (1.0 / local)
            loss.backward()  # returns with the gradients averaged over the ranks
            opt.step()
            step += 1
            if step % 20 == 0:
                mean_loss = dist.all_reduce(tg.tensor([loss.item()]), op="mean").item()
                if dist.is_main_process():
                    print(f"step {step}: loss {mean_loss:.4f} (mean over {dist.world_size()} ranks), "
                          f"{step * args.global_batch / (time.perf_counter() - start):.0f} samples/s", flush=True)
            if step == args.steps:
                break
    if args.save and dist.is_main_process():  # rank 0 writes; the unwrapped model's keys, loadable without DDP
        tg.save(model.module.state_dict(), args.save)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
