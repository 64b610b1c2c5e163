"""2:4 inference on the CPU: the weight swap a pruned model gets, the benchmark's call path and
its refusal without CUDA; the kernels themselves run in tests/test_gpu.py."""

import importlib.util
import json

import pytest
import torch
from test_cli import model_dir, text_file  # noqa: F401  (fixtures)
from tiny import random_tokens, tiny_model

from dpruner.cli import main
from dpruner.errors import DprunerError
from dpruner.masks import nm_mask
from dpruner.models import prunable_weights
from dpruner.semi_structured import is_two_four, to_semi_structured

BENCHMARK = importlib.util.spec_from_file_location(
    "semi_structured_benchmark", "benchmarks/semi_structured.py"
)


def benchmark():
    module = importlib.util.module_from_spec(BENCHMARK)
    BENCHMARK.loader.exec_module(module)
    return module


class Converted(torch.Tensor):
    """A stand-in for the semi-structured subclass: the same values, a recognisable type."""


def fake_convert(weight):
    return weight.clone().as_subclass(Converted)


def two_four_model():
    model = tiny_model("llama", layers=2)
    with torch.no_grad():
        for module in prunable_weights(model).values():
            module.weight.masked_fill_(nm_mask(module.weight.abs(), 2, 4), 0)
    return model


def test_every_prunable_linear_gets_the_converted_weight_and_the_model_runs_it():
    model = two_four_model()
    tokens = random_tokens(2, 8)
    with torch.no_grad():
        before = model(tokens).logits
    names = to_semi_structured(model, convert=fake_convert)
    weights = prunable_weights(model)
    assert names == list(weights) and len(names) == 14
    assert all(type(m.weight.data) is Converted for m in weights.values())
    assert type(model.lm_head.weight.data) is not Converted
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, before)


def test_a_model_that_is_not_two_four_is_refused_unchanged():
    model = two_four_model()
    name, module = list(prunable_weights(model).items())[3]
    with torch.no_grad():
        module.weight[0, :4] = 1.0
    with pytest.raises(DprunerError, match=f"{name} is not 2:4 sparse"):
        to_semi_structured(model, convert=fake_convert)
    assert not any(type(m.weight.data) is Converted for m in prunable_weights(model).values())
    assert not is_two_four(torch.ones(2, 6))


def test_the_benchmark_times_the_linear_the_model_holds():
    bench = benchmark()
    dense, sparse = bench.linear_pair(8, 16, torch.float32, "cpu", fake_convert)
    assert isinstance(sparse, torch.nn.Linear) and type(sparse.weight.data) is Converted
    assert is_two_four(dense.weight) and torch.equal(sparse.weight, dense.weight)
    x = torch.randn(3, 16)
    assert torch.equal(sparse(x), dense(x))
    assert bench.linear_shapes(bench.SHAPES["SmolLM2-135M"]) == [
        (576, 576), (192, 576), (1536, 576), (576, 1536),
    ]  # fmt: skip


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_the_benchmark_and_the_command_refuse_a_cpu(tmp_path, capsys, model_dir, text_file):  # noqa: F811
    assert benchmark().main(["--quick", "--out", str(tmp_path / "t")]) == 2
    assert "run on CUDA only" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()
    args = ["perplexity", "--model", str(model_dir), "--data", str(text_file)]
    assert main([*args, "--semi-structured", "cuSPARSELt"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main([*args, "--semi-structured", "cusparse"]) == 2
    assert "unknown 2:4 kernel 'cusparse'" in capsys.readouterr().err
    out = tmp_path / "ppl.json"
    assert main([*args, "--window", "32", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["semi_structured"] is None
