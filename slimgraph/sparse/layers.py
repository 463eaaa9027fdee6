"""Which weights ``sparsify`` may zero, and how important each of their elements is.

Candidates are the constant weights of every GEMM at the canonical op level: ``aten.linear`` (``x @ W.T`` and
``addmm``/``mm``/``matmul`` with a constant operand are canonicalized to it at capture), ``slimgraph.linear_act``,
``aten.conv1d/2d/3d`` (``.padding`` overloads, e.g. ``padding="same"``, included) and ``slimgraph.conv_act``.
Embeddings and norms are not candidates: a zeroed embedding row deletes a token and a zeroed norm scale deletes a
channel, which is structured pruning's job, not weight sparsity's. Transposed convs are not candidates either (their
weight's input dimension comes first; no sparse kernel exists for them). A weight read by several GEMMs (tied) is
one candidate.

Importance of every weight element:

* ``l1``: ``|w|``; ``l2``: ``w**2`` (same element ranking; tiles of a block pattern rank by mean square);
* ``act``: ``|w| * ||x_in||`` (Wanda): the weight's magnitude times the L2 norm, over the calibration batches, of the
  input channel it multiplies, so a big weight on a channel that is never excited ranks low.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..errors import InputError
from ..ir.calibration import NodeValues, normalize_batches, run_watched
from ..ir.graph_utils import get_attr_tensor
from ..ir.info import node_info
from ..ir.match import ALL_CONVS, ALL_LINEARS, is_call

IMPORTANCE = ("l1", "l2", "act")

_GEMMS = ALL_LINEARS | ALL_CONVS  # linear / linear_act, convNd (string padding too) / conv_act
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(eq=False)
class Layer:
    """One sparsifiable weight and the GEMM nodes that read it (several when tied)."""

    weight: str  # attribute path on the GraphModule
    name: str  # what reports and ``ignore`` patterns speak: the owning module path, else the weight's path
    kind: str  # "linear" | "conv1d" | "conv2d" | "conv3d"
    nodes: list[fx.Node]
    module_type: str = ""

    def candidates(self) -> tuple[str, ...]:
        names = (self.name, self.weight, self.kind, *(n.name for n in self.nodes))
        return names + ((self.module_type,) if self.module_type else ())

    def matches(self, pattern: str) -> bool:
        return any(fnmatch.fnmatchcase(c, pattern) for c in self.candidates())


def find_layers(gm: fx.GraphModule) -> list[Layer]:
    """Every candidate weight, in graph order."""
    layers: dict[str, Layer] = {}
    for node in gm.graph.nodes:
        if not is_call(node, _GEMMS) or len(node.args) < 2:
            continue
        w_node = node.args[1]
        w = get_attr_tensor(gm, w_node) if isinstance(w_node, fx.Node) else None
        if w is None or w.dtype not in _FLOATS or w.dim() < 2:
            continue  # a weight computed at run time has nothing to zero once and for all
        target = str(w_node.target)
        if target in layers:
            layers[target].nodes.append(node)
            continue
        kind = "linear" if node.target in ALL_LINEARS else f"conv{w.dim() - 2}d"
        info = node_info(node)
        name = target.removesuffix(".weight") if target.endswith(".weight") else target
        layers[target] = Layer(target, name, kind, [node], info.module_type if info is not None else "")
    return list(layers.values())


def select(layers: list[Layer], ignore: tuple[str, ...]) -> tuple[list[Layer], list[Layer], list[str]]:
    """(kept, ignored, notes): ``ignore`` fnmatch patterns match a layer's name, weight path, node names, kind or
    module type; a pattern that matches nothing is reported, since it is most likely a typo."""
    kept, ignored = [], []
    used = set()
    for layer in layers:
        hits = [p for p in ignore if layer.matches(p)]
        used.update(hits)
        (ignored if hits else kept).append(layer)
    notes = [f"ignore pattern {p!r} matched no layer" for p in ignore if p not in used]
    return kept, ignored, notes


# ------------------------------------------------------------------------------------------------ importance


def importance(gm: fx.GraphModule, layers: list[Layer], criterion: str, data=None) -> dict[str, torch.Tensor]:
    """Weight path -> float32 scores shaped like the weight (higher = more important)."""
    if criterion not in IMPORTANCE:
        raise InputError(f"unknown importance {criterion!r}; choose one of {', '.join(IMPORTANCE)}")
    weights = {layer.weight: get_attr_tensor(gm, layer.nodes[0].args[1]).detach().float() for layer in layers}
    if criterion == "l1":
        return {k: w.abs() for k, w in weights.items()}
    if criterion == "l2":
        return {k: w * w for k, w in weights.items()}
    norms = input_channel_norms(gm, layers, data)
    return {layer.weight: weights[layer.weight].abs() * _per_weight_norm(layer, weights[layer.weight],
                                                                         norms[layer.weight])
            for layer in layers}


def _channel_dim(layer: Layer) -> int:
    return -1 if layer.kind == "linear" else 1


def input_channel_norms(gm: fx.GraphModule, layers: list[Layer], data=None) -> dict[str, torch.Tensor]:
    """Weight path -> L2 norm of every input channel its GEMMs multiply, over the calibration batches (all the
    nodes of a tied weight pooled). ``data=None`` uses the example inputs recorded at capture."""
    batches = normalize_batches(None if data is None else list(data), gm)
    sq: dict[str, torch.Tensor] = {}

    def watcher(layer: Layer):
        dim = _channel_dim(layer)

        def observe(values: NodeValues):
            x = values.args[0].detach().double()
            dims = [d for d in range(x.dim()) if d != dim % x.dim()]
            s = (x * x).sum(dim=dims) if dims else x * x
            sq[layer.weight] = sq[layer.weight] + s if layer.weight in sq else s

        return observe

    watchers = {node: [watcher(layer)] for layer in layers for node in layer.nodes}
    run_watched(gm, batches, watchers, desc="sparsify: activation norms", progress=False)
    return {k: v.sqrt().float() for k, v in sq.items()}


def _per_weight_norm(layer: Layer, w: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Broadcast per-input-channel norms onto the weight (grouped convs: each output row reads its group's slice)."""
    if layer.kind == "linear":
        return norm.reshape(1, -1)
    out_ch, in_per_group = w.shape[0], w.shape[1]
    groups = norm.numel() // in_per_group
    if groups * in_per_group != norm.numel() or out_ch % groups:
        raise InputError(f"layer {layer.name!r}: its input has {norm.numel()} channels, which do not split into "
                         f"groups of the weight's {in_per_group}; use importance='l1' for it")
    by_row = norm.reshape(groups, in_per_group).repeat_interleave(out_ch // groups, dim=0)  # [O, I/groups]
    return by_row.reshape(out_ch, in_per_group, *([1] * (w.dim() - 2)))
