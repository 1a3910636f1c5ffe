"""Module roles of a transformer's linear layers (numerics.md §7), from their qualified names.

A recipe's module policy (`Recipe.roles`) maps roles to recipes; `fp4swift.torch.convert`
asks `module_role` for each linear. Names covered: this project's models, Hugging Face
LLaMA / Mistral / Qwen (q_proj … down_proj), GPT-2 (attn.c_attn, attn.c_proj, mlp.c_fc,
mlp.c_proj), GPT-NeoX / Falcon (query_key_value, dense, dense_h_to_4h, dense_4h_to_h),
OPT / BART (q_proj … out_proj, fc1, fc2) and Mixtral experts (w1, w2, w3).
"""
from __future__ import annotations

from typing import Tuple

#: attention: the q, k, v and output projections; mlp: the feed-forward linears; lm_head: the
#: output projection onto the vocabulary; other: anything else (e.g. a classifier, a router).
ROLES: Tuple[str, ...] = ("attention", "mlp", "lm_head", "other")

#: Last name component of a language-model head.
LM_HEAD_NAMES = ("lm_head", "head", "output", "embed_out")

_ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "qkv_proj", "c_attn", "query_key_value",
              "query", "key", "value", "wq", "wk", "wv", "wo", "Wqkv"}
_MLP = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3",
        "dense_h_to_4h", "dense_4h_to_h", "fc_in", "fc_out"}
_ATTENTION_PARENTS = ("attn", "attention", "self_attn", "selfattention")
_MLP_PARENTS = ("mlp", "ffn", "feed_forward", "feedforward", "ff")


def module_role(qualified_name: str) -> str:
    """The role of the linear layer called `qualified_name` (e.g. "h.0.attn.c_proj"): one of ROLES."""
    parts = [p for p in qualified_name.split(".") if p]
    if not parts:
        return "other"
    last = parts[-1]
    if last in LM_HEAD_NAMES:
        return "lm_head"
    if last in _ATTENTION:
        return "attention"
    if last in _MLP:
        return "mlp"
    # Unknown or ambiguous last names (GPT-2's c_proj, NeoX's dense, proj, out): the nearest
    # enclosing block decides.
    for p in reversed(parts[:-1]):
        low = p.lower()
        if low in _ATTENTION_PARENTS or low.endswith("attn") or low.endswith("attention"):
            return "attention"
        if low in _MLP_PARENTS or low.endswith("mlp"):
            return "mlp"
    return "other"
