"""The theoretical GEMM cost model (numerics.md §7, `fp4swift cost`).

MAC counts are written out by hand here from the layer shapes (K·N per token and GEMM for a
K-in, N-out linear; 2·seq·heads·head_dim per token and layer for Q·Kᵀ + P·V), independent of
fp4swift.cost; relative costs are hand-weighted sums of those counts with FP4 = 1/4, FP8 = 1/2,
16-bit = 1 per MAC.
"""
from __future__ import annotations

import json

import pytest

import fp4swift as f4
from fp4swift import cli
from fp4swift import cost as fc

GEMMS = ("forward", "input_grad", "weight_grad")


def per_gemm(x):
    return {g: x for g in GEMMS}


# ---------------------------------------------------------------------------------------
# MAC counts


def test_small_llama_by_hand():
    # d=64, 2 layers, 4 heads (head_dim 16), SwiGLU hidden 96, vocab 100, seq 16.
    s = fc.ModelShape("tiny", "llama", d_model=64, layers=2, heads=4, hidden=96, vocab_size=100, seq_len=16)
    f = fc.gemm_flops(s)
    attention = 2 * (64 * 64 + 64 * 64 + 64 * 64 + 64 * 64)  # q, k, v, o per layer = 32768
    mlp = 2 * (64 * 96 + 64 * 96 + 96 * 64)                  # gate, up, down per layer = 36864
    lm_head = 64 * 100                                       # 6400
    core = 2 * (16 * 4 * 16 + 16 * 4 * 16)                   # Q·Kᵀ + P·V: seq·heads·head_dim each = 4096
    assert (attention, mlp, lm_head, core) == (32768, 36864, 6400, 4096)
    assert f == {"attention": per_gemm(attention), "mlp": per_gemm(mlp), "lm_head": per_gemm(lm_head),
                 "other": per_gemm(0), "attention_core": per_gemm(core)}
    assert fc.total_macs(f) == 3 * (32768 + 36864 + 6400 + 4096)
    assert fc.total_macs(f, include_attention_core=False) == 3 * (32768 + 36864 + 6400)
    # causal: (seq + 1)/2 = 8.5 keys per query on average
    fc_causal = fc.gemm_flops(s, causal=True)
    assert fc_causal["attention_core"]["forward"] == 2 * 2 * 4 * 16 * 8.5 == 2176
    assert fc_causal["mlp"] == f["mlp"]
    sh = fc.shares(f)
    assert sum(sum(v.values()) for v in sh.values()) == pytest.approx(1.0)
    assert sh["mlp"]["forward"] == pytest.approx(36864 / (3 * 80128))


def test_gqa_projects_k_and_v_to_kv_heads():
    # d=64, 8 heads of 8, 2 kv heads: k, v are 64 x 16; q, o 64 x 64.
    s = fc.ModelShape("gqa", "llama", 64, 1, 8, 128, 10, 32, kv_heads=2)
    f = fc.gemm_flops(s)
    assert f["attention"]["forward"] == 64 * 64 + 64 * 16 + 64 * 16 + 64 * 64 == 10240
    assert f["mlp"]["forward"] == 3 * 64 * 128
    assert f["attention_core"]["forward"] == 2 * 32 * 8 * 8  # every query head attends: 4096
    # the same from a Hugging Face config, with a head_dim that differs from hidden/heads
    hf = {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 3, "vocab_size": 10,
          "max_position_embeddings": 2048}
    s2 = fc.shape_from_hf_config(hf, seq_len=8)
    f2 = fc.gemm_flops(s2)
    assert f2["attention"]["forward"] == 3 * (64 * 128 + 64 * 64 + 64 * 64 + 128 * 64)
    assert f2["attention_core"]["forward"] == 3 * 2 * 8 * 4 * 32
    assert s2.seq_len == 8


def test_gpt2_config_json(tmp_path):
    # n_embd 48, 3 layers, 4 heads, n_inner None -> 4·48 = 192, vocab 50, 32 positions.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 48, "n_layer": 3, "n_head": 4, "n_inner": None,
                                "vocab_size": 50, "n_positions": 32, "n_ctx": 32}))
    s = fc.load_hf_config(path)
    assert (s.arch, s.hidden, s.seq_len) == ("gpt2", 192, 32)
    f = fc.gemm_flops(s)
    assert f["attention"]["forward"] == 3 * (48 * 144 + 48 * 48) == 27648   # c_attn d x 3d, c_proj d x d
    assert f["mlp"]["forward"] == 3 * (48 * 192 + 192 * 48) == 55296        # c_fc, mlp.c_proj
    assert f["lm_head"]["forward"] == 48 * 50
    assert f["attention_core"]["forward"] == 3 * 2 * 32 * 48
    assert f["other"]["forward"] == 0
    # a directory holding config.json works too; n_inner set explicitly
    path.write_text(json.dumps({"n_embd": 48, "n_layer": 1, "n_head": 4, "n_inner": 100, "vocab_size": 50,
                                "n_positions": 32}))
    assert fc.gemm_flops(fc.load_hf_config(tmp_path))["mlp"]["forward"] == 2 * 48 * 100


def test_gpt2_module_roles_come_from_module_role():
    s = fc.ModelShape("g", "gpt2", 48, 1, 4, 192, 50, 32)
    roles = {lin.name.split(".", 3)[-1]: lin.role for lin in s.linears()}
    assert roles == {"attn.c_attn": "attention", "attn.c_proj": "attention", "mlp.c_fc": "mlp",
                     "mlp.c_proj": "mlp", "lm_head": "lm_head"}
    assert all(lin.role == f4.module_role(lin.name) for lin in s.linears())


def test_own_model_defaults_by_hand():
    # TrainConfig defaults: llama, d 128, 4 layers, 4 heads, seq 128, byte vocab 256,
    # hidden = ceil(8·128/3/32)·32 = 352.
    expect = {"attention": 4 * 4 * 128 * 128, "mlp": 4 * 3 * 128 * 352, "lm_head": 128 * 256, "other": 0,
              "attention_core": 4 * 2 * 128 * 128}
    got = {b: v["forward"] for b, v in fc.gemm_flops(fc.own_model_shape()).items()}
    assert got == expect
    g = fc.own_model_shape(arch="gpt2", d_model=64, layers=2, heads=2, seq_len=32)
    assert fc.gemm_flops(g)["mlp"]["forward"] == 2 * 2 * 64 * 256
    with pytest.raises(fc.CostError, match="multiple of --heads"):
        fc.own_model_shape(d_model=100, heads=3)
    with pytest.raises(fc.CostError, match="must be even"):
        fc.own_model_shape(d_model=12, heads=4)


@pytest.mark.parametrize("over", [{}, dict(arch="gpt2"), dict(d_model=96, heads=6, layers=3, seq_len=64),
                                  dict(arch="gpt2", d_model=64, mlp_hidden=100), dict(d_model=200, heads=5)])
def test_own_model_matches_train_config(over):
    # cost.py keeps TrainConfig's defaults and ModelConfig's hidden rule without importing torch
    pytest.importorskip("torch")
    from fp4swift.train.config import TrainConfig

    mc = TrainConfig(**over).model_config()
    mc.validate()
    assert fc.own_model_shape(**over) == fc.ModelShape.from_model_config(mc, name="own")
    assert fc.gemm_flops(mc) == fc.gemm_flops(fc.own_model_shape(**over))  # a ModelConfig is accepted directly


def test_own_model_config_gpt2():
    pytest.importorskip("torch")
    from fp4swift.train.model import ModelConfig

    cfg = ModelConfig(arch="gpt2", d_model=64, layers=2, heads=4, seq_len=32, mlp_hidden=100)
    f = fc.gemm_flops(cfg)
    assert f["attention"]["forward"] == 2 * (64 * 192 + 64 * 64)
    assert f["mlp"]["forward"] == 2 * (64 * 100 + 100 * 64)
    assert f["lm_head"]["forward"] == 64 * 256


def test_llama7b_shares_vs_the_secondary_source():
    f = fc.gemm_flops(fc.preset("llama-7b"))
    # per layer and token, forward: FFN 3·4096·11008, attention linears 4·4096², core 2·4096·4096
    ffn, att, core = 3 * 4096 * 11008, 4 * 4096 ** 2, 2 * 4096 * 4096
    assert f["mlp"]["forward"] == 32 * ffn and f["attention"]["forward"] == 32 * att
    assert f["attention_core"]["forward"] == 32 * core and f["lm_head"]["forward"] == 4096 * 32000
    layer = ffn + att + core
    # The source's split (FFN 57%, attention linears 28.7%, core 14.3%) leaves out the LM head and
    # counts the full (non-causal) score square; so does this comparison. We get 57.33 / 28.44 /
    # 14.22: within 0.5 percentage points (the source's rounding / exact counting is unknown).
    for got, ref in ((ffn / layer, 0.57), (att / layer, 0.287), (core / layer, 0.143)):
        assert abs(got - ref) < 0.005
    assert (round(100 * ffn / layer, 2), round(100 * att / layer, 2), round(100 * core / layer, 2)) == \
        (57.33, 28.44, 14.22)
    sh = fc.shares(f)  # with the LM head (1.71%) in the denominator
    assert sum(sh["lm_head"].values()) == pytest.approx(4096 * 32000 / (32 * layer + 4096 * 32000))


# ---------------------------------------------------------------------------------------
# Relative costs


@pytest.fixture(scope="module")
def llama7b():
    A, M, H, C = 32 * 4 * 4096 ** 2, 32 * 3 * 4096 * 11008, 4096 * 32000, 32 * 2 * 4096 * 4096
    return fc.gemm_flops(fc.preset("llama-7b")), (A, M, H, C)


def test_fp32_is_one(llama7b):
    f, _ = llama7b
    assert fc.relative_cost(f, "fp32") == 1.0
    assert fc.relative_cost(f, "fp32", include_attention_core=False) == 1.0


def test_fp8_and_quartet_per_role(llama7b):
    f, (A, M, H, C) = llama7b
    for name, factor in (("fp8", 0.5), ("quartet", 0.25), ("nvfp4", 0.25)):
        br = fc.cost_breakdown(f, name)
        tot = fc.total_macs(f)
        for role in ("attention", "mlp"):  # every quantized linear at exactly 1/2 or 1/4
            assert sum(br[role].values()) * tot / sum(f[role].values()) == pytest.approx(factor)
        # LM head (the recipes' default policy keeps it unquantized) and attention core at 16-bit
        whole = (factor * 3 * (A + M) + 3 * H + 3 * C) / (3 * (A + M + H + C))
        linears = (factor * 3 * (A + M) + 3 * H) / (3 * (A + M + H))
        assert fc.relative_cost(f, name) == pytest.approx(whole, rel=1e-12)
        assert fc.relative_cost(f, name, include_attention_core=False) == pytest.approx(linears, rel=1e-12)
    assert fc.gemm_bits("quartet")["mlp"] == per_gemm(4)
    assert fc.gemm_bits("fp8")["attention"] == per_gemm(8)


def test_fp8_is_half_when_every_linear_is_quantized():
    # a model with no LM head cost to speak of: a custom recipe quantizing the LM head too
    rec = f4.Recipe.get("fp8").replace(name="fp8-all", roles=())
    s = fc.ModelShape("t", "llama", 64, 2, 4, 96, 100, 16)
    f = fc.gemm_flops(s)
    assert fc.relative_cost(f, rec, include_attention_core=False) == pytest.approx(0.5)
    q = f4.Recipe.get("quartet").replace(name="quartet-all", roles=())
    assert fc.relative_cost(f, q, include_attention_core=False) == pytest.approx(0.25)


def test_zhou2025_by_hand(llama7b):
    f, (A, M, H, C) = llama7b
    # MLP: forward FP4 (1/4), both backward GEMMs FP8 (1/2); attention linears FP8 in all three;
    # LM head and the attention core 16-bit.
    num = A * 3 * 0.5 + M * (0.25 + 0.5 + 0.5) + 3 * H + 3 * C
    assert fc.relative_cost(f, "zhou2025") == pytest.approx(num / (3 * (A + M + H + C)), rel=1e-12)
    assert fc.relative_cost(f, "zhou2025", include_attention_core=False) == \
        pytest.approx((num - 3 * C) / (3 * (A + M + H)), rel=1e-12)
    # from the shares: 56.35%·5/12 + 27.96%·1/2 + 1.71% + 13.98% = 0.5315, i.e. a 47% saving
    assert fc.relative_cost(f, "zhou2025") == pytest.approx(0.5635 * 5 / 12 + 0.2796 / 2 + 0.0171 + 0.1398, abs=2e-4)
    assert fc.gemm_bits("zhou2025") == {"attention": per_gemm(8), "mlp": {"forward": 4, "input_grad": 8,
                                                                           "weight_grad": 8},
                                        "lm_head": per_gemm(16), "other": per_gemm(16),
                                        "attention_core": per_gemm(16)}


def test_forward_only_fp4_and_mixed_widths(llama7b):
    f, (A, M, H, C) = llama7b
    # fp4-direct / wang2025: FP4 forward, dY unquantized -> both backward GEMMs 16-bit
    for name in ("fp4-direct", "wang2025"):
        assert fc.gemm_bits(name)["attention"] == {"forward": 4, "input_grad": 16, "weight_grad": 16}
        num = (A + M) * (0.25 + 1 + 1) + 3 * H + 3 * C
        assert fc.relative_cost(f, name) == pytest.approx(num / (3 * (A + M + H + C)), rel=1e-12)
    # mxfp4 quantizes dY too, grouped along each backward GEMM's reduction: FP4 in all three GEMMs
    assert fc.gemm_bits("mxfp4")["mlp"] == {"forward": 4, "input_grad": 4, "weight_grad": 4}
    # e2m1 X with an e4m3 W runs at 8 bits
    mixed = f4.Recipe("mixed", input=f4.QuantizerSpec.make("e2m1", "row", "absmax"),
                      weight=f4.QuantizerSpec.make("e4m3", "row", "absmax"))
    assert fc.gemm_bits(mixed)["mlp"] == {"forward": 8, "input_grad": 16, "weight_grad": 16}


def test_bad_inputs_raise_cost_error(tmp_path):
    with pytest.raises(fc.CostError, match="unknown recipe"):
        fc.relative_cost(fc.gemm_flops(fc.preset("gpt2")), "fp3")
    with pytest.raises(fc.CostError, match="unknown model preset"):
        fc.preset("llama-9b")
    with pytest.raises(fc.CostError, match="missing 'intermediate_size'"):
        fc.shape_from_hf_config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                                 "vocab_size": 10, "max_position_embeddings": 8})
    with pytest.raises(fc.CostError, match="positive integer"):
        fc.shape_from_hf_config({"n_embd": 48, "n_layer": 0, "n_head": 4, "vocab_size": 5, "n_positions": 8})
    with pytest.raises(fc.CostError, match="cannot read"):
        fc.load_hf_config(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_llama7b_table(capsys):
    assert cli.main(["cost", "--model", "llama-7b"]) == 0
    out = capsys.readouterr().out
    assert "d_model 4096, 32 layers, 32 heads, SwiGLU MLP hidden 11008, vocab 32000, seq_len 4096" in out
    for name in f4.recipes():
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    zhou = next(line for line in out.splitlines() if line.startswith("zhou2025 "))
    assert zhou.split()[1:] == ["8/8/8", "4/8/8", "16/16/16", "16/16/16", "16", "0.531", "0.455", "46.9%"]
    assert "FFN 57.3%, attention linears 28.4%, attention core 14.2%" in out
    assert "Embedding lookups" in out and "wider one" in out and "Zhou et al. claim ~30%" in out


def test_cli_json_matches_api(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 8,
                               "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 10,
                               "max_position_embeddings": 64}))
    assert cli.main(["cost", "--model", str(cfg), "--seq-len", "16", "--recipes", "fp32,zhou2025", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert list(rep["recipes"]) == ["fp32", "zhou2025"]
    assert rep["model"]["seq_len"] == 16 and rep["model"]["kv_heads"] == 2
    assert rep["macs_per_token"]["attention"]["forward"] == 2 * (64 * 64 + 2 * 64 * 16 + 64 * 64)
    assert rep["macs_per_token"]["attention_core"]["forward"] == 2 * 2 * 16 * 64
    f = fc.gemm_flops(fc.load_hf_config(cfg, seq_len=16))
    assert rep["recipes"]["zhou2025"]["relative_cost"] == pytest.approx(fc.relative_cost(f, "zhou2025"))
    assert rep["recipes"]["fp32"]["relative_cost"] == 1.0


def test_cli_own_model_and_exclude_core(capsys):
    assert cli.main(["cost", "--arch", "gpt2", "--d-model", "64", "--layers", "2", "--heads", "2",
                     "--recipes", "fp8", "--exclude-attention-core"]) == 0
    out = capsys.readouterr().out
    assert "own: GPT-2-style, d_model 64, 2 layers, 2 heads, GELU MLP hidden 256, vocab 256, seq_len 128" in out
    assert not any(line.startswith("attention core") for line in out.splitlines())
    fp8 = next(line for line in out.splitlines() if line.startswith("fp8 "))
    # linears only: (1/2·(A + M) + H) / (A + M + H), A = 2·(64·192 + 64·64), M = 2·2·64·256, H = 64·256
    A, M, H = 2 * (64 * 192 + 64 * 64), 2 * 2 * 64 * 256, 64 * 256
    assert fp8.split()[-2] == f"{(0.5 * (A + M) + H) / (A + M + H):.3f}"


@pytest.mark.parametrize("argv,msg", [
    (["--model", "llama-9b"], "unknown model preset 'llama-9b'"),
    (["--recipes", "fp32,fp3"], "unknown recipe 'fp3'"),
    (["--recipes", "fp8,fp8"], "names a recipe twice"),
    (["--model", "llama-7b", "--d-model", "64"], "--d-model applies to --model own only"),
    (["--seq-len", "0"], "--seq-len must be positive"),
    (["--d-model", "100", "--heads", "3"], "multiple of"),
])
def test_cli_errors(capsys, argv, msg):
    assert cli.main(["cost"] + argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and err.startswith("fp4swift cost: error: ")


@pytest.mark.parametrize("content,msg", [
    (None, "cannot read"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"hidden_size": 64, "num_attention_heads": 4}), "missing 'intermediate_size'"),
    (json.dumps({"n_embd": 48, "n_layer": 2, "n_head": 4, "vocab_size": 50}), "missing 'n_positions'"),
])
def test_cli_bad_config_file(capsys, tmp_path, content, msg):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["cost", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
