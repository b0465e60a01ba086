"""The CPU training step of the MLP with the MSE loss: the same AdamW step at about 1.6x the speed.

``train_run`` computes each step of a run with a *step object*; ``antigrok.training.train.PlainStep``
(autograd, then ``torch.optim.AdamW``) is the reference. ``FastMLPStep`` computes that step the
way a CPU likes it:

* **Always-zero input columns are skipped.** A pixel that is zero in every training example
  adds nothing to fc1's forward product and gets an exactly zero gradient, so AdamW never moves
  its weight column by a gradient step: its moments stay exactly zero and the update
  ``-lr * m_hat / (sqrt(v_hat) + eps)`` is exactly zero, which leaves the decoupled weight decay
  ``w *= 1 - lr * wd``; those columns get exactly that, as torch's AdamW applies it. fc1's two
  big products then run over the active columns only (589 of 784 in the paper's MNIST subset).
  The mask comes from the run's training set (plus any column with a non-zero moment in a
  resumed optimizer state), so it holds for every step of the run.
* **One flat buffer per quantity, one fused AdamW.** Parameters, gradients and both moments
  live in one contiguous buffer each (every layer a view), updated by torch's fused CPU AdamW
  kernel (``torch.optim.AdamW(fused=True)``) in one pass, instead of some 40 elementwise kernels
  that allocate temporaries.
* **Silent hidden units are skipped.** A ReLU unit that is zero for every example of the batch
  feeds nothing forward and gets an exactly zero gradient, and so does every weight into and out of
  it. Late in a run most units are silent: in the paper's run without weight decay, at step 5e6,
  about 12% of fc1's and 17% of fc2's units fire in a batch of 200. Where at most
  ``GATHER_FRACTION`` of a hidden layer's units fire, the products run over the firing units only
  (the next layer's forward, both layers' weight gradients, the gradient passed down) and the rest
  of those gradients is set to exactly the zero the full product gives.
* **No per-step allocation.** The forward and the hand-written backward (the products autograd
  runs for ``nn.Linear``, ``nn.ReLU`` and ``F.mse_loss``, with its operand layouts) write into
  buffers made once.

What is bit-identical and what is not: the gradients are autograd's bit for bit when no column
is skipped and more than ``GATHER_FRACTION`` of every hidden layer's units fire, and the skipped
columns' weights are the reference's bit for bit. Skipping columns or silent units shortens sums and the fused kernel rounds AdamW's arithmetic in its own order, so
the trajectory equals the reference's to rounding (1e-9 relative after 1000 float64 steps is
tested, tests/test_fast_step.py), not bit for bit. Resuming a fast run is bit-identical to not
interrupting it.

The model and the run's ``torch.optim.AdamW`` stay the canonical state: ``sync()`` writes the
parameters into the model and the moments and step count into the optimizer's state (a standard
AdamW state_dict), so evaluation, checkpoints and resume states are those of the plain loop, and
a resume state written by either step continues with either.
"""

from __future__ import annotations

import torch

from antigrok.training.models import MLP

ALIGN = 8  # elements: each layer's view starts on a 64-byte boundary, as torch's own allocations
# Gather the firing units of a hidden layer when at most this fraction of them fire in the batch:
# below it the smaller products outweigh the copies (benchmarks/train_throughput.py --late).
GATHER_FRACTION = 0.75


def unsupported_reason(model, loss_name: str, optimizer, x_train: torch.Tensor) -> str | None:
    """Why ``FastMLPStep`` cannot compute this run's step, or None when it can."""
    if not isinstance(model, MLP):
        return f"the model is a {type(model).__name__}; the fast step trains MLPs only"
    if loss_name != "mse":
        return f"the loss is {loss_name!r}; the fast step implements the MSE loss only"
    if not isinstance(optimizer, torch.optim.AdamW) or len(optimizer.param_groups) != 1:
        return "the optimizer is not a single-group torch.optim.AdamW"
    group = optimizer.param_groups[0]
    if group.get("amsgrad") or group.get("maximize") or group.get("fused") or group.get("capturable"):
        return "AdamW with amsgrad, maximize, fused or capturable is not implemented by the fast step"
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return f"the model is on {parameter.device}; the fast step is for the CPU"
    if not x_train.is_floating_point() or x_train.dtype != parameter.dtype:
        return "the inputs are not floating point in the model's dtype"
    return None


class FastMLPStep:
    """One AdamW step of an ``MLP`` on the MSE loss against one-hot targets, on the CPU.

    ``step(index, lr)`` trains on the examples ``index`` of ``(x_train, y_train)`` with learning
    rate ``lr`` (as PlainStep does); ``sync()`` brings ``model`` and ``optimizer`` up to date.
    Built from the model's parameters and the optimizer's state as they are at construction
    (a fresh AdamW or one restored from a resume state).
    """

    name = "fast"

    def __init__(self, model: MLP, optimizer: torch.optim.AdamW, x_train: torch.Tensor, y_train: torch.Tensor):
        reason = unsupported_reason(model, "mse", optimizer, x_train)
        if reason:
            raise ValueError(f"FastMLPStep: {reason}; use the plain step (train.cpu_engine: plain)")
        self.model, self.optimizer = model, optimizer
        group = optimizer.param_groups[0]
        self.beta1, self.beta2 = group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        self.layers = [getattr(model, f"fc{index + 1}") for index in range(model.num_layers)]
        parameters = [p for layer in self.layers for p in (layer.weight, layer.bias)]
        if [id(p) for p in parameters] != [id(p) for p in group["params"]]:
            raise ValueError("FastMLPStep: the optimizer must hold the model's parameters in fc1.weight, "
                             "fc1.bias, fc2.weight, ... order (antigrok.training.train.make_optimizer)")
        self.parameters = parameters
        dtype = parameters[0].dtype

        inputs = x_train.flatten(1)
        self.active = self._active_columns(inputs)
        self.inactive = torch.nonzero(~self.active).flatten()
        self.active = torch.nonzero(self.active).flatten()
        self.inputs = inputs.index_select(1, self.active).contiguous()
        num_classes = self.layers[-1].out_features
        self.targets = torch.nn.functional.one_hot(y_train, num_classes).to(dtype)

        # The flat buffers; shapes[i] is the i-th parameter as the step sees it (fc1: active columns).
        shapes = [tuple(p.shape) for p in parameters]
        shapes[0] = (shapes[0][0], len(self.active))
        offsets, total = [], 0
        for shape in shapes:
            offsets.append(total)
            total += -(-_numel(shape) // ALIGN) * ALIGN
        self.flat_params = torch.zeros(total, dtype=dtype)
        self.flat_grads = torch.zeros(total, dtype=dtype)
        self.exp_avg = torch.zeros(total, dtype=dtype)
        self.exp_avg_sq = torch.zeros(total, dtype=dtype)

        def views(flat):
            return [flat[o:o + _numel(s)].view(s) for o, s in zip(offsets, shapes)]

        self.param_views, self.grad_views = views(self.flat_params), views(self.flat_grads)
        self.exp_avg_views, self.exp_avg_sq_views = views(self.exp_avg), views(self.exp_avg_sq)
        self.weights, self.biases = self.param_views[0::2], self.param_views[1::2]
        self.weight_grads, self.bias_grads = self.grad_views[0::2], self.grad_views[1::2]
        # fc1's skipped columns: moved by weight decay only.
        self.skipped_weights = torch.empty(shapes[0][0], len(self.inactive), dtype=dtype)
        self.num_steps = 0
        self._load_from_model_and_optimizer()
        # AdamW over the flat buffers: torch's fused CPU kernel, one pass over all parameters.
        self.flat_params.grad = self.flat_grads
        self.fused = torch.optim.AdamW([self.flat_params], lr=group["lr"], betas=group["betas"], eps=self.eps,
                                       weight_decay=self.weight_decay, fused=True)
        self.fused.state[self.flat_params] = {
            "step": torch.tensor(float(self.num_steps), dtype=torch.float32),
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
        }
        self._batch_buffers = {}  # batch size -> activations and backward buffers, made once

    # ---- state: the model and torch's AdamW are canonical ---------------------------------------
    def _active_columns(self, inputs: torch.Tensor) -> torch.Tensor:
        """Input columns that are non-zero in some training example or have a non-zero AdamW moment."""
        active = (inputs != 0).any(0)
        state = self.optimizer.state.get(self.layers[0].weight)
        if state:
            for moment in (state["exp_avg"], state["exp_avg_sq"]):
                active |= (moment != 0).any(0).to(active.device)
        return active

    @torch.no_grad()
    def _load_from_model_and_optimizer(self) -> None:
        first = self.layers[0].weight
        self.param_views[0].copy_(first.index_select(1, self.active))
        self.skipped_weights.copy_(first.index_select(1, self.inactive))
        for view, parameter in zip(self.param_views[1:], self.parameters[1:]):
            view.copy_(parameter)
        steps = set()
        for index, parameter in enumerate(self.parameters):
            state = self.optimizer.state.get(parameter)
            if not state:
                continue
            steps.add(float(state["step"]))
            for view, key in ((self.exp_avg_views[index], "exp_avg"), (self.exp_avg_sq_views[index], "exp_avg_sq")):
                moment = state[key]
                view.copy_(moment.index_select(1, self.active) if index == 0 else moment)
        if len(steps) > 1:
            raise ValueError(f"FastMLPStep: the optimizer's parameters are at different steps {sorted(steps)}")
        self.num_steps = int(steps.pop()) if steps else 0

    @torch.no_grad()
    def sync(self) -> None:
        """Write the parameters into the model and the moments and step into the optimizer's state."""
        first = self.layers[0].weight
        first.index_copy_(1, self.active, self.param_views[0])
        first.index_copy_(1, self.inactive, self.skipped_weights)
        for view, parameter in zip(self.param_views[1:], self.parameters[1:]):
            parameter.copy_(view)
        if self.num_steps == 0:
            return  # torch's AdamW has no state before its first step either
        for index, parameter in enumerate(self.parameters):
            state = self.optimizer.state[parameter]
            if not state:  # as torch's AdamW initialises it (a CPU step counter, zero moments)
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["step"].fill_(self.num_steps)
            for view, key in ((self.exp_avg_views[index], "exp_avg"), (self.exp_avg_sq_views[index], "exp_avg_sq")):
                if index == 0:
                    state[key].zero_()
                    state[key].index_copy_(1, self.active, view)
                else:
                    state[key].copy_(view)

    # ---- the step ----------------------------------------------------------------------------
    def _buffers(self, batch: int) -> dict:
        if batch not in self._batch_buffers:
            dtype = self.flat_params.dtype
            widths = [layer.out_features for layer in self.layers]
            self._batch_buffers[batch] = {
                "x": torch.empty(batch, len(self.active), dtype=dtype),
                "target": torch.empty(batch, widths[-1], dtype=dtype),
                "hidden": [torch.empty(batch, width, dtype=dtype) for width in widths],
                "grad": [torch.empty(batch, width, dtype=dtype) for width in widths],
            }
        return self._batch_buffers[batch]

    def step(self, index: torch.Tensor, lr: float) -> None:
        """One AdamW step on the examples ``index`` at learning rate ``lr``."""
        self.compute_gradients(index)
        self.apply_update(lr)

    @torch.no_grad()
    def compute_gradients(self, index: torch.Tensor) -> None:
        """The MSE loss's gradients on the examples ``index`` into ``grad_views`` (fc1: active columns).

        The operations autograd runs for this MLP: forward ``addmm(b, a, W.t())`` per layer, ReLU
        on the hidden ones; backward from ``2 / numel * (logits - target)``: ``dW = g.t() @ a``,
        ``db = g.sum(0)``, and ``g @ W`` through ``threshold_backward`` on the ReLU's output. A
        hidden layer with few firing units (``firing_units``) is multiplied over those units only.
        """
        buffers = self._buffers(len(index))
        torch.index_select(self.inputs, 0, index, out=buffers["x"])
        torch.index_select(self.targets, 0, index, out=buffers["target"])
        activations = [buffers["x"]]
        firing = [None]  # per layer input: the units that fire in this batch, None for all of them
        last = len(self.layers) - 1
        for layer in range(last + 1):
            hidden = buffers["hidden"][layer]
            units = firing[layer]
            if units is None:
                torch.addmm(self.biases[layer], activations[layer], self.weights[layer].t(), out=hidden)
            else:
                torch.addmm(self.biases[layer], activations[layer].index_select(1, units),
                            self.weights[layer].index_select(1, units).t(), out=hidden)
            if layer < last:
                torch.relu_(hidden)
                activations.append(hidden)
                firing.append(firing_units(hidden))
        logits = buffers["hidden"][last]
        grad = torch.sub(logits, buffers["target"], out=buffers["grad"][last])
        grad.mul_(2.0 / logits.numel())
        rows = None  # the output units ``grad`` covers, None for all of them
        for layer in range(last, -1, -1):
            columns = firing[layer]
            weight_grad, bias_grad = self.weight_grads[layer], self.bias_grads[layer]
            inputs = activations[layer] if columns is None else activations[layer].index_select(1, columns)
            if rows is None and columns is None:
                torch.mm(grad.t(), inputs, out=weight_grad)
                torch.sum(grad, dim=0, out=bias_grad)
            else:  # the silent units' weights: the exact zero the full product gives
                weight_grad.zero_()
                bias_grad.zero_()
                block = grad.t() @ inputs
                if rows is not None and columns is not None:
                    weight_grad[rows.unsqueeze(1), columns] = block
                elif rows is not None:
                    weight_grad.index_copy_(0, rows, block)
                else:
                    weight_grad.index_copy_(1, columns, block)
                if rows is not None:
                    bias_grad.index_copy_(0, rows, grad.sum(0))
                else:
                    torch.sum(grad, dim=0, out=bias_grad)
            if layer > 0:
                weight = self.weights[layer]
                if rows is not None:
                    weight = weight.index_select(0, rows)
                if columns is None:
                    below = torch.mm(grad, weight, out=buffers["grad"][layer - 1])
                else:
                    below = grad @ weight.index_select(1, columns)
                grad = torch.ops.aten.threshold_backward.grad_input(below, inputs, 0, grad_input=below)
                rows = columns

    @torch.no_grad()
    def apply_update(self, lr: float) -> None:
        """AdamW on the flat buffers with torch's fused CPU kernel; fc1's skipped columns: decay only."""
        if self.weight_decay != 0:  # as torch's single-tensor AdamW decays a parameter
            self.skipped_weights.mul_(1 - lr * self.weight_decay)
        self.fused.param_groups[0]["lr"] = lr
        self.fused.step()
        self.num_steps += 1


def firing_units(hidden: torch.Tensor) -> torch.Tensor | None:
    """The units (columns) of a ReLU output that fire for some example of the batch, or None when
    more than ``GATHER_FRACTION`` of them do (the full products are then the faster)."""
    units = torch.nonzero(hidden.amax(0) > 0).flatten()
    return None if len(units) > GATHER_FRACTION * hidden.shape[1] else units


def _numel(shape: tuple) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _scalar_dtype() -> torch.dtype:
    """The dtype torch's AdamW keeps its CPU step counter in (torch.optim.optimizer._get_scalar_dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
