"""Int8 storage for the GEMM weights no int8 kernel reads: RNN weight matrices and 3-D expert weights.

The int8 rewrite covers linear/conv/matmul; RNN cells (``aten.lstm``/``aten.gru``) and mixture-of-experts
weights run through ops with no int8 kernel (transformers 5.24 runs Mixtral/Qwen2-MoE experts through its own
``grouped_mm`` op on a 3-D weight). Their weights are stored in int8 with one scale per row of the stored layout
and dequantized right before the op::

    W [.., N, K] (float)  =>  Wq [.., N, K] int8, s [.., N, 1] f32  ->  _to_copy(Wq, f32) * s  ->  op

(one scale per output channel: the scale dim follows the op's contraction dim, e.g. s [.., 1, N] for a weight a
matmul reads as its right operand [.., K, N]).

This is weight-only int8 (w8 storage, float compute): 4x smaller weights on every backend, exported to ONNX as
Cast + Mul. It counts as int8 in the coverage figure and says so in the report ("w8-storage").
"""

from __future__ import annotations

import fnmatch

import torch
import torch.fx as fx

from ..ir.graph_utils import add_constant, gemm_weight_consumer, get_attr_tensor, op_name

aten = torch.ops.aten

_RNNS = {aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input}
_CONSTANT_GEMMS = {aten.bmm.default, aten.matmul.default, aten.mm.default, aten.baddbmm.default, aten.einsum.default}
STORAGE_SCHEME = "w8-storage"


def _eligible(consumer: fx.Node) -> bool:
    target = consumer.target
    if target in _RNNS or target in _CONSTANT_GEMMS:
        return True
    # an op outside aten and slimgraph (e.g. transformers.grouped_mm_fallback): only its weight can be int8
    namespace = getattr(target, "namespace", "aten")
    return namespace not in ("aten", "slimgraph", "prims")


def quantize_weight_rows(w: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per slice along ``dim`` (the GEMM's contraction dim, so one scale per output
    channel): ``w ≈ q * s``, q in [-127, 127]."""
    s = (w.detach().abs().amax(dim=dim, keepdim=True).float() / 127.0).clamp_min(1e-12)
    q = torch.round(w.detach().float() / s).clamp(-127, 127).to(torch.int8)
    return q, s


def contraction_dim(node: fx.Node, consumer: fx.Node) -> int:
    """The dim of the stored weight ``node`` that ``consumer`` sums over (-1 where it cannot tell).

    A matmul reads its right operand as [.., K, N]: stored as is (constant folding materializes the transposed
    expert weights that way), one scale per row of the last dim would be one scale per *input* channel; followed
    through transposes/permutes to the matmul, K is found wherever it lies. RNN weights are [G*H, K]: the last dim.
    """
    if consumer.target not in _CONSTANT_GEMMS or consumer.target is aten.einsum.default:
        return -1
    chain, cur = [], node
    while cur is not consumer:
        users = [u for u in cur.users if u.op == "call_function"]
        if len(users) != 1:
            return -1
        nxt = users[0]
        if nxt is consumer:
            break
        if nxt.target not in (aten.transpose.int, aten.permute.default) or nxt.args[0] is not cur:
            return -1
        chain.append(nxt)
        cur = nxt
    operand = cur
    ndim = get_attr_tensor(node.graph.owning_module, node).dim()
    perm = list(range(ndim))
    for view in chain:  # dim d of the viewed value is dim perm[d] of the stored tensor
        if view.target is aten.transpose.int:
            d0, d1 = (int(d) % ndim for d in view.args[1:3])
            perm[d0], perm[d1] = perm[d1], perm[d0]
        else:
            perm = [perm[int(d) % ndim] for d in view.args[1]]
    args = consumer.args[1:] if consumer.target is aten.baddbmm.default else consumer.args
    if len(args) > 1 and args[1] is operand:
        return perm[-2]  # right operand [.., K, N]
    return perm[-1]  # left operand [.., M, K]


def store_int8(gm: fx.GraphModule, skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """Store eligible float GEMM weights of ``gm`` as int8; returns (weight, consumer node, op) per weight."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        w = get_attr_tensor(gm, node)
        if w is None or w.dim() < 2 or not w.is_floating_point():
            continue
        consumer = gemm_weight_consumer(node)
        if consumer is None or not _eligible(consumer):
            continue
        if any(fnmatch.fnmatchcase(str(node.target), p) or fnmatch.fnmatchcase(consumer.name, p) for p in skip):
            continue
        q, s = quantize_weight_rows(w, contraction_dim(node, consumer))
        s = s.to(w.dtype)  # the dequantized weight has the original dtype: fp16/bf16 models stay so
        base = str(node.target)
        q_name = add_constant(gm, q, f"{base}_int8")
        s_name = add_constant(gm, s, f"{base}_scale")
        graph = gm.graph
        with graph.inserting_after(node):
            q_node = graph.get_attr(q_name)
        with graph.inserting_after(q_node):
            s_node = graph.get_attr(s_name)
        with graph.inserting_after(s_node):
            cast = graph.call_function(aten._to_copy.default, (q_node,), {"dtype": w.dtype})
        with graph.inserting_after(cast):
            deq = graph.call_function(aten.mul.Tensor, (cast, s_node))
        val = node.meta.get("val")
        for new, like in ((q_node, q), (s_node, s), (cast, w), (deq, w)):
            new.meta["val"] = _fake_like(val, like)
        node.replace_all_uses_with(deq)
        graph.erase_node(node)
        done.append((base, consumer.name, op_name(consumer.target)))
    if done:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return done


def _fake_like(val, like: torch.Tensor):
    """Metadata for a new node: a tensor of ``like``'s shape and dtype in ``val``'s fake mode (if any)."""
    if isinstance(val, torch.Tensor) and hasattr(val, "fake_mode"):
        with val.fake_mode:
            return torch.empty(like.shape, dtype=like.dtype)
    return torch.empty(like.shape, dtype=like.dtype, device="meta")
