"""Applications built on the trained models: each is one module here and one ``tinygen app NAME`` command.

    tinygen app inpaint ...       fill a masked region of test digits with a trained VAE or GAN
    tinygen app superres ...      14x14 -> 28x28 digits with a conditional model, scored against bicubic
    tinygen app text ...          a character-level VAE on a word list: samples and interpolations
    tinygen app music ...         a VAE on melodies; samples written as MIDI files

Each module provides ``SUMMARY`` (one line for ``--help``), ``add_arguments(parser)`` and ``run(args)``.
An application's extra libraries are an optional extra of the package (``pip install -e ".[music]"``); the
module imports them inside ``run`` and names the extra when one is missing. docs/applications.md has the
measured results.
"""
import importlib
import pkgutil

from .. import _extras

# every public module of this package is an application, in the order of the docstring above
_ORDER = ("inpaint", "superres", "text", "music")
APPS = tuple(sorted((m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
                    key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)))


def get(name):
    """The module of application ``name``."""
    if name not in APPS:
        raise ValueError(f"unknown application {name!r}; expected one of {', '.join(APPS)}")
    return importlib.import_module(f"{__name__}.{name}")


def require(module, extra):
    """Import an optional library, or raise ImportError naming the extra that installs it."""
    return _extras.require(module, extra, "this application")
