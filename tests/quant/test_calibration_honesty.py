"""sg.quantize reports the error users will see (example inputs, held-out batches), not only the calibration fit."""

import logging

import pytest
import torch

import slimgraph as sg
from slimgraph.quant import last_report


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()


def _cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.detach().flatten(), b.detach().flatten(), dim=0))


def test_outlier_calibration_headline_is_the_error_on_example_inputs(caplog):
    model, x = _mlp(), torch.randn(8, 16)
    bad = torch.randn(8, 16)
    bad[3] = 1e6  # one extreme row: the static input scale is fit to it
    with caplog.at_level(logging.WARNING, logger="slimgraph"):
        q = sg.quantize(model, (x,), scheme="w8a8", calib=[(bad,)])
    report = last_report(q)
    true_cosine = _cosine(q(x), model(x))
    assert true_cosine < 0.9  # the damage is real ...
    assert report.eval_cosine == pytest.approx(true_cosine, abs=1e-4)  # ... and the headline says so
    assert report.output_cosine > 0.999  # while the calibration fit alone looks perfect
    assert "example inputs" in report.summary() and f"{report.eval_cosine:.5f}" in report.summary()
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "does not represent these inputs" in warnings
    assert "max |x| = 1e+06" in warnings
    assert any("does not represent" in n for n in report.notes)


def test_representative_calibration_does_not_warn(caplog):
    model, x = _mlp(), torch.randn(8, 16)
    with caplog.at_level(logging.WARNING, logger="slimgraph"):
        q = sg.quantize(model, (x,), scheme="w8a8", calib=[(torch.randn(8, 16),) for _ in range(3)])
    report = last_report(q)
    assert report.eval_cosine > 0.99
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_several_batches_hold_some_out_of_calibration():
    model, x = _mlp(), torch.randn(8, 16)
    calib = [(torch.randn(8, 16),) for _ in range(8)]
    q = sg.quantize(model, (x,), scheme="w8a8", calib=calib)
    report = last_report(q)
    assert report.calibration_batches == 7
    assert "1 held-out calibration batch" in report.eval_data
    # the headline covers the example inputs and the held-out batch: recompute it independently
    outs = [q(x), q(*calib[-1])]
    refs = [model(x), model(*calib[-1])]
    got = torch.cat([o.flatten() for o in outs]).double()
    want = torch.cat([r.flatten() for r in refs]).double()
    assert report.eval_rel_error == pytest.approx(float((got - want).norm() / want.norm()), rel=1e-3)


def test_default_calibration_is_labelled_as_such():
    model, x = _mlp(), torch.randn(8, 16)
    report = last_report(sg.quantize(model, (x,), scheme="w8a8-dynamic"))
    assert "also the calibration data" in report.eval_data
    assert report.eval_cosine > 0.99
