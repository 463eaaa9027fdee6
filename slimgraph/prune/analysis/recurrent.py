"""Rule for recurrent layers (``aten.lstm`` / ``aten.gru`` / ``aten.rnn_tanh`` / ``aten.rnn_relu``): hidden units.

A captured ``nn.LSTM`` is one node over a flat weight list, per layer ``w_ih [G*H, in]``, ``w_hh [G*H, H]`` and
optionally ``b_ih, b_hh [G*H]``, with the G gate blocks stacked along the rows (LSTM i,f,g,o: G=4; GRU r,z,n:
G=3; plain RNN: G=1), and zero initial states ``zeros([L, B, H])`` built in the graph::

    lstm(x[.., F], [zeros([L, B, H])] * 2, [w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...]) -> out[.., H], h_n, c_n
        =>  the same with H' kept units: rows g*H + j (every gate g) of w_ih/w_hh/biases, columns j of w_hh and of
            the next layer's w_ih, the zeros' last size, and the columns j of whatever reads ``out``

Removing hidden unit j this way is exact in the usual pruning sense: every gate of unit j reads only its own rows,
and unit j reaches the rest of the network only through columns j of w_hh, of the next layer's w_ih and of the
consumers of the output, which all go with it; with those columns zero the pruned model computes exactly what the
original computes (tests/test_recurrent.py plants such units). The initial states are one [L, B, H] tensor, so
every layer keeps the same unit indices: unit j of all layers is one pruning unit.

Blocked, with the reason: bidirectional layers, LSTM projections (``proj_size``), initial states the caller
passes in (their width is fixed by the caller), and weights computed at run time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..labels import source_labels
from .layers import _consume
from .model import Analysis, _reason, rule

aten = torch.ops.aten

GATES = {aten.lstm.input: 4, aten.gru.input: 3, aten.rnn_tanh.input: 1, aten.rnn_relu.input: 1}
ZEROS = {aten.zeros.default: 0, aten.new_zeros.default: 1}  # op -> position of its size argument


def _column(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).reshape(-1, 1)


def _row(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).reshape(1, -1)


def _zero_state(node, hidden: int) -> str | None:
    """Why ``node`` is not an in-graph zero initial state of width ``hidden`` (None if it is)."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in ZEROS:
        return "initial hidden state given by the caller (its width is fixed)"
    size = node.args[ZEROS[node.target]]
    if not isinstance(size, (list, tuple)) or len(size) != 3 or size[-1] != hidden:
        return "initial hidden state of an unexpected shape"
    if len(node.users) != 1:
        return "initial hidden state read by other ops too"
    return None


@rule(*GATES)
def _recurrent(a: Analysis, node: fx.Node):
    x, hx, params, has_biases, num_layers, _dropout, _train, bidirectional = node.args[:8]
    gates = GATES[node.target]
    states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    per_layer = 4 if has_biases else 2
    x_shape, h_shape = a.shape(x), a.shape(states[0])
    if x_shape is None or h_shape is None:
        a.block_inputs(node, _reason(node, "recurrent layer without shape metadata"))
        return None
    hidden = h_shape[-1]
    out_ndim = len(x_shape)
    if bidirectional:
        why = "bidirectional recurrent layer (not analysed)"
    elif len(params) != per_layer * num_layers:
        why = "recurrent layer with projections (proj_size) or an unknown weight layout"
    elif not all(isinstance(p, fx.Node) and p.op == "get_attr" for p in params):
        why = "recurrent layer with weights computed at run time"
    else:
        why = next((w for w in (_zero_state(s, hidden) for s in states) if w is not None), None)
    if why is not None:  # the units show in the report as one blocked group; readers of the output see fixed features
        a.block_inputs(node, _reason(node, why))
        a.block(a.fresh_ids(node, hidden), _reason(node, why))
        return None
    chan = _consume(a, node, x, out_ndim - 1, "recurrent layer")
    ids = a.fresh_ids(node, hidden)
    stacked = np.tile(ids, gates)  # row g*H + j of every gate block g holds unit j
    for layer in range(num_layers):
        w_ih, w_hh, *biases = params[layer * per_layer:(layer + 1) * per_layer]
        inputs = chan if layer == 0 else ids
        if inputs is not None:
            a.member(w_ih, _row(inputs), "in", node)
        a.member(w_ih, _column(stacked), "out", node)
        a.member(w_hh, _column(stacked), "out", node)
        a.member(w_hh, _row(ids), "in", node)
        for b in biases:
            a.member(b, stacked, "bias", node)
    for s in states:  # the zero states follow the units (the rewrite resizes their last dim)
        a.labels[s] = source_labels(ids, 3, 2)
    out = source_labels(ids, out_ndim, out_ndim - 1)
    final = source_labels(ids, 3, 2)
    return (out, final, final) if node.target is aten.lstm.input else (out, final)
