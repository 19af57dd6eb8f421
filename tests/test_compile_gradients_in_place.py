"""A compiled backward writes a node's gradient into the one it receives where that array is the plan's own
(``passes.with_gradients_in_place``): the same bits as eager, one array less at the node, and never an array
something else can see (a root's gradient, a sum's shared gradient, a subclass's own backward)."""
import tracemalloc

import numpy as np
import pytest

import tinygen as tg
from tinygen import kernels, nn
from tinygen.ops.elementwise import Relu

INTO = "may write into the gradient they receive"


def _mlp(width=64):
    tg.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.LeakyReLU(0.1),
                         nn.Linear(width, 4))


def _sgd(params):
    return tg.optim.SGD(params, lr=0.05, momentum=0.9)


def _train(compiled, model, make_opt, steps=6, batch=16, device="cpu"):
    """``steps`` steps of ``(model(x) ** 2).mean()`` on one batch, compiled or eager: the losses and the
    parameters after them (host arrays), and the step."""
    model = model.to(device)
    opt = make_opt(model.parameters())
    x = tg.randn(batch, 32).to(device)

    def step():
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss
    run = tg.compile(step) if compiled else step
    tg.manual_seed(3)  # the stream dropout draws from
    losses = [np.asarray(tg.backend.to_device(run().data, "cpu")) for _ in range(steps)]
    params = [np.asarray(tg.backend.to_device(p.data, "cpu")) for p in model.parameters()]
    return losses, params, run


def test_an_mlp_step_trains_bit_for_bit_with_its_gradients_in_place(device):
    """Six SGD steps of a Linear+ReLU / Linear+LeakyReLU MLP, compiled and eager: the same losses and parameters
    in every bit, and the plan's two activation nodes run into their incoming gradients (each receives the
    product of the Linear above it, an array nothing else holds). Fails if a node writes into an array it
    reads later in the wrong order, or the pass is gone (the listing)."""
    eager_losses, eager_params, _ = _train(False, _mlp(), _sgd, device=device)
    losses, params, step = _train(True, _mlp(), _sgd, device=device)
    assert all(np.array_equal(a, b) for a, b in zip(losses, eager_losses))
    assert all(np.array_equal(a, b) for a, b in zip(params, eager_params))
    assert step.replays == 5
    assert f"2 of them {INTO}" in step.explain()


@pytest.mark.skipif(not kernels.enabled(), reason="the Numba kernels write into the gradient; the reference "
                    "definitions make a new array (the same bits)")
def test_a_replay_holds_one_gradient_array_less_than_eager():
    """tracemalloc's peak over one step: the compiled MLP's is lower than eager's by at least most of one
    activation gradient (batch x width float32), the array the bottom Linear+ReLU's backward no longer makes."""
    width, batch = 256, 128

    def peak(compiled):
        _, _, run = _train(compiled, _mlp(width), _sgd, steps=3, batch=batch)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            run()
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    eager, compiled = peak(False), peak(True)
    assert compiled < eager - 0.75 * batch * width * 4, (compiled, eager)


def test_a_gradient_the_caller_passed_is_never_written():
    """``y.backward(g)``: the root gradient the caller passes lands in the register of y's ReLU, which may not
    write into it. Every replay leaves the caller's array as it was and gives eager's gradient."""
    tg.manual_seed(0)
    w = tg.randn(6, 5, requires_grad=True)
    x = tg.randn(4, 6)
    g = tg.randn(4, 5)
    kept = g.data.copy()

    @tg.compile
    def step(x, g):
        w.grad = None
        (x @ w).relu().backward(g)
    for _ in range(3):
        step(x, g)
        assert np.array_equal(g.data, kept)
    got = w.grad.data.copy()
    w.grad = None
    (x @ w).relu().backward(g)
    assert np.array_equal(got, w.grad.data)
    assert INTO not in step.explain()


def test_a_gradient_two_branches_share_is_not_written():
    """``relu(fc1(x)) + relu(fc2(x))``: the sum's backward hands one gradient array to both branches' nodes, so
    neither may write into it (the second would read what the first wrote). Same gradients as eager. Where two
    Linear layers' gradients are summed into one register instead (a VAE's mu and logvar heads on one hidden
    layer), the sum is a new array, so the hidden layer's node writes into it."""
    def run(compiled, shared):
        tg.manual_seed(0)
        fc1, fc2, head1, head2 = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 3)
        params = [p for m in (fc1, fc2, head1, head2) for p in m.parameters()]
        x = tg.randn(5, 8)

        def step():
            for p in params:
                p.grad = None
            h = nn.functional.relu(fc1(x))
            if shared:
                loss = ((h + nn.functional.relu(fc2(x))) ** 2).sum()
            else:
                loss = (head1(h) * head2(h)).sum()
            loss.backward()
        fn = tg.compile(step) if compiled else step
        for _ in range(3):
            fn()
        return [p.grad.data.copy() for p in params if p.grad is not None], fn
    for shared in (True, False):
        eager, _ = run(False, shared)
        got, step = run(True, shared)
        assert len(got) == len(eager) == (4 if shared else 6)
        assert all(np.array_equal(a, b) for a, b in zip(got, eager))
        assert (INTO in step.explain()) is (not shared)


def test_a_subclass_with_its_own_array_backward_is_called_as_written():
    """A user's op that subclasses Relu and writes its own ``array_backward(ctx, g)`` says nothing of writing into
    g, so the plan calls it as the engine does (no ``out``): no TypeError, eager's gradient."""
    calls = []

    class MyRelu(Relu):
        @staticmethod
        def array_backward(ctx, g):
            calls.append(1)
            x = ctx.saved_tensors[0].data
            return g * (x > 0)
    tg.manual_seed(0)
    fc, top = nn.Linear(4, 6), nn.Linear(6, 2)
    x = tg.randn(3, 4)

    def step():
        fc.weight.grad = None
        top(MyRelu.apply(fc(x))).sum().backward()  # its gradient: the top Linear's, a new array
    fast = tg.compile(step)
    for _ in range(3):
        fast()
    got = fc.weight.grad.data.copy()
    step()
    assert np.array_equal(got, fc.weight.grad.data)
    assert len(calls) == 4 and INTO not in fast.explain()


@pytest.mark.skipif(not kernels.enabled(), reason="the Numba kernels")
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_the_cpu_kernels_write_into_out_with_the_bits_of_a_new_array(act):
    """``act_bwd(s, g, out=g)`` and ``bias_act_bwd(y, g, out=g)`` return ``out`` itself, holding what they return
    without it; an ``out`` that is not C-contiguous is left alone and a new array comes back, also the same."""
    from tinygen.kernels import cpu as cpu_kernels  # (Numba: imported only where it is on)
    rng = np.random.default_rng(0)
    s = rng.standard_normal((64, 40)).astype(np.float32)
    if act in ("tanh", "sigmoid"):
        s = np.tanh(s) if act == "tanh" else 1 / (1 + np.exp(-s))
    g = rng.standard_normal((64, 40)).astype(np.float32)
    bwd = getattr(cpu_kernels, f"{act}_bwd")
    expect = bwd(s, g)
    into = g.copy()
    assert bwd(s, into, out=into) is into and np.array_equal(into, expect)
    strided = np.asfortranarray(g)
    got = bwd(s, g, out=strided)
    assert got is not strided and np.array_equal(got, expect) and np.array_equal(strided, g)
    if act in ("relu", "leaky_relu"):
        y = np.maximum(s, 0) if act == "relu" else np.where(s > 0, s, s * 0.2)
        expect, expect_b = cpu_kernels.bias_act_bwd(y, g, act, 0.2)
        into = g.copy()
        got, got_b = cpu_kernels.bias_act_bwd(y, into, act, 0.2, out=into)
        assert got is into and np.array_equal(got, expect) and np.array_equal(got_b, expect_b)


def test_a_dropout_and_the_layer_under_it_both_write_in_place(device):
    """Linear+ReLU, Dropout, Linear (the classifier's layout) in train mode: the dropout's node writes into the
    Linear's product it receives, and the layer under it into that. Six steps give eager's losses and parameters
    bit for bit (the same draws: tinygen's stream)."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Dropout(0.3), nn.Linear(48, 4))
        losses, params, step = _train(compiled, model, lambda p: tg.optim.Adam(p, lr=1e-2), device=device)
        return losses + params, step
    eager, _ = run(False)
    got, step = run(True)
    assert all(np.array_equal(a, b) for a, b in zip(got, eager))
    assert f"2 of them {INTO}" in step.explain() and step.replays == 5
