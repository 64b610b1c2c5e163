"""How many sequences and tokens an evaluation pass holds, by the device it runs on.

On a CPU a pass of a few sequences already keeps the cores busy, and the CPU values are the
suite's timed defaults. On a GPU small passes leave it idle: SmolLM2-135M-shaped perplexity in
bf16 on an H200 ran at 70,410 tokens/s with 4 windows of 512 per pass, 437,805 with 32 and
485,443 with 128 (issue 21).
"""

from __future__ import annotations

# Sequences per perplexity pass and items per shared-prompt pass where config
# `evaluation.batch_size` leaves it out.
BATCH_SIZES = {"cpu": 4, "cuda": 32}
# Tokens (padding included) per pass of multiple-choice continuations (shared_prompt.py): rows
# sorted by length and cut into runs, so a short choice is not padded to the batch's longest one
# (on the default tasks padding was half of the continuation tokens), while a pass stays long
# enough not to be bound by reading the weights. On a GPU enough rows for 32 items of four
# choices of up to 32 tokens; their logits with a 262,144-token vocabulary (Gemma-3) are 2 GB in
# bf16 and the fp32 log-probabilities 4 GB.
CONTINUATION_PASS_TOKENS = {"cpu": 256, "cuda": 4096}


def evaluation_batch_size(configured: int | None, device_type: str) -> int:
    """The configured batch size, else the device's (a device without one gets the CPU's)."""
    if configured is not None:
        return configured
    return BATCH_SIZES.get(device_type, BATCH_SIZES["cpu"])


def continuation_pass_tokens(device_type: str) -> int:
    return CONTINUATION_PASS_TOKENS.get(device_type, CONTINUATION_PASS_TOKENS["cpu"])
