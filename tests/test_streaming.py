"""Block streaming: the walk over a meta skeleton, blocks read from safetensors, equals in memory.

Memory is measured as the bytes of parameters not on the meta device, not as RSS (too noisy).
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_models import CORRUPTIONS, corrupt, save_tiny
from tiny import random_tokens, tiny_model
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from dpruner.cli import main
from dpruner.evaluation.perplexity import sliding_window_perplexity
from dpruner.io import FILES_LEDGER
from dpruner.masks import SparsitySpec
from dpruner.methods import get_pruner
from dpruner.methods.dpruner import general_importance
from dpruner.models import (
    ModelError,
    decoder_blocks,
    load_model,
    load_skeleton,
    prunable_weights,
    weight_matrix,
)
from dpruner.score_files import save_scores
from dpruner.streaming import CheckpointBlocks, materialised_bytes, streamed_safetensors

METHODS = [("magnitude", "matrix"), ("wanda", "row"), ("sparsegpt", "block"), ("dpruner", "matrix")]
VOCAB = 96


def tokenizer():
    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    )


def save_checkpoint(path, layout="llama", sharded=False, layers=4):
    """A tiny model saved by save_pretrained: one file, or shards smaller than one block."""
    model = tiny_model(layout, vocab_size=VOCAB, layers=layers)
    model.save_pretrained(path, **({"max_shard_size": "20KB"} if sharded else {}))
    tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["single", "sharded"])
def checkpoint(request, tmp_path_factory):
    sharded = request.param == "sharded"
    path = save_checkpoint(tmp_path_factory.mktemp(request.param), sharded=sharded)
    assert (path / "model.safetensors.index.json").is_file() == sharded
    return path


class Measured(CheckpointBlocks):
    """Records the bytes of materialised parameters after every load and at every linear's call."""

    def __init__(self, model, *args, **kwargs):
        self.peak = 0
        for module in prunable_weights(model).values():
            module.register_forward_pre_hook(lambda m, a: self.measure())
        super().__init__(model, *args, **kwargs)
        self.measure()

    def measure(self):
        self.peak = max(self.peak, materialised_bytes(self.model))

    def load(self, index, block):
        super().load(index, block)
        self.measure()


def bytes_of(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def block_and_outside_bytes(model) -> tuple[int, int]:
    _, blocks = decoder_blocks(model)
    one_block = max(bytes_of(block.parameters()) for block in blocks)
    return one_block, materialised_bytes(model) - sum(bytes_of(b.parameters()) for b in blocks)


def pruner(method, folder, model):
    """The method; D-Pruner's mask reads random scores for `model`, written into `folder`."""
    if method != "dpruner":
        return get_pruner(method)
    generator = torch.Generator().manual_seed(0)
    scores = {
        name: torch.rand(weight_matrix(m).shape, generator=generator)
        for name, m in prunable_weights(model).items()
    }
    save_scores(scores, folder / "scores.safetensors", {})
    return get_pruner(method, scores_path=str(folder / "scores.safetensors"))


def streamed_prune(path, method, spec, tokens, out, dtype="float32"):
    model, tok = load_skeleton(path, dtype)
    out.mkdir()
    blocks = Measured(model, path, out_dir=out)
    method.prune(model, tokens, spec, blocks=blocks)
    blocks.finish(tok)
    assert all(p.is_meta for _, b in [decoder_blocks(model)] for p in b.parameters())
    return blocks


def assert_same_tensors(got, want):
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for name, tensor in want_state.items():
        assert got_state[name].dtype == tensor.dtype, name
        assert torch.equal(got_state[name], tensor), name


@pytest.mark.parametrize(("method", "group"), METHODS)
def test_streamed_pruning_equals_in_memory_bit_for_bit(tmp_path, checkpoint, method, group):
    tokens, spec = random_tokens(4, 16), SparsitySpec(0.5, group)
    dense, _ = load_model(checkpoint)
    method = pruner(method, tmp_path, dense)
    method.prune(dense, tokens, spec)
    blocks = streamed_prune(checkpoint, method, spec, tokens, tmp_path / "out")
    streamed, _ = load_model(tmp_path / "out")
    assert_same_tensors(streamed, dense)
    assert blocks.measured_sparsity()["zeros"] == sum(
        int((m.weight == 0).sum()) for m in prunable_weights(dense).values()
    )
    # Memory: never more than one block plus the embeddings, final norm and lm_head.
    one_block, outside = block_and_outside_bytes(dense)
    assert one_block <= blocks.peak <= one_block + outside, (blocks.peak, one_block, outside)
    assert blocks.peak < materialised_bytes(dense) / 2


@pytest.mark.parametrize("layout", ["gemma3_text", "opt", "gpt2", "gpt_neox", "qwen2"])
def test_streaming_handles_every_layout(tmp_path, layout):
    """Tied embeddings (gemma, opt, gpt2), Conv1D (gpt2), a renamed checkpoint key (gpt_neox's
    embed_out is lm_head), per-layer-type masks and rotary tables (gemma)."""
    path = save_checkpoint(tmp_path / "dense", layout, sharded=True, layers=3)
    tokens, spec = random_tokens(4, 16), SparsitySpec(0.5, "block")
    dense, _ = load_model(path)
    get_pruner("sparsegpt").prune(dense, tokens, spec)
    streamed_prune(path, get_pruner("sparsegpt"), spec, tokens, tmp_path / "out")
    streamed, _ = load_model(tmp_path / "out")
    assert_same_tensors(streamed, dense)


def test_streamed_bfloat16_equals_in_memory(tmp_path, checkpoint):
    tokens, spec = random_tokens(4, 16), SparsitySpec(0.5, "row")
    dense, _ = load_model(checkpoint, "bfloat16")
    get_pruner("wanda").prune(dense, tokens, spec)
    streamed_prune(checkpoint, get_pruner("wanda"), spec, tokens, tmp_path / "out", "bfloat16")
    streamed, _ = load_model(tmp_path / "out", "bfloat16")
    assert_same_tensors(streamed, dense)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_streamed_general_importance_equals_in_memory(tmp_path, checkpoint):
    tokens = random_tokens(4, 16)
    dense, _ = load_model(checkpoint)
    want = general_importance(dense, tokens, 0.5, batch_size=2)
    model, _ = load_skeleton(checkpoint)
    shapes = {n: tuple(weight_matrix(m).shape) for n, m in prunable_weights(model).items()}
    blocks = Measured(model, checkpoint)
    with streamed_safetensors(tmp_path / "g.safetensors", shapes, {"kind": "test"}) as sink:
        assert general_importance(model, tokens, 0.5, batch_size=2, blocks=blocks, sink=sink) == {}
    got = load_file(tmp_path / "g.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], g) for name, g in want.items())
    one_block, outside = block_and_outside_bytes(dense)
    assert blocks.peak <= one_block + outside


def test_streamed_scores_file_is_written_only_when_complete(tmp_path):
    shapes = {"a": (2, 3), "b": (4,)}
    path = tmp_path / "s.safetensors"
    with pytest.raises(ValueError, match="expected b"), streamed_safetensors(path, shapes, {}) as w:
        w("a", torch.ones(2, 3))
        w("c", torch.ones(4))
    with (
        pytest.raises(ValueError, match="never written"),
        streamed_safetensors(path, shapes, {}) as w,
    ):
        w("a", torch.ones(2, 3))
    assert list(tmp_path.iterdir()) == []


def test_cli_stream_blocks_equals_in_memory(tmp_path, checkpoint):
    torch.save(random_tokens(4, 16), tmp_path / "calibration.pt")
    common = ["--model", str(checkpoint), "--calibration", str(tmp_path / "calibration.pt")]
    prune = ["prune", *common, "--method", "sparsegpt", "--sparsity", "0.5"]
    importance = ["general-importance", *common, "--sparsity", "0.5"]
    for name, extra in [("memory", []), ("streamed", ["--stream-blocks"])]:
        assert main([*prune, *extra, "--out", str(tmp_path / name)]) == 0
        assert main([*importance, *extra, "--out", str(tmp_path / f"{name}.safetensors")]) == 0
    assert_same_tensors(load_model(tmp_path / "streamed")[0], load_model(tmp_path / "memory")[0])
    reports = [
        json.loads((tmp_path / n / "prune.json").read_text()) for n in ["memory", "streamed"]
    ]
    assert reports[0]["measured"] == reports[1]["measured"]
    assert reports[1]["stream_blocks"] and reports[0]["matrices"] == reports[1]["matrices"]
    got, want = (load_file(tmp_path / f"{n}.safetensors") for n in ("streamed", "memory"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [FILES_LEDGER], "temporary left behind"


@pytest.mark.parametrize(
    ("layout", "bos"),
    [("llama", "none"), ("gemma3_text", "window"), ("gpt2", "once"), ("opt", "none")],
)
def test_streamed_perplexity_equals_in_memory(tmp_path, layout, bos, threads):
    """Every window through the walk, then the model's own head: gemma's scaled embeddings and
    per-layer-type masks, gpt2's and opt's own final norms; BOS per window or once."""
    path = save_checkpoint(tmp_path / "dense", layout, sharded=True, layers=3)
    ids, options = random_tokens(1, 70)[0], dict(bos_id=1, bos=bos, batch_size=3, progress=False)
    dense, _ = load_model(path)
    want = sliding_window_perplexity(dense, ids, 16, 8, **options)
    model, _ = load_skeleton(path)
    blocks = Measured(model, path)
    got = sliding_window_perplexity(model, ids, 16, 8, **options, blocks=blocks)
    assert got["windows"] == want["windows"] > 3  # several batches of windows
    assert got["window_tokens"] == want["window_tokens"]
    assert got["window_nll"] == pytest.approx(want["window_nll"], rel=1e-6)
    assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-6)
    one_block, outside = block_and_outside_bytes(dense)
    assert one_block <= blocks.peak <= one_block + outside


def test_cli_perplexity_stream_blocks_equals_in_memory(tmp_path, checkpoint):
    torch.save(random_tokens(1, 80), tmp_path / "tokens.pt")
    args = ["perplexity", "--model", str(checkpoint), "--data", str(tmp_path / "tokens.pt")]
    args += ["--window", "16", "--stride", "8", "--batch-size", "2"]
    for name, extra in [("memory", []), ("streamed", ["--stream-blocks"])]:
        assert main([*args, *extra, "--out", str(tmp_path / f"{name}.json")]) == 0
    memory, streamed = (
        json.loads((tmp_path / f"{n}.json").read_text()) for n in ("memory", "streamed")
    )
    assert streamed["stream_blocks"] and not memory["stream_blocks"]
    assert streamed["window_nll"] == pytest.approx(memory["window_nll"], rel=1e-6)
    assert streamed["ppl"] == pytest.approx(memory["ppl"], rel=1e-6)


def test_stream_blocks_needs_safetensors_weights(tmp_path):
    path = save_checkpoint(tmp_path / "dense")
    (path / "model.safetensors").unlink()
    model, _ = load_skeleton(path)
    with pytest.raises(ModelError, match="found neither model.safetensors.index.json"):
        CheckpointBlocks(model, path)


def test_a_failed_streamed_prune_leaves_no_output(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "dense", sharded=True)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.2.mlp.down_proj.weight"]
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(path), "--method", "magnitude", "--sparsity", "0.5"]
    assert main([*args, "--stream-blocks", "--out", str(out)]) == 2
    assert "no tensor for model.layers.2.mlp.down_proj" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


@pytest.mark.parametrize("change", CORRUPTIONS, ids=[c.__name__ for c in CORRUPTIONS])
def test_a_streamed_checkpoint_is_checked_before_any_block_is_read(tmp_path, change):
    expected = corrupt(save_tiny(tmp_path), change)
    model, _ = load_skeleton(tmp_path)
    with pytest.raises(ModelError) as error:
        CheckpointBlocks(model, tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'model.safetensors'}: the checkpoint does")
    assert expected in str(error.value)
    # A tied lm_head (absent from the file) is not missing.
    CheckpointBlocks(load_skeleton(save_tiny(tmp_path / "tied"))[0], tmp_path / "tied")
