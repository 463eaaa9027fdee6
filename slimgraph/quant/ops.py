"""The int8 graph ops the ``quant`` pass inserts now live in :mod:`slimgraph.ops` (``quantize``, ``int8_linear``,
``int8_conv``, ``weight_only``): one home per op. This module keeps the names quant code and its tests import."""

from ..ops import ACT_QMAX, ACT_QMIN, BOUNDARY_OPS, QUANTIZED_COMPUTE_OPS, quantize_tensor_reference, quantize_weight

__all__ = ["ACT_QMAX", "ACT_QMIN", "BOUNDARY_OPS", "QUANTIZED_COMPUTE_OPS", "quantize_tensor_reference",
           "quantize_weight"]
