# Pruning: one job per model x method x calibration x sparsity x pattern. Magnitude needs no
# calibration; general-calibrated baselines are pruned once and evaluated on every domain;
# D-Pruner (and `calibration: domain` baselines) are pruned once per domain.


rule prune:
    input:
        unpack(prune_inputs),
    output:
        PRUNE_REPORT,
    params:
        files=prune_files,
        spec=prune_spec,
        out_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/prune/{{model}}/{PRUNED_ID}.log",
    benchmark:
        f"{BENCHMARKS}/prune/{{model}}/{PRUNED_ID}.tsv"
    threads: MODEL_JOB_THREADS
    priority: PRUNING
    resources:
        gpu=GPU_SLOTS,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner prune --model {input.model:q} {params.files} --spec {params.spec:q}"
        " --out {params.out_dir:q} --overwrite > {log:q} 2>&1"
