"""D-Pruner (docs/methods.md): general importance, the regularised update, dual importance, mask.

Step 1 `general_importance` records SparseGPT's OBS saliency on a throw-away copy of the model.
Steps 2+3 (`dpruner.finetune.domain_scores`) fine-tune on domain instances with
    L = L_next + lambda * sum_m G_m * (W_m - W0_m)^2
whose gradient is `regularised_gradient`, applied by plain SGD fused into the backward pass
(`dpruner.fused_sgd`), and accumulate S += `dual_importance_step` before every update.
`DPrunerPruner` masks the ORIGINAL weights by S (or by G alone, the general-only ablation).
Scores files are read and written by `dpruner.score_files`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from torch import nn

from dpruner.calibration import BlockSource, layer_sequential
from dpruner.errors import DprunerError
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask
from dpruner.methods.sparsegpt import SparseGPTPruner
from dpruner.quantize import QuantSpec
from dpruner.score_files import check_score_shapes, score_file

if TYPE_CHECKING:
    from dpruner.methods.owl import OwlAllocation


def normalise_importance(saliency: torch.Tensor, mode: str) -> torch.Tensor:
    """`mean`: G / mean(G) per matrix, so one lambda means the same in every layer and model."""
    if mode == "none":
        return saliency
    if mode != "mean":
        raise DprunerError(f"normalize must be 'mean' or 'none', got '{mode}'")
    mean = saliency.mean()
    return saliency / mean if mean > 0 else saliency


def general_importance(
    model: nn.Module,
    calibration: torch.Tensor,
    sparsity: float,
    normalize: str = "mean",
    percdamp: float = 0.01,
    batch_size: int = 1,
    blocks: BlockSource | None = None,
    sink: Callable[[str, torch.Tensor], None] | None = None,
    hessian_dtype: str = "auto",
) -> dict[str, torch.Tensor]:
    """Per prunable weight, the saliency SparseGPT sees at the target sparsity. Prunes `model`.

    With `sink`, each matrix's G is handed to it as its block finishes and the returned dict is
    empty (a streamed run never holds every G at once).
    """
    scores: dict[str, torch.Tensor] = {}
    out = sink or scores.__setitem__
    sweep = SparseGPTPruner(
        percdamp=percdamp,
        batch_size=batch_size,
        record_saliency=True,
        saliency_sink=lambda name, g: out(name, normalise_importance(g, normalize)),
        hessian_dtype=hessian_dtype,
    )
    sweep.prune(model, calibration, SparsitySpec(sparsity, "block"), blocks=blocks)
    return scores


def regularised_gradient(
    grad: torch.Tensor,
    weight: torch.Tensor,
    original: torch.Tensor,
    importance: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """g + 2 lambda G (W - W0) in fp32: the gradient of L_next + lambda G (W - W0)^2."""
    delta = weight.float() - original.float()
    return torch.addcmul(grad, importance.float(), delta, value=2 * lam)


def dual_importance_step(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|g W + (g W)^2 / 2|: second-order loss change of removing each weight, Fisher Hessian."""
    gw = grad * weight
    return (gw + 0.5 * gw * gw).abs()


class DPrunerPruner(Pruner):
    """Step 3's mask: zero the lowest-scored fraction of the original weights per group.

    With `reconstruct`, the same mask is kept and the kept weights are repaired as SparseGPT
    repairs them: its OBS sweep with the mask fixed, on Hessians of the calibration data
    (domain or mixed), block by block in the shared engine, so each block sees the inputs of the
    repaired blocks before it. Quantization stays round-to-nearest after the repair.
    """

    name = "dpruner"
    default_group = "matrix"
    needs_calibration = False
    masks_by_scores = True

    def __init__(
        self,
        scores_path: str,
        reconstruct: bool = False,
        batch_size: int = 1,
        quantize: QuantSpec | None = None,
        hessian_dtype: str = "auto",
        allocation: OwlAllocation | None = None,
    ):
        super().__init__(quantize, allocation)
        self.scores_path = scores_path
        self.hessian_dtype = hessian_dtype
        self.reconstruct = reconstruct
        self.needs_calibration = reconstruct
        self.batch_size = batch_size

    def _prune(self, model, calibration, spec: SparsitySpec, blocks=None) -> dict[str, dict]:
        # Scores are read matrix by matrix from the memory-mapped file, as the blocks come.
        with safe_open(score_file(self.scores_path), framework="pt") as scores:
            shapes = {k: tuple(scores.get_slice(k).get_shape()) for k in scores.keys()}  # noqa: SIM118
            check_score_shapes(self.scores_path, shapes, model)

            def mask_of(name: str, block_spec: SparsitySpec) -> torch.Tensor:
                return prune_mask(scores.get_tensor(name).float(), block_spec)

            if self.reconstruct:
                repair = SparseGPTPruner(
                    batch_size=self.batch_size, fixed_mask=mask_of, hessian_dtype=self.hessian_dtype
                )
                repair.layer_sparsity = self.layer_sparsity
                reports = repair._prune(model, calibration, spec, blocks)
                self.warnings += repair.warnings
                self.details = {"reconstruction": "sparsegpt-fixed-mask", **repair.details}
                return reports
            reports = {}

            def prune_block(index, linears, stats):
                block_spec = self.block_spec(index, spec)
                for name, module in linears.items():
                    mask = mask_of(name, block_spec)
                    reports[name] = apply_mask(name, module, mask, block_spec)

            layer_sequential(model, None, lambda name, module: None, prune_block, blocks=blocks)
        return reports
