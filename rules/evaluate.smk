# Evaluation: the dense model and every pruned model on every domain and on general text
# (perplexity and tasks). General perplexity is the `general` file's; the report copies it to
# every domain of the same model.


rule evaluate:
    input:
        model=evaluated_model,
    output:
        METRICS,
    params:
        model_dir=lambda w, input: (
            input.model if w.variant == "dense" else os.path.dirname(input.model)
        ),
        config_file=EFFECTIVE_CONFIG,
        # The config slice a metrics file depends on.
        domain=domain_section,
        evaluation=config.get("evaluation"),
        eval_fraction=config["calibration"]["eval_fraction"],
        seed=config["seed"],
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
        "python -m dpruner evaluate --model {params.model_dir} --domain {wildcards.domain}"
        " --config {params.config_file} --out {output} > {log} 2>&1"
