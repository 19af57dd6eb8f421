"""RMSprop (Hinton), plain, centered and with momentum, with PyTorch's update rule."""
from .. import kernels
from ..tensor import _make
from .optimizer import Optimizer, check_range, effective_grad, lerp_


def _rmsprop_update(xp, param, grad, square_avg, grad_avg, momentum_buffer, work, *, lr, alpha, eps,
                    weight_decay, momentum, centered, maximize):
    """One RMSprop step on arrays, in place on ``param`` and on the running averages.

        g = ±grad + weight_decay * param
        s = alpha * s + (1 - alpha) * g * g
        a = alpha * a + (1 - alpha) * g                     (centered; as a lerp)
        d = sqrt(s - a * a) (centered) or sqrt(s), then + eps
        buf = momentum * buf + g / d; param -= lr * buf     (momentum > 0)
        param -= lr * g / d                                 (otherwise)

    ``work`` holds two scratch arrays shaped like ``param``.
    """
    w0, w1 = work
    g = effective_grad(xp, param, grad, weight_decay, maximize, w0)
    square_avg *= alpha
    xp.multiply(g, 1 - alpha, out=w1)
    w1 *= g
    square_avg += w1
    if centered:
        lerp_(xp, grad_avg, g, 1 - alpha, w1)
        xp.multiply(grad_avg, grad_avg, out=w1)
        xp.subtract(square_avg, w1, out=w1)
        xp.sqrt(w1, out=w1)
    else:
        xp.sqrt(square_avg, out=w1)
    w1 += eps
    xp.divide(g, w1, out=w1)
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += w1
        xp.multiply(momentum_buffer, lr, out=w1)
    else:
        w1 *= lr
    param -= w1


class RMSprop(Optimizer):
    """RMSprop, with PyTorch's update rule.

    Args:
        params: tensors to optimize, or parameter groups (dicts).
        lr: learning rate.
        alpha: decay rate of the running average of the squared gradient.
        eps: added to the denominator, after the square root.
        weight_decay: L2 penalty added to the gradient.
        momentum: momentum factor (0 disables it).
        centered: divide by an estimate of the gradient's variance (subtracting the squared running mean).
        maximize: ascend the objective instead of descending it.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    def _validate(self, group):
        check_range("lr", group["lr"], owner="RMSprop")
        check_range("alpha", group["alpha"], owner="RMSprop")
        check_range("eps", group["eps"], owner="RMSprop")
        check_range("weight_decay", group["weight_decay"], owner="RMSprop")
        check_range("momentum", group["momentum"], owner="RMSprop")

    def _step_group(self, group):
        lr, alpha, eps, weight_decay = group["lr"], group["alpha"], group["eps"], group["weight_decay"]
        momentum, centered, maximize = group["momentum"], group["centered"], group["maximize"]
        state_of = self.state
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
            state["step"] += 1
            fused = kernels.lookup("rmsprop_step", p.data)  # one pass over the arrays (tinygen.kernels), same rule
            if fused is not None:
                fused(p.data, grad, state["square_avg"].data, state["grad_avg"].data if centered else None,
                      state["momentum_buffer"].data if momentum > 0 else None, lr, alpha, eps, weight_decay,
                      momentum, centered, maximize)
                continue
            _rmsprop_update(xp, p.data, grad, state["square_avg"].data,
                            state["grad_avg"].data if centered else None,
                            state["momentum_buffer"].data if momentum > 0 else None, self._scratch(p, 2),
                            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                            centered=centered, maximize=maximize)
