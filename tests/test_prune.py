import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_close_outputs, assert_identical, assert_state_unchanged, count_ops, run, state_snapshot

import slimgraph as sg
from slimgraph.errors import InputError, PipelineError
from slimgraph.numerics import compare_outputs
from slimgraph.passes import PassManager
from slimgraph.prune.analysis import analyze
from slimgraph.testing import ZOO, make
from slimgraph.testing.models import MLP

aten = torch.ops.aten


def _shapes(out):
    return [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", list(ZOO))
def test_prune_runs_on_every_family(name, tmp_path):
    model, args, kwargs = make(name)
    snapshot = state_snapshot(model)
    pruned = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs)
    report = sg.prune_report(pruned)
    out, ref = run(pruned, args, kwargs), run(model, args, kwargs)
    assert _shapes(out) == _shapes(ref), "output shapes must not change"
    assert report.params_after < report.params_before, report.table()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    again = sg.capture(pruned, args, kwargs)  # still capturable
    assert_identical(run(again, args, kwargs), out)
    loaded = sg.load(sg.save(pruned, tmp_path / "p.sg"))  # and savable
    assert_identical(run(loaded, args, kwargs), out)
    assert_state_unchanged(model, snapshot)


def test_depthwise_groups_follow_the_channels():
    model, args, _ = make("mobile_block_cnn")
    pruned = sg.prune(model, args, ratio=0.5, round_to=1)
    dw = next(n for n in pruned.graph.nodes if n.target is aten.conv2d.default and n.args[1].target == "dw.0.weight")
    channels = pruned.get_parameter("dw.0.weight").shape[0]
    assert channels < 48 and dw.args[6] == channels


def test_channel_shuffle_keeps_group_structure():
    model, args, _ = make("shuffle_cnn")
    pruned = sg.prune(model, args, ratio=0.5, round_to=1)
    report = sg.prune_report(pruned)
    stream = next(g for g in report.groups if g.name.startswith("stem"))
    assert stream.status == "pruned" and stream.width_before == 16 and stream.width_after == 8
    g1 = next(g for g in report.groups if g.name.startswith("g1"))
    # g1's local channels are tied across the shuffle to g2's input groups: one unit, never guessed
    assert g1.status == "unprunable"
    for conv in ("g1.0.weight", "g2.0.weight"):
        assert pruned.get_parameter(conv).shape[0] % 4 == 0  # 4 equal groups remain
    assert _shapes(run(pruned, args)) == _shapes(run(model, args))


def test_heads_rewrite_shape_constants_and_gqa_keeps_q_with_kv():
    model, args, kwargs = make("llama_gqa")
    pruned = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs)
    q = pruned.get_parameter("layers.0.self_attn.q_proj.weight")
    k = pruned.get_parameter("layers.0.self_attn.k_proj.weight")
    assert q.shape[0] == 32 and k.shape[0] == 16  # one kv head (16) kept with its two q heads (2 x 16)
    expands = [n for n in pruned.graph.nodes if n.target is aten.expand.default and len(n.args[1]) == 5]
    assert expands and all(n.args[1][1] == 1 for n in expands)  # kv head count in repeat_kv rewritten


def test_unknown_op_makes_its_group_unprunable_and_says_why():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(torch.cumsum(self.fc1(x), dim=-1))  # cumsum mixes channels: no rule

    pruned = sg.prune(M(), (torch.randn(3, 8),), ratio=0.5)
    report = sg.prune_report(pruned)
    fc1 = next(g for g in report.groups if g.name == "fc1")
    assert fc1.status == "unprunable" and "no pruning rule for aten.cumsum" in fc1.reason
    assert not report.pruned


def test_model_with_only_unprunable_groups_is_a_reported_no_op():
    model = nn.Linear(4, 3)
    pruned = sg.prune(model, (torch.randn(2, 4),), ratio=0.5)
    record = sg.graph_info(pruned).history[-1]
    assert not record.modified and "nothing to prune" in record.notes[-1]
    assert_identical(pruned(torch.ones(2, 4)), model(torch.ones(2, 4)))


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, "ratio must be in"),
    ({"ratio": -0.1}, "ratio must be in"),
    ({"importance": "magic"}, "unknown importance"),
    ({"scope": "everywhere"}, "unknown scope"),
    ({"round_to": 0}, "round_to"),
    ({"ignore": ["no.such.module"]}, "does not have"),
    ({"ratios": {"heads": 1.5}}, "ratios"),
])
def test_bad_arguments_get_clear_errors(kwargs, match):
    model, args, _ = make("mlp")
    with pytest.raises(InputError, match=match):
        sg.prune(model, args, **kwargs)


def test_pipeline_string_validates_too():
    with pytest.raises(PipelineError, match="ratio must be in"):
        sg.PassManager("prune{ratio=2}")


def test_round_to_rounds_kept_width_up():
    model = MLP(d_in=8, hidden=128, d_out=4).eval()
    x = torch.randn(2, 8)
    exact = sg.prune(model, (x,), ratio=0.3, round_to=1)
    assert exact.get_parameter("fc1.weight").shape[0] == 128 - int(0.3 * 128)  # 90
    tiled = sg.prune(model, (x,), ratio=0.3, round_to=8)
    assert tiled.get_parameter("fc1.weight").shape[0] == 96
    tiny = sg.prune(model, (x,), ratio=0.99, round_to=1)
    assert tiny.get_parameter("fc1.weight").shape[0] == 2  # 128 - floor(126.72) = 2; never below one unit


def test_global_scope_ranks_across_groups_with_a_floor():
    model = MLP(d_in=8, hidden=64, d_out=4).eval()
    with torch.no_grad():
        model.fc2.weight.mul_(100.0)  # fc1's output units matter much less than fc2's... per raw magnitude
        model.fc1.weight[:32] *= 0.01  # within fc1, half the units are nearly dead
    x = torch.randn(2, 8)
    pruned = sg.prune(model, (x,), ratio=0.25, scope="global", round_to=1, floor=0.1)
    n1 = pruned.get_parameter("fc1.weight").shape[0]
    n2 = pruned.get_parameter("fc2.weight").shape[0]
    assert (64 - n1) + (64 - n2) == 32  # one ranking, 25% of all 128 units
    assert n1 < n2  # the normalized ranking finds fc1's near-dead half
    floored = sg.prune(model, (x,), ratio=0.9, scope="global", round_to=1, floor=0.4)
    for name in ("fc1.weight", "fc2.weight"):
        assert floored.get_parameter(name).shape[0] >= 0.4 * 64


def test_ratio_overrides_by_kind_and_module():
    model, args, kwargs = make("bert")
    pruned = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs,
                      ratios={"heads": 0.25, "encoder.layer.1.intermediate.dense": 0.0})
    assert pruned.get_parameter("encoder.layer.0.attention.self.query.weight").shape[0] == 48  # 3 of 4 heads
    assert pruned.get_parameter("encoder.layer.0.intermediate.dense.weight").shape[0] == 64
    assert pruned.get_parameter("encoder.layer.1.intermediate.dense.weight").shape[0] == 128


def test_ignore_by_name_and_by_module():
    model, args, kwargs = make("bert")
    by_name = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs, ignore=["encoder.layer.0"])
    assert by_name.get_parameter("encoder.layer.0.intermediate.dense.weight").shape[0] == 128
    assert by_name.get_parameter("encoder.layer.1.intermediate.dense.weight").shape[0] == 64
    by_module = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs,
                         ignore=[model.encoder.layer[1].attention])
    assert by_module.get_parameter("encoder.layer.1.attention.self.query.weight").shape[0] == 64
    assert by_module.get_parameter("encoder.layer.0.attention.self.query.weight").shape[0] == 32
    with pytest.raises(InputError, match="not a submodule"):
        sg.prune(model, args, example_kwargs=kwargs, ignore=[nn.Linear(2, 2)])


def _bn_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([1.0, 0.01, 1.0, 0.02, 1.0, 0.03, 1.0, 0.04]))
    return m, (torch.randn(2, 3, 6, 6),)


def test_bn_scale_importance_removes_small_gammas():
    model, args = _bn_model()
    pruned = sg.prune(model, args, ratio=0.5, importance="bn-scale", round_to=1)
    assert torch.equal(pruned.get_parameter("1.weight"), torch.ones(4))


def test_bn_scale_falls_back_to_l2_without_batchnorm():
    model, args, _ = make("mlp")
    pruned = sg.prune(model, args, ratio=0.5, importance="bn-scale", round_to=1)
    notes = sg.graph_info(pruned).history[-1].notes
    assert any("no BatchNorm" in n for n in notes)


def test_activation_aware_importance_ranks_unexcited_units_low():
    model, args, _ = make("mlp")
    calib = [(torch.randn(8, 32),) for _ in range(2)]
    with torch.no_grad():
        model.fc1.bias[:32] = -100.0  # these 32 units are never excited (relu output 0): fc2 never sees them
    pruned = sg.prune(model, args, ratio=0.5, importance="act", round_to=1, calib=calib, ratios={"fc2": 0.0})
    assert torch.equal(pruned.get_parameter("fc1.weight"), model.fc1.weight[32:])
    assert_close_outputs(run(pruned, args), run(model, args), rel=1e-6)  # removing silent units is exact
    l2 = sg.prune(model, args, ratio=0.5, importance="l2", round_to=1)
    assert not torch.equal(l2.get_parameter("fc1.weight"), model.fc1.weight[32:])  # magnitude alone cannot see it


def test_taylor_and_random_importance():
    model, args, _ = make("mlp")
    dead = torch.arange(0, 64, 2)
    with torch.no_grad():
        model.fc1.weight[dead] = 0
        model.fc1.bias[dead] = 0
        model.fc2.weight[:, dead] = 0
    calib = [(torch.randn(4, 32),) for _ in range(3)]
    taylor = sg.prune(model, args, ratio=0.5, importance="taylor", round_to=1, calib=calib)
    assert torch.equal(taylor.get_parameter("fc1.weight"), model.fc1.weight[1::2])  # dead units: zero |w * g|
    r1 = sg.prune(model, args, ratio=0.5, importance="random", round_to=1, seed=1)
    r2 = sg.prune(model, args, ratio=0.5, importance="random", round_to=1, seed=1)
    assert torch.equal(r1.get_parameter("fc1.weight"), r2.get_parameter("fc1.weight"))  # seeded
    assert all(p.grad is None for p in model.parameters())  # taylor left the caller's model alone


def test_layer_norm_groups_are_flagged_approximate():
    model, args, _ = make("vit")
    pruned = sg.prune(model, args, ratio=0.25)
    stream = next(g for g in sg.prune_report(pruned).groups if "patch_embeddings" in g.name)
    assert stream.approximate and stream.status == "pruned"
    assert "*" in sg.prune_report(pruned).table()


def test_prune_pass_in_a_pipeline_and_numerics_recorded():
    model, args, _ = make("residual_cnn")
    gm = sg.capture(model, args)
    result = PassManager("prune{ratio=0.25,round_to=4},fold-bn,fuse", check_numerics=True).run(gm)
    prune_record = result.records[0]
    assert prune_record.modified and prune_record.error_vs_input is not None  # lossy: measured, not enforced
    assert count_ops(result.gm)[torch.ops.slimgraph.conv_act.default] > 0
    assert compare_outputs(run(result.gm, args), run(gm, args)).cosine > 0.0


def test_report_lists_groups():
    model, args, kwargs = make("bert")
    pruned = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs)
    table = sg.prune_report(pruned).table()
    assert "heads" in table and "intermediate.dense" in table and "feeds the model output" in table


def test_analysis_groups_for_gated_mlp():
    model, args, kwargs = make("llama_gqa")
    a = analyze(sg.capture(model, args, kwargs))
    mlp = [g for g in a.groups if any("gate_proj" in a.sources[s].module for s in g.sources)]
    assert len(mlp) == 2 and all(len(g.sources) == 2 for g in mlp)  # gate and up coupled, per layer
    assert all({a.sources[s].module.split(".")[-1] for s in g.sources} == {"gate_proj", "up_proj"} for g in mlp)


def test_pruned_model_trains():
    model, args, _ = make("mlp")
    pruned = sg.prune(model, args, ratio=0.5)
    pruned.train()
    loss = F.mse_loss(pruned(*args), torch.zeros(4, 10))
    loss.backward()
    assert pruned.get_parameter("fc1.weight").grad is not None
