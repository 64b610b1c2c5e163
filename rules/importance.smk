# D-Pruner's scores: general importance G per model x sparsity (step 1), then the dual importance S
# per model x domain x D-Pruner method x sparsity, from regularised fine-tuning (steps 2-3).


rule general_importance:
    input:
        model=DENSE_MODEL,
        calibration=CALIBRATION,
    output:
        GENERAL_IMPORTANCE,
    params:
        spec=general_importance_spec,
    log:
        f"{LOGS}/general_importance/{{model}}/{{domain}}_s{{sparsity}}_norm-{{normalize}}.log",
    benchmark:
        f"{BENCHMARKS}/general_importance/{{model}}/{{domain}}_s{{sparsity}}_norm-{{normalize}}.tsv"
    threads: MODEL_JOB_THREADS
    priority: CRITICAL_PATH
    resources:
        gpu=GPU_SLOTS,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner general-importance --model {input.model:q}"
        " --calibration {input.calibration:q} --spec {params.spec:q} --out {output:q}"
        " > {log:q} 2>&1"


rule domain_scores:
    input:
        model=DENSE_MODEL,
        instances=INSTANCES,
        general_importance=lambda w: plan.general_importance_file(
            config, w.model, w.method, w.sparsity, w.domain
        ),
    output:
        DOMAIN_SCORES,
    params:
        launcher=domain_scores_launcher,
        spec=domain_scores_spec,
    log:
        f"{LOGS}/domain_scores/{{model}}/{{domain}}_{{method}}_s{{sparsity}}.log",
    benchmark:
        f"{BENCHMARKS}/domain_scores/{{model}}/{{domain}}_{{method}}_s{{sparsity}}.tsv"
    threads: MODEL_JOB_THREADS
    priority: CRITICAL_PATH
    resources:
        # One GPU per process; torchrun is one task on one node that starts the processes.
        gpu=dpruner_gpus,
        nodes=1,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "{params.launcher} domain-scores --model {input.model:q} --instances {input.instances:q}"
        " --general-importance {input.general_importance:q} --spec {params.spec:q}"
        " --out {output:q} > {log:q} 2>&1"
