"""D-Pruner's steps 2-3 on 2 processes (FSDP2 over gloo, CPU) against 1 process, and a rank that
fails. torchrun runs tests/distributed_worker.py: the CLI plus a probe that keeps the weights."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import tiny_model, tiny_tokenizer

from dpruner.models import prunable_weights
from dpruner.score_files import save_scores, scores_provenance

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "distributed_worker.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny Llama directory, 7 domain instances and a general importance file."""
    root = tmp_path_factory.mktemp("dist")
    words = [f"w{i}" for i in range(60)]
    g = torch.Generator().manual_seed(0)
    texts = [
        " ".join(words[int(i)] for i in torch.randint(0, 60, (int(n),), generator=g))
        for n in torch.randint(5, 14, (7,), generator=g)
    ]
    tokenizer = tiny_tokenizer(
        texts, 300, ["<unk>", "<s>", "</s>"],
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
    )  # fmt: skip
    model = tiny_model(
        "llama", vocab_size=len(tokenizer), layers=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "instances.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    importance = {
        name: torch.rand(m.weight.shape, generator=g) + 0.5
        for name, m in prunable_weights(model).items()
    }
    provenance = scores_provenance("general_importance", root / "model", 0.5)
    save_scores(importance, root / "g.safetensors", provenance)
    return root


def cli_args(root: Path, out: Path) -> list[str]:
    # Batches of 3 from 7 instances: 3, 3 and 1 sequences, so in the last batch rank 1 has no row.
    return [
        "domain-scores", "--model", str(root / "model"),
        "--instances", str(root / "instances.jsonl"),
        "--general-importance", str(root / "g.safetensors"),
        "--lambda", "0.1", "--lr", "0.05", "--epochs", "2", "--batch-size", "3",
        "--clip", "two_pass", "--process-group-timeout", "60", "--out", str(out),
    ]  # fmt: skip


def torchrun(root: Path, tag: str, *probe: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(WORKER),
        str(root / f"{tag}_weights.safetensors"), *probe,
        "--", *cli_args(root, root / f"{tag}.safetensors"),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def forked_ranks(argv: list[str], world: int = 2, timeout: float = 60) -> list[int]:
    """Exit codes of `world` ranks of distributed_worker.run(argv), forked from this process (it
    has torch and transformers imported already, which torchrun's fresh ranks take seconds for)."""
    import multiprocessing
    import socket

    import distributed_worker

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def rank(r):
        os.environ.update(
            RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        torch.set_num_threads(1)
        code = 1
        try:
            code = distributed_worker.run(argv)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)

    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=rank, args=(r,)) for r in range(world)]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + timeout
    for process in ranks:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in ranks:
        if process.is_alive():
            process.kill()
            process.join()
    return [process.exitcode for process in ranks]


def test_two_processes_give_the_single_process_scores_and_weights(inputs):
    import distributed_worker

    # The reference: one process, this one (one thread, as each rank: tiny matrices).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_args = [str(inputs / "one_weights.safetensors"), "--"]
        argv = [*one_args, *cli_args(inputs, inputs / "one.safetensors")]
        assert distributed_worker.run(argv) == 0
    finally:
        torch.set_num_threads(threads)
    two_args = [str(inputs / "two_weights.safetensors"), "--"]
    assert forked_ranks([*two_args, *cli_args(inputs, inputs / "two.safetensors")]) == [0, 0]
    one, two = load_file(inputs / "one.safetensors"), load_file(inputs / "two.safetensors")
    assert one.keys() == two.keys() and len(one) == 2 * 7
    # Not bit for bit: the gradient of a weight is the sum of two ranks' partial sums (and each
    # rank multiplies smaller matrices), a different order of float additions than one process.
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-7, msg=name)
    w1 = load_file(inputs / "one_weights.safetensors")
    w2 = load_file(inputs / "two_weights.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
    moved = max(float((w1[n] - tiny_weight).abs().max()) for n, tiny_weight in dense(inputs))
    assert moved > 1e-3, "the test must move the weights"
    report = json.loads((inputs / "two.json").read_text())
    assert report["processes"] == 2 and report["updates"] == 6
    reference = json.loads((inputs / "one.json").read_text())
    assert report["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert report["clip_scales"] == pytest.approx(reference["clip_scales"], rel=1e-5)
    differences = {
        "S": max(float((two[n] - one[n]).abs().max()) for n in one),
        "weights": max(float((w2[n] - w1[n]).abs().max()) for n in w1),
    }
    print(f"max abs difference, 2 processes vs 1: {differences}")


def dense(root: Path):
    weights = load_file(root / "model" / "model.safetensors")
    return [(name, w) for name, w in weights.items() if name.endswith("proj.weight")]


def test_a_failing_rank_stops_the_job_with_its_rank_and_error(inputs):
    start = time.monotonic()
    result = torchrun(inputs, "fail", "--fail-rank", "1")
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "rank 1 failed: RuntimeError: injected fault" in output
    # torchrun's summary: rank 1 is the root cause, with its traceback from the error file.
    assert "Root Cause" in output, output
    root_cause = output.split("Root Cause")[1]
    assert "rank      : 1" in root_cause and "RuntimeError: injected fault" in root_cause
    assert not (inputs / "fail.safetensors").exists()
    assert elapsed < 60, f"the job took {elapsed:.0f} s to stop"


# ------------------------------------------------------------------ the rule and the SLURM profile


def test_the_rule_launches_one_process_with_python_and_several_with_torchrun(tmp_path):
    from test_workflow import REPO, snakemake, write_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["methods"] = {
        "dpruner": config["methods"]["dpruner"],
        "dpruner-two": {**config["methods"]["dpruner"], "processes": 2},
    }
    config["domains"] = {"medical": config["domains"]["medical"]}
    result = snakemake(
        "-n", "-p", "--configfile", write_config(tmp_path / "c.yaml", config), workdir=tmp_path
    )
    commands = [
        line.removeprefix("Shell command: ")
        for line in result.stdout.splitlines()
        if "dpruner domain-scores" in line
    ]
    one = [c for c in commands if "domain_scores_dpruner_s" in c]
    two = [c for c in commands if "domain_scores_dpruner-two_s" in c]
    assert len(one) == len(two) == 1, commands
    assert one[0].startswith("python -m dpruner domain-scores ")
    assert two[0].startswith("torchrun --standalone --nproc-per-node 2 -m dpruner domain-scores ")


def test_slurm_profile_requests_a_gpu_per_process_on_one_node(tmp_path):
    """The sbatch command line of one domain_scores job with `processes: 4` (a stub sbatch)."""
    from test_workflow import REPO, paper_local_data, snakemake, stub_slurm, write_config

    env, record = stub_slurm(tmp_path)
    workdir = tmp_path / "work"
    paper_local_data(workdir)
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["methods"]["dpruner"]["processes"] = 4
    # Inputs of one domain_scores job exist, so only that job is submitted.
    results = workdir / "results" / "paper"
    (results / "models" / "llama-2-7b" / "dense").mkdir(parents=True)
    (results / ".dpruner-results").write_text("")  # as a run leaves it (the preflight checks)
    (results / "data" / "llama-2-7b" / "medical").mkdir(parents=True)
    (results / "data" / "llama-2-7b" / "medical" / "instances.jsonl").write_text("")
    scores = results / "scores" / "llama-2-7b" / "general"
    scores.mkdir(parents=True)
    (scores / "general_importance_s0.5_norm-mean.safetensors").write_text("")
    result = snakemake(
        "--configfile", write_config(tmp_path / "paper.yaml", config),
        "--workflow-profile", REPO / "profiles" / "slurm",
        "--slurm-init-seconds-before-status-checks", "1",
        "results/paper/scores/llama-2-7b/medical/domain_scores_dpruner_s0.5.safetensors",
        workdir=workdir, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert record.is_file(), result.stdout + result.stderr
    submitted = record.read_text()
    assert "--comment rule_domain_scores" in submitted
    for option in ("-p gpu", "--gpus=a100:4", "--nodes=1", "--cpus-per-gpu=8", "--mem 128000"):
        assert option in submitted, submitted
    # One task (torchrun) that starts the 4 processes: no task count per GPU, which would also
    # bind each task to a single GPU.
    assert "--ntasks" not in submitted
    assert "torchrun --standalone --nproc-per-node 4 -m dpruner" in result.stdout + result.stderr
