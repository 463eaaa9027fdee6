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


class SharedHeadNorm(nn.Module):
    """Qwen3's attention: q/k RMS norms per head whose weights [head_dim] are broadcast across the heads."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(16, 32, bias=False) for _ in range(3))
        self.o = nn.Linear(32, 16, bias=False)
        self.q_norm, self.k_norm = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.rand(8) + 0.5)

    @staticmethod
    def _heads(t, weight):
        b, s, _ = t.shape
        t = t.view(b, s, 4, 8)
        return (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * weight).transpose(1, 2)

    def forward(self, x):
        b, s, _ = x.shape
        q, k = self._heads(self.q(x), self.q_norm), self._heads(self.k(x), self.k_norm)
        v = self.v(x).view(b, s, 4, 8).transpose(1, 2)
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(att.transpose(1, 2).reshape(b, s, 32))


def test_norm_weight_shared_across_heads_stays_whole():
    torch.manual_seed(0)
    model = SharedHeadNorm().eval()
    dead = list(range(8, 24))  # heads 1 and 2: zero q, k and v, so they add nothing to the output
    with torch.no_grad():
        for lin in (model.q, model.k, model.v):
            lin.weight[dead] = 0
        model.o.weight[:, dead] = 0
    x = torch.randn(2, 5, 16)
    pruned = _prune_exact(model, x)
    assert pruned.q.weight.shape == (16, 16) and pruned.o.weight.shape == (16, 16)
    assert pruned.q_norm.shape == (8,) and pruned.k_norm.shape == (8,)  # read by every head left: never sliced
    for shape in [(3, 7, 16), (1, 2, 16)]:
        x2 = torch.randn(shape)
        torch.testing.assert_close(pruned(x2), model(x2), rtol=1e-5, atol=1e-5)


class PerChannelBroadcast(nn.Module):
    """A weight broadcast across a labelled dim whose units each read only part of it: must stay blocked."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 32), nn.Linear(32, 4)
        self.weight = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        b, s, _ = x.shape
        h = torch.relu(self.up(x)).view(b, s, 4, 8) * self.weight
        return self.down(h.reshape(b, s, 32))


def test_weight_shared_by_single_channel_units_stays_blocked():
    torch.manual_seed(0)
    model = PerChannelBroadcast().eval()
    x = torch.randn(2, 5, 8)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    assert pruned.up.weight.shape == (32, 8)
    group = next(g for g in sg.prune_report(pruned).groups if g.name == "up")
    assert group.status == "unprunable" and "shared by several pruning units" in group.reason
