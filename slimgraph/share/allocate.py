"""Mixed code widths from a measured sensitivity: give each layer the rate that minimizes the output error.

    alloc = allocate_bits(gm, batches, mean_bits=3.6)     # {weight path: bits per weight}
    sh = share_weights(gm, bits=..., quantizer="uniform", per_layer=alloc.bits)
    # or in one call: share_weights(gm, quantizer="uniform", mean_bits=3.6, data=batches)

Layers differ a lot in how much their quantization error reaches the output: in all-MiniLM-L6-v2 the word
embedding table (half of the weights) barely matters while the attention value and FFN input projections
dominate. A single width for every layer wastes bits on the first and starves the second.

How: each layer alone is quantized (uniform quantizer at ``probe_bits``) and the model's relative squared
output error on the calibration batches, ``d_l``, is measured against the unquantized model. At high rate an
entropy-coded uniform quantizer's error falls as ``2**(-2 r)``, so layer l costs ``a_l 2**(-2 r_l)`` with
``a_l = d_l 2**(2 probe_bits)``, and errors of different layers add up (they are small and independent).
Minimizing ``sum a_l 2**(-2 r_l)`` subject to ``sum n_l r_l = mean_bits * sum n_l`` (n_l: the layer's weights)
gives ``r_l = c + log2(a_l / n_l) / 2`` (reverse water-filling), clipped to ``[min_bits, max_bits]``; ``c`` is
found by bisection so the weighted mean rate is ``mean_bits``. The model is an approximation (at low rates the
error grows slower than it predicts, so cheap layers are, if anything, given too many bits); the result is
measured afterwards like any other share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from ..distill import _split_batch
from ..errors import InputError
from ..ir.calibration import Batch, normalize_batches, run_outputs
from ..ir.graph_utils import get_attr_tensor
from ..numerics import compare_outputs
from ..report import format_table
from ..sparse.layers import find_layers, select
from .kmeans import step_for_entropy, uniform_1d

PROBE_BATCHES = 4  # calibration batches each probe runs: the sensitivities only need their order of magnitude
_TINY = 1e-12  # floor of a measured error, so a layer with no measurable effect gets min_bits, not -inf


@dataclass
class BitAllocation:
    mean_bits: float
    bits: dict[str, float] = field(default_factory=dict)  # weight attribute path -> bits per weight
    sensitivity: dict[str, float] = field(default_factory=dict)  # relative squared output error at the probe
    numel: dict[str, int] = field(default_factory=dict)
    probe_bits: float = 3.0
    min_bits: float = 1.0
    max_bits: float = 8.0

    def at(self, mean_bits: float) -> BitAllocation:
        """The same measured sensitivities re-balanced to another mean rate (no new probes): a size sweep."""
        if not self.min_bits <= mean_bits <= self.max_bits:
            raise InputError(f"mean_bits={mean_bits!r} must lie within [{self.min_bits}, {self.max_bits}]")
        bits = _water_fill(self.sensitivity, self.numel, mean_bits, self.probe_bits, self.min_bits, self.max_bits)
        return BitAllocation(mean_bits, bits, dict(self.sensitivity), dict(self.numel), self.probe_bits,
                             self.min_bits, self.max_bits)

    def __str__(self) -> str:
        rows = [[w, self.numel[w], f"{self.sensitivity[w]:.2e}", f"{self.bits[w]:.2f}"] for w in self.bits]
        total = sum(self.numel.values()) or 1
        mean = sum(self.bits[w] * self.numel[w] for w in self.bits) / total
        head = (f"bit allocation: mean {mean:.3f} bits per weight over {len(self.bits)} layers (asked "
                f"{self.mean_bits:g}); sensitivity = relative squared output error with only that layer at "
                f"{self.probe_bits:g} bits")
        return "\n".join([head, format_table(["weight", "elements", "sensitivity", "bits"], rows,
                                             align_right={1, 2, 3})])


def allocate_bits(gm: fx.GraphModule, data: Iterable | None = None, mean_bits: float = 4.0, *,
                  probe_bits: float = 3.0, min_bits: float = 1.0, max_bits: float = 8.0,
                  embeddings: bool = True, ignore: Iterable[str] = ()) -> BitAllocation:
    """Per-layer rates (bits per weight, for ``quantizer="uniform"``) averaging ``mean_bits`` over the weights.

    ``gm``: a slimgraph GraphModule (its weights are changed during the probes and restored). ``data``: batches
    (tuples or ``(args, kwargs)``), the first few are used; default: the example inputs recorded at capture.
    """
    from .share_pass import _embedding_layers, _weight_arg  # one definition of which weights are shared

    if not min_bits <= mean_bits <= max_bits:
        raise InputError(f"mean_bits={mean_bits!r} must lie within [min_bits, max_bits] = [{min_bits}, {max_bits}]")
    layers = find_layers(gm) + (_embedding_layers(gm, find_layers(gm)) if embeddings else [])
    kept, _, _ = select(layers, tuple(ignore))
    if not kept:
        raise InputError("allocate_bits: no linear/conv/embedding weight to allocate bits to")
    # share_weights' batches are distillation batches (dicts may carry labels): keep their inputs only
    batches = normalize_batches(None, gm) if data is None else [
        Batch(*_split_batch(b)[:2]) for b in list(data)[:PROBE_BATCHES]]
    if not batches:
        raise InputError("allocate_bits: data is empty")
    reference = run_outputs(gm, batches)
    alloc = BitAllocation(mean_bits, probe_bits=probe_bits, min_bits=min_bits, max_bits=max_bits)
    for layer in kept:
        w = get_attr_tensor(gm, layer.nodes[0].args[_weight_arg(layer)])
        saved = w.detach().clone()
        with torch.no_grad():
            w.copy_(_probe(saved, probe_bits))
            try:
                # relative squared error over every batch's float outputs together (rel_l2 is its root)
                alloc.sensitivity[layer.weight] = compare_outputs(run_outputs(gm, batches), reference).rel_l2 ** 2
            finally:
                w.copy_(saved)
        alloc.numel[layer.weight] = saved.numel()
    alloc.bits = _water_fill(alloc.sensitivity, alloc.numel, mean_bits, probe_bits, min_bits, max_bits)
    return alloc


def _probe(w: torch.Tensor, bits: float) -> torch.Tensor:
    """``w`` through the uniform quantizer at ``bits`` (zeros kept, as the share pass keeps them)."""
    nonzero = w != 0
    if not nonzero.any():
        return w
    kept = w[nonzero]
    fit = uniform_1d(kept, step_for_entropy(kept, bits))
    out = torch.zeros_like(w)
    out[nonzero] = fit.centroids[fit.assignment].to(w.dtype)
    return out


def _water_fill(sensitivity: dict[str, float], numel: dict[str, int], mean_bits: float, probe_bits: float,
                min_bits: float, max_bits: float) -> dict[str, float]:
    offset = {w: 0.5 * math.log2(max(d, _TINY) * 2.0 ** (2 * probe_bits) / numel[w]) for w, d in sensitivity.items()}
    total = sum(numel.values())

    def rates(c: float) -> dict[str, float]:
        return {w: min(max_bits, max(min_bits, c + o)) for w, o in offset.items()}

    def mean(c: float) -> float:
        return sum(r * numel[w] for w, r in rates(c).items()) / total

    lo, hi = min_bits - max(offset.values()), max_bits - min(offset.values())  # mean(lo) = min, mean(hi) = max
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < mean_bits else (lo, mid)
    return {w: round(r, 3) for w, r in rates(hi).items()}
