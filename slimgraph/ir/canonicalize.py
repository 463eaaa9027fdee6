"""Bring a freshly exported graph to slimgraph's canonical op level.

The canonical level is torch.export's (pre-dispatch) ATen IR, *undecomposed*: ``aten.linear``,
``aten.conv2d``, ``aten.batch_norm``, ``aten.layer_norm``, ``aten.scaled_dot_product_attention`` stay
single nodes, which is what our pattern-based passes match. On top of what export gives we:

* turn in-place ops into their functional form where nothing else aliases the mutated value
  (``relu_(x)`` -> ``relu(x)``, later readers of ``x`` read the new node);
* drop eval-mode dropout (identity), export's ``_guards_fn`` call and ``_assert_tensor_metadata``;
* inline export's grad-mode regions (``wrap_with_set_grad_enabled``, e.g. Llama's rotary embedding under
  ``torch.no_grad``) and disabled-autocast regions: the captured graph is an inference graph, so the
  grad mode has no effect, and passes must see the ops inside;
* write GEMMs whose right-hand side is a constant as ``aten.linear`` with a ``[N, K]`` weight
  (``addmm(b, x, W)``, ``mm(x, W)``, ``matmul(x, W)``: GPT-2's Conv1D and hand-written ``x @ W``; and
  ``x @ W.T``, Falcon's linear, which needs no copy at all), so fusion, pruning and quantization see one GEMM
  vocabulary;
* write convs with string padding (``padding="same"/"valid"``, ``aten.conv2d.padding``) as plain convs with
  integer padding (an explicit ``constant_pad_nd`` first where "same" pads one side more), so fold-bn,
  fusion, pruning, quantization and the MAC count see them.

Running export's own ``run_decompositions({})`` would functionalize too, but costs about a second on
BERT-base, more than the rest of the pipeline together.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .graph_utils import VIEW_OPS, add_constant, get_attr_tensor, set_attr_tensor, users_after
from .match import arg, conv_geometry, value_of

aten = torch.ops.aten

_EVAL_IDENTITY = {  # in eval mode these return their input (the in-place forms modify nothing)
    aten.dropout.default,
    aten.feature_dropout.default,
    aten.alpha_dropout.default,
    aten.feature_alpha_dropout.default,
    aten.dropout_.default,
    aten.feature_dropout_.default,
    aten.alpha_dropout_.default,
    aten.feature_alpha_dropout_.default,
}
_DROP = {aten._assert_tensor_metadata.default}


def _functional_variant(target) -> object | None:
    if not isinstance(target, torch._ops.OpOverload):
        return None
    schema = target._schema
    base = schema.name.split("::")[-1]
    if not base.endswith("_") or base.startswith("_") or not schema.arguments:
        return None
    first = schema.arguments[0]
    if first.alias_info is None or not first.alias_info.is_write:
        return None
    packet = getattr(torch.ops.aten if target.namespace == "aten" else getattr(torch.ops, target.namespace),
                     base[:-1], None)
    if packet is None:
        return None
    return getattr(packet, target._overloadname, None)


def _aliases_other_storage(node: fx.Node) -> bool:
    """True if mutating ``node`` in place could be observed through another value."""
    if node.op != "call_function":
        return True  # placeholders, parameters and buffers are observable by the caller
    if node.target in VIEW_OPS:
        return True
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        returns = target._schema.returns
        if returns and returns[0].alias_info is not None:
            return True
    return False


def canonicalize(gm: fx.GraphModule) -> dict[str, int]:
    """Rewrite ``gm`` in place (it is our own freshly captured copy). Returns counts of each rewrite."""
    stats = {"functionalized": 0, "dropout_removed": 0, "asserts_removed": 0, "inplace_kept": 0,
             "gemm_to_linear": 0}
    graph = gm.graph
    stats["regions_inlined"] = _inline_mode_regions(gm)
    readers: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            readers[node.target] = readers.get(node.target, 0) + 1
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
            if hasattr(gm, "_guards_fn"):
                delattr(gm, "_guards_fn")
            continue
        if node.op != "call_function":
            continue
        if node.target in _DROP and not node.users:
            graph.erase_node(node)
            stats["asserts_removed"] += 1
        elif node.target in _CONST_RHS_GEMMS and _gemm_to_linear(gm, node, readers):
            stats["gemm_to_linear"] += 1
        elif node.target is aten.cat.default and _drop_empty_cat_operands(gm, node):
            stats["empty_cat_operands"] = stats.get("empty_cat_operands", 0) + 1
        elif node.target in _STRING_PADDING_CONVS and _explicit_padding(gm, node):
            stats["conv_padding_explicit"] = stats.get("conv_padding_explicit", 0) + 1
        elif node.target in _EVAL_IDENTITY and _dropout_is_eval(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            stats["dropout_removed"] += 1
        else:
            functional = _functional_variant(node.target)
            if functional is None:
                continue
            mutated = node.args[0]
            if not isinstance(mutated, fx.Node) or _aliases_other_storage(mutated):
                stats["inplace_kept"] += 1
                continue
            later_readers = [u for u in users_after(mutated, node) if u is not node]
            with graph.inserting_before(node):
                new = graph.call_function(functional, node.args, node.kwargs)
            new.meta.update(node.meta)
            node.replace_all_uses_with(new)
            for reader in later_readers:
                reader.replace_input_with(mutated, new)
            graph.erase_node(node)
            stats["functionalized"] += 1
    graph.lint()
    gm.recompile()
    return stats


def _dropout_is_eval(node: fx.Node) -> bool:
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    return train is False


_CONST_RHS_GEMMS = {aten.addmm.default, aten.mm.default, aten.matmul.default}


def _gemm_to_linear(gm: fx.GraphModule, node: fx.Node, readers: dict[str, int]) -> bool:
    # addmm(b, x, W) / mm(x, W) / matmul(x, W) with constant W [K, N]  =>  linear(x, W.T, b)
    if node.target is aten.addmm.default:
        if node.kwargs or len(node.args) != 3:
            return False  # beta/alpha scaling: not a plain GEMM + bias
        bias, x, w_node = node.args
        if not isinstance(bias, fx.Node) or bias.meta.get("val") is None or bias.meta["val"].dim() != 1:
            return False
    else:
        if node.kwargs or len(node.args) != 2:
            return False
        x, w_node = node.args
        bias = None
    if _transposed_constant(gm, w_node) is not None:
        # x @ W.T with W [N, K] stored as a Linear stores it  =>  linear(x, W): the weight is already in layout
        transposed = w_node
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(aten.linear.default, (x, transposed.args[0], bias))
        linear.meta.update(node.meta)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        if not transposed.users:
            gm.graph.erase_node(transposed)
        return True
    if not isinstance(w_node, fx.Node) or w_node.op != "get_attr":
        return False
    w = get_attr_tensor(gm, w_node)
    if w is None or w.dim() != 2 or not w.is_floating_point():
        return False
    x_val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if x_val is None or x_val.dim() < 1 or (node.target is not aten.matmul.default and x_val.dim() != 2):
        return False
    weight_t = w.detach().t().contiguous()
    if readers.get(w_node.target, 0) == 1 and len(w_node.users) == 1:
        set_attr_tensor(gm, w_node.target, weight_t)  # sole reader: store the [N, K] layout in place
        w_node.meta["val"] = _transposed_val(w_node.meta.get("val"))
        weight_node = w_node
    else:
        target = add_constant(gm, weight_t, f"{w_node.target}_t", parameter=isinstance(w, torch.nn.Parameter))
        with gm.graph.inserting_before(node):
            weight_node = gm.graph.get_attr(target)
        weight_node.meta["val"] = _transposed_val(w_node.meta.get("val"))
    with gm.graph.inserting_before(node):
        linear = gm.graph.call_function(aten.linear.default, (x, weight_node, bias))
    linear.meta.update(node.meta)
    node.replace_all_uses_with(linear)
    gm.graph.erase_node(node)
    return True


def _drop_empty_cat_operands(gm: fx.GraphModule, node: fx.Node) -> bool:
    # cat([a, e], d) with e empty along d (Phi-3's rotary pass-through when the whole head rotates)  =>  a
    # An empty operand adds nothing, but its shape is frozen at capture: after head pruning it no longer matches.
    tensors, rest = node.args[0], node.args[1:]
    out = node.meta.get("val")
    if not isinstance(out, torch.Tensor) or len(tensors) < 2:
        return False
    dim = (rest[0] if rest else node.kwargs.get("dim", 0)) % max(out.dim(), 1)

    def empty(t) -> bool:
        val = t.meta.get("val") if isinstance(t, fx.Node) else None
        if not isinstance(val, torch.Tensor):
            return False
        if val.dim() == 1 and val.shape[0] == 0 and out.dim() != 1:
            return True  # legacy empty operand, skipped by torch.cat
        return val.dim() == out.dim() and isinstance(val.shape[dim], int) and val.shape[dim] == 0

    kept = [t for t in tensors if not empty(t)]
    if len(kept) == len(tensors) or not kept:
        return False
    if len(kept) == 1 and kept[0].meta.get("val") is not None and kept[0].meta["val"].dtype == out.dtype:
        node.replace_all_uses_with(kept[0])
        gm.graph.erase_node(node)
    else:
        node.args = (kept, *rest)
    return True


def _transposed_constant(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The 2-D float constant ``W`` if ``node`` is ``W.t()`` / ``W.transpose(0, 1)`` / ``W.T``, else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target in (aten.t.default, aten.numpy_T.default):
        pass
    elif node.target is aten.transpose.int:
        if sorted(d % 2 for d in node.args[1:3]) != [0, 1]:
            return None
    elif node.target is aten.permute.default:
        if [d % 2 for d in node.args[1]] != [1, 0]:
            return None
    else:
        return None
    src = node.args[0]
    w = get_attr_tensor(gm, src) if isinstance(src, fx.Node) and src.op == "get_attr" else None
    return w if w is not None and w.dim() == 2 and w.is_floating_point() else None


_STRING_PADDING_CONVS = {aten.conv1d.padding: aten.conv1d.default, aten.conv2d.padding: aten.conv2d.default,
                         aten.conv3d.padding: aten.conv3d.default}


def _explicit_padding(gm: fx.GraphModule, node: fx.Node) -> bool:
    # conv(x, W, b, stride, "same"|"valid", dilation, groups)  =>  conv(x | pad(x), W, b, stride, int padding, ...)
    w = value_of(arg(node, 1, "weight"))
    geometry = conv_geometry(node)
    if not isinstance(w, torch.Tensor) or geometry.padding not in ("same", "valid"):
        return False
    kernel = [int(k) for k in w.shape[2:]]
    dims = len(kernel)
    dilation, stride = list(geometry.dilation), list(geometry.stride)
    if geometry.padding == "valid":
        total = [0] * dims
    else:  # torch: "same" (stride 1 only) pads d*(k-1) in all, the odd one on the right
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    left = [t // 2 for t in total]
    x = arg(node, 0, "input")
    with gm.graph.inserting_before(node):
        if any(t % 2 for t in total):
            pads = []
            for lo, t in zip(reversed(left), reversed(total)):  # constant_pad_nd lists the last dim first
                pads += [lo, t - lo]
            x = gm.graph.call_function(aten.constant_pad_nd.default, (x, pads, 0.0))
            left = [0] * dims
        conv = gm.graph.call_function(_STRING_PADDING_CONVS[node.target],
                                      (x, arg(node, 1, "weight"), arg(node, 2, "bias"), stride, left, dilation,
                                       geometry.groups))
    conv.meta.update(node.meta)
    node.replace_all_uses_with(conv)
    gm.graph.erase_node(node)
    return True


def _transposed_val(val):
    return val.t().contiguous() if isinstance(val, torch.Tensor) else val


def _inlinable_region(node: fx.Node) -> tuple[fx.Node, tuple] | None:
    """(submodule get_attr node, operands) of a grad-mode / disabled-autocast region, else None."""
    hop = torch.ops.higher_order
    if node.op != "call_function":
        return None
    if node.target is getattr(hop, "wrap_with_set_grad_enabled", None):
        return node.args[1], tuple(node.args[2:])
    if node.target is getattr(hop, "wrap_with_autocast", None):
        # (device_type, dtype, enabled, cache_enabled, submod, *operands); an enabled autocast region
        # changes op dtypes and is kept as is.
        if node.args[2] is False:
            return node.args[4], tuple(node.args[5:])
    return None


def _inline_mode_regions(gm: fx.GraphModule) -> int:
    inlined = 0
    for node in list(gm.graph.nodes):
        region = _inlinable_region(node)
        if region is None:
            continue
        submod_node, operands = region
        sub = getattr(gm, submod_node.target, None)
        if not isinstance(sub, fx.GraphModule) or any(n.op in ("get_attr", "call_module") for n in sub.graph.nodes):
            continue  # regions reading their own attributes are rare; leave them rather than guess
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        env = dict(zip(placeholders, operands))
        with gm.graph.inserting_before(node):
            result = gm.graph.graph_copy(sub.graph, env)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(outputs[user.args[1]])
                gm.graph.erase_node(user)
        if node.users:  # the region's tuple itself is read: cannot inline cleanly, undo is not needed
            continue
        gm.graph.erase_node(node)
        if not submod_node.users:
            gm.graph.erase_node(submod_node)
            delattr(gm, submod_node.target)
        inlined += 1
    return inlined
