"""Global switches of the autograd engine: graph recording (no_grad / enable_grad) and anomaly detection.

They are plain attributes of one object so that the hot path reads them with a single attribute lookup.
"""
import functools


class _State:
    __slots__ = ("grad_enabled", "anomaly")

    def __init__(self):
        self.grad_enabled = True
        self.anomaly = False


STATE = _State()


def is_grad_enabled():
    return STATE.grad_enabled


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
