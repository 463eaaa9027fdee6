"""Rules for layers that create or consume channels (linear, conv, embedding) and for norms."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..labels import Labels, source_labels
from .model import Analysis, _reason, rule

aten = torch.ops.aten


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

