# Evaluation: the dense model and every pruned model on every domain and on general text
# (perplexity and tasks). General perplexity is the `general` file's; the report copies it to
# every domain of the same model.


rule evaluate:
    input:
        model=evaluated_model,
        # Local data files of the domain's perplexity text and tasks.
        sources=source_files("perplexity", "tasks"),
    output:
        METRICS,
    params:
        model_dir=lambda w, input: (
            input.model if w.variant == "dense" else os.path.dirname(input.model)
        ),
        # The config slice a metrics file depends on.
        config=lambda w: config_json(
            w,
            section=["perplexity", "tasks"],
            evaluation=config.get("evaluation"),
            calibration={"eval_fraction": config["calibration"]["eval_fraction"]},
            seed=config["seed"],
        ),
    log:
        f"{LOGS}/evaluate/{{model}}/{{variant}}/{{domain}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{model}}/{{variant}}/{{domain}}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner evaluate --model {params.model_dir:q} --domain {wildcards.domain:q}"
        " --config-json {params.config:q} --out {output:q} > {log:q} 2>&1"
