"""tinygen's benchmark suite: tinygen side by side with PyTorch (eager, torch.compile), JAX jit and hand-written
NumPy — per-op dispatch overhead, training-step throughput, FLOP utilisation and peak memory.

Run ``python -m benchmarks --help``. Nothing numerical is imported here: each framework is measured in its own
process, started with its thread settings in place (see harness.py and worker.py).
"""


def main(argv=None):
    """Run the benchmarks with command-line arguments ``argv`` (default: sys.argv[1:]); returns the exit code."""
    from .harness import main as run
    return run(argv)


__all__ = ["main"]
