"""Which nodes of a captured graph can be quantized, and under which scheme each one runs.

A :class:`QuantTarget` is one GEMM-like node with everything the rewrite needs: the activation operand, the
weight constant, bias, fused activation and conv geometry. Targets at the canonical op level:

    aten.linear(x, W, b)                   slimgraph.linear_act(x, W, b, act)
    aten.conv1d / conv2d(x, W, b, ...)     slimgraph.conv_act(x, W, b, ..., act)     (groups/depthwise too)
    aten.matmul / bmm(a, b)                both operands activations: attention, with ``attention=True``
    aten.embedding(W, ids)                 weight-only, with ``embeddings=True``

Anything else GEMM-like (conv3d, transposed convs, a string-padding conv canonicalization could not make
explicit, a weight computed at run time) is listed as unsupported and stays in float, so the report says why
instead of silently skipping it. Op families, argument access and conv geometry come from ``ir.match``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..errors import InputError
from ..ir.graph_utils import iter_call_nodes
from ..ir.info import node_info
from ..ir.match import (
    ALL_CONVS,
    ALL_LINEARS,
    CONV_TRANSPOSES,
    FUSED_CONVS,
    FUSED_LINEARS,
    STRING_PADDING_CONVS,
    ConvGeometry,
    arg,
    constant,
    conv_dims,
    conv_geometry,
    value_of,
)
from ..kernels.int8_matmul import MAX_K

aten = torch.ops.aten

SCHEMES = ("w8a8", "w8a8-dynamic", "w8a16")
FLOAT = "float"  # per_layer value that keeps a layer in float
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

_INT8_CONV_DIMS = (1, 2)  # the int8 conv kernels' spatial ranks
_MATMULS = {aten.matmul.default, aten.bmm.default}
_arg = arg  # kept for importers of the old private name


@dataclass(eq=False)  # identity semantics: plans/targets are compared by object
class QuantTarget:
    node: fx.Node
    kind: str  # "linear" | "conv1d" | "conv2d" | "matmul" | "embedding" | an unsupported op's name
    name: str  # what reports and skip= patterns speak: the module path, else the weight's name, else the node
    x: fx.Node | None = None  # activation operand (matmul: the left one)
    other: fx.Node | None = None  # matmul: the right activation operand; embedding: the indices
    weight: fx.Node | None = None
    bias: fx.Node | None = None
    act: str = "none"
    conv: ConvGeometry | None = None
    padding_idx: int = -1
    module_type: str = ""
    unsupported: str = ""  # non-empty: why this GEMM cannot be quantized

    @property
    def has_weight(self) -> bool:
        return self.weight is not None

    def candidates(self) -> tuple[str, ...]:
        """Strings a ``skip=`` / ``per_layer=`` pattern may match: names, the op kind and the module type."""
        names = [self.name, self.node.name, self.kind]
        if self.weight is not None:
            names.append(str(self.weight.target))
        if self.module_type:
            names.append(self.module_type)
        return tuple(names)

    def matches(self, pattern: str) -> bool:
        return any(fnmatch.fnmatchcase(c, pattern) for c in self.candidates())


def _float_value(node) -> bool:
    val = value_of(node)
    return isinstance(val, torch.Tensor) and val.dtype in _FLOATS


def _display_name(node: fx.Node, weight: fx.Node | None) -> tuple[str, str]:
    info = node_info(node)
    module = info.module if info is not None else ""
    module_type = info.module_type if info is not None else ""
    if weight is not None and weight.op == "get_attr":
        target = str(weight.target).removesuffix("_smoothed")
        owner = target.rsplit(".", 1)[0] if target.endswith(".weight") else target
        # Prefer the weight's owner: one module can hold several GEMMs, its weights are unique.
        return owner, module_type
    return (f"{module}:{node.name}" if module else node.name), module_type


def _weight_problem(gm: fx.GraphModule, weight, dims: tuple[int, ...]) -> str:
    w = constant(gm, weight)
    if w is None:
        return "its weight is computed at run time, not a constant"
    if w.dtype not in _FLOATS:
        return f"its weight is {str(w.dtype).removeprefix('torch.')}, not floating point"
    if w.dim() not in dims:
        return f"its weight is {w.dim()}-D"
    if w[0].numel() > MAX_K:
        return f"its reduction size {w[0].numel()} exceeds the int8 kernels' limit {MAX_K}"
    return ""


def _target_for(gm: fx.GraphModule, node: fx.Node, attention: bool, embeddings: bool) -> QuantTarget | None:
    t = node.target
    if t in ALL_LINEARS:
        x, w = node.args[0], node.args[1]
        act = arg(node, 3, "act", "none") if t in FUSED_LINEARS else "none"
        name, mtype = _display_name(node, w)
        target = QuantTarget(node, "linear", name, x=x, weight=w, bias=arg(node, 2, "bias"), act=act,
                             module_type=mtype)
        target.unsupported = _weight_problem(gm, w, (2,)) or ("" if _float_value(x) else "its input is not float")
        return target
    if t in ALL_CONVS:
        x, w = node.args[0], node.args[1]
        dims = conv_dims(node) or 0
        act = arg(node, 7, "act", "none") if t in FUSED_CONVS else "none"
        name, mtype = _display_name(node, w)
        target = QuantTarget(node, f"conv{dims}d", name, x=x, weight=w, bias=arg(node, 2, "bias"), act=act,
                             module_type=mtype)
        if dims not in _INT8_CONV_DIMS:
            target.unsupported = f"conv{dims}d has no int8 kernel"
        elif t in STRING_PADDING_CONVS:
            target.unsupported = "its padding is a string canonicalization could not make explicit"
        else:
            target.conv = conv_geometry(node)
            target.unsupported = (_weight_problem(gm, w, (dims + 2,))
                                  or ("" if _float_value(x) else "its input is not float"))
        return target
    if t in CONV_TRANSPOSES:
        w = node.args[1] if len(node.args) > 1 else None
        name, mtype = _display_name(node, w if isinstance(w, fx.Node) else None)
        kind = t._schema.name.split("::")[-1]
        return QuantTarget(node, kind, name, module_type=mtype, unsupported="transposed convs have no int8 kernel")
    if attention and t in _MATMULS:
        a, b = node.args[0], node.args[1]
        if not all(isinstance(v, fx.Node) and v.op != "get_attr" and _float_value(v) for v in (a, b)):
            return None  # a constant operand is a linear in disguise; canonicalization handles those
        if value_of(a).dim() < 2 or value_of(b).dim() < 2:
            return None
        name, mtype = _display_name(node, None)
        return QuantTarget(node, "matmul", name, x=a, other=b, module_type=mtype)
    if embeddings and t is aten.embedding.default:
        w, ids = node.args[0], node.args[1]
        name, mtype = _display_name(node, w)
        target = QuantTarget(node, "embedding", name, other=ids, weight=w,
                             padding_idx=int(arg(node, 2, "padding_idx", -1)), module_type=mtype)
        target.unsupported = _weight_problem(gm, w, (2,))
        return target
    return None


def find_targets(gm: fx.GraphModule, *, attention: bool = False, embeddings: bool = False) -> list[QuantTarget]:
    """Every GEMM-like node in graph order (unsupported ones included, with the reason)."""
    found = (_target_for(gm, node, attention, embeddings) for node in iter_call_nodes(gm))
    return [target for target in found if target is not None]


@dataclass
class LayerDecision:
    scheme: str  # one of SCHEMES, or FLOAT
    reason: str = ""  # why a layer stays in float


def decide_schemes(targets: Iterable[QuantTarget], scheme: str, skip: Iterable[str],
                   per_layer: Mapping[str, str] | None) -> dict[str, LayerDecision]:
    """Scheme per target node name: ``per_layer`` patterns first (first match wins), then ``skip``."""
    per_layer = dict(per_layer or {})
    for pattern, value in per_layer.items():
        if value not in (*SCHEMES, FLOAT):
            raise InputError(f"per_layer[{pattern!r}] = {value!r}; expected one of {', '.join(SCHEMES)} or 'float'")
    skip = tuple(skip)
    decisions: dict[str, LayerDecision] = {}
    for target in targets:
        if target.unsupported:
            decisions[target.node.name] = LayerDecision(FLOAT, f"unsupported: {target.unsupported}")
            continue
        chosen, why = scheme, ""
        override = next((p for p in per_layer if target.matches(p)), None)
        if override is not None:
            chosen = per_layer[override]
            why = f"per_layer pattern {override!r}" if chosen == FLOAT else ""
        else:
            hit = next((p for p in skip if target.matches(p)), None)
            if hit is not None:
                chosen, why = FLOAT, f"skip pattern {hit!r}"
        if target.kind == "matmul" and chosen != FLOAT:
            # Two run-time operands: only per-token scales computed at run time fit (no weight for w8a16).
            if chosen == "w8a16":
                chosen, why = FLOAT, "w8a16 has no weight to quantize in an activation x activation matmul"
            else:
                chosen = "w8a8-dynamic"
        if target.kind == "embedding" and chosen != FLOAT:
            chosen = "w8a16"  # embeddings are lookups: only their weight can be int8
        decisions[target.node.name] = LayerDecision(chosen, why)
    return decisions
