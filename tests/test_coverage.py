"""Honest coverage: quantize and prune reports count GEMM weight *parameters*, including the ones left out."""

from __future__ import annotations

import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.quant.coverage import gemm_weight_coverage


class WithExperts(nn.Module):
    """A Linear, plus 3-D expert weights run through bmm: a GEMM weight no int8 rewrite handles."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.experts = nn.Parameter(torch.randn(4, 16, 32) / 4)  # 2048 parameters, more than proj's 256

    def forward(self, x):  # x [4, T, 16]: one token block per expert
        return torch.bmm(self.proj(x), self.experts).sum(-1)


def test_quant_report_counts_expert_weights_by_parameters():
    torch.manual_seed(0)
    model = WithExperts().eval()
    x = torch.randn(4, 6, 16)
    q = sg.quantize(model, (x,), scheme="w8a8-dynamic")
    report = sg.quant.last_report(q)
    experts = next(layer for layer in report.layers if layer.name == "experts")
    assert experts.int8 and experts.scheme == "w8-storage"  # 3-D expert weights stored in int8, run in float
    assert report.coverage.int8_params == 256 + 2048 and report.coverage.float_params == 0
    assert "100.0% of GEMM weight parameters in int8" in report.summary()


def test_quant_report_counts_expert_weights_left_in_float():
    torch.manual_seed(0)
    model = WithExperts().eval()
    x = torch.randn(4, 6, 16)
    q = sg.quantize(model, (x,), scheme="w8a8-dynamic", skip=["experts"])
    report = sg.quant.last_report(q)
    assert len(report.quantized) == 1  # one layer of two: a layer count hides how much stayed float ...
    cov = report.coverage
    assert cov.int8_params == 256 and cov.float_params == 4 * 16 * 32  # ... the parameter count does not
    assert abs(cov.fraction - 256 / (256 + 2048)) < 1e-9
    assert cov.left_out[0].name == "experts"
    assert "11.1% of GEMM weight parameters in int8" in report.summary()
    assert gemm_weight_coverage(sg.capture(model, (x,))).fraction == 0.0  # float graph: nothing in int8


def test_prune_report_states_the_fraction_in_prunable_groups():
    torch.manual_seed(0)
    model = WithExperts().eval()
    x = torch.randn(4, 6, 16)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    cov = sg.prune_report(pruned).coverage
    assert cov.total_params == 256 + 2048
    names = [name for name, _, _ in cov.left_out]
    assert "experts" in names and cov.fraction < 1.0
    assert "coverage:" in sg.prune_report(pruned).table()
