"""Float GEMM / conv with a fused bias + activation epilogue: ``slimgraph::linear_act`` and ``slimgraph::conv_act``.

    y = aten.linear(x, w, b); z = aten.gelu(y)   =>   z = slimgraph.linear_act(x, w, b, "gelu")      (the fuse pass)

They mark "producer + epilogue" groups found by the ``fuse`` pass, so later passes (int8 quantization) and kernels
can target one node instead of a chain. Registered as CompositeImplicitAutograd: eager execution, fake tensors and
autograd run the torch reference below; torch.export keeps them as single nodes, and every decomposing re-trace
(AOT autograd in front of Inductor, ``run_decompositions`` in ONNX export) breaks them back into ATen ops, so
Inductor fuses the epilogue its own way and exporters need no translation of their own. Cost: the MACs of the
GEMM / conv. The activation table is :data:`slimgraph.kernels.epilogue.ACTIVATIONS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir.cost import conv_macs, linear_macs, register_macs
from ..kernels.epilogue import apply_activation

__all__ = ["conv_act", "linear_act"]

torch.library.define("slimgraph::linear_act", "(Tensor x, Tensor w, Tensor? b, str act) -> Tensor")
torch.library.define(
    "slimgraph::conv_act",
    "(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] dilation, int groups, str act) -> Tensor",
)


def linear_act(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str) -> torch.Tensor:
    return apply_activation(F.linear(x, w, b), act)


def conv_act(x, w, b, stride, padding, dilation, groups: int, act: str) -> torch.Tensor:
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}.get(w.dim())
    if conv is None:
        raise ValueError(f"conv_act: weight must be 3-, 4- or 5-D, got {w.dim()}-D")
    return apply_activation(conv(x, w, b, stride, padding, dilation, groups), act)


# Registered by call, not as decorators: torch.library.impl returns None, which would hide the functions.
torch.library.impl("slimgraph::linear_act", "CompositeImplicitAutograd")(linear_act)
torch.library.impl("slimgraph::conv_act", "CompositeImplicitAutograd")(conv_act)
register_macs(torch.ops.slimgraph.linear_act.default)(linear_macs)
register_macs(torch.ops.slimgraph.conv_act.default)(conv_macs)
