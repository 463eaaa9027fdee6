"""Every kernel op traces: torch.compile(fullgraph=True) and torch.export keep them as single opaque nodes, their
fake implementations give the right shapes (also with a dynamic batch), and reports count their MACs."""

import pytest
import torch

from slimgraph.ir.cost import node_macs
from slimgraph.ir.info import TensorSpec
from slimgraph.kernels import (
    block_sparse_matmul,
    int8_conv2d,
    int8_matmul,
    layernorm_quantize,
    quantize_per_token,
    rmsnorm_quantize,
    to_block_sparse,
    w8a16_matmul,
)
from slimgraph.kernels.quantize import quantize_rows_reference

ops = torch.ops.slimgraph
OPS = {
    ops.quantize_per_token.default,
    ops.int8_matmul.default,
    ops.layernorm_quantize.default,
    ops.rmsnorm_quantize.default,
    ops.w8a16_matmul.default,
    ops.block_sparse_matmul.default,
    ops.int8_conv2d.default,
}


class AllOps(torch.nn.Module):
    """A toy W8A8 block: every op once, wired the way the quantization pass wires them."""

    def __init__(self):
        super().__init__()
        wq, ws = quantize_rows_reference(torch.randn(48, 32))
        self.register_buffer("wq", wq)
        self.register_buffer("ws", ws)
        self.register_buffer("bias", torch.randn(48))
        self.register_buffer("ln_w", torch.rand(48) + 0.5)
        self.register_buffer("ln_b", torch.randn(48))
        dense = torch.randn(16, 48)
        dense[:, :16] = 0
        self.bsr = to_block_sparse(dense, (16, 16))
        self.register_buffer("cw", torch.randint(-127, 128, (8, 3, 3, 4), dtype=torch.int8))
        self.register_buffer("cws", torch.rand(8) * 0.01)

    def forward(self, x, img):
        q, s = quantize_per_token(x)
        y = int8_matmul(q, self.wq, s, self.ws, self.bias, activation="gelu", out_dtype=torch.float32)
        q2, s2 = layernorm_quantize(y, self.ln_w, self.ln_b, 1e-5)
        q3, s3 = rmsnorm_quantize(y, self.ln_w, 1e-6)
        z = w8a16_matmul(x, self.wq, self.ws, self.bias)
        u = block_sparse_matmul(y, self.bsr, activation="relu")
        c = int8_conv2d(img, self.cw, torch.tensor([0.02]), self.cws, None, padding=1, activation="silu")
        return y, q2, s2, q3, s3, z, u, c


def _inputs(batch=5):
    return torch.randn(batch, 32), torch.randint(-127, 128, (2, 6, 6, 4), dtype=torch.int8)


@pytest.fixture
def reference_path(monkeypatch):
    """Tracing is about graphs, not kernels: run the fast CPU references."""
    monkeypatch.delenv("TRITON_INTERPRET")


def _assert_same(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_torch_compile_fullgraph(reference_path):
    model, args = AllOps(), _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    _assert_same(compiled(*args), model(*args))


def test_torch_export_keeps_each_op_as_one_node(reference_path):
    model, args = AllOps(), _inputs()
    ep = torch.export.export(model, args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert OPS <= set(targets), f"missing: {OPS - set(targets)}"
    _assert_same(ep.module()(*args), model(*args))


def test_torch_export_with_dynamic_batch(reference_path):
    model = AllOps()
    batch = torch.export.Dim("batch", min=2, max=4096)
    ep = torch.export.export(model, _inputs(5), dynamic_shapes={"x": {0: batch}, "img": None})
    for n in (3, 17):
        args = _inputs(n)
        _assert_same(ep.module()(*args), model(*args))


def test_fake_implementations_under_meta_tensors():
    meta = torch.device("meta")
    a = torch.empty(2, 3, 64, dtype=torch.int8, device=meta)
    b = torch.empty(10, 64, dtype=torch.int8, device=meta)
    out = ops.int8_matmul(a, b, torch.empty(2, 3, device=meta), torch.empty(10, device=meta), None, "relu",
                          torch.bfloat16)  # fmt: skip
    assert out.shape == (2, 3, 10) and out.dtype == torch.bfloat16 and out.device == meta
    q, s = ops.layernorm_quantize(torch.empty(4, 64, device=meta), None, None, 1e-5)
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((4, 64), torch.int8, (4,), torch.float32)


def test_macs_rules_are_registered():
    def spec(*shape, dtype=torch.int8):
        return TensorSpec(tuple(shape), dtype)

    assert node_macs(ops.int8_matmul.default, [spec(8, 64), spec(32, 64)], spec(8, 32)) == 8 * 32 * 64
    assert node_macs(ops.w8a16_matmul.default, [spec(2, 4, 64), spec(32, 64)], spec(2, 4, 32)) == 8 * 32 * 64
    # Block-sparse counts the work it does: rows x stored blocks x block area.
    assert node_macs(ops.block_sparse_matmul.default, [spec(8, 64), spec(3, 16, 32)], spec(8, 48)) == 8 * 3 * 512
    conv = node_macs(ops.int8_conv2d.default, [spec(2, 6, 6, 4), spec(8, 3, 3, 4)], spec(2, 6, 6, 8))
    assert conv == 2 * 6 * 6 * 8 * 3 * 3 * 4
