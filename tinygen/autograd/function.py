"""``Function``: the one way an op is defined. Its forward and backward live together in one class.

    class Exp(Function):
        save_output = True                 # backward may read the output as ``ctx.output``

        @staticmethod
        def forward(ctx, x):               # x is a Tensor; compute on its array with the device's module
            return ctx.xp.exp(x.data)      # return an array (or a Tensor, or a tuple of them)

        @staticmethod
        def backward(ctx, grad):           # grad is a Tensor; return one gradient per forward argument
            return grad * ctx.output       # written with tinygen ops, so it is itself differentiable

    y = Exp.apply(x)

The forward runs on raw arrays (fast, and no graph is recorded inside it). The backward is written with
differentiable tinygen ops, as Chainer does, so that with ``create_graph=True`` the gradient has a graph of its
own and can be differentiated again (double backward, WGAN-GP). Under a plain ``backward()`` it runs under
``no_grad``, where those ops cost little more than the array calls.

The node of the graph is the ``ctx`` object itself: ``y.grad_fn`` is the ``Exp`` instance that computed ``y``.

An op may also define ``array_backward(ctx, *grads)``: the same gradient computed on raw arrays (arrays in, arrays
out), typically through a fused kernel (``tinygen.kernels.get``). The engine, not the op, picks the form: a plain
``backward()`` calls ``array_backward`` where it exists, ``create_graph=True`` always calls ``backward``. So an op
never asks whether a graph of the gradient is being built; a user-defined Function with only ``backward`` works in
both cases.
"""
import os
import traceback

import numpy as _np

from ..backend import _modules, array_module
from ..tensor import Tensor, _make
from ..capture import CAPTURE
from .grad_mode import ANOMALY, STATE

_new = object.__new__
_ndarray = _np.ndarray
_RELEASED = object()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Function:
    """Base class of every op (built-in or user-defined). Subclasses define ``forward`` and ``backward``.

    Attributes of a node (the ``ctx``):
      next_edges  one entry per positional forward argument: None (no gradient needed), or (node, output index)
                  for a tensor made by an op, or (tensor, 0) for a leaf tensor that requires grad;
      out_meta    (shape, dtype) of each output, so the engine can shape incoming gradients;
      device      the device of the tensor arguments.
    """
    __slots__ = ("next_edges", "_saved", "_out_data", "out_meta", "device", "created_at", "__dict__")
    save_output = False  # set True when backward reads ``ctx.output``
    array_backward = None  # optional: the gradient on raw arrays, used by a plain backward() (see module docstring)
    # What tinygen.compile may assume of ``forward`` (compile/passes.py: ``reused_forwards``):
    forward_writes = ()  # the positions of the arguments whose arrays forward changes in place (BatchNorm's
    # running statistics); it changes no other array it is given
    reusable_forward = False  # True: its outputs and what it leaves on its node depend only on the arrays of its
    # tensor arguments, its other arguments and the requires_grad of its tensor arguments after the first, and it
    # changes nothing (no random draw, no state), so two calls on the same unchanged arrays may run it once
    # ... and of ``array_backward`` (``passes.with_gradients_in_place``), so that a compiled backward may reuse a
    # gradient's memory where nothing else can see it:
    fresh_gradients = False  # True: the arrays it returns are new, one per input, held by nothing else (or the
    # incoming gradient itself, when it was given as ``out``)
    backward_into_gradient = False  # True: ``array_backward(ctx, g, out=g)`` may write its result into g

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        backward = cls.__dict__.get("backward")
        while isinstance(backward, staticmethod):  # @staticmethod over @once_differentiable wraps twice
            backward = backward.__func__
        raw = getattr(backward, "_array_backward", None)
        if raw is not None:  # @once_differentiable: the backward is array code, so it is the array_backward
            cls.array_backward = staticmethod(raw)

    # ---- to be defined by subclasses -----------------------------------------------------------------------------
    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("a Function must define forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("a Function must define backward(ctx, *grads)")

    # ---- used inside forward / backward --------------------------------------------------------------------------
    def save_for_backward(self, *tensors):
        """Keep tensors (usually inputs) for backward; read them back as ``ctx.saved_tensors``."""
        self._saved = tensors

    @property
    def saved_tensors(self):
        saved = self._saved
        if saved is _RELEASED:
            raise RuntimeError(_released_message(self))
        return saved

    @property
    def output(self):
        """The forward output as a tensor connected to this node (so gradients through it are differentiable)."""
        data = self._out_data
        if data is _RELEASED or data is None:
            raise RuntimeError(_released_message(self) if data is _RELEASED else
                               f"{type(self).__name__}.backward reads ctx.output but the class does not set "
                               f"save_output = True")
        if STATE.grad_enabled:
            return _make(data, self.device, True, self, 0)
        return _make(data, self.device)

    @property
    def output_array(self):
        """The forward output as a raw array (for ``array_backward``)."""
        data = self._out_data
        if data is _RELEASED or data is None:
            self.output  # raises the matching error
        return data

    @property
    def xp(self):
        """The array module of this op's device (numpy or cupy)."""
        return _modules.get(self.device) or array_module(self.device)

    @property
    def needs_input_grad(self):
        edges = self.next_edges
        return tuple(e is not None for e in edges) if edges is not None else ()

    def name(self):
        return type(self).__name__.removesuffix("Function") + "Backward"

    def release(self):
        """Drop what was saved for backward (called by the engine unless retain_graph)."""
        if self._saved:
            self._saved = _RELEASED
        if self._out_data is not None:
            self._out_data = _RELEASED

    def __repr__(self):
        return f"<{self.name()}>"

    # ---- the dispatch path ---------------------------------------------------------------------------------------
    @classmethod
    def apply(cls, *args):
        """Run forward on the arguments and, when a gradient is needed, record this node in the graph."""
        rec = CAPTURE.recorder
        if rec is not None and not rec.depth:  # tinygen.compile is recording a step (autograd/capture.py)
            return rec.record_apply(cls, args)
        ctx = _new(cls)
        ctx._saved = ()
        ctx._out_data = None
        device = None
        needs = False
        for a in args:
            if isinstance(a, Tensor):
                d = a._device
                if device is None:
                    device = d
                elif d is not device:
                    raise RuntimeError(_device_message(cls, args))
                if a._requires_grad:
                    needs = True
        ctx.device = device
        try:
            if STATE.grad_enabled:
                STATE.grad_enabled = False
                try:
                    out = cls.forward(ctx, *args)
                finally:
                    STATE.grad_enabled = True
            else:
                needs = False
                out = cls.forward(ctx, *args)
        except ValueError as e:  # e.g. NumPy's broadcasting error, which names neither the op nor the tensors
            raise _value_error(cls, args, e) from None
        device = ctx.device  # forward may move the result (To)
        if ANOMALY.enabled:
            _check_forward(cls, ctx, out)
        if not needs and type(out) is _ndarray:  # the common case of an op outside a graph
            return _make(out, device)

        if type(out) is tuple:  # several outputs
            datas = tuple(o.data if isinstance(o, Tensor) else o for o in out)
            needs = needs and any(d.dtype.kind == "f" for d in datas)
            if not needs:
                return tuple(_make(d, device) for d in datas)
            ctx.next_edges = _edges(args)
            ctx.out_meta = tuple((d.shape, d.dtype) for d in datas)
            if cls.save_output:
                ctx._out_data = datas[0]
            return tuple(_make(d, device, d.dtype.kind == "f", ctx if d.dtype.kind == "f" else None, i)
                         for i, d in enumerate(datas))

        if type(out) is not _ndarray:
            out = result_array(out, device, ctx)
        if not needs or out.dtype.kind != "f":
            return _make(out, device)
        ctx.next_edges = _edges(args)
        ctx.out_meta = ((out.shape, out.dtype),)
        if cls.save_output:
            ctx._out_data = out
        return _make(out, device, True, ctx, 0)


def result_array(out, device, ctx):
    """An op's forward result as the array a tensor holds: a tensor's array, or a NumPy scalar as a 0-d array
    on ``device`` (through ``ctx.xp`` off the CPU): NumPy reduces to scalars, and two constants meet as scalars;
    a tensor always holds an array."""
    if isinstance(out, Tensor):
        return out.data
    if isinstance(out, _np.generic):
        return _np.asarray(out) if device is None or device == "cpu" else ctx.xp.asarray(out)
    return out


def _edges(args):
    edges = []
    for a in args:
        if isinstance(a, Tensor) and a._requires_grad:
            fn = a.grad_fn
            edges.append((a, 0) if fn is None else (fn, a._out_idx))
        else:
            edges.append(None)
    return tuple(edges)


def once_differentiable(backward):
    """Mark a backward that computes on raw arrays (e.g. a fused kernel): it receives and returns arrays.

    It becomes the Function's ``array_backward``. It cannot be differentiated again, so asking for
    ``create_graph=True`` through it raises an error naming the op instead of returning a silently wrong
    higher-order gradient.
    """
    def refuse(ctx, *grads):
        raise RuntimeError(f"{type(ctx).__name__}: its backward is once-differentiable (raw array code) and "
                           f"cannot build a graph for create_graph=True / double backward")
    refuse.__name__ = getattr(backward, "__name__", "backward")
    refuse.__doc__ = backward.__doc__
    refuse._array_backward = backward
    return staticmethod(refuse)


def _released_message(node):
    return (f"Trying to backward through the graph a second time (at {node.name()}): its saved values were freed "
            f"by the first backward(). Pass retain_graph=True to the first backward() (or autograd.grad) to keep them.")


def _value_error(cls, args, err):
    """A forward's ValueError, with the op's name and its input shapes added unless it already starts with them."""
    msg = str(err)
    if msg.lower().startswith(cls.__name__.lower() + ":"):
        return err
    shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, Tensor))
    return ValueError(f"{cls.__name__}: {msg.strip()} (input shapes {shapes})")


def _device_message(cls, args):
    devs = [f"{type(a).__name__}@{a.device}" for a in args if isinstance(a, Tensor)]
    return f"{cls.__name__}: expected all tensors on the same device, got {', '.join(devs)}"


def user_frame():
    """'file:line: code' of the innermost frame outside the tinygen package (where the user called the op)."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR + os.sep):
            return f"{frame.filename}:{frame.lineno}: {frame.line}"
    return "<unknown>"


def _nonfinite(xp, data):
    return data is not None and data.dtype.kind == "f" and not bool(xp.isfinite(data).all())


def _check_forward(cls, ctx, out):
    ctx.created_at = user_frame()
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        data = o.data if isinstance(o, Tensor) else o
        if _nonfinite(ctx.xp, data):
            raise FloatingPointError(f"anomaly: {cls.__name__} produced NaN or Inf in its forward output; "
                                     f"the op was called at {ctx.created_at}")


def _backward_anomaly(node):
    where = getattr(node, "created_at", None) or "<created before detect_anomaly() was entered>"
    return FloatingPointError(f"anomaly: {node.name()} produced NaN or Inf in its gradient; "
                              f"the op was called at {where}")


def checked_backward(node, backward, grads):
    """Anomaly mode: run a node's backward. An op inside it that makes NaN or Inf is reported as this node's
    failure (the inner op, e.g. the Div of Sqrt's backward, is in the chained exception)."""
    try:
        return backward(node, *grads)
    except FloatingPointError as e:
        raise _backward_anomaly(node) from e


def check_backward(node, grads):
    """Anomaly mode: raise if a backward produced NaN or Inf, naming the op and where it was created."""
    for g in grads:
        data = g.data if isinstance(g, Tensor) else g
        if _nonfinite(node.xp, data):
            raise _backward_anomaly(node)
