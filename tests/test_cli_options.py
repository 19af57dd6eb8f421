"""No command-line option is silently ignored, and no request the machine cannot honour runs until it fails:
each is honoured or refused up front with one line naming the option (issue: --batch-size larger than the data,
--epochs 0 / --steps 0, --label on an unconditional model, --iwae-k 0 / --iwae-images -1, --out grid.jpg, a huge
--n). Also: crafted checkpoints, one-line warnings, the epoch a run's last line and its checkpoint report, --threads."""
import argparse
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygen
from tinygen import cli
from tinygen.data import mnist
from tinygen.models import gan, vae
from tinygen.models import train_utils as tu
from tinygen.serialization import save

ROOT = Path(__file__).resolve().parents[1]
TINY_GAN = dict(arch="mlp", latent=8, g_hidden=[16], d_hidden=[16], batch_size=32, eval_samples=64, log_every=2)


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _one_error_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygen: error:"), err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


@pytest.fixture(scope="module")
def small_mnist():
    images, labels = mnist("test")
    return images[:192], labels[:192]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, small_mnist):
    """Tiny trained checkpoints: an unconditional and a conditional GAN, an unconditional VAE."""
    root = tmp_path_factory.mktemp("ckpts")
    gan.train_gan(out=root / "gan", quiet=True, train_set=small_mnist, steps=4, conditional=False, **TINY_GAN)
    gan.train_gan(out=root / "cgan", quiet=True, train_set=small_mnist, steps=2, conditional=True, **TINY_GAN)
    images, labels = small_mnist
    vae.train_vae(out=root / "vae", quiet=True, pictures=False, train_set=(images[:128], labels[:128]),
                  test_set=(images[128:], labels[128:]), epochs=1, hidden=[16], latent=2, batch_size=64)
    return {k: root / k / "checkpoint.npz" for k in ("gan", "cgan", "vae")}


# ---- training options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gan", "vae", "classifier"])
def test_batch_larger_than_the_data_is_refused(model, tmp_path):
    rc, _, err = _run(["train", model, "--batch-size", "60001", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    _one_error_line(err, "--batch-size 60001", "60000")
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_batch_larger_than_the_data_is_refused_by_the_python_api_too(small_mnist):
    with pytest.raises(ValueError, match="--batch-size 500 is more than the 192"):
        gan.train_gan(train_set=small_mnist, steps=1, quiet=True, **dict(TINY_GAN, batch_size=500))


@pytest.mark.parametrize("argv", [["gan", "--steps", "0"], ["gan", "--epochs", "0"], ["vae", "--epochs", "0"],
                                  ["classifier", "--epochs", "0"], ["vae", "--batch-size", "0"],
                                  ["classifier", "--batch-size", "-3"], ["gan", "--batch-size", "0"]])
def test_zero_length_or_batch_is_refused(argv, tmp_path):
    rc, _, err = _run(["train", *argv, "--out", str(tmp_path / "run")])
    assert rc == 2
    _one_error_line(err, argv[1], "must be a positive integer")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ---- sample ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gan", "vae"])
def test_label_on_an_unconditional_model_is_refused_alike(model, checkpoints, tmp_path):
    out = tmp_path / "s.png"
    rc, _, err = _run(["sample", str(checkpoints[model]), "--label", "3", "--out", str(out)])
    assert rc == 2 and not out.exists()
    _one_error_line(err, "--label needs a conditional model")


def test_label_out_of_range_is_refused(checkpoints, tmp_path):
    rc, _, err = _run(["sample", str(checkpoints["cgan"]), "--label", "10", "--out", str(tmp_path / "s.png")])
    assert rc == 2
    _one_error_line(err, "--label must be a class in 0..9")


@pytest.mark.parametrize("model", ["gan", "vae"])
@pytest.mark.parametrize("name", ["grid.jpg", "grid", "grid.PNG.txt"])
def test_out_that_is_neither_png_nor_npy_is_refused_before_sampling(model, name, checkpoints, tmp_path):
    rc, _, err = _run(["sample", str(checkpoints[model]), "--out", str(tmp_path / name)])
    assert rc == 2
    _one_error_line(err, "--out", ".png", ".npy")
    assert list(tmp_path.iterdir()) == []


def test_default_output_is_beside_the_checkpoint(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = _run(["sample", str(checkpoints["gan"]), "--n", "4", "--seed", "3"])
    expected = checkpoints["gan"].parent / "samples_seed3.png"
    assert rc == 0 and expected.exists() and str(expected) in out
    assert list(tmp_path.iterdir()) == []  # nothing in the current folder


@pytest.mark.parametrize("model", ["gan", "vae"])
def test_huge_n_is_refused_up_front(model, checkpoints, tmp_path):
    rc, _, err = _run(["sample", str(checkpoints[model]), "--n", str(10 ** 6), "--out", str(tmp_path / "a.png")])
    assert rc == 2
    _one_error_line(err, "too many for one picture", ".npy")
    rc, _, err = _run(["sample", str(checkpoints[model]), "--n", str(10 ** 13), "--out", str(tmp_path / "a.npy")])
    assert rc == 2
    _one_error_line(err, "GiB", "free")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model", ["cgan", "vae"])
def test_npy_output_is_written_in_chunks_and_equals_one_draw(model, checkpoints, tmp_path):
    n = tu.SAMPLE_CHUNK * 2 + 37  # three chunks, the last one short
    rc, _, _ = _run(["sample", str(checkpoints[model]), "--n", str(n), "--out", str(tmp_path / "big.npy")])
    assert rc == 0
    big = np.load(tmp_path / "big.npy")
    assert big.shape == (n, 28, 28) and big.dtype == np.float32 and np.isfinite(big).all()
    rc, _, _ = _run(["sample", str(checkpoints[model]), "--n", "10", "--out", str(tmp_path / "small.npy")])
    # the same noise stream, chunked or not; BLAS picks its kernel by the batch's size, so a batch of 10 and a
    # chunk may round a product differently in the last bit (seen on an AMD EPYC: 1 ulp), not more
    np.testing.assert_allclose(np.load(tmp_path / "small.npy"), big[:10], rtol=0, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_eval_of_more_samples_than_memory_holds_is_refused_up_front(checkpoints):
    rc, _, err = _run(["eval", str(checkpoints["gan"]), "--n", str(10 ** 12)])
    assert rc == 2
    _one_error_line(err, "--n 1000000000000 needs about", "GiB of memory")


# ---- eval ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value,words", [("--iwae-k", "0", "--iwae-k must be a positive integer"),
                                                ("--iwae-k", "-5", "--iwae-k must be a positive integer"),
                                                ("--iwae-images", "-1", "--iwae-images must be >= 0")])
def test_iwae_options_are_checked(option, value, words, checkpoints):
    rc, _, err = _run(["eval", str(checkpoints["vae"]), option, value, "--json"])
    assert rc == 2
    _one_error_line(err, words)


def test_iwae_images_zero_skips_the_bound_as_documented(checkpoints):
    rc, out, _ = _run(["eval", str(checkpoints["vae"]), "--iwae-images", "0", "--json"])
    assert rc == 0 and "test_loss" in out and "iwae_nll" not in out
    rc, out, _ = _run(["eval", str(checkpoints["vae"]), "--iwae-images", "3", "--iwae-k", "4", "--json"])
    assert rc == 0 and '"iwae_k": 4' in out


def test_gan_eval_says_which_classifier_scored(checkpoints, monkeypatch, tmp_path):
    from tinygen.models import classifier
    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(classifier, "_loaded", {})
    rc, out, _ = _run(["eval", str(checkpoints["cgan"]), "--n", "200", "--json"])
    assert rc == 0 and f'"classifier": "{classifier.SHIPPED_PATH}"' in out and "frechet_distance" in out


# ---- crafted checkpoints -------------------------------------------------------------------------------------------
CRAFTED = {
    "config-not-a-dict": {"model": "gan", "config": 5, "modules": {}},
    "no-modules": {"model": "gan", "config": {}},
    "vae-empty": {"model": "vae", "config": {}, "modules": {}},
    "vae-bad-latent": {"model": "vae", "config": {"latent": "x"}, "modules": {"model": {}}},
    "classifier-no-config": {"model": "classifier", "modules": {"model": {}}},
    "gan-module-not-a-dict": {"model": "gan", "config": {"dataset": "ring"}, "modules": {"generator": [1, 2]}},
    "modules-a-list": {"model": "vae", "config": {"latent": 2}, "modules": [1]},
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_crafted_checkpoints_give_one_line(name, command, tmp_path):
    path = tmp_path / f"{name}.npz"
    save(CRAFTED[name], path)
    out = tmp_path / "x.png"
    rc, _, err = _run([command, str(path), "--n", "4", "--out", str(out)] if command == "sample" else
                      [command, str(path), "--n", "4", "--iwae-images", "0"])
    assert rc in (1, 2)
    _one_error_line(err, str(path))
    assert not out.exists()


# ---- messages speak command-line -----------------------------------------------------------------------------------
def test_data_fallback_warning_is_one_line_without_python(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGEN_DATA", str(tmp_path))  # a folder without MNIST
    rc, _, err = _run(["train", "classifier", "--epochs", "1", "--hidden", "8", "--batch-size", "6000",
                       "--save", str(tmp_path / "c.npz"), "--quiet"])
    assert rc == 0
    warn = [line for line in err.splitlines() if "warning" in line]
    assert warn == [f"tinygen: warning: MNIST train split not found in $TINYGEN_DATA ({tmp_path}); using the copy "
                    f"shipped with tinygen",
                    f"tinygen: warning: MNIST test split not found in $TINYGEN_DATA ({tmp_path}); using the copy "
                    f"shipped with tinygen"]
    assert "mnist_or_bundled" not in err and "root=" not in err and ".py" not in err


def test_no_message_of_the_library_tells_a_user_to_call_python():
    for path in list((ROOT / "tinygen" / "models").rglob("*.py")) + [ROOT / "tinygen" / "cli.py",
                                                                     ROOT / "tinygen" / "data" / "mnist.py"]:
        text = path.read_text()
        assert "mnist_or_bundled(" not in text.replace("def mnist_or_bundled(", ""), path
        assert "pass root=" not in text and "looked in nowhere" not in text, path


# ---- the last epoch line and the checkpoint agree ------------------------------------------------------------------
def test_a_run_that_stops_inside_an_epoch_says_so_as_its_checkpoint_does(small_mnist, tmp_path, capsys):
    # 192 images in batches of 32: 6 steps per epoch; 8 steps end 2 steps into the second epoch
    gan.train_gan(out=tmp_path / "run", train_set=small_mnist, steps=8, conditional=False, pictures=False,
                  **TINY_GAN)
    out = capsys.readouterr().out
    ckpt = tinygen.load(tmp_path / "run" / "checkpoint.npz")
    assert ckpt["epoch"] == 1 and ckpt["extra"]["step"] == 8
    assert "1 epochs and part of epoch 2 (step 8)" in out.strip().splitlines()[-1]
    assert "epoch 1 (step 6)" in out


# ---- threads ---------------------------------------------------------------------------------------------------------
def test_threads_option_is_on_every_command_that_computes_and_is_applied(checkpoints, monkeypatch):
    parser = cli.build_parser()
    for argv in (["train", "gan"], ["train", "vae"], ["train", "classifier"], ["sample", "x"], ["eval", "x"]):
        assert parser.parse_args(argv).threads == "auto"
        assert parser.parse_args(argv + ["--threads", "1"]).threads == 1
    seen = []
    monkeypatch.setattr(gan, "sample_checkpoint", lambda ckpt, args: seen.append(tinygen.get_num_threads()))
    before = tinygen.get_num_threads()
    rc, _, _ = _run(["sample", str(checkpoints["gan"]), "--threads", "1"])
    assert rc == 0 and seen == [1]  # the command ran with the count asked for
    assert tinygen.get_num_threads() == before  # and the process has its own back


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_thread_counts_are_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["train", "vae", "--threads", bad])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_auto_thread_count_leaves_busy_cores_alone(monkeypatch):
    from tinygen import threads
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    for load, expected in ((0.0, 8), (2.2, 6), (5.6, 2), (7.9, 1), (30.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.thread_count("auto") == expected
    assert threads.thread_count(3) == threads.thread_count("3") == 3
    with pytest.raises(ValueError, match="positive integer"):
        threads.thread_count(0)


def test_auto_thread_count_is_shared_by_the_processes_of_an_mpi_launcher(monkeypatch):
    from tinygen import threads
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)
    for local, expected in (("1", 7), ("2", 3), ("4", 1), ("16", 1)):
        monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", local)
        assert threads.thread_count("auto") == expected
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_SIZE")
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # MPICH's Hydra
    assert threads.thread_count("auto") == 3
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)  # bound to 4 of the 8 cores: those are this process's
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.thread_count("auto") == 4
    assert threads.thread_count(5) == 5  # an explicit count is never divided


def test_launcher_sets_blas_environment_before_numpy(tmp_path):
    import tinygen_launcher
    env = {}
    assert tinygen_launcher.prepare_environment(["train", "gan", "--threads", "3"], env) == 3
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "24" and env["OPENBLAS_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "3"
    env = {"OPENBLAS_NUM_THREADS": "5", "OPENBLAS_THREAD_TIMEOUT": "4"}
    tinygen_launcher.prepare_environment(["train", "gan"], env)  # auto yields to what the user set
    assert env["OPENBLAS_NUM_THREADS"] == "5" and env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    tinygen_launcher.prepare_environment(["train", "gan", "--threads=2"], env)  # an explicit option wins
    assert env["OPENBLAS_NUM_THREADS"] == "2"
    assert tinygen_launcher.prepare_environment(["--threads", "zero"], {}) is None  # argparse reports it later
    # in a fresh process the launcher runs before NumPy, so the thread pools start with the count asked for
    code = ("import sys, tinygen_launcher; tinygen_launcher.prepare_environment(['--threads', '1']); "
            "assert 'numpy' not in sys.modules; import numba, os; "
            "print(numba.config.NUMBA_NUM_THREADS, os.environ['OPENBLAS_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_", "NUMBA_NUM", "OMP_", "MKL_"))}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1"]
    # tinygen bench is left alone (the benchmark harness sets each worker's threads); other commands are not.
    # A stand-in tinygen.cli prints what the real one would find, without loading NumPy.
    stub = ("import sys, os, types, importlib.util, tinygen_launcher; spec = importlib.util.find_spec('tinygen'); "
            "pkg = types.ModuleType('tinygen'); pkg.__spec__ = spec; "
            "pkg.__path__ = list(spec.submodule_search_locations); "
            "cli = types.ModuleType('tinygen.cli'); cli.main = lambda: print(os.environ.get('OPENBLAS_NUM_THREADS')); "
            "sys.modules.update({'tinygen': pkg, 'tinygen.cli': cli}); sys.argv = ['tinygen', '%s', '--threads', '1']; "
            "tinygen_launcher.main()")
    for command, expected in (("bench", "None"), ("train", "1")):
        r = subprocess.run([sys.executable, "-c", stub % command], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and r.stdout.split() == [expected], (command, r.stdout, r.stderr)


def test_help_shows_the_default_of_every_numeric_option():
    parser = cli.build_parser()
    checked = 0
    for path, sub in _subparsers(parser):
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.option_strings and (action.type in (int, float) or action.dest == "threads"):
                text = formatter._expand_help(action)
                assert "default" in text, (path, action.option_strings, text)
                checked += 1
    assert checked > 40


def _subparsers(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subparsers(sub, path + (name,))
