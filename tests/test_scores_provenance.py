"""Scores files and pruned models record what made them (dense model, sparsity, kind), and
`prune --scores` and `domain-scores --general-importance` refuse the inputs of other settings."""

import json

import pytest
import torch
from safetensors import safe_open
from test_streaming import save_checkpoint
from tiny import random_tokens
from transformers import AutoTokenizer

from dpruner.cli import main
from dpruner.fingerprint import model_fingerprint


def domain_scores(made, general, out, model="dense") -> int:
    instances = made["root"] / "instances.jsonl"
    instances.write_text("".join(json.dumps({"text": f"t{i + 5}"}) + "\n" for i in range(3)))
    return main(
        ["domain-scores", "--model", str(made[model]), "--instances", str(instances),
         "--general-importance", str(general), "--epochs", "1", "--batch-size", "1",
         "--max-length", "8", "--out", str(made["root"] / out)]
    )  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two dense models of one architecture, and general importance G of the first at 0.5."""
    root = tmp_path_factory.mktemp("provenance")
    dense = save_checkpoint(root / "dense", layers=2)
    tokenizer = AutoTokenizer.from_pretrained(dense)
    # D-Pruner's fine-tuning starts each instance with BOS and pads its batches.
    tokenizer.bos_token, tokenizer.pad_token = "t1", "t0"
    tokenizer.save_pretrained(dense)
    other = root / "other"
    other.mkdir()
    for path in dense.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    # Another checkpoint of the same architecture: same header, other weights.
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = bytes(b ^ 0x01 for b in data[header:])
    weights.write_bytes(bytes(data))
    torch.save(random_tokens(4, 16), root / "calibration.pt")
    general = root / "g.safetensors"
    code = main(
        ["general-importance", "--model", str(dense), "--calibration", str(root / "calibration.pt"),
         "--sparsity", "0.5", "--out", str(general)]
    )  # fmt: skip
    assert code == 0
    made = {"root": root, "dense": dense, "other": other, "general": general}
    assert domain_scores(made, general, "domain.safetensors") == 0
    return {**made, "domain": root / "domain.safetensors"}


def prune(made, scores, sparsity="0.5", model="dense", out="pruned") -> int:
    return main(
        ["prune", "--model", str(made[model]), "--method", "dpruner", "--sparsity", sparsity,
         "--scores", str(scores), "--out", str(made["root"] / out)]
    )  # fmt: skip


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_fingerprint_is_a_copys_and_differs_for_other_weights(made, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in made["dense"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert model_fingerprint(copy) == model_fingerprint(made["dense"])
    assert model_fingerprint(made["other"]) != model_fingerprint(made["dense"])


def test_general_importance_records_its_model_sparsity_and_kind(made):
    with safe_open(str(made["general"]), framework="pt") as scores:
        metadata = scores.metadata()
    assert metadata["kind"] == "general_importance"
    assert metadata["model_fingerprint"] == model_fingerprint(made["dense"])
    assert metadata["sparsity"] == "0.5"


def test_prune_accepts_its_own_models_scores_and_records_the_dense_model(made):
    assert prune(made, made["general"]) == 0
    report = json.loads((made["root"] / "pruned" / "prune.json").read_text())
    assert report["model_fingerprint"] == model_fingerprint(made["dense"])


def test_prune_refuses_the_models_own_weights_as_scores(made, capsys):
    weights = made["dense"] / "model.safetensors"
    assert prune(made, weights, out="weights") == 2
    error = one_error(capsys)
    assert f"--scores {weights} is not a dpruner scores file" in error
    assert "kind is None" in error and "general_importance or domain_scores" in error
    assert not (made["root"] / "weights").exists()


def test_prune_refuses_scores_that_do_not_name_their_model(made, capsys):
    from dpruner.score_files import load_scores, save_scores

    unnamed = made["root"] / "unnamed.safetensors"
    save_scores(load_scores(made["general"]), unnamed, {"kind": "general_importance"})
    assert prune(made, unnamed, out="unnamed") == 2
    assert f"--scores {unnamed} has no model_fingerprint in its metadata" in one_error(capsys)
    assert not (made["root"] / "unnamed").exists()


def test_prune_refuses_scores_of_another_model(made, capsys):
    assert prune(made, made["general"], model="other", out="other_pruned") == 2
    error = one_error(capsys)
    assert f"--scores {made['general']} was made from another model" in error
    assert f"model_fingerprint is '{model_fingerprint(made['dense'])}' in the file" in error
    assert f"'{model_fingerprint(made['other'])}' for --model {made['other']}" in error
    assert not (made["root"] / "other_pruned").exists()


def test_prune_refuses_scores_made_at_another_sparsity(made, capsys):
    assert prune(made, made["general"], sparsity="0.7", out="at_07") == 2
    error = one_error(capsys)
    assert f"--scores {made['general']} was made at another sparsity" in error
    assert "sparsity is 0.5 in the file, 0.7 for --sparsity" in error
    assert not (made["root"] / "at_07").exists()


def test_domain_scores_carry_their_generals_sparsity_to_prune(made, capsys):
    with safe_open(str(made["domain"]), framework="pt") as file:
        metadata = file.metadata()
    assert metadata["kind"] == "domain_scores" and metadata["sparsity"] == "0.5"
    assert metadata["model_fingerprint"] == model_fingerprint(made["dense"])
    assert prune(made, made["domain"], sparsity="0.7", out="s_at_07") == 2
    assert "sparsity is 0.5 in the file, 0.7 for --sparsity" in one_error(capsys)


@pytest.mark.parametrize(
    ("general", "model", "message"),
    [
        ("weights", "dense", "is not a dpruner scores file: its metadata key kind is None"),
        ("domain", "dense", "kind is 'domain_scores' in the file, --general-importance takes "),
        ("general", "other", "was made from another model: model_fingerprint is '"),
    ],
)
def test_domain_scores_refuses_a_general_importance_of_other_settings(
    made, capsys, general, model, message
):
    paths = {**made, "weights": made["dense"] / "model.safetensors"}
    assert domain_scores(made, paths[general], "refused.safetensors", model=model) == 2
    error = one_error(capsys)
    assert f"--general-importance {paths[general]}" in error and message in error
    assert not (made["root"] / "refused.safetensors").exists()
