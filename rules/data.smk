# Model and data preparation: a plain HF model directory per model, calibration files per
# model x domain (token windows depend on the tokenizer).


rule prepare_model:
    output:
        # save_model writes a temporary sibling and renames it: the directory is never half-written.
        directory(DENSE_MODEL),
    params:
        spec=prepare_model_spec,
    log:
        f"{LOGS}/prepare_model/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_model/{{model}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner prepare-model --spec {params.spec:q} --out {output:q} --overwrite"
        " > {log:q} 2>&1"


rule prepare_data:
    input:
        model=DENSE_MODEL,
        # Local data files: an edit reruns this domain's calibration data and what depends on it.
        sources=source_files("calibration"),
    output:
        calibration=CALIBRATION,
        instances=INSTANCES,
        # Written last: the summary of what the two files above hold.
        summary=f"{DATA}/calibration.json",
    params:
        spec=prepare_data_spec,
        out_dir=lambda w, output: os.path.dirname(output.summary),
    log:
        f"{LOGS}/prepare_data/{{model}}/{{domain}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_data/{{model}}/{{domain}}.tsv"
    threads: 1
    # D-Pruner's chain (data, general importance, fine-tuning) is the longest path: start it first.
    priority: CRITICAL_PATH
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner prepare-data --spec {params.spec:q} --model {input.model:q}"
        " --out {params.out_dir:q} > {log:q} 2>&1"
