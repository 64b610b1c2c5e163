import json

import pytest
from tiny import random_scores, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dpruner.cli import main
from dpruner.models import load_model, prunable_weights, save_model
from dpruner.stored_size import stored_size_table

WORDS = ["the", "a", "cell", "gene", "licence", "party", "shall", "patient", "study"]
WORDS += ["results", "of", "and", "to", "in"]


@pytest.fixture()
def model_dir(tmp_path):
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", unk_token="<unk>", pad_token="<unk>"
    )
    model = tiny_model("llama", vocab_size=len(vocab))
    return save_model(model, tokenizer, tmp_path / "dense")


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "calibration.txt"
    paragraphs = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(40)) for i in range(30)]
    path.write_text("\n\n".join(paragraphs))
    return path


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_writes_a_loadable_model_and_its_report(tmp_path, model_dir, text_file, method):
    out = tmp_path / method
    code = main(
        ["prune", "--model", str(model_dir), "--method", method, "--sparsity", "0.5",
         "--calibration", str(text_file), "--nsamples", "4", "--seqlen", "16", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["sparsity_linear"] >= 0.5
    assert len(report["matrices"]) == 21
    assert report["wall_s"] > 0 and report["peak_rss_mb"] > 0
    model, _ = load_model(out)
    assert report["measured"]["sparsity_linear"] == pytest.approx(report["sparsity_linear"])


@pytest.mark.parametrize(
    ("method", "quantizer"), [("magnitude", "rtn"), ("sparsegpt", "sparsegpt-joint-gptq")]
)
def test_prune_with_quantization_records_the_quantizer_and_size(
    tmp_path, model_dir, text_file, method, quantizer
):
    out = tmp_path / method
    code = main(
        ["prune", "--model", str(model_dir), "--method", method, "--sparsity", "0.5",
         "--quantize-bits", "4", "--group-size", "16",
         "--calibration", str(text_file), "--nsamples", "4", "--seqlen", "16", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "prune.json").read_text())
    quantization = report["quantization"]
    assert quantization["quantizer"] == quantizer and quantization["label"] == "w4-g16-asym"
    assert quantization["mask_sparsity_linear"] == pytest.approx(0.5)
    stored = report["stored"]
    assert 0 < stored["total_bytes_dense_codes"] < stored["dense_16bit_bytes"]
    # The mask is kept: every weight an unquantized prune of the same method zeroes stays zero
    # (magnitude's mask does not depend on the quantizer; SparseGPT's joint sweep picks its own).
    unquantized = tmp_path / f"{method}-16bit"
    assert main(["prune", "--model", str(model_dir), "--method", method, "--sparsity", "0.5",
                 "--calibration", str(text_file), "--nsamples", "4", "--seqlen", "16",
                 "--out", str(unquantized)]) == 0  # fmt: skip
    plain = json.loads((unquantized / "prune.json").read_text())
    assert plain["quantization"] is None
    # 16-bit values in the bitmap format: 1 + 16 bits per kept weight against 1 + 4.
    assert stored["total_bytes_bitmap"] < plain["stored"]["total_bytes_bitmap"]
    if method == "magnitude":
        quantized_model, _ = load_model(out)
        plain_model, _ = load_model(unquantized)
        for name, module in prunable_weights(plain_model).items():
            zeros = module.weight == 0
            assert bool((prunable_weights(quantized_model)[name].weight[zeros] == 0).all()), name
    table = stored_size_table([out / "prune.json", unquantized / "prune.json"])
    assert list(table["quantization"]) == [f"w4-g16-asym ({quantizer})", "16-bit"]
    assert list(table["bytes_bitmap"]) == [
        stored["total_bytes_bitmap"],
        plain["stored"]["total_bytes_bitmap"],
    ]


@pytest.fixture()
def general_file(tmp_path):
    path = tmp_path / "general.txt"
    path.write_text("\n\n".join(" ".join(WORDS[::-1] * 3) for _ in range(20)))
    return path


def test_prune_mixes_general_rows_into_the_domain_calibration(
    tmp_path, model_dir, text_file, general_file
):
    out = tmp_path / "mixed"
    code = main(
        ["prune", "--model", str(model_dir), "--method", "wanda", "--sparsity", "0.5",
         "--calibration", str(text_file), "--general-calibration", str(general_file),
         "--domain-share", "0.25", "--nsamples", "8", "--seqlen", "16", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["calibration_shape"] == [8, 16]
    assert report["calibration_mix"] == {
        "general_calibration": str(general_file), "domain_share": 0.25, "seed": 0,
        "rows": 8, "row_length": 16, "domain_rows": 2, "general_rows": 6,
    }  # fmt: skip


def test_prune_reconstructs_a_dpruner_mask_on_mixed_rows(
    tmp_path, model_dir, text_file, general_file, capsys
):
    import torch

    from dpruner.score_files import save_scores, scores_provenance

    provenance = scores_provenance("domain_scores", model_dir, 0.5)
    save_scores(random_scores(load_model(model_dir)[0]), tmp_path / "s.safetensors", provenance)
    base = ["prune", "--model", str(model_dir), "--method", "dpruner", "--sparsity", "0.5",
            "--scores", str(tmp_path / "s.safetensors")]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    code = main(
        [*base, "--reconstruct", "--calibration", str(text_file),
         "--general-calibration", str(general_file), "--domain-share", "0.5",
         "--nsamples", "4", "--seqlen", "16", "--out", str(tmp_path / "repaired")]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "repaired" / "prune.json").read_text())
    assert report["details"]["reconstruction"] == "sparsegpt-fixed-mask"
    assert report["calibration_mix"]["domain_rows"] == report["calibration_mix"]["general_rows"]
    plain, _ = load_model(tmp_path / "plain")
    repaired, _ = load_model(tmp_path / "repaired")
    for name, module in prunable_weights(repaired).items():
        assert torch.equal(module.weight == 0, prunable_weights(plain)[name].weight == 0), name
    # Without --reconstruct, D-Pruner takes no calibration rows to mix into.
    code = main([*base, "--general-calibration", str(general_file), "--domain-share", "0.5",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and not (tmp_path / "o").exists()
    assert "--method dpruner without --reconstruct calibrates on none" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "extra", "options"),
    [
        ("ria", ["--alpha", "0.3"], {"alpha": 0.3}),
        (
            "dsnot",
            ["--initial", "sparsegpt", "--max-cycles", "5", "--same-sign", "--skip"],
            {"initial": "sparsegpt", "max_cycles": 5, "update_threshold": 0.1,
             "variance_power": 1, "same_sign": True, "skip": []},
        ),
        (
            "wanda",
            ["--allocation", "owl", "--owl-m", "2"],
            {"allocation": "owl", "owl_m": 2.0, "owl_lambda": 0.08},
        ),
        ("sparsegpt", ["--coefficient", "0.5"], {"coefficient": 0.5}),
        (
            "ria",
            ["--allocation", "owl", "--owl-lambda", "0.05", "--coefficient", "0.5"],
            None,
        ),
    ],
)  # fmt: skip
def test_prune_runs_the_new_methods_with_their_options(
    tmp_path, model_dir, text_file, general_file, capsys, method, extra, options
):
    args = ["prune", "--model", str(model_dir), "--method", method, "--sparsity", "0.5",
            "--calibration", str(text_file), "--nsamples", "4", "--seqlen", "16", *extra,
            "--out", str(tmp_path / "o")]  # fmt: skip
    if "--coefficient" in extra:
        args += ["--general-calibration", str(general_file)]
    if options is None:  # cross-calibration is for wanda and sparsegpt only
        assert main(args) == 2 and not (tmp_path / "o").exists()
        assert "--coefficient cross-calibrates wanda and sparsegpt" in capsys.readouterr().err
        return
    assert main(args) == 0
    report = json.loads((tmp_path / "o" / "prune.json").read_text())
    assert report["method"] == method and report["options"] == options
    assert report["measured"]["sparsity_linear"] == pytest.approx(report["sparsity_linear"])
    if "allocation" in options:
        owl = report["details"]["owl"]
        assert (owl["m"], owl["lambda"]) == (options["owl_m"], options["owl_lambda"])
        assert sum(owl["layer_sparsity"]) / len(owl["layer_sparsity"]) == pytest.approx(0.5)
        for name, matrix in report["matrices"].items():
            target = owl["layer_sparsity"][int(name.split(".")[2])]
            assert matrix["sparsity"] == pytest.approx(target, abs=1 / 32), name  # d_in 32, 64
    else:
        assert {matrix["sparsity"] for matrix in report["matrices"].values()} == {0.5}
    if method == "sparsegpt":
        assert report["general_calibration"] == str(general_file)


def test_prune_masks_dpruner_scores_at_owl_layer_sparsities(tmp_path, model_dir, text_file, capsys):
    from dpruner.score_files import save_scores, scores_provenance

    provenance = scores_provenance("domain_scores", model_dir, 0.5)
    save_scores(random_scores(load_model(model_dir)[0]), tmp_path / "s.safetensors", provenance)
    base = ["prune", "--model", str(model_dir), "--method", "dpruner", "--sparsity", "0.5",
            "--scores", str(tmp_path / "s.safetensors"), "--allocation", "owl",
            "--owl-m", "1.5"]  # fmt: skip
    # OWL measures outliers on calibration rows, which D-Pruner alone does not read.
    assert main([*base, "--out", str(tmp_path / "o")]) == 2
    assert "--allocation owl needs --calibration SOURCE" in capsys.readouterr().err
    calibration = ["--calibration", str(text_file), "--nsamples", "4", "--seqlen", "16"]
    assert main([*base, *calibration, "--out", str(tmp_path / "owl")]) == 0
    report = json.loads((tmp_path / "owl" / "prune.json").read_text())
    assert report["options"] == {"allocation": "owl", "owl_m": 1.5, "owl_lambda": 0.08}
    sparsities = report["details"]["owl"]["layer_sparsity"]
    for name, matrix in report["matrices"].items():
        target = sparsities[int(name.split(".")[2])] * matrix["numel"]
        assert abs(matrix["pruned"] - target) < 1, name  # one threshold per matrix: exact


def test_perplexity_command(tmp_path, model_dir, text_file, capsys):
    out = tmp_path / "ppl.json"
    args = ["perplexity", "--model", str(model_dir), "--data", str(text_file)]
    assert main([*args, "--window", "32", "--stride", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ppl"] > 1 and result["windows"] > 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "1.5"], "sparsity must lie in (0, 1)"),
        (["--sparsity", "0.5", "--pattern", "2:3"], "fixes sparsity"),
        (["--sparsity", "0.5", "--pattern", "3:6"], "d_in = 32"),
        (["--sparsity", "0.5", "--method", "obs"], "unknown method 'obs'"),
        (["--sparsity", "0.5", "--group-size", "16"], "need --quantize-bits"),
        (["--sparsity", "0.5", "--quantize-bits", "9"], "bits must lie in 2..8"),
        (["--sparsity", "0.5", "--reconstruct"], "--reconstruct repairs a D-Pruner mask"),
        (["--sparsity", "0.5", "--domain-share", "0.5"], "--general-calibration goes together"),
        (["--sparsity", "0.5", "--coefficient", "0.5"], "--general-calibration goes together"),
        (["--sparsity", "0.5", "--alpha", "0.3"], "--alpha is an option of --method ria"),
        (["--sparsity", "0.5", "--skip", "mlp"], "--skip is an option of --method dsnot"),
        (["--sparsity", "0.5", "--method", "ria", "--alpha", "-1"], "--alpha: -1.0 is less than"),
        (
            ["--sparsity", "0.5", "--method", "dsnot", "--initial", "magnitude"],
            "--initial: \"magnitude\" expected one of ['wanda', 'sparsegpt']",
        ),
        (["--sparsity", "0.5", "--owl-m", "3"], "--owl-m needs --allocation owl"),
        (["--sparsity", "0.5", "--pattern", "2:4", "--allocation", "owl"], "use unstructured"),
        (["--sparsity", "0.5", "--allocation", "owl", "--stream-blocks"], "streamed blocks"),
        (
            ["--sparsity", "0.5", "--method", "magnitude", "--allocation", "owl"],
            "not --method magnitude",
        ),
    ],
)
def test_bad_arguments_give_one_clear_error(tmp_path, model_dir, text_file, capsys, extra, message):
    args = ["prune", "--model", str(model_dir), "--method", "wanda", "--out", str(tmp_path / "o")]
    args += ["--calibration", str(text_file), "--nsamples", "2", "--seqlen", "8", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_model_and_empty_calibration_are_named(tmp_path, model_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    base = ["prune", "--method", "wanda", "--sparsity", "0.5", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", str(tmp_path / "none"), "--calibration", str(empty)]) == 2
    assert "none/config.json" in capsys.readouterr().err
    assert main([*base, "--model", str(model_dir), "--calibration", str(empty)]) == 2
    assert "empty.txt" in capsys.readouterr().err


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"results: r\n\xff\xfe\x00binary")
    assert main(["check-config", str(config)]) == 2
    assert capsys.readouterr().err == f"error: {config}: not UTF-8 text (invalid start byte); " \
        "a config is a YAML text file\n"  # fmt: skip


def test_a_corrupt_model_config_json_is_one_line(tmp_path, model_dir, text_file, capsys):
    (model_dir / "config.json").write_text('{"hidden_size": 64,')
    args = ["perplexity", "--model", str(model_dir), "--data", str(text_file)]
    assert main([*args, "--window", "32"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {model_dir / 'config.json'}: not a valid JSON file")
    assert len(error.splitlines()) == 1


def test_a_device_this_machine_lacks_is_one_line(model_dir, text_file, capsys):
    args = ["perplexity", "--model", str(model_dir), "--data", str(text_file), "--window", "32"]
    assert main([*args, "--device", "cuda:99"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --device: 'cuda:99', but this machine has")
    assert len(error.splitlines()) == 1


def test_a_full_disk_is_one_line_naming_the_output(tmp_path, model_dir, text_file, capsys):
    import errno
    from pathlib import Path

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "ppl.json"
    args = ["perplexity", "--model", str(model_dir), "--data", str(text_file), "--window", "32"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "write_text", full)
        assert main([*args, "--out", str(out)]) == 2
        error = capsys.readouterr().err  # progress bars, then the error
        assert error.splitlines()[-1] == f"error: {out}: no space left on device"
        assert "Traceback" not in error
        # A folder output (its marker is the first write) is named the same way.
        prune = ["prune", "--model", str(model_dir), "--method", "magnitude", "--sparsity", "0.5"]
        assert main([*prune, "--out", str(tmp_path / "pruned")]) == 2
        error = capsys.readouterr().err
        assert error.splitlines()[-1] == f"error: {tmp_path / 'pruned'}: no space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.txt", "dense"]
