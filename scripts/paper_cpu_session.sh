#!/usr/bin/env bash
# Start or continue the paper's own experiment (configs/paper_cpu.yaml, issue 32) for one working
# period: restore the committed states where this machine has nothing newer, train in the
# background, analyse each checkpoint as it appears and commit the rows hourly (docs/long-runs.md).
# Before the period ends (within 150 minutes of its start), commit the resume states once:
#   .venv/bin/python scripts/long_run.py save-state --configfile configs/paper_cpu.yaml --out docs/reference/paper_cpu --commit
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/paper_cpu.yaml
out=docs/reference/paper_cpu
[ -e data ] || ln -s ../shared/data data  # MNIST in torchvision's layout; nothing downloads here
mkdir -p logs
.venv/bin/python scripts/long_run.py restore --configfile "$config" --out "$out"
# A period that ended by being killed leaves Snakemake's lock behind; lift it only when no
# Snakemake of this work tree is still running.
if ! pgrep -f "snakemake --configfile $config" > /dev/null; then
    .venv/bin/snakemake --configfile "$config" --unlock > /dev/null 2>&1
fi
nohup .venv/bin/snakemake --configfile "$config" --cores 2 --until train --rerun-incomplete \
    >> logs/paper_cpu_snakemake.log 2>&1 &
echo "training: pid $!, log logs/paper_cpu_snakemake.log and logs/train/mnist_mlp/"
nohup .venv/bin/python scripts/long_run.py follow --configfile "$config" --out "$out" --commit \
    >> logs/paper_cpu_follow.log 2>&1 &
echo "analysis: pid $!, log logs/paper_cpu_follow.log"
