"""Pruning methods behind one interface, looked up by kind name.

The registry is discovered: every module of this package is imported, and each `Pruner`
subclass with a `name` is the method of that kind. A new method is one module here (its class
declares what the workflow gives it: `needs_calibration`, `builds_hessians`, `masks_by_scores`)
plus its schema entry (docs/adding-a-method.md).
"""

import importlib
import pkgutil

from dpruner.errors import DprunerError
from dpruner.methods.base import Pruner, PruneResult


def discover(package: str = __name__) -> dict[str, type[Pruner]]:
    """{kind: Pruner class} of every module of `package`, in module order."""
    found: dict[str, type[Pruner]] = {}
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        loaded = importlib.import_module(f"{package}.{module.name}")
        for value in vars(loaded).values():
            is_pruner = isinstance(value, type) and issubclass(value, Pruner)
            if is_pruner and value.__module__ == loaded.__name__ and hasattr(value, "name"):
                found[value.name] = value
    return found


PRUNERS: dict[str, type[Pruner]] = discover()


def get_pruner(name: str, **options) -> Pruner:
    if name not in PRUNERS:
        raise DprunerError(f"unknown method '{name}'; choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name](**options)


__all__ = ["PRUNERS", "PruneResult", "Pruner", "discover", "get_pruner"]
