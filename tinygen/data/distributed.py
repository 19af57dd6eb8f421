"""``DistributedSampler``: each rank its own shard of the example indices, reshuffled every epoch."""
import numpy as np

from .. import distributed as _dist


class DistributedSampler:
    """The indices of one rank's shard of a dataset, as PyTorch's ``DistributedSampler``.

    dataset_len_or_dataset: the number of examples, or anything with ``len()``.
    num_replicas, rank: default to ``tinygen.distributed.world_size()`` and ``rank()``.
    shuffle: a new permutation each epoch, the same on every rank: drawn from ``(seed, epoch)``, so ranks agree
        without communicating as long as they share ``seed`` and call ``set_epoch(epoch)`` before each epoch.
    drop_last: drop the tail so that every shard has ``len // num_replicas`` examples; otherwise the permutation
        is padded by wrapping around to a multiple of ``num_replicas`` (a few examples are then seen twice).

    Rank r takes every ``num_replicas``-th index starting at r: together the shards cover every example once per
    epoch (plus the padding), and all have the same length, so every rank runs the same number of steps.
    """

    def __init__(self, dataset_len_or_dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        n = dataset_len_or_dataset
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            if not hasattr(n, "__len__"):
                raise TypeError(f"DistributedSampler: dataset_len_or_dataset must be an int or have len(), got "
                                f"{type(n).__name__}")
            n = len(n)
        if n < 0:
            raise ValueError(f"DistributedSampler: the dataset length must be >= 0, got {n}")
        num_replicas = _dist.world_size() if num_replicas is None else num_replicas
        if not isinstance(num_replicas, (int, np.integer)) or isinstance(num_replicas, bool) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive int, got {num_replicas!r}")
        rank = _dist.rank() if rank is None else rank
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be an int in [0, {num_replicas}), got {rank!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"DistributedSampler: seed must be an int, got {type(seed).__name__}")
        self.dataset_len, self.num_replicas, self.rank = int(n), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.dataset_len // self.num_replicas
        else:
            self.num_samples = -(-self.dataset_len // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        """Select the permutation of ``epoch`` (call it with the same value on every rank before each epoch)."""
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"DistributedSampler.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def indices(self):
        """This rank's indices for the current epoch, as an int64 array of length ``len(self)``."""
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.dataset_len)
        else:
            order = np.arange(self.dataset_len)
        if self.total_size > len(order) and len(order):  # pad by wrapping around (repeatedly if tiny)
            order = np.resize(order, self.total_size)
        order = order[:self.total_size]
        return order[self.rank::self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler(len={self.dataset_len}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})")
