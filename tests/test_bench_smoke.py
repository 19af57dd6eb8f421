"""Smoke test of the benchmark suite: a quick run on one small model and the dispatch benchmark must produce
results.md and results.json with real numbers (it does not judge the numbers: benchmarks are not tests)."""
import importlib.util
import json
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from conftest import HAS_TORCH  # noqa: E402

import benchmarks  # noqa: E402
from benchmarks import specs  # noqa: E402


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
