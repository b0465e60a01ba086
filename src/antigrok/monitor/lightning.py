"""PyTorch Lightning adapter of antigrok.monitor (extra ``antigrok[lightning]``).

    from antigrok.monitor.lightning import SpectralMonitorCallback
    trainer = lightning.pytorch.Trainer(callbacks=[SpectralMonitorCallback(every_n_steps=500,
                                                   csv_path="spectra.csv")])

After every optimizer step (``on_train_batch_end``, at ``trainer.global_step``) it calls
``SpectralMonitor.step`` with the trainer's ``callback_metrics`` as metrics (for ``arm_when``);
an alarm in ``stop_on`` sets the trainer's own ``trainer.should_stop``. Every analysed step is
logged to the trainer's loggers at that step: ``antigrok/alpha/<layer>``,
``antigrok/num_traps/<layer>`` and ``antigrok/mean_alpha``.
"""

from __future__ import annotations

import math

import pandas as pd

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package has the same Callback
    try:
        from pytorch_lightning import Callback
    except ImportError as error:
        raise ImportError(
            "antigrok.monitor.lightning needs PyTorch Lightning: pip install 'antigrok[lightning]'"
        ) from error

from antigrok.monitor import SpectralMonitor
from antigrok.spectra.primitives import mean_alpha


def scalar_metrics(metrics) -> dict[str, float]:
    """The numbers among a metrics mapping (tensors of one element included), as floats."""
    scalars = {}
    for name, value in dict(metrics).items():
        try:
            scalars[name] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return scalars


def logged_metrics(rows, average_layers) -> dict[str, float]:
    """What one analysed step logs: alpha and traps per layer, the mean alpha of average_layers."""
    metrics = {}
    for row in rows.itertuples(index=False):
        metrics[f"antigrok/alpha/{row.layer}"] = float(row.alpha)
        metrics[f"antigrok/num_traps/{row.layer}"] = math.nan if pd.isna(row.num_traps) else float(row.num_traps)
    mean = mean_alpha(rows, average_layers)
    metrics["antigrok/mean_alpha"] = float(mean.iloc[0]) if len(mean) else math.nan
    return metrics


class SpectralMonitorCallback(Callback):
    """A Lightning ``Callback`` that runs a :class:`antigrok.monitor.SpectralMonitor` on the
    LightningModule being fitted. Keyword arguments are SpectralMonitor's (every_n_steps,
    csv_path, average_layers, alpha_critical, stop_on, arm_when, ...); ``log_to_logger``: send
    the analysed values to the trainer's loggers too."""

    def __init__(self, every_n_steps: int | None = None, csv_path=None, *, log_to_logger: bool = True,
                 **monitor_kwargs):
        super().__init__()
        if every_n_steps is not None:
            monitor_kwargs["every_n_steps"] = every_n_steps
        self.user_on_analysis = monitor_kwargs.pop("on_analysis", None)
        self.monitor_kwargs = dict(monitor_kwargs, csv_path=csv_path)
        self.log_to_logger = log_to_logger
        self.monitor: SpectralMonitor | None = None
        self._trainer = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        self.monitor = SpectralMonitor(pl_module, on_analysis=self._analysed, **self.monitor_kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.monitor.step(trainer.global_step, **scalar_metrics(trainer.callback_metrics))
        self._request_stop(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self._request_stop(trainer)

    def _request_stop(self, trainer) -> None:
        if self.monitor.should_stop:
            trainer.should_stop = True

    def _analysed(self, step, rows) -> None:
        if self.log_to_logger:
            metrics = logged_metrics(rows, self.monitor.average_layers)
            for logger in self._trainer.loggers:
                logger.log_metrics(metrics, step=step)
        if self.user_on_analysis is not None:
            self.user_on_analysis(step, rows)
