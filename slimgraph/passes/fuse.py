"""Group GEMM/conv producers with their bias and activation epilogues into one fused op.

    linear(x, w, None) -> add(c[N])          =>  linear(x, w, c)
    conv(x, w, None)   -> add(c[1,C,1,1])    =>  conv(x, w, c.flatten())
    linear(x, w, b)    -> act                =>  slimgraph.linear_act(x, w, b, act)
    conv(x, w, b, ...) -> act                =>  slimgraph.conv_act(x, w, b, stride, padding, dilation, groups, act)

``act`` is one of relu, relu6 (hardtanh 0..6), gelu, gelu_tanh, silu, sigmoid, tanh, hardswish. A producer
whose output has other readers keeps its plain form (the epilogue would have to be recomputed), and
conv overloads with string padding ("same") are left alone. Quantization later rewrites the fused ops
into int8 GEMMs with the same epilogue, and the kernels run it in registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from ..ir.match import (
    CONVS,
    LINEARS,
    Pattern,
    Reject,
    apply_patterns,
    arg,
    constant,
    conv_geometry,
    only_reader,
    same_dtype,
    value_of,
)
from ..ir.propagate import copy_provenance, invalidate
from ..ops import epilogue  # noqa: F401 - registers torch.ops.slimgraph.linear_act / conv_act
from .base import Pass, PassResult, register_pass
from .dce import tidy
from .fold_bn import attach_bias

aten = torch.ops.aten

_SIMPLE_ACTIVATIONS = {
    aten.relu.default: "relu",
    aten.relu6.default: "relu6",
    aten.silu.default: "silu",
    aten.sigmoid.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.hardswish.default: "hardswish",
}


def activation_of(node: fx.Node) -> str | None:
    """The epilogue name of an activation node, or None if ``node`` is not a fusable activation."""
    if node.op != "call_function":
        return None
    if node.target is aten.hardtanh.default:
        bounds = (arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0))
        return "relu6" if bounds == (0.0, 6.0) else None
    if node.target is aten.gelu.default:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(arg(node, 1, "approximate", "none"))
    return _SIMPLE_ACTIVATIONS.get(node.target)


# ---------------------------------------------------------------------------------- bias add


def _bias_add(gm: fx.GraphModule, producer: fx.Node) -> tuple[fx.Node, torch.Tensor] | None:
    """(add, per-channel bias) when the producer has no bias and its only reader adds a channel constant."""
    add = only_reader(producer)
    if arg(producer, 2, "bias") is not None or add is None:
        return None
    if add.op != "call_function" or add.target is not aten.add.Tensor or add.kwargs.get("alpha", 1) != 1:
        return None
    other = add.args[1] if add.args[0] is producer else add.args[0]
    if other is producer:
        return None
    c, out = constant(gm, other), value_of(producer)
    if c is None or out is None or not same_dtype(c, out):
        return None
    if producer.target in LINEARS:
        channels, axis = out.shape[-1], out.dim() - 1
    else:
        channels, axis = out.shape[1], 1
    if c.numel() != channels or c.dim() > out.dim():
        return None
    # the constant must lie along the channel axis once right-aligned with the output
    shape = [1] * (out.dim() - c.dim()) + list(c.shape)
    if any(s != 1 for i, s in enumerate(shape) if i != axis):
        return None
    return add, c.reshape(channels)


def _fold_bias_add(gm: fx.GraphModule, node: fx.Node, found: tuple[fx.Node, torch.Tensor]) -> None:
    add, bias = found
    attach_bias(gm, node, bias.clone())
    add.replace_all_uses_with(node)
    gm.graph.erase_node(add)
    invalidate(node)


# ---------------------------------------------------------------------------------- activation


def _activation_after(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, str] | Reject | None:
    """(activation node, its name) when an activation is the producer's only reader."""
    user = only_reader(node)
    act = activation_of(user) if user is not None else None
    if act is not None:
        return user, act
    if len(node.users) > 1 and any(activation_of(u) for u in node.users):
        return Reject(f"output has {len(node.users)} readers; activation not fused")
    return None


def _fuse_linear_act(gm: fx.GraphModule, node: fx.Node, found: tuple[fx.Node, str]) -> None:
    act = found[1]
    _replace_pair(gm, node, found, torch.ops.slimgraph.linear_act.default,
                  (node.args[0], node.args[1], arg(node, 2, "bias"), act))


def _fuse_conv_act(gm: fx.GraphModule, node: fx.Node, found: tuple[fx.Node, str]) -> None:
    g, act = conv_geometry(node), found[1]
    args = (node.args[0], node.args[1], arg(node, 2, "bias"), list(g.stride), list(g.padding), list(g.dilation),
            g.groups, act)
    _replace_pair(gm, node, found, torch.ops.slimgraph.conv_act.default, args)


def _replace_pair(gm: fx.GraphModule, node: fx.Node, found: tuple[fx.Node, str], target, args: tuple) -> None:
    user, act = found
    graph = gm.graph
    with graph.inserting_before(user):
        fused = graph.create_node("call_function", target, args, name=f"{node.name}_{act}")
    copy_provenance(fused, node)
    fused.meta["val"] = user.meta.get("val")
    user.replace_all_uses_with(fused)
    graph.erase_node(user)
    graph.erase_node(node)


# linear(x, w, None) -> add(c)  =>  linear(x, w, c)      (c one value per output channel)
BIAS_PATTERN = Pattern("bias_folded", LINEARS | CONVS, _bias_add, _fold_bias_add)
ACTIVATION_PATTERNS = [
    # linear(x, w, b) -> act  =>  slimgraph.linear_act(x, w, b, act)
    Pattern("linear_act", LINEARS, _activation_after, _fuse_linear_act),
    # conv(x, w, b, ...) -> act  =>  slimgraph.conv_act(x, w, b, ..., act)
    Pattern("conv_act", CONVS, _activation_after, _fuse_conv_act),
]


@register_pass
@dataclass(frozen=True)
class FuseEpilogues(Pass):
    name: ClassVar[str] = "fuse"
    summary: ClassVar[str] = "group linear/conv + bias + activation into slimgraph.linear_act/conv_act"
    bias: bool = True  # fold a following per-channel constant add into the bias
    activation: bool = True  # fuse a following activation

    def run(self, gm: fx.GraphModule) -> PassResult:
        patterns = ([BIAS_PATTERN] if self.bias else []) + (ACTIVATION_PATTERNS if self.activation else [])
        rewrites = apply_patterns(gm, patterns)
        stats = {"bias_folded": 0, "linear_act": 0, "conv_act": 0, **rewrites.counts}
        if rewrites.total:
            tidy(gm)
        return PassResult(gm, rewrites.total > 0, stats, rewrites.notes)
