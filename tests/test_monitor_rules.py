"""The monitor watches rules of the detector study's warning_rules format, and says what they are
worth: a committed study run replayed through SpectralMonitor fires where
scripts/evaluate_warning_rules.py says it does; the worth lines come from the committed tables."""

import importlib.util
import shutil
import warnings
from collections import OrderedDict

import pandas as pd
import pytest
import torch

import antigrok.monitor as monitor_module
from antigrok.monitor import MONITOR_COLUMNS, RuleWatch, SpectralAlarmWarning, SpectralMonitor
from antigrok.monitor.alarms import PAPER_RULES
from antigrok.study import rule_worth
from antigrok.study.warning_rules import WarningRule
from conftest import REPO

STUDY = REPO / "docs" / "reference" / "detector_study"
RUN = STUDY / "runs" / "mnist_lr5e-3" / "wd0.0" / "seed2"  # collapses; fires most rules, some several times
INPUTS = ("htsr.csv", "traps.csv", "progress.csv", "phases.csv")
PROGRESS = ["l2_norm", "activation_sparsity", "abs_weight_entropy", "circuit_complexity"]
# One frozen rule of each kind (all 24 take twice as long and add no new code path): all_of over a
# mean and an any, persist 3, a derived statistic, baselines by difference and by ratio, centred
# traps, the progress controls' departure rule and the norm's growth; several re-fire on this run.
REPLAYED = ["paper_alpha_and_trap", "fc1_alpha_below_2_for_3", "fc3_trap_growth", "centered_trap_any",
            "fc1_rand_edge_ratio_above_2", "fc1_stable_rank_halved", "fc2_mp_ks_above_0.03", "l2_norm_departure",
            "circuit_complexity_departure", "l2_norm_growth_1.3"]


def mlp_named_as_the_papers():
    """fc1, fc2, fc3 as the paper's MLP names its layers; small, as a replay does not analyse them."""
    return torch.nn.Sequential(OrderedDict(
        fc1=torch.nn.Linear(20, 16), relu1=torch.nn.ReLU(), fc2=torch.nn.Linear(16, 12), relu2=torch.nn.ReLU(),
        fc3=torch.nn.Linear(12, 10)))


def committed_rows(run):
    """The run's monitor rows per checkpoint step: htsr.csv and traps.csv joined, as the monitor
    writes them for an analysed step."""
    htsr, traps = pd.read_csv(run / "htsr.csv"), pd.read_csv(run / "traps.csv")
    extra = [column for column in traps.columns if column not in htsr.columns]
    rows = htsr.merge(traps[["step", "layer", *extra]], on=["step", "layer"], how="left")[MONITOR_COLUMNS]
    return {int(step): frame.reset_index(drop=True) for step, frame in rows.groupby("step")}


def scored_by_the_script(tmp_path):
    """scripts/evaluate_warning_rules.py on a folder holding only RUN: firing steps per rule."""
    folder = tmp_path / "study"
    copy = folder / RUN.relative_to(STUDY)
    copy.mkdir(parents=True)
    for name in INPUTS:
        shutil.copy(RUN / name, copy / name)
    spec = importlib.util.spec_from_file_location("evaluate_warning_rules", REPO / "scripts" / "evaluate_warning_rules.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(folder), "--configfile", str(REPO / "configs" / "detector_study.yaml"), "--no-figures"]) == 0
    table = pd.read_csv(folder / "tables" / "warning_rules.csv", dtype={"firing_steps": str})
    return {row.rule: [int(step) for step in str(row.firing_steps).split(";") if step not in ("", "nan")]
            for row in table.itertuples()}


def test_the_monitor_fires_the_study_rules_where_the_study_script_does(tmp_path, monkeypatch):
    """Frozen rules of configs/detector_study.yaml watched by the monitor over a replay of a
    committed held-out run: its checkpoints' statistics stand in for the analysis of the weights,
    progress.csv's measures come in as step() metrics, train accuracy arms it as the study armed
    at fit_step. The firings (every one, re-firings included) are the script's."""
    rows = committed_rows(RUN)
    monkeypatch.setattr(monitor_module, "analyze_snapshot", lambda matrices, seed, step, *args: rows[step].copy())
    progress = pd.read_csv(RUN / "progress.csv").set_index("step")
    train_acc = pd.read_csv(RUN / "phases.csv").set_index("step")["train_acc"]
    monitor = SpectralMonitor(mlp_named_as_the_papers(), at_steps=rows, background=None, alarms=(),
                              rules=rule_worth.study_rules(REPLAYED),
                              arm_when=lambda metrics: metrics["train_acc"] >= 0.99)  # phases.train_fit
    accuracy = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpectralAlarmWarning)
        for step in sorted(set(rows) | set(train_acc.index)):
            accuracy = float(train_acc.get(step, accuracy))  # the last evaluation's, between evaluations
            measures = progress.loc[step, PROGRESS].to_dict() if step in progress.index else {}
            monitor.step(step, train_acc=accuracy, **measures)
        monitor.close()
    fired = {name: [alarm.step for alarm in monitor.alarms if alarm.name == name] for name in monitor.watched}
    expected = scored_by_the_script(tmp_path)
    assert set(REPLAYED) < set(fired)  # and the all_of rule's parts
    assert fired == {name: expected[name] for name in fired}
    assert sum(map(len, fired.values())) >= 15  # every rule but the paper's alpha fires, several more than once
    assert len(caught) == len(monitor.alarms)
    first = str(caught[0].message)
    assert "detector_study (12 runs" in first and "detector_study_wd3e-3 (6 runs" in first


def test_a_users_own_rule_is_watched_and_said_to_be_unmeasured():
    watch = RuleWatch([{"name": "mine", "statistic": "alpha", "layers": ["fc1"], "compare": "below",
                        "threshold": 1.7, "persist": 2}], armed_from=0)
    history = [(10, 2.5), (20, 1.6), (30, 1.5), (40, 1.9), (50, 1.6), (60, 1.6)]
    fired = []
    for step, alpha in history:
        fired += watch.update(pd.DataFrame({"step": [step], "layer": ["fc1"], "alpha": [alpha]}))
    assert [(alarm.name, alarm.step) for alarm in fired] == [("mine", 30), ("mine", 60)]
    assert fired[0].values == {"fc1": 1.5}
    assert "alpha of fc1 below 1.7, 2 checkpoints in a row (fc1 1.5)" in fired[0].message
    assert "Not a rule the detector studies scored: its worth is unmeasured" in fired[0].message


def test_a_renamed_frozen_rule_gets_the_studys_numbers():
    frozen = {rule.name: rule for rule in rule_worth.frozen_rules()}["fc1_alpha_below_2_for_3"]
    mine = WarningRule(name="watch_fc1", statistic="alpha", layers=("fc1",), combine="mean", compare="below",
                       threshold=2, persist=3)
    line = rule_worth.worth_line(mine)
    assert line.startswith("Measured (as fc1_alpha_below_2_for_3): detector_study (12 runs")
    assert line == rule_worth.worth_line(frozen).replace("Measured:", "Measured (as fc1_alpha_below_2_for_3):")


def test_the_worth_is_the_committed_summary():
    """Each study's numbers for a rule are the row of its committed warning_rules_summary.csv."""
    for study in rule_worth.study_names():
        summary = pd.read_csv(REPO / "docs" / "reference" / study / "tables" / "warning_rules_summary.csv")
        scope = "all" if (summary["scope"] == "all").any() else summary["scope"].iloc[0]
        for row in summary[summary["scope"] == scope].itertuples():
            (worth,) = [entry for entry in rule_worth.worth_in_studies(row.rule) if entry.study == study]
            assert (worth.n_in_time, worth.n_collapsing, worth.n_early) == (row.n_in_time, row.n_collapsing, row.n_early)
            assert (worth.n_fired_not_collapsing, worth.n_not_collapsing) == (row.n_fired_not_collapsing,
                                                                              row.n_not_collapsing)
            assert worth.in_time_ci == pytest.approx((row.in_time_ci_low, row.in_time_ci_high))
            assert worth.false_alarm_ci == pytest.approx((row.false_alarm_ci_low, row.false_alarm_ci_high))


def test_the_detectors_alarms_carry_the_paper_rules_worth():
    model = mlp_named_as_the_papers()
    paper = SpectralMonitor(model, every_n_steps=10, average_layers=["fc1", "fc2"], background=None)
    for row in paper.worth.itertuples():
        assert row.worth.startswith(f"Measured (as {PAPER_RULES[row.alarm]}): detector_study (12 runs")
        study_rules = {rule.name: rule for rule in rule_worth.study_rules([PAPER_RULES[row.alarm]])}
        quoted = rule_worth.worth_line(study_rules[PAPER_RULES[row.alarm]], study_rules)
        assert row.worth == quoted.replace("Measured:", f"Measured (as {PAPER_RULES[row.alarm]}):")
    one_layer = SpectralMonitor(model, every_n_steps=10, average_layers=["fc1"], background=None)
    line = one_layer.worth.set_index("alarm").loc["alpha_below_critical", "worth"]
    assert line.startswith("Measured (as fc1_alpha_below_2): detector_study (12 runs")  # the same rule
    other = SpectralMonitor(model, every_n_steps=10, average_layers=["fc1", "fc2"], alpha_critical=2.5,
                            background=None)
    line = other.worth.set_index("alarm").loc["alpha_below_critical", "worth"]
    assert line.startswith("Not scored as set here; the detector studies' paper_average_alpha_below_2 "
                           "(mean alpha of fc1, fc2 below 2) measured: detector_study (12 runs")
    assert "no rule the detector studies scored warned in time without a false alarm in every study" in line
    wider_margin = SpectralMonitor(model, every_n_steps=10, average_layers=["fc1", "fc2"], tracy_widom_scale=2.0,
                                   background=None, rules=rule_worth.study_rules(["centered_trap_fc1"]))
    lines = wider_margin.worth.set_index("alarm")["worth"]
    assert lines["alpha_below_critical"].startswith("Measured (as paper_average_alpha_below_2)")
    assert lines["correlation_trap"].startswith("Not scored as set here")  # traps at another margin
    assert lines["centered_trap_fc1"].startswith("Not a rule the detector studies scored")


def test_rules_the_model_cannot_feed_are_refused():
    with pytest.raises(ValueError, match=r"rule 'mine' reads layers \['encoder'\], which are not among"):
        SpectralMonitor(mlp_named_as_the_papers(), every_n_steps=10, rules=[
            {"name": "mine", "statistic": "alpha", "layers": ["encoder"], "threshold": 2.0}])
    with pytest.raises(ValueError, match="have the names of the detector's alarms"):
        SpectralMonitor(mlp_named_as_the_papers(), every_n_steps=10, rules=[
            {"name": "correlation_trap", "statistic": "alpha", "layers": ["fc1"], "threshold": 2.0}])
    with pytest.raises(ValueError, match="unknown statistic"):
        SpectralMonitor(mlp_named_as_the_papers(), every_n_steps=10, rules=[{"name": "x", "statistic": "loss", "threshold": 1}])


def test_outside_a_checkout_the_worth_is_said_to_be_unknown(monkeypatch):
    monkeypatch.setattr(rule_worth, "_study_tables", lambda: ())
    rule_worth.verdict.cache_clear()
    try:
        line = rule_worth.worth_line(rule_worth.study_rules(["fc1_alpha_below_2"])[0])
    finally:
        rule_worth.verdict.cache_clear()
    assert line.startswith("The detector studies' tables (docs/reference/detector_study*/tables) are not in this "
                           "installation: read docs/monitor.md#what-the-alarms-are-worth")
