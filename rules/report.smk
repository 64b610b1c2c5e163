# Tables (pandas) and plots (matplotlib) from every metrics file, the per-rule benchmark figures,
# and results/summary.md, one page with all of them. `snakemake --report` adds the same files.

TABLES_DIR = f"{RESULTS}/tables"
PLOTS_DIR = f"{RESULTS}/plots"
TABLE_STEMS = ["main", "main_change", "cross_domain"]
# Stored sizes and the cost of quantization (each quantized model against its 16-bit twin) only
# when some method quantizes.
QUANTIZED = bool(unquantized_twins(config["methods"]))
TABLES = [
    *expand(f"{TABLES_DIR}/{{stem}}.{{ext}}", stem=TABLE_STEMS, ext=["csv", "md", "tex"]),
    f"{TABLES_DIR}/metrics_long.csv",
    f"{TABLES_DIR}/counts.csv",
    f"{TABLES_DIR}/counts.md",
    f"{TABLES_DIR}/vs_best_baseline.csv",
    f"{TABLES_DIR}/vs_best_baseline.md",
    f"{TABLES_DIR}/leaderboard.csv",
    f"{TABLES_DIR}/leaderboard.md",
    f"{TABLES_DIR}/benchmarks.csv",
    f"{TABLES_DIR}/benchmarks_by_rule.csv",
    f"{TABLES_DIR}/benchmarks_by_rule.md",
    *(expand(f"{TABLES_DIR}/vs_unquantized.{{ext}}", ext=["csv", "md"]) if QUANTIZED else []),
    # Every model's ranks side by side, and how far the models' rankings agree.
    *(
        expand(f"{TABLES_DIR}/leaderboard_models.{{ext}}", ext=["csv", "md"])
        if len(MODELS) > 1
        else []
    ),
    # Each value's range over the calibration draws, when there are several.
    *(
        expand(f"{TABLES_DIR}/draw_spread.{{ext}}", ext=["csv", "md"])
        if len(plan.draws(config)) > 1
        else []
    ),
]
# Curves over sparsity only exist when several sparsities are configured.
UNSTRUCTURED_SPARSITIES = {
    s for s, pattern in plan.sparsity_patterns(config) if pattern == "unstructured"
}
PLOT_SPEC = specs.plot_spec(config)
PLOT_KINDS = ["bars", "sparsity"] if len(UNSTRUCTURED_SPARSITIES) > 1 else ["bars"]
PLOTS = [
    *expand(f"{PLOTS_DIR}/{{kind}}_{{domain}}.png", kind=PLOT_KINDS, domain=EVAL_DOMAINS),
    # General against domain perplexity, Pareto-optimal models marked: one per domain.
    *expand(f"{PLOTS_DIR}/frontier_{{domain}}.png", domain=DOMAINS),
    # Domain against general perplexity change of every pruned model, a panel per model.
    f"{PLOTS_DIR}/domain_vs_general.png",
    # Metric against calibration size where domains differ only in their instance counts.
    *(f"{PLOTS_DIR}/calibration_size_{next(iter(s))}.png" for s in PLOT_SPEC.calibration_series),
    f"{PLOTS_DIR}/benchmarks.png",
]
SUMMARY = f"{RESULTS}/summary.md"
STORED_SIZE_TABLES = (
    expand(f"{TABLES_DIR}/stored_size.{{ext}}", ext=["csv", "md"]) if QUANTIZED else []
)


rule aggregate:
    input:
        metrics=ALL_METRICS,
        benchmarks=benchmark_files(),
    output:
        tables=report(
            TABLES,
            caption="../workflow/report/tables.rst",
            category="Tables",
        ),
    params:
        tables_dir=lambda w, output: os.path.dirname(output.tables[0]),
        # A function, since Snakemake reads `{name}` in a plain string param (a model path may
        # hold braces) as a wildcard.
        spec=lambda w: specs.aggregate_spec(config).to_json(),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/report/aggregate.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner aggregate --metrics {input.metrics:q}"
        " --benchmarks {input.benchmarks:q} --spec {params.spec:q}"
        " --out {params.tables_dir:q} > {log:q} 2>&1"


rule plot:
    input:
        rules.aggregate.output.tables,
    output:
        plots=report(
            PLOTS,
            caption="../workflow/report/plots.rst",
            category="Plots",
        ),
    params:
        tables_dir=lambda w, input: os.path.dirname(input[0]),
        plots_dir=lambda w, output: os.path.dirname(output.plots[0]),
        spec=lambda w: PLOT_SPEC.to_json(),
    log:
        f"{LOGS}/plot.log",
    benchmark:
        f"{BENCHMARKS}/report/plot.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner plot --tables {params.tables_dir:q} --out {params.plots_dir:q}"
        " --spec {params.spec:q} > {log:q} 2>&1"


rule report:
    input:
        tables=rules.aggregate.output.tables,
        plots=rules.plot.output.plots,
    output:
        report(SUMMARY, caption="../workflow/report/summary.rst", category="Summary"),
    params:
        tables_dir=lambda w, input: os.path.dirname(input.tables[0]),
        plots_dir=lambda w, input: os.path.dirname(input.plots[0]),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report/report.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner summary --tables {params.tables_dir:q} --plots {params.plots_dir:q}"
        " --out {output:q} > {log:q} 2>&1"


if QUANTIZED:

    rule stored_size:
        input:
            plan.prune_reports(config),
        output:
            tables=report(
                STORED_SIZE_TABLES,
                caption="../workflow/report/stored_size.rst",
                category="Tables",
            ),
        params:
            tables_dir=lambda w, output: os.path.dirname(output.tables[0]),
        log:
            f"{LOGS}/stored_size.log",
        benchmark:
            f"{BENCHMARKS}/report/stored_size.tsv"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        conda:
            "../envs/dpruner.yaml"
        shell:
            "python -m dpruner stored-size --reports {input:q} --out {params.tables_dir:q}"
            " > {log:q} 2>&1"
