"""CUDA graphs for ``tinygen.compile`` on CuPy: a replayed step's kernels launched a few graphs at a time.

A replay on the GPU still makes one Python call per kernel (hundreds per step) and the GPU waits for them. A CUDA
graph records kernels once; one call launches them all again, on the same memory.

  split    The program's steps become segments and host steps. A segment is a run of forwards (and fused runs
           of them on the GPU: one CuPy kernel each, compiled when the program was recorded), plain backwards
           (no post-accumulate-grad hooks), aliases, releases, requires_grad switches and recorded calls that are
           device work only, or Python the diff below makes again (a ``graph_key``, ``capture.replayed``: SGD's
           step, a capturable Adam's, gradient clipping, BatchNorm's batch count, ``zero_grad()``, a draw from
           CuPy's generator, whose state is on the GPU): the same on every call. A host step is the rest: other
           recorded calls (Adam counting steps in Python; zero_grad filling with zeros; host generators' draws),
           forwards that re-link a graph.
  capture  The first replay after ``check`` captures each segment: it notes the Python state the segment touches
           (its tensors' arrays, gradients and nodes, its leaves' hooks), runs the segment's steps on a side
           stream in capture mode (allocations from a memory pool of the program's own, so no array the graph
           uses is handed to anyone else; products through ``kernels/gemm_capture.py``), launches the graph on
           the current stream and keeps what the steps changed in Python (a new ``.grad``, the arrays an output
           tensor and a node hold). The step's input tensors are copied into buffers of the program; each host
           step's new tensors are pinned (later host steps write their arrays into the ones the capture saw; a
           result that lives on elsewhere must keep its array, else the step replays plainly).
  launch   Later replays: host steps run as in a plain replay; for each segment its guards are checked, its graph
           is launched, and the Python changes it made at capture are made again (the arrays are the same: the
           graph has just written them). The step's result is copied out (the next launch writes over it).
  guards   A segment's leaves (parameters, buffers, constants) must hold the arrays and hooks they had at capture,
           each leaf its backward delivers to a .grad as it had then (None again after ``zero_grad()``, or the
           same array to add into; not checked after a zero_grad in the same segment), each leaf whose .grad a
           call reads (``gradient_use``) before the segment makes or drops it likewise, and each call its graph
           key (a new learning rate, new state arrays). Else the segment and the rest of the step run as a plain
           replay, and the graphs are captured again on the next call (at most MAX_CAPTURES times with no launch
           between, then plain replays).
  failure  A segment that cannot be captured (a product that is not a 2-D float matrix, a host read, a copy of
           host data to the GPU, a library CuPy cannot capture): the Python state and tinygen's host generators
           are set back, the segment runs as a plain replay, and the program keeps plain replays;
           ``Compiled.graph_error`` says why. Other host state a custom forward changed before the failure (its
           own NumPy generator) has changed twice on that call.
  memory   A dropped graph's pool is kept while arrays made in it live (a .grad): ``_RETIRED``, swept at each
           capture.
"""
import contextlib

from .. import random as _random
from ..autograd import engine
from ..backend import GRAPH_CAPTURE, is_cupy_array as is_cupy
from ..capture import gradient_use, graph_key
from ..kernels import gemm_capture
from ..tensor import Tensor, _make
from .fusion import FusedRun
from .steps import (replay_alias, replay_backward, replay_call, replay_forward, replay_release,
                    replay_requires_grad, tensors_in)

MAX_CAPTURES = 3
_RELAXED = 2  # cudaStreamCaptureModeRelaxed
_SLOTS = ("data", "_grad", "grad_fn", "_out_idx", "_requires_grad")
_NODE_SLOTS = ("next_edges", "_saved", "_out_data", "out_meta", "device")
_UNSET = object()


# Memory pools of dropped graphs whose arrays may still be in use (a .grad made in a capture): CuPy before 14 frees a
# pool's memory when the pool goes, even under live arrays. Swept at each capture: what they no longer use goes back
# to CUDA, and a pool with nothing in use is let go.
_RETIRED = []


def _retire(pool):
    if pool is not None:
        _RETIRED.append(pool)


def _sweep():
    keep = []
    for pool in _RETIRED:
        pool.free_all_blocks()
        if pool.used_bytes():
            keep.append(pool)
    _RETIRED[:] = keep




class _Segment:
    """A run of device steps captured as one graph: the tensors and nodes they touch, the leaves among those (not
    made by the program), the leaves its backwards deliver gradients to and those of them whose .grad a launch
    checks; after a capture, the graph, its guards, its deferred value checks and what it did in Python."""

    def __init__(self, steps, tensors, nodes, leaves, delivers, guarded):
        self.steps, self.tensors, self.nodes = steps, tensors, nodes
        self.leaves, self.delivers, self.guarded = leaves, delivers, guarded
        self.graph = self.diff = None
        self.guard, self.grads, self.checks, self.keys = [], [], [], []


class GraphedSteps:
    """A program's steps as CUDA graph segments and host steps (see the module docstring)."""

    def __init__(self, steps, inputs):
        self.inputs = inputs
        self.made = _made(steps)  # ids of the tensors the program makes (its result is copied from these)
        self.items = _split(steps, self.made | {id(t) for t in inputs})
        self.live = False  # captured graphs in use
        self.captures, self.error, self.pool = 0, None, None

    @property
    def usable(self):
        return self.error is None

    def replay(self, args_tensors, run_plain):
        """One replay: capture (when no graph is live) or launch; ``run_plain(steps)`` runs steps as a plain
        replay. Returns whether graphs were launched."""
        import cupy
        capture = not self.live
        if capture:
            self.captures += 1
            self._begin_capture(cupy, args_tensors)
        for slot, new, buf in zip(self.inputs, args_tensors, self.buffers):
            buf[...] = new.data
            slot.data = buf
        stream = cupy.cuda.get_current_stream()
        ok = True
        for kind, item in self.items:
            if kind == "host":
                run_plain((item,))
                if ok:
                    ok = self._pin(item, capture)
            elif not ok:
                run_plain(item.steps)
            elif capture:
                ok = self._capture(item, run_plain, cupy)
                if ok:
                    item.graph.launch(stream=stream)
                    _check(item)
            elif _guards_hold(item):
                item.graph.launch(stream=stream)
                _apply(item)
                _check(item)
            else:
                ok = False
                run_plain(item.steps)
                if self.captures >= MAX_CAPTURES:
                    self.error = (f"the guards failed after each of {MAX_CAPTURES} captures (a leaf's array or "
                                  f"gradient replaced between calls)")
        self.live = ok
        if not ok:
            self._drop()
        elif not capture:  # the graphs paid off: a key that changes now and then (an epoch's learning rate) may
            self.captures = 0  # capture again later
        return ok

    def _begin_capture(self, cupy, args_tensors):
        _retire(self.pool)  # a capture that an error ended (a value check, the step's own code) left one
        _sweep()
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pins = {}
        with cupy.cuda.using_allocator(self.pool.malloc):
            self.workspace = cupy.empty(gemm_capture.WORKSPACE_BYTES, cupy.uint8)
            # the step's inputs, copied in before each launch: the graphs read them there
            self.buffers = [cupy.empty_like(t.data) if is_cupy(t.data) else t.data.copy() for t in args_tensors]

    def _drop(self):
        for kind, item in self.items:
            if kind == "segment":
                item.graph = None
        _retire(self.pool)
        self.pool = self.stream = self.workspace = self.buffers = self.pins = None

    def __del__(self):  # a program dropped from the cache: its pool may hold the arrays of live .grads
        try:
            _retire(self.pool)
        except (AttributeError, TypeError):  # never captured, or the interpreter is shutting down
            pass

    def _capture(self, seg, run_plain, cupy):
        before = [_tstate(t) for t in seg.tensors], [_nstate(n) for n in seg.nodes]
        # the host generators too: a failed capture has drawn from them (a draw made on the host, then copied)
        rng = [_random.get_rng_state("cpu", rank_stream=r) for r in (False, True)]
        seg.guard = [(t, t.data, getattr(t, "_hooks", None)) for t in seg.leaves]
        seg.keys = [(ops, _graph_key(ops)) for run, ops in seg.steps if run is replay_call]
        seg.grads = [(t, None if t.grad is None else t.grad.data) for t in seg.guarded]
        checks = []
        GRAPH_CAPTURE.workspace, GRAPH_CAPTURE.checks = self.workspace, checks
        try:
            if any(key is None for _, key in seg.keys):
                raise RuntimeError("a call in the step's device work now runs Python a graph cannot repeat "
                                   "(its graph_key is None: e.g. an optimizer no longer capturable)")
            with cupy.cuda.using_allocator(self.pool.malloc), self.stream, _no_host_copies(cupy):
                self.stream.begin_capture(mode=_RELAXED)  # the pool may grow (cudaMalloc) during capture
                try:
                    run_plain(seg.steps)
                except BaseException:
                    try:
                        self.stream.end_capture()
                    except Exception:  # noqa: BLE001, S110 - the capture is invalid anyway; the first error counts
                        pass
                    raise
                seg.graph = self.stream.end_capture()
        except Exception as e:  # noqa: BLE001 - any failure to capture: this program replays without graphs
            self.error = f"{type(e).__name__}: {e}"
            _restore(seg, *before)
            for r, state in zip((False, True), rng):
                _random.set_rng_state(state, "cpu", rank_stream=r)
            run_plain(seg.steps)
            return False
        finally:
            GRAPH_CAPTURE.workspace = GRAPH_CAPTURE.checks = None
        seg.checks = checks
        seg.diff = _diff(seg, *before)
        return True

    def _pin(self, step, capture):
        """After a host step: its result tensors on the arrays the capture saw (a later segment reads those): a
        new tensor's array is copied there; another tensor (one that lives on elsewhere) must hold the same one."""
        run, operands = step
        if run is replay_call:
            results, new = tensors_in(operands[3]), {id(t) for t in operands[5]}
        elif run is replay_forward:
            results = operands[4]
            new = {id(t) for t in results}
        else:
            return True
        for t in results:
            if not is_cupy(t.data):
                continue
            if capture:
                self.pins[id(t)] = (t.data, id(t) in new)
                continue
            cap, copy = self.pins.get(id(t), (None, False))
            if cap is None or cap.shape != t.data.shape or cap.dtype != t.data.dtype:
                return False
            if t.data is not cap:
                if not copy:
                    return False
                cap[...] = t.data
                t.data = cap
        return True

    def own(self, t):
        """A tensor of the step's result that the step made, as the caller gets it: on a copy of its array, which
        the next launch overwrites."""
        return _make(t.data.copy() if id(t) in self.made and is_cupy(t.data) else t.data, t._device)


class HostCopy(RuntimeError):
    """Host data copied to the GPU inside a capture."""


@contextlib.contextmanager
def _no_host_copies(cupy):
    """Refuse ``cupy.asarray``/``cupy.array`` of host data (NumPy arrays, Python numbers) while capturing: the graph
    would copy from that host memory again at every launch, freed or changed by then (a random draw made on the
    host, a staging buffer reused). The segment then replays without a graph."""
    saved = cupy.asarray, cupy.array

    def refusing(make):
        def call(obj, *args, **kwargs):
            if not isinstance(obj, cupy.ndarray):
                raise HostCopy(f"a copy of host data ({type(obj).__name__}) to the GPU inside the step's device work")
            return make(obj, *args, **kwargs)
        return call
    cupy.asarray, cupy.array = refusing(saved[0]), refusing(saved[1])
    try:
        yield
    finally:
        cupy.asarray, cupy.array = saved


# ---- splitting -----------------------------------------------------------------------------------------------------
def _unfused(steps):
    """The steps with each fused run (``FusedRun``) as the forwards it runs: what they touch."""
    for step in steps:
        if isinstance(step[0], FusedRun):
            yield from step[0].steps
        else:
            yield step


def _made(steps):
    made = set()
    for run, operands in _unfused(steps):
        if run is replay_forward:
            made.update(id(t) for t in operands[4])
        elif run is replay_alias:
            made.add(id(operands[1]))
        elif run is replay_call:
            made.update(id(t) for t in tensors_in(operands[3]))
    return made


def _split(steps, made):
    """[(kind, item)]: ("segment", a _Segment) or ("host", a step). ``made``: the ids of the tensors the program
    makes or takes as inputs (not leaves: no guard)."""
    items, run_of = [], []

    def close():
        if any(run not in (replay_release, replay_alias, replay_requires_grad) for run, _ in run_of):  # device work
            items.append(("segment", _segment(tuple(run_of), made)))
        else:
            items.extend(("host", s) for s in run_of)
        run_of.clear()
    for step in steps:
        run, operands = step
        device = (run is replay_forward and not operands[5]) or (
            run in (replay_alias, replay_release, replay_requires_grad)) or (
            isinstance(run, FusedRun) and run.device) or (
            run is replay_backward and not _hook_leaves(operands[0])) or (
            run is replay_call and _graph_key(operands) is not None)
        if device:
            run_of.append(step)
        else:
            close()
            items.append(("host", step))
    close()
    return items


def _graph_key(operands):
    """A recorded call's ``graph_key`` now: None for one that runs on the host."""
    return graph_key(*operands[:3])


def _touched(operands, kind):
    """The tensors whose .grad a recorded call ``kind`` ("drops": zero_grad; "reads": an optimizer's step), as its
    ``gradient_use`` says, else none."""
    said = gradient_use(*operands[:3])
    return list(said[1]) if said is not None and said[0] == kind else []


def _hook_leaves(plan):
    """The leaves of a backward plan that have post-accumulate-grad hooks now."""
    return [t for t in _plan_leaves(plan) if id(t) in engine._post_accumulate_hooks]


def _plan_leaves(plan):
    """The leaves a backward plan gives gradients: its roots that are leaves, and those its nodes deliver to."""
    return [leaf for _, leaf in plan.roots if leaf is not None] + plan.delivered()


def _segment(steps, made):
    tensors, nodes, delivers, dropped, dropped_first, read_first = {}, {}, {}, set(), set(), {}
    for run, operands in _unfused(steps):
        if run is replay_forward:
            ts, ns = tensors_in(operands[3]) + list(operands[4]), [operands[1]]
        elif run is replay_alias or run is replay_requires_grad:  # a switch: Python only, made again by the diff
            ts, ns = [t for t in operands if isinstance(t, Tensor)], []
        elif run is replay_release:
            ts, ns = list(operands[0]), list(operands[1])
        elif run is replay_call:  # device work only (graph_key); its arrays are guarded by its key
            ts, ns = _touched(operands, "drops"), []  # zero_grad: its .grad = None made again by the diff
            dropped.update(id(t) for t in ts)
            # an optimizer's parameters: guarded as leaves, and a .grad it reads that the segment has not made or
            # dropped must be the array the capture read
            read = _touched(operands, "reads")
            read_first.update((id(t), t) for t in read if id(t) not in delivers and id(t) not in dropped)
            ts += read + tensors_in(operands[3])  # a draw's result: its array in the diff, as an op's output
        else:  # backward
            plan = operands[0]
            leaves = _plan_leaves(plan)
            # a gradient this segment dropped before its first delivery: None there on every launch, as at
            # capture (one delivered before the drop adds to what the step found: guarded)
            dropped_first.update(id(t) for t in leaves if id(t) in dropped and id(t) not in delivers)
            delivers.update((id(t), t) for t in leaves)
            ts, ns = tensors_in(operands[1]) + leaves, plan.nodes()
        tensors.update((id(t), t) for t in ts)
        nodes.update((id(n), n) for n in ns if n is not None)
    leaves = [t for k, t in tensors.items() if k not in made]
    guarded = {k: t for k, t in delivers.items() if k not in dropped_first}
    guarded.update(read_first)  # read as the segment found it, whatever the segment does to it later
    guarded = list(guarded.values())
    return _Segment(steps, list(tensors.values()), list(nodes.values()), leaves, list(delivers.values()), guarded)


# ---- Python state ----------------------------------------------------------------------------------------------------
def _tstate(t):
    return tuple(getattr(t, name, _UNSET) for name in _SLOTS)


def _nstate(node):
    return tuple(getattr(node, name, _UNSET) for name in _NODE_SLOTS), dict(vars(node))


def _set(obj, name, value):
    if value is _UNSET:
        if hasattr(obj, name):
            delattr(obj, name)
    else:
        setattr(obj, name, value)


def _set_node(node, state):
    for name, value in zip(_NODE_SLOTS, state[0]):
        _set(node, name, value)
    v = vars(node)
    v.clear()
    v.update(state[1])


def _restore(seg, tensors_before, nodes_before):
    for t, state in zip(seg.tensors, tensors_before):
        for name, value in zip(_SLOTS, state):
            _set(t, name, value)
    for node, state in zip(seg.nodes, nodes_before):
        _set_node(node, state)


def _diff(seg, tensors_before, nodes_before):
    """What the segment's steps changed in Python, to be made again after each launch: attributes of its tensors
    (and the array of each new .grad), and the state of its nodes (what their forwards saved)."""
    tensors, grads = [], []
    for t, before in zip(seg.tensors, tensors_before):
        after = _tstate(t)
        changed = tuple((name, a) for name, a, b in zip(_SLOTS, after, before) if a is not b)
        if changed:
            tensors.append((t, changed))
        g = after[1]
        if g is not None and g is not _UNSET and g is not before[1]:
            grads.append((g, g.data))
    nodes = []
    for node, (slots, d) in zip(seg.nodes, nodes_before):
        after = _nstate(node)
        if (any(a is not b for a, b in zip(after[0], slots)) or after[1].keys() != d.keys()
                or any(after[1][k] is not d[k] for k in d)):
            nodes.append((node, after))
    return tensors, grads, nodes


def _apply(seg):
    tensors, grads, nodes = seg.diff
    for t, changed in tensors:
        for name, value in changed:
            _set(t, name, value)
    for g, data in grads:
        g.data = data
    for node, state in nodes:
        _set_node(node, state)


def _guards_hold(seg):
    if any(_graph_key(ops) != key for ops, key in seg.keys):
        return False
    for t, data, hooks in seg.guard:
        if t.data is not data or getattr(t, "_hooks", None) is not hooks:
            return False
    for t, data in seg.grads:
        g = t.grad
        if (g is None) != (data is None) or (g is not None and g.data is not data):
            return False
    return not any(id(t) in engine._post_accumulate_hooks for t in seg.delivers)


def _check(seg):
    for flag, fail in seg.checks:
        if bool(flag):
            fail()
