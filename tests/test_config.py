"""The config is validated before any job: a bad value stops the run, names its key, writes nothing."""

import copy
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, copy_workflow

SMOKE = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())


def with_change(path, value):
    config = copy.deepcopy(SMOKE)
    *parents, last = path
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


BAD_CONFIGS = {
    "wrong type": (with_change(["experiments", "mnist_mlp", "steps"], "many"), "steps"),
    "zero steps": (with_change(["experiments", "mnist_mlp", "steps"], 0), "steps"),
    "negative steps": (with_change(["experiments", "mnist_mlp", "steps"], -5), "steps"),
    "zero learning rate": (with_change(["experiments", "mnist_mlp", "optimizer", "lr"], 0.0), "lr"),
    "negative learning rate": (with_change(["experiments", "mnist_mlp", "optimizer", "lr"], -1e-3), "lr"),
    "unknown key": (with_change(["trian"], {"device": "cpu"}), "trian"),
    "unknown experiment field": (with_change(["experiments", "mnist_mlp", "epochs"], 3), "epochs"),
    "wrong type of threshold": (with_change(["traps", "tracy_widom_scale"], "high"), "tracy_widom_scale"),
    "even smoothing window": (with_change(["phases", "smoothing_window"], 4), "smoothing_window"),
}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("config"))


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_rejected_naming_the_key(case, workflow_copy):
    config, key = BAD_CONFIGS[case]
    bad = workflow_copy / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "bad.yaml"],
        cwd=workflow_copy, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error validating config file" in output
    assert f"'{key}'" in output, output[-3000:]
    assert not (workflow_copy / "results").exists()


def test_the_shipped_configs_are_valid(workflow_copy):
    # configs/llm*.yaml belong to workflow/llm.smk (tests/test_llm.py validates them)
    shipped = ["config.yaml", "tests/smoke.yaml", *sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")
                                                           if not p.name.startswith("llm"))]
    assert len(shipped) >= 4  # configs/cpu.yaml, configs/timescale.yaml, ...
    for configfile in shipped:
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--quiet", "--configfile", configfile],
            cwd=workflow_copy, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
