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

from dpruner.config import schema_default
from dpruner.methods.wanda import WandaPruner
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


class RIAPruner(WandaPruner):
    """Wanda's walk and channel norms, masked by `ria_scores` (no cross-calibration)."""

    name = "ria"
    default_group = "matrix"

    def __init__(
        self,
        alpha: float | None = None,
        batch_size: int = 1,
        quantize: QuantSpec | None = None,
        allocation: OwlAllocation | None = None,
    ):
        super().__init__(batch_size, quantize, allocation)
        self.alpha = schema_default("ria_alpha") if alpha is None else alpha

    def scores(self, weight: torch.Tensor, mean_sq_norm: torch.Tensor) -> torch.Tensor:
        return ria_scores(weight, mean_sq_norm, self.alpha)
