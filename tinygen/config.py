"""Every setting tinygen reads from the environment, in one table; modules read them through ``get(name)``.

| variable                     | default            | meaning                                                   | read by (when)          |
|------------------------------|--------------------|-----------------------------------------------------------|-------------------------|
| TINYGEN_NUMBA                | 1                  | use the Numba kernels (0: plain NumPy code everywhere)    | kernels.enabled (first) |
| TINYGEN_NUMBA_PARALLEL_MIN   | 4194304 (1 << 22)  | elements from which a Numba kernel runs on all threads    | kernels.threads (import)|
| TINYGEN_UFUNC_PARALLEL_MIN   | 65536 (1 << 16)    | elements from which NumPy exp/log1p/tanh run in chunks on | kernels.threads (import)|
|                              |                    | the ufunc thread pool                                     |                         |
| TINYGEN_MM_SWAP_MAX_ROWS     | 48                 | a product x @ W.T with at most this many rows runs as     | kernels.gemm (import)   |
|                              |                    | (W @ x.T).T (OpenBLAS is slow on short, wide products)    |                         |
| TINYGEN_KEEP_FREED_MEMORY    | 1                  | keep freed host memory for reuse (glibc mallopt)          | allocator.apply_setting |
|                              |                    |                                                           | (the CLI, the benchmarks)|
| TINYGEN_CUDA_STANDIN         | 0                  | serve device="cuda" from the CPU stand-in for CuPy        | backend (first "cuda")  |
| TINYGEN_DATA                 | (unset)            | folder holding MNIST                                      | data.mnist (each load)  |
| TINYGEN_CACHE                | ~/.cache/tinygen   | where trained helper models are cached                    | models.classifier       |

Flags accept 1/0, true/false, yes/no, on/off; an empty variable means the default. Variables marked "(import)" are
read once, when their module is first imported: set them before ``import tinygen``.
"""
import os
from dataclasses import dataclass
from pathlib import Path

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(text):
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {_TRUE + _FALSE}")


def _count(text):
    value = int(text)
    if value < 0:
        raise ValueError("expected a count >= 0")
    return value


def _path(text):
    return Path(text).expanduser()


@dataclass(frozen=True)
class Setting:
    name: str
    default: object  # the parsed value used when the variable is unset or empty
    parse: object  # text -> value; raises ValueError on bad text
    meaning: str
    read_by: str


SETTINGS = {s.name: s for s in (
    Setting("TINYGEN_NUMBA", True, _flag, "use the Numba kernels", "tinygen.kernels.enabled"),
    Setting("TINYGEN_NUMBA_PARALLEL_MIN", 1 << 22, _count, "elements from which a Numba kernel uses all threads",
            "tinygen.kernels.threads"),
    Setting("TINYGEN_UFUNC_PARALLEL_MIN", 1 << 16, _count, "elements from which NumPy transcendental calls are "
            "split over the ufunc thread pool", "tinygen.kernels.threads"),
    Setting("TINYGEN_MM_SWAP_MAX_ROWS", 48, _count, "rows up to which x @ W.T runs as (W @ x.T).T",
            "tinygen.kernels.gemm"),
    Setting("TINYGEN_KEEP_FREED_MEMORY", True, _flag, "keep freed host memory for reuse (glibc)",
            "tinygen.allocator.apply_setting (CLI, benchmarks)"),
    Setting("TINYGEN_CUDA_STANDIN", False, _flag, "serve device='cuda' from the CPU stand-in for CuPy",
            "tinygen.backend"),
    Setting("TINYGEN_DATA", None, _path, "folder holding MNIST", "tinygen.data.mnist"),
    Setting("TINYGEN_CACHE", Path("~/.cache/tinygen").expanduser(), _path, "cache of trained helper models",
            "tinygen.models.classifier"),
)}


def get(name):
    """The value of setting ``name`` now: parsed from the environment, or its default when unset or empty."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise KeyError(f"config.get: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    text = os.environ.get(name, "")
    if not text.strip():
        return setting.default
    try:
        return setting.parse(text)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={text!r}: {e}") from None


def raw(name):
    """The text of setting ``name`` as the environment holds it (None when unset), e.g. for messages."""
    if name not in SETTINGS:
        raise KeyError(f"config.raw: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    return os.environ.get(name)
