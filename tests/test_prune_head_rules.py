"""Rules lifted from "blocked" to exact (issue 11, cause 9), each checked on a planted model.

Every model here has dead units planted (all weights in and out of them zero, biases chosen so they output
zero): removing exactly those is lossless, so ``ratio=0.5, round_to=1`` must match the unpruned output.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import slimgraph as sg

DEAD = [1, 2, 5, 7, 8, 10, 12, 15]  # 8 of 16 units


def _plant(up: nn.Linear) -> None:
    with torch.no_grad():
        up.weight[DEAD] = 0
        up.bias[DEAD] = -1.0  # relu(-1) = 0: a dead unit outputs zero whatever the input


def _prune_exact(model, x, **kw):
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1, **kw)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    return pruned


class Repeat(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(32, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)).repeat(1, 2))  # [B, 16] -> [B, 32]: two copies of each unit


def test_repeat_tiles_labels_exactly():
    torch.manual_seed(0)
    model = Repeat().eval()
    _plant(model.up)
    x = torch.randn(5, 8)
    pruned = _prune_exact(model, x)
    assert pruned.up.weight.shape == (8, 8) and pruned.down.weight.shape == (4, 16)


class WhereScalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.up(x))
        return self.down(torch.where(h > 0.5, h, 0.0))  # aten.where.ScalarOther


def test_where_scalar_other_couples_elementwise():
    torch.manual_seed(0)
    model = WhereScalar().eval()
    _plant(model.up)
    x = torch.randn(5, 8)
    gm = sg.capture(model, (x,))
    assert torch.ops.aten.where.ScalarOther in [n.target for n in gm.graph.nodes]
    pruned = _prune_exact(model, x)
    assert pruned.up.weight.shape == (8, 8)


class GRN(nn.Module):
    """ConvNeXt-V2's global response norm: an L2 norm per channel over space (linalg_vector_norm)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gamma, self.beta = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.rand(16) * 0.1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        g = torch.linalg.vector_norm(h, ord=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return self.head(self.gamma[:, None, None] * (h * n) + self.beta[:, None, None] + h)


def test_linalg_vector_norm_per_channel_is_prunable():
    torch.manual_seed(0)
    model = GRN().eval()
    with torch.no_grad():
        model.conv.weight[DEAD] = 0
        model.conv.bias[DEAD] = -1.0
        model.beta[DEAD] = 0  # a dead channel's GRN output is beta: zero it so removal is exact
    x = torch.randn(2, 3, 8, 8)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    assert pruned.conv.weight.shape[0] == 8
    # GRN's mean over channels changes when (dead, zero-norm) channels go: 16 -> 8 channels doubles it, so the
    # group is pruned but marked approximate (the norm per channel itself is exact)
    group = next(g for g in sg.prune_report(pruned).groups if g.name == "conv")
    assert group.status == "pruned" and group.approximate


def test_round_to_never_rounds_a_head_group_back_to_all_heads():
    from slimgraph.testing.archs import make_arch

    model, args, kwargs = make_arch("mpnet")  # its first head source is the per-head relative position bias
    pruned = sg.prune(model, args, ratio=0.5, round_to=8, example_kwargs=kwargs)
    heads = [g for g in sg.prune_report(pruned).groups if g.kind == "heads"]
    assert heads and all(g.status == "pruned" and (g.units_before, g.units_after) == (4, 2) for g in heads)
    q = pruned.get_submodule("encoder.layer.0.attention.attn.q").weight
    assert q.shape[0] == 32  # 2 heads of 16: a multiple of 8 anyway
