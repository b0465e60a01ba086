"""Peak memory of ``antigrok analyze`` on a gpt-oss-shaped MXFP4 folder, as its experts multiply.

Writes synthetic gpt-oss folders (tests/gpt_oss_synthetic.py: the real tensor names and MXFP4 layout,
small sizes, fixed seed, no download) with one block and ``--experts`` experts of ``--hidden`` x
``--intermediate``, and runs ``antigrok analyze FOLDER -q --threads 1`` on each in a child process,
reporting its peak resident set (``ru_maxrss``) next to the size of the packed experts on disk and
of all expert matrices in float64. Each expert matrix is read from its own slice of the packed
tensors and dequantized alone, so the peak should stay flat as the experts multiply: it is the
interpreter and its libraries plus a few copies of one expert matrix.

    python benchmarks/mxfp4_memory.py                           # 8, 32 and 128 experts of 512 x 512
    python benchmarks/mxfp4_memory.py --experts 4,64 --hidden 1024 --intermediate 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_model_memory import peak_rss_of  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="8,32,128", help="expert counts, comma-separated (default 8,32,128)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=512)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from gpt_oss_synthetic import write_gpt_oss_folder  # the tests' synthetic gpt-oss folder

    script = Path(sys.executable).parent / "antigrok"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "antigrok.cli"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"one gpt-oss block, experts of hidden {args.hidden} x intermediate {args.intermediate} (gate, up, down: "
          f"3 matrices each); `antigrok analyze FOLDER -q --threads 1`\n")
    one_matrix_mb = 2 * args.hidden * args.intermediate * 8 / 2**20  # gate_up of one expert, float64
    header = (f"{'experts':>7} {'matrices':>8} | {'packed MB':>9} {'experts f64 MB':>14} {'one gate_up f64 MB':>18} | "
              f"{'peak RSS MB':>11} {'wall s':>7} {'CPU s':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    root = Path(tempfile.mkdtemp(prefix="antigrok-mxfp4-"))
    try:
        for experts in (int(n) for n in args.experts.split(",")):
            folder = write_gpt_oss_folder(root / f"experts{experts}", 1, experts, args.hidden, args.intermediate)
            packed = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            out = folder / "htsr.csv"
            code, peak, wall, cpu, errors = peak_rss_of([*command, "analyze", str(folder), "-q", "--threads", "1",
                                                         "-o", str(out)])
            if code != 0:
                raise SystemExit(f"antigrok analyze {folder} exited with {code}:\n{errors}")
            matrices = sum(1 for line in open(out) if ",mxfp4" in line)
            if matrices != 3 * experts:
                raise SystemExit(f"{folder}: {matrices} expert matrices analysed, expected {3 * experts}")
            all_f64 = 3 * experts * args.hidden * args.intermediate * 8 / 2**20
            rows.append({"experts": experts, "packed_mb": packed / 2**20, "experts_float64_mb": all_f64,
                         "peak_rss_mb": peak, "wall_s": wall, "cpu_s": cpu})
            print(f"{experts:>7} {matrices:>8} | {packed / 2**20:>9.1f} {all_f64:>14.0f} {one_matrix_mb:>18.1f} | "
                  f"{peak:>11.0f} {wall:>7.1f} {cpu:>7.1f}", flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
