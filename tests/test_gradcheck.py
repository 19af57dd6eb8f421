"""gradcheck / gradgradcheck: they pass on correct gradients and catch wrong ones with a useful report."""
import math
import re

import numpy as np
import pytest

import tinygen as tg
from tinygen.autograd import Function, GradcheckError
from tinygen.tensor import _make


def _inputs(device="cpu"):
    tg.manual_seed(3)
    a = tg.randn(3, 4, dtype=tg.float64, device=device, requires_grad=True)
    b = tg.randn(4, dtype=tg.float64, device=device, requires_grad=True)
    return a, b


def test_passes_on_correct_function(device):
    a, b = _inputs(device)
    fn = lambda a, b: ((a * b).tanh() @ b.exp()).sum() + (a.softmax(1) * b).sum()  # noqa: E731
    assert tg.gradcheck(fn, (a, b))
    assert tg.gradcheck(fn, (a, b), fast_mode=True)
    assert tg.gradgradcheck(fn, (a, b), fast_mode=True)


def test_does_not_modify_the_callers_inputs():
    a, b = _inputs()
    before = a.detach().numpy().copy()
    tg.gradcheck(lambda a, b: (a * b).sum(), (a, b))
    np.testing.assert_array_equal(a.detach().numpy(), before)
    assert a.grad is None and b.grad is None


class WrongAtTwo(Function):
    """sin(x), with a backward that is wrong (cos x + 1) exactly where x > 1.9."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.xp.sin(x.data)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        bump = _make((x.data > 1.9).astype(x.data.dtype), x.device)
        return grad * (x.cos() + bump)


def test_wrong_backward_names_input_index_and_values():
    y = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    x = tg.tensor([[0.1, 0.5], [2.0, -1.0]], dtype=tg.float64, requires_grad=True)
    with pytest.raises(GradcheckError) as info:
        tg.gradcheck(lambda y, x: (WrongAtTwo.apply(x), y * 2), (y, x))
    msg = str(info.value)
    assert "input 1" in msg and "shape (2, 2)" in msg and "index (1, 0)" in msg
    analytic = float(re.search(r"analytic (\S+),", msg).group(1))
    numeric = float(re.search(r"numeric (\S+) ", msg).group(1))
    # both are u * derivative for the same random weight u: their ratio is (cos 2 + 1) / cos 2
    assert analytic / numeric == pytest.approx((math.cos(2.0) + 1) / math.cos(2.0), rel=1e-5)


def test_wrong_backward_caught_in_fast_mode_and_without_raising():
    x = tg.tensor([0.3, 2.0, -0.7], dtype=tg.float64, requires_grad=True)
    with pytest.raises(GradcheckError, match=r"fast mode.*input 0.*analytic .*numeric"):
        tg.gradcheck(WrongAtTwo.apply, (x,), fast_mode=True)
    assert tg.gradcheck(WrongAtTwo.apply, (x,), raise_exception=False) is False
    ok = tg.tensor([0.3, 1.0, -0.7], dtype=tg.float64, requires_grad=True)  # the bug is not reached here
    assert tg.gradcheck(WrongAtTwo.apply, (ok,))


def test_float32_inputs_are_refused():
    x = tg.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="input 0 has dtype float32.*float64"):
        tg.gradcheck(lambda x: x.sin(), (x,))


def test_no_input_requiring_grad_is_refused():
    with pytest.raises(ValueError, match="no input requires grad"):
        tg.gradcheck(lambda x: x.sin(), (tg.randn(3, dtype=tg.float64),))


class CubeConstBackward(Function):
    """x^3 whose backward builds 3x^2 from the raw array: right to first order, no graph for the second."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * _make(3 * x.data ** 2, x.device)


class Cube(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.data ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x * x


def test_gradgradcheck_catches_non_differentiable_backward():
    x = tg.tensor([0.5, -1.2, 2.0], dtype=tg.float64, requires_grad=True)
    assert tg.gradcheck(CubeConstBackward.apply, (x,))  # first order is right ...
    with pytest.raises(GradcheckError, match="input 0"):
        tg.gradgradcheck(CubeConstBackward.apply, (x,))  # ... the second derivative (0 instead of 6x) is not
    with pytest.raises(GradcheckError):
        tg.gradgradcheck(CubeConstBackward.apply, (x,), fast_mode=True)
    assert tg.gradgradcheck(Cube.apply, (x,))
