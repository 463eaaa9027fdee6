"""Sparsity patterns: parsing, the masks that realise them, and the check that a weight still obeys one.

Three families, each named by the string recorded in ``graph_info(gm).sparsity``:

* ``"unstructured"``: any element may be zero; exactly ``round(sparsity * numel)`` are (per layer, or over all
  layers with ``scope="global"``).
* ``"N:M"`` (``"2:4"``: sparse tensor cores): at most N non-zeros in every group of M consecutive weights along the
  input (reduction) dimension. For a conv ``[O, I, kh, kw]`` the groups run along the input channels ``I`` at each
  output channel and kernel position, as NVIDIA's ASP lays them out. The input dimension must be a multiple of M.
  The sparsity is fixed at ``1 - N/M``.
* ``"BNxBK"`` blocks (``(32, 32)``): whole ``bn x bk`` tiles of the GEMM view ``[out, reduction]`` (a conv's
  ``[O, I*kh*kw]``, its im2col matrix) are zero, the tiles the block-sparse kernel skips. Edge tiles of a shape
  that is not a multiple of the block are partial; the number of zero tiles is chosen so the zeroed elements come
  closest to the target.

Weights are ranked by importance scores of the same shape (see :mod:`.importance`); a tile's score is the mean of
its elements, so partial edge tiles compete fairly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError, VerificationError

UNSTRUCTURED = "unstructured"
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    kind: str  # "unstructured" | "n:m" | "block"
    n: int = 0  # N:M: non-zeros kept per group
    m: int = 0  # N:M: group size
    block: tuple[int, int] = (0, 0)  # (bn, bk)

    def __str__(self) -> str:
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.block[0]}x{self.block[1]}"
        return UNSTRUCTURED

    @property
    def fixed_sparsity(self) -> float | None:
        """N:M patterns fix the sparsity; the others take it as a parameter."""
        return 1.0 - self.n / self.m if self.kind == "n:m" else None


def parse_pattern(spec) -> Pattern:
    """``"unstructured"``, ``"N:M"`` (``"2:4"``), a block ``(bn, bk)`` or ``"BNxBK"``, or a :class:`Pattern`."""
    if isinstance(spec, Pattern):
        return spec
    if isinstance(spec, (tuple, list)):
        if len(spec) == 2 and all(isinstance(b, int) and not isinstance(b, bool) for b in spec):
            return _block(*spec, spec)
        raise InputError(f"a block pattern must be a pair of ints (bn, bk) such as (32, 32), got {spec!r}")
    if not isinstance(spec, str):
        raise InputError(f"pattern must be 'unstructured', 'N:M' or a block (bn, bk), got {type(spec).__name__}")
    if spec.strip().lower() == UNSTRUCTURED:
        return Pattern(UNSTRUCTURED)
    if m := _NM.match(spec):
        n, group = int(m.group(1)), int(m.group(2))
        if not 0 < n < group:
            raise InputError(f"pattern {spec!r}: N:M needs 0 < N < M (e.g. '2:4'), got N={n}, M={group}")
        return Pattern("n:m", n=n, m=group)
    if m := _BLOCK.match(spec):
        return _block(int(m.group(1)), int(m.group(2)), spec)
    raise InputError(f"unknown sparsity pattern {spec!r}; expected 'unstructured', 'N:M' such as '2:4', or a block "
                     "(bn, bk) / 'BNxBK' such as (32, 32)")


def _block(bn: int, bk: int, spec) -> Pattern:
    if bn < 1 or bk < 1:
        raise InputError(f"block pattern {spec!r}: both block sides must be positive")
    return Pattern("block", block=(bn, bk))


# ------------------------------------------------------------------------------------------------ weight views


def gemm_view(w: torch.Tensor) -> torch.Tensor:
    """``[out, reduction]``: a linear weight as is, a conv weight as its im2col matrix ``[O, I*kh*kw]``."""
    return w.reshape(w.shape[0], -1)


def nm_view(w: torch.Tensor) -> torch.Tensor:
    """Rows whose last dim is the input dimension: ``[N, K]`` as is, a conv ``[O, I, *k]`` as ``[O*prod(k), I]``."""
    return w if w.dim() == 2 else w.movedim(1, -1).reshape(-1, w.shape[1])


def from_nm_view(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 2:
        return mask
    # contiguous: a strided mask makes the masked weight strided too, and a conv then picks another algorithm
    # (last-bit differences from the dense masked model, and a layout archives and kernels do not expect)
    return mask.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()


def nm_problem(shape: torch.Size, pattern: Pattern) -> str:
    """Why an N:M pattern cannot apply to a weight of this shape ("" when it can)."""
    k = shape[1]
    return f"its input dimension {k} is not a multiple of M={pattern.m}" if k % pattern.m else ""


def block_scores(scores: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean score and element count of every tile of the GEMM view, both ``[rows, cols]`` (edge tiles partial)."""
    view = gemm_view(scores).float()
    bn, bk = block
    sums = F.avg_pool2d(view[None, None], (bn, bk), ceil_mode=True, divisor_override=1)[0, 0]
    ones = torch.ones_like(view)
    sizes = F.avg_pool2d(ones[None, None], (bn, bk), ceil_mode=True, divisor_override=1)[0, 0]
    return sums / sizes, sizes


def expand_blocks(keep_blocks: torch.Tensor, shape: torch.Size, block: tuple[int, int]) -> torch.Tensor:
    """Element mask of the weight from a ``[rows, cols]`` tile mask."""
    rows, cols = gemm_view(torch.empty(shape, device="meta")).shape
    full = keep_blocks.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:rows, :cols]
    return full.reshape(shape)


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep the N highest-scoring weights of every group of M along the input dimension."""
    view = nm_view(scores)
    groups = view.reshape(view.shape[0], -1, pattern.m)
    top = groups.topk(pattern.n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return from_nm_view(keep.reshape(view.shape), scores.shape)


# ------------------------------------------------------------------------------------------------ selection


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` lowest entries of a 1-D tensor (ties broken by position)."""
    n = scores.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    if k >= n:
        return ~mask
    threshold = scores.kthvalue(k).values
    mask = scores < threshold
    ties = (scores == threshold).nonzero().flatten()[: k - int(mask.sum())]
    mask[ties] = True
    return mask


def lowest_by_size(scores: torch.Tensor, sizes: torch.Tensor, target: float) -> torch.Tensor:
    """Mask of the lowest-scoring units whose total size comes closest to ``target`` (units: tiles of a block
    pattern, whose sizes differ at the edges)."""
    order = torch.argsort(scores, stable=True)
    total = torch.cat([sizes.new_zeros(1), sizes[order].double().cumsum(0)])
    count = int((total - target).abs().argmin())
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[order[:count]] = True
    return mask


# ------------------------------------------------------------------------------------------------ verification


def zero_fraction(w: torch.Tensor, pattern: Pattern) -> float:
    """Fraction of the weight's elements the pattern accounts as zero: exact zeros, or for blocks only the elements
    of all-zero tiles (a stray zero inside a stored tile does not make the kernel skip anything)."""
    if w.numel() == 0:
        return 0.0
    if pattern.kind == "block":
        zero_tiles, sizes = block_scores((w != 0).float(), pattern.block)
        return float(sizes[zero_tiles == 0].sum()) / w.numel()
    return float((w == 0).sum()) / w.numel()


def verify_pattern(w: torch.Tensor, pattern, *, name: str = "weight", min_sparsity: float | None = None) -> None:
    """Raise :class:`VerificationError` if ``w`` breaks ``pattern`` (N:M groups with too many non-zeros) or holds
    fewer zeros than ``min_sparsity`` in the pattern's units (elements, or all-zero tiles for blocks)."""
    pattern = parse_pattern(pattern)
    if pattern.kind == "n:m":
        if w.dim() < 2 or (problem := nm_problem(w.shape, pattern)):
            raise VerificationError(f"{name} {tuple(w.shape)} cannot hold pattern {pattern}: "
                                    f"{problem or 'it is not a matrix'}")
        view = nm_view(w)
        counts = (view.reshape(view.shape[0], -1, pattern.m) != 0).sum(-1)
        bad = (counts > pattern.n).nonzero()
        if bad.numel():
            row, group = (int(v) for v in bad[0])
            raise VerificationError(
                f"{name} {tuple(w.shape)} breaks pattern {pattern}: {bad.shape[0]} group(s) of {pattern.m} hold more "
                f"than {pattern.n} non-zeros (first: row {row} of the input-dim view, columns "
                f"{group * pattern.m}..{group * pattern.m + pattern.m - 1} hold {int(counts[row, group])})")
    if min_sparsity is not None:
        have = zero_fraction(w, pattern)
        if have + 1e-12 < min_sparsity:
            unit = f"all-zero {pattern} tiles" if pattern.kind == "block" else "zeros"
            raise VerificationError(f"{name} {tuple(w.shape)} has {have:.4%} of its elements in {unit}; "
                                    f"pattern {pattern} at this layer requires {min_sparsity:.4%}")


# ------------------------------------------------------------------------------------------------ planning


def keep_masks(scores: dict[str, torch.Tensor], pattern: Pattern, sparsity: float,
               scope: str) -> dict[str, torch.Tensor]:
    """Weight path -> boolean keep mask (shaped like the weight) realising ``pattern`` at ``sparsity``.

    ``scope="local"``: every weight reaches the sparsity on its own; ``"global"``: the lowest scores over all the
    weights together are zeroed, so layers with many unimportant weights give up more (N:M patterns are per group,
    so the scope does not change them).
    """
    if pattern.kind == "n:m":
        return {k: nm_mask(s, pattern) for k, s in scores.items()}
    names = list(scores)
    if pattern.kind == UNSTRUCTURED:
        flats = [scores[k].flatten() for k in names]
        if scope == "local":
            return {k: ~lowest_k(f, round(sparsity * f.numel())).reshape(scores[k].shape) for k, f in zip(names, flats)}
        cut = lowest_k(torch.cat(flats), round(sparsity * sum(f.numel() for f in flats)))
        return {k: ~part.reshape(scores[k].shape) for k, part in zip(names, cut.split([f.numel() for f in flats]))}
    tiles = {k: block_scores(scores[k], pattern.block) for k in names}
    if scope == "local":
        zero = {k: lowest_by_size(m.flatten(), s.flatten(), sparsity * scores[k].numel())
                for k, (m, s) in tiles.items()}
    else:
        counts = [tiles[k][0].numel() for k in names]
        cut = lowest_by_size(torch.cat([tiles[k][0].flatten() for k in names]),
                             torch.cat([tiles[k][1].flatten() for k in names]),
                             sparsity * sum(scores[k].numel() for k in names))
        zero = dict(zip(names, cut.split(counts)))
    return {k: expand_blocks(~zero[k].reshape(tiles[k][0].shape), scores[k].shape, pattern.block) for k in names}
