"""Fold parameter-only subgraphs into constants.

    w (param) -> t -> mul(2) -> linear(x, ., b)        w' (buffer = (w.t() * 2)) -> linear(x, w', b)

A node whose inputs all derive from parameters, buffers or literals (never from a graph input or a
symbolic size) is evaluated once at compile time; each such subgraph's last node (the "frontier", read
by non-constant code) becomes a ``get_attr`` of the computed tensor. Random ops and impure nodes are
never folded, and a fold that would store much more than it removes (e.g. ``expand`` of a small
tensor to a large one) is left alone and reported: constant memory must not blow up.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..ir.graph_utils import add_constant, get_attr_tensor, op_name, set_attr_tensor
from ..ir.match import Pattern, Reject, apply_patterns
from ..ir.propagate import copy_provenance
from .base import Pass, PassResult, register_pass
from .dce import tidy


def _is_random(target) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in target.tags
    return False


class _Constants:
    """Which nodes compute only from constants, and (once asked) their values, evaluated in graph order."""

    def __init__(self, gm: fx.GraphModule, max_growth: float):
        self.gm, self.max_growth = gm, max_growth
        self.nodes: set[fx.Node] = set()
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                if get_attr_tensor(gm, node) is not None:
                    self.nodes.add(node)
            elif (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
                  and not node.is_impure() and not _is_random(node.target)
                  and all(i in self.nodes for i in node.all_input_nodes)):
                self.nodes.add(node)
        self.frontier = {n for n in self.nodes if n.op == "call_function" and any(u not in self.nodes for u in n.users)}
        self._values: dict[fx.Node, object] | None = None

    def value(self, node: fx.Node):
        if self._values is None:  # evaluate every constant call node in order (cheap: few and small)
            self._values = {}
            for n in self.gm.graph.nodes:
                if n not in self.nodes:
                    continue
                if n.op == "get_attr":
                    self._values[n] = get_attr_tensor(self.gm, n)
                    continue
                args = pytree.tree_map_only(fx.Node, lambda a: self._values[a], n.args)
                kwargs = pytree.tree_map_only(fx.Node, lambda a: self._values[a], n.kwargs)
                with torch.no_grad():
                    self._values[n] = n.target(*args, **kwargs)
        return self._values[node]

    def foldable(self, gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | Reject | None:
        """The node's value if it is a frontier tensor that does not blow up constant memory."""
        if node not in self.frontier:
            return None
        value = self.value(node)
        if not isinstance(value, torch.Tensor):
            return None
        leaves = self._leaf_bytes(node)
        size = value.numel() * value.element_size()
        if size > self.max_growth * leaves + 65536:
            return Reject(f"folding {op_name(node.target)} would store {size / 1e6:.1f} MB to replace "
                          f"{leaves / 1e6:.1f} MB, so it stays unfolded")
        return value

    def _leaf_bytes(self, node: fx.Node) -> int:
        seen, stack, total = set(), [node], 0
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "get_attr":
                t = self.value(n)
                total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
            stack.extend(i for i in n.all_input_nodes if i in self.nodes)
        return total


def _store(constants: _Constants, gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> None:
    value = value.detach().clone().contiguous()
    target = _reuse_weight_name(constants, gm, node, value)
    if target is None:
        target = add_constant(gm, value, f"_folded.{node.name}")
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(target)
    attr.meta["val"] = node.meta.get("val")
    copy_provenance(attr, node)
    node.replace_all_uses_with(attr)


def _reuse_weight_name(constants: _Constants, gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> str | None:
    """Store the fold under its weight's own name when the weight has no reader left: ``w -> t -> linear``
    becomes ``linear(x, w')`` with ``w'`` still called ``lm_head.weight``, so reports, quantized names
    (``lm_head.weight_int8``) and saved files keep naming the layer, not ``_folded.transpose_3``.

    The weight is the largest tensor the folded subgraph reads, and the fold must hold as many elements as it (a
    transpose, reshape, cast or scaling of it, not a reduction); a weight that some other node still reads (tied
    embeddings, a vector folded from it) keeps its value, and the fold gets a fresh ``_folded.*`` name.
    """
    inside, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in inside:
            continue
        inside.add(n)
        stack.extend(i for i in n.all_input_nodes if i in constants.nodes)
    leaves = [n for n in inside if n.op == "get_attr"]
    if not leaves:
        return None
    weight = max(leaves, key=lambda n: (constants.value(n).numel(), n.target))
    if constants.value(weight).numel() != value.numel():  # a reduction or an expansion is not "the weight"
        return None
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == weight.target]
    if any(u not in inside for r in readers for u in r.users):
        return None
    set_attr_tensor(gm, weight.target, value)  # keeps the old kind (parameter or buffer)
    return weight.target


def fold_patterns(constants: _Constants) -> list[Pattern]:
    return [
        # f(constants...) -> non-constant reader  =>  get_attr(f's value, computed now)
        Pattern("folded", None, constants.foldable, functools.partial(_store, constants)),
    ]


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = "evaluate parameter-only subgraphs once, store the results"
    max_growth: float = 2.0  # folded bytes may be at most this multiple of the bytes they replace (+64 KiB)

    def run(self, gm: fx.GraphModule) -> PassResult:
        constants = _Constants(gm, self.max_growth)
        if not constants.frontier:
            return PassResult(gm, False, {"folded": 0})
        rewrites = apply_patterns(gm, fold_patterns(constants))
        if rewrites.total:
            _move_get_attrs_first(gm)
            tidy(gm)
        return PassResult(gm, rewrites.total > 0, {"folded": rewrites.total}, rewrites.notes)


def _move_get_attrs_first(gm: fx.GraphModule) -> None:
    """Keep get_attr nodes ahead of compute, the layout torch.export produces (cosmetic, readable dumps)."""
    graph = gm.graph
    anchor = next((n for n in graph.nodes if n.op not in ("placeholder", "get_attr")), None)
    if anchor is None:
        return
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.all_input_nodes:
            anchor.prepend(node)
