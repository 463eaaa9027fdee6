"""Int8 storage for RNN and expert weights: the GEMM weights no int8 kernel reads (issue 11)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimgraph as sg
from slimgraph.quant.weight_only import STORAGE_SCHEME, quantize_weight_rows
from slimgraph.testing.archs import LSTMNet


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_rnn_weights_are_stored_in_int8(cell):
    torch.manual_seed(0)
    model = LSTMNet(cell).eval()
    ids = torch.randint(1, 100, (2, 12))
    q = sg.quantize(model, (ids,), scheme="w8a8-dynamic")
    report = sg.quant.last_report(q)
    rnn_rows = [r for r in report.layers if r.scheme == STORAGE_SCHEME]
    assert len(rnn_rows) == 4  # weight_ih and weight_hh of both layers
    assert report.coverage.fraction == 1.0 and report.coverage.float_params == 0
    int8 = {name for name, t in q.named_buffers() if t.dtype == torch.int8}
    assert sum(1 for n in int8 if "rnn" in n) == 4
    for batch in (ids, torch.cat([ids, ids[:1]])):
        with torch.no_grad():
            want, got = model(batch), q(batch)
        sqnr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
        assert sqnr > 30, sqnr
    assert isinstance(model.rnn, cell) and model.rnn.weight_ih_l0.dtype == torch.float32  # the user's model


def test_row_quantization_round_trip():
    w = torch.randn(3, 5, 7)
    q, s = quantize_weight_rows(w)
    assert q.dtype == torch.int8 and s.shape == (3, 5, 1) and int(q.abs().max()) == 127
    assert (q.float() * s - w).abs().max() <= s.max() / 2 + 1e-6
