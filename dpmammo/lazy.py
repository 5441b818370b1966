"""Lazy package exports (PEP 562), so that `import dpmammo.train.config` does not load torch.

A package `__init__` lists what it exports and from which submodule; a name is imported on
first use. The CLI reads its arguments and validates a config file without torch, timm or
opacus (each costs seconds), and imports them only in the command that trains.

Example (in a package's `__init__.py`):
    >>> __getattr__, __dir__, __all__ = lazy_exports(__name__, {  # doctest: +SKIP
    ...     "dpmammo.train.config": ["TrainConfig"], "dpmammo.train.loop": ["fit"]})
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Callable


class _LazyPackage(ModuleType):
    """A package whose exported function shares its name with a submodule (`dpmammo.gan.sample`
    the function, in `dpmammo/gan/sample.py`). Importing a submodule makes the import system set
    it as an attribute of its package; an eager `__init__` then rebinds the name to the function.
    Here the function is kept, whatever the import order."""

    def __setattr__(self, name: str, value) -> None:
        exports = self.__dict__.get("_lazy_exports", {})
        if isinstance(value, ModuleType) and value.__name__ == exports.get(name) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[Callable, Callable, list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`, exporting `{submodule: [names]}` lazily."""
    where = {name: module for module, names in exports.items() for name in names}
    pkg = sys.modules[package]
    pkg.__class__ = _LazyPackage
    pkg._lazy_exports = where

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(pkg, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(pkg.__dict__) | set(where))

    return __getattr__, __dir__, list(where)


def load_spec(spec: str):
    """The object a registry names as "module:attribute", imported on use (a registry table lists
    what needs torch without importing it)."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"registry entry {spec!r}: expected 'module:attribute'")
    return getattr(importlib.import_module(module), name)
