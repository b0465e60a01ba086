# Helpers shared by the rules: the runs of the config, their paths, and the stage targets.
import json
import shutil
from pathlib import Path

from antigrok.runs import RESULTS, RUN_DIR  # where a run's files are (antigrok.runs)

ENV_TORCH = "../../envs/torch.yaml"
ENV_ANALYSIS = "../../envs/analysis.yaml"


wildcard_constraints:
    experiment=r"[A-Za-z0-9_-]+",
    weight_decay=r"[0-9.eE+-]+",
    seed=r"\d+",


def runs():
    """Every run of the config: (experiment, weight decay as in paths, seed)."""
    return [
        (name, format_weight_decay(weight_decay), seed)
        for name, experiment in config["experiments"].items()
        for weight_decay in experiment["weight_decays"]
        for seed in experiment["seeds"]
    ]


def run_files(filename):
    """``filename`` under every run directory of the config."""
    return [
        f"{RUN_DIR.format(experiment=name, weight_decay=weight_decay, seed=seed)}/{filename}"
        for name, weight_decay, seed in runs()
    ]


def experiment_config(wildcards):
    return config["experiments"][wildcards.experiment]


def experiment_json(wildcards):
    """A run's settings as JSON: a param, so any change to them reruns the experiment's runs."""
    return json.dumps(run_settings(experiment_config(wildcards)), sort_keys=True)


def dataset_identity(wildcards):
    """What defines an experiment's data: its dataset entry, plus the MNIST subset keys for MNIST."""
    dataset = dict(experiment_config(wildcards)["dataset"])
    if dataset["name"] == "mnist":
        dataset.update(
            train_size=config["data"]["train_size"],
            subset_seed=config["data"]["subset_seed"],
        )
    return dataset


def seed_files(filename):
    """Input function: ``filename`` of every seed of the wildcards' experiment and weight decay."""

    def files(wildcards):
        seeds = config["experiments"][wildcards.experiment]["seeds"]
        return [
            f"{RUN_DIR.format(experiment=wildcards.experiment, weight_decay=wildcards.weight_decay, seed=seed)}/{filename}"
            for seed in seeds
        ]

    return files


def training_uses_cuda():
    device = config["train"]["device"]
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device == "cuda"


# Per-run files each stage adds to `rule all`; the stage files append to this list.
RUN_TARGETS = ["train_log.csv"]
# Files across runs (tables, figures) that the stage files append to.
GLOBAL_TARGETS = []


def all_targets():
    return [path for name in RUN_TARGETS for path in run_files(name)] + GLOBAL_TARGETS


def experiment_description(name):
    """One line that says which lr and steps made an experiment's results (tables, figures, README)."""
    return describe_experiment(name, config["experiments"])


def timescale_files(filename):
    """``filename`` of every run of the time-scale study's experiments."""
    return [
        f"{RUN_DIR.format(experiment=name, weight_decay=weight_decay, seed=seed)}/{filename}"
        for name, weight_decay, seed in runs()
        if name in config["timescale"]["experiments"]
    ]


def experiment_run_files(experiment, filename):
    """``filename`` of every run (weight decays and seeds) of ``experiment``."""
    return [
        f"{RUN_DIR.format(experiment=name, weight_decay=weight_decay, seed=seed)}/{filename}"
        for name, weight_decay, seed in runs()
        if name == experiment
    ]
