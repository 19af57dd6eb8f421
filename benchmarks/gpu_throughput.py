"""Training throughput on the GPU: the benchmark's models in tinygen on CuPy and in PyTorch on CUDA, side by side.

    python benchmarks/gpu_throughput.py                       # every model at batch 64, 256, 1024
    python benchmarks/gpu_throughput.py --out DIR --require-gpu
    python benchmarks/gpu_throughput.py --frameworks tinygen-compiled,torch-compile --batch-sizes 256
    python benchmarks/gpu_throughput.py --dry-run             # no GPU: the CuPy stand-in and PyTorch on the CPU

Models: the cases of ``python -m benchmarks`` (benchmarks/specs.py: mlp, mlp-adam, vae, gan, dcgan), built by the
same code as on the CPU (benchmarks/models_tinygen.py, models_torch.py) with the same initial weights and data,
moved to the device. Frameworks (the columns):
  tinygen           tinygen eagerly on device "cuda" (CuPy)
  tinygen-compiled  the same step through tinygen.compile: recorded once, then replayed (CUDA graphs)
  tinygen-replay    tinygen.compile without CUDA graphs (cuda_graph=False): each kernel called from Python
  torch             PyTorch eager on CUDA
  torch-compile     the forward and loss through torch.compile(mode="reduce-overhead") (CUDA graphs), the
                    optimizer step eager (compiling takes tens of seconds per model and batch size)
Samples/s count one batch per step (one generator and one discriminator update for the GANs).

Timing: warm-up steps first (CuPy compiles its fused kernels on first use, torch.compile its graphs), then
``--repeats`` rounds of at least ``--seconds`` each, with the device synchronised before the clock starts and before
it stops (``tinygen.synchronize()``, ``torch.cuda.synchronize()``); the median round counts. The steps never read a
value back to the host, so the host may queue work ahead, as a real training loop does.

Before timing, a check per model: three steps with fixed noise from the same weights in every framework; the losses
must agree with PyTorch eager's within 1e-3 relative (without PyTorch: with tinygen's on the CPU), else the exit code
is 1. Without a GPU the script prints why and exits 0 (with ``--require-gpu``: 2). ``--allow-standin`` measures what
there is instead (tinygen on the CPU stand-in for CuPy, PyTorch on the CPU): numbers that only show the script
works. Results go to ``--out`` (default ``$OUT`` or ``./gpu-check-out``): ``gpu_throughput.md`` and
``gpu_throughput.json``, written again after each model and batch size, so a run cut short keeps what it measured;
for tinygen.compile's steps the JSON also holds its CUDA graph launches (``graph_replays``, ``graph_error``), the
length of each run of elementwise ops it fused into one CuPy kernel (``fused_runs``; a backward's runs of nodes:
``fused_backward_runs``), its graphs and the steps it runs on the host between them on every call (``graphs``,
``host_steps``; also at the end of the report) and its ``explain()`` listing, each step marked with its graph.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a source checkout: benchmarks is a package beside tinygen
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import models_tinygen, models_torch  # noqa: E402
from benchmarks.specs import CASES, Skip, init_params, make_data, make_noise  # noqa: E402

MODELS = tuple(CASES)
FRAMEWORKS = ("tinygen", "tinygen-replay", "tinygen-compiled", "torch", "torch-compile")
CHECK_STEPS, CHECK_RTOL, CHECK_BATCH = 3, 1e-3, 64
# the ratios the report gives: (numerator, denominator)
RATIOS = (("tinygen-compiled", "torch"), ("tinygen-compiled", "torch-compile"), ("tinygen-replay", "torch"),
          ("tinygen", "torch"))


def build(fw, case, batch, noise=False):
    """fw's step for ``case`` at ``batch``: the benchmark's weights and data; fixed noise for the check."""
    model = CASES[case]["model"]
    return fw.build(case, batch, init_params(model), make_data(model, batch),
                    noise=make_noise(model, batch) if noise else None, device=fw.device)


# ---- what runs where -------------------------------------------------------------------------------------------------
class Framework:
    """One column: how to build a step (``build(case, batch, params, data, noise=, device=)``, a runner with
    ``step()``, ``sync()`` and ``loss_value()``), on which device, or why it is skipped."""

    def __init__(self, name, build=None, device=None, label=None, skip=None, gpu=False, no_gpu=None):
        self.name, self.build, self.device = name, build, device
        self.label, self.skip, self.gpu = label or name, skip, gpu
        self.no_gpu = skip if no_gpu is None else no_gpu  # why it runs without a GPU (None: it has one)


def _columns(builds, where="", **kw):
    """A framework's eager and compiled columns ({name: build}), labelled name + ``where``."""
    return [Framework(name, build, label=name + where, **kw) for name, build in builds.items()]


def find_tinygen(allow_standin):
    """(tinygen, tinygen-replay, tinygen-compiled) on device "cuda": CuPy, or (``allow_standin``) the stand-in."""
    def both(**kw):
        return _columns({"tinygen": models_tinygen.build, "tinygen-replay": models_tinygen.build_replayed,
                         "tinygen-compiled": models_tinygen.build_compiled}, **kw)
    try:
        import tinygen
        from tinygen import backend
    except ImportError as e:
        return both(skip=f"tinygen does not import ({e})"), {}
    versions = {"tinygen": getattr(tinygen, "__version__", "?")}
    reason = None
    try:
        xp = backend.array_module("cuda")
    except RuntimeError as e:
        reason = str(e)
        if not allow_standin:
            return both(skip=reason), versions
        os.environ["TINYGEN_CUDA_STANDIN"] = "1"  # read when "cuda" is first used; it failed above, so not yet
        xp = backend.array_module("cuda")
    if xp is backend.standin:
        return both(device="cuda", where=" (CuPy stand-in on the CPU)",
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
    return both(device="cuda", where="-cupy", gpu=True), versions


def _torch_compiled(case, batch, params, data, noise=None, device="cpu"):
    # CUDA graphs on a GPU; on the CPU (a stand-in run) the default mode
    mode = "reduce-overhead" if device != "cpu" else "default"
    return models_torch.build_compiled(case, batch, params, data, noise=noise, device=device, mode=mode)


def find_torch(allow_standin):
    """(torch, torch-compile) on CUDA, or with ``allow_standin`` on the CPU."""
    def both(**kw):
        return _columns({"torch": models_torch.build, "torch-compile": _torch_compiled}, **kw)
    try:
        import torch
    except ImportError as e:
        return both(skip=f"PyTorch is not installed ({e})"), {}
    versions = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # full float32 products, as CuPy's default
        torch.backends.cudnn.allow_tf32 = False
        versions["torch_gpu"] = torch.cuda.get_device_name(0)
        return both(device="cuda", where="-cuda", gpu=True), versions
    reason = "torch.cuda.is_available() is False" + ("" if torch.version.cuda else " (a CPU-only build)")
    if not allow_standin:
        return both(skip=reason), versions
    return both(device="cpu", where=" (CPU)", no_gpu=reason), versions


# ---- measuring -------------------------------------------------------------------------------------------------------
def losses(fw, case, batch=CHECK_BATCH):
    """The losses of CHECK_STEPS steps with fixed noise, from the benchmark's weights."""
    runner = build(fw, case, batch, noise=True)
    return [v for _ in range(CHECK_STEPS) for v in runner.loss_value(runner.step())]


def measure(fw, case, batch, seconds, repeats, warmup, max_steps):
    runner = build(fw, case, batch)
    step = runner.step
    for _ in range(warmup):
        step()
    runner.sync()
    rounds = []
    for _ in range(repeats):
        runner.sync()
        t0 = time.perf_counter()
        n = 0
        while n < max_steps:
            step()
            n += 1
            if time.perf_counter() - t0 >= seconds:
                break
        runner.sync()
        rounds.append((time.perf_counter() - t0) / n)
    per_step = statistics.median(rounds)
    out = {"ms_per_step": per_step * 1e3, "samples_per_s": batch / per_step, "steps_timed": n,
           "rounds_ms": [r * 1e3 for r in rounds]}
    if hasattr(step, "graph_replays"):  # tinygen.compile: did its replays launch CUDA graphs, and if not, why
        out["graph_replays"], out["graph_error"] = step.graph_replays, step.graph_error
        from tinygen.compile.fusion import FusedRun  # its fused runs: ops (nodes) per CuPy kernel
        from tinygen.compile.steps import FUSED, replay_backward
        out["fused_runs"] = [len(r.steps) for p in step._programs.values() for r, _ in p.steps
                             if isinstance(r, FusedRun)]
        out["fused_backward_runs"] = [len(s[0].nodes) for p in step._programs.values() for r, ops in p.steps
                                      if r is replay_backward for s in ops[0].steps if s[1] is FUSED]
        out.update(graph_split(step))
        out["explain"] = step.explain()  # each step of the program marked with its graph, or host
        if step.graph_error:
            print(f"  {fw.name} {case} batch {batch}: replays without CUDA graphs: {step.graph_error}")
    return out


def graph_split(step):
    """How a compiled step's programs replay on CuPy: their CUDA graphs (``graphs``) and what runs on the host
    between them on every call (``host_steps``: explain()'s text of each), the first place to look when a cell
    is slow; empty without graphs (NumPy arrays, the stand-in)."""
    graphs, host = 0, []
    for program in step._programs.values():
        if program.graphed is None:
            continue
        texts = {id(s): t for s, t in zip(program.steps, program.step_texts)}
        for kind, item in program.graphed.items:
            if kind == "host":
                host.append(" ".join(texts.get(id(item), "?").split()))
            else:
                graphs += 1
    return {"graphs": graphs, "host_steps": host}


def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(row, a, b):
    """Samples/s of framework a over b in a result row, or None when either did not run."""
    x, y = row["results"].get(a), row["results"].get(b)
    return x["samples_per_s"] / y["samples_per_s"] if x and y else None


def report(rows, frameworks, versions, checks, standin):
    shown = [fw for fw in frameworks if not fw.skip]
    names = {fw.name for fw in shown}
    ratios = [(a, b) for a, b in RATIOS if a in names and b in names]
    lines = ["# GPU training throughput: tinygen (CuPy) and PyTorch (CUDA)", ""]
    if standin:
        lines += ["**Stand-in run (no GPU): these numbers only show that the script works.**", ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for fw in frameworks:
        if fw.skip:
            lines.append(f"- {fw.name}: skipped ({fw.skip})")
        elif not fw.gpu:
            lines.append(f"- {fw.label}: not on a GPU ({fw.no_gpu})")
    lines += ["", "Samples/s (higher is better), ms per step in brackets; then the ratios of samples/s.", "",
              "| model | batch | " + " | ".join(fw.label for fw in shown) + "".join(f" | {a} / {b}" for a, b in ratios)
              + " |", "|---|---:|" + "---:|" * (len(shown) + len(ratios))]
    for r in rows:
        cells = []
        for fw in shown:
            m = r["results"].get(fw.name)
            cells.append("failed" if m is None else f"{fmt(m['samples_per_s'])} ({m['ms_per_step']:.2f} ms)")
        for a, b in ratios:
            q = ratio(r, a, b)
            cells.append("—" if q is None else f"{q:.2f}x")
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + " |")
    split = [(r["model"], r["batch"], m) for r in rows for name, m in r["results"].items()
             if name == "tinygen-compiled" and m.get("graphs")]
    if split:
        lines += ["", "tinygen-compiled: CUDA graphs a step launches, and the steps run on the host between them on "
                      "every call:"]
        lines += [f"- {model}, batch {batch}: {m['graphs']} graph(s); host: "
                  f"{'; '.join(m['host_steps']) or 'nothing'}" for model, batch, m in split]
    if checks:
        lines += ["", f"Same computation ({CHECK_STEPS} steps, fixed noise, batch {CHECK_BATCH}, the same initial "
                      f"weights; max relative loss difference, limit {CHECK_RTOL:g}):"]
        for model, per_fw in checks.items():
            for name, c in per_fw.items():
                what = c.get("error") or f"{c['max_rel_diff']:.2e} against {c['against']}"
                lines.append(f"- {model}, {name}: {what} ({'ok' if c['ok'] else 'FAILED'})")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description="tinygen on CuPy against PyTorch on CUDA: training throughput")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    p.add_argument("--batch-sizes", default="64,256,1024", help="comma-separated (default 64,256,1024)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"comma-separated, of: {', '.join(FRAMEWORKS)}")
    p.add_argument("--seconds", type=float, default=0.5, help="least time per timed round")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the median counts)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (kernel compilation)")
    p.add_argument("--max-steps", type=int, default=2000, help="most steps per round")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="folder for the results")
    p.add_argument("--no-check", action="store_true", help="skip the same-computation check")
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
    bad = [f for f in args.frameworks if f not in FRAMEWORKS]
    if bad or not args.frameworks:
        p.error(f"unknown framework(s) {bad}; expected some of {', '.join(FRAMEWORKS)}")
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


def run_checks(active, models):
    """Each framework's losses against PyTorch eager's (else tinygen's on the CPU): {model: {name: result}}."""
    reference = next((fw for fw in active if fw.name == "torch"), None)
    if reference is None:
        reference = Framework("tinygen-cpu", models_tinygen.build, "cpu")
    checks, failed = {}, False
    for model in models:
        checks[model] = {}
        try:
            ref = losses(reference, model)
        except Exception as e:  # noqa: BLE001 - reported, and the exit code says so
            traceback.print_exc()
            checks[model][reference.name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            print(f"check {model}: {reference.label} FAILED with {type(e).__name__}: {e}", flush=True)
            failed = True
            continue
        for fw in active:
            if fw is reference:
                continue
            try:
                got = losses(fw, model)
            except Skip as e:
                checks[model][fw.name] = {"ok": True, "error": f"skipped: {e}"}
                continue
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                checks[model][fw.name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                print(f"check {model}: {fw.label} FAILED with {type(e).__name__}: {e}", flush=True)
                failed = True
                continue
            diff = max(abs(u - v) / max(abs(v), 1e-6) for u, v in zip(got, ref))
            ok = diff <= CHECK_RTOL
            failed |= not ok
            checks[model][fw.name] = {"max_rel_diff": diff, "ok": ok, "against": reference.label, "losses": got,
                                      "reference_losses": ref}
            print(f"check {model}: {fw.label} max relative loss difference from {reference.label} {diff:.2e} "
                  f"({'ok' if ok else 'FAILED'})", flush=True)
    return checks, failed


def write(args, rows, frameworks, versions, checks, standin):
    """The report (returned) and the raw results into --out."""
    text = report(rows, frameworks, versions, checks, standin)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_throughput.md").write_text(text)
    (out / "gpu_throughput.json").write_text(json.dumps(
        {"standin": standin, "versions": versions, "checks": checks, "rows": rows,
         "frameworks": {fw.name: {"label": fw.label, "device": fw.device, "skipped": fw.skip} for fw in frameworks},
         "settings": {k: v for k, v in vars(args).items()}}, indent=1, default=str) + "\n")
    return text


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    frameworks = []
    versions = {"python": platform.python_version()}
    for find in (find_tinygen, find_torch):
        found, v = find(args.allow_standin)
        versions.update(v)
        for fw in found:
            if fw.name not in args.frameworks:
                fw.skip = "not asked for (--frameworks)"
            frameworks.append(fw)
    asked = [fw for fw in frameworks if fw.name in args.frameworks]
    if not any(fw.gpu for fw in asked):
        reasons = {}  # one line per reason: the two columns of a framework share theirs
        for fw in asked:
            reasons.setdefault(fw.no_gpu, []).append(fw.name)
        why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in reasons.items())
        if not args.allow_standin:
            print(f"gpu_throughput: SKIPPED, no CUDA GPU ({why})")
            return 2 if args.require_gpu else 0
        print(f"gpu_throughput: no CUDA GPU ({why}); a stand-in run")
    standin = not any(fw.gpu for fw in asked)
    active = [fw for fw in frameworks if not fw.skip]
    checks, failed = ({}, False) if args.no_check else run_checks(active, args.models)

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
                print(f"{fw.label:>42} {model:>8} batch {batch:>5}: {m['samples_per_s']:>12,.0f} samples/s "
                      f"({m['ms_per_step']:.3f} ms/step)", flush=True)
            rows.append(row)
            text = write(args, rows, frameworks, versions, checks, standin)  # so far: a run cut short keeps it
    if not rows:
        text = write(args, rows, frameworks, versions, checks, standin)
    print()
    print(text)
    print(f"written: {Path(args.out) / 'gpu_throughput.md'}, {Path(args.out) / 'gpu_throughput.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
