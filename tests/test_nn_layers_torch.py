"""Every layer against PyTorch, from the same weights: forward, input and parameter gradients, running statistics,
state_dict keys, and double backward (gradgradcheck, and gradient penalties compared with PyTorch)."""
import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from conftest import requires_torch

pytestmark = requires_torch

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
DTYPES = [np.float64, np.float32]


def npy(t):
    return t.detach().cpu().numpy()


def copy_weights(ours, theirs):
    """Load PyTorch's state_dict into our module (strict: the keys must be identical)."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def compare(ours, theirs, x, dtype, train=True, seed=0, steps=1):
    """Run both modules on x (and an upstream gradient) ``steps`` times; compare outputs, gradients, buffers."""
    import torch
    tol = TOL[dtype]
    ours.train(train)
    theirs.train(train)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        floating = x.dtype.kind == "f"
        xo = tg.tensor(x, requires_grad=floating)
        xt = torch.tensor(x, requires_grad=floating)
        yo, yt = ours(xo), theirs(xt)
        assert yo.shape == tuple(yt.shape) and yo.dtype == dtype
        np.testing.assert_allclose(npy(yo), yt.detach().numpy(), **tol)
        g = rng.standard_normal(yo.shape).astype(dtype)
        ours.zero_grad()
        theirs.zero_grad()
        yo.backward(tg.tensor(g))
        yt.backward(torch.tensor(g))
        if floating:
            np.testing.assert_allclose(npy(xo.grad), xt.grad.numpy(), **tol)
        theirs_params = dict(theirs.named_parameters())
        assert [n for n, _ in ours.named_parameters()] == list(theirs_params)  # same names, same order
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(npy(p.grad), theirs_params[name].grad.numpy(), err_msg=name, **tol)
        theirs_buffers = dict(theirs.named_buffers())
        assert [n for n, _ in ours.named_buffers()] == list(theirs_buffers)
        for name, b in ours.named_buffers():
            np.testing.assert_allclose(npy(b), theirs_buffers[name].numpy(), err_msg=name, **tol)


def pair(make_ours, make_theirs, dtype):
    import torch
    torch.manual_seed(0)
    theirs = make_theirs(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    ours = make_ours(nn).to(dtype)
    copy_weights(ours, theirs)
    return ours, theirs


def rand(*shape, dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- Linear -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(dtype, shape, bias):
    ours, theirs = pair(lambda m: m.Linear(4, 3, bias=bias), lambda m: m.Linear(4, 3, bias=bias), dtype)
    compare(ours, theirs, rand(*shape, dtype=dtype), dtype)


def test_linear_default_init_matches_pytorch_bounds():
    import torch
    ours, theirs = nn.Linear(50, 20), torch.nn.Linear(50, 20)
    for a, b in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
        bound = 1 / np.sqrt(50)
        assert np.abs(npy(a)).max() <= bound and np.abs(b.detach().numpy()).max() <= bound
        assert a.shape == tuple(b.shape) and a.dtype == np.float32


def test_linear_errors_name_shapes_and_dtypes():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(3, 4\)"):
        lin(tg.zeros(2, 5))
    with pytest.raises(TypeError, match="float64.*float32"):
        lin(tg.zeros(2, 4, dtype=tg.float64))
    with pytest.raises(ValueError, match="bias"):
        F.linear(tg.zeros(2, 4), lin.weight, tg.zeros(4))


# ---- BatchNorm ----------------------------------------------------------------------------------------------------
BN_CASES = [
    dict(),
    dict(affine=False),
    dict(momentum=None),
    dict(track_running_stats=False),
    dict(momentum=0.3, eps=1e-3),
    dict(bias=False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
@pytest.mark.parametrize("kwargs", BN_CASES)
def test_batchnorm1d_train_then_eval(dtype, shape, kwargs):
    ours, theirs = pair(lambda m: m.BatchNorm1d(4, **kwargs), lambda m: m.BatchNorm1d(4, **kwargs), dtype)
    if kwargs.get("affine", True):  # non-trivial affine parameters
        for t in theirs.parameters():
            t.data.normal_()
        copy_weights(ours, theirs)
    x = rand(*shape, dtype=dtype) * 3 + 1
    compare(ours, theirs, x, dtype, train=True, steps=3)  # running statistics evolve identically
    compare(ours, theirs, rand(*shape, dtype=dtype, seed=2), dtype, train=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm2d(dtype):
    ours, theirs = pair(lambda m: m.BatchNorm2d(3), lambda m: m.BatchNorm2d(3), dtype)
    compare(ours, theirs, rand(2, 3, 4, 5, dtype=dtype), dtype, train=True, steps=2)
    compare(ours, theirs, rand(2, 3, 4, 5, dtype=dtype, seed=3), dtype, train=False)


def test_batchnorm_errors():
    bn = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(tg.zeros(1, 4))
    with pytest.raises(ValueError, match="expected 4 channels"):
        bn(tg.zeros(3, 5))
    with pytest.raises(ValueError, match="2D or 3D"):
        bn(tg.zeros(2, 4, 1, 1))
    with pytest.raises(ValueError, match="running_mean and running_var"):
        F.batch_norm(tg.zeros(3, 4), None, None, training=False)
    bn.eval()
    assert bn(tg.zeros(1, 4)).shape == (1, 4)  # a single sample is fine in eval mode


# ---- LayerNorm ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized,shape", [(5, (3, 5)), ((3, 5), (2, 3, 5)), (4, (2, 3, 4))])
@pytest.mark.parametrize("kwargs", [dict(), dict(elementwise_affine=False), dict(bias=False), dict(eps=1e-2)])
def test_layernorm(dtype, normalized, shape, kwargs):
    ours, theirs = pair(lambda m: m.LayerNorm(normalized, **kwargs), lambda m: m.LayerNorm(normalized, **kwargs),
                        dtype)
    for t in theirs.parameters():
        t.data.normal_()
    copy_weights(ours, theirs)
    compare(ours, theirs, rand(*shape, dtype=dtype) * 2 + 0.5, dtype, train=True)
    compare(ours, theirs, rand(*shape, dtype=dtype), dtype, train=False)


def test_layernorm_shape_error():
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
        nn.LayerNorm(4)(tg.zeros(2, 5))


# ---- Embedding ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 1, -1])
def test_embedding(dtype, padding_idx):
    ours, theirs = pair(lambda m: m.Embedding(7, 3, padding_idx=padding_idx),
                        lambda m: m.Embedding(7, 3, padding_idx=padding_idx), dtype)
    idx = np.array([[0, 1, 1], [6, 1, 3]], dtype=np.int64)  # repeated indices accumulate
    compare(ours, theirs, idx, dtype)
    if padding_idx is not None:
        fresh = nn.Embedding(7, 3, padding_idx=padding_idx)
        assert not npy(fresh.weight)[padding_idx].any()


def test_embedding_errors():
    emb = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match="index 5 is out of range for 5"):
        emb(tg.tensor([1, 5]))
    with pytest.raises(TypeError, match="integer"):
        emb(tg.tensor([1.0, 2.0]))


# ---- stateless layers ---------------------------------------------------------------------------------------------
ACTIVATIONS = [
    ("ReLU", (), {}), ("LeakyReLU", (0.2,), {}), ("LeakyReLU", (), {}), ("ELU", (), {"alpha": 0.7}),
    ("Tanh", (), {}), ("Sigmoid", (), {}), ("Softplus", (), {}), ("Softplus", (), {"beta": 2.0, "threshold": 1.0}),
    ("Softmax", (), {"dim": 1}), ("LogSoftmax", (), {"dim": -1}), ("Flatten", (), {}), ("Flatten", (0, 1), {}),
    ("Unflatten", (1, (3, 2)), {}), ("Identity", (), {}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,args,kwargs", ACTIVATIONS)
def test_stateless_layers(dtype, name, args, kwargs):
    ours, theirs = pair(lambda m: getattr(m, name)(*args, **kwargs), lambda m: getattr(m, name)(*args, **kwargs),
                        dtype)
    x = rand(4, 6, dtype=dtype) * 3
    if name == "Flatten":
        x = rand(2, 3, 2, dtype=dtype)
    compare(ours, theirs, x, dtype)
    assert repr(ours) == repr(theirs)


def test_dropout_eval_matches_and_reprs():
    import torch
    ours, theirs = nn.Dropout(0.4), torch.nn.Dropout(0.4)
    assert repr(ours) == repr(theirs)
    compare(ours, theirs, rand(3, 4), np.float64, train=False)
    for o, t in [(nn.Linear(3, 2), torch.nn.Linear(3, 2)), (nn.BatchNorm1d(5), torch.nn.BatchNorm1d(5)),
                 (nn.LayerNorm((2, 3)), torch.nn.LayerNorm((2, 3))), (nn.Embedding(4, 2), torch.nn.Embedding(4, 2)),
                 (nn.Embedding(4, 2, padding_idx=0), torch.nn.Embedding(4, 2, padding_idx=0)),
                 (nn.ReLU(inplace=True), torch.nn.ReLU(inplace=True))]:
        assert repr(o) == repr(t)


# ---- whole models -------------------------------------------------------------------------------------------------
def build(m, p=0.5):
    return m.Sequential(m.Embedding(10, 4), m.Flatten(), m.Linear(12, 16), m.BatchNorm1d(16), m.LeakyReLU(0.1),
                        m.Dropout(p), m.Linear(16, 8), m.LayerNorm(8), m.ELU(), m.Linear(8, 1))


def test_state_dict_keys_equal_pytorch():
    import torch
    ours, theirs = build(nn), build(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.shape == tuple(b.shape), k
    assert repr(ours) == repr(theirs)
    # and PyTorch can load ours
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in ours.state_dict().items()})


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_trajectory_matches_pytorch(dtype):
    """Same weights, same batches, plain SGD: the losses and the final weights agree step by step."""
    import torch
    ours, theirs = pair(lambda m: build(m, p=0.0), lambda m: build(m, p=0.0), dtype)
    ours.train()
    theirs.train()
    rng = np.random.default_rng(0)
    lr = 0.05
    for step in range(5):
        idx = rng.integers(0, 10, size=(8, 3))
        target = rng.standard_normal((8, 1)).astype(dtype)
        lo = F.mse_loss(ours(tg.tensor(idx)), tg.tensor(target))
        lt = torch.nn.functional.mse_loss(theirs(torch.tensor(idx)), torch.tensor(target))
        np.testing.assert_allclose(lo.item(), lt.item(), rtol=1e-9 if dtype == np.float64 else 1e-4)
        ours.zero_grad()
        theirs.zero_grad()
        lo.backward()
        lt.backward()
        with tg.no_grad():
            for p in ours.parameters():
                p.data -= lr * p.grad.data
        with torch.no_grad():
            for p in theirs.parameters():
                p -= lr * p.grad
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        np.testing.assert_allclose(npy(a), b.numpy(), rtol=1e-8 if dtype == np.float64 else 2e-4,
                                   atol=1e-10 if dtype == np.float64 else 1e-5, err_msg=k)


# ---- double backward ----------------------------------------------------------------------------------------------
def _leaf(*shape, seed=0, scale=1.0, shift=0.0):
    return tg.tensor(rand(*shape, seed=seed) * scale + shift, requires_grad=True)


@pytest.mark.parametrize("shape", [(3, 4), (2, 2, 4), (4,)])
def test_gradgradcheck_linear(shape):
    x, w, b = _leaf(*shape), _leaf(3, 4, seed=1), _leaf(3, seed=2)
    assert tg.gradcheck(F.linear, (x, w, b))
    assert tg.gradgradcheck(F.linear, (x, w, b))
    assert tg.gradgradcheck(lambda x, w: F.linear(x, w), (x, w))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 2)])
def test_gradgradcheck_batch_norm(training, shape):
    x, w, b = _leaf(*shape, scale=2.0, shift=1.0), _leaf(3, seed=1), _leaf(3, seed=2)
    rm, rv = tg.tensor(rand(3, seed=3)), tg.tensor(np.abs(rand(3, seed=4)) + 0.5)

    def fn(x, w, b):  # copies of the running statistics: each evaluation starts from the same state
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training, momentum=0.1, eps=1e-3)
    assert tg.gradcheck(fn, (x, w, b))
    assert tg.gradgradcheck(fn, (x, w, b))
    assert tg.gradgradcheck(lambda x: F.batch_norm(x, None, None, training=True), (x,))


@pytest.mark.parametrize("shape,normalized", [((3, 4), (4,)), ((2, 2, 3), (2, 3))])
def test_gradgradcheck_layer_norm(shape, normalized):
    x, w, b = _leaf(*shape, scale=2.0), _leaf(*normalized, seed=1), _leaf(*normalized, seed=2)
    fn = lambda x, w, b: F.layer_norm(x, normalized, w, b, eps=1e-3)  # noqa: E731
    assert tg.gradcheck(fn, (x, w, b))
    assert tg.gradgradcheck(fn, (x, w, b))
    assert tg.gradgradcheck(lambda x: F.layer_norm(x, normalized), (x,))


def test_gradient_penalty_matches_pytorch():
    """d/dtheta of ||d out / d x||^2 (WGAN-GP style) through Linear, BatchNorm1d and LayerNorm."""
    import torch

    def make(m):
        return m.Sequential(m.Linear(4, 6), m.BatchNorm1d(6), m.Tanh(), m.Linear(6, 5), m.LayerNorm(5), m.Softplus(),
                            m.Linear(5, 1))
    ours, theirs = pair(make, make, np.float64)
    x = rand(7, 4)
    xo, xt = tg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    (go,) = tg.grad(ours(xo).sum(), xo, create_graph=True)
    (gt,) = torch.autograd.grad(theirs(xt).sum(), xt, create_graph=True)
    np.testing.assert_allclose(npy(go), gt.detach().numpy(), rtol=1e-10)
    (go * go).sum().backward()
    (gt * gt).sum().backward()
    np.testing.assert_allclose(npy(xo.grad), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    theirs_params = dict(theirs.named_parameters())
    checked = 0
    for name, p in ours.named_parameters():
        ref = theirs_params[name].grad
        if ref is None:  # the last bias does not change d out / d x
            assert p.grad is None or not npy(p.grad).any(), name
            continue
        np.testing.assert_allclose(npy(p.grad), ref.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
        checked += 1
    assert checked >= 8
