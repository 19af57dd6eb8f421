"""Short float32 matrix products in Numba: ``a @ b`` where a has few rows (a small batch through a Linear layer, and
its input gradient) or b few columns, computed in registers of 16-lane vectors.

Why: a BLAS reaches its speed on large products by packing its operands into blocks; a product with 16 rows is over
before that pays, and some BLAS builds run it far below the machine's multiply-add peak. On a 2-core AMD EPYC
(Zen 4, AVX-512) with MKL, whose fast paths are for Intel processors, (16, 784) @ (784, 512) took 146 us and
(16, 784) @ (512, 784).T 97 us on 2 threads (OpenBLAS 129 and 213), against 82 us for JAX's compiled product on
one. These loops took 113 and 127 us on one thread there, so on two about half. Where it is used is the setting
TINYGEN_MM_SHORT_MAX_ROWS (benchmarks/README.md has the measurements behind its default).

How: LLVM's vector type ``<16 x float>`` is a Numba type here (``F32x16``) with six operations: load, store,
broadcast a scalar, zero, fused multiply-add and sum. A function written with them keeps its accumulators in
registers, which Numba's own loops over arrays do not (they load and store the result on every step). Two forms:
  * rows of b contiguous (``x @ W`` and the input gradient ``g @ W`` of a Linear layer): a tile of 4 rows of the
    result by 64 columns is 16 vectors; each step over k loads 4 vectors of b's row k and multiplies them by 4
    broadcast entries of a's column k (``_nn``);
  * columns of b contiguous (``x @ W.T``, W stored as (out, in) like PyTorch's): a tile of 4 by 4 entries of the
    result is 16 dot products along k, each summed in one vector over 16 k at a time and reduced at the end
    (``_nt``). a's rows must be contiguous too.
Columns beyond the last whole tile and rows beyond the last group of 4 are done one vector (or one dot product) at a
time; n and, in the dot-product form, k must be multiples of 16 (``mm`` leaves other products to BLAS).

Each entry of the result is summed by one thread in a fixed order, so the bits do not depend on the thread count;
they differ from BLAS's in the last places (another order of the sums, as between two BLAS libraries). Work is split
over Numba's threads by tiles of columns (or of rows, where there are few columns) from PARALLEL_MIN
multiply-adds.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .. import config
from . import blas, threads


def _max_rows():
    """The setting TINYGEN_MM_SHORT_MAX_ROWS; ``auto``: 64 where the CPU has AVX-512's 32 vector registers, which
    hold a tile's 16 accumulators and its operands (with AVX2's 16, half as wide, they would not), and the other
    products go to MKL, whose OpenMP threads Numba's loops run on (threads.py), else 0. With NumPy's OpenBLAS the
    products left to it keep its own worker spinning on the core a split tile needs: on the Zen 4 machine of
    benchmarks/README.md the GAN's compiled batch-16 step took 7.4 ms with these loops (7.8 on one thread)
    against 6.2 without, while the MLP's, all of whose large products are these loops', took 0.76 against 0.90."""
    rows = config.get("TINYGEN_MM_SHORT_MAX_ROWS")
    if rows == "auto":
        import numba
        from llvmlite import binding
        try:
            wide = binding.get_host_cpu_features().get("avx512f", False)
        except RuntimeError:  # LLVM cannot tell on this platform
            wide = False
        # Numba compiles for this CPU unless told another (NUMBA_CPU_NAME, e.g. "generic" for caches shared
        # between machines): then the vectors may not be AVX-512's
        wide = wide and numba.config.CPU_NAME in (None, "host")
        rows = 64 if wide and blas.mkl() is not None else 0
    return rows


MAX_ROWS = _max_rows()
MIN = 1 << 17  # multiply-adds; below, NumPy's BLAS runs the product on the calling thread in a few microseconds
PARALLEL_MIN = 1 << 18  # multiply-adds from which the tiles are split over Numba's threads

LANES = 16
_VECTOR = ir.VectorType(ir.FloatType(), LANES)


class F32x16(types.Type):
    def __init__(self):
        super().__init__(name="F32x16")


f32x16 = F32x16()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _vector_pointer(context, builder, array_type, array, index):
    """A pointer to the 16 floats from ``array[index]`` (a 1-D array of contiguous float32; no bounds check)."""
    struct = context.make_array(array_type)(context, builder, array)
    pointer = cgutils.get_item_pointer(context, builder, array_type, struct, [index], wraparound=False)
    return builder.bitcast(pointer, _VECTOR.as_pointer())


@intrinsic
def _load(typingctx, row, index):
    """The 16 floats row[index:index + 16] as a vector."""
    def codegen(context, builder, signature, args):
        return builder.load(_vector_pointer(context, builder, signature.args[0], *args), align=4)
    return f32x16(row, index), codegen


@intrinsic
def _store(typingctx, row, index, vector):
    """row[index:index + 16] = vector."""
    def codegen(context, builder, signature, args):
        builder.store(args[2], _vector_pointer(context, builder, signature.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()
    return types.void(row, index, vector), codegen


@intrinsic
def _broadcast(typingctx, scalar):
    """A vector of 16 copies of a float32."""
    def codegen(context, builder, signature, args):
        one = builder.insert_element(ir.Constant(_VECTOR, None), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_VECTOR, None),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
    return f32x16(scalar), codegen


@intrinsic
def _zero(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * LANES)
    return f32x16(), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c in each lane, rounded once."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                            "llvm.fma.v16f32")
        return builder.call(fn, list(args))
    return f32x16(a, b, c), codegen


@intrinsic
def _sum(typingctx, vector):
    """The sum of the 16 lanes, in the order LLVM picks for the machine (a tree: an ordered sum is 16 adds in a
    chain, which made the 4 x 4 dot-product tile 1.2-1.4x slower)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), _VECTOR]),
                                            "llvm.vector.reduce.fadd.v16f32")
        return builder.call(fn, [ir.Constant(ir.FloatType(), 0.0), args[0]], fastmath=("reassoc",))
    return types.float32(vector), codegen


@njit(cache=True, nogil=True, inline="always")
def _fma4(x, b0, b1, b2, b3, c0, c1, c2, c3):
    """One row of a tile: (x * b_v + c_v for v in 0..3), x one vector of a's row (broadcast or loaded)."""
    return _fma(x, b0, c0), _fma(x, b1, c1), _fma(x, b2, c2), _fma(x, b3, c3)


# ---- rows of b contiguous: tiles of 4 rows x 64 columns of the result ----------------------------------------------

@njit(cache=True, nogil=True)
def _nn_tile(a, b, c, i, j):
    """c[i:i+4, j:j+64] = a[i:i+4] @ b[:, j:j+64]."""
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = _zero()
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = _zero()
    for k in range(a.shape[1]):
        row = b[k]
        b0, b1, b2, b3 = _load(row, j), _load(row, j + 16), _load(row, j + 32), _load(row, j + 48)
        c00, c01, c02, c03 = _fma4(_broadcast(a[i, k]), b0, b1, b2, b3, c00, c01, c02, c03)
        c10, c11, c12, c13 = _fma4(_broadcast(a[i + 1, k]), b0, b1, b2, b3, c10, c11, c12, c13)
        c20, c21, c22, c23 = _fma4(_broadcast(a[i + 2, k]), b0, b1, b2, b3, c20, c21, c22, c23)
        c30, c31, c32, c33 = _fma4(_broadcast(a[i + 3, k]), b0, b1, b2, b3, c30, c31, c32, c33)
    _store4(c[i], j, c00, c01, c02, c03)
    _store4(c[i + 1], j, c10, c11, c12, c13)
    _store4(c[i + 2], j, c20, c21, c22, c23)
    _store4(c[i + 3], j, c30, c31, c32, c33)


@njit(cache=True, nogil=True)
def _store4(row, j, v0, v1, v2, v3):
    _store(row, j, v0)
    _store(row, j + 16, v1)
    _store(row, j + 32, v2)
    _store(row, j + 48, v3)


@njit(cache=True, nogil=True)
def _nn_vector(a, b, c, i, j):
    """c[i, j:j+16] = a[i] @ b[:, j:j+16]."""
    acc = _zero()
    for k in range(a.shape[1]):
        acc = _fma(_broadcast(a[i, k]), _load(b[k], j), acc)
    _store(c[i], j, acc)


@njit(cache=True, nogil=True)
def _nn_rows(a, b, c, j, lo, hi):
    """c[lo:hi, j:j+64]: tiles of 4 rows, then one row at a time."""
    whole = lo + (hi - lo) // 4 * 4
    for i in range(lo, whole, 4):
        _nn_tile(a, b, c, i, j)
    for i in range(whole, hi):
        for v in range(4):
            _nn_vector(a, b, c, i, j + 16 * v)


@njit(cache=True, nogil=True)
def _nn_rest(a, b, c, start):
    """The columns from ``start`` (fewer than 64, a multiple of 16), one vector at a time."""
    for i in range(c.shape[0]):
        for j in range(start, c.shape[1], LANES):
            _nn_vector(a, b, c, i, j)


@njit(cache=True, nogil=True)
def _nn(a, b, c):
    blocks = c.shape[1] // 64
    for block in range(blocks):
        _nn_rows(a, b, c, 64 * block, 0, a.shape[0])
    _nn_rest(a, b, c, 64 * blocks)


@njit(cache=True, nogil=True, parallel=True)
def _nn_par(a, b, c, row_parts):
    """_nn over Numba's threads: each part is a block of 64 columns, or a run of its rows when there are few
    blocks (``row_parts`` runs of a multiple of 4 rows)."""
    m = a.shape[0]
    blocks = c.shape[1] // 64
    step = ((m + row_parts - 1) // row_parts + 3) // 4 * 4
    for part in prange(blocks * row_parts):
        lo = min(m, part % row_parts * step)
        _nn_rows(a, b, c, 64 * (part // row_parts), lo, min(m, lo + step))
    _nn_rest(a, b, c, 64 * blocks)


# ---- columns of b contiguous (b = bt.T): tiles of 4 x 4 dot products along k ---------------------------------------

@njit(cache=True, nogil=True)
def _nt_tile(a, bt, c, i, j):
    """c[i:i+4, j:j+4] = a[i:i+4] @ bt[j:j+4].T (k a multiple of 16)."""
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    r0, r1, r2, r3 = bt[j], bt[j + 1], bt[j + 2], bt[j + 3]
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = _zero()
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = _zero()
    for k in range(0, a.shape[1], LANES):
        b0, b1, b2, b3 = _load(r0, k), _load(r1, k), _load(r2, k), _load(r3, k)
        c00, c01, c02, c03 = _fma4(_load(a0, k), b0, b1, b2, b3, c00, c01, c02, c03)
        c10, c11, c12, c13 = _fma4(_load(a1, k), b0, b1, b2, b3, c10, c11, c12, c13)
        c20, c21, c22, c23 = _fma4(_load(a2, k), b0, b1, b2, b3, c20, c21, c22, c23)
        c30, c31, c32, c33 = _fma4(_load(a3, k), b0, b1, b2, b3, c30, c31, c32, c33)
    _sum4(c[i], j, c00, c01, c02, c03)
    _sum4(c[i + 1], j, c10, c11, c12, c13)
    _sum4(c[i + 2], j, c20, c21, c22, c23)
    _sum4(c[i + 3], j, c30, c31, c32, c33)


@njit(cache=True, nogil=True)
def _sum4(row, j, v0, v1, v2, v3):
    row[j] = _sum(v0)
    row[j + 1] = _sum(v1)
    row[j + 2] = _sum(v2)
    row[j + 3] = _sum(v3)


@njit(cache=True, nogil=True)
def _nt_one(a, bt, c, i, j):
    ar, br = a[i], bt[j]
    acc = _zero()
    for k in range(0, a.shape[1], LANES):
        acc = _fma(_load(ar, k), _load(br, k), acc)
    c[i, j] = _sum(acc)


@njit(cache=True, nogil=True)
def _nt_block(a, bt, c, j):
    """Columns j:j+4 of c: tiles of 4 rows, then one row at a time."""
    m = a.shape[0]
    for i in range(0, m - m % 4, 4):
        _nt_tile(a, bt, c, i, j)
    for i in range(m - m % 4, m):
        for jj in range(j, j + 4):
            _nt_one(a, bt, c, i, jj)


@njit(cache=True, nogil=True)
def _nt(a, bt, c):
    for block in range(c.shape[1] // 4):
        _nt_block(a, bt, c, 4 * block)


@njit(cache=True, nogil=True, parallel=True)
def _nt_par(a, bt, c):
    for block in prange(c.shape[1] // 4):
        _nt_block(a, bt, c, 4 * block)


def _rows_contiguous(x):
    return x.strides[1] == 4 and x.strides[0] >= 4 * x.shape[1]


def mm(a, b):
    """``a @ b`` as a new C-ordered float32 array, or None where this module does not take the product. It takes two
    float32 matrices with n (b's columns) a multiple of 16 from 64, and of MIN multiply-adds or more, in one of
    two cases: few rows (m up to MAX_ROWS: a batch through a layer), b's rows contiguous (the outer-product form)
    or else b's columns and a's rows contiguous with k a multiple of 16 from 256 (the dot-product form); or a short
    k (up to MAX_ROWS: a layer's weight gradient, the batch summed over) with b's rows contiguous. Elsewhere BLAS
    was as fast or faster (benchmarks/README.md)."""
    if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 2 or b.ndim != 2:
        return None
    m, k = a.shape
    n = b.shape[1]
    if n < 64 or n % LANES or m * k * n < MIN or min(m, k) > MAX_ROWS:
        return None
    nn = _rows_contiguous(b)
    if not nn and not (m <= MAX_ROWS and k >= 256 and k % LANES == 0 and _rows_contiguous(b.T)
                       and _rows_contiguous(a)):
        return None
    c = np.empty((m, n), np.float32)
    split = threads.split_from(m * k * n, PARALLEL_MIN, threads.numba_threads)
    if nn and split:
        blocks = n // 64
        _nn_par(a, b, c, 1 if blocks >= 2 * split else max(1, min(split, m // 4)))
    elif nn:
        _nn(a, b, c)
    else:
        (_nt_par if split else _nt)(a, b.T, c)
    return c
