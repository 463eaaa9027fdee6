"""The shared rewrite layer: op families, one argument accessor, legality checks and pattern lists.

A rewrite pass is a list of patterns, each with a one-line sketch of what it does::

    FOLD_PATTERNS = [                                   # passes/fold_bn.py
        # conv / conv_transpose / linear -> bn  =>  conv' (w * s, b * s + t)
        Pattern("folded_into_producer", BATCH_NORMS, _after_layer, _fold_into_producer),
        ...
    ]
    rewrites = apply_patterns(gm, FOLD_PATTERNS)        # counts per pattern, nodes left alone, notes

``apply_patterns`` walks the graph once, in order. At each call node it tries, in list order, every pattern
whose ``targets`` hold the node's op, for as long as the node is still in the graph (so ``linear -> add``
can fold the bias and the same linear then fuse its activation). ``legal(gm, node)`` answers

* ``None``: the pattern's shape is not there (skipped silently);
* ``Reject("why")``: the shape is there but the rewrite cannot be proven safe; the reason becomes a note;
* anything else: the match, handed to ``rewrite(gm, node, match)``, which edits the graph.

The legality helpers below are the questions every pass asks (is this the value's only reader, is this
weight a constant nobody else reads, do two values share a dtype), written once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .graph_utils import get_attr_tensor

aten = torch.ops.aten

# ------------------------------------------------------------------------------------------ op families


class OpFamily:
    """A named set of op overloads.

    aten ops are held by object; slimgraph's own ops (``linear_act``, ``conv_act``) by name and looked up
    when first asked, because ``ir`` sits below the packages that register them.
    """

    def __init__(self, name: str, ops: Iterable = (), slimgraph: Iterable[str] = ()):
        self.name = name
        self._ops = frozenset(ops)
        self._late = tuple(slimgraph)
        self._resolved: frozenset | None = None if self._late else self._ops

    def members(self) -> frozenset:
        if self._resolved is not None:
            return self._resolved
        found = [getattr(torch.ops.slimgraph, n, None) for n in self._late]
        members = self._ops | {packet.default for packet in found if packet is not None}
        if all(packet is not None for packet in found):
            self._resolved = members  # all registered: cache; otherwise ask again next time
        return members

    def __contains__(self, target) -> bool:
        return target in self.members()

    def __iter__(self):
        return iter(self.members())

    def __or__(self, other: OpFamily) -> OpFamily:
        return OpFamily(f"{self.name}|{other.name}", self._ops | other._ops, self._late + other._late)

    def __repr__(self) -> str:
        return f"OpFamily({self.name!r}, {len(self.members())} ops)"


# spatial dims of each aten conv overload (the fused conv_act covers all three: see conv_dims)
_CONV_DIMS = {
    aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3,
    aten.conv1d.padding: 1, aten.conv2d.padding: 2, aten.conv3d.padding: 3,
    aten.conv_transpose1d.default: 1, aten.conv_transpose2d.input: 2, aten.conv_transpose3d.input: 3,
}

CONVS = OpFamily("conv", [aten.conv1d.default, aten.conv2d.default, aten.conv3d.default])
# padding="same"/"valid": canonicalization rewrites them into CONVS where the kernel size is known
STRING_PADDING_CONVS = OpFamily("conv (string padding)", [aten.conv1d.padding, aten.conv2d.padding,
                                                          aten.conv3d.padding])
CONV_TRANSPOSES = OpFamily("conv_transpose", [aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                              aten.conv_transpose3d.input])
FUSED_CONVS = OpFamily("conv_act", slimgraph=["conv_act"])
ALL_CONVS = CONVS | STRING_PADDING_CONVS | FUSED_CONVS  # every forward conv, whatever its padding form

LINEARS = OpFamily("linear", [aten.linear.default])
FUSED_LINEARS = OpFamily("linear_act", slimgraph=["linear_act"])
ALL_LINEARS = LINEARS | FUSED_LINEARS

BATCH_NORMS = OpFamily("batch_norm", [aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default])
NORMS = BATCH_NORMS | OpFamily("norm", [aten.layer_norm.default, aten.group_norm.default, aten.rms_norm.default])


def is_call(node, family: Collection | None = None) -> bool:
    """``node`` is a call_function node (whose op is in ``family``, if given)."""
    return (isinstance(node, fx.Node) and node.op == "call_function"
            and (family is None or node.target in family))


# ------------------------------------------------------------------------------------ argument access


def arg(node: fx.Node, index: int, name: str, default=None):
    """Argument ``name`` of ``node``, passed by position ``index`` or by keyword; ``default`` if absent."""
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, default)


def value_of(node):
    """The fake (or example) tensor a node produces, or None."""
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def conv_dims(node: fx.Node) -> int | None:
    """Spatial dims of a conv node: from its op, or for ``conv_act`` from its weight's rank."""
    dims = _CONV_DIMS.get(node.target)
    if dims is not None:
        return dims
    w = value_of(arg(node, 1, "w"))
    return w.dim() - 2 if isinstance(w, torch.Tensor) else None


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str  # a string only for STRING_PADDING_CONVS ("same" / "valid")
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...] = ()  # transposed convs only


def conv_geometry(node: fx.Node) -> ConvGeometry:
    """Stride, padding, dilation and groups of any conv node, one parse for every form:

        convNd / convNd.padding / slimgraph.conv_act  (x, w, b, stride, padding, dilation, groups[, act])
        conv_transposeNd                              (x, w, b, stride, padding, output_padding, groups, dilation)
    """
    dims = conv_dims(node) or 1

    def ints(value, default: int) -> tuple[int, ...]:
        if value is None:
            return (default,) * dims
        if isinstance(value, (list, tuple)):
            return tuple(int(v) for v in value) * (dims if len(value) == 1 else 1)
        return (int(value),) * dims

    if node.target in CONV_TRANSPOSES:
        groups, dilation_at = arg(node, 6, "groups", 1), 7
        output_padding = ints(arg(node, 5, "output_padding"), 0)
    else:
        groups, dilation_at = arg(node, 6, "groups", 1), 5
        output_padding = ()
    padding = arg(node, 4, "padding", "valid" if node.target in STRING_PADDING_CONVS else None)  # schema defaults
    return ConvGeometry(
        stride=ints(arg(node, 3, "stride"), 1),
        padding=padding if isinstance(padding, str) else ints(padding, 0),
        dilation=ints(arg(node, dilation_at, "dilation"), 1),
        groups=int(groups if groups is not None else 1),
        output_padding=output_padding,
    )


# ------------------------------------------------------------------------------------ legality helpers


def only_reader(node: fx.Node) -> fx.Node | None:
    """The single node reading ``node``'s value, or None if it has no reader or several."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def same_dtype(a, b) -> bool:
    """Two values (nodes with fake values, or tensors) have the same dtype."""
    a = value_of(a) if isinstance(a, fx.Node) else a
    b = value_of(b) if isinstance(b, fx.Node) else b
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype


def constant(gm: fx.GraphModule, value) -> torch.Tensor | None:
    """The tensor behind ``value`` if it is a get_attr of a tensor (a weight, a buffer, a folded constant)."""
    return get_attr_tensor(gm, value) if isinstance(value, fx.Node) else None


def exclusive_constant(gm: fx.GraphModule, value) -> torch.Tensor | None:
    """The constant behind ``value`` if exactly one node reads it, so it may be rewritten for that reader.

    Tied weights are read through several get_attr nodes of one attribute, or one get_attr with several
    users: rewriting them for one reader would change the others.
    """
    if not (isinstance(value, fx.Node) and value.op == "get_attr" and len(value.users) == 1):
        return None
    if len(gm.graph.find_nodes(op="get_attr", target=value.target)) != 1:
        return None
    return get_attr_tensor(gm, value)


def precedes(a: fx.Node, b: fx.Node) -> bool:
    """``a`` comes before ``b`` in graph order."""
    key_a, key_b = getattr(a, "_sort_key", None), getattr(b, "_sort_key", None)
    if key_a is not None and key_b is not None:
        return key_a < key_b
    node = b.prev
    while node.op != "root":
        if node is a:
            return True
        node = node.prev
    return False


def is_erased(node: fx.Node) -> bool:
    return getattr(node, "_erased", False)


# ------------------------------------------------------------------------------------------ patterns


class Reject(str):
    """What ``legal`` answers when the pattern is there but the rewrite is not provably safe; says why."""


@dataclass(frozen=True)
class Pattern:
    name: str  # the count's key in the pass's stats
    targets: Collection | None  # ops the anchor node may run (an OpFamily or a set); None: any call node
    legal: Callable[[fx.GraphModule, fx.Node], object]  # None | Reject(why) | the match
    rewrite: Callable[[fx.GraphModule, fx.Node, object], None]


@dataclass
class Rewrites:
    counts: dict[str, int]  # rewrites applied, per pattern name
    left: int = 0  # anchor nodes some pattern rejected and none rewrote
    notes: list[str] = field(default_factory=list)  # why each rejection, per node

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def apply_patterns(gm: fx.GraphModule, patterns: list[Pattern], *, repeat: bool = False) -> Rewrites:
    """Apply ``patterns`` at every call node in graph order; with ``repeat``, walk again until nothing changes.

    Nodes created by a rewrite are not visited in the same walk (a repeated walk sees them).
    """
    result = Rewrites({p.name: 0 for p in patterns})
    while True:
        applied = _walk(gm, patterns, result)
        if not (repeat and applied):
            return result
        result.left, result.notes = 0, []  # a repeated walk reports what is left at the end only


def _walk(gm: fx.GraphModule, patterns: list[Pattern], result: Rewrites) -> int:
    applied = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        name, done, reasons = node.name, [], []
        for pattern in patterns:
            if is_erased(node):
                break
            if pattern.targets is not None and node.target not in pattern.targets:
                continue
            match = pattern.legal(gm, node)
            if match is None:
                continue
            if isinstance(match, Reject):
                reasons.append(str(match))
                continue
            pattern.rewrite(gm, node, match)
            result.counts[pattern.name] += 1
            done.append(pattern.name)
        applied += len(done)
        if not reasons:
            continue
        why = "; ".join(dict.fromkeys(reasons))  # patterns on one op often reject for the same reason
        if done:
            result.notes.append(f"{name}: {', '.join(done)} ({why})")
        else:
            result.left += 1
            result.notes.append(f"left {name} alone: {why}")
    return applied
