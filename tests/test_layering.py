"""The package's layering, read from its source (ast, so nothing is imported): no import cycles, nothing imports
upward, the library never imports the benchmarks, and environment settings are read only in tinygen/config.py.

Imports inside functions count too: a cycle hidden in a function is still a cycle."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tinygen"

# Cycles that are known and being removed elsewhere; this list only shrinks.
PENDING_CYCLES = []
# Modules still reading a TINYGEN_* variable themselves (to be switched to tinygen.config); this list only shrinks.
PENDING_ENV_READS = set()


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources():
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(mod, path, modules):
    """The modules ``mod`` imports (absolute names; ``from pkg import sub`` counts as pkg.sub when sub is one)."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while "." in name and name not in modules and name.partition(".")[0] == "tinygen":
                name = name.rpartition(".")[0]
            found.add(name)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = _sources()
    return {mod: _imports(mod, path, modules) for mod, path in modules.items()}


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    cycles = [c for c in _cycles(graph) if c not in PENDING_CYCLES]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


@pytest.mark.parametrize("layer, forbidden", [
    ("tinygen.ops", ("tinygen.nn", "tinygen.models", "tinygen.data", "tinygen.optim")),
    ("tinygen.kernels", ("tinygen.ops", "tinygen.nn", "tinygen.models", "tinygen.autograd", "tinygen.tensor",
                         "tinygen.optim", "tinygen.data")),
    ("tinygen.autograd", ("tinygen.nn", "tinygen.models", "tinygen.optim", "tinygen.data")),
    ("tinygen.nn", ("tinygen.models", "tinygen.apps")),
    ("tinygen.models", ("tinygen.apps", "tinygen.cli")),
    ("tinygen.optim", ("tinygen.nn", "tinygen.models")),
    ("tinygen", ("benchmarks", "examples", "tests")),
])
def test_nothing_imports_upward(graph, layer, forbidden):
    bad = sorted(f"{mod} imports {target}" for mod, targets in graph.items()
                 if mod == layer or mod.startswith(layer + ".")
                 for target in targets for f in forbidden if target == f or target.startswith(f + "."))
    assert not bad, "\n".join(bad)


def _environment_reads(path):
    """Lines where a TINYGEN_* variable is read from os.environ / os.getenv."""
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target, args = node.func, node.args
        elif isinstance(node, ast.Subscript):
            target, args = node.value, [node.slice]
        else:
            continue
        text = ast.unparse(target)
        if ("environ" in text or "getenv" in text) and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("TINYGEN_")
                for a in args):
            lines.append(node.lineno)
    return lines


def test_the_environment_reader_finds_reads(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\na = os.environ.get('TINYGEN_X')\nb = os.environ['TINYGEN_Y']\nc = os.getenv('TINYGEN_Z')\n"
                 "d = os.environ.get('HOME')\n")
    assert _environment_reads(f) == [2, 3, 4]


def test_settings_are_read_only_in_config():
    bad = [f"{mod}: line {line}" for mod, path in _sources().items()
           if mod != "tinygen.config" and mod not in PENDING_ENV_READS for line in _environment_reads(path)]
    assert not bad, "TINYGEN_* read outside tinygen/config.py: " + ", ".join(bad)


def test_every_setting_read_in_config_is_in_its_table():
    from tinygen import config
    used = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and ast.unparse(node.func) in ("config.get", "config.raw")
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith("TINYGEN_")):
                used.add(node.args[0].value)
    assert used and used <= set(config.SETTINGS), sorted(used - set(config.SETTINGS))
    doc = config.__doc__
    for name in config.SETTINGS:
        assert name in doc, f"{name} is missing from the table in tinygen/config.py's docstring"


# Modules that still tell host from device arrays themselves (to be switched to tinygen.backend's
# is_device_array / array_module_of); this list only shrinks.
PENDING_SNIFFING = set()


def _sniffs_array_types(path):
    """Lines that guess an array's kind: hasattr(x, "get"), type(x).__module__ checks, cupy.get_array_module."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        text = ast.unparse(node)
        if (text.startswith("hasattr(") and text.endswith(", 'get')")) or "get_array_module(" in text or (
                "__module__" in text and "cupy" in text):
            lines.append(node.lineno)
    return lines


def test_only_the_backend_tells_array_kinds_apart():
    bad = [f"{mod}: line {line}" for mod, path in _sources().items()
           if mod != "tinygen.backend" and mod not in PENDING_SNIFFING for line in _sniffs_array_types(path)]
    assert not bad, "array kinds told apart outside tinygen/backend.py: " + ", ".join(bad)
    assert _sniffs_array_types(ROOT / "backend.py")  # the check sees the backend's own answer
