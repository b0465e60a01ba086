"""Train the seeds of one (experiment, weight decay) together, as one batched computation.

The R runs' parameters are stacked along a leading run axis (weights ``[R, out, in]``, biases
``[R, out]``) and a step is a handful of batched matrix products (``torch.baddbmm``/``torch.bmm``)
with a hand-written backward pass. It performs, per run, the very operations autograd performs
for that run alone in ``antigrok.training.train.train_run(..., cpu_engine="plain")`` (same kernels, same
operand layouts), so on CPU the trajectories are bit-identical to separate plain runs. train_run's
default ``cpu_engine="fast"`` (antigrok.training.fast_mlp_step) equals the plain step to rounding only, so
batched and default single runs agree to rounding, not bit for bit. Each run keeps its own init
(``build_model(seed=run seed)``) and its own batch order (``BatchOrder`` of its seed). AdamW is
``torch.optim.AdamW`` applied to the stacks: it is elementwise, so each run's update depends on
its own gradients and moments only.

On CUDA the train subset lives on the GPU and ``unroll`` steps (gather the batches, forward,
backward, fused AdamW) are captured once as a CUDA graph; the host only writes the next batch
indices into a static buffer and replays the graph. Evaluation, checkpoints and resume states
happen between replays, at logging steps only; checkpoint files are written by a background
thread.

Files: each run's ``checkpoints/`` and ``train_log.csv`` exactly as train_run writes them (its
``save_checkpoint`` and ``evaluation_row``), staged and finished by the resume protocol of
antigrok.training.resume as a single run's are; the group's resume state in ``resume_dir`` (by default
``.resume-batched`` beside the run directories).

The engine covers the MLP with the MSE loss (the paper's MNIST experiment); other experiments
train one run at a time (``unsupported_reason`` says why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from antigrok.runs import checkpoint_path
from antigrok.training.models import DTYPES, build_model
from antigrok.training.resume import Resume
from antigrok.training.train import (
    BatchOrder,
    RunSpec,
    check_model_fits_data,
    learning_rate,
    make_optimizer,
    resolve_device,
    run_files,
    run_loop,
    save_checkpoint,
)
from antigrok.workflow_config import batched_unsupported_reason

log = logging.getLogger(__name__)

RESUME_FORMAT = "antigrok.training.batched-resume/1"
RESUME_DIR_NAME = ".resume-batched"


# Why the batched engine cannot train an experiment (None when it can); it lives with the config
# code because the Snakefile asks it at every DAG build (train.smk), without importing torch.
unsupported_reason = batched_unsupported_reason


def mlp_gradients(weights, biases, x, target, weight_grads, bias_grads) -> None:
    """Each run's gradient of its MSE loss, written into ``weight_grads`` and ``bias_grads``.

    ``weights[l]``: ``[R, out, in]``, ``biases[l]``: ``[R, out]``, ``x``: ``[R, batch, in]``,
    ``target``: one-hot ``[R, batch, classes]``. These are the operations autograd runs for one
    run's ``nn.Linear`` (addmm; its backward as mm with the same transposes), ``nn.ReLU``
    (threshold_backward on the output) and ``F.mse_loss`` (2 / numel * (logits - target)),
    batched over the leading run axis: a run's numbers do not depend on the other runs.
    """
    last = len(weights) - 1
    activations = [x]
    hidden = x
    for layer in range(last + 1):
        hidden = torch.baddbmm(biases[layer].unsqueeze(1), hidden, weights[layer].transpose(1, 2))
        if layer < last:
            hidden = torch.relu(hidden)
            activations.append(hidden)
    grad = (hidden - target).mul_(2.0 / (hidden.shape[1] * hidden.shape[2]))
    for layer in range(last, -1, -1):
        torch.bmm(grad.transpose(1, 2), activations[layer], out=weight_grads[layer])
        torch.sum(grad, dim=1, out=bias_grads[layer])
        if layer > 0:
            grad = torch.ops.aten.threshold_backward(torch.bmm(grad, weights[layer]), activations[layer], 0)


class _Stacks:
    """The stacked parameters as ``make_optimizer`` sees a model: something with ``parameters()``."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors

    def parameters(self):
        return iter(self.tensors)


def group_fingerprint(specs: list[RunSpec]) -> str:
    """Hash of every run of the group: a resume state of another group is discarded."""
    payload = json.dumps([RESUME_FORMAT, [spec.fingerprint() for spec in specs]])
    return hashlib.sha256(payload.encode()).hexdigest()


def check_group(specs: list[RunSpec]) -> None:
    """The runs must differ in their seed only; a ValueError names what differs."""
    if not specs:
        raise ValueError("a batched group needs at least one run")
    first = specs[0]
    for spec in specs[1:]:
        for field in ("experiment", "experiment_cfg", "weight_decay", "checkpoint_per_decade", "log_per_decade"):
            if getattr(spec, field) != getattr(first, field):
                raise ValueError(
                    f"runs {first.name} and {spec.name} differ in {field}; a batched group holds "
                    "the seeds of one (experiment, weight decay) only"
                )
    seeds = [spec.seed for spec in specs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the seeds of a batched group must be distinct, got {seeds}")
    reason = unsupported_reason(first.experiment_cfg)
    if reason:
        raise ValueError(f"experiment {first.experiment}: {reason}; set train.batch_runs: false")


class BatchedTrainer:
    """The state of R runs (stacked parameters, AdamW moments, batch orders) and their steps.

    ``train(step, count)`` advances every run from ``step`` by ``count`` steps. On CUDA the steps
    after the lr warm-up replay CUDA graphs of ``unroll`` steps (``chunked`` forces that code
    path on CPU too, run eagerly, for tests).
    """

    def __init__(self, specs: list[RunSpec], dataset: dict, device: str = "auto", unroll: int = 32,
                 cuda_graph: bool = True, chunked: bool | None = None):
        check_group(specs)
        self.specs = specs
        self.cfg = cfg = specs[0].experiment_cfg
        self.device = resolve_device(device)
        self.dtype = DTYPES[cfg.get("dtype", "float64")]
        self.loss_name = cfg.get("loss", "mse")
        self.unroll = unroll
        self.chunked = self.device.type == "cuda" if chunked is None else chunked
        self.use_graph = cuda_graph and self.device.type == "cuda"

        self.x_train = dataset["x_train"].to(self.device)
        self.y_train = dataset["y_train"].to(self.device)
        self.x_test = dataset["x_test"].to(self.device)
        self.y_test = dataset["y_test"].to(self.device)
        if self.x_train.is_floating_point():  # as train_run: inputs in the model's dtype
            self.x_train, self.x_test = self.x_train.to(self.dtype), self.x_test.to(self.dtype)
        # Each run's own init; these modules also serve evaluation and checkpoints.
        self.models = [build_model(cfg["model"], cfg.get("dtype", "float64"), seed=spec.seed).to(self.device)
                       for spec in specs]
        check_model_fits_data(self.models[0], dataset, specs[0])  # the runs differ in their seed only
        self.inputs = self.x_train.flatten(1)  # the MLP flattens its input
        num_classes = cfg["model"]["widths"][-1]
        self.targets = F.one_hot(self.y_train, num_classes).to(self.dtype)
        self.names = [name for name, _ in self.models[0].named_parameters()]
        self.stacks = {name: torch.stack([m.get_parameter(name).detach() for m in self.models]).contiguous()
                       for name in self.names}
        self.num_layers = len(cfg["model"]["widths"]) - 1
        self.weights = [self.stacks[f"fc{i + 1}.weight"] for i in range(self.num_layers)]
        self.biases = [self.stacks[f"fc{i + 1}.bias"] for i in range(self.num_layers)]
        for stack in self.stacks.values():
            stack.grad = torch.zeros_like(stack)  # static gradient buffers, written in place
        self.optimizer = self._make_optimizer(specs[0].weight_decay)
        self.batches = [BatchOrder(len(self.x_train), cfg["batch_size"], spec.seed) for spec in specs]
        self.batch_size = self.batches[0].batch_size
        self.warmup_steps = cfg["optimizer"].get("warmup_steps", 0)

        # Static buffers of the chunked path: the batch indices of `unroll` steps.
        shape = (unroll, len(specs), self.batch_size)
        self.index_slots = torch.zeros(shape, dtype=torch.int64, device=self.device)
        pinned = self.device.type == "cuda"
        self.host_slots = [torch.zeros(shape, dtype=torch.int64, pin_memory=pinned) for _ in range(2)]
        self.host_ready = [None, None]  # CUDA events: the copy out of host_slots[i] has finished
        self.next_host = 0
        self.graphs = None  # (unrolled, single) CUDA graphs once captured

    def _make_optimizer(self, weight_decay: float) -> torch.optim.Optimizer:
        tensors = list(self.stacks.values())
        optimizer = make_optimizer(_Stacks(tensors), self.cfg["optimizer"], weight_decay)
        if self.device.type != "cuda":
            return optimizer  # CPU: torch's default (single-tensor) AdamW, as train_run
        # CUDA: one fused kernel for all stacks, safe to capture; same hyperparameters.
        group = optimizer.param_groups[0]
        return torch.optim.AdamW(tensors, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                 weight_decay=group["weight_decay"], fused=True, capturable=True)

    @property
    def num_runs(self) -> int:
        return len(self.specs)

    # ---- one step ---------------------------------------------------------------------------
    def step(self, index: torch.Tensor) -> None:
        """One training step of every run; ``index[r]`` is run r's batch. Capturable: static shapes,
        in-place updates, no host synchronisation."""
        flat = index.reshape(-1)
        x = self.inputs.index_select(0, flat).view(self.num_runs, self.batch_size, -1)
        target = self.targets.index_select(0, flat).view(self.num_runs, self.batch_size, -1)
        mlp_gradients(self.weights, self.biases, x, target,
                      [w.grad for w in self.weights], [b.grad for b in self.biases])
        self.optimizer.step()

    def _set_lr(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg["optimizer"], step)

    def _next_index(self) -> torch.Tensor:
        return torch.stack([order.next() for order in self.batches]).to(self.device, non_blocking=True)

    # ---- many steps -------------------------------------------------------------------------
    def train(self, step: int, count: int) -> None:
        """Advance every run from ``step`` by ``count`` steps."""
        if not self.chunked:
            self._train_eager(step, count)
            return
        # The lr changes every step during warm-up: those steps run eagerly, the rest chunked.
        eager = max(0, min(count, self.warmup_steps - step))
        self._train_eager(step, eager)
        if count > eager:
            self._train_chunked(count - eager)

    def _train_eager(self, step: int, count: int) -> None:
        with warnings.catch_warnings():  # capturable AdamW warns when stepped outside a graph
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for offset in range(count):
                self._set_lr(step + offset)
                self.step(self._next_index())

    def _train_chunked(self, count: int) -> None:
        self._set_lr(self.warmup_steps)  # constant from here on: the graphs bake it in
        if self.use_graph and self.graphs is None:
            self._capture()
        while count > 0:
            size = self.unroll if count >= self.unroll else 1
            self._load_indices(size)
            self._replay(size)
            count -= size

    def _load_indices(self, size: int) -> None:
        """Write the next ``size`` steps' batch indices into the static ``index_slots``."""
        slot = self.next_host
        self.next_host = 1 - slot
        if self.host_ready[slot] is not None:
            self.host_ready[slot].synchronize()  # its previous copy must be done before reuse
        host = self.host_slots[slot]
        for run, order in enumerate(self.batches):
            host[:size, run] = order.take(size)
        self.index_slots[:size].copy_(host[:size], non_blocking=True)
        if self.device.type == "cuda":
            self.host_ready[slot] = torch.cuda.Event()
            self.host_ready[slot].record()

    def _replay(self, size: int) -> None:
        if self.graphs is not None:
            self.graphs[0 if size == self.unroll else 1].replay()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for offset in range(size):
                self.step(self.index_slots[offset])

    def _capture(self) -> None:
        """Capture ``unroll`` steps and one step as CUDA graphs over the static buffers.

        Warm-up steps (required before capture) run on a side stream and are undone, so capturing
        does not change the runs. If capture fails the engine stays eager, with a warning.
        """
        saved = self._snapshot()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                for _ in range(3):
                    self.step(self.index_slots[0])
            torch.cuda.current_stream().wait_stream(side)
            self._restore(saved)
            unrolled = torch.cuda.CUDAGraph()
            # thread_local: the checkpoint thread may be writing files meanwhile (CPU only)
            with torch.cuda.graph(unrolled, capture_error_mode="thread_local"):
                for offset in range(self.unroll):
                    self.step(self.index_slots[offset])
            single = torch.cuda.CUDAGraph()
            with torch.cuda.graph(single, pool=unrolled.pool(), capture_error_mode="thread_local"):
                self.step(self.index_slots[0])
            torch.cuda.synchronize()
            self.graphs = (unrolled, single)
            log.info("captured the training step as CUDA graphs (%d steps unrolled)", self.unroll)
        except Exception as error:  # a driver or op that cannot be captured: stay correct, just slower
            torch.cuda.synchronize()
            self._restore(saved)
            self.use_graph = False
            log.warning("CUDA graph capture failed (%s: %s); training eagerly", type(error).__name__, error)

    def _snapshot(self) -> dict:
        return {"params": [t.detach().clone() for t in self.stacks.values()],
                "state": {id(t): {k: v.clone() for k, v in self.optimizer.state[t].items()}
                          for t in self.stacks.values() if self.optimizer.state.get(t)}}

    def _restore(self, saved: dict) -> None:
        """Put parameters and AdamW state back in place (same tensors: captured graphs use them)."""
        with torch.no_grad():
            for tensor, value in zip(self.stacks.values(), saved["params"]):
                tensor.copy_(value)
                state = self.optimizer.state.get(tensor)
                if not state:
                    continue
                before = saved["state"].get(id(tensor))
                for key, current in state.items():
                    if before is None:
                        current.zero_()  # there was no state yet: AdamW starts from zeros, step 0
                    else:
                        current.copy_(before[key])

    # ---- runs as modules, state ---------------------------------------------------------------
    @torch.no_grad()
    def sync_models(self) -> None:
        """Copy each run's slice of the stacks into its module (for evaluation and checkpoints)."""
        for run, model in enumerate(self.models):
            for name in self.names:
                model.get_parameter(name).copy_(self.stacks[name][run])

    def state_dict(self) -> dict:
        return {"params": {name: t.detach() for name, t in self.stacks.items()},  # saved at once
                "optimizer": self.optimizer.state_dict(),
                "batches": [order.state_dict() for order in self.batches]}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, tensor in self.stacks.items():
                tensor.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        for order, order_state in zip(self.batches, state["batches"]):
            order.load_state_dict(order_state)


class _CheckpointWriter:
    """Writes checkpoints with train.save_checkpoint: in the foreground on CPU, on CUDA from CPU
    copies in a background thread so that the GPU keeps training."""

    def __init__(self, trainer: BatchedTrainer, staged_dirs: list[Path]):
        self.trainer = trainer
        self.staged_dirs = staged_dirs
        self.background = trainer.device.type == "cuda"
        self.pending: list[Future] = []
        if self.background:
            cfg = trainer.cfg
            self.cpu_models = [build_model(cfg["model"], cfg.get("dtype", "float64")) for _ in trainer.specs]
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoints")

    def write(self, step: int) -> None:
        trainer = self.trainer
        if not self.background:
            for model, spec, staged in zip(trainer.models, trainer.specs, self.staged_dirs):
                save_checkpoint(checkpoint_path(staged, step), model, spec, step)
            return
        self.wait()  # the CPU copies are about to be overwritten
        with torch.no_grad():
            for run, model in enumerate(self.cpu_models):
                for name in trainer.names:
                    model.get_parameter(name).copy_(trainer.stacks[name][run])
        for model, spec, staged in zip(self.cpu_models, trainer.specs, self.staged_dirs):
            self.pending.append(self.executor.submit(save_checkpoint, checkpoint_path(staged, step),
                                                     model, spec, step))

    def wait(self) -> None:
        """Block until every checkpoint submitted so far is on disk (re-raising a failed write)."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.wait()
        if self.background:
            self.executor.shutdown()


def default_resume_dir(run_dirs: list[Path]) -> Path:
    """``.resume-batched`` in the folder that holds the group's run directories."""
    return Path(os.path.commonpath([str(Path(d).resolve()) for d in run_dirs])) / RESUME_DIR_NAME


class _GroupEngine:
    """The group as ``antigrok.training.train.run_loop``'s engine: the trainer and its checkpoint writer."""

    def __init__(self, trainer: BatchedTrainer, staged_dirs: list[Path]):
        self.trainer = trainer
        self.specs, self.models, self.loss_name = trainer.specs, trainer.models, trainer.loss_name
        self.train_data, self.test_data = (trainer.x_train, trainer.y_train), (trainer.x_test, trainer.y_test)
        self.writer = _CheckpointWriter(trainer, staged_dirs)

    def restore(self, state: dict) -> tuple[int, list[list[dict]]]:
        self.trainer.load_state_dict(state["trainer"])
        return state["step"], state["rows"]

    def start(self) -> None:
        """The trainer is ready as built (its CUDA graphs are captured on the first chunked steps)."""

    def advance(self, step: int, count: int) -> None:
        self.trainer.train(step, count)

    def sync(self) -> None:
        self.trainer.sync_models()

    def state(self, step: int, rows) -> dict:
        return {"format": RESUME_FORMAT, "fingerprint": group_fingerprint(self.specs), "step": step,
                "trainer": self.trainer.state_dict(), "rows": rows}

    def write_checkpoints(self, step: int, paths: list[Path]) -> None:
        self.writer.write(step)

    def wait(self) -> None:
        self.writer.wait()

    def close(self) -> None:
        self.writer.close()


def train_runs(specs: list[RunSpec], dataset: dict, run_dirs: list[str | Path], *,
               resume_dir: str | Path | None = None, device: str = "auto", resume_every_s: float = 60.0,
               progress: bool = True, unroll: int = 32, cuda_graph: bool = True,
               chunked: bool | None = None) -> list[pd.DataFrame]:
    """Train the runs ``specs`` (the seeds of one experiment and weight decay) together.

    Writes each run's checkpoints and train_log.csv under its ``run_dirs`` entry exactly as
    ``train_run(..., cpu_engine="plain")`` would on CPU (the same loop, ``antigrok.training.train.run_loop``;
    the default fast engine agrees to rounding only), and returns their train
    logs. A group that was interrupted continues from its resume state (refreshed at most every
    ``resume_every_s`` seconds, between steps) and writes bit-identical files on CPU. Raises
    NonFiniteLossError naming the first diverged run and the step; then no run has a
    train_log.csv or checkpoints/.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) != len(specs):
        raise ValueError(f"{len(specs)} runs but {len(run_dirs)} run directories")
    first = specs[0]
    resume_dir = Path(resume_dir) if resume_dir is not None else default_resume_dir(run_dirs)
    files = [run_files(spec, run_dir) for spec, run_dir in zip(specs, run_dirs)]
    trainer = BatchedTrainer(specs, dataset, device=device, unroll=unroll, cuda_graph=cuda_graph, chunked=chunked)
    name = f"{first.experiment}/wd{first.weight_decay}/seeds{','.join(str(s.seed) for s in specs)}"
    resume = Resume(resume_dir, group_fingerprint(specs), files, name)
    return run_loop(_GroupEngine(trainer, [run.staged for run in files]), resume, name, resume_every_s, progress)
