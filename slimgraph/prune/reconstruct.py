"""Least-squares reconstruction of the GEMMs that lose input channels to pruning.

Removing FFN neurons or attention heads deletes columns of the consumer's weight (the FFN down-projection,
the attention output projection). Plain slicing keeps the surviving columns as they were, so whatever the
removed channels contributed is simply lost. The kept channels usually correlate with the removed ones, so
the consumer can do better: on calibration data, with X its full input and K the kept columns,

    minimize  ||X_K A^T - X W^T||^2 + lam * ||A - W_K||^2      (the bias joins as a column of ones)

which has the closed form  A^T = (G_KK + lam I)^-1 (G_K: W^T + lam W_K^T)  with G = X^T X. Only the Gram
matrix of each consumer's input is collected (one forward pass over the calibration batches), so the cost is
K^2 doubles per consumer and one small solve. The proximal term pulls the answer towards plain slicing rather
than towards zero: when the removed channels carry nothing (planted dead units) the answer *is* plain
slicing, and on the calibration data the reconstruction error can never exceed that of plain slicing.

The inputs are the original model's (one-shot, like the importance scores), not those of the progressively
pruned model; only ``aten.linear`` consumers with a weight attribute of their own are reconstructed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.fx as fx

from ..errors import InputError
from ..ir import calibration
from ..ir.calibration import NodeValues, normalize_batches
from ..ir.graph_utils import _getattr_path, set_attr_tensor
from .analysis import Analysis
from .rewrite import keep_indices

aten = torch.ops.aten


@dataclass
class Consumer:
    """A linear layer that loses input columns, with what is needed to refit it."""

    node: str
    weight: str  # attribute path of W [N, K]
    bias: str | None
    keep_in: np.ndarray  # surviving input columns
    keep_out: np.ndarray | None  # surviving rows when the layer's outputs are pruned too
    original_weight: torch.Tensor | None = None
    original_bias: torch.Tensor | None = None
    gram: torch.Tensor | None = None  # [K(+1), K(+1)] float64 of [x, 1]
    rows: int = 0


@dataclass
class Reconstruction:
    """Relative error ||Y' - Y|| / ||Y|| of one consumer's output on the calibration data."""

    layer: str
    columns: str  # "3072->1536"
    error_sliced: float
    error_reconstructed: float


def find_consumers(a: Analysis, removed: np.ndarray) -> list[Consumer]:
    nodes = {n.name: n for n in a.gm.graph.nodes}
    uses: dict[str, int] = {}
    for n in a.gm.graph.nodes:
        if n.op == "get_attr":
            uses[n.target] = uses.get(n.target, 0) + len(n.users)
    found: dict[str, Consumer] = {}
    for m in a.members:
        node = nodes.get(m.node)
        if (m.role != "in" or m.labels.ndim != 2 or node is None or node.target != aten.linear.default
                or m.node in found):
            continue
        w = node.args[1]
        if not (isinstance(w, fx.Node) and w.op == "get_attr" and w.target == m.target and uses.get(m.target) == 1):
            continue  # a shared or computed weight: refitting it for one reader would break the others
        keep_in = keep_indices(a, m.labels, 1, removed)
        if len(keep_in) == m.labels.shape[1]:
            continue
        bias = node.args[2] if len(node.args) > 2 else None
        bias_target = bias.target if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
        if bias is not None and bias_target is None:
            continue
        keep_out = None
        for other in a.members:  # rows go when the layer's own output units are pruned
            if other.target == m.target and other.labels.shape[0] > 1:
                rows = keep_indices(a, other.labels, 0, removed)
                if len(rows) < other.labels.shape[0]:
                    keep_out = rows
        found[m.node] = Consumer(m.node, m.target, bias_target, keep_in, keep_out)
    return list(found.values())


def collect_grams(a: Analysis, consumers: list[Consumer], calib) -> None:
    """Fill each consumer's Gram matrix of its (bias-augmented) input over the calibration batches."""
    nodes = {n.name: n for n in a.gm.graph.nodes}
    watch: dict[fx.Node, list[Consumer]] = {}
    for c in consumers:
        c.original_weight = _getattr_path(a.gm, c.weight).detach().clone()
        c.original_bias = _getattr_path(a.gm, c.bias).detach().clone() if c.bias else None
        watch.setdefault(nodes[c.node].args[0], []).append(c)

    def add_gram(values: NodeValues, readers: list[Consumer]) -> None:
        out = values.result
        for c in readers:
            x = out.detach().reshape(-1, out.shape[-1]).double()
            if not torch.isfinite(x).all():
                raise InputError(f"reconstruct: the calibration data gives NaN/Inf at the input of {c.node}; "
                                 "check the calibration batches (or prune without reconstruct)")
            if c.bias is not None:
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            g = x.T @ x
            c.gram = g if c.gram is None else c.gram + g
            c.rows += x.shape[0]

    watchers = {node: [partial(add_gram, readers=readers)] for node, readers in watch.items()}
    calibration.watch(a.gm, normalize_batches(calib, a.gm), watchers, desc="prune: reconstruction statistics")


def refit(gm: fx.GraphModule, consumers: list[Consumer], damping: float = 0.01
          ) -> tuple[list[Reconstruction], list[str]]:
    """Replace each (already sliced) consumer's weight and bias by the least-squares answer."""
    done: list[Reconstruction] = []
    notes: list[str] = []
    for c in consumers:
        if c.gram is None:
            continue
        cols = list(c.keep_in) + ([c.gram.shape[0] - 1] if c.bias is not None else [])
        if c.rows < len(cols):
            notes.append(f"reconstruction skipped {c.node}: {c.rows} calibration rows for {len(cols)} unknowns; "
                         "pass more calibration batches")
            continue
        w_full = c.original_weight.double()
        if c.bias is not None:
            w_full = torch.cat([w_full, c.original_bias.double()[:, None]], dim=1)  # [N, K+1]
        w_full = w_full.to(c.gram.device)
        idx = torch.as_tensor(cols, dtype=torch.long, device=c.gram.device)
        g_kk, g_k = c.gram[idx][:, idx], c.gram[idx]
        w_k = w_full[:, idx]
        lam = damping * float(g_kk.diagonal().mean())
        lhs = g_kk + lam * torch.eye(len(cols), dtype=torch.float64, device=c.gram.device)
        new = torch.linalg.solve(lhs, g_k @ w_full.T + lam * w_k.T).T  # [N, |K|(+1)]
        energy = max(float(torch.einsum("nk,kl,nl->", w_full, c.gram, w_full)), 1e-30)
        done.append(Reconstruction(
            c.node, f"{c.original_weight.shape[1]}->{len(c.keep_in)}",
            max(0.0, _error(w_full, w_k, g_kk, g_k, c.gram) / energy) ** 0.5,  # rounding can dip below zero
            max(0.0, _error(w_full, new, g_kk, g_k, c.gram) / energy) ** 0.5))
        if c.keep_out is not None:
            new = new[torch.as_tensor(c.keep_out, dtype=torch.long, device=new.device)]
        dtype = c.original_weight.dtype
        set_attr_tensor(gm, c.weight, new[:, : len(c.keep_in)].to(dtype).contiguous())
        if c.bias is not None:
            set_attr_tensor(gm, c.bias, new[:, -1].to(c.original_bias.dtype).contiguous())
        c.gram = None  # K^2 doubles each: free them as soon as they are used
    return done, notes


def _error(w_full, a, g_kk, g_k, gram) -> float:
    """||X_K a^T - X w_full^T||^2 from the Gram matrix alone."""
    return float(torch.einsum("nk,kl,nl->", a, g_kk, a) - 2 * torch.einsum("nk,kl,nl->", a, g_k, w_full)
                 + torch.einsum("nk,kl,nl->", w_full, gram, w_full))
