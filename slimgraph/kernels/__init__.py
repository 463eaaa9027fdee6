"""Ops that passes insert as ``torch.ops.slimgraph.*`` nodes: each with a pure-torch reference (runs
anywhere), fake/meta support for torch.compile and torch.export, and on CUDA a Triton kernel."""

from . import epilogue  # noqa: F401 - registers slimgraph::linear_act and slimgraph::conv_act
from .block_sparse import BlockSparseWeight, block_sparse_matmul, to_block_sparse
from .epilogue import ACTIVATIONS, apply_activation
from .int8_conv import int8_conv2d
from .int8_matmul import int8_matmul
from .quantize import layernorm_quantize, quantize_per_token, rmsnorm_quantize
from .w8a16_matmul import w8a16_matmul

__all__ = [
    "ACTIVATIONS",
    "BlockSparseWeight",
    "apply_activation",
    "block_sparse_matmul",
    "int8_conv2d",
    "int8_matmul",
    "layernorm_quantize",
    "quantize_per_token",
    "rmsnorm_quantize",
    "to_block_sparse",
    "w8a16_matmul",
]
