"""Watch a training run as it happens: the data-free early warning of anti-grokking.

``SpectralMonitor(model, every_n_steps=..., csv_path=...)`` looks at a model's weight matrices and
conv kernels (antigrok.kernels, pooled as WeightWatcher pools them) every so many optimizer
steps, analyses them with the workflow's own spectral engine
(``antigrok.htsr``: the same function and seeding as the ``spectra`` rule, so a monitored step
gives the numbers a checkpoint of it would), appends one row per layer to a CSV, and evaluates
the detector's alarms with the detector's own code (``antigrok.detector``: ``spectral_conditions``
and ``firing_steps``, the functions that write detectors.csv):

    alpha_below_critical   mean alpha of ``average_layers`` below ``alpha_critical``
    correlation_trap       at least ``trap_min`` Correlation Traps in any analysed layer
    alpha_and_trap         both at the same step

counted from the step the monitor is armed (``arm_from_step``, or the first step at which
``arm_when(metrics)`` holds, e.g. train accuracy reached), each firing once its condition has
held ``min_consecutive`` analysed steps in a row, and re-arming once it clears. A firing issues a
``SpectralAlarmWarning`` naming the alarm, step, layers and values, and, for the alarms in
``stop_on``, sets ``should_stop``.

The analysis runs off the training thread (``background="thread"``, the default, or
``"process"``): the training thread only copies the weights (to float64 on the CPU) and, at the
next call, picks up finished results; nothing waits unless ``max_pending`` analyses are queued.
Adapters: ``antigrok.monitor.lightning`` (extra ``antigrok[lightning]``) and
``antigrok.monitor.transformers`` (extra ``antigrok[transformers]``).
"""

from __future__ import annotations

import collections
import logging
import math
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from antigrok.htsr import (
    DEFAULT_ENGINE,
    HTSR_COLUMNS,
    MIN_EVALS,
    analyze_with_traps,
    skipped_summary,
    state_dict_skip_reasons,
    weight_matrices,
)
from antigrok.htsr import analyze_weights, htsr_table  # noqa: F401 (importable from here before)
from antigrok.traps import compute_traps  # noqa: F401 (importable from here before)
from antigrok.detector import SPECTRAL_ALARMS, firing_steps, mean_alpha, spectral_conditions

__all__ = [
    "Alarm",
    "AlarmWatch",
    "MONITOR_COLUMNS",
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
    """An alarm of the spectral monitor fired (the message names alarm, step, layers, values)."""


@dataclass(frozen=True)
class Alarm:
    """One firing of one alarm at one analysed step."""

    name: str
    step: int
    mean_alpha: float
    alpha_critical: float
    alpha_by_layer: dict = field(default_factory=dict)
    traps_by_layer: dict = field(default_factory=dict)  # layers with >= trap_min traps
    trap_min: int = 1

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
        return f"antigrok alarm {self.name} at step {self.step}: " + "; ".join(parts) + f" (alpha per layer: {per_layer})"


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


# ----------------------------------------------------------------------------- alarms


class AlarmWatch:
    """The alarms over a growing history of monitor rows: the detector's spectral alarms
    (``antigrok.detector.spectral_conditions``) fired by ``antigrok.detector.firing_steps``, as the
    workflow's detectors rule does for a finished run.

    ``update(rows)`` adds the rows of newly analysed steps and returns the firings not reported
    before; ``arm(step)`` arms the alarms from ``step`` on (the earliest arming counts).
    """

    def __init__(self, average_layers: Iterable[str], alpha_critical: float = 2.0, trap_min: int = 1,
                 min_consecutive: int = 1, alarms: Iterable[str] = SPECTRAL_ALARMS,
                 armed_from: int | None = None):
        self.average_layers = list(average_layers)
        self.alpha_critical = float(alpha_critical)
        self.trap_min = int(trap_min)
        self.min_consecutive = int(min_consecutive)
        self.alarms = tuple(alarms)
        unknown = set(self.alarms) - set(SPECTRAL_ALARMS)
        if unknown:
            raise ValueError(f"unknown alarms {sorted(unknown)}; known: {', '.join(SPECTRAL_ALARMS)}")
        if self.min_consecutive < 1:
            raise ValueError(f"min_consecutive must be >= 1 analysed steps, got {min_consecutive}")
        if self.trap_min < 1:
            raise ValueError(f"trap_min must be >= 1, got {trap_min}")
        self.armed_from = armed_from
        self._frames: list[pd.DataFrame] = []
        self._history: pd.DataFrame | None = None
        self._reported: set[tuple[str, int]] = set()
        self.fired: list[Alarm] = []

    @property
    def history(self) -> pd.DataFrame:
        if self._history is None:
            self._history = pd.concat(self._frames, ignore_index=True) if self._frames else pd.DataFrame(
                columns=["step", "layer", "alpha", "num_traps"])
        return self._history

    def arm(self, step: int) -> list[Alarm]:
        step = int(step)
        if self.armed_from is None or step < self.armed_from:
            self.armed_from = step
        return self._new_firings()

    def update(self, rows: pd.DataFrame) -> list[Alarm]:
        self._frames.append(rows)
        self._history = None
        return self._new_firings()

    def firings(self) -> dict[str, list[int]]:
        """Every firing step so far, per alarm (empty while not armed)."""
        if self.armed_from is None or not self._frames:
            return {name: [] for name in self.alarms}
        history = self.history
        conditions = spectral_conditions(history, history, self.average_layers, self.alpha_critical, self.trap_min)
        return {name: firing_steps(conditions[name][2], self.armed_from, self.min_consecutive) for name in self.alarms}

    def _new_firings(self) -> list[Alarm]:
        new = []
        for name, steps in self.firings().items():
            for step in steps:
                if (name, step) not in self._reported:
                    self._reported.add((name, step))
                    new.append(self._alarm(name, step))
        new.sort(key=lambda alarm: (alarm.step, self.alarms.index(alarm.name)))
        self.fired.extend(new)
        return new

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
        )


# ----------------------------------------------------------------------------- the monitor


class SpectralMonitor:
    """Watches ``model``'s weights during training; call :meth:`step` once per optimizer step.

    Schedule: every ``every_n_steps`` steps (step % every_n_steps == 0), or exactly at the steps
    of ``at_steps`` (e.g. ``antigrok.train.checkpoint_steps(last, per_decade)``, the workflow's
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
    metrics given to :meth:`step` (e.g. ``arm_when=lambda m: m["train_acc"] >= 0.99``).
    ``alarms``: which of SPECTRAL_ALARMS to watch; ``stop_on``: those (a name, a list, or True for
    all watched) whose firing sets ``should_stop``; ``on_alarm(alarm)`` and
    ``on_analysis(step, rows)`` are called on the training thread.

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
        stop_on: str | Iterable[str] | bool | None = None,
        on_alarm: Callable[[Alarm], None] | None = None,
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
        self.watch = AlarmWatch(self.average_layers, alpha_critical, trap_min, min_consecutive, alarms,
                                armed_from=None if arm_when is not None else arm_from_step)
        self._arm_from_step = arm_from_step
        self.stop_on = self._stop_alarms(stop_on)
        self.should_stop = False
        self.stop_alarm: Alarm | None = None
        self.csv_path = Path(csv_path) if csv_path is not None else None
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            if not append or not self.csv_path.exists():
                pd.DataFrame(columns=MONITOR_COLUMNS).to_csv(self.csv_path, index=False)
        self.current_step = 0
        self._analysed: set[int] = set()
        self._pending: collections.deque[tuple[int, Future]] = collections.deque()
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
            fired += self.watch.arm(self.current_step)
        if self._due(self.current_step):
            fired += self._submit(self.current_step)
        fired += self._collect(wait=False)
        return self._handle(fired)

    def arm(self, step: int | None = None) -> list[Alarm]:
        """Arm the alarms from ``step`` (default: the current step) on."""
        return self._handle(self.watch.arm(self.current_step if step is None else step))

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
    def alarms(self) -> list[Alarm]:
        """Every firing so far, in order."""
        return list(self.watch.fired)

    def first_firing(self, name: str) -> int | None:
        """The first step at which alarm ``name`` fired; None if it has not."""
        steps = [alarm.step for alarm in self.watch.fired if alarm.name == name]
        return min(steps) if steps else None

    # ------------------------------------------------------------------ internals

    def _stop_alarms(self, stop_on) -> tuple[str, ...]:
        if stop_on in (None, False):
            return ()
        if stop_on is True:
            return self.watch.alarms
        names = (stop_on,) if isinstance(stop_on, str) else tuple(stop_on)
        unknown = [name for name in names if name not in self.watch.alarms]
        if unknown:
            raise ValueError(f"stop_on names {unknown}, which are not watched alarms {self.watch.alarms}")
        return names

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

    def _submit(self, step: int) -> list[Alarm]:
        """Queue the analysis of the weights as they are now; returns the alarms of the results
        waited for to make room."""
        fired = []
        self._analysed.add(step)
        matrices = snapshot_weights(self.model, self.layers)
        args = (matrices, self.seed, step, self.fix_fingers, self.engine, self.tracy_widom_scale)
        if self.background is None:
            future: Future = Future()
            future.set_result(analyze_snapshot(*args))
        else:
            while len(self._pending) >= self.max_pending:  # back-pressure: the analysis is behind
                fired += self._record(*self._pending.popleft())
            future = self._worker().submit(analyze_snapshot, *args)
        self._pending.append((step, future))
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

    def _record(self, step: int, future: Future) -> list[Alarm]:
        try:
            rows = future.result()
        except Exception as error:
            raise RuntimeError(f"antigrok monitor: the analysis of step {step} failed: {error}") from error
        if self.csv_path is not None:
            rows.to_csv(self.csv_path, mode="a", header=False, index=False)
        self._check_average(step, rows)
        if self.on_analysis is not None:
            self.on_analysis(step, rows)
        return self.watch.update(rows)

    def _check_average(self, step: int, rows: pd.DataFrame) -> None:
        missing = rows.loc[rows["layer"].isin(self.average_layers) & rows["alpha"].isna(), "layer"].tolist()
        if missing and not self._warned_missing_average:
            self._warned_missing_average = True
            log.warning(
                "antigrok monitor: no alpha for %s at step %d (%s), so no mean alpha there; pass average_layers= "
                "without such layers (e.g. a small output layer) for the alpha alarm to see every step",
                ", ".join(missing), step, rows.loc[rows["layer"].isin(missing), "fit_status"].iloc[0],
            )

    def _handle(self, fired: list[Alarm]) -> list[Alarm]:
        for alarm in fired:
            warnings.warn(alarm.message, SpectralAlarmWarning, stacklevel=3)
            if self.on_alarm is not None:
                self.on_alarm(alarm)
            if alarm.name in self.stop_on and not self.should_stop:
                self.should_stop, self.stop_alarm = True, alarm
                log.warning("antigrok monitor: stop requested by %s at step %d", alarm.name, alarm.step)
        return fired
