"""Every check that needs CUDA (`make gpu-check`, docs/gpu.md); each is skipped on a CPU.

Each method's CUDA path against its CPU result on a tiny model, exact selection and the
low-precision Hessians against their fp32 references with their timings at LLaMA-2-7B shape,
block streaming on CUDA, FSDP2 over NCCL with one process, the 2:4 conversion, and the tiny
workflow on `device: cuda` where Snakemake and lm-eval are installed. Figures go to
results/gpu/gpu_check.{csv,md} with the GPU, the torch version and the command. Only torch,
transformers, safetensors and pytest are needed.
"""

import importlib.util
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from tiny import random_scores, random_tokens, tiny_model, tiny_tokenizer

from dpruner.gpu_tables import provenance, write_gpu_table
from dpruner.masks import SparsitySpec, lowest_k, nm_mask, prune_mask
from dpruner.methods import get_pruner
from dpruner.methods.dpruner import general_importance
from dpruner.methods.sparsegpt import HessianStatistics, SparseGPTPruner
from dpruner.models import load_model, load_skeleton, prunable_weights
from dpruner.score_files import save_scores

REPO = Path(__file__).resolve().parent.parent
NO_CUDA = "needs a CUDA device (run `make gpu-check` on a GPU machine)"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def gpu_check_table():
    """results/gpu/gpu_check.{csv,md} from the figures the tests record, once they have run."""
    yield
    if ROWS:
        command = "make gpu-check (python3 -m pytest tests/test_gpu.py)"
        header = [*provenance(command), "goal: the issue 21 goal where it names one"]
        write_gpu_table(REPO / "results" / "gpu" / "gpu_check", "GPU check", header, ROWS)


def record(check: str, value: float, unit: str, goal: str = "", passed: bool | None = None):
    ROWS.append({"check": check, "value": value, "unit": unit, "goal": goal, "met": passed})


def seconds(run, repeats: int = 3) -> float:
    run()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() == b.cpu()).float().mean())


def masks_of(model) -> dict[str, torch.Tensor]:
    return {n: (m.weight == 0).cpu() for n, m in prunable_weights(model).items()}


@pytest.mark.parametrize(
    ("method", "group", "least"),
    # Magnitude and D-Pruner's mask select from the same numbers: the same masks. Wanda's norms
    # and SparseGPT's sweep add floats in another order on the GPU: masks agree up to ties.
    [("magnitude", "matrix", 1.0), ("dpruner", "matrix", 1.0), ("dpruner", "block", 1.0),
     ("wanda", "row", 0.99), ("sparsegpt", "block", 0.97)],
)  # fmt: skip
def test_each_method_on_cuda_gives_its_cpu_result(tmp_path, method, group, least):
    tokens, spec = random_tokens(8, 32), SparsitySpec(0.5, group)
    options = {}
    if method == "dpruner":
        save_scores(random_scores(tiny_model("llama")), tmp_path / "s.safetensors", {})
        options["scores_path"] = str(tmp_path / "s.safetensors")
    results = {}
    for device in ("cpu", "cuda"):
        model = tiny_model("llama").to(device)
        get_pruner(method, **options).prune(model, tokens, spec)
        results[device] = masks_of(model)
    worst = min(agreement(results["cpu"][n], results["cuda"][n]) for n in results["cpu"])
    record(
        f"{method} ({group}) CUDA mask = CPU mask, worst matrix",
        worst,
        "share",
        f">= {least}",
        worst >= least,
    )
    assert worst >= least


def test_exact_selection_at_7b_shape_is_fast_and_equals_the_cpu():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(11008, 4096, generator=generator)
    scores[::7] = scores[::7].mul(8).floor()  # ties
    k = scores.numel() // 2
    on_gpu = scores.cuda()
    assert torch.equal(lowest_k(on_gpu, k).cpu(), lowest_k(scores, k))
    took = seconds(lambda: lowest_k(on_gpu, k))
    kthvalue = seconds(lambda: torch.kthvalue(on_gpu.reshape(-1), k), repeats=1)
    # A LLaMA-2-7B block: q, k, v, o 4096 x 4096, gate and up 11008 x 4096, down 4096 x 11008.
    whole = 32 * (4 * seconds(lambda: prune_mask(on_gpu[:4096], SparsitySpec(0.5))) + 3 * took)
    record("lowest_k, one 11008 x 4096 matrix", took, "s", "kthvalue took 0.331 s")
    record("torch.kthvalue, the same matrix", kthvalue, "s")
    record("7B matrix masks (224 matrices), estimated", whole, "s", "< 2 s", whole < 2)
    assert whole < 2


def _layer_inputs(d_in: int, tokens: int, dtype) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(tokens, d_in, device="cuda", generator=generator).to(dtype)


@pytest.mark.parametrize("d_in", [4096, 11008])
def test_low_precision_hessians_are_close_to_fp32_and_faster(d_in):
    inputs = _layer_inputs(d_in, 65536, torch.bfloat16)

    def hessian(setting):
        stats = HessianStatistics(d_in, "cuda", setting)
        for part in inputs.split(16384):
            stats.add_batch(part, 8)
        return stats.hessian

    fast, exact = hessian("auto"), hessian("float32")
    difference = float((fast - exact).norm() / exact.norm())
    record(
        f"bf16 Hessian vs fp32, d = {d_in}, relative difference",
        difference,
        "",
        "< 5e-3",
        difference < 5e-3,
    )
    for setting in ("auto", "float32"):
        took = seconds(lambda s=setting: hessian(s))
        record(f"Hessian of 65,536 bf16 tokens, d = {d_in}, {setting}", took, "s")
    assert difference < 5e-3


def _smollm2_shaped(layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
        num_hidden_layers=layers, vocab_size=49152,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()


def test_sparsegpt_and_general_importance_masks_with_bf16_hessians():
    tokens = torch.randint(0, 49152, (32, 512), generator=torch.Generator().manual_seed(0))
    spec = SparsitySpec(0.5, "block")
    masks, importance = {}, {}
    for setting in ("auto", "float32"):
        model = _smollm2_shaped()
        SparseGPTPruner(batch_size=8, hessian_dtype=setting).prune(model, tokens, spec)
        masks[setting] = masks_of(model)
        importance[setting] = general_importance(
            _smollm2_shaped(), tokens, 0.5, batch_size=8, hessian_dtype=setting
        )
    worst = min(agreement(masks["auto"][n], masks["float32"][n]) for n in masks["auto"])
    g_masks = {
        s: {n: prune_mask(g, SparsitySpec(0.5)) for n, g in importance[s].items()}
        for s in importance
    }
    g_worst = min(agreement(g_masks["auto"][n], g_masks["float32"][n]) for n in g_masks["auto"])
    record(
        "SparseGPT mask, bf16 vs fp32 Hessians, worst", worst, "share", ">= 0.985", worst >= 0.985
    )
    record("G mask, bf16 vs fp32 Hessians, worst", g_worst, "share", ">= 0.985", g_worst >= 0.985)
    assert worst >= 0.985 and g_worst >= 0.985


def test_sparsegpt_block_time_at_7b_shape():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
        num_key_value_heads=32, num_hidden_layers=1, vocab_size=32000,
    )  # fmt: skip
    tokens = torch.randint(0, 32000, (128, 2048), generator=torch.Generator().manual_seed(0))
    for setting in ("auto", "float32"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
        result = SparseGPTPruner(batch_size=8, hessian_dtype=setting).prune(
            model, tokens, SparsitySpec(0.5, "block")
        )
        record(
            f"SparseGPT, one LLaMA-2-7B block, 128 x 2048 tokens, Hessians {setting}",
            result.wall_s, "s/block", "<= 2.0 s (auto)" if setting == "auto" else "6.7 s before",
        )  # fmt: skip
        del model


def test_streamed_pruning_on_cuda_equals_in_memory(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from dpruner.streaming import CheckpointBlocks

    path = tmp_path / "model"
    tiny_model("llama", layers=3).save_pretrained(path)
    vocab = {f"t{i}": i for i in range(96)}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    ).save_pretrained(path)
    tokens, spec = random_tokens(4, 16), SparsitySpec(0.5, "block")
    for method in ("magnitude", "wanda", "sparsegpt"):
        dense, _ = load_model(path, "float32", "cuda")
        get_pruner(method).prune(dense, tokens, spec)
        skeleton, tokenizer = load_skeleton(path, "float32", "cuda")
        out = tmp_path / method
        out.mkdir()
        blocks = CheckpointBlocks(skeleton, path, "cuda", out_dir=out)
        get_pruner(method).prune(skeleton, tokens, spec, blocks=blocks)
        blocks.finish(tokenizer)
        streamed, _ = load_model(out, "float32", "cuda")
        for name, module in prunable_weights(dense).items():
            got = prunable_weights(streamed)[name].weight
            torch.testing.assert_close(got, module.weight, rtol=1e-5, atol=1e-6, msg=name)


def test_fsdp2_over_nccl_with_one_process_gives_the_unsharded_scores(monkeypatch):
    from dpruner.distributed import gather_scores, process_group, shard_model
    from dpruner.finetune import FineTuneSettings, domain_scores, prepare_for_training

    texts = [" ".join(f"w{(i * 7 + j) % 60}" for j in range(12)) for i in range(6)]
    tokenizer = tiny_tokenizer(
        texts, 300, ["<unk>", "<s>", "</s>"],
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
    )  # fmt: skip
    settings = FineTuneSettings(epochs=1, batch_size=3)

    def model():
        return tiny_model("llama", vocab_size=len(tokenizer), layers=2)

    importance = random_scores(model())
    alone, _ = domain_scores(model().cuda(), tokenizer, texts, importance, settings, progress=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    ).items():
        monkeypatch.setenv(key, value)
    with process_group("cuda", 120) as shard:
        sharded_model = model()
        prepare_for_training(sharded_model, settings)
        shard_model(sharded_model, shard)
        rows, report = domain_scores(
            sharded_model, tokenizer, texts, importance, settings, progress=False, shard=shard
        )
        sharded = gather_scores(rows, sharded_model, shard)
    assert report["processes"] == 1 and sharded.keys() == alone.keys()
    for name in alone:
        torch.testing.assert_close(
            sharded[name].cpu(), alone[name].cpu(), rtol=1e-4, atol=1e-7, msg=name
        )


def test_two_four_conversion_runs_the_model_with_each_kernel():
    from dpruner.semi_structured import KERNELS, to_semi_structured

    for kernel in KERNELS:
        model = _smollm2_shaped().half()
        with torch.no_grad():
            for module in prunable_weights(model).values():
                module.weight.masked_fill_(nm_mask(module.weight.abs().float(), 2, 4), 0)
        ids = torch.randint(0, 49152, (2, 64), device="cuda")
        with torch.no_grad():
            dense = model(ids).logits.float()
            try:
                to_semi_structured(model, kernel)
            except (RuntimeError, NotImplementedError) as error:
                record(f"2:4 conversion, {kernel}: refused ({error})", 0.0, "")
                continue
            sparse = model(ids).logits.float()
        difference = float((sparse - dense).abs().max() / dense.abs().max())
        record(f"2:4 model logits, {kernel} vs dense, max relative difference", difference, "")
        assert difference < 2e-2


@pytest.mark.skipif(
    not (importlib.util.find_spec("snakemake") and importlib.util.find_spec("lm_eval")),
    reason="the workflow needs snakemake and lm-eval, not installed here",
)
def test_tiny_workflow_on_cuda(tmp_path):
    from test_workflow import snakemake, tiny_config, tiny_model_dir, write_config

    config = tiny_config(tiny_model_dir(tmp_path))
    config["device"] = "cuda"
    config_file = write_config(tmp_path / "tiny.yaml", config)
    workdir = tmp_path / "work"
    started = time.perf_counter()
    snakemake("--configfile", config_file, "--cores", "4", workdir=workdir)
    record("tiny workflow on device: cuda", time.perf_counter() - started, "s")
    metrics = list((workdir / "results" / "metrics").rglob("*.json"))
    assert metrics and all(json.loads(p.read_text())["device"].startswith("cuda") for p in metrics)
    assert os.path.getsize(workdir / "results" / "tables" / "main.csv") > 0
