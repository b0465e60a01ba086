"""Shared fixtures: paths, the offline MNIST copy, and one smoke workflow run per test session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skipped_slurm import report_skipped_slurm_tests

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
WORKFLOW_FILES = ["Snakefile", "config.yaml", "configs", "workflow", "envs", "profiles", "tests/smoke.yaml"]


def have_mnist() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


requires_mnist = pytest.mark.skipif(not have_mnist(), reason=f"offline MNIST copy not found at {SHARED_DATA}")


def copy_workflow(destination: Path) -> Path:
    """A copy of the workflow's files in ``destination``, to run snakemake without touching the repo."""
    for name in WORKFLOW_FILES:
        source = REPO / name
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, target)
    return destination


def snakemake(workdir: Path, *args: str, overrides: dict | None = None, check: bool = True,
              timeout: int = 2400) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` with the smoke config and the offline data root.

    ``overrides`` is a nested dict of config changes, e.g. ``{"traps": {"tracy_widom_scale": 2.0}}``,
    written to a second config file (snakemake's ``--config`` takes neither nested keys nor
    typed nested values).
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    override_file = workdir / "test_overrides.yaml"
    override_file.write_text(yaml.safe_dump({"data": {"root": str(SHARED_DATA)}, **(overrides or {})}))
    command = [
        sys.executable, "-m", "snakemake", "--configfile", "tests/smoke.yaml", override_file.name, *args,
    ]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-5000:]}\n{result.stderr[-8000:]}"
        )
    return result


def dry_run_jobs(output: str) -> dict[str, int]:
    """The ``Job stats`` table of ``snakemake -n`` as {rule: count}; {} when nothing is to be done."""
    if "Job stats:" not in output:
        assert "Nothing to be done" in output, output[-3000:]
        return {}
    jobs = {}
    for line in output.split("Job stats:", 1)[1].splitlines():
        match = re.match(r"^\s*(\S+)\s+(\d+)\s*$", line)
        if match and match.group(1) == "total":
            break
        if match:
            jobs[match.group(1)] = int(match.group(2))
    return jobs


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> Path:
    """A completed smoke workflow (tests/smoke.yaml) in a temporary copy: results/ under it."""
    if not have_mnist():
        pytest.skip(f"offline MNIST copy not found at {SHARED_DATA}")
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke"))
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as a training job (train.threads: 1): fast and steady on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The tests run in two pytest-xdist workers (pyproject.toml's addopts: -n 2, --dist loadgroup). Each
# module is one group, so its module-scoped fixtures are built once; the tests that read the smoke
# workflow are one group wherever they live, so the session fixture runs the workflow once. The two
# longest groups, the smoke workflow and the live SLURM test, go first (in this order, which
# --no-loadscope-reorder keeps), one to each worker, and the modules fill in beside them.
SMOKE_GROUP, SLURM_GROUP = "smoke_workflow", "live_slurm_cluster"


def xdist_group(item) -> str:
    if "smoke_workdir" in item.fixturenames:
        return SMOKE_GROUP
    if item.get_closest_marker("slurm") is not None:
        return SLURM_GROUP
    return item.nodeid.split("::")[0]


# tryfirst: xdist's worker reads the xdist_group markers in its own pytest_collection_modifyitems, so
# they must be on the items before it runs; added after it, they group nothing.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    first = {SMOKE_GROUP: 0, SLURM_GROUP: 1}
    groups = {id(item): xdist_group(item) for item in items}
    items.sort(key=lambda item: first.get(groups[id(item)], len(first)))  # stable: the rest keep their order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[id(item)]))


def pytest_terminal_summary(terminalreporter):
    report_skipped_slurm_tests(terminalreporter)
