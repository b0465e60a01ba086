"""The xdist grouping of tests/conftest.py: the smoke workflow runs once, the long groups go first."""

from __future__ import annotations

import os
import subprocess
import sys
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
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
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
