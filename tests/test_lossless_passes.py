"""fold-bn, fuse, fold-constants and dce: numbers match the unrewritten graph, the rewrite fired, and
cases the pass cannot prove legal are left alone."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_close_outputs, assert_identical, assert_state_unchanged, count_ops, run, state_snapshot

import slimgraph as sg
from slimgraph.ir.graph_utils import add_constant
from slimgraph.ir.propagate import refresh
from slimgraph.passes import PassManager
from slimgraph.testing import ZOO, make
from slimgraph.testing.models import _randomize_bn

aten = torch.ops.aten
sgops = torch.ops.slimgraph
BN_TARGETS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


def _run(model, args, pipeline, kwargs=None):
    gm = sg.capture(model, args, kwargs)
    return PassManager(pipeline, check_numerics=True).run(gm)


def _bn_count(gm):
    return sum(c for t, c in count_ops(gm).items() if t in BN_TARGETS)


# ------------------------------------------------------------------------------------------ fold-bn


@pytest.mark.parametrize("name", [n for n, c in ZOO.items() if c.has_bn])
def test_optimize_leaves_no_bn_and_is_exact(name, tmp_path):
    model, args, kwargs = make(name)
    snapshot = state_snapshot(model)
    expected = run(model, args, kwargs)
    opt = sg.optimize(model, args, "fold-bn,fuse", example_kwargs=kwargs)
    assert _bn_count(opt) == 0
    assert "fold-bn" in sg.graph_info(opt).applied
    assert_close_outputs(run(opt, args, kwargs), expected, rel=1e-4)
    assert not any("running_mean" in k for k in opt.state_dict()), "folded BN statistics must leave the model"
    sg.save(opt, tmp_path / "m.sg")
    loaded = sg.load(tmp_path / "m.sg")
    assert_identical(run(loaded, args, kwargs), run(opt, args, kwargs))
    assert_state_unchanged(model, snapshot)


class _ConvBN(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, bias=False),
    nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
    nn.Conv2d(4, 6, 1, groups=2),
    nn.ConvTranspose2d(4, 6, 2, stride=2),
    nn.ConvTranspose2d(4, 6, 3, groups=2),
], ids=["conv", "conv-nobias", "depthwise", "group", "transposed", "transposed-group"])
def test_bn_folds_into_preceding_conv(conv):
    model = _randomize_bn(_ConvBN(conv))
    x = torch.randn(2, conv.in_channels, 7, 7)
    result = _run(model, (x,), "fold-bn")
    assert result.records[0].stats["folded_into_producer"] == 1
    assert _bn_count(result.gm) == 0 and aten.mul.Tensor not in count_ops(result.gm)
    assert_close_outputs(result.gm(x), model(x), rel=1e-5)


def test_bn_folds_into_following_unpadded_conv_and_linear():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 6, 3, groups=2)
            self.bn1d = nn.BatchNorm1d(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            y = self.conv(self.bn(x)).mean((2, 3))
            return self.fc(self.bn1d(y))

    model = _randomize_bn(M())
    x = torch.randn(2, 4, 7, 7)
    result = _run(model, (x,), "fold-bn")
    assert result.records[0].stats["folded_into_consumer"] == 2
    assert _bn_count(result.gm) == 0
    assert_close_outputs(result.gm(x), model(x), rel=1e-5)


def test_bn_before_padded_conv_is_not_folded_into_it_but_lowered_to_affine():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 6, 3, padding=1)  # zero padding would see the BN shift: illegal

        def forward(self, x):
            return self.conv(torch.relu(x) + 0 if False else self.bn(x))

    model = _randomize_bn(M())
    x = torch.randn(2, 4, 5, 5)
    result = _run(model, (x,), "fold-bn")
    stats = result.records[0].stats
    assert stats["folded_into_consumer"] == 0 and stats["lowered_to_affine"] == 1
    assert any("zero-pads" in n for n in result.records[0].notes)
    ops = count_ops(result.gm)
    assert _bn_count(result.gm) == 0 and ops[aten.mul.Tensor] == 1 and ops[aten.add.Tensor] == 1
    assert_close_outputs(result.gm(x), model(x), rel=1e-5)


def test_bn_after_conv_with_two_readers_is_lowered_not_folded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change y for the second reader

    model = _randomize_bn(M())
    x = torch.randn(2, 3, 6, 6)
    result = _run(model, (x,), "fold-bn")
    assert result.records[0].stats["folded_into_producer"] == 0
    assert_close_outputs(result.gm(x), model(x), rel=1e-5)


def test_linear_bn_folds_only_for_2d_outputs():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.fc(x))

    model = _randomize_bn(M())
    x2 = torch.randn(3, 5)
    result = _run(model, (x2,), "fold-bn")
    assert result.records[0].stats["folded_into_producer"] == 1

    class M3(M):
        def forward(self, x):  # BN over channel axis 1 of [N, C, L] is not the linear's output axis
            return self.bn(self.fc(x).transpose(1, 2))

    model3 = _randomize_bn(M3())
    x3 = torch.randn(3, 7, 5)
    result = _run(model3, (x3,), "fold-bn")
    assert result.records[0].stats["folded_into_producer"] == 0
    assert_close_outputs(result.gm(x3), model3(x3), rel=1e-5)


def test_tied_conv_weight_is_not_rewritten():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) + F.conv2d(x, self.conv.weight)

    model = _randomize_bn(Tied())
    x = torch.randn(2, 4, 5, 5)
    result = _run(model, (x,), "fold-bn")
    assert result.records[0].stats["folded_into_producer"] == 0
    assert_close_outputs(result.gm(x), model(x), rel=1e-5)


def test_training_mode_bn_is_left_and_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    gm = sg.capture(model, (torch.randn(4, 3, 6, 6),))
    # Simulate a graph captured in training mode: flip the BN's training flag in the graph.
    bn = next(n for n in gm.graph.nodes if n.target is aten.batch_norm.default)
    bn.args = bn.args[:5] + (True,) + bn.args[6:]
    result = PassManager("fold-bn").run(gm)
    assert result.records[0].stats["left"] == 1 and not result.records[0].modified
    assert "training mode" in result.records[0].notes[0]


# --------------------------------------------------------------------------------------------- fuse


@pytest.mark.parametrize("act, fn", [
    ("relu", F.relu), ("relu6", F.relu6), ("gelu", F.gelu), ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh")),
    ("silu", F.silu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("hardswish", F.hardswish),
])
def test_linear_activation_fuses(act, fn):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            return fn(self.fc(x))

    model = M().eval()
    x = torch.randn(4, 3, 6)
    result = _run(model, (x,), "fuse")
    fused = [n for n in result.gm.graph.nodes if n.target is sgops.linear_act.default]
    assert len(fused) == 1 and fused[0].args[3] == act
    assert aten.linear.default not in count_ops(result.gm)
    assert_close_outputs(result.gm(x), model(x), rel=1e-6)


def test_conv_activation_fuses_with_conv_parameters_kept():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2), nn.SiLU()).eval()
    x = torch.randn(2, 4, 9, 9)
    result = _run(model, (x,), "fuse")
    (fused,) = [n for n in result.gm.graph.nodes if n.target is sgops.conv_act.default]
    assert fused.args[3:] == ([2, 2], [2, 2], [2, 2], 2, "silu")
    assert_close_outputs(result.gm(x), model(x), rel=1e-6)


def test_bias_add_folds_into_bias_then_activation_fuses():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.b = nn.Parameter(torch.randn(1, 4, 1, 1))
            self.fc = nn.Linear(4, 2, bias=False)
            self.fb = nn.Parameter(torch.randn(2))

        def forward(self, x):
            y = torch.relu(self.conv(x) + self.b).mean((2, 3))
            return self.fc(y) + self.fb

    model = M().eval()
    x = torch.randn(2, 3, 6, 6)
    result = _run(model, (x,), "fuse")
    stats = result.records[0].stats
    assert stats["bias_folded"] == 2 and stats["conv_act"] == 1
    assert aten.add.Tensor not in count_ops(result.gm)
    assert_close_outputs(result.gm(x), model(x), rel=1e-6)


def test_activation_on_shared_output_is_not_fused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return torch.relu(y) + y

    model = M().eval()
    x = torch.randn(3, 4)
    result = _run(model, (x,), "fuse")
    assert not result.records[0].modified
    assert "readers" in result.records[0].notes[0]


def test_non_channel_constant_add_is_not_a_bias():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3, bias=False)
            self.c = nn.Parameter(torch.randn(5, 1))  # broadcasts over rows, not output channels

        def forward(self, x):
            return self.fc(x) + self.c

    model = M().eval()
    x = torch.randn(5, 4)
    result = _run(model, (x,), "fuse")
    assert result.records[0].stats["bias_folded"] == 0
    assert_close_outputs(result.gm(x), model(x), rel=1e-6)


def test_fused_ops_survive_export_and_decompose_for_backends():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU()).eval()
    x = torch.randn(2, 4)
    opt = sg.optimize(model, (x,), "fuse")
    ep = torch.export.export(opt, (x,), strict=False)
    assert sgops.linear_act.default in {n.target for n in ep.graph.nodes}  # one node for later passes
    decomposed = ep.run_decompositions()  # what ONNX export and AOT compilers see
    targets = {n.target for n in decomposed.graph.nodes if n.op == "call_function"}
    assert sgops.linear_act.default not in targets and aten.gelu.default in targets
    assert_close_outputs(decomposed.module()(x), model(x), rel=1e-6)


# ---------------------------------------------------------------------------------- fold-constants


def test_parameter_only_subgraph_is_folded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 6))
            self.scale = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            w = (self.w * self.scale).t()  # depends on parameters only
            return x @ w + torch.arange(4, dtype=x.dtype)

    model = M().eval()
    x = torch.randn(3, 6)
    result = _run(model, (x,), "fold-constants")
    assert result.records[0].stats["folded"] >= 1
    ops = count_ops(result.gm)
    assert aten.mul.Tensor not in ops and aten.arange.default not in ops
    assert_close_outputs(result.gm(x), model(x), rel=1e-6)


def test_input_dependent_and_random_nodes_are_not_folded():
    class M(nn.Module):
        def forward(self, x):
            noise = torch.rand(3)
            return x * 2 + noise.sum() * 0

    model = M()
    x = torch.randn(2, 3)
    result = _run(model, (x,), "fold-constants")
    assert aten.rand.default in count_ops(result.gm)
    assert aten.mul.Tensor in count_ops(result.gm)


def test_fold_that_would_blow_up_memory_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.v = nn.Parameter(torch.randn(1, 8))

        def forward(self, x):
            return x + self.v.expand(4096, 8)  # folding would store 128 KiB to replace 32 bytes

    model = M().eval()
    x = torch.randn(2, 4096, 8)
    result = PassManager("fold-constants", check_numerics=True).run(sg.capture(model, (x,)))
    assert result.records[0].stats["folded"] == 0
    assert "unfolded" in result.records[0].notes[0]
    assert aten.expand.default in count_ops(result.gm)
    assert_close_outputs(result.gm(x), model(x), rel=0)


# ---------------------------------------------------------------------------------------------- dce


def test_dce_removes_unused_nodes_and_their_weights():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    x = torch.randn(2, 4)
    gm = sg.capture(model, (x,))
    # capture already drops dead code, so plant some: a linear nobody reads, with weights of its own, and a
    # dead relu after it
    graph = gm.graph
    w = add_constant(gm, torch.randn(3, 4), "unused.weight", parameter=True)
    b = add_constant(gm, torch.randn(3), "unused.bias", parameter=True)
    inp = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_before(next(n for n in graph.nodes if n.op == "output")):
        dead = graph.call_function(aten.linear.default, (inp, graph.get_attr(w), graph.get_attr(b)))
        graph.call_function(aten.relu.default, (dead,))
    refresh(gm)
    gm.recompile()
    assert count_ops(gm)[aten.linear.default] == 2 and any(k.startswith("unused") for k in gm.state_dict())
    result = PassManager("dce", check_numerics=True).run(gm)
    stats = result.records[0].stats
    assert result.records[0].modified and stats == {"nodes_removed": 4, "elements_freed": 15}
    assert not any(k.startswith("unused") for k in result.gm.state_dict())
    assert not hasattr(result.gm, "unused"), "the emptied owner submodule goes too"
    ops = count_ops(result.gm)
    assert ops[aten.linear.default] == 1 and aten.relu.default not in ops
    assert_close_outputs(result.gm(x), model(x), rel=0)


def test_dce_keeps_a_graph_without_dead_code_as_is():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    x = torch.randn(2, 4)
    gm = sg.capture(model, (x,))
    code = gm.code
    result = PassManager("dce", check_numerics=True).run(gm)
    assert not result.records[0].modified and result.gm.code == code
