"""Random tensors, reproducible with ``manual_seed``. Each device has its own generator, seeded together.

Two streams: the main one, and the rank stream, which a data-parallel module's forward draws from (its dropout
masks; ``with rank_stream():``). The rank stream's generators are seeded from the seed and this process's rank
(``numpy.random.SeedSequence([seed, rank, device])``), so each process of a data-parallel run drops its own units
while the main stream (noise drawn for the whole global batch) stays the same on every process. In a world of one
process nothing draws from it unless asked.
"""
import contextlib
import zlib

import numpy as np

from .capture import replayed
from . import backend, dtypes
from ._checks import check_int, check_real, is_int
from .tensor import _make, _size, get_default_dtype, require_tensor

_seed = None
_generators = {}       # the main stream: device -> generator
_rank_generators = {}  # the rank stream: device -> generator
_in_rank_stream = False


@replayed  # seeding inside a compiled step: every replay seeds again at the same point
def manual_seed(seed):
    """Seed every random draw of tinygen (all devices). Two runs with the same seed draw the same numbers."""
    global _seed
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be a non-negative integer, got {seed!r}")
    _seed = int(seed)
    _generators.clear()
    _rank_generators.clear()


def initial_seed():
    return _seed


def generator(device="cpu"):
    """The generator of a device (a NumPy or CuPy ``Generator``) that draws now: the rank stream's inside
    ``rank_stream()``, else the main stream's."""
    return _stream_generator(device, _in_rank_stream)


def _stream_generator(device, rank):
    gens = _rank_generators if rank else _generators
    g = gens.get(device)
    if g is None:
        xp = backend.array_module(device)
        g = gens[device] = xp.random.default_rng(_rank_stream_seed(device) if rank else _seed)
    return g


def _rank_stream_seed(device):
    from . import distributed  # the rank; imported here, as only data-parallel code draws from this stream
    if _seed is None:
        return None  # unseeded, as the main stream then is
    sequence = np.random.SeedSequence([_seed, distributed.rank(), zlib.crc32(device.encode())])
    return int(sequence.generate_state(1, np.uint64)[0])


@replayed  # a compiled step switches streams at the same points on every replay
def _use_rank_stream(flag):
    global _in_rank_stream
    _in_rank_stream = flag


@contextlib.contextmanager
def rank_stream():
    """Draw from the rank stream inside the block (see the module docstring); DistributedDataParallel's forward
    runs its module inside it."""
    previous = _in_rank_stream
    _use_rank_stream(True)
    try:
        yield
    finally:
        _use_rank_stream(previous)


def get_rng_state(device="cpu", rank_stream=False):
    """The state of a device's generator (the main stream's, or the rank stream's), for checkpoints: NumPy's
    (and the stand-in's) as its dict of plain values; CuPy's as ``{"curand_states": uint8 array}``, a host copy of
    the per-thread cuRAND states (CuPy's generators expose no public state, so this reads the private buffer they
    keep them in)."""
    bitgen = _stream_generator(device, rank_stream).bit_generator
    try:
        return dict(bitgen.state)
    except (AttributeError, TypeError, NotImplementedError):  # CuPy: ``state`` is a method returning a pointer
        pass
    buf = getattr(bitgen, "_state", None)
    if buf is None:
        raise NotImplementedError(f"the generator of device {device!r} ({type(bitgen).__name__}) exposes no state")
    return {"curand_states": backend.to_device(buf, "cpu").view(np.uint8).copy()}


@replayed
def set_rng_state(state, device="cpu", rank_stream=False):
    """Restore what ``get_rng_state(device, rank_stream)`` returned."""
    bitgen = _stream_generator(device, rank_stream).bit_generator
    if isinstance(state, dict) and "curand_states" in state:
        buf = getattr(bitgen, "_state", None)
        saved = np.asarray(state["curand_states"], dtype=np.uint8)
        if buf is None or buf.nbytes != saved.nbytes:
            raise ValueError(f"can't restore the generator of device {device!r}: the saved cuRAND states hold "
                             f"{saved.nbytes} bytes, this generator "
                             f"{'none' if buf is None else buf.nbytes} (another GPU or CuPy version?)")
        buf.view(np.uint8)[...] = backend.to_device(saved, device)
        return
    bitgen.state = state


def _device_draw(device):
    """The graph_key (``capture.replayed``) of a draw on ``device``: its generator, when the generator's state lives
    on the device (CuPy's cuRAND states: a CUDA graph's launch then draws afresh from it and moves it on, as an
    eager call does); None for a host generator, whose state a launch would not move."""
    g = generator(backend.normalize_device(device))
    return (id(g),) if _state_on_device(g) else None


def _state_on_device(g):
    return type(g).__module__.split(".")[0] == "cupy"


def _float(dtype):
    dt = dtypes.as_dtype(dtype) if dtype is not None else get_default_dtype()
    if dt.kind != "f":
        raise TypeError(f"random floats need a floating dtype, got {dt.name}")
    return dt


def _out(data, device, requires_grad):
    t = _make(data, device)
    if requires_grad:
        t.requires_grad = True
    return t


@replayed(graph_key=lambda *size, dtype=None, device="cpu", requires_grad=False: _device_draw(device))
def randn(*size, dtype=None, device="cpu", requires_grad=False):
    """Standard normal samples."""
    device = backend.normalize_device(device)
    dt = _float(dtype)
    g = generator(device)
    shape = _size(size, "randn")
    data = g.standard_normal(shape, dtype=dt) if dt != dtypes.float16 else \
        g.standard_normal(shape, dtype=dtypes.float32).astype(dt)
    return _out(data, device, requires_grad)


@replayed(graph_key=lambda *size, dtype=None, device="cpu", requires_grad=False: _device_draw(device))
def rand(*size, dtype=None, device="cpu", requires_grad=False):
    """Uniform samples in [0, 1)."""
    device = backend.normalize_device(device)
    dt = _float(dtype)
    g = generator(device)
    shape = _size(size, "rand")
    data = g.random(shape, dtype=dt) if dt != dtypes.float16 else \
        g.random(shape, dtype=dtypes.float32).astype(dt)
    return _out(data, device, requires_grad)


@replayed(graph_key=lambda low, high=None, size=(), dtype=None, device="cpu": _device_draw(device))
def randint(low, high=None, size=(), dtype=None, device="cpu"):
    """Integers in [low, high), of an integer dtype (int64 by default) or drawn as int64 and cast to a floating
    one."""
    if high is None:
        low, high = 0, low
    low, high = check_int(low, "randint", "low"), check_int(high, "randint", "high")
    if low >= high:
        raise ValueError(f"randint: random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
    shape = _size((size,) if is_int(size) else size, "randint")
    device = backend.normalize_device(device)
    dt = dtypes.as_dtype(dtype) if dtype is not None else dtypes.int64
    draw = dt if dt.kind in "iu" else dtypes.int64
    if dt.kind == "b" or (dt.kind in "iu" and not np.iinfo(dt).min <= low < high - 1 <= np.iinfo(dt).max):
        raise ValueError(f"randint: the range [{low}, {high}) does not fit dtype {dt.name}")
    return _make(generator(device).integers(low, high, size=shape, dtype=draw).astype(dt, copy=False), device)


@replayed
def randperm(n, device="cpu"):
    check_int(n, "randperm", "n", low=0)
    device = backend.normalize_device(device)
    return _make(generator(device).permutation(n).astype(dtypes.int64), device)


@replayed(graph_key=lambda t, dtype=None, device=None, requires_grad=False: _device_draw(device or t.device))
def randn_like(t, dtype=None, device=None, requires_grad=False):
    require_tensor(t, "randn_like")
    return randn(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


@replayed(graph_key=lambda t, dtype=None, device=None, requires_grad=False: _device_draw(device or t.device))
def rand_like(t, dtype=None, device=None, requires_grad=False):
    require_tensor(t, "rand_like")
    return rand(t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


@replayed(graph_key=lambda mean, std, size, dtype=None, device="cpu": _device_draw(device))
def normal(mean, std, size, dtype=None, device="cpu"):
    """Samples of N(mean, std**2) (mean and std numbers) of shape ``size``."""
    check_real(mean, "normal", "mean")
    check_real(std, "normal", "std")
    if std < 0:
        raise ValueError(f"normal: normal expects std >= 0.0, but found std {std}")
    return randn(size, dtype=dtype, device=device) * std + mean


@replayed
def bernoulli(p):
    """0/1 samples with probability ``p`` (a tensor), in ``p``'s dtype; not differentiable."""
    require_tensor(p, "bernoulli", "p")
    if p.data.dtype.kind != "f":
        raise TypeError(f"bernoulli: p must be a floating tensor of probabilities, got dtype {p.dtype}")
    if p.data.size and not bool(((p.data >= 0) & (p.data <= 1)).all()):
        raise ValueError("bernoulli: all elements of p must be probabilities in [0, 1] (some are outside, or NaN)")
    u = generator(p.device).random(p.shape, dtype=p.dtype if p.dtype.kind == "f" else dtypes.float32)
    return _make((u < p.data).astype(p.dtype), p.device)
