"""Fold parameter-only subgraphs into constants.

    w (param) -> t -> mul(2) -> linear(x, ., b)        w' (buffer = (w.t() * 2)) -> linear(x, w', b)

A node whose inputs all derive from parameters, buffers or literals (never from a graph input or a
symbolic size) is evaluated once at compile time; each such subgraph's last node (the "frontier", read
by non-constant code) becomes a ``get_attr`` of the computed tensor. Random ops and impure nodes are
never folded, and a fold that would store much more than it removes (e.g. ``expand`` of a small
tensor to a large one) is left alone and reported: constant memory must not blow up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..ir.graph_utils import add_constant, get_attr_tensor, op_name
from ..ir.propagate import copy_provenance
from .base import Pass, PassResult, register_pass
from .dce import tidy


def _is_random(target) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in target.tags
    return False


def _constant_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    constant: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            if get_attr_tensor(gm, node) is not None:
                constant.add(node)
        elif node.op == "call_function":
            if node.is_impure() or _is_random(node.target):
                continue
            if not isinstance(node.target, torch._ops.OpOverload):
                continue
            inputs = node.all_input_nodes
            if all(i in constant for i in inputs):
                constant.add(node)
    return constant


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = "evaluate parameter-only subgraphs once, store the results"
    max_growth: float = 2.0  # folded bytes may be at most this multiple of the bytes they replace (+64 KiB)

    def run(self, gm: fx.GraphModule) -> PassResult:
        constant = _constant_nodes(gm)
        frontier = [
            n for n in gm.graph.nodes
            if n in constant and n.op == "call_function" and any(u not in constant for u in n.users)
        ]
        if not frontier:
            return PassResult(gm, False, {"folded": 0})
        values: dict[fx.Node, object] = {}
        folded, notes = 0, []
        for node in gm.graph.nodes:  # evaluate every constant call node in order (cheap: few and small)
            if node not in constant:
                continue
            if node.op == "get_attr":
                values[node] = get_attr_tensor(gm, node)
                continue
            args = pytree.tree_map_only(fx.Node, lambda a: values[a], node.args)
            kwargs = pytree.tree_map_only(fx.Node, lambda a: values[a], node.kwargs)
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
        for node in frontier:
            value = values[node]
            if not isinstance(value, torch.Tensor):
                continue
            leaves = _leaf_bytes(node, constant, values)
            limit = self.max_growth * leaves + 65536
            size = value.numel() * value.element_size()
            if size > limit:
                notes.append(f"left {node.name} ({op_name(node.target)}) unfolded: it would store "
                             f"{size / 1e6:.1f} MB to replace {leaves / 1e6:.1f} MB")
                continue
            target = add_constant(gm, value.detach().clone().contiguous(), f"_folded.{node.name}")
            with gm.graph.inserting_before(node):
                attr = gm.graph.get_attr(target)
            attr.meta["val"] = node.meta.get("val")
            copy_provenance(attr, node)
            node.replace_all_uses_with(attr)
            folded += 1
        if folded:
            _move_get_attrs_first(gm)
            tidy(gm)
        return PassResult(gm, folded > 0, {"folded": folded}, notes)


def _leaf_bytes(node: fx.Node, constant: set[fx.Node], values) -> int:
    seen, stack, total = set(), [node], 0
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            t = values.get(n)
            total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
        stack.extend(i for i in n.all_input_nodes if i in constant)
    return total


def _move_get_attrs_first(gm: fx.GraphModule) -> None:
    """Keep get_attr nodes ahead of compute, the layout torch.export produces (cosmetic, readable dumps)."""
    graph = gm.graph
    anchor = next((n for n in graph.nodes if n.op not in ("placeholder", "get_attr")), None)
    if anchor is None:
        return
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.all_input_nodes:
            anchor.prepend(node)
