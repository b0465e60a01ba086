"""`snakemake --profile slurm` from the project root is `--profile profiles/slurm`.

Snakemake 9 looks a profile name up in the working directory, then in the user and site config
folders (snakemake.cli.get_profile_dir); the root symlink `slurm -> profiles/slurm` makes the short
name resolve in the project root. Checked with dry runs in a copy of the workflow: a dry run needs
no SLURM (the executor plugin is loaded, nothing is submitted), and the profile's `set-resources`
(train: gpu 1, runtime 1440, mem_mb 8000) show up in the jobs it plans, which tells that the
shipped profile, not some other one, was read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, copy_workflow

PROFILE_LINK = REPO / "slurm"
USED_PROFILE = "Using profile {} for setting default command line arguments."
# One planned job of `snakemake -n`: its rule, then (a few lines on) its resources.
PLANNED_JOB = re.compile(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", re.MULTILINE)


def test_the_root_slurm_link_points_at_the_shipped_profile():
    assert PROFILE_LINK.is_symlink(), "slurm at the project root must be a symlink to profiles/slurm"
    assert os.readlink(PROFILE_LINK) == "profiles/slurm", "keep the link relative, so clones keep it"
    assert (PROFILE_LINK / "config.yaml").resolve() == (REPO / "profiles" / "slurm" / "config.yaml").resolve()


@pytest.fixture()
def workflow_with_link(tmp_path) -> Path:
    workdir = copy_workflow(tmp_path / "workflow")
    os.symlink(os.readlink(PROFILE_LINK), workdir / "slurm")
    return workdir


def dry_run(workdir: Path, profile: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "-n", "--profile", profile, "--configfile", "tests/smoke.yaml"]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def planned_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: the distinct resources of its planned jobs} from a dry run's output.

    Snakemake prints a job's resources in no fixed order, so each line becomes a dict.
    """
    resources: dict[str, set[frozenset]] = {}
    for rule, line in PLANNED_JOB.findall(output):
        items = frozenset(tuple(item.split("=", 1)) for item in line.split(", "))
        resources.setdefault(rule, set()).add(items)
    return {rule: sorted((dict(items) for items in lines), key=sorted) for rule, lines in resources.items()}


def test_short_name_and_path_give_the_profiles_resources(workflow_with_link):
    plans = {}
    for profile in ("slurm", "profiles/slurm"):
        result = dry_run(workflow_with_link, profile)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert USED_PROFILE.format(profile) in output, output[-4000:]
        plans[profile] = planned_resources(result.stdout)
    assert plans["slurm"] == plans["profiles/slurm"]

    assert plans["slurm"]["train"], "the smoke DAG plans training jobs"
    for job in plans["slurm"]["train"]:
        assert (job.get("gpu"), job.get("runtime"), job.get("mem_mb")) == ("1", "1440", "8000"), job
    assert plans["slurm"]["spectra"], "the smoke DAG plans spectra jobs"
    for job in plans["slurm"]["spectra"]:
        assert (job.get("gpu"), job.get("runtime"), job.get("mem_mb")) == (None, "60", "4000"), job


def test_without_the_link_the_short_name_is_not_found(tmp_path):
    """Why the link exists: Snakemake does not look in profiles/ for --profile NAME."""
    from snakemake.common import get_appdirs

    dirs = get_appdirs()
    for folder in (dirs.user_config_dir, dirs.site_config_dir):
        if (Path(folder) / "slurm").exists():
            pytest.skip(f"a profile named slurm in {folder} would answer the short name here")
    workdir = copy_workflow(tmp_path / "workflow")
    result = dry_run(workdir, "slurm")
    assert result.returncode != 0
    assert "profile directory given (slurm), but no profile.yaml (or config.yaml) found" in result.stderr
