"""Calibration draws: each draw's data really differs while the evaluation sets stay the same,
and the report ranks draw 0 with each value's and rank's range over the draws."""

import pandas as pd
import torch
from test_leaderboard import N, metrics, write_metrics
from tiny import tiny_tokenizer

from dpruner.data.prepare import write_calibration
from dpruner.intervals import PERPLEXITY, load_units, with_intervals
from dpruner.plan import calibration_seed
from dpruner.report.aggregate import aggregate
from dpruner.report.collect import collect
from dpruner.report.draws import draw_spread_table, leaderboard_with_draws
from dpruner.specs import Intervals, prepare_data_spec

# Perplexity scale of each (model, draw): alpha best at draws 0 and 1, beaten by beta at draw 2.
SCALES = {
    ("alpha", 0): 1.0,
    ("alpha", 1): 1.02,
    ("alpha", 2): 1.3,
    ("beta", 0): 1.2,
    ("beta", 1): 1.19,
    ("beta", 2): 1.18,
}


def write_run(folder, scales) -> list:
    """Metrics files of a dense model, magnitude and the (model, draw) pairs of `scales`."""
    right = [1] * N
    models = {"dense": metrics(0.9, right), "magnitude_none_s0.5_unstructured": metrics(2.0, right)}
    for (method, draw), scale in scales.items():
        calib = "medical" if draw == 0 else f"medical+{draw}"
        models[f"{method}_{calib}_s0.5_unstructured"] = metrics(scale, right)
    return write_metrics(folder, models)


def test_the_spread_over_draws_and_the_rank_ranges_are_known_answers(tmp_path):
    files = write_run(tmp_path, SCALES)
    units = load_units(files)
    long = with_intervals(collect(files), units, Intervals())
    spread = draw_spread_table(long).set_index(["method", "task"])
    alpha = spread.loc[("alpha", PERPLEXITY)]
    ppl = long[(long["task"] == PERPLEXITY) & (long["method"] == "alpha")].set_index("draw")
    assert alpha["draws"] == 3
    assert alpha["value"] == ppl.loc[0, "value"]
    assert alpha["draw_min"] == ppl["value"].min() and alpha["draw_max"] == ppl["value"].max()
    assert alpha["draw_range"] == ppl["value"].max() - ppl["value"].min()
    width = ppl.loc[0, "high"] - ppl.loc[0, "low"]
    assert alpha["range_over_interval"] == alpha["draw_range"] / width
    # Only values with an interval (not a diagnostic such as the majority prediction's share).
    assert draw_spread_table(long)["low"].notna().all()
    # Magnitude and dense have one model each: no spread.
    assert set(spread.index.get_level_values("method")) == {"alpha", "beta"}

    board = leaderboard_with_draws(long, units, Intervals())
    rows = board[board["task"] == PERPLEXITY].set_index("method")
    # Draw 0: alpha 1st, beta 2nd, magnitude 3rd; at draw 2 beta is 1st and alpha 2nd.
    assert rows.loc["alpha", ["rank", "rank_low", "rank_high"]].tolist() == [1, 1, 2]
    assert rows.loc["beta", ["rank", "rank_low", "rank_high"]].tolist() == [2, 1, 2]
    assert rows.loc["magnitude", ["rank", "rank_low", "rank_high"]].tolist() == [3, 3, 3]
    assert rows.loc["alpha", "value_high"] == ppl["value"].max()


def test_draw_zero_alone_gives_the_tables_of_a_run_of_one_draw(tmp_path):
    drawn = write_run(tmp_path / "drawn", SCALES)
    single = write_run(tmp_path / "single", {k: v for k, v in SCALES.items() if k[1] == 0})
    aggregate(drawn, tmp_path / "drawn" / "tables")
    aggregate(single, tmp_path / "single" / "tables")
    for name in ("main.csv", "metrics_long.csv", "cross_domain.csv", "vs_best_baseline.csv"):
        assert (tmp_path / "drawn" / "tables" / name).read_bytes() == (
            tmp_path / "single" / "tables" / name
        ).read_bytes(), name
    # The leaderboard keeps draw 0's columns and adds the ranges; only the run with draws has a
    # spread table, and its main table's note names it.
    ones = pd.read_csv(tmp_path / "single" / "tables" / "leaderboard.csv")
    drawn_board = pd.read_csv(tmp_path / "drawn" / "tables" / "leaderboard.csv")
    pd.testing.assert_frame_equal(drawn_board[ones.columns], ones)
    assert {"rank_low", "rank_high", "value_low", "value_high"} <= set(drawn_board.columns)
    assert (tmp_path / "drawn" / "tables" / "draw_spread.csv").is_file()
    assert not (tmp_path / "single" / "tables" / "draw_spread.csv").exists()
    assert "Calibration draws: 3" in (tmp_path / "drawn" / "tables" / "main.md").read_text()
    assert "(draws: 1–2," in (tmp_path / "drawn" / "tables" / "leaderboard.md").read_text()


def test_each_draw_draws_other_calibration_tokens_and_instances_from_the_same_split(
    tmp_path, monkeypatch
):
    records = [
        {"id": f"{i:03d}", "text": " ".join(f"w{i}x{j}" for j in range(80))} for i in range(60)
    ]
    monkeypatch.setattr("dpruner.data.instances.load_records", lambda source: records)
    domain = {"calibration": [{"source": {"corpus": "x"}, "template": "{text}", "count": 10}]}
    config = {
        "seed": 0,
        "calibration": {"nsamples": 4, "seqlen": 16, "eval_fraction": 0.2, "draws": 3},
        "general": {"calibration": [{"source": {"corpus": "x"}, "template": "{text}"}]},
        "domains": {"medical": domain},
        "methods": {},
    }
    tokenizer = tiny_tokenizer(
        [r["text"] for r in records], vocab_size=400, special_tokens=("<s>",), bos_token="<s>"
    )
    written = {}
    for name in ("general", "general+1", "medical", "medical+1"):
        out = tmp_path / name
        spec = prepare_data_spec(config, name, calibration_seed(config, name))
        summary = write_calibration(spec, tokenizer, out)
        instances = (out / "instances.jsonl").read_text().splitlines()
        written[name] = (torch.load(out / "calibration.pt"), instances, summary)
    # Other windows of general text, other instances of the domain at draw 1...
    assert not torch.equal(written["general"][0], written["general+1"][0])
    assert set(written["medical"][1]) != set(written["medical+1"][1])
    # ...all from the calibration part: the last 20 % of ids (the evaluation part) never appear.
    held_out = {f"w{i}x0" for i in range(48, 60)}
    for _, instances, _ in written.values():
        assert not any(word in line for line in instances for word in held_out)
    assert [written[n][2]["instance_seed"] for n in ("medical", "medical+1")] == [42, 43]
