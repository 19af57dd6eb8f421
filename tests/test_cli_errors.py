"""The CLI answers a user's mistake or the machine's state with one line and a non-zero exit, never a traceback."""
import errno
import subprocess
import sys

import pytest

from tinygen import cli


class _FakeModel:
    def __init__(self, exc):
        self.exc = exc

    def add_arguments(self, p):
        p.add_argument("--out", default="runs/x")
        p.add_argument("--resume", action="store_true")

    def train_from_args(self, args):
        raise self.exc


@pytest.fixture
def fake_model(monkeypatch):
    def use(exc):
        model = _FakeModel(exc)
        monkeypatch.setattr(cli, "_model", lambda name: model)
    return use


def test_ctrl_c_during_training_names_the_checkpoint_and_exits_130(fake_model, tmp_path, capsys):
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    fake_model(KeyboardInterrupt())
    assert cli.main(["train", "gan", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(tmp_path / "checkpoint.npz") in err and "--resume" in err
    assert "Traceback" not in err


def test_ctrl_c_before_any_checkpoint_says_so(fake_model, tmp_path, capsys):
    fake_model(KeyboardInterrupt())
    assert cli.main(["train", "vae", "--out", str(tmp_path / "new")]) == 130
    assert "no checkpoint was written yet" in capsys.readouterr().err


def test_full_disk_is_one_line_naming_the_file(fake_model, capsys):
    fake_model(OSError(errno.ENOSPC, "No space left on device", "runs/gan/checkpoint.npz.tmp"))
    assert cli.main(["train", "gan"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "tinygen: error: runs/gan/checkpoint.npz.tmp: No space left on device"


def test_out_of_memory_is_one_line(fake_model, capsys):
    fake_model(MemoryError())
    assert cli.main(["train", "gan"]) == 1
    assert "out of memory" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["dir", "text"])
def test_eval_and_sample_of_a_non_checkpoint_exit_nonzero_without_traceback(tmp_path, target):
    path = tmp_path if target == "dir" else tmp_path / "notes.txt"
    if target == "text":
        path.write_text("hello")
    for command in ("eval", "sample"):
        r = subprocess.run([sys.executable, "-m", "tinygen", command, str(path)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode in (1, 2), r.stderr
        assert "Traceback" not in r.stderr and str(path) in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ckpt, app", [({"model": "superres", "config": {}}, "superres"),
                                       ({"model": "seqvae", "config": {"app": "music"}}, "music"),
                                       ({"model": "seqvae", "config": {"app": "text"}}, "text")])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_point_an_application_checkpoint_to_its_app(tmp_path, capsys, ckpt, app, command):
    from tinygen import serialization
    from tinygen.cli import main
    path = tmp_path / "checkpoint.npz"
    serialization.save(ckpt, path)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint of the {app} application" in err and f"tinygen app {app} --help" in err


@pytest.mark.parametrize("argv, said", [
    (["train", "gan", "--lr", "-1"], "--lr must be a positive finite number, got -1.0"),  # sets lr_g and lr_d
    (["train", "gan", "--slope", "-1"], "--slope must be a non-negative finite number"),  # sets g_ and d_slope
    (["train", "gan", "--n-critic", "0"], "--n-critic must be a positive integer, got 0"),
    (["train", "gan", "--label-smoothing=2"], "--label-smoothing must be a number in [0, 1), got 2.0"),
    (["train", "gan", "--betas", "0.5", "1.5"], "--betas must be two numbers in [0, 1)"),
    (["train", "vae", "--latent", "0"], "--latent must be a positive integer, got 0"),
    (["train", "classifier", "--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["train", "classifier", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["sample", "no-such.npz", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),  # not the file's
    (["eval", "no-such.npz", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["app", "inpaint", "no-such.npz", "--mask", "center", "--seed", "-1"],
     "--seed must be a non-negative integer, got -1")])  # (NumPy's words were "expected non-negative integer")
def test_a_setting_refused_is_named_by_the_option_typed(tmp_path, capsys, argv, said):
    """The models check their settings by the names the Python API takes (``n_critic``); on the command line the
    error names the option that gave the value, before anything is trained or written (or a checkpoint read)."""
    out = tmp_path / "run"
    assert cli.main([*argv, "--out", str(out)] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tinygen: error: {said}" or err.startswith(f"tinygen: error: {said}"), err
    assert not out.exists()


def test_a_setting_not_typed_as_an_option_keeps_its_name():
    assert cli._as_option("n_critic must be a positive integer, got 0", ["train", "gan"]) == \
        "n_critic must be a positive integer, got 0"  # (from a preset or a resumed run's settings)
    assert cli._as_option("lr_g must be a positive finite number", ["--lr", "0"]) == \
        "lr_g must be a positive finite number"
    assert cli._as_option("unknown loss 'x'", ["--loss", "x"]) == "unknown loss 'x'"
