"""Float GEMM/conv with a fused bias + activation epilogue, as graph-level ops.

``slimgraph::linear_act(x, w, b, act)`` and ``slimgraph::conv_act(x, w, b, stride, padding, dilation,
groups, act)`` mark "producer + epilogue" groups found by the ``fuse`` pass, so later passes (int8
quantization) and kernels can target one node instead of a chain. They are registered as
CompositeImplicitAutograd: eager execution, fake tensors and autograd run the torch reference below;
torch.export keeps them as single nodes, and every decomposing re-trace (AOT autograd in front of
Inductor, ``run_decompositions`` in ONNX export) breaks them back into ATen ops, so Inductor still fuses
the epilogue its own way and exporters need no special case. The int8 ops of the quantization rewrite are opaque
custom ops with Triton kernels instead.

The activation table here is shared by every kernel with an activation epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir.cost import conv_macs, linear_macs, register_macs

ACTIVATIONS = ("none", "relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish")


def apply_activation(y: torch.Tensor, act: str | None) -> torch.Tensor:
    """Reference activation epilogue; ``act`` is one of :data:`ACTIVATIONS` (None means "none")."""
    if act is None or act == "none":
        return y
    if act == "relu":
        return torch.relu(y)
    if act == "relu6":
        return torch.clamp(y, 0.0, 6.0)
    if act == "gelu":
        return F.gelu(y)
    if act == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if act == "silu":
        return F.silu(y)
    if act == "sigmoid":
        return torch.sigmoid(y)
    if act == "tanh":
        return torch.tanh(y)
    if act == "hardswish":
        return F.hardswish(y)
    raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")


def check_activation(act: str | None) -> str:
    act = "none" if act is None else act
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    return act


torch.library.define("slimgraph::linear_act", "(Tensor x, Tensor w, Tensor? b, str act) -> Tensor")
torch.library.define(
    "slimgraph::conv_act",
    "(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] dilation, int groups, str act) -> Tensor",
)


@torch.library.impl("slimgraph::linear_act", "CompositeImplicitAutograd")
def linear_act(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str) -> torch.Tensor:
    return apply_activation(F.linear(x, w, b), act)


@torch.library.impl("slimgraph::conv_act", "CompositeImplicitAutograd")
def conv_act(x, w, b, stride, padding, dilation, groups: int, act: str) -> torch.Tensor:
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}.get(w.dim())
    if conv is None:
        raise ValueError(f"conv_act: weight must be 3-, 4- or 5-D, got {w.dim()}-D")
    return apply_activation(conv(x, w, b, stride, padding, dilation, groups), act)


register_macs(torch.ops.slimgraph.linear_act.default)(linear_macs)
register_macs(torch.ops.slimgraph.conv_act.default)(conv_macs)
