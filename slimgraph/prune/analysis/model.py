"""The analysis data model: sources, members, groups, the per-value labels and the rule registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx

from ...ir.graph_utils import get_attr_tensor, op_name
from ...ir.info import node_info
from ..labels import Labels, UnionFind, source_labels

aten = torch.ops.aten


@dataclass
class Source:
    node: str
    module: str
    op: str
    size: int


@dataclass
class Member:
    """A parameter or buffer slice that follows the elements it is labelled with."""

    target: str  # attribute path
    labels: np.ndarray  # rank of the tensor; tensor's size along labelled dims, 1 elsewhere
    role: str  # "out" (producer rows), "in" (consumer columns), "norm" (scales), "bias", "const"
    node: str
    module: str
    is_param: bool  # a trainable parameter (counts for importance); buffers such as BN statistics don't
    op: str = ""  # op of the reading node, e.g. "aten.batch_norm"
    arg: int = -1  # argument position at which that node reads the tensor


@dataclass
class SplitConstraint:
    """A view split a labelled dim into (outer, inner...): removals must be whole rows or whole columns."""

    array: np.ndarray  # labels moved to shape [rest, outer, inner]
    node: str


@dataclass
class Group:
    """Units coupled by the same layers; ``units`` are union-find roots, each removed as a whole."""

    index: int
    sources: tuple[int, ...]
    units: list[int]
    kind: str  # "heads" | "channels"
    blocked: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    unit_width: int = 1  # channels of the leading source per unit (head size for heads)

    @property
    def prunable(self) -> bool:
        return not self.blocked and len(self.units) > 1


@dataclass
class Analysis:
    gm: fx.GraphModule
    uf: UnionFind = field(default_factory=UnionFind)
    labels: dict[fx.Node, object] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    splits: list[SplitConstraint] = field(default_factory=list)
    pins: list[np.ndarray] = field(default_factory=list)  # element sets of which at least one must stay
    groups: list[Group] = field(default_factory=list)
    rule_failures: list[str] = field(default_factory=list)  # rules that raised: which rule, at which node, why

    # ------------------------------------------------------------------------------ helpers for rules

    def lab(self, arg) -> Labels | None:
        if isinstance(arg, fx.Node):
            value = self.labels.get(arg)
            return value if isinstance(value, Labels) else None
        return None

    @staticmethod
    def shape(arg) -> tuple[int, ...] | None:
        if not isinstance(arg, fx.Node):
            return None
        info = node_info(arg)
        if info is not None and info.spec is not None:
            return info.spec.shape
        val = arg.meta.get("val")
        if isinstance(val, torch.Tensor):
            return tuple(int(s) if isinstance(s, int) else int(s.node.hint or 1) for s in val.shape)
        return None

    def fresh_ids(self, node: fx.Node, size: int) -> np.ndarray:
        """``size`` new elements created by ``node`` (a new source of prunable units)."""
        info = node_info(node)
        self.sources.append(Source(node.name, info.module if info else "", op_name(node.target), size))
        return self.uf.new(size, len(self.sources) - 1)

    def fresh(self, node: fx.Node, size: int, ndim: int, dim: int) -> Labels:
        return source_labels(self.fresh_ids(node, size), ndim, dim)

    def member(self, attr: fx.Node, labels: np.ndarray, role: str, node: fx.Node) -> None:
        t = get_attr_tensor(self.gm, attr)
        if t is None:
            return
        info = node_info(node)
        arg = next((i for i, x in enumerate(node.args) if x is attr), -1)
        self.members.append(Member(attr.target, np.asarray(labels), role, node.name, info.module if info else "",
                                   isinstance(t, torch.nn.Parameter), op_name(node.target), arg))

    def block(self, labels: Labels | np.ndarray | None, reason: str) -> None:
        if labels is None:
            return
        arr = labels.array if isinstance(labels, Labels) else labels
        self.uf.block(arr, reason)

    def block_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            self.block(self.lab(arg), reason)


# ---------------------------------------------------------------------------------------------- rules

RULES: dict = {}


def rule(*targets):
    def deco(fn):
        for t in targets:
            RULES[t] = fn
        return fn

    return deco


def _reason(node: fx.Node, what: str) -> str:
    return f"{what} ({op_name(node.target) if node.op == 'call_function' else node.op} at {node.name})"



def _align(labels: Labels | None, ndim_in: int, out_ndim: int) -> Labels | None:
    if labels is None:
        return None
    pad = out_ndim - ndim_in
    return Labels(labels.array.reshape((1,) * pad + labels.array.shape), (False,) * pad + labels.tracked)
