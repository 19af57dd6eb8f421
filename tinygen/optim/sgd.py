"""Stochastic gradient descent, with momentum, dampening, Nesterov momentum and weight decay (PyTorch's rule)."""
from .. import kernels
from ..tensor import _make
from .optimizer import Optimizer, check_range, effective_grad


def _sgd_update(xp, param, grad, momentum_buffer, work, *, lr, momentum, dampening, weight_decay, nesterov,
                maximize):
    """One SGD step on arrays, in place on ``param`` (and on ``momentum_buffer``).

        g = ±grad + weight_decay * param
        buf = g on the first step, else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (Nesterov) or buf
        param -= lr * g

    ``work`` holds two scratch arrays shaped like ``param``. Returns the momentum buffer (a new array on the
    first step, None without momentum).
    """
    w0, w1 = work
    g = effective_grad(xp, param, grad, weight_decay, maximize, w0)
    if momentum:
        if momentum_buffer is None:
            momentum_buffer = g.copy()
        else:
            momentum_buffer *= momentum
            if dampening:
                xp.multiply(g, 1 - dampening, out=w1)
                momentum_buffer += w1
            else:
                momentum_buffer += g
        if nesterov:
            xp.multiply(momentum_buffer, momentum, out=w1)
            w1 += g
            g = w1
        else:
            g = momentum_buffer
    xp.multiply(g, lr, out=w1)
    param -= w1
    return momentum_buffer


class SGD(Optimizer):
    """Stochastic gradient descent (optionally with momentum), with PyTorch's update rule.

    Args:
        params: tensors to optimize, or parameter groups (dicts).
        lr: learning rate.
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
        check_range("lr", group["lr"], owner="SGD")
        check_range("momentum", group["momentum"], owner="SGD")
        check_range("dampening", group["dampening"], owner="SGD")
        check_range("weight_decay", group["weight_decay"], owner="SGD")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _step_group(self, group):
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
        state_of = self.state
        for p in group["params"]:
            grad = self._grad_of(p)
            if grad is None:
                continue
            fused = kernels.lookup("sgd_step", p.data)  # one pass over the arrays (tinygen.kernels), same rule
            if fused is not None:
                self._fused_step(fused, p, grad, group)
                continue
            if not momentum:  # plain SGD keeps no state (as PyTorch)
                _sgd_update(p.xp, p.data, grad, None, self._scratch(p, 2), lr=lr, momentum=0, dampening=dampening,
                            weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
                continue
            state = state_of.get(p)
            if state is None:
                state = state_of[p] = {}
            buf = state.get("momentum_buffer")
            new = _sgd_update(p.xp, p.data, grad, None if buf is None else buf.data, self._scratch(p, 2),
                              lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                              nesterov=nesterov, maximize=maximize)
            if buf is None:
                state["momentum_buffer"] = _make(new, p._device)

    def _fused_step(self, fused, p, grad, group):
        momentum = group["momentum"]
        buf = None
        first = False
        if momentum:
            state = self.state.setdefault(p, {})
            first = "momentum_buffer" not in state  # the kernel fills a fresh buffer with the gradient
            if first:
                state["momentum_buffer"] = _make(p.xp.empty_like(p.data), p._device)
            buf = state["momentum_buffer"].data
        fused(p.data, grad, buf, group["lr"], momentum, group["dampening"], group["nesterov"], group["weight_decay"],
              group["maximize"], first)
