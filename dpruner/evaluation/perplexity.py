"""Sliding-window perplexity over one token stream (docs/methods.md#how-the-paper-evaluates).

Windows of `window` tokens start every `stride` tokens; each window scores only the tokens that no
earlier window scored, so with stride == window the windows are disjoint. Only full windows are
used: the tail after the last full window is left unscored (its size is reported).

With a `BlockSource` (`dpruner.streaming.CheckpointBlocks` on a `load_skeleton` model) the windows
go through the one layer-sequential walk as its "calibration": one decoder block at a time is
read, run on every window's hidden states and freed; then the model's own forward, with its blocks
skipped, applies the final norm and `lm_head` to the last block's outputs. The scoring is shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dpruner.calibration import BlockSource, layer_sequential
from dpruner.errors import DataError
from dpruner.models import decoder_blocks

BOS_MODES = ("none", "once", "window")


def window_plan(
    n_tokens: int, window: int, stride: int, first_scorable: int = 1
) -> list[tuple[int, int]]:
    """(start, first scored offset) for every full window.

    `first_scorable` is 1 when a window's first token has no context, 0 when a BOS precedes it.
    """
    if window < 2 or not 0 < stride <= window:
        raise DataError(
            f"perplexity needs window >= 2 and 0 < stride <= window, got {window}/{stride}"
        )
    plan = []
    scored_until = 0
    for start in range(0, n_tokens - window + 1, stride):
        first = max(first_scorable, scored_until - start)
        plan.append((start, first))
        scored_until = start + window
    return plan


def perplexity_windows(
    token_ids: torch.Tensor, window: int, stride: int, bos_id: int | None, bos: str
) -> tuple[torch.Tensor, list[int], int]:
    """(windows x window input ids, index of each window's first scored loss position, tokens
    of the stream left unscored after the last full window)."""
    if bos not in BOS_MODES:
        raise DataError(f"perplexity bos must be one of {BOS_MODES}, got {bos!r}")
    if bos != "none" and bos_id is None:
        raise DataError(f"perplexity bos={bos!r} but the tokenizer has no BOS token")
    ids = token_ids.reshape(-1).long()
    if bos == "once":
        ids = torch.cat([torch.tensor([bos_id]), ids])
    offset = 1 if bos == "window" else 0
    text_window = window - offset
    plan = window_plan(
        ids.numel(), text_window, min(stride, text_window), first_scorable=1 - offset
    )
    if not plan:
        raise DataError(
            f"perplexity text has {ids.numel()} tokens, fewer than one window ({window})"
        )
    inputs = torch.stack([ids[start : start + text_window] for start, _ in plan])
    if bos == "window":
        inputs = torch.cat([torch.full((len(plan), 1), bos_id), inputs], dim=1)
    # Loss position p predicts input token p + 1.
    first_losses = [first - 1 + offset for _, first in plan]
    return inputs, first_losses, ids.numel() - (plan[-1][0] + text_window)


def _in_memory_logits(model, batches: list[torch.Tensor], progress: bool) -> Iterator:
    device = model.get_input_embeddings().weight.device
    for batch in tqdm(batches, desc="perplexity", disable=not progress):
        yield model(input_ids=batch.to(device), use_cache=False).logits


def _streamed_logits(
    model, batches: list[torch.Tensor], blocks: BlockSource, progress: bool
) -> Iterator:
    outputs = layer_sequential(
        model,
        torch.cat(batches),
        lambda name, module: None,
        lambda index, linears, statistics: None,
        batch_size=len(batches[0]),
        progress=progress,
        blocks=blocks,
    )
    device = model.get_input_embeddings().weight.device
    for batch, hidden in zip(batches, outputs, strict=True):
        with _blocks_skipped(model, hidden):
            yield model(input_ids=batch.to(device), use_cache=False).logits


@contextmanager
def _blocks_skipped(model, last_output: torch.Tensor):
    """Every decoder block passes its input on and the last returns `last_output`, so the model's
    own forward computes what follows the blocks (final norm, lm_head, any logit soft-capping)."""
    _, blocks = decoder_blocks(model)

    def passthrough(*args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]

    for block in blocks:
        block.forward = passthrough
    blocks[-1].forward = lambda *args, **kwargs: last_output
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


@torch.no_grad()
def sliding_window_perplexity(
    model,
    token_ids: torch.Tensor,
    window: int,
    stride: int,
    bos_id: int | None = None,
    bos: str = "none",
    batch_size: int = 4,
    progress: bool = True,
    blocks: BlockSource | None = None,
) -> dict:
    """Token-weighted `ppl` = exp(sum NLL / scored tokens) and the reference's `ppl_ref`.

    `ppl_ref` is exp(mean over windows of each window's mean NLL). `bos="once"` puts BOS before the
    stream; `bos="window"` starts every window with BOS (Gemma-3 needs it), each window then holds
    window - 1 text tokens.

    `window_nll` and `window_tokens` give, per scored window in stream order, the NLL sum and the
    number of tokens it scored (each token once, so they sum to `nll_sum` and `tokens_scored`):
    the units a bootstrap interval of `ppl` resamples (`dpruner.stats.perplexity_ci`).

    With `blocks`, the model is a skeleton whose blocks the source streams (module docstring).
    """
    inputs, first_losses, tail = perplexity_windows(token_ids, window, stride, bos_id, bos)
    batches = list(torch.split(inputs, batch_size))
    if blocks is None:
        logits = _in_memory_logits(model, batches, progress)
    else:
        logits = _streamed_logits(model, batches, blocks, progress)
    window_means, window_nll, window_tokens = [], [], []
    firsts = iter(first_losses)
    for batch, batch_logits in zip(batches, logits, strict=True):
        labels = batch[:, 1:].to(batch_logits.device)
        # One window at a time: the fp32 copy and log-softmax of a whole batch of logits would
        # be batch x window x vocabulary x 8 bytes (Gemma-3, 16 x 2048: 69 GB).
        for row_logits, row_labels in zip(batch_logits, labels, strict=True):
            nll = F.cross_entropy(row_logits[:-1].float(), row_labels, reduction="none")
            scored = nll[next(firsts) :].double()
            window_nll.append(scored.sum().item())
            window_tokens.append(scored.numel())
            window_means.append(scored.mean().item())
    total_nll, total_tokens = sum(window_nll), sum(window_tokens)
    return {
        "ppl": math.exp(total_nll / total_tokens),
        "ppl_ref": math.exp(sum(window_means) / len(window_means)),
        "nll_sum": total_nll,
        "tokens_scored": total_tokens,
        "window_nll": window_nll,
        "window_tokens": window_tokens,
        "windows": len(inputs),
        "tokens_unscored_tail": tail,
        "window": window,
        "stride": stride,
        "bos": bos,
    }
