"""MKL's ``cblas_sgemm`` / ``cblas_dgemm`` called from compiled code: blas.py's product without ctypes' cost.

A ctypes call converts each of its 14 arguments and takes three ``.ctypes.data`` pointers: about 5 us a product,
where this compiled caller takes about 0.6 us (measured on a 1 x 1 x 1 product, 2-core machine of
benchmarks/README.md). A compiled training step at batch 16 makes 8 (the MLP) to 30 (the GAN) products. The same
MKL function is called with the same arguments, so the result has the same bits as the ctypes call.

The function's address is an argument, not a constant of the compiled code, so the compiled caller is cached on
disk like the other kernels (``cache=True``). blas.py uses this module when Numba's kernels are on (the setting
TINYGEN_NUMBA) and Numba imports; else it calls MKL through ctypes.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_ROW_MAJOR = 101  # CBLAS's enum


@intrinsic
def _call_gemm(typingctx, address, trans_a, trans_b, m, n, k, a, lda, b, ldb, c):
    """``cblas_?gemm(RowMajor, trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, 0, c, n)`` through the function at
    ``address`` (its C signature: six ints, the scalar alpha, three (pointer, int) pairs with beta before the last;
    the scalar is float or double as the arrays' dtype)."""
    sig = types.void(address, trans_a, trans_b, m, n, k, a, lda, b, ldb, c)

    def codegen(context, builder, signature, args):
        address, trans_a, trans_b, m, n, k, a, lda, b, ldb, c = args
        real = context.get_value_type(signature.args[6].dtype)
        i32, pointer = ir.IntType(32), ir.IntType(8).as_pointer()
        function = ir.FunctionType(ir.VoidType(), [i32] * 6 + [real, pointer, i32, pointer, i32, real, pointer, i32])

        def data(position, array):
            struct = context.make_array(signature.args[position])(context, builder, array)
            return builder.bitcast(struct.data, pointer)

        def int32(value):
            return builder.trunc(value, i32)
        builder.call(builder.inttoptr(address, function.as_pointer()),
                     [ir.Constant(i32, _ROW_MAJOR), int32(trans_a), int32(trans_b), int32(m), int32(n), int32(k),
                      ir.Constant(real, 1.0), data(6, a), int32(lda), data(8, b), int32(ldb), ir.Constant(real, 0.0),
                      data(10, c), int32(n)])
        return context.get_dummy_value()
    return sig, codegen


# One compiled caller a dtype, for operands of any layout ("A": the data pointer is all it reads) and read-only or
# not (a writable array passes as a read-only one), compiled (or loaded from the cache) when this module is imported,
# instead of once for each mix of C-, F- and strided, writable and read-only operands.
_SIGNATURES = [types.void(types.int64, types.int64, types.int64, types.Array(dtype, 2, "A", readonly=True),
                          types.int64, types.Array(dtype, 2, "A", readonly=True), types.int64,
                          types.Array(dtype, 2, "C"))
               for dtype in (types.float32, types.float64)]


@njit(_SIGNATURES, cache=True, nogil=True)
def gemm(address, trans_a, trans_b, a, lda, b, ldb, c):
    """c = a @ b by the gemm at ``address``; the transpose flags and leading dimensions are blas.py's
    (``_layout``), c is C-ordered of a's rows and b's columns."""
    m, k = a.shape
    _call_gemm(address, trans_a, trans_b, m, c.shape[1], k, a, lda, b, ldb, c)
