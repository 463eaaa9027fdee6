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

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from ..ir.graph_utils import add_constant, set_attr_tensor
from ..ir.match import (
    BATCH_NORMS,
    CONV_TRANSPOSES,
    CONVS,
    LINEARS,
    Pattern,
    Reject,
    apply_patterns,
    arg,
    constant,
    conv_geometry,
    exclusive_constant,
    is_call,
    only_reader,
    value_of,
)
from ..ir.propagate import copy_provenance
from .base import Pass, PassResult, register_pass
from .dce import tidy

aten = torch.ops.aten


@dataclass
class _BN:
    node: fx.Node  # the node whose value is the normalized tensor (getitem 0 for the tuple form)
    erase: list[fx.Node]
    x: fx.Node
    scale: torch.Tensor  # float64 [C]
    shift: torch.Tensor  # float64 [C]


@dataclass
class _Fold:
    bn: _BN
    layer: fx.Node  # the conv/linear whose weights absorb the BN
    w: torch.Tensor
    b: torch.Tensor | None


def _eval_bn(gm: fx.GraphModule, node: fx.Node) -> _BN | Reject:
    """An eval-mode BN with constant statistics, or why it cannot fold."""
    if node.target is aten.batch_norm.default:
        x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
        if training:
            return Reject("batch norm runs in training mode")
        value_node, erase = node, [node]
    else:
        x, weight, bias, mean, var, _momentum, eps = node.args[:7]
        users = list(node.users)
        if len(users) != 1 or users[0].args[1] != 0:
            return Reject("batch norm statistics outputs are read")
        value_node, erase = users[0], [users[0], node]
    tensors = {}
    for label, value in (("running_mean", mean), ("running_var", var), ("weight", weight), ("bias", bias)):
        if value is None:
            tensors[label] = None
            continue
        t = constant(gm, value)
        if t is None:
            return Reject(f"batch norm {label} is not a constant")
        tensors[label] = t.double()
    if tensors["running_mean"] is None or tensors["running_var"] is None:
        return Reject("batch norm has no running statistics")
    scale = 1.0 / torch.sqrt(tensors["running_var"] + eps)
    if tensors["weight"] is not None:
        scale = scale * tensors["weight"]
    shift = -tensors["running_mean"] * scale
    if tensors["bias"] is not None:
        shift = shift + tensors["bias"]
    return _BN(value_node, erase, x, scale, shift)


def _layer_weights(gm: fx.GraphModule, bn: _BN, layer: fx.Node) -> _Fold | Reject:
    """The conv/linear's weight and bias, if both are constants only it reads (it may then be rewritten)."""
    w = exclusive_constant(gm, layer.args[1])
    if w is None:
        return Reject(f"{layer.name}'s weight is not an unshared constant")
    bias_arg = arg(layer, 2, "bias")
    b = exclusive_constant(gm, bias_arg) if bias_arg is not None else None
    if bias_arg is not None and b is None:
        return Reject(f"{layer.name}'s bias is not an unshared constant")
    return _Fold(bn, layer, w, b)


def _after_layer(gm: fx.GraphModule, node: fx.Node) -> _Fold | Reject:
    """conv/linear -> bn, the BN the layer's only reader."""
    bn = _eval_bn(gm, node)
    if isinstance(bn, Reject):
        return bn
    producer = bn.x
    if not is_call(producer, CONVS | CONV_TRANSPOSES | LINEARS):
        return Reject("no conv/linear before it")
    if only_reader(producer) is None:
        return Reject(f"{producer.name} has other readers")
    if producer.target in LINEARS and len(value_of(producer).shape) != 2:
        return Reject("linear output is not 2-D, so BN's channel axis is not the linear's output axis")
    return _layer_weights(gm, bn, producer)


def _before_layer(gm: fx.GraphModule, node: fx.Node) -> _Fold | Reject:
    """bn -> conv/linear, the BN output read only by that layer, as its input."""
    bn = _eval_bn(gm, node)
    if isinstance(bn, Reject):
        return bn
    consumer = only_reader(bn.node)
    if consumer is None:
        return Reject("its output has several readers")
    if not is_call(consumer, CONVS | LINEARS) or consumer.args[0] is not bn.node:
        return Reject("no conv/linear after it")
    found = _layer_weights(gm, bn, consumer)
    if isinstance(found, Reject):
        return found
    if consumer.target in LINEARS and len(value_of(bn.node).shape) != 2:
        return Reject("BN before linear only folds for 2-D inputs")
    if consumer.target in CONVS and any(p != 0 for p in conv_geometry(consumer).padding):
        return Reject(f"{consumer.name} zero-pads its input, which the folded shift would see as non-zero")
    return found


def _wide(w: torch.Tensor) -> torch.Tensor:
    """Weight in at least float32 for the rescale (float64 would double the cost on large convs for
    no gain: the per-channel factors themselves are computed in float64)."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view(-1, *([1] * (ndim - 1)))


def _fold_into_producer(gm: fx.GraphModule, node: fx.Node, fold: _Fold) -> None:
    producer, w, s, t = fold.layer, fold.w, fold.bn.scale, fold.bn.shift
    wide = _wide(w)
    if producer.target in LINEARS:
        new_w = wide * s[:, None].to(wide.dtype)
    elif producer.target in CONVS:
        new_w = wide * _channel_view(s, w.dim()).to(wide.dtype)
    else:  # transposed conv: weight [Cin, Cout/groups, k...]; output channel = group * Cout/g + j
        groups = conv_geometry(producer).groups
        cin, cout_g = w.shape[0], w.shape[1]
        grouped = wide.reshape(groups, cin // groups, cout_g, *w.shape[2:])
        s_g = s.view(groups, 1, cout_g, *([1] * (w.dim() - 2))).to(grouped.dtype)
        new_w = (grouped * s_g).reshape(w.shape)
    new_b = (fold.b.double() * s if fold.b is not None else torch.zeros_like(s)) + t  # per-channel: float64
    _store_weights(gm, fold, new_w, new_b)
    fold.bn.node.replace_all_uses_with(producer)
    _erase(gm, fold.bn)


def _fold_into_consumer(gm: fx.GraphModule, node: fx.Node, fold: _Fold) -> None:
    consumer, w, s, t = fold.layer, fold.w, fold.bn.scale, fold.bn.shift
    wd = w.double()  # consumer folds sum over input channels: accumulate in float64
    if consumer.target in LINEARS:
        new_w = wd * s[None, :]
        new_b = wd @ t
    else:
        groups = conv_geometry(consumer).groups
        cout, cin_g = w.shape[0], w.shape[1]
        spatial = [1] * (w.dim() - 2)
        grouped = wd.reshape(groups, cout // groups, cin_g, *w.shape[2:])
        s_g = s.view(groups, 1, cin_g, *spatial)
        t_g = t.view(groups, 1, cin_g, *spatial)
        new_w = (grouped * s_g).reshape(w.shape)
        new_b = (grouped * t_g).sum(dim=tuple(range(2, grouped.dim()))).reshape(cout)
    if fold.b is not None:
        new_b = new_b + fold.b.double()
    _store_weights(gm, fold, new_w, new_b)
    consumer.replace_input_with(fold.bn.node, fold.bn.x)
    _erase(gm, fold.bn)


def _store_weights(gm: fx.GraphModule, fold: _Fold, new_w: torch.Tensor, new_b: torch.Tensor) -> None:
    """Write the folded weight over the old attribute (same shape and dtype: fake values still hold) and the
    bias over the old one, or as a new parameter next to the weight when the layer had none."""
    layer, dtype = fold.layer, fold.w.dtype
    set_attr_tensor(gm, layer.args[1].target, new_w.to(dtype))
    bias_arg = arg(layer, 2, "bias")
    if bias_arg is not None:
        set_attr_tensor(gm, bias_arg.target, new_b.to(dtype))
    else:
        attach_bias(gm, layer, new_b.to(dtype))


def attach_bias(gm: fx.GraphModule, layer: fx.Node, bias: torch.Tensor) -> None:
    """Give a bias-less linear/conv node ``bias`` as a new parameter beside its weight (``<owner>.bias``, so reports
    and saved files name it like the model would), passed as the node's third argument."""
    weight = layer.args[1]
    owner = weight.target.rpartition(".")[0] if isinstance(weight, fx.Node) and weight.op == "get_attr" else ""
    target = add_constant(gm, bias, f"{owner or layer.name}.bias", parameter=True)
    with gm.graph.inserting_before(layer):
        attr = gm.graph.get_attr(target)
    args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
    args[2] = attr
    layer.args = tuple(args)
    layer.kwargs = {k: v for k, v in layer.kwargs.items() if k != "bias"}


def _lower_to_affine(gm: fx.GraphModule, node: fx.Node, bn: _BN) -> None:
    x_val = value_of(bn.x)
    ndim, dtype = x_val.dim(), x_val.dtype
    base = _bn_attr_base(node)
    scale = add_constant(gm, _channel_view(bn.scale, max(ndim - 1, 1)).to(dtype), f"{base}.affine_scale")
    shift = add_constant(gm, _channel_view(bn.shift, max(ndim - 1, 1)).to(dtype), f"{base}.affine_shift")
    graph = gm.graph
    with graph.inserting_before(node):
        s_node, t_node = graph.get_attr(scale), graph.get_attr(shift)
        mul = graph.call_function(aten.mul.Tensor, (bn.x, s_node))
        add = graph.call_function(aten.add.Tensor, (mul, t_node))
    for n in (mul, add):
        copy_provenance(n, node)
    bn.node.replace_all_uses_with(add)
    _erase(gm, bn)


def _bn_attr_base(node: fx.Node) -> str:
    mean = node.args[3]  # running_mean in both BN forms
    if isinstance(mean, fx.Node) and mean.op == "get_attr":
        return mean.target.rpartition(".")[0] or node.name
    return node.name


def _erase(gm: fx.GraphModule, bn: _BN) -> None:
    for dead in bn.erase:
        gm.graph.erase_node(dead)


FOLD_PATTERNS = [
    # conv / conv_transpose / linear -> bn  =>  conv' (w * s, b * s + t)
    Pattern("folded_into_producer", BATCH_NORMS, _after_layer, _fold_into_producer),
    # bn -> conv / linear  =>  conv' (w * s over input channels, b + w . t)
    Pattern("folded_into_consumer", BATCH_NORMS, _before_layer, _fold_into_consumer),
]
# bn  =>  x * s + t   (an eval BN no layer can absorb)
AFFINE_PATTERN = Pattern("lowered_to_affine", BATCH_NORMS, _eval_bn, _lower_to_affine)


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    name: ClassVar[str] = "fold-bn"
    summary: ClassVar[str] = "fold eval BatchNorm into conv/linear weights, lower the rest to x*s+t"
    affine_fallback: bool = True  # lower unfoldable eval-mode BNs to mul+add

    def run(self, gm: fx.GraphModule) -> PassResult:
        patterns = FOLD_PATTERNS + ([AFFINE_PATTERN] if self.affine_fallback else [])
        rewrites = apply_patterns(gm, patterns)
        stats = {"folded_into_producer": 0, "folded_into_consumer": 0, "lowered_to_affine": 0,
                 **rewrites.counts, "left": rewrites.left}
        if rewrites.total:
            tidy(gm)
        return PassResult(gm, rewrites.total > 0, stats, rewrites.notes)
