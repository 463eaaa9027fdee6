"""Lowering sparsified linear layers to sparse ops, layer by layer, only where it is measured to pay.

    y = aten.linear(x, W, b)                      (W 90% zeros)
 => y = slimgraph.sparse_linear(x, crow, col, values, N, K, b, "none")        CSR, any device
 or y = slimgraph.block_sparse_matmul(x, blocks, cols, row_ptr, N, K, ...)     block patterns: the Triton BSR kernel

Forms (each a plain-tensor packing of W held as graph attributes, so archives store them like weights):

* ``csr``: :mod:`slimgraph.ops.sparse_linear` (torch CSR / scipy on CPU, cuSPARSE on CUDA); any pattern.
* ``bsr``: :func:`slimgraph.kernels.block_sparse.to_block_sparse` + ``torch.ops.slimgraph.block_sparse_matmul``, for
  block patterns whose tile is one of the kernel's block sizes. Triton on CUDA (and on CPU under
  ``TRITON_INTERPRET=1``); elsewhere that op densifies, so a measurement never picks it on a plain CPU.
* ``2:4``: :mod:`slimgraph.ops.semi_structured_linear`, CUTLASS 2:4 sparse tensor cores, for the 2:4 pattern with
  fp16/bf16 weights on an NVIDIA GPU (N a multiple of 32, K of 64).

``lower="auto"``: for every linear layer the dense GEMM and every applicable form are timed on the current device at
the layer's captured input shape (:func:`slimgraph.layer_choice.default_timer`, the per-layer timer of the int8
autotuner, in interleaved rounds), and the fastest wins if it beats dense by ``MARGIN``; ``"always"`` takes the
preferred form without timing (2:4 tensor cores for 2:4 on CUDA, bsr for block patterns, else csr; tests and
deployments tuned elsewhere); ``"off"`` keeps every layer dense. Every lowered layer is checked
against the dense masked layer on the timing input before it replaces it. Convolutions stay dense (no sparse conv
kernel). The report row of every layer lists the measured times and why it stayed dense.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ir.graph_utils import _getattr_path, add_constant, get_attr_tensor, remove_unused_attributes
from ..ir.info import graph_info
from ..ir.propagate import copy_provenance
from ..kernels.block_sparse import BLOCK_SIZES, to_block_sparse
from ..kernels.epilogue import apply_activation
from ..layer_choice import Timer
from ..numerics import compare_outputs
from ..ops.semi_structured_linear import semi_structured_problem, to_semi_structured
from ..ops.sparse_linear import register_onnx_translation, to_csr
from ..quant.targets import _arg
from .layers import Layer
from .patterns import Pattern
from .report import LayerSparsity

LOWER_MODES = ("auto", "always", "off")
ROUNDS = 3
MARGIN = 0.05  # a sparse form must beat dense by this fraction: a tie within timing noise is not worth a new op
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}  # relative; half precision: 1e-2


@dataclass(frozen=True)
class Form:
    name: str
    problem: Callable[[Pattern, torch.Tensor], str]  # why this form cannot hold the weight ("" = it can)
    pack: Callable[[torch.Tensor, Pattern], list[torch.Tensor]]
    op: Callable[[], object]  # the op overload (looked up lazily: ops register on import)
    args: Callable[..., tuple]  # (x, packed, n, k, bias, act) -> the op's positional arguments


def _csr_pack(w, pattern):
    c = to_csr(w)
    return [c.crow_indices, c.col_indices, c.values]


def _bsr_problem(pattern: Pattern, w: torch.Tensor) -> str:
    if pattern.kind != "block":
        return "not a block pattern"
    if any(b not in BLOCK_SIZES for b in pattern.block):
        return f"block {pattern} is not a kernel tile (sides in {BLOCK_SIZES})"
    if w.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the kernel has no {str(w.dtype).removeprefix('torch.')} path"
    return ""


def _bsr_pack(w, pattern):
    b = to_block_sparse(w, pattern.block)
    return [b.values, b.col_indices, b.row_ptr]


def _two_four_problem(pattern: Pattern, w: torch.Tensor) -> str:
    if (pattern.kind, pattern.n, pattern.m) != ("n:m", 2, 4):
        return "not the 2:4 pattern"
    return semi_structured_problem(w)


FORMS = {
    "csr": Form("csr", lambda p, w: "", _csr_pack, lambda: torch.ops.slimgraph.sparse_linear.default,
                lambda x, t, n, k, b, act: (x, *t, n, k, b, act)),
    "bsr": Form("bsr", _bsr_problem, _bsr_pack, lambda: torch.ops.slimgraph.block_sparse_matmul.default,
                lambda x, t, n, k, b, act: (x, *t, n, k, None, None, b, act, None)),
    "2:4": Form("2:4", _two_four_problem, lambda w, p: list(to_semi_structured(w)),
                lambda: torch.ops.slimgraph.semi_structured_linear.default,
                lambda x, t, n, k, b, act: (x, *t, n, k, b, act)),
}
OP_NAMES = {"csr": "slimgraph.sparse_linear (CSR)", "bsr": "slimgraph.block_sparse_matmul (Triton BSR)",
            "2:4": "slimgraph.semi_structured_linear (2:4 tensor cores)"}


def _linear_parts(gm: fx.GraphModule, node: fx.Node):
    """(x, bias node or None, activation) of a linear/linear_act node, or a reason it cannot be lowered."""
    if node.target is torch.ops.slimgraph.linear_act.default:
        act = _arg(node, 3, "act", "none")
    elif node.target is torch.ops.aten.linear.default:
        act = "none"
    else:
        return f"{node.name}: convolutions have no sparse kernel"
    bias = _arg(node, 2, "bias")
    if bias is not None and get_attr_tensor(gm, bias) is None:
        return f"{node.name}: its bias is computed at run time"
    return node.args[0], bias, act


def _example_input(node: fx.Node, w: torch.Tensor) -> torch.Tensor | None:
    val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    shape = [int(s) if isinstance(s, int) else int(s.node.hint or 1) for s in val.shape]
    gen = torch.Generator(device=w.device).manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=val.dtype, device=w.device)


def lower_layers(gm: fx.GraphModule, layers: list[Layer], rows: dict[str, LayerSparsity], pattern: Pattern,
                 mode: str, timer: Timer | None = None) -> int:
    """Lower what pays (see the module docstring); fills each layer's report row; returns the layers lowered."""
    if mode == "off":
        for layer in layers:
            rows[layer.weight].reason = "lower=off"
        return 0
    if timer is None:
        from ..layer_choice import default_timer as timer
    lowered = 0
    # read every layer's input example first: a layer fed by one lowered before it sees a node without metadata
    inputs = {layer.weight: _example_input(layer.nodes[0], get_attr_tensor(gm, layer.nodes[0].args[1]))
              for layer in layers}
    for layer in layers:
        row = rows[layer.weight]
        parts = [_linear_parts(gm, node) for node in layer.nodes]
        if problem := next((p for p in parts if isinstance(p, str)), ""):
            row.reason = problem
            continue
        w = get_attr_tensor(gm, layer.nodes[0].args[1])
        x = inputs[layer.weight]
        if x is None or x.dtype != w.dtype:
            row.reason = "no float input of the weight's dtype was recorded at capture"
            continue
        bias = get_attr_tensor(gm, parts[0][1]) if parts[0][1] is not None else None
        act = parts[0][2]
        choice = _choose(w, x, bias, act, pattern, mode, timer, row)
        if choice is None:
            continue
        form, packed = choice
        _emit(gm, layer, parts, form, packed, w.shape)
        row.lowered_to = OP_NAMES[form.name]
        lowered += 1
    if lowered:
        register_onnx_translation()
        remove_unused_attributes(gm)  # the dense weights the sparse forms replaced
        info = graph_info(gm)
        gone = [k for k in info.sparsity if not isinstance(_getattr_path(gm, k), torch.Tensor)]
        for k in gone:
            del info.sparsity[k]  # stored as non-zeros only now: there are no zeros left to keep
    return lowered


def _csr_bytes(w: torch.Tensor) -> int:
    return int((w != 0).sum()) * (w.element_size() + 4) + (w.shape[0] + 1) * 4  # values + int32 cols + row pointers


def _choose(w, x, bias, act, pattern: Pattern, mode: str, timer: Timer, row: LayerSparsity):
    """(form, packed tensors) to lower to, or None with ``row.reason`` and ``row.times_ms`` filled."""
    usable = [f for f in FORMS.values() if not f.problem(pattern, w)]
    failures = []
    if mode == "always":
        usable = usable[-1:]  # the most specific form: 2:4 on CUDA, bsr for kernel-sized blocks, csr otherwise
    elif (csr_bytes := _csr_bytes(w)) >= w.numel() * w.element_size():
        # Not worth timing: CSR reads every stored value plus its column index, at best as fast as dense reads the
        # whole weight, and its gathers are slower. Timing a transformer's every layer costs seconds.
        usable = [f for f in usable if f.name != "csr"]
        failures.append(f"CSR would read {csr_bytes / (w.numel() * w.element_size()):.2f}x the dense weight's bytes")
    n, k = w.shape
    dense_out = apply_activation(F.linear(x, w, bias), act)
    tol = _TOLERANCE.get(w.dtype, 1e-2)
    candidates = []
    for form in usable:
        packed = form.pack(w, pattern)
        op = form.op()

        def call(form=form, packed=packed, op=op):
            return op(*form.args(x, packed, n, k, bias, act))

        with torch.no_grad():
            err = compare_outputs(call(), dense_out)
        if not err.max_rel <= tol:
            failures.append(f"{form.name} differs from the dense layer ({err})")
            continue
        if mode == "always":
            return form, packed
        candidates.append((form, packed, call))
    if not candidates:
        row.reason = "; ".join(failures) or "no sparse form fits this layer"
        return None
    calls = {"dense": lambda: apply_activation(F.linear(x, w, bias), act)}
    calls.update((form.name, call) for form, _, call in candidates)
    row.times_ms.update(_interleaved(calls, timer))
    best = min(candidates, key=lambda c: row.times_ms[c[0].name])
    if row.times_ms[best[0].name] > (1.0 - MARGIN) * row.times_ms["dense"]:
        shape = "x".join(map(str, x.shape))
        row.reason = f"not {MARGIN:.0%} faster than dense at input {shape} on {x.device.type}"
        return None
    return best[0], best[1]


def _interleaved(calls: dict[str, Callable[[], object]], timer: Timer) -> dict[str, float]:
    """Best of ROUNDS interleaved timings per candidate: on a shared machine a burst of load then hits every
    candidate alike, and the minimum drops the rounds a neighbour's burst spoiled."""
    best: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(ROUNDS):
            for name, call in calls.items():
                best[name] = min(best.get(name, float("inf")), timer(call))
    return best


def _emit(gm: fx.GraphModule, layer: Layer, parts, form: Form, packed: list[torch.Tensor], shape) -> None:
    graph = gm.graph
    names = [add_constant(gm, t, f"{layer.weight}_{form.name}{i}") for i, t in enumerate(packed)]
    n, k = shape
    for node, (x, bias, act) in zip(layer.nodes, parts):
        with graph.inserting_before(node):
            attrs = [graph.get_attr(name) for name in names]
            new = graph.call_function(form.op(), form.args(x, attrs, n, k, bias, act))
        copy_provenance(new, node)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    for node in list(graph.nodes):  # the dense weight's get_attr, now read by nobody
        if node.op == "get_attr" and node.target == layer.weight and not node.users:
            graph.erase_node(node)
    graph.lint()
