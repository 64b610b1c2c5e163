"""The precision of calibration Hessians (issue 21): the path chosen by device, dtype and the
`hessian_dtype` option, the CPU's fp32 path unchanged, and the option from config to command."""

import math

import pytest
import torch
import yaml
from test_workflow import REPO, planned_spec, snakemake, write_config
from tiny import random_tokens, tiny_model

from dpruner.cli import build_parser
from dpruner.errors import DprunerError
from dpruner.hessian import hessian_product_dtype
from dpruner.methods import sparsegpt
from dpruner.methods.dpruner import general_importance
from dpruner.methods.sparsegpt import HessianStatistics, SparseGPTPruner
from dpruner.specs import GeneralImportanceSpec, PruneSpec


@pytest.mark.parametrize(
    ("device", "activations", "setting", "product"),
    [
        ("cuda", torch.bfloat16, "auto", torch.bfloat16),
        ("cuda", torch.float16, "auto", torch.float16),
        ("cuda", torch.float32, "auto", torch.float32),
        ("cpu", torch.bfloat16, "auto", torch.float32),
        ("cpu", torch.float16, "auto", torch.float32),
        ("cuda", torch.bfloat16, "float32", torch.float32),
        ("cuda", torch.float16, "float32", torch.float32),
    ],
)
def test_hessian_product_dtype_by_device_dtype_and_setting(device, activations, setting, product):
    assert hessian_product_dtype(device, activations, setting) == product


def test_hessian_product_dtype_refuses_an_unknown_setting():
    with pytest.raises(DprunerError, match="hessian_dtype must be one of"):
        hessian_product_dtype("cuda", torch.bfloat16, "bfloat16")
    with pytest.raises(DprunerError, match="got 'tf32'"):
        SparseGPTPruner(hessian_dtype="tf32")


def _old_hessian(batches):
    """The pre-issue accumulation: fp32 inputs (the feeder's .float()), scaled, then multiplied."""
    hessian, seen = None, 0
    for inputs, n in batches:
        inputs = inputs.float()
        hessian = torch.zeros(inputs.shape[1], inputs.shape[1]) if hessian is None else hessian
        total = seen + n
        hessian *= seen / total
        scaled = inputs * math.sqrt(2 / total)
        hessian += scaled.t() @ scaled
        seen = total
    return hessian


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_hessians_are_the_fp32_ones_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(24, 16, generator=generator).to(dtype), n) for n in (2, 3, 1)]
    stats = HessianStatistics(16, "cpu")
    for inputs, n in batches:
        stats.add_batch(inputs, n)
    assert stats.hessian.dtype == torch.float32
    assert torch.equal(stats.hessian, _old_hessian(batches))


def test_low_precision_path_multiplies_the_activations_with_fp32_output(monkeypatch):
    # The CPU has no mm with out_dtype: a stand-in records the call the CUDA path makes.
    calls = []

    def mm(a, b, *, out_dtype):
        calls.append((a.dtype, b.dtype, out_dtype))
        return a.float() @ b.float()

    monkeypatch.setattr(sparsegpt, "hessian_product_dtype", lambda device, dtype, setting: dtype)
    monkeypatch.setattr(torch, "mm", mm)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(24, 16, generator=generator).bfloat16(), n) for n in (2, 3)]
    stats = HessianStatistics(16, "cpu")
    for inputs, n in batches:
        stats.add_batch(inputs, n)
    assert calls == [(torch.bfloat16, torch.bfloat16, torch.float32)] * 2
    assert torch.allclose(stats.hessian, _old_hessian(batches), rtol=1e-5, atol=1e-6)


def test_the_option_reaches_every_hessian(monkeypatch):
    settings = []
    original = HessianStatistics.__init__

    def spy(self, d_in, device, hessian_dtype="auto"):
        settings.append(hessian_dtype)
        original(self, d_in, device, hessian_dtype)

    monkeypatch.setattr(HessianStatistics, "__init__", spy)
    model = tiny_model("llama", layers=1)
    general_importance(model, random_tokens(2, 8), 0.5, hessian_dtype="float32")
    assert settings == ["float32"] * 7


def test_cli_hessian_dtype_defaults_to_the_schema_and_accepts_float32():
    from dpruner.config import schema_default
    from dpruner.specs import GeneralImportanceSpec, PruneSpec
    from dpruner.steps.flags import from_args

    parser = build_parser()
    common = ["--model", "m", "--sparsity", "0.5", "--out", "o", "--calibration", "c.pt"]
    steps = (
        (["prune", "--method", "sparsegpt"], PruneSpec),
        (["general-importance"], GeneralImportanceSpec),
    )
    for step, spec in steps:
        default = from_args(parser.parse_args([*step, *common]), spec)
        assert default.rows.hessian_dtype == schema_default("hessian_dtype")
        forced = parser.parse_args([*step, *common, "--hessian-dtype", "float32"])
        assert from_args(forced, spec).rows.hessian_dtype == "float32"


def test_config_hessian_dtype_reaches_the_commands_that_build_hessians(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    dpruner = config["methods"]["dpruner"]
    config["hessian_dtype"] = "float32"
    config["methods"] = {
        "dpruner": dpruner,
        "dpruner-rec": {**dpruner, "reconstruct": "domain"},
        "sparsegpt": {"kind": "sparsegpt"},
        "wanda": {"kind": "wanda"},
        "magnitude": {"kind": "magnitude"},
    }
    config_file = write_config(tmp_path / "fp32.yaml", config)
    result = snakemake("-n", "-p", "--configfile", config_file, workdir=tmp_path)
    steps = ("python -m dpruner general-importance", "python -m dpruner prune")
    lines = result.stdout.splitlines()
    planned = [planned_spec(line)[0] for line in lines if any(step in line for step in steps)]
    forced = [spec for spec in planned if spec.rows.hessian_dtype == "float32"]
    importance = [spec for spec in forced if isinstance(spec, GeneralImportanceSpec)]
    pruned = [spec for spec in forced if isinstance(spec, PruneSpec)]
    assert len(forced) == len(importance) + len(pruned)
    assert len(importance) == 1
    assert [spec.method for spec in pruned if not spec.reconstruct] == ["sparsegpt"]
    assert sum(spec.reconstruct for spec in pruned) == 2
