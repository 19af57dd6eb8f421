"""Batch normalisation with statistics over the batches of all ranks (``tinygen.nn.SyncBatchNorm``).

Forward: one all-reduce of the per-channel [sum, sum of squares] and the element count; every rank normalises with
the global mean and biased variance, and updates its running statistics with them (so they agree on all ranks).
Backward: one all-reduce of the two per-channel gradient sums that the input gradient needs, sum(g) and
sum(g * x_hat). The weight and bias gradients stay local sums (the data-parallel wrapper averages them, as for any
parameter). In a world of one process this is ``batch_norm`` in training mode.

The variance is E[x^2] - mean^2 in the input's dtype: with float32 inputs whose mean is far larger than their
spread it loses digits that BatchNorm's two-pass variance keeps.
"""
from .. import distributed as dist
from ..autograd.function import Function
from ..tensor import _make
from .nn import batch_norm_momentum, update_running_stats


class AllReduceSumFunction(Function):
    """The sum of a tensor over the ranks, differentiable: the gradient is again the sum over the ranks (the loss
    being the sum of the ranks' losses)."""

    @staticmethod
    def forward(ctx, x):
        return dist.all_reduce_array(x.data.copy(), "sum")

    @staticmethod
    def backward(ctx, g):
        return AllReduceSumFunction.apply(g)

    @staticmethod
    def array_backward(ctx, g):
        return dist.all_reduce_array(g.copy(), "sum")


def _channel_layout(x):
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    return c, axes, (1, c) + (1,) * (x.ndim - 2)


class SyncBatchNormFunction(Function):
    """Training-mode batch normalisation over axis 1 of x (N, C, *) with the statistics of all ranks."""
    forward_writes = (3, 4)  # running_mean, running_var

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        xp, d = ctx.xp, x.data
        c, axes, shape = _channel_layout(d)
        stats = xp.empty(2 * c + 1, dtype=d.dtype)
        stats[:c] = d.sum(axis=axes)
        stats[c:2 * c] = (d * d).sum(axis=axes)
        stats[2 * c] = d.size // c
        dist.all_reduce_array(stats, "sum")
        n = stats[2 * c].item()
        mean = stats[:c] / n
        var = xp.maximum(stats[c:2 * c] / n - mean * mean, 0)
        inv_std = 1.0 / xp.sqrt(var + eps)
        x_hat = (d - mean.reshape(shape)) * inv_std.reshape(shape)
        out = x_hat * weight.data.reshape(shape) if weight is not None else x_hat
        if bias is not None:
            out = out + bias.data.reshape(shape)
        update_running_stats(running_mean, running_var, mean, var, n, momentum)
        ctx.axes, ctx.shape, ctx.count, ctx.eps = axes, shape, n, eps
        ctx.save_for_backward(x, weight, _make(x_hat, x.device), _make(inv_std.reshape(shape), x.device))
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, _, _ = ctx.saved_tensors
        need = ctx.next_edges
        axes, shape, n = ctx.axes, ctx.shape, ctx.count
        # x_hat and inv_std again with tinygen ops from the global sums: both depend on x on every rank
        mean = AllReduceSumFunction.apply(x.sum(axes, keepdim=True)) * (1.0 / n)
        mean_sq = AllReduceSumFunction.apply((x * x).sum(axes, keepdim=True)) * (1.0 / n)
        inv_std = 1.0 / (mean_sq - mean * mean + ctx.eps).sqrt()
        x_hat = (x - mean) * inv_std
        local_sg = g.sum(axes, keepdim=True)
        local_sgx = (g * x_hat).sum(axes, keepdim=True)
        gx = None
        if need[0] is not None:
            sg, sgx = AllReduceSumFunction.apply(local_sg), AllReduceSumFunction.apply(local_sgx)
            k = inv_std * weight.reshape(shape) if weight is not None else inv_std
            gx = k * (g - (sg + x_hat * sgx) * (1.0 / n))
        c = x.shape[1]
        gw = local_sgx.reshape(c) if need[1] is not None else None
        gb = local_sg.reshape(c) if need[2] is not None else None
        return gx, gw, gb, None, None, None, None

    @staticmethod
    def array_backward(ctx, g):
        _, weight, x_hat, inv_std = ctx.saved_tensors
        need = ctx.next_edges
        xp, axes, shape, n = ctx.xp, ctx.axes, ctx.shape, ctx.count
        c = g.shape[1]
        xh = x_hat.data
        sums = xp.empty(2 * c, dtype=g.dtype)
        sums[:c] = g.sum(axis=axes)
        sums[c:] = (g * xh).sum(axis=axes)
        gw = sums[c:].copy() if need[1] is not None else None  # local: averaged later like any gradient
        gb = sums[:c].copy() if need[2] is not None else None
        gx = None
        if need[0] is not None:
            dist.all_reduce_array(sums, "sum")
            k = inv_std.data * weight.data.reshape(shape) if weight is not None else inv_std.data
            gx = k * (g - (sums[:c].reshape(shape) + xh * sums[c:].reshape(shape)) * (1.0 / n))
        return gx, gw, gb, None, None, None, None


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5):
    """Training-mode batch normalisation of input (N, C, *) with the batch statistics of all ranks."""
    return SyncBatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                       batch_norm_momentum(momentum, "sync_batch_norm"), float(eps))
