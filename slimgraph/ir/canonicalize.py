"""Bring a freshly exported graph to slimgraph's canonical op level.

The canonical level is torch.export's (pre-dispatch) ATen IR, *undecomposed*: ``aten.linear``,
``aten.conv2d``, ``aten.batch_norm``, ``aten.layer_norm``, ``aten.scaled_dot_product_attention`` stay
single nodes, which is what our pattern-based passes match. On top of what export gives we:

* turn in-place ops into their functional form where nothing else aliases the mutated value
  (``relu_(x)`` -> ``relu(x)``, later readers of ``x`` read the new node);
* drop eval-mode dropout (identity), export's ``_guards_fn`` call and ``_assert_tensor_metadata``.

Running export's own ``run_decompositions({})`` would functionalize too, but costs about a second on
BERT-base, more than the rest of the pipeline together.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .graph_utils import VIEW_OPS, users_after

aten = torch.ops.aten

_EVAL_IDENTITY = {
    aten.dropout.default,
    aten.feature_dropout.default,
    aten.alpha_dropout.default,
    aten.feature_alpha_dropout.default,
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
    stats = {"functionalized": 0, "dropout_removed": 0, "asserts_removed": 0, "inplace_kept": 0}
    graph = gm.graph
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
