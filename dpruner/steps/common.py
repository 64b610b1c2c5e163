"""What several steps share: the config a step reads and the local files it names, text and
calibration sources, the model (whole or streamed) and the scores outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from dpruner.errors import DprunerError
from dpruner.io import check_output_file


def read_config(args) -> dict:
    """The config of a step: a whole config file (--config, schema-checked) or the slice of the
    workflow's validated config that the step reads (--config-json, passed by the rules)."""
    from dpruner.config import load_config, parse_config_json

    if args.config_json:
        return parse_config_json(args.config_json)
    if args.config:
        return load_config(args.config)
    raise DprunerError("give the config: --config FILE or --config-json TEXT")


def local_inputs(config: dict) -> list[str]:
    """The local data files every section of a step's config reads."""
    from dpruner.preflight import local_paths

    sections = [config.get("general") or {}, *(config.get("domains") or {}).values()]
    return [path for section in sections for path in local_paths(section)]


def source_spec(text: str) -> dict:
    """`corpus:NAME` names a packaged corpus; anything else is a file path."""
    if text.startswith("corpus:"):
        return {"corpus": text.removeprefix("corpus:")}
    return {"path": text}


def calibration_from_source(
    source: str, tokenizer, nsamples: int, seqlen: int, seed: int, template: str = "{text}"
) -> torch.Tensor:
    """N x L token ids from a `.pt` tensor, a text/json/jsonl file, or `corpus:NAME`.

    A packaged corpus contributes only its calibration part (the held-out part is for evaluation);
    a file the user names is used whole.
    """
    from dpruner.data import calibration_tokens, load_records, render, split_records

    if source.endswith(".pt"):
        path = Path(source)
        if not path.is_file():
            raise DprunerError(f"calibration file not found: {path}")
        tokens = torch.load(path, weights_only=True)
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.numel() == 0:
            raise DprunerError(f"{path}: expected a non-empty N x L tensor of token ids")
        return tokens.long()
    spec = source_spec(source)
    records = load_records(spec)
    if "corpus" in spec:
        records = split_records(records, "calibration", 0.2)
    texts = [render(template, record, f"calibration source {source}") for record in records]
    return calibration_tokens(texts, tokenizer, nsamples, seqlen, seed)


def load_step_model(args):
    """The model in memory, or with --stream-blocks only its skeleton (weights on meta)."""
    from dpruner.models import load_model, load_skeleton

    load = load_skeleton if getattr(args, "stream_blocks", False) else load_model
    return load(args.model, args.dtype, args.device)


def check_scores_outputs(args, inputs: tuple) -> None:
    """A scores file and its summary JSON next to it. The summary describes the scores file, so
    an earlier dpruner summary is replaced with it even when the scores file itself is new (the
    workflow deletes only the scores file before it reruns the step)."""
    out = check_output_file(args.out, args.overwrite, inputs)
    if out.suffix == ".json":
        raise DprunerError(f"--out {out}: its summary goes to {out.stem}.json; name a .safetensors")
    check_output_file(out.with_suffix(".json"), True, inputs)
