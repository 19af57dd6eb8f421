"""Training plumbing: the progress bar, the JSON-lines log, RNG state, and checkpoints that resume exactly."""
import argparse
import io
import json

import numpy as np
import pytest

import tinygen
from tinygen import nn, optim
from tinygen import random as _random
from tinygen.data import DataLoader
from tinygen.models import train_utils as tu
from tinygen.nn import functional as F


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


# ---- progress --------------------------------------------------------------------------------------------------------
def test_progress_not_a_tty_writes_plain_summary_lines():
    s = io.StringIO()
    bar = tu.Progress(10, desc="epoch 1/3", stream=s)
    for _ in range(10):
        bar.update(loss=0.5)
    bar.close()
    bar.close()  # closing twice writes once
    text = s.getvalue()
    assert "\r" not in text
    assert text.count("\n") == 1
    assert "epoch 1/3" in text and "10/10" in text and "it/s" in text and "loss=0.5" in text


def test_progress_on_a_tty_redraws_one_line_with_rate_and_eta():
    s = FakeTTY()
    with tu.Progress(4, desc="train", stream=s, min_interval=0.0) as bar:
        for i in range(4):
            bar.update(step=i)
    text = s.getvalue()
    assert text.count("\r") >= 4 and text.endswith("\n")
    last = text.split("\r")[-1]
    assert "4/4" in last and "<" in last and "|####################|" in last and "step=3" in last


def test_progress_quiet_writes_nothing_and_counts():
    s = FakeTTY()
    bar = tu.Progress(3, stream=s, quiet=True, min_interval=0.0)
    bar.update(2)
    bar.close()
    assert s.getvalue() == "" and bar.n == 2


def test_progress_rejects_bad_total():
    with pytest.raises(ValueError, match="total"):
        tu.Progress(-1)


# ---- metrics log -----------------------------------------------------------------------------------------------------
def test_metrics_log_appends_json_lines_and_reads_them_back(tmp_path):
    log = tu.MetricsLog(tmp_path / "m.jsonl")
    log.write(epoch=1, loss=np.float32(2.5), acc=tinygen.tensor(0.75))
    log.write({"epoch": 2, "loss": float("nan")})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"epoch": 3, "lo')  # a line cut short by a crash
    recs = tu.read_metrics(tmp_path / "m.jsonl")
    assert recs == [{"epoch": 1, "loss": 2.5, "acc": 0.75}, {"epoch": 2, "loss": "nan"}]
    for line in open(tmp_path / "m.jsonl").read().splitlines()[:2]:
        json.loads(line)  # strict JSON: NaN was written as a string


def test_metrics_log_truncate_after_drops_later_epochs(tmp_path):
    log = tu.MetricsLog(tmp_path / "m.jsonl")
    for e in range(1, 5):
        log.write(epoch=e, loss=float(e))
    log.truncate_after(2)
    assert [r["epoch"] for r in tu.read_metrics(log.path)] == [1, 2]


# ---- random generators -----------------------------------------------------------------------------------------------
def test_rng_state_round_trip_replays_the_same_numbers():
    tinygen.manual_seed(3)
    tinygen.randn(5)
    state = tu.rng_state()
    a = tinygen.randn(7).numpy().copy()
    tinygen.randn(3)
    tu.set_rng_state(state)
    assert np.array_equal(tinygen.randn(7).numpy(), a)


def test_rng_state_includes_a_numpy_style_device_generator(device):
    tinygen.manual_seed(4)
    state = tu.rng_state((device,))
    a = tinygen.randn(6, device=device).cpu().numpy().copy()
    tu.set_rng_state(state)
    assert np.array_equal(tinygen.randn(6, device=device).cpu().numpy(), a)


class _CurandLikeBitGenerator:
    """Stands for CuPy's bit generators: ``state`` is a method, the states live in a private byte buffer."""

    def __init__(self):
        self._state = np.arange(96, dtype=np.int8)

    def state(self):
        return id(self._state)


class _CurandLikeGenerator:
    def __init__(self):
        self.bit_generator = _CurandLikeBitGenerator()


def test_rng_state_of_a_curand_style_generator_copies_its_state_buffer(monkeypatch):
    g = _CurandLikeGenerator()
    monkeypatch.setitem(_random._generators, "cpu", g)
    state = _random.get_rng_state()
    assert set(state) == {"curand_states"} and state["curand_states"].dtype == np.uint8
    saved = state["curand_states"].copy()
    g.bit_generator._state[:] = 7  # the generator moves on
    _random.set_rng_state(state)
    np.testing.assert_array_equal(g.bit_generator._state.view(np.uint8), saved)
    with pytest.raises(ValueError, match="10 bytes, this generator 96"):
        _random.set_rng_state({"curand_states": np.zeros(10, np.uint8)})


def test_fork_rng_is_reproducible_and_leaves_the_outer_stream_alone():
    tinygen.manual_seed(0)
    expected = tinygen.randn(4).numpy().copy()
    tinygen.manual_seed(0)
    with tu.fork_rng(11):
        inner1 = tinygen.randn(3).numpy().copy()
    with tu.fork_rng(11):
        inner2 = tinygen.randn(3).numpy().copy()
    assert np.array_equal(inner1, inner2)
    assert np.array_equal(tinygen.randn(4).numpy(), expected)


def test_rank_stream_is_its_own_reproducible_stream_and_leaves_the_main_one_alone():
    tinygen.manual_seed(2)
    expected_main = tinygen.randn(4).numpy().copy()
    tinygen.manual_seed(2)
    with _random.rank_stream():
        ranked = tinygen.randn(4).numpy().copy()
    assert np.array_equal(tinygen.randn(4).numpy(), expected_main)  # the main stream did not move
    assert not np.array_equal(ranked, expected_main)
    tinygen.manual_seed(2)
    state = _random.get_rng_state(rank_stream=True)
    with _random.rank_stream():
        assert np.array_equal(tinygen.randn(4).numpy(), ranked)  # manual_seed restarts it
        tinygen.randn(2)
    _random.set_rng_state(state, rank_stream=True)
    with _random.rank_stream():
        assert np.array_equal(tinygen.randn(4).numpy(), ranked)  # and its state round-trips
    tinygen.manual_seed(3)
    with _random.rank_stream():
        assert not np.array_equal(tinygen.randn(4).numpy(), ranked)  # derived from the seed


def test_checkpoint_rank_streams_are_ignored_by_one_process():
    """One process draws nothing from a rank stream, so a data-parallel run's checkpoint resumes alone."""
    tinygen.manual_seed(1)
    state = {**tu.rng_state(), "ranks": [{"cpu": {"bad": 0}}, {"cpu": {"bad": 1}}]}
    a = tinygen.randn(3).numpy().copy()
    tu.set_rng_state(state)
    assert np.array_equal(tinygen.randn(3).numpy(), a)


def test_set_rng_state_rejects_a_wrong_object():
    with pytest.raises(ValueError, match="cpu"):
        tu.set_rng_state({"gpu": 1})


# ---- config ----------------------------------------------------------------------------------------------------------
def test_config_from_args_keeps_plain_settings_only():
    ns = argparse.Namespace(command="train", model="vae", epochs=3, lr=1e-3, hidden=(400, 200), out="x",
                            resume=True, func=print, data=None)
    cfg = tu.config_from_args(ns)
    assert cfg == {"epochs": 3, "lr": 1e-3, "hidden": [400, 200], "out": "x", "data": None}


def test_config_mismatch_ignores_epochs_but_reports_model_settings():
    saved = {"epochs": 5, "latent": 20, "lr": 1e-3}
    assert tu.config_mismatch(saved, dict(saved, epochs=9)) == []
    assert tu.config_mismatch(saved, dict(saved, latent=2)) == [("latent", 20, 2)]


def test_check_number():
    assert tu.check_number("lr", 0.1, allow_low=False) == 0.1
    assert tu.check_number("beta", 0) == 0.0 and isinstance(tu.check_number("beta", np.int64(2)), float)
    for bad in (0, -1, float("nan"), float("inf"), "3", None, True):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            tu.check_number("lr", bad, allow_low=False)
    assert tu.check_number("p", 0.0, high=1.0) == 0.0
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got 1"):
        tu.check_number("p", 1, high=1.0)
    with pytest.raises(ValueError, match="gp must be a non-negative finite number"):
        tu.check_number("gp", -0.5)


def test_check_int_and_widths():
    assert tu.check_int("steps", np.int64(3)) == 3 and tu.check_int("n", None, optional=True) is None
    for bad, low, need in ((0, 1, "a positive integer"), (-1, 0, "a non-negative integer"), (2.0, 1, "a positive"),
                           (True, 1, "a positive"), (1, 2, "an integer >= 2")):
        with pytest.raises(ValueError, match=f"steps must be {need}"):
            tu.check_int("steps", bad, low=low)
    assert tu.check_widths("hidden", 8) == [8] and tu.check_widths("hidden", (4, np.int64(2))) == [4, 2]
    assert tu.check_widths("hidden", [], allow_empty=True) == []
    for bad in ([], [4, 0], [4, 2.5], "64", None):
        with pytest.raises(ValueError, match="hidden must be a non-empty list of positive layer widths"):
            tu.check_widths("hidden", bad)


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def _setup(seed=0, n=96):
    """A small model, optimizer, scheduler and shuffled loader over fixed data (dropout draws random numbers)."""
    rng = np.random.default_rng(123)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    tinygen.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loader = DataLoader((x, y), batch_size=32, shuffle=True, seed=seed)
    return model, opt, sched, loader


def _train(model, opt, sched, loader, epochs, start=0, after_epoch=None):
    for epoch in range(start, epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if after_epoch:
            after_epoch(epoch + 1)


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    ref = _setup()
    _train(*ref, epochs=4)

    path = tmp_path / "checkpoint.npz"
    cfg = {"epochs": 4, "lr": 0.01}
    a = _setup()
    parts = lambda m, o, s, dl: {"modules": {"model": m}, "optimizers": {"adam": o},  # noqa: E731
                                 "schedulers": {"lr": s}, "loaders": {"train": dl}}
    _train(*a, epochs=2, after_epoch=lambda e: tu.save_checkpoint(path, "toy", cfg, e, **parts(*a)))
    tinygen.randn(10)  # the interrupted process drew other numbers; the checkpoint's RNG state must win

    b = _setup()  # a new process: same construction, then the saved state
    ckpt = tu.load_checkpoint(path, cfg, model_name="toy")
    start = tu.restore_checkpoint(ckpt, **parts(*b))
    assert start == 2
    _train(*b, epochs=4, start=start)
    for (name, p), (_, q) in zip(ref[0].state_dict().items(), b[0].state_dict().items()):
        assert np.array_equal(p.numpy(), q.numpy()), name
    assert b[2].get_last_lr() == ref[2].get_last_lr()


def test_checkpoint_holds_model_name_config_epoch_and_extra(tmp_path):
    model, opt, sched, loader = _setup()
    path = tmp_path / "c.npz"
    tu.save_checkpoint(path, "toy", {"lr": 0.01}, 3, {"model": model}, {"adam": opt}, extra={"acc": np.float64(0.5)})
    ckpt = tinygen.serialization.load(path)
    assert ckpt["model"] == "toy" and ckpt["epoch"] == 3 and ckpt["config"] == {"lr": 0.01}
    assert ckpt["extra"] == {"acc": 0.5} and "cpu" in ckpt["rng"]
    assert set(ckpt["modules"]["model"]) == set(model.state_dict())


def test_load_checkpoint_errors_name_the_problem(tmp_path):
    model, opt, sched, loader = _setup()
    path = tmp_path / "c.npz"
    with pytest.raises(FileNotFoundError, match="c.npz"):
        tu.load_checkpoint(path)
    tu.save_checkpoint(path, "toy", {"lr": 0.01, "latent": 2}, 1, {"model": model})
    with pytest.raises(ValueError, match="latent: saved 2, now 3"):
        tu.load_checkpoint(path, {"lr": 0.01, "latent": 3})
    with pytest.raises(ValueError, match="model 'toy', not 'vae'"):
        tu.load_checkpoint(path, model_name="vae")
    with pytest.raises(KeyError, match="optimizer 'adam'"):
        tu.restore_checkpoint(tu.load_checkpoint(path), {"model": model}, optimizers={"adam": opt})
    tinygen.save({"just": 1}, tmp_path / "other.npz")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        tu.load_checkpoint(tmp_path / "other.npz")


def test_prepare_out_dir_refuses_to_overwrite_a_run_unless_resuming(tmp_path):
    out = tu.prepare_out_dir(tmp_path / "run")
    assert out.is_dir()
    (out / "checkpoint.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="--resume"):
        tu.prepare_out_dir(out)
    assert tu.prepare_out_dir(out, resume=True) == out
