"""The ``antigrok`` command line.

    antigrok analyze PATH... [-o OUT.csv] [--layers REGEX] [--skipped SKIPPED.csv] [--seed S]
                     [--fix-fingers {clip_xmax,false}] [--engine E] [--threads N] [-q]

HTSR metrics and Correlation Traps of model files, from the weights alone: workflow checkpoints and
folders of them, bare state_dicts, ``.safetensors`` files, Hugging Face model folders (sharded or
not, safetensors or pytorch_model.bin) and ``.npz`` archives of arrays (antigrok.loading; no file
is ever unpickled beyond tensors, numbers, strings and containers). One CSV row per (model, 2-D
weight matrix): ``path``, the columns of htsr.csv, ``num_traps`` (Tracy-Widom scale 1.0), ``num_traps_centered``
(the same with the shuffled matrix's mean-shift outlier removed) and ``stored_dtype``. Tensors are read and analysed one at a time, in float64. Skipped tensors and a
summary go to stderr. A path that cannot be analysed gets one error line on stderr; the others are
still analysed, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from antigrok.files import write_csv_atomically
from antigrok.htsr import DEFAULT_ENGINE

log = logging.getLogger(__name__)
ERROR_PREFIX = "antigrok analyze: error:"


class AnalyzeError(Exception):
    """A path that cannot be analyzed; the message names it and says why."""


def _openers(paths: list[str]) -> tuple[list, list[str]]:
    """(path, opener) of every model the paths hold, and error lines for paths that hold none."""
    from antigrok.loading import ModelFileError, model_openers

    openers, errors = [], []
    for raw in paths:
        try:
            openers.extend(model_openers(raw))
        except ModelFileError as error:
            errors.append(str(error))
    return openers, errors


def _analyze_one(path: Path, opener, args, layers, bar):
    """The analysis of one model, or AnalyzeError naming its path and why."""
    from antigrok.analyze import NOT_SELECTED, analyze_model
    from antigrok.htsr import MIN_EVALS
    from antigrok.loading import ModelFileError

    try:
        source = opener()
    except ModelFileError as error:
        raise AnalyzeError(str(error)) from None
    if bar is not None:
        bar.reset(total=len(source.tensors))
        bar.set_description_str(path.name)

    def advance(ref, _analysed):
        if bar is not None:
            bar.set_postfix_str(ref.name[-40:], refresh=False)
            bar.update(1)
            if bar.n >= bar.total:
                bar.refresh()  # tqdm skips updates closer than mininterval: show the finished count

    try:
        result = analyze_model(source, seed=args.seed, layers=layers, fix_fingers=args.fix_fingers, engine=args.engine,
                               on_tensor=advance)
    except ValueError as error:  # ModelFileError included: a tensor that cannot be read
        raise AnalyzeError(str(error) if str(path) in str(error) else f"{path}: {error}") from None
    if result.table.empty:
        if layers is not None and (result.skipped["reason"] != NOT_SELECTED).sum() == 0:
            raise AnalyzeError(f"{path}: no tensor name matches --layers {layers.pattern!r}")
        reasons = "; ".join(f"{n} {r}" for r, n in result.skipped["reason"].value_counts().items())
        raise AnalyzeError(f"{path}: no 2-D weight matrix with at least {MIN_EVALS} rows and columns "
                           f"(skipped: {reasons or 'no tensors'})")
    result.table.insert(0, "path", str(path))
    return result


def _limit_threads(threads: int) -> None:
    """BLAS / LAPACK (numpy, scipy) and torch threads: the fast engine's big layers use them."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    torch.set_num_threads(threads)


def analyze_command(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm import tqdm

    from antigrok.analyze import SKIPPED_COLUMNS, summary_lines

    if args.fix_fingers == "false":
        args.fix_fingers = False
    if args.threads > 0:
        _limit_threads(args.threads)
    openers, errors = _openers(args.paths)
    for message in errors:
        print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
    show = not args.quiet and bool(openers)
    # One model: a bar over its layers. Several (a folder of checkpoints): a bar over the models.
    model_bar = tqdm(total=len(openers), desc="analyze", unit="model", file=sys.stderr,
                     disable=not show or len(openers) == 1)
    layer_bar = tqdm(total=0, unit="layer", file=sys.stderr, leave=False, disable=not show or len(openers) > 1)
    tables, skipped = [], []
    for path, opener in openers:
        try:
            result = _analyze_one(path, opener, args, args.layers, layer_bar if len(openers) == 1 else None)
            tables.append(result.table)
            skipped.append(result.skipped)
        except AnalyzeError as error:
            tqdm.write(f"{ERROR_PREFIX} {error}", file=sys.stderr)
            errors.append(str(error))
        model_bar.update(1)
    layer_bar.close()
    model_bar.close()
    table = pd.concat(tables, ignore_index=True) if tables else None
    skipped_table = pd.concat(skipped, ignore_index=True) if skipped else pd.DataFrame(columns=SKIPPED_COLUMNS)
    if table is not None:
        if args.output:
            write_csv_atomically(table, args.output)
            print(f"wrote {len(table)} rows ({len(tables)} model{'s' if len(tables) != 1 else ''}) to {args.output}",
                  file=sys.stderr)
        else:
            table.to_csv(sys.stdout, index=False)
    if args.skipped:
        write_csv_atomically(skipped_table, args.skipped)
    if table is not None:
        # a folder of checkpoints repeats each bias once per checkpoint: list each tensor name once
        unique_skipped = skipped_table.drop_duplicates(["tensor", "reason"])
        for line in summary_lines(table, unique_skipped, len(tables)):
            print(line, file=sys.stderr)
    return 1 if errors or table is None else 0


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({error})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antigrok", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze = commands.add_parser(
        "analyze", help="HTSR alpha and Correlation Traps of a model's weights, no data needed",
        description="HTSR metrics (WeightWatcher 0.7.5.5) and Correlation Traps of every 2-D weight matrix of "
                    "checkpoints, state_dicts, .safetensors files, Hugging Face model folders and .npz files; one "
                    "CSV row per (model, layer). No file is unpickled beyond tensors, numbers, strings and "
                    "containers: a file that needs more is refused.",
    )
    analyze.add_argument("paths", nargs="+", metavar="PATH",
                         help="a model file (.pt/.bin state_dict or checkpoint, .safetensors, .npz), a Hugging Face "
                              "model folder, or a folder of *.pt checkpoints")
    analyze.add_argument("-o", "--output", metavar="OUT.csv", help="write the table here (default: stdout)")
    analyze.add_argument("--layers", metavar="REGEX", type=_regex,
                         help="analyse only the tensors whose name matches (re.search), e.g. 'mlp|self_attn' "
                              "(default: every 2-D floating tensor, embeddings included)")
    analyze.add_argument("--skipped", metavar="SKIPPED.csv",
                         help="write every tensor not analysed, with its shape, dtype and the reason, here")
    analyze.add_argument("--seed", type=int, default=None,
                         help="run seed of the randomization (default: the checkpoint's own seed, else 0; "
                              "then the rows equal the run's htsr.csv)")
    analyze.add_argument("--fix-fingers", choices=["clip_xmax", "false"], default="clip_xmax",
                         help="WeightWatcher's fix_fingers (default: clip_xmax, as the paper)")
    analyze.add_argument("--engine", choices=["weightwatcher", "fast"], default=DEFAULT_ENGINE,
                         help=f"spectral engine (default: {DEFAULT_ENGINE}; weightwatcher is the reference)")
    analyze.add_argument("--threads", type=int, default=0, metavar="N",
                         help="BLAS / LAPACK threads for layers of 1024 x 1024 and larger (default 0: every core; "
                              "on a machine busy with other work, 1)")
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
