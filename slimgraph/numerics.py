"""Comparing model outputs: the one error measure every pass check, report and test harness uses.

``compare_outputs(actual, reference)`` takes any pytree of tensors (one call's outputs, or a list of calls'
outputs) and returns every figure the callers need: the pass manager's tolerance check reads ``max_rel``,
the quantization report and its error budget read ``rel_l2`` and ``cosine``, the architecture matrix reads
``sqnr_db``. ``ratio_db`` is the same decibel figure for energies accumulated elsewhere (per-layer sensitivity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree


@dataclass(frozen=True)
class OutputError:
    """Error of ``actual`` against ``reference`` over all floating-point output tensors.

    ``max_rel`` is max|a - r| / max|r| per tensor (the worst tensor wins): scale-free, and unlike an
    element-wise ratio it does not explode on reference values near zero. ``cosine`` is the minimum
    over tensors of the cosine similarity of the flattened tensors. ``rel_l2`` is ||a - r|| / ||r|| over
    all floating-point tensors together (the error budget of quantization), ``sqnr_db`` the worst tensor's
    signal-to-noise ratio 10 log10(||r||^2 / ||a - r||^2) in dB (inf when it is reproduced exactly).
    """

    max_abs: float
    max_rel: float
    cosine: float
    exact: bool
    rel_l2: float
    sqnr_db: float

    def __str__(self) -> str:
        if self.exact:
            return "exact"
        return f"max_rel={self.max_rel:.2e} max_abs={self.max_abs:.2e} cos={self.cosine:.6f}"


def _tensor_leaves(tree) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def compare_outputs(actual, reference) -> OutputError:
    a_leaves, r_leaves = _tensor_leaves(actual), _tensor_leaves(reference)
    if len(a_leaves) != len(r_leaves):
        raise ValueError(f"output structure differs: {len(a_leaves)} vs {len(r_leaves)} tensors")
    max_abs, max_rel, cosine, exact = 0.0, 0.0, 1.0, True
    noise_total = signal_total = 0.0
    sqnr = math.inf
    for a, r in zip(a_leaves, r_leaves):
        if a.shape != r.shape:
            raise ValueError(f"output shape changed: {tuple(a.shape)} vs {tuple(r.shape)}")
        a, r = a.detach(), r.detach()
        if not torch.equal(a, r):
            exact = False
        if not (a.is_floating_point() or r.is_floating_point()):
            if not torch.equal(a, r):
                max_abs, max_rel, cosine = float("inf"), float("inf"), min(cosine, 0.0)
            continue
        a64, r64 = a.double().flatten(), r.double().flatten()
        if a64.numel() == 0:
            continue
        diff = (a64 - r64).abs()
        if not torch.isfinite(diff).all():
            return OutputError(math.inf, math.inf, math.nan, False, math.inf, -math.inf)
        abs_err = diff.max().item()
        noise, signal = diff.pow(2).sum().item(), r64.pow(2).sum().item()
        noise_total, signal_total = noise_total + noise, signal_total + signal
        sqnr = min(sqnr, ratio_db(signal, noise))
        scale = r64.abs().max().item()
        max_abs = max(max_abs, abs_err)
        max_rel = max(max_rel, abs_err / scale if scale > 0 else abs_err)
        denom = a64.norm() * r64.norm()
        cos = (a64 @ r64 / denom).item() if denom > 0 else float(torch.equal(a64, r64))
        cosine = min(cosine, cos)
    # an all-zero reference has no scale to be relative to: the error is then absolute
    rel_l2 = math.sqrt(noise_total / signal_total) if signal_total > 0 else math.sqrt(noise_total)
    return OutputError(max_abs, max_rel, cosine, exact, rel_l2, sqnr)


def ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) for energies (sums of squares): inf without noise, -inf without signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def run_module(module, args: tuple, kwargs: dict | None = None):
    with torch.no_grad():
        return module(*args, **(kwargs or {}))
