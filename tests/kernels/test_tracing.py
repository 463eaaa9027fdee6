"""Every graph op with a Triton kernel behind it traces: torch.export keeps each as one opaque node, torch.compile
takes it whole (fullgraph), its fake implementation gives the right shapes (also with a dynamic batch, and under meta
tensors), and reports count its MACs. The kernel functions themselves are plain functions (not ops) that
torch.compile traces through on the reference path."""

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
# The graph ops whose CUDA path is a Triton kernel of slimgraph.kernels.
OPS = {
    ops.dynamic_quantize_per_token.default,
    ops.dynamic_quantize_per_tensor.default,
    ops.layer_norm_quantize_per_token.default,
    ops.qlinear_dynamic.default,
    ops.qlinear_static.default,
    ops.qlinear_w8a16.default,
    ops.qconv_static.default,
    ops.block_sparse_matmul.default,
}


class AllOps(torch.nn.Module):
    """A toy W8A8 block: every op once, wired the way the quantization and sparsity passes wire them."""

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
        bsr = to_block_sparse(dense, (16, 16))
        self.register_buffer("bsr_values", bsr.values)
        self.register_buffer("bsr_cols", bsr.col_indices)
        self.register_buffer("bsr_rows", bsr.row_ptr)
        self.register_buffer("cw", torch.randint(-127, 128, (8, 4, 3, 3), dtype=torch.int8))
        self.register_buffer("cws", torch.rand(8) * 0.01)

    def forward(self, x, img):
        q, s = ops.dynamic_quantize_per_token(x)
        y = ops.qlinear_dynamic(q, s, self.wq, self.ws, self.bias, "gelu", torch.float32)
        q2, s2 = ops.layer_norm_quantize_per_token(y, [48], self.ln_w, self.ln_b, 1e-5)
        z = ops.qlinear_w8a16(x, self.wq, self.ws, self.bias, "none")
        static_scale = s.amax()
        w = ops.qlinear_static(ops.quantize_per_tensor(x, static_scale), static_scale, self.wq, self.ws, None,
                               "relu", None, torch.float32)  # fmt: skip
        u = ops.block_sparse_matmul(y, self.bsr_values, self.bsr_cols, self.bsr_rows, 16, 48, None, None, None,
                                    "relu", None)  # fmt: skip
        qi, si = ops.dynamic_quantize_per_tensor(img)
        c = ops.qconv_static(qi, si, self.cw, self.cws, None, [1, 1], [1, 1], [1, 1], 1, "silu", None, torch.float32)
        return y, q2, s2, z, w, u, c


def _inputs(batch=5):
    return torch.randn(batch, 32), torch.randn(2, 4, 6, 6)


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
    assert all(targets.count(op) == 1 for op in OPS)
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
    out = ops.qlinear_dynamic(a, torch.empty(2, 3, device=meta), b, torch.empty(10, device=meta), None, "relu",
                              torch.bfloat16)  # fmt: skip
    assert out.shape == (2, 3, 10) and out.dtype == torch.bfloat16 and out.device == meta
    q, s = ops.layer_norm_quantize_per_token(torch.empty(4, 64, device=meta), [64], None, None, 1e-5)
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((4, 64), torch.int8, (4,), torch.float32)
    x = torch.empty(7, 48, dtype=torch.int8, device=meta)
    values = torch.empty(3, 16, 32, dtype=torch.int8, device=meta)
    y = ops.block_sparse_matmul(x, values, torch.empty(3, dtype=torch.int32, device=meta),
                                torch.empty(2, dtype=torch.int32, device=meta), 16, 48, torch.empty(16, device=meta),
                                torch.empty(7, device=meta), None, "none", torch.bfloat16)  # fmt: skip
    assert y.shape == (7, 16) and y.dtype == torch.bfloat16


def test_block_sparse_fake_rejects_a_bad_packing():
    meta = torch.device("meta")
    x = torch.empty(7, 48, device=meta)
    values = torch.empty(3, 16, 32, device=meta)
    with pytest.raises(Exception, match="row_ptr must have"):
        ops.block_sparse_matmul(x, values, torch.empty(3, dtype=torch.int32, device=meta),
                                torch.empty(5, dtype=torch.int32, device=meta), 16, 48, None, None, None, "none",
                                None)  # fmt: skip


def test_macs_rules_are_registered():
    def spec(*shape, dtype=torch.int8):
        return TensorSpec(tuple(shape), dtype)

    scale = spec(8, dtype=torch.float32)
    assert node_macs(ops.qlinear_dynamic.default, [spec(8, 64), scale, spec(32, 64)], spec(8, 32)) == 8 * 32 * 64
    assert node_macs(ops.qlinear_w8a16.default, [spec(2, 4, 64), spec(32, 64)], spec(2, 4, 32)) == 8 * 32 * 64
    # Block-sparse counts the work it does: rows x stored blocks x block area.
    assert node_macs(ops.block_sparse_matmul.default, [spec(8, 64), spec(3, 16, 32)], spec(8, 48)) == 8 * 3 * 512
    conv = node_macs(ops.qconv_dynamic.default, [spec(2, 4, 6, 6), scale, spec(8, 4, 3, 3)], spec(2, 8, 6, 6))
    assert conv == 2 * 6 * 6 * 8 * 3 * 3 * 4


def _kernel_functions(x, img, wq, ws, bias, ln_w, bsr, cw, cws):
    q, s = quantize_per_token(x)
    y = int8_matmul(q, wq, s, ws, bias, activation="gelu", out_dtype=torch.float32)
    q2, s2 = layernorm_quantize(y, ln_w, None, 1e-5)
    q3, s3 = rmsnorm_quantize(y, ln_w, 1e-6)
    z = w8a16_matmul(x, wq, ws, bias)
    u = block_sparse_matmul(y, bsr, activation="relu")
    c = int8_conv2d(img, cw, torch.tensor([0.02]), cws, None, padding=1, activation="silu")
    return y, q2, s2, q3, s3, z, u, c


def test_kernel_functions_are_plain_functions_that_compile(reference_path):
    # No torch.ops.slimgraph op per kernel: one op per concept (the graph ops above). On the reference path
    # torch.compile traces straight through a kernel function, with the same numbers.
    assert not any(hasattr(ops, name) for name in ("quantize_per_token", "int8_matmul", "layernorm_quantize",
                                                  "rmsnorm_quantize", "w8a16_matmul", "int8_conv2d"))
    m = AllOps()
    dense = torch.randn(16, 48)
    dense[:, :16] = 0
    args = (torch.randn(5, 32), torch.randint(-127, 128, (2, 6, 6, 4), dtype=torch.int8), m.wq, m.ws, m.bias,
            m.ln_w, to_block_sparse(dense, (16, 16)), torch.randint(-127, 128, (8, 3, 3, 4), dtype=torch.int8),
            m.cws)  # fmt: skip
    torch._dynamo.reset()
    compiled = torch.compile(_kernel_functions, fullgraph=True, backend="eager")
    _assert_same(compiled(*args), _kernel_functions(*args))


def test_every_graph_op_has_one_home_in_slimgraph_ops():
    # One home per op: every torch.ops.slimgraph op is defined by a module of slimgraph.ops (schema, fake, MACs
    # beside it), and none is left over from the kernel-level ops that duplicated them.
    from torch._library.custom_ops import OPDEFS

    import slimgraph.ops.epilogue as epilogue_ops

    names = {n for n in dir(ops) if not n.startswith("_") and isinstance(getattr(ops, n), torch._ops.OpOverloadPacket)}
    custom = {q.split("::")[1]: d for q, d in OPDEFS.items() if q.startswith("slimgraph::")}
    assert names == set(custom) | {"linear_act", "conv_act"}, names ^ (set(custom) | {"linear_act", "conv_act"})
    for name, opdef in custom.items():
        assert opdef._init_fn.__module__.startswith("slimgraph.ops."), (name, opdef._init_fn.__module__)
        assert opdef._abstract_fn is not None, f"{name} has no fake implementation"
    # The two CompositeImplicitAutograd epilogue groups run the ops module's functions.
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    assert torch.equal(ops.linear_act(x, w, b, "gelu"), epilogue_ops.linear_act(x, w, b, "gelu"))
    img, cw = torch.randn(1, 2, 5, 5), torch.randn(4, 2, 3, 3)
    assert torch.equal(ops.conv_act(img, cw, None, [1, 1], [1, 1], [1, 1], 1, "relu"),
                       epilogue_ops.conv_act(img, cw, None, [1, 1], [1, 1], [1, 1], 1, "relu"))  # fmt: skip
    for op in (ops.linear_act.default, ops.conv_act.default):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
