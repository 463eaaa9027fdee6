"""Quantization's side of calibration: the batch runner is shared (:mod:`slimgraph.ir.calibration`); what is
quantization's own is the check that every watched activation is finite, so bad calibration data fails with
the node's name instead of silently producing a NaN scale.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import InputError
from ..ir.calibration import describe


def check_finite(node: fx.Node, value, batch: int) -> None:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
        bad = "NaN" if torch.isnan(value).any() else "Inf"
        raise InputError(
            f"calibration batch {batch}: {describe(node)} produced {bad} values, so no int8 scale can be computed "
            "for the layers it feeds; check the calibration data and the model's numerics at that node"
        )
