"""The one interface every pruning method implements, and the report it returns."""

from __future__ import annotations

import resource
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dpruner.calibration import BlockSource
from dpruner.masks import SparsitySpec, check_mask
from dpruner.models import parameter_counts, prunable_weights, weight_matrix


@dataclass
class PruneResult:
    """Achieved sparsity per matrix and in total, with the cost of getting there."""

    method: str
    spec: dict
    matrices: dict[str, dict]
    sparsity_linear: float
    sparsity_total: float
    wall_s: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def apply_mask(name: str, module: nn.Module, mask: torch.Tensor, spec: SparsitySpec) -> dict:
    """Zero the masked weights of one linear in place and verify the achieved sparsity."""
    weight = weight_matrix(module)
    weight.data[mask.to(weight.device)] = 0
    return check_mask(name, weight.data, mask.to(weight.device), spec)


class Pruner(ABC):
    """A pruning method. `prune` changes the model in place and reports what it achieved.

    Every method walks the blocks with `layer_sequential`, so `blocks` (a `BlockSource`) can
    stream them from a checkpoint instead of finding them in memory.
    """

    name: str
    default_group: str = "matrix"
    groups: tuple[str, ...] = ("matrix", "row", "block")
    needs_calibration: bool = True

    def __init__(self):
        self.warnings: list[str] = []
        self.details: dict = {}

    def prune(
        self,
        model: nn.Module,
        calibration: torch.Tensor | None,
        spec: SparsitySpec,
        blocks: BlockSource | None = None,
    ) -> PruneResult:
        from dpruner.errors import DprunerError

        if not spec.is_nm and spec.group not in self.groups:
            raise DprunerError(
                f"{self.name} supports comparison groups {self.groups}, not '{spec.group}'"
            )
        if self.needs_calibration and (calibration is None or calibration.numel() == 0):
            raise DprunerError(f"{self.name} needs calibration data, and none was given")
        weights = prunable_weights(model)
        for name, module in weights.items():
            spec.check_shape(name, weight_matrix(module).shape[1])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        matrices = self._prune(model, calibration, spec, blocks)
        wall = time.perf_counter() - start
        missing = set(weights) - set(matrices)
        if missing:
            raise DprunerError(
                f"{self.name} left {len(missing)} matrices unpruned, e.g. {min(missing)}"
            )
        linear, total = parameter_counts(model)
        zeros = sum(round(report["sparsity"] * report["numel"]) for report in matrices.values())
        return PruneResult(
            method=self.name,
            spec={**spec.__dict__, "label": spec.label},
            matrices=matrices,
            sparsity_linear=zeros / linear,
            sparsity_total=zeros / total,
            wall_s=wall,
            peak_rss_mb=peak_rss_mb(),
            peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20
            if torch.cuda.is_available()
            else None,
            warnings=list(self.warnings),
            details=dict(self.details),
        )

    @abstractmethod
    def _prune(
        self, model, calibration, spec: SparsitySpec, blocks: BlockSource | None
    ) -> dict[str, dict]:
        """Prune every prunable matrix; return `apply_mask`'s report per full weight name."""
