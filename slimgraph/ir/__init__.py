"""slimgraph's IR: capture, typed node metadata, a networkx view and the verifier."""

from .capture import capture, capture_or_copy, dynamo_constant_inputs, is_captured
from .info import GraphInfo, NodeInfo, TensorSpec, graph_info, node_info
from .nxview import to_networkx
from .propagate import annotate, propagate, refresh
from .verify import verify

__all__ = [
    "GraphInfo",
    "NodeInfo",
    "TensorSpec",
    "annotate",
    "capture",
    "capture_or_copy",
    "dynamo_constant_inputs",
    "graph_info",
    "is_captured",
    "node_info",
    "propagate",
    "refresh",
    "to_networkx",
    "verify",
]
