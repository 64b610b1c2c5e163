"""Magnitude pruning: score |W|, no calibration data (algorithms.md 2)."""

from __future__ import annotations

from tqdm import tqdm

from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask
from dpruner.models import prunable_weights, weight_matrix


class MagnitudePruner(Pruner):
    name = "magnitude"
    default_group = "matrix"
    needs_calibration = False

    def _prune(self, model, calibration, spec: SparsitySpec) -> dict[str, dict]:
        reports = {}
        for name, module in tqdm(prunable_weights(model).items(), desc="magnitude"):
            scores = weight_matrix(module).detach().float().abs()
            reports[name] = apply_mask(name, module, prune_mask(scores, spec), spec)
        return reports
