"""``detect_anomaly()``: stop at the first op whose forward or backward makes NaN or Inf, and say where it was called.

Off by default; when off it costs one attribute check per op.
"""
from .grad_mode import ANOMALY, _GradModeContext


class detect_anomaly(_GradModeContext):
    """Context manager (and decorator) that turns anomaly detection on for a block."""

    def __enter__(self):
        self._prev = ANOMALY.enabled
        ANOMALY.enabled = True
        return self

    def __exit__(self, *exc):
        ANOMALY.enabled = self._prev
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with detect_anomaly():
                return fn(*args, **kwargs)
        return wrapper


def is_anomaly_enabled():
    return ANOMALY.enabled
