"""What a ``tinygen.compile`` program checks and refuses beyond the ops it recorded (the stage "guard" in the
package's docstring). A replay runs the recorded ops on the tensors the recording found, so everything else the
step's Python code depended on must be the same, or the call must not replay:

  signature         what picks a program: the arguments (shapes, dtypes, devices; one tensor passed twice), the
                    grad mode, and the numbers and strings the step's code reads (``PythonValues``: a KL weight
                    in a global, read by the step, a helper, a module's forward or a loss object, records anew
                    when it changes), and the code it finds (a helper redefined, a method patched: anew too)
  bindings          where the step's code found the tensors it used (a global, a closure variable, an attribute
                    of its object or of an argument): one that holds another tensor at a later call raises
  host draws        Python's and NumPy's global random generators, refused while a step records
  untracked writes  tensors whose values the recorded call changed outside ops and recorded calls (array code
                    on ``.data``), refused around the next recorded write or at the end of the call
  Python state      a list, dict, object or variable the step's Python changed, or a module attribute it set:
                    a replay would not, so no program is kept

``places`` is where all of them look: what the step's own code can reach.
"""
import collections
import contextlib
import enum
import functools
import hashlib
import operator
import pickle
import random
import sys
import types

import numpy as np

from .. import kernels
from ..autograd import engine
from ..autograd.function import user_frame
from ..autograd.grad_mode import STATE
from ..backend import to_device
from ..capture import is_replayed, recording, tensors_written
from ..tensor import Tensor, get_default_dtype
from .steps import CompileError, children, dataclass_items, is_dataclass_instance, replay_call, tensors_in


def places(fn, args=(), kwargs=None, data=()):
    """Where a step's own code finds values that a caller may change between calls: (where, named, a function giving
    what is there now). The globals its code names, its closure variables, its object (a method's ``self``, or
    ``fn`` itself when it is a callable object such as a module) and its arguments (also those a
    ``functools.partial`` binds), each with its attributes, and one level into a list, tuple, dict or plain object
    (a config) found at any of these, up to ``CONFIG_DEPTH`` levels into what the code names
    (``cfg["loss"]["beta"]``, ``losses.KL_WEIGHT`` of a module of the user's). The step's code is its own and that
    of the user's code it reaches (``reached``: helpers, methods of its object, the forward of a module it calls, a
    loss object's ``__call__``), with the attributes of their objects that code names, and each such method as an
    attribute of its class (where a patch would replace it). ``named``: read by name in that code (a global, a
    closure variable, an attribute named, an item of such a dict at a key the code spells out, or holding code at
    any key (a registry of loss functions), or of such a tuple or list, an attribute named of such a plain object),
    not only reachable. ``data``: the ids of lists whose items are data, not settings (``read_anew``: a buffer a
    recorded call reads anew on every replay, ``tinygen.tensor(rows)``)."""
    func, bound, bound_kwargs = fn, (), {}
    while isinstance(func, functools.partial):  # the arguments it binds are the step's arguments too
        bound, bound_kwargs = func.args + bound, {**func.keywords, **bound_kwargs}
        func = func.func
    owner = getattr(func, "__self__", None) if isinstance(func, types.MethodType) else None
    func = getattr(func, "__func__", func)  # a bound method's function
    code = getattr(func, "__code__", None)
    owner = owner if code is not None else func
    codes = reached(func if code is not None else None, owner,
                    _objects(args, kwargs) + _objects(bound, bound_kwargs))
    names = {}  # the globals and attributes the code names
    for _, read, _ in codes:
        names.update(read)
    found, seen, objects = [], set(), {}  # objects: id -> (object, the names its methods read, the first method)
    for f, read, obj in codes:
        space, by = f.__globals__, "" if f is func else f" (read by {f.__qualname__})"
        for n in read:
            if n in space and (id(space), n) not in seen:
                seen.add((id(space), n))
                found.append((f"the global {n!r}{by}", True, functools.partial(space.get, n)))
        if f.__closure__ and id(f) not in seen:
            seen.add(id(f))
            of = "the enclosing function" if f is func else f"the function enclosing {f.__qualname__}"
            found += [(f"the variable {n!r} of {of}", True, functools.partial(_cell_value, cell))
                      for n, cell in zip(f.__code__.co_freevars, f.__closure__)]
        if (f.__defaults__ or f.__kwdefaults__) and (id(f), "defaults") not in seen:  # state={"t": 0}, cfg=cfg
            seen.add((id(f), "defaults"))
            found += [(f"the default of the parameter {n!r} of {f.__qualname__}", True, functools.partial(_same, v))
                      for n, v in _defaults(f) if not _is_setting(v)]
        if obj is not None and obj is not owner:
            objects.setdefault(id(obj), (obj, set(), f))[1].update(read)
        klass = obj if isinstance(obj, type) else type(obj)
        if obj is not None and (id(klass), f) not in seen:  # a method patched onto its class: other code
            seen.add((id(klass), f))
            name = _method_name(klass, f)
            if name is not None:
                found.append((f"the method {name!r} of the class {klass.__name__}", True,
                              functools.partial(_function_in, klass, name)))
    owners = [("the step's object", owner)]
    owners += [(f"argument {i}", a) for i, a in enumerate(args)]
    owners += [(f"keyword argument {k!r}", a) for k, a in (kwargs or {}).items()]
    owners += [(f"argument {i} bound by functools.partial", a) for i, a in enumerate(bound)]
    owners += [(f"keyword argument {k!r} bound by functools.partial", a) for k, a in bound_kwargs.items()]
    for where, obj in owners:
        if obj is None or isinstance(obj, (Tensor, type)) or _is_batch(obj):  # (a tensor argument is the
            continue  # program's input; a batch's fields are part of the signature)
        found.append((where, False, functools.partial(_same, obj)))
        found += _attribute_places(obj, f"{where} ({type(obj).__name__})", names, every=True)
    for obj, read, f in objects.values():  # another object's attributes its methods name (self.weight, cls.beta)
        if _is_module(obj):  # (a module's mode is a guard of the program already)
            read = read - {"training"}
        kind = f"class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
        found += _attribute_places(obj, f"the {kind} whose {f.__qualname__} reads it", read)
    keys = set().union(*(_strings(f.__code__) for f, _, _ in codes))
    level = list(found)
    for depth in range(CONFIG_DEPTH):  # one level into what is found; deeper into what the code names
        deeper = []
        for where, named, get in level:  # into a list, tuple, dict or plain object found there
            if depth and not named:
                continue
            value = get()
            if isinstance(value, dict):  # named: at a key the code spells out (cfg["beta"]), or names (hp.beta of
                spelled = keys if type(value) is dict else keys | names.keys()  # a dict read by attribute); code at
                deeper += [(f"item {k!r} of {where}", named and (k in spelled or _is_code(v)),  # any key (a registry
                            functools.partial(_item, get, k)) for k, v in list(value.items())]  # of losses)
            elif isinstance(value, (list, tuple)):  # named: a short tuple or list the code names (GAINS[0],
                short = named and len(value) <= CONTAINER_MAX and id(value) not in data  # self.weights[1]), not a
                deeper += [(f"item {i!r} of {where}", short, functools.partial(_item, get, i))  # buffer read anew
                           for i in range(len(value))]
            elif named and (_is_plain(value) or _is_users_module(value)):  # a config object (args.beta,
                # self.cfg.beta, Config.beta) or a module of the user's (losses.KL_WEIGHT, losses.kl): what
                deeper += [(f"the attribute {n!r} of {where}", True, functools.partial(_member_of, get, n))  # it
                           for n in names if _config_member(value, n)]  # names, a setting or a config
        found += deeper
        level = deeper
    return found


def _attribute_places(obj, where, read, every=False):
    """The places of ``obj``'s attributes (``where``: how to name ``obj``): those in its ``__dict__`` that ``read``
    names (``every``: all of them, named when ``read`` names them), and the settings ``read`` names that it finds
    in its class (``gain = 1.0`` in a class body; a class's own settings, for a class)."""
    attributes = _fields(obj)
    if attributes is None:
        if not isinstance(obj, type):
            return []
        attributes = {}  # (a class's own: its settings, below)
    get = _attribute if type(_attr(obj, "__dict__")) is dict else _slot
    found = [(f"the attribute {n!r} of {where}", n in read, functools.partial(get, obj, n))
             for n in list(attributes) if every or n in read]
    found += [(f"the attribute {n!r} of {where}", True, functools.partial(_number_in, obj, n))
              for n in read if n not in attributes and _number_in(obj, n) is not _ABSENT]
    return found


def _defaults(func):
    """(parameter name, default value) of a function's parameters that have one."""
    code, positional = func.__code__, func.__defaults__ or ()
    names = code.co_varnames[:code.co_argcount][-len(positional):] if positional else ()
    return [*zip(names, positional), *(func.__kwdefaults__ or {}).items()]


def _is_plain(value):
    """Whether ``value`` is an object whose attributes are plain data (a config object, an argparse namespace, a
    class of settings of the user's): not a tensor, a module, a function, a Python module or a library's class."""
    if isinstance(value, type):
        return _is_users_class(value)
    return (_fields(value) is not None and not isinstance(
        value, (Tensor, types.ModuleType, types.FunctionType, types.MethodType)) and not _is_module(value))


def _fields(obj):
    """An object's own attributes as a dict: its ``__dict__``, or for an object of a class of the user's with
    ``__slots__`` (``@dataclass(slots=True)``), the slots that are set; None for neither (and for a class)."""
    attributes = _attr(obj, "__dict__")
    if type(attributes) is dict:
        return attributes
    slots = () if isinstance(obj, type) else _slot_names(type(obj))
    return {n: v for n in slots if (v := _attr(obj, n, _ABSENT)) is not _ABSENT} if slots else None


@functools.lru_cache(maxsize=256)
def _slot_names(cls):
    """The names of the ``__slots__`` of ``cls`` and its bases, if ``cls`` is a class of the user's, else ()."""
    if not _is_users_class(cls):
        return ()
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names += [n for n in ((slots,) if isinstance(slots, str) else slots) if n not in ("__dict__", "__weakref__")]
    return tuple(dict.fromkeys(names))


def _member_in(obj, name):
    """``obj.name``, in the object or in its class (a property is not called: ``_ABSENT``), or what its class's
    ``__getattr__`` gives (a config object keeping its settings in a dict), else ``_ABSENT``."""
    attributes = _attr(obj, "__dict__")
    klass = obj if isinstance(obj, type) else type(obj)
    if type(attributes) is dict and name in attributes:
        return attributes[name]
    value = _attr(klass, name, _ABSENT)
    if type(value) is types.MemberDescriptorType and klass is not obj:  # a slot (``_fields``)
        return _attr(obj, name, _ABSENT) if name in _slot_names(klass) else _ABSENT
    if value is _ABSENT and klass is not obj and hasattr(klass, "__getattr__"):
        value = _attr(obj, name, None)
        value = _ABSENT if value is None else value
    return _ABSENT if isinstance(value, (property, types.MemberDescriptorType)) else value


def _number_in(obj, name):
    """The setting ``obj.name`` (``_member_in``), else ``_ABSENT``."""
    value = _member_in(obj, name)
    return value if _is_setting(value) else _ABSENT


def _function_in(klass, name):
    """The function behind the class attribute ``klass.name`` (a method, a property's getter, a static or class
    method), else what is there."""
    return _function_of(_attr(klass, name))


def _function_of(value):
    value = value.fget if isinstance(value, property) else value
    return value.__func__ if isinstance(value, (types.MethodType, staticmethod, classmethod)) else value


def _method_name(klass, func):
    """The name under which ``klass`` or a base of it holds the method ``func`` (``_function_of``; or a decorator
    wrapping it, ``_unwrapped``), else None."""
    for k in klass.__mro__:
        for name, value in list(vars(k).items()):
            if any(f is func for f in _unwrapped(_function_of(value))):
                return name
    return None


def _member_of(get, name):
    value = _member_in(get(), name)
    return None if value is _ABSENT else value


def _config_member(obj, name):
    """Whether the attribute ``name`` of the config object or module of the user's ``obj`` is a place: a setting,
    a dict, list, tuple, NumPy array, set, deque, config object or module of the user's within it, or code it holds
    itself (a loss function set on it, a module's function; not its class's methods)."""
    value = _member_in(obj, name)
    if value is _ABSENT:
        return False
    if (_is_setting(value) or isinstance(value, (dict, list, tuple, *_HELD)) or _is_plain(value)
            or _is_users_module(value)
            or _generator_state(value) is not None):
        return True
    return _is_code(value) and name in (_fields(obj) or ())


def _attribute(obj, name):
    return obj.__dict__.get(name)


def _slot(obj, name):
    return getattr(obj, name, None)


class _Contents(tuple):
    """(the type of a NumPy array, set or deque at a place, what it holds: ``_contents_key``): part of a signature,
    by value."""


_HELD = (np.ndarray, set, frozenset, collections.deque)  # what a signature holds the contents of (``_contents_key``)


def _contents_key(get):
    """The values of the NumPy array of up to ``ARRAY_MAX`` elements (as bytes), or the items of the set or deque of
    up to ``CONTAINER_MAX`` (settings by value, anything else by identity), at a place; else None."""
    value = get()
    kind = type(value)
    if kind is np.ndarray:
        return _Contents((kind, value.tobytes())) if value.size <= ARRAY_MAX else None
    if kind not in _HELD or len(value) > CONTAINER_MAX:
        return None
    items = tuple(v if _is_setting(v) else id(v) for v in value)
    return _Contents((kind, items if kind is collections.deque else frozenset(items)))


def _size_of(get):
    """How many items the dict, list or tuple, or attributes the plain object, at a place holds now (None: none of
    these now)."""
    value = get()
    items = value if type(value) in (dict, list, tuple) else _fields(value)
    return None if items is None else len(items)


def _holder(get):
    """The object whose attribute the place ``get`` reads (``places``), else None."""
    if type(get) is functools.partial:
        if get.func is _attribute or get.func is _slot or get.func is _number_in:
            return get.args[0]
        if get.func is _member_of:
            return get.args[0]()
    return None


HELPER_DEPTH = 3  # calls deep: the step's helpers, theirs and theirs
WRAPPERS_MAX = 8  # decorators around one function followed inward
CONFIG_DEPTH = 3  # levels into a config the code names (cfg["loss"]["beta"], args.loss.beta)
CONTAINER_MAX = 64  # the items of a longer list or dict the code names are not followed (a dataset held whole)
ARRAY_MAX = 4096  # the values of a larger NumPy array the code names are not part of the signature (a dataset)


def reached(func, owner, objects=()):
    """The step's function (None for a callable object) and the user's code it reaches, HELPER_DEPTH calls deep,
    each function once for each object it is a method of: (function, the names its code reads (``_names``), its
    object or None). Reached are the functions its code names (a global, a closure variable) and the methods of
    the objects it names or takes as arguments (``objects``; ``_methods``: a method it calls by name, or any
    method of its object when it calls ``getattr``, ``__call__``, a module's forward and those of its submodules),
    found there, among the attributes of its own object, or one level into a list, tuple or dict found there (a
    trainer's list of loss objects). The user's: not tinygen's, nor the standard library's or an installed
    package's (their numbers are constants, their state their own)."""
    found, todo = {}, collections.deque()
    if func is not None:
        todo.append((func, 0, owner))
    read = _names(func.__code__) if func is not None else ()
    for obj in (owner,) * (func is None and owner is not None) + objects:  # a callable object, the arguments
        todo.extend((m, 0 if obj is owner else 1, o) for m, o in _code_of(obj, read))
    while todo:  # breadth first: each function at the fewest calls from the step
        f, depth, obj = todo.popleft()
        key = (f.__code__, id(obj))
        if key in found:
            continue
        read = _names(f.__code__)
        found[key] = (f, read, obj)
        if depth == HELPER_DEPTH:
            continue
        near = [f.__globals__.get(n) for n in read] + [_cell_value(c) for c in f.__closure__ or ()]
        if obj is not None:
            attributes = _fields(obj) or {}
            submodules = attributes.get("_modules") if _is_module(obj) else None
            near += [attributes[n] if n in attributes else submodules.get(n) if submodules else None for n in read]
            todo.extend((m, depth + 1, o) for m, o in _methods(obj, read if "getattr" not in read else
                                                              (*read, *_method_names(type(obj)))))
        for g in [*near, *(v for g in near if isinstance(g, (list, tuple, dict)) and len(g) <= CONTAINER_MAX
                           for v in (g.values() if isinstance(g, dict) else g))]:  # one level in, as ``places``
            todo.extend((m, depth + 1, o) for m, o in _code_of(g, read))
    return list(found.values())


def _code_of(value, read, wrappers=0):
    """The user's functions that calling ``value``, or its methods named in ``read``, may run, with their object (None
    for a plain function): a function, a bound method, a ``functools.partial`` of one, the static and class methods
    named of a class of the user's and its ``__init__``, ``__call__`` and ``forward``, the functions (and objects'
    methods) named of a module of the user's (``losses.kl(mu, logvar)``), or an object's methods (``_methods``) and
    what it wraps, if it is a wrapper (``__wrapped__``: a function compiled with ``tinygen.compile``, which runs it
    eagerly inside a recording)."""
    while isinstance(value, functools.partial):
        value = value.func
    if isinstance(value, types.MethodType):
        value, obj = value.__func__, value.__self__
    else:
        obj = None
    if isinstance(value, types.FunctionType):
        return [(f, obj) for f in _unwrapped(value) if _users(f)]
    if isinstance(value, type):  # a class of the user's: its static and class methods named (Losses.l2(h)), and
        # what making one and calling it runs (Margin(0.2)(out, y), an object the step makes)
        return [found for n in dict.fromkeys((*read, "__init__", *_CALLED)) for found in _code_of(_attr(value, n), ())
                ] if _is_plain(value) else []
    if isinstance(value, types.ModuleType):
        return [found for n in read for found in _code_of(_attr(value, n), ())] if _is_users_module(value) else []
    if value is None or type(value) in _SCALARS:
        return []
    wrapped = _attr(value, "__wrapped__") if callable(value) else None
    inner = wrapped is not None and wrapped is not value and wrappers < WRAPPERS_MAX  # (objects wrapping each other)
    return _methods(value, read) + (_code_of(wrapped, read, wrappers + 1) if inner else [])


_CALLED = ("__call__", "forward")  # what calling an object runs (a module's __call__ runs its forward)
_NOT_BY_SYNTAX = frozenset(("__init__", "__new__", "__del__", "__init_subclass__", "__set_name__", "__class_getitem__",
                            "__getstate__", "__setstate__", "__reduce__", "__reduce_ex__", "__copy__", "__deepcopy__",
                            "__repr__", "__str__"))


def _methods(obj, read):
    """The user's methods of ``obj`` that code naming it (reading the names ``read``) may run, with their object:
    those of its class named in ``read`` (a property's getter too), its ``__call__`` and the special methods its
    class defines (``_syntax_methods``); for a module, the forward of it and of each of its submodules too."""
    found = []
    for o in obj.modules() if _is_module(obj) else (obj,):
        klass = type(o)
        for n in dict.fromkeys((*read, *_CALLED, *_syntax_methods(klass)) if o is obj else _CALLED):
            m = _attr(klass, n)
            m = m.fget if isinstance(m, property) else m  # (a property's getter: self.weight computed)
            found += [(f, o) for f in _unwrapped(m) if _users(f)]
    return found


def _unwrapped(func):
    """The functions a call of the function ``func`` runs when the step records: ``func``, and inward the
    function each decorator wraps (``__wrapped__``, which ``functools.wraps`` sets: ``@tinygen.no_grad()``, the
    user's own decorators); none from a ``@replayed`` function on, which a replay calls again (what it reads, it
    reads anew)."""
    for _ in range(WRAPPERS_MAX):
        if not isinstance(func, types.FunctionType) or is_replayed(func):
            return
        yield func
        func = _attr(func, "__wrapped__")


@functools.lru_cache(maxsize=256)
def _syntax_methods(klass):
    """The special methods the user's classes among ``klass`` and its bases define (``__getitem__``,
    ``__contains__``, ``__len__``, ``__iter__``, ...): what the step's syntax on such an object runs without naming
    them (``cfg["beta"]``, ``"beta" in cfg``, ``len(cfg)``, ``a, b = pair``)."""
    return tuple(dict.fromkeys(n for k in klass.__mro__ if _is_users_class(k) for n, v in list(vars(k).items())
                               if n[:2] == n[-2:] == "__" and n not in _NOT_BY_SYNTAX
                               and isinstance(_function_of(v), types.FunctionType)))


def _method_names(klass):
    """The names of the methods (and properties) the user's classes among ``klass`` and its bases define: what code
    calling ``getattr`` on its object with a name it computes (``getattr(self, "loss_" + self.kind)``) may run."""
    return [n for k in klass.__mro__ if _is_users_class(k) for n, v in list(vars(k).items())
            if isinstance(_function_of(v), types.FunctionType)]


def _users(func):
    return _users_code(func.__module__, func.__code__.co_filename)


def _is_users_class(cls):
    """Whether the class ``cls`` is the user's (defined in a module of the user's)."""
    module = sys.modules.get(cls.__module__)
    return _users_code(cls.__module__, getattr(module, "__file__", None))


def _is_users_module(value):
    """Whether ``value`` is a Python module of the user's (``losses.py`` beside the script)."""
    return isinstance(value, types.ModuleType) and _users_code(value.__name__, _attr(value, "__file__"))


def _users_code(module, path):
    """Whether code of the module named ``module``, in the file ``path``, is the user's: not in a library folder
    (``_library_dirs``: tinygen's, the standard library's, an installed package's), whatever its module name (a
    wrapper ``functools.wraps`` made in tinygen carries the name of its function's module); a script run as
    ``__main__`` is, with or without a file."""
    if path and path.startswith(_library_dirs()):
        return False
    return module == "__main__" or bool(path)


@functools.cache
def _library_dirs():
    """The standard library's and the installed packages' folders (the user's own site-packages too), and
    tinygen's own (an editable install's is elsewhere: a ``@replayed`` wrapper, made in tinygen, carries the user's
    ``__module__``), asked once, when a step first records. From ``os`` and ``site``, not ``sysconfig``, whose
    tables (about 170 kB held for the rest of the process) a compiled step need not load."""
    import os
    import site
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stdlib = os.path.dirname(os.path.abspath(os.__file__))  # where the standard library's Python code is
    packages = [*site.getsitepackages(), site.getusersitepackages()]
    return tuple({os.path.join(d, "") for d in (here, stdlib, *packages)})


def _names(code):
    """The global and attribute names a code object reads, and those of the code nested in it (lambdas,
    comprehensions, generator expressions); in code that calls ``getattr`` or ``hasattr``, its strings that are
    names too (``getattr(args, "beta", 1.0)``)."""
    found = dict.fromkeys(code.co_names)
    if "getattr" in found or "hasattr" in found:
        found.update(dict.fromkeys(c for c in code.co_consts if type(c) is str and c.isidentifier()))
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            found.update(_names(c))
    return found


def _strings(code):
    """The string constants of a code object and of the code nested in it (lambdas, comprehensions)."""
    found = set()
    for c in code.co_consts:
        if isinstance(c, str):
            found.add(c)
        elif hasattr(c, "co_consts"):
            found |= _strings(c)
    return found


def _same(value):
    return value


def _attr(obj, name, default=None):
    """``getattr(obj, name, default)`` that a class's ``__getattr__`` raising another error (a config object
    looking names up in a dict: KeyError) does not break."""
    try:
        return getattr(obj, name, default)
    except Exception:  # noqa: BLE001 - any error means: not there
        return default


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:  # not filled yet
        return cell


# ---- signature ---------------------------------------------------------------------------------------------------
def _sig(a):
    if isinstance(a, Tensor):
        return ("tensor", a.data.shape, a.data.dtype.str, a._device, a._requires_grad)
    if isinstance(a, (tuple, list)):
        return (type(a).__name__,) + tuple(_sig(x) for x in a)
    if isinstance(a, dict):
        return ("dict",) + tuple((k, _sig(v)) for k, v in a.items())
    if _is_batch(a):  # its fields, as a namedtuple's
        return ("dataclass", type(a)) + tuple((k, _sig(v)) for k, v in dataclass_items(a))
    try:
        hash(a)
    except TypeError:
        return ("object", id(a), type(a).__name__)
    return ("value", type(a).__name__, a)


def signature(args, kwargs, values, tensors):
    """What picks a program: the grad mode, the arguments (``_sig``), which of their tensors (``tensors``:
    ``tensors_in(args, kwargs)``) are one tensor passed twice (one input slot of the program), the Python
    values the step's own code reads beside them (``values``: ``PythonValues``), and the default dtype (of the
    tensors the step makes from numbers and shapes: ``zeros``, ``tensor(0.5)``, ``randn``)."""
    ids = [id(t) for t in tensors]
    same = tuple(ids.index(i) for i in ids) if len(set(ids)) < len(ids) else None
    return (STATE.grad_enabled, _sig(args), _sig(kwargs), values, same, get_default_dtype())


_SCALARS = frozenset((int, float, bool, complex, str, type(None)))


def _is_setting(value):
    """Whether ``value`` is a number, a string, None, an enum member or a NumPy scalar: a setting, compared by
    value (a signature's part, a place unchanged when equal)."""
    return type(value) in _SCALARS or isinstance(value, (enum.Enum, np.generic))


_CODE = (types.FunctionType, types.MethodType, functools.partial, type)


def _is_code(value):
    """Whether ``value`` is code the step may call (a function, a bound method, a partial, a class): part of a
    signature by identity (a method by its function and object)."""
    return isinstance(value, _CODE)


_KINDS = {}  # type -> how its values enter a signature (``_kind``): asked once a type, looked up on every call
_ITSELF, _FUNCTION, _METHOD = 1, 2, 3


def _kind(cls):
    """How the values of the type ``cls`` enter a signature (``signature_values``), noted in ``_KINDS``: a function
    or method with its code (the first two of ``_CODE``), another setting or code itself."""
    found = _FUNCTION if issubclass(cls, types.FunctionType) else _METHOD if issubclass(cls, types.MethodType) else \
        _ITSELF if cls in _SCALARS or issubclass(cls, (enum.Enum, np.generic, _Contents, *_CODE)) else 0
    _KINDS[cls] = found
    return found


def signature_values(places):
    """((where, what its value adds to a signature), ...) for the ``places`` (``(where, get)`` pairs) whose value
    is a setting (``_is_setting``: itself) or code (``_is_code``: by identity; a function with its code object, a
    method with its function's: IPython's autoreload puts the new code into the function objects it has)."""
    found = []
    for where, get in places:
        value = get()
        kind = _KINDS.get(value.__class__)
        if kind is None:
            kind = _kind(value.__class__)
        if kind:
            found.append((where, value if kind == _ITSELF else (value, value.__code__) if kind == _FUNCTION else
                          (value, _attr(value.__func__, "__code__"))))
    return tuple(found)


_ABSENT = object()  # a place that held no number at one of two signatures


class PythonValues:
    """The settings the step's code reads by name (``_is_setting``: numbers, strings, enum members, NumPy scalars;
    ``places``: its globals, closure variables, the attributes of its object and its arguments that it names, and
    those that the user's code it reaches names; the attributes it names of a module of the user's), and the code it
    finds there (``signature_values``: a helper function, a loss function, a class, by identity; a function with its
    code), how many items each dict, list, tuple or plain object there holds (a key added later: ``cfg.get("beta",
    1.0)``; an item appended, ``weights[-1]``), and what a small NumPy array, a set or a deque there holds
    (``_contents_key``: ``float(w[1])``, ``1 - dones``, ``epoch in milestones``; not an array or list a recorded
    call reads anew, ``learn``). Such a value feeds the recording as an argument does (a branch taken, a constant of
    an op; the ops a helper runs), so it is part of the signature, and another value records anew: a helper
    redefined in a notebook cell between calls runs as redefined, as does a method of the user's patched onto its
    class (``places``: each method the code reaches is a place of its class). Called with a call's arguments,
    returns ((where, value), ...) for those holding a setting or code now. (What library code reads is not seen:
    pass it as an argument, a 0-d tensor if it changes on every call.)"""

    def __init__(self, fn):
        self.fn, self.objects, self.wheres = fn, (), None
        self.data = {}  # id -> a list whose items are data (``learn``)
        self.update()

    def update(self, args=(), kwargs=None):
        """Look at the places anew (a global set after ``compile``, other objects as arguments); returns whether
        they are other places than before."""
        self.objects = _objects(args, kwargs)
        self.sources = []
        self.held = set()  # ids of the lists and arrays at the places (what ``learn`` may take as data)
        for where, named, get in places(self.fn, args, kwargs, self.data):
            value = get()
            if type(value) in (list, np.ndarray):
                self.held.add(id(value))
            if not named or isinstance(value, (types.ModuleType, types.BuiltinFunctionType, Tensor)) or _is_module(
                    value):  # (a Python module stays; a tensor or module used is a binding: ``bindings``)
                continue
            self.sources.append((where, get))
            if type(value) in _HELD and id(value) not in self.data:  # w[0], w > 2, i in milestones, queue[-1]
                what = "the values of the NumPy array" if type(value) is np.ndarray else \
                    f"the items of the {type(value).__name__}"
                self.sources.append((f"{what} in {where}", functools.partial(_contents_key, get)))
            if isinstance(value, (dict, list, tuple)) or (_is_plain(value) and not isinstance(value, type)):
                # an item or attribute added later is no place yet: cfg.get("beta", 1.0), hasattr(args, "gamma")
                self.sources.append((f"the number of items in {where}", functools.partial(_size_of, get)))
        wheres, self.wheres = self.wheres, [where for where, _ in self.sources]
        return wheres is not None and wheres != self.wheres

    def learn(self, data, args, kwargs):
        """Take the items of the lists and the values of the NumPy arrays ``data`` (``read_anew``: id -> list or
        array) as data from now on, not settings: a recorded call reads them anew on every replay. Only those at
        the step's places are kept (not a list or array the step made: kept here, it would never be freed). Returns
        whether that changed the places (the signature is then another)."""
        new = {k: v for k, v in data.items() if k in self.held and k not in self.data}
        if not new:
            return False
        self.data.update(new)
        return self.update(args, kwargs)

    def __call__(self, args, kwargs):
        look = self.objects or kwargs
        if not look:
            for a in args:  # (a loop: cheaper than any() on this path of every call)
                if type(a) not in _PLAIN:
                    look = True
                    break
        if look and not _same_objects(self.objects, _objects(args, kwargs)):
            self.update(args, kwargs)
        if not self.sources:
            return ()
        return signature_values(self.sources)


_PLAIN = _SCALARS | {Tensor, tuple, list, dict}  # arguments no code is read for


def _objects(args, kwargs):
    """The arguments whose methods the step may call (not tensors, numbers, containers or batches)."""
    return tuple(a for a in (*args, *(kwargs or {}).values())
                 if type(a) not in _PLAIN and not isinstance(a, (Tensor, tuple, list, dict))  # (a namedtuple)
                 and not _is_batch(a))


def _is_batch(value):
    """Whether ``value`` is a dataclass instance holding tensors (a batch, a result): read as a namedtuple is, its
    tensors the step's inputs and its other fields part of the signature. (One without tensors, a config, is an
    object whose attributes and methods are read.)"""
    return is_dataclass_instance(value) and bool(tensors_in(value))


def _same_objects(a, b):
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def what_changed(old, new):
    """The first difference between two signatures (``signature``) in words, and what to do about it."""
    enlarge = "raise cache_size"
    if old is None or old[0] != new[0]:
        return "The grad mode differs between the calls", enlarge
    for kind, a, b in (("argument", old[1], new[1]), ("keyword argument", old[2], new[2])):
        if len(a) != len(b):
            return f"The number of {kind}s differs between the calls", enlarge
        for i, (x, y) in enumerate(zip(a[1:], b[1:])):
            name = i
            if kind == "keyword argument":
                (name, x), (other, y) = x, y
                if name != other:
                    return "The keyword arguments differ between the calls", enlarge
            if x != y:
                where, x, y = _difference(x, y, f"{kind} {name!r}")
                change = f"{where[0].upper()}{where[1:]} was {_sig_text(x)}, then {_sig_text(y)}"
                if x[0] == y[0] == "object" and x[2] == y[2]:  # (by identity)
                    change = (f"{where[0].upper()}{where[1:]} was another {_object_text(x)} at each call (an "
                              f"unhashable object is part of the signature by identity)")
                if x[0] == y[0] == "value" and x[1] in ("int", "float") and y[1] in ("int", "float"):
                    if where.startswith("item "):  # (a list of data, a batch's step count)
                        return change, ("the numbers in an argument's lists, tuples and dicts are part of the "
                                        "signature: pass data that changes between calls as tensors")
                    return change, "pass a number that changes between calls as a 0-d tensor"
                if x[0] == y[0] == "value" and x[1] == y[1] and type(x[2]).__eq__ is object.__eq__:
                    return change, ("a new object on every call is a new signature: pass the tensors and numbers "
                                    "it holds as arguments")
                if x[0] == y[0] == "object" and x[2] == y[2] == "ndarray":
                    return change, ("pass the arrays that change between calls as tensors (tinygen.from_numpy(array) "
                                    "before the call shares its memory)")
                return change, enlarge
    if old[4] != new[4]:
        return "The same tensor was passed twice in one call and not in the other", enlarge
    if old[5] != new[5]:
        return f"The default dtype was {old[5].name}, then {new[5].name}", "set it once, before the first call"
    before, after = dict(old[3]), dict(new[3])
    for where in [*before, *(w for w in after if w not in before)]:  # (in order: the first difference named)
        if before.get(where, _ABSENT) != after.get(where, _ABSENT):
            was, now = (v[0] if type(v) is tuple else v for v in (before.get(where, _ABSENT),  # code: (function,
                                                                  after.get(where, _ABSENT)))  # its code object)
            if type(was) is _Contents or type(now) is _Contents:  # (``_contents_key``)
                if (was if type(was) is _Contents else now)[0] is not np.ndarray:
                    return f"{where[0].upper()}{where[1:]} changed", enlarge
                return (f"{where[0].upper()}{where[1:]} changed", "the values the step's Python reads from a NumPy "
                        "array are settings of the program; make a tensor of the array inside the step, "
                        "tinygen.tensor(the array), which a replay reads anew, and compute with tensors")
            change = f"{where[0].upper()}{where[1:]} was {_value_text(was)}, then {_value_text(now)}"
            if type(was) in (int, float) and type(now) in (int, float):
                if where.startswith("item ") and where.split()[1].isdigit():  # a list's item (rows[0]): data?
                    return change, ("numbers the step's code reads from a list are settings of the program; pass "
                                    "data that changes between calls as a tensor argument, or make the tensor "
                                    "inside the step, tinygen.tensor(the list), which a replay reads anew")
                return change, "pass a number that changes between calls to the step as a 0-d tensor argument"
            if _is_code(was) and _is_code(now):
                return change, "define the function once, outside the loop that calls the step"
            return change, enlarge
    return "The signatures differ", enlarge


def _difference(x, y, where):
    """The innermost part where two argument signatures (``_sig``) differ, through containers of the same kind and
    length: (how to name it, its signature then, now)."""
    if x[0] in ("tensor", "value", "object") or x[0] != y[0] or len(x) != len(y):
        return where, x, y
    keyed = x[0] in ("dict", "dataclass")
    for i, (u, v) in enumerate(zip(x[1:], y[1:])):
        if u == v:
            continue
        if not keyed:
            return _difference(u, v, f"item {i} of {where}")
        if not isinstance(u, tuple) or not isinstance(v, tuple) or u[0] != v[0]:  # (a dataclass's type, a key)
            return where, x, y
        return _difference(u[1], v[1], f"the field {u[0]!r} of {where}" if x[0] == "dataclass" else
                           f"item {u[0]!r} of {where}")
    return where, x, y


def _object_text(sig):
    return "NumPy array" if sig[2] == "ndarray" else sig[2]


def _value_text(value):
    return "not a number" if value is _ABSENT else f"{value!r}"


def _sig_text(sig):
    if sig[0] == "tensor":
        return f"a tensor of shape {sig[1]}, dtype {np.dtype(sig[2]).name} on {sig[3]}" + (
            ", requiring grad" if sig[4] else "")
    if sig[0] == "value":
        return f"{sig[1]} {sig[2]!r}"
    if sig[0] == "object":
        return f"a new {_object_text(sig)} (each new one is a new signature)"
    if sig[0] == "dataclass":
        return f"a {sig[1].__name__} (" + ", ".join(f"{k}: {_sig_text(v)}" for k, v in sig[2:]) + ")"
    return f"a {sig[0]} of {len(sig) - 1}"



# ---- bindings -------------------------------------------------------------------------------------------------------
def bindings(found_places, used, taken):
    """Where (``places``) the step's code found what it used and a replay uses again as recorded: the tensors it
    neither made nor took as arguments and the modules it called (``used``: their ids), and apart, the other objects
    its recorded calls take (``taken``: an optimizer, a scheduler). Each place must still hold the same object
    (``stale``): a caller who points a global at new data, or ``self.model`` at another model, gets an error, not
    the recorded one; another optimizer there (``opt = SGD(...)`` after Adam) records anew. Two tuples of (where,
    a function giving what is there now, the recorded object)."""
    found, callees = [], []
    for where, _, get in found_places:
        value = get()
        if id(value) in used:
            found.append((where, get, value))
        elif id(value) in taken:
            callees.append((where, get, value))
    return tuple(found), tuple(callees)


def _item(get, key):
    try:
        return get()[key]
    except (IndexError, KeyError, TypeError):  # shorter, or no longer a container
        return None


def stale(bound):
    """None, or where one of ``bindings`` holds another object than when recorded."""
    for where, current, recorded in bound:
        if current() is not recorded:
            return where
    return None


def hidden_in_result(result, made):
    """How to name a tensor the step computed (``made``: ids) that its result holds in an object's attribute, where
    ``tensors_in`` does not look (``types.SimpleNamespace(loss=loss)``), else None."""
    items = children(result)
    if items is not None:
        return next((found for v in items if (found := hidden_in_result(v, made)) is not None), None)
    if isinstance(result, Tensor) or type(result) in _SCALARS:
        return None
    for name, v in (_fields(result) or {}).items():
        if isinstance(v, Tensor) and id(v) in made:
            return f"a {type(result).__name__} holding a tensor it computes in its attribute {name!r}"
    return None


def array_in_result(result, rec):
    """How to name an array the step's result holds that is the array of a tensor a replay fills anew (an op's
    output, a .grad its backward made: ``return loss.data``), else None: the result would keep the recorded one."""
    anew = {id(g.data): "a .grad its backward made" for g, _ in rec.new_grads.values()}
    for step in rec.steps:
        for t in tensors_in(*step[1:]):
            if id(t) in rec.made:
                anew.setdefault(id(t.data), "a tensor it computes")
    todo = [result]
    while todo:
        value = todo.pop()
        if hasattr(value, "__array_interface__") or hasattr(value, "__cuda_array_interface__"):
            if id(value) in anew:
                return f"the array (.data) of {anew[id(value)]}, of shape {tuple(value.shape)}"
        elif not isinstance(value, Tensor) and type(value) not in _SCALARS:
            todo.extend(children(value) or ())
    return None


def call_on_created(rec):
    """How to name an object the step made (``capture.note_created``: an optimizer, a scheduler; not a module,
    whose recorded calls set values a replay sets again) whose method is a recorded call, else None."""
    for step in rec.steps:
        if step[0] is replay_call and step[2] and id(step[2][0]) in rec.created and not _is_module(step[2][0]):
            return f"the {type(step[2][0]).__name__} whose {getattr(step[1], '__name__', 'method')}() it calls"
    return None


# ---- host draws -----------------------------------------------------------------------------------------------------
# Python's and NumPy's global random generators: a draw in the step's Python code is recorded as the constant it
# gave (an augmentation's coin flip, a label-noise mask), so a replay would repeat it. tinygen's own draws are ops.
_PY_DRAWS = ("random", "uniform", "randint", "randrange", "choice", "choices", "shuffle", "sample", "gauss",
             "normalvariate", "lognormvariate", "expovariate", "betavariate", "gammavariate", "triangular",
             "vonmisesvariate", "paretovariate", "weibullvariate", "getrandbits", "randbytes", "binomialvariate")
_NP_DRAWS = ("rand", "randn", "randint", "random", "random_sample", "ranf", "sample", "choice", "shuffle",
             "permutation", "normal", "standard_normal", "uniform", "binomial", "poisson", "exponential", "beta",
             "gamma", "bytes", "random_integers", "multinomial", "dirichlet", "laplace", "logistic", "lognormal")


def _numba_random_loaded():
    """Numba keys its own versions of random.random, np.random.rand and the rest on the functions it finds when it
    loads them, at its first compilation in a process. Loaded while host_draws_refused has patched them (a step's
    first kernel, recorded), it would keep the patches for good, and @njit code calling those functions would fail
    to compile for the rest of the process. So where Numba is imported, or tinygen's kernels will import it, it
    loads them first: once a process, at the first recording, about half a second that the first kernel would
    otherwise take. A step that imports Numba itself for the first time is not covered."""
    global _numba_random_ready
    if _numba_random_ready or (sys.modules.get("numba") is None and not kernels.enabled()):
        return
    try:
        from numba.core.registry import cpu_target
    except ImportError:  # (a module of that name that is not Numba, or one blocked: sys.modules["numba"] = None)
        return
    cpu_target.target_context.refresh()  # imports numba.cpython.randomimpl and numba.np.random.legacy
    _numba_random_ready = True


_numba_random_ready = False


@contextlib.contextmanager
def host_draws_refused():
    """While a step is recorded: a draw from Python's ``random`` module, NumPy's global generator or a NumPy
    generator made without a seed raises ``CompileError`` naming the line. (A generator of the user's own, made
    before the step, is not patched: where the step's code finds it, its state is Python state the step changes,
    ``contents_of``, so such a call runs as eager.)"""
    _numba_random_loaded()
    patched = []

    def refuse(module, name, original):
        def draw(*args, **kwargs):
            if not recording():  # the step's own code (its thread, not in a recorded call)
                return original(*args, **kwargs)
            raise CompileError(f"tinygen.compile: the step draws a random number with {module.__name__}.{name} "
                               f"at {user_frame()}. A replay would repeat the recorded draw: use tinygen's random "
                               f"functions (tinygen.rand, randn, randint, randperm, bernoulli), drawn again on "
                               f"every replay, or draw it before the call and pass it as an argument")
        # named by hand: functools.wraps would read NumPy's docstrings, which then stay cached (60 kB)
        draw.__name__, draw.__qualname__, draw.__wrapped__ = name, f"{module.__name__}.{name}", original
        return draw

    def default_rng(seed=None, *args, **kwargs):  # a fresh, unseeded generator draws anew on every eager call
        if seed is None and recording():
            raise CompileError(f"tinygen.compile: the step makes an unseeded numpy.random.default_rng() at "
                               f"{user_frame()}. A replay would repeat its draws: use tinygen's random functions "
                               f"(tinygen.rand, randn, randint, randperm, bernoulli), drawn again on every replay, "
                               f"or draw them before the call and pass them as arguments")
        return original_rng(seed, *args, **kwargs)
    original_rng = np.random.default_rng
    for module, names in ((random, _PY_DRAWS), (np.random, _NP_DRAWS)):
        for name in names:
            original = getattr(module, name, None)
            if callable(original):
                patched.append((module, name, original))
                setattr(module, name, refuse(module, name, original))
    patched.append((np.random, "default_rng", original_rng))
    np.random.default_rng = default_rng
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


# ---- Python state ----------------------------------------------------------------------------------------------------
def python_state(found_places):
    """What is at each of ``places`` now, for ``Recorder.python_changes``: where -> (the value, its contents
    (``contents_of``), its holder); and what the modules there and their submodules hold (``held``: a config object
    their forward reads)."""
    state = {}
    for where, _, get in found_places:
        value = get()
        state[where] = (value, contents_of(value), _holder(get))
        if _is_module(value):
            for module, name, obj, contents in held(value.modules()):
                state[f"the attribute {name!r} of the {type(module).__name__} in {where}"] = (obj, contents, module)
    return state


def held(modules):
    """The lists, dicts and plain objects the modules hold as public attributes (a config object their forward
    reads, ``self.cfg.temperature``): (module, name, object, its contents). A new object there is a change of
    the module's settings (``Module._changed``); new contents are not, so a replay checks them."""
    for module in modules:
        for name, obj in module.__dict__.items():
            if name[0] != "_" and name != "training" and type(contents := contents_of(obj)) is tuple:
                yield module, name, obj, contents


def contents_of(value):
    """What ``value`` holds, to tell when it changes: a number or string itself; an iterator's position; a list's
    items (a dict in it by its items); a dict's items; a plain object's attributes (a short list or dict by its
    contents); a random generator's state. Numbers and strings by value, anything else by identity; None for a
    module, a tensor or a function."""
    if _is_setting(value):
        return value
    state = _generator_state(value)
    if state is not None:
        return ("random generator", state)
    if _attr(value, "__next__") is not None and _attr(value, "__dict__") is None:  # a generator, a list's iterator
        frame = _attr(value, "gi_frame")  # a generator: where its loop is (None when it ended)
        local = () if frame is None else tuple((k, v if _is_setting(v) else id(v)) for k, v in
                                               frame.f_locals.items())
        return ("iterator", operator.length_hint(value, -1), frame is None, local)
    if isinstance(value, list):  # a dict in it by its contents (an optimizer's param_groups[0]["lr"]), not a list
        return tuple(_settings_of(v) if type(v) is dict and len(v) <= CONTAINER_MAX else
                     v if _is_setting(v) else id(v) for v in value)
    if isinstance(value, dict):
        return _settings_of(value)
    attributes = _fields(value)
    if (attributes is not None and not isinstance(value, (Tensor, type, types.ModuleType, types.FunctionType))
            and not _is_module(value)):  # a module: Module.__setattr__ reports it
        return tuple((k, contents_of(v) if type(v) in (list, dict) and len(v) <= CONTAINER_MAX else
                      v if _is_setting(v) else id(v)) for k, v in attributes.items())
    return None


def _generator_state(value):
    """The state of a NumPy or Python random generator (a draw changes it), else None: the step's Python drawing
    from one it finds (``self.rng.normal(...)``) would be replayed as the recorded draw."""
    if isinstance(value, np.random.Generator):
        return pickle.dumps(value.bit_generator.state)
    if isinstance(value, np.random.RandomState):
        return pickle.dumps(value.get_state(legacy=False))
    if isinstance(value, random.Random):
        return value.getstate()
    return None


def _settings_of(d):
    """A dict's items: numbers and strings by value, anything else by identity (keys too: a tensor's == is
    elementwise)."""
    return tuple((k if type(k) in _SCALARS else id(k), v if _is_setting(v) else id(v)) for k, v in d.items())


def _is_module(value):
    """Whether ``value`` is an ``nn.Module`` (told by its registries: this package does not import nn)."""
    return isinstance(_attr(value, "_parameters"), dict) and callable(_attr(value, "modules"))


def _unchanged(old, new):
    """Whether a place still holds what it held: the same object, an equal number or string, or a method of the
    same function and object (a class method read through its class is a new one at each look)."""
    return new is old or (type(new) is type(old) and (_is_setting(old) or type(old) is types.MethodType)
                          and bool(new == old))


def changes(before, after):
    """(where, the value there before, its holder) for each place of ``before`` (``python_state``) that holds
    another value or other contents in ``after``."""
    for where, (value, contents, holder) in before.items():
        now = after.get(where)
        if now is None:
            continue
        if not _unchanged(value, now[0]):
            yield where, value, holder
        elif now[1] != contents:
            tag = contents[0] if type(contents) is tuple and contents and type(contents[0]) is str else None
            kind = "the position of the iterator in" if tag == "iterator" else \
                "the state of the random generator in" if tag == "random generator" else \
                "a hyper-parameter in the param_groups of" if type(_attr(value, "param_groups")) is list and \
                dict(contents).get("param_groups") != dict(now[1]).get("param_groups") else "the contents of"
            yield f"{kind} {where}", value, holder


def read_anew(rec):
    """The lists and NumPy arrays the recorded calls of ``rec`` take, and those within short lists and tuples they
    take (``tinygen.tensor(rows)``, ``tinygen.tensor([row_a, row_b])``, ``tinygen.tensor(buffer)``, ``h * dones``):
    a replay calls them again, which reads what they hold then (a buffer the caller refills), so their items are
    data, not settings of the step. id -> list or array."""
    found = {}
    todo = list(_recorded_arguments(rec))
    while todo:
        value = todo.pop()
        if type(value) is np.ndarray:
            found[id(value)] = value
        elif type(value) in (list, tuple) and id(value) not in found:
            if type(value) is list:
                found[id(value)] = value
            if len(value) <= CONTAINER_MAX:  # (``places`` follows no longer one)
                todo.extend(value)
    return found


def recorded_objects(rec):
    """The ids of the objects (not tensors, numbers or None) the recorded calls of ``rec`` took as arguments."""
    return {id(a) for a in _recorded_arguments(rec) if not isinstance(a, Tensor) and not _is_setting(a)}


def _recorded_arguments(rec):
    """The arguments and keyword arguments' values of the recorded calls of ``rec``."""
    return (a for step in rec.steps if step[0] is replay_call for a in (*step[2], *step[3].values()))


def settings_set(settings, created):
    """A description of the first module attribute the step's own code set (``Recorder.note_setting``) that holds
    another value at the end of the call than before it (``self.calls += 1``, a buffer rebound: ``self.avg =
    self.avg * 0.9 + ...``; one of a module the step made, ``created``), else None. Set back, or set to the value
    it had, is no change."""
    for module, name, old in settings.values():
        if not _unchanged(old, getattr(module, name, None)):
            if id(module) in created:
                return f"a {type(module).__name__} it makes (make modules once, outside the step)"
            return f"the attribute '{name}' of the {type(module).__name__}"
    return None


# ---- untracked writes -----------------------------------------------------------------------------------------------
def fingerprint(data):
    """A digest of an array's values (of its host copy, for a device array)."""
    host = data if isinstance(data, np.ndarray) else to_device(data, "cpu")
    return hashlib.blake2b(np.ascontiguousarray(host).reshape(-1).view(np.uint8)).digest()


def may_write(fn, args, kwargs):
    """The tensors a recorded call of ``fn`` may change in place, or None for any: its ``@replayed(writes=...)``,
    else its tensor arguments, unless an argument is an object that may hold others (a module, an optimizer)."""
    said = tensors_written(fn, args, kwargs)
    if said is not None:
        return said
    if any(not isinstance(a, (Tensor, tuple, list, dict, str, int, float, bool, type(None)))
           for a in (*args, *kwargs.values())):
        return None
    return tensors_in(args, kwargs)


def backward_writes(rec):
    """What a backward now may change in place: the ``.grad`` tensors of the leaves the step used (a gradient is
    summed into them), or None for anything when those leaves have hooks (an optimizer stepped in a
    post-accumulate-grad hook)."""
    hooks = engine._post_accumulate_hooks
    if any(key in hooks or getattr(leaf[0], "_hooks", None) for key, leaf in rec.leaves.items()):
        return None
    return tuple(leaf[0]._grad for leaf in rec.leaves.values() if leaf[0]._grad is not None)


@contextlib.contextmanager
def tracked_write(rec, tensors):
    """Around a recorded op or call that may change ``tensors`` (None: any) in place: before it, each watched one
    must hold what recorded code last left in it (``untracked_write``); after it, its new values are the ones the
    rest of the step must leave alone."""
    keys = list(rec.values) if tensors is None else [id(t) for t in tensors if id(t) in rec.values]
    changed = untracked_write(rec, keys)
    if changed is not None:
        raise CompileError(untracked_message(changed))
    yield
    for key in keys:
        t, _, what = rec.values[key]
        rec.values[key] = (t, fingerprint(t.data), what)


def untracked_write(rec, keys=None):
    """A description of a tensor of ``rec.values`` (what the step's code reaches, ``watched``, and each parameter
    an op first used; ``keys``: those of them, default all) whose values are not what recorded code last left in
    them (``tracked_write``), else None: array code changed it since, which a replay would not do again."""
    for key in rec.values if keys is None else keys:
        t, value, what = rec.values[key]
        if fingerprint(t.data) != value:
            return what
    return None


def untracked_message(what):
    return (f"tinygen.compile: the step changed the values of {what} outside tinygen's ops and recorded calls "
            f"(array code on .data, such as p.data -= lr * p.grad.data), which a replay would not do again. Update "
            f"parameters with an optimizer (tinygen.optim), in a function marked @tinygen.capture.replayed (a "
            f"replay calls it again: an EMA's update), or outside the compiled step")


WATCH_MAX_BYTES = 1 << 27  # larger arrays are not digested (a dataset held whole): twice per recording is enough


def watched(found_places):
    """The tensors the step's code can reach before it runs (``places``), where array code could change them
    unseen (an EMA model's parameters updated through ``.data``), with a digest of their values: tensors, and the
    parameters and buffers of modules. id -> (tensor, digest, what it is)."""
    found = {}

    def take(t, what):
        if t.data.nbytes <= WATCH_MAX_BYTES and id(t) not in found:
            found[id(t)] = (t, fingerprint(t.data), what)
    for where, _, get in found_places:
        value = get()
        if isinstance(value, Tensor):
            take(value, f"the tensor in {where}")
        elif _is_module(value):
            for kind, tensors in (("a parameter", value.parameters()), ("a buffer", value.buffers())):
                for t in tensors:
                    take(t, f"{kind} of shape {tuple(t.shape)} of the {type(value).__name__} in {where}")
    return found
