"""slimgraph's IR: capture, typed node metadata, a networkx view and the verifier."""

from .capture import capture, dynamo_constant_inputs
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
    "dynamo_constant_inputs",
    "graph_info",
    "node_info",
    "propagate",
    "refresh",
    "to_networkx",
    "verify",
]
