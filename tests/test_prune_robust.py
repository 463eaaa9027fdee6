"""The pruning analysis never crashes on a pattern it does not understand: the values it touches are blocked."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.prune.analysis import RULES

aten = torch.ops.aten


class TwoBranches(nn.Module):
    """Two independent FFNs; only the first one goes through relu (where the test plants a failing rule)."""

    def __init__(self):
        super().__init__()
        self.up1, self.down1 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.up2, self.down2 = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.down1(torch.relu(self.up1(x))) + self.down2(torch.nn.functional.gelu(self.up2(x)))


def _groups(model):
    return {g.name: g for g in sg.prune_report(model).groups}


def test_failing_rule_blocks_its_values_and_the_pass_goes_on(monkeypatch):
    def broken(a, node):
        raise IndexError("planted failure")

    monkeypatch.setitem(RULES, aten.relu.default, broken)
    torch.manual_seed(0)
    model = TwoBranches().eval()
    x = torch.randn(4, 8)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    groups = _groups(pruned)
    assert groups["up1"].status == "unprunable"
    assert "broken failed (IndexError: planted failure)" in groups["up1"].reason
    assert "aten.relu at relu" in groups["up1"].reason
    assert groups["up2"].status == "pruned" and groups["up2"].units_after == 16  # the other branch is unaffected
    notes = sg.prune_report(pruned).notes
    assert any("analysis rule failed" in n and "broken" in n for n in notes)
    assert pruned.up1.weight.shape == (32, 8) and pruned.up2.weight.shape == (16, 8)
    assert pruned(x).shape == model(x).shape


class LegacyEmptyCat(nn.Module):
    """torch.cat with a 1-D empty operand, as transformers 5.24's KV caches start: torch skips the operand."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 4)
        self.register_buffer("empty", torch.tensor([]), persistent=False)

    def forward(self, x):
        return self.down(torch.relu(torch.cat([self.empty, self.up(x)], dim=-1)))


def test_cat_with_a_legacy_empty_operand_is_pruned_exactly():
    torch.manual_seed(0)
    model = LegacyEmptyCat().eval()
    dead = [1, 4, 6, 9, 11, 12, 13, 15]
    with torch.no_grad():  # planted dead units: removing exactly these is lossless
        model.up.weight[dead] = 0
        model.up.bias[dead] = -1
    x = torch.randn(5, 8)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    assert _groups(pruned)["up"].status == "pruned"
    assert pruned.up.weight.shape == (8, 8)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-6)


class TwoHalvesCat(nn.Module):
    """A cat that stays in the graph (capture drops empty operands, so LegacyEmptyCat's cat disappears)."""

    def __init__(self):
        super().__init__()
        self.left, self.right, self.down = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(32, 4)

    def forward(self, x):
        return self.down(torch.relu(torch.cat([self.left(x), self.right(x)], dim=-1)))


@pytest.mark.parametrize("rule_target", [aten.cat.default, aten.linear.default])
def test_failing_producer_or_shape_rule_never_raises(monkeypatch, rule_target):
    monkeypatch.setitem(RULES, rule_target, lambda a, node: (_ for _ in ()).throw(RuntimeError("new pattern")))
    model = TwoHalvesCat().eval()
    x = torch.randn(3, 8)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    torch.testing.assert_close(pruned(x), model(x))
    assert any("new pattern" in n for n in sg.prune_report(pruned).notes)


class EmptyPassThrough(nn.Module):
    """Phi-3's rotary split when the whole head rotates: the pass-through slice is empty, then concatenated."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.up(x)).view(x.shape[0], 4, 4)
        rot, keep = h[..., :4], h[..., 4:]  # keep: [B, 4, 0]
        return self.down(torch.cat([rot * 2, keep], dim=-1).flatten(1))


def test_empty_cat_operand_is_dropped_and_heads_prune():
    torch.manual_seed(0)
    model = EmptyPassThrough().eval()
    x = torch.randn(3, 8)
    gm = sg.capture(model, (x,))
    assert aten.cat.default not in [n.target for n in gm.graph.nodes]
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=1)
    assert pruned.up.weight.shape[0] < 16
    assert pruned(torch.randn(5, 8)).shape == (5, 4)


@pytest.mark.slow
def test_phi3_prunes_with_an_empty_rotary_pass_through():
    from slimgraph.testing.archs import make_arch

    model, args, kwargs = make_arch("phi3")
    pruned = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs)
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
