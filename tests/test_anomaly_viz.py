"""detect_anomaly (where NaN/Inf first appears, forward or backward) and the graph drawings of tinygen.viz."""
import inspect
import os
import re

import numpy as np
import pytest

import tinygen as tg
from tinygen.autograd import Function, is_anomaly_enabled

HERE = os.path.basename(__file__)


def _line():
    """The line number of the caller (so tests can check the reported file:line)."""
    return inspect.currentframe().f_back.f_lineno


# ---- detect_anomaly --------------------------------------------------------------------------------------------------
def test_off_by_default_nan_passes_silently():
    assert not is_anomaly_enabled()
    x = tg.tensor([1.0, -1.0], requires_grad=True)
    with np.errstate(invalid="ignore"):
        y = x.log()
    assert np.isnan(y.detach().numpy()[1])


def test_forward_nan_names_op_and_user_line():
    x = tg.tensor([1.0, -1.0], requires_grad=True)
    ok = x.exp()  # finite: no error
    with tg.detect_anomaly(), np.errstate(all="ignore"):
        assert is_anomaly_enabled()
        with pytest.raises(FloatingPointError) as info:
            line = _line(); ok.log() + (x * 2).log()  # noqa: E702 - the report must point at this very line
    assert not is_anomaly_enabled()
    msg = str(info.value)
    assert msg.startswith("anomaly: Log produced NaN or Inf in its forward output")
    assert f"{HERE}:{line}:" in msg and "(x * 2).log()" in msg


def test_forward_inf_is_caught_too():
    x = tg.tensor([1.0, 0.0])
    with tg.detect_anomaly(), np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="Div"):
        tg.ones(2) / x


def test_backward_nan_names_the_op_and_where_it_was_created():
    x = tg.tensor([0.0, 4.0], requires_grad=True)
    with tg.detect_anomaly(), np.errstate(all="ignore"):
        line = _line(); y = x.sqrt()  # noqa: E702 - d sqrt(x)/dx is infinite at 0
        loss = (y * 3).sum()  # forward is finite
        with pytest.raises(FloatingPointError) as info:
            loss.backward()
    msg = str(info.value)
    assert msg.startswith("anomaly: SqrtBackward produced NaN or Inf in its gradient")
    assert f"{HERE}:{line}:" in msg


def test_backward_nan_inside_a_backward_made_of_ops_names_that_op_too():
    # Pow's backward is written with tinygen ops (no array form): the op inside it that made the Inf is the cause
    x = tg.tensor([0.0, 4.0], requires_grad=True)
    with tg.detect_anomaly(), np.errstate(all="ignore"):
        line = _line(); y = x ** 0.5  # noqa: E702 - 0.5 * x ** -0.5 is infinite at 0
        loss = (y * 3).sum()
        with pytest.raises(FloatingPointError) as info:
            loss.backward()
    msg = str(info.value)
    assert msg.startswith("anomaly: PowBackward produced NaN or Inf in its gradient")
    assert f"{HERE}:{line}:" in msg
    assert "Pow" in str(info.value.__cause__)


class BadGrad(Function):
    """Identity forward whose raw-array backward returns NaN: caught after the backward returns."""

    @staticmethod
    def forward(ctx, x):
        return x.data.copy()

    @staticmethod
    def backward(ctx, grad):
        return tg.tensor(np.full(grad.shape, np.nan, dtype=grad.dtype))


def test_backward_nan_of_custom_function():
    x = tg.randn(3, requires_grad=True)
    with tg.detect_anomaly():
        loss = (BadGrad.apply(x) * 2).sum()
        with pytest.raises(FloatingPointError, match="BadGradBackward produced NaN or Inf in its gradient"):
            loss.backward()
    loss = (BadGrad.apply(x) * 2).sum()
    loss.backward()  # off: no check, the NaN just arrives
    assert np.isnan(x.grad.numpy()).all()


def test_created_outside_detect_anomaly_is_said():
    x = tg.tensor([0.0], requires_grad=True)
    loss = x.sqrt().sum()
    with tg.detect_anomaly(), np.errstate(all="ignore"), \
            pytest.raises(FloatingPointError, match="SqrtBackward.*created before detect_anomaly"):
        loss.backward()


def test_detect_anomaly_as_decorator():
    @tg.detect_anomaly()
    def f(t):
        assert is_anomaly_enabled()
        return t.log()

    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="Log"):
        f(tg.tensor([-1.0]))
    assert not is_anomaly_enabled()


# ---- viz -------------------------------------------------------------------------------------------------------------
def _graph():
    tg.manual_seed(0)
    x = tg.randn(4, 3)
    w = tg.randn(3, 2, requires_grad=True)
    b = tg.zeros(2, dtype=tg.float32, requires_grad=True)
    return (x @ w + b).relu().sum(), w, b


def test_to_mermaid_labels_and_edges():
    loss, w, b = _graph()
    text = tg.viz.to_mermaid(loss, params={"w": w, "b": b})
    lines = text.strip().splitlines()
    assert lines[0] == "flowchart BT"
    labels = dict(re.findall(r'^\s+(\w+)[\[(]+"([^"]+)"', text, re.M))
    assert set(labels.values()) == {"w (3, 2) float32", "b (2,) float32", "MatmulBackward (4, 2) float32",
                                    "AddBackward (4, 2) float32", "ReluBackward (4, 2) float32",
                                    "SumBackward () float32"}
    name = {v.split()[0]: k for k, v in labels.items()}
    edges = set(re.findall(r"^\s+(\w+) --> (\w+)$", text, re.M))
    for a, b_ in edges:
        assert a in labels and b_ in labels  # every edge joins declared nodes
    assert edges == {(name["w"], name["MatmulBackward"]), (name["MatmulBackward"], name["AddBackward"]),
                     (name["b"], name["AddBackward"]), (name["AddBackward"], name["ReluBackward"]),
                     (name["ReluBackward"], name["SumBackward"])}


def test_to_dot_structure():
    loss, _, _ = _graph()
    text = tg.viz.to_dot(loss.double())
    assert text.startswith("digraph tinygen {") and text.rstrip().endswith("}")
    labels = dict(re.findall(r'^\s+(\w+) \[label="([^"]+)"', text, re.M))
    assert "ToBackward () float64" in labels.values() and "SumBackward () float32" in labels.values()
    assert sum(v.startswith("leaf") for v in labels.values()) == 2
    edges = re.findall(r"^\s+(\w+) -> (\w+);$", text, re.M)
    assert len(edges) == 6 and all(a in labels and b in labels for a, b in edges)
    to_id = next(k for k, v in labels.items() if v.startswith("ToBackward"))
    assert not any(a == to_id for a, _ in edges)  # the output is a sink: nothing consumes it


def test_viz_of_a_leaf():
    w = tg.randn(2, requires_grad=True)
    assert "leaf (2,) float32" in tg.viz.to_mermaid(w)
