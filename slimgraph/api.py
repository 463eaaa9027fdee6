"""The standalone Python API: one function per job, each returning a new module."""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx
import torch.nn as nn

from .ir.capture import capture_or_copy
from .passes.base import Pass
from .passes.manager import PassManager

DEFAULT_PIPELINE = "fold-constants,fold-bn,fuse,dce"


def optimize(
    model: nn.Module,
    example_inputs,
    pipeline: str | Sequence[str | Pass] = DEFAULT_PIPELINE,
    *,
    example_kwargs: dict | None = None,
    check: bool = True,
) -> fx.GraphModule:
    """Capture ``model`` and run ``pipeline`` over it; returns a runnable GraphModule.

    ``pipeline=""`` only captures. With ``check`` (default) every pass is checked numerically against the
    graph before it on the example inputs: lossless passes must match to float tolerance, lossy ones
    have their error recorded in ``slimgraph.ir.graph_info(result).history``.
    """
    gm = capture_or_copy(model, example_inputs, example_kwargs)
    return PassManager(pipeline, check_numerics=check).run(gm).gm
