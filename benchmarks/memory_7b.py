"""D-Pruner's steps on a randomly initialised LLaMA-2-7B-shaped model: wall time and peak memory.

Memory and time do not depend on the weights' values, so a random model (config only, nothing
downloaded) stands in for LLaMA-2-7B. Token ids are random too.

    python benchmarks/memory_7b.py step1 --nsamples 128 --seqlen 2048 [--blocks K]
    python benchmarks/memory_7b.py step23 --steps 3 --batch-size 8 --max-length 1024
    python benchmarks/memory_7b.py step23 --shape tiny --device cpu     # a quick check anywhere
    python benchmarks/memory_7b.py table results/gpu/memory_7b.jsonl    # -> results/tables/

step1 runs the SparseGPT sweep that records G (all blocks, or the first K to bound the time);
step23 runs the regularised fused-SGD fine-tuning that accumulates S (G random positive, mean 1,
bf16; W0 bf16 on the GPU, S fp32) and then masks by S. One JSON line per step goes to stdout and
to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpruner.calibration import layer_sequential
from dpruner.finetune import FineTuneSettings, domain_scores
from dpruner.io import write_text
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import apply_mask
from dpruner.methods.sparsegpt import HessianStatistics, sparsegpt_sweep
from dpruner.models import prunable_weights, weight_matrix

SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=128, max_position_embeddings=256,
    ),
}  # fmt: skip


class TokenStub:
    bos_token_id, pad_token_id, eos_token_id = 1, 0, 2

    def __call__(self, text, add_special_tokens=False):
        class Encoded:
            input_ids = [int(w) for w in text.split()]

        return Encoded()


def random_model(shape: str, device: str) -> LlamaForCausalLM:
    config = LlamaConfig(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU"


def step1(args) -> dict:
    """SparseGPT sweep recording G, block by block, as general_importance does."""
    model = random_model(args.shape, args.device)
    vocab = model.config.vocab_size
    tokens = torch.randint(
        3, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0)
    )
    spec = SparsitySpec(0.5, "block")
    saliency_bytes = 0
    block_times = []
    start = time.perf_counter()

    def statistics(name, module):
        index = int(name.split(".")[2])
        if args.blocks and index >= args.blocks:
            return None
        return HessianStatistics(weight_matrix(module).shape[1], module.weight.device)

    def prune_block(index, linears, stats):
        nonlocal saliency_bytes
        if not stats:
            return
        for name, module in linears.items():
            weight = weight_matrix(module)
            sink = torch.zeros_like(weight, dtype=torch.float32)
            result = sparsegpt_sweep(weight, stats.pop(name).hessian, spec, saliency=sink)
            weight.data.copy_(result.weight.to(weight.dtype))
            sink = sink.cpu()
            saliency_bytes += sink.numel() * 4
        block_times.append(time.perf_counter() - start - sum(block_times))

    torch.cuda.reset_peak_memory_stats() if args.device.startswith("cuda") else None
    layer_sequential(model, tokens, statistics, prune_block, batch_size=args.batch_size)
    wall = time.perf_counter() - start
    blocks = len(block_times)
    return {
        "step": "1 general importance (SparseGPT sweep recording G)",
        "shape": args.shape,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "blocks_pruned": blocks,
        "blocks_total": model.config.num_hidden_layers,
        "wall_s": round(wall, 1),
        "mean_block_s": round(sum(block_times) / max(blocks, 1), 1),
        "G_on_cpu_gb": round(saliency_bytes / 1e9, 2),
        "peak_gpu_gib": peak_gib(args.device),
    }


def step23(args) -> dict:
    model = random_model(args.shape, args.device)
    vocab = model.config.vocab_size
    g = torch.Generator(device=args.device).manual_seed(0)
    importance = {
        name: (torch.rand(m.weight.shape, generator=g, device=args.device) * 2).to(torch.bfloat16)
        for name, m in prunable_weights(model).items()
    }
    n_instances = args.steps * args.batch_size
    gen = torch.Generator().manual_seed(1)
    texts = [
        " ".join(map(str, torch.randint(3, vocab, (args.max_length - 1,), generator=gen).tolist()))
        for _ in range(n_instances)
    ]
    settings = FineTuneSettings(
        lam=0.1, lr=0.03, epochs=1, batch_size=args.batch_size, max_length=args.max_length,
        clip=args.clip, warmup_fraction=0.1,
    )  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    scores, report = domain_scores(model, TokenStub(), texts, importance, settings)
    train_wall = time.perf_counter() - start
    train_peak = peak_gib(args.device)
    del importance
    mask_start = time.perf_counter()
    zeros = 0
    for name, module in prunable_weights(model).items():
        mask = prune_mask(scores[name], SparsitySpec(0.5))
        zeros += apply_mask(name, module, mask, SparsitySpec(0.5))["pruned"]
    mask_wall = time.perf_counter() - mask_start
    return {
        "step": "2-3 regularised fused SGD + dual importance S, then the mask",
        "shape": args.shape,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "clip": args.clip,
        "updates": report["updates"],
        "train_wall_s": round(train_wall, 1),
        "s_per_update": round(train_wall / report["updates"], 2),
        "peak_gpu_gib_training": train_peak,
        "mask_wall_s": round(mask_wall, 1),
        "pruned_fraction": zeros / sum(s.numel() for s in scores.values()),
        "losses": [round(x, 3) for x in report["losses"]],
    }


def peak_gib(device: str):
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def table(jsonl: str) -> str:
    """Markdown of the measured lines, written to results/tables/memory_7b.md."""
    from pathlib import Path

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    lines = [
        f"Measured by `python benchmarks/memory_7b.py` (lines in `{jsonl}`), randomly initialised "
        "LLaMA-2-7B-shaped model in bf16.",
        "",
        "| step | device | setting | wall time | peak GPU memory (max_memory_allocated) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["step"].startswith("1"):
            setting = f"{r['nsamples']} x {r['seqlen']} tokens, {r['blocks_pruned']} blocks"
            time_text = f"{r['wall_s']} s ({r['mean_block_s']} s/block)"
            peak = r["peak_gpu_gib"]
        else:
            setting = (
                f"{r['updates']} updates, batch {r['batch_size']} x {r['max_length']}, {r['clip']}"
                f"; mask {r['mask_wall_s']} s"
            )
            time_text = f"{r['train_wall_s']} s ({r['s_per_update']} s/update)"
            peak = r["peak_gpu_gib_training"]
        lines.append(f"| {r['step']} | {r['device']} | {setting} | {time_text} | {peak} GiB |")
    out = Path(__file__).resolve().parent.parent / "results" / "tables" / "memory_7b.md"
    write_text(out, "\n".join(lines) + "\n")
    return out.read_text()


def main() -> None:
    import sys

    if sys.argv[1:2] == ["table"]:
        print(table(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["step1", "step23"])
    parser.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=0, help="prune only the first K blocks")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--clip", default="two_pass")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.step == "step1":
        args.batch_size = min(args.batch_size, 8)
    result = step1(args) if args.step == "step1" else step23(args)
    result.update(device=device_name(args.device), torch=torch.__version__)
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
