"""Importance of pruning units, aggregated over every parameter slice of a group.

* ``l1`` / ``l2``: magnitude of all the weights a unit owns (producer rows, consumer columns, norm
  scales), each member normalized by its mean so a wide layer does not drown a narrow one. Biases and
  norm shifts are left out: they carry no signal about a unit's use, and once normalized their near-zero
  values would drown the weights' ranking (a BN-heavy CNN fell to chance accuracy that way);
* ``bn-scale``: |gamma| of the BatchNorms in the group (network slimming); groups without BatchNorm
  fall back to ``l2`` and say so;
* ``taylor``: first-order Taylor |w * dL/dw| summed over calibration batches, with L the sum of the
  squared outputs (no labels needed) unless a ``loss_fn`` is given;
* ``act``: activation-aware magnitude: for every consumer reading the unit, the norm of its weight column
  times the norm of the activation it multiplies, over calibration batches (structured Wanda/FLAP style);
  a unit that is large but never excited, or excited but never read, ranks low. Best for transformers;
* ``random``: a seeded baseline.

Buffers (BN running statistics) never count: a unit whose weights are all zero has zero importance
whatever its statistics, which is what makes planted dead units removable exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.fx as fx

from ..errors import InputError
from ..ir import calibration
from ..ir.calibration import NodeValues, normalize_batches
from ..ir.graph_utils import _getattr_path
from .analysis import Analysis, Group, Member

CRITERIA = ("l1", "l2", "act", "bn-scale", "taylor", "random")


def _energy(member: Member, tensor: torch.Tensor, mode: str) -> np.ndarray:
    """Per-position magnitude (l1, squared l2, or the raw values) summed over the member's unlabelled dims."""
    t = tensor.detach()
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    reduce_dims = [d for d in range(t.dim()) if member.labels.shape[d] == 1 and t.shape[d] != 1]
    if mode in ("l1", "l2"):
        if not reduce_dims:
            values = t.abs() if mode == "l1" else t * t
        elif t.dim() - 1 in reduce_dims:  # contiguous rows: one fused pass, no temporary of the whole weight
            values = torch.linalg.vector_norm(t, ord=1 if mode == "l1" else 2, dim=reduce_dims, keepdim=True)
            values = values if mode == "l1" else values * values
        else:  # column sums: vector_norm is ~10x slower across the outer dim than a temporary + sum
            values = (t.abs() if mode == "l1" else t * t).sum(dim=reduce_dims, keepdim=True)
    else:
        values = t.sum(dim=reduce_dims, keepdim=True) if reduce_dims else t
    return np.broadcast_to(values.cpu().numpy(), member.labels.shape)


def _accumulate(a: Analysis, member: Member, energy: np.ndarray, scores: dict[int, float], normalize: bool):
    roots = a.uf.find_all(member.labels)
    mask = roots >= 0
    if not mask.any():
        return
    r = roots[mask].ravel()
    e = np.asarray(energy)[mask].ravel().astype(np.float64)
    uniq, inverse = np.unique(r, return_inverse=True)
    sums = np.bincount(inverse, weights=e)
    if normalize:
        mean = sums.mean()
        if mean > 0:
            sums = sums / mean
    for root, value in zip(uniq, sums):
        scores[int(root)] += float(value)


def unit_scores(
    a: Analysis,
    groups: list[Group],
    criterion: str,
    *,
    calib: Iterable[tuple] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    channel_stats: dict | None = None,
) -> tuple[dict[int, float], list[str]]:
    """Score every unit of ``groups``; returns (root -> score, notes)."""
    if criterion not in CRITERIA:
        raise InputError(f"unknown importance {criterion!r}; choose one of {', '.join(CRITERIA)}")
    units = {u for g in groups for u in g.units}
    scores: dict[int, float] = defaultdict(float)
    notes: list[str] = []
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {u: float(rng.random()) for u in sorted(units)}, notes
    # only members that carry a unit being ranked: a blocked group's 23M-element embedding costs time for nothing
    ranked = np.fromiter(units, dtype=np.int64)
    members = [m for m in a.members if m.is_param and m.role != "bias"
               and np.isin(a.uf.find_all(m.labels), ranked).any()]
    tensors = {m.target: _getattr_path(a.gm, m.target) for m in members}
    if criterion == "bn-scale":
        with_bn = set()
        for m in members:
            if m.arg == 1 and m.op in ("aten.batch_norm", "aten._native_batch_norm_legit_no_training"):
                _accumulate(a, m, _energy(m, tensors[m.target], "l1"), scores, normalize=False)
                with_bn.update(int(r) for r in np.unique(a.uf.find_all(m.labels)) if r >= 0)
        fallback = [g for g in groups if not any(u in with_bn for u in g.units)]
        if fallback:
            notes.append(f"{len(fallback)} group(s) have no BatchNorm: ranked by l2 instead of bn-scale")
            l2, _ = unit_scores(a, fallback, "l2")
            scores.update(l2)
    elif criterion == "act":
        stats = channel_stats if channel_stats is not None else input_channel_stats(a, calib)
        for m in members:
            if m.role == "in" and m.node in stats:
                weight_cols = _energy(m, tensors[m.target], "l2") ** 0.5
                norm = stats[m.node].norm.reshape(m.labels.shape)
                _accumulate(a, m, weight_cols * norm, scores, normalize=True)
        ranked_without = [g for g in groups if not any(scores.get(u) for u in g.units)]
        if ranked_without:
            notes.append(f"{len(ranked_without)} group(s) have no GEMM reading them: ranked by l2 instead of act")
            l2, _ = unit_scores(a, ranked_without, "l2")
            scores.update(l2)
    else:
        grads = _taylor_grads(a.gm, tensors, calib, loss_fn) if criterion == "taylor" else {}
        for m in members:
            if criterion == "taylor":
                if m.target not in grads:
                    continue
                energy = _energy(m, (tensors[m.target].detach() * grads[m.target]).abs(), "raw")
            else:
                energy = _energy(m, tensors[m.target], criterion)
            _accumulate(a, m, energy, scores, normalize=True)
    return {u: scores.get(u, 0.0) for u in units}, notes


def _taylor_grads(gm: fx.GraphModule, tensors: dict[str, torch.Tensor], calib, loss_fn) -> dict[str, torch.Tensor]:
    batches = normalize_batches(calib, gm)
    params = {k: t for k, t in tensors.items() if isinstance(t, torch.nn.Parameter)}
    saved = {k: p.requires_grad for k, p in params.items()}
    grads: dict[str, torch.Tensor] = {}
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for _, out in calibration.each_output(gm, batches, grad=True, desc="prune: taylor gradients"):
            with torch.enable_grad():
                leaves = [t for t in calibration.output_tensors(out) if t.is_floating_point()]
                loss = loss_fn(out) if loss_fn is not None else sum((t.float() ** 2).mean() for t in leaves)
            loss.backward()  # per batch: gradients add up, the autograd graph of each batch is freed
        for k, p in params.items():
            if p.grad is not None:
                grads[k] = p.grad.detach().clone()
    finally:
        for k, p in params.items():
            p.grad = None
            p.requires_grad_(saved[k])
    return grads


@dataclass
class ChannelStats:
    """Per input channel of one consumer (linear/conv with groups=1), over calibration data."""

    dim: int  # channel dim of the consumer's input
    sum: torch.Tensor  # [K] sum of the channel's values
    sq_sum: torch.Tensor  # [K] sum of squares
    count: int = 0  # values summed per channel

    @property
    def norm(self) -> np.ndarray:
        return self.sq_sum.sqrt().cpu().numpy()

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(1, self.count)


def input_channel_stats(a: Analysis, calib) -> dict[str, ChannelStats]:
    """Statistics of the input channels every linear/conv (groups=1) consumer of a prunable unit multiplies with
    its weight columns, over the calibration batches: consumer node name -> ChannelStats."""
    nodes = {n.name: n for n in a.gm.graph.nodes}
    watch: dict[fx.Node, list[tuple[str, int]]] = {}
    for m in a.members:
        node = nodes.get(m.node)
        if m.role != "in" or node is None or not isinstance(node.args[0], fx.Node) or m.labels.ndim < 2:
            continue
        if m.labels.ndim == 2:  # linear weight [N, K]: channels on the input's last dim
            dim = -1
        else:  # conv weight [O, I, ...]: channels on dim 1, usable when groups == 1
            w_val, x_val = node.args[1].meta.get("val"), node.args[0].meta.get("val")
            if w_val is None or x_val is None or w_val.shape[1] != x_val.shape[1]:
                continue
            dim = 1
        watch.setdefault(node.args[0], []).append((m.node, dim))
    if not watch:
        return {}
    stats: dict[str, ChannelStats] = {}

    def collect(values: NodeValues, consumers: list[tuple[str, int]]) -> None:
        if not isinstance(values.result, torch.Tensor):
            return
        x = values.result.detach().double()
        for consumer, dim in consumers:
            dims = [d for d in range(x.dim()) if d != dim % x.dim()]
            s, sq = x.sum(dim=dims), (x * x).sum(dim=dims)
            count = x.numel() // x.shape[dim]
            if consumer in stats:
                st = stats[consumer]
                st.sum, st.sq_sum, st.count = st.sum + s, st.sq_sum + sq, st.count + count
            else:
                stats[consumer] = ChannelStats(dim, s, sq, count)

    watchers = {node: [partial(collect, consumers=consumers)] for node, consumers in watch.items()}
    calibration.watch(a.gm, normalize_batches(calib, a.gm), watchers, desc="prune: activation statistics")
    return stats
