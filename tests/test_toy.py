"""2-D mode-collapse benchmarks: the mixtures' geometry and the metrics on real, collapsed and noisy samples."""
import math

import numpy as np
import pytest

import tinygen
from tinygen import data


def test_ring_geometry():
    c = data.ring.centres
    assert c.shape == (8, 2) and data.ring.std == 0.02
    np.testing.assert_allclose(np.hypot(c[:, 0], c[:, 1]), 2.0)
    np.testing.assert_allclose(np.arctan2(c[:, 1], c[:, 0]) % (2 * np.pi), 2 * np.pi * np.arange(8) / 8, atol=1e-12)


def test_grid_geometry():
    c = data.grid.centres
    assert c.shape == (25, 2) and data.grid.std == 0.05
    assert {tuple(p) for p in c} == {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}


@pytest.mark.parametrize("mix", [data.ring, data.grid], ids=["ring", "grid"])
def test_samples_have_the_right_mixture_statistics(mix):
    x, modes = mix(20000, np.random.default_rng(0), return_modes=True)
    assert x.shape == (20000, 2) and x.dtype == np.float32
    k = mix.num_modes
    freq = np.bincount(modes, minlength=k) / len(modes)
    np.testing.assert_allclose(freq, 1 / k, atol=5 * math.sqrt((1 / k) / 20000))  # equal weights
    resid = x - mix.centres[modes]
    np.testing.assert_allclose(resid.std(axis=0), mix.std, rtol=0.03)
    np.testing.assert_allclose(resid.mean(axis=0), 0.0, atol=5 * mix.std / math.sqrt(20000))


def test_sampling_is_seeded():
    np.testing.assert_array_equal(data.ring(100, 3), data.ring(100, np.random.default_rng(3)))
    tinygen.manual_seed(1)
    a = data.grid(50)
    tinygen.manual_seed(1)
    np.testing.assert_array_equal(a, data.grid(50))
    assert not np.array_equal(data.ring(100, 3), data.ring(100, 4))


@pytest.mark.parametrize("mix", [data.ring, data.grid], ids=["ring", "grid"])
def test_real_samples_capture_every_mode(mix):
    m = mix.metrics(mix(data.EVAL_SAMPLES, np.random.default_rng(1)))
    assert m["modes"] == mix.num_modes
    assert m["high_quality"] > 0.98  # 3 std in 2-D holds 98.9% of a Gaussian's mass
    assert m["reverse_kl"] < 0.02
    assert m["counts"].shape == (mix.num_modes,) and m["counts"].sum() == round(m["high_quality"] * 2500)
    assert m["num_samples"] == 2500


def test_collapsed_samples_have_one_mode_and_max_kl():
    rng = np.random.default_rng(2)
    x = data.ring.centres[3] + 0.02 * rng.standard_normal((2500, 2))
    m = data.mode_metrics(x, data.ring.centres, data.ring.std)
    assert m["modes"] == 1 and m["counts"][3] == m["counts"].sum()
    assert m["high_quality"] > 0.98
    assert m["reverse_kl"] == pytest.approx(math.log(8))


def test_partial_collapse_counts_modes_and_kl_in_between():
    rng = np.random.default_rng(3)
    modes = rng.integers(0, 4, size=2500) * 2  # modes 0, 2, 4, 6
    x = data.ring.centres[modes] + 0.02 * rng.standard_normal((2500, 2))
    m = data.ring.metrics(x)
    assert m["modes"] == 4
    assert m["reverse_kl"] == pytest.approx(math.log(2), abs=0.01)


def test_noise_is_low_quality():
    x = np.random.default_rng(4).uniform(-3, 3, size=(2500, 2))
    m = data.ring.metrics(x)
    # 8 discs of radius 0.06 cover 0.25% of the 6x6 square.
    assert m["high_quality"] < 0.02
    m_grid = data.grid.metrics(np.random.default_rng(5).uniform(-5, 5, size=(2500, 2)))
    assert m_grid["high_quality"] < 0.05 and m_grid["modes"] <= 5


def test_one_percent_threshold_for_a_mode():
    c, s = data.ring.centres, data.ring.std
    x = np.concatenate([np.repeat(c[:1], 2475, axis=0), np.repeat(c[1:2], 25, axis=0)])  # 25 = 1% of 2500
    assert data.mode_metrics(x, c, s)["modes"] == 2
    x = np.concatenate([np.repeat(c[:1], 2476, axis=0), np.repeat(c[1:2], 24, axis=0)])
    assert data.mode_metrics(x, c, s)["modes"] == 1


def test_no_high_quality_samples_and_non_finite_samples():
    m = data.ring.metrics(np.full((10, 2), 100.0))
    assert m["high_quality"] == 0.0 and m["modes"] == 0 and m["reverse_kl"] == math.inf
    x = data.ring(100, 0).astype(np.float64)
    x[:10] = np.nan
    m = data.ring.metrics(x)
    assert m["high_quality"] <= 0.9


def test_tensor_samples(device):
    x = tinygen.tensor(data.ring(500, 0), device=device, requires_grad=True)
    assert data.ring.metrics(x)["modes"] == 8


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"samples must have shape \(N, 2\), got \(10, 3\)"):
        data.ring.metrics(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="centres"):
        data.mode_metrics(np.zeros((10, 2)), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="std must be positive"):
        data.GaussianMixture2D([[0, 0]], std=0)


def _benchmark_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "gan_toy_benchmark.py"
    spec = importlib.util.spec_from_file_location("gan_toy_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_toy_benchmark_writes_the_table_and_strict_json(tmp_path):
    import json
    bench = _benchmark_script()
    tiny = ["latent=4", "g_hidden=[8]", "d_hidden=[8]", "batch_size=32", "toy_samples=320", "n_critic=1"]
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    assert bench.main(["--data", "ring", "--losses", "wgan-gp", "hinge", "--seeds", "0", "1", "--steps", "2",
                       "--samples", "200", "--set", *tiny, "--md", str(md), "--json", str(js)]) == 0
    d = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert [(r["loss"], r["seed"]) for r in d["rows"]] == [("hinge", 0), ("hinge", 1), ("wgan-gp", 0), ("wgan-gp", 1)]
    for r in d["rows"]:
        assert r["num_modes"] == 8 and r["steps"] == 2 and len(r["counts"]) == 8
        assert r["config"]["g_hidden"] == [8] and r["config"]["n_critic"] == 1
    s = {x["loss"]: x for x in d["summary"]}
    assert s["hinge"]["modes"] == [r["modes"] for r in d["rows"][:2]]
    assert s["hinge"]["modes_mean"] == pytest.approx(sum(s["hinge"]["modes"]) / 2)
    lines = md.read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| ring | wgan-gp |") and lines[3].startswith("| ring | hinge |")


def test_toy_benchmark_verdicts():
    bench = _benchmark_script()
    row = dict(data="ring", loss="x", num_modes=8, seeds=[0, 1])
    assert bench._verdict(dict(row, modes=[8, 8], high_quality=[0.9, 0.9], all_modes=2)) == "no"
    assert bench._verdict(dict(row, modes=[1, 2], high_quality=[0.9, 0.9], all_modes=0)) == "collapse (every seed)"
    assert bench._verdict(dict(row, modes=[8, 5], high_quality=[0.9, 0.9], all_modes=1)) == "in 1/2 seeds"
    assert bench._verdict(dict(row, modes=[7, 5], high_quality=[0.9, 0.9], all_modes=0)) == "some, in every seed"
    assert bench._verdict(dict(row, modes=[0, 0], high_quality=[0.01, 0.0], all_modes=0)).startswith("nothing")
