"""Least-squares reconstruction of the layers that lose input columns (sg.prune(reconstruct=True))."""

import pytest
import torch
import torch.nn as nn
from helpers import assert_close_outputs, run
from test_prune_exact import _plant_bert

import slimgraph as sg
from slimgraph.errors import PipelineError, SlimgraphError
from slimgraph.passes import parse_pipeline
from slimgraph.testing import make


class RedundantMLP(nn.Module):
    """Hidden units 8..15 are exactly half of units 0..7 (ReLU is positively homogeneous), with small weights
    out: the l2 pruner removes them, and a refit of fc2 can fold what they carried into their twins."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)
        with torch.no_grad():
            w, b = torch.randn(8, 6, generator=g), torch.randn(8, generator=g)
            self.fc1.weight.copy_(torch.cat([w, 0.5 * w])), self.fc1.bias.copy_(torch.cat([b, 0.5 * b]))
            out = torch.randn(3, 16, generator=g)
            out[:, 8:] *= 0.3
            self.fc2.weight.copy_(out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _calib(n=8, rows=32, features=6):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(rows, features, generator=g),) for _ in range(n)]


def test_refit_recovers_what_redundant_units_carried():
    model = RedundantMLP()
    x = torch.randn(64, 6)
    expected = model(x)
    sliced = sg.prune(model, (x[:4],), ratio=0.5, importance="l2", round_to=1)
    refit = sg.prune(model, (x[:4],), ratio=0.5, importance="l2", round_to=1, calib=_calib(), reconstruct=True)
    assert sliced.fc2.weight.shape == refit.fc2.weight.shape == (3, 8)
    err_sliced = (sliced(x) - expected).norm() / expected.norm()
    err_refit = (refit(x) - expected).norm() / expected.norm()
    assert err_sliced > 0.05, "the test model should lose accuracy to plain slicing"
    assert err_refit < 0.02 * err_sliced, (err_sliced, err_refit)
    # the kept twins took over: fc2's new columns are (close to) the old ones plus half the removed ones
    w = model.fc2.weight.detach()
    torch.testing.assert_close(refit.fc2.weight.detach(), w[:, :8] + 0.5 * w[:, 8:], rtol=0.02, atol=0.02)
    report = sg.prune_report(refit)
    [rec] = report.reconstructed
    assert rec.columns == "16->8" and rec.error_reconstructed < 0.1 * rec.error_sliced
    assert "reconstructed 1 linear layer" in report.table()
    assert not sg.prune_report(sliced).reconstructed
    assert model.fc2.weight.shape == (3, 16), "the caller's model was modified"


def test_refit_keeps_dead_units_exact():
    """When removed units carry nothing, the proximal least-squares answer is plain slicing: still exact."""
    model, args, kwargs = make("bert")
    _plant_bert(model)
    expected = run(model, args, kwargs)
    calib = [((torch.randint(0, 100, (4, 16)),), {"attention_mask": torch.ones(4, 16, dtype=torch.long)})
             for _ in range(6)]
    pruned = sg.prune(model, args, ratio=0.5, importance="l2", round_to=1, example_kwargs=kwargs, calib=calib,
                      reconstruct=True)
    report = sg.prune_report(pruned)
    assert len(report.reconstructed) == 2 * len(model.encoder.layer)  # attention output + FFN down, per layer
    assert all(r.error_sliced < 1e-6 for r in report.reconstructed)
    assert_close_outputs(run(pruned, args, kwargs), expected, rel=1e-5)


def test_refit_lowers_the_error_of_a_real_prune():
    model, args, kwargs = make("bert")
    calib = [((torch.randint(0, 100, (8, 16)),), {"attention_mask": torch.ones(8, 16, dtype=torch.long)})
             for _ in range(8)]
    ids = torch.randint(0, 100, (8, 16))
    check = ((ids,), {"attention_mask": torch.ones(8, 16, dtype=torch.long)})
    expected = run(model, *check).last_hidden_state
    errors = {}
    for rec in (False, True):
        pruned = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs, calib=calib, reconstruct=rec)
        errors[rec] = float((run(pruned, *check).last_hidden_state - expected).norm() / expected.norm())
    assert errors[True] < errors[False], errors


def test_too_little_calibration_data_is_reported_not_guessed():
    model = RedundantMLP()
    x = torch.randn(4, 6)
    pruned = sg.prune(model, (x,), ratio=0.5, importance="l2", round_to=1, reconstruct=True)  # 4 rows, 9 unknowns
    report = sg.prune_report(pruned)
    assert not report.reconstructed
    assert any("reconstruction skipped" in n and "4 calibration rows" in n for n in report.notes)
    torch.testing.assert_close(pruned.fc2.weight.detach(), model.fc2.weight.detach()[:, :8])


def test_reconstruct_is_a_pipeline_option():
    [p] = parse_pipeline("prune{ratio=0.5,reconstruct=true}")
    assert p.reconstruct is True
    with pytest.raises(PipelineError, match="expected true/false"):
        parse_pipeline("prune{reconstruct=maybe}")


def test_non_finite_activations_are_a_clear_error():
    model = RedundantMLP()
    with pytest.raises(SlimgraphError, match="calibration needs finite data"):  # NaN in the data itself
        bad = _calib()
        bad[3][0][5, 2] = float("nan")
        sg.prune(model, (torch.randn(4, 6),), ratio=0.5, importance="l2", round_to=1, calib=bad, reconstruct=True)
    huge = _calib()
    huge[2][0][0] = 3e38  # finite input, infinite activations inside the model
    with pytest.raises(SlimgraphError, match="NaN/Inf at the input of"):
        sg.prune(model, (torch.randn(4, 6),), ratio=0.5, importance="l2", round_to=1, calib=huge, reconstruct=True)
