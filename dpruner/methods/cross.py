"""Cross-calibration: one Hessian from domain and general text (Williams et al., arXiv 2502.18424;
docs/methods.md#cross-calibration).

SparseGPT (and Wanda, through the activation norms, which are diag(H) / 2) calibrate on

    H = (1 - c) H_domain / tr(H_domain) + c H_general / tr(H_general)   (tr: mean diagonal)

instead of on one source's H, or on rows of both mixed into one set (`calibration: mixed`).
Each Hessian is already a mean over its own sequences; dividing by its mean diagonal as well
makes c the share of each source whatever their token counts or activation scales. Both sets run
through the same walk, domain rows first (`CrossCalibration.rows`), and `CrossStatistics` sends
each batch's rows to the statistics of their source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpruner.calibration import LayerStatistics
from dpruner.data.mixing import rows_of_length
from dpruner.errors import DprunerError


def cross_combine(domain: torch.Tensor, general: torch.Tensor, c: float) -> torch.Tensor:
    """(1 - c) domain / its mean diagonal + c general / its mean diagonal, for Hessians (d x d)
    or their diagonals (d). At c = 0 and c = 1 one source's statistic is returned unscaled:
    SparseGPT's and Wanda's choices do not change with H's scale, and so the extremes are the
    one-source methods bit for bit."""
    if c == 0:
        return domain
    if c == 1:
        return general

    def normalised(x: torch.Tensor) -> torch.Tensor:
        scale = x.diagonal().mean() if x.ndim == 2 else x.mean()
        return x / scale if scale > 0 else x

    return (1 - c) * normalised(domain) + c * normalised(general)


@dataclass(frozen=True)
class CrossCalibration:
    """The general calibration rows and the coefficient c of the general Hessian."""

    general: torch.Tensor
    coefficient: float

    def __post_init__(self):
        if not 0 <= self.coefficient <= 1:
            raise DprunerError(
                f"cross-calibration coefficient must lie in [0, 1], got {self.coefficient}"
            )
        if self.general.ndim != 2 or self.general.shape[0] == 0:
            raise DprunerError(
                "cross-calibration needs general calibration rows, and none were given"
            )

    def rows(self, domain: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(domain rows then general rows, both cut to the shorter row length; domain rows)."""
        length = min(domain.shape[1], self.general.shape[1])
        domain = rows_of_length(domain, length)
        return torch.cat([domain, rows_of_length(self.general, length)]), domain.shape[0]


class CrossStatistics(LayerStatistics):
    """Feeds the first `n_domain` sequences the walk sees to `domain`, the rest to `general`.

    The walk runs the calibration rows in order, so a batch holds domain rows, general rows, or
    the last domain rows and the first general ones, which are split at the sequence boundary.
    """

    def __init__(
        self, domain: LayerStatistics, general: LayerStatistics, n_domain: int, coefficient: float
    ):
        self.domain, self.general = domain, general
        self.n_domain, self.coefficient = n_domain, coefficient
        self.seen = 0

    def add_batch(self, inputs: torch.Tensor, n_sequences: int) -> None:
        take = min(max(self.n_domain - self.seen, 0), n_sequences)
        split = inputs.shape[0] // n_sequences * take
        if take:
            self.domain.add_batch(inputs[:split], take)
        if n_sequences > take:
            self.general.add_batch(inputs[split:], n_sequences - take)
        self.seen += n_sequences

    @property
    def hessian(self) -> torch.Tensor:
        return cross_combine(self.domain.hessian, self.general.hessian, self.coefficient)

    @property
    def mean_sq_norm(self) -> torch.Tensor:
        return cross_combine(self.domain.mean_sq_norm, self.general.mean_sq_norm, self.coefficient)
