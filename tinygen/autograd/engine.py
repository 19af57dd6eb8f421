"""The backward pass: walk the graph from the outputs to the leaves, calling each node's backward once.

Read this file to follow ``loss.backward()``:
  1. ``_toposort`` orders the nodes reachable from the outputs (iteratively: no recursion limit);
  2. each node, once all gradients flowing into it have been summed, calls its ``backward``;
  3. each returned gradient is brought back to the shape and dtype of the input it belongs to (``fit``: the
     single place where broadcasting is undone) and is either added to the buffer of the node that made that
     input, or delivered to a leaf's ``.grad``;
  4. unless ``retain_graph``, a node drops its saved tensors as soon as it has run.
The engine chooses the form of each backward (``_Plain`` / ``_Graph`` below). A plain ``backward()`` calls a node's
``array_backward`` where it has one (arrays in, arrays out: a fused kernel) and undoes broadcasting on arrays; with
``create_graph=True`` every node runs its differentiable ``backward`` and those ops are recorded, so the gradients
can be differentiated again.

Two hooks let code act while a backward() runs (``tinygen.nn.parallel`` uses them to start gradient all-reduces
as soon as gradients are ready): ``Tensor.register_post_accumulate_grad_hook`` (as PyTorch's) and
``queue_callback`` (a function to run once the backward has finished, before ``backward()`` returns). To look at
(or change) one tensor's gradient as it passes: ``Tensor.register_hook`` and ``Tensor.retain_grad``, as PyTorch's.

While ``tinygen.compile`` records a step, a plain ``backward()`` runs with a ``trace``: the engine appends each
node it visits, and the recorder keeps the steps taken to replay them without this walk (``run_plan`` in compile/steps.py,
which delivers gradients with ``deliver_to_leaf``, ``fit_array``, ``own_gradients`` and
``run_post_accumulate_hooks`` below, as ``_run`` does).
"""
import sys
import weakref

import numpy as np

from .. import tensor as _tensor
from ..tensor import Tensor, _make
from ..capture import CAPTURE, recording
from .function import Function, check_backward, checked_backward
from .grad_mode import ANOMALY, STATE


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate the gradients of ``tensors`` into the ``.grad`` of the leaves (or only of ``inputs``)."""
    if recording():  # tinygen.compile records it (as the steps the engine takes, see record_backward)
        return CAPTURE.recorder.record_backward(tensors, grad_tensors, retain_graph, create_graph, inputs)
    return _backward(tensors, grad_tensors, retain_graph, create_graph, inputs)


def _backward(tensors, grad_tensors, retain_graph, create_graph, inputs, trace=None):
    """``backward()`` itself. ``trace``: a list the engine appends ``(node, ran)`` to for every node of the graph in
    the order it visits them (``ran``: it received a gradient and its backward ran): how tinygen.compile learns
    the steps of a backward to replay them without the walk."""
    tensors, grads = _roots(tensors, grad_tensors)
    if retain_graph is None:
        retain_graph = create_graph
    with_callbacks(_accumulate_gradients, tensors, grads, retain_graph, create_graph, inputs, trace)


def _accumulate_gradients(tensors, grads, retain_graph, create_graph, inputs, trace):
    if inputs is None:
        _run(tensors, grads, retain_graph, create_graph, None, trace)
        return
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    results = _run(tensors, grads, retain_graph, create_graph, inputs)
    for t, g in zip(inputs, results):
        if g is not None:
            _accumulate(t, g, create_graph)
            if t.grad_fn is None and id(t) in _post_accumulate_hooks:
                _call_post_accumulate_hooks(t)


def with_callbacks(fn, *args):
    """Run ``fn(*args)`` as a backward pass: ``queue_callback`` works inside it, and the functions it queues run
    once it has returned."""
    global _callbacks
    outer, _callbacks = _callbacks, []
    try:
        fn(*args)
        queued = _callbacks
    finally:
        _callbacks = outer
    for fn in queued:
        fn()


# ---- hooks ---------------------------------------------------------------------------------------------------------
# id(leaf) -> a weak reference to the leaf. The hooks live on the leaf (``leaf._hooks``), so a hook that refers to
# its own leaf (DistributedDataParallel's do) makes a cycle the garbage collector frees, not a leak through this dict.
_post_accumulate_hooks = {}
_callbacks = None  # while a backward() runs: the functions queued to run when it has finished


class RemovableHandle:
    """Returned by a hook registration; ``remove()`` unregisters the hook (``leaf``: (table, id, slot) of a leaf's
    hook list, whose table entry goes with its last hook, so that backwards stop counting the leaf's edges)."""

    def __init__(self, hooks, hook, leaf=None):
        self._hooks, self._hook, self._leaf = hooks, hook, leaf

    def remove(self):
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)
        if not self._hooks and self._leaf is not None:
            registry, key, slot = self._leaf
            ref = registry.get(key)
            tensor = ref() if ref is not None else None
            if tensor is not None and getattr(tensor, slot, None) is self._hooks:  # (not a new tensor of that id)
                del registry[key]


def register_post_accumulate_grad_hook(tensor, hook):
    """Call ``hook(tensor)`` during a backward(), as soon as this backward has accumulated all its gradient into
    the leaf's ``.grad`` (once per backward that reaches the leaf; not for ``autograd.grad``, which accumulates
    nothing). The hook may read ``tensor.grad`` and may replace it or set it to None (an optimizer's ``step()`` and
    ``zero_grad()`` in the hook: PyTorch's optimizer in backward), but must not write into its array: until the
    backward returns, that array may be shared with the graph. Returns a handle with ``remove()``."""
    if not isinstance(tensor, Tensor) or tensor.grad_fn is not None or not tensor._requires_grad:
        raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor that requires grad accumulates "
                           "a gradient (got a tensor made by an op, or one without requires_grad)")
    if not callable(hook):
        raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
    return _add_leaf_hook(_post_accumulate_hooks, tensor, "_hooks", hook)


def _add_leaf_hook(registry, tensor, slot, hook):
    """Add ``hook`` to the list a leaf keeps in ``slot``; ``registry`` (id -> a weak reference to the leaf) says
    which leaves have such a list. Returns its handle."""
    key = id(tensor)
    if key not in registry:  # the entry goes when the tensor does (an id can be reused afterwards)
        # the dict is bound here: at interpreter exit the module's globals may already be gone
        forget = lambda _, k=key, registry=registry: registry.pop(k, None)  # noqa: E731
        registry[key] = weakref.ref(tensor, forget)
        setattr(tensor, slot, [])
    hooks = getattr(tensor, slot)
    hooks.append(hook)
    return RemovableHandle(hooks, hook, (registry, key, slot))


def queue_callback(fn):
    """Run ``fn()`` when the backward() or grad() now running has finished (every ``.grad`` final and owned),
    before it returns. Only callable during one, typically from a hook."""
    if _callbacks is None:
        raise RuntimeError("queue_callback: no backward() or grad() is running (call it from a hook during one)")
    _callbacks.append(fn)


# Gradient hooks on tensors (``Tensor.register_hook``, ``retain_grad``). A tensor made by an op keeps them on its
# node (``node._grad_hooks``: output index -> hooks; ``node._grad_retained``: output index -> a weak reference to the
# tensor), so they go with the graph; a leaf keeps its own (``leaf._grad_hooks``), and _leaf_hooks maps its id to a
# weak reference, as _post_accumulate_hooks does (a hook that refers to its leaf makes a cycle, not a leak).
_leaf_hooks = {}
_any_node_hooks = False  # set once a node has been given one: until then the engine looks at no node's


def register_hook(tensor, hook):
    """Call ``hook(grad)`` each time a backward computes this tensor's gradient: for a tensor made by an op, its
    whole gradient (summed over its uses) before the op's backward takes it; for a leaf, the sum of what the
    backward delivers to it, before it is added into ``.grad``. ``hook`` may return a tensor of the same shape to
    use instead. As PyTorch's ``Tensor.register_hook``; returns a handle with ``remove()``. tinygen.compile refuses
    a step whose backward reaches a hooked tensor (its replay would not call the hooks)."""
    global _any_node_hooks
    _check_hookable(tensor, "register_hook")
    if not callable(hook):
        raise TypeError(f"register_hook: hook must be callable, got {type(hook).__name__}")
    if tensor.grad_fn is None:
        return _add_leaf_hook(_leaf_hooks, tensor, "_grad_hooks", hook)
    hooks = tensor.grad_fn.__dict__.setdefault("_grad_hooks", {}).setdefault(tensor._out_idx, [])
    hooks.append(hook)
    _any_node_hooks = True
    return RemovableHandle(hooks, hook)


def retain_grad(tensor):
    """Keep this tensor's gradient in its ``.grad`` after each backward, though an op made it (summed over
    backwards, as a leaf's is), after its hooks have run; a leaf keeps its own already. As PyTorch's."""
    global _any_node_hooks
    _check_hookable(tensor, "retain_grad")
    if tensor.grad_fn is not None:
        tensor.grad_fn.__dict__.setdefault("_grad_retained", {})[tensor._out_idx] = weakref.ref(tensor)
        _any_node_hooks = True


def _retains_grad(tensor):
    kept = None if tensor.grad_fn is None else tensor.grad_fn.__dict__.get("_grad_retained")
    return kept is not None and tensor._out_idx in kept and kept[tensor._out_idx]() is tensor


def _check_hookable(tensor, what):
    if not tensor._requires_grad:
        raise RuntimeError(f"{what}: the tensor does not require grad, so no backward computes its gradient "
                           f"(set requires_grad=True on a leaf, or use a tensor computed from one)")


def _hooked(hooks, g, where):
    """``g`` (a gradient tensor) through ``hooks``: each may return a tensor of the same shape to use instead."""
    for hook in tuple(hooks):
        new = hook(g)
        if new is None:
            continue
        if not isinstance(new, Tensor) or tuple(new.shape) != tuple(g.shape):
            got = f"shape {tuple(new.shape)}" if isinstance(new, Tensor) else type(new).__name__
            raise RuntimeError(f"a hook of {where} returned {got}; a hook returns None or a tensor of the "
                               f"gradient's shape {tuple(g.shape)}")
        g = new
    return g


def _node_grads_hooked(node, grads, create_graph):
    """A node's gradients through the hooks of the tensors it made, each kept in ``.grad`` where retained."""
    d = node.__dict__
    hooks, kept = d.get("_grad_hooks"), d.get("_grad_retained")
    if not hooks and not kept:
        return grads
    for idx, g in enumerate(grads):
        if g is None:
            continue
        if hooks and hooks.get(idx):
            g = grads[idx] = _hooked(hooks[idx], g, f"the output of {node.name()}")
        t = kept[idx]() if kept and idx in kept else None
        if t is not None:
            got = g if create_graph else _make(g.data.copy(), g._device)  # (the gradient flows on: a copy)
            t._grad = got if t._grad is None else t._grad + got
    return grads


def _leaf_hooks_of(leaf):
    """A leaf's gradient hooks, or None (none registered, or all removed)."""
    if id(leaf) not in _leaf_hooks:
        return None
    return leaf._grad_hooks or None


def has_tensor_hooks(roots):
    """Whether a backward from ``roots`` reaches a tensor with gradient hooks or a retained gradient (which
    tinygen.compile's replay would not run)."""
    if not _any_node_hooks and not _leaf_hooks:
        return False
    nodes = _toposort([t.grad_fn for t in roots if t.grad_fn is not None])
    for node in nodes:
        if node.__dict__.get("_grad_hooks") or node.__dict__.get("_grad_retained"):
            return True
    leaves = [t for t in roots if t.grad_fn is None] + [e[0] for n in nodes for e in n.next_edges
                                                        if e is not None and not isinstance(e[0], Function)]
    return any(_leaf_hooks_of(t) for t in leaves)


def _call_post_accumulate_hooks(leaf):
    for hook in tuple(leaf._hooks):
        hook(leaf)


def run_post_accumulate_hooks(leaves, direct):
    """The post-accumulate-grad hooks of those ``leaves`` that have received a gradient in this backward (keys of
    ``direct``), with the hooks registered now (hooks may come and go between backwards)."""
    if _post_accumulate_hooks:
        for leaf in leaves:
            if leaf in direct and id(leaf) in _post_accumulate_hooks:
                _call_post_accumulate_hooks(leaf)


def _hooked_leaf_edges(roots, nodes):
    """For each leaf with post-accumulate or gradient hooks: how many edges of this graph may still deliver a
    gradient to it."""
    counts = {}
    targets = [t for t in roots if t.grad_fn is None]
    targets += [e[0] for node in nodes for e in node.next_edges if e is not None]
    for t in targets:
        if not isinstance(t, Function) and (id(t) in _post_accumulate_hooks or _leaf_hooks_of(t)):
            counts[t] = counts.get(t, 0) + 1
    return counts


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Return d(outputs)/d(inputs) as a tuple, without touching any ``.grad``.

    ``grad_outputs`` weights each output (needed for non-scalar outputs). With ``create_graph=True`` the returned
    gradients have a graph and can be differentiated again (gradient penalties, Hessian-vector products).
    """
    if recording():  # tinygen.compile replays grad() as one call (capture.py)
        return CAPTURE.recorder.record_call(_grad, (outputs, inputs, grad_outputs, retain_graph, create_graph,
                                                    allow_unused), {}, builds_graph=create_graph)
    return _grad(outputs, inputs, grad_outputs, retain_graph, create_graph, allow_unused)


def _grad(outputs, inputs, grad_outputs, retain_graph, create_graph, allow_unused):
    outputs, grads = _roots(outputs, grad_outputs)
    single = isinstance(inputs, Tensor)
    inputs = (inputs,) if single else tuple(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or not t._requires_grad:
            raise RuntimeError(f"grad: input {i} does not require grad")
    if retain_graph is None:
        retain_graph = create_graph
    results = []  # (run as a backward pass: queue_callback works inside it too)
    with_callbacks(lambda: results.extend(_run(outputs, grads, retain_graph, create_graph, inputs)))
    for i, g in enumerate(results):
        if g is None and not allow_unused:
            raise RuntimeError(f"grad: input {i} (shape {inputs[i].shape}) was not used in computing the outputs; "
                               f"pass allow_unused=True to get None for it")
    return tuple(results)


def _roots(tensors, grad_tensors):
    tensors = (tensors,) if isinstance(tensors, Tensor) else tuple(tensors)
    if grad_tensors is None or isinstance(grad_tensors, Tensor):
        grad_tensors = (grad_tensors,) * len(tensors) if len(tensors) == 1 or grad_tensors is None else None
        if grad_tensors is None:
            raise ValueError("one gradient per output is needed")
    grad_tensors = tuple(grad_tensors)
    if len(grad_tensors) != len(tensors):
        raise ValueError(f"got {len(tensors)} outputs but {len(grad_tensors)} gradients")
    grads = []
    for i, (t, g) in enumerate(zip(tensors, grad_tensors)):
        if not t._requires_grad:
            raise RuntimeError(f"element {i} of the outputs does not require grad and has no grad_fn "
                               f"(was it computed under no_grad, or from tensors without requires_grad=True?)")
        if g is None:
            if t.data.size != 1:
                raise RuntimeError(f"backward() of a non-scalar output of shape {t.shape} needs a gradient: "
                                   f"pass gradient= of that shape (a scalar loss needs none)")
            g = _make(t.xp.ones(t.shape, dtype=t.dtype), t._device)
        else:
            if not isinstance(g, Tensor):
                g = _tensor.as_tensor(g, dtype=t.dtype, device=t._device)
            if g.shape != t.shape:
                raise RuntimeError(f"gradient has shape {g.shape} but the output has shape {t.shape}")
            if g._device != t._device:
                raise RuntimeError(f"gradient is on {g._device} but the output is on {t._device}")
        grads.append(g)
    return tensors, grads


def _toposort(roots):
    """Nodes reachable from ``roots``, each after every node that consumes its output (outputs first)."""
    order, seen = [], set()
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(root.next_edges))]
        while stack:
            node, edges = stack[-1]
            for e in edges:
                if e is not None and isinstance(e[0], Function) and e[0] not in seen:
                    seen.add(e[0])
                    stack.append((e[0], iter(e[0].next_edges)))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order


class _Plain:
    """A plain backward(): a node's ``array_backward`` runs where it has one (on the gradients' arrays, its
    results wrapped again), else its differentiable ``backward`` under no_grad; broadcasting is undone on arrays."""
    graph = False

    @staticmethod
    def call(node, grads):
        fn = node.array_backward
        if fn is not None:
            return _run_backward(node, fn, [g.data for g in grads])
        return _run_backward(node, node.backward, grads)

    @staticmethod
    def as_gradient(g, node):
        if isinstance(g, Tensor):
            return g
        return _make(gradient_array(g, node), node.device)

    @staticmethod
    def fit(g, shape, dtype, xp):
        d = fit_array(g.data, shape, dtype, xp)
        return g if d is g.data else _make(d, g._device)

    @staticmethod
    def zeros(node, shape, dtype):
        return _make(node.xp.zeros(shape, dtype=dtype), node.device)


def gradient_array(g, node):
    """What a backward returned for one input (a tensor, or an array: NumPy scalars, CuPy arrays), as an array of
    its node's device."""
    if isinstance(g, Tensor):
        return g.data
    return g if type(g) is np.ndarray else node.xp.asarray(g)


def fit_array(d, shape, dtype, xp):
    """A plain gradient's array brought to the shape and dtype of the input it belongs to."""
    if d.shape != shape:
        d = xp.broadcast_to(d, shape) if _expands(d.shape, shape) else sum_to_array(d, shape)
    if d.dtype != dtype:
        d = d.astype(dtype)
    return d


class _Graph:
    """create_graph=True: gradients are tensors and every node runs its differentiable ``backward``, so the
    gradient has a graph of its own."""
    graph = True

    @staticmethod
    def call(node, grads):
        return _run_backward(node, node.backward, grads)

    @staticmethod
    def as_gradient(g, node):
        if isinstance(g, Tensor):
            return g
        raise RuntimeError(f"{node.name()} returned a raw array as gradient, which cannot be differentiated "
                           f"again; create_graph=True needs a backward written with tinygen ops")

    @staticmethod
    def fit(g, shape, dtype, xp):
        if g.data.shape != shape:
            g = g.expand(shape) if _expands(g.data.shape, shape) else g.sum_to_size(shape)
        return g if g.data.dtype == dtype else g.to(dtype)

    @staticmethod
    def zeros(node, shape, dtype):
        return _make(node.xp.zeros(shape, dtype=dtype), node.device)



def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def _expands(shape, target):
    """True when a gradient of ``shape`` is broadcast up to ``target``, False when it is summed down to it."""
    size, n = _numel(shape), _numel(target)
    if size and n:
        return size < n
    return np.broadcast_shapes(shape, target) == tuple(target)  # an empty side: sizes cannot tell (1 vs 0)


def sum_to_array(a, shape):
    """Sum array ``a`` over the axes that broadcasting added or stretched to reach its shape from ``shape``: the
    inverse of broadcasting. Always a fresh array (two reductions, no reshape view), so a leaf may own it."""
    lead = a.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"sum_to: cannot sum shape {a.shape} to the larger shape {shape}")
    out = a.sum(axis=tuple(range(lead))) if lead else a
    stretched = tuple(i for i, s in enumerate(shape) if s == 1 and out.shape[i] != 1)
    if stretched:
        out = out.sum(axis=stretched, keepdims=True)
    return out if out is not a else a.copy()


def _run_backward(node, fn, grads):
    if ANOMALY.enabled:
        return checked_backward(node, fn, grads)
    return fn(node, *grads)


def _run(roots, root_grads, retain_graph, create_graph, inputs, trace=None):
    """The engine. With ``inputs`` it returns their gradients; without, it accumulates into every leaf."""
    mode = _Graph if create_graph else _Plain
    capture = None
    if inputs is not None:  # which leaves / node outputs to collect, and which nodes lead to them
        capture = {}
        for i, t in enumerate(inputs):
            capture[(t, 0) if t.grad_fn is None else (t.grad_fn, t._out_idx)] = i
        results = [None] * len(inputs)

    nodes = _toposort([t.grad_fn for t in roots if t.grad_fn is not None])
    needed = None
    if capture is not None:
        needed = set()
        for node in reversed(nodes):  # inputs-first: a node is needed if an edge reaches a capture or a needed node
            for e in node.next_edges:
                if e is not None and (e in capture or e[0] in needed):
                    needed.add(node)
                    break

    hooked = _hooked_leaf_edges(roots, nodes) if (_post_accumulate_hooks or _leaf_hooks) and capture is None \
        else None
    held = {}  # a leaf with gradient hooks: the sum of what it has been delivered so far, until its last edge

    def settle(edges):  # these edges have delivered (or never will): a hooked leaf with none left runs its hooks
        for e in edges:
            if e is not None and e[0] in hooked:
                left = hooked[e[0]] = hooked[e[0]] - 1
                if left == 0:
                    leaf = e[0]
                    if leaf in held:  # its gradient hooks, on the whole of it, then into .grad
                        deliver_to_leaf(leaf, _hooked(_leaf_hooks_of(leaf) or (), held.pop(leaf), "a leaf"),
                                        direct, create_graph)
                    run_post_accumulate_hooks((leaf,), direct)

    buffers = {}
    direct = {}  # leaf -> True while its .grad is still the very array a backward returned (may be shared)

    def deliver(target, idx, g):
        if capture is not None:
            key = (target, idx)
            if key in capture:  # (an op's output as it arrives, before its tensor's hooks: as PyTorch)
                j = capture[key]
                results[j] = g if results[j] is None else results[j] + g
        if isinstance(target, Function):
            buf = buffers.get(target)
            if buf is None:
                buf = buffers[target] = [None] * len(target.out_meta)
            buf[idx] = g if buf[idx] is None else buf[idx] + g
        elif capture is None:
            if hooked and target in hooked and _leaf_hooks_of(target):
                held[target] = g if target not in held else held[target] + g
            else:
                deliver_to_leaf(target, g, direct, create_graph)

    prev = STATE.grad_enabled
    STATE.grad_enabled = create_graph
    try:
        for t, g in zip(roots, root_grads):
            deliver(*((t, 0) if t.grad_fn is None else (t.grad_fn, t._out_idx)), g)
        if hooked:
            settle([(t, 0) for t in roots if t.grad_fn is None])
        for node in nodes:
            grads = buffers.pop(node, None)
            if trace is not None:
                trace.append((node, grads is not None))
            if grads is None:
                if hooked:
                    settle(node.next_edges)
                continue
            if needed is not None and node not in needed:
                if not retain_graph:
                    node.release()
                continue
            if _any_node_hooks:
                grads = _node_grads_hooked(node, grads, create_graph)
            if len(grads) > 1:  # several outputs: a missing gradient is zero
                grads = [g if g is not None else mode.zeros(node, s, d) for g, (s, d) in zip(grads, node.out_meta)]
            out = mode.call(node, grads)
            if type(out) is not tuple:
                out = (out,)
            edges = node.next_edges
            if len(out) != len(edges):
                raise RuntimeError(f"{node.name()} returned {len(out)} gradients, but its forward took "
                                   f"{len(edges)} arguments (return None for arguments without a gradient)")
            if ANOMALY.enabled:
                check_backward(node, out)
            for e, g in zip(edges, out):
                if e is not None and g is not None:
                    target, idx = e
                    if isinstance(target, Function):
                        shape, dtype = target.out_meta[idx]
                    else:
                        shape, dtype = target.data.shape, target.data.dtype
                    deliver(target, idx, mode.fit(mode.as_gradient(g, node), shape, dtype, node.xp))
            if hooked:
                settle(edges)
            if not retain_graph:
                node.release()
        if capture is not None and _leaf_hooks:  # a captured leaf's gradient, through its hooks
            for (target, _), j in capture.items():
                if results[j] is not None and not isinstance(target, Function) and _leaf_hooks_of(target):
                    results[j] = _hooked(_leaf_hooks_of(target), results[j], "a leaf")
    finally:
        STATE.grad_enabled = prev

    taken = {id(g.data) for g in root_grads}
    if capture is None:
        own_gradients(direct, taken)
        return None
    return [None if g is None else _unshared(g, taken) for g in results]


def deliver_to_leaf(leaf, g, direct, create_graph):
    """Add the gradient ``g`` into ``leaf.grad``. ``direct`` (one dict per backward) marks the leaves whose .grad
    is still the very array a backward returned (maybe shared, maybe read-only): never added into in place."""
    if leaf._grad is None:
        leaf._grad = g
        direct[leaf] = True
    elif direct.get(leaf):
        if create_graph or g._requires_grad or not _sole_owner(leaf):
            leaf._grad = leaf._grad + g
        else:  # the first gradient is nobody else's: add in place, as PyTorch's AccumulateGrad does
            leaf._grad.data += g.data
        direct[leaf] = False
    else:
        _accumulate(leaf, g, create_graph)
        direct[leaf] = False


def _sole_owner(leaf):
    """Whether ``leaf.grad`` and its array are referenced by nothing but the leaf (CPython's reference counts; a
    NumPy array that is no view, writable): then adding into it in place changes nothing anyone else can see."""
    grad = leaf._grad
    a = grad.data
    # the references: leaf._grad and ``grad`` to the tensor, the tensor and ``a`` to the array, plus each call's own
    return (type(a) is np.ndarray and a.base is None and a.flags.writeable and grad.grad_fn is None
            and sys.getrefcount(grad) == 3 and sys.getrefcount(a) == 3)


def own_gradients(direct, taken):
    """At the end of a backward: a gradient handed over as-is may be shared (the same array given to two inputs,
    a view of the upstream gradient, the user's own gradient array: ids in ``taken``): copy those, so that a .grad
    never aliases anything else."""
    for leaf, is_direct in direct.items():
        if is_direct and leaf._grad is not None:  # None: a hook took it (an optimizer step and zero_grad in backward)
            leaf._grad = _unshared(leaf._grad, taken)


def _unshared(g, taken):
    if g.data.base is not None or id(g.data) in taken:  # the copy keeps the layout (a channels-last weight's)
        g = g.clone() if g._requires_grad else _make(g.data.copy(order="K"), g._device)
    taken.add(id(g.data))
    return g


def _accumulate(leaf, g, create_graph):
    """leaf.grad += g: in place for a plain gradient, out of place when either carries a graph."""
    if leaf._grad is None:
        leaf._grad = _make(g.data.copy(order="K"), g._device) if not g._requires_grad else g
    elif create_graph or leaf._grad._requires_grad or g._requires_grad:
        leaf._grad = leaf._grad + g
    else:
        leaf._grad.data += g.data


def _tensor_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (see ``tinygen.autograd.backward``)."""
    backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs)


Tensor.backward = _tensor_backward  # the tensor module sits below autograd: the engine attaches the method
Tensor.register_post_accumulate_grad_hook = register_post_accumulate_grad_hook
Tensor.register_hook = register_hook
Tensor.retain_grad = retain_grad
Tensor.retains_grad = property(_retains_grad, doc="Whether retain_grad() keeps this non-leaf tensor's gradient.")
