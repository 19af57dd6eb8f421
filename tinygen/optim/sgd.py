"""Stochastic gradient descent, with momentum, dampening, Nesterov momentum and weight decay (PyTorch's rule)."""
from .. import kernels
from ..tensor import _make
from .optimizer import Optimizer, check_lr, check_range


class SGD(Optimizer):
    """Stochastic gradient descent (optionally with momentum), with PyTorch's update rule.

    One difference: a momentum buffer entry that would become subnormal (below ~1.2e-38 in float32, e.g. the
    geometric decay of a unit whose gradient stays zero) is set to zero, because subnormal arithmetic is many
    times slower on x86 CPUs. The update it drops is far below a float's resolution of any parameter.

    Args:
        params: tensors to optimize, or parameter groups (dicts).
        lr: learning rate: a number, or a 0-d tensor on the parameters' device (see ``Optimizer``).
        momentum: momentum factor (0 disables it).
        dampening: dampening of the momentum (scales the new gradient by ``1 - dampening``).
        weight_decay: L2 penalty added to the gradient (``weight_decay * param``).
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening = 0).
        maximize: ascend the objective instead of descending it.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _validate(self, group):
        check_lr(group["lr"], owner="SGD")
        check_range("momentum", group["momentum"], owner="SGD")
        check_range("dampening", group["dampening"], owner="SGD")
        check_range("weight_decay", group["weight_decay"], owner="SGD")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _device_only(self):
        """A step is device work once every momentum buffer exists (the first step makes them in Python)."""
        return True

    def _step_group(self, group):
        lr, momentum, dampening = self._lr_of(group), group["momentum"], group["dampening"]
        weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
        state_of = self.state
        updates = {}  # the parameters of one device: one multi-tensor call
        for p in group["params"]:
            grad = self._grad_of(p)
            if grad is None:
                continue
            buf, first = None, False
            if momentum:  # plain SGD keeps no state (as PyTorch)
                state = state_of.setdefault(p, {})
                first = "momentum_buffer" not in state  # the step fills a fresh buffer with the gradient
                if first:
                    state["momentum_buffer"] = _make(p.xp.empty_like(p.data), p._device)
                buf = state["momentum_buffer"].data
            updates.setdefault(p._device, []).append((p.data, grad, buf, first))
        for params, grads, bufs, firsts in self._columns(updates).values():
            kernels.get("sgd_steps", params[0])(  # the update rule: tinygen.kernels.reference.sgd_step
                params, grads, bufs, lr, momentum, dampening, nesterov, weight_decay, maximize, firsts,
                scratch=self._workspace)
