"""`prepare-model`: a model of the config (packaged, local or hub), a packaged model or a GGUF
file as a plain Hugging Face directory."""

from __future__ import annotations

from dpruner.errors import DprunerError
from dpruner.steps.common import read_config
from dpruner.steps.flags import add_config_args, add_overwrite_arg


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare-model", help="materialise a model as a plain HF directory")
    add_config_args(p)
    p.add_argument("--model", help="a name under `models:` in the config")
    p.add_argument("--packaged", help="a packaged model: smollm2 or gemma3-270m")
    p.add_argument("--gguf", help="a local GGUF file")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", required=True)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> dict:
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
