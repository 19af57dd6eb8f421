"""Smoke test of the benchmark suite: a quick run on one small model and the dispatch benchmark must produce
results.md and results.json with real numbers (it does not judge the numbers: benchmarks are not tests)."""
import contextlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from conftest import HAS_TORCH  # noqa: E402

import benchmarks  # noqa: E402
from benchmarks import specs  # noqa: E402
from tinygen import config, kernels  # noqa: E402


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_run_writes_numbers(tmp_path):
    frameworks = ["tinygen", "numpy"] + (["torch"] if HAS_TORCH else [])
    out = tmp_path / "bench"
    rc = benchmarks.main(["--quick", "--models", "dispatch,mlp", "--frameworks", ",".join(frameworks),
                          "--batch-sizes", "16", "--out", str(out), "--no-chart",
                          "--memory-frameworks", "tinygen,numpy"])
    assert rc == 0, (out / "results.md").read_text() if (out / "results.md").exists() else "no results.md"
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    from tinygen.kernels import blas
    assert f"its matrix products: {blas.name()} (tinygen.kernels.blas)" in md  # the BLAS tinygen's worker used

    # dispatch: microseconds per op for every framework that ran, for every benchmark that applies
    for fw in frameworks:
        d = res["dispatch"][fw]
        assert d["status"] == "ok", d
        assert _positive(d["benches"]["add"]["us_per_op"])
        assert _positive(d["benches"]["chain_fwd_bwd"]["us_per_op"])
    assert res["dispatch"]["numpy"]["benches"]["add_rec"] == {"status": "n/a"}
    assert _positive(res["dispatch"]["tinygen"]["benches"]["add_rec"]["us_per_op"])

    # throughput: numpy always measures; tinygen measures or says why not (never a failure)
    mlp = res["throughput"]["mlp"]["16"]
    s = mlp["numpy"]["samples_per_s"]
    assert all(_positive(s[k]) for k in ("median", "min", "max")) and s["min"] <= s["median"] <= s["max"]
    assert all(_positive(c["seconds"]) and c["steps"] >= 1 for c in mlp["numpy"]["chunks"])
    for fw in frameworks:
        assert mlp[fw]["status"] == "ok" or mlp[fw]["status"].startswith("skipped"), mlp[fw]["status"]
    assert _positive(mlp["numpy"]["gflops_per_s"])
    assert _positive(res["gemm"]["peak_gflops"])

    # the frameworks computed the same losses as the hand-written NumPy step
    for fw, r in res["check"]["mlp"].items():
        if r["status"] == "ok":
            assert r["agrees"], (fw, r)

    # memory and environment
    mem = {r["framework"]: r for r in res["memory"]}
    assert mem["numpy"]["peak_rss_mb"] >= mem["numpy"]["baseline_rss_mb"] > 0
    for fw in ("numpy", "tinygen"):  # traced: the model's arrays (3 layers of 784 x 512 and more) at least
        assert mem[fw]["traced_peak_mb"] >= mem[fw]["traced_before_mb"] > 1.5, mem[fw]
    env = res["environment"]
    assert env["cpu_model"] and env["threads"] == 2
    assert "OPENBLAS_CORETYPE" in env and "OPENBLAS_L2_SIZE" in env
    pools = env["frameworks"]["numpy"]["threadpools"]
    if importlib.util.find_spec("threadpoolctl") is not None:  # the BLAS vendor and kernel are reported
        assert any(p["internal_api"] and p["num_threads"] == 2 for p in pools), pools
    else:
        assert "not installed" in pools

    # the Markdown report carries the same numbers
    assert "## Per-op dispatch overhead" in md and "## Training throughput" in md
    assert "| mlp | numpy | " in md and "| traced at start (MB) | traced peak (MB) |" in md
    assert f"{res['dispatch']['numpy']['benches']['add']['us_per_op']:.2f}" in md


def test_unknown_framework_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        benchmarks.main(["--quick", "--frameworks", "numpy,nosuchthing", "--out", str(tmp_path)])


def test_flop_formula():
    # MLP: 3 x forward GEMMs less the first layer's input gradient
    m = 16
    fwd = [2 * m * 784 * 512, 2 * m * 512 * 512, 2 * m * 512 * 10]
    assert specs.flops_per_step("mlp", m) == 3 * sum(fwd) - fwd[0]
    assert specs.flops_per_step("gan", 64) == 4 * specs.flops_per_step("gan", 16)


# ---- quality at equal steps --------------------------------------------------------------------------------------
QUALITY_TINY = ["--quality-only", "--frameworks", "tinygen,torch", "--no-chart", "--quality-vae-epochs", "1",
                "--quality-gan-steps", "3", "--quality-seeds", "1", "--quality-samples", "64"]


def _mnist_folder(folder, n_train=256, n_test=200):
    """A small MNIST folder cut from the bundled test split (the harness reads $TINYGEN_DATA)."""
    from test_data_mnist import write_idx

    from tinygen.data import mnist
    images, labels = mnist("test")
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:n_train])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:n_train])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[n_train:n_train + n_test])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[n_train:n_train + n_test])
    return images, labels


def _run_quality(out, models):
    rc = benchmarks.main(QUALITY_TINY + ["--models", models, "--out", str(out)])
    return rc, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install torch==2.13.0)")
def test_quality_tiny_run_reports_both_frameworks(tmp_path, monkeypatch):
    from tinygen.models import classifier
    data, cache = tmp_path / "mnist", tmp_path / "cache"
    images, labels = _mnist_folder(data)
    monkeypatch.setenv("TINYGEN_DATA", str(data))
    monkeypatch.setenv("TINYGEN_CACHE", str(cache))
    classifier.train_classifier(epochs=1, hidden=[32], train_set=(images[:1000], labels[:1000]),
                                test_set=(images[:100], labels[:100]), save=cache / classifier.CACHE_FILE, quiet=True)
    rc, res, md = _run_quality(tmp_path / "bench", "vae,gan")
    q = res["quality"]
    assert rc == 0 and q["status"] == "ok", q
    assert "throughput" not in res and "dispatch" not in res  # --quality-only

    vae = q["parts"]["vae"]
    assert vae["status"] == "ok" and vae["num_train"] == 256 and vae["num_test"] == 200
    tg, th = vae["tinygen"]["test_loss"], vae["torch"]["test_loss"]
    assert len(tg) == len(th) == 1 and all(_positive(x) for x in tg + th)
    assert vae["difference"] == pytest.approx(tg[0] - th[0])
    # same weights, same batches: one short epoch leaves the two within a few nats of each other
    assert abs(vae["difference"]) < 0.05 * th[0]

    gan = q["parts"]["gan"]
    assert gan["status"] == "ok" and gan["steps"] == 3 and gan["samples"] == 64
    for fw in ("tinygen", "torch"):
        (row,) = gan[fw]
        for mode in ("running_stats", "batch_stats"):
            m = row[mode]
            assert m["num_samples"] == 64 and _positive(m["frechet_distance"])
        # the two BatchNorm modes draw different samples; scoring one set twice would make them equal
        assert row["running_stats"]["frechet_distance"] != row["batch_stats"]["frechet_distance"]
    # each framework's generator is scored on its own samples (a mix-up would give equal numbers)
    assert gan["tinygen"][0]["running_stats"]["frechet_distance"] != \
        gan["torch"][0]["running_stats"]["frechet_distance"]
    assert "## Quality at equal steps" in md and "### VAE" in md and "### GAN" in md
    assert f"{tg[0]:.3f} | {th[0]:.3f}" in md
    assert f"{gan['torch'][0]['running_stats']['frechet_distance']:.2f}" in md


def test_quality_skipped_without_data_or_classifier(tmp_path, monkeypatch):
    # no classifier: the GAN part says so (the data check passes: a training set is there)
    data = tmp_path / "mnist"
    _mnist_folder(data, n_train=64, n_test=64)
    monkeypatch.setenv("TINYGEN_DATA", str(data))
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path / "empty-cache"))
    rc, res, md = _run_quality(tmp_path / "a", "gan")
    gan = res["quality"]["parts"]["gan"]
    if not HAS_TORCH:
        assert gan["status"].startswith("skipped: PyTorch is not installed")
    else:
        assert gan["status"].startswith("skipped: no cached MNIST classifier"), gan
        assert "empty-cache" in gan["status"]
    assert rc == 0 and "GAN: skipped" in md

    # no MNIST training set: both parts skipped with that reason
    monkeypatch.setenv("TINYGEN_DATA", str(tmp_path / "nothing-here"))
    rc, res, md = _run_quality(tmp_path / "b", "vae,gan")
    for part in ("vae", "gan"):
        status = res["quality"]["parts"][part]["status"]
        assert status.startswith("skipped: " + ("the MNIST training set was not found" if HAS_TORCH
                                                else "PyTorch is not installed")), status
    assert rc == 0 and "VAE: skipped" in md


def test_quality_off_by_default_and_needs_both_frameworks(tmp_path):
    from benchmarks import harness
    args = harness.parse_args(["--quick", "--models", "vae"])
    assert not args.quality
    res = harness.measure_quality(["vae"], args, str(tmp_path))
    assert res["status"].startswith("not measured")
    args = harness.parse_args(["--quality", "--frameworks", "tinygen,numpy", "--models", "vae,gan"])
    assert harness.measure_quality(["vae", "gan"], args, str(tmp_path))["status"].startswith(
        "skipped: torch is not among --frameworks")
    args = harness.parse_args(["--quality", "--models", "mlp"])
    assert harness.measure_quality(["mlp"], args, str(tmp_path))["status"].startswith("skipped: neither vae nor gan")


def test_combine_takes_the_median_of_the_runs_ratios(tmp_path, capsys):
    from benchmarks import combine

    def run(folder, tinygen, torch):
        cell = {"tinygen-numba": {"status": "ok", "samples_per_s": {"median": tinygen}},
                "torch": {"status": "ok", "samples_per_s": {"median": torch}}, "jax": {"status": "skipped"}}
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps({"throughput": {"mlp": {"16": cell}}}))
        return str(tmp_path / folder)
    folders = [run("a", 90, 100), run("b", 120, 100), run("c", 110, 100)]
    assert combine.main(folders) == 0
    out = capsys.readouterr().out
    assert "0.90 / 1.20 / 1.10 → **1.10x**" in out  # the median, not the mean (1.07)
    assert "| mlp | n/a |" in out  # against jax, which did not run
    with pytest.raises(SystemExit, match="no results.json"):
        combine.main([str(tmp_path / "missing")])


def test_profile_follows_the_headline_variant():
    from benchmarks import harness

    def cell(median):
        return {"status": "ok", "samples_per_s": {"median": median}} if median else {"status": "skipped: n/a"}
    both = {"tinygen": cell(80), "tinygen-numba": cell(95), "torch": cell(100)}
    assert harness.profiled_variant(["tinygen", "tinygen-numba", "torch"], both) == "tinygen-numba"
    no_numba = {"tinygen": cell(80), "tinygen-numba": cell(None), "torch": cell(100)}
    assert harness.profiled_variant(["tinygen", "tinygen-numba", "torch"], no_numba) == "tinygen"
    assert harness.profiled_variant(["torch"], both) is None


def _cell(median):
    return {"status": "ok", "samples_per_s": {"median": median}} if median else {"status": "skipped: n/a"}


def test_short_cells_are_the_compiled_cells_below_a_goal():
    from benchmarks import harness
    tp = {"mlp": {"16": {"tinygen-compiled": _cell(70), "jax": _cell(100), "torch": _cell(40)},  # jax 0.7 < 0.8
                  "64": {"tinygen-compiled": _cell(80), "jax": _cell(100), "torch": _cell(10)}},  # exactly 0.8: met
          "vae": {"16": {"tinygen-compiled": _cell(140), "jax": _cell(None), "torch": _cell(100)},  # 1.4 < 1.5
                  "64": {"tinygen-compiled": _cell(140), "torch": _cell(100)}},  # 1.5x torch is a batch-16 goal
          "gan": {"16": {"tinygen-compiled": _cell(None), "jax": _cell(100), "torch": _cell(100)}},  # did not run
          "dcgan": {"64": {"tinygen-compiled": _cell(90), "torch": _cell(100), "jax": _cell(1000)}}}  # torch only
    tp["mlp"]["64"]["tinygen-compiled-numpy-blas"] = _cell(60)  # the OpenBLAS column: 0.6x jax, judged too
    cells = {(fw, case, b): missed for fw, case, b, missed in harness.short_cells(tp)}
    mkl = "tinygen-compiled"
    assert set(cells) == {(mkl, "mlp", 16), (mkl, "vae", 16), (mkl, "dcgan", 64),
                          ("tinygen-compiled-numpy-blas", "mlp", 64)}
    assert [(a, round(r, 2), g) for a, r, g in cells[(mkl, "mlp", 16)]] == [("jax", 0.7, 0.8)]  # 1.75x torch: met
    assert [(a, round(r, 2), g) for a, r, g in cells[(mkl, "vae", 16)]] == [("torch", 1.4, 1.5)]
    assert [(a, round(r, 2), g) for a, r, g in cells[(mkl, "dcgan", 64)]] == [("torch", 0.9, 1.0)]
    assert [(a, round(r, 2), g) for a, r, g in cells[("tinygen-compiled-numpy-blas", "mlp", 64)]] == [
        ("jax", 0.6, 0.8)]


def test_breakdown_of_a_short_cell_in_the_report(tmp_path):
    """A short cell's compiled step is split into its parts in a worker, and the report's table carries them."""
    from benchmarks import harness
    pool = harness.Pool(1, str(tmp_path))
    try:
        rows = harness.run_breakdowns(pool, [("tinygen-compiled", "mlp", 8, [("jax", 0.5, 0.8)]),
                                             ("tinygen-compiled-numpy-blas", "mlp", 8, [("jax", 0.4, 0.8)])],
                                      harness.Settings(quick=True))
    finally:
        pool.close()
    row, numpy_row = rows
    assert row["status"] == "ok" and numpy_row["status"] == "ok", rows
    assert (row["framework"], numpy_row["framework"]) == ("tinygen-compiled", "tinygen-compiled-numpy-blas")
    parts = row["parts_ms"]
    assert parts["matrix products (gemm.mm)"] > 0 and parts["optimizer update"] > 0 and _positive(row["step_ms"])
    assert abs(sum(parts.values()) - row["timed_step_ms"]) < 1e-6 * row["timed_step_ms"] + 1e-9  # the rest closes it
    assert list(parts.values()) == sorted(parts.values(), reverse=True)
    tp = {"mlp": {"8": {"tinygen-compiled": _cell(800), "jax": _cell(1600)}}}
    md = "\n".join(harness.breakdown_markdown(rows, tp))
    largest, ms = next(iter(parts.items()))
    assert f"| tinygen-compiled | mlp | 8 | jax 0.50x < 0.8x | tinygen-compiled 10.00, jax 5.00 | " \
           f"{row['step_ms']:.2f} | **{largest}: {ms:.2f} (" in md, md
    assert f"| tinygen-compiled-numpy-blas | mlp | 8 | jax 0.40x < 0.8x | tinygen-compiled 10.00, jax 5.00 | " \
           f"{numpy_row['step_ms']:.2f} | **" in md, md
    assert harness.breakdown_markdown([], tp) == []


def test_breakdown_is_refused_for_a_step_that_is_not_compiled(tmp_path):
    """Only a compiled column's step can be split into its parts: the eager one's worker says so."""
    from benchmarks import harness
    pool = harness.Pool(1, str(tmp_path))
    try:
        w = pool.fresh("tinygen-numba")
        reply = w.request("breakdown", timeout=120, case="mlp", batch=8, rounds=1, round_s=0.01)
        w.close()
    finally:
        pool.close()
    status = harness._status(reply)
    assert status.startswith("failed:") and "not tinygen-numba's" in status, status


def test_openblas_kernel_variables_kept_or_removed(monkeypatch):
    from benchmarks import harness
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    kept = harness.worker_env("numpy", 2)
    assert kept["OPENBLAS_CORETYPE"] == "Haswell" and kept["OPENBLAS_L2_SIZE"] == "512"
    removed = harness.worker_env("numpy", 2, openblas_env="unset")
    assert "OPENBLAS_CORETYPE" not in removed and "OPENBLAS_L2_SIZE" not in removed
    assert removed["OPENBLAS_NUM_THREADS"] == "2"  # the rest of the environment is as before


def test_the_numpy_blas_column_is_the_compiled_step_with_numpys_blas(monkeypatch):
    """tinygen-compiled-numpy-blas differs from tinygen-compiled only in TINYGEN_BLAS=numpy; tinygen-compiled keeps
    the user's choice; MKL's spin (blas.KMP_BLOCKTIME ms) ends before the next chunk starts, as OpenBLAS's does."""
    from benchmarks import harness
    from tinygen.kernels import blas
    monkeypatch.delenv("TINYGEN_BLAS", raising=False)
    compiled, numpy_blas = (harness.worker_env(f, 2) for f in ("tinygen-compiled", "tinygen-compiled-numpy-blas"))
    assert numpy_blas.pop("TINYGEN_BLAS") == "numpy" and "TINYGEN_BLAS" not in compiled
    assert compiled == numpy_blas
    monkeypatch.setenv("TINYGEN_BLAS", "mkl")
    assert harness.worker_env("tinygen-compiled", 2)["TINYGEN_BLAS"] == "mkl"
    assert harness.SETTLE_S >= int(blas.KMP_BLOCKTIME) / 1000


def test_the_bench_extra_installs_what_the_default_tinygen_columns_run_on():
    """``pip install -e ".[bench]"`` (benchmarks/README.md) must give the default columns what the reported numbers
    ran on: Numba where a column turns its kernels on (else its cells are skipped), MKL where a column leaves the
    BLAS to tinygen's choice (else its products are OpenBLAS's, the numbers of another column)."""
    tomllib = pytest.importorskip("tomllib")
    from benchmarks import harness, worker
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    bench = {re.split(r"[<>=;\s]", req, maxsplit=1)[0] for req in extras["bench"]}
    needed = set()
    for name in harness.DEFAULT_FRAMEWORKS:
        env = worker.FRAMEWORKS[name]["env"]
        if name.startswith("tinygen") and env.get("TINYGEN_NUMBA") == "1":
            needed.add("numba")
            if "TINYGEN_BLAS" not in env:
                needed.add("mkl")
    assert needed == {"numba", "mkl"}  # the default list has Numba columns on tinygen's choice of BLAS
    assert needed <= bench, f"the bench extra lacks {sorted(needed - bench)}"


def test_workers_spin_2_to_the_24_unless_told_and_each_chunk_starts_after_a_pause(monkeypatch):
    """OpenBLAS's workers stay awake through a step (2^24 cycles, about 6 ms) and the harness idles SETTLE_S (longer)
    before every timed chunk, so one framework's spin never runs into another's chunk."""
    from benchmarks import harness
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    assert harness.worker_env("numpy", 2)["OPENBLAS_THREAD_TIMEOUT"] == "24"
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    assert harness.worker_env("numpy", 2)["OPENBLAS_THREAD_TIMEOUT"] == "20"  # yours wins
    assert harness.SETTLE_S >= 2 ** 24 / 2e9  # longer than the spin at 2 GHz
    naps = []
    monkeypatch.setattr(harness.time, "sleep", naps.append)

    class Worker:
        hello = {"ok": {}}

        def request(self, what, **kwargs):
            return {"ok": {"steps": 2, "seconds": 0.1, "cpu_seconds": 0.1, "steps_per_chunk": 2, "first_step_s": 0.0}}

    class Pool:
        def get(self, fw):
            return Worker()
    st = harness.Settings(quick=True)
    harness.run_throughput(Pool(), "mlp", 4, ["numpy", "torch"], st, lambda *a: None)
    assert naps == [harness.SETTLE_S] * (2 * st.repeats)


@pytest.mark.slow
def test_report_says_what_the_openblas_kernel_variables_cost(tmp_path, monkeypatch):
    # OPENBLAS_L2_SIZE is honoured on every architecture (a CORETYPE name is not), so it stands for both here
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    common = ["--quick", "--models", "mlp", "--frameworks", "numpy", "--batch-sizes", "16", "--no-chart",
              "--no-memory", "--no-check"]
    assert benchmarks.main(common + ["--out", str(tmp_path / "keep")]) == 0
    res = json.loads((tmp_path / "keep" / "results.json").read_text())
    native = res["gemm_native"]
    assert native["status"] == "ok" and _positive(native["peak_gflops"]) and native["architecture"]
    md = (tmp_path / "keep" / "results.md").read_text()
    assert f"{native['peak_gflops']:.0f} GFLOP/s" in md and "--openblas-env unset" in md

    assert benchmarks.main(common + ["--out", str(tmp_path / "unset"), "--openblas-env", "unset"]) == 0
    res = json.loads((tmp_path / "unset" / "results.json").read_text())
    assert "gemm_native" not in res and res["environment"]["openblas_env"] == "unset"
    assert "removed in every framework's process" in (tmp_path / "unset" / "results.md").read_text()


@pytest.mark.parametrize("args", [["--model", "mlp", "--batch", "8", "--steps", "2", "--rounds", "1"],
                                  ["--profile", "--model", "mlp", "--batch", "8"],
                                  ["--case", "mlp-adam", "--batch", "8", "--steps", "2", "--rounds", "1"],
                                  ["--case", "vae", "--batch", "8", "--steps", "2", "--rounds", "1", "--eager",
                                   "--clock", "cpu"],
                                  ["--case", "dcgan", "--batch", "2", "--steps", "1", "--rounds", "1"],
                                  ["--case", "mlp", "--batch", "16", "--steps", "2", "--rounds", "1", "--pairs",
                                   "--threads", "2"],
                                  ["--case", "gan", "--batch", "8", "--steps", "2", "--rounds", "1", "--compare",
                                   "prune"],
                                  ["--case", "gan", "--batch", "8", "--steps", "2", "--rounds", "1", "--compare",
                                   "reuse"],
                                  ["--case", "gan", "--batch", "8", "--steps", "2", "--rounds", "1", "--compare",
                                   "inplace", "--eager"],
                                  ["--case", "mlp", "--batch", "8", "--steps", "2", "--rounds", "1", "--compare",
                                   "into-gradient"],
                                  ["--case", "dcgan", "--batch", "2", "--steps", "1", "--rounds", "1", "--compare",
                                   "parts"]])
def test_step_bench_runs_as_a_module(args):
    """benchmarks/step_bench.py (whole training steps, kernels off vs on) runs from the checkout root."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_bench", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    if "--pairs" in args or "--compare" in args:
        from benchmarks.step_bench import SWITCHES
        assert out.returncode == 0, out.stderr
        labels = SWITCHES["pairs" if "--pairs" in args else args[args.index("--compare") + 1]]
        times = dict(re.findall(rf"  ({'|'.join(labels)})\s+([0-9.]+) ms", out.stdout))
        assert set(times) == set(labels) and "speedup" in out.stdout, out.stdout
        assert all(float(t) > 0 for t in times.values())
    elif "--case" in args:
        assert out.returncode == 0, out.stderr
        rows = [re.match(r"  (.+?)\s+([0-9.]+) ms", line) for line in out.stdout.splitlines()[1:]]
        parts = {m.group(1): float(m.group(2)) for m in rows if m}
        assert {"matrix products (gemm.mm)", "optimizer update", "Python and the rest"} <= set(parts), out.stdout
        assert parts["matrix products (gemm.mm)"] > 0 and parts["optimizer update"] > 0, out.stdout
        if "dcgan" in args:  # the convolutions' own work, their products counted as products
            assert parts["convolutions without their products (im2col, ...)"] > 0, out.stdout
    elif "--profile" in args:
        assert out.returncode == 0, out.stderr
        assert "own CPU time per step by category" in out.stdout
    elif kernels.enabled():
        assert out.returncode == 0, out.stderr
        assert "speedup" in out.stdout
    else:
        assert out.returncode == 1 and "Numba kernels are off" in out.stdout


def test_step_bench_compares_mkls_two_callers():
    """--compare mkl-call times MKL's gemm called through ctypes against called from compiled code; where MKL is not
    called from compiled code (no mkl package, Numba's kernels off) it says so and exits."""
    from tinygen.kernels import blas
    from benchmarks.step_bench import SWITCHES
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_bench", "--case", "mlp", "--batch", "16", "--steps",
                          "2", "--rounds", "1", "--compare", "mkl-call"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    if blas.caller() != "compiled":  # this environment's: the command runs in it too
        assert out.returncode != 0 and "--compare mkl-call: MKL's gemm is not called from compiled code" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    times = dict(re.findall(rf"  ({'|'.join(SWITCHES['mkl-call'])})\s+([0-9.]+) ms", out.stdout))
    assert set(times) == set(SWITCHES["mkl-call"]) and all(float(t) > 0 for t in times.values()), out.stdout


def test_step_bench_times_each_step_of_the_compiled_program():
    """--program times the compiled step's program by kind of step (ops' forwards, recorded calls, the backward
    plan and, under it, its nodes); it needs a compiled --case."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_bench", "--case", "mlp", "--batch", "4", "--steps",
                          "2", "--rounds", "1", "--program"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = dict(re.findall(r"^  (\S.*?)\s+([0-9.]+) ms", out.stdout, re.M))
    nodes = re.findall(r"^    (\S+)\s+[0-9.]+ ms", out.stdout, re.M)  # the backward plan's, indented under it
    assert {"step without timers", "step with timers", "backward plan", "call Optimizer.step"} <= set(rows), out.stdout
    assert any(k.startswith("forward Linear") for k in rows) and any(n.startswith("Linear") for n in nodes), out.stdout
    assert float(rows["backward plan"]) > 0, out.stdout
    for wrong in (["--program"], ["--case", "mlp", "--eager", "--program"]):
        bad = subprocess.run([sys.executable, "-m", "benchmarks.step_bench", *wrong], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
        assert bad.returncode != 0 and "--program needs --case, compiled" in bad.stderr


@pytest.mark.parametrize("setting", ["64", "0"])
def test_step_bench_compares_blas_with_the_short_products_loops(setting):
    """--compare short times a step with every product on BLAS against the short ones on gemm_short.py's loops;
    where the loops are not in use (TINYGEN_MM_SHORT_MAX_ROWS 0, Numba off) it says so and exits."""
    from benchmarks.step_bench import SWITCHES
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_bench", "--case", "mlp", "--batch", "16", "--steps",
                          "2", "--rounds", "1", "--compare", "short"], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, TINYGEN_MM_SHORT_MAX_ROWS=setting))
    if setting == "0" or not config.get("TINYGEN_NUMBA") or importlib.util.find_spec("numba") is None:
        assert out.returncode != 0 and "--compare short: gemm_short.py's loops are not in use here" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    times = dict(re.findall(rf"  ({'|'.join(SWITCHES['short'])})\s+([0-9.]+) ms", out.stdout))
    assert set(times) == set(SWITCHES["short"]) and all(float(t) > 0 for t in times.values()), out.stdout


def test_step_bench_timers_move_nested_products_out_of_their_caller():
    from benchmarks.step_bench import _Timers
    now = [0.0]
    timers = _Timers(clock=lambda: now[0])

    def spend(seconds, *calls):
        def fn():
            now[0] += seconds
            for call in calls:
                call()
        return fn
    product = timers.wrap(spend(2.0), "products", nested=True)
    kernel = timers.wrap(spend(1.0, product), "kernels")
    conv = timers.wrap(spend(4.0, product, kernel), "convolutions")
    product(), conv()  # timers off: nothing counts
    assert timers.total == {"products": 0.0, "kernels": 0.0, "convolutions": 0.0}
    timers.on = True
    product()
    conv()  # 4 s of its own, a product (2 s), a kernel (1 s, whose own product is 2 s more)
    kernel()
    # a product inside another category moves to "products"; a kernel inside a convolution stays in it
    assert timers.total == {"products": 2.0 + 4.0 + 2.0, "kernels": 1.0, "convolutions": 5.0}
    assert timers.open == []  # every timed call closed its frame

    def on_a_pool_thread():  # a convolution's part on tinygen's pool: its product runs on another thread
        worker = threading.Thread(target=product)
        worker.start()
        worker.join()
    threaded_conv = timers.wrap(spend(4.0, on_a_pool_thread), "convolutions")
    threaded_conv()
    # the other thread's product is not timed on its own: it counts in the convolution's wall time
    assert timers.total == {"products": 8.0, "kernels": 1.0, "convolutions": 5.0 + 4.0 + 2.0}
    assert timers.open == []


def test_kernel_bench_table_compares_each_used_kernel_with_its_reference():
    from benchmarks import kernel_bench
    if not kernels.enabled():
        pytest.skip("the Numba kernels are off: kernel_bench has nothing to compare")
    rows = kernel_bench.table(np.float32, quick=True)
    benched = {name.partition("[")[0] for name, *_ in rows}  # "sgd_step[momentum]": the kernel, then its options
    assert benched >= {"relu_fwd", "adam_step", "sgd_step", "rmsprop_step", "bias_act_fwd", "cross_entropy"}
    assert all(_positive(t_ref) and _positive(t_kernel) for _, _, _, t_ref, t_kernel, _ in rows)


def test_step_bench_products_accounts_for_every_product_of_the_step():
    """--products: each product's FLOPs times its calls per step add up to the step's matrix FLOPs
    (benchmarks/specs.py), and every timing is a positive number."""
    from benchmarks.specs import flops_per_step
    from benchmarks.step_bench import products
    rows = products("mlp", 8, steps=2, repeats=2)
    assert rows and all(ms > 0 and warm > 0 and cold > 0 for _, _, _, ms, warm, cold, _ in rows)
    assert sum(calls * gflop for _, _, calls, _, _, _, gflop in rows) * 1e9 == pytest.approx(flops_per_step("mlp", 8))
    assert [r[2] * r[3] for r in rows] == sorted((r[2] * r[3] for r in rows), reverse=True)  # most time first


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compile_bench_times_a_chain_unfused_and_fused(device, monkeypatch, capsys):
    """benchmarks/compile_bench.py --fusion-only (the GPU check runs it with --device cuda): on "cuda" the
    stand-in for CuPy without a GPU, so only the flow is checked."""
    from benchmarks import compile_bench
    from tinygen import backend
    monkeypatch.setattr(compile_bench, "FUSION_SHAPES", ((4, 5), (8, 3)))
    monkeypatch.setattr(compile_bench, "FUSION_ELEMENTS", 100)  # 10 calls a round
    with contextlib.ExitStack() as stack:
        if device == "cuda" and not backend.is_available("cuda"):
            stack.enter_context(backend.cuda_standin())
        assert compile_bench.main(["--fusion-only", "--device", device]) == 0
    out = capsys.readouterr().out
    if device == "cpu" and not kernels.enabled():
        assert "Numba is off" in out
        return
    lines = out.splitlines()
    assert lines[0].startswith(f"(a * b + c) * 0.5 - a compiled on {device}")
    assert lines[3].startswith(f"((a * b + c) * 0.5 - a).sum() compiled on {device}")
    assert lines[6].startswith(f"(((w * a) * b + c) * 0.5 - c).sum().backward() compiled on {device}")
    rows = [line.split() for line in lines[1:3] + lines[4:6] + lines[7:]]
    assert [row[:2] for row in rows] == [["(4,", "5)"], ["(8,", "3)"]] * 3
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compile_bench_times_a_gan_with_its_networks_compiled_apart(device, monkeypatch, capsys):
    """benchmarks/compile_bench.py --forward-only (the GPU check runs it with --device cuda): a row per batch size
    with eager's time and the two compiled ways against it; on "cuda" the stand-in for CuPy without a GPU."""
    from benchmarks import compile_bench
    from tinygen import backend
    monkeypatch.setattr(compile_bench, "FORWARD_BATCHES", (4, 6))
    monkeypatch.setattr(compile_bench, "FORWARD_ROUNDS", 2)
    monkeypatch.setattr(compile_bench, "FORWARD_SECONDS", 0.001)
    with contextlib.ExitStack() as stack:
        if device == "cuda" and not backend.is_available("cuda"):
            stack.enter_context(backend.cuda_standin())
        assert compile_bench.main(["--forward-only", "--device", device]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"GAN step on {device} with the networks compiled apart")
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["4", "6"] and all(len(row) == 6 for row in rows)
    assert all(float(row[1]) > 0 and row[3].startswith("(") and row[5].endswith("x)") for row in rows)


def test_traced_memory_run_stops_at_the_first_failed_reply_and_closes_its_worker():
    # the harness's side of the traced memory run: the numbers from the replies in order, or the first failure's
    # status (nothing asked after it), and the fresh worker closed either way
    from benchmarks import harness

    class FakeWorker:
        framework = "tinygen-numba"

        def __init__(self, fail=None):
            self.fail, self.asked, self.closed = fail, [], False

        def request(self, cmd, timeout=None, **kwargs):
            self.asked.append(cmd)
            if cmd == self.fail:
                return {"error": f"{cmd} broke"}
            if cmd == "traced":
                return {"ok": {"traced_mb": 10.0 * len(self.asked), "traced_peak_mb": 11.0 * len(self.asked)}}
            return {"ok": {}}

        def close(self):
            self.closed = True

    st = harness.Settings(quick=True)
    w = FakeWorker()
    assert harness._traced_memory(w, "mlp", 16, st) == {"traced_before_mb": 30.0, "traced_peak_mb": 77.0}
    assert w.asked == ["traced", "setup", "traced", "chunk", "chunk", "chunk", "traced"] and w.closed
    w = FakeWorker(fail="setup")
    row = harness._traced_memory(w, "mlp", 16, st)
    assert set(row) == {"traced_status"} and "setup broke" in row["traced_status"]
    assert w.asked == ["traced", "setup"] and w.closed


def test_worker_traced_memory_counts_arrays_and_resets_its_peak():
    # the memory runs' traced column: NumPy's arrays are counted, the peak is reset on request, and a worker that
    # was not told to start tracing says so instead of reporting zeros
    import tracemalloc

    import numpy as np
    from benchmarks.worker import Worker
    w = Worker("numpy", 1)
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already tracing in this process")
    with pytest.raises(RuntimeError, match="tracing was not started"):
        w.cmd_traced()
    try:
        first = w.cmd_traced(start=True)
        big = np.ones(2 << 20)  # 16 MiB, gone before the reset
        del big
        a = np.ones(1 << 20)  # 8 MiB
        held = w.cmd_traced(reset=True)
        del a
        after = w.cmd_traced()
    finally:
        tracemalloc.stop()
    assert held["traced_mb"] - first["traced_mb"] > 7.9 and held["traced_peak_mb"] - first["traced_mb"] > 15.9
    assert after["traced_mb"] < held["traced_mb"] - 7.9  # the array is gone, ...
    assert held["traced_mb"] <= after["traced_peak_mb"] < first["traced_mb"] + 12  # ... the peak since the reset


@pytest.mark.parametrize("case", ["vae", "mlp-adam", "gan"])
def test_fixed_cost_times_each_framework_on_the_narrowed_model(case):
    """benchmarks/fixed_cost.py runs from the checkout root and times each framework on the narrowed model."""
    frameworks = "tinygen-compiled,tinygen-numba" + (",jax" if importlib.util.find_spec("jax") else "")
    out = subprocess.run([sys.executable, "-m", "benchmarks.fixed_cost", "--case", case, "--batch", "4", "--rounds",
                          "2", "--steps", "3", "--frameworks", frameworks], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"  (\S+)\s+median\s+([0-9.]+)\s+fastest round\s+([0-9.]+)", out.stdout)
    skipped = set(re.findall(r"  (\S+)\s+skipped: needs Numba's kernels", out.stdout))
    tinygen = {"tinygen-compiled", "tinygen-numba"}  # the harness runs them with Numba's kernels
    assert skipped == (set() if config.get("TINYGEN_NUMBA") else tinygen), out.stdout
    assert {fw for fw, _, _ in rows} == set(frameworks.split(",")) - skipped, out.stdout
    assert all(0 < float(fastest) <= float(median) for _, median, fastest in rows), out.stdout


def test_fixed_cost_narrows_every_width_but_the_fixed_ones_and_restores_the_specs():
    from benchmarks import fixed_cost
    before = (list(specs.MLP_LAYERS), list(specs.VAE_LAYERS), list(specs.GEN_LAYERS), dict(specs.GEN_BN),
              list(specs.DIS_LAYERS))
    with pytest.raises(RuntimeError, match="inside"):
        with fixed_cost.narrowed("gan", 8):
            assert specs.GEN_LAYERS[0] == ("g1", specs.LATENT, 8) and specs.GEN_LAYERS[-1] == ("g5", 8, 8)
            assert set(specs.GEN_BN.values()) == {8} and specs.DIS_LAYERS[-1] == ("d3", 8, 1)
            params = specs.init_params("gan", 0)
            assert params["g2_bn"]["weight"].shape == (8,) and params["d1"]["weight"].shape == (8, 8)
            raise RuntimeError("an error inside")
    with fixed_cost.narrowed("vae", 8):
        assert [layer[1:] for layer in specs.VAE_LAYERS] == [(8, 8), (8, 20), (8, 20), (20, 8), (8, 8)]
    with fixed_cost.narrowed("mlp", 8):
        assert specs.MLP_LAYERS[-1] == ("fc3", 8, 10)
    assert before == (specs.MLP_LAYERS, specs.VAE_LAYERS, specs.GEN_LAYERS, specs.GEN_BN, specs.DIS_LAYERS)
