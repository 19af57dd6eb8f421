"""Every setting tinygen reads from the environment, in one table; modules read them through ``get(name)``.

    variable                    default           meaning                                        read by
    TINYGEN_NUMBA               1                 use the Numba kernels (0: plain NumPy code)    kernels.enabled
    TINYGEN_NUMBA_PARALLEL_MIN  4194304 (1<<22)   elements from which a Numba kernel uses every  kernels.threads*
                                                  thread
    TINYGEN_UFUNC_PARALLEL_MIN  262144 (1<<18)    elements from which NumPy's exp/log1p/tanh     kernels.threads*
                                                  inside a kernel run in chunks on a thread pool
    TINYGEN_UPDATE_PARALLEL_MIN auto              elements from which an optimizer's update      kernels.threads*
                                                  call (up to 8 parameters) splits over Numba's
                                                  threads (not its workqueue layer); 0: never; auto:
                                                  65536 (1<<16) with MKL's products, else
                                                  4194304 (1<<22)
    TINYGEN_MM_SWAP_MAX_ROWS    48                rows up to which x @ W.T runs as (W @ x.T).T   kernels.gemm*
                                                  (OpenBLAS is slow on short, wide products)
    TINYGEN_MM_SHORT_MAX_ROWS   auto              rows (or k) up to which a float32 product runs  kernels.gemm_short*
                                                  on tinygen's Numba loops instead of BLAS (0:
                                                  never; auto: 64 where the CPU has AVX-512 and
                                                  the other products are MKL's, else 0)
    TINYGEN_BLAS_PARALLEL_MIN   0                 0: products on BLAS's own threads; N > 0 (a     kernels.threads*
                                                  busy machine; 8388608 on 2 cores): below N
                                                  multiply-adds on one thread, above split by
                                                  tinygen
    TINYGEN_BLAS                auto              the BLAS of host matrix products: auto (MKL     kernels.blas
                                                  when the mkl package is installed, else
                                                  NumPy's), numpy, mkl (an error without it)
    TINYGEN_MM_PAIR_MAX_ROWS    0                 batch sizes up to which a layer's input and      kernels.gemm*
                                                  weight gradient products run at once, each on
                                                  one BLAS thread (0: one after the other; 32
                                                  where a thread wakes fast: kernels/gemm.py)
    TINYGEN_CONV_PARALLEL_MIN   1048576 (1<<20)   elements from which the Numba im2col/col2im     kernels.conv_cpu*
                                                  copies split the batch over the thread pool
    TINYGEN_CONV_CHUNK_BYTES    16777216 (1<<24)  a convolution on the CPU runs its batch in     kernels.conv*
                                                  parts whose column matrices hold at most this
                                                  many bytes (0: the whole batch at once)
    TINYGEN_CONV_THREADS_MIN_BYTES
                                33554432 (1<<25)  a batch on the CPU whose column matrix holds   kernels.conv*
                                                  at least this many bytes runs in 2 MiB parts
                                                  over the thread pool, one BLAS thread each
                                                  (0: never)
    TINYGEN_KEEP_FREED_MEMORY   1                 keep freed host memory for reuse (glibc)       allocator.apply_setting
                                                  when the CLI or a benchmark starts
    TINYGEN_CUDA_STANDIN        0                 serve device="cuda" from the CPU stand-in      backend (first "cuda")
                                                  for CuPy (tests without a GPU)
    TINYGEN_CUDA_GRAPHS         1                 tinygen.compile replays steps on CuPy as CUDA  compile (each record)
                                                  graphs (compile's cuda_graph=None reads it)
    TINYGEN_DATA                (unset)           folder holding MNIST                           data.mnist (each load)
    TINYGEN_CACHE               ~/.cache/tinygen  where trained helper models and tinygen.compile's models.classifier,
                                                  fused loops are cached                         compile.fusion

Flags accept 1/0, true/false, yes/no, on/off; an empty variable means the default; a bad value raises ValueError
naming the variable. Settings marked * are read when their module is imported (set them before ``import tinygen``);
TINYGEN_NUMBA, TINYGEN_BLAS and TINYGEN_CUDA_STANDIN when first needed; the others each time they are used.
"""
import os
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


def _count_or(word):
    def parse(text):
        return word if text.strip().lower() == word else _count(text)
    return parse


def _choice(*options):
    def parse(text):
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value
    return parse


def _path(text):
    return Path(text).expanduser()


# name -> (default, parse): the value used when the variable is unset or empty, and text -> value (raising
# ValueError on bad text). What each one means is the table above.
SETTINGS = {
    "TINYGEN_NUMBA": (True, _flag),
    "TINYGEN_NUMBA_PARALLEL_MIN": (1 << 22, _count),
    "TINYGEN_UFUNC_PARALLEL_MIN": (1 << 18, _count),
    "TINYGEN_UPDATE_PARALLEL_MIN": ("auto", _count_or("auto")),
    "TINYGEN_MM_SWAP_MAX_ROWS": (48, _count),
    "TINYGEN_MM_SHORT_MAX_ROWS": ("auto", _count_or("auto")),
    "TINYGEN_BLAS_PARALLEL_MIN": (0, _count),
    "TINYGEN_BLAS": ("auto", _choice("auto", "numpy", "mkl")),
    "TINYGEN_MM_PAIR_MAX_ROWS": (0, _count),
    "TINYGEN_CONV_PARALLEL_MIN": (1 << 20, _count),
    "TINYGEN_CONV_CHUNK_BYTES": (1 << 24, _count),
    "TINYGEN_CONV_THREADS_MIN_BYTES": (1 << 25, _count),
    "TINYGEN_KEEP_FREED_MEMORY": (True, _flag),
    "TINYGEN_CUDA_STANDIN": (False, _flag),
    "TINYGEN_CUDA_GRAPHS": (True, _flag),
    "TINYGEN_DATA": (None, _path),
    "TINYGEN_CACHE": (Path("~/.cache/tinygen").expanduser(), _path),
}


def get(name):
    """The value of setting ``name`` now: parsed from the environment, or its default when unset or empty."""
    if name not in SETTINGS:
        raise KeyError(f"config.get: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    default, parse = SETTINGS[name]
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        return parse(text)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={text!r}: {e}") from None


def raw(name):
    """The text of setting ``name`` as the environment holds it (None when unset), e.g. for messages."""
    if name not in SETTINGS:
        raise KeyError(f"config.raw: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    return os.environ.get(name)
