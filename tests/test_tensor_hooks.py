"""Gradient hooks on tensors (``Tensor.register_hook``) and retained gradients (``retain_grad``), against PyTorch:
what a hook sees, what it changes downstream, a leaf's hook on the sum of its uses, ``autograd.grad`` (an op's
output captured before its hooks, a leaf's after), second order through a hooked gradient, removal, and the
errors. tinygen.compile refuses a step whose backward reaches one (a replay would not run it)."""
import numpy as np
import pytest

import tinygen as tg
from conftest import requires_torch

RNG = np.random.default_rng(0)
A0, W0 = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 2))


def _run(case):
    """``case(lib, mod, a, w)`` in tinygen and in PyTorch on the same float64 leaves: both results, as arrays."""
    import torch
    out = []
    for mod in (tg, torch):
        a, w = mod.tensor(A0, requires_grad=True), mod.tensor(W0, requires_grad=True)
        out.append([np.asarray(x.detach().numpy() if hasattr(x, "detach") else x) for x in case(mod, a, w)])
    return out


def _same(case):
    ours, theirs = _run(case)
    assert len(ours) == len(theirs)
    for k, (x, y) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=f"result {k}")


@requires_torch
def test_hooks_change_the_gradient_that_flows_on_and_a_leaf_hook_sees_the_sum():
    def case(mod, a, w):
        seen = []
        h = a @ w
        h.register_hook(lambda g: g * 2)  # an op's output: its whole gradient, before its node's backward
        a.register_hook(lambda g: seen.append(g.detach().clone() if mod is not tg else g.detach()))
        w.register_hook(lambda g: g + 1)  # a leaf: what it is delivered, before .grad
        ((h.tanh() * h).sum() + (a * a).sum()).backward()  # a reaches the loss along two paths
        return a.grad, w.grad, seen[0], len(seen)
    _same(case)


@requires_torch
def test_retained_gradients_sum_over_backwards_after_the_hooks():
    def case(mod, a, w):
        h = a @ w
        h.retain_grad()
        h.register_hook(lambda g: g * 3)  # registered after retain_grad: the retained one is still after it
        z = h.exp()
        z.retain_grad()
        a.retain_grad()  # a leaf: nothing changes
        (z.sum() + h.sum()).backward(retain_graph=True)
        (z * 3).sum().backward()
        return h.grad, z.grad, a.grad, h.retains_grad, z.retains_grad, a.retains_grad
    _same(case)


@requires_torch
def test_second_order_through_a_hooked_gradient():
    def case(mod, a, w):
        h = a @ w
        h.register_hook(lambda g: g * h.detach())
        ga, = mod.autograd.grad((h ** 3).sum(), [a], create_graph=True)
        (ga ** 2).sum().backward()
        return ga, w.grad
    _same(case)


@requires_torch
def test_autograd_grad_captures_an_outputs_gradient_before_its_hooks_and_a_leafs_after():
    def case(mod, a, w):
        h = a @ w
        h.register_hook(lambda g: g * 5)
        a.register_hook(lambda g: g - 1)
        return mod.autograd.grad(h.sin().sum(), [h, a])
    _same(case)


@requires_torch
def test_a_removed_hook_is_not_called():
    def case(mod, a, w):
        calls = []
        handle = (a @ w).register_hook(lambda g: calls.append(1))  # (made and dropped: its graph goes too)
        h = a @ w
        handle = h.register_hook(lambda g: calls.append(1) or g * 7)
        handle.remove()
        h.sum().backward()
        return np.array(len(calls)), a.grad
    _same(case)


def test_a_leaf_whose_last_hook_is_removed_leaves_the_engines_tables():
    """A leaf's gradient and post-accumulate hooks, each removed through its handle: once its last one of a kind
    is gone, the engine's table of such leaves forgets it, so backwards stop counting its edges and a compiled
    step's pruning sees it unhooked. A stale handle of a dead leaf removes nothing of a new leaf with its id."""
    from tinygen.autograd import engine
    w = tg.randn(3, requires_grad=True)
    first, second = w.register_hook(lambda g: g), w.register_hook(lambda g: g * 2)
    after = w.register_post_accumulate_grad_hook(lambda t: None)
    first.remove()
    assert id(w) in engine._leaf_hooks  # (one left)
    second.remove()
    second.remove()  # (twice: nothing more)
    assert id(w) not in engine._leaf_hooks and id(w) in engine._post_accumulate_hooks
    after.remove()
    assert id(w) not in engine._post_accumulate_hooks
    (w * 2).sum().backward()
    assert np.array_equal(w.grad.data, np.full(3, 2, np.float32))
    w.register_hook(lambda g: g * 3)  # registered again after all were removed: it runs
    w.grad = None
    (w * 2).sum().backward()
    assert np.array_equal(w.grad.data, np.full(3, 6, np.float32))
    old = tg.randn(2, requires_grad=True)
    stale = old.register_hook(lambda g: g)
    stale.remove()
    kept = old.register_hook(lambda g: g)  # a new list: the stale handle's is not the leaf's any more
    stale.remove()
    assert id(old) in engine._leaf_hooks and kept is not None


def test_hook_errors_name_the_problem():
    with pytest.raises(RuntimeError, match="register_hook: the tensor does not require grad"):
        tg.randn(3).register_hook(lambda g: g)
    with pytest.raises(RuntimeError, match="retain_grad: the tensor does not require grad"):
        tg.randn(3).retain_grad()
    with pytest.raises(TypeError, match="hook must be callable"):
        tg.randn(3, requires_grad=True).register_hook(3)
    x = tg.randn(3, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: g[:2])
    with pytest.raises(RuntimeError, match=r"a hook of the output of MulBackward returned shape \(2,\); a hook "
                                           r"returns None or a tensor of the gradient's shape \(3,\)"):
        y.sum().backward()


def test_compile_refuses_a_step_whose_backward_reaches_a_hook():
    w = tg.randn(4, 2, requires_grad=True)

    def step(x):
        h = x @ w
        h.register_hook(lambda g: g * 2)
        h.sum().backward()
        return h.detach()
    with pytest.raises(tg.CompileError, match="reaches a tensor with a gradient hook"):
        tg.compile(step)(tg.randn(3, 4))
    w.grad = None
    handle = w.register_hook(lambda g: g)  # on a parameter, registered outside the step

    def plain(x):
        (x @ w).sum().backward()
        return x
    with pytest.raises(tg.CompileError, match=r"gradient hook \(register_hook\) or a retained gradient"):
        tg.compile(plain)(tg.randn(3, 4))
    handle.remove()
    out = tg.compile(plain)
    for _ in range(3):  # without it, the step records and replays
        out(tg.randn(3, 4))
    assert out.replays == 2



def _leaf_with_a_hook_on_itself():
    """A leaf whose hook refers to it (a cycle through its own hooks, which the collector frees), after one
    backward through the hook; a weak reference to it."""
    import weakref
    w = tg.randn(3, requires_grad=True)
    w.register_hook(lambda g: g * w.detach())
    (w * 2).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * w.detach().numpy())
    return weakref.ref(w)


def test_a_hook_that_refers_to_its_leaf_does_not_keep_it_alive():
    import gc
    from tinygen.autograd import engine
    alive = _leaf_with_a_hook_on_itself()
    gc.collect()
    assert alive() is None and all(ref() is not None for ref in engine._leaf_hooks.values())
