"""ONNX Runtime runs our int8 exports as integer kernels: exported with ``for_onnxruntime()``, the optimized graph
ORT writes (``optimized_model_filepath``) holds QLinearConv / QGemm / MatMulInteger for the quantized layers and no
float Conv/Gemm/MatMul left for them, and its outputs match the quantized torch model."""

import contextlib
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.quant.onnx_ops import cpu_has_vnni, for_onnxruntime, resolve_ort_target

FLOAT_GEMMS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")
INT_MATMULS = ("MatMulInteger", "MatMulIntegerToFloat")  # the latter: the GEMM with its rescale in one kernel


class ConvChain(nn.Module):
    """conv-relu-conv-relu-conv: each conv's only reader is the next quantized conv (int8 epilogues)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 32)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _int_matmuls(ops) -> int:
    return sum(ops[k] for k in INT_MATMULS)


def _ort_run(model, args, tmp_path, target="avx2"):
    """Export in ORT form, open with all graph optimizations; (outputs, op counts of the optimized graph). The
    default target is the form exact on every x86 CPU, so these tests check the same graph on any machine."""
    with for_onnxruntime(target):
        path = sg.export_onnx(model, args, tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "m.opt.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return out, ops


def _rel(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_static_conv_chain_runs_as_qlinearconv(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    q = sg.quantize(ConvChain().eval(), (x,), scheme="w8a8", calib=[(torch.randn(2, 3, 12, 12),) for _ in range(4)])
    out, ops = _ort_run(q, (x,), tmp_path)
    # c2 reads c1's Relu output (zero point -128: uint8 [0, 127] inside ORT) and writes int8 for c3 (Relu folded
    # into the QuantizeLinear): an integer conv. c1 reads the signed image, which ORT's uint8 x int8 conv could
    # saturate on CPUs without VNNI, and c3 writes float, for which ORT has no integer conv: both stay float.
    assert ops["QLinearConv"] == 1, ops
    assert sum(ops[k] for k in ("Conv", "FusedConv")) == 2, ops
    with torch.no_grad():
        want = q(x).numpy()
    # the same int8 math; c1's requantized Relu output keeps values above the calibrated range in ORT (zero point
    # -128 widens it to [0, 255 * scale]) where torch saturates them, which accounts for the difference
    assert _rel(out, want) < 2e-2


def test_static_mlp_runs_as_qgemm(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    q = sg.quantize(Mlp().eval(), (x,), scheme="w8a8", calib=[(torch.randn(8, 64),) for _ in range(4)])
    out, ops = _ort_run(q, (x,), tmp_path)
    assert _int_matmuls(ops) + ops["QGemm"] == 3, ops
    assert not any(ops[k] for k in FLOAT_GEMMS), ops
    with torch.no_grad():
        want = q(x).numpy()
    assert _rel(out, want) < 2e-2


@pytest.mark.parametrize("shape", [(8, 64), (2, 5, 64)])
def test_dynamic_linears_run_as_matmulinteger_and_match_exactly(shape, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 4  # large activations: the int8 extremes, where uint8 x int8 kernels saturate
    q = sg.quantize(Mlp().eval(), (x,), scheme="w8a8-dynamic")
    out, ops = _ort_run(q, (x,), tmp_path)
    assert _int_matmuls(ops) == 3, ops
    assert not any(ops[k] for k in FLOAT_GEMMS), ops
    with torch.no_grad():
        want = q(x).numpy()
    assert _rel(out, want) < 1e-5  # exact int32 sums on both sides: only float rounding of the epilogue differs


def test_dynamic_transformer_block_matches_and_uses_integer_matmuls(tmp_path):
    from slimgraph.testing.archs import TransformerEncoderNet

    torch.manual_seed(0)
    model = TransformerEncoderNet(norm_first=True).eval()
    ids = torch.randint(1, 100, (2, 16))
    q = sg.quantize(model, (ids,), scheme="w8a8-dynamic")
    out, ops = _ort_run(q, (ids,), tmp_path)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert _int_matmuls(ops) >= linears - 1, ops  # every quantized Linear (the output head may stay float)
    with torch.no_grad():
        want = q(ids).numpy()
    assert _rel(out, want) < 1e-4


def test_default_export_keeps_the_portable_form(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    q = sg.quantize(Mlp().eval(), (x,), scheme="w8a8-dynamic")
    graph = onnx.load(str(sg.export_onnx(q, (x,), tmp_path / "p.onnx"))).graph
    kinds = Counter(n.op_type for n in graph.node)
    assert kinds["MatMulInteger"] == 0 and kinds["Gemm"] == 3  # DequantizeLinear -> Gemm, what TensorRT reads


@pytest.mark.parametrize("name", ["residual_cnn", "flatten_cnn"])
def test_zoo_cnns_load_and_match_in_ort_form(name, tmp_path):
    """Pooled/flattened int8 inputs into a Linear (a Reshape between quantizer and GEMM) and residual blocks."""
    from slimgraph.testing import make

    torch.manual_seed(0)
    model, args, _ = make(name)
    q = sg.quantize(model, args, scheme="w8a8")
    out, ops = _ort_run(q, args, tmp_path)
    assert _int_matmuls(ops) + ops["QGemm"] >= 1, ops  # the classifier runs as an integer GEMM
    with torch.no_grad():
        want = q(*args).numpy()
    assert _rel(out, want) < 2e-2



def _skip_unless_exact_here(target: str) -> None:
    """A "vnni" file sums uint8 x int8 exactly only on a VNNI CPU; elsewhere its numerics are not checked."""
    if target != "avx2" and not cpu_has_vnni():
        pytest.skip("the vnni form is exact only on a CPU with AVX-512 VNNI / AVX-VNNI; this one has neither")


@pytest.mark.parametrize("target", ["avx2", "vnni"])
def test_dynamic_linears_weights_per_target_and_exact(target, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 64) * 4  # the int8 extremes: uint8 x int8 pair sums beyond int16 without VNNI
    q = sg.quantize(Mlp().eval(), (x,), scheme="w8a8-dynamic")
    out, ops = _ort_run(q, (x,), tmp_path, target=target)
    assert ops["MatMulIntegerToFloat"] == 3 and not any(ops[k] for k in FLOAT_GEMMS), ops
    # one uint8 quantizer per GEMM: the int8 per-token quantizer the torch graph holds is dead in ORT
    assert ops["QuantizeLinear"] == 3, ops
    graph = onnx.load(str(tmp_path / "m.opt.onnx")).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    b_types = {weights[n.input[1]] for n in graph.node if n.op_type == "MatMulIntegerToFloat"}
    assert b_types == {onnx.TensorProto.INT8 if target == "vnni" else onnx.TensorProto.UINT8}
    _skip_unless_exact_here(target)
    with torch.no_grad():
        want = q(x).numpy()
    assert _rel(out, want) < 1e-5


def test_vnni_target_runs_signed_conv_inputs_as_qlinearconv(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    q = sg.quantize(ConvChain().eval(), (x,), scheme="w8a8", calib=[(torch.randn(2, 3, 12, 12),) for _ in range(4)])
    out, ops = _ort_run(q, (x,), tmp_path, target="vnni")
    # c1 reads the signed image: int8 activations into QLinearConv, which the avx2 form keeps float (first test)
    assert ops["QLinearConv"] == 2, ops
    assert sum(ops[k] for k in ("Conv", "FusedConv")) == 1, ops  # c3 writes float: no integer conv for it
    _skip_unless_exact_here("vnni")
    with torch.no_grad():
        want = q(x).numpy()
    assert _rel(out, want) < 2e-2


def test_target_auto_reads_the_cpu_flags():
    assert cpu_has_vnni("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni("flags\t\t: fpu avx2 avx_vnni\n")
    assert not cpu_has_vnni("flags\t\t: fpu sse avx2 fma\n")
    assert resolve_ort_target("auto") == ("vnni" if cpu_has_vnni() else "avx2")
    assert resolve_ort_target("avx2") == "avx2"
    with pytest.raises(ValueError, match="target"):
        resolve_ort_target("avx512")


class ResidualBlocks(nn.Module):
    """ResNet's basic block shape: relu(conv-bn-relu-conv + shortcut); the next block reads relu(add), so the
    quantizer is hoisted above that Relu (an int8 Relu of a symmetric quantize), and a stride-2 block's input
    feeds its conv1 and its shortcut conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(32, 32, 3, padding=1)
        self.short = nn.Conv2d(16, 32, 1, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a2(torch.relu(self.a1(x))) + x)
        return torch.relu(self.b2(torch.relu(self.b1(x))) + self.short(x))


def _conv_weights_are_constants(tmp_path) -> bool:
    graph = onnx.load(str(tmp_path / "m.opt.onnx")).graph
    constants = {t.name for t in graph.initializer}
    return all(n.input[1] in constants for n in graph.node if n.op_type in ("Conv", "FusedConv"))


@pytest.mark.parametrize("target", ["avx2", "vnni"])
def test_residual_blocks_integer_convs_per_target(target, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    calib = [(torch.randn(2, 3, 16, 16),) for _ in range(4)]
    q = sg.quantize(ResidualBlocks().eval(), (x,), scheme="w8a8", calib=calib)
    out, ops = _ort_run(q, (x,), tmp_path, target=target)
    # Integer convs: those with an int8 output (a1, b1: a Relu epilogue read by the next conv). a1 reads a
    # symmetric quantize of the stem's output (the add reads it too), b1 reads relu(quantize(add)): signed int8,
    # which the avx2 form keeps in float convs; the vnni form runs a1 as QLinearConv with int8 activations and
    # writes b1's input as quantize(relu(add)) with zero point -128, which ORT folds into QLinearConv. Every other
    # conv writes float (into an add) and stays float, its weight folded to a float constant (no per-run
    # DequantizeLinear, ORT's blocked NCHWc conv).
    assert ops["QLinearConv"] == (2 if target == "vnni" else 0), ops
    assert sum(ops[k] for k in ("Conv", "FusedConv")) == 6 - ops["QLinearConv"], ops
    assert _conv_weights_are_constants(tmp_path)
    _skip_unless_exact_here(target)
    with torch.no_grad():
        want = q(x).numpy()
    assert _rel(out, want) < 2e-2


def test_the_file_records_which_cpus_it_is_exact_on(tmp_path):
    """An ORT-form file exported for VNNI gives wrong sums on a CPU without VNNI: its form travels in its
    metadata_props (slimgraph.onnx_form), so a deployment can check it; the portable default says qdq."""
    from slimgraph.onnx_export import FORM_KEY

    torch.manual_seed(0)
    x = torch.randn(4, 64)
    q = sg.quantize(Mlp().eval(), (x,), scheme="w8a8-dynamic")
    forms = {}
    for target in (None, "avx2", "vnni"):  # exporting in a form needs no such CPU; running it does
        path = tmp_path / f"{target}.onnx"
        with for_onnxruntime(target) if target else contextlib.nullcontext():
            sg.export_onnx(q, (x,), path)
        forms[target] = {p.key: p.value for p in onnx.load(str(path)).metadata_props}.get(FORM_KEY)
    assert forms == {None: "qdq", "avx2": "avx2", "vnni": "vnni"}
