"""Per-op dispatch overhead: what one op on tiny (8x8 float32) tensors costs, so the arithmetic is negligible and
what is left is the framework's own work per op (argument checks, graph recording, the backward engine).

Benchmarks (all on the same 8x8 arrays a, b, g):
  add            a + b, nothing requires grad
  add_rec        a + b with a requiring grad (the graph is recorded)
  add_fwd_bwd    c = a + b, then c.backward(g) (grads reset to None each time)
  chain_fwd      20 elementwise ops: five times x = tanh(x * b + a) - b, nothing requires grad
  chain_rec      the same chain with x requiring grad
  chain_fwd_bwd  the chain, then backward(g)
  chain_replay   the chain (nothing requires grad) as a tinygen.compile'd function, replayed, unfused (fuse=False)
  chain_replay_bwd  the chain and backward(g) as a compiled step, replayed unfused (x requires grad; its .grad reset
                 to None each time, as in chain_fwd_bwd): forwards on recorded nodes, the backward as recorded steps
  chain_replay_fused, chain_replay_bwd_fused  the same with tinygen.compile's default fusion: the runs of
                 arithmetic between the tanh calls become generated Numba loops (4 runs of 3 ops: 12 steps for 20)
  chain_replay_approx  the forward with fuse="approx": the whole chain, tanh included, one generated loop
Times are microseconds per op (a chain's time / 20), the best and the median of 25 short timeit repeats,
measured in process CPU time (wall time is kept too).
NumPy's fwd_bwd is the backward written by hand; JAX records no tape, so its eager fwd_bwd is jax.vjp, and
"jax-jit" times the whole jitted function (one dispatch) divided by the op count; tinygen's replay rows are its
counterpart (a recorded program, still one Python call per op). JAX results are waited for
(block_until_ready) inside the timed statement, as PyTorch and NumPy on the CPU return finished results.
"""
import time
import timeit

from .specs import Skip

BENCHES = ("add", "add_rec", "add_fwd_bwd", "chain_fwd", "chain_rec", "chain_fwd_bwd", "chain_replay",
           "chain_replay_bwd", "chain_replay_fused", "chain_replay_bwd_fused", "chain_replay_approx")
OPS = {"add": 1, "add_rec": 1, "add_fwd_bwd": 1, "chain_fwd": 20, "chain_rec": 20, "chain_fwd_bwd": 20,
       "chain_replay": 20, "chain_replay_bwd": 20, "chain_replay_fused": 20, "chain_replay_bwd_fused": 20,
       "chain_replay_approx": 20}
NOT_APPLICABLE = "n/a"


def chain(x, a, b, tanh):
    """20 elementwise ops."""
    for _ in range(5):
        x = tanh(x * b + a) - b
    return x


def _arrays():
    import numpy as np
    rng = np.random.default_rng(0)
    a, b, g = (rng.standard_normal((8, 8)).astype(np.float32) * 0.5 for _ in range(3))
    return a, b, g


def _time(stmt, ns, ops, quick):
    """timeit with many short repeats (~4 ms each, 25 of them), twice: by process CPU time, the number reported
    (on an idle machine it equals the wall time; on a busy one it is not inflated by the time other processes
    hold the CPU), and by wall time (kept in the JSON). Best and median of the repeats."""
    wall = timeit.Timer(stmt, globals=ns)
    cpu = timeit.Timer(stmt, timer=time.process_time, globals=ns)
    target = 0.001 if quick else 0.004
    number = 1
    while True:
        t = wall.timeit(number)
        if t >= target or number >= 10 ** 7:
            break
        number = max(number * 2, int(number * target / max(t, 1e-9) * 1.1))
    n = 5 if quick else 25
    by_cpu = sorted(x / number / ops * 1e6 for x in cpu.repeat(n, number))
    by_wall = sorted(x / number / ops * 1e6 for x in wall.repeat(n, number))
    return {"us_per_op": by_cpu[0], "us_per_op_median": by_cpu[n // 2], "repeats_us": by_cpu,
            "wall_us_per_op": by_wall[0], "wall_us_per_op_median": by_wall[n // 2], "wall_repeats_us": by_wall,
            "number": number, "ops": ops}


def _run(stmts, ns, quick):
    out = {}
    for name in BENCHES:
        stmt = stmts.get(name)
        out[name] = {"status": NOT_APPLICABLE} if stmt is None else _time(stmt, ns, OPS[name], quick)
    return out


def bench_numpy(quick=False):
    import numpy as np
    a, b, g = _arrays()

    def chain_fwd_bwd(x):
        ys = []
        for _ in range(5):  # keep tanh outputs; the mul needs b, the adds and subs pass gradients through
            y = np.tanh(x * b + a)
            ys.append(y)
            x = y - b
        gx = g.copy()
        for y in reversed(ys):
            gx = gx * (1 - y * y) * b
        return x, gx

    ns = dict(a=a, b=b, g=g, np=np, chain=chain, tanh=np.tanh, chain_fwd_bwd=chain_fwd_bwd)
    return _run({"add": "a + b", "add_fwd_bwd": "c = a + b; ga = g.copy()",
                 "chain_fwd": "chain(a, a, b, tanh)", "chain_fwd_bwd": "chain_fwd_bwd(a)"}, ns, quick)


def bench_tinygen(quick=False):
    try:
        import tinygen as tg
    except ImportError:
        raise Skip("tinygen not importable") from None
    tg.allocator.apply_setting()  # as the tinygen command does
    a, b, g = (tg.tensor(v) for v in _arrays())
    ar = tg.tensor(a.numpy(), requires_grad=True)
    replays = {}
    for fuse, name in ((False, ""), (True, "_fused"), ("approx", "_approx")):
        replays["fwd" + name] = tg.compile(lambda x: chain(x, a, b, tg.tanh), fuse=fuse)
        replays["bwd" + name] = tg.compile(lambda: chain(ar, a, b, tg.tanh).backward(g), fuse=fuse)  # ar: a leaf
        replays["fwd" + name](a)  # recorded outside the timing: every timed call replays
        replays["bwd" + name]()
    ns = dict(a=a, b=b, g=g, ar=ar, chain=chain, tanh=tg.tanh, **replays)
    return _run({"add": "a + b", "add_rec": "ar + b", "add_fwd_bwd": "ar.grad = None; (ar + b).backward(g)",
                 "chain_fwd": "chain(a, a, b, tanh)", "chain_rec": "chain(ar, a, b, tanh)",
                 "chain_fwd_bwd": "ar.grad = None; chain(ar, a, b, tanh).backward(g)",
                 "chain_replay": "fwd(a)", "chain_replay_bwd": "ar.grad = None; bwd()",
                 "chain_replay_fused": "fwd_fused(a)", "chain_replay_bwd_fused": "ar.grad = None; bwd_fused()",
                 "chain_replay_approx": "fwd_approx(a)"}, ns, quick)


def bench_torch(quick=False):
    try:
        import torch
    except ImportError:
        raise Skip("torch not installed") from None
    a, b, g = (torch.from_numpy(v) for v in _arrays())
    ar = a.clone().requires_grad_(True)
    ns = dict(a=a, b=b, g=g, ar=ar, chain=chain, tanh=torch.tanh)
    return _run({"add": "a + b", "add_rec": "ar + b", "add_fwd_bwd": "ar.grad = None; (ar + b).backward(g)",
                 "chain_fwd": "chain(a, a, b, tanh)", "chain_rec": "chain(ar, a, b, tanh)",
                 "chain_fwd_bwd": "ar.grad = None; chain(ar, a, b, tanh).backward(g)"}, ns, quick)


def bench_jax(quick=False):
    """Two columns: JAX eager (one dispatch per op) and JAX jit (the whole function compiled, one dispatch)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise Skip("jax not installed") from None
    a, b, g = (jnp.asarray(v) for v in _arrays())

    def add(x):
        return x + b

    def ch(x):
        return chain(x, a, b, jnp.tanh)

    def vjp(f):
        return lambda x, g: jax.vjp(f, x)[1](g)[0]

    jadd = jax.jit(lambda x, y: x + y)
    jch, jadd_vjp, jch_vjp = jax.jit(ch), jax.jit(vjp(add)), jax.jit(vjp(ch))
    ns = dict(a=a, b=b, g=g, chain=chain, tanh=jnp.tanh, jax=jax, add=add, ch=ch, vjp=vjp,
              jadd=jadd, jch=jch, jadd_vjp=jadd_vjp, jch_vjp=jch_vjp)
    for f, args in ((jadd, (a, b)), (jch, (a,)), (jadd_vjp, (a, g)), (jch_vjp, (a, g))):
        f(*args).block_until_ready()  # compile outside the timing
    eager = _run({"add": "(a + b).block_until_ready()",
                  "add_fwd_bwd": "jax.vjp(add, a)[1](g)[0].block_until_ready()",
                  "chain_fwd": "chain(a, a, b, tanh).block_until_ready()",
                  "chain_fwd_bwd": "jax.vjp(ch, a)[1](g)[0].block_until_ready()"}, ns, quick)
    jit = _run({"add": "jadd(a, b).block_until_ready()",
                "add_fwd_bwd": "jadd_vjp(a, g).block_until_ready()",
                "chain_fwd": "jch(a).block_until_ready()",
                "chain_fwd_bwd": "jch_vjp(a, g).block_until_ready()"}, ns, quick)
    return {"jax": eager, "jax-jit": jit}


RUNNERS = {"numpy": bench_numpy, "tinygen": bench_tinygen, "torch": bench_torch, "jax": bench_jax}
