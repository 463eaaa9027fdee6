"""Honest coverage: the fraction of GEMM weight parameters a graph holds in int8, and the biggest left out.

A *GEMM weight* is a constant of rank >= 2 that reaches the weight operand of a matrix product or convolution,
directly or through shape-only ops: ``linear``/``conv`` weights, ``x @ W.T`` (Falcon), 3-D expert weights
indexed per expert (Mixtral, Qwen2-MoE), RNN weight matrices. Layers are not counted: one Linear of 4096x4096
weighs more than a hundred small ones, so the figure is in parameters. Embedding tables are lookups, not
GEMMs, and are left out of both sides.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.fx as fx

from ..ir.graph_utils import gemm_weight_consumer, op_name
from ..report import WeightCoverage

aten = torch.ops.aten
sgops = torch.ops.slimgraph


class Coverage(WeightCoverage):
    """GEMM weight parameters in int8 (``int8_params``) vs left in float (``float_params``)."""

    reached_as: ClassVar[str] = "in int8"
    left_as: ClassVar[str] = "left in float"

    @property
    def int8_params(self) -> int:
        return self.reached_params

    @property
    def float_params(self) -> int:
        return self.total_params - self.reached_params


def _int8_gemm_ops() -> set:
    names = ("qlinear_static", "qlinear_dynamic", "qlinear_w8a16", "qconv_static", "qconv_dynamic", "qconv_w8a16",
             "qbmm_dynamic", "qbmm_w8a16", "qrnn_dynamic")
    return {getattr(sgops, n).default for n in names if hasattr(sgops, n)}


def _dequantized_weight(node: fx.Node) -> bool:
    """int8 storage dequantized right before a GEMM (``_to_copy(q) * scale``, see weight_only.py)."""
    for cast in node.users:
        if cast.target is aten._to_copy.default:
            for mul in cast.users:
                if mul.target is aten.mul.Tensor and gemm_weight_consumer(mul) is not None:
                    return True
    return False


def gemm_weight_coverage(gm: fx.GraphModule, reasons: dict[str, str] | None = None) -> Coverage:
    """Count GEMM weight parameters of ``gm``: int8 ones read by slimgraph int8 ops vs float ones read by GEMMs.

    ``reasons`` maps a node name (the GEMM) to why it stayed in float, for the left-out list.
    """
    reasons = reasons or {}
    cov = Coverage()
    int8_ops = _int8_gemm_ops()
    for node, t in cov.uncounted_weights(gm):
        if t.dtype == torch.int8:
            if any(u.op == "call_function" and u.target in int8_ops for u in node.users) or _dequantized_weight(node):
                cov.count(str(node.target), t.numel(), reached=True)
            continue
        if not t.is_floating_point():
            continue
        consumer = gemm_weight_consumer(node)
        if consumer is None:
            continue
        why = reasons.get(consumer.name) or f"read by {op_name(consumer.target)} ({consumer.name}), which has no " \
                                             "int8 rewrite"
        cov.count(str(node.target), t.numel(), reached=False, reason=why)
    return cov.finish()
