"""One framework's measuring process: ``python -m benchmarks.worker FRAMEWORK THREADS``.

The harness starts one per framework, with the thread-count environment (OMP_NUM_THREADS, XLA_FLAGS, ...)
already set so that it is in force before NumPy, PyTorch or JAX is imported, then sends it one JSON command
per line on stdin and reads one JSON reply per line. Everything the libraries print goes to stderr, so the
reply channel stays clean. Keeping the processes alive lets the harness interleave the frameworks' timed
chunks (A B C, B C A, ...), so that a slow spell of the machine hits every framework alike.
"""
import gc
import json
import os
import sys
import time
import traceback

from .specs import Skip

# name -> how to build its models and which dispatch benchmark it runs (None: none). Read by the harness too,
# so nothing heavy is imported at module level.
FRAMEWORKS = {
    "tinygen": dict(module="models_tinygen", build="build", dispatch="tinygen", env={"TINYGEN_NUMBA": "0"}),
    "tinygen-numba": dict(module="models_tinygen", build="build", dispatch="tinygen", env={"TINYGEN_NUMBA": "1"}),
    "tinygen-compiled": dict(module="models_tinygen", build="build_compiled", dispatch=None,
                             env={"TINYGEN_NUMBA": "1"}),
    # the same with NumPy's BLAS for the products, where tinygen-compiled takes MKL's (when the mkl package is
    # installed: tinygen/kernels/blas.py); not in the default list
    "tinygen-compiled-numpy-blas": dict(module="models_tinygen", build="build_compiled", dispatch=None,
                                        env={"TINYGEN_NUMBA": "1", "TINYGEN_BLAS": "numpy"}),
    "torch": dict(module="models_torch", build="build", dispatch="torch", env={}),
    "torch-compile": dict(module="models_torch", build="build_compiled", dispatch=None, env={}),
    "jax": dict(module="models_jax", build="build", dispatch="jax", env={}),
    "numpy": dict(module="models_numpy", build="build", dispatch="numpy", env={}),
}
# Packages whose absence makes a framework "skipped".
REQUIRES = {name: name.split("-")[0] for name in FRAMEWORKS}  # tinygen-compiled: tinygen, ...


class Worker:
    def __init__(self, framework, threads):
        self.framework, self.threads = framework, threads
        self.spec = FRAMEWORKS[framework]
        self.runner = None
        self.unavailable = None
        self._limits = None
        self.import_s = None

    # ---- start-up --------------------------------------------------------------------------------------------
    def start(self):
        """Import the framework and pin its thread counts; returns the hello message."""
        import importlib.util
        t0 = time.perf_counter()
        need = REQUIRES[self.framework]
        if importlib.util.find_spec(need) is None:
            self.unavailable = f"{need} not installed"
        else:
            try:
                __import__(need)
            except Exception as e:  # a broken install is reported, not fatal to the whole run
                self.unavailable = f"{need} failed to import: {type(e).__name__}: {e}"
        if self.framework.startswith("tinygen") and not self.unavailable:
            from tinygen import allocator
            allocator.apply_setting()  # as the tinygen command does: freed memory kept for reuse (glibc)
        if self.spec["env"].get("TINYGEN_NUMBA") == "1" and not self.unavailable:
            from .models_tinygen import numba_status
            if numba_status()[0]:  # count numba itself in the import, not in the training run's memory
                import tinygen.kernels.cpu  # noqa: F401
        self.import_s = time.perf_counter() - t0
        self._pin_threads()
        return {"hello": self.framework, "skipped": self.unavailable, "import_s": self.import_s}

    def _pin_threads(self):
        n = self.threads
        try:  # the same cores for every framework
            cpus = sorted(os.sched_getaffinity(0))
            if n < len(cpus):
                os.sched_setaffinity(0, cpus[:n])
        except (AttributeError, OSError):
            pass
        try:
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(limits=n)
        except ImportError:
            pass
        if "torch" in sys.modules:
            import torch
            torch.set_num_threads(n)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass

    # ---- commands --------------------------------------------------------------------------------------------
    def cmd_env(self):
        info = {"framework": self.framework, "pid": os.getpid(), "import_s": self.import_s,
                "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                      "NUMBA_NUM_THREADS", "XLA_FLAGS", "TINYGEN_NUMBA",
                                                      "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                      "OPENBLAS_THREAD_TIMEOUT", "TINYGEN_BLAS", "KMP_BLOCKTIME")}}
        if self.framework.startswith("tinygen") and not self.unavailable:
            from tinygen.kernels import blas
            info["tinygen_blas"] = blas.name()  # chosen (and MKL loaded) first, so the thread pools list it
            from tinygen.kernels import threads
            layer = threads.numba_layer()  # starts Numba's threads: its layer is chosen
            if layer is not None:
                info["numba_threading_layer"] = layer
        try:
            info["affinity"] = sorted(os.sched_getaffinity(0))
        except AttributeError:
            pass
        try:
            from threadpoolctl import threadpool_info
            info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture",
                                                           "num_threads", "threading_layer")}
                                   | {"library": os.path.basename(p.get("filepath", ""))}
                                   for p in threadpool_info()]
        except ImportError:
            info["threadpools"] = "threadpoolctl not installed"
        versions = {}
        for name in ("numpy", "torch", "jax", "jaxlib", "numba", "tinygen"):
            mod = sys.modules.get(name)
            if mod is not None:
                versions[name] = getattr(mod, "__version__", "?")
        info["versions"] = versions
        if "torch" in sys.modules:
            import torch
            info["torch_threads"] = torch.get_num_threads()
            info["torch_interop_threads"] = torch.get_num_interop_threads()
            config = torch.__config__.show()
            info["torch_blas"] = next((part.split("=", 1)[1] for part in config.replace(",", " ").split()
                                       if part.startswith("BLAS_INFO=")), "?")
            info["torch_cpu_capability"] = next((line.split(":", 1)[1].strip() for line in config.splitlines()
                                                 if "CPU capability" in line), "?")
        if self.framework.startswith("tinygen") and not self.unavailable:
            from .models_tinygen import numba_status
            info["tinygen_numba"] = numba_status()[1]
            from tinygen import allocator
            info["tinygen_keeps_freed_memory"] = allocator.freed_memory_kept()
        return info

    def _build(self, case, batch, seed, noise=False):
        from .specs import CASES, init_params, make_data, make_noise
        if self.unavailable:
            raise Skip(self.unavailable)
        self.runner = None
        gc.collect()
        model = CASES[case]["model"]
        module = __import__(f"benchmarks.{self.spec['module']}", fromlist=["build"])
        build = getattr(module, self.spec["build"])
        return build(case, batch, init_params(model, seed), make_data(model, batch),
                     seed=seed, noise=make_noise(model, batch) if noise else None)

    def cmd_setup(self, case, batch, seed=0, warmup_s=0.5, chunk_s=0.3, min_warmup=3):
        """Build the model, time the first step (compilation), warm up, and size a timed chunk."""
        runner = self._build(case, batch, seed)
        t0 = time.perf_counter()
        runner.step()
        runner.sync()
        first = time.perf_counter() - t0
        steps, t0 = 1, time.perf_counter()
        while steps < min_warmup or time.perf_counter() - t0 < warmup_s:
            runner.step()
            steps += 1
        runner.sync()
        # per-step time from a short sample after the warm-up
        k, t0 = 2, time.perf_counter()
        for _ in range(k):
            runner.step()
        runner.sync()
        per_step = (time.perf_counter() - t0) / k
        self.steps_per_chunk = max(1, round(chunk_s / per_step))
        self.runner = runner
        return {"first_step_s": first, "warmup_steps": steps + k, "est_step_s": per_step,
                "steps_per_chunk": self.steps_per_chunk}

    def cmd_chunk(self):
        runner, n = self.runner, self.steps_per_chunk
        step = runner.step
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            step()
        runner.sync()
        t1, c1 = time.perf_counter(), time.process_time()
        # CPU time of all this process's threads: on a busy machine it shows what the wall time would be
        # without the competition (for single-threaded runs; spinning BLAS threads inflate it)
        return {"steps": n, "seconds": t1 - t0, "cpu_seconds": c1 - c0}

    def cmd_check(self, case, batch, steps=3, seed=0):
        """Losses of the first steps with fixed noise, to compare frameworks number for number."""
        runner = self._build(case, batch, seed, noise=True)
        losses = [runner.loss_value(runner.step()) for _ in range(steps)]
        self.runner = None
        return {"losses": losses}

    def cmd_dispatch(self, quick=False):
        from . import dispatch
        if self.unavailable:
            raise Skip(self.unavailable)
        if self.spec["dispatch"] is None:
            raise Skip("no dispatch benchmark for this framework")
        if self.framework == "tinygen-numba":
            from .models_tinygen import numba_status
            ok, why = numba_status()
            if not ok:
                raise Skip(f"n/a: {why}")
        res = dispatch.RUNNERS[self.spec["dispatch"]](quick)
        return res if self.spec["dispatch"] == "jax" else {self.framework: res}

    def cmd_gemm(self, sizes, min_s=0.2):
        """float32 GEMM throughput at the pinned thread count: NumPy's BLAS (the machine's usable peak), or in a
        PyTorch worker PyTorch's own BLAS (MKL in the x86 wheels), which its Linear layers use."""
        import numpy as np
        rng = np.random.default_rng(0)
        out = []
        for n in sizes:
            a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
            c = np.empty((n, n), np.float32)
            if self.spec["module"] == "models_torch":
                import torch
                a, b, c = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)

                def mm():
                    torch.mm(a, b, out=c)
            else:
                def mm():
                    np.matmul(a, b, out=c)
            mm()
            times = []
            t_end = time.perf_counter() + min_s
            while len(times) < 3 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                mm()
                times.append(time.perf_counter() - t0)
            best = min(times)
            out.append({"n": n, "best_s": best, "runs": len(times), "gflops": 2 * n ** 3 / best / 1e9})
        return {"sizes": out, "peak_gflops": max(r["gflops"] for r in out)}

    def cmd_rss(self):
        import resource
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        info = {"peak_rss_mb": peak_kb / 1024}
        try:
            import psutil
            info["rss_mb"] = psutil.Process().memory_info().rss / 2 ** 20
        except ImportError:
            pass
        return info

    def cmd_traced(self, start=False, reset=False):
        """Memory that tracemalloc traces: Python's objects and NumPy's arrays (NumPy reports its allocations to
        it; PyTorch's and JAX's allocators it does not see). ``start``: begin tracing (before the model is built,
        so that what it holds is traced). Returns MB now and at the peak since tracing began or was last reset;
        ``reset``: then reset the peak."""
        import tracemalloc
        if start:
            tracemalloc.start()
        if not tracemalloc.is_tracing():
            raise RuntimeError("traced: tracing was not started (send start=True first)")
        current, peak = tracemalloc.get_traced_memory()
        if reset:
            tracemalloc.reset_peak()
        return {"traced_mb": current / 2 ** 20, "traced_peak_mb": peak / 2 ** 20}

    def cmd_profile(self, case, batch, steps=20, top=25, seed=0):
        """cProfile of ``steps`` training steps (after a warm-up): top functions by total and cumulative time."""
        import cProfile
        import io
        import pstats
        runner = self._build(case, batch, seed)
        for _ in range(3):
            runner.step()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(steps):
            runner.step()
        prof.disable()
        wall = time.perf_counter() - t0
        self.runner = None
        texts = {}
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats(key).print_stats(top)
            texts[key] = _trim_pstats(buf.getvalue())
        calls = sum(v[1] for v in pstats.Stats(prof).stats.values())
        return {"steps": steps, "wall_s": wall, "function_calls_per_step": calls / steps, **texts}

    def cmd_breakdown(self, case, batch, rounds=5, round_s=0.25):
        """tinygen.compile's step split into its parts (step_bench.breakdown): per-step milliseconds of the
        matrix products, the convolutions' copies, the other kernels, the optimizer update and the rest (Python).
        The timers stay installed in this process: run it in a fresh worker."""
        if (self.spec["module"], self.spec["build"]) != ("models_tinygen", "build_compiled"):
            raise ValueError(f"breakdown splits a tinygen-compiled step, not {self.framework}'s")
        if self.unavailable:
            raise Skip(self.unavailable)
        from .step_bench import REST, breakdown
        plain, timed, parts = breakdown(case, batch, compiled=True, rounds=rounds, round_s=round_s)
        parts = {k: v for k, v in parts.items() if v > 0}
        parts[REST] = max(0.0, timed - sum(parts.values()))
        return {"step_ms": plain * 1e3, "timed_step_ms": timed * 1e3,
                "parts_ms": {k: v * 1e3 for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}}

    # ---- loop ------------------------------------------------------------------------------------------------
    def serve(self, inp, out):
        for line in inp:
            if not line.strip():
                continue
            msg = json.loads(line)
            cmd = msg.pop("cmd")
            if cmd == "quit":
                break
            try:
                reply = {"ok": getattr(self, "cmd_" + cmd)(**msg)}
            except Skip as e:
                reply = {"skipped": str(e)}
            except Exception as e:
                tb = traceback.format_exc()
                if self.framework == "torch-compile":  # compile failures are reported as skipped, with the reason
                    reply = {"skipped": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
                             if str(e) else f"torch.compile failed: {type(e).__name__}", "trace": tb}
                else:
                    reply = {"error": f"{type(e).__name__}: {e}"[:500], "trace": tb}
                print(tb, file=sys.stderr, flush=True)
                self.runner = None
            out.write(json.dumps(reply, default=_jsonable) + "\n")
            out.flush()


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _trim_pstats(text):
    """Keep pstats' table (not its header), with file names relative to the repository or site-packages."""
    import site
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    for prefix in [repo] + sorted(site.getsitepackages() + [site.getusersitepackages()], key=len, reverse=True):
        text = text.replace(prefix.rstrip(os.sep) + os.sep, "" if prefix == repo else "site-packages/")
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("ncalls"):
            return "\n".join(lines[i:])
    return "\n".join(lines)


def main(argv):
    framework, threads = argv[0], int(argv[1])
    out = os.fdopen(os.dup(1), "w")  # the reply channel ...
    os.dup2(2, 1)                     # ... and everything printed by the libraries goes to stderr
    sys.stdout = sys.stderr
    worker = Worker(framework, threads)
    out.write(json.dumps(worker.start()) + "\n")
    out.flush()
    worker.serve(sys.stdin, out)


if __name__ == "__main__":
    main(sys.argv[1:])
