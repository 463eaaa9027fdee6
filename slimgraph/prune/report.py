"""The pruning report: one row per prunable group, attached to the graph's pass history.

``print(slimgraph.prune_report(gm).table())`` shows, for every group of coupled units (channels, FFN neurons,
attention heads), its width before and after, whether it was pruned, kept, ignored or found unprunable and
why, the mean importance of the units kept and removed, and the parameter / MAC totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.fx as fx

from ..report import format_table, human, last_pass_report
from .analysis import Analysis, Group
from .coverage import PruneCoverage
from .plan import GroupPlan
from .reconstruct import Reconstruction

REPORT_KEY = "report"  # PassRecord.stats key of the prune pass holding its PruneReport


@dataclass
class GroupReport:
    name: str
    kind: str
    members: list[str]
    units_before: int
    units_after: int
    width_before: int  # channels of the group's leading layer
    width_after: int
    status: str  # "pruned" | "kept" | "unprunable" | "ignored"
    reason: str = ""
    approximate: bool = False
    score_kept: float = float("nan")  # mean importance of kept units
    score_removed: float = float("nan")  # mean importance of removed units


@dataclass
class PruneReport:
    groups: list[GroupReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    notes: list[str] = field(default_factory=list)
    reconstructed: list[Reconstruction] = field(default_factory=list)  # GEMMs refit by least squares
    coverage: PruneCoverage | None = None  # GEMM weight parameters in a prunable group, biggest left out

    @property
    def pruned(self) -> list[GroupReport]:
        return [g for g in self.groups if g.status == "pruned"]

    def table(self, limit: int | None = 60) -> str:
        rows = []
        for g in self.groups[:limit]:
            rows.append([g.name, g.kind, f"{g.units_before}->{g.units_after}", f"{g.width_before}->{g.width_after}",
                         g.status + ("*" if g.approximate else ""), _fmt(g.score_kept), _fmt(g.score_removed),
                         (g.reason[:70] + "...") if len(g.reason) > 73 else g.reason])
        body = format_table(["group", "kind", "units", "width", "status", "kept imp", "removed imp", "why"], rows)
        more = f"\n... {len(self.groups) - limit} more groups" if limit and len(self.groups) > limit else ""
        refit = ""
        if self.reconstructed:
            r = self.reconstructed
            refit = (f"\nreconstructed {len(r)} linear layer(s) by least squares: calibration output error "
                     f"{100 * np.mean([x.error_sliced for x in r]):.2f}% (sliced) -> "
                     f"{100 * np.mean([x.error_reconstructed for x in r]):.2f}% (mean over layers)")
        cov = f"\ncoverage: {self.coverage.summary()}" if self.coverage is not None else ""
        return (f"{body}{more}\n(* = removal changes normalization statistics: not exact even for dead units)\n"
                f"params {human(self.params_before)} -> {human(self.params_after)}, "
                f"MACs {human(self.macs_before)} -> {human(self.macs_after)}{refit}{cov}")


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3g}"


def group_name(a: Analysis, g: Group) -> str:
    """A group's name in reports: its leading module, and how many more sources share its units."""
    src = a.sources[g.sources[0]]
    name = src.module or src.node
    return name + (f" (+{len(g.sources) - 1})" if len(g.sources) > 1 else "")


def group_reports(a: Analysis, plans: list[GroupPlan], ignored: set[int]) -> list[GroupReport]:
    """One row per group of the analysis, pruned ones first, each with its status and the modules it spans."""
    by_group = {p.group.index: p for p in plans}
    group_of_root = np.full(len(a.uf.parent) + 1, -1, dtype=np.int64)  # last slot: FIXED (-1) labels
    for g in a.groups:
        group_of_root[np.asarray(g.units, dtype=np.int64)] = g.index
    modules_of_group: dict[int, set[str]] = {}
    for m in a.members:
        module = m.target.rpartition(".")[0] or m.target
        for index in np.unique(group_of_root[a.uf.find_all(m.labels).ravel()]).tolist():
            if index >= 0:
                modules_of_group.setdefault(index, set()).add(module)
    reports = []
    for g in a.groups:
        members = sorted(modules_of_group.get(g.index, ()))
        plan = by_group.get(g.index)
        n = len(g.units)
        lead = a.sources[g.sources[0]].size
        if g.index in ignored:
            status, reason, after = "ignored", "a member is in ignore=", n
        elif g.blocked:
            status, reason, after = "unprunable", "; ".join(g.blocked[:3]), n
        elif n <= 1:
            status, reason, after = "unprunable", "a single unit", n
        elif plan is None or not plan.remove:
            status, reason, after = "kept", "", n
        else:
            status, reason, after = "pruned", "", n - len(plan.remove)
        kept_scores = [plan.scores[u] for u in plan.keep] if plan else []
        removed_scores = [plan.scores[u] for u in plan.remove] if plan else []
        reports.append(GroupReport(
            name=group_name(a, g), kind=g.kind, members=members, units_before=n, units_after=after,
            width_before=lead, width_after=lead * after // max(n, 1), status=status, reason=reason,
            approximate=bool(g.approximate),
            score_kept=float(np.mean(kept_scores)) if kept_scores else float("nan"),
            score_removed=float(np.mean(removed_scores)) if removed_scores else float("nan")))
    order = {"pruned": 0, "kept": 1, "ignored": 2, "unprunable": 3}
    return sorted(reports, key=lambda r: (order[r.status], r.name))


def prune_report(gm: fx.GraphModule) -> PruneReport | None:
    """The report of the last prune pass run on ``gm`` (None if it was never pruned)."""
    return last_pass_report(gm, PruneReport, REPORT_KEY)
