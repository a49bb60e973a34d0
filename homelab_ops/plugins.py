"""How notifier channels, health checks, credential kinds and backup sources are found: a module in
their package, by its file name. Each package checks what its modules declare."""

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


def discover_typed(package: str, path: Iterable[str], *, requires: Iterable[str] = ()) -> dict[str, ModuleType]:
    """`discover`, for modules whose `Config.type` is `Literal["<file name>"]` (the settings' discriminated
    union picks them by it) and that declare every name in `requires`."""
    found = discover(package, path)
    for name, module in found.items():
        declared = module.Config.model_fields["type"].annotation.__args__
        if declared != (name,):
            raise TypeError(f"{module.__name__}.Config.type must be Literal[{name!r}], not {declared}")
        missing = [a for a in requires if not hasattr(module, a)]
        if missing:
            raise TypeError(f"{module.__name__} does not declare {', '.join(missing)}")
    return found
