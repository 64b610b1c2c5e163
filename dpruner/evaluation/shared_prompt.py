"""Multiple-choice log-likelihoods with each shared prompt run once.

lm-eval scores every (context, continuation) pair as its own sequence, so a 4-choice item with a
100-token prompt costs four 100-token passes. Here the context runs once, its key/value cache is
repeated for the choices, and only the continuations run on top: the same log-likelihoods (causal
attention makes a token's logits depend on earlier tokens only), about a quarter of the work on
the cloze probes. The vocabulary projection is also skipped for every context token but the last.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm


@torch.no_grad()
def shared_context_loglikelihoods(
    model, context: list[int], continuations: list[list[int]]
) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, whether every token is the greedy one) of each continuation
    after `context`, from one pass over the context."""
    device = next(model.parameters()).device
    prompt = model(torch.tensor([context], device=device), use_cache=True, logits_to_keep=1)
    # log-probabilities predicting each continuation's first token
    first = F.log_softmax(prompt.logits[0, -1].float(), dim=-1)
    longest = max(len(c) for c in continuations)
    rest = None
    if longest > 1:
        cache = prompt.cache
        cache.batch_repeat_interleave(len(continuations))
        # Right padding: a padded position comes after every real token of its row, so causal
        # attention keeps it out of the scored positions.
        rows = torch.zeros(len(continuations), longest - 1, dtype=torch.long)
        for row, continuation in enumerate(continuations):
            rows[row, : len(continuation) - 1] = torch.tensor(continuation[:-1])
        mask = torch.ones(len(continuations), len(context) + longest - 1, dtype=torch.long)
        rest = F.log_softmax(
            model(rows.to(device), attention_mask=mask.to(device), cache=cache).logits.float(),
            dim=-1,
        )
    scores = []
    for row, continuation in enumerate(continuations):
        steps = [first] + (
            [rest[row, j] for j in range(len(continuation) - 1)] if rest is not None else []
        )
        logprob = sum(float(step[token]) for step, token in zip(steps, continuation, strict=True))
        greedy = all(
            int(step.argmax()) == token for step, token in zip(steps, continuation, strict=True)
        )
        scores.append((logprob, greedy))
    return scores


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
        for indices in tqdm(shared, desc="shared prompts", disable=disable_tqdm or not shared):
            context = requests[indices[0]][1]
            scores = shared_context_loglikelihoods(
                self.model, list(context), [list(requests[i][2]) for i in indices]
            )
            for index, score in zip(indices, scores, strict=True):
                results[index] = score
                self.cache_hook.add_partial("loglikelihood", requests[index][0], score)
        single = [i for indices in alone for i in indices]
        if single:
            scored = super()._loglikelihood_tokens(
                [requests[i] for i in single], disable_tqdm=disable_tqdm, override_bs=override_bs
            )
            for index, score in zip(single, scored, strict=True):
                results[index] = score
        return results
