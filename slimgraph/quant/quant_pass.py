"""The ``quant`` pass: calibrate, measure per-layer sensitivity, rewrite to int8, enforce an error budget.

    quant{scheme=w8a8,observer=mse,smoothquant=0.5,skip=[classifier*],max_error=0.02}

Steps on the float graph (after ``fold-bn`` and ``fuse``):

1. find the GEMM-like targets and decide each one's scheme (``per_layer`` patterns, ``skip`` patterns,
   unsupported ops stay float: see :mod:`.targets`);
2. optional SmoothQuant: per-channel activation ranges of LayerNorm outputs, folded into LN and weights;
3. static scheme: observers on every quantized activation (minmax / percentile / mse) give its scale;
4. sensitivity: each layer is quantized alone on its real inputs; SQNR of its output in dB;
5. rewrite (see :mod:`.rewrite`), then the end-to-end error on the calibration batches; with ``max_error``
   layers return to float, lowest SQNR first, until the relative output error is under budget.

The :class:`~slimgraph.quant.report.QuantReport` lands in the pass record's ``stats["report"]``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.fx as fx

from ..errors import InputError
from ..ir.calibration import Batch, NodeValues, UsesData, normalize_batches, run_outputs, run_watched, watch
from ..ir.graph_utils import get_attr_tensor
from ..ir.match import is_call, value_of
from ..ir.propagate import refresh
from ..numerics import compare_outputs, ratio_db
from ..passes.base import Pass, PassResult, register_pass
from .calibrate import check_finite
from .coverage import gemm_weight_coverage
from .observers import OBSERVERS, ChannelAbsMax, make_observer
from .ops import quantize_weight
from .report import REPORT_KEY, LayerReport, QuantReport
from .rewrite import RESIDUAL_ADDS, LayerPlan, rewrite_layers, simulate
from .smoothquant import apply_smoothing, smoothing_factors, smoothing_groups
from .targets import FLOAT, SCHEMES, LayerDecision, QuantTarget, decide_schemes, find_targets
from .weight_only import STORAGE_SCHEME, store_int8

_ACTIVATION_SCHEMES = ("w8a8", "w8a8-dynamic")
_RESIDUAL_OUTPUTS: contextvars.ContextVar[bool] = contextvars.ContextVar("slimgraph_int8_residual", default=False)


@contextlib.contextmanager
def int8_residual_outputs(enabled: bool = True):
    """Inside it, ``sg.quantize(scheme="w8a8")`` (every ``quant`` pass whose ``residual_outputs`` is unset) lets the
    static convs that feed residual adds write int8, read back by ``dequantize_per_tensor`` before the add, and
    a stem whose pooled output a block's add reads too. ONNX Runtime then runs them as QLinearConv (ResNet-18:
    20 instead of 8). Off by default: each residual branch gets one more rounding, and an int8 output read
    straight by an add shows where two runtimes round differently (the portable QDQ export differs from torch
    by one output step, ~1e-3 relative, where it was exact to 1e-4). ResNet-18: cosine to fp32 0.99992."""
    token = _RESIDUAL_OUTPUTS.set(enabled)
    try:
        yield
    finally:
        _RESIDUAL_OUTPUTS.reset(token)
_MIN_THRESHOLD = 1e-8  # an activation that is always zero still gets a positive scale


@register_pass
@dataclass(frozen=True)
class Quantize(UsesData, Pass):
    name: ClassVar[str] = "quant"
    summary: ClassVar[str] = "int8 quantization (w8a8 static, w8a8-dynamic, w8a16) with calibration and report"
    tolerance: ClassVar[float | None] = None  # lossy: the manager reports its error, never fails on it

    scheme: str = "w8a8"
    observer: str = "minmax"
    percentile: float = 99.99
    smoothquant: float | None = None  # SmoothQuant alpha; None = off
    skip: tuple[str, ...] = ()
    max_error: float | None = None
    attention: bool = False
    embeddings: bool = False
    per_layer: dict[str, str] = field(default_factory=dict)
    # Static convs read only by residual adds write int8 too (one more rounding on the residual branch; ONNX
    # Runtime then runs them as QLinearConv). None: the :func:`int8_residual_outputs` context's setting (off).
    residual_outputs: bool | None = None
    progress: bool | None = field(default=None, repr=False, compare=False)  # None: a bar on a terminal only
    # Calibration batches are data, not an option: sg.quantize hands them over with .with_data(calib=...);
    # from a pipeline string the pass calibrates on the example inputs recorded at capture.

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise InputError(f"unknown quantization scheme {self.scheme!r}; expected one of {', '.join(SCHEMES)}")
        if self.observer not in OBSERVERS:
            raise InputError(f"unknown observer {self.observer!r}; expected one of {', '.join(OBSERVERS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise InputError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.smoothquant is not None and not 0.0 <= self.smoothquant <= 1.0:
            raise InputError(f"smoothquant alpha must be in [0, 1], got {self.smoothquant}")
        if self.max_error is not None and not self.max_error > 0:
            raise InputError(f"max_error must be a positive relative error, got {self.max_error}")
        if isinstance(self.skip, str):
            object.__setattr__(self, "skip", (self.skip,))

    # ------------------------------------------------------------------------------------------------ run

    def run(self, gm: fx.GraphModule) -> PassResult:
        batches = normalize_batches(self.data.calib, gm)
        report = QuantReport(self.scheme, self.observer, smoothquant_alpha=self.smoothquant,
                             calibration_batches=len(batches), max_error=self.max_error)
        targets = find_targets(gm, attention=self.attention, embeddings=self.embeddings)
        decisions = decide_schemes(targets, self.scheme, self.skip, self.per_layer)
        if not any(d.scheme != FLOAT for d in decisions.values()):
            report.layers = [_row(t, decisions[t.node.name], None) for t in targets]
            report.coverage = gemm_weight_coverage(gm, {t.node.name: decisions[t.node.name].reason for t in targets})
            report.notes.append("nothing to quantize: no supported linear/conv/matmul/embedding layer "
                                "(or all of them skipped); the model is unchanged")
            return PassResult(gm, False, {"quantized": 0, REPORT_KEY: report}, list(report.notes))

        if self.smoothquant is not None:
            report.smoothed_layernorms = self._smooth(gm, targets, decisions, batches)
            targets = find_targets(gm, attention=self.attention, embeddings=self.embeddings)
        weights: dict[int, tuple] = {}
        plans = [_plan(gm, t, decisions[t.node.name].scheme, weights) for t in targets
                 if decisions[t.node.name].scheme != FLOAT]
        residual = self.residual_outputs if self.residual_outputs is not None else _RESIDUAL_OUTPUTS.get()
        if any(p.scheme == "w8a8" for p in plans):
            self._calibrate_static(gm, plans, batches, residual)
        sqnr, reference = self._sensitivity(gm, plans, batches)

        base = copy.deepcopy(gm) if self.max_error is not None else None
        rewrite_stats = rewrite_layers(gm, plans, residual)
        error = compare_outputs(run_outputs(gm, batches), reference)
        kept, reverted = plans, {}
        if self.max_error is not None and error.rel_l2 > self.max_error:
            gm, kept, rewrite_stats, error = self._fit_budget(base, plans, sqnr, batches, reference, residual)
            for p in plans:
                if p not in kept:
                    name = p.target.node.name
                    reverted[name] = f"max_error: returned to float (SQNR {sqnr[name]:.1f} dB)"
            if error.rel_l2 > self.max_error:
                report.notes.append(f"output error {error.rel_l2:.3g} stays above max_error {self.max_error:g} "
                                    "even with every layer in float")
        report.output_rel_error, report.output_cosine = error.rel_l2, error.cosine
        if residual:
            report.notes.append(
                f"int8 residual outputs: {sum(p.out_scale is not None for p in kept)} convs write int8 into "
                f"residual adds ({rewrite_stats.get('quantize_hoisted_shared', 0)} more through a shared reader "
                "such as a stem's maxpool); one more rounding on each residual branch")

        by_name = {p.target.node.name: p for p in kept}
        for t in targets:
            name = t.node.name
            decision = decisions[name]
            if name in reverted:
                decision = LayerDecision(FLOAT, reverted[name])
            report.layers.append(_row(t, decision, by_name.get(name), sqnr.get(name)))
        for weight, node_name, op in store_int8(gm, tuple(self.skip)):
            report.layers.append(LayerReport(weight, node_name, op.split(".")[-1], STORAGE_SCHEME, True,
                                             "int8 weights dequantized before the op: float compute"))
        # in parameters, not layers: MoE experts and GEMMs no target matched count too (issue 11)
        report.coverage = gemm_weight_coverage(gm, {r.node: r.reason for r in report.skipped if r.reason})
        notes = [f"{r.name}: float ({r.reason})" for r in report.skipped if r.reason]
        stats = {"quantized": len(report.quantized), "float": len(report.skipped), **rewrite_stats,
                 REPORT_KEY: report}
        return PassResult(gm, True, stats, notes + report.notes)

    # --------------------------------------------------------------------------------------------- steps

    def _fit_budget(self, base: fx.GraphModule, plans: list[LayerPlan], sqnr: dict[str, float],
                    batches: list[Batch], reference, residual: bool):
        """Return the k most sensitive layers (lowest SQNR) to float, for the smallest k whose output error
        is within ``max_error``. The error grows with the number of int8 layers, so k is found by bisection:
        O(log n) rewrites and evaluations instead of one per layer."""
        order = sorted(plans, key=lambda p: sqnr[p.target.node.name])
        tried: dict[int, tuple] = {}

        def attempt(k: int):
            if k not in tried:
                gm = copy.deepcopy(base)
                kept = [p for p in plans if p not in order[:k]]
                stats = rewrite_layers(gm, _rebind(gm, kept, self.attention, self.embeddings), residual)
                tried[k] = (gm, kept, stats, compare_outputs(run_outputs(gm, batches), reference))
            return tried[k]

        lo, hi = 0, len(order)  # error(lo) is over budget (measured by the caller); error(hi) = all float
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(mid)[3].rel_l2 <= self.max_error:
                hi = mid
            else:
                lo = mid
        return attempt(hi)

    def _smooth(self, gm, targets, decisions, batches: list[Batch]) -> int:
        quantized = {name for name, d in decisions.items() if d.scheme in _ACTIVATION_SCHEMES}
        groups = smoothing_groups(gm, targets, quantized)
        if not groups:
            return 0
        stats = {g.source: ChannelAbsMax() for g in groups}
        watchers = {x: [_finite_then(x, stat.update)] for x, stat in stats.items()}
        watch(gm, batches, watchers, desc="quant: smoothquant ranges", progress=self.progress)
        for group in groups:
            apply_smoothing(gm, group, smoothing_factors(group, gm, stats[group.source], self.smoothquant))
        gm.graph.lint()
        gm.recompile()
        refresh(gm)  # a residual's restoring mul needs its fake value before targets are found again
        return len(groups)

    def _calibrate_static(self, gm, plans: list[LayerPlan], batches: list[Batch], residual_outputs: bool) -> None:
        observers = {}
        for p in plans:
            if p.scheme == "w8a8" and p.target.x not in observers:
                observers[p.target.x] = make_observer(self.observer, self.percentile)
        # A conv read only by residual adds writes int8 too (rewrite's out_scale): else the add's float input
        # keeps the conv out of ONNX Runtime's QLinearConv (ResNet: a basic block's conv2 and shortcut convs).
        residual = [p for p in plans if residual_outputs and _feeds_residual_adds(p)]
        for p in residual:
            observers.setdefault(p.target.node, make_observer(self.observer, self.percentile))
        watchers = {x: [_finite_then(x, obs.update)] for x, obs in observers.items()}
        watch(gm, batches, watchers, desc="quant: calibrating", progress=self.progress)
        scales = {x: torch.tensor(max(obs.threshold(), _MIN_THRESHOLD) / 127.0, dtype=torch.float32)
                  for x, obs in observers.items()}
        for p in plans:
            if p.scheme == "w8a8":
                p.act_scale = scales[p.target.x]  # one tensor per value: consumers share its quantize node
        for p in residual:
            p.out_scale = scales[p.target.node]

    def _sensitivity(self, gm, plans: list[LayerPlan], batches: list[Batch]):
        energy = {p.target.node.name: [0.0, 0.0] for p in plans}
        watchers: dict[fx.Node, list] = {}
        for p in plans:
            for operand in (p.target.x, p.target.other):
                if isinstance(operand, fx.Node) and operand.op != "get_attr":
                    watchers.setdefault(operand, []).append(_finite_then(operand, None))

            def measure(values: NodeValues, plan=p):
                y = values.result
                yq = simulate(plan, values.args, values.kwargs, y.dtype)
                acc = energy[plan.target.node.name]
                acc[0] += float(y.double().pow(2).sum())
                acc[1] += float((y.double() - yq.double()).pow(2).sum())

            watchers.setdefault(p.target.node, []).append(measure)
        reference = run_watched(gm, batches, watchers, desc="quant: sensitivity", progress=self.progress)
        sqnr = {name: ratio_db(signal, noise) for name, (signal, noise) in energy.items()}
        return sqnr, reference


# ------------------------------------------------------------------------------------------------ helpers


def _finite_then(node: fx.Node, then):
    def hook(values: NodeValues):
        check_finite(node, values.result, values.batch)
        if then is not None:
            then(values.result)

    return hook


def _feeds_residual_adds(p: LayerPlan) -> bool:
    """A static conv with a float32 output that only residual adds read."""
    node, val = p.target.node, value_of(p.target.node)
    return (p.scheme == "w8a8" and p.target.conv is not None and val is not None and val.dtype == torch.float32
            and bool(node.users) and all(is_call(u, RESIDUAL_ADDS) for u in node.users))


def _plan(gm: fx.GraphModule, target: QuantTarget, scheme: str, cache: dict[int, tuple]) -> LayerPlan:
    plan = LayerPlan(target, scheme)
    if target.weight is not None:
        w = get_attr_tensor(gm, target.weight)
        if id(w) not in cache:  # tied weights share one int8 tensor (and one attribute in the graph)
            cache[id(w)] = quantize_weight(w)
        plan.weight_q, plan.weight_scale = cache[id(w)]
    return plan


def _rebind(gm: fx.GraphModule, plans: list[LayerPlan], attention: bool, embeddings: bool) -> list[LayerPlan]:
    """The same plans pointing at the nodes of a copied graph (node names survive deepcopy)."""
    fresh = {t.node.name: t for t in find_targets(gm, attention=attention, embeddings=embeddings)}
    rebound = []
    for p in plans:
        t = fresh[p.target.node.name]
        rebound.append(LayerPlan(t, p.scheme, p.weight_q, p.weight_scale, p.act_scale, p.out_scale))
    # Static scales are keyed by value: re-share them between consumers of one value in the copy.
    by_value: dict[str, torch.Tensor] = {}
    for p in rebound:
        if p.act_scale is not None:
            p.act_scale = by_value.setdefault(p.target.x.name, p.act_scale)
    return rebound


def _row(t: QuantTarget, decision: LayerDecision, plan: LayerPlan | None, sqnr: float | None = None) -> LayerReport:
    row = LayerReport(t.name, t.node.name, t.kind, decision.scheme if plan is not None else FLOAT,
                      plan is not None, "" if plan is not None else decision.reason, sqnr_db=sqnr)
    if plan is not None and plan.weight_scale is not None:
        row.weight_scale_min = float(plan.weight_scale.min())
        row.weight_scale_max = float(plan.weight_scale.max())
    if plan is not None and plan.act_scale is not None:
        row.act_scale = float(plan.act_scale)
    return row

