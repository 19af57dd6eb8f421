"""tinygen.nn without PyTorch: Module/Parameter API, containers, state_dict, init distributions, Dropout, devices."""
import copy
import math
import pickle

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen.nn import init


def npy(t):
    """A tensor's values as a host NumPy array (parameters require grad, so detach first)."""
    return t.detach().cpu().numpy()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(tg.ones(1))
        self.register_buffer("steps", tg.zeros((), dtype=tg.int64))
        self.register_buffer("cache", tg.zeros(2), persistent=False)

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Parameter(tg.zeros(2))
        self.block = Block()
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.block(x))


# ---- Parameter -------------------------------------------------------------------------------------------------------
def test_parameter_is_a_leaf_tensor_sharing_memory():
    t = tg.randn(2, 3)
    p = nn.Parameter(t)
    assert isinstance(p, tg.Tensor) and isinstance(p, nn.Parameter)
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    assert p.data is t.data  # shares memory, as torch.nn.Parameter does
    assert not nn.Parameter(t, requires_grad=False).requires_grad
    assert type(p * 2) is tg.Tensor  # ops give plain tensors
    assert repr(p).startswith("Parameter containing:\ntensor(")
    with pytest.raises(RuntimeError, match="floating"):
        nn.Parameter(tg.tensor([1, 2]))


def test_parameter_deepcopy_and_pickle_keep_class_and_copy_data():
    p = nn.Parameter(tg.randn(3))
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(q) is nn.Parameter and q.requires_grad
        assert q.data is not p.data and np.array_equal(q.data, p.data)


def test_unpickled_tensors_work_in_ops():
    # regression: unpickling left a non-canonical device string, and ops compare devices by identity
    a = pickle.loads(pickle.dumps(tg.tensor([1.0, 2.0], requires_grad=True)))
    assert a.requires_grad and a.is_leaf
    (a * tg.tensor([3.0, 4.0])).sum().backward()
    assert a.grad.numpy().tolist() == [3.0, 4.0]


def test_module_pickles():
    net = Net()
    net(tg.randn(4, 3))  # running statistics move away from their initial values
    clone = pickle.loads(pickle.dumps(net))
    assert list(clone.state_dict()) == list(net.state_dict())
    for a, b in zip(net.state_dict().values(), clone.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    x = tg.randn(4, 3)
    np.testing.assert_array_equal(npy(clone.eval()(x)), npy(net.eval()(x)))


def test_deepcopy_of_a_module_keeps_shared_parameters_shared():
    lin = nn.Linear(2, 2)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    c = copy.deepcopy(m)
    assert c[0] is c[2] and c[0].weight is not lin.weight
    assert np.array_equal(c[0].weight.data, lin.weight.data)
    assert len(list(c.parameters())) == 2


# ---- registration and iteration ----------------------------------------------------------------------------------
def test_parameter_order_and_names_follow_registration_depth_first():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    # a module's own parameters first, then its children's (PyTorch's order): scale is Block's own
    assert names == ["first", "block.scale", "block.fc.weight", "block.fc.bias", "block.bn.weight", "block.bn.bias",
                     "head.1.weight", "head.1.bias"]
    assert [p for p in net.parameters()] == [p for _, p in net.named_parameters()]
    assert [n for n, _ in net.named_buffers()] == ["block.steps", "block.cache", "block.bn.running_mean",
                                                    "block.bn.running_var", "block.bn.num_batches_tracked"]
    assert [n for n, _ in net.named_children()] == ["block", "head"]
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.fc", "block.bn", "head", "head.0", "head.1"]
    assert len(list(net.modules())) == 7
    assert net.get_submodule("head.1") is net.head[1]
    assert list(net.parameters(recurse=False)) == [net.first]


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(2, 2)
    m = nn.Sequential(lin, lin)
    assert len(list(m.parameters())) == 2
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]  # as PyTorch


def test_assignment_rules():
    m = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        m.weight = tg.zeros(3, 2)  # a plain tensor cannot replace a parameter
    m.bias = None
    assert m.bias is None and "bias" in m._parameters
    m.extra = nn.Parameter(tg.zeros(1))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        m.nothing
    with pytest.raises(KeyError, match="cannot contain"):
        m.register_buffer("a.b", tg.zeros(1))
    with pytest.raises(TypeError, match="buffer"):
        m.register_buffer("buf", np.zeros(2))

    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(tg.zeros(1))

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Forgot()


def test_forward_missing_raises():
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(tg.zeros(1))


def test_train_eval_propagate():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.block.train(False)
    assert net.training and not net.block.bn.training and net.head.training


def test_zero_grad_set_to_none_and_zeros():
    net = Net()
    net(tg.randn(5, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p is not net.first)
    kept = net.block.fc.weight.grad
    net.zero_grad(set_to_none=False)
    assert net.block.fc.weight.grad is kept and not kept.data.any()
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_requires_grad_and_apply():
    net = Net()
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "BatchNorm1d", "Block", "ReLU", "Linear", "Sequential", "Net"]  # children first


def test_to_float64_keeps_parameter_identity_and_casts_floats_only():
    net = Net()
    net(tg.randn(4, 3)).sum().backward()
    params = list(net.parameters())
    assert net.to(tg.float64) is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.dtype == tg.float64 for p in net.parameters())
    assert all(p.grad.dtype == tg.float64 for p in net.parameters() if p.grad is not None)
    assert net.block.bn.running_mean.dtype == tg.float64
    assert net.block.bn.num_batches_tracked.dtype == tg.int64
    assert net(tg.randn(4, 3, dtype=tg.float64)).dtype == tg.float64
    net.float()
    assert all(p.dtype == tg.float32 for p in net.parameters())
    with pytest.raises(TypeError, match="floating"):
        net.to(tg.int64)
    with pytest.raises(ValueError, match="tpu"):
        net.to("tpu")


def test_to_device_and_back(device):
    net = Net()
    x = tg.randn(4, 3)
    ref = npy(net.eval()(x))
    params = list(net.parameters())
    net.to(device)
    assert all(p.device == device for p in net.parameters()) and list(net.parameters()) == params
    assert all(b.device == device for b in net.buffers())
    out = net(x.to(device))
    assert out.device == device
    np.testing.assert_allclose(npy(out), ref, rtol=1e-6)
    net.cpu()
    assert all(p.device == "cpu" for p in net.parameters())


# ---- state_dict -----------------------------------------------------------------------------------------------------
def test_state_dict_keys_and_sharing():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == ["first", "block.scale", "block.steps", "block.fc.weight", "block.fc.bias",
                        "block.bn.weight", "block.bn.bias", "block.bn.running_mean", "block.bn.running_var",
                        "block.bn.num_batches_tracked", "head.1.weight", "head.1.bias"]
    assert "block.cache" not in sd  # non-persistent buffer
    assert all(isinstance(v, tg.Tensor) and not isinstance(v, nn.Parameter) for v in sd.values())
    assert sd["block.fc.weight"].data is net.block.fc.weight.data  # shares memory, detached
    assert not sd["block.fc.weight"].requires_grad
    assert isinstance(net.state_dict(keep_vars=True)["block.fc.weight"], nn.Parameter)


def test_load_state_dict_copies_in_place():
    a, b = Net(), Net()
    a.block.bn.running_mean.data[:] = 3.0
    a.block.bn.num_batches_tracked.data[...] = 7
    weight = b.block.fc.weight
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert b.block.fc.weight is weight  # identity kept (an optimizer holding it keeps working)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and np.array_equal(va.data, vb.data) and va.data is not vb.data
    assert int(b.block.bn.num_batches_tracked.item()) == 7
    # numpy arrays are accepted, and are cast to the parameter's dtype
    sd = {k: v.numpy().astype(np.float64) if v.dtype.kind == "f" else v.numpy() for k, v in a.state_dict().items()}
    b.load_state_dict(sd)
    assert b.block.fc.weight.dtype == tg.float32


def test_load_state_dict_errors_list_everything():
    net = Net()
    sd = net.state_dict()
    del sd["head.1.bias"]
    sd["head.2.weight"] = tg.zeros(1)
    sd["block.fc.weight"] = tg.zeros(5, 3)
    with pytest.raises(RuntimeError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    assert "Net" in msg and '"head.1.bias"' in msg and '"head.2.weight"' in msg
    assert "block.fc.weight" in msg and "(5, 3)" in msg and "(4, 3)" in msg
    # strict=False tolerates missing/unexpected keys but not shape mismatches
    with pytest.raises(RuntimeError, match="size mismatch for block.fc.weight"):
        net.load_state_dict(sd, strict=False)
    sd["block.fc.weight"] = tg.zeros(4, 3)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["head.1.bias"] and unexpected == ["head.2.weight"]
    assert not net.block.fc.weight.data.any()
    with pytest.raises(RuntimeError, match="not a tensor"):
        net.load_state_dict({**net.state_dict(), "first": "abc"})


# ---- repr ---------------------------------------------------------------------------------------------------------
def test_repr_tree():
    m = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Dropout(0.25)), nn.LayerNorm(3))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): Sequential(\n"
        "    (0): ReLU()\n"
        "    (1): Dropout(p=0.25, inplace=False)\n"
        "  )\n"
        "  (2): LayerNorm((3,), eps=1e-05, elementwise_affine=True, bias=True)\n"
        ")")
    assert repr(nn.Linear(2, 3, bias=False)) == "Linear(in_features=2, out_features=3, bias=False)"
    assert repr(nn.BatchNorm1d(4)) == ("BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                                       "track_running_stats=True)")
    assert repr(nn.Embedding(10, 3)) == "Embedding(10, 3)"
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"


# ---- containers -----------------------------------------------------------------------------------------------------
def test_sequential_indexing_and_mutation():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    s = nn.Sequential(a, b, c)
    assert len(s) == 3 and s[0] is a and s[-1] is c and list(s) == [a, b, c]
    sub = s[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == [b, c] and list(sub._modules) == ["1", "2"]
    with pytest.raises(IndexError, match="out of range"):
        s[3]
    x = tg.randn(4, 2)
    np.testing.assert_allclose(npy(s(x)), npy(c(b(a(x)))))
    d = nn.Tanh()
    s.append(d)
    assert s[3] is d and len(s) == 4
    del s[1]
    assert list(s._modules) == ["0", "1", "2"] and list(s) == [a, c, d]
    s[1] = nn.Identity()
    assert isinstance(s[1], nn.Identity) and list(s._modules) == ["0", "1", "2"] and s[2] is d
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    e = nn.Sigmoid()
    s.insert(-1, e)
    assert list(s) == [a, s[1], e, d] and list(s._modules) == ["0", "1", "2", "3"]
    with pytest.raises(IndexError, match="out of range"):
        s.insert(9, nn.ReLU())
    named = nn.Sequential({"enc": nn.Linear(2, 2), "act": nn.ReLU()})
    assert list(named.state_dict()) == ["enc.weight", "enc.bias"]


def test_module_list():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and not isinstance(layers, nn.Sequential)
    layers.append(nn.Linear(2, 1))
    layers += [nn.ReLU()]
    assert len(layers) == 5 and len(list(layers.parameters())) == 8
    assert list(layers.state_dict())[:2] == ["0.weight", "0.bias"]
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    with pytest.raises(NotImplementedError):
        layers(tg.zeros(1, 2))


# ---- Dropout --------------------------------------------------------------------------------------------------------
def test_dropout_statistics_and_modes():
    tg.manual_seed(0)
    drop = nn.Dropout(0.3)
    x = tg.ones(200, 500)
    y = drop(x).numpy()
    zero_frac = (y == 0).mean()
    assert abs(zero_frac - 0.3) < 0.01
    assert np.allclose(y[y != 0], 1 / 0.7)
    assert abs(y.mean() - 1.0) < 0.01  # expectation preserved
    drop.eval()
    assert drop(x) is x
    assert F.dropout(x, 0.0) is x
    assert not F.dropout(x, 1.0).numpy().any()
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_dropout_seeded_and_gradient_uses_the_mask():
    tg.manual_seed(5)
    a = F.dropout(tg.ones(50), 0.5).numpy().copy()
    tg.manual_seed(5)
    x = tg.ones(50, requires_grad=True)
    y = F.dropout(x, 0.5)
    assert np.array_equal(y.detach().numpy(), a)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), a)  # d(x * mask)/dx = mask


# ---- init -----------------------------------------------------------------------------------------------------------
def test_calculate_gain_and_fans():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("swish")
    assert init._calculate_fan_in_and_fan_out(tg.zeros(5, 3)) == (3, 5)
    assert init.calculate_fan_in_and_fan_out(tg.zeros(8, 4, 3, 3)) == (36, 72)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(tg.zeros(4))


def _bounded(t, bound):
    d = npy(t)
    return d.min() >= -bound and d.max() <= bound and d.min() < -0.9 * bound and d.max() > 0.9 * bound


def test_uniform_inits_respect_their_bounds():
    tg.manual_seed(1)
    w = tg.zeros(300, 200)
    assert init.uniform_(w, -2.0, 3.0) is w
    assert w.numpy().min() >= -2 and w.numpy().max() < 3 and abs(w.numpy().mean() - 0.5) < 0.05
    init.xavier_uniform_(w, gain=2.0)
    assert _bounded(w, 2.0 * math.sqrt(6 / 500))
    init.kaiming_uniform_(w, a=0.0, nonlinearity="relu")
    assert _bounded(w, math.sqrt(2) * math.sqrt(3 / 200))
    init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu")
    assert _bounded(w, math.sqrt(2) * math.sqrt(3 / 300))
    lin = nn.Linear(400, 300)  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    assert _bounded(lin.weight, 1 / math.sqrt(400)) and _bounded(lin.bias, 1 / math.sqrt(400))
    assert np.std(npy(lin.weight)) == pytest.approx(1 / math.sqrt(400) / math.sqrt(3), rel=0.02)


def test_normal_inits_have_the_formula_std():
    tg.manual_seed(2)
    w = tg.zeros(400, 300)
    init.normal_(w, 1.5, 0.5)
    assert w.numpy().mean() == pytest.approx(1.5, abs=0.01) and w.numpy().std() == pytest.approx(0.5, rel=0.02)
    init.xavier_normal_(w)
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 700), rel=0.02)
    init.kaiming_normal_(w, nonlinearity="relu")
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 300), rel=0.02)
    init.kaiming_normal_(w, a=0.1, mode="fan_out")
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 1.01) / math.sqrt(400), rel=0.02)
    emb = nn.Embedding(500, 100)
    assert npy(emb.weight).std() == pytest.approx(1.0, rel=0.02)


def test_constant_inits_and_reproducibility():
    w = tg.zeros(3, 2, dtype=tg.float64)
    assert init.constant_(w, 0.25).numpy().tolist() == [[0.25] * 2] * 3
    assert init.ones_(w).numpy().sum() == 6 and init.zeros_(w).numpy().sum() == 0
    tg.manual_seed(3)
    a = npy(nn.Linear(5, 4).weight).copy()
    tg.manual_seed(3)
    b = npy(nn.Linear(5, 4).weight)
    assert np.array_equal(a, b)
    with pytest.raises(TypeError, match="floating"):
        init.normal_(tg.zeros(2, dtype=tg.int64))
    p = nn.Parameter(tg.zeros(4, 4))
    init.normal_(p)
    assert p.is_leaf and p.requires_grad and p.grad_fn is None


# ---- every layer runs on "cuda" (a real GPU, or the stand-in that rejects stray numpy calls) -----------------------
LAYERS = [
    (lambda dev: nn.Linear(4, 3, device=dev), (5, 4)),
    (lambda dev: nn.BatchNorm1d(4, device=dev), (5, 4)),
    (lambda dev: nn.BatchNorm1d(4, device=dev), (5, 4, 3)),
    (lambda dev: nn.BatchNorm2d(4, device=dev), (2, 4, 3, 3)),
    (lambda dev: nn.LayerNorm((3, 4), device=dev), (2, 3, 4)),
    (lambda dev: nn.Dropout(0.5), (5, 4)),
    (lambda dev: nn.Flatten(), (2, 3, 4)),
    (lambda dev: nn.Unflatten(1, (2, -1)), (2, 6)),
    (lambda dev: nn.ReLU(), (3, 4)),
    (lambda dev: nn.LeakyReLU(0.1), (3, 4)),
    (lambda dev: nn.ELU(), (3, 4)),
    (lambda dev: nn.Tanh(), (3, 4)),
    (lambda dev: nn.Sigmoid(), (3, 4)),
    (lambda dev: nn.Softplus(), (3, 4)),
    (lambda dev: nn.Identity(), (3, 4)),
]


@pytest.mark.parametrize("make,shape", LAYERS)
def test_layers_run_forward_and_backward_on_device(device, make, shape):
    tg.manual_seed(0)
    layer = make(device)
    for p in layer.parameters():
        assert p.device == device
    x = tg.randn(*shape, device=device, requires_grad=True)
    for mode in (True, False):
        layer.train(mode)
        y = layer(x)
        assert y.device == device
        y.sum().backward()
        assert x.grad.device == device
        assert all(p.grad is None or p.grad.device == device for p in layer.parameters())


def test_embedding_on_device(device):
    emb = nn.Embedding(10, 3, padding_idx=2, device=device)
    idx = tg.tensor([[1, 2], [2, 9]], device=device)
    out = emb(idx)
    assert out.shape == (2, 2, 3) and out.device == device
    out.sum().backward()
    g = emb.weight.grad.cpu().numpy()
    assert g[2].sum() == 0 and g[1].sum() == 3 and g[9].sum() == 3 and g[0].sum() == 0


def test_model_state_dict_roundtrip_across_devices(device):
    a = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    a(tg.randn(6, 3))
    b = nn.Sequential(nn.Linear(3, 4, device=device), nn.BatchNorm1d(4, device=device))
    b.load_state_dict(a.state_dict())
    assert b[0].weight.device == device
    np.testing.assert_array_equal(b[1].running_mean.cpu().numpy(), a[1].running_mean.numpy())


def test_softplus_slope_is_one_above_the_threshold():
    # regression: the backward used sigmoid(beta * x) everywhere, but above the threshold the forward is x
    x = tg.tensor([-1.0, 0.2, 0.6, 3.0], dtype=tg.float64, requires_grad=True)
    nn.Softplus(beta=2.0, threshold=1.0)(x).sum().backward()
    bx = 2.0 * np.array([-1.0, 0.2])
    np.testing.assert_allclose(x.grad.numpy(), np.r_[1 / (1 + np.exp(-bx)), 1.0, 1.0], rtol=1e-12)
