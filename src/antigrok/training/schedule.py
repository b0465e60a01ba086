"""When a run logs and checkpoints: log-spaced integer steps (``checkpoints.per_decade``,
``log.per_decade``), so every decade of training is seen alike."""

from __future__ import annotations

import math

import numpy as np


def log_spaced_steps(last_step: int, per_decade: int) -> list[int]:
    """Step 0, ``per_decade`` log-spaced integer steps per decade up to ``last_step``, and the last.

    Deduplicated after rounding, so the first decades hold every step they can.
    """
    if last_step < 1:
        raise ValueError(f"last_step must be >= 1, got {last_step}")
    num_points = int(math.floor(per_decade * math.log10(last_step))) + 1
    exponents = np.arange(num_points) / per_decade
    steps = np.unique(np.rint(10.0**exponents).astype(np.int64))
    steps = steps[steps <= last_step]
    return sorted({0, *steps.tolist(), last_step})


def checkpoint_steps(last_step: int, per_decade: int) -> list[int]:
    """The steps at which a run saves a checkpoint (``checkpoints.per_decade``)."""
    return log_spaced_steps(last_step, per_decade)


def log_steps(last_step: int, log_per_decade: int, checkpoint_per_decade: int) -> list[int]:
    """The steps logged to train_log.csv: ``log.per_decade`` and every checkpoint step."""
    return sorted(
        set(log_spaced_steps(last_step, log_per_decade))
        | set(checkpoint_steps(last_step, checkpoint_per_decade))
    )
