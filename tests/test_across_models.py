"""The leaderboard across models: ranks side by side, Kendall's tau-b and the best group, on
hand-made leaderboards and on the synthetic paired units of test_leaderboard."""

import hashlib
import math

import pandas as pd
import pytest
from test_leaderboard import N, chain_models, metrics, write_metrics

from dpruner.intervals import PERPLEXITY, load_units, with_intervals
from dpruner.report.across_models import agreement_table, kendall_tau_b, side_by_side
from dpruner.report.aggregate import aggregate
from dpruner.report.collect import collect
from dpruner.report.leaderboard import COLUMNS, leaderboard_table
from dpruner.report.summary import summary
from dpruner.specs import Intervals


def test_kendall_tau_b_against_a_hand_computed_value():
    # Pairs: (0,1) (0,2) (0,3) concordant, (1,3) discordant, (1,2) tied in x, (2,3) tied in y:
    # (3 - 1) / sqrt((6 - 1) * (6 - 1)) = 0.4.
    x, y = [1, 2, 2, 4], [1, 3, 2, 2]
    assert kendall_tau_b(x, y) == pytest.approx(0.4)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)


def test_kendall_tau_b_counts_ties_as_neither_order():
    assert kendall_tau_b([1, 1, 3], [1, 1, 3]) == 1.0  # equal up to their ties
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))  # one ranking orders no pair
    assert math.isnan(kendall_tau_b([1], [1]))


def board(rows: list[tuple]) -> pd.DataFrame:
    """A leaderboard of domain perplexity from (model, method, rank, group) rows."""
    return pd.DataFrame(
        [
            {
                "model": model,
                "domain": "medical",
                "sparsity": 0.5,
                "pattern": "unstructured",
                "task": PERPLEXITY,
                "metric": "ppl",
                "method": method,
                "value": 10.0 + rank,
                "rank": rank,
                "group": group,
            }
            for model, method, rank, group in rows
        ]
    ).reindex(columns=COLUMNS)


def test_side_by_side_and_agreement_over_the_methods_on_both_models():
    ranked = board(
        [
            ("m", "x", 1, "a"),
            ("m", "y", 2, "b"),
            ("m", "z", 3, "b"),
            ("m", "only_m", 4, "c"),
            ("n", "y", 1, "a"),
            ("n", "x", 1, "a"),
            ("n", "z", 3, "b"),
            ("n", "only_n", 4, "c"),
        ]
    )
    side = side_by_side(ranked)
    assert list(side["method"]) == ["x", "y", "z", "only_m", "only_n"]
    assert side["m_rank"].tolist()[:4] == [1, 2, 3, 4]
    assert side["m_group"].tolist()[:4] == ["a", "b", "b", "c"]
    assert side["n_rank"].tolist()[:3] == [1, 1, 3]
    only_m, only_n = side.iloc[3], side.iloc[4]
    assert only_m[["n_rank", "n_group", "n_value"]].isna().all()
    assert only_n[["m_rank", "m_group", "m_value"]].isna().all()
    (agreement,) = agreement_table(ranked).to_dict("records")
    # x, y, z: ranks [1, 2, 3] against [1, 1, 3]: 2 concordant pairs, one tied on n:
    # 2 / sqrt(3 * 2).
    assert agreement["methods"] == 3
    assert agreement["tau_b"] == pytest.approx(2 / math.sqrt(6))
    assert (agreement["best_a"], agreement["best_b"]) == ("x", "x y")
    assert agreement["same_best"] is False and agreement["reversed"] == 0


@pytest.fixture
def three_models(tmp_path):
    """m and `same` rank alike; `swapped` swaps alpha and gamma and also has delta, far worse
    than every other."""
    swapped = chain_models(first="gamma", last="alpha")
    swapped["delta_medical_s0.5_unstructured"] = metrics(3.0, [0] * N)
    return [
        *write_metrics(tmp_path, chain_models()),
        *write_metrics(tmp_path, chain_models(), model="same"),
        *write_metrics(tmp_path, swapped, model="swapped"),
    ]


def test_agreeing_and_swapped_models_known_answers(three_models):
    units = load_units(three_models)
    ranked = leaderboard_table(
        with_intervals(collect(three_models), units, Intervals()), units, Intervals()
    )
    agreement = agreement_table(ranked).set_index(["task", "metric", "model_a", "model_b"])

    def verdict(task, metric, a, b):
        row = agreement.loc[(task, metric, a, b)]
        return row["methods"], row["tau_b"], row["best_a"], row["best_b"], row["same_best"]

    assert verdict(PERPLEXITY, "ppl", "m", "same") == (3, 1.0, "alpha", "alpha", True)
    assert verdict(PERPLEXITY, "ppl", "m", "swapped") == (3, -1.0, "alpha", "gamma", False)
    assert verdict("mc", "accuracy", "m", "swapped") == (
        3,
        -1.0,
        "alpha beta",
        "beta gamma",
        False,
    )
    # Alpha and gamma differ on both models, in opposite orders; beta ties with one of them.
    assert agreement.loc[(PERPLEXITY, "ppl", "m", "swapped"), "reversed"] == 1
    assert agreement.loc[(PERPLEXITY, "ppl", "m", "same"), "reversed"] == 0
    # Every method answers `same` alike: no order to agree on, the same best group.
    methods, tau, *_, same_best = verdict("same", "accuracy", "m", "swapped")
    assert (methods, math.isnan(tau), same_best) == (3, True, True)


def test_aggregate_writes_the_ranks_side_by_side(three_models, tmp_path):
    written = aggregate(three_models, tmp_path / "tables")
    stem = tmp_path / "tables" / "leaderboard_models"
    assert {stem.with_suffix(".csv"), stem.with_suffix(".md")} <= set(written)
    side = pd.read_csv(stem.with_suffix(".csv"))
    ppl = side[side["task"] == PERPLEXITY].set_index("method")
    assert list(ppl.index) == ["alpha", "beta", "gamma", "delta"]
    assert ppl[["m_rank", "same_rank", "swapped_rank"]].loc["alpha"].tolist() == [1, 1, 3]
    gamma = ppl.loc["gamma", ["m_group", "same_group", "swapped_group"]]
    assert gamma.tolist() == ["b", "b", "a"]
    assert ppl.loc["delta", ["m_rank", "same_rank"]].isna().all()
    page = stem.with_suffix(".md").read_text()
    assert "Kendall's tau-b" in page and "### medical: PPL" in page
    assert (
        "| medical  | PPL      | m / swapped      | 3         | -1.00   | alpha            | gamma"
        "            | no          | 1          |"
    ) in page
    assert "| delta    | –           | –           | 4 c · 735.10 |" in page
    summary_page = summary(tmp_path / "tables", tmp_path / "plots", tmp_path / "summary.md")
    assert "## Leaderboard across models" in summary_page.read_text()


def test_one_model_writes_no_ranks_across_models_and_the_same_leaderboard(tmp_path):
    written = aggregate(write_metrics(tmp_path, chain_models()), tmp_path / "tables")
    assert not any(path.name.startswith("leaderboard_models") for path in written)
    assert not list((tmp_path / "tables").glob("leaderboard_models*"))
    summary_page = summary(tmp_path / "tables", tmp_path / "plots", tmp_path / "summary.md")
    assert "across models" not in summary_page.read_text()
    # leaderboard.csv of this fixture as written before the leaderboard across models existed.
    digest = hashlib.sha256((tmp_path / "tables" / "leaderboard.csv").read_bytes()).hexdigest()
    assert digest == "0c10d0e98cb545536cef6b4ebb365479755b774731fcd13ea4d91078f92c1fd9"
