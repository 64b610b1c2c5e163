"""Figures (matplotlib) of the main table and the benchmarks, and the `plot` step."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dpruner.config import sparsity_token
from dpruner.intervals import GENERAL_PERPLEXITY, PERPLEXITY
from dpruner.io import atomic_output
from dpruner.report.formatting import METRIC_LABELS, PERCENT_METRICS
from dpruner.report.tables import interval_tables, main_table

Box = tuple[float, float, float, float]
# Every figure's resolution. Scatter figures are drawn at it too, so the label extents measured to
# keep labels apart are those of the image (font hinting does not scale with resolution).
DPI = 110


def _row_labels(index: pd.MultiIndex) -> list[str]:
    """Method names, with model, pattern and sparsity only where several occur."""
    rows = index.to_frame(index=False)
    pruned = rows[rows["method"] != "dense"]
    with_model = rows["model"].nunique() > 1
    with_setting = len(pruned[["sparsity", "pattern"]].drop_duplicates()) > 1
    labels = []
    for model, method, sparsity, pattern in index:
        label = method
        if with_setting and method != "dense":
            label += f" ({pattern}, {sparsity_token(sparsity)})"
        labels.append(f"{model}: {label}" if with_model else label)
    return labels


def _scale_axis(axis, values: pd.Series, which: str = "y") -> None:
    """Log scale for perplexities spanning more than 20x (pruned models can explode), with plain
    numbers as tick labels."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    positive = values.dropna()
    positive = positive[positive > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        getattr(axis, f"set_{which}scale")("log")
        scale_axis = getattr(axis, f"{which}axis")
        scale_axis.set_major_formatter(ScalarFormatter())
        scale_axis.set_minor_formatter(NullFormatter())


def _save_figure(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        # Fixed metadata: the same numbers give the same bytes, so reruns leave git diffs quiet.
        figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    return path


def _panel_title(column: tuple) -> str:
    _, task, metric = column
    if task in (PERPLEXITY, GENERAL_PERPLEXITY):
        return f"{task} (lower is better)"
    return f"{task}: {METRIC_LABELS.get(metric, metric)} %"


def _panel_values(table: pd.DataFrame, column: tuple) -> pd.Series:
    values = table[column]
    return values * 100 if column[2] in PERCENT_METRICS else values


def _grid(count: int):
    import matplotlib.pyplot as plt

    ncols = min(count, 3)
    nrows = math.ceil(count / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat[:count])


def _error_bars(table, bounds, column) -> list[list[float]] | None:
    """matplotlib's yerr (distances below and above each value) from the interval tables."""
    if not bounds or "low" not in bounds:
        return None
    values = _panel_values(table, column)
    low = _panel_values(bounds["low"], column).astype(float)
    high = _panel_values(bounds["high"], column).astype(float)
    return [(values - low).fillna(0).clip(lower=0).tolist(), (high - values).fillna(0).tolist()]


def bar_figure(table: pd.DataFrame, domain: str, bounds: dict | None = None):
    """One panel per metric of `domain`, one bar per row of the main table, with its interval
    as an error bar."""
    columns = [c for c in table.columns if c[0] == domain]
    figure, axes = _grid(len(columns))
    labels = _row_labels(table.index)
    colours = [f"C{i}" for i in range(len(labels))]
    for axis, column in zip(axes, columns, strict=True):
        values = _panel_values(table, column).astype(float)
        axis.bar(
            range(len(labels)),
            values.fillna(0),
            color=colours,
            yerr=_error_bars(table, bounds, column),
            capsize=3,
            error_kw={"lw": 1},
        )
        axis.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        if column[2] == "ppl":
            _scale_axis(axis, values)
        axis.set_title(_panel_title(column), fontsize=9)
    figure.suptitle(f"{domain}: every method", fontsize=11)
    figure.tight_layout()
    return figure


def sparsity_figure(table: pd.DataFrame, domain: str, bounds: dict | None = None):
    """Each metric of `domain` against sparsity, one line per method (unstructured rows), with
    its interval as a band."""
    columns = [c for c in table.columns if c[0] == domain]
    figure, axes = _grid(len(columns))
    rows = table.reset_index()
    # Interval bounds by row position, as `rows` numbers them.
    bands = {n: bounds[n].reset_index(drop=True) for n in ("low", "high") if n in (bounds or {})}
    curves = rows[rows["pattern"] == "unstructured"]
    dense = rows[rows["method"] == "dense"]
    for axis, column in zip(axes, columns, strict=True):
        scale = 100 if column[2] in PERCENT_METRICS else 1
        for (model, method), points in curves.groupby(["model", "method"], sort=False):
            points = points.sort_values("sparsity")
            label = method if rows["model"].nunique() == 1 else f"{model}: {method}"
            line = axis.plot(points["sparsity"], points[column] * scale, marker="o", label=label)
            if bands:
                axis.fill_between(
                    points["sparsity"],
                    bands["low"].loc[points.index, column].astype(float) * scale,
                    bands["high"].loc[points.index, column].astype(float) * scale,
                    color=line[0].get_color(),
                    alpha=0.15,
                )
        for _, reference in dense.iterrows():
            axis.axhline(reference[column] * scale, color="k", ls="--", lw=1)
        if column[2] == "ppl":
            _scale_axis(axis, table[column])
        axis.set_xlabel("sparsity")
        axis.set_title(_panel_title(column), fontsize=9)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{domain}: metric vs sparsity", fontsize=11)
    figure.tight_layout()
    return figure


def calibration_size_figure(table: pd.DataFrame, sizes: dict[str, int], bounds: dict | None = None):
    """Each metric against the calibration size, for domains that differ only in it (`sizes`,
    {domain: instances}, config.calibration_size_series): one line per pruned model, its
    interval as a band, the dense model as a dashed line."""
    domains = [d for d in sizes if any(c[0] == d for c in table.columns)]
    panels = [
        c[1:]
        for c in table.columns
        if c[0] == domains[0] and all((d, *c[1:]) in table.columns for d in domains)
    ]
    figure, axes = _grid(len(panels))
    labels = dict(zip(table.index, _row_labels(table.index), strict=True))
    x = [sizes[d] for d in domains]
    for axis, (task, metric) in zip(axes, panels, strict=True):
        columns = [(d, task, metric) for d in domains]
        scale = 100 if metric in PERCENT_METRICS else 1
        for row in table.index:
            values = table.loc[row, columns].astype(float).to_numpy() * scale
            if row[1] == "dense":
                axis.axhline(values[0], color="k", ls="--", lw=1, label=labels[row])
                continue
            line = axis.plot(x, values, marker="o", label=labels[row])
            if bounds and "low" in bounds:
                low, high = (
                    bounds[k].loc[row, columns].astype(float) * scale for k in ("low", "high")
                )
                axis.fill_between(x, low, high, color=line[0].get_color(), alpha=0.15)
        if metric == "ppl":
            _scale_axis(axis, pd.Series(table[columns].to_numpy(float).ravel()))
        axis.set_xscale("log", base=2)
        axis.set_xticks(x, [str(n) for n in x])
        axis.set_xlabel("calibration instances")
        axis.set_title(_panel_title((None, task, metric)), fontsize=9)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{', '.join(domains)}: metric vs calibration size", fontsize=11)
    figure.tight_layout()
    return figure


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For (x, y) points where lower is better on both axes: True where no other point is at
    least as good on both and better on one."""
    return [
        not any(
            (u <= x and v <= y) and (u < x or v < y) for j, (u, v) in enumerate(points) if j != i
        )
        for i, (x, y) in enumerate(points)
    ]


# A point more than this many times its axis's median (of perplexities, or of perplexity ratios
# to dense) is drawn at the edge of the axes with its value written: magnitude pruning, ten times
# worse than the other methods, would otherwise set the scale and squeeze their cluster.
OFF_SCALE_FACTOR = 3.0
LABEL_FONT = 7
LABEL_PAD_POINTS = 5
# Domain against general perplexity change of every pruned model, one panel per model.
CHANGE_PLOT = "domain_vs_general.png"
LEADER = {"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 3}


def off_scale(values: Sequence[float], factor: float = OFF_SCALE_FACTOR) -> list[bool]:
    """True for each value (a perplexity or a ratio: positive) more than `factor` times the
    median of `values`."""
    median = statistics.median(values)
    return [value > factor * median for value in values]


def _overlap(a: Box, b: Box, gap: float) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    within: Box,
    pad: float,
    avoid: Sequence[Box] = (),
    gap: float = 1.0,
) -> list[Box]:
    """Label boxes (x0, y0, x1, y1, in pixels) that never overlap, each near its anchor point.

    A label starts `pad` above right of its anchor (below it where it would cross the top edge
    of `within`). Labels are placed one by one from the lowest anchor up, each on the first
    position, nearest first (in vertical steps of `gap`; at each, right of the anchor, then
    left: left only where right would cross the right edge), that keeps it inside `within` and
    clear of the labels placed so far and of the boxes to `avoid` (the markers); where none is
    left, above every placed label. Deterministic: the same input gives the same boxes.
    """
    boxes: list[Box | None] = [None] * len(anchors)
    placed: list[Box] = []
    order = sorted(range(len(anchors)), key=lambda i: (anchors[i][1], anchors[i][0], i))
    steps = math.ceil((within[3] - within[1]) / gap) + 1
    for i in order:
        (x, y), (width, height) = anchors[i], sizes[i]
        right, left = x + pad, x - pad - width
        sides = [right, left] if right + width <= within[2] else [left]
        start = y + pad if y + pad + height <= within[3] else y - pad - height
        candidates = (
            (x0, y0, x0 + width, y0 + height)
            for y0 in (start + sign * k * gap for k in range(steps) for sign in (1, -1))
            for x0 in sides
        )
        chosen = next(
            (
                b
                for b in candidates
                if within[1] <= b[1]
                and b[3] <= within[3]
                and not any(_overlap(b, other, gap) for other in [*placed, *avoid])
            ),
            None,
        )
        if chosen is None:
            y0 = max([start, *(other[3] + 2 * gap for other in placed)])
            chosen = (sides[0], y0, sides[0] + width, y0 + height)
        boxes[i] = chosen
        placed.append(chosen)
    return boxes


def _limits(points: pd.DataFrame, axis: str, log: bool, reference: float | None):
    """The range of the points on `axis` (x or y) that are not off scale, their intervals
    included, with a margin: the off-scale points sit on its upper end."""
    inside = points[~points[f"{axis}_off"]]
    values = pd.concat([inside[axis], inside[f"{axis}_low"], inside[f"{axis}_high"]]).dropna()
    low, high = values.min(), values.max()
    if reference is not None:
        low, high = min(low, reference), max(high, reference)
    if log:
        margin = (high / low) ** 0.06
        return low / margin, high * margin
    margin = 0.06 * (high - low or abs(high) or 1)
    return low - margin, high + margin


def _scatter(axis, points: pd.DataFrame, describe, scale: bool, reference: float | None = None):
    """Draw `points` (one row each: x, y, their interval bounds x_low .. y_high (NaN: none), the
    positive sizes x_size and y_size that off_scale judges, label, colour, marker, ms, bold,
    ring) with their intervals. A point off scale on an axis sits on that axis's upper edge, its
    value (`describe(axis, value)`) in its label. `scale`: log axes where the other points span
    more than 20x (_scale_axis); `reference`: a value each axis keeps in range. Returns the
    labels to place once the layout is final: (x, y, text, bold, marker size)."""
    points = points.assign(x_off=off_scale(points["x_size"]), y_off=off_scale(points["y_size"]))
    edge = {}
    for name in ("x", "y"):
        if scale:
            _scale_axis(axis, points.loc[~points[f"{name}_off"], name], name)
        if points[f"{name}_off"].any():
            log = getattr(axis, f"get_{name}scale")() == "log"
            low, high = _limits(points, name, log, reference)
            getattr(axis, f"set_{name}lim")(low, high)
            edge[name] = high
    labels = []
    for point in points.to_dict("records"):
        drawn, error, notes = {}, {}, []
        for name in ("x", "y"):
            value, low, high = (point[f"{name}{end}"] for end in ("", "_low", "_high"))
            if point[f"{name}_off"]:
                drawn[name] = edge[name]
                notes.append(describe(name, value))
            else:
                drawn[name] = value
                if math.isfinite(low) and math.isfinite(high):
                    error[f"{name}err"] = [[value - low], [high - value]]
        x, y = drawn["x"], drawn["y"]
        axis.errorbar(
            x,
            y,
            fmt=point["marker"],
            ms=point["ms"],
            color=point["colour"],
            capsize=3,
            lw=1,
            clip_on=False,
            **error,
        )
        if point["ring"]:
            axis.plot(x, y, "o", ms=14, mfc="none", mec="k", clip_on=False)
        text = point["label"] + (f" (off scale: {', '.join(notes)})" if notes else "")
        labels.append((x, y, text, point["bold"], point["ms"]))
    return labels


def _label_points(figure, labelled: list[tuple]) -> None:
    """Write each axis's labels ((axis, [(x, y, text, bold, marker size)]) pairs) where
    place_labels puts them, clear of every marker, a grey leader line to the point where a label
    had to move; call once the layout is final (positions are measured on the rendered
    figure)."""
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    to_points = 72 / figure.dpi
    pad = LABEL_PAD_POINTS / to_points
    for axis, labels in labelled:
        anchors, sizes, shifts, markers = [], [], [], []
        for x, y, text, bold, ms in labels:
            anchor = axis.transData.transform((x, y))
            probe = axis.annotate(
                text,
                (x, y),
                xytext=(0, 0),
                textcoords="offset points",
                fontsize=LABEL_FONT,
                fontweight="bold" if bold else "normal",
                ha="left",
                va="bottom",
            )
            extent = probe.get_window_extent(renderer)
            probe.remove()
            anchors.append(tuple(anchor))
            radius = ms / 2 / to_points
            markers.append((*(anchor - radius), *(anchor + radius)))
            sizes.append((extent.width, extent.height))
            shifts.append((extent.x0 - anchor[0], extent.y0 - anchor[1]))
        within = axis.get_window_extent(renderer)
        within = (within.x0, within.y0, within.x1, within.y1)
        boxes = place_labels(anchors, sizes, within, pad, markers)
        for (x, y, text, bold, _), anchor, shift, box in zip(
            labels, anchors, shifts, boxes, strict=True
        ):
            # A leader line where the label had to move away from its point.
            moved = min(abs(box[1] - anchor[1] - pad), abs(box[3] - anchor[1] + pad)) > 2
            axis.annotate(
                text,
                (x, y),
                xytext=((box[0] - anchor[0] - shift[0]) * to_points,
                        (box[1] - anchor[1] - shift[1]) * to_points),
                textcoords="offset points",
                fontsize=LABEL_FONT,
                fontweight="bold" if bold else "normal",
                ha="left",
                va="bottom",
                arrowprops=LEADER if moved else None,
            )  # fmt: skip


def _xy(source: dict, rows: pd.Index, columns: tuple[tuple, tuple], keys: tuple[str, str, str]):
    """x, x_low, x_high, y, y_low, y_high of `rows`: the (x, y) `columns` of the tables in
    `source` named by `keys` (value, low, high); NaN where a table is missing."""

    def values(key, column):
        return source[key].loc[rows, column].astype(float).to_numpy() if key in source else math.nan

    return pd.DataFrame(
        {
            f"{name}{end}": values(key, column)
            for name, column in zip("xy", columns, strict=True)
            for end, key in zip(("", "_low", "_high"), keys, strict=True)
        },
        index=range(len(rows)),
    )


def frontier_figure(table: pd.DataFrame, domain: str, bounds: dict | None = None):
    """The paper's two-sided claim in one picture: general perplexity (x) against `domain`
    perplexity (y) of every model in the domain's columns, with their intervals; the
    Pareto-optimal pruned models (no other pruned model is better on both) are ringed and named
    in bold; the dense model is the reference (a star), not a competitor. A model off scale
    (off_scale: magnitude pruning) sits on the edge with its value; labels never overlap."""
    import matplotlib.pyplot as plt

    columns = (domain, GENERAL_PERPLEXITY, "ppl"), (domain, PERPLEXITY, "ppl")
    rows = table[list(columns)].astype(float).dropna().index
    points = _xy({"value": table, **(bounds or {})}, rows, columns, ("value", "low", "high"))
    dense = rows.get_level_values("method") == "dense"
    front = iter(pareto_optimal(list(zip(points["x"][~dense], points["y"][~dense], strict=True))))
    points = points.assign(
        x_size=points["x"],
        y_size=points["y"],
        label=_row_labels(rows),
        colour=[f"C{i}" for i in range(len(rows))],
        marker=["*" if d else "o" for d in dense],
        ms=[10 if d else 6 for d in dense],
        ring=[False if d else next(front) for d in dense],
    )
    figure, axis = plt.subplots(figsize=(6.4, 4.8), dpi=DPI)

    def describe(name, value):
        return f"{'general' if name == 'x' else domain} {value:.1f}"

    labels = _scatter(axis, points.assign(bold=points["ring"]), describe, scale=True)
    axis.set_xlabel("general perplexity (lower is better)")
    axis.set_ylabel(f"{domain} perplexity (lower is better)")
    axis.set_title(f"{domain}: specificity vs generality (ringed: Pareto-optimal)", fontsize=10)
    figure.tight_layout()
    _label_points(figure, [(axis, labels)])
    return figure


def _describe_change(name: str, value: float) -> str:
    return f"{'general' if name == 'x' else 'domain'} {value:+.0f}%"


def change_figure(table: pd.DataFrame, bounds: dict):
    """Each pruned model's change of domain perplexity (y) against its change of general
    perplexity (x), both in percent against the dense model on the same units, with their
    paired intervals: one point per method and domain (for a domain-calibrated method, its model
    pruned for that domain; markers tell the domains apart), one panel per model side by side.
    A point off scale (off_scale, on the ratio to dense) sits on the edge with its value; labels
    never overlap."""
    import matplotlib.pyplot as plt

    domains = [
        d
        for d in dict.fromkeys(c[0] for c in table.columns)
        if d != "general" and (d, GENERAL_PERPLEXITY, "ppl") in table.columns
    ]
    models = list(dict.fromkeys(table.index.get_level_values("model")))
    methods = list(dict.fromkeys(table.index.get_level_values("method")))
    figure, axes = plt.subplots(
        1, len(models), figsize=(6.4 * len(models), 4.8), dpi=DPI, squeeze=False
    )
    labelled = []
    for model, axis in zip(models, axes[0], strict=True):
        rows = table.xs(model, level="model", drop_level=False).index
        rows = rows[rows.get_level_values("method") != "dense"]
        parts = [
            _xy(
                bounds,
                rows,
                ((domain, GENERAL_PERPLEXITY, "ppl"), (domain, PERPLEXITY, "ppl")),
                ("change", "change_low", "change_high"),
            ).assign(
                label=[f"{name}, {domain}" for name in _row_labels(rows)],
                colour=[f"C{methods.index(m)}" for m in rows.get_level_values("method")],
                marker=marker,
            )
            for marker, domain in zip("osDv^<>" * len(domains), domains, strict=False)
        ]
        points = pd.concat(parts, ignore_index=True).dropna(subset=["x", "y"])
        axis.axhline(0, color="0.6", ls="--", lw=0.8)
        axis.axvline(0, color="0.6", ls="--", lw=0.8)
        if len(points):
            points = points.assign(
                x_size=1 + points["x"] / 100,
                y_size=1 + points["y"] / 100,
                ms=6,
                bold=False,
                ring=False,
            )
            labelled.append((axis, _scatter(axis, points, _describe_change, False, 0.0)))
        axis.set_xlabel("general perplexity change vs dense (%, lower is better)")
        axis.set_ylabel("domain perplexity change vs dense (%, lower is better)")
        axis.set_title(f"{model}: domain against general change (dashed: dense)", fontsize=10)
    figure.tight_layout()
    _label_points(figure, labelled)
    return figure


def benchmark_figure(by_rule: pd.DataFrame):
    import matplotlib.pyplot as plt

    rules = by_rule[~by_rule["rule"].str.startswith("all")]
    figure, axis = plt.subplots(figsize=(6.5, 0.45 * max(len(rules), 2) + 1.2))
    axis.barh(rules["rule"], rules["total_s"] / 60, color="C0")
    for y, (minutes, jobs) in enumerate(zip(rules["total_s"] / 60, rules["jobs"], strict=True)):
        axis.annotate(f" {minutes:.1f} min, {jobs} job(s)", (minutes, y), va="center", fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("total wall time (minutes)")
    axis.set_title("time per rule (benchmark: files)", fontsize=10)
    figure.tight_layout()
    return figure


def _main_from_csv(tables_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    long = pd.read_csv(tables_dir / "metrics_long.csv", keep_default_na=False, na_values=[""])
    return main_table(long), interval_tables(long)


def plot(
    tables_dir: str | Path, out_dir: str | Path, calibration_series: list[dict[str, int]] = ()
) -> list[Path]:
    """Write bars_<domain>.png for every domain, frontier_<domain>.png for every domain but
    general, CHANGE_PLOT (change_figure) where there is such a domain, sparsity_<domain>.png
    when the tables hold several sparsities, calibration_size_<first domain>.png for each of
    `calibration_series` (see calibration_size_figure) and benchmarks.png; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    table, bounds = _main_from_csv(tables_dir)
    domains = list(dict.fromkeys(c[0] for c in table.columns))
    written = [
        _save_figure(bar_figure(table, d, bounds), out_dir / f"bars_{d}.png") for d in domains
    ]
    written += [
        _save_figure(frontier_figure(table, d, bounds), out_dir / f"frontier_{d}.png")
        for d in domains
        if d != "general"
    ]
    if any(d != "general" for d in domains):
        written.append(_save_figure(change_figure(table, bounds), out_dir / CHANGE_PLOT))
    pruned = table.reset_index()
    sparsities = pruned.loc[pruned["pattern"] == "unstructured", "sparsity"].unique()
    if len(sparsities) > 1:
        written += [
            _save_figure(sparsity_figure(table, d, bounds), out_dir / f"sparsity_{d}.png")
            for d in domains
        ]
    written += [
        _save_figure(
            calibration_size_figure(table, sizes, bounds),
            out_dir / f"calibration_size_{next(iter(sizes))}.png",
        )
        for sizes in calibration_series
    ]
    by_rule = pd.read_csv(tables_dir / "benchmarks_by_rule.csv")
    written.append(_save_figure(benchmark_figure(by_rule), out_dir / "benchmarks.png"))
    return written
