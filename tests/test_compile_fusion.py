"""tinygen.compile's elementwise fusion: fused replays against unfused replays and eager (bitwise for the exact ops,
within APPROX_ULPS per transcendental call under fuse="approx"), what a fused run writes, and when it must not fuse."""
import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygen as tg
from tinygen import backend, kernels
from tinygen.compile import fusion as compile_fusion
from tinygen.compile import steps as compile_steps
from tinygen.compile.fusion import APPROX_ULPS, FUSED, FusedRun

NUMBA_ON = kernels.enabled()  # without Numba nothing is fused on the CPU: the tests compare the values all the same


def _runs(compiled):
    """The fused runs of a compiled function's programs."""
    return [run for p in compiled._programs.values() for run, _ in p.steps if isinstance(run, FusedRun)]


def _lengths(compiled):
    return [len(run.steps) for run in _runs(compiled)]


def _backward_runs(compiled):
    """The fused backward runs in the plans of a compiled function's programs."""
    replay_backward = compile_steps.replay_backward
    return [step[0] for p in compiled._programs.values() for run, operands in p.steps if run is replay_backward
            for step in operands[0].steps if step[1] is FUSED]


def _fuses(device):
    """Whether runs are fused on ``device``: on the CPU with Numba; on the GPU (or the stand-in) always."""
    return NUMBA_ON or device != "cpu"


def _expected(lengths, device="cpu"):
    """The fused runs' lengths a test expects: none without Numba on the CPU, where every test still compares the
    values."""
    return lengths if _fuses(device) else []


def _arrays(result):
    result = result if isinstance(result, (tuple, list)) else (result,)
    return [backend.to_device(t.detach().data, "cpu").copy() for t in result]


def _on(device):
    """A block that makes tensors on ``device``: "cuda" is the stand-in for CuPy where there is no GPU."""
    if device == "cuda" and not backend.is_available("cuda"):
        return backend.cuda_standin()
    return contextlib.nullcontext()


def _same(xs, ys):
    return len(xs) == len(ys) and all(x.dtype == y.dtype and x.shape == y.shape and
                                      np.array_equal(x, y, equal_nan=True) for x, y in zip(xs, ys))


def _ulps(x, y):
    """Largest distance in units in the last place between two float arrays of one dtype (finite values)."""
    ints = np.int32 if x.dtype == np.float32 else np.int64
    a, b = x.view(ints).astype(np.int64), y.view(ints).astype(np.int64)
    a = np.where(a < 0, np.iinfo(ints).min - a, a)  # sign-magnitude to a monotonic integer line
    b = np.where(b < 0, np.iinfo(ints).min - b, b)
    return int(np.abs(a - b).max())


def _inputs(n, shape=(6, 5), dtype=np.float32, seed=0, device="cpu"):
    rng = np.random.default_rng(seed)
    return [tuple(tg.tensor(rng.uniform(0.5, 2.0, shape).astype(dtype), device=device) for _ in range(3))
            for _ in range(n)]


def _three_ways(step, inputs, fuse=True):
    """The step's results on each input: eager, compiled unfused, compiled with ``fuse``; and that last function."""
    out = []
    for f in (step, tg.compile(step, fuse=False), tg.compile(step, fuse=fuse)):
        out.append([_arrays(f(*args)) for args in inputs])
    return out, f


def _chain(a, b, c):  # 11 exact ops on arrays and scalars, two results
    h = a * b + c / 2.0
    y = -(h - a) * 3.0 + abs(c - 1.5)
    return y / (b + 1.0), h


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_arithmetic_chain_fused_is_bitwise_the_unfused_replay_and_eager(dtype, device):
    (eager, unfused, fused), f = _three_ways(_chain, _inputs(5, dtype=dtype, device=device))
    assert _lengths(f) == _expected([11], device)
    if _fuses(device):
        assert len(_runs(f)[0].outputs) == 2  # y and h (returned): the rest stays in registers
        assert _runs(f)[0].device is (device == "cuda")
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))
    assert f.replays == 4


def test_a_chain_of_zero_d_tensors_is_fused_too(device):
    def step(a, b, c):
        s = a.sum() * 0.5
        return -(s + b.sum()) * 2.0 - c.mean()  # sum, mul | sum, add, neg, mul | sum, div, sub
    (eager, unfused, fused), f = _three_ways(step, _inputs(3, device=device))
    assert _lengths(f) == _expected([3], device) and all(r.shape == () for r in _runs(f))  # not two ops
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))


_OPS = (lambda x, y: x + y, lambda x, y: x - y, lambda x, y: x * y, lambda x, y: x / y, lambda x, y: -x,
        lambda x, y: abs(x), lambda x, y: abs(x).sqrt(), lambda x, y: x * 0.75, lambda x, y: 1.5 - y)
_OP_COUNTS = (1, 1, 1, 1, 1, 1, 2, 1, 1)  # recorded ops per entry of _OPS


@given(st.lists(st.tuples(st.integers(0, len(_OPS) - 1), st.integers(0, 99), st.integers(0, 99)), min_size=3,
                max_size=12), st.sampled_from([np.float32, np.float64]), st.sampled_from(["cpu", "cuda"]))
def test_random_exact_chains_fused_are_bitwise_eager_on_cpu_and_cuda(program, dtype, device):
    """Each op takes two earlier values (the inputs or results before it); the last three values are returned,
    and the sum of the last: on NumPy it ends the run, on the GPU (a reduction kernel cannot write the values the
    step returns) it is a step of its own."""
    def step(a, b, c):
        values = [a, b, c]
        for op, i, j in program:
            values.append(_OPS[op](values[i % len(values)], values[j % len(values)]))
        return tuple(values[-3:]) + (values[-1].sum(),)
    with _on(device):
        inputs = [tuple(tg.tensor(np.asarray(x.data - 1.2, dtype), device=device) for x in args)
                  for args in _inputs(3, dtype=dtype)]
        (eager, unfused, fused), f = _three_ways(step, inputs)
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))
    # one run: all of them
    assert _lengths(f) == _expected([sum(_OP_COUNTS[op] for op, _, _ in program) + (device == "cpu")], device)


def _train_setup(dtype, device="cpu"):
    rng = np.random.default_rng(1)
    w = tg.tensor(rng.uniform(0.5, 2.0, (6, 5)).astype(dtype), requires_grad=True, device=device)
    v = tg.tensor(rng.uniform(0.5, 2.0, (6, 5)).astype(dtype), requires_grad=True, device=device)

    def step(a, b, c):
        h = w * a + v  # h is saved by the Mul below: written by the fused loop, as a shadow on the Mul's node
        y = h * h / (b + 1.0) - (v * 2.0).sqrt() + abs(w - 1.0)
        loss = (y @ c.t()).sum()  # a matrix product after the run
        loss.backward()
        return loss, y
    return (w, v), step


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_through_a_fused_run_is_bitwise_eager(dtype, device):
    outs = []
    for fuse in (None, False, True):
        (w, v), step = _train_setup(dtype, device)
        f = step if fuse is None else tg.compile(step, fuse=fuse)
        outs.append([])
        for args in _inputs(4, dtype=dtype, device=device):
            w.grad = v.grad = None
            outs[-1].append(_arrays(f(*args)) + _arrays((w.grad, v.grad)))
    eager, unfused, fused = outs
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))
    assert _lengths(f) == _expected([11], device)
    if _fuses(device):
        run = _runs(f)[0]
        assert len(run.nodes) == 10  # b + 1.0 needs no node
        assert len(run.outputs) == 6  # h, b + 1.0, the quotient, the square root, w - 1.0 (saved), y (the result)


def test_an_intermediate_used_after_the_run_is_written(device):
    """Would fail if the pass kept in registers what a later step (here a matrix product) reads."""
    def step(a, b, c):
        h = a * b + 1.0
        y = h - c * 0.5
        return (h @ c.t()) + y.sum()
    (eager, unfused, fused), f = _three_ways(step, _inputs(3, device=device))
    assert _lengths(f) == _expected([4], device)
    if _fuses(device):
        run = _runs(f)[0]
        assert [id(t) for t in run.outputs] == [id(run.steps[1][1][4][0]), id(run.steps[3][1][4][0])]
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))


def test_what_must_not_be_fused_is_not(device):
    def step(a, b, c):
        y = a * b + c[0] - 1.0  # the add of a row (broadcast) is not fused, so neither are the ops beside it
        # a transposed operand: on the CPU fused, but each replay sees the layout and runs unfused; on the GPU
        # left unfused when the kernel is built (at record time)
        z = (a.t() * 2.0 + 1.0) * 0.5
        # float32 meets float64: the first Mul is not fused
        m = (a * tg.tensor(np.float64(2.0), device=device)) * 3.0 - 1.0 + 2.0
        return y, z, m
    (eager, unfused, fused), f = _three_ways(step, _inputs(3, device=device))
    transposed = [((5, 6), np.float32, ["Mul", "Add", "Mul"])] if device == "cpu" else []
    assert [(r.shape, r.dtype, [s[1][0].__name__ for s in r.steps]) for r in _runs(f)] == _expected(
        transposed + [((6, 5), np.float64, ["Mul", "Sub", "Add"])], device)
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))
    args = _inputs(1, seed=5, device=device)[0]  # the layout eager gives, from the fallback (not a copy's)
    assert f(*args)[1].data.strides == step(*args)[1].data.strides == (4, 20)


def test_a_subclass_with_its_own_forward_is_not_fused_as_its_parent(device):
    from tinygen.ops.arithmetic import Mul

    class MulTwice(Mul):  # inherits Mul's elementwise declaration, but computes something else
        @staticmethod
        def forward(ctx, a, b):
            return a.data * b.data * 2

    def step(a, b, c):
        return MulTwice.apply(a, b) + c - 1.0, (a * b + c) * 0.5
    (eager, unfused, fused), f = _three_ways(step, _inputs(3, device=device))
    assert _lengths(f) == _expected([5], device)  # the ops after MulTwice
    assert all(s[1][0] is not MulTwice for r in _runs(f) for s in r.steps)
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))


def test_transcendental_ops_fuse_only_under_approx_within_the_stated_ulps(device):
    def step(a, b, c):
        return (a * 0.5 + b - 1.0).exp(), (a * b + 1.0).log(), (a - b).tanh(), (c * 3.0).sin() * 2.0, (c - a).cos()
    inputs = _inputs(3, device=device)
    (eager, unfused, fused), f = _three_ways(step, inputs, fuse="approx")
    assert _lengths(f) == _expected([14], device)
    assert all(_same(e, u) for e, u in zip(eager, unfused))
    assert all(_ulps(x, y) <= APPROX_ULPS for e, z in zip(eager, fused) for x, y in zip(e, z))
    exact = tg.compile(step)  # the default fuses the arithmetic around them, bitwise
    assert all(_same(e, _arrays(exact(*args))) for e, args in zip(eager, inputs))
    assert _lengths(exact) == _expected([3], device)  # the one run of 3 between the transcendental calls


def test_fusion_is_off_without_numba_and_a_replay_falls_back_when_numba_is_switched_off():
    inputs = _inputs(3)
    with kernels.enabled_as(False):
        f = tg.compile(_chain)
        assert all(_same(_arrays(f(*args)), _arrays(_chain(*args))) for args in inputs)
        assert f.replays == 2 and _runs(f) == []
    if NUMBA_ON:
        f = tg.compile(_chain)
        inputs = _inputs(3)
        f(*inputs[0])
        assert len(_runs(f)) == 1
        with kernels.enabled_as(False):  # the fused step runs its ops one by one, on the reference's code
            assert _same(_arrays(f(*inputs[1])), _arrays(_chain(*inputs[1])))


_CACHED_LOOP = r"""
import json, sys
import numpy as np, tinygen as tg
from tinygen.compile import fusion
f = tg.compile(lambda a, b: (((a * b + a) * 0.5 - b) * 2.0).sum())  # a run ending in a sum: block_sum too
x, y = tg.tensor(np.linspace(-3, 3, 40, dtype=np.float32)), tg.tensor(np.full(40, 0.3, np.float32))
outs = [f(x, y).numpy().tobytes().hex() for _ in range(3)]
loops = [k for k in fusion._kernels.values() if hasattr(k, "stats")]
print(json.dumps({"outs": outs, "eager": (((x * y + x) * 0.5 - y) * 2.0).sum().numpy().tobytes().hex(),
                  "loops": [[sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()), k.__module__]
                            for k in loops]}))
"""


def _cached_loop_run(cache):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, TINYGEN_CACHE=str(cache), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", _CACHED_LOOP], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not NUMBA_ON, reason="without Numba nothing is fused on the CPU")
def test_a_fused_loop_is_kept_on_disk_and_a_new_process_loads_it_instead_of_compiling(tmp_path):
    """The first process compiles the loop from a module it writes to $TINYGEN_CACHE/fused; the next one loads
    Numba's cached machine code (a cache hit, no compile): the same bits as eager either way."""
    first = _cached_loop_run(tmp_path)
    again = _cached_loop_run(tmp_path)
    modules = list((tmp_path / "fused").glob("loop_*.py"))
    assert len(modules) == 1 and "def fused(" in modules[0].read_text()
    assert [(hits, misses) for hits, misses, _ in first["loops"]] == [(0, 1)]
    assert [(hits, misses) for hits, misses, _ in again["loops"]] == [(1, 0)]
    assert first["loops"][0][2] == again["loops"][0][2] == "tinygen_fused_loop_" + modules[0].stem[len("loop_"):]
    for run in (first, again):
        assert run["outs"] == [run["eager"]] * 3
    modules[0].write_text(modules[0].read_text().replace("def fused(", "def unused(n):\n    pass\n\n\ndef fused("))
    assert _cached_loop_run(tmp_path)["outs"] == [first["eager"]] * 3  # an altered module is written anew
    assert "def unused" not in modules[0].read_text()


@pytest.mark.skipif(not NUMBA_ON, reason="without Numba nothing is fused on the CPU")
def test_a_fused_loop_is_compiled_in_memory_when_the_cache_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = _cached_loop_run(blocker / "cache")  # a folder inside a file: it cannot be made
    assert run["outs"] == [run["eager"]] * 3
    assert len(run["loops"]) == 1 and run["loops"][0][0] == 0
    assert not str(run["loops"][0][2]).startswith("tinygen_fused_loop_")  # compiled from the source in memory


def _vae():
    tg.manual_seed(0)
    nn = tg.nn
    fc1, fc21, fc22, fc3, fc4 = (nn.Linear(i, o) for i, o in ((12, 16), (16, 4), (16, 4), (4, 16), (16, 12)))
    opt = tg.optim.Adam([p for m in (fc1, fc21, fc22, fc3, fc4) for p in m.parameters()], lr=1e-2)

    def step(x):  # as benchmarks/models_tinygen.py writes the VAE's step
        opt.zero_grad()
        h1 = fc1(x).relu()
        mu, logvar = fc21(h1), fc22(h1)
        z = mu + tg.randn(x.shape[0], 4) * (0.5 * logvar).exp()
        logits = fc4(fc3(z).relu())
        bce = tg.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum()
        loss = bce + kld
        loss.backward()
        opt.step()
        return loss, kld
    return [p for m in (fc1, fc21, fc22, fc3, fc4) for p in m.parameters()], step


def _vae_run(fuse, steps=100):
    params, step = _vae()
    f = step if fuse is None else tg.compile(step, fuse=fuse)
    tg.manual_seed(3)
    data = [tg.rand(8, 12) for _ in range(steps)]
    tg.manual_seed(4)
    losses = [_arrays(f(x)) for x in data]
    return losses, [p.data.copy() for p in params], f


def test_a_vae_step_fused_is_bitwise_eager_over_100_steps_and_approx_stays_close():
    le, pe, _ = _vae_run(None)
    lc, pc, f = _vae_run(True)
    assert f.replays == 99 and _lengths(f) == _expected([3])  # 1 + logvar - mu * mu
    assert all(_same(a, b) for a, b in zip(le, lc)) and _same(pe, pc)
    la, pa, fa = _vae_run("approx")
    assert _lengths(fa) == _expected([4, 6])  # z, and the KL term with its sum
    # the first replay starts from eager's state: its results differ by the exps' few ulps, carried on by the
    # arithmetic after them (the KL term subtracts nearly equal numbers, so a relative bound, not ulps)
    assert all(np.allclose(a, b, rtol=1e-5, atol=0) for a, b in zip(le[1], la[1]))
    # then the parameters drift apart as any two roundings of a training run do: slowly
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(pe, pa))


def test_a_fused_loop_that_differs_from_its_ops_is_caught_on_its_first_replay():
    if not NUMBA_ON:
        pytest.skip("without Numba nothing is fused")
    f = tg.compile(_chain)
    inputs = _inputs(2)
    f(*inputs[0])  # records
    (run,) = _runs(f)
    right = run._compile()
    compile_fusion._kernels[run.source] = lambda n, *arrays: right(n, *arrays[:-1], arrays[-1] * 2)  # b + 2 for b + 1
    run.kernel = None
    try:
        with pytest.raises(RuntimeError, match="a fused loop differs from its 11 ops run one by one"):
            f(*inputs[1])
    finally:
        compile_fusion._kernels[run.source] = right


def test_check_passes_on_a_fused_program():
    f = tg.compile(_chain, check=2)
    for args in _inputs(4):
        f(*args)
    assert _lengths(f) == _expected([11])


def test_fuse_must_be_true_false_or_approx_and_approx_refuses_check():
    with pytest.raises(ValueError, match=r"tinygen.compile: fuse must be True, False or 'approx', got 'fast'"):
        tg.compile(_chain, fuse="fast")
    assert tg.compile(fuse=False)(_chain).fuse is False
    with pytest.raises(ValueError, match=r"tinygen.compile: check compares replays with eager bit for bit"):
        tg.compile(_chain, check=True, fuse="approx")


# ---- on the GPU: one CuPy elementwise kernel per run (the stand-in for CuPy runs the same C on NumPy) -------------
@pytest.fixture
def cuda():
    with _on("cuda"):
        yield "cuda"


def test_on_cuda_a_run_is_one_elementwise_kernel_built_and_checked_when_recorded(cuda, monkeypatch):
    f = tg.compile(_chain)
    inputs = _inputs(4, device=cuda)
    first = _arrays(f(*inputs[0]))
    (run,) = _runs(f)
    assert run.device and run.kernel is not None  # compiled and checked at record time, never in a capture
    lines = run.source.splitlines()
    assert lines[:3] == ["T v0 = x0 * x1;", "T v1 = x2 / s0;", "T v2 = v0 + v1;"] and "T v7 = fabs(v6);" in lines
    assert [line for line in lines if not line.startswith("T ")] == ["o0 = v2;", "o1 = v10;"]  # h and y/(b + 1)
    if backend.array_module("cuda") is backend.standin:
        assert run.kernel.options == ("--fmad=false",)
    listing = f.explain(sources=True).splitlines()
    at = next(i for i, line in enumerate(listing) if "fused     11 ops" in line)
    assert listing[at].endswith("on (6, 5) float32: one CuPy kernel")
    assert [line.strip() for line in listing[at + 1:at + 1 + len(lines)]] == lines  # the CUDA code under it
    assert "T v0" not in f.explain()
    monkeypatch.setattr(run, "unfused", lambda: pytest.fail("a replay ran the ops one by one"))
    assert _same(first, _arrays(_chain(*inputs[0])))
    assert all(_same(_arrays(f(*args)), _arrays(_chain(*args))) for args in inputs[1:])


def test_on_cuda_runs_are_fused_without_numba(cuda):
    with kernels.enabled_as(False):
        (eager, unfused, fused), f = _three_ways(_chain, _inputs(3, device=cuda))
    assert _lengths(f) == [11]
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))


def test_a_cuda_kernel_that_cannot_be_built_warns_and_its_ops_run_one_by_one(cuda, monkeypatch):
    def failing(*args):
        raise RuntimeError("nvrtc: error: no such function")
    monkeypatch.setattr(compile_fusion, "_device_kernel", failing)
    inputs = _inputs(3, device=cuda)
    f = tg.compile(_chain)
    with pytest.warns(RuntimeWarning, match=r"could not build a fused kernel \(RuntimeError: nvrtc: error"):
        f(*inputs[0])
    assert _runs(f) == []
    assert all(_same(_arrays(f(*args)), _arrays(_chain(*args))) for args in inputs)


def test_a_cuda_kernel_that_differs_from_its_ops_warns_and_they_run_one_by_one(cuda, monkeypatch):
    build = compile_fusion._device_kernel

    def off_by_one_ulp(*args):
        kernel = build(*args)

        def call(*arrays):
            out = kernel(*arrays)
            last = arrays[-1]
            last[...] = last * (1 + np.finfo(last.dtype).eps)  # y / (b + 1), a little off
            return out
        return call
    monkeypatch.setattr(compile_fusion, "_device_kernel", off_by_one_ulp)
    inputs = _inputs(3, device=cuda)
    f = tg.compile(_chain)
    with pytest.warns(RuntimeWarning, match="a fused kernel differs from its 11 ops run one by one"):
        f(*inputs[0])
    assert _runs(f) == []
    assert all(_same(_arrays(f(*args)), _arrays(_chain(*args))) for args in inputs)


def test_a_cuda_run_on_a_parameter_the_step_then_updates_is_checked_on_what_it_reads(cuda):
    """The check when recorded runs the kernel and the ops' declarations on the same operands (here after the
    optimizer has moved the parameter the run reads): it passes, and replays equal eager over the steps."""
    def make():
        w = tg.tensor(np.linspace(0.5, 1.5, 30, dtype=np.float32).reshape(6, 5), requires_grad=True, device=cuda)
        opt = tg.optim.SGD([w], lr=0.1)

        def step(a, b, c):
            opt.zero_grad()
            y = (w * a + b) * 0.5 - c  # reads w
            loss = (y * y).sum()
            loss.backward()
            opt.step()
            return loss, y
        return w, step
    inputs = _inputs(5, device=cuda)
    results = []
    for compiled in (False, True):
        w, step = make()
        f = tg.compile(step) if compiled else step
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            results.append([_arrays(f(*args)) for args in inputs] + [_arrays(w)])
    assert [[s[1][0].__name__ for s in r.steps] for r in _runs(f)] == [["Mul", "Add", "Mul", "Sub", "Mul"]]  # y * y too
    assert any(t is w for t in _runs(f)[0].arrays)
    assert all(_same(e, c) for e, c in zip(*results))


# ---- the backward of a run -------------------------------------------------------------------------------------------
def _backward_setup(dtype, device="cpu"):
    rng = np.random.default_rng(5)
    w = tg.tensor(rng.uniform(0.5, 2.0, (6, 5)).astype(dtype), requires_grad=True, device=device)
    v = tg.tensor(rng.uniform(0.5, 2.0, (6, 5)).astype(dtype), requires_grad=True, device=device)

    def step(a, b):
        h = w @ a  # a product before the run: its node takes the run's gradient from a register
        y = (h * h - v * 0.5) / (h + b).sqrt() + (h * b).exp() * 0.25  # h used four times: its sums in order
        loss = y.sum()  # the run's upstream gradient is one value broadcast: a scalar of the loop
        loss.backward()
        return loss
    return (w, v), step


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_backward_chain_is_one_loop_bitwise_eager(dtype, device):
    outs = []
    rng = np.random.default_rng(6)
    with _on(device):
        inputs = [(tg.tensor(rng.uniform(0.1, 0.5, (5, 5)).astype(dtype), device=device),
                   tg.tensor(rng.uniform(0.5, 1.0, (6, 5)).astype(dtype), device=device)) for _ in range(4)]
        for fuse in (None, False, True):
            (w, v), step = _backward_setup(dtype, device)
            f = step if fuse is None else tg.compile(step, fuse=fuse)
            outs.append([])
            for args in inputs:
                w.grad = v.grad = None
                outs[-1].append(_arrays(f(*args)) + _arrays((w.grad, v.grad)))
    eager, unfused, fused = outs
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))
    runs = _backward_runs(f)
    if _fuses(device):
        (run,) = runs  # then v * 0.5's node (a leaf's gradient) and h * h's (one node): not in it
        assert [n.name().removesuffix("Backward") for n in run.nodes] == ["Add", "Mul", "Exp", "Mul", "Div", "Sqrt",
                                                                          "Add", "Sub"]
        assert len(run.outputs) == 3  # h's sum so far, h * h's, v * 0.5's
        assert run.device == (device != "cpu")
        listing = f.explain(sources=True).splitlines()  # the backward's fused code under its line
        at = listing.index(" " * 18 + run.name() + ":")
        assert "backward" in listing[at - 1] and listing[at + 1].strip() == (
            "T v0 = x0;" if run.device else "def fused(n, o0, o1, o2, x0, x1, x2, x3, x4, x5, x6, s0, s1):")
        assert run.kernel is not None if run.device else len(run.kernels) == 1  # on the CPU one mix of kinds
        replay_backward = compile_steps.replay_backward
        (plan,) = [operands[0] for p in f._programs.values() for r, operands in p.steps if r is replay_backward]
        nodes = plan.nodes()  # what the CUDA graphs' segments keep the state of: the fused run's nodes too
        assert all(any(n is m for m in nodes) for n in run.nodes) and not any(n is run for n in nodes)
        assert "fused(AddBackward, MulBackward" in f.explain()
    else:
        assert runs == []


_GRAD_OPS = (lambda x, y: x + y, lambda x, y: x - y, lambda x, y: x * y, lambda x, y: x / (abs(y) + 0.5),
             lambda x, y: -x, lambda x, y: (abs(x) + 0.25).sqrt(), lambda x, y: x * 0.75, lambda x, y: 1.5 - y,
             lambda x, y: (x * 0.25).exp(), lambda x, y: (abs(x) + 0.5).log())


@given(st.lists(st.tuples(st.integers(0, len(_GRAD_OPS) - 1), st.integers(0, 99), st.integers(0, 99)), min_size=3,
                max_size=10), st.sampled_from([np.float32, np.float64]), st.booleans(),
       st.sampled_from(["cpu", "cuda"]))
def test_random_backward_chains_fused_are_bitwise_eager(program, dtype, upstream_array, device):
    """Random chains of ops on a product's output, their sum (a broadcast upstream gradient) or their product with
    an array (an array one) differentiated: the weight's gradient fused equals eager's bit for bit, on the CPU and
    on "cuda"."""
    with _on(device):
        _random_backward_chain(program, dtype, upstream_array, device)


def _random_backward_chain(program, dtype, upstream_array, device):
    rng = np.random.default_rng(7)
    w = tg.tensor(rng.uniform(-1.0, 1.0, (4, 3)).astype(dtype), requires_grad=True, device=device)
    c = tg.tensor(rng.uniform(-1.0, 1.0, (4, 2)).astype(dtype), device=device)

    def step(a):
        values = [w @ a]
        for op, i, j in program:
            values.append(_GRAD_OPS[op](values[i % len(values)], values[j % len(values)]))
        out = values[-1] + values[-2] * 0.5
        (out * c if upstream_array else out).sum().backward()
        return out
    inputs = [tg.tensor(rng.uniform(-1.0, 1.0, (3, 2)).astype(dtype), device=device) for _ in range(3)]
    grads = []
    for f in (step, tg.compile(step, fuse=False), tg.compile(step)):
        grads.append([])
        for a in inputs:
            w.grad = None
            grads[-1].append(_arrays(f(a)) + _arrays(w.grad))
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(*grads))


def test_a_backward_loop_that_differs_from_its_nodes_is_caught_on_its_first_call(monkeypatch):
    if not NUMBA_ON:
        pytest.skip("without Numba nothing is fused")
    (w, v), step = _backward_setup(np.float32)
    f = tg.compile(step)
    args = (tg.rand(5, 5), tg.rand(6, 5))
    f(*args)
    f(*args)  # the first replay: the loops are compiled (and checked)
    (run,) = _backward_runs(f)
    run.kernels.clear()  # compiled again at the next call, wrong: one value off
    make = compile_fusion._numba_loop
    monkeypatch.setattr(compile_fusion, "_numba_loop", lambda source: (
        lambda n, *arrays: (make(source)(n, *arrays), arrays[0].reshape(-1).__setitem__(0, 7.0))))
    with pytest.raises(RuntimeError, match="a fused backward loop differs from its 8 nodes run one by one"):
        f(*args)


def test_a_backward_run_whose_operands_are_laid_out_otherwise_runs_its_nodes_one_by_one():
    """An upstream gradient that is neither C-contiguous nor one value broadcast (here a transposed one, from the
    product after the run) runs the nodes one by one: the same bits as eager."""
    rng = np.random.default_rng(8)
    w = tg.tensor(rng.uniform(0.5, 1.5, (5, 5)).astype(np.float32), requires_grad=True)
    c = tg.tensor(rng.uniform(0.5, 1.5, (5, 5)).astype(np.float32))

    def step(a):
        y = ((w @ a) * 0.5 + 1.0).sqrt() - a * 2.0
        (y.t() @ c).sum().backward()
        return y
    inputs = [tg.tensor(rng.uniform(0.5, 1.5, (5, 5)).astype(np.float32)) for _ in range(3)]
    grads = []
    for f in (step, tg.compile(step)):
        grads.append([])
        for a in inputs:
            w.grad = None
            f(a)
            grads[-1].append(w.grad.numpy().copy())
    assert all(np.array_equal(a, b) for a, b in zip(*grads))
    runs = _backward_runs(f)
    assert all(run.kernels == {} for run in runs) and len(runs) == (1 if NUMBA_ON else 0)


def test_a_backward_run_falls_back_when_numba_is_switched_off():
    if not NUMBA_ON:
        pytest.skip("without Numba nothing is fused")
    (w, v), step = _backward_setup(np.float64)
    f = tg.compile(step)
    args = (tg.rand(5, 5, dtype=tg.float64), tg.rand(6, 5, dtype=tg.float64))
    f(*args)
    w.grad = None
    with kernels.enabled_as(False):
        f(*args)
    fused_off = w.grad.numpy().copy()
    (w2, v2), step2 = _backward_setup(np.float64)
    with kernels.enabled_as(False):
        step2(*args)
    assert np.array_equal(fused_off, w2.grad.numpy())
    (run,) = _backward_runs(f)
    assert run.kernels == {}  # never compiled: the nodes ran one by one


def test_on_cuda_a_backward_run_is_one_kernel_built_and_checked_when_recorded(cuda, monkeypatch):
    (w, v), step = _backward_setup(np.float32, cuda)
    f = tg.compile(step)
    args = (tg.rand(5, 5, device=cuda), tg.rand(6, 5, device=cuda))
    f(*args)
    (run,) = _backward_runs(f)
    assert run.device and run.kernel is not None  # compiled and checked at record time, never in a capture
    lines = run.source_on_device.splitlines()
    assert lines[0] == "T v0 = x0;" and "T v7 = v6 / (x7 + x7);" in lines and lines[-3:] == [  # x0: the sum's gradient
        "o0 = v9;", "o1 = v10;", "o2 = v11;"]
    monkeypatch.setattr(run, "unfused", lambda *a: pytest.fail("a replay ran the nodes one by one"))
    for _ in range(2):
        w.grad = v.grad = None
        f(*args)
    fused = _arrays((w.grad, v.grad))
    (w2, v2), step2 = _backward_setup(np.float32, cuda)
    step2(*args)
    assert _same(fused, _arrays((w2.grad, v2.grad)))


def test_a_cuda_backward_kernel_that_cannot_be_built_or_differs_warns_and_its_nodes_run_one_by_one(cuda,
                                                                                                    monkeypatch):
    build = compile_fusion._device_kernel

    def failing(*args):
        raise RuntimeError("nvrtc: error: no such function")

    def off_by_one_ulp(*args):
        kernel = build(*args)

        def call(*arrays):
            out = kernel(*arrays)
            last = arrays[-1]
            last[...] = last * (1 + np.finfo(last.dtype).eps)
            return out
        return call
    args = (tg.rand(5, 5, device=cuda), tg.rand(6, 5, device=cuda))
    for wrong, message in ((failing, r"could not build a fused backward kernel \(RuntimeError: nvrtc"),
                           (off_by_one_ulp, "a fused backward kernel differs from its 8 nodes' statements")):
        (w, v), step = _backward_setup(np.float32, cuda)
        with monkeypatch.context() as m:
            m.setattr(compile_fusion, "_device_kernel", lambda *a, wrong=wrong, built=set(): (
                wrong(*a) if "o2 = v11;" in a[-1] else build(*a)))  # the backward's kernel only
            f = tg.compile(step)
            with pytest.warns(RuntimeWarning, match=message):
                f(*args)
        assert _backward_runs(f) == []
        w.grad = v.grad = None
        f(*args)
        (w2, v2), step2 = _backward_setup(np.float32, cuda)
        step2(*args)
        assert _same(_arrays((w.grad, v.grad)), _arrays((w2.grad, v2.grad)))


def test_a_backward_run_that_saved_nothing_is_fused_on_both_devices(device):
    """Add, Sub and Neg save nothing: the run's only operands are the gradients passed in."""
    with _on(device):
        rng = np.random.default_rng(9)
        w = tg.tensor(rng.uniform(-1.0, 1.0, (4, 3)).astype(np.float32), requires_grad=True, device=device)
        b = tg.tensor(rng.uniform(-1.0, 1.0, (4, 2)).astype(np.float32), device=device)

        def step(a):
            h = w @ a
            (-((h + b) - b) + h).sum().backward()
        a = tg.tensor(rng.uniform(-1.0, 1.0, (3, 2)).astype(np.float32), device=device)
        grads = []
        for f in (step, tg.compile(step)):
            for _ in range(2):
                w.grad = None
                f(a)
            grads.append(_arrays(w.grad))
    assert _same(*grads)
    runs = _backward_runs(f)
    assert len(runs) == (1 if _fuses(device) else 0) and all(r.operands == [("register", r.consumed[0])]
                                                             for r in runs)


# ---- a run that ends in a sum ----------------------------------------------------------------------------------
def _numpy_order_sum(a, zero):
    """A sum of the flat values in the order of ``pairwise_plan`` and ``block_sum``, in plain Python."""
    stack = []
    for lo, m in compile_fusion.pairwise_plan(a.size):
        if m == 0:
            right = stack.pop()
            stack.append(stack.pop() + right)
        else:
            stack.append(compile_fusion.block_sum(a[lo:lo + m], m, zero))
    return zero + stack[0]


@given(st.integers(1, 3000), st.sampled_from([np.float32, np.float64]), st.integers(0, 3))
def test_the_fused_sums_order_is_numpys_bit_for_bit(n, dtype, special):
    """Would fail with another split (half of n not rounded down to a multiple of 8), another block size, another
    pairing of the eight running sums, or a sum not started from zero (a sum of -0.0 is +0.0 in NumPy)."""
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
    if special == 1:
        a[:] = -0.0
    elif special == 2:
        a[rng.integers(0, n)] = np.inf
    want = a.sum()
    got = dtype(_numpy_order_sum(a, dtype(0)))
    assert got.tobytes() == want.tobytes(), (n, got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (2000,), (40, 50), (3, 1, 7)])
def test_a_run_ending_in_a_sum_is_one_kernel_bitwise_eager_with_its_backward(dtype, shape, device):
    """(2000,) and (40, 50): 2,000 values, a tree of 32 blocks. On the GPU the sum is one reduction kernel when the
    run writes nothing else, here: w's product saves w and the input, the rest save nothing."""
    rng = np.random.default_rng(3)
    w = tg.tensor(rng.uniform(-1, 1, shape).astype(dtype), requires_grad=True, device=device)

    def step(a, b, c):
        w.grad = None
        loss = ((w * a + b) - c * 0.5).sum()
        loss.backward()
        return loss, (a + b * c - a).sum(dim=tuple(range(len(shape))), keepdim=True)
    inputs = [tuple(tg.tensor(rng.uniform(-2, 2, shape).astype(dtype), device=device) for _ in range(3))
              for _ in range(4)]
    outs = []
    for f in (step, tg.compile(step, fuse=False), tg.compile(step)):
        outs.append([_arrays(f(*args)) + _arrays(w.grad) for args in inputs])
    eager, unfused, fused = outs
    assert all(_same(e, u) and _same(e, z) for e, u, z in zip(eager, unfused, fused))
    assert eager[0][1].shape == (1,) * len(shape)
    assert _lengths(f) == _expected([5, 4], device)  # each run with its sum
    if _fuses(device):
        assert all(run.total is not None and run.outputs == [] for run in _runs(f))  # only the sums are written
        assert all(("tinygen_summed" in run.source) is (device == "cuda") for run in _runs(f))


def test_a_sum_of_a_value_the_run_also_writes_is_in_the_loop_on_numpy_and_after_the_kernel_on_cuda(device):
    """The products save their inputs: the run writes w + a and h, and the sum of the last value; a CuPy
    reduction kernel cannot write them, so there the run is an elementwise kernel and the sum its own step."""
    rng = np.random.default_rng(5)
    w = tg.tensor(rng.uniform(-1, 1, (6, 5)).astype(np.float32), requires_grad=True, device=device)

    def step(a, b, c):
        w.grad = None
        h = (w + a) * b - c
        loss = (h * h).sum()
        loss.backward()
        return loss
    inputs = _inputs(3, device=device)
    want = [_arrays(step(*args)) + _arrays(w.grad) for args in inputs]
    f = tg.compile(step)
    got = [_arrays(f(*args)) + _arrays(w.grad) for args in inputs]
    assert all(_same(x, y) for x, y in zip(want, got))
    if device == "cpu":
        assert _lengths(f) == _expected([5])
        assert NUMBA_ON is False or len(_runs(f)[0].outputs) == 2  # w + a and h: the products save them
    else:
        assert _lengths(f) == [4] and _runs(f)[0].total is None
        assert "forward   Sum" in f.explain()


def test_on_numpy_a_sum_of_more_than_sum_max_size_values_stays_numpys():
    f = tg.compile(lambda a, b, c: ((a * b + c) * 0.5).sum())
    big = compile_fusion.SUM_MAX_SIZE + 1
    for shape, fused_sum in (((compile_fusion.SUM_MAX_SIZE,), True), ((big,), False)):
        args = _inputs(1, shape=shape)[0]
        assert _same(_arrays(f(*args)), _arrays(((args[0] * args[1] + args[2]) * 0.5).sum()))
    assert _lengths(f) == _expected([4, 3])
    assert [run.total is not None for run in _runs(f)] == _expected([True, False])


def test_a_cuda_sum_kernel_beyond_its_rounding_bound_warns_and_its_ops_run_one_by_one(cuda, monkeypatch):
    """Within n * eps * sum(|v|) of the ops one by one passes (a GPU adds in another order); more does not."""
    build = compile_fusion._device_kernel
    error = {"scale": 0.0}

    def off(*args):
        kernel = build(*args)
        return lambda *operands: kernel(*operands) * (1 + error["scale"])
    monkeypatch.setattr(compile_fusion, "_device_kernel", off)
    step = lambda a, b, c: (a * b + c - a).sum()  # noqa: E731
    inputs = _inputs(3, device=cuda)  # values in [0.5, 2]: sum(|v|) is the sum
    eps, n = np.finfo(np.float32).eps, 30
    error["scale"] = 0.5 * n * eps  # half the bound: accepted
    f = tg.compile(step)
    f(*inputs[0])
    assert _lengths(f) == [4] and _runs(f)[0].total is not None
    error["scale"] = 2 * n * eps
    g = tg.compile(step)
    with pytest.warns(RuntimeWarning, match=r"a fused sum kernel gives .* where its 4 ops run one by one give"):
        g(*inputs[0])
    assert _runs(g) == []
    assert all(_same(_arrays(g(*args)), _arrays(step(*args))) for args in inputs)


def test_the_stand_in_reduction_kernel_runs_the_generated_sum_and_refuses_anything_else(cuda):
    preamble = "template <typename T>\n__device__ T f(T x0, T s0) {\n    T v0 = x0 * s0;\n    return v0;\n}\n"
    xp = backend.array_module("cuda")
    kernel = xp.ReductionKernel("T x0, T s0", "T y", "f(x0, s0)", "a + b", "y = a", "0", "k", reduce_type="T",
                                preamble=preamble)
    x = tg.tensor(np.arange(6, dtype=np.float32), device="cuda").data
    assert float(xp.asnumpy(kernel(x, np.float32(2)))) == 30.0
    with pytest.raises(ValueError, match="only a sum of f"):
        xp.ReductionKernel("T x0, T s0", "T y", "f(x0, s0)", "max(a, b)", "y = a", "0", "k", preamble=preamble)
    with pytest.raises(ValueError, match="one template function"):
        xp.ReductionKernel("T x0", "T y", "x0", "a + b", "y = a", "0", "k")


# ---- a layer and the activation after it as one node --------------------------------------------------------------
def _functional_mlp(act, last_out=10, returns_hidden=False):
    tg.manual_seed(0)
    nn = tg.nn
    fc1, fc2, fc3 = nn.Linear(12, 16), nn.Linear(16, last_out), nn.Linear(last_out, 3)
    opt = tg.optim.Adam([p for m in (fc1, fc2, fc3) for p in m.parameters()], lr=1e-2)

    def step(x):
        opt.zero_grad()
        pre = fc1(x)
        h = act(pre)
        g = act(fc2(h))
        loss = (fc3(g) * fc3(g)).mean()
        loss.backward()
        opt.step()
        return (loss, pre) if returns_hidden else loss
    return [p for m in (fc1, fc2, fc3) for p in m.parameters()], step


_ACTS = {"relu": (lambda h: tg.nn.functional.relu(h), "ReLU"),
         "leaky_relu": (lambda h: tg.nn.functional.leaky_relu(h, 0.2), "LeakyReLU")}


@pytest.mark.parametrize("act", list(_ACTS))
def test_a_linear_then_relu_written_functionally_runs_as_one_node_bitwise_eager(act):
    """F.relu(fc(x)) in a compiled step runs as nn.Sequential(fc, nn.ReLU()) does (LinearActFunction): the same
    bits as eager over 20 Adam steps, values and parameters."""
    fn, title = _ACTS[act]
    results = []
    for compiled in (False, True):
        params, step = _functional_mlp(fn)
        f = tg.compile(step) if compiled else step
        rng = np.random.default_rng(1)
        results.append([_arrays(f(tg.tensor(rng.standard_normal((8, 12)).astype(np.float32)))) for _ in range(20)]
                       + [_arrays(params)])
    assert all(_same(a, b) for a, b in zip(*results))
    listing = f.explain()
    assert listing.count(f"forward   Linear+{title} ->") == 2 and "forward   Relu" not in listing
    assert f"Linear+{title}Backward, Linear+{title}Backward" in listing  # the plan runs the fused nodes
    unfused = tg.compile(_functional_mlp(fn)[1], fuse=False)
    unfused(tg.randn(8, 12))
    assert "Linear+" not in unfused.explain()


def test_a_linear_then_relu_stays_two_nodes_where_one_would_differ_or_the_output_is_used_elsewhere():
    """One output feature (the bias gradient's single column NumPy sums pairwise), the first layer's output
    returned (used outside the pair), and tanh (not bitwise when fused)."""
    relu = tg.nn.functional.relu
    cases = [(_functional_mlp(relu, last_out=1)[1], 1), (_functional_mlp(relu, returns_hidden=True)[1], 1),
             (_functional_mlp(tg.tanh)[1], 0)]
    for step, fused in cases:
        f = tg.compile(step, check=2)  # replays side by side with eager: any difference raises
        for _ in range(3):
            f(tg.randn(8, 12))
        assert f.explain().count("forward   Linear+") == fused


def test_a_linear_then_relu_without_gradients_is_one_node_too():
    lin = tg.nn.Linear(6, 5)
    f = tg.compile(lambda x: tg.nn.functional.relu(lin(x)) * 2)
    with tg.no_grad():
        outs = [(f(x).data, tg.nn.functional.relu(lin(x)).data * 2) for x in (tg.randn(4, 6) for _ in range(3))]
    assert all(np.array_equal(a, b) for a, b in outs)
    assert "forward   LinearAct ->" in f.explain()
