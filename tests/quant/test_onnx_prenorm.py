"""ONNX export of w8a8-dynamic pre-norm models: the fused LayerNorm + per-token quantize op translates."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import slimgraph as sg
from slimgraph.testing.archs import TransformerEncoderNet

sgops = torch.ops.slimgraph


def test_prenorm_encoder_w8a8_dynamic_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    model = TransformerEncoderNet(norm_first=True).eval()
    ids = torch.randint(1, 100, (2, 16))
    q = sg.quantize(model, (ids,), scheme="w8a8-dynamic")
    fused = [n for n in q.graph.nodes if n.target is sgops.layer_norm_quantize_per_token.default]
    assert fused, "the pre-norm LayerNorms should fuse with the per-token quantize of the next GEMM"
    path = sg.export_onnx(q, (ids,), tmp_path / "prenorm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (ids, torch.cat([ids, ids[:1]])):
        (got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        with torch.no_grad():
            want = q(batch).numpy()
        assert got.shape == want.shape
        # the same int8 math in both runtimes; only float rounding of the scales differs
        assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()
