"""A networkx view of an fx graph, for analyses that want graph algorithms (reachability, components,
topological walks) rather than fx's linked list. The view is read-only: rewrites go through fx."""

from __future__ import annotations

import networkx as nx
import torch.fx as fx

from .graph_utils import op_name
from .info import node_info


def to_networkx(gm: fx.GraphModule) -> nx.MultiDiGraph:
    """Nodes are fx node names with attributes ``node`` (the fx.Node), ``op``, ``target`` and
    ``info`` (NodeInfo); an edge ``producer -> consumer`` carries ``index``, the argument position
    (flattened over args then kwargs) where the consumer reads the producer."""
    g = nx.MultiDiGraph()
    for node in gm.graph.nodes:
        g.add_node(
            node.name,
            node=node,
            op=node.op,
            target=op_name(node.target) if node.op == "call_function" else str(node.target),
            info=node_info(node),
        )
    for node in gm.graph.nodes:
        for index, arg in enumerate(_flat_node_args(node)):
            g.add_edge(arg.name, node.name, index=index)
    return g


def _flat_node_args(node: fx.Node) -> list[fx.Node]:
    flat: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: flat.append(a))
    return flat
