"""Sliding-window perplexity over one token stream (algorithms.md section 6).

Windows of `window` tokens start every `stride` tokens; each window scores only the tokens that no
earlier window scored, so with stride == window the windows are disjoint. Only full windows are
used: the tail after the last full window is left unscored (its size is reported).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dpruner.errors import DataError

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
) -> dict:
    """Token-weighted `ppl` = exp(sum NLL / scored tokens) and the reference's `ppl_ref`.

    `ppl_ref` is exp(mean over windows of each window's mean NLL). `bos="once"` puts BOS before the
    stream; `bos="window"` starts every window with BOS (Gemma-3 needs it), each window then holds
    window - 1 text tokens.

    `window_nll` and `window_tokens` give, per scored window in stream order, the NLL sum and the
    number of tokens it scored (each token once, so they sum to `nll_sum` and `tokens_scored`):
    the units a bootstrap interval of `ppl` resamples (`dpruner.stats.perplexity_ci`).
    """
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
    device = next(model.parameters()).device
    total_nll, total_tokens, window_means, window_nll, window_tokens = 0.0, 0, [], [], []
    for b0 in tqdm(range(0, len(plan), batch_size), desc="perplexity", disable=not progress):
        chunk = plan[b0 : b0 + batch_size]
        inputs = torch.stack([ids[s : s + text_window] for s, _ in chunk])
        if bos == "window":
            inputs = torch.cat([torch.full((len(chunk), 1), bos_id), inputs], dim=1)
        logits = model(input_ids=inputs.to(device), use_cache=False).logits.float()
        nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2), inputs[:, 1:].to(device), reduction="none"
        )
        for row, (_, first) in enumerate(chunk):
            scored = nll[row, first - 1 + offset :]
            window_nll.append(scored.double().sum().item())
            window_tokens.append(scored.numel())
            total_nll += window_nll[-1]
            total_tokens += window_tokens[-1]
            window_means.append(scored.double().mean().item())
    last_end = plan[-1][0] + text_window
    return {
        "ppl": math.exp(total_nll / total_tokens),
        "ppl_ref": math.exp(sum(window_means) / len(window_means)),
        "nll_sum": total_nll,
        "tokens_scored": total_tokens,
        "window_nll": window_nll,
        "window_tokens": window_tokens,
        "windows": len(plan),
        "tokens_unscored_tail": ids.numel() - last_end,
        "window": window,
        "stride": stride,
        "bos": bos,
    }
