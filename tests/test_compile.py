"""tinygen.compile: a replayed step gives the same bits as eager, re-records when it must, refuses what it can't."""
import collections
import copy
import dataclasses
import enum
import functools
import gc
import importlib.util
import os
import queue
import random
import subprocess
import sys
import threading
import time
import types
import warnings
import weakref

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen import backend
from tinygen.backend import cuda_standin
from tinygen.capture import CAPTURE
from tinygen.compile import SPARES, Compiled


def _params(*modules):
    """The parameters' and buffers' values (BatchNorm's running statistics and count)."""
    return [t.data.copy() for m in modules for t in (*m.parameters(), *m.buffers())]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _mlp_setup(device="cpu", dropout=0.0, batchnorm=False):
    tg.manual_seed(0)
    layers = [nn.Linear(12, 16)]
    if batchnorm:  # True, or "cumulative": momentum=None, a factor of 1 / count read on the device every step
        layers.append(nn.BatchNorm1d(16, momentum=None if batchnorm == "cumulative" else 0.1))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 5)]
    model = nn.Sequential(*layers).to(device)
    opt = tg.optim.Adam(model.parameters(), lr=1e-2)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return model, opt, step


def _sgd_step(model, loss_fn):
    """A plain training step of ``model`` with SGD (lr 0.1): step(x, y) -> the loss."""
    opt = tg.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _batches(n, batch=8, device="cpu", seed=1):
    tg.manual_seed(seed)
    return [(tg.randn(batch, 12).to(device), tg.randint(0, 5, (batch,)).to(device)) for _ in range(n)]


def _run(setup, compiled, steps=100, **kw):
    model, opt, step = setup(**kw)
    f = tg.compile(step) if compiled else step
    data = _batches(steps, device=kw.get("device", "cpu"))
    tg.manual_seed(7)  # the stream dropout draws from
    losses = [f(x, y).detach().data.copy() for x, y in data]
    return losses, _params(model), f


@pytest.mark.parametrize("dropout,batchnorm", [(0.0, False), (0.3, True), (0.0, "cumulative")])
def test_mlp_steps_replay_bitwise_equal_to_eager(dropout, batchnorm):
    le, pe, _ = _run(_mlp_setup, False, dropout=dropout, batchnorm=batchnorm)
    lc, pc, f = _run(_mlp_setup, True, dropout=dropout, batchnorm=batchnorm)
    assert (f.records, f.replays) == (1, 99)
    assert _same(le, lc) and _same(pe, pc)


@pytest.mark.parametrize("batchnorm", [False, "cumulative"])
def test_replay_on_the_cuda_standin_equals_eager(batchnorm):
    with cuda_standin():
        le, pe, _ = _run(_mlp_setup, False, steps=6, device="cuda", dropout=0.2, batchnorm=batchnorm)
        lc, pc, f = _run(_mlp_setup, True, steps=6, device="cuda", dropout=0.2, batchnorm=batchnorm)
    assert f.replays == 5
    assert _same([np.asarray(x.get()) for x in le], [np.asarray(x.get()) for x in lc])
    assert _same([x.get() for x in pe], [x.get() for x in pc])


def _vae_setup():
    tg.manual_seed(0)
    enc, dec = nn.Linear(12, 2 * 3), nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 12))
    opt = tg.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-2)

    def step(x):
        mu, logvar = enc(x).chunk(2, 1)
        z = mu + (logvar * 0.5).exp() * tg.randn_like(mu)  # reparameterisation: a fresh draw every call
        rec = F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
        loss = (rec + F.kl_normal(mu, logvar)) / x.shape[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return (enc, dec), step


def gan_models():
    """A small seeded GAN: G (noise 4 -> 6), D (6 -> 1 logit) and an Adam for each."""
    tg.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 6), nn.Tanh())
    D = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    return G, D, tg.optim.Adam(G.parameters(), lr=1e-3), tg.optim.Adam(D.parameters(), lr=1e-3)


def _gan_setup(penalty):
    G, D, opt_g, opt_d = gan_models()

    def step(real):
        fake = G(tg.randn(real.shape[0], 4))
        d_loss = F.softplus(-D(real)).mean() + F.softplus(D(fake.detach())).mean()
        if penalty:  # WGAN-GP: the gradient of D at interpolates, through create_graph
            eps = tg.rand(real.shape[0], 1)
            mix = (eps * real + (1 - eps) * fake.detach()).detach().requires_grad_()
            (g,) = tg.grad(D(mix).sum(), mix, create_graph=True)
            d_loss = d_loss + 10 * ((g.pow(2).sum(1) + 1e-12).sqrt() - 1).pow(2).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-D(fake)).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        return d_loss, g_loss
    return (G, D), step


@pytest.mark.parametrize("setup", ["vae", "gan", "wgan-gp"])
def test_vae_gan_and_wgan_gp_steps_replay_bitwise(setup):
    def run(compiled):
        modules, step = _vae_setup() if setup == "vae" else _gan_setup(setup == "wgan-gp")
        f = tg.compile(step) if compiled else step
        tg.manual_seed(3)
        data = [tg.rand(8, 12 if setup == "vae" else 6) for _ in range(100)]
        outs = [[t.detach().data.copy() for t in ((r,) if isinstance(r, tg.Tensor) else r)]
                for r in (f(x) for x in data)]
        return outs, _params(*modules), f
    oe, pe, _ = run(False)
    oc, pc, f = run(True)
    assert f.replays == 99
    assert all(_same(a, b) for a, b in zip(oe, oc)) and _same(pe, pc)


def test_a_new_signature_or_mode_records_anew_and_stays_exact():
    model, opt, step = _mlp_setup(batchnorm=True)
    f = tg.compile(step)
    data = _batches(4) + _batches(2, batch=3, seed=2)  # a short last batch: another shape
    for x, y in data:
        f(x, y)
    assert (f.records, f.replays) == (2, 4)
    model.eval()  # the guard on the module's mode fails: a new recording, then replays of it
    x, y = data[0]
    f(x, y)
    f(x, y)
    assert (f.records, f.replays) == (3, 5)
    model[0].weight.requires_grad_(False)  # a frozen layer changes the graph
    f(x, y)
    assert f.records == 4


def test_a_new_default_dtype_records_anew():
    """The default dtype decides what the step's tensors made from Python numbers and shapes are (``zeros``,
    ``tensor(0.5)``, ``randn``): a replay after ``set_default_dtype`` would give the recorded dtype."""
    x = tg.tensor(np.linspace(-1, 1, 12).reshape(4, 3))  # float32 (made under the default)

    def step(x):
        return x.double() * tg.tensor(0.1) + tg.zeros(4, 3)
    f = tg.compile(step)
    try:
        for dtype in (np.float32, np.float32, np.float64, np.float64, np.float32):
            tg.set_default_dtype(dtype)
            got, want = f(x), step(x)
            assert got.dtype == want.dtype and np.array_equal(got.data, want.data)
        assert (f.records, f.replays) == (2, 3)
        tg.set_default_dtype(np.float64)
        f2 = tg.compile(step, cache_size=1)
        f2(x)
        tg.set_default_dtype(np.float32)
        with pytest.warns(RuntimeWarning, match="default dtype was float64, then float32"):
            f2(x)
    finally:
        tg.set_default_dtype(np.float32)


def test_a_replaced_parameter_submodule_or_setting_records_anew():
    """What a module's forward reads in Python is baked into a recording: replacing a parameter, a submodule or
    a setting between calls records the step anew (a replay would use the old ones); switching to eval and back
    between calls, or inside the step, does not."""
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.Linear(4, 2))
    x = tg.randn(5, 3)

    def step(x):
        out = model(x)
        model.eval()
        with tg.no_grad():
            check = model(x)
        model.train()
        return (out * 1).detach(), check * 1
    f = tg.compile(step)
    changes = [lambda: None, lambda: None,
               lambda: setattr(model[0], "weight", nn.Parameter(tg.randn(4, 3))),  # a new parameter
               lambda: setattr(model[2], "bias", None),  # a parameter removed
               lambda: model.__setitem__(2, nn.Linear(4, 2)),  # a new submodule
               lambda: setattr(model[1], "p", 1.0),  # a setting: everything dropped now
               lambda: (model.eval(), model.train())]  # back as it was: no change
    records = []
    for change in changes:
        change()
        got = f(x)
        want = step(x)
        assert all(np.array_equal(a.data, b.data) for a, b in zip(got, want))
        records.append(f.records)
    assert records == [1, 1, 2, 3, 4, 5, 5]
    assert np.array_equal(f(x)[0].data, np.broadcast_to(model[2].bias.data, (5, 2)))  # p = 1: the bias alone


def test_a_step_that_calls_its_model_in_eval_mode_first_replays():
    """The mode a module's guard holds is the one the step found it in, not the one it first calls it in: a step
    that looks at the batch in eval mode, then trains on it, records once (before, every call recorded anew)."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))
        opt = tg.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            model.eval()
            with tg.no_grad():
                before = F.mse_loss(model(x), y)
            model.train()
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return before, loss
        f = tg.compile(step) if compiled else step
        tg.manual_seed(1)
        outs = [tuple(t.data.copy() for t in f(tg.randn(8, 4), tg.randn(8, 2))) for _ in range(5)]
        return outs, _params(model) + [model[1].running_var.data.copy()], f, model
    oe, pe, _, _ = run(False)
    oc, pc, f, model = run(True)
    assert _same([a for o in oe for a in o], [a for o in oc for a in o]) and _same(pe, pc)
    assert (f.records, f.replays) == (1, 4) and model.training
    model.eval()  # called in eval mode now: that is another mode the step finds, so it records anew
    f(tg.randn(8, 4), tg.randn(8, 2))
    assert f.records == 2


@pytest.mark.parametrize("change", ["slope", "batchnorm eval"])
def test_a_setting_or_mode_of_a_module_sequential_runs_fused_records_anew(change):
    """Sequential runs Linear + LeakyReLU (BatchNorm + ReLU) as one node without calling either module: a new
    slope, or the BatchNorm alone put in eval to freeze its statistics, records anew all the same."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6), nn.LeakyReLU(0.2),
                              nn.Linear(6, 2))
        step = _sgd_step(model, F.mse_loss)
        f = tg.compile(step) if compiled else step
        losses = []
        for k in range(5):
            if k == 2 and change == "slope":
                model[4].negative_slope = 0.01
            if k == 2 and change == "batchnorm eval":
                model[1].eval()
            losses.append(f(tg.randn(8, 4), tg.randn(8, 2)).data.copy())
        return losses, _params(model) + [model[1].running_mean.data.copy()], f
    le, pe, _ = run(False)
    lc, pc, f = run(True)
    assert _same(le, lc) and _same(pe, pc)
    assert (f.records, f.replays) == (2, 3)


class _Stateful(nn.Module):
    """A module whose forward keeps Python state: a call counter that anneals input noise, a running average
    rebound as a new buffer (VQ-VAE's EMA codebook style), or set to a value once (a lazy setting)."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.calls, self._calls, self.scale = kind, 0, 0, 1.0
        self.lin = nn.Linear(12, 5)
        self.register_buffer("avg", tg.zeros(12))

    def forward(self, x):
        if self.kind == "counter":
            self.calls += 1
            x = x + (1.0 / self.calls) * tg.randn(*x.shape)
        elif self.kind == "private counter":  # the module's own bookkeeping, which a replay would not do either
            self._calls += 1
            x = x + (1.0 / self._calls) * tg.randn(*x.shape)
        elif self.kind == "rebound buffer":
            with tg.no_grad():
                self.avg = self.avg * 0.9 + x.mean(0) * 0.1
            x = x - self.avg
        elif self.kind == "set once":
            self.scale = 0.5
        else:  # "set and set back": no change at the end of the call
            self.scale = 2.0
            x = x * self.scale
            self.scale = 1.0
        return self.lin(x * self.scale)


class _Tempered(nn.Module):
    """A module whose forward reads a config object it holds (``self.cfg.temperature``), and may count in it."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.lin = cfg, nn.Linear(12, 5)

    def forward(self, x):
        if self.cfg.count:
            self.cfg.calls += 1
        return self.lin(x) / self.cfg.temperature


@pytest.mark.parametrize("count", [False, True], ids=["changed between calls", "counted in forward"])
def test_a_config_object_a_module_holds_is_checked(count):
    """A new temperature in the config a module holds, set between calls, records anew (a replay would divide by
    the old one); a forward that counts in it makes each call run its Python."""
    def run(compiled):
        tg.manual_seed(0)
        cfg = types.SimpleNamespace(temperature=1.0, calls=0, count=count)
        model = nn.Sequential(_Tempered(cfg))
        step = _sgd_step(model, F.cross_entropy)
        f = tg.compile(step) if compiled else step
        losses = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the count: Python on every call
            for k, (x, y) in enumerate(_batches(5)):
                if k == 2:
                    cfg.temperature = 3.0
                losses.append(f(x, y).data.copy())
        return losses + _params(model) + [np.float64(cfg.calls)], f
    eager, _ = run(False)
    compiled, f = run(True)
    assert _same(eager, compiled) and f.records == (5 if count else 2)


@pytest.mark.parametrize("kind,records", [("counter", 6), ("private counter", 6), ("rebound buffer", 6),
                                          ("set once", 2), ("set and set back", 1)])
def test_a_module_attribute_the_step_sets_anew_records_every_call(kind, records):
    """A replay runs ops, not the step's Python: a module attribute the step leaves with another value would stay
    as recorded (the counter at 1, the rebound buffer an intermediate of the recording). Such a call records
    anew, each time it happens, and warns once when it happens on every call; set and set back is no change."""
    def run(compiled):
        tg.manual_seed(0)
        model = _Stateful(kind)
        step = _sgd_step(model, F.cross_entropy)
        f = tg.compile(step) if compiled else step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = [f(x, y).data.copy() for x, y in _batches(6, batch=8, seed=3)]
        state = _params(model) + [np.float64(model.calls), np.float64(model._calls), np.float64(model.scale)]
        return losses, state, f, [str(w.message) for w in caught]
    le, se, _, _ = run(False)
    lc, sc, f, said = run(True)
    assert _same(le, lc) and _same(se, sc)
    assert f.records == records and f.replays == 6 - records
    named = [w for w in said if "on every call" in w]
    if records == 6:
        attribute = {"counter": "calls", "private counter": "_calls"}.get(kind, "avg")
        assert len(named) == 1 and f"the attribute '{attribute}' of the _Stateful" in named[0]
    else:
        assert named == []

def test_a_parameter_given_another_shape_records_anew():
    """The same parameter tensors on arrays of another shape (a layer made wider in place) record anew; so would
    another dtype (what .double() does to a model), which the guard checks the same way."""
    tg.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = tg.randn(5, 3)

    def step(x):
        lin.zero_grad()
        out = lin(x)
        (out * out).sum().backward()
        return out
    f = tg.compile(step)
    rng = np.random.default_rng(0)
    for k in range(5):
        if k == 2:  # one more output
            lin.weight.data = rng.standard_normal((3, 3)).astype(np.float32)
            lin.bias.data = rng.standard_normal(3).astype(np.float32)
        got, got_grad = f(x).data, lin.weight.grad.data.copy()
        want = step(x).data
        assert np.array_equal(got, want) and np.array_equal(got_grad, lin.weight.grad.data), k
    assert (f.records, f.replays) == (2, 3)


def test_parameters_changed_between_calls_are_used_by_the_replay():
    def run(compiled):
        model, opt, step = _mlp_setup()
        f = tg.compile(step) if compiled else step
        data = _batches(6)
        for i, (x, y) in enumerate(data):
            if i == 3:
                model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
                model[0].bias.data[...] = 0.25
            f(x, y)
        return _params(model)
    assert _same(run(False), run(True))


@pytest.mark.parametrize("held", [False, True], ids=["number", "tensor"])
def test_schedulers_and_zero_grad_to_zeros_inside_a_step(held):
    """A schedule stepped inside the step, with the learning rate a number or a 0-d tensor (written in place)."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Linear(12, 5)
        opt = tg.optim.SGD(model.parameters(), lr=tg.tensor(0.1, dtype=np.float64) if held else 0.1, momentum=0.9)
        sched = tg.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

        def step(x, y):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            sched.step()
        f = tg.compile(step) if compiled else step
        for x, y in _batches(7):
            f(x, y)
        return _params(model) + [np.array(tg.optim.get_lr(opt.param_groups[0]))]
    assert _same(run(False), run(True))


@pytest.mark.parametrize("read", [lambda t: t.item(), lambda t: float(t), lambda t: bool(t > 0),
                                  lambda t: t.detach().numpy(), lambda t: t.tolist()],
                         ids=["item", "float", "bool", "numpy", "tolist"])
def test_host_reads_inside_a_step_are_refused_with_the_line(read):
    model, opt, _ = _mlp_setup()

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        read(loss)
        return loss
    _refused(step, "into Python")


@pytest.mark.parametrize("draw", [lambda: random.random(), lambda: random.choice([0, 1]),
                                  lambda: np.random.rand(), lambda: np.random.randint(2),
                                  lambda: np.random.default_rng().random()],
                         ids=["random.random", "random.choice", "np.random.rand", "np.random.randint",
                              "unseeded default_rng"])
def test_host_random_draws_inside_a_step_are_refused_with_the_line(draw):
    """A draw from Python's or NumPy's global generator (an augmentation's coin flip) would be replayed as the
    value it gave; tinygen's draws are replayed anew. The generators are back as they were after the call."""
    model, opt, _ = _mlp_setup()
    originals = (random.random, np.random.rand, np.random.default_rng)

    def step(x, y):
        if draw() > 0.5:
            x = x * 2
        return F.cross_entropy(model(x), y)
    _refused(step, "A replay would repeat")
    assert (random.random, np.random.rand, np.random.default_rng) == originals


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="needs Numba")
def test_a_recording_that_loads_numba_leaves_its_random_functions_usable_in_njit_code():
    # the recording patches random.random, np.random.rand, ...; Numba keys its own versions of them on the functions
    # it finds at its first compilation, which here comes inside the recording (the step's first kernel). Run in a
    # fresh process, where Numba has compiled nothing yet: @njit code calling them still compiles and runs after it
    script = """
import random, sys
import numpy as np
import tinygen as tg
import tinygen.nn as nn
assert "numba" not in sys.modules
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
opt = tg.optim.Adam(model.parameters(), lr=1e-3)
def step(x):
    opt.zero_grad()
    loss = (model(x) ** 2).mean()
    loss.backward()
    opt.step()
    return loss
compiled = tg.compile(step)
for _ in range(3):
    compiled(tg.randn(5, 8))
assert compiled.records == 1 and "numba" in sys.modules
from numba import njit
@njit
def draws(n):
    s = 0.0
    for _ in range(n):
        s += random.random() + np.random.random() + np.random.rand()
    return s
assert 0 < draws(100) < 300
print("ok")
"""
    env = dict(os.environ, TINYGEN_NUMBA="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


class _Trainer:
    """A trainer object whose ``step`` trains ``_mlp_setup``'s model on ``self.loss(x, y)`` (its subclass's)."""
    __slots__ = ("model", "opt")  # (a subclass with slots of its own has no __dict__)

    def __init__(self):
        self.model, self.opt, _ = _mlp_setup()

    def step(self, x, y):
        loss = self.loss(x, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss


@dataclasses.dataclass(slots=True)
class _SlottedConfig:
    beta: float = 1.0
    calls: int = 0


SLOTTED = _SlottedConfig()


@pytest.mark.parametrize("where", ["global config", "step's object", "counted by the step"])
def test_an_object_with_slots_is_read_as_one_with_a_dict(where):
    """A ``@dataclass(slots=True)`` config and a trainer with ``__slots__`` (no ``__dict__``): a number the step
    reads from either is part of the signature, and a field the step's Python changes is Python state a replay
    would not change. Before, all three replayed as recorded."""
    global SLOTTED

    class Trainer(_Trainer):
        __slots__ = ("beta",)

        def __init__(self):
            super().__init__()
            self.beta = 1.0

        def loss(self, x, y):
            beta = SLOTTED.beta if where == "global config" else self.beta
            if where == "counted by the step":
                SLOTTED.calls += 1
            return F.cross_entropy(self.model(x), y) * beta

    def run(compiled):
        global SLOTTED
        SLOTTED = _SlottedConfig()
        trainer = Trainer()
        f = tg.compile(trainer.step) if compiled else trainer.step
        out = []
        for k, (x, y) in enumerate(_batches(4)):
            if k == 2:
                SLOTTED.beta = trainer.beta = 3.0
            out.append(f(x, y).data.copy())
        return out + _params(trainer.model) + [np.float64(SLOTTED.calls)], f
    try:
        eager, _ = run(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the counter: Python on every call
            compiled, f = run(True)
    finally:
        SLOTTED = _SlottedConfig()
    assert _same(eager, compiled)
    assert (f.records, f.replays) == ((4, 0) if where == "counted by the step" else (2, 2))


class _StrictConfig:
    """A slotted config whose ``__getattr__`` raises KeyError for a missing name (as dict-backed configs do)."""
    __slots__ = ("beta",)

    def __init__(self):
        self.beta = 1.0

    def __getattr__(self, name):
        raise KeyError(name)


STRICT = _StrictConfig()


def test_a_config_whose_getattr_raises_another_error_is_read():
    """Looking for a ``__dict__`` on such an object runs its ``__getattr__``; the KeyError must not escape the
    signature (it did, on every call), and its number is part of the signature."""
    def change(k):
        STRICT.beta = 3.0 if k >= 2 else 1.0
    try:
        eager, compiled, f = _changed_between_calls(
            lambda model, x, y: F.cross_entropy(model(x), y) * STRICT.beta, change, calls=4)
    finally:
        change(0)
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (2, 2)


HOST_RNG = None  # a generator of the user's the step below finds as a global


@pytest.mark.parametrize("kind", ["numpy Generator", "numpy RandomState", "random.Random"])
@pytest.mark.parametrize("where", ["attribute", "global"])
def test_a_draw_from_a_generator_of_the_users_runs_each_call_as_eager(kind, where):
    """A seeded generator of the user's (``self.rng = np.random.default_rng(0)``), drawn from in the step's Python:
    a replay would repeat the recorded draw, so its state is Python state the step changes and each call runs as
    eager (a warning says so). Before, every replay used the first call's noise."""
    global HOST_RNG

    def make():
        return {"numpy Generator": np.random.default_rng, "numpy RandomState": np.random.RandomState,
                "random.Random": random.Random}[kind](3)

    def noise(rng, shape):
        if kind == "random.Random":
            return np.full(shape, rng.random(), np.float32)
        return rng.standard_normal(shape).astype(np.float32)

    class Trainer(_Trainer):
        def __init__(self):
            super().__init__()
            self.rng = make()

        def loss(self, x, y):
            rng = self.rng if where == "attribute" else HOST_RNG
            return F.cross_entropy(self.model(x + tg.tensor(noise(rng, x.shape))), y)

    def run(compiled):
        global HOST_RNG
        HOST_RNG = make()
        trainer = Trainer()
        f = tg.compile(trainer.step) if compiled else trainer.step
        return [f(x, y).data.copy() for x, y in _batches(4)] + _params(trainer.model), f
    try:
        eager, _ = run(False)
        with pytest.warns(RuntimeWarning, match="the state of the random generator in .*draw random numbers with "
                                                "tinygen's functions"):
            compiled, f = run(True)
    finally:
        HOST_RNG = None
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (4, 0)


@pytest.mark.parametrize("update", ["in place", "new array"])
def test_a_parameter_updated_by_array_code_inside_a_step_is_refused(update):
    """docs/internals.md's manual update, ``p.data -= lr * p.grad.data``, inside a compiled step: array code the
    recording does not see, so a replay would leave the parameters as they are. The recording finds the changed
    values and raises; with an optimizer, clipping and a scheduler in the step it does not."""
    model, _, _ = _mlp_setup()

    def manual(x, y):
        F.cross_entropy(model(x), y).backward()
        for p in model.parameters():
            if update == "in place":
                p.data -= 0.1 * p.grad.data
            else:
                p.data = p.data - 0.1 * p.grad.data
            p.grad = None
    _refused(manual, "changed the values of a parameter of shape (16, 12) of the Sequential in the variable "
                     "'model' of the enclosing function", line=False)

    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    sched = tg.optim.lr_scheduler.StepLR(opt, step_size=2)

    def with_optimizer(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        nn.utils.clip_grad_value_(model.parameters(), 0.5)
        opt.step()
        sched.step()
        opt.zero_grad()
        return loss
    f = tg.compile(with_optimizer)
    for x, y in _batches(3):
        f(x, y)
    assert (f.records, f.replays) == (1, 2)


@pytest.mark.parametrize("when", ["after", "before"])
def test_array_code_on_parameters_an_optimizer_also_updates_is_refused(when):
    """The optimizer's step may write the parameters, but array code before or after it in the same step (WGAN's
    weight clipping through ``.data``) is still array code: each recorded write is checked to start from what the
    recorded code last left and the step to end with what the last one left."""
    model, opt, step = _mlp_setup()

    def clip(model):
        for p in model.parameters():
            np.clip(p.data, -0.01, 0.01, out=p.data)

    def clipped(x, y):
        if when == "before":
            clip(model)
        loss = step(x, y)
        if when == "after":
            clip(model)
        return loss
    _refused(clipped, "changed the values of a parameter of shape (16, 12) of the Sequential in the variable "
                      "'model' of the enclosing function", line=False)


def test_an_ema_model_updated_by_array_code_inside_a_step_is_refused():
    """An EMA copy of the model updated through ``.data`` (no op uses its parameters): the recording compares the
    values of the modules the step's code reaches before and after the call, and names the one that changed."""
    model, opt, step = _mlp_setup()
    ema = copy.deepcopy(model)

    def with_ema(x, y):
        loss = step(x, y)
        for average, p in zip(ema.parameters(), model.parameters()):
            average.data *= 0.99
            average.data += 0.01 * p.data
        return loss
    _refused(with_ema, "a parameter of shape (16, 12) of the Sequential in the variable 'ema'", line=False)


@pytest.mark.parametrize("made", ["optimizer", "scheduler"])
def test_an_optimizer_or_scheduler_made_inside_a_step_is_refused(made):
    """Eager makes a new one on every call (momentum from zero, a fresh step count); a replay would keep calling
    the one made when recording."""
    model, opt, _ = _mlp_setup()

    def step(x, y):
        F.cross_entropy(model(x), y).backward()
        if made == "optimizer":
            tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
        else:
            opt.step()
            tg.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5).step()
        opt.zero_grad()
    name = "SGD whose step" if made == "optimizer" else "StepLR whose step"
    _refused(step, f"the step makes the {name}() it calls; a replay would call the one made", line=False)


@pytest.mark.parametrize("where", ["global", "trainer attribute"])
def test_an_optimizer_replaced_between_calls_records_anew(where):
    """Switching optimizers between calls (``opt = SGD(...)`` after some epochs of Adam, or ``self.opt = ...``): the
    recorded call steps the optimizer the recording found, so a replay would go on stepping the old one, silently.
    A place that held an object a recorded call takes (an optimizer, a scheduler) and holds another now records
    anew."""
    global _SWITCHED_OPT

    class Trainer:
        def __init__(self, model, opt):
            self.model, self.opt = model, opt

        def step(self, x, y):
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return loss

    def global_step(x, y):
        loss = F.cross_entropy(trainer.model(x), y)
        _SWITCHED_OPT.zero_grad()
        loss.backward()
        _SWITCHED_OPT.step()
        return loss
    runs = []
    for compiled in (False, True):
        model, opt, _ = _mlp_setup()
        trainer, _SWITCHED_OPT = Trainer(model, opt), opt
        step = trainer.step if where == "trainer attribute" else global_step
        f = tg.compile(step) if compiled else step
        out = []
        for k, (x, y) in enumerate(_batches(6)):
            if k == 3:
                trainer.opt = _SWITCHED_OPT = tg.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
            out.append(f(x, y).data.copy())
        runs.append(out + _params(model))
    assert _same(*runs) and (f.records, f.replays) == (2, 4)


_SWITCHED_OPT = None  # the optimizer the step above steps, switched between calls


def test_a_module_made_inside_a_step_runs_eagerly_and_the_warning_says_so():
    """A layer made inside the step (``nn.Linear(3, 4)(x)``) has new parameters on every eager call; its attributes,
    set as it is made, are Python a replay would not run, so each call runs as eager does. The warning names the
    module made, not one of its attributes as if the step changed a module it found."""
    def run(compiled):
        tg.manual_seed(0)

        def step(x):
            return nn.Linear(3, 4)(x).sum()
        f = tg.compile(step) if compiled else step
        x = tg.ones(2, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = [f(x).data.copy() for _ in range(3)]
        return out, f, [str(w.message) for w in caught]
    eager, _, _ = run(False)
    compiled, f, said = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (3, 0)
    assert len(said) == 1 and "changes a Linear it makes" in said[0] and "outside the step" in said[0]


def test_another_threads_tinygen_work_while_a_step_records_is_not_recorded():
    """A data loader's or an evaluation's thread runs tinygen ops while the step records: they are not the
    step's, so they stay out of its program (and their results are not released with its intermediates)."""
    model, opt, step = _mlp_setup()
    other = nn.Linear(7, 3)
    finished, out = queue.SimpleQueue(), []

    def worker():  # one piece of work, while the step is being recorded
        while CAPTURE.recorder is None:
            time.sleep(1e-4)
        with tg.no_grad():
            out.append(other(tg.ones(2, 7)).sum(1) * 2)
        finished.put(True)
    thread = threading.Thread(target=worker)
    thread.start()

    def with_a_thread(x, y):
        finished.get()  # the recording waits for the other thread's work
        return step(x, y)
    f = tg.compile(with_a_thread)
    losses = [f(x, y).data.copy() for x, y in _batches(3)]
    thread.join()
    with tg.no_grad():
        assert np.array_equal(out[0].data, (other(tg.ones(2, 7)).sum(1) * 2).data)
    assert "(2, 7)" not in f.explain() and (f.records, f.replays) == (1, 2)
    _, _, eager_step = _mlp_setup()
    assert _same(losses, [eager_step(x, y).data for x, y in _batches(3)])


def test_seeded_numpy_generators_and_tinygens_draws_inside_a_step_are_fine():
    model, opt, step = _mlp_setup()

    def with_draws(x, y):
        jitter = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)  # the same every call
        worker = threading.Thread(target=np.random.rand)  # another thread (a data loader's) draws meanwhile
        worker.start()
        worker.join()
        return step(x + tg.tensor(jitter) * tg.rand(1), y)
    f = tg.compile(with_draws)
    before = np.random.get_state()[1].copy()
    for x, y in _batches(3):
        f(x, y)
    assert (f.records, f.replays) == (1, 2)
    assert not np.array_equal(np.random.get_state()[1], before)  # the thread drew when the step was recorded


def _refused(step, phrase, line=True):
    """The first call of the compiled ``step`` (on an MLP batch) raises CompileError with ``phrase`` and, with
    ``line``, this file's line (a refusal made after the recorded call names the tensor or object instead)."""
    x, y = _batches(1)[0]
    with pytest.raises(tg.CompileError) as e:
        tg.compile(step)(x, y)
    assert phrase in str(e.value) and (not line or "test_compile.py" in str(e.value)), str(e.value)


# Ops whose result depends on values in a way that is not arithmetic on their inputs (a mask, an index): each must be
# computed again on every replay, not replayed as the constant it was when recorded.
VALUE_DEPENDENT = {
    "where on a comparison": lambda x, i: tg.where(x > 0, x, x * 0.1).sum(),
    "logical ops": lambda x, i: (((x > 0) & (x < 1)) | ~(x > -1)).float() * x,
    "eq ne le ge lt": lambda x, i: x * ((x >= 0.5) != (x <= -0.5)) + (x.lt(0) == x.gt(0.2)).float(),
    "argmax argmin": lambda x, i: x.argmax(1) * 10 + x.argmin(0).sum() + x.argmax(),
    "max min along a dim": lambda x, i: x.max(1).values.sum() + x.min(0, keepdim=True).values.sum() * x.max(
        0).indices.float().sum(),
    "index tensor": lambda x, i: x[i] * 2,
    "index tuple with a tensor": lambda x, i: x[1:, i.reshape(-1)[:2]] * 2,
    "index_select": lambda x, i: x.index_select(0, i) * 2,
    "gather": lambda x, i: x.gather(1, i.unsqueeze(1)) * 2,
    "take_along_dim": lambda x, i: tg.take_along_dim(x, x.argmax(1, keepdim=True), 1) * 2,
    "an index from argmax": lambda x, i: x[tg.arange(4), x.argmax(1)].sum() * x.gather(1, x.argmin(1, keepdim=True)),
    "nansum": lambda x, i: tg.nansum(tg.log(x)) * 1,
    "norm of order 0": lambda x, i: tg.norm(tg.relu(x), 0) * 1,
    "a value clamped, its gradient kept": lambda x, i: F.cosine_similarity(x, tg.relu(x)) * 1,
    "gaussian_nll_loss's clamped variance": lambda x, i: F.gaussian_nll_loss(x, x * 0.5, tg.relu(x) * 0.1) * 1,
}


@pytest.mark.parametrize("name", list(VALUE_DEPENDENT))
def test_value_dependent_ops_are_computed_again_on_every_replay(name):
    fn = VALUE_DEPENDENT[name]
    w = tg.zeros(4, 3, requires_grad=True)  # a parameter: the gradients through these ops are replayed too

    def step(x, i):
        out = fn(x + w, i)
        if out.requires_grad:
            (out * 1.5).sum().backward()
        return out
    f = tg.compile(step)
    rng = np.random.default_rng(0)
    for k in range(4):
        x = tg.tensor(rng.standard_normal((4, 3)).astype(np.float32))
        i = tg.tensor(rng.integers(0, 3, 4))
        with np.errstate(invalid="ignore", divide="ignore"):
            w.grad = None
            got = f(x, i).data
            grad, w.grad = None if w.grad is None else w.grad.data.copy(), None
            want = step(x, i).data
        assert np.array_equal(got, want, equal_nan=True), (name, k, got, want)
        if grad is not None:
            assert np.array_equal(grad, w.grad.data, equal_nan=True), (name, k)
    assert f.records == 1 and f.replays == 3


def test_a_boolean_mask_index_is_refused_when_it_may_change_and_kept_when_constant():
    f = tg.compile(lambda x: x[x > 0] * 2)
    with pytest.raises(tg.CompileError, match="boolean mask") as e:
        f(tg.randn(5))
    assert "test_compile.py" in str(e.value)
    mask = tg.tensor([True, False, True, True, False])  # a constant of the step: its shape never changes
    g = tg.compile(lambda x: x[mask] * 2)
    for _ in range(3):
        x = tg.randn(5)
        assert np.array_equal(g(x).data, x.data[mask.data] * 2)


def test_a_gradient_the_steps_backward_made_is_refused_as_an_operand():
    model, opt, _ = _mlp_setup()

    def step(x, y):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        norm = sum((p.grad ** 2).sum() for p in model.parameters())  # a new .grad on every replay: stale here
        opt.step()
        return norm
    _refused(step, "its own backward made")


def test_a_gradient_the_steps_backward_made_is_refused_as_a_later_backwards_gradient():
    """``out.backward(w.grad)`` after a backward into w: a replay would pass the recorded gradient (it replayed
    0, 0, 0 for inputs 0, 1, 2 where eager gives 0, 2, 4 before it was refused)."""
    w, v = tg.ones(3, requires_grad=True), tg.ones(3, requires_grad=True)

    def step(x, y):
        w.grad = v.grad = None
        (w * x[0, :3]).sum().backward()
        out = v * 2
        out.backward(w.grad)
        return out
    _refused(step, "its own backward made")


@pytest.mark.parametrize("zero", ["set to None", "zero_grad(set_to_none=True)"])
def test_a_gradient_from_before_the_call_is_refused_as_an_operand_when_the_step_replaces_it(zero):
    """``p.grad`` read at the step's start is the last call's gradient; a replay would use this call's tensor
    (it passed unrefused and replayed a stale value before)."""
    model, opt, _ = _mlp_setup()
    x, y = _batches(1)[0]
    F.cross_entropy(model(x), y).backward()  # a gradient to read on the first call

    def step(x, y):
        norm = sum((p.grad ** 2).sum() for p in model.parameters())
        loss = F.cross_entropy(model(x), y)
        if zero == "set to None":
            for p in model.parameters():
                p.grad = None
        elif zero.startswith("zero_grad"):
            opt.zero_grad()
        loss.backward()
        opt.step()
        return norm
    _refused(step, "that it read at")


def test_a_gradient_from_before_the_call_is_refused_as_a_backwards_gradient():
    """``y.backward(w.grad)`` with the last call's gradient, replaced in the step: a replay would pass this call's
    tensor to every backward (it replayed 6, 6, 6 where eager gives 6, 12, 24 before it was refused)."""
    w = tg.ones(3, requires_grad=True)
    (w * 3).sum().backward()

    def step(x, y):
        g = w.grad
        out = w * 2
        w.grad = None
        out.backward(g)
        return out
    _refused(step, "that it read at")


@pytest.mark.parametrize("zero", [True, False], ids=["zero_grad(set_to_none=False)", "accumulated"])
def test_a_gradient_from_before_the_call_kept_in_place_is_read_anew_on_every_replay(zero):
    """zero_grad(set_to_none=False) keeps the .grad tensors and fills them with zeros, and a backward adds into
    them: the step's read of them before that is of the leaf's own gradient on every call, as in eager."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Linear(6, 3)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)
        (model(tg.ones(2, 6)) ** 2).mean().backward()

        def step(x):
            norm = (model.weight.grad * model.weight.grad).sum()
            loss = (model(x) ** 2).mean()
            if zero:
                opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            return loss, norm
        f = tg.compile(step) if compiled else step
        tg.manual_seed(1)
        out = [[t.data.copy() for t in f(tg.rand(8, 6))] + [model.weight.data.copy()] for _ in range(5)]
        return out, f
    eager, _ = run(False)
    replayed, f = run(True)
    assert f.records == 1 and f.replays == 4
    assert all(np.array_equal(a, b) for e, c in zip(eager, replayed) for a, b in zip(e, c))


@pytest.mark.parametrize("where", ["before backward", "after the update"])
def test_setting_grad_to_none_inside_a_step_is_replayed(where):
    """Would fail if ``p.grad = None`` in the step's code were not recorded: the replays would accumulate each
    gradient into the one before (the grads came out twice as large after an eager call in between)."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Linear(6, 3)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)

        def step(x):
            if where == "before backward":
                for p in model.parameters():
                    p.grad = None
            loss = (model(x) * x[:, :3]).sum()
            loss.backward()
            opt.step()
            if where == "after the update":
                model.weight.grad = None
            return loss
        f = tg.compile(step) if compiled else step
        out = []
        for i, (x, _) in enumerate(_batches(5)):
            out.append(f(x[:, :6]).data.copy())
            if i == 2:
                step(x[:, :6])  # an eager call in between leaves its own gradients
            out += [p.data.copy() for p in model.parameters()]
            out.append(None if model.weight.grad is None else model.weight.grad.data.copy())
        return out, f
    (want, _), (got, f) = run(False), run(True)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(want, got))
    assert f.replays == 4 and "set       .grad = None on a tensor of shape (3, 6)" in f.explain()


def test_setting_grad_to_a_tensor_the_step_computes_is_refused_and_to_a_constant_is_replayed():
    w = tg.randn(3, requires_grad=True)
    _refused(lambda x, y: setattr(w, "grad", x * 2), "sets a .grad to a tensor it computes")
    _refused(lambda x, y: setattr(w, "grad", x), "sets a .grad to a tensor it computes or takes as an argument")
    zeros = tg.zeros(3)

    def step(x):
        w.grad = zeros
        (w * x).sum().backward()
        return w.grad
    f = tg.compile(step)
    for k in range(3):
        zeros.data[...] = k  # the same constant tensor, set again by each replay
        assert np.array_equal(f(tg.ones(3) * 2).data, np.full(3, 2.0 + k, np.float32))


def test_in_place_writes_outside_the_ops_are_replayed_setitem_and_init_fills():
    """Would fail if ``t[i] = v`` or an ``nn.init`` fill inside the step were not recorded: both write an array in
    place, outside any op, so a replay would return the intermediate without the write and leave the buffer as the
    recording left it."""
    def run(compiled):
        tg.manual_seed(0)
        lin, buf = nn.Linear(4, 3), tg.zeros(2, 3)

        def step(x):
            y = x * 2
            y[0] = 5.0  # an intermediate the replay computes anew
            y[1, :2] = x[2, :2]
            nn.init.uniform_(buf, -1, 1)  # a buffer, from the random stream
            nn.init.kaiming_uniform_(lin.weight, a=5 ** 0.5)  # through uniform_
            return (lin(y) + buf.sum()).detach()
        f = tg.compile(step) if compiled else step
        rng = np.random.default_rng(0)
        out = []
        for _ in range(4):
            out.append(f(tg.tensor(rng.standard_normal((5, 4)).astype(np.float32))).data.copy())
            out += [buf.data.copy(), lin.weight.data.copy()]
        return out, f
    (want, _), (got, f) = run(False), run(True)
    assert all(np.array_equal(a, b) for a, b in zip(want, got)) and f.replays == 3


def test_seeding_inside_a_step_is_replayed():
    """Would fail if manual_seed / set_rng_state in the step were not recorded: the replays' draws would go on
    from the stream instead of starting again from the seed (or the state)."""
    state = tg.random.get_rng_state()

    def step(x):
        tg.manual_seed(5)
        a = x * tg.randn(3)
        tg.random.set_rng_state(state)
        return a + tg.rand(3)
    f = tg.compile(step)
    want = step(tg.ones(3)).data
    assert all(np.array_equal(f(tg.ones(3)).data, want) for _ in range(3)) and f.replays == 2


def test_a_state_dict_copied_rates_set_and_running_stats_reset_inside_a_step_are_replayed():
    """Would fail if load_state_dict, optim.set_lr or reset_running_stats inside the step were not recorded: each
    writes arrays or a dict outside any op."""
    def run(compiled):
        tg.manual_seed(0)
        model, copy_, bn = nn.Linear(4, 3), nn.Linear(4, 3), nn.BatchNorm1d(3)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)

        def step(x):
            tg.optim.set_lr(opt.param_groups[0], 0.05)
            opt.zero_grad()
            bn.reset_running_stats()
            loss = bn(model(x)).pow(2).sum()
            loss.backward()
            opt.step()
            copy_.load_state_dict(model.state_dict())
            return loss
        f = tg.compile(step) if compiled else step
        rng = np.random.default_rng(0)
        out = []
        for i in range(4):
            opt.param_groups[0]["lr"] = 1.0  # changed between calls: the step sets it back
            bn.running_mean.data[...] = 7.0
            bn.num_batches_tracked.data[...] = 9
            out.append(f(tg.tensor(rng.standard_normal((5, 4)).astype(np.float32))).data.copy())
            out += [p.data.copy() for p in copy_.parameters()] + [bn.running_mean.data.copy()]
            out.append(bn.num_batches_tracked.data.copy())
        return out
    assert all(np.array_equal(a, b) for a, b in zip(run(False), run(True)))


def test_a_tensor_argument_that_requires_grad_gets_its_gradient_on_every_replay():
    """An argument that requires grad, a leaf or made by ops outside: the backward after the call delivers its
    gradient, on every replay into that call's argument (before, such an argument was refused)."""
    f = tg.compile(lambda a: (a * a).sum())
    for _ in range(3):
        a = tg.randn(3, requires_grad=True)
        f(a).backward()
        assert np.array_equal(a.grad.data, a.data + a.data)
        b = a * 3
        f(b).backward()
        assert np.array_equal(a.grad.data, a.data + a.data + (b.data + b.data) * np.float32(3))
    assert (f.records, f.replays) == (1, 5)


class _Holder:
    """An object whose methods the recording reads (as it reads the step's helpers), and what they read."""

    def __init__(self, counter):
        self.counter = counter

    def bump(self):
        self.counter.weight.data += 1

    def layer(self):
        return self.counter


def _hidden_array_code(counter):
    """A step that changes ``counter``'s weight by array code, the layer held four lists deep, so that no place the
    recording looks at holds it (``guards.places`` goes ``CONFIG_DEPTH``, 3, levels into what the code names): it
    does not compare it, and a replay does not repeat it."""
    box = [[[[counter]]]]

    def hidden(x):
        box[0][0][0][0].weight.data += 1
        return (box[0][0][0][0](x) * 1).sum().detach()
    return hidden


def test_check_compares_replays_with_eager_and_catches_untracked_array_code():
    model, opt, step = _mlp_setup()
    f = tg.compile(step, check=3)
    for x, y in _batches(5):
        f(x, y)  # ordinary steps agree
    counter = nn.Linear(2, 2)

    def sneaky(x):
        counter.weight.data += 1  # array code on .data: invisible to the recorder, so not replayed
        return (counter(x) * 1).sum()
    with pytest.raises(tg.CompileError, match="changed the values of a parameter"):
        tg.compile(sneaky)(tg.randn(1, 2))  # a module the step's code names: its values are compared at once

    holder = _Holder(counter)
    with pytest.raises(tg.CompileError, match="parameter of shape \\(2, 2\\) of the Linear in the attribute "
                                              "'counter' of the _Holder whose _Holder.bump reads it"):
        tg.compile(lambda x: (holder.bump(), (holder.layer()(x) * 1).sum())[1])(tg.randn(1, 2))  # another object

    g = tg.compile(_hidden_array_code(counter), check=True)  # the same where the recording does not look: check=
    g(tg.randn(1, 2))
    with pytest.raises(tg.CompileError, match="differs from eager"):
        g(tg.randn(1, 2))


def test_check_on_cuda_compares_device_arrays_and_restores_the_devices_generator(device):
    """check= on "cuda": the step's arrays, gradients and optimizer state are device arrays, compared on the host,
    and a draw from the device's generator is drawn the same for eager and the replay; array code is caught."""
    tg.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1)).to(device)
    opt = tg.optim.Adam(net.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = (net(x + tg.randn(5, 4, device=device)) * 0.5 + 1.0).sum()
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step, check=3)
    for _ in range(4):
        f(tg.randn(5, 4, device=device))
    assert f.replays == 3
    g = tg.compile(_hidden_array_code(nn.Linear(2, 2).to(device)), check=True)
    g(tg.randn(1, 2, device=device))
    with pytest.raises(tg.CompileError, match="differs from eager"):
        g(tg.randn(1, 2, device=device))


def test_check_restores_the_rank_stream_too():
    # dropout under DistributedDataParallel draws from the rank stream: check= must give eager and the replay the
    # same draws from it, or it reports a mismatch that is not there
    from tinygen.random import rank_stream
    tg.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    opt = tg.optim.SGD(net.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        with rank_stream():
            loss = net(x).sum()
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step, check=3)
    for _ in range(4):
        f(tg.randn(5, 4))
    assert f.replays == 3


def test_cache_keeps_at_most_cache_size_programs_and_warns_once_when_it_drops_one():
    f = tg.compile(lambda a: a * 2, cache_size=2)
    with pytest.warns(RuntimeWarning) as caught:
        for n in (1, 2, 3, 1):
            f(tg.ones(n))
    assert f.records == 4 and len(f._programs) == 2
    assert len(caught) == 1 and "Argument 0 was a tensor of shape (2,), dtype float32 on cpu, then a tensor of " \
        "shape (3,)" in str(caught[0].message) and "raise cache_size" in str(caught[0].message)
    with pytest.raises(ValueError, match="cache_size"):
        tg.compile(lambda a: a, cache_size=0)


def test_torch_compiles_mode_and_disable_options():
    """``mode`` as in ``torch.compile``: the CUDA-graph switch (nothing else differs here); a mode against an
    explicit ``cuda_graph`` and an unknown mode raise; ``disable=True`` gives the function back. The options carry
    over to a compiled method's instances and to a deep copy."""
    def f(a):
        return a * 2
    assert tg.compile(f).cuda_graph is None and tg.compile(f, mode="default").cuda_graph is None
    assert tg.compile(f, mode="reduce-overhead").cuda_graph is True
    assert tg.compile(f, mode="max-autotune").cuda_graph is True
    assert tg.compile(f, mode="max-autotune-no-cudagraphs").cuda_graph is False
    assert tg.compile(f, mode="default", cuda_graph=False).cuda_graph is False
    assert tg.compile(f, mode="reduce-overhead", cuda_graph=True).cuda_graph is True
    with pytest.raises(ValueError, match=r"mode='reduce-overhead' turns CUDA graphs on, but cuda_graph=False"):
        tg.compile(f, mode="reduce-overhead", cuda_graph=False)
    with pytest.raises(ValueError, match=r"unknown mode 'fast'; expected one of \['default', 'max-autotune'"):
        tg.compile(f, mode="fast")
    assert tg.compile(f, disable=True) is f and tg.compile(disable=True)(f) is f
    decorated = tg.compile(mode="max-autotune-no-cudagraphs", fullgraph=True)(f)
    assert decorated.cuda_graph is False and decorated.fullgraph is True

    class Trainer:
        @tg.compile(fullgraph=True, mode="reduce-overhead")
        def step(self, a):
            return a + 1
    bound = Trainer().step
    assert isinstance(bound, Compiled) and bound.fullgraph and bound.cuda_graph
    twin = copy.deepcopy(decorated)
    assert twin.fullgraph is True and twin.cuda_graph is False and twin is not decorated


def test_fullgraph_raises_where_a_call_would_run_eagerly_and_replays_otherwise():
    """``fullgraph=True``: each way a call runs eagerly instead of replaying raises ``CompileError`` naming it (a
    step changing Python state on every call, a forward building a gradient graph it returns, a compiled forward
    called while the results of its last calls await their backward); a step that replays is unaffected. Would
    fail with the warnings (the default) in place of the errors."""
    model, opt, _ = _mlp_setup()
    x = tg.tensor(np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32))

    def step(x):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss
    fast = tg.compile(step, fullgraph=True)
    for _ in range(3):
        fast(x)
    assert (fast.records, fast.replays) == (1, 2)

    seen = []

    def keeps(x):
        seen.append(1)
        return x * 2
    f = tg.compile(keeps, fullgraph=True)
    f(x)  # the first change may be a one-time one (a lazy setting)
    with pytest.raises(tg.CompileError, match=r"keeps runs each call eagerly and records: it changes the contents of "
                                           r"the variable 'seen' .* in its Python on every call.*fullgraph=True"):
        f(x)

    def penalty(x):
        out = model(x)
        g, = tg.autograd.grad(out.sum(), [model[0].weight], create_graph=True)
        return out, (g * g).sum()
    with pytest.raises(tg.CompileError, match=r"penalty runs each call with grad on eagerly: it returns a tensor with "
                                           r"a graph .*fullgraph=True"):
        tg.compile(penalty, fullgraph=True)(x)

    forward = tg.compile(model, fullgraph=True)
    kept = [forward(x) for _ in range(1 + SPARES)]  # its program and the spares
    with pytest.raises(tg.CompileError, match=r"Sequential runs a call eagerly: earlier calls' results await their "
                                           r"backward and no spare program"):
        forward(x)
    del kept
    forward(x)
    assert forward.records == 1 + SPARES and forward.replays == 1


def test_a_python_number_that_changes_every_call_is_named_and_a_0d_tensor_replays():
    scaled = tg.compile(lambda x, beta: x * beta)
    with pytest.warns(RuntimeWarning, match=r"Argument 1 was float 0\.7.*, then float 0\.8: pass a number that "
                                            r"changes between calls as a 0-d tensor"):
        for i in range(10):
            assert np.allclose(scaled(tg.ones(3), 0.1 * i).data, 0.1 * i)
    assert scaled.records == 10 and scaled.replays == 0
    held = tg.compile(lambda x, beta: x * beta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # signatures within the cache, or the same one: no warning
        for i in range(10):
            assert np.allclose(held(tg.ones(3), tg.tensor(0.1 * i)).data, np.float32(0.1 * i))
            scaled(tg.ones(3), 0.8)
    assert held.records == 1 and held.replays == 9


def test_results_are_fresh_tensors_on_the_replayed_values():
    w = tg.tensor([2.0])
    f = tg.compile(lambda a: (a * w, 3, a))  # an argument returned as it is: not released with the intermediates
    r1, k, a1 = f(tg.tensor([1.0]))
    r2, _, a2 = f(tg.tensor([5.0]))
    assert k == 3 and r1.item() == 2.0 and r2.item() == 10.0 and (a1.item(), a2.item()) == (1.0, 5.0)


def test_a_compiled_module_keeps_its_name_and_attributes_and_replays_inference():
    """``tinygen.compile(model)``, as PyTorch users write it: named after the module's class in explain() and the
    warnings, ``parameters()``/``eval()`` are the module's, and calls under no_grad replay the module's forward."""
    model, _, _ = _mlp_setup()
    compiled = tg.compile(model)
    assert compiled.__name__ == "Sequential" and compiled.fn is model
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()]
    compiled.eval()
    assert not model.training and not compiled.training  # read through, never a stale copy
    x = tg.tensor(np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32))
    with tg.no_grad():
        outs = [compiled(x) for _ in range(3)]
        eager = model(x)
    assert compiled.records == 1 and compiled.replays == 2
    assert all(np.array_equal(o.data, eager.data) for o in outs)
    assert compiled.explain().startswith("Sequential: 1 program(s), 1 recorded, 2 replayed")
    assert repr(compiled) == f"Compiled({model!r})" and "Linear" in repr(compiled)
    with pytest.raises(AttributeError, match="no_such_thing"):
        compiled.no_such_thing


def test_compile_as_a_method_decorator_binds_each_instance():
    """``@tinygen.compile`` on a method, as PyTorch users put ``@torch.compile`` on ``training_step``: each
    instance gets its compiled bound method (its own programs; ``self.beta`` part of its signature)."""
    class Trainer:
        def __init__(self, seed):
            self.model, self.opt, self.step_fn = _mlp_setup()
            self.beta = 1.0

        @tg.compile
        def step(self, x, y):
            return self.step_fn(x, y) * self.beta

    a, b = Trainer(0), Trainer(1)
    assert isinstance(Trainer.step, tg.compile(lambda: None).__class__) and a.step is a.step
    data = _batches(4)
    losses = [a.step(x, y).data.copy() for x, y in data]
    b.beta = 2.0
    doubled = [b.step(x, y).data.copy() for x, y in data[:2]]
    b.beta = 1.0
    _, _, eager = _mlp_setup()
    want = [eager(x, y).data for x, y in data]
    assert _same(losses, want) and _same(doubled, [2 * w for w in want[:2]])
    assert (a.step.records, a.step.replays) == (1, 3) and b.step.records == 1
    b.step(*data[2])  # another beta: its own program
    assert b.step.records == 2 and Trainer.step.records == 0

    class Later(Trainer):
        pass
    Later.step = tg.compile(Trainer.step.fn)  # set on the class afterwards: the same, one program per instance
    c = Later(2)
    for x, y in data:
        c.step(x, y)
    assert c.step is c.step and (c.step.records, c.step.replays) == (1, 3)


def test_compile_as_a_method_decorator_on_a_class_with_slots_says_where_to_keep_it():
    """An instance without a ``__dict__`` has nowhere to keep its compiled method: a new one on every access would
    record on every call, slower than eager, silently (before). Raises TypeError, as functools.cached_property
    does, saying what to do; with '__dict__' in the slots it is kept."""
    class Slotted:
        __slots__ = ("step_fn",)

        def __init__(self):
            self.step_fn = _mlp_setup()[2]

        @tg.compile
        def step(self, x, y):
            return self.step_fn(x, y)

    class WithDict(Slotted):
        __slots__ = ("__dict__",)
    with pytest.raises(TypeError, match="has no __dict__ .* compile it once for the instance"):
        Slotted().step
    trainer = WithDict()
    for x, y in _batches(3):
        trainer.step(x, y)
    assert trainer.step is trainer.step and (trainer.step.records, trainer.step.replays) == (1, 2)


def test_a_compiled_forward_with_a_backward_after_the_call_trains_as_eager():
    """A compiled model's forward run with grad on, the backward after the call (``loss =
    F.cross_entropy(fast(x), y); loss.backward()``), also when the loss has a graph of its own beside it: its
    parameters get eager's gradients, and the calls after the first replay, without a warning (before, every call
    ran eagerly and warned; before that, the replays returned tensors without a graph: that backward raised, or
    left the model's gradients out silently). Under no_grad it replays too; other signatures record their own
    programs (tests/test_compile_forward.py has the rest)."""
    def train(compiled):
        model, opt, step = _mlp_setup()
        extra = nn.Linear(12, 5)
        fast = tg.compile(model) if compiled else model
        out = []
        for x, y in _batches(4):
            loss = F.cross_entropy(fast(x) + extra(x), y)  # a graph beside the model's
            opt.zero_grad()
            loss.backward()
            opt.step()
            out += [loss.data.copy()] + [p.grad.data.copy() for p in model.parameters()]
        return out, model, fast, step
    want, _, _, _ = train(False)
    x, y = _batches(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, model, fast, step = train(True)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(want, got))
        assert (fast.records, fast.replays) == (1, 3)
        assert "run eagerly" not in fast.explain()
        trained = tg.compile(step)
        trained(x, y), trained(x, y)
        with tg.no_grad():
            fast(x), fast(x)
        for batch in (3, 3, 5):  # other signatures with grad on
            assert fast(tg.randn(batch, 12)).grad_fn is not None
    assert (trained.replays, fast.replays, fast.records) == (1, 5, 4)


def test_a_step_that_returns_a_gradient_it_then_drops_is_refused():
    """A .grad the step's backward made and the step then set to None (zero_grad at the end) or replaced (a second
    backward) is no leaf's .grad after the call: a replay makes it anew, so the result would hold a stale one."""
    model = nn.Linear(3, 2)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)

    def dropped(x):
        loss = model(x).sum()
        opt.zero_grad()
        loss.backward()
        grad = model.weight.grad
        opt.step()
        opt.zero_grad()
        return loss, grad

    def replaced(x):
        opt.zero_grad()
        model(x).sum().backward()
        grad = model.weight.grad
        model.weight.grad = None
        (model(x) * 2).sum().backward()
        opt.step()
        return grad
    for step in (dropped, replaced):
        with pytest.raises(tg.CompileError, match=r"returns the .grad of a tensor of shape \(2, 3\) that its "
                                                  r"backward made and that the step then replaced or set to None"):
            tg.compile(step)(tg.randn(4, 3))


@pytest.mark.parametrize("returned, named", [
    (lambda model, loss: loss.data, r"the array \(.data\) of a tensor it computes, of shape \(\)"),
    (lambda model, loss: [loss, {"g": model.weight.grad.data}], r"the array \(.data\) of a .grad its backward made, "
                                                                 r"of shape \(2, 3\)")], ids=["loss.data", "grad.data"])
def test_a_step_that_returns_the_array_of_a_tensor_a_replay_fills_anew_is_refused(returned, named):
    """``return loss.data``: a replay puts new arrays into the step's tensors (and makes new .grads), so the result
    would hold the recorded call's array on every replay (before, it did, silently). A parameter's array, written
    in place, is returned as eager returns it."""
    model = nn.Linear(3, 2)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)

    def step(x, give):
        loss = model(x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return give(model, loss)
    with pytest.raises(tg.CompileError, match=named + ".*Return the tensor"):
        tg.compile(step)(tg.randn(4, 3), returned)
    f = tg.compile(step)
    weight_array = lambda model, loss: model.weight.data  # noqa: E731 - (one function: part of the signature)
    for _ in range(3):
        assert f(tg.randn(4, 3), weight_array) is model.weight.data
    assert f.replays == 2


def test_an_ema_model_updated_under_no_grad_inside_the_step_replays_as_eager():
    """An average model's parameters written in place under no_grad after the optimizer step (``pe[...] = pe * d +
    p * (1 - d)``): the assignment is a recorded call, so every replay writes again, bitwise as eager."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        ema = copy.deepcopy(model)
        opt = tg.optim.Adam(model.parameters(), lr=0.01)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with tg.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe[...] = pe * 0.9 + p * 0.1
            return loss
        f = tg.compile(step) if compiled else step
        tg.manual_seed(1)
        out = [f(tg.randn(8, 4), tg.randint(0, 3, (8,))).data.copy() for _ in range(5)]
        return out + [p.data.copy() for p in ema.parameters()], f
    (want, _), (got, f) = run(False), run(True)
    assert all(np.array_equal(a, b) for a, b in zip(want, got)) and f.replays == 4


def test_a_step_that_returns_a_graph_its_backward_did_not_go_through_hands_it_on():
    """A discriminator's step that returns the generator's images with their graph (its backward went through
    their detached copy), then the generator's loss and backward after the call: the images' graph must reach the
    generator, and it does on replays too (``recording.HandedGraph``). Would fail with the images replayed without
    a graph: the generator got no gradient, silently, since the generator's loss has a graph through the
    discriminator. The loss, whose graph the step's backward went through, comes back without one, as from a
    step that returns only it."""
    def run(compiled):
        tg.manual_seed(0)
        gen = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
        dis = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
        opt_g, opt_d = tg.optim.Adam(gen.parameters(), lr=1e-2), tg.optim.Adam(dis.parameters(), lr=1e-2)
        ones, zeros = tg.ones(8, 1), tg.zeros(8, 1)

        def d_step(z, real):
            fake = gen(z)
            loss = F.binary_cross_entropy_with_logits(dis(real), ones) + \
                F.binary_cross_entropy_with_logits(dis(fake.detach()), zeros)
            opt_d.zero_grad()
            loss.backward()
            opt_d.step()
            return loss, fake
        f = tg.compile(d_step) if compiled else d_step
        tg.manual_seed(1)
        out = []
        for _ in range(4):
            loss_d, fake = f(tg.randn(8, 4), tg.randn(8, 6))
            loss_g = F.binary_cross_entropy_with_logits(dis(fake), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            out += [loss_d.data.copy(), loss_g.data.copy()] + [p.data.copy() for p in gen.parameters()]
        return out, f
    want, _ = run(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, f = run(True)
    assert all(np.array_equal(a, b) for a, b in zip(want, got)) and (f.records, f.replays) == (1, 3)
    loss_d, fake = f(tg.randn(8, 4), tg.randn(8, 6))
    assert loss_d.grad_fn is None and fake.grad_fn is not None


def test_a_step_that_returns_a_parameter_its_gradient_or_its_input_returns_them_as_eager_does():
    """A step's result may hold tensors the step did not make: a parameter, the .grad its backward made, a tensor
    argument. Eager returns those objects; so does every compiled call, and the .grad is the one the call made (a
    tensor the step made, returned twice, is one tensor too).
    Would fail with each returned as a new tensor on the recorded array: the gradient stayed the recorded call's
    on every replay (zero_grad(set_to_none=True) makes a new one each step), and a parameter came back without
    requires_grad."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x):
            loss = (model(x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"weight": model[0].weight, "grads": [p.grad for p in model.parameters()], "x": x, "loss": loss,
                    "again": loss}
        f = tg.compile(step) if compiled else step
        tg.manual_seed(1)
        out = []
        for _ in range(4):
            x = tg.randn(5, 4)
            r = f(x)
            assert r["weight"] is model[0].weight and r["x"] is x and r["again"] is r["loss"]
            assert all(g is p.grad for g, p in zip(r["grads"], model.parameters()))
            out += [r["loss"].data.copy()] + [g.data.copy() for g in r["grads"]]
        return out, f
    (want, _), (got, f) = run(False), run(True)
    assert all(np.array_equal(a, b) for a, b in zip(want, got)) and f.replays == 3


class _Batch:
    def __init__(self, x, y):
        self.x, self.y = x, y


_GLOBAL_X = None


def test_a_tensor_rebound_between_calls_where_the_step_finds_it_is_refused():
    """A replay uses the tensors the recorded call read. One the step found in a global, a closure variable, its
    object's attribute or an argument's attribute, rebound to another tensor between calls, would be replayed
    stale: the call raises, naming where it was found; unchanged, it replays."""
    global _GLOBAL_X
    model, _, step = _mlp_setup()
    (x, y), (x2, y2) = _batches(2)

    def by_attribute(batch):
        return step(batch.x, batch.y)
    f = tg.compile(by_attribute)
    batch = _Batch(x, y)
    first = f(batch).item()
    assert f(batch).item() != first and f.replays == 1  # the same tensors: replayed (the model has learned)
    batch.x = x2
    with pytest.raises(tg.CompileError, match=r"the attribute 'x' of argument 0 \(_Batch\)"):
        f(batch)

    _GLOBAL_X = x

    def by_global():
        return step(_GLOBAL_X, y)
    g = tg.compile(by_global)
    g(), g()
    _GLOBAL_X = x2
    with pytest.raises(tg.CompileError, match="the global '_GLOBAL_X'"):
        g()

    held = x

    def by_closure():
        return step(held, y)
    h = tg.compile(by_closure)
    h(), h()
    held = x2  # noqa: F841 - read by by_closure
    with pytest.raises(tg.CompileError, match="the variable 'held' of the enclosing function"):
        h()

    class Trainer:
        def __init__(self):
            self.x = x

        def step(self):
            return step(self.x, y)
    trainer = Trainer()
    k = tg.compile(trainer.step)
    k(), k()
    trainer.x = x2
    with pytest.raises(tg.CompileError, match="the attribute 'x' of the step's object \\(Trainer\\)"):
        k()

    held_list = [x]
    m = tg.compile(lambda: step(held_list[0], y))
    m(), m()
    held_list[0] = x2
    with pytest.raises(tg.CompileError, match="item 0 of the variable 'held_list'"):
        m()


def test_a_module_the_step_called_replaced_where_the_step_finds_it_is_refused():
    """The replay runs the recorded module's ops: pointing the step's ``self.model`` at another model must not
    replay the old one."""
    class Classifier:
        def __init__(self):
            self.model, _, _ = _mlp_setup()

        def loss(self, x, y):
            return F.cross_entropy(self.model(x), y)
    c = Classifier()
    f = tg.compile(c.loss)
    (x, y), = _batches(1)
    with tg.no_grad():
        f(x, y), f(x, y)
        c.model = _mlp_setup()[0]
        with pytest.raises(tg.CompileError, match="the attribute 'model' of the step's object \\(Classifier\\)"):
            f(x, y)


_WEIGHT = 1.0


def _changed_between_calls(loss_of, change, calls, make=None):
    """The losses and parameters of an eager and a compiled run of a training step of ``make()``'s model and
    optimizer (default ``_mlp_setup``'s) whose loss is ``loss_of(model, x, y)``, with ``change(k)`` called before
    call k (k = 0 puts back what a run changed), and the compiled function."""
    runs = []
    for compiled in (False, True):
        model, opt = make() if make is not None else _mlp_setup()[:2]

        def step(x, y):
            loss = loss_of(model, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        f = tg.compile(step) if compiled else step
        out = []
        for k, (x, y) in enumerate(_batches(calls)):
            change(k)
            out.append(f(x, y).data.copy())
        runs.append(out + _params(model))
    return runs[0], runs[1], f


def _weighted_runs(make_step, set_weight, weights):
    """Losses of eager and compiled runs of ``make_step()``'s step while ``set_weight`` sets the Python number
    it reads before each call, and the compiled function."""
    runs = []
    for compiled in (False, True):
        step = make_step()
        f = tg.compile(step) if compiled else step
        runs.append([(set_weight(w), f(x, y).item())[1] for w, (x, y) in zip(weights, _batches(len(weights)))])
    return runs[0], runs[1], f


KL_WEIGHT = 1.0  # read by a helper function of the step below, not by the step's own code
LOSSES = []  # appended to by that helper


def _weighted(loss):
    LOSSES.append(loss.detach())
    return loss * KL_WEIGHT


@pytest.mark.parametrize("where", ["method", "helper function"])
def test_what_the_steps_helpers_read_and_change_is_seen(where):
    """A trainer's ``self.loss(...)`` reading ``self.beta``, a helper function reading a global weight: the code
    of the user's helpers the step calls by name is read too, so a new weight records anew (a replay would keep
    the old one), and a list a helper appends to makes each call run its Python."""
    global KL_WEIGHT

    class Trainer:
        def __init__(self):
            self.model, self.opt, _ = _mlp_setup()
            self.beta = 1.0

        def loss(self, x, y):
            return F.cross_entropy(self.model(x), y) * self.beta

        def step(self, x, y):
            self.opt.zero_grad()
            loss = self.loss(x, y) if where == "method" else _weighted(F.cross_entropy(self.model(x), y))
            loss.backward()
            self.opt.step()
            return loss

    def run(compiled):
        global KL_WEIGHT
        KL_WEIGHT = 1.0
        LOSSES.clear()
        trainer = Trainer()
        f = tg.compile(trainer.step) if compiled else trainer.step
        losses = []
        for k, (x, y) in enumerate(_batches(4)):
            if k == 2:
                trainer.beta = KL_WEIGHT = 3.0
            losses.append(f(x, y).data.copy())
        return losses + _params(trainer.model), f, len(LOSSES)
    try:
        eager, _, appended = run(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the helper's list: Python on every call
            compiled, f, appended_compiled = run(True)
    finally:
        KL_WEIGHT = 1.0
    assert _same(eager, compiled) and appended == appended_compiled == (0 if where == "method" else 4)
    assert f.records == (2 if where == "method" else 4)


def _loss_v1(out, y):
    return F.cross_entropy(out, y)


def _loss_v2(out, y):
    return (out * out).mean()


LOSS_FN = _loss_v1  # the step's helper, rebound below as a notebook cell that redefines it would


class _LossesV1:
    @staticmethod
    def loss(out, y):
        return _loss_v1(out, y)


class _LossesV2:
    @staticmethod
    def loss(out, y):
        return _loss_v2(out, y)


LOSSES_CLASS = _LossesV1


@pytest.mark.parametrize("where", ["global function", "closure variable", "object attribute", "global class",
                                   "method patched onto the class", "module forward patched onto the class",
                                   "decorated method patched onto the class", "function code replaced",
                                   "method code replaced"])
def test_code_the_step_calls_redefined_between_calls_runs_as_redefined(where):
    """A helper the step calls, redefined between calls (a notebook cell run again, ``self.loss_fn = ...``,
    ``Trainer.loss = ...``, ``Block.forward = ...``), is part of the signature by identity: the call after it
    records anew with the new code, as eager runs it, and the old function again replays the old program. (A
    replay of the old program would be silently wrong.)"""
    global LOSS_FN, LOSSES_CLASS

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _mlp_setup()[0]

        def forward(self, x):
            return self.inner(x)
    forward_v1 = Block.forward

    def forward_v2(self, x):
        return self.inner(x) * 2.0

    class Trainer:
        def __init__(self):
            self.loss_fn = _loss_v1

        def loss(self, out, y):
            return _loss_v1(out, y)

        @tg.enable_grad()  # (tinygen's wrapper around the user's method)
        def decorated_loss(self, out, y):
            return _loss_v1(out, y)
    loss_v1, decorated_v1 = Trainer.loss, Trainer.decorated_loss

    def loss_v2(self, out, y):  # (the same names read as loss_v1: only its code tells them apart)
        return _loss_v1(out, y) * 2.0
    loss_v1_code = types.FunctionType(loss_v1.__code__, loss_v1.__globals__)
    decorated_v2 = tg.enable_grad()(loss_v2)
    trainer = Trainer()
    loss_fn = _loss_v1 if where != "function code replaced" else types.FunctionType(
        _loss_v1.__code__, _loss_v1.__globals__)  # (a copy whose code the test replaces)

    def loss_of(model, x, y):
        out = model(x)
        if where == "global function":
            return LOSS_FN(out, y)
        if where in ("closure variable", "function code replaced"):
            return loss_fn(out, y)
        if where == "object attribute":
            return trainer.loss_fn(out, y)
        if where == "global class":
            return LOSSES_CLASS.loss(out, y)
        if where == "decorated method patched onto the class":
            return trainer.decorated_loss(out, y)
        return trainer.loss(out, y)

    def change(k):
        global LOSS_FN, LOSSES_CLASS
        nonlocal loss_fn
        v2 = k in (2, 3)  # redefined, then back: only the place the step reads
        if where == "global function":
            LOSS_FN = _loss_v2 if v2 else _loss_v1
        elif where == "closure variable":
            loss_fn = _loss_v2 if v2 else _loss_v1
        elif where == "object attribute":
            trainer.loss_fn = _loss_v2 if v2 else _loss_v1
        elif where == "global class":
            LOSSES_CLASS = _LossesV2 if v2 else _LossesV1
        elif where == "method patched onto the class":
            Trainer.loss = loss_v2 if v2 else loss_v1
        elif where == "module forward patched onto the class":
            Block.forward = forward_v2 if v2 else forward_v1
        elif where == "decorated method patched onto the class":
            Trainer.decorated_loss = decorated_v2 if v2 else decorated_v1
        elif where == "function code replaced":  # as IPython's autoreload updates the functions it has
            loss_fn.__code__ = (_loss_v2 if v2 else _loss_v1).__code__
        else:
            loss_v1.__code__ = (loss_v2 if v2 else loss_v1_code).__code__

    def make():
        model = Block()
        return model, tg.optim.Adam(model.parameters(), lr=1e-2)
    try:
        eager, compiled, f = _changed_between_calls(loss_of, change, 6, make)
    finally:
        LOSS_FN, LOSSES_CLASS = _loss_v1, _LossesV1
        Trainer.loss, Block.forward, loss_v1.__code__ = loss_v1, forward_v1, loss_v1_code.__code__
        Trainer.decorated_loss = decorated_v1
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (2, 4)


def test_what_a_module_of_the_users_holds_is_read(tmp_path, monkeypatch):
    """A helper called through a module of the user's (``import losses``; ``losses.weighted(loss)``) is read as a
    helper named directly is: a number it reads from its module, one the step reads as ``losses.W``, and the helper
    itself (the module reloaded with new code) are part of the signature. Before, all three replayed as recorded."""
    import importlib
    import sys
    name = "user_losses_for_compile_test"
    source = "W = 1.0\nBETA = 1.0\n\n\ndef weighted(loss):\n    return loss * W\n"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    losses = importlib.import_module(name)

    def change(k):
        if k == 0:  # the module as first written
            (tmp_path / f"{name}.py").write_text(source)
            importlib.reload(losses)
        if k == 2:
            losses.W = 3.0  # read by the helper, in its module
        if k == 3:
            losses.BETA = 0.5  # read by the step, through the module
        if k == 4:  # the module edited and reloaded: a new function object
            (tmp_path / f"{name}.py").write_text(source.replace("loss * W", "loss * W * W"))
            importlib.reload(losses)
            losses.W, losses.BETA = 3.0, 0.5
    eager, compiled, f = _changed_between_calls(
        lambda model, x, y: losses.weighted(F.cross_entropy(model(x), y)) * losses.BETA, change, calls=7)
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (4, 3)


HPARAMS = types.SimpleNamespace(beta=1.0)  # read by name strings: getattr(HPARAMS, "beta", 1.0)


def test_an_attribute_read_by_getattr_with_its_name_spelled_out_is_seen():
    """``getattr(args, "beta", 1.0)`` names the attribute in a string, not in the code's names: such strings count
    as names in code that calls getattr or hasattr, so a new value records anew (before, it replayed as recorded)."""
    def change(k):
        HPARAMS.beta = 3.0 if k >= 2 else 1.0
    try:
        eager, compiled, f = _changed_between_calls(
            lambda model, x, y: F.cross_entropy(model(x), y) * getattr(HPARAMS, "beta", 1.0), change, calls=5)
    finally:
        change(0)
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (2, 3)


CONFIG = {"alpha": 1.0}  # read with CONFIG.get("beta", 1.0): "beta" is added between calls


@pytest.mark.parametrize("how", ["dict.get", "hasattr"])
def test_an_item_or_attribute_added_after_the_recording_is_seen(how):
    """``cfg.get("beta", 1.0)`` or ``hasattr(args, "gamma")`` while the key or attribute is missing: it is no place
    of the recording, so its number of items is part of the signature, and adding it records anew (before, the
    recorded default replayed)."""
    def loss_of(model, x, y):
        loss = F.cross_entropy(model(x), y)
        if how == "dict.get":
            return loss * CONFIG.get("beta", 1.0)
        return loss * 2.0 if hasattr(HPARAMS, "gamma") else loss

    def change(k):
        CONFIG.pop("beta", None)
        if hasattr(HPARAMS, "gamma"):
            del HPARAMS.gamma
        if k >= 2:
            CONFIG["beta"], HPARAMS.gamma = 3.0, 1.0
    try:
        eager, compiled, f = _changed_between_calls(loss_of, change, calls=5)
    finally:
        change(0)
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (2, 3)


LOSS_REGISTRY = {"ce": _loss_v1, "l2": _loss_v2}  # looked up with a key the code does not spell out
REGISTRY_KEY = "ce"


def test_a_function_in_a_dict_the_step_indexes_with_a_computed_key_is_seen():
    """A registry of loss functions looked up by a setting (``LOSSES[cfg.loss](out, y)``): the key is not in the
    code, so the item was no named place, and a function put in its place between calls replayed the recorded one.
    The functions a dict the code names holds are part of the signature by identity, whatever their keys."""
    def change(k):
        LOSS_REGISTRY["ce"] = _loss_v2 if k in (2, 3) else _loss_v1
    try:
        eager, compiled, f = _changed_between_calls(
            lambda model, x, y: LOSS_REGISTRY[REGISTRY_KEY](model(x), y), change, calls=6)
    finally:
        change(0)
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (2, 4)


class _Dispatching:
    """A trainer that picks its loss method by name (``getattr(self, "loss_" + self.kind)``)."""

    def __init__(self, model, opt):
        self.model, self.opt, self.kind, self.scale = model, opt, "ce", 1.0

    def loss_ce(self, x, y):
        return F.cross_entropy(self.model(x), y) * self.scale

    def step(self, x, y):
        loss = getattr(self, "loss_" + self.kind)(x, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss


def test_what_a_method_called_through_getattr_with_a_computed_name_reads_is_seen():
    """A method the step calls by a name it computes is no name of its code; in code that calls getattr, every
    method of the step's object is read, so a number such a method reads (``self.scale``) records anew when it
    changes (before, the recorded one replayed)."""
    runs = []
    for compiled in (False, True):
        trainer = _Dispatching(*_mlp_setup()[:2])
        f = tg.compile(trainer.step) if compiled else trainer.step
        out = []
        for k, (x, y) in enumerate(_batches(5)):
            trainer.scale = 3.0 if k >= 2 else 1.0
            out.append(f(x, y).data.copy())
        runs.append(out + _params(trainer.model))
    assert _same(*runs)
    assert (f.records, f.replays) == (2, 3)


MARGIN_SCALE = 1.0  # read by _Margin.__call__
MARGIN_SHIFT = 0.0  # read by _Margin.__init__


class _Margin:
    """A loss object the step makes on every call: what its methods read is part of the signature."""

    def __init__(self, margin):
        self.margin = margin + MARGIN_SHIFT

    def __call__(self, out, y):
        return F.cross_entropy(out * MARGIN_SCALE, y) + self.margin


def test_what_an_object_the_step_makes_reads_is_seen():
    """``_Margin(0.1)(out, y)`` inside the step: the class's ``__init__`` and ``__call__`` run on every call, so the
    globals they read are read as a helper's are (before, a new MARGIN_SCALE replayed the recorded one)."""
    global MARGIN_SCALE, MARGIN_SHIFT

    def change(k):
        global MARGIN_SCALE, MARGIN_SHIFT
        MARGIN_SCALE, MARGIN_SHIFT = (3.0 if k >= 2 else 1.0), (1.0 if k >= 3 else 0.0)
    try:
        eager, compiled, f = _changed_between_calls(lambda model, x, y: _Margin(0.1)(model(x), y), change, calls=5)
    finally:
        MARGIN_SCALE, MARGIN_SHIFT = 1.0, 0.0
    assert _same(eager, compiled)
    assert (f.records, f.replays) == (3, 2)


def test_a_function_made_anew_before_every_call_names_what_changes():
    """A function made anew before every call is a new signature each time: the warning when the cache is full
    says so and what to do."""
    model, opt, _ = _mlp_setup()
    holder = {}

    def step(x, y):
        loss = holder["loss"](model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step, cache_size=2)
    with pytest.warns(RuntimeWarning, match="define the function once, outside the loop"):
        for x, y in _batches(4):
            holder["loss"] = lambda out, target: F.cross_entropy(out, target)
            f(x, y)
    assert f.records == 4


SCALE = 1.0  # read by the forward of _Scaled, a module of the user's


class _Scaled(nn.Module):
    """A user's module whose forward reads a global, a private attribute (which sets no module setting) and a
    class attribute."""
    gain = 1.0

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(12, 5)
        self._k = self._f = 1.0

    @property
    def factor(self):  # a property's getter reads the private attribute
        return self._f

    def forward(self, x):
        return self.layer(x) * SCALE * self._k * self.gain * self.factor


class _WeightedLoss:
    """A loss object (no module) whose ``__call__`` reads its attribute."""

    def __init__(self):
        self.weight = 1.0

    def __call__(self, out, y):
        return F.cross_entropy(out, y) * self.weight

    def weighted(self, out, y):
        return self(out, y)


LOSS_WEIGHT = 1.0  # read by _loss_function only


def _loss_function(out, y):
    return F.cross_entropy(out, y) * LOSS_WEIGHT


class _Config:
    beta = 1.0


def _user_objects_runs(case, compiled):
    """Losses and parameters of 5 steps of a model and loss of the user's, one setting changed before the third."""
    global SCALE, LOSS_WEIGHT
    tg.manual_seed(0)
    net, crit, cfg = nn.Sequential(_Scaled()), _WeightedLoss(), _Config()
    losses = [crit, _WeightedLoss()]
    opt = tg.optim.SGD(net.parameters(), lr=0.1)

    def step(x, y):  # the model and the loss object in closure variables
        opt.zero_grad()
        loss = crit(net(x), y)
        loss.backward()
        opt.step()
        return loss

    def step_with_args(net, x, y, opt, crit, cfg):  # PyTorch users' train_step(model, batch, opt, criterion)
        opt.zero_grad()
        loss = crit(net(x), y) * cfg.beta
        loss.backward()
        opt.step()
        return loss

    def step_with_a_list(x, y):  # a list of loss objects
        opt.zero_grad()
        out = net(x)
        loss = sum(c(out, y) for c in losses)
        loss.backward()
        opt.step()
        return loss
    def step_with_a_loss_function(x, y, loss_fn):  # a function, a partial of one or a bound method
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss
    fn = {"list": step_with_a_list, "arguments": step_with_args}.get(case, step)
    loss_fn = {"function argument": _loss_function, "partial argument": functools.partial(_loss_function),
               "method argument": crit.weighted}.get(case)
    fn = step_with_a_loss_function if loss_fn is not None else fn
    f = tg.compile(fn) if compiled else fn
    result = []
    try:
        for k, (x, y) in enumerate(_batches(5)):
            if k == 2:
                if case == "global":
                    SCALE = 3.0
                elif case in ("function argument", "partial argument"):
                    LOSS_WEIGHT = 3.0
                elif case == "private":
                    net[0]._k = 0.5
                elif case == "property":
                    net[0]._f = 0.5
                elif case == "class attribute":
                    _Scaled.gain = 2.0
                elif case in ("loss object", "list", "method argument"):
                    crit.weight = 2.0
                else:
                    cfg.beta, crit.weight, SCALE = 0.5, 2.0, 3.0
            call = (f(net, x, y, opt, crit, cfg) if case == "arguments" else
                    f(x, y, loss_fn) if loss_fn is not None else f(x, y))
            result.append(call.data.copy())
    finally:
        SCALE = LOSS_WEIGHT = _Scaled.gain = 1.0
    return result + _params(net), f


@pytest.mark.parametrize("case", ["global", "private", "class attribute", "property", "loss object", "list",
                                  "arguments", "function argument", "partial argument", "method argument"])
def test_what_the_users_modules_and_objects_read_is_seen(case):
    """A forward of the user's module reading a global, a private or a class attribute or a property, a loss
    object's ``__call__`` reading its weight, a list of such objects, all of them passed as arguments with a config
    object, and a loss function, a partial of one or a bound method passed as an argument: the recording reads
    their code too, so a new value records anew (before, each replayed the old one)."""
    eager, _ = _user_objects_runs(case, False)
    compiled, f = _user_objects_runs(case, True)
    assert _same(eager, compiled) and (f.records, f.replays) == (2, 3)


def test_a_number_read_out_of_a_numpy_array_is_a_constant_that_check_catches():
    """The documented limit: ``w[0]`` of a NumPy array the caller changes in place is a number the step's Python
    took, a constant of the recording (``h * w``, an op on the array itself, reads it anew and stays equal);
    ``check=`` finds the difference at the first replay after the change."""
    w = np.ones(3, np.float32)
    model, opt, _ = _mlp_setup()

    def step(x, y):
        opt.zero_grad()
        loss = (model(x)[:, :3] * w).pow(2).mean() * w[0]
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step, check=5)
    (x, y), = _batches(1)
    f(x, y), f(x, y)
    w[...] = 3.0
    with pytest.raises(tg.CompileError, match="differs from eager"):
        f(x, y)


class _Tally:
    """An object whose recorded method (``@replayed``: a replay calls it again) keeps counts in a dict it holds."""

    def __init__(self):
        self.seen = {}

    @tg.capture.replayed
    def count(self, t):
        self.seen["calls"] = self.seen.get("calls", 0) + 1


def test_what_a_recorded_call_changes_in_an_argument_it_took_is_no_python_state_change():
    """An argument passed to a recorded call (an optimizer, a tally) may change what it holds: the call does it
    again on every replay. Before, the dict it holds, as an attribute of an argument, counted as Python state the
    step changed, so no program was kept (with SGD's lazily made workspace, when Numba is off)."""
    model, opt, _ = _mlp_setup()

    def step(x, y, opt, tally):
        loss = F.cross_entropy(model(x), y)
        tally.count(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    for start in ({}, {"calls": 0}):  # (a count the recorded call reads is not the step's: it reads it anew)
        f, tally = tg.compile(step), _Tally()
        tally.seen.update(start)
        for x, y in _batches(4):
            f(x, y, opt, tally)
        assert (f.records, f.replays) == (1, 3) and tally.seen == {"calls": 4}


DECORATED_WEIGHT = 1.0  # read by the decorated helpers below


def _own_decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@tg.no_grad()
def _weight_no_grad(h):
    return h.abs().mean() * DECORATED_WEIGHT


@_own_decorator
@tg.enable_grad()
def _weight_twice_decorated(h):
    return h.abs().mean() * DECORATED_WEIGHT


class _Weighing:
    @tg.no_grad()
    def weight(self, h):
        return h.abs().mean() * DECORATED_WEIGHT


@tg.compile
def _weight_compiled(h):
    return h.abs().mean() * DECORATED_WEIGHT


@pytest.mark.parametrize("helper", ["no_grad function", "two decorators", "no_grad method", "compiled function"])
def test_what_a_decorated_helper_reads_is_part_of_the_signature(helper):
    """A helper under a decorator (``@tinygen.no_grad()``, one of the user's own made with ``functools.wraps``,
    ``@tinygen.compile``, which runs it eagerly inside a recording) runs when the step records, as an undecorated
    one does: the function inside the decorator is read, and a number it reads records anew. Before, tinygen's
    wrapper was library code and the function in it was not read: a new weight replayed the recorded one."""
    global DECORATED_WEIGHT
    weigh = {"no_grad function": _weight_no_grad, "two decorators": _weight_twice_decorated,
             "no_grad method": _Weighing().weight, "compiled function": _weight_compiled}[helper]

    def loss_of(model, x, y):
        h = model(x)
        return F.cross_entropy(h, y) * weigh(h.detach())

    def change(k):
        global DECORATED_WEIGHT
        DECORATED_WEIGHT = (1.0, 1.0, 2.0, 2.0, 0.5)[k]
    try:
        eager, compiled, f = _changed_between_calls(loss_of, change, 5)
    finally:
        DECORATED_WEIGHT = 1.0
    assert _same(eager, compiled) and (f.records, f.replays) == (3, 2)


def test_what_a_replayed_function_of_a_script_reads_is_not_part_of_the_signature():
    """A ``@replayed`` function runs anew on every replay, so what it reads is not the step's to guard, also in a
    script, whose functions' module is ``__main__``: its wrapper, made in tinygen, carries that module name. Before,
    the wrapper counted as the user's code there, and a count the function keeps changed the signature on every
    call: each call recorded."""
    seen = {"calls": 0}

    def count(t):
        seen["calls"] += 1
    count.__module__ = "__main__"  # as defined in a script
    count = tg.capture.replayed(count)
    model, opt, _ = _mlp_setup()

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        count(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    step.__module__ = "__main__"
    f = tg.compile(step)
    for x, y in _batches(4):
        f(x, y)
    assert (f.records, f.replays) == (1, 3) and seen == {"calls": 4}


def test_a_namedtuple_batch_and_result():
    """A batch as a namedtuple (a new one on every call, as a data loader's collate makes) replays, and a
    namedtuple result comes back as one; before, rebuilding it for the recording raised a TypeError."""
    import collections
    Batch = collections.namedtuple("Batch", "x y")
    Out = collections.namedtuple("Out", "loss logits")

    def run(compiled):
        model, opt, _ = _mlp_setup()

        def step(batch):
            logits = model(batch.x)
            loss = F.cross_entropy(logits, batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return Out(loss, logits)
        f = tg.compile(step, check=2) if compiled else step
        outs = [f(Batch(x, y)) for x, y in _batches(5)]
        assert all(type(o) is Out for o in outs)
        return [a.data.copy() for o in outs for a in o] + _params(model), f
    eager, _ = run(False)
    compiled, f = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (1, 4)


@dataclasses.dataclass
class _DataBatch:
    x: tg.Tensor
    y: tg.Tensor
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class _FrozenBatch:
    x: tg.Tensor
    y: tg.Tensor
    weight: float = 1.0


@dataclasses.dataclass(slots=True)
class _SlottedBatch:
    x: tg.Tensor
    y: tg.Tensor
    weight: float = 1.0


@dataclasses.dataclass
class _StepOut:
    loss: tg.Tensor
    logits: tg.Tensor
    note: str = "out"


@pytest.mark.parametrize("batch_class", [_DataBatch, _FrozenBatch, _SlottedBatch], ids=["plain", "frozen", "slots"])
def test_a_dataclass_batch_and_result(batch_class):
    """A batch as a dataclass (a new one on every call) is read as a namedtuple is: its tensors are the step's
    inputs, its other fields part of the signature (a new weight records anew). A dataclass result comes back as a
    new one of fresh tensors. Before, each call recorded anew (the batch, a new object, was a new signature), and
    the result held the program's own tensors, whose arrays were released after the call."""
    def run(compiled):
        model, opt, _ = _mlp_setup()

        def step(batch):
            logits = model(batch.x)
            loss = F.cross_entropy(logits, batch.y) * batch.weight
            opt.zero_grad()
            loss.backward()
            opt.step()
            return _StepOut(loss, logits)
        f = tg.compile(step) if compiled else step
        outs = [f(batch_class(x, y, 2.0 if k >= 3 else 1.0)) for k, (x, y) in enumerate(_batches(5))]
        assert all(type(o) is _StepOut and o.note == "out" for o in outs)
        assert len({id(o.loss) for o in outs}) == 5
        return [a.data.copy() for o in outs for a in (o.loss, o.logits)] + _params(model), f
    eager, _ = run(False)
    compiled, f = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (2, 3)


class _Result:
    def __init__(self, loss):
        self.loss = loss


@pytest.mark.parametrize("kind", ["SimpleNamespace", "_Result", "in a list"])
def test_a_result_object_holding_computed_tensors_in_attributes_is_refused(kind):
    """A result whose tensors sit in an object's attributes (not a tuple, list, dict, namedtuple or dataclass) is
    not refilled by a replay: the caller would get the program's own tensors, released after the call. Refused when
    recorded, naming the object and the attribute. Before, reading ``result.loss`` after the call raised."""
    train = _mlp_setup()[2]

    def step(x, y):
        loss = train(x, y)
        if kind == "SimpleNamespace":
            return types.SimpleNamespace(loss=loss, epoch=1)
        return _Result(loss) if kind == "_Result" else [loss, _Result(loss)]
    name = "_Result" if kind != "SimpleNamespace" else "SimpleNamespace"
    _refused(step, f"the step returns a {name} holding a tensor it computes in its attribute 'loss'", line=False)


_LATE = 1.0  # (taken away and set again by the test below)


def test_compiled_module_and_a_global_set_after_compile():
    """``tinygen.compile(model)`` reads the forwards of the model's submodules; a step compiled before the
    global it reads exists (a decorator at the top of a script) finds it when it first records."""
    global SCALE
    model = nn.Sequential(_Scaled(), nn.Tanh())
    f = tg.compile(model)
    x = tg.randn(4, 12)
    try:
        with tg.no_grad():
            first = f(x).data.copy()
            SCALE = 2.0
            assert np.array_equal(f(x).data, model(x).data) and not np.array_equal(first, model(x).data)
        assert f.records == 2
        del globals()["_LATE"]  # as if defined below the compiled step
        g = tg.compile(lambda x: x * _LATE)
        globals()["_LATE"] = 1.0
        g(x), g(x)
        globals()["_LATE"] = 3.0
        assert np.array_equal(g(x).data, x.data * 3) and (g.records, g.replays) == (2, 1)
    finally:
        SCALE = 1.0
        globals()["_LATE"] = 1.0


def test_a_python_number_the_steps_code_reads_is_part_of_its_signature():
    """A number in a global, a closure variable or an attribute of the step's object (a KL weight, an epoch) is
    read by the recording like an argument: another value records anew, a value seen before replays its program,
    and every call equals eager."""
    global _WEIGHT
    weights = [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0]

    def with_global():
        _, _, step = _mlp_setup()
        return lambda x, y: step(x, y) * _WEIGHT

    def set_global(w):
        global _WEIGHT
        _WEIGHT = w
    eager, compiled, f = _weighted_runs(with_global, set_global, weights)
    assert compiled == eager and (f.records, f.replays) == (3, 4)

    box = {}

    def with_closure():
        _, _, step = _mlp_setup()
        weight = 1.0

        def run(x, y):
            return step(x, y) * weight

        def set_weight(w):
            nonlocal weight
            weight = w
        box["set"] = set_weight
        return run
    eager, compiled, f = _weighted_runs(with_closure, lambda w: box["set"](w), weights)
    assert compiled == eager and (f.records, f.replays) == (3, 4)

    class Trainer:
        def __init__(self):
            self.weight, (_, _, self.inner) = 1.0, _mlp_setup()

        def step(self, x, y):
            return self.inner(x, y) * self.weight

    def with_attribute():
        box["trainer"] = Trainer()
        return box["trainer"].step
    eager, compiled, f = _weighted_runs(with_attribute, lambda w: setattr(box["trainer"], "weight", w), weights)
    assert compiled == eager and (f.records, f.replays) == (3, 4)
    _WEIGHT = 1.0

    settings = {"weight": 1.0, "calls": 0}  # a dict the step reads at a key it spells out; "calls" it does not read

    def with_item():
        _, _, step = _mlp_setup()
        return lambda x, y: step(x, y) * settings["weight"]

    def set_item(w):
        settings["weight"] = w
        settings["calls"] += 1
    eager, compiled, f = _weighted_runs(with_item, set_item, weights)
    assert compiled == eager and (f.records, f.replays) == (3, 4)


class _Settings:  # a class of settings of the user's, read as _Settings.weight
    weight = 1.0


_ARGS = types.SimpleNamespace(weight=1.0, epochs=3)  # as argparse's parse_args() gives
_GAINS = (1.0, 0.1)
_WEIGHTS = [1.0, 0.1]  # a list of loss weights, set in place
_LOSS_CFG = types.SimpleNamespace(weights=[1.0, 0.1], gains=(1.0, 0.1))


class _DictConfig:
    """Settings kept in a dict and read as attributes (as Hydra's configs are); a missing one raises KeyError."""

    def __init__(self, **settings):
        self.__dict__["settings"] = settings

    def __getattr__(self, name):
        return self.settings[name]


_CFG = _DictConfig(weight=1.0)


class _AttrDict(dict):
    """A dict read by attribute (as EasyDict and ml_collections' configs are)."""
    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


_HP = _AttrDict(weight=1.0)
_NESTED = {"loss": {"weight": 1.0}, "model": types.SimpleNamespace(loss=types.SimpleNamespace(weight=1.0))}


@pytest.mark.parametrize("where", ["namespace", "class", "object's config", "tuple", "dict-backed config",
                                   "attribute dict", "nested dict", "nested namespace", "list", "config's list",
                                   "config's tuple", "object's list"])
def test_a_number_in_a_config_object_or_a_container_the_step_names_is_part_of_its_signature(where):
    """``args.weight`` (an argparse namespace in a global), ``Settings.weight`` (a class of settings),
    ``self.cfg.weight`` (a trainer's config object), ``GAINS[0]`` (a global tuple set anew), ``cfg.weight`` of a
    config whose ``__getattr__`` reads a dict (and raises KeyError for other names), ``hp.weight`` of a dict read by
    attribute, configs within configs (``cfg["loss"]["weight"]``, ``cfg["model"].loss.weight``), and lists and
    tuples: ``WEIGHTS[0]`` of a global list set in place, ``cfg.weights[0]`` and ``cfg.gains[0]`` of a config
    object, ``self.weights[0]`` of a trainer: into what the step names, as for a dict's item; before, each replayed
    the recorded number. (A list a recorded call reads anew, ``tinygen.tensor(rows)``, holds data: tested below.)"""

    class Trainer:
        def __init__(self):
            self.cfg, (_, _, self.inner) = types.SimpleNamespace(weight=1.0), _mlp_setup()
            self.weights = [1.0, 0.1]

        def step(self, x, y):
            return self.inner(x, y) * self.cfg.weight

        def weighted_step(self, x, y):
            return self.inner(x, y) * self.weights[0]
    box = {}

    def make_step():
        if where in ("object's config", "object's list"):
            box["trainer"] = Trainer()
            return box["trainer"].step if where == "object's config" else box["trainer"].weighted_step
        _, _, step = _mlp_setup()
        return {"namespace": lambda x, y: step(x, y) * _ARGS.weight,
                "class": lambda x, y: step(x, y) * _Settings.weight,
                "tuple": lambda x, y: step(x, y) * _GAINS[0],
                "dict-backed config": lambda x, y: step(x, y) * _CFG.weight,
                "attribute dict": lambda x, y: step(x, y) * _HP.weight,
                "nested dict": lambda x, y: step(x, y) * _NESTED["loss"]["weight"],
                "nested namespace": lambda x, y: step(x, y) * _NESTED["model"].loss.weight,
                "list": lambda x, y: step(x, y) * _WEIGHTS[0],
                "config's list": lambda x, y: step(x, y) * _LOSS_CFG.weights[0],
                "config's tuple": lambda x, y: step(x, y) * _LOSS_CFG.gains[0]}[where]

    def set_weight(w):
        global _GAINS
        _ARGS.weight = _Settings.weight = _CFG.settings["weight"] = _HP.weight = w
        _NESTED["loss"]["weight"] = _NESTED["model"].loss.weight = w
        _GAINS = _LOSS_CFG.gains = (w, 0.1)
        _WEIGHTS[0] = _LOSS_CFG.weights[0] = w
        if "trainer" in box:
            box["trainer"].cfg.weight = box["trainer"].weights[0] = w
    try:
        eager, compiled, f = _weighted_runs(make_step, set_weight, [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0])
    finally:
        set_weight(1.0)
    assert compiled == eager and (f.records, f.replays) == (3, 4)


@pytest.mark.parametrize("form", ["item appended", "numbers made into a tensor", "learning rate returned"])
def test_a_list_the_step_reads_numbers_from_records_anew_when_they_change(form):
    """``weights[-1]`` after the caller appends a weight, ``tinygen.tensor([w[0], w[1]])`` (a list made in the step
    from a list's numbers: the recorded call would read the recorded list), and a step returning its optimizer's
    ``param_groups[0]["lr"]`` while a scheduler outside it lowers the rate: a list's numbers the step's code reads
    are part of the signature, and so is its length. Before, each replayed the recorded numbers."""
    def run(compiled):
        model, opt, step = _mlp_setup()
        sched = tg.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        weights = [1.0, 0.5]

        weighted = {"item appended": lambda x, y: (step(x, y) * weights[-1], 0.0),  # (a function a form: the
                    "numbers made into a tensor": lambda x, y: (step(x, y) * tg.tensor([weights[0], weights[1]]).sum(),
                                                                0.0),  # code of the others is not read)
                    "learning rate returned": lambda x, y: (step(x, y), opt.param_groups[0]["lr"])}[form]
        f = tg.compile(weighted) if compiled else weighted
        out = []
        for i, (x, y) in enumerate(_batches(6)):
            if form == "item appended" and i in (2, 4):
                weights.append(weights[-1] * 0.5)
            elif form == "numbers made into a tensor" and i == 3:
                weights[1] = 2.0
            loss, lr = f(x, y)
            out.append((loss.item(), lr))
            sched.step()
        return out + [tuple(p.data.ravel().tolist()) for p in model.parameters()], f
    eager, _ = run(False)
    compiled, f = run(True)
    assert compiled == eager
    assert (f.records, f.replays) == ((2, 4) if form == "numbers made into a tensor" else (3, 3))


_MILESTONES = {1.0}
_LAST = collections.deque([1.0], maxlen=1)


@pytest.mark.parametrize("where", ["set", "deque", "config's set"])
def test_what_a_set_or_a_deque_the_step_names_holds_is_part_of_its_signature(where):
    """``0.5 in milestones`` of a global set the caller changes, ``last[-1]`` of a deque it appends to, a set of a
    config object: what they hold is part of the signature (settings by value); before, each replayed the branch
    or number recorded."""
    cfg = types.SimpleNamespace(milestones={1.0})

    def make_step():
        _, _, step = _mlp_setup()
        return {"set": lambda x, y: step(x, y) * (2.0 if 0.5 in _MILESTONES else 1.0) * (3.0 if 0.0 in _MILESTONES
                                                                                           else 1.0),
                "deque": lambda x, y: step(x, y) * _LAST[-1],
                "config's set": lambda x, y: step(x, y) * (2.0 if 0.5 in cfg.milestones else 1.0) * (
                    3.0 if 0.0 in cfg.milestones else 1.0)}[where]

    def set_weight(w):
        for held in (_MILESTONES, cfg.milestones):
            held.clear()
            held.add(w)
        _LAST.append(w)
    try:
        eager, compiled, f = _weighted_runs(make_step, set_weight, [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0])
    finally:
        set_weight(1.0)
    assert compiled == eager and (f.records, f.replays) == (3, 4)


@pytest.mark.parametrize("bound", ["keyword", "positional", "nested partials", "partial of a method"])
def test_what_the_arguments_a_partial_binds_hold_is_part_of_the_signature(bound):
    """``tinygen.compile(functools.partial(train_step, model=model, opt=opt, cfg=cfg))``: the config a partial binds
    is an argument of the step, so a number changed in it records anew; before, its arguments were no place the
    recording looked at, and each call replayed the recorded number. The trainer of a partial of a bound method is
    the step's object."""
    class Trainer:
        def __init__(self, cfg):
            self.cfg, (self.model, self.opt, _) = cfg, _mlp_setup()

        def step(self, x, y, scale):
            return _config_step(x, y, self.model, self.opt, self.cfg) * scale

    def make_step():
        cfg = types.SimpleNamespace(weight=1.0)
        box["cfg"] = cfg
        model, opt, _ = _mlp_setup()
        if bound == "keyword":
            return functools.partial(_config_step, model=model, opt=opt, cfg=cfg)
        if bound == "positional":
            return functools.partial(_positional_config_step, cfg, model, opt)
        if bound == "nested partials":
            return functools.partial(functools.partial(_config_step, model=model), opt=opt, cfg=cfg)
        return functools.partial(Trainer(cfg).step, scale=1.0)
    box = {}

    def set_weight(w):
        box["cfg"].weight = w
    eager, compiled, f = _weighted_runs(make_step, set_weight, [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0])
    assert compiled == eager and (f.records, f.replays) == (3, 4)


class _MappingConfig:
    """A config of the user's read by subscript, ``in``, ``len`` and iteration: its special methods read a dict."""

    def __init__(self, weight):
        self._d = {"weight": weight}

    def __getitem__(self, key):
        return self._d[key]

    def __contains__(self, key):
        return self._d.get(key, 0) > 0.75

    def __len__(self):
        return int(self._d["weight"] * 4)

    def __iter__(self):
        return iter((self._d["weight"], 1.0))


@pytest.mark.parametrize("syntax", ["subscript", "in", "len", "iteration"])
def test_what_special_methods_of_the_users_config_read_is_part_of_the_signature(syntax):
    """``cfg["weight"]``, ``"weight" in cfg``, ``len(cfg)`` and ``sum(cfg)`` on a config class of the user's run
    its ``__getitem__``, ``__contains__``, ``__len__`` and ``__iter__`` without naming them; the special methods
    a class of the user's defines are reached as its named methods are, so what they read is part of the
    signature. Before, each replayed the recorded number."""
    cfg = _MappingConfig(1.0)

    def make_step():
        _, _, step = _mlp_setup()
        return {"subscript": lambda x, y: step(x, y) * cfg["weight"],
                "in": lambda x, y: step(x, y) * (2.0 if "weight" in cfg else 1.0),
                "len": lambda x, y: step(x, y) * len(cfg),
                "iteration": lambda x, y: step(x, y) * sum(cfg)}[syntax]

    def set_weight(w):
        cfg._d["weight"] = w
    eager, compiled, f = _weighted_runs(make_step, set_weight, [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0])
    assert compiled == eager and (f.records, f.replays) == (3, 4)


def _config_step(x, y, model, opt, cfg):
    loss = F.cross_entropy(model(x), y) * cfg.weight
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _positional_config_step(cfg, model, opt, x, y):
    return _config_step(x, y, model, opt, cfg)


class _Reduction(enum.Enum):
    SUM = "sum"
    MEAN = "mean"


_REDUCTION = _Reduction.MEAN
_NP_WEIGHT = np.float32(1.0)


def test_an_enum_member_or_a_numpy_scalar_the_step_reads_is_part_of_its_signature():
    """A setting held as an enum member (a reduction mode the step branches on) or as a NumPy scalar (a weight
    computed with NumPy) is compared by value like a Python number: before, both replayed the recorded one."""
    global _REDUCTION, _NP_WEIGHT

    def make_step():
        model, opt, _ = _mlp_setup()

        def step(x, y):
            loss = F.cross_entropy(model(x), y, reduction=_REDUCTION.value) * _NP_WEIGHT
            loss = loss if _REDUCTION is _Reduction.MEAN else loss / 8
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return step

    def set_setting(w):
        global _REDUCTION, _NP_WEIGHT
        _REDUCTION = _Reduction.SUM if w == 0.5 else _Reduction.MEAN
        _NP_WEIGHT = np.float32(w * 2)
    try:
        eager, compiled, f = _weighted_runs(make_step, set_setting, [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0])
    finally:
        _REDUCTION, _NP_WEIGHT = _Reduction.MEAN, np.float32(1.0)
    assert compiled == eager and (f.records, f.replays) == (3, 4)


class _Losses:
    """A class of the user's whose static and class methods the step calls through the class."""
    beta = 1.0

    @staticmethod
    def weighted(loss):
        return loss * _WEIGHT

    @classmethod
    def scaled(cls, loss):
        return loss * cls.beta


@pytest.mark.parametrize("method", ["static", "class"])
def test_what_a_static_or_class_method_reads_is_part_of_the_signature(method):
    """``Losses.weighted(loss)`` reading a global, ``Losses.scaled(loss)`` reading ``cls.beta``: the methods a step
    calls through a class of the user's are read as its helpers are; before, both replayed the recorded weight."""
    def make_step():
        _, _, step = _mlp_setup()
        return lambda x, y: _Losses.weighted(step(x, y)) if method == "static" else _Losses.scaled(step(x, y))

    def set_weight(w):
        global _WEIGHT
        _WEIGHT = _Losses.beta = w
    try:
        eager, compiled, f = _weighted_runs(make_step, set_weight, [1.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.0])
    finally:
        set_weight(1.0)
    assert compiled == eager and (f.records, f.replays) == (3, 4)


def test_a_python_number_that_changes_on_every_call_is_named_in_the_cache_warning():
    global _WEIGHT
    _, _, step = _mlp_setup()
    f = tg.compile(lambda x, y: step(x, y) * _WEIGHT, cache_size=2)
    with pytest.warns(RuntimeWarning, match="The global '_WEIGHT' was 0.25, then 0.5: pass a number that changes"):
        for i, (x, y) in enumerate(_batches(4)):
            _WEIGHT = 0.25 * i
            f(x, y)
    _WEIGHT = 1.0


def test_a_new_argument_object_on_every_call_is_named_in_the_cache_warning():
    model, _, step = _mlp_setup()
    f = tg.compile(lambda batch: step(batch.x, batch.y), cache_size=2)
    with pytest.warns(RuntimeWarning, match="a new object on every call is a new signature: pass the tensors"):
        for x, y in _batches(3):
            f(_Batch(x, y))


@pytest.mark.parametrize("argument", ["list of numbers", "dict with a count", "dataclass field", "NumPy array"])
def test_the_cache_warning_names_the_part_of_an_argument_that_changed(argument):
    """Data passed as a list of numbers, a batch dict whose step count changes, a dataclass batch's field, a new
    NumPy array on every call: the warning names the item that changed, not the whole argument (before: "Argument
    0 was a list of 4, then a list of 4: raise cache_size"), and says to pass data as tensors."""
    model = nn.Linear(4, 2)

    def step(batch):
        with tg.no_grad():
            if argument == "list of numbers":
                return model(tg.tensor(batch).reshape(1, 4))
            if argument == "NumPy array":
                return model(tg.from_numpy(batch))
            return model(batch["x"] if isinstance(batch, dict) else batch.x)
    f = tg.compile(step, cache_size=1)
    x = tg.randn(3, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            f({"list of numbers": [float(i)] * 4, "dict with a count": {"x": x, "step": i},
               "dataclass field": _Counted(x, i), "NumPy array": np.ones((3, 4), np.float32)}[argument])
    said = [str(w.message) for w in caught]
    expected = {"list of numbers": "Item 0 of argument 0 was float 0.0, then float 1.0: the numbers in an "
                                   "argument's lists, tuples and dicts are part of the signature: pass data that "
                                   "changes between calls as tensors",
                "dict with a count": "Item 'step' of argument 0 was int 0, then int 1: the numbers in an argument's",
                "dataclass field": "The field 'seen' of argument 0 was int 0, then int 1: pass a number that",
                "NumPy array": "Argument 0 was another NumPy array at each call (an unhashable object is part of "
                               "the signature by identity): pass the arrays that change between calls as tensors "
                               "(tinygen.from_numpy(array) before the call shares its memory)"}[argument]
    assert len(said) == 1 and expected in said[0], said


def test_one_tensor_passed_twice_is_another_signature_than_two_tensors():
    """Recorded with ``f(x, x)`` the program has one input slot for both; called with two tensors it must not
    replay that program (both arguments would read the second one)."""
    def f(a, b):
        return a * 2 + b
    compiled = tg.compile(f)
    x, a, b = tg.tensor([1.0, 2.0]), tg.tensor([1.0, 1.0]), tg.tensor([10.0, 20.0])
    for args in [(x, x), (a, b), (x, x), (a, b), (b, b)]:
        np.testing.assert_array_equal(compiled(*args).data, f(*args).data)
    assert (compiled.records, compiled.replays) == (2, 3)


def test_a_module_frozen_for_part_of_the_step_is_frozen_on_every_replay():
    # the generator update freezes D: the flag changes are replayed where they happened (after the create_graph
    # call the ops re-read their inputs' flags), and a tensor made inside the step (mix) needs no guard
    def run(compiled):
        (G, D), step = _gan_setup(penalty=True)

        def frozen_step(real):
            d_loss, _ = step(real)
            D.requires_grad_(False)
            g_loss = F.softplus(-D(G(tg.randn(real.shape[0], 4)))).mean()
            g_loss.backward()
            D.requires_grad_(True)
            return d_loss, g_loss
        f = tg.compile(frozen_step, check=2) if compiled else frozen_step
        tg.manual_seed(3)
        outs = [[t.detach().data.copy() for t in f(tg.rand(8, 6))] for _ in range(12)]
        grads = [None if p.grad is None else p.grad.data.copy() for m in (G, D) for p in m.parameters()]
        return outs, _params(G, D), grads, f
    oe, pe, ge, _ = run(False)
    oc, pc, gc, f = run(True)
    assert (f.records, f.replays) == (1, 11)
    assert all(_same(a, b) for a, b in zip(oe, oc)) and _same(pe, pc)
    assert [g is None for g in ge] == [g is None for g in gc] and _same([g for g in ge if g is not None],
                                                                        [g for g in gc if g is not None])


def test_replays_leave_the_callers_tensors_alone():
    model, opt, step = _mlp_setup()
    f = tg.compile(step)
    (x0, y0), (x1, y1) = _batches(2)
    kept = x0.data.copy()
    f(x0, y0)
    f(x1, y1)
    assert np.array_equal(x0.data, kept) and x0.data is not x1.data


def test_an_intermediate_kept_past_the_step_is_released_with_a_clear_error():
    """Kept where the step's code does not look (in a deque: ``guards.places`` goes into lists, tuples, dicts and
    plain objects only): a replay would not store it again, and the recorded one is released. Kept in an
    attribute of an attribute, where it looks, it is Python state the step changes: each call runs as eager, and
    the layer kept is the last call's."""
    model, opt, step = _mlp_setup()
    held = collections.deque([None])
    box = types.SimpleNamespace(inner=types.SimpleNamespace())

    def keeps_a_hidden_layer(x, y):
        held[0] = model[0](x)
        return step(x, y)
    f = tg.compile(keeps_a_hidden_layer)
    x, y = _batches(1)[0]
    f(x, y)
    with pytest.raises(AttributeError, match="intermediate of a compiled step.*return it from the step"):
        held[0].shape

    def keeps_it_where_the_code_looks(x, y):
        box.inner.hidden = model[0](x)
        return step(x, y)
    g = tg.compile(keeps_it_where_the_code_looks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the second call says that each call records)
        for x, y in _batches(3):
            before = model[0](x).data.copy()  # what the step's first layer gives, before its update
            g(x, y)
            assert np.array_equal(box.inner.hidden.data, before)
    assert (g.records, g.replays) == (3, 0)


def test_threads_calling_one_compiled_function_wait_for_each_other():
    """A compiled model served from a thread pool: a replay puts each call's arrays into the program's own tensors
    and releases its intermediates, so two replays at once would read each other's arrays (before: "this tensor is
    an intermediate of a compiled step, released" from another thread's replay, and wrong results). One call at a
    time now; every result equals eager's. (A race: without the lock this test failed in 4 of 5 runs.)"""
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def infer(x):
        with tg.no_grad():
            return model(x).softmax(-1)
    f = tg.compile(infer)
    xs = [tg.randn(32, 64) for _ in range(6)]
    want = [infer(x).data.copy() for x in xs]
    f(xs[0])  # recorded before the threads start (while a step records, other threads' calls run eagerly)
    wrong, errors = [], []

    def serve(k):
        try:
            for r in range(500):
                i = (k + r) % len(xs)
                if not np.array_equal(f(xs[i]).data, want[i]):
                    wrong.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, as under load
    try:
        threads = [threading.Thread(target=serve, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors and not wrong and f.records == 1 and f.replays == 2000


class _CompiledMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    @tg.compile
    def infer(self, x):
        with tg.no_grad():
            return self.fc(x)


def test_a_deep_copy_of_a_model_with_a_compiled_method_compiles_its_own():
    """``copy.deepcopy(model)`` (an EMA twin) of a module whose ``@tinygen.compile`` method it already called: the
    copy's compiled method is the copy's (its parameters, its own programs), and the model's still replays."""
    net, x = _CompiledMethod(), tg.randn(5, 4)
    net.infer(x)
    twin = copy.deepcopy(net)
    twin.fc.weight.data[...] = 0
    assert np.array_equal(twin.infer(x).data, np.broadcast_to(twin.fc.bias.data, (5, 3)))
    assert np.array_equal(net.infer(x).data, net.fc(x).data)
    assert twin.infer is not net.infer and (twin.infer.records, net.infer.records, net.infer.replays) == (1, 1, 1)


def _scaled_forward(x, model, scale):
    return model(x) * scale


@pytest.mark.parametrize("compiled", ["module", "partial"])
def test_a_compiled_functions_warnings_name_it_and_point_at_the_callers_line(compiled):
    """The cache-full warning, and the one for a create_graph backward through a compiled forward's result, name
    the function (a module by its class; a ``functools.partial``, which has no name, by its function's: before,
    naming it raised AttributeError) at the caller's line."""
    model = nn.Linear(3, 2)
    f = tg.compile(model if compiled == "module" else functools.partial(_scaled_forward, model=model, scale=2.0),
                   cache_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (2, 3, 4):
            f(tg.randn(n, 3))
        tg.autograd.grad(f(tg.randn(4, 3)).sum(), model.weight, create_graph=True)
        f(tg.randn(4, 3))
    name = "Linear" if compiled == "module" else "_scaled_forward"
    assert len(caught) == 2 and all(w.filename == __file__ for w in caught)
    assert all(str(w.message).startswith(f"tinygen.compile: {name} ") for w in caught)


@dataclasses.dataclass
class _Counted:
    x: tg.Tensor
    seen: int = 0


@pytest.mark.parametrize("form", ["metrics dict", "batch dict", "list", "dataclass"])
def test_a_step_that_changes_its_arguments_containers_leaves_them_changed_as_eager_does(form):
    """``metrics["loss"] = loss`` into a dict the caller passes to collect results, ``batch["x"] = batch["x"] * 2``,
    ``outputs.append(loss)``, ``batch.seen += 1``: a compiled call gives the step copies of its arguments'
    containers (with the program's own input tensors), so before, the caller's dict, list or dataclass never saw
    the change (and the dataclass's counter replayed as recorded). What the step leaves in a copy is now put into
    the caller's container, its tensors the caller's where they were, and such a call keeps no program: a replay
    would not run that Python, so each call runs as eager, with a warning."""
    def run(compiled):
        model, opt, _ = _mlp_setup()

        def step(batch, out):
            x = batch.x if form == "dataclass" else batch["x"]
            if form == "batch dict":
                batch["x"] = x = x * 2
            loss = F.cross_entropy(model(x), batch["y"] if isinstance(batch, dict) else out["y"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if form == "metrics dict":
                out["loss"] = loss
            elif form == "list":
                out["seen"].append(loss)
            elif form == "dataclass":
                batch.seen += 1
            return loss
        f = tg.compile(step) if compiled else step
        left = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x, y in _batches(3):
                batch = _Counted(x) if form == "dataclass" else {"x": x, "y": y}
                out = {"y": y, "seen": []}
                loss = f(batch, out)
                held = (batch.seen, batch.x is x) if form == "dataclass" else (batch["x"].data.tolist(),
                                                                                 batch["y"] is y)
                left.append((loss.item(), held, sorted(out), [t.item() for t in out["seen"]],
                             out["loss"].item() if "loss" in out else None))
        return left, _params(model), f, [str(w.message) for w in caught if "on every call" in str(w.message)]
    eager, eager_params, _, _ = run(False)
    compiled, params, f, said = run(True)
    assert compiled == eager and _same(eager_params, params) and (f.records, f.replays) == (3, 0)
    where = {"list": "item 'seen' of argument 1", "metrics dict": "argument 1"}.get(form, "argument 0")
    assert len(said) == 1 and f"changes the contents of {where} in its Python on every call" in said[0], said


@pytest.mark.parametrize("where", ["list", "dict", "object", "variable", "default"])
def test_python_state_the_step_changes_where_its_code_looks_records_every_call(where):
    """``history.append(loss)``, ``metrics["loss"] = loss``, ``stats.n += 1``, ``nonlocal last``, a counter in a
    mutable default (``state={"n": 0}``): Python a replay would not run again. Such a call keeps no program (the
    next records again), so the step's Python runs on every call as in eager; a warning names the place the second
    time."""
    def run(compiled):
        model, opt, step = _mlp_setup()
        history, metrics, stats, last = [], {}, types.SimpleNamespace(n=0), None

        def keeps(x, y, state={"n": 0}):  # noqa: B006 - the mutable default is the case
            nonlocal last
            loss = step(x, y)
            if where == "default":
                state["n"] += 1
            elif where == "list":
                history.append(loss.detach())
            elif where == "dict":
                metrics["loss"] = loss.detach()
            elif where == "object":
                stats.n += 1
            else:
                last = loss.detach()
            return loss
        f = tg.compile(keeps) if compiled else keeps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x, y in _batches(4):
                f(x, y)
        kept = ([h.data for h in history] + [t.data for t in metrics.values()] + [np.float64(stats.n)]
                + ([] if last is None else [last.data]) + [np.float64(keeps.__defaults__[0]["n"])])
        return kept + _params(model), f, [str(w.message) for w in caught if "on every call" in str(w.message)]
    eager, _, _ = run(False)
    compiled, f, said = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (4, 0)
    place = {"list": "the contents of the variable 'history' of the enclosing function",
             "dict": "the contents of the variable 'metrics' of the enclosing function",
             "object": "the contents of the variable 'stats' of the enclosing function",
             "variable": "the variable 'last' of the enclosing function",
             "default": "the contents of the default of the parameter 'state' of"}[where]
    assert len(said) == 1 and f"changes {place}" in said[0]


@pytest.mark.parametrize("how", ["decayed", "set around the step", "a schedule in a list of dicts", "scheduler"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_learning_rate_the_steps_python_sets_is_not_replayed_as_recorded(how, optimizer):
    """``for g in opt.param_groups: g["lr"] *= 0.9`` inside the step (a decay written by hand), or a warm-up's
    rate set before ``opt.step()`` and put back after it: a replay would not run that Python, and the optimizer's
    recorded step reads the rate at every replay, so the recorded calls kept the first rate (silently, before).
    Each such call now runs as eager, with a warning that names the param_groups and says to use a scheduler.
    A global schedule (a list of dicts) the step advances is seen too; a scheduler's step is replayed. (Each way is
    a function of its own: a step whose code names ``opt.param_groups`` and reads ``g["lr"]`` has the rates in its
    signature, so a scheduler's rate that changes on every call would record on every call.)"""
    def run(compiled):
        model, _, _ = _mlp_setup()
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd" else \
            tg.optim.Adam(model.parameters(), lr=0.01)
        sched = tg.optim.lr_scheduler.ExponentialLR(opt, 0.9)
        base = opt.param_groups[0]["lr"]
        schedule = [{"step": 0, "warmup": 3}]

        def decayed():
            opt.step()
            for g in opt.param_groups:
                g["lr"] *= 0.9

        def set_around():
            for g in opt.param_groups:
                g["lr"] = base * 0.5
            opt.step()
            for g in opt.param_groups:
                g["lr"] = base

        def advanced():
            opt.step()
            schedule[0]["step"] += 1

        def scheduled():
            opt.step()
            sched.step()
        update = {"decayed": decayed, "set around the step": set_around, "a schedule in a list of dicts": advanced,
                  "scheduler": scheduled}[how]

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            update()
            return loss
        f = tg.compile(step) if compiled else step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = [f(x, y).data.copy() for x, y in _batches(4)]
        return losses + _params(model), opt.param_groups[0]["lr"], f, [str(w.message) for w in caught]
    eager, lr_eager, _, _ = run(False)
    compiled, lr_compiled, f, said = run(True)
    assert _same(eager, compiled) and lr_compiled == lr_eager
    if how == "scheduler":
        assert (f.records, f.replays) == (1, 3)
        return
    assert (f.records, f.replays) == (4, 0)
    every_call = [w for w in said if "on every call" in w]
    assert len(every_call) == 1
    if how == "a schedule in a list of dicts":
        assert "the contents of the variable 'schedule'" in every_call[0]
    else:
        assert "a hyper-parameter in the param_groups of the variable 'opt'" in every_call[0]
        assert "scheduler" in every_call[0]


class _Average:
    """An average of a model's parameters whose update is a recorded call (``@replayed``) reading ``self.decay``."""

    def __init__(self, model, decay):
        self.model, self.decay = model, decay
        self.avg = [p.data.copy() for p in model.parameters()]

    @tg.capture.replayed
    def update(self):
        for a, p in zip(self.avg, self.model.parameters()):
            a *= self.decay
            a += (1 - self.decay) * p.data


@tg.capture.replayed
def _scaled(params, cfg):
    for p in params:
        p.data *= cfg["scale"]


@pytest.mark.parametrize("what", ["an attribute of the call's object", "an item of a dict it takes"])
def test_what_a_recorded_call_reads_set_around_it_by_the_steps_python_is_not_replayed_as_recorded(what):
    """``ema.decay = 0.5; ema.update(); ema.decay = 0.9``, or a dict set before a call that takes it and put back
    after: the call reads the value the step's Python set, which a replay would not set again (the recorded calls
    read the put-back value: silently wrong before). Each such call runs as eager."""
    def run(compiled):
        model, opt, _ = _mlp_setup()
        average, cfg = _Average(model, 0.9), {"scale": 1.0}

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if what == "an attribute of the call's object":
                average.decay = 0.5
                average.update()
                average.decay = 0.9
            else:
                cfg["scale"] = 0.99
                _scaled(list(model.parameters()), cfg)
                cfg["scale"] = 1.0
            return loss
        f = tg.compile(step) if compiled else step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (the second call says that each call records)
            losses = [f(x, y).data.copy() for x, y in _batches(4)]
        return losses + _params(model) + average.avg, f
    eager, _ = run(False)
    compiled, f = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (4, 0)


@pytest.mark.parametrize("source", ["DataLoader", "generator", "list"])
def test_a_step_that_takes_its_batch_from_an_iterator_records_every_call(source):
    """``x, y = next(batches)`` inside the step: a replay would train on the recorded batch again. The iterator's
    position is Python state the step changes, so each call runs as eager (and a warning says to pass batches)."""
    def run(compiled):
        model, opt, step = _mlp_setup()
        data = _batches(4)
        if source == "DataLoader":
            x = np.stack([x.data for x, _ in data]).reshape(32, 12)
            y = np.stack([y.data for _, y in data]).reshape(32)
            batches = iter(tg.data.DataLoader((x, y), batch_size=8))
        elif source == "generator":
            batches = (pair for pair in data)
        else:
            batches = iter(data)

        def pulls():
            x, y = next(batches)
            return step(x, y)
        f = tg.compile(pulls) if compiled else pulls
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = [f().data.copy() for _ in range(4)]
        return losses + _params(model), f, [str(w.message) for w in caught if "on every call" in str(w.message)]
    eager, _, _ = run(False)
    compiled, f, said = run(True)
    assert _same(eager, compiled) and f.replays == 0
    assert len(said) == 1 and "the position of the iterator in the variable 'batches'" in said[0]
    assert "Pass the data the step takes from an iterator as arguments" in said[0]


@pytest.mark.parametrize("made", ["tensor", "as_tensor converting", "tensor of a list", "tensor of lists",
                                  "on the device"])
def test_a_tensor_made_from_a_host_buffer_the_caller_refills_is_made_again_on_replay(made):
    """A replay buffer (RL) or a sensor reading refilled in place between calls, turned into a tensor inside the
    step: a copy made once would train on the first call's values; it is made again from the buffer each replay."""
    def run(compiled):
        tg.manual_seed(0)
        device = "cuda" if made == "on the device" else "cpu"
        model = nn.Linear(4, 3).to(device)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)
        buffer = np.zeros((8, 4), np.float32)
        rows = [0.0] * 4
        halves = [[0.0] * 2, [0.0] * 2]
        made_from = {  # (a function a form: the caller refills what the others name too, and what a step's code
            # names and no recorded call reads, its numbers are settings)
            "tensor": lambda: tg.tensor(buffer),
            "as_tensor converting": lambda: tg.as_tensor(buffer, dtype=tg.float64).float(),
            "tensor of a list": lambda: tg.tensor(rows).reshape(1, 4),
            "tensor of lists": lambda: tg.tensor([halves[0], halves[1]]).reshape(1, 4),  # (a list made in the step)
            "on the device": lambda: tg.tensor(buffer, device="cuda")}[made]

        def step():
            x = made_from()
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            return loss
        f = tg.compile(step) if compiled else step
        rng = np.random.default_rng(0)
        losses = []
        for _ in range(4):
            buffer[...] = rng.standard_normal(buffer.shape)
            rows[:] = buffer[0].tolist()
            halves[0][:], halves[1][:] = buffer[0, :2].tolist(), buffer[0, 2:].tolist()
            losses.append(np.asarray(backend.to_device(f().data, "cpu")))
        return losses, f
    with cuda_standin():
        eager, _ = run(False)
        compiled, f = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (1, 3)


def test_arrays_the_step_makes_for_a_recorded_call_go_with_their_programs():
    """``tinygen.tensor(numpy.full(...))`` inside the step: the array is the step's own, made anew on every eager
    call. A recorded call reads what it takes anew on each replay, so its lists and arrays are learned as data, but
    only those at the step's places (``rows`` here) are kept; before, every recording's array was kept by the
    compiled function after its program had been dropped from the cache."""
    model = nn.Linear(8, 2)
    rows = [0.0] * 8

    def step(x):
        with tg.no_grad():
            return model(x + tg.tensor(np.full(x.shape, 0.5, np.float32))) + tg.tensor(rows).sum()
    f = tg.compile(step, cache_size=2)
    made = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the cache fills: a new shape at every call)
        for n in range(1, 9):
            f(tg.randn(n, 8))
            program = next(reversed(f._programs.values()))
            made += [weakref.ref(a) for a in program.read_anew.values() if isinstance(a, np.ndarray)]
    gc.collect()
    assert f.records == 8 and len(made) == 8
    assert sum(ref() is not None for ref in made) == 2  # the two programs' own, in the cache


@pytest.mark.parametrize("held", ["list", "NumPy array"])
def test_data_the_caller_refills_read_by_the_steps_python_records_every_call_and_says_why(held):
    """A list or a NumPy array of data refilled between calls that the step's Python computes with itself
    (``numpy.array(rows)``, ``scale * 2``): the recorded call would read the recorded result, so its numbers are
    settings, a new signature on every call; the cache-full warning names the list's item or the array and says to
    make the tensor from it inside the step (``tinygen.tensor(rows)``, read anew on every replay)."""
    model, opt, _ = _mlp_setup()
    rows, scale = [0.0] * 5, np.ones(5, np.float32)
    made = {"list": lambda: tg.tensor(np.array(rows, np.float32)), "NumPy array": lambda: tg.tensor(scale * 2)}[held]

    def step(x):
        loss = (model(x) * made()).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step, cache_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, (x, _) in enumerate(_batches(4)):
            rows[:] = [float(i)] * 5
            scale[0] = i
            f(x)
    said = [str(w.message) for w in caught if "cache_size" in str(w.message)]
    assert (f.records, f.replays) == (4, 0) and len(said) == 1
    if held == "list":
        assert "Item 0 of the variable 'rows' of the function enclosing" in said[0] and "was 1.0, then 2.0" in said[0]
        assert "tinygen.tensor(the list), which a replay reads anew" in said[0]
    else:
        assert "The values of the NumPy array in the variable 'scale' of the function enclosing" in said[0]
        assert "tinygen.tensor(the array), which a replay reads anew" in said[0]


@pytest.mark.parametrize("form", ["op on an expression", "tensor of an expression", "number", "NumPy scalar",
                                  "config's array"])
def test_values_the_steps_python_reads_from_a_numpy_array_record_anew_when_they_change(form):
    """RL's done flags refilled in place between calls and used as ``h * (1 - dones)`` or ``tensor(1 - dones)``, a
    weight read as ``float(w[1])`` or ``w[1]``, ``cfg.w[1]`` of a config object: the step's Python computes with
    the array, so a recorded call holds what it computed, a constant. The values of a small NumPy array the step's
    code names are part of the signature (an array a recorded call takes, ``tensor(dones)``, is data: it replays,
    tested above). Before, each replayed the first call's values."""
    def run(compiled):
        tg.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = tg.optim.SGD(model.parameters(), lr=0.01)
        dones, w = np.zeros(6, np.float32), np.array([1.0, 2.0], np.float32)
        cfg = types.SimpleNamespace(w=w)
        weight = {"op on an expression": lambda h: h * (1 - dones),
                  "tensor of an expression": lambda h: h * tg.tensor(1 - dones),
                  "number": lambda h: h * float(w[1]),
                  "NumPy scalar": lambda h: h * w[1],
                  "config's array": lambda h: h * float(cfg.w[1])}[form]

        def step(x):
            opt.zero_grad()
            loss = weight(model(x).reshape(6)).pow(2).sum()
            loss.backward()
            opt.step()
            return loss
        f = tg.compile(step) if compiled else step
        losses = []
        for i, x in enumerate(tg.randn(6, 4) for _ in range(6)):
            if i in (2, 4):
                dones[:] = np.arange(6) % (i + 1) == 0
                w[1] = i + 0.5
            losses.append(f(x).item())
        return losses + _params(model), f
    eager, _ = run(False)
    compiled, f = run(True)
    assert _same(eager, compiled) and (f.records, f.replays) == (3, 3)


@pytest.mark.parametrize("use", ["where", "arithmetic", "indexing"])
def test_a_mask_made_from_a_host_buffer_the_caller_refills_is_made_again_on_replay(use):
    """RL's done flags: a boolean buffer refilled in place between calls, turned into a tensor inside the step.
    Before, the mask stayed the recorded constant; now it is made again on every replay, and where its values
    decide a shape (boolean indexing) they are a guard: a new mask records anew, the same one replays."""
    flags = [[False] * 6, [False] * 6, [True, False] * 3, [True, False] * 3, [False, True] * 3, [True, False] * 3]

    def run(compiled):
        tg.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)
        done = np.zeros(6, bool)
        x = tg.randn(6, 4)

        def step(x):
            opt.zero_grad()
            h = model(x).reshape(6)
            d = tg.tensor(done)
            if use == "where":
                loss = tg.where(d, h * 0, h).pow(2).sum()
            elif use == "arithmetic":
                loss = (h * (1 - d.float())).pow(2).sum()
            else:
                loss = h[d].pow(2).sum()
            loss.backward()
            opt.step()
            return loss
        f = tg.compile(step) if compiled else step
        losses = []
        for row in flags:
            done[...] = row
            losses.append(f(x).data.copy())
        return losses + _params(model), f
    eager, _ = run(False)
    compiled, f = run(True)
    assert _same(eager, compiled)
    assert (f.records, f.replays) == ((1, 5) if use != "indexing" else (4, 2))


def test_a_replay_holds_and_peaks_at_no_more_memory_than_eager():
    import tracemalloc

    def measure(compiled):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Dropout(0.1), nn.Linear(1024, 1024), nn.Tanh(),
                              nn.Linear(1024, 10))
        opt = tg.optim.Adam(model.parameters(), lr=1e-3)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        f = tg.compile(step) if compiled else step
        data = [(tg.randn(256, 256), tg.randint(0, 10, (256,))) for _ in range(4)]
        tracemalloc.start()
        try:
            for x, y in data[:3]:
                f(x, y)
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            f(*data[3])
            return held, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    (held_e, peak_e), (held_c, peak_c) = measure(False), measure(True)
    # activations are 1 MB each; the program's own records (tuples, nodes) are a few kB
    assert held_c <= held_e + 32 * 1024 and peak_c <= peak_e + 32 * 1024, (held_e, held_c, peak_e, peak_c)


def test_a_replayed_call_returning_a_module_buffer_leaves_it_alone():
    from tinygen.capture import replayed
    bn = nn.BatchNorm1d(3)

    @replayed
    def running_mean(module):  # returns a tensor that lives on in the module: not the program's to release
        return module.running_mean

    def step(x):
        noise = tg.randn(3)  # a new tensor: released after its last use
        return (x * running_mean(bn)).sum() + (noise * 0).sum()
    f = tg.compile(step)
    for _ in range(3):
        f(tg.ones(3))
    assert isinstance(bn.running_mean.data, np.ndarray) and np.array_equal(bn.running_mean.data, np.zeros(3))
    assert bn.state_dict()["running_mean"].shape == (3,)


def test_explain_of_the_three_line_example_is_the_listing_in_docs_internals():
    """docs/internals.md section 10 shows explain() of its three-line step: the listing must be what it prints."""
    from pathlib import Path
    tg.manual_seed(0)
    w = tg.randn(3, 2, requires_grad=True)
    opt = tg.optim.Adam([w], lr=0.1)

    def step(x):
        loss = (x @ w).tanh().sum()
        loss.backward()
        opt.step()
        return loss
    fast = tg.compile(step)
    x = tg.randn(4, 3)
    fast(x)
    fast(x)
    text = fast.explain()
    assert len(text.splitlines()) == 11
    assert "```\n" + text + "\n```" in (Path(__file__).parents[1] / "docs" / "internals.md").read_text()


def test_explain_never_stops_a_step_it_cannot_describe():
    class Unnamed(tg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

        def name(self):
            raise RuntimeError("no name")
    w = tg.randn(3, requires_grad=True)

    def step(x):
        y = Unnamed.apply(x * w).sum()
        y.backward()
        return y
    f = tg.compile(step)
    x = tg.randn(3)
    assert float(f(x)) == float(f(x)) and f.replays == 1
    lines = f.explain().splitlines()
    assert lines[2].endswith("forward   Mul -> (3,) float32 cpu")
    assert lines[4].endswith("replay_forward (not described: RuntimeError)")


class _Wrapping:
    """A callable object whose ``__wrapped__`` is another such object (set to wrap each other below)."""

    def __call__(self, t):
        return t * 2.0


def test_callable_objects_that_wrap_each_other_are_read_once_each():
    """Following ``__wrapped__`` from object to object stops: two objects naming each other as what they wrap
    (before, the recording recursed until Python's limit)."""
    a, b = _Wrapping(), _Wrapping()
    a.__wrapped__, b.__wrapped__ = b, a
    f = tg.compile(lambda x: a(x) + 1.0)
    x = tg.ones(3)
    assert np.array_equal(f(x).data, np.full(3, 3.0, np.float32)) and f(x) is not None and f.replays == 1
