"""Plain SGD fused into the backward pass (LOMO-style): no optimiser state, never a full set of
gradients. A post-accumulate-grad hook per parameter forms D-Pruner's regularised gradient, does
the pass's work (a squared norm, or the update and the S accumulation) and drops `.grad`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from dpruner.distributed import local
from dpruner.errors import DprunerError, NonFiniteError
from dpruner.methods.dpruner import dual_importance_step, regularised_gradient
from dpruner.models import prunable_weights
from dpruner.sgd_step import stochastic_round_to_bf16

if TYPE_CHECKING:
    from dpruner.specs import FineTuneSettings


class FusedSGD:
    """Plain SGD applied inside backward through post-accumulate-grad hooks (LOMO-style).

    `mode` selects what a backward pass does: "norm" adds each regularised gradient's squared norm
    (and keeps the gradient with `keep_gradients`, for `update_from_kept`); "update" accumulates S
    for the prunable matrices and applies W <- W - lr * scale * g~.
    With a `shard`, parameters and gradients are FSDP2 DTensors: FSDP2 calls the hooks on the
    sharded parameter after the reduce-scatter, and all the hooks' work is on local rows; the
    squared norm and the error flags are summed over ranks after each backward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        importance: dict[str, torch.Tensor] | None,
        settings: FineTuneSettings,
        shard=None,
    ):
        self.model, self.settings, self.shard = model, settings, shard
        self.prunable = {name: m.weight for name, m in prunable_weights(model).items()}
        device = local(next(model.parameters())).device
        self.scores = {
            name: torch.zeros(local(w).shape, dtype=torch.float32, device=device)
            for name, w in self.prunable.items()
        }
        self.regularised = settings.lam > 0
        self.importance, self.original = {}, {}
        if self.regularised:
            if importance is None:
                raise DprunerError("lambda > 0 needs the general importance G (or set lambda: 0)")
            for name, weight in self.prunable.items():
                rows = importance[name]
                if shard is not None and rows.shape == weight.shape != local(weight).shape:
                    rows = shard.rows(rows)
                self.importance[name] = rows.to(device=device, dtype=weight.dtype)
                self.original[name] = local(weight).detach().clone()
        # One generator per parameter for stochastic rounding, so its noise does not depend on the
        # order in which hooks fire (autograd's order alone, FSDP2's group by group).
        self.generators = {
            name: torch.Generator(device=device).manual_seed(settings.seed + index)
            for index, (name, _) in enumerate(model.named_parameters())
        }
        self.mode, self.lr, self.scale, self.step = "norm", 0.0, 1.0, 0
        self.sq_norm, self.calls = 0.0, 0
        self.kept: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.error: str | None = None
        self.changed = {
            name: torch.zeros((), dtype=torch.long, device=device) for name in self.prunable
        }
        names = {id(p): n for n, p in model.named_parameters()}
        self.handles = [
            p.register_post_accumulate_grad_hook(self._hook_for(names[id(p)]))
            for p in model.parameters()
            if p.requires_grad
        ]

    def regularised_gradient(self, name: str, param: torch.Tensor) -> torch.Tensor:
        grad = local(param.grad).float()
        if self.regularised and name in self.prunable:
            grad = regularised_gradient(
                grad,
                local(param.detach()),
                self.original[name],
                self.importance[name],
                self.settings.lam,
            )
        return grad

    def _hook_for(self, name: str):
        # Finiteness is read off reductions the hook needs anyway (a squared norm, a sum of
        # non-negative scores, a gradient sum): an element-wise check of every gradient cost
        # about a sixth of an update on CPU.
        def hook(param: torch.Tensor) -> None:
            self.calls += 1
            grad = self.regularised_gradient(name, param)
            param.grad = None
            if self.mode == "update":
                self._update(name, param, grad)
                return
            square = float(torch.linalg.vector_norm(grad, dtype=torch.float64)) ** 2
            self._check(math.isfinite(square), "gradient", name)
            self.sq_norm += square
            if self.settings.keep_gradients:
                self.kept.append((name, param, grad))

        return hook

    def _update(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        weight = local(param.detach())
        if name in self.scores:
            step = dual_importance_step(grad, weight.float())
            self._check(math.isfinite(float(step.sum())), "dual importance", name)
            self.scores[name] += step
        else:
            self._check(math.isfinite(float(grad.sum())), "gradient", name)
        updated = torch.add(weight.float(), grad, alpha=-(self.lr * self.scale))
        if weight.dtype == torch.bfloat16 and self.settings.update_rounding == "stochastic":
            first = self.shard.row_range(param.shape[0])[0] if self.shard else 0
            new = stochastic_round_to_bf16(updated, self.generators[name], param.shape, first)
        else:
            new = updated.to(weight.dtype)
        if name in self.changed:
            self.changed[name] += (new != weight).sum()
        weight.copy_(new)

    def update_from_kept(self) -> None:
        """The update of the gradients the "norm" pass kept: what an "update" pass would do, as
        the second pass recomputes the same gradients (a hook fires after its parameter's last
        use in the backward pass, so no update reaches a gradient of the same pass)."""
        kept, self.kept = self.kept, []
        for name, param, grad in kept:
            self._update(name, param, grad)
        self._raise_on_error()

    def _check(self, finite: bool, what: str, name: str) -> None:
        if self.error is None and not finite:
            self.error = f"non-finite {what} at step {self.step} in {name}"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def backward(self, loss: torch.Tensor, mode: str) -> None:
        self.mode, self.calls = mode, 0
        loss.backward()
        if self.calls == 0:
            raise DprunerError(
                "no parameter hook ran in a backward pass: the update would be lost (a torch "
                "whose FSDP2 does not call post-accumulate-grad hooks on the shards?)"
            )
        if self.shard is not None and mode == "norm":
            (self.sq_norm,) = self.shard.all_reduce_sum([self.sq_norm])
        self._raise_on_error()

    def _raise_on_error(self) -> None:
        if self.shard is not None:
            (failed,) = self.shard.all_reduce_sum([float(bool(self.error))])
            if failed and not self.error:
                self.error = f"non-finite values on another rank at step {self.step}"
        if self.error:
            raise NonFiniteError(self.error)
