"""Write one section's calibration files for `prepare-data` (architecture.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dpruner.data.instances import INSTANCE_SEED, domain_instances, entry_texts
from dpruner.data.tokens import calibration_tokens, instance_rows
from dpruner.io import atomic_output
from dpruner.plan import GENERAL
from dpruner.specs import PrepareDataSpec


def tokens_sha256(tokens: torch.Tensor) -> str:
    """The digest the reference anchor publishes: SHA-256 of the int64 values' raw bytes."""
    return hashlib.sha256(tokens.numpy().tobytes()).hexdigest()


def write_calibration(spec: PrepareDataSpec, tokenizer, out_dir: str | Path) -> dict:
    """Write calibration.pt, instances.jsonl and calibration.json for the spec's domain; return
    the summary.

    calibration.pt holds windows of the entries' texts (without `count`: every calibration-part
    record, in record order, which for `general` reproduces the anchor's sampling); the texts are
    shuffled with the spec's seed, windows drawn with it. instances.jsonl holds the same
    selection shuffled with seed 42 plus the spec's `draw` (the workflow's calibration draw; its
    seed is already the draw's): D-Pruner's fine-tuning instances, a `count` of them drawn with
    that seed. For a domain whose spec carries `instance_length` (data-matched baselines),
    calibration.pt holds instead exactly the tokens D-Pruner fine-tunes on
    (tokens.instance_rows).
    """
    out_dir = Path(out_dir)
    domain = spec.domain
    entries = spec.entries.calibration
    eval_fraction = spec.eval_fraction
    seed = spec.seed
    instance_seed = INSTANCE_SEED + spec.draw

    per_entry = [entry_texts(entry, eval_fraction, instance_seed) for entry in entries]
    instances = domain_instances(entries, eval_fraction, instance_seed)
    # Set by the workflow for a domain when the baselines are data-matched to D-Pruner.
    instance_length = spec.instance_length if domain != GENERAL else None
    if instance_length:
        tokens = instance_rows(instances, tokenizer, instance_length)
    else:
        tokens = calibration_tokens(
            [text for texts in per_entry for text in texts],
            tokenizer,
            nsamples=spec.nsamples,
            seqlen=spec.seqlen,
            seed=seed,
            shuffle_seed=seed,
            bos=spec.bos,
        )
    summary = {
        "domain": domain,
        "sources": [
            {"source": e.source, "template": e.template, "count": e.count} for e in entries
        ],
        "counts": [len(texts) for texts in per_entry],
        "instances": len(instances),
        "eval_fraction": eval_fraction,
        "rows": tokens.shape[0],
        "row_length": tokens.shape[1],
        "tokens": tokens.numel(),
        "matched_to_instances": bool(instance_length),
        "seed": seed,
        "instance_seed": instance_seed,
        "sha256": tokens_sha256(tokens),
    }
    with atomic_output(out_dir / "calibration.pt") as tmp:
        torch.save(tokens, tmp)
    with atomic_output(out_dir / "instances.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for text in instances:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    with atomic_output(out_dir / "calibration.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
