"""Tables (pandas: CSV, Markdown, LaTeX) and plots (matplotlib) from the metrics JSON files.

One module a job: `collect` (metrics files into the long frame), `tables` (main, cross-domain and
interval tables), `leaderboard` (ranks and groups per domain and metric), `draws` (calibration
draws), `across_models` (the leaderboard's ranks on several models), `formatting` (cells,
Markdown, LaTeX, CSV), `benchmarks` (Snakemake benchmark files), `plots` (figures). The steps:
`aggregate.aggregate(metrics_files, out_dir, benchmark_files)`, `plots.plot(tables_dir, out_dir)`
and `summary.summary(tables_dir, plots_dir, out_file)`, run as `python -m dpruner <step>`
(`commands.register`).
"""
