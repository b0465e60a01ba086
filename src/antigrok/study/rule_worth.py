"""What the detector studies measured a warning rule to be worth, read from their committed tables.

A detector study (``docs/reference/detector_study*/``) scored the rules frozen in
configs/detector_study.yaml (``warning_rules.rules``) on runs held out from their choice, each run
by its own outcome. Its ``tables/warning_rules.csv`` holds one row per run and rule, its
``runs.csv`` each run's steps. ``study_worth(rule)`` finds the frozen rule that computes the same
thing as ``rule`` (its name, origin and description aside: WarningRule.definition) and summarizes
its rows per study with ``antigrok.study.warning_rules.summarize_rule``, the code that wrote the study's
summary: warned in time (after the test-accuracy peak, before the collapse crossing) k of n
collapsing runs, fired early (before the peak) in so many, fired on k of n runs that did not
collapse, with exact 95% intervals. No number lives here: a study committed as a new
``docs/reference/detector_study<suffix>/`` folder is read as it is.

The tables belong to the repository, not to an installed package: outside a checkout there is
nothing to read, and the worth is said to be unknown.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from antigrok.schema import REPO, read_yaml
from antigrok.study.warning_rules import WarningRule, rules_from_config, summarize_rule

REFERENCE = REPO / "docs" / "reference"
STUDY_PATTERN = "detector_study*"
FROZEN_RULES = REPO / "configs" / "detector_study.yaml"
WORTH_DOC = "docs/monitor.md#what-the-alarms-are-worth"


@dataclass(frozen=True)
class StudyWorth:
    """One rule's score in one detector study (the counts of summarize_rule)."""

    study: str  # the folder under docs/reference
    rule: str  # the study's name for the rule
    runs: str  # what was run, e.g. "12 runs: mnist_lr2e-3 400000 steps, ...; weight decay 0, 0.01"
    n_collapsing: int
    n_in_time: int
    in_time_ci: tuple[float, float]
    n_early: int
    n_not_collapsing: int
    n_fired_not_collapsing: int
    false_alarm_ci: tuple[float, float]
    warns_without_false_alarm: bool

    @property
    def in_time(self) -> str:
        return _rate(self.n_in_time, self.n_collapsing, self.in_time_ci)

    @property
    def false_alarms(self) -> str:
        return _rate(self.n_fired_not_collapsing, self.n_not_collapsing, self.false_alarm_ci)

    def line(self) -> str:
        return (f"{self.study} ({self.runs}): warned {self.in_time} collapses in time, {self.n_early} early, "
                f"fired on {self.false_alarms} runs that did not collapse")


def _rate(k: int, n: int, interval: tuple[float, float]) -> str:
    return f"{k}/{n}" if n == 0 else f"{k}/{n} [{interval[0]:.2f}, {interval[1]:.2f}]"


# ----------------------------------------------------------------------------- the frozen rules


@functools.lru_cache(maxsize=1)
def _frozen_rules() -> tuple[WarningRule, ...]:
    if not FROZEN_RULES.exists():
        return ()
    config = read_yaml(FROZEN_RULES)
    return tuple(rules_from_config(config.get("warning_rules", {}).get("rules", [])))


def frozen_rules() -> list[WarningRule]:
    """The rules the detector studies scored (configs/detector_study.yaml); empty outside a checkout."""
    return list(_frozen_rules())


def study_rules(names: Iterable[str] | None = None) -> list[WarningRule]:
    """The frozen rules named (all of them by default), in their frozen order, with the rules an
    all_of rule is built on (a rule watcher needs its parts)."""
    rules = {rule.name: rule for rule in _frozen_rules()}
    if not rules:
        raise FileNotFoundError(f"{FROZEN_RULES} is not there: the detector study's rules come with the repository")
    wanted = list(rules) if names is None else list(names)
    unknown = [name for name in wanted if name not in rules]
    if unknown:
        raise ValueError(f"{unknown} are not rules of {FROZEN_RULES.name}; it has {', '.join(rules)}")
    needed: set[str] = set()

    def need(name):
        needed.add(name)
        for part in rules[name].all_of:
            need(part)

    for name in wanted:
        need(name)
    return [rule for name, rule in rules.items() if name in needed]


def matching_study_rule(rule: WarningRule, rules_by_name: Mapping[str, WarningRule]) -> WarningRule | None:
    """The frozen rule that computes what ``rule`` does (the same name first), or None.
    ``rules_by_name`` resolves ``rule``'s all_of parts."""
    frozen = {candidate.name: candidate for candidate in _frozen_rules()}
    definition = rule.definition(rules_by_name)
    same = [candidate for candidate in frozen.values() if candidate.definition(frozen) == definition]
    same.sort(key=lambda candidate: candidate.name != rule.name)
    return same[0] if same else None


# ----------------------------------------------------------------------------- the studies' tables


@functools.lru_cache(maxsize=1)
def _study_tables() -> tuple[tuple[str, pd.DataFrame, str], ...]:
    """(study, its warning_rules.csv, what was run) for every committed study."""
    studies = []
    for table in sorted(REFERENCE.glob(f"{STUDY_PATTERN}/tables/warning_rules.csv")):
        folder = table.parent.parent
        rows = pd.read_csv(table)
        studies.append((folder.name, rows, _runs_label(rows, folder / "runs.csv")))
    return tuple(studies)


def _runs_label(rows: pd.DataFrame, runs_csv: Path) -> str:
    """The runs of a study in words: how many, each experiment (named with its lr) with its steps,
    the weight decays."""
    runs = rows[["experiment", "weight_decay", "seed"]].drop_duplicates()
    steps = pd.read_csv(runs_csv).groupby("experiment")["steps"].max() if runs_csv.exists() else pd.Series(dtype=int)
    experiments = ", ".join(
        f"{name} {int(steps[name])} steps" if name in steps.index else name for name in sorted(runs["experiment"].unique())
    )
    decays = ", ".join(f"{decay:g}" for decay in sorted(runs["weight_decay"].unique()))
    return f"{len(runs)} runs: {experiments}; weight decay {decays}"


def study_names() -> list[str]:
    """The committed studies (folders under docs/reference); empty outside a checkout."""
    return [study for study, _, _ in _study_tables()]


def worth_in_studies(study_rule_name: str) -> list[StudyWorth]:
    """The frozen rule's score in every study that scored it."""
    return list(_worth_in_studies(study_rule_name))


@functools.lru_cache(maxsize=None)
def _worth_in_studies(study_rule_name: str) -> tuple[StudyWorth, ...]:
    worth = []
    for study, rows, runs in _study_tables():
        of_rule = rows[rows["rule"] == study_rule_name]
        if of_rule.empty:
            continue
        summary = summarize_rule(of_rule.astype({"collapses": bool, "fired": bool, "in_time": bool}))
        worth.append(StudyWorth(
            study=study, rule=study_rule_name, runs=runs,
            n_collapsing=summary["n_collapsing"], n_in_time=summary["n_in_time"],
            in_time_ci=(summary["in_time_ci_low"], summary["in_time_ci_high"]), n_early=summary["n_early"],
            n_not_collapsing=summary["n_not_collapsing"], n_fired_not_collapsing=summary["n_fired_not_collapsing"],
            false_alarm_ci=(summary["false_alarm_ci_low"], summary["false_alarm_ci_high"]),
            warns_without_false_alarm=summary["warns_without_false_alarm"],
        ))
    return tuple(worth)


def rules_that_warn_in_every_study() -> list[str]:
    """The frozen rules that warned in time, never early and never on a run that did not collapse,
    in every study that scored them."""
    return [rule.name for rule in _frozen_rules()
            if (worth := worth_in_studies(rule.name)) and all(study.warns_without_false_alarm for study in worth)]


@functools.lru_cache(maxsize=1)
def verdict() -> str:
    """What the studies say of all their rules, in one clause."""
    if not _study_tables():
        return "the detector studies' tables (docs/reference/detector_study*/tables) are not in this installation"
    holding = rules_that_warn_in_every_study()
    if not holding:
        return ("no rule the detector studies scored warned in time without a false alarm in every study: "
                "none tells a run that will collapse from one that will not, so an alarm is no reason to stop a run")
    return f"only {', '.join(holding)} warned in time without a false alarm in every study"


def worth_line(rule: WarningRule, rules_by_name: Mapping[str, WarningRule] | None = None, *,
               closest: str | None = None, comparable: bool = True) -> str:
    """What the detector studies measured ``rule`` (or the frozen rule computing the same) to be
    worth, and their verdict, in one line. ``closest``: the frozen rule to quote when none computes
    the same (e.g. the paper's rule that an alarm with other layers or thresholds generalises);
    ``comparable=False``: the rule reads a statistic other than the studies' (no match)."""
    if not _study_tables():
        return f"{verdict()[0].upper()}{verdict()[1:]}: read {WORTH_DOC} in the antigrok repository"
    rules_by_name = rules_by_name if rules_by_name is not None else {rule.name: rule}
    study_rule = matching_study_rule(rule, rules_by_name) if comparable else None
    frozen = {candidate.name: candidate for candidate in _frozen_rules()}
    if study_rule is None and closest in frozen:
        quoted = frozen[closest]
        measured = (f"Not scored as set here; the detector studies' {quoted.name} ({quoted.describe()}) measured: "
                    + _study_lines(quoted.name))
    elif study_rule is not None and worth_in_studies(study_rule.name):
        named = "" if study_rule.name == rule.name else f" (as {study_rule.name})"
        measured = f"Measured{named}: " + _study_lines(study_rule.name)
    else:
        measured = "Not a rule the detector studies scored: its worth is unmeasured"
    return f"{measured}; {verdict()} ({WORTH_DOC})"


def _study_lines(study_rule_name: str) -> str:
    return "; ".join(study.line() for study in worth_in_studies(study_rule_name)) or "no study table to read"
