"""The steps a ``tinygen.compile`` program is made of, and how a replay runs each one.

A program is a tuple of ``(run, operands)`` pairs, and a replay calls ``run(*operands)`` for each in order:

  replay_forward         an op's forward, called with the node (``ctx``) it had when recorded; its output arrays go
                         into the recorded output tensors, and its node is refilled (``refill_node``)
  replay_backward        a plain backward as a ``BackwardPlan``: the nodes the engine ran, on arrays, with no walk
  replay_call            a recorded call (``@replayed``: an optimizer step, zero_grad, a random draw; a backward the
                         engine walks)
  replay_alias           a detached or viewed tensor, set on its source's array
  replay_requires_grad   a ``requires_grad_`` switch inside the step
  replay_release         intermediates after their last use: they hold ``RELEASED`` until the next replay
  a ``FusedRun``         a run of elementwise forwards as one generated kernel (``fusion.py``)
"""
import copy
import dataclasses

import numpy as np

from ..autograd import engine
from ..autograd.engine import _roots
from ..autograd.function import Function, _edges, result_array
from ..autograd.grad_mode import STATE
from ..capture import replayed
from ..tensor import Tensor, _make

_new = object.__new__
FUSED = "fused"  # the second item of a backward plan's step whose first item is a fusion.FusedBackward


class CompileError(RuntimeError):
    """A step that tinygen.compile cannot record or whose replay disagreed with eager (``check=``)."""


class _ReleasedArray:
    """What an intermediate tensor of a compiled step holds once the step no longer needs it: any use raises."""
    MESSAGE = ("tinygen.compile: this tensor is an intermediate of a compiled step, released after its last use in "
               "the step (so a compiled step holds no more memory than eager); return it from the step to keep it")

    def __getattr__(self, name):
        raise AttributeError(self.MESSAGE)

    def _refuse(self, *args, **kwargs):
        raise CompileError(self.MESSAGE)

    __array__ = __getitem__ = __len__ = _refuse


RELEASED = _ReleasedArray()


class _EagerCalls:
    """What a compiled function keeps for a signature whose calls run eagerly (``recording.record`` gives it): the
    step returns a tensor with a graph that a backward after the call would go through, and a replay's result has
    no graph."""

    def __repr__(self):
        return "GRAPH"


GRAPH = _EagerCalls()


def replay_forward(cls, ctx, device, args, outs, relink, shadowable):
    STATE.grad_enabled = False  # as in Function.apply: nothing inside a forward records
    if relink:  # an input may be a gradient a replayed create_graph call has just rebuilt, with a new node
        ctx.next_edges = _edges(args)
    elif ctx is None:  # an op outside the graph: a fresh node, as apply makes one, gone after this call
        ctx = _new(cls)
        ctx._saved, ctx._out_data, ctx.device = (), None, device
        shadowable = None  # so what it saves needs no shadows
    out = cls.forward(ctx, *args)
    datas = out if type(out) is tuple else (out,)
    for t, d in zip(outs, datas):
        t.data = d if type(d) is np.ndarray else result_array(d, t._device, ctx)
    refill_node(ctx, cls.save_output, outs[0], ctx._saved, shadowable)


def refill_node(ctx, save_output, out, saved, shadowable):
    """What a replayed forward leaves on its node: its output (``save_output``) and what it saved, the
    intermediates among them as shadows."""
    if save_output and ctx._out_data is not None:
        ctx._out_data = out.data
    if saved and shadowable:
        saved = tuple(_shadow(t) if isinstance(t, Tensor) and id(t) in shadowable else t for t in saved)
    ctx._saved = saved


class BackwardPlan:
    """A plain backward as the flat sequence of steps the engine took when it was recorded: for each node that
    ran, in the engine's order, the registers (one per node output) its gradients were summed in, and where each
    gradient it returns goes (a register, or a leaf's .grad); the leaves whose post-accumulate-grad hooks become
    due after it (those of its edges' leaves that no later node reaches: when the engine runs them)."""

    def __init__(self, roots, trace, retain_graph):
        registers = {}

        def register(node, idx):
            return registers.setdefault((id(node), idx), len(registers))

        def target(edge):  # where a gradient along this edge goes; a leaf's shape is read when it arrives
            if edge is None:
                return None
            if isinstance(edge[0], Function):
                return (register(*edge), None) + edge[0].out_meta[edge[1]]
            return (None, edge[0], None, None)
        roots = (roots,) if isinstance(roots, Tensor) else tuple(roots)
        self.roots = tuple(target((t, 0) if t.grad_fn is None else (t.grad_fn, t._out_idx))[:2] for t in roots)
        self.ones = tuple((t.data.shape, t.data.dtype, t.xp) for t in roots)  # the gradient of a scalar root
        # the engine runs a leaf's hooks at the last edge that reaches it (the roots come first, as position -1)
        last = {id(t): ((-1, j), t) for j, t in enumerate(roots) if t.grad_fn is None}
        for i, (node, _) in enumerate(trace):
            for j, e in enumerate(node.next_edges):
                if e is not None and not isinstance(e[0], Function):
                    last[id(e[0])] = ((i, j), e[0])
        due = {}
        for (i, _), leaf in sorted(last.values(), key=lambda entry: entry[0]):
            due.setdefault(i, []).append(leaf)
        first, steps = due.pop(-1, []), []
        for i, (node, ran) in enumerate(trace):
            if ran:
                ins = tuple(register(node, k) for k in range(len(node.out_meta)))
                outs = tuple(target(e) for e in node.next_edges)
                steps.append((node, node.array_backward, ins, node.out_meta if len(ins) > 1 else None, outs, []))
            # due at a node that did not run: after the last one that did (nothing happens in between)
            (steps[-1][5] if steps else first).extend(due.get(i, ()))
        self.due_first = tuple(first)
        self.steps = tuple(step[:5] + (tuple(step[5]),) for step in steps)
        self.size = len(registers)
        self.release = not retain_graph
        self.dropped = ()  # nodes left out by without(): released at the end, as the engine would have

    def nodes(self):
        """The nodes the plan runs, in its order (those of a fused run too), then those it only releases."""
        return [n for step in self.steps for n in (step[0].nodes if step[1] is FUSED else (step[0],))] + \
            list(self.dropped)

    def delivered(self):
        """The leaves whose .grad the plan's nodes deliver to, in their order (a leaf may repeat)."""
        return [target[1] for step in self.steps for target in step[4] if target is not None and target[1] is not None]

    def without(self, dead, shared):
        """This plan without its deliveries to the leaves ``dead`` (ids), and without the work only they needed:
        the edges of a node to them, or to a register no node left reads, are cut in the node itself (its
        ``next_edges``: ``array_backward`` computes what they ask for; the node is the program's), and a node
        with nothing left to deliver is not run (its leaves' hooks become due after the node before it).
        ``shared`` counts the plans that run each node: one other plans run too keeps every edge."""
        plan, live, steps, carry, dropped = copy.copy(self), set(), [], (), []
        for node, array_backward, ins, metas, outs, due in reversed(self.steps):
            keep = outs
            if shared[id(node)] == 1:
                keep = tuple(None if t is None or (t[1] is None and t[0] not in live) or id(t[1]) in dead else t
                             for t in outs)
                if not any(keep):
                    dropped.append(node)
                    carry = due + carry
                    continue
                if keep != outs:
                    node.next_edges = tuple(e if t is not None else None for e, t in zip(node.next_edges, keep))
            live.update(ins)
            steps.append((node, array_backward, ins, metas, keep, due + carry))
            carry = ()
        plan.steps, plan.due_first, plan.dropped = tuple(reversed(steps)), self.due_first + carry, tuple(dropped)
        return plan


def replay_backward(plan, args):
    if args[1] is None:  # scalar roots, as recorded
        root_grads = [xp.ones(shape, dtype=dtype) for shape, dtype, xp in plan.ones]
    else:
        root_grads = [g.data for g in _roots(args[0], args[1])[1]]
    engine.with_callbacks(run_plan, plan, root_grads)


def run_plan(plan, root_grads):
    """The recorded steps of a plain backward, on arrays: what ``engine._run`` computes, without its walk."""
    regs = [None] * plan.size
    direct = {}
    prev, STATE.grad_enabled = STATE.grad_enabled, False
    try:
        for (r, leaf), g in zip(plan.roots, root_grads):
            if leaf is not None:
                engine.deliver_to_leaf(leaf, _make(g, leaf._device), direct, False)
            else:
                regs[r] = g if regs[r] is None else _added(regs[r], g)
        engine.run_post_accumulate_hooks(plan.due_first, direct)
        release = plan.release
        for step in plan.steps:
            if step[1] is FUSED:  # a run of elementwise nodes as one loop (fusion.FusedBackward)
                step[0](regs, direct, release)
            else:
                plan_step(step, regs, direct, release)
        for node in plan.dropped:
            node.release()
    finally:
        STATE.grad_enabled = prev
    engine.own_gradients(direct, {id(g) for g in root_grads})


def plan_step(step, regs, direct, release):
    """One node of a plan: its gradients taken from its registers, its ``array_backward`` (else its ``backward``,
    on tensors), each gradient it returns fitted to its input and summed into a register or delivered into a
    leaf's ``.grad``, the hooks due after it, the node released (unless ``retain_graph``)."""
    node, array_backward, ins, metas, outs, due = step
    xp = node.xp
    grads = [regs[r] for r in ins]
    for r in ins:
        regs[r] = None
    if metas is not None:  # several outputs: a missing gradient is zero
        grads = [g if g is not None else xp.zeros(s, dtype=d) for g, (s, d) in zip(grads, metas)]
    if array_backward is not None:
        out = array_backward(node, *grads)
    else:
        out = node.backward(node, *[_make(g, node.device) for g in grads])
    if type(out) is not tuple:
        out = (out,)
    for target, g in zip(outs, out):
        if target is None or g is None:
            continue
        g = engine.gradient_array(g, node)
        r, leaf, shape, dtype = target
        if leaf is None:
            g = engine.fit_array(g, shape, dtype, xp)
            regs[r] = g if regs[r] is None else _added(regs[r], g)
        else:
            g = engine.fit_array(g, leaf.data.shape, leaf.data.dtype, xp)
            engine.deliver_to_leaf(leaf, _make(g, node.device), direct, False)
    if due:
        engine.run_post_accumulate_hooks(due, direct)
    if release:
        node.release()


def backward_into_gradient(node, g):
    """A plan step's backward that may write its result into ``g``, the plan's own
    (``passes.with_gradients_in_place``)."""
    return node.array_backward(node, g, out=g)


def _added(a, b):
    """a + b as the engine sums two gradients (``Add``: a NumPy scalar becomes an array)."""
    return result_array(a + b, None, None)


def replay_call(fn, args, kwargs, result, grad_enabled, new):
    STATE.grad_enabled = grad_enabled
    _bind(result, fn(*args, **kwargs))


@replayed(grads=lambda tensor, value: ("drops", (tensor,)) if value is None else None,
          writes=lambda tensor, value: (value,) if isinstance(value, Tensor) else ())  # a backward may add into it
def set_grad(tensor, value):
    tensor._grad = value


def replay_alias(src, dst):
    dst.data = src.data


def replay_requires_grad(tensor, flag):
    tensor._requires_grad = flag


def replay_release(tensors, nodes):
    for t in tensors:
        t.data = RELEASED
    for node in nodes:  # what its forward set on it (a fused kernel's gradient, ...): the next replay sets it again
        vars(node).clear()


def _bind(recorded, new):
    """Put a replayed call's result arrays into the tensors its recorded call returned."""
    if isinstance(recorded, Tensor):
        if new is not recorded:  # the recorded tensor takes the new one's array (and node, for a gradient graph)
            recorded.data, recorded.grad_fn, recorded._out_idx = new.data, new.grad_fn, new._out_idx
    elif isinstance(recorded, (tuple, list)):
        for r, n in zip(recorded, new):
            _bind(r, n)


def _shadow(t):
    """A new tensor on ``t``'s array, with its node: what a replayed node saves instead of the program's tensor."""
    return _make(t.data, t._device, t._requires_grad, t.grad_fn, t._out_idx)


def tensors_read(run, operands):
    """The tensors a program's step takes as arguments: an op's inputs, a recorded call's arguments, an alias's
    source, a plain backward's roots and their gradients (not what a backward reaches through the graph)."""
    if run is replay_forward:
        return tensors_in(operands[3])  # with the tensors inside an index tuple
    if run is replay_call:
        return tensors_in(operands[1], operands[2])
    if run is replay_alias:
        return operands[:1]
    if run is replay_backward:
        return tensors_in(operands[1])
    return ()


def tensors_in(*values):
    """The tensors in ``values``, in order: nested in tuples, lists, dicts and dataclass instances."""
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        else:
            items = children(v)
            if items is not None:
                out.extend(tensors_in(*items))
    return out


def children(value):
    """What a container holds, in order: a tuple's or list's items, a dict's values, a dataclass instance's fields;
    None for anything else (a tensor, a number, another object)."""
    if isinstance(value, (tuple, list)):
        return value
    if isinstance(value, dict):
        return value.values()
    names = _DATACLASSES.get(value.__class__)  # (the cache read here: this runs on every call's arguments)
    if names is None:
        names = _field_names(value.__class__)
    return [getattr(value, n) for n in names] if names else None


_DATACLASSES = {}  # type -> its field names, () for a type that is no dataclass: asked once a type (a failed
# hasattr raises an error inside, and dataclasses.fields builds its tuple anew on every call)


def _field_names(cls):
    names = _DATACLASSES.get(cls)
    if names is None:
        names = _DATACLASSES[cls] = tuple(f.name for f in dataclasses.fields(cls)) if hasattr(
            cls, "__dataclass_fields__") else ()
    return names


def is_dataclass_instance(value):
    """Whether ``value`` is an instance of a dataclass with fields (a dataclass itself is not: its type is
    ``type``)."""
    return bool(_field_names(value.__class__))


def dataclass_items(value):
    """(name, value) of the fields of a dataclass instance (a batch or a result: read as a namedtuple is)."""
    return [(n, getattr(value, n)) for n in _field_names(value.__class__)]


def map_tensors(value, fn):
    """``value`` (tensors in nested tuples, lists, dicts and dataclass instances) with each tensor t replaced by
    ``fn(t)``; a dataclass instance as a copy with its fields set (not made anew: its ``__init__`` is not run)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        items = [map_tensors(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # (a namedtuple)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if is_dataclass_instance(value):
        new = copy.copy(value)
        for name, v in dataclass_items(value):
            object.__setattr__(new, name, map_tensors(v, fn))  # (a frozen one too)
        return new
    return value


def run_steps(steps):
    for run, operands in steps:
        run(*operands)
