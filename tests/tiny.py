"""Tiny randomly initialised models of several decoder layouts, built in the tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

LAYOUTS = {
    "llama": dict(model_type="llama", num_key_value_heads=2),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=16),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2),
    "gemma3_text": dict(
        model_type="gemma3_text",
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "opt": dict(model_type="opt", ffn_dim=64, word_embed_proj_dim=32),
    "gpt_neox": dict(model_type="gpt_neox"),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=3, n_head=4, n_positions=64),
}


def tiny_model(
    layout: str = "llama", vocab_size: int = 96, layers: int = 3, seed: int = 0, **overrides
):
    """A random model of `layout`; `overrides` replace config values (token ids, context)."""
    from transformers import AutoConfig

    options = dict(LAYOUTS[layout])
    model_type = options.pop("model_type")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    if model_type == "gpt2":
        common = dict(vocab_size=vocab_size)
    config: PretrainedConfig = AutoConfig.for_model(
        model_type, **{**common, **options, **overrides}
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def random_tokens(n: int, length: int, vocab_size: int = 96, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n, length), generator=generator)


def layer_inputs(model, layer, tokens: torch.Tensor) -> torch.Tensor:
    """The rows a dense forward pass of `tokens` feeds into `layer` (tokens x in_features)."""
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        model(input_ids=tokens)
    handle.remove()
    return captured[0].reshape(-1, layer.in_features)


def random_scores(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniform random score per prunable weight (a D-Pruner score file's content)."""
    from dpruner.models import prunable_weights

    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(module.weight.shape, generator=generator)
        for name, module in prunable_weights(model).items()
    }


def tiny_tokenizer(texts: list[str], vocab_size: int, special_tokens=(), **roles):
    """A byte-level BPE tokenizer trained on `texts`; `roles` name its special tokens
    (eos_token="<eos>", ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=roles.get("unk_token")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **roles)
