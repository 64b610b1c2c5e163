"""dpruner.plan: the pruned-model id written and read back, the job lists of the committed
configs, what each kind's prune jobs read, and what each model is evaluated on."""

from itertools import product
from pathlib import Path

import pytest
import yaml

from dpruner import plan
from dpruner.config import SCHEMA, load_config, sparsity_token
from dpruner.errors import DprunerError
from dpruner.methods import PRUNERS
from dpruner.report.collect import parse_variant

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [
    REPO / "config" / "config.yaml",
    REPO / "config" / "gpu.yaml",
    REPO / "config" / "paper.yaml",
    *sorted((REPO / "config" / "studies").glob("*.yaml")),
]
# The committed methods pruned once (without calibration data, or on general text), as the
# configs' headers state them; every other committed method is pruned once per domain.
PRUNED_ONCE = {
    "magnitude": "none",
    "magnitude-q4": "none",
    "wanda": "general",
    "wanda-q4": "general",
    "sparsegpt": "general",
    "sparsegpt-q4": "general",
}
# The one committed method that fine-tunes: the other D-Pruner methods mask by its scores.
FINE_TUNED = "dpruner"


def expected_sparsity_patterns(config: dict) -> list[tuple[str, str]]:
    """Unstructured at every sparsity, then each N:M pattern at N/M (none of the committed
    configs repeats a pair)."""
    pairs = [(sparsity_token(s), "unstructured") for s in config["sparsities"]]
    pairs = pairs if "unstructured" in config["patterns"] else []
    for pattern in config["patterns"]:
        if pattern != "unstructured":
            n, m = pattern.split(":")
            pairs.append((sparsity_token(int(n) / int(m)), f"{n}of{m}"))
    return pairs


def test_pruned_ids_read_back_exactly():
    methods = ["magnitude", "wanda-domain", "dpruner-rec-mixed", "m.2", "A-b.c"]
    calibrations = ["none", "general", "medical", "medical-n160", "general+1", "medical-n160+12"]
    sparsities = [0.5, 1e-05, 1 / 3, 0.5000001, 0.9]
    patterns = ["unstructured", "2:4", "4:8", "16:32"]
    for method, calib, sparsity, pattern in product(methods, calibrations, sparsities, patterns):
        tokens = {
            "method": method,
            "calib": calib,
            "sparsity": sparsity_token(sparsity),
            "pattern": plan.pattern_token(pattern),
        }
        text = plan.pruned_id(**tokens)
        assert plan.parse_pruned_id(text) == tokens
        assert plan.pruned_id(**plan.parse_pruned_id(text)) == text
        # The report's reading: the exact sparsity and the pattern as the config writes it.
        domain, _, draw = calib.partition("+")
        assert parse_variant(text) == {
            "method": method,
            "calibration": domain,
            "draw": int(draw or 0),
            "sparsity": sparsity,
            "pattern": pattern,
        }


def test_sparsity_tokens_are_exact_and_match_the_wildcard():
    assert sparsity_token(1e-05) == "0.00001"
    assert sparsity_token(1 / 3) == "0.3333333333333333"
    assert plan.parse_pruned_id("wanda_general_s0.00001_unstructured")["sparsity"] == "0.00001"


@pytest.mark.parametrize(
    "text",
    [
        "no_such",
        "wanda_general_0.5_unstructured",
        "wanda_general_s1.5_unstructured",
        "wanda_general_s0.5_2:4",
        "wanda_general_s0.5_unstructured_x",
        "wanda-general-s0.5-unstructured",
        "dense",
    ],
)
def test_what_is_not_a_pruned_id_is_refused_by_name(text):
    with pytest.raises(DprunerError, match=f"'{text}'"):
        plan.parse_pruned_id(text)


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_job_lists_of_the_committed_configs(path):
    config = load_config(path)
    models, domains = list(config["models"]), list(config["domains"])
    pairs = expected_sparsity_patterns(config)
    assert plan.sparsity_patterns(config) == pairs
    # Every calibration set at every draw (seeds.yaml has three), draw 0 by its name alone.
    draws = range(config["calibration"].get("draws", 1))

    def drawn(names):
        return [name if d == 0 else f"{name}+{d}" for d in draws for name in names]

    jobs = [
        {"method": method, "calib": calib, "sparsity": sparsity, "pattern": pattern}
        for method in config["methods"]
        for calib in (
            ["none"]
            if PRUNED_ONCE.get(method) == "none"
            else drawn([PRUNED_ONCE[method]] if method in PRUNED_ONCE else domains)
        )
        for sparsity, pattern in pairs
    ]
    assert plan.pruned_jobs(config) == jobs
    ids = [f"{j['method']}_{j['calib']}_s{j['sparsity']}_{j['pattern']}" for j in jobs]
    assert plan.variants(config) == ["dense", *ids]
    results = config["results"]
    assert plan.metrics_files(config) == [
        f"{results}/metrics/{model}/{variant}/{domain}.json"
        for model in models
        for variant in ["dense", *ids]
        for domain in ["general", *domains]
    ]
    assert plan.prune_reports(config) == [
        f"{results}/models/{model}/pruned/{variant}/prune.json"
        for model in models
        for variant in ids
    ]
    sparsities = list(dict.fromkeys(sparsity for sparsity, _ in pairs))
    assert plan.general_importance_jobs(config) == [
        {"model": model, "domain": general, "sparsity": sparsity, "normalize": "mean"}
        for model in models
        for general in drawn(["general"])
        for sparsity in sparsities
    ]
    assert plan.domain_scores_jobs(config) == [
        {"model": model, "domain": domain, "method": FINE_TUNED, "sparsity": sparsity}
        for model in models
        for domain in drawn(domains)
        for sparsity in sparsities
    ]


def test_the_general_only_ablation_and_a_second_fine_tuning():
    config = load_config(REPO / "config" / "config.yaml")
    dpruner = config["methods"]["dpruner"]
    config["methods"] = {
        "dpruner-general": {**dpruner, "scores": "general", "normalize": "none"},
        "dpruner-nolambda": {**dpruner, "lambda": 0},
        "dpruner-row": {**dpruner, "lambda": 0, "group": "block"},
    }
    assert plan.calibrations(config, "dpruner-general") == ["general"]
    # G per normalisation; one fine-tuning per domain, shared by the methods that mask differently.
    assert plan.general_importance_jobs(config) == [
        {"model": "smollm2-135m", "domain": "general", "sparsity": "0.5", "normalize": normalize}
        for normalize in ("none", "mean")
    ]
    assert [job["method"] for job in plan.domain_scores_jobs(config)] == ["dpruner-nolambda"] * 2
    assert plan.scores_method(config["methods"], "dpruner-row") == "dpruner-nolambda"
    scores = plan.prune_inputs(config, "smollm2-135m", "dpruner-general", "general", "0.5")
    assert scores["scores"].endswith("general/general_importance_s0.5_norm-none.safetensors")


def test_every_kind_of_the_schema_has_a_discovered_pruner_that_declares_its_inputs():
    kinds = yaml.safe_load(SCHEMA.read_text())["$defs"]["method"]["properties"]["kind"]["enum"]
    assert set(kinds) == set(PRUNERS)
    # (calibration rows, Hessians, D-Pruner's scores), as each Pruner class declares them.
    assert {kind: tuple(vars(plan.kind_inputs(kind)).values()) for kind in kinds} == {
        "magnitude": (False, False, False),
        "wanda": (True, False, False),
        "sparsegpt": (True, True, False),
        "dpruner": (False, False, True),
        "ria": (True, False, False),
        "dsnot": (True, False, False),
    }
    assert {kind: list(plan.kind_options(kind)) for kind in ("ria", "dsnot", "wanda")} == {
        "ria": ["alpha"],
        "dsnot": [
            "initial",
            "max_cycles",
            "update_threshold",
            "variance_power",
            "same_sign",
            "skip",
        ],
        "wanda": [],
    }


def test_importing_the_plan_does_not_import_the_methods():
    import subprocess
    import sys

    code = (
        "import sys, dpruner.plan; print('torch' in sys.modules, 'dpruner.methods' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_prune_inputs_and_options_of_every_kind():
    config = load_config(REPO / "config" / "config.yaml")
    dpruner = config["methods"]["dpruner"]
    config["methods"] = {
        "magnitude": {"kind": "magnitude"},
        "wanda": {"kind": "wanda", "calibration": "general"},
        "sparsegpt-mixed": {"kind": "sparsegpt", "calibration": "mixed"},
        "dpruner": dpruner,
        "dpruner-rec": {**dpruner, "reconstruct": "domain"},
    }
    methods = config["methods"]
    data, scores = "results/run/data/smollm2-135m", "results/run/scores/smollm2-135m"
    model = {"model": "results/run/models/smollm2-135m/dense"}

    def inputs(method, calib):
        return plan.prune_inputs(config, "smollm2-135m", method, calib, "0.5")

    assert inputs("magnitude", "none") == model
    assert inputs("wanda", "general") == {**model, "calibration": f"{data}/general/calibration.pt"}
    assert inputs("sparsegpt-mixed", "legal") == {
        **model,
        "calibration": f"{data}/legal/calibration.pt",
        "general_calibration": f"{data}/general/calibration.pt",
    }
    domain_scores = f"{scores}/legal/domain_scores_dpruner_s0.5.safetensors"
    assert inputs("dpruner", "legal") == {**model, "scores": domain_scores}
    assert inputs("dpruner-rec", "legal") == {
        **model,
        "scores": domain_scores,
        "calibration": f"{data}/legal/calibration.pt",
    }
    hessians = [name for name, options in methods.items() if plan.uses_hessians(options)]
    assert hessians == ["sparsegpt-mixed", "dpruner-rec"]
    mixed = [name for name, options in methods.items() if plan.mixes_general(options)]
    assert mixed == ["sparsegpt-mixed"]


def test_the_new_methods_inputs_and_own_options():
    config = load_config(REPO / "config" / "config.yaml")
    dpruner = config["methods"]["dpruner"]
    config["methods"] = {
        "ria": {"kind": "ria", "alpha": 0.3},
        "dsnot": {"kind": "dsnot", "initial": "sparsegpt"},
        "wanda-cross": {"kind": "wanda", "calibration": "cross", "coefficient": 0.2},
        "dpruner-owl": {**dpruner, "allocation": "owl", "owl_m": 7},
    }
    methods = config["methods"]
    data = "results/run/data/smollm2-135m"
    assert [plan.calibrations(config, m) for m in methods] == [
        ["general"], ["general"], ["medical", "legal"], ["medical", "legal"],
    ]  # fmt: skip
    cross = plan.prune_inputs(config, "smollm2-135m", "wanda-cross", "legal", "0.5")
    assert cross["calibration"] == f"{data}/legal/calibration.pt"
    assert cross["general_calibration"] == f"{data}/general/calibration.pt"
    owl = plan.prune_inputs(config, "smollm2-135m", "dpruner-owl", "legal", "0.5")
    assert owl["calibration"] == f"{data}/legal/calibration.pt" and "scores" in owl
    # DSnoT starting from SparseGPT's saliency builds Hessians; from Wanda's (default) it does not.
    assert [m for m, options in methods.items() if plan.uses_hessians(options)] == ["dsnot"]
    assert not plan.uses_hessians({"kind": "dsnot"})
    own = {name: plan.method_options(options) for name, options in methods.items()}
    assert own["ria"] == {"alpha": 0.3}
    assert own["dsnot"] == {
        "initial": "sparsegpt", "max_cycles": 50, "update_threshold": 0.1,
        "variance_power": 1, "same_sign": False, "skip": ["mlp"],
    }  # fmt: skip
    assert own["wanda-cross"] == {"coefficient": 0.2}
    assert own["dpruner-owl"] == {"allocation": "owl", "owl_m": 7, "owl_lambda": 0.08}


def test_a_model_pruned_for_a_domain_is_evaluated_there_and_on_general_only_by_tasks():
    config = load_config(REPO / "config" / "config.yaml")
    every, perplexity = ("perplexity", "tasks"), ("perplexity",)
    for variant in ("dense", "wanda_general_s0.5_unstructured", "magnitude_none_s0.5_unstructured"):
        assert plan.evaluation_parts(config, variant) == dict.fromkeys(
            ["general", "medical", "legal"], every
        )
        assert plan.evaluation_priority(config, variant) == 1.0
    own = "dpruner_medical_s0.5_unstructured"
    assert plan.evaluation_parts(config, own) == {
        "general": every,
        "medical": every,
        "legal": perplexity,
    }
    assert plan.evaluation_priority(config, own) == 2 / 3
    assert plan.evaluated_model(config, "smollm2-135m", own) == (
        f"results/run/models/smollm2-135m/pruned/{own}/prune.json"
    )
    assert plan.evaluated_model(config, "smollm2-135m", "dense") == (
        "results/run/models/smollm2-135m/dense"
    )


def test_domain_data_is_cut_at_the_fine_tuning_length_where_matched():
    config = load_config(REPO / "config" / "config.yaml")
    assert config["calibration"]["match_dpruner"]
    assert plan.calibration_settings(config, "medical")["instance_length"] == 128
    assert "instance_length" not in plan.calibration_settings(config, "general")


def test_calibration_draws_give_every_calibrated_model_its_own_draw_of_every_input():
    config = load_config(REPO / "config" / "studies" / "seeds.yaml")
    assert config["calibration"]["draws"] == 3
    # Magnitude is pruned once; each calibrated method once per draw of its calibration sets.
    assert plan.calibrations(config, "magnitude") == ["none"]
    assert plan.calibrations(config, "wanda") == ["general", "general+1", "general+2"]
    assert plan.calibrations(config, "dpruner") == [
        "medical", "legal", "medical+1", "legal+1", "medical+2", "legal+2"
    ]  # fmt: skip
    assert [plan.calibration_seed(config, name) for name in ("general", "legal+2")] == [0, 2]
    assert plan.split_calibration_set("legal+2") == ("legal", 2)
    # Draw 2's D-Pruner reads draw 2's instances through draw 2's fine-tuning, regularised by
    # the general importance of draw 2's general windows.
    inputs = plan.prune_inputs(config, "smollm2-135m", "dpruner", "legal+2", "0.5")
    assert "/scores/smollm2-135m/legal+2/domain_scores_dpruner_s0.5" in inputs["scores"]
    scores_job = {"model": "smollm2-135m", "domain": "legal+2", "method": "dpruner"}
    assert {**scores_job, "sparsity": "0.5"} in plan.domain_scores_jobs(config)
    assert "/general+2/general_importance_s0.5" in plan.general_importance_file(
        config, "smollm2-135m", "dpruner", "0.5", "legal+2"
    )
    mixed = {**config, "methods": {"mix": {"kind": "wanda", "calibration": "mixed"}}}
    inputs = plan.prune_inputs(mixed, "smollm2-135m", "mix", "medical+1", "0.5")
    assert inputs["calibration"].endswith("data/smollm2-135m/medical+1/calibration.pt")
    assert inputs["general_calibration"].endswith("data/smollm2-135m/general+1/calibration.pt")
    # Draw 0's data settings are the run of one draw's; a later draw names its draw.
    one_draw = load_config(REPO / "config" / "config.yaml")
    assert plan.calibration_settings(config, "medical") == plan.calibration_settings(
        one_draw, "medical"
    )
    assert plan.calibration_settings(config, "medical+1")["draw"] == 1
    # A model pruned for a draw of a domain is that domain's.
    assert plan.specialised_domain(config, "dpruner_medical+1_s0.5_unstructured") == "medical"
