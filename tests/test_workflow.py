"""The Snakemake workflow: lint, dry runs, the SLURM profile, reruns, interruptions, a new domain,
and a tiny end-to-end run of the whole DAG with the real package."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
FIXTURES = REPO / "tests" / "fixtures" / "workflow"
# A package whose `python -m dpruner <step>` writes placeholders, so whole runs take seconds.
FAKE_PACKAGE = FIXTURES / "fake"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def snakemake(
    *args, workdir: Path, env: dict | None = None, check: bool = True, repo: Path = REPO, **kwargs
):
    """Run the Snakefile of `repo` (this repository's by default) in `workdir`; the default
    profile applies as for users."""
    command = [str(SNAKEMAKE), "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir)]
    result = subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, **(env or {})},
        **kwargs,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run: rule -> number of jobs."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    counts = {}
    for line in table.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def dry_run(config: Path, workdir: Path, *extra) -> dict[str, int]:
    result = snakemake("-n", "--quiet", "rules", "--configfile", config, *extra, workdir=workdir)
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    return job_counts(result.stdout + result.stderr)


def planned_spec(line: str):
    """(the job spec, the parsed arguments) of a planned `python -m dpruner STEP ...` line."""
    import shlex

    from dpruner import specs
    from dpruner.cli import build_parser

    argv = shlex.split(line.split("python -m dpruner ", 1)[1].split(" > ")[0])
    step_specs = {
        "prepare-model": specs.PrepareModelSpec,
        "prepare-data": specs.PrepareDataSpec,
        "general-importance": specs.GeneralImportanceSpec,
        "domain-scores": specs.DomainScoresSpec,
        "prune": specs.PruneSpec,
        "evaluate": specs.EvaluateSpec,
        "aggregate": specs.AggregateSpec,
        "plot": specs.PlotSpec,
    }
    args = build_parser().parse_args(argv)
    return step_specs[argv[0]].from_json(args.spec), args


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def readme_domain() -> dict:
    """The worked example of config/README.md: a third domain from the packaged corpora."""
    text = (REPO / "config" / "README.md").read_text()
    block = text.split("## Adding a domain")[1].split("```yaml\n")[1].split("```")[0]
    return yaml.safe_load(block)


def test_lint(tmp_path):
    config = REPO / "config" / "config.yaml"
    result = snakemake("--lint", "--configfile", config, workdir=tmp_path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_default_config(tmp_path):
    # As in a fresh clone: the committed tables, plots and summary are present, yet every job of
    # the benchmark runs (a run writes to results/run/, never to the committed copies).
    for name in ("tables", "plots", "summary.md"):
        source = REPO / "results" / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / "results" / name)
    counts = dry_run(REPO / "config" / "config.yaml", tmp_path)
    # 1 model; magnitude, Wanda and SparseGPT pruned once; D-Pruner and the domain-calibrated
    # Wanda and SparseGPT per domain (3 x 2); every model (dense + 9 pruned) evaluated on general,
    # medical and legal in one job per model.
    assert counts == {
        "prepare_model": 1,
        "prepare_data": 3,
        "general_importance": 1,
        "domain_scores": 2,
        "prune": 9,
        "evaluate": 10,
        "aggregate": 1,
        "plot": 1,
        "report": 1,
        "all": 1,
    }


def job_priorities(output: str) -> list[tuple[str, str, float]]:
    """(rule, wildcards line, priority) of every job a dry run lists (priority 0 is not shown)."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]:
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.M)
        priority = re.search(r"^\s+priority: (\S+)$", block, flags=re.M)
        jobs.append(
            (
                block.split(":")[0],
                wildcards.group(1) if wildcards else "",
                float(priority.group(1)) if priority else 0.0,
            )
        )
    return jobs


def test_default_run_schedules_the_critical_path_then_pruning_then_long_evaluations(tmp_path):
    # Two model jobs share the cores: the run should end on evaluations two at a time.
    result = snakemake("-n", "--configfile", REPO / "config" / "config.yaml", workdir=tmp_path)
    jobs = job_priorities(result.stdout + result.stderr)
    by_rule: dict[str, set[float]] = {}
    for rule, _, priority in jobs:
        by_rule.setdefault(rule, set()).add(priority)
    assert by_rule["general_importance"] == by_rule["domain_scores"] == {10.0}
    assert by_rule["prune"] == {2.0}
    evaluations = {wildcards: priority for rule, wildcards, priority in jobs if rule == "evaluate"}
    # Dense and the general-calibrated models run tasks on all three domains, the others on two.
    assert len(evaluations) == 10
    assert {w.split("variant=")[1]: p for w, p in evaluations.items() if p == 1.0}.keys() == {
        "dense",
        "magnitude_none_s0.5_unstructured",
        "wanda_general_s0.5_unstructured",
        "sparsegpt_general_s0.5_unstructured",
    }
    assert sorted(set(evaluations.values())) == [2 / 3, 1.0]


STUDIES = sorted((REPO / "config" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("study", STUDIES, ids=[path.stem for path in STUDIES])
def test_dry_run_study_configs(tmp_path, study):
    # Each study plans its whole DAG offline, into results/studies/<name>/run (git-ignored).
    counts = dry_run(study, tmp_path)
    config = yaml.safe_load(study.read_text())
    assert config["results"] == f"results/studies/{study.stem}/run"
    assert counts["report"] == 1 and counts["all"] == 1
    assert counts.get("stored_size") == (1 if study.stem == "quantization" else None)
    # Pruned models and D-Pruner fine-tunings as each config's header states them: beyond's
    # reconstructions and quantization's dpruner-q4 mask by `dpruner`'s scores (one fine-tuning
    # per domain); sparsity fine-tunes once per sparsity, calibration size once per size;
    # leaderboard prunes 21 models and fine-tunes once per domain for each of its two models.
    assert (counts["prune"], counts["domain_scores"]) == {
        "beyond": (14, 2),
        "quantization": (18, 2),
        "third_domain": (6, 1),
        "sparsity": (42, 5),
        "calibration_size": (12, 4),
        "leaderboard": (42, 4),
        "seeds": (25, 6),
    }[study.stem]


def test_dry_run_lists_the_leaderboard_across_models_only_with_several_models(tmp_path):
    # leaderboard.yaml (two models) plans tables/leaderboard_models.md; the default config (one)
    # has no rule that makes it.
    def plan(config: str, results: str):
        target = f"{results}/tables/leaderboard_models.md"
        return snakemake(
            "-n", target, "--configfile", REPO / "config" / config, workdir=tmp_path, check=False
        )

    two = plan("studies/leaderboard.yaml", "results/studies/leaderboard/run")
    assert two.returncode == 0 and job_counts(two.stdout + two.stderr)["aggregate"] == 1
    one = plan("config.yaml", "results/run")
    assert one.returncode != 0 and "MissingRuleException" in one.stdout + one.stderr


def test_calibration_draws_reseed_the_calibration_and_keep_the_evaluation_sets(tmp_path):
    # seeds.yaml: draw d's data, and the prune jobs that draw mixed rows, use seed d; every
    # evaluation, of whichever draw's model, reads its tasks with the config's seed 0.
    result = snakemake(
        "-n", "-p", "--configfile", REPO / "config" / "studies" / "seeds.yaml", workdir=tmp_path
    )
    output = (result.stdout + result.stderr).splitlines()
    commands = [c[c.index("python -m dpruner") :] for c in output if "python -m dpruner" in c]

    def spec(command):
        return json.loads(re.search(r"--spec '([^']+)'", command).group(1))

    def spec_seed(command):
        return spec(command)["seed"]

    # (seed, draw) of every calibration set: the draw also moves D-Pruner's instance seed.
    data_seeds = {
        re.search(r"--out \S+/data/smollm2-135m/(\S+)", c).group(1): (
            spec(c)["seed"],
            spec(c)["draw"],
        )
        for c in commands
        if " prepare-data " in c
    }
    assert data_seeds == {
        name: (int(name.partition("+")[2] or 0),) * 2
        for domain in ("general", "medical", "legal")
        for name in (domain, f"{domain}+1", f"{domain}+2")
    }
    evaluations = [c for c in commands if " evaluate " in c]
    assert len(evaluations) == 26
    assert {spec_seed(c) for c in evaluations} == {0}
    assert any("dpruner_legal+2_s0.5_unstructured" in c for c in evaluations)
    # Every draw's jobs are timed in the run's benchmark tables.
    aggregate = next(c for c in commands if " aggregate " in c)
    for job in ("prepare_data/smollm2-135m/legal+2", "general_importance/smollm2-135m/general+1"):
        assert f"/benchmarks/{job}" in aggregate


GPU_CONFIG = REPO / "config" / "gpu.yaml"


def test_dry_run_gpu_config(tmp_path):
    # Plans offline on a machine without a GPU; the jobs run on the configured device, and only
    # the model with `stream_blocks: true` streams, in the steps that can.
    result = snakemake("-n", "-p", "--configfile", GPU_CONFIG, workdir=tmp_path)
    assert yaml.safe_load(GPU_CONFIG.read_text())["results"] == "results/gpu/run"
    # 2 models x (dense + 3 shared + 3 pruned per domain x 2 domains).
    assert job_counts(result.stdout) == {
        "prepare_model": 2,
        "prepare_data": 2 * 3,
        "general_importance": 2,
        "domain_scores": 2 * 2,
        "prune": 2 * 9,
        "evaluate": 2 * 10,
        "aggregate": 1,
        "plot": 1,
        "report": 1,
        "all": 1,
    }
    commands = [line for line in result.stdout.splitlines() if "python -m dpruner " in line]

    def step(name):
        return [
            planned_spec(command)[0]
            for command in commands
            if f"python -m dpruner {name} " in command
        ]

    assert len(step("evaluate")) == 20
    assert all(spec.device == "cuda" for spec in step("evaluate"))
    streamed = [
        planned_spec(command)
        for command in commands
        if any(f"python -m dpruner {name} " in command for name in ("general-importance", "prune"))
    ]
    assert len(streamed) == 2 + 2 * 9
    for spec, args in streamed:
        assert spec.loading.device == "cuda"
        assert spec.stream_blocks == ("models/gemma3-270m/dense" in args.model)
    assert {spec.loading.device for spec in step("domain-scores")} == {"cuda"}
    assert not any(
        "stream_blocks" in command
        for command in commands
        if any(
            f"dpruner {name} " in command for name in ("domain-scores", "evaluate", "prepare-model")
        )
    )


def test_quantized_methods_pass_their_quantizer_options_to_prune(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["methods"] = {
        "sparsegpt-q4": {"kind": "sparsegpt", "quantize": {"bits": 4, "group_size": 128}},
        "magnitude-q3": {"kind": "magnitude", "quantize": {"bits": 3, "symmetric": True}},
    }
    config_file = write_config(tmp_path / "quantized.yaml", config)
    result = snakemake(
        "-n", "-p", "--until", "prune", "--configfile", config_file, workdir=tmp_path
    )
    planned = [
        planned_spec(line)[0] for line in result.stdout.splitlines() if "dpruner prune" in line
    ]
    quantizers = {
        spec.method: (spec.quantize_bits, spec.group_size, spec.symmetric) for spec in planned
    }
    assert quantizers == {"sparsegpt": (4, 128, False), "magnitude": (3, None, True)}
    # A group size SparseGPT's column blocks cannot hold stops the plan, naming the key.
    config["methods"]["sparsegpt-q4"]["quantize"]["group_size"] = 96
    result = snakemake(
        "-n", "--configfile", write_config(config_file, config), workdir=tmp_path, check=False
    )
    assert result.returncode != 0
    assert "methods.sparsegpt-q4.quantize: quantization group size 96" in result.stderr


def test_ablations_are_config_entries(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    dpruner = config["methods"]["dpruner"]
    config["methods"] = {
        "dpruner-general": {**dpruner, "scores": "general"},
        "dpruner-nolambda": {**dpruner, "lambda": 0},
    }
    counts = dry_run(write_config(tmp_path / "ablations.yaml", config), tmp_path)
    # General-only: one model masked by G (no fine-tuning); lambda = 0: fine-tuning per domain.
    assert counts["general_importance"] == 1
    assert counts["domain_scores"] == 2
    assert counts["prune"] == 1 + 2
    assert counts["evaluate"] == 1 + 3


def planned_prunes(config: dict, workdir: Path) -> tuple[str, dict]:
    """A dry run's output until prune, and every prune job's (spec, parsed arguments) by the
    pruned model's id."""
    config_file = write_config(workdir / "methods.yaml", config)
    result = snakemake("-n", "-p", "--until", "prune", "--configfile", config_file, workdir=workdir)
    output = result.stdout + result.stderr
    commands = {}
    for line in output.splitlines():
        if "dpruner prune" in line:
            spec, args = planned_spec(line)
            commands[Path(args.out).name] = (spec, args)
    return output, commands


def test_mixed_and_reconstructing_methods_pass_their_calibration_to_prune(tmp_path):
    from dpruner.config import schema_default

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    dpruner = config["methods"]["dpruner"]
    config["methods"] = {
        "dpruner": dpruner,
        "wanda-mixed": {"kind": "wanda", "calibration": "mixed"},
        "sparsegpt-mixed": {"kind": "sparsegpt", "calibration": "mixed", "domain_share": 0.25},
        "dpruner-rec": {**dpruner, "reconstruct": "domain"},
        "dpruner-recmix": {**dpruner, "reconstruct": "mixed", "domain_share": 0.75},
    }
    output, commands = planned_prunes(config, tmp_path)
    # The reconstructing variants mask by the scores of `dpruner`: one fine-tuning per domain.
    assert job_counts(output)["domain_scores"] == 2
    data = "results/run/data/smollm2-135m"
    general = f"{data}/general/calibration.pt"
    for domain in ("medical", "legal"):
        scores = f"scores/smollm2-135m/{domain}/domain_scores_dpruner_s0.5.safetensors"

        def planned(method, domain=domain):
            return commands[f"{method}_{domain}_s0.5_unstructured"]

        for method, share in (
            ("wanda-mixed", schema_default("domain_share")),
            ("sparsegpt-mixed", 0.25),
            ("dpruner-recmix", 0.75),
        ):
            spec, args = planned(method)
            assert (args.calibration, args.general_calibration, spec.domain_share) == (
                f"{data}/{domain}/calibration.pt",
                general,
                share,
            )
        spec, args = planned("dpruner-rec")
        assert args.calibration == f"{data}/{domain}/calibration.pt" and spec.reconstruct
        assert args.general_calibration is None
        for method in ("dpruner", "dpruner-rec", "dpruner-recmix"):
            assert planned(method)[1].scores.endswith(scores)
        spec, args = planned("dpruner")
        assert args.calibration is None and not spec.reconstruct
    assert len(commands) == 10


def test_new_methods_pass_their_options_and_calibration_to_prune(tmp_path):
    from dpruner.config import schema_default

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    dpruner = config["methods"]["dpruner"]
    config["hessian_dtype"] = "float32"
    config["methods"] = {
        "ria": {"kind": "ria"},
        "dsnot": {"kind": "dsnot", "initial": "sparsegpt", "skip": []},
        "wanda-owl": {"kind": "wanda", "allocation": "owl", "owl_lambda": 0.05},
        "sparsegpt-cross": {"kind": "sparsegpt", "calibration": "cross", "coefficient": 0.3},
        "dpruner": dpruner,
        "dpruner-owl": {**dpruner, "allocation": "owl"},
    }
    output, commands = planned_prunes(config, tmp_path)
    # dpruner-owl masks by the scores of `dpruner` (same fine-tuning): one fine-tuning per domain.
    assert job_counts(output)["domain_scores"] == 2
    # ria, dsnot and wanda-owl on general; the cross-calibrated and D-Pruner models per domain.
    assert len(commands) == 3 + 2 * 3
    data = "results/run/data/smollm2-135m"

    def planned(method, calib="general"):
        return commands[f"{method}_{calib}_s0.5_unstructured"]

    ria, args = planned("ria")
    assert (ria.method, ria.options, args.calibration) == (
        "ria",
        {"alpha": 0.5},
        f"{data}/general/calibration.pt",
    )
    # ria builds no Hessians: the config's hessian_dtype is not its.
    assert ria.rows.hessian_dtype == schema_default("hessian_dtype")
    dsnot, args = planned("dsnot")
    assert dsnot.options == {
        "initial": "sparsegpt",
        "max_cycles": 50,
        "update_threshold": 0.1,
        "variance_power": 1,
        "same_sign": False,
        "skip": [],
    }
    assert dsnot.rows.hessian_dtype == "float32"
    owl, args = planned("wanda-owl")
    assert owl.options == {"allocation": "owl", "owl_m": 5, "owl_lambda": 0.05}
    assert owl.rows.hessian_dtype == schema_default("hessian_dtype")
    for domain in ("medical", "legal"):
        cross, args = planned("sparsegpt-cross", domain)
        assert (args.calibration, args.general_calibration) == (
            f"{data}/{domain}/calibration.pt",
            f"{data}/general/calibration.pt",
        )
        assert cross.options == {"coefficient": 0.3} and cross.domain_share is None
        plain, args = planned("dpruner", domain)
        assert args.calibration is None and plain.options == {}
        dpruner_owl, args = planned("dpruner-owl", domain)
        assert args.scores.endswith(f"{domain}/domain_scores_dpruner_s0.5.safetensors")
        assert args.calibration == f"{data}/{domain}/calibration.pt"
        assert dpruner_owl.options == {"allocation": "owl", "owl_m": 5, "owl_lambda": 0.08}
    # OWL cannot allocate under N:M: the plan stops, naming the method and key.
    config["patterns"] = ["unstructured", "2:4"]
    config_file = write_config(tmp_path / "nm.yaml", config)
    result = snakemake("-n", "--configfile", config_file, workdir=tmp_path, check=False)
    assert result.returncode != 0
    assert "methods.wanda-owl.allocation: wanda-owl: allocation owl" in result.stderr
    assert "methods.dpruner-owl.allocation" in result.stderr


def paper_local_data(workdir: Path) -> None:
    """The files paper.yaml reads locally (MedNLI, HQS, the Harrison textbook), from the hub
    fixtures in their schema, repeated to exceed the calibration counts."""
    from test_evaluation_paper_tasks import FIXTURE_OF, FIXTURES

    for path, fixture in FIXTURE_OF.items():
        if path.startswith("data/"):
            target = workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text((FIXTURES / fixture).read_text() * 300)


def test_dry_run_paper_config_stops_on_missing_local_data(tmp_path):
    result = snakemake(
        "-n", "--configfile", REPO / "config" / "paper.yaml", workdir=tmp_path, check=False
    )
    assert result.returncode != 0
    assert (
        "medical.calibration[2].source (path:data/mednli/mli_train_v1.jsonl): data file not "
        "found" in result.stderr
    )


def test_dry_run_paper_config_plans_the_full_dag_offline(tmp_path):
    paper_local_data(tmp_path)
    counts = dry_run(REPO / "config" / "paper.yaml", tmp_path)
    # Replaces config.yaml rather than merging: only the two LLaMA-2 models.
    assert counts["prepare_model"] == 2
    assert counts["prepare_data"] == 2 * 3
    assert counts["domain_scores"] == 2 * 2
    assert counts["prune"] == 2 * 5
    assert counts["evaluate"] == 2 * 6


@pytest.mark.parametrize("config", ["paper", "gpu"])
def test_slurm_profile_dry_run(tmp_path, config):
    paper_local_data(tmp_path)
    result = snakemake(
        "-n",
        "--configfile",
        REPO / "config" / f"{config}.yaml",
        "--workflow-profile",
        REPO / "profiles" / "slurm",
        workdir=tmp_path,
    )
    jobs = result.stdout.split("\nrule ")[1:]
    for rule in ("prune:", "evaluate:"):
        job = next(job for job in jobs if job.startswith(rule))
        for resource in ("slurm_partition=gpu", "gpu=1", "gpu_model=", "cpus_per_gpu=", "mem_mb="):
            assert resource in job, (rule, resource)
    prepare = next(job for job in jobs if job.startswith("prepare_data:"))
    assert "gpu=1" not in prepare


def stub_slurm(tmp_path: Path) -> tuple[dict, Path]:
    """(environment, record): a stub sbatch on PATH records its command line in `record`; the job
    then fails (stub sacct), ending the run."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch.txt"
    bin_dir.mkdir()
    stubs = {
        "sbatch": f'echo "$@" >> {record}\necho 4242',
        "sacct": 'echo "4242|FAILED"',
        "sacctmgr": "echo my-account",
        "squeue": "exit 0",
        "sinfo": "exit 0",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, record


def test_slurm_profile_passes_gpu_options_to_sbatch(tmp_path):
    env, record = stub_slurm(tmp_path)
    workdir = tmp_path / "work"
    paper_local_data(workdir)
    # Inputs of one GPU job exist, so only that job is submitted.
    results = workdir / "results" / "paper"
    (results / "models" / "llama-2-7b" / "dense").mkdir(parents=True)
    (results / ".dpruner-results").write_text("")  # as a run leaves it (the preflight checks)
    (results / "data" / "llama-2-7b" / "general").mkdir(parents=True)
    (results / "data" / "llama-2-7b" / "general" / "calibration.pt").write_text("")
    target = "results/paper/scores/llama-2-7b/general/general_importance_s0.5_norm-mean.safetensors"
    result = snakemake(
        "--configfile",
        REPO / "config" / "paper.yaml",
        "--workflow-profile",
        REPO / "profiles" / "slurm",
        "--slurm-init-seconds-before-status-checks",
        "1",
        target,
        workdir=workdir,
        env=env,
        check=False,
        timeout=300,
    )
    assert record.is_file(), result.stdout + result.stderr
    submitted = record.read_text()
    assert "--comment rule_general_importance" in submitted
    for option in ("-p gpu", "--gpus=a100:1", "--cpus-per-gpu=8", "--mem 128000", "-t 240"):
        assert option in submitted
    assert "-A my-account" in submitted


# ---------------------------------------------------------------- whole runs with the fake CLI


def fake_env(tmp_path: Path, sleep: float = 0) -> dict:
    return {
        "PYTHONPATH": str(FAKE_PACKAGE),
        "FAKE_DPRUNER_LOG": str(tmp_path / "calls.txt"),
        "FAKE_DPRUNER_SLEEP": str(sleep),
    }


def calls(tmp_path: Path, event: str) -> list[str]:
    path = tmp_path / "calls.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.split(" ", 1)[1] for line in lines if line.startswith(event + " ")]


def default_config_in(workdir: Path, **changes) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return write_config(workdir / "config.yaml", {**config, **changes})


def test_rerun_does_nothing_and_a_new_domain_schedules_only_its_jobs(tmp_path):
    workdir = tmp_path / "work"
    # Every shell path is quoted: a results folder with a space and a `;` is just a name.
    results = "my results;touch PWNED;x"
    config_file = default_config_in(workdir, results=results)
    env = fake_env(tmp_path)
    snakemake("--configfile", config_file, "--cores", "2", workdir=workdir, env=env)
    tables, plots = workdir / results / "tables", workdir / results / "plots"
    assert (tables / "main.md").is_file() and (plots / "bars_medical.png").is_file()
    assert (workdir / results / ".dpruner-results").is_file()  # a later run knows it as its own
    assert "dpruner" in (tables / "cross_domain.csv").read_text()
    assert (workdir / results / "summary.md").is_file()
    assert not (workdir / "PWNED").exists() and not (workdir / "my").exists()
    assert sorted(p.name for p in workdir.iterdir()) == [".snakemake", "config.yaml", results]

    assert dry_run(config_file, workdir) == {}

    config = yaml.safe_load(config_file.read_text())
    config["domains"].update(readme_domain())
    bigger = write_config(workdir / "bigger.yaml", config)
    # New: the domain's data, D-Pruner scores and its three domain-calibrated models (D-Pruner,
    # Wanda, SparseGPT); every model, the 10 old ones (dense + 9 pruned; the new domain is part of
    # each one's evaluation job) and the 3 new ones; then the tables, plots and summary.
    assert dry_run(bigger, workdir) == {
        "prepare_data": 1,
        "domain_scores": 1,
        "prune": 3,
        "evaluate": 10 + 3,
        "aggregate": 1,
        "plot": 1,
        "report": 1,
        "all": 1,
    }


def start_snakemake(config_file: Path, workdir: Path, env: dict) -> subprocess.Popen:
    """A one-core run in the background, in a session of its own (to signal it as a group)."""
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    return subprocess.Popen(
        [*command, "--configfile", str(config_file), "--cores", "1"],
        env={**os.environ, **OFFLINE, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # A test run started in the background (`make test &`) inherits SIGINT ignored, and an
        # ignored signal stays ignored across exec: give Snakemake and its jobs the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_interrupted_run_resumes_without_redoing_finished_jobs(tmp_path):
    workdir = tmp_path / "work"
    config_file = default_config_in(workdir)
    process = start_snakemake(config_file, workdir, fake_env(tmp_path, sleep=3.0))
    try:
        deadline = time.monotonic() + 120
        while len(calls(tmp_path, "done")) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        # Ctrl-C in a terminal: SIGINT to the whole process group, with a job half-way through
        # (each fake job sleeps 3 s, so a loaded machine still hits it before it finishes).
        while len(calls(tmp_path, "start")) == len(calls(tmp_path, "done")):
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    finished_before = set(calls(tmp_path, "done"))
    interrupted = set(calls(tmp_path, "start")) - finished_before
    assert interrupted, "the interruption should hit a running job"
    assert not (workdir / "results" / "run" / "tables" / "main.csv").exists()

    (tmp_path / "calls.txt").unlink()
    snakemake("--configfile", config_file, "--cores", "2", workdir=workdir, env=fake_env(tmp_path))
    rerun = set(calls(tmp_path, "start"))
    assert interrupted <= rerun
    assert not (rerun & finished_before)
    for metrics in (workdir / "results" / "run" / "metrics").rglob("*.json"):
        json.loads(metrics.read_text())  # no half-written file survived
    assert dry_run(config_file, workdir) == {}


def test_a_workflow_killed_hard_leaves_no_finished_looking_output(tmp_path):
    """kill -9 of Snakemake: its running job stops (it watches the workflow) and writes nothing;
    after `--unlock` the next run redoes that job."""
    workdir = tmp_path / "work"
    config_file = default_config_in(workdir)
    process = start_snakemake(config_file, workdir, fake_env(tmp_path, sleep=4.0))
    try:
        deadline = time.monotonic() + 120
        while len(calls(tmp_path, "start")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()  # Snakemake alone, not its jobs
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    running = set(calls(tmp_path, "start")) - set(calls(tmp_path, "done"))
    assert len(running) == 1, "the kill should hit a running job"
    time.sleep(8)  # longer than the job would have slept: an orphan would have finished by now
    assert not (set(calls(tmp_path, "done")) & running)
    (interrupted,) = running
    step, out = interrupted.split(" ", 1)
    # The interrupted job's Snakemake output (a folder for prepare-model).
    target = {"prepare-data": f"{out}/calibration.json", "prune": f"{out}/prune.json"}.get(
        step, out
    )
    written = workdir / (f"{out}/config.json" if step == "prepare-model" else target)
    assert not written.exists()

    snakemake("--unlock", "--configfile", config_file, workdir=workdir)
    (tmp_path / "calls.txt").unlink()
    snakemake(
        "--configfile", config_file, "--cores", "2", target, workdir=workdir, env=fake_env(tmp_path)
    )
    assert written.exists()
    assert interrupted in calls(tmp_path, "done")


def planned_jobs(config: Path, workdir: Path) -> set[str]:
    """The jobs a dry run would run, each named by its log path under results/logs (without
    `.log`), or by its rule where it has no log (`all`)."""
    result = snakemake("-n", "--configfile", config, workdir=workdir)
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout + result.stderr):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            log = re.search(r"^\s+log: results/logs/(\S+)\.log$", block, re.MULTILINE)
            jobs.add(log.group(1) if log else rule.group(1))
    return jobs


def edited(config: dict, *keys, value) -> dict:
    """A copy of `config` with the entry at `keys` set to `value`."""
    copy = json.loads(json.dumps(config))
    section = copy
    for key in keys[:-1]:
        section = section[key]
    section[keys[-1]] = value
    return copy


REPORTING = {"aggregate", "plot", "report", "all"}
TINY_PRUNED = {
    "magnitude": "tiny/magnitude_none_s0.5_unstructured",
    "wanda": "tiny/wanda_general_s0.5_unstructured",
    "sparsegpt": "tiny/sparsegpt_general_s0.5_unstructured",
    "dpruner-medical": "tiny/dpruner_medical_s0.5_unstructured",
    "dpruner-legal": "tiny/dpruner_legal_s0.5_unstructured",
}


def pruned_and_evaluated(*models: str) -> set[str]:
    return {f"{step}/{TINY_PRUNED[m]}" for m in models for step in ("prune", "evaluate")}


# (what changes, the config entry, its new value, the jobs that rerun) after a run of tiny_config.
OPTION_EDITS = [
    (
        "a method option",
        ("methods", "magnitude", "group"),
        "row",
        pruned_and_evaluated("magnitude") | REPORTING,
    ),
    (
        "a method's quantizer",
        ("methods", "wanda", "quantize"),
        {"bits": 4},
        # Stored sizes are a new table as soon as a method quantizes.
        pruned_and_evaluated("wanda") | REPORTING | {"stored_size"},
    ),
    (
        "a D-Pruner fine-tuning setting",
        ("methods", "dpruner", "lambda"),
        0.2,
        {"domain_scores/tiny/medical_dpruner_s0.5", "domain_scores/tiny/legal_dpruner_s0.5"}
        | pruned_and_evaluated("dpruner-medical", "dpruner-legal")
        | REPORTING,
    ),
    (
        "a calibration setting",
        ("calibration", "nsamples"),
        3,
        # Every domain's data and what reads it: all but magnitude and the dense model.
        {f"prepare_data/tiny/{d}" for d in ("general", "medical", "legal")}
        | {"general_importance/tiny/general_s0.5_norm-mean"}
        | {"domain_scores/tiny/medical_dpruner_s0.5", "domain_scores/tiny/legal_dpruner_s0.5"}
        | pruned_and_evaluated("wanda", "sparsegpt", "dpruner-medical", "dpruner-legal")
        | REPORTING,
    ),
    (
        "an evaluation setting",
        ("evaluation", "batch_size"),
        2,
        {"evaluate/tiny/dense", *(f"evaluate/{m}" for m in TINY_PRUNED.values())} | REPORTING,
    ),
    (
        "a domain task",
        ("domains", "legal", "tasks", 0, "limit"),
        5,
        # Every model whose evaluation runs legal's tasks: not the one pruned for medical.
        {"evaluate/tiny/dense"}
        | {f"evaluate/{TINY_PRUNED[m]}" for m in TINY_PRUNED if m != "dpruner-medical"}
        | REPORTING,
    ),
    (
        "a model's dtype",
        ("models", "tiny", "dtype"),
        "bfloat16",
        # A new dense model: everything.
        {"prepare_model/tiny", "general_importance/tiny/general_s0.5_norm-mean"}
        | {f"prepare_data/tiny/{d}" for d in ("general", "medical", "legal")}
        | {"domain_scores/tiny/medical_dpruner_s0.5", "domain_scores/tiny/legal_dpruner_s0.5"}
        | pruned_and_evaluated(*TINY_PRUNED)
        | {"evaluate/tiny/dense"}
        | REPORTING,
    ),
]


def test_an_edited_option_or_local_data_file_reruns_exactly_the_jobs_that_read_it(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    data = workdir / "data"
    data.mkdir()
    for name in ("general", "medical", "legal"):
        shutil.copy(FIXTURES / f"{name}.jsonl", data / f"{name}.jsonl")
    config = json.loads(json.dumps(tiny_config(workdir / "model")).replace(str(FIXTURES), "data"))
    config_file = write_config(workdir / "config.yaml", config)
    snakemake("--configfile", config_file, "--cores", "2", workdir=workdir, env=fake_env(tmp_path))
    assert dry_run(config_file, workdir) == {}

    # Each option a step reads is in what Snakemake compares (its params): an edit reruns exactly
    # the jobs that read it and those downstream (dry runs: the finished run stays as it is).
    for change, keys, value, expected in OPTION_EDITS:
        changed = write_config(workdir / "edited.yaml", edited(config, *keys, value=value))
        assert planned_jobs(changed, workdir) == expected, change

    time.sleep(1)  # a later modification time
    with (data / "legal.jsonl").open("a") as f:
        f.write(json.dumps({"id": "l99", "text": "new clause", "label": "permissive"}) + "\n")
    # legal.jsonl feeds legal's calibration data, perplexity and task: its data, D-Pruner's
    # scores and model for legal, and the evaluation of every model (each one's job reads legal's
    # tasks: dense, magnitude, wanda, sparsegpt, dpruner for medical and for legal); nothing else
    # of the other domains.
    assert dry_run(config_file, workdir) == {
        "prepare_data": 1,
        "domain_scores": 1,
        "prune": 1,
        "evaluate": 6,
        "aggregate": 1,
        "plot": 1,
        "report": 1,
        "all": 1,
    }


# ---------------------------------------------------------------- the real package, tiny model


def tiny_model_dir(root: Path) -> Path:
    """A random 2-layer LlamaForCausalLM with a byte-level BPE tokenizer trained on the fixtures."""
    from tiny import tiny_model, tiny_tokenizer

    texts = [
        " ".join(str(v) for v in json.loads(line).values())
        for name in ("general", "medical", "legal")
        for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()
    ]
    tokenizer = tiny_tokenizer(
        texts,
        384,
        ["<unk>", "<s>", "</s>"],
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    model = tiny_model(
        "llama",
        vocab_size=len(tokenizer),
        layers=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    out = root / "tiny-model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_config(model_dir: Path) -> dict:
    def source(name):
        return {"path": str(FIXTURES / f"{name}.jsonl")}

    def domain(name, calibration_template, ppl_field, mc, summary=None):
        tasks = [
            {
                "name": f"{name}_mc",
                "kind": "multiple_choice",
                "source": source(name),
                "template": mc[0],
                "choices": mc[1],
                "label_field": "label",
                "limit": 6,
            }
        ]
        if summary:
            tasks.append(
                {
                    "name": f"{name}_summary",
                    "kind": "summarization",
                    "source": source(name),
                    "template": summary,
                    "target_field": "title",
                    "limit": 3,
                }
            )
        return {
            "calibration": [{"source": source(name), "template": calibration_template, "count": 8}],
            "perplexity": {"source": source(name), "template": f"{{{ppl_field}}}"},
            "tasks": tasks,
        }

    general = domain(
        "general", "{text}", "text", ("Text: {text}\nTopic:", ["science", "sport", "music"])
    )
    general["calibration"][0].pop("count")
    return {
        "results": "results",
        "seed": 0,
        "device": "cpu",
        "models": {"tiny": {"path": str(model_dir), "dtype": "float32"}},
        "sparsities": [0.5],
        "patterns": ["unstructured"],
        "calibration": {"nsamples": 4, "seqlen": 32, "eval_fraction": 0.25},
        "general": general,
        "domains": {
            "medical": domain(
                "medical",
                "Title: {title}\nAbstract: {abstract}",
                "abstract",
                ("Abstract: {abstract}\nSection:", ["background", "methods", "results"]),
                summary="Abstract: {abstract}\nTitle:",
            ),
            "legal": domain(
                "legal",
                "{text}",
                "text",
                ("Clause: {text}\nCategory:", ["permissive", "copyleft", "commercial"]),
            ),
        },
        "evaluation": {
            "perplexity": {"window": 32, "stride": 32, "max_tokens": 256, "bos": "none"},
            "max_prompt_tokens": 64,
            "generation": {"max_new_tokens": 4, "do_sample": False},
            "batch_size": 4,
        },
        "methods": {
            "magnitude": {"kind": "magnitude", "group": "matrix"},
            "wanda": {"kind": "wanda", "calibration": "general"},
            "sparsegpt": {"kind": "sparsegpt", "calibration": "general"},
            "dpruner": {
                "kind": "dpruner",
                "lambda": 0.1,
                "lr": 0.03,
                "epochs": 1,
                "batch_size": 2,
                "max_length": 32,
                "clip": "one_pass",
                "normalize": "mean",
                "group": "matrix",
            },
        },
    }


def run_tiny(config_file: Path, workdir: Path, **kwargs) -> None:
    """A real run of the whole DAG on two cores; on a failure, the tails of the jobs' logs."""
    result = snakemake(
        "--configfile", config_file, "--cores", "2", workdir=workdir, check=False, **kwargs
    )
    if result.returncode != 0:
        logs = sorted((workdir / "results" / "logs").rglob("*.log"))
        tails = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in logs if p.stat().st_size)
        pytest.fail(f"tiny run failed:\n{result.stderr[-4000:]}\n{tails}")


@pytest.mark.slow
def test_tiny_end_to_end_run_of_the_whole_dag(tmp_path):
    config = tiny_config(tiny_model_dir(tmp_path))
    # General importance and pruning stream the blocks (the real --stream-blocks steps).
    config["models"]["tiny"]["stream_blocks"] = True
    config_file = write_config(tmp_path / "tiny.yaml", config)
    workdir = tmp_path / "work"
    run_tiny(config_file, workdir)
    results = workdir / "results"
    for stem in ("main", "main_change", "cross_domain"):
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{stem}.{ext}").stat().st_size > 0
    for name in ("bars_general", "bars_medical", "bars_legal", "benchmarks"):
        assert (results / "plots" / f"{name}.png").stat().st_size > 0
    main = (results / "tables" / "main.csv").read_text()
    for method in ("dense", "magnitude", "wanda", "sparsegpt", "dpruner"):
        assert method in main
    # A model pruned for medical: its tasks on medical and general, legal by perplexity only.
    metrics = workdir / "results" / "metrics"
    specialised = next(metrics.glob("*/dpruner_medical_*"))
    tasks = {p.stem: json.loads(p.read_text())["tasks"] for p in specialised.glob("*.json")}
    assert tasks["legal"] == {} and tasks["medical"] and tasks["general"]
    assert all(json.loads(p.read_text())["tasks"] for p in metrics.glob("*/dense/*.json"))
    reports = [json.loads(p.read_text()) for p in (results / "models").rglob("prune.json")]
    # magnitude, Wanda, SparseGPT and D-Pruner for each domain
    assert len(reports) == 5 and all(report["stream_blocks"] for report in reports)
    assert dry_run(config_file, workdir) == {}
    shutil.rmtree(workdir / "results" / "models")  # the largest files; tmp_path is kept a while


def test_every_sparsity_plans_its_own_jobs_at_its_exact_value(tmp_path):
    # 0.5 and 0.5000001 were one job (`{:g}`), 1e-05 missed the wildcard `0\.[0-9]+`.
    config = tiny_config(tmp_path / "model")
    config["sparsities"] = [0.5, 0.5000001, 1e-05]
    config_file = write_config(tmp_path / "sparsities.yaml", config)
    result = snakemake("-n", "-p", "--configfile", config_file, workdir=tmp_path)
    counts = job_counts(result.stdout)
    # Per sparsity: magnitude, Wanda and SparseGPT once, D-Pruner per domain (2).
    assert (counts["prune"], counts["general_importance"], counts["domain_scores"]) == (15, 3, 6)
    lines = result.stdout.splitlines()
    planned = {planned_spec(line)[0].sparsity for line in lines if "dpruner prune " in line}
    assert planned == {0.5, 0.5000001, 1e-05}
    for token in ("0.5", "0.5000001", "0.00001"):
        assert f"pruned/magnitude_none_s{token}_unstructured" in result.stdout


def test_a_braced_results_folder_stops_the_plan_and_a_braced_model_path_plans(tmp_path):
    config = tiny_config(tmp_path / "models" / "{x}")
    assert dry_run(write_config(tmp_path / "braces.yaml", config), tmp_path)["aggregate"] == 1
    config["results"] = "out/{x}"
    config_file = write_config(tmp_path / "braces.yaml", config)
    result = snakemake("-n", "--configfile", config_file, workdir=tmp_path, check=False)
    assert result.returncode != 0
    assert "results: 'out/{x}' holds a brace, which Snakemake would read" in result.stderr
