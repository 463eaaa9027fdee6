"""The entropy-coded uniform quantizer and per-layer bit allocation by measured sensitivity."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import assert_state_unchanged, run, state_snapshot

import slimgraph as sg
from slimgraph.errors import InputError
from slimgraph.share import allocate_bits, code_entropy, kmeans_1d, last_report, step_for_entropy, uniform_1d


class Mlp(nn.Module):
    def __init__(self, loud: float = 1.0):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 8)
        self.side = nn.Linear(32, 8)
        self.loud = loud  # scales the side branch: its weight errors dominate the output's error

    def forward(self, x):
        main = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return torch.cat([main, self.side(x) * self.loud], -1)


def _mlp(loud: float = 1.0):
    torch.manual_seed(0)
    return Mlp(loud).eval(), (torch.randn(8, 32),)


def test_uniform_rounds_to_the_grid_and_centres_each_level_on_its_members():
    torch.manual_seed(0)
    x = torch.randn(5000, dtype=torch.float64)
    fit = uniform_1d(x, 0.25)
    level = torch.round(x / 0.25).long()
    assert torch.equal(fit.assignment, level - level.min())
    for code in range(fit.centroids.numel()):
        members = x[fit.assignment == code]
        if members.numel():
            assert abs(float(fit.centroids[code] - members.mean())) < 1e-12
    assert bool((fit.centroids[1:] > fit.centroids[:-1]).all())
    with pytest.raises(ValueError, match="levels"):
        uniform_1d(torch.tensor([0.0, 1.0]), 1e-6)


@pytest.mark.parametrize("bits", [1.5, 3.3, 5.0])
def test_step_for_entropy_hits_the_requested_rate(bits):
    torch.manual_seed(0)
    x = torch.randn(200_000) * 0.05
    fit = uniform_1d(x, step_for_entropy(x, bits))
    assert abs(code_entropy(fit.assignment) - bits) < 0.02


def test_uniform_beats_kmeans_at_the_same_coded_size():
    # the reason the quantizer exists: at an equal entropy of the codes, a smaller weight error
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 0.02).sample((100_000,)).double()
    km = kmeans_1d(x, 8)
    rate = code_entropy(km.assignment)
    uni = uniform_1d(x, step_for_entropy(x, rate))
    err = lambda fit: float((fit.centroids[fit.assignment] - x).norm() / x.norm())
    assert code_entropy(uni.assignment) <= rate + 0.01
    assert err(uni) < 0.9 * err(km)


def test_share_uniform_keeps_zeros_and_rebuilds_the_graph():
    model, x = _mlp()
    sp = sg.sparsify(model, x, sparsity=0.5, scope="local", lower="off")
    sh = sg.share_weights(sp, bits=2.5, quantizer="uniform")
    report = last_report(sh)
    assert [r.name for r in report.shared] == ["fc1", "fc2", "fc3", "side"]
    for row in report.shared:
        dense = sp.get_parameter(row.weight).detach()
        codebook, codes = sh.get_parameter(row.codebook).detach(), sh.get_buffer(row.codes)
        rebuilt = torch.cat([torch.zeros(1, 1), codebook])[codes.long(), 0]
        assert torch.equal(rebuilt == 0, dense == 0)
        # the rate is the entropy of the nonzero weights' codes; the report's entropy counts the zero code too
        assert abs(code_entropy(codes[dense != 0].long()) - 2.5) < 0.15
        assert abs(code_entropy(codes.long()) - row.entropy) < 1e-9
        assert row.centroids == codebook.shape[0] and codes.dtype == torch.uint8
    assert report.output_cosine > 0.98
    assert torch.allclose(run(sh, x), run(sg.share_weights(sp, bits=2.5, quantizer="uniform"), x))


def test_pipeline_string_takes_fractional_uniform_bits():
    model, x = _mlp()
    gm = sg.optimize(model, x, pipeline="share-weights{bits=3.5,quantizer=uniform}")
    rows = last_report(gm).shared
    assert len(rows) == 4 and all(r.bits == 3.5 and abs(r.entropy - 3.5) < 0.2 for r in rows)


def test_allocation_gives_the_sensitive_layer_more_bits_at_the_requested_mean():
    model, x = _mlp(loud=10.0)
    gm = sg.optimize(model, x, pipeline="")
    snap = state_snapshot(gm)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 32, generator=g),) for _ in range(3)]
    alloc = allocate_bits(gm, data, mean_bits=3.0)
    assert_state_unchanged(gm, snap)  # probes restore every weight
    assert set(alloc.bits) == {"fc1.weight", "fc2.weight", "fc3.weight", "side.weight"}
    mean = sum(alloc.bits[w] * alloc.numel[w] for w in alloc.bits) / sum(alloc.numel.values())
    assert abs(mean - 3.0) < 0.01
    assert alloc.sensitivity["side.weight"] > 10 * max(alloc.sensitivity[w] for w in alloc.bits if w != "side.weight")
    assert alloc.bits["side.weight"] > max(alloc.bits[w] for w in alloc.bits if w != "side.weight") + 1
    assert all(1.0 <= b <= 8.0 for b in alloc.bits.values())
    assert "bit allocation" in str(alloc)
    richer = alloc.at(4.0)  # re-balanced from the same probes
    assert richer.sensitivity == alloc.sensitivity and all(richer.bits[w] >= alloc.bits[w] for w in alloc.bits)
    assert abs(sum(richer.bits[w] * richer.numel[w] for w in richer.bits) / sum(richer.numel.values()) - 4.0) < 0.01


def test_share_with_mean_bits_beats_one_rate_for_all():
    model, x = _mlp(loud=10.0)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 32, generator=g),) for _ in range(3)]
    mixed = sg.share_weights(model, x, quantizer="uniform", mean_bits=2.5, data=data, steps=0)
    flat = sg.share_weights(model, x, quantizer="uniform", bits=2.5, data=data, steps=0)
    report = last_report(mixed)
    assert report.allocation is not None and report.finetune_steps == 0
    for row in report.shared:
        assert row.bits == report.allocation.bits[row.weight] and abs(row.entropy - row.bits) < 0.2
    assert report.output_max_rel < last_report(flat).output_max_rel
    assert "bit allocation" in str(report)


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 2.5}, "fractional widths need quantizer='uniform'"),
    ({"bits": 0.0, "quantizer": "uniform"}, "code entropy"), ({"bits": 13, "quantizer": "uniform"}, "code entropy"),
    ({"quantizer": "lloyd"}, "quantizer must be"), ({"mean_bits": 3.0}, "mean_bits"),
    ({"mean_bits": 3.0, "quantizer": "uniform", "per_layer": {"fc1": 2}}, "mean_bits"),
    ({"mean_bits": 9.0, "quantizer": "uniform"}, "min_bits, max_bits"), ({"steps": -1}, "steps must be")])
def test_bad_arguments(kwargs, match):
    model, x = _mlp()
    with pytest.raises(InputError, match=match):
        sg.share_weights(model, x, **kwargs)


def test_uniform_codes_survive_the_compressed_archive(tmp_path):
    model, x = _mlp()
    sh = sg.share_weights(model, x, bits=2.0, quantizer="uniform")
    sg.save(sh, tmp_path / "m.sg", compress=True)
    loaded = sg.load(tmp_path / "m.sg")
    assert torch.equal(run(loaded, x), run(sh, x))
    coded = (tmp_path / "m.sg").stat().st_size
    sg.save(sh, tmp_path / "plain.sg")
    assert coded < (tmp_path / "plain.sg").stat().st_size  # the low-entropy codes shrink under the coder
