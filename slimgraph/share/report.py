"""The weight-sharing report: per layer its code width, centroids used and reconstruction error, plus the
model's output error against the input model and the centroid fine-tuning that followed.

``print(slimgraph.share.last_report(gm))``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from ..report import PassReport, last_pass_report

REPORT_KEY = "report"  # PassRecord.stats key of the share-weights pass holding its ShareReport


@dataclass
class LayerShare:
    name: str
    weight: str  # the replaced attribute path
    kind: str  # linear | conv1d | conv2d | conv3d | embedding
    shape: tuple[int, ...]
    bits: float = 0  # k-means: width of one code; uniform: target code entropy per weight (0: not shared)
    centroids: int = 0  # nonzero centroids available (2**bits, less one when code 0 is the exact zero)
    used: int = 0  # centroids that at least one weight maps to
    zeros: int = 0  # weights kept exactly zero (code 0)
    numel: int = 0
    rel_error: float = 0.0  # ||w - codebook[codes]|| / ||w||
    entropy: float = 0.0  # empirical entropy of the codes, bits per weight: about what the archive's coder spends
    codebook: str = ""  # attribute paths of the new tensors
    codes: str = ""
    reason: str = ""  # why a layer was not shared

    def row(self) -> list[str]:
        if not self.bits:
            return [self.name, "x".join(map(str, self.shape)), "-", "-", "-", "-", "-", self.reason]
        return [self.name, "x".join(map(str, self.shape)), f"{self.bits:g}", f"{self.used}/{self.centroids}",
                f"{self.zeros / self.numel:.1%}" if self.numel else "-", f"{self.entropy:.2f}",
                f"{self.rel_error:.2e}", self.reason]


@dataclass
class ShareReport(PassReport):
    headers = ("layer", "shape", "bits", "centroids used", "zeros", "code entropy", "rel error", "note")
    align_right = frozenset({2, 3, 4, 5, 6})

    bits: float
    conv_bits: float
    quantizer: str = "kmeans"
    layers: list[LayerShare] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # filled by sg.share_weights after the pass: error of the shared model against the input model
    output_max_rel: float | None = None
    output_cosine: float | None = None
    eval_data: str = ""
    finetune_steps: int = 0
    finetune_loss: tuple[float, float] | None = None  # (first, last) distillation loss
    output_max_rel_before_finetune: float | None = None
    output_cosine_before_finetune: float | None = None
    allocation: object | None = None  # slimgraph.share.allocate.BitAllocation when per-layer rates were measured

    @property
    def shared(self) -> list[LayerShare]:
        return [layer for layer in self.layers if layer.bits]

    def summary(self) -> str:
        weights = sum(layer.numel for layer in self.shared)
        if self.allocation is not None:
            widths = f"uniform, {self.allocation.mean_bits:g} bits per weight on average, allocated per layer"
        elif self.quantizer == "uniform":
            widths = f"uniform, fc/embedding {self.bits:g} bits of code entropy, conv {self.conv_bits:g}"
        else:
            widths = f"k-means, fc/embedding {self.bits} bits, conv {self.conv_bits} bits"
        coded = sum(layer.entropy * layer.numel for layer in self.shared) / max(1, weights)
        text = (f"share-weights: {len(self.shared)} of {len(self.layers)} weights ({weights} elements) replaced by "
                f"codebooks ({widths}; codes {coded:.3f} bits per weight at their entropy)")
        if self.output_cosine is not None:
            text += (f"; output vs input model on {self.eval_data}: max_rel {self.output_max_rel:.3e}, "
                     f"cosine {self.output_cosine:.6f}")
        if self.finetune_steps:
            text += (f"; centroids fine-tuned {self.finetune_steps} steps (before: cosine "
                     f"{self.output_cosine_before_finetune:.6f})")
        return text

    def extra_lines(self) -> list[str]:
        return [str(self.allocation)] if self.allocation is not None else []


def last_report(gm: fx.GraphModule) -> ShareReport | None:
    """The report of the most recent share-weights pass run on ``gm`` (None if its weights were never shared)."""
    return last_pass_report(gm, ShareReport, REPORT_KEY)
