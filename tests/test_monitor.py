"""antigrok.monitor: alarms on hand-made histories, rows equal to analyze_state_dict, schedule,
arming, stop requests, the CSV, background modes."""

import math
import warnings
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch

from antigrok.htsr import HTSR_COLUMNS, analyze_state_dict
from antigrok.monitor import MONITOR_COLUMNS, AlarmWatch, SpectralAlarmWarning, SpectralMonitor
from antigrok.study.detector import alarm_conditions, firing_steps

# ----------------------------------------------------------------------------- hand-made histories


def history_rows(step, alpha_fc1, alpha_fc2, traps_fc2=0):
    """The monitor rows of one step (only the columns the alarms read)."""
    return pd.DataFrame(
        {"step": [step, step], "layer": ["fc1", "fc2"], "alpha": [alpha_fc1, alpha_fc2], "num_traps": [0, traps_fc2]}
    )


def feed(watch, history):
    """Feed ``history`` [(step, alpha_fc1, alpha_fc2, traps)] one step at a time; (alarm, step) fired."""
    fired = []
    for values in history:
        fired += [(alarm.name, alarm.step) for alarm in watch.update(history_rows(*values))]
    return fired


# mean alpha (fc1, fc2): 3, 3, 1.75, 3, 1.75, 1.5, 1.25; a trap in fc2 from step 500
HISTORY = [
    (10, 3.0, 3.0, 0),
    (20, 3.0, 3.0, 0),
    (50, 1.5, 2.0, 0),
    (100, 3.0, 3.0, 0),
    (200, 1.5, 2.0, 0),
    (500, 1.5, 1.5, 1),
    (1000, 1.0, 1.5, 2),
]


def test_alarm_fires_where_the_mean_alpha_drops_below_critical_and_rearms():
    fired = feed(AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, armed_from=0), HISTORY)
    assert [step for name, step in fired if name == "alpha_below_critical"] == [50, 200]
    assert [step for name, step in fired if name == "correlation_trap"] == [500]
    assert [step for name, step in fired if name == "alpha_and_trap"] == [500]


def test_alarm_does_not_fire_above_critical():
    quiet = [(step, 2.5, 2.1, 0) for step in (10, 100, 1000, 10000)]
    assert feed(AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, armed_from=0), quiet) == []


def test_alpha_of_a_layer_not_averaged_does_not_count():
    history = [(step, 3.0, 1.0, 0) for step in (10, 100)]
    assert feed(AlarmWatch(["fc1"], alpha_critical=2.0, armed_from=0), history) == []


def test_alarm_needs_min_consecutive_steps():
    fired = feed(AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, min_consecutive=2, armed_from=0), HISTORY)
    assert [step for name, step in fired if name == "alpha_below_critical"] == [500]  # 200, 500 in a row
    assert [step for name, step in fired if name == "correlation_trap"] == [1000]
    fired = feed(AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, min_consecutive=4, armed_from=0), HISTORY)
    assert fired == []


def test_alarm_does_not_fire_before_it_is_armed():
    watch = AlarmWatch(["fc1", "fc2"], alpha_critical=2.0)  # armed_from None: waits for arm()
    assert feed(watch, HISTORY[:5]) == []
    assert [(a.name, a.step) for a in watch.arm(100)] == [("alpha_below_critical", 200)]  # 50 is before 100
    assert feed(watch, HISTORY[5:]) == [("correlation_trap", 500), ("alpha_and_trap", 500)]


def test_a_failed_fit_is_no_alarm():
    fired = feed(AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, armed_from=0), [(10, math.nan, 1.0, 0)])
    assert fired == []


def test_alarm_values_name_the_layers():
    watch = AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, armed_from=0)
    alarms = {alarm.name: alarm for alarm in watch.update(history_rows(500, 1.5, 1.7, 3))}
    trap = alarms["correlation_trap"]
    assert (trap.step, trap.traps_by_layer, trap.mean_alpha) == (500, {"fc2": 3}, pytest.approx(1.6))
    assert "step 500" in trap.message and "fc2: 3" in trap.message and "fc1 1.500" in trap.message


def test_the_watch_is_the_workflow_detector():
    """The same rows through antigrok.study.tables's run-level code give the same firings."""
    watch = AlarmWatch(["fc1", "fc2"], alpha_critical=2.0, min_consecutive=2, armed_from=20)
    feed(watch, HISTORY)
    rows = pd.concat([history_rows(*values) for values in HISTORY]).assign(experiment="exp", weight_decay=0.0, seed=0)
    conditions = alarm_conditions(rows, rows, None, {"exp": ["fc1", "fc2"]}, 2.0, {})
    expected = {name: firing_steps(condition, 20, 2) for name, (_, _, condition) in conditions.items()}
    assert watch.firings() == expected


# ----------------------------------------------------------------------------- the monitor on a model


def tiny_mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        OrderedDict(fc1=torch.nn.Linear(64, 48), relu=torch.nn.ReLU(), fc2=torch.nn.Linear(48, 32))
    ).to(dtype)


def train_steps(model, monitor, steps, seed=0, **metrics):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(128, 64, generator=generator, dtype=next(model.parameters()).dtype)
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(**metrics)


def comparable(frame):
    frame = frame.drop(columns=["analysis_seconds"]).reset_index(drop=True)
    return frame.astype({"num_traps": "Int64", "num_traps_centered": "Int64"})


@pytest.mark.parametrize("background", [None, "thread", "process"])
def test_monitor_rows_equal_analyze_state_dict(tmp_path, background):
    model = tiny_mlp()
    with SpectralMonitor(model, every_n_steps=3, csv_path=tmp_path / "m.csv", seed=7, background=background) as monitor:
        train_steps(model, monitor, 3)
        expected = analyze_state_dict(model.state_dict(), seed=7, step=3)  # the weights of step 3
        weights = {name: model.get_submodule(name).weight.detach().double().numpy().copy() for name in ("fc1", "fc2")}
        train_steps(model, monitor, 2)
    rows = monitor.history[monitor.history.step == 3]
    pd.testing.assert_frame_equal(comparable(rows[HTSR_COLUMNS + ["num_traps", "num_traps_centered"]]), comparable(expected))
    # The numbers themselves, independently: norms from NumPy's SVD of the step-3 weights, alpha and
    # the trap count from WeightWatcher 0.7.5.5 itself on the same matrices and seeds.
    by_layer = rows.set_index("layer")
    reference = analyze_state_dict({f"{n}.weight": w for n, w in weights.items()}, seed=7, step=3,
                                   engine="weightwatcher").set_index("layer")
    for name, weight in weights.items():
        squared = np.linalg.svd(weight, compute_uv=False) ** 2
        assert by_layer.loc[name, "log_norm"] == pytest.approx(np.log10(squared.sum()), rel=1e-12)
        assert by_layer.loc[name, "log_spectral_norm"] == pytest.approx(np.log10(squared.max()), rel=1e-12)
        assert by_layer.loc[name, "alpha"] == pytest.approx(reference.loc[name, "alpha"], rel=1e-9, nan_ok=True)
        assert by_layer.loc[name, "num_traps"] == reference.loc[name, "num_traps"]
    written = pd.read_csv(tmp_path / "m.csv")
    assert written.columns.tolist() == MONITOR_COLUMNS
    assert written.step.tolist() == [3, 3]  # step 5 is not a multiple of 3
    assert written.alpha.to_numpy() == pytest.approx(rows.alpha.to_numpy(), nan_ok=True)


def test_monitor_copies_the_weights_when_it_looks(tmp_path):
    """Training on while the analysis runs does not change what is analysed."""
    model = tiny_mlp()
    monitor = SpectralMonitor(model, every_n_steps=1, seed=1, background="thread", max_pending=4)
    monitor.step(1)
    expected = analyze_state_dict(model.state_dict(), seed=1, step=1)
    with torch.no_grad():
        model.fc1.weight.mul_(3.0)
    monitor.close()
    pd.testing.assert_frame_equal(comparable(monitor.history[HTSR_COLUMNS + ["num_traps", "num_traps_centered"]]), comparable(expected))


def test_monitor_schedule_at_steps_and_float64_copy():
    model = tiny_mlp(dtype=torch.float64)
    monitor = SpectralMonitor(model, at_steps=[0, 1, 2, 5, 10], background=None)
    for step in range(0, 8):
        monitor.step(step)
    assert sorted(monitor.history.step.unique()) == [0, 1, 2, 5]


def test_monitor_warns_and_requests_a_stop():
    model = tiny_mlp()
    monitor = SpectralMonitor(model, every_n_steps=2, alpha_critical=100.0, stop_on="alpha_below_critical",
                              background=None)
    with pytest.warns(SpectralAlarmWarning, match=r"alpha_below_critical at step 2: mean alpha of fc1, fc2"):
        train_steps(model, monitor, 2)
    assert monitor.should_stop and monitor.stop_alarm.step == 2
    assert monitor.first_firing("alpha_below_critical") == 2 and monitor.first_firing("correlation_trap") is None


def test_monitor_stays_quiet_without_stop_on():
    model = tiny_mlp()
    monitor = SpectralMonitor(model, every_n_steps=2, alpha_critical=100.0, background=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralAlarmWarning)
        train_steps(model, monitor, 4)
    assert monitor.alarms and not monitor.should_stop


def test_monitor_arms_when_the_condition_holds():
    model = tiny_mlp()
    accuracy = iter([0.5, 0.8, 0.995, 0.999, 0.999, 0.999])
    monitor = SpectralMonitor(model, every_n_steps=1, alpha_critical=100.0, background=None,
                              arm_when=lambda metrics: metrics["train_acc"] >= 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralAlarmWarning)
        for step in range(1, 7):
            monitor.step(step, train_acc=next(accuracy))
    assert monitor.watch.armed_from == 3
    assert monitor.first_firing("alpha_below_critical") == 3  # it held from step 1, counted from 3


def test_back_pressure_loses_no_alarm():
    runs = {}
    for background in (None, "thread"):
        model = tiny_mlp()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpectralAlarmWarning)
            with SpectralMonitor(model, every_n_steps=1, alpha_critical=100.0, background=background,
                                 max_pending=1) as monitor:
                train_steps(model, monitor, 6)
        runs[background] = [(alarm.name, alarm.step) for alarm in monitor.alarms]
    assert runs[None] == runs["thread"] == [(name, 1) for name in ["alpha_below_critical"]]


def test_a_model_without_analysable_layers_is_one_clear_error():
    with pytest.raises(ValueError, match=r"no weight matrix or conv kernel with at least 10 eigenvalues: nothing for "
                                         r"the spectral monitor to analyse \(2 tensors skipped: 1 shape 3x5 has fewer "
                                         r"than 10 eigenvalues; WeightWatcher does not analyze it: 0.weight; 1 1-D"):
        SpectralMonitor(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU()), every_n_steps=10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": ["fc9"]}, r"layers \['fc9'\] are not analysable"),
        ({"average_layers": ["relu"]}, r"average_layers \['relu'\]"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"stop_on": "alpha_low"}, "stop_on"),
        ({"alarms": ["alpha_low"]}, "unknown alarms"),
        ({"background": "gpu"}, "background"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectralMonitor(tiny_mlp(), **{"every_n_steps": 10, **kwargs})


def test_step_after_close_is_an_error():
    monitor = SpectralMonitor(tiny_mlp(), every_n_steps=10, background=None)
    monitor.close()
    with pytest.raises(RuntimeError, match="after close"):
        monitor.step()


def test_csv_appends_when_asked(tmp_path):
    path = tmp_path / "m.csv"
    for _ in range(2):
        with SpectralMonitor(tiny_mlp(), every_n_steps=1, csv_path=path, background=None, append=True) as monitor:
            monitor.step(1)
    assert np.array_equal(pd.read_csv(path).step.to_numpy(), [1, 1, 1, 1])
