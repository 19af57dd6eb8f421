"""Mini-batches of tinygen tensors from in-memory arrays, with seeded, resumable shuffling; pixel scaling helpers.

Reproducibility: the order of epoch ``e`` and the augmentation generator of its batch ``b`` are derived from
``(seed, e)`` and ``(seed, e, b)`` alone, so a loader restored with ``load_state_dict`` continues exactly where
the saved one stopped, with the same order and the same augmentations.
"""
import numpy as np

from .. import backend, dtypes
from ..tensor import Tensor, _make, get_default_dtype
from .transforms import takes_generator


def _host(x, what):
    if isinstance(x, Tensor):
        return backend.to_device(x.data, "cpu")
    if isinstance(x, np.ndarray):
        return x
    if backend.is_device_array(x):
        return x.get()
    try:
        return np.asarray(x)
    except Exception as e:
        raise TypeError(f"{what}: can't make an array from {type(x).__name__}: {e}") from None


class DataLoader:
    """Iterate over mini-batches of in-memory arrays as tinygen tensors.

    data: one array (batches are tensors), or a tuple/list of arrays with the same first dimension such as
        ``(images, labels)`` (batches are tuples of tensors), or an object with ``images`` and ``labels``
        (an ``MNIST`` record). NumPy arrays, tensors and nested lists are accepted.
    batch_size: examples per batch; the last batch is smaller unless ``drop_last``.
    shuffle: a new order each epoch, reproducible from ``seed``.
    seed: int seeding the order and augmentations; default: drawn from tinygen's CPU generator, so it follows
        ``tinygen.manual_seed``.
    transform: applied to the batch of the FIRST array (NumPy, before it becomes a tensor). A transform with a
        ``generator`` parameter (everything in ``tinygen.data.transforms``, ``binarize``) gets a per-batch NumPy
        Generator; others are called with the batch alone.
    device: where the batches live. Without a transform, the arrays are copied to the device once and batches
        are gathered there.
    dtype: the dtype of floating arrays (default: tinygen's default float); integer arrays (labels) keep theirs.

    ``state_dict()`` / ``load_state_dict()`` save and restore the seed, epoch and position within the epoch.
    Each ``iter()`` starts the next epoch, except the first after ``load_state_dict``, which resumes.
    """

    def __init__(self, data, batch_size=64, shuffle=False, drop_last=False, seed=None, transform=None,
                 device="cpu", dtype=None):
        if hasattr(data, "images") and hasattr(data, "labels"):
            data = (data.images, data.labels)
        self._single = not isinstance(data, (tuple, list))
        arrays = [data] if self._single else list(data)
        if not arrays:
            raise ValueError("DataLoader: got an empty tuple of arrays")
        arrays = [_host(a, f"DataLoader array {i}") for i, a in enumerate(arrays)]
        for i, a in enumerate(arrays):
            if a.ndim == 0:
                raise ValueError(f"DataLoader: array {i} is a scalar; every array needs a first (example) dimension")
        lengths = {len(a) for a in arrays}
        if len(lengths) != 1:
            raise ValueError("DataLoader: the arrays have different numbers of examples: shapes "
                             + ", ".join(str(a.shape) for a in arrays))
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be callable, got {type(transform).__name__}")
        self.arrays = arrays
        self.num_examples = lengths.pop()
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self._transform_takes_generator = transform is not None and takes_generator(transform)
        self.device = backend.normalize_device(device)
        self.dtype = dtypes.as_dtype(dtype) if dtype is not None else get_default_dtype()
        if self.dtype.kind != "f":
            raise TypeError(f"DataLoader: dtype is for floating arrays and must be floating, got {self.dtype.name}")
        if seed is None:
            from .. import random
            seed = int(random.generator("cpu").integers(0, 2**63))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self._epoch = 0         # the epoch the current (or next) iterator runs
        self._batch = 0         # the next batch of that epoch
        self._started = False   # an iterator has begun self._epoch
        self._resume = False    # the next iter() continues (epoch, batch) instead of starting a new epoch
        self._token = 0         # which iterator may update the position
        self._device_arrays = None

    # ---- sizes ---------------------------------------------------------------------------------------------------
    def __len__(self):
        """Batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def epoch(self):
        """The epoch that the current or next iterator runs (0 first)."""
        return self._epoch

    # ---- randomness ----------------------------------------------------------------------------------------------
    def _rng(self, *key):
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=key)))

    def order(self, epoch):
        """The example order of ``epoch`` (a permutation when shuffling, else 0..N-1)."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return self._rng(epoch, 0).permutation(self.num_examples)

    # ---- iteration -------------------------------------------------------------------------------------------------
    def __iter__(self):
        if self._resume:
            self._resume = False
        else:
            if self._started:  # the previous iterator was abandoned part-way: move on to a new epoch
                self._epoch += 1
            self._batch = 0
        self._started = True
        self._token += 1
        order = self.order(self._epoch) if self.shuffle else None
        return self._run(self._token, self._epoch, order, self._batch, len(self))

    def _run(self, token, epoch, order, start, nbatches):
        for b in range(start, nbatches):
            out = self._make_batch(epoch, order, b)
            if self._token == token:  # position is updated before the yield: a checkpoint taken while the
                if b + 1 == nbatches:  # batch is used says it was consumed
                    self._end_epoch()
                else:
                    self._batch = b + 1
            yield out
        if start >= nbatches and self._token == token:
            self._end_epoch()

    def _end_epoch(self):
        self._epoch += 1
        self._batch = 0
        self._started = False

    def _make_batch(self, epoch, order, b):
        lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_examples)
        index = order[lo:hi] if order is not None else slice(lo, hi)
        outs = []
        for i, a in enumerate(self.arrays):
            if i == 0 and self.transform is not None:
                x = a[index]
                g = self._rng(epoch, 1, b) if self._transform_takes_generator else None
                x = self.transform(x, generator=g) if g is not None else self.transform(x)
                x = _host(x, "DataLoader transform output")
                x = self._cast(x, copy=np.may_share_memory(x, a))
                outs.append(_make(backend.to_device(x, self.device) if self.device != "cpu" else x, self.device))
            elif self.device == "cpu":
                outs.append(_make(self._cast(a[index], copy=True), "cpu"))
            else:
                d = self._on_device()[i]
                if order is None:
                    outs.append(_make(d[index].copy(), self.device))  # a slice is a view: copy it
                else:
                    outs.append(_make(d[backend.array_module(self.device).asarray(index)], self.device))
        return outs[0] if self._single else tuple(outs)

    def _cast(self, x, copy):
        """Floating arrays to the loader's dtype; arrays of other kinds keep theirs. Always a fresh array when
        ``copy`` (batches must not alias the dataset: tensors can be written in place)."""
        if x.dtype.kind == "f" and x.dtype != self.dtype:
            return x.astype(self.dtype)
        if x.dtype not in dtypes.SUPPORTED:
            return x.astype(np.int64 if x.dtype.kind in "iu" else self.dtype)
        return np.array(x, copy=True) if copy else x

    def _on_device(self):
        if self._device_arrays is None:
            xp = backend.array_module(self.device)
            self._device_arrays = [xp.asarray(self._cast(a, copy=False)) for a in self.arrays]
        return self._device_arrays

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self):
        """Position and seed as plain values: a loader given this state continues with the same batches."""
        return {"seed": self.seed, "epoch": self._epoch, "batch": self._batch, "num_examples": self.num_examples,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state):
        """Restore ``state_dict()``; the next ``iter()`` resumes at the saved epoch and batch."""
        missing = [k for k in ("seed", "epoch", "batch") if k not in state]
        if missing:
            raise KeyError(f"DataLoader.load_state_dict: missing key(s) {missing}; got {sorted(state)}")
        for key in ("num_examples", "batch_size", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"DataLoader.load_state_dict: the state was saved with {key}={state[key]!r}, "
                                 f"this loader has {key}={getattr(self, key)!r}")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"DataLoader.load_state_dict: epoch {epoch}, batch {batch} out of range "
                             f"({len(self)} batches per epoch)")
        self.seed, self._epoch, self._batch = int(state["seed"]), epoch, batch
        self._resume, self._started = True, False
        self._token += 1  # iterators from before the restore no longer move the position


# ---- pixel scaling ------------------------------------------------------------------------------------------------
def _unwrap(x):
    """(array, array module, device — None for a plain array, so the result is one too)."""
    if isinstance(x, Tensor):
        return x.data, x.xp, x.device
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"expected image data (a numeric array or tensor), got {type(x).__name__} of dtype "
                        f"{arr.dtype}")
    return arr, np, None


def _wrap(arr, device):
    return arr if device is None else _make(arr, device)


def _unit(arr, dt):
    if arr.dtype.kind in "iu":
        return arr.astype(dt) / dt.type(255.0)
    if arr.dtype.kind in "fb":
        return arr.astype(dt, copy=False)
    raise TypeError(f"expected image data (integer 0..255 or floating 0..1), got dtype {arr.dtype}")


def _float_dtype(dtype, fn):
    dt = dtypes.as_dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{fn}: dtype must be a floating dtype (pixels become fractions), got {dt.name}")
    return dt


def to_unit(images, dtype=dtypes.float32):
    """Pixels as floats in [0, 1]: integer images (0..255) are divided by 255; floating ones are taken to be in
    [0, 1] already and only cast. NumPy in, NumPy out; tensor in, tensor out."""
    arr, _, device = _unwrap(images)
    return _wrap(_unit(arr, _float_dtype(dtype, "to_unit")), device)


def to_symmetric(images, dtype=dtypes.float32):
    """Pixels as floats in [-1, 1] (the range of a tanh generator): integer images map 0..255 to -1..1, floating
    ones are taken to be in [0, 1]."""
    arr, _, device = _unwrap(images)
    dt = _float_dtype(dtype, "to_symmetric")
    if arr.dtype.kind in "iu":
        out = arr.astype(dt) / dt.type(127.5) - dt.type(1.0)
    else:
        out = _unit(arr, dt) * dt.type(2.0) - dt.type(1.0)
    return _wrap(out, device)


def binarize(x, generator=None):
    """Dynamic binarisation: each pixel becomes 1 with probability equal to its intensity, else 0.

    x: floating pixels in [0, 1] (integer images are scaled by 1/255 first), NumPy array or tensor; the result
    has the same type, shape and (floating) dtype. generator: a NumPy Generator (or int seed); default: tinygen's
    generator of the data's device. Draw a fresh sample each epoch, as in the VAE literature.
    """
    arr, _, device = _unwrap(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"binarize: expected floating pixels in [0, 1] or integer 0..255, got dtype {arr.dtype}")
    p = _unit(arr, dtypes.float32) if arr.dtype.kind in "iu" else arr
    udtype = dtypes.float64 if p.dtype == dtypes.float64 else dtypes.float32
    if generator is None:
        from .. import random
        u = random.generator(device or "cpu").random(p.shape, dtype=udtype)
    else:
        from .transforms import as_generator
        u = as_generator(generator).random(p.shape, dtype=udtype)
        if device not in (None, "cpu"):
            u = backend.to_device(u, device)
    return _wrap((u < p).astype(p.dtype), device)
