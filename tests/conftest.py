"""Shared test setup: hypothesis profiles, optional-dependency markers, data location, device parametrisation."""
import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI: bounded examples and no deadlines (2-core machines are slow and noisy); dev: quicker; thorough: for a soak.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

HAS_TORCH = importlib.util.find_spec("torch") is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install torch==2.13.0)")


def _find_mnist():
    """The full MNIST set: $TINYGEN_DATA, or the shared data folder beside the project checkout."""
    candidates = []
    if os.environ.get("TINYGEN_DATA"):
        candidates.append(Path(os.environ["TINYGEN_DATA"]))
    root = Path(__file__).resolve().parents[1]
    candidates.append(root.parent / "shared" / "data" / "mnist")
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").exists() or (c / "train-images-idx3-ubyte").exists():
            return c
    return None


MNIST_DIR = _find_mnist()


@pytest.fixture(autouse=True)
def _thread_count_kept():
    """Each test leaves tinygen's thread count as it found it: a test that sets it (or a benchmark's ``main`` it
    calls, which applies ``--threads``) would otherwise make later tests in the same process skip their
    thread-parallel cases, depending on the order the workers run them."""
    from tinygen.kernels import threads
    before = threads._requested, threads.get_num_threads()
    yield
    if (threads._requested, threads.get_num_threads()) != before:
        threads.set_num_threads(before[1])
        threads._requested = before[0]


@pytest.fixture
def mnist_dir():
    if MNIST_DIR is None:
        pytest.skip("the full MNIST training set was not found (set TINYGEN_DATA)")
    return MNIST_DIR


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Run a test on the CPU and on "cuda": a real GPU when CuPy has one, else the CPU stand-in for CuPy."""
    from tinygen import backend
    if request.param == "cpu":
        yield "cpu"
    elif backend.is_available("cuda"):
        yield "cuda"
    else:
        with backend.cuda_standin():
            yield "cuda"
