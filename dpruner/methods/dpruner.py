"""D-Pruner (docs/methods.md): general importance, regularised fine-tuning, dual importance, mask.

Step 1 `general_importance` records SparseGPT's OBS saliency on a throw-away copy of the model.
Step 2+3 `domain_scores` fine-tunes on domain instances with
    L = L_next + lambda * sum_m G_m * (W_m - W0_m)^2
by plain SGD fused into the backward pass (a post-accumulate-grad hook per parameter forms the
regularised gradient, does the pass's work and drops `.grad`: no optimiser state, never a full
set of gradients), and accumulates S += |g W + (g W)^2 / 2| before every update.
`DPrunerPruner` masks the ORIGINAL weights by S (or by G alone, the general-only ablation).
With a `Shard` (dpruner.distributed) steps 2-3 run on N processes: FSDP2 splits every parameter
by rows, the hooks fire on the sharded parameter and do the same work on the rank's rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from dpruner.calibration import BlockSource, layer_sequential
from dpruner.data.tokens import instance_tokens
from dpruner.errors import DprunerError
from dpruner.fingerprint import model_fingerprint
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask, peak_rss_mb
from dpruner.methods.sparsegpt import SparseGPTPruner
from dpruner.models import prunable_weights, weight_matrix
from dpruner.quantize import QuantSpec

if TYPE_CHECKING:
    from dpruner.methods.owl import OwlAllocation

CLIP_MODES = ("two_pass", "one_pass")
ROUNDING_MODES = ("stochastic", "nearest")


class NonFiniteError(DprunerError):
    pass


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


def save_scores(scores: dict[str, torch.Tensor], path, metadata: dict) -> None:
    from dpruner.io import atomic_output

    with atomic_output(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in scores.items()},
            str(tmp),
            metadata={k: str(v) for k, v in metadata.items()},
        )


# What a scores file's metadata says made it: `kind` (the step), `model_fingerprint` (the dense
# model, dpruner.fingerprint) and `sparsity` (of G; domain scores carry their G's, none without G).
SCORE_KINDS = ("general_importance", "domain_scores")


def scores_provenance(kind: str, model_dir, sparsity: float | None) -> dict:
    """The metadata keys `check_scores` compares, for a scores file made from `model_dir`."""
    provenance = {"kind": kind, "model_fingerprint": model_fingerprint(model_dir)}
    return provenance if sparsity is None else {**provenance, "sparsity": sparsity}


def scores_metadata(path) -> dict[str, str]:
    try:
        with safe_open(str(_score_file(path)), framework="pt") as scores:
            return scores.metadata() or {}
    except DprunerError:
        raise
    except Exception as error:  # safetensors raises its own error types
        raise DprunerError(f"{path}: not a safetensors scores file ({error})") from None


def check_scores(
    path, option: str, model_dir, kinds: tuple[str, ...], sparsity: float | None = None
) -> dict[str, str]:
    """The metadata of the scores file `path` (given as `option`), after refusing one that is not
    a dpruner scores file of `kinds`, was made from another model than `model_dir` or, when
    `sparsity` is given and the file records one, at another sparsity."""
    metadata = scores_metadata(path)
    kind = metadata.get("kind")
    if kind not in SCORE_KINDS:
        raise DprunerError(
            f"{option} {path} is not a dpruner scores file: its metadata key kind is "
            f"{kind!r}, a scores file's is {' or '.join(SCORE_KINDS)}"
        )
    if kind not in kinds:
        raise DprunerError(
            f"{option} {path}: kind is {kind!r} in the file, {option} takes {' or '.join(kinds)}"
        )
    recorded = metadata.get("model_fingerprint")
    if recorded is None:
        raise DprunerError(
            f"{option} {path} has no model_fingerprint in its metadata (made by a dpruner that "
            "did not record its model): delete it to remake it"
        )
    expected = model_fingerprint(model_dir)
    if recorded != expected:
        raise DprunerError(
            f"{option} {path} was made from another model: model_fingerprint is {recorded!r} in "
            f"the file, {expected!r} for --model {model_dir}"
        )
    recorded = metadata.get("sparsity")
    if sparsity is not None and recorded is not None and not _same_sparsity(recorded, sparsity):
        raise DprunerError(
            f"{option} {path} was made at another sparsity: sparsity is {recorded} in the file, "
            f"{sparsity:g} for --sparsity"
        )
    return metadata


def _same_sparsity(recorded: str, sparsity: float) -> bool:
    try:
        return float(recorded) == sparsity
    except ValueError:
        return False


def _check_score_shapes(path, shapes: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Every prunable weight of `model` has a score matrix of its shape in `path`."""
    expected = {name: tuple(weight_matrix(m).shape) for name, m in prunable_weights(model).items()}
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise DprunerError(f"{path} has no scores for {len(missing)} matrices, e.g. {missing[0]}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise DprunerError(
                f"{path}: scores for {name} have shape {tuple(shapes[name])}, "
                f"the model's weight has {shape}"
            )


def _score_file(path) -> Path:
    if not Path(path).is_file():
        raise DprunerError(f"score file not found: {path}")
    return Path(path)


def load_scores(path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    scores = load_file(str(_score_file(path)))
    if model is not None:
        _check_score_shapes(path, {k: tuple(v.shape) for k, v in scores.items()}, model)
    return scores


@dataclass
class FineTuneSettings:
    """Step 2 hyper-parameters; defaults are the reference's (docs/methods.md)."""

    lam: float = 0.1
    lr: float = 0.03
    epochs: int = 5
    batch_size: int = 8
    max_length: int = 1024
    clip: str = "two_pass"
    max_grad_norm: float = 1.0
    warmup_fraction: float = 0.1
    update_rounding: str = "stochastic"
    gradient_checkpointing: bool = True
    # two_pass from one backward pass: the norm pass keeps every regularised gradient (fp32, the
    # size of the model) for the update instead of recomputing them (the reference's way).
    keep_gradients: bool = False
    seed: int = 42

    def __post_init__(self):
        if self.clip not in CLIP_MODES:
            raise DprunerError(f"clip must be one of {CLIP_MODES}, got '{self.clip}'")
        if self.update_rounding not in ROUNDING_MODES:
            raise DprunerError(f"update_rounding must be one of {ROUNDING_MODES}")
        if self.lam < 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise DprunerError(
                "need lambda >= 0, lr > 0, epochs >= 1 and batch_size >= 1, got "
                f"{self.lam}, {self.lr}, {self.epochs}, {self.batch_size}"
            )


def learning_rate(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first `warmup_fraction` of updates, then linear decay towards 0.

    Steps count from 0; the first warm-up step already moves (peak / warmup), the last decay step
    moves peak / (total - warmup), so no update is wasted at learning rate 0.
    """
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (total - step) / (total - warmup)


def stochastic_round_to_bf16(
    x: torch.Tensor,
    generator: torch.Generator,
    full_shape: torch.Size | None = None,
    first_row: int = 0,
) -> torch.Tensor:
    """Round fp32 to bf16 up or down with probability given by the remainder (unbiased).

    `x` may be rows `first_row`... of a tensor of `full_shape`: the noise is drawn for the whole
    tensor and cut, so a shard is rounded exactly as the same rows of the whole tensor would be.
    """
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(
        0, 1 << 16, full_shape or bits.shape, generator=generator, device=x.device,
        dtype=torch.int32,
    )[first_row : first_row + bits.shape[0]]  # fmt: skip
    rounded = (bits + noise) & -65536
    return rounded.view(torch.float32).to(torch.bfloat16)


def dual_importance_step(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|g W + (g W)^2 / 2|: second-order loss change of removing each weight, Fisher Hessian."""
    gw = grad * weight
    return (gw + 0.5 * gw * gw).abs()


def left_padded_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """A left-padded batch whose every row computes what it would compute alone.

    - `position_ids` count from each row's first real token (padding gets 0): without them a
      padded row starts at position `width - len(row)`, which shifts learned absolute positions
      (GPT-2) and the angles of rotary ones (exactly relative in real arithmetic, not in bf16,
      and not under position-dependent RoPE scaling).
    - The label of each row's first real token is -100 as well: the causal-LM loss shifts labels
      by one, so otherwise a padding position would be scored for predicting it (BOS), a target
      that the same row alone never has.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    labels = input_ids.masked_fill(position_ids == 0, -100)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": position_ids,
        "labels": labels,
    }


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter or gradient: a DTensor's local shard, else itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


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
            delta = local(param.detach()).float() - self.original[name].float()
            grad = torch.addcmul(
                grad, self.importance[name].float(), delta, value=2 * self.settings.lam
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


def _loss(
    model: nn.Module, batch: dict[str, torch.Tensor], step: int, shard=None
) -> tuple[torch.Tensor, float]:
    """(the loss to differentiate, the batch's mean token loss).

    With a `shard`, the rank runs its rows of the global `batch` and its loss is the sum of its
    token losses over the global batch's token count: the ranks' gradients sum to the gradient
    of the single-process mean loss.
    """
    device = local(next(model.parameters())).device
    if shard is None:
        out = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
        value = float(out.loss.detach())
    else:
        from dpruner.distributed import batch_rows

        # Labels are shifted by one inside the model: the first position predicts nothing.
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        rows = batch_rows(batch, shard)
        out = model(
            **{k: v.to(device) for k, v in rows.items()},
            use_cache=False,
            num_items_in_batch=torch.tensor(tokens, device=device),
        )
        (value,) = shard.all_reduce_sum([float(out.loss.detach())])
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite loss {value} at step {step}")
    return out.loss, value


def _disable_dropout(model: nn.Module) -> None:
    """Both passes of a step must see the same gradient, so dropout stays off while training."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, 0.0)


def prepare_for_training(model: nn.Module, settings: FineTuneSettings) -> None:
    """Dropout off, train mode, every parameter trainable, checkpointing as `settings` say."""
    _disable_dropout(model)
    model.train()
    for param in model.parameters():
        param.requires_grad_(True)
    if settings.gradient_checkpointing:
        _enable_checkpointing(model)


def _enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing, so parameter hooks fire normally during recomputation."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def domain_scores(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    importance: dict[str, torch.Tensor] | None,
    settings: FineTuneSettings,
    progress: bool = True,
    shard=None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fine-tune `model` in place on `texts`; return S per prunable weight and a run report.

    With a `shard` (one rank of several, dpruner.distributed) the model is sharded with FSDP2
    unless it is already, every rank runs its rows of each global batch, and S holds the rank's
    rows of each matrix (`gather_scores` assembles them); `importance` may hold whole matrices
    or the rank's rows.
    """
    if not texts:
        raise DprunerError("domain-scores needs at least one domain instance, got none")
    sequences, truncated = instance_tokens(texts, tokenizer, settings.max_length)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    batches_per_epoch = math.ceil(len(sequences) / settings.batch_size)
    total = settings.epochs * batches_per_epoch
    if shard is None or not is_sharded(model):
        prepare_for_training(model, settings)
        if shard is not None:
            from dpruner.distributed import shard_model

            shard_model(model, shard)
    # The device the model runs on (a rank's own GPU), not any GPU the machine has.
    device = local(next(model.parameters())).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sgd = FusedSGD(model, importance, settings, shard)
    order = torch.Generator().manual_seed(settings.seed)
    losses, scales = [], []
    start = time.perf_counter()
    bar = tqdm(total=total, desc="domain fine-tuning", disable=not progress)
    try:
        for epoch in range(settings.epochs):
            permutation = torch.randperm(len(sequences), generator=order).tolist()
            for b0 in range(0, len(sequences), settings.batch_size):
                batch = left_padded_batch(
                    [sequences[i] for i in permutation[b0 : b0 + settings.batch_size]], pad_id
                )
                sgd.lr = learning_rate(sgd.step, total, settings.lr, settings.warmup_fraction)
                if settings.clip == "two_pass":
                    sgd.sq_norm = 0.0
                    loss, value = _loss(model, batch, sgd.step, shard)
                    sgd.backward(loss, "norm")
                    norm = math.sqrt(sgd.sq_norm)
                    sgd.scale = min(1.0, settings.max_grad_norm / (norm + 1e-6))
                if settings.clip == "two_pass" and settings.keep_gradients:
                    sgd.update_from_kept()
                else:
                    loss, value = _loss(model, batch, sgd.step, shard)
                    sgd.backward(loss, "update")
                losses.append(value)
                scales.append(sgd.scale)
                sgd.step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", lr=f"{sgd.lr:.2e}")
    finally:
        bar.close()
        sgd.remove()
        model.eval()
    changed = {name: float(count) for name, count in sgd.changed.items()}
    if shard is not None:
        changed = dict(zip(changed, shard.all_reduce_sum(list(changed.values())), strict=True))
    report = {
        "settings": asdict(settings),
        "processes": shard.world if shard is not None else 1,
        "instances": len(sequences),
        "truncated_instances": truncated,
        "updates": total,
        "losses": losses,
        "clip_scales": scales,
        # Mean over updates of the share of a matrix's weights that the update changed: with bf16
        # and round-to-nearest most updates would be lost (docs/methods.md).
        "changed_fraction_per_update": {
            name: count / (sgd.prunable[name].numel() * total) for name, count in changed.items()
        },
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
    }
    return sgd.scores, report


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())


def gather_scores(scores: dict[str, torch.Tensor], model: nn.Module, shard) -> dict | None:
    """Whole S matrices on rank 0 (None on the others) from every rank's rows, one at a time."""
    shapes = {name: m.weight.shape for name, m in prunable_weights(model).items()}
    full = {name: shard.gather_rows(rows, shapes[name][0]) for name, rows in scores.items()}
    return full if shard.rank == 0 else None


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
        with safe_open(_score_file(self.scores_path), framework="pt") as scores:
            shapes = {k: tuple(scores.get_slice(k).get_shape()) for k in scores.keys()}  # noqa: SIM118
            _check_score_shapes(self.scores_path, shapes, model)

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
