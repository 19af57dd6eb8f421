"""Recording a ``tinygen.compile`` program: the first call with a signature runs the step eagerly with a
``Recorder`` set as ``CAPTURE.recorder`` (the one hook in the core, ``tinygen/capture.py``); ``Program`` turns what
it wrote down into the steps a replay runs (``steps.py``), through the passes (``passes.py``, ``fusion.py``), and
holds the guards a replay checks first (``guards.py``: signatures, the places the step found its tensors, and what a
recording refuses)."""
import contextlib
import itertools
import sys
import threading
import weakref
from collections.abc import Iterator

import numpy as np

from ..autograd import engine
from ..autograd.engine import _backward, _grad
from ..autograd.function import Function, _edges, user_frame
from ..autograd.grad_mode import STATE
from ..capture import CAPTURE
from ..ops.shape import Gate
from ..tensor import Tensor, _make
from . import cuda_graph, fusion, guards, passes
from .explain import described, tensor_text
from .steps import (GRAPH, BackwardPlan, CompileError, dataclass_items, is_dataclass_instance, map_tensors,
                    replay_alias, replay_backward, replay_call, replay_forward, replay_release, replay_requires_grad,
                    run_steps, set_grad, tensors_in, tensors_read)


# what a step that uses a .grad it cannot (a replay would use a stale one) may do instead
_READ_GRADS_AFTER = ("read gradients after the call (return what you need from the step), or call a replayed utility "
                     "that takes the parameters (clip_grad_norm_)")


class Recorder:
    """Set as ``CAPTURE.recorder`` while a step runs for the first time; the core's hooks call it."""

    def __init__(self, inputs, values, found_places):
        self._depth = 0
        self._thread = threading.get_ident()
        self.steps = []
        self.modules = {}
        self.leaves = {}
        self.made = set()  # ids of the tensors the step made: they need no guard
        self.nodes = set()  # ids of the recorded ops' nodes: a replay reuses them
        self.relink = False  # after a call that builds a graph, ops re-read their inputs' nodes on replay
        self.elementwise = {}  # id(output) -> what the fusion pass needs to know of an elementwise op
        self.new_grads = {}  # id -> (a .grad tensor a backward of the step made, held: its id stays its own; its leaf)
        self.grads_read = {}  # id -> (a .grad tensor the step's code read, its leaf, where): stale_grad_read
        self.walked = set()  # ids of the nodes the step's backwards went through (its result's graph: _graph_returned)
        self.inputs = {id(t) for t in inputs}  # the program's input tensors
        self.values = values  # id -> (tensor, digest of its values, what it is): guards.untracked_write
        self.created = {}  # id -> an optimizer, scheduler or module the step made (capture.note_created)
        self.settings = {}  # (id(module), name) -> (module, name, value before the step set it): guards.settings_set
        self.host_masks = {}  # id -> (a mask made from host data, that array or list, its values): note_host_mask
        self.mask_guards = []  # (host data, its values) of the masks whose values decide a shape
        # the Python state the step's code reaches (guards.python_state of its places), read again around each
        # recorded call: what changes between calls is the step's own Python, which a replay would not run
        self.places = found_places
        self.start = self.state = guards.python_state(found_places)
        self.between = []  # (where, value, holder) of each change the step's own Python made between calls

    @property
    def depth(self):
        """Recorded calls in progress: what runs inside them is not recorded again. Another thread's tinygen
        calls (a data loader's, an evaluation's) count as inside one: they are not the step's."""
        return self._depth if threading.get_ident() == self._thread else 1

    @depth.setter
    def depth(self, n):
        self._depth = n

    def record_apply(self, cls, args):
        self.refuse_new_grads(args)
        self.depth += 1
        try:
            with guards.tracked_write(self, (t for k in cls.forward_writes for t in tensors_in(args[k]))):
                out = cls.apply(*args)
        finally:
            self.depth -= 1
        outs = out if isinstance(out, tuple) else (out,)
        ctx = next((t.grad_fn for t in outs if t.grad_fn is not None), None)
        device = None
        for a in args:
            if isinstance(a, Tensor):
                device = device or a._device
                if a.grad_fn is None and id(a) not in self.made and id(a) not in self.leaves:
                    # guard: its flag when first used or changed; a parameter's values, to see untracked writes
                    self.leaves[id(a)] = (a, a._requires_grad, a.data.shape, a.data.dtype)
                    if a._requires_grad and id(a) not in self.values:
                        self.values[id(a)] = (a, guards.fingerprint(a.data), f"a tensor of shape {tuple(a.shape)} that "
                                                                        f"requires grad (a parameter)")
        self.made.update(id(t) for t in outs)
        if ctx is not None:
            self.nodes.add(id(ctx))
        fusable = fusion.note(cls, ctx, args, out)
        if fusable is not None:
            self.elementwise[id(out)] = fusable
        self.steps.append((replay_forward, cls, ctx, device, args, outs, self.relink and ctx is not None, None))
        return out

    def record_call(self, fn, args, kwargs, builds_graph=False):
        args = tuple(_kept(a) for a in args)
        kwargs = {k: _kept(v) for k, v in kwargs.items()}
        self.refuse_new_grads(args, kwargs)
        if fn in (_backward, _grad):  # (before it runs: a backward releases the graph as it goes)
            _refuse_tensor_hooks(args[0])
            self.walked.update(_nodes_of(args[0]))
        with self._inside(guards.backward_writes(self) if fn in (_backward, _grad) else
                          guards.may_write(fn, args, kwargs)):
            result = fn(*args, **kwargs)
        new = _new_tensors(tensors_in(result))  # before anything else refers to the result
        self.steps.append((replay_call, fn, args, kwargs, result, STATE.grad_enabled, new))
        self.made.update(id(t) for t in tensors_in(result))
        self.relink = self.relink or builds_graph
        return result

    def record_backward(self, tensors, grad_tensors, retain_graph, create_graph, inputs):
        """A plain backward is recorded as the steps the engine took (``BackwardPlan``); one that builds a graph,
        or one whose graph has nodes a replay makes anew (made by a create_graph call), as a call to the engine."""
        _refuse_tensor_hooks(tensors)
        before = {key: leaf[0]._grad for key, leaf in self.leaves.items()}
        if create_graph or inputs is not None:
            self.record_call(_backward, (tensors, grad_tensors, retain_graph, create_graph, inputs), {},
                             builds_graph=create_graph)
        else:
            self.refuse_new_grads(grad_tensors)  # (a call's arguments are checked in record_call)
            args = (_kept(tensors), _kept(grad_tensors), retain_graph, False, None)
            trace = []
            with self._inside(guards.backward_writes(self)):
                _backward(*args, trace=trace)
            self.walked.update(id(node) for node, _ in trace)
            if all(id(node) in self.nodes for node, _ in trace):
                self.steps.append((replay_backward, BackwardPlan(args[0], trace, retain_graph), args))
            else:
                self.steps.append((replay_call, _backward, args, {}, None, STATE.grad_enabled, ()))
        # a .grad this backward made is a new tensor on every replay: the step's own code must not hold this one
        self.new_grads.update((id(t._grad), (t._grad, t)) for key, (t, *_) in self.leaves.items()
                              if t._grad is not None and t._grad is not before.get(key))

    @contextlib.contextmanager
    def _inside(self, writes):
        """Around a recorded call or plain backward (``writes``: what it may write, ``guards.tracked_write``): its
        ops and calls are not recorded apart; the step's Python before it is noted (``python_changes``), and what
        it changes itself (an optimizer's state, what a hook does) a replay changes again, so it is not."""
        self.python_changes()
        self.depth += 1
        try:
            with guards.tracked_write(self, writes):
                yield
        finally:
            self.depth -= 1
        self.state = guards.python_state(self.places)

    def python_changes(self):
        """Note what the step's own Python changed in the state it reaches since the last recorded call (or the
        start); what a recorded call changes, a replay changes again by calling it."""
        now = guards.python_state(self.places)
        self.between.extend(guards.changes(self.state, now))
        self.state = now

    def python_changed(self):
        """Where the step's own Python changed the state its code reaches in a way a replay would not repeat, else
        None: anything it leaves changed at the end (``history.append(loss)``, ``stats.n += 1``, an iterator
        advanced), and any change, even undone later, to an object a recorded call takes or to what it holds (a
        learning rate set in an optimizer's param_groups, which its recorded step reads)."""
        taken = guards.recorded_objects(self)
        left = {where for where, _, _ in guards.changes(self.start, self.state)}
        return next((where for where, value, holder in self.between
                     if where in left or id(value) in taken or id(holder) in taken), None)

    def refuse_new_grads(self, *values):
        """Raise if the step passes on a .grad tensor one of its backwards made (read from a leaf in Python, which
        the recording cannot see: a replay would pass this call's stale tensor)."""
        if self.new_grads:
            for t in tensors_in(*values):
                if id(t) in self.new_grads:
                    raise CompileError(
                        f"tinygen.compile: the step uses the .grad of a tensor of shape {tuple(t.shape)} that its own "
                        f"backward made, at {user_frame()}. A replay makes that gradient anew, so the step would "
                        f"use a stale one: {_READ_GRADS_AFTER}")

    def note_grad_read(self, leaf, grad):
        if id(grad) not in self.grads_read:
            self.grads_read[id(grad)] = (grad, leaf, user_frame())

    def stale_grad_read(self):
        """A .grad the step's code read and passed to an op, a call or a backward (``tensors_read``) while its leaf
        holds another one after the call (a backward or zero_grad replaced it): a replay would use the recorded
        tensor. Returns (that .grad, where it was read), or None."""
        if not self.grads_read:
            return None
        for step in self.steps:
            for t in tensors_read(step[0], step[1:]):
                grad, leaf, where = self.grads_read.get(id(t), (None, None, None))
                if grad is not None and leaf._grad is not grad:
                    return grad, where
        return None

    def note_created(self, obj):
        self.created[id(obj)] = obj

    def record_requires_grad(self, tensor, flag):
        if id(tensor) not in self.made:
            self.leaves.setdefault(id(tensor), (tensor, tensor._requires_grad, tensor.data.shape, tensor.data.dtype))
        self.steps.append((replay_requires_grad, tensor, flag))

    def record_grad_set(self, tensor, value):
        """``tensor.grad = value`` in the step's code, recorded as a call: None, or a tensor the step did not make (a
        replay sets the same one; a tensor the step computes would be a stale one, so it is refused)."""
        if isinstance(value, Tensor) and self.varies(value):
            raise CompileError(f"tinygen.compile: the step sets a .grad to a tensor it computes or takes as an "
                               f"argument, at {user_frame()}. A replay would set a stale one: set .grad to None (or "
                               f"call zero_grad) in the step, or set it outside the call")
        self.record_call(set_grad, (tensor, value), {})

    def record_alias(self, src, dst):
        self.refuse_new_grads(src)
        self.made.add(id(dst))
        self.steps.append((replay_alias, src, dst))

    def varies(self, tensor):
        """Whether ``tensor`` may hold other values on a replay: an input, or made by the step."""
        return id(tensor) in self.made or id(tensor) in self.inputs

    def note_host_mask(self, tensor, data):
        self.host_masks[id(tensor)] = (tensor, data, np.array(data, copy=True))

    def shape_from_values(self, tensor, what):
        """``tensor``'s values decide a shape (``capture.refuse_shape_from_values``): a mask made from host data
        becomes a guard (the program replays while the data holds these values); another that may vary raises."""
        mask = self.host_masks.get(id(tensor))
        if mask is not None:
            self.mask_guards.append(mask[1:])
        elif self.varies(tensor):
            self.refuse(tensor, what)

    def note_module(self, module, training=None):
        """A module the step calls, or whose mode it sets (``training``: the mode before that): its mode as the
        step found it is part of the program's guards."""
        if id(module) not in self.modules:  # its mode as the step found it, before it changed anything
            self.modules[id(module)] = (module, module.training if training is None else training)

    def note_setting(self, module, name, old):
        self.settings.setdefault((id(module), name), (module, name, old))

    def refuse(self, tensor, what):
        raise CompileError(f"tinygen.compile: the step reads a tensor's value into Python ({what}) at "
                           f"{user_frame()}. A replay cannot repeat a decision taken on a value: return the tensor "
                           f"from the step and read it after the call, or call this function without compiling it")


def _kept(arg):
    """An argument as a recorded call keeps it: a generator (``model.parameters()``) as a tuple of its items, as
    it would be empty on the second call."""
    return tuple(arg) if isinstance(arg, Iterator) else arg


def record(fn, args, kwargs, fuse, graphs=False):
    """Run ``fn`` once with a ``Recorder`` set; returns (its ``Program``, its result), or (a text naming the Python
    state the step changed, its result: a module attribute, a list, an iterator's position): no program can repeat
    that, so the call is eager and the next records anew; or (``GRAPH``, its result with its graph): the step
    returns a graph for a backward after the call and builds a gradient graph (create_graph, ``grad()``) whose
    nodes a replay makes anew, so calls with this signature run eagerly. A program whose result keeps a graph
    for a backward after the call hands it on (``HandedGraph``)."""
    caller = tensors_in(args, kwargs)
    # the program's own input tensors (on the caller's arrays): a replay puts new arrays into them, never into
    # the caller's tensors; one that requires grad passes its gradient on through a Gate node into the caller's
    slots = {}
    given = args, kwargs
    args, kwargs = _with_slots(args, slots), _with_slots(kwargs, slots)
    copies = _copies(given, (args, kwargs))  # (the caller's container, the copy the step gets, what it holds)
    inputs = tensors_in(args, kwargs)
    before = guards.places(fn, args, kwargs)
    rec = Recorder(inputs, guards.watched(before), before)
    CAPTURE.recorder = rec
    try:
        with guards.host_draws_refused():
            result = fn(*args, **kwargs)
    finally:
        CAPTURE.recorder = None
    reached = next((i for i, t in enumerate(inputs) if t.grad_fn is not None and id(t.grad_fn) in rec.walked), None)
    if reached is not None:
        raise CompileError(f"tinygen.compile: a backward inside the step reaches tensor argument {reached} (shape "
                           f"{tuple(inputs[reached].shape)}), which requires grad; a replay would not take its "
                           f"gradient on into the graph it came from. Pass parameters through the modules the step "
                           f"uses, pass .detach() of the argument, or call that backward after the call")
    made = guards.call_on_created(rec)
    if made is not None:
        raise CompileError(f"tinygen.compile: the step makes {made}; a replay would call the one made when the "
                           f"step was recorded, its state carried over between calls, where eager makes a new one "
                           f"on every call. Make it outside the step")
    stale = rec.stale_grad_read()
    if stale is not None:
        raise CompileError(f"tinygen.compile: the step uses the .grad of a tensor of shape {tuple(stale[0].shape)} "
                           f"that it read at {stale[1]}, and the leaf holds another gradient after the call (its "
                           f"backward or zero_grad replaced it). A replay would use this call's tensor: "
                           f"{_READ_GRADS_AFTER}")
    changed = guards.untracked_write(rec)  # since the last recorded write
    if changed is not None:
        raise CompileError(guards.untracked_message(changed))
    hidden = guards.hidden_in_result(result, rec.made)
    if hidden is not None:
        raise CompileError(f"tinygen.compile: the step returns {hidden}. A replay refills the tensors of a result "
                           f"in tuples, lists, dicts, namedtuples and dataclass instances only; this one would be "
                           f"the program's own, released after the call: return it in one of those")
    roles = _roles(result, inputs, rec)
    array = guards.array_in_result(result, rec)
    if array is not None:
        raise CompileError(f"tinygen.compile: the step returns {array}; a replay puts new arrays into the step's "
                           f"tensors, so the result would hold the recorded call's. Return the tensor (loss.detach(), "
                           f"p.grad) and take its array after the call")
    rec.python_changes()  # after the last recorded call
    changed = guards.settings_set(rec.settings, rec.created) or rec.python_changed()
    moved = _written_back(copies, caller, slots)  # the step changed its arguments' containers: the caller's get it too
    changed = changed or moved
    if changed is not None:  # Python state the step changed (a module attribute, a list): a replay would not
        return changed, handed(result, roles, caller, own=_itself)  # (an eager call's, graphs kept)
    with_graph = _graphs_returned(rec, result) if STATE.grad_enabled else ()  # a backward after the call uses
    if with_graph and passes.engine_walks((s[0], s[1:]) for s in rec.steps):  # (its nodes are made anew on a replay)
        return GRAPH, handed(result, roles, caller, own=_itself)
    program = Program(rec, inputs, result, STATE.grad_enabled, fuse, graphs, with_graph)
    program.roles = roles
    after = guards.places(fn, args, kwargs)  # the step may have set attributes
    program.bindings, program.callees = guards.bindings(after, rec.leaves.keys() | rec.modules.keys(),
                                                        guards.recorded_objects(rec))
    program.read_anew = guards.read_anew(rec)  # lists whose items are data, not settings (PythonValues.learn)
    if program.handoff is not None:  # the recorded call's graph holds its intermediates themselves: kept
        return program, program.handoff.hand(result, roles, caller)
    handed_back = handed(result, roles, caller)  # (before the releases: the program's arrays)
    for run, operands in program.steps:  # the recorded call's intermediates go as a replay's do
        if run is replay_release:
            run(*operands)
    return program, handed_back


def _graphs_returned(rec, result):
    """The tensors of the step's result whose graph reaches a leaf (a parameter) along nodes none of its backwards
    went through (a compiled model's forward with grad on; a discriminator's step that returns the generator's
    images): a backward after the call delivers gradients along it. ``loss * w`` after ``loss.backward()`` reaches
    only the nodes that backward released."""
    found = []
    for t in tensors_in(result):
        todo, seen = [t.grad_fn] if t.grad_fn is not None else [], set()
        while todo:
            node = todo.pop()
            if id(node) in seen or id(node) in rec.walked:
                continue
            seen.add(id(node))
            if any(edge is not None and not isinstance(edge[0], Function) for edge in node.next_edges or ()):
                found.append(t)
                break
            todo.extend(edge[0] for edge in node.next_edges or () if edge is not None)
    return tuple(found)


def _refuse_tensor_hooks(roots):
    if engine.has_tensor_hooks(tensors_in(roots)):
        raise CompileError(f"tinygen.compile: the step's backward at {user_frame()} reaches a tensor with a gradient "
                           f"hook (register_hook) or a retained gradient (retain_grad); a replay would not run them. "
                           f"Look at one backward without compiling the step, or remove them from it")


def _nodes_of(roots):
    """The ids of the nodes of the graph behind ``roots`` (a tensor or tensors)."""
    return {id(node) for node in engine._toposort([t.grad_fn for t in tensors_in(roots) if t.grad_fn is not None])}


class Program:
    """One recorded signature's steps after the passes, its guards, and its replay."""

    def __init__(self, rec, inputs, result, grad_enabled, fuse, graphs=False, with_graph=()):
        keep = {id(t) for t in tensors_in(result)}
        if fuse:
            rec.steps = passes.with_activations(rec.steps, keep)
            rec.steps = passes.reused_forwards(rec.steps, inputs, keep)
        self.steps = passes.with_releases([(s[0], s[1:]) for s in rec.steps], inputs, keep, with_graph)
        self.steps, self.left_out = passes.without_dead_gradients(self.steps)
        self.steps = passes.with_early_drops(self.steps)
        if fuse:
            self.steps = fusion.fused_steps(self.steps, rec.elementwise, keep, fuse == "approx")
            self.steps = passes.fused_backwards(self.steps, rec, fuse == "approx")
            self.steps = passes.with_gradients_in_place(self.steps)
        self.inputs = inputs
        # (the argument's index, the node of its gate) of each argument that requires grad
        self.input_gates = tuple((i, t.grad_fn) for i, t in enumerate(inputs) if t.grad_fn is not None)
        self.result = result
        # each module's mode when the step first called it, and its count of changes when the step ended: a
        # parameter, submodule or setting (a dropout's p) replaced since then is not what the program uses
        self.modules = tuple((m, training, m.__dict__.get("_changes", 0)) for m, training in rec.modules.values())
        self.held = tuple((obj, contents) for _, _, obj, contents in guards.held(m for m, _ in rec.modules.values()))
        self.masks = tuple(rec.mask_guards)  # host data whose values decided a shape: they must stay the same
        ins = {id(t) for t in inputs}  # the signature covers the inputs (released between calls)
        self.leaves = tuple(leaf for key, leaf in rec.leaves.items() if key not in ins)
        self.grad_enabled = grad_enabled
        self.bindings = self.callees = ()  # (set by ``record``: guards.bindings)
        self.roles = {}  # (set by ``record``: _roles)
        self.read_anew = {}  # (set by ``record``: guards.read_anew)
        # for explain(), while the recorded call's tensors still hold their arrays
        self.signature_text = ", ".join(tensor_text(t) for t in inputs) or "no tensor arguments"
        self.step_texts = [described(run, operands) for run, operands in self.steps]
        on_gpu = any(cuda_graph.is_cupy(t.data) for t in itertools.chain(inputs, (leaf[0] for leaf in self.leaves)))
        # a result with a graph for a backward after the call: its replays hand it on through a Gate node (its
        # kernels launched one by one: the graph's nodes take the arrays each forward makes)
        self.handoff = HandedGraph(with_graph) if with_graph else None
        self.spare = None  # (a HandedGraph program's) the next program of its signature: Compiled._on_spare
        graphs = graphs and self.handoff is None
        self.graphed = cuda_graph.GraphedSteps(self.steps, inputs) if graphs and on_gpu else None

    def guards_hold(self):
        for module, training, changes in self.modules:
            if module.training is not training or module.__dict__.get("_changes", 0) != changes:
                return False
        for obj, contents in self.held:  # what the modules hold (a config object): as when recorded
            if guards.contents_of(obj) != contents:
                return False
        for data, values in self.masks:
            if not np.array_equal(data, values):
                return False
        for tensor, requires_grad, shape, dtype in self.leaves:  # a parameter made float64 or resized: anew
            d = tensor.data
            if tensor._requires_grad is not requires_grad or d.shape != shape or (
                    d.dtype is not dtype and d.dtype != dtype):  # NumPy's dtypes are shared: "is" is the fast test
                return False
        if self.callees and guards.stale(self.callees) is not None:  # opt = SGD(...) after Adam: record anew
            return False
        return self.left_out.isdisjoint(engine._post_accumulate_hooks)

    def stale(self):
        """None, or where one of the places the step found its tensors holds another tensor now (guards.py)."""
        return guards.stale(self.bindings)

    def replay(self, tensors):
        """One replay on the call's tensor arguments (``tensors_in(args, kwargs)``)."""
        for slot, new in zip(self.inputs, tensors):
            slot.data = new.data
        if self.input_gates:
            self._point_gates(tensors)
        try:
            for run, operands in self.steps:
                run(*operands)
        finally:
            STATE.grad_enabled = self.grad_enabled
        if self.handoff is not None:
            return self.handoff.hand(self.result, self.roles, tensors)
        return handed(self.result, self.roles, tensors)

    def _point_gates(self, tensors):
        for i, gate in self.input_gates:  # a backward through it goes on into this call's argument's graph
            gate.next_edges = (None,) + _edges((tensors[i],))

    def replay_graphed(self, tensors):
        """A replay through CUDA graphs (cuda_graph.py)."""
        if self.input_gates:
            self._point_gates(tensors)
        try:
            self.graphed.replay(tensors, run_steps)
        finally:
            STATE.grad_enabled = self.grad_enabled
        return handed(self.result, self.roles, tensors, self.graphed.own)


class HandedGraph:
    """A program whose result keeps a graph that a backward after the call goes through (``with_graph``: those
    tensors; a compiled model's forward with grad on). Each replay refills the program's nodes with what its
    forward saved, as eager makes new ones, and hands each of those tensors on through one new ``Gate`` node (an
    identity op), so a backward reaches the parameters through the nodes as the replay left them. The gate's
    backward raises when a later replay has refilled them since."""

    def __init__(self, with_graph):
        self.ids = {id(t) for t in with_graph}
        self.calls = 0
        self.last = self.last_gate = None  # the last call (a _HandedCall), a weak reference to its Gate node
        self.graph_built = False  # a create_graph backward went through: the compiled function goes eager

    def busy(self):
        """Whether the last call's result still awaits its backward, or is in it: a replay now would refill the
        nodes that backward needs, so the call goes to a spare program instead (``Compiled._on_spare``)."""
        gate = self.last_gate() if self.last_gate is not None else None
        return gate is not None and not self.last.done

    def hand(self, result, roles, tensors):
        """The call's result (``handed``), its tensors with a graph handed on through a new Gate node."""
        outs = list({id(t): t for t in tensors_in(result) if id(t) in self.ids}.values())  # (each once)
        self.calls += 1
        self.last = _HandedCall(self)
        new = Gate.apply(self.last.backward_entered, *outs)
        new = new if isinstance(new, tuple) else (new,)
        self.last_gate = weakref.ref(new[0].grad_fn)
        by_id = {id(t): n for t, n in zip(outs, new)}
        return handed(result, roles, tensors, lambda t: by_id[id(t)] if id(t) in by_id else _own(t))


class _HandedCall:
    """One call of a ``HandedGraph`` program: its number, and whether a backward through it has finished."""

    def __init__(self, handed):
        self.handed, self.call, self.done = handed, handed.calls, False

    def backward_entered(self):
        handed = self.handed
        if handed.calls != self.call:
            raise RuntimeError(f"tinygen.compile: a backward through the result of an earlier call of a compiled "
                               f"function, after {handed.calls - self.call} later call(s) replayed its forward: "
                               f"the values its graph saved are theirs now. Call backward (or autograd.grad) on "
                               f"a call's result before the next call that replays it")
        engine.queue_callback(self._finished)  # once the nodes behind the gate have run too
        if STATE.grad_enabled:  # create_graph: a gradient graph may keep the program's tensors past this call
            handed.graph_built = True

    def _finished(self):
        self.done = True


def _with_slots(value, slots):
    """``value`` with each tensor replaced by a new tensor on its array (the same one for the same tensor); one
    that requires grad, with grad on, by a Gate's output, whose node ``Program.replay`` points at each call's
    tensor."""
    def slot(t):
        if id(t) not in slots:
            slots[id(t)] = Gate.apply(_passes, t) if t._requires_grad and STATE.grad_enabled else \
                _make(t.data, t._device)
        return slots[id(t)]
    return map_tensors(value, slot)


def _passes():
    """What an argument's gate checks: nothing (the result's gate has checked the call)."""


def _copies(given, copy, where=None, found=None):
    """The containers of a call's arguments (``given``: (args, kwargs)) paired with the copies the step gets
    (``copy``: ``_with_slots`` made them, each tensor replaced by its slot): [(how to name it, the caller's, the
    copy, what the copy holds now: ``guards.contents_of``)]. Lists, dicts and dataclass instances; a tuple is
    looked into."""
    if found is None:  # the arguments, the keyword arguments
        found = []
        for i, (a, b) in enumerate(zip(given[0], copy[0])):
            _copies(a, b, f"argument {i}", found)
        for k, a in given[1].items():
            _copies(a, copy[1][k], f"keyword argument {k!r}", found)
        return found
    if isinstance(given, dict):
        inside = [(f"item {k!r} of {where}", v, copy[k]) for k, v in given.items()]
    elif isinstance(given, (list, tuple)):
        inside = [(f"item {i} of {where}", v, w) for i, (v, w) in enumerate(zip(given, copy))]
    elif is_dataclass_instance(given):
        inside = [(f"the attribute {n!r} of {where}", v, getattr(copy, n)) for n, v in dataclass_items(given)]
    else:
        return found
    if not isinstance(given, tuple):
        found.append((where, given, copy, guards.contents_of(copy)))
    for inner_where, inner, inner_copy in inside:
        _copies(inner, inner_copy, inner_where, found)
    return found


def _written_back(copies, caller, slots):
    """Put into each of the caller's containers what the step left in its copy (the slots mapped back to the
    caller's tensors, ``caller``; a copy back to the caller's container), as an eager call leaves them: a step that
    changes its arguments (``metrics["loss"] = loss``, ``batch.seen += 1``) is Python a replay would not run again.
    Returns how to name the first one changed, else None."""
    first = back = None
    for where, original, copy, held in copies:
        if guards.contents_of(copy) == held:
            continue
        if back is None:  # (once, and only when the step changed one)
            first = f"the contents of {where}"
            back = {id(slots[id(t)]): t for t in caller}
            back.update((id(copy), original) for _, original, copy, _ in copies)
        if isinstance(original, dict):
            original.clear()
            original.update((k, back.get(id(v), v)) for k, v in copy.items())
        elif isinstance(original, list):
            original[:] = [back.get(id(v), v) for v in copy]
        else:  # a dataclass instance (a frozen one too)
            for name, v in vars(copy).items() if hasattr(copy, "__dict__") else dataclass_items(copy):
                object.__setattr__(original, name, back.get(id(v), v))
    return first


def _new_tensors(tensors):
    """Of the tensors of a call's result (``tensors``, a list made for this), those nothing else refers to (the call
    made them; a module's buffer it returns lives elsewhere too): held once by the result, as a new object is by
    one variable, counted the same way (this list adds one reference to each tensor)."""
    probe = object()
    counts = [sys.getrefcount(x) for x in tensors + [probe]]
    return tuple(t for t, n in zip(tensors, counts) if n <= counts[-1] + 1)


def _roles(result, inputs, rec):
    """What the caller gets for each tensor of the step's result that the step did not make (``inputs``: the
    program's input tensors): id -> ("argument", i) for an input, the caller's i-th tensor argument; ("grad", leaf)
    for a .grad a backward of the step made, the leaf's .grad after the call (a replay makes it anew); ("itself", t)
    for any other (a parameter, a buffer), the tensor itself, as eager returns it; ("made", None) for one the step
    made that the result holds twice (``(loss, loss)``: one new tensor for both, as eager returns one)."""
    roles = {}
    places = {id(t): i for i, t in reversed(list(enumerate(inputs)))}
    found = tensors_in(result)
    for t in found:
        if id(t) in roles:
            continue
        if id(t) in places:
            roles[id(t)] = ("argument", places[id(t)])
        elif id(t) in rec.new_grads:
            leaf = rec.new_grads[id(t)][1]
            if leaf.grad is not t:
                raise CompileError(f"tinygen.compile: the step returns the .grad of a tensor of shape "
                                   f"{tuple(leaf.shape)} that its backward made and that the step then replaced or set "
                                   f"to None (zero_grad, a second backward); a replay makes gradients anew, so it "
                                   f"would return a stale one. Return the .grads the step leaves, or read them after "
                                   f"the call")
            roles[id(t)] = ("grad", leaf)
        elif id(t) not in rec.made:
            roles[id(t)] = ("itself", t)
    if len({id(t) for t in found}) < len(found):
        roles.update((id(t), ("made", None)) for t in found if id(t) not in roles)
    return roles


def _own(t):
    return _make(t.data, t._device)


def _itself(t):
    return t


def handed(result, roles, tensors, own=_own):
    """The step's result as the caller gets it (``roles``: ``_roles``; ``tensors``: the caller's tensor arguments):
    each tensor the step made as ``own(t)``, a new tensor without a graph on the array the call put in it (the
    recorded tensor is the program's, refilled by the next replay); the others as ``_roles`` says."""
    if not roles:
        return map_tensors(result, own)
    made = {}

    def given(t):
        kind, what = roles.get(id(t), ("made", None))
        if kind == "made":
            if id(t) not in made:  # one new tensor for a tensor the result holds twice
                made[id(t)] = own(t)
            return made[id(t)]
        return tensors[what] if kind == "argument" else what.grad if kind == "grad" else what
    return map_tensors(result, given)
