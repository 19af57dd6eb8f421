"""``Optimizer``: parameter groups, per-parameter state, zero_grad, step and state_dict, as in PyTorch.

A subclass supplies its defaults, ``_validate`` (hyper-parameter checks) and ``_step_group`` (the update of one
group). The update itself is a kernel (tinygen.kernels: ``kernels.get("adam_step", p.data)``), working in place on
the parameter's arrays, so it builds no graph and never leaves the parameter's device.
"""
import numbers

import numpy as np

from .. import backend
from ..autograd.grad_mode import enable_grad
from ..capture import note_created, replayed
from ..tensor import Tensor, _array_identity, _make


class Workspace:
    """What an optimizer's update kernels reuse from one step to the next (never part of its state), passed to them
    as ``scratch``. Called with an array ``data``: two work arrays shaped like it (the reference's updates), shared
    by the parameters of one dtype and device. ``rows``: the CPU kernels' flat views of the parameters and their
    states (kernels/cpu.py, ``_update_rows``), kept while the same arrays come back: in a training loop only the
    gradients are new arrays each step."""

    def __init__(self):
        self.buffers, self.rows = {}, {}

    def __reduce__(self):  # a copy (copy.deepcopy of an optimizer, pickling) starts empty: the rows are views of the
        return Workspace, ()  # original's arrays, which a copy's updates must not write

    def __call__(self, data):
        key = (data.dtype, type(data))
        size = data.size
        bufs = self.buffers.get(key)
        if bufs is None or bufs[0].size < size:
            xp = backend.array_module_of(data)
            bufs = self.buffers[key] = (xp.empty(size, dtype=data.dtype), xp.empty(size, dtype=data.dtype))
        return bufs[0][:size].reshape(data.shape), bufs[1][:size].reshape(data.shape)


class _Required:
    """Marks a hyper-parameter without a default: every group must give it."""

    def __repr__(self):
        return "<required parameter>"


required = _Required()


def check_range(name, value, low=0.0, high=None, owner="optimizer"):
    """Raise a clear error unless ``value`` is a real number with low <= value (< high when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r} ({type(value).__name__})")
    if not (low <= value and (high is None or value < high)):  # written so that NaN fails too
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{owner}: invalid {name}={value!r}; it must be {bound}")


def _number(lr):
    """A learning rate as a Python number (a rate held in a tensor is read back)."""
    return float(lr.item()) if isinstance(lr, Tensor) else lr


def check_lr(value, owner="optimizer"):
    """Raise a clear error unless ``value`` is a learning rate: a real number >= 0, or a 0-d floating-point tensor
    holding one (a rate kept on the parameters' device, read there by the update)."""
    if not isinstance(value, Tensor):
        check_range("lr", value, owner=owner)
        return
    if value.shape != () or value.dtype.kind != "f" or value.requires_grad:
        raise ValueError(f"{owner}: a learning rate given as a tensor must be a 0-d floating-point tensor that does "
                         f"not require grad, got shape {value.shape}, dtype {value.dtype}, "
                         f"requires_grad={value.requires_grad}")
    check_range("lr", _number(value), owner=owner)


def get_lr(group):
    """The learning rate of a parameter group as a Python number (a rate held in a tensor is read back)."""
    return _number(group["lr"])


@replayed  # writes in place (a rate held in a tensor) or into the group: a compiled step's replay sets it again
def set_lr(group, value):
    """Set a parameter group's learning rate: a rate held in a tensor is written in place, so the arrays a
    captured step reads (a CUDA graph's launches) take the new value; a number is replaced."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        lr.data[...] = _number(value)
    else:
        group["lr"] = value


class Optimizer:
    """Base class of the optimizers.

    ``params`` is an iterable of tensors, or of dicts (parameter groups) each with a ``"params"`` entry and its
    own hyper-parameters; what a group does not give is taken from ``defaults``.

    A learning rate is a number, or a 0-d floating-point tensor on the parameters' device (as PyTorch's tensor
    ``lr``). The update kernels read a tensor's value where it lives, so a rate changed between steps with
    ``set_lr`` (which the schedules use: it writes the tensor in place) reaches a compiled step's CUDA graph
    without capturing it again; a new number would end the graph's launches. Keep such a tensor in float64
    (the schedules' numbers are Python floats).

    Attributes:
      param_groups  list of dicts: ``"params"`` (list of tensors) and the group's hyper-parameters;
      state         dict: parameter tensor -> its state (a dict of tinygen tensors and numbers);
      defaults      the hyper-parameters given to the constructor.
    """

    def __init__(self, params, defaults):
        note_created(self)  # inside a compiled step: refused (capture.py)
        self.defaults = dict(defaults)
        if not any(v is required for v in self.defaults.values()):
            self._validate(self.defaults)  # bad constructor arguments fail here, whatever the groups give
        self.state = {}
        self.param_groups = []
        self._workspace = Workspace()  # what the update kernels reuse across steps; never part of the state
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors or of dicts (parameter groups), got a single "
                            "Tensor; wrap it in a list")
        if isinstance(params, dict):
            params = [params]
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"

    # ---- parameter groups --------------------------------------------------------------------------------------------
    def _validate(self, group):
        """Check a group's hyper-parameters (overridden by each optimizer)."""

    def add_param_group(self, param_group):
        """Add a group of parameters (a dict with ``"params"``), e.g. layers unfrozen during fine-tuning."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise KeyError("a parameter group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("parameter groups must hold parameters in a list (or another ordered sequence); "
                            "a set's order changes between runs, which breaks state_dict")
        else:
            params = list(params)
        where = f"parameter group {len(self.param_groups)}"
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: {where}, item {i} is a {type(p).__name__}, not a Tensor")
            if p.grad_fn is not None:
                raise ValueError(f"{type(self).__name__}: {where}, item {i} (shape {p.shape}) is not a leaf tensor "
                                 f"(it was computed by {p.grad_fn.name()}); optimize the leaves it came from")
            if p.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: {where}, item {i} has dtype {p.dtype}; only floating "
                                f"point tensors can be optimized")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{type(self).__name__}: {where} holds the same parameter more than once")
        taken = {id(p) for p in self._all_params()}
        if taken.intersection(ids):
            raise ValueError(f"{type(self).__name__}: some parameters of {where} are already in another group")

        group = {k: v for k, v in param_group.items() if k != "params"}
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{type(self).__name__}: {where} does not give '{key}', which has no default")
            group.setdefault(key, default)
        self._validate(group)
        lr = group.get("lr")
        if isinstance(lr, Tensor) and any(p._device != lr._device for p in params):
            raise ValueError(f"{type(self).__name__}: {where} has its learning rate on {lr.device} but parameters "
                             f"on {sorted({p.device for p in params})}; keep the rate on the parameters' device")
        group["params"] = params
        self.param_groups.append(group)

    def _all_params(self):
        """Every parameter, group after group."""
        return [p for group in self.param_groups for p in group["params"]]

    def _grads(self):
        return [p._grad for p in self._all_params() if p._grad is not None]

    # ---- gradients ---------------------------------------------------------------------------------------------------
    # dropping the gradients is Python only: a graph's backward after it delivers as at capture (cuda_graph.py)
    @replayed(grads=lambda self, set_to_none=True: ("drops", self._all_params()) if set_to_none else None,
              graph_key=lambda self, set_to_none=True: tuple(map(id, self._all_params())) if set_to_none else None,
              writes=lambda self, set_to_none=True: () if set_to_none else self._grads())
    def zero_grad(self, set_to_none=True):
        """Clear the gradients: drop them (``set_to_none=True``, the default) or fill them with zeros in place."""
        for p in self._all_params():
            g = p._grad
            if g is None:
                continue
            if set_to_none:
                p._grad = None
            elif g.grad_fn is not None or g._requires_grad:
                p._grad = _make(g.xp.zeros_like(g.data), g._device)  # a gradient with a graph is not reused
            else:
                g.data.fill(0)

    # ---- the update --------------------------------------------------------------------------------------------------
    @replayed(grads=lambda self, closure=None: ("reads", self._all_params()) if closure is None else None,
              graph_key=lambda self, closure=None: self._graph_key() if closure is None else None,
              writes=lambda self, closure=None: self._all_params() if closure is None else None)
    def step(self, closure=None):
        """Update every parameter that has a gradient. ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            try:
                self._step_group(group)
            except ValueError as e:  # the kernels name arrays; say which parameter's state no longer fits it
                stale = self._stale_state()
                if stale is None:
                    raise
                raise ValueError(stale) from e
        return loss

    def _stale_state(self):
        """A message naming the first parameter whose state arrays no longer match it in shape or dtype (the
        parameter was changed after the optimizer's first step: ``model.to(float64)``, ``p.data = ...``), else
        None."""
        name = type(self).__name__
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                for key, value in self.state.get(p, {}).items():
                    d = value.data if isinstance(value, Tensor) else None
                    if d is None or d.ndim == 0 or (d.shape == p.data.shape and d.dtype == p.data.dtype):
                        continue
                    if d.shape == p.data.shape:
                        remedy = ("Reload the state to cast it to the parameters' dtypes (opt.load_state_dict("
                                  "opt.state_dict())), or make the optimizer after changing the model")
                    else:
                        remedy = "Make the optimizer anew for the resized parameter"
                    return (f"{name}: parameter {i} of group {gi} is now {tuple(p.data.shape)} {p.data.dtype}, but "
                            f"its state {key!r} is {tuple(d.shape)} {d.dtype}: the parameter changed after the "
                            f"optimizer's first step (model.to(...), p.data = ...). {remedy}")
        return None

    def _step_group(self, group):
        raise NotImplementedError(f"{type(self).__name__} must define _step_group(group)")

    def _graph_key(self):
        """None when a step's Python does what a CUDA graph cannot repeat; else what its kernels take from Python
        (see ``capture.replayed``): each group's hyper-parameters and the identities of its state's arrays."""
        if not self._device_only():
            return None
        return tuple((tuple((k, _array_identity(v)) for k, v in group.items() if k != "params"),  # a held lr
                      self._state_key(group)) for group in self.param_groups)

    def _device_only(self):
        """Whether a step is device work only once every parameter has its state (not by default)."""
        return False

    @staticmethod
    def _lr_of(group):
        """The learning rate the update kernels take: a number, or a rate's 0-d array (the kernels read it)."""
        lr = group["lr"]
        return lr.data if isinstance(lr, Tensor) else lr

    @staticmethod
    def _next_step(state, p, capturable):
        """Count a step of parameter ``p`` in its ``state`` and return the new count: a Python int, or with
        ``capturable`` a float64 0-d tensor on p's device, incremented there (no Python a graph would skip)."""
        count = state["step"] = _step_count(state["step"], p, capturable)
        if capturable:
            count.data += 1
            return count
        state["step"] = count + 1
        return state["step"]

    def _state_key(self, group):
        """The arrays of each parameter's state in ``group`` (None for a parameter without state), by identity:
        a graph updates the arrays it captured, so new ones (``load_state_dict``) must end its launches."""
        return tuple(None if (s := self.state.get(p)) is None else
                     tuple((k, _array_identity(v)) for k, v in s.items())
                     for p in group["params"])

    @staticmethod
    def _grad_of(p):
        """The gradient array of ``p`` (None when it has none), checked against the parameter."""
        g = p._grad
        if g is None:
            return None
        data = g.data
        if data.shape != p.data.shape or g._device != p._device:
            raise RuntimeError(f"the gradient of a parameter of shape {p.shape} on {p.device} has shape "
                               f"{g.shape} on {g.device}")
        if data.dtype != p.data.dtype:
            data = data.astype(p.data.dtype)
        return data

    @staticmethod
    def _columns(rows):
        """Rows (one tuple of arrays per parameter) under each key -> per key, one tuple per position: the
        sequences a multi-tensor kernel takes (``adam_steps(params, grads, exp_avgs, ...)``)."""
        return {key: tuple(zip(*group)) for key, group in rows.items()}

    # ---- checkpoints -------------------------------------------------------------------------------------------------
    def state_dict(self):
        """The optimizer's state in PyTorch's layout::

            {"state": {index: {"step": ..., "exp_avg": tensor, ...}},
             "param_groups": [{"lr": ..., ..., "params": [index, ...]}]}

        Parameters are numbered in group order from 0. The state's tensors are the optimizer's own (not copies),
        as in PyTorch: save them, or copy them, before training on if you need a snapshot. One more key,
        ``"optimizer"``, names the optimizer's class, so that ``load_state_dict`` can refuse another optimizer's
        state.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index[id(p)] = len(index)
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups, "optimizer": type(self).__name__}

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``: hyper-parameters of each group and each parameter's state (copied).

        A state dict saved by another optimizer class is refused (its state would be read as this one's); one
        without the ``"optimizer"`` entry (saved before it was recorded, or by PyTorch) is accepted as is.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            keys = sorted(map(str, state_dict)) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups', got {keys}")
        saved_class = state_dict.get("optimizer")
        if saved_class is not None and saved_class != name:
            raise ValueError(f"{name}.load_state_dict: the state dict was saved by a {saved_class} optimizer; "
                             f"a {name} cannot load it (create a {saved_class}, or start this {name} afresh)")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state dict has {len(saved_groups)} parameter groups but "
                             f"the optimizer has {len(self.param_groups)}")
        by_index = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            saved_params = list(saved.get("params", ()))
            if len(saved_params) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has {len(saved_params)} parameters "
                                 f"in the state dict but {len(group['params'])} in the optimizer")
            for idx, p in zip(saved_params, group["params"]):
                by_index[idx] = p

        new_state = {}
        for idx, entry in state_dict["state"].items():
            if idx not in by_index:
                raise ValueError(f"{name}.load_state_dict: the state dict has state for parameter {idx!r}, which "
                                 f"is in none of its parameter groups")
            p = by_index[idx]
            new_state[p] = {key: _state_value(value, p, f"{name}.load_state_dict: state[{idx!r}][{key!r}]")
                            for key, value in entry.items()}

        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            merged = {k: v for k, v in group.items() if k != "params"}
            merged.update({k: v for k, v in saved.items() if k != "params"})
            self._validate(merged)
            merged["params"] = group["params"]
            new_groups.append(merged)
        for merged, group in zip(new_groups, self.param_groups):  # each group keeps its kind of learning rate
            if isinstance(group.get("lr"), Tensor):  # its own tensor, written in place (a graph reads its array)
                value, merged["lr"] = get_lr(merged), group["lr"]
                set_lr(merged, value)
            elif isinstance(merged.get("lr"), Tensor):
                merged["lr"] = get_lr(merged)
        self.state = new_state
        self.param_groups = new_groups


def _state_value(value, p, where):
    """A copy of one saved state value for parameter ``p``: arrays become tensors on p's device (floats in p's
    dtype); numbers pass through."""
    if isinstance(value, Tensor):
        data = value.data
    elif hasattr(value, "shape") and hasattr(value, "dtype"):  # a NumPy (or device) array
        data = value
    else:
        return value
    if data.shape != p.data.shape and data.ndim != 0:
        raise ValueError(f"{where} has shape {tuple(data.shape)} but the parameter has shape {p.shape}")
    data = backend.to_device(data, p._device)
    dtype = p.data.dtype if data.dtype.kind == "f" else data.dtype
    if data.shape == p.data.shape:  # laid out as the parameter (a channels-last weight's state stays channels-last)
        out = p.xp.empty_like(p.data, dtype=dtype)
        out[...] = data
        return _make(out, p._device)
    return _make(data.astype(dtype, copy=True), p._device)


def _step_count(step, p, capturable):
    """A parameter's step count as its optimizer keeps it: a float64 0-d tensor on p's device (capturable), else a
    Python int (a loaded state dict may hold either, or a tensor in p's dtype)."""
    if not capturable:
        return int(step.item()) if isinstance(step, Tensor) else int(step)
    if isinstance(step, Tensor) and step.data.dtype == np.float64 and step._device == p._device:
        return step
    value = step.item() if isinstance(step, Tensor) else step
    return _make(p.xp.full((), float(value), dtype=np.float64), p._device)
