"""The ``lower-sparse`` pass: lower an already sparsified graph (e.g. after fine-tuning) without re-ranking.

    sparsify{sparsity=0.9,lower=off}  ->  sg.distill(...)  ->  lower-sparse{lower=auto}

It reads ``graph_info(gm).sparsity`` (weight -> pattern, written by ``sparsify``), re-verifies every recorded weight
against its pattern, and hands the linear layers to :func:`.lowering.lower_layers`, which keeps the measured
rule: a layer becomes a sparse op only where that beats dense on this device. The zeros are the ones the weights hold
now; nothing is re-ranked. The report (same type as ``sparsify``'s) lands in ``stats["report"]``.

    y = aten.linear(x, W, b)   [graph_info.sparsity["fc.weight"] = "unstructured"]
 => y = slimgraph.sparse_linear(x, crow, col, values, N, K, b, "none")      (where measured faster)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx as fx

from ..errors import InputError
from ..ir.graph_utils import get_attr_tensor
from ..ir.info import graph_info
from ..passes.base import Pass, PassResult, register_pass
from .layers import find_layers
from .lowering import lower_layers
from .patterns import parse_pattern, zero_fraction
from .report import REPORT_KEY, LayerSparsity, SparsityReport
from .verify import verify_sparsity

MODES = ("auto", "always")


@register_pass
@dataclass(frozen=True)
class LowerSparse(Pass):
    name: ClassVar[str] = "lower-sparse"
    summary: ClassVar[str] = "lower the weights recorded in graph_info.sparsity to sparse ops where measured faster"
    tolerance: ClassVar[float | None] = 1e-4  # lossless: the sparse ops compute the same products

    lower: str = "auto"

    def __post_init__(self):
        if self.lower not in MODES:
            raise InputError(f"lower-sparse: unknown lower mode {self.lower!r}; expected one of {', '.join(MODES)}")

    def run(self, gm: fx.GraphModule) -> PassResult:
        recorded = dict(graph_info(gm).sparsity)
        verify_sparsity(gm)
        layers = [layer for layer in find_layers(gm) if layer.weight in recorded]
        patterns = sorted({recorded[layer.weight] for layer in layers})
        report = SparsityReport(0.0, ",".join(patterns) or "-", "-", "-", self.lower)
        rows: dict[str, LayerSparsity] = {}
        for layer in layers:
            w = get_attr_tensor(gm, layer.nodes[0].args[1])
            pattern = parse_pattern(recorded[layer.weight])
            rows[layer.weight] = LayerSparsity.of(layer, w, str(pattern), round(zero_fraction(w, pattern) * w.numel()))
        if not layers:
            report.notes.append("no weight recorded in graph_info.sparsity: run sparsify first; the graph is unchanged")
            return PassResult(gm, False, {"lowered": 0, REPORT_KEY: report}, list(report.notes))
        report.target = sum(r.zeros for r in rows.values()) / sum(r.numel for r in rows.values())
        lowered = 0
        for text in patterns:  # lower_layers takes one pattern at a time
            group = [layer for layer in layers if recorded[layer.weight] == text]
            lowered += lower_layers(gm, group, rows, parse_pattern(text), self.lower)
        report.layers = [rows[layer.weight] for layer in layers]
        return PassResult(gm, lowered > 0, {"lowered": lowered, REPORT_KEY: report}, list(report.notes))
