"""CPU seconds per test, per xdist group and per worker of a pytest run: what to cut to shorten the suite.

Wall time on a machine shared with other work says little; CPU seconds do not depend on it. As a pytest
plugin this module appends, for every test (its setup, call and teardown, fixtures included), the
worker's own CPU and that of the child processes it waited for (a snakemake run and its jobs) to a JSON
lines file; run as a script it sums that file.

    PYTHONPATH=benchmarks PYTEST_ADDOPTS="-p pytest_cpu" python -m pytest -q     # writes /tmp/pytest_cpu.jsonl
    python benchmarks/pytest_cpu.py /tmp/pytest_cpu.jsonl                        # the summary

PYTEST_CPU_OUT names another file. Not counted: work that is not a waited-for child, such as the jobs
slurmd runs in the live SLURM test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import Counter
from pathlib import Path

import pytest

DEFAULT_OUT = "/tmp/pytest_cpu.jsonl"


def _cpu_seconds() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started, (own, children) = time.perf_counter(), _cpu_seconds()
    yield
    own_after, children_after = _cpu_seconds()
    row = {"test": item.nodeid, "wall_s": time.perf_counter() - started, "own_cpu_s": own_after - own,
           "children_cpu_s": children_after - children, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
    with open(os.environ.get("PYTEST_CPU_OUT", DEFAULT_OUT), "a") as out:
        out.write(json.dumps(row) + "\n")


def group_of(nodeid: str) -> str:
    """The xdist group loadgroup gave the test (its node id's ``@`` suffix, read as xdist reads it: an ``@``
    inside a parameter id is not one), else its module."""
    return nodeid.rsplit("@", 1)[1] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid.split("::")[0]


def summary(rows: list[dict], top: int) -> str:
    cpu = [row["own_cpu_s"] + row["children_cpu_s"] for row in rows]
    workers, groups = Counter(), Counter()
    for row, seconds in zip(rows, cpu):
        workers[row["worker"]] += seconds
        groups[group_of(row["test"])] += seconds
    lines = [f"{len(rows)} tests, {sum(cpu):.0f} s CPU in all",
             "per worker: " + ", ".join(f"{worker} {seconds:.0f} s" for worker, seconds in sorted(workers.items())),
             "", "| group | CPU s |", "|---|---|"]
    lines += [f"| {group} | {seconds:.1f} |" for group, seconds in groups.most_common(top)]
    lines += ["", "| test | CPU s | of it in children | wall s |", "|---|---|---|---|"]
    ranked = sorted(zip(rows, cpu), key=lambda pair: -pair[1])[:top]
    lines += [f"| {row['test']} | {seconds:.1f} | {row['children_cpu_s']:.1f} | {row['wall_s']:.1f} |"
              for row, seconds in ranked]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=Path, nargs="?", default=Path(DEFAULT_OUT))
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    print(summary(rows, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
