"""Optimizers and LR schedulers without PyTorch: update rules in closed form, groups, state_dict, errors, devices."""
import copy
import importlib.util
import math

import numpy as np
import pytest

import tinygen
import tinygen.optim as optim
from tinygen.optim import lr_scheduler
from tinygen.serialization import load, save

SHAPES = [(6, 4), (6,), (3, 6), (3,)]


def make_params(dtype=np.float64, seed=0, device="cpu"):
    rng = np.random.default_rng(seed)
    return [tinygen.tensor((rng.standard_normal(s) / math.sqrt(s[-1])).astype(dtype), device=device,
                           requires_grad=True) for s in SHAPES]


def make_batches(n, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 4)).astype(dtype), rng.standard_normal((8, 3)).astype(dtype)) for _ in range(n)]


def loss_fn(params, x, y, sign=1.0):
    W1, b1, W2, b2 = params
    out = tinygen.tanh(x @ W1.T + b1) @ W2.T + b2
    return ((out - y) ** 2).mean() * sign


def train(params, opt, batches, sign=1.0, device="cpu"):
    for x, y in batches:
        opt.zero_grad()
        loss_fn(params, tinygen.tensor(x, device=device), tinygen.tensor(y, device=device), sign).backward()
        opt.step()


def host(t):
    return t.detach().cpu().numpy()


OPTIMIZERS = [
    ("sgd", optim.SGD, dict(lr=0.1)),
    ("sgd_momentum", optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("sgd_nesterov", optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adam", optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
    ("adam_amsgrad", optim.Adam, dict(lr=1e-2, amsgrad=True)),
    ("adamw", optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    ("adam_capturable", optim.Adam, dict(lr=1e-2, weight_decay=1e-2, capturable=True)),
    ("adamw_amsgrad_capturable", optim.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True, capturable=True)),
    ("rmsprop", optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-2)),
    ("rmsprop_capturable", optim.RMSprop, dict(lr=1e-3, momentum=0.5, weight_decay=1e-2, capturable=True)),
]


# ---- update rules in closed form -------------------------------------------------------------------------------------
def test_sgd_step_is_in_place_and_builds_no_graph():
    params = make_params()
    arrays = [p.data for p in params]
    before = [p.data.copy() for p in params]
    opt = optim.SGD(params, lr=0.5)
    x, y = make_batches(1)[0]
    loss_fn(params, tinygen.tensor(x), tinygen.tensor(y)).backward()
    grads = [p.grad.data.copy() for p in params]
    opt.step()
    for p, arr, b, g in zip(params, arrays, before, grads):
        assert p.data is arr  # updated in place: other holders of the array see the new values
        assert p.is_leaf and p.requires_grad
        np.testing.assert_array_equal(p.data, b - 0.5 * g)
    assert opt.state == {}  # plain SGD keeps no state, as PyTorch


def test_sgd_momentum_buffer_starts_at_the_gradient():
    p = tinygen.tensor([1.0, -2.0, 3.0], dtype="float64", requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    g1, g2 = np.array([0.5, 1.0, -1.5]), np.array([-1.0, 2.0, 0.25])
    p.grad = tinygen.tensor(g1)
    opt.step()
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].numpy(), g1)  # no dampening on step 1
    np.testing.assert_array_equal(p.data, np.array([1.0, -2.0, 3.0]) - 0.1 * g1)
    p.grad = tinygen.tensor(g2)
    opt.step()
    buf = 0.9 * g1 + 0.5 * g2
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(), buf, rtol=1e-15)
    np.testing.assert_allclose(p.data, np.array([1.0, -2.0, 3.0]) - 0.1 * g1 - 0.1 * buf, rtol=1e-15)


def test_adam_first_steps_match_the_formula():
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(5)
    p = tinygen.tensor(p0, requires_grad=True)
    lr, b1, b2, eps = 1e-2, 0.8, 0.95, 1e-3
    opt = optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps)
    m = v = np.zeros(5)
    expect = p0.copy()
    for step in (1, 2, 3):
        g = rng.standard_normal(5)
        p.grad = tinygen.tensor(g)
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expect = expect - lr / (1 - b1 ** step) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps)
        np.testing.assert_allclose(p.data, expect, rtol=1e-13)
    assert opt.state[p]["step"] == 3
    np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), m, rtol=1e-13)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"].numpy(), v, rtol=1e-13)


def test_adamw_decay_is_decoupled_from_the_gradient():
    p0 = np.array([1.0, -2.0, 4.0])
    p = tinygen.tensor(p0, requires_grad=True)
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = tinygen.zeros(3, dtype="float64")
    opt.step()  # zero gradient: Adam's move is 0, only the decay acts
    np.testing.assert_array_equal(p.data, p0 * (1 - 0.1 * 0.5))
    q = tinygen.tensor(p0, requires_grad=True)
    adam = optim.Adam([q], lr=0.1, weight_decay=0.5)  # L2 in the gradient: Adam normalises it away
    q.grad = tinygen.zeros(3, dtype="float64")
    adam.step()
    np.testing.assert_allclose(q.data, p0 - 0.1 * np.sign(p0), rtol=1e-6)


def test_rmsprop_first_step_matches_the_formula():
    p0, g = np.array([0.5, -1.0]), np.array([2.0, -0.5])
    p = tinygen.tensor(p0, requires_grad=True)
    opt = optim.RMSprop([p], lr=0.01, alpha=0.9, eps=1e-6, centered=True)
    p.grad = tinygen.tensor(g)
    opt.step()
    s, a = 0.1 * g * g, 0.1 * g
    np.testing.assert_allclose(p.data, p0 - 0.01 * g / (np.sqrt(s - a * a) + 1e-6), rtol=1e-14)
    assert set(opt.state[p]) == {"step", "square_avg", "grad_avg"}


@pytest.mark.parametrize("name,cls,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_maximize_equals_minimizing_the_negated_loss(name, cls, kw):
    batches = make_batches(15)
    a, b = make_params(), make_params()
    train(a, cls(a, **kw), batches)
    train(b, cls(b, maximize=True, **kw), batches, sign=-1.0)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("name,cls,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_float32_parameters_stay_float32(name, cls, kw):
    params = make_params(np.float32)
    opt = cls(params, **kw)
    train(params, opt, make_batches(3, np.float32))
    assert all(p.dtype == np.float32 for p in params)
    for s in opt.state.values():  # the moments; a capturable Adam counts its steps in float64 (exact to 2**53)
        assert all(v.dtype == (np.float64 if k == "step" else np.float32) for k, v in s.items()
                   if isinstance(v, tinygen.Tensor))
    assert all(np.isfinite(p.data).all() for p in params)


@pytest.mark.parametrize("cls,kw", [(optim.Adam, dict(weight_decay=1e-2)),
                                    (optim.Adam, dict(amsgrad=True, maximize=True)),
                                    (optim.Adam, dict(weight_decay=0.1, decoupled_weight_decay=True)),
                                    (optim.RMSprop, dict(momentum=0.5, centered=True, weight_decay=1e-2))])
def test_capturable_optimizer_equals_counting_on_the_host_and_their_states_load_either_way(cls, kw, device):
    """capturable=True counts steps in a float64 array on the device (Adam computes the bias corrections there with
    the host's formula): the same bits as counting on the host, on the CPU and on "cuda" (the GPU kernels). A
    state dict of either loads into the other and training goes on identically."""
    batches = make_batches(12, np.float32)
    runs = {}
    for capturable in (False, True):
        params = make_params(np.float32, device=device)
        opt = cls(params, lr=1e-2, capturable=capturable, **kw)
        train(params, opt, batches[:6], device=device)
        runs[capturable] = (params, opt)
    for p, q in zip(runs[False][0], runs[True][0]):
        np.testing.assert_array_equal(host(p), host(q))
    counts = [s["step"] for s in runs[True][1].state.values()]
    assert all(isinstance(c, tinygen.Tensor) and c.device == device and c.dtype == np.float64 and c.shape == ()
               and c.item() == 6 for c in counts)
    assert all(s["step"] == 6 for s in runs[False][1].state.values())
    for capturable in (False, True):  # each run goes on from the other's state
        params, opt = runs[not capturable]
        swapped = cls(params, lr=1e-2, capturable=capturable, **kw)
        swapped.load_state_dict(opt.state_dict())
        train(params, swapped, batches[6:], device=device)
    for p, q in zip(runs[False][0], runs[True][0]):
        np.testing.assert_array_equal(host(p), host(q))


@pytest.mark.parametrize("name,cls,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_learning_rate_held_in_a_tensor_equals_a_number_and_schedules_write_it_in_place(name, cls, kw, device):
    """A learning rate given as a float64 0-d tensor on the parameters' device: the kernels read it there. With a
    schedule changing it after every step, the run equals the run with a number bit for bit, the schedule's rates
    are the same floats, and the optimizer keeps the very tensor (written in place: what a CUDA graph reads)."""
    batches = make_batches(5, np.float32)
    runs = []
    for held in (False, True):
        params = make_params(np.float32, device=device)
        lr = tinygen.tensor(kw["lr"], dtype=np.float64, device=device) if held else kw["lr"]
        opt = cls(params, **{**kw, "lr": lr})
        sched = lr_scheduler.ExponentialLR(opt, gamma=0.7)
        rates = []
        for batch in batches:
            train(params, opt, [batch], device=device)
            sched.step()
            rates.append(sched.get_last_lr())
        runs.append((params, rates, opt))
        if held:
            assert opt.param_groups[0]["lr"] is lr and lr.item() == rates[-1][0]
    (a, rates_a, _), (b, rates_b, _) = runs
    assert rates_a == rates_b and all(isinstance(r, float) for r in rates_b[-1])
    for p, q in zip(a, b):
        np.testing.assert_array_equal(host(p), host(q))


def test_learning_rate_tensor_errors_and_state_dicts_keep_each_optimizers_kind_of_rate():
    params = make_params()
    for bad, match in [(tinygen.tensor([1e-3]), "0-d floating-point"), (tinygen.tensor(1), "0-d floating-point"),
                       (tinygen.tensor(1e-3, requires_grad=True), "requires_grad=True"),
                       (tinygen.tensor(-1e-3), "invalid lr")]:
        with pytest.raises((ValueError, TypeError), match=match):
            optim.Adam(params, lr=bad)
    with tinygen.backend.cuda_standin():
        with pytest.raises(ValueError, match="learning rate on cuda but parameters on"):
            optim.SGD(params, lr=tinygen.tensor(0.1, dtype=np.float64, device="cuda"))
    lr = tinygen.tensor(0.1, dtype=np.float64)
    held, number = optim.SGD(params, lr=lr), optim.SGD(params, lr=0.25)
    held.load_state_dict(number.state_dict())  # a number saved: written into the tensor the optimizer holds
    assert held.param_groups[0]["lr"] is lr and lr.item() == 0.25
    lr.data[...] = 0.5
    number.load_state_dict(held.state_dict())  # a tensor saved: read back as a number
    assert number.param_groups[0]["lr"] == 0.5 and isinstance(number.param_groups[0]["lr"], float)
    with pytest.raises(ValueError, match="invalid lr"):
        held.load_state_dict({**number.state_dict(), "param_groups": [{**number.param_groups[0], "lr": -1.0,
                                                                       "params": [0, 1, 2, 3]}]})
    assert lr.item() == 0.5  # a refused state dict changes nothing


@pytest.mark.parametrize("name,cls,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_device_run_matches_cpu(name, cls, kw, device):
    batches = make_batches(5)
    ref = make_params()
    train(ref, cls(ref, **kw), batches)
    params = make_params(device=device)
    opt = cls(params, **kw)
    train(params, opt, batches, device=device)
    for p, r in zip(params, ref):
        assert p.device == device
        # float64; a GPU may contract a*b+c into one FMA, so allow a few ulps (a wrong update is off by far more)
        np.testing.assert_allclose(host(p), r.data, rtol=1e-13, atol=1e-15)
    for s in opt.state.values():
        assert all(v.device == device for v in s.values() if isinstance(v, tinygen.Tensor))


def test_parameters_without_gradient_are_skipped():
    a, b = make_params()[:2]
    b0 = b.data.copy()
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = tinygen.ones_like(a)
    opt.step()
    np.testing.assert_array_equal(b.data, b0)
    assert b not in opt.state and a in opt.state


def test_gradient_of_the_wrong_shape_is_an_error():
    p = tinygen.zeros(3, requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    p.grad = tinygen.zeros(4)
    with pytest.raises(RuntimeError, match=r"shape \(3,\).*\(4,\)"):
        opt.step()


def test_step_with_closure_returns_the_loss():
    params = make_params()
    opt = optim.SGD(params, lr=0.1)
    x, y = (tinygen.tensor(a) for a in make_batches(1)[0])

    def closure():
        opt.zero_grad()
        loss = loss_fn(params, x, y)
        loss.backward()
        return loss

    with tinygen.no_grad():  # the closure still records its graph
        first = opt.step(closure)
    second = opt.step(closure)
    assert second.item() < first.item()


# ---- zero_grad -----------------------------------------------------------------------------------------------------
def test_zero_grad_set_to_none_and_in_place():
    params = make_params()
    opt = optim.SGD(params, lr=0.1)
    x, y = (tinygen.tensor(a) for a in make_batches(1)[0])
    loss_fn(params, x, y).backward()
    grads = [p.grad for p in params]
    opt.zero_grad(set_to_none=False)
    for p, g in zip(params, grads):
        assert p.grad is g and not g.data.any()
    loss_fn(params, x, y).backward()  # accumulates into the zeroed gradients
    fresh = make_params()
    loss_fn(fresh, x, y).backward()
    for p, f in zip(params, fresh):
        np.testing.assert_array_equal(p.grad.data, f.grad.data)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


# ---- parameter groups and argument checks ---------------------------------------------------------------------------
def test_parameter_groups_take_missing_values_from_defaults():
    W1, b1, W2, b2 = make_params()
    opt = optim.SGD([{"params": [W1, b1], "lr": 0.5}, {"params": W2, "momentum": 0.9}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["momentum"] == 0
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["momentum"] == 0.9
    opt.add_param_group({"params": [b2], "lr": 0.01})
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["params"] == [b2]
    for p in (W1, b1, W2, b2):
        p.grad = tinygen.ones_like(p)
    before = [p.data.copy() for p in (W1, W2, b2)]
    opt.step()
    for p, b, lr in zip((W1, W2, b2), before, (0.5, 0.1, 0.01)):
        np.testing.assert_allclose(p.data, b - lr, rtol=1e-15)


@pytest.mark.parametrize("make,exc,match", [
    (lambda p: optim.SGD(p, lr=-0.1), ValueError, "lr=-0.1"),
    (lambda p: optim.SGD(p, lr=float("nan")), ValueError, "lr=nan"),
    (lambda p: optim.SGD(p, lr="fast"), TypeError, "lr must be a real number"),
    (lambda p: optim.SGD(p, momentum=-0.5), ValueError, "momentum"),
    (lambda p: optim.SGD(p, weight_decay=-1), ValueError, "weight_decay"),
    (lambda p: optim.SGD(p, nesterov=True), ValueError, "Nesterov"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (lambda p: optim.Adam(p, betas=0.9), ValueError, "pair"),
    (lambda p: optim.Adam(p, eps=-1e-8), ValueError, "eps"),
    (lambda p: optim.AdamW(p, lr=-1.0), ValueError, "AdamW.*lr"),
    (lambda p: optim.RMSprop(p, alpha=-0.1), ValueError, "alpha"),
    (lambda p: optim.RMSprop(p, momentum=-1), ValueError, "momentum"),
    (lambda p: optim.SGD([{"params": p, "lr": -1.0}], lr=0.1), ValueError, "lr=-1.0"),
])
def test_bad_hyper_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make(make_params())


def test_bad_parameter_lists():
    params = make_params()
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(params[0], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([params[0], params[0]], lr=0.1)
    with pytest.raises(ValueError, match="not a leaf"):
        optim.SGD([params[0] * 2], lr=0.1)
    with pytest.raises(TypeError, match="int64"):
        optim.SGD([tinygen.arange(3)], lr=0.1)
    with pytest.raises(TypeError, match="not a Tensor"):
        optim.SGD([params[0], np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="set"):
        optim.SGD([{"params": set(params)}], lr=0.1)
    opt = optim.SGD(params[:2], lr=0.1)
    with pytest.raises(ValueError, match="already in another group"):
        opt.add_param_group({"params": [params[1], params[2]]})
    with pytest.raises(KeyError, match="'params'"):
        opt.add_param_group({"lr": 0.1})


# ---- state_dict ----------------------------------------------------------------------------------------------------
def test_state_dict_layout():
    W1, b1, W2, b2 = make_params()
    opt = optim.Adam([{"params": [W1, b1]}, {"params": [W2, b2], "lr": 0.5}], lr=0.1, amsgrad=True)
    for p in (W1, W2, b2):
        p.grad = tinygen.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert sorted(sd["state"]) == [0, 2, 3]  # b1 had no gradient: no state
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][2]["exp_avg"] is opt.state[W2]["exp_avg"]  # PyTorch's semantics: not a copy
    assert sd["state"][0]["step"] == 1


@pytest.mark.parametrize("name,cls,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_state_dict_resumes_training_exactly(name, cls, kw, tmp_path):
    batches = make_batches(20)
    ref = make_params()
    ref_opt = cls([{"params": ref[:2]}, {"params": ref[2:], "lr": kw["lr"] / 2}], **kw)
    train(ref, ref_opt, batches[:10])
    save({"params": ref, "optim": ref_opt.state_dict()}, tmp_path / "ckpt.tg")
    train(ref, ref_opt, batches[10:])

    ck = load(tmp_path / "ckpt.tg")
    params = [p.detach().requires_grad_() for p in ck["params"]]
    opt = cls([{"params": params[:2]}, {"params": params[2:]}], **kw)
    opt.load_state_dict(ck["optim"])
    assert opt.param_groups[1]["lr"] == kw["lr"] / 2  # hyper-parameters come from the state dict
    train(params, opt, batches[10:])
    for p, r in zip(params, ref):
        np.testing.assert_array_equal(p.data, r.data)


@pytest.mark.parametrize("name,cls,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_updates_follow_arrays_replaced_between_steps(name, cls, kw):
    # the update kernels keep views of the parameters and their states between steps (the optimizer's workspace);
    # a parameter's array replaced (p.data = ...), the state replaced by load_state_dict, and a parameter frozen
    # and thawed between steps: the same bits as an optimizer that keeps nothing between steps
    batches = make_batches(8)
    runs = []
    for keep in (True, False):
        params = make_params()
        opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": kw["lr"] / 2}], **kw)
        for i, batch in enumerate(batches):
            if not keep:
                opt._workspace.rows.clear()
            if i == 2:
                params[1].data = params[1].data * 0.5
            if i == 4:
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            params[3].requires_grad_(i != 5)
            train(params, opt, [batch])
        if keep and name in ("sgd_momentum", "adam", "rmsprop") and tinygen.kernels.enabled():
            assert opt._workspace.rows  # views were kept, so the test goes through them
        runs.append([p.data for p in params] + [host(t) for s in opt.state.values() for t in s.values()
                                                if isinstance(t, tinygen.Tensor)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_a_deep_copy_of_an_optimizer_updates_its_own_parameters():
    # the workspace's kept views are of the original's arrays: a copy starts without them and trains its own copy
    params = make_params()
    opt = optim.Adam(params, lr=0.1)
    batches = make_batches(4)
    train(params, opt, batches[:1])
    params2, opt2 = copy.deepcopy((params, opt))
    assert opt2._workspace.rows == {} and opt2.param_groups[0]["params"][0] is params2[0]
    train(params, opt, batches[1:])
    train(params2, opt2, batches[1:])
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a.data, b.data)


def test_load_state_dict_copies_and_casts():
    src = make_params()
    opt = optim.SGD(src, lr=0.1, momentum=0.9)
    for p in src:
        p.grad = tinygen.ones_like(p)
    opt.step()
    dst = make_params(np.float32)
    other = optim.SGD(dst, lr=0.1, momentum=0.9)
    other.load_state_dict(opt.state_dict())
    buf = other.state[dst[0]]["momentum_buffer"]
    assert buf.dtype == np.float32
    assert not np.shares_memory(buf.data, opt.state[src[0]]["momentum_buffer"].data)


def test_load_state_dict_errors():
    params = make_params()
    opt = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = tinygen.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    two = optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
    with pytest.raises(ValueError, match="1 parameter groups but the optimizer has 2"):
        two.load_state_dict(sd)
    fewer = optim.Adam(params[:3], lr=0.1)
    with pytest.raises(ValueError, match="group 0 has 4 parameters in the state dict but 3"):
        fewer.load_state_dict(sd)
    swapped = optim.Adam([params[1], params[0], params[2], params[3]], lr=0.1)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(6, 4\).*shape \(6,\)"):
        swapped.load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    bad = {"state": {9: {}}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match="parameter 9"):
        opt.load_state_dict(bad)


# ---- LR schedulers -------------------------------------------------------------------------------------------------
def lrs(sched, n):
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        sched.optimizer.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def test_step_lr_and_exponential_lr_follow_their_closed_forms():
    p = make_params()[:1]
    got = lrs(lr_scheduler.StepLR(optim.SGD(p, lr=0.5), step_size=3, gamma=0.1), 10)
    np.testing.assert_allclose(got, [0.5 * 0.1 ** (e // 3) for e in range(11)], rtol=1e-14)
    got = lrs(lr_scheduler.ExponentialLR(optim.SGD(p, lr=0.5), gamma=0.9), 10)
    np.testing.assert_allclose(got, [0.5 * 0.9 ** e for e in range(11)], rtol=1e-14)


def test_cosine_annealing_follows_its_closed_form_over_several_periods():
    p = make_params()[:1]
    opt = optim.SGD(p, lr=0.2)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.01)
    got = lrs(sched, 23)
    expect = [0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(24)]
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-15)
    assert got[5] == pytest.approx(0.01) and got[10] == pytest.approx(0.2)
    assert opt.param_groups[0]["lr"] == got[-1] and sched.last_epoch == 23


def test_lambda_lr_per_group():
    W1, b1 = make_params()[:2]
    opt = optim.Adam([{"params": [W1], "lr": 1.0}, {"params": [b1], "lr": 0.1}])
    sched = lr_scheduler.LambdaLR(opt, [lambda e: 1 / (1 + e), lambda e: 0.5 ** e])
    for _ in range(4):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == [1.0 / 5, 0.1 * 0.5 ** 4]
    with pytest.raises(ValueError, match="expected 2 lr_lambdas"):
        lr_scheduler.LambdaLR(opt, [lambda e: 1.0])


@pytest.mark.parametrize("make", [
    lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=1e-3),
    lambda o: lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
], ids=["step", "exponential", "cosine", "lambda"])
def test_scheduler_state_dict_resumes_exactly(make, tmp_path):
    opt = optim.SGD(make_params(), lr=0.3, momentum=0.9)
    sched = make(opt)
    lrs(sched, 5)
    save({"optim": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.tg")
    rest = lrs(sched, 9)

    ck = load(tmp_path / "s.tg")
    opt2 = optim.SGD(make_params(), lr=0.3, momentum=0.9)
    opt2.load_state_dict(ck["optim"])
    sched2 = make(opt2)
    sched2.load_state_dict(ck["sched"])
    assert sched2.last_epoch == 5
    assert lrs(sched2, 9) == rest


def test_scheduler_argument_errors():
    opt = optim.SGD(make_params(), lr=0.1)
    with pytest.raises(TypeError, match="expected a tinygen.optim.Optimizer"):
        lr_scheduler.StepLR("sgd", step_size=2)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(TypeError, match="T_max must be an int"):
        lr_scheduler.CosineAnnealingLR(opt, T_max=2.5)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.ExponentialLR(opt, gamma=0.9, last_epoch=3)
    with pytest.raises(TypeError, match="callable"):
        lr_scheduler.LambdaLR(opt, 0.5)
    sched = lr_scheduler.StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="for 2 parameter groups"):
        sched.load_state_dict({"last_epoch": 1, "base_lrs": [0.1, 0.2]})


def test_a_user_defined_optimizer_on_the_base_class():
    from tinygen.optim.optimizer import Optimizer, check_range, required

    class SignSGD(Optimizer):
        def __init__(self, params, lr=required):
            super().__init__(params, dict(lr=lr))

        def _validate(self, group):
            check_range("lr", group["lr"], owner="SignSGD")

        def _step_group(self, group):
            for p in group["params"]:
                if p.grad is not None:
                    p.data -= group["lr"] * p.xp.sign(p.grad.data)

    a, b = make_params()[:2]
    with pytest.raises(ValueError, match="group 0 does not give 'lr'"):
        SignSGD([a])
    opt = SignSGD([{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.25}])
    a0, b0 = a.data.copy(), b.data.copy()
    a.grad, b.grad = tinygen.ones_like(a), -tinygen.ones_like(b)
    opt.step()
    np.testing.assert_array_equal(a.data, a0 - 0.5)
    np.testing.assert_array_equal(b.data, b0 + 0.25)
    with pytest.raises(ValueError, match="SignSGD: invalid lr=-1"):
        opt.add_param_group({"params": [make_params()[0]], "lr": -1})


# ---- the update rules are the kernels' (tinygen.kernels), with the reference as the definition and the fallback ---
STEP_KERNELS = [(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), "sgd_steps"),
                (lambda ps: optim.SGD(ps, lr=0.1), "sgd_steps"),
                (lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=0.1), "adam_steps"),
                (lambda ps: optim.AdamW(ps, lr=0.01, betas=(0.5, 0.999)), "adam_steps"),
                (lambda ps: optim.RMSprop(ps, lr=0.01, centered=True, momentum=0.5), "rmsprop_steps")]


@pytest.mark.parametrize("make, kernel", STEP_KERNELS, ids=[f"{k}-{i}" for i, (_, k) in enumerate(STEP_KERNELS)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_step_through_the_kernel_registry(monkeypatch, make, kernel, dtype):
    """Each step asks tinygen.kernels for its update (no copy of the rule in tinygen.optim); with the Numba kernels
    off that is the reference, and both give the same bits."""
    from tinygen import kernels
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s).astype(dtype) for s in ((7, 5), (5,))]
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in start] for _ in range(3)]
    asked = []
    real_get = kernels.get
    monkeypatch.setattr(kernels, "get", lambda name, array: asked.append(name) or real_get(name, array))

    def run(numba):
        ps = [tinygen.tensor(a, requires_grad=True) for a in start]
        opt = make(ps)
        with kernels.enabled_as(numba):
            for gs in grads:
                for p, g in zip(ps, gs):
                    p.grad = tinygen.tensor(g)
                opt.step()
        return [p.detach().numpy().copy() for p in ps]

    plain = run(False)
    assert asked == [kernel] * 3  # one multi-tensor call per step
    if importlib.util.find_spec("numba") is not None:
        for a, b in zip(run(True), plain):
            np.testing.assert_array_equal(a, b)


DECAYING = [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
            lambda ps: optim.Adam(ps, lr=0.01, betas=(0.9, 0.9)),  # (AMSGrad's maximum does not decay)
            lambda ps: optim.RMSprop(ps, lr=0.01, alpha=0.9, centered=True, momentum=0.9)]


@pytest.mark.parametrize("numba", [False, True], ids=["reference", "numba"])
@pytest.mark.parametrize("make", DECAYING, ids=["sgd", "adam", "rmsprop"])
def test_running_averages_of_a_dead_unit_never_go_subnormal(make, numba):
    """A unit whose gradient becomes exactly zero (a dead ReLU) has its running averages decay geometrically;
    where one would become subnormal (slow arithmetic on x86), the step sets it to zero instead."""
    from tinygen import kernels
    if numba and importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    tiny = np.finfo(np.float32).tiny
    p = tinygen.tensor(np.ones(4, np.float32), requires_grad=True)
    opt = make([p])
    with kernels.enabled_as(numba):
        p.grad = tinygen.tensor(np.array([1.0, -1.0, 0.5, 1.0], np.float32))
        opt.step()
        live = np.array([0, 0, 0, 1e-3], np.float32)  # the last unit keeps a small gradient (of changing sign:
        # a constant one would drive the centered variance to zero)
        zero_at = None
        for step in range(1, 1001):  # 0.9**1000 = 1.7e-46: every decaying average passes through the subnormals
            p.grad = tinygen.tensor(live * (-1) ** step)
            opt.step()
            averages = [v.numpy() for v in opt.state[p].values() if isinstance(v, tinygen.Tensor)]
            for a in averages:
                assert not ((a != 0) & (np.abs(a) < tiny)).any(), f"step {step}: subnormal average {a}"
            if zero_at is None and all((a[:3] == 0).all() for a in averages):
                zero_at = step
    assert zero_at is not None and zero_at < 900, zero_at  # flushed once below 1.2e-38, about step 840
    assert all(np.isfinite(a[3]) and a[3] != 0 for a in averages)  # a live unit's averages stay


@pytest.mark.parametrize("make, kernel", STEP_KERNELS, ids=[f"{k}-{i}" for i, (_, k) in enumerate(STEP_KERNELS)])
def test_a_parameter_changed_after_the_first_step_is_named_with_its_remedy(make, kernel):  # noqa: ARG001 - ids
    """A parameter made float64 (``model.to``) or resized after the optimizer made its state: the step names the
    parameter, the state and both shapes and dtypes, instead of the kernel's message about arrays; reloading the
    state casts it, after which the step runs. A ValueError about anything else passes through as it is."""
    params = make_params(np.float32)
    opt = make(params)
    train(params, opt, make_batches(1, np.float32))
    stateful = any(isinstance(v, tinygen.Tensor) and v.ndim for s in opt.state.values() for v in s.values())
    params[2].data = params[2].data.astype(np.float64)  # as model.to(float64) does, one parameter
    for p in params:
        p.grad = tinygen.zeros(*p.shape, dtype=p.dtype)
    if not stateful:  # plain SGD keeps no arrays: nothing goes stale
        opt.step()
        return
    with pytest.raises(ValueError, match=r"parameter 2 of group 0 is now \(3, 6\) float64, but its state '\w+' "
                                         r"is \(3, 6\) float32.*opt.load_state_dict\(opt.state_dict\(\)\)"):
        opt.step()
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert all(v.dtype == np.float64 for v in opt.state[params[2]].values() if isinstance(v, tinygen.Tensor)
               and v.ndim)
    params[0].data = np.zeros((6, 5))
    params[0].grad = tinygen.zeros(6, 5, dtype=np.float64)
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 is now \(6, 5\) float64, but its state '\w+' "
                                         r"is \(6, 4\) float32.*Make the optimizer anew"):
        opt.step()
    params[0].data = np.zeros((6, 4), np.float32)
    params[0].grad = tinygen.zeros(6, 4, dtype=np.float32)
    params[0].data.flags.writeable = False  # another ValueError: the kernel's own
    with pytest.raises(ValueError, match="writable|read-only"):  # (the kernel's words, or NumPy's)
        opt.step()
