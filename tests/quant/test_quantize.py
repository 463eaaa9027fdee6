"""sg.quant.quantize end to end: numerics per scheme, exact rewrite counts, int8 boundaries, accuracy control,
every zoo family, a pruned model, the pass in a pipeline string, save/load, and bad input."""

from collections import Counter

import pytest
import torch
import torch.nn as nn
from helpers import assert_identical, assert_state_unchanged, run, state_snapshot

import slimgraph as sg
from slimgraph.errors import InputError, PipelineError
from slimgraph.numerics import compare_outputs
from slimgraph.passes import PassManager
from slimgraph.prune import prune
from slimgraph.quant import last_report, quantize
from slimgraph.quant.ops import BOUNDARY_OPS, QUANTIZED_COMPUTE_OPS
from slimgraph.quant.rewrite import INT8_SAFE
from slimgraph.testing import ZOO, make
from slimgraph.testing.models import ResidualCNN, _randomize_bn

aten = torch.ops.aten
sgops = torch.ops.slimgraph
SCHEMES = ("w8a8", "w8a8-dynamic", "w8a16")
COMPUTE = {
    "w8a8": {sgops.qlinear_static.default, sgops.qconv_static.default},
    "w8a8-dynamic": {sgops.qlinear_dynamic.default, sgops.qconv_dynamic.default},
    "w8a16": {sgops.qlinear_w8a16.default, sgops.qconv_w8a16.default},
}
FLOAT_GEMMS = {aten.linear.default, aten.conv1d.default, aten.conv2d.default, sgops.linear_act.default,
               sgops.conv_act.default}


def _ops(gm) -> Counter:
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_function")


def _eligible(model, args, kwargs) -> int:
    """Linears and 1-D/2-D convs of the model, counted on the captured float graph."""
    gm = sg.capture(model, args, kwargs)
    return sum(c for t, c in _ops(gm).items() if t in FLOAT_GEMMS)


def _calib(args, n=3):
    g = torch.Generator().manual_seed(1)
    return [tuple(torch.randn(a.shape, generator=g) for a in args) for _ in range(n)] + [args]


# ------------------------------------------------------------------------------------------ numerics per scheme


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", ["mlp", "residual_cnn", "flatten_cnn", "mobile_block_cnn"])
def test_numerics_and_exact_rewrite_counts(name, scheme):
    model, args, kwargs = make(name)
    snapshot = state_snapshot(model)
    expected = run(model, args, kwargs)
    q = quantize(model, args, scheme, calib=_calib(args))
    ops = _ops(q)
    assert sum(ops[t] for t in COMPUTE[scheme]) == _eligible(model, args, kwargs)
    assert not any(t in FLOAT_GEMMS for t in ops), "every linear/conv is int8"
    err = compare_outputs(run(q, args, kwargs), expected)
    assert err.cosine > 0.999 and err.max_rel < 0.05, f"{name} {scheme}: {err}"
    report = last_report(q)
    assert len(report.quantized) == _eligible(model, args, kwargs) and not report.skipped
    assert all(r.sqnr_db > 25 for r in report.layers), report.table()
    assert_state_unchanged(model, snapshot)


def test_weights_are_real_int8_buffers():
    model, args, _ = make("residual_cnn")
    q = quantize(model, args, "w8a8")
    state = q.state_dict()
    int8 = {k: v for k, v in state.items() if v.dtype == torch.int8}
    assert len(int8) == 7 and all(v.abs().max() <= 127 for v in int8.values())
    assert all(state[k.replace("_int8", "_scale")].dtype == torch.float32 for k in int8)
    float_weights = [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2]
    assert float_weights == [], f"float weights left behind: {float_weights}"


# ------------------------------------------------------------------------------------------------ boundaries


def test_static_chain_stays_int8_between_layers():
    # conv-relu -> maxpool -> conv-relu -> flatten -> fc-relu -> fc: one quantize at the input; every later
    # boundary is a requantizing epilogue, maxpool and flatten run on int8.
    model, args, _ = make("flatten_cnn")
    q = quantize(model, args, "w8a8", calib=_calib(args))
    ops = _ops(q)
    assert ops[sgops.quantize_per_tensor.default] == 1
    assert aten.max_pool2d.default in ops and aten.flatten.using_ints in ops
    requantized = [n for n in q.graph.nodes if n.target in (sgops.qconv_static.default, sgops.qlinear_static.default)
                   and n.args[-2] is not None]
    assert len(requantized) == 3
    pool = next(n for n in q.graph.nodes if n.target is aten.max_pool2d.default)
    assert pool.meta["val"].dtype == torch.int8
    stats = sg.graph_info(q).history[-1].stats
    assert stats["quantize_hoisted"] == 2 and stats["requantize_fused"] == 3


def test_one_quantize_shared_by_all_readers_of_a_value():
    model, args, kwargs = make("bert")
    q = quantize(model, args, "w8a8", example_kwargs=kwargs)
    for node in q.graph.nodes:
        if node.target is sgops.quantize_per_tensor.default:  # int8 values only reach int8 consumers
            assert all(u.target is sgops.qlinear_static.default or u.target in INT8_SAFE for u in node.users)
    qkv = [n for n in q.graph.nodes if n.target is sgops.quantize_per_tensor.default and len(n.users) == 3]
    assert len(qkv) == 2, "q/k/v projections of each layer read one shared quantize"


@pytest.mark.parametrize("name", ["vit", "gpt2"])  # gpt2: through Conv1D's view(-1, K)
def test_dynamic_scheme_fuses_layer_norm_into_the_quantizer(name):
    model, args, kwargs = make(name)  # pre-LN: each block's two LayerNorms feed only their projections
    q = quantize(model, args, "w8a8-dynamic", example_kwargs=kwargs)
    assert _ops(q)[sgops.layer_norm_quantize_per_token.default] == 4
    assert compare_outputs(run(q, args, kwargs), run(model, args, kwargs)).cosine > 0.999


# ---------------------------------------------------------------------------------------------- every family


_ZOO_SCHEMES = {name: SCHEMES[i % 3] for i, name in enumerate(ZOO)}


@pytest.mark.parametrize("name", list(ZOO))
def test_quantize_runs_on_every_zoo_family(name):
    model, args, kwargs = make(name)
    scheme = _ZOO_SCHEMES[name]
    q = quantize(model, args, scheme, example_kwargs=kwargs)
    report = last_report(q)
    unsupported = [r for r in report.layers if r.reason.startswith("unsupported")]
    assert len(report.quantized) + len(unsupported) == len(report.layers) > 0
    assert sum(c for t, c in _ops(q).items() if t in COMPUTE[scheme]) == len(report.quantized)
    err = compare_outputs(run(q, args, kwargs), run(model, args, kwargs))
    assert err.cosine > 0.99, f"{name} {scheme}: {err}"


def test_transposed_conv_stays_float_and_is_reported():
    model, args, _ = make("transposed_conv")
    q = quantize(model, args, "w8a8")
    rows = {r.kind: r for r in last_report(q).layers}
    assert not rows["conv_transpose2d"].int8 and "no int8 kernel" in rows["conv_transpose2d"].reason
    assert aten.conv_transpose2d.input in _ops(q)


def test_quantize_a_pruned_model():
    model, args, _ = make("residual_cnn")
    pruned = prune(model, args, ratio=0.5, round_to=1)
    q = quantize(pruned, args, "w8a8", calib=_calib(args))
    assert sum(_ops(q)[t] for t in COMPUTE["w8a8"]) == 7
    err = compare_outputs(run(q, args, {}), run(pruned, args, {}))
    assert err.cosine > 0.999
    assert "quant" in sg.graph_info(q).applied[-1] and any("prune" in a for a in sg.graph_info(q).applied)


def test_attention_matmuls_and_embeddings_on_request():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    plain = quantize(model, (ids,), "w8a8-dynamic")
    full = quantize(model, (ids,), "w8a8-dynamic", attention=True, embeddings=True)
    assert sgops.qmatmul_dynamic.default not in _ops(plain)
    assert _ops(full)[sgops.qmatmul_dynamic.default] == 4  # scores and context, two layers
    assert _ops(full)[sgops.qembedding.default] >= 2
    emb = [r for r in last_report(full).layers if r.kind == "embedding"]
    assert emb and all(r.scheme == "w8a16" for r in emb)
    err = compare_outputs(run(full, (ids,)), run(model, (ids,)))
    assert err.cosine > 0.999


# ----------------------------------------------------------------------------------------- accuracy control


def test_skip_by_name_and_op_kind_and_per_layer_schemes():
    model, args, _ = make("flatten_cnn")
    q = quantize(model, args, "w8a8", skip=["fc2", "conv*"])
    rows = {r.name: r for r in last_report(q).layers}
    assert [n for n, r in rows.items() if r.int8] == ["fc1"]
    assert rows["fc2"].reason == "skip pattern 'fc2'" and rows["c1"].reason == "skip pattern 'conv*'"
    mixed = quantize(model, args, "w8a8", per_layer={"c*": "w8a16", "fc2": "float"})
    rows = {r.name: r for r in last_report(mixed).layers}
    assert rows["c1"].scheme == rows["c2"].scheme == "w8a16" and rows["fc1"].scheme == "w8a8"
    assert not rows["fc2"].int8
    assert _ops(mixed)[sgops.qconv_w8a16.default] == 2


def test_max_error_returns_the_most_sensitive_layers_to_float():
    torch.manual_seed(0)
    model, args, kwargs = make("mlp")
    with torch.no_grad():  # make fc2 hard to quantize: an input channel 1000x the others
        model.fc1.weight[0].mul_(300.0)
    calib = _calib(args)
    report = last_report(quantize(model, args, "w8a8", calib=calib))
    worst = min(report.layers, key=lambda r: r.sqnr_db)
    without_worst = last_report(quantize(model, args, "w8a8", calib=calib, per_layer={worst.name: "float"}))
    assert without_worst.output_rel_error < report.output_rel_error
    budget = (without_worst.output_rel_error + report.output_rel_error) / 2
    tight = last_report(quantize(model, args, "w8a8", calib=calib, max_error=budget))
    assert tight.output_rel_error <= budget
    reverted = [r for r in tight.layers if not r.int8]
    assert [r.name for r in reverted] == [worst.name] and "max_error" in reverted[0].reason
    with pytest.raises(InputError, match="max_error"):
        quantize(model, args, max_error=0.0)


def test_report_table_and_history():
    model, args, _ = make("mlp")
    q = quantize(model, args, "w8a8", observer="percentile", percentile=99.9)
    report = last_report(q)
    text = str(report)
    for header in ("layer", "scheme", "weight scales", "act scale", "SQNR dB", "kept"):
        assert header in text
    assert "fc1" in text and report.observer == "percentile"
    for row in report.layers:
        assert row.weight_scale_min <= row.weight_scale_max and row.act_scale > 0
    record = sg.graph_info(q).history[-1]
    assert record.name.startswith("quant") and record.stats["quantized"] == 3
    assert record.error_vs_previous is not None  # the manager measured the lossy pass


def test_quant_pass_in_a_pipeline_string():
    model, args, _ = make("residual_cnn")
    gm = sg.optimize(model, args, "fold-bn,fuse,quant{scheme=w8a8-dynamic,skip=[fc]}")
    assert _ops(gm)[sgops.qconv_dynamic.default] == 6 and _ops(gm)[aten.linear.default] == 1
    with pytest.raises(PipelineError, match="unknown quantization scheme"):
        PassManager("quant{scheme=int4}")


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_scheme_and_observer():
    model, args, _ = make("mlp")
    with pytest.raises(InputError, match="unknown quantization scheme 'int4'.*w8a8"):
        quantize(model, args, "int4")
    with pytest.raises(InputError, match="unknown observer"):
        quantize(model, args, observer="entropy")
    with pytest.raises(InputError, match="per_layer"):
        quantize(model, args, per_layer={"fc1": "fp8"})


def test_nothing_quantizable_is_a_reported_no_op(caplog):
    class NoGemm(nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2 + 1

    x = torch.randn(3, 4)
    q = quantize(NoGemm(), (x,), "w8a8")
    assert not any(t in QUANTIZED_COMPUTE_OPS or t in BOUNDARY_OPS for t in _ops(q))
    assert torch.equal(q(x), NoGemm()(x))
    report = last_report(q)
    assert report.layers == [] and "nothing to quantize" in report.notes[0]
    assert "nothing to quantize" in caplog.text


def test_quantizing_a_quantized_model_is_a_no_op():
    model, args, _ = make("mlp")
    q = quantize(model, args, "w8a8")
    again = quantize(q, args, "w8a8")
    assert not last_report(again).quantized
    assert_identical(run(again, args), run(q, args))


# ------------------------------------------------------------------------------------------------ save/load


@pytest.mark.parametrize("scheme", SCHEMES)
def test_save_load_keeps_int8_storage(scheme, tmp_path):
    model, args = _randomize_bn(ResidualCNN(width=48)), (torch.randn(2, 3, 16, 16),)
    float_gm = sg.optimize(model, args, "fold-bn,fuse")
    q = quantize(model, args, scheme)
    sg.save(float_gm, tmp_path / "float.sg")
    sg.save(q, tmp_path / "q.sg")
    ratio = (tmp_path / "q.sg").stat().st_size / (tmp_path / "float.sg").stat().st_size
    assert ratio < 0.33, f"{scheme}: quantized file is {ratio:.2f} of the float file"
    loaded = sg.load(tmp_path / "q.sg")
    assert_identical(run(loaded, args), run(q, args))
    assert sum(1 for v in loaded.state_dict().values() if v.dtype == torch.int8) == 7
    x = torch.randn(5, *args[0].shape[1:])  # the batch stays dynamic after reload
    assert_identical(run(loaded, (x,)), run(q, (x,)))


def test_skip_glob_pattern_keeps_exactly_the_matching_nested_layers_float():
    # the documented example: a '*' pattern matches dotted module paths at any depth, and nothing else
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.intermediate = nn.Module()
            self.intermediate.dense = nn.Linear(16, 32)
            self.output = nn.Module()
            self.output.dense = nn.Linear(32, 16)

        def forward(self, x):
            return self.output.dense(torch.relu(self.intermediate.dense(x))) + x

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            for block in self.encoder.layer:
                x = block(x)
            return self.head(x)

    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(3, 16)
    q = quantize(model, (x,), "w8a8-dynamic", skip=["*.output.dense"])
    rows = {r.name: r for r in last_report(q).layers}
    float_rows = {name for name, r in rows.items() if not r.int8}
    assert float_rows == {"encoder.layer.0.output.dense", "encoder.layer.1.output.dense"}, last_report(q).table()
    assert all(rows[n].reason == "skip pattern '*.output.dense'" for n in float_rows)
    assert {n for n, r in rows.items() if r.int8} == {"encoder.layer.0.intermediate.dense",
                                                       "encoder.layer.1.intermediate.dense", "head"}
    ops = Counter(n.target for n in q.graph.nodes if n.op == "call_function")
    assert ops[aten.linear.default] == 2  # the two skipped layers run in float in the graph too
