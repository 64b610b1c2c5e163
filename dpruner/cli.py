"""Command line: one subcommand per workflow step; each reads and writes files only."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
from pathlib import Path

import torch

from dpruner.errors import DprunerError
from dpruner.io import check_output_file, write_json
from dpruner.lifecycle import start_step

log = logging.getLogger("dpruner")


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


def _add_stream_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream-blocks",
        action="store_true",
        help="never load the whole model: bring one decoder block at a time from the safetensors"
        " files and free it (a pruned block is written) when the walk is done with it"
        " (docs/streaming.md)",
    )


def _add_calibration_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calibration", help="token tensor (.pt), text/json/jsonl file or corpus:NAME"
    )
    parser.add_argument("--template", default="{text}", help="record template for text sources")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size", type=int, default=8, help="calibration sequences per forward"
    )
    from dpruner.config import schema_default
    from dpruner.hessian import HESSIAN_DTYPES

    parser.add_argument(
        "--hessian-dtype",
        choices=HESSIAN_DTYPES,
        default=schema_default("hessian_dtype"),
        help="auto: on CUDA, X^T X in the bf16/fp16 activations' dtype with fp32 output; "
        "float32: in fp32 everywhere (SparseGPT, general importance, --reconstruct)",
    )


def cmd_prepare_model(args) -> dict:
    from dpruner.io import check_output_folder
    from dpruner.models import load_model, materialise_gguf, materialise_packaged, save_model

    check_output_folder(args.out, args.overwrite)
    if args.packaged:
        materialise_packaged(args.packaged, args.out, args.dtype, args.overwrite)
    elif args.gguf:
        materialise_gguf(args.gguf, args.out, args.dtype, args.overwrite)
    else:
        entry = read_config(args)["models"].get(args.model)
        if entry is None:
            raise DprunerError(f"the config has no model '{args.model}' under models")
        dtype = entry.get("dtype", "float32")
        if "packaged" in entry:
            materialise_packaged(entry["packaged"], args.out, dtype, args.overwrite)
        elif "path" in entry:
            model, tokenizer = load_model(entry["path"], dtype)
            save_model(model, tokenizer, args.out, args.overwrite, inputs=(entry["path"],))
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from dpruner.models import torch_dtype

            model = AutoModelForCausalLM.from_pretrained(
                entry["hub"], dtype=torch_dtype(entry.get("dtype", "bfloat16"))
            )
            tokenizer = AutoTokenizer.from_pretrained(entry["hub"])
            save_model(model, tokenizer, args.out, args.overwrite)
    return {"out": args.out}


def read_config(args) -> dict:
    """The config of a step: a whole config file (--config, schema-checked) or the slice of the
    workflow's validated config that the step reads (--config-json, passed by the rules)."""
    from dpruner.config import load_config, parse_config_json

    if args.config_json:
        return parse_config_json(args.config_json)
    if args.config:
        return load_config(args.config)
    raise DprunerError("give the config: --config FILE or --config-json TEXT")


def cmd_prepare_data(args) -> dict:
    from dpruner.data import write_calibration
    from dpruner.models import load_tokenizer
    from dpruner.preflight import check_section

    config = read_config(args)
    # The data is checked before the tokenizer (and any model file) is read.
    check_section(config, args.domain, parts=("calibration",))
    inputs = (args.model, args.config, *_local_inputs(config))
    for name in ("calibration.pt", "instances.jsonl", "calibration.json"):
        check_output_file(Path(args.out) / name, args.overwrite, inputs)
    return write_calibration(config, args.domain, load_tokenizer(args.model), args.out)


def cmd_evaluate(args) -> dict:
    from dpruner.evaluation.runner import evaluate_domains

    config = read_config(args)
    inputs = (args.model, args.config, *_local_inputs(config))
    for out in args.out:
        check_output_file(out, args.overwrite, inputs)
    results = evaluate_domains(args.model, args.domain, config, args.out, args.device)
    return {
        domain: {"out": out, "perplexity": result["perplexity"], "wall_s": result["wall_s"]}
        for (domain, result), out in zip(results.items(), args.out, strict=True)
    }


def _local_inputs(config: dict) -> list[str]:
    """The local data files every section of a step's config reads."""
    from dpruner.preflight import local_paths

    sections = [config.get("general") or {}, *(config.get("domains") or {}).values()]
    return [path for section in sections for path in local_paths(section)]


def _check_scores_outputs(args, inputs: tuple) -> None:
    """A scores file and its summary JSON next to it. The summary describes the scores file, so
    an earlier dpruner summary is replaced with it even when the scores file itself is new (the
    workflow deletes only the scores file before it reruns the step)."""
    out = check_output_file(args.out, args.overwrite, inputs)
    if out.suffix == ".json":
        raise DprunerError(f"--out {out}: its summary goes to {out.stem}.json; name a .safetensors")
    check_output_file(out.with_suffix(".json"), True, inputs)


def _load_model(args):
    """The model in memory, or with --stream-blocks only its skeleton (weights on meta)."""
    from dpruner.models import load_model, load_skeleton

    load = load_skeleton if getattr(args, "stream_blocks", False) else load_model
    return load(args.model, args.dtype, args.device)


def cmd_prune(args) -> dict:
    from dpruner.fingerprint import model_fingerprint
    from dpruner.io import check_output_folder
    from dpruner.masks import SparsitySpec
    from dpruner.methods import PRUNERS, get_pruner
    from dpruner.models import measured_sparsity, save_model

    method_class = PRUNERS.get(args.method)
    if method_class is None:
        raise DprunerError(f"unknown method '{args.method}'; choose one of {', '.join(PRUNERS)}")
    # Checked before the model loads; save_model checks again before it replaces anything.
    check_output_folder(args.out, args.overwrite, (args.model,))
    spec = SparsitySpec.parse(args.sparsity, args.pattern, args.group or method_class.default_group)
    options = {}
    if args.quantize_bits is not None:
        from dpruner.quantize import QuantSpec

        # Round-to-nearest after the mask; SparseGPT quantizes inside its sweep instead.
        options["quantize"] = QuantSpec(args.quantize_bits, args.group_size, args.symmetric)
    elif args.group_size is not None or args.symmetric:
        raise DprunerError("--group-size and --symmetric need --quantize-bits")
    if args.quantize_bits is not None and args.stream_blocks:
        raise DprunerError("--quantize-bits does not work with --stream-blocks yet")
    if args.method in ("wanda", "sparsegpt", "dpruner"):
        options["batch_size"] = args.batch_size
    if args.method == "dpruner":
        from dpruner.methods.dpruner import SCORE_KINDS, check_scores

        if not args.scores:
            raise DprunerError("--method dpruner needs --scores FILE (from `domain-scores`)")
        check_scores(args.scores, "--scores", args.model, SCORE_KINDS, args.sparsity)
        options["scores_path"] = args.scores
        options["reconstruct"] = args.reconstruct
    if args.method in ("sparsegpt", "dpruner"):
        options["hessian_dtype"] = args.hessian_dtype
    elif args.reconstruct:
        raise DprunerError("--reconstruct repairs a D-Pruner mask: it needs --method dpruner")
    pruner = get_pruner(args.method, **options)
    if pruner.needs_calibration and not args.calibration:
        raise DprunerError(f"--method {args.method} needs --calibration SOURCE")
    _check_mix_args(args, pruner.needs_calibration)
    start = time.perf_counter()
    model, tokenizer = _load_model(args)
    calibration, mix = None, None
    if pruner.needs_calibration:
        calibration, mix = _prune_calibration(args, tokenizer)
    sources = (args.model, args.scores, args.calibration, args.general_calibration)
    inputs = tuple(p for p in sources if p and Path(p).exists())
    if args.stream_blocks:
        from dpruner.io import output_folder
        from dpruner.streaming import CheckpointBlocks

        with output_folder(args.out, args.overwrite, inputs) as tmp:
            blocks = CheckpointBlocks(model, args.model, args.device, out_dir=tmp)
            result = pruner.prune(model, calibration, spec, blocks=blocks)
            blocks.finish(tokenizer)
        measured = blocks.measured_sparsity()
    else:
        result = pruner.prune(model, calibration, spec)
        save_model(model, tokenizer, args.out, args.overwrite, inputs)
        measured = measured_sparsity(model)
    report = {
        **result.to_dict(),
        "model": args.model,
        # The dense model it was pruned from (dpruner.fingerprint), as scores files record it.
        "model_fingerprint": model_fingerprint(args.model),
        "calibration": args.calibration,
        "calibration_shape": list(calibration.shape) if calibration is not None else None,
        "calibration_mix": mix,
        "measured": measured,
        "stream_blocks": args.stream_blocks,
        "total_wall_s": time.perf_counter() - start,
    }
    write_json(report, Path(args.out) / "prune.json")
    return {
        k: report[k]
        for k in ("method", "sparsity_linear", "sparsity_total", "wall_s", "peak_rss_mb")
    }


def _check_mix_args(args, calibrated: bool) -> None:
    """Mixing flags that go together, before the model loads."""
    if (args.general_calibration is None) != (args.domain_share is None):
        raise DprunerError("--general-calibration and --domain-share go together")
    if args.general_calibration and not calibrated:
        method = f"{args.method} without --reconstruct" if args.method == "dpruner" else args.method
        raise DprunerError(
            f"--general-calibration mixes into the calibration rows, but --method {method} "
            "calibrates on none"
        )


def _prune_calibration(args, tokenizer) -> tuple[torch.Tensor, dict | None]:
    """The calibration rows of `prune`, and what the mix holds when general rows are mixed in."""
    from dpruner.data.mixing import mix_calibration

    def rows(source: str) -> torch.Tensor:
        return calibration_from_source(
            source, tokenizer, args.nsamples, args.seqlen, args.seed, args.template
        )

    calibration = rows(args.calibration)
    if not args.general_calibration:
        return calibration, None
    mix = mix_calibration(rows(args.general_calibration), calibration, args.domain_share, args.seed)
    summary = {
        "general_calibration": args.general_calibration,
        "domain_share": args.domain_share,
        "seed": args.seed,
        **mix.summary(),
    }
    return mix.tokens, summary


def cmd_perplexity(args) -> dict:
    from dpruner.data import evaluation_text, load_records, text_tokens
    from dpruner.evaluation.perplexity import sliding_window_perplexity
    from dpruner.evaluation.sizing import evaluation_batch_size

    if args.out:
        check_output_file(args.out, args.overwrite, (args.model, args.data))
    if args.semi_structured:
        from dpruner.semi_structured import check_target

        check_target(args.device, args.dtype, args.semi_structured)
        if args.stream_blocks:
            raise DprunerError("--semi-structured runs a whole model: not with --stream-blocks")
    model, tokenizer = _load_model(args)
    if args.semi_structured:
        from dpruner.semi_structured import to_semi_structured

        to_semi_structured(model, args.semi_structured)
    if args.data.endswith(".pt"):
        ids = torch.load(args.data, weights_only=True).reshape(-1)
    else:
        records = load_records(source_spec(args.data))
        text = evaluation_text(records, args.template, f"perplexity data {args.data}")
        ids = text_tokens(text, tokenizer)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    blocks = None
    if args.stream_blocks:
        from dpruner.streaming import CheckpointBlocks

        blocks = CheckpointBlocks(model, args.model, args.device)
    result = sliding_window_perplexity(
        model,
        ids,
        args.window,
        args.stride,
        tokenizer.bos_token_id,
        args.bos,
        evaluation_batch_size(args.batch_size, torch.device(args.device).type),
        blocks=blocks,
    )
    result.update(
        model=args.model,
        data=args.data,
        stream_blocks=args.stream_blocks,
        semi_structured=args.semi_structured,
    )
    if args.out:
        write_json(result, args.out)
    return result


def cmd_general_importance(args) -> dict:
    from dpruner.methods.dpruner import general_importance, save_scores, scores_provenance

    _check_scores_outputs(args, (args.model, args.calibration))
    model, tokenizer = _load_model(args)
    calibration = calibration_from_source(
        args.calibration, tokenizer, args.nsamples, args.seqlen, args.seed, args.template
    )
    metadata = {
        **scores_provenance("general_importance", args.model, args.sparsity),
        "calibration": args.calibration,
        "nsamples": calibration.shape[0],
        "seqlen": calibration.shape[1],
        "percdamp": 0.01,
        "normalize": args.normalize,
    }
    options = dict(
        normalize=args.normalize, batch_size=args.batch_size, hessian_dtype=args.hessian_dtype
    )
    start = time.perf_counter()
    if args.stream_blocks:
        from dpruner.models import prunable_weights, weight_matrix
        from dpruner.streaming import CheckpointBlocks, streamed_safetensors

        shapes = {n: tuple(weight_matrix(m).shape) for n, m in prunable_weights(model).items()}
        with streamed_safetensors(args.out, shapes, metadata) as sink:
            blocks = CheckpointBlocks(model, args.model, args.device)
            general_importance(
                model, calibration, args.sparsity, **options, blocks=blocks, sink=sink
            )
        matrices = len(shapes)
    else:
        importance = general_importance(model, calibration, args.sparsity, **options)
        save_scores(importance, args.out, metadata)
        matrices = len(importance)
    wall = time.perf_counter() - start
    summary = {"out": args.out, "matrices": matrices, "wall_s": wall}
    summary.update(peak_memory())
    write_json(summary, Path(args.out).with_suffix(".json"))
    return summary


def peak_memory() -> dict:
    from dpruner.methods.base import peak_rss_mb

    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": cuda}


def cmd_domain_scores(args) -> dict | None:
    from dpruner.distributed import launched
    from dpruner.methods.dpruner import (
        FineTuneSettings,
        check_scores,
        domain_scores,
        load_scores,
        scores_provenance,
    )

    settings = FineTuneSettings(
        lam=args.lam,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        max_length=args.max_length,
        clip=args.clip,
        update_rounding=args.update_rounding,
        gradient_checkpointing=args.gradient_checkpointing == "on",
        keep_gradients=args.keep_gradients == "on",
        seed=args.seed,
    )
    if settings.lam > 0 and not args.general_importance:
        raise DprunerError("--lambda > 0 needs --general-importance FILE (or pass --lambda 0)")
    _check_scores_outputs(args, (args.model, args.instances, args.general_importance))
    # The scores depend on G's sparsity only when G regularises the fine-tuning.
    sparsity = None
    if args.general_importance:
        general = check_scores(
            args.general_importance, "--general-importance", args.model, ("general_importance",)
        )
        sparsity = general["sparsity"] if settings.lam > 0 else None
    provenance = scores_provenance("domain_scores", args.model, sparsity)
    texts = _instance_texts(args.instances, args.max_instances)
    if launched():
        return _domain_scores_sharded(args, settings, texts, provenance)
    model, tokenizer = _load_model(args)
    importance = load_scores(args.general_importance, model) if settings.lam > 0 else None
    scores, report = domain_scores(model, tokenizer, texts, importance, settings)
    return _write_domain_scores(args, scores, report, provenance)


def _write_domain_scores(args, scores: dict, report: dict, provenance: dict) -> dict:
    from dpruner.methods.dpruner import save_scores

    save_scores(
        scores,
        args.out,
        {
            **provenance,
            "instances": args.instances,
            "general_importance": args.general_importance,
            **{k: v for k, v in report["settings"].items()},
        },
    )
    write_json(report, Path(args.out).with_suffix(".json"))
    keys = ("processes", "instances", "updates", "wall_s", "peak_rss_mb", "peak_cuda_mb")
    return {k: report[k] for k in keys}


def _domain_scores_sharded(args, settings, texts: list[str], provenance: dict) -> dict | None:
    """One rank of `torchrun -m dpruner domain-scores`; rank 0 writes what one process would."""
    from dpruner.distributed import (
        load_one_rank_at_a_time,
        load_score_rows,
        process_group,
        shard_model,
    )
    from dpruner.methods.dpruner import domain_scores, gather_scores, prepare_for_training
    from dpruner.models import load_model, prunable_weights

    with process_group(args.device, args.process_group_timeout) as shard:

        def load():
            model, tokenizer = load_model(args.model, args.dtype, "cpu")
            prepare_for_training(model, settings)
            shard_model(model, shard)  # keeps this rank's rows, on its device
            return model, tokenizer

        model, tokenizer = load_one_rank_at_a_time(shard, load)
        importance = None
        if settings.lam > 0:
            shapes = {name: m.weight.shape for name, m in prunable_weights(model).items()}
            importance = load_score_rows(args.general_importance, shapes, shard)
        scores, report = domain_scores(
            model, tokenizer, texts, importance, settings, progress=shard.rank == 0, shard=shard
        )
        full = gather_scores(scores, model, shard)
        summary = _write_domain_scores(args, full, report, provenance) if shard.rank == 0 else None
    return summary


def _instance_texts(path: str, limit: int | None) -> list[str]:
    from dpruner.data import load_records

    records = load_records({"path": path})
    texts = [record["text"] for record in records if record.get("text")]
    if not texts:
        raise DprunerError(f"{path}: no domain instances (records with a non-empty 'text')")
    return texts[:limit] if limit else texts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dpruner", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", required=True, help="Hugging Face model directory")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--device", default="cpu")

    def config_args(p):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--config", help="a config file (checked against the schema)")
        group.add_argument(
            "--config-json", help="the config slice the step reads, as JSON (from the workflow)"
        )

    def overwrite_arg(p):
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace --out if an earlier dpruner step wrote it (never a file or folder of "
            "yours, never an input)",
        )

    p = sub.add_parser("prepare-model", help="materialise a model as a plain HF directory")
    config_args(p)
    p.add_argument("--model", help="a name under `models:` in the config")
    p.add_argument("--packaged", help="a packaged model: smollm2 or gemma3-270m")
    p.add_argument("--gguf", help="a local GGUF file")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", required=True)
    overwrite_arg(p)
    p.set_defaults(func=cmd_prepare_model)

    p = sub.add_parser("prepare-data", help="calibration tokens and domain instances of a domain")
    config_args(p)
    p.add_argument("--domain", required=True, help="`general` or a name under `domains:`")
    p.add_argument("--model", required=True, help="model directory (for its tokenizer)")
    p.add_argument("--out", required=True, help="folder for calibration.pt and instances.jsonl")
    overwrite_arg(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("evaluate", help="every metric of one model on its domains")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--domain", required=True, action="append", help="`general` or a domain; repeatable"
    )
    config_args(p)
    p.add_argument(
        "--out", required=True, action="append", help="metrics JSON file, one per --domain"
    )
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N")
    overwrite_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("prune", help="prune a model and save it with prune.json")
    model_args(p)
    p.add_argument("--method", required=True)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    p.add_argument("--group", choices=["matrix", "row", "block"], help="default: the method's")
    p.add_argument("--scores", help="D-Pruner importance scores (safetensors)")
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="dpruner: keep the mask from --scores and repair the kept weights with SparseGPT's "
        "OBS sweep on --calibration",
    )
    p.add_argument(
        "--general-calibration",
        help="general calibration rows mixed into --calibration's domain rows (same forms)",
    )
    p.add_argument(
        "--domain-share",
        type=float,
        help="with --general-calibration: the share of domain rows in the mixed set",
    )
    p.add_argument(
        "--quantize-bits",
        type=int,
        help="also quantize the kept weights to this many bits: round-to-nearest for magnitude, "
        "wanda and dpruner, SparseGPT's joint sparse + GPTQ sweep for sparsegpt",
    )
    p.add_argument(
        "--group-size", type=int, help="input columns per quantization grid (default: one per row)"
    )
    p.add_argument("--symmetric", action="store_true", help="symmetric grids (default: asymmetric)")
    _add_calibration_args(p)
    _add_stream_arg(p)
    p.add_argument("--out", required=True)
    overwrite_arg(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("general-importance", help="D-Pruner step 1: OBS saliency G per weight")
    model_args(p)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--normalize", default="mean", choices=["mean", "none"])
    _add_calibration_args(p)
    _add_stream_arg(p)
    p.add_argument("--out", required=True, help="safetensors file")
    overwrite_arg(p)
    p.set_defaults(func=cmd_general_importance)

    p = sub.add_parser("domain-scores", help="D-Pruner steps 2-3: regularised fine-tuning and S")
    model_args(p)
    p.add_argument("--instances", required=True, help="jsonl of {'text': ...} domain instances")
    p.add_argument("--general-importance", help="safetensors file from general-importance")
    p.add_argument("--lambda", dest="lam", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", dest="train_batch_size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-instances", type=int)
    p.add_argument("--clip", default="two_pass", choices=["two_pass", "one_pass"])
    p.add_argument("--update-rounding", default="stochastic", choices=["stochastic", "nearest"])
    p.add_argument(
        "--gradient-checkpointing",
        default="on",
        choices=["on", "off"],
        help="off trades memory for about a quarter less compute (small models)",
    )
    p.add_argument(
        "--keep-gradients",
        default="off",
        choices=["on", "off"],
        help="two_pass clipping from one backward pass, holding a copy of every gradient "
        "(the same updates at about half the compute; small models)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--process-group-timeout",
        type=float,
        default=1800,
        help="seconds a rank waits in a collective under torchrun before giving up",
    )
    p.add_argument("--out", required=True, help="safetensors file")
    overwrite_arg(p)
    p.set_defaults(func=cmd_domain_scores)

    p = sub.add_parser("perplexity", help="sliding-window perplexity of a model on a text source")
    model_args(p)
    p.add_argument(
        "--data", required=True, help="token tensor (.pt), text/json/jsonl or corpus:NAME"
    )
    p.add_argument("--template", default="{text}")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--bos", default="none", choices=["none", "once", "window"])
    p.add_argument(
        "--batch-size", type=int, help="windows per pass (default: 4 on a CPU, 32 on a GPU)"
    )
    p.add_argument(
        "--semi-structured",
        metavar="KERNEL",
        help="run a 2:4-pruned model's linears as semi-structured sparse weights with this "
        "kernel (cuSPARSELt or CUTLASS; CUDA, float16 or bfloat16 only)",
    )
    _add_stream_arg(p)
    p.add_argument("--out")
    overwrite_arg(p)
    p.set_defaults(func=cmd_perplexity)

    from dpruner import published, stored_size
    from dpruner.report import commands as report_commands

    report_commands.register(sub)
    published.register(sub)
    stored_size.register(sub)
    p = sub.add_parser("check-config", help="schema and preflight of a config file, no model work")
    p.add_argument("config", help="a config file")
    p.add_argument("--hub", action="store_true", help="also load hub sources (downloads data)")
    p.set_defaults(func=cmd_check_config)
    return parser


def cmd_check_config(args) -> dict:
    from dpruner.config import load_config
    from dpruner.preflight import check_config

    config = load_config(args.config)
    check_config(config, source=args.config, check_hub=args.hub)
    return {"config": args.config, "preflight": "passed"}


def _run(args):
    """The step; a full disk outside dpruner's own writers (which name their output) is one line
    naming the file where the OSError does."""
    try:
        return args.func(args)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = f"{error.filename}: " if error.filename else ""
        raise DprunerError(f"{where}no space left on device") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_step(args.command)
    # De-quantised checkpoints give subnormal activations and Hessian entries; on CPU each one
    # costs a slow microcode path (a SparseGPT run on SmolLM2 took 357 s instead of 66 s).
    torch.set_flush_denormal(True)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from dpruner.distributed import launched, report_failure

    try:
        if getattr(args, "device", None):
            from dpruner.preflight import check_device

            check_device(args.device, "--device")
        summary = _run(args)
    except DprunerError as error:
        if launched():
            report_failure(error)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except BaseException as error:
        # Under torchrun, name the rank: torchrun then stops the other ranks and exits non-zero.
        if launched():
            report_failure(error)
        raise
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def entry(argv: list[str] | None = None) -> int:
    """`python -m dpruner`. Under torchrun an uncaught exception also goes to torchrun's error
    file, so torchrun's summary shows the failing rank's traceback."""
    from dpruner.distributed import launched

    if launched():
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(main)(argv)
    return main(argv)
