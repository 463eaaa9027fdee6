"""Typed metadata carried by the IR.

Each fx node owns one :class:`NodeInfo` under ``node.meta["slimgraph"]`` (filled by
:func:`slimgraph.ir.propagate.propagate`), and each captured GraphModule owns one :class:`GraphInfo`
under ``gm.meta["slimgraph"]`` that records how it was captured and which sample inputs drive it.
Torch's own conventions (``node.meta["val"]`` fake tensors, ``["tensor_meta"]``) are kept as well so
torch utilities keep working on our graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

NODE_KEY = "slimgraph"
GRAPH_KEY = "slimgraph"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor value. Symbolic dims hold their example value."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    dynamic_dims: tuple[int, ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __str__(self) -> str:
        dims = [("?" if i in self.dynamic_dims else "") + str(s) for i, s in enumerate(self.shape)]
        return f"{str(self.dtype).removeprefix('torch.')}[{','.join(dims)}]"


@dataclass
class NodeInfo:
    """What slimgraph knows about one node."""

    outputs: tuple[TensorSpec | None, ...] = ()
    params: int = 0  # elements of parameters/buffers read directly by this node
    macs: int = 0  # multiply-accumulates of one forward call at the example shapes
    flops: int = 0
    module: str = ""  # qualified name of the nn.Module that emitted the node ("" = top level)
    module_type: str = ""

    @property
    def spec(self) -> TensorSpec | None:
        return self.outputs[0] if self.outputs else None

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.spec.shape if self.spec is not None else None

    @property
    def dtype(self) -> torch.dtype | None:
        return self.spec.dtype if self.spec is not None else None


@dataclass
class GraphInfo:
    """How a GraphModule was captured, and the inputs that drive numeric checks and calibration."""

    example_args: tuple = ()
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "export"  # "export" | "symbolic_trace" | "dynamo" | "archive"
    dynamic_batch: bool = False  # dim 0 of some input is symbolic
    # input name (forward()'s parameter, or "args[i]"/a pytree path) -> dims that stay symbolic in the graph,
    # so the module accepts other sizes there; written by capture, kept by every pass and by archives
    dynamic_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # the capture rung that traced: "all" | "batch+sequence" | "batch" | "static" | "given" (the user's spec)
    shape_policy: str = "static"
    shape_notes: list[str] = field(default_factory=list)  # every fallback and specialisation, for the user
    applied: list[str] = field(default_factory=list)  # names of the passes that changed the graph
    history: list[Any] = field(default_factory=list)  # PassRecords of every pipeline run on the graph
    # weight attribute name -> sparsity pattern ("unstructured", "2:4", "32x32") that fine-tuning must keep:
    # written by the sparsify pass, read by distillation (zeros stay zero) and stored in archives
    sparsity: dict[str, str] = field(default_factory=dict)


def node_info(node: fx.Node) -> NodeInfo | None:
    return node.meta.get(NODE_KEY)


def graph_info(gm: fx.GraphModule) -> GraphInfo:
    info = gm.meta.get(GRAPH_KEY)
    if info is None:
        info = GraphInfo()
        gm.meta[GRAPH_KEY] = info
    return info
