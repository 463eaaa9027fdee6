"""Recurrent ops in shape propagation: the context their fake values need when input sizes are symbolic.

``aten.lstm`` reaches a C++ composite that calls ``numel()`` on its input, which fake tensors with symbolic sizes
(dynamic batch or sequence) refuse; through the Python dispatcher the same op decomposes symbolically. Capture
gets its values from torch.export (which runs that way); code that re-propagates a graph holding such an op (the
pruning rewrite, an archive reload) wraps propagation in :func:`symbolic_rnn_propagation`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx as fx

aten = torch.ops.aten

RNN_OPS = frozenset({aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input})


def symbolic_rnn_propagation(gm: fx.GraphModule):
    """The Python dispatcher while propagating a graph with recurrent ops; nothing otherwise."""
    if any(n.op == "call_function" and n.target in RNN_OPS for n in gm.graph.nodes):
        from torch._dispatch.python import enable_python_dispatcher

        return enable_python_dispatcher()
    return contextlib.nullcontext()
