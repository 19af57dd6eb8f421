"""tinygen.compile on CuPy through CUDA graphs (tinygen/compile/cuda_graph.py).

The graph tests need a GPU and CuPy (they are skipped without one: a CUDA graph cannot be faked on the CPU); the
split of a program into graph segments and host steps is checked everywhere. Every test's name holds "cuda", so
``benchmarks/gpu_check.sh`` (``-k "device or cuda"``) runs them all.
"""
import contextlib
import sys
import types

import numpy as np
import pytest

import tinygen as tg
from tinygen import backend, kernels, nn, optim
from tinygen.compile import cuda_graph as graphs
from tinygen.compile import passes as compile_passes, steps as compile_steps
from tinygen.autograd import Function
from tinygen.tensor import Tensor
from tinygen.nn import functional as F

ON_GPU = backend.is_available("cuda") and backend.array_module("cuda") is not backend.standin
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU and CuPy (CUDA graphs)")


def _vae_like(device, seed=0):
    tg.manual_seed(seed)
    enc, mu_head, dec = nn.Linear(12, 16), nn.Linear(16, 4), nn.Linear(4, 12)
    for m in (enc, mu_head, dec):
        m.to(device)
    params = [p for m in (enc, mu_head, dec) for p in m.parameters()]
    opt = optim.Adam(params, lr=1e-2)
    x = tg.tensor(np.random.default_rng(1).random((8, 12)).astype(np.float32), device=device)

    def step():
        opt.zero_grad()
        h = enc(x).relu()
        mu = mu_head(h)
        z = mu + tg.randn(8, 4, device=device)
        loss = F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum") + (mu * mu).sum()
        loss.backward()
        opt.step()
        return loss
    return step, params


def test_cuda_graph_explain_names_the_graph_or_host_of_each_step(emulated_cuda):
    step, params = _vae_like("cpu")
    compiled = tg.compile(step, fuse=False)
    compiled(), compiled()
    lines = [line.split(maxsplit=1)[1] for line in compiled.explain().splitlines()[2:]]
    assert [line for line in lines if line.startswith("host")] == ["host     call      randn",
                                                                    "host     call      Adam.step"]
    assert lines[0] == "graph 1  call      Adam.zero_grad"
    assert {line[:8] for line in lines} == {"graph 1 ", "graph 2 ", "host    "}


def test_cuda_graph_split_reported_by_the_gpu_benchmark(emulated_cuda):
    """benchmarks/gpu_throughput.py reports, for a compiled step, its graphs and the host steps between them (what
    the explain() listing marks "host")."""
    from benchmarks import gpu_throughput
    step, params = _vae_like("cpu")
    compiled = tg.compile(step, fuse=False)
    assert gpu_throughput.graph_split(compiled) == {"graphs": 0, "host_steps": []}  # nothing recorded yet
    compiled(), compiled()
    split = gpu_throughput.graph_split(compiled)
    assert split == {"graphs": 2, "host_steps": ["call randn", "call Adam.step"]}
    column = gpu_throughput.Framework("tinygen-compiled", label="tinygen-compiled-cupy", gpu=True)
    row = {"model": "vae", "batch": 64, "results": {"tinygen-compiled": dict(samples_per_s=1e4, ms_per_step=6.4,
                                                                             **split)}}
    text = gpu_throughput.report([row], [column], {}, {}, standin=False)
    assert "- vae, batch 64: 2 graph(s); host: call randn; call Adam.step" in text.splitlines()
    with_graphs_off = tg.compile(_vae_like("cpu")[0], fuse=False, cuda_graph=False)
    with_graphs_off(), with_graphs_off()
    assert gpu_throughput.graph_split(with_graphs_off) == {"graphs": 0, "host_steps": []}


def test_cuda_graph_split_of_a_program_into_segments_and_host_steps():
    step, params = _vae_like("cpu")
    compiled = tg.compile(step, fuse=False)
    compiled()
    program = next(iter(compiled._programs.values()))
    assert program.graphed is None  # NumPy arrays: no graphs
    graphed = graphs.GraphedSteps(program.steps, program.inputs)
    shape = [kind if kind == "segment" else item[0].__name__ for kind, item in graphed.items]
    calls = [item[1][0].__qualname__ for kind, item in graphed.items
             if kind == "host" and item[0] is compile_steps.replay_call]
    # zero_grad and the forward up to the random draw; the draw; the rest with the backward; Adam's step (counting
    # in Python)
    assert calls == ["randn", "Optimizer.step"], calls
    assert shape == ["segment", "replay_call", "segment", "replay_call"], shape
    first, second = [item for kind, item in graphed.items if kind == "segment"]
    assert {id(t) for t in second.delivers} == {id(p) for p in params}  # the backward gives every gradient
    assert not first.delivers
    # the .grads each launch checks: the second graph's backward adds to what it finds (None after the first
    # graph's zero_grad), so all of them
    assert {id(t) for t in second.guarded} == {id(p) for p in params}
    # guarded: the arrays each graph reads (the encoder's parameters before the draw, the decoder's after it; all
    # of them in the first, whose zero_grad sets their .grad)
    assert {id(p) for p in params} <= {id(t) for t in first.leaves}
    assert {id(p) for p in params[4:]} <= {id(t) for t in second.leaves}


STEP, COUNT, ZERO, CLIP = "Optimizer.step", "_BatchNorm._count_batch", "Optimizer.zero_grad", "clip_grad_norm_"


@pytest.mark.parametrize("model,host_calls,graphed_calls", [
    ("mlp-sgd", [], [ZERO, STEP]), ("mlp-sgd-zero-in-place", [ZERO], [STEP]), ("mlp-adam", [STEP], [ZERO]),
    ("mlp-adam-capturable", [], [ZERO, STEP]),
    ("gan-bn", ["randn", STEP, STEP], [ZERO, COUNT, ZERO]),
    ("gan-bn-capturable", ["randn"], [ZERO, COUNT, STEP, ZERO, STEP]),
    ("gan-trainer-like", ["randn"], [ZERO, COUNT, CLIP, STEP, ZERO, CLIP, STEP])])
def test_cuda_graph_split_takes_device_only_calls_into_segments(model, host_calls, graphed_calls):
    """SGD, Adam with capturable=True (its step counts on the device), BatchNorm's batch count and
    zero_grad(set_to_none=True) (Python only: the diff sets the .grads) are captured with the device work around
    them (graph_key). Adam counting on the host, zero_grad filling with zeros and random draws stay host steps:
    the MLP's step is one graph."""
    assert _calls_split(model) == (host_calls, graphed_calls)


def _graphed(step):
    """The split of ``step``'s compiled program (recorded on the CPU) into segments and host steps."""
    compiled = tg.compile(step, fuse=False)
    compiled()
    program = next(iter(compiled._programs.values()))
    return graphs.GraphedSteps(program.steps, program.inputs)


def _calls_split(model):
    """(the recorded calls run on the host, those captured in the graphs) of a CPU model's compiled step."""
    graphed = _graphed(CPU_MODELS[model]()[0])
    calls = [item[1][0].__qualname__ for kind, item in graphed.items
             if kind == "host" and item[0] is compile_steps.replay_call]
    in_graphs = [ops[0].__qualname__ for kind, seg in graphed.items if kind == "segment"
                 for run, ops in seg.steps if run is compile_steps.replay_call]
    return calls, in_graphs


@pytest.mark.parametrize("model,host_calls,graphed_calls", [
    ("vae-like", [STEP], [ZERO, "randn"]), ("gan-bn-capturable", [], ["randn", ZERO, COUNT, STEP, ZERO, STEP]),
    ("gan-trainer-like", [], ["randn", ZERO, COUNT, CLIP, STEP, ZERO, CLIP, STEP])])
def test_cuda_graph_takes_draws_from_a_device_generator_in(emulated_cuda, monkeypatch, model, host_calls,
                                                           graphed_calls):
    """A draw from a generator whose state lives on the device (CuPy's; emulated: NumPy's generator taken for one)
    is captured with the device work around it: each launch draws afresh and moves the state on, as eager does.
    The GAN's step with capturable Adams is then one graph; graphed steps equal plain replays bit for bit."""
    monkeypatch.setattr(tg.random, "_state_on_device", lambda g: True)
    assert _calls_split(model) == (host_calls, graphed_calls)
    plain, plain_params, _ = _run(CPU_MODELS[model], cuda_graph=False)
    result, params, compiled = _run(CPU_MODELS[model], cuda_graph=True)
    assert compiled.graph_error is None and compiled.graph_replays == 7
    assert len(set(result[:, 0])) == len(result)  # a fresh draw each step
    np.testing.assert_array_equal(result, plain)
    for a, b in zip(params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_takes_requires_grad_switches_and_clipping_into_one_graph(monkeypatch):
    """D frozen for G's backward (requires_grad switches: Python only, made again by the diff) and gradient
    clipping (device work) no longer split the graph: with capturable Adams and a device generator, the
    trainer-like GAN step is one graph, then the host steps that only drop arrays."""
    monkeypatch.setattr(tg.random, "_state_on_device", lambda g: True)
    graphed = _graphed(CPU_MODELS["gan-trainer-like"]()[0])
    assert [kind for kind, _ in graphed.items].count("segment") == 1
    assert {item[0].__name__ for kind, item in graphed.items if kind == "host"} <= {"replay_alias",
                                                                                   "replay_release"}


@pytest.mark.parametrize("trainer", ["vae", "vae-conv", "classifier"])
def test_cuda_graph_takes_the_vae_and_classifier_trainers_steps_in_one_graph(monkeypatch, trainer):
    """The VAE trainer's step (its draw, the ELBO, clipping, a capturable Adam) and the classifier's (dropout, a
    capturable Adam), as ``train_utils.optimize_epoch`` runs them: one graph each with a device generator."""
    from tinygen.models import remedies, vae
    from tinygen.models.classifier import MNISTClassifier
    monkeypatch.setattr(tg.random, "_state_on_device", lambda g: True)
    tg.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = tg.tensor(rng.random((8, 784)).astype(np.float32)), tg.tensor(np.arange(8) % 10)
    if trainer == "classifier":
        model = MNISTClassifier(32, 0.2)
        opt = optim.Adam(model.parameters(), lr=1e-3, capturable=True)

        def loss_of():
            return F.cross_entropy(model(x), y)
    else:
        cfg = vae.make_config(arch="conv" if trainer == "vae-conv" else "mlp")
        model = vae.build_model(cfg)
        opt = remedies.make_optimizer(model.parameters(), "adam", 1e-3, clip_grad_norm=1.0, capturable=True)

        def loss_of():
            recon, kl = vae.elbo_terms(model, x, y if cfg["conditional"] else None, None)
            return recon + kl

    def step():
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()
    graphed = _graphed(step)
    assert [kind for kind, _ in graphed.items].count("segment") == 1
    assert {item[0].__name__ for kind, item in graphed.items if kind == "host"} <= {"replay_alias",
                                                                                   "replay_release"}


def _gan_trainer_run(graphs_on, monkeypatch, loss, updates=6, device="cpu", lr_decay="none"):
    """``updates`` updates of the GAN trainer's step (the small conditional DCGAN with ``loss`` and its optimizer,
    clipping, EMA; optimizers and EMA counting on the device), compiled, with graphs (emulated on the CPU) on or
    off: the numbers, weights and EMA weights. ``lr_decay``: "held" sets a new rate before each update into
    float64 0-d tensors the optimizers hold (as the trainer's linear decay on a GPU), "number" as numbers."""
    from tinygen.models import remedies
    from tinygen.models.gan import build_discriminator, build_generator, make_config
    from tinygen.models.gan.trainer import EMA, GANStep
    monkeypatch.setenv("TINYGEN_CUDA_GRAPHS", "1" if graphs_on else "0")
    tg.manual_seed(0)
    cfg = make_config(arch="dcgan", ngf=4, ndf=4, latent=8, clip_grad_norm=1.0, loss=loss)
    G, D = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
    lr = (lambda: tg.tensor(1e-3, dtype=np.float64, device=device)) if lr_decay == "held" else (lambda: 1e-3)
    opt_g, opt_d = (remedies.make_optimizer(net.parameters(), cfg["optimizer"], lr(), cfg["betas"],
                                            clip_grad_norm=1.0, capturable=True) for net in (G, D))
    ema = EMA(G, build_generator(cfg).to(device), 0.9, capturable=True)
    step = GANStep(cfg, G, D, opt_g, opt_d, ema, compile=True)
    rng = np.random.default_rng(0)
    stats = []
    for i in range(updates):
        if lr_decay != "none":
            for group in (*opt_g.param_groups, *opt_d.param_groups):
                optim.set_lr(group, 1e-3 * (1 - i / updates))
        stats.append(step.update(tg.tensor(rng.uniform(-1, 1, (6, 784)).astype(np.float32), device=device),
                                 tg.tensor(np.arange(6) % 10, device=device)))
    weights = [backend.to_device(p.data, "cpu").copy() for net in (G, D, ema.shadow) for p in net.parameters()]
    return stats, weights, step._critic_and_generator, ema


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan"])
def test_cuda_graph_of_the_gan_trainers_step_is_one_graph_equal_to_plain_replays(emulated_cuda, monkeypatch, loss):
    """The GAN trainer's step (critic and generator updates, D frozen for G's backward, gradient norms, clipping,
    capturable Adams or RMSprops, WGAN's weight clipping, the EMA update counting on the device, BatchNorm) with
    a device generator: one graph, whose emulated launches give the plain replays' numbers and weights bit for
    bit, and the EMA's count."""
    monkeypatch.setattr(tg.random, "_state_on_device", lambda g: True)
    plain, plain_weights, plain_compiled, _ = _gan_trainer_run(False, monkeypatch, loss)
    stats, weights, compiled, ema = _gan_trainer_run(True, monkeypatch, loss)
    assert plain_compiled.graph_replays == 0
    assert compiled.graph_error is None and compiled.graph_replays == 5
    program = next(iter(compiled._programs.values()))
    assert [kind for kind, _ in program.graphed.items].count("segment") == 1
    assert {item[0].__name__ for kind, item in program.graphed.items if kind == "host"} <= {"replay_alias",
                                                                                           "replay_release"}
    assert stats == plain
    for a, b in zip(weights, plain_weights):
        np.testing.assert_array_equal(a, b)
    assert ema.updates == 6 and ema.state_dict() == {"updates": 6}


def test_cuda_graph_of_the_gan_trainers_step_takes_a_decaying_learning_rate_held_on_the_device(emulated_cuda,
                                                                                                 monkeypatch):
    """A learning rate set before every update (the trainer's linear decay): held in float64 0-d tensors written
    in place, the step stays one graph whose launches read each new rate (equal to plain replays bit for bit);
    given as numbers, each new rate changes the optimizers' graph keys, so every call captures anew."""
    monkeypatch.setattr(tg.random, "_state_on_device", lambda g: True)
    plain, plain_weights, _, _ = _gan_trainer_run(False, monkeypatch, "nonsaturating", lr_decay="held")
    stats, weights, compiled, _ = _gan_trainer_run(True, monkeypatch, "nonsaturating", lr_decay="held")
    assert compiled.graph_error is None and compiled.graph_replays == 5
    assert stats == plain
    for a, b in zip(weights, plain_weights):
        np.testing.assert_array_equal(a, b)
    numbers, number_weights, recaptured, _ = _gan_trainer_run(True, monkeypatch, "nonsaturating", lr_decay="number")
    # calls 2, 4 and 6 capture; 3 and 5 find new keys and replay plainly (no graph launched after its capture)
    assert recaptured.graph_replays == 3 and numbers == plain
    for a, b in zip(number_weights, plain_weights):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_guards_gradients_a_call_reads_that_a_host_step_made(emulated_cuda):
    """An optimizer step in a graph reads .grads that a host step (a backward with a post-accumulate-grad hook)
    makes anew on every call: the graph would read the arrays of its capture. The step's read (gradient_use)
    guards them, so every launch's guard fails and the step replays plainly, equal to plain replays."""
    def make():
        made = _mlp("cpu", 0)
        made[1][0].register_post_accumulate_grad_hook(lambda p: None)
        return made
    graphed = _graphed(make()[0])
    seg = [item for kind, item in graphed.items if kind == "segment"][-1]
    assert [ops[0].__qualname__ for run, ops in seg.steps if run is compile_steps.replay_call] == [STEP]
    assert len(seg.guarded) == 6  # every parameter's gradient, each made by the host backward
    plain, plain_params, _ = _run(make, cuda_graph=False)
    with pytest.warns(RuntimeWarning, match="replays without CUDA graphs from now on"):
        result, params, compiled = _run(make, cuda_graph=True)
    # calls 2, 4, 6 capture (and launch); 3, 5, 7 find new gradients and replay plainly; then no more captures
    assert compiled.graph_replays == 3 and "guards failed" in compiled.graph_error
    np.testing.assert_array_equal(result, plain)
    for a, b in zip(params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_guards_gradients_an_update_reads_before_the_graph_drops_and_delivers_them(emulated_cuda):
    """A step that updates with the gradients the previous call left, then drops them and runs the backward that
    makes the next call's: the update reads .grads the graph did not make (the capture's came from a plain
    replay, each launch's from the previous launch), so they are guarded though the same graph drops and
    delivers them later: every launch's guard fails and the step replays plainly."""
    plain, plain_params, _ = _run(lambda: _mlp("cpu", 0, update_first=True), cuda_graph=False)
    with pytest.warns(RuntimeWarning, match="replays without CUDA graphs from now on"):
        graphed, graphed_params, compiled = _run(lambda: _mlp("cpu", 0, update_first=True), cuda_graph=True)
    assert compiled.graph_replays == 3  # calls 2, 4, 6 capture; 3, 5, 7 find other gradients; then no captures
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_does_not_guard_a_gradient_the_graph_drops_before_a_call_reads_it(emulated_cuda):
    """A parameter the loss does not use, whose .grad the user sets anew before each call: the step's zero_grad
    drops it before the optimizer reads it, so it is None there on every launch and needs no guard (the graphs
    keep launching)."""
    extra = tg.zeros(3, requires_grad=True)

    def make():
        made = _mlp("cpu", 0)
        made[3].add_param_group({"params": [extra]})
        return made

    def new_grad(i, made):
        extra.grad = tg.ones(3)
    plain, plain_params, _ = _run(make, cuda_graph=False, between=new_grad)
    graphed, graphed_params, compiled = _run(make, cuda_graph=True, between=new_grad)
    assert compiled.graph_error is None and compiled.graph_replays == 7
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)
    assert not extra.data.any()  # never updated: its gradient was dropped first


def _halve_lr_every_third_call(i, made):
    if i and i % 3 == 0:
        made[3].param_groups[0]["lr"] *= 0.5


def test_cuda_graph_captures_again_after_launches_however_often_a_key_changes(emulated_cuda):
    """A learning rate changed every third call (a scheduler's epochs): each change ends the graph's launches for
    one call and the next captures again, with no limit, since each capture paid off; the values are the plain
    replays'."""
    plain, plain_params, _ = _run(lambda: _mlp("cpu", 0), cuda_graph=False, steps=16,
                                  between=_halve_lr_every_third_call)
    graphed, graphed_params, compiled = _run(lambda: _mlp("cpu", 0), cuda_graph=True, steps=16,
                                             between=_halve_lr_every_third_call)
    assert compiled.graph_error is None
    assert compiled.graph_replays == 10  # calls 1-15 less the plain ones at 3, 6, 9, 12, 15
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_takes_only_draws_whose_generator_state_is_on_the_device(monkeypatch):
    """NumPy's generators (the CPU's, the stand-in's) keep their state on the host: a launch would not move it, so
    their draws stay host steps. A CuPy generator's draws may join a graph."""
    fake = type("Generator", (), {"__module__": "cupy.random._generator_api"})()
    assert tg.random._device_draw("cpu") is None
    with backend.cuda_standin():
        assert tg.random._device_draw("cuda") is None
        monkeypatch.setattr(tg.random, "generator", lambda device: fake)
        assert tg.random._device_draw("cuda") == (id(fake),)


def test_cuda_graph_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="cuda_graph must be True, False or None"):
        tg.compile(lambda: None, cuda_graph="yes")


@pytest.mark.parametrize("setting,graphed", [("0", False), ("1", True), ("", True)])
def test_cuda_graph_default_is_the_setting(emulated_cuda, monkeypatch, setting, graphed):
    monkeypatch.setenv("TINYGEN_CUDA_GRAPHS", setting)
    step = _mlp("cpu", 0)[0]
    compiled = tg.compile(step)  # cuda_graph=None: the setting, read when a program is recorded
    for _ in range(3):
        compiled()
    assert compiled.graph_replays == (2 if graphed else 0)


# ---- the bookkeeping around the graphs, on the CPU ----------------------------------------------------------------
class _EmulatedGraph:
    """A CUDA graph's effect, emulated on NumPy, to test what cuda_graph.py does around the graphs: a launch runs
    the segment's steps again on fresh arrays, writes their values into the arrays the capture left (which a real
    graph writes), and sets Python back as it found it (a real graph does nothing in Python). Where a real graph
    reads stale arrays the emulation reads Python's: the guards are tested on the GPU. What a real graph keeps
    from Python, the numbers its kernels were called with, must be what the launch's Python would pass: each
    kernel call's non-array arguments are noted at capture and compared at every launch (``_KernelCalls``)."""

    def __init__(self):
        self.seg, self.launched, self.calls = None, False, None

    def launch(self, stream=None):  # noqa: ARG002
        if not self.launched:  # the capture has run the steps already: NumPy runs what it is given
            self.launched = True
            return
        seg = self.seg
        before = [graphs._tstate(t) for t in seg.tensors], [graphs._nstate(n) for n in seg.nodes]
        with _KernelCalls.noting() as calls:
            compile_steps.run_steps(seg.steps)
        assert calls == self.calls, "a kernel of the graph was called with other numbers than at its capture"
        tensors, _, nodes = seg.diff
        for t, changed in tensors:
            for name, kept in changed:
                _copy_into(kept, getattr(t, name))
        for node, kept in nodes:
            _copy_into(kept, graphs._nstate(node))
        graphs._restore(seg, *before)


class _KernelCalls:
    """The kernels (tinygen.kernels.get) a segment calls, each with its non-array arguments, while noting."""
    log = None

    @classmethod
    @contextlib.contextmanager
    def noting(cls):
        cls.log = []
        try:
            yield cls.log
        finally:
            cls.log = None

    @classmethod
    def wrap(cls, get):
        def traced_get(name, *args, **kwargs):
            fn = get(name, *args, **kwargs)

            def call(*a, **k):
                if cls.log is not None:
                    cls.log.append((name, _numbers(a), _numbers(k)))
                return fn(*a, **k)
            return call
        return traced_get


def _numbers(value):
    """``value`` with every array (or tensor, or other object) as one placeholder: what a graph keeps of a call."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_numbers(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _numbers(v)) for k, v in value.items()))
    return "array" if hasattr(value, "shape") else type(value).__name__


def _copy_into(kept, fresh):
    if isinstance(kept, np.ndarray) and isinstance(fresh, np.ndarray):
        if kept is not fresh and kept.shape == fresh.shape:
            kept[...] = fresh
    elif isinstance(kept, Tensor) and isinstance(fresh, Tensor):
        _copy_into(kept.data, fresh.data)
    elif isinstance(kept, (tuple, list)) and isinstance(fresh, (tuple, list)):
        for k, f in zip(kept, fresh):
            _copy_into(k, f)
    elif isinstance(kept, dict) and isinstance(fresh, dict):
        for key in kept.keys() & fresh.keys():
            _copy_into(kept[key], fresh[key])


class _FakeStream:
    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self, mode=None):
        pass

    def end_capture(self):
        return _EmulatedGraph()


@pytest.fixture
def emulated_cuda(monkeypatch):
    """NumPy arrays taken for CuPy's by cuda_graph.py, with the emulated graphs."""
    fake = types.SimpleNamespace(
        ndarray=np.ndarray, asarray=np.asarray, array=np.array, empty=np.empty, empty_like=np.empty_like,
        uint8=np.uint8, cuda=types.SimpleNamespace(
            Stream=_FakeStream, MemoryPool=lambda: types.SimpleNamespace(
                malloc=None, free_all_blocks=lambda: None, used_bytes=lambda: 0),
            using_allocator=lambda malloc: contextlib.nullcontext(), get_current_stream=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(graphs, "is_cupy", lambda a: isinstance(a, np.ndarray))
    monkeypatch.setattr(kernels, "get", _KernelCalls.wrap(kernels.get))
    capture = graphs.GraphedSteps._capture

    def capture_and_note(self, seg, run_plain, cupy):
        with _KernelCalls.noting() as calls, _no_blas_but_mm():
            ok = capture(self, seg, run_plain, cupy)
        if ok:
            seg.graph.seg, seg.graph.calls = seg, calls
        return ok
    monkeypatch.setattr(graphs.GraphedSteps, "_capture", capture_and_note)
    return fake


@contextlib.contextmanager
def _no_blas_but_mm():
    """CuPy refuses cuBLAS while a stream captures; tinygen's products go through gemm.mm, which calls cuBLAS
    itself there. So a capture here refuses NumPy's other BLAS routes (dot, vdot, inner), as CuPy would."""
    saved = {name: getattr(np, name) for name in ("dot", "vdot", "inner")}

    def refuse(*args, **kwargs):
        raise NotImplementedError("cuBLAS outside gemm.mm inside a capture")
    try:
        for name in saved:
            setattr(np, name, refuse)
        yield
    finally:
        for name, fn in saved.items():
            setattr(np, name, fn)


def _models(device):
    """The steps both kinds of test compare, each a function that builds it on ``device``."""
    return {"mlp-sgd": lambda: _mlp(device, 0), "mlp-sgd-zero-in-place": lambda: _mlp(device, 0, set_to_none=False),
            "mlp-adam": lambda: _mlp(device, 0, adam=True), "vae-like": lambda: _vae_like(device),
            "gan-bn": lambda: _gan(device, 0),
            "mlp-adam-capturable": lambda: _mlp(device, 0, adam=True, capturable=True),
            "gan-bn-capturable": lambda: _gan(device, 0, capturable=True),
            "gan-trainer-like": lambda: _gan(device, 0, capturable=True, trainer_like=True)}


def _swap_at_call_4(i, made):
    """Between calls 3 and 4, the first parameter gets a new array of the same values: a graph would read the old
    one."""
    if i == 4:
        p = made[1][0]
        p.data = p.data.copy()


CPU_MODELS = _models("cpu")


@pytest.mark.parametrize("model", list(CPU_MODELS))
def test_cuda_graph_bookkeeping_emulated_on_numpy_equals_plain_replays(emulated_cuda, model):
    """What each segment did in Python is done again after each launch, host steps' new tensors are pinned and
    the result is copied: with emulated graphs, 8 steps equal plain replays bit for bit."""
    plain, plain_params, _ = _run(CPU_MODELS[model], cuda_graph=False)
    graphed, graphed_params, compiled = _run(CPU_MODELS[model], cuda_graph=True)
    assert compiled.graph_error is None, compiled.graph_error
    assert compiled.graph_replays == 7
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_guard_failure_replays_plainly_and_captures_again(emulated_cuda):
    plain, plain_params, _ = _run(lambda: _mlp("cpu", 0), cuda_graph=False, between=_swap_at_call_4)
    graphed, graphed_params, compiled = _run(lambda: _mlp("cpu", 0), cuda_graph=True, between=_swap_at_call_4)
    assert compiled.graph_replays == 6 and compiled.graph_error is None  # call 4 plain, call 5 captured again
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def _halve_lr_at_call_4(i, made):
    if i == 4:
        made[3].param_groups[0]["lr"] *= 0.5


def _reload_state_at_call_4(i, made):
    """The optimizer's state loaded back from its state dict: the same values in new arrays."""
    if i == 4:
        opt = made[3]
        opt.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("between", [_halve_lr_at_call_4, _reload_state_at_call_4])
@pytest.mark.parametrize("adam", [False, True])
def test_cuda_graph_of_an_optimizer_step_is_dropped_when_its_key_changes(emulated_cuda, between, adam):
    """An optimizer step inside a graph is guarded by its graph_key: a new learning rate (a scheduler) or new
    state arrays (load_state_dict) make that call replay plainly and the next one capture again. Without the
    guard the launch would run the captured numbers (the emulation's kernel-call check fails) or update the old
    arrays."""
    make = (lambda: _mlp("cpu", 0, adam=True, capturable=True)) if adam else (lambda: _mlp("cpu", 0))
    plain, plain_params, _ = _run(make, cuda_graph=False, between=between)
    graphed, graphed_params, compiled = _run(make, cuda_graph=True, between=between)
    assert compiled.graph_replays == 6 and compiled.graph_error is None  # call 4 plain, call 5 captured again
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_guards_a_gradient_delivered_before_a_zero_grad_in_the_same_graph(emulated_cuda):
    """A backward that adds to the .grads the previous call left, then zero_grad and a second backward, in one
    segment: the first backward's gradients go into the arrays the capture saw, which the next call's .grads are
    not, so every launch's guard fails and the step replays plainly (the emulation reads Python's arrays and
    would not show the stale sum; the guard decision is what is checked here)."""
    def make():
        tg.manual_seed(0)
        lin = nn.Linear(6, 3)
        opt = optim.SGD(lin.parameters(), lr=0.1)
        x = tg.tensor(np.random.default_rng(0).random((4, 6)).astype(np.float32))

        def step():
            first = lin(x).square().sum()
            first.backward()  # onto the .grads of the previous call's second backward
            opt.step()
            opt.zero_grad()
            second = lin(x).sum()
            second.backward()
            return first, second
        return step, list(lin.parameters())
    plain, plain_params, _ = _run(make, cuda_graph=False)
    with pytest.warns(RuntimeWarning, match="replays without CUDA graphs from now on"):
        graphed, graphed_params, compiled = _run(make, cuda_graph=True)
    assert compiled.graph_replays == graphs.MAX_CAPTURES  # calls 2, 4, 6 captured; each next launch refused
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_pools_of_dropped_graphs_are_kept_while_in_use(monkeypatch):
    class Pool:
        def __init__(self, used):
            self.used, self.freed = used, 0

        def free_all_blocks(self):
            self.freed += 1

        def used_bytes(self):
            return self.used
    monkeypatch.setattr(graphs, "_RETIRED", [])
    busy, idle = Pool(512), Pool(0)
    graphs._retire(busy)
    graphs._retire(idle)
    graphs._retire(None)
    graphs._sweep()
    assert graphs._RETIRED == [busy] and busy.freed == idle.freed == 1
    busy.used = 0
    graphs._sweep()
    assert graphs._RETIRED == []


def test_cuda_graph_failed_capture_sets_state_and_host_generator_back(emulated_cuda):
    """A copy of host data inside a segment ends the capture: the state and tinygen's host generator are set back
    and the step replays plainly, drawing what a plain replay draws."""
    class ListNoise(Function):
        @staticmethod
        def forward(ctx, x):
            draw = tg.random.generator("cpu").random(x.shape).astype(x.data.dtype)
            ctx.noise = sys.modules["cupy"].asarray(draw.tolist(), dtype=x.data.dtype)  # host data
            return x.data * ctx.noise

        @staticmethod
        def backward(ctx, grad):
            return grad * tg.tensor(ctx.noise)

    plain, _ = _noisy_steps(ListNoise, "cpu", cuda_graph=False)
    with pytest.warns(RuntimeWarning, match="replays without CUDA graphs from now on") as warned:
        graphed, compiled = _noisy_steps(ListNoise, "cpu", cuda_graph=True)
    assert len(warned) == 1  # once, not at every call
    assert compiled.graph_replays == 0 and "host data (list)" in compiled.graph_error, compiled.graph_error
    np.testing.assert_array_equal(graphed, plain)
    assert len(set(graphed)) == 5


def _noisy_steps(noise, device, cuda_graph, calls=5):
    """The losses of ``calls`` compiled steps of a layer whose output goes through the Function ``noise``."""
    tg.manual_seed(0)
    lin = nn.Linear(6, 3).to(device)
    x = tg.tensor(np.ones((4, 6), np.float32), device=device)

    def step():
        lin.zero_grad()
        loss = noise.apply(lin(x)).sum()
        loss.backward()
        return loss
    compiled = tg.compile(step, cuda_graph=cuda_graph)
    losses = [compiled() for _ in range(calls)]
    return np.array([float(t.item()) for t in losses]), compiled


def _mlp(device, seed, set_to_none=True, adam=False, capturable=False, update_first=False):
    """An MLP's step; ``update_first``: the update with the previous call's gradients first, then zero_grad and
    the backward that makes the next call's."""
    tg.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5)).to(device)
    opt = (optim.Adam(net.parameters(), lr=1e-2, capturable=capturable) if adam else
           optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    rng = np.random.default_rng(seed)
    x = tg.tensor(rng.standard_normal((16, 20)).astype(np.float32), device=device)
    y = tg.tensor(rng.integers(0, 5, 16), device=device)

    def step():
        if update_first:
            opt.step()
        opt.zero_grad(set_to_none=set_to_none)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        if not update_first:
            opt.step()
        return loss
    return step, list(net.parameters()), (x, y), opt


def _gan(device, seed, capturable=False, trainer_like=False):
    """A GAN step; ``trainer_like``: as the GAN trainer's, D frozen (requires_grad switches) for G's backward and
    each network's gradients clipped before its update."""
    tg.manual_seed(seed)
    g = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.2), nn.Linear(32, 16), nn.Tanh()).to(device)
    d = nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1)).to(device)
    opt_g = optim.Adam(g.parameters(), lr=2e-3, capturable=capturable)
    opt_d = optim.Adam(d.parameters(), lr=2e-3, capturable=capturable)
    real = tg.tensor(np.random.default_rng(2).random((16, 16)).astype(np.float32), device=device)
    ones, zeros = tg.ones(16, 1, device=device), tg.zeros(16, 1, device=device)
    bce = F.binary_cross_entropy_with_logits
    frozen = d.requires_grad_ if trainer_like else (lambda flag: None)
    clip = (lambda net: nn.utils.clip_grad_norm_(net.parameters(), 0.5)) if trainer_like else (lambda net: None)

    def step():
        z = tg.randn(16, 8, device=device)
        opt_g.zero_grad()
        imgs = g(z)
        frozen(False)
        lg = bce(d(imgs), ones)
        lg.backward()
        frozen(True)
        clip(g)
        opt_g.step()
        opt_d.zero_grad()
        ld = (bce(d(real), ones) + bce(d(imgs.detach()), zeros)) / 2
        ld.backward()
        clip(d)
        opt_d.step()
        return lg, ld
    return step, list(g.parameters()) + list(d.parameters()) + list(g[1].buffers())


def _run(make, cuda_graph, steps=8, between=None):
    made = make()
    step, params = made[0], made[1]
    compiled = tg.compile(step, cuda_graph=cuda_graph)
    tg.manual_seed(123)
    losses = []
    for i in range(steps):
        if between is not None:
            between(i, made)
        losses.append(compiled())  # read at the end: a graphed replay's result must not be overwritten
    values = [[float(t.item()) for t in (r if isinstance(r, tuple) else (r,))] for r in losses]
    return np.array(values), [backend.to_device(p.data, "cpu").copy() for p in params], compiled


MODELS = _models("cuda")


@gpu
@pytest.mark.parametrize("model", list(MODELS))
def test_cuda_graph_replays_equal_plain_replays(model):
    plain, plain_params, plain_c = _run(MODELS[model], cuda_graph=False)
    graphed, graphed_params, compiled = _run(MODELS[model], cuda_graph=True)
    assert plain_c.graph_replays == 0
    assert compiled.graph_error is None, compiled.graph_error
    assert compiled.graph_replays == 7, (compiled.graph_replays, compiled.replays)  # all but the recording call
    # cuBLAS called directly inside a graph may pick another kernel than CuPy's matmul: float32 rounding apart
    np.testing.assert_allclose(graphed, plain, rtol=2e-5, atol=1e-6)
    assert len(set(graphed[:, 0])) == len(graphed)  # each step's own loss, not the last one's eight times
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@gpu
@pytest.mark.parametrize("loss,lr_decay", [("nonsaturating", "none"), ("wgan", "none"), ("nonsaturating", "held")])
def test_cuda_graph_of_the_gan_trainers_step_on_the_gpu(monkeypatch, loss, lr_decay):
    """The GAN trainer's whole step on CuPy (its generator's draws, norms, clipping, capturable optimizers, the
    EMA counting on the device; with "held", a learning rate set before every step into device tensors) is
    captured and launched as one graph, within float32 rounding of plain replays."""
    plain, plain_weights, _, _ = _gan_trainer_run(False, monkeypatch, loss, device="cuda", lr_decay=lr_decay)
    stats, weights, compiled, ema = _gan_trainer_run(True, monkeypatch, loss, device="cuda", lr_decay=lr_decay)
    assert compiled.graph_error is None, compiled.graph_error
    assert compiled.graph_replays == 5
    assert [kind for kind, _ in next(iter(compiled._programs.values())).graphed.items].count("segment") == 1
    for ours, theirs in zip(stats, plain):
        assert ours.keys() == theirs.keys()
        np.testing.assert_allclose(list(ours.values()), list(theirs.values()), rtol=1e-4, atol=1e-5)
    for a, b in zip(weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert ema.updates == 6


def _batches(steps, seed=5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, 20)).astype(np.float32), rng.integers(0, 5, 16)) for _ in range(steps)]


@gpu
def test_cuda_graph_step_of_tensor_arguments_reads_each_calls_arguments():
    def run(cuda_graph):
        tg.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)).to("cuda")
        opt = optim.SGD(net.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return loss
        compiled = tg.compile(step, cuda_graph=cuda_graph)
        losses = [compiled(tg.tensor(x, device="cuda"), tg.tensor(y, device="cuda")) for x, y in _batches(8)]
        return np.array([float(t.item()) for t in losses]), compiled
    plain, _ = run(False)
    graphed, compiled = run(True)
    assert compiled.graph_replays == 7 and compiled.graph_error is None, compiled.graph_error
    np.testing.assert_allclose(graphed, plain, rtol=2e-5, atol=1e-6)


@gpu
def test_cuda_graph_captured_anew_after_a_parameter_gets_a_new_array():
    plain, plain_params, _ = _run(lambda: _mlp("cuda", 0), cuda_graph=False, between=_swap_at_call_4)
    graphed, graphed_params, compiled = _run(lambda: _mlp("cuda", 0), cuda_graph=True, between=_swap_at_call_4)
    assert compiled.graph_replays == 6  # the call after the swap ran plainly; the next captured again
    np.testing.assert_allclose(graphed, plain, rtol=2e-5, atol=1e-6)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@gpu
def test_cuda_graph_step_with_a_target_out_of_range_raises():
    step, _, (x, y), _ = _mlp("cuda", 0)
    compiled = tg.compile(step)
    for _ in range(3):
        compiled()
    assert compiled.graph_replays == 2
    y.data[3] = 7  # 5 classes
    with pytest.raises(IndexError, match="target 7 .*out of (range|bounds) for 5 classes"):
        compiled()


class HostNoise(Function):
    """x times noise drawn on the host (tinygen's CPU generator) and copied to the device in the forward: a graph
    would replay a stale copy."""

    @staticmethod
    def forward(ctx, x):
        noise = ctx.xp.asarray(tg.random.generator("cpu").random(x.shape).astype(x.data.dtype))
        ctx.noise = noise
        return x.data * noise

    @staticmethod
    def backward(ctx, grad):
        return grad * tg.tensor(ctx.noise, device=grad.device)


@gpu
def test_cuda_graph_refused_for_a_host_to_device_copy_in_the_step():
    plain, _ = _noisy_steps(HostNoise, "cuda", cuda_graph=False)
    with pytest.warns(RuntimeWarning, match="replays without CUDA graphs from now on"):
        graphed, compiled = _noisy_steps(HostNoise, "cuda", cuda_graph=True)
    assert compiled.graph_replays == 0 and "host data" in compiled.graph_error, compiled.graph_error
    np.testing.assert_allclose(graphed, plain, rtol=1e-6)
    assert len(set(graphed)) == 5  # new noise on every call, none lost to the capture that failed


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_graph_captured_product_equals_cupys_for_every_layout(dtype):
    import cupy
    from tinygen.kernels import gemm, gemm_capture
    rng = np.random.default_rng(0)
    cases = []
    for m, k, n in [(7, 5, 3), (1, 9, 4), (6, 1, 8), (33, 17, 1)]:
        a = cupy.asarray(rng.standard_normal((m, k)).astype(dtype))
        b = cupy.asarray(rng.standard_normal((k, n)).astype(dtype))
        cases += [(a, b), (cupy.asfortranarray(a), b), (a, cupy.asfortranarray(b)),
                  (cupy.asfortranarray(a), cupy.asfortranarray(b)),
                  (cupy.asarray(rng.standard_normal((m, 2 * k)).astype(dtype))[:, ::2], b)]
    stream = cupy.cuda.Stream(non_blocking=True)
    workspace = cupy.empty(gemm_capture.WORKSPACE_BYTES, cupy.uint8)
    backend.GRAPH_CAPTURE.workspace = workspace
    try:
        with stream:
            stream.begin_capture(mode=2)
            outs = [gemm.mm(a, b) for a, b in cases]
            graph = stream.end_capture()
    finally:
        backend.GRAPH_CAPTURE.workspace = None
    for out in outs:
        out.fill(np.nan)  # nothing is computed until the launch
    graph.launch(stream=cupy.cuda.Stream.null)  # ordered after the fills
    cupy.cuda.Device().synchronize()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for (a, b), out in zip(cases, outs):
        assert out.flags.c_contiguous
        np.testing.assert_allclose(out.get(), (a @ b).get(), rtol=tol, atol=tol)


def _mlp_with_a_fused_run(device, seed=0):
    """An MLP whose hidden layer is followed by a run of four elementwise ops: one fused kernel on the GPU."""
    tg.manual_seed(seed)
    first, last = nn.Linear(20, 32).to(device), nn.Linear(32, 1).to(device)
    params = list(first.parameters()) + list(last.parameters())
    opt = optim.SGD(params, lr=0.05, momentum=0.9)
    x = tg.tensor(np.random.default_rng(seed).standard_normal((16, 20)).astype(np.float32), device=device)

    def step():
        opt.zero_grad()
        h = first(x)
        h = (h * h + h) * 0.5 - h
        loss = (last(h) * 0.1).sum()
        loss.backward()
        opt.step()
        return loss
    return step, params


def test_cuda_graph_captures_a_fused_kernel_with_the_device_work_around_it(emulated_cuda, monkeypatch):
    """A run fused into one device kernel (compile/fusion.py; NumPy arrays taken for CuPy's, the kernel the
    stand-in's ElementwiseKernel), and its backward's, are device work: inside the step's one graph, and the
    graphed steps equal plain replays bit for bit."""
    from tinygen.compile import fusion
    emulated_xp = types.SimpleNamespace(
        __name__="emulated", ElementwiseKernel=backend.StandinElementwiseKernel, empty=np.empty, asarray=np.asarray,
        array_equal=np.array_equal, absolute=np.absolute, sqrt=np.sqrt, exp=np.exp, log=np.log, tanh=np.tanh,
        sin=np.sin, cos=np.cos)
    monkeypatch.setattr(fusion, "is_device_array", lambda a: isinstance(a, np.ndarray))
    monkeypatch.setattr(fusion, "array_module_of", lambda *a: emulated_xp)
    plain, plain_params, plain_c = _run(lambda: _mlp_with_a_fused_run("cpu"), cuda_graph=False)
    graphed, graphed_params, compiled = _run(lambda: _mlp_with_a_fused_run("cpu"), cuda_graph=True)
    program = next(iter(compiled._programs.values()))
    (run,) = [r for r, _ in program.steps if isinstance(r, fusion.FusedRun)]
    assert run.device and len(run.steps) == 4 and run.kernel is not None
    (segment,) = [item for kind, item in program.graphed.items if kind == "segment"]  # SGD's step in it too
    assert any(r is run for r, _ in segment.steps)
    assert compiled.graph_error is None and compiled.graph_replays == 7
    lines = compiled.explain().splitlines()
    assert lines[0] == "step: 1 program(s), 1 recorded, 7 replayed, 7 with CUDA graphs"
    fused = [line.split(maxsplit=1)[1] for line in lines if "fused" in line]
    assert fused == ["graph 1  fused     4 ops (Mul, Add, Mul, Sub) on (16, 32) float32: one CuPy kernel",
                     "graph 1  backward  8 nodes (SumBackward, MulBackward, LinearBackward, fused(SubBackward, "
                     "MulBackward, AddBackward, MulBackward), LinearBackward) -> .grad of 4 leaves"]
    replay_backward = compile_steps.replay_backward
    (plan,) = [ops[0] for r, ops in program.steps if r is replay_backward]
    (backward_run,) = [step[0] for step in plan.steps if step[1] is fusion.FUSED]
    assert backward_run.device and backward_run.kernel is not None  # its kernel inside the graph too
    assert all(line.split()[1:3] == ["graph", "1"] for line in lines[2:])  # the whole step: one graph
    np.testing.assert_array_equal(graphed, plain)
    for a, b in zip(graphed_params, plain_params):
        np.testing.assert_array_equal(a, b)


def test_cuda_graph_takes_a_reused_forward_with_the_device_work_around_it():
    """A forward the program reuses (the GAN's discriminator on the detached fakes: ``reused_forwards``) is a
    Python-only call with a graph_key whose result is the reused outputs: it joins the segment around it, so the
    step stays one graph after its host draw (the emulated launches equal plain replays: the bookkeeping test)."""
    step = CPU_MODELS["gan-bn-capturable"]()[0]
    compiled = tg.compile(step)
    compiled()
    program = next(iter(compiled._programs.values()))
    graphed = graphs.GraphedSteps(program.steps, program.inputs)
    reused = [ops for kind, seg in graphed.items if kind == "segment" for run, ops in seg.steps
              if run is compile_steps.replay_call and ops[0] is compile_passes.same_result]
    assert len(reused) == 2  # D's Linear+LeakyReLU and Linear
    assert [kind for kind, _ in graphed.items] == ["host", "segment"]  # the draw, then one graph
