"""OWL: outlier-weighted layerwise sparsity (Yin et al., ICML 2024; docs/methods.md#owl).

A layer allocation any calibrated method can take (`Pruner(allocation=OwlAllocation(...))`):
before the method's own walk, one walk of the dense model measures each decoder block's outlier
ratio, the share of its Wanda scores |W_ij| * ||X_j|| above M times the block's mean score (all
of the block's linears together), and `owl_sparsities` turns the ratios into one sparsity per
block that averages to the target. The walk prunes nothing, so every block sees the dense
model's inputs, as in the authors' code (luuyin/OWL, `prune_*_outlier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dpruner.calibration import layer_sequential
from dpruner.config import schema_default
from dpruner.errors import DprunerError
from dpruner.masks import SparsitySpec
from dpruner.methods.wanda import ChannelNormStatistics, wanda_scores
from dpruner.models import weight_matrix


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of all entries of `scores` (one block's matrices together) above m * their mean."""
    flat = torch.cat([s.reshape(-1).double() for s in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(ratios: list[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios: more outliers, lower sparsity.

    As the authors' code computes it: D = 2 lam (r - min r) / (max r - min r), sparsity =
    target - (D - mean D). The sparsities average to the target and span 2 lam, from
    target + mean D - 2 lam (most outliers) to target + mean D (fewest); they lie in
    [target - lam, target + lam] only when mean D = lam. Equal ratios give the target everywhere.
    """
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    if spread == 0:
        return [target] * len(ratios)
    d = (r - r.min()) / spread * (2 * lam)
    return (target - (d - d.mean())).tolist()


@dataclass(frozen=True)
class OwlAllocation:
    """OWL's two hyper-parameters: the outlier threshold M and the spread lambda."""

    m: float = field(default_factory=lambda: schema_default("owl_m"))
    lam: float = field(default_factory=lambda: schema_default("owl_lambda"))

    @staticmethod
    def check_plan(method: str, spec: SparsitySpec, streamed: bool) -> None:
        """Refuse a pattern or streaming OWL cannot do: what the prune step and the preflight
        know before any model or data is read."""
        if spec.is_nm:
            raise DprunerError(
                f"{method}: allocation owl gives each layer its own sparsity, but pattern "
                f"{spec.label} fixes every layer at {spec.n}/{spec.m}; use unstructured"
            )
        if streamed:
            raise DprunerError(
                f"{method}: allocation owl walks the dense model once before pruning, which "
                "streamed blocks do not support yet; prune without stream_blocks"
            )

    def check(self, method: str, calibration, spec: SparsitySpec, blocks) -> None:
        """Refuse what OWL cannot do, before any model work."""
        self.check_plan(method, spec, blocks is not None)
        if calibration is None or calibration.numel() == 0:
            raise DprunerError(
                f"{method}: allocation owl needs calibration data (its outlier ratios come "
                "from Wanda scores), and none was given"
            )

    def layer_sparsities(
        self, model, calibration: torch.Tensor, target: float, batch_size: int = 1
    ) -> tuple[list[float], dict]:
        """(sparsity per decoder block, the run report's record of how they were chosen)."""
        ratios = []

        def statistics(name, module):
            weight = weight_matrix(module)
            return ChannelNormStatistics(weight.shape[1], weight.device)

        def measure(index, linears, stats):
            scores = [
                wanda_scores(weight_matrix(module).detach(), stats[name].mean_sq_norm)
                for name, module in linears.items()
            ]
            ratios.append(outlier_ratio(scores, self.m))

        layer_sequential(model, calibration, statistics, measure, batch_size=batch_size)
        sparsities = owl_sparsities(ratios, target, self.lam)
        outside = [i for i, s in enumerate(sparsities) if not 0 < s < 1]
        if outside:
            i = outside[0]
            raise DprunerError(
                f"allocation owl (M={self.m}, lambda={self.lam}) gives block {i} sparsity "
                f"{sparsities[i]:.4f} at target {target}, outside (0, 1); use a smaller lambda"
            )
        record = {"m": self.m, "lambda": self.lam, "outlier_ratio": ratios}
        return sparsities, {**record, "layer_sparsity": sparsities}
