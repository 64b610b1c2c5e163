"""The one layer-sequential calibration engine shared by all calibrated methods (docs/methods.md).

Capture: each decoder block's `forward` is swapped for a recorder, so one pass of every calibration
batch runs only the embedding, rotary and mask code. Block 0's recorder keeps the hidden states;
every block's recorder keeps its keyword arguments, because some models (Gemma-3, Qwen2) give
each layer type its own attention mask and rotary embedding. The last recorder stops the pass
before the final norm and `lm_head` (whose logits alone would be N x L x vocab).

Walk: for each block, forward hooks on its linears feed the method's statistics objects while all
N inputs run through it; the method prunes the block; the pruned block is re-run to give the next
block's inputs, so pruning error propagates as in the reference implementations. Without
calibration data (magnitude, a D-Pruner mask) the walk only visits the blocks in order.

Where the weights live is a `BlockSource`'s business: the default one finds every block already in
memory; `dpruner.streaming.CheckpointBlocks` brings each block in from the safetensors files just
before the walk needs it and writes it out (and frees it) as soon as the walk is done with it, so
the same walk prunes models larger than memory.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, suppress

import torch
from torch import nn
from tqdm import tqdm

from dpruner.models import decoder_blocks, prunable_linears


class _StopCapture(Exception):
    pass


class LayerStatistics:
    """What a method accumulates for one linear: fed by `add_batch`, read when pruning the block."""

    def add_batch(self, inputs: torch.Tensor, n_sequences: int) -> None:
        """`inputs` is the layer's input as tokens x d_in in the model's dtype (each statistic
        chooses its own precision), from `n_sequences` sequences."""
        raise NotImplementedError


class BlockSource:
    """Where the walk gets each block's weights, and what happens to them when it is done.

    The walk calls `load(i, block)` before block i is used and `release(i, block)` after the
    pruned block was re-run; this default has every block in memory already and keeps it.
    """

    def load(self, index: int, block: nn.Module) -> None:
        pass

    def release(self, index: int, block: nn.Module) -> None:
        pass


MakeStatistics = Callable[[str, nn.Module], LayerStatistics | None]
PruneBlock = Callable[[int, dict[str, nn.Module], dict[str, LayerStatistics]], None]


def _intern(value, seen: list):
    """An already stored equal tensor (or tuple of tensors), so buffers hold each value once."""
    tensors = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return value
    for old in seen:
        old_tensors = old if isinstance(old, tuple) else (old,)
        if len(old_tensors) == len(tensors) and all(
            a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
            for a, b in zip(old_tensors, tensors, strict=True)
        ):
            return old
    seen.append(value)
    return value


@contextmanager
def _no_cache(model: nn.Module):
    saved = getattr(model.config, "use_cache", None)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    model.config.use_cache = False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        model.config.use_cache = saved
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def capture_block_inputs(
    model: nn.Module,
    calibration: torch.Tensor,
    batch_size: int = 1,
    buffer_device: torch.device | str | None = None,
) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """(block-0 hidden states per batch, keyword arguments per block per batch)."""
    _, blocks = decoder_blocks(model)
    embed_device = model.get_input_embeddings().weight.device
    hidden: list[torch.Tensor] = []
    block_kwargs: list[list[dict]] = [[] for _ in blocks]
    seen: list = []

    def recorder(index: int):
        def record(*args, **kwargs):
            states = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                hidden.append(states.to(buffer_device or states.device))
            block_kwargs[index].append({k: _intern(v, seen) for k, v in kwargs.items()})
            if index == len(blocks) - 1:
                raise _StopCapture
            return states

        return record

    for index, block in enumerate(blocks):
        block.forward = recorder(index)
    try:
        with torch.no_grad():
            for b0 in range(0, calibration.shape[0], batch_size):
                with suppress(_StopCapture):
                    model(input_ids=calibration[b0 : b0 + batch_size].to(embed_device))
    finally:
        for block in blocks:
            del block.forward
    return hidden, block_kwargs


def _run_block(block: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict]) -> list:
    device = next(block.parameters()).device
    outputs = []
    for states, batch_kwargs in zip(hidden, kwargs, strict=True):
        out = block(states.to(device), **batch_kwargs)
        outputs.append((out[0] if isinstance(out, tuple) else out).to(states.device))
    return outputs


def layer_sequential(
    model: nn.Module,
    calibration: torch.Tensor | None,
    make_statistics: MakeStatistics,
    prune_block: PruneBlock,
    batch_size: int = 1,
    buffer_device: torch.device | str | None = None,
    progress: bool = True,
    blocks: BlockSource | None = None,
) -> list[torch.Tensor]:
    """Walk the blocks in order; returns the last block's outputs per calibration batch.

    `make_statistics(full_weight_name, module)` returns a statistics object for a linear, or None
    when the method needs none for it; `prune_block(index, linears, statistics)` prunes the block's
    linears in place (keys are full weight names, e.g. `model.layers.3.mlp.up_proj.weight`).
    With `calibration=None` nothing is captured or run: each block is loaded, pruned (with no
    statistics) and released. `blocks` says where the weights come from (default: in memory).
    """
    if calibration is not None and (calibration.ndim != 2 or calibration.shape[0] == 0):
        raise ValueError(
            f"calibration must be a non-empty N x L tensor, got {tuple(calibration.shape)}"
        )
    source = blocks or BlockSource()
    prefix, decoder = decoder_blocks(model)
    hidden: list[torch.Tensor] = []
    with _no_cache(model), torch.no_grad():
        if calibration is not None:
            hidden, block_kwargs = capture_block_inputs(
                model, calibration, batch_size, buffer_device
            )
        for index, block in enumerate(tqdm(decoder, desc="blocks", disable=not progress)):
            source.load(index, block)
            linears = {
                f"{prefix}.{index}.{name}.weight": module
                for name, module in prunable_linears(block).items()
            }
            statistics = {}
            if calibration is not None:
                for full_name, module in linears.items():
                    stats = make_statistics(full_name, module)
                    if stats is not None:
                        statistics[full_name] = stats
            if statistics:
                handles = [
                    linears[name].register_forward_hook(_feeder(stats))
                    for name, stats in statistics.items()
                ]
                try:
                    _run_block(block, hidden, block_kwargs[index])
                finally:
                    for handle in handles:
                        handle.remove()
            prune_block(index, linears, statistics)
            if calibration is not None:
                hidden = _run_block(block, hidden, block_kwargs[index])
            source.release(index, block)
    return hidden


def _feeder(stats: LayerStatistics):
    def hook(module, inputs, output):
        x = inputs[0]
        n_sequences = x.shape[0] if x.ndim > 2 else 1
        stats.add_batch(x.reshape(-1, x.shape[-1]), n_sequences)

    return hook
