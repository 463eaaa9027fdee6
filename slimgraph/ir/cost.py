"""Per-node cost model: multiply-accumulates of the compute-heavy ops.

Only GEMM-like ops (linear, convolutions, matmuls, attention and our fused/quantized variants) are
counted in MACs; everything else is bandwidth-bound and reported as zero MACs. FLOPs are 2 x MACs for
GEMM-like ops plus one per output element for element-wise work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch

from .info import TensorSpec

aten = torch.ops.aten

Shapes = Sequence[tuple[int, ...] | None]
_RULES: dict[object, Callable[[Shapes, tuple[int, ...] | None], int]] = {}


def register_macs(*targets):
    """Register a MACs rule ``rule(input_shapes, output_shape) -> int`` for one or more op targets.

    ``input_shapes`` lists the shapes of the node's tensor positional arguments (None for non-tensors).
    The graph ops of :mod:`slimgraph.ops` register theirs beside their schemas, so ``slimgraph inspect`` and
    reports count them; an op without a rule counts zero MACs.
    """

    def deco(fn):
        for t in targets:
            _RULES[t] = fn
        return fn

    return deco


@register_macs(aten.linear.default)
def linear_macs(ins: Shapes, out) -> int:
    x, w = ins[0], ins[1]
    if x is None or w is None or len(w) != 2:
        return 0
    return prod(x[:-1]) * w[0] * w[1]


@register_macs(aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default)
def conv_macs(ins: Shapes, out) -> int:
    w = ins[1]
    if w is None or out is None:
        return 0
    return prod(out) * prod(w[1:])


@register_macs(aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
def conv_transpose_macs(ins: Shapes, out) -> int:
    x, w = ins[0], ins[1]
    if x is None or w is None:
        return 0
    return prod(x) * prod(w[1:])


@register_macs(aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default, aten.baddbmm.default)
def matmul_macs(ins: Shapes, out) -> int:
    a = ins[1] if len(ins) == 3 else ins[0]  # addmm/baddbmm carry the bias first
    if a is None or out is None:
        return 0
    return prod(out) * a[-1]


@register_macs(aten.scaled_dot_product_attention.default)
def sdpa_macs(ins: Shapes, out) -> int:
    q, k, v = ins[0], ins[1], ins[2]
    if q is None or k is None or v is None:
        return 0
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def node_macs(target, args: Sequence, out: TensorSpec | None) -> int:
    rule = _RULES.get(target)
    if rule is None:
        return 0
    shapes = [a.shape if isinstance(a, TensorSpec) else None for a in args]
    if target is aten.convolution.default and len(args) > 6 and args[6] is True:
        return conv_transpose_macs(shapes, out.shape if out else None)
    return rule(shapes, out.shape if out else None)


def node_flops(macs: int, out: TensorSpec | None) -> int:
    if macs:
        return 2 * macs
    return out.numel if out is not None else 0
