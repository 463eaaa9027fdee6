"""The shared rewrite layer (slimgraph.ir.match): op families, the argument accessor, legality helpers, the
pattern walker, and a property test that fold-bn + fuse keep random conv/bn/linear chains exact."""

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from helpers import assert_close_outputs, count_ops
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slimgraph as sg
from slimgraph.ir.graph_utils import add_constant, fresh_attr_name
from slimgraph.ir.match import (
    ALL_CONVS,
    ALL_LINEARS,
    BATCH_NORMS,
    CONV_TRANSPOSES,
    CONVS,
    FUSED_CONVS,
    NORMS,
    OpFamily,
    Pattern,
    Reject,
    apply_patterns,
    arg,
    conv_dims,
    conv_geometry,
    exclusive_constant,
    is_call,
    only_reader,
    precedes,
    same_dtype,
)
from slimgraph.passes import PassManager
from slimgraph.testing.models import _randomize_bn

aten = torch.ops.aten


def _graph(fn, *args) -> fx.GraphModule:
    return sg.capture(fn, args)


# ------------------------------------------------------------------------------------------ families


def test_families_hold_their_ops_and_late_slimgraph_ops():
    import slimgraph.ops.epilogue  # noqa: F401 - registers slimgraph.conv_act / linear_act

    assert aten.conv2d.default in CONVS and aten.conv2d.padding not in CONVS
    assert aten.conv2d.padding in ALL_CONVS and torch.ops.slimgraph.conv_act.default in ALL_CONVS
    assert torch.ops.slimgraph.linear_act.default in ALL_LINEARS and aten.linear.default in ALL_LINEARS
    assert aten.conv_transpose2d.input in CONV_TRANSPOSES and aten.conv_transpose2d.input not in ALL_CONVS
    assert aten.batch_norm.default in BATCH_NORMS and aten.layer_norm.default in NORMS
    assert aten.layer_norm.default not in BATCH_NORMS and aten.relu.default not in NORMS
    union = CONVS | CONV_TRANSPOSES
    assert set(union) == set(CONVS) | set(CONV_TRANSPOSES)
    assert aten.relu.default in OpFamily("act", [aten.relu.default]) and "relu" not in CONVS


def test_family_of_an_unregistered_slimgraph_op_is_empty_until_registered():
    family = OpFamily("nothing", slimgraph=["no_such_op_h1"])
    assert set(family) == set()
    assert family._resolved is None  # asked again later, not cached as empty


# ---------------------------------------------------------------------------------- argument access


def _conv_nodes(gm):
    return [n for n in gm.graph.nodes if is_call(n, ALL_CONVS | CONV_TRANSPOSES)]


def test_arg_reads_position_keyword_and_default():
    graph = fx.Graph()
    x = graph.placeholder("x")
    node = graph.call_function(aten.gelu.default, (x,), {"approximate": "tanh"})
    assert arg(node, 0, "self") is x
    assert arg(node, 1, "approximate", "none") == "tanh"
    assert arg(node, 2, "missing", 7) == 7
    plain = graph.call_function(aten.gelu.default, (x, "none"))
    assert arg(plain, 1, "approximate") == "none"


def test_conv_geometry_parses_every_conv_form():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
            self.b = nn.Conv1d(6, 6, 3, padding=2, dilation=2)
            self.t = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)

        def forward(self, x):
            y = self.a(x)
            z = self.b(y.flatten(2)).view_as(y)
            return self.t(z)

    gm = _graph(M().eval(), torch.randn(1, 4, 8, 8))
    a, b, t = _conv_nodes(gm)
    assert conv_geometry(a) == conv_geometry(a) and conv_geometry(a).stride == (2, 2)
    assert conv_geometry(a).padding == (1, 1) and conv_geometry(a).groups == 2 and conv_dims(a) == 2
    assert conv_geometry(b).padding == (2,) and conv_geometry(b).dilation == (2,) and conv_dims(b) == 1
    gt = conv_geometry(t)
    assert (gt.stride, gt.padding, gt.output_padding, gt.groups, gt.dilation) == ((2, 2), (1, 1), (1, 1), 2, (1, 1))


def test_conv_geometry_keeps_string_padding_and_reads_conv_act():
    import slimgraph.kernels.epilogue  # noqa: F401

    graph = fx.Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    w.meta["val"] = torch.empty(6, 4, 3, 3)
    same = graph.call_function(aten.conv2d.padding, (x, w, None, [1, 1], "same"))
    fused = graph.call_function(torch.ops.slimgraph.conv_act.default,
                                (x, w, None, [1, 1], [1, 1], [1, 1], 1, "relu"))
    default = graph.call_function(aten.conv2d.padding, (x, w))
    assert conv_geometry(same).padding == "same" and conv_dims(same) == 2
    assert conv_geometry(default).padding == "valid" and conv_geometry(default).stride == (1, 1)
    assert conv_geometry(fused).padding == (1, 1) and conv_dims(fused) == 2
    assert same.target not in CONVS and fused.target in FUSED_CONVS


# -------------------------------------------------------------------------------------------- legality


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.relu(y)) + y


def test_legality_helpers():
    gm = _graph(_Tied().eval(), torch.randn(2, 4))
    linears = [n for n in gm.graph.nodes if is_call(n, ALL_LINEARS)]
    a, b = linears
    assert only_reader(a) is None, "a's output is read by relu and by the add"
    assert only_reader(b) is not None and only_reader(b).target is aten.add.Tensor
    assert exclusive_constant(gm, a.args[1]) is None, "a tied weight is never rewritten for one reader"
    assert exclusive_constant(gm, a.args[2]) is not None, "a's bias is its own"
    assert exclusive_constant(gm, a.args[0]) is None, "an input is no constant"
    assert same_dtype(a, b) and not same_dtype(a, torch.zeros(1, dtype=torch.int8))
    assert precedes(a, b) and not precedes(b, a) and not precedes(a, a)


# ---------------------------------------------------------------------------------------------- walker


def _relu_chain() -> fx.GraphModule:
    class M(nn.Module):
        def forward(self, x):
            y = torch.relu(torch.relu(x))
            return y, torch.relu(x * 2)

    return _graph(M(), torch.randn(3))


def _drop_relu(gm, node, source):
    node.replace_all_uses_with(source)
    gm.graph.erase_node(node)


def test_walker_counts_rewrites_and_reports_rejections():
    gm = _relu_chain()
    relu = {aten.relu.default}
    patterns = [
        # relu(relu(v))  =>  relu(v)
        Pattern("double_relu", relu, lambda gm, n: n.args[0] if is_call(n.args[0], relu) else None, _drop_relu),
        # relu(mul(..))  =>  rejected with a reason
        Pattern("never", relu, lambda gm, n: Reject("reads a mul") if is_call(n.args[0], {aten.mul.Tensor}) else None,
                lambda gm, n, m: pytest.fail("a rejected pattern must not rewrite")),
    ]
    before = count_ops(gm)[aten.relu.default]
    result = apply_patterns(gm, patterns)
    gm.graph.lint()
    assert result.counts == {"double_relu": 1, "never": 0} and result.total == 1
    assert result.left == 1 and len(result.notes) == 1 and "reads a mul" in result.notes[0]
    assert count_ops(gm)[aten.relu.default] == before - 1
    x = torch.randn(3)
    out = gm(x)
    assert torch.equal(out[0], torch.relu(x)) and torch.equal(out[1], torch.relu(x * 2))


def test_walker_repeat_reaches_a_fixpoint():
    class M(nn.Module):
        def forward(self, x):
            return torch.relu(torch.relu(torch.relu(torch.relu(x))))

    relu = {aten.relu.default}
    # a pattern anchored at the inner relu: each walk removes one of each pair it meets, so it needs several walks
    inner = Pattern("collapse", relu, lambda gm, n: n if is_call(only_reader(n), relu) else None,
                    lambda gm, n, m: _drop_relu(gm, only_reader(n), n))
    once = apply_patterns(_graph(M(), torch.randn(3)), [inner])
    gm = _graph(M(), torch.randn(3))
    fixed = apply_patterns(gm, [inner], repeat=True)
    assert fixed.counts["collapse"] == 3 and once.counts["collapse"] < 3
    assert count_ops(gm)[aten.relu.default] == 1


def test_walker_keeps_trying_patterns_while_the_anchor_lives():
    gm = _relu_chain()
    seen = []
    patterns = [
        Pattern("first", {aten.relu.default}, lambda gm, n: True, lambda gm, n, m: seen.append(("first", n.name))),
        Pattern("second", {aten.relu.default}, lambda gm, n: True, lambda gm, n, m: seen.append(("second", n.name))),
    ]
    result = apply_patterns(gm, patterns)
    relus = [n.name for n in gm.graph.nodes if is_call(n, {aten.relu.default})]
    assert seen == [(p, r) for r in relus for p in ("first", "second")]
    assert result.counts == {"first": 3, "second": 3} and result.left == 0


# --------------------------------------------------------------------------------- attribute naming


def test_fresh_attr_name_never_nests_under_a_tensor():
    gm = _graph(_Tied().eval(), torch.randn(2, 4))
    gm.register_buffer("w", torch.ones(2))
    assert fresh_attr_name(gm, "w.input_scale") == "w_input_scale"
    assert fresh_attr_name(gm, "a.input_scale") == "a.input_scale"  # a is a module: nests as before
    target = add_constant(gm, torch.zeros(1), "w.input_scale")
    assert target == "w_input_scale" and fresh_attr_name(gm, "w.input_scale") == "w_input_scale_1"
    assert fresh_attr_name(gm, "encoder.layer.0:matmul") == "encoder.layer._0_matmul"


def test_static_quantization_of_layers_named_after_tensors():
    """A GEMM whose weight is a bare tensor attribute is named after that tensor, so its input scale once went
    to ``<tensor>.input_scale`` and failed ("cannot create submodule")."""

    class Bare(nn.Module):
        def __init__(self, w, proj):
            super().__init__()
            self.w, self.proj = nn.Parameter(w), nn.Parameter(proj)

        def forward(self, x):
            return nn.functional.linear(torch.relu(nn.functional.linear(x, self.w)), self.proj)

    class Modules(nn.Module):
        def __init__(self, w, proj):
            super().__init__()
            self.w, self.proj = nn.Linear(16, 8, bias=False), nn.Linear(8, 8, bias=False)
            self.w.weight, self.proj.weight = nn.Parameter(w), nn.Parameter(proj)

        def forward(self, x):
            return self.proj(torch.relu(self.w(x)))

    w, proj, x = torch.randn(8, 16), torch.randn(8, 8), torch.randn(4, 16)
    q = sg.quantize(Bare(w, proj).eval(), (x,), scheme="w8a8")
    names = set(q.state_dict())
    assert {"w_input_scale", "proj_input_scale", "w_int8", "proj_int8"} <= names, names
    assert all(part.isidentifier() for key in names for part in key.split("."))
    assert count_ops(q)[torch.ops.slimgraph.qlinear_static.default] == 2
    # the same int8 program as for nn.Linear layers, whose scales nest under their modules
    twin = sg.quantize(Modules(w, proj).eval(), (x,), scheme="w8a8")
    assert {"w.input_scale", "proj.input_scale"} <= set(twin.state_dict())
    assert torch.equal(q(x), twin(x))


# --------------------------------------------------------------------- property: folding keeps the numbers

_BLOCKS = st.sampled_from(["conv", "conv_bn", "bn_conv", "conv_bn_relu", "shared_conv_bn", "relu"])


class _Chain(nn.Module):
    """conv / bn / relu blocks, a global pool, then linear [-> bn1d] [-> relu]. ``shared_conv_bn`` is
    relu -> conv -> bn(y) + y: the conv's output has two readers, so the BN must never fold into it."""

    def __init__(self, blocks, channels, tail_bn, tail_act, kernel, bias):
        super().__init__()
        self.kinds = list(blocks)
        self.layers = nn.ModuleList()
        c = channels
        for i, kind in enumerate(blocks):
            k = kernel if i % 2 == 0 else 1
            if kind == "relu":
                self.layers.append(nn.ReLU())
                continue
            # BN before a conv only folds when the conv does not pad: pad only convs with no BN in front
            pad = 0 if kind == "bn_conv" else k // 2
            conv = nn.Conv2d(c, c + 1, k, padding=pad, bias=bias)
            if kind == "conv":
                self.layers.append(conv)
            elif kind == "bn_conv":
                self.layers.append(nn.Sequential(nn.BatchNorm2d(c), conv))
            elif kind == "conv_bn":
                self.layers.append(nn.Sequential(conv, nn.BatchNorm2d(c + 1)))
            elif kind == "conv_bn_relu":
                self.layers.append(nn.Sequential(conv, nn.BatchNorm2d(c + 1), nn.ReLU()))
            else:
                self.layers.append(nn.ModuleDict({"conv": conv, "bn": nn.BatchNorm2d(c + 1)}))
            c += 1
        self.fc = nn.Linear(c, 5)
        self.tail = nn.Sequential(*([nn.BatchNorm1d(5)] if tail_bn else []), *([nn.ReLU()] if tail_act else []))

    def forward(self, x):
        for layer in self.layers:
            if isinstance(layer, nn.ModuleDict):
                y = layer["conv"](torch.relu(x))
                x = layer["bn"](y) + y
            else:
                x = layer(x)
        return self.tail(self.fc(x.mean((2, 3))))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(_BLOCKS, min_size=1, max_size=4), channels=st.integers(1, 4), tail_bn=st.booleans(),
       tail_act=st.booleans(), kernel=st.sampled_from([1, 3]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fold_bn_and_fuse_keep_random_chains_exact(blocks, channels, tail_bn, tail_act, kernel, bias, seed):
    torch.manual_seed(seed)
    model = _randomize_bn(_Chain(blocks, channels, tail_bn, tail_act, kernel, bias), seed=seed)
    x = torch.randn(2, channels, 6, 6)
    expected = model(x)
    result = PassManager("fold-bn,fuse", check_numerics=True).run(sg.capture(model, (x,)))
    assert_close_outputs(result.gm(x), expected, rel=1e-5)
    stats = result.records[0].stats
    bns = sum(kind in ("conv_bn", "bn_conv", "conv_bn_relu", "shared_conv_bn") for kind in blocks) + tail_bn
    assert stats["folded_into_producer"] + stats["folded_into_consumer"] + stats["lowered_to_affine"] == bns
    # every BN right after a conv that nothing else reads folds into it
    assert stats["folded_into_producer"] >= sum(kind in ("conv_bn", "conv_bn_relu") for kind in blocks) + tail_bn
    # a conv whose output has two readers is never folded into: its weight is the model's own
    state = result.gm.state_dict()
    for i, kind in enumerate(blocks):
        if kind == "shared_conv_bn":
            assert torch.equal(state[f"layers.{i}.conv.weight"], model.layers[i]["conv"].weight)
    fused = count_ops(result.gm)
    assert fused[torch.ops.slimgraph.linear_act.default] == int(tail_act)
    assert not any(t in BATCH_NORMS for t in fused)


def test_getitem_is_not_a_call_family_member():
    graph = fx.Graph()
    x = graph.placeholder("x")
    item = graph.call_function(operator.getitem, (x, 0))
    assert is_call(item) and not is_call(item, ALL_CONVS) and not is_call(x)
