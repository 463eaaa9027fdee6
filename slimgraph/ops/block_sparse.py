"""Block-sparse Linear as a graph op: ``slimgraph::block_sparse_matmul``, inserted by sparsity lowering (``bsr``).

    y = aten.linear(x, W, b)   =>   y = slimgraph.block_sparse_matmul(x, values, col_indices, row_ptr, N, K,
                                                                      w_scale?, x_scale?, b, act, out_dtype?)

The BSR weight travels as its tensors (graph attributes, so archives store them like weights); the implementation
is :func:`slimgraph.kernels.block_sparse.bsr_matmul` (the Triton kernel on CUDA and under ``TRITON_INTERPRET=1``;
elsewhere the torch reference, which densifies). The fake implementation validates the arguments, so a bad packing
fails at trace time. MACs: the work actually done, rows x stored blocks x block area. No ONNX translation yet.
"""

from __future__ import annotations

from math import prod

import torch

from ..ir.cost import register_macs
from ..kernels.block_sparse import bsr_matmul, bsr_result_dtype

__all__: list[str] = []


@torch.library.custom_op(
    "slimgraph::block_sparse_matmul",
    mutates_args=(),
    schema="(Tensor x, Tensor values, Tensor col_indices, Tensor row_ptr, int n, int k, Tensor? w_scale, "
    "Tensor? x_scale, Tensor? bias, str activation, ScalarType? out_dtype) -> Tensor",
)
def _block_sparse_matmul(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype):
    return bsr_matmul(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype)


@_block_sparse_matmul.register_fake
def _(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype):
    dtype = bsr_result_dtype(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=dtype)


@register_macs(torch.ops.slimgraph.block_sparse_matmul.default)
def _block_sparse_macs(ins, out) -> int:
    """MACs actually performed: rows x stored blocks x block area (zero blocks cost nothing)."""
    x, values = ins[0], ins[1]
    if x is None or values is None or len(values) != 3:
        return 0
    return prod(x[:-1]) * values[0] * values[1] * values[2]
