"""The tables `make gpu-check` writes under results/gpu/: a CSV and a Markdown page whose header
names the GPU, the torch version and the command. Written without pandas, which the GPU machine
need not have (only torch, transformers, safetensors and pytest)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

from dpruner.io import atomic_output


def provenance(command: str | None = None) -> list[str]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    command = command or " ".join(["python", *sys.argv])
    return [f"GPU: {gpu}; torch {torch.__version__}", f"command: `{command}`"]


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_gpu_table(out: Path, title: str, header: list[str], rows: list[dict]) -> str:
    """`out`.csv (header as `#` lines, then the rows) and `out`.md; returns the Markdown."""
    out = Path(out)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_output(out.with_suffix(".csv")) as tmp, tmp.open("w", newline="") as f:
        f.writelines(f"# {line}\n" for line in header)
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    markdown = "\n".join([f"# {title}", "", *(f"- {line}" for line in header), ""])
    markdown += "\n" + markdown_table(rows)
    with atomic_output(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown)
    return markdown
