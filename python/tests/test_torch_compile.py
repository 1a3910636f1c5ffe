"""torch.compile of models with FP4 layers (issue 18 item 14): the custom ops of
fp4swift.torch.ops trace without graph breaks, fullgraph=True compiles, and the compiled model
computes the eager model's outputs and gradients bit for bit."""
from __future__ import annotations

import gc
import itertools
import warnings

import pytest

torch = pytest.importorskip("torch")

import fp4swift.linear as flinear  # noqa: E402
import fp4swift.torch as f4t  # noqa: E402
from fp4swift.torch import ops  # noqa: E402
from torch import nn  # noqa: E402

RECIPES = ["wang2025", "fp32", "fp4-direct", "mxfp4", "nvfp4", "quartet", "fp8", "zhou2025"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Block(nn.Module):
    """q/k/v read one activation (the shared-input case), then elementwise ops that the
    compiler computes exactly as eager does (sums, products by 0.5, relu)."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.lm_head = nn.Linear(d, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.o_proj(torch.relu(self.q_proj(x)) + self.k_proj(x) * 0.5 + self.v_proj(x))
        return self.lm_head(h)


def _base() -> nn.Module:
    torch.manual_seed(0)
    return Block()


def _run(model, fn, x, g, monkeypatch):
    """Output, input gradient and parameter gradients of one forward/backward, with the
    per-call counter of the stochastic recipes restarted."""
    monkeypatch.setattr(flinear, "_CALLS", itertools.count())
    for p in model.parameters():
        p.grad = None
    leaf = x.clone().requires_grad_()
    y = fn(leaf * 1.0)  # an activation inside the graph, so eager shares q/k/v's quantization
    y.backward(g)
    return y.detach(), leaf.grad, [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same(a, b) -> bool:
    ya, gxa, gpa = a
    yb, gxb, gpb = b
    return torch.equal(ya, yb) and torch.equal(gxa, gxb) and len(gpa) == len(gpb) \
        and all((p is None and q is None) or (p is not None and q is not None and torch.equal(p, q))
                for p, q in zip(gpa, gpb))


@pytest.mark.parametrize("recipe", RECIPES)
def test_fullgraph_compile_matches_eager_bit_for_bit(recipe, monkeypatch):
    base = _base()
    eager = f4t.convert(base, recipe, inplace=False)
    compiled_model = f4t.convert(base, recipe, inplace=False)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 8, 32)
    g = torch.randn(2, 8, 8)
    # Stochastic recipes draw per call; eager's shared input draws one more counter value for
    # the prepared input, so the per-call streams line up without sharing.
    previous = f4t.set_input_sharing(recipe != "nvfp4")
    try:
        want = _run(eager, eager, x, g, monkeypatch)
    finally:
        f4t.set_input_sharing(previous)
    got = _run(compiled_model, compiled, x, g, monkeypatch)
    assert _same(want, got)
    # a second call reuses the compiled graph and still agrees
    want2 = _run(eager, eager, 2 * x, g, monkeypatch) if recipe != "nvfp4" else None
    if want2 is not None:
        assert _same(want2, _run(compiled_model, compiled, 2 * x, g, monkeypatch))


class NoHead(Block):
    """Block without the float32 LM head: inductor's own GEMM + bias for a float32 linear may
    round differently from eager's addmm, which is not the FP4 layers' business."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.o_proj(torch.relu(self.q_proj(x)) + self.k_proj(x) * 0.5 + self.v_proj(x))


def test_inductor_compile_matches_eager(monkeypatch):
    torch.manual_seed(0)
    base = NoHead()
    eager = f4t.convert(base, "wang2025", inplace=False)
    compiled_model = f4t.convert(base, "wang2025", inplace=False)
    compiled = torch.compile(compiled_model, fullgraph=True)  # the default backend, inductor
    x = torch.randn(3, 5, 32)
    g = torch.randn(3, 5, 32)
    assert _same(_run(eager, eager, x, g, monkeypatch), _run(compiled_model, compiled, x, g, monkeypatch))


def test_no_graph_breaks_around_fp4_layers():
    model = f4t.convert(_base(), "wang2025", inplace=False)
    ex = torch._dynamo.explain(model)(torch.randn(2, 4, 32))
    assert ex.graph_break_count == 0 and ex.graph_count == 1, ex.break_reasons


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_models_compile_without_graph_breaks(arch, monkeypatch):
    from fp4swift.train.model import ModelConfig, build_model

    m = build_model(ModelConfig(arch=arch, d_model=32, layers=1, heads=2, seq_len=16), 0)
    f4t.convert_(m, "wang2025")
    x = torch.randint(0, 256, (2, 16))
    ex = torch._dynamo.explain(m.loss)(x, x)
    assert ex.graph_break_count == 0, ex.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    monkeypatch.setattr(flinear, "_CALLS", itertools.count())
    got = compiled(x)
    want = m(x)
    assert torch.equal(got, want)


def test_set_recipe_recompiles(monkeypatch):
    base = _base()
    model = f4t.convert(base, "wang2025", inplace=False)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 32)
    with torch.no_grad():
        a = compiled(x)
        for m in (model.q_proj, model.k_proj, model.v_proj, model.o_proj):
            m.set_recipe("fp4-direct")
        b = compiled(x)
        want = f4t.convert(base, "fp4-direct", inplace=False)(x)
    assert torch.equal(b, want) and not torch.equal(a, b)


def _op_vs_function(x, w, b, recipe, need_x=True):
    """Output and gradients of the custom op and of FP4LinearFunction, in eager mode."""
    results = []
    for path in ("op", "function"):
        flinear._CALLS = itertools.count()
        xx = x.clone().requires_grad_(need_x)
        ww = w.clone().requires_grad_()
        bb = None if b is None else b.clone().requires_grad_()
        r = f4t._recipe(recipe)
        if path == "op":
            y = ops.fp4_linear(xx, ww, bb, ops.recipe_key(r))
        else:
            y = f4t.FP4LinearFunction.apply(xx, ww, bb, r)
        y.backward(torch.ones_like(y))
        results.append((y.detach(), xx.grad, ww.grad, None if bb is None else bb.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("recipe", ["wang2025", "fp32", "quartet"])
def test_custom_op_equals_the_autograd_function(dtype, recipe):
    torch.manual_seed(1)
    x = torch.randn(3, 7, 32, dtype=dtype)
    w = torch.randn(16, 32, dtype=dtype)
    b = torch.randn(16, dtype=dtype)
    (y1, gx1, gw1, gb1), (y2, gx2, gw2, gb2) = _op_vs_function(x, w, b, recipe)
    assert y1.dtype == dtype and gx1.dtype == dtype and gw1.dtype == dtype and gb1.dtype == dtype
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2) and torch.equal(gw1, gw2) and torch.equal(gb1, gb2)
    (y1, gx1, gw1, gb1), (y2, gx2, gw2, gb2) = _op_vs_function(x, w, None, recipe, need_x=False)
    assert gx1 is None and gx2 is None and gb1 is None
    assert torch.equal(y1, y2) and torch.equal(gw1, gw2)


def test_saved_state_lives_as_long_as_the_graph(monkeypatch):
    model = f4t.convert(_base(), "wang2025", inplace=False)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    gc.collect()
    before = len(ops._STATES)
    x = torch.randn(2, 4, 32, requires_grad=True)
    y = compiled(x)
    assert len(ops._STATES) == before + 4  # q, k, v, o (the LM head stays float32)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    y.sum().backward()  # the retained graph runs the backward again, with the same numbers
    assert torch.equal(x.grad, first)
    del y
    gc.collect()
    assert len(ops._STATES) == before
    with torch.no_grad():
        compiled(x)
    gc.collect()
    assert len(ops._STATES) == before


def test_compiled_conv1d_layer(monkeypatch):
    class Conv1D(nn.Module):  # Hugging Face GPT-2's layout: weight [in, out], y = x·W + b
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
            self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    torch.manual_seed(2)
    layer = f4t.FP4Conv1D(Conv1D(24, 32), "wang2025")
    x = torch.randn(2, 5, 32)
    g = torch.randn(2, 5, 24)
    want = _run(layer, layer, x, g, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert _same(want, _run(layer, compiled, x, g, monkeypatch))
