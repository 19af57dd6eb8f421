"""Recording a ``tinygen.compile`` program: the first call with a signature runs the step eagerly with a
``Recorder`` set as ``CAPTURE.recorder`` (the one hook in the core, ``tinygen/capture.py``); ``Program`` turns what
it wrote down into the steps a replay runs (``steps.py``), through the passes (``passes.py``, ``fusion.py``), and
holds the guards a replay checks first."""
import contextlib
import functools
import hashlib
import itertools
import sys
import threading
from collections.abc import Iterator

import numpy as np

from ..autograd import engine
from ..autograd.engine import _backward, _grad
from ..autograd.function import user_frame
from ..autograd.grad_mode import STATE
from ..backend import to_device
from ..capture import CAPTURE, tensors_written
from ..tensor import Tensor, _make
from . import cuda_graph, fusion, passes
from .explain import described, tensor_text
from .steps import (BackwardPlan, CompileError, replay_alias, replay_backward, replay_call, replay_forward,
                    replay_release, replay_requires_grad, run_steps, set_grad, tensors_in)


class Recorder:
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
        self.values = {}  # id -> (tensor, digest of its values, what it is): see untracked_write

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
                if a.grad_fn is None and id(a) not in self.made and id(a) not in self.leaves:
                    # guard: its flag when first used or changed; a parameter's values, to see untracked writes
                    self.leaves[id(a)] = (a, a._requires_grad, a.data.shape, a.data.dtype)
                    if a._requires_grad and id(a) not in self.values:
                        self.values[id(a)] = (a, _fingerprint(a.data), f"a tensor of shape {tuple(a.shape)} that "
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
        self.depth += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            self.depth -= 1
        new = _new_tensors(tensors_in(result))  # before anything else refers to the result
        self.steps.append((replay_call, fn, args, kwargs, result, STATE.grad_enabled, new))
        self.made.update(id(t) for t in tensors_in(result))
        self.relink = self.relink or builds_graph
        return result

    def record_backward(self, tensors, grad_tensors, retain_graph, create_graph, inputs):
        """A plain backward is recorded as the steps the engine took (``BackwardPlan``); one that builds a graph,
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
                self.steps.append((replay_backward, BackwardPlan(args[0], trace, retain_graph), args))
            else:
                self.steps.append((replay_call, _backward, args, {}, None, STATE.grad_enabled, ()))
        # a .grad this backward made is a new tensor on every replay: the step's own code must not hold this one
        self.new_grads.update((id(t.grad), t.grad) for key, (t, *_) in self.leaves.items()
                              if t.grad is not None and t.grad is not before.get(key))

    def refuse_new_grads(self, *values):
        """Raise if the step passes on a .grad tensor one of its backwards made (read from a leaf in Python, which
        the recording cannot see: a replay would pass this call's stale tensor)."""
        if self.new_grads:
            for t in tensors_in(*values):
                if id(t) in self.new_grads:
                    raise CompileError(
                        f"tinygen.compile: the step uses the .grad of a tensor of shape {tuple(t.shape)} that its own "
                        f"backward made, at {user_frame()}. A replay makes that gradient anew, so the step would "
                        f"use a stale one: read gradients after the call (return what you need from the step), or "
                        f"call a replayed utility that takes the parameters (clip_grad_norm_)")

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

    def note_module(self, module):
        if id(module) not in self.modules:  # its mode as the step found it, before it changed anything
            self.modules[id(module)] = (module, module.training)

    def refuse(self, tensor, what):
        raise CompileError(f"tinygen.compile: the step reads a tensor's value into Python ({what}) at "
                           f"{user_frame()}. A replay cannot repeat a decision taken on a value: return the tensor "
                           f"from the step and read it after the call, or call this function without compiling it")


# Python's and NumPy's global random generators: a draw in the step's Python code is recorded as the constant it
# gave (an augmentation's coin flip, a label-noise mask), so a replay would repeat it. tinygen's own draws are ops.
_PY_DRAWS = ("random", "uniform", "randint", "randrange", "choice", "choices", "shuffle", "sample", "gauss",
             "normalvariate", "lognormvariate", "expovariate", "betavariate", "gammavariate", "triangular",
             "vonmisesvariate", "paretovariate", "weibullvariate", "getrandbits", "randbytes", "binomialvariate")
_NP_DRAWS = ("rand", "randn", "randint", "random", "random_sample", "ranf", "sample", "choice", "shuffle",
             "permutation", "normal", "standard_normal", "uniform", "binomial", "poisson", "exponential", "beta",
             "gamma", "bytes", "random_integers", "multinomial", "dirichlet", "laplace", "logistic", "lognormal")


@contextlib.contextmanager
def _host_draws_refused():
    """While a step is recorded: a draw from Python's ``random`` module, NumPy's global generator or a NumPy
    generator made without a seed raises ``CompileError`` naming the line. (A generator of the user's own, made
    before the step, is not seen.)"""
    import random
    patched, owner = [], threading.get_ident()

    def in_step():  # the step's own code: the recording thread, not inside a recorded call
        return threading.get_ident() == owner and CAPTURE.recorder is not None and not CAPTURE.recorder.depth

    def refuse(module, name, original):
        @functools.wraps(original)
        def draw(*args, **kwargs):
            if not in_step():
                return original(*args, **kwargs)
            raise CompileError(f"tinygen.compile: the step draws a random number with {module.__name__}.{name} "
                               f"at {user_frame()}. A replay would repeat the recorded draw: use tinygen's random "
                               f"functions (tinygen.rand, randn, randint, randperm, bernoulli), drawn again on "
                               f"every replay, or draw it before the call and pass it as an argument")
        return draw

    def default_rng(seed=None, *args, **kwargs):  # a fresh, unseeded generator draws anew on every eager call
        if seed is None and in_step():
            raise CompileError(f"tinygen.compile: the step makes an unseeded numpy.random.default_rng() at "
                               f"{user_frame()}. A replay would repeat its draws: use tinygen's random functions "
                               f"(tinygen.rand, randn, randint, randperm, bernoulli), drawn again on every replay, "
                               f"or draw them before the call and pass them as arguments")
        return original_rng(seed, *args, **kwargs)
    original_rng = np.random.default_rng
    for module, names in ((random, _PY_DRAWS), (np.random, _NP_DRAWS)):
        for name in names:
            original = getattr(module, name, None)
            if callable(original):
                patched.append((module, name, original))
                setattr(module, name, refuse(module, name, original))
    patched.append((np.random, "default_rng", original_rng))
    np.random.default_rng = default_rng
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def _fingerprint(data):
    """A digest of an array's values (of its host copy, for a device array)."""
    host = data if isinstance(data, np.ndarray) else to_device(data, "cpu")
    return hashlib.blake2b(np.ascontiguousarray(host).reshape(-1).view(np.uint8)).digest()


def untracked_write(rec):
    """A description of a parameter (a leaf that requires grad) whose values changed during the recorded call
    although no recorded op or call may have written it, else None. What may write a tensor: an op's
    ``forward_writes``, a call's ``@replayed(writes=...)``, a call that does not say, when the tensor is one of
    its arguments or an argument is an object that may hold it (a module, an optimizer), and the hooks a
    backward runs (an optimizer stepped in a post-accumulate-grad hook)."""
    hooked = engine._post_accumulate_hooks
    written = set()
    anything = any(key in hooked or getattr(leaf[0], "_hooks", None) for key, leaf in rec.leaves.items())
    for step in rec.steps:
        if step[0] is replay_forward:
            written.update(id(t) for k in step[1].forward_writes for t in tensors_in(step[4][k]))
        elif step[0] is replay_call:
            said = tensors_written(step[1], step[2], step[3])
            if said is not None:
                written.update(id(t) for t in said)
                continue
            written.update(id(t) for t in tensors_in(step[2], step[3]))
            anything = anything or any(not isinstance(a, (Tensor, tuple, list, dict, str, int, float, bool,
                                                          type(None))) for a in (*step[2], *step[3].values()))
    if anything:
        return None
    for key, (t, value, what) in rec.values.items():
        if key not in written and _fingerprint(t.data) != value:
            return what
    return None


WATCH_MAX_BYTES = 1 << 27  # larger arrays are not digested (a dataset held whole): twice per recording is enough


def _watched(fn, args, kwargs):
    """The tensors the step's code can reach before it runs, where array code could change them unseen (an EMA
    model's parameters updated through ``.data``), with a digest of their values: the tensors, and the parameters
    and buffers of the modules, held in the globals and closure variables of ``fn``'s own code, in the attributes
    of its object, and in its arguments and their attributes (one level of lists, tuples and dicts). id ->
    (tensor, digest, what it is)."""
    found = {}

    def take(value, where, depth=0):
        if isinstance(value, Tensor):
            if value.data.nbytes <= WATCH_MAX_BYTES and id(value) not in found:
                found[id(value)] = (value, _fingerprint(value.data), f"the tensor in {where}")
        elif isinstance(getattr(value, "_parameters", None), dict) and callable(getattr(value, "buffers", None)):
            for kind, tensors in (("a parameter", value.parameters()), ("a buffer", value.buffers())):
                for t in tensors:
                    take_tensor(t, f"{kind} of shape {tuple(t.shape)} of the {type(value).__name__} in {where}")
        elif depth == 0 and isinstance(value, (list, tuple)):
            for v in value:
                take(v, where, 1)
        elif depth == 0 and isinstance(value, dict):
            for v in value.values():
                take(v, where, 1)

    def take_tensor(t, what):
        if t.data.nbytes <= WATCH_MAX_BYTES and id(t) not in found:
            found[id(t)] = (t, _fingerprint(t.data), what)
    func = getattr(fn, "__func__", fn)
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    if code is not None:
        for name in dict.fromkeys(code.co_names):
            if name in func.__globals__:
                take(func.__globals__[name], f"the global {name!r}")
        for name, cell in zip(code.co_freevars, func.__closure__ or ()):
            take(_contents(cell), f"the variable {name!r} of the enclosing function")
    owners = [("the step's object", getattr(fn, "__self__", None) if code is not None else fn)]
    owners += [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"keyword argument {k!r}", a)
                                                                   for k, a in kwargs.items()]
    for where, obj in owners:
        if obj is None or isinstance(obj, Tensor):  # (a tensor argument is the program's input)
            continue
        take(obj, where)
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict) and not isinstance(obj, type):
            for name, value in list(attributes.items()):
                take(value, f"the attribute {name!r} of {where}")
    return found


def _kept(arg):
    """An argument as a recorded call keeps it: a generator (``model.parameters()``) as a tuple of its items, as
    it would be empty on the second call."""
    return tuple(arg) if isinstance(arg, Iterator) else arg


def record(fn, args, kwargs, fuse, graphs=False):
    """Run ``fn`` once with a ``Recorder`` set; returns (its ``Program``, its result)."""
    for i, t in enumerate(tensors_in(args, kwargs)):
        if t._requires_grad:
            raise CompileError(f"tinygen.compile: tensor argument {i} (shape {t.shape}) requires grad; pass "
                               f"parameters through the modules the step uses, not as arguments")
    # the program's own input tensors (on the caller's arrays): a replay puts new arrays into them, never into
    # the caller's tensors
    slots = {}
    args, kwargs = _with_slots(args, slots), _with_slots(kwargs, slots)
    rec = Recorder(tensors_in(args, kwargs))
    rec.values = _watched(fn, args, kwargs)
    CAPTURE.recorder = rec
    try:
        with _host_draws_refused():
            result = fn(*args, **kwargs)
    finally:
        CAPTURE.recorder = None
    changed = untracked_write(rec)
    if changed is not None:
        raise CompileError(f"tinygen.compile: the step changed the values of {changed} outside tinygen's ops and "
                           f"recorded calls (array code on .data, such as p.data -= lr * p.grad.data), which a "
                           f"replay would not do again. Update parameters with an optimizer (tinygen.optim), in a "
                           f"function marked @tinygen.capture.replayed (a replay calls it again: an EMA's update), "
                           f"or outside the compiled step")
    program = Program(rec, tensors_in(args, kwargs), result, STATE.grad_enabled, fuse, graphs)
    program.bindings = _bindings(fn, args, kwargs, rec.leaves)
    for run, operands in program.steps:  # the recorded call's intermediates go as a replay's do
        if run is replay_release:
            run(*operands)
    return program, result


class Program:
    """One recorded signature's steps after the passes, its guards, and its replay."""

    def __init__(self, rec, inputs, result, grad_enabled, fuse, graphs=False):
        keep = {id(t) for t in tensors_in(result)}
        if fuse:
            rec.steps = passes.with_activations(rec.steps, keep)
            rec.steps = passes.reused_forwards(rec.steps, inputs, keep)
        self.steps = passes.with_releases([(s[0], s[1:]) for s in rec.steps], inputs, keep)
        self.steps, self.left_out = passes.without_dead_gradients(self.steps)
        if fuse:
            self.steps = fusion.fused_steps(self.steps, rec.elementwise, keep, fuse == "approx")
            self.steps = passes.fused_backwards(self.steps, rec, fuse == "approx")
        self.inputs = inputs
        self.result = result
        # a forward with a graph and no backward (a compiled model): a backward after the call cannot reach it
        self.returns_graph = grad_enabled and any(t.grad_fn is not None for t in tensors_in(result)) and not any(
            run is replay_backward or (run is replay_call and operands[0] in (_backward, _grad))
            for run, operands in self.steps)
        # each module's mode when the step first called it, and its count of changes when the step ended: a
        # parameter, submodule or setting (a dropout's p) replaced since then is not what the program uses
        self.modules = tuple((m, training, m.__dict__.get("_changes", 0)) for m, training in rec.modules.values())
        ins = {id(t) for t in inputs}  # the signature covers the inputs (released between calls)
        self.leaves = tuple(leaf for key, leaf in rec.leaves.items() if key not in ins)
        self.grad_enabled = grad_enabled
        # for explain(), while the recorded call's tensors still hold their arrays
        self.signature_text = ", ".join(tensor_text(t) for t in inputs) or "no tensor arguments"
        self.step_texts = [described(run, operands) for run, operands in self.steps]
        on_gpu = any(cuda_graph.is_cupy(t.data) for t in itertools.chain(inputs, (leaf[0] for leaf in self.leaves)))
        self.graphed = cuda_graph.GraphedSteps(self.steps, inputs) if graphs and on_gpu else None

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

    def stale(self):
        """None, or a description of a binding (``_bindings``) that holds another tensor than when recorded."""
        for what, current, tensor in self.bindings:
            try:
                now = current()
            except (ValueError, KeyError):  # an emptied closure cell, a deleted global
                now = None
            if now is not tensor:
                return what
        return None

    def replay(self, args, kwargs):
        for slot, new in zip(self.inputs, tensors_in(args, kwargs)):
            slot.data = new.data
        try:
            for run, operands in self.steps:
                run(*operands)
        finally:
            STATE.grad_enabled = self.grad_enabled
        return fresh(self.result)

    def replay_graphed(self, args, kwargs):
        """A replay through CUDA graphs (cuda_graph.py)."""
        try:
            self.graphed.replay(tensors_in(args, kwargs), run_steps)
        finally:
            STATE.grad_enabled = self.grad_enabled
        return self.graphed.result(self.result)


def _bindings(fn, args, kwargs, leaves):
    """Where the step's code found the tensors it used that it neither made nor took as arguments (``leaves``: id
    -> entry), wherever a caller may point them at other tensors between calls: a global or closure variable of
    ``fn``'s own code, an attribute of its object (a method's ``self``, a module) or of an argument. A replay uses
    the recorded tensors, so each binding must still hold its tensor (``Program.stale``). Tuples of (what, a
    function giving what it holds now, the recorded tensor)."""
    found = []

    def note(what, current, value):
        if isinstance(value, Tensor) and id(value) in leaves:
            found.append((what, current, value))
    func = getattr(fn, "__func__", fn)  # a bound method's function
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    if code is not None:
        names = func.__globals__
        for name in code.co_names:
            note(f"the global {name!r}", lambda name=name: names[name], names.get(name))
        for name, cell in zip(code.co_freevars, func.__closure__ or ()):
            try:
                note(f"the variable {name!r} of the enclosing function", lambda cell=cell: cell.cell_contents,
                     cell.cell_contents)
            except ValueError:  # a cell not filled yet
                pass
    owners = [("the step's object", getattr(fn, "__self__", None) if code is not None else fn)]
    owners += [(f"argument {i}", a) for i, a in enumerate(args)]
    owners += [(f"keyword argument {k!r}", a) for k, a in kwargs.items()]
    for owner, obj in owners:
        attributes = getattr(obj, "__dict__", None)
        if isinstance(obj, (Tensor, type)) or not isinstance(attributes, dict):
            continue
        for name, value in list(attributes.items()):
            note(f"the attribute {name!r} of {owner} ({type(obj).__name__})",
                 lambda attributes=attributes, name=name: attributes[name], value)
    return tuple(found)


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


def signature(args, kwargs, values=()):
    """What picks a program: the grad mode, the arguments (``_sig``), which of their tensors are one tensor
    passed twice (one input slot of the program), and the Python values the step's own code reads beside them
    (``PythonValues``)."""
    ids = [id(t) for t in tensors_in(args, kwargs)]
    same = tuple(ids.index(i) for i in ids) if len(set(ids)) < len(ids) else None
    return (STATE.grad_enabled, _sig(args), _sig(kwargs), values, same)


_SCALARS = frozenset((int, float, bool, complex, str, type(None)))


class PythonValues:
    """The numbers and strings a step's own code reads that a caller may change between calls: the globals its
    code names, its closure variables and the attributes its code names of its object (a method's ``self``). Such
    a value feeds the recording as an argument does (a branch taken, a constant of an op: a KL weight ``beta``), so
    it is part of the signature, and another value records anew. Called, returns ((where, value), ...) for those
    holding a number or a string now. (What the functions the step calls read is not seen: pass it as an
    argument, a 0-d tensor if it changes on every call.)"""

    def __init__(self, fn):
        func = getattr(fn, "__func__", fn)  # a bound method's function
        while isinstance(func, functools.partial):
            func = func.func
        code = getattr(func, "__code__", None)
        self.sources = []  # (where, a function giving the value now)
        if code is None:  # a callable object (a module): its forward is not the step's own code
            return
        names = dict.fromkeys(code.co_names)  # the globals and attributes it names, in order, once each
        space = func.__globals__
        self.sources += [(f"the global {n!r}", functools.partial(space.get, n)) for n in names if n in space]
        for n, cell in zip(code.co_freevars, func.__closure__ or ()):
            self.sources.append((f"the variable {n!r} of the enclosing function", functools.partial(_contents, cell)))
        owner = getattr(getattr(fn, "__self__", None), "__dict__", None)
        if isinstance(owner, dict):
            self.sources += [(f"the attribute {n!r} of the step's object", functools.partial(owner.get, n))
                             for n in names if n in owner]

    def __call__(self):
        return tuple((where, v) for where, get in self.sources if type(v := get()) in _SCALARS)


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # not filled yet
        return cell


def what_changed(old, new):
    """The first difference between two signatures (``signature``) in words, and what to do about it."""
    enlarge = "raise cache_size"
    if old is None or old[0] != new[0]:
        return "The grad mode differs between the calls", enlarge
    for kind, a, b in (("argument", old[1], new[1]), ("keyword argument", old[2], new[2])):
        if len(a) != len(b):
            return f"The number of {kind}s differs between the calls", enlarge
        for i, (x, y) in enumerate(zip(a[1:], b[1:])):
            name = i
            if kind == "keyword argument":
                (name, x), (other, y) = x, y
                if name != other:
                    return "The keyword arguments differ between the calls", enlarge
            if x != y:
                change = f"{kind.capitalize()} {name!r} was {_sig_text(x)}, then {_sig_text(y)}"
                if x[0] == y[0] == "value" and x[1] in ("int", "float") and y[1] in ("int", "float"):
                    return change, "pass a number that changes between calls as a 0-d tensor"
                if x[0] == y[0] == "value" and x[1] == y[1] and type(x[2]).__eq__ is object.__eq__:
                    return change, ("a new object on every call is a new signature: pass the tensors and numbers "
                                    "it holds as arguments")
                return change, enlarge
    if old[4] != new[4]:
        return "The same tensor was passed twice in one call and not in the other", enlarge
    before, after = dict(old[3]), dict(new[3])
    for where in before.keys() | after.keys():
        if before.get(where, _SCALARS) != after.get(where, _SCALARS):
            change = (f"{where[0].upper()}{where[1:]} was {before.get(where, 'not a number')!r}, then "
                      f"{after.get(where, 'not a number')!r}")
            number = all(type(v) in (int, float) for v in (before.get(where), after.get(where)))
            return change, ("pass a number that changes between calls to the step as a 0-d tensor argument"
                            if number else enlarge)
    return "The signatures differ", enlarge


def _sig_text(sig):
    if sig[0] == "tensor":
        return f"a tensor of shape {sig[1]}, dtype {np.dtype(sig[2]).name} on {sig[3]}" + (
            ", requiring grad" if sig[4] else "")
    if sig[0] == "value":
        return f"{sig[1]} {sig[2]!r}"
    if sig[0] == "object":
        return "an unhashable object (each new one is a new signature)"
    return f"a {sig[0]} of {len(sig) - 1}"


def _map_tensors(value, fn):
    """``value`` (tensors in nested tuples, lists and dicts) with each tensor t replaced by ``fn(t)``."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _with_slots(value, slots):
    """``value`` with each tensor replaced by a new tensor on its array (the same one for the same tensor)."""
    return _map_tensors(value, lambda t: slots.setdefault(id(t), _make(t.data, t._device)))


def _new_tensors(tensors):
    """Of the tensors of a call's result (``tensors``, a list made for this), those nothing else refers to (the call
    made them; a module's buffer it returns lives elsewhere too): held once by the result, as a new object is by
    one variable, counted the same way (this list adds one reference to each tensor)."""
    probe = object()
    counts = [sys.getrefcount(x) for x in tensors + [probe]]
    return tuple(t for t, n in zip(tensors, counts) if n <= counts[-1] + 1)


def fresh(result):
    """The step's result with every tensor as a new tensor on the replayed array (no graph)."""
    return _map_tensors(result, lambda t: _make(t.data, t._device))
