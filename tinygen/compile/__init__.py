"""``tinygen.compile(fn)``: record a step once, replay it many times.

    step = tinygen.compile(train_step)     # train_step(x, y): forward, loss.backward(), opt.step(), zero_grad
    for x, y in loader:
        loss = step(x, y)                  # 1st call with these shapes: runs eagerly and records; then replays

One file a part (the stages below in brackets); this one holds ``compile`` and the ``Compiled`` callable:

  recording.py    the recorder the core calls, and the program it writes down                   [record]
  guards.py       signatures, and what a replay checks or a recording refuses beyond the ops     [guard]
  steps.py        the kinds of step a program is made of, and how a replay runs each one       [replay]
  passes.py       what runs once over a new program, before its first replay     [release, prune, reuse, fuse]
  fusion.py       elementwise runs as generated Numba loops or CuPy kernels                     [fuse]
  cuda_graph.py   a replay's device work as CUDA graphs                                         [graph]
  explain.py      ``Compiled.explain()``
  check.py        ``compile(fn, check=N)``

Eight stages, on a three-line example ``loss = (x @ w).tanh().sum(); loss.backward(); opt.step()``:

  record   The first call with a given signature runs ``fn`` eagerly while ``CAPTURE.recorder`` (the one hook in
           the core, ``tinygen/capture.py``) is set. The program it writes down is a list of steps:
             forward(Matmul), forward(Tanh), forward(Sum)   every op called from fn: class, node, argument tensors
             backward(plan, loss)                           a plain backward: the steps the engine took
                                                            (``BackwardPlan``: Sum's, Tanh's, Matmul's backward)
             call(Adam.step, opt)                           marked @replayed: optimizer steps, zero_grad, random
                                                            draws, gradient clipping, scheduler steps, in-place
                                                            writes (``t[i] = v``, ``nn.init``,
                                                            ``load_state_dict``, seeding), tensors
                                                            made from host arrays (``tensor(buf)``)
           The engine tells the recorder which nodes it visited, in its order, and which ran (a ``trace``); the
           plan is those that ran, each with the registers its incoming gradients are summed in, where each
           gradient it returns goes (another node's register, or a leaf's ``.grad``) and the leaves whose
           post-accumulate-grad hooks are due after it. A backward with ``create_graph=True`` or ``inputs=``,
           ``grad()``, and a backward whose graph has nodes a create_graph call made (WGAN-GP's penalty: that
           graph is built anew on every replay, so no recorded plan can name its nodes) are recorded as calls:
           the engine runs them again, walking the graph, on every replay.
  guard    A signature (shapes, dtypes, devices and requires_grad of the tensor arguments, the other arguments, the grad
           mode, the default dtype, and the numbers and strings, and by identity the functions and classes, the step's
           code reads from globals, closure variables, its object's and its arguments' attributes and the config
           objects, dicts, tuples and lists there (``weights[0]``; not a list a recorded call reads anew,
           ``tensor(rows)``: data. A helper redefined, a method patched or a module reloaded records anew); its code is
           its own and that of the user's code it reaches, three calls deep: helper functions (also through a module of
           the user's: ``losses.kl(mu, logvar)``), methods of the objects it names or takes or makes, a loss object's
           ``__call__``, its modules' forwards; under decorators, ``@no_grad()``, the functions they wrap) picks a
           program; before a replay its guards are checked: the train/eval mode of every module the step called, the
           contents of the config objects, lists and dicts it holds, its count of changes (a parameter, submodule or
           setting replaced) and the requires_grad, shape and dtype of every leaf tensor it used (as before the step
           changed them: ``requires_grad_`` inside the step is recorded and replayed, as is ``p.grad = None``). A change
           records anew. A step that leaves a module attribute with another value (a Python counter, a buffer rebound)
           keeps no program: a replay would not set it, so each such call records.
  release  After the last use of each intermediate (an op's output, a detached copy, a random draw, the
           program's own copy of an input tensor) the program gets a release step, so a replay holds no more
           memory than eager: between calls only what eager keeps too. A backward uses what its graph's nodes
           saved; a replayed node saves them as shadows (new tensors on the same arrays), so the arrays go when
           the backward releases the node, as in eager.
  prune    A gradient that a plain backward delivers to a leaf and the step then drops unread (``zero_grad()``
           before anything reads it: in a GAN step, the discriminator's weight gradients from the generator's
           backward) is left out of the plan, with the products that only it needed (``without_dead_gradients``).
           What may read a gradient is known from ``@replayed(grads=...)``; anything else keeps it. A
           ``zero_grad()`` after the forward (``loss = f(x); opt.zero_grad(); loss.backward()``) moves back over
           the forwards before it, so the last call's gradients are not held through them
           (``with_early_drops``).
  reuse    A forward of an op that declares ``reusable_forward`` (Linear, convolutions, reshape) on the same arguments
           as an earlier forward of that op, with nothing in between that may change their arrays (an op's
           ``forward_writes``, a call's ``@replayed(writes=...)``: an optimizer step changes its parameters), is
           left out: the earlier one's outputs and node state serve the later node (``reused_forwards``). A
           GAN's discriminator on the fakes, then on their detached copy after the generator's update. In a plain
           backward, a node whose op declares ``backward_into_gradient`` (ReLU, LeakyReLU, Tanh, Sigmoid,
           dropout, a Linear with its activation) writes its gradient into the array it receives where that array
           is the plan's own: only ops that declare ``fresh_gradients`` (their arrays new, held by nothing else:
           Linear, those ops) fill its register, not a root's gradient nor a sum's shared one
           (``with_gradients_in_place``). The bits are the same, without a new array of that size: at the bottom
           of an MLP's backward, one batch of activation gradients less at the step's peak.
  fuse     Runs of 3 or more consecutive elementwise forwards (ops that declare ``elementwise``, of one shape and
           dtype, operands of that shape or scalars) become one step, a generated Numba loop (NumPy arrays) or
           CuPy elementwise kernel (GPU arrays) that writes only what is used outside the run and leaves each
           node as its forward would (``fusion.py``); a sum over every axis of its last value may end
           it (NumPy's order on NumPy arrays; a reduction kernel on the GPU). ``fuse=True`` (the default)
           takes + - * /, neg, abs and sqrt: NumPy's (CuPy's) bits. ``fuse="approx"`` takes exp, log, tanh,
           sin and cos too: within 3 ulps of NumPy's per call. A plain backward's runs of 3 or more such nodes
           (ops that declare ``elementwise_backward``, gradients passed between them, none to a leaf) become one
           loop or kernel too (``FusedBackward``). A Linear followed by a ReLU or LeakyReLU op on its output
           (``F.relu(fc(x))``) runs as one ``LinearActFunction`` node, as in ``nn.Sequential``, where that gives
           the same bits (``with_activations``). ``fuse=False``: nothing is fused or reused; NumPy arrays
           without Numba: no run is.
  replay   Each step runs on the same tensor objects as when it was recorded: an op's ``forward`` is called
           with the node (``ctx``) it had, and its output arrays are put into the recorded output tensors. No
           graph is built, and a plain backward walks none: it runs its plan on arrays (``run_plan``): each
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
           replays launch them: a few launches instead of one Python call per kernel (``cuda_graph.py``).
           Guards on the arrays the graphs read; what cannot be captured replays as above
           (``Compiled.graph_error`` says why; a RuntimeWarning the first time). Within float32 rounding of the
           plain replay (cuBLAS, called directly inside a graph, may choose other kernels than CuPy's ``matmul``).

A replay runs exactly the ops the recorded call ran, in the same order, so it gives the same bits as eager (a fused
run too: the same operations per element, each rounded as NumPy rounds it; not under ``fuse="approx"``). The
intermediates of a compiled step are released when the step no longer needs them. Python state the step's own code
changes where its code looks (``history.append(loss)``, ``self.last = h``, ``stats.n += 1``, ``next(batches)``, a
draw from a NumPy or Python generator of its own (``self.rng.normal()``: use tinygen's draws), a module attribute,
a learning rate set in ``opt.param_groups``: use a scheduler) is Python a replay would not run
again: such a call keeps no program and the next records again (a warning when it happens on every call); a
tensor kept further away (``box.inner.h = h``) raises when used after the call. Return what you need from the step
instead. A replay returns the tensors the step made without a graph (the parameters, the ``.grad`` tensors and
the arguments it returns are the caller's own objects, as in eager), except those whose graph reaches a parameter
along nodes none of the step's backwards went through (a model's forward with grad on, then ``loss.backward()``
after the call; a discriminator's step that returns the generator's images): each replay refills the program's own
nodes and hands those tensors on through one ``Gate`` node, so a backward after the call walks that graph as
eager's (``recording.HandedGraph``). A call made while the last call's such result still awaits its backward (a
discriminator on real, then on fake images, one loss) replays a spare program of its signature instead, since a
replay would refill the nodes that backward needs (up to ``SPARES``, 3, recorded when first needed; then it runs
eagerly); a backward through an older call's result after a later replay raises; after a ``create_graph``
backward through it the function runs eagerly (with a warning), as it does for a step that builds a gradient graph
and returns one. A tensor argument that requires grad (a generator's images passed to a compiled discriminator)
passes its gradient on through a gate of its own into the graph it came from, each call's; a backward inside the
step that reaches it is refused. Compiling the whole training step replays its backward and update too.
``tinygen.compile(model)`` replays inference under ``no_grad()`` as well, and its other attributes
(``parameters()``, ``eval()``) are the module's.
``@tinygen.compile`` on a method compiles each instance's bound method (its own programs, ``self`` as the step's
object).

What cannot be captured is refused at record time with ``CompileError`` naming the line: reading a tensor's value
into Python inside the step (``.item()``, ``float(t)``, ``bool(t)`` / branching on a value, ``.numpy()``,
``.tolist()``), indexing with a boolean mask that may change, using a ``.grad`` the step's own backward made
(or one its backward or ``zero_grad()`` then replaces: the last call's),
drawing from Python's ``random`` module or NumPy's global generator (or an unseeded ``default_rng()``: use
tinygen's draws, which a replay makes anew), calling an optimizer or a scheduler made inside the step, changing a
parameter's or a module's values by array code (``p.data -= lr * p.grad.data``, an EMA through ``.data``: use an
optimizer or a ``@replayed`` function; found by the values around each recorded write and after the call),
tensor arguments that require grad, a result holding a tensor the step computed in an object's attribute
(``SimpleNamespace(loss=loss)``: return tensors in tuples, lists, dicts, namedtuples or dataclass instances), and a
result holding the array of a tensor a replay fills anew (``loss.data``, ``p.grad.data``; a .grad the step then set
to None). Return tensors from the step and read them after the call: the other Python values of a result (numbers,
strings) are the recorded call's on every replay (``check=`` finds one that changes, a scheduler's
``get_last_lr()`` returned from a step that steps it). Array code on
``tensor.data`` and Python values that change between calls are not seen by the recorder and are replayed as they
were (the numbers the step's code reads are part of the signature, and those that the user's code it reaches reads:
its helpers, its modules' forwards, a loss object's ``__call__``, an object it makes; not those that library code
reads, nor the numbers of a list or the values of a NumPy array that a recorded call reads anew on each replay,
``tinygen.tensor(rows)``, which are data, nor those of an array of more than 4,096 elements; the code itself too, by
identity): write the step with tinygen ops,
modules and optimizers. A replay uses the tensors and modules the recorded call used: one
the step found in a global or closure variable of its own code, in an attribute of its object or of an argument
(or one level inside a list, tuple or dict there) that holds another object at a later call raises
``CompileError`` naming where (pass tensors that change as arguments); an object a recorded call takes found there
(``opt = SGD(...)`` after some epochs of Adam) replaced records anew.

``Compiled.explain()`` lists each recorded program one line a step, as a replay runs them (fused runs, backward
plans, recorded calls, releases; on CuPy the CUDA graph or host of each step); ``explain(sources=True)`` adds the
code generated for each fused run.

``compile(fn, check=N)`` (``check=True``: N = 3) runs the first N replays side by side with eager (from the same
state and random stream) and raises ``CompileError`` on the first array that differs (not with
``fuse="approx"``: refused). Each compiled function keeps at most ``cache_size`` programs (8 by default), the least
recently used one is dropped first; the first time one is dropped a RuntimeWarning says what changed between the
last two signatures (a Python number that changes on every call makes a new program each time: pass a 0-d tensor).
A compiled function runs one call at a time: threads calling it (a model served from a thread pool) wait for each
other, since a replay puts each call's arrays into the program's own tensors; while a call records, compiled calls
in other threads run eagerly (the recorder is the engine's one hook, for the whole process). ``copy.deepcopy`` of
one (of a model whose ``@tinygen.compile`` method it keeps) compiles the copied function anew.

``torch.compile``'s options work as there: ``mode="reduce-overhead"`` (or ``"max-autotune"``) turns CUDA graphs on,
``"max-autotune-no-cudagraphs"`` off (nothing is tuned here); ``disable=True`` returns ``fn`` itself; and
``fullgraph=True`` raises ``CompileError`` where a call would otherwise run eagerly, with a warning, instead of
replaying: a step that changes Python state on every call, a compiled forward whose result a ``create_graph``
backward went through or that returns a gradient graph it built, and a call of a compiled forward made while more
earlier calls' results await their backward than it keeps spare programs for. A call that finds this out while
it records (the first two) has run, as eager would, before it raises. (A refused construct raises anyway.)
"""
import copy
import functools
import threading
import types
import warnings
from collections import OrderedDict

from .. import config
from ..autograd.grad_mode import ANOMALY
from ..capture import CAPTURE
from .check import checked
from .explain import listing
from .guards import PythonValues, signature, what_changed
from .recording import Program, record
from .steps import GRAPH, CompileError, tensors_in

__all__ = ["compile", "Compiled", "CompileError"]

CHECK_CALLS = 3  # replays compared with eager under check=True
SPARES = 3  # programs a signature may record besides its own for calls made while earlier results await a backward
_MISSING = object()  # no program replayed (a step may return None)


# torch.compile's modes, as the CUDA-graph switch they come to here (nothing is autotuned): None leaves the setting
MODES = {"default": None, "reduce-overhead": True, "max-autotune": True, "max-autotune-no-cudagraphs": False}


def compile(fn=None, *, check=0, cache_size=8, fuse=True, cuda_graph=None, mode=None, fullgraph=False, disable=False):
    """Compile ``fn`` (a training step or any function of tensors): see the module docstring. ``mode``,
    ``fullgraph`` and ``disable`` are ``torch.compile``'s: ``mode`` one of ``MODES`` ("reduce-overhead" and
    "max-autotune" turn CUDA graphs on, "max-autotune-no-cudagraphs" off); ``fullgraph=True`` raises
    ``CompileError`` where a call would run eagerly instead of replaying; ``disable=True`` returns ``fn`` itself."""
    if fn is None:
        return lambda f: compile(f, check=check, cache_size=cache_size, fuse=fuse, cuda_graph=cuda_graph, mode=mode,
                                 fullgraph=fullgraph, disable=disable)
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
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"tinygen.compile: unknown mode {mode!r}; expected one of {sorted(MODES)} or None")
        graphs = MODES[mode]
        if graphs is not None:
            if cuda_graph is not None and cuda_graph != graphs:
                raise ValueError(f"tinygen.compile: mode={mode!r} turns CUDA graphs {'on' if graphs else 'off'}, "
                                 f"but cuda_graph={cuda_graph!r}; pass one of them")
            cuda_graph = graphs
    if disable:
        return fn
    return Compiled(fn, check, cache_size, fuse, cuda_graph, bool(fullgraph))


class Compiled:
    """The callable ``tinygen.compile`` returns. ``records`` and ``replays`` count what its calls did,
    ``graph_replays`` the replays that launched CUDA graphs; ``graph_error`` says why a program on CuPy replays
    without them (None while they work). Other attributes are ``fn``'s: a compiled module still has its
    ``parameters()``, ``eval()``, ``state_dict()``."""

    def __init__(self, fn, check, cache_size, fuse=True, cuda_graph=None, fullgraph=False):
        if isinstance(fn, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)):
            functools.update_wrapper(self, fn)
            inner = fn
            while isinstance(inner, functools.partial):  # (no name of its own: its function's)
                inner = inner.func
            self.__name__ = getattr(inner, "__name__", type(inner).__name__)
            self.__qualname__ = getattr(inner, "__qualname__", self.__name__)
        else:  # a callable object (a module): its name, not a copy of its attributes (they would go stale)
            functools.update_wrapper(self, fn, assigned=("__module__", "__doc__"), updated=())
            self.__name__ = self.__qualname__ = type(fn).__name__
        self.fn, self.cache_size, self._check, self._checks_left, self.fuse = fn, cache_size, check, check, fuse
        self._attribute = None  # the name it has in a class (``@tinygen.compile`` on a method)
        self._values = PythonValues(fn)
        self.cuda_graph, self.fullgraph = cuda_graph, fullgraph
        self._programs = OrderedDict()
        self.records = self.replays = self.graph_replays = 0
        self._unsettled = 0  # recordings that changed Python state a replay would not (Recorder.python_changed)
        self.graph_error = None
        self._warned_full = self._warned_graph = self._warned_unsettled = self._warned_spares = False
        self._lock = threading.RLock()  # one call at a time: a replay puts each call's arrays into the same tensors

    def __call__(self, *args, **kwargs):
        if ANOMALY.enabled or CAPTURE.recorder is not None:  # anomaly checks, or a compiled call inside a recording
            return self.fn(*args, **kwargs)
        with self._lock:  # (threads serving one compiled model wait for each other's call)
            return self._call(args, kwargs)

    def _call(self, args, kwargs):
        tensors = tensors_in(args, kwargs)  # once: the signature's aliasing and the replay's inputs
        key = signature(args, kwargs, self._values(args, kwargs), tensors)
        result = self._replayed(key, args, kwargs, tensors)
        if result is not _MISSING:
            return result
        if self._values.update(args, kwargs):  # other places now: a global set after compile(), a helper redefined
            key = signature(args, kwargs, self._values(args, kwargs), tensors)
            result = self._replayed(key, args, kwargs, tensors)  # (a program of the code as it was before)
            if result is not _MISSING:
                return result
        program, result = self._record(args, kwargs)
        if program is GRAPH:  # a compiled forward whose graph a replay would make anew, then a backward outside
            self._warn_graph("it returns a tensor with a graph that a backward after the call goes through, and it "
                             "builds a gradient graph (create_graph, grad()) whose nodes a replay would make anew", 3)
        elif isinstance(program, str):  # the step's Python changed state: no program, the next call records
            self._programs.pop(key, None)
            self._unsettled += 1
            if self._unsettled >= 2:  # not a one-time change (a lazy setting) but one on every call
                self._eagerly(f"each call eagerly and records: it changes {program} in its Python on every call, "
                              f"and a replay would not run that Python again (slower than eager)",
                              "Pass the data the step takes from an iterator as arguments, draw random numbers with "
                              "tinygen's functions (a replay draws them anew), return what the step computes "
                              "instead of storing it (append the returned loss to a list after the call), keep "
                              "state the step updates in a tensor written in place (a buffer: buf[...] = new "
                              "value), change an optimizer's learning rate with a scheduler "
                              "(tinygen.optim.lr_scheduler: its step is replayed), or do it outside the step",
                              "_warned_unsettled", 3)
            return result
        # a list's items the step's recorded calls read anew (tensor(rows)) are data
        if program is not GRAPH and self._values.learn(program.read_anew, args, kwargs):
            key = signature(args, kwargs, self._values(args, kwargs), tensors)
        last = next(reversed(self._programs), None)  # the signature used most recently before this one
        self._programs[key] = program
        self._programs.move_to_end(key)
        while len(self._programs) > self.cache_size:
            self._programs.popitem(last=False)
            if not self._warned_full:  # once: a step whose signature keeps changing never replays
                self._warned_full = True
                change, advice = what_changed(last, key)
                warnings.warn(f"tinygen.compile: {self.__name__} has recorded {self.records} programs and keeps "
                              f"{self.cache_size} (cache_size), so each new signature records again, as slow as "
                              f"eager or slower. {change}: {advice}", RuntimeWarning, stacklevel=3)
        return result

    def _record(self, args, kwargs):
        """One call that records (``recording.record``): (its program, or what stands for none; its result)."""
        graphs = config.get("TINYGEN_CUDA_GRAPHS") if self.cuda_graph is None else self.cuda_graph
        program, result = record(self.fn, args, kwargs, self.fuse, graphs)
        self.records += 1  # (a refused recording raised: not counted)
        return program, result

    def _eagerly(self, why, advice, once, depth):
        """A call that runs eagerly instead of replaying (``why``): ``CompileError`` under ``fullgraph=True``,
        else a RuntimeWarning the first time for its kind (``once``: the attribute that notes it)."""
        if not self.fullgraph and getattr(self, once):
            return
        message = f"tinygen.compile: {self.__name__} runs {why}. {advice}"
        if self.fullgraph:
            raise CompileError(f"{message} (compiled with fullgraph=True, which refuses it)")
        setattr(self, once, True)
        warnings.warn(message, RuntimeWarning, stacklevel=depth + 1)

    def _warn_graph(self, why, depth):
        self._eagerly(f"each call with grad on eagerly: {why}", "To train faster, compile the whole step (forward, "
                      "loss.backward(), opt.step()), or return .detach() of what is only read; for inference, call "
                      "it under tinygen.no_grad() (replayed)", "_warned_graph", depth + 1)

    def _on_spare(self, program, args, kwargs, tensors):
        """A call made while the result of ``program``'s last call awaits its backward (a discriminator on real,
        then on fake images, one loss over both): a replay of ``program`` would refill the nodes that backward
        needs, so the call replays a spare program of the same signature, recorded the first time it is needed (up
        to ``SPARES`` of them, each with nodes of its own), or runs eagerly."""
        for _ in range(SPARES):
            spare = program.spare
            if spare is None:
                new, result = self._record(args, kwargs)
                if isinstance(new, Program) and new.handoff is not None:
                    program.spare = new
                return result
            if not spare.handoff.busy():
                if spare.handoff.graph_built or not spare.guards_hold():
                    break
                return self._replay(spare, args, kwargs, tensors)
            program = spare
        self._eagerly(f"a call eagerly: earlier calls' results await their backward and no spare program of its "
                      f"signature can replay (a replay refills the nodes a backward through its last result needs; "
                      f"a signature keeps {SPARES} spares)", "Call backward() on fewer calls' results at once, call "
                      "it under tinygen.no_grad() where no backward follows (replayed), or compile the whole step "
                      "(forward, loss.backward(), opt.step())", "_warned_spares", 5)
        return self.fn(*args, **kwargs)

    def _replayed(self, key, args, kwargs, tensors):
        """The result of a replay of the program of ``key`` whose guards hold, else ``_MISSING``."""
        program = self._programs.get(key)
        if program is GRAPH:  # (a compiled forward whose result a backward after the call uses)
            self._programs.move_to_end(key)
            self._warn_graph("a gradient graph (create_graph) reaches the program's nodes", 4)  # (once: warned already)
            return self.fn(*args, **kwargs)
        if program is None or not program.guards_hold():
            return _MISSING
        handoff = program.handoff
        if handoff is not None and handoff.graph_built:  # a create_graph backward went through its graph
            self._programs[key] = GRAPH
            self._warn_graph("a create_graph backward (or grad(..., create_graph=True)) went through the graph of "
                             "its result, and the gradient graph it built may keep the program's tensors after the "
                             "call", 4)
            return self.fn(*args, **kwargs)
        if handoff is not None and handoff.busy():  # the last call's graph awaits its backward
            return self._on_spare(program, args, kwargs, tensors)
        self._programs.move_to_end(key)
        return self._replay(program, args, kwargs, tensors)

    def _replay(self, program, args, kwargs, tensors):
        """One replay of ``program`` (a signature's own or a spare): refused if a place the step reads holds
        another object now; side by side with eager while ``check`` calls are left; through CUDA graphs where
        the program has them."""
        stale = program.stale()
        if stale is not None:
            raise CompileError(f"tinygen.compile: {self.__name__} reads {stale}, which holds another "
                               f"object than when the step was recorded (a tensor, a module); a replay would "
                               f"use the recorded one. Pass the tensors that change between calls as "
                               f"arguments of the step (tensors, or tuples, lists, dicts and dataclasses of them), or "
                               f"compile a step for each module")
        self.replays += 1
        if self._checks_left:
            self._checks_left -= 1
            return checked(self.fn, program, args, kwargs)
        graphed = program.graphed
        if graphed is not None and graphed.usable:
            result = program.replay_graphed(tensors)
            self.graph_replays += graphed.live
            if graphed.error is not None and self.graph_error is None:  # once: the step goes on without graphs
                warnings.warn(f"tinygen.compile: {self.__name__} replays without CUDA graphs from now on: "
                              f"{graphed.error}", RuntimeWarning, stacklevel=5)
            self.graph_error = graphed.error
            return result
        return program.replay(tensors)

    def __set_name__(self, owner, name):
        self._attribute = name

    def __deepcopy__(self, memo):
        """``copy.deepcopy`` (of a model whose compiled method it keeps): the function copied, compiled anew with
        the same options; the copy records its own programs."""
        twin = self._again(copy.deepcopy(self.fn, memo))
        twin._attribute = self._attribute
        return twin

    def _again(self, fn):
        """``fn`` compiled with this one's options."""
        return Compiled(fn, self._check, self.cache_size, self.fuse, self.cuda_graph, self.fullgraph)

    def __get__(self, obj, owner=None):
        """``@tinygen.compile`` on a method: each instance gets the compiled bound method, with its own programs,
        so that ``self`` is the step's object (its attributes are the step's places, its numbers part of the
        signature). Kept in the instance's ``__dict__``, as ``functools.cached_property`` does (an instance without
        one raises TypeError)."""
        if obj is None or not hasattr(type(self.fn), "__get__"):  # the class's, or a callable that does not bind
            return self
        attributes = getattr(obj, "__dict__", None)
        if not isinstance(attributes, dict):  # (as functools.cached_property): a new one on every access would
            raise TypeError(  # record on every call, slower than eager
                f"tinygen.compile on the method {self.__name__!r}: a {type(obj).__name__} has no __dict__ (its class "
                f"has __slots__) to keep the compiled method in, so each call would record anew. Add '__dict__' to "
                f"__slots__, or leave the method undecorated and compile it once for the instance: "
                f"step = tinygen.compile(instance.{self.__name__})")
        bound = self._again(self.fn.__get__(obj, owner))
        if self._attribute is None:  # set on the class after it was made: Python did not tell us the name
            self._attribute = next((k for klass in type(obj).__mro__ for k, v in vars(klass).items() if v is self),
                                   None)
        if self._attribute is not None:
            attributes[self._attribute] = bound
        return bound

    def __repr__(self):  # print(tinygen.compile(model)) shows the model's layers
        return f"Compiled({self.fn!r})"

    def __getattr__(self, name):  # what Compiled does not have itself: fn's (a compiled module's parameters())
        fn = self.__dict__.get("fn")
        if fn is None:
            raise AttributeError(name)
        return getattr(fn, name)

    def reset(self):
        """Forget every recorded program (the next call records again)."""
        self._programs.clear()

    def explain(self, sources=False):
        """The recorded programs as text, one line a step in the order a replay runs them: the ops' forwards,
        fused runs (with ``sources=True``, each followed by its generated Numba loop or CUDA code; a backward's
        fused runs too), backward plans, recorded calls and releases (shapes as recorded); on CuPy, which CUDA
        graph takes each step."""
        return listing(self, sources)
