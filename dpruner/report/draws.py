"""Calibration draws (`calibration.draws`): how much a result moves when only the calibration
data is drawn again.

A run with several draws prunes every calibrated model once per draw (draw d: seed + d for the
calibration windows, D-Pruner's instances and mixed rows; `dpruner.plan.calibration_set`) and
evaluates each on the same evaluation sets. Every table shows draw 0, the run of one draw; this
module adds each value's range over the draws next to its bootstrap interval, and each
leaderboard rank's range over the draws. The bootstrap interval measures the evaluation sample;
the range over draws measures the calibration sample, which the interval does not see.
"""

from __future__ import annotations

import pandas as pd

from dpruner.plan import NO_CALIBRATION
from dpruner.report.leaderboard import SETTING, distinct_main_values, leaderboard_table
from dpruner.specs import Intervals

# What identifies a value across draws: a model's variant without its draw.
SPREAD_KEY = ["model", "method", "calibration", "sparsity", "pattern", "domain", "task", "metric"]
SPREAD_COLUMNS = [
    *SPREAD_KEY,
    "draws",
    "value",
    "low",
    "high",
    "draw_min",
    "draw_max",
    "draw_range",
    "range_over_interval",
]
BOARD_KEY = [*SETTING, "task", "metric", "method"]


def draw_count(long: pd.DataFrame) -> int:
    """The number of calibration draws of a run's values (1 when no model has a second)."""
    return int(long["draw"].max()) + 1


def first_draw(long: pd.DataFrame) -> pd.DataFrame:
    """Draw 0's values, without the draw column: what every table shows."""
    return long[long["draw"] == 0].drop(columns="draw").reset_index(drop=True)


def at_draw(long: pd.DataFrame, draw: int) -> pd.DataFrame:
    """The run as draw `draw` saw it: its calibrated models, and the dense and uncalibrated
    models (one each, the same at every draw)."""
    chosen = (long["draw"] == draw) | (long["calibration"] == NO_CALIBRATION)
    return long[chosen].drop(columns="draw").reset_index(drop=True)


def draw_spread_table(long: pd.DataFrame) -> pd.DataFrame:
    """Per value of the domains' main columns (`intervals.main_columns`) that has an interval
    and was measured at several draws: draw 0's value and bootstrap interval, the lowest and
    highest value over the draws, their range, and the range as a multiple of the interval's
    width (above 1: the calibration draw moves the value more than the evaluation sample's
    uncertainty spans). General text's general perplexity, its own perplexity again, is left
    out, as in the leaderboard. `long` carries the draw column and the intervals
    (`intervals.with_intervals`)."""
    shown = distinct_main_values(long)
    shown = shown[shown["low"].notna()]
    rows = []
    for key, group in shown.groupby(SPREAD_KEY, sort=False):
        if group["draw"].nunique() < 2:
            continue
        first = group[group["draw"] == 0].iloc[0]
        low, high = group["value"].min(), group["value"].max()
        width = first["high"] - first["low"]
        rows.append(
            {
                **dict(zip(SPREAD_KEY, key, strict=True)),
                "draws": group["draw"].nunique(),
                "value": first["value"],
                "low": first["low"],
                "high": first["high"],
                "draw_min": low,
                "draw_max": high,
                "draw_range": high - low,
                "range_over_interval": (high - low) / width if width > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows).reindex(columns=SPREAD_COLUMNS)


def leaderboard_with_draws(long: pd.DataFrame, units: dict, settings: Intervals) -> pd.DataFrame:
    """`leaderboard_table` of draw 0; with several draws, each row also gets the range of its
    rank and of its value over the leaderboards of every draw (rank_low, rank_high, value_low,
    value_high), so that a reader sees whether a ranking survives another calibration draw."""
    board = leaderboard_table(first_draw(long), units, settings)
    draws = draw_count(long)
    if draws == 1 or board.empty:
        return board
    boards = [
        board,
        *(leaderboard_table(at_draw(long, d), units, settings) for d in range(1, draws)),
    ]
    every = pd.concat(boards, ignore_index=True)
    ranges = every.groupby(BOARD_KEY, sort=False).agg(
        rank_low=("rank", "min"),
        rank_high=("rank", "max"),
        value_low=("value", "min"),
        value_high=("value", "max"),
    )
    return board.merge(ranges.reset_index(), on=BOARD_KEY, how="left").assign(draws=draws)


def draws_note(spread: pd.DataFrame, draws: int) -> str:
    """The main tables' note on the draws: how many, and the value that moved most relative
    to its interval."""
    if draws == 1:
        return ""
    note = (
        f"Calibration draws: {draws} (`calibration.draws`; draw d drawn with seed + d). Every "
        "table shows draw 0; draw_spread.md gives each value's range over the draws next to its "
        "bootstrap interval, and leaderboard.md each rank's range."
    )
    widest = spread.dropna(subset=["range_over_interval"])
    if not widest.empty:
        top = widest.loc[widest["range_over_interval"].idxmax()]
        note += (
            f" The widest: {top['method']} ({top['calibration']}) on {top['domain']} "
            f"{top['task']} {top['metric']}, {top['draw_min']:.4g} to {top['draw_max']:.4g} over "
            f"the draws against draw 0's interval [{top['low']:.4g}, {top['high']:.4g}] "
            f"({top['range_over_interval']:.2f} interval widths); the median value moved "
            f"{widest['range_over_interval'].median():.2f} interval widths."
        )
    return note + "\n\n"
