"""The workflow's configuration as the Snakefile builds it, for code that runs outside Snakemake
(reference scripts, benchmarks, tests), and which experiments the batched engine trains.

The Snakefile reads config.yaml, lets Snakemake merge each ``--configfile`` over it key by key,
and then replaces the experiments with the config files' own (``overlay_experiments``): a config
given with --configfile states its experiments in full. ``load_workflow_config`` does the same
outside Snakemake, schema defaults filled in. Nothing here imports torch, so the Snakefile can
import it at every DAG build.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path

from snakemake.utils import update_config, validate

from antigrok.schema import REPO, SCHEMA, read_yaml

BASE_CONFIG = REPO / "config.yaml"


def overlay_experiments(overlays: Iterable[Mapping]) -> dict:
    """The experiments of the given config files, merged key by key in order (config.yaml's are
    not among them: a config given with --configfile states its experiments in full)."""
    experiments: dict = {}
    for overlay in overlays:
        update_config(experiments, copy.deepcopy(dict(overlay.get("experiments") or {})))
    return experiments


def load_workflow_config(configfiles: Iterable[str | Path] = (), *, base: str | Path = BASE_CONFIG,
                         schema: str | Path = SCHEMA) -> dict:
    """config.yaml with each config file merged over it key by key, its experiments replaced by the
    config files' (when any is given), validated against the schema with its defaults filled in."""
    config = read_yaml(base)
    overlays = [read_yaml(path) for path in configfiles]
    for overlay in overlays:
        update_config(config, copy.deepcopy(overlay))
    if overlays:
        config["experiments"] = overlay_experiments(overlays)
    validate(config, str(schema))
    return config


# Keys that list which runs an experiment has, not how one run trains: adding a seed or a weight
# decay must not retrain the runs that exist.
RUN_LIST_KEYS = ("seeds", "weight_decays")


def run_settings(experiment: Mapping) -> dict:
    """What shapes each run of ``experiment``: its config without the lists of runs. The train
    rule passes it as a param and antigrok.training.train.RunSpec hashes it into the run's fingerprint, so
    a change here restarts every resumable run from step 0."""
    return {key: value for key, value in experiment.items() if key not in RUN_LIST_KEYS}


def format_weight_decay(value) -> str:
    """The weight decay as it appears in run paths: wd0.0, wd0.01, wd1.0."""
    return str(float(value))


def describe_experiment(name: str, experiments: Mapping) -> str:
    """An experiment's model, optimizer, lr, steps, batch and dtype in one line, as the tables,
    figures and references say them (a rescaled run is always labelled with its lr and steps):
    an MLP by its widths, a transformer by its d_model."""
    if name not in experiments:
        return f"{name}: not in the config given (lr and steps unknown)"
    experiment = experiments[name]
    model = experiment["model"]
    shape = "-".join(map(str, model["widths"])) if model["name"] == "mlp" else f"d_model {model['d_model']}"
    return (f"{name}: {model['name']} {shape}, {experiment['optimizer']['name']} lr {experiment['optimizer']['lr']:g}, "
            f"{experiment['steps']} steps, batch {experiment['batch_size']}, {experiment.get('dtype', 'float64')}")


def batched_unsupported_reason(experiment: Mapping) -> str | None:
    """Why the batched engine (antigrok.training.batched) cannot train this experiment, or None when it can."""
    model = experiment["model"]["name"]
    if model != "mlp":
        return f"model.name is {model!r}; the batched engine trains MLPs only"
    loss = experiment.get("loss", "mse")
    if loss != "mse":
        return f"loss is {loss!r}; the batched engine implements the MSE loss only"
    return None
