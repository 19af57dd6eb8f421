"""A compiled forward with the backward after the call (``fast = tg.compile(model)``, then
``loss = F.cross_entropy(fast(x), y); loss.backward()``): the forward replays, its result reaches the parameters
through the program's own nodes (``recording.HandedGraph``), and training goes exactly as eager's."""
import sys
import warnings

import numpy as np
import pytest

import tinygen as tg
from tinygen import nn
from tinygen.compile import SPARES, CompileError
from tinygen.nn import functional as F


def _model(device="cpu", dropout=0.0, batchnorm=False):
    tg.manual_seed(0)
    layers = [nn.Linear(12, 16)] + ([nn.BatchNorm1d(16)] if batchnorm else [])
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 5)]
    return nn.Sequential(*layers).to(device)


def _data(n, device="cpu", batch=8):
    tg.manual_seed(1)
    return [(tg.randn(batch, 12).to(device), tg.randint(0, 5, (batch,)).to(device)) for _ in range(n)]


def _state(model, opt):
    return [_host(p) for p in model.parameters()] + [_host(b) for b in model.buffers()] + \
        [_host(v) for s in opt.state.values() for v in s.values() if isinstance(v, tg.Tensor)]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def _host(t):
    return np.array(tg.backend.to_device(t.data if isinstance(t, tg.Tensor) else t, "cpu"), copy=True)


@pytest.mark.parametrize("fuse", [True, False])
def test_a_compiled_forward_trains_as_eager_and_replays(device, fuse):
    """Twelve steps of a model with BatchNorm and dropout in train mode, its forward compiled, the loss, a
    graph beside it (a second layer's output) and the backward after the call: the same losses, gradients,
    parameters, running statistics and optimizer state as eager, bit for bit, on every step, and every call after
    the first replays (no warning). A gradient hook on the compiled forward's output sees eager's gradient. Would
    fail with the replay's result handed on without a graph (the parameters got no gradient: before, every call
    ran eagerly instead), or with a node's saved values released after the forward."""
    def run(compiled):
        model, extra = _model(device, dropout=0.3, batchnorm=True), nn.Linear(12, 5).to(device)
        opt = tg.optim.Adam(list(model.parameters()) + list(extra.parameters()), lr=1e-2)
        fast = tg.compile(model, fuse=fuse) if compiled else model
        seen, out = [], []
        tg.manual_seed(7)  # the stream dropout draws from
        for x, y in _data(12, device):
            logits = fast(x)
            logits.register_hook(lambda g: seen.append(_host(g)))
            loss = F.cross_entropy(logits + extra(x), y)
            opt.zero_grad()
            loss.backward()
            out += [_host(loss)] + [_host(p.grad) for p in model.parameters()]
            opt.step()
            out += _state(model, opt)
        return out + seen, fast
    want, _ = run(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, fast = run(True)
    assert _same(want, got)
    assert (fast.records, fast.replays) == (1, 11)
    assert "hands on the graph of 1 result tensor for a backward after the call" in fast.explain()


def test_a_second_call_before_the_first_calls_backward_replays_a_spare_program():
    """A discriminator's forward on real and on fake images, one loss over both, then the backward: the second
    call finds the first call's graph awaiting its backward, so it replays a spare program of the same signature,
    recorded on the first step (a replay of the first would refill the nodes that backward needs). The gradients
    are eager's on every step, and both calls of each later step replay. Would fail with the second call replaying
    the first program: the first call's part of the gradient was computed on the second call's values."""
    def run(compiled):
        dis = nn.Sequential(nn.Linear(12, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        opt = tg.optim.SGD(dis.parameters(), lr=0.1, momentum=0.9)
        d = tg.compile(dis) if compiled else dis
        out = []
        for (real, _), (fake, _) in zip(_data(5), _data(5)[::-1]):
            loss = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            out += [loss.data.copy()] + [p.grad.data.copy() for p in dis.parameters()]
        return out, d
    tg.manual_seed(0)
    want, _ = run(False)
    tg.manual_seed(0)
    got, d = run(True)
    assert _same(want, got)
    assert (d.records, d.replays) == (2, 8)
    assert "for a backward after the call (1 spare program)" in d.explain()


def test_check_compares_a_spare_programs_replays_with_eager_too(monkeypatch):
    """``compile(model, check=N)``: the first N replays run side by side with eager, a spare program's as its
    signature's own (both go through one replay path). With check=4 and two calls a step, steps 2 and 3 check
    both programs' replays, step 4 none; the gradients stay eager's."""
    compile_module = sys.modules["tinygen.compile"]
    checked_programs = []

    def counting(fn, program, args, kwargs):
        checked_programs.append(program)
        return real_checked(fn, program, args, kwargs)
    real_checked = compile_module.checked
    monkeypatch.setattr(compile_module, "checked", counting)
    tg.manual_seed(0)
    dis = nn.Sequential(nn.Linear(12, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    d = tg.compile(dis, check=4)
    for (real, _), (fake, _) in zip(_data(4), _data(4)[::-1]):
        loss = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        loss.backward()
    (program,) = d._programs.values()
    assert checked_programs == [program, program.spare] * 2 and program.spare is not None
    assert (d.records, d.replays) == (2, 6)


def test_results_kept_without_a_backward_make_later_calls_use_spares_then_run_eagerly():
    """Results held without a backward (an evaluation with grad on) may still be backpropagated: each call while
    they live records and then replays a spare program, ``SPARES`` of them, and runs eagerly after that; each
    result's backward then gives eager's gradients. Once they are gone, calls replay the first program again."""
    model = _model()
    fast = tg.compile(model)
    data = _data(6)
    with pytest.warns(RuntimeWarning, match=r"Sequential runs a call eagerly: earlier calls' results await their "
                                            r"backward and no spare program .* keeps 3 spares"):
        kept = [fast(x) for x, _ in data]  # the first program, three spares, then two eager calls (one warning)
    assert (fast.records, fast.replays) == (1 + SPARES, 0) and SPARES == 3
    got = []
    for out, (x, y) in zip(kept, data):
        model.zero_grad()
        F.cross_entropy(out, y).backward()
        got += [p.grad.data.copy() for p in model.parameters()]
    want = []
    for x, y in data:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        want += [p.grad.data.copy() for p in model.parameters()]
    assert _same(want, got)
    kept = [fast(x) for x, _ in data]  # the four programs replay, then two eager calls
    assert (fast.records, fast.replays) == (4, 4)
    assert all(np.array_equal(out.data, model(x).data) for out, (x, _) in zip(kept, data))
    del kept
    fast(data[0][0])
    fast(data[1][0])
    assert fast.replays == 6


def test_a_backward_through_an_earlier_calls_result_after_a_later_replay_raises():
    """A graph retained for a second backward, then another call that replays the forward: the earlier result's
    nodes hold the later call's values, so its second backward raises, naming what to do. Would fail with the
    backward going on: gradients of the wrong batch, silently."""
    model = _model()
    fast = tg.compile(model)
    (x, y), (x2, _) = _data(2)
    fast(x).sum().backward()  # records
    loss = F.cross_entropy(fast(x), y)  # replays
    loss.backward(retain_graph=True)
    fast(x2)  # replays: the first backward went through
    with pytest.raises(RuntimeError, match=r"an earlier call of a compiled function, after 1 later call\(s\) "
                                           r"replayed its forward.*before the next call"):
        loss.backward()


def test_a_create_graph_backward_through_a_compiled_forward_gives_eager_gradients():
    """A gradient penalty through the compiled forward's result (``grad(..., create_graph=True)``, then a backward
    of its norm): eager's gradients on every step. A gradient graph may keep the program's tensors past the call,
    so once one went through, the compiled function runs eagerly and ``explain`` says so."""
    def run(compiled):
        model = _model()
        opt = tg.optim.SGD(model.parameters(), lr=0.05)
        fast = tg.compile(model) if compiled else model
        out = []
        for x, y in _data(4):
            logits = fast(x)
            params = list(model.parameters())
            grads = tg.autograd.grad(F.cross_entropy(logits, y), params, create_graph=True)
            penalty = sum((g * g).sum() for g in grads)
            opt.zero_grad()
            (F.cross_entropy(logits, y) + penalty).backward()
            opt.step()
            out += [penalty.data.copy()] + [p.data.copy() for p in params]
        return out, fast
    want, _ = run(False)
    with pytest.warns(RuntimeWarning, match=r"Sequential runs each call with grad on eagerly: a create_graph "
                                            r"backward .* went through the graph of its result"):
        got, fast = run(True)
    assert _same(want, got)
    assert (fast.records, fast.replays) == (1, 0)
    assert "run eagerly" in fast.explain()


def test_a_step_that_builds_a_gradient_graph_and_returns_a_graph_runs_eagerly():
    """A step whose own ``grad(..., create_graph=True)`` builds the graph it returns (a penalty for the
    backward after the call): a replay makes such nodes anew, so its calls run eagerly, with a warning, and train
    as eager."""
    def run(compiled):
        model = _model()
        opt = tg.optim.SGD(model.parameters(), lr=0.05)

        def forward(x):
            logits = model(x)
            g, = tg.autograd.grad(logits.sum(), [model[0].weight], create_graph=True)
            return logits, (g * g).sum()
        f = tg.compile(forward) if compiled else forward
        out = []
        for x, y in _data(3):
            logits, penalty = f(x)
            opt.zero_grad()
            (F.cross_entropy(logits, y) + penalty).backward()
            opt.step()
            out += [p.data.copy() for p in model.parameters()]
        return out, f
    want, _ = run(False)
    with pytest.warns(RuntimeWarning, match="forward runs each call with grad on eagerly: it returns a tensor with "
                                            "a graph .* builds a gradient graph"):
        got, f = run(True)
    assert _same(want, got) and (f.records, f.replays) == (1, 0)


def test_a_compiled_forward_with_several_results_hands_each_on_with_its_graph():
    """A forward that returns its logits and its hidden layer, and a tensor without a graph beside them: a loss
    over both graph outputs gives eager's gradients on replays. The tensor without a graph comes back without one,
    as eager's. The condition ``where`` keeps on its node stays for the backward after the call: would fail with
    it released when the forward no longer reads it."""
    tg.manual_seed(0)
    fc1, fc2 = nn.Linear(12, 16), nn.Linear(16, 5)

    def forward(x):
        z = fc1(x)
        h = tg.where(z > 0, z, z * 0.1).tanh()
        return {"logits": fc2(h), "h": h, "mean": x.mean()}
    fast = tg.compile(forward, check=1)  # the first replay beside eager
    for x, y in _data(3):
        for f in (forward, fast):
            for p in (*fc1.parameters(), *fc2.parameters()):
                p.grad = None
            out = f(x)
            (F.cross_entropy(out["logits"], y) + (out["h"] ** 2).mean()).backward()
            grads = [p.grad.data.copy() for p in (*fc1.parameters(), *fc2.parameters())]
            if f is forward:
                want = grads
        assert _same(want, grads)
        assert out["mean"].grad_fn is None and out["h"].grad_fn is not None
    assert (fast.records, fast.replays) == (1, 2)


def _with_grad(f, x):
    with tg.enable_grad():  # (a hook runs under no_grad, another signature)
        return f(x)


def test_a_call_during_the_backward_through_a_handed_graph_does_not_replay_it():
    """A call of the compiled forward made while a backward is still going through the last call's graph (here
    from a hook on the last layer's weight, whose gradient arrives before the first layer's nodes have run): it
    does not replay that program, since a replay would refill the nodes that backward has yet to run (it records a
    spare). Would fail with the last call counted as done once the gradient enters its graph: the first layer's
    gradients came from the other batch's values."""
    model = _model()
    fast = tg.compile(model)
    (x, y), (x2, _) = _data(2)
    fast(x)  # records
    inside = []
    handle = model[-1].weight.register_hook(lambda g: inside.append(_with_grad(fast, x2)))
    F.cross_entropy(fast(x), y).backward()  # replays; the hook calls it again during the backward
    handle.remove()
    got = [p.grad.data.copy() for p in model.parameters()]
    assert (fast.records, fast.replays) == (2, 1) and np.array_equal(inside[0].data, model(x2).data)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert _same([p.grad.data for p in model.parameters()], got)


def test_a_gan_with_its_generator_and_discriminator_compiled_apart_trains_as_eager():
    """The usual way to compile a GAN in PyTorch: each network compiled, the steps eager. The discriminator's
    call on the generator's images takes an argument that requires grad; the generator's backward goes through
    the discriminator's program, then through its gate on that argument into the generator's program. The same
    losses and parameters as eager, bit for bit, and later steps replay. Would fail with arguments that require
    grad refused (before), or with the argument's gate left pointing at the first call's images (the generator got
    the first step's gradients again)."""
    def run(compiled):
        tg.manual_seed(0)
        gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh())
        dis = nn.Sequential(nn.Linear(12, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        opt_g, opt_d = tg.optim.Adam(gen.parameters(), lr=1e-2), tg.optim.Adam(dis.parameters(), lr=1e-2)
        g, d = (tg.compile(gen), tg.compile(dis)) if compiled else (gen, dis)
        tg.manual_seed(1)
        out = []
        for real, _ in _data(6):
            fake = g(tg.randn(8, 4))
            loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = F.softplus(-d(fake)).mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            out += [loss_d.data.copy(), loss_g.data.copy()] + [p.data.copy() for p in gen.parameters()]
        return out, g, d
    want, _, _ = run(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, g, d = run(True)
    assert _same(want, got)
    # g: each step's call replays after the first. d: the real and the detached fake images share a signature (the
    # second call, before the first's backward, on a spare program); the fake that requires grad has its own
    assert (g.records, g.replays) == (1, 5) and (d.records, d.replays) == (3, 15)


def test_a_backward_inside_the_step_that_reaches_an_argument_that_requires_grad_is_refused():
    """A step whose own backward reaches an argument that requires grad: a replay would not take that gradient
    on into the graph the argument came from, so it is refused at record time, naming the argument."""
    model = _model()

    def step(x):
        loss = model(x).sum()
        loss.backward()
        return loss
    x = tg.randn(4, 12, requires_grad=True)
    with pytest.raises(CompileError, match=r"a backward inside the step reaches tensor argument 0 \(shape \(4, 12\)\), "
                                           r"which requires grad"):
        tg.compile(step)(x * 2)


def test_a_spare_program_a_create_graph_backward_went_through_is_not_replayed_again():
    """The second call of a step (on a spare program) backpropagated with ``create_graph``, the first plainly:
    the next step's first call replays, its second runs eagerly (the spare's gradient graph may keep its
    tensors), and the gradients are eager's throughout."""
    def run(compiled):
        model = _model()
        fast = tg.compile(model) if compiled else model
        out = []
        for (x, y), (x2, y2) in zip(_data(3), _data(3)[::-1]):
            model.zero_grad()
            a, b = fast(x), fast(x2)
            g, = tg.autograd.grad(F.cross_entropy(b, y2), [model[0].weight], create_graph=True)
            ((g * g).sum() + F.cross_entropy(a, y)).backward()
            out += [p.grad.data.copy() for p in model.parameters()]
        return out, fast
    want, _ = run(False)
    with pytest.warns(RuntimeWarning, match="Sequential runs a call eagerly: earlier calls' results await their "
                                            "backward and no spare program of its signature can replay"):
        got, fast = run(True)
    assert _same(want, got)
    assert (fast.records, fast.replays) == (2, 2)  # the first calls of the later steps replay; the second are eager
