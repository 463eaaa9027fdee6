"""Rules for attention: sdpa and matmul/bmm; heads are removed whole, with their q, k and v features."""

from __future__ import annotations

from math import prod

import numpy as np
import torch
import torch.fx as fx

from ..labels import Labels, make_labels
from .model import Analysis, _align, _reason, rule

aten = torch.ops.aten


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

