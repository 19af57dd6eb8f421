"""The training code stays readable: no function or method in tinygen/models/ longer than MAX_LINES."""
import ast
from pathlib import Path

import tinygen

MAX_LINES = 60
MODELS = Path(tinygen.__file__).parent / "models"


def _function_lengths():
    for path in sorted(MODELS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(MODELS)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_no_function_in_models_is_longer_than_max_lines():
    lengths = dict(_function_lengths())
    assert len(lengths) > 50  # the walk found the package's functions
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"
