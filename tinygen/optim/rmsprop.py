"""RMSprop (Hinton), plain, centered and with momentum, with PyTorch's update rule."""
from .. import kernels
from ..tensor import _make
from .optimizer import Optimizer, check_lr, check_range


class RMSprop(Optimizer):
    """RMSprop, with PyTorch's update rule.

    One difference: an entry of a running average (squared gradient, gradient when centered, momentum buffer) that
    would become subnormal (below ~1.2e-38 in float32, e.g. the geometric decay of a unit whose gradient stays
    zero) is set to zero, because subnormal arithmetic is many times slower on x86 CPUs.

    Args:
        params: tensors to optimize, or parameter groups (dicts).
        lr: learning rate: a number, or a 0-d tensor on the parameters' device (see ``Optimizer``).
        alpha: decay rate of the running average of the squared gradient.
        eps: added to the denominator, after the square root.
        weight_decay: L2 penalty added to the gradient.
        momentum: momentum factor (0 disables it).
        centered: divide by an estimate of the gradient's variance (subtracting the squared running mean).
        maximize: ascend the objective instead of descending it.
        capturable: count each parameter's steps in a float64 array on its device (``state["step"]`` a 0-d
            tensor, as ``Adam``'s): a step is then device work only, which a CUDA graph can take (the update
            itself does not read the count).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 maximize=False, capturable=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize, capturable=capturable))

    def _validate(self, group):
        check_lr(group["lr"], owner="RMSprop")
        check_range("alpha", group["alpha"], owner="RMSprop")
        check_range("eps", group["eps"], owner="RMSprop")
        check_range("weight_decay", group["weight_decay"], owner="RMSprop")
        check_range("momentum", group["momentum"], owner="RMSprop")

    def _device_only(self):
        return all(group["capturable"] for group in self.param_groups)

    def _step_group(self, group):
        lr, alpha, eps, weight_decay = self._lr_of(group), group["alpha"], group["eps"], group["weight_decay"]
        momentum, centered, maximize = group["momentum"], group["centered"], group["maximize"]
        state_of = self.state
        updates = {}  # the parameters of one device: one multi-tensor call
        for p in group["params"]:
            grad = self._grad_of(p)
            if grad is None:
                continue
            xp = p.xp
            state = state_of.get(p)
            if state is None:
                state = state_of[p] = {"step": 0, "square_avg": _make(xp.zeros_like(p.data), p._device)}
            if momentum > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = _make(xp.zeros_like(p.data), p._device)
            if centered and "grad_avg" not in state:
                state["grad_avg"] = _make(xp.zeros_like(p.data), p._device)
            self._next_step(state, p, group["capturable"])
            updates.setdefault(p._device, []).append(
                (p.data, grad, state["square_avg"].data, state["grad_avg"].data if centered else None,
                 state["momentum_buffer"].data if momentum > 0 else None))
        for ps, gs, vs, gas, bufs in self._columns(updates).values():
            kernels.get("rmsprop_steps", ps[0])(  # the update rule: tinygen.kernels.reference.rmsprop_step
                ps, gs, vs, gas if centered else None, bufs if momentum > 0 else None, lr, alpha, eps,
                weight_decay, momentum, centered, maximize, scratch=self._workspace)
