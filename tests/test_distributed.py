"""Data parallelism: two MPI processes against one (tests/distributed_cases.py under ``mpiexec -n 2``), and the
world-of-one behaviour, the sampler and the engine's hooks in this process.

The MPI cases need ``mpiexec`` and mpi4py (``pip install -e ".[mpi]"``); without them they are skipped with that
reason, unless TINYGEN_REQUIRE_MPI=1 (set by .ci/run), where a missing MPI fails. Each launch is bounded by a
timeout. The cases run with TINYGEN_NUMBA=0: both sides of every comparison use the same kernels, and two
processes compiling every Numba kernel would take most of the time budget on a 2-core machine.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tinygen as tg
from tinygen import autograd, distributed as dist, nn
from tinygen.data import DistributedSampler
from tinygen.nn.parallel import DistributedDataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(ROOT, "tests", "distributed_cases.py")
LAUNCH_TIMEOUT = 120


def _mpiexec():
    """The launcher command (with the options this machine needs), or None with the reason it is missing."""
    exe = shutil.which("mpiexec")
    if exe is None or importlib.util.find_spec("mpi4py") is None:
        return None, "needs mpiexec and mpi4py: pip install -e '.[mpi]'"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    # Open MPI refuses more ranks than cores without --oversubscribe (MPICH's Hydra allows it by default)
    return ([exe, "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else [exe]), None


def launch(case, n=2, timeout=LAUNCH_TIMEOUT, args=()):
    cmd, reason = _mpiexec()
    if cmd is None:
        if os.environ.get("TINYGEN_REQUIRE_MPI") == "1":
            pytest.fail(f"TINYGEN_REQUIRE_MPI=1 but MPI is missing: {reason}")
        pytest.skip(reason)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TINYGEN_NUMBA="0",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    start = time.monotonic()
    proc = subprocess.Popen(cmd + ["-n", str(n), sys.executable, CASES, case, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank it started
        out, err = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {case} did not finish within {timeout} s\n{out}\n{err}")
    return proc.returncode, out, err, time.monotonic() - start


@pytest.mark.parametrize("case", ["collectives", "device", "classifier", "conv", "vae", "wgan_gp", "no_sync",
                                  "unused_parameter", "sampler", "sync_batch_norm", "dropout_streams", "compiled"])
def test_two_ranks(case):
    rc, out, err, _ = launch(case)
    assert rc == 0, f"{case} failed on 2 ranks (exit {rc})\n{out}\n{err}"
    assert sorted(line for line in out.splitlines() if line.startswith("OK")) == \
        [f"OK {case} rank 0", f"OK {case} rank 1"], out


def test_two_ranks_on_cuda():
    """DistributedDataParallel on real CuPy arrays (NCCL, or host staging where the ranks share one GPU)."""
    if not tg.backend.is_available("cuda") or tg.backend.array_module("cuda") is tg.backend.standin:
        pytest.skip("needs a GPU and CuPy")
    test_two_ranks("gpu")


def test_a_rank_that_raises_ends_the_job_with_its_error():
    rc, out, err, seconds = launch("rank_raises", timeout=60)
    assert rc != 0
    assert "[rank 1/2]" in err and "RuntimeError: deliberate failure on rank 1 at step 2" in err, err
    assert "rank 0 finished" not in err  # rank 0 was stopped while waiting for rank 1, not left to run on
    assert seconds < 30, f"the job took {seconds:.0f} s to end after a rank failed"


# ---- the trainers: mpiexec -n 2 tinygen train ... against one process --------------------------------------------
# per model (tests/distributed_cases.py case_train): the tolerance of its parameters. The ranks add their halves of
# each gradient in another order than one process does. float64 (classifier, GANs): ~1e-12, except gan_gp, whose
# generator has a bias in front of a BatchNorm: its exact gradient is 0, so it gets rounding noise only, which Adam
# scales up to steps of up to lr (1e-11 after 8 steps). float32 (vae): a few ulps after 10 Adam steps.
TRAINER_TOLERANCE = {"classifier": (1e-12, 1e-12), "gan": (1e-12, 1e-12), "dcgan": (1e-12, 1e-12),
                     "gan_gp": (1e-10, 1e-10), "vae": (1e-5, 1e-6)}
TRAINERS = list(TRAINER_TOLERANCE)


def train_run(model, out, n, epochs, mode="fresh", compile="compiled"):
    rc, stdout, err, _ = launch("train", n=n, args=(model, out, epochs, mode, compile))
    assert rc == 0, f"train {model} on {n} rank(s) failed (exit {rc})\n{stdout}\n{err}"
    return stdout


def compare_runs(model, got, want):
    """The same files, checkpoint parameters, optimizer state and logged metrics in two run folders."""
    rtol, atol = TRAINER_TOLERANCE[model]
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    a, b = tg.load(got / "checkpoint.npz"), tg.load(want / "checkpoint.npz")
    assert a["epoch"] == b["epoch"] and a["config"] == b["config"]
    assert list(a["modules"]) == list(b["modules"]) and a["loaders"] == b["loaders"]
    for name in b["modules"]:
        for key, value in b["modules"][name].items():
            np.testing.assert_allclose(a["modules"][name][key].numpy(), value.numpy(), rtol=rtol, atol=atol,
                                       err_msg=f"{name} {key}")
    for log in sorted(p.name for p in want.glob("*.jsonl")):
        lines = [[json.loads(line) for line in (run / log).read_text().splitlines()] for run in (got, want)]
        assert len(lines[0]) == len(lines[1]), log  # one writer: no line twice
        for r, s in zip(*lines):
            assert sorted(r) == sorted(s), log
            for key in r:
                if isinstance(s[key], str) or isinstance(s[key], bool):  # "inf" is written as text
                    assert r[key] == s[key], f"{log} {key}"
                elif key not in ("seconds", "steps_per_s", "images_per_s"):
                    np.testing.assert_allclose(r[key], s[key], rtol=max(rtol, 1e-7), err_msg=f"{log} {key}")


@pytest.mark.parametrize("model", TRAINERS)
def test_trainer_on_two_ranks_equals_one_process(model, tmp_path):
    alone, parallel = tmp_path / "alone", tmp_path / "parallel"
    train_run(model, alone, 1, 2)
    stdout = train_run(model, parallel, 2, 2)
    compare_runs(model, parallel, alone)
    # only rank 0 prints the epoch lines (and the progress bar on stderr)
    assert sum(line.startswith("epoch ") for line in stdout.splitlines()) == 2, stdout
    if model.startswith("gan"):  # the unwrapped modules' keys, as a single-process checkpoint has them
        assert not any(k.startswith("module.") for k in tg.load(parallel / "checkpoint.npz")["modules"]["generator"])
    if model == "classifier":
        final = tg.load(parallel / "final.npz")["modules"]["model"]
        ckpt = tg.load(parallel / "checkpoint.npz")["modules"]["model"]
        assert all(np.array_equal(final[k].numpy(), ckpt[k].numpy()) for k in ckpt)


@pytest.mark.parametrize("model", TRAINERS)
def test_trainer_resumes_on_two_ranks(model, tmp_path):
    alone, parallel = tmp_path / "alone", tmp_path / "parallel"
    train_run(model, alone, 1, 2)
    train_run(model, parallel, 2, 2, mode="first")
    assert [json.loads(line)["epoch"] for line in (parallel / "metrics.jsonl").read_text().splitlines()] == [1]
    train_run(model, parallel, 2, 2, mode="resume")
    compare_runs(model, parallel, alone)


@pytest.mark.parametrize("model", TRAINERS + ["classifier_dropout", "gan_dropout"])
def test_compiled_trainer_on_two_ranks_equals_eager(model, tmp_path):
    """The trainers compile their step under mpiexec too: bitwise the eager 2-rank run's checkpoint (parameters,
    optimizer states, every rank's random stream) and metrics."""
    compiled, eager = tmp_path / "compiled", tmp_path / "eager"
    replays = [int(line.split()[1]) for run in (train_run(model, compiled, 2, 2),
                                                train_run(model, eager, 2, 2, compile="eager"))
               for line in run.splitlines() if line.startswith("REPLAYS")]
    assert len(replays) == 2 and replays[0] >= 3 and replays[1] == 0, replays  # 2 epochs of 5 steps (GAN: 3)
    _assert_same_tree(tg.load(compiled / "checkpoint.npz"), tg.load(eager / "checkpoint.npz"))
    for log in sorted(p.name for p in eager.glob("*.jsonl")):
        lines = [[json.loads(line) for line in (run / log).read_text().splitlines()] for run in (compiled, eager)]
        strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "steps_per_s", "images_per_s")}  # noqa
        assert [strip(r) for r in lines[0]] == [strip(r) for r in lines[1]], log


def _assert_same_tree(a, b, where="checkpoint"):
    """Two loaded checkpoints hold bitwise the same values (tensors compared by their arrays)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), where
        for k in b:
            if k != "config":
                _assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(b, tg.Tensor):
        assert np.array_equal(a.numpy(), b.numpy()), where
    elif isinstance(b, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(b, float) and where.split("/")[-1] in ("seconds", "steps_per_s", "images_per_s"):
        pass
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("model", ["classifier_dropout", "gan_dropout"])
def test_trainer_with_dropout_resumes_on_two_ranks_bitwise(model, tmp_path):
    """Each rank's own dropout stream is saved in the checkpoint: a run interrupted after its first epoch and
    resumed on 2 ranks ends with bitwise the parameters of the uninterrupted 2-rank run."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_run(model, whole, 2, 2)
    train_run(model, parts, 2, 2, mode="first")
    train_run(model, parts, 2, 2, mode="resume")
    a, b = tg.load(parts / "checkpoint.npz"), tg.load(whole / "checkpoint.npz")
    assert len(b["rng"]["ranks"]) == 2 and b["rng"]["ranks"][0] != b["rng"]["ranks"][1]
    for name in b["modules"]:
        for key, value in b["modules"][name].items():
            assert np.array_equal(a["modules"][name][key].numpy(), value.numpy()), f"{name} {key}"
    assert a["rng"] == b["rng"]


def test_command_line_trains_on_two_ranks(tmp_path):
    """mpiexec -n 2 tinygen train gan ...: one progress report and one set of outputs, from rank 0."""
    args = ["train", "gan", "--data", "ring", "--steps", "4", "--batch-size", "32", "--eval-samples", "64",
            "--threads", "1", "--out", tmp_path / "run"]
    rc, out, err, _ = launch("cli", args=args)
    assert rc == 0, f"{out}\n{err}"
    assert out.count("done: 4 generator steps") == 1 and out.count("GAN (nonsaturating loss)") == 1, out
    assert err.count("gan epoch 1") == 1, err  # the progress bar
    assert tg.load(tmp_path / "run" / "checkpoint.npz")["extra"]["step"] == 4


def test_command_line_refuses_a_global_batch_the_ranks_cannot_share(tmp_path):
    args = ["train", "gan", "--data", "ring", "--steps", "4", "--batch-size", "33", "--out", tmp_path / "run"]
    rc, out, err, seconds = launch("cli", args=args, timeout=60)
    assert rc != 0 and "tinygen: error: --batch-size 33 is the global batch, split over 2 processes: it must be a " \
        "multiple of 2" in err, err
    assert not (tmp_path / "run" / "checkpoint.npz").exists() and seconds < 30


def test_an_error_reported_on_one_rank_ends_the_job():
    """The command line turns an exception into a one-line error and an exit status; under mpiexec it must then
    end the other ranks too (they would wait forever in their next collective)."""
    rc, out, err, seconds = launch("cli_error_on_one_rank", timeout=60)
    assert rc != 0 and "tinygen: error: deliberate error on rank 1" in err, err
    assert "rank 0 passed a collective" not in err and "OK" not in out
    assert seconds < 30, f"the job took {seconds:.0f} s to end after a rank failed"


# ---- a world of one process (this pytest process was not started by an MPI launcher) ------------------------
def test_world_of_one():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main_process() and dist.is_initialized()
    t = tg.tensor([1.0, 2.0])
    assert dist.all_reduce(t, op="mean") is t and t.tolist() == [1.0, 2.0]
    assert dist.broadcast(t).tolist() == [1.0, 2.0]
    dist.barrier()
    assert dist.split_batch(6) == 6 and dist.rank_seed(4) == 4
    x = np.arange(10)
    assert (dist.shard(x) == x).all() and dist.shard((x, x))[1] is x or (dist.shard((x, x))[1] == x).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="all_reduce: op must be one of"):
        dist.all_reduce(tg.tensor([1.0]), op="max")
    with pytest.raises(TypeError, match="all_reduce: expected a tinygen Tensor"):
        dist.all_reduce(np.ones(2))
    with pytest.raises(ValueError, match=r"broadcast: src must be a rank in \[0, 1\)"):
        dist.broadcast(tg.tensor([1.0]), src=1)
    with pytest.raises(ValueError, match="split_batch: global_batch_size must be a positive int"):
        dist.split_batch(0)
    with pytest.raises(ValueError, match="DistributedDataParallel: bucket_cap_mb must be a positive number"):
        DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=0)
    with pytest.raises(TypeError, match="DistributedDataParallel: module must be a tinygen.nn.Module"):
        DistributedDataParallel(lambda x: x)


def test_ddp_in_a_world_of_one_is_the_module():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # 2.bias (8 bytes) + 2.weight (64) + 0.bias (32) fit in 1e-4 MiB (104.9 bytes); 0.weight (128) does not
    assert DistributedDataParallel(model, bucket_cap_mb=1e-4).bucket_sizes == [3, 1]
    ddp = DistributedDataParallel(model, bucket_cap_mb=1e-5)
    assert ddp.bucket_sizes == [1, 1, 1, 1]
    assert ddp._buckets[0].params[0] is model[2].bias  # reverse order of registration
    assert ddp.module is model
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(ddp.state_dict()) == ["module." + k for k in model.state_dict()]
    x = tg.randn(5, 4)
    ddp(x).sum().backward()
    want = [p.grad.data.copy() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for p, w in zip(model.parameters(), want):
        np.testing.assert_array_equal(p.grad.data, w)
    with ddp.no_sync():
        ddp(x).sum().backward()
    for p, w in zip(model.parameters(), want):
        np.testing.assert_allclose(p.grad.data, 2 * w, rtol=1e-6)


def test_sync_batch_norm_in_a_world_of_one_is_batch_norm():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ref.load_state_dict(model.state_dict())
    bn = model[1]
    assert nn.SyncBatchNorm.convert_sync_batchnorm(model) is model
    assert type(model[1]) is nn.SyncBatchNorm and model[1].weight is bn.weight
    assert model[1].running_mean is bn.running_mean
    x = tg.randn(6, 3)
    np.testing.assert_allclose(model(x).data, ref(x).data, rtol=1e-6)
    np.testing.assert_allclose(model[1].running_var.data, ref[1].running_var.data, rtol=1e-6)
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(3))) is nn.SyncBatchNorm


def test_sync_batch_norm_function_matches_batch_norm_and_its_gradients():
    """The SyncBatchNorm op itself (world of one): forward, both backward forms, and a second derivative."""
    from tinygen.ops.sync_batch_norm import sync_batch_norm
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((6, 3, 2)) * 3 + 1, requires_grad=True)
    w = tg.tensor(rng.standard_normal(3), requires_grad=True)
    b = tg.tensor(rng.standard_normal(3), requires_grad=True)
    rm, rv = tg.zeros(3, dtype=tg.float64), tg.ones(3, dtype=tg.float64)
    rm2, rv2 = tg.zeros(3, dtype=tg.float64), tg.ones(3, dtype=tg.float64)
    weight_out = tg.tensor(rng.standard_normal((6, 3, 2)))
    y = sync_batch_norm(x, rm, rv, w, b)
    y_ref = nn.functional.batch_norm(x, rm2, rv2, w, b, training=True)
    np.testing.assert_allclose(y.data, y_ref.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv.data, rv2.data, rtol=1e-12)
    plain = autograd.grad((y * weight_out).sum(), (x, w, b), retain_graph=True)
    graph = autograd.grad((y * weight_out).sum(), (x, w, b), create_graph=True)
    ref = autograd.grad((y_ref * weight_out).sum(), (x, w, b), create_graph=True)
    for p, g, r in zip(plain, graph, ref):
        np.testing.assert_allclose(p.data, r.data, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g.data, r.data, rtol=1e-10, atol=1e-12)
    second = autograd.grad((graph[0] ** 2).sum(), w)[0]
    second_ref = autograd.grad((ref[0] ** 2).sum(), w)[0]
    np.testing.assert_allclose(second.data, second_ref.data, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (9, 3, False), (2, 4, False)])
def test_distributed_sampler_shards(n, replicas, drop_last):
    samplers = [DistributedSampler(list(range(n)), num_replicas=replicas, rank=r, seed=7, drop_last=drop_last)
                for r in range(replicas)]
    orders = set()
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [s.indices() for s in samplers]
        assert len({len(s) for s in shards}) == 1 and all(len(s) == len(samplers[0]) for s in shards)
        seen = np.concatenate(shards)
        if drop_last:
            assert len(seen) == n - n % replicas and len(set(seen.tolist())) == len(seen)
        else:
            assert set(seen.tolist()) == set(range(n)) and len(seen) == -(-n // replicas) * replicas
        orders.add(tuple(seen.tolist()))
        assert list(samplers[0]) == shards[0].tolist()
    assert len(orders) == 3 or n <= 2  # a new order each epoch (two examples have only two orders)
    plain = DistributedSampler(6, num_replicas=2, rank=1, shuffle=False)
    assert plain.indices().tolist() == [1, 3, 5]


def test_distributed_sampler_bad_arguments():
    with pytest.raises(ValueError, match=r"DistributedSampler: rank must be an int in \[0, 2\)"):
        DistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="DistributedSampler: num_replicas must be a positive int"):
        DistributedSampler(10, num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="DistributedSampler: dataset_len_or_dataset must be an int or have len"):
        DistributedSampler(object())
    with pytest.raises(ValueError, match="DistributedSampler.set_epoch: epoch must be an int >= 0"):
        DistributedSampler(10).set_epoch(-1)
    assert len(DistributedSampler(10)) == 10  # a world of one: the whole dataset


# ---- the engine's hooks ----------------------------------------------------------------------------------------
def test_post_accumulate_grad_hook_sees_the_final_gradient_once_per_backward():
    w = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = tg.tensor([1.0], requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda t: seen.append(("w", t.grad.tolist())))
    b.register_post_accumulate_grad_hook(lambda t: seen.append(("b", t.grad.tolist())))
    loss = (w * w).sum() + (w * b).sum() * 2 + b.sum()  # w and b each reached along several paths
    loss.backward()
    assert sorted(seen) == [("b", [13.0]), ("w", [4.0, 6.0, 8.0])]
    seen.clear()
    ((w * 3).sum()).backward()  # accumulated: the hook sees the sum of both backwards
    assert seen == [("w", [7.0, 9.0, 11.0])]
    seen.clear()
    autograd.grad((w * w).sum(), w)  # accumulates nothing: no hook
    (w.sum() + b.sum()).backward(inputs=[w])
    assert seen == [("w", [8.0, 10.0, 12.0])]
    handle.remove()
    seen.clear()
    w.sum().backward()
    assert seen == []


def test_hook_of_a_leaf_that_gets_no_gradient_does_not_run():
    w = tg.tensor([1.0], requires_grad=True)
    u = tg.tensor([1.0], requires_grad=True)
    seen = []
    u.register_post_accumulate_grad_hook(lambda t: seen.append("u"))
    (w * 2).sum().backward()
    (w * u.detach()).sum().backward()
    assert seen == []


def test_queue_callback_runs_after_backward_with_owned_gradients():
    w = tg.tensor([1.0, 2.0], requires_grad=True)
    log = []

    def hook(t):
        log.append("hook")
        autograd.queue_callback(lambda: log.append(("done", t.grad.tolist())))

    w.register_post_accumulate_grad_hook(hook)
    (w * 3).sum().backward()
    assert log == ["hook", ("done", [3.0, 3.0])]
    with pytest.raises(RuntimeError, match="queue_callback: no backward"):
        autograd.queue_callback(lambda: None)
    log.clear()  # in grad() too (which delivers to no .grad): after the whole walk, before it returns
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    h.register_hook(lambda g: autograd.queue_callback(lambda: log.append("done")) or log.append("hook"))
    assert autograd.grad((h * h).sum(), x)[0].tolist() == [8.0, 16.0] and log == ["hook", "done"]
    with pytest.raises(RuntimeError, match="register_post_accumulate_grad_hook: only a leaf"):
        (w * 2).register_post_accumulate_grad_hook(print)


def test_a_hook_that_refers_to_its_leaf_does_not_keep_it_alive():
    import gc
    import weakref

    from tinygen.autograd import engine
    w = tg.tensor([1.0, 2.0], requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda t, w=w: w.grad)  # the hook holds w, as DDP's hooks hold parameters
    (w * 2).sum().backward()
    ref, key = weakref.ref(w), id(w)
    del w
    gc.collect()
    assert ref() is None and key not in engine._post_accumulate_hooks
