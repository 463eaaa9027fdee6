"""The ``prune`` pass: structured pruning of channels, FFN neurons and attention heads, physically removed.

    prune{ratio=0.5,importance=l2,scope=local,round_to=8,ignore=[classifier]}

Steps on the captured graph:

1. dependency analysis (:mod:`.analysis`): coupled units in groups; unknown ops make a group unprunable;
2. ``ignore`` patterns and ``ratios`` keys are matched against the groups (a key that matches nothing is an
   error, never silently ignored);
3. importance scores per unit (:mod:`.importance`), then which units go (:mod:`.plan`), made consistent so
   no tensor slice is cut in part;
4. with ``reconstruct``: the Gram matrices of the GEMMs that lose input columns, on the unpruned graph
   (:mod:`.reconstruct`);
5. the graph surgery (:mod:`.rewrite`), then the least-squares refit.

Calibration batches and a Taylor ``loss_fn`` are data, not options: ``sg.prune`` hands them over with
``Prune(...).with_data(calib=..., loss_fn=...)``; from a pipeline string the pass uses the example inputs.
The :class:`~slimgraph.prune.report.PruneReport` lands in the pass record's ``stats["report"]``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch.fx as fx

from .. import defaults
from ..errors import InputError
from ..ir.calibration import UsesData
from ..ir.propagate import refresh
from ..passes.base import Pass, PassResult, register_pass
from ..report import totals
from .analysis import Analysis, analyze
from .coverage import prune_coverage
from .importance import CRITERIA, unit_scores
from .plan import GroupPlan, group_ratio, plan_removals
from .reconstruct import collect_grams, find_consumers, refit
from .report import REPORT_KEY, PruneReport, group_name, group_reports
from .rewrite import apply, inconsistent_roots

SCOPES = ("local", "global")


@register_pass
@dataclass(frozen=True)
class Prune(UsesData, Pass):
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
    # Calibration batches (act/taylor importance, reconstruct) and a Taylor loss_fn are data, not options:
    # sg.prune hands them over with .with_data(calib=..., loss_fn=...).

    def __post_init__(self):
        validate_options(self.ratio, self.importance, self.scope, self.round_to, self.ratios, self.floor)

    def run(self, gm: fx.GraphModule) -> PassResult:
        refresh(gm)
        before = totals(gm)
        a = analyze(gm)
        report = PruneReport(params_before=before.params, macs_before=before.macs)
        # a rule that raised blocked only what its node touches; say which rule, where, and why
        report.notes.extend(f"analysis rule failed, its values stay unpruned: {r}" for r in a.rule_failures)
        _check_ratio_keys(a, self.ratios)
        ignored = ignored_groups(a, self.ignore)
        candidates = [g for g in a.groups if g.prunable and g.index not in ignored]
        report.coverage = prune_coverage(a, candidates)
        plans: list[GroupPlan] = []
        if candidates and (self.ratio > 0 or any(v > 0 for v in (self.ratios or {}).values())):
            scores, notes = unit_scores(a, candidates, self.importance, calib=self.data.calib,
                                        loss_fn=self.data.loss_fn, seed=self.seed)
            report.notes.extend(notes)
            plans = plan_removals(a, candidates, scores, ratio=self.ratio, scope=self.scope,
                                  round_to=self.round_to, ratios=self.ratios, floor=self.floor)
            plans = _make_consistent(a, plans, report)
        removed = np.array(sorted(u for p in plans for u in p.remove), dtype=np.int64)
        consumers = find_consumers(a, removed) if self.reconstruct and len(removed) else []
        if consumers:  # the Gram matrices need the unpruned graph: collect before the rewrite
            collect_grams(a, consumers, self.data.calib)
        changed = apply(a, removed) if len(removed) else {}
        if consumers:
            report.reconstructed, refit_notes = refit(gm, consumers)
            report.notes.extend(refit_notes)
        elif self.reconstruct and len(removed):
            report.notes.append("reconstruct: no pruned unit feeds a linear layer with a weight of its own; nothing "
                                "to refit")
        after = totals(gm) if changed else before
        report.params_after, report.macs_after = after.params, after.macs
        report.groups = group_reports(a, plans, ignored)
        stats = {
            "groups": len(a.groups),
            "prunable": len(candidates),
            "pruned": sum(1 for p in plans if p.remove),
            "params_before": before.params,
            "params_after": after.params,
            "macs_before": before.macs,
            "macs_after": after.macs,
            REPORT_KEY: report,
        }
        notes = list(report.notes)
        if not candidates:
            reasons = sorted({r for g in a.groups for r in g.blocked})[:5]
            why = f" ({'; '.join(reasons)})" if reasons else ""
            notes.append(f"nothing to prune: every group is unprunable{why}")
        return PassResult(gm, bool(changed), stats, notes)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_options(ratio, importance, scope, round_to, ratios, floor):
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


def matches_module(module: str, pattern: str) -> bool:
    return module == pattern or module.startswith(pattern + ".") or fnmatch.fnmatchcase(module, pattern)


def ignored_groups(a: Analysis, ignore: Sequence[str]) -> set[int]:
    if not ignore:
        return set()
    modules = {m.target.rpartition(".")[0] for m in a.members}
    for pattern in ignore:
        if not any(matches_module(mod, pattern) for mod in modules) and not _module_exists(a.gm, pattern):
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
        if any(matches_module(module, p) for p in ignore):
            for root in np.unique(a.uf.find_all(m.labels)):
                if root >= 0 and int(root) in roots_to_group:
                    ignored.add(roots_to_group[int(root)])
    return ignored


def _module_exists(gm: fx.GraphModule, name: str) -> bool:
    return any(matches_module(n, name) for n, _ in gm.named_modules()) or any(
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
                report.notes.append(f"group {group_name(a, p.group)}: kept {len(bad & set(p.remove))} unit(s) whose "
                                    "removal would split a tensor slice")
                p.keep = sorted(set(p.keep) | (bad & set(p.remove)))
                p.remove = [u for u in p.remove if u not in bad]
    raise RuntimeError("pruning plan did not converge to a consistent removal")
