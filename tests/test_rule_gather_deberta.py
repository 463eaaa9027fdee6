"""DeBERTa-v2's relative-position attention: heads pruned exactly (planted dead heads).

Its c2p/p2c scores tile the per-head position keys once per batch row (``repeat`` by a symbolic count), gather
them over relative positions (``aten.gather`` with an index expanded over batch * heads, of a size spelled
``4 * batch`` in the graph) and view the [B*H, S, S] scores as [B, H, S, S]. Three rules make that exact: a
symbolic repeat tiles a labelled dim by the example's count, gather passes labels along the dims its index is
broadcast over (the rewrite slices the index to the input's new size), and a dim whose labels are equal all along
it (the batch split back out of B*H) holds no unit. A head whose q/k/v/position rows and output columns are zero
contributes nothing, so removing exactly those heads must reproduce the model at other batch sizes and lengths.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_outputs, run

import slimgraph as sg

HEADS, HEAD_DIM, HIDDEN = 4, 16, 64
DEAD = [1, 3]


def _model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2,
                                          num_attention_heads=HEADS, intermediate_size=128,
                                          max_position_embeddings=64, relative_attention=True, position_buckets=16,
                                          pos_att_type=["p2c", "c2p"])
    model = transformers.DebertaV2Model(config).eval()
    rows = torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in DEAD])
    with torch.no_grad():
        for layer in model.encoder.layer:
            attn = layer.attention.self
            for proj in (attn.query_proj, attn.key_proj, attn.value_proj, attn.pos_key_proj, attn.pos_query_proj):
                proj.weight[rows] = 0
                proj.bias[rows] = 0
            layer.attention.output.dense.weight[:, rows] = 0
            # every other FFN neuron dead too (GELU(0) = 0), so ratio 0.5 removes exactly planted units everywhere
            layer.intermediate.dense.weight[1::2] = 0
            layer.intermediate.dense.bias[1::2] = 0
            layer.output.dense.weight[:, 1::2] = 0
    return model


def _inputs(batch, seq, seed=0):
    ids = torch.randint(1, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return (ids,), {"attention_mask": torch.ones_like(ids)}


def test_planted_dead_heads_are_removed_exactly():
    model = _model()
    args, kwargs = _inputs(2, 16)
    gm = sg.capture(model, args, example_kwargs=kwargs)
    pruned = sg.prune(gm, args, ratio=0.5, importance="l2", round_to=1, reconstruct=False, example_kwargs=kwargs)
    live = torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in range(HEADS) if h not in DEAD])
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention.self
        for name in ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"):
            got = pruned.get_parameter(f"encoder.layer.{i}.attention.self.{name}.weight")
            assert torch.equal(got, getattr(attn, name).weight[live]), (i, name)  # the live heads, whole
    heads = [g for g in sg.prune_report(pruned).groups if g.kind == "heads"]
    assert heads and all(g.status == "pruned" for g in heads), [(g.status, g.reason) for g in heads]
    for batch, seq in [(2, 16), (3, 16), (2, 11), (1, 7)]:
        a, kw = _inputs(batch, seq, seed=batch * 100 + seq)
        assert_close_outputs(run(pruned, a, kw), run(model, a, kw), rel=1e-5)


def test_gather_along_a_labelled_dim_blocks():
    class GatherChannels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

        def forward(self, x, idx):
            return self.b(torch.gather(self.a(x), -1, idx))  # picks channels by a runtime index: not prunable

    model = GatherChannels().eval()
    x, idx = torch.randn(2, 5, 8), torch.randint(0, 16, (2, 5, 16))
    pruned = sg.prune(model, (x, idx), ratio=0.5)
    assert pruned.get_parameter("a.weight").shape == (16, 8)
    reasons = " ".join(g.reason for g in sg.prune_report(pruned).groups if g.status == "unprunable")
    assert "gathers along a labelled dim" in reasons, reasons
    assert_close_outputs(run(pruned, (x, idx)), run(model, (x, idx)), rel=1e-6)
