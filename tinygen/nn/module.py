"""``Module``, the base of every layer and model, and ``Parameter``, the tensors a module learns.

A module keeps three ordered registries, filled by plain attribute assignment (as in PyTorch):
  _parameters  name -> Parameter (or None)   ``self.weight = Parameter(...)``
  _buffers     name -> Tensor (or None)      ``self.register_buffer("running_mean", zeros(c))``
  _modules     name -> Module (or None)      ``self.fc = Linear(2, 3)``
Everything else (iteration, state_dict, to(), train/eval) walks these registries, so parameter order and
state_dict keys are the same as PyTorch's for the same architecture.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from .. import backend, dtypes
from ..capture import CAPTURE, note_created, replayed
from ..tensor import Tensor, _make, as_tensor, get_default_dtype

_new = object.__new__


class Parameter(Tensor):
    """A tensor that a ``Module`` registers as learnable when assigned as an attribute.

    ``Parameter(data, requires_grad=True)``: ``data`` is a tensor (its memory is shared, its graph is not) or
    anything ``tinygen.as_tensor`` accepts. Ops on a parameter give plain tensors.
    """
    __slots__ = ()

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = _make(np.zeros((0,), dtype=get_default_dtype()), "cpu")
        elif not isinstance(data, Tensor):
            data = as_tensor(data)
        p = _new(cls)
        p.data, p._device = data.data, data._device
        p._requires_grad = False
        p._grad = p.grad_fn = None
        p._out_idx = 0
        if requires_grad:
            p.requires_grad = True  # validates that the dtype is floating
        return p

    def __init__(self, data=None, requires_grad=True):
        pass  # everything is set in __new__ (Tensor.__init__ would copy the data)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, protocol):
        # pickle / deepcopy: a fresh leaf with a copy of the data on the same device and dtype
        return _rebuild_parameter, (backend.to_device(self.data, "cpu"), self._device, self._requires_grad)


def _rebuild_parameter(host_array, device, requires_grad):
    device = backend.normalize_device(device)  # the canonical string: devices are compared with `is`
    data = backend.to_device(np.array(host_array, copy=True), device) if device != "cpu" else \
        np.array(host_array, copy=True)
    return Parameter(_make(data, device), requires_grad)


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _check_name(kind, name):
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
    if not name:
        raise KeyError(f"{kind} name cannot be an empty string")
    if "." in name:
        raise KeyError(f"{kind} name cannot contain '.', got {name!r}")


_MISSING = object()


class Module:
    """Base class of layers and models: subclass it, assign parameters and submodules in ``__init__`` (after
    ``super().__init__()``), and define ``forward``. Calling the module calls ``forward``.
    """

    def __init__(self):
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        note_created(self)  # inside a compiled step: named so when its attributes are set (capture.py)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args, **kwargs):
        rec = CAPTURE.recorder
        if rec is not None and not rec.depth:  # tinygen.compile: a replay holds while this module's mode does
            rec.note_module(self)
        return self.forward(*args, **kwargs)

    # ---- registration ------------------------------------------------------------------------------------------
    def _registries(self):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning parameters, "
                                 f"buffers or submodules")
        return d["_parameters"], d["_buffers"], d["_modules"]

    def _forget(self, name, keep):
        """Remove ``name`` from the other registries and the instance dict; in ``keep`` it stays in place (so
        replacing a parameter or submodule keeps its position in the order)."""
        for store in (*self._registries(), self.__dict__):
            if store is not keep:
                store.pop(name, None)
        self._non_persistent.discard(name)

    def _changed(self):
        """Count a change of what the module's forward may read (a parameter, buffer or submodule replaced, a
        public setting): tinygen.compile records a step anew when a module it used has changed since."""
        d = self.__dict__
        d["_changes"] = d.get("_changes", 0) + 1

    def register_parameter(self, name, param):
        """Add a parameter (or None, a declared but absent parameter such as a disabled bias)."""
        self._changed()
        params, _, _ = self._registries()
        _check_name("parameter", name)
        if name in self.__dict__ and name not in params:
            raise KeyError(f"attribute '{name}' already exists")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                            f"(tinygen.nn.Parameter or None required)")
        if param is not None and param.grad_fn is not None:
            raise ValueError(f"cannot assign non-leaf tensor to parameter '{name}'")
        self._forget(name, params)
        params[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Add a tensor that is state but not learned (running statistics); ``persistent=False`` keeps it out of
        the state_dict."""
        self._changed()
        _, buffers, _ = self._registries()
        _check_name("buffer", name)
        if name in self.__dict__ and name not in buffers:
            raise KeyError(f"attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' "
                            f"(tinygen.Tensor or None required)")
        self._forget(name, buffers)
        buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        """Add a child module (reachable as an attribute and in parameters(), state_dict(), ...)."""
        self._changed()
        _, _, modules = self._registries()
        _check_name("module", name)
        if name in self.__dict__ and name not in modules:
            raise KeyError(f"attribute '{name}' already exists")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass (child '{name}')")
        self._forget(name, modules)
        modules[name] = module

    register_module = add_module

    def __setattr__(self, name, value):
        d = self.__dict__
        if name == "training":  # the mode: tinygen.compile checks it itself (eval() and back changes nothing)
            rec = CAPTURE.recorder
            if rec is not None and not rec.depth and "training" in d:  # the mode the step found, before it changed
                rec.note_module(self, d["training"])
        else:
            old = d.get(name, _MISSING) if name[0] == "_" else getattr(self, name, _MISSING)  # no failed lookup
            if old is not value:
                if name[0] != "_":  # a new setting; not the module's own bookkeeping (DDP's no_sync flag, ...)
                    self._changed()
                rec = CAPTURE.recorder
                if rec is not None and not rec.depth:  # the step's own Python (a counter too, self._calls += 1):
                    rec.note_setting(self, name, old)  # tinygen.compile cannot replay it
        params, buffers, modules = d.get("_parameters"), d.get("_buffers"), d.get("_modules")
        if isinstance(value, Parameter):
            if params is not None:
                d.pop(name, None)  # a plain attribute of that name is replaced (as PyTorch)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                f"(tinygen.nn.Parameter or None expected)")
            params[name] = None
        elif isinstance(value, Module):
            if modules is not None:
                d.pop(name, None)
            self.add_module(name, value)
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                f"(tinygen.nn.Module or None expected)")
            modules[name] = None
        elif buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                f"(tinygen.Tensor or None expected)")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails: look in the registries (.get: unpickling has no dicts yet)
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            store = d.get(key)
            if store is not None and name in store:
                return store[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        self._changed()
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            store = d.get(key)
            if store is not None and name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    # ---- iteration ---------------------------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(name, module) for this module and every descendant, depth first, each module once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if self in memo:
                return
            memo.add(self)
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and child not in seen:
                seen.add(child)
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry, prefix, recurse, remove_duplicate=True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, t in getattr(mod, registry).items():
                if t is None or (remove_duplicate and id(t) in seen):
                    continue
                seen.add(id(t))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), t

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """(name, parameter) in PyTorch's order: a module's own parameters, then its children's, depth first.
        A parameter shared by several modules is listed once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target):
        """The descendant named by a dotted path, e.g. ``"encoder.0"``."""
        mod = self
        for part in target.split(".") if target else []:
            if part not in mod._modules or mod._modules[part] is None:
                raise AttributeError(f"{type(mod).__name__} has no submodule '{part}' (looking up '{target}')")
            mod = mod._modules[part]
        return mod

    # ---- modes and gradients -----------------------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (Dropout active, BatchNorm on batch statistics) here and in every descendant."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be a bool, got {type(mode).__name__}")
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    @replayed(grads=lambda self, set_to_none=True: ("drops", tuple(self.parameters())) if set_to_none else None,
              writes=lambda self, set_to_none=True: () if set_to_none else
              tuple(p._grad for p in self.parameters() if p._grad is not None))
    def zero_grad(self, set_to_none=True):
        """Reset the gradients of all parameters: to None (the default, as PyTorch), or to zeros in place."""
        for p in self.parameters():
            if p._grad is None:
                continue
            if set_to_none:
                p._grad = None
            else:
                g = p._grad if p._grad.grad_fn is None else p._grad.detach()
                g.data[...] = 0
                g._requires_grad = False
                p._grad = g

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant, then on this module (e.g. custom initialisation)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ---- moving between devices and dtypes ---------------------------------------------------------------------
    def to(self, *args, device=None, dtype=None):
        """Move/cast parameters and buffers in place: ``to("cuda")``, ``to(tinygen.float64)``, ``to(device, dtype)``.

        The Parameter objects stay the same (their arrays are replaced), so an optimizer built before the call
        keeps working. Only floating tensors change dtype (``num_batches_tracked`` stays int64).
        """
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, str) and a.split(":")[0] in backend.DEVICES:
                device = a
            else:
                try:
                    dtype = dtypes.as_dtype(a)
                except TypeError:
                    raise ValueError(f"Module.to: {a!r} is neither a device ('cpu', 'cuda') nor a dtype") from None
        if device is not None:
            device = backend.normalize_device(device)
            backend.array_module(device)  # a clear error now if the device is unavailable
        if dtype is not None:
            dtype = dtypes.as_dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"Module.to only accepts floating point dtypes, got {dtype.name}")
        for t in self._all_tensors():
            _move(t, device, dtype)
            if t.grad is not None:
                _move(t.grad, device, dtype)
        return self

    def _all_tensors(self):
        seen = set()
        for m in self.modules():
            for store in (m._parameters, m._buffers):
                for t in store.values():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        yield t

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtypes.float32)

    def double(self):
        return self.to(dtypes.float64)

    def half(self):
        return self.to(dtypes.float16)

    # ---- state_dict --------------------------------------------------------------------------------------------
    def _state_items(self, prefix=""):
        """(key, tensor) of every parameter and persistent buffer, named as PyTorch names them."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, b
        for name, child in self._modules.items():
            if child is not None:
                yield from child._state_items(prefix + name + ".")

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """An OrderedDict of parameter and persistent buffer tensors keyed like PyTorch (``"0.weight"``,
        ``"1.running_mean"``). Values share memory with the module (detached unless ``keep_vars``)."""
        out = OrderedDict() if destination is None else destination
        for key, t in self._state_items(prefix):
            out[key] = t if keep_vars else t.detach()
        return out

    @replayed  # copies in place: inside a compiled step (an EMA model's copy) every replay copies again
    def load_state_dict(self, state_dict, strict=True):
        """Copy values from ``state_dict`` into this module's parameters and buffers (in place: identities kept).

        A value of another dtype is cast to the parameter's or buffer's dtype as it is copied (as PyTorch's
        ``copy_``): a float64 checkpoint loads into a float32 model as float32, and the module's dtypes never
        change. Casting may round (float64 to float32 or float16) or truncate (float to an integer buffer).

        Raises RuntimeError listing missing keys, unexpected keys and shape mismatches (with both shapes);
        with ``strict=False`` missing/unexpected keys are allowed and returned as ``(missing_keys,
        unexpected_keys)``, but shape mismatches still raise.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"expected state_dict to be dict-like, got {type(state_dict).__name__}")
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems, values = [], {}
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if isinstance(value, Tensor):
                arr = value.data
            else:
                try:
                    arr = value if backend.is_device_array(value) else np.asarray(value)
                except Exception:
                    arr = None
                if arr is None or arr.dtype.kind not in "fiub":
                    problems.append(f"value for {key} is a {type(value).__name__}, not a tensor or array")
                    continue
            if tuple(arr.shape) != tuple(target.shape):
                problems.append(f"size mismatch for {key}: copying a param with shape {tuple(arr.shape)} from "
                                f"checkpoint, the shape in current model is {tuple(target.shape)}.")
                continue
            values[key] = arr
        if strict:
            if unexpected:
                problems.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected)
                                + ".")
            if missing:
                problems.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
        if problems:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" +
                               "\n\t".join(problems))
        for key, arr in values.items():
            target = own[key]
            arr = backend.to_device(arr, target.device)
            target.data[...] = arr.astype(target.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # ---- printing ----------------------------------------------------------------------------------------------
    def extra_repr(self):
        """The text inside the parentheses of this module's repr (its configuration); override in layers."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = []
        for name, child in self._modules.items():
            text = repr(child).replace("\n", "\n  ")
            child_lines.append(f"({name}): {text}")
        lines = extra_lines + child_lines
        body = ""
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                body = extra_lines[0]
            else:
                body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"


def _move(t, device, dtype):
    """Replace a tensor's array by one on ``device`` with ``dtype`` (floating tensors only change dtype)."""
    data = t.data
    if device is not None and device != t._device:
        data = backend.to_device(data, device)
        t._device = device
    if dtype is not None and data.dtype.kind == "f" and data.dtype != dtype:
        data = data.astype(dtype)
    t.data = data


# ---- containers ------------------------------------------------------------------------------------------------------
class _Indexed(Module):
    """What Sequential and ModuleList share: children named "0", "1", ... reachable by index."""

    def _index(self, idx):
        n = len(self._modules)
        if not isinstance(idx, (int, np.integer)) or not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for {type(self).__name__} of length {n}")
        return list(self._modules)[int(idx) % n]

    def __setitem__(self, idx, module):
        setattr(self, self._index(idx), module)

    def __delitem__(self, idx):
        keys = list(self._modules)[idx] if isinstance(idx, slice) else [self._index(idx)]
        for k in keys:
            del self._modules[k]
        # renumber, as PyTorch does, so indices stay 0..n-1
        items = list(self._modules.values())
        self._modules.clear()
        for i, m in enumerate(items):
            self._modules[str(i)] = m

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.insert: {type(module).__name__} is not a Module")
        n = len(self._modules)
        if not -n <= index <= n:
            raise IndexError(f"index {index} is out of range for {type(self).__name__} of length {n}")
        items = list(self._modules.values())
        items.insert(index, module)  # list semantics: -1 inserts before the last module, as PyTorch
        self._modules.clear()
        for i, m in enumerate(items):
            self._modules[str(i)] = m
        return self


class Sequential(_Indexed):
    """Modules applied one after another: ``Sequential(Linear(2, 8), ReLU(), Linear(8, 1))`` or from an
    OrderedDict of named modules. Supports indexing (ints and slices), len, iteration and append.

    A Linear, Conv2d or ConvTranspose2d followed by ReLU, LeakyReLU, ELU, Tanh, Sigmoid or Softplus runs as one
    fused node, and so does a BatchNorm followed by ReLU or LeakyReLU (see ``fuse_linear_activation``); the values
    and gradients are those of the two modules."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], dict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(args):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(module).__name__}, not a Module")
                self.add_module(str(i), module)

    #: Run a Linear (or a convolution, a BatchNorm) followed by a fusable activation module as one node
    #: (``F.linear_act``, ``F.conv2d_act``, ``F.conv_transpose2d_act``, ``F.batch_norm_act``; shown in the graph as
    #: e.g. ``Linear+ReLUBackward``, ``BatchNorm+ReLUBackward``): one pass over the output forward and backward. Set
    #: False on an instance (or the class) to run every module as its own node.
    fuse_linear_activation = True

    def forward(self, x):
        modules = tuple(self._modules.values())
        i, n = 0, len(modules)
        fuse = self.fuse_linear_activation
        while i < n:
            m = modules[i]
            if fuse and i + 1 < n and hasattr(m, "forward_activated"):  # Linear/Conv2d/BatchNorm, activation
                y = m.forward_activated(x, modules[i + 1])
                if y is not None:
                    rec = CAPTURE.recorder
                    if rec is not None and not rec.depth:  # neither's __call__ ran: tinygen.compile watches both
                        rec.note_module(m)
                        rec.note_module(modules[i + 1])
                    x, i = y, i + 2
                    continue
            x = m(x)
            i += 1
        return x

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return self._modules[self._index(idx)]


class ModuleList(_Indexed):
    """A list of modules whose parameters are registered; it has no forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward; iterate over it in your module's forward")

    def __iadd__(self, modules):
        return self.extend(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[self._index(idx)]
