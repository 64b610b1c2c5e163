"""D-Pruner's steps 2-3 on N processes: FSDP2 shards; each rank runs its slice of every batch.

`torchrun --nproc-per-node N -m dpruner domain-scores ...` starts N copies of the CLI; each one
sees WORLD_SIZE > 1 and runs `domain_scores` with a `Shard`. Every parameter is split by rows
(dim 0) across the ranks by `torch.distributed.fsdp.fully_shard`; the post-accumulate-grad hooks
of `FusedSGD` fire on the sharded parameter after the reduce-scatter and update the rank's rows
only, so S, G and W0 are held per shard and no optimiser state exists (docs/distributed.md).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from dpruner.errors import DprunerError


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def report_failure(error: BaseException) -> None:
    """One line naming the rank, so a job's log says which process failed and why."""
    print(f"rank {rank()} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` ranks, and the row split FSDP2 uses (torch.chunk)."""

    rank: int
    world: int
    device: torch.device
    mesh: object = None

    def row_range(self, rows: int) -> tuple[int, int]:
        per = math.ceil(rows / self.world)
        start = min(self.rank * per, rows)
        return start, min(start + per, rows)

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        start, stop = self.row_range(tensor.shape[0])
        return tensor[start:stop]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks, in float64."""
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def gather_rows(self, local: torch.Tensor, rows: int) -> torch.Tensor | None:
        """The full tensor on rank 0 (on the CPU) from every rank's rows; None on other ranks."""
        per = math.ceil(rows / self.world)
        padded = local.new_zeros((per, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(padded, parts, dst=0)
        return torch.cat(parts)[:rows].cpu() if self.rank == 0 else None


@contextmanager
def process_group(device: str, timeout_s: float) -> Iterator[Shard]:
    """Join the job torchrun started: gloo on the CPU, NCCL (plus gloo) on GPUs.

    `timeout_s` bounds every collective, so a rank that died outside torchrun's watch cannot
    leave the others waiting forever.
    """
    world, me = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", me))
        if local_rank >= torch.cuda.device_count():
            raise DprunerError(
                f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} "
                "visible, one per process needed (lower `processes:` or use --device cpu)"
            )
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "cpu:gloo,cuda:nccl"
    elif device == "cpu":
        target, backend = torch.device("cpu"), "gloo"
    else:
        raise DprunerError(f"--device {device}: several processes run on 'cpu' or 'cuda' only")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(target.type, (world,))
    yield Shard(me, world, target, mesh)
    # Only after success: a failing rank exits at once and torchrun stops the others.
    dist.destroy_process_group()


def load_one_rank_at_a_time(shard: Shard, load):
    """Run `load()` on one rank after another, so a node holds one full model at a time in memory:
    each rank keeps only its shard once `shard_model` has run inside `load`."""
    result = None
    for turn in range(shard.world):
        if turn == shard.rank:
            result = load()
        dist.barrier()
    return result


def shard_model(model: nn.Module, shard: Shard) -> None:
    """FSDP2: one group per decoder block, the rest (embeddings, final norm, head) in the root.

    Every rank's loss is already its share of the global mean (the sum of its token losses over
    the global token count), so gradients are summed across ranks, not averaged.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from dpruner.models import decoder_blocks

    if not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        raise DprunerError(
            f"several processes need a newer torch than {torch.__version__}: FSDP2 with summed "
            "gradient reductions and post-accumulate-grad hooks on the shards (envs/dpruner.yaml "
            "pins one that has them)"
        )

    _, blocks = decoder_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=shard.mesh)
    fully_shard(model, mesh=shard.mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
            module.set_gradient_divide_factor(1.0)


def load_score_rows(path, shapes: dict[str, torch.Size], shard: Shard) -> dict[str, torch.Tensor]:
    """This rank's rows of every named score tensor, read from the safetensors file by slices."""
    from dpruner.score_files import score_file

    rows = {}
    with safe_open(str(score_file(path)), framework="pt") as scores:
        names = set(scores.keys())
        for name, shape in shapes.items():
            if name not in names:
                raise DprunerError(f"{path} has no scores for {name}")
            part = scores.get_slice(name)
            if tuple(part.get_shape()) != tuple(shape):
                raise DprunerError(
                    f"{path}: scores for {name} have shape {tuple(part.get_shape())}, "
                    f"the model's weight has {tuple(shape)}"
                )
            start, stop = shard.row_range(shape[0])
            rows[name] = part[start:stop]
    return rows


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter or gradient: a DTensor's local shard, else itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())


def gather_scores(scores: dict[str, torch.Tensor], model: nn.Module, shard: Shard) -> dict | None:
    """Whole S matrices on rank 0 (None on the others) from every rank's rows, one at a time."""
    from dpruner.models import prunable_weights

    shapes = {name: m.weight.shape for name, m in prunable_weights(model).items()}
    full = {name: shard.gather_rows(rows, shapes[name][0]) for name, rows in scores.items()}
    return full if shard.rank == 0 else None


def batch_rows(batch: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
    """This rank's rows of a global batch. A rank left without rows (a short last batch) runs
    the first row with every label ignored: it joins the collectives and adds nothing."""
    start, stop = shard.row_range(batch["input_ids"].shape[0])
    if stop > start:
        return {key: value[start:stop] for key, value in batch.items()}
    empty = {key: value[:1].clone() for key, value in batch.items()}
    empty["labels"].fill_(-100)
    return empty
