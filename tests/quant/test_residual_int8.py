"""Static convs that feed residual adds write int8 (issue 12): ``qconv_static(.., out_scale)`` then
``dequantize_per_tensor`` before the add, so ONNX Runtime runs them as QLinearConv -> DequantizeLinear -> Add.
Covers the block's conv2 and shortcut conv (output calibrated) and a stem whose pooled output is also block 0's
identity shortcut (the quantize hoisted above the maxpool, the add reading it dequantized). An option:
``int8_residual_outputs()`` (or ``quant{residual_outputs=true}``)."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from helpers import assert_identical

import slimgraph as sg
from slimgraph.numerics import compare_outputs
from slimgraph.quant.onnx_ops import cpu_has_vnni, for_onnxruntime
from slimgraph.quant.quant_pass import int8_residual_outputs

sgops = torch.ops.slimgraph


class PooledResNet(nn.Module):
    """ResNet's shape in small: stem conv-relu-maxpool, an identity block, a stride-2 block with a shortcut conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(32, 32, 3, padding=1)
        self.short = nn.Conv2d(16, 32, 1, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.stem(x)), 3, 2, 1)
        x = torch.relu(self.a2(torch.relu(self.a1(x))) + x)
        x = torch.relu(self.b2(torch.relu(self.b1(x))) + self.short(x))
        return self.fc(x.mean((2, 3)))


def _model_and_data():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 24, 24)
    calib = [(torch.randn(2, 3, 24, 24),) for _ in range(4)] + [(x,)]
    model = PooledResNet().eval()
    with int8_residual_outputs():
        return model, x, sg.quantize(model, (x,), scheme="w8a8", calib=calib)


def test_the_keyword_turns_it_on_and_overrides_the_context():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 24, 24)
    model = PooledResNet().eval()
    on = sg.quantize(model, (x,), scheme="w8a8", residual_outputs=True)
    assert _calls(on, sgops.dequantize_per_tensor.default)
    with int8_residual_outputs():
        off = sg.quantize(model, (x,), scheme="w8a8", residual_outputs=False)
    assert not _calls(off, sgops.dequantize_per_tensor.default)


def test_off_by_default():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 24, 24)
    q = sg.quantize(PooledResNet().eval(), (x,), scheme="w8a8")
    assert not _calls(q, sgops.dequantize_per_tensor.default)
    assert sum(c.args[-2] is not None for c in _calls(q, sgops.qconv_static.default)) == 2  # a1, b1: Relu epilogues


def _calls(gm, target) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def test_every_conv_writes_int8_and_adds_read_it_dequantized():
    model, x, q = _model_and_data()
    convs = _calls(q, sgops.qconv_static.default)
    assert len(convs) == 6
    assert all(c.args[-2] is not None for c in convs), "every conv has an int8 epilogue (out_scale)"
    # a2, b2, short feed adds directly; the stem through its maxpool (block 0's identity shortcut)
    dequantized = _calls(q, sgops.dequantize_per_tensor.default)
    assert len(dequantized) == 4
    assert all(all(u.target is torch.ops.aten.add.Tensor for u in d.users) for d in dequantized)
    pooled = [d for d in dequantized if d.args[0].target is torch.ops.aten.max_pool2d.default]
    assert len(pooled) == 1 and pooled[0].args[0].args[0] in convs  # maxpool of the stem's int8 output
    with torch.no_grad():
        err = compare_outputs(q(x), model(x))
    assert err.cosine > 0.999 and err.max_rel < 0.05, err  # test_quantize's w8a8 bound
    assert any("int8 residual outputs: 3 convs" in n for n in sg.quant.last_report(q).notes)


def test_the_dequantize_op_reference_and_fake():
    q = torch.tensor([-128, -1, 0, 5, 127], dtype=torch.int8)
    s = torch.tensor(0.5)
    assert torch.equal(sgops.dequantize_per_tensor(q, s), torch.tensor([-64.0, -0.5, 0.0, 2.5, 63.5]))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        out = sgops.dequantize_per_tensor(mode.from_tensor(q), mode.from_tensor(s))
    assert out.dtype == torch.float32 and out.shape == q.shape


def test_archive_reproduces_it(tmp_path):
    _, x, q = _model_and_data()
    sg.save(q, tmp_path / "q.sg")
    loaded = sg.load(tmp_path / "q.sg")
    assert len(_calls(loaded, sgops.dequantize_per_tensor.default)) == 4
    with torch.no_grad():
        assert_identical(loaded(x), q(x))
        x5 = torch.randn(5, 3, 24, 24)
        assert_identical(loaded(x5), q(x5))


@pytest.mark.parametrize("target", ["avx2", "vnni"])
def test_onnxruntime_runs_every_conv_as_qlinearconv_in_vnni_form(target, tmp_path):
    _, x, q = _model_and_data()
    with for_onnxruntime(target):
        path = sg.export_onnx(q, (x,), tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "m.opt.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # declared types agree (uint8 Relu outputs)
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    # vnni: all six, including a stride-2 block's conv1 and shortcut reading one Relu output, and the stem whose
    # pooled int8 output block 0's add reads too. avx2: the convs reading a Relu epilogue (a1 through the maxpool,
    # a2, b2); the image and relu(quantize(add)) are signed int8 there: stem, b1, short stay float
    assert ops["QLinearConv"] == (6 if target == "vnni" else 3), ops
    assert ops["QLinearConv"] + ops["Conv"] + ops["FusedConv"] == 6, ops
    if target == "vnni" and not cpu_has_vnni():
        pytest.skip("the vnni form is exact only on a CPU with AVX-512 VNNI / AVX-VNNI; this one has neither")
    with torch.no_grad():
        want = q(x).numpy()
    assert float(np.abs(out - want).max() / np.abs(want).max()) < 2e-2
