"""The leaderboard: ranks and compact letter groups, on synthetic paired units whose answer is
known."""

import itertools
import json
import random

import pytest
from test_report import window_perplexity

from dpruner.evaluation.metrics import macro_f1
from dpruner.intervals import PERPLEXITY, load_units, with_intervals
from dpruner.report.aggregate import aggregate
from dpruner.report.collect import collect
from dpruner.report.leaderboard import competition_ranks, leaderboard_table, letter_groups
from dpruner.specs import Intervals

N = 200


def test_competition_ranks_share_the_better_rank():
    assert competition_ranks([3.0, 1.0, 3.0, 2.0], lower_is_better=True) == [3, 1, 3, 2]
    assert competition_ranks([0.5, 0.7, 0.7, 0.1], lower_is_better=False) == [3, 1, 1, 4]


@pytest.mark.parametrize(
    "different, letters",
    [
        ({(0, 1), (0, 2)}, ["a", "b", "b"]),  # a clear winner, the other two tied
        (set(), ["a", "a", "a"]),  # a three-way tie
        ({(0, 2)}, ["a", "ab", "b"]),  # a chain: 0 ~ 1, 1 ~ 2, 0 differs from 2
        ({(0, 1), (0, 2), (1, 2)}, ["a", "b", "c"]),
        ({(0, 3), (1, 3)}, ["a", "a", "ab", "b"]),
    ],
)
def test_letter_groups_on_known_answers(different, letters):
    assert letter_groups(len(letters), {frozenset(p) for p in different}) == letters


def test_two_methods_share_a_letter_exactly_when_they_do_not_differ():
    rng = random.Random(0)
    for count in range(1, 8):
        pairs = list(itertools.combinations(range(count), 2))
        for _ in range(40):
            different = {frozenset(p) for p in pairs if rng.random() < 0.5}
            letters = letter_groups(count, different)
            for i, j in pairs:
                shared = bool(set(letters[i]) & set(letters[j]))
                assert shared == (frozenset((i, j)) not in different), (count, different)


def metrics(nll_scale: float, correct: list[int], window_noise: float = 0.0) -> dict:
    """Per-window perplexity (every window's NLL times `nll_scale`, alternate windows moved up
    and down by `window_noise`) and two multiple-choice tasks: `mc` answered right where
    `correct` says, `same` answered identically by every model."""
    tokens = [50] * N
    nll = [
        t * (2.0 + (i % 5) * 0.1) * nll_scale * (1 + window_noise * (-1) ** i)
        for i, t in enumerate(tokens)
    ]

    def task(right):
        items = [
            {"id": str(i), "gold": i % 3, "predicted": i % 3 if ok else (i + 1) % 3}
            for i, ok in enumerate(right)
        ]
        gold, predicted = [it["gold"] for it in items], [it["predicted"] for it in items]
        scores = {"acc": sum(right) / N, "macro_f1": macro_f1(gold, predicted)}
        return {"kind": "multiple_choice", "metrics": scores, "per_item": items}

    return {
        "perplexity": window_perplexity(nll, tokens),
        "tasks": {"mc": task(correct), "same": task([i % 2 for i in range(N)])},
    }


def chain() -> dict[str, list[int]]:
    """Right answers of three models on `mc`: A 110, B 100, C 90 of 200. A and C differ on 20
    items, all A's; B sits between, with 20 items each way against both, so A ~ B and B ~ C
    while A beats C."""
    shared = [i % 2 for i in range(60, N)]
    b_half = [1] * 10 + [0] * 10
    return {
        "a": [1] * 20 + [1] * 20 + [0] * 20 + shared,
        "b": b_half + [0] * 20 + [1] * 20 + shared,
        "c": [0] * 20 + [1] * 20 + [0] * 20 + shared,
    }


def write_metrics(folder, models: dict, model: str = "m") -> list:
    """One `medical` metrics file of `model` per variant of `models` (variant -> metrics) under
    `folder`."""
    paths = []
    for variant, data in models.items():
        path = folder / "metrics" / model / variant / "medical.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data))
        paths.append(path)
    return paths


def chain_models(first: str = "alpha", last: str = "gamma") -> dict:
    """Perplexity: `first` clearly best; beta and `last` about 20 % worse and tied (`last`: 1 %
    worse than beta, with 10 % noise per window); on `mc` the chain of `chain`."""
    right = chain()
    return {
        "dense": metrics(0.9, [1] * N),
        f"{first}_medical_s0.5_unstructured": metrics(1.0, right["a"]),
        "beta_medical_s0.5_unstructured": metrics(1.2, right["b"]),
        f"{last}_medical_s0.5_unstructured": metrics(1.21, right["c"], window_noise=0.1),
    }


@pytest.fixture
def files(tmp_path):
    return write_metrics(tmp_path, chain_models())


def test_leaderboard_ranks_and_groups_known_answers(files):
    units = load_units(files)
    long = with_intervals(collect(files), units, Intervals())
    board = leaderboard_table(long, units, Intervals())
    assert "dense" not in set(board["method"])

    def answer(task, metric):
        rows = board[(board["task"] == task) & (board["metric"] == metric)]
        return [(r.method, r.rank, r.group) for r in rows.itertuples()]

    assert answer(PERPLEXITY, "ppl") == [("alpha", 1, "a"), ("beta", 2, "b"), ("gamma", 3, "b")]
    assert answer("mc", "accuracy") == [("alpha", 1, "a"), ("beta", 2, "ab"), ("gamma", 3, "b")]
    assert answer("same", "accuracy") == [("alpha", 1, "a"), ("beta", 1, "a"), ("gamma", 1, "a")]
    assert answer("same", "macro_f1") == [("alpha", 1, "a"), ("beta", 1, "a"), ("gamma", 1, "a")]
    assert (board["low"] <= board["value"]).all() and (board["value"] <= board["high"]).all()


def test_aggregate_writes_the_leaderboard(files, tmp_path):
    written = aggregate(files, tmp_path / "tables")
    assert {tmp_path / "tables" / f"leaderboard.{ext}" for ext in ("csv", "md")} <= set(written)
    page = (tmp_path / "tables" / "leaderboard.md").read_text()
    assert "### medical" in page and "not told apart" in page
    # Rows in the order of the domain perplexity's ranks; accuracy in percent.
    rows = [line for line in page.splitlines() if line.startswith("| alpha")]
    assert rows == [
        "| alpha    | 1 a · 9.03  | 1 a · 55.0  | 1 a · 55.0  | 1 a · 50.0 | 1 a · 50.0 |"
    ]
    assert "| gamma    | 3 b · 14.32 | 3 b · 45.0  |" in page
