"""Send a job's output to its Snakemake log file: Python logging, stdout, stderr and tqdm."""

from __future__ import annotations

import contextlib
import logging
import os
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


def log_slurm_allocation() -> None:
    """On a SLURM cluster, log which job and GPU ran this step (SLURM sets both variables)."""
    if "SLURM_JOB_ID" in os.environ:
        logging.getLogger("antigrok").info(
            "SLURM_JOB_ID=%s CUDA_VISIBLE_DEVICES=%s",
            os.environ["SLURM_JOB_ID"],
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
