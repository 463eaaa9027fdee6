"""Structured pruning on the captured graph: channels, FFN neurons and attention heads, physically removed.

    import slimgraph as sg
    small = sg.prune(model, example_inputs, ratio=0.5, importance="l2", scope="local", round_to=8)
    print(sg.prune_report(small).table())

or as the pass ``prune{ratio=0.5,importance=l2,scope=local,round_to=8}`` in any pipeline. See
``analysis.py`` for how coupled units are found, ``importance.py`` for the criteria, ``plan.py`` for ratios
and rounding, ``rewrite.py`` for the graph surgery.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch.fx as fx
import torch.nn as nn

from .. import defaults
from ..errors import InputError, PassError
from ..ir.info import graph_info
from ..ir.propagate import refresh
from ..passes.base import Pass, PassResult, register_pass
from ..report import format_table, human, totals
from .analysis import Analysis, Group, analyze
from .coverage import PruneCoverage, prune_coverage
from .importance import CRITERIA, unit_scores
from .plan import GroupPlan, group_ratio, plan_removals
from .reconstruct import Reconstruction, collect_grams, find_consumers, refit
from .rewrite import apply, inconsistent_roots

SCOPES = ("local", "global")


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


@register_pass
@dataclass(frozen=True)
class Prune(Pass):
    name: ClassVar[str] = "prune"
    summary: ClassVar[str] = "structured pruning of channels, neurons and attention heads (lossy)"
    tolerance: ClassVar[float | None] = None
    ratio: float = defaults.PRUNE_RATIO
    importance: str = defaults.PRUNE_IMPORTANCE_WITHOUT_DATA  # a pipeline string carries no data: magnitude
    scope: str = defaults.PRUNE_SCOPE
    round_to: int = defaults.PRUNE_ROUND_TO
    ignore: tuple[str, ...] = ()
    ratios: dict[str, float] | None = None
    floor: float = defaults.PRUNE_FLOOR  # global scope: every group keeps at least this fraction of its units
    seed: int = defaults.SEED
    reconstruct: bool = False  # refit the linear layers that lose input columns, by least squares on calib
    calib: Any = field(default=None, repr=False, compare=False)  # batches for act/taylor importance, reconstruct
    loss_fn: Callable | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        _validate(self.ratio, self.importance, self.scope, self.round_to, self.ratios, self.floor)

    def run(self, gm: fx.GraphModule) -> PassResult:
        refresh(gm)
        before = totals(gm)
        a = analyze(gm)
        report = PruneReport(params_before=before.params, macs_before=before.macs)
        # a rule that raised blocked only what its node touches; say which rule, where, and why
        report.notes.extend(f"analysis rule failed, its values stay unpruned: {r}" for r in a.rule_failures)
        _check_ratio_keys(a, self.ratios)
        ignored = _ignored_groups(a, self.ignore)
        candidates = [g for g in a.groups if g.prunable and g.index not in ignored]
        report.coverage = prune_coverage(a, candidates)
        plans: list[GroupPlan] = []
        if candidates and (self.ratio > 0 or any(v > 0 for v in (self.ratios or {}).values())):
            scores, notes = unit_scores(a, candidates, self.importance, calib=self.calib, loss_fn=self.loss_fn,
                                        seed=self.seed)
            report.notes.extend(notes)
            plans = plan_removals(a, candidates, scores, ratio=self.ratio, scope=self.scope,
                                  round_to=self.round_to, ratios=self.ratios, floor=self.floor)
            plans = _make_consistent(a, plans, report)
        removed = np.array(sorted(u for p in plans for u in p.remove), dtype=np.int64)
        consumers = find_consumers(a, removed) if self.reconstruct and len(removed) else []
        if consumers:  # the Gram matrices need the unpruned graph: collect before the rewrite
            collect_grams(a, consumers, self.calib)
        changed = apply(a, removed) if len(removed) else {}
        if consumers:
            report.reconstructed, refit_notes = refit(gm, consumers)
            report.notes.extend(refit_notes)
        elif self.reconstruct and len(removed):
            report.notes.append("reconstruct: no pruned unit feeds a linear layer with a weight of its own; nothing "
                                "to refit")
        after = totals(gm) if changed else before
        report.params_after, report.macs_after = after.params, after.macs
        report.groups = _group_reports(a, plans, ignored)
        stats = {
            "groups": len(a.groups),
            "prunable": len(candidates),
            "pruned": sum(1 for p in plans if p.remove),
            "params_before": before.params,
            "params_after": after.params,
            "macs_before": before.macs,
            "macs_after": after.macs,
            "report": report,
        }
        notes = list(report.notes)
        if not candidates:
            reasons = sorted({r for g in a.groups for r in g.blocked})[:5]
            why = f" ({'; '.join(reasons)})" if reasons else ""
            notes.append(f"nothing to prune: every group is unprunable{why}")
        return PassResult(gm, bool(changed), stats, notes)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(ratio, importance, scope, round_to, ratios, floor):
    if not _is_number(ratio):
        raise InputError(f"ratio must be a number in [0, 1) (the fraction of units removed from each group), got "
                         f"{type(ratio).__name__} {ratio!r}")
    if ratios is not None and not isinstance(ratios, dict):
        raise InputError(f"ratios must be a dict such as {{'heads': 0.25}}, got {type(ratios).__name__}")
    for key, value in (ratios or {}).items():
        if not isinstance(key, str) or not _is_number(value):
            raise InputError(f"ratios entries must be 'group kind or module pattern': number, got {key!r}: {value!r}")
    if not _is_number(floor):
        raise InputError(f"floor must be a number in [0, 1], got {type(floor).__name__} {floor!r}")
    if not (0.0 <= ratio < 1.0):
        raise InputError(f"ratio must be in [0, 1): the fraction of units removed from each group; got {ratio}")
    for key, value in (ratios or {}).items():
        if not (0.0 <= value < 1.0):
            raise InputError(f"ratios[{key!r}] must be in [0, 1), got {value}")
    if importance not in CRITERIA:
        raise InputError(f"unknown importance {importance!r}; choose one of {', '.join(CRITERIA)}")
    if scope not in SCOPES:
        raise InputError(f"unknown scope {scope!r}; choose 'local' or 'global'")
    if not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"round_to must be a positive integer, got {round_to!r}")
    if not (0.0 <= floor <= 1.0):
        raise InputError(f"floor must be in [0, 1], got {floor}")


def _check_ratio_keys(a, ratios) -> None:
    """A ``ratios`` key that matches no group would be silently ignored: refuse it, naming what exists."""
    for key in ratios or {}:
        if not any(group_ratio(a, g, 0.0, {key: 1.0})[1] for g in a.groups):
            kinds = sorted({g.kind for g in a.groups})
            modules = sorted({a.sources[s].module for g in a.groups for s in g.sources if a.sources[s].module})
            raise InputError(f"ratios key {key!r} matches no group of this model: use a group kind "
                             f"({', '.join(kinds)}) or a module pattern such as {modules[:3]}")


def _matches(module: str, pattern: str) -> bool:
    return module == pattern or module.startswith(pattern + ".") or fnmatch.fnmatchcase(module, pattern)


def _ignored_groups(a: Analysis, ignore: Sequence[str]) -> set[int]:
    if not ignore:
        return set()
    modules = {m.target.rpartition(".")[0] for m in a.members}
    for pattern in ignore:
        if not any(_matches(mod, pattern) for mod in modules) and not _module_exists(a.gm, pattern):
            raise InputError(f"ignore names module {pattern!r}, which the model does not have (or which has no "
                             "weights); use names from model.named_modules()")
    ignored = set()
    by_source: dict[int, list[int]] = {}
    for g in a.groups:
        for s in g.sources:
            by_source.setdefault(s, []).append(g.index)
    roots_to_group = {u: g.index for g in a.groups for u in g.units}
    for m in a.members:
        module = m.target.rpartition(".")[0]
        if any(_matches(module, p) for p in ignore):
            for root in np.unique(a.uf.find_all(m.labels)):
                if root >= 0 and int(root) in roots_to_group:
                    ignored.add(roots_to_group[int(root)])
    return ignored


def _module_exists(gm: fx.GraphModule, name: str) -> bool:
    return any(_matches(n, name) for n, _ in gm.named_modules()) or any(
        fnmatch.fnmatchcase(n, name) for n, _ in gm.named_modules())


def _make_consistent(a: Analysis, plans: list[GroupPlan], report: PruneReport) -> list[GroupPlan]:
    """Keep units whose removal would cut a tensor slice in part; report them."""
    for _ in range(8):
        removed = np.array(sorted(u for p in plans for u in p.remove), dtype=np.int64)
        bad = inconsistent_roots(a, removed)
        if not bad:
            return plans
        for p in plans:
            if any(u in bad for u in p.remove):
                report.notes.append(f"group {_group_name(a, p.group)}: kept {len(bad & set(p.remove))} unit(s) whose "
                                    "removal would split a tensor slice")
                p.keep = sorted(set(p.keep) | (bad & set(p.remove)))
                p.remove = [u for u in p.remove if u not in bad]
    raise RuntimeError("pruning plan did not converge to a consistent removal")


def _group_name(a: Analysis, g: Group) -> str:
    src = a.sources[g.sources[0]]
    name = src.module or src.node
    return name + (f" (+{len(g.sources) - 1})" if len(g.sources) > 1 else "")


def _group_reports(a: Analysis, plans: list[GroupPlan], ignored: set[int]) -> list[GroupReport]:
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
            name=_group_name(a, g), kind=g.kind, members=members, units_before=n, units_after=after,
            width_before=lead, width_after=lead * after // max(n, 1), status=status, reason=reason,
            approximate=bool(g.approximate),
            score_kept=float(np.mean(kept_scores)) if kept_scores else float("nan"),
            score_removed=float(np.mean(removed_scores)) if removed_scores else float("nan")))
    order = {"pruned": 0, "kept": 1, "ignored": 2, "unprunable": 3}
    return sorted(reports, key=lambda r: (order[r.status], r.name))


def prune(
    model: nn.Module,
    example_inputs,
    ratio: float = defaults.PRUNE_RATIO,
    importance: str = defaults.PRUNE_IMPORTANCE,
    scope: str = defaults.PRUNE_SCOPE,
    round_to: int = defaults.PRUNE_ROUND_TO,
    ignore: Iterable[str | nn.Module] = (),
    calib: Iterable[tuple] | None = None,
    *,
    example_kwargs: dict | None = None,
    ratios: dict[str, float] | None = None,
    floor: float = defaults.PRUNE_FLOOR,
    seed: int = defaults.SEED,
    loss_fn: Callable | None = None,
    reconstruct: bool | str = defaults.PRUNE_RECONSTRUCT,
    check: bool = True,
) -> fx.GraphModule:
    """Structured pruning; returns a new, physically smaller module (the caller's model is untouched).

    Args:
        ratio: fraction of units (channels, FFN neurons, attention heads) removed from each prunable group.
        importance: "auto" (default: "act" when ``calib`` is given, else "l2") | "l1" | "l2" | "act"
            (activation-aware, needs ``calib``) | "bn-scale" | "taylor" | "random".
        scope: "local" (every group loses ``ratio``) or "global" (one normalized ranking, with ``floor``).
        round_to: kept widths are rounded up to a multiple of this (1 = exactly ``ratio``).
        ignore: module names (fnmatch patterns allowed) or module objects never to prune.
        calib: batches (tuples of inputs) for ``act`` and ``taylor`` importance and for ``reconstruct``;
            default the example inputs.
        ratios: per-group overrides keyed by "heads", "channels" or a module pattern.
        reconstruct: refit every linear layer that loses input columns (FFN down-projections, attention
            output projections) by least squares on ``calib``, so kept channels take over what removed ones
            carried. Needs at least as many calibration rows (tokens) as the layer has kept inputs. "auto"
            (default): on when ``calib`` is given.

    Defaults come from :mod:`slimgraph.defaults`, shared with ``slimgraph prune`` and ``sg.compress``.
    """
    from ..ir.capture import capture_or_copy
    from ..passes.manager import PassManager

    importance = defaults.resolve_importance(importance, has_data=calib is not None)
    reconstruct = defaults.resolve_reconstruct(reconstruct, has_data=calib is not None)
    _validate(ratio, importance, scope, round_to, ratios, floor)
    names = _ignore_names(model, ignore)
    modules = [n for n, _ in model.named_modules()] if isinstance(model, nn.Module) else []
    for name in names:
        if not any(_matches(m, name) for m in modules):
            raise InputError(f"ignore names module {name!r}, which the model does not have; use names from "
                             "model.named_modules()")
    gm = capture_or_copy(model, example_inputs, example_kwargs)
    p = Prune(ratio=ratio, importance=importance, scope=scope, round_to=round_to, ignore=tuple(names),
              ratios=ratios, floor=floor, seed=seed, reconstruct=reconstruct,
              calib=list(calib) if calib is not None else None, loss_fn=loss_fn)
    try:
        return PassManager([p], check_numerics=check).run(gm).gm
    except PassError as exc:
        if isinstance(exc.__cause__, InputError):  # e.g. a ratios key naming nothing: the user's error
            raise exc.__cause__ from None
        raise


def _ignore_names(model: nn.Module, ignore) -> list[str]:
    names = []
    by_id = {id(m): n for n, m in model.named_modules()} if isinstance(model, nn.Module) else {}
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise InputError(f"ignore contains a {type(item).__name__} that is not a submodule of the model")
            names.append(by_id[id(item)])
        elif isinstance(item, str):
            names.append(item)
        else:
            raise InputError(f"ignore entries must be module names or modules, got {type(item).__name__}")
    return names


def prune_report(gm: fx.GraphModule) -> PruneReport | None:
    """The report of the last prune pass run on ``gm`` (None if it was never pruned)."""
    for record in reversed(graph_info(gm).history):
        report = record.stats.get("report")
        if isinstance(report, PruneReport):
            return report
    return None


__all__ = ["Prune", "PruneReport", "GroupReport", "prune", "prune_report"]
