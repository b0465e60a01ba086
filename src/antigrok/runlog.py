"""Send a job's output to its Snakemake log file (Python logging, stdout, stderr and tqdm), and the
line a SLURM job's log starts with: the job and the GPU variables SLURM set."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path


@contextlib.contextmanager
def to_log_file(path: str | Path | None, level: int = logging.INFO):
    """Within the block, everything the job prints or logs goes to ``path`` (None: unchanged).

    Third-party modules that print (WeightWatcher) land in the same file instead of the terminal.
    """
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("antigrok")
        logger.addHandler(handler)
        logger.setLevel(level)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        except BaseException:
            logger.exception("job failed")
            raise
        finally:
            logger.removeHandler(handler)


# The GPU variables SLURM may set in a job with a GPU. Which of them it sets depends on the SLURM
# version, gres.conf and how the step was started (a step started with SLURM_* variables removed,
# as the Snakemake executor does, has SLURM_STEP_GPUS but no SLURM_JOB_GPUS), so all are logged.
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
# Written for a variable that is not set, unlike an empty value (`CUDA_VISIBLE_DEVICES=`).
UNSET = "<unset>"


def slurm_allocation_line(environ: Mapping[str, str]) -> str | None:
    """``SLURM_JOB_ID=<id>`` and each of SLURM_GPU_VARIABLES as ``NAME=<value>`` (UNSET where not
    set), or None outside a SLURM job."""
    if "SLURM_JOB_ID" not in environ:
        return None
    return " ".join(f"{name}={environ.get(name, UNSET)}" for name in ("SLURM_JOB_ID", *SLURM_GPU_VARIABLES))


def log_slurm_allocation() -> None:
    """On a SLURM cluster, log which job ran this step and which GPU SLURM gave it."""
    line = slurm_allocation_line(os.environ)
    if line is not None:
        logging.getLogger("antigrok").info(line)


def read_slurm_allocation(log_text: str) -> dict[str, str | None] | None:
    """The variables of the first slurm_allocation_line in a log (None for an unset one), or None
    when the log has no such line (the step did not run under SLURM)."""
    names = "|".join(SLURM_GPU_VARIABLES)
    line = re.search(rf"SLURM_JOB_ID=\S+(?: (?:{names})=\S*)*", log_text)
    if line is None:
        return None
    pairs = (pair.split("=", 1) for pair in line.group(0).split(" "))
    return {name: None if value == UNSET else value for name, value in pairs}
