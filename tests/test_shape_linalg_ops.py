"""The shape, scan, indexing and product ops added for PyTorch parity, beyond what the OpSpec table checks:
PyTorch's errors for bad arguments, prod's gradient at exact zeros and norm's at a zero norm (first and second
order, against PyTorch), einsum's forms and their routing to matmul."""
import math

import numpy as np
import pytest

import tinygen as tg
from conftest import requires_torch

X = tg.tensor(np.arange(6.0).reshape(2, 3))
OUT_OF_RANGE = r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 5\)"


@pytest.mark.parametrize("call", [
    lambda: X.flip(5), lambda: X.roll(1, 5), lambda: X.cumsum(5), lambda: X.prod(5), lambda: X.norm(dim=5),
    lambda: X.unbind(5), lambda: X.narrow(5, 0, 1), lambda: X.movedim(5, 0), lambda: X.swapaxes(0, 5),
    lambda: X.swapdims(5, 0), lambda: tg.std_mean(X, 5), lambda: X.nansum(5),
    lambda: X.index_select(5, tg.tensor([0])), lambda: X.gather(5, tg.tensor([[0]])),
    lambda: tg.take_along_dim(X, tg.tensor([[0]]), 5),
], ids=["flip", "roll", "cumsum", "prod", "norm", "unbind", "narrow", "movedim", "swapaxes", "swapdims",
        "std_mean", "nansum", "index_select", "gather", "take_along_dim"])
def test_out_of_range_dim_raises_index_error_like_pytorch(call):
    with pytest.raises(IndexError, match=OUT_OF_RANGE):
        call()


@pytest.mark.parametrize("call,error,match", [
    (lambda: tg.ones(2, 3, 4).t(), RuntimeError, r"t\(\) expects a tensor with <= 2 dimensions, but self is 3D"),
    (lambda: tg.mm(tg.ones(2, 3), tg.ones(4, 5)), RuntimeError, r"shapes cannot be multiplied \(2x3 and 4x5\)"),
    (lambda: tg.mm(tg.ones(3), tg.ones(3, 2)), RuntimeError, "must be matrices"),
    (lambda: tg.mm(tg.ones(2, 2), tg.ones(2, 2, dtype=tg.float64)), RuntimeError, "same dtype"),
    (lambda: tg.bmm(tg.ones(2, 3, 4), tg.ones(3, 4, 5)), RuntimeError, r"batch2 tensor to be: \[2, 4\]"),
    (lambda: tg.mv(tg.ones(2, 3), tg.ones(2)), RuntimeError, "mv: size mismatch"),
    (lambda: tg.dot(tg.ones(2, 3), tg.ones(3)), RuntimeError, "1D tensors expected, but got 2D and 1D"),
    (lambda: tg.dot(tg.ones(3), tg.ones(4)), RuntimeError, "inconsistent tensor size"),
    (lambda: tg.outer(tg.ones(3, 1), tg.ones(3)), RuntimeError, "expected 1-D tensors"),
    (lambda: X.narrow(1, 2, 3), RuntimeError, r"start \(2\) \+ length \(3\) exceeds dimension size \(3\)"),
    (lambda: tg.tensor(1.0).narrow(0, 0, 1), RuntimeError, "cannot be applied to a 0-dim tensor"),
    (lambda: X.movedim((0, 0), (1, 0)), RuntimeError, r"repeated dim in `source` \(\[0, 0\]\)"),
    (lambda: X.movedim((0, 1), 0), RuntimeError, "same number of dims"),
    (lambda: X.flip(0, -2), RuntimeError, "appears multiple times"),
    (lambda: X.roll((1, 2), 0), RuntimeError, "same length"),
    (lambda: tg.tril(tg.ones(3)), RuntimeError, "at least 2 dimensions"),
    (lambda: X.repeat(2), RuntimeError, "can not be smaller than"),
    (lambda: X.unbind(0) and tg.tensor(1.0).unbind(0), IndexError, "no dimensions"),
    (lambda: X.prod((0, 1)), TypeError, "prod: dim must be one int"),
    (lambda: X.norm(p="nuc"), ValueError, "not supported"),
    (lambda: X.norm(p=-1), ValueError, "p must be positive"),
    (lambda: tg.arange(3).norm(), TypeError, "floating"),
    (lambda: X.masked_fill(tg.tensor([1, 0, 1]), 0.0), TypeError, "only supports boolean masks"),
    (lambda: X.masked_fill(X > 2, tg.ones(2)), RuntimeError, "0-dimensional value tensor"),
    (lambda: X.index_select(0, tg.tensor([0.0])), TypeError, "Expected dtype int64"),
    (lambda: X.index_select(0, tg.tensor([[0]])), IndexError, "supposed to be a vector"),
    (lambda: X.index_select(1, tg.tensor([3])), IndexError, "index 3 is out of bounds for dimension 1 with size 3"),
    (lambda: X.gather(0, tg.tensor([[2, 0]])), IndexError, "index 2 is out of bounds for dimension 0 with size 2"),
    (lambda: X.gather(0, tg.tensor([[-1, 0]])), IndexError, "index -1 is out of bounds"),
    (lambda: X.gather(0, tg.tensor([0])), RuntimeError, "same number of dimensions"),
    (lambda: X.gather(0, tg.tensor([[0, 0, 0, 0]])), RuntimeError, "Size does not match at dimension 1"),
    (lambda: tg.take_along_dim(X, tg.tensor([0]), 0), RuntimeError, "same number of dimensions"),
    (lambda: tg.einsum("ij,jk->ik", X), ValueError, "2 operand terms, but 1 operands"),
    (lambda: tg.einsum("ijk->i", X), ValueError, "has 3 labels, but the operand has 2 dimensions"),
    (lambda: tg.einsum("ij->ii", X), ValueError, "appears more than once"),
    (lambda: tg.einsum("ij->k", X), ValueError, "does not appear in any operand"),
    (lambda: tg.einsum("ij,jk->ik", X, X), RuntimeError, "subscript 'j' has size 3 in one and 2"),
    (lambda: tg.einsum("i1->i", X), ValueError, "invalid subscript"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- prod at zeros, norm at zero: first and second derivatives against PyTorch ------------------------------------
def _grads_and_second(fn, x, u, w, lib):
    """d<fn(x), u>/dx and d<that gradient, w>/dx for tinygen (lib=None) or torch."""
    if lib is None:
        xt = tg.tensor(x, requires_grad=True)
        (g,) = tg.grad((fn(xt) * tg.tensor(u)).sum(), [xt], create_graph=True)
        if not g.requires_grad:  # a piecewise-constant derivative (|x|, max): the second derivative is 0
            return g.numpy(), np.zeros_like(x)
        (h,) = tg.grad((g * tg.tensor(w)).sum(), [xt], allow_unused=True)
        return g.detach().numpy(), (np.zeros_like(x) if h is None else h.numpy())
    xt = lib.tensor(x, requires_grad=True)
    (g,) = lib.autograd.grad((fn(xt) * lib.tensor(u)).sum(), [xt], create_graph=True)
    (h,) = lib.autograd.grad((g * lib.tensor(w)).sum(), [xt], allow_unused=True)
    return g.detach().numpy(), (np.zeros_like(x) if h is None else h.numpy(force=True))


ZEROS = {
    "one_zero": np.array([[1.5, 0.0, -2.0, 0.5], [0.3, 1.2, -0.7, 2.0], [1.1, -0.4, 0.8, 0.9]]),
    "two_zeros": np.array([[1.5, 0.0, -2.0, 0.0], [0.0, 1.2, -0.7, 2.0], [0.0, 0.0, 0.0, 0.9]]),
    "all_zero": np.zeros((3, 4)),
}


@requires_torch
@pytest.mark.parametrize("case", list(ZEROS))
@pytest.mark.parametrize("how", ["all", "dim1", "dim0_keepdim"])
def test_prod_gradients_at_zeros_match_torch(case, how):
    import torch
    x = ZEROS[case]
    fns = {"all": (lambda t: t.prod()), "dim1": (lambda t: t.prod(1)), "dim0_keepdim": (lambda t: t.prod(0, True))}
    fn = fns[how]
    rng = np.random.default_rng(0)
    out_shape = np.asarray(fn(torch.tensor(x)).shape)
    u, w = rng.standard_normal(tuple(out_shape)), rng.standard_normal(x.shape)
    g, h = _grads_and_second(fn, x, u, w, None)
    tg_, th = _grads_and_second(fn, x, u, w, torch)
    np.testing.assert_allclose(g, tg_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, th, rtol=1e-12, atol=1e-14)


def test_prod_gradient_with_one_zero_is_the_product_of_the_others():
    x = tg.tensor([2.0, 0.0, 3.0, -1.5], dtype=tg.float64, requires_grad=True)
    x.prod().backward()
    assert x.grad.numpy().tolist() == [0.0, 2.0 * 3.0 * -1.5, 0.0, 0.0]


@requires_torch
@pytest.mark.parametrize("p", [2, "fro", 1, math.inf, -math.inf, 3, 1.5, 0.5])
def test_norm_gradient_at_a_zero_norm_matches_torch(p):
    import torch
    x = np.array([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0]])
    u, w = np.array([1.5, -0.5]), np.random.default_rng(1).standard_normal(x.shape)
    g, h = _grads_and_second(lambda t: t.norm(p, 1), x, u, w, None)
    tg_, th = _grads_and_second(lambda t: torch.linalg.vector_norm(t, 2 if p == "fro" else p, 1), x, u, w, torch)
    assert np.isfinite(g).all() and np.isfinite(h).all()
    np.testing.assert_array_equal(g[0], 0.0)  # the subgradient at 0, as PyTorch's
    np.testing.assert_allclose(g, tg_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h[1], th[1], rtol=1e-10, atol=1e-12)  # second derivatives away from the zero row


def test_norm_zero_norm_of_the_whole_tensor_has_zero_gradient():
    x = tg.zeros(3, 2, dtype=tg.float64, requires_grad=True)
    x.norm().backward()
    assert x.grad.numpy().tolist() == [[0.0, 0.0]] * 3


def test_norm_p0_counts_non_zeros_with_a_zero_gradient():
    x = tg.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, math.inf]], dtype=tg.float64, requires_grad=True)
    y = x.norm(0, dim=1)
    assert y.detach().numpy().tolist() == [2.0, 1.0]
    y.sum().backward()
    assert x.grad.numpy().tolist() == [[0.0] * 3] * 2


def test_nansum_ignores_nans_and_gives_them_no_gradient():
    x = tg.tensor([1.0, math.nan, 2.5], dtype=tg.float64, requires_grad=True)
    y = x.nansum()
    assert y.item() == 3.5
    y.backward()
    assert x.grad.numpy().tolist() == [1.0, 0.0, 1.0]


def test_std_mean_is_a_pair_of_std_and_mean():
    x = tg.tensor([[1.0, 2.0, 4.0], [0.5, 0.5, 3.0]], dtype=tg.float64)
    s, m = tg.std_mean(x, 1, keepdim=True, correction=0)
    np.testing.assert_allclose(s.numpy(), x.numpy().std(1, keepdims=True))
    np.testing.assert_allclose(m.numpy(), x.numpy().mean(1, keepdims=True))


# ---- einsum ----------------------------------------------------------------------------------------------------------
def _node_names(t):
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.append(type(node).__name__)
        stack.extend(e[0] for e in node.next_edges if e is not None and not isinstance(e[0], tg.Tensor))
    return names


@pytest.mark.parametrize("equation,shapes", [("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij,kj->ik", [(3, 4), (5, 4)]),
                                             ("i,i->", [(4,), (4,)])])
def test_einsum_contractions_run_as_one_matmul(equation, shapes):
    xs = [tg.randn(*s, requires_grad=True) for s in shapes]
    names = _node_names(tg.einsum(equation, *xs))
    assert names.count("Matmul") == 1, names
    assert "Mul" not in names


@requires_torch
@pytest.mark.parametrize("equation,shapes", [
    ("bij,bjk->bik", [(1, 3, 4), (2, 4, 5)]),          # a size-1 batch broadcasts
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 2)]),  # ellipses of different lengths broadcast
    ("ij,jk", [(3, 4), (4, 2)]), ("ba,ab", [(3, 4), (4, 3)]), ("iij->j", [(3, 3, 2)]),
    ("ij,jk,kl,lm->im", [(2, 3), (3, 4), (4, 2), (2, 3)]), ("abc,cd,db->a", [(2, 3, 4), (4, 5), (5, 3)]),
])
def test_einsum_matches_torch_with_broadcasting_and_implicit_output(equation, shapes):
    import torch
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    xs = [tg.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, t_out = tg.einsum(equation, *xs), torch.einsum(equation, *ts)
    np.testing.assert_allclose(out.detach().numpy(), t_out.detach().numpy(), rtol=1e-12, atol=1e-12)
    u = rng.standard_normal(t_out.shape)
    grads = tg.grad(out, xs, tg.tensor(u))
    t_grads = torch.autograd.grad(t_out, ts, torch.tensor(u))
    for g, tgr in zip(grads, t_grads):
        np.testing.assert_allclose(g.numpy(), tgr.numpy(), rtol=1e-12, atol=1e-12)


def test_einsum_takes_a_list_of_operands():
    a, b = tg.randn(2, 3), tg.randn(3, 4)
    np.testing.assert_allclose(tg.einsum("ij,jk->ik", [a, b]).numpy(), (a @ b).numpy(), rtol=1e-6)


# ---- names -----------------------------------------------------------------------------------------------------------
def test_aliases_and_methods():
    x = tg.randn(2, 3, 4)
    assert x.moveaxis(0, 2).shape == tg.movedim(x, 0, 2).shape == (3, 4, 2)
    assert x.swapdims(0, 1).shape == tg.swapaxes(x, 0, 1).shape == (3, 2, 4)
    assert x.tile(2).shape == (2, 3, 8) and x.repeat(1, 1, 1, 2).shape == (1, 2, 3, 8)
    assert x.broadcast_to((5, 2, 3, 4)).shape == (5, 2, 3, 4) and x[:1].expand_as(x).shape == x.shape
    assert tg.outer(tg.ones(2), tg.ones(3)).shape == tg.ones(2).ger(tg.ones(3)).shape == (2, 3)
    assert tg.ops.linalg.mm is not tg.mm  # the array helper stays the array helper


PAD_CASES = [  # (input shape, pad, mode)
    ((3, 4), (1, 2), "constant"), ((2, 3, 4, 5), (-1, 2, 0, -2), "constant"),
    ((2, 3, 4), (1, 1, 2, 0, 1, 1), "constant"),
    ((5,), (0, 3), "constant"), ((2, 3, 4, 5), (1, 2, 3, 0), "reflect"), ((2, 5), (4, 1), "reflect"),
    ((2, 3, 4, 5, 4), (1, 2, 3, 0, 1, 1), "reflect"), ((2, 3, 4, 5), (2, -3, -1, 1), "reflect"),
    ((2, 3, 4, 5), (5, 1, 0, 7), "replicate"), ((1, 3, 4), (2, 2), "replicate"),
    ((2, 3, 4, 5), (-2, 1, 1, 0), "replicate"),
    ((2, 3, 4, 5), (5, 5, 4, 1), "circular"), ((2, 2, 3, 4, 5), (1, 2, 1, 1, 1, 0), "circular"),
    ((2, 3, 4, 5), (-1, 2, 1, -2), "circular"),
]


@requires_torch
@pytest.mark.parametrize("shape,widths,mode", PAD_CASES, ids=[f"{m}-{s}-{p}" for s, p, m in PAD_CASES])
def test_pad_matches_torch_with_its_first_and_second_order_gradients(shape, widths, mode):
    import torch
    import tinygen.nn.functional as F
    rng = np.random.default_rng(0)
    x, kw = rng.standard_normal(shape), ({"value": -1.5} if mode == "constant" else {})
    xo, xt = tg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yo, yt = F.pad(xo, widths, mode=mode, **kw), torch.nn.functional.pad(xt, widths, mode=mode, **kw)
    np.testing.assert_array_equal(yo.detach().numpy(), yt.detach().numpy())
    g = rng.standard_normal(yt.shape)
    (go,), (gt,) = (tg.grad([yo], [xo], [tg.tensor(g)], create_graph=True),
                    torch.autograd.grad([yt], [xt], [torch.tensor(g)], create_graph=True))
    np.testing.assert_allclose(go.detach().numpy(), gt.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert tg.autograd.gradcheck(lambda a: F.pad(a, widths, mode=mode, **kw), (tg.tensor(x, requires_grad=True),))
    assert tg.autograd.gradgradcheck(lambda a: F.pad(a, widths, mode=mode, **kw) ** 2,
                                     (tg.tensor(x, requires_grad=True),))


@pytest.mark.parametrize("call,error,match", [
    (lambda: tg.nn.functional.pad(tg.zeros(2, 3), (1,)), ValueError, "pad must be a sequence of"),
    (lambda: tg.nn.functional.pad(tg.zeros(3), (1, 1, 1, 1)), ValueError, "at most 1 for a 1-D input"),
    (lambda: tg.nn.functional.pad(tg.zeros(2, 3), (1, 1), mode="mirror"), NotImplementedError, "mode must be one"),
    (lambda: tg.nn.functional.pad(tg.zeros(2, 3), (3, 0), mode="reflect"), ValueError,
     r"reflect padding widths must be at most 2 for an axis of size 3"),
    (lambda: tg.nn.functional.pad(tg.zeros(2, 3), (1, 0), mode="reflect", value=1.0), ValueError,
     "doesn't take in value argument"),
    (lambda: tg.nn.functional.pad(tg.zeros(1, 2, 3, 4), (1, 0), mode="replicate"), NotImplementedError,
     "got 1 padded axes of a 4-D input"),
    (lambda: tg.nn.functional.pad(tg.zeros(2, 3), (-2, -2)), ValueError, "leave a negative size"),
    (lambda: tg.nn.Conv2d(2, 3, 3, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (lambda: tg.nn.ConvTranspose2d(2, 3, 3, padding_mode="reflect"), ValueError, "only padding_mode='zeros'"),
], ids=["odd", "too-many", "mode", "reflect-wide", "value", "axes", "negative", "conv-mode", "convT-mode"])
def test_pad_refuses_bad_arguments_clearly(call, error, match):
    with pytest.raises(error, match=match):
        call()
