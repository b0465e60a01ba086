"""Search for a modular-addition transformer that groks on a CPU: train candidates, record what they did.

Each candidate is config.yaml's ``modadd_transformer`` (Nanda et al.'s 1-layer transformer: no
LayerNorm, ReLU MLP, learned positions, AdamW betas (0.9, 0.98), warm-up 10, full batch) with a
few keys changed (modulus p, train fraction, d_model, d_mlp, lr, dtype, weight decay). It is
trained by the workflow's own ``antigrok.training.train.train_run``, exactly as the train rule calls it,
for at most ``--steps`` steps, on one thread. From its train log come:

    fit_step     first logged step with train accuracy >= 0.99 (phases.train_fit)
    fit_test_acc test accuracy at fit_step (chance is 1/p)
    grok_step    first logged step at or after fit_step with test accuracy > 0.9
    final_*      accuracies at the last logged step
    cpu_s_per_step  process CPU time of the whole train_run call / steps trained (evaluation
                 and checkpoints included, as in the workflow); on a shared machine the CPU time,
                 not the wall clock, is the cost of a step

``--stop-after-grok F`` ends a candidate once it has trained F x its grok step (the rest of a
bounded run adds nothing to the table; 0 = run to ``--steps``): the script raises out of
train_run's evaluation, so that candidate's run directory is a temporary, unfinished one.

    python benchmarks/modadd_search.py --list
    python benchmarks/modadd_search.py --candidates p53_d64_lr3e-3 --steps 5000 \
        --out docs/reference/modadd_cpu/search
    python benchmarks/modadd_search.py --collect --out docs/reference/modadd_cpu/search
Each candidate writes OUT/runs/<candidate>_wd<wd>_seed<seed>.csv (its summary row) and OUT/train_logs/ the
same name (its train log), so candidates can run in parallel processes; ``--collect`` gathers the
rows into OUT/search.csv and prints them as a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import antigrok.training.train as train_module
from antigrok.training.data import prepare_modadd
from antigrok.training.train import RunSpec, train_run
from antigrok.workflow_config import load_workflow_config

REPO = Path(__file__).resolve().parents[1]
TRAIN_FIT, GROK_ACC = 0.99, 0.9

# name -> (modulus, train_fraction, d_model, d_mlp, lr, dtype); 4 heads of d_model / 4 each.
CANDIDATES = {
    "p53_f0.5_d64_lr3e-3": (53, 0.5, 64, 256, 3e-3, "float32"),
    "p53_f0.5_d64_lr1e-3": (53, 0.5, 64, 256, 1e-3, "float32"),
    "p53_f0.4_d64_lr3e-3": (53, 0.4, 64, 256, 3e-3, "float32"),
    "p53_f0.3_d64_lr3e-3": (53, 0.3, 64, 256, 3e-3, "float32"),
    "p67_f0.4_d64_lr3e-3": (67, 0.4, 64, 256, 3e-3, "float32"),
    "p59_f0.4_d128_lr3e-3": (59, 0.4, 128, 512, 3e-3, "float32"),
    "p41_f0.5_d64_lr3e-3": (41, 0.5, 64, 256, 3e-3, "float32"),
    "p53_f0.5_d64_lr3e-3_f64": (53, 0.5, 64, 256, 3e-3, "float64"),
    "p53_f0.5_d64_lr1e-2": (53, 0.5, 64, 256, 1e-2, "float32"),
    "p53_f0.5_d32_lr3e-3": (53, 0.5, 32, 128, 3e-3, "float32"),
    "p53_f0.4_d64_lr1e-2": (53, 0.4, 64, 256, 1e-2, "float32"),
    "p53_f0.3_d64_lr1e-2": (53, 0.3, 64, 256, 1e-2, "float32"),
    "p67_f0.4_d64_lr1e-2": (67, 0.4, 64, 256, 1e-2, "float32"),
    "p67_f0.3_d64_lr1e-2": (67, 0.3, 64, 256, 1e-2, "float32"),
    "p113_f0.3_d128_lr1e-3": (113, 0.3, 128, 512, 1e-3, "float32"),  # Nanda et al.'s (float32)
}


def candidate_experiment(name: str, steps: int) -> dict:
    """config.yaml's modadd_transformer with the candidate's keys changed."""
    modulus, fraction, d_model, d_mlp, lr, dtype = CANDIDATES[name]
    base = load_workflow_config()["experiments"]["modadd_transformer"]
    experiment = copy.deepcopy(base)
    experiment["dataset"].update(modulus=modulus, train_fraction=fraction)
    experiment["model"].update(d_vocab=modulus + 1, d_model=d_model, num_heads=4, d_head=d_model // 4, d_mlp=d_mlp)
    experiment["optimizer"]["lr"] = lr
    experiment.update(steps=steps, batch_size=modulus * modulus, dtype=dtype)
    return experiment


class _StopCandidate(Exception):
    """Raised out of train_run once a candidate has trained long enough past its grok step."""


@contextlib.contextmanager
def recorded_evaluations(rows: list, stop_after_grok: float, partial_log: Path | None = None):
    """Record every evaluation row train_run makes; stop the run ``stop_after_grok`` x grok step.

    ``partial_log``: the rows so far are rewritten there after each evaluation (to watch a slow run).
    """
    original = train_module.evaluation_row

    def recording(*args, **kwargs):
        row = original(*args, **kwargs)
        rows.append(row)
        if partial_log is not None:
            pd.DataFrame(rows).to_csv(partial_log, index=False)
        grok = summarize(rows)["grok_step"]
        if stop_after_grok and grok is not None and row["step"] >= stop_after_grok * max(grok, 1):
            raise _StopCandidate
        return row

    train_module.evaluation_row = recording
    try:
        yield
    finally:
        train_module.evaluation_row = original


def summarize(rows: list) -> dict:
    """Fit step, grok step and final accuracies of a train log (list of train_log.csv rows)."""
    fit = next((r for r in rows if r["train_acc"] >= TRAIN_FIT), None)
    grok = None
    if fit is not None:
        grok = next((r for r in rows if r["step"] >= fit["step"] and r["test_acc"] > GROK_ACC), None)
    last = rows[-1] if rows else {"step": 0, "train_acc": float("nan"), "test_acc": float("nan")}
    return {
        "fit_step": fit["step"] if fit else None,
        "fit_test_acc": fit["test_acc"] if fit else None,
        "grok_step": grok["step"] if grok else None,
        "final_step": last["step"],
        "final_train_acc": last["train_acc"],
        "final_test_acc": last["test_acc"],
    }


def run_candidate(name: str, steps: int, weight_decay: float, seed: int, log_per_decade: int,
                  stop_after_grok: float, partial_log: Path | None = None) -> tuple[dict, pd.DataFrame]:
    experiment = candidate_experiment(name, steps)
    dataset = prepare_modadd(experiment["dataset"]["modulus"], experiment["dataset"]["train_fraction"],
                             experiment["dataset"]["split_seed"])
    spec = RunSpec(f"search_{name}", experiment, weight_decay, seed, checkpoint_per_decade=1,
                   log_per_decade=log_per_decade)
    rows: list = []
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir, recorded_evaluations(rows, stop_after_grok, partial_log):
        try:
            train_run(spec, dataset, run_dir, device="cpu", progress=False)
        except _StopCandidate:
            pass
    cpu_s, wall_s = time.process_time() - started_cpu, time.perf_counter() - started_wall
    summary = summarize(rows)
    trained = max(summary["final_step"], 1)
    modulus, fraction, d_model, d_mlp, lr, dtype = CANDIDATES[name]
    row = {"candidate": name, "modulus": modulus, "train_fraction": fraction,
           "train_pairs": len(dataset["x_train"]), "d_model": d_model, "d_mlp": d_mlp, "lr": lr,
           "dtype": dtype, "weight_decay": weight_decay, "seed": seed, "max_steps": steps, **summary,
           "cpu_s_per_step": cpu_s / trained, "cpu_s": cpu_s, "wall_s": wall_s}
    return row, pd.DataFrame(rows)


MARKDOWN_COLUMNS = ["candidate", "train_pairs", "d_model", "d_mlp", "lr", "dtype", "weight_decay", "seed",
                    "max_steps", "fit_step", "fit_test_acc", "grok_step", "final_step", "final_train_acc",
                    "final_test_acc", "cpu_s_per_step", "status"]


def collect(out: Path) -> int:
    """OUT/search.csv from the candidates' rows, printed as a markdown table."""
    files = sorted((out / "runs").glob("*.csv"))
    partial = sorted((out / "train_logs").glob("*.partial.csv"))
    if not files and not partial:
        raise SystemExit(f"no candidate rows under {out / 'runs'}; run some candidates first")
    rows = [pd.read_csv(path).assign(status="finished") for path in files]
    rows += [pd.DataFrame([unfinished_row(path)]) for path in partial]
    table = pd.concat(rows, ignore_index=True)
    table = table.sort_values(["candidate", "weight_decay", "seed"])
    table.to_csv(out / "search.csv", index=False)
    print(markdown_table(table[MARKDOWN_COLUMNS]))
    return 0


def unfinished_row(partial_log: Path) -> dict:
    """The row of a candidate stopped before its end (its process killed): what its partial log shows."""
    tag = partial_log.name.removesuffix(".partial.csv")
    name, weight_decay, seed = tag.rsplit("_", 2)
    modulus, fraction, d_model, d_mlp, lr, dtype = CANDIDATES[name]
    log = pd.read_csv(partial_log)
    return {"candidate": name, "modulus": modulus, "train_fraction": fraction,
            "train_pairs": int(fraction * modulus**2), "d_model": d_model, "d_mlp": d_mlp, "lr": lr,
            "dtype": dtype, "weight_decay": float(weight_decay.removeprefix("wd")),
            "seed": int(seed.removeprefix("seed")), "max_steps": None, **summarize(log.to_dict("records")),
            "cpu_s_per_step": None, "status": f"stopped by hand at step {int(log['step'].iloc[-1])}"}


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if pd.isna(value):
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if not value.is_integer() or abs(value) < 1 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=[], help="names of CANDIDATES (--list)")
    parser.add_argument("--list", action="store_true", help="print the candidates and exit")
    parser.add_argument("--collect", action="store_true", help="gather OUT/runs/*.csv into OUT/search.csv")
    parser.add_argument("--steps", type=int, default=5000, help="bound on the steps of each candidate")
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-per-decade", type=int, default=60, help="train-log rows per decade (log.per_decade)")
    parser.add_argument("--stop-after-grok", type=float, default=1.5,
                        help="end a candidate at this multiple of its grok step (0: run to --steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/reference/modadd_cpu/search"))
    args = parser.parse_args(argv)
    if args.collect:
        return collect(args.out)
    if args.list or not args.candidates:
        for name, values in CANDIDATES.items():
            print(name, dict(zip(("modulus", "train_fraction", "d_model", "d_mlp", "lr", "dtype"), values)))
        return 0
    unknown = [name for name in args.candidates if name not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; --list shows the known ones")
    torch.set_num_threads(args.threads)
    for folder in ("train_logs", "runs"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    for name in args.candidates:
        tag = f"{name}_wd{args.weight_decay}_seed{args.seed}"
        partial = args.out / "train_logs" / f"{tag}.partial.csv"
        row, log = run_candidate(name, args.steps, args.weight_decay, args.seed, args.log_per_decade,
                                 args.stop_after_grok, partial)
        partial.unlink(missing_ok=True)
        row.update(threads=args.threads, machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        log.to_csv(args.out / "train_logs" / f"{tag}.csv", index=False)
        pd.DataFrame([row]).to_csv(args.out / "runs" / f"{tag}.csv", index=False)
        print({key: (f"{value:.4g}" if isinstance(value, float) else value) for key, value in row.items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
