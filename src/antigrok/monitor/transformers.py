"""Hugging Face ``transformers`` adapter of antigrok.monitor (extra ``antigrok[transformers]``).

    from antigrok.monitor.transformers import SpectralMonitorCallback
    trainer = transformers.Trainer(..., callbacks=[SpectralMonitorCallback(every_n_steps=500,
                                                   csv_path="spectra.csv")])

After every optimizer step (``on_step_end``, at ``state.global_step``) it calls
``SpectralMonitor.step`` on the Trainer's model, with the numbers of the latest ``on_log`` logs
as metrics (for ``arm_when``); an alarm in ``stop_on`` sets ``control.should_training_stop``.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError as error:
    raise ImportError(
        "antigrok.monitor.transformers needs Hugging Face transformers: pip install 'antigrok[transformers]'"
    ) from error

from antigrok.monitor import SpectralMonitor


class SpectralMonitorCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that runs a :class:`antigrok.monitor.SpectralMonitor`
    on the Trainer's model. Keyword arguments are SpectralMonitor's (every_n_steps, csv_path,
    average_layers, alpha_critical, stop_on, arm_when, ...)."""

    def __init__(self, every_n_steps: int | None = None, csv_path=None, **monitor_kwargs):
        if every_n_steps is not None:
            monitor_kwargs["every_n_steps"] = every_n_steps
        self.monitor_kwargs = dict(monitor_kwargs, csv_path=csv_path)
        self.monitor: SpectralMonitor | None = None
        self.metrics: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("the Trainer passed no model to SpectralMonitorCallback.on_train_begin")
        self.monitor = SpectralMonitor(model, **self.monitor_kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for name, value in (logs or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.metrics[name] = float(value)

    def on_step_end(self, args, state, control, **kwargs):
        self.monitor.step(state.global_step, **self.metrics)
        if self.monitor.should_stop:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
