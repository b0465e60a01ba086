"""CPU seconds per rule of a Snakemake run, and of Snakemake's own process, from each Python process.

Snakemake's benchmark files time only the rules that declare ``benchmark:``, and wall time on a busy
machine says little. This runs the command with a ``sitecustomize`` on PYTHONPATH that appends, when
each Python process exits, its own user + system CPU seconds (children excluded), wall seconds and
command line; then sums them per script (a ``script:`` job runs .snakemake/scripts/tmpXXXX.{script}.py,
and this workflow names each script after its rule) and for the snakemake process itself.

    python benchmarks/job_cpu.py -- snakemake --cores 2 --configfile tests/smoke.yaml

Run it in a copy of the workflow (results/ is written as usual). Shell jobs and non-Python tools are not
counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HOOK = '''
import atexit, os, sys, time
_started = time.time()
def _record():
    times = os.times()
    with open({record!r}, "a") as out:
        out.write(f"{{times.user + times.system:.3f}}\\t{{time.time() - _started:.1f}}\\t{{' '.join(sys.argv)}}\\n")
atexit.register(_record)
'''
SCRIPT_JOB = re.compile(r"\.snakemake/scripts/tmp[^.]+\.(?P<script>\w+)\.py")


def process_kind(command: str) -> str:
    match = SCRIPT_JOB.search(command)
    if match:
        return match.group("script")
    return "snakemake (scheduler)" if "snakemake" in command.split(" ")[0] else f"other: {command[:60]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    with tempfile.TemporaryDirectory() as hook_dir:
        record = Path(hook_dir) / "processes.tsv"
        (Path(hook_dir) / "sitecustomize.py").write_text(HOOK.format(record=str(record)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [hook_dir, os.environ.get("PYTHONPATH")])))
        returncode = subprocess.run(command, env=env).returncode
        lines = record.read_text().splitlines() if record.exists() else []
    cpu, count = defaultdict(float), defaultdict(int)
    for line in lines:
        seconds, _, process = line.split("\t", 2)
        kind = process_kind(process)
        cpu[kind] += float(seconds)
        count[kind] += 1
    print("| process (script) | count | CPU s | CPU s each |\n|---|---|---|---|")
    for kind in sorted(cpu, key=cpu.get, reverse=True):
        print(f"| {kind} | {count[kind]} | {cpu[kind]:.1f} | {cpu[kind] / count[kind]:.1f} |")
    print(f"| **all** | {sum(count.values())} | **{sum(cpu.values()):.1f}** | |")
    sys.exit(returncode)


if __name__ == "__main__":
    main()
