"""How notifier channels, health checks and credential kinds are found: a module in their package,
by its file name. Each package checks what its modules declare; this only finds them."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Iterable


def discover(package: str, path: Iterable[str]) -> dict[str, ModuleType]:
    """Every module of `package` (its `__name__`, `__path__`) by file name, in name order; a name
    starting with `_` is shared code, not a plug-in."""
    return {info.name: importlib.import_module(f"{package}.{info.name}")
            for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name)
            if not info.name.startswith("_")}
