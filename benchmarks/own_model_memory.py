"""Peak memory of ``antigrok analyze`` on a sharded Hugging Face folder, against the model's size.

Writes synthetic models (fixed seed, no download) as Hugging Face folders of safetensors shards
(``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json``, 4 layers per shard):
``--num-layers`` counts of 2-D layers of ``--shape`` in ``--dtype``, each with a 1-D norm. For each
model, runs ``antigrok analyze FOLDER -q --threads 1`` in a child process and reports its peak
resident set (``ru_maxrss`` from ``os.wait4``), next to the model's size on disk and in float64. If
tensors are read one at a time, the peak stays flat as the model grows: it is the interpreter and
its libraries (torch, scipy) plus a few copies of the largest layer.

The default layer, 16384 x 256 (an embedding table's shape: vocabulary x width), is 32 MB in
float64, as much as 2048 x 2048, for a sixteenth of its Gram-matrix work: the run measures memory,
not speed. At 16 layers the model is 512 MB in float64, 16 times its largest layer.

    python benchmarks/own_model_memory.py                              # 1, 4 and 16 layers of 16384x256 fp32
    python benchmarks/own_model_memory.py --num-layers 1,8 --shape 4096x4096 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS_PER_SHARD = 4


def write_model(folder: Path, num_layers: int, shape: tuple[int, int], dtype: str, seed: int = 0) -> int:
    """A sharded Hugging Face folder of ``num_layers`` heavy-tailed layers; returns its bytes on disk."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    torch.manual_seed(seed)  # StudentT.sample draws from torch's global generator
    num_shards = -(-num_layers // LAYERS_PER_SHARD)
    weight_map = {}
    for shard in range(num_shards):
        name = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        tensors = {}
        for layer in range(shard * LAYERS_PER_SHARD, min(num_layers, (shard + 1) * LAYERS_PER_SHARD)):
            weight = torch.distributions.StudentT(3.0).sample(shape) / shape[1] ** 0.5
            tensors[f"model.layers.{layer}.mlp.weight"] = weight.to(getattr(torch, dtype))
            tensors[f"model.layers.{layer}.norm.weight"] = torch.ones(shape[1], dtype=getattr(torch, dtype))
            del weight
        save_file(tensors, folder / name)
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(p.stat().st_size for p in folder.iterdir())


def peak_rss_of(command: list[str]) -> tuple[int, float, float, float, str]:
    """(exit code, peak RSS in MB, wall s, CPU s, stderr) of a child process.

    stderr goes to a file, not a pipe: nobody reads a pipe while ``wait4`` waits, and a child that
    wrote more than the pipe holds would block for ever."""
    with tempfile.TemporaryFile(mode="w+") as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        return (process.returncode, usage.ru_maxrss / 1024, wall, usage.ru_utime + usage.ru_stime,
                errors.read())


def main(argv=None) -> list[dict]:
    """Prints the table; returns its rows (layers, disk_mb, float64_mb, peak_rss_mb, wall_s, cpu_s)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-layers", default="1,4,16", help="layer counts, comma-separated (default 1,4,16)")
    parser.add_argument("--shape", default="16384x256", help="ROWSxCOLS of every layer (default 16384x256)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--keep", type=Path, help="write the models here and keep them (default: a temp folder)")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.lower().split("x"))
    counts = [int(n) for n in args.num_layers.split(",")]
    script = Path(sys.executable).parent / "antigrok"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "antigrok.cli"]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"layers of {shape[0]}x{shape[1]} {args.dtype} (+ a 1-D norm each), {LAYERS_PER_SHARD} layers per shard; "
          "`antigrok analyze FOLDER -q --threads 1`\n")
    layer_f64_mb = shape[0] * shape[1] * 8 / 2**20
    header = (f"{'layers':>6} | {'on disk MB':>10} {'float64 MB':>10} {'largest layer f64 MB':>20} | "
              f"{'peak RSS MB':>11} {'wall s':>7} {'CPU s':>7}")
    print(header)
    print("-" * len(header))
    root = args.keep or Path(tempfile.mkdtemp(prefix="antigrok-memory-"))
    rows = []
    try:
        for count in counts:
            folder = root / f"model_{count}x{shape[0]}x{shape[1]}_{args.dtype}"
            if folder.exists():
                shutil.rmtree(folder)
            disk = write_model(folder, count, shape, args.dtype)
            code, peak, wall, cpu, errors = peak_rss_of([*command, "analyze", str(folder), "-q", "--threads", "1",
                                                         "-o", str(folder / "htsr.csv")])
            if code != 0:
                raise SystemExit(f"antigrok analyze {folder} exited with {code}:\n{errors}")
            analysed = sum(1 for _ in open(folder / "htsr.csv")) - 1
            if analysed != count:
                raise SystemExit(f"antigrok analyze {folder} analysed {analysed} layers, expected {count}")
            rows.append({"layers": count, "disk_mb": disk / 2**20, "float64_mb": count * layer_f64_mb,
                         "peak_rss_mb": peak, "wall_s": wall, "cpu_s": cpu})
            print(f"{count:>6} | {disk / 2**20:>10.0f} {count * layer_f64_mb:>10.0f} {layer_f64_mb:>20.0f} | "
                  f"{peak:>11.0f} {wall:>7.1f} {cpu:>7.1f}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
