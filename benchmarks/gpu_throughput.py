"""Training throughput on the GPU: tinygen on device "cuda" (CuPy) against PyTorch on CUDA, side by side.

    python benchmarks/gpu_throughput.py                       # batch 64, 256, 1024; both models
    python benchmarks/gpu_throughput.py --out DIR --require-gpu
    python benchmarks/gpu_throughput.py --dry-run             # no GPU: the CuPy stand-in and PyTorch on the CPU

Models (float32, the same initial weights in both frameworks):
  vae  PyTorch's example VAE: fc1 784->400 ReLU, fc21/fc22 400->20, fc3 20->400 ReLU, fc4 400->784; Bernoulli
       decoder (BCE with logits, summed) + the analytic KL; Adam 1e-3. Noise drawn on the device every step.
  gan  PyTorch-GAN's MLP GAN: G 100-128-256-512-1024-784 (LeakyReLU 0.2, BatchNorm1d(eps=0.8) after every hidden
       layer but the first, tanh), D 784-512-256-1 (LeakyReLU 0.2), BCE with logits; per iteration one G step
       then one D step on the same fakes; Adam 2e-4 (0.5, 0.999). Samples/s counts one batch per iteration.

Timing: warm-up steps first (CuPy compiles its fused kernels on first use), then ``--repeats`` rounds of at least
``--seconds`` each, with the device synchronised before the clock starts and before it stops
(``cupy.cuda.Device().synchronize()``, ``torch.cuda.synchronize()``); the median round counts. The steps
never read a value back to the host, so the host may queue work ahead, as a real training loop does.

Before timing, a check: three steps with fixed noise from the same weights in both frameworks; the losses must
agree within 1e-3 relative (else the exit code is 1). Without a GPU the script prints why and exits 0 (with
``--require-gpu``: 2). ``--allow-standin`` measures what there is instead (tinygen on the CPU stand-in for CuPy,
PyTorch on the CPU): numbers that only show the script works. Results go to ``--out`` (default ``$OUT`` or
``./gpu-check-out``): ``gpu_throughput.md`` and ``gpu_throughput.json``.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

MODELS = ("vae", "gan")
LATENT = 100
GEN_LAYERS = [(100, 128), (128, 256), (256, 512), (512, 1024), (1024, 784)]
DIS_LAYERS = [(784, 512), (512, 256), (256, 1)]
VAE_LAYERS = {"fc1": (784, 400), "fc21": (400, 20), "fc22": (400, 20), "fc3": (20, 400), "fc4": (400, 784)}
CHECK_STEPS, CHECK_RTOL = 3, 1e-3


# ---- shared inputs -------------------------------------------------------------------------------------------------
def initial_weights(model, seed=0):
    """PyTorch's default Linear initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn once with NumPy."""
    import numpy as np
    g = np.random.default_rng(seed)

    def linear(fi, fo):
        bound = 1.0 / math.sqrt(fi)
        return (g.uniform(-bound, bound, (fo, fi)).astype(np.float32),
                g.uniform(-bound, bound, fo).astype(np.float32))
    if model == "vae":
        return {name: linear(fi, fo) for name, (fi, fo) in VAE_LAYERS.items()}
    return {"gen": [linear(fi, fo) for fi, fo in GEN_LAYERS], "dis": [linear(fi, fo) for fi, fo in DIS_LAYERS]}


def inputs(model, batch, seed=1):
    """The real batch (VAE: pixels in [0, 1]; GAN: in [-1, 1]) and fixed noise for the check."""
    import numpy as np
    g = np.random.default_rng(seed)
    if model == "vae":
        x = g.random((batch, 784), dtype=np.float32)
        noise = [g.standard_normal((batch, 20), dtype=np.float32) for _ in range(CHECK_STEPS)]
    else:
        x = g.uniform(-1.0, 1.0, (batch, 784)).astype(np.float32)
        noise = [g.standard_normal((batch, LATENT), dtype=np.float32) for _ in range(CHECK_STEPS)]
    return x, noise


# ---- tinygen ---------------------------------------------------------------------------------------------------------
def tinygen_step(model, batch, device, weights, x_host, noise=None):
    """A training step of ``model`` in tinygen on ``device``; returns step() (it returns the loss tensors).
    noise: a list of fixed noise arrays, one per call (the check), else noise is drawn on the device."""
    import tinygen
    from tinygen import nn, optim
    from tinygen.nn import functional as F

    def linear(w, b):
        layer = nn.Linear(w.shape[1], w.shape[0])
        layer.weight.data[...] = w
        layer.bias.data[...] = b
        return layer

    x = tinygen.tensor(x_host, device=device)
    fixed = iter([tinygen.tensor(n, device=device) for n in noise]) if noise is not None else None
    bce = F.binary_cross_entropy_with_logits
    if model == "vae":
        layers = {name: linear(*weights[name]).to(device) for name in VAE_LAYERS}
        opt = optim.Adam([p for m in layers.values() for p in m.parameters()], lr=1e-3)
        fc1, fc21, fc22, fc3, fc4 = (layers[k] for k in VAE_LAYERS)

        def step():
            opt.zero_grad()
            h = fc1(x).relu()
            mu, logvar = fc21(h), fc22(h)
            eps = next(fixed) if fixed is not None else tinygen.randn(batch, 20, device=device)
            z = mu + eps * (logvar * 0.5).exp()
            logits = fc4(fc3(z).relu())
            loss = bce(logits, x, reduction="sum") - 0.5 * (1 + logvar - mu * mu - logvar.exp()).sum()
            loss.backward()
            opt.step()
            return (loss,)
        return step

    mods = []
    for i, (w, b) in enumerate(weights["gen"][:-1]):
        mods.append(linear(w, b))
        if i > 0:
            mods.append(nn.BatchNorm1d(w.shape[0], eps=0.8))
        mods.append(nn.LeakyReLU(0.2))
    gen = nn.Sequential(*mods, linear(*weights["gen"][-1]), nn.Tanh()).to(device)
    mods = []
    for i, (w, b) in enumerate(weights["dis"]):
        mods.append(linear(w, b))
        if i < len(weights["dis"]) - 1:
            mods.append(nn.LeakyReLU(0.2))
    dis = nn.Sequential(*mods).to(device)
    opt_g = optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = optim.Adam(dis.parameters(), lr=2e-4, betas=(0.5, 0.999))
    valid, fake = tinygen.ones(batch, 1, device=device), tinygen.zeros(batch, 1, device=device)

    def step():
        z = next(fixed) if fixed is not None else tinygen.randn(batch, LATENT, device=device)
        opt_g.zero_grad()
        imgs = gen(z)
        g_loss = bce(dis(imgs), valid)
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad()
        d_loss = (bce(dis(x), valid) + bce(dis(imgs.detach()), fake)) * 0.5
        d_loss.backward()
        opt_d.step()
        return g_loss, d_loss
    return step


# ---- PyTorch ---------------------------------------------------------------------------------------------------------
def torch_step(model, batch, device, weights, x_host, noise=None):
    import torch
    from torch import nn
    from torch.nn import functional as F

    def linear(w, b):
        layer = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
        return layer

    x = torch.from_numpy(x_host).to(device)
    fixed = iter([torch.from_numpy(n).to(device) for n in noise]) if noise is not None else None
    bce = F.binary_cross_entropy_with_logits
    if model == "vae":
        layers = {name: linear(*weights[name]).to(device) for name in VAE_LAYERS}
        opt = torch.optim.Adam([p for m in layers.values() for p in m.parameters()], lr=1e-3)
        fc1, fc21, fc22, fc3, fc4 = (layers[k] for k in VAE_LAYERS)

        def step():
            opt.zero_grad(set_to_none=True)
            h = F.relu(fc1(x))
            mu, logvar = fc21(h), fc22(h)
            eps = next(fixed) if fixed is not None else torch.randn(batch, 20, device=device)
            z = mu + eps * torch.exp(0.5 * logvar)
            logits = fc4(F.relu(fc3(z)))
            loss = bce(logits, x, reduction="sum") - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss.backward()
            opt.step()
            return (loss,)
        return step

    mods = []
    for i, (w, b) in enumerate(weights["gen"][:-1]):
        mods.append(linear(w, b))
        if i > 0:
            mods.append(nn.BatchNorm1d(w.shape[0], eps=0.8))
        mods.append(nn.LeakyReLU(0.2))
    gen = nn.Sequential(*mods, linear(*weights["gen"][-1]), nn.Tanh()).to(device)
    mods = []
    for i, (w, b) in enumerate(weights["dis"]):
        mods.append(linear(w, b))
        if i < len(weights["dis"]) - 1:
            mods.append(nn.LeakyReLU(0.2))
    dis = nn.Sequential(*mods).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(dis.parameters(), lr=2e-4, betas=(0.5, 0.999))
    valid, fake = torch.ones(batch, 1, device=device), torch.zeros(batch, 1, device=device)

    def step():
        z = next(fixed) if fixed is not None else torch.randn(batch, LATENT, device=device)
        opt_g.zero_grad(set_to_none=True)
        imgs = gen(z)
        g_loss = bce(dis(imgs), valid)
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        d_loss = (bce(dis(x), valid) + bce(dis(imgs.detach()), fake)) / 2
        d_loss.backward()
        opt_d.step()
        return g_loss, d_loss
    return step


# ---- what runs where -------------------------------------------------------------------------------------------------
class Framework:
    """One column: how to build a step, where it runs, how to wait for the device, or why it is skipped."""

    def __init__(self, name, build=None, device=None, sync=None, label=None, skip=None, gpu=False, no_gpu=None):
        self.name, self.build, self.device, self.sync = name, build, device, sync
        self.label, self.skip, self.gpu = label or name, skip, gpu
        self.no_gpu = skip if no_gpu is None else no_gpu  # why it runs without a GPU (None: it has one)


def find_tinygen(allow_standin):
    try:
        import tinygen
        from tinygen import backend
    except ImportError as e:
        return Framework("tinygen", skip=f"tinygen does not import ({e})"), {}
    versions = {"tinygen": getattr(tinygen, "__version__", "?")}
    reason = None
    try:
        xp = backend.array_module("cuda")
    except RuntimeError as e:
        reason = str(e)
        if not allow_standin:
            return Framework("tinygen", skip=reason), versions
        os.environ["TINYGEN_CUDA_STANDIN"] = "1"  # read when "cuda" is first used; it failed above, so not yet
        xp = backend.array_module("cuda")
    if xp is backend.standin:
        return Framework("tinygen", tinygen_step, "cuda", lambda: None, "tinygen (CuPy stand-in on the CPU)",
                         no_gpu=reason or "TINYGEN_CUDA_STANDIN=1"), versions
    import cupy
    versions["cupy"] = cupy.__version__
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        versions["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        versions["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as e:  # noqa: BLE001 - the name is for the report only
        versions["gpu"] = f"? ({e})"

    def sync():
        cupy.cuda.Device().synchronize()
    return Framework("tinygen", tinygen_step, "cuda", sync, "tinygen-cupy", gpu=True), versions


def find_torch(allow_standin):
    try:
        import torch
    except ImportError as e:
        return Framework("torch", skip=f"PyTorch is not installed ({e})"), {}
    versions = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # full float32 matmuls, as CuPy's default
        versions["torch_gpu"] = torch.cuda.get_device_name(0)
        return Framework("torch", torch_step, "cuda", torch.cuda.synchronize, "torch-cuda", gpu=True), versions
    reason = "torch.cuda.is_available() is False" + ("" if torch.version.cuda else " (a CPU-only build)")
    if not allow_standin:
        return Framework("torch", skip=reason), versions
    return Framework("torch", torch_step, "cpu", lambda: None, "torch (CPU)", no_gpu=reason), versions


# ---- measuring -------------------------------------------------------------------------------------------------------
def check(fw_a, fw_b, model, batch=64):
    """Losses of CHECK_STEPS steps with fixed noise, from the same weights: (max relative difference, a, b)."""
    weights = initial_weights(model)
    x, noise = inputs(model, batch)
    out = []
    for fw in (fw_a, fw_b):
        step = fw.build(model, batch, fw.device, weights, x, noise)
        out.append([float(v.item()) for _ in range(CHECK_STEPS) for v in step()])
    a, b = out
    diff = max(abs(u - v) / max(abs(v), 1e-6) for u, v in zip(a, b))
    return diff, a, b


def measure(fw, model, batch, seconds, repeats, warmup, max_steps):
    step = fw.build(model, batch, fw.device, initial_weights(model), inputs(model, batch)[0])
    for _ in range(warmup):
        step()
    fw.sync()
    rounds = []
    for _ in range(repeats):
        fw.sync()
        t0 = time.perf_counter()
        n = 0
        while n < max_steps:
            step()
            n += 1
            if time.perf_counter() - t0 >= seconds:
                break
        fw.sync()
        rounds.append((time.perf_counter() - t0) / n)
    per_step = statistics.median(rounds)
    return {"ms_per_step": per_step * 1e3, "samples_per_s": batch / per_step, "steps_timed": n,
            "rounds_ms": [r * 1e3 for r in rounds]}


def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def report(rows, frameworks, versions, checks, standin):
    names = [fw.label for fw in frameworks]
    lines = ["# GPU training throughput: tinygen (CuPy) and PyTorch (CUDA)", ""]
    if standin:
        lines += ["**Stand-in run (no GPU): these numbers only show that the script works.**", ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for fw in frameworks:
        if fw.skip:
            lines.append(f"- {fw.name}: skipped ({fw.skip})")
        elif not fw.gpu:
            lines.append(f"- {fw.label}: not on a GPU ({fw.no_gpu})")
    lines += ["", "Samples/s (higher is better); ms per step in brackets; last column: tinygen / torch.", "",
              "| model | batch | " + " | ".join(names) + " | ratio |", "|---|---:|" + "---:|" * (len(names) + 1)]
    for r in rows:
        cells = []
        for fw in frameworks:
            m = r["results"].get(fw.name)
            cells.append("skipped" if m is None else f"{fmt(m['samples_per_s'])} ({m['ms_per_step']:.2f} ms)")
        t, p = r["results"].get("tinygen"), r["results"].get("torch")
        ratio = f"{t['samples_per_s'] / p['samples_per_s']:.2f}x" if t and p else "—"
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + f" | {ratio} |")
    if checks:
        lines += ["", f"Same computation ({CHECK_STEPS} steps, fixed noise, batch 64, the same initial weights; "
                      f"max relative loss difference, limit {CHECK_RTOL:g}):"]
        for model, c in checks.items():
            lines.append(f"- {model}: {c['max_rel_diff']:.2e} against {c.get('against', '?')} "
                         f"({'ok' if c['ok'] else 'FAILED'})")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description="tinygen on CuPy against PyTorch on CUDA: training throughput")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: vae,gan")
    p.add_argument("--batch-sizes", default="64,256,1024")
    p.add_argument("--frameworks", default="tinygen,torch", help="comma-separated: tinygen,torch")
    p.add_argument("--seconds", type=float, default=0.5, help="least time per timed round")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the median counts)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (kernel compilation)")
    p.add_argument("--max-steps", type=int, default=2000, help="most steps per round")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="folder for the results")
    p.add_argument("--require-gpu", action="store_true", help="exit 2 when there is no GPU (instead of 0)")
    p.add_argument("--allow-standin", action="store_true",
                   help="without a GPU, run tinygen on the CuPy stand-in and PyTorch on the CPU")
    p.add_argument("--quick", action="store_true", help="one short round, one warm-up step")
    p.add_argument("--dry-run", action="store_true", help="--allow-standin --quick: check that the script runs")
    args = p.parse_args(argv)
    if args.dry_run:
        args.allow_standin = args.quick = True
    if args.quick:
        args.seconds, args.repeats, args.warmup, args.max_steps = 0.0, 1, 1, 2
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in args.frameworks if f not in ("tinygen", "torch")]
    if bad or not args.frameworks:
        p.error(f"unknown framework(s) {bad}; expected some of tinygen, torch")
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"unknown model(s) {bad}; expected some of {', '.join(MODELS)}")
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 2:
        p.error("--batch-sizes needs integers >= 2 (BatchNorm needs two samples)")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:  # run as a script from a source checkout
        sys.path.insert(0, str(root))
    frameworks = []
    versions = {"python": platform.python_version()}
    for name, find in (("tinygen", find_tinygen), ("torch", find_torch)):
        if name not in args.frameworks:
            frameworks.append(Framework(name, skip="not asked for (--frameworks)"))
            continue
        fw, v = find(args.allow_standin)
        frameworks.append(fw)
        versions.update(v)
    if not any(fw.gpu for fw in frameworks):
        why = "; ".join(f"{fw.name}: {fw.no_gpu}" for fw in frameworks)
        if not args.allow_standin:
            print(f"gpu_throughput: SKIPPED, no CUDA GPU ({why})")
            return 2 if args.require_gpu else 0
        print(f"gpu_throughput: no CUDA GPU ({why}); a stand-in run")
    standin = not any(fw.gpu for fw in frameworks)
    active = [fw for fw in frameworks if not fw.skip]
    failed = False

    checks = {}
    reference = active[1] if len(active) == 2 else None
    if reference is None and active and active[0].name == "tinygen":  # no PyTorch: check against the CPU
        reference = Framework("tinygen-cpu", tinygen_step, "cpu", lambda: None)
    if reference is not None:
        for model in args.models:
            try:
                diff, a, b = check(active[0], reference, model)
            except Exception as e:  # noqa: BLE001 - reported, and the exit code says so
                traceback.print_exc()
                print(f"check {model}: FAILED with {type(e).__name__}: {e}", flush=True)
                checks[model] = {"max_rel_diff": float("nan"), "ok": False, "error": f"{type(e).__name__}: {e}"}
                failed = True
                continue
            ok = diff <= CHECK_RTOL
            failed |= not ok
            checks[model] = {"max_rel_diff": diff, "ok": ok, "against": reference.label, active[0].name: a,
                             reference.name: b}
            print(f"check {model}: max relative loss difference from {reference.label} {diff:.2e} "
                  f"({'ok' if ok else 'FAILED'})", flush=True)

    rows = []
    for model in args.models:
        for batch in args.batch_sizes:
            row = {"model": model, "batch": batch, "results": {}, "errors": {}}
            for fw in active:
                try:
                    m = measure(fw, model, batch, args.seconds, args.repeats, args.warmup, args.max_steps)
                except Exception as e:  # noqa: BLE001 - one failed cell must not hide the others
                    traceback.print_exc()
                    row["errors"][fw.name] = f"{type(e).__name__}: {e}"
                    print(f"{fw.label} {model} batch {batch}: FAILED with {type(e).__name__}: {e}", flush=True)
                    failed = True
                    continue
                row["results"][fw.name] = m
                print(f"{fw.label:>34} {model} batch {batch:>5}: {m['samples_per_s']:>12,.0f} samples/s "
                      f"({m['ms_per_step']:.3f} ms/step)", flush=True)
            rows.append(row)

    text = report(rows, frameworks, versions, checks, standin)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_throughput.md").write_text(text)
    (out / "gpu_throughput.json").write_text(json.dumps(
        {"standin": standin, "versions": versions, "checks": checks, "rows": rows,
         "frameworks": {fw.name: {"label": fw.label, "device": fw.device, "skipped": fw.skip} for fw in frameworks},
         "settings": {k: v for k, v in vars(args).items()}}, indent=1, default=str) + "\n")
    print()
    print(text)
    print(f"written: {out / 'gpu_throughput.md'}, {out / 'gpu_throughput.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
