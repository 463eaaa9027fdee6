import importlib
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from helpers import assert_close_outputs, run

import slimgraph as sg
from slimgraph.errors import InputError
from slimgraph.quant import cpu_int8
from slimgraph.testing import ZOO, make

sgb = importlib.import_module("slimgraph.backend")  # the package attribute is the sg.backend() factory
EAGER = {"inner": "eager"}


def _compile(model, options=None, **kwargs):
    torch._dynamo.reset()
    return torch.compile(model, backend="slimgraph", options=dict(options or EAGER), **kwargs)


def _last():
    return sgb.COMPILED[-1]


def _since(before: int) -> list:
    return list(sgb.COMPILED)[before:]


def _assert_slimgraph_ran(records, *, fused: bool = True) -> None:
    """Every record: no fallback, the backend's whole pipeline ran on the graph that was compiled, and (``fused``)
    the fusion rewrote it, so the graph holds slimgraph ops. Numbers alone would pass after a silent fallback."""
    assert records, "the slimgraph backend never received a graph"
    for record in records:
        assert record.fallback is None, record.fallback
        assert record.graph is not None
        ran = {h.name.split("{")[0] for h in sg.graph_info(record.graph).history}
        assert {p.split("{")[0] for p in record.options.pipeline()} <= ran, ran
        if fused:
            assert "fuse" in record.applied, record.applied
            assert any(str(n.target).startswith("slimgraph.") for n in record.graph.graph.nodes)


@pytest.mark.parametrize("name", list(ZOO))
def test_lossless_compile_matches_eager_on_every_family(name):
    model, args, kwargs = make(name)
    before = len(sgb.COMPILED)
    compiled = _compile(model)
    with torch.no_grad():
        out = compiled(*args, **kwargs)
    assert_close_outputs(out, run(model, args, kwargs), rel=1e-4)
    records = _since(before)
    # not every family has a fusable pattern (GPT-2's hand-written GELU, attention-only graph pieces), so here:
    # the pipeline ran on every graph that was compiled, and rewrote at least one of them
    _assert_slimgraph_ran(records, fused=False)
    assert any(r.applied for r in records), [r.applied for r in records]


def test_optimized_graph_is_really_used():
    model, args, _ = make("residual_cnn")
    compiled = _compile(model)
    with torch.no_grad():
        compiled(*args)
    record = _last()
    assert record.fallback is None and "fold-bn" in record.applied and "fuse" in record.applied
    targets = {n.target for n in record.graph.graph.nodes}
    assert torch.ops.aten.batch_norm.default not in targets
    assert torch.ops.slimgraph.conv_act.default in targets


def test_dynamic_batch_does_not_recompile():
    model, _, _ = make("mlp")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="slimgraph", options=EAGER, dynamic=True)
    before = len(sgb.COMPILED)
    with torch.no_grad():
        for batch in (3, 7, 16, 5, 64):
            x = torch.randn(batch, 32)
            assert_close_outputs(compiled(x), model(x), rel=1e-5)
        assert len(sgb.COMPILED) - before == 1  # one symbolic-M graph serves every prefill size
        for _ in range(3):
            x = torch.randn(1, 32)
            assert_close_outputs(compiled(x), model(x), rel=1e-5)
    assert len(sgb.COMPILED) - before == 2  # dynamo specializes size 1 once (decode), then never again
    _assert_slimgraph_ran(_since(before))


def test_graph_breaks_prints_and_data_dependent_control_flow():
    class Awkward(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            print("shape", tuple(y.shape))  # a print: graph break
            if y.mean() > 0:  # data-dependent branch: graph break
                y = y * 2
            z = torch.special.i0(y)  # an op slimgraph has no pass for: left to the inner compiler
            return self.fc(z.mean((2, 3)))

    model = Awkward().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = _compile(model)
    with torch.no_grad():
        assert_close_outputs(compiled(x), model(x), rel=1e-5)


def test_failure_in_a_pass_falls_back_with_a_warning(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in a pass")

    monkeypatch.setattr(sgb, "_optimize", broken)
    model, args, _ = make("mlp")
    compiled = _compile(model)
    with caplog.at_level("WARNING", logger="slimgraph"), torch.no_grad():
        out = compiled(*args)
    assert_close_outputs(out, model(*args), rel=1e-6)
    assert "boom in a pass" in caplog.text and "unmodified graph" in caplog.text
    assert "boom" in _last().fallback


def test_training_graphs_are_left_to_the_inner_compiler():
    model, args, _ = make("mlp")
    model.train()
    compiled = _compile(model)
    before = len(sgb.COMPILED)
    out = compiled(*args)  # grad mode on, parameters require grad
    out.sum().backward()
    assert model.fc1.weight.grad is not None
    assert len(sgb.COMPILED) == before  # handed straight to the inner compiler: no slimgraph record, no passes


def test_backend_factory_and_option_errors():
    model, args, _ = make("mlp")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=sg.backend(inner="eager", fuse=False))
    before = len(sgb.COMPILED)
    with torch.no_grad():
        compiled(*args)
    _assert_slimgraph_ran(_since(before), fused=False)
    assert "fuse" not in _last().applied and "fuse" not in _last().options.pipeline()
    with pytest.raises(InputError, match="quant="):
        sg.backend(quant="w8a8")  # static needs calibration data
    with pytest.raises(InputError, match="unknown slimgraph backend option"):
        sg.backend(speed="max")


def test_models_pruned_with_the_api_compile_the_same_way():
    model, args, kwargs = make("bert")
    pruned = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs)
    before = len(sgb.COMPILED)
    compiled = _compile(pruned)
    with torch.no_grad():
        assert_close_outputs(compiled(*args, **kwargs), run(pruned, args, kwargs), rel=1e-5)
    _assert_slimgraph_ran(_since(before))


def test_entry_point_registers_the_backend_without_importing_slimgraph():
    code = (
        "import sys, torch\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())\n"
        "f = torch.compile(m, backend='slimgraph', options={'inner': 'eager'})\n"
        "x = torch.randn(2, 4)\n"
        "with torch.no_grad():\n"
        "    assert torch.allclose(f(x), m(x))\n"
        "import importlib; b = importlib.import_module('slimgraph.backend')\n"
        "assert b.COMPILED and b.COMPILED[-1].fallback is None, b.COMPILED\n"
        "print('ok', 'slimgraph' in torch._dynamo.list_backends())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok True"


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("quant", ["w8a8-dynamic", "w8a16"])
def test_int8_compile_matches_eager_to_int8_tolerance(name, quant):
    from slimgraph.numerics import compare_outputs

    model, args, kwargs = make(name)
    compiled = _compile(model, {"inner": "eager", "quant": quant})
    with torch.no_grad():
        out = compiled(*args, **kwargs)
    record = _last()
    assert record.fallback is None, record.fallback
    assert any(a.startswith("quant") for a in record.applied)
    ops = {n.target for n in record.graph.graph.nodes if n.op == "call_function"}
    assert any(str(t).startswith("slimgraph.q") for t in ops), "no int8 op in the compiled graph"
    err = compare_outputs(out, run(model, args, kwargs))
    assert err.cosine > (0.999 if quant == "w8a16" else 0.99), err


def test_autotune_keeps_the_faster_version_per_layer_and_caches(tmp_path, monkeypatch):
    from slimgraph import layer_choice

    monkeypatch.setenv("SLIMGRAPH_CACHE", str(tmp_path))
    calls = []

    def fake_timer(fn):
        # pretend int8 wins only for the wide layer (fc1: 32 -> 64); everything else is faster in float
        graph_module = fn.func
        quantized = any(str(n.target).startswith("slimgraph.q") for n in graph_module.graph.nodes)
        wide = any(n.op == "get_attr" and getattr(graph_module, n.target).shape == (64, 32)
                   for n in graph_module.graph.nodes)
        calls.append(quantized)
        return 1.0 if (quantized and wide) else 2.0 if quantized else 1.5

    monkeypatch.setattr(layer_choice, "default_timer", fake_timer)
    model, args, _ = make("mlp")
    compiled = _compile(model, {"inner": "eager", "quant": "w8a8-dynamic", "autotune": True})
    with torch.no_grad():
        compiled(*args)
    timings = {t.name.split("_")[-2]: t.choice for t in _last().autotune}
    assert timings == {"fc1": "int8", "fc2": "float", "fc3": "float"}, timings
    graph = _last().graph
    assert sum(str(n.target).startswith("slimgraph.qlinear") for n in graph.graph.nodes) == 1
    first = len(calls)
    assert first == 6 and (tmp_path / f"autotune-v{layer_choice.CACHE_VERSION}.json").is_file()
    compiled = _compile(model, {"inner": "eager", "quant": "w8a8-dynamic", "autotune": True})
    with torch.no_grad():
        compiled(*args)
    assert len(calls) == first and all(t.cached for t in _last().autotune)  # second compile: from the cache


def test_quantized_models_from_the_api_compile_the_same_way():
    model, args, kwargs = make("bert")
    quantized = sg.quantize(model, args, scheme="w8a8-dynamic", example_kwargs=kwargs)
    before = len(sgb.COMPILED)
    compiled = _compile(quantized)
    with torch.no_grad():
        assert_close_outputs(compiled(*args, **kwargs), run(quantized, args, kwargs), rel=1e-5)
    _assert_slimgraph_ran(_since(before), fused=False)  # the int8 ops survive recapture: nothing left to fuse
    assert any(str(n.target).startswith("slimgraph.q") for n in _last().graph.graph.nodes)


def _dynamic_int8_mlp():
    model, args, _ = make("mlp")
    return sg.quantize(model, args, scheme="w8a8-dynamic"), args


@pytest.mark.skipif(not cpu_int8.int_mm_exact(), reason="torch._int_mm does not sum exactly on this CPU")
def test_dynamic_int8_ops_written_out_for_inductor_match_the_ops():
    """The CPU lowering for Inductor: per-token quantizer and int8 Linear as ATen calls (torch._int_mm + epilogue)."""
    import copy

    quantized, args = _dynamic_int8_mlp()
    gm = copy.deepcopy(quantized)
    ops_before = [str(n.target) for n in gm.graph.nodes if str(n.target).startswith("slimgraph.")]
    assert sum(t.startswith("slimgraph.qlinear_dynamic") for t in ops_before) == 3, ops_before
    assert sgb.lower_int8_for_inductor(gm) == len(ops_before)
    assert not any(str(n.target).startswith("slimgraph.") for n in gm.graph.nodes)
    kn = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.endswith("_int8_kn")]
    assert len(kn) == 3 and all(getattr(gm, n.target).is_contiguous() for n in kn)
    with torch.no_grad():
        # the same integers and the same fp32 epilogue order: equal up to float32 rounding
        torch.testing.assert_close(gm(*args), quantized(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_int8.int_mm_exact(), reason="torch._int_mm does not sum exactly on this CPU")
def test_layer_norm_quantizer_written_out_for_inductor_matches_the_op():
    import copy

    class PreNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc = torch.nn.LayerNorm(64), torch.nn.Linear(64, 32)

        def forward(self, x):
            return self.fc(self.ln(x))

    torch.manual_seed(0)
    x = torch.randn(2, 5, 64)
    quantized = sg.quantize(PreNorm().eval(), (x,), scheme="w8a8-dynamic")
    gm = copy.deepcopy(quantized)
    assert any(str(n.target).startswith("slimgraph.layer_norm_quantize") for n in gm.graph.nodes)
    assert sgb.lower_int8_for_inductor(gm) == 2
    assert not any(str(n.target).startswith("slimgraph.") for n in gm.graph.nodes)
    with torch.no_grad():
        for shape in [(2, 5, 64), (3, 7, 64)]:
            x2 = torch.randn(shape)
            torch.testing.assert_close(gm(x2), quantized(x2), rtol=1e-5, atol=1e-5)


def test_lowering_leaves_graphs_without_dynamic_int8_ops_alone():
    model, args, _ = make("mlp")
    gm = sg.capture(model, args)
    code = gm.code
    assert sgb.lower_int8_for_inductor(gm) == 0 and gm.code == code


@pytest.mark.skipif(not cpu_int8.int_mm_exact(), reason="torch._int_mm does not sum exactly on this CPU")
def test_int8_model_compiles_under_inductor_with_the_lowering():
    quantized, args = _dynamic_int8_mlp()
    compiled = _compile(quantized, {"inner": "inductor"})
    with torch.no_grad():
        out = compiled(*args)
    record = _last()
    assert record.fallback is None, record.fallback
    assert any("written out in ATen ops for Inductor" in note for note in record.notes), record.notes
    assert not any(str(n.target).startswith("slimgraph.q") for n in record.graph.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(out, quantized(*args), rtol=1e-4, atol=1e-4)
