"""With the same manual_seed, two runs of the same training on the NumPy backend give bitwise identical parameters."""
import numpy as np

import tinygen as tg
import tinygen.nn as nn
import tinygen.nn.functional as F


def _train(seed, steps=25):
    tg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.2), nn.Dropout(0.3),
                          nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = tg.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = tg.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    for _ in range(steps):
        x = tg.randn(16, 12)
        y = tg.randint(0, 4, (16,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return [p.detach().numpy().copy() for p in model.parameters()]


def test_same_seed_gives_bitwise_identical_parameters():
    a, b = _train(7), _train(7)
    for u, v in zip(a, b):
        assert u.tobytes() == v.tobytes()


def test_different_seed_gives_different_parameters():
    a, b = _train(7), _train(8)
    assert any(not np.array_equal(u, v) for u, v in zip(a, b))
