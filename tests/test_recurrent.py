"""LSTM / GRU / plain RNN: pruning of hidden units (exact on planted dead units), weight-only int8, archive.

A dead hidden unit has every gate row (in w_ih, w_hh and both biases, in every layer) zero, so its state stays 0,
and every column that reads it zero (w_hh, the next layer's w_ih, the head). The planting uses nn.LSTM's own
layout, not slimgraph's analysis: at ratio 0.5 the l2 pruner must remove exactly the dead half and reproduce the
outputs at other batch sizes and sequence lengths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import assert_close_outputs, run

import slimgraph as sg
from slimgraph.ir.graph_utils import get_attr_tensor

FEATURES, HIDDEN, LAYERS = 12, 16, 2
GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


class RecurrentNet(nn.Module):
    def __init__(self, cell=nn.LSTM, batch_first=True, **kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=batch_first, **kwargs)
        width = HIDDEN * (2 if kwargs.get("bidirectional") else 1)
        self.head = nn.Linear(width, 5)
        self.batch_first = batch_first

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


def _x(batch, seq, batch_first=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, seq, FEATURES) if batch_first else (seq, batch, FEATURES)
    return (torch.randn(shape, generator=g),)


SHAPES = [(2, 10), (3, 10), (2, 7), (1, 13)]


def _plant_dead_units(model: RecurrentNet) -> torch.Tensor:
    dead = torch.arange(1, HIDDEN, 2)
    gates = GATES[type(model.rnn)]
    rows = torch.cat([dead + g * HIDDEN for g in range(gates)])
    with torch.no_grad():
        for layer in range(LAYERS):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(model.rnn, f"{name}_l{layer}")[rows] = 0
            model.rnn.get_parameter(f"weight_hh_l{layer}")[:, dead] = 0
            if layer > 0:
                model.rnn.get_parameter(f"weight_ih_l{layer}")[:, dead] = 0
        model.head.weight[:, dead] = 0
    return dead


@pytest.mark.parametrize("cell,batch_first", [(nn.LSTM, True), (nn.GRU, True), (nn.LSTM, False), (nn.RNN, True)])
def test_prune_removes_planted_hidden_units_exactly(cell, batch_first):
    model = RecurrentNet(cell, batch_first).eval()
    dead = _plant_dead_units(model)
    live = torch.tensor([i for i in range(HIDDEN) if i not in set(dead.tolist())])
    gm = sg.capture(model, _x(2, 10, batch_first))
    pruned = sg.prune(gm, _x(2, 10, batch_first), ratio=0.5, importance="l2", reconstruct=False)
    gates = GATES[cell]
    rows = torch.cat([live + g * HIDDEN for g in range(gates)])
    for layer in range(LAYERS):
        w_hh = pruned.get_parameter(f"rnn.weight_hh_l{layer}")
        assert torch.equal(w_hh, model.rnn.get_parameter(f"weight_hh_l{layer}")[rows][:, live])
        w_ih = pruned.get_parameter(f"rnn.weight_ih_l{layer}")
        cols = slice(None) if layer == 0 else live
        assert torch.equal(w_ih, model.rnn.get_parameter(f"weight_ih_l{layer}")[rows][:, cols])
    assert tuple(pruned.get_parameter("head.weight").shape) == (5, HIDDEN // 2)
    for batch, seq in SHAPES:
        x = _x(batch, seq, batch_first, seed=seq)
        assert_close_outputs(run(pruned, x), run(model, x), rel=1e-5)


def _blocked_reasons(pruned) -> str:
    return " ".join(g.reason for g in sg.prune_report(pruned).groups if g.status == "unprunable")


def test_bidirectional_is_blocked_with_a_reason():
    model = RecurrentNet(nn.LSTM, bidirectional=True).eval()
    gm = sg.capture(model, _x(2, 10))
    pruned = sg.prune(gm, _x(2, 10), ratio=0.5, importance="l2")
    assert "bidirectional" in _blocked_reasons(pruned)
    assert pruned.get_parameter("rnn.weight_hh_l0").shape == model.rnn.weight_hh_l0.shape
    assert_close_outputs(run(pruned, _x(3, 7)), run(model, _x(3, 7)), rel=1e-6)


class GivenState(nn.Module):
    """The caller passes the initial hidden state: its width is the caller's, so units cannot go."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(FEATURES, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 5)

    def forward(self, x, h0):
        return self.head(self.rnn(x, h0)[0])


def test_caller_initial_state_is_blocked_with_a_reason():
    model = GivenState().eval()
    args = (*_x(2, 10), torch.randn(1, 2, HIDDEN))
    pruned = sg.prune(sg.capture(model, args), args, ratio=0.5, importance="l2")
    assert "initial hidden state given by the caller" in _blocked_reasons(pruned)
    assert pruned.get_parameter("rnn.weight_hh_l0").shape == model.rnn.weight_hh_l0.shape


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_pruned_int8_recurrent_archive_other_lengths(cell, tmp_path):
    model = RecurrentNet(cell).eval()
    gm = sg.capture(model, _x(2, 10))
    pruned = sg.prune(gm, _x(2, 10), ratio=0.5, importance="l2")
    q = sg.quantize(pruned, _x(2, 10), scheme="w8a8-dynamic")
    int8 = [n.target for n in q.graph.nodes if n.op == "get_attr" and str(n.target).startswith("rnn.")
            and get_attr_tensor(q, n).dtype == torch.int8]
    assert len(int8) == 2 * LAYERS, int8  # w_ih and w_hh of every layer stored in int8
    loaded = sg.load(sg.save(q, tmp_path / "rnn.sg"))
    for batch, seq in SHAPES:
        x = _x(batch, seq, seed=batch + seq)
        assert_close_outputs(run(loaded, x), run(q, x), rel=1e-6)


@pytest.mark.parametrize("cell,batch_first", [(nn.LSTM, True), (nn.GRU, True), (nn.LSTM, False)])
def test_sequence_dim_stays_symbolic_through_capture_archive_and_onnx(cell, batch_first, tmp_path):
    """The RNN ops' own decompositions unroll time and so guarded the sequence length to the example's: the graph
    ran at other lengths only because aten.lstm took them anyway, while the archive's and the ONNX file's input
    kept the example's length (ORT: "Got: 12 Expected: 16"). The shape rule keeps it a symbolic dim."""
    import onnxruntime as ort

    from slimgraph.ir.info import graph_info

    model = RecurrentNet(cell, batch_first).eval()
    seq_dim = 1 if batch_first else 0
    gm = sg.capture(model, _x(2, 10, batch_first))
    assert sorted(graph_info(gm).dynamic_dims["x"]) == [0, 1], graph_info(gm).dynamic_dims
    assert [n.target for n in gm.graph.nodes if "lstm" in str(n.target) or "gru" in str(n.target)], \
        "the RNN stays one op (the shape rule must never be traced into the graph in its place)"
    q = sg.quantize(sg.prune(gm, _x(2, 10, batch_first), ratio=0.5), _x(2, 10, batch_first), scheme="w8a8-dynamic")
    loaded = sg.load(sg.save(q, tmp_path / "rnn.sg"))
    path = sg.export_onnx(q, _x(2, 10, batch_first), tmp_path / "rnn.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    assert isinstance(dims[0], str) and isinstance(dims[1], str), dims  # both axes named, none fixed
    for batch, seq in SHAPES:
        x = _x(batch, seq, batch_first, seed=batch * 10 + seq)
        want = run(q, x)
        assert want.shape[seq_dim] == seq
        assert_close_outputs(run(loaded, x), want, rel=1e-6)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x[0].numpy()})[0])
        assert_close_outputs(got, want, rel=1e-4)
