"""The test summary's banner when the live SLURM test was skipped (conftest.py's
pytest_terminal_summary): CI that skipped it must not look like CI that ran it."""

from __future__ import annotations

BANNER = "the live SLURM cluster test did NOT run"


def report_skipped_slurm_tests(terminalreporter) -> None:
    """Name each skipped test marked `slurm` and its reason, in red, after pytest's summary."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "slurm" in report.keywords]
    if not skipped:
        return
    terminalreporter.write_sep("!", BANNER, red=True, bold=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}", red=True, bold=True)
    terminalreporter.write_line(
        "profiles/slurm went untested in this run; as root on Debian, .ci/run installs slurm-wlm and munge "
        "(docs/slurm.md, 'The cluster test')", red=True,
    )
