"""``compile(fn, check=N)``: the first N replays run side by side with eager, from the same state and random
stream, and raise ``CompileError`` on the first array that differs."""
import copy
import itertools

import numpy as np

from .. import random as _random
from ..backend import is_device_array, to_device
from ..tensor import Tensor, _make
from .steps import CompileError, replay_call, tensors_in


def _state_of(program):
    """What a step may change: the leaves it used (data and .grad), the buffers of its modules, and the state of
    the objects whose methods it called (optimizers, schedulers: through their state_dict)."""
    inputs = {id(t) for t in program.inputs}
    tensors = {id(t): t for t, rg, *_ in program.leaves if rg and id(t) not in inputs}
    for module, _, _ in program.modules:
        for b in module.__dict__.get("_buffers", {}).values():
            if b is not None:
                tensors[id(b)] = b
    owners = {}
    for run, operands in program.steps:
        if run is replay_call and operands[1] and hasattr(operands[1][0], "load_state_dict"):
            owners[id(operands[1][0])] = operands[1][0]
    return list(tensors.values()), list(owners.values())


def _snapshot(tensors, owners, devices):
    return ([t.data.copy() for t in tensors], [None if t.grad is None else t.grad.data.copy() for t in tensors],
            [copy.deepcopy(o.state_dict()) for o in owners],
            # the generators of each device the step uses, both streams (dropout under DDP draws from the rank's)
            [(d, r, _random.get_rng_state(d, rank_stream=r)) for d in devices for r in (False, True)])


def _restore(tensors, owners, snap):
    datas, grads, states, rng = snap
    for t, d, g in zip(tensors, datas, grads):
        t.data[...] = d
        t.grad = None if g is None else _make(g.copy(), t._device)
    for o, state in zip(owners, states):
        o.load_state_dict(copy.deepcopy(state))
    for d, r, state in rng:
        _random.set_rng_state(state, d, rank_stream=r)


def _arrays(value):
    """The arrays in a result or a snapshot, as host arrays."""
    if isinstance(value, Tensor):
        value = value.data
    if is_device_array(value):
        return [to_device(value, "cpu")]
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return [np.asarray(value)]
    if isinstance(value, dict):
        return [a for k in sorted(value, key=str) for a in _arrays(value[k])]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    return []


def _on_host(arrays):
    """A snapshot's arrays (None for a missing gradient) as host arrays."""
    return [None if a is None else to_device(a, "cpu") for a in arrays]


def checked(fn, program, args, kwargs):
    tensors, owners = _state_of(program)
    devices = sorted({"cpu"} | {t._device for t in itertools.chain(program.inputs, tensors)})
    before = _snapshot(tensors, owners, devices)
    eager = [a.copy() for a in _arrays(fn(*args, **kwargs))]
    after_eager = _snapshot(tensors, owners, devices)
    _restore(tensors, owners, before)
    result = program.replay(tensors_in(args, kwargs))
    after_replay = _snapshot(tensors, owners, devices)
    checks = (("result", eager, _arrays(result)), ("tensor", _on_host(after_eager[0]), _on_host(after_replay[0])),
              ("gradient", _on_host(after_eager[1]), _on_host(after_replay[1])),
              ("optimizer/scheduler state", _arrays(after_eager[2]), _arrays(after_replay[2])))
    for what, xs, ys in checks:
        for i, (x, y) in enumerate(itertools.zip_longest(xs, ys)):
            if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
                raise CompileError(f"tinygen.compile(check=...): the replay differs from eager in {what} #{i}; "
                                   f"is there array code on tensor.data inside the step? (it is not recorded)")
    return result
