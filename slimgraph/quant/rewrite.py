"""Rewrite float GEMMs into real int8 ops, and place the quantize boundaries.

Per layer (``W`` float weight, ``Wq`` int8 [-127, 127], ``ws`` its per-output-channel scales)::

    w8a8          linear_act(x, W, b, act)  =>  q = quantize_per_tensor(x, s)            (s from calibration)
                                               qlinear_static(q, s, Wq, ws, b, act)
    w8a8-dynamic  linear_act(x, W, b, act)  =>  q, s = dynamic_quantize_per_token(x)
                                               qlinear_dynamic(q, s, Wq, ws, b, act)
    w8a16         linear_act(x, W, b, act)  =>  qlinear_w8a16(x, Wq, ws, b, act)
    convs likewise (qconv_static / qconv_dynamic with a run-time per-tensor scale / qconv_w8a16),
    matmul(a, b)  =>  qmatmul_dynamic(a, b);   embedding(W, ids)  =>  qembedding(Wq, ws, ids)

Bias and activation stay inside the int8 op: its GEMM epilogue dequantizes, adds the bias and applies the
activation in registers. Then the boundaries are tidied so int8 values do not round-trip through float::

    one quantize per value:   x -> {q_proj, k_proj, v_proj}  =>  q = quantize(x) -> {q_proj, k_proj, v_proj}
    hoist through int8-safe ops (they commute with a monotone quantizer with zero-point 0):
        quantize(maxpool(x), s)             =>  maxpool(quantize(x, s))
        quantize(relu / view / flatten(x))  =>  relu / view / flatten(quantize(x, s))
    requantize in the epilogue:  quantize(qconv_static(q, ...), s2)  =>  qconv_static(q, ..., out_scale=s2)  (int8 out)
    fuse LayerNorm into the per-token quantizer (dynamic):
        dynamic_quantize_per_token(layer_norm(h))  =>  layer_norm_quantize_per_token(h)

Each rewrite applies only when the float value it replaces has no other reader. The layer emission is
written once against a small builder interface, run eagerly (sensitivity: quantize one layer on its real
inputs) or symbolically (build the graph), so what is measured is exactly what is built.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..ir.graph_utils import add_constant, get_attr_tensor
from ..ir.propagate import copy_provenance, invalidate
from ..passes.dce import tidy
from . import ops  # noqa: F401 - registers torch.ops.slimgraph.q*
from .targets import QuantTarget

aten = torch.ops.aten
sgops = torch.ops.slimgraph


@dataclass(eq=False)  # identity semantics: plans/targets are compared by object
class LayerPlan:
    """A target with its scheme and the tensors its int8 op needs."""

    target: QuantTarget
    scheme: str
    weight_q: torch.Tensor | None = None  # int8, same layout as the float weight
    weight_scale: torch.Tensor | None = None  # float32 [out channels]
    act_scale: torch.Tensor | None = None  # float32 0-d, static scheme only


# ------------------------------------------------------------------------------------------------ builders


class EagerBuilder:
    """Runs the ops on real tensors."""

    def op(self, target, *args, name: str | None = None):
        return target(*args)

    def item(self, value, index: int):
        return value[index]

    def tensor(self, value: torch.Tensor, name: str):
        return value

    def shared(self, key, make):
        return make()


class GraphBuilder:
    """Creates nodes before ``anchor``; shares boundary nodes and constants between layers."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.anchor: fx.Node | None = None
        self._shared: dict = {}
        self._constants: dict[int, fx.Node] = {}

    def op(self, target, *args, name: str | None = None):
        with self.gm.graph.inserting_before(self.anchor):
            node = self.gm.graph.create_node("call_function", target, args, name=name)
        copy_provenance(node, self.anchor)
        return node

    def item(self, value: fx.Node, index: int):
        with self.gm.graph.inserting_before(self.anchor):
            return self.gm.graph.call_function(operator.getitem, (value, index))

    def tensor(self, value: torch.Tensor, name: str) -> fx.Node:
        # One attribute per distinct tensor (tied weights stay tied); get_attr nodes go first in the graph
        # so a constant created for one layer can be read by any later layer.
        if id(value) not in self._constants:
            target = add_constant(self.gm, value, name)
            first = next(n for n in self.gm.graph.nodes if n.op != "placeholder")
            with self.gm.graph.inserting_before(first):
                self._constants[id(value)] = self.gm.graph.get_attr(target)
        return self._constants[id(value)]

    def shared(self, key, make):
        # Boundary nodes (a value's quantize) are created at the first reader, which comes before all others.
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]


# ---------------------------------------------------------------------------------------------- emission


def emit(b, plan: LayerPlan, x, other, bias, out_dtype: torch.dtype):
    """The int8 replacement of ``plan.target`` in builder ``b``; ``x``/``other``/``bias`` are values of ``b``."""
    t = plan.target
    named = _node_name(t)
    if t.kind == "matmul":
        return b.op(sgops.qmatmul_dynamic.default, x, other, name=named)
    base = str(t.weight.target) if t.weight is not None and t.weight.op == "get_attr" else t.node.name
    w = b.tensor(plan.weight_q, f"{base}_int8")
    ws = b.tensor(plan.weight_scale, f"{base}_scale")
    if t.kind == "embedding":
        return b.op(sgops.qembedding.default, w, ws, other, t.padding_idx, out_dtype, name=named)
    conv = t.conv
    geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups) if conv else ()
    linear = t.kind == "linear"
    if plan.scheme == "w8a16":
        if linear:
            return b.op(sgops.qlinear_w8a16.default, x, w, ws, bias, t.act, name=named)
        return b.op(sgops.qconv_w8a16.default, x, w, ws, bias, *geometry, t.act, name=named)
    if plan.scheme == "w8a8":
        s = b.shared(("scale", x), lambda: b.tensor(plan.act_scale, f"{t.name}.input_scale"))
        q = b.shared(("static", x), lambda: b.op(sgops.quantize_per_tensor.default, x, s))
        if linear:
            return b.op(sgops.qlinear_static.default, q, s, w, ws, bias, t.act, None, out_dtype, name=named)
        return b.op(sgops.qconv_static.default, q, s, w, ws, bias, *geometry, t.act, None, out_dtype, name=named)
    # w8a8-dynamic: per-token scales for GEMM rows; one per-tensor scale for convs (a KxK window mixes pixels)
    boundary = sgops.dynamic_quantize_per_token.default if linear else sgops.dynamic_quantize_per_tensor.default
    pair = b.shared((boundary, x), lambda: b.op(boundary, x))
    q, s = b.shared((boundary, x, 0), lambda: b.item(pair, 0)), b.shared((boundary, x, 1), lambda: b.item(pair, 1))
    if linear:
        return b.op(sgops.qlinear_dynamic.default, q, s, w, ws, bias, t.act, out_dtype, name=named)
    return b.op(sgops.qconv_dynamic.default, q, s, w, ws, bias, *geometry, t.act, out_dtype, name=named)


def _node_name(t: QuantTarget) -> str:
    """``fc1`` -> ``fc1_q``: int8 nodes named after their layer, so graph dumps read like the model."""
    stem = t.name.split(":")[-1] if t.kind == "matmul" else t.name
    return "".join(c if c.isalnum() else "_" for c in stem).strip("_") + "_q"


def operands(plan: LayerPlan, args: tuple, kwargs: dict) -> tuple:
    """(x, other, bias) of the target node, from its evaluated or symbolic arguments."""
    kind = plan.target.kind
    if kind == "matmul":
        return args[0], args[1], None
    if kind == "embedding":
        return None, args[1], None
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return args[0], None, bias


def simulate(plan: LayerPlan, args: tuple, kwargs: dict, out_dtype: torch.dtype) -> torch.Tensor:
    """The layer's int8 output on real inputs (sensitivity)."""
    x, other, bias = operands(plan, args, kwargs)
    return emit(EagerBuilder(), plan, x, other, bias, out_dtype)


def rewrite_layers(gm: fx.GraphModule, plans: list[LayerPlan]) -> dict[str, int]:
    """Replace every planned target node by its int8 op; returns rewrite counts."""
    builder = GraphBuilder(gm)
    stats = {"quantized": 0}
    for plan in plans:
        node = plan.target.node
        builder.anchor = node
        x, other, bias = operands(plan, node.args, node.kwargs)
        new = emit(builder, plan, x, other, bias, node.meta["val"].dtype)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        stats["quantized"] += 1
    stats.update(place_boundaries(gm))
    tidy(gm)
    gm.graph.lint()
    gm.recompile()
    return stats


# ---------------------------------------------------------------------------------------------- boundaries

# Ops that commute with a symmetric quantizer (zero-point 0, monotone rounding) and run on int8 tensors.
INT8_SAFE = {
    aten.relu.default, aten.max_pool1d.default, aten.max_pool2d.default, aten.flatten.using_ints,
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default, aten.transpose.int,
    aten.contiguous.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default, aten.clone.default,
}
_REQUANTIZABLE = {sgops.qlinear_static.default, sgops.qconv_static.default}


def _nodes(gm: fx.GraphModule, target) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def hoist_static_quantize(gm: fx.GraphModule) -> int:
    """quantize(T(v), s) => T(quantize(v, s)) for int8-safe T whose only reader is the quantize."""
    graph, hoisted, changed = gm.graph, 0, True
    while changed:
        changed = False
        for q in _nodes(gm, sgops.quantize_per_tensor.default):
            src = q.args[0]
            if (not isinstance(src, fx.Node) or src.op != "call_function" or src.target not in INT8_SAFE
                    or len(src.users) != 1 or not isinstance(src.args[0], fx.Node)):
                continue
            with graph.inserting_before(src):
                inner_q = graph.call_function(sgops.quantize_per_tensor.default, (src.args[0], q.args[1]))
                moved = graph.call_function(src.target, (inner_q, *src.args[1:]), dict(src.kwargs))
            copy_provenance(inner_q, q)
            copy_provenance(moved, src)
            q.replace_all_uses_with(moved)
            graph.erase_node(q)
            graph.erase_node(src)
            hoisted += 1
            changed = True
    return hoisted


def merge_duplicate_quantize(gm: fx.GraphModule) -> int:
    """Two quantize nodes of one value with equal scales become one."""
    seen: dict[tuple, fx.Node] = {}
    merged = 0
    for q in _nodes(gm, sgops.quantize_per_tensor.default):
        scale = get_attr_tensor(gm, q.args[1]) if isinstance(q.args[1], fx.Node) else None
        key = (q.args[0], float(scale) if scale is not None else q.args[1])
        if key in seen:
            q.replace_all_uses_with(seen[key])
            gm.graph.erase_node(q)
            merged += 1
        else:
            seen[key] = q
    return merged


def fuse_requantize(gm: fx.GraphModule) -> int:
    """quantize(qop(...), s) => qop(..., out_scale=s) when the quantize is the int8 op's only reader."""
    fused = 0
    for q in _nodes(gm, sgops.quantize_per_tensor.default):
        producer = q.args[0]
        if (not isinstance(producer, fx.Node) or producer.target not in _REQUANTIZABLE or len(producer.users) != 1):
            continue
        args = list(producer.args)
        args[-2] = q.args[1]  # out_scale: the epilogue now writes int8
        producer.args = tuple(args)
        invalidate(producer)  # its dtype changed; the manager re-propagates it
        q.replace_all_uses_with(producer)
        gm.graph.erase_node(q)
        fused += 1
    return fused


_ROW_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _row_view(node) -> list | None:
    """The target shape of a view that keeps the last dim (rows regrouped, e.g. GPT-2's view(-1, K)), else None."""
    if not isinstance(node, fx.Node) or node.target not in _ROW_VIEWS or len(node.users) != 1:
        return None
    shape, source = list(node.args[1]), node.args[0]
    val = source.meta.get("val") if isinstance(source, fx.Node) else None
    if val is None or not shape or not isinstance(shape[-1], int) or shape[-1] != val.shape[-1]:
        return None
    return shape


def fuse_layer_norm_quantize(gm: fx.GraphModule) -> int:
    """dynamic_quantize_per_token(layer_norm(h)) => layer_norm_quantize_per_token(h) (LayerNorm has no other reader).

    Per-token quantization commutes with a view that keeps rows intact, so the fusion also reaches through one:
    dynamic_quantize_per_token(view(layer_norm(h), [-1, K])) => view(layer_norm_quantize_per_token(h), ...)
    """
    fused = 0
    graph = gm.graph
    for q in _nodes(gm, sgops.dynamic_quantize_per_token.default):
        view_shape = _row_view(q.args[0])
        ln = q.args[0].args[0] if view_shape is not None else q.args[0]
        if not isinstance(ln, fx.Node) or ln.target is not aten.layer_norm.default or len(ln.users) != 1:
            continue
        args = list(ln.args) + [None] * (5 - len(ln.args))
        x, shape, weight, bias, eps = args[:5]
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        if val is None or len(shape) != 1 or val.shape[-1] != shape[0]:
            continue  # the kernel normalizes over the last dim only
        if view_shape is not None and any(u.target is not operator.getitem for u in q.users):
            continue
        with graph.inserting_before(q):
            new = graph.call_function(sgops.layer_norm_quantize_per_token.default,
                                      (x, list(shape), weight, bias, float(1e-5 if eps is None else eps)))
        copy_provenance(new, ln)
        if view_shape is None:
            q.replace_all_uses_with(new)
        else:  # rows regrouped: reshape the int8 rows and their scales the same way
            for user in list(q.users):
                index = user.args[1]
                with graph.inserting_before(user):
                    part = graph.call_function(operator.getitem, (new, index))
                    reshaped = graph.call_function(aten.reshape.default,
                                                   (part, view_shape if index == 0 else view_shape[:-1]))
                user.replace_all_uses_with(reshaped)
                graph.erase_node(user)
        view = q.args[0] if view_shape is not None else None
        graph.erase_node(q)
        if view is not None:
            graph.erase_node(view)
        graph.erase_node(ln)
        fused += 1
    return fused


def place_boundaries(gm: fx.GraphModule) -> dict[str, int]:
    stats = {"quantize_hoisted": hoist_static_quantize(gm)}
    stats["quantize_merged"] = merge_duplicate_quantize(gm)
    stats["requantize_fused"] = fuse_requantize(gm)
    stats["layernorm_quantize_fused"] = fuse_layer_norm_quantize(gm)
    return stats
