"""Ops that passes insert as ``torch.ops.slimgraph.*`` nodes: each with a pure-torch reference (runs
anywhere), fake/meta support for torch.compile and torch.export, and on CUDA a Triton kernel."""

from . import epilogue  # noqa: F401 - registers slimgraph::linear_act and slimgraph::conv_act
from .epilogue import ACTIVATIONS, apply_activation

__all__ = ["ACTIVATIONS", "apply_activation"]
