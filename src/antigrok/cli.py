"""The ``antigrok`` command line.

    antigrok analyze PATH... [-o OUT.csv] [--layers REGEX] [--skipped SKIPPED.csv] [--seed S]
                     [--fix-fingers {clip_xmax,false}] [--engine E] [--threads N] [-q]

HTSR metrics and Correlation Traps of model files, from the weights alone: workflow checkpoints,
state_dicts and checkpoints holding one under a common key, ``.safetensors``, ``.npz`` and ``.onnx``
files, TorchScript archives, Hugging Face model folders (sharded or not, safetensors or
pytorch_model.bin) and folders of any of these (antigrok.formats.loading: no file's code is run). One CSV
row per (model, weight matrix or conv kernel): ``path``, the columns of htsr.csv, ``num_traps``
(Tracy-Widom scale 1.0), ``num_traps_centered`` (the same with the shuffled matrix's mean-shift
outlier removed) and ``stored_dtype``. Tensors are read and analysed one at a time, in float64.
How each file was read, the skipped tensors and files, and a summary go to stderr. A path that
cannot be analysed gets one error line on stderr; the others are
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
DESCRIPTION = ("antigrok: HTSR alpha and Correlation Traps of a model's weights, no data needed "
               "(the command line of the anti-grokking workflow; the workflow itself runs with snakemake)")
ERROR_PREFIX = "antigrok analyze: error:"


class AnalyzeError(Exception):
    """A path that cannot be analyzed; the message names it and says why."""


def _openers(paths: list[str]) -> tuple[list, list[dict], list[str]]:
    """(path, opener) of every model the paths hold, the files they hold that are not read (rows of
    the skipped table), and error lines for paths that hold no model."""
    from antigrok.users.analyze import skipped_file_row
    from antigrok.formats.loading import ModelFileError, folder_plan

    openers, skipped_files, errors = [], [], []
    for raw in paths:
        try:
            plan = folder_plan(raw)
        except ModelFileError as error:
            errors.append(str(error))
            continue
        openers.extend(plan.openers)
        skipped_files.extend(skipped_file_row(file, reason) for file, reason in plan.skipped)
    return openers, skipped_files, errors


def _analyze_one(path: Path, opener, args, layers, bar):
    """The analysis of one model, or AnalyzeError naming its path and why."""
    from antigrok.users.analyze import NOT_SELECTED, analyze_model
    from antigrok.htsr import skipped_summary
    from antigrok.formats.loading import ModelFileError

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
        if result.skipped.empty:
            raise AnalyzeError(f"{path}: holds no tensors")
        reasons = dict(zip(result.skipped["tensor"], result.skipped["reason"]))
        raise AnalyzeError(f"{path}: nothing analysed: {skipped_summary(reasons)}")
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

    from antigrok.users.analyze import SKIPPED_COLUMNS, summary_lines

    if args.fix_fingers == "false":
        args.fix_fingers = False
    if args.threads > 0:
        _limit_threads(args.threads)
    openers, skipped_files, errors = _openers(args.paths)
    for message in errors:
        print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
    show = not args.quiet and bool(openers)
    # One model: a bar over its layers. Several (a folder of checkpoints): a bar over the models.
    model_bar = tqdm(total=len(openers), desc="analyze", unit="model", file=sys.stderr,
                     disable=not show or len(openers) == 1)
    layer_bar = tqdm(total=0, unit="layer", file=sys.stderr, leave=False, disable=not show or len(openers) > 1)
    tables, skipped, notes = [], [pd.DataFrame(skipped_files, columns=SKIPPED_COLUMNS)], []
    for path, opener in openers:
        try:
            result = _analyze_one(path, opener, args, args.layers, layer_bar if len(openers) == 1 else None)
            tables.append(result.table)
            skipped.append(result.skipped)
            notes.extend(f"{path}: {note}" for note in result.notes)
        except AnalyzeError as error:
            tqdm.write(f"{ERROR_PREFIX} {error}", file=sys.stderr)
            errors.append(str(error))
        model_bar.update(1)
    layer_bar.close()
    model_bar.close()
    table = pd.concat(tables, ignore_index=True) if tables else None
    skipped_table = pd.concat([table for table in skipped if not table.empty] or skipped, ignore_index=True)
    if table is not None:
        if args.output:
            write_csv_atomically(table, args.output)
            print(f"wrote {len(table)} rows ({len(tables)} model{'s' if len(tables) != 1 else ''}) to {args.output}",
                  file=sys.stderr)
        else:
            table.to_csv(sys.stdout, index=False)
    if args.skipped:
        write_csv_atomically(skipped_table, args.skipped)
    for note in notes:
        print(note, file=sys.stderr)
    if table is not None:
        # a folder of checkpoints repeats each bias once per checkpoint: list each tensor name once
        is_file = skipped_table["tensor"] == ""
        unique_skipped = pd.concat([skipped_table[is_file],
                                    skipped_table[~is_file].drop_duplicates(["tensor", "reason"])])
        for line in summary_lines(table, unique_skipped, len(tables)):
            print(line, file=sys.stderr)
    elif len(skipped_files):
        for line in summary_lines(pd.DataFrame(), pd.DataFrame(skipped_files, columns=SKIPPED_COLUMNS), 0):
            print(line, file=sys.stderr)
    return 1 if errors or table is None else 0


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({error})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antigrok", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze = commands.add_parser(
        "analyze", help="HTSR alpha and Correlation Traps of a model's weights, no data needed",
        description="HTSR metrics (WeightWatcher 0.7.5.5) and Correlation Traps of every weight matrix and "
                    "Conv1d / Conv2d kernel (pooled over kernel positions, as WeightWatcher does) of checkpoints, "
                    "state_dicts, .safetensors, .npz and .onnx files, TorchScript archives and Hugging Face model "
                    "folders; one CSV row per (model, layer). No file's code is run: torch files are unpickled "
                    "only as tensors, numbers, strings and containers, and a file that needs more is refused.",
    )
    analyze.add_argument("paths", nargs="+", metavar="PATH",
                         help="a model file (.pt .pth .bin .ckpt: a state_dict, or a checkpoint holding one under "
                              "'model', 'model_state_dict', 'state_dict', ...; .safetensors; .npz; .onnx; a "
                              "TorchScript archive), a Hugging Face model folder, or a folder of model files (each "
                              "file analysed, or listed in the summary with the reason)")
    analyze.add_argument("-o", "--output", metavar="OUT.csv", help="write the table here (default: stdout)")
    analyze.add_argument("--layers", metavar="REGEX", type=_regex,
                         help="analyse only the tensors whose name matches (re.search), e.g. 'mlp|self_attn' "
                              "(default: every weight matrix and conv kernel, embeddings included)")
    analyze.add_argument("--skipped", metavar="SKIPPED.csv",
                         help="write every tensor and file not analysed, with its shape, dtype and the reason, here")
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
