"""`prepare-model`: a model of the config (packaged, local or hub), a packaged model or a GGUF
file as a plain Hugging Face directory."""

from __future__ import annotations

from dpruner.errors import DprunerError
from dpruner.specs import PrepareModelSpec, prepare_model_spec
from dpruner.steps.flags import add_field_args, add_overwrite_arg, add_spec_arg, from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare-model", help="materialise a model as a plain HF directory")
    add_spec_arg(p)
    p.add_argument("--config", help="a config file (checked against the schema), with --model")
    p.add_argument("--model", help="a name under `models:` in the config")
    add_field_args(p, PrepareModelSpec)
    p.add_argument("--out", required=True)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def job_spec(args) -> PrepareModelSpec:
    """From --spec, from --config and --model, or from the source flags."""
    from dpruner.steps.common import config_spec
    from dpruner.steps.flags import given_flags

    if args.spec or args.config:
        if given := given_flags(args, PrepareModelSpec):
            raise DprunerError(f"--spec and --config name the model: not with {', '.join(given)}")
        if args.config and not args.model:
            raise DprunerError("--config FILE needs --model NAME")
        return config_spec(args, PrepareModelSpec, prepare_model_spec, args.model)
    return from_args(args, PrepareModelSpec)


def run(args) -> dict:
    from dpruner.io import check_output_folder
    from dpruner.models import load_model, materialise_gguf, materialise_packaged, save_model

    spec = job_spec(args)
    check_output_folder(args.out, args.overwrite)
    if spec.packaged:
        materialise_packaged(spec.packaged, args.out, spec.dtype, args.overwrite)
    elif spec.gguf:
        materialise_gguf(spec.gguf, args.out, spec.dtype, args.overwrite)
    elif spec.path:
        model, tokenizer = load_model(spec.path, spec.dtype)
        save_model(model, tokenizer, args.out, args.overwrite, inputs=(spec.path,))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dpruner.models import torch_dtype

        model = AutoModelForCausalLM.from_pretrained(spec.hub, dtype=torch_dtype(spec.dtype))
        tokenizer = AutoTokenizer.from_pretrained(spec.hub)
        save_model(model, tokenizer, args.out, args.overwrite)
    return {"out": args.out}
