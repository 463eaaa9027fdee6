"""Channel labels and the union-find that couples them.

Dependency analysis gives every channel produced by a prunable layer (a conv output channel, a linear
output feature, an embedding dimension) an integer *element id*. Each tensor value in the graph carries a
:class:`Labels` array telling, for every index along its channel-carrying ("tracked") dims, which element
it holds; ops that require two channels to be removed together (a residual add, q/k of one attention head,
the gate and up projections of a gated MLP) *union* their elements. The union-find classes are the units
pruning removes. ``-1`` in a label array marks a position that can never be removed (it comes from a
graph input, a constant, or an op the analysis does not understand).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIXED = -1


class UnionFind:
    """Union-find over element ids 0..n-1 with per-class flags (blocked reasons, head, approximate)."""

    def __init__(self):
        self.parent = np.zeros(0, dtype=np.int64)
        self.source = np.zeros(0, dtype=np.int64)  # which Source an element was created by
        self.blocked: dict[int, list[str]] = {}  # root -> reasons
        self.approximate: dict[int, list[str]] = {}
        self.heads: set[int] = set()  # roots of classes that are attention heads

    def new(self, n: int, source: int) -> np.ndarray:
        start = len(self.parent)
        ids = np.arange(start, start + n, dtype=np.int64)
        self.parent = np.concatenate([self.parent, ids])
        self.source = np.concatenate([self.source, np.full(n, source, dtype=np.int64)])
        return ids

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return int(root)

    def find_all(self, ids: np.ndarray) -> np.ndarray:
        """Vectorized find (labels < 0 stay as they are)."""
        out = np.asarray(ids, dtype=np.int64).copy()
        valid = out >= 0
        if not valid.any():
            return out
        roots = out[valid]
        while True:
            nxt = self.parent[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        out[valid] = roots
        return out

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        for flags in (self.blocked, self.approximate):
            if rb in flags:
                flags.setdefault(ra, []).extend(flags.pop(rb))
        if rb in self.heads:
            self.heads.discard(rb)
            self.heads.add(ra)
        return ra

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union a[i] with b[i] wherever both are real elements."""
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        mask = (a >= 0) & (b >= 0) & (a != b)
        if not mask.any():
            return
        pairs = np.unique(np.stack([a[mask], b[mask]], axis=1), axis=0)
        for x, y in pairs:
            self.union(int(x), int(y))

    def union_all(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids).ravel())
        ids = ids[ids >= 0]
        for other in ids[1:]:
            self.union(int(ids[0]), int(other))

    def roots(self, ids: np.ndarray) -> list[int]:
        """The distinct classes of the labelled ids (FIXED ones left out)."""
        return [int(r) for r in np.unique(self.find_all(np.asarray(ids).ravel())) if r >= 0]

    def block(self, ids: np.ndarray, reason: str) -> None:
        for root in self.roots(ids):
            _add_reason(self.blocked, root, reason)

    def mark_approximate(self, ids: np.ndarray, reason: str) -> None:
        for root in self.roots(ids):
            _add_reason(self.approximate, root, reason)

    def mark_heads(self, ids: np.ndarray) -> None:
        self.heads.update(self.roots(ids))

    def is_blocked(self, root: int) -> bool:
        return self.find(root) in self.blocked


@dataclass
class Labels:
    """Element ids along the tracked dims of one tensor value.

    ``array.ndim`` equals the tensor's rank; along a tracked dim the array has the tensor's size, along an
    untracked dim it has size 1 (labels do not vary there: batch, sequence, spatial dims...).
    """

    array: np.ndarray
    tracked: tuple[bool, ...]

    @property
    def ndim(self) -> int:
        return len(self.tracked)

    def tracked_dims(self) -> list[int]:
        return [d for d, t in enumerate(self.tracked) if t]

    def materialize(self, shape: tuple[int, ...], dims) -> np.ndarray:
        """The array broadcast to full size along ``dims`` (others stay as they are)."""
        target = list(self.array.shape)
        for d in dims:
            target[d] = shape[d]
        return np.broadcast_to(self.array, tuple(target))


def make_labels(array: np.ndarray, tracked) -> Labels | None:
    tracked = tuple(bool(t) for t in tracked)
    if not any(tracked):
        return None
    return Labels(np.ascontiguousarray(array), tracked)


def source_labels(ids: np.ndarray, ndim: int, dim: int) -> Labels:
    """Fresh elements along ``dim`` of a rank-``ndim`` tensor."""
    shape = [1] * ndim
    shape[dim] = len(ids)
    tracked = [False] * ndim
    tracked[dim] = True
    return Labels(ids.reshape(shape), tuple(tracked))


def _add_reason(reasons_of: dict[int, list[str]], root: int, reason: str) -> None:
    reasons = reasons_of.setdefault(root, [])
    if reason not in reasons:
        reasons.append(reason)
