"""tinygen.compile leaves out the gradients a step drops unread (the discriminator's, in a GAN's generator update),
and keeps every gradient something may read; a zero_grad after the forward drops the last call's gradients before
it: each case must end every call in eager's exact state."""

import tracemalloc

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen.compile import fusion, steps as compile_steps
from tinygen.autograd.function import _RELEASED
from test_compile import gan_models



def _state(params, opts):
    """Every parameter's data and .grad (None kept as None) and every optimizer's state arrays."""
    out = [p.data.copy() for p in params] + [None if p.grad is None else p.grad.data.copy() for p in params]
    for opt in opts:
        for s in opt.state.values():
            out += [v.data.copy() for v in s.values() if isinstance(v, tg.Tensor)]
    return out


def _same(a, b):
    return len(a) == len(b) and all((x is None) == (y is None) and (x is None or np.array_equal(x, y))
                                    for x, y in zip(a, b))


def _gan(between=None, penalty_term=False):
    """The PyTorch-GAN layout: the generator's update first (its backward also reaches D's weights), then
    ``opt_d.zero_grad()`` and the discriminator's update. ``between(G, D, opt_g, opt_d, g_loss)`` runs between
    the generator's backward and ``opt_d.zero_grad()`` (instead of ``opt_g.step()``)."""
    G, D, opt_g, opt_d = gan_models()

    def step(real):
        fake = G(tg.randn(real.shape[0], 4))
        opt_g.zero_grad()
        g_loss = F.softplus(-D(fake)).mean()
        if penalty_term:  # a term that reaches only D's first weight: its nodes have nothing else to deliver
            g_loss = g_loss + (D[0].weight * 0.5).sum()
        g_loss.backward()
        if between is None:
            opt_g.step()
        else:
            between(G, D, opt_g, opt_d, g_loss)
        opt_d.zero_grad()
        d_loss = F.softplus(-D(real)).mean() + F.softplus(D(fake.detach())).mean()
        d_loss.backward()
        opt_d.step()
        return g_loss, d_loss
    return (G, D), (opt_g, opt_d), step


def _compare(setup, steps=6, after=None):
    """Eager and compiled runs of ``setup()``'s step from the same start must agree after every call: results,
    parameters, gradients and optimizer state. Returns the compiled function and its modules."""
    def run(compiled):
        modules, opts, step = setup()
        params = [p for m in modules for p in m.parameters()]
        f = tg.compile(step) if compiled else step
        tg.manual_seed(3)
        data = [tg.rand(8, 6) for _ in range(steps)]
        trail = []
        for i, x in enumerate(data):
            outs = [t.detach().data.copy() for t in f(x)]
            trail.append(outs + _state(params, opts))
            if after is not None:
                after(i, modules)
        return trail, f, modules
    eager, _, _ = run(False)
    replayed, f, modules = run(True)
    assert f.replays >= 1
    for e, c in zip(eager, replayed):
        assert _same(e, c)
    return f, modules


def _program(f):
    (program,) = f._programs.values()
    return program


def _plans(program):
    return [operands[0] for run, operands in program.steps if run is compile_steps.replay_backward]


def test_the_generators_backward_leaves_out_the_discriminators_weight_gradients():
    f, (G, D) = _compare(_gan)
    program = _program(f)
    assert program.left_out == {id(p) for p in D.parameters()}
    g_plan, d_plan = _plans(program)
    to_g = {id(t[1]) for step in g_plan.steps for t in step[4] if t is not None and t[1] is not None}
    assert to_g == {id(p) for p in G.parameters()}  # D's weights and biases get nothing from this backward
    for node, *_ in g_plan.steps:  # D's linear nodes no longer ask for their weight and bias gradients
        if type(node).__name__.startswith("Linear") and node.next_edges[0] is not None:
            assert all(e is None or not isinstance(e[0], tg.Tensor) or id(e[0]) not in program.left_out
                       for e in node.next_edges)
    to_d = {id(t[1]) for step in d_plan.steps for t in step[4] if t is not None and t[1] is not None}
    assert not d_plan.dropped and to_d == {id(p) for p in D.parameters()}  # the D update's backward: untouched


def test_a_node_left_with_nothing_to_deliver_is_not_run_and_is_released():
    f, (G, D) = _compare(lambda: _gan(penalty_term=True))
    program = _program(f)
    g_plan = _plans(program)[0]
    assert program.left_out == {id(p) for p in D.parameters()}
    names = sorted(type(node).__name__ for node in g_plan.dropped)
    assert names == ["Mul", "Sum"], names  # (D[0].weight * 0.5).sum(): only D's weight needed them
    assert all(node._saved in ((), _RELEASED) for node in g_plan.dropped)


def _clip(G, D, opt_g, opt_d, loss):  # reads D's gradients: a call that does not say which ones
    nn.utils.clip_grad_norm_(D.parameters(), 1.0)
    opt_g.step()


def _zero_in_place(G, D, opt_g, opt_d, loss):  # zeros, not None: the gradient arrays stay (and are read later)
    opt_d.zero_grad(set_to_none=False)
    opt_g.step()


def _d_step(G, D, opt_g, opt_d, loss):  # D's optimizer reads them
    opt_d.step()
    opt_g.step()


def _an_op(G, D, opt_g, opt_d, loss):  # an op in between: the search stops there
    (loss * 2).detach()
    opt_g.step()


@pytest.mark.parametrize("between", [_clip, _zero_in_place, _d_step, _an_op])
def test_a_gradient_something_may_read_is_kept(between):
    f, _ = _compare(lambda: _gan(between=between))
    assert _program(f).left_out == frozenset()
    assert not any(plan.dropped for plan in _plans(_program(f)))


def test_a_step_that_ends_with_the_gradients_keeps_them():
    def setup():  # the discriminator's update first: the generator's backward leaves D's gradients to the caller
        modules, opts, step = _gan()
        G, D = modules
        opt_g, opt_d = opts

        def d_first(real):
            fake = G(tg.randn(real.shape[0], 4))
            opt_d.zero_grad()
            d_loss = F.softplus(-D(real)).mean() + F.softplus(D(fake.detach())).mean()
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            g_loss = F.softplus(-D(fake)).mean()
            g_loss.backward()
            opt_g.step()
            return g_loss, d_loss
        return modules, opts, d_first
    f, (G, D) = _compare(setup)
    assert _program(f).left_out == frozenset()
    assert all(p.grad is not None for p in D.parameters())


def test_a_hook_on_a_left_out_gradient_after_recording_records_anew_and_runs():
    calls = []
    handles = []

    def after(i, modules):
        if i == 2:  # after two replays without it
            handles.append(modules[1][0].weight.register_post_accumulate_grad_hook(
                lambda t: calls.append(t.grad.data.copy())))
    try:
        f, (G, D) = _compare(_gan, steps=6, after=after)
    finally:
        for h in handles:
            h.remove()
    assert f.records == 2  # the hook's leaf was left out: the program is recorded again, this time keeping it
    assert id(D[0].weight) not in _program(f).left_out
    assert len(calls) == 2 * 2 * 3  # eager and compiled, three calls, the G and the D backward each


def test_a_step_with_a_create_graph_backward_leaves_nothing_out():
    def setup():
        modules, opts, step = _gan()
        G, D = modules

        def with_penalty(real):
            mix = real.detach().requires_grad_()
            (g,) = tg.grad(D(mix).sum(), mix, create_graph=True)
            (g.pow(2).sum() * 0.0).backward()  # lands on D's gradients, which step() then drops unread
            return step(real)
        return modules, opts, with_penalty
    f, _ = _compare(setup)
    assert _program(f).left_out == frozenset()


def test_explain_lists_the_programs_steps_as_recorded():
    f, (G, D) = _compare(_gan, steps=2)
    text = f.explain().splitlines()
    n_d = len(list(D.parameters()))
    assert text[0] == "step: 1 program(s), 1 recorded, 1 replayed, 0 with CUDA graphs"
    assert text[1] == f"program 1: (8, 6) float32 cpu; {len(_program(f).steps)} steps, {n_d} gradients nothing " \
                      f"reads left out"
    body = [line.split(maxsplit=1)[1] for line in text[2:]]
    assert body[0] == "call      randn"
    calls = [line for line in body if line.startswith("call")]
    assert calls == ["call      randn", "call      Adam.zero_grad", "call      Adam.step", "call      Adam.zero_grad",
                     "call      Adam.step"]
    backwards = [line for line in body if line.startswith("backward")]
    n_g = len(list(G.parameters()))
    assert len(backwards) == 2 and f"-> .grad of {n_g} leaves;" in backwards[0]  # D's left out
    assert f"-> .grad of {n_d} leaves;" in backwards[1]
    assert "forward   Linear+LeakyReLU -> (8, 16) float32 cpu" in body
    assert "forward   Linear -> (8, 1) float32 cpu" in body
    assert "release   1 tensor" in body and f"release   what {len(_plans(_program(f))[0].steps)} nodes saved" in body


# ---- a zero_grad after the forward drops the last call's gradients before it (passes.with_early_drops) -------------
def _forward_then_zero(draw=False, set_to_none=True):
    """``loss = f(x); opt.zero_grad(); loss.backward(); opt.step()``; ``draw``: a random draw inside the forward."""
    def setup():
        tg.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
        opt = tg.optim.Adam(net.parameters(), lr=1e-2)

        def step(x):
            h = net(x)
            if draw:
                h = h + tg.randn(*h.shape) * 0.1
            loss = (h * h).mean()
            opt.zero_grad(set_to_none=set_to_none)
            loss.backward()
            opt.step()
            return (loss,)
        return (net,), (opt,), step
    return setup


def _order(program):
    """The program's steps as names: calls by their function, forwards (fused runs of them too) as "forward", the
    others by their kind."""
    return [ops[0].__name__ if run is compile_steps.replay_call else
            "forward" if run is compile_steps.replay_forward or isinstance(run, fusion.FusedRun) else run.__name__
            for run, ops in program.steps]


def test_a_zero_grad_after_the_forward_runs_before_it():
    f, _ = _compare(_forward_then_zero())
    order = _order(_program(f))
    assert order[0] == "zero_grad" and order.count("zero_grad") == 1
    assert order.index("forward") == 1


def test_a_zero_grad_goes_back_over_the_forwards_only_to_the_call_before_them():
    f, _ = _compare(_forward_then_zero(draw=True))
    order = _order(_program(f))
    draw, zero = order.index("randn"), order.index("zero_grad")
    assert zero == draw + 1 and "forward" in order[:draw]  # the forwards before the draw stay before it
    assert "forward" in order[zero:order.index("replay_backward")]


def test_zero_grad_with_zeros_stays_where_it_was():
    f, _ = _compare(_forward_then_zero(set_to_none=False))
    order = _order(_program(f))
    assert "forward" not in order[order.index("zero_grad"):order.index("replay_backward")]


def _peak_of_a_call(compiled):
    """Bytes a call of a VAE-sized step allocates above what is held before it, at its peak (after 3 calls)."""
    tg.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 784))
    opt = tg.optim.Adam(net.parameters(), lr=1e-3)

    def step(x):
        loss = F.binary_cross_entropy_with_logits(net(x), x, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step) if compiled else step
    x = tg.rand(128, 784)
    tracemalloc.start()
    try:
        for _ in range(3):
            f(x)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        f(x)
        return tracemalloc.get_traced_memory()[1] - before, sum(p.data.nbytes for p in net.parameters())
    finally:
        tracemalloc.stop()


def test_a_replay_does_not_hold_the_last_calls_gradients_through_its_forward():
    """Eager holds the last call's gradients (2.4 MB here) until zero_grad, through the forward, where this step
    peaks; the replay drops them first, so its peak is lower by most of them (0.9 MB of 1.9 with Numba's kernels,
    2.4 of 3.4 without, when written)."""
    eager, grads = _peak_of_a_call(False)
    replayed, _ = _peak_of_a_call(True)
    assert replayed <= eager - grads / 4, (eager, replayed, grads)
