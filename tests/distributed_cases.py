"""Cases run by tests/test_distributed.py under ``mpiexec -n 2 python tests/distributed_cases.py <case>``.

Every rank checks its own results against a computation it repeats alone (one process, full batch, no
communication) and raises on a mismatch; the abort hook of ``tinygen.distributed`` then ends the job non-zero.
A case that passes prints ``OK <case> rank <r>`` on every rank.
"""
import sys

import numpy as np

import tinygen as tg
from tinygen import autograd, distributed as dist, nn, optim
from tinygen.nn import functional as F
from tinygen.nn.parallel import DistributedDataParallel

STEPS = 4
GLOBAL_BATCH = 32
# float32: the ranks add their halves in another order than one process does; after a few optimizer steps the
# parameters agree to a few float32 ulps of the gradient sums
TOLERANCE = {np.float64: (1e-12, 1e-12), np.float32: (2e-5, 2e-6)}


def check_close(what, got, want, dtype):
    rtol, atol = TOLERANCE[dtype]
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        diff = np.max(np.abs(got - want)) if got.shape == want.shape else "shape"
        raise AssertionError(f"rank {dist.rank()}: {what} differs (max abs diff {diff}, rtol {rtol}, atol {atol})")


def check_same_params(what, model, reference, dtype):
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        check_close(f"{what}: parameter {name}", tg.backend.to_device(p.data, "cpu"),
                    tg.backend.to_device(q.data, "cpu"), dtype)


def grads(model):
    """Copies of the gradients (compared too: Adam's step barely changes when all gradients are scaled alike)."""
    return [tg.backend.to_device(p.grad.data, "cpu").copy() for p in model.parameters()]


def check_same_grads(what, got, want, dtype):
    for i, (g, w) in enumerate(zip(got, want)):
        check_close(f"{what}: gradient {i}", g, w, dtype)


def build(make, seed):
    tg.manual_seed(seed)
    return make()


def batches(dtype, in_features, *extra, seed=123):
    """STEPS global batches of random data, identical on every rank."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        x = rng.standard_normal((GLOBAL_BATCH, in_features)).astype(dtype)
        out.append((x,) + tuple(f(rng) for f in extra))
    return out


def train_both(make_model, make_opt, loss_fn, data, dtype, device="cpu"):
    """K steps data-parallel (each rank its shard of each global batch) and K steps alone on the global batch."""
    # each rank builds its model from another seed: the wrapper must broadcast rank 0's parameters
    ddp = DistributedDataParallel(build(make_model, dist.rank()).to(device), bucket_cap_mb=0.001)
    alone = build(make_model, 0).to(device)
    opt, opt_alone = make_opt(ddp.parameters()), make_opt(alone.parameters())
    for batch in data:
        opt.zero_grad()
        loss_fn(ddp, [tg.tensor(a, device=device) for a in dist.shard(batch)]).backward()
        opt.step()
        opt_alone.zero_grad()
        loss_fn(alone, [tg.tensor(a, device=device) for a in batch]).backward()
        opt_alone.step()
        check_same_grads("data-parallel vs one process", grads(ddp), grads(alone), dtype)
    check_same_params("data-parallel vs one process", ddp.module, alone, dtype)
    return ddp, alone


def case_device():
    """The bucket and transport code on device arrays: the CPU stand-in for CuPy (no NCCL: host staging)."""
    with tg.backend.cuda_standin():
        data = batches(np.float64, 10, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
        ddp, _ = train_both(mlp(np.float64), lambda ps: optim.SGD(ps, lr=0.1), lambda m, b: F.cross_entropy(
            m(b[0]), b[1]), data, np.float64, device="cuda")
        if ddp.module[0].weight.grad.device != "cuda":
            raise AssertionError("the gradients left the device")


def case_gpu():
    """The same on real CuPy arrays: NCCL where each rank has a GPU of its own; ranks sharing one GPU (NCCL refuses
    that) stage through host memory, every rank the same way, after one warning."""
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        data = batches(np.float64, 10, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
        ddp, _ = train_both(mlp(np.float64), lambda ps: optim.SGD(ps, lr=0.1), lambda m, b: F.cross_entropy(
            m(b[0]), b[1]), data, np.float64, device="cuda")
    if type(ddp.module[0].weight.grad.data).__module__.split(".")[0] != "cupy":
        raise AssertionError("the gradients are not CuPy arrays")
    nccl = dist._world.nccl
    said = [str(w.message) for w in seen if "NCCL is not used" in str(w.message)]
    print(f"rank {dist.rank()}: NCCL {'used' if nccl else 'not used'}; warnings: {said}")
    if not nccl and dist.rank() == 0 and not said:
        raise AssertionError("NCCL was not used and no warning said why")


def mlp(dtype):
    def make():
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to(
            dtype=dtype)
    return make


def case_classifier():
    from tinygen.autograd import engine
    from tinygen.nn import parallel
    started_in_backward = []  # was each bucket's all-reduce started while backward() was still running?
    start = parallel._Bucket.start
    parallel._Bucket.start = lambda self, **kw: (started_in_backward.append(engine._callbacks is not None),
                                                 start(self, **kw))[1]
    for dtype in (np.float64, np.float32):
        data = batches(dtype, 10, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
        for make_opt in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps, lr=1e-2)):
            ddp, _ = train_both(mlp(dtype), make_opt, lambda m, b: F.cross_entropy(m(b[0]), b[1]), data, dtype)
            if len(ddp.bucket_sizes) < 2:
                raise AssertionError("the tiny bucket cap should give several buckets")
    if not all(started_in_backward) or not started_in_backward:
        raise AssertionError(f"bucket all-reduces did not all start during backward: {started_in_backward}")


def conv_net(dtype):
    def make():  # channels-last weights (nn's convolutions): broadcast and all-reduced through a C-ordered copy
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 2, 4, 2, 1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(2 * 8 * 8, 4)).to(dtype=dtype)
    return make


def case_conv():
    """A convolutional classifier on 4x4 images: its weights are not C-contiguous (stored channels-last)."""
    for dtype in (np.float64, np.float32):
        data = batches(dtype, 16, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
        ddp, _ = train_both(conv_net(dtype), lambda ps: optim.Adam(ps, lr=1e-2),
                            lambda m, b: F.cross_entropy(m(b[0].reshape(-1, 1, 4, 4)), b[1]), data, dtype)
        weight = ddp.module[2].weight.data  # (4, 2, 4, 4), stored (4, 4, 4, 2)
        if weight.flags.c_contiguous or not weight.transpose(0, 2, 3, 1).flags.c_contiguous:
            raise AssertionError(f"the convolution's weight is not channels-last: strides {weight.strides}")
        mine = weight.copy(order="K")  # channels-last too: all-reduced in place through a C-ordered copy
        dist.all_reduce_array(mine, "mean")
        check_close("all-reduced weight", mine, weight, dtype)


class VAE(nn.Module):
    def __init__(self, dtype, x_dim=12, z_dim=3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(x_dim, 16), nn.ReLU(), nn.Linear(16, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, 16), nn.ReLU(), nn.Linear(16, x_dim))
        self.z_dim = z_dim
        self.to(dtype=dtype)

    def forward(self, x, noise):
        h = self.encoder(x)
        mu, logvar = h[:, :self.z_dim], h[:, self.z_dim:]
        z = mu + (logvar * 0.5).exp() * noise
        return self.decoder(z), mu, logvar


def vae_loss(model, batch):
    x, noise = batch
    logits, mu, logvar = model(x, noise)
    n = x.shape[0]
    return (F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + F.kl_normal(mu, logvar)) * (1.0 / n)


def case_vae():
    for dtype in (np.float64, np.float32):
        # binary images and the reparameterisation noise of the global batch (each rank takes its rows)
        rng = np.random.default_rng(5)
        data = [((rng.random((GLOBAL_BATCH, 12)) < 0.5).astype(dtype),
                 rng.standard_normal((GLOBAL_BATCH, 3)).astype(dtype)) for _ in range(STEPS)]
        train_both(lambda: VAE(dtype), lambda ps: optim.Adam(ps, lr=1e-2), vae_loss, data, dtype)


def critic_loss(critic, real, fake, alpha):
    """WGAN-GP critic loss: its penalty's graph comes from autograd.grad(create_graph=True) and stays local."""
    mixed = (alpha * real + (1 - alpha) * fake).detach()
    mixed.requires_grad = True
    grad, = autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    penalty = (((grad * grad).sum(1) + 1e-12).sqrt() - 1) ** 2
    return critic(fake).mean() - critic(real).mean() + 10.0 * penalty.mean()


def case_wgan_gp():
    for dtype in (np.float64, np.float32):
        def make_g():
            return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6)).to(dtype=dtype)

        def make_d():
            return nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)).to(dtype=dtype)

        rng = np.random.default_rng(9)
        data = [tuple(rng.standard_normal(s).astype(dtype) for s in ((GLOBAL_BATCH, 6), (GLOBAL_BATCH, 4),
                                                                        (GLOBAL_BATCH, 1), (GLOBAL_BATCH, 4)))
                for _ in range(STEPS)]
        runs = {}
        for parallel in (True, False):
            seed = dist.rank() if parallel else 0
            g, d = build(make_g, seed), build(make_d, seed + 10)
            if parallel:
                g, d = DistributedDataParallel(g, bucket_cap_mb=0.001), DistributedDataParallel(d)
            opt_g = optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.9))
            opt_d = optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.9))
            history = []
            for batch in data:
                real, z, alpha, z2 = [tg.tensor(a) for a in (dist.shard(batch) if parallel else batch)]
                opt_d.zero_grad()
                critic_loss(d, real, g(z).detach(), alpha).backward()
                history += grads(d)
                opt_d.step()
                opt_g.zero_grad()
                (-d(g(z2)).mean()).backward()
                history += grads(g)
                opt_g.step()
            runs[parallel] = (g.module if parallel else g, d.module if parallel else d, history)
        check_same_grads("WGAN-GP", runs[True][2], runs[False][2], dtype)
        check_same_params("WGAN-GP generator", runs[True][0], runs[False][0], dtype)
        check_same_params("WGAN-GP critic", runs[True][1], runs[False][1], dtype)


def compiled_against_eager(make_model, make_opt, loss_fn, data, dtype, micro=1, against_alone=True):
    """The same data-parallel steps eager and through tinygen.compile (the step: zero_grad, ``micro`` backward
    passes over parts of the rank's shard, all but the last inside no_sync, the optimizer step): bitwise the same
    gradients and parameters, every bucket's all-reduce started exactly once a step (not skipped nor repeated by a
    replay), and (``against_alone``) the parameters of one process on the whole batches to the usual tolerance."""
    from tinygen.nn import parallel
    starts = []
    start = parallel._Bucket.start
    parallel._Bucket.start = lambda self, **kw: (starts.append(self), start(self, **kw))[1]
    runs = {}
    try:
        for compiled in (False, True):
            ddp = DistributedDataParallel(build(make_model, dist.rank()), bucket_cap_mb=0.001)
            opt = make_opt(ddp.parameters())

            def step(*batch):
                opt.zero_grad()
                for i in range(micro):
                    part = [t[i * len(t) // micro:(i + 1) * len(t) // micro] for t in batch]
                    if i < micro - 1:
                        with ddp.no_sync():
                            loss_fn(ddp, part).backward()
                    else:
                        loss_fn(ddp, part).backward()
                opt.step()

            fn = tg.compile(step) if compiled else step
            history, starts[:] = [], []
            for batch in data:
                fn(*[tg.tensor(a) for a in dist.shard(batch)])
                history += grads(ddp)
            if compiled and (fn.records, fn.replays) != (1, len(data) - 1):
                raise AssertionError(f"compiled step: {fn.records} records, {fn.replays} replays")
            if len(starts) != len(data) * len(ddp.bucket_sizes) or len(set(map(id, starts))) != len(ddp.bucket_sizes):
                raise AssertionError(f"{len(starts)} bucket all-reduces in {len(data)} steps of "
                                     f"{len(ddp.bucket_sizes)} buckets (compiled={compiled})")
            state = [p.data.copy() for p in ddp.parameters()] + [b.data.copy() for b in ddp.buffers()]
            runs[compiled] = (history, state, ddp)
    finally:
        parallel._Bucket.start = start
    for what, i in (("gradient", 0), ("parameter or buffer", 1)):
        for k, (a, b) in enumerate(zip(runs[True][i], runs[False][i])):
            if not np.array_equal(a, b):
                raise AssertionError(f"rank {dist.rank()}: compiled data-parallel {what} {k} differs from eager "
                                     f"(max abs diff {np.max(np.abs(a - b))})")
    if against_alone:
        alone = build(make_model, 0)
        opt = make_opt(alone.parameters())
        for batch in data:
            opt.zero_grad()
            for i in range(micro):  # the same parts of the whole batch: their losses add up as the ranks' do
                loss_fn(alone, [tg.tensor(a[i * len(a) // micro:(i + 1) * len(a) // micro]) for a in batch]).backward()
            opt.step()
        check_same_params("compiled data-parallel vs one process", runs[True][2].module, alone, dtype)


def case_compiled():
    for dtype in (np.float64, np.float32):
        data = batches(dtype, 10, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
        ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
        for make_opt in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps, lr=1e-2)):
            compiled_against_eager(mlp(dtype), make_opt, ce, data, dtype)
        # gradient accumulation: no_sync inside the compiled step, two halves of each rank's shard
        half_ce = lambda m, b: F.cross_entropy(m(b[0]), b[1]) * 0.5  # noqa: E731
        compiled_against_eager(mlp(dtype), lambda ps: optim.SGD(ps, lr=0.1), half_ce, data, dtype, micro=2)
        # dropout: each rank's masks from its rank stream, switched to on every replay (no one-process reference)
        with_dropout = lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.3),  # noqa: E731
                                             nn.Linear(16, 4)).to(dtype=dtype)
        compiled_against_eager(with_dropout, lambda ps: optim.Adam(ps, lr=1e-2), ce, data, dtype,
                               against_alone=False)
        # BatchNorm's running statistics: rank 0's broadcast before every forward, replayed too
        with_bn = lambda: nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(),  # noqa: E731
                                        nn.Linear(16, 4)).to(dtype=dtype)
        compiled_against_eager(with_bn, lambda ps: optim.SGD(ps, lr=0.1), ce, data, dtype, against_alone=False)
        rng = np.random.default_rng(5)
        vae_data = [((rng.random((GLOBAL_BATCH, 12)) < 0.5).astype(dtype),
                     rng.standard_normal((GLOBAL_BATCH, 3)).astype(dtype)) for _ in range(STEPS)]
        compiled_against_eager(lambda: VAE(dtype), lambda ps: optim.Adam(ps, lr=1e-2), vae_loss, vae_data, dtype)
        # a WGAN-GP critic step: the penalty's create_graph gradient inside the compiled step
        critic = lambda: nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)).to(  # noqa: E731
            dtype=dtype)
        rng = np.random.default_rng(9)
        gp_data = [tuple(rng.standard_normal(s).astype(dtype) for s in ((GLOBAL_BATCH, 6), (GLOBAL_BATCH, 6),
                                                                        (GLOBAL_BATCH, 1))) for _ in range(STEPS)]
        # (SGD: Adam scales a gradient component that is rounding noise in float32 up to steps of lr)
        compiled_against_eager(critic, lambda ps: optim.SGD(ps, lr=1e-2), lambda m, b: critic_loss(m, *b),
                               gp_data, dtype)


def case_no_sync():
    dtype = np.float64
    data = batches(dtype, 10, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
    ddp, alone = DistributedDataParallel(build(mlp(dtype), 0)), build(mlp(dtype), 0)
    loss = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    local = [tg.tensor(a) for a in dist.shard(data[0])]
    with ddp.no_sync():
        loss(ddp, local).backward()
    # inside no_sync: this rank's own gradient, unreduced
    probe = build(mlp(dtype), 0)
    loss(probe, local).backward()
    for p, q in zip(ddp.parameters(), probe.parameters()):
        check_close("no_sync gradient (local)", p.grad.data, q.grad.data, dtype)
    # the next backward averages the accumulated sum of both micro-batches
    loss(ddp, [tg.tensor(a) for a in dist.shard(data[1])]).backward()
    for batch in data[:2]:
        loss(alone, [tg.tensor(a) for a in batch]).backward()
    for p, q in zip(ddp.parameters(), alone.parameters()):
        check_close("accumulated gradient after no_sync", p.grad.data, q.grad.data, dtype)


def case_unused_parameter():
    """A parameter used by one rank only gets the average (half its gradient there) on both; one used by no rank
    keeps .grad None on both."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.never = nn.Linear(3, 1), nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x, use_b):
            return self.a(x) + (self.b(x) if use_b else 0)

    model = DistributedDataParallel(build(TwoHeads, 0))
    x = tg.tensor(np.ones((2, 3), dtype=np.float32))
    model(x, use_b=dist.rank() == 0).sum().backward()
    check_close("b.weight grad", model.module.b.weight.grad.data, np.full((1, 3), 2.0 / dist.world_size()),
                np.float32)
    check_close("a.weight grad", model.module.a.weight.grad.data, np.full((1, 3), 2.0), np.float32)
    if model.module.never.weight.grad is not None:
        raise AssertionError("a parameter no rank used got a gradient")


def case_dropout_streams():
    """Dropout inside DistributedDataParallel draws from the rank stream: the ranks' masks differ, are the same
    again after manual_seed with the same seed, and leave the main stream (the global batch's noise) alike on
    every rank."""
    from tinygen import random as tr
    model = DistributedDataParallel(build(lambda: nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5)), 0))
    tr.manual_seed(5)
    x = tg.tensor(np.ones((16, 8), dtype=np.float32))
    masks = lambda: (model(x).detach().numpy() == 0)  # noqa: E731
    first = masks()
    ranks = dist.all_gather_object(first)
    if np.array_equal(ranks[0], ranks[1]):
        raise AssertionError("both ranks drew the same dropout mask")
    if not 0.3 < first.mean() < 0.7:
        raise AssertionError(f"dropout p=0.5 dropped {first.mean():.2f} of the units")
    main = dist.all_gather_object(tg.randn(4).numpy())
    if not np.array_equal(main[0], main[1]):
        raise AssertionError("the main stream differs across ranks after a data-parallel forward with dropout")
    tr.manual_seed(5)
    if not np.array_equal(masks(), first):
        raise AssertionError("manual_seed did not restart the rank stream")
    plain = nn.Dropout(0.5)(x).numpy() == 0  # outside a data-parallel module: the main stream, alike everywhere
    gathered = dist.all_gather_object(plain)
    if not np.array_equal(gathered[0], gathered[1]):
        raise AssertionError("dropout outside a data-parallel module drew from the rank stream")


def case_collectives():
    r, n = dist.rank(), dist.world_size()
    if n != 2 or not dist.is_initialized():
        raise AssertionError(f"expected a world of 2 processes, got {n}")
    t = tg.tensor(np.arange(6.0).reshape(2, 3) * (r + 1))
    dist.all_reduce(t)
    check_close("all_reduce sum", t.numpy(), np.arange(6.0).reshape(2, 3) * 3, np.float64)
    t = tg.tensor(np.full(4, float(r), dtype=np.float32))
    dist.all_reduce(t, op="mean")
    check_close("all_reduce mean", t.numpy(), np.full(4, 0.5), np.float32)
    t = tg.tensor(np.full(3, float(r + 7)))
    dist.broadcast(t, src=1)
    check_close("broadcast", t.numpy(), np.full(3, 8.0), np.float64)
    dist.barrier()
    # a device array goes through host staging (here the CPU stand-in for CuPy, which has no NCCL)
    with tg.backend.cuda_standin():
        t = tg.tensor(np.full(5, float(r + 1)), device="cuda")
        dist.all_reduce(t, op="mean")
        check_close("all_reduce on the device", t.cpu().numpy(), np.full(5, 1.5), np.float64)
        dist.broadcast(t, src=0)
    if dist.split_batch(8) != 4 or dist.rank_seed(10) != 10 + r or dist.is_main_process() != (r == 0):
        raise AssertionError("split_batch / rank_seed / is_main_process disagree with the rank")


def case_sampler():
    from mpi4py import MPI
    from tinygen.data import DistributedSampler
    for n, drop_last in ((103, False), (103, True), (10, False)):
        sampler = DistributedSampler(n, shuffle=True, seed=3, drop_last=drop_last)
        orders = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            mine = sampler.indices()
            everyone = MPI.COMM_WORLD.allgather(mine.tolist())  # test only: compare the shards
            if len({len(s) for s in everyone}) != 1:
                raise AssertionError(f"unequal shard sizes {[len(s) for s in everyone]}")
            seen = np.concatenate(everyone)
            if drop_last:
                if len(np.unique(seen)) != len(seen) or len(seen) != n - n % 2:
                    raise AssertionError("drop_last: an example was repeated or too many were dropped")
            elif sorted(set(seen.tolist())) != list(range(n)) or len(seen) != n + (-n) % 2:
                raise AssertionError(f"epoch {epoch}: the shards do not cover every example once (n={n})")
            orders.append(tuple(seen.tolist()))
        if len(set(orders)) != 3:
            raise AssertionError("the order did not change between epochs")


def case_sync_batch_norm():
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(2)
        for shape in ((16, 3), (8, 3, 5)):
            full = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
            weight_out = rng.standard_normal(shape).astype(dtype)  # a loss that weights each output differently
            ref = nn.BatchNorm1d(3).to(dtype=dtype)
            sync = nn.SyncBatchNorm(3).to(dtype=dtype)
            for bn in (ref, sync):
                bn.weight.data[...] = np.array([1.5, -0.5, 2.0], dtype=dtype)
                bn.bias.data[...] = np.array([0.1, 0.2, -0.3], dtype=dtype)
            x_full = tg.tensor(full, requires_grad=True)
            y_full = ref(x_full)
            (y_full * tg.tensor(weight_out)).sum().backward()
            for create_graph in (False, True):
                x = tg.tensor(dist.shard(full), requires_grad=True)
                sync.zero_grad()
                y = sync(x)
                check_close("SyncBatchNorm output", y.data, dist.shard(y_full.data), dtype)
                loss = (y * tg.tensor(dist.shard(weight_out))).sum()
                gx, gw, gb = autograd.grad(loss, (x, sync.weight, sync.bias), create_graph=create_graph)
                check_close(f"input grad (create_graph={create_graph})", gx.data, dist.shard(x_full.grad.data),
                            dtype)
                for name, g, want in (("weight", gw, ref.weight.grad), ("bias", gb, ref.bias.grad)):
                    total = dist.all_reduce(tg.tensor(g.data.copy()))  # local sums: their sum is the full one
                    check_close(f"{name} grad", total.data, want.data, dtype)
            # two training forwards: the running statistics of the full batch, twice
            ref(x_full)
            check_close("running_mean", sync.running_mean.data, ref.running_mean.data, dtype)
            check_close("running_var", sync.running_var.data, ref.running_var.data, dtype)
            sync.eval(), ref.eval()
            check_close("eval output", sync(tg.tensor(full)).data, ref(tg.tensor(full)).data, dtype)


def case_rank_raises():
    """Rank 1 raises in the middle of the third step while rank 0 waits in its all-reduce."""
    dtype = np.float64
    data = batches(dtype, 10, lambda rng: rng.integers(0, 4, GLOBAL_BATCH))
    ddp = DistributedDataParallel(build(mlp(dtype), 0))
    for step, batch in enumerate(data):
        out = ddp(tg.tensor(dist.shard(batch)[0]))
        if step == 2 and dist.rank() == 1:
            raise RuntimeError("deliberate failure on rank 1 at step 2")
        out.sum().backward()
    raise AssertionError("rank 0 finished its steps although rank 1 failed")


def tiny_digits(n, seed):
    """(images uint8 (n, 28, 28), labels) of random pixels: the trainers' cases need no MNIST files."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def case_train(model, out, epochs, mode, compile="compiled"):
    """A tiny run of ``tinygen train <model>`` into ``out`` (tests/test_distributed.py compares the checkpoints
    of 2 ranks and of 1). 100 training images in global batches of 20: 5 steps an epoch. The classifier trains in
    float64; the VAE in float32 (its test-set evaluation is float32 only)."""
    from tinygen.models import classifier, gan, vae
    compile = {"compiled": True, "eager": False}[compile]  # the trainers' step through tinygen.compile or not
    import atexit
    from tinygen.compile import Compiled
    made = []  # every compiled step: rank 0 prints how many calls were replays, for the test to check
    init = Compiled.__init__
    Compiled.__init__ = lambda self, *a: (made.append(self), init(self, *a))[1]
    atexit.register(lambda: dist.rank() or print(f"REPLAYS {sum(c.replays for c in made)}", flush=True))
    tg.set_default_dtype(np.float32 if model == "vae" else np.float64)
    train, test = tiny_digits(100, 0), tiny_digits(64, 1)
    # mode: fresh, resume, or first: a fresh run stopped after its first epoch (as if interrupted)
    epochs, resume, stop_after = int(epochs), mode == "resume", 1 if mode == "first" else None
    if model in ("classifier", "classifier_dropout"):
        # no dropout for the comparison with one process: each rank draws its own masks (the rank stream)
        classifier.train_classifier(epochs=epochs, batch_size=20, hidden=[32, 16], seed=3,
                                    dropout=0.3 if model == "classifier_dropout" else 0.0,
                                    out=out, resume=resume, save=f"{out}/final.npz", train_set=train,
                                    test_set=test, stop_after=stop_after, compile=compile)
    elif model == "vae":
        # a VAE run without a schedule: a shorter run is its first epochs
        vae.train_vae(out=out, resume=resume, train_set=train, test_set=test, epochs=1 if stop_after else epochs,
                      batch_size=20, hidden=[32], latent=2, binarize=True, beta_warmup=1.0, seed=3,
                      compile=compile)
    elif model == "gan":
        # conditional MNIST GAN (fake labels drawn too) with an EMA generator, 3 generator steps an epoch
        gan.train_gan(out=out, resume=resume, train_set=train, epochs=1 if stop_after else epochs, batch_size=32,
                      arch="mlp", latent=8, g_hidden=[16], d_hidden=[16], conditional=True, ema=0.9, eval_samples=64,
                      log_every=2, seed=3, compile=compile)
    elif model == "dcgan":
        # MNIST's default network, tiny: BatchNorm2d synchronised across the ranks, channels-last weights
        gan.train_gan(out=out, resume=resume, train_set=train, epochs=1 if stop_after else epochs, batch_size=32,
                      arch="dcgan", latent=8, ngf=4, ndf=4, d_fc=8, conditional=True, ema=0.9, eval_samples=64,
                      log_every=2, seed=3, compile=compile, sync_bn=True)
    elif model == "gan_dropout":
        # the MLP GAN with dropout in both networks; checkpoints every epoch of 3 generator steps
        gan.train_gan(out=out, resume=resume, train_set=train, epochs=1 if stop_after else epochs, batch_size=32,
                      arch="mlp", latent=8, g_hidden=[16], d_hidden=[16], g_dropout=0.3, d_dropout=0.3, eval_samples=64,
                      log_every=2, seed=3, compile=compile)
    elif model == "gan_gp":
        # WGAN-GP on the ring (the penalty's interpolation draws), the generator's BatchNorm synchronised
        gan.train_gan(out=out, resume=resume, dataset="ring", loss="wgan-gp", n_critic=2, toy_samples=128,
                      lr_decay="none", epochs=1 if stop_after else epochs, batch_size=32, latent=2, g_hidden=[16, 16],
                      d_hidden=[16], g_batchnorm=True, sync_bn=True, eval_samples=64, log_every=2, seed=3,
                      compile=compile)
    else:
        raise ValueError(f"case train: unknown model {model!r}")


def case_cli(*argv):
    """``tinygen <argv>`` (the command line's main) on every rank."""
    from tinygen.cli import main
    code = main(list(argv))
    if code:
        raise SystemExit(code)


def case_cli_error_on_one_rank():
    """``tinygen train`` whose trainer fails with a reported (one-line) error on rank 1 only, while rank 0 waits in a
    collective: the command line must end the whole job rather than leave rank 0 waiting."""
    from tinygen.cli import main
    from tinygen.models import classifier

    def train_from_args(args):
        if dist.rank() == 1:
            raise ValueError("deliberate error on rank 1")
        dist.all_reduce(tg.tensor([1.0]))
        raise AssertionError("rank 0 passed a collective that rank 1 never joined")

    classifier.train_from_args = train_from_args
    raise SystemExit(main(["train", "classifier", "--quiet"]))


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in CASES:
        raise SystemExit(f"usage: distributed_cases.py {{{','.join(CASES)}}} [arguments of the case]")
    dist.init()
    CASES[sys.argv[1]](*sys.argv[2:])
    print(f"OK {sys.argv[1]} rank {dist.rank()}", flush=True)
