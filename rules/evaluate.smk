# Evaluation, one job per model: the dense model and every pruned model on general text and on
# every domain (a model pruned for one domain: the other domains by perplexity only). General
# perplexity is the `general` file's; the report copies it to every domain of the same model.


rule evaluate:
    input:
        model=lambda w: plan.evaluated_model(config, w.model, w.variant),
        # Local data files of what is evaluated.
        sources=evaluation_source_files,
    output:
        # One job per model: loading it and importing lm-eval once, not once per domain.
        expand(METRICS, domain=EVAL_DOMAINS, allow_missing=True),
    params:
        model_dir=lambda w, input: (
            input.model if w.variant == plan.DENSE else os.path.dirname(input.model)
        ),
        domains_and_outputs=lambda w, output: " ".join(
            f"--domain {shlex.quote(domain)} --out {shlex.quote(path)}"
            for domain, path in zip(EVAL_DOMAINS, output, strict=True)
        ),
        spec=evaluate_spec,
    log:
        f"{LOGS}/evaluate/{{model}}/{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{model}}/{{variant}}.tsv"
    threads: MODEL_JOB_THREADS
    priority: lambda w: plan.evaluation_priority(config, w.variant)
    resources:
        gpu=GPU_SLOTS,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner evaluate --model {params.model_dir:q} {params.domains_and_outputs}"
        " --spec {params.spec:q} > {log:q} 2>&1"
