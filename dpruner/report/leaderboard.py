"""The leaderboard: per model, domain, sparsity and pattern, every pruned model of the domain's
main columns ranked on each of its metrics, with groups of methods that the paired intervals
cannot tell apart.

Ranks follow the point estimates (1 is best: lowest perplexity, highest accuracy, macro-F1 or
ROUGE-L; equal estimates share the better rank). Groups are a *compact letter display*: every
pair of methods is compared on the same units with the suite's paired bootstrap
(`intervals.compare`, the comparison of `vs_best_baseline`), and letters are assigned so that two
methods share a letter exactly when their paired interval contains no change. Why letters rather
than "tied with the best": ties need not be transitive. With A ~ B, B ~ C and A better than C, a
"group of the best" puts B with A and C below, which reads as if B beat C; letters give A `a`,
B `ab`, C `b`, so every tie reads as a tie and every letter-less pair as a difference. Pairs
are tested at the intervals' level without a multiplicity adjustment (as every paired table of
the suite). A pair whose units do not pair (different windows or items) counts as a tie: no
evidence of a difference.

A spread across calibration draws (seeds) would be a column of its own; no run has several
draws of a method yet, so there is none.
"""

from __future__ import annotations

from itertools import combinations
from string import ascii_lowercase

import pandas as pd

from dpruner.intervals import GENERAL_PERPLEXITY, compare, main_columns, units_for
from dpruner.specs import Intervals

# What a method is ranked on: perplexity (domain and general), multiple-choice accuracy and
# macro-F1, and ROUGE-L as the summary metric of a summarization task (as in the cross-domain
# table; ROUGE-1/2 stay in the main table).
LEADERBOARD_METRICS = ("ppl", "accuracy", "macro_f1", "rougeL")
SETTING = ["model", "domain", "sparsity", "pattern"]
COLUMNS = [*SETTING, "task", "metric", "method", "value", "low", "high", "rank", "group"]


def competition_ranks(values: list[float], lower_is_better: bool) -> list[int]:
    """1 for the best value, equal values sharing the better rank ("1, 2, 2, 4")."""
    signed = [v if lower_is_better else -v for v in values]
    return [1 + sum(other < v for other in signed) for v in signed]


def letter_groups(count: int, different: set[frozenset[int]]) -> list[str]:
    """Compact letter display of `count` methods, numbered best first, where `different` holds
    the pairs that differ: two methods share a letter exactly when their pair is not in
    `different`.

    Insert-absorb (Piepho 2004, Comput. Stat. Data Anal. 46): start from one group of all; for
    each differing pair, split every group holding both into a copy without one and a copy
    without the other; drop any group contained in another. Letters then follow the best
    member of each group (`a` for the group of method 0).
    """
    groups = [frozenset(range(count))] if count else []
    for pair in sorted(tuple(sorted(p)) for p in different):
        first, second = pair
        split = []
        for group in groups:
            split += [group - {second}, group - {first}] if set(pair) <= group else [group]
        groups = [
            group
            for i, group in enumerate(split)
            if not any(group < other or (group == other and j < i) for j, other in enumerate(split))
        ]
    groups.sort(key=sorted)
    letters = [""] * count
    for i, group in enumerate(groups):
        for member in group:
            # a to z, then aa to zz.
            letters[member] += ascii_lowercase[i % 26] * (i // 26 + 1)
    return letters


def _ranked(group: pd.DataFrame, units: dict, settings: Intervals) -> list[dict]:
    """One setting's models on one (task, metric): ranked, each pair compared on its units."""
    lower_is_better = group["metric"].iloc[0] == "ppl"
    group = group.sort_values("value", ascending=lower_is_better, kind="stable")
    records = group.to_dict("records")
    key = [records[0][k] for k in ("model", "domain", "task", "metric")]
    unit = [units_for(units, key[0], r["variant"], *key[1:]) for r in records]
    different = set()
    for i, j in combinations(range(len(records)), 2):
        if unit[i] is not None and unit[j] is not None:
            comparison = compare(unit[i], unit[j], settings)
            if comparison is not None and comparison["significant"]:
                different.add(frozenset((i, j)))
    ranks = competition_ranks([r["value"] for r in records], lower_is_better)
    letters = letter_groups(len(records), different)
    return [
        {**{k: r[k] for k in COLUMNS[:-2]}, "rank": rank, "group": letter}
        for r, rank, letter in zip(records, ranks, letters, strict=True)
    ]


def distinct_main_values(long: pd.DataFrame) -> pd.DataFrame:
    """The values of the domains' main columns (`intervals.main_columns`) without general
    text's general perplexity, which is its own perplexity again."""
    shown = main_columns(long)
    return shown[~((shown["domain"] == "general") & (shown["task"] == GENERAL_PERPLEXITY))]


def leaderboard_table(long: pd.DataFrame, units: dict, settings: Intervals) -> pd.DataFrame:
    """Rows: per model, domain, sparsity, pattern, task and metric (of LEADERBOARD_METRICS),
    every pruned model of the domain's main columns with its value, interval, rank and group
    letters, best first. In `general` the general perplexity is the domain's own and is left
    out."""
    shown = distinct_main_values(long)
    shown = shown[shown["metric"].isin(LEADERBOARD_METRICS) & shown["value"].notna()]
    rows = []
    for _, group in shown.groupby([*SETTING, "task", "metric"], sort=False):
        rows += _ranked(group, units, settings)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)
