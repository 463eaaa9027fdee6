"""Checking a whole graph against the sparsity patterns recorded on it (after fine-tuning, loading, ...)."""

from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import VerificationError
from ..ir.graph_utils import _getattr_path
from ..ir.info import graph_info
from .patterns import verify_pattern


def verify_sparsity(gm: fx.GraphModule, min_sparsity: dict[str, float] | None = None) -> None:
    """Raise :class:`VerificationError` naming the first weight of ``graph_info(gm).sparsity`` that is missing or
    breaks its pattern (``min_sparsity``: weight -> fraction of zeros it must still hold, e.g. from the report)."""
    for weight, pattern in graph_info(gm).sparsity.items():
        w = _getattr_path(gm, weight)
        if not isinstance(w, torch.Tensor):
            raise VerificationError(f"graph_info.sparsity names weight {weight!r} ({pattern}) but the graph has no "
                                    "such tensor")
        verify_pattern(w, pattern, name=f"weight {weight}", min_sparsity=(min_sparsity or {}).get(weight))
