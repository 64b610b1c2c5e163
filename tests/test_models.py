import pytest
import torch
from tiny import tiny_model
from torch import nn

from dpruner.models import (
    ModelError,
    decoder_blocks,
    load_model,
    materialise_packaged,
    parameter_counts,
    prunable_weights,
)

EXPECTED_LINEARS = {
    "llama": ("model.layers", 7),
    "mistral": ("model.layers", 7),
    "qwen2": ("model.layers", 7),
    "gemma3_text": ("model.layers", 7),
    "opt": ("model.decoder.layers", 6),
    "gpt_neox": ("gpt_neox.layers", 4),
    "gpt2": ("transformer.h", 4),
}


@pytest.mark.parametrize("layout", sorted(EXPECTED_LINEARS))
def test_prunable_linears_are_found_by_structure(layout):
    model = tiny_model(layout)
    prefix, per_block = EXPECTED_LINEARS[layout]
    name, blocks = decoder_blocks(model)
    assert name == prefix
    weights = prunable_weights(model)
    assert len(weights) == per_block * len(blocks)
    assert all(n.startswith(prefix) for n in weights)
    embedding = model.get_input_embeddings().weight
    assert all(m.weight is not embedding for m in weights.values())


def test_unknown_layout_names_the_top_level_modules():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    with pytest.raises(ModelError, match="encoder, head"):
        decoder_blocks(NoBlocks())


def test_missing_model_directory_names_what_was_looked_for(tmp_path):
    with pytest.raises(ModelError, match=r"looked for .*nowhere/config.json"):
        load_model(tmp_path / "nowhere")


def test_unknown_packaged_model_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="smollm2"):
        materialise_packaged("llama-70b", tmp_path)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    return materialise_packaged("smollm2", tmp_path_factory.mktemp("models") / "smollm2")


def test_real_smollm2_materialises_from_the_package(smollm2_dir):
    model, tokenizer = load_model(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(prunable_weights(model)) == 210
    assert parameter_counts(model) == (106_168_320, 134_515_008)
    text = "The mitochondrion is the powerhouse of the cell."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss.exp()) < 200, "real weights predict English far better than chance (49k)"


def drop_tensor(tensors):
    del tensors["model.layers.1.mlp.down_proj.weight"]
    return "no tensor for model.layers.1.mlp.down_proj.weight"


def add_tensor(tensors):
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    return "the model does not have: model.layers.1.mlp.extra.weight"


def reshape_tensor(tensors):
    tensors["model.layers.2.self_attn.q_proj.weight"] = torch.zeros(32, 31)
    return "model.layers.2.self_attn.q_proj.weight has shape (32, 31), the model expects (32, 32)"


# A changed model.safetensors and what the error must say.
CORRUPTIONS = [drop_tensor, add_tensor, reshape_tensor]


def save_tiny(path, tie=True):
    """A tiny llama directory (tied embeddings by default, as SmolLM2's) with a tokenizer."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tiny_model("llama", tie_word_embeddings=tie).save_pretrained(path)
    vocab = {f"t{i}": i for i in range(96)}
    words = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(path)
    return path


def corrupt(path, change) -> str:
    """Apply `change` to the tensors of `path`/model.safetensors; the message it expects."""
    from safetensors.torch import load_file, save_file

    weights = path / "model.safetensors"
    tensors = load_file(weights)
    expected = change(tensors)
    save_file(tensors, weights, metadata={"format": "pt"})
    return expected


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_complete_checkpoint_loads_its_own_weights(tmp_path, tie):
    # A tied lm_head is absent from the file and rotary inv_freq is built: neither is missing.
    saved = tiny_model("llama", tie_word_embeddings=tie)
    model, _ = load_model(save_tiny(tmp_path, tie))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize("change", CORRUPTIONS, ids=[c.__name__ for c in CORRUPTIONS])
def test_a_checkpoint_that_does_not_fit_is_an_error_naming_tensor_and_file(tmp_path, change):
    # transformers would initialise the missing weight at random with a warning only.
    expected = corrupt(save_tiny(tmp_path), change)
    with pytest.raises(ModelError) as error:
        load_model(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'model.safetensors'}: the checkpoint does")
    assert expected in str(error.value)
