"""Physically remove the chosen units: slice parameters and buffers, rewrite shape constants.

    linear(x, W[3072, 768]) -> gelu -> linear(., W2[768, 3072])
        =>  linear(x, W[1536, 768]) -> gelu -> linear(., W2[768, 1536])
    view(q, [B, S, 12, 64]) ... reshape(o, [B, S, 768])
        =>  view(q, [B, S, 9, 64]) ... reshape(o, [B, S, 576])

Every member tensor is sliced along its labelled dims (an index goes when every unit it carries goes);
views, reshapes, expands, splits, slices, LayerNorm shapes and depthwise ``groups`` get their new sizes
from the same labels, then shapes are propagated again through the whole graph, which also checks that
every rewritten size is consistent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..ir.graph_utils import _getattr_path, set_attr_tensor
from ..ir.info import node_info
from ..ir.propagate import annotate, propagate
from .analysis import CONVS, Analysis, Labels
from .analysis.recurrent import ZEROS
from .labels import FIXED

aten = torch.ops.aten


def removed_mask(a: Analysis, labels: np.ndarray, removed: np.ndarray) -> np.ndarray:
    roots = a.uf.find_all(labels)
    return np.isin(roots, removed) & (roots != FIXED)


def keep_indices(a: Analysis, labels: np.ndarray, dim: int, removed: np.ndarray) -> np.ndarray:
    """Indices kept along ``dim``: an index goes only when every position of its slice goes."""
    mask = removed_mask(a, labels, removed)
    other = tuple(d for d in range(mask.ndim) if d != dim)
    all_removed = mask.all(axis=other) if other else mask
    return np.nonzero(~all_removed)[0]


def stray_removals(mask: np.ndarray) -> np.ndarray:
    """Removed positions not covered by whole removed slices: physically slicing the tensor along its dims
    can only drop products of per-dim index sets (whole heads; not half a head's features)."""
    covered = np.zeros(mask.shape, dtype=bool)
    for d in range(mask.ndim):
        if mask.shape[d] == 1:
            continue
        other = tuple(o for o in range(mask.ndim) if o != d)
        covered |= mask.all(axis=other, keepdims=True) if other else mask
    if all(s == 1 for s in mask.shape):
        covered |= mask
    return mask & ~covered


def inconsistent_roots(a: Analysis, removed: np.ndarray) -> set[int]:
    """Units whose removal would cut a tensor slice in part (e.g. half a head through a view), or remove
    every unit of a slice that a non-prunable tensor pins."""
    bad: set[int] = set()
    for pin in a.pins:
        roots = np.unique(a.uf.find_all(pin))
        if np.isin(roots, removed).all():
            bad.update(int(r) for r in roots)
    arrays = [m.labels for m in a.members]
    for value in a.labels.values():
        for lab in (value if isinstance(value, tuple) else (value,)):
            if isinstance(lab, Labels):
                arrays.append(lab.array)
    for arr in arrays:
        mask = removed_mask(a, arr, removed)
        if not mask.any():
            continue
        stray = stray_removals(mask)
        if stray.any():
            bad.update(int(r) for r in np.unique(a.uf.find_all(arr)[stray]))
    return bad


def kept_size(a: Analysis, lab: Labels | None, dim: int, size: int, removed: np.ndarray) -> int:
    if lab is None or not lab.tracked[dim]:
        return size
    return len(keep_indices(a, lab.array, dim, removed))


def apply(a: Analysis, removed: np.ndarray) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Rewrite ``a.gm`` in place; returns attribute -> (old shape, new shape) for sliced tensors."""
    gm = a.gm
    changed: dict[str, tuple] = {}
    per_target: dict[str, dict[int, np.ndarray]] = {}
    for m in a.members:
        for dim in range(m.labels.ndim):
            if m.labels.shape[dim] == 1:
                continue
            keep = keep_indices(a, m.labels, dim, removed)
            if len(keep) < m.labels.shape[dim]:
                per_target.setdefault(m.target, {})[dim] = keep
    for target, dims in per_target.items():
        t = _getattr_path(gm, target)
        new = t.detach()
        for dim, keep in sorted(dims.items()):
            new = new.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=new.device))
        set_attr_tensor(gm, target, new.contiguous())
        changed[target] = (tuple(t.shape), tuple(new.shape))
    _rewrite_shape_args(a, removed)
    # Only values that carry removed units change shape (plus the sliced weights); every other node keeps its
    # fake value. Re-propagating just those is what keeps pruning BERT-base within a second.
    dirty: set[fx.Node] = set()
    for node in gm.graph.nodes:
        labels = a.labels.get(node)
        unlabelled = labels is None or (isinstance(labels, tuple) and not any(isinstance(x, Labels) for x in labels))
        if (node.op == "get_attr" and node.target in changed or _loses_units(a, labels, removed)
                or unlabelled and any(i in dirty for i in node.all_input_nodes)):  # e.g. views of a sliced constant
            dirty.add(node)
            node.meta.pop("val", None)
            node.meta.pop("tensor_meta", None)
    propagate(gm, only_missing=True, before_node=_fix_expand)
    annotate(gm)
    gm.recompile()
    return changed


def _loses_units(a: Analysis, value, removed: np.ndarray) -> bool:
    for lab in value if isinstance(value, tuple) else (value,):
        if isinstance(lab, Labels) and removed_mask(a, lab.array, removed).any():
            return True
    return False


def _rewrite_shape_args(a: Analysis, removed: np.ndarray) -> None:
    for node in a.gm.graph.nodes:
        if node.op != "call_function":
            continue
        t = node.target
        out = a.labels.get(node)
        inp = a.lab(node.args[0]) if node.args else None
        if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default) and isinstance(out, Labels):
            shape = list(node.args[1])
            sizes = a.shape(node)
            for d, s in enumerate(shape):
                if isinstance(s, int) and s != -1:
                    shape[d] = kept_size(a, out, d, sizes[d], removed)
            node.args = (node.args[0], shape, *node.args[2:])
        elif t is aten.unflatten.int and isinstance(out, Labels):
            dim = node.args[1] % len(a.shape(node.args[0]))
            sizes = [kept_size(a, out, dim + i, s, removed) if s != -1 else -1 for i, s in enumerate(node.args[2])]
            node.args = (node.args[0], node.args[1], sizes)
        elif t in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default) and inp is not None:
            shape = a.shape(node.args[0])
            dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(shape)
            if inp.tracked[dim]:
                from .analysis import _split_sizes

                sizes, start = [], 0
                for s in _split_sizes(node, shape[dim]):
                    piece = Labels(inp.array.take(range(start, start + s), axis=dim), inp.tracked)
                    sizes.append(kept_size(a, piece, dim, s, removed))
                    start += s
                node.target = aten.split_with_sizes.default
                node.args = (node.args[0], sizes, dim)
                node.kwargs = {}
        elif t is aten.slice.Tensor and inp is not None:
            shape = a.shape(node.args[0])
            dim = (node.args[1] if len(node.args) > 1 else 0) % len(shape)
            if inp.tracked[dim]:
                start = node.args[2] if len(node.args) > 2 else 0
                end = node.args[3] if len(node.args) > 3 else shape[dim]
                start, end, _ = slice(start, end).indices(shape[dim])
                keep = keep_indices(a, inp.array, dim, removed)
                new_start = int(np.searchsorted(keep, start))
                new_end = int(np.searchsorted(keep, end))
                node.args = (node.args[0], dim, new_start, new_end, *node.args[4:])
        elif t is aten.gather.default and isinstance(out, Labels) and _loses_units(a, out, removed):
            _slice_gather_index(a, node, out)
        elif t in ZEROS and isinstance(out, Labels):  # an RNN's zero initial state: its width follows the units
            pos = ZEROS[t]
            sizes = [kept_size(a, out, d, s, removed) if isinstance(s, int) else s
                     for d, s in enumerate(node.args[pos])]
            node.args = (*node.args[:pos], sizes, *node.args[pos + 1:])
        elif t is aten.layer_norm.default and inp is not None:
            shape = a.shape(node.args[0])
            k = len(node.args[1])
            new = [kept_size(a, inp, len(shape) - k + i, s, removed) for i, s in enumerate(node.args[1])]
            node.args = (node.args[0], new, *node.args[2:])
        elif t in CONVS and inp is not None:
            groups_index = 6
            groups = node.args[groups_index] if len(node.args) > groups_index else 1
            cin = a.shape(node.args[0])[1]
            w_shape = a.shape(node.args[1])
            if groups == cin and w_shape[1] == 1 and groups > 1:  # depthwise: groups follow the channels
                new_groups = kept_size(a, inp, 1, cin, removed)
                args = list(node.args)
                while len(args) <= groups_index:
                    args.append(_conv_default(len(args), len(w_shape) - 2))
                args[groups_index] = new_groups
                node.args = tuple(args)


def _slice_gather_index(a: Analysis, node: fx.Node, out: Labels) -> None:
    """gather's index keeps its size where the input lost units (a size spelled out in the graph, e.g. DeBERTa's
    ``4 * batch``): slice it to the input's new size there. The analysis only lets a labelled dim through where
    the index is broadcast along it, so any prefix of it holds the same values: the slice is exact."""
    graph = a.gm.graph
    src, dim, index = node.args[0], node.args[1], node.args[2]
    for d, tracked in enumerate(out.tracked):
        if not tracked:
            continue
        with graph.inserting_before(node):
            size = graph.call_function(aten.sym_size.int, (src, d))
            index = graph.call_function(aten.slice.Tensor, (index, d, 0, size))
    node.args = (src, dim, index, *node.args[3:])


def _conv_default(index: int, spatial: int):
    return {2: None, 3: [1] * spatial, 4: [0] * spatial, 5: [1] * spatial, 6: 1}[index]


def _fix_expand(node: fx.Node) -> None:
    """expand sizes that spelled out an input dim follow that dim's new size.

    Runs during re-propagation: the input already has its new fake value, while its NodeInfo still holds
    the shape from before pruning, which tells a spelled-out size (equal to the old size) from a
    broadcast (old size 1).
    """
    if node.op != "call_function" or node.target is not aten.expand.default:
        return
    src = node.args[0]
    val = src.meta.get("val") if isinstance(src, fx.Node) else None
    info = node_info(src) if isinstance(src, fx.Node) else None
    if val is None or info is None or info.shape is None:
        return
    old = info.shape
    sizes = list(node.args[1])
    pad = len(sizes) - val.dim()
    for i in range(val.dim()):
        s, new = sizes[pad + i], val.shape[i]
        if isinstance(s, int) and s != -1 and old[i] != 1 and s == old[i] and isinstance(new, int):
            sizes[pad + i] = new
    node.args = (src, sizes, *node.args[2:])
