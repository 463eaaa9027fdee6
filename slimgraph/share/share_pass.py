"""The ``share-weights`` pass: Deep Compression's weight sharing, one k-means codebook per layer.

    share-weights{bits=5}          share-weights{bits=4,conv_bits=8,ignore=[classifier]}

Before / after (a weight with pruned zeros: code 0 is the exact zero, codes 1..2**bits-1 the centroids)::

    w = get_attr[fc1.weight]                     cb = get_attr[fc1.weight_codebook]       # float [2**b-1, 1]
    y = aten.linear(x, w, b)              =>     codes = get_attr[fc1.weight_codes]       # uint8, w's shape
                                                 idx = aten._to_copy(codes, dtype=int64)
                                                 table = aten.constant_pad_nd(cb, [0, 0, 1, 0])   # zero row 0
                                                 w' = aten.squeeze(aten.embedding(table, idx), -1)
                                                 y = aten.linear(x, w', b)

The graph keeps running on plain ATen ops (ONNX: Cast, Pad, Gather, Squeeze) and the archive stores a tiny
float codebook plus a small-integer tensor that entropy-codes well. The codebook is the layer's only float
parameter: fine-tuning it (``sg.share_weights(..., data=...)``) moves every weight of a cluster together,
and the zero row is padding, not a parameter, so pruned weights stay exactly zero.

Candidates: the GEMM weights ``sparsify`` knows (:func:`slimgraph.sparse.layers.find_layers`: linear and
conv weights, tied ones once) and, with ``embeddings=True``, the tables of ``aten.embedding``. Widths: ``bits``
for linear and embedding layers (the paper's 5 for fc), ``conv_bits`` for convs (the paper's 8);
``per_layer={pattern: bits}`` overrides (fnmatch over layer name, weight path, node names, kind).

Quantizers: ``kmeans`` (the paper's; ``bits`` is the code width, 2**bits centroids) or ``uniform``
(entropy-constrained: the nonzero weights are rounded to a uniform grid whose step is chosen so the codes'
entropy is ``bits`` bits per weight, fractional widths allowed, and each level's centroid is its members' mean).
Once the archive entropy-codes the indices, ``uniform`` is the smaller of the two at the same error; with
:func:`slimgraph.share.allocate_bits` giving each layer its own rate from a measured sensitivity it is what
brings MiniLM under 4 bits per weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.fx as fx

from ..errors import InputError
from ..ir.graph_utils import add_constant, get_attr_tensor, remove_unused_attributes
from ..ir.info import graph_info, node_info
from ..passes.base import Pass, PassResult, register_pass
from ..sparse.layers import Layer, find_layers, select
from .kmeans import code_entropy, kmeans_1d, step_for_entropy, uniform_1d
from .report import REPORT_KEY, LayerShare, ShareReport

aten = torch.ops.aten
MAX_BITS = 16
MAX_UNIFORM_BITS = 12.0  # entropy per weight of the uniform quantizer (its levels must fit the archive's coder)
QUANTIZERS = ("kmeans", "uniform")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def code_dtype(bits: int) -> torch.dtype:
    """Smallest integer dtype holding codes 0..2**bits-1 (archives and ONNX keep it)."""
    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32


@register_pass
@dataclass(frozen=True)
class ShareWeights(Pass):
    name: ClassVar[str] = "share-weights"
    summary: ClassVar[str] = "k-means weight sharing: per-layer codebook + integer codes (Deep Compression)"
    tolerance: ClassVar[float | None] = None  # lossy: the error is measured and reported

    bits: int | float = 5  # float only for the uniform quantizer (a code entropy)
    conv_bits: int | float = 8
    embeddings: bool = True
    ignore: tuple[str, ...] = ()
    per_layer: dict[str, int | float] = field(default_factory=dict)
    iters: int = 300
    quantizer: str = "kmeans"

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise InputError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        for where, b in [("bits", self.bits), ("conv_bits", self.conv_bits),
                         *((f"per_layer[{k!r}]", v) for k, v in dict(self.per_layer).items())]:
            if self.quantizer == "uniform":
                if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= MAX_UNIFORM_BITS:
                    raise InputError(f"{where} must be a code entropy in (0, {MAX_UNIFORM_BITS:g}] bits per weight "
                                     f"for the uniform quantizer, got {b!r}")
            elif isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS:
                raise InputError(f"{where} must be an integer code width in 1..{MAX_BITS}, got {b!r} (fractional "
                                 "widths need quantizer='uniform')")
        object.__setattr__(self, "ignore", (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore))
        object.__setattr__(self, "per_layer", dict(self.per_layer))

    def layer_bits(self, layer: Layer) -> float:
        for pattern, bits in self.per_layer.items():
            if layer.matches(pattern):
                return bits
        return self.conv_bits if layer.kind.startswith("conv") else self.bits

    def run(self, gm: fx.GraphModule) -> PassResult:
        report = ShareReport(self.bits, self.conv_bits, self.quantizer)
        layers = find_layers(gm) + (_embedding_layers(gm, find_layers(gm)) if self.embeddings else [])
        kept, ignored, notes = select(layers, self.ignore)
        report.notes.extend(notes)
        rows = {}
        for layer in ignored:
            w = get_attr_tensor(gm, layer.nodes[0].args[_weight_arg(layer)])
            rows[layer.weight] = LayerShare(layer.name, layer.weight, layer.kind, tuple(w.shape), reason="ignored")
        info = graph_info(gm)
        for layer in kept:
            rows[layer.weight] = _share_layer(gm, layer, self.layer_bits(layer), self.iters, self.quantizer)
            if rows[layer.weight].bits:
                info.sparsity.pop(layer.weight, None)  # the zeros now live in integer code 0: nothing to mask
        if not kept:
            report.notes.append("nothing to share: no linear/conv/embedding weight (or all ignored); model unchanged")
        report.layers = [rows[layer.weight] for layer in layers]
        shared = len(report.shared)
        if shared:
            gm.graph.lint()
            remove_unused_attributes(gm)
            gm.recompile()
        return PassResult(gm, shared > 0, {"shared": shared, REPORT_KEY: report}, list(report.notes))


def _weight_arg(layer: Layer) -> int:
    return 0 if layer.kind == "embedding" else 1


def _embedding_layers(gm: fx.GraphModule, gemm_layers: list[Layer]) -> list[Layer]:
    """Embedding tables as layers (a table tied to a GEMM weight is already one of ``gemm_layers``)."""
    known = {layer.weight for layer in gemm_layers}
    layers: dict[str, Layer] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not aten.embedding.default:
            continue
        w_node = node.args[0]
        w = get_attr_tensor(gm, w_node) if isinstance(w_node, fx.Node) else None
        if w is None or w.dtype not in _FLOATS or w.dim() != 2 or str(w_node.target) in known:
            continue
        target = str(w_node.target)
        if target in layers:
            layers[target].nodes.append(node)
            continue
        info = node_info(node)
        layers[target] = Layer(target, target.removesuffix(".weight"), "embedding", [node],
                               info.module_type if info is not None else "")
    return list(layers.values())


def _share_layer(gm: fx.GraphModule, layer: Layer, bits: float, iters: int, quantizer: str) -> LayerShare:
    w_node = layer.nodes[0].args[_weight_arg(layer)]
    w = get_attr_tensor(gm, w_node).detach()
    row = LayerShare(layer.name, layer.weight, layer.kind, tuple(w.shape), numel=w.numel())
    if not torch.isfinite(w).all():
        raise InputError(f"layer {layer.name!r}: weight {layer.weight} holds NaN or Inf; k-means needs finite "
                         f"weights (fix the model or add {layer.name!r} to ignore)")
    nonzero = w != 0
    has_zeros = not bool(nonzero.all())
    if not nonzero.any():
        row.reason = "all zeros: nothing to cluster"
        return row
    if quantizer == "uniform":
        kept = w[nonzero]
        fit = uniform_1d(kept, step_for_entropy(kept, bits))
        k = fit.centroids.numel()
        width = max(1, math.ceil(math.log2(k + (1 if has_zeros else 0))))
    else:
        k = (1 << bits) - (1 if has_zeros else 0)  # code 0 is reserved for the exact zero when the layer has zeros
        if k < 1:
            row.reason = f"{bits} bit leaves no code besides the zero; give it more bits with per_layer"
            return row
        fit = kmeans_1d(w[nonzero], k, iters=iters)
        width = bits
    codes = torch.zeros(w.shape, dtype=torch.int64)
    codes[nonzero] = fit.assignment + (1 if has_zeros else 0)
    codebook = fit.centroids.to(w.dtype).reshape(k, 1)
    table = torch.cat([torch.zeros(1, 1, dtype=w.dtype), codebook]) if has_zeros else codebook
    rebuilt = table[codes, 0]
    denom = float(w.double().norm()) or 1.0
    row.rel_error = float((rebuilt.double() - w.double()).norm()) / denom

    base = layer.weight
    cb_target = add_constant(gm, codebook.to(w.device), f"{base}_codebook", parameter=True)
    codes_target = add_constant(gm, codes.to(code_dtype(width)).to(w.device), f"{base}_codes")
    graph = gm.graph
    readers = [n for n in graph.nodes if n.op == "get_attr" and n.target == w_node.target]  # tied reads too
    with graph.inserting_before(readers[0]):
        cb = graph.get_attr(cb_target)
        idx = graph.call_function(aten._to_copy.default, (graph.get_attr(codes_target),), {"dtype": torch.int64})
        if has_zeros:  # a zero row in front, so code 0 decodes to an exact, untrainable 0
            cb = graph.call_function(aten.constant_pad_nd.default, (cb, [0, 0, 1, 0]))
        rows = graph.call_function(aten.embedding.default, (cb, idx))
        rebuilt_node = graph.call_function(aten.squeeze.dim, (rows, -1))
    rebuilt_node.meta.update({k: v for k, v in w_node.meta.items() if k in ("nn_module_stack", "stack_trace")})
    for reader in readers:
        reader.replace_all_uses_with(rebuilt_node)
        graph.erase_node(reader)
    row.bits, row.centroids, row.used, row.zeros = bits, k, fit.used, int((~nonzero).sum())
    row.codebook, row.codes = cb_target, codes_target
    row.entropy = code_entropy(codes)
    return row
