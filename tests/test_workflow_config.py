"""antigrok.workflow_config: the config as the Snakefile builds it, outside Snakemake."""

import pytest
import yaml
from snakemake.exceptions import WorkflowError

from antigrok.mechanism.removal import RemovalSettings
from antigrok.schema import SCHEMA, section_defaults
from antigrok.study.detector import DEFAULT_DETECTOR
from antigrok.study.phases import PhaseThresholds
from antigrok.study.progress import ProgressSettings
from antigrok.training.train import RunSpec
from antigrok.workflow_config import (
    batched_unsupported_reason,
    describe_experiment,
    load_workflow_config,
    overlay_experiments,
)
from conftest import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def test_a_configfile_replaces_the_experiments_and_merges_the_rest_key_by_key(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"experiments": {"mine": BASE["experiments"]["mnist_mlp"]},
                                       "traps": {"tracy_widom_scale": 2.0}}))
    config = load_workflow_config([overlay])
    assert list(config["experiments"]) == ["mine"]
    assert config["traps"]["tracy_widom_scale"] == 2.0
    # the keys the overlay leaves alone keep config.yaml's values, and the schema fills what neither sets
    assert config["phases"] == {**config["phases"], **BASE["phases"]}
    assert "mechanism" in config and config["mechanism"]["probe_inputs"] == 2000


def test_without_a_configfile_it_is_config_yaml_validated():
    config = load_workflow_config()
    assert list(config["experiments"]) == list(BASE["experiments"])


def test_several_configfiles_merge_their_experiments_in_order():
    mlp = BASE["experiments"]["mnist_mlp"]
    merged = overlay_experiments([{"experiments": {"a": mlp}}, {"experiments": {"a": {"steps": 7}, "b": mlp}}, {}])
    assert list(merged) == ["a", "b"]
    assert merged["a"]["steps"] == 7 and merged["a"]["optimizer"] == mlp["optimizer"]
    assert mlp["steps"] != 7  # the overlays are not changed


def test_an_invalid_configfile_is_refused_naming_the_key(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"experiments": {"mine": BASE["experiments"]["mnist_mlp"]},
                                       "traps": {"tracy_widom_scale": "large"}}))
    with pytest.raises(WorkflowError, match="'large' is not of type 'number'"):
        load_workflow_config([overlay])
    # as in the Snakefile, a configfile states its experiments in full: one without any is refused
    overlay.write_text(yaml.safe_dump({"traps": {"tracy_widom_scale": 2.0}}))
    with pytest.raises(WorkflowError, match="should be non-empty"):
        load_workflow_config([overlay])


def test_the_batched_engine_trains_mse_mlps_only():
    mlp = BASE["experiments"]["mnist_mlp"]
    assert batched_unsupported_reason(mlp) is None
    assert "MLPs only" in batched_unsupported_reason({**mlp, "model": {**mlp["model"], "name": "transformer"}})
    assert "MSE" in batched_unsupported_reason({**mlp, "loss": "cross_entropy"})


def test_the_experiment_label_carries_lr_and_steps():
    experiments = load_workflow_config([REPO / "configs" / "cpu.yaml"])["experiments"]
    assert describe_experiment("mnist_lr5e-3", experiments) == (
        "mnist_lr5e-3: mlp 784-200-200-10, adamw lr 0.005, 200000 steps, batch 200, float64")
    assert "lr and steps unknown" in describe_experiment("other", experiments)


def test_the_experiment_label_of_a_transformer_gives_its_d_model():
    experiments = load_workflow_config()["experiments"]
    assert describe_experiment("modadd_transformer", experiments) == (
        "modadd_transformer: transformer d_model 128, adamw lr 0.001, 1000000 steps, batch 12769, float64")


def test_the_settings_take_their_defaults_from_the_schema():
    config = load_workflow_config()  # config.yaml leaves these sections to the schema
    assert PhaseThresholds() == PhaseThresholds(**section_defaults("phases"))
    assert ProgressSettings() == ProgressSettings.from_mapping(section_defaults("progress"))
    assert DEFAULT_DETECTOR == section_defaults("detector")
    assert RemovalSettings() == RemovalSettings.from_config(section_defaults("mechanism"),
                                                            section_defaults("traps")["tracy_widom_scale"])
    spec = RunSpec("x", {}, 0.0, 0)
    assert (spec.checkpoint_per_decade, spec.log_per_decade) == (section_defaults("checkpoints")["per_decade"],
                                                                 section_defaults("log")["per_decade"])
    assert set(section_defaults("phases")) <= set(config["phases"])


def test_scripts_load_the_config_through_the_one_loader():
    readers = [path.relative_to(REPO) for folder in ("scripts", "benchmarks", "workflow/scripts")
               for path in sorted((REPO / folder).rglob("*.py")) if "yaml.safe_load" in path.read_text()]
    assert not readers, f"{readers} read a YAML config directly; use antigrok.workflow_config.load_workflow_config"


SHIPPED_CONFIGS = [None, REPO / "tests" / "smoke.yaml",
                   *sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "llm.yaml")]


TRANSFORMER_OPTIONS = ("layer_norm", "logits_dtype")


@pytest.mark.parametrize("configfile", SHIPPED_CONFIGS, ids=lambda path: path.name if path else "config.yaml")
def test_the_transformer_options_change_no_shipped_experiments_settings(configfile, tmp_path):
    """model.layer_norm and model.logits_dtype have no schema default: a config that does not give
    them has the run settings (so the RunSpec fingerprints and the train params) it had before the
    schema knew them. A config that gives them is new and is refused by the schema without them."""
    schema = yaml.safe_load(SCHEMA.read_text())
    model = schema["properties"]["experiments"]["additionalProperties"]["properties"]["model"]["properties"]
    for key in TRANSFORMER_OPTIONS:
        assert "default" not in model.pop(key), key
    old_schema = tmp_path / "schema_before_the_options.yaml"
    old_schema.write_text(yaml.safe_dump(schema))
    configfiles = [configfile] if configfile else []
    settings = load_workflow_config(configfiles)["experiments"]
    if any(key in experiment["model"] for experiment in settings.values() for key in TRANSFORMER_OPTIONS):
        with pytest.raises(WorkflowError, match="Additional properties are not allowed"):
            load_workflow_config(configfiles, schema=old_schema)
        return
    before = load_workflow_config(configfiles, schema=old_schema)["experiments"]
    assert settings == before
    assert [RunSpec(name, settings[name], 0.0, 0).fingerprint() for name in settings] == \
        [RunSpec(name, before[name], 0.0, 0).fingerprint() for name in before]
