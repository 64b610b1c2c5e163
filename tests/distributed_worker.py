"""`python -m dpruner` with two test probes, run by torchrun (or in-process) in the tests.

    distributed_worker.py WEIGHTS [--fail-rank R] -- domain-scores ARGS...

WEIGHTS receives the fine-tuned weights (whole tensors, gathered from the shards) that the CLI
otherwise discards; `--fail-rank R` makes rank R raise at its second update, as a bug or an
out-of-memory error would.
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

import dpruner.finetune as finetune
import dpruner.fused_sgd as fused_sgd
from dpruner.cli import entry


def keep_weights(path: str) -> None:
    original = finetune.domain_scores

    def domain_scores(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        weights = {
            name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for name, p in model.named_parameters()
        }
        if int(os.environ.get("RANK", "0")) == 0:
            save_file(weights, path)
        return result

    finetune.domain_scores = domain_scores


def fail_on(rank: int) -> None:
    original = fused_sgd.FusedSGD.backward

    def backward(self, loss, mode):
        if self.step == 1 and mode == "update" and int(os.environ["RANK"]) == rank:
            raise RuntimeError("injected fault")
        return original(self, loss, mode)

    fused_sgd.FusedSGD.backward = backward


def run(argv: list[str]) -> int:
    split = argv.index("--")
    probe, cli = argv[:split], argv[split + 1 :]
    keep_weights(probe[0])
    if "--fail-rank" in probe:
        fail_on(int(probe[probe.index("--fail-rank") + 1]))
    return entry(cli)


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(run(sys.argv[1:]))
