"""Rules for reductions, softmax, spatial ops, padding and scalar-valued ops."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..labels import Labels, make_labels
from .model import Analysis, _reason, rule

aten = torch.ops.aten


_EXACT_REDUCTIONS = {aten.sum.dim_IntList, aten.sum.default}
_REDUCTIONS = {aten.mean.dim, aten.mean.default, aten.sum.dim_IntList, aten.sum.default, aten.amax.default,
               aten.amin.default, aten.var.correction, aten.std.correction, aten.var.dim, aten.std.dim}


@rule(*_REDUCTIONS)
def _reduce(a: Analysis, node: fx.Node):
    raw = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.target in (aten.mean.default, aten.sum.default):
        raw = None
    keepdim = bool(node.args[2]) if len(node.args) > 2 and isinstance(node.args[2], bool) else \
        bool(node.kwargs.get("keepdim", False))
    return reduce_labels(a, node, raw, keepdim, exact=node.target in _EXACT_REDUCTIONS)


@rule(aten.linalg_vector_norm.default)
def _vector_norm(a: Analysis, node: fx.Node):
    # linalg_vector_norm(x, ord, dim, keepdim): per channel over other dims (ConvNeXt-V2's GRN) is exact
    raw = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    keepdim = bool(node.args[3]) if len(node.args) > 3 else bool(node.kwargs.get("keepdim", False))
    return reduce_labels(a, node, raw, keepdim, exact=False)


def reduce_labels(a: Analysis, node: fx.Node, raw, keepdim: bool, exact: bool) -> Labels | None:
    """Labels of a reduction of ``node.args[0]`` over ``raw`` dims (None or []: all of them)."""
    lab = a.lab(node.args[0])
    if lab is None:
        return None
    nd = lab.ndim
    if raw is None or raw == []:
        dims = list(range(nd))
    else:
        dims = [d % nd for d in (raw if isinstance(raw, (list, tuple)) else [raw])]
    reduced_tracked = [d for d in dims if lab.tracked[d]]
    kept_tracked = any(t and d not in dims for d, t in enumerate(lab.tracked))
    if reduced_tracked and kept_tracked and not _uniform_over(lab, reduced_tracked):
        return _merge_reduced(a, node, lab, dims, reduced_tracked, keepdim)
    if reduced_tracked and not exact:
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


def _merge_reduced(a: Analysis, node: fx.Node, lab: Labels, dims: list[int], reduced: list[int], keepdim: bool):
    """A reduction over labelled dims whose labels vary, keeping other labelled dims (Qwen3's q/k RMS norm: the
    mean over head_dim of [B, S, heads, head_dim] while head_dim's channels are still separate units).

    # mean(x[.., heads, head_dim], -1)  =>  the channels of each head become one unit
    Each output element is removed exactly when all the inputs it reduces are, so every output that stays reads
    all of its inputs: exact for any reduction. Where a reduced slice mixes fixed positions with units, the
    output would change when those units go: blocked."""
    arr = lab.array
    fixed = arr < 0
    axes = tuple(reduced)
    if (fixed.any(axis=axes) & ~fixed.all(axis=axes)).any():
        return _block_and_none(a, lab, node)
    for d in reduced:
        first = np.broadcast_to(arr.take([0], axis=d), arr.shape)
        a.uf.union_pairs(first, arr)
    out = arr
    for d in dims:
        out = out.take([0], axis=d) if lab.tracked[d] else out
    tracked = [t and d not in dims for d, t in enumerate(lab.tracked)]
    if not keepdim:
        keep = [d for d in range(lab.ndim) if d not in dims]
        out = out.reshape([out.shape[d] for d in keep])
        tracked = [tracked[d] for d in keep]
    return make_labels(np.ascontiguousarray(out), tracked)


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

# ------------------------------------------------------------------------------- non-tensor ops

_SCALAR_RESULTS = {aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, aten._local_scalar_dense.default,
                   aten.item.default}


@rule(*_SCALAR_RESULTS)
def _scalar(a: Analysis, node: fx.Node):
    if node.target in (aten._local_scalar_dense.default, aten.item.default):
        a.block(a.lab(node.args[0]), _reason(node, "reads a tensor value"))
    return None

