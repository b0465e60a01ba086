"""One readable training loop: AdamW on a model, log-spaced checkpoints, resumable.

Everything a run does is decided by its config and its seed: the model's init comes from
``build_model(seed=run seed)``, the batch order from a generator of its own. A killed job that is
started again continues from its resume state and writes bit-identical files (on CPU).

A step (forward, backward, AdamW update) is computed by a *step object* (``make_step``):
``PlainStep`` is autograd and ``torch.optim.AdamW``, the reference; on the CPU the MLP with the
MSE loss uses ``antigrok.training.fast_mlp_step.FastMLPStep`` (``train.cpu_engine: fast``, the default),
the same step without the always-zero input columns and per-step allocations, equal to the
reference to rounding. Either keeps the model and the optimizer as the state that is
evaluated, checkpointed and saved for resume (``sync()``), so the files are the same format and
a resume state of one continues with the other.

Files of a run (``run_dir``)::

    checkpoints/step{step:09d}.pt   written only when the run completes
    train_log.csv                   step, train_loss, train_acc, test_loss, test_acc
    .resume/                        state.pt and the checkpoints so far, while the run is under way
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from antigrok.files import write_atomically
from antigrok.formats.loading import read_checkpoint
from antigrok.schema import section_defaults
from antigrok.training.fast_mlp_step import FastMLPStep, unsupported_reason
from antigrok.training.models import DTYPES, build_model
from antigrok.training.resume import Resume, RunFiles
from antigrok.training.schedule import checkpoint_steps, log_steps
from antigrok.training.segments import advance_segment, progress_line, segments_table, start_segment

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "antigrok.checkpoint/1"
TRAIN_LOG_COLUMNS = ["step", "train_loss", "train_acc", "test_loss", "test_acc"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run cannot continue."""


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream (``"batch_order"``, ...) of a run."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(device: str) -> torch.device:
    """``train.device``: auto is CUDA when available, else CPU; cuda without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; use auto or cpu")
    return torch.device(device)


@dataclass
class RunSpec:
    """What identifies one run and everything its training needs."""

    experiment: str
    experiment_cfg: dict
    weight_decay: float
    seed: int
    checkpoint_per_decade: int = section_defaults("checkpoints")["per_decade"]
    log_per_decade: int = section_defaults("log")["per_decade"]

    @property
    def name(self) -> str:
        return f"{self.experiment}/wd{self.weight_decay}/seed{self.seed}"

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trajectory: a resume state from another is discarded."""
        payload = json.dumps(
            [self.experiment, self.experiment_cfg, self.weight_decay, self.seed,
             self.checkpoint_per_decade, self.log_per_decade],
            sort_keys=True, default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def loss_fn(name: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mse`` against one-hot targets (mean over all entries, as nn.MSELoss), or cross-entropy."""
    if name == "mse":
        one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
        return F.mse_loss(logits, one_hot)
    if name == "cross_entropy":
        return F.cross_entropy(logits, targets)
    raise ValueError(f"unknown loss {name!r}; known: mse, cross_entropy")


@torch.no_grad()
def evaluate(model, x, y, loss_name: str, chunk: int = 10_000) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on the whole of ``(x, y)``."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), chunk):
        logits = model(x[start:start + chunk])
        total_loss += loss_fn(loss_name, logits, y[start:start + chunk]).item() * len(logits)
        correct += (logits.argmax(-1) == y[start:start + chunk]).sum().item()
    return total_loss / len(x), correct / len(x)


def evaluation_row(model, spec: RunSpec, step: int, train: tuple, test: tuple, loss_name: str) -> dict:
    """The train_log.csv row of ``model`` at ``step``; NonFiniteLossError if the train loss diverged.

    ``train`` and ``test`` are ``(x, y)`` pairs. Shared with the batched engine (antigrok.training.batched).
    """
    model.eval()
    train_loss, train_acc = evaluate(model, *train, loss_name)
    test_loss, test_acc = evaluate(model, *test, loss_name)
    model.train()
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(
            f"run {spec.name}: the train loss is {train_loss} at step {step}; "
            "lower optimizer.lr or check the data"
        )
    return {"step": step, "train_loss": train_loss, "train_acc": train_acc,
            "test_loss": test_loss, "test_acc": test_acc}


def check_model_fits_data(model, dataset: dict, spec: RunSpec) -> None:
    """Fail early, naming the config key, when the model cannot read the inputs or emit every class."""
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    if embeddings and not dataset["x_train"].is_floating_point():
        largest_token = int(max(dataset["x_train"].max(), dataset["x_test"].max()))
        if largest_token >= embeddings[0].num_embeddings:
            raise ValueError(
                f"run {spec.name}: the data has token {largest_token} but the model's vocabulary has "
                f"{embeddings[0].num_embeddings} tokens; set experiments.{spec.experiment}.model.d_vocab "
                f"to {largest_token + 1}"
            )
    parameter = next(model.parameters())
    example = dataset["x_train"][:1].to(parameter.device)
    if example.is_floating_point():
        example = example.to(parameter.dtype)
    with torch.no_grad():
        num_outputs = model(example).shape[-1]
    if num_outputs < dataset["num_classes"]:
        raise ValueError(
            f"run {spec.name}: the model has {num_outputs} outputs for {dataset['num_classes']} classes; "
            f"widen the last layer in experiments.{spec.experiment}.model"
        )


def make_optimizer(model, optimizer_cfg: dict, weight_decay: float) -> torch.optim.Optimizer:
    if optimizer_cfg["name"] != "adamw":
        raise ValueError(f"unknown optimizer {optimizer_cfg['name']!r}; known: adamw")
    return torch.optim.AdamW(
        model.parameters(),
        lr=optimizer_cfg["lr"],
        betas=tuple(optimizer_cfg.get("betas", (0.9, 0.999))),
        eps=optimizer_cfg.get("eps", 1e-8),
        weight_decay=weight_decay,
    )


def learning_rate(optimizer_cfg: dict, step: int) -> float:
    """The lr of the update from ``step`` to ``step + 1``: linear warm-up ``min(step / w, 1)``."""
    warmup = optimizer_cfg.get("warmup_steps", 0)
    factor = min(step / warmup, 1.0) if warmup > 0 else 1.0
    return optimizer_cfg["lr"] * factor


CPU_ENGINES = ("fast", "plain")


class PlainStep:
    """The reference step: autograd through the model, then ``optimizer.step()`` (torch's AdamW)."""

    name = "plain"

    def __init__(self, model, optimizer, x_train: torch.Tensor, y_train: torch.Tensor, loss_name: str):
        self.model, self.optimizer = model, optimizer
        self.x_train, self.y_train, self.loss_name = x_train, y_train, loss_name

    def step(self, index: torch.Tensor, lr: float) -> None:
        """One update on the examples ``index`` at learning rate ``lr``."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(self.loss_name, self.model(self.x_train[index]), self.y_train[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        """The model and the optimizer are the step's own state: nothing to write back."""


def make_step(cpu_engine: str, model, optimizer, x_train: torch.Tensor, y_train: torch.Tensor, loss_name: str):
    """The step object of a run (``train.cpu_engine``), built from the model and optimizer as they are.

    ``fast``: FastMLPStep where it applies (an MLP, the MSE loss, AdamW, on the CPU), else the
    plain step; ``plain``: always the plain step (the reference).
    """
    if cpu_engine not in CPU_ENGINES:
        raise ValueError(f"train.cpu_engine is {cpu_engine!r}; choose one of {', '.join(CPU_ENGINES)}")
    if cpu_engine == "fast":
        reason = unsupported_reason(model, loss_name, optimizer, x_train)
        if reason is None:
            return FastMLPStep(model, optimizer, x_train, y_train)
        log.info("plain training step (train.cpu_engine fast does not apply: %s)", reason)
    return PlainStep(model, optimizer, x_train, y_train, loss_name)


class BatchOrder:
    """Shuffled mini-batches, a fresh permutation each epoch, from the run's own generator.

    Full batch (``batch_size >= n``) uses every example every step, in order. An incomplete last
    batch of an epoch is dropped, like ``DataLoader(shuffle=True, drop_last=True)``.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples = num_examples
        self.batch_size = min(batch_size, num_examples)
        self.batches_per_epoch = num_examples // self.batch_size
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "batch_order"))
        self.permutation = None
        self.position = self.batches_per_epoch  # forces a new permutation on the first call

    def next(self) -> torch.Tensor:
        if self.batch_size == self.num_examples:
            return torch.arange(self.num_examples)
        if self.position == self.batches_per_epoch:
            self.permutation = torch.randperm(self.num_examples, generator=self.generator)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.permutation[start:start + self.batch_size]

    def take(self, count: int) -> torch.Tensor:
        """The next ``count`` batches as a ``[count, batch]`` tensor, equal to ``count`` calls of
        ``next()`` and leaving the order where they leave it; slices whole epochs at a time."""
        if self.batch_size == self.num_examples:
            return torch.arange(self.num_examples).expand(count, -1)
        pieces = []
        while count > 0:
            if self.position == self.batches_per_epoch:
                self.permutation = torch.randperm(self.num_examples, generator=self.generator)
                self.position = 0
            take = min(count, self.batches_per_epoch - self.position)
            start = self.position * self.batch_size
            pieces.append(self.permutation[start:start + take * self.batch_size].view(take, self.batch_size))
            self.position += take
            count -= take
        return torch.cat(pieces) if pieces else torch.empty(0, self.batch_size, dtype=torch.int64)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "permutation": self.permutation,
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"]
        self.position = state["position"]


def save_checkpoint(path: Path, model, spec: RunSpec, step: int) -> None:
    state = {name: tensor.detach().to("cpu", torch.float64).clone()
             for name, tensor in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": state,
        "experiment": spec.experiment,
        "weight_decay": spec.weight_decay,
        "seed": spec.seed,
        "model_config": spec.experiment_cfg["model"],
        "dtype": spec.experiment_cfg.get("dtype", "float64"),
    }
    write_atomically(path, lambda partial: torch.save(payload, partial))


MAX_STEPS_BETWEEN_CLOCK_CHECKS = 256  # steps between two looks at the clock (resume state) when no event is due
PROGRESS_EVERY_S = 600.0  # a progress line (steps/s, time left) in the job's log this often


def run_files(spec: RunSpec, run_dir: str | Path) -> RunFiles:
    """The files of ``spec``'s run under ``run_dir`` (see antigrok.training.resume)."""
    steps = checkpoint_steps(spec.experiment_cfg["steps"], spec.checkpoint_per_decade)
    return RunFiles(run_dir, spec.name, spec.fingerprint(), steps)


def event_steps(spec: RunSpec) -> tuple[set[int], set[int]]:
    """The steps at which the loop logs an evaluation row and those at which it writes a checkpoint."""
    last_step = spec.experiment_cfg["steps"]
    logged = set(log_steps(last_step, spec.log_per_decade, spec.checkpoint_per_decade))
    return logged, set(checkpoint_steps(last_step, spec.checkpoint_per_decade))


def next_stop(events: Sequence[int], step: int) -> int:
    """Where the loop advances to from ``step``: the next event, or MAX_STEPS_BETWEEN_CLOCK_CHECKS on.

    The chunks are part of the arithmetic (the fast step fuses a chunk's steps), so whatever replays a
    run takes the same ones (antigrok.study.checkpoint_replay)."""
    return min(events[bisect.bisect_right(events, step)], step + MAX_STEPS_BETWEEN_CLOCK_CHECKS)


def run_loop(engine, resume: Resume, name: str, resume_every_s: float, progress: bool) -> list[pd.DataFrame]:
    """The training loop of both engines: events (log rows, checkpoints), resume states, finishing.

    ``engine`` computes the steps of its runs (``SingleRun`` here, ``antigrok.training.batched``'s group):
    ``specs``, ``models`` (evaluated and checkpointed), ``train_data``, ``test_data``,
    ``loss_name``; ``restore(state) -> (step, rows)`` and ``state(step, rows)`` (the resume
    state), ``start()``, ``advance(step, count)``, ``sync()`` (the models hold the current
    parameters), ``write_checkpoints(step, paths)``, ``wait()`` (checkpoints on disk), ``close()``.
    Returns the train logs, one per run. A resume state is saved before the events of its step,
    so a resumed run does them exactly once. The state carries the run's training segments
    (antigrok.training.segments: machine, CPU, commit, step range and wall time of each job that trained
    it), logged when the run finishes; every PROGRESS_EVERY_S the log
    gets a progress line with the steps per second and the time left.
    """
    last_step = engine.specs[0].experiment_cfg["steps"]
    logged, checkpoints = event_steps(engine.specs[0])
    events = sorted(logged | checkpoints)
    finished = resume.finished_logs()
    if finished is not None:
        engine.close()
        return finished
    step, rows = 0, [[] for _ in engine.specs]
    state = resume.load()
    if state is not None:
        step, rows = engine.restore(state)
        log.info("resuming %s from step %d", name, step)
    segments = start_segment(state.get("segments", []) if state is not None else [], step)
    engine.start()

    bar = tqdm(total=last_step, initial=step, desc=name, unit="step", mininterval=5.0, smoothing=0.05,
               disable=not progress)
    job_started = last_resume_save = time.monotonic()
    speed = SpeedMeter(step, job_started)
    try:
        while True:
            if step in logged or step in checkpoints:
                engine.sync()  # the models are what is evaluated and saved
            if step in logged:
                for run_rows, model, spec in zip(rows, engine.models, engine.specs):
                    run_rows.append(evaluation_row(model, spec, step, engine.train_data, engine.test_data,
                                                   engine.loss_name))
                bar.set_postfix(train_acc=f"{rows[0][-1]['train_acc']:.3f}",
                                test_acc=f"{rows[0][-1]['test_acc']:.3f}", refresh=False)
            if step in checkpoints:
                engine.write_checkpoints(step, [run.staged_checkpoint(step) for run in resume.runs])
            if step == last_step:
                break
            target = next_stop(events, step)
            engine.advance(step, target - step)
            bar.update(target - step)
            step = target
            if time.monotonic() - last_resume_save >= resume_every_s:
                engine.wait()  # the state claims the checkpoints before it: they must be on disk
                advance_segment(segments, step, time.monotonic() - job_started)
                resume.save({**engine.state(step, rows), "segments": segments})
                last_resume_save = time.monotonic()
                if speed.due(last_resume_save):
                    log.info(progress_line(name, step, last_step, speed.measure(step, last_resume_save)))
    except NonFiniteLossError:
        engine.close()
        resume.discard()
        raise
    finally:
        engine.close()
        bar.close()
    advance_segment(segments, step, time.monotonic() - job_started)
    train_logs = resume.finish([pd.DataFrame(run_rows, columns=TRAIN_LOG_COLUMNS) for run_rows in rows])
    # Not a results file (it would differ between two equal runs): the job's log keeps it.
    log.info("training segments of %s:\n%s", name, segments_table(segments).to_string(index=False))
    return train_logs


class SpeedMeter:
    """Steps per second over the last ``every_s`` seconds of this job, for the progress line."""

    def __init__(self, step: int, now: float, every_s: float = PROGRESS_EVERY_S):
        self.step, self.time, self.every_s = step, now, every_s

    def due(self, now: float) -> bool:
        return now - self.time >= self.every_s

    def measure(self, step: int, now: float) -> float:
        rate = (step - self.step) / (now - self.time)
        self.step, self.time = step, now
        return rate


class SingleRun:
    """One run as ``run_loop``'s engine: its model, AdamW, batch order and step object."""

    def __init__(self, spec: RunSpec, dataset: dict, device: str = "auto", cpu_engine: str = "fast"):
        cfg = spec.experiment_cfg
        self.spec, self.specs, self.cfg = spec, [spec], cfg
        self.device = resolve_device(device)
        dtype = DTYPES[cfg.get("dtype", "float64")]
        self.loss_name = cfg.get("loss", "mse")
        self.cpu_engine = cpu_engine
        x_train, y_train = dataset["x_train"].to(self.device), dataset["y_train"].to(self.device)
        x_test, y_test = dataset["x_test"].to(self.device), dataset["y_test"].to(self.device)
        if x_train.is_floating_point():
            x_train, x_test = x_train.to(dtype), x_test.to(dtype)
        self.train_data, self.test_data = (x_train, y_train), (x_test, y_test)
        self.model = build_model(cfg["model"], cfg.get("dtype", "float64"), seed=spec.seed).to(self.device)
        check_model_fits_data(self.model, dataset, spec)
        self.models = [self.model]
        self.optimizer = make_optimizer(self.model, cfg["optimizer"], spec.weight_decay)
        self.batches = BatchOrder(len(x_train), cfg["batch_size"], spec.seed)
        self.stepper = None

    def restore(self, state: dict) -> tuple[int, list[list[dict]]]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"].cpu())
        return state["step"], [state["rows"]]

    def start(self) -> None:
        """The step object, built from the model and optimizer as they are (resumed or fresh)."""
        self.stepper = make_step(self.cpu_engine, self.model, self.optimizer, *self.train_data, self.loss_name)
        log.info("training %s with the %s step", self.spec.name, self.stepper.name)

    def advance(self, step: int, count: int) -> None:
        for offset in range(count):
            index = self.batches.next().to(self.device)
            self.stepper.step(index, learning_rate(self.cfg["optimizer"], step + offset))

    def sync(self) -> None:
        self.stepper.sync()

    def state(self, step: int, rows: list[list[dict]]) -> dict:
        self.sync()
        return {
            "fingerprint": self.spec.fingerprint(),
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "rows": rows[0],
        }

    def write_checkpoints(self, step: int, paths: list[Path]) -> None:
        save_checkpoint(paths[0], self.model, self.spec, step)

    def wait(self) -> None:
        """Checkpoints are written in the foreground: nothing to wait for."""

    def close(self) -> None:
        """Nothing to release."""


def train_run(spec: RunSpec, dataset: dict, run_dir: str | Path, device: str = "auto",
              resume_every_s: float = 60.0, progress: bool = True, cpu_engine: str = "fast") -> pd.DataFrame:
    """Train one run to ``steps``, writing its checkpoints and train_log.csv under ``run_dir``.

    ``cpu_engine`` (``train.cpu_engine``): ``fast`` or ``plain``, the step object (``make_step``).

    Returns the train log. Raises NonFiniteLossError naming the run and step when the loss
    diverges; then no train_log.csv or checkpoints/ is written.
    """
    engine = SingleRun(spec, dataset, device=device, cpu_engine=cpu_engine)
    files = run_files(spec, run_dir)
    resume = Resume(files.resume_dir, spec.fingerprint(), [files], spec.name)
    return run_loop(engine, resume, spec.name, resume_every_s, progress)[0]


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict, or a ValueError that says why the file is not one.

    Read by antigrok.formats.loading (torch.load weights_only=True): a file that would need to unpickle
    anything but tensors, numbers, strings and containers is refused, never executed.
    """
    return read_checkpoint(path)
