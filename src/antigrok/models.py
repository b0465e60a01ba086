"""Models of the experiments, built from ``experiments.<name>.model`` in the config.

Every weight matrix is an ``nn.Linear`` (or ``nn.Embedding``) so that WeightWatcher and the
spectral analysis see it under a readable name (``fc1.weight``). Every ReLU is its own module so
that the progress measures can hook its output.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float64": torch.float64, "float32": torch.float32}


class MLP(nn.Module):
    """ReLU MLP ``widths[0] -> ... -> widths[-1]``; layers ``fc1..fcK``, activations ``act1..``."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.widths = list(widths)
        num_layers = len(widths) - 1
        for index in range(num_layers):
            setattr(self, f"fc{index + 1}", nn.Linear(widths[index], widths[index + 1]))
            if index < num_layers - 1:
                setattr(self, f"act{index + 1}", nn.ReLU())
        self.num_layers = num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for index in range(1, self.num_layers):
            x = getattr(self, f"act{index}")(getattr(self, f"fc{index}")(x))
        return getattr(self, f"fc{self.num_layers}")(x)


@torch.no_grad()
def scale_parameters(model: nn.Module, factor: float) -> None:
    """Multiply every parameter, weights and biases, by ``factor`` (the paper's init x8)."""
    for parameter in model.parameters():
        parameter.mul_(factor)


def build_model(model_cfg: dict, dtype: str = "float64", seed: int | None = None) -> nn.Module:
    """The model a config describes, initialised from ``seed`` (PyTorch default init, then scaled).

    The seed goes to a private generator through ``torch.random.fork_rng`` so that building a
    model never disturbs the caller's global RNG.
    """
    name = model_cfg["name"]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "mlp":
            model = MLP(model_cfg["widths"])
        elif name == "transformer":
            from antigrok.transformer import build_transformer

            model = build_transformer(model_cfg)
        else:
            raise ValueError(f"unknown model {name!r} in experiments.<name>.model.name; known: mlp, transformer")
        scale_parameters(model, model_cfg.get("init_scale", 1.0))
    return model.to(DTYPES[dtype])


def relu_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ReLU modules by name: where the activation-sparsity measure looks."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.ReLU)}
