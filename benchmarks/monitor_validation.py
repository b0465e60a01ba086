"""Validate antigrok.monitor on a real run: train one run of the workflow with the monitor
attached, and compare its alarms with the workflow's detector on the same run.

The run is trained by the workflow's own training function (``antigrok.training.train.train_run``, the
``train`` rule's), at a config as the workflow reads it (config.yaml, then ``--configfile`` over
it, schema defaults filled). The monitor watches the model inside that loop: it analyses the
weights at the run's checkpoint steps with the run's seed, and is armed at fit_step (the first
logged step with train accuracy >= phases.train_fit) when detector.arm_at_fit, as the detector is.
Then the script prints, per spectral alarm:

* the monitor's first firing;
* the detector's alarm step on this run's own checkpoints (antigrok.study.tables on htsr.csv /
  traps.csv made from them, as the spectra, traps and detectors rules make them);
* the workflow's results/tables/detectors.csv alarm step for the same (experiment, weight
  decay, seed), if that file has the run (``--detectors``);
* test accuracy at the alarm, at the peak and at the end of training (smoothed, phases.csv's
  curve): what stopping at the alarm would have cost, and saved.

Full size (the lead engineer's call: ~40 CPU-minutes a run at lr 5e-3, 2e5 steps):

    nice -n 19 .venv/bin/python benchmarks/monitor_validation.py --configfile configs/cpu.yaml \\
        --experiment mnist_lr5e-3 --weight-decay 0.0 --seed 0 --out results/monitor_validation
    nice -n 19 .venv/bin/python benchmarks/monitor_validation.py --weight-decay 0.01 ...

Writes under ``--out``/<experiment>/wd<wd>/seed<seed>/: the run (train_log.csv, checkpoints/),
monitor.csv (the monitor's rows), htsr.csv / traps.csv / phases.csv of the checkpoints, and
validation.csv (one row per alarm: the figures printed). Exit status 1 if the monitor and the
detector disagree on any alarm step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

import antigrok.training.train
from antigrok.htsr import analyze_checkpoints
from antigrok.monitor import SpectralMonitor
from antigrok.spectra.traps import compute_traps
from antigrok.study.detector import SPECTRAL_ALARMS, accuracy_at, accuracy_curve, evaluate_run_alarms
from antigrok.study.phases import PhaseThresholds, edges_from_phases, segment_phases
from antigrok.training.data import prepare_dataset
from antigrok.workflow_config import load_workflow_config

REPO = Path(__file__).resolve().parents[1]
VALIDATION_COLUMNS = [
    "alarm", "monitor_step", "detector_step", "workflow_step", "agree", "fit_step", "peak_step", "collapse_step",
    "test_acc_at_alarm", "peak_test_acc", "final_test_acc", "cost_of_stopping", "saved_by_stopping",
]


@contextmanager
def monitored_training(monitor_factory):
    """Attach a monitor inside ``antigrok.training.train.train_run``: its evaluation rows (train accuracy,
    for arming) and checkpoint saves call ``monitor.step`` at the run's step, with the model's
    weights as the checkpoint of that step holds them. Yields a dict that gets the "monitor"."""
    for name in ("evaluation_row", "save_checkpoint"):
        if not hasattr(antigrok.training.train, name):
            raise RuntimeError(f"antigrok.training.train.{name} is gone: update benchmarks/monitor_validation.py's hooks")
    evaluation_row, save_checkpoint = antigrok.training.train.evaluation_row, antigrok.training.train.save_checkpoint
    holder = {}

    def monitor_for(model):
        if "monitor" not in holder:
            holder["monitor"] = monitor_factory(model)
        return holder["monitor"]

    def evaluation_row_hook(model, spec, step, *args, **kwargs):
        row = evaluation_row(model, spec, step, *args, **kwargs)
        monitor_for(model).step(step, **{k: v for k, v in row.items() if k != "step"})
        return row

    def save_checkpoint_hook(path, model, spec, step):
        save_checkpoint(path, model, spec, step)
        monitor_for(model).step(step)

    antigrok.training.train.evaluation_row, antigrok.training.train.save_checkpoint = evaluation_row_hook, save_checkpoint_hook
    try:
        yield holder
    finally:
        antigrok.training.train.evaluation_row, antigrok.training.train.save_checkpoint = evaluation_row, save_checkpoint
        if "monitor" in holder:
            holder["monitor"].close()


def phase_thresholds(config: dict) -> PhaseThresholds:
    known = {field.name for field in dataclasses.fields(PhaseThresholds)}
    return PhaseThresholds(**{key: value for key, value in config["phases"].items() if key in known})


def detector_on_checkpoints(run_dir: Path, run_key: dict, config: dict, phases: pd.DataFrame) -> pd.DataFrame:
    """The workflow detector's spectral rows for this run, from its own checkpoints: htsr.csv and
    traps.csv as the spectra and traps rules make them, then antigrok.study.detector.evaluate_run_alarms."""
    htsr_cfg = config["htsr"]
    htsr, arrays = analyze_checkpoints(run_dir / "checkpoints", run_seed=run_key["seed"],
                                       fix_fingers=htsr_cfg["fix_fingers"] or False, engine=htsr_cfg["engine"],
                                       progress=False)
    traps = compute_traps(htsr, arrays, config["traps"]["tracy_widom_scale"])
    htsr.to_csv(run_dir / "htsr.csv", index=False)
    traps.to_csv(run_dir / "traps.csv", index=False)
    tagged = [frame.assign(**run_key) for frame in (htsr, traps, phases)]
    layers = {run_key["experiment"]: htsr_cfg["average_layers"][run_key["experiment"]]}
    settings = dict(config["detector"], control_measures=[])
    return evaluate_run_alarms(tagged[0], tagged[1], None, tagged[2], layers, htsr_cfg["alpha_critical"], settings)


def workflow_alarm_steps(detectors_csv: Path | None, run_key: dict) -> dict:
    """alarm -> alarm_step of this run in the workflow's detectors.csv ({} if it lacks the run)."""
    if detectors_csv is None or not Path(detectors_csv).exists():
        return {}
    table = pd.read_csv(detectors_csv)
    rows = table[(table["experiment"] == run_key["experiment"]) & (table["seed"] == run_key["seed"])
                 & ((table["weight_decay"] - run_key["weight_decay"]).abs() < 1e-12)]
    return {row.alarm: (None if pd.isna(row.alarm_step) else int(row.alarm_step)) for row in rows.itertuples()}


def validate_run(config: dict, experiment: str, weight_decay: float, seed: int, out: Path,
                 detectors_csv: Path | None = None, background: str | None = "thread") -> pd.DataFrame:
    """Train the run with the monitor, compare; returns the validation table (VALIDATION_COLUMNS)."""
    if experiment not in config["experiments"]:
        raise SystemExit(f"experiment {experiment!r} is not in the config (it has {list(config['experiments'])})")
    experiment_cfg = config["experiments"][experiment]
    run_key = {"experiment": experiment, "weight_decay": float(weight_decay), "seed": int(seed)}
    run_dir = out / experiment / f"wd{weight_decay}" / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / ".resume", ignore_errors=True)  # a resumed run would skip the monitor's early steps
    spec = antigrok.training.train.RunSpec(experiment, experiment_cfg, float(weight_decay), int(seed),
                                  checkpoint_per_decade=config["checkpoints"]["per_decade"],
                                  log_per_decade=config["log"]["per_decade"])
    detector = config["detector"]
    train_fit = config["phases"]["train_fit"]
    checkpoints = antigrok.training.train.checkpoint_steps(experiment_cfg["steps"], spec.checkpoint_per_decade)

    def make_monitor(model):
        return SpectralMonitor(
            model, at_steps=checkpoints, csv_path=run_dir / "monitor.csv", seed=seed,
            average_layers=config["htsr"]["average_layers"][experiment],
            alpha_critical=config["htsr"]["alpha_critical"], trap_min=detector["trap_min"],
            tracy_widom_scale=config["traps"]["tracy_widom_scale"], min_consecutive=detector["min_consecutive"],
            arm_when=(lambda metrics: metrics.get("train_acc", 0.0) >= train_fit - 1e-9)
            if detector["arm_at_fit"] else None,
            engine=config["htsr"]["engine"], fix_fingers=config["htsr"]["fix_fingers"] or False,
            background=background,
        )

    torch.set_num_threads(config["train"]["threads"])
    dataset = prepare_dataset(experiment_cfg["dataset"], config["data"])
    with monitored_training(make_monitor) as holder:
        train_log = antigrok.training.train.train_run(spec, dataset, run_dir, device=config["train"]["device"], progress=False,
                                             cpu_engine=config["train"]["cpu_engine"])
    monitor = holder["monitor"]

    phases = segment_phases(train_log, phase_thresholds(config))
    phases.to_csv(run_dir / "phases.csv", index=False)
    edges = edges_from_phases(phases)
    curve = accuracy_curve(phases)
    offline = detector_on_checkpoints(run_dir, run_key, config, phases).set_index("alarm")
    workflow = workflow_alarm_steps(detectors_csv, run_key)
    rows = []
    for alarm in SPECTRAL_ALARMS:
        monitor_step = monitor.first_firing(alarm)
        detector_step = offline.loc[alarm, "alarm_step"]
        detector_step = None if pd.isna(detector_step) else int(detector_step)
        workflow_step = workflow.get(alarm, "not in detectors.csv")
        agree = monitor_step == detector_step and (workflow_step in ("not in detectors.csv", monitor_step))
        at_alarm, at_peak, final = accuracy_at(curve, monitor_step), accuracy_at(curve, edges.peak_step), curve.iloc[-1]
        rows.append({
            "alarm": alarm, "monitor_step": monitor_step, "detector_step": detector_step,
            "workflow_step": workflow_step, "agree": agree, "fit_step": edges.fit_step,
            "peak_step": edges.peak_step, "collapse_step": edges.collapse_step,
            "test_acc_at_alarm": at_alarm, "peak_test_acc": at_peak, "final_test_acc": float(final),
            "cost_of_stopping": at_peak - at_alarm, "saved_by_stopping": at_alarm - float(final),
        })
    table = pd.DataFrame(rows, columns=VALIDATION_COLUMNS)
    table.to_csv(run_dir / "validation.csv", index=False)
    return table


def print_table(table: pd.DataFrame, header: str) -> None:
    print(header)
    for row in table.itertuples(index=False):
        def acc(value):
            return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
        print(f"  {row.alarm:22s} monitor {row.monitor_step}  detector {row.detector_step}  "
              f"workflow {row.workflow_step}  agree {row.agree}")
        print(f"  {'':22s} test acc at alarm {acc(row.test_acc_at_alarm)}, peak {acc(row.peak_test_acc)} "
              f"(step {row.peak_step}), end {acc(row.final_test_acc)}; collapse step {row.collapse_step}; "
              f"cost {acc(row.cost_of_stopping)}, saved {acc(row.saved_by_stopping)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "configs" / "cpu.yaml")
    parser.add_argument("--experiment", default="mnist_lr5e-3")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "monitor_validation")
    parser.add_argument("--detectors", type=Path, default=REPO / "results" / "tables" / "detectors.csv",
                        help="the workflow's detectors.csv to compare with (skipped if it lacks the run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a config key, e.g. experiments.mnist_lr5e-3.steps=300 (repeatable)")
    parser.add_argument("--background", default="thread", choices=["thread", "process", "none"])
    args = parser.parse_args(argv)

    config = load_workflow_config([args.configfile] if args.configfile is not None else [])
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = json.loads(value)
    table = validate_run(config, args.experiment, args.weight_decay, args.seed, args.out, args.detectors,
                         background=None if args.background == "none" else args.background)
    print_table(table, f"{args.experiment} wd {args.weight_decay:g} seed {args.seed} "
                       f"({config['experiments'][args.experiment]['steps']} steps, {args.configfile}):")
    return 0 if table["agree"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
