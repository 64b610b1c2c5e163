"""Multiple-choice log-likelihoods with each shared prompt run once.

lm-eval scores every (context, continuation) pair as its own sequence, so a 4-choice item with a
100-token prompt costs four 100-token passes. Here the context runs once, its key/value cache is
repeated for the choices, and only the continuations run on top: the same log-likelihoods (causal
attention makes a token's logits depend on earlier tokens only), about a quarter of the work on
the cloze probes. The vocabulary projection is also skipped for every context token but the last,
`batch_size` items share the context pass (contexts left-padded, positions counted per row), and
their continuations run in passes of rows of similar length (right-padded).
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from dpruner.evaluation.sizing import continuation_pass_tokens


def length_runs(lengths: list[int], budget: int) -> list[range]:
    """Consecutive runs of `lengths` (ascending) whose padded size, rows x the run's last
    length, stays within `budget`; a row longer than `budget` runs alone."""
    runs, start = [], 0
    for end in range(1, len(lengths) + 1):
        if end == len(lengths) or (end + 1 - start) * lengths[end] > budget:
            runs.append(range(start, end))
            start = end
    return runs


@torch.no_grad()
def shared_context_loglikelihoods(
    model,
    items: list[tuple[list[int], list[list[int]]]],
    pass_tokens: int | None = None,
) -> list[list[tuple[float, bool]]]:
    """For each (context, continuations) item, (sum of log-probabilities, whether every token is
    the greedy one) of each continuation after the context: one batched pass over the contexts,
    then the continuations on top of their cache in passes of about `pass_tokens` tokens (the
    device's default when None).
    Several items per pass is what makes it fast on a CPU: a pass over a few tokens is bound by
    reading the weights, not by arithmetic."""
    device = next(model.parameters()).device
    pass_tokens = pass_tokens or continuation_pass_tokens(device.type)
    width = max(len(context) for context, _ in items)
    # Left padding puts every context's last token in the last column; positions count from
    # each row's first real token, as if it were alone.
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for row, (context, _) in enumerate(items):
        ids[row, width - len(context) :] = torch.tensor(context)
        mask[row, width - len(context) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prompt = model(
        ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    # log-probabilities predicting each continuation's first token
    first = F.log_softmax(prompt.logits[:, -1].float(), dim=-1)
    rows = [(owner, choice) for owner, (_, choices) in enumerate(items) for choice in choices]
    order = sorted(range(len(rows)), key=lambda row: len(rows[row][1]))
    flat: list[tuple[float, bool] | None] = [None] * len(rows)
    runs = length_runs([len(rows[row][1]) for row in order], pass_tokens)
    for number, run in enumerate(runs):
        chosen = [order[index] for index in run]
        owners = torch.tensor([rows[row][0] for row in chosen])
        # A pass appends to the cache it is given: every run but the last gets a copy.
        cache = prompt.cache if number == len(runs) - 1 else copy.deepcopy(prompt.cache)
        scored = _continuation_scores(
            model, cache, first, mask, positions, owners, [rows[row][1] for row in chosen]
        )
        for row, score in zip(chosen, scored, strict=True):
            flat[row] = score
    scores, start = [], 0
    for _, choices in items:
        scores.append(flat[start : start + len(choices)])
        start += len(choices)
    return scores


def _continuation_scores(
    model, cache, first, mask, positions, owners: torch.Tensor, continuations: list[list[int]]
) -> list[tuple[float, bool]]:
    """Scores of `continuations`, row i after the context of item owners[i], from the contexts'
    `cache` (which the pass changes)."""
    device = first.device
    longest = max(len(c) for c in continuations)
    # Right padding: a padded position comes after every real token of its row, so causal
    # attention keeps it out of the scored positions.
    targets = torch.zeros(len(continuations), longest, dtype=torch.long)
    real = torch.zeros(len(continuations), longest, dtype=torch.bool)
    for row, continuation in enumerate(continuations):
        targets[row, : len(continuation)] = torch.tensor(continuation)
        real[row, : len(continuation)] = True
    steps = first[owners.to(device)].unsqueeze(1)
    if longest > 1:
        cache.reorder_cache(owners.to(device))
        attention = torch.cat([mask[owners], torch.ones(len(owners), longest - 1)], dim=1)
        rest = model(
            targets[:, :-1].to(device),
            attention_mask=attention.long().to(device),
            position_ids=(positions[owners, -1:] + 1 + torch.arange(longest - 1)).to(device),
            cache=cache,
        )
        steps = torch.cat([steps, F.log_softmax(rest.logits.float(), dim=-1)], dim=1)
    targets, real = targets.to(device), real.to(device)
    logprobs = steps.gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_fill(~real, 0.0)
    greedy = ((steps.argmax(-1) == targets) | ~real).all(-1)
    return list(zip(logprobs.sum(-1).tolist(), greedy.tolist(), strict=True))


class SharedPromptLM(HFLM):
    """lm-eval's HFLM with requests that share a context scored by shared_context_loglikelihoods;
    single requests (rolling perplexity windows) and sequences beyond the model's length go to
    HFLM's own batched path."""

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
        groups = defaultdict(list)
        for index, (_, context, _) in enumerate(requests):
            groups[tuple(context)].append(index)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        shared, alone = [], []
        for context, indices in groups.items():
            longest = max(len(requests[i][2]) for i in indices)
            fits = len(context) + longest <= self.max_length
            (shared if len(indices) > 1 and context and fits else alone).append(indices)
        # Items of similar context length share a batch, to keep padding small.
        shared.sort(key=lambda indices: len(requests[indices[0]][1]))
        size = max(int(self.batch_size), 1)
        batches = [shared[start : start + size] for start in range(0, len(shared), size)]
        progress = tqdm(
            total=len(shared), desc="shared prompts", disable=disable_tqdm or not shared
        )
        for batch in batches:
            items = [
                (list(requests[indices[0]][1]), [list(requests[i][2]) for i in indices])
                for indices in batch
            ]
            for indices, scores in zip(
                batch, shared_context_loglikelihoods(self.model, items), strict=True
            ):
                for index, score in zip(indices, scores, strict=True):
                    results[index] = score
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], score)
            progress.update(len(batch))
        progress.close()
        single = [i for indices in alone for i in indices]
        if single:
            scored = super()._loglikelihood_tokens(
                [requests[i] for i in single], disable_tqdm=disable_tqdm, override_bs=override_bs
            )
            for index, score in zip(single, scored, strict=True):
                results[index] = score
        return results
