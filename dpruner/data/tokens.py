"""Token ids for calibration windows and perplexity streams (docs/methods.md#calibration-data)."""

from __future__ import annotations

import random

import torch

from dpruner.errors import DataError


def text_tokens(text: str, tokenizer) -> torch.Tensor:
    """1-D LongTensor of `text`'s token ids, without special tokens."""
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def calibration_tokens(
    texts: list[str],
    tokenizer,
    nsamples: int,
    seqlen: int,
    seed: int,
    shuffle_seed: int = 0,
    bos: bool = False,
) -> torch.Tensor:
    """LongTensor [nsamples, seqlen] of random windows of the shuffled, joined texts.

    Texts are shuffled with random.Random(shuffle_seed), joined with "\\n\\n" and tokenised without
    special tokens; window starts are drawn one by one with torch.randint(0, n - window) from a
    generator seeded `seed`. This reproduces the reference anchor's calib_wiki_128x512.pt. With
    `bos`, each row is BOS followed by seqlen - 1 text tokens.
    """
    if nsamples < 1 or seqlen < 1:
        raise DataError(f"calibration needs nsamples >= 1 and seqlen >= 1, got {nsamples}/{seqlen}")
    if not texts:
        raise DataError("calibration needs at least one text, got none")
    if bos and tokenizer.bos_token_id is None:
        raise DataError("calibration bos=True but the tokenizer has no BOS token")
    window = seqlen - 1 if bos else seqlen
    if window < 1:
        raise DataError("calibration with bos=True needs seqlen >= 2")
    shuffled = list(texts)
    random.Random(shuffle_seed).shuffle(shuffled)
    stream = text_tokens("\n\n".join(shuffled), tokenizer)
    if stream.numel() < window + 1:
        raise DataError(
            f"calibration texts give {stream.numel()} tokens; {window + 1} are needed for "
            f"windows of {window} tokens (seqlen {seqlen})"
        )
    generator = torch.Generator().manual_seed(seed)
    samples = torch.empty(nsamples, seqlen, dtype=torch.long)
    for row in range(nsamples):
        start = int(torch.randint(0, stream.numel() - window, (1,), generator=generator).item())
        samples[row, seqlen - window :] = stream[start : start + window]
    if bos:
        samples[:, 0] = tokenizer.bos_token_id
    return samples


def instance_tokens(texts: list[str], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """BOS + tokens per instance, cut at max_length, as D-Pruner fine-tunes on them; returns the
    ids and how many were cut."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    sequences, truncated = [], 0
    for text in texts:
        ids = bos + tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > max_length:
            truncated += 1
            ids = ids[:max_length]
        sequences.append(ids)
    return sequences, truncated


def instance_rows(texts: list[str], tokenizer, length: int) -> torch.Tensor:
    """LongTensor [rows, length]: exactly the tokens D-Pruner fine-tunes on (instance_tokens),
    in instance order, cut into rows of `length`; an instance of `length` tokens or more is one
    row, shorter ones run on into the next row, and an incomplete last row is dropped. The
    data-matched calibration of the domain-calibrated baselines."""
    stream = [token for ids in instance_tokens(texts, tokenizer, length)[0] for token in ids]
    rows = len(stream) // length
    if rows == 0:
        raise DataError(
            f"the domain instances give {len(stream)} tokens, fewer than one row of {length}"
        )
    return torch.tensor(stream[: rows * length], dtype=torch.long).view(rows, length)
