"""Every argument check of the public API: a bad dim, size, count, probability, norm, dtype or type raises
tinygen's own error (naming the function and the argument, worded as PyTorch's), never a wrong answer, a
wrap-around or an error from NumPy's or Python's internals. One table entry per check."""
import numpy as np
import pytest

import tinygen as tg
from tinygen import data, nn
from tinygen.nn.utils import clip_grad_norm_, clip_grads_with_norm_

x23 = tg.ones(2, 3)
x0d = tg.tensor(1.0)
img = np.zeros((2, 4, 4), dtype=np.float32)


def _param_with_grad():
    p = tg.ones(3, requires_grad=True)
    p.grad = tg.ones(3)
    return p


DIM_RANGE = r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"

CHECKS = [
    # ---- tensor creation: data and dtype ----------------------------------------------------------------------
    ("tensor-uint8-overflow", lambda: tg.tensor([300], dtype=tg.uint8), RuntimeError,
     "tensor.*cannot be converted to type uint8 without overflow"),
    ("tensor-uint8-negative", lambda: tg.tensor([-1], dtype=tg.uint8), RuntimeError, "uint8 without overflow"),
    ("tensor-int32-overflow", lambda: tg.tensor([2**40], dtype=tg.int32), RuntimeError, "int32 without overflow"),
    ("tensor-float-to-int-overflow", lambda: tg.tensor([1e20], dtype=tg.int64), RuntimeError,
     "int64 without overflow"),
    ("tensor-nan-to-int", lambda: tg.tensor([float("nan")], dtype=tg.int64), RuntimeError, "without overflow"),
    ("tensor-int-to-float16-overflow", lambda: tg.tensor([70000], dtype=tg.float16), RuntimeError,
     "float16 without overflow"),
    ("tensor-array-uint8-overflow", lambda: tg.tensor(np.array([256, 3]), dtype=tg.uint8), RuntimeError,
     "uint8 without overflow"),
    ("tensor-uint64-too-large", lambda: tg.tensor(np.array([2**64 - 1], dtype=np.uint64)), OverflowError,
     "int64 without overflow"),
    ("tensor-python-int-too-large", lambda: tg.tensor([2**70]), TypeError, "too large for int64"),
    ("tensor-ragged", lambda: tg.tensor([[1, 2], [3]]), ValueError,
     r"tensor\(\): data expected sequence of length 2 at dim 1 \(got 1\)"),
    ("tensor-ragged-deep", lambda: tg.tensor([[[1], [2]], [[3], [4, 5]]]), ValueError,
     "expected sequence of length 1 at dim 2"),
    ("tensor-mixed-nesting", lambda: tg.tensor([[1, 2], 3]), ValueError, "mixes sequences and numbers"),
    ("tensor-strings", lambda: tg.tensor(["a", "b"]), TypeError, r"tensor\(\).*dtype <U1 \(str\)"),
    ("tensor-strings-with-dtype", lambda: tg.tensor(["1.5"], dtype=tg.float32), TypeError, r"\(str\)"),
    ("tensor-none", lambda: tg.tensor(None), TypeError, "not numbers"),
    ("as_tensor-overflow", lambda: tg.as_tensor([300], dtype=tg.uint8), RuntimeError, r"as_tensor\(\)"),
    ("Tensor-ragged", lambda: tg.Tensor([[1.0], [2.0, 3.0]]), ValueError, "expected sequence of length 1"),
    ("setitem-overflow", lambda: tg.zeros(2, dtype=tg.uint8).__setitem__(0, 300), RuntimeError,
     r"setitem\(\).*uint8 without overflow"),
    ("setitem-string", lambda: tg.zeros(2).__setitem__(0, "a"), TypeError, "setitem: can't assign a str"),
    ("setitem-out-of-bounds", lambda: tg.zeros(2).__setitem__(5, 1.0), IndexError, "setitem.*out of bounds"),
    ("getitem-ragged-index", lambda: tg.zeros(3)[[[0], [0, 1]]], IndexError, "is invalid for a tensor"),
    # ---- tensor creation: sizes and ranges --------------------------------------------------------------------
    ("zeros-negative", lambda: tg.zeros(2, -1), ValueError, r"zeros: Trying to create tensor with negative "
                                                               r"dimension -1: \[2, -1\]"),
    ("ones-float-size", lambda: tg.ones(2.5), TypeError,
     r"ones\(\): argument 'size' must be tuple of ints, but found element of type float at pos 0"),
    ("empty-string-size", lambda: tg.empty("3"), TypeError, r"empty\(\): argument 'size'"),
    ("full-negative", lambda: tg.full((-2,), 1.0), ValueError, "full: Trying to create tensor with negative"),
    ("full-string-fill", lambda: tg.full((2,), "a"), TypeError, r"full\(\): argument 'fill_value' must be a "
                                                                 r"number, not str"),
    ("full-fill-overflow", lambda: tg.full((2,), 300, dtype=tg.uint8), RuntimeError,
     "full.*300 cannot be converted to type uint8"),
    ("zeros_like-non-tensor", lambda: tg.zeros_like([1.0]), TypeError,
     r"zeros_like\(\): argument 'input' must be Tensor, not list"),
    ("ones_like-non-tensor", lambda: tg.ones_like(1.0), TypeError, r"ones_like\(\): argument 'input'"),
    ("full_like-non-tensor", lambda: tg.full_like(None, 1), TypeError, r"full_like\(\): argument 'input'"),
    ("arange-zero-step", lambda: tg.arange(0, 10, 0), ValueError, "arange: step must be nonzero"),
    ("arange-wrong-sign", lambda: tg.arange(0, 10, -1), ValueError, "inconsistent with step sign"),
    ("arange-nan", lambda: tg.arange(float("nan")), ValueError, "arange: unsupported range: end is nan"),
    ("arange-string", lambda: tg.arange("5"), TypeError, r"arange\(\): argument 'end' must be a number"),
    ("linspace-negative-steps", lambda: tg.linspace(0, 1, -1), ValueError, "linspace: steps must be >= 0"),
    ("linspace-float-steps", lambda: tg.linspace(0, 1, 2.5), TypeError, r"linspace\(\): argument 'steps'"),
    ("linspace-inf", lambda: tg.linspace(0, float("inf"), 3), ValueError, "linspace: unsupported range"),
    ("eye-negative-n", lambda: tg.eye(-1), ValueError, "eye: n must be >= 0, got -1"),
    ("eye-negative-m", lambda: tg.eye(2, -3), ValueError, "eye: m must be >= 0, got -3"),
    ("eye-float-n", lambda: tg.eye(2.0), TypeError, r"eye\(\): argument 'n' must be int, not float"),
    ("size-dim", lambda: x23.size(2), IndexError, "size: " + DIM_RANGE),
    ("size-0d", lambda: x0d.size(0), IndexError, "Dimension specified as 0 but tensor has no dimensions"),
    # ---- shape ops ------------------------------------------------------------------------------------------
    ("squeeze-dim", lambda: x23.squeeze(2), IndexError, "squeeze: " + DIM_RANGE),
    ("squeeze-dims-tuple", lambda: x23.squeeze((0, -3)), IndexError, "squeeze: Dimension out of range"),
    ("squeeze-float-dim", lambda: x23.squeeze(0.5), TypeError, r"squeeze\(\): argument 'dim' must be int"),
    ("squeeze-non-tensor", lambda: tg.squeeze([1.0], 0), TypeError, r"squeeze\(\): argument 'input' must be "
                                                                     r"Tensor, not list"),
    ("unsqueeze-dim", lambda: x23.unsqueeze(3), IndexError,
     r"unsqueeze: Dimension out of range \(expected to be in range of \[-3, 2\], but got 3\)"),
    ("unsqueeze-non-tensor", lambda: tg.unsqueeze(1.0, 0), TypeError, r"unsqueeze\(\): argument 'input'"),
    ("flatten-start", lambda: x23.flatten(2), IndexError, "flatten: " + DIM_RANGE),
    ("flatten-end", lambda: x23.flatten(0, -3), IndexError, "flatten: Dimension out of range"),
    ("flatten-order", lambda: x23.flatten(1, 0), ValueError, "flatten: start_dim 1 comes after end_dim 0"),
    ("flatten-0d", lambda: x0d.flatten(1), IndexError, r"expected to be in range of \[-1, 0\]"),
    ("transpose-dim", lambda: x23.transpose(0, 2), IndexError, "transpose: " + DIM_RANGE),
    ("permute-dim", lambda: x23.permute(0, 2), IndexError, "permute: " + DIM_RANGE),
    ("permute-repeated", lambda: x23.permute(1, 1), ValueError, "permute: repeated dim"),
    ("permute-count", lambda: x23.permute(0), ValueError, "permute: number of dims don't match"),
    ("reshape-two-inferred", lambda: x23.reshape(-1, -1), ValueError, "only one dimension can be inferred"),
    ("reshape-negative", lambda: x23.reshape(-2, 3), ValueError, "reshape: invalid shape dimension -2"),
    ("reshape-float", lambda: x23.reshape(2.0, 3), TypeError, r"reshape\(\): argument 'shape' must be tuple "
                                                               r"of ints, but found element of type float"),
    ("reshape-non-tensor", lambda: tg.reshape([1, 2], 2), TypeError, r"reshape\(\): argument 'input'"),
    ("view-negative", lambda: x23.view(3, -3), ValueError, "invalid shape dimension -3"),
    ("expand-negative", lambda: x23.expand(2, -2), ValueError, "expand: invalid shape dimension -2"),
    ("expand-leading-minus-one", lambda: x23.expand(-1, 2, 3), ValueError, "isn't allowed in a leading"),
    ("cat-dim", lambda: tg.cat([x23, x23], 2), IndexError, "cat: " + DIM_RANGE),
    ("cat-numbers", lambda: tg.cat([1, 2]), TypeError,
     r"cat\(\): expected Tensor as element 0 in argument 'tensors', but got int"),
    ("cat-single-tensor", lambda: tg.cat(x23), TypeError, r"cat\(\): argument 'tensors' must be a tuple or list "
                                                          r"of Tensors, not Tensor"),
    ("cat-empty", lambda: tg.cat([]), ValueError, "cat: expected a non-empty list"),
    ("stack-dim", lambda: tg.stack([x23, x23], 3), IndexError,
     r"stack: Dimension out of range \(expected to be in range of \[-3, 2\], but got 3\)"),
    ("stack-numbers", lambda: tg.stack([x23, 2.0]), TypeError, "element 1 in argument 'tensors', but got float"),
    ("split-dim", lambda: x23.split(1, 2), IndexError, "split: " + DIM_RANGE),
    ("split-negative-size", lambda: x23.split(-1), ValueError, "split: split_size can only be 0 if"),
    ("split-zero-size", lambda: x23.split(0), ValueError, "split_size=0"),
    ("split-float-size", lambda: x23.split(1.5), TypeError, r"split\(\): argument 'split_size_or_sections'"),
    ("split-negative-section", lambda: x23.split([3, -1], 1), ValueError,
     "split: split_size_or_sections must be >= 0, got -1"),
    ("split-sections-sum", lambda: x23.split([1, 1], 1), ValueError, "add up to 2, but dim 1 has size 3"),
    ("split-0d", lambda: x0d.split(1), RuntimeError, "split: expected a tensor with at least one dimension"),
    ("chunk-zero", lambda: x23.chunk(0), ValueError, "chunk expects `chunks` to be greater than 0, got: 0"),
    ("chunk-negative", lambda: x23.chunk(-2), ValueError, "greater than 0, got: -2"),
    ("chunk-float", lambda: x23.chunk(2.0), TypeError, r"chunk\(\): argument 'chunks' must be int"),
    ("chunk-dim", lambda: x23.chunk(2, 2), IndexError, "chunk: " + DIM_RANGE),
    ("contiguous-non-tensor", lambda: tg.ops.contiguous(3), TypeError, r"contiguous\(\): argument 'input'"),
    # ---- reductions -----------------------------------------------------------------------------------------
    ("sum-dim", lambda: x23.sum(2), IndexError, "sum: " + DIM_RANGE),
    ("sum-float-dim", lambda: x23.sum(1.0), TypeError, r"sum\(\): argument 'dim' must be int, not float"),
    ("sum-dims-tuple", lambda: x23.sum((0, 5)), IndexError, "sum: Dimension out of range"),
    ("sum-repeated", lambda: x23.sum((1, -1)), ValueError, "repeats an axis"),
    ("sum-non-tensor", lambda: tg.sum([1, 2]), TypeError, r"sum\(\): argument 'input' must be Tensor, not list"),
    ("mean-dim", lambda: x23.mean(-3), IndexError, "mean: " + DIM_RANGE.replace("got 2", "got -3")),
    ("mean-non-tensor", lambda: tg.mean(1.0), TypeError, r"mean\(\): argument 'input'"),
    ("var-dim", lambda: x23.var(2), IndexError, "var: Dimension out of range"),
    ("std-non-tensor", lambda: tg.std((1.0, 2.0)), TypeError, r"std\(\): argument 'input'"),
    ("max-dim", lambda: x23.max(2), IndexError, "max: Dimension out of range"),
    ("max-non-tensor", lambda: tg.max([1, 2]), TypeError, r"max\(\): argument 'input'"),
    ("min-dim", lambda: x23.min(-3), IndexError, "min: Dimension out of range"),
    ("amax-dim", lambda: x23.amax(2), IndexError, "amax: Dimension out of range"),
    ("amin-non-tensor", lambda: tg.amin(None), TypeError, r"amin\(\): argument 'input'"),
    ("argmax-dim", lambda: x23.argmax(2), IndexError, "argmax: Dimension out of range"),
    ("argmin-non-tensor", lambda: tg.argmin([3, 1]), TypeError, r"argmin\(\): argument 'input'"),
    ("logsumexp-dim", lambda: x23.logsumexp(2), IndexError, "logsumexp: Dimension out of range"),
    ("softmax-dim", lambda: x23.softmax(2), IndexError, "softmax: Dimension out of range"),
    ("log_softmax-non-tensor", lambda: tg.log_softmax([1.0], 0), TypeError, r"log_softmax\(\): argument"),
    # ---- random ---------------------------------------------------------------------------------------------
    ("randint-empty-range", lambda: tg.randint(5, 5, (2,)), ValueError,
     "randint: random_ expects 'from' to be less than 'to', but got from=5 >= to=5"),
    ("randint-reversed-range", lambda: tg.randint(3, 1, (2,)), ValueError, "from=3 >= to=1"),
    ("randint-high-only-zero", lambda: tg.randint(0), ValueError, "from=0 >= to=0"),
    ("randint-float-bound", lambda: tg.randint(0.5, 3), TypeError, r"randint\(\): argument 'low' must be int"),
    ("randint-range-beyond-dtype", lambda: tg.randint(0, 300, (2,), dtype=tg.uint8), ValueError,
     r"randint: the range \[0, 300\) does not fit dtype uint8"),
    ("randint-bool-dtype", lambda: tg.randint(0, 2, (2,), dtype=tg.bool), ValueError, "does not fit dtype bool"),
    ("randint-negative-size", lambda: tg.randint(0, 3, (-1,)), ValueError, "randint: Trying to create tensor"),
    ("randn-negative-size", lambda: tg.randn(2, -3), ValueError, "randn: Trying to create tensor with negative"),
    ("rand-float-size", lambda: tg.rand(2.5), TypeError, r"rand\(\): argument 'size'"),
    ("randperm-negative", lambda: tg.randperm(-1), ValueError, "randperm: n must be >= 0, got -1"),
    ("randperm-float", lambda: tg.randperm(3.0), TypeError, r"randperm\(\): argument 'n' must be int"),
    ("normal-negative-std", lambda: tg.normal(0.0, -1.0, (2,)), ValueError,
     "normal expects std >= 0.0, but found std -1.0"),
    ("normal-string-mean", lambda: tg.normal("0", 1.0, (2,)), TypeError, r"normal\(\): argument 'mean'"),
    ("bernoulli-number", lambda: tg.bernoulli(0.5), TypeError, r"bernoulli\(\): argument 'p' must be Tensor, "
                                                                r"not float"),
    ("bernoulli-out-of-range", lambda: tg.bernoulli(tg.tensor([0.5, 1.5])), ValueError,
     r"bernoulli: all elements of p must be probabilities in \[0, 1\]"),
    ("bernoulli-nan", lambda: tg.bernoulli(tg.tensor([float("nan")])), ValueError, "probabilities in"),
    ("bernoulli-int", lambda: tg.bernoulli(tg.tensor([1])), TypeError, "floating tensor of probabilities"),
    ("randn_like-non-tensor", lambda: tg.randn_like([1.0]), TypeError, r"randn_like\(\): argument 'input'"),
    ("rand_like-non-tensor", lambda: tg.rand_like(2.0), TypeError, r"rand_like\(\): argument 'input'"),
    # ---- gradient clipping ----------------------------------------------------------------------------------
    ("clip_grad_norm_-negative", lambda: clip_grad_norm_([_param_with_grad()], -1.0), ValueError,
     "clip_grad_norm_: max_norm must be >= 0, got -1.0"),
    ("clip_grad_norm_-nan", lambda: clip_grad_norm_([_param_with_grad()], float("nan")), ValueError,
     "max_norm must be >= 0, got nan"),
    ("clip_grads_with_norm_-negative", lambda: clip_grads_with_norm_([_param_with_grad()], -2.0, tg.tensor(1.0)),
     ValueError, "clip_grads_with_norm_: max_norm must be >= 0"),
    # ---- layer constructors ---------------------------------------------------------------------------------
    ("Linear-negative", lambda: nn.Linear(-1, 3), ValueError, "Linear: in_features must be >= 0, got -1"),
    ("Linear-float", lambda: nn.Linear(2, 3.5), TypeError, r"Linear\(\): argument 'out_features' must be int"),
    ("Linear-string", lambda: nn.Linear("3", 2), TypeError, r"Linear\(\): argument 'in_features' must be int, "
                                                             r"not str"),
    ("Embedding-negative", lambda: nn.Embedding(-5, 2), ValueError, "Embedding: num_embeddings must be >= 0"),
    ("Embedding-dim-float", lambda: nn.Embedding(5, 2.0), TypeError, r"Embedding\(\): argument 'embedding_dim'"),
    ("Embedding-padding-float", lambda: nn.Embedding(5, 2, padding_idx=1.5), TypeError,
     r"Embedding\(\): argument 'padding_idx'"),
    ("Dropout-p-above-one", lambda: nn.Dropout(1.5), ValueError,
     "Dropout: p must be in .*probability has to be between 0 and 1, but got 1.5"),
    ("Dropout-p-negative", lambda: nn.Dropout(-0.1), ValueError, "between 0 and 1, but got -0.1"),
    ("Dropout-p-nan", lambda: nn.Dropout(float("nan")), ValueError, "between 0 and 1, but got nan"),
    ("Dropout-p-string", lambda: nn.Dropout("0.5"), TypeError, r"Dropout\(\): argument 'p' must be a real "
                                                               r"number, not str"),
    ("BatchNorm1d-negative", lambda: nn.BatchNorm1d(-3), ValueError, "BatchNorm1d: num_features must be >= 0"),
    ("BatchNorm2d-float", lambda: nn.BatchNorm2d(3.0), TypeError, r"BatchNorm2d\(\): argument 'num_features'"),
    ("BatchNorm1d-eps-negative", lambda: nn.BatchNorm1d(3, eps=-1e-5), ValueError, "BatchNorm1d: eps must be >= 0"),
    ("BatchNorm1d-eps-nan", lambda: nn.BatchNorm1d(3, eps=float("nan")), ValueError, "eps must be finite"),
    ("BatchNorm1d-momentum", lambda: nn.BatchNorm1d(3, momentum=1.5), ValueError,
     r"BatchNorm1d: momentum must be in \[0.0, 1.0\], got 1.5"),
    ("BatchNorm2d-momentum-string", lambda: nn.BatchNorm2d(3, momentum="0.1"), TypeError,
     r"BatchNorm2d\(\): argument 'momentum'"),
    ("LayerNorm-negative", lambda: nn.LayerNorm((4, -2)), ValueError, "LayerNorm: normalized_shape must be >= 0"),
    ("LayerNorm-eps", lambda: nn.LayerNorm(4, eps=-1.0), ValueError, "LayerNorm: eps must be >= 0"),
    ("Flatten-float-dim", lambda: nn.Flatten(1.0), TypeError, r"Flatten\(\): argument 'start_dim' must be int"),
    ("Unflatten-sizes", lambda: nn.Unflatten(1, (2, -2)), ValueError, "Unflatten: unflattened_size must be >= -1"),
    ("Unflatten-two-inferred", lambda: nn.Unflatten(1, (-1, -1)), ValueError, "only one size can be inferred"),
    ("Unflatten-not-sequence", lambda: nn.Unflatten(1, 4), TypeError, r"Unflatten\(\): argument "
                                                                       r"'unflattened_size'"),
    ("LeakyReLU-string", lambda: nn.LeakyReLU("0.1"), TypeError, r"LeakyReLU\(\): argument 'negative_slope'"),
    ("ELU-nan", lambda: nn.ELU(float("nan")), ValueError, "ELU: alpha must be finite"),
    ("Softplus-zero-beta", lambda: nn.Softplus(beta=0), ValueError, "Softplus: beta must be non-zero"),
    ("Softmax-float-dim", lambda: nn.Softmax(1.0), TypeError, r"Softmax\(\): argument 'dim' must be int"),
    ("LogSoftmax-string-dim", lambda: nn.LogSoftmax("1"), TypeError, r"LogSoftmax\(\): argument 'dim'"),
    # ---- data -----------------------------------------------------------------------------------------------
    ("RandomHorizontalFlip-p", lambda: data.RandomHorizontalFlip(1.2), ValueError,
     "RandomHorizontalFlip: p must be in"),
    ("RandomHorizontalFlip-p-string", lambda: data.RandomHorizontalFlip("0.5"), TypeError,
     r"RandomHorizontalFlip\(\): argument 'p'"),
    ("RandomCrop-float-size", lambda: data.RandomCrop(2.5), ValueError, "RandomCrop: size must be a positive int"),
    ("RandomCrop-zero-size", lambda: data.RandomCrop((0, 3)), ValueError, "RandomCrop: size must be"),
    ("RandomCrop-string-fill", lambda: data.RandomCrop(fill="x"), TypeError, r"RandomCrop\(\): argument 'fill'"),
    ("RandomRotation-string", lambda: data.RandomRotation("10"), TypeError, r"RandomRotation\(\): argument "
                                                                             r"'degrees'"),
    ("RandomRotation-nan", lambda: data.RandomRotation(float("nan")), ValueError,
     "RandomRotation: degrees must be finite"),
    ("rotate-nan-angle", lambda: data.rotate(img, float("nan")), ValueError, "rotate: angles must be finite"),
    ("rotate-string-angle", lambda: data.rotate(img, "x"), TypeError, "rotate: angles must be a number"),
    ("rotate-nan-fill", lambda: data.rotate(img, 10.0, fill=float("nan")), ValueError, "rotate: fill must be"),
    ("Compose-not-a-list", lambda: data.Compose(5), TypeError, r"Compose\(\): argument 'transforms'"),
    ("generator-negative-seed", lambda: data.binarize(img, generator=-1), ValueError,
     "an int seed must be non-negative"),
    ("to_unit-int-dtype", lambda: data.to_unit(img, dtype=tg.int64), TypeError,
     "to_unit: dtype must be a floating dtype"),
    ("to_symmetric-int-dtype", lambda: data.to_symmetric(img, dtype=tg.uint8), TypeError,
     "to_symmetric: dtype must be a floating dtype"),
    ("to_unit-strings", lambda: data.to_unit(["a"]), TypeError, "expected image data"),
    ("DataLoader-batch-size", lambda: data.DataLoader(img, batch_size=0), ValueError,
     "DataLoader: batch_size must be a positive int"),
    ("GaussianMixture2D-std-string", lambda: data.GaussianMixture2D([[0.0, 0.0]], "1"), TypeError,
     r"mixture\(\): argument 'std'"),
    ("GaussianMixture2D-std-inf", lambda: data.GaussianMixture2D([[0.0, 0.0]], float("inf")), ValueError,
     "std must be finite"),
    ("mode_metrics-min-fraction", lambda: data.mode_metrics(np.zeros((4, 2)), [[0.0, 0.0]], 1.0,
                                                            min_fraction=2.0), ValueError,
     "mode_metrics: min_fraction must be in"),
    ("mode_metrics-threshold", lambda: data.mode_metrics(np.zeros((4, 2)), [[0.0, 0.0]], 1.0, threshold=-1.0),
     ValueError, "std and threshold must be positive"),
    ("mode_metrics-strings", lambda: data.mode_metrics([["a", "b"]], [[0.0, 0.0]], 1.0), TypeError,
     "mode_metrics: samples and centres must be numeric"),
    # ---- elementwise ops, matmul and the layer functions given something that is not a tensor -----------------
    ("exp-list", lambda: tg.exp([1.0]), TypeError, r"exp\(\): argument 'input' must be Tensor, not list"),
    ("relu-number", lambda: tg.relu(3), TypeError, r"relu\(\): argument 'input' must be Tensor, not int"),
    ("abs-number", lambda: tg.abs(-1.0), TypeError, r"abs\(\): argument 'input' must be Tensor"),
    ("clone-list", lambda: tg.clone([1.0]), TypeError, r"clone\(\): argument 'input' must be Tensor"),
    ("clamp-string-bound", lambda: tg.clamp(x23, "a"), TypeError, r"clamp\(\): argument 'min' must be a real"),
    ("leaky_relu-string-slope", lambda: tg.leaky_relu(x23, "a"), TypeError,
     r"leaky_relu\(\): argument 'negative_slope' must be a real number"),
    ("elu-string-alpha", lambda: tg.elu(x23, "a"), TypeError, r"elu\(\): argument 'alpha'"),
    ("softplus-string-beta", lambda: tg.softplus(x23, "a"), TypeError, r"softplus\(\): argument 'beta'"),
    ("neg-number", lambda: tg.neg(2), TypeError, r"neg\(\): argument 'input' must be Tensor, not int"),
    ("logical_not-number", lambda: tg.logical_not(True), TypeError, r"logical_not\(\): argument 'input'"),
    ("add-string", lambda: x23 + "a", TypeError, "unsupported operand: a tensor meets str"),
    ("matmul-number", lambda: tg.matmul(2, x23), TypeError, r"matmul\(\): argument 'input' must be Tensor"),
    ("dropout-number", lambda: nn.functional.dropout(1.0), TypeError, r"dropout\(\): argument 'input'"),
    ("linear-list", lambda: nn.functional.linear([1.0], tg.ones(2, 1)), TypeError,
     r"linear\(\): argument 'input' must be Tensor, not list"),
    # ---- every public op function given a number where the tensor goes (the register wrapper, and the rest) -----
    ("square-number", lambda: tg.square(2), TypeError, r"square\(\): argument 'input' must be Tensor, not int"),
    ("flip-number", lambda: tg.flip(3, 0), TypeError, r"flip\(\): argument 'input' must be Tensor, not int"),
    ("cumsum-list", lambda: tg.cumsum([1], 0), TypeError, r"cumsum\(\): argument 'input' must be Tensor"),
    ("lt-number", lambda: tg.lt(1, 2), TypeError, r"lt\(\): argument 'input' must be Tensor"),
    ("gelu-number", lambda: nn.functional.gelu(1.0), TypeError, r"gelu\(\): argument 'input' must be Tensor"),
    ("hardtanh-number", lambda: nn.functional.hardtanh(1.0), TypeError, r"hardtanh\(\): argument 'input'"),
    ("batch_norm-number", lambda: nn.functional.batch_norm(1.0, None, None), TypeError, r"batch_norm\(\): argument"),
    ("layer_norm-number", lambda: nn.functional.layer_norm(1.0, (1,)), TypeError, r"layer_norm\(\): argument"),
    ("normalize-number", lambda: nn.functional.normalize(1.0), TypeError, r"normalize\(\): argument 'input'"),
    ("logical_and-number", lambda: tg.logical_and(True, x23), TypeError, r"logical_and\(\): argument 'input'"),
    ("std_mean-list", lambda: tg.std_mean([1.0]), TypeError, r"std_mean\(\): argument 'input'"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS])
def test_bad_argument_raises_tinygens_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_every_check_has_a_unique_name():
    names = [c[0] for c in CHECKS]
    assert len(names) == len(set(names))


# ---- the valid neighbours of the checks still work -------------------------------------------------------------------
def test_values_that_fit_the_dtype_are_kept():
    assert tg.tensor([0, 255], dtype=tg.uint8).tolist() == [0, 255]
    assert tg.tensor([True, False], dtype=tg.uint8).tolist() == [1, 0]
    assert tg.tensor([1.7], dtype=tg.int64).tolist() == [1]  # truncation, as PyTorch
    assert tg.tensor([[1, 2], [3, 4]]).shape == (2, 2)
    assert tg.full((2,), 255, dtype=tg.uint8).tolist() == [255, 255]
    t = tg.zeros(2, dtype=tg.uint8)
    t[0] = 255
    assert t.tolist() == [255, 0]


def test_dims_in_range_still_work():
    x = tg.ones(1, 3, 1)
    assert x.squeeze(-1).shape == (1, 3) and x.squeeze((0, 2)).shape == (3,) and x.squeeze(1).shape == (1, 3, 1)
    assert x.unsqueeze(3).shape == (1, 3, 1, 1) and x.unsqueeze(-4).shape == (1, 1, 3, 1)
    assert x.flatten(-2).shape == (1, 3) and x.transpose(-1, 0).shape == (1, 3, 1)
    assert x0d.flatten(-1).shape == (1,) and x0d.squeeze(0).shape == () and x0d.sum(-1).shape == ()
    assert x.size(-2) == 3 and tg.ones(5).split(0 * 0 + 2)[-1].shape == (1,)
    assert tg.ones(0, 2).split(0)[0].shape == (0, 2) and tg.ones(0).chunk(3)[0].shape == (0,)
    assert tg.stack([x23, x23], -1).shape == (2, 3, 2)
    assert (tg.ones(3) @ tg.ones(3)).shape == () and (tg.ones(3) @ tg.ones(2, 3, 4)).shape == (2, 4)


def test_valid_random_and_range_arguments_still_work():
    assert tg.arange(5, 0, -2).tolist() == [5, 3, 1] and tg.arange(3, 3).shape == (0,)
    assert tg.linspace(0, 1, 0).shape == (0,) and tg.eye(0).shape == (0, 0)
    r = tg.randint(0, 256, (50,), dtype=tg.uint8)
    assert r.dtype == tg.uint8
    f = tg.randint(-3, 3, (50,), dtype=tg.float32)
    assert f.dtype == tg.float32 and set(f.tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0}
    assert tg.randint(np.int64(4), size=(3,)).shape == (3,)
    assert tg.normal(1.0, 0.0, (3,)).tolist() == [1.0, 1.0, 1.0]
    assert tg.bernoulli(tg.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]
    p = _param_with_grad()
    clip_grad_norm_([p], 0.0)
    assert p.grad.tolist() == [0.0, 0.0, 0.0]  # max_norm 0 zeroes the gradients (no sign flip)


def test_randint_stream_unchanged_by_the_checks():
    tg.manual_seed(7)
    got = tg.randint(0, 10, (20,)).numpy()
    expected = np.random.default_rng(7).integers(0, 10, size=(20,), dtype=np.int64)
    np.testing.assert_array_equal(got, expected)
