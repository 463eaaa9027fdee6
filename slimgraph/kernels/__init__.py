"""Triton kernels and their launchers, one module per kernel family; graph ops live in :mod:`slimgraph.ops`.

Each public function here (the GUIDE's kernel contract) validates its arguments, then runs the Triton kernel on
CUDA (and on CPU under ``TRITON_INTERPRET=1``) or its pure-torch reference elsewhere (:mod:`.dispatch`). They are
plain functions, not ``torch.ops``: passes insert the graph-level ``torch.ops.slimgraph.*`` ops of
:mod:`slimgraph.ops`, whose implementations call these. Per module: ``<name>`` (dispatch), ``<name>_kernel`` (the
launcher, which may pin a tile config), ``<name>_reference`` (the same arithmetic in torch), ``CONFIGS`` (Triton
tile configs per shape bucket, autotuned by Triton on the GPU).

Plumbing shared by the kernels, one job per module: :mod:`.dispatch` (where a function runs), :mod:`.interpreter`
(GPU-compiled kernels under the interpreter), :mod:`.launch` (configs, autotuning, launch counts, AOT recording),
:mod:`.tiles` (GEMM tiling and the shared main-loop pieces), :mod:`.checks` (argument checks), :mod:`.epilogue`
(the activation table, its torch reference and Triton twin).
"""

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
