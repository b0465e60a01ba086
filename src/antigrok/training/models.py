"""Models of the experiments, built from ``experiments.<name>.model`` in the config.

Every weight matrix is an ``nn.Linear`` (or ``nn.Embedding``) so that WeightWatcher and the
spectral analysis see it under a readable name (``fc1.weight``). Every ReLU is its own module so
that the progress measures can hook its output.

Models: ``MLP`` (the MNIST experiment) and ``Transformer`` (the modular-addition experiment).
"""

from __future__ import annotations

import math

import torch
from torch import nn

DTYPES = {"float64": torch.float64, "float32": torch.float32}
TRANSFORMER_OPTIONS = ("layer_norm", "logits_dtype")  # model keys only a transformer reads


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


class Attention(nn.Module):
    """Multi-head causal self-attention without biases, as Nanda et al.'s ``Attention``.

    Each of ``q``, ``k``, ``v``, ``o`` is ONE fused ``nn.Linear`` over all heads (the heads are
    row blocks of ``q``, ``k``, ``v`` and column blocks of ``o``): a 128 x 128 matrix has enough
    eigenvalues for a power-law fit, a 32 x 128 per-head matrix has only 32.
    """

    def __init__(self, d_model: int, num_heads: int, d_head: int):
        super().__init__()
        self.num_heads, self.d_head = num_heads, d_head
        self.q = nn.Linear(d_model, num_heads * d_head, bias=False)
        self.k = nn.Linear(d_model, num_heads * d_head, bias=False)
        self.v = nn.Linear(d_model, num_heads * d_head, bias=False)
        self.o = nn.Linear(num_heads * d_head, d_model, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """The attention output at the last ``num_queries`` positions of ``x`` (batch, pos, d_model)."""
        if num_queries == 1:
            return self._last_position(x)
        length = x.shape[1]
        query_positions = torch.arange(length - num_queries, length, device=x.device)
        key_positions = torch.arange(length, device=x.device)
        queries = self._split_heads(self.q(x[:, length - num_queries:]))
        keys, values = self._split_heads(self.k(x)), self._split_heads(self.v(x))
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(self.d_head)
        future = key_positions[None, :] > query_positions[:, None]
        pattern = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        mixed = (pattern @ values).transpose(1, 2).flatten(2)  # heads concatenated, as W_O expects
        return self.o(mixed)

    def _last_position(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x, 1)``: the last position attends to every position, so the causal mask hides
        nothing, and each head's scores and mix are sums over n_ctx = 3 terms. As elementwise
        products summed over a short axis they cost a fraction of the thousands of (1 x d_head) @
        (d_head x 3) products a batched matmul would run (benchmarks/modadd_step.py); equal to
        that computation to rounding."""
        batch, length, _ = x.shape
        per_head = (batch, length, self.num_heads, self.d_head)
        query = self.q(x[:, -1:]).view(batch, 1, self.num_heads, self.d_head)
        keys, values = self.k(x).view(per_head), self.v(x).view(per_head)
        scores = (query * keys).sum(-1) / math.sqrt(self.d_head)  # (batch, key position, head)
        pattern = torch.softmax(scores, dim=1)
        mixed = (pattern.unsqueeze(-1) * values).sum(1)  # (batch, head, d_head)
        return self.o(mixed.flatten(1)).unsqueeze(1)  # heads concatenated, as W_O expects


class TransformerMLP(nn.Module):
    """``fc_in -> act (ReLU) -> fc_out`` with biases, as Nanda et al.'s ``MLP``."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.act = nn.ReLU()
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class TransformerBlock(nn.Module):
    """Residual attention then residual MLP. Without LayerNorm by default (Nanda et al. train
    without it); ``pre_layer_norm``: ``ln1`` before the attention and ``ln2`` before the MLP, on
    the residual branch only (pre-LN, as GPT-2), so the residual stream itself is never normalised."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, d_mlp: int, pre_layer_norm: bool = False):
        super().__init__()
        # Modules are created only when used: a block without LayerNorm has exactly the
        # parameters, names and init draws it always had.
        if pre_layer_norm:
            self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, num_heads, d_head)
        if pre_layer_norm:
            self.ln2 = nn.LayerNorm(d_model)
        self.mlp = TransformerMLP(d_model, d_mlp)
        self.pre_layer_norm = pre_layer_norm

    def forward(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        attn_input = self.ln1(x) if self.pre_layer_norm else x
        x = x[:, x.shape[1] - num_queries:] + self.attn(attn_input, num_queries)
        return x + self.mlp(self.ln2(x) if self.pre_layer_norm else x)


class Transformer(nn.Module):
    """The 1-layer modular-addition transformer of Nanda et al. 2023, readable to WeightWatcher.

    Tokens (batch, n_ctx) int64 -> logits (batch, d_vocab) read from the last position, like
    their ``model(data)[:, -1]``. Weight matrices: ``embed``, ``pos_embed`` (nn.Embedding),
    ``blocks.{i}.attn.{q,k,v,o}``, ``blocks.{i}.mlp.fc_in``, ``blocks.{i}.mlp.fc_out``, ``unembed``
    (nn.Linear); the hidden ReLU is the module ``blocks.{i}.mlp.act``.

    The last block computes only the last position: the logits never depend on the others, so
    the outputs and gradients are those of the full computation at a third of the MLP's cost,
    and a hook on the last ReLU sees exactly the activations the answer is computed from.

    Options (absent from a config = Nanda et al.'s model): ``layer_norm: pre`` adds a LayerNorm
    before each block's attention and MLP and one before the unembedding (``ln_final``; 1-D
    parameters, which the spectral analysis skips); ``logits_dtype`` casts the logits to that
    dtype, so the loss and its softmax are computed in it while the weights keep the run's dtype
    (the gradient flows back through the cast in the weights' dtype).
    """

    CONFIG_KEYS = ("d_vocab", "n_ctx", "d_model", "num_heads", "d_head", "d_mlp", "num_layers")
    LAYER_NORMS = ("none", "pre")

    def __init__(self, d_vocab: int, n_ctx: int, d_model: int, num_heads: int, d_head: int,
                 d_mlp: int, num_layers: int, layer_norm: str = "none", logits_dtype: str | None = None):
        super().__init__()
        if layer_norm not in self.LAYER_NORMS:
            raise ValueError(f"model.layer_norm is {layer_norm!r}; choose one of {', '.join(self.LAYER_NORMS)}")
        if logits_dtype is not None and logits_dtype not in DTYPES:
            raise ValueError(f"model.logits_dtype is {logits_dtype!r}; choose one of {', '.join(DTYPES)}")
        pre_layer_norm = layer_norm == "pre"
        self.embed = nn.Embedding(d_vocab, d_model)
        self.pos_embed = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, d_head, d_mlp, pre_layer_norm) for _ in range(num_layers)
        )
        if pre_layer_norm:
            self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, d_vocab, bias=False)
        self.pre_layer_norm = pre_layer_norm
        # A plain attribute, not a buffer: model.to(dtype) must not change it.
        self.logits_dtype = DTYPES[logits_dtype] if logits_dtype is not None else None
        self.reset_parameters()

    @classmethod
    def from_config(cls, model_cfg: dict) -> "Transformer":
        missing = [key for key in cls.CONFIG_KEYS if key not in model_cfg]
        if missing:
            raise ValueError(
                f"experiments.<name>.model of a transformer lacks {', '.join(missing)}; "
                f"give all of {', '.join(cls.CONFIG_KEYS)} (d_vocab = modulus + 1 for modadd)"
            )
        return cls(**{key: int(model_cfg[key]) for key in cls.CONFIG_KEYS},
                   layer_norm=model_cfg.get("layer_norm", "none"), logits_dtype=model_cfg.get("logits_dtype"))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Nanda et al.'s init: every matrix N(0, 1/d_model) except the unembedding, N(0, 1/d_vocab);
        MLP biases zero (their ``randn(...) / sqrt(d)``, in nn.Linear's (out, in) layout).
        LayerNorms (``layer_norm: pre``) keep their own init, gain 1 and bias 0, and draw nothing."""
        d_model, d_vocab = self.embed.embedding_dim, self.embed.num_embeddings
        layer_norm_parameters = {id(parameter) for module in self.modules() if isinstance(module, nn.LayerNorm)
                                 for parameter in module.parameters()}
        for name, parameter in self.named_parameters():
            if id(parameter) in layer_norm_parameters:
                continue
            if name.endswith(".bias"):
                nn.init.zeros_(parameter)
            elif name == "unembed.weight":
                nn.init.normal_(parameter, std=d_vocab**-0.5)
            else:
                nn.init.normal_(parameter, std=d_model**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos_embed(positions)
        for index, block in enumerate(self.blocks):
            is_last = index == len(self.blocks) - 1
            x = block(x, num_queries=1 if is_last else x.shape[1])
        last = self.ln_final(x[:, -1]) if self.pre_layer_norm else x[:, -1]
        logits = self.unembed(last)
        return logits if self.logits_dtype is None else logits.to(self.logits_dtype)


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
            transformer_only = [key for key in TRANSFORMER_OPTIONS if key in model_cfg]
            if transformer_only:
                raise ValueError(f"model.{transformer_only[0]} is a transformer option; remove it from the mlp model")
            model = MLP(model_cfg["widths"])
        elif name == "transformer":
            model = Transformer.from_config(model_cfg)
        else:
            raise ValueError(f"unknown model {name!r} in experiments.<name>.model.name; known: mlp, transformer")
        scale_parameters(model, model_cfg.get("init_scale", 1.0))
    return model.to(DTYPES[dtype])


def relu_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ReLU modules by name: where the activation-sparsity measure looks."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.ReLU)}
