"""Choosing which units to remove: ratios, scopes, rounding, floors, and a consistency check.

``local`` scope removes ``ratio`` of the units of every prunable group (the lowest-scoring ones);
``global`` ranks all units on one scale (each group's scores divided by the group's mean) and removes
the lowest ``ratio`` of them overall, but keeps at least ``floor`` of every group. Per-group ratio
overrides (``ratios={"heads": 0.25, "*.intermediate.dense": 0.5}``) match a group's kind ("heads" or
"channels") or any of its source modules, and take those groups out of the global ranking.

The kept width of a channel group is rounded *up* so the leading layer's channel count is a multiple of
``round_to`` (GPU tiles like multiples of 8); head groups are not rounded (a head keeps its whole head size);
``round_to=1`` removes exactly ``floor(ratio * units)``. A group always keeps at least one unit.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np

from .analysis import Analysis, Group


@dataclass
class GroupPlan:
    group: Group
    ratio: float
    remove: list[int]  # roots
    keep: list[int]
    scores: dict[int, float]


def group_ratio(a: Analysis, group: Group, ratio: float, ratios: dict[str, float] | None) -> tuple[float, bool]:
    """(ratio for this group, whether an override matched)."""
    if ratios:
        modules = [a.sources[s].module for s in group.sources]
        for key, value in ratios.items():
            if key == group.kind or any(fnmatch.fnmatchcase(m, key) for m in modules):
                return value, True
    return ratio, False


def _rounding(group: Group, round_to: int) -> int:
    """Heads are removed whole: the kept width is always a multiple of the head size, which is what tiles see.
    Rounding the head *count* instead (the unit width can be 1 when the group's first source is a per-head
    table, e.g. a relative position bias) would round a 4-head group back to all 4 heads."""
    return 1 if group.kind == "heads" else round_to


def _keep_count(n: int, ratio: float, width: int, round_to: int) -> int:
    keep = n - math.floor(ratio * n + 1e-9)
    keep = max(1, keep)
    if round_to > 1:
        while keep < n and (keep * width) % round_to != 0:
            keep += 1
    return keep


def plan_removals(
    a: Analysis,
    groups: list[Group],
    scores: dict[int, float],
    *,
    ratio: float,
    scope: str,
    round_to: int,
    ratios: dict[str, float] | None,
    floor: float,
) -> list[GroupPlan]:
    plans: list[GroupPlan] = []
    global_pool: list[Group] = []
    for g in groups:
        r, overridden = group_ratio(a, g, ratio, ratios)
        if scope == "global" and not overridden:
            global_pool.append(g)
            continue
        order = sorted(g.units, key=lambda u: (scores[u], u))
        keep_n = _keep_count(len(order), r, g.unit_width, _rounding(g, round_to))
        remove = order[: len(order) - keep_n]
        plans.append(GroupPlan(g, r, remove, sorted(order[len(order) - keep_n:]), scores))
    if global_pool:
        plans.extend(_global(global_pool, scores, ratio, round_to, floor))
    return plans


def _global(groups: list[Group], scores: dict[int, float], ratio: float, round_to: int, floor: float):
    normalized = {}
    for g in groups:
        mean = np.mean([scores[u] for u in g.units]) or 1.0
        for u in g.units:
            normalized[u] = scores[u] / mean
    total = sum(len(g.units) for g in groups)
    budget = math.floor(ratio * total + 1e-9)
    min_keep = {g.index: max(1, math.ceil(floor * len(g.units))) for g in groups}
    owner = {u: g for g in groups for u in g.units}
    removed_count = {g.index: 0 for g in groups}
    chosen: set[int] = set()
    for u in sorted(normalized, key=lambda u: (normalized[u], u)):
        if len(chosen) >= budget:
            break
        g = owner[u]
        if len(g.units) - removed_count[g.index] - 1 < min_keep[g.index]:
            continue
        chosen.add(u)
        removed_count[g.index] += 1
    plans = []
    for g in groups:
        order = sorted(g.units, key=lambda u: (scores[u], u))
        picked = [u for u in order if u in chosen]
        keep_n = len(g.units) - len(picked)
        keep_n = _keep_count(len(g.units), 1 - keep_n / len(g.units), g.unit_width, _rounding(g, round_to))
        remove = order[: len(g.units) - keep_n]
        plans.append(GroupPlan(g, len(remove) / len(g.units), remove, sorted(order[len(remove):]), scores))
    return plans
