"""Adam and AdamW (decoupled weight decay), with PyTorch's update rule, including AMSGrad and maximize."""
import numbers

from .. import kernels
from ..tensor import _make
from .optimizer import Optimizer, check_lr, check_range


class Adam(Optimizer):
    """Adam (Kingma & Ba), with PyTorch's update rule.

    One difference: an entry of either moment that would become subnormal (below ~1.2e-38 in float32, e.g. the
    geometric decay of a unit whose gradient stays zero) is set to zero, because subnormal arithmetic is many
    times slower on x86 CPUs (XLA flushes them too). The update it drops is below 1e-30 of the step size.

    Args:
        params: tensors to optimize, or parameter groups (dicts).
        lr: learning rate: a number, or a 0-d tensor on the parameters' device (see ``Optimizer``).
        betas: decay rates of the running averages of the gradient and of its square.
        eps: added to the denominator, after the square root of the bias-corrected second moment.
        weight_decay: L2 penalty added to the gradient (AdamW: decoupled decay of the parameters).
        amsgrad: use the running maximum of the second moment (AMSGrad).
        maximize: ascend the objective instead of descending it.
        decoupled_weight_decay: decay the parameters directly (``param *= 1 - lr * weight_decay``) as AdamW does.
        capturable: count each parameter's steps in a float64 array on its device (``state["step"]`` a 0-d
            tensor) instead of a Python int, as PyTorch's ``capturable=True``: a step is then device work only, so
            ``tinygen.compile`` captures it in the CUDA graph with the backward before it. The bias corrections
            are computed from that count on the device, with the host's formula (the same values); each
            parameter is then updated on its own (no multi-tensor call), which is slower outside a graph.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 maximize=False, decoupled_weight_decay=False, capturable=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                                      capturable=capturable))

    def _validate(self, group):
        name = type(self).__name__
        check_lr(group["lr"], owner=name)
        check_range("eps", group["eps"], owner=name)
        check_range("weight_decay", group["weight_decay"], owner=name)
        betas = group["betas"]
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, numbers.Real) for b in betas)):
            raise ValueError(f"{name}: betas must be a pair of numbers (beta1, beta2), got {betas!r}")
        check_range("betas[0]", betas[0], 0.0, 1.0, owner=name)
        check_range("betas[1]", betas[1], 0.0, 1.0, owner=name)

    def _device_only(self):
        return all(group["capturable"] for group in self.param_groups)

    def _step_group(self, group):
        lr, (beta1, beta2), eps = self._lr_of(group), group["betas"], group["eps"]
        weight_decay, amsgrad, maximize = group["weight_decay"], group["amsgrad"], group["maximize"]
        decoupled, capturable = group["decoupled_weight_decay"], group["capturable"]
        state_of = self.state
        updates = {}  # the parameters of one step count on one device: one multi-tensor call
        counts = {}  # capturable: each parameter's count array, by id (a call of its own)
        for p in group["params"]:
            grad = self._grad_of(p)
            if grad is None:
                continue
            state = state_of.get(p)
            if state is None:
                state = state_of[p] = {"step": 0, "exp_avg": _make(p.xp.zeros_like(p.data), p._device),
                                       "exp_avg_sq": _make(p.xp.zeros_like(p.data), p._device)}
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = _make(p.xp.zeros_like(p.data), p._device)
            count = self._next_step(state, p, capturable)
            if capturable:  # the kernel reads the count on the device
                key = id(count)
                counts[key] = count.data
            else:
                key = count
            updates.setdefault((key, p._device), []).append(
                (p.data, grad, state["exp_avg"].data, state["exp_avg_sq"].data,
                 state["max_exp_avg_sq"].data if amsgrad else None))
        for (key, _), (params, grads, exp_avgs, exp_avg_sqs, vmaxs) in self._columns(updates).items():
            kernels.get("adam_steps", params[0])(  # the update rule: tinygen.kernels.reference.adam_step
                params, grads, exp_avgs, exp_avg_sqs, vmaxs if amsgrad else None, lr, beta1, beta2, eps,
                weight_decay, decoupled, counts[key] if capturable else key, maximize, scratch=self._workspace)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``param *= 1 - lr * weight_decay`` each step,
    instead of an L2 penalty in the gradient. Arguments as ``Adam``; ``weight_decay`` defaults to 1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False, capturable=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True, capturable=capturable)
