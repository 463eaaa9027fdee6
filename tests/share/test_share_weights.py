"""share-weights: k-means codebooks per layer, zeros kept exactly, the graph still plain ATen, fine-tuning only
moves centroids."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import assert_state_unchanged, count_ops, run, state_snapshot

import slimgraph as sg
from slimgraph.errors import InputError
from slimgraph.share import kmeans_1d, last_report
from slimgraph.share.kmeans import linear_init

aten = torch.ops.aten


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _net():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(2, 3, 8, 8),)


def _sparse_net(sparsity=0.8):
    model, x = _net()
    return model, x, sg.sparsify(model, x, sparsity=sparsity, scope="local", lower="off")


def _brute_lloyd(x: torch.Tensor, init: torch.Tensor, iters: int = 300):
    c = init.clone()
    for _ in range(iters):
        a = (x[:, None] - c[None]).abs().argmin(1)
        c = torch.stack([x[a == j].mean() if (a == j).any() else c[j] for j in range(c.numel())])
    return c, a


def test_kmeans_matches_plain_lloyd():
    x = torch.randn(3000, dtype=torch.float64)
    fit = kmeans_1d(x, 8, tol=0)
    ref_c, ref_a = _brute_lloyd(x, linear_init(torch.sort(x)[0], 8))
    assert torch.allclose(fit.centroids, ref_c, atol=1e-12)
    assert torch.equal(fit.assignment, ref_a) and fit.used == 8


def test_linear_init_is_even_over_the_occupied_range():
    # pruned weights: nothing in (-1, 1); 5 centroids spaced evenly over [-3,-1] U [1,3]
    x = torch.tensor([-3.0, -1.0, 1.0, 3.0]).double()
    assert torch.allclose(linear_init(x, 5), torch.tensor([-3.0, -2.0, -1.0, 2.0, 3.0]).double())
    assert torch.allclose(linear_init(torch.tensor([1.0, 5.0]).double(), 5), torch.linspace(1, 5, 5).double())


def test_share_rewrites_every_weight_keeps_zeros_and_codes():
    model, x, sp = _sparse_net()
    snap = state_snapshot(sp)
    sh = sg.share_weights(sp, bits=4, conv_bits=6)
    assert_state_unchanged(sp, snap)  # the input graph is not modified
    report = last_report(sh)
    assert [(r.name, r.bits) for r in report.layers] == [("conv", 6), ("fc1", 4), ("fc2", 4)]
    assert count_ops(sh)[aten.embedding.default] == 3 and count_ops(sh)[aten.constant_pad_nd.default] == 3
    names = dict(sh.named_parameters())
    assert not any(k.endswith(("conv.weight", "fc1.weight", "fc2.weight")) for k in names)
    for row in report.layers:
        dense = sp.get_parameter(row.weight).detach()
        codebook = sh.get_parameter(row.codebook).detach()
        codes = sh.get_buffer(row.codes)
        assert codes.dtype == torch.uint8 and codes.shape == dense.shape
        assert codebook.shape == (2**row.bits - 1, 1)  # code 0 is the exact zero
        rebuilt = torch.cat([torch.zeros(1, 1), codebook])[codes.long(), 0]
        assert torch.equal(rebuilt == 0, dense == 0), f"{row.name}: zeros moved"
        assert row.zeros == int((dense == 0).sum())
        err = float((rebuilt - dense).norm() / dense.norm())
        assert abs(err - row.rel_error) < 1e-6 and err < 0.02
        # every weight sits on its nearest centroid (k-means' fixed point)
        nz = dense != 0
        nearest = (dense[nz][:, None] - codebook[:, 0][None]).abs().argmin(1)
        assert torch.equal(codes[nz].long() - 1, nearest)
    # the graph computes exactly the dense model with the rebuilt weights
    rebuilt_model = Net().eval()
    state = {}
    for row in report.layers:
        codebook, codes = sh.get_parameter(row.codebook).detach(), sh.get_buffer(row.codes)
        state[row.weight] = torch.cat([torch.zeros(1, 1), codebook])[codes.long(), 0]
    rebuilt_model.load_state_dict({**model.state_dict(), **state})
    assert torch.allclose(run(sh, x), rebuilt_model(*x), atol=1e-6)
    assert report.output_cosine > 0.999 and report.output_max_rel < 0.05
    assert sg.graph_info(sh).sparsity == {}  # the pattern now lives in integer code 0


def test_dense_layer_uses_all_codes_without_zero_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32))
    sh = sg.share_weights(model, (torch.randn(3, 16),), bits=3)
    row = last_report(sh).layers[0]
    assert row.centroids == 8 and row.zeros == 0 and row.used == 8
    assert count_ops(sh)[aten.constant_pad_nd.default] == 0
    assert sh.get_parameter(row.codebook).shape == (8, 1)
    assert int(sh.get_buffer(row.codes).max()) == 7


def test_pipeline_string_ignore_and_per_layer():
    model, x = _net()
    gm = sg.optimize(model, x, pipeline="share-weights{bits=3,ignore=[conv],per_layer=[fc2:2]}")
    rows = {r.name: r for r in last_report(gm).layers}
    assert rows["conv"].bits == 0 and rows["conv"].reason == "ignored"
    assert rows["fc1"].bits == 3 and rows["fc2"].bits == 2 and rows["fc2"].centroids == 4


def test_embeddings_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 7))
    sh = sg.share_weights(Tied().eval(), (ids,), bits=4)
    report = last_report(sh)
    assert len(report.shared) == 1  # one table read twice is one codebook
    assert count_ops(sh)[aten.embedding.default] == 2  # the weight gather + the model's own lookup
    assert report.output_cosine > 0.99


def test_finetune_moves_only_centroids_and_reduces_error():
    model, x, sp = _sparse_net(0.5)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 3, 8, 8, generator=g),) for _ in range(6)]
    plain = sg.share_weights(sp, bits=2, conv_bits=2)
    tuned = sg.share_weights(sp, bits=2, conv_bits=2, data=data, steps=60, output_loss="mse", lr=3e-3)
    after = last_report(tuned)
    for row in after.layers:  # same codes, other centroids
        assert torch.equal(plain.get_buffer(row.codes), tuned.get_buffer(row.codes))
    assert any(not torch.equal(plain.get_parameter(r.codebook), tuned.get_parameter(r.codebook)) for r in after.layers)
    for name in ("conv.bias", "fc1.bias", "fc2.bias"):
        assert torch.equal(plain.get_parameter(name), tuned.get_parameter(name))  # only codebooks train
    assert after.finetune_steps == 60 and after.finetune_loss[1] < after.finetune_loss[0]
    assert after.output_max_rel < after.output_max_rel_before_finetune
    assert after.output_cosine > after.output_cosine_before_finetune


def test_save_load_roundtrip_keeps_the_shared_graph(tmp_path):
    _, x, sp = _sparse_net()
    sh = sg.share_weights(sp, bits=4)
    sg.save(sh, tmp_path / "m.sg")
    loaded = sg.load(tmp_path / "m.sg")
    assert torch.equal(run(loaded, x), run(sh, x))
    assert any(b.dtype == torch.uint8 for b in loaded.buffers())


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 0}, "bits must be"), ({"bits": 17}, "bits must be"), ({"conv_bits": 2.5}, "conv_bits must be"),
    ({"per_layer": {"fc1": 0}}, "per_layer"), ({"data": []}, "data is empty"), ({"data": "x"}, "iterable")])
def test_bad_arguments(kwargs, match):
    model, x = _net()
    with pytest.raises(InputError, match=match):
        sg.share_weights(model, x, **kwargs)


def test_non_finite_weight_names_the_layer():
    model, x = _net()
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="fc1"):
        sg.share_weights(model, x)
