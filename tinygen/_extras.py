"""The optional libraries (pyproject's extras): one way to import one, and one wording for its absence."""
import importlib


def missing(what, library, extra):
    """The message for ``what`` needing ``library``, which is not installed: it names the extra that installs it."""
    return (f"{what} needs {library}, which is not installed; install it with: pip install -e \".[{extra}]\" "
            f"(the '{extra}' extra of tinygen)")


def require(module, extra, what, library=None):
    """Import the optional ``module``, or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(missing(what, library or module, extra)) from None
