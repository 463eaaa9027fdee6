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
    int8 outputs for residual adds (a conv's output calibrated, ``LayerPlan.out_scale``; ResNet's stem through
    its maxpool):  add(qconv_static(q, ...), r)  =>  add(dequantize_per_tensor(qconv_static(q, ..., s2), s2), r)
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

from ..ir.graph_utils import add_constant
from ..ir.match import Pattern, apply_patterns, arg, constant, is_call, only_reader, precedes, value_of
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
    out_scale: torch.Tensor | None = None  # float32 0-d: the op writes int8, read back in float (residual adds)


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
            y = b.op(sgops.qlinear_static.default, q, s, w, ws, bias, t.act, None, out_dtype, name=named)
        else:
            y = b.op(sgops.qconv_static.default, q, s, w, ws, bias, *geometry, t.act, None, out_dtype, name=named)
        return _int8_output(b, plan, y)
    # w8a8-dynamic: per-token scales for GEMM rows; one per-tensor scale for convs (a KxK window mixes pixels)
    boundary = sgops.dynamic_quantize_per_token.default if linear else sgops.dynamic_quantize_per_tensor.default
    pair = b.shared((boundary, x), lambda: b.op(boundary, x))
    q, s = b.shared((boundary, x, 0), lambda: b.item(pair, 0)), b.shared((boundary, x, 1), lambda: b.item(pair, 1))
    if linear:
        return b.op(sgops.qlinear_dynamic.default, q, s, w, ws, bias, t.act, out_dtype, name=named)
    return b.op(sgops.qconv_dynamic.default, q, s, w, ws, bias, *geometry, t.act, out_dtype, name=named)


def _int8_output(b, plan: LayerPlan, y):
    """``y`` quantized with the plan's output scale and read back in float, for a float reader (a residual add):
    the ``requantize_fused`` boundary stage then moves the quantize into the op's epilogue, so the op writes int8
    (ONNX Runtime runs it as QLinearConv -> DequantizeLinear -> Add). One more rounding on that branch; the
    sensitivity measurement (eager builder) includes it."""
    if plan.out_scale is None:
        return y
    s = b.tensor(plan.out_scale, f"{plan.target.name}.output_scale")
    return b.op(sgops.dequantize_per_tensor.default, b.op(sgops.quantize_per_tensor.default, y, s), s)


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


def rewrite_layers(gm: fx.GraphModule, plans: list[LayerPlan], residual_outputs: bool = False) -> dict[str, int]:
    """Replace every planned target node by its int8 op; returns rewrite counts. ``residual_outputs``: also
    the shared-reader stage (:data:`RESIDUAL_STAGE`), an int8 op's output read by residual adds too."""
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
    stats.update(place_boundaries(gm, residual_outputs))
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
_ROW_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _hoistable(gm: fx.GraphModule, q: fx.Node) -> fx.Node | None:
    """The int8-safe op ``q`` quantizes, if ``q`` is its only reader."""
    src = q.args[0]
    if is_call(src, INT8_SAFE) and only_reader(src) is q and isinstance(src.args[0], fx.Node):
        return src
    return None


def _hoisted(gm: fx.GraphModule, q: fx.Node, src: fx.Node) -> fx.Node:
    """``src(quantize(src's input))``, now read by ``q``'s readers; ``q`` is left without readers."""
    graph = gm.graph
    with graph.inserting_before(src):
        inner_q = graph.call_function(sgops.quantize_per_tensor.default, (src.args[0], q.args[1]))
        moved = graph.call_function(src.target, (inner_q, *src.args[1:]), dict(src.kwargs))
    copy_provenance(inner_q, q)
    copy_provenance(moved, src)
    q.replace_all_uses_with(moved)
    return moved


def _hoist(gm: fx.GraphModule, q: fx.Node, src: fx.Node) -> None:
    _hoisted(gm, q, src)
    gm.graph.erase_node(q)
    gm.graph.erase_node(src)


RESIDUAL_ADDS = {aten.add.Tensor}  # the readers an int8 residual output is read back for


def _hoistable_shared(gm: fx.GraphModule, q: fx.Node) -> fx.Node | None:
    """The int8-safe op ``q`` quantizes when its other readers are residual adds and its input is a static int8
    op's float output read by nothing else (ResNet's stem: conv-relu -> maxpool -> {block 0's conv1, its
    identity shortcut add}): hoisting the quantize lets that op write int8, the adds read it dequantized."""
    src = q.args[0]
    if not isinstance(src, fx.Node) or only_reader(src) is q:
        return None
    producer = src
    if is_call(src, INT8_SAFE):  # through a maxpool / relu / view read by nothing else
        producer = src.args[0]
        if not is_call(producer, _REQUANTIZABLE) or only_reader(producer) is not src:
            return None
    elif not is_call(src, _REQUANTIZABLE):  # or the int8 op's output itself
        return None
    if producer.args[-2] is not None or producer.args[-1] != torch.float32:  # dequantize reads back float32
        return None
    others = [u for u in src.users if u is not q]
    return src if all(is_call(u, RESIDUAL_ADDS) for u in others) else None


def _hoist_shared(gm: fx.GraphModule, q: fx.Node, src: fx.Node) -> None:
    graph, others, scale = gm.graph, [u for u in src.users if u is not q], q.args[1]
    if is_call(src, _REQUANTIZABLE):
        moved = src
        _requantize(gm, q, src)
    else:
        moved = _hoisted(gm, q, src)
        graph.erase_node(q)
    with graph.inserting_after(moved):
        dq = graph.call_function(sgops.dequantize_per_tensor.default, (moved, scale))
    copy_provenance(dq, src)
    for user in others:
        user.replace_input_with(src, dq)
    if src is not moved:
        graph.erase_node(src)


def _scale_key(gm: fx.GraphModule, q: fx.Node):
    scale = constant(gm, q.args[1])
    return float(scale) if scale is not None else q.args[1]


def _earlier_twin(gm: fx.GraphModule, q: fx.Node) -> fx.Node | None:
    """An earlier quantize of the same value with an equal scale."""
    if not isinstance(q.args[0], fx.Node):
        return None
    key = _scale_key(gm, q)
    return next((u for u in q.args[0].users if u is not q and u.target is q.target and u.args[0] is q.args[0]
                 and precedes(u, q) and _scale_key(gm, u) == key), None)


def _merge(gm: fx.GraphModule, q: fx.Node, twin: fx.Node) -> None:
    q.replace_all_uses_with(twin)
    gm.graph.erase_node(q)


def _requantizable(gm: fx.GraphModule, q: fx.Node) -> fx.Node | None:
    """The static int8 op whose float output ``q`` alone quantizes."""
    producer = q.args[0]
    return producer if is_call(producer, _REQUANTIZABLE) and only_reader(producer) is q else None


def _requantize(gm: fx.GraphModule, q: fx.Node, producer: fx.Node) -> None:
    args = list(producer.args)
    args[-2] = q.args[1]  # out_scale: the epilogue now writes int8
    producer.args = tuple(args)
    invalidate(producer)  # its dtype changed; the manager re-propagates it
    q.replace_all_uses_with(producer)
    gm.graph.erase_node(q)


def _row_view(node) -> list | None:
    """The target shape of a view that keeps the last dim (rows regrouped, e.g. GPT-2's view(-1, K)), else None."""
    if not is_call(node, _ROW_VIEWS) or only_reader(node) is None:
        return None
    shape, val = list(node.args[1]), value_of(node.args[0])
    if val is None or not shape or not isinstance(shape[-1], int) or shape[-1] != val.shape[-1]:
        return None
    return shape


@dataclass
class _NormQuantize:
    ln: fx.Node
    view: fx.Node | None  # a row view between the LayerNorm and the quantizer
    view_shape: list | None


def _norm_then_quantize(gm: fx.GraphModule, q: fx.Node) -> _NormQuantize | None:
    """A LayerNorm over the last dim, read only by ``q`` (directly or through one row view)."""
    view_shape = _row_view(q.args[0])
    view = q.args[0] if view_shape is not None else None
    ln = view.args[0] if view is not None else q.args[0]
    if not is_call(ln, {aten.layer_norm.default}) or only_reader(ln) is None:
        return None
    x, shape = ln.args[0], arg(ln, 1, "normalized_shape")
    val = value_of(x)
    if val is None or len(shape) != 1 or val.shape[-1] != shape[0]:
        return None  # the kernel normalizes over the last dim only
    if view is not None and any(u.target is not operator.getitem for u in q.users):
        return None
    return _NormQuantize(ln, view, view_shape)


def _fuse_norm_quantize(gm: fx.GraphModule, q: fx.Node, m: _NormQuantize) -> None:
    graph, ln = gm.graph, m.ln
    eps = arg(ln, 4, "eps")
    with graph.inserting_before(q):
        new = graph.call_function(sgops.layer_norm_quantize_per_token.default,
                                  (ln.args[0], list(arg(ln, 1, "normalized_shape")), arg(ln, 2, "weight"),
                                   arg(ln, 3, "bias"), float(1e-5 if eps is None else eps)))
    copy_provenance(new, ln)
    if m.view is None:
        q.replace_all_uses_with(new)
    else:  # rows regrouped: reshape the int8 rows and their scales the same way
        for user in list(q.users):
            index = user.args[1]
            with graph.inserting_before(user):
                part = graph.call_function(operator.getitem, (new, index))
                reshaped = graph.call_function(aten.reshape.default,
                                               (part, m.view_shape if index == 0 else m.view_shape[:-1]))
            user.replace_all_uses_with(reshaped)
            graph.erase_node(user)
    graph.erase_node(q)
    if m.view is not None:
        graph.erase_node(m.view)
    graph.erase_node(ln)


_QUANTIZE = {sgops.quantize_per_tensor.default}
# Boundary stages, each run over the whole graph before the next: hoisting first gives merging more to find,
# merging first leaves the int8 ops' outputs with one quantize reader for requantization.
BOUNDARY_STAGES = [
    # quantize(T(v), s)  =>  T(quantize(v, s))   T int8-safe, read only by the quantize (repeated to a fixpoint)
    (Pattern("quantize_hoisted", _QUANTIZE, _hoistable, _hoist), True),
    # quantize(v, s), quantize(v, s)  =>  one quantize(v, s)
    (Pattern("quantize_merged", _QUANTIZE, _earlier_twin, _merge), False),
    # quantize(qconv_static(q, ...), s2)  =>  qconv_static(q, ..., out_scale=s2)   (the epilogue writes int8)
    (Pattern("requantize_fused", _QUANTIZE, _requantizable, _requantize), False),
    # dynamic_quantize_per_token([view(]layer_norm(h)[)])  =>  [view(]layer_norm_quantize_per_token(h)[)]
    (Pattern("layernorm_quantize_fused", {sgops.dynamic_quantize_per_token.default}, _norm_then_quantize,
             _fuse_norm_quantize), False),
]


# With int8 residual outputs (``Quantize(residual_outputs=True)``), after merging, before requantizing:
#   quantize(T(op(..)), s), add(T(op(..)), r)  =>  t = T(quantize(op(..), s)); add(dequantize(t, s), r)
#   quantize(op(..), s), add(op(..), r)        =>  t = op(.., out_scale=s); add(dequantize(t, s), r)  (op static)
RESIDUAL_STAGE = (Pattern("quantize_hoisted_shared", _QUANTIZE, _hoistable_shared, _hoist_shared), False)


def place_boundaries(gm: fx.GraphModule, residual_outputs: bool = False) -> dict[str, int]:
    stages = list(BOUNDARY_STAGES)
    if residual_outputs:  # before requantizing: the op it leaves with one quantize reader is requantized there
        stages.insert(next(i for i, (p, _) in enumerate(stages) if p.name == "requantize_fused"), RESIDUAL_STAGE)
    stats: dict[str, int] = {}
    for pattern, repeat in stages:
        stats.update(apply_patterns(gm, [pattern], repeat=repeat).counts)
    return stats
