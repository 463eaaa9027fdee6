"""ONNX export of float, pruned and quantized models: every exported model runs in ONNX Runtime and matches the
PyTorch module, and quantized graphs follow TensorRT's QDQ rules (checked by walking the ONNX graph)."""

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.utils._pytree as pytree
from helpers import run
from onnx import numpy_helper

from slimgraph.errors import InputError
from slimgraph.numerics import compare_outputs
from slimgraph.onnx_export import export_onnx
from slimgraph.prune import prune
from slimgraph.quant import quantize
from slimgraph.testing import make

GEMMS = ("Conv", "Gemm", "MatMul")
SHAPE_ONLY = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Cast", "CastLike")


# ------------------------------------------------------------------------------------------- the QDQ checker


@dataclass
class QDQSummary:
    quantize: int
    dequantize: int
    int8_weights: int
    gemms: int


def check_qdq(model: onnx.ModelProto, *, activations: str) -> QDQSummary:
    """Assert TensorRT's QDQ rules. ``activations``: "static" (Q/DQ with constant scales on every GEMM input),
    "dynamic" (run-time scales allowed) or "none" (weight-only: DQ on weights only)."""
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13, f"opset {opset} < 13"
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}

    def constant(name):
        if name in inits:
            return inits[name]
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    q_nodes = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    weights = 0
    for n in q_nodes:
        assert len(n.input) == 3, f"{n.name}: zero point must be explicit (the default is uint8)"
        zp = constant(n.input[2])
        if zp is not None:
            assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point must be int8 zeros"
        else:  # run-time per-row zero points: ConstantOfShape(int8 0)
            src = producer[n.input[2]]
            assert src.op_type == "ConstantOfShape"
            value = numpy_helper.to_array(src.attribute[0].t)
            assert value.dtype == np.int8 and not value.any()
        scale = constant(n.input[1])
        if activations == "static":
            assert scale is not None, f"{n.name}: static scales must be constants"
        w = constant(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if w is not None and w.dtype == np.int8 and w.ndim >= 2:
            weights += 1
            assert w.min() >= -127 and w.max() <= 127, f"{n.name}: weights must lie in [-127, 127]"
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            assert scale is not None and scale.shape == (w.shape[0],) and axis == 0, \
                f"{n.name}: weights need per-output-channel scales on axis 0"

    def source(name):
        node = producer.get(name)
        while node is not None and node.op_type in SHAPE_ONLY:
            name = node.input[0]
            node = producer.get(name)
        return node, name

    def dequantized(name):
        node, _ = source(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def float_weight(name):
        node, root = source(name)
        value = constant(root)
        return value is not None and value.dtype.kind == "f" and value.ndim >= 2

    gemms = [n for n in graph.node if n.op_type in GEMMS]
    for n in gemms:
        operands = list(n.input[:2])
        for name in operands:
            assert not float_weight(name), f"{n.op_type} '{n.name}': weight {name} is stored in float"
        if activations != "none" and any(dequantized(name) for name in operands):
            # A quantized GEMM gets Q/DQ on every input; activation x activation GEMMs left in float (attention
            # without attention=True) have no weight and are fine.
            for name in operands:
                assert dequantized(name), f"{n.op_type} '{n.name}': input {name} does not come from DequantizeLinear"
    return QDQSummary(sum(n.op_type == "QuantizeLinear" for n in q_nodes),
                      sum(n.op_type == "DequantizeLinear" for n in q_nodes), weights, len(gemms))


# ---------------------------------------------------------------------------------------------- helpers


def _ort_outputs(path, args, kwargs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), [*args, *kwargs.values()])}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _torch_outputs(module, args, kwargs):
    return [t for t in pytree.tree_leaves(run(module, args, kwargs)) if isinstance(t, torch.Tensor)]


def _export_and_compare(module, args, kwargs, path, *, rel=1e-4):
    export_onnx(module, args, path, example_kwargs=kwargs)
    expected = _torch_outputs(module, args, kwargs)
    got = _ort_outputs(path, args, kwargs)
    assert len(got) == len(expected)
    err = compare_outputs(got, expected)
    assert err.max_rel <= rel, f"ONNX Runtime differs from PyTorch: {err}"
    return onnx.load(str(path))


_ACTIVATIONS = {"w8a8": "static", "w8a8-dynamic": "dynamic", "w8a16": "none"}


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("scheme", [None, "w8a8", "w8a8-dynamic", "w8a16"])
@pytest.mark.parametrize("name", ["mlp", "residual_cnn", "flatten_cnn"])
def test_export_matches_onnx_runtime(name, scheme, tmp_path):
    model, args, kwargs = make(name)
    module = model if scheme is None else quantize(model, args, scheme, example_kwargs=kwargs)
    onnx_model = _export_and_compare(module, args, kwargs, tmp_path / "m.onnx")
    if scheme is None:
        assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx_model.graph.node)
        return
    summary = check_qdq(onnx_model, activations=_ACTIVATIONS[scheme])
    layers = {"mlp": 3, "residual_cnn": 7, "flatten_cnn": 4}[name]
    assert summary.int8_weights == summary.gemms == layers
    if scheme == "w8a8":
        assert summary.dequantize > layers  # weights + activations (readers of one value may share a DQ)
        if name == "flatten_cnn":
            assert summary.quantize == layers  # the input + a requantizing epilogue per hidden layer


@pytest.mark.parametrize("scheme", [None, "w8a8"])
def test_bert_encoder_exports(scheme, tmp_path):
    model, args, kwargs = make("bert")
    module = model if scheme is None else quantize(model, args, scheme, example_kwargs=kwargs)
    onnx_model = _export_and_compare(module, args, kwargs, tmp_path / "bert.onnx")
    if scheme is not None:
        summary = check_qdq(onnx_model, activations="static")
        assert summary.int8_weights == 13


def test_pruned_and_quantized_model_exports(tmp_path):
    model, args, kwargs = make("residual_cnn")
    pruned = prune(model, args, ratio=0.5)
    _export_and_compare(pruned, args, kwargs, tmp_path / "pruned.onnx")
    onnx_model = _export_and_compare(quantize(pruned, args, "w8a8"), args, kwargs, tmp_path / "pq.onnx")
    check_qdq(onnx_model, activations="static")


def test_batch_dimension_stays_dynamic(tmp_path):
    model, args, kwargs = make("mlp")
    q = quantize(model, args, "w8a8-dynamic")
    export_onnx(q, args, tmp_path / "m.onnx")
    x = torch.randn(7, 32)
    err = compare_outputs(_ort_outputs(tmp_path / "m.onnx", (x,), {}), _torch_outputs(q, (x,), {}))
    assert err.max_rel < 1e-4


def test_checker_rejects_a_non_qdq_graph(tmp_path):
    model, args, _ = make("mlp")
    export_onnx(model, args, tmp_path / "float.onnx")
    with pytest.raises(AssertionError, match="is stored in float"):
        check_qdq(onnx.load(str(tmp_path / "float.onnx")), activations="static")


def test_old_opset_is_refused(tmp_path):
    model, args, _ = make("mlp")
    with pytest.raises(InputError, match="opset"):
        export_onnx(model, args, tmp_path / "m.onnx", opset=11)


def test_attention_matmuls_and_embeddings_export(tmp_path):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 8))
    q = quantize(model, (ids,), "w8a8-dynamic", attention=True, embeddings=True)
    onnx_model = _export_and_compare(q, (ids,), {}, tmp_path / "att.onnx")
    summary = check_qdq(onnx_model, activations="dynamic")
    assert summary.int8_weights >= 7 + 2  # 7 linears, word + position embedding tables
    assert sum(n.op_type == "Gather" for n in onnx_model.graph.node) >= 2


def test_sequence_axes_and_output_names(tmp_path):
    model, args, kwargs = make("bert")
    q = quantize(model, args, "w8a8-dynamic", example_kwargs=kwargs)
    onnx_model = onnx.load(str(export_onnx(q, args, tmp_path / "bert.onnx", example_kwargs=kwargs)))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*onnx_model.graph.input, *onnx_model.graph.output]}
    assert dims["input_ids"] == ["batch", "sequence"]
    assert dims["last_hidden_state"] == ["batch", "sequence", 64] and dims["pooler_output"] == ["batch", 64]
    for b, s in [(1, 5), (3, 24)]:
        ids = torch.randint(0, 100, (b, s))
        mask = torch.ones(b, s, dtype=torch.long)
        err = compare_outputs(_ort_outputs(tmp_path / "bert.onnx", (ids,), {"attention_mask": mask}),
                              _torch_outputs(q, (ids,), {"attention_mask": mask}))
        assert err.cosine > 0.999, f"batch {b}, length {s}: {err}"


class _HeadsMerged(torch.nn.Module):
    """T5's attention tail: heads transposed back, made contiguous, then reshaped to [B, S, -1]."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 16)

    def forward(self, x, mask):
        b, s, _ = x.shape
        h = self.qkv(x).view(b, s, 4, 4).transpose(1, 2)  # [B, heads, S, d]
        h = torch.softmax(h @ h.transpose(-1, -2) + mask[:, None, None, :], -1) @ h
        return self.out(h.transpose(1, 2).contiguous().reshape(b, s, -1))


@pytest.mark.parametrize("scheme", [None, "w8a8-dynamic"])
def test_contiguous_then_reshape_exports_at_other_lengths(scheme, tmp_path):
    """The exporter decomposed `contiguous` away and turned the reshape after it into an invalid view."""
    from slimgraph.onnx_export import _copying_reshapes

    torch.manual_seed(0)
    x, mask = torch.randn(2, 8, 16), torch.zeros(2, 8)
    model = _HeadsMerged().eval()
    q = quantize(model, (x, mask), scheme) if scheme else model
    from slimgraph.ir.capture import capture

    gm = q if scheme else capture(model, (x, mask))
    copied = _copying_reshapes(gm)
    assert copied is not gm and not any(n.target is torch.ops.aten.contiguous.default for n in copied.graph.nodes)
    assert any(n.target is torch.ops.aten.contiguous.default for n in gm.graph.nodes)  # the caller's graph kept
    export_onnx(gm, (x, mask), tmp_path / "m.onnx")
    for b, s in [(3, 5), (1, 11)]:
        x2, mask2 = torch.randn(b, s, 16), torch.zeros(b, s)
        err = compare_outputs(_ort_outputs(tmp_path / "m.onnx", (x2, mask2), {}), _torch_outputs(gm, (x2, mask2), {}))
        assert err.max_rel < 1e-4, f"batch {b}, length {s}: {err}"


def test_inputs_of_one_shape_share_their_onnx_axes():
    """ids and their mask get one named Dim per axis, so export knows the two lengths are equal."""
    from slimgraph.ir.capture import capture
    from slimgraph.onnx_export import _dynamic_shapes

    model, args, kwargs = make("bert")
    gm = capture(model, args, kwargs)
    shared = _dynamic_shapes(gm, args, kwargs, shared=True)
    plain = _dynamic_shapes(gm, args, kwargs)
    for d in (0, 1):
        assert shared["input_ids"][d] is shared["attention_mask"][d]
    assert plain["input_ids"][1] is not None and plain["input_ids"][1] == plain["attention_mask"][1]  # both AUTO
