# Model and data preparation: a plain HF model directory per model, calibration files per
# model x domain (token windows depend on the tokenizer).


rule prepare_model:
    output:
        # save_model writes a temporary sibling and renames it: the directory is never half-written.
        directory(DENSE_MODEL),
    params:
        config_file=EFFECTIVE_CONFIG,
        # The config slice this output depends on: a change here reruns it, nothing else does.
        model=lambda w: config["models"][w.model],
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
        "python -m dpruner prepare-model --config {params.config_file} --model {wildcards.model}"
        " --out {output} > {log} 2>&1"


rule prepare_data:
    input:
        model=DENSE_MODEL,
    output:
        calibration=f"{DATA}/calibration.pt",
        instances=f"{DATA}/instances.jsonl",
        # Written last: the summary of what the two files above hold.
        summary=f"{DATA}/calibration.json",
    params:
        config_file=EFFECTIVE_CONFIG,
        # The config slice these files depend on.
        calibration=lambda w: domain_section(w)["calibration"],
        settings=config["calibration"],
        seed=config["seed"],
        out_dir=lambda w, output: os.path.dirname(output.summary),
    log:
        f"{LOGS}/prepare_data/{{model}}/{{domain}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_data/{{model}}/{{domain}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/dpruner.yaml"
    shell:
        "python -m dpruner prepare-data --config {params.config_file} --domain {wildcards.domain}"
        " --model {input.model} --out {params.out_dir} > {log} 2>&1"
