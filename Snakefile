# dpruner benchmark: one `snakemake` regenerates every table and plot of the configured benchmark.
# Rules are thin: each runs one `python -m dpruner <step>`; the stages live in rules/*.smk.
from snakemake.utils import min_version

from dpruner.config import config_errors, expand_tasks, read_yaml
from dpruner.errors import DprunerError, exit_with
from dpruner.io import mark_results_folder
from dpruner.preflight import check_config, check_device

min_version("9.0")

DEFAULT_CONFIG = "config/config.yaml"

CONFIG_FILES = [str(path) for path in workflow.overwrite_configfiles] or [DEFAULT_CONFIG]
# Snakemake's own loader says only "not valid JSON or YAML" and keeps the last of a key written
# twice: read each file with ours first, for the line (a --configfile Snakemake has read already).
try:
    for path in CONFIG_FILES:
        read_yaml(path)
except DprunerError as error:
    exit_with(error)
# A config file named on the command line replaces config/config.yaml instead of being merged into
# it, so `--configfile config/paper.yaml` plans only the paper's models and domains. Done here, not
# with --replace-workflow-config, because cluster job steps are not passed that flag.
if workflow.overwrite_configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)
else:

    configfile: DEFAULT_CONFIG


# Tasks named `{use: NAME, ...}` get their config/tasks.yaml definition before the schema check,
# so every job's --spec (a params value, dpruner.specs) holds the full task.
try:
    expand_tasks(config, source=", ".join(CONFIG_FILES))
except DprunerError as error:
    exit_with(error)
problems = config_errors(config)
if problems:
    exit_with(f"{', '.join(CONFIG_FILES)} is invalid:\n" + "\n".join(f"  {p}" for p in problems))
# Every source, template, label set, size and N:M pattern, before any job (`-n` included); job
# steps started by an executor (cluster) skip it, the main process did it.
if workflow.is_main_process:
    try:
        check_config(config, source=", ".join(CONFIG_FILES))
    except DprunerError as error:
        exit_with(error)


# On start (not on a dry run): the configured device must exist where the jobs run, here unless
# an executor (a cluster) runs them, whose nodes may have the GPU that this submit host lacks.
# Then the results folder, new, empty or dpruner's (the preflight), is marked as dpruner's before
# the first job writes into it, so no later run takes it for a user's folder.
onstart:
    if workflow.local_exec:
        try:
            check_device(config.get("device", "cpu"), f"{', '.join(CONFIG_FILES)}: device")
        except DprunerError as error:
            exit_with(error)
    mark_results_folder(config["results"])


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
        STORED_SIZE_TABLES,
