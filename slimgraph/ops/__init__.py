"""One home per graph op: every ``torch.ops.slimgraph.*`` op that passes insert, grouped by family, each module
holding its ops' schemas, fake (meta) implementations, torch implementations (which call the launchers of
:mod:`slimgraph.kernels` where a Triton kernel exists) and MACs rules (:func:`slimgraph.ir.cost.register_macs`).

    epilogue                  linear_act, conv_act                   float GEMM / conv + bias + activation (fuse)
    quantize                  quantize_per_tensor, dynamic_quantize_per_token / _per_tensor,
                              layer_norm_quantize_per_token,         float <-> int8 boundaries (quant)
                              dequantize_per_tensor
    int8_linear               qlinear_static, qlinear_dynamic, qmatmul_dynamic       W8A8 GEMMs (quant)
    int8_conv                 qconv_static, qconv_dynamic                            W8A8 convs (quant)
    weight_only               qlinear_w8a16, qconv_w8a16, qembedding                 W8A16 (quant)
    block_sparse              block_sparse_matmul                    BSR Linear (sparsity lowering)
    sparse_linear             sparse_linear                          CSR Linear (sparsity lowering)
    semi_structured_linear    semi_structured_linear                 2:4 Linear (sparsity lowering)

Importing this package registers them all. Passes insert them as ``call_function`` nodes whose tensor arguments
are plain tensors held as graph attributes, so archives store them like any other weight; their names are what
saved archives and graphs refer to, so they do not change (a rename would need an entry in
:data:`slimgraph.archive.schema.OP_ALIASES`). ONNX translations of the int8 ops are in
:mod:`slimgraph.quant.onnx_ops` for now; ``sparse_linear`` carries its own; the other sparse ops have none yet.

Adding an op: a module here (or a family's module) with ``torch.library.custom_op`` + ``register_fake`` + a MACs
rule, the kernel (if any) as a plain launcher in :mod:`slimgraph.kernels`, the import below, and tests: numbers
against the reference, export keeps one node, fake shapes (``tests/kernels/test_tracing.py`` also checks that
every ``torch.ops.slimgraph`` op is defined here).
"""

import torch

from . import (  # noqa: F401 - importing each family's module registers its ops
    block_sparse,
    epilogue,
    int8_conv,
    int8_linear,
    quantize,
    semi_structured_linear,
    sparse_linear,
    weight_only,
)
from .quantize import ACT_QMAX, ACT_QMIN, BOUNDARY_OPS, quantize_tensor_reference, quantize_weight
from .sparse_linear import CsrWeight, sparse_linear_reference, to_csr

_sg = torch.ops.slimgraph
QUANTIZED_COMPUTE_OPS = frozenset({
    _sg.qlinear_static.default, _sg.qlinear_dynamic.default, _sg.qlinear_w8a16.default,
    _sg.qconv_static.default, _sg.qconv_dynamic.default, _sg.qconv_w8a16.default,
    _sg.qmatmul_dynamic.default, _sg.qembedding.default,
})
"""The int8 compute ops the quant pass inserts (each reads an int8 weight)."""

__all__ = ["ACT_QMAX", "ACT_QMIN", "BOUNDARY_OPS", "QUANTIZED_COMPUTE_OPS", "CsrWeight", "quantize_tensor_reference",
           "quantize_weight", "sparse_linear_reference", "to_csr"]
