# antigrok: the anti-grokking study of Prakash & Martin, end to end. See README.md.
from snakemake.common.configfile import load_configfile
from snakemake.utils import min_version, validate

from antigrok.workflow_config import (
    batched_unsupported_reason,
    describe_experiment,
    format_weight_decay,
    overlay_experiments,
    run_settings,
)

min_version("9.0")


configfile: "config.yaml"


# A config given with --configfile states its experiments in full: config.yaml's experiments
# are not merged into them (its other sections still provide defaults, key by key).
if workflow.overwrite_configfiles:
    config["experiments"] = overlay_experiments(
        [load_configfile(path) for path in workflow.overwrite_configfiles]
        + [workflow.config_settings.overwrite_config]
    )


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/spectra.smk"
include: "workflow/rules/traps.smk"
include: "workflow/rules/progress.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/mechanism_common.smk"
include: "workflow/rules/mechanism.smk"


# Light rules run on the login node under a cluster profile (profiles/slurm): the data subset
# (it may download MNIST, which compute nodes often cannot) and the aggregation across runs
# (tables, figures, report pages), each seconds of work that a queued job would only delay.
localrules:
    prepare_data,
    tables,
    detectors,
    warning_rules,
    phase_edges,
    report_table,
    figure_accuracy,
    figure_alpha,
    figure_progress,
    figure_esd,
    figure_traps,
    figure_detector,
    figure_statistics,
    timescale,
    paper_comparison,
    mechanism_tables,
    figure_mechanism,


rule all:
    default_target: True
    input:
        all_targets(),
