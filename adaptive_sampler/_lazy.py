"""Imports on first use: public names (PEP 562), so that importing a package costs only what is used, and the
optional dependencies of the extras, with a one-line install hint when one is missing (Optuna's `try_import`)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require_extra(module: str, extra: str, needed_by: str) -> None:
    """Raise MissingExtraError naming `needed_by` and the pip command of `extra` unless top-level `module` can be
    imported (only looked up: the caller imports it where it is used)."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{needed_by} needs {module}, which is not installed: "
                                f"pip install 'adaptive-sampler[{extra}]'")


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `name` from `package.<exports[name]>` (public name -> the
    submodule that defines it) when first asked for and caches it in `namespace`, the package's `globals()`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    return __getattr__
