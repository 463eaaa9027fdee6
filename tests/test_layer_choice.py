"""keep_profitable: int8 kept only where it is measured faster, decided with a deterministic synthetic timer
(the timer sees the graph it times), the whole-model guard, the caller's model untouched."""

import pytest
import torch

from slimgraph import layer_choice
from slimgraph.ir.graph_utils import get_attr_tensor
from slimgraph.quant import last_report
from slimgraph.testing.models import make


def _is_quantized(gm) -> bool:
    return any(str(n.target).startswith("slimgraph.q") for n in gm.graph.nodes)


def _int8_layers(gm) -> int:
    return sum(str(n.target).startswith(("slimgraph.qlinear", "slimgraph.qconv")) for n in gm.graph.nodes)


def _weight_shapes(gm) -> set:
    tensors = (get_attr_tensor(gm, n) for n in gm.graph.nodes if n.op == "get_attr")
    return {tuple(t.shape) for t in tensors if t is not None}


def synthetic_timer(int8_wins_for, whole_model_int8_ms=None):
    """ms by what the graph holds: a one-layer int8 graph is fast only if its weight shape is in
    ``int8_wins_for``; a whole model (more than one layer) costs 10 float, ``whole_model_int8_ms`` int8."""

    def timer(fn):
        gm = fn.func
        layers = sum(str(n.target).startswith(("aten.linear", "aten.conv", "slimgraph.linear_act",
                                               "slimgraph.conv_act", "slimgraph.q")) for n in gm.graph.nodes)
        if layers > 1:
            if not _is_quantized(gm):
                return 10.0
            return 5.0 if whole_model_int8_ms is None else whole_model_int8_ms
        if not _is_quantized(gm):
            return 1.5
        return 1.0 if _weight_shapes(gm) & int8_wins_for else 2.0

    return timer


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_CACHE", str(tmp_path))


def test_only_layers_that_win_in_int8_are_quantized():
    model, args, _ = make("mlp")  # fc1 32 -> 64, fc2 64 -> 64, fc3 64 -> 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = layer_choice.keep_profitable(model, args, "w8a8-dynamic", timer=synthetic_timer({(64, 32)}))
    choices = {t.name.split(":")[0]: t.choice for t in res.layers}
    assert choices == {"fc1": "int8", "fc2": "float", "fc3": "float"}, choices
    assert res.used_int8 and _int8_layers(res.model) == 1
    assert sorted(n.split(":")[0] for n in res.kept_float) == ["fc2", "fc3"]
    assert res.float_ms == 10.0 and res.int8_ms == 5.0
    report = last_report(res.model)
    assert [layer.name.split(":")[0] for layer in report.layers if layer.scheme != "float"] == ["fc1"]
    with torch.no_grad():
        err = (res.model(*args) - model(*args)).abs().max() / model(*args).abs().max()
    assert err < 0.05
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched


def test_callers_per_layer_patterns_win_over_measurement():
    model, args, _ = make("mlp")
    res = layer_choice.keep_profitable(model, args, "w8a8-dynamic", timer=synthetic_timer({(64, 32)}),
                                   per_layer={"fc1*": "float", "fc3*": "w8a16"})
    ops = [str(n.target) for n in res.model.graph.nodes if str(n.target).startswith("slimgraph.q")]
    assert ops == ["slimgraph.qlinear_w8a16.default"], ops  # fc1 forced float, fc2 measured float, fc3 forced


def test_int8_model_slower_overall_returns_the_float_graph(caplog):
    model, args, _ = make("mlp")
    res = layer_choice.keep_profitable(model, args, "w8a8-dynamic",
                                   timer=synthetic_timer({(64, 32), (64, 64), (10, 64)}, whole_model_int8_ms=12.0))
    assert all(t.choice == "int8" for t in res.layers)
    assert not res.used_int8 and not _is_quantized(res.model)
    assert "not faster than float" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(res.model(*args), model(*args))


def test_cnn_layers_are_timed_and_decided_per_conv():
    model, args, _ = make("residual_cnn")
    res = layer_choice.keep_profitable(model, args, "w8a8", timer=synthetic_timer(set()), check_model=False)
    assert res.layers and all(t.choice == "float" for t in res.layers)
    assert not _is_quantized(res.model) and res.float_ms is None


def test_cache_key_names_the_cpu_int8_backend(monkeypatch):
    from slimgraph.quant import cpu_int8

    monkeypatch.setenv("SLIMGRAPH_ONEDNN", "0")
    off = layer_choice._device_name(torch.device("cpu"))
    monkeypatch.delenv("SLIMGRAPH_ONEDNN")
    on = layer_choice._device_name(torch.device("cpu"))
    assert off.endswith("-reference") and (on.endswith("-onednn") == cpu_int8.available())
    # decisions timed with oneDNN's uint8 GEMM for dynamic Linears are not reused where torch._int_mm runs them
    assert ("-intmm-" in on) == (cpu_int8.available() and cpu_int8.int_mm_exact())
