"""Data-parallel training steps at 1 and 2 MPI ranks (one thread each): throughput, all-reduce cost, bucket sizes.

    python -m benchmarks.distributed                      # launches mpiexec itself; prints a Markdown table
    python -m benchmarks.distributed --steps 10 --global-batch 1024 --ranks 1 2 --rounds 3

The models are the VAE and the GAN of benchmarks/specs.py, built from tinygen.nn layers and wrapped in
DistributedDataParallel; each rank trains on global-batch / ranks examples. Each round launches every rank count
once (1 and 2 alternate), and the table has the median over ``--rounds`` of each number. Per configuration:
  mode        eager, or the step through tinygen.compile (recorded once, then replayed);
  step        the fastest of ``--steps`` timed training steps (VAE: one Adam step; GAN: one D step + one G
              step): on a shared machine the minimum is the least disturbed by other processes;
  phases      per rank, ms per step (mean over the timed steps): forward (with the losses), backward (with the
              bucket copies and starts, without the waits), wait (for the bucket all-reduces to complete, and
              the blocking all-reduce of the last bucket),
              optimizer (zero_grad and step); a compiled step's replays skip the Python that splits the phases,
              so only its wait is shown;
  samples/s   global batch / step;
  no-sync     the same step under ``no_sync()`` (no communication): the compute of one rank's half batch;
  all-reduce  step minus no-sync: what the step pays for averaging gradients, with the waits for the slower
              rank; share = all-reduce / step;
  bare        one blocking all-reduce of a flat float32 array of the model's gradient size (the transport alone);
  compute CPU the fastest CPU time of one rank's step without communication (process time: what the step costs
              when the rank has a core to itself, even on a loaded machine);
  idle-core speedup  1-rank compute CPU / (2-rank compute CPU + bare all-reduce): the 2-rank speedup expected
              when each rank has its own idle core and nothing of the all-reduce is hidden behind backward.
Needs mpi4py and mpiexec (pip install -e ".[mpi]"). Not a test: timings on a shared machine vary.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from . import specs

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


# ---- the models (tinygen.nn), shaped as in specs.py ---------------------------------------------------------------
def _vae(nn, F):
    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            for name, fan_in, fan_out in specs.VAE_LAYERS:
                setattr(self, name, nn.Linear(fan_in, fan_out))

        def forward(self, x, noise):
            h = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + (logvar * 0.5).exp() * noise
            return self.fc4(F.relu(self.fc3(z))), mu, logvar
    return VAE()


def _gan(nn):
    g_layers = []
    for i, (name, fan_in, fan_out) in enumerate(specs.GEN_LAYERS):
        g_layers.append(nn.Linear(fan_in, fan_out))
        if name in specs.GEN_BN:
            g_layers.append(nn.BatchNorm1d(fan_out, eps=specs.BN_EPS, momentum=specs.BN_MOMENTUM))
        g_layers.append(nn.Tanh() if i == len(specs.GEN_LAYERS) - 1 else nn.LeakyReLU(specs.LEAKY))
    d_layers = []
    for i, (_, fan_in, fan_out) in enumerate(specs.DIS_LAYERS):
        d_layers.append(nn.Linear(fan_in, fan_out))
        if i < len(specs.DIS_LAYERS) - 1:
            d_layers.append(nn.LeakyReLU(specs.LEAKY))
    return nn.Sequential(*g_layers), nn.Sequential(*d_layers)


class _Clock:
    """Per-phase wall time of the timed steps on this rank: ``lap(name)`` adds the time since the previous lap to
    ``name``; the all-reduce waits (``wait``) are taken out of the phase they happen in."""

    def __init__(self):
        self.totals, self.last, self.waited, self.on = {}, 0.0, 0.0, False

    def start(self):
        self.last, self.waited = time.perf_counter(), 0.0

    def lap(self, name):
        now = time.perf_counter()
        if self.on:
            self.totals[name] = self.totals.get(name, 0.0) + now - self.last - self.waited
        self.last, self.waited = now, 0.0

    def timed(self, fn):
        """``fn`` (a wait for an all-reduce, or a blocking all-reduce) with its time counted as ``wait``."""
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            took = time.perf_counter() - t0
            self.waited += took
            if self.on:
                self.totals["wait"] = self.totals.get("wait", 0.0) + took
            return out
        return timed


def _step_fn(model, bucket_cap_mb, local_batch, clock):
    """A function running one training step (its phases timed by ``clock``), the wrapped modules and the number
    of gradient values that one step all-reduces."""
    import tinygen as tg
    from tinygen import nn, optim
    from tinygen.nn import functional as F
    from tinygen.nn.parallel import DistributedDataParallel as DDP
    tg.manual_seed(0)
    rng = np.random.default_rng(1)
    x = tg.tensor(rng.random((local_batch, 784), dtype=np.float32))
    if model == "vae":
        vae = DDP(_vae(nn, F), bucket_cap_mb=bucket_cap_mb)
        opt = optim.Adam(vae.parameters(), lr=1e-3)
        noise = tg.tensor(rng.standard_normal((local_batch, specs.VAE_LATENT)).astype(np.float32))

        def step():
            clock.start()
            opt.zero_grad()
            clock.lap("optimizer")
            logits, mu, logvar = vae(x, noise)
            loss = (F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + F.kl_normal(mu, logvar)) \
                * (1.0 / local_batch)
            clock.lap("forward")
            loss.backward()
            clock.lap("backward")
            opt.step()
            clock.lap("optimizer")
        return step, [vae], sum(p.data.size for p in vae.parameters())
    g, d = _gan(nn)
    g, d = DDP(g, bucket_cap_mb=bucket_cap_mb), DDP(d, bucket_cap_mb=bucket_cap_mb)
    opt_g = optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    z = tg.tensor(rng.standard_normal((local_batch, specs.LATENT)).astype(np.float32))
    real = x * 2 - 1
    ones, zeros = tg.ones(local_batch, 1), tg.zeros(local_batch, 1)

    def step():
        clock.start()
        opt_d.zero_grad()
        clock.lap("optimizer")
        fake = g(z)
        loss_d = F.binary_cross_entropy_with_logits(d(real), ones) + \
            F.binary_cross_entropy_with_logits(d(fake.detach()), zeros)
        clock.lap("forward")
        loss_d.backward()
        clock.lap("backward")
        opt_d.step()
        opt_g.zero_grad()
        clock.lap("optimizer")
        with d.no_sync():  # the G step's backward also reaches D, whose gradients the next D step discards
            loss_g = F.binary_cross_entropy_with_logits(d(fake), ones)
            clock.lap("forward")
            loss_g.backward()
        clock.lap("backward")
        opt_g.step()
        clock.lap("optimizer")
    n = sum(p.data.size for p in g.parameters()) + sum(p.data.size for p in d.parameters())
    return step, [g, d], n


def _fastest_step(step, steps, warmup, barrier, clock=None):
    """(fastest wall-clock seconds of a step across the ranks, fastest CPU seconds of the step on this rank,
    median wall-clock seconds); ``clock`` times the phases of the timed steps only."""
    for _ in range(warmup):
        step()
    times, cpu = [], []
    if clock is not None:
        clock.on = True
    for _ in range(steps):
        barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        cpu.append(time.process_time() - c0)
        barrier()
        times.append(time.perf_counter() - t0)
    if clock is not None:
        clock.on = False
    return float(np.min(times)), float(np.min(cpu)), float(np.median(times))


def worker(args):
    """Run under mpiexec: time every configuration; rank 0 prints one JSON line per configuration."""
    from contextlib import ExitStack
    import tinygen as tg
    from tinygen import distributed as dist
    n = dist.init()
    local = dist.split_batch(args.global_batch)
    rows = []
    for model in args.models:
        caps = args.bucket_mb if n > 1 else [25.0]
        for cap, mode in [(c, m) for c in caps for m in args.modes]:
            clock = _Clock()
            wait, start = dist._MPIRequest.wait, dist.iall_reduce_array
            dist._MPIRequest.wait = clock.timed(wait)  # the nonblocking all-reduces' waits
            dist.iall_reduce_array = lambda *a, **k: (clock.timed(start) if k.get("blocking") else start)(*a, **k)
            try:
                step, wrapped, numel = _step_fn(model, cap, local, clock)
                timed = tg.compile(step) if mode == "compiled" else step
                t, cpu, median = _fastest_step(timed, args.steps, args.warmup, dist.barrier, clock)
            finally:
                dist._MPIRequest.wait, dist.iall_reduce_array = wait, start
            # the phases (ms per step) of every rank; a compiled step's replays skip the laps: its wait only
            phases = dist.all_gather_object({k: v / args.steps * 1e3 for k, v in clock.totals.items()})
            row = dict(model=model, ranks=n, mode=mode, bucket_mb=cap, step=t, median=median, cpu=cpu,
                       grad_values=numel, global_batch=args.global_batch, load=os.getloadavg()[0], phases=phases)
            if n > 1:
                with ExitStack() as stack:
                    for m in wrapped:
                        stack.enter_context(m.no_sync())
                    row["step_no_sync"], row["cpu"], _ = _fastest_step(step, args.steps, 1, dist.barrier)
                flat = np.ones(numel, np.float32)
                reduce = lambda: dist.all_reduce_array(flat)  # noqa: E731
                row["bare_all_reduce"] = _fastest_step(reduce, args.steps, 1, dist.barrier)[0]
            rows.append(row)
            if dist.is_main_process():
                print(json.dumps(row), flush=True)
    return rows


def _launch(ranks, args):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("benchmarks.distributed: needs mpiexec and mpi4py (pip install -e '.[mpi]')")
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    cmd = [mpiexec] + (["--oversubscribe"] if "Open MPI" in version else []) + ["-n", str(ranks)]
    cmd += [sys.executable, "-m", "benchmarks.distributed", "--worker", "--steps", str(args.steps), "--warmup",
            str(args.warmup), "--global-batch", str(args.global_batch), "--models", *args.models,
            "--bucket-mb", *map(str, args.bucket_mb), "--modes", *args.modes]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               **{v: "1" for v in THREAD_VARS})
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if out.returncode:
        raise SystemExit(f"mpiexec -n {ranks} failed:\n{out.stdout}\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _key(r):
    return r["model"], r["ranks"], r["mode"], r["bucket_mb"]


def median_rows(rounds):
    """One row per configuration from several rounds: the median over the rounds of each number (the phases
    per rank too) and the rounds' range of the step time."""
    groups = {}
    for rows in rounds:
        for r in rows:
            groups.setdefault(_key(r), []).append(r)
    out = []
    for rs in groups.values():
        row = dict(rs[0])
        for k, v in rs[0].items():
            if isinstance(v, float):
                row[k] = float(np.median([r[k] for r in rs]))
        row["phases"] = [{k: float(np.median([r["phases"][i].get(k, 0.0) for r in rs])) for k in ph}
                         for i, ph in enumerate(rs[0]["phases"])]
        row["step_range"] = (min(r["step"] for r in rs), max(r["step"] for r in rs))
        row["rounds"] = len(rs)
        out.append(row)
    return out


def table(rows):
    one = {(r["model"], r["mode"]): r for r in rows if r["ranks"] == 1}
    lines = ["| model | mode | ranks | bucket MiB | step ms | samples/s | speedup | forward / backward / wait / "
             "optimizer ms per rank | no-sync ms | all-reduce ms | bare all-reduce ms | compute CPU ms "
             "| idle-core speedup | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = r["global_batch"] / r["step"]
        base = one.get((r["model"], r["mode"]))
        speedup = f"{base['step'] / r['step']:.2f}x" if base else "-"
        phases = " ; ".join("/".join(f"{ph.get(k, 0.0):.1f}" if k in ph else "-"
                                     for k in ("forward", "backward", "wait", "optimizer")) for ph in r["phases"])
        if r["ranks"] > 1:
            comm = max(r["step"] - r["step_no_sync"], 0.0)
            # what the step would take with a core per rank: this rank's compute plus the bare all-reduce
            ideal = f"{base['cpu'] / (r['cpu'] + r['bare_all_reduce']):.2f}x" if base else "-"
            extra = (f"{r['step_no_sync'] * 1e3:.1f} | {comm * 1e3:.1f} | {r['bare_all_reduce'] * 1e3:.1f} | "
                     f"{r['cpu'] * 1e3:.1f} | {ideal}")
        else:
            extra = f"- | - | - | {r['cpu'] * 1e3:.1f} | -"
        lines.append(f"| {r['model']} | {r['mode']} | {r['ranks']} | {r['bucket_mb']:g} | {r['step'] * 1e3:.1f} | "
                     f"{speed:.0f} | {speedup} | {phases} | {extra} | {r['load']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["vae", "gan"], choices=["vae", "gan"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"],
                        help="the step as written, and through tinygen.compile")
    parser.add_argument("--global-batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (the fastest counts)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="launches of every rank count, alternated; the table has the median over them")
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[25.0, 1.0],
                        help="bucket caps tried at more than one rank")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", help="also write the rounds' raw rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    rounds = []
    for _ in range(args.rounds):  # 1 and 2 ranks alternate, so a change of load hits both alike
        rows = []
        for ranks in args.ranks:
            rows += _launch(ranks, args)
        rounds.append(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rounds, f)
    print(table(median_rows(rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
