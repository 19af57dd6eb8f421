"""Fused kernels under the ops: one pass over memory where plain array code makes several.

Each computation is defined once, as plain array code, in reference.py; faster versions share its name and
signature and are checked against it (tests/test_kernels.py):
  reference.py  plain array code for any array module: the definition, and what runs when nothing faster is in use;
  cpu.py        Numba loops (optional dependency; imported and compiled on first use, cached on disk);
  gpu.py        CuPy versions: the reference's expressions fused into one CUDA kernel each;
  gemm.py       the matrix product on NumPy arrays, with the operand layouts that keep BLAS at full speed;
  gemm_short.py short float32 products (a small batch through a Linear layer) in Numba's vector registers, which
                gemm.py runs instead of BLAS where Numba is installed and on (a route like the choice of BLAS);
  threads.py    thread counts, and from what size work is split across threads.

Ops and optimizers call ``get(name, array)(...)``: the fast version for data like ``array`` where one is in use,
else the reference function. ``lookup(name, array)`` is the same choice, returning None instead of the reference.
A Numba kernel is chosen only for NumPy float32/float64 arrays while ``enabled()``, a CuPy kernel only for real
CuPy arrays, and only kernels that beat the plain code in ``python -m benchmarks.kernel_bench`` are listed.

    enabled()              Numba importable and the setting TINYGEN_NUMBA (tinygen.config) is on
    set_enabled(flag)      switch the Numba path on/off at run time (None: back to the environment's choice)
    enabled_as(flag)       the same for a ``with`` block
    get(name, array)       the kernel for this array (fast, or the reference)
    lookup(name, array)    the fast kernel for this array, or None
    module(device)         the kernel module a device uses now (cpu, gpu or reference)

Kernels are used in forward passes, in plain ``backward()`` passes and in optimizer steps. A backward that records
a graph (``create_graph=True``) always runs the differentiable formulas in tinygen ops, so second derivatives are
never computed by a kernel. Benchmarks: ``python -m benchmarks.kernel_bench`` (each kernel) and
``python -m benchmarks.step_bench`` (whole training steps); results in benchmarks/PROFILE.md.
"""
import contextlib

import numpy as np

from .. import config
from .._extras import missing
from ..backend import is_cupy_array
from . import reference

KERNELS = ("relu_fwd", "relu_bwd", "leaky_relu_fwd", "leaky_relu_bwd", "tanh_fwd", "tanh_bwd", "sigmoid_fwd",
           "sigmoid_bwd", "elu_fwd", "elu_bwd", "softplus_fwd", "softplus_bwd", "bias_act_fwd", "bias_act_bwd",
           "sgd_step", "sgd_steps", "adam_step", "adam_steps", "rmsprop_step", "rmsprop_steps", "ema_update",
           "batchnorm_fwd", "batchnorm_bwd", "batchnorm_act_fwd", "batchnorm_act_bwd", "bce_with_logits",
           "log_softmax_fwd", "log_softmax_bwd", "cross_entropy", "mm",
           "conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight")  # conv: conv.py, conv_cpu.py, conv_gpu.py

# The Numba kernels that lookup() hands out: those that beat the reference by a clear margin at the sizes of our
# models (``python -m benchmarks.kernel_bench``; numbers in benchmarks/PROFILE.md). Left out: tanh_fwd, which is
# NumPy's own single SIMD pass already (the kernel just calls it), and mm, which is gemm.py's with or without Numba
# (its route for short products, gemm_short.py, is fixed for the process like the choice of BLAS).
CPU_USED = frozenset(KERNELS) - {"tanh_fwd", "mm"}

# Sizes (elements) above which a Numba kernel loses to the reference, whose exponentials are SIMD: lookup() returns
# None for larger arrays (log-softmax 1024x1000 is 0.86x in float32, cross-entropy 0.69x in float64).
CPU_MAX_SIZE = {"log_softmax_fwd": 1 << 18, "cross_entropy": 1 << 18}

# Ranks above which a Numba kernel is not used (none at present: batch norm takes (N, C, *)).
CPU_MAX_NDIM = {}

# The CuPy kernels that lookup() hands out: the fused elementwise ones and optimizer steps (RMSprop's is the
# reference's in-place code); the reductions are the reference's code on CuPy (left out here).
GPU_USED = frozenset(KERNELS) - {"batchnorm_fwd", "batchnorm_bwd", "batchnorm_act_fwd", "batchnorm_act_bwd",
                                 "log_softmax_fwd", "log_softmax_bwd",
                                 "cross_entropy", "mm"}

_enabled = None
_cpu_table = None
_gpu_table = None
_ndarray = np.ndarray


def _detect():
    return config.get("TINYGEN_NUMBA") and _numba_importable()


def enabled():
    """True when the Numba kernels are in use: numba imports and the setting TINYGEN_NUMBA is on."""
    global _enabled
    if _enabled is None:
        _enabled = _detect()
    return _enabled


def set_enabled(flag):
    """Turn the Numba kernels on (True) or off (False), or back to the default (None); returns the old state.

    Turning them on without Numba installed raises ImportError.
    """
    global _enabled, _cpu_table
    old = enabled()
    if flag and not _numba_importable():
        raise ImportError(missing("the Numba kernels", "numba", "numba"))
    _enabled = None if flag is None else bool(flag)
    _cpu_table = None
    return old


@contextlib.contextmanager
def enabled_as(flag):
    """``with kernels.enabled_as(False):`` runs a block on the plain array code (for comparisons and tests)."""
    old = set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(old)


def _numba_importable():
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _load_cpu():
    global _cpu_table
    from . import gemm
    table = {"mm": gemm.mm}  # operand choices for BLAS, with or without Numba
    if enabled():
        from . import cpu
        table.update({name: getattr(cpu, name) for name in CPU_USED})
    _cpu_table = table
    return table


def _load_gpu():
    global _gpu_table
    from . import gpu
    _gpu_table = {name: getattr(gpu, name) for name in GPU_USED}
    return _gpu_table


def lookup(name, array):
    """The fast kernel ``name`` for data like ``array`` (Numba, CuPy, gemm.mm), or None where there is none.

    Cheap enough for every op call: a type check and a dictionary lookup once the tables are built.
    """
    if type(array) is _ndarray:
        table = _cpu_table if _cpu_table is not None else _load_cpu()
        fn = table.get(name)
        if fn is None or array.dtype.char not in "fd":
            return None
        cap = CPU_MAX_SIZE.get(name)
        if cap is not None and array.size > cap:
            return None
        max_ndim = CPU_MAX_NDIM.get(name)
        return fn if max_ndim is None or array.ndim <= max_ndim else None
    if is_cupy_array(array):
        table = _gpu_table if _gpu_table is not None else _load_gpu()
        return table.get(name)
    return None  # the CuPy stand-in, host scalars: plain path


def get(name, array):
    """The kernel ``name`` for data like ``array``: the fast version (Numba / CuPy) where one is in use, else the
    plain array definition in reference.py. Ops call what this returns; they keep no copy of the math."""
    fn = lookup(name, array)
    return fn if fn is not None else getattr(reference, name)


def module(device):
    """The kernel module a device would use right now: cpu (Numba) when enabled, gpu on "cuda", else reference."""
    if device == "cpu":
        if enabled():
            from . import cpu
            return cpu
        return reference
    from . import gpu
    return gpu

