"""Direct NumPy definitions of the convolution and pooling ops (float64, written from the formulas, sharing no code
with tinygen's im2col kernels), and the hypothesis strategies of their arguments, for ``op_specs.CONV_SPECS``."""
import numpy as np
from hypothesis import strategies as st


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def np_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    elif padding == "valid":
        pads = ((0, 0), (0, 0))
    else:
        ph, pw = _pair(padding)
        pads = ((ph, ph), (pw, pw))
    xp = np.pad(x, ((0, 0), (0, 0)) + pads)
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    og = cout // groups
    out = np.zeros((n, cout, oh, ow))
    for y in range(oh):
        for z in range(ow):
            patch = xp[:, :, y * sh:y * sh + dh * (kh - 1) + 1:dh, z * sw:z * sw + dw * (kw - 1) + 1:dw]
            for g in range(groups):
                out[:, g * og:(g + 1) * og, y, z] = np.einsum(
                    "ncij,ocij->no", patch[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def np_conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Each input pixel scatters its weighted kernel into the output (the definition of the transposed conv)."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = cin // groups
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    out = np.zeros((n, og * groups, full_h, full_w))
    for y in range(h):
        for z in range(wd):
            for g in range(groups):
                contrib = np.einsum("nc,coij->noij", x[:, g * cg:(g + 1) * cg, y, z], w[g * cg:(g + 1) * cg])
                out[:, g * og:(g + 1) * og, y * sh:y * sh + dh * (kh - 1) + 1:dh,
                    z * sw:z * sw + dw * (kw - 1) + 1:dw] += contrib
    out = out[:, :, ph:full_h - ph, pw:full_w - pw]
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out


def _pool_len(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def np_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(padding), _pair(dilation)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    n, c, h, w = x.shape
    oh, ow = _pool_len(h, kh, sh, ph, dh, ceil_mode), _pool_len(w, kw, sw, pw, dw, ceil_mode)
    out = np.empty((n, c, oh, ow))
    for y in range(oh):
        for z in range(ow):
            rows = [r for r in range(y * sh - ph, y * sh - ph + dh * (kh - 1) + 1, dh) if 0 <= r < h]
            cols = [q for q in range(z * sw - pw, z * sw - pw + dw * (kw - 1) + 1, dw) if 0 <= q < w]
            out[:, :, y, z] = x[:, :, rows][:, :, :, cols].max(axis=(2, 3))
    return out


def np_avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    n, c, h, w = x.shape
    oh, ow = _pool_len(h, kh, sh, ph, 1, ceil_mode), _pool_len(w, kw, sw, pw, 1, ceil_mode)
    out = np.empty((n, c, oh, ow))
    for y in range(oh):
        for z in range(ow):
            h0, w0 = y * sh - ph, z * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            size = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            div = size if count_include_pad else (h1 - h0) * (w1 - w0)
            out[:, :, y, z] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / div
    return out


def np_adaptive_avg_pool2d(x, output_size):
    oh, ow = _pair(output_size)
    h, w = x.shape[2:]
    out = np.empty(x.shape[:2] + (oh, ow))
    for y in range(oh):
        for z in range(ow):
            rows = slice(y * h // oh, -(-(y + 1) * h // oh))
            cols = slice(z * w // ow, -(-(z + 1) * w // ow))
            out[:, :, y, z] = x[:, :, rows, cols].mean(axis=(2, 3))
    return out


def np_interpolate(x, size=None, scale_factor=None):
    h, w = x.shape[2:]
    if size is not None:
        oh, ow = _pair(size)
        scales = (np.float32(h) / np.float32(oh), np.float32(w) / np.float32(ow))
    else:
        fh, fw = _pair(scale_factor)
        oh, ow = int(np.floor(h * fh)), int(np.floor(w * fw))
        scales = (np.float32(1.0 / fh), np.float32(1.0 / fw))
    rows = [min(int(np.floor(np.float32(i) * scales[0])), h - 1) for i in range(oh)]
    cols = [min(int(np.floor(np.float32(j) * scales[1])), w - 1) for j in range(ow)]
    return x[:, :, rows][:, :, :, cols]


# ---- strategies: shapes first, then the arguments that fit them (op_specs draws kwargs(shapes)) ----------------------
def _sides(max_side=5):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side))


@st.composite
def conv_shapes(draw, transposed=False, bias=True):
    """(x, weight[, bias]) shapes of a small, possibly grouped convolution."""
    groups = draw(st.sampled_from([1, 1, 2]))
    n, cin_g, cout_g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    x = (n, cin_g * groups) + draw(_sides(4 if transposed else 6))
    w = ((cin_g * groups, cout_g) if transposed else (cout_g * groups, cin_g)) + kernel
    out_channels = cout_g * groups
    return (x, w, (out_channels,)) if bias else (x, w)


def _min_pad(size, k, d):
    """The least padding that lets a window of kernel k, dilation d fit in ``size``."""
    return max(0, -(-(d * (k - 1) + 1 - size) // 2))


@st.composite
def _conv_kwargs(draw, shapes, transposed):
    x, w = shapes[0], shapes[1]
    if not transposed:
        groups = x[1] // w[1]
    elif len(shapes) == 3:  # the bias has out_channels = weight.shape[1] * groups entries
        groups = shapes[2][0] // w[1]
    else:  # any divisor of in_channels fits a transposed weight (in_channels, out_channels / groups, kh, kw)
        groups = draw(st.sampled_from([g for g in (1, 2) if x[1] % g == 0]))
    stride = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    kw = {"stride": stride, "dilation": dilation, "groups": groups}
    if transposed:
        out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        pads = []
        for a in (0, 1):  # the output must be positive: (H - 1) s - 2p + d (k - 1) + op + 1 >= 1
            most = ((x[2 + a] - 1) * stride[a] + dilation[a] * (w[2 + a] - 1) + out_pad[a]) // 2
            pads.append(draw(st.integers(0, min(most, 2))))
        kw["padding"], kw["output_padding"] = tuple(pads), out_pad
        return kw
    pads = tuple(draw(st.integers(_min_pad(x[2 + a], w[2 + a], dilation[a]), _min_pad(x[2 + a], w[2 + a],
                                                                                      dilation[a]) + 1))
                 for a in (0, 1))
    same = stride == (1, 1) and draw(st.integers(0, 3)) == 0
    kw["padding"] = "same" if same else draw(st.sampled_from([pads, pads[0]])) if pads[0] == pads[1] else pads
    return kw


def conv_kwargs(shapes):
    return _conv_kwargs(shapes, False)


def conv_transpose_kwargs(shapes):
    return _conv_kwargs(shapes, True)


def image_shapes(max_side=6):
    return st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, max_side), st.integers(1, max_side)).map(
        lambda s: (s,))


@st.composite
def _pool_kwargs(draw, shapes, max_pool):
    x = shapes[0]
    kernel = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2))) if max_pool else (1, 1)
    # at least the padding that makes a window fit, at most half the kernel (PyTorch's limit)
    if any(_min_pad(x[2 + a], kernel[a], dilation[a]) > kernel[a] // 2 for a in (0, 1)):
        dilation = (1, 1)
    pads = tuple(draw(st.integers(_min_pad(x[2 + a], kernel[a], dilation[a]), kernel[a] // 2)) for a in (0, 1))
    stride = draw(st.sampled_from([None, draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))]))
    kw = {"kernel_size": kernel, "stride": stride, "padding": pads, "ceil_mode": draw(st.booleans())}
    if max_pool:
        kw["dilation"] = dilation
    else:
        kw["count_include_pad"] = draw(st.booleans())
    return kw


def _every_window_meets_input(size, k, s, p, d, ceil_mode):
    out = _pool_len(size, k, s, p, d, ceil_mode)
    return all(any(0 <= i * s - p + j * d < size for j in range(k)) for i in range(out))


def max_pool_kwargs(shapes):
    """Max-pool arguments whose every window holds an input element (a window of padding only gives -inf, which
    test_conv.py checks on its own)."""
    x = shapes[0]

    def fits(kw):
        stride = kw["stride"] or kw["kernel_size"]
        return all(_every_window_meets_input(x[2 + a], kw["kernel_size"][a], stride[a], kw["padding"][a],
                                             kw["dilation"][a], kw["ceil_mode"]) for a in (0, 1))
    return _pool_kwargs(shapes, True).filter(fits)


def avg_pool_kwargs(shapes):
    return _pool_kwargs(shapes, False)


def adaptive_kwargs(shapes):
    out = st.tuples(st.integers(1, 5), st.integers(1, 5))
    return st.fixed_dictionaries({"output_size": st.one_of(st.just(1), st.integers(1, 5), out)})


def upsample_kwargs(shapes):
    by_size = st.fixed_dictionaries({"size": st.tuples(st.integers(1, 8), st.integers(1, 8))})
    by_scale = st.fixed_dictionaries({"scale_factor": st.sampled_from([2.0, 3.0, 1.5, (2.0, 1.0), (1.7, 2.5)])})
    return st.one_of(by_size, by_scale)
