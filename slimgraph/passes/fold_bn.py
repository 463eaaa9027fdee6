"""Fold eval-mode BatchNorm into neighbouring convolutions and linears; lower the rest to an affine op.

    conv(x, w, b) -> bn                  =>  conv(x, w * s, b * s + t)
    conv_transpose(x, w, b) -> bn        =>  conv_transpose(x, w * s (per group/out-channel), b * s + t)
    linear(x2d, w, b) -> bn1d            =>  linear(x2d, w * s[:, None], b * s + t)
    bn -> conv(x, w, b)   (no padding)   =>  conv(x, w * s (input channels), b + sum(w * t))
    bn1d -> linear(x2d, w, b)            =>  linear(x2d, w * s[None, :], b + w @ t)
    bn (anything else)                   =>  x * s + t  (channel-broadcast mul + add)

with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` computed in float64. Legality:
the BN runs in eval mode with constant statistics; the producer's only reader is the BN; its weights
are constants read by no other node (tied weights are left alone); BN-before-conv needs zero padding
(a padded border would see ``t`` instead of 0) and the BN output must only feed that conv.
Training-mode BNs are left untouched and reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from ..ir.graph_utils import add_constant, constant_of, get_attr_tensor, set_attr_tensor
from ..ir.propagate import copy_provenance
from .base import Pass, PassResult, register_pass
from .dce import tidy

aten = torch.ops.aten

CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}
CONV_TRANSPOSES = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


@dataclass
class _BN:
    node: fx.Node  # the node whose value is the normalized tensor (getitem 0 for the tuple form)
    erase: list[fx.Node]
    x: fx.Node
    scale: torch.Tensor  # float64 [C]
    shift: torch.Tensor  # float64 [C]


def _as_eval_bn(gm: fx.GraphModule, node: fx.Node) -> _BN | str | None:
    """Recognise an eval-mode BN (None if ``node`` is no BN, a reason string if it cannot fold)."""
    if node.op != "call_function" or node.target not in BATCH_NORMS:
        return None
    args = list(node.args)
    if node.target is aten.batch_norm.default:
        x, weight, bias, mean, var, training, _momentum, eps = args[:8]
        if training:
            return "batch norm runs in training mode"
        value_node, erase = node, [node]
    else:
        x, weight, bias, mean, var, _momentum, eps = args[:7]
        users = list(node.users)
        if len(users) != 1 or users[0].args[1] != 0:
            return "batch norm statistics outputs are read"
        value_node, erase = users[0], [users[0], node]
    tensors = {}
    for label, arg in (("running_mean", mean), ("running_var", var), ("weight", weight), ("bias", bias)):
        if arg is None:
            tensors[label] = None
            continue
        t = constant_of(gm, arg)
        if t is None:
            return f"batch norm {label} is not a constant"
        tensors[label] = t.double()
    if tensors["running_mean"] is None or tensors["running_var"] is None:
        return "batch norm has no running statistics"
    scale = 1.0 / torch.sqrt(tensors["running_var"] + eps)
    if tensors["weight"] is not None:
        scale = scale * tensors["weight"]
    shift = -tensors["running_mean"] * scale
    if tensors["bias"] is not None:
        shift = shift + tensors["bias"]
    return _BN(value_node, erase, x, scale, shift)


def _exclusive_weight(gm: fx.GraphModule, arg, readers: Counter) -> torch.Tensor | None:
    """The constant behind ``arg`` if one node reads it (so it may be rewritten in place of the graph).

    ``readers`` counts get_attr nodes per attribute: tied weights are read through several of them.
    """
    if not isinstance(arg, fx.Node) or arg.op != "get_attr" or len(arg.users) != 1:
        return None
    return get_attr_tensor(gm, arg) if readers[arg.target] == 1 else None


def _write(gm: fx.GraphModule, node: fx.Node, index: int, value: torch.Tensor, like: torch.Tensor | None,
           name_hint: str) -> None:
    """Store ``value`` as argument ``index`` of ``node``: overwrite the old attribute or add a new one."""
    dtype = like.dtype if like is not None else node.args[1].meta["val"].dtype
    value = value.to(dtype)
    arg = node.args[index] if index < len(node.args) else None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        set_attr_tensor(gm, arg.target, value)  # same shape and dtype: the node's fake value still holds
        return
    target = add_constant(gm, value, name_hint, parameter=True)
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(target)
    args = list(node.args)
    while len(args) <= index:
        args.append(None)
    args[index] = attr
    node.args = tuple(args)


def _wide(w: torch.Tensor) -> torch.Tensor:
    """Weight in at least float32 for the rescale (float64 would double the cost on large convs for
    no gain: the per-channel factors themselves are computed in float64)."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view(-1, *([1] * (ndim - 1)))


def _fold_into_producer(gm: fx.GraphModule, bn: _BN, readers: Counter) -> str | None:
    """conv/linear -> bn. Returns None on success, else why not."""
    producer = bn.x
    if not isinstance(producer, fx.Node) or producer.op != "call_function":
        return "no conv/linear before it"
    if producer.target not in CONVS | CONV_TRANSPOSES | {aten.linear.default}:
        return "no conv/linear before it"
    if len(producer.users) != 1:
        return f"{producer.name} has other readers"
    w = _exclusive_weight(gm, producer.args[1], readers)
    if w is None:
        return f"{producer.name}'s weight is not an unshared constant"
    bias_arg = producer.args[2] if len(producer.args) > 2 else None
    b = None
    if bias_arg is not None:
        b = _exclusive_weight(gm, bias_arg, readers)
        if b is None:
            return f"{producer.name}'s bias is not an unshared constant"
    s, t = bn.scale, bn.shift
    if producer.target is aten.linear.default:
        out_rank = len(producer.meta["val"].shape)
        if out_rank != 2:
            return "linear output is not 2-D, so BN's channel axis is not the linear's output axis"
        new_w = _wide(w) * s[:, None].to(_wide(w).dtype)
    elif producer.target in CONVS:
        new_w = _wide(w) * _channel_view(s, w.dim()).to(_wide(w).dtype)
    else:  # transposed conv: weight [Cin, Cout/groups, k...]; output channel = group * Cout/g + j
        groups = _transpose_groups(producer)
        cin, cout_g = w.shape[0], w.shape[1]
        grouped = _wide(w).reshape(groups, cin // groups, cout_g, *w.shape[2:])
        s_g = s.view(groups, 1, cout_g, *([1] * (w.dim() - 2))).to(grouped.dtype)
        new_w = (grouped * s_g).reshape(w.shape)
    new_b = (b.double() * s if b is not None else torch.zeros_like(s)) + t  # per-channel: float64
    _write(gm, producer, 1, new_w, w, "")
    _write(gm, producer, 2, new_b, w, f"{producer.args[1].target.rpartition('.')[0] or producer.name}.bias")
    bn.node.replace_all_uses_with(producer)
    return None


def _transpose_groups(node: fx.Node) -> int:
    # conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    args = node.args
    return int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))


def _fold_into_consumer(gm: fx.GraphModule, bn: _BN, readers: Counter) -> str | None:
    """bn -> conv/linear (BN output read only by that op as its input)."""
    users = list(bn.node.users)
    if len(users) != 1:
        return "its output has several readers"
    consumer = users[0]
    if consumer.op != "call_function" or consumer.args[0] is not bn.node:
        return "no conv/linear after it"
    if consumer.target not in CONVS | {aten.linear.default}:
        return "no conv/linear after it"
    w = _exclusive_weight(gm, consumer.args[1], readers)
    if w is None:
        return f"{consumer.name}'s weight is not an unshared constant"
    bias_arg = consumer.args[2] if len(consumer.args) > 2 else None
    b = _exclusive_weight(gm, bias_arg, readers) if bias_arg is not None else None
    if bias_arg is not None and b is None:
        return f"{consumer.name}'s bias is not an unshared constant"
    s, t = bn.scale, bn.shift
    wd = w.double()  # consumer folds sum over input channels: accumulate in float64
    if consumer.target is aten.linear.default:
        if len(bn.node.meta["val"].shape) != 2:
            return "BN before linear only folds for 2-D inputs"
        new_w = wd * s[None, :]
        new_b = wd @ t
    else:
        padding = consumer.args[4] if len(consumer.args) > 4 else 0
        if any(int(p) != 0 for p in (padding if isinstance(padding, (list, tuple)) else [padding])):
            return f"{consumer.name} zero-pads its input, which the folded shift would see as non-zero"
        groups = int(consumer.args[6]) if len(consumer.args) > 6 else 1
        cout, cin_g = w.shape[0], w.shape[1]
        spatial = [1] * (w.dim() - 2)
        grouped = wd.reshape(groups, cout // groups, cin_g, *w.shape[2:])
        s_g = s.view(groups, 1, cin_g, *spatial)
        t_g = t.view(groups, 1, cin_g, *spatial)
        new_w = (grouped * s_g).reshape(w.shape)
        new_b = (grouped * t_g).sum(dim=tuple(range(2, grouped.dim()))).reshape(cout)
    if b is not None:
        new_b = new_b + b.double()
    _write(gm, consumer, 1, new_w, w, "")
    _write(gm, consumer, 2, new_b, w, f"{consumer.args[1].target.rpartition('.')[0] or consumer.name}.bias")
    consumer.replace_input_with(bn.node, bn.x)
    return None


def _lower_to_affine(gm: fx.GraphModule, bn: _BN, original: fx.Node) -> None:
    x_val = bn.x.meta["val"]
    ndim, dtype = x_val.dim(), x_val.dtype
    base = _bn_attr_base(original)
    scale = add_constant(gm, _channel_view(bn.scale, max(ndim - 1, 1)).to(dtype), f"{base}.affine_scale")
    shift = add_constant(gm, _channel_view(bn.shift, max(ndim - 1, 1)).to(dtype), f"{base}.affine_shift")
    graph = gm.graph
    with graph.inserting_before(original):
        s_node, t_node = graph.get_attr(scale), graph.get_attr(shift)
        mul = graph.call_function(aten.mul.Tensor, (bn.x, s_node))
        add = graph.call_function(aten.add.Tensor, (mul, t_node))
    for n in (mul, add):
        copy_provenance(n, original)
    bn.node.replace_all_uses_with(add)


def _bn_attr_base(node: fx.Node) -> str:
    mean = node.args[3]  # running_mean in both BN forms
    if isinstance(mean, fx.Node) and mean.op == "get_attr":
        return mean.target.rpartition(".")[0] or node.name
    return node.name


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    name: ClassVar[str] = "fold-bn"
    summary: ClassVar[str] = "fold eval BatchNorm into conv/linear weights, lower the rest to x*s+t"
    affine_fallback: bool = True  # lower unfoldable eval-mode BNs to mul+add

    def run(self, gm: fx.GraphModule) -> PassResult:
        stats = {"folded_into_producer": 0, "folded_into_consumer": 0, "lowered_to_affine": 0, "left": 0}
        notes: list[str] = []
        readers = Counter(n.target for n in gm.graph.nodes if n.op == "get_attr")
        for node in list(gm.graph.nodes):
            if node.graph is not gm.graph or node.op != "call_function" or node.target not in BATCH_NORMS:
                continue
            bn = _as_eval_bn(gm, node)
            if isinstance(bn, str):
                stats["left"] += 1
                notes.append(f"left {node.name} alone: {bn}")
                continue
            why_not_producer = _fold_into_producer(gm, bn, readers)
            if why_not_producer is None:
                stats["folded_into_producer"] += 1
            else:
                why_not_consumer = _fold_into_consumer(gm, bn, readers)
                if why_not_consumer is None:
                    stats["folded_into_consumer"] += 1
                elif self.affine_fallback:
                    _lower_to_affine(gm, bn, node)
                    stats["lowered_to_affine"] += 1
                    notes.append(f"{node.name} lowered to x*s+t: not after a conv/linear "
                                 f"({why_not_producer}) nor before one ({why_not_consumer})")
                else:
                    stats["left"] += 1
                    notes.append(f"left {node.name}: {why_not_producer}; {why_not_consumer}")
                    continue
            for dead in bn.erase:
                gm.graph.erase_node(dead)
        modified = any(v for k, v in stats.items() if k != "left")
        if modified:
            tidy(gm)
        return PassResult(gm, modified, stats, notes)
