"""Switches of the autograd engine: graph recording (no_grad / enable_grad) and anomaly detection.

Each is an attribute of one object, so that the hot path reads it with a single attribute lookup. As in PyTorch,
graph recording is per thread (an inference thread's ``no_grad`` leaves a training thread recording its graph)
and anomaly detection is one switch for the process.
"""
import functools
import threading


class _State(threading.local):
    def __init__(self):  # run in each thread on its first use: recording on
        self.grad_enabled = True


class _Anomaly:
    __slots__ = ("enabled",)

    def __init__(self):
        self.enabled = False


STATE = _State()
ANOMALY = _Anomaly()


def is_grad_enabled():
    return STATE.grad_enabled


def check_in_place(tensor, what):
    """Raise unless ``tensor``'s values may be written in place by ``what`` (an op outside the graph, such as
    ``t[i] = v``): a tensor that requires grad only when it is a leaf (a parameter) and no graph is being built
    (under no_grad: an EMA's update, a hand-written init), as PyTorch allows it."""
    if tensor._requires_grad and (STATE.grad_enabled or tensor.grad_fn is not None):
        raise RuntimeError(f"{what} to a tensor of shape {tuple(tensor.shape)} that requires grad is not supported "
                           f"{'with grad on' if tensor.grad_fn is None else 'on a tensor an op made'}: build a new "
                           f"tensor with where() or cat() instead, or, to change a parameter's values (an EMA, an "
                           f"init), write it under tinygen.no_grad()")


class _GradModeContext:
    """Context manager and decorator that sets graph recording on or off for a block or a function."""
    _mode = True

    def __enter__(self):
        self._prev = STATE.grad_enabled
        STATE.grad_enabled = self._mode
        return self

    def __exit__(self, *exc):
        STATE.grad_enabled = self._prev
        return False

    def __call__(self, fn):
        mode = self._mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = STATE.grad_enabled
            STATE.grad_enabled = mode
            try:
                return fn(*args, **kwargs)
            finally:
                STATE.grad_enabled = prev
        return wrapper


class no_grad(_GradModeContext):
    """Do not record the graph: ops inside give tensors with ``requires_grad=False`` (inference, updates)."""
    _mode = False


class enable_grad(_GradModeContext):
    """Record the graph again inside a ``no_grad`` block."""
    _mode = True


class set_grad_enabled(_GradModeContext):
    """``set_grad_enabled(mode)``: recording on or off, as a context manager or decorator."""

    def __init__(self, mode):
        self._mode = bool(mode)
