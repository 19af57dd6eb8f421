"""tinygen.compile runs an op once for two calls on the same unchanged arrays (a GAN's discriminator on the fakes in
the generator's update, then on their detached copy in the discriminator's): every case must end every call in
eager's exact state, and nothing that changes an array in between may be skipped over."""
import tracemalloc

import numpy as np
import pytest

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F
from tinygen.compile import passes as compile_passes, steps as compile_steps
from test_compile_dead_gradients import _compare, _gan, _program



def _reuses(f):
    """The classes of the ops whose forwards the program reuses, in its order."""
    return [type(operands[1][0]).__name__.removesuffix("Function") for run, operands in _program(f).steps
            if run is compile_steps.replay_call and operands[0] is compile_passes.same_result]


def test_the_discriminator_on_the_detached_fakes_reuses_the_generator_steps_forwards():
    f, _ = _compare(_gan)
    assert _reuses(f) == ["LinearAct", "Linear"]  # D's two nodes; the losses differ (other targets)
    assert "reuse     Linear+LeakyReLU -> (8, 16)" in f.explain()


def _both_steps(G, D, opt_g, opt_d, loss):  # D's weights change between its two calls on the fakes
    opt_g.step()
    opt_d.step()


def _init_fill(G, D, opt_g, opt_d, loss):  # a replayed call that does not say what it writes may write any array
    opt_g.step()
    nn.init.normal_(D[2].weight, std=0.1)


def _frozen_and_back(G, D, opt_g, opt_d, loss):
    opt_g.step()
    D.requires_grad_(False)
    D.requires_grad_(True)


@pytest.mark.parametrize("between", [_both_steps, _init_fill, _frozen_and_back])
def test_a_write_between_the_two_calls_is_never_skipped_over(between):
    f, _ = _compare(lambda: _gan(between=between))
    assert _reuses(f) == []


def test_an_output_changed_in_place_later_is_not_shared():
    lin = nn.Linear(6, 4)

    def step(x):
        with tg.no_grad():
            a = lin(x)
            b = lin(x)
            b[0] = 0.0  # would change a's array too if the two shared it
            return a * 1.0, b * 1.0

    tg.manual_seed(1)
    data = [tg.rand(3, 6) for _ in range(4)]
    f = tg.compile(step)
    for x in data:
        (a, b), (ea, eb) = f(x), step(x)
        assert np.array_equal(a.data, ea.data) and np.array_equal(b.data, eb.data)
        assert not np.array_equal(a.data[0], b.data[0])
    assert f.replays == 3 and _reuses(f) == []


def test_two_outputs_both_returned_are_not_shared():
    lin = nn.Linear(6, 4)

    def step(x):
        with tg.no_grad():
            return lin(x), lin(x.detach())

    tg.manual_seed(1)
    x = tg.rand(3, 6)
    f = tg.compile(step)
    for _ in range(3):
        a, b = f(x)
        a.data += 1.0  # the caller's to change: the other result stays eager's
        assert np.array_equal(b.data, step(x)[1].data)
    assert _reuses(f) == []


def test_without_a_write_the_same_calls_are_reused_and_fuse_false_keeps_both():
    lin = nn.Linear(6, 4)

    def step(x):
        with tg.no_grad():
            return lin(x) * 1.0, lin(x.detach()) * 2.0

    tg.manual_seed(1)
    x = tg.rand(3, 6)
    for fuse, count in ((True, 1), (False, 0)):
        f = tg.compile(step, fuse=fuse)
        for _ in range(3):
            a, b = f(x)
            assert np.array_equal(a.data * 2.0, b.data)
        (program,) = f._programs.values()
        assert sum(run is compile_steps.replay_call and operands[0] is compile_passes.same_result
                   for run, operands in program.steps) == count


def _conv_gan():
    """A small DCGAN in the PyTorch-GAN layout: D's convolutions before its batch norm are reused, the batch norm
    (which updates its running statistics on every call) and what follows it are not."""
    tg.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 64), nn.Unflatten(1, (1, 8, 8)), nn.Tanh())
    D = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 8, 3, 2, 1),
                      nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(32, 1))
    opt_g, opt_d = tg.optim.Adam(G.parameters(), lr=1e-3), tg.optim.Adam(D.parameters(), lr=1e-3)

    def step(real):
        fake = G(tg.randn(real.shape[0], 4))
        opt_g.zero_grad()
        g_loss = F.binary_cross_entropy_with_logits(D(fake), tg.ones(real.shape[0], 1))
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad()
        d_loss = (F.binary_cross_entropy_with_logits(D(real), tg.ones(real.shape[0], 1)) +
                  F.binary_cross_entropy_with_logits(D(fake.detach()), tg.zeros(real.shape[0], 1))) / 2
        d_loss.backward()
        opt_d.step()
        return g_loss, d_loss
    return (G, D), step


def test_a_convolutional_discriminator_with_batch_norm_replays_bitwise_and_reuses_its_convolutions():
    def run(compiled):
        (G, D), step = _conv_gan()
        f = tg.compile(step) if compiled else step
        tg.manual_seed(3)
        losses = [[t.detach().data.copy() for t in f(tg.rand(6, 1, 8, 8) * 2 - 1)] for _ in range(8)]
        state = [v.data.copy() for m in (G, D) for v in m.state_dict().values()]  # running statistics too
        return losses, state, f
    (le, se, _), (lc, sc, f) = run(False), run(True)
    assert all(np.array_equal(a, b) for x, y in zip(le, lc) for a, b in zip(x, y))
    assert len(se) == len(sc) and all(np.array_equal(a, b) for a, b in zip(se, sc))
    assert _reuses(f) == ["Conv2dAct", "Conv2d"]


def test_a_gan_step_with_reused_forwards_peaks_at_no_more_memory_than_eager():
    def measure(compiled):
        tg.manual_seed(0)
        G = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 784), nn.Tanh())
        D = nn.Sequential(nn.Linear(784, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 1024), nn.LeakyReLU(0.2),
                          nn.Linear(1024, 1))
        opt_g, opt_d = tg.optim.Adam(G.parameters(), lr=1e-4), tg.optim.Adam(D.parameters(), lr=1e-4)
        ones, zeros = tg.ones(256, 1), tg.zeros(256, 1)

        def step(real):
            fake = G(tg.randn(256, 64))
            opt_g.zero_grad()
            g_loss = F.binary_cross_entropy_with_logits(D(fake), ones)
            g_loss.backward()
            opt_g.step()
            opt_d.zero_grad()
            d_loss = F.binary_cross_entropy_with_logits(D(real), ones) + \
                F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
            d_loss.backward()
            opt_d.step()
            return g_loss, d_loss
        f = tg.compile(step) if compiled else step
        data = [tg.rand(256, 784) for _ in range(4)]
        tracemalloc.start()
        try:
            for x in data[:3]:
                f(x)
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            f(data[3])
            return held, tracemalloc.get_traced_memory()[1], f
        finally:
            tracemalloc.stop()
    (held_e, peak_e, _), (held_c, peak_c, f) = measure(False), measure(True)
    assert _reuses(f) == ["LinearAct", "LinearAct", "Linear"]
    # an activation is 1 MB; the program's own records (tuples, nodes) are a few kB, and a first recording in a
    # process leaves some tens of kB of Python's own (27 kB before the recording compared the step's Python state
    # around each recorded call, 39-41 kB after, in the suite's order; compiling the same step again adds what
    # eager adds)
    assert held_c <= held_e + 64 * 1024 and peak_c <= peak_e + 64 * 1024, (held_e, held_c, peak_e, peak_c)
