"""Rules for element-wise ops: unary pass-through, broadcast coupling, constants along labelled dims."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ...ir.graph_utils import get_attr_tensor
from ..labels import Labels, make_labels
from .model import Analysis, _align, _reason, rule

aten = torch.ops.aten


_UNARY = [
    "relu", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "relu6", "hardswish", "hardsigmoid", "leaky_relu",
    "elu", "mish", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "erf", "cos", "sin", "square", "reciprocal",
    "clone", "contiguous", "alias", "detach", "dropout", "clamp", "clamp_min", "clamp_max", "sign", "floor",
    "ceil", "round", "logical_not", "bitwise_not", "lift_fresh_copy", "_to_copy",
]


def _unary_targets():
    targets = []
    for name in _UNARY:
        packet = getattr(aten, name, None)
        if packet is not None:
            targets.extend(getattr(packet, o) for o in packet.overloads())
    return targets + [aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten.to.other, aten.type_as.default,
                      aten.pow.Tensor_Scalar]


@rule(*_unary_targets())
def _passthrough(a: Analysis, node: fx.Node):
    tensor_inputs = [x for x in (*node.args, *node.kwargs.values()) if isinstance(x, fx.Node)]
    if len(tensor_inputs) > 1:  # e.g. clamp with tensor bounds: an element-wise op over several tensors
        return couple_elementwise(a, node, tensor_inputs)
    return a.lab(node.args[0])




def _param_behind(a: Analysis, node) -> tuple[fx.Node, list[int | None]] | None:
    """If ``node`` is a parameter seen through shape-only ops, (get_attr node, param dim per value dim)."""
    chain = []
    cur = node
    while isinstance(cur, fx.Node) and cur.op == "call_function" and cur.target in _CONST_VIEWS:
        chain.append(cur)
        cur = cur.args[0]
    if not isinstance(cur, fx.Node) or cur.op != "get_attr":
        return None
    t = get_attr_tensor(a.gm, cur)
    value_shape = a.shape(node)
    if t is None or value_shape is None:
        return None
    expanded = set()
    if chain and chain[0].target is aten.expand.default:
        inner = a.shape(chain[0].args[0]) or ()
        pad = len(value_shape) - len(inner)
        expanded = {d for d in range(len(value_shape)) if d < pad or inner[d - pad] == 1}
    param_dims = [d for d, s in enumerate(t.shape) if s != 1]
    value_dims = [d for d, s in enumerate(value_shape) if s != 1 and d not in expanded]
    if [t.shape[d] for d in param_dims] != [value_shape[d] for d in value_dims]:
        return None
    mapping: list[int | None] = [None] * len(value_shape)
    for p, v in zip(param_dims, value_dims):
        mapping[v] = p
    return cur, mapping


_CONST_VIEWS = {aten.view.default, aten.reshape.default, aten.unsqueeze.default, aten.squeeze.dim,
                aten.squeeze.dims, aten.squeeze.default, aten.expand.default, aten.flatten.using_ints,
                aten.contiguous.default, aten.clone.default, aten.to.dtype, aten.detach.default}


def couple_elementwise(a: Analysis, node: fx.Node, operands: list) -> Labels | None:
    """Union labels of broadcast operands position-wise; constants along labelled dims become members.

    An operand broadcast along a labelled dim (size 1 there) constrains nothing: removing output channel c
    removes nothing from it. Its own labels, if any, are blocked (a size-1 dim cannot lose a unit anyway).
    A non-prunable operand that varies along a labelled dim pins those positions: they are blocked.
    """
    out_shape = a.shape(node)
    if out_shape is None:
        a.block_inputs(node, _reason(node, "output has no shape"))
        return None
    nd = len(out_shape)
    aligned = []
    for op in operands:
        shp = a.shape(op)
        if shp is None:  # a Python scalar: broadcasts everywhere
            continue
        aligned.append((op, (1,) * (nd - len(shp)) + tuple(shp), _align(a.lab(op), len(shp), nd)))
    tracked = [any(lab is not None and lab.tracked[d] for _, _, lab in aligned) for d in range(nd)]
    if not any(tracked):
        return None
    dims = [d for d in range(nd) if tracked[d]]
    target = tuple(out_shape[d] if tracked[d] else 1 for d in range(nd))
    stacks, constants, pinned, broadcast = [], [], [], []
    for op, shp, lab in aligned:
        full_dims = [d for d in dims if shp[d] != 1]
        partial = len(full_dims) != len(dims)
        if lab is not None:
            if partial:
                broadcast.append(lab)
                continue
            stacks.append(np.broadcast_to(lab.materialize(out_shape, dims), target))
        elif full_dims:
            behind = _param_behind(a, op)
            if behind is not None:
                attr, mapping = behind
                constants.append(((attr, [None] * (nd - len(mapping)) + mapping), full_dims))
                continue
            pinned.append(full_dims)  # a non-prunable tensor varies along these labelled dims
    if not stacks:
        for lab in broadcast:
            a.block(lab, _reason(node, "labelled operand broadcast against more channels"))
        return None
    base = stacks[0]
    for other in stacks[1:]:
        a.uf.union_pairs(base, other)
        base = np.maximum(base, other)
    out = np.ascontiguousarray(base)
    for lab in broadcast:
        # x * rsqrt(mean(x^2, -1, keepdim)) per head: the statistic of head h is broadcast over head h's channels,
        # which are already one unit (see reductions._merge_reduced): exact. Anything else would merge units
        # behind the user's back, so it stays blocked.
        spread = np.broadcast_to(lab.array, target)
        if not np.array_equal(a.uf.find_all(spread), a.uf.find_all(np.broadcast_to(out, target))):
            a.block(lab, _reason(node, "labelled operand broadcast against more channels"))
    for full_dims in pinned:
        _pin(a, out, full_dims, _reason(node, "meets a non-prunable tensor"))
    for (attr, mapping), full_dims in constants:
        _const_member(a, attr, mapping, out, full_dims, node)
    return make_labels(out, tracked)


def _pin(a: Analysis, labels: np.ndarray, dims: list[int], reason: str) -> None:
    """A tensor that cannot be pruned varies along ``dims``: no slice along them may disappear entirely.

    A slice holding one unit blocks that unit. A slice holding several (e.g. one rotary-embedding
    position across all heads) only forbids removing all of them, which is checked when planning.
    """
    for d in dims:
        rows = np.moveaxis(labels, d, 0).reshape(labels.shape[d], -1)
        for row in rows:
            uniq = np.unique(row)
            if (uniq < 0).any():
                continue  # already pinned by a fixed position
            if len(uniq) == 1:
                a.uf.block(uniq, reason)
            else:
                a.pins.append(uniq)


def _each_unit_reads_all_of(labels: np.ndarray, param_dims: list[int]) -> bool:
    """True when every unit in ``labels`` covers every position along ``param_dims`` (the dims a broadcast
    parameter varies along): whichever units go, each parameter entry keeps a reader, so it needs no slicing."""
    if not param_dims:
        return True
    others = tuple(d for d in range(labels.ndim) if d not in param_dims)
    for unit in np.unique(labels[labels >= 0]):
        if not np.any(labels == unit, axis=others).all():
            return False
    return True


def _const_member(a: Analysis, attr: fx.Node, mapping, out: np.ndarray, full_dims, node: fx.Node) -> None:
    t = get_attr_tensor(a.gm, attr)
    if t is None:
        return
    shape = [1] * t.dim()
    arr = out
    for d in range(out.ndim):
        if d in full_dims and mapping[d] is not None:
            continue
        # the parameter is broadcast along this output dim: labels there must not vary
        first = arr.take([0], axis=d)
        if not np.array_equal(np.broadcast_to(first, arr.shape), arr):
            roots = a.uf.find_all(out).reshape(out.shape)
            if _each_unit_reads_all_of(roots, [e for e in full_dims if mapping[e] is not None]):
                # Qwen3's q/k norm weight [head_dim], broadcast across heads: every head reads all of it, so
                # removing heads never leaves an entry unread and the weight stays whole; only removing every
                # unit that reads it is forbidden (checked when planning, as for _pin's shared slices)
                units = np.unique(roots[roots >= 0])
                if len(units):
                    a.pins.append(units)
                return
            a.block(out, _reason(node, f"parameter {attr.target} is shared by several pruning units"))
            return
        arr = first
    order = []
    for d in range(out.ndim):
        if d in full_dims and mapping[d] is not None:
            shape[mapping[d]] = out.shape[d]
            order.append((mapping[d], d))
    squeezed = arr.reshape([arr.shape[d] for d in range(arr.ndim) if (d in full_dims and mapping[d] is not None)]
                           or [1])
    # param dims in increasing order correspond to value dims in increasing order (see _param_behind)
    a.member(attr, squeezed.reshape(shape), "const", node)


@rule(aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.div.Tensor_mode,
      aten.maximum.default, aten.minimum.default, aten.pow.Tensor_Tensor, aten.eq.Tensor, aten.ne.Tensor,
      aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor, aten.ge.Tensor, aten.__and__.Tensor, aten.__or__.Tensor,
      aten.logical_and.default, aten.logical_or.default, aten.rsub.Tensor, aten.atan2.default)
def _binary(a: Analysis, node: fx.Node):
    return couple_elementwise(a, node, [x for x in node.args[:2]])


@rule(aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar, aten.eq.Scalar, aten.ne.Scalar,
      aten.lt.Scalar, aten.le.Scalar, aten.gt.Scalar, aten.ge.Scalar, aten.rsub.Scalar, aten.masked_fill.Scalar)
def _binary_scalar(a: Analysis, node: fx.Node):
    return couple_elementwise(a, node, [x for x in node.args[:2] if isinstance(x, fx.Node)])


@rule(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar, aten.masked_fill.Tensor,
      aten.lerp.Scalar, aten.addcmul.default)
def _ternary(a: Analysis, node: fx.Node):
    return couple_elementwise(a, node, [x for x in node.args[:3] if isinstance(x, fx.Node)])

