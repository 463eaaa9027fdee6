"""Rules for shape ops: views, permutes, expand, concat, split, slice, select: labels move with the data."""

from __future__ import annotations

import operator
from math import prod

import numpy as np
import torch
import torch.fx as fx

from ..labels import FIXED, Labels, make_labels
from .elementwise import _const_member, _param_behind
from .model import Analysis, SplitConstraint, _align, _reason, rule

aten = torch.ops.aten


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
    for d in range(out.ndim):
        # a dim whose labels are equal all along it (a batch merged into [B*H] and split back out: DeBERTa's
        # [-1, H, S, S] view) holds no unit of its own: removing a unit never shortens it, so it is untracked,
        # as the batch was before the merge. Not when it is the only labelled dim: then each position is a unit.
        if tracked_out[d] and out.shape[d] > 1 and sum(tracked_out) > 1 and (out == out.take([0], axis=d)).all():
            out = out.take([0], axis=d)
            tracked_out[d] = False
    return make_labels(out, tracked_out)


@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
      aten.unflatten.int, aten.view_as.default, aten.reshape_as.default)
def _view(a: Analysis, node: fx.Node):
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    out = reshape_labels(a, node, lab, a.shape(node.args[0]), a.shape(node))
    if out is not None and node.target in _SIZED_VIEWS:
        # the rewrite changes literal sizes of labelled dims; a size computed in the graph (MobileViT's
        # ``batch * 48`` for a [B * C] dim) keeps the old unit count, so such a dim cannot lose units. A plain
        # sym_size of a tensor follows that tensor's new size by itself.
        for d, size in enumerate(node.args[1]):
            if out.tracked[d] and isinstance(size, fx.Node) and size.target is not aten.sym_size.int:
                a.block(out, _reason(node, "reshape computes a labelled dim's size in the graph"))
                return None
    return out


_SIZED_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


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


@rule(aten.repeat.default)
def _repeat(a: Analysis, node: fx.Node):
    # repeat(x, reps) tiles x: every copy of a unit's position holds the unit, so a removed unit leaves each
    # copy (the output keeps its reps, only the tiled dim shrinks); new leading dims carry no labels
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    reps = list(node.args[1])
    pad = len(reps) - lab.ndim
    arr = lab.array.reshape((1,) * pad + lab.array.shape)
    tracked = (False,) * pad + tuple(lab.tracked)
    in_shape, out_shape = (1,) * pad + tuple(a.shape(node.args[0])), a.shape(node)
    counts = []
    for d, (t, r) in enumerate(zip(tracked, reps)):
        if not t:
            counts.append(1)
        elif isinstance(r, int):
            counts.append(r)
        else:
            # a symbolic count (DeBERTa tiles its per-head position keys once per batch row: [H, ..] -> [B*H, ..]):
            # every copy holds the whole labelled dim, so a removed unit leaves each copy whatever the count; the
            # labels follow the example's count, as a merged [B*H] dim's labels do after a view
            if out_shape is None or in_shape[d] == 0 or out_shape[d] % in_shape[d]:
                a.block(lab, _reason(node, "repeats a labelled dim a symbolic number of times"))
                return None
            counts.append(out_shape[d] // in_shape[d])
    return Labels(np.tile(arr, counts), tracked)


@rule(aten.cat.default)
def _cat(a: Analysis, node: fx.Node):
    out_shape = a.shape(node)
    nd = len(out_shape)
    # torch.cat skips 1-D empty operands of any other rank (transformers 5.24's caches start as torch.tensor([])):
    # they hold no positions, so they take no part in the labels either
    tensors = [t for t in node.args[0] if not _legacy_empty(a.shape(t), nd)]
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


def _legacy_empty(shape, nd: int) -> bool:
    return shape is not None and len(shape) == 1 and shape[0] == 0 and nd != 1


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



@rule(aten.gather.default)
def _gather(a: Analysis, node: fx.Node):
    # gather(x, dim, index): out[.., i, ..] = x[.., index[.., i, ..], ..] along ``dim`` only. Every other dim keeps
    # its positions, so its labels pass through, provided the index is the same for every unit there (DeBERTa's
    # relative-position index, expanded from size 1 over batch * heads). The rewrite slices that index to the
    # input's new size (prune/rewrite.py); gathering along a labelled dim, or an index that varies along one, blocks.
    lab = a.lab(node.args[0])
    index = node.args[2] if len(node.args) > 2 else node.kwargs.get("index")
    if lab is None:
        if a.lab(index) is not None:
            a.block(a.lab(index), _reason(node, "gather index carries labels"))
        return None
    dim = node.args[1] % lab.ndim
    if lab.tracked[dim] or a.lab(index) is not None:
        a.block(lab, _reason(node, "gathers along a labelled dim"))
        a.block(a.lab(index), _reason(node, "gather index carries labels"))
        return None
    in_shape, out_shape = a.shape(node.args[0]), a.shape(node)
    for d in range(lab.ndim):
        if lab.tracked[d] and (out_shape[d] != in_shape[d] or not index_broadcast_along(index, d)):
            a.block(lab, _reason(node, "gather index differs along a labelled dim"))
            return None
    return lab


def index_broadcast_along(index, dim: int) -> bool:
    """``index`` is an expand of a tensor of size 1 at ``dim``: every position along ``dim`` holds the same values."""
    if not isinstance(index, fx.Node) or index.op != "call_function" or index.target is not aten.expand.default:
        return False
    src = index.args[0]
    shape = Analysis.shape(src)
    if shape is None:
        return False
    pad = len(index.args[1]) - len(shape)
    return dim >= pad and shape[dim - pad] == 1
