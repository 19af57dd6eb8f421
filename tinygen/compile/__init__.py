"""``tinygen.compile(fn)``: record a step once, replay it many times.

    step = tinygen.compile(train_step)     # train_step(x, y): forward, loss.backward(), opt.step(), zero_grad
    for x, y in loader:
        loss = step(x, y)                  # 1st call with these shapes: runs eagerly and records; then replays

Eight stages, on a three-line example ``loss = (x @ w).tanh().sum(); loss.backward(); opt.step()``:

  record   The first call with a given signature runs ``fn`` eagerly while ``CAPTURE.recorder`` (the one hook in
           the core, ``tinygen/capture.py``) is set. The program it writes down is a list of steps:
             forward(Matmul), forward(Tanh), forward(Sum)   every op called from fn: class, node, argument tensors
             backward(plan, loss)                           a plain backward: the steps the engine took
                                                            (``_BackwardPlan``: Sum's, Tanh's, Matmul's backward)
             call(Adam.step, opt)                           marked @replayed: optimizer steps, zero_grad, random
                                                            draws, gradient clipping, scheduler steps, in-place
                                                            writes (``t[i] = v``, ``nn.init``,
                                                            ``load_state_dict``, seeding)
           The engine tells the recorder which nodes it visited, in its order, and which ran (a ``trace``); the
           plan is those that ran, each with the registers its incoming gradients are summed in, where each
           gradient it returns goes (another node's register, or a leaf's ``.grad``) and the leaves whose
           post-accumulate-grad hooks are due after it. A backward with ``create_graph=True`` or ``inputs=``,
           ``grad()``, and a backward whose graph has nodes a create_graph call made (WGAN-GP's penalty: that
           graph is built anew on every replay, so no recorded plan can name its nodes) are recorded as calls:
           the engine runs them again, walking the graph, on every replay.
  guard    A signature (shapes, dtypes, devices and requires_grad of the tensor arguments, the other arguments,
           the grad mode) picks a program; before a replay its guards are checked: the train/eval mode of every
           module the step called, its count of changes (a parameter, submodule or setting replaced) and the
           requires_grad, shape and dtype of every leaf tensor it used (as before the step changed them:
           ``requires_grad_`` inside the step is recorded and replayed, as is ``p.grad = None``). A change records
           anew.
  release  After the last use of each intermediate (an op's output, a detached copy, a random draw, the
           program's own copy of an input tensor) the program gets a release step, so a replay holds no more
           memory than eager: between calls only what eager keeps too. A backward uses what its graph's nodes
           saved; a replayed node saves them as shadows (new tensors on the same arrays), so the arrays go when
           the backward releases the node, as in eager.
  prune    A gradient that a plain backward delivers to a leaf and the step then drops unread (``zero_grad()``
           before anything reads it: in a GAN step, the discriminator's weight gradients from the generator's
           backward) is left out of the plan, with the products that only it needed (``_without_dead_gradients``).
           What may read a gradient is known from ``@replayed(grads=...)``; anything else keeps it.
  reuse    A forward of an op that declares ``reusable_forward`` (Linear, convolutions, reshape) on the same arguments
           as an earlier forward of that op, with nothing in between that may change their arrays (an op's
           ``forward_writes``, a call's ``@replayed(writes=...)``: an optimizer step changes its parameters), is
           left out: the earlier one's outputs and node state serve the later node (``_reused_forwards``). A
           GAN's discriminator on the fakes, then on their detached copy after the generator's update.
  fuse     Runs of 3 or more consecutive elementwise forwards (ops that declare ``elementwise``, of one shape and
           dtype, operands of that shape or scalars) become one step, a generated Numba loop (NumPy arrays) or
           CuPy elementwise kernel (GPU arrays) that writes only what is used outside the run and leaves each
           node as its forward would (``compile/fusion.py``); a sum over every axis of its last value may end
           it (NumPy's order on NumPy arrays; a reduction kernel on the GPU). ``fuse=True`` (the default)
           takes + - * /, neg, abs and sqrt: NumPy's (CuPy's) bits. ``fuse="approx"`` takes exp, log, tanh,
           sin and cos too: within 3 ulps of NumPy's per call. A plain backward's runs of 3 or more such nodes
           (ops that declare ``elementwise_backward``, gradients passed between them, none to a leaf) become one
           loop or kernel too (``FusedBackward``). A Linear followed by a ReLU or LeakyReLU op on its output
           (``F.relu(fc(x))``) runs as one ``LinearActFunction`` node, as in ``nn.Sequential``, where that gives
           the same bits (``_with_activations``). ``fuse=False``: nothing is fused or reused; NumPy arrays
           without Numba: no run is.
  replay   Each step runs on the same tensor objects as when it was recorded: an op's ``forward`` is called
           with the node (``ctx``) it had, and its output arrays are put into the recorded output tensors. No
           graph is built, and a plain backward walks none: it runs its plan on arrays (``_run_plan``): each
           node's ``array_backward`` (else its ``backward`` under no_grad), on the saved arrays the replayed
           forwards have just refreshed; each gradient fitted to its input's shape, summed into a register or
           delivered into ``.grad`` by the engine's own functions (so set_to_none, accumulation into an existing
           ``.grad`` and the copy of a shared array happen as in eager); the node released unless
           ``retain_graph``; post-accumulate-grad hooks (DistributedDataParallel's all-reduces) and the
           functions they queue run where the engine runs them, with the hooks registered at that moment.
           Parameters, optimizer state and buffers are the very arrays the model holds, updated
           in place, so ``state_dict``, checkpoints and eager calls in between stay correct. Random draws are
           drawn again from tinygen's generators: the same stream as eager.
  graph    On CuPy (``cuda_graph=True``; by default the setting TINYGEN_CUDA_GRAPHS, on), the first replay
           captures the device work between the step's host calls (an Adam counting steps in Python; zero_grad,
           SGD and ``Adam(capturable=True)`` steps and CuPy's draws join the graphs) as CUDA graphs, and later
           replays launch them: a few launches instead of one Python call per kernel (``compile/cuda_graph.py``).
           Guards on the arrays the graphs read; what cannot be captured replays as above
           (``Compiled.graph_error`` says why; a RuntimeWarning the first time). Within float32 rounding of the
           plain replay (cuBLAS, called directly inside a graph, may choose other kernels than CuPy's ``matmul``).

A replay runs exactly the ops the recorded call ran, in the same order, so it gives the same bits as eager
(a fused run too: the same operations per element, each rounded as NumPy rounds it; not under ``fuse="approx"``).
The intermediates of a compiled step are released when the step no longer needs them: a tensor the step keeps
elsewhere (``self.last = h``) raises when used after the call; return it from the step instead.

What cannot be captured is refused at record time with ``CompileError`` naming the line: reading a tensor's value
into Python inside the step (``.item()``, ``float(t)``, ``bool(t)`` / branching on a value, ``.numpy()``,
``.tolist()``), indexing with a boolean mask that may change, using a ``.grad`` the step's own backward made, and
tensor arguments that require grad. Return tensors from the step and read them after the call. Array code on
``tensor.data`` and Python values that change between calls are not seen by the recorder and are replayed as they
were: write the step with tinygen ops, modules and optimizers.

``Compiled.explain()`` lists each recorded program one line a step, as a replay runs them (fused runs, backward
plans, recorded calls, releases; on CuPy the CUDA graph or host of each step); ``explain(sources=True)`` adds the
code generated for each fused run.

``compile(fn, check=N)`` (``check=True``: N = 3) runs the first N replays side by side with eager (from the same
state and random stream) and raises ``CompileError`` on the first array that differs (not with
``fuse="approx"``: refused). Each compiled function keeps at most ``cache_size`` programs (8 by default), the least
recently used one is dropped first; the first time one is dropped a RuntimeWarning says what changed between the
last two signatures (a Python number that changes on every call makes a new program each time: pass a 0-d tensor).
"""
import copy
import functools
import itertools
import sys
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator

import numpy as np

from .. import config, random as _random
from ..backend import is_device_array, to_device
from ..autograd import engine
from ..autograd.engine import _backward, _grad, _roots
from ..autograd.function import Function, _edges, result_array, user_frame
from ..autograd.grad_mode import STATE
from ..capture import CAPTURE, gradient_use, replayed, tensors_written
from ..tensor import Tensor, _make
from . import cuda_graph as _cuda_graph, fusion as _fusion

_new = object.__new__


CHECK_CALLS = 3  # replays compared with eager under check=True


class CompileError(RuntimeError):
    """A step that tinygen.compile cannot record or whose replay disagreed with eager (``check=``)."""


def compile(fn=None, *, check=0, cache_size=8, fuse=True, cuda_graph=None):
    """Compile ``fn`` (a training step or any function of tensors): see the module docstring."""
    if fn is None:
        return lambda f: compile(f, check=check, cache_size=cache_size, fuse=fuse, cuda_graph=cuda_graph)
    if not callable(fn):
        raise TypeError(f"tinygen.compile: expected a function, got {type(fn).__name__}")
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"tinygen.compile: cache_size must be a positive integer, got {cache_size!r}")
    if isinstance(check, bool):  # check=True: the first CHECK_CALLS replays
        check = CHECK_CALLS if check else 0
    if not isinstance(check, int) or check < 0:
        raise ValueError(f"tinygen.compile: check must be True/False or a number of calls >= 0, got {check!r}")
    if fuse is not True and fuse is not False and fuse != "approx":
        raise ValueError(f"tinygen.compile: fuse must be True, False or 'approx', got {fuse!r}")
    if check and fuse == "approx":
        raise ValueError("tinygen.compile: check compares replays with eager bit for bit, which fuse='approx' does "
                         "not give (exp, log, ... differ by a few ulps); use check with fuse=True or False")
    if cuda_graph is not None and not isinstance(cuda_graph, bool):
        raise TypeError(f"tinygen.compile: cuda_graph must be True, False or None (the setting TINYGEN_CUDA_GRAPHS), "
                        f"got {cuda_graph!r}")
    return Compiled(fn, check, cache_size, fuse, cuda_graph)


class Compiled:
    """The callable ``tinygen.compile`` returns. ``records`` and ``replays`` count what its calls did,
    ``graph_replays`` the replays that launched CUDA graphs; ``graph_error`` says why a program on CuPy replays
    without them (None while they work)."""

    def __init__(self, fn, check, cache_size, fuse=True, cuda_graph=None):
        functools.update_wrapper(self, fn)
        self.fn, self.cache_size, self._checks_left, self.fuse = fn, cache_size, check, fuse
        self.cuda_graph = cuda_graph
        self._programs = OrderedDict()
        self.records = self.replays = self.graph_replays = 0
        self.graph_error = None
        self._warned_full = False

    def __call__(self, *args, **kwargs):
        if STATE.anomaly or CAPTURE.recorder is not None:  # anomaly checks, or a compiled call inside a recording
            return self.fn(*args, **kwargs)
        key = _signature(args, kwargs)
        program = self._programs.get(key)
        if program is not None and program.guards_hold():
            self._programs.move_to_end(key)
            self.replays += 1
            if self._checks_left:
                self._checks_left -= 1
                return _checked(self.fn, program, args, kwargs)
            graphed = program.graphed
            if graphed is not None and graphed.usable:
                result = program.replay_graphed(args, kwargs)
                self.graph_replays += graphed.live
                if graphed.error is not None and self.graph_error is None:  # once: the step goes on without graphs
                    warnings.warn(f"tinygen.compile: {self.__name__} replays without CUDA graphs from now on: "
                                  f"{graphed.error}", RuntimeWarning, stacklevel=2)
                self.graph_error = graphed.error
                return result
            return program.replay(args, kwargs)
        graphs = config.get("TINYGEN_CUDA_GRAPHS") if self.cuda_graph is None else self.cuda_graph
        program, result = _record(self.fn, args, kwargs, self.fuse, graphs)
        result = _fresh(result)  # the recorded tensors are the program's: the caller gets its own
        self.records += 1
        last = next(reversed(self._programs), None)  # the signature used most recently before this one
        self._programs[key] = program
        self._programs.move_to_end(key)
        while len(self._programs) > self.cache_size:
            self._programs.popitem(last=False)
            if not self._warned_full:  # once: a step whose signature keeps changing never replays
                self._warned_full = True
                change, number = _what_changed(last, key)
                advice = "pass a number that changes between calls as a 0-d tensor" if number else "raise cache_size"
                warnings.warn(f"tinygen.compile: {self.__name__} has recorded {self.records} programs and keeps "
                              f"{self.cache_size} (cache_size), so each new signature records again, as slow as "
                              f"eager or slower. {change}: {advice}", RuntimeWarning, stacklevel=2)
        return result

    def reset(self):
        """Forget every recorded program (the next call records again)."""
        self._programs.clear()

    def explain(self, sources=False):
        """The recorded programs as text, one line a step in the order a replay runs them: the ops' forwards,
        fused runs (with ``sources=True``, each followed by its generated Numba loop or CUDA code; a backward's
        fused runs too), backward plans, recorded calls and releases (shapes as recorded); on CuPy, which CUDA
        graph takes each step."""
        lines = [f"{self.__name__}: {len(self._programs)} program(s), {self.records} recorded, {self.replays} "
                 f"replayed, {self.graph_replays} with CUDA graphs"]
        for i, program in enumerate(self._programs.values(), 1):
            dead = f", {_count(len(program.left_out), 'gradient')} nothing reads left out" if program.left_out else ""
            lines.append(f"program {i}: {program.signature_text}; {len(program.steps)} steps{dead}")
            where = {}  # id(step) -> its CUDA graph ("graph 1", ...) or "host"
            if program.graphed is not None:
                segments = 0
                for kind, item in program.graphed.items:
                    if kind == "host":
                        where[id(item)] = "host"
                    else:
                        segments += 1
                        where.update((id(step), f"graph {segments}") for step in item.steps)
            for j, (step, text) in enumerate(zip(program.steps, program.step_texts), 1):
                column = f"{where.get(id(step), ''):9s}" if where else ""
                lines.append(f"  {j:4d}  {column}{text}")
                indent = " " * (18 + len(column))
                if sources and isinstance(step[0], _fusion.FusedRun):
                    lines.extend(indent + line for line in step[0].source.splitlines())
                if sources and step[0] is _replay_backward:  # its fused runs' code, each under its name
                    for fused in (s[0] for s in step[1][0].steps if s[1] is _fusion.FUSED):
                        lines.append(indent + fused.name() + ":")
                        lines.extend(indent + line for line in fused.listing().splitlines())
        return "\n".join(lines)


# ---- recording -----------------------------------------------------------------------------------------------------
class _Recorder:
    """Set as ``CAPTURE.recorder`` while a step runs for the first time; the core's hooks call it."""

    def __init__(self, inputs):
        self.depth = 0  # recorded calls in progress: what runs inside them is not recorded again
        self.steps = []
        self.modules = {}
        self.leaves = {}
        self.made = set()  # ids of the tensors the step made: they need no guard
        self.nodes = set()  # ids of the recorded ops' nodes: a replay reuses them
        self.relink = False  # after a call that builds a graph, ops re-read their inputs' nodes on replay
        self.elementwise = {}  # id(output) -> what the fusion pass needs to know of an elementwise op
        self.new_grads = {}  # id -> each .grad tensor a backward of the step made (held: its id stays its own)
        self.inputs = {id(t) for t in inputs}  # the program's input tensors

    def record_apply(self, cls, args):
        self.refuse_new_grads(args)
        self.depth += 1
        try:
            out = cls.apply(*args)
        finally:
            self.depth -= 1
        outs = out if isinstance(out, tuple) else (out,)
        ctx = next((t.grad_fn for t in outs if t.grad_fn is not None), None)
        device = None
        for a in args:
            if isinstance(a, Tensor):
                device = device or a._device
                if a.grad_fn is None and id(a) not in self.made:  # guard: its flag when first used or changed
                    self.leaves.setdefault(id(a), (a, a._requires_grad, a.data.shape, a.data.dtype))
        self.made.update(id(t) for t in outs)
        if ctx is not None:
            self.nodes.add(id(ctx))
        fusable = _fusion.note(cls, ctx, args, out)
        if fusable is not None:
            self.elementwise[id(out)] = fusable
        self.steps.append((_replay_forward, cls, ctx, device, args, outs, self.relink and ctx is not None, None))
        return out

    def record_call(self, fn, args, kwargs, builds_graph=False):
        args = tuple(_kept(a) for a in args)
        kwargs = {k: _kept(v) for k, v in kwargs.items()}
        self.refuse_new_grads(args, kwargs)
        self.depth += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            self.depth -= 1
        new = _new_tensors(_tensors_in(result))  # before anything else refers to the result
        self.steps.append((_replay_call, fn, args, kwargs, result, STATE.grad_enabled, new))
        self.made.update(id(t) for t in _tensors_in(result))
        self.relink = self.relink or builds_graph
        return result

    def record_backward(self, tensors, grad_tensors, retain_graph, create_graph, inputs):
        """A plain backward is recorded as the steps the engine took (``_BackwardPlan``); one that builds a graph,
        or one whose graph has nodes a replay makes anew (made by a create_graph call), as a call to the engine."""
        before = {key: leaf[0].grad for key, leaf in self.leaves.items()}
        if create_graph or inputs is not None:
            self.record_call(_backward, (tensors, grad_tensors, retain_graph, create_graph, inputs), {},
                             builds_graph=create_graph)
        else:
            args = (_kept(tensors), _kept(grad_tensors), retain_graph, False, None)
            trace = []
            self.depth += 1
            try:
                _backward(*args, trace=trace)
            finally:
                self.depth -= 1
            if all(id(node) in self.nodes for node, _ in trace):
                self.steps.append((_replay_backward, _BackwardPlan(args[0], trace, retain_graph), args))
            else:
                self.steps.append((_replay_call, _backward, args, {}, None, STATE.grad_enabled, ()))
        # a .grad this backward made is a new tensor on every replay: the step's own code must not hold this one
        self.new_grads.update((id(t.grad), t.grad) for key, (t, *_) in self.leaves.items()
                              if t.grad is not None and t.grad is not before.get(key))

    def refuse_new_grads(self, *values):
        """Raise if the step passes on a .grad tensor one of its backwards made (read from a leaf in Python, which
        the recording cannot see: a replay would pass this call's stale tensor)."""
        if self.new_grads:
            for t in _tensors_in(*values):
                if id(t) in self.new_grads:
                    raise CompileError(
                        f"tinygen.compile: the step uses the .grad of a tensor of shape {tuple(t.shape)} that its own "
                        f"backward made, at {user_frame()}. A replay makes that gradient anew, so the step would "
                        f"use a stale one: read gradients after the call (return what you need from the step), or "
                        f"call a replayed utility that takes the parameters (clip_grad_norm_)")

    def record_requires_grad(self, tensor, flag):
        if id(tensor) not in self.made:
            self.leaves.setdefault(id(tensor), (tensor, tensor._requires_grad, tensor.data.shape, tensor.data.dtype))
        self.steps.append((_replay_requires_grad, tensor, flag))

    def record_grad_set(self, tensor, value):
        """``tensor.grad = value`` in the step's code, recorded as a call: None, or a tensor the step did not make (a
        replay sets the same one; a tensor the step computes would be a stale one, so it is refused)."""
        if isinstance(value, Tensor) and self.varies(value):
            raise CompileError(f"tinygen.compile: the step sets a .grad to a tensor it computes or takes as an "
                               f"argument, at {user_frame()}. A replay would set a stale one: set .grad to None (or "
                               f"call zero_grad) in the step, or set it outside the call")
        self.record_call(_set_grad, (tensor, value), {})

    def record_alias(self, src, dst):
        self.refuse_new_grads(src)
        self.made.add(id(dst))
        self.steps.append((_replay_alias, src, dst))

    def varies(self, tensor):
        """Whether ``tensor`` may hold other values on a replay: an input, or made by the step."""
        return id(tensor) in self.made or id(tensor) in self.inputs

    def note_module(self, module):
        if id(module) not in self.modules:  # its mode as the step found it, before it changed anything
            self.modules[id(module)] = (module, module.training)

    def refuse(self, tensor, what):
        raise CompileError(f"tinygen.compile: the step reads a tensor's value into Python ({what}) at "
                           f"{user_frame()}. A replay cannot repeat a decision taken on a value: return the tensor "
                           f"from the step and read it after the call, or call this function without compiling it")


def _kept(arg):
    """An argument as a recorded call keeps it: a generator (``model.parameters()``) as a tuple of its items, as
    it would be empty on the second call."""
    return tuple(arg) if isinstance(arg, Iterator) else arg


def _record(fn, args, kwargs, fuse, cuda_graph=False):
    for i, t in enumerate(_tensors_in(args, kwargs)):
        if t._requires_grad:
            raise CompileError(f"tinygen.compile: tensor argument {i} (shape {t.shape}) requires grad; pass "
                               f"parameters through the modules the step uses, not as arguments")
    # the program's own input tensors (on the caller's arrays): a replay puts new arrays into them, never into
    # the caller's tensors
    slots = {}
    args, kwargs = _with_slots(args, slots), _with_slots(kwargs, slots)
    rec = _Recorder(_tensors_in(args, kwargs))
    CAPTURE.recorder = rec
    try:
        result = fn(*args, **kwargs)
    finally:
        CAPTURE.recorder = None
    program = _Program(rec, _tensors_in(args, kwargs), result, STATE.grad_enabled, fuse, cuda_graph)
    for run, operands in program.steps:  # the recorded call's intermediates go as a replay's do
        if run is _replay_release:
            run(*operands)
    return program, result


class _Program:
    def __init__(self, rec, inputs, result, grad_enabled, fuse, cuda_graph=False):
        keep = {id(t) for t in _tensors_in(result)}
        if fuse:
            rec.steps = _with_activations(rec.steps, keep)
            rec.steps = _reused_forwards(rec.steps, inputs, keep)
        self.steps = _with_releases([(s[0], s[1:]) for s in rec.steps], inputs, keep)
        self.steps, self.left_out = _without_dead_gradients(self.steps)
        if fuse:
            self.steps = _fusion.fused_steps(self.steps, rec.elementwise, keep, fuse == "approx", _PROGRAM_KINDS)
            self.steps = _fused_backwards(self.steps, rec, fuse == "approx")
        self.inputs = inputs
        self.result = result
        # each module's mode when the step first called it, and its count of changes when the step ended: a
        # parameter, submodule or setting (a dropout's p) replaced since then is not what the program uses
        self.modules = tuple((m, training, m.__dict__.get("_changes", 0)) for m, training in rec.modules.values())
        ins = {id(t) for t in inputs}  # the signature covers the inputs (released between calls)
        self.leaves = tuple(leaf for key, leaf in rec.leaves.items() if key not in ins)
        self.grad_enabled = grad_enabled
        # for explain(), while the recorded call's tensors still hold their arrays
        self.signature_text = ", ".join(_tensor_text(t) for t in inputs) or "no tensor arguments"
        self.step_texts = [_described(run, operands) for run, operands in self.steps]
        on_gpu = any(_cuda_graph.is_cupy(t.data) for t in itertools.chain(inputs, (leaf[0] for leaf in self.leaves)))
        self.graphed = _cuda_graph.GraphedSteps(self.steps, inputs, _GRAPH_KINDS) if cuda_graph and on_gpu else None

    def guards_hold(self):
        for module, training, changes in self.modules:
            if module.training is not training or module.__dict__.get("_changes", 0) != changes:
                return False
        for tensor, requires_grad, shape, dtype in self.leaves:  # a parameter made float64 or resized: anew
            d = tensor.data
            if tensor._requires_grad is not requires_grad or d.shape != shape or (
                    d.dtype is not dtype and d.dtype != dtype):  # NumPy's dtypes are shared: "is" is the fast test
                return False
        return self.left_out.isdisjoint(engine._post_accumulate_hooks)

    def replay(self, args, kwargs):
        for slot, new in zip(self.inputs, _tensors_in(args, kwargs)):
            slot.data = new.data
        try:
            for run, operands in self.steps:
                run(*operands)
        finally:
            STATE.grad_enabled = self.grad_enabled
        return _fresh(self.result)

    def replay_graphed(self, args, kwargs):
        """A replay through CUDA graphs (cuda_graph.py)."""
        try:
            self.graphed.replay(_tensors_in(args, kwargs), _run_steps)
        finally:
            STATE.grad_enabled = self.grad_enabled
        return self.graphed.result(self.result)


def _engine_walks(steps):
    """Whether a program's steps (``(run, operands)`` pairs) have a backward the engine walks (create_graph,
    ``grad()``) or ops that re-read their inputs' nodes after one: its nodes must stay the recorded ones, and the
    graph such a backward walks is not the recording's to see."""
    return any((run is _replay_call and operands[0] in (_backward, _grad)) or (run is _replay_forward and operands[5])
               for run, operands in steps)


def _with_activations(steps, keep):
    """The recorded steps (``_Recorder.steps``) with each op that declares ``with_activation`` (``Linear``)
    followed by an activation op on its output (one that declares ``activation``: ReLU, LeakyReLU) as one node of
    the fused op (``LinearActFunction``), where the op says that gives the same bits, the output between them is
    used by nothing else, and, with a gradient, both nodes run in one plain backward that releases them: the fused
    forward at the op's place, its backward at the op's node's place in the plan (the activation's node only passed
    its gradient on to it), the nodes that take the activation's output pointed at the fused node. A step written
    with ``F.relu(fc(x))`` runs as ``nn.Sequential(fc, nn.ReLU())`` does."""
    forwards = [i for i, s in enumerate(steps) if s[0] is _replay_forward]
    if _engine_walks((s[0], s[1:]) for s in steps):
        return steps
    uses = Counter(key for s in steps for key in {id(t) for t in _tensors_in(*s[1:])})  # steps referring to each
    plans = [s[1] for s in steps if s[0] is _replay_backward]
    in_plans = Counter(id(step[0]) for plan in plans for step in plan.steps)
    out, dropped, relinked = list(steps), set(), {}
    for i in forwards:
        _, cls, ctx, device, args, outs, _, _ = steps[i]
        fuse = getattr(cls, "with_activation", None)
        h = outs[0]
        if fuse is None or len(outs) != 1 or id(h) in keep or uses[id(h)] != 2:
            continue
        j = next((k for k in forwards if k > i and any(a is h for a in steps[k][4])), None)  # the op that takes h
        if j is None:
            continue
        _, act_cls, act_ctx, _, act_args, act_outs, _, _ = steps[j]
        act = act_cls.__dict__.get("activation")
        if act is None or act_args[0] is not h or (ctx is None) is not (act_ctx is None):
            continue
        fused = fuse(args, act, act_args[1] if len(act_args) > 1 else 0.0)
        if fused is None:
            continue
        fused_cls, fused_args = fused
        extra = (None,) * (len(fused_args) - len(args))  # the fused op's arguments after the op's: no gradient
        node = None
        if ctx is not None:
            plan = next((p for p in plans if any(step[0] is ctx for step in p.steps)), None)
            if plan is None or not plan.release or in_plans[id(ctx)] != 1 or in_plans[id(act_ctx)] != 1:
                continue
            k_op = next(k for k, step in enumerate(plan.steps) if step[0] is ctx)
            k_act = next((k for k, step in enumerate(plan.steps) if step[0] is act_ctx), None)
            op_step, act_step = plan.steps[k_op], plan.steps[k_act] if k_act is not None else None
            # the activation's node: no hooks due after it, its one gradient to the register the op's node reads
            if act_step is None or act_step[5] or act_step[4][0] is None or act_step[4][0][1] is not None or \
                    any(t is not None for t in act_step[4][1:]) or op_step[2] != (act_step[4][0][0],):
                continue
            node = _new(fused_cls)
            node._saved, node._out_data, node.device = (), act_outs[0].data, ctx.device
            node.next_edges = ctx.next_edges + extra
            node.out_meta = act_ctx.out_meta
            fused_cls.forward(node, *fused_args)  # sets what its forward sets on it (a replay sets it again)
            plan.steps = tuple((node, node.array_backward, act_step[2], None, op_step[4] + extra, op_step[5])
                               if k == k_op else s for k, s in enumerate(plan.steps) if k != k_act)
            relinked[id(act_ctx)] = node
            act_outs[0].grad_fn = node
        out[i] = (_replay_forward, fused_cls, node, device, fused_args, act_outs, False, None)
        dropped.add(j)
    if relinked:  # the nodes that take the activation's output: their edge to it now leads to the fused node
        for i in forwards:
            ctx = out[i][2]
            if ctx is not None and i not in dropped and any(e is not None and id(e[0]) in relinked
                                                            for e in ctx.next_edges):
                ctx.next_edges = tuple(e if e is None or id(e[0]) not in relinked else (relinked[id(e[0])], e[1])
                                       for e in ctx.next_edges)
    return [s for k, s in enumerate(out) if k not in dropped]


def _reused_forwards(steps, inputs, keep=frozenset()):
    """The recorded steps without each forward of an op that declares ``reusable_forward`` (Linear, the
    convolutions, reshape) where an earlier forward of the same op ran on the same arguments and nothing has
    changed their arrays since: a GAN's discriminator on the generator's output in the generator's step, then on
    its detached copy in the discriminator's step (eager and PyTorch compute it twice). Right after the earlier forward,
    ``_same_result`` gives the later node and output tensors what it left on its own node and outputs: the same
    arrays, so the later node's backward runs as it would have. What may change an array between the two: an op's
    forward (the arguments its ``forward_writes`` names: batch norm's running statistics), a recorded call (what
    its ``@replayed(writes=...)`` names: an optimizer step changes its parameters; a call that does not say may
    change any array), a ``requires_grad_`` switch. Arguments count as the same tensor only if the step made them
    (a detached copy is its source), they are the program's inputs, or they are leaves that require grad; outputs
    anything changes in place are never shared, nor two that are both in the step's result (``keep``: ids), which
    the caller may change. Not with a backward the engine walks (create_graph, ``grad()``), whose graph the
    recording cannot see."""
    if _engine_walks((s[0], s[1:]) for s in steps):
        return steps
    source = {}  # id(detached copy) -> the tensor it was made from
    writes = {}  # index of a recorded call -> the tensors it says it may change (None: any)
    changed, known, made = set(), {id(t) for t in inputs}, set()  # changed: ids of the tensors a step writes in
    # place; known: of the tensors that hold one array through a replay
    for i, s in enumerate(steps):
        if s[0] is _replay_alias:
            source[id(s[2])] = source.get(id(s[1]), s[1])
        elif s[0] is _replay_forward:
            changed.update(id(source.get(id(t), t)) for k in s[1].forward_writes for t in _tensors_in(s[4][k]))
        elif s[0] is _replay_call:
            written = writes[i] = tensors_written(s[1], s[2], s[3])
            changed.update(id(source.get(id(t), t)) for t in (_tensors_in(s[2], s[3]) if written is None else written))
        for t in s[5] if s[0] is _replay_forward else s[6] if s[0] is _replay_call else ():
            made.add(id(t))
            if t.grad_fn is not None or not t._requires_grad:  # not a leaf made here (its node saves it unshadowed)
                known.add(id(t))
    same, version, calls = {}, Counter(), 0  # same: id of a reused output -> id of the earlier one

    def ident(t):
        key = id(source.get(id(t), t))
        return same.get(key, key)

    def arg_key(pos, a):
        if isinstance(a, Tensor):
            key, src = ident(a), source.get(id(a), a)
            if key not in known and (key in made or src.grad_fn is not None or not src._requires_grad):
                raise TypeError  # a tensor whose array may change unseen (a .grad, a constant): not compared
            return key, version[key], pos and a._requires_grad
        hash(a)  # an unhashable argument (a list, an array) is not compared
        return type(a), a

    first, reuses = {}, {}  # first: key -> index of the forward; reuses: its index -> the indices that reuse it
    for i, s in enumerate(steps):
        if s[0] is _replay_forward:
            cls, ctx, outs = s[1], s[2], s[5]
            key = None
            if cls.reusable_forward and not any(id(t) in changed for t in outs):  # an output is no copy
                try:
                    key = (cls, calls) + tuple(arg_key(k, a) for k, a in enumerate(s[4]))
                except TypeError:
                    pass
            j = first.get(key) if key is not None else None
            if j is not None and (ctx is None or steps[j][2] is not None) and len(outs) == len(steps[j][5]) and not (
                    any(id(t) in keep for t in outs) and any(id(t) in keep for t in steps[j][5])):
                reuses.setdefault(j, []).append(i)
                same.update((id(t), ident(e)) for t, e in zip(outs, steps[j][5]))
                continue
            if key is not None:
                first[key] = i
            for k in cls.forward_writes:
                version.update(ident(t) for t in _tensors_in(s[4][k]))
        elif s[0] is _replay_call:
            written = writes[i]
            if written is None:
                calls += 1  # it may change any array: nothing before it is compared with anything after
            else:
                version.update(ident(t) for t in written)
        elif s[0] is _replay_requires_grad:
            version[ident(s[1])] += 1
    if not reuses:
        return steps
    later = {i for js in reuses.values() for i in js}
    out = []
    for i, s in enumerate(steps):
        if i not in later:
            out.append(s)
            out.extend((_replay_call, _same_result, (s[2], steps[j][2], s[5], steps[j][5]), {}, steps[j][5], False,
                        steps[j][5]) for j in reuses.get(i, ()))
    return out


@replayed(grads=lambda *args: ("reads", ()), writes=lambda *args: (), graph_key=lambda *args: ())
def _same_result(ctx, twin, outs, twin_outs):
    """A forward left out by ``_reused_forwards``: its output tensors and node (``twin``) take what the same op on
    the same arrays has just left on its own (``outs``, ``ctx``). Returns those tensors, the call's result (so a
    CUDA graph takes it with the device work around it, as a forward: its launches set the arrays again)."""
    for t, o in zip(twin_outs, outs):
        t.data = o.data
    if twin is not None:
        twin._saved, twin._out_data = ctx._saved, ctx._out_data
        vars(twin).clear()
        vars(twin).update(vars(ctx))
    return twin_outs


def _fused_backwards(steps, rec, approx):
    """The steps with each plain backward's runs of elementwise nodes fused (``fusion.fused_plan_steps``), unless
    an op re-reads its inputs' nodes (after a create_graph call)."""
    forwards = {}  # id(node) -> (its op's note, its arguments, its output tensor)
    for step in rec.steps:
        if step[0] is _replay_forward:
            if step[6]:
                return steps
            note = rec.elementwise.get(id(step[5][0]))
            if note is not None and step[2] is not None:
                forwards[id(step[2])] = (note, step[4], step[5][0])
    out = []
    for run, operands in steps:
        if run is _replay_backward and forwards:
            plan = operands[0]
            fused = _fusion.fused_plan_steps(plan.steps, plan.roots, forwards, approx, _plan_step)
            if fused is not plan.steps:
                plan = copy.copy(plan)
                plan.steps = fused
                operands = (plan,) + operands[1:]
        out.append((run, operands))
    return tuple(out)


def _run_steps(steps):
    for run, operands in steps:
        run(*operands)


def _without_dead_gradients(steps):
    """The steps with the gradients nothing reads left out of their backward plans: a leaf's gradient that a
    plain backward delivers and the step then drops unread (``zero_grad()``, set to None). In a GAN step, the
    discriminator's weight gradients from the generator's backward: JAX's tracing never computes them. Between
    the backward and the drop, only calls that say which gradients they read (``@replayed(grads=...)``: other
    optimizers' steps and zero_grads, schedulers) and requires_grad switches may come; anything else may read the
    gradient, so it is kept. A replay leaves the same state as eager. Leaves with post-accumulate-grad hooks are
    kept (``guards_hold`` records anew if one gets a hook later), and so is everything when the step has a backward
    the engine walks (create_graph, ``grad()``): it may pass through any node. Returns (steps, the leaves left
    out)."""
    plans = [operands[0] for run, operands in steps if run is _replay_backward]
    if not plans or _engine_walks(steps):
        return steps, frozenset()
    shared = Counter(id(step[0]) for plan in plans for step in plan.steps)
    out, left_out = list(steps), set()
    for i, (run, operands) in enumerate(steps):
        if run is _replay_backward and operands[0].release:
            dead = _dropped_unread(operands[0], steps[i + 1:])
            if dead:
                out[i] = (run, (operands[0].without(dead, shared),) + operands[1:])
                left_out |= dead
    return tuple(out), frozenset(left_out)


def _dropped_unread(plan, later):
    """The ids of the leaves whose gradient from ``plan`` the steps ``later`` drop before anything may read it."""
    hooked = engine._post_accumulate_hooks
    open_ = {id(t) for t in plan.delivered() if id(t) not in hooked}
    dead = set()
    for run, operands in later:
        if not open_:
            break
        if run is _replay_release or run is _replay_requires_grad:
            continue
        said = gradient_use(*operands[:3]) if run is _replay_call else None
        if said is None:
            break
        kind, tensors = said
        touched = open_.intersection(id(t) for t in tensors)
        open_ -= touched
        if kind == "drops":
            dead |= touched
    return dead


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


def _with_releases(steps, inputs, keep):
    """The program's steps with a release after the last use of each intermediate, so that a replay holds no
    more memory than eager: the input tensors, ops' outputs, detached copies and the new tensors of recorded calls,
    not part of the result ``keep``; and the attributes of an op's node after the last backward through it.

    A replayed node saves intermediates as shadows (new tensors on the same arrays, ``_shadow``), so an array
    goes when the backward releases the node, as in eager; a backward call uses only what its graph's nodes keep
    otherwise. After a create_graph call (whose new nodes keep intermediates the recording cannot see) a backward
    uses every intermediate and node made before it. Returns a tuple of steps."""
    inputs = [t for t in inputs if id(t) not in keep]
    intermediates = {id(t): t for t in inputs}
    for run, operands in steps:
        made = operands[4] if run is _replay_forward else operands[1:] if run is _replay_alias else \
            operands[5] if run is _replay_call else ()
        for t in made:
            if id(t) not in keep:
                intermediates.setdefault(id(t), t)
    # a shadow of a leaf made in the step that requires grad would take its gradient: those are not shadowed
    shadowable = frozenset(k for k, t in intermediates.items() if t.grad_fn is not None or not t._requires_grad)
    unshadowable = set(intermediates) - shadowable
    last = {id(t): 0 for t in inputs}  # id -> the step after which it goes
    made, nodes, by_node, relinked, out = list(inputs), {}, {}, False, []
    for i, (run, operands) in enumerate(steps):
        uses, new, walked = (), (), ()
        if run is _replay_forward:
            operands = operands[:6] + (shadowable,)
            uses, new = _tensors_in(operands[3]), operands[4]  # with the tensors inside an index tuple
            relinked = relinked or operands[5]
            if operands[1] is not None:
                by_node[id(operands[1])] = operands
        elif run is _replay_alias:
            uses, new = operands[:1], operands[1:]
        elif run is _replay_backward or (run is _replay_call and operands[0] in (_backward, _grad)):
            if relinked:
                uses, walked = made, by_node
            else:
                walked, graph = _graph(_tensors_in(operands[1][0]), by_node, unshadowable)
                uses = _tensors_in(operands[1]) + graph  # the roots, their gradients, grad()'s inputs
        elif run is _replay_call:
            uses, new = _tensors_in(operands[1], operands[2]), operands[5]
        out.append((run, operands))
        for t in uses:
            if id(t) in intermediates:
                last[id(t)] = i
        for t in new:
            if id(t) in intermediates and id(t) not in last:
                last[id(t)] = i
                made.append(t)
        for key in walked:
            if key in by_node:
                nodes[key] = i
    after = {}
    for key, i in last.items():
        after.setdefault(i, ([], []))[0].append(intermediates[key])
    for key, i in nodes.items():
        after.setdefault(i, ([], []))[1].append(by_node[key][1])
    for i in sorted(after, reverse=True):
        out.insert(i + 1, (_replay_release, tuple(map(tuple, after[i]))))
    return tuple(out)


def _graph(roots, by_node, unshadowable):
    """The recorded nodes in the graph behind ``roots`` (ids), and the program's tensors they keep other than as
    shadows: tensors in a node's attributes, and the arguments and outputs of a node that may save an
    unshadowable one."""
    found, seen = [], set()
    todo = [t.grad_fn for t in roots if t.grad_fn is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.extend(_tensors_in(*getattr(node, "__dict__", {}).values()))
        operands = by_node.get(id(node))
        if operands is not None and any(id(t) in unshadowable for t in _tensors_in(operands[3], operands[4])):
            found.extend(_tensors_in(operands[3]))
            found.extend(operands[4])
        todo.extend(e[0] for e in getattr(node, "next_edges", ()) if e is not None and not isinstance(e[0], Tensor))
    return seen, found


def _shadow(t):
    """A new tensor on ``t``'s array, with its node: what a replayed node saves instead of the program's tensor."""
    return _make(t.data, t._device, t._requires_grad, t.grad_fn, t._out_idx)


# ---- replaying one step --------------------------------------------------------------------------------------------
def _replay_forward(cls, ctx, device, args, outs, relink, shadowable):
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
    _refill_node(ctx, cls.save_output, outs[0], ctx._saved, shadowable)


def _refill_node(ctx, save_output, out, saved, shadowable):
    """What a replayed forward leaves on its node: its output (``save_output``) and what it saved, the
    intermediates among them as shadows."""
    if save_output and ctx._out_data is not None:
        ctx._out_data = out.data
    if saved and shadowable:
        saved = tuple(_shadow(t) if isinstance(t, Tensor) and id(t) in shadowable else t for t in saved)
    ctx._saved = saved


class _BackwardPlan:
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
        return [n for step in self.steps for n in (step[0].nodes if step[1] is _fusion.FUSED else (step[0],))] + \
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


def _replay_backward(plan, args):
    if args[1] is None:  # scalar roots, as recorded
        root_grads = [xp.ones(shape, dtype=dtype) for shape, dtype, xp in plan.ones]
    else:
        root_grads = [g.data for g in _roots(args[0], args[1])[1]]
    engine.with_callbacks(_run_plan, plan, root_grads)


def _run_plan(plan, root_grads):
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
            if step[1] is _fusion.FUSED:  # a run of elementwise nodes as one loop (fusion.FusedBackward)
                step[0](regs, direct, release)
            else:
                _plan_step(step, regs, direct, release)
        for node in plan.dropped:
            node.release()
    finally:
        STATE.grad_enabled = prev
    engine.own_gradients(direct, {id(g) for g in root_grads})


def _plan_step(step, regs, direct, release):
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


def _added(a, b):
    """a + b as the engine sums two gradients (``Add``: a NumPy scalar becomes an array)."""
    return result_array(a + b, None, None)


def _replay_call(fn, args, kwargs, result, grad_enabled, new):
    STATE.grad_enabled = grad_enabled
    _bind(result, fn(*args, **kwargs))


@replayed(grads=lambda tensor, value: ("drops", (tensor,)) if value is None else None)
def _set_grad(tensor, value):
    tensor._grad = value


def _replay_alias(src, dst):
    dst.data = src.data


def _replay_requires_grad(tensor, flag):
    tensor._requires_grad = flag


def _replay_release(tensors, nodes):
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


# ---- signatures, inputs and results ------------------------------------------------------------------------------
def _sig(a):
    if isinstance(a, Tensor):
        return ("tensor", a.data.shape, a.data.dtype.str, a._device, a._requires_grad)
    if isinstance(a, (tuple, list)):
        return (type(a).__name__,) + tuple(_sig(x) for x in a)
    if isinstance(a, dict):
        return ("dict",) + tuple((k, _sig(v)) for k, v in a.items())
    try:
        hash(a)
    except TypeError:
        return ("object", id(a))
    return ("value", type(a).__name__, a)


def _signature(args, kwargs):
    return (STATE.grad_enabled, _sig(args), _sig(kwargs))


def _what_changed(old, new):
    """The first difference between two signatures (``_signature``), in words, and whether it is a number."""
    if old is None or old[0] != new[0]:
        return "The grad mode differs between the calls", False
    for kind, a, b in (("argument", old[1], new[1]), ("keyword argument", old[2], new[2])):
        if len(a) != len(b):
            return f"The number of {kind}s differs between the calls", False
        for i, (x, y) in enumerate(zip(a[1:], b[1:])):
            name = i
            if kind == "keyword argument":
                (name, x), (other, y) = x, y
                if name != other:
                    return "The keyword arguments differ between the calls", False
            if x != y:
                number = x[0] == y[0] == "value" and x[1] in ("int", "float") and y[1] in ("int", "float")
                return f"{kind.capitalize()} {name!r} was {_sig_text(x)}, then {_sig_text(y)}", number
    return "The signatures differ", False


def _sig_text(sig):
    if sig[0] == "tensor":
        return f"a tensor of shape {sig[1]}, dtype {np.dtype(sig[2]).name} on {sig[3]}" + (
            ", requiring grad" if sig[4] else "")
    if sig[0] == "value":
        return f"{sig[1]} {sig[2]!r}"
    if sig[0] == "object":
        return "an unhashable object (each new one is a new signature)"
    return f"a {sig[0]} of {len(sig) - 1}"


def _with_slots(value, slots):
    """``value`` with each tensor replaced by a new tensor on its array (the same one for the same tensor)."""
    if isinstance(value, Tensor):
        return slots.setdefault(id(value), _make(value.data, value._device))
    if isinstance(value, (tuple, list)):
        return type(value)(_with_slots(v, slots) for v in value)
    if isinstance(value, dict):
        return {k: _with_slots(v, slots) for k, v in value.items()}
    return value


def _tensors_in(*values):
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(_tensors_in(*v))
        elif isinstance(v, dict):
            out.extend(_tensors_in(*v.values()))
    return out


def _new_tensors(tensors):
    """Of the tensors of a call's result (``tensors``, a list made for this), those nothing else refers to (the call
    made them; a module's buffer it returns lives elsewhere too): held once by the result, as a new object is by
    one variable, counted the same way (this list adds one reference to each tensor)."""
    probe = object()
    counts = [sys.getrefcount(x) for x in tensors + [probe]]
    return tuple(t for t, n in zip(tensors, counts) if n <= counts[-1] + 1)


def _fresh(result):
    """The step's result with every tensor as a new tensor on the replayed array (no graph)."""
    if isinstance(result, Tensor):
        return _make(result.data, result._device)
    if isinstance(result, (tuple, list)):
        return type(result)(_fresh(r) for r in result)
    if isinstance(result, dict):
        return {k: _fresh(v) for k, v in result.items()}
    return result


def _tensor_text(t):
    return f"{tuple(t.data.shape)} {t.data.dtype} {t._device}"


def _count(n, what, many=None):
    return f"{n} {what if n == 1 else many or what + 's'}"


def _described(run, operands):
    """``_step_text``, or a plain line where a step of an unusual kind (a custom op's) cannot be described: a
    listing for reading is never a reason for a step to fail."""
    try:
        return _step_text(run, operands)
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{getattr(run, '__name__', type(run).__name__).strip('_')} (not described: {type(e).__name__})"


def _step_text(run, operands):
    """One step of a program as a line of ``Compiled.explain``."""
    if run is _replay_forward:
        cls, ctx = operands[0], operands[1]
        name = ctx.name().removesuffix("Backward") if ctx is not None else cls.__name__.removesuffix("Function")
        return f"forward   {name} -> {_tensor_text(operands[4][0])}"
    if isinstance(run, _fusion.FusedRun):
        names = ", ".join(step[1][0].__name__ for step in run.steps)
        kind = "one CuPy kernel" if run.device else "one Numba loop"
        return f"fused     {len(run.steps)} ops ({names}) on {run.shape} {run.dtype}: {kind}"
    if run is _replay_backward:
        plan = operands[0]
        leaves = {id(t) for t in plan.delivered()}
        names = ", ".join(step[0].name() for step in plan.steps)
        to = _count(len(leaves), "leaf", "leaves")
        ran = len(plan.nodes()) - len(plan.dropped)  # a fused run's nodes each count
        return f"backward  {_count(ran, 'node')} ({names}) -> .grad of {to}"
    if run is _replay_call:
        fn = operands[0]
        if fn in (_backward, _grad):
            return f"backward  {fn.__name__.strip('_')}() walked by the engine (create_graph, inputs= or grad())"
        if fn is _same_result:
            ctx, _, outs, _ = operands[1]
            name = ctx.name().removesuffix("Backward") if ctx is not None else "an op"
            return f"reuse     {name} -> {_tensor_text(outs[0])}: the forward above, on the same arrays"
        if fn is _set_grad:
            tensor, value = operands[1]
            what = "None" if value is None else "a tensor"
            return f"set       .grad = {what} on a tensor of shape {tuple(tensor.shape)}"
        owner = operands[1][0] if operands[1] else None
        if owner is not None and getattr(type(owner), getattr(fn, "__name__", ""), None) is not None:
            return f"call      {type(owner).__name__}.{fn.__name__}"  # Adam.step, not Optimizer.step
        return f"call      {getattr(fn, '__qualname__', repr(fn))}"
    if run is _replay_release:
        parts = [_count(len(operands[0]), "tensor")] if operands[0] else []
        parts += [f"what {_count(len(operands[1]), 'node')} saved"] if operands[1] else []
        return "release   " + ", ".join(parts)
    if run is _replay_alias:
        return "alias     (a detached or viewed tensor on the same array)"
    return f"requires_grad_({operands[1]}) on a tensor of shape {tuple(operands[0].shape)}"


# what the fusion pass works with (fusion.py does not import this module)
_PROGRAM_KINDS = _fusion.ProgramKinds(_replay_forward, _replay_release, _refill_node, _tensors_in)
_GRAPH_KINDS = _cuda_graph.StepKinds(_replay_forward, _replay_backward, _replay_alias, _replay_release, _replay_call,
                                     _replay_requires_grad, _fusion.FusedRun, _tensors_in)


# ---- check=N: a replay side by side with eager ---------------------------------------------------------------------
def _state_of(program):
    """What a step may change: the leaves it used (data and .grad), the buffers of its modules, and the state of
    the objects whose methods it called (optimizers, schedulers: through their state_dict)."""
    inputs = {id(t) for t in program.inputs}
    tensors = {id(t): t for t, rg, *_ in program.leaves if rg and id(t) not in inputs}
    for module, _, _ in program.modules:
        for b in module.__dict__.get("_buffers", {}).values():
            if b is not None:
                tensors[id(b)] = b
    owners = {}
    for run, operands in program.steps:
        if run is _replay_call and operands[1] and hasattr(operands[1][0], "load_state_dict"):
            owners[id(operands[1][0])] = operands[1][0]
    return list(tensors.values()), list(owners.values())


def _snapshot(tensors, owners, devices):
    return ([t.data.copy() for t in tensors], [None if t.grad is None else t.grad.data.copy() for t in tensors],
            [copy.deepcopy(o.state_dict()) for o in owners],
            # the generators of each device the step uses, both streams (dropout under DDP draws from the rank's)
            [(d, r, _random.get_rng_state(d, rank_stream=r)) for d in devices for r in (False, True)])


def _restore(tensors, owners, snap):
    datas, grads, states, rng = snap
    for t, d, g in zip(tensors, datas, grads):
        t.data[...] = d
        t.grad = None if g is None else _make(g.copy(), t._device)
    for o, state in zip(owners, states):
        o.load_state_dict(copy.deepcopy(state))
    for d, r, state in rng:
        _random.set_rng_state(state, d, rank_stream=r)


def _arrays(value):
    """The arrays in a result or a snapshot, as host arrays."""
    if isinstance(value, Tensor):
        value = value.data
    if is_device_array(value):
        return [to_device(value, "cpu")]
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return [np.asarray(value)]
    if isinstance(value, dict):
        return [a for k in sorted(value, key=str) for a in _arrays(value[k])]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    return []


def _on_host(arrays):
    """A snapshot's arrays (None for a missing gradient) as host arrays."""
    return [None if a is None else to_device(a, "cpu") for a in arrays]


def _checked(fn, program, args, kwargs):
    tensors, owners = _state_of(program)
    devices = sorted({"cpu"} | {t._device for t in itertools.chain(program.inputs, tensors)})
    before = _snapshot(tensors, owners, devices)
    eager = [a.copy() for a in _arrays(fn(*args, **kwargs))]
    after_eager = _snapshot(tensors, owners, devices)
    _restore(tensors, owners, before)
    result = program.replay(args, kwargs)
    after_replay = _snapshot(tensors, owners, devices)
    checks = (("result", eager, _arrays(result)), ("tensor", _on_host(after_eager[0]), _on_host(after_replay[0])),
              ("gradient", _on_host(after_eager[1]), _on_host(after_replay[1])),
              ("optimizer/scheduler state", _arrays(after_eager[2]), _arrays(after_replay[2])))
    for what, xs, ys in checks:
        for i, (x, y) in enumerate(itertools.zip_longest(xs, ys)):
            if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
                raise CompileError(f"tinygen.compile(check=...): the replay differs from eager in {what} #{i}; "
                                   f"is there array code on tensor.data inside the step? (it is not recorded)")
    return result
