"""The quantization report: one row per GEMM-like layer, attached to the graph's pass history.

``print(slimgraph.quant.last_report(gm))`` shows, for every linear/conv/matmul/embedding, the scheme it runs
in, its weight-scale range, its activation scale (static) or "dynamic", the SQNR of its output when only it
is quantized, and whether it was kept in int8 or left in float and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.fx as fx

from ..report import PassReport, last_pass_report
from .coverage import Coverage

REPORT_KEY = "report"  # PassRecord.stats key of the quant pass holding its QuantReport


@dataclass
class LayerReport:
    name: str
    node: str
    kind: str  # linear | conv1d | conv2d | matmul | embedding | unsupported op
    scheme: str  # the scheme it runs in: w8a8 | w8a8-dynamic | w8a16 | float
    int8: bool
    reason: str = ""  # why it stayed in float
    weight_scale_min: float | None = None
    weight_scale_max: float | None = None
    act_scale: float | None = None  # static activation scale
    sqnr_db: float | None = None  # of this layer's output with only this layer quantized

    def row(self) -> tuple[str, ...]:
        wrange = (f"{self.weight_scale_min:.2e}..{self.weight_scale_max:.2e}"
                  if self.weight_scale_min is not None else "-")
        if self.act_scale is not None:
            act = f"{self.act_scale:.3e}"
        else:
            act = "dynamic" if self.int8 and self.scheme in ("w8a8-dynamic",) else "-"
        sqnr = "-" if self.sqnr_db is None else ("exact" if math.isinf(self.sqnr_db) else f"{self.sqnr_db:.1f}")
        status = "int8" if self.int8 else f"float ({self.reason})" if self.reason else "float"
        return (self.name, self.kind, self.scheme, wrange, act, sqnr, status)


@dataclass
class QuantReport(PassReport):
    headers = ("layer", "op", "scheme", "weight scales", "act scale", "SQNR dB", "kept")

    scheme: str
    observer: str
    layers: list[LayerReport] = field(default_factory=list)
    smoothquant_alpha: float | None = None
    smoothed_layernorms: int = 0  # SmoothQuant factors folded into LayerNorms
    calibration_batches: int = 0
    output_rel_error: float | None = None  # ||y_q - y|| / ||y|| over the calibration outputs
    output_cosine: float | None = None  # minimum cosine over calibration batches
    # the headline: error on data calibration did not fit (the example inputs, plus held-out calibration batches)
    eval_rel_error: float | None = None
    eval_cosine: float | None = None
    eval_data: str = ""  # what eval_* were measured on, in words
    max_error: float | None = None
    notes: list[str] = field(default_factory=list)
    coverage: Coverage | None = None  # GEMM weight parameters in int8 vs left in float, biggest left out first

    @property
    def quantized(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.int8]

    @property
    def skipped(self) -> list[LayerReport]:
        return [layer for layer in self.layers if not layer.int8]

    def summary(self) -> str:
        head = f"{self.scheme} ({self.observer}): {len(self.quantized)} of {len(self.layers)} layers int8"
        if self.coverage is not None:
            head += f"; {self.coverage.summary()}"
        if self.eval_rel_error is not None:
            head += (f"; on {self.eval_data}: output rel. error {self.eval_rel_error:.2e}, "
                     f"min cosine {self.eval_cosine:.5f}")
        if self.output_rel_error is not None:
            head += (f"; on the calibration data: rel. error {self.output_rel_error:.2e}, "
                     f"min cosine {self.output_cosine:.5f}")
        return head


def last_report(gm: fx.GraphModule) -> QuantReport | None:
    """The report of the most recent quant pass run on ``gm`` (None if it was never quantized)."""
    return last_pass_report(gm, QuantReport, REPORT_KEY)
