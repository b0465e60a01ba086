"""A minute-size version of the workflow's numeric chain, run with whichever antigrok is importable:
train (plain and fast steps, and the batched engine), spectra (fast engine), traps, phases, phase
edges, paper tables. Its CSVs at two commits are compared with scripts/compare_results.py:

    PYTHONPATH=OLD/src python scripts/mini_pipeline.py /tmp/old_results
    PYTHONPATH=NEW/src python scripts/mini_pipeline.py /tmp/new_results
    python scripts/compare_results.py /tmp/old_results /tmp/new_results

For a machine too busy for the smoke workflow (tests/smoke.yaml); uses only public functions
that exist on both sides of the refactoring of issue 14.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from antigrok import htsr
from antigrok.spectra import traps
from antigrok.study import phases
from antigrok.study import tables as summary
from antigrok.training.batched import train_runs
from antigrok.training.train import RunSpec, train_run

EXPERIMENT = {
    "dataset": {"name": "mnist"},
    "model": {"name": "mlp", "widths": [20, 16, 12, 4], "init_scale": 8.0},
    "loss": "mse",
    "optimizer": {"name": "adamw", "lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_steps": 5},
    "weight_decays": [0.0, 0.01],
    "seeds": [0, 1],
    "steps": 100,
    "batch_size": 16,
    "dtype": "float64",
}


def dataset(num_train=48, num_test=40, features=20, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "x_train": torch.rand(num_train, features, generator=generator),
        "y_train": torch.randint(0, classes, (num_train,), generator=generator),
        "x_test": torch.rand(num_test, features, generator=generator),
        "y_test": torch.randint(0, classes, (num_test,), generator=generator),
        "num_classes": classes,
    }


def main(out: Path) -> None:
    torch.set_num_threads(1)
    data = dataset()
    run_dirs = []
    for engine, experiment, seeds in (("fast", "small", EXPERIMENT["seeds"]), ("plain", "small_plain", [0])):
        for weight_decay in EXPERIMENT["weight_decays"]:
            for seed in seeds:
                run_dir = out / "runs" / experiment / f"wd{weight_decay}" / f"seed{seed}"
                spec = RunSpec(experiment, EXPERIMENT, weight_decay, seed, checkpoint_per_decade=4, log_per_decade=10)
                train_run(spec, data, run_dir, device="cpu", progress=False, cpu_engine=engine)
                run_dirs.append(run_dir)
    specs = [RunSpec("small_batched", EXPERIMENT, 0.01, seed, checkpoint_per_decade=4, log_per_decade=10)
             for seed in EXPERIMENT["seeds"]]
    batched_dirs = [out / "runs" / "small_batched" / "wd0.01" / f"seed{spec.seed}" for spec in specs]
    train_runs(specs, data, batched_dirs, device="cpu", progress=False)
    run_dirs += batched_dirs

    thresholds = phases.PhaseThresholds(smoothing_window=3, train_fit=0.5)
    for run_dir in run_dirs:
        seed = int(run_dir.name.removeprefix("seed"))
        htsr.write_spectra(run_dir / "checkpoints", run_dir / "htsr.csv", run_dir / "spectra.npz", run_seed=seed,
                           engine="fast")
        traps.write_traps(run_dir / "htsr.csv", run_dir / "spectra.npz", run_dir / "traps.csv", 1.0)
        traps.write_traps(run_dir / "htsr.csv", run_dir / "spectra.npz", run_dir / "traps_tw2.csv", 2.0)
        phases.write_phases(run_dir / "train_log.csv", run_dir / "phases.csv", thresholds)

    tables = out / "tables"
    summary.write_phase_edges([d / "phases.csv" for d in run_dirs], tables / "phase_edges.csv",
                              tables / "phase_edges.html", tables / "phase_edges.md")
    experiments = ["small", "small_plain", "small_batched"]
    outputs = {f"{name}_{kind}": tables / f"{name}.{kind}" for name in ("table1", "table2", "table4")
               for kind in ("csv", "md")}
    summary.write_paper_tables([d / "htsr.csv" for d in run_dirs], [d / "traps.csv" for d in run_dirs],
                               [d / "phases.csv" for d in run_dirs], outputs,
                               {name: ["fc1", "fc2"] for name in experiments}, experiments)
    print(f"wrote {len(list(out.rglob('*.csv')))} CSV files under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
