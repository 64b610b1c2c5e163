"""What several steps share: the config a step reads, text and calibration sources, the model
(whole or streamed) and the scores outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from dpruner.errors import DprunerError
from dpruner.io import check_output_file


def read_spec(args, cls, **values):
    """The job's spec (dpruner.specs): `--spec JSON` from the workflow, or the flags a person
    types (dpruner.steps.flags.spec_from_args); its device checked before any work."""
    from dpruner.preflight import check_device
    from dpruner.steps.flags import spec_from_args

    spec = spec_from_args(args, cls, **values)
    loading = getattr(spec, "loading", None)
    if loading is not None:
        check_device(loading.device, "--device")
    return spec


def config_spec(args, cls, build, *names):
    """A spec from `--spec JSON`, or built from `--config FILE` by the builder the workflow's
    rule calls, `build(config, *names)`."""
    from dpruner.config import load_config

    if args.spec and args.config:
        raise DprunerError("give --spec JSON or --config FILE, not both")
    if args.spec:
        return cls.from_json(args.spec)
    if args.config:
        return build(load_config(args.config), *names)
    raise DprunerError("give the job: --config FILE or --spec JSON")


def source_spec(text: str) -> dict:
    """`corpus:NAME` names a packaged corpus; anything else is a file path."""
    if text.startswith("corpus:"):
        return {"corpus": text.removeprefix("corpus:")}
    return {"path": text}


def calibration_from_source(source: str, tokenizer, rows) -> torch.Tensor:
    """N x L token ids from a `.pt` tensor, a text/json/jsonl file, or `corpus:NAME`.

    A packaged corpus contributes only its calibration part (the held-out part is for evaluation);
    a file the user names is used whole. `rows`: dpruner.specs.Rows.
    """
    from dpruner.config import schema_default
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
        records = split_records(records, "calibration", schema_default("eval_fraction"))
    where = f"calibration source {source}"
    texts = [render(rows.template, record, where) for record in records]
    return calibration_tokens(texts, tokenizer, rows.nsamples, rows.seqlen, rows.seed)


def load_step_model(model_dir: str, loading, stream_blocks: bool = False):
    """The model in memory, or with --stream-blocks only its skeleton (weights on meta).
    `loading`: dpruner.specs.Loading."""
    from dpruner.models import load_model, load_skeleton

    load = load_skeleton if stream_blocks else load_model
    return load(model_dir, loading.dtype, loading.device)


def check_scores_outputs(args, inputs: tuple) -> None:
    """A scores file and its summary JSON next to it. The summary describes the scores file, so
    an earlier dpruner summary is replaced with it even when the scores file itself is new (the
    workflow deletes only the scores file before it reruns the step)."""
    out = check_output_file(args.out, args.overwrite, inputs)
    if out.suffix == ".json":
        raise DprunerError(f"--out {out}: its summary goes to {out.stem}.json; name a .safetensors")
    check_output_file(out.with_suffix(".json"), True, inputs)
