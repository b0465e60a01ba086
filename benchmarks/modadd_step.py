"""Where a full-batch step of the modular-addition transformer spends its CPU time, and the step
``train_run`` takes against a plain reference loop, side by side in one run.

The experiment (``--configfile``, ``--experiment``; default configs/modadd_cpu.yaml's modadd_cpu)
gives the sizes, dtype and optimizer. Loops, each timed ``--steps`` full-batch steps per repeat,
repeats interleaved so that a busy machine slows them alike, the fastest repeat reported, in
process CPU time (on a shared machine the wall clock also counts other processes' time):

    reference        the plain loop as the model was first written: attention of the last position
                     by batched matmuls (``scores = q @ k^T``, masked softmax, ``pattern @ v``),
                     ``torch.optim.AdamW`` as ``make_optimizer`` builds it (on the CPU torch picks
                     its per-tensor for-loop), ``F.cross_entropy``, ``backward``, ``step``
    workflow         ``antigrok.training.train.make_step`` exactly as ``train_run`` builds it, with the model
                     of antigrok.training.models (the last position's attention as elementwise products)
    workflow+foreach the same with ``AdamW(foreach=True)``   } what a one-word change in
    workflow+fused   the same with ``AdamW(fused=True)``     } train.make_optimizer would give

``--breakdown`` times each part of the workflow step alone (forward + backward; process CPU time,
fastest of the repeats): embeddings, attention, MLP, unembedding + loss, AdamW (each variant),
zero_grad. ``--profile`` prints torch.profiler's op table (self CPU time, wall clock of this
thread) of one repeat of the reference and the workflow step.

    python benchmarks/modadd_step.py                       # loops side by side, breakdown
    python benchmarks/modadd_step.py --steps 20 --repeats 3 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from antigrok.training.data import prepare_dataset
from antigrok.training.models import build_model
from antigrok.training.train import learning_rate, make_optimizer, make_step
from antigrok.workflow_config import load_workflow_config

REPO = Path(__file__).resolve().parents[1]


def load_experiment(configfile: Path, name: str) -> dict:
    experiments = load_workflow_config([configfile])["experiments"]
    if name not in experiments:
        raise SystemExit(f"{configfile} has no experiment {name!r}; it has {', '.join(experiments)}")
    return experiments[name]


def reference_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """The last position's attention by batched matmuls, as antigrok.training.models first computed it."""
    batch, length, _ = x.shape

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, t.shape[1], attn.num_heads, attn.d_head).transpose(1, 2)

    queries = split_heads(attn.q(x[:, length - 1:]))
    keys, values = split_heads(attn.k(x)), split_heads(attn.v(x))
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(attn.d_head)
    future = torch.arange(length)[None, :] > torch.arange(length - 1, length)[:, None]
    pattern = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return attn.o((pattern @ values).transpose(1, 2).flatten(2))


def reference_forward(model, tokens: torch.Tensor) -> torch.Tensor:
    """The 1-layer model's forward with the reference attention (everything else as the model)."""
    (block,) = model.blocks
    x = model.embed(tokens) + model.pos_embed(torch.arange(tokens.shape[1]))
    x = x[:, -1:] + reference_attention(block.attn, x)
    x = x + block.mlp(x)
    return model.unembed(x[:, -1])


class ReferenceLoop:
    name = "reference"

    def __init__(self, model, optimizer, x_train, y_train):
        self.model, self.optimizer, self.x_train, self.y_train = model, optimizer, x_train, y_train

    def step(self, index, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(reference_forward(self.model, self.x_train[index]), self.y_train[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def adamw_like(model, optimizer_cfg: dict, weight_decay: float, **options) -> torch.optim.AdamW:
    """``make_optimizer``'s AdamW with ``options`` (foreach=True, fused=True) changed."""
    defaults = dict(make_optimizer(model, optimizer_cfg, weight_decay).defaults)
    defaults.pop("decoupled_weight_decay", None)  # AdamW's own, not an argument of it
    return torch.optim.AdamW(model.parameters(), **{**defaults, **options})


def make_loops(experiment: dict, dataset: dict, weight_decay: float) -> dict:
    """Each loop with its own model (same seed) and optimizer."""
    dtype = experiment.get("dtype", "float64")
    x_train, y_train = dataset["x_train"], dataset["y_train"]
    loops = {}
    for name, options in (("reference", None), ("workflow", {}), ("workflow+foreach", {"foreach": True}),
                          ("workflow+fused", {"fused": True})):
        model = build_model(experiment["model"], dtype, seed=0)
        optimizer = make_optimizer(model, experiment["optimizer"], weight_decay)
        if options:
            optimizer = adamw_like(model, experiment["optimizer"], weight_decay, **options)
        if name == "reference":
            loops[name] = ReferenceLoop(model, optimizer, x_train, y_train)
        else:
            loops[name] = make_step("fast", model, optimizer, x_train, y_train, experiment["loss"])
    return loops


def cpu_seconds(function, repeats: int) -> float:
    """Fastest process CPU time of ``repeats`` calls of ``function``."""
    best = math.inf
    for _ in range(repeats):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best


def time_loops(loops: dict, experiment: dict, steps: int, repeats: int, warmup: int) -> dict:
    index = torch.arange(len(next(iter(loops.values())).x_train))
    lr = learning_rate(experiment["optimizer"], 10**9)
    for loop in loops.values():
        for _ in range(warmup):
            loop.step(index, lr)
    best = {name: math.inf for name in loops}
    for _ in range(repeats):  # interleaved: a busy machine slows every loop alike
        for name, loop in loops.items():
            best[name] = min(best[name], cpu_seconds(lambda: [loop.step(index, lr) for _ in range(steps)], 1) / steps)
    return best


def breakdown(experiment: dict, dataset: dict, weight_decay: float, repeats: int, calls: int) -> dict:
    """CPU seconds per step of each part of the workflow step, each part timed alone."""
    dtype = getattr(torch, experiment.get("dtype", "float64"))
    model = build_model(experiment["model"], experiment.get("dtype", "float64"), seed=0)
    (block,) = model.blocks
    tokens, labels = dataset["x_train"], dataset["y_train"]
    n, length, d_model = len(tokens), tokens.shape[1], model.embed.embedding_dim
    generator = torch.Generator().manual_seed(0)
    residual = torch.randn(n, length, d_model, generator=generator, dtype=dtype, requires_grad=True)
    last = torch.randn(n, 1, d_model, generator=generator, dtype=dtype, requires_grad=True)
    grad_last = torch.randn(n, 1, d_model, generator=generator, dtype=dtype)
    grad_residual = torch.randn(n, length, d_model, generator=generator, dtype=dtype)

    def embeddings():
        (model.embed(tokens) + model.pos_embed(torch.arange(length))).backward(grad_residual)

    def attention():
        block.attn(residual, 1).backward(grad_last)

    def reference_attn():
        reference_attention(block.attn, residual).backward(grad_last)

    def mlp():
        block.mlp(last).backward(grad_last)

    def unembed_and_loss():
        F.cross_entropy(model.unembed(last[:, -1]), labels).backward()

    parts = {"embeddings (fwd+bwd)": embeddings, "attention (fwd+bwd)": attention,
             "attention, reference bmm (fwd+bwd)": reference_attn, "MLP (fwd+bwd)": mlp,
             "unembed + cross-entropy (fwd+bwd)": unembed_and_loss}
    for name, options in (("AdamW step, for-loop (workflow)", {}), ("AdamW step, foreach", {"foreach": True}),
                          ("AdamW step, fused", {"fused": True})):
        parts[name] = adamw_like(model, experiment["optimizer"], weight_decay, **options).step
    parts["zero_grad"] = lambda: model.zero_grad(set_to_none=True)

    for parameter in model.parameters():  # every part but zero_grad sees gradients in place
        parameter.grad = torch.zeros_like(parameter)
    results = {}
    for name, part in parts.items():
        for _ in range(3):
            part()
        results[name] = cpu_seconds(lambda: [part() for _ in range(calls)], repeats) / calls
        if name == "zero_grad":
            break
        for parameter in model.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
    return results


def profile_table(loop, steps: int) -> str:
    index = torch.arange(len(loop.x_train))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step(index, 1e-3)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "configs" / "modadd_cpu.yaml")
    parser.add_argument("--experiment", default="modadd_cpu")
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20, help="steps per repeat of each loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    experiment = load_experiment(args.configfile, args.experiment)
    dataset = prepare_dataset(experiment["dataset"], {})
    model_cfg = experiment["model"]
    print(f"# {args.experiment}: p {experiment['dataset']['modulus']}, {len(dataset['x_train'])} train pairs "
          f"(full batch), d_model {model_cfg['d_model']}, {model_cfg['num_heads']} heads, d_mlp {model_cfg['d_mlp']}, "
          f"{experiment.get('dtype', 'float64')}, weight decay {args.weight_decay}; torch {torch.__version__}, "
          f"{args.threads} thread(s), {platform.machine()} {os.cpu_count()} cores; CPU ms per step, "
          f"fastest of {args.repeats} x {args.steps} steps")
    loops = make_loops(experiment, dataset, args.weight_decay)
    per_step = time_loops(loops, experiment, args.steps, args.repeats, args.warmup)
    reference = per_step["reference"]
    print("\n| loop | CPU ms / step | vs reference |\n|---|---|---|")
    for name, seconds in per_step.items():
        print(f"| {name} | {1e3 * seconds:.2f} | {reference / seconds:.2f}x |")
    if not args.no_breakdown:
        parts = breakdown(experiment, dataset, args.weight_decay, args.repeats, args.steps)
        total = sum(seconds for name, seconds in parts.items()
                    if "reference" not in name and ("AdamW" not in name or "workflow" in name))
        print(f"\n| part of the workflow step (each timed alone) | CPU ms | share of their sum ({1e3 * total:.2f} ms) |"
              "\n|---|---|---|")
        for name, seconds in parts.items():
            print(f"| {name} | {1e3 * seconds:.2f} | {seconds / total:.0%} |")
    if args.profile:
        for name in ("reference", "workflow"):
            print(f"\n## torch.profiler, {name}, {args.steps} steps\n")
            print(profile_table(loops[name], args.steps))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
