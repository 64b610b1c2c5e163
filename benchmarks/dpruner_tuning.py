"""Tune D-Pruner's step-2 settings on held-back calibration text, never on evaluation text.

Each variant runs `domain_scores` from the dense model, masks the original weights with
`DPrunerPruner` and measures perplexity on the domain's *held-back* text: calibration-part
records that `count` left out of the fine-tuning instances (disjoint from every evaluation
document), rendered with the domain's perplexity template, and on general calibration-pool text
(`general_pool_ppl`, see validation_tokens). Pruned models of the last workflow run
can be scored on the same text for reference (`--reference DIR`; the domain-calibrated baselines
drew their 16 x 512 windows from the whole calibration part, so they may have seen some of it).

    .venv/bin/python benchmarks/dpruner_tuning.py run --domain medical \\
        --variant lam=0.1 --variant lam=0.001,clip=one_pass --out results/tuning/medical.jsonl
    .venv/bin/python benchmarks/dpruner_tuning.py table results/tuning/*.jsonl \\
        --out results/tables/dpruner_tuning.md

A variant is comma-separated key=value pairs: FineTuneSettings fields (lam, lr, epochs,
batch_size, max_length, clip, gradient_checkpointing=true|false) plus `instances` (how many of
the drawn instances to use), `importance` (a general-importance file other than
--general-importance), `group` (matrix | block | row, or several joined by '+', scored from one
training) and `scores=general` (the general-only ablation: mask from the importance file).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import pandas as pd
import torch

from dpruner.config import load_config
from dpruner.data import (
    domain_instances,
    entry_texts,
    evaluation_text,
    held_back_texts,
    text_tokens,
)
from dpruner.errors import NonFiniteError
from dpruner.evaluation.perplexity import sliding_window_perplexity
from dpruner.finetune import FineTuneSettings, domain_scores
from dpruner.io import write_text
from dpruner.masks import SparsitySpec
from dpruner.methods.dpruner import DPrunerPruner
from dpruner.models import load_model
from dpruner.plan import GENERAL
from dpruner.score_files import load_scores, save_scores
from dpruner.specs import CalibrationEntry, domain_parts, evaluation

SETTING_FIELDS = {f.name for f in fields(FineTuneSettings)}
EXTRA_KEYS = {"instances", "importance", "group", "scores"}


def parse_variant(text: str) -> dict:
    variant = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        if key not in SETTING_FIELDS and key not in EXTRA_KEYS:
            raise SystemExit(f"variant {text!r}: unknown key {key!r}")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        variant[key] = {"true": True, "false": False}.get(value, value)
    return variant


def config_settings(method: dict) -> dict:
    """The FineTuneSettings keys of a config D-Pruner method (`lambda` is `lam` there)."""
    renamed = {"lam" if key == "lambda" else key: value for key, value in method.items()}
    return {key: value for key, value in renamed.items() if key in SETTING_FIELDS}


def with_count(entries: list[CalibrationEntry], count: int | None) -> list[CalibrationEntry]:
    return [replace(entry, count=count or entry.count) for entry in entries]


def leading_tokens(texts: list[str], tokenizer, max_tokens: int) -> torch.Tensor:
    """The first max_tokens tokens of the joined texts, tokenising only as many as needed."""
    used = 1
    while True:
        records = [{"text": text} for text in texts[:used]]
        ids = text_tokens(evaluation_text(records, "{text}"), tokenizer)
        if len(ids) >= max_tokens or used >= len(texts):
            return ids[:max_tokens]
        used *= 2


def validation_tokens(entries, config: dict, domain: str, tokenizer, max_tokens: int) -> dict:
    """Token streams for tuning: the domain's held-back text and general calibration-pool text.

    The general pool is where the general calibration windows come from (16 x 512 tokens drawn
    at random), so it can overlap them a little; it is read from its last record backwards.
    """
    eval_fraction = config["calibration"]["eval_fraction"]
    template = config["domains"][domain]["perplexity"]["template"]
    held_back = [t for e in entries for t in held_back_texts(e, eval_fraction, template)]
    general_template = config["general"]["perplexity"]["template"]
    pool = [
        text
        for entry in domain_parts(config, GENERAL).calibration
        for text in entry_texts(replace(entry, template=general_template), eval_fraction)
    ]
    return {
        "heldback_ppl": leading_tokens(held_back, tokenizer, max_tokens),
        "general_pool_ppl": leading_tokens(pool[::-1], tokenizer, max_tokens),
    }


def perplexities(model, streams: dict, config: dict, bos_id) -> dict:
    window = evaluation(config).perplexity.window
    return {
        key: sliding_window_perplexity(model, ids, window, window, bos_id, "none", progress=False)[
            "ppl"
        ]
        for key, ids in streams.items()
    }


def run_variant(args, variant: dict, texts: list[str], ids, config) -> list[dict]:
    """One row per comparison group in `group` (several joined by '+' share one training)."""
    settings = FineTuneSettings(
        **{k: v for k, v in variant.items() if k in SETTING_FIELDS},
        **{k: v for k, v in args.defaults.items() if k not in variant},
    )
    model, tokenizer = load_model(args.model, "float32", "cpu")
    importance_path = variant.get("importance", args.general_importance)
    used = texts[: int(variant.get("instances", len(texts)))]
    if variant.get("scores") == "general":
        scores = load_scores(importance_path, model)
        report = {"updates": 0, "losses": [None], "clip_scales": [None], "wall_s": 0.0}
        report["peak_rss_mb"] = None
    else:
        importance = load_scores(importance_path, model) if settings.lam > 0 else None
        scores, report = domain_scores(model, tokenizer, used, importance, settings)
    scales = report["clip_scales"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.safetensors"
        save_scores(scores, path, {"kind": "domain_scores"})
        for group in str(variant.get("group", "matrix")).split("+"):
            model, tokenizer = load_model(args.model, "float32", "cpu")
            DPrunerPruner(str(path)).prune(model, None, SparsitySpec(args.sparsity, group))
            shown = {**variant, "group": group} if "group" in variant else variant
            rows.append(
                {
                    "domain": args.domain,
                    "variant": ",".join(f"{k}={v}" for k, v in shown.items()) or "defaults",
                    **asdict(settings),
                    "importance": importance_path if settings.lam > 0 else None,
                    "group": group,
                    "instances": len(used),
                    "updates": report["updates"],
                    **perplexities(model, ids, config, tokenizer.bos_token_id),
                    "first_loss": report["losses"][0],
                    "last_loss": report["losses"][-1],
                    "median_clip_scale": sorted(scales)[len(scales) // 2]
                    if report["updates"]
                    else None,
                    "scores_wall_s": report["wall_s"],
                    "threads": torch.get_num_threads(),
                    "peak_rss_mb": report["peak_rss_mb"],
                }
            )
    return rows


def run(args) -> None:
    config = load_config(args.config)
    args.defaults = (
        parse_variant(args.defaults_text)
        if args.defaults_text is not None
        else config_settings(config["methods"]["dpruner"])
    )
    _, tokenizer = load_model(args.model, "float32", "cpu")
    entries = with_count(domain_parts(config, args.domain).calibration, args.instance_count)
    ids = validation_tokens(entries, config, args.domain, tokenizer, args.max_tokens)
    texts = domain_instances(entries, config["calibration"]["eval_fraction"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [("dense", args.model)] + [(Path(d).name, d) for d in args.reference]
    for name, folder in rows:
        model, tokenizer = load_model(folder, "float32", "cpu")
        row = {"domain": args.domain, "variant": f"reference:{name}"}
        append(out, {**row, **perplexities(model, ids, config, tokenizer.bos_token_id)})
    for text in args.variant:
        start = time.perf_counter()
        try:
            rows = run_variant(args, parse_variant(text), texts, ids, config)
        except NonFiniteError as error:  # a diverged setting is a result too
            rows = [{"domain": args.domain, "variant": text, "error": str(error)}]
        for row in rows:
            append(out, {**row, "total_wall_s": time.perf_counter() - start})


def append(path: Path, row: dict) -> None:
    print(json.dumps(row))
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def settings_cell(row: pd.Series) -> str | None:
    """A row's fine-tuning settings in one cell; None for reference rows and old records."""
    if pd.isna(row.get("lam")):
        return None
    importance = row.get("importance")
    normalize = "norm-none" if isinstance(importance, str) and "norm-none" in importance else None
    parts = [
        f"lam={row['lam']:g}",
        f"lr={row['lr']:g}",
        f"epochs={int(row['epochs'])}",
        f"batch={int(row['batch_size'])}",
        f"len={int(row['max_length'])}",
        str(row["clip"]),
        normalize or ("norm-mean" if isinstance(importance, str) else "no G"),
    ]
    return " ".join(parts)


def table(args) -> None:
    """One Markdown table of every run file; rows of one file share one held-back text."""
    frames = [pd.read_json(p, lines=True).assign(file=Path(p).name) for p in args.files]
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.drop_duplicates(["file", "variant"], keep="last")
    frame["settings"] = frame.apply(settings_cell, axis=1)
    columns = [
        c
        for c in (
            "file",
            "domain",
            "variant",
            "settings",
            "heldback_ppl",
            "general_pool_ppl",
            "instances",
            "updates",
            "last_loss",
            "median_clip_scale",
            "scores_wall_s",
            "threads",
            "error",
        )
        if c in frame
    ]
    header = (
        f"Generated by `benchmarks/dpruner_tuning.py table {' '.join(args.files)}` on "
        f"{platform.machine()}, torch {torch.__version__}. scores_wall_s is indicative: the runs "
        "shared the CPU with other work at times (threads: the run's torch threads, where "
        "recorded). "
        "settings: what the row's fine-tuning ran with (its variant's keys over the defaults of "
        "its run) and the normalisation of its general importance G; rows without it predate "
        "that record. heldback_ppl: perplexity on the domain's held-back calibration text "
        "(8,192 tokens; one text per file, so compare rows of the same file); "
        "general_pool_ppl: on general calibration-pool text. `reference:` rows are models "
        "pruned by the workflow run that preceded the tuning runs of that file.\n\n"
    )
    shown = frame[columns].astype(object).where(frame[columns].notna(), None)
    markdown = shown.to_markdown(index=False, floatfmt=".4g", missingval="–")
    write_text(args.out, header + markdown + "\n")
    print(Path(args.out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--domain", required=True)
    p.add_argument("--model", default="results/run/models/smollm2-135m/dense")
    p.add_argument(
        "--instance-count",
        type=int,
        help="draw this many instances per calibration entry instead of its `count`; the "
        "held-back text starts after them",
    )
    p.add_argument(
        "--general-importance",
        default="results/run/scores/smollm2-135m/general/general_importance_s0.5_norm-mean.safetensors",
    )
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument(
        "--defaults",
        dest="defaults_text",
        help="settings every variant starts from (FineTuneSettings keys); default: the config's "
        "`methods.dpruner` fine-tuning options",
    )
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--reference", action="append", default=[], help="a pruned model folder")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    t.add_argument("--out", required=True)
    t.set_defaults(handler=table)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
