"""`domain-scores`: D-Pruner's steps 2-3, the regularised fine-tuning on domain instances and the
dual importance S it accumulates, as a scores file with a summary JSON beside it. Under torchrun
each process runs its shard and rank 0 writes what one process would."""

from __future__ import annotations

from pathlib import Path

from dpruner.errors import DprunerError
from dpruner.io import write_json
from dpruner.specs import DomainScoresSpec
from dpruner.steps.common import check_scores_outputs, load_step_model, read_spec
from dpruner.steps.flags import add_model_arg, add_overwrite_arg, add_spec_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "domain-scores", help="D-Pruner steps 2-3: regularised fine-tuning and S"
    )
    add_model_arg(p)
    p.add_argument("--instances", required=True, help="jsonl of {'text': ...} domain instances")
    p.add_argument("--general-importance", help="safetensors file from general-importance")
    add_spec_args(p, DomainScoresSpec)
    p.add_argument("--out", required=True, help="safetensors file")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def job_spec(args) -> DomainScoresSpec:
    return read_spec(args, DomainScoresSpec)


def run(args) -> dict | None:
    from dpruner.distributed import launched
    from dpruner.finetune import domain_scores
    from dpruner.score_files import check_scores, load_scores, scores_provenance

    spec = job_spec(args)
    settings = spec.fine_tuning
    if settings.lam > 0 and not args.general_importance:
        raise DprunerError("--lambda > 0 needs --general-importance FILE (or pass --lambda 0)")
    check_scores_outputs(args, (args.model, args.instances, args.general_importance))
    # The scores depend on G's sparsity only when G regularises the fine-tuning.
    sparsity = None
    if args.general_importance:
        general = check_scores(
            args.general_importance, "--general-importance", args.model, ("general_importance",)
        )
        sparsity = general["sparsity"] if settings.lam > 0 else None
    provenance = scores_provenance("domain_scores", args.model, sparsity)
    texts = _instance_texts(args.instances, spec.max_instances)
    if launched():
        return _sharded(args, spec, texts, provenance)
    model, tokenizer = load_step_model(args.model, spec.loading)
    importance = load_scores(args.general_importance, model) if settings.lam > 0 else None
    scores, report = domain_scores(model, tokenizer, texts, importance, settings)
    return _write(args, scores, report, provenance)


def _write(args, scores: dict, report: dict, provenance: dict) -> dict:
    from dpruner.score_files import save_scores

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


def _sharded(args, spec, texts: list[str], provenance: dict) -> dict | None:
    """One rank of `torchrun -m dpruner domain-scores`; rank 0 writes what one process would."""
    from dpruner.distributed import (
        gather_scores,
        load_one_rank_at_a_time,
        load_score_rows,
        process_group,
        shard_model,
    )
    from dpruner.finetune import domain_scores, prepare_for_training
    from dpruner.models import load_model, prunable_weights

    settings = spec.fine_tuning
    with process_group(spec.loading.device, spec.process_group_timeout) as shard:

        def load():
            model, tokenizer = load_model(args.model, spec.loading.dtype, "cpu")
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
        summary = _write(args, full, report, provenance) if shard.rank == 0 else None
    return summary


def _instance_texts(path: str, limit: int | None) -> list[str]:
    from dpruner.data import load_records

    records = load_records({"path": path})
    texts = [record["text"] for record in records if record.get("text")]
    if not texts:
        raise DprunerError(f"{path}: no domain instances (records with a non-empty 'text')")
    return texts[:limit] if limit else texts
