"""The monitor's alarms over a growing history of analysed steps, fired by the workflow's own code.

Two watches share one way of working: ``update(rows)`` adds the rows of newly analysed steps and
returns the firings not reported before; ``arm(step)`` arms from ``step`` on (the earliest arming
counts); ``firings()`` is every firing so far. Each re-evaluates the whole history with the
run-level function the workflow scores finished runs with, so a monitored run fires where the
tables of the same run say it does:

- ``AlarmWatch``: the detector's three alarms (``antigrok.study.detector.spectral_conditions`` and
  ``firing_steps``, the functions behind detectors.csv);
- ``RuleWatch``: rules of the detector study's ``warning_rules`` format
  (``antigrok.study.warning_rules.rule_firings``, the function behind warning_rules.csv).

Every firing carries one line on what the detector studies measured it to be worth
(``antigrok.study.rule_worth``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import pandas as pd

from antigrok.spectra.primitives import mean_alpha
from antigrok.study.detector import SPECTRAL_ALARMS, firing_steps, spectral_conditions
from antigrok.study.rule_worth import worth_line
from antigrok.study.warning_rules import MODEL, STATISTICS, WarningRule, rule_firings, rules_from_config, statistic_table

# The paper's rules as the detector study froze them, one per alarm of the detector.
PAPER_RULES = {
    "alpha_below_critical": "paper_average_alpha_below_2",
    "correlation_trap": "paper_any_trap",
    "alpha_and_trap": "paper_alpha_and_trap",
}
TRAP_STATISTICS = ("num_traps", "num_traps_centered")  # counted at the monitor's tracy_widom_scale


@dataclass(frozen=True)
class Alarm:
    """One firing of one of the detector's alarms at one analysed step."""

    name: str
    step: int
    mean_alpha: float
    alpha_critical: float
    alpha_by_layer: dict = field(default_factory=dict)
    traps_by_layer: dict = field(default_factory=dict)  # layers with >= trap_min traps
    trap_min: int = 1
    worth: str = ""  # what the detector studies measured the alarm to be worth, one line

    @property
    def message(self) -> str:
        layers = ", ".join(self.alpha_by_layer)
        parts = [f"mean alpha of {layers} = {self.mean_alpha:.3f} (critical {self.alpha_critical:g})"]
        parts.append(
            "Correlation Traps: " + ", ".join(f"{layer}: {count}" for layer, count in self.traps_by_layer.items())
            if self.traps_by_layer
            else f"no layer with >= {self.trap_min} Correlation Traps"
        )
        per_layer = ", ".join(f"{layer} {alpha:.3f}" for layer, alpha in self.alpha_by_layer.items())
        facts = f"antigrok alarm {self.name} at step {self.step}: " + "; ".join(parts) + f" (alpha per layer: {per_layer})"
        return f"{facts}. {self.worth}" if self.worth else facts


@dataclass(frozen=True)
class RuleAlarm:
    """One firing of one warning rule at one analysed step."""

    name: str
    step: int
    condition: str  # the rule in words (WarningRule.describe)
    values: dict = field(default_factory=dict)  # the statistic per layer (or "model") at the step
    worth: str = ""

    @property
    def message(self) -> str:
        values = ", ".join(f"{layer} {value:.4g}" for layer, value in self.values.items())
        facts = f"antigrok alarm {self.name} at step {self.step}: {self.condition}" + (f" ({values})" if values else "")
        return f"{facts}. {self.worth}" if self.worth else facts


class _Watch:
    """The history, arming and reporting the two watches share; a subclass gives ``names``,
    ``_all_firings()`` and ``_alarm(name, step)``."""

    names: tuple[str, ...] = ()

    def __init__(self, armed_from: int | None = None):
        self.armed_from = armed_from
        self._frames: list[pd.DataFrame] = []
        self._history: pd.DataFrame | None = None
        self._reported: set[tuple[str, int]] = set()
        self.fired: list = []

    @property
    def history(self) -> pd.DataFrame:
        if self._history is None:
            self._history = pd.concat(self._frames, ignore_index=True) if self._frames else pd.DataFrame(
                columns=["step", "layer", "alpha", "num_traps"])
        return self._history

    def arm(self, step: int) -> list:
        step = int(step)
        if self.armed_from is None or step < self.armed_from:
            self.armed_from = step
        return self._new_firings()

    def update(self, rows: pd.DataFrame) -> list:
        self._frames.append(rows)
        self._history = None
        return self._new_firings()

    def firings(self) -> dict[str, list[int]]:
        """Every firing step so far, per alarm (empty while not armed)."""
        if self.armed_from is None or not self._frames or not self.names:
            return {name: [] for name in self.names}
        return self._all_firings()

    def _new_firings(self) -> list:
        new = []
        for name, steps in self.firings().items():
            for step in steps:
                if (name, step) not in self._reported:
                    self._reported.add((name, step))
                    new.append(self._alarm(name, step))
        new.sort(key=lambda alarm: (alarm.step, self.names.index(alarm.name)))
        self.fired.extend(new)
        return new


class AlarmWatch(_Watch):
    """The detector's spectral alarms (``antigrok.study.detector.spectral_conditions``) over the
    monitor's history, fired by ``antigrok.study.detector.firing_steps`` as the workflow's detectors rule
    does for a finished run. ``tracy_widom_scale``: the one the traps were counted at (the studies
    scored 1.0)."""

    def __init__(self, average_layers: Iterable[str], alpha_critical: float = 2.0, trap_min: int = 1,
                 min_consecutive: int = 1, alarms: Iterable[str] = SPECTRAL_ALARMS,
                 armed_from: int | None = None, trap_layers: Iterable[str] | None = None,
                 tracy_widom_scale: float = 1.0):
        super().__init__(armed_from)
        self.average_layers = list(average_layers)
        self.alpha_critical = float(alpha_critical)
        self.trap_min = int(trap_min)
        self.min_consecutive = int(min_consecutive)
        self.alarms = self.names = tuple(alarms)
        unknown = set(self.alarms) - set(SPECTRAL_ALARMS)
        if unknown:
            raise ValueError(f"unknown alarms {sorted(unknown)}; known: {', '.join(SPECTRAL_ALARMS)}")
        if self.min_consecutive < 1:
            raise ValueError(f"min_consecutive must be >= 1 analysed steps, got {min_consecutive}")
        if self.trap_min < 1:
            raise ValueError(f"trap_min must be >= 1, got {trap_min}")
        self.trap_layers = list(trap_layers) if trap_layers is not None else list(self.average_layers)
        self.tracy_widom_scale = float(tracy_widom_scale)
        self.worth = {name: self._worth_line(name) for name in SPECTRAL_ALARMS}

    def as_rules(self) -> dict[str, WarningRule]:
        """The alarms as rules of the warning_rules format, by alarm name (the study's paper rules
        when the layers and thresholds are the study's)."""
        persist = self.min_consecutive
        alpha = WarningRule(name="alpha_below_critical", statistic="alpha", layers=tuple(self.average_layers),
                            combine="mean", compare="below", threshold=self.alpha_critical, persist=persist,
                            origin="paper")
        trap = WarningRule(name="correlation_trap", statistic="num_traps", layers=tuple(self.trap_layers),
                           combine="any", compare="at_least", threshold=float(self.trap_min), persist=persist,
                           origin="paper")
        both = WarningRule(name="alpha_and_trap", all_of=(alpha.name, trap.name), persist=persist, origin="paper")
        return {rule.name: rule for rule in (alpha, trap, both)}

    def _worth_line(self, name: str) -> str:
        # Traps counted at another Tracy-Widom margin are not the traps the studies counted.
        rules = self.as_rules()
        comparable = self.tracy_widom_scale == 1.0 or name == "alpha_below_critical"
        return worth_line(rules[name], rules, closest=PAPER_RULES[name], comparable=comparable)

    def _all_firings(self) -> dict[str, list[int]]:
        history = self.history
        conditions = spectral_conditions(history, history, self.average_layers, self.alpha_critical, self.trap_min)
        return {name: firing_steps(conditions[name][2], self.armed_from, self.min_consecutive) for name in self.alarms}

    def _alarm(self, name: str, step: int) -> Alarm:
        at_step = self.history[self.history["step"] == step]
        alpha = at_step.set_index("layer")["alpha"].astype(float)
        traps = at_step.set_index("layer")["num_traps"]
        trapped = {layer: int(count) for layer, count in traps.items() if pd.notna(count) and count >= self.trap_min}
        mean = mean_alpha(at_step, self.average_layers)
        return Alarm(
            name=name,
            step=int(step),
            mean_alpha=float(mean.iloc[0]) if len(mean) else math.nan,
            alpha_critical=self.alpha_critical,
            alpha_by_layer={layer: float(alpha.get(layer, math.nan)) for layer in self.average_layers},
            traps_by_layer=trapped,
            trap_min=self.trap_min,
            worth=self.worth[name],
        )


def as_warning_rules(rules: Iterable[WarningRule | Mapping]) -> list[WarningRule]:
    """Rules given as WarningRule objects or as entries of ``warning_rules.rules`` (dicts), checked
    as rules_from_config checks a config's."""
    entries = [dataclasses.asdict(rule) if isinstance(rule, WarningRule) else dict(rule) for rule in rules]
    return rules_from_config(entries)


def model_wide_statistics(rules: Iterable[WarningRule]) -> list[str]:
    """The model-wide statistics (progress measures) the rules read."""
    return sorted({rule.statistic for rule in rules if rule.statistic and not STATISTICS[rule.statistic][1]})


class RuleWatch(_Watch):
    """Rules of the ``warning_rules`` format over the monitor's history, fired by
    ``antigrok.study.warning_rules.rule_firings`` as the detector study scored them on finished runs.

    ``update(rows, model_values)``: ``model_values`` holds the step's model-wide statistics
    (``l2_norm``, ...) that rules on progress measures read.
    """

    def __init__(self, rules: Iterable[WarningRule | Mapping], armed_from: int | None = None,
                 tracy_widom_scale: float = 1.0):
        super().__init__(armed_from)
        self.rules = as_warning_rules(rules)
        self.by_name = {rule.name: rule for rule in self.rules}
        self.names = tuple(self.by_name)
        self.model_statistics = model_wide_statistics(self.rules)
        self._model_rows: list[dict] = []
        # Traps counted at another Tracy-Widom margin are not the traps the studies counted.
        self.worth = {rule.name: worth_line(rule, self.by_name, comparable=tracy_widom_scale == 1.0
                                            or not self._reads_traps(rule)) for rule in self.rules}

    def _reads_traps(self, rule: WarningRule) -> bool:
        if rule.all_of:
            return any(self._reads_traps(self.by_name[name]) for name in rule.all_of)
        return rule.statistic in TRAP_STATISTICS

    @property
    def progress(self) -> pd.DataFrame:
        """The model-wide statistics per analysed step (progress.csv's layout)."""
        return pd.DataFrame(self._model_rows, columns=["step", *self.model_statistics])

    def update(self, rows: pd.DataFrame, model_values: Mapping[str, float] | None = None) -> list[RuleAlarm]:
        values = dict(model_values or {})
        self._model_rows.append({"step": int(rows["step"].iloc[0]),
                                 **{name: values.get(name, math.nan) for name in self.model_statistics}})
        return super().update(rows)

    def _all_firings(self) -> dict[str, list[int]]:
        history = self.history
        return rule_firings(self.rules, history, history, self.progress, self.armed_from)

    def _alarm(self, name: str, step: int) -> RuleAlarm:
        rule = self.by_name[name]
        values = {}
        if rule.statistic is not None:
            table = statistic_table(rule.statistic, self.history, self.history, self.progress)
            values = {layer: float(table.at[step, layer]) for layer in (rule.layers or (MODEL,))}
        return RuleAlarm(name=name, step=int(step), condition=rule.describe(), values=values, worth=self.worth[name])
