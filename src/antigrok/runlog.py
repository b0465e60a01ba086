"""Send a job's output to its Snakemake log file: Python logging, stdout, stderr and tqdm."""

from __future__ import annotations

import contextlib
import logging
import sys
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
