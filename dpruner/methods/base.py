"""The one interface every pruning method implements, and the report it returns.

Every pruner takes an optional `quantize=QuantSpec(...)`: after its mask, the kept weights of
every prunable matrix are quantized round-to-nearest (`dpruner.quantize`), unless the method
quantizes inside its own weight update (`quantizes_in_sweep`: SparseGPT's joint sweep). The
model keeps the dequantized weights in its own dtype, so it evaluates as the quantized model;
in float32 they are the grid points exactly, in 16-bit dtypes rounded to that dtype.
"""

from __future__ import annotations

import dataclasses
import inspect
import resource
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from dpruner.calibration import BlockSource
from dpruner.masks import SparsitySpec, check_mask
from dpruner.models import parameter_counts, prunable_weights, weight_matrix
from dpruner.quantize import QuantSpec, fake_quantize, model_storage

if TYPE_CHECKING:
    from dpruner.methods.owl import OwlAllocation


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
    quantization: dict | None = None
    # Bytes of the pruned (and quantized) model as stored (dpruner.quantize.model_storage).
    stored: dict | None = None

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

    With `allocation=OwlAllocation(...)` each decoder block gets its own sparsity (OWL,
    dpruner/methods/owl.py), chosen before the method's walk; a method prunes block i to
    `self.block_spec(i, spec)`, which is `spec` itself without an allocation.

    A subclass with a `name` is the method of that kind (`dpruner.methods` discovers it); its
    class attributes tell the workflow's plan what its prune jobs read: calibration rows
    (`needs_calibration`), Hessians and so the config's `hessian_dtype` (`builds_hessians`), and
    D-Pruner's importance scores (`masks_by_scores`).
    """

    name: str
    default_group: str = "matrix"
    groups: tuple[str, ...] = ("matrix", "row", "block")
    needs_calibration: bool = True
    builds_hessians: bool = False
    masks_by_scores: bool = False
    quantizes_in_sweep: bool = False
    quantizer_name: str = "rtn"

    def __init__(self, quantize: QuantSpec | None = None, allocation: OwlAllocation | None = None):
        self.warnings: list[str] = []
        self.details: dict = {}
        self.quantize = quantize
        self.allocation = allocation
        self.layer_sparsity: list[float] | None = None

    @classmethod
    def from_options(cls, options: dict, offered: dict) -> Pruner:
        """The pruner a prune job runs: its kind's own options (`plan.method_options`, the
        schema's defaults filled in), and of what the prune step offers every method
        (`offered`: batch_size, hessian_dtype, quantize, allocation, ...) those its constructor
        takes."""
        takes = inspect.signature(cls).parameters
        return cls(**options, **{key: value for key, value in offered.items() if key in takes})

    def block_spec(self, index: int, spec: SparsitySpec) -> SparsitySpec:
        """The spec block `index` is pruned to: `spec` at that block's allocated sparsity."""
        if self.layer_sparsity is None:
            return spec
        return dataclasses.replace(spec, sparsity=self.layer_sparsity[index])

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
        if self.allocation is not None:
            self.allocation.check(self.name, calibration, spec, blocks)
        weights = prunable_weights(model)
        for name, module in weights.items():
            spec.check_shape(name, weight_matrix(module).shape[1])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if self.allocation is not None:
            self.layer_sparsity, owl = self.allocation.layer_sparsities(
                model, calibration, spec.sparsity, getattr(self, "batch_size", 1)
            )
        matrices = self._prune(model, calibration, spec, blocks)
        missing = set(weights) - set(matrices)
        if missing:
            raise DprunerError(
                f"{self.name} left {len(missing)} matrices unpruned, e.g. {min(missing)}"
            )
        if self.quantize is not None and not self.quantizes_in_sweep:
            for name, module in weights.items():
                weight = weight_matrix(module)
                weight.data.copy_(fake_quantize(weight.data, self.quantize).to(weight.dtype))
                matrices[name]["sparsity"] = float((weight == 0).sum()) / weight.numel()
        wall = time.perf_counter() - start
        linear, total = parameter_counts(model)
        zeros = sum(round(report["sparsity"] * report["numel"]) for report in matrices.values())
        quantization = None
        if self.quantize is not None:
            pruned = sum(report["pruned"] for report in matrices.values())
            quantization = {
                "quantizer": self.quantizer_name,
                "label": self.quantize.label,
                "weights_dtype": str(next(iter(weights.values())).weight.dtype),
                **self.quantize.__dict__,
                "mask_sparsity_linear": pruned / linear,
                # kept weights whose nearest grid point is 0 (counted in sparsity_linear)
                "zeros_from_rounding": zeros - pruned,
            }
        stored = None
        if blocks is None:  # streamed blocks are written out and back on meta by now
            stored = model_storage(
                {n: weight_matrix(m).detach() for n, m in weights.items()}, total, self.quantize
            )
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
            details={**self.details, **({"owl": owl} if self.allocation is not None else {})},
            quantization=quantization,
            stored=stored,
        )

    @abstractmethod
    def _prune(
        self, model, calibration, spec: SparsitySpec, blocks: BlockSource | None
    ) -> dict[str, dict]:
        """Prune every prunable matrix; return `apply_mask`'s report per full weight name."""
