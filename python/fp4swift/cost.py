"""Theoretical GEMM cost of training a decoder-only transformer under a precision recipe (numerics.md §7).

The model counts multiply-accumulates (MACs) of every GEMM per training token, by module role
(`fp4swift.ROLES`: attention, mlp, lm_head, other) plus an "attention_core" bucket (QKᵀ and
softmax·V), and by GEMM: forward Y = X·Wᵀ, input gradient dX = dY·W and weight gradient
dW = dYᵀ·X. A linear layer with K inputs and N outputs costs K·N MACs per token in each of its
three GEMMs. A GEMM's cost relative to 16-bit is 1 (16-bit), 1/2 (FP8) or 1/4 (FP4) per MAC,
at the wider of its two operands; a recipe is data (`Recipe.for_role`, `Recipe.gemm_operands`).

    >>> import fp4swift.cost as fc
    >>> shape = fc.preset("llama-7b")
    >>> flops = fc.gemm_flops(shape)
    >>> round(fc.relative_cost(flops, "zhou2025"), 3)
    0.531

Needs neither torch nor transformers: `ModelShape.from_model_config` reads any object with
this project's ModelConfig fields, `load_hf_config` parses a Hugging Face config.json with the
standard library.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .roles import ROLES, module_role

#: The three GEMMs of a linear layer's training step.
GEMMS: Tuple[str, ...] = ("forward", "input_grad", "weight_grad")
#: QKᵀ and softmax·V: no weights, always 16-bit (numerics.md §7: scores and softmax stay high precision).
ATTENTION_CORE = "attention_core"
#: Every bucket `gemm_flops` reports, in display order.
BUCKETS: Tuple[str, ...] = tuple(ROLES) + (ATTENTION_CORE,)

#: Cost per MAC relative to a 16-bit GEMM, by the operand width in bits.
COST_PER_MAC: Dict[int, float] = {4: 0.25, 8: 0.5, 16: 1.0}

ASSUMPTIONS: Tuple[str, ...] = (
    "Only GEMMs are counted, as multiply-accumulates (MACs) per training token; norms, activations, "
    "softmax itself, rotary embeddings, the loss, quantization/scaling overheads, OCC's sparse "
    "compensation, Hadamard rotations and the optimizer are free.",
    "Embedding lookups (token and position embeddings) are gathers, not GEMMs: 0 FLOPs. The LM head "
    "is a GEMM (d_model x vocab) whether or not it is tied to the embedding.",
    "Every linear layer of K inputs and N outputs costs K*N MACs per token in each of its three GEMMs: "
    "forward Y = X*W^T, input gradient dX = dY*W and weight gradient dW = dY^T*X.",
    "Attention core (Q*K^T and softmax*V): 2*seq_len*heads*head_dim MACs per token forward "
    "(= 2*seq_len*d_model when heads*head_dim = d_model), counting {core_mask}; its backward (dQ, dK, "
    "dP, dV) is 2x the forward, booked half as input_grad (gradients of the left operands) and half as "
    "weight_grad (of the right operands). It always runs in 16-bit (numerics.md §7), under every recipe.",
    "Cost per MAC relative to 16-bit: FP4 (e2m1, e1m2, e3m0) = 1/4, FP8 (e4m3, e5m2) = 1/2, 16-bit = 1. "
    "An unquantized operand (None, float32 in this emulation) counts as 16-bit: the baseline is 16-bit "
    "training. A GEMM whose operands differ in width runs at the wider one (e.g. FP4 x 16-bit = 16-bit).",
    "Each module's precision comes from the recipe as data: Recipe.for_role(role) (None = the module "
    "stays unquantized = 16-bit, e.g. the LM head) and that recipe's gemm_operands(); module roles "
    "from fp4swift.module_role on Hugging Face-style module names.",
    "Block scales, tensor scales and higher-precision accumulation are not charged; the cost is "
    "theoretical throughput, not measured time (no memory traffic, no kernel overheads).",
)


class CostError(ValueError):
    """A bad model config, preset or recipe for the cost model (one-line message)."""


# ---------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class LinearShape:
    """One kind of linear layer: its qualified name (layer index 0 standing for every layer),
    its role, K inputs, N outputs and how many the model has (layers, or 1 for the LM head)."""

    name: str
    role: str
    in_features: int
    out_features: int
    count: int

    @property
    def macs_per_token(self) -> int:
        """MACs per token of ONE of its GEMMs, summed over its `count` copies."""
        return self.in_features * self.out_features * self.count


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide its GEMM FLOPs.

    arch: "llama" (q, k, v, o projections; SwiGLU gate/up/down with `hidden`) or "gpt2"
    (fused c_attn d x 3d, c_proj, c_fc d x hidden, mlp c_proj). kv_heads < heads is grouped-query
    attention (k and v project to kv_heads·head_dim). head_dim defaults to d_model // heads."""

    name: str
    arch: str
    d_model: int
    layers: int
    heads: int
    hidden: int
    vocab_size: int
    seq_len: int
    kv_heads: int = 0
    head_dim: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "gpt2"):
            raise CostError(f"{self.name}: unknown architecture {self.arch!r} (llama or gpt2)")
        for f in ("d_model", "layers", "heads", "hidden", "vocab_size", "seq_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise CostError(f"{self.name}: {f} must be a positive integer, got {v!r}")
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.head_dim == 0:
            if self.d_model % self.heads:
                raise CostError(f"{self.name}: d_model ({self.d_model}) is not a multiple of heads ({self.heads})")
            object.__setattr__(self, "head_dim", self.d_model // self.heads)
        for f in ("kv_heads", "head_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise CostError(f"{self.name}: {f} must be a positive integer, got {v!r}")
        if self.heads % self.kv_heads:
            raise CostError(f"{self.name}: heads ({self.heads}) is not a multiple of kv_heads ({self.kv_heads})")
        if self.arch == "gpt2" and (self.kv_heads != self.heads or self.heads * self.head_dim != self.d_model):
            raise CostError(f"{self.name}: gpt2 has no grouped-query attention or head_dim override")

    def with_seq_len(self, seq_len: Optional[int]) -> "ModelShape":
        """The same model at another context length (None: unchanged)."""
        if seq_len is None:
            return self
        return ModelShape(**{**asdict(self), "seq_len": seq_len})

    def linears(self) -> List[LinearShape]:
        """Every kind of linear layer, with Hugging Face-style names and the role
        `fp4swift.module_role` gives them."""
        d, h = self.d_model, self.hidden
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.arch == "gpt2":
            p = "transformer.h.0."
            layer = [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, h), ("mlp.c_proj", h, d)]
        else:
            p = "model.layers.0."
            layer = [("self_attn.q_proj", d, q_out), ("self_attn.k_proj", d, kv_out), ("self_attn.v_proj", d, kv_out),
                     ("self_attn.o_proj", q_out, d), ("mlp.gate_proj", d, h), ("mlp.up_proj", d, h),
                     ("mlp.down_proj", h, d)]
        out = [LinearShape(p + n, module_role(p + n), k, m, self.layers) for n, k, m in layer]
        out.append(LinearShape("lm_head", module_role("lm_head"), d, self.vocab_size, 1))
        return out

    def describe(self) -> str:
        """A one-line summary of the sizes."""
        label = {"llama": "LLaMA-style", "gpt2": "GPT-2-style"}[self.arch]
        heads = f"{self.heads} heads" + (f" ({self.kv_heads} kv, GQA)" if self.kv_heads != self.heads else "")
        hd = "" if self.heads * self.head_dim == self.d_model else f", head_dim {self.head_dim}"
        mlp = "SwiGLU" if self.arch == "llama" else "GELU"
        return (f"{self.name}: {label}, d_model {self.d_model}, {self.layers} layers, {heads}{hd}, "
                f"{mlp} MLP hidden {self.hidden}, vocab {self.vocab_size}, seq_len {self.seq_len}")

    @classmethod
    def from_model_config(cls, cfg: Any, name: str = "own") -> "ModelShape":
        """From this project's `fp4swift.train.model.ModelConfig` (or anything with its fields:
        arch (default "llama"), d_model, layers, heads, hidden or mlp_hidden, vocab_size, seq_len)."""
        arch = getattr(cfg, "arch", "llama")
        hidden = getattr(cfg, "hidden", None)
        if hidden is None:
            hidden = _default_hidden(arch, cfg.d_model, getattr(cfg, "mlp_hidden", 0))
        return cls(name, arch, cfg.d_model, cfg.layers, cfg.heads, hidden, cfg.vocab_size, cfg.seq_len)


def _default_hidden(arch: str, d_model: int, mlp_hidden: int = 0) -> int:
    """ModelConfig.hidden's rule: mlp_hidden if set, else gpt2 4·d, llama 8/3·d rounded up to 32."""
    if mlp_hidden and mlp_hidden > 0:
        return mlp_hidden
    if arch == "gpt2":
        return 4 * d_model
    return int(math.ceil(8 * d_model / 3 / 32) * 32)


#: Built-in models (Hugging Face config values). LLaMA sizes at 4K context (LLaMA-2's).
PRESETS: Dict[str, ModelShape] = {
    "llama-7b": ModelShape("llama-7b", "llama", 4096, 32, 32, 11008, 32000, 4096),
    "llama-13b": ModelShape("llama-13b", "llama", 5120, 40, 40, 13824, 32000, 4096),
    "llama-70b": ModelShape("llama-70b", "llama", 8192, 80, 64, 28672, 32000, 4096, kv_heads=8),
    "gpt2": ModelShape("gpt2", "gpt2", 768, 12, 12, 3072, 50257, 1024),
}


def preset(name: str, seq_len: Optional[int] = None) -> ModelShape:
    """A built-in model (see `PRESETS`), optionally at another context length."""
    if name not in PRESETS:
        raise CostError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)} (or own, or a config.json path)")
    return PRESETS[name].with_seq_len(seq_len)


def _hf_int(d: Mapping[str, Any], key: str, where: str, default: Any = None) -> int:
    v = d.get(key, default)
    if v is None:
        hint = " (or pass --seq-len)" if key in ("max_position_embeddings", "n_positions") else ""
        raise CostError(f"{where}: missing {key!r}{hint}")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise CostError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return v


def shape_from_hf_config(config: Mapping[str, Any], name: str = "config.json",
                         seq_len: Optional[int] = None) -> ModelShape:
    """A ModelShape from a parsed Hugging Face config.json.

    GPT-2 (model_type "gpt2" or an `n_embd` key): n_embd, n_layer, n_head, n_inner (None:
    4·n_embd), vocab_size, n_positions. LLaMA family (LLaMA, Mistral, Qwen2, ...): hidden_size,
    intermediate_size, num_attention_heads, num_key_value_heads (default: the heads),
    head_dim (default hidden_size / heads), num_hidden_layers, vocab_size,
    max_position_embeddings. `seq_len` overrides the context length."""
    if not isinstance(config, Mapping):
        raise CostError(f"{name}: not a JSON object")
    if config.get("model_type") == "gpt2" or "n_embd" in config:
        d = _hf_int(config, "n_embd", name)
        inner = config.get("n_inner")
        hidden = 4 * d if inner is None else _hf_int(config, "n_inner", name)
        layers, heads = _hf_int(config, "n_layer", name), _hf_int(config, "n_head", name)
        vocab = _hf_int(config, "vocab_size", name)
        ctx = seq_len or _hf_int(config, "n_positions", name, config.get("n_ctx"))
        return ModelShape(name, "gpt2", d, layers, heads, hidden, vocab, ctx)
    d = _hf_int(config, "hidden_size", name)
    hidden = _hf_int(config, "intermediate_size", name)
    layers = _hf_int(config, "num_hidden_layers", name)
    heads = _hf_int(config, "num_attention_heads", name)
    kv = _hf_int(config, "num_key_value_heads", name, heads)
    head_dim = 0 if config.get("head_dim") is None else _hf_int(config, "head_dim", name)
    vocab = _hf_int(config, "vocab_size", name)
    ctx = seq_len or _hf_int(config, "max_position_embeddings", name)
    return ModelShape(name, "llama", d, layers, heads, hidden, vocab, ctx, kv_heads=kv, head_dim=head_dim)


def load_hf_config(path: Union[str, "os.PathLike[str]"], seq_len: Optional[int] = None) -> ModelShape:
    """A ModelShape from a Hugging Face config.json file (or a directory holding one);
    CostError with a one-line message when it is unreadable or incomplete."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    try:
        with open(p, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise CostError(f"cannot read {p}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CostError(f"{p} is not valid JSON: {e}") from None
    return shape_from_hf_config(config, name=p, seq_len=seq_len)


#: `fp4swift train`'s default model (TrainConfig / ModelConfig defaults; test_cost.py checks they
#: agree). Kept here so that `fp4swift cost` needs no PyTorch.
OWN_DEFAULTS: Dict[str, Any] = dict(arch="llama", d_model=128, layers=4, heads=4, seq_len=128, mlp_hidden=0,
                                    vocab_size=256)


def own_model_shape(arch: Optional[str] = None, d_model: Optional[int] = None, layers: Optional[int] = None,
                    heads: Optional[int] = None, seq_len: Optional[int] = None,
                    mlp_hidden: Optional[int] = None) -> ModelShape:
    """This project's training model (`fp4swift train`) at the default TrainConfig sizes, with
    overrides (None = default); CostError, in the train command's flag terms, for sizes that
    ModelConfig.validate would refuse."""
    over = {k: v for k, v in dict(arch=arch, d_model=d_model, layers=layers, heads=heads, seq_len=seq_len,
                                  mlp_hidden=mlp_hidden).items() if v is not None}
    c = {**OWN_DEFAULTS, **over}
    if c["arch"] not in ("llama", "gpt2"):
        raise CostError(f"--arch must be one of llama, gpt2, got {c['arch']!r}")
    for k in ("d_model", "layers", "heads", "seq_len"):
        if c[k] <= 0:
            raise CostError(f"--{k.replace('_', '-')} must be positive, got {c[k]}")
    if c["mlp_hidden"] < 0:
        raise CostError(f"--mlp-hidden must be positive, got {c['mlp_hidden']}")
    if c["d_model"] % c["heads"]:
        raise CostError(f"--d-model ({c['d_model']}) must be a multiple of --heads ({c['heads']})")
    if c["arch"] == "llama" and (c["d_model"] // c["heads"]) % 2:
        raise CostError(f"the head size d_model/heads = {c['d_model'] // c['heads']} must be even for rotary "
                        "embeddings")
    return ModelShape("own", c["arch"], c["d_model"], c["layers"], c["heads"],
                      _default_hidden(c["arch"], c["d_model"], c["mlp_hidden"]), c["vocab_size"], c["seq_len"])


def resolve_model(model: str = "own", seq_len: Optional[int] = None, **own: Any) -> ModelShape:
    """`own` (with `own_model_shape` overrides), a preset name, or a path to a config.json."""
    if model == "own":
        return own_model_shape(seq_len=seq_len, **own)
    given = [k for k, v in own.items() if v is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise CostError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} to --model own only")
    if model in PRESETS:
        return preset(model, seq_len)
    if model.endswith(".json") or os.sep in model or os.path.exists(model):
        return load_hf_config(model, seq_len)
    raise CostError(f"unknown model preset {model!r}; presets: {', '.join(PRESETS)} (or own, or a config.json path)")


# ---------------------------------------------------------------------------------------
# FLOPs


Flops = Dict[str, Dict[str, float]]


def _exact(x: float) -> float:
    return int(x) if float(x).is_integer() else x


def gemm_flops(shape: Union[ModelShape, Any], causal: bool = False) -> Flops:
    """MACs per training token by bucket (ROLES + "attention_core") and GEMM
    ("forward", "input_grad", "weight_grad"). Every bucket is present (0 when empty).

    `shape` is a ModelShape or a ModelConfig-like object. causal=False counts the attention
    core's full seq x seq square (as the usual FLOP split of LLaMA-7B does); causal=True only the
    unmasked half: (seq_len + 1) / 2 keys per query on average."""
    if not isinstance(shape, ModelShape):
        shape = ModelShape.from_model_config(shape)
    out: Flops = {b: {g: 0 for g in GEMMS} for b in BUCKETS}
    for lin in shape.linears():
        for g in GEMMS:
            out[lin.role][g] += lin.macs_per_token
    keys = (shape.seq_len + 1) / 2 if causal else shape.seq_len
    # per token and layer: Q·Kᵀ (heads·head_dim·keys) + P·V (the same); backward 2x, split evenly.
    core = _exact(2 * shape.layers * shape.heads * shape.head_dim * keys)
    for g in GEMMS:
        out[ATTENTION_CORE][g] = core
    return out


def total_macs(flops: Flops, include_attention_core: bool = True) -> float:
    """The sum of a `gemm_flops` table (optionally without the attention core)."""
    return sum(sum(v.values()) for b, v in flops.items() if include_attention_core or b != ATTENTION_CORE)


def shares(flops: Flops, include_attention_core: bool = True) -> Dict[str, Dict[str, float]]:
    """Each bucket's and GEMM's fraction of all MACs (fractions, not percent); the
    attention core is dropped from both numerator and denominator when excluded."""
    tot = total_macs(flops, include_attention_core)
    return {b: {g: (m / tot if tot else 0.0) for g, m in v.items()} for b, v in flops.items()
            if include_attention_core or b != ATTENTION_CORE}


# ---------------------------------------------------------------------------------------
# Precision per GEMM


def _operand_bits(spec: Any) -> int:
    """Width a GEMM runs at for one operand: 16 for None (unquantized), else its format's bits."""
    if spec is None:
        return 16
    fmt = getattr(spec, "fmt", spec)
    from .quantization import format_info

    try:
        bits = format_info(fmt).bits
    except ValueError as e:
        raise CostError(f"operand format {fmt!r}: {e}") from None
    return 4 if bits <= 4 else 8 if bits <= 8 else 16


def _recipe(recipe: Any) -> Any:
    from .recipe import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    try:
        return Recipe.get(recipe)
    except ValueError as e:
        from .recipe import recipes

        raise CostError(f"unknown recipe {recipe!r}; recipes: {', '.join(recipes())}") from e


def _operands(r: Any) -> Dict[str, Tuple[Any, Any]]:
    if getattr(r, "kind", "linear") == "quartet":
        # Quartet: X·H and W·H forward, both backward GEMMs on e2m1 dY and re-quantized W / X.
        try:
            ops = r.gemm_operands()
        except (AttributeError, TypeError, ValueError):  # pragma: no cover - fallback from its fields
            ops = {"forward": (r.input, r.weight), "input_grad": (r.gradient, r.weight),
                   "weight_grad": (r.gradient, r.input)}
        return ops
    return r.gemm_operands()


def gemm_bits(recipe: Any) -> Dict[str, Dict[str, int]]:
    """The width (4, 8 or 16) each bucket's GEMMs run at under `recipe` (a name or a Recipe):
    the wider of the two operands; modules whose role the recipe leaves unquantized and the
    attention core are 16."""
    r = _recipe(recipe)
    out: Dict[str, Dict[str, int]] = {}
    for role in ROLES:
        rr = r.for_role(role)
        if rr is None:
            out[role] = {g: 16 for g in GEMMS}
            continue
        ops = _operands(rr)
        out[role] = {g: max(_operand_bits(a), _operand_bits(b)) for g, (a, b) in ((g, ops[g]) for g in GEMMS)}
    out[ATTENTION_CORE] = {g: 16 for g in GEMMS}
    return out


def cost_breakdown(flops: Flops, recipe: Any, include_attention_core: bool = True) -> Dict[str, Dict[str, float]]:
    """Each bucket's and GEMM's cost under `recipe`, as a fraction of the model's 16-bit cost
    (MACs x COST_PER_MAC[bits] / total MACs); sums to `relative_cost`."""
    bits = gemm_bits(recipe)
    tot = total_macs(flops, include_attention_core)
    return {b: {g: (m * COST_PER_MAC[bits[b][g]] / tot if tot else 0.0) for g, m in v.items()}
            for b, v in flops.items() if include_attention_core or b != ATTENTION_CORE}


def relative_cost(flops: Flops, recipe: Any, include_attention_core: bool = True) -> float:
    """Theoretical GEMM cost of training under `recipe` relative to 16-bit training (1.0 = same
    cost). include_attention_core=False leaves the (always 16-bit) attention core out of both
    sides: the cost of the linear layers alone."""
    return sum(sum(v.values()) for v in cost_breakdown(flops, recipe, include_attention_core).values())


# ---------------------------------------------------------------------------------------
# Report


#: A secondary source's FLOP split of LLaMA-7B at 4K context (numerics.md §7), and Zhou et al.'s claim.
REFERENCE_SPLIT_LLAMA7B = {"mlp": 0.57, "attention": 0.287, ATTENTION_CORE: 0.143}
ZHOU_CLAIMED_SAVING = 0.30


def assumptions(causal: bool = False) -> List[str]:
    """The cost model's assumptions, as printed by `fp4swift cost`."""
    mask = ("only the causal (unmasked) half of the seq x seq scores: (seq_len + 1)/2 keys per query" if causal else
            "the full seq x seq square (no causal halving; a causal kernel that skips masked tiles does about half)")
    return [a.format(core_mask=mask) for a in ASSUMPTIONS]


def report(shape: ModelShape, recipes: Sequence[Any], causal: bool = False) -> Dict[str, Any]:
    """Everything `fp4swift cost` prints, as JSON-ready data."""
    flops = gemm_flops(shape, causal=causal)
    out: Dict[str, Any] = {
        "model": {**asdict(shape), "description": shape.describe()},
        "causal_attention_core": causal,
        "macs_per_token": flops,
        "total_macs_per_token": total_macs(flops),
        "shares": shares(flops),
        "shares_without_attention_core": shares(flops, include_attention_core=False),
        "recipes": {},
        "assumptions": assumptions(causal),
    }
    for rec in recipes:
        r = _recipe(rec)
        with_core = relative_cost(flops, r)
        linears = relative_cost(flops, r, include_attention_core=False)
        out["recipes"][r.name] = {"bits": gemm_bits(r), "relative_cost": with_core,
                                  "relative_cost_without_attention_core": linears,
                                  "saving": 1.0 - with_core, "saving_without_attention_core": 1.0 - linears}
    return out


def _fmt_macs(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.4g}"


_LABELS = {"attention": "attention linears", "mlp": "mlp (FFN)", "lm_head": "lm_head", "other": "other",
           ATTENTION_CORE: "attention core"}


def format_report(rep: Dict[str, Any], include_attention_core: bool = True) -> str:
    """The text `fp4swift cost` prints for a `report`."""
    lines: List[str] = []
    m = rep["model"]
    flops: Flops = rep["macs_per_token"]
    buckets = [b for b in BUCKETS if include_attention_core or b != ATTENTION_CORE]
    tot = total_macs(flops, include_attention_core)
    sh = rep["shares"] if include_attention_core else rep["shares_without_attention_core"]
    lines.append(f"GEMM cost model: {m['description']}")
    lines.append(f"GEMM MACs per training token: {_fmt_macs(tot)} (forward {_fmt_macs(tot / 3)}; input-grad and "
                 f"weight-grad GEMMs equal the forward){'' if include_attention_core else '; attention core excluded'}")
    lines.append("")
    lines.append("FLOP shares, % of all GEMM MACs" + ("" if include_attention_core else " without the attention core"))
    head = f"{'bucket':18} {'forward':>8} {'input_grad':>10} {'weight_grad':>11} {'total':>7} {'MACs/token fwd':>15}"
    lines.append(head)
    lines.append("-" * len(head))
    for b in buckets:
        s = sh[b]
        lines.append(f"{_LABELS[b]:18} {100 * s['forward']:8.2f} {100 * s['input_grad']:10.2f} "
                     f"{100 * s['weight_grad']:11.2f} {100 * sum(s.values()):7.2f} {_fmt_macs(flops[b]['forward']):>15}")
    col = {g: sum(sh[b][g] for b in buckets) for g in GEMMS}
    lines.append(f"{'total':18} {100 * col['forward']:8.2f} {100 * col['input_grad']:10.2f} "
                 f"{100 * col['weight_grad']:11.2f} {100 * sum(col.values()):7.2f} {_fmt_macs(tot / 3):>15}")
    if m["name"] == "llama-7b" and m["seq_len"] == 4096:
        lay = {b: sum(flops[b].values()) for b in ("mlp", "attention", ATTENTION_CORE)}
        lay_tot = sum(lay.values())
        ref = REFERENCE_SPLIT_LLAMA7B
        lines.append(f"vs the secondary source's LLaMA-7B 4K split (FFN {100 * ref['mlp']:.0f}%, attention linears "
                     f"{100 * ref['attention']:.1f}%, attention core {100 * ref[ATTENTION_CORE]:.1f}%; no LM head): here, without the LM head, FFN {100 * lay['mlp'] / lay_tot:.1f}%, attention "
                     f"linears {100 * lay['attention'] / lay_tot:.1f}%, attention core "
                     f"{100 * lay[ATTENTION_CORE] / lay_tot:.1f}%")
    lines.append("")
    lines.append("Relative GEMM cost vs 16-bit training (bits per GEMM as forward/input_grad/weight_grad)")
    head = (f"{'recipe':12} {'attention':>9} {'mlp':>8} {'lm_head':>8} {'other':>8} {'core':>5} "
            f"{'cost (all)':>10} {'cost (linears)':>14} {'saving':>7}")
    lines.append(head)
    lines.append("-" * len(head))
    for name, r in rep["recipes"].items():
        bits = r["bits"]
        cell = {b: "/".join(str(bits[b][g]) for g in GEMMS) for b in ROLES}
        main = r["relative_cost"] if include_attention_core else r["relative_cost_without_attention_core"]
        lines.append(f"{name:12} {cell['attention']:>9} {cell['mlp']:>8} {cell['lm_head']:>8} {cell['other']:>8} "
                     f"{bits[ATTENTION_CORE]['forward']:>5} {r['relative_cost']:10.3f} "
                     f"{r['relative_cost_without_attention_core']:14.3f} {100 * (1 - main):6.1f}%")
    lines.append("cost (all): attention core (16-bit) in the denominator; cost (linears): linear layers only; "
                 f"saving = 1 - cost ({'all' if include_attention_core else 'linears'}).")
    z = rep["recipes"].get("zhou2025")
    if z is not None:
        lines.append(f"Zhou et al. claim ~{100 * ZHOU_CLAIMED_SAVING:.0f}% lower computational cost than 16-bit "
                     f"training; this model gives {100 * z['saving']:.1f}% (with the attention core) and "
                     f"{100 * z['saving_without_attention_core']:.1f}% (linears only) for zhou2025.")
    lines.append("")
    lines.append("Assumptions:")
    lines.extend(f"- {a}" for a in rep["assumptions"])
    return "\n".join(lines)


def parse_recipes(spec: Optional[str]) -> List[str]:
    """A comma-separated --recipes value -> recipe names (None: every recipe); CostError on an
    unknown or repeated name."""
    from .recipe import recipes

    known = recipes()
    if spec is None:
        return known
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise CostError("--recipes is empty; name at least one recipe")
    for n in names:
        if n not in known:
            raise CostError(f"unknown recipe {n!r}; recipes: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise CostError(f"--recipes names a recipe twice: {spec}")
    return names


def cost_command(args: Any) -> int:
    """`fp4swift cost` (see cli.py): prints the table or, with --json, the `report` as JSON."""
    import sys

    try:
        if args.seq_len is not None and args.seq_len <= 0:
            raise CostError(f"--seq-len must be positive, got {args.seq_len}")
        shape = resolve_model(args.model, seq_len=args.seq_len, arch=args.arch, d_model=args.d_model,
                              layers=args.layers, heads=args.heads, mlp_hidden=args.mlp_hidden)
        names = parse_recipes(args.recipes)
        rep = report(shape, names, causal=args.causal)
    except CostError as e:
        print(f"fp4swift cost: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        rep["include_attention_core"] = args.include_attention_core
        print(json.dumps(rep, indent=2))
    else:
        print(format_report(rep, include_attention_core=args.include_attention_core))
    return 0
