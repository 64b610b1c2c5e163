# dpruner benchmark: one `snakemake` regenerates every table and plot of the configured benchmark.
# Rules are thin: each runs one `python -m dpruner <step>`; the stages live in rules/*.smk.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# A config file named on the command line replaces config/config.yaml instead of being merged into
# it, so `--configfile config/paper.yaml` plans only the paper's models and domains. Done here, not
# with --replace-workflow-config, because cluster job steps are not passed that flag.
if workflow.overwrite_configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)


# Paths in the schema call are relative to this Snakefile.
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/importance.smk"
include: "rules/prune.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        TABLES,
        PLOTS,
        SUMMARY,
