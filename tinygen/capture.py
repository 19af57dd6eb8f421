"""The recorder hook of ``tinygen.compile``: the one place the core talks to a program being recorded.

While ``tinygen.compile`` records a step, ``CAPTURE.recorder`` holds its recorder; otherwise it is None and every
hook below is a single attribute test. The core reports to it at these places:

  * ``Function.apply`` reports every op called from the user's code (not the ops inside other ops);
  * functions marked ``@replayed`` (random draws, optimizer steps, ``zero_grad``, ...) and ``grad()`` are
    recorded as calls to make again on every replay;
  * ``backward()`` hands itself to ``record_backward``, which runs the engine with a ``trace`` (the engine
    appends the nodes it visits) and keeps the engine's steps to replay them without the walk;
  * setting a tensor's ``requires_grad`` (freezing a module for part of a step) or its ``.grad`` (``p.grad =
    None``) is recorded and set again on every replay (``note_requires_grad``, ``note_grad_set``);
  * an optimizer or a scheduler made inside the step is noted (``note_created``): a recorded call on it is
    refused, since a replay would keep using the one made when recording. A module made there is noted too: its
    attributes, set as it is made, are Python a replay would not run, so such a call runs eagerly, and the warning
    names the module;
  * reads of a tensor's value into Python (``.item()``, ``bool(t)``, ``.numpy()``, ...) are refused while
    recording (``refuse_host_read``): a replay could not repeat a decision taken on a value; so is a result
    whose shape depends on the values of a tensor that may change (``refuse_shape_from_values``).

``depth`` counts the recorded calls in progress, so what runs inside them is not recorded twice.
"""
import functools


class _Capture:
    __slots__ = ("recorder",)

    def __init__(self):
        self.recorder = None


CAPTURE = _Capture()


def recording():
    """True while user code of a step is being recorded (not inside a recorded call)."""
    rec = CAPTURE.recorder
    return rec is not None and not rec.depth


def replayed(fn=None, *, grads=None, graph_key=None, writes=None):
    """Mark a function whose effects a replay must repeat by calling it again with the same arguments (random
    draws, optimizer updates, in-place resets). Its tensor results are bound to the recorded ones.

    ``grads`` says which gradients a call touches, so that ``tinygen.compile`` can leave out a gradient nothing
    reads: ``grads(*args, **kwargs)`` returns ("reads", tensors) for a call that reads the ``.grad`` of those
    tensors only, ("drops", tensors) for one that sets their ``.grad`` to None unread, or None for one that may
    read any. Without ``grads``, a call may read any gradient.

    ``graph_key`` says whether a call may be captured in a CUDA graph with the device work around it
    (``compile/cuda_graph.py``): ``graph_key(*args, **kwargs)`` returns None when it may not (its Python does
    something a graph cannot repeat: counts steps on the host, makes state), else a value naming everything
    the captured kernels take from Python (hyper-parameters, the arrays of its state); a launch checks the key
    is still the same. Without ``graph_key``, a call runs on the host between graphs.
    ``writes`` says which tensors' arrays a call may change in place, so that ``tinygen.compile`` can run an op
    once for two calls on arrays the call between them leaves alone: ``writes(*args, **kwargs)`` returns those
    tensors (an optimizer step: its parameters), or None for a call that may change any. Without ``writes``, a
    call may change any."""
    if fn is None:
        return functools.partial(replayed, grads=grads, graph_key=graph_key, writes=writes)
    fn.gradient_use = grads  # on the function the recorder keeps
    fn.graph_key = graph_key
    fn.tensors_written = writes

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rec = CAPTURE.recorder
        if rec is None or rec.depth:
            return fn(*args, **kwargs)
        return rec.record_call(fn, args, kwargs)
    return wrapper


_REPLAYED_CODE = replayed(lambda: None).__code__


def is_replayed(fn):
    """Whether ``fn`` is a function ``@replayed`` returned (a replay calls it again)."""
    return getattr(fn, "__code__", None) is _REPLAYED_CODE


def gradient_use(fn, args, kwargs):
    """What a call of the ``@replayed`` function ``fn`` says of the gradients it touches (its ``grads``), or None
    (it may read any)."""
    use = getattr(fn, "gradient_use", None)
    return None if use is None else use(*args, **kwargs)


def tensors_written(fn, args, kwargs):
    """The tensors a call of the ``@replayed`` function ``fn`` says it may change in place (its ``writes``), or
    None (it may change any)."""
    writes = getattr(fn, "tensors_written", None)
    return None if writes is None else tuple(writes(*args, **kwargs))


def graph_key(fn, args, kwargs):
    """The ``graph_key`` of a call of ``fn`` (see ``replayed``): None for a call that runs on the host."""
    key = getattr(fn, "graph_key", None)
    return None if key is None else key(*args, **kwargs)


def refuse_host_read(tensor, what):
    """Raise while recording: the step reads a tensor's value into Python (``what``, e.g. ".item()")."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.refuse(tensor, what)


def refuse_shape_from_values(tensor, what):
    """While recording, ``tensor``'s values decide a result's shape (``what``: boolean-mask indexing): raise if
    they may differ on a replay (an input of the step or a tensor its ops made); a mask made from a host array
    (``note_host_mask``) becomes a guard of the program instead. A constant of the step passes."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.shape_from_values(tensor, what)


def note_host_mask(tensor, data):
    """``tensor`` is a boolean mask a recorded call made from the host array or list ``data``: a replay makes it
    again from what ``data`` holds then (a buffer of done flags refilled in place)."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.note_host_mask(tensor, data)


def note_alias(src, dst):
    """``dst`` was made from ``src``'s array without an op (``detach``, a copy): a replay repeats it."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.record_alias(src, dst)



def note_created(obj):
    """An object is being made by the step's own code. An optimizer or a scheduler: a replay would call the one made
    when recording, its state (momentum, a step count) carried over between calls, where eager makes a new one on
    every call, so the recorder refuses recorded calls on it. A module: named as made in the step."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.note_created(obj)


def note_grad_set(tensor, value):
    """``tensor.grad`` is being set to ``value`` by the step's own code (``p.grad = None`` before a backward): a
    replay sets it at the same point, so the backward after it accumulates as it did when recorded."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.record_grad_set(tensor, value)


def note_grad_read(tensor, grad):
    """The step's own code reads ``tensor.grad`` (``grad``, not None): if it passes it to an op, a call or a
    backward and the leaf holds another gradient after the call, a replay would use this one, so the recording
    refuses it."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.note_grad_read(tensor, grad)


def note_requires_grad(tensor, flag):
    """``tensor.requires_grad`` is being set to ``flag`` (a module frozen for part of a step): a replay sets it at
    the same point, so the ops after it see the same flags as when they were recorded."""
    rec = CAPTURE.recorder
    if rec is not None and not rec.depth:
        rec.record_requires_grad(tensor, flag)
