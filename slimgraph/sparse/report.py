"""The sparsity report: one row per candidate weight, attached to the graph's pass history.

``print(slimgraph.sparse.last_report(gm))`` shows every GEMM weight's shape, pattern, exact sparsity (zeros /
elements) and how it runs: lowered to a sparse op (which, and the measured times) or dense, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from ..report import PassReport, last_pass_report

REPORT_KEY = "report"  # PassRecord.stats key of the sparsify pass holding its SparsityReport


@dataclass
class LayerSparsity:
    name: str
    weight: str
    kind: str  # linear | conv1d | conv2d | conv3d
    shape: tuple[int, ...]
    pattern: str  # the pattern applied, or "-" when the layer was left alone
    zeros: int = 0
    numel: int = 0
    lowered_to: str = ""  # the op the layer runs as when lowered ("" = dense)
    reason: str = ""  # why it stayed dense, or why it was not sparsified at all
    times_ms: dict[str, float] = field(default_factory=dict)  # measured candidates: "dense", "csr", ...

    @classmethod
    def of(cls, layer, w: torch.Tensor, pattern: str, zeros: int | None = None, reason: str = "") -> LayerSparsity:
        """The row of ``layer`` (a :class:`slimgraph.sparse.layers.Layer`) whose weight is now ``w``; ``zeros``
        defaults to the exact count of zeros in ``w``."""
        zeros = int((w == 0).sum()) if zeros is None else zeros
        return cls(layer.name, layer.weight, layer.kind, tuple(w.shape), pattern, zeros, w.numel(), reason=reason)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def row(self) -> list[str]:
        times = ", ".join(f"{k} {v:.3f} ms" for k, v in self.times_ms.items())
        status = f"lowered: {self.lowered_to}" if self.lowered_to else "dense"
        if self.reason:
            status += f" ({self.reason})"
        if times:
            status += f" [{times}]"
        return [self.name, "x".join(map(str, self.shape)), self.pattern, f"{self.sparsity:.2%}",
                f"{self.zeros}/{self.numel}", status]


@dataclass
class SparsityReport(PassReport):
    headers = ("layer", "shape", "pattern", "sparsity", "zeros", "runs as")
    align_right = frozenset({3, 4})

    target: float  # requested sparsity
    pattern: str
    scope: str
    importance: str
    lower: str
    layers: list[LayerSparsity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sparsified(self) -> list[LayerSparsity]:
        return [layer for layer in self.layers if layer.pattern != "-"]

    @property
    def lowered(self) -> list[LayerSparsity]:
        return [layer for layer in self.layers if layer.lowered_to]

    @property
    def sparsity(self) -> float:
        """Zeros over elements of every sparsified weight together (the global figure)."""
        total = sum(layer.numel for layer in self.sparsified)
        return sum(layer.zeros for layer in self.sparsified) / total if total else 0.0

    def summary(self) -> str:
        return (f"sparsify {self.pattern} ({self.scope}, {self.importance}): {len(self.sparsified)} of "
                f"{len(self.layers)} GEMM weights at {self.sparsity:.2%} overall (target {self.target:.2%}); "
                f"{len(self.lowered)} lowered to sparse ops (lower={self.lower})")


def last_report(gm: fx.GraphModule) -> SparsityReport | None:
    """The report of the most recent sparsify pass run on ``gm`` (None if it was never sparsified)."""
    return last_pass_report(gm, SparsityReport, REPORT_KEY)
