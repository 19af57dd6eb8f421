"""The gradient checker: analytic gradients from the engine against central differences in float64.

``gradcheck`` weights the outputs by a random upstream gradient ``u`` (so every output element matters, not
only their sum) and compares ``d<u, f(x)>/dx`` with central differences:
  - full mode: element by element for every input (2 evaluations of ``f`` per element; names the worst element);
  - fast mode: along one random direction per input (2 evaluations per input), as autograd/Chainer/PyTorch's
    fast mode do, which keeps large checks cheap.
``gradgradcheck`` runs ``gradcheck`` on the function that maps (inputs, upstream gradients) to the gradients,
computed with ``create_graph=True``: it checks the second derivatives.
"""
import numpy as np

from .. import backend
from ..tensor import Tensor, _make
from .engine import grad as _grad
from .grad_mode import enable_grad, no_grad


class GradcheckError(RuntimeError):
    pass


def _outputs(fn, xs):
    out = fn(*xs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, Tensor) and o.data.dtype.kind == "f"]


def _host(a):
    return a.get() if backend.is_device_array(a) else np.asarray(a)


def _weighted(outs, us):
    return sum(float((_host(o.data).astype(np.float64) * u).sum()) for o, u in zip(outs, us))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, *, fast_mode=False, raise_exception=True, seed=0):
    """Check ``fn``'s gradients with respect to the ``inputs`` that require grad (they must be float64).

    Returns True, or raises ``GradcheckError`` naming the input, the worst element's index, and the analytic and
    numeric values (returns False instead with ``raise_exception=False``).
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not diff:
        raise ValueError("gradcheck: no input requires grad")
    for i in diff:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; central differences need float64 "
                             f"inputs (use .double())")
    # private contiguous copies, so perturbing them never touches the caller's tensors
    xs = list(inputs)
    for i in diff:
        t = inputs[i]
        xs[i] = _make(t.xp.array(t.data, copy=True, order="C"), t._device, True)
    rng = np.random.default_rng(seed)
    outs = _outputs(fn, xs)
    us = [rng.standard_normal(o.shape) for o in outs]
    live = [(o, u) for o, u in zip(outs, us) if o.requires_grad]
    if live:
        gos = [_make(o.xp.asarray(u.astype(o.data.dtype)), o._device) for o, u in live]
        analytic = _grad([o for o, _ in live], [xs[i] for i in diff], gos, allow_unused=True)
    else:
        analytic = [None] * len(diff)

    def numeric_along(x, direction):
        flat = x.data.reshape(-1)  # a view: x.data is contiguous
        orig = flat.copy()
        with no_grad():
            flat += direction * eps
            up = _weighted(_outputs(fn, xs), us)
            flat[...] = orig - direction * eps
            down = _weighted(_outputs(fn, xs), us)
            flat[...] = orig
        return (up - down) / (2 * eps)

    for j, i in enumerate(diff):
        x = xs[i]
        a = np.zeros(x.shape) if analytic[j] is None else _host(analytic[j].data).astype(np.float64)
        a = a.reshape(-1)
        xp = x.xp
        if fast_mode:
            v = rng.standard_normal(x.data.size)
            num = numeric_along(x, xp.asarray(v))
            ana = float(a @ v)
            if not abs(ana - num) <= atol + rtol * abs(num):
                return _fail(raise_exception, f"gradcheck (fast mode) failed for input {i} (shape {x.shape}): "
                             f"directional derivative analytic {ana:.8g}, numeric {num:.8g}")
            continue
        num = np.empty(x.data.size)
        for k in range(x.data.size):
            e = xp.zeros(x.data.size, dtype=x.data.dtype)
            e[k] = 1
            num[k] = numeric_along(x, e)
        err = np.abs(a - num) - (atol + rtol * np.abs(num))
        if err.size and (err > 0).any():
            k = int(np.argmax(err))
            idx = tuple(int(v) for v in np.unravel_index(k, x.shape)) if x.shape else ()
            return _fail(raise_exception, f"gradcheck failed for input {i} (shape {x.shape}) at index {idx}: "
                         f"analytic {a[k]:.8g}, numeric {num[k]:.8g} (|difference| {abs(a[k] - num[k]):.3g} > "
                         f"atol {atol} + rtol {rtol} * |numeric|)")
    return True


def _fail(raise_exception, message):
    if raise_exception:
        raise GradcheckError(message)
    return False


def gradgradcheck(fn, inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3, *, fast_mode=False,
                  raise_exception=True, seed=0):
    """Check second derivatives: ``gradcheck`` of (inputs, upstream grads) -> ``grad(fn, create_graph=True)``."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    n = len(inputs)
    if grad_outputs is None:
        rng = np.random.default_rng(seed + 1)
        outs = _outputs(fn, inputs)
        grad_outputs = [_make(o.xp.asarray(rng.standard_normal(o.shape)), o._device, True) for o in outs]
    grad_outputs = list(grad_outputs)

    def first_derivative(*args):
        xs, gos = args[:n], args[n:]
        with enable_grad():  # the numeric side evaluates under no_grad, but the gradient needs a graph
            return _first(xs, gos)

    def _first(xs, gos):
        outs = _outputs(fn, xs)
        pairs = [(o, g) for o, g in zip(outs, gos) if o.requires_grad]
        if not pairs:
            return ()
        grads = _grad([o for o, _ in pairs], [xs[i] for i in diff], [g for _, g in pairs], create_graph=True,
                      allow_unused=True)
        return tuple(g for g in grads if g is not None)

    return gradcheck(first_derivative, inputs + tuple(grad_outputs), eps, atol, rtol, fast_mode=fast_mode,
                     raise_exception=raise_exception, seed=seed)
