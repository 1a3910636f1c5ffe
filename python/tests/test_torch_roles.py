"""Module roles, the module policy of `convert` (zhou2025: FP8 attention, FP4 MLP, float32
LM head) on the project's model and on Hugging Face LLaMA / GPT-2 models, and the
target-precision schedule (numerics.md §7)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fp4swift as f4  # noqa: E402
import fp4swift.torch as f4t  # noqa: E402
from fp4swift.train.model import ModelConfig, build_model  # noqa: E402
from reference import ref_quantize  # noqa: E402


@pytest.mark.parametrize("name,role", [
    ("layers.0.self_attn.q_proj", "attention"), ("layers.3.self_attn.o_proj", "attention"),
    ("model.layers.0.mlp.gate_proj", "mlp"), ("model.layers.0.mlp.down_proj", "mlp"),
    ("transformer.h.0.attn.c_attn", "attention"), ("transformer.h.0.attn.c_proj", "attention"),
    ("transformer.h.0.mlp.c_fc", "mlp"), ("transformer.h.0.mlp.c_proj", "mlp"),
    ("gpt_neox.layers.0.attention.dense", "attention"), ("gpt_neox.layers.0.mlp.dense_4h_to_h", "mlp"),
    ("lm_head", "lm_head"), ("embed_out", "lm_head"), ("score", "other"), ("classifier.dense", "other"),
    ("", "other"),
])
def test_module_role_names(name, role):
    assert f4.module_role(name) == role


def own_model(d=32, layers=2, heads=2):
    torch.manual_seed(0)
    return build_model(ModelConfig(d_model=d, layers=layers, heads=heads, seq_len=16), 0)


def recipes_by_name(model):
    return {n: (m.recipe.name if hasattr(m, "recipe") else None) for n, m in f4t.linear_layers(model)}


def test_own_model_roles_and_zhou_policy():
    m = own_model()
    roles = dict(f4t.module_roles(m))
    assert roles["layers.0.self_attn.q_proj"] == "attention" and roles["layers.1.mlp.up_proj"] == "mlp"
    assert roles["lm_head"] == "lm_head"
    assert sorted(set(roles.values())) == ["attention", "lm_head", "mlp"]
    f4t.convert_(m, "zhou2025")
    got = recipes_by_name(m)
    for name, role in roles.items():
        assert got[name] == {"attention": "fp8", "mlp": "zhou2025", "lm_head": None}[role], name
    assert type(m.lm_head) is torch.nn.Linear


def test_reconvert_follows_the_new_policy_and_shares_parameters():
    m = own_model()
    params = {n: p for n, p in m.named_parameters()}
    f4t.convert_(m, "wang2025")
    assert set(recipes_by_name(m).values()) == {"wang2025", None}
    f4t.convert_(m, "zhou2025")
    assert set(recipes_by_name(m).values()) == {"fp8", "zhou2025", None}
    # A policy that keeps attention in float32 turns converted layers back into nn.Linear.
    r = f4.Recipe.get("zhou2025").replace(name="zhou-mlp-only", roles=(("attention", None), ("lm_head", None),
                                                                       ("other", None)))
    f4t.convert_(m, r)
    assert type(m.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert isinstance(m.layers[0].mlp.gate_proj, f4t.FP4Linear)
    for n, p in m.named_parameters():
        assert p is params[n], n


def test_each_gemm_uses_the_precision_its_role_gives_it():
    """Through autograd: q_proj (attention) computes its forward on e4m3 per-row operands,
    gate_proj (MLP) on e2m1 block(16) operands; both backward GEMMs on FP8 operands."""
    m = own_model(d=32)
    f4t.convert_(m, "zhou2025")
    for layer, fmt, gran in ((m.layers[0].self_attn.q_proj, "e4m3", "row"),
                             (m.layers[0].mlp.gate_proj, "e2m1", "block(16)")):
        rng = np.random.default_rng(3)
        x = torch.from_numpy((rng.standard_t(4, size=(8, 32)) * 2).astype(np.float32)).requires_grad_()
        y = layer(x)
        W = layer.weight.detach().numpy()
        X = x.detach().numpy()
        xq = ref_quantize(X, fmt=fmt, granularity=gran, scale_rule="absmax").xhat.astype(np.float64)
        wq = ref_quantize(W, fmt=fmt, granularity=gran, scale_rule="absmax").xhat.astype(np.float64)
        np.testing.assert_allclose(y.detach().numpy(), xq @ wq.T, rtol=1e-5, atol=1e-6)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        y.backward(torch.from_numpy(dy))
        g = ref_quantize(dy, fmt="e5m2", granularity="tensor", scale_rule="pow2").xhat.astype(np.float64)
        wb = ref_quantize(W, fmt="e4m3", granularity="column", scale_rule="absmax").xhat.astype(np.float64)
        xb = ref_quantize(X, fmt="e4m3", granularity="column", scale_rule="absmax").xhat.astype(np.float64)
        np.testing.assert_allclose(x.grad.numpy(), g @ wb, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.weight.grad.numpy(), g.T @ xb, rtol=1e-5, atol=1e-6)


def _hf():
    return pytest.importorskip("transformers")


def test_hf_llama_roles():
    tr = _hf()
    cfg = tr.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    model = tr.LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 64, (2, 16))
    ref = model(x).logits
    f4t.convert_(model, "zhou2025")
    got = recipes_by_name(model)
    assert got["model.layers.0.self_attn.k_proj"] == "fp8" and got["model.layers.0.mlp.down_proj"] == "zhou2025"
    assert got["lm_head"] is None
    out = model(x).logits
    rel = float(((out - ref).norm() / ref.norm()).detach())
    assert 0 < rel < 0.3, rel
    out.sum().backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_hf_gpt2_conv1d_layers():
    """GPT-2's Conv1D (weight [in, out]) is converted too: c_attn / attn.c_proj are attention,
    c_fc / mlp.c_proj are MLP. Under fp32 the converted model equals the original."""
    tr = _hf()
    cfg = tr.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    torch.manual_seed(0)
    base = tr.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 64, (2, 16))
    ref = base(x).logits
    same = f4t.convert_(copy.deepcopy(base), "fp32")
    assert torch.allclose(same(x).logits, ref, rtol=1e-5, atol=1e-6)
    model = f4t.convert_(copy.deepcopy(base), "zhou2025")
    got = recipes_by_name(model)
    assert got == {"transformer.h.0.attn.c_attn": "fp8", "transformer.h.0.attn.c_proj": "fp8",
                   "transformer.h.0.mlp.c_fc": "zhou2025", "transformer.h.0.mlp.c_proj": "zhou2025", "lm_head": None}
    assert isinstance(model.transformer.h[0].attn.c_attn, f4t.FP4Conv1D)
    out = model(x, labels=x)
    out.loss.backward()
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.grad is not None and w.grad.shape == w.shape == (32, 128)
    # Converting back to float32 restores Conv1D modules with the same parameters.
    back = f4t.convert_(model, f4.Recipe.get("fp32").replace(name="all-float", roles=tuple(
        (r, None) for r in f4.ROLES)))
    assert type(back.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert back.transformer.h[0].mlp.c_fc.weight is w


# ---------------------------------------------------------------------------
# Target-precision schedule


def test_schedule_validation():
    m = own_model()
    with pytest.raises(ValueError, match="convert"):
        f4t.PrecisionSchedule(m, total_steps=10)
    f4t.convert_(m, "zhou2025")
    for bad in (-0.1, 1.5, float("nan"), "0.9", True):
        with pytest.raises(ValueError):
            f4t.PrecisionSchedule(m, total_steps=10, switch_at=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError):
            f4t.PrecisionSchedule(m, total_steps=bad)
    with pytest.raises(ValueError):
        f4t.PrecisionSchedule(m, total_steps=10, target="fp9")


@pytest.mark.parametrize("total,at,expected", [(200, 0.9, 180), (100, 0.29, 29), (7, 0.5, 4), (10, 0.0, 0),
                                               (10, 1.0, 10)])
def test_schedule_switch_step(total, at, expected):
    m = f4t.convert_(own_model(), "zhou2025")
    s = f4t.PrecisionSchedule(m, total_steps=total, switch_at=at)
    assert s.switch_step == expected


def test_schedule_switches_exactly_at_the_step_without_a_loss_spike():
    """Tiny model, zhou2025, 40 steps on a repeated text, switch to fp8 at 0.5: every converted
    layer runs its recipe before step 20 and fp8 from step 20 on; the loss right after the
    switch stays within 10% of the loss just before it (bound), and keeps falling."""
    torch.manual_seed(0)
    m = f4t.convert_(build_model(ModelConfig(d_model=32, layers=2, heads=2, seq_len=32), 0), "zhou2025")
    sched = f4t.PrecisionSchedule(m, total_steps=40, switch_at=0.5, target="fp8")
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 40, dtype=np.uint8)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses, switched_at = [], []
    for step in range(40):
        if sched.step(step):
            switched_at.append(step)
        names = {l.recipe.name for l in sched.layers}
        assert names == ({"fp8"} if step >= 20 else {"fp8", "zhou2025"}), (step, names)
        starts = rng.integers(0, len(text) - 33, size=8)
        batch = np.stack([text[s:s + 33] for s in starts]).astype(np.int64)
        x, y = torch.from_numpy(batch[:, :-1]), torch.from_numpy(batch[:, 1:])
        loss = m.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert switched_at == [20]
    assert not sched.step(39)  # once only
    before = np.mean(losses[17:20])
    after = np.mean(losses[20:23])
    assert after <= 1.1 * before, (before, after)
    assert np.mean(losses[-3:]) < before
    assert np.all(np.isfinite(losses))


def test_schedule_to_fp32_matches_the_plain_layer():
    m = f4t.convert_(own_model(), "zhou2025")
    plain = own_model()
    sched = f4t.PrecisionSchedule(m, total_steps=10, switch_at=0.3, target="fp32")
    assert sched.step(3)
    x = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(m(x), plain(x), rtol=1e-5, atol=1e-5)
