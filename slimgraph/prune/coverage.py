"""Honest pruning coverage: the fraction of GEMM weight parameters that sit in a prunable group.

A GEMM weight (see :func:`slimgraph.ir.graph_utils.gemm_weight_consumer`: linear/conv weights, ``x @ W.T``,
expert and RNN weight matrices) is *covered* when one of its slices (rows or columns) follows a unit of a
group that pruning may shrink. The rest are listed biggest first with the reason their groups are blocked,
or "no pruning unit reaches it" when the analysis gave the tensor no labels at all (an op with no rule read it).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch.fx as fx

from ..ir.graph_utils import gemm_weight_consumer
from ..report import WeightCoverage
from .analysis import Analysis, Group


class PruneCoverage(WeightCoverage):
    reached_as: ClassVar[str] = "in a prunable group"

    @property
    def covered_params(self) -> int:
        return self.reached_params


def prune_coverage(a: Analysis, candidates: list[Group]) -> PruneCoverage:
    gm: fx.GraphModule = a.gm
    n = len(a.uf.parent)
    group_of_root = np.full(n + 1, -1, dtype=np.int64)  # last slot: FIXED (-1) labels
    for g in a.groups:
        group_of_root[np.asarray(g.units, dtype=np.int64)] = g.index
    prunable = {g.index for g in candidates}
    by_index = {g.index: g for g in a.groups}
    groups_of: dict[str, set[int]] = {}
    for m in a.members:
        if n == 0:
            break
        idx = group_of_root[a.uf.find_all(np.asarray(m.labels).ravel())]
        groups_of.setdefault(str(m.target), set()).update(int(i) for i in np.unique(idx) if i >= 0)
    cov = PruneCoverage()
    for node, t in cov.uncounted_weights(gm):
        if not t.is_floating_point() or gemm_weight_consumer(node) is None:
            continue
        groups = groups_of.get(str(node.target), set())
        if groups & prunable:
            cov.count(str(node.target), t.numel(), reached=True)
            continue
        reasons = [r for i in sorted(groups) for r in by_index[i].blocked[:1]]
        if not groups:
            why = "no pruning unit reaches it"
        elif reasons:
            why = reasons[0]
        else:
            why = "its groups hold a single unit or were ignored"
        cov.count(str(node.target), t.numel(), reached=False, reason=why)
    return cov.finish()
