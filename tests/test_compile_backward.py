"""tinygen.compile replays a plain backward as the recorded steps of the engine (no graph walk): the gradients,
the hooks and their order, and the accumulation into .grad are those of eager, bit for bit."""

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
from tinygen.compile import steps as compile_steps
from tinygen import autograd
from tinygen.autograd import engine



def _grads(params):
    return [None if p.grad is None else p.grad.data.copy() for p in params]


def _same(a, b):
    return len(a) == len(b) and all((x is None) == (y is None) and (x is None or np.array_equal(x, y))
                                    for x, y in zip(a, b))


def _compare(setup, steps=6, between=None):
    """Run ``setup()``'s step eagerly and compiled from the same start; per call: the results, every parameter's
    .grad and data, and the log the step's hooks wrote. Returns the compiled function."""
    def run(compiled):
        step, params, log = setup()
        f = tg.compile(step) if compiled else step
        tg.manual_seed(5)
        data = [tg.randn(4, 3) for _ in range(steps)]
        trail = []
        for i, x in enumerate(data):
            out = f(x)
            outs = [t.detach().data.copy() for t in (out if isinstance(out, tuple) else (out,))]
            trail.append((outs, _grads(params), [p.data.copy() for p in params], list(log)))
            log.clear()
            if between is not None:
                between(i, params)
        return trail, f
    eager, _ = run(False)
    replayed, f = run(True)
    assert f.records == 1 and f.replays == steps - 1
    for (oe, ge, pe, le), (oc, gc, pc, lc) in zip(eager, replayed):
        assert _same(oe, oc) and _same(ge, gc) and _same(pe, pc)
        assert [(e[0], e[1].tolist()) + e[2:] for e in le] == [(e[0], e[1].tolist()) + e[2:] for e in lc]
    return f


def _flat_backwards(f):
    (program,) = f._programs.values()
    return sum(run is compile_steps.replay_backward for run, _ in program.steps)


HANDLES = []


@pytest.fixture(autouse=True)
def _remove_hooks():
    yield  # a hook that refers to its own tensor would keep it alive in the engine's registry
    for handle in HANDLES:
        handle.remove()
    HANDLES.clear()


def _hook(tensor, hook):
    HANDLES.append(tensor.register_post_accumulate_grad_hook(hook))
    return HANDLES[-1]


def _logging_hook(log, name, params=()):
    """Logs the gradient it sees, and which of ``params`` have one yet: when in the backward it ran."""
    return lambda t: log.append((name, t.grad.data.copy(), tuple(p.grad is not None for p in params)))


def _linear(out_features, log_weight=False):
    """A seeded ``nn.Linear(3, out_features)`` and an empty log; ``log_weight``: a hook logs its weight's gradient."""
    tg.manual_seed(0)
    lin = nn.Linear(3, out_features)
    log = []
    if log_weight:
        _hook(lin.weight, _logging_hook(log, "w"))
    return lin, log


def _model(hooks=True, zero_grad=True):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    log = []
    if hooks:
        for name, p in model.named_parameters():
            _hook(p, _logging_hook(log, name, list(model.parameters())))

    def step(x):
        if zero_grad:
            opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss
    return model, step, list(model.parameters()), log


def test_post_accumulate_grad_hooks_run_on_replay_in_eager_order_with_the_final_gradients():
    f = _compare(lambda: _model()[1:])  # step, params, log
    assert _flat_backwards(f) == 1


def test_optimizer_steps_in_post_accumulate_hooks_eager_and_replayed():
    """PyTorch's "optimizer in backward" pattern: each parameter's own optimizer steps and zeroes its gradient in the
    parameter's post-accumulate-grad hook (the gradient set to None during the backward). Eager and replayed agree,
    and the parameters are those of one optimizer stepped after the backward (the same update per element)."""
    def setup(in_backward=True):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        params = list(model.parameters())
        if in_backward:
            for p in params:
                opt = tg.optim.Adam([p], lr=0.1)
                _hook(p, lambda t, opt=opt: (opt.step(), opt.zero_grad()))
        else:
            opt = tg.optim.Adam(params, lr=0.1)

        def step(x):
            loss = model(x).pow(2).mean()
            loss.backward()
            if not in_backward:
                opt.step()
                opt.zero_grad()
            return loss
        return step, params, []
    f = _compare(setup)
    assert _flat_backwards(f) == 1
    (step, params, _), (plain, plain_params, _) = setup(), setup(in_backward=False)
    tg.manual_seed(5)
    for x in [tg.randn(4, 3) for _ in range(3)]:
        step(x)
        plain(x)
    assert all(p.grad is None for p in params)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(params, plain_params))


def test_queue_callback_from_a_hook_runs_after_the_replayed_backward():
    def setup():
        lin, log = _linear(2)

        def hook(p):
            log.append(("hook", p.grad.data.copy()))
            autograd.queue_callback(lambda: log.append(("done", p.grad.data.copy() * 2)))
        _hook(lin.weight, hook)

        def step(x):
            lin.zero_grad()
            out = lin(x)
            (out * out).sum().backward()
            return out
        return step, list(lin.parameters()), log
    f = _compare(setup)
    assert _flat_backwards(f) == 1


def test_hooks_registered_or_removed_after_recording_are_seen_by_replays():
    model, step, params, log = _model(hooks=False)
    f = tg.compile(step)
    f(tg.randn(4, 3))
    f(tg.randn(4, 3))
    assert log == []
    handle = _hook(params[0], _logging_hook(log, "w"))
    f(tg.randn(4, 3))
    assert [entry[0] for entry in log] == ["w"] and np.array_equal(log[0][1], params[0].grad.data)
    handle.remove()
    log.clear()
    f(tg.randn(4, 3))
    assert log == [] and f.records == 1


def test_gradients_accumulate_into_existing_grad_across_replays():
    # no zero_grad in the step: .grad sums the calls, reset every third call outside it
    _compare(lambda: _model(zero_grad=False)[1:], steps=8,
             between=lambda i, params: [setattr(p, "grad", None) for p in params] if i % 3 == 2 else None)


def test_zero_grad_to_zeros_then_in_place_accumulation():
    def setup():
        lin, log = _linear(3, log_weight=True)

        def step(x):
            lin.zero_grad(set_to_none=False)
            lin(x).sum().backward()
            return lin(x).sum().detach()  # (with its graph the calls would run eagerly: a backward may follow)
        return step, list(lin.parameters()), log
    _compare(setup)


def test_a_parameter_used_twice_and_an_intermediate_used_twice():
    def setup():
        lin, log = _linear(3, log_weight=True)

        def step(x):
            lin.zero_grad()
            h = lin(x).tanh()
            out = lin(h) * h  # the weight reached along two paths, h along two
            out.sum().backward()
            return out
        return step, list(lin.parameters()), log
    f = _compare(setup)
    assert _flat_backwards(f) == 1


def test_backward_with_a_gradient_argument():
    def setup():
        lin, _ = _linear(2)
        fixed = tg.tensor([[1.0, -2.0]] * 4)

        def step(x):
            lin.zero_grad()
            out = lin(x)
            weights = (x.sum(1, keepdim=True) * 0.5).expand(4, 2)  # made in the step, released after the backward
            out.backward(weights)
            lin(x).backward(gradient=fixed)
            return out
        return step, list(lin.parameters()), []
    f = _compare(setup)
    assert _flat_backwards(f) == 2


def test_two_backwards_in_one_step_through_a_shared_graph():
    def setup():
        tg.manual_seed(0)
        log = []
        net = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
        head_a, head_b = nn.Linear(5, 1), nn.Linear(5, 1)
        params = list(net.parameters()) + list(head_a.parameters()) + list(head_b.parameters())
        for i, p in enumerate(params):
            _hook(p, _logging_hook(log, i, params))

        def step(x):
            for m in (net, head_a, head_b):
                m.zero_grad()
            h = net(x)
            a, b = head_a(h).mean(), head_b(h).pow(2).mean()
            a.backward(retain_graph=True)  # keeps h's nodes for the second backward
            b.backward()  # accumulates into net's .grad: the second delivery adds in place
            return a, b
        return step, params, log
    f = _compare(setup)
    assert _flat_backwards(f) == 2


def test_a_multi_output_op_with_an_unused_output_and_retain_graph():
    def setup():
        lin, _ = _linear(3)

        def step(x):
            lin.zero_grad()
            first, _, third = lin(x).unbind(1)  # the unused output's gradient is zero
            loss = (first * third).sum()
            loss.backward(retain_graph=True)
            loss.backward()
            return loss
        return step, list(lin.parameters()), []
    f = _compare(setup)
    assert _flat_backwards(f) == 2


def test_a_replayed_backward_does_not_walk_the_graph(monkeypatch):
    _, step, _, _ = _model()
    f = tg.compile(step)
    f(tg.randn(4, 3))

    def no_walk(roots):
        raise AssertionError("the replay walked the graph")
    monkeypatch.setattr(engine, "_toposort", no_walk)
    f(tg.randn(4, 3))
    assert f.replays == 1
    with pytest.raises(AssertionError, match="walked"):
        step(tg.randn(4, 3))  # eager still walks it


def test_a_backward_through_a_create_graph_result_stays_with_the_engine():
    # WGAN-GP: the penalty's gradient graph is built anew on every replay, so the critic's backward through it
    # is replayed by the engine; the generator's backward, on recorded nodes only, is replayed flat
    tg.manual_seed(0)
    D, G = nn.Linear(3, 1), nn.Linear(2, 3)

    def step(x):
        D.zero_grad()
        G.zero_grad()
        mix = x.detach().requires_grad_()
        (g,) = tg.grad(D(mix).sum(), mix, create_graph=True)
        (D(x).mean() + g.pow(2).sum()).backward()
        D(G(x[:, :2])).mean().backward()
        return g
    f = tg.compile(step, check=3)
    for _ in range(5):
        f(tg.randn(4, 3))
    (program,) = f._programs.values()
    engine_calls = [ops[0] for run, ops in program.steps if run is compile_steps.replay_call]
    assert engine_calls.count(engine._backward) == 1 and engine_calls.count(engine._grad) == 1
    assert _flat_backwards(f) == 1


def test_hooks_due_at_the_same_node_run_in_the_engines_order():
    # the walk meets b first (b.sum()), then a and b together at the product: the engine runs the hooks of the
    # leaves settled at one node in the order of their edges there (a, then b), not in the order it met them
    def setup():
        tg.manual_seed(0)
        a, b, c = (tg.randn(4, 3).requires_grad_() for _ in range(3))
        params, log = [a, b, c], []
        for name, t in zip("abc", params):
            _hook(t, _logging_hook(log, name, params))

        def step(x):
            loss = (a * b).sum() + b.sum() + (x * c).tanh().sum()
            loss.backward()
            return loss
        return step, params, log
    _compare(setup)


def test_a_backward_into_chosen_inputs_stays_with_the_engine_and_matches_eager():
    def setup():
        lin, _ = _linear(2)

        def step(x):
            lin.zero_grad()
            out = lin(x).tanh().sum()
            out.backward(inputs=[lin.weight])  # the bias gets no gradient
            return out
        return step, list(lin.parameters()), []
    f = _compare(setup)
    assert _flat_backwards(f) == 0
