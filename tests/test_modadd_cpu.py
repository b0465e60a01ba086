"""configs/modadd_cpu.yaml: the CPU-size transformer validates, builds its model and data, and plans the DAG."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from antigrok.training.data import prepare_dataset
from antigrok.training.models import Transformer, build_model, relu_modules
from antigrok.training.train import RunSpec, check_model_fits_data
from antigrok.workflow_config import load_workflow_config
from conftest import REPO, copy_workflow

CONFIG = REPO / "configs" / "modadd_cpu.yaml"
EXPERIMENT = "modadd_cpu"


def merged_config() -> dict:
    """config.yaml overlaid with configs/modadd_cpu.yaml as the Snakefile does it (experiments
    replaced, not merged), validated and with the schema's defaults filled in."""
    return load_workflow_config([CONFIG])


@pytest.fixture(scope="module")
def config() -> dict:
    return merged_config()


def test_the_config_validates_and_has_only_the_cpu_transformer(config):
    assert list(config["experiments"]) == [EXPERIMENT]
    experiment = config["experiments"][EXPERIMENT]
    assert experiment["model"]["name"] == "transformer" and experiment["dataset"]["name"] == "modadd"
    assert sorted(experiment["weight_decays"]) == [0.0, 1.0]
    assert len(experiment["seeds"]) >= 2
    assert config["htsr"]["average_layers"][EXPERIMENT]  # the block's matrices are averaged
    assert config["train"]["device"] == "cpu"


def test_the_config_is_nanda_et_als_architecture_family(config):
    """1 layer, 4 heads of d_model / 4, no LayerNorm, ReLU MLP, learned positions, AdamW (0.9, 0.98),
    warm-up 10, full batch, cross-entropy: only p, the sizes, the train fraction, lr and dtype differ."""
    experiment = config["experiments"][EXPERIMENT]
    model, modulus = experiment["model"], experiment["dataset"]["modulus"]
    assert model["num_layers"] == 1 and model["n_ctx"] == 3
    assert model["d_vocab"] == modulus + 1
    assert model["num_heads"] * model["d_head"] == model["d_model"]
    assert experiment["loss"] == "cross_entropy"
    assert experiment["optimizer"]["betas"] == [0.9, 0.98] and experiment["optimizer"]["warmup_steps"] == 10
    assert experiment["batch_size"] >= modulus**2  # full batch


def test_the_config_builds_its_model_and_data(config):
    experiment = config["experiments"][EXPERIMENT]
    dataset = prepare_dataset(experiment["dataset"], config["data"])
    modulus, fraction = experiment["dataset"]["modulus"], experiment["dataset"]["train_fraction"]
    assert len(dataset["x_train"]) == int(fraction * modulus**2)
    assert len(dataset["x_train"]) + len(dataset["x_test"]) == modulus**2
    model = build_model(experiment["model"], experiment["dtype"], seed=0)
    assert isinstance(model, Transformer)
    assert next(model.parameters()).dtype == getattr(torch, experiment["dtype"])
    assert list(relu_modules(model)) == ["blocks.0.mlp.act"]
    layers = {name.removesuffix(".weight") for name in model.state_dict() if name.endswith(".weight")}
    assert set(config["htsr"]["average_layers"][EXPERIMENT]) <= layers
    spec = RunSpec(EXPERIMENT, experiment, 1.0, seed=0)
    check_model_fits_data(model, dataset, spec)  # vocabulary and logits fit the data
    with torch.no_grad():
        logits = model(dataset["x_test"][:5])
    assert logits.shape == (5, modulus + 1) and torch.isfinite(logits).all()


def test_the_dry_run_plans_every_stage_for_every_run(tmp_path):
    """`snakemake -n --configfile configs/modadd_cpu.yaml`: the MNIST rules' DAG, no transformer rule."""
    workdir = copy_workflow(tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/modadd_cpu.yaml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout, re.MULTILINE))
    experiment = merged_config()["experiments"][EXPERIMENT]
    num_runs = len(experiment["weight_decays"]) * len(experiment["seeds"])
    for rule in ("train", "spectra", "traps", "progress", "phases"):
        assert int(jobs.get(rule, 0)) == num_runs, (rule, jobs)
    assert int(jobs.get("prepare_data", 0)) == 1
    assert "tables" in jobs and "detectors" in jobs
