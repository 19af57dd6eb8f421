"""tinygen.compile when the caller changes, between calls, the Python a step reads: a replay must never run the
recorded version of something that changed.

The step below reads a number and a function from globals, a function and a number from a module of the user's
(through ``losses.scale``, which reads its module's ``W``), a config object's number and function, a class attribute
read by a module's forward, a global read by the methods of an object it makes (``Shift``), a number of a config
object with ``__slots__``, a global read by a helper under ``@tinygen.no_grad()``, an item of a global list and the
last item of a config object's list (an item set in place, one appended), an item of a NumPy array, and calls a user
module (``Block``) and a loss object whose methods may be patched onto their classes. Hypothesis draws what changes
before each of six calls (a new number, another function, a method patched, a function's code replaced in place as
IPython's autoreload does, or nothing) and the same sequence runs eagerly and compiled from the same seed: the losses
and parameters must be equal bit for bit.
"""
import dataclasses
import sys
import types

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import tinygen as tg
from tinygen import nn
from tinygen.nn import functional as F

CALLS = 6
SETTINGS = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODULE_SOURCE = '''
W = 1.0


def scale(t):
    return t * W
'''
MODULE_NAME = "user_losses_for_python_changes"


def _module():
    """A module of the user's (its file outside the library folders), as ``import losses`` gives."""
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = f"/nonexistent/user/{MODULE_NAME}.py"
    exec(compile(MODULE_SOURCE, module.__file__, "exec"), module.__dict__)
    return module


def _plus(t):
    return t + 1.0


def _times(t):
    return t * 0.5


def _twice(t):
    return t * 2.0


def _forward_a(self, x):
    return self.lin(x) * Block.gain


def _forward_b(self, x):
    return (self.lin(x) * Block.gain).tanh()


def _loss_a(self, out, y):
    return F.cross_entropy(out, y) * self.weight


def _loss_b(self, out, y):
    return F.mse_loss(out, out.detach() * 0.5) * self.weight


class Block(nn.Module):
    gain = 1.0

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    forward = _forward_a


class Loss:
    def __init__(self):
        self.weight = 1.0

    __call__ = _loss_a


class Config:
    def __init__(self):
        self.beta, self.fn, self.scales = 1.0, _plus, [1.0]


@dataclasses.dataclass(slots=True)
class Slotted:
    """A config object without a ``__dict__``."""
    gamma: float = 1.0


class Shift:
    """An object the step makes on every call: its methods read a global."""

    def __init__(self, by):
        self.by = by * SHIFT

    def __call__(self, t):
        return t + self.by * SHIFT


GAIN = 1.0
SHIFT = 1.0
OFFSET = 1.0
WEIGHTS = [1.0, 1.0]
ARRAY = np.ones(3, np.float32)


@tg.no_grad()
def _offset(h):
    return h.mean() * OFFSET

HELPER = _plus
losses = None  # the module of the user's, set for each run


def _state():
    """What the actions change, as the run starts: restored before each run and after the test."""
    return {"GAIN": GAIN, "HELPER": HELPER, "SHIFT": SHIFT, "OFFSET": OFFSET, "forward": Block.forward,
            "gain": Block.gain, "call": Loss.__call__, "codes": {f: f.__code__ for f in (_plus, _times, _twice)},
            "weights": list(WEIGHTS), "array": ARRAY.copy()}


def _restore(state):
    global GAIN, HELPER, SHIFT, OFFSET
    GAIN, HELPER, SHIFT, OFFSET, Block.forward, Block.gain, Loss.__call__ = (
        state[k] for k in ("GAIN", "HELPER", "SHIFT", "OFFSET", "forward", "gain", "call"))
    for f, code in state["codes"].items():
        f.__code__ = code
    WEIGHTS[:] = state["weights"]
    ARRAY[:] = state["array"]


ACTIONS = ("nothing", "GAIN", "HELPER", "module W", "module scale", "cfg.beta", "cfg.fn", "Block.gain",
           "Block.forward", "Loss.__call__", "loss.weight", "code of HELPER", "SHIFT", "slotted.gamma",
           "OFFSET", "WEIGHTS[1]", "cfg.scales.append", "ARRAY[2]")


def _act(action, value, cfg, crit, slotted):
    """Change what ``action`` names; ``value`` (0, 1 or 2) picks the new number or function."""
    global GAIN, HELPER, SHIFT, OFFSET
    number = (1.0, 0.5, 2.0)[value]
    function = (_plus, _times, _twice)[value]
    if action == "GAIN":
        GAIN = number
    elif action == "HELPER":
        HELPER = function
    elif action == "module W":
        losses.W = number
    elif action == "module scale":  # the module edited and reloaded: a new function under the same name
        losses.scale = function
    elif action == "cfg.beta":
        cfg.beta = number
    elif action == "cfg.fn":
        cfg.fn = function
    elif action == "Block.gain":
        Block.gain = number
    elif action == "Block.forward":
        Block.forward = (_forward_a, _forward_b, _forward_a)[value]
    elif action == "Loss.__call__":
        Loss.__call__ = (_loss_a, _loss_b, _loss_a)[value]
    elif action == "loss.weight":
        crit.weight = number
    elif action == "code of HELPER":  # IPython's autoreload: the same function object, new code
        HELPER.__code__ = function.__code__
    elif action == "SHIFT":
        SHIFT = number
    elif action == "slotted.gamma":
        slotted.gamma = number
    elif action == "OFFSET":
        OFFSET = number
    elif action == "WEIGHTS[1]":
        WEIGHTS[1] = number
    elif action == "cfg.scales.append":
        cfg.scales.append(number)
    elif action == "ARRAY[2]":
        ARRAY[2] = number


def _run(actions, compiled):
    global losses
    tg.manual_seed(0)
    losses = _module()
    sys.modules[MODULE_NAME] = losses
    model, cfg, crit, slotted = Block(), Config(), Loss(), Slotted()
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        h = HELPER(model(x)) * GAIN
        h = Shift(0.5)(cfg.fn(losses.scale(h)) * cfg.beta) * slotted.gamma
        h = (h + _offset(h)) * WEIGHTS[1] * cfg.scales[-1] * float(ARRAY[2])
        loss = crit(h, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    f = tg.compile(step) if compiled else step
    tg.manual_seed(1)
    batches = [(tg.randn(5, 6), tg.randint(0, 4, (5,))) for _ in range(CALLS)]
    out = []
    for (action, value), (x, y) in zip(actions, batches):
        _act(action, value, cfg, crit, slotted)
        out.append(f(x, y).data.copy())
    return out + [p.data.copy() for p in model.parameters()], f


@SETTINGS
@given(actions=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 2)), min_size=CALLS, max_size=CALLS))
def test_what_the_caller_changes_between_calls_replays_as_eager(actions):
    start = _state()
    try:
        eager, _ = _run(actions, compiled=False)
        _restore(start)
        compiled, f = _run(actions, compiled=True)
    finally:
        _restore(start)
        sys.modules.pop(MODULE_NAME, None)
    assert len(eager) == len(compiled) and all(np.array_equal(a, b) for a, b in zip(eager, compiled)), actions
    assert f.records + f.replays == CALLS


def test_library_code_is_told_from_the_users():
    """What a step's code reaches is read only where it is the user's: the standard library's, an installed
    package's and tinygen's own code are not (guards._library_dirs), this file's is."""
    import json

    import pytest
    from tinygen.compile import guards

    def users_helper():
        return 1
    for func in (json.dumps, pytest.approx, tg.compile, nn.Linear.forward):
        assert not guards._users(func), func
    assert guards._users(users_helper)
