"""Convs with string padding and ``x @ W.T`` weights reach the canonical ops every pass understands."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.quant.coverage import gemm_weight_coverage
from slimgraph.report import totals

aten = torch.ops.aten


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


class SamePadding(nn.Module):
    def __init__(self, k1=3, k2=4):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, k1, padding="same", dilation=2)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, k2, padding="same")  # even kernel: "same" pads one more on the right
        self.c3 = nn.Conv1d(8, 6, 3, padding="valid")

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))
        return self.c3(h.flatten(2))


@pytest.mark.parametrize("k2", [3, 4])
def test_string_padding_convs_become_plain_convs(k2):
    torch.manual_seed(0)
    model = SamePadding(k2=k2).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 10, 10)
    gm = sg.capture(model, (x,))
    targets = _targets(gm)
    assert not {aten.conv1d.padding, aten.conv2d.padding} & set(targets)
    assert targets.count(aten.conv2d.default) == 2 and aten.conv1d.default in targets
    assert (aten.constant_pad_nd.default in targets) == (k2 % 2 == 0)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    assert totals(gm).macs > 0
    folded = sg.optimize(model, (x,), pipeline="fold-bn")
    assert aten.batch_norm.default not in _targets(folded)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    q = sg.quantize(model, (x,), scheme="w8a8-dynamic")
    assert gemm_weight_coverage(q).fraction == 1.0
    assert len(sg.quant.last_report(q).quantized) == 3
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    assert pruned.c1.weight.shape[0] == 4 and pruned.c2.weight.shape[0] == 4


class TransposedWeight(nn.Module):
    """Falcon's linear: ``x @ self.weight.T`` (+ bias) with a Linear-layout [out, in] parameter."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(32, 8) / 3), nn.Parameter(torch.zeros(32))
        self.w2 = nn.Parameter(torch.randn(4, 32) / 6)

    def forward(self, x):
        return torch.relu(x @ self.w1.T + self.b1) @ self.w2.t()


def test_x_matmul_weight_t_is_a_linear_for_pruning_and_int8():
    torch.manual_seed(0)
    model = TransposedWeight().eval()
    x = torch.randn(3, 5, 8)
    gm = sg.capture(model, (x,))
    assert _targets(gm).count(aten.linear.default) == 2 and aten.matmul.default not in _targets(gm)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    assert pruned.w1.shape == (16, 8) and pruned.w2.shape == (4, 16)
    q = sg.quantize(model, (x,), scheme="w8a8-dynamic")
    cov = gemm_weight_coverage(q)
    assert cov.fraction == 1.0 and cov.int8_params == 32 * 8 + 4 * 32
    assert model.w1.shape == (32, 8)  # the user's model is untouched
