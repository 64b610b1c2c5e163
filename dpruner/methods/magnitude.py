"""Magnitude pruning: score |W|, no calibration data (docs/methods.md#magnitude)."""

from __future__ import annotations

from dpruner.calibration import layer_sequential
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask
from dpruner.models import weight_matrix


class MagnitudePruner(Pruner):
    name = "magnitude"
    default_group = "matrix"
    needs_calibration = False

    def _prune(self, model, calibration, spec: SparsitySpec, blocks=None) -> dict[str, dict]:
        reports = {}

        def prune_block(index, linears, stats):
            for name, module in linears.items():
                scores = weight_matrix(module).detach().float().abs()
                reports[name] = apply_mask(name, module, prune_mask(scores, spec), spec)

        # No calibration: the walk only visits the blocks, each on its own.
        layer_sequential(model, None, lambda name, module: None, prune_block, blocks=blocks)
        return reports
