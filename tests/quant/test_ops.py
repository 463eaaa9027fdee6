"""The int8 graph ops: references against plain float math, fake implementations (export / compile trace them),
MACs rules, and the weight quantizer's contract (int8 in [-127, 127], per-output-channel float32 scales)."""

import pytest
import torch
import torch.nn.functional as F

from slimgraph.ir.cost import node_macs
from slimgraph.ir.info import TensorSpec
from slimgraph.quant.ops import quantize_tensor_reference, quantize_weight

sg = torch.ops.slimgraph


def _cos(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_weight_quantizer_is_symmetric_per_output_channel():
    w = torch.randn(7, 3, 3, 3) * torch.logspace(-2, 1, 7).view(7, 1, 1, 1)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.dtype == torch.float32 and s.shape == (7,)
    assert q.min() >= -127 and q.max() <= 127
    assert torch.equal(q.reshape(7, -1).abs().amax(1), torch.full((7,), 127, dtype=torch.int8))
    assert torch.allclose(q.float() * s.view(7, 1, 1, 1), w, atol=float(s.max()) / 2 + 1e-7)


def test_static_quantizer_rounds_half_to_even_and_saturates_like_onnx():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 300.0, -300.0, 127.4])
    q = quantize_tensor_reference(x, torch.tensor(1.0))
    assert q.tolist() == [0, 2, 2, 0, 127, -128, 127]


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "silu"])
@pytest.mark.parametrize("shape", [(1, 16), (3, 5, 33)], ids=["m1", "3d-odd-k"])
def test_qlinear_static_and_dynamic_match_float_linear(act, shape):
    x = torch.randn(*shape)
    w, b = torch.randn(9, shape[-1]), torch.randn(9)
    ref = F.linear(x, w, b)
    ref = {"none": ref, "relu": F.relu(ref), "gelu": F.gelu(ref), "silu": F.silu(ref)}[act]
    wq, ws = quantize_weight(w)
    s = (x.abs().max() / 127).reshape(())
    static = sg.qlinear_static(sg.quantize_per_tensor(x, s), s, wq, ws, b, act, None, torch.float32)
    q, rows = sg.dynamic_quantize_per_token(x)
    dynamic = sg.qlinear_dynamic(q, rows, wq, ws, b, act, torch.float32)
    w8a16 = sg.qlinear_w8a16(x, wq, ws, b, act)
    for y in (static, dynamic, w8a16):
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert _cos(y, ref) > 0.999


def test_requantizing_epilogue_equals_separate_quantize():
    x, w, b = torch.randn(4, 32), torch.randn(8, 32), torch.randn(8)
    wq, ws = quantize_weight(w)
    s, out_s = torch.tensor(0.03), torch.tensor(0.05)
    q = sg.quantize_per_tensor(x, s)
    fused = sg.qlinear_static(q, s, wq, ws, b, "relu", out_s, torch.float32)
    separate = sg.quantize_per_tensor(sg.qlinear_static(q, s, wq, ws, b, "relu", None, torch.float32), out_s)
    assert fused.dtype == torch.int8 and torch.equal(fused, separate)


@pytest.mark.parametrize("groups,cin,cout,kernel,stride,padding", [
    (1, 3, 8, 3, 1, 1), (8, 8, 8, 3, 2, 1), (2, 4, 6, 1, 1, 0)], ids=["dense", "depthwise-strided", "group-1x1"])
def test_qconv2d_matches_float_conv(groups, cin, cout, kernel, stride, padding):
    x, w, b = torch.randn(2, cin, 9, 7), torch.randn(cout, cin // groups, kernel, kernel), torch.randn(cout)
    ref = F.conv2d(x, w, b, stride, padding, 1, groups)
    wq, ws = quantize_weight(w)
    s = (x.abs().max() / 127).reshape(())
    geometry = ([stride] * 2, [padding] * 2, [1, 1], groups)
    static = sg.qconv_static(sg.quantize_per_tensor(x, s), s, wq, ws, b, *geometry, "none", None, torch.float32)
    q, ds = sg.dynamic_quantize_per_tensor(x)
    dynamic = sg.qconv_dynamic(q, ds, wq, ws, b, *geometry, "none", torch.float32)
    w8a16 = sg.qconv_w8a16(x, wq, ws, b, *geometry, "none")
    for y in (static, dynamic, w8a16):
        assert y.shape == ref.shape and _cos(y, ref) > 0.999


def test_qconv1d_runs_through_the_2d_kernel():
    x, w = torch.randn(2, 4, 17), torch.randn(6, 4, 3)
    wq, ws = quantize_weight(w)
    s = (x.abs().max() / 127).reshape(())
    y = sg.qconv_static(sg.quantize_per_tensor(x, s), s, wq, ws, None, [2], [1], [1], 1, "none", None, torch.float32)
    assert _cos(y, F.conv1d(x, w, None, 2, 1)) > 0.999


def test_qmatmul_and_qembedding():
    a, b = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 16, 8)
    assert _cos(sg.qmatmul_dynamic(a, b), a @ b) > 0.999
    table = torch.randn(50, 12)
    wq, ws = quantize_weight(table)
    ids = torch.randint(0, 50, (3, 5))
    y = sg.qembedding(wq, ws, ids, -1, torch.float32)
    assert y.shape == (3, 5, 12) and _cos(y, F.embedding(ids, table)) > 0.999


def test_layer_norm_quantize_matches_unfused():
    x, g, b = torch.randn(3, 7, 24), torch.rand(24) + 0.5, torch.randn(24)
    fused_q, fused_s = sg.layer_norm_quantize_per_token(x, [24], g, b, 1e-5)
    q, s = sg.dynamic_quantize_per_token(F.layer_norm(x, (24,), g, b, 1e-5))
    assert (fused_q.int() - q.int()).abs().max() <= 1 and torch.allclose(fused_s, s, rtol=1e-5)


def test_ops_trace_under_export_and_compile():
    w = torch.randn(8, 16)
    wq, ws = quantize_weight(w)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("wq", wq)
            self.register_buffer("ws", ws)
            self.register_buffer("s", torch.tensor(0.05))

        def forward(self, x):
            q = sg.quantize_per_tensor(x, self.s)
            return sg.qlinear_static(q, self.s, self.wq, self.ws, None, "relu", None, torch.float32)

    m, x = M(), torch.randn(4, 16)
    ep = torch.export.export(m, (x,))
    assert any(n.target is sg.qlinear_static.default for n in ep.graph.nodes)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), m(x))


def test_macs_rules_count_the_int8_gemms():
    x, s, w = TensorSpec((4, 16), torch.int8), TensorSpec((), torch.float32), TensorSpec((8, 16), torch.int8)
    out = TensorSpec((4, 8), torch.float32)
    assert node_macs(sg.qlinear_static.default, [x, s, w], out) == 4 * 8 * 16
    assert node_macs(sg.qlinear_w8a16.default, [TensorSpec((4, 16), torch.float32), w], out) == 4 * 8 * 16
    conv_w = TensorSpec((8, 3, 3, 3), torch.int8)
    conv_out = TensorSpec((2, 8, 5, 5), torch.float32)
    assert node_macs(sg.qconv_static.default, [TensorSpec((2, 3, 5, 5), torch.int8), s, conv_w], conv_out) == \
        2 * 8 * 25 * 27


def test_archives_naming_the_former_kernel_level_quantizer_still_load():
    # slimgraph::quantize_per_token was a kernel-level op until the ops/ split; archives that name it resolve to
    # the graph op with its schema and arithmetic.
    from slimgraph.archive.schema import decode_call_target

    op = decode_call_target("slimgraph::quantize_per_token.default", "node q")
    assert op is sg.dynamic_quantize_per_token.default
    assert str(op._schema).endswith("(Tensor x) -> (Tensor, Tensor)")
    x = torch.randn(3, 8)
    q, s = op(x)
    assert q.abs().amax(-1).tolist() == [127, 127, 127] and torch.allclose(q.float() * s[:, None], x, atol=0.01)
