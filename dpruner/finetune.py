"""D-Pruner's steps 2-3 (docs/methods.md): fine-tune on domain instances with the regularised
loss by fused SGD (dpruner.fused_sgd) and return the dual importance S it accumulated.

With a `Shard` (dpruner.distributed) the steps run on N processes: FSDP2 splits every parameter
by rows, the hooks fire on the sharded parameter and do the same work on the rank's rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch
from torch import nn
from tqdm import tqdm

from dpruner.data.tokens import instance_tokens
from dpruner.distributed import batch_rows, is_sharded, local, shard_model
from dpruner.errors import DprunerError, NonFiniteError
from dpruner.fused_sgd import FusedSGD
from dpruner.methods.base import peak_rss_mb
from dpruner.sgd_step import learning_rate
from dpruner.specs import FineTuneSettings


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
    rows of each matrix (`dpruner.distributed.gather_scores` assembles them); `importance` may
    hold whole matrices or the rank's rows.
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
