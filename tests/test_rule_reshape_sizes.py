"""A reshape whose labelled dim's size is computed in the graph (MobileViT's ``batch * channels`` for a merged
[B * C] dim) cannot lose units: the rewrite changes literal sizes only, so the analysis blocks it with a reason
instead of leaving a stale ``batch * 8`` behind (which failed shape propagation after pruning)."""

from __future__ import annotations

import torch
import torch.nn as nn
from helpers import assert_close_outputs, run

import slimgraph as sg


class MergedBatchChannels(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        z = torch.softmax(y.reshape(b * c, h * w), dim=-1)  # per (sample, channel) rows: a computed size
        return self.b(z.reshape(b, c, h, w))


def test_computed_size_of_a_labelled_dim_blocks_and_the_model_still_runs():
    model = MergedBatchChannels().eval()
    x = torch.randn(2, 3, 6, 6)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    reasons = " ".join(g.reason for g in sg.prune_report(pruned).groups if g.status == "unprunable")
    assert "computes a labelled dim's size" in reasons, reasons
    assert pruned.get_parameter("a.weight").shape[0] == 8
    for shape in [(2, 3, 6, 6), (3, 3, 6, 6), (1, 3, 8, 4)]:
        x2 = torch.randn(shape)
        assert_close_outputs(run(pruned, (x2,)), run(model, (x2,)), rel=1e-5)
