"""Dependency analysis for structured pruning, on the canonical ATen graph.

Walks the graph once in topological order and gives every tensor value a :class:`Labels` array: which
pruning *element* each index of its channel-carrying dims holds. Layers that produce channels (conv
output channels, linear output features, embedding dims) create fresh elements; every other op maps
labels from inputs to outputs with an exact rule and *unions* elements that must go together:

* element-wise ops and residual adds couple operands position by position (broadcast dims excepted);
* conv/linear/embedding weights, biases and norm parameters become *members*: parameter slices that
  follow their elements when they are removed;
* views, flatten, permute/transpose, unsqueeze, expand, concat, split and slice move labels with the data,
  so channel -> h*w features, channel shuffles and q/k/v splits are tracked exactly;
* depthwise convs pass labels through; group convs and GroupNorm tie the same local index of every
  group together so group structure survives;
* attention (sdpa, or matmul/softmax/matmul) unions everything inside one head of q, k and v, so heads
  are removed whole; GQA's expand/reshape of k/v makes each kv head carry its q heads along;
* an op without a rule, a graph output, or a non-prunable tensor meeting a prunable one *blocks* the
  elements involved (never guessed), with the reason kept for the report.

The union-find classes are the units that pruning removes; classes created by the same set of layers
form a :class:`Group`.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, field
from math import prod

import numpy as np
import torch
import torch.fx as fx

from ..ir.graph_utils import get_attr_tensor, op_name
from ..ir.info import node_info
from .labels import FIXED, Labels, UnionFind, make_labels, source_labels

aten = torch.ops.aten


@dataclass
class Source:
    node: str
    module: str
    op: str
    size: int


@dataclass
class Member:
    """A parameter or buffer slice that follows the elements it is labelled with."""

    target: str  # attribute path
    labels: np.ndarray  # rank of the tensor; tensor's size along labelled dims, 1 elsewhere
    role: str  # "out" (producer rows), "in" (consumer columns), "norm" (scales), "bias", "const"
    node: str
    module: str
    is_param: bool  # a trainable parameter (counts for importance); buffers such as BN statistics don't
    op: str = ""  # op of the reading node, e.g. "aten.batch_norm"
    arg: int = -1  # argument position at which that node reads the tensor


@dataclass
class SplitConstraint:
    """A view split a labelled dim into (outer, inner...): removals must be whole rows or whole columns."""

    array: np.ndarray  # labels moved to shape [rest, outer, inner]
    node: str


@dataclass
class Group:
    """Units coupled by the same layers; ``units`` are union-find roots, each removed as a whole."""

    index: int
    sources: tuple[int, ...]
    units: list[int]
    kind: str  # "heads" | "channels"
    blocked: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    unit_width: int = 1  # channels of the leading source per unit (head size for heads)

    @property
    def prunable(self) -> bool:
        return not self.blocked and len(self.units) > 1


@dataclass
class Analysis:
    gm: fx.GraphModule
    uf: UnionFind = field(default_factory=UnionFind)
    labels: dict[fx.Node, object] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    splits: list[SplitConstraint] = field(default_factory=list)
    pins: list[np.ndarray] = field(default_factory=list)  # element sets of which at least one must stay
    groups: list[Group] = field(default_factory=list)

    # ------------------------------------------------------------------------------ helpers for rules

    def lab(self, arg) -> Labels | None:
        if isinstance(arg, fx.Node):
            value = self.labels.get(arg)
            return value if isinstance(value, Labels) else None
        return None

    @staticmethod
    def shape(arg) -> tuple[int, ...] | None:
        if not isinstance(arg, fx.Node):
            return None
        info = node_info(arg)
        if info is not None and info.spec is not None:
            return info.spec.shape
        val = arg.meta.get("val")
        if isinstance(val, torch.Tensor):
            return tuple(int(s) if isinstance(s, int) else int(s.node.hint or 1) for s in val.shape)
        return None

    def fresh_ids(self, node: fx.Node, size: int) -> np.ndarray:
        """``size`` new elements created by ``node`` (a new source of prunable units)."""
        info = node_info(node)
        self.sources.append(Source(node.name, info.module if info else "", op_name(node.target), size))
        return self.uf.new(size, len(self.sources) - 1)

    def fresh(self, node: fx.Node, size: int, ndim: int, dim: int) -> Labels:
        return source_labels(self.fresh_ids(node, size), ndim, dim)

    def member(self, attr: fx.Node, labels: np.ndarray, role: str, node: fx.Node) -> None:
        t = get_attr_tensor(self.gm, attr)
        if t is None:
            return
        info = node_info(node)
        arg = next((i for i, x in enumerate(node.args) if x is attr), -1)
        self.members.append(Member(attr.target, np.asarray(labels), role, node.name, info.module if info else "",
                                   isinstance(t, torch.nn.Parameter), op_name(node.target), arg))

    def block(self, labels: Labels | np.ndarray | None, reason: str) -> None:
        if labels is None:
            return
        arr = labels.array if isinstance(labels, Labels) else labels
        self.uf.block(arr, reason)

    def block_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            self.block(self.lab(arg), reason)


# ---------------------------------------------------------------------------------------------- rules

RULES: dict = {}


def rule(*targets):
    def deco(fn):
        for t in targets:
            RULES[t] = fn
        return fn

    return deco


def _reason(node: fx.Node, what: str) -> str:
    return f"{what} ({op_name(node.target) if node.op == 'call_function' else node.op} at {node.name})"


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


# --------------------------------------------------------------------------- element-wise coupling


def _align(labels: Labels | None, ndim_in: int, out_ndim: int) -> Labels | None:
    if labels is None:
        return None
    pad = out_ndim - ndim_in
    return Labels(labels.array.reshape((1,) * pad + labels.array.shape), (False,) * pad + labels.tracked)


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
    stacks, constants, pinned = [], [], []
    for op, shp, lab in aligned:
        full_dims = [d for d in dims if shp[d] != 1]
        partial = len(full_dims) != len(dims)
        if lab is not None:
            if partial:
                a.block(lab, _reason(node, "labelled operand broadcast against more channels"))
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
        return None
    base = stacks[0]
    for other in stacks[1:]:
        a.uf.union_pairs(base, other)
        base = np.maximum(base, other)
    out = np.ascontiguousarray(base)
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


@rule(aten.where.self, aten.masked_fill.Tensor, aten.lerp.Scalar, aten.addcmul.default)
def _ternary(a: Analysis, node: fx.Node):
    return couple_elementwise(a, node, [x for x in node.args[:3] if isinstance(x, fx.Node)])


# ---------------------------------------------------------------------------------- producers


def _slice_along(labels: Labels | None, dim: int) -> np.ndarray | None:
    """1-D labels along ``dim``; None if labels vary along other dims too (not a plain channel dim)."""
    if labels is None or not labels.tracked[dim]:
        return None
    arr = labels.array
    for d in range(arr.ndim):
        if d != dim and arr.shape[d] != 1:
            first = arr.take([0], axis=d)
            if not np.array_equal(np.broadcast_to(first, arr.shape), arr):
                return None
            arr = first
    return arr.reshape(-1)


def _consume(a: Analysis, node: fx.Node, x, dim: int, what: str) -> np.ndarray | None:
    """Labels along the channel dim a GEMM/conv consumes; other labelled dims are blocked."""
    lab = a.lab(x)
    if lab is None:
        return None
    chan = _slice_along(lab, dim)
    other_tracked = [d for d in lab.tracked_dims() if d != dim]
    if chan is None or other_tracked:
        a.block(lab, _reason(node, f"{what} input carries labels on non-channel dims"))
        return None
    return chan


def _vec(values: np.ndarray, ndim: int, dim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[dim] = len(values)
    return np.asarray(values).reshape(shape)


def _weighted_op(a: Analysis, node: fx.Node, what: str):
    """(x, weight, bias, weight shape, output shape) of a linear/conv reading a constant weight; None (with its
    inputs blocked) otherwise: a weight computed at run time cannot be sliced."""
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    w_shape, out_shape = a.shape(w), a.shape(node)
    if w_shape is None or out_shape is None or not (isinstance(w, fx.Node) and w.op == "get_attr"):
        a.block_inputs(node, _reason(node, f"{what} with a non-constant weight"))
        return None
    return x, w, b if isinstance(b, fx.Node) and b.op == "get_attr" else None, w_shape, out_shape


@rule(aten.linear.default, torch.ops.slimgraph.linear_act.default)
def _linear(a: Analysis, node: fx.Node):
    parts = _weighted_op(a, node, "linear")
    if parts is None:
        return None
    x, w, b, w_shape, out_shape = parts
    in_ndim = len(a.shape(x))
    chan = _consume(a, node, x, in_ndim - 1, "linear")
    if chan is not None:
        a.member(w, _vec(chan, 2, 1), "in", node)
    out = a.fresh(node, w_shape[0], len(out_shape), len(out_shape) - 1)
    ids = out.array.reshape(-1)
    a.member(w, _vec(ids, 2, 0), "out", node)
    if b is not None:
        a.member(b, ids, "bias", node)
    return out


CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, torch.ops.slimgraph.conv_act.default}
CONV_TRANSPOSES = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}


def _conv_groups(node: fx.Node) -> int:
    if node.target is torch.ops.slimgraph.conv_act.default:
        return int(node.args[6])
    if node.target in CONV_TRANSPOSES:
        return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))
    return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))


def _tie_groups(a: Analysis, chan: np.ndarray, groups: int) -> np.ndarray:
    """Union the same local index of every group; returns the labels of group 0 (one per local index)."""
    per = len(chan) // groups
    grid = chan.reshape(groups, per)
    for k in range(1, groups):
        a.uf.union_pairs(grid[0], grid[k])
    return grid[0]


@rule(*CONVS)
def _conv(a: Analysis, node: fx.Node):
    parts = _weighted_op(a, node, "conv")
    if parts is None:
        return None
    x, w, b, w_shape, out_shape = parts
    groups = _conv_groups(node)
    cout, cin_g = w_shape[0], w_shape[1]
    cin = cin_g * groups
    chan = _consume(a, node, x, 1, "conv")
    wd = len(w_shape)
    if groups == cin == cout and cin_g == 1:
        # depthwise: output channel c reads only input channel c, so labels pass straight through
        if chan is None:
            out = a.fresh(node, cout, len(out_shape), 1)
            ids = out.array.reshape(-1)
        else:
            ids = chan
            out = source_labels(ids, len(out_shape), 1)
        a.member(w, _vec(ids, wd, 0), "out", node)
        if b is not None:
            a.member(b, ids, "bias", node)
        return out
    if chan is not None:
        local = _tie_groups(a, chan, groups) if groups > 1 else chan
        a.member(w, _vec(local, wd, 1), "in", node)
    local_out = a.fresh_ids(node, cout // groups)
    ids = np.tile(local_out, groups)  # output channel o holds element (o mod cout/groups): groups stay equal
    a.member(w, _vec(ids, wd, 0), "out", node)
    if b is not None:
        a.member(b, ids, "bias", node)
    return source_labels(ids, len(out_shape), 1)


@rule(*CONV_TRANSPOSES)
def _conv_transpose(a: Analysis, node: fx.Node):
    parts = _weighted_op(a, node, "transposed conv")
    if parts is None:
        return None
    x, w, b, w_shape, out_shape = parts
    groups = _conv_groups(node)
    cout_g = w_shape[1]
    wd = len(w_shape)
    chan = _consume(a, node, x, 1, "transposed conv")
    if chan is not None:
        if groups > 1:
            _tie_groups(a, chan, groups)
        a.member(w, _vec(chan, wd, 0), "in", node)
    local_out = a.fresh_ids(node, cout_g)
    a.member(w, _vec(local_out, wd, 1), "out", node)
    ids = np.tile(local_out, groups)
    if b is not None:
        a.member(b, ids, "bias", node)
    return source_labels(ids, len(out_shape), 1)


@rule(aten.embedding.default)
def _embedding(a: Analysis, node: fx.Node):
    w, ids_node = node.args[0], node.args[1]
    a.block(a.lab(ids_node), _reason(node, "labels used as embedding indices"))
    out_shape, w_shape = a.shape(node), a.shape(w)
    if out_shape is None or w_shape is None or not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return None
    out = a.fresh(node, w_shape[1], len(out_shape), len(out_shape) - 1)
    a.member(w, _vec(out.array.reshape(-1), 2, 1), "out", node)
    return out


# --------------------------------------------------------------------------------------- norms


@rule(aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
def _batch_norm(a: Analysis, node: fx.Node):
    x = node.args[0]
    lab = a.lab(x)
    chan = _slice_along(lab, 1) if lab is not None else None
    if lab is not None and (chan is None or len(lab.tracked_dims()) > 1):
        a.block(lab, _reason(node, "batch norm input labelled on non-channel dims"))
        return lab
    if chan is not None:
        for i, arg in enumerate(node.args[1:5], start=1):  # weight, bias, running mean, running var
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                a.member(arg, chan, "bias" if i == 2 else "norm", node)
    if node.target is aten._native_batch_norm_legit_no_training.default:
        return (lab, None, None)
    return lab


@rule(aten.layer_norm.default)
def _layer_norm(a: Analysis, node: fx.Node):
    x, normalized = node.args[0], node.args[1]
    lab = a.lab(x)
    if lab is None:
        return None
    k = len(normalized)
    nd = lab.ndim
    norm_dims = list(range(nd - k, nd))
    if any(lab.tracked[d] for d in norm_dims):
        a.uf.mark_approximate(lab.array, _reason(node, "layer norm statistics change when channels go"))
        arr = lab.array
        for d in range(nd - k):
            if arr.shape[d] != 1:
                first = arr.take([0], axis=d)
                if not np.array_equal(np.broadcast_to(first, arr.shape), arr):
                    a.block(lab, _reason(node, "layer norm over labels that vary across rows"))
                    return lab
                arr = first
        norm_labels = np.broadcast_to(arr, arr.shape[: nd - k] + tuple(
            a.shape(x)[d] if lab.tracked[d] else 1 for d in norm_dims)).reshape(
            tuple(a.shape(x)[d] if lab.tracked[d] else 1 for d in norm_dims))
        for i, arg in enumerate(node.args[2:4]):  # weight, bias
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                a.member(arg, norm_labels, "bias" if i == 1 else "norm", node)
    return lab


@rule(aten.group_norm.default)
def _group_norm(a: Analysis, node: fx.Node):
    x, groups = node.args[0], int(node.args[1])
    lab = a.lab(x)
    if lab is None:
        return None
    chan = _slice_along(lab, 1)
    if chan is None or len(lab.tracked_dims()) > 1:
        a.block(lab, _reason(node, "group norm input labelled on non-channel dims"))
        return lab
    _tie_groups(a, chan, groups)
    a.uf.mark_approximate(chan, _reason(node, "group norm statistics change when channels go"))
    for i, arg in enumerate(node.args[2:4]):  # weight, bias
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            a.member(arg, chan, "bias" if i == 1 else "norm", node)
    return lab


# -------------------------------------------------------------------------------- shape ops


def _factor(in_shape, out_shape) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into groups of consecutive dims with equal products (size-1 dims attach freely)."""
    groups, i, j = [], 0, 0
    n, m = len(in_shape), len(out_shape)
    while i < n or j < m:
        gi, gj = [], []
        pi = pj = 1
        if i < n:
            gi.append(i)
            pi *= in_shape[i]
            i += 1
        if j < m:
            gj.append(j)
            pj *= out_shape[j]
            j += 1
        while pi != pj:
            if pi < pj and i < n:
                gi.append(i)
                pi *= in_shape[i]
                i += 1
            elif pj < pi and j < m:
                gj.append(j)
                pj *= out_shape[j]
                j += 1
            else:
                return None
        # absorb trailing size-1 dims so they do not open empty groups
        while i < n and in_shape[i] == 1 and (j >= m or out_shape[j] != 1):
            gi.append(i)
            i += 1
        while j < m and out_shape[j] == 1 and (i >= n or in_shape[i] != 1):
            gj.append(j)
            j += 1
        groups.append((gi, gj))
    return groups


def reshape_labels(a: Analysis, node: fx.Node, lab: Labels, in_shape, out_shape) -> Labels | None:
    groups = _factor(list(in_shape), list(out_shape))
    if groups is None:
        a.block(lab, _reason(node, "reshape that cannot be factored"))
        return None
    tracked_out = [False] * len(out_shape)
    mat_dims = []
    for gi, gj in groups:
        if any(lab.tracked[d] for d in gi):
            mat_dims.extend(gi)
            nontrivial_in = [d for d in gi if in_shape[d] != 1]
            nontrivial_out = [d for d in gj if out_shape[d] != 1]
            if len(nontrivial_in) > 1 and len(nontrivial_out) > 1:
                a.block(lab, _reason(node, "reshape regroups labelled dims"))
                return None
            for d in gj:
                tracked_out[d] = out_shape[d] != 1 or len(gj) == 1
    arr = np.ascontiguousarray(lab.materialize(in_shape, mat_dims))
    target = []
    for gi, gj in groups:
        if any(lab.tracked[d] for d in gi):
            target.extend(out_shape[d] for d in gj)
        else:
            target.extend(1 for _ in gj)
    out = arr.reshape(target)
    for gi, gj in groups:  # a labelled dim split into several: record the row/column constraint
        if any(lab.tracked[d] for d in gi):
            split_dims = [d for d in gj if out_shape[d] != 1]
            if len(split_dims) > 1 and len([d for d in gi if in_shape[d] != 1]) == 1:
                outer, inner = split_dims[0], split_dims[1:]
                moved = np.moveaxis(out, [outer, *inner], list(range(out.ndim - 1 - len(inner), out.ndim)))
                flat = moved.reshape(-1, out_shape[outer], prod(out_shape[d] for d in inner))
                a.splits.append(SplitConstraint(flat, node.name))
    return make_labels(out, tracked_out)


@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
      aten.unflatten.int, aten.view_as.default, aten.reshape_as.default)
def _view(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    return reshape_labels(a, node, lab, a.shape(node.args[0]), a.shape(node))


@rule(aten.unsqueeze.default)
def _unsqueeze(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    dim = node.args[1] % (lab.ndim + 1)
    return Labels(np.expand_dims(lab.array, dim), lab.tracked[:dim] + (False,) + lab.tracked[dim:])


@rule(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    shape = a.shape(node.args[0])
    if node.target is aten.squeeze.default:
        dims = [d for d, s in enumerate(shape) if s == 1]
    else:
        raw = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        dims = [d % len(shape) for d in raw if shape[d % len(shape)] == 1]
    if any(lab.tracked[d] for d in dims):
        a.block(lab, _reason(node, "squeezes a labelled dim"))
        return None
    keep = [d for d in range(lab.ndim) if d not in dims]
    return make_labels(lab.array.reshape([lab.array.shape[d] for d in keep]), [lab.tracked[d] for d in keep])


@rule(aten.transpose.int)
def _transpose(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    d0, d1 = node.args[1] % lab.ndim, node.args[2] % lab.ndim
    perm = list(range(lab.ndim))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return Labels(lab.array.transpose(perm), tuple(lab.tracked[p] for p in perm))


@rule(aten.permute.default)
def _permute(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    perm = [p % lab.ndim for p in node.args[1]]
    return Labels(lab.array.transpose(perm), tuple(lab.tracked[p] for p in perm))


@rule(aten.t.default)
def _t(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None or lab.ndim < 2:
        return lab
    return Labels(lab.array.T, tuple(reversed(lab.tracked)))


@rule(aten.expand.default)
def _expand(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    out_shape = a.shape(node)
    pad = len(out_shape) - lab.ndim
    return Labels(lab.array.reshape((1,) * pad + lab.array.shape), (False,) * pad + lab.tracked)


@rule(aten.cat.default)
def _cat(a: Analysis, node: fx.Node):
    tensors = node.args[0]
    out_shape = a.shape(node)
    nd = len(out_shape)
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % nd
    labs = [_align(a.lab(t), len(a.shape(t)), nd) for t in tensors]
    if all(lab is None for lab in labs):
        return None
    tracked = [any(lab is not None and lab.tracked[d] for lab in labs) for d in range(nd)]
    dims = [d for d in range(nd) if tracked[d]]
    pieces, constants = [], []
    for t, lab in zip(tensors, labs):
        shp = a.shape(t)
        target = [shp[d] if tracked[d] else 1 for d in range(nd)]
        if lab is not None:
            pieces.append(np.broadcast_to(lab.materialize(shp, dims), target))
            continue
        behind = _param_behind(a, t) if not tracked[dim] else None
        if behind is not None:  # e.g. ViT's class token: a parameter sliced with the channels it sits beside
            attr, mapping = behind
            constants.append(((attr, [None] * (nd - len(mapping)) + mapping), [d for d in dims if shp[d] != 1]))
        else:
            pieces.append(np.full(target, FIXED, dtype=np.int64))
    if tracked[dim]:  # labelled along the concat dim: the operands' positions are laid end to end
        out = np.concatenate(pieces, axis=dim)
    else:  # one position per operand along the concat dim: operands must agree on the labelled dims
        out = pieces[0]
        for p in pieces[1:]:
            a.uf.union_pairs(out, p)
            a.uf.block(out[(out >= 0) & (p < 0)], _reason(node, "concatenated with a non-prunable tensor"))
            a.uf.block(p[(p >= 0) & (out < 0)], _reason(node, "concatenated with a non-prunable tensor"))
            out = np.maximum(out, p)
    out = np.ascontiguousarray(out)
    for (attr, mapping), full_dims in constants:
        _const_member(a, attr, mapping, out, full_dims, node)
    return make_labels(out, tracked)


def _split_sizes(node: fx.Node, size: int) -> list[int]:
    if node.target is aten.split.Tensor:
        step = int(node.args[1])
        return [min(step, size - i) for i in range(0, size, step)]
    if node.target is aten.chunk.default:
        n = int(node.args[1])
        step = -(-size // n)
        return [min(step, size - i) for i in range(0, size, step)]
    return [int(s) for s in node.args[1]]


@rule(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
def _split(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    shape = a.shape(node.args[0])
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(shape)
    sizes = _split_sizes(node, shape[dim])
    if lab is None:
        return tuple(None for _ in sizes)
    if not lab.tracked[dim]:
        return tuple(lab for _ in sizes)
    out, start = [], 0
    for s in sizes:
        out.append(Labels(lab.array.take(range(start, start + s), axis=dim), lab.tracked))
        start += s
    return tuple(out)


@rule(aten.unbind.int)
def _unbind(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    dim = (node.args[1] if len(node.args) > 1 else 0) % lab.ndim
    if lab.tracked[dim]:
        a.block(lab, _reason(node, "unbinds a labelled dim"))
        return None
    n = a.shape(node.args[0])[dim]
    keep = [d for d in range(lab.ndim) if d != dim]
    one = make_labels(lab.array.take(0, axis=dim), [lab.tracked[d] for d in keep])
    return tuple(one for _ in range(n))


@rule(operator.getitem)
def _getitem(a: Analysis, node: fx.Node):
    src = a.labels.get(node.args[0])
    if isinstance(src, (tuple, list)):
        idx = node.args[1]
        return src[idx] if isinstance(idx, int) and idx < len(src) else None
    return None


@rule(aten.slice.Tensor)
def _slice(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    shape = a.shape(node.args[0])
    dim = (node.args[1] if len(node.args) > 1 else 0) % lab.ndim
    if not lab.tracked[dim]:
        return lab
    start = node.args[2] if len(node.args) > 2 else 0
    end = node.args[3] if len(node.args) > 3 else shape[dim]
    step = node.args[4] if len(node.args) > 4 else 1
    if not all(isinstance(v, int) for v in (start, end, step)) or step != 1:
        a.block(lab, _reason(node, "strided or symbolic slice of a labelled dim"))
        return None
    start, end, _ = slice(start, end).indices(shape[dim])
    return Labels(lab.array.take(range(start, end), axis=dim), lab.tracked)


@rule(aten.select.int)
def _select(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    dim = node.args[1] % lab.ndim
    if lab.tracked[dim]:
        a.block(lab, _reason(node, "selects one index of a labelled dim"))
        return None
    keep = [d for d in range(lab.ndim) if d != dim]
    return make_labels(lab.array.take(0, axis=dim), [lab.tracked[d] for d in keep])


# ------------------------------------------------------------------------------------ reductions

_EXACT_REDUCTIONS = {aten.sum.dim_IntList, aten.sum.default}
_REDUCTIONS = {aten.mean.dim, aten.mean.default, aten.sum.dim_IntList, aten.sum.default, aten.amax.default,
               aten.amin.default, aten.var.correction, aten.std.correction, aten.var.dim, aten.std.dim}


@rule(*_REDUCTIONS)
def _reduce(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    nd = lab.ndim
    raw = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.target in (aten.mean.default, aten.sum.default) or raw is None or raw == []:
        dims = list(range(nd))
    else:
        dims = [d % nd for d in (raw if isinstance(raw, (list, tuple)) else [raw])]
    keepdim = bool(node.args[2]) if len(node.args) > 2 and isinstance(node.args[2], bool) else \
        bool(node.kwargs.get("keepdim", False))
    reduced_tracked = [d for d in dims if lab.tracked[d]]
    if reduced_tracked and node.target not in _EXACT_REDUCTIONS:
        a.uf.mark_approximate(lab.array, _reason(node, "reduction over channels changes when channels go"))
    arr = lab.array
    for d in dims:
        arr = arr.take([0], axis=d) if lab.tracked[d] else arr
    tracked = [t and d not in dims for d, t in enumerate(lab.tracked)]
    if not keepdim:
        keep = [d for d in range(nd) if d not in dims]
        arr = arr.reshape([arr.shape[d] for d in keep])
        tracked = [tracked[d] for d in keep]
    if reduced_tracked:
        # labels along reduced dims were consumed; labels that remain must not depend on them
        return make_labels(arr, tracked) if any(tracked) and _uniform_over(lab, reduced_tracked) else (
            _block_and_none(a, lab, node) if any(tracked) else None)
    return make_labels(arr, tracked)


def _uniform_over(lab: Labels, dims: list[int]) -> bool:
    arr = lab.array
    for d in dims:
        first = arr.take([0], axis=d)
        if not np.array_equal(np.broadcast_to(first, arr.shape), arr):
            return False
    return True


def _block_and_none(a: Analysis, lab: Labels, node: fx.Node):
    a.block(lab, _reason(node, "reduction mixes labelled dims"))
    return None


@rule(aten._softmax.default, aten.softmax.int, aten._log_softmax.default, aten.log_softmax.int)
def _softmax(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    dim = node.args[1] % lab.ndim
    if lab.tracked[dim]:
        a.block(lab, _reason(node, "softmax over channels (a removed zero still counts)"))
        return None
    return lab


_SPATIAL = {
    aten.max_pool1d.default: 1, aten.max_pool2d.default: 2, aten.max_pool3d.default: 3,
    aten.avg_pool1d.default: 1, aten.avg_pool2d.default: 2, aten.avg_pool3d.default: 3,
    aten.adaptive_avg_pool1d.default: 1, aten.adaptive_avg_pool2d.default: 2, aten.adaptive_avg_pool3d.default: 3,
    aten.adaptive_max_pool2d.default: 2, aten.upsample_nearest2d.vec: 2, aten.upsample_bilinear2d.vec: 2,
    aten.upsample_nearest2d.default: 2, aten.upsample_bilinear2d.default: 2, aten.pixel_shuffle.default: 0,
    aten.max_pool2d_with_indices.default: 2,
}


@rule(*_SPATIAL)
def _spatial(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    k = _SPATIAL[node.target]
    if k == 0 or any(lab.tracked[-k:]):
        a.block(lab, _reason(node, "spatial op over labelled dims"))
        return None
    if node.target is aten.max_pool2d_with_indices.default:
        return (lab, None)
    return lab


@rule(aten.pad.default, aten.constant_pad_nd.default)
def _pad(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    pads = node.args[1]
    padded = [lab.ndim - 1 - i // 2 for i, p in enumerate(pads) if p != 0]
    if any(lab.tracked[d] for d in padded):
        a.block(lab, _reason(node, "pads a labelled dim"))
        return None
    return lab


# ------------------------------------------------------------------------------------- attention


def _union_batch_slices(a: Analysis, node: fx.Node, tensors: list[tuple[Labels | None, int]],
                        nbatch: int) -> None:
    """For every index of the labelled batch dims (heads), union all labels inside that slice of every
    operand: a head goes as a whole, with its q, k and v features (GQA: kv head h covers its q heads)."""
    batch_shapes = []
    for lab, _ in tensors:
        if lab is not None:
            batch_shapes.append(lab.array.shape[:nbatch])
    tracked_batch = [d for d in range(nbatch) if any(lab is not None and lab.tracked[d] for lab, _ in tensors)]
    if not tracked_batch:
        return
    sizes = {}
    for lab, _ in tensors:
        if lab is not None:
            for d in tracked_batch:
                if lab.tracked[d]:
                    sizes[d] = max(sizes.get(d, 1), lab.array.shape[d])
    grid = np.zeros([sizes.get(d, 1) if d in tracked_batch else 1 for d in range(nbatch)], dtype=np.int64)
    for index in np.ndindex(*grid.shape):
        ids = []
        for lab, _ in tensors:
            if lab is None:
                continue
            sl = []
            for d in range(nbatch):
                n = lab.array.shape[d]
                if n == 1:
                    sl.append(0)
                elif n == grid.shape[d]:
                    sl.append(index[d])
                else:  # fewer kv heads than q heads: q head h reads kv head h // (Hq / Hkv)
                    sl.append(index[d] * n // grid.shape[d])
            ids.append(lab.array[tuple(sl)].ravel())
        ids = np.concatenate(ids)
        real = ids[ids >= 0]
        if len(real):
            a.uf.union_all(real)
            a.uf.mark_heads(real)
            if (ids < 0).any():
                a.uf.block(real, _reason(node, "attention head mixes prunable and fixed features"))


@rule(aten.scaled_dot_product_attention.default)
def _sdpa(a: Analysis, node: fx.Node):
    q, k, v = node.args[:3]
    lq, lk, lv = a.lab(q), a.lab(k), a.lab(v)
    if lq is None and lk is None and lv is None:
        return None
    nd = len(a.shape(q))
    nbatch = nd - 2
    heads_tracked = any(lab is not None and any(lab.tracked[:nbatch]) for lab in (lq, lk, lv))
    if not heads_tracked:
        scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
        if scale is None:
            for lab in (lq, lk):
                a.block(lab, _reason(node, "sdpa's default scale depends on the head size"))
        a.uf.union_pairs(_last(lq), _last(lk))
        return lv
    for lab in (lq, lk, lv):
        if lab is not None and any(lab.tracked[nbatch:nbatch + 1]):
            a.block(lab, _reason(node, "attention labelled along the sequence"))
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    lm = a.lab(mask)
    mask_shape = a.shape(mask)
    if mask_shape is not None:
        per_head = [d for d in range(min(nbatch, len(mask_shape)))
                    if mask_shape[len(mask_shape) - nd + d] != 1 and any(
                        lab is not None and lab.tracked[d] for lab in (lq, lk, lv))] if len(mask_shape) == nd else []
        if per_head and lm is None:  # e.g. Swin's relative position bias: one mask per head, not prunable
            for lab in (lq, lk, lv):
                a.block(lab, _reason(node, "attention mask differs per head"))
    _union_batch_slices(a, node, [(lq, 0), (lk, 1), (lv, 2), (_align(lm, len(mask_shape), nd) if lm is not None
                                                              else None, 3)], nbatch)
    if lv is None:
        return None
    # output [..., L, Ev]: heads from v (q heads where GQA repeats kv heads)
    src = lq if lq is not None and lv.array.shape[:nbatch] != lq.array.shape[:nbatch] else lv
    arr = np.broadcast_to(src.array[..., :1, :1], src.array.shape[:nbatch] + (1, 1)).copy()
    tracked = tuple(src.tracked[:nbatch]) + (False, False)
    return make_labels(arr, tracked)


def _last(lab: Labels | None):
    if lab is None or not lab.tracked[-1]:
        return np.zeros(0, dtype=np.int64)
    return lab.array.take(0, axis=-2) if lab.array.ndim > 1 and lab.array.shape[-2] == 1 else lab.array


@rule(aten.matmul.default, aten.bmm.default)
def _matmul(a: Analysis, node: fx.Node):
    x, y = node.args[:2]
    lx, ly = a.lab(x), a.lab(y)
    if lx is None and ly is None:
        return None
    sx, sy, so = a.shape(x), a.shape(y), a.shape(node)
    if len(sx) < 2 or len(sy) < 2:
        a.block_inputs(node, _reason(node, "matmul with a vector operand"))
        return None
    nd = len(so)
    lx, ly = _align(lx, len(sx), nd), _align(ly, len(sy), nd)
    nbatch = nd - 2
    batch_tracked = any(lab is not None and any(lab.tracked[:nbatch]) for lab in (lx, ly))
    if batch_tracked:
        _union_batch_slices(a, node, [(lx, 0), (ly, 1)], nbatch)
    else:  # contraction over a labelled dim: x[..., k] pairs with y[..., k, :]
        kx = lx.array if lx is not None and lx.tracked[-1] else None
        ky = ly.array if ly is not None and ly.tracked[-2] else None
        if (kx is None) != (ky is None):
            a.block(lx if kx is not None else ly, _reason(node, "matmul contracts labels with fixed features"))
        elif kx is not None:
            a.uf.union_pairs(kx.reshape(-1, kx.shape[-1])[0], ky.reshape(-1, ky.shape[-2], ky.shape[-1])[0, :, 0])
    if lx is not None and lx.tracked[-2]:
        a.block(lx, _reason(node, "matmul rows labelled"))
    # output [..., M, N]: batch (head) labels from the operand with the most heads, N labels from y
    tracked = [any(lab is not None and lab.tracked[d] for lab in (lx, ly)) for d in range(nbatch)]
    tracked += [False, ly is not None and ly.tracked[-1]]
    if not any(tracked):
        return None
    candidates = [lab for lab in (ly, lx) if lab is not None]
    src = max(candidates, key=lambda lab: prod(lab.array.shape[:nbatch]))
    head = src.array[..., :1, :1]
    if tracked[-1]:
        n_labels = ly.array[..., :1, :]
        arr = n_labels if src is ly else np.broadcast_to(head, head.shape[:-1] + (n_labels.shape[-1],))
    else:
        arr = head
    batch_shape = tuple(np.broadcast_shapes(*(lab.array.shape[:nbatch] for lab in candidates)))
    arr = np.broadcast_to(arr, batch_shape + arr.shape[nbatch:])
    return make_labels(np.ascontiguousarray(arr), tracked)


# ------------------------------------------------------------------------------- non-tensor ops

_SCALAR_RESULTS = {aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, aten._local_scalar_dense.default,
                   aten.item.default}


@rule(*_SCALAR_RESULTS)
def _scalar(a: Analysis, node: fx.Node):
    if node.target in (aten._local_scalar_dense.default, aten.item.default):
        a.block(a.lab(node.args[0]), _reason(node, "reads a tensor value"))
    return None


# ------------------------------------------------------------------------------------ the driver


def analyze(gm: fx.GraphModule) -> Analysis:
    """Run the dependency analysis over ``gm`` (metadata must be propagated)."""
    a = Analysis(gm)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            a.labels[node] = None
        elif node.op == "output":
            for arg in node.all_input_nodes:
                lab = a.labels.get(arg)
                for item in (lab if isinstance(lab, (tuple, list)) else [lab]):
                    if isinstance(item, Labels):
                        a.block(item, "feeds the model output (output shapes never change)")
        elif node.op == "call_function":
            fn = RULES.get(node.target)
            if fn is None:
                has_labels = any(a.lab(i) is not None for i in node.all_input_nodes)
                if has_labels:
                    a.block_inputs(node, _reason(node, f"no pruning rule for {op_name(node.target)}"))
                a.labels[node] = None
            else:
                a.labels[node] = fn(a, node)
        else:
            a.block_inputs(node, _reason(node, f"{node.op} nodes are not analysed"))
            a.labels[node] = None
    _resolve_splits(a)
    a.groups = _form_groups(a)
    return a


def _resolve_splits(a: Analysis) -> None:
    """Make every split dim removable as whole rows (e.g. heads) or whole columns (e.g. shuffle groups)."""
    pending = list(a.splits)
    for _ in range(4):
        still = []
        for c in pending:
            roots = a.uf.find_all(c.array)
            rows_ok = _uniform(roots, axis=2)
            cols_ok = _uniform(roots, axis=1)
            if rows_ok or cols_ok:
                continue
            still.append(c)
        if not still:
            return
        c = still[0]
        rows_classes = c.array.shape[1]
        cols_classes = c.array.shape[2]
        if any(int(r) in a.uf.heads for r in np.unique(a.uf.find_all(c.array)) if r >= 0) or \
                rows_classes > cols_classes:
            for k in range(c.array.shape[0]):
                for i in range(c.array.shape[1]):
                    a.uf.union_all(c.array[k, i, :])
        else:
            for k in range(c.array.shape[0]):
                for j in range(c.array.shape[2]):
                    a.uf.union_all(c.array[k, :, j])
        pending = still


def _uniform(roots: np.ndarray, axis: int) -> bool:
    masked = np.where(roots < 0, -1, roots)
    first = masked.take([0], axis=axis)
    return bool(np.all((masked == first) | (masked < 0)))


def _form_groups(a: Analysis) -> list[Group]:
    n = len(a.uf.parent)
    if n == 0:
        return []
    roots = a.uf.find_all(np.arange(n))
    # the distinct (root, source) pairs, vectorized: BERT-base has ~10^5 elements but few multi-source roots
    n_src = int(a.uf.source.max()) + 1
    pairs = np.unique(roots * n_src + a.uf.source[:n])
    pair_root, pair_src = pairs // n_src, pairs % n_src
    uniq_roots, first, counts = np.unique(pair_root, return_index=True, return_counts=True)
    by_sources: dict[tuple[int, ...], list[int]] = defaultdict(list)
    single = counts == 1
    for root, src in zip(uniq_roots[single].tolist(), pair_src[first[single]].tolist()):
        by_sources[(src,)].append(root)
    for root, start, count in zip(uniq_roots[~single].tolist(), first[~single].tolist(), counts[~single].tolist()):
        by_sources[tuple(pair_src[start:start + count].tolist())].append(root)  # sorted by np.unique
    groups = []
    for i, (srcs, units) in enumerate(sorted(by_sources.items(), key=lambda kv: kv[0])):
        blocked = sorted({r for u in units for r in a.uf.blocked.get(u, [])})
        approx = sorted({r for u in units for r in a.uf.approximate.get(u, [])})
        kind = "heads" if any(u in a.uf.heads for u in units) else "channels"
        width = int(max(1, round(a.sources[srcs[0]].size / max(1, len(units)))))
        groups.append(Group(i, srcs, sorted(units), kind, blocked, approx, width))
    return groups
