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

from ..ir.graph_utils import add_constant, constant_of
from ..ir.propagate import copy_provenance, invalidate
from ..kernels import epilogue  # noqa: F401 - registers torch.ops.slimgraph.linear_act / conv_act
from .base import Pass, PassResult, register_pass
from .dce import tidy

aten = torch.ops.aten
CONVS = {aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3}


def activation_of(node: fx.Node) -> str | None:
    """The epilogue name of an activation node, or None if ``node`` is not a fusable activation."""
    if node.op != "call_function":
        return None
    t = node.target
    if t is aten.relu.default:
        return "relu"
    if t is aten.relu6.default:
        return "relu6"
    if t is aten.hardtanh.default:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return "relu6" if (lo, hi) == (0.0, 6.0) else None
    if t is aten.gelu.default:
        approx = node.args[1] if len(node.args) > 1 else node.kwargs.get("approximate", "none")
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approx)
    simple = {
        aten.silu.default: "silu",
        aten.sigmoid.default: "sigmoid",
        aten.tanh.default: "tanh",
        aten.hardswish.default: "hardswish",
    }
    return simple.get(t)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _conv_params(node: fx.Node) -> tuple[list, list, list, int]:
    nd = CONVS[node.target]
    args = list(node.args) + [None] * (7 - len(node.args))

    def as_list(v, default):
        if v is None:
            return [default] * nd
        return list(v) if isinstance(v, (list, tuple)) else [v] * nd

    stride = as_list(args[3] if args[3] is not None else node.kwargs.get("stride"), 1)
    padding = as_list(args[4] if args[4] is not None else node.kwargs.get("padding"), 0)
    dilation = as_list(args[5] if args[5] is not None else node.kwargs.get("dilation"), 1)
    groups = args[6] if args[6] is not None else node.kwargs.get("groups", 1)
    return stride, padding, dilation, int(groups)


def _bias_from_add(gm: fx.GraphModule, producer: fx.Node, add: fx.Node) -> torch.Tensor | None:
    """The per-channel bias that ``add`` applies to ``producer``'s output, if it is one."""
    if add.op != "call_function" or add.target is not aten.add.Tensor or add.kwargs.get("alpha", 1) != 1:
        return None
    other = add.args[1] if add.args[0] is producer else add.args[0]
    if other is producer:
        return None
    c = constant_of(gm, other)
    out = producer.meta.get("val")
    if c is None or out is None or c.dtype != out.dtype:
        return None
    if producer.target is aten.linear.default:
        channels, axis = out.shape[-1], out.dim() - 1
    else:
        channels, axis = out.shape[1], 1
    if c.numel() != channels or c.dim() > out.dim():
        return None
    # the constant must lie along the channel axis once right-aligned with the output
    shape = [1] * (out.dim() - c.dim()) + list(c.shape)
    if any(s != 1 for i, s in enumerate(shape) if i != axis):
        return None
    return c.reshape(channels)


@register_pass
@dataclass(frozen=True)
class FuseEpilogues(Pass):
    name: ClassVar[str] = "fuse"
    summary: ClassVar[str] = "group linear/conv + bias + activation into slimgraph.linear_act/conv_act"
    bias: bool = True  # fold a following per-channel constant add into the bias
    activation: bool = True  # fuse a following activation

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = {"bias_folded": 0, "linear_act": 0, "conv_act": 0}
        notes: list[str] = []
        graph = gm.graph
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if node.target is not aten.linear.default and node.target not in CONVS:
                continue
            if self.bias:
                stats["bias_folded"] += self._fold_bias_add(gm, node)
            user = _single_user(node)
            act = activation_of(user) if (self.activation and user is not None) else None
            if act is None:
                if self.activation and len(node.users) > 1 and any(activation_of(u) for u in node.users):
                    notes.append(f"{node.name}: output has {len(node.users)} readers; activation not fused")
                continue
            b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            if node.target is aten.linear.default:
                target, args = torch.ops.slimgraph.linear_act.default, (node.args[0], node.args[1], b, act)
                stats["linear_act"] += 1
            else:
                stride, padding, dilation, groups = _conv_params(node)
                target = torch.ops.slimgraph.conv_act.default
                args = (node.args[0], node.args[1], b, stride, padding, dilation, groups, act)
                stats["conv_act"] += 1
            with graph.inserting_before(user):
                fused = graph.create_node("call_function", target, args, name=f"{node.name}_{act}")
            copy_provenance(fused, node)
            fused.meta["val"] = user.meta.get("val")
            user.replace_all_uses_with(fused)
            graph.erase_node(user)
            graph.erase_node(node)
        modified = any(stats.values())
        if modified:
            tidy(gm)
        return PassResult(gm, modified, stats, notes)

    def _fold_bias_add(self, gm: fx.GraphModule, node: fx.Node) -> int:
        has_bias = (len(node.args) > 2 and node.args[2] is not None) or node.kwargs.get("bias") is not None
        add = _single_user(node)
        if has_bias or add is None:
            return 0
        bias = _bias_from_add(gm, node, add)
        if bias is None:
            return 0
        weight = node.args[1]
        base = weight.target.rpartition(".")[0] if weight.op == "get_attr" else ""
        target = add_constant(gm, bias.clone(), f"{base or node.name}.bias", parameter=True)
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(target)
        args = list(node.args) + [None] * max(0, 3 - len(node.args))
        args[2] = attr
        node.args = tuple(args)
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}
        add.replace_all_uses_with(node)
        gm.graph.erase_node(add)
        invalidate(node)
        return 1
