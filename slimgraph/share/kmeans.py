"""One-dimensional quantizers for weight sharing, exact and fast on tens of millions of weights: k-means (the
paper's) and an entropy-constrained uniform quantizer (:func:`uniform_1d`, :func:`step_for_entropy`).

In one dimension every cluster of a k-means solution is an interval of the sorted values, bounded by the
midpoints between neighbouring centroids. So the values are sorted once, and each Lloyd iteration only
binary-searches the k-1 midpoints and reads cluster sums off a prefix sum: O(k log n) per iteration instead
of O(n k). The result is the same as Lloyd's algorithm on the raw values.

Initialisation is linear (centroids evenly spaced between the minimum and the maximum), which Deep
Compression found best: it keeps centroids on the few large weights that density-based initialisations
starve, and large weights matter most. One refinement: the interval between the largest negative and the
smallest positive value is skipped. After magnitude pruning the surviving weights leave a wide empty band
around zero, and evenly spaced centroids inside it would never get a member (with 80% of a layer pruned, most
of them); spacing them evenly over the occupied range keeps every code useful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # float64 [k], ascending
    assignment: torch.Tensor  # int64, shaped like the input: index of each value's centroid
    iterations: int
    used: int  # centroids with at least one member


def linear_init(ordered: torch.Tensor, k: int) -> torch.Tensor:
    """k centroids evenly spaced over [min, max] of the sorted ``ordered``, minus the empty band around zero."""
    lo, hi = float(ordered[0]), float(ordered[-1])
    neg_top = float(ordered[ordered < 0].max()) if lo < 0 else lo
    pos_bottom = float(ordered[ordered > 0].min()) if hi > 0 else hi
    if not (lo < 0 < hi) or k < 2:
        return torch.linspace(lo, hi, k, dtype=torch.float64)
    gap = pos_bottom - neg_top  # no value lies strictly inside (neg_top, pos_bottom)
    steps = torch.linspace(0.0, (hi - lo) - gap, k, dtype=torch.float64) + lo
    return torch.where(steps > neg_top, steps + gap, steps)


def kmeans_1d(values: torch.Tensor, k: int, *, iters: int = 300, tol: float = 1e-9) -> KMeansResult:
    """Cluster the elements of ``values`` (any shape, finite, non-empty) into at most ``k`` centroids."""
    flat = values.detach().reshape(-1).double()
    if flat.numel() == 0:
        raise ValueError("kmeans_1d needs at least one value")
    ordered, _ = torch.sort(flat)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ordered, 0)])
    centroids = linear_init(ordered, k)
    scale = float(ordered[-1] - ordered[0]) or 1.0
    done = 0
    while done < iters:
        done += 1
        cuts = _cuts(ordered, centroids)
        counts = (cuts[1:] - cuts[:-1]).double()
        sums = prefix[cuts[1:]] - prefix[cuts[:-1]]
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # empty clusters stay put
        shift = float((updated - centroids).abs().max())
        centroids = updated
        if shift <= tol * scale:
            break
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    assignment = torch.bucketize(flat, midpoints).reshape(values.shape)
    used = int((torch.bincount(assignment.reshape(-1), minlength=k) > 0).sum())
    return KMeansResult(centroids, assignment, done, used)


def _cuts(ordered: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Start of every cluster in the sorted values, plus the end: [0, c_1, ..., c_{k-1}, n]."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    inner = torch.searchsorted(ordered, midpoints)
    n = torch.tensor([ordered.numel()])
    return torch.cat([torch.zeros(1, dtype=torch.long), inner, n])


# ------------------------------------------------------------------------ entropy-coded uniform quantizer

MAX_UNIFORM_LEVELS = 4096  # the archive's "symbols" coder codes at most 4096 distinct values per tensor


def uniform_1d(values: torch.Tensor, step: float) -> KMeansResult:
    """Round every value to the nearest multiple of ``step``; each occupied level's centroid is its members' mean.

    This is the quantizer that wins once the codes are entropy coded (entropy-constrained scalar quantization):
    at the same coded size a uniform partition loses less than k-means, whose equal-error clusters have nearly
    equal populations and so leave the entropy coder little to gain. The mean (instead of the grid point) is the
    best value for a fixed partition, as in a Lloyd step. Levels inside the range that no value hits keep their
    grid point, so centroids stay ascending and codes stay the level's rank from the bottom.
    """
    flat = values.detach().reshape(-1).double()
    if flat.numel() == 0:
        raise ValueError("uniform_1d needs at least one value")
    if not step > 0:
        raise ValueError(f"uniform_1d needs a positive step, got {step!r}")
    level = torch.round(flat / step).long()
    low = int(level.min())
    codes = level - low
    levels = int(codes.max()) + 1
    if levels > MAX_UNIFORM_LEVELS:
        raise ValueError(f"step {step:.3g} gives {levels} levels (at most {MAX_UNIFORM_LEVELS}): use a larger step")
    counts = torch.bincount(codes, minlength=levels)
    sums = torch.bincount(codes, weights=flat, minlength=levels)
    grid = (torch.arange(levels, dtype=torch.float64) + low) * step
    centroids = torch.where(counts > 0, sums / counts.clamp(min=1), grid)
    return KMeansResult(centroids, codes.reshape(values.shape), 1, int((counts > 0).sum()))


def code_entropy(codes: torch.Tensor) -> float:
    """Empirical entropy of integer codes, in bits per code: what an ideal entropy coder spends on them."""
    counts = torch.bincount(codes.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def step_for_entropy(values: torch.Tensor, bits: float, *, sample: int = 1 << 20, iters: int = 40) -> float:
    """The uniform step whose rounded codes of ``values`` have an entropy of ``bits`` bits per value.

    Bisection on log(step) (entropy falls as the step grows), on an evenly strided sample of at most ``sample``
    values so a 12 M-element embedding table takes well under a second per iteration. The step never goes below
    the one that keeps the levels within :data:`MAX_UNIFORM_LEVELS`.
    """
    flat = values.detach().reshape(-1).double()
    if flat.numel() > sample:
        flat = flat[:: flat.numel() // sample]
    spread = float(flat.max() - flat.min())
    rms = float(flat.pow(2).mean().sqrt())
    if spread == 0.0 or rms == 0.0:
        return rms or 1.0  # one distinct value: every step gives one level
    floor = spread / (MAX_UNIFORM_LEVELS - 2)
    lo, hi = max(floor, rms * 2.0 ** (-bits - 8)), max(floor, rms * 16.0)
    entropy = lambda step: code_entropy(torch.round(flat / step).long() - int(torch.round(flat.min() / step)))
    if entropy(lo) <= bits:
        return lo
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if entropy(mid) > bits:
            lo = mid
        else:
            hi = mid
    return hi
