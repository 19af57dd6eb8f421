"""Data-parallel communication over MPI (mpi4py), with NCCL for CuPy arrays.

    from tinygen import distributed as dist
    dist.init()                              # from the MPI environment; world size 1 when not under mpiexec
    dist.all_reduce(t, op="mean")            # in place on t.data, on every rank
    if dist.is_main_process(): save(...)     # rank 0 only

Launch N processes with the MPI launcher of the cluster: ``mpiexec -n 2 python train.py`` on one machine,
``srun -n 8 python train.py`` under Slurm, ``mpiexec -n 8 --hostfile hosts python train.py`` across machines.

Without mpi4py, or when the process was not started by an MPI launcher, the world has one process: every call
below is then an identity (``all_reduce`` leaves the data alone, ``barrier`` returns) and nothing is imported, so
single-process code runs unchanged. ``rank()``, ``world_size()`` and the collectives call ``init()`` themselves.

Transports: NumPy arrays go through MPI's buffer interface (``Allreduce(IN_PLACE, array)``: no pickling, no copy
for contiguous arrays). CuPy arrays go through NCCL (``cupy.cuda.nccl``) when CuPy has it: one communicator per
world, its id broadcast over MPI at the first GPU collective, collectives enqueued on the current stream. Without
NCCL they are staged through host memory (copied to NumPy, reduced over MPI, copied back): correct but slower.
Each rank uses the GPU ``local_rank() % device count``, selected by ``init()``.

Failure: in a world of more than one process, ``init()`` wraps ``sys.excepthook`` so that an uncaught exception
prints the failing rank's traceback and calls ``MPI_Abort``: every rank then exits non-zero within seconds instead
of the others waiting forever in their next collective.
"""
import os
import sys
import traceback
import warnings

import numpy as np

from . import backend, config
from ._extras import missing
from .tensor import Tensor

OPS = ("sum", "mean")
# variables set by the launchers of Open MPI, MPICH / Intel MPI (Hydra, PMI) and PMIx (also Slurm's srun --mpi=...)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMI_FD", "PMIX_RANK", "MPI_LOCALNRANKS")


class _World:
    initialized = False
    comm = None  # mpi4py COMM_WORLD when the world has more than one process (or was asked for explicitly)
    rank = 0
    size = 1
    local_rank = 0
    nccl = None  # the NCCL communicator, made at the first collective on a CuPy array
    previous_excepthook = None


_world = _World()


def _launched_by_mpi():
    return any(v in os.environ for v in _LAUNCHER_VARS)


def init(force_mpi=False):
    """Join the MPI world this process was started in (idempotent) and return the world size.

    Without mpi4py installed, or outside an MPI launcher, the world is this one process (unless ``force_mpi``,
    which imports mpi4py regardless: a singleton MPI world). Under MPI it also selects this rank's GPU when CuPy
    sees one, and installs the abort-on-exception hook (see the module docstring).
    """
    if _world.initialized:
        return _world.size
    if not (force_mpi or _launched_by_mpi()):
        _world.initialized = True
        return 1
    try:
        from mpi4py import MPI
    except ImportError:
        if force_mpi:
            raise RuntimeError(missing("distributed.init(force_mpi=True)", "mpi4py", "mpi")) from None
        warnings.warn(missing("tinygen.distributed", "mpi4py", "mpi") + "; this process, started by an MPI "
                      "launcher, runs alone", RuntimeWarning, stacklevel=2)
        _world.initialized = True
        return 1
    comm = MPI.COMM_WORLD
    _world.comm, _world.rank, _world.size = comm, comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
    _world.local_rank = local.Get_rank()
    local.Free()
    _world.initialized = True
    if _world.size > 1:
        _world.previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_exception
        _select_gpu()
    return _world.size


def _select_gpu():
    if config.get("TINYGEN_CUDA_STANDIN"):
        return
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver: a CPU run
        return
    if count:
        cupy.cuda.Device(_world.local_rank % count).use()


def _abort_on_exception(exc_type, exc, tb):
    """sys.excepthook under MPI: print this rank's traceback, then end the whole job (MPI_Abort)."""
    try:
        sys.stderr.write(f"[rank {_world.rank}/{_world.size}] uncaught exception; aborting all ranks\n")
        sys.stderr.write("".join(traceback.format_exception(exc_type, exc, tb)))
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        _world.comm.Abort(1)


def abort(code=1):
    """End the whole job now with exit status ``code``: every rank (MPI_Abort) in a world of more than one
    process, else this process. For an error handled on one rank, which would leave the others waiting in their
    next collective."""
    sys.stdout.flush()
    sys.stderr.flush()
    if init() > 1:
        _world.comm.Abort(int(code))
    raise SystemExit(code)


def is_initialized():
    """True once ``init()`` has run (explicitly or through a first call below)."""
    return _world.initialized


def rank():
    """This process's rank in the world (0 when there is one process)."""
    init()
    return _world.rank


def world_size():
    """The number of processes (1 without MPI)."""
    return init()


def local_rank():
    """This process's rank among the processes on its machine (selects its GPU)."""
    init()
    return _world.local_rank


def is_main_process():
    """True on rank 0: the one process that writes checkpoints, images, metrics and progress bars."""
    return rank() == 0


def barrier():
    """Wait until every rank has reached this call."""
    if init() > 1:
        _world.comm.Barrier()


def all_gather_object(obj):
    """A list of every rank's ``obj`` (picklable), in rank order, on every rank: for small values such as the
    ranks' random generator states in a checkpoint."""
    if init() == 1:
        return [obj]
    return _world.comm.allgather(obj)


# ---- helpers for data-parallel training loops -------------------------------------------------------------------
def split_batch(global_batch_size):
    """The per-rank batch size of a global batch: ``global_batch_size / world_size()``, which must be whole so
    that the average of the ranks' mean losses is the mean loss of the global batch."""
    n = world_size()
    if not isinstance(global_batch_size, (int, np.integer)) or isinstance(global_batch_size, bool) \
            or global_batch_size < 1:
        raise ValueError(f"split_batch: global_batch_size must be a positive int, got {global_batch_size!r}")
    if global_batch_size % n:
        raise ValueError(f"split_batch: global_batch_size={global_batch_size} is not divisible by the world size "
                         f"{n}; choose a multiple of {n}")
    return global_batch_size // n


def shard(batch):
    """This rank's contiguous share of a global batch along dim 0: a tensor or array, or a tuple/list of them
    (e.g. ``(images, labels)``). Every rank loads the same global batch (same DataLoader seed); rank r keeps rows
    ``[r*b, (r+1)*b)`` with ``b = split_batch(len)``, so N ranks see exactly the samples one process would."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(b) for b in batch)
    b = split_batch(len(batch))
    r = rank()
    return batch[r * b:(r + 1) * b]


def rank_seed(seed):
    """A seed for this rank's own generator in code of its own (e.g. a NumPy ``default_rng``): ``seed + rank``;
    rank 0 keeps ``seed``. tinygen's draws inside a data-parallel module use ``tinygen.random.rank_stream``."""
    return int(seed) + rank()


# ---- collectives on tensors --------------------------------------------------------------------------------------
def _check_op(op, fn):
    if op not in OPS:
        raise ValueError(f"{fn}: op must be one of {OPS}, got {op!r}")


def _data(tensor, fn):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{fn}: expected a tinygen Tensor, got {type(tensor).__name__}")
    return tensor.data


def all_reduce(tensor, op="sum"):
    """Replace ``tensor.data`` on every rank, in place, by the sum (or mean) over the ranks. Returns the tensor."""
    _check_op(op, "all_reduce")
    data = _data(tensor, "all_reduce")
    if init() > 1:
        all_reduce_array(data, op)
    return tensor


def broadcast(tensor, src=0):
    """Replace ``tensor.data`` on every rank, in place, by rank ``src``'s. Returns the tensor."""
    data = _data(tensor, "broadcast")
    n = init()
    if not isinstance(src, (int, np.integer)) or not 0 <= src < n:
        raise ValueError(f"broadcast: src must be a rank in [0, {n}), got {src!r}")
    if n > 1:
        broadcast_array(data, src)
    return tensor


# ---- collectives on arrays (the transports) ---------------------------------------------------------------------
class _Done:
    """The handle of a collective that completed when it was started (or is ordered by a CUDA stream)."""
    def wait(self):
        return None

    def test(self):
        return True


class _MPIRequest:
    def __init__(self, request, after=None):
        self.request, self.after = request, after

    def wait(self):
        self.request.Wait()
        if self.after is not None:
            self.after()
            self.after = None

    def test(self):
        return self.request.Test()


def _host_buffer(array):
    """What MPI reads and writes for a host array: the array itself when it is C-contiguous, else a C-ordered copy
    (a channels-last convolution weight, a view), which the caller writes back. C order on every rank, whatever
    layout each rank's array has."""
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _is_host(array):
    return isinstance(array, np.ndarray)


def all_reduce_array(array, op="sum"):
    """All-reduce an array in place (NumPy over MPI, CuPy over NCCL or host staging)."""
    iall_reduce_array(array, op, blocking=True).wait()
    return array


def iall_reduce_array(array, op="sum", blocking=False):
    """Start an in-place all-reduce of an array and return a handle whose ``wait()`` completes it. The array
    must not be read or written before ``wait()``. Every rank must start its collectives in the same order.
    ``blocking``: complete it before returning (MPI's blocking ``Allreduce``, which Open MPI runs 2-3x faster
    than a nonblocking one waited for at once: for a reduction with nothing left to overlap)."""
    _check_op(op, "all_reduce")
    n = init()
    if n == 1:
        return _Done()
    if _is_host(array):
        from mpi4py import MPI
        buf = _host_buffer(array)

        def after():
            if op == "mean":
                np.divide(buf, n, out=buf, casting="unsafe")
            if buf is not array:
                array[...] = buf
        if blocking:
            _world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            after()
            return _Done()
        return _MPIRequest(_world.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), after)
    _device_all_reduce(array)
    if op == "mean":
        array /= n
    return _Done()  # NCCL work is ordered on the current stream; host staging has finished


def broadcast_array(array, src=0):
    """Overwrite an array in place with rank ``src``'s copy."""
    if init() == 1:
        return array
    if _is_host(array):
        buf = _host_buffer(array)
        _world.comm.Bcast(buf, root=src)
        if buf is not array:
            array[...] = buf
        return array
    nccl = _nccl_for(array)
    if nccl is not None:
        import cupy
        nccl_mod = cupy.cuda.nccl
        nccl.bcast(array.data.ptr, array.size, _nccl_dtype(nccl_mod, array.dtype), src,
                   cupy.cuda.get_current_stream().ptr)
        return array
    host = np.ascontiguousarray(_to_host(array))
    _world.comm.Bcast(host, root=src)
    array[...] = _from_host(array, host)
    return array


def _to_host(array):
    return backend.to_device(array, "cpu")


def _from_host(like, host):
    xp = backend.array_module("cuda")
    return xp.asarray(host, dtype=like.dtype)


def _nccl_for(array):
    """The NCCL communicator for a collective on ``array``: a contiguous CuPy array (not the CPU stand-in's), where
    the ranks could make one; else None (host staging)."""
    if not array.flags.c_contiguous or not backend.is_cupy_array(array):
        return None
    return _nccl_comm()


def _nccl_comm():
    """The NCCL communicator of the world (made once), or None where CuPy has no NCCL or a rank could not make
    one (two ranks on one GPU: NCCL refuses that). Every rank takes the same way, so no rank waits in NCCL for
    a rank that stages through host memory."""
    if _world.nccl is not None:
        return _world.nccl or None
    nccl, why = False, None
    if not config.get("TINYGEN_CUDA_STANDIN"):
        try:
            from cupy.cuda import nccl as nccl_mod
            if not getattr(nccl_mod, "available", True):
                raise ImportError("CuPy was built without NCCL")
            uid = nccl_mod.get_unique_id() if _world.rank == 0 else None
            uid = _world.comm.bcast(uid, root=0)  # a small id, once: the only pickled message
            nccl = nccl_mod.NcclCommunicator(_world.size, uid, _world.rank)
        except ImportError:
            nccl = False
        except Exception as e:  # noqa: BLE001 - NcclError: staged through host memory instead, said once
            nccl, why = False, f"{type(e).__name__}: {e}"
        if not all(_world.comm.allgather(nccl is not False)):
            if why is None and nccl is not False:
                why = "another rank could not make its NCCL communicator"
            if why is not None and _world.rank == 0:
                warnings.warn(f"tinygen.distributed: NCCL is not used ({why}); collectives on CuPy arrays are "
                              f"staged through host memory (one GPU per rank is what NCCL needs)",
                              RuntimeWarning, stacklevel=3)
            nccl = False
    _world.nccl = nccl
    return nccl or None


def _nccl_dtype(nccl_mod, dtype):
    names = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
             "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}
    name = names.get(np.dtype(dtype).name)
    if name is None:
        raise TypeError(f"all_reduce: NCCL has no type for {np.dtype(dtype).name}")
    return getattr(nccl_mod, name)


def _device_all_reduce(array):
    nccl = _nccl_for(array)
    if nccl is not None:
        import cupy
        nccl_mod = cupy.cuda.nccl
        ptr = array.data.ptr
        nccl.allReduce(ptr, ptr, array.size, _nccl_dtype(nccl_mod, array.dtype), nccl_mod.NCCL_SUM,
                       cupy.cuda.get_current_stream().ptr)
        return
    from mpi4py import MPI
    host = np.ascontiguousarray(_to_host(array))  # host staging: a copy that MPI can read and write
    _world.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
    array[...] = _from_host(array, host)
