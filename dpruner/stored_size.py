"""The stored-size table of a run: one row per pruned model, from the `stored` entry of its
prune.json (`dpruner.quantize.model_storage`), next to its quantization and achieved sparsity.

Two formats, as `stored_bytes` defines them: `dense_codes` stores every weight (pruned ones as
the code or value 0), `bitmap` a 1-bit occupancy bitmap plus the kept weights only; unquantized
weights count at 16 bits, quantized ones as packed b-bit codes with fp16 scales (and zero points)
per group; the other parameters at 16 bits. `ratio_*` divides by the unpruned 16-bit model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dpruner.errors import DprunerError
from dpruner.io import atomic_output, check_output_file

COLUMNS = [
    "model",
    "variant",
    "quantization",
    "sparsity_linear",
    "bytes_dense_codes",
    "bytes_bitmap",
    "dense_16bit_bytes",
    "ratio_dense_codes",
    "ratio_bitmap",
]


def stored_size_row(report_file: str | Path) -> dict:
    """The row of one `models/<model>/pruned/<variant>/prune.json`."""
    path = Path(report_file)
    report = json.loads(path.read_text())
    stored = report.get("stored")
    if not stored:
        raise DprunerError(
            f"{path}: no stored size: pruned with --stream-blocks, or before prune.json recorded "
            "it (prune it again: snakemake --forcerun prune)"
        )
    dense = stored["dense_16bit_bytes"]
    quantization = report.get("quantization")
    return {
        "model": path.parent.parent.parent.name,
        "variant": path.parent.name,
        "quantization": f"{quantization['label']} ({quantization['quantizer']})"
        if quantization
        else "16-bit",
        "sparsity_linear": report["sparsity_linear"],
        "bytes_dense_codes": stored["total_bytes_dense_codes"],
        "bytes_bitmap": stored["total_bytes_bitmap"],
        "dense_16bit_bytes": dense,
        "ratio_dense_codes": stored["total_bytes_dense_codes"] / dense,
        "ratio_bitmap": stored["total_bytes_bitmap"] / dense,
    }


def stored_size_table(report_files: Iterable[str | Path]) -> pd.DataFrame:
    rows = [stored_size_row(path) for path in report_files]
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["model", "variant"], ignore_index=True)


def write_stored_size(report_files: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """`stored_size.csv` and `stored_size.md` in `out_dir`."""
    table = stored_size_table(report_files)
    out_dir = Path(out_dir)
    csv, markdown = out_dir / "stored_size.csv", out_dir / "stored_size.md"
    with atomic_output(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(markdown) as tmp:
        tmp.write_text(
            "Stored size of every pruned model (dpruner/stored_size.py says the accounting).\n\n"
            + table.to_markdown(index=False, floatfmt=".4g", intfmt=",")
            + "\n"
        )
    return [csv, markdown]


def register(subparsers) -> None:
    p = subparsers.add_parser("stored-size", help="stored-size table from prune.json files")
    p.add_argument("--reports", nargs="+", required=True, help="prune.json files")
    p.add_argument("--out", required=True, help="tables folder")
    p.set_defaults(func=_cmd_stored_size)


def _cmd_stored_size(args) -> dict:
    # Not into a pruned model's folder: its reports are this command's inputs.
    models = [Path(report).parent for report in args.reports]
    for name in ("stored_size.csv", "stored_size.md"):
        check_output_file(Path(args.out) / name, True, tuple(models))
    return {"tables": [str(p) for p in write_stored_size(args.reports, args.out)]}
