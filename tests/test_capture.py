import networkx as nx
import pytest
import torch
import torch.nn as nn
from helpers import assert_close_outputs, assert_state_unchanged, count_ops, run, state_snapshot

import slimgraph as sg
from slimgraph.errors import CaptureError, InputError
from slimgraph.ir import dynamo_constant_inputs, node_info
from slimgraph.testing import ZOO, make

aten = torch.ops.aten


@pytest.mark.parametrize("name", list(ZOO))
def test_capture_reproduces_outputs_and_fills_metadata(name):
    model, args, kwargs = make(name)
    snapshot = state_snapshot(model)
    gm = sg.capture(model, args, kwargs)
    assert_close_outputs(run(gm, args, kwargs), run(model, args, kwargs), rel=1e-5)
    sg.verify(gm)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    with_meta = [n for n in calls if node_info(n) is not None and node_info(n).outputs
                 and ("val" in n.meta or "tensor_meta" in n.meta)]
    assert len(with_meta) >= 0.9 * len(calls)
    gemms = [n for n in calls if node_info(n).macs > 0]
    assert gemms, "the cost model found no GEMM/conv node"
    assert all(node_info(n).params > 0 for n in gemms if n.target in (aten.linear.default, aten.conv2d.default))
    assert_state_unchanged(model, snapshot)


def test_metadata_values_on_a_known_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    gm = sg.capture(model, (torch.randn(2, 3, 8, 8),))
    conv = next(n for n in gm.graph.nodes if n.target is aten.conv2d.default)
    lin = next(n for n in gm.graph.nodes if n.target is aten.linear.default)
    assert node_info(conv).shape == (2, 8, 6, 6)
    assert node_info(conv).dtype == torch.float32
    assert node_info(conv).macs == 2 * 8 * 6 * 6 * 3 * 3 * 3
    assert node_info(conv).params == 8 * 3 * 3 * 3 + 8
    assert node_info(conv).module == "0" and node_info(conv).module_type == "Conv2d"
    assert node_info(lin).macs == 2 * 288 * 5
    assert node_info(lin).flops == 2 * node_info(lin).macs
    assert 0 in node_info(conv).spec.dynamic_dims  # batch dimension kept symbolic


def test_networkx_view_mirrors_the_graph():
    model, args, kwargs = make("residual_cnn")
    gm = sg.capture(model, args, kwargs)
    g = sg.to_networkx(gm)
    assert g.number_of_nodes() == len(gm.graph.nodes)
    assert nx.is_directed_acyclic_graph(g)
    for node in gm.graph.nodes:
        assert g.in_degree(node.name) == len(_flat_inputs(node))
    add = next(n for n in gm.graph.nodes if n.target is aten.add.Tensor)
    assert set(g.predecessors(add.name)) == {a.name for a in add.all_input_nodes}
    assert g.nodes[add.name]["target"] == "aten.add"


def _flat_inputs(node):
    out = []
    torch.fx.node.map_arg((node.args, node.kwargs), out.append)
    return out


def test_dynamic_batch_accepts_other_batch_sizes():
    model, args, kwargs = make("bert")
    gm = sg.capture(model, args, kwargs)
    assert sg.graph_info(gm).dynamic_batch
    ids = torch.randint(0, 100, (5, 16))
    mask = torch.ones(5, 16, dtype=torch.long)
    assert_close_outputs(run(gm, (ids,), {"attention_mask": mask}), run(model, (ids,), {"attention_mask": mask}),
                         rel=1e-5)


def test_canonical_form_is_functional_and_drops_eval_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    gm = sg.capture(model, (torch.randn(3, 4),))
    ops = count_ops(gm)
    assert aten.relu_.default not in ops and ops[aten.relu.default] == 1
    assert aten.dropout.default not in ops


def test_inplace_on_a_view_is_left_alone():
    class M(nn.Module):
        def forward(self, x):
            y = x * 2
            y[:, 0].relu_()  # mutates y through a view: must not be functionalized blindly
            return y

    x = torch.randn(3, 4)
    gm = sg.capture(M(), (x,))
    assert torch.equal(gm(x), M()(x))


def test_constant_rhs_gemms_become_linear():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))
            self.b = nn.Parameter(torch.randn(5))

        def forward(self, x):
            return torch.addmm(self.b, x, self.w) + x @ self.w

    x = torch.randn(3, 6)
    model = M()
    gm = sg.capture(model, (x,))
    ops = count_ops(gm)
    assert ops[aten.linear.default] == 2 and aten.addmm.default not in ops
    assert_close_outputs(gm(x), model(x), rel=1e-6)


def test_capture_restores_training_flags_and_traces_eval_behaviour():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.9))
    model.train()
    model[1].eval()  # mixed flags must survive
    x = torch.randn(8, 4)
    gm = sg.capture(model, (x,))
    assert model.training and not model[1].training and model[2].training
    model.eval()
    assert_close_outputs(gm(x), model(x), rel=1e-6)


def test_weights_are_private_copies():
    model = nn.Linear(4, 3)
    gm = sg.capture(model, (torch.randn(2, 4),))
    with torch.no_grad():
        gm.get_parameter("weight").add_(1.0)
    assert not torch.equal(gm.get_parameter("weight"), model.weight)


def test_untraceable_model_names_the_construct():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent branch
                return self.fc(x)
            return -x

    with pytest.raises(CaptureError) as err:
        sg.capture(DataDependent(), (torch.randn(2, 4),))
    text = str(err.value)
    assert "data-dependent control flow" in text
    assert "test_capture.py" in text and "if x.sum() > 0" in text
    assert "what to try" in text


def test_kv_cache_output_gets_a_useful_hint():
    model, args, kwargs = make("gpt2")
    model.config.use_cache = True
    with pytest.raises(CaptureError, match="use_cache"):
        sg.capture(model, args, kwargs)


@pytest.mark.parametrize("bad, match", [
    ([torch.randn(2, 4)], None),  # a list is accepted as a tuple
    ("x", "tuple of tensors"),
    ((torch.full((2, 4), float("nan")),), "NaN"),
])
def test_bad_example_inputs(bad, match):
    model = nn.Linear(4, 2)
    if match is None:
        sg.capture(model, bad)
        return
    with pytest.raises(InputError, match=match):
        sg.capture(model, bad)


def test_wrong_arity_is_reported_as_signature_mismatch():
    with pytest.raises(CaptureError, match="signature"):
        sg.capture(nn.Linear(4, 2), (torch.randn(2, 4), torch.randn(2, 4)))


def test_symbolic_trace_fallback_is_used_when_export_fails(monkeypatch):
    real_export = torch.export.export
    calls = []

    def flaky_export(model, *a, **k):
        calls.append(type(model).__name__)
        if not isinstance(model, torch.fx.GraphModule):
            raise RuntimeError("simulated export failure")
        return real_export(model, *a, **k)

    monkeypatch.setattr(torch.export, "export", flaky_export)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    gm = sg.capture(model, (x,))
    assert sg.graph_info(gm).source == "symbolic_trace"
    assert_close_outputs(gm(x), model(x), rel=1e-6)
    assert count_ops(gm)[aten.linear.default] == 1  # the fallback lands on the same op level


def test_dynamo_graph_with_lifted_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    captured = {}

    def backend(gm, example_inputs, **_):
        captured["gm"], captured["inputs"] = gm, list(example_inputs)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(x)
    dgm, inputs = captured["gm"], captured["inputs"]
    constants = dynamo_constant_inputs(dgm, inputs)
    gm = sg.capture(dgm, tuple(inputs), constant_inputs=constants)
    assert sg.graph_info(gm).source == "dynamo"
    rest = [t for i, t in enumerate(inputs) if i not in constants]
    assert len(rest) == 1
    expected = dgm(*inputs)
    assert_close_outputs(gm(*rest), expected, rel=1e-6)
    assert count_ops(gm)[aten.conv2d.default] == 1
    opt = sg.PassManager("fold-bn,fuse", check_numerics=True).run(gm).gm
    assert_close_outputs(opt(*rest), expected, rel=1e-5)
