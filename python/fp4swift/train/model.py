"""Two compact byte-level decoders, chosen by ModelConfig.arch:

- `llama` (default): RMSNorm, rotary position embeddings, causal attention, SwiGLU MLP;
  module names follow the Hugging Face LLaMA layout (q_proj, k_proj, v_proj, o_proj,
  gate_proj, up_proj, down_proj, lm_head).
- `gpt2`: LayerNorm with bias, learned position embeddings, causal attention, GELU MLP
  (4·d_model hidden); module names follow the Hugging Face GPT-2 layout
  (transformer.wte/wpe/h.i.ln_1/attn.c_attn/attn.c_proj/ln_2/mlp.c_fc/mlp.c_proj/ln_f,
  lm_head), but its linears are plain nn.Linear (HF GPT-2 uses Conv1D with transposed
  weights), so fp4swift.torch.convert converts them.

In both, fp4swift.torch.convert's default policy (every nn.Linear except the LM head)
applies unchanged. build_model(cfg, seed) is the one factory; every model has
forward(tokens) -> logits and loss(tokens, targets).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_SIZE = 256  # byte-level tokens
ARCHS = ("llama", "gpt2")
ARCH_LABELS = {"llama": "LLaMA-style", "gpt2": "GPT-2-style"}
#: Initialization rules (ModelConfig.init): see ModelConfig.
INITS = ("normal", "torch")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and size of the decoder. `mlp_hidden` 0 means the architecture's rule:
    llama 8/3·d_model rounded up to a multiple of 32, gpt2 4·d_model."""

    arch: str = "llama"
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    seq_len: int = 128
    vocab_size: int = VOCAB_SIZE
    mlp_hidden: int = 0
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    #: "torch" (the default): PyTorch's own module defaults (nn.Linear kaiming-uniform, std
    #: 1/sqrt(3·fan_in); nn.Embedding N(0, 1)); "normal": N(0, 0.02) matrices, residual output
    #: projections scaled by 1/sqrt(2·layers) (GPT-2 / Hugging Face LLaMA practice, the default
    #: before; at this model's width it made fp32 a weak baseline: docs/experiments.md); or one
    #: rule per kind of matrix, "linear=RULE,embedding=RULE". See init_rules.
    init: str = "torch"

    @property
    def hidden(self) -> int:
        if self.mlp_hidden > 0:
            return self.mlp_hidden
        if self.arch == "gpt2":
            return 4 * self.d_model
        return int(math.ceil(8 * self.d_model / 3 / 32) * 32)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def label(self) -> str:
        """'LLaMA-style' or 'GPT-2-style' (for summaries and plot titles)."""
        return ARCH_LABELS.get(self.arch, self.arch)

    def validate(self) -> None:
        """Raises ValueError with a one-line message when the sizes do not fit together."""
        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        init_rules(self.init)
        for name in ("d_model", "layers", "heads", "seq_len", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"--d-model ({self.d_model}) must be a multiple of --heads ({self.heads})")
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"the head size d_model/heads = {self.head_dim} must be even for rotary embeddings")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple:
    """cos, sin tables [seq_len, head_dim/2] for rotary embeddings (rotate-half layout)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; rotates the pairs (x[..., i], x[..., i + D/2])."""
    t = x.shape[-2]
    c, s = cos[:t], sin[:t]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q = apply_rope(split(self.q_proj(x)), cos, sin)
        k = apply_rope(split(self.k_proj(x)), cos, sin)
        v = split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaLM(nn.Module):
    """Decoder-only language model; forward(tokens [B, T] int64) -> logits [B, T, vocab]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self, self.cfg, embeddings=("embed_tokens.weight",), residual=("o_proj.weight", "down_proj.weight"))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] > self.cfg.seq_len:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens is longer than the model's seq_len {self.cfg.seq_len}")
        x = self.embed_tokens(tokens)
        for block in self.layers:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.lm_head(self.norm(x))

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross entropy (nats)."""
        logits = self(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------------------------------
# GPT-2


class GPT2Attention(nn.Module):
    """Causal self-attention with a fused q/k/v projection (c_attn) and an output projection (c_proj)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.heads, self.head_dim).transpose(1, 2) for y in self.c_attn(x).split(d, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class GPT2MLP(nn.Module):
    """c_proj(gelu(c_fc(x))), GELU with the tanh approximation (GPT-2's gelu_new)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.hidden)
        self.c_proj = nn.Linear(cfg.hidden, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2LM(nn.Module):
    """GPT-2-style decoder; forward(tokens [B, T] int64) -> logits [B, T, vocab].

    Layout as Hugging Face's GPT2LMHeadModel: transformer.{wte, wpe, h, ln_f} and lm_head
    (bias-free; tied to wte with tie_embeddings)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(cfg.vocab_size, cfg.d_model),
            "wpe": nn.Embedding(cfg.seq_len, cfg.d_model),
            "h": nn.ModuleList([GPT2Block(cfg) for _ in range(cfg.layers)]),
            "ln_f": nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps),
        })
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer["wte"].weight
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self, self.cfg, embeddings=("transformer.wte.weight", "transformer.wpe.weight"),
                     residual=("c_proj.weight",))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len {self.cfg.seq_len}")
        tr = self.transformer
        x = tr["wte"](tokens) + tr["wpe"](torch.arange(t, device=tokens.device))
        for block in tr["h"]:
            x = block(x)
        return self.lm_head(tr["ln_f"](x))

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross entropy (nats)."""
        logits = self(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------------------------------
# factory and counts


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (a tied head counts once).

    With exclude_embeddings, the parameters of nn.Embedding modules (token and, for gpt2,
    position embeddings) are left out: Kaplan et al.'s non-embedding count N. An untied LM
    head is a linear layer and counts; a head tied to the token embedding does not."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    seen = set()
    n = 0
    for _, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if exclude_embeddings and id(p) in embedding:
            continue
        n += p.numel()
    return n


def parameter_counts(cfg: ModelConfig) -> Dict[str, int]:
    """{"total": ..., "non_embedding": ...} of the model `cfg` describes, without allocating
    its weights (built on torch's meta device)."""
    with torch.device("meta"):
        m = LlamaLM(cfg) if cfg.arch == "llama" else GPT2LM(cfg)
    return {"total": count_parameters(m), "non_embedding": count_parameters(m, exclude_embeddings=True)}


def init_rules(init: str) -> Tuple[str, str]:
    """(rule of the linear layers' matrices, rule of the embedding tables) of an init spec:
    "normal", "torch", or "linear=RULE,embedding=RULE"; ValueError otherwise."""
    if init in INITS:
        return init, init
    rules: Dict[str, str] = {}
    for part in str(init).split(","):
        key, eq, val = part.strip().partition("=")
        if not eq or key not in ("linear", "embedding") or val not in INITS or key in rules:
            raise ValueError(f"--init must be {' or '.join(INITS)}, or linear=RULE,embedding=RULE with RULE "
                             f"{' or '.join(INITS)}; got {init!r}")
        rules[key] = val
    if len(rules) != 2:
        raise ValueError(f"--init {init!r} must give both linear= and embedding=")
    return rules["linear"], rules["embedding"]


def init_weights(model: nn.Module, cfg: ModelConfig, embeddings: Sequence[str], residual: Sequence[str]) -> None:
    """Applies cfg.init: "normal" draws N(0, 0.02) (residual output projections `residual`:
    0.02 / sqrt(2·layers); GPT-2 biases 0), "torch" keeps the modules' PyTorch defaults.
    `embeddings` names the embedding tables (a tied LM head is the token table)."""
    linear_rule, embedding_rule = init_rules(cfg.init)
    std = 0.02
    for name, p in model.named_parameters():
        if p.dim() == 2:
            if (embedding_rule if name in embeddings else linear_rule) == "normal":
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * cfg.layers) if name.endswith(tuple(residual))
                                else std)
        elif linear_rule == "normal" and name.endswith("bias") and not name.split(".")[-2].startswith("ln_"):
            nn.init.zeros_(p)


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """The model of cfg.arch (LlamaLM or GPT2LM) initialized from `seed` (the same weights
    for every recipe)."""
    cfg.validate()
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        return LlamaLM(cfg) if cfg.arch == "llama" else GPT2LM(cfg)
