"""CuPy versions of the convolution kernels: cuDNN through ``cupyx.cudnn`` where it imports (float32/float64,
symmetric padding), else conv.py's reference on CuPy (im2col + cuBLAS through ``@``).

cuDNN takes padding per axis, so PyTorch's 'same' with an odd total padding (more at the end) runs the reference.
"""
from . import conv as _ref

_cudnn = None  # cupyx.cudnn once imported, False when it does not import


def _cudnn_module():
    global _cudnn
    if _cudnn is None:
        try:
            import cupyx.cudnn as cudnn  # needs CuPy built with cuDNN and the cuDNN library
            _cudnn = cudnn
        except Exception:  # ImportError, or a missing shared library
            _cudnn = False
    return _cudnn


def _cudnn_for(x, padding):
    """cupyx.cudnn when it can run this call, else None."""
    if type(x).__module__.split(".")[0] != "cupy" or x.dtype.char not in "fd":
        return None
    if padding[0][0] != padding[0][1] or padding[1][0] != padding[1][1]:
        return None
    return _cudnn_module() or None


def conv2d_fwd(x, w, stride, padding, dilation, groups, keep_cols=False):
    cudnn = _cudnn_for(x, padding)
    if cudnn is None:
        return _ref.conv2d_fwd(x, w, stride, padding, dilation, groups, keep_cols)
    import cupy
    oh, ow = _ref._out_hw(x.shape[2:], w.shape[2:], stride, padding, dilation)
    y = cupy.empty((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
    cudnn.convolution_forward(cupy.ascontiguousarray(x), cupy.ascontiguousarray(w), None, y,
                              (padding[0][0], padding[1][0]), tuple(stride), tuple(dilation), groups)
    return (y, None) if keep_cols else y  # cuDNN keeps no column matrix


def conv2d_bwd_input(g, w, x_hw, stride, padding, dilation, groups):
    cudnn = _cudnn_for(g, padding)
    if cudnn is None:
        return _ref.conv2d_bwd_input(g, w, x_hw, stride, padding, dilation, groups)
    import cupy
    gx = cupy.empty((g.shape[0], w.shape[1] * groups) + tuple(x_hw), dtype=g.dtype)
    cudnn.convolution_backward_data(cupy.ascontiguousarray(w), cupy.ascontiguousarray(g), None, gx,
                                    (padding[0][0], padding[1][0]), tuple(stride), tuple(dilation), groups)
    return gx


def conv2d_bwd_weight(x, g, kernel_hw, stride, padding, dilation, groups, cols=None):
    cudnn = _cudnn_for(x, padding)
    if cudnn is None:
        return _ref.conv2d_bwd_weight(x, g, kernel_hw, stride, padding, dilation, groups, cols)
    import cupy
    gw = cupy.empty((g.shape[1], x.shape[1] // groups) + tuple(kernel_hw), dtype=x.dtype)
    cudnn.convolution_backward_filter(cupy.ascontiguousarray(x), cupy.ascontiguousarray(g), gw,
                                      (padding[0][0], padding[1][0]), tuple(stride), tuple(dilation), groups)
    return gw
