"""Wanda: score |W_ij| * ||X_j||, compared per output row (docs/methods.md#wanda).

With `cross=CrossCalibration(...)` the norms combine the domain's and the general text's
(dpruner/methods/cross.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dpruner.calibration import LayerStatistics, layer_sequential
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask
from dpruner.models import weight_matrix
from dpruner.quantize import QuantSpec

if TYPE_CHECKING:
    from dpruner.methods.cross import CrossCalibration
    from dpruner.methods.owl import OwlAllocation


class ChannelNormStatistics(LayerStatistics):
    """Running mean over sequences of each input channel's squared norm."""

    def __init__(self, d_in: int, device):
        self.mean_sq_norm = torch.zeros(d_in, dtype=torch.float32, device=device)
        self.n_sequences = 0

    def add_batch(self, inputs: torch.Tensor, n_sequences: int) -> None:
        total = self.n_sequences + n_sequences
        self.mean_sq_norm *= self.n_sequences / total
        self.mean_sq_norm += inputs.float().pow(2).sum(dim=0) / total
        self.n_sequences = total


def wanda_scores(weight: torch.Tensor, mean_sq_norm: torch.Tensor) -> torch.Tensor:
    return weight.float().abs() * mean_sq_norm.sqrt().unsqueeze(0)


class WandaPruner(Pruner):
    name = "wanda"
    default_group = "row"

    def __init__(
        self,
        batch_size: int = 1,
        quantize: QuantSpec | None = None,
        allocation: OwlAllocation | None = None,
        cross: CrossCalibration | None = None,
    ):
        super().__init__(quantize, allocation)
        self.batch_size = batch_size
        self.cross = cross

    def scores(self, weight: torch.Tensor, mean_sq_norm: torch.Tensor) -> torch.Tensor:
        """Each weight's score from the walk's channel norms (a subclass scores otherwise)."""
        return wanda_scores(weight, mean_sq_norm)

    def _prune(self, model, calibration, spec: SparsitySpec, blocks=None) -> dict[str, dict]:
        from dpruner.methods.cross import CrossStatistics

        reports = {}
        if self.cross is not None:
            calibration, n_domain = self.cross.rows(calibration)

        def statistics(name, module):
            weight = weight_matrix(module)
            if self.cross is None:
                return ChannelNormStatistics(weight.shape[1], weight.device)
            return CrossStatistics(
                ChannelNormStatistics(weight.shape[1], weight.device),
                ChannelNormStatistics(weight.shape[1], weight.device),
                n_domain,
                self.cross.coefficient,
            )

        def prune_block(index, linears, stats):
            block_spec = self.block_spec(index, spec)
            for name, module in linears.items():
                scores = self.scores(weight_matrix(module).detach(), stats[name].mean_sq_norm)
                mask = prune_mask(scores, block_spec)
                reports[name] = apply_mask(name, module, mask, block_spec)

        layer_sequential(
            model, calibration, statistics, prune_block, batch_size=self.batch_size, blocks=blocks
        )
        return reports
