"""tinygen.compile on random op graphs: a replayed step gives eager's bits for any composition of ops.

The graphs are test_differential_torch.py's (every op of the table and the functional layers, and small
convolutional networks). Each graph becomes a step whose leaves are tensors held outside it, as a model's
parameters are: the step evaluates the graph and runs a backward into the leaves, a plain one or, drawn, the
second-order one of a gradient penalty (``grad(..., create_graph=True)``, then ``backward``). The compiled step
records on its first call and replays on the next ones, each with new leaf values written into the same tensors
(``leaf.data[...] = ``: moved a little, then shuffled, so that value-dependent selections change); its output
value and every leaf's gradient must equal the eager step's on the same values, bit for bit (fusion on: its
exact kernels give NumPy's bits), on NumPy and on the CPU stand-in for CuPy.
"""
import contextlib
import warnings

import numpy as np
from hypothesis import HealthCheck, event, given, settings, strategies as st

import tinygen as tg
from tinygen.backend import cuda_standin
from tinygen.compile import passes as compile_passes, steps as compile_steps
from test_differential_torch import ENTRIES, GRAPHS, NETWORK_ENTRIES, build_graph, evaluate

CALLS = 3  # the recording call, then two replays


class _HeldLeaves:
    """test_differential_torch's library interface (for ``evaluate``): tinygen ops, with the graph's leaves the
    given tensors (in program order) and its constants on ``device``."""
    name = "tinygen"

    def __init__(self, leaves, device):
        self.leaves, self.device = iter(leaves), device

    def leaf(self, a, dtype):  # noqa: ARG002 - the held tensor, as it is
        return next(self.leaves)

    def const(self, a, dtype):  # noqa: ARG002 - float64, as the leaves
        return tg.tensor(a, device=self.device)


def _step_of(graph, leaves, second_order, device, dropped=(), twice=False):
    """The graph's step; ``dropped``: leaves whose gradients the step drops after its backward (an optimizer's
    ``zero_grad()``), which a compiled plain backward leaves out of its plan; ``twice``: after the backward the
    step evaluates the graph again on the same leaves, runs a second plain backward into their gradients and
    returns the sum of both outputs (a compiled step runs each Linear and convolution of the second evaluation
    once: the first's outputs and nodes serve it, and its nodes' backward must give eager's gradients)."""
    upstream = tg.tensor(graph.upstream, device=device)
    weights = [tg.tensor(w, device=device) for w in graph.weights]
    dropper = tg.optim.SGD(dropped, lr=0.1) if dropped else None

    def step():
        out = evaluate(graph.program, _HeldLeaves(leaves, device), np.float64)[0][-1]
        if second_order:
            grads = tg.grad([out], leaves, [upstream], create_graph=True, allow_unused=True)
            terms = [(g * w).sum() for g, w in zip(grads, weights) if g is not None and g.requires_grad]
            if terms:
                sum(terms[1:], terms[0]).backward()
        else:
            out.backward(upstream)
        if dropper is not None:
            dropper.zero_grad()
        if twice:  # the same ops on the same leaves again, and a second backward into their gradients
            again = evaluate(graph.program, _HeldLeaves(leaves, device), np.float64)[0][-1]
            again.backward(upstream)
            return out.detach() + again.detach()
        return out.detach()
    return step


def _run(graph, second_order, compiled, values, device, drop=(), twice=False):
    """(output, leaf gradients) of each call, the leaves set to ``values[call]`` before it, as host arrays; the
    step and its leaves. ``drop``: the indices of the leaves whose gradients the step drops."""
    leaves = [tg.tensor(v.copy(), requires_grad=True, device=device) for v in values[0]]
    step = _step_of(graph, leaves, second_order, device, [leaves[i] for i in drop], twice)
    if compiled:
        step = tg.compile(step)
    results = []
    for call_values in values:
        for t, v in zip(leaves, call_values):
            t.data[...] = t.xp.asarray(v)
            t.grad = None
        out = step()
        results.append((out.cpu().numpy().copy(),
                        [None if t.grad is None else t.grad.cpu().numpy().copy() for t in leaves]))
    return results, step, leaves


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _check(graph, second_order, rng, device="cpu", drop=(), twice=False):
    """The step compiled and eager agree on every call; returns the compiled step and its leaves."""
    first = [np.asarray(graph.program[i][1]) for i in graph.leaves()]
    # the second call: the leaves moved a little (staying inside the ops' domains and away from their kinks,
    # mostly; a value that crosses one is fine: eager and replay see the same values); the last: each leaf's
    # values shuffled, so that masks, maxima and argmax indices change too (the same values: the same domains)
    moved = [[v + 1e-3 * rng.standard_normal(v.shape) for v in first] for _ in range(CALLS - 2)]
    shuffled = [rng.permutation(v.reshape(-1)).reshape(v.shape) for v in first]
    values = [first] + moved + [shuffled]
    try:
        eager, _, _ = _run(graph, second_order, False, values, device, drop, twice)
    except (ValueError, RuntimeError, IndexError):  # an op's own check refused the shuffled values
        event("eager refused the shuffled leaves: moved a little instead")
        values = [first] + moved + [[v + 1e-3 * rng.standard_normal(v.shape) for v in first]]
        eager, _, _ = _run(graph, second_order, False, values, device, drop, twice)
    replayed, compiled, leaves = _run(graph, second_order, True, values, device, drop, twice)
    assert compiled.records == 1 and compiled.replays == CALLS - 1, (compiled.records, compiled.replays)
    for call, ((ev, eg), (rv, rg)) in enumerate(zip(eager, replayed)):
        assert _same(ev, rv), f"call {call}: the output differs from eager"
        for k, (a, b) in enumerate(zip(eg, rg)):
            assert _same(a, b), f"call {call}: the gradient of leaf {k} differs from eager"
    return compiled, leaves


SETTINGS = settings(max_examples=max(1, GRAPHS // 3), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _draw_case(data):
    """A random graph (of every op, or of the network layers), first or second order, and a generator for its
    values; None when no graph fitted."""
    graph = build_graph(data.draw, ENTRIES if data.draw(st.sampled_from(["all ops", "networks"])) == "all ops"
                        else NETWORK_ENTRIES)
    if graph is None:
        event("no graph: too few ops fitted")
        return None
    second_order = data.draw(st.booleans())
    event("second order" if second_order else "plain backward")
    return graph, second_order, np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))


@SETTINGS
@given(data=st.data())
def test_random_graphs_replay_bitwise_eager(data):
    case = _draw_case(data)
    if case is None:
        return
    graph, second_order, rng = case
    if not data.draw(st.booleans()):
        _check(graph, second_order, rng)
        return
    event("on the CUDA stand-in")  # device arrays: nothing fused, the replay's device path
    with cuda_standin():
        _check(graph, second_order, rng, "cuda")


@settings(SETTINGS, max_examples=max(1, GRAPHS // 6))
@given(data=st.data())
def test_random_graphs_with_dropped_gradients_replay_bitwise_eager(data):
    """The step drops a drawn subset of the leaves' gradients after its backward: a compiled plain backward leaves
    them out of its plan (cutting edges, registers and whole nodes of any composition), and every gradient the
    step keeps must still be eager's."""
    case = _draw_case(data)
    if case is None:
        return
    graph, second_order, rng = case
    n = len(graph.leaves())
    drop = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    device = "cuda" if data.draw(st.booleans()) else "cpu"
    with cuda_standin() if device == "cuda" else contextlib.nullcontext():
        compiled, leaves = _check(graph, second_order, rng, device, drop)
    (program,) = compiled._programs.values()
    dropped = {id(leaves[i]) for i in drop}
    assert program.left_out <= dropped
    if second_order:
        assert not program.left_out  # the engine walks a create_graph backward: nothing may be left out
    elif program.left_out:
        event("left out: all dropped" if program.left_out == dropped else "left out: some dropped")
    else:
        event("left out: none (no dropped leaf reached)")


@settings(SETTINGS, max_examples=max(1, GRAPHS // 6))
@given(data=st.data())
def test_random_graphs_evaluated_again_after_the_backward_replay_bitwise_eager(data):
    """The step evaluates the graph again after its backward and runs a second backward: a compiled step runs each
    Linear and convolution of the second evaluation once (the first's outputs and node state serve its node), and
    the output and every gradient must still be eager's."""
    case = _draw_case(data)
    if case is None:
        return
    graph, second_order, rng = case
    device = "cuda" if data.draw(st.booleans()) else "cpu"
    with cuda_standin() if device == "cuda" else contextlib.nullcontext():
        compiled, _ = _check(graph, second_order, rng, device, twice=True)
    (program,) = compiled._programs.values()
    reused = sum(run is compile_steps.replay_call and ops[0] is compile_passes.same_result
                 for run, ops in program.steps)
    if second_order:
        assert not reused  # the engine walks a create_graph backward: nothing is reused
    event(f"reused forwards: {'none' if not reused else 'some'}")


def _forward_outside(graph, second_order, compiled, values, device, calls_before):
    """(output, leaf gradients) of each call of the graph's forward alone (compiled or eager), its backward after the
    call: a plain one, or a gradient penalty's (``grad(..., create_graph=True)``, then ``backward``); the forward
    called ``calls_before`` times before one backward of the sum of their outputs. Returns the results and the
    forward."""
    leaves = [tg.tensor(v.copy(), requires_grad=True, device=device) for v in values[0]]
    upstream = tg.tensor(graph.upstream, device=device)
    weights = [tg.tensor(w, device=device) for w in graph.weights]

    def forward():
        return evaluate(graph.program, _HeldLeaves(leaves, device), np.float64)[0][-1]
    f = tg.compile(forward) if compiled else forward
    results = []
    for call_values in values:
        for t, v in zip(leaves, call_values):
            t.data[...] = t.xp.asarray(v)
            t.grad = None
        outs = [f() for _ in range(calls_before)]
        out = sum(outs[1:], outs[0])
        if out.grad_fn is not None and second_order:
            grads = tg.grad([out], leaves, [upstream], create_graph=True, allow_unused=True)
            terms = [(g * w).sum() for g, w in zip(grads, weights) if g is not None and g.requires_grad]
            if terms:
                sum(terms[1:], terms[0]).backward()
        elif out.grad_fn is not None:
            out.backward(upstream)
        results.append((out.detach().cpu().numpy().copy(),
                        [None if t.grad is None else t.grad.cpu().numpy().copy() for t in leaves]))
    return results, f


@settings(SETTINGS, max_examples=max(1, GRAPHS // 6))
@given(data=st.data())
def test_random_graphs_compiled_as_a_forward_with_the_backward_after_the_call_give_eager_gradients(data):
    """Only the graph's forward compiled, its backward after the call (``recording.HandedGraph``: each replay
    refills the program's nodes and hands the output on through a gate), the forward called once or twice before
    the backward (the second call on a spare program): the output and every gradient equal eager's on each call,
    bit for bit. A gradient penalty through the handed graph makes later calls eager (with a warning)."""
    case = _draw_case(data)
    if case is None:
        return
    graph, second_order, rng = case
    calls_before = data.draw(st.sampled_from([1, 2]))
    device = "cuda" if data.draw(st.booleans()) else "cpu"
    first = [np.asarray(graph.program[i][1]) for i in graph.leaves()]
    values = [first] + [[v + 1e-3 * rng.standard_normal(v.shape) for v in first] for _ in range(CALLS - 1)]
    with cuda_standin() if device == "cuda" else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the penalty's warning)
        eager, _ = _forward_outside(graph, second_order, False, values, device, calls_before)
        replayed, f = _forward_outside(graph, second_order, True, values, device, calls_before)
    for call, ((ev, eg), (rv, rg)) in enumerate(zip(eager, replayed)):
        assert _same(ev, rv), f"call {call}: the output differs from eager"
        for k, (a, b) in enumerate(zip(eg, rg)):
            assert _same(a, b), f"call {call}: the gradient of leaf {k} differs from eager"
    handed = next(iter(f._programs.values())) is not compile_steps.GRAPH and \
        next(iter(f._programs.values())).handoff is not None
    if handed and not second_order:
        assert (f.records, f.replays) == (calls_before, calls_before * (CALLS - 1)), (f.records, f.replays)
    event(f"{calls_before} call(s) before the backward; "
          f"{'handed on' if handed else 'eager after a penalty' if second_order else 'no graph handed on'}")


def test_the_comparison_catches_a_replay_that_differs(monkeypatch):
    """Not vacuous: a forward whose result drifts from call to call (by 1e-12, so eager's three calls and the
    compiled step's three differ) is caught; without the drift the same graph passes."""
    import pytest
    from test_differential_torch import Graph
    from tinygen.ops import elementwise

    graph = Graph([("leaf", np.array([0.3, -1.2, 2.0])), ("op", "exp", [0], {}, 0), ("op", "sin", [1], {}, 0)],
                  upstream=np.array([1.5, -0.5, 1.0]), weights=[np.array([1.0, 2.0, -1.0])])
    for second_order in (False, True):
        _check(graph, second_order, np.random.default_rng(0))
    calls = []
    forward = elementwise.Exp.forward

    def drifting(ctx, x):
        calls.append(1)
        return forward(ctx, x) + 1e-12 * len(calls)

    monkeypatch.setattr(elementwise.Exp, "forward", staticmethod(drifting))
    with pytest.raises(AssertionError, match="call 0: the output differs from eager"):
        _check(graph, False, np.random.default_rng(0))
