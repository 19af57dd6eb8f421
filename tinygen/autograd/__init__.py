"""Reverse-mode automatic differentiation: graph recording switches, the Function base class, the engine, checks."""
from .grad_mode import no_grad, enable_grad, set_grad_enabled, is_grad_enabled
from .function import Function, once_differentiable
from .engine import backward, grad, queue_callback
from .gradcheck import gradcheck, gradgradcheck, GradcheckError
from .anomaly import detect_anomaly, is_anomaly_enabled
