"""dpruner.report on hand-made metrics files: tables, relative change, cross-domain, plots."""

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from dpruner.cli import main
from dpruner.errors import DprunerError
from dpruner.io import FILES_LEDGER
from dpruner.report.aggregate import aggregate
from dpruner.report.collect import (
    GENERAL_PERPLEXITY,
    PERPLEXITY,
    collect,
    parse_variant,
    read_metrics,
)
from dpruner.report.formatting import write_benchmark_tables
from dpruner.report.plots import (
    change_figure,
    frontier_figure,
    off_scale,
    pareto_optimal,
    place_labels,
    plot,
)
from dpruner.report.summary import summary
from dpruner.report.tables import cross_domain_table, main_table
from dpruner.specs import Intervals, aggregate_spec

FIXTURES = Path(__file__).parent / "fixtures" / "workflow"
REPO = Path(__file__).resolve().parent.parent

# The evaluator's layout: perplexity per corpus, tasks with their metrics under "metrics".
NESTED = {
    "model": "results/models/m/dense",
    "domain": "medical",
    "perplexity": {"domain": {"ppl": 20.0, "ppl_ref": 21.0}, "general": {"ppl": 10.0}},
    "tasks": {
        "med_mc": {"kind": "multiple_choice", "metrics": {"acc": 0.5, "macro_f1": 0.4}},
        "med_sum": {
            "kind": "summarization",
            "metrics": {"rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.2},
        },
    },
}


def flat(ppl: float, general: float, acc: float) -> dict:
    """The other accepted shape: numbers at the top, one flat dict of metrics per task."""
    return {
        "perplexity": ppl,
        "general_perplexity": general,
        "metrics": {"med_mc": {"accuracy": acc, "f1_macro": acc - 0.1, "acc_stderr,none": 0.01}},
    }


def write(root, variant: str, domain: str, data: dict):
    path = root / "metrics" / "m" / variant / f"{domain}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def metrics_files(tmp_path):
    legal = {"perplexity": {"domain": {"ppl": 30.0}, "general": {"ppl": 10.0}}, "tasks": {}}
    general = {"perplexity": {"domain": {"ppl": 10.0}}, "tasks": {"topic": {"acc": 0.6}}}
    files = [
        write(tmp_path, "dense", "medical", NESTED),
        write(tmp_path, "dense", "legal", legal),
        write(tmp_path, "dense", "general", general),
        write(tmp_path, "magnitude_none_s0.5_unstructured", "medical", flat(40.0, 20.0, 0.3)),
        write(tmp_path, "magnitude_none_s0.5_unstructured", "legal", flat(60.0, 20.0, 0.3)),
        write(tmp_path, "magnitude_none_s0.5_unstructured", "general", flat(20.0, 20.0, 0.3)),
    ]
    for pruned_for in ("medical", "legal"):
        variant = f"dpruner_{pruned_for}_s0.5_2of4"
        for domain, ppl in (("medical", 25.0), ("legal", 35.0), ("general", 12.0)):
            own = 5.0 if domain == pruned_for else 0.0
            files.append(write(tmp_path, variant, domain, flat(ppl - own, 12.0, 0.45)))
    return files


def test_parse_variant():
    assert parse_variant("dpruner_medical_s0.52_2of4") == {
        "method": "dpruner",
        "calibration": "medical",
        "draw": 0,
        "sparsity": 0.52,
        "pattern": "2:4",
    }
    drawn = parse_variant("dpruner_medical+2_s0.52_2of4")
    assert (drawn["calibration"], drawn["draw"]) == ("medical", 2)
    assert parse_variant("dense")["method"] == "dense"
    with pytest.raises(DprunerError, match="no_such"):
        parse_variant("no_such")


def test_read_metrics_nested_and_flat(tmp_path):
    rows = read_metrics(write(tmp_path, "dense", "medical", NESTED))
    values = {(r["task"], r["metric"]): r["value"] for r in rows}
    assert values[PERPLEXITY, "ppl"] == 20.0
    assert values[GENERAL_PERPLEXITY, "ppl"] == 10.0
    assert values["med_mc", "accuracy"] == 0.5
    assert values["med_sum", "rougeL"] == 0.2
    assert ("med_mc", "kind") not in values

    rows = read_metrics(write(tmp_path, "wanda_general_s0.5_unstructured", "x", flat(1, 2, 0.7)))
    values = {(r["task"], r["metric"]): r["value"] for r in rows}
    assert values == {
        (PERPLEXITY, "ppl"): 1.0,
        (GENERAL_PERPLEXITY, "ppl"): 2.0,
        ("med_mc", "accuracy"): 0.7,
        ("med_mc", "macro_f1"): pytest.approx(0.6),
    }
    assert {r["method"] for r in rows} == {"wanda"}


def test_reads_the_evaluators_output(tmp_path):
    """A metrics file written by `python -m dpruner evaluate` (SmolLM2, dense, medical)."""
    real = json.loads((FIXTURES / "metrics_from_evaluator.json").read_text())
    long = collect([write(tmp_path, "dense", "medical", real)])
    values = {(r.task, r.metric): r.value for r in long.itertuples()}
    assert values[PERPLEXITY, "ppl"] == real["perplexity"]["domain"]["ppl"]
    assert values[GENERAL_PERPLEXITY, "ppl"] == real["perplexity"]["general"]["ppl"]
    assert (
        values["medical_section", "macro_f1"]
        == real["tasks"]["medical_section"]["metrics"]["macro_f1"]
    )
    assert ("medical_title", "rougeL") in values
    columns = {(task, metric) for _, task, metric in main_table(long).columns}
    assert ("medical_section", "majority_prediction_share") not in columns


def test_main_table_uses_each_domains_own_model(metrics_files):
    table = main_table(collect(metrics_files))
    assert list(table.index.get_level_values("method")) == ["dense", "magnitude", "dpruner"]
    dpruner = table.xs("dpruner", level="method").iloc[0]
    # The model pruned for medical in the medical columns, the one for legal in the legal ones.
    assert dpruner["medical", PERPLEXITY, "ppl"] == 20.0
    assert dpruner["legal", PERPLEXITY, "ppl"] == 30.0
    # A domain-specific model has no single general-domain row.
    assert pd.isna(dpruner["general", PERPLEXITY, "ppl"])
    domains = list(dict.fromkeys(table.columns.get_level_values("domain")))
    assert domains == ["general", "medical", "legal"]


def window_perplexity(nll: list[float], tokens: list[int]) -> dict:
    """A metrics file's `perplexity` section from per-window NLL sums and token counts."""
    import math

    return {
        "domain": {
            "ppl": math.exp(sum(nll) / sum(tokens)),
            "window_nll": nll,
            "window_tokens": tokens,
        }
    }


def with_units(ppl_scale: float, predicted_shift: int, n: int = 200) -> dict:
    """A metrics file with per-window NLL and per-item scores: `ppl_scale` multiplies the
    perplexity of every window; `predicted_shift` items more are answered wrong."""
    import math

    tokens = [50 + i % 7 for i in range(n)]
    nll = [t * (2.0 + (i % 5) * 0.1 + math.log(ppl_scale)) for i, t in enumerate(tokens)]
    items = [
        {"id": str(i), "gold": i % 3, "predicted": i % 3 if i % 2 and i >= predicted_shift else 0}
        for i in range(n)
    ]
    acc = sum(item["gold"] == item["predicted"] for item in items) / n
    return {
        "perplexity": window_perplexity(nll, tokens),
        "tasks": {"mc": {"kind": "multiple_choice", "metrics": {"acc": acc}, "per_item": items}},
    }


def test_every_value_has_an_interval_and_a_paired_change_against_dense(tmp_path):
    from dpruner.intervals import load_units, with_intervals

    files = [
        write(tmp_path, "dense", "medical", with_units(1.0, 0)),
        write(tmp_path, "magnitude_none_s0.5_unstructured", "medical", with_units(1.05, 0)),
        write(tmp_path, "wanda_general_s0.5_unstructured", "medical", with_units(1.0, 0)),
    ]
    long = with_intervals(collect(files), load_units(files), Intervals())
    rows = long.set_index(["method", "task", "metric"])
    dense_ppl = rows.loc[("dense", PERPLEXITY, "ppl")]
    assert dense_ppl["low"] < dense_ppl["value"] < dense_ppl["high"]
    assert dense_ppl["units"] == 200 and pd.isna(dense_ppl["change"])
    # Every window 5 % worse: the paired change finds exactly that, with a narrow interval.
    magnitude = rows.loc[("magnitude", PERPLEXITY, "ppl")]
    assert magnitude["change"] == pytest.approx(5.0)
    assert magnitude["change_low"] == pytest.approx(5.0) and magnitude["significant"]
    # The same answers as dense: no change, not significant.
    same = rows.loc[("wanda", "mc", "accuracy")]
    assert same["change"] == 0 and not same["significant"]
    assert (
        rows.loc[("dense", "mc", "accuracy"), "high"] > rows.loc[("dense", "mc", "accuracy"), "low"]
    )


def test_best_baseline_is_the_best_of_the_configured_baselines(tmp_path):
    from dpruner.config import baseline_methods
    from dpruner.intervals import best_baseline_table, load_units, with_intervals

    files = [
        write(tmp_path, "dense", "medical", with_units(1.0, 0)),
        write(tmp_path, "wanda_medical_s0.5_unstructured", "medical", with_units(1.10, 0)),
        write(
            tmp_path, "sparsegpt-mixed_medical_s0.5_unstructured", "medical", with_units(1.02, 0)
        ),
        write(tmp_path, "dpruner_medical_s0.5_unstructured", "medical", with_units(1.21, 0)),
    ]
    units = load_units(files)
    long = with_intervals(collect(files), units, Intervals())
    methods = {
        "wanda": {"kind": "wanda", "calibration": "domain"},
        "sparsegpt-mixed": {"kind": "sparsegpt", "calibration": "mixed"},
        "dpruner": {"kind": "dpruner"},
    }

    def against(config: dict) -> pd.Series:
        table = best_baseline_table(long, units, Intervals(), baseline_methods(config))
        ppl = table[table["task"] == PERPLEXITY].set_index("method")
        return ppl["best_baseline"] + " " + ppl["change"].round(3).astype(str)

    # Default: the mixed-calibrated method is a candidate, not a baseline, though it is best.
    default = against({"methods": methods})
    assert default.to_dict() == {"sparsegpt-mixed": "wanda -7.273", "dpruner": "wanda 10.0"}
    named = against({"methods": methods, "baselines": ["sparsegpt-mixed", "wanda"]})
    assert named.to_dict() == {
        "wanda": "sparsegpt-mixed 7.843",
        "dpruner": "sparsegpt-mixed 18.627",
    }


def test_best_baseline_is_chosen_per_sparsity_and_pattern(tmp_path):
    from dpruner.intervals import best_baseline_table, load_units, with_intervals
    from dpruner.report.formatting import paired_markdown

    files = [
        write(tmp_path, "dense", "medical", with_units(1.0, 0)),
        write(tmp_path, "wanda_medical_s0.3_unstructured", "medical", with_units(1.01, 0)),
        write(tmp_path, "wanda_medical_s0.7_unstructured", "medical", with_units(1.5, 0)),
        write(tmp_path, "dpruner_medical_s0.7_unstructured", "medical", with_units(1.2, 0)),
        write(tmp_path, "dpruner_medical_s0.3_unstructured", "medical", with_units(1.0, 0)),
    ]
    units = load_units(files)
    long = with_intervals(collect(files), units, Intervals())
    table = best_baseline_table(long, units, Intervals(), ["wanda"])
    ppl = table[table["task"] == PERPLEXITY].set_index("sparsity")
    # Each against Wanda at its own sparsity (0.7: 1.2 / 1.5), not the 0.3 model with the best
    # value of all.
    assert sorted(ppl.index) == [0.3, 0.7]
    assert (ppl["best_value"] / ppl["value"]).round(3).to_dict() == {0.3: 1.01, 0.7: 1.25}
    assert ppl.loc[0.7, "change"] == pytest.approx(-20.0)
    page = paired_markdown(table, "best_baseline", "best_value", "intro")
    assert "| sparsity" in page and "| 0.7" in page


def test_quantized_models_are_compared_with_their_16_bit_twins(tmp_path):
    from dpruner.config import unquantized_twins
    from dpruner.intervals import load_units, unquantized_table, with_intervals

    files = [
        write(tmp_path, "dense", "medical", with_units(1.0, 0)),
        write(tmp_path, "wanda_medical_s0.5_unstructured", "medical", with_units(1.10, 0)),
        write(tmp_path, "wanda-q4_medical_s0.5_unstructured", "medical", with_units(1.21, 0)),
        write(tmp_path, "magnitude-q4_none_s0.5_unstructured", "medical", with_units(1.5, 0)),
    ]
    units = load_units(files)
    long = with_intervals(collect(files), units, Intervals())
    quantize = {"bits": 4, "group_size": 128}
    methods = {
        "wanda": {"kind": "wanda", "calibration": "domain"},
        "wanda-q4": {"kind": "wanda", "calibration": "domain", "quantize": quantize},
        # Its options differ from every 16-bit method's by more than `quantize`: no twin.
        "magnitude-q4": {"kind": "magnitude", "group": "row", "quantize": quantize},
        "magnitude": {"kind": "magnitude", "group": "matrix"},
    }
    twins = unquantized_twins(methods)
    assert twins == {"wanda-q4": "wanda", "magnitude-q4": None}

    table = unquantized_table(long, units, Intervals(), twins)
    ppl = table[table["task"] == PERPLEXITY].set_index("method")
    assert list(ppl.index) == ["wanda-q4"]
    # Every window's perplexity is 1.21 / 1.10 = 1.1 times the twin's: +10 %, with no spread.
    assert ppl.loc["wanda-q4", "unquantized"] == "wanda"
    assert ppl.loc["wanda-q4", "change"] == pytest.approx(10.0)
    assert ppl.loc["wanda-q4", "significant"]

    config = {
        "models": {"m": {"packaged": "smollm2"}},
        "sparsities": [0.5],
        "patterns": ["unstructured"],
        "calibration": {"nsamples": 16, "seqlen": 512},
        "methods": methods,
    }
    written = aggregate(files, tmp_path / "tables", spec=aggregate_spec(config))
    assert tmp_path / "tables" / "vs_unquantized.csv" in written
    markdown = (tmp_path / "tables" / "vs_unquantized.md").read_text()
    assert "| wanda-q4 " in markdown and "| wanda (" in markdown
    # Without a quantized method there is no such table.
    unquantized = {name: options for name, options in methods.items() if "-q4" not in name}
    aggregate(files, tmp_path / "plain", spec=aggregate_spec({**config, "methods": unquantized}))
    assert not (tmp_path / "plain" / "vs_unquantized.md").exists()


def test_pareto_optimal_points_are_those_no_other_point_beats_on_both_axes():
    points = [(10, 30), (12, 20), (11, 25), (13, 21), (10, 30), (20, 5)]
    # (13, 21) is beaten by (12, 20); the duplicate (10, 30) pair beat no one and tie each other.
    assert pareto_optimal(points) == [True, True, True, False, True, True]


def overlapping(boxes) -> list[tuple]:
    return [
        (a, b)
        for a, b in itertools.combinations(boxes, 2)
        if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
    ]


def test_place_labels_keeps_every_label_apart_and_inside():
    within = (0, 0, 400, 300)
    # Ten labels on one point, three near the right edge, one at the top.
    anchors = [(100, 100)] * 10 + [(390, 50), (395, 52), (398, 49), (200, 299)]
    sizes = [(60, 10)] * len(anchors)
    boxes = place_labels(anchors, sizes, within, pad=5, avoid=[(95, 95, 105, 105)])
    assert not overlapping([*boxes, (95, 95, 105, 105)])
    assert all(min(b[:2]) >= 0 and b[2] <= 400 and b[3] <= 300 for b in boxes)
    # Near the right edge a label goes left of its point; alone, it sits right above it.
    assert all(b[2] <= x for b, (x, _) in zip(boxes[10:13], anchors[10:13], strict=True))
    assert place_labels([(10, 10)], [(60, 10)], within, pad=5) == [(15, 15, 75, 25)]
    assert place_labels(anchors, sizes, within, 5) == place_labels(anchors, sizes, within, 5)


def test_off_scale_is_a_factor_over_the_median():
    assert off_scale([30.0, 35.0, 41.0, 14.0, 354.0]) == [False, False, False, False, True]
    assert off_scale([1.0, 2.0, 3.0]) == [False, False, False]


def crowded_table(models=("m",)) -> tuple[pd.DataFrame, dict]:
    """A main table of one domain: dense, eight methods within 2 % of each other on both
    perplexities, and magnitude ten times worse; intervals +-3."""
    methods = {"dense": (14.0, 17.0), "magnitude": (354.0, 417.0)}
    methods.update({f"method-{i}": (30 + 0.1 * i, 35 - 0.05 * i) for i in range(8)})
    index = pd.MultiIndex.from_tuples(
        [(model, method, 0.5, "unstructured") for model in models for method in methods],
        names=["model", "method", "sparsity", "pattern"],
    )
    columns = pd.MultiIndex.from_tuples(
        [("medical", GENERAL_PERPLEXITY, "ppl"), ("medical", PERPLEXITY, "ppl")],
        names=["domain", "task", "metric"],
    )
    values = [methods[method] for _, method, _, _ in index]
    table = pd.DataFrame(values, index=index, columns=columns)
    change = (table / table.xs("dense", level="method", drop_level=False).iloc[0] - 1) * 100
    bounds = {"low": table - 3, "high": table + 3, "change": change}
    bounds.update(change_low=change - 10, change_high=change + 10)
    return table, bounds


def labels_of(axis) -> list:
    """Each label with its text's extent in the rendered figure (an annotation's own extent
    includes its leader line)."""
    from matplotlib.text import Text

    axis.figure.canvas.draw()
    renderer = axis.figure.canvas.get_renderer()
    return [(text, Text.get_window_extent(text, renderer)) for text in axis.texts]


def test_frontier_labels_never_overlap_and_an_outlier_sits_on_the_edge():
    import matplotlib

    matplotlib.use("Agg")
    table, bounds = crowded_table()
    axis = frontier_figure(table, "medical", bounds).axes[0]
    labels = labels_of(axis)
    assert len(labels) == 10
    assert not overlapping([tuple(extent.extents) for _, extent in labels])
    inside = axis.get_window_extent()
    assert all(inside.x0 <= e.x0 and e.x1 <= inside.x1 for _, e in labels)
    # The cluster sets linear axes; magnitude sits in their top right corner with its values.
    assert axis.get_xscale() == axis.get_yscale() == "linear"
    assert axis.get_xlim()[1] < 100
    (outlier,) = [text for text, _ in labels if text.get_text().startswith("magnitude")]
    assert outlier.get_text() == "magnitude (off scale: general 354.0, medical 417.0)"
    assert outlier.xy == (axis.get_xlim()[1], axis.get_ylim()[1])


def test_change_figure_has_a_panel_per_model_and_labels_that_never_overlap():
    import matplotlib

    matplotlib.use("Agg")
    table, bounds = crowded_table(models=("small", "large"))
    figure = change_figure(table, bounds)
    assert [axis.get_title().split(":")[0] for axis in figure.axes] == ["small", "large"]
    for axis in figure.axes:
        labels = labels_of(axis)
        assert len(labels) == 9  # no dense point: it is the reference, the dashed lines
        assert not overlapping([tuple(extent.extents) for _, extent in labels])
        texts = [text.get_text() for text, _ in labels]
        assert "magnitude, medical (off scale: general +2429%, domain +2353%)" in texts


def test_cross_domain_table(metrics_files):
    table = cross_domain_table(collect(metrics_files))
    rows = table.index.to_frame(index=False)
    assert list(rows["pruned_for"]) == ["-", "medical", "legal"]
    assert "magnitude" not in set(rows["method"])
    medical_model = table.xs("medical", level="pruned_for").iloc[0]
    assert medical_model["medical", PERPLEXITY, "ppl"] == 20.0
    assert medical_model["legal", PERPLEXITY, "ppl"] == 35.0


def test_aggregate_plot_summary(metrics_files, tmp_path):
    bench = tmp_path / "benchmarks" / "prune" / "m" / "magnitude_none_s0.5_unstructured.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\t900.1\t20.0\n")
    tables, plots = tmp_path / "tables", tmp_path / "plots"

    written = aggregate(metrics_files, tables, [bench])
    for stem in ("main", "main_change", "cross_domain"):
        for ext in ("csv", "md", "tex"):
            assert tables / f"{stem}.{ext}" in written
    main_md = (tables / "main.md").read_text()
    assert "### medical" in main_md and "20.00" in main_md
    assert "percentile bootstrap interval (2000 resamples, seed 0)" in main_md
    assert "50.0" in main_md  # accuracy in percent
    assert "\\begin{tabular}" in (tables / "main.tex").read_text()
    by_rule = pd.read_csv(tables / "benchmarks_by_rule.csv")
    assert by_rule.loc[by_rule["rule"] == "prune", "total_s"].item() == 12.5

    written = plot(tables, plots)
    names = sorted(p.name for p in written)
    assert names == [
        "bars_general.png",
        "bars_legal.png",
        "bars_medical.png",
        "benchmarks.png",
        "domain_vs_general.png",
        "frontier_legal.png",
        "frontier_medical.png",
    ]
    assert all(p.stat().st_size > 1000 for p in written)

    page = summary(tables, plots, tmp_path / "summary.md").read_text()
    assert "## Main comparison" in page and "](plots/bars_medical.png)" in page


def test_sparsity_curves_when_several_sparsities(metrics_files, tmp_path):
    extra = [
        write(tmp_path, "magnitude_none_s0.7_unstructured", domain, flat(90.0, 50.0, 0.2))
        for domain in ("medical", "legal", "general")
    ]
    aggregate(metrics_files + extra, tmp_path / "tables")
    names = {p.name for p in plot(tmp_path / "tables", tmp_path / "plots")}
    assert {"sparsity_medical.png", "sparsity_general.png"} <= names


def test_calibration_size_series_and_figure(metrics_files, tmp_path):
    from dpruner.config import calibration_size_series, load_config

    pubmed = {"source": {"corpus": "pubmed"}, "template": "{abstract}"}

    def domain(*counts, template="{abstract}"):
        entries = [{**pubmed, "template": template, "count": n} for n in counts]
        return {"calibration": entries, "perplexity": pubmed, "tasks": []}

    domains = {
        "big": domain(40),
        "small": domain(10),
        "other-template": domain(20, template="{title}"),  # differs by more than the count
        "no-count": {**domain(), "calibration": [pubmed]},
        "same-size": domain(10),
        "two-entries": domain(5, 15),  # a series of its own, sized by the sum of its counts
        "two-entries-more": domain(50, 30),
    }
    # Sorted by size; a lone domain or one without counts makes no series.
    assert calibration_size_series({"domains": domains}) == [
        {"small": 10, "same-size": 10, "big": 40},
        {"two-entries": 20, "two-entries-more": 80},
    ]
    assert calibration_size_series({"domains": {"a": domain(10), "b": domain(10)}}) == []
    study = load_config(REPO / "config" / "studies" / "calibration_size.yaml")
    assert calibration_size_series(study) == [
        {"medical-n10": 10, "medical-n20": 20, "medical-n40": 40, "medical-n160": 160}
    ]
    assert calibration_size_series(load_config(REPO / "config" / "config.yaml")) == []

    # The fixture's medical and legal share perplexity and general perplexity, not tasks: those
    # two metrics are the figure's panels.
    tables, plots = tmp_path / "tables", tmp_path / "plots"
    aggregate(metrics_files, tables)
    written = plot(tables, plots, [{"medical": 10, "legal": 40}])
    assert plots / "calibration_size_medical.png" in written
    page = summary(tables, plots, tmp_path / "summary.md").read_text()
    assert "](plots/calibration_size_medical.png)" in page


def test_cli_entry_point(metrics_files, tmp_path, capsys):
    assert (
        main(["aggregate", "--metrics", *map(str, metrics_files), "--out", str(tmp_path / "t")])
        == 0
    )
    assert (tmp_path / "t" / "main.csv").is_file()
    bad = write(tmp_path, "dense", "broken", {})
    bad.write_text("{not json")
    assert main(["aggregate", "--metrics", str(bad), "--out", str(tmp_path / "u")]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_general_perplexity_comes_from_the_variants_general_evaluation(tmp_path):
    def file(variant, domain, ppl, general=None):
        perplexity = {"domain": {"ppl": ppl}}
        if general is not None:
            perplexity["general"] = {"ppl": general}
        return write(tmp_path, variant, domain, {"perplexity": perplexity, "tasks": {}})

    pruned = "dpruner_medical_s0.5_unstructured"
    long = collect(
        [
            file("dense", "general", 10.0),
            file("dense", "medical", 20.0),
            file(pruned, "general", 14.0),
            file(pruned, "medical", 25.0),
            file(pruned, "legal", 40.0, general=99.0),
        ]
    )
    general = long[long["task"] == GENERAL_PERPLEXITY].set_index(["variant", "domain"])
    assert general["value"].to_dict() == {
        ("dense", "general"): 10.0,
        ("dense", "medical"): 10.0,
        (pruned, "general"): 14.0,
        (pruned, "medical"): 14.0,
        (pruned, "legal"): 99.0,
    }


def test_a_benchmark_table_carries_its_header_in_both_files_and_reads_back(tmp_path):
    table = pd.DataFrame({"measure": ["perplexity"], "tokens_per_s": [207.5]})
    header = ["machine: x", "command: python b.py --n 3"]
    out = tmp_path / "tables" / "bench"
    text = write_benchmark_tables(out, "A title", header, table, "BODY\n")
    assert text == "# A title\n\n- machine: x\n- command: python b.py --n 3\n\nBODY\n"
    assert (tmp_path / "tables" / "bench.md").read_text() == text
    csv = (tmp_path / "tables" / "bench.csv").read_text()
    assert csv.splitlines()[:2] == ["# machine: x", "# command: python b.py --n 3"]
    pd.testing.assert_frame_equal(pd.read_csv(out.with_suffix(".csv"), comment="#"), table)
    # No temporary left; the ledger says dpruner wrote both (dpruner.io).
    assert sorted(path.name for path in (tmp_path / "tables").iterdir()) == [
        FILES_LEDGER,
        "bench.csv",
        "bench.md",
    ]
