"""The leaderboard across models: does a method's place on one model hold on another?

From the leaderboard (`leaderboard.leaderboard_table`, one ranking per model), `side_by_side`
puts each method's rank, group letters and value on every model in one row, and
`agreement_table` says, per domain, sparsity, pattern and (task, metric) and per pair of models,
how far the two rankings agree over the methods ranked on both:

- Kendall's tau-b of their ranks (`kendall_tau_b`). Tau-b rather than tau-a because equal
  point estimates share a rank: a tie is neither an agreement nor a disagreement, and tau-b
  scales by the pairs each ranking orders, so two rankings equal up to their ties score 1.
- Whether the best group is the same: the methods holding letter `a` (not told apart from the
  best by the paired intervals) on each model. Ranks inside a group are point estimates the
  intervals cannot separate, so a tau-b below 1 can come from swaps no evidence supports; the
  best group is the verdict a reader can act on.
- Reversed pairs: two methods the paired intervals tell apart on both models (no common letter
  on either), in opposite orders. Only these contradict each other with evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import pandas as pd

from dpruner.report.leaderboard import SETTING

# What one ranking is of, on every model: the leaderboard's setting without the model.
RANKING = [*SETTING[1:], "task", "metric"]
AGREEMENT_COLUMNS = [
    *RANKING,
    "model_a",
    "model_b",
    "methods",
    "tau_b",
    "best_a",
    "best_b",
    "same_best",
    "reversed",
]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings of the same items: (concordant - discordant) pairs over
    sqrt(pairs not tied in x * pairs not tied in y). NaN when either ranking orders no pair
    (fewer than two items, or all tied)."""
    concordant = discordant = tied_x = tied_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    pairs = len(x) * (len(x) - 1) // 2
    scale = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / scale if scale else float("nan")


def model_order(board: pd.DataFrame) -> list[str]:
    """The models of a leaderboard, in the order of the run (the config's)."""
    return list(dict.fromkeys(board["model"]))


def method_order(ranking: pd.DataFrame, models: list[str]) -> list[str]:
    """The methods of one ranking's leaderboard rows on every model: in the order of the first
    model's ranks, then those only on the next models in theirs."""
    ordered = ranking.assign(order=ranking["model"].map(models.index))
    return list(dict.fromkeys(ordered.sort_values(["order", "rank"], kind="stable")["method"]))


def side_by_side(board: pd.DataFrame) -> pd.DataFrame:
    """Rows: per domain, sparsity, pattern, task and metric, every method ranked on some model,
    with `<model>_rank`, `<model>_group` and `<model>_value` for each model (empty where the
    method was not run on that model); methods in the order of the first model's ranks, then
    those of the next models."""
    models = model_order(board)
    columns = [f"{m}_{field}" for m in models for field in ("rank", "group", "value")]
    rows = []
    for key, part in board.groupby(RANKING, sort=False):
        cells = {(r["model"], r["method"]): r for r in part.to_dict("records")}
        for method in method_order(part, models):
            row = {**dict(zip(RANKING, key, strict=True)), "method": method}
            for model in models:
                cell = cells.get((model, method))
                if cell:
                    row |= {f"{model}_{k}": cell[k] for k in ("rank", "group", "value")}
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=[*RANKING, "method", *columns])


def _pair_agreement(first: pd.DataFrame, second: pd.DataFrame) -> dict:
    """Agreement of one ranking on two models (leaderboard rows indexed by method), over the
    methods ranked on both."""
    shared = [m for m in first.index if m in second.index]
    ranks = [first.loc[shared, "rank"].tolist(), second.loc[shared, "rank"].tolist()]
    letters = [first.loc[shared, "group"].tolist(), second.loc[shared, "group"].tolist()]
    best = [{m for m, g in zip(shared, groups, strict=True) if "a" in g} for groups in letters]
    reversed_pairs = sum(
        all(not set(g[i]) & set(g[j]) for g in letters)
        and (ranks[0][i] - ranks[0][j]) * (ranks[1][i] - ranks[1][j]) < 0
        for i, j in combinations(range(len(shared)), 2)
    )
    return {
        "methods": len(shared),
        "tau_b": kendall_tau_b(*ranks),
        "best_a": " ".join(m for m in shared if m in best[0]),
        "best_b": " ".join(m for m in shared if m in best[1]),
        # Undefined when a model's best group holds no method ranked on both.
        "same_best": best[0] == best[1] if best[0] and best[1] else None,
        "reversed": reversed_pairs,
    }


def agreement_table(board: pd.DataFrame) -> pd.DataFrame:
    """Rows: per domain, sparsity, pattern, task and metric and per pair of models, over the
    methods ranked on both: their number, Kendall's tau-b of their ranks, each model's best
    group among them (letter `a`, space-separated), whether the two are the same, and the number
    of reversed pairs (told apart on both models, in opposite orders)."""
    models = model_order(board)
    rows = []
    for key, part in board.groupby(RANKING, sort=False):
        by_model = {m: ranked.set_index("method") for m, ranked in part.groupby("model")}
        for model_a, model_b in combinations(models, 2):
            if model_a in by_model and model_b in by_model:
                rows.append(
                    {
                        **dict(zip(RANKING, key, strict=True)),
                        "model_a": model_a,
                        "model_b": model_b,
                        **_pair_agreement(by_model[model_a], by_model[model_b]),
                    }
                )
    return pd.DataFrame(rows).reindex(columns=AGREEMENT_COLUMNS)
