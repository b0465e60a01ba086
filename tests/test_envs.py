"""envs/*.yaml stay consistent with pyproject.toml, and every rule names a log and an environment."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$")


def parse(requirement: str) -> tuple[str, str]:
    name, spec = REQUIREMENT.match(requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


PROJECT_PINS = dict(parse(r) for r in PYPROJECT["project"]["dependencies"])
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def env_requirements(path):
    """(name, spec) of every conda and pip dependency of an env file, except the package itself."""
    dependencies = yaml.safe_load(path.read_text())["dependencies"]
    found = []
    for entry in dependencies:
        if isinstance(entry, dict):
            found += [parse(r) for r in entry.get("pip", []) if not r.startswith("-e")]
        elif not entry.startswith(("python=", "pip")):
            found.append(parse(entry))
    return found


def test_every_env_the_rules_name_is_an_env_file():
    # (was: "there are env files", true of any one file) The rules' conda: paths, relative to
    # workflow/rules/, must each be a file of envs/ that the tests below check.
    named = set(re.findall(r'"\.\./\.\./(envs/[\w.-]+\.yaml)"', (REPO / "workflow/rules/common.smk").read_text()))
    assert named, "workflow/rules/common.smk names no envs/*.yaml"
    assert {REPO / name for name in named} <= set(ENV_FILES)


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_pyproject(path):
    for name, spec in env_requirements(path):
        assert name in PROJECT_PINS, f"{path.name}: {name} is not a dependency in pyproject.toml"
        assert spec == PROJECT_PINS[name], f"{path.name}: {name}{spec} but pyproject.toml has {name}{PROJECT_PINS[name]}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_installs_the_package(path):
    pip = next(e["pip"] for e in yaml.safe_load(path.read_text())["dependencies"] if isinstance(e, dict))
    assert "-e .." in pip, f"{path.name} must install the antigrok package (pip: -e ..)"


def test_every_pinned_dependency_is_in_some_env():
    """weightwatcher and torch must be pinned exactly where the rules run them."""
    in_envs = {name for path in ENV_FILES for name, _ in env_requirements(path)}
    for name in ["torch", "weightwatcher"]:
        assert name in in_envs


def test_every_rule_has_log_and_conda_and_lint_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", "tests/smoke.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, (
        result.stdout[-4000:] + result.stderr[-4000:]
    )
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
        name = rule.split(":")[0]
        if name == "all":
            continue
        assert "\n    log:" in rule, f"rule {name} has no log:"
        assert "\n    conda:" in rule, f"rule {name} has no conda:"


def test_snakefmt_formatted():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
