"""RIA: relative importance and activations (Zhang et al., ICLR 2024; docs/methods.md#ria).

Score (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||^a: a weight counts relative to
the other weights of its input channel and of its output row, times the channel's activation
norm to the power a. Compared over the whole matrix by default, as the authors' code does
without `--per_outneuron`; N:M takes the plain n lowest of every m columns (the authors' channel
reallocation before N:M selection, `--reallocation`, is not implemented).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dpruner.calibration import layer_sequential
from dpruner.config import schema_default
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask
from dpruner.methods.wanda import ChannelNormStatistics
from dpruner.models import weight_matrix
from dpruner.quantize import QuantSpec

if TYPE_CHECKING:
    from dpruner.methods.owl import OwlAllocation


def ria_scores(weight: torch.Tensor, mean_sq_norm: torch.Tensor, a: float) -> torch.Tensor:
    """RIA's score of every weight; `mean_sq_norm` is Wanda's ||X_j||^2 / N per input channel.

    A row or column whose weights are all zero adds 0 (not 0/0) to its weights' scores."""
    w = weight.float().abs()

    def relative(total: torch.Tensor) -> torch.Tensor:
        return w / torch.where(total > 0, total, torch.ones_like(total))

    importance = relative(w.sum(dim=0, keepdim=True)) + relative(w.sum(dim=1, keepdim=True))
    return importance * mean_sq_norm.sqrt().pow(a).unsqueeze(0)


class RIAPruner(Pruner):
    name = "ria"
    default_group = "matrix"

    def __init__(
        self,
        alpha: float | None = None,
        batch_size: int = 1,
        quantize: QuantSpec | None = None,
        allocation: OwlAllocation | None = None,
    ):
        super().__init__(quantize, allocation)
        self.alpha = schema_default("ria_alpha") if alpha is None else alpha
        self.batch_size = batch_size

    def _prune(self, model, calibration, spec: SparsitySpec, blocks=None) -> dict[str, dict]:
        reports = {}

        def statistics(name, module):
            weight = weight_matrix(module)
            return ChannelNormStatistics(weight.shape[1], weight.device)

        def prune_block(index, linears, stats):
            block_spec = self.block_spec(index, spec)
            for name, module in linears.items():
                weight = weight_matrix(module).detach()
                scores = ria_scores(weight, stats[name].mean_sq_norm, self.alpha)
                mask = prune_mask(scores, block_spec)
                reports[name] = apply_mask(name, module, mask, block_spec)

        layer_sequential(
            model, calibration, statistics, prune_block, batch_size=self.batch_size, blocks=blocks
        )
        return reports
