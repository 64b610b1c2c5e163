import pytest
import torch
from tiny import random_tokens, tiny_model

from dpruner.calibration import layer_sequential
from dpruner.models import decoder_blocks


@pytest.mark.parametrize("layout", ["llama", "gemma3_text", "qwen2", "opt", "gpt2"])
def test_replaying_unpruned_blocks_reproduces_hidden_states_exactly(layout):
    model = tiny_model(layout)
    tokens = random_tokens(4, 16)
    _, blocks = decoder_blocks(model)
    expected = []
    handle = blocks[-1].register_forward_hook(
        lambda m, i, o: expected.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        for b0 in range(0, 4, 2):
            model(input_ids=tokens[b0 : b0 + 2])
    handle.remove()
    seen = []
    outputs = layer_sequential(
        model,
        tokens,
        make_statistics=lambda name, module: None,
        prune_block=lambda index, linears, stats: seen.append(index),
        batch_size=2,
        progress=False,
    )
    assert seen == list(range(len(blocks)))
    for got, want in zip(outputs, expected, strict=True):
        assert torch.equal(got, want)


def test_statistics_see_every_calibration_token():
    model = tiny_model("llama")
    tokens = random_tokens(3, 16)

    class Count:
        def __init__(self):
            self.tokens, self.sequences = 0, 0

        def add_batch(self, inputs, n_sequences):
            self.tokens += inputs.shape[0]
            self.sequences += n_sequences

    counts = {}

    def make(name, module):
        counts[name] = Count()
        return counts[name]

    layer_sequential(model, tokens, make, lambda i, linears, stats: None, batch_size=2)
    assert len(counts) == 21
    assert all(c.tokens == 48 and c.sequences == 3 for c in counts.values())
