"""Watch a training run as it happens: a live record of the weights' HTSR statistics, and alarms.

``SpectralMonitor(model, every_n_steps=..., csv_path=...)`` looks at a model's weight matrices and
conv kernels (antigrok.spectra.kernels, pooled as WeightWatcher pools them) every so many optimizer
steps, analyses them with the workflow's own spectral engine
(``antigrok.htsr``: the same function and seeding as the ``spectra`` rule, so a monitored step
gives the numbers a checkpoint of it would: alpha, raw and centred Correlation Traps, the MP fit)
and appends one row per layer to a CSV, to plot and compare. It evaluates alarms on those rows
with the workflow's own code: the detector's three (``antigrok.study.detector``: ``spectral_conditions``
and ``firing_steps``, the functions that write detectors.csv)

    alpha_below_critical   mean alpha of ``average_layers`` below ``alpha_critical``
    correlation_trap       at least ``trap_min`` Correlation Traps in any analysed layer
    alpha_and_trap         both at the same step

and any ``rules`` of the detector study's ``warning_rules`` format (``antigrok.study.warning_rules``:
the frozen rules of configs/detector_study.yaml, ``antigrok.study.rule_worth.study_rules()``, or your
own), counted from the step the monitor is armed (``arm_from_step``, or the first step at which
``arm_when(metrics)`` holds, e.g. train accuracy reached). A firing issues a
``SpectralAlarmWarning`` naming the alarm, step, layers and values, and what the detector
studies measured the alarm to be worth (``antigrok.study.rule_worth``; ``monitor.worth`` holds the
table). On their held-out runs no alarm told a run that would collapse from one that would not
(docs/monitor.md): an alarm is a record to look at, not a reason to stop.

The analysis runs off the training thread (``background="thread"``, the default, or
``"process"``): the training thread only copies the weights (to float64 on the CPU) and, at the
next call, picks up finished results; nothing waits unless ``max_pending`` analyses are queued.
Adapters: ``antigrok.monitor.lightning`` (extra ``antigrok[lightning]``) and
``antigrok.monitor.transformers`` (extra ``antigrok[transformers]``).

This package is the monitor's public place (``__all__``): ``from antigrok.monitor import
SpectralMonitor``. It imports antigrok.htsr, antigrok.spectra, antigrok.study; nothing imports it.
"""

from __future__ import annotations

import collections
import logging
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from antigrok.htsr import (
    DEFAULT_ENGINE,
    HTSR_COLUMNS,
    analyze_with_traps,
    skipped_summary,
    state_dict_skip_reasons,
    weight_matrices,
)
from antigrok.monitor.alarms import Alarm, AlarmWatch, RuleAlarm, RuleWatch
from antigrok.spectra.ww_engine import MIN_EVALS
from antigrok.study.detector import SPECTRAL_ALARMS
from antigrok.study.progress import l2_norm
from antigrok.study.warning_rules import WarningRule

__all__ = [
    "Alarm",
    "AlarmWatch",
    "MONITOR_COLUMNS",
    "RuleAlarm",
    "RuleWatch",
    "SpectralAlarmWarning",
    "SpectralMonitor",
    "analyze_snapshot",
    "snapshot_weights",
]

log = logging.getLogger(__name__)

# The monitor CSV: htsr.csv's columns, then traps.csv's that htsr.csv does not have.
TRAP_COLUMNS = ["tracy_widom_scale", "trap_threshold", "num_traps", "trap_eigenvalues", "num_traps_centered"]
MONITOR_COLUMNS = HTSR_COLUMNS + TRAP_COLUMNS
BACKGROUNDS = ("thread", "process", None)


class SpectralAlarmWarning(UserWarning):
    """An alarm of the spectral monitor fired. The message names alarm, step, layers and values,
    and what the detector studies measured the alarm to be worth: no alarm they scored told a run
    that would collapse from one that would not."""


# ----------------------------------------------------------------------------- analysis


def snapshot_weights(model, layers: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Copies of the analysable weights (matrices, conv kernels) of ``model`` (an nn.Module) as float64 arrays on
    the CPU, by layer name as htsr.csv names them (``fc1.weight`` -> ``fc1``); only ``layers`` if
    given. The copies do not change when training goes on."""
    matrices = weight_matrices(model.state_dict())  # copies: astype(float64) always copies
    if layers is None:
        return matrices
    return {name: matrices[name] for name in layers}


def analyze_snapshot(matrices: Mapping[str, np.ndarray], seed: int, step: int, fix_fingers="clip_xmax",
                     engine: str = DEFAULT_ENGINE, tracy_widom_scale: float = 1.0) -> pd.DataFrame:
    """The monitor rows of one step (MONITOR_COLUMNS): ``antigrok.htsr.analyze_weights`` seeded as
    the ``spectra`` rule seeds run ``seed`` at ``step``, traps counted as the ``traps`` rule counts
    them. At tracy_widom_scale 1.0 the htsr columns and num_traps are analyze_state_dict's."""
    table, traps = analyze_with_traps(matrices, run_seed=seed, step=step, fix_fingers=fix_fingers, engine=engine,
                                      tracy_widom_scale=tracy_widom_scale)
    for column in TRAP_COLUMNS:
        table[column] = traps[column].to_numpy()
    for column in ("num_traps", "num_traps_centered"):
        table[column] = table[column].astype("Int64")
    return table[MONITOR_COLUMNS]


def _analysable_layers(model) -> dict[str, tuple[int, ...]]:
    return {name: matrix.shape for name, matrix in weight_matrices(model.state_dict()).items()}


# ----------------------------------------------------------------------------- the monitor


class SpectralMonitor:
    """Watches ``model``'s weights during training; call :meth:`step` once per optimizer step.

    Schedule: every ``every_n_steps`` steps (step % every_n_steps == 0), or exactly at the steps
    of ``at_steps`` (e.g. ``antigrok.training.train.checkpoint_steps(last, per_decade)``, the workflow's
    log-spaced checkpoints). ``seed`` (default 0) and the step choose the shuffle of the
    randomized spectra exactly as ``analyze_state_dict(state_dict, seed=..., step=...)`` and the
    workflow's ``spectra`` rule (run seed, step) do.

    ``csv_path``: the rows (MONITOR_COLUMNS: htsr.csv's and traps.csv's columns, one per layer and
    analysed step) are appended there as they come in; the file is started afresh unless
    ``append``. ``layers``: the layers to analyse (default: every analysable weight matrix and conv kernel, as the
    workflow does); ``average_layers``: those averaged into the alpha alarm (default: ``layers``;
    name them as htsr.average_layers does: a small layer such as a 10-class output often has no
    power-law fit, and a layer without alpha makes the average missing).

    Alarms as the workflow's detector: ``alpha_critical``, ``trap_min`` (at
    ``tracy_widom_scale``), ``min_consecutive``; armed from ``arm_from_step`` or, with
    ``arm_when``, from the first step at which ``arm_when(metrics)`` is true for the keyword
    metrics given to :meth:`step` (e.g. ``arm_when=lambda m: m["train_acc"] >= 0.99``, as the
    studies armed at the fit). ``alarms``: which of SPECTRAL_ALARMS to watch (``()`` for none).
    ``rules``: warning rules of the detector study's format (WarningRule objects or
    ``warning_rules.rules`` entries as dicts, e.g. ``antigrok.study.rule_worth.study_rules([...])``),
    watched as the study scored them: on the analysed steps, armed with the alarms, firing once a
    rule's condition has held ``persist`` analysed steps in a row. A rule on a model-wide
    statistic reads it from the metrics given to :meth:`step` at the analysed step (e.g.
    ``activation_sparsity=...``); ``l2_norm``, when not given, is computed from the weights as
    progress.csv computes it. ``monitor.worth``: what the detector studies measured each watched
    alarm and rule to be worth; each firing's warning says it in one line.

    ``stop_on``: the alarms and rules (a name, a list, or True for all watched) whose firing sets
    ``should_stop``. The detector studies found no alarm that tells a run that will collapse from
    one that will not, so stopping on one stops healthy runs too (docs/monitor.md#what-the-alarms-are-worth).
    ``on_alarm(alarm)`` and ``on_analysis(step, rows)`` are called on the training thread.

    ``background``: "thread" (default), "process" (a worker process, fork where the platform
    has it; under spawn the training script needs its ``if __name__ == "__main__":`` guard) or
    None (in the call itself). At most ``max_pending`` analyses wait; one more makes
    :meth:`step` wait for the oldest. :meth:`close` (or leaving a ``with`` block) waits for all.
    """

    def __init__(
        self,
        model,
        every_n_steps: int | None = 500,
        csv_path: str | Path | None = None,
        *,
        at_steps: Iterable[int] | None = None,
        seed: int = 0,
        layers: Iterable[str] | None = None,
        average_layers: Iterable[str] | None = None,
        alpha_critical: float = 2.0,
        trap_min: int = 1,
        tracy_widom_scale: float = 1.0,
        min_consecutive: int = 1,
        arm_from_step: int | None = 0,
        arm_when: Callable[[dict], bool] | None = None,
        alarms: Iterable[str] = SPECTRAL_ALARMS,
        rules: Iterable[WarningRule | Mapping] | None = None,
        stop_on: str | Iterable[str] | bool | None = None,
        on_alarm: Callable[[Alarm | RuleAlarm], None] | None = None,
        on_analysis: Callable[[int, pd.DataFrame], None] | None = None,
        background: str | None = "thread",
        max_pending: int = 2,
        engine: str = DEFAULT_ENGINE,
        fix_fingers="clip_xmax",
        append: bool = False,
    ):
        if not hasattr(model, "state_dict"):
            raise TypeError(f"SpectralMonitor needs a torch.nn.Module (anything with state_dict()), got {type(model)}")
        shapes = _analysable_layers(model)
        if not shapes:
            raise ValueError(
                f"{type(model).__name__} has no weight matrix or conv kernel with at least {MIN_EVALS} eigenvalues: "
                f"nothing for the spectral monitor to analyse ({skipped_summary(state_dict_skip_reasons(model.state_dict()))})"
            )
        self.layers = list(layers) if layers is not None else list(shapes)
        unknown = [name for name in self.layers if name not in shapes]
        if unknown:
            raise ValueError(f"layers {unknown} are not analysable weights of the model; it has {list(shapes)}")
        self.average_layers = list(average_layers) if average_layers is not None else list(self.layers)
        unknown = [name for name in self.average_layers if name not in self.layers]
        if unknown:
            raise ValueError(f"average_layers {unknown} are not among the analysed layers {self.layers}")
        if at_steps is None and (every_n_steps is None or int(every_n_steps) < 1):
            raise ValueError(f"every_n_steps must be an integer >= 1 (or give at_steps), got {every_n_steps}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        if int(max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")

        self.model = model
        self.every_n_steps = int(every_n_steps) if every_n_steps is not None else None
        self.at_steps = frozenset(int(step) for step in at_steps) if at_steps is not None else None
        self.seed = int(seed)
        self.tracy_widom_scale = float(tracy_widom_scale)
        self.engine = engine
        self.fix_fingers = fix_fingers
        self.arm_when = arm_when
        self.on_alarm = on_alarm
        self.on_analysis = on_analysis
        self.background = background
        self.max_pending = int(max_pending)
        armed_from = None if arm_when is not None else arm_from_step
        self.watch = AlarmWatch(self.average_layers, alpha_critical, trap_min, min_consecutive, alarms,
                                armed_from=armed_from, trap_layers=self.layers, tracy_widom_scale=tracy_widom_scale)
        self.rule_watch = RuleWatch(rules or (), armed_from=armed_from, tracy_widom_scale=tracy_widom_scale)
        self._check_rules()
        self._arm_from_step = arm_from_step
        self._fired: list[Alarm | RuleAlarm] = []
        self._warned_missing_statistics: set[str] = set()
        self.stop_on = self._stop_alarms(stop_on)
        self.should_stop = False
        self.stop_alarm: Alarm | RuleAlarm | None = None
        self.csv_path = Path(csv_path) if csv_path is not None else None
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            if not append or not self.csv_path.exists():
                pd.DataFrame(columns=MONITOR_COLUMNS).to_csv(self.csv_path, index=False)
        self.current_step = 0
        self._analysed: set[int] = set()
        self._pending: collections.deque[tuple[int, Future, dict]] = collections.deque()
        self._executor: Executor | None = None
        self._warned_missing_average = False
        self.closed = False

    # ------------------------------------------------------------------ public

    def step(self, step: int | None = None, **metrics) -> list[Alarm]:
        """Call once per optimizer step, after it. ``step``: optimizer steps done so far (default:
        one more than the last call). ``metrics`` (e.g. train_acc=...) go to ``arm_when``.
        Returns the alarms that fired since the last call (their analysed steps may be earlier)."""
        if self.closed:
            raise RuntimeError("SpectralMonitor.step() after close(): make a new monitor for a new run")
        self.current_step = self.current_step + 1 if step is None else int(step)
        fired = []
        if self.arm_when is not None and self.watch.armed_from is None and self._armable(metrics):
            fired += self._arm(self.current_step)
        if self._due(self.current_step):
            fired += self._submit(self.current_step, metrics)
        fired += self._collect(wait=False)
        return self._handle(fired)

    def arm(self, step: int | None = None) -> list[Alarm | RuleAlarm]:
        """Arm the alarms and rules from ``step`` (default: the current step) on."""
        return self._handle(self._arm(self.current_step if step is None else step))

    def close(self) -> list[Alarm]:
        """Wait for the analyses still running, record them, stop the worker. Returns the alarms
        they fired."""
        if self.closed:
            return []
        try:
            fired = self._handle(self._collect(wait=True))
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self.closed = True
        return fired

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def history(self) -> pd.DataFrame:
        """Every row analysed so far (MONITOR_COLUMNS)."""
        return self.watch.history

    @property
    def alarms(self) -> list[Alarm | RuleAlarm]:
        """Every firing so far (alarms and rules), in the order reported."""
        return list(self._fired)

    def first_firing(self, name: str) -> int | None:
        """The first step at which alarm or rule ``name`` fired; None if it has not."""
        steps = [alarm.step for alarm in self._fired if alarm.name == name]
        return min(steps) if steps else None

    @property
    def watched(self) -> tuple[str, ...]:
        """The names of the watched alarms, then rules."""
        return self.watch.alarms + self.rule_watch.names

    @property
    def worth(self) -> pd.DataFrame:
        """What the detector studies measured each watched alarm and rule to be worth: one row each,
        its condition in words and the line its warnings carry (antigrok.study.rule_worth)."""
        conditions = {name: rule.describe() for name, rule in self.watch.as_rules().items()}
        conditions.update({rule.name: rule.describe() for rule in self.rule_watch.rules})
        lines = {**self.watch.worth, **self.rule_watch.worth}
        return pd.DataFrame([{"alarm": name, "condition": conditions[name], "worth": lines[name]}
                             for name in self.watched], columns=["alarm", "condition", "worth"])

    # ------------------------------------------------------------------ internals

    def _stop_alarms(self, stop_on) -> tuple[str, ...]:
        if stop_on in (None, False):
            return ()
        if stop_on is True:
            return self.watched
        names = (stop_on,) if isinstance(stop_on, str) else tuple(stop_on)
        unknown = [name for name in names if name not in self.watched]
        if unknown:
            raise ValueError(f"stop_on names {unknown}, which are not watched alarms or rules {self.watched}")
        return names

    def _check_rules(self) -> None:
        clashing = [name for name in self.rule_watch.names if name in SPECTRAL_ALARMS]
        if clashing:
            raise ValueError(f"rules {clashing} have the names of the detector's alarms {SPECTRAL_ALARMS}: rename them")
        for rule in self.rule_watch.rules:
            unknown = [layer for layer in rule.layers if layer not in self.layers]
            if unknown:
                raise ValueError(f"rule {rule.name!r} reads layers {unknown}, which are not among the analysed "
                                 f"layers {self.layers}: pass layers= with them, or name the model's layers")

    def _arm(self, step: int) -> list[Alarm | RuleAlarm]:
        return self.watch.arm(step) + self.rule_watch.arm(step)

    def _model_values(self, step: int, metrics: Mapping) -> dict[str, float]:
        """The model-wide statistics the rules read, at an analysed step: from ``metrics``, or
        ``l2_norm`` from the weights (as progress.csv has it); the others need data."""
        values = {}
        for name in self.rule_watch.model_statistics:
            if name in metrics:
                values[name] = float(metrics[name])
            elif name == "l2_norm":
                values[name] = l2_norm(self.model)
            elif name not in self._warned_missing_statistics:
                self._warned_missing_statistics.add(name)
                log.warning("antigrok monitor: a rule reads %s, which step() was not given at step %d; the rule holds "
                            "nowhere without it: pass %s=... to step() at the analysed steps (antigrok.study.progress "
                            "computes it from the model and inputs)", name, step, name)
        return values

    def _armable(self, metrics: dict) -> bool:
        if self._arm_from_step is not None and self.current_step < self._arm_from_step:
            return False
        return bool(self.arm_when(metrics))

    def _due(self, step: int) -> bool:
        if step in self._analysed:
            return False
        if self.at_steps is not None:
            return step in self.at_steps
        return step % self.every_n_steps == 0

    def _submit(self, step: int, metrics: Mapping) -> list[Alarm | RuleAlarm]:
        """Queue the analysis of the weights as they are now; returns the alarms of the results
        waited for to make room."""
        fired = []
        self._analysed.add(step)
        matrices = snapshot_weights(self.model, self.layers)
        model_values = self._model_values(step, metrics)
        args = (matrices, self.seed, step, self.fix_fingers, self.engine, self.tracy_widom_scale)
        if self.background is None:
            future: Future = Future()
            future.set_result(analyze_snapshot(*args))
        else:
            while len(self._pending) >= self.max_pending:  # back-pressure: the analysis is behind
                fired += self._record(*self._pending.popleft())
            future = self._worker().submit(analyze_snapshot, *args)
        self._pending.append((step, future, model_values))
        return fired

    def _worker(self) -> Executor:
        if self._executor is None:
            if self.background == "thread":
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="antigrok-monitor")
            else:
                self._executor = ProcessPoolExecutor(max_workers=1)
        return self._executor

    def _collect(self, wait: bool) -> list[Alarm]:
        fired = []
        # One worker: results finish in the order submitted, so the CSV is in step order.
        while self._pending and (wait or self._pending[0][1].done()):
            fired += self._record(*self._pending.popleft())
        return fired

    def _record(self, step: int, future: Future, model_values: dict) -> list[Alarm | RuleAlarm]:
        try:
            rows = future.result()
        except Exception as error:
            raise RuntimeError(f"antigrok monitor: the analysis of step {step} failed: {error}") from error
        if self.csv_path is not None:
            rows.to_csv(self.csv_path, mode="a", header=False, index=False)
        self._check_average(step, rows)
        if self.on_analysis is not None:
            self.on_analysis(step, rows)
        fired = self.watch.update(rows) + self.rule_watch.update(rows, model_values)
        return sorted(fired, key=lambda alarm: alarm.step)

    def _check_average(self, step: int, rows: pd.DataFrame) -> None:
        missing = rows.loc[rows["layer"].isin(self.average_layers) & rows["alpha"].isna(), "layer"].tolist()
        if missing and not self._warned_missing_average:
            self._warned_missing_average = True
            log.warning(
                "antigrok monitor: no alpha for %s at step %d (%s), so no mean alpha there; pass average_layers= "
                "without such layers (e.g. a small output layer) for the alpha alarm to see every step",
                ", ".join(missing), step, rows.loc[rows["layer"].isin(missing), "fit_status"].iloc[0],
            )

    def _handle(self, fired: list[Alarm | RuleAlarm]) -> list[Alarm | RuleAlarm]:
        self._fired.extend(fired)
        for alarm in fired:
            warnings.warn(alarm.message, SpectralAlarmWarning, stacklevel=3)
            if self.on_alarm is not None:
                self.on_alarm(alarm)
            if alarm.name in self.stop_on and not self.should_stop:
                self.should_stop, self.stop_alarm = True, alarm
                log.warning("antigrok monitor: stop requested by %s at step %d", alarm.name, alarm.step)
        return fired
