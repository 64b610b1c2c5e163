"""Pure functions of one fused SGD step (dpruner.fused_sgd): the learning-rate schedule and the
stochastic rounding of updated bf16 weights."""

from __future__ import annotations

import torch


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
