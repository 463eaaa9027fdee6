"""sg.sparsify end to end: exact sparsity, the dense masked model's outputs, ignore, importance, scope, the pass in a
pipeline string, recorded patterns, lowering decisions, and clear errors."""

import copy

import pytest
import torch
from sparse_helpers import MLP, ConvNet, tensor, zero_count

import slimgraph as sg
from slimgraph import InputError
from slimgraph.sparse import last_report, verify_sparsity

OFF = {"lower": "off"}


@pytest.fixture
def mlp():
    return MLP().eval()


@pytest.fixture
def x():
    return torch.randn(6, 64)


def masked_copy(model: torch.nn.Module, sparse_gm) -> torch.nn.Module:
    """The user's model with the zeros of ``sparse_gm`` applied by hand: what sparsify must equal."""
    dense = copy.deepcopy(model)
    for name in sg.graph_info(sparse_gm).sparsity:
        with torch.no_grad():
            p = dense.get_parameter(name)
            p.mul_(tensor(sparse_gm, name) != 0)
    return dense


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", (16, 16)])
def test_outputs_equal_the_dense_masked_model_and_the_input_model_is_untouched(mlp, x, pattern):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    sparsity = 0.5 if pattern == "2:4" else 0.7
    sp = sg.sparsify(mlp, (x,), sparsity=sparsity, pattern=pattern, **OFF)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert sorted(sg.graph_info(sp).sparsity) == ["fc1.weight", "fc2.weight", "head.weight"]
    assert set(sg.graph_info(sp).sparsity.values()) == {str(sg.sparse.parse_pattern(pattern))}
    reference = masked_copy(mlp, sp)
    for batch in (x, torch.randn(1, 64), torch.randn(9, 64)):
        torch.testing.assert_close(sp(batch), reference(batch), rtol=0, atol=0)
    verify_sparsity(sp)


def test_global_and_local_sparsity_are_exact(mlp, x):
    with torch.no_grad():
        mlp.fc2.weight.mul_(0.05)  # an unimportant layer: global ranking takes more from it
    total = sum(mlp.get_parameter(f"{n}.weight").numel() for n in ("fc1", "fc2", "head"))
    glob = sg.sparsify(mlp, (x,), sparsity=0.8, scope="global", **OFF)
    report = last_report(glob)
    assert sum(r.zeros for r in report.layers) == round(0.8 * total)
    by_name = {r.name: r for r in report.layers}
    assert by_name["fc2"].sparsity > 0.95 > by_name["fc1"].sparsity
    local = sg.sparsify(mlp, (x,), sparsity=0.8, scope="local", **OFF)
    for row in last_report(local).layers:
        assert row.zeros == round(0.8 * row.numel) == zero_count(tensor(local, row.weight))
    assert "fc2" in str(last_report(local)) and "80.00%" in str(last_report(local))


def test_ignore_keeps_layers_dense_and_reports_typos(mlp, x):
    sp = sg.sparsify(mlp, (x,), sparsity=0.5, ignore=["head", "nothing_like_this"], scope="local", **OFF)
    assert zero_count(tensor(sp, "head.weight")) == 0
    assert "head.weight" not in sg.graph_info(sp).sparsity
    report = last_report(sp)
    head = next(r for r in report.layers if r.name == "head")
    assert head.pattern == "-" and head.reason == "ignored"
    assert any("nothing_like_this" in n for n in report.notes)
    nothing = sg.sparsify(mlp, (x,), ignore="linear", **OFF)
    assert "nothing to sparsify" in " ".join(last_report(nothing).notes)
    assert not sg.graph_info(nothing).sparsity


def test_l2_ranks_elements_like_l1_and_act_follows_the_input_scale(mlp, x):
    l1 = sg.sparsify(mlp, (x,), sparsity=0.5, importance="l1", scope="local", **OFF)
    l2 = sg.sparsify(mlp, (x,), sparsity=0.5, importance="l2", scope="local", **OFF)
    assert torch.equal(tensor(l1, "fc1.weight") == 0, tensor(l2, "fc1.weight") == 0)
    # input feature j scaled by 10**(j % 3): act must keep the weights that read the loud features
    scale = torch.tensor([10.0 ** (j % 3) for j in range(64)])
    data = [(torch.randn(16, 64) * scale,), ((torch.randn(4, 64) * scale,), {})]
    act = sg.sparsify(mlp, (x,), sparsity=0.5, importance="act", data=data, scope="local", **OFF)
    w = mlp.fc1.weight.detach()
    inputs = torch.cat([data[0][0], data[1][0][0]])
    score = w.abs() * inputs.norm(dim=0)
    expected_zero = score <= score.flatten().kthvalue(round(0.5 * w.numel())).values
    assert torch.equal(tensor(act, "fc1.weight") == 0, expected_zero)
    assert not torch.equal(tensor(act, "fc1.weight") == 0, tensor(l1, "fc1.weight") == 0)
    unused = sg.sparsify(mlp, (x,), sparsity=0.5, data=data, **OFF)
    assert any("importance='act' to use it" in n for n in last_report(unused).notes)


def test_convs_including_padding_same_and_grouped_are_candidates():
    model, x = ConvNet().eval(), torch.randn(2, 4, 10, 10)
    sp = sg.sparsify(model, (x,), sparsity=0.5, pattern="2:4", ignore=["head"], lower="always")
    names = {r.name: r for r in last_report(sp).layers}
    assert {"conv1", "conv2", "dw"} <= set(names) and names["conv2"].kind == "conv2d"
    for n in ("conv1", "conv2", "dw"):
        assert names[n].sparsity == 0.5 and names[n].reason.endswith("convolutions have no sparse kernel")
    torch.testing.assert_close(sp(x), masked_copy(model, sp)(x), rtol=0, atol=0)
    act = sg.sparsify(model, (x,), sparsity=0.5, importance="act", data=[(x,)], **OFF)  # grouped conv norms
    torch.testing.assert_close(act(x), masked_copy(model, act)(x), rtol=0, atol=0)


def test_nm_on_an_input_dim_that_is_not_a_multiple_of_m_names_the_layer():
    model = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(InputError, match=r"layer '0'.*input dimension 7 is not a multiple of M=4.*ignore=\['0'\]"):
        sg.sparsify(model, (torch.randn(2, 7),), pattern="2:4", **OFF)
    sp = sg.sparsify(model, (torch.randn(2, 7),), pattern="2:4", ignore=["0"], **OFF)
    assert list(sg.graph_info(sp).sparsity) == ["2.weight"]


def test_the_pass_runs_from_a_pipeline_string(mlp, x):
    opt = sg.optimize(mlp, (x,), pipeline="sparsify{sparsity=0.75,pattern=16x16,scope=local,lower=off,ignore=[head]}")
    report = last_report(opt)
    assert report.pattern == "16x16" and report.scope == "local"
    assert sg.graph_info(opt).sparsity == {"fc1.weight": "16x16", "fc2.weight": "16x16"}
    assert [r.sparsity for r in report.layers[:2]] == [0.75, 0.75]  # 96 and 64 wide: whole tiles reach 75%
    from slimgraph.passes.base import parse_pipeline

    (p,) = parse_pipeline("sparsify{pattern=2:4}")
    assert str(p) == "sparsify{pattern=2:4}"
    with pytest.raises(sg.PipelineError, match="has no option 'data'"):
        parse_pipeline("sparsify{data=x}")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sparsity": 1.0}, r"in \[0, 1\)"), ({"sparsity": -0.1}, r"in \[0, 1\)"), ({"sparsity": "0.5"}, "number"),
    ({"pattern": "diagonal"}, "unknown sparsity pattern"), ({"pattern": "2:4", "sparsity": 0.9}, "fixes the sparsity"),
    ({"scope": "layer"}, "unknown scope"), ({"importance": "taylor"}, "unknown importance"),
    ({"lower": "yes"}, "unknown lower mode"), ({"data": torch.randn(2, 64)}, "iterable of input batches"),
])
def test_bad_arguments_raise_clear_input_errors(mlp, x, kwargs, match):
    with pytest.raises(InputError, match=match):
        sg.sparsify(mlp, (x,), **kwargs)


def test_non_tensor_inputs_and_bad_calibration_data_are_input_errors(mlp, x):
    with pytest.raises(InputError, match=r"example_inputs\[0\] is a str"):
        sg.sparsify(mlp, ("not a tensor",))
    with pytest.raises(InputError, match="non-empty tuple"):
        sg.sparsify(mlp, None)
    with pytest.raises(InputError, match="NaN or Inf"):
        sg.sparsify(mlp, (x,), importance="act", data=[(torch.full((2, 64), float("nan")),)], **OFF)


def test_auto_lowering_follows_the_measurement(monkeypatch, mlp, x):
    import slimgraph.layer_choice as autotune

    monkeypatch.setattr(autotune, "default_timer", lambda fn: 1.0 if fn.__name__ == "call" else 2.0)
    fast = sg.sparsify(mlp, (x,), sparsity=0.9)
    ops = [n.target for n in fast.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.slimgraph.sparse_linear.default) == 3
    assert all(r.lowered_to and r.times_ms == {"dense": 2.0, "csr": 1.0} for r in last_report(fast).layers)
    assert sg.graph_info(fast).sparsity == {}  # no dense weight left whose zeros fine-tuning must keep
    assert not any(name.endswith(".weight") for name, _ in fast.named_buffers())  # dense weights dropped

    monkeypatch.setattr(autotune, "default_timer", lambda fn: 1.0 if fn.__name__ != "call" else 2.0)
    slow = sg.sparsify(mlp, (x,), sparsity=0.9)
    assert not any(n.target == torch.ops.slimgraph.sparse_linear.default for n in slow.graph.nodes)
    for row in last_report(slow).layers:
        assert not row.lowered_to and "not 5% faster than dense at input 6x" in row.reason
        assert row.times_ms == {"dense": 1.0, "csr": 2.0}
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-5, atol=1e-6)


def test_always_lowers_to_csr_matching_the_dense_masked_model(mlp, x):
    sp = sg.sparsify(mlp, (x,), sparsity=0.9, lower="always")
    assert len(last_report(sp).lowered) == 3
    reference = masked_copy(mlp, sg.sparsify(mlp, (x,), sparsity=0.9, **OFF))
    for batch in (x, torch.randn(1, 64), torch.randn(3, 5, 64)):
        torch.testing.assert_close(sp(batch), reference(batch), rtol=1e-5, atol=1e-5)
    again = sg.sparsify(sp, sparsity=0.5, lower="off")  # a lowered graph has no dense linear weight left
    assert "nothing to sparsify" in " ".join(last_report(again).notes)


def test_auto_skips_timing_csr_where_it_would_read_more_bytes_than_dense(monkeypatch, mlp, x):
    import slimgraph.layer_choice as autotune

    def no_timing(fn):
        raise AssertionError("a layer at 50% density must not be timed")

    monkeypatch.setattr(autotune, "default_timer", no_timing)
    sp = sg.sparsify(mlp, (x,), pattern="2:4")
    for row in last_report(sp).layers:
        assert not row.lowered_to and not row.times_ms
        assert row.reason.startswith("CSR would read 1.0")


def test_lower_sparse_lowers_a_fine_tuned_graph_without_re_ranking(mlp, x):
    sp = sg.sparsify(mlp, (x,), sparsity=0.8, lower="off")
    zeros_before = {k: tensor(sp, k) == 0 for k in sg.graph_info(sp).sparsity}
    with torch.no_grad():  # "fine-tuning": the surviving weights move, the zeros stay
        for k, zero in zeros_before.items():
            tensor(sp, k).add_(torch.randn_like(tensor(sp, k)) * 0.01 * ~zero)
    expected = sp(x)
    fast = sg.PassManager("lower-sparse{lower=always}", check_numerics=True).run(sp).gm
    assert sum(n.target == torch.ops.slimgraph.sparse_linear.default for n in fast.graph.nodes) == 3
    report = last_report(fast)
    assert [r.zeros for r in report.layers] == [int(z.sum()) for z in zeros_before.values()]
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    untouched = sg.PassManager("lower-sparse").run(sg.capture(mlp, (x,))).gm  # nothing recorded: a no-op
    assert "run sparsify first" in " ".join(last_report(untouched).notes)


def test_lower_sparse_refuses_a_weight_that_broke_its_pattern(mlp, x):
    sp = sg.sparsify(mlp, (x,), pattern="2:4", lower="off")
    with torch.no_grad():
        w = tensor(sp, "fc1.weight")
        w[0, :4] = 1.0  # a whole group of four non-zero
    with pytest.raises(sg.PassError, match=r"fc1.weight.*breaks pattern 2:4.*row 0"):
        sg.PassManager("lower-sparse").run(sp)


def test_fused_linear_act_lowers_with_its_activation(mlp, x):
    fused = sg.optimize(mlp, (x,), pipeline="fuse")
    assert any(n.target == torch.ops.slimgraph.linear_act.default for n in fused.graph.nodes)
    dense = sg.sparsify(fused, sparsity=0.85, lower="off")
    lowered = sg.sparsify(fused, sparsity=0.85, lower="always")
    acts = [n.args[-1] for n in lowered.graph.nodes if n.target == torch.ops.slimgraph.sparse_linear.default]
    assert sorted(acts) == ["none", "relu", "relu"]
    torch.testing.assert_close(lowered(x), dense(x), rtol=1e-5, atol=1e-5)


class HandWritten(torch.nn.Module):
    """``x @ W.T + b`` and ``x @ V`` written by hand: canonicalized to aten.linear at capture, so candidates too."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(32, 24))
        self.b = torch.nn.Parameter(torch.randn(32))
        self.v = torch.nn.Parameter(torch.randn(32, 16))

    def forward(self, x):
        return torch.relu(x @ self.w.T + self.b) @ self.v


def test_hand_written_matmuls_are_sparsified():
    model, x = HandWritten().eval(), torch.randn(5, 24)
    sp = sg.sparsify(model, (x,), sparsity=0.75, scope="local", lower="always")
    report = last_report(sp)
    assert len(report.layers) == 2 and all(r.sparsity == 0.75 for r in report.layers)
    assert len(report.lowered) == 2
    dense = sg.sparsify(model, (x,), sparsity=0.75, scope="local", lower="off")
    torch.testing.assert_close(sp(x), dense(x), rtol=1e-5, atol=1e-5)
    w = model.w.detach()
    kept = tensor(dense, next(k for k in sg.graph_info(dense).sparsity if tensor(dense, k).shape == (32, 24)))
    assert torch.equal(kept != 0, w.abs() > w.abs().flatten().kthvalue(round(0.75 * w.numel())).values)
