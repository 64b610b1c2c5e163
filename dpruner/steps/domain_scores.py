"""`domain-scores`: D-Pruner's steps 2-3, the regularised fine-tuning on domain instances and the
dual importance S it accumulates, as a scores file with a summary JSON beside it. Under torchrun
each process runs its shard and rank 0 writes what one process would."""

from __future__ import annotations

from pathlib import Path

from dpruner.errors import DprunerError
from dpruner.io import write_json
from dpruner.steps.common import check_scores_outputs, load_step_model
from dpruner.steps.flags import add_model_args, add_overwrite_arg


def register(subparsers) -> None:
    from dpruner.finetune import CLIP_MODES, ROUNDING_MODES, FineTuneSettings

    # The fine-tuning defaults are FineTuneSettings' own.
    default = FineTuneSettings()
    p = subparsers.add_parser(
        "domain-scores", help="D-Pruner steps 2-3: regularised fine-tuning and S"
    )
    add_model_args(p)
    p.add_argument("--instances", required=True, help="jsonl of {'text': ...} domain instances")
    p.add_argument("--general-importance", help="safetensors file from general-importance")
    p.add_argument("--lambda", dest="lam", type=float, default=default.lam)
    p.add_argument("--lr", type=float, default=default.lr)
    p.add_argument("--epochs", type=int, default=default.epochs)
    p.add_argument("--batch-size", dest="train_batch_size", type=int, default=default.batch_size)
    p.add_argument("--max-length", type=int, default=default.max_length)
    p.add_argument("--max-instances", type=int)
    p.add_argument("--clip", default=default.clip, choices=CLIP_MODES)
    p.add_argument("--update-rounding", default=default.update_rounding, choices=ROUNDING_MODES)
    p.add_argument(
        "--gradient-checkpointing",
        default=_on_off(default.gradient_checkpointing),
        choices=["on", "off"],
        help="off trades memory for about a quarter less compute (small models)",
    )
    p.add_argument(
        "--keep-gradients",
        default=_on_off(default.keep_gradients),
        choices=["on", "off"],
        help="two_pass clipping from one backward pass, holding a copy of every gradient "
        "(the same updates at about half the compute; small models)",
    )
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument(
        "--process-group-timeout",
        type=float,
        default=1800,
        help="seconds a rank waits in a collective under torchrun before giving up",
    )
    p.add_argument("--out", required=True, help="safetensors file")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def run(args) -> dict | None:
    from dpruner.distributed import launched
    from dpruner.finetune import FineTuneSettings, domain_scores
    from dpruner.score_files import check_scores, load_scores, scores_provenance

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
    check_scores_outputs(args, (args.model, args.instances, args.general_importance))
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
        return _sharded(args, settings, texts, provenance)
    model, tokenizer = load_step_model(args)
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


def _sharded(args, settings, texts: list[str], provenance: dict) -> dict | None:
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
        summary = _write(args, full, report, provenance) if shard.rank == 0 else None
    return summary


def _instance_texts(path: str, limit: int | None) -> list[str]:
    from dpruner.data import load_records

    records = load_records({"path": path})
    texts = [record["text"] for record in records if record.get("text")]
    if not texts:
        raise DprunerError(f"{path}: no domain instances (records with a non-empty 'text')")
    return texts[:limit] if limit else texts
