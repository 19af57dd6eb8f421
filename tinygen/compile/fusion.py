"""Elementwise fusion for ``tinygen.compile``: a run of consecutive elementwise ops of a recorded program becomes
one generated Numba loop, run once per replay in place of one replayed forward per op.

Each fusable op declares, beside its forward, what that forward computes for one element
(``Mul.elementwise = "{0} * {1}"``, ops/arithmetic.py and ops/elementwise.py). Two kinds:

  exact    + - * /, negation, abs, sqrt: IEEE operations rounded once each, in NumPy as in a Numba loop compiled
           without fast-math (no reassociation, no fused multiply-add), so the fused loop gives NumPy's bits.
  approx   exp, log, tanh, sin, cos: the loop calls the C math library, NumPy its own SIMD versions; they differ
           by up to ``APPROX_ULPS`` ulps per call (measured over 10^6 values each, float32 and float64). Fused
           only under ``compile(fn, fuse="approx")``; the arithmetic after such a call carries the difference on,
           scaled as the value is (a subtraction that cancels makes it more ulps of its result).

Three stages:

  record   ``note``: the recorder notes each op with a declaration whose result is one float32/float64 NumPy array
           and whose tensor arguments are each an array of the result's shape or a scalar (a 0-d array or a
           constant) of its dtype, and whose forward set nothing on its node but what it saved: its arguments.
  fuse     ``fused_steps``, once per recorded program, after its release steps are placed: each maximal run of
           consecutive noted forwards (release steps in between move after the run) of one shape and dtype,
           ``MIN_OPS`` ops or more, becomes one step. Its loop computes every op per element, in the recorded
           order, and writes out only what is used outside the run: an output a later step, the step's result or
           a node (saved for backward, ``save_output``) uses; the other intermediates stay in registers.
           Programs whose ops re-read their inputs' nodes (after a ``create_graph`` call) are not fused.
  replay   the fused step checks its operands (C-contiguous NumPy arrays of the recorded shape and dtype, scalars
           of that dtype; Numba on), else runs the ops one by one as an unfused replay does; puts the written
           arrays into the recorded tensors and leaves each op's node as its forward would have (its output and
           what it saved, as shadows: compile/__init__.py's ``_refill_node``), so the backward that follows runs
           unchanged. The first replay of an exact run runs its ops one by one as well and raises if the loop's
           outputs differ from theirs in any bit.

Kernels are cached by their source, so runs of the same form share one compiled loop (compiled on first use,
in memory: a new process compiles again). Without Numba (not installed, or ``TINYGEN_NUMBA=0``) and on CuPy
arrays nothing is fused. Measured (1 thread): in a tight loop a fused run of three ops on 8x8 arrays costs 1.6 us
against 3.2 us unfused (its Numba call ~0.45 us of it), inside a training step several times more each (see
``MIN_OPS``); a loop's scalar exp is as fast as NumPy's SIMD one at 320 elements but 2.6x slower at 2560 and 3.6x
at 10^5 (float32), and it is not bitwise: ``approx`` is not the default.
"""
import math
import re
from collections import namedtuple

import numpy as np

from .. import kernels
from ..autograd.grad_mode import STATE
from ..tensor import Tensor

EXACT_FUNCTIONS = {"abs": abs, "sqrt": math.sqrt}
APPROX_FUNCTIONS = {"exp": math.exp, "log": math.log, "tanh": math.tanh, "sin": math.sin, "cos": math.cos}
APPROX_ULPS = 3  # NumPy's SIMD exp/log/tanh/sin/cos against the C library's, float32 and float64 (this module's doc)
# Shorter runs are left alone: inside a training step (caches cold from the matrix products between) a fused step
# costs ~7-10 us at the VAE's (16, 20) arrays, a replayed op 1.5-3.5 us: two ops fused lose, three break even.
MIN_OPS = 3
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CALLS = re.compile(r"([A-Za-z_]\w*)\s*\(")
ARRAY, SCALAR = "array", "scalar"
_ndarray = np.ndarray
_kernels = {}  # source -> compiled loop

# What the pass needs of the compiler (compile/__init__.py), which hands it in (so this module does not import it):
# the step functions of a replayed forward and of a release, the node refill of a replayed forward, and its tensor
# finder.
ProgramKinds = namedtuple("ProgramKinds", "forward release refill tensors_in")


def exactness(expr):
    """"exact" or "approx" (see the module docstring) for an ``elementwise`` declaration, None if it calls a
    function this module does not know."""
    called = set(_CALLS.findall(expr))
    if called <= EXACT_FUNCTIONS.keys():
        return "exact"
    if called <= EXACT_FUNCTIONS.keys() | APPROX_FUNCTIONS.keys():
        return "approx"
    return None


def note(cls, ctx, args, out):
    """At record time: (shape, dtype, operand kinds, what the node saved, its ``elementwise``) for an op the
    fusion pass may take, else None."""
    owner = next(k for k in cls.__mro__ if "forward" in k.__dict__)  # a subclass's own forward drops it
    expr = owner.__dict__.get("elementwise")
    if expr is None or not isinstance(out, Tensor):
        return None
    data = out.data
    if type(data) is not _ndarray or data.dtype not in _FLOATS:
        return None
    kinds = []
    for a in args:
        if not isinstance(a, Tensor):
            return None
        d = a.data
        if d.dtype != data.dtype or not isinstance(d, (_ndarray, np.generic)):
            return None
        if type(d) is _ndarray and d.shape == data.shape:
            kinds.append(ARRAY)
        elif d.shape == ():
            kinds.append(SCALAR)
        else:  # broadcasting
            return None
    saved = ()
    if ctx is not None:
        saved = ctx._saved
        if vars(ctx) or any(not any(s is a for a in args) for s in saved):
            return None  # its forward left more on its node than a fused step restores
    return data.shape, data.dtype, tuple(kinds), saved, expr


def fused_steps(steps, notes, keep, approx, kinds):
    """The program's steps (``(run, operands)`` pairs, release steps placed) with each run of fusable forwards
    replaced by one ``FusedRun`` step; ``notes``: id(output tensor) -> ``note``; ``keep``: ids of the result's
    tensors; ``approx``: fuse the approx functions too; ``kinds``: ``ProgramKinds``."""
    forward, release, tensors_in = kinds.forward, kinds.release, kinds.tensors_in
    if not kernels.enabled() or not notes:
        return steps
    if any(run is forward and operands[5] for run, operands in steps):
        return steps  # relinked ops: a backward after them counts every intermediate as used (compile/__init__.py)
    allowed = ("exact", "approx") if approx else ("exact",)
    refs = {}  # id(tensor) -> how many steps other than releases refer to it
    for run, operands in steps:
        if run is not release:
            for key in {id(t) for t in tensors_in(*operands)}:
                refs[key] = refs.get(key, 0) + 1
    out, pending, form = [], [], None  # pending: the open run's forwards and the releases between them

    def close():
        forwards = [step for step in pending if step[0] is forward]
        if len(forwards) >= MIN_OPS:
            out.append((FusedRun(forwards, notes, refs, keep, kinds), ()))
            out.extend(step for step in pending if step[0] is release)
        else:
            out.extend(pending)
        pending.clear()

    for step in steps:
        run, operands = step
        n = notes.get(id(operands[4][0])) if run is forward else None
        if n is not None and not operands[5] and exactness(n[4]) in allowed:
            if pending and (n[0], n[1]) != form:
                close()
            form = (n[0], n[1])
            pending.append(step)
        elif run is release and pending:
            pending.append(step)
        else:
            close()
            out.append(step)
    close()
    return tuple(out)


class FusedRun:
    """One step of a program: a run of elementwise forwards as one generated loop (see the module docstring)."""

    def __init__(self, steps, notes, refs, keep, kinds):
        tensors_in = kinds.tensors_in
        self.steps, self._refill = tuple(steps), kinds.refill
        inside = {}  # id(tensor) -> how many of the run's steps refer to it
        for _, operands in steps:
            for key in {id(t) for t in tensors_in(*operands)}:
                inside[key] = inside.get(key, 0) + 1
        saved = {id(t) for _, operands in steps for t in notes[id(operands[4][0])][3]}
        names, lines, self.arrays, self.scalars, self.outputs, self.nodes = {}, [], [], [], [], []
        exact = True
        for k, (_, operands) in enumerate(steps):
            cls, ctx, _, args, outs, _, shadowable = operands
            shape, dtype, operand_kinds, node_saved, expr = notes[id(outs[0])]
            exact = exact and exactness(expr) == "exact"
            terms = []
            for a, kind in zip(args, operand_kinds):
                if id(a) not in names:
                    inputs = self.arrays if kind is ARRAY else self.scalars
                    names[id(a)] = f"x{len(inputs)}[i]" if kind is ARRAY else f"s{len(inputs)}"
                    inputs.append(a)
                terms.append(names[id(a)])
            y = outs[0]
            names[id(y)] = f"v{k}"
            lines.append(f"v{k} = {expr.format(*terms)}")
            if (refs.get(id(y), 0) > inside.get(id(y), 0) or id(y) in keep or id(y) in saved or k == len(steps) - 1
                    or (ctx is not None and cls.save_output)):
                lines.append(f"o{len(self.outputs)}[i] = v{k}")
                self.outputs.append(y)
            if ctx is not None:
                self.nodes.append((ctx, cls.save_output, y, node_saved, shadowable))
        self.shape, self.dtype, self.size, self.exact = shape, dtype, math.prod(shape), exact
        arrays = [f"o{j}" for j in range(len(self.outputs))] + [f"x{j}" for j in range(len(self.arrays))]
        params = ", ".join(["n"] + arrays + [f"s{j}" for j in range(len(self.scalars))])
        flat = [f"    {a} = {a}.reshape(n)\n" for a in arrays]  # C-contiguous arrays, as one flat loop
        self.source = (f"def fused({params}):\n" + "".join(flat) + "    for i in range(n):\n" +
                       "".join(f"        {line}\n" for line in lines))
        self.kernel = None

    def __call__(self):
        shape, dtype = self.shape, self.dtype
        operands = []
        for t in self.arrays:
            d = t.data
            if d.__class__ is not _ndarray or d.shape != shape or d.dtype is not dtype or not d.flags.c_contiguous:
                return self.unfused()
            operands.append(d)
        for t in self.scalars:
            d = t.data
            if d.shape != () or d.dtype is not dtype:
                return self.unfused()
            operands.append(d[()] if d.__class__ is _ndarray else d)  # a NumPy scalar: the loop keeps its dtype
        if not kernels.enabled():  # switched off since the program was recorded (kernels.enabled_as(False))
            return self.unfused()
        kernel = self.kernel
        if kernel is None:  # the first replay
            kernel = self._compile()
            if self.exact:
                outs = [np.empty(shape, dtype) for _ in self.outputs]
                kernel(self.size, *outs, *operands)
                return self._check(outs)
        STATE.grad_enabled = False  # as a replayed forward leaves it
        outs = [np.empty(shape, dtype) for _ in self.outputs]
        kernel(self.size, *outs, *operands)
        for t, d in zip(self.outputs, outs):
            t.data = d
        refill = self._refill
        for ctx, save_output, y, saved, shadowable in self.nodes:
            refill(ctx, save_output, y, saved, shadowable)

    def unfused(self):
        for run, operands in self.steps:
            run(*operands)

    def _check(self, outs):
        """The first replay of an exact run: its ops one by one too (which leave the tensors and nodes as a fused
        replay does), and the loop's outputs must be their bits."""
        self.unfused()
        for t, d in zip(self.outputs, outs):
            if not np.array_equal(t.data, d, equal_nan=True):
                raise RuntimeError(f"tinygen.compile: a fused loop differs from its {len(self.steps)} ops run one by "
                                   f"one; compile(fn, fuse=False) runs them unfused. The loop:\n{self.source}")

    def _compile(self):
        kernel = _kernels.get(self.source)
        if kernel is None:
            import numba
            namespace = dict(EXACT_FUNCTIONS, **APPROX_FUNCTIONS)
            exec(compile(self.source, "<tinygen.compile fused loop>", "exec"), namespace)
            # fastmath off (NumPy's rounding); error_model="numpy": x / 0 is inf or nan, as in NumPy
            kernel = _kernels[self.source] = numba.njit(error_model="numpy")(namespace["fused"])
        self.kernel = kernel
        return kernel

    def __repr__(self):
        return f"<FusedRun of {len(self.steps)} ops on {self.shape} {self.dtype}:\n{self.source}>"
