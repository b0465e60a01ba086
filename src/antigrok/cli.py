"""The ``antigrok`` command line.

    antigrok analyze PATH... [-o OUT.csv] [--seed S] [--fix-fingers {clip_xmax,false}] [--engine E]

HTSR metrics and Correlation Traps of checkpoint files (or folders of ``*.pt`` files): one CSV
row per (file, 2-D weight matrix), the columns of htsr.csv plus ``num_traps`` (Tracy-Widom scale
1.0) and ``path``. No data needed. A file that cannot be analyzed gets one error line on stderr;
the others are still analyzed, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from antigrok.htsr import DEFAULT_ENGINE

log = logging.getLogger(__name__)


class AnalyzeError(Exception):
    """A path that cannot be analyzed; the message names it and says why."""


def _expand_paths(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files to analyze (folders give their ``*.pt`` files, sorted) and error lines."""
    files, errors = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.pt"))
            if not found:
                errors.append(f"{path}: folder holds no *.pt checkpoint files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def _analyze_file(path: Path, seed: int | None, fix_fingers, engine: str):
    from antigrok.htsr import analyze_state_dict
    from antigrok.train import load_checkpoint

    try:
        checkpoint = load_checkpoint(path)
    except (ValueError, OSError) as error:
        raise AnalyzeError(str(error) if str(path) in str(error) else f"{path}: {error}") from None
    step = checkpoint.get("step")
    run_seed = seed if seed is not None else int(checkpoint.get("seed", 0) or 0)
    try:
        table = analyze_state_dict(checkpoint["model"], seed=run_seed, fix_fingers=fix_fingers, engine=engine,
                                   step=0 if step is None else int(step))
    except ValueError as error:
        raise AnalyzeError(f"{path}: {error}") from None
    table.insert(0, "path", str(path))
    return table


def analyze_command(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm import tqdm

    fix_fingers = False if args.fix_fingers == "false" else args.fix_fingers
    files, errors = _expand_paths(args.paths)
    for message in errors:
        print(f"antigrok analyze: error: {message}", file=sys.stderr)
    tables = []
    for path in tqdm(files, desc="analyze", unit="checkpoint", file=sys.stderr, disable=args.quiet or not files):
        try:
            tables.append(_analyze_file(path, args.seed, fix_fingers, args.engine))
        except AnalyzeError as error:
            tqdm.write(f"antigrok analyze: error: {error}", file=sys.stderr)
            errors.append(str(error))
    if tables:
        result = pd.concat(tables, ignore_index=True)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            result.to_csv(args.output, index=False)
            print(f"wrote {len(result)} rows ({len(tables)} checkpoints) to {args.output}", file=sys.stderr)
        else:
            result.to_csv(sys.stdout, index=False)
    return 1 if errors or not tables else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antigrok", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze = commands.add_parser(
        "analyze", help="HTSR alpha and Correlation Traps of checkpoints, from the weights alone",
        description="HTSR metrics (WeightWatcher 0.7.5.5) and Correlation Traps of every 2-D weight "
                    "matrix of checkpoint files or folders of *.pt files; one CSV row per (file, layer).",
    )
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint file (.pt) or folder of them")
    analyze.add_argument("-o", "--output", metavar="OUT.csv", help="write the table here (default: stdout)")
    analyze.add_argument("--seed", type=int, default=None,
                         help="run seed of the randomization (default: the checkpoint's own seed, else 0; "
                              "then the rows equal the run's htsr.csv)")
    analyze.add_argument("--fix-fingers", choices=["clip_xmax", "false"], default="clip_xmax",
                         help="WeightWatcher's fix_fingers (default: clip_xmax, as the paper)")
    analyze.add_argument("--engine", choices=["weightwatcher", "fast"], default=DEFAULT_ENGINE,
                         help=f"spectral engine (default: {DEFAULT_ENGINE}; weightwatcher is the reference)")
    analyze.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    analyze.set_defaults(handler=analyze_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The package's warnings (a failed fit, ...) go to stderr while the command runs.
    package_logger = logging.getLogger("antigrok")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("antigrok: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    package_logger.addHandler(handler)
    try:
        return args.handler(args)
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
