"""Data parallelism: the same model on every rank, each rank its share of the batch, gradients averaged.

    from tinygen import distributed as dist
    from tinygen.nn.parallel import DistributedDataParallel
    dist.init()
    model = DistributedDataParallel(Net())         # rank 0's parameters and buffers on every rank
    loss = loss_fn(model(dist.shard(x)), dist.shard(y))
    loss.backward()                                 # returns with every .grad averaged over the ranks
    opt.step()                                      # every rank takes the same step

See ``tinygen.distributed`` for launching and the transports.
"""
import contextlib

from .. import backend, distributed as dist, random as _random
from ..autograd.engine import queue_callback
from ..capture import replayed
from ..tensor import _make
from .module import Module


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training over the ranks of ``tinygen.distributed``.

    - At wrap time, rank 0's parameters and buffers are broadcast to every rank (identical starting points).
    - During ``backward()``, the gradients are summed over the ranks and divided by the world size, so each rank's
      ``.grad`` is the average of the ranks' gradients: with each rank's loss the mean over its share of the global
      batch, that is the gradient of the mean loss over the global batch.
    - The gradients travel in flat buckets of about ``bucket_cap_mb`` MiB, filled with the parameters in reverse
      order of registration (the order in which backward produces them, as PyTorch's DDP). A bucket's nonblocking
      all-reduce (``Iallreduce``) starts as soon as the last of its gradients is accumulated (a post-accumulate
      hook on each parameter), while backward goes on through earlier layers; buckets start in index order on
      every rank, and all are waited for before ``backward()`` returns (a callback queued on the engine). The
      last bucket, ready when nothing of the backward is left to overlap, is reduced by a blocking all-reduce
      (Open MPI completes it 2-3x faster than a nonblocking one).
    - A parameter that got no gradient on a rank contributes zeros; it gets the average if any rank produced a
      gradient for it, and keeps ``.grad = None`` if none did (so optimizers skip it everywhere alike).
    - ``no_sync()``: backward passes inside it only accumulate locally (gradient accumulation); the first backward
      after it averages the accumulated gradients.
    - ``broadcast_buffers``: rank 0's buffers (e.g. BatchNorm running statistics, which are per-rank) are broadcast
      before each forward in training mode, as PyTorch does.
    - Random draws inside the module (dropout masks) come from the rank stream (``tinygen.random.rank_stream``):
      seeded from the seed and the rank, so each rank drops its own units.
    - Gradient penalties (WGAN-GP): ``autograd.grad(..., create_graph=True)`` accumulates nothing and triggers
      nothing; the graph of the penalty stays local, and only the final ``.grad`` of ``loss.backward()`` is averaged.
    - ``tinygen.compile``: a compiled step that calls the wrapper replays its forward's buffer broadcast and
      ``no_sync()``'s switches, and its replayed backward runs the engine again, whose hooks start and wait for
      every bucket's all-reduce once per replay, as in eager.

    Wrap the module after moving it to its device and dtype (the buckets are laid out at wrap time), and wrap it
    once. ``forward`` calls the wrapped module; ``self.module`` is it, and ``self.module.state_dict()`` has the keys of
    the unwrapped model (``self.state_dict()`` prefixes them with ``module.``, as PyTorch). In a world of one
    process nothing is communicated.
    """

    def __init__(self, module, bucket_cap_mb=25, broadcast_buffers=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a tinygen.nn.Module, got "
                            f"{type(module).__name__}")
        if not isinstance(bucket_cap_mb, (int, float)) or isinstance(bucket_cap_mb, bool) or bucket_cap_mb <= 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number, got "
                             f"{bucket_cap_mb!r}")
        self.module = module
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = bool(broadcast_buffers)
        self.world_size = dist.init()
        self._sync = True
        self._round = None  # the buckets' progress during one backward: None between backwards
        params = [p for p in module.parameters() if p.requires_grad]
        for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
            dist.broadcast_array(t.data, 0)
        self._buckets = _make_buckets(list(reversed(params)), bucket_cap_mb * 2 ** 20)
        self._where = {id(p): (i, j) for i, b in enumerate(self._buckets) for j, p in enumerate(b.params)}
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in params] \
            if self.world_size > 1 else []

    def forward(self, *args, **kwargs):
        if self._round is not None:  # a backward that raised left a round open: finish it in step with the others
            self._finish()
        if self.broadcast_buffers and self.training and self.world_size > 1:
            _broadcast_buffers(self.module)
        with _random.rank_stream():  # each rank its own dropout masks
            return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, without communication."""
        previous = self._sync
        _set_sync(self, False)
        try:
            yield
        finally:
            _set_sync(self, previous)

    @property
    def bucket_sizes(self):
        """The number of parameters in each bucket, in the order they are reduced."""
        return [len(b.params) for b in self._buckets]

    # ---- during backward ---------------------------------------------------------------------------------------------
    def _on_grad_ready(self, p):
        if not self._sync:
            return
        if self._round is None:
            self._round = _Round(len(self._buckets))
            queue_callback(self._finish)
        rnd = self._round
        rnd.ready[self._where[id(p)][0]] += 1
        buckets = self._buckets
        while rnd.launched < len(buckets) and rnd.ready[rnd.launched] == len(buckets[rnd.launched].params):
            self._launch(rnd.launched)  # in index order on every rank, so the collectives match
            rnd.launched += 1
        for req in rnd.requests:  # lets MPI progress the reductions already started
            req.test()

    def _launch(self, i):
        # the last bucket has no backward left to overlap: a blocking all-reduce, which MPI completes faster
        self._round.requests.append(self._buckets[i].start(blocking=i == len(self._buckets) - 1))

    def _finish(self):
        rnd = self._round
        while rnd.launched < len(self._buckets):  # buckets with parameters that got no gradient here
            self._launch(rnd.launched)
            rnd.launched += 1
        for bucket, req in zip(self._buckets, rnd.requests):
            req.wait()
            bucket.write_back(self.world_size)
        self._round = None


# array code and flags that a compiled step (tinygen.compile) must repeat on every replay: the bucket all-reduces
# need nothing of this kind, as a replayed backward runs the engine, whose hooks start and finish them again
@replayed
def _broadcast_buffers(module):
    for b in module.buffers():
        if b is not None:
            dist.broadcast_array(b.data, 0)


@replayed
def _set_sync(ddp, flag):
    ddp._sync = flag


class _Round:
    def __init__(self, n):
        self.ready = [0] * n
        self.launched = 0
        self.requests = []


class _Bucket:
    """Parameters of one device and dtype whose gradients are reduced as one flat array: their gradients, then
    one flag per parameter (1 where this rank has a gradient), so every rank learns which parameters got one."""

    def __init__(self, params):
        self.params = params
        self.offsets = []
        n = 0
        for p in params:
            self.offsets.append(n)
            n += p.data.size
        self.numel = n
        self.flat = None

    def start(self, blocking=False):
        p0 = self.params[0]
        if self.flat is None:
            self.flat = p0.xp.empty(self.numel + len(self.params), dtype=p0.data.dtype)
        flat = self.flat
        for k, (p, off) in enumerate(zip(self.params, self.offsets)):
            n = p.data.size
            if p.grad is None:
                flat[off:off + n] = 0
                flat[self.numel + k] = 0
            else:
                flat[off:off + n] = p.grad.data.reshape(-1)
                flat[self.numel + k] = 1
        return dist.iall_reduce_array(flat, "sum", blocking=blocking)

    def write_back(self, world_size):
        flat = self.flat
        has_grad = backend.to_device(flat[self.numel:], "cpu")  # read on the host once, not per parameter
        xp = self.params[0].xp
        for k, (p, off) in enumerate(zip(self.params, self.offsets)):
            total = flat[off:off + p.data.size].reshape(p.data.shape)
            if p.grad is not None:  # the mean written straight into .grad (after backward returned, it owns it)
                xp.divide(total, world_size, out=p.grad.data)
            elif has_grad[k] > 0:
                p.grad = _make(total / world_size, p._device)


def _make_buckets(params, cap_bytes):
    """Consecutive parameters of one device and dtype, a new bucket when the next would pass ``cap_bytes``."""
    buckets, current, size = [], [], 0
    for p in params:
        nbytes = p.data.nbytes
        if current and (size + nbytes > cap_bytes or p._device != current[0]._device
                        or p.data.dtype != current[0].data.dtype):
            buckets.append(_Bucket(current))
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(_Bucket(current))
    return buckets
