# Helpers of workflow/rules/mechanism.smk, kept apart from its rules as snakemake --lint asks.
MECHANISM = config["mechanism"]
# The keys of the mechanism section that the trap-removal test reads (RemovalSettings.from_config):
# only a change to these reruns it.
REMOVAL_KEYS = (
    "removal_edges",
    "probe_inputs",
    "probe_std",
    "removal_draws",
    "removal_seed",
)


def mechanism_experiments():
    """The experiments these analyses apply to: MNIST MLPs (images, fc1 .. fcK)."""
    return [
        name
        for name, experiment in config["experiments"].items()
        if experiment["model"]["name"] == "mlp"
        and experiment["dataset"]["name"] == "mnist"
    ]


def mechanism_files(filename):
    """``filename`` of every run of the mechanism's experiments."""
    return [
        f"{RUN_DIR.format(experiment=name, weight_decay=weight_decay, seed=seed)}/{filename}"
        for name, weight_decay, seed in runs()
        if name in mechanism_experiments()
    ]


def mechanism_caption_params(wildcards):
    """lr, steps and seeds of the figure's runs, for its caption."""
    return experiment_description(wildcards.experiment)
