"""Mixture-of-experts blocks (transformers' Mixtral and Qwen2-MoE) through capture, pruning, archive and ONNX.

Capture traces experts in a dense ATen form (slimgraph/ir/experts.py): it must equal transformers' own routed
forward at other batch sizes and sequence lengths, leave the user's module as it was, and hold no op outside
aten. Pruning removes the same intermediate neurons from every expert of a block; a planted test (dead neurons
in half of them) checks that the pruned block computes exactly what the original computes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import assert_close_outputs, run

import slimgraph as sg
from slimgraph.ir.graph_utils import get_attr_tensor

transformers = pytest.importorskip("transformers")

HIDDEN, INTER, EXPERTS = 32, 48, 4


class MoEBlock(nn.Module):
    """One sparse-MoE block on [batch, seq, hidden] inputs (its output is the model output)."""

    def __init__(self, kind: str = "mixtral", implementation: str | None = None):
        super().__init__()
        torch.manual_seed(0)
        if kind == "mixtral":
            from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

            config = transformers.MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTER,
                                                num_local_experts=EXPERTS, num_experts_per_tok=2)
            self.moe = MixtralSparseMoeBlock(config)
        else:
            from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

            config = transformers.Qwen2MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=INTER,
                                                 shared_expert_intermediate_size=INTER, num_experts=EXPERTS,
                                                 num_experts_per_tok=2)
            self.moe = Qwen2MoeSparseMoeBlock(config)
        config._experts_implementation = implementation
        with torch.no_grad():
            for p in self.moe.parameters():  # transformers leaves 3-D expert weights uninitialised
                p.copy_(torch.randn(p.shape) * 0.2)

    def forward(self, x):
        return self.moe(x)


def _x(batch, seq, seed=0):
    return (torch.randn(batch, seq, HIDDEN, generator=torch.Generator().manual_seed(seed)),)


SHAPES = [(2, 16), (3, 16), (2, 11), (3, 7)]


def _foreign_ops(gm):
    return sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"
                   and getattr(n.target, "namespace", "aten") not in ("aten", "slimgraph")})


@pytest.mark.parametrize("kind,implementation", [("mixtral", None), ("mixtral", "grouped_mm"),
                                                 ("mixtral", "batched_mm"), ("qwen2_moe", "grouped_mm")])
def test_dense_capture_matches_routed_forward(kind, implementation):
    model = MoEBlock(kind, implementation).eval()
    experts = model.moe.experts
    gm = sg.capture(model, _x(2, 16))
    assert "forward" not in experts.__dict__, "capture must give the user's experts module its own forward back"
    assert _foreign_ops(gm) == []
    matmuls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.matmul.default]
    assert len(matmuls) == 2  # gate/up and down over the stacked expert weights
    for batch, seq in SHAPES:
        x = _x(batch, seq, seed=batch * 100 + seq)
        assert_close_outputs(run(gm, x), run(model, x), rel=1e-5)


def _plant_dead_neurons(model: MoEBlock) -> torch.Tensor:
    """Kill every other intermediate neuron of every expert (gate and up rows, down columns)."""
    dead = torch.arange(0, INTER, 2)
    experts = model.moe.experts
    with torch.no_grad():
        experts.gate_up_proj[:, dead] = 0
        experts.gate_up_proj[:, dead + INTER] = 0
        experts.down_proj[:, :, dead] = 0
    return dead


def test_prune_removes_planted_expert_neurons_exactly():
    model = MoEBlock("mixtral").eval()
    dead = _plant_dead_neurons(model)
    live = torch.tensor([i for i in range(INTER) if i not in set(dead.tolist())])
    gm = sg.capture(model, _x(2, 16))
    pruned = sg.prune(gm, _x(2, 16), ratio=0.5, importance="l2", reconstruct=False)
    gate_up = pruned.get_parameter("moe.experts.gate_up_proj")
    down = pruned.get_parameter("moe.experts.down_proj")
    assert tuple(gate_up.shape) == (EXPERTS, INTER, HIDDEN)  # 2 * INTER/2 rows: gate and up halves
    assert tuple(down.shape) == (EXPERTS, HIDDEN, INTER // 2)
    w = model.moe.experts
    assert torch.equal(gate_up, torch.cat([w.gate_up_proj[:, live], w.gate_up_proj[:, live + INTER]], 1))
    assert torch.equal(down, w.down_proj[:, :, live])
    for batch, seq in SHAPES:
        x = _x(batch, seq, seed=seq)
        assert_close_outputs(run(pruned, x), run(model, x), rel=1e-5)


def test_pruned_quantized_moe_archive_and_onnx_other_lengths(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = MoEBlock("qwen2_moe", "grouped_mm").eval()
    gm = sg.capture(model, _x(2, 16))
    pruned = sg.prune(gm, _x(2, 16), ratio=0.5, importance="l2")
    assert pruned.get_parameter("moe.experts.down_proj").shape[-1] == INTER // 2
    q = sg.quantize(pruned, _x(2, 16), scheme="w8a8-dynamic")
    stacked = [get_attr_tensor(q, n) for n in q.graph.nodes if n.op == "get_attr"]
    stacked = [t for t in stacked if t is not None and t.dim() == 3]  # only the expert weights are 3-D
    assert sorted(str(t.dtype) for t in stacked) == ["torch.float32"] * 2 + ["torch.int8"] * 2, stacked
    assert {tuple(t.shape) for t in stacked if t.dtype == torch.float32} == {(EXPERTS, 1, INTER), (EXPERTS, 1, HIDDEN)}
    loaded = sg.load(sg.save(q, tmp_path / "moe.sg"))
    # ONNX of the pruned float block: per-token int8 rounding in ONNX Runtime may flip a near-tie top-k choice,
    # which would test the router's luck, not the export (the matrix records the quantized export's SQNR)
    path = tmp_path / "moe.onnx"
    sg.export_onnx(pruned, _x(2, 16), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in [(3, 11), (1, 5)]:
        x = _x(batch, seq, seed=7)
        assert_close_outputs(run(loaded, x), run(q, x), rel=1e-6)
        expected = run(pruned, x)
        got = session.run(None, {session.get_inputs()[0].name: x[0].numpy()})[0]
        assert got.shape == tuple(expected.shape)
        assert_close_outputs(torch.from_numpy(got), expected, rel=1e-4)


def test_dense_capture_warns_once_with_the_flop_factor():
    """The dense form costs E/k times the routed expert FLOPs: capture says so, once per model, with the factor."""
    import warnings

    from slimgraph.ir.experts import DenseExpertsWarning

    model = MoEBlock("mixtral", None).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sg.capture(model, _x(2, 16))
    dense = [w for w in caught if issubclass(w.category, DenseExpertsWarning)]
    assert len(dense) == 1, [str(w.message) for w in caught]
    assert f"{EXPERTS / 2:g}x" in str(dense[0].message) and f"top-2 of {EXPERTS}" in str(dense[0].message)
    with warnings.catch_warnings(record=True) as caught:  # no experts: no warning
        warnings.simplefilter("always")
        sg.capture(torch.nn.Linear(HIDDEN, HIDDEN), _x(2, 16))
    assert not [w for w in caught if issubclass(w.category, DenseExpertsWarning)]
