"""The standalone Python API: one function per job, each returning a new module."""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx
import torch.nn as nn

from .defaults import LOSSLESS_PIPELINE
from .ir.capture import capture_or_copy
from .passes.base import Pass
from .passes.manager import PassManager

DEFAULT_PIPELINE = LOSSLESS_PIPELINE


def optimize(
    model: nn.Module,
    example_inputs,
    pipeline: str | Sequence[str | Pass] = DEFAULT_PIPELINE,
    *,
    example_kwargs: dict | None = None,
    check: bool = True,
    dynamic_shapes=None,
) -> fx.GraphModule:
    """Capture ``model`` and run ``pipeline`` over it; returns a runnable GraphModule.

    ``pipeline=""`` only captures. With ``check`` (default) every pass is checked numerically against the
    graph before it on the example inputs: lossless passes must match to float tolerance, lossy ones
    have their error recorded in ``slimgraph.ir.graph_info(result).history``. ``dynamic_shapes`` overrides
    which input dims stay symbolic (a ``torch.export`` spec; default: batch and sequence/spatial dims where the
    model allows, see docs/dynamic-shapes.md).
    """
    options = {} if dynamic_shapes is None else {"dynamic_shapes": dynamic_shapes}
    gm = capture_or_copy(model, example_inputs, example_kwargs, **options)
    return PassManager(pipeline, check_numerics=check).run(gm).gm
