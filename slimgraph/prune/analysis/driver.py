"""The driver: one topological walk applying the rules, then split constraints and group formation."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx

from ...ir.graph_utils import op_name
from ..labels import Labels
from .model import RULES, Analysis, Group, _reason

aten = torch.ops.aten


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
                a.labels[node] = _apply_rule(a, fn, node)
        else:
            a.block_inputs(node, _reason(node, f"{node.op} nodes are not analysed"))
            a.labels[node] = None
    _resolve_splits(a)
    a.groups = _form_groups(a)
    return a


def _apply_rule(a: Analysis, fn, node: fx.Node):
    """Run one rule; if it fails on a pattern it does not understand, block what the node touches and go on.

    A new library release can produce graphs no rule was written for (transformers 5.24 broke the concat rule
    on every decoder): one rule's failure must cost the groups it touches, never the whole pass. Elements the
    rule already unioned stay unioned, which is conservative: merged units only move together.
    """
    try:
        return fn(a, node)
    except Exception as exc:  # noqa: BLE001 - any failure inside a rule becomes a blocked group with its reason
        reason = _reason(node, f"pruning rule {fn.__name__} failed ({type(exc).__name__}: {exc})"[:200])
        a.rule_failures.append(reason)
        a.block_inputs(node, reason)
        return None


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

