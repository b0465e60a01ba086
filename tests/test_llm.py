"""antigrok.users.llm and workflow/llm.smk: one large model scattered over jobs, gathered into one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from antigrok.users import llm
from antigrok.users.analyze import analyze_path
from gpt_oss_synthetic import write_gpt_oss_folder
from conftest import REPO, dry_run_jobs

LAYERS, EXPERTS = 3, 2
TIMING = ["analysis_seconds"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_gpt_oss_folder(tmp_path_factory.mktemp("llm") / "tiny", LAYERS, EXPERTS, 64, 64, layers_per_shard=2)


def test_parts_are_the_blocks_and_the_rest(model):
    source = llm.open_single_model(model)
    assert llm.model_parts(source) == ["block000", "block001", "block002", "other"]
    assert llm.part_of("model.layers.12.mlp.experts.3.up_proj") == "block012"
    assert llm.part_of("lm_head.weight") == "other"
    names = [ref.name for part in llm.model_parts(source) for ref in llm.part_source(source, part).tensors]
    assert sorted(names) == sorted(ref.name for ref in source.tensors)


def test_experts_split_into_parts_of_k_experts(model):
    source = llm.open_single_model(model)
    assert llm.part_of("model.layers.12.mlp.experts.5.up_proj", 4) == "block012_experts004"
    assert llm.part_of("model.layers.12.self_attn.q_proj.weight", 4) == "block012"
    parts = llm.model_parts(source, experts_per_part=1)
    assert parts == [f"block{b:03d}{suffix}" for b in range(LAYERS) for suffix in ("", "_experts000", "_experts001")] \
        + ["other"]
    expert_part = llm.part_source(source, "block001_experts001", experts_per_part=1)
    assert sorted(ref.name for ref in expert_part.tensors) == [
        f"model.layers.1.mlp.experts.1.{p}" for p in ("down_proj", "gate_proj", "up_proj")]


def test_scattered_by_expert_equals_the_one_process_table(model):
    one_process, _ = analyze_path(model)
    source = llm.open_single_model(model)
    tables = [llm.analyze_part(model, part, experts_per_part=1, progress=False)[0]
              for part in llm.model_parts(source, experts_per_part=1)]
    gathered = llm.gather_parts(model, tables)
    columns = [c for c in one_process.columns if c not in TIMING]
    pd.testing.assert_frame_equal(gathered[columns], one_process[columns], check_dtype=False)


def test_scattered_table_equals_the_one_process_table(model, tmp_path):
    one_process, skipped = analyze_path(model)
    parts = [llm.analyze_part(model, part, progress=False) for part in llm.model_parts(llm.open_single_model(model))]
    # each part through its CSV, as the workflow's jobs hand it over, and in reverse order
    tables = []
    for index, (table, _) in enumerate(reversed(parts)):
        table.to_csv(tmp_path / f"part{index}.csv", index=False)
        tables.append(llm.read_part_table(tmp_path / f"part{index}.csv"))
    gathered = llm.gather_parts(model, tables)
    columns = [c for c in one_process.columns if c not in TIMING]
    pd.testing.assert_frame_equal(gathered[columns], one_process[columns], check_dtype=False)
    assert len(llm.gather_skipped([s for _, s in parts])) == len(skipped)


def test_annotation_and_flagged_list(model):
    table, _ = analyze_path(model)
    annotated = llm.annotate(table)
    row = annotated.set_index("layer").loc["model.layers.2.mlp.experts.1.gate_proj"]
    assert (row["block"], row["expert"], row["projection"], row["layer_type"]) == (2, 1, "gate_proj",
                                                                                  "expert gate_proj")
    head = annotated.set_index("layer").loc["lm_head"]
    assert pd.isna(head["block"]) and head["layer_type"] == "head"
    flagged = llm.flagged_layers(annotated)
    alpha_low = set(annotated.loc[annotated["alpha"] < 2, "layer"])
    trapped = set(annotated.loc[annotated["num_traps"] > 0, "layer"])
    assert trapped, "expert 0 of the synthetic model has a mean shift: it must have traps"
    assert set(flagged["layer"]) == alpha_low | trapped
    both = flagged[flagged["flag"] == "alpha<2 and traps"]
    assert set(both["layer"]) == alpha_low & trapped


@pytest.fixture(scope="module")
def one_block_model(tmp_path_factory):
    """The workflow's test model: one block (two parts, block000 and other), to keep the jobs few."""
    return write_gpt_oss_folder(tmp_path_factory.mktemp("llm") / "one_block", 1, EXPERTS, 64, 64)


def _snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "llm.smk"), "--configfile",
               str(config), "-d", str(workdir), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


def test_workflow_scatters_gathers_and_reruns_only_a_lost_part(one_block_model, tmp_path):
    model = one_block_model
    config = tmp_path / "llm.yaml"
    by_expert = tmp_path / "by_expert.yaml"
    by_expert.write_text(yaml.safe_dump({"llm": {"name": "tiny", "model": str(model), "experts_per_job": 1}}))
    workdir = tmp_path / "work"
    plan = dry_run_jobs(_snakemake(workdir, by_expert, "-n").stdout)
    # block000 (attention, router), block000_experts000, block000_experts001, other
    assert plan == {"all": 1, "llm_figures": 1, "llm_gather": 1, "llm_part": 2 + EXPERTS}
    config.write_text(yaml.safe_dump({"llm": {"name": "tiny", "model": str(model)}}))
    assert dry_run_jobs(_snakemake(workdir, config, "-n").stdout)["llm_part"] == 2  # block000, other
    _snakemake(workdir, config, "--cores", "2")
    out = workdir / "results" / "llm" / "tiny"
    gathered = pd.read_csv(out / "htsr.csv")
    one_process, _ = analyze_path(model)
    np.testing.assert_array_equal(gathered["layer"], one_process["layer"])
    np.testing.assert_array_equal(gathered["alpha"], one_process["alpha"])
    np.testing.assert_array_equal(gathered["num_traps"], one_process["num_traps"])
    assert (out / "alpha_by_type.png").stat().st_size > 0 and (out / "traps_per_layer.png").stat().st_size > 0
    flagged = pd.read_csv(out / "flagged.csv")
    assert list(flagged.columns) == llm.FLAGGED_COLUMNS and len(flagged) > 0
    # a run stopped while block000's job ran (so before the gather): only that part and what follows rerun
    for name in ["parts/block000.csv", "parts/block000.skipped.csv", "htsr.csv", "skipped.csv", "flagged.csv",
                 "alpha_by_type.png", "traps_per_layer.png"]:
        (out / name).unlink()
    plan = dry_run_jobs(_snakemake(workdir, config, "-n").stdout)
    assert plan == {"all": 1, "llm_figures": 1, "llm_gather": 1, "llm_part": 1}


def test_llm_workflow_lint_and_format(one_block_model, tmp_path):
    config = tmp_path / "llm.yaml"
    config.write_text(yaml.safe_dump({"llm": {"name": "tiny", "model": str(one_block_model)}}))
    result = _snakemake(tmp_path / "work", config, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    formatted = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "workflow/llm.smk"], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert formatted.returncode == 0, formatted.stderr[-3000:]


def test_llm_keys_documented_with_the_schema_defaults():
    """docs/own-models.md's llm key table lists exactly llm.schema.yaml's keys, with its defaults."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "llm.schema.yaml").read_text())
    keys = schema["properties"]["llm"]["properties"]
    rows = {}
    for line in (REPO / "docs" / "own-models.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`llm."):
            rows[cells[0].strip("`").removeprefix("llm.")] = cells[1]
    assert set(rows) == set(keys)
    for key, spec in keys.items():
        if "default" in spec:
            documented = yaml.safe_load(rows[key].strip("`"))
            assert documented == spec["default"], f"llm.{key}: documented {rows[key]}, schema {spec['default']!r}"
        else:
            assert key in schema["properties"]["llm"]["required"] and rows[key].startswith("none")


def test_slurm_profile_gives_the_part_jobs_the_configured_resources(one_block_model, tmp_path):
    config = tmp_path / "llm.yaml"
    config.write_text(yaml.safe_dump({"llm": {"name": "tiny", "model": str(one_block_model), "mem_mb": 3000,
                                              "runtime": 90}}))
    out = _snakemake(tmp_path / "work", config, "-n", "--profile", str(REPO / "profiles" / "slurm")).stdout
    part = out.split("rule llm_part:", 1)[1].split("\n\n", 1)[0]
    assert "mem_mb=3000" in part and "runtime=90" in part and "cpus_per_task=1" in part


def test_the_shipped_llm_config_is_valid():
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "configs" / "llm.yaml").read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "llm.schema.yaml"))
    assert config["llm"]["experts_per_job"] == 0 and config["llm"]["mem_mb"] == 4000  # defaults filled
    with pytest.raises(Exception, match="models"):
        validate({"llm": {"name": "x", "model": "m", "models": 1}}, str(REPO / "workflow" / "schemas" /
                                                                         "llm.schema.yaml"))
