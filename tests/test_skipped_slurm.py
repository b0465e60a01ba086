"""A skipped live SLURM test is named, with its reason, in the test summary (skipped_slurm.py)."""

from __future__ import annotations

import pytest

from skipped_slurm import BANNER

pytest_plugins = ["pytester"]

CONFTEST = """
from skipped_slurm import report_skipped_slurm_tests

def pytest_terminal_summary(terminalreporter):
    report_skipped_slurm_tests(terminalreporter)
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slurm: live cluster\n")
    return pytester


def test_a_skipped_slurm_test_is_named_with_its_reason(suite):
    suite.makepyfile(test_cluster="""
        import pytest

        @pytest.fixture
        def cluster():
            pytest.skip("SLURM/munge not installed (missing slurmctld)")

        @pytest.mark.slurm
        def test_live(cluster):
            pass

        def test_other():
            pass
    """)
    result = suite.runpytest("-q")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"*{BANNER}*", "SKIPPED test_cluster.py::test_live: SLURM/munge not installed (missing slurmctld)"])


def test_no_banner_when_the_slurm_test_ran_or_another_test_was_skipped(suite):
    suite.makepyfile(test_cluster="""
        import pytest

        @pytest.mark.slurm
        def test_live():
            pass

        @pytest.mark.skip(reason="needs CUDA")
        def test_gpu():
            pass
    """)
    result = suite.runpytest("-q")
    result.assert_outcomes(passed=1, skipped=1)
    assert BANNER not in result.stdout.str()
