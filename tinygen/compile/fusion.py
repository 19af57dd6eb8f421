"""Elementwise fusion for ``tinygen.compile``: a run of consecutive elementwise ops of a recorded program (and a
sum that ends it) becomes one generated kernel, run once per replay in place of one replayed forward per op: a
Numba loop on NumPy arrays, a CuPy ``ElementwiseKernel`` (or ``ReductionKernel``) on GPU arrays.

Each fusable op declares, beside its forward, what that forward computes for one element
(``Mul.elementwise = "{0} * {1}"``, ops/arithmetic.py and ops/elementwise.py). Two kinds:

  exact    + - * /, negation, abs, sqrt: IEEE operations rounded once each, in NumPy as in a Numba loop compiled
           without fast-math (no reassociation, no fused multiply-add), so the fused loop gives NumPy's bits; on
           the GPU, CUDA compiled with ``--fmad=false`` (``CUDA_OPTIONS``: a * b + c stays two roundings) gives
           CuPy's, whose ufuncs run one such operation each.
  approx   exp, log, tanh, sin, cos: the loop calls the C math library, NumPy its own SIMD versions; they differ
           by up to ``APPROX_ULPS`` ulps per call (measured over 10^6 values each, float32 and float64). Fused
           only under ``compile(fn, fuse="approx")``; the arithmetic after such a call carries the difference on,
           scaled as the value is (a subtraction that cancels makes it more ulps of its result).

Three stages:

  record   ``note``: the recorder notes each op with a declaration whose result is one float32/float64 array (NumPy
           or on the GPU) and whose tensor arguments are each an array of the result's shape and kind or a scalar
           (a 0-d array or a constant) of its dtype, and whose forward set nothing on its node but what it saved:
           its arguments.
  fuse     ``fused_steps``, once per recorded program, after its release steps are placed: each maximal run of
           consecutive noted forwards (release steps in between move after the run) of one shape, dtype and
           device, ``MIN_OPS`` ops or more, becomes one step. Its kernel computes every op per element, in the
           recorded order, and writes out only what is used outside the run: an output a later step, the step's
           result or a node (saved for backward, ``save_output``) uses; the other intermediates stay in registers.
           A run may end in a sum over every axis of its last value (``Sum`` declares ``reduction = "sum"``):
           on NumPy arrays of up to ``SUM_MAX_SIZE`` values the loop adds the values in NumPy's pairwise order
           (``pairwise_plan``, ``block_sum``), so the sum has NumPy's bits; on the GPU, when the run writes nothing
           else, it is one CuPy ``ReductionKernel``, which adds in the GPU's order: checked when recorded to within
           n * eps * sum(|v|) of the ops one by one, and within that of eager after.
           Programs whose ops re-read their inputs' nodes (after a ``create_graph`` call) are not fused. A GPU
           run's kernel is compiled here, at record time (so never inside a CUDA graph's capture), and checked
           (``FusedRun.build_on_device``); one that cannot be compiled, or whose outputs differ from the ops'
           one by one, is left unfused with a RuntimeWarning.
  replay   the fused step checks its operands (C-contiguous arrays of the recorded kind, shape and dtype, scalars
           of that dtype; on NumPy, Numba on), else runs the ops one by one as an unfused replay does; puts the
           written arrays into the recorded tensors and leaves each op's node as its forward would have (its
           output and what it saved, as shadows: steps.py's ``refill_node``), so the backward that
           follows runs unchanged. The first replay of an exact Numba run runs its ops one by one as well and
           raises if the loop's outputs differ from theirs in any bit.
  backward ``fused_plan_steps``, once per plain backward of a program: each run of
           ``MIN_OPS`` or more consecutive nodes of a backward plan whose ops declare ``elementwise_backward``
           (their ``array_backward`` per element) and whose gradients all go to registers of the run's shape and
           dtype (none to a leaf's .grad) becomes one ``FusedBackward``: a Numba loop that computes each node's
           gradients in the plan's order and sums them into their registers in the engine's order, keeping the
           gradients passed inside the run in variables. Its operands are read at each call; a ``sum()``'s
           gradient, one value broadcast, is passed as a scalar; another layout runs the nodes one by one. The
           first call with a new mix of operand kinds compiles a loop for it and checks it bit for bit against the
           nodes one by one (exact runs). On GPU arrays the run is one CuPy kernel, compiled and checked at record
           time like a forward run's (``FusedBackward.build_on_device``: the recorded backward's gradients are
           gone by then, so made-up ones stand in for the registers, with what the nodes saved as recorded).

Kernels are cached by their source, so runs of the same form share one compiled kernel. A Numba loop is also kept
on disk (``$TINYGEN_CACHE/fused``, with Numba's cache of its machine code), so a new process loads it instead of
compiling it: the VAE benchmark's first replay took 0.67 s and its process peaked at 228 MB compiling, 0.03 s and 209
MB (eager's 208) loading. On NumPy arrays without Numba (not installed, or ``TINYGEN_NUMBA=0``) nothing is fused; on the
GPU, Numba is not needed. Without a GPU, the stand-in for CuPy (``backend.StandinElementwiseKernel``) runs the
generated C statement by statement on NumPy. Measured (1 thread): in a tight loop a fused run of three ops on 8x8
arrays costs 1.6 us against 3.2 us unfused (its Numba call ~0.45 us of it), inside a training step several times
more each (see ``MIN_OPS``); a loop's scalar exp is as fast as NumPy's SIMD one at 320 elements but 2.6x slower at
2560 and 3.6x at 10^5 (float32), and it is not bitwise: ``approx`` is not the default. On the GPU a fused run
saves a kernel launch (or a graph node) per op and the memory passes of the intermediates it keeps in registers;
not yet measured on a GPU. A fused backward (``python -m benchmarks.compile_bench --fusion-only``, its second
table): four nodes at (16, 20) cost what they cost one by one (0.96-1.02x), 1.24x faster at (128, 784) and
(1024, 784).
"""
import functools
import math
import re
import warnings
from collections import namedtuple

import numpy as np

from .. import kernels
from ..autograd.grad_mode import STATE
from ..backend import array_module_of, is_device_array
from ..tensor import Tensor
from .steps import FUSED, plan_step, refill_node, replay_forward, replay_release, tensors_in

EXACT_FUNCTIONS = {"abs": abs, "sqrt": math.sqrt}
APPROX_FUNCTIONS = {"exp": math.exp, "log": math.log, "tanh": math.tanh, "sin": math.sin, "cos": math.cos}
CUDA_NAMES = {"abs": "fabs"}  # CUDA's name where it differs (its C++ overloads take float and double alike)
ARRAY_NAMES = {"abs": "absolute"}  # the array module's name where it differs (the others are numpy's and cupy's)
CUDA_OPTIONS = ("--fmad=false",)  # no a * b + c contracted into one rounding: each operation rounded as CuPy's
APPROX_ULPS = 3  # NumPy's SIMD exp/log/tanh/sin/cos against the C library's, float32 and float64 (this module's doc)
# Shorter runs are left alone: inside a training step (caches cold from the matrix products between) a fused step
# costs ~7-10 us at the VAE's (16, 20) arrays, a replayed op 1.5-3.5 us: two ops fused lose, three break even.
MIN_OPS = 3
# A host run ends in a sum up to this many values: the loop adds in NumPy's order with scalar code, NumPy with SIMD,
# so past what the saved call is worth the loop loses (three ops and a sum in one loop against the three fused and
# NumPy's sum after, 1 thread, CPU time: 1.12x at 320 values, 1.09x at 1280, 0.94x at 5120, 0.56x at 100,352).
SUM_MAX_SIZE = 2048
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CALLS = re.compile(r"([A-Za-z_]\w*)\s*\(")
ARRAY, SCALAR = "array", "scalar"
SUM = "sum"  # the ``reduction`` a sum over every axis declares (ops/reduce.py's Sum): a host run may end in it
_ndarray = np.ndarray
_kernels = {}  # source -> compiled loop



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
    """At record time: (shape, dtype, operand kinds, what the node saved, its ``elementwise``, on the device) for
    an op the fusion pass may take, else None."""
    owner = next(k for k in cls.__mro__ if "forward" in k.__dict__)  # a subclass's own forward drops it
    if owner.__dict__.get("reduction") == SUM:
        return _sum_note(args, out)
    expr = owner.__dict__.get("elementwise")
    if expr is None or not isinstance(out, Tensor):
        return None
    data = out.data
    device = is_device_array(data)
    if (type(data) is not _ndarray and not device) or data.dtype not in _FLOATS:
        return None
    kinds = []
    for a in args:
        if not isinstance(a, Tensor):
            return None
        d = a.data
        if d.dtype != data.dtype or not isinstance(d, (type(data), np.generic)):
            return None  # (a constant is a NumPy scalar, on the GPU as on the CPU)
        if type(d) is type(data) and d.shape == data.shape:
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
    return data.shape, data.dtype, tuple(kinds), saved, expr, device


def _sum_note(args, out):
    """The note of a sum over every axis of one float array of one or more dimensions (on NumPy, at most
    ``SUM_MAX_SIZE`` values), to the same dtype (``Sum``: its arguments are the tensor, the axes and keepdim): a run
    that computes that array may end in it. Its forward sets only constants of the program's signature on its node
    (the shape, axes and keepdim)."""
    x = args[0]
    if not isinstance(out, Tensor) or not isinstance(x, Tensor):
        return None
    d = x.data
    device = is_device_array(d)
    if (type(d) is not _ndarray and not device) or d.dtype not in _FLOATS or d.ndim == 0 or d.size == 0 or (
            not device and d.size > SUM_MAX_SIZE) or tuple(args[1]) != tuple(range(d.ndim)) or \
            out.data.dtype != d.dtype:
        return None
    return d.shape, d.dtype, (ARRAY,), (), SUM, device


def fused_steps(steps, notes, keep, approx):
    """The program's steps (``(run, operands)`` pairs, release steps placed) with each run of fusable forwards
    replaced by one ``FusedRun`` step; ``notes``: id(output tensor) -> ``note``; ``keep``: ids of the result's
    tensors; ``approx``: fuse the approx functions too."""
    forward, release = replay_forward, replay_release
    if not notes:
        return steps
    if any(run is forward and operands[5] for run, operands in steps):
        return steps  # relinked ops: a backward after them counts every intermediate as used (passes.py)
    allowed = ("exact", "approx") if approx else ("exact",)
    on_host = kernels.enabled()  # host runs are Numba loops; device runs are CuPy's kernels
    refs = {}  # id(tensor) -> how many steps other than releases refer to it
    for run, operands in steps:
        if run is not release:
            for key in {id(t) for t in tensors_in(*operands)}:
                refs[key] = refs.get(key, 0) + 1
    out, pending, form = [], [], None  # pending: the open run's forwards and the releases between them

    def close():
        forwards = [step for step in pending if step[0] is forward]
        run = FusedRun(forwards, notes, refs, keep) if len(forwards) >= MIN_OPS else None
        tail = []
        if run is not None and run.device and run.total and run.outputs:  # a CuPy sum kernel writes its sum only
            tail.append(pending.pop())
            forwards.pop()
            run = FusedRun(forwards, notes, refs, keep) if len(forwards) >= MIN_OPS else None
        if run is not None and (not run.device or run.build_on_device()):
            out.append((run, ()))
            out.extend(step for step in pending if step[0] is release)
        else:
            out.extend(pending)
        out.extend(tail)
        pending.clear()

    for step in steps:
        run, operands = step
        n = notes.get(id(operands[4][0])) if run is forward else None
        if n is not None and n[4] is SUM:  # the sum of the run's last value ends the run
            last = next((s for s in reversed(pending) if s[0] is forward), None)
            if last is not None and (n[0], n[1], n[5]) == form and operands[3][0] is last[1][4][0]:
                pending.append(step)
                close()
            else:
                close()
                out.append(step)
            continue
        if n is not None and not operands[5] and exactness(n[4]) in allowed and (n[5] or on_host):
            if pending and (n[0], n[1], n[5]) != form:
                close()
            form = (n[0], n[1], n[5])
            pending.append(step)
        elif run is release and pending:
            pending.append(step)
        else:
            close()
            out.append(step)
    close()
    return tuple(out)


class FusedRun:
    """One step of a program: a run of elementwise forwards as one generated loop (NumPy arrays) or one CuPy
    elementwise kernel (device arrays); see the module docstring."""

    def __init__(self, steps, notes, refs, keep):
        self.steps = tuple(steps)
        inside = {}  # id(tensor) -> how many of the run's steps refer to it
        for _, operands in steps:
            for key in {id(t) for t in tensors_in(*operands)}:
                inside[key] = inside.get(key, 0) + 1
        saved = {id(t) for _, operands in steps for t in notes[id(operands[4][0])][3]}
        names, lines, self.arrays, self.scalars, self.outputs, self.nodes = {}, [], [], [], [], []
        self.total = None  # a run ending in a sum: (its output tensor, its node, what its forward set on the node)
        exact = True
        for k, (_, operands) in enumerate(steps):
            cls, ctx, _, args, outs, _, shadowable = operands
            shape, dtype, operand_kinds, node_saved, expr, device = notes[id(outs[0])]
            if expr is SUM:  # the last step: sum the value before it (``fused_steps``)
                self.total = (outs[0], ctx, dict(vars(ctx)) if ctx is not None else None)
                self.summed = names[id(args[0])]
                continue
            exact = exact and exactness(expr) == "exact"
            terms = []
            for a, kind in zip(args, operand_kinds):
                if id(a) not in names:
                    inputs = self.arrays if kind is ARRAY else self.scalars
                    names[id(a)] = ("x" if kind is ARRAY else "s") + str(len(inputs))
                    inputs.append(a)
                terms.append(names[id(a)])
            y = outs[0]
            names[id(y)] = f"v{k}"
            lines.append((f"v{k}", expr, terms))
            if (refs.get(id(y), 0) > inside.get(id(y), 0) or id(y) in keep or id(y) in saved or k == len(steps) - 1
                    or (ctx is not None and cls.save_output)):
                lines.append((f"o{len(self.outputs)}", None, f"v{k}"))
                self.outputs.append(y)
            if ctx is not None:
                self.nodes.append((ctx, cls.save_output, y, node_saved, shadowable))
        self.shape, self.dtype, self.size, self.exact, self.device = shape, dtype, math.prod(shape), exact, device
        self.written = self.outputs + [self.total[0]] if self.total else self.outputs  # the tensors it sets
        self.total_shape = self.total[0].data.shape if self.total else None  # () or, with keepdim, all ones
        self.array_type = type(self.written[0].data)
        self.xp = array_module_of(self.written[0].data) if device else np
        self.lines = lines
        if device and self.total:
            self.preamble, self.map_expr = _cuda_sum_source(lines, self.summed, self._params())
            self.source = f"{self.preamble}// summed over every element: {self.map_expr}"
        else:
            self.source = _cuda_source(lines) if device else self._numba_source(lines)
        self.kernel = None

    def _numba_source(self, lines):
        """A Numba loop over the flat arrays: ``v0 = x0[i] * s0`` ..., ``o0[i] = v0``."""
        body = [f"{var} = {expr.format(*(t + '[i]' if t[0] == 'x' else t for t in terms))}" if expr is not None
                else f"{var}[i] = {terms}" for var, expr, terms in lines]
        if self.total:
            return _sum_loop_source(body + [f"block[i - lo] = {self.summed}"], len(self.outputs), len(self.arrays),
                                    len(self.scalars))
        return _loop_source(body, len(self.outputs), len(self.arrays), len(self.scalars))

    def __call__(self):
        operands = self._operands()
        if operands is None:
            return self.unfused()
        if self.device:
            outs = self._launch(self.kernel, operands)
        else:
            kernel = self.kernel
            if kernel is None:  # the first replay
                kernel = self._compile()
                if self.exact:
                    return self._check(self._launch(kernel, operands))
            outs = self._launch(kernel, operands)
        STATE.grad_enabled = False  # as a replayed forward leaves it
        for t, d in zip(self.written, outs):
            t.data = d
        for ctx, save_output, y, saved, shadowable in self.nodes:
            refill_node(ctx, save_output, y, saved, shadowable)
        if self.total and self.total[1] is not None:
            vars(self.total[1]).update(self.total[2])  # as the sum's forward sets them (a release clears them)

    def _operands(self):
        """The kernel's operands: C-contiguous arrays of the recorded kind, shape and dtype, then scalars of that
        dtype (0-d arrays or NumPy scalars); None when one is not, or on NumPy when Numba was switched off since
        the recording (``kernels.enabled_as(False)``), so the ops run one by one."""
        typ, shape, dtype = self.array_type, self.shape, self.dtype
        operands = []
        for t in self.arrays:
            d = t.data
            if d.__class__ is not typ or d.shape != shape or d.dtype is not dtype or not d.flags.c_contiguous:
                return None  # (another layout: eager's result would keep it, the kernel's would not)
            operands.append(d)
        for t in self.scalars:
            d = t.data
            if (d.__class__ is not typ and not isinstance(d, np.generic)) or d.shape != () or d.dtype is not dtype:
                return None
            operands.append(d[()] if d.__class__ is _ndarray else d)  # a NumPy scalar: the loop keeps its dtype
        if not self.device and not kernels.enabled():
            return None
        return operands

    def _launch(self, kernel, operands):
        outs = [self.xp.empty(self.shape, self.dtype) for _ in self.outputs]
        if self.device and self.total:  # (no other output: fused_steps)
            outs.append(kernel(*operands).reshape(self.total_shape))
        elif self.device:
            kernel(*operands, *outs)
        elif self.total:
            total = kernel(self.size, pairwise_plan(self.size), self.dtype.type(0), *outs, *operands)
            outs.append(np.full(self.total_shape, total, self.dtype))
        else:
            kernel(self.size, *outs, *operands)
        return outs

    def build_on_device(self):
        """At record time, for a device run: compile its kernel and run it on the run's operands as they are now.
        An exact run's outputs must be, bit for bit, what its declarations give evaluated one operation at a time
        by the array module's own functions (the ops' forwards: each declaration is its forward's expression), on
        the same operands. Returns whether the run is fused: not when the kernel cannot be built or launched, nor
        when it differs (a RuntimeWarning each). Recording is eager: the compiler never runs inside a capture."""
        operands = self._operands()
        if operands is None:
            return False
        if self.total:
            self.kernel = _checked_device_sum(self.xp, self._params(), operands, self.preamble, self.map_expr,
                                              self._one_by_one if self.exact else None, f"{len(self.steps)} ops")
            return self.kernel is not None
        self.kernel = _checked_device_kernel(self.xp, self._params(), operands, len(self.outputs), self.shape,
                                             self.dtype, self.source, self._one_by_one if self.exact else None,
                                             "a fused kernel", f"{len(self.steps)} ops")
        return self.kernel is not None

    def _one_by_one(self, operands):
        """The run's outputs from its declarations, one array operation each (no side effects on the program)."""
        env = _array_functions(self.xp, zip(self._params(), operands))
        outs = []
        for var, expr, terms in self.lines:
            if expr is None:
                outs.append(env[terms])
            else:
                env[var] = eval(expr.format(*terms), env)  # noqa: S307 - the ops' own declarations
        return [env[self.summed]] if self.total else outs  # a device run with a sum writes nothing else

    def _params(self):
        """The kernel's input names, in the order of ``_operands``."""
        return [f"x{j}" for j in range(len(self.arrays))] + [f"s{j}" for j in range(len(self.scalars))]

    def unfused(self):
        for run, operands in self.steps:
            run(*operands)

    def _check(self, outs):
        """The first replay of an exact host run: its ops one by one too (which leave the tensors and nodes as a
        fused replay does), and the loop's outputs must be their bits."""
        self.unfused()
        for t, d in zip(self.written, outs):
            if not np.array_equal(t.data, d, equal_nan=True):
                raise RuntimeError(f"tinygen.compile: a fused loop differs from its {len(self.steps)} ops run one by "
                                   f"one; compile(fn, fuse=False) runs them unfused. The loop:\n{self.source}")

    def _compile(self):
        self.kernel = _numba_loop(self.source)
        return self.kernel

    def __repr__(self):
        kind = "kernel" if self.device else "loop"
        return f"<FusedRun of {len(self.steps)} ops on {self.shape} {self.dtype}, a {kind}:\n{self.source}>"


@functools.lru_cache(maxsize=64)
def pairwise_plan(n):
    """The order in which NumPy sums ``n`` contiguous values (its pairwise sum, numpy/_core/src/umath/
    loops_utils.h.src): blocks of at most 128 values, each summed by ``block_sum``, and their sums added as a binary
    tree that splits at half of n rounded down to a multiple of 8. Rows (start, count) for a block and (0, 0) for
    "add the last two partial sums", in the order a loop with a stack runs them (a fused sum's loop)."""
    rows = []

    def split(lo, m):
        if m <= 128:
            rows.append((lo, m))
            return
        half = m // 2 - (m // 2) % 8
        split(lo, half)
        split(lo + half, m - half)
        rows.append((0, 0))
    split(0, n)
    plan = np.array(rows, dtype=np.int64)
    plan.flags.writeable = False
    return plan


def block_sum(a, n, zero):
    """NumPy's sum of the first ``n`` (at most 128) values of ``a``: under 8 one by one from zero, else eight
    running sums (of every eighth value) added pairwise, then the rest one by one. Compiled with Numba for the
    fused loops; the final result of a sum is ``zero + `` the tree's total, as NumPy starts from its identity."""
    if n < 8:
        res = zero
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    m = n - n % 8
    for i in range(8, m, 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(m, n):
        res += a[i]
    return res


@functools.cache
def _compiled_block_sum():
    """``block_sum`` compiled with Numba, once (the loops that end in a sum call it); cached on disk as Numba caches
    tinygen's kernels."""
    import numba
    return numba.njit(cache=True, error_model="numpy")(block_sum)


def _numba_loop(source):
    """The compiled loop of a generated source (``def fused(n, ...)``), once per source in a process: loaded from
    the loop cache when it holds it, else compiled (``_cached_loop``; in memory only when the cache cannot be
    written)."""
    kernel = _kernels.get(source)
    if kernel is None:
        kernel = _cached_loop(source)
        if kernel is None:
            namespace = {}
            exec(compile(_loop_module(source, cache=False), "<tinygen.compile fused loop>", "exec"), namespace)
            kernel = namespace["fused"]
        _kernels[source] = kernel
    return kernel


def _loop_module(source, cache):
    """The text of a module that defines the loop of ``source`` as ``fused``, compiled by Numba on its first call
    (``cache``: with Numba's cache beside the module). Fastmath off (NumPy's rounding); ``error_model="numpy"``:
    x / 0 is inf or nan, as in NumPy."""
    math_names = sorted(name for name, f in {**EXACT_FUNCTIONS, **APPROX_FUNCTIONS}.items()
                        if getattr(f, "__module__", None) == "math")  # (abs is the builtin)
    return ("# A loop tinygen.compile generated (tinygen/compile/fusion.py); deleting it costs a compile.\n"
            f"from math import {', '.join(math_names)}  # noqa: F401\nimport numba\nimport numpy as np  # noqa: F401\n"
            "from tinygen.compile.fusion import _compiled_block_sum\n\nblock_sum = _compiled_block_sum()\n\n\n"
            f"{source}\n\nfused = numba.njit(cache={cache}, error_model=\"numpy\")(fused)\n")


def _cached_loop(source):
    """The loop of ``source`` from a module of its own in ``$TINYGEN_CACHE/fused`` (``_loop_module``, named by
    the source's digest, written once), compiled with Numba's ``cache=True``, so a process that finds Numba's cache
    beside the module loads the machine code instead of compiling it: a loop's compile takes about half a second and
    adds up to 20 MB to the process's peak memory. None when the folder cannot be written or read, or Numba
    cannot cache there."""
    import hashlib
    import importlib.util
    import os
    import sys

    from .. import config
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    folder = config.get("TINYGEN_CACHE") / "fused"
    path = folder / f"loop_{digest}.py"
    text = _loop_module(source, cache=True)
    try:
        if not path.is_file() or path.read_text() != text:
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f".{digest}.{os.getpid()}.tmp"
            part.write_text(text)
            os.replace(part, path)  # whole or not at all, if another process writes it too
        name = f"tinygen_fused_loop_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # where Numba's cached code finds its module again
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - a folder not writable, or Numba finding nowhere to keep its cache: the caller
        return None  # compiles the same source in memory
    return module.fused


def _loop_source(body, n_outputs, n_arrays, n_scalars):
    """A Numba loop's source: ``def fused(n, o0.., x0.., s0..)`` over the flat C-contiguous arrays, ``body`` the
    statements for element i."""
    arrays = [f"o{j}" for j in range(n_outputs)] + [f"x{j}" for j in range(n_arrays)]
    params = ", ".join(["n"] + arrays + [f"s{j}" for j in range(n_scalars)])
    return (f"def fused({params}):\n" + "".join(f"    {a} = {a}.reshape(n)\n" for a in arrays) +
            "    for i in range(n):\n" + "".join(f"        {line}\n" for line in body))


def _sum_loop_source(body, n_outputs, n_arrays, n_scalars):
    """The loop of a run ending in a sum: ``def fused(n, plan, zero, o0.., x0.., s0..)`` computes the run block by
    block in ``pairwise_plan``'s order, each block's summed values into ``block`` (128 values, in the cache), and
    returns their sum in NumPy's order: each block's ``block_sum`` pushed on a stack, a (0, 0) row adding the top
    two."""
    arrays = [f"o{j}" for j in range(n_outputs)] + [f"x{j}" for j in range(n_arrays)]
    params = ", ".join(["n", "plan", "zero"] + arrays + [f"s{j}" for j in range(n_scalars)])
    return (f"def fused({params}):\n" + "".join(f"    {a} = {a}.reshape(n)\n" for a in arrays) +
            "    block = np.full(128, zero)\n    stack = np.full(64, zero)\n    top = 0\n"
            "    for k in range(plan.shape[0]):\n        lo, m = plan[k, 0], plan[k, 1]\n"
            "        if m == 0:\n            top -= 1\n            stack[top - 1] = stack[top - 1] + stack[top]\n"
            "            continue\n        for i in range(lo, lo + m):\n" +
            "".join(f"            {line}\n" for line in body) +
            "        stack[top] = block_sum(block, m, zero)\n        top += 1\n    return zero + stack[0]\n")


def _operand_names(kinds):
    """The names of operands of these kinds in order: arrays x0, x1, ..., scalars s0, s1, ...."""
    names, counts = [], {ARRAY: 0, SCALAR: 0}
    for kind in kinds:
        names.append(("x" if kind is ARRAY else "s") + str(counts[kind]))
        counts[kind] += 1
    return names


def _array_functions(xp, values=()):
    """A namespace for evaluating declarations one array operation at a time: the array module's functions, and
    ``values`` (name, array) pairs."""
    env = {name: getattr(xp, ARRAY_NAMES.get(name, name)) for name in EXACT_FUNCTIONS.keys() | APPROX_FUNCTIONS}
    env["__builtins__"] = {}
    env.update(values)
    return env


def _checked_device_kernel(xp, params, operands, n_outputs, shape, dtype, source, expected, what, parts):
    """A device kernel for ``source`` (inputs ``params``, outputs o0, o1, ...), compiled and launched once on
    ``operands`` at record time; ``expected(operands)``, for an exact run, gives what its outputs must equal bit for
    bit. None when it cannot be built or launched or when it differs (``_tried_on_device``)."""
    def launch(kernel):
        outs = [xp.empty(shape, dtype) for _ in range(n_outputs)]
        kernel(*operands, *outs)
        return outs

    def disagreement(outs):
        if expected is not None and not all(bool(xp.array_equal(a, xp.asarray(b), equal_nan=True))
                                            for a, b in zip(outs, expected(operands))):
            return f"differs from its {parts} run one by one"
        return None
    return _tried_on_device(lambda: _device_kernel(xp, ", ".join(f"T {p}" for p in params),
                                                   ", ".join(f"T o{j}" for j in range(n_outputs)), source),
                            launch, disagreement, source, what, parts)


def _checked_device_sum(xp, params, operands, preamble, map_expr, one_by_one, parts):
    """A device kernel that sums a run's last value over every element (``_cuda_sum_source``), compiled and
    launched once on ``operands`` at record time. It adds in the GPU kernel's order, not the order of the array
    module's own sum, so it is checked against the run's values one operation at a time (``one_by_one``; None for
    an approx run: no check) summed by ``xp.sum``, to within n * eps * sum(|v|): each of the two orders of n
    additions is within (n - 1) * eps / 2 * sum(|v|) of the exact sum. None when it cannot be built or launched or
    when it differs by more (``_tried_on_device``)."""
    def disagreement(total):
        if one_by_one is None:
            return None
        (values,) = one_by_one(operands)
        got, expected = (float(xp.asnumpy(v)) for v in (total, xp.sum(values)))
        bound = values.size * float(np.finfo(values.dtype).eps) * float(xp.asnumpy(xp.sum(xp.abs(values))))
        if abs(got - expected) <= bound or got == expected or (math.isnan(got) and math.isnan(expected)):
            return None
        return f"gives {got!r} where its {parts} run one by one give {expected!r} (allowed: {bound:.3g})"
    return _tried_on_device(lambda: _device_kernel(xp, ", ".join(f"T {p}" for p in params), "T y", map_expr,
                                                   preamble),
                            lambda kernel: kernel(*operands), disagreement, preamble + map_expr, "a fused sum kernel",
                            parts)


def _tried_on_device(build, launch, disagreement, source, what, parts):
    """The kernel ``build()`` makes, launched once at record time (``launch(kernel)`` gives its outputs) and
    checked (``disagreement(outputs)``: None, or how they differ from the parts one by one). None, with a
    RuntimeWarning naming ``what`` and its ``parts``, when it cannot be built or launched or when it differs: the
    caller then runs its parts one by one."""
    try:
        kernel = build()
        outs = launch(kernel)
    except Exception as e:  # noqa: BLE001 - any failure to build or launch: the parts one by one are right
        warnings.warn(f"tinygen.compile: could not build {what} ({type(e).__name__}: {e}); its {parts} run one by "
                      f"one. The kernel:\n{source}", RuntimeWarning, stacklevel=4)
        return None
    problem = disagreement(outs)
    if problem is not None:
        warnings.warn(f"tinygen.compile: {what} {problem}; they run one by one. The kernel:\n{source}",
                      RuntimeWarning, stacklevel=4)
        return None
    return kernel


def _cuda_sum_source(lines, summed, params):
    """A run ending in a sum as a CuPy ``ReductionKernel``'s preamble and map expression: a device function of one
    element's operands that runs the run's statements (``_cuda_source``) and returns the summed value, and its
    call. (A reduction kernel writes its sum only: ``fused_steps`` ends such a run in a sum only when it writes
    nothing else.)"""
    body = "".join(f"    {line}\n" for line in _cuda_source(lines).splitlines())
    signature = ", ".join(f"T {p}" for p in params)
    preamble = f"template <typename T>\n__device__ T tinygen_summed({signature}) {{\n{body}    return {summed};\n}}\n"
    return preamble, f"tinygen_summed({', '.join(params)})"


def _cuda_source(lines):
    """The body of a CuPy ElementwiseKernel (each parameter is one element): ``T v0 = x0 * s0;`` ...,
    ``o0 = v0;``."""
    def cuda(expr):
        return _CALLS.sub(lambda m: CUDA_NAMES.get(m.group(1), m.group(1)) + "(", expr)
    return "\n".join(f"T {var} = {cuda(expr).format(*terms)};" if expr is not None else f"{var} = {terms};"
                     for var, expr, terms in lines)


def _device_kernel(xp, in_params, out_params, operation, sum_preamble=None):
    """The one place this module makes a device kernel: ``xp.ElementwiseKernel`` (CuPy's, or the stand-in's,
    which runs the same C on NumPy), or with ``sum_preamble`` an ``xp.ReductionKernel`` that sums ``operation`` (a
    map expression calling the preamble's function) over every element, in T, into ``out_params``' one output;
    compiled once per source and array module."""
    key = (xp.__name__, in_params, out_params, operation, sum_preamble)
    kernel = _kernels.get(key)
    if kernel is None:
        name = f"tinygen_fused_{len(_kernels)}"
        if sum_preamble is None:
            kernel = xp.ElementwiseKernel(in_params, out_params, operation, name, options=CUDA_OPTIONS)
        else:
            kernel = xp.ReductionKernel(in_params, out_params, operation, "a + b", "y = a", "0", name,
                                        reduce_type="T", preamble=sum_preamble, options=CUDA_OPTIONS)
        _kernels[key] = kernel
    return kernel


# ---- the backward of a run ------------------------------------------------------------------------------------------
# What the backward fusion knows of one plan step (``_backward_form``): the run it can join (shape, dtype, on the
# device), its op's ``elementwise_backward``, the kinds of what its node saved, whether it reads its output, and
# what it saved and its output as the recorded call's tensors (for the device kernel's record-time check).
BackwardForm = namedtuple("BackwardForm", "run decl saved_kinds has_y saved y")


def fused_plan_steps(plan_steps, roots, forwards, approx):
    """A plain backward's plan steps (steps.py's ``BackwardPlan.steps``) with each run of ``MIN_OPS``
    or more consecutive nodes of elementwise ops (``_backward_form``) of one shape and dtype, on NumPy arrays, as
    one ``FusedBackward`` step; the steps themselves when there is none. ``roots``: the plan's (register, leaf)
    roots; ``forwards``: id(node) -> (``note``, arguments, output tensor) of each op's recorded forward (its
    tensors still hold the recorded call's arrays); ``approx``: fuse the approx functions too."""
    allowed = ("exact", "approx") if approx else ("exact",)
    filled = {r for r, leaf in roots if leaf is None}  # the registers holding a gradient before each step
    out, pending, filled_before = [], [], None  # pending: (step, BackwardForm) of the open run

    def close():
        run = FusedBackward(pending, filled_before) if len(pending) >= MIN_OPS else None
        if run is not None and (not run.device or run.build_on_device(pending)):
            out.append((run, FUSED, (), None, (), ()))
        else:
            out.extend(step for step, _ in pending)
        pending.clear()

    for step in plan_steps:
        form = _backward_form(step, forwards, allowed, kernels.enabled())
        if form is None or (pending and form.run != pending[0][1].run):
            close()
        if form is None:
            out.append(step)
        else:
            if not pending:
                filled_before = frozenset(filled)
            pending.append((step, form))
        filled.difference_update(step[2])
        filled.update(t[0] for t in step[4] if t is not None and t[1] is None)
    close()
    return tuple(out) if any(step[1] is FUSED for step in out) else plan_steps


def _backward_form(step, forwards, allowed, on_host):
    """The ``BackwardForm`` of a plan step the backward fusion may take, else None: a node of one output, due no
    hooks, of an op noted at record time (``note``; on NumPy arrays only with Numba, ``on_host``) whose class that
    defines its backward declares it per element, every gradient it returns going to a register of the same shape
    and dtype (no leaf, no broadcasting)."""
    node, _, ins, metas, outs, due = step
    entry = forwards.get(id(node))
    if due or metas is not None or len(ins) != 1 or entry is None:
        return None
    (shape, dtype, kinds, saved, _, device), args, y = entry
    owner = next((k for k in type(node).__mro__ if "array_backward" in k.__dict__ or "backward" in k.__dict__), None)
    decl = owner.__dict__.get("elementwise_backward") if owner is not None else None
    if not (device or on_host) or decl is None or len(decl) != len(outs) or any(exactness(e) not in allowed
                                                                                  for e in decl):
        return None
    if any(t is not None and (t[1] is not None or t[2] != shape or t[3] != dtype) for t in outs):
        return None
    saved_kinds = tuple(kinds[next(i for i, a in enumerate(args) if a is s)] for s in saved)
    return BackwardForm((shape, dtype, device), decl, saved_kinds, bool(type(node).save_output), saved, y)


class FusedBackward:
    """A run of consecutive nodes of a backward plan (elementwise ops of one shape and dtype) as one Numba loop:
    each node's ``elementwise_backward`` per element, in the plan's order, each gradient summed into its register
    in the engine's order (the sum so far, then the new term); the gradients passed between the run's nodes stay in
    the loop's variables, and only the registers the rest of the plan reads are written. Its operands (the
    registers it reads from before the run, what the nodes saved, their outputs) are read at each call: arrays of
    the run's shape (C-contiguous), scalars, or a gradient broadcast from one value (a ``sum()``'s), passed as a
    scalar; another layout, or registers not as recorded, run the nodes one by one. The first call with a new
    mix of operand kinds compiles its loop and, for an exact run, runs the nodes one by one too and raises if the
    loop's gradients differ from theirs in any bit.

    On GPU arrays the run is one CuPy ``ElementwiseKernel`` of the same statements, compiled and checked when the
    program is recorded (``build_on_device``: never inside a CUDA graph's capture); its registers are always array
    operands (a broadcast gradient is made contiguous first, one copy)."""

    def __init__(self, pending, filled):
        """``pending``: the run's (plan step, BackwardForm); ``filled``: the registers holding a gradient before
        it."""
        self.steps = tuple(step for step, _ in pending)
        self.nodes = tuple(step[0] for step in self.steps)
        (self.shape, self.dtype, self.device), self.size = pending[0][1].run, math.prod(pending[0][1].run[0])
        self.kernel = None  # on the device: the one kernel (registers as arrays)
        self.operands = []  # ("register", r) | ("saved", node, i, kind) | ("output", node): the loop's inputs
        self.consumed, self.fresh, self.lines, self.exact = [], [], [], True
        current = {}  # register -> the loop variable holding its sum so far

        def operand(what):
            self.operands.append(what)
            return f"{{{len(self.operands) - 1}}}"
        for (node, _, ins, _, outs, _), form in pending:
            r_in = ins[0]
            self.consumed.append(r_in)
            fields = {"g": current.pop(r_in) if r_in in current else operand(("register", r_in))}
            fields.update((f"s{i}", operand(("saved", node, i, kind))) for i, kind in enumerate(form.saved_kinds))
            if form.has_y:
                fields["y"] = operand(("output", node))
            for expr, target in zip(form.decl, outs):
                if target is None:
                    continue
                self.exact = self.exact and exactness(expr) == "exact"
                r, term = target[0], f"v{len(self.lines)}"
                self.lines.append((term, expr.format(**fields)))
                if r in current or r in filled:  # the sum so far, then this term (the engine's _added)
                    prior = current[r] if r in current else operand(("register", r))
                    self.lines.append((f"v{len(self.lines)}", f"{prior} + {term}"))
                    term = self.lines[-1][0]
                else:
                    self.fresh.append(r)  # empty before the run (checked at each call)
                current[r] = term
        self.outputs = list(current)  # registers the run leaves a gradient in
        self.results = [current[r] for r in self.outputs]
        self.kernels = {}  # the operands' kinds -> compiled loop

    def name(self):
        return f"fused({', '.join(node.name() for node in self.nodes)})"

    def listing(self):
        """The generated code: the CUDA kernel on the device; on the CPU the loop of each mix of operand kinds
        compiled so far (before the first call, the one for array operands)."""
        if self.device:
            return self.source_on_device
        return "\n".join(self.source(kinds) for kinds in list(self.kernels) or [(ARRAY,) * len(self.operands)])

    def __call__(self, regs, direct, release):
        if self.device:
            return self._on_device(regs, direct, release)
        if not kernels.enabled() or any(regs[r] is not None for r in self.fresh):  # (Numba switched off since)
            return self.unfused(regs, direct, release)
        arrays, scalars, kinds = [], [], []
        shape, dtype = self.shape, self.dtype
        for what in self.operands:
            d = self._fetch(what, regs)
            if d.__class__ is _ndarray and d.dtype is dtype and d.shape == shape and d.flags.c_contiguous:
                arrays.append(d)
                kinds.append(ARRAY)
            elif (d.__class__ is _ndarray and d.dtype is dtype and d.size and
                  (d.shape == () or (d.shape == shape and not any(d.strides)))):
                scalars.append(d[(0,) * d.ndim])  # a NumPy scalar of the dtype (a 0-d array, or one broadcast)
                kinds.append(SCALAR)
            elif isinstance(d, np.generic) and d.dtype is dtype:
                scalars.append(d)
                kinds.append(SCALAR)
            else:
                return self.unfused(regs, direct, release)
        kinds = tuple(kinds)
        kernel = self.kernels.get(kinds)
        if kernel is None:
            kernel = self.kernels[kinds] = _numba_loop(self.source(kinds))
            if self.exact:
                return self._check(self._launch(kernel, arrays, scalars), kinds, regs, direct, release)
        self._done(self._launch(kernel, arrays, scalars), regs, release)

    def _done(self, outs, regs, release):
        for r in self.consumed:
            regs[r] = None
        for r, d in zip(self.outputs, outs):
            regs[r] = d
        if release:
            for node in self.nodes:
                node.release()

    def _fetch(self, what, regs):
        return regs[what[1]] if what[0] == "register" else what[1]._saved[what[2]].data if what[0] == "saved" else \
            what[1]._out_data

    def _on_device(self, regs, direct, release):
        """A device run: its kernel on the operands, registers made contiguous; else the nodes one by one."""
        arrays, scalars = [], []
        typ, shape, dtype = self.array_type, self.shape, self.dtype
        for what, kind in zip(self.operands, self.device_kinds):
            d = self._fetch(what, regs)
            if d is None or d.dtype is not dtype:
                return self.unfused(regs, direct, release)
            if kind is SCALAR:  # a constant the node saved: a NumPy scalar or 0-d array, as on the CPU
                if d.shape != () or (d.__class__ is not _ndarray and not isinstance(d, np.generic)):
                    return self.unfused(regs, direct, release)
                scalars.append(d[()] if d.__class__ is _ndarray else d)
                continue
            if d.__class__ is not typ or d.shape != shape:
                return self.unfused(regs, direct, release)
            if not d.flags.c_contiguous:
                if what[0] != "register":  # (another layout: the nodes one by one keep it)
                    return self.unfused(regs, direct, release)
                d = self.xp.ascontiguousarray(d)  # a gradient broadcast from one value, say
            arrays.append(d)
        if any(regs[r] is not None for r in self.fresh):
            return self.unfused(regs, direct, release)
        outs = [self.xp.empty(shape, dtype) for _ in self.outputs]
        self.kernel(*arrays, *scalars, *outs)
        self._done(outs, regs, release)

    def build_on_device(self, pending):
        """At record time: compile the run's kernel and check it, as ``FusedRun.build_on_device`` does, on what the
        nodes saved and their outputs as the recorded call left them, and made-up gradients in the registers (the
        recorded backward's are gone): an exact run's outputs must equal, bit for bit, the statements evaluated one
        array operation at a time by the array module's functions. Returns whether the run is fused."""
        forms = {id(step[0]): form for step, form in pending}
        recorded = [None if what[0] == "register" else  # the recorded backward's gradients are gone
                    forms[id(what[1])].saved[what[2]].data if what[0] == "saved" else forms[id(what[1])].y.data
                    for what in self.operands]
        probe = next((d for d in recorded if is_device_array(d)), None)
        if probe is None:  # nothing saved: only gradients pass through the run
            probe = self.nodes[0].xp.empty(self.shape, self.dtype)
        self.array_type, self.xp = type(probe), array_module_of(probe)
        rng = np.random.default_rng(0)
        recorded = [self.xp.asarray(rng.standard_normal(self.shape).astype(self.dtype)) if d is None else d
                    for d in recorded]
        self.device_kinds = tuple(SCALAR if what[0] == "saved" and what[3] is SCALAR else ARRAY
                                  for what in self.operands)
        names = _operand_names(self.device_kinds)
        order = [i for k in (ARRAY, SCALAR) for i, kind in enumerate(self.device_kinds) if kind is k]  # arrays first
        params = [names[i] for i in order]
        operands = [recorded[i][()] if recorded[i].__class__ is _ndarray else recorded[i] for i in order]
        self.source_on_device = _cuda_source([(var, expr, names) for var, expr in self.lines] +
                                             [(f"o{j}", None, var) for j, var in enumerate(self.results)])

        def one_by_one(values):
            env = _array_functions(self.xp, zip(params, values))
            for var, expr in self.lines:
                env[var] = eval(expr.format(*names), env)  # noqa: S307 - the ops' own declarations
            return [env[var] for var in self.results]
        self.kernel = _checked_device_kernel(self.xp, params, operands, len(self.outputs), self.shape, self.dtype,
                                             self.source_on_device, one_by_one if self.exact else None,
                                             "a fused backward kernel", f"{len(self.nodes)} nodes' statements")
        return self.kernel is not None

    def source(self, kinds):
        """The loop for operands of these kinds: ``v0 = x0[i] * s0`` ..., ``o0[i] = v3``."""
        names = [n + "[i]" if kind is ARRAY else n for n, kind in zip(_operand_names(kinds), kinds)]
        body = [f"{var} = {expr.format(*names)}" for var, expr in self.lines]
        body += [f"o{j}[i] = {var}" for j, var in enumerate(self.results)]
        return _loop_source(body, len(self.outputs), kinds.count(ARRAY), kinds.count(SCALAR))

    def _launch(self, kernel, arrays, scalars):
        outs = [np.empty(self.shape, self.dtype) for _ in self.outputs]
        kernel(self.size, *outs, *arrays, *scalars)
        return outs

    def unfused(self, regs, direct, release):
        for step in self.steps:
            plan_step(step, regs, direct, release)

    def _check(self, outs, kinds, regs, direct, release):
        """A new loop's first call: the nodes one by one too (which leave the registers as they do in an unfused
        replay), and the loop's gradients must be their bits."""
        self.unfused(regs, direct, release)
        for r, d in zip(self.outputs, outs):
            if not np.array_equal(regs[r], d, equal_nan=True):
                raise RuntimeError(f"tinygen.compile: a fused backward loop differs from its {len(self.nodes)} "
                                   f"nodes run one by one; compile(fn, fuse=False) runs them unfused. The loop:\n"
                                   f"{self.source(kinds)}")
