"""The xdist grouping of tests/conftest.py: the smoke workflow runs once, the long groups go first."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from types import SimpleNamespace

from conftest import REPO, SLURM_GROUP, SMOKE_GROUP, pytest_collection_modifyitems, xdist_group


def fake_item(nodeid: str, fixtures=(), markers=()):
    added = []
    return SimpleNamespace(
        nodeid=nodeid,
        fixturenames=list(fixtures),
        get_closest_marker=lambda name: name if name in markers else None,
        add_marker=added.append,
        added=added,
    )


def test_a_smoke_reader_joins_the_smoke_group_wherever_its_module_is():
    assert xdist_group(fake_item("tests/test_traps.py::test_a", fixtures=["tmp_path", "smoke_workdir"])) == SMOKE_GROUP
    assert xdist_group(fake_item("tests/test_traps.py::test_b", fixtures=["tmp_path"])) == "tests/test_traps.py"
    assert xdist_group(fake_item("tests/test_slurm.py::test_c", markers=["slurm"])) == SLURM_GROUP


def test_the_smoke_and_slurm_groups_go_first_and_the_rest_keep_their_order():
    items = [
        fake_item("tests/test_a.py::test_1"),
        fake_item("tests/test_slurm.py::test_live", markers=["slurm"]),
        fake_item("tests/test_b.py::test_2"),
        fake_item("tests/test_c.py::test_reads_smoke", fixtures=["smoke_workdir"]),
        fake_item("tests/test_a.py::test_3"),
    ]
    pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == [
        "tests/test_c.py::test_reads_smoke",
        "tests/test_slurm.py::test_live",
        "tests/test_a.py::test_1",
        "tests/test_b.py::test_2",
        "tests/test_a.py::test_3",
    ]
    assert [[marker.args for marker in item.added] for item in items] == [
        [(SMOKE_GROUP,)], [(SLURM_GROUP,)], [("tests/test_a.py",)], [("tests/test_b.py",)], [("tests/test_a.py",)]
    ]


PROBE = '''
def pytest_collection_finish(session):
    for item in session.items:
        group = item.get_closest_marker("xdist_group")
        print("GROUP", item.nodeid, group.args[0] if group else None, sorted(item.fixturenames))
'''


# A module with smoke readers and other tests, the live SLURM module, and a plain module.
COLLECTED_MODULES = ["tests/test_traps.py", "tests/test_slurm.py", "tests/test_phases.py"]


def test_the_collected_suite_carries_the_groups_xdist_reads(tmp_path):
    """Collected for real: xdist's loadgroup reads the ``xdist_group`` marker each item carries."""
    (tmp_path / "group_probe.py").write_text(PROBE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "group_probe", *COLLECTED_MODULES],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split(" ", 3)[1:] for line in result.stdout.splitlines() if line.startswith("GROUP ")]
    assert rows, result.stdout[-3000:]
    groups = {nodeid: group for nodeid, group, _ in rows}
    readers = [nodeid for nodeid, _, fixtures in rows if "'smoke_workdir'" in fixtures]
    assert readers, "tests/test_traps.py reads the smoke workflow; nothing collected did"
    assert {groups[nodeid] for nodeid in readers} == {SMOKE_GROUP}
    assert {group for nodeid, group in groups.items() if nodeid.startswith("tests/test_slurm.py")} == {SLURM_GROUP}
    assert {group for nodeid, group in groups.items() if nodeid.startswith("tests/test_phases.py")} == {
        "tests/test_phases.py"
    }
    first_groups = [group for _, group, _ in rows][: len(readers)]
    assert set(first_groups) == {SMOKE_GROUP}, "the smoke workflow's group starts first"


# A suite in miniature, run by real xdist workers: three modules whose first test reads a stand-in for
# the smoke workflow (a session fixture that leaves one file per worker that built it).
LIVE_CONFTEST = '''
import importlib.util, os, sys
from pathlib import Path
import pytest

sys.path.insert(0, {tests!r})
_spec = importlib.util.spec_from_file_location("repo_conftest", {conftest!r})
_repo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_repo)
pytest_collection_modifyitems = _repo.pytest_collection_modifyitems


@pytest.fixture(scope="session")
def smoke_workdir():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (Path(__file__).parent / f"built_by_{{worker}}").touch()
    return worker
'''
LIVE_MODULE = '''
def test_reads_the_smoke_workflow(smoke_workdir):
    pass

def test_other():
    pass
'''


def test_xdist_builds_the_smoke_workflow_once_across_both_workers(tmp_path):
    """With the installed pytest and pytest-xdist and pyproject.toml's options, every smoke reader runs in
    one worker, so the workflow is built once. Two things broke this silently, and each worker built its
    own smoke workflow: conftest's hook adding the groups after xdist's worker had read them (it now runs
    tryfirst), and pytest 9.2, with which xdist 3.8's group names no longer reach its scheduler
    (pytest-dev/pytest-xdist#1386; the test extra pins pytest < 9.2)."""
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "loadgroup" in addopts
    (tmp_path / "pytest.ini").write_text(f"[pytest]\naddopts = {addopts}\n")
    (tmp_path / "conftest.py").write_text(
        LIVE_CONFTEST.format(tests=str(REPO / "tests"), conftest=str(REPO / "tests" / "conftest.py"))
    )
    for name in ("a", "b", "c"):
        (tmp_path / f"test_{name}.py").write_text(LIVE_MODULE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 passed" in result.stdout, result.stdout[-3000:]
    builders = sorted(path.name for path in tmp_path.glob("built_by_*"))
    assert len(builders) == 1, f"the smoke workflow was built by {builders}: xdist did not keep its group on one worker"


def test_the_cpu_benchmark_reads_each_tests_group_as_xdist_does():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pytest_cpu import group_of, summary

    assert group_of("tests/test_docs.py::test_headers@smoke_workflow") == "smoke_workflow"
    assert group_of("tests/test_htsr.py::test_a[x@y]") == "tests/test_htsr.py"  # an @ in a parameter id
    assert group_of("tests/test_htsr.py::test_a[x@y]@tests/test_htsr.py") == "tests/test_htsr.py"
    rows = [{"test": "tests/a.py::t@g", "wall_s": 9.0, "own_cpu_s": 1.0, "children_cpu_s": 5.0, "worker": "gw0"},
            {"test": "tests/b.py::u", "wall_s": 2.0, "own_cpu_s": 2.0, "children_cpu_s": 0.0, "worker": "gw1"}]
    text = summary(rows, top=5)
    assert "2 tests, 8 s CPU in all" in text and "gw0 6 s, gw1 2 s" in text
    assert "| g | 6.0 |" in text and "| tests/b.py | 2.0 |" in text
