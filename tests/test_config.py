"""tinygen.config: the one table of environment settings, and the modules that read them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygen import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, value", [("1", True), ("on", True), ("TRUE", True), (" yes ", True), ("0", False),
                                         ("off", False), ("False", False), ("no", False)])
def test_flags(monkeypatch, text, value):
    monkeypatch.setenv("TINYGEN_NUMBA", text)
    assert config.get("TINYGEN_NUMBA") is value


def test_defaults_when_unset_or_empty(monkeypatch):
    for name, (default, _) in config.SETTINGS.items():
        monkeypatch.delenv(name, raising=False)
        assert config.get(name) == default
        monkeypatch.setenv(name, "  ")
        assert config.get(name) == default


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv("TINYGEN_MM_SWAP_MAX_ROWS", "12")
    assert config.get("TINYGEN_MM_SWAP_MAX_ROWS") == 12
    for text, value in (("auto", "auto"), (" AUTO ", "auto"), ("0", 0), ("4096", 4096)):
        monkeypatch.setenv("TINYGEN_UPDATE_PARALLEL_MIN", text)
        assert config.get("TINYGEN_UPDATE_PARALLEL_MIN") == value
    monkeypatch.setenv("TINYGEN_DATA", "~/mnist")
    assert config.get("TINYGEN_DATA") == Path("~/mnist").expanduser()
    assert config.raw("TINYGEN_DATA") == "~/mnist"


@pytest.mark.parametrize("name, text", [("TINYGEN_NUMBA", "maybe"), ("TINYGEN_MM_SWAP_MAX_ROWS", "many"),
                                        ("TINYGEN_NUMBA_PARALLEL_MIN", "-3"), ("TINYGEN_UPDATE_PARALLEL_MIN", "some")])
def test_bad_values_name_the_variable(monkeypatch, name, text):
    monkeypatch.setenv(name, text)
    with pytest.raises(ValueError, match=f"environment variable {name}={text!r}"):
        config.get(name)


def test_unknown_setting():
    with pytest.raises(KeyError, match="unknown setting 'TINYGEN_NOPE'"):
        config.get("TINYGEN_NOPE")


def test_settings_read_at_import_reach_their_modules():
    """The thresholds are read when their module is imported (so they cost nothing per call)."""
    env = dict(os.environ, TINYGEN_MM_SWAP_MAX_ROWS="7", TINYGEN_NUMBA_PARALLEL_MIN="1000",
               TINYGEN_UFUNC_PARALLEL_MIN="2000", TINYGEN_UPDATE_PARALLEL_MIN="3000", TINYGEN_MM_PAIR_MAX_ROWS="5")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("from tinygen.kernels import gemm, threads\n"
            "print(gemm.SWAP_MAX_ROWS, threads.PARALLEL_MIN, threads.UFUNC_PARALLEL_MIN, threads.UPDATE_PARALLEL_MIN,"
            " gemm.PAIR_MAX_ROWS)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "1000", "2000", "3000", "5"]


def test_the_update_split_follows_the_products_blas(monkeypatch):
    """TINYGEN_UPDATE_PARALLEL_MIN=auto: 2^16 elements with MKL's products (whose idle threads leave the core to
    Numba's), 2^22 with NumPy's BLAS (OpenBLAS's worker spins through a step); a count as given; 0: never."""
    import math

    from tinygen.kernels import blas, threads
    monkeypatch.setattr(threads, "UPDATE_PARALLEL_MIN", "auto")
    monkeypatch.setattr(blas, "mkl", lambda: object())
    assert threads.update_split_from() == 1 << 16
    monkeypatch.setattr(blas, "mkl", lambda: None)
    assert threads.update_split_from() == 1 << 22
    monkeypatch.setattr(threads, "UPDATE_PARALLEL_MIN", 5000)
    assert threads.update_split_from() == 5000
    monkeypatch.setattr(threads, "UPDATE_PARALLEL_MIN", 0)
    assert threads.update_split_from() == math.inf
