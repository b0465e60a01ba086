"""The fast step with and without skipping silent hidden units, on real checkpoints of the paper's MLP.

Late in a run most ReLU units of the paper's MLP are silent for a whole batch (without weight decay,
at step 5e6, about 12% of fc1's units fire in a batch of 200), and FastMLPStep multiplies over the
firing units only where at most ``GATHER_FRACTION`` of a layer's fire. This times, per checkpoint,
the gradient computation of that step with the full products (``GATHER_FRACTION = 0``) and with the
skipping, interleaved, on the same batches of the paper's 1000-image MNIST subset, one torch thread,
the fastest of ``--repeats`` in CPU time of this thread; and prints the largest difference of the two
gradients relative to the largest gradient. The AdamW update (the same for both) is timed apart.

    python benchmarks/fast_step_silent_units.py CHECKPOINT... [--data-root ../shared/data]

CHECKPOINT: a checkpoint of the 784-200-200-10 MLP (.pt from the workflow, or .safetensors).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from antigrok.formats.loading import read_checkpoint
from antigrok.training import fast_mlp_step
from antigrok.training.data import prepare_mnist
from antigrok.training.models import MLP
from antigrok.training.segments import cpu_model

WIDTHS, BATCH, STEPS_PER_REPEAT = [784, 200, 200, 10], 200, 200


def load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return read_checkpoint(path)["model"]


def firing_fractions(model: MLP, x: torch.Tensor, batches: list[torch.Tensor]) -> list[float]:
    """Per hidden layer, the mean fraction of its units that fire for some example of a batch."""
    fractions = []
    with torch.no_grad():
        hidden = x
        for layer in range(1, model.num_layers):
            hidden = torch.relu(getattr(model, f"fc{layer}")(hidden))
            fractions.append(sum((hidden[b] > 0).any(0).double().mean().item() for b in batches) / len(batches))
    return fractions


def time_gradients(step: fast_mlp_step.FastMLPStep, batches: list[torch.Tensor], gather_fraction: float) -> float:
    fast_mlp_step.GATHER_FRACTION = gather_fraction
    start = time.thread_time()
    for index in range(STEPS_PER_REPEAT):
        step.compute_gradients(batches[index % len(batches)])
    return (time.thread_time() - start) / STEPS_PER_REPEAT * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = prepare_mnist(args.data_root, 1000, 0, download=False)
    x, y = data["x_train"].double(), data["y_train"]
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randperm(len(x), generator=generator)[:BATCH] for _ in range(50)]
    default = fast_mlp_step.GATHER_FRACTION
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; GATHER_FRACTION {default}")
    print("| checkpoint | units firing in a batch (fc1, fc2) | gradients, full products (ms CPU) | "
          "gradients, silent units skipped (ms CPU) | speed-up | AdamW update (ms CPU) | step speed-up | "
          "max gradient difference (relative) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.checkpoints:
        model = MLP(WIDTHS).double()
        model.load_state_dict(load_state_dict(path))
        step = fast_mlp_step.FastMLPStep(model, torch.optim.AdamW(model.parameters(), lr=5e-4), x, y)
        timings = {0.0: [], default: []}
        for _ in range(args.repeats):
            for fraction in timings:
                timings[fraction].append(time_gradients(step, batches, fraction))
        full, skipped = min(timings[0.0]), min(timings[default])
        start = time.thread_time()
        for _ in range(STEPS_PER_REPEAT):
            step.apply_update(0.0)  # lr 0: the update's cost without moving the weights
        update = (time.thread_time() - start) / STEPS_PER_REPEAT * 1e3
        gradients = {}
        for fraction in timings:
            fast_mlp_step.GATHER_FRACTION = fraction
            step.compute_gradients(batches[0])
            gradients[fraction] = step.flat_grads.clone()
        fast_mlp_step.GATHER_FRACTION = default
        difference = ((gradients[0.0] - gradients[default]).abs().max() / gradients[0.0].abs().max()).item()
        firing = ", ".join(f"{fraction:.2f}" for fraction in firing_fractions(model, x, batches))
        print(f"| {path} | {firing} | {full:.2f} | {skipped:.2f} | {full / skipped:.2f}x | {update:.2f} | "
              f"{(full + update) / (skipped + update):.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
