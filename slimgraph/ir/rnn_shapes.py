"""Recurrent ops with a symbolic sequence length: their fake values come from the op's shape rule, not a loop.

``aten.lstm``/``aten.gru``/``aten.rnn_*`` are composite ops; to give them a fake value, torch runs their
decomposition (torch._decomp's, or the C++ composite), which unbinds the input over time and so guards the
sequence length to the example's: ``torch.export`` then specialises the sequence dim of every RNN model
(``Eq(s27, 16)``), and the captured graph, its archive and its ONNX file take one sequence length only, although
the op itself (and ONNX's LSTM/GRU) takes any.

While :func:`symbolic_rnn_shapes` is active, these ops, called on fake tensors, return fake outputs built from
the op's shape rule instead (``output [B, S, D * H_out]``, ``h_n``/``c_n`` the shape of ``h_0``/``c_0``), so no
guard on the sequence length is added. Real tensors still run the original kernel, and the graph keeps the one
``aten.lstm`` node (export records ops above the fake layer), so nothing about the numerics changes. Capture,
shape propagation and ONNX export hold it for the whole trace.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch._C import DispatchKey
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

aten = torch.ops.aten

RNN_OPS = (aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input)
_KEY = DispatchKey.CompositeImplicitAutograd
_KEYS = (DispatchKey.CompositeImplicitAutograd, DispatchKey.Autograd, DispatchKey.Meta)
_lock = threading.Lock()
_depth = 0
_saved: list = []


def _output(op, input: torch.Tensor, hx, bidirectional: bool):
    h0 = hx[0] if isinstance(hx, (list, tuple)) else hx
    width = (2 if bidirectional else 1) * h0.shape[-1]  # H_out (proj_size where LSTM projects)
    # [B, S, H_in] (batch_first), [S, B, H_in] or unbatched [S, H_in]: only the feature dim changes
    shape = (*input.shape[:-1], width)
    out = input.new_empty(shape)
    if op is aten.lstm.input:
        return out, hx[0].new_empty(hx[0].shape), hx[1].new_empty(hx[1].shape)
    return out, hx.new_empty(hx.shape)


def _only_fake_modes() -> bool:
    """No tracing mode above us: a fake value computed here is not recorded as graph ops in place of the RNN."""
    return all(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack())


def _bind(op, args, kwargs) -> list:
    """The op's arguments in schema order (the RNN ops have no defaults)."""
    names = [a.name for a in op._schema.arguments]
    return [*args, *(kwargs[n] for n in names[len(args):])]


def _shape_rule(op, original):
    """A py_kernel / decomposition: the shape rule on fake tensors, ``original`` on anything else."""
    def kernel(*args, **kwargs):
        input, hx, *_, train, bidirectional, _batch_first = _bind(op, args, kwargs)
        if isinstance(input, FakeTensor) and not train and _only_fake_modes():
            return _output(op, input, hx, bidirectional)
        return original(*args, **kwargs)

    return kernel


def _fake_rule(op):
    """A FakeTensorMode op implementation (the rule torch.export would otherwise fill with the unrolling one)."""
    def rule(fake_mode, func, *args, **kwargs):
        input, hx, *_, bidirectional, _batch_first = _bind(op, args, kwargs)
        with fake_mode:
            return _output(op, input, hx, bidirectional)

    return rule


def _original(op, key):
    kernel = op.py_kernels.get(key)
    if kernel is not None:
        return kernel
    return lambda *args, **kwargs: op._op_dk(key, *args, **kwargs)


_MISSING = object()


def _tables(op):
    """(table, key, replacement) for every place a fake value of ``op`` can come from."""
    from torch._decomp import decomposition_table
    from torch._subclasses.fake_impls import op_implementations_dict

    out = [(op.py_kernels, key, _shape_rule(op, _original(op, key)))
           for key in _KEYS if key == _KEY or key in op.py_kernels]  # torch._decomp registers all three
    if op in decomposition_table:  # FakeTensorMode prefers it over py_kernels when sizes are symbolic
        out.append((decomposition_table, op, _shape_rule(op, decomposition_table[op])))
    out.append((op_implementations_dict, op, _fake_rule(op)))  # checked before export installs its own
    return out


@contextlib.contextmanager
def symbolic_rnn_shapes():
    """RNN ops on fake tensors take their output shapes from the shape rule (no guard on the sequence length)."""
    global _depth
    with _lock:
        if _depth == 0:
            for op in RNN_OPS:
                for table, key, replacement in _tables(op):
                    _saved.append((table, key, table.get(key, _MISSING)))
                    table[key] = replacement
                op._dispatch_cache.clear()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for table, key, old in reversed(_saved):
                    if old is _MISSING:
                        table.pop(key, None)
                    else:
                        table[key] = old
                for op in RNN_OPS:
                    op._dispatch_cache.clear()
                _saved.clear()
