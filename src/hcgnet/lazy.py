"""Packages whose names load on first use, so that the command line parses (``--help``, ``--version``, usage
errors) without importing torch: ``__getattr__ = lazy_exports(__name__, {"name": "module", ...})``, and
``__dir__ = lazy_dir(__name__, names)`` so that ``dir()`` and tab completion list the names before their use."""
import importlib
import importlib.util
import sys
from typing import Callable, Dict, Iterable, List


def lazy_exports(package: str, names: Dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: each of ``names`` comes from its module on first use, and a
    submodule (``hcgnet.training.trainer``) is an attribute as it is after an eager import."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_dir(package: str, names: Iterable[str]) -> Callable[[], List[str]]:
    """A module ``__dir__`` for ``package``: what it holds now and the names it loads on first use."""
    later = list(names)

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(later))

    return __dir__
