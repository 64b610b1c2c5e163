"""Pruning methods behind one interface, looked up by name."""

from dpruner.errors import DprunerError
from dpruner.methods.base import Pruner, PruneResult
from dpruner.methods.dpruner import DPrunerPruner
from dpruner.methods.dsnot import DSnoTPruner
from dpruner.methods.magnitude import MagnitudePruner
from dpruner.methods.ria import RIAPruner
from dpruner.methods.sparsegpt import SparseGPTPruner
from dpruner.methods.wanda import WandaPruner

PRUNERS: dict[str, type[Pruner]] = {
    cls.name: cls
    for cls in (
        MagnitudePruner,
        WandaPruner,
        SparseGPTPruner,
        DPrunerPruner,
        RIAPruner,
        DSnoTPruner,
    )
}


def get_pruner(name: str, **options) -> Pruner:
    if name not in PRUNERS:
        raise DprunerError(f"unknown method '{name}'; choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name](**options)


__all__ = ["PRUNERS", "PruneResult", "Pruner", "get_pruner"]
